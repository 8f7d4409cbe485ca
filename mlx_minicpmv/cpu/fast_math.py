"""exp, sigmoid, SiLU, tanh-GELU and softmax that are fast on MLX's CPU backend.

MLX's CPU backend evaluates transcendental functions one scalar call per element, and its
compiled kernels are plain ``-O3`` loops, so ``mx.exp``/``mx.sigmoid`` run at ~110 M/s (4.4M
floats: exp 38 ms, sigmoid 57 ms, tanh-GELU 95 ms, measured on the CI machine) while adds and
multiplies stream at memory speed. They are a third of a vision layer and of a DeltaNet
layer's prefill there. Here exp is range reduction to 2^n·2^f, a degree-7 polynomial for 2^f
in fused multiply-adds, and 2^n assembled from integer bits: 3.3x faster, and as exact as
``mx.exp`` (largest relative error 1.7e-6 against float64 on normal(0, 5) inputs, the same as
``mx.exp``'s). For other dtypes, or without a C++ compiler for ``mx.compile``'s CPU kernels,
the functions are MLX's own. Only the CPU layers (``cpu/*_layers.py``) call them.
"""

import shutil
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from . import kernels

LOG2E = 1.4426950408889634
ROUND = 12582912.0  # 1.5·2^23: adding it rounds a float to the nearest integer, in its low bits
# Taylor series of 2^f = e^(f ln 2); on |f| <= 1/2 the first dropped term is below 1e-8.
POW2 = (1.0, 0.6931471805599453, 0.2402265069591007, 0.05550410866482158, 0.009618129107628477,
        0.0013333558146428443, 0.00015403530393381606, 1.525273380405984e-05)
HAS_COMPILER = shutil.which("g++") is not None  # what mx.compile runs for CPU kernels
# From this many elements the MLPs' activations go to the kernels (``cpu/kernels``), which run
# them on every core: a decode step's few thousand stay in MLX's fused graph.
KERNEL_SIZE = 1 << 16


def fast(x: mx.array) -> bool:
    return HAS_COMPILER and x.dtype == mx.float32


@partial(mx.compile, shapeless=True)
def _reduce(x):
    """x -> (n + ROUND, 2^f) with x·log2(e) = n + f, n an integer, |f| <= 1/2.

    x is clipped to [-80, 89], so e^x below e^-80 (1.8e-35) reads as e^-80: every product stays
    a normal float, where a subnormal one takes ~100x longer on x86 (saturated GELU inputs
    took 210 ms instead of 25 with a bound of -87). Against the 1 in a sigmoid or a softmax's
    sum, e^-80 is nothing in float32. Above, n reaches 128, whose bits are inf: e^x overflows
    as mx.exp's does (from 88.4 here, 88.7 there), and the sigmoid family saturates to exactly
    0 as MLX's, where a bound of 88 left silu(-1e7) at -6e-32.
    """
    # Python-float bounds and Estrin's scheme: mx.clip's array bounds made the shapeless
    # kernel strided, and Horner's 14-deep chain split it into several passes (23 ms -> 9 ms)
    t = mx.maximum(mx.minimum(x, 89.0), -80.0) * LOG2E
    n = t + ROUND
    f = t - (n - ROUND)
    c, f2 = POW2, f * f
    p = (c[0] + c[1] * f) + f2 * (c[2] + c[3] * f) + (f2 * f2) * ((c[4] + c[5] * f) + f2 * (c[6] + c[7] * f))
    return n, p


@partial(mx.compile, shapeless=True)
def _exponent_bits(n):
    """The float32 bits of 2^n from the bits of n + ROUND (0x4B400000 + n)."""
    return (n - (0x4B400000 - 127)) << 23


def _exp_parts(x):
    """(2^n, 2^f) with 2^n·2^f = e^x, as two arrays for the caller's fused last step."""
    n, p = _reduce(x)
    return _exponent_bits(n.view(mx.int32)).view(mx.float32), p


@partial(mx.compile, shapeless=True)
def _product(a, b):
    return a * b


