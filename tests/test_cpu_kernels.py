"""The CPU kernels for quantised and bf16/fp16 weights (mlx_minicpmv/cpu/kernels): the same
numbers as MLX's own quantised matmul (the Mac's) for every layout, instruction set and row
count; load() keeps the weights as stored; logits within 1e-4 and the same greedy tokens."""

import platform
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_minicpmv import load
from mlx_minicpmv.convert import convert
from mlx_minicpmv.cpu import gemv, seam
from mlx_minicpmv.cpu import kernels as cpu_kernels
from mlx_minicpmv.cpu.kernel_layers import KERNEL_LAYERS, stored
from mlx_minicpmv.generate import stream_tokens
from tests.media import noise_image

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="built for MLX's CPU backend on Linux only")


@pytest.fixture(scope="module")
def ext():
    module = cpu_kernels.load()
    assert module is not None, f"the CPU kernels did not build: {cpu_kernels._failed}"
    return module


def isas():
    module = cpu_kernels.load()
    return module.runnable_isas() if module is not None else ["scalar"]


def close(got, want, rtol=1e-5):
    """Equal to ``rtol`` of the largest |value| (sums of many products cancel, so a plain
    element-wise relative test would judge the rounding of near-zero outputs)."""
    got, want = np.array(got), np.array(want)
    scale = np.abs(want).max()
    assert got.shape == want.shape and np.abs(got - want).max() <= rtol * scale, np.abs(got - want).max() / scale


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("stored", [mx.bfloat16, mx.float16, mx.float32])
@pytest.mark.parametrize("rows", [(1,), (3,), (2, 2), (17,), (260,)])  # GEMVs below 4 rows, the GEMM from 4 (AMX: 256 a pass)
def test_quantized_matmul_equals_mlx(ext, isa, bits, group_size, stored, rows):
    w = mx.random.normal((75, 256), key=mx.random.key(bits + group_size)).astype(stored)  # 75: rows left after the spread blocks
    q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    x = mx.random.normal(rows + (256,), key=mx.random.key(7))
    want = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=group_size, bits=bits)
    close(cpu_kernels.quantized_matmul(x, q, s, b, group_size, bits, isa=isa), want)


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("rows", [1, 7])  # a GEMV, and the GEMM (VNNI: blocks of 3 rows)
def test_a_nan_or_inf_in_x_stays_in_its_row(ext, isa, rows):
    """A NaN or an inf in a row of x makes that row's outputs non-finite, as MLX's do, and leaves
    the rows beside it, which the VNNI kernels scale and sum in the same block, as they were."""
    w = mx.random.normal((40, 128), key=mx.random.key(3)).astype(mx.bfloat16)
    q, s, b = mx.quantize(w, group_size=64, bits=4)
    x = mx.random.normal((rows, 128), key=mx.random.key(4))
    x[0, 5] = mx.nan
    if rows > 1:
        x[1, 70] = mx.inf
    want = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=64, bits=4)
    got = cpu_kernels.quantized_matmul(x, q, s, b, 64, 4, isa=isa)
    bad = min(rows, 2)
    assert not np.isfinite(np.array(want[:bad])).any() and not np.isfinite(np.array(got[:bad])).any()
    if rows > bad:
        close(got[bad:], want[bad:])


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("K", [32, 64, 96, 160])
def test_rows_that_end_inside_a_block_of_weights_equal_mlx(ext, isa, bits, K):
    """Rows shorter than, or not a multiple of, the VNNI GEMV's 64 bytes of weights (128 values at
    4 bits, 64 at 8; the tiny model's hidden size is 64): the lanes past the row's end count 0."""
    for seed in range(4):  # what lies past the row's groups in the kernel's buffers varies
        w = mx.random.normal((48 + 16 * seed, K), key=mx.random.key(seed)).astype(mx.bfloat16)
        q, s, b = mx.quantize(w, group_size=32, bits=bits)
        x = mx.random.normal((1, K), key=mx.random.key(10 + seed))
        want = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=32, bits=bits)
        close(cpu_kernels.quantized_matmul(x, q, s, b, 32, bits, isa=isa), want)
        if K % 64 == 0:
            q, s, b = mx.quantize(w, group_size=64, bits=bits)
            want = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=64, bits=bits)
            close(cpu_kernels.quantized_matmul(x, q, s, b, 64, bits, isa=isa), want)


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("stored", [mx.bfloat16, mx.float16, mx.float32])
@pytest.mark.parametrize("rows", [1, 5])
def test_a_long_row_of_groups_equals_mlx(ext, isa, bits, stored, rows):
    """130 groups in a row: the GEMV widens the scales and biases 128 groups at a time, then the
    last two, with a bias dot product shorter than a vector; the GEMM sums each group apart."""
    w = mx.random.normal((9, 4160), key=mx.random.key(bits)).astype(stored)
    q, s, b = mx.quantize(w, group_size=32, bits=bits)
    x = mx.random.normal((rows, 4160), key=mx.random.key(8))
    want = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=32, bits=bits)
    close(cpu_kernels.quantized_matmul(x, q, s, b, 32, bits, isa=isa), want)


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("rows", [1, 6])
def test_the_largest_codes_and_digits_stay_inside_int32(ext, isa, rows):
    """8-bit codes of 255 against x's largest digits over groups of 128: the VNNI kernels' int32
    sums (a group's 256·Σh + Σm in the GEMM) at their bound."""
    w = mx.ones((32, 256))
    w[:, ::128] = 0  # each group one code 0, the rest 255
    q, s, b = mx.quantize(w, group_size=128, bits=8)
    x = mx.ones((rows, 256))
    x[1::2] = -1
    want = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=128, bits=8)
    close(cpu_kernels.quantized_matmul(x, q, s, b, 128, 8, isa=isa), want)


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize("rows", [1, 3, 9, 30])  # GEMVs, then the GEMM (AVX-512: blocks of 12 rows)
@pytest.mark.parametrize("N", [40, 50])  # the GEMM's last panel of 32 rows: 8 or 18 left
def test_half_matmul_equals_widened_matmul(ext, isa, dtype, rows, N):
    w = mx.random.normal((N, 100), key=mx.random.key(3)).astype(dtype)  # K = 100: a tail after the vectors
    x = mx.random.normal((rows, 100), key=mx.random.key(4))
    close(cpu_kernels.half_matmul(x, w, isa=isa), x @ w.astype(mx.float32).T)


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("rows", [(1,), (2,), (3,), (4,), (5,), (6,), (7,), (8,), (2, 3), (11,)])  # each block shape of one pass, then two passes
def test_rows_matmul_equals_mlx(ext, isa, rows):
    w = mx.random.normal((70, 100), key=mx.random.key(12))  # K = 100: a tail after the vectors
    x = mx.random.normal(rows + (100,), key=mx.random.key(13))
    close(cpu_kernels.rows_matmul(x, w, isa=isa), x @ w.T)
    strided = mx.random.normal((3, 200), key=mx.random.key(14))[:, ::2]
    close(cpu_kernels.rows_matmul(strided, w, isa=isa), strided @ w.T)


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("batch", [1, 3])
def test_gated_delta_step_equals_mlx_lm(ext, isa, batch):
    """One decoded token of the delta rule: y and the new state as mlx-lm's ops compute them."""
    from mlx_lm.models.gated_delta import _gated_delta_step_ops

    key = mx.random.split(mx.random.key(40 + batch), 6)
    H, Dk, Dv = 3, 136, 24  # Dk: vectors and a tail
    q, k = (mx.random.normal((batch, H, Dk), key=key[i]) for i in range(2))
    v = mx.random.normal((batch, H, Dv), key=key[2])
    g, beta = (mx.random.uniform(shape=(batch, H), key=key[i]) for i in (3, 4))
    state = mx.random.normal((batch, H, Dv, Dk), key=key[5])
    y, s = cpu_kernels.gated_delta_step(q, k, v, g, beta, state, isa=isa)
    want_y, want_s = _gated_delta_step_ops(q, k, v, g, beta, state)
    close(y, want_y)
    close(s, want_s)
    with pytest.raises(ValueError, match=r"\(B, H, Dv, Dk\)"):
        cpu_kernels.gated_delta_step(q, k, v, g, beta, state[:, :, :, :8], isa=isa)


