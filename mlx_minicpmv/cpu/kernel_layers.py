"""Linear and embedding layers whose weights stay as stored (quantised, bf16 or fp16) on the
CPU, multiplied by the kernels of ``cpu/kernels`` with x and the result in float32.

``load`` leaves these layers' weights as stored when it widens the rest of the model to fp32
(``seam.keeps_stored``), then the seam changes their class to these subclasses, which change
how they compute, not what they hold.
"""

import mlx.core as mx
import mlx.nn as nn

from . import kernels
from .gemv_layers import GemvLinear
from .kernels import half_matmul, quantized_matmul, supports_quantized
from .registry import replaces

HALF = (mx.bfloat16, mx.float16)


def stored_kind(layer: nn.Module):
    """"quantized" or "half" where the kernels read the layer's weights as stored, else None."""
    if type(layer) in (nn.QuantizedLinear, nn.QuantizedEmbedding):
        ok = supports_quantized(layer.group_size, layer.bits, layer.mode) and layer.get("biases") is not None
        return "quantized" if ok else None
    if type(layer) in (nn.Linear, nn.Embedding) and layer.weight.dtype in HALF:
        return "half"
    return None


def reads_stored(layer: nn.Module) -> bool:
    """The kernels apply to the layer, and they are built (only asked once there is such a layer)."""
    return stored_kind(layer) is not None and kernels.load() is not None


def _f32(x: mx.array) -> mx.array:
    return x.astype(mx.float32)


def _with_bias(layer: nn.Module, y: mx.array) -> mx.array:
    return y + layer["bias"] if "bias" in layer else y


@replaces(nn.QuantizedLinear, when=reads_stored)
class KernelQuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        return _with_bias(self, quantized_matmul(_f32(x), self["weight"], self["scales"], self["biases"],
                                                 self.group_size, self.bits))


@replaces(nn.Linear, when=reads_stored)
class KernelHalfLinear(nn.Linear):
    def __call__(self, x: mx.array) -> mx.array:
        return _with_bias(self, half_matmul(_f32(x), self["weight"]))


@replaces(nn.QuantizedEmbedding, when=reads_stored)
class KernelQuantizedEmbedding(nn.QuantizedEmbedding):
    """Lookups dequantise the rows looked up, in fp32; ``as_linear`` (the tied head) is the kernels'."""

    def __call__(self, ids: mx.array) -> mx.array:
        return mx.dequantize(self["weight"][ids], _f32(self["scales"][ids]), _f32(self["biases"][ids]),
                             self.group_size, self.bits, mode=self.mode)

    def as_linear(self, x: mx.array) -> mx.array:
        return quantized_matmul(_f32(x), self["weight"], self["scales"], self["biases"], self.group_size, self.bits)


@replaces(nn.Embedding, when=reads_stored)
class KernelHalfEmbedding(nn.Embedding):
    def __call__(self, ids: mx.array) -> mx.array:
        return _f32(self["weight"][ids])

    def as_linear(self, x: mx.array) -> mx.array:
        return half_matmul(_f32(x), self["weight"])


KERNEL_LAYERS = (KernelQuantizedLinear, KernelHalfLinear, KernelQuantizedEmbedding, KernelHalfEmbedding)


def projection(layer: nn.Module):
    """``((bits, group), weights)`` for a kernel's own product with ``layer``: 4 or 8 with weight,
    scales and biases, 16 with a bf16/fp16 weight, 32 with an fp32 one; None for anything else (a
    bias, a LoRA adapter, another mode), which then runs as a layer."""
    if "bias" in layer:
        return None
    if type(layer) is KernelQuantizedLinear:
        return (layer.bits, layer.group_size), [layer["weight"], layer["scales"], layer["biases"]]
    if type(layer) is KernelHalfLinear:
        return (16, 0), [layer["weight"]]
    if type(layer) in (nn.Linear, GemvLinear) and layer["weight"].dtype == mx.float32:
        return (32, 0), [layer["weight"]]
    return None


def stored(*layers: nn.Module):
    """``(kinds, weights)`` of ``layers`` for the kernels' own products with them (``kernels.deltanet_decode``):
    each layer's ``(bits, group)`` and its arrays, in order; None where one is not ``projection``'s."""
    found = [projection(layer) for layer in layers]
    if any(p is None for p in found):
        return None
    return [kind for kind, _ in found], [w for _, weights in found for w in weights]
