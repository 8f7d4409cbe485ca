"""Final merger (``model.merger``): 2x2 concat -> LayerNorm -> Linear -> GELU(erf) -> Linear (spec §4)."""

import mlx.core as mx
import mlx.nn as nn

from .vision import to_windows


class DownsampleMLP(nn.Module):
    def __init__(self, dims: int, out_dims: int, window: int = 4):
        super().__init__()
        # eps is hard-coded to 1e-6 in the reference, whatever the vision config says.
        self.pre_norm = nn.LayerNorm(dims * window, eps=1e-6)
        self.linear_1 = nn.Linear(dims * window, dims * window)
        self.linear_2 = nn.Linear(dims * window, out_dims)

    def __call__(self, x: mx.array) -> mx.array:
        # Exact erf GELU here, unlike the tanh approximation inside the tower.
        return self.linear_2(nn.gelu(self.linear_1(self.pre_norm(x))))


class Merger(nn.Module):
    def __init__(self, vision_dims: int, text_dims: int, kernel=(2, 2), times: int = 1):
        super().__init__()
        if kernel[0] != kernel[1]:
            raise ValueError(f"merge_kernel_size must be square, got {tuple(kernel)}")
        self.kernel = kernel[0]
        window = self.kernel * self.kernel
        self.mlp = [DownsampleMLP(vision_dims, vision_dims, window) for _ in range(times - 1)]
        self.mlp.append(DownsampleMLP(vision_dims, text_dims, window))

    def __call__(self, x: mx.array, h: int, w: int) -> mx.array:
        """(B, h*w, D) post-LN tower output on an (h, w) grid -> (B, h*w/k²^times, text_dims)."""
        for mlp in self.mlp:
            B, _, D = x.shape
            x = mlp(to_windows(x, h, w, self.kernel).reshape(B, -1, D * self.kernel**2))
            h, w = h // self.kernel, w // self.kernel
        return x
