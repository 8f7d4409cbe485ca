"""The one predicate (``applies``) and the one place the CPU specialisations go in (``specialise``)."""

import os
from typing import Dict, Optional

import mlx.core as mx

ENV = "MLX_MINICPMV_CPU_KERNELS"
_SWITCH = {"on": True, "1": True, "true": True, "yes": True, "off": False, "0": False, "false": False, "no": False}


def applies(cpu_kernels: Optional[bool] = None) -> bool:
    """Whether a model loaded now gets the CPU specialisations: where MLX computes on its CPU
    backend, unless ``cpu_kernels`` is False or (when it is None) ``MLX_MINICPMV_CPU_KERNELS``
    says off. Elsewhere (Metal, CUDA) the portable model runs as it is."""
    if cpu_kernels is None:
        value = os.environ.get(ENV, "on").strip().lower()
        if value not in _SWITCH:
            raise ValueError(f"{ENV}={value!r} is neither on nor off; set it to 'on' or 'off' (or unset it)")
        cpu_kernels = _SWITCH[value]
    return bool(cpu_kernels) and mx.default_device() == mx.cpu


def compute_dtype():
    """The dtype ``load`` widens a checkpoint to where the seam applies: float32.

    MLX's CPU backend multiplies bf16 matrices ~34x and quantised ones ~700x slower than fp32
    (measured on the CI machine: 7.5 and 0.35 against 257 GFLOP/s), so there a half-precision
    or quantised checkpoint is widened once at load, at the memory cost of fp32 weights.
    """
    return mx.float32


_any_thread_stream = None


def any_thread_stream():
    """The stream a load that defers the vision weights reads on (``loading.load_model``):
    MLX's streams belong to the thread that made them, and the first image may come in another
    (the server's scheduler). ``Model.read_vision`` computes what is on it, once, under a lock."""
    global _any_thread_stream
    if _any_thread_stream is None:
        _any_thread_stream = mx.new_thread_unsafe_stream(mx.cpu)
    return _any_thread_stream


def keeps_stored(layer) -> bool:
    """Whether a CPU kernel reads ``layer``'s weights as stored (quantised, bf16 or fp16), so
    that ``load`` leaves them so when it widens the rest to float32 (``cpu/kernel_layers.py``)."""
    from . import kernel_layers

    return kernel_layers.reads_stored(layer)


def specialise(model) -> Dict[str, int]:
    """Put the CPU specialisations into a loaded ``model``: the registered CPU layers (see
    ``registry.py``) and the CPU's choices for the whole model. Returns the swaps made."""
    from . import gemv_layers, kernel_layers, language_layers, norm_layers, vision_layers  # noqa: F401  (they register their layers)
    from .fast_math import logsumexp
    from .allocator import keep_freed_buffers
    from .registry import swap_layers

    keep_freed_buffers()
    counts = swap_layers(model)
    # One vision slice per tower pass: its attention scores and MLP activations then stay in
    # cache (a 1088-patch frame took 3.4 s alone against 4.3 s a frame in batches of 4).
    model.patches_per_pass = 1
    # MLX's CPU exp is scalar: 3 ms of a decoded token's log-probabilities over 248k logits
    model.logsumexp = logsumexp
    if not isinstance(model.language_model.embed_tokens, gemv_layers.GemvEmbedding):
        gemv_layers.transpose_tied_head(model)
    return counts


def specialise_for_training(model) -> Dict[str, int]:
    """The CPU specialisations a training step can differentiate: the DeltaNet layers with the
    chunked delta rule (``gated_delta.py``; the recurrence kept every token's state for the
    backward pass). The rest stays portable: the other CPU layers' fast exp and GEMV have no
    gradient. Returns the swaps made."""
    from collections import Counter

    from ..model.language import GatedDeltaNet
    from .language_layers import CpuGatedDeltaNet

    counts: Counter = Counter()
    for _, layer in model.named_modules():
        if type(layer) is GatedDeltaNet:
            layer.__class__ = CpuGatedDeltaNet
            counts[CpuGatedDeltaNet.__name__] += 1
    return dict(counts)
