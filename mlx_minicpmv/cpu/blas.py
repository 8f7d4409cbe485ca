"""Use OpenBLAS for MLX's CPU backend on Linux: the ``cmeel-openblas`` wheel's, else the system's.

The ``mlx[cpu]`` wheel links the reference (netlib) BLAS; fp32 matmuls run ~10-20x faster with
OpenBLAS (a 1024^3 matmul: 423-480 ms against 16-45 ms). Loading OpenBLAS with RTLD_GLOBAL
before ``mlx.core`` is imported puts its ``cblas_*`` symbols ahead of the bundled library's for
every later lookup, the in-process equivalent of ``LD_PRELOAD``; tests/test_blas.py checks that
MLX then computes exactly what the opened library computes, and the same logits.

The library comes from the ``cmeel-openblas`` wheel (a dependency on Linux; plain ``cblas_*``
symbols, unlike ``scipy-openblas32``'s prefixed ones), then from the system. Its builds are
for one CPU each, not OpenBLAS's DYNAMIC_ARCH (0.3.29 for Zen: AVX2 and FMA; 0.3.31 for
Skylake-X: AVX-512, which dies of SIGILL on any other CPU), so the wheel's own
``openblas_config.h`` is checked against the CPU's flags before the library is opened. Its
library needs ``libgfortran.so.5``, which it does not ship and a bare machine does not have;
``mlx[cpu]`` ships the same runtime under auditwheel's hashed name, so a copy of it renamed
(its ELF soname) to the name OpenBLAS asks for is made once in the cache and loaded first.
On macOS MLX uses Metal and Accelerate, and nothing is done. ``MLX_MINICPMV_BLAS=off`` opts out.
"""

import ctypes
import ctypes.util
import hashlib
import os
import re
import struct
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional

SYSTEM = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
GFORTRAN = "libgfortran.so.5"
# OpenBLAS's HAVE_* for the instruction sets its kernels may use -> the flag /proc/cpuinfo
# shows for it. Vendor extras it also lists (SSE4A, MISALIGNSSE) appear in no kernel.
ISA = {"SSE3": "pni", "SSSE3": "ssse3", "SSE4_1": "sse4_1", "SSE4_2": "sse4_2", "AVX": "avx", "AVX2": "avx2",
       "FMA3": "fma", "AVX512VL": "avx512vl", "AVX512BF16": "avx512_bf16", "SVE": "sve"}

loaded = None  # the path of the BLAS in use, once load() has found one
failure = None  # why no OpenBLAS could be opened, when none was


def load():
    """Load OpenBLAS globally if possible; returns its path or None. Safe to call twice."""
    global loaded
    if loaded or sys.platform != "linux" or os.environ.get("MLX_MINICPMV_BLAS", "").lower() == "off":
        return loaded
    if "mlx.core" in sys.modules:
        return None  # too late: mlx already bound the bundled BLAS
    # OpenBLAS's threads spin for 2^28 cycles (~0.1 s) after each call before they sleep; between
    # the attention's sgemms they held the cores that the kernels' pool (cpu/kernels) ran the
    # next layer on: a bf16 448x448 image 4.33 -> 3.14 s, prefill 135 -> 146 tokens/s with 2^4.
    # Read when the library loads; a user's own setting wins, and child processes get none.
    ours = "OPENBLAS_THREAD_TIMEOUT" not in os.environ
    if ours:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"
    try:
        loaded, _ = open_library(os.RTLD_NOW | os.RTLD_GLOBAL)
    finally:
        if ours:
            del os.environ["OPENBLAS_THREAD_TIMEOUT"]
    return loaded


def open_library(mode=os.RTLD_NOW):
    """``(path, ctypes.CDLL)`` of the first OpenBLAS that opens, or ``(None, None)``."""
    global failure
    errors = []
    for name in candidates():
        missing = missing_features(Path(name))
        if missing:
            errors.append(f"{name} is built for a CPU with {', '.join(missing)}, which this one lacks")
            continue
        try:
            return name, ctypes.CDLL(name, mode=mode)
        except OSError as e:
            if GFORTRAN not in str(e) or not provide_gfortran():
                errors.append(str(e))
                continue
        try:
            return name, ctypes.CDLL(name, mode=mode)
        except OSError as e:
            errors.append(str(e))
    failure = "; ".join(errors) or "no OpenBLAS installed (pip install cmeel-openblas)"
    return None, None


