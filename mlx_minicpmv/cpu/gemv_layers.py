"""Decode-step matmuls on the CPU: linear layers through the BLAS GEMV, and the tied head's layout.

MLX's CPU matmul is always a GEMM; for one decoded token the GEMV extension (``cpu/gemv``) is
~3.5x faster. A batch's decode step (2-8 rows, the server's concurrent requests) goes through
``cpu/kernels``' ``rows_matmul``, which reads each weight once for all the rows, where the GEMM
packs the weights first (for the 32k x 1024 head at 8 rows 60 ms against MLX's 132 ms and 8 x
36 ms one row at a time, measured on a loaded 2-core machine); so do short prefill chunks, up to
``FEW_ROWS`` rows. Calls with more rows (long prompts, vision) keep MLX's GEMM. Where the
extension cannot be had, the tied head is held transposed instead (``transpose_tied_head``).
"""

import mlx.core as mx
import mlx.nn as nn

from . import gemv, kernels
from .registry import replaces


def one_row(x: mx.array) -> bool:
    return x.size == x.shape[-1]


# Up to this many rows go through rows_matmul (in passes of kernels.MAX_ROWS): a short prompt's
# prefill chunk too, measured with benchmarks/serve.py's model. On the loaded 2-core machine a 31-token chunk of the small serve.py model took
# 4.5-9.6 s through MLX's GEMM (OpenBLAS's threads wait on the busy cores), and on two idle cores
# four passes of streamed weights are no more work than the GEMM's packing and compute.
FEW_ROWS = 32


def few_rows(x: mx.array) -> bool:
    return x.size <= FEW_ROWS * x.shape[-1] and kernels.load() is not None


def decode_matmul(x: mx.array, weight: mx.array):
    """``x @ weight.T`` for one row or a few, or None where MLX's GEMM is the right call."""
    if one_row(x):
        return gemv.gemv(x, weight)
    if few_rows(x):
        return kernels.rows_matmul(x, weight)
    return None


def gemv_fits(layer: nn.Module) -> bool:
    """fp32 weights, and the extension built (only asked once there is such a layer)."""
    return layer.weight.dtype == mx.float32 and gemv.load() is not None


@replaces(nn.Linear, when=gemv_fits)
class GemvLinear(nn.Linear):
    def __call__(self, x: mx.array) -> mx.array:
        y = decode_matmul(x, self["weight"])
        if y is None:
            return super().__call__(x)
        return y + self["bias"] if "bias" in self else y


@replaces(nn.Embedding, when=gemv_fits)
class GemvEmbedding(nn.Embedding):
    """The tied head: ``as_linear`` over the embedding matrix as it is stored."""

    def as_linear(self, x: mx.array) -> mx.array:
        y = decode_matmul(x, self.weight)
        return super().as_linear(x) if y is None else y


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