def test_a_batch_decode_step_reads_the_weights_through_the_rows_kernel(ext, monkeypatch):
    """GemvLinear and the tied head: one row through the GEMV, 2 to FEW_ROWS through rows_matmul,
    more through MLX's GEMM; the same numbers on each path."""
    from mlx_minicpmv.cpu.gemv_layers import GemvEmbedding, GemvLinear

    if gemv.load() is None:
        pytest.skip("the GEMV extension is not built here")  # test_gemv.py says why
    layer, head = GemvLinear(100, 70), GemvEmbedding(70, 100)
    called = []
    real = cpu_kernels.rows_matmul
    monkeypatch.setattr(cpu_kernels, "rows_matmul", lambda x, w: called.append(x.shape) or real(x, w))
    from mlx_minicpmv.cpu.gemv_layers import FEW_ROWS

    for n in (1, 4, FEW_ROWS, FEW_ROWS + 1):
        x = mx.random.normal((n, 1, 100), key=mx.random.key(n))
        close(layer(x), x @ layer.weight.T + layer.bias)
        close(head.as_linear(x), x @ head.weight.T)
    assert called == [(4, 1, 100), (4, 1, 100), (FEW_ROWS, 1, 100), (FEW_ROWS, 1, 100)]


def test_fp16_subnormals_and_the_tiled_gemm_over_several_tiles(ext):
    """Half weights below 2^-14 (subnormal in fp16) widen exactly on every path, and a GEMM
    whose weights span several 4 MB tiles gets every tile."""
    w = (mx.random.normal((2200, 512), key=mx.random.key(5)) * 1e-5).astype(mx.float16)
    x = mx.random.normal((6, 512), key=mx.random.key(6))
    for isa in isas():
        close(cpu_kernels.half_matmul(x, w, isa=isa), x @ w.astype(mx.float32).T)
        close(cpu_kernels.half_matmul(x[:1], w, isa=isa), x[:1] @ w.astype(mx.float32).T)


