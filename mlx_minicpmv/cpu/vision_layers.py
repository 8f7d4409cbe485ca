"""The vision tower's layers as MLX's CPU backend runs them fast (see ``seam.py``)."""

import mlx.core as mx

from ..model.vision import Attention, GELUTanh
from . import fast_math
from .registry import replaces


@replaces(Attention)
class CpuVisionAttention(Attention):
    """One head at a time over a slice: a head's L x L scores (4 MB for a 1024-patch slice)
    stay in cache through softmax and the product with v, where all heads' at once stream
    64 MB through memory each pass (104 ms against SDPA's 224 ms a layer). The merger's 2x2
    windows (L = 4) stay on SDPA (55 ms for a 1024-patch slice; a broadcast-multiply form took 66)."""

    def __call__(self, x: mx.array) -> mx.array:
        B, L, D = x.shape
        if L <= 64 or not fast_math.fast(x):
            return super().__call__(x)
        q, k, v = (
            p(x).reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        o = mx.concatenate([
            fast_math.softmax((q[:, h : h + 1] * self.scale) @ k[:, h : h + 1].swapaxes(-1, -2)) @ v[:, h : h + 1]
            for h in range(self.num_heads)
        ], axis=1)
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(B, L, D))


@replaces(GELUTanh)
class CpuGELUTanh(GELUTanh):
    def __call__(self, x: mx.array) -> mx.array:
        return fast_math.gelu_tanh(x)
