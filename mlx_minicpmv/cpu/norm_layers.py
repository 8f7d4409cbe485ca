"""LayerNorm and RMSNorm as MLX's CPU backend runs them fast (see ``seam.py``).

MLX's fast norms run on one thread on the CPU: a vision layer's LayerNorm over 1024 x 1152
floats took 5.8 ms, the DeltaNet q/k norms at 512 tokens 8.4 ms a layer, ~0.3 s of a 448x448
image and of a 512-token prefill. From ``fast_math.KERNEL_SIZE`` elements ``cpu/kernels``' norm
runs them over rows on every core (a decode step's single row stays in MLX's fused graph).
"""

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gated_delta

from . import fast_math, kernels
from .registry import replaces


def _by_kernel(x: mx.array, *params) -> bool:
    """float32 throughout, and ``fast_math.by_kernel`` (the activations' size threshold)."""
    return (x.dtype == mx.float32 and all(p is None or p.dtype == mx.float32 for p in params)
            and fast_math.by_kernel(x))


def layer_norm(x: mx.array, weight, bias, eps: float) -> mx.array:
    if _by_kernel(x, weight, bias):
        return kernels.layer_norm(x, weight, bias, eps)
    return mx.fast.layer_norm(x, weight, bias, eps)


def rms_norm(x: mx.array, weight, eps: float) -> mx.array:
    if _by_kernel(x, weight):
        return kernels.rms_norm(x, weight, eps)
    return mx.fast.rms_norm(x, weight, eps)


def normalize_qk(q: mx.array, k: mx.array, *, inv_scale: float, eps: float):
    """mlx-lm's ``normalize_qk`` (L2 norm as an RMSNorm with a scaled eps) through ``rms_norm``."""
    if not _by_kernel(q):
        return gated_delta.normalize_qk(q, k, inv_scale=inv_scale, eps=eps)
    rms_eps = eps * inv_scale**2
    return (inv_scale**2) * rms_norm(q, None, rms_eps), inv_scale * rms_norm(k, None, rms_eps)


@replaces(nn.LayerNorm)
class CpuLayerNorm(nn.LayerNorm):
    def __call__(self, x: mx.array) -> mx.array:
        return layer_norm(x, self.get("weight"), self.get("bias"), self.eps)


@replaces(nn.RMSNorm)
class CpuRMSNorm(nn.RMSNorm):
    def __call__(self, x: mx.array) -> mx.array:
        return rms_norm(x, self["weight"], self.eps)
