"""Build an MLX C++ extension once per MLX, nanobind and Python, and import it: ``gemv.cpp``
here, and the kernels of ``mlx_minicpmv/cpu/kernels`` (the same steps with their own sources).

The build must match the running MLX exactly (its C++ ABI and the nanobind domain mx.array is
registered in), so it happens here against the installed wheels rather than when this package
is installed, where pip's isolated build environment could hold another MLX. It takes ~15 s
once; the result is cached under ``$MLX_MINICPMV_CACHE`` (default ``~/.cache/mlx_minicpmv``),
keyed by the sources and versions, and moved into place atomically so that two processes
building at once both end with a complete file.
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("gemv.cpp", "CMakeLists.txt")
NAME = "_gemv"


class BuildError(RuntimeError):
    pass


class NoCompilerError(BuildError):
    """No C++ compiler on this machine: the one reason the extension's tests skip."""


def find_compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def find_cmake():
    """The system's cmake, else the one the ``cmake`` wheel (a dependency on Linux) installs."""
    found = shutil.which("cmake")
    if found:
        return found
    try:
        import cmake
    except ImportError:
        return None
    path = Path(cmake.CMAKE_BIN_DIR) / "cmake"
    return str(path) if path.exists() else None


def cache_dir(name: str = NAME) -> Path:
    root = os.environ.get("MLX_MINICPMV_CACHE") or Path.home() / ".cache" / "mlx_minicpmv"
    return Path(root) / name.lstrip("_")


def build_key(here: Path = HERE, sources=SOURCES) -> str:
    import mlx.core as mx
    import nanobind

    h = hashlib.sha256()
    for name in sources:
        h.update((here / name).read_bytes())
    h.update(f"{mx.__version__} {nanobind.__version__} {sys.version} {sysconfig.get_platform()}".encode())
    return h.hexdigest()[:16]


def build_and_import(here: Path = HERE, sources=SOURCES, name: str = NAME, package: str = "mlx_minicpmv.cpu.gemv"):
    """The module ``name`` built from ``here``'s CMakeLists.txt (keyed by ``sources``), imported."""
    try:
        import nanobind
    except ImportError as e:
        raise BuildError("nanobind is not installed (pip install 'nanobind>=3,<4')") from e
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = cache_dir(name) / build_key(here, sources) / f"{name}{suffix}"
    if not target.exists():
        build(target, nanobind, here, name)
    spec = importlib.util.spec_from_file_location(f"{package}.{name}", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(target: Path, nanobind, here: Path = HERE, name: str = NAME) -> None:
    import mlx

    compiler = find_compiler()
    if compiler is None:
        raise NoCompilerError("no C++ compiler was found (install g++ or clang++, or set CXX)")
    cmake = find_cmake()
    if cmake is None:
        raise BuildError("cmake was not found (pip install cmake)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        log = Path(tmp) / "build.log"
        configure = [cmake, "-S", str(here), "-B", tmp, f"-DPython_EXECUTABLE={sys.executable}",
                     f"-DCMAKE_CXX_COMPILER={compiler}", f"-Dnanobind_ROOT={nanobind.cmake_dir()}",
                     f"-DMLX_ROOT={Path(mlx.__path__[0])}"]  # as `python -m mlx --cmake-dir`
        for step in (configure, [cmake, "--build", tmp, "-j", str(os.cpu_count() or 2)]):
            with open(log, "a") as out:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                kept = target.parent / "build.log"
                shutil.copyfile(log, kept)
                raise BuildError(f"building the {name} extension failed (log: {kept}); "
                                 "a C++20 compiler and cmake >= 3.15 are needed")
        built = next(Path(tmp).glob(f"{name}*{target.suffix}"), None)
        if built is None:
            raise BuildError(f"the build made no {name} module (in {tmp})")
        staged = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(built, staged)
        os.replace(staged, target)
