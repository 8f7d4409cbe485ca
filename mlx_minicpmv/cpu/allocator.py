"""glibc's malloc, told to keep what MLX's CPU backend frees.

MLX's CPU allocator takes every buffer from malloc and gives it back at once. glibc serves a
large request (above a threshold that adapts up to 32 MB) by a fresh ``mmap``, and gives freed
heap tops back to the system, so the next prompt chunk's buffers of the same sizes come as
fresh pages, each faulted in and zeroed by the kernel: a 512-token DeltaNet layer took 15,000
page faults and 67 ms, 52 ms with none. With the threshold fixed at its maximum and the heap
trimmed only past 256 MB, the buffers are reused from the heap instead. Set once per process,
by the first CPU load, unless the user set glibc's own ``MALLOC_*_`` variables; a no-op where
the C library has no ``mallopt`` (musl, macOS).
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 256 << 20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_done = None


def keep_freed_buffers() -> bool:
    """Whether malloc now keeps freed buffers for reuse (once per process)."""
    global _done
    if _done is None:
        _done = _set()
    return _done


def _set() -> bool:
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the threshold first, so that a refused one changes nothing.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
