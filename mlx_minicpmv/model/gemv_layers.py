"""Linear layers whose one-row calls (one decoded token) run through the BLAS GEMV on the CPU.

Swapped in at load time (``use_gemv``) for the fp32 language model on MLX's CPU backend, so the
model code stays the same everywhere; see ``mlx_minicpmv/gemv`` for why and what it measured.
Calls with more rows (prefill, vision) keep MLX's GEMM.
"""

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from .. import gemv


def one_row(x: mx.array) -> bool:
    return x.size == x.shape[-1]


class GemvLinear(nn.Linear):
    def __call__(self, x: mx.array) -> mx.array:
        if not one_row(x):
            return super().__call__(x)
        y = gemv.gemv(x, self["weight"])
        return y + self["bias"] if "bias" in self else y


class GemvEmbedding(nn.Embedding):
    """The tied head: ``as_linear`` over the embedding matrix as it is stored."""

    def as_linear(self, x: mx.array) -> mx.array:
        return gemv.gemv(x, self.weight) if one_row(x) else super().as_linear(x)


def use_gemv(module: nn.Module) -> int:
    """Swap ``module``'s float32 ``nn.Linear`` and ``nn.Embedding`` layers for the GEMV ones,
    sharing their weights; returns how many. Nothing is swapped where the extension is unavailable."""
    layers = [(name, layer) for name, layer in module.named_modules()
              if type(layer) in (nn.Linear, nn.Embedding) and layer.weight.dtype == mx.float32]
    if not layers or gemv.load() is None:  # nothing to build the extension for, or no extension
        return 0
    swaps = []
    for name, layer in layers:
        new = GemvLinear(1, 1, bias="bias" in layer) if type(layer) is nn.Linear else GemvEmbedding(1, 1)
        new.update(layer.parameters())
        swaps.append((name, new))
    module.update_modules(tree_unflatten(swaps))
    return len(swaps)

