"""Matmuls over quantised and half-precision weights as stored, and the ops MLX's CPU backend
runs on one thread (the delta rule, softmax, activations, norms), for MLX's CPU backend.

MLX's CPU backend multiplies quantised weights element by element (0.35 GFLOP/s) and bf16
ones by converting whole matrices per call (7.5 GFLOP/s, measured), so ``load`` used to widen
such checkpoints to fp32 on the CPU, at 4-6x the memory. These kernels read the stored
weights: MLX's affine quantisation (4 or 8 bits, groups of 32, 64 or 128, scales and biases
as MLX stores them) and bf16/fp16, with x and the result in float32. See ``matmul.cpp`` for
the GEMV/GEMM split, ``kernels_impl.h`` for why they are written by hand, and ``amx.cpp`` for
the bf16 GEMM on Intel's AMX tile unit. The rest are one primitive each (``delta.cpp``,
``scan.cpp``, ``softmax.cpp``, ``activation.cpp``, ``norm.cpp``), over rows or parts of their
arrays on the kernels' thread pool, with the same formulas as the MLX ops they replace.

The extension is built on first use like the GEMV one (``mlx_minicpmv/cpu/gemv/build.py``) and
checked against MLX's own matmuls at load (``_self_test``); where it cannot be built or
disagrees, ``load()`` warns once and returns None, and callers widen to fp32 as before.
``MLX_MINICPMV_KERNEL_ISA`` picks the instruction set (``amx``: ``avx512vnni`` with the AMX GEMMs;
``avx512vnni``: AVX-512 with the quantised GEMV in VNNI's integer dot products, ``vnni.cpp``;
``avx512``, ``avx2``, ``scalar``; default: the best this CPU runs) or turns the kernels ``off``.
A decoded token's DeltaNet layer runs as one primitive of these kernels (``decode_layer.cpp``).
"""

import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("CMakeLists.txt", "matmul.cpp", "linear.h", "decode_layer.h", "decode_layer.cpp", "amx.cpp", "delta.h", "delta.cpp", "scan.h", "scan.cpp",
           "state_primitive.h", "softmax.h", "softmax.cpp", "activation.h", "activation.cpp", "conv.h", "conv.cpp", "norm.h", "norm.cpp",
           "bind.h", "pool.h", "pool.cpp", "scratch.h", "dispatch.cpp", "kernels.h", "kernels_impl.h", "kernels_scalar.cpp",
           "kernels_avx2.cpp", "kernels_avx512.cpp", "half_gemm.cpp", "avx512_vector.h", "avx512_gemm.h", "vnni.h", "vnni.cpp", "vnni_gemm.cpp")
BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
MAX_ROWS = 8  # rows_matmul's rows at once (kMaxRows in kernels.h); more run as passes of 8

_module = None
_failed = None  # why the kernels are unavailable, once load() found out
_isa = ""  # the instruction set asked for; "" is the best the CPU runs


def load():
    """The compiled extension (built once per MLX version), or None with a warning why not."""
    global _module, _failed, _isa
    if _module is not None or _failed is not None:
        return _module
    choice = os.environ.get("MLX_MINICPMV_KERNEL_ISA", "").lower()
    if sys.platform != "linux" or choice == "off":
        _failed = "off on this platform or by MLX_MINICPMV_KERNEL_ISA=off"
        return None
    from ..gemv.build import BuildError, build_and_import

    try:
        module = build_and_import(HERE, SOURCES, "_cpu_kernels", __name__)
        if choice and choice not in module.runnable_isas():
            raise ValueError(f"MLX_MINICPMV_KERNEL_ISA={choice}: this CPU runs {', '.join(module.runnable_isas())}")
        _isa = choice
        _self_test(module)
    except (BuildError, ImportError, OSError, RuntimeError, TypeError, ValueError) as e:
        _failed = str(e)
        warnings.warn(f"mlx_minicpmv: quantised and bf16/fp16 weights are widened to fp32 on this CPU, "
                      f"the kernels that read them as stored are unavailable: {e}", RuntimeWarning, stacklevel=2)
        return None
    _module = module
    return _module