def cpu_flags():
    """The feature flags of /proc/cpuinfo's first processor (Linux's names: avx512_vnni, ...)."""
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_the_default_kernels_are_the_best_this_cpu_runs(ext):
    """The sets this CPU runs, best first and scalar last, as its flags say (the build is C++20,
    so its compiler has VNNI's instructions); the default the first."""
    names = ext.runnable_isas()
    assert names[-1] == "scalar" and cpu_kernels.isa() == names[0]
    assert names == [n for n in ("amx", "avx512vnni", "avx512", "avx2", "scalar") if n in names]
    if platform.machine() in ("x86_64", "AMD64"):
        flags = cpu_flags()
        assert ("avx2" in names) == ({"avx2", "fma", "f16c"} <= flags)
        assert ("avx512" in names) == ({"avx512f", "fma", "f16c"} <= flags)
        assert ("avx512vnni" in names) == ({"avx512f", "avx512bw", "avx512_vnni", "fma", "f16c"} <= flags)


@pytest.mark.skipif("amx" not in isas(), reason="this CPU (or its OS) has no AMX tile unit")
@pytest.mark.parametrize("M,K,N", [(4, 64, 16), (33, 1000, 50), (300, 100, 70), (257, 1152, 96), (260, 2210, 40)])  # tails of k, rows, passes, blocks of K
def test_the_amx_gemm_keeps_all_of_x(ext, M, K, N):
    """The AMX GEMM multiplies bf16 pairs: x goes in as three bf16 pieces, all 24 bits of its
    significand, so it is as close to MLX's fp32 product as the tiled sgemm is, over every tail
    of its tiles and passes, and far closer than x rounded to bf16 once."""
    w = mx.random.normal((N, K), key=mx.random.key(K)).astype(mx.bfloat16)
    x = mx.random.normal((M, K), key=mx.random.key(M)) * mx.exp(3 * mx.random.normal((M, K), key=mx.random.key(N)))
    want = x @ w.astype(mx.float32).T
    got = cpu_kernels.half_matmul(x, w, isa="amx")
    close(got, want, rtol=2e-6)
    once = x.astype(mx.bfloat16).astype(mx.float32) @ w.astype(mx.float32).T
    assert np.abs(np.array(got - want)).max() * 100 < np.abs(np.array(once - want)).max()


