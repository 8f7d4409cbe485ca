"""One-token matmuls on the CPU: linear layers through the BLAS GEMV, and the tied head's layout.

MLX's CPU matmul is always a GEMM; for one decoded token the GEMV extension (``cpu/gemv``) is
~3.5x faster. Calls with more rows (prefill, vision) keep MLX's GEMM. Where the extension
cannot be had, the tied head is held transposed instead (``transpose_tied_head``).
"""

import mlx.core as mx
import mlx.nn as nn

from . import gemv
from .registry import replaces


def one_row(x: mx.array) -> bool:
    return x.size == x.shape[-1]


def gemv_fits(layer: nn.Module) -> bool:
    """fp32 weights, and the extension built (only asked once there is such a layer)."""
    return layer.weight.dtype == mx.float32 and gemv.load() is not None


@replaces(nn.Linear, when=gemv_fits)
class GemvLinear(nn.Linear):
    def __call__(self, x: mx.array) -> mx.array:
        if not one_row(x):
            return super().__call__(x)
        y = gemv.gemv(x, self["weight"])
        return y + self["bias"] if "bias" in self else y


@replaces(nn.Embedding, when=gemv_fits)
class GemvEmbedding(nn.Embedding):
    """The tied head: ``as_linear`` over the embedding matrix as it is stored."""

    def as_linear(self, x: mx.array) -> mx.array:
        return gemv.gemv(x, self.weight) if one_row(x) else super().as_linear(x)


def transpose_tied_head(model) -> None:
    """Hold the tied embedding as a transposed view of a (hidden, vocab) array, where the GEMV
    extension (20 ms for the head) is unavailable.

    For one decoded token ``h @ W.T`` over the 248k x 1024 head took 76 ms against 48 ms with
    the transposed layout (measured), a seventh of a decode step. The view leaves the math and
    the memory as they were; embedding lookups gather columns instead (6 ms for 512 tokens).
    The copy costs ~4 s once at load.
    """
    emb = model.language_model.embed_tokens
    if model.config.text_config.tie_word_embeddings and type(emb) is nn.Embedding:
        emb.weight = mx.contiguous(emb.weight.T).T