def isa() -> str:
    """The instruction set the kernels run with (after ``load()``)."""
    return _isa or _module.runnable_isas()[0]


def supports_quantized(group_size: int, bits: int, mode: str = "affine") -> bool:
    return mode == "affine" and bits in BITS and group_size in GROUP_SIZES


def quantized_matmul(x, w, scales, biases, group_size: int, bits: int, isa: str = None):
    """``x @ dequantize(w, scales, biases).T`` (MLX's ``quantized_matmul`` with transpose=True),
    x float32 (..., K), w (N, K·bits/32) uint32; needs ``load()``."""
    return _module.quantized_matmul(x, w, scales, biases, group_size, bits, _isa if isa is None else isa)


def half_matmul(x, w, isa: str = None):
    """``x @ w.T`` for bf16 or fp16 w (N, K), x float32 (..., K); needs ``load()``."""
    return _module.half_matmul(x, w, _isa if isa is None else isa)


def rows_matmul(x, w, isa: str = None):
    """``x @ w.T`` for fp32 w (N, K) and a few rows of x (a batch's decode step), each weight
    read once for all rows, where MLX's GEMM would pack the weights first; needs ``load()``."""
    return _module.rows_matmul(x, w, _isa if isa is None else isa)


def gated_delta_step(q, k, v, g, beta, state, isa: str = None):
    """One decoded token of the gated delta rule, ``(y, state)``: q, k (B, H, Dk), v (B, H, Dv),
    g and beta (B, H), state (B, H, Dv, Dk), all float32 (mlx-lm's ``_gated_delta_step_ops``
    with scalar gating and no mask); needs ``load()``."""
    return _module.gated_delta_step(q, k, v, g, beta, state, _isa if isa is None else isa)


def gated_delta_scan(q, k, v, g, beta, state, isa: str = None):
    """The gated delta rule over T tokens, ``(y, state)``: q, k (B, T, Hk, Dk), v (B, T, Hv, Dv),
    g and beta (B, T, Hv), state (B, Hv, Dv, Dk), all float32 (mlx-lm's ``gated_delta_ops`` with
    scalar gating and no mask, Hv a multiple of Hk); needs ``load()``."""
    return _module.gated_delta_scan(q, k, v, g, beta, state, _isa if isa is None else isa)


def deltanet_decode(arrays, kinds, dims, eps, isa: str = None):
    """One token of one sequence through a whole DeltaNet decoder layer, ``(out, conv_state,
    state)``, in one primitive (``decode_layer.cpp``: MLX's per-op cost was most of the layer):
    arrays = x, conv state, state, the two layer norms' weights, conv1d's taps (kernel, C), A_log, dt_bias,
    the gated norm's weight, then the eight projections' weights (qkv, z, b, a, out, gate, up,
    down) with kinds their ``(bits, group)`` (``kernel_layers.projection``); dims (hidden,
    intermediate, k_heads, v_heads, k_dim, v_dim, conv_kernel); eps (layer norms, gated norm,
    q/k L2 norm); needs ``load()``."""
    return _module.deltanet_decode(arrays, kinds, dims, eps, _isa if isa is None else isa)


def attention_decode(arrays, kinds, dims, floats, front: bool, isa: str = None):
    """One token of one sequence through an attention decoder layer, in two primitives around
    the KV cache update (``decode_layer.cpp``): the front ``(q, k, v, gate)`` from arrays = x,
    input_layernorm, q_norm, k_norm, the RoPE frequencies, then q_proj, k_proj, v_proj; the back
    the layer's output from arrays = x, q, the cache's keys and values, gate,
    post_attention_layernorm, then o_proj, gate_proj, up_proj, down_proj; kinds the projections'
    ``(bits, group)``; dims (hidden, intermediate, heads, kv_heads, head_dim, rotary, offset);
    floats (norm eps, score scale); needs ``load()``."""
    return _module.attention_decode(arrays, kinds, dims, floats, front, _isa if isa is None else isa)