def candidates():
    wheel = wheel_library()
    names = [str(wheel) if wheel else None, ctypes.util.find_library("openblas"), "libopenblas.so.0", *SYSTEM]
    return list(dict.fromkeys(n for n in names if n))


def wheel_library() -> Optional[Path]:
    """``libopenblas.so.0`` of the installed ``cmeel-openblas`` wheel, if any."""
    try:
        path = Path(metadata.distribution("cmeel-openblas").locate_file("cmeel.prefix/lib/libopenblas.so.0"))
    except metadata.PackageNotFoundError:
        return None
    return path if path.exists() else None


def missing_features(library: Path) -> list:
    """The instruction sets a wheel's OpenBLAS was built for that this CPU lacks (by the
    ``openblas_config.h`` installed beside it; a system library has none and passes)."""
    header = library.parent.parent / "include" / "openblas" / "openblas_config.h"
    if not header.is_file():
        return []
    needs = [n for n in re.findall(r"#define OPENBLAS_HAVE_(\w+)", header.read_text()) if n in ISA]
    flags = cpu_flags()
    return [n for n in needs if ISA[n] not in flags]


def cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, arm
            return set(value.split())
    return set()


def bundled(stem: str) -> Optional[Path]:
    """A library the ``mlx[cpu]`` wheel ships in ``mlx_cpu.libs`` (``libblas``, ``libgfortran``, ...)."""
    try:
        files = metadata.distribution("mlx-cpu").files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.parent.name == "mlx_cpu.libs" and file.name.startswith(f"{stem}-"):
            return Path(file.locate())
    return None


def provide_gfortran() -> bool:
    """Load a ``libgfortran.so.5`` made from mlx[cpu]'s bundled copy, so a later dlopen of
    OpenBLAS finds its dependency already loaded (the loader matches it by soname)."""
    source, quadmath = bundled("libgfortran"), bundled("libquadmath")
    if source is None:
        return False
    data = bytearray(source.read_bytes())
    root = Path(os.environ.get("MLX_MINICPMV_CACHE") or Path.home() / ".cache" / "mlx_minicpmv")
    target = root / "blas" / hashlib.sha256(data).hexdigest()[:16] / GFORTRAN
    try:
        if not target.exists():
            set_soname(data, GFORTRAN.encode())
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{GFORTRAN}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)  # two processes at once both end with a whole file
        if quadmath is not None:  # the copy's own dependency, found by its hashed soname
            ctypes.CDLL(str(quadmath))
        ctypes.CDLL(str(target))
    except (OSError, ValueError):
        return False
    return True


def soname_span(data) -> tuple:
    """Where the DT_SONAME string of an ELF64 little-endian shared library (x86_64, aarch64)
    lies in the file: ``(start, end)`` byte offsets, the NUL at ``end``."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    # (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)
    segments = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    dynamic = next((s for s in segments if s[0] == 2), None)  # PT_DYNAMIC
    if dynamic is None:
        raise ValueError("no dynamic section")
    tags = {}
    for offset in range(dynamic[2], dynamic[2] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == 0:  # DT_NULL
            break
        tags.setdefault(tag, value)
    if 5 not in tags or 14 not in tags:  # DT_STRTAB, DT_SONAME
        raise ValueError("no soname")
    strtab = tags[5]
    load = next(s for s in segments if s[0] == 1 and s[3] <= strtab < s[3] + s[5])  # PT_LOAD holding it
    start = strtab - load[3] + load[2] + tags[14]
    return start, data.index(b"\0", start)


def set_soname(data: bytearray, name: bytes) -> None:
    """Rewrite the soname in place, padded with NULs; ``name`` may not be longer than the old one."""
    start, end = soname_span(data)
    if len(name) > end - start:
        raise ValueError(f"the new soname is longer than {bytes(data[start:end]).decode()!r}")
    data[start:end] = name.ljust(end - start, b"\0")