@pytest.mark.skipif("amx" not in isas(), reason="this CPU (or its OS) has no AMX tile unit")
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 128])
def test_the_amx_quantized_gemm_over_blocks_of_k(ext, bits, group_size):
    """A long row (K = 1408, two blocks of K for a pass of 256 rows): the second block's groups
    take their own scales, biases and sums of x, and add to the first's."""
    w = mx.random.normal((40, 1408), key=mx.random.key(bits * group_size)).astype(mx.bfloat16)
    q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    x = mx.random.normal((260, 1408), key=mx.random.key(9))
    want = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=group_size, bits=bits)
    close(cpu_kernels.quantized_matmul(x, q, s, b, group_size, bits, isa="amx"), want)


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("S", [2, 9])  # fewer new rows than the state holds, and more
def test_the_causal_conv_equals_mlx_ops(ext, isa, S):
    """The DeltaNet prompt's conv with its SiLU: each output row reads its taps from the state
    or the new rows, per sequence of a batch, with a tail of channels after the vectors."""
    from mlx_minicpmv.cpu import fast_math
    from mlx_minicpmv.cpu.language_layers import causal_conv

    state, x = mx.random.normal((2, 3, 37), key=mx.random.key(41)), mx.random.normal((2, S, 37), key=mx.random.key(42))
    weight = mx.random.normal((37, 4, 1), key=mx.random.key(43))  # the conv1d's own layout
    want = fast_math.silu(causal_conv(mx.concatenate([state, x], axis=1), weight))
    close(cpu_kernels.causal_conv_silu(state, x, weight[:, :, 0].T, isa=isa), want)


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("shape", [(1, 248320), (1, 37), (5, 40001), (2, 3, 100)])
def test_logsumexp_equals_float64(ext, isa, shape):
    """A row in parts on the pool (one long row) or rows on it, with tails shorter than a vector;
    masked (-inf) entries, a row all -inf, and a NaN."""
    x = mx.random.normal(shape, key=mx.random.key(len(shape))) * 5
    x[..., ::7] = -mx.inf
    got = np.array(cpu_kernels.logsumexp(x, isa=isa))
    a = np.array(x).astype(np.float64)
    exact = np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) + a.max(-1, keepdims=True)
    assert got.shape == shape[:-1] + (1,) and np.allclose(got, exact, rtol=1e-5, atol=0)  # MLX: 6e-6 at (1, 248320)
    x = x.reshape(-1, shape[-1])
    x[-1, 3] = mx.nan  # the last row
    got = np.array(cpu_kernels.logsumexp(x, isa=isa)).reshape(-1)
    assert np.isnan(got[-1]) and not np.isnan(got[:-1]).any()
    x[0] = -mx.inf  # the first row all -inf (its NaN gone too, where there is one row)
    got = np.array(cpu_kernels.logsumexp(x, isa=isa)).reshape(-1)
    assert got[0] == -np.inf


@pytest.mark.parametrize("isa", isas())
def test_softmax_writes_negligible_probabilities_as_zero(ext, isa):
    """Masked scores (-inf) get probability 0, as MLX's softmax gives them, and so does anything
    below 2^-64: the fast exp bottoms out at e^-80, and such probabilities times the values made
    subnormal products that doubled a causal layer's probs @ V."""
    scores = mx.concatenate([4 * mx.random.normal((6, 40), key=mx.random.key(31)), mx.full((6, 37), -mx.inf),
                             mx.full((6, 3), -60.0)], axis=-1)  # 80 columns: tails after the vectors
    got = np.array(cpu_kernels.softmax(scores, isa=isa))
    assert (got[:, 40:] == 0).all()
    assert ((got == 0) | (got >= 2.0**-64)).all()
    close(got, mx.softmax(scores, axis=-1, precise=True))