def softmax(x, isa: str = None):
    """Softmax along the last axis of float32 x, with ``fast_math``'s exp; needs ``load()``."""
    return _module.softmax(x, _isa if isa is None else isa)


def logsumexp(x, isa: str = None):
    """log Σ e^x along the last axis of float32 x, kept as (..., 1), with ``fast_math``'s exp,
    over the rows or parts of a row on every core; needs ``load()``."""
    return _module.logsumexp(x, _isa if isa is None else isa)


def activation(x, name: str, isa: str = None):
    """``gelu_tanh``, ``silu`` or ``sigmoid`` of float32 x, as ``fast_math``'s; needs ``load()``."""
    return _module.activation(x, name, _isa if isa is None else isa)


def swiglu(gate, x, isa: str = None):
    """silu(gate)·x for float32 arrays of one shape, as ``fast_math.swiglu``; needs ``load()``."""
    return _module.swiglu(gate, x, _isa if isa is None else isa)


def causal_conv_silu(state, x, w, isa: str = None):
    """``silu`` (``fast_math``'s) of the depthwise causal conv over [state; x]: state (B, K-1, C),
    x (B, S, C), w (K, C) the conv weight transposed, all float32 -> (B, S, C); needs ``load()``."""
    return _module.causal_conv_silu(state, x, w, _isa if isa is None else isa)


def layer_norm(x, weight, bias, eps: float, isa: str = None):
    """``mx.fast.layer_norm`` for float32 x, weight and bias (or None); needs ``load()``."""
    return _module.norm(x, weight, bias, eps, False, _isa if isa is None else isa)


def rms_norm(x, weight, eps: float, isa: str = None):
    """``mx.fast.rms_norm`` for float32 x and weight (or None); needs ``load()``."""
    return _module.norm(x, weight, None, eps, True, _isa if isa is None else isa)


def _self_test(module) -> None:
    """Refuse kernels that disagree with MLX (a miscompiled instruction set, a nanobind ABI that
    no longer matches): every path once, GEMV (1 row) and GEMM (5 rows), against MLX in fp32."""
    import mlx.core as mx
    import mlx.nn as nn

    key = mx.random.key(19)
    w = mx.random.normal((40, 128), key=key)
    for rows in (1, 5):
        x = mx.random.normal((rows, 128), key=mx.random.key(rows))
        checks = []
        for bits in BITS:
            q, s, b = mx.quantize(w.astype(mx.bfloat16), group_size=64, bits=bits)
            want = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=64, bits=bits)
            checks.append((module.quantized_matmul(x, q, s, b, 64, bits, _isa), want, f"{bits}-bit"))
        for dtype in (mx.bfloat16, mx.float16):
            half = w.astype(dtype)
            checks.append((module.half_matmul(x, half, _isa), x @ half.astype(mx.float32).T, str(dtype)))
        for n in (rows, rows + 8):  # the rows of one pass, and more than one pass (8 at most each)
            xf = mx.random.normal((n, 128), key=mx.random.key(n))
            checks.append((module.rows_matmul(xf, w, _isa), xf @ w.T, f"float32, {n} rows"))
        checks.append((*_delta_checks(module, rows), "the delta rule's step"))
        checks.append((*_scan_check(module, rows), "the delta rule over a prompt"))
        scores = 4 * mx.random.normal((rows, 37), key=mx.random.key(37))  # a tail after the vectors
        checks.append((module.softmax(scores, _isa), mx.softmax(scores, axis=-1), "softmax"))
        for name, want in (("gelu_tanh", nn.gelu_approx), ("silu", nn.silu), ("sigmoid", mx.sigmoid)):
            checks.append((module.activation(scores, name, _isa), want(scores), name))
        # from their own draw: with one row, scores[1] would read past the array (MLX does not check)
        scale, shift = mx.random.normal((2, 37), key=mx.random.key(38)) + mx.array([[2.0], [0.0]])
        checks.append((module.norm(scores, scale, shift, 1e-6, False, _isa), mx.fast.layer_norm(scores, scale, shift, 1e-6), "LayerNorm"))
        checks.append((module.norm(scores, scale, None, 1e-6, True, _isa), mx.fast.rms_norm(scores, scale, 1e-6), "RMSNorm"))
        checks.append((module.swiglu(scores, scores[::-1], _isa), nn.silu(scores) * scores[::-1], "SwiGLU"))
        checks.append((*_conv_check(module, rows), "the causal conv"))
        for got, want, what in checks:
            if not mx.allclose(got, want, rtol=1e-4, atol=1e-4).item():
                raise RuntimeError(f"the {isa_name(module)} kernels disagree with MLX ({what}, {rows} rows)")


