"""``x @ w.T`` for one row through the BLAS's GEMV, for decoding on MLX's CPU backend.

MLX's CPU ``Matmul`` always calls ``cblas_sgemm``, and for a single row OpenBLAS's GEMM
packs the weight matrix before using it, so it reads the weights about three times. Measured
here over the matrices of one decoded token (fp32, OpenBLAS, 2 cores): 195 ms through MLX's
matmul, 55 ms through ``cblas_sgemv`` (the 248k x 1024 head alone 68 -> 20 ms). MLX has no
way to run a custom CPU kernel from Python (``mx.fast.metal_kernel`` is GPU only), so this
is a small MLX C++ extension primitive (``gemv.cpp``) built on first use against the MLX and
nanobind of the running Python (``build.py``), and cached.

``load()`` returns the extension module, or None where it cannot be had (not Linux, no
C++ compiler, ``MLX_MINICPMV_GEMV=off``) with one warning why; callers then keep MLX's
matmul. cmake comes from the ``cmake`` wheel where the system has none. On a Mac MLX
runs on Metal, whose matmul already has a GEMV, and nothing is built.
"""

import os
import sys
import warnings

_module = None
_failed = None  # why the extension is unavailable, once load() found out
failure = None  # the exception that made it so, where building failed


def load():
    """The compiled extension (built once per MLX version), or None with a warning why not."""
    global _module, _failed, failure
    if _module is not None or _failed is not None:
        return _module
    if sys.platform != "linux" or os.environ.get("MLX_MINICPMV_GEMV", "").lower() == "off":
        _failed = "off on this platform or by MLX_MINICPMV_GEMV=off"
        return None
    from .build import BuildError, build_and_import

    try:
        module = build_and_import()
        _self_test(module)
    except (BuildError, ImportError, OSError, RuntimeError, TypeError, ValueError) as e:
        _failed, failure = str(e), e
        warnings.warn(f"mlx_minicpmv: decoding uses MLX's matmul, not the faster GEMV extension: {e}",
                      RuntimeWarning, stacklevel=2)
        return None
    _module = module
    return _module


def _self_test(module) -> None:
    """Refuse an extension that does not agree with MLX (say, a nanobind ABI that no longer matches)."""
    import mlx.core as mx

    x = mx.arange(6, dtype=mx.float32).reshape(2, 3) / 7
    w = mx.arange(12, dtype=mx.float32).reshape(4, 3) / 5
    if not mx.allclose(module.gemv(x, w), x @ w.T, atol=1e-5).item():
        raise RuntimeError("the built GEMV extension disagrees with MLX's matmul")


def gemv(x, w):
    """``x @ w.T`` (x: (..., K), w: (N, K), float32) through ``cblas_sgemv``; needs ``load()``."""
    return _module.gemv(x, w)