@pytest.mark.parametrize("isa", isas())
def test_softmax_and_the_activations_equal_fast_math(ext, isa):
    """The kernels' softmax, tanh-GELU and SwiGLU compute fast_math's formulas (its exp, clipped
    alike) on every instruction set, with tails after the vectors, masked scores and inputs that
    saturate."""
    from mlx_minicpmv.cpu import fast_math

    x = 4 * mx.random.normal((3, 5, 133), key=mx.random.key(21))
    x = mx.concatenate([x, mx.array([-1e7, -100.0, -80.5, 0.0, 80.5, 100.0, 1e7] * 19).reshape(1, 1, 133) * mx.ones((3, 1, 1))], axis=1)
    gate = 4 * mx.random.normal(x.shape, key=mx.random.key(22))
    close(cpu_kernels.softmax(x, isa=isa), mx.softmax(x, axis=-1, precise=True))
    visible = mx.arange(133)[None] <= mx.arange(133)[:, None]
    scores = mx.where(visible, 4 * mx.random.normal((133, 133), key=mx.random.key(23)), -mx.inf)
    close(cpu_kernels.softmax(scores, isa=isa), mx.softmax(scores, axis=-1, precise=True))
    ops = {
        "gelu_tanh": fast_math._times_sigmoid_out(x, *fast_math._exp_parts(fast_math._gelu_arg(x))),
        "silu": fast_math._times_sigmoid_out(x, *fast_math._exp_parts(-x)),
        "sigmoid": fast_math._sigmoid_out(*fast_math._exp_parts(-x)),
    }
    mlx_own = {"gelu_tanh": nn.gelu_approx(x), "silu": nn.silu(x), "sigmoid": mx.sigmoid(x)}
    for name, want in ops.items():
        close(cpu_kernels.activation(x, name, isa=isa), want, rtol=1e-6)
        close(cpu_kernels.activation(x, name, isa=isa), mlx_own[name])
    close(cpu_kernels.swiglu(gate, x, isa=isa), fast_math._swiglu_out(gate, x, *fast_math._exp_parts(-gate)), rtol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        cpu_kernels.swiglu(gate, x[:1], isa=isa)
    with pytest.raises(ValueError, match="no activation"):
        cpu_kernels.activation(x, "relu", isa=isa)


def test_fast_math_hands_big_arrays_to_the_kernels(ext, monkeypatch):
    """Softmax always, the activations from KERNEL_SIZE elements: a decode step's stay in MLX's graph."""
    from mlx_minicpmv.cpu import fast_math

    called = []
    for name in ("softmax", "activation", "swiglu"):
        real = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, real=real, name=name: called.append((name, *(v for v in a if isinstance(v, str)))) or real(*a))
    small, big = mx.ones((2, 100)), mx.ones((1, fast_math.KERNEL_SIZE))
    for x in (small, big):
        mx.eval(fast_math.softmax(x), fast_math.gelu_tanh(x), fast_math.silu(x), fast_math.sigmoid(x), fast_math.swiglu(x, x))
    assert called == [("softmax",), ("softmax",), ("activation", "gelu_tanh"), ("activation", "silu"),
                      ("activation", "sigmoid"), ("swiglu",)]


@pytest.mark.parametrize("isa", isas())
def test_the_norms_equal_mlx(ext, isa):
    x = 3 * mx.random.normal((4, 7, 133), key=mx.random.key(31)) + 2  # a tail after the vectors, an offset mean
    w, b = (mx.random.normal((133,), key=mx.random.key(i)) for i in (32, 33))
    close(cpu_kernels.layer_norm(x, w, b, 1e-6, isa=isa), mx.fast.layer_norm(x, w, b, 1e-6))
    close(cpu_kernels.layer_norm(x, None, None, 1e-5, isa=isa), mx.fast.layer_norm(x, None, None, 1e-5))
    close(cpu_kernels.rms_norm(x, w, 1e-6, isa=isa), mx.fast.rms_norm(x, w, 1e-6))
    close(cpu_kernels.rms_norm(x, None, 1e-6, isa=isa), mx.fast.rms_norm(x, None, 1e-6))
    with pytest.raises(ValueError, match="weight and bias"):
        cpu_kernels.rms_norm(x, w[:5], 1e-6, isa=isa)


def test_the_model_with_every_norm_and_activation_in_the_kernels(ext, tiny, monkeypatch, tmp_path):
    """The tiny models' arrays stay below fast_math.KERNEL_SIZE, so the model tests run MLX's ops
    there; with it at 1 every norm and activation of the CPU layers goes to the kernels, and the
    logits stay the same."""
    from mlx_minicpmv.cpu import fast_math

    model, processor = tiny.load()
    inputs = inputs_with_image(processor, tmp_path)
    extra = {k: v for k, v in inputs.model_inputs().items() if k not in ("input_ids", "pixel_values", "target_sizes")}

    def logits():
        return model(inputs.input_ids, inputs.pixel_values, inputs.target_sizes, **extra)

    want = logits()
    called = set()
    for name in ("layer_norm", "rms_norm", "activation", "swiglu"):
        real = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, real=real, name=name, **k: called.add(name) or real(*a, **k))
    monkeypatch.setattr(fast_math, "KERNEL_SIZE", 1)
    close(logits(), want)
    assert called == {"layer_norm", "rms_norm", "activation", "swiglu"}


def test_strided_inputs_and_compile(ext):
    w = mx.random.normal((64, 128), key=mx.random.key(8)).astype(mx.bfloat16)
    q, s, b = mx.quantize(w, group_size=64, bits=4)
    x = mx.random.normal((1, 256), key=mx.random.key(9))[:, ::2]
    want = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=64, bits=4)
    close(cpu_kernels.quantized_matmul(x, q, s, b, 64, 4), want)
    step = mx.compile(lambda x: cpu_kernels.half_matmul(mx.tanh(x), w) + cpu_kernels.quantized_matmul(x, q, s, b, 64, 4))
    close(step(x), mx.tanh(x) @ w.astype(mx.float32).T + want)


