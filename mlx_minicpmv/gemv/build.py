"""Build ``gemv.cpp`` into a Python extension once per MLX, nanobind and Python, and import it.

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


def cache_dir() -> Path:
    root = os.environ.get("MLX_MINICPMV_CACHE") or Path.home() / ".cache" / "mlx_minicpmv"
    return Path(root) / "gemv"


def build_key() -> str:
    import mlx.core as mx
    import nanobind

    h = hashlib.sha256()
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    h.update(f"{mx.__version__} {nanobind.__version__} {sys.version} {sysconfig.get_platform()}".encode())
    return h.hexdigest()[:16]


def build_and_import():
    try:
        import nanobind
    except ImportError as e:
        raise BuildError("nanobind is not installed (pip install 'nanobind>=3,<4')") from e
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = cache_dir() / build_key() / f"{NAME}{suffix}"
    if not target.exists():
        build(target, nanobind)
    spec = importlib.util.spec_from_file_location(f"mlx_minicpmv.gemv.{NAME}", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(target: Path, nanobind) -> None:
    import mlx

    cmake = shutil.which("cmake")
    if cmake is None:
        raise BuildError("cmake was not found (apt install cmake g++, or pip install cmake)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        log = Path(tmp) / "build.log"
        configure = [cmake, "-S", str(HERE), "-B", tmp, f"-DPython_EXECUTABLE={sys.executable}",
                     f"-Dnanobind_ROOT={nanobind.cmake_dir()}",
                     f"-DMLX_ROOT={Path(mlx.__path__[0])}"]  # as `python -m mlx --cmake-dir`
        for step in (configure, [cmake, "--build", tmp, "-j", str(os.cpu_count() or 2)]):
            with open(log, "a") as out:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                kept = target.parent / "build.log"
                shutil.copyfile(log, kept)
                raise BuildError(f"building the GEMV extension failed (log: {kept}); "
                                 "a C++20 compiler and cmake >= 3.15 are needed")
        built = next(Path(tmp).glob(f"{NAME}*{target.suffix}"), None)
        if built is None:
            raise BuildError(f"the GEMV build made no {NAME} module (in {tmp})")
        staged = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(built, staged)
        os.replace(staged, target)
