"""The CPU fast exp family (cpu/fast_math.py) against float64, and against MLX's own ops."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_minicpmv.cpu import fast_math


def reference(name, x, y=None):
    x = x.astype(np.float64)
    sig = lambda v: 1 / (1 + np.exp(np.minimum(-v, 700)))
    return {
        "exp": lambda: np.exp(x),
        "sigmoid": lambda: sig(x),
        "silu": lambda: x * sig(x),
        "swiglu": lambda: x * sig(x) * y.astype(np.float64),
        "gelu_tanh": lambda: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    }[name]()


def ours(name, x, y=None):
    f = getattr(fast_math, name)
    return np.array(f(mx.array(x), mx.array(y)) if name == "swiglu" else f(mx.array(x)))


@pytest.mark.parametrize("name", ["exp", "sigmoid", "silu", "swiglu", "gelu_tanh"])
def test_matches_float64_as_closely_as_mlx(name):
    assert fast_math.fast(mx.zeros(1)), "the fast path is what runs on this CPU"
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((257, 129)) * 6).astype(np.float32)
    y = rng.standard_normal(x.shape).astype(np.float32)
    if name == "exp":
        x = np.clip(x, -80, 80)
    ref = reference(name, x, y)
    scale = np.maximum(np.abs(ref), 1e-6 if name != "exp" else np.abs(ref))
    err = (np.abs(ours(name, x, y) - ref) / scale).max()
    mlx = {"exp": mx.exp, "sigmoid": mx.sigmoid, "silu": nn.silu, "gelu_tanh": nn.gelu_approx,
           "swiglu": None}[name]
    mlx_err = (np.abs(np.array(mlx(mx.array(x))) - ref) / scale).max() if mlx else 2e-6
    assert err < max(2 * mlx_err, 2e-6), (err, mlx_err)


@pytest.mark.parametrize("name", ["exp", "sigmoid", "silu", "gelu_tanh"])
def test_extremes_saturate_as_mlx_ops(name):
    """Up to activations of 1e30, inf and NaN: what MLX's own op gives, except e^x below e^-80
    (kept there: subnormals are slow) and in (88.4, 88.7), where ours overflows a little early."""
    x = np.array([-1e30, -1e7, -1e4, -200, -88, -80.5, -30, 0, 30, 88, 89, 200, 1e4, 1e7, 1e30], np.float32)
    out = ours(name, x)
    with np.errstate(over="ignore"):
        ref = reference(name, np.clip(x, -80, None) if name == "exp" else x).astype(np.float32)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-30)
    special = np.array([np.inf, -np.inf, np.nan], np.float32)
    mlx = {"exp": mx.exp, "sigmoid": mx.sigmoid, "silu": nn.silu, "gelu_tanh": nn.gelu_approx}[name]
    expected = np.array(mlx(mx.array(special)))
    if name == "exp":
        expected[1] = np.exp(np.float32(-80))  # e^-inf read as e^-80 as every input below
    np.testing.assert_allclose(ours(name, special), expected, rtol=2e-6)


def test_swiglu_of_huge_activations_is_what_silu_times_x_is():
    gate = np.array([-1e20, -1e7, -100, 1e7, 1e19, -np.inf, np.nan], np.float32)
    x = np.array([1e20, 1e25, 1e30, 1e7, 1e19, 1, 1], np.float32)
    expected = np.array(nn.silu(mx.array(gate)) * mx.array(x))
    np.testing.assert_allclose(ours("swiglu", gate, x), expected, rtol=2e-6, atol=1e-6)


def test_softmax_rows_match_float64():
    rng = np.random.default_rng(1)
    s = (rng.standard_normal((3, 4, 70, 70)) * 8).astype(np.float32)
    ref = np.exp(s - s.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    err = np.abs(np.array(fast_math.softmax(mx.array(s))) - ref).max()
    mlx_err = np.abs(np.array(mx.softmax(mx.array(s), axis=-1, precise=True)) - ref).max()
    assert err < max(2 * mlx_err, 5e-7), (err, mlx_err)


def test_other_dtypes_use_mlx_ops():
    x = mx.array(np.linspace(-5, 5, 64, dtype=np.float32)).astype(mx.bfloat16)
    assert not fast_math.fast(x)
    assert fast_math.silu(x).dtype == mx.bfloat16
    assert mx.array_equal(fast_math.silu(x), nn.silu(x))
    y = x[::-1]
    assert fast_math.swiglu(x, y).dtype == mx.bfloat16
    assert mx.array_equal(fast_math.swiglu(x, y), nn.silu(x) * y)


@pytest.mark.parametrize("L, S", [(9, 9), (5, 17)])  # a prefill, and a follow-up turn's chunk after 12 cached
def test_causal_attention_matches_mlx_sdpa(L, S):
    from mlx_minicpmv.cpu.language_layers import causal_attention

    q = mx.random.normal((1, 8, L, 32), key=mx.random.key(0))
    k, v = (mx.random.normal((1, 2, S, 32), key=mx.random.key(i)) for i in (1, 2))
    visible = mx.arange(S)[None] <= mx.arange(S - L, S)[:, None]
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.17, mask=visible)
    np.testing.assert_allclose(np.array(causal_attention(q, k, v, 0.17)), np.array(expected), atol=1e-5)


def test_logsumexp_equals_mlx_with_masked_and_infinite_rows():
    """A decoded token's log-probabilities over the vocabulary: masked logits (-inf, a logit
    bias), a row all -inf, and +inf and NaN rows come out as MLX's."""
    x = mx.random.normal((5, 50000), key=mx.random.key(0)) * 8
    x[1, ::3] = -mx.inf
    x[2] = -mx.inf
    x[3, 7] = mx.inf
    x[4, 9] = mx.nan
    want = np.array(mx.logsumexp(x, axis=-1, keepdims=True))
    got = np.array(fast_math.logsumexp(x, axis=-1, keepdims=True))
    a = np.array(x[:2]).astype(np.float64)  # the finite rows against float64, as closely as MLX's own
    exact = np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) + a.max(-1, keepdims=True)
    assert (np.abs(got[:2] - exact) <= np.maximum(np.abs(want[:2] - exact), 2e-6 * np.abs(exact))).all()
    assert got[2, 0] == want[2, 0] == -np.inf and got[3, 0] == want[3, 0] == np.inf and np.isnan(got[4, 0])
    assert fast_math.logsumexp(x, axis=0).shape == (50000,)
    assert fast_math.logsumexp(x[:2]).shape == (2,)