def test_refuses_what_it_cannot_read(ext):
    w = mx.zeros((8, 64), dtype=mx.bfloat16)
    q, s, b = mx.quantize(w.astype(mx.float32), group_size=32, bits=4)
    with pytest.raises(ValueError, match="x must be float32"):
        cpu_kernels.half_matmul(mx.zeros((1, 64), dtype=mx.bfloat16), w)
    with pytest.raises(ValueError, match="must match the weights' K"):
        cpu_kernels.half_matmul(mx.zeros((1, 32)), w)
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128"):
        cpu_kernels.quantized_matmul(mx.zeros((1, 64)), q, s, b, 16, 4)
    with pytest.raises(ValueError, match="do not run on this CPU"):
        cpu_kernels.half_matmul(mx.zeros((1, 64)), w, isa="sse9")
    with pytest.raises(ValueError, match=r"w must be \(N, K\) float32"):
        cpu_kernels.rows_matmul(mx.zeros((2, 64)), w)


# -- the model -------------------------------------------------------------------------------

VARIANTS = {
    "8-bit": dict(dtype="bfloat16", quantize=True, q_bits=8, q_group_size=32),
    "4-bit": dict(dtype="bfloat16", quantize=True, q_bits=4, q_group_size=64),
    "bfloat16": dict(dtype="bfloat16"),
    "float16": dict(dtype="float16"),
}


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("kernels")
    return {name: convert(str(tiny.hf_path), str(root / name), **kwargs) for name, kwargs in VARIANTS.items()}


def mac_path(path):
    """The model as MLX runs it with the stored weights (MLX's quantised matmul, or the half
    weights widened exactly), with float32 activations: the numbers the kernels must give."""
    model, _ = load(path, compute_dtype=None, cpu_kernels=False)  # the portable model, as on Metal
    model.set_dtype(mx.float32)  # bf16/fp16 -> fp32 is exact: scales, biases and half weights keep their values
    return model


def inputs_with_image(processor, tmp_path):
    image = tmp_path / "noise.png"
    noise_image(120, 90, seed=3).save(image)
    return processor([{"role": "user", "content": [{"type": "image", "image": str(image)},
                                                   {"type": "text", "text": "Describe the quick brown fox."}]}])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_load_keeps_the_stored_weights_with_the_same_logits_and_tokens(ext, converted, variant, tmp_path):
    model, processor = load(converted[variant])
    kernel_layers = [m for _, m in model.named_modules() if isinstance(m, KERNEL_LAYERS)]
    assert isinstance(model.language_model.embed_tokens, KERNEL_LAYERS)
    assert isinstance(model.vision_tower.encoder.layers[0].mlp.fc1, KERNEL_LAYERS)
    assert len(kernel_layers) > 4 * len(model.language_model.layers)
    stored = {k: v.dtype for k, v in tree_flatten(model.parameters())}
    assert stored["language_model.embed_tokens.weight"] == (mx.uint32 if "bit" in variant else getattr(mx, variant))
    # Outside the kernel layers everything runs in fp32, as before.
    assert not any(type(m) in (nn.QuantizedLinear, nn.QuantizedEmbedding) for _, m in model.named_modules())
    assert model.language_model.layers[0].input_layernorm.weight.dtype == mx.float32

    reference = mac_path(converted[variant])
    inputs = inputs_with_image(processor, tmp_path)
    extra = {k: v for k, v in inputs.model_inputs().items() if k not in ("input_ids", "pixel_values", "target_sizes")}
    ours = model(inputs.input_ids, inputs.pixel_values, inputs.target_sizes, **extra)
    want = reference(inputs.input_ids, inputs.pixel_values, inputs.target_sizes, **extra)
    close(ours, want, rtol=1e-4)
    greedy = [[s.token for s in stream_tokens(m, inputs, max_tokens=12, temperature=0.0)] for m in (model, reference)]
    assert greedy[0] == greedy[1]


class ColumnMajorViews:
    """A KV cache whose keys and values come back as views whose positions are not side by side
    (each position's D values a stride of S apart)."""

    def __init__(self, cache):
        self.cache = cache

    def update_and_fetch(self, keys, values):
        return [mx.swapaxes(mx.contiguous(mx.swapaxes(a, -1, -2)), -1, -2) for a in self.cache.update_and_fetch(keys, values)]

    def __getattr__(self, name):
        return getattr(self.cache, name)