@partial(mx.compile, shapeless=True)
def _sigmoid_out(scale, p):
    return 1.0 / (1.0 + scale * p)


@partial(mx.compile, shapeless=True)
def _times_sigmoid_out(x, scale, p):
    return x / (1.0 + scale * p)


@partial(mx.compile, shapeless=True)
def _swiglu_out(gate, x, scale, p):
    # silu(gate) first: gate·x overflowed to -inf (then NaN) for |gate·x| > 3.4e38, where
    # silu(gate)·x is 0 for a gate that negative
    return gate / (1.0 + scale * p) * x


@partial(mx.compile, shapeless=True)
def _gelu_arg(x):
    # 0.5·(1 + tanh(u)) = sigmoid(2u): tanh-GELU is x·sigmoid(-(-2u))
    return -1.5957691216057308 * (x + 0.044715 * x * x * x)


def exp(x: mx.array) -> mx.array:
    if not fast(x):
        return mx.exp(x)
    return _product(*_exp_parts(x))


def logsumexp(x: mx.array, axis: int = -1, keepdims: bool = False) -> mx.array:
    """``mx.logsumexp`` along one axis with the fast exp: over the 248k-token vocabulary, a
    decoded token's log-probabilities, 3.0 ms with MLX's exp against 1.0 in these MLX ops, and
    the kernels' (the last axis, on every core) faster still."""
    if not fast(x):
        return mx.logsumexp(x, axis=axis, keepdims=keepdims)
    if axis in (-1, x.ndim - 1) and x.shape[-1] > 0 and kernels.load() is not None:  # every core
        out = kernels.logsumexp(x)
        return out if keepdims else out.squeeze(-1)
    top = mx.max(x, axis=axis, keepdims=True)
    finite = mx.isfinite(top)
    out = top + mx.log(mx.sum(exp(x - mx.where(finite, top, 0)), axis=axis, keepdims=True))
    out = mx.where(finite, out, top)  # a row all -inf, or with +inf or NaN: MLX's -inf, +inf, NaN
    return out if keepdims else out.squeeze(axis)


def by_kernel(*arrays) -> bool:
    """Arrays of one shape, big enough that the kernels' version of an op (the same math, on every
    core) pays for its call, and the kernels built. The CPU norms (``norm_layers.py``) ask too."""
    return arrays[0].size >= KERNEL_SIZE and all(a.shape == arrays[0].shape for a in arrays) and kernels.load() is not None


def sigmoid(x: mx.array) -> mx.array:
    if not fast(x):
        return mx.sigmoid(x)
    if by_kernel(x):
        return kernels.activation(x, "sigmoid")
    return _sigmoid_out(*_exp_parts(-x))


def silu(x: mx.array) -> mx.array:
    if not fast(x):
        return nn.silu(x)
    if by_kernel(x):
        return kernels.activation(x, "silu")
    return _times_sigmoid_out(x, *_exp_parts(-x))


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """silu(gate)·x, as mlx-lm's ``swiglu``."""
    if not fast(gate):
        return nn.silu(gate) * x
    if x.dtype == mx.float32 and by_kernel(gate, x):
        return kernels.swiglu(gate, x)
    return _swiglu_out(gate, x, *_exp_parts(-gate))


def gelu_tanh(x: mx.array) -> mx.array:
    """GELU with the tanh approximation (``gelu_pytorch_tanh``)."""
    if not fast(x):
        return nn.gelu_approx(x)
    if by_kernel(x):
        return kernels.activation(x, "gelu_tanh")
    return _times_sigmoid_out(x, *_exp_parts(_gelu_arg(x)))


def softmax(x: mx.array, axis: int = -1) -> mx.array:
    """Along the last axis, the kernels' softmax where they are built: the same exp, with each
    row in cache through max, exp and sum, over every core (16 x 1024 x 1024 scores 30 ms
    against 310 through the ops below)."""
    if not fast(x):
        return mx.softmax(x, axis=axis, precise=True)
    if axis in (-1, x.ndim - 1) and kernels.load() is not None:
        return kernels.softmax(x)
    e = exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
