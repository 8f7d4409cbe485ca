"""SigLIP-style vision tower of MiniCPM-V 4.6 with the 2x2 window merger (spec §3).

Every step of the tower is per slice: the patch and position embeddings, the per-slice
bidirectional attention and the window merger. So instead of one long packed sequence with
a block-diagonal mask, slices of the same patch grid are stacked into a batch and run
together: attention needs no mask, and on a GPU a video's frames (all one size) go through
in a few passes. ``VisionTower.__call__`` works on such a batch; ``encode_slices`` in
``minicpmv.py`` does the grouping.
"""


import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import VisionConfig


def position_ids(h: int, w: int, side: int) -> np.ndarray:
    """Nearest-bucket ids into the side x side table for an (h, w) patch grid (spec §3.3).

    ``floor(i * side / h)`` equals torch's float ``bucketize`` for every h used in practice and,
    unlike a float arange of boundaries, is the same on every platform.
    """
    rows = (np.arange(h) * side) // h
    cols = (np.arange(w) * side) // w
    return (rows[:, None] * side + cols[None, :]).reshape(-1)


def to_windows(x: mx.array, h: int, w: int, k: int = 2) -> mx.array:
    """(B, h*w, D) in raster order -> (B, h*w/k², k², D): kxk windows in raster order,
    tokens inside a window as (0,0), (0,1), (1,0), (1,1)."""
    B, _, D = x.shape
    x = x.reshape(B, h // k, k, w // k, k, D).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (h // k) * (w // k), k * k, D)


class Attention(nn.Module):
    """Bidirectional multi-head attention over whatever the second-to-last axis holds."""

    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dims // num_heads) ** -0.5
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.out_proj = nn.Linear(dims, dims)

    def __call__(self, x: mx.array) -> mx.array:
        B, L, D = x.shape
        q, k, v = (
            p(x).reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(B, L, D))


class GELUTanh(nn.Module):
    """GELU with the tanh approximation (``gelu_pytorch_tanh``), as a layer that a backend can
    replace (``mlx_minicpmv/cpu``)."""

    def __call__(self, x: mx.array) -> mx.array:
        return nn.gelu_approx(x)


class MLP(nn.Module):
    def __init__(self, dims: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden)
        self.act = GELUTanh()
        self.fc2 = nn.Linear(hidden, dims)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        D = config.hidden_size
        self.layer_norm1 = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.self_attn = Attention(D, config.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.mlp = MLP(D, config.intermediate_size)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = [EncoderLayer(config) for _ in range(config.num_hidden_layers)]


class WindowMerger(nn.Module):
    """``vit_merger``: attention inside each 2x2 window, then a 4-token concat MLP whose
    residual is the window mean (spec §3.5). Halves each side of the patch grid."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        D, k2 = config.hidden_size, config.window_size
        self.kernel = config.window_kernel_size[0]
        self.layer_norm1 = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.self_attn = Attention(D, config.num_attention_heads)
        self.pre_norm = nn.LayerNorm(D * k2, eps=config.layer_norm_eps)
        self.linear_1 = nn.Linear(D * k2, config.intermediate_size * k2)
        self.act = GELUTanh()
        self.linear_2 = nn.Linear(config.intermediate_size * k2, D)

    def __call__(self, x: mx.array, h: int, w: int) -> mx.array:
        B, _, D = x.shape
        residual = to_windows(x, h, w, self.kernel)  # (B, n_win, 4, D)
        y = to_windows(self.layer_norm1(x), h, w, self.kernel)
        n_win, k2 = residual.shape[1:3]
        y = self.self_attn(y.reshape(B * n_win, k2, D)).reshape(residual.shape)
        u = residual + y
        flat = u.reshape(B, n_win, k2 * D)
        out = self.linear_2(self.act(self.linear_1(self.pre_norm(flat))))
        return out + u.mean(axis=2)


class Embeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        p = config.patch_size
        self.patch_size = p
        self.side = config.num_patches_per_side
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=p, stride=p
        )
        self.position_embedding = nn.Embedding(self.side**2, config.hidden_size)

    def patchify(self, pixel_values: mx.array) -> mx.array:
        """Processor strip (1, C, p, ΣL·p) -> patch embeddings (ΣL, D), in strip order."""
        strip = pixel_values[:1].transpose(0, 2, 3, 1)  # NCHW -> NHWC, as MLX convolves
        return self.patch_embedding(strip.astype(self.patch_embedding.weight.dtype))[0, 0]

    def positions(self, h: int, w: int) -> mx.array:
        return self.position_embedding(mx.array(position_ids(h, w, self.side)))


class VisionTower(nn.Module):
    """Embeddings -> layers (window merger after ``insert_layer_id``) -> post LayerNorm."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.vit_merger = WindowMerger(config)

    def __call__(self, patches: mx.array, h: int, w: int, use_vit_merger: bool = True):
        """Run (B, h*w, D) patch embeddings of B same-sized slices.

        Returns the post-LN features (B, h'*w', D) and the grid (h', w') they are on.
        """
        x = patches + self.embeddings.positions(h, w)
        insert = self.config.insert_layer_id if use_vit_merger else -1
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x)
            if i == insert:
                x = self.vit_merger(x, h, w)
                h, w = h // self.vit_merger.kernel, w // self.vit_merger.kernel
        return self.post_layernorm(x), (h, w)


def check_grid(h: int, w: int, multiple: int):
    if h % multiple or w % multiple or h <= 0 or w <= 0:
        raise ValueError(
            f"patch grid {h}x{w} is not a positive multiple of {multiple}: pixel_values and "
            "target_sizes must come from the MiniCPM-V processor with the same downsample_mode"
        )