@pytest.mark.parametrize("variant", ["float32"] + list(VARIANTS))
def test_a_decoder_layer_decodes_in_one_kernel_as_in_its_ops(ext, tiny, converted, variant, monkeypatch):
    """A decoded token through each DeltaNet layer as one primitive (kernels.deltanet_decode),
    and through the attention layer as two around its cache (kernels.attention_decode): the
    outputs and states of the layers' compiled ops, for every kind of stored projection (tiny: 4
    value heads on 2 key heads, 4 query heads on 2 kv heads, a quarter of each head turned by
    RoPE); generation goes through them; a projection they cannot read (a LoRA adapter) takes
    the ops."""
    from mlx_lm.tuner.lora import LoRALinear

    from mlx_minicpmv.cpu.language_layers import causal_attention

    model, _ = tiny.load() if variant == "float32" else load(converted[variant])
    lm = model.language_model
    cache = lm.make_cache()
    mx.eval(lm(lm.embed_tokens(mx.array([list(range(20, 37))])), cache=cache))
    x = mx.random.normal((1, 1, lm.layers[0].input_layernorm.weight.size), key=mx.random.key(3))
    fused_layers = 0
    for i, layer in enumerate(lm.layers):
        if not layer.is_linear:
            continue
        fused = layer.fused_step(x, cache[i][0], cache[i][1])
        assert fused is not None and fused[0].shape == x.shape
        for got, want in zip(fused, layer.decode_step(x, cache[i][0], cache[i][1])):
            close(got, want)
        fused_layers += 1
    assert fused_layers == 3
    for i, layer in enumerate(lm.layers):  # the attention layer: the cache's keys are a view of its buffer
        if layer.is_linear:
            continue
        c = cache[i]
        before = c.keys, c.values, c.offset
        fused = {}
        for isa in isas():  # each set's attend
            monkeypatch.setattr(cpu_kernels, "_isa", isa)
            fused[isa] = layer.fused_attention(x, c)
            c.keys, c.values, c.offset = before
        monkeypatch.undo()
        fused["column-major"] = layer.fused_attention(x, ColumnMajorViews(c))  # gathered into rows first
        c.keys, c.values, c.offset = before
        queries, keys, values, gate = layer.attention_front(x, mx.array(c.offset))
        keys, values = c.update_and_fetch(keys, values)
        assert keys.shape[2] == 18 < c.keys.shape[2]
        want = layer.attention_back(x, causal_attention(queries, keys, values, layer.self_attn.scale), gate)
        for got in fused.values():
            close(got, want)

    calls = []
    real = cpu_kernels.deltanet_decode
    monkeypatch.setattr(cpu_kernels, "deltanet_decode", lambda *a: calls.append(1) or real(*a))
    cache = lm.make_cache()
    lm(lm.embed_tokens(mx.array([[20, 21]])), cache=cache)
    mx.eval(lm(lm.embed_tokens(mx.array([[22]])), cache=cache))
    assert len(calls) == fused_layers
    mlp, attn = lm.layers[0].mlp, lm.layers[3].self_attn
    base, q_proj = mlp.up_proj, attn.q_proj
    mlp.up_proj, attn.q_proj = LoRALinear.from_base(base, r=4), LoRALinear.from_base(q_proj, r=4)
    try:
        assert lm.layers[0].fused_step(x, cache[0][0], cache[0][1]) is None
        assert lm.layers[3].fused_attention(x, cache[3]) is None
    finally:
        mlp.up_proj, attn.q_proj = base, q_proj  # tiny.load()'s model is shared by the session