def _delta_checks(module, batch):
    """The delta rule's step and mlx-lm's ops on random inputs: (ours, theirs), y and state joined."""
    import mlx.core as mx
    from mlx_lm.models.gated_delta import _gated_delta_step_ops

    key = mx.random.split(mx.random.key(batch), 6)
    H, Dk, Dv = 2, 40, 24  # Dk with a tail after the vectors
    q, k = (mx.random.normal((batch, H, Dk), key=key[i]) for i in range(2))
    v = mx.random.normal((batch, H, Dv), key=key[2])
    g, beta = (mx.random.uniform(shape=(batch, H), key=key[i]) for i in (3, 4))
    state = mx.random.normal((batch, H, Dv, Dk), key=key[5])
    y, s = module.gated_delta_step(q, k, v, g, beta, state, _isa)
    want_y, want_s = _gated_delta_step_ops(q, k, v, g, beta, state)
    return mx.concatenate([y.flatten(), s.flatten()]), mx.concatenate([want_y.flatten(), want_s.flatten()])


def _conv_check(module, batch):
    """The causal conv with its SiLU and MLX's ops: (ours, theirs)."""
    import mlx.core as mx
    import mlx.nn as nn

    key = mx.random.split(mx.random.key(batch), 3)
    state, x = mx.random.normal((batch, 3, 37), key=key[0]), mx.random.normal((batch, 5, 37), key=key[1])
    w = mx.random.normal((4, 37), key=key[2])  # 37 channels: a tail after the vectors
    rows = mx.concatenate([state, x], axis=1)
    want = nn.silu(sum(rows[:, k : k + 5] * w[k] for k in range(4)))
    return module.causal_conv_silu(state, x, w, _isa), want


def _scan_check(module, batch):
    """The delta rule's scan and mlx-lm's ops on random inputs: (ours, theirs), y and state joined."""
    import mlx.core as mx
    from mlx_lm.models.gated_delta import gated_delta_ops

    key = mx.random.split(mx.random.key(batch), 6)
    T, Hk, Hv, Dk, Dv = 3, 1, 2, 40, 6  # Dk with a tail after the vectors, Dv part of a block of rows
    q, k = (mx.random.normal((batch, T, Hk, Dk), key=key[i]) * 0.2 for i in range(2))
    v = mx.random.normal((batch, T, Hv, Dv), key=key[2])
    g, beta = (mx.random.uniform(shape=(batch, T, Hv), key=key[i]) for i in (3, 4))
    state = mx.random.normal((batch, Hv, Dv, Dk), key=key[5])
    y, s = module.gated_delta_scan(q, k, v, g, beta, state, _isa)
    want_y, want_s = gated_delta_ops(q, k, v, g, beta, state)
    return mx.concatenate([y.flatten(), s.flatten()]), mx.concatenate([want_y.flatten(), want_s.flatten()])


def isa_name(module) -> str:
    return _isa or module.runnable_isas()[0]