def test_a_fused_step_refuses_weights_it_cannot_read(ext, converted):
    """A mismatched checkpoint reaching the fused decode step: an error naming the step, the
    projection and what is wrong, from the same check as the matmuls'; nothing computed."""
    model, _ = load(converted["4-bit"])
    lm = model.language_model
    cache = lm.make_cache()
    mx.eval(lm(lm.embed_tokens(mx.array([[20, 21, 22]])), cache=cache))
    layer = lm.layers[0]
    x = mx.zeros((1, 1, layer.input_layernorm.weight.size))
    planned, kinds, dims, _ = layer.deltanet_plan()  # the norms, the conv's taps and gates, then the projections'
    attn, mlp = layer.linear_attn, layer.mlp
    stored_kinds, stored_weights = stored(attn.in_proj_qkv, attn.in_proj_z, attn.in_proj_b, attn.in_proj_a,
                                          attn.out_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    assert kinds == stored_kinds and len(planned) == 6 + len(stored_weights)
    assert all(a is b for a, b in zip(planned[6:], stored_weights))
    arrays, weights = [x, cache[0][0], cache[0][1]] + planned[:6], planned[6:]
    wrong = list(weights)
    wrong[4] = wrong[4][:, :-1]  # in_proj_z's scales one group short (qkv's three arrays, z's weight, its scales)
    with pytest.raises(ValueError, match=r"deltanet_decode: projection 1: scales and biases must be \(N, K / group_size\)"):
        cpu_kernels.deltanet_decode(arrays + wrong, kinds, dims, [1e-6, 1e-6, 1e-6])
    with pytest.raises(ValueError, match="deltanet_decode: projection 0: group_size must be 32, 64 or 128"):
        cpu_kernels.deltanet_decode(arrays + weights, [(4, 16)] + kinds[1:], dims, [1e-6, 1e-6, 1e-6])
    with pytest.raises(ValueError, match="one array a weight, three a quantised one"):
        cpu_kernels.deltanet_decode(arrays + weights[:-1], kinds, dims, [1e-6, 1e-6, 1e-6])


def test_weights_stay_small(ext, converted):
    """Resident weights: the stored bytes (plus fp32 for the small rest), not fp32 everywhere."""
    def nbytes(model):
        return sum(v.nbytes for _, v in tree_flatten(model.parameters()))

    widened = nbytes(mac_path(converted["bfloat16"]))  # every weight in fp32
    for variant, most in (("bfloat16", 0.6), ("8-bit", 0.45), ("4-bit", 0.35)):
        assert nbytes(load(converted[variant])[0]) < most * widened, variant


def test_unavailable_kernels_widen_with_a_warning(tiny, converted, tmp_path, monkeypatch):
    for module in (cpu_kernels, gemv):  # both restored afterwards
        monkeypatch.setattr(module, "_module", None)
        monkeypatch.setattr(module, "_failed", None)
    monkeypatch.setenv("MLX_MINICPMV_CACHE", str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("PATH", str(tmp_path))  # and no compiler
    monkeypatch.delenv("CXX", raising=False)
    with pytest.warns(RuntimeWarning) as warned:  # ours, and the GEMV extension's for the fp32 layers
        model, _ = load(converted["4-bit"])
    ours = [w for w in warned if "widened to fp32 on this CPU" in str(w.message)]
    assert len(ours) == 1 and "no C++ compiler was found" in str(ours[0].message)
    assert not any(isinstance(m, KERNEL_LAYERS) for _, m in model.named_modules())
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float32}
    assert not seam.keeps_stored(model.language_model.layers[0].mlp.gate_proj)


def test_a_kernel_set_that_disagrees_is_refused(ext, monkeypatch):
    class Wrong:
        def __getattr__(self, name):
            return getattr(ext, name)

        def half_matmul(self, x, w, isa=""):
            return ext.half_matmul(x, w, isa) * 1.001

    with pytest.raises(RuntimeError, match="disagree with MLX"):
        cpu_kernels._self_test(Wrong())


CONCURRENT = """
import threading
import mlx.core as mx
from mlx_minicpmv.cpu import kernels
assert kernels.load() is not None, kernels._failed
w = mx.random.normal((1024, 1024), key=mx.random.key(1))
mx.eval(w)
wrong = []
def work(seed):
    x = mx.random.normal((2, 1024), key=mx.random.key(seed))
    want = x @ w.T
    for _ in range(100):
        outs = [kernels.rows_matmul(x, w) for _ in range(20)]  # queued, so the stream threads overlap
        if not mx.all(mx.stack([mx.allclose(o, want, rtol=1e-4, atol=1e-4) for o in outs])).item():
            wrong.append(seed)
workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
[t.start() for t in workers]
[t.join() for t in workers]
print("wrong", len(wrong))
"""


def test_kernels_called_from_several_threads_at_once_stay_right(ext):
    # Each Python thread has its own stream and stream thread, so their kernels share the one
    # worker pool at once; a second caller used to replace the first one's job mid-flight: this
    # script then segfaulted or hung in each of 3 runs, and three threads generating segfaulted
    # in 1 of ~13. A crash or a hang must fail this test, not end the suite: a child process.
    import os
    import subprocess
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), MLX_MINICPMV_THREADS="2")
    run = subprocess.run([sys.executable, "-c", CONCURRENT], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-500:])
    assert run.stdout.split() == ["wrong", "0"]
