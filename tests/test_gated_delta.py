"""The CPU forms of the gated delta rule (the prompt's scan and the decode step's kernels, the
chunked form) against mlx-lm's per-token recurrence, and the dispatcher's choice between them."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.gated_delta import compute_g, gated_delta_ops, gated_delta_update

from mlx_minicpmv.cpu import gated_delta as cpu_gated_delta
from mlx_minicpmv.cpu import kernels
from mlx_minicpmv.cpu.gated_delta import chunked_gated_delta, gated_delta, scanned_gated_delta


@pytest.mark.parametrize("T,Hk,Hv,Dk,Dv", [(1, 2, 4, 16, 16), (37, 2, 2, 32, 32), (64, 1, 3, 8, 12),
                                           (300, 2, 4, 16, 16), (129, 4, 4, 128, 128)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_recurrence(T, Hk, Hv, Dk, Dv, with_state):
    mx.random.seed(T)
    q, k = mx.random.normal((1, T, Hk, Dk)), mx.random.normal((1, T, Hk, Dk))
    q = q / mx.linalg.norm(q, axis=-1, keepdims=True) * Dk**-0.5
    k = k / mx.linalg.norm(k, axis=-1, keepdims=True)
    v = mx.random.normal((1, T, Hv, Dv))
    g = mx.exp(-mx.random.uniform(0, 2, (1, T, Hv)))
    beta = mx.sigmoid(mx.random.normal((1, T, Hv)))
    state = mx.random.normal((1, Hv, Dv, Dk)) * 0.3 if with_state else None
    y_ref, s_ref = gated_delta_ops(q, k, v, g, beta, state)
    y, s = chunked_gated_delta(q, k, v, mx.log(g), beta, state)
    np.testing.assert_allclose(np.array(y), np.array(y_ref), atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.array(s), np.array(s_ref), atol=2e-5, rtol=0)


def inputs(T, H=2, D=16, seed=0):
    mx.random.seed(seed)
    q, k = mx.random.normal((1, T, H, D)), mx.random.normal((1, T, H, D))
    q = q / mx.linalg.norm(q, axis=-1, keepdims=True) * D**-0.5
    k = k / mx.linalg.norm(k, axis=-1, keepdims=True)
    return q, k, mx.random.normal((1, T, H, D)), mx.sigmoid(mx.random.normal((1, T, H)))


def test_decays_that_underflow_or_dwarf_the_rest():
    """Decays of e^-1e8 and 0 (log -inf: an input of inf) among ordinary ones: the recurrence
    multiplies by 0 and goes on. A decay that underflowed to 0 before its log made NaN of the
    rest of its chunk; a log-decay of -1e8 before the ordinary ones of its chunk made their
    differences of running sums 0 (ulp 8), each decay between them 1."""
    T = 100
    q, k, v, beta = inputs(T)
    log_g = -mx.random.uniform(0, 2, (1, T, 2))
    log_g[:, 10, 0] = -1e8
    log_g[:, 70, 1] = -mx.inf
    y_ref, s_ref = gated_delta_ops(q, k, v, mx.exp(log_g), beta)
    y, s = chunked_gated_delta(q, k, v, log_g, beta)
    assert np.isfinite(np.array(y)).all() and np.isfinite(np.array(s)).all()
    np.testing.assert_allclose(np.array(y), np.array(y_ref), atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.array(s), np.array(s_ref), atol=2e-5, rtol=0)


@pytest.mark.skipif(kernels.load() is None, reason="the CPU kernels are built on Linux only")
def test_a_prompt_in_chunks_through_the_conv_kernel_equals_the_portable_layer(monkeypatch):
    """Chunks of a prompt through the CPU layer's conv kernel (every size goes to the kernels
    here), the conv state carried between them, one chunk shorter than that state."""
    from mlx_lm.models.cache import ArraysCache

    from mlx_minicpmv.config import TextConfig
    from mlx_minicpmv.cpu import fast_math
    from mlx_minicpmv.cpu.language_layers import CpuGatedDeltaNet
    from mlx_minicpmv.model.language import GatedDeltaNet

    from tests.checkpoints import tiny_config

    called = []
    conv = kernels.causal_conv_silu
    monkeypatch.setattr(fast_math, "KERNEL_SIZE", 1)
    monkeypatch.setattr(kernels, "causal_conv_silu", lambda *a: called.append(a[1].shape) or conv(*a))
    config = TextConfig.from_dict(tiny_config(64).text_config.to_dict())
    mx.random.seed(2)
    portable = GatedDeltaNet(config)
    cpu = GatedDeltaNet(config)
    cpu.update(portable.parameters())
    cpu.__class__ = CpuGatedDeltaNet
    portable.eval(), cpu.eval()
    caches = ArraysCache(2), ArraysCache(2)
    for T in (40, 2, 25):
        x = mx.random.normal((1, T, config.hidden_size))
        expected, got = np.array(portable(x, cache=caches[0])), np.array(cpu(x, cache=caches[1]))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(np.array(caches[1][0]), np.array(caches[0][0]), rtol=0, atol=0)
    assert [shape[1] for shape in called] == [40, 2, 25]


@pytest.mark.parametrize("scale", [1, 100, 1e7])
def test_cpu_deltanet_layer_equals_the_portable_one_at_any_scale(scale):
    """The CPU layer against the portable one on inputs up to 1e7 (what a fine-tuning run at lr 0.5
    left in the tiny model): the CPU path gave NaN from 100x on, the portable one stays finite."""
    from mlx_minicpmv.config import TextConfig
    from mlx_minicpmv.cpu.language_layers import CpuGatedDeltaNet
    from mlx_minicpmv.model.language import GatedDeltaNet

    from tests.checkpoints import tiny_config

    config = TextConfig.from_dict(tiny_config(64).text_config.to_dict())
    mx.random.seed(1)
    portable = GatedDeltaNet(config)
    portable.A_log = mx.log(1 + 15 * mx.random.uniform(shape=portable.A_log.shape))  # A up to 16, as tests/checkpoints.py
    cpu = GatedDeltaNet(config)
    cpu.update(portable.parameters())
    cpu.__class__ = CpuGatedDeltaNet
    portable.eval(), cpu.eval()  # the chunked rule runs outside training
    x = mx.random.normal((1, 80, config.hidden_size)) * scale
    expected, got = np.array(portable(x)), np.array(cpu(x))
    assert np.isfinite(expected).all() and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_chunked_gradients_equal_the_recurrences():
    """Training differentiates the chunked form (the triangular inverse by its own rule): the
    gradients of every input, the state's too, equal those through mlx-lm's recurrence."""
    T = 100  # two chunks, the second padded
    q, k, v, beta = inputs(T, seed=3)
    log_g = -mx.random.uniform(0, 2, (1, T, 2))
    state = mx.random.normal((1, 2, 16, 16)) * 0.3
    w_y, w_s = mx.random.normal((1, T, 2, 16)), mx.random.normal((1, 2, 16, 16))

    def loss(chunked, *args):
        q, k, v, log_g, beta, state = args
        if chunked:
            y, s = chunked_gated_delta(q, k, v, log_g, beta, state, exp=mx.exp)
        else:
            y, s = gated_delta_ops(q, k, v, mx.exp(log_g), beta, state)
        return (y * w_y).sum() + (s * w_s).sum()

    args = (q, k, v, log_g, beta, state)
    ours = mx.grad(lambda *a: loss(True, *a), argnums=tuple(range(6)))(*args)
    expected = mx.grad(lambda *a: loss(False, *a), argnums=tuple(range(6)))(*args)
    for name, g, e in zip(("q", "k", "v", "log_g", "beta", "state"), ours, expected):
        g, e = np.array(g), np.array(e)
        assert np.linalg.norm(g - e) < 1e-5 * np.linalg.norm(e) + 1e-6, name


@pytest.mark.skipif(kernels.load() is None, reason="the CPU kernels are built on Linux only")
@pytest.mark.parametrize("with_state", [False, True])
def test_a_decoded_token_through_the_kernel_equals_mlx_lm(with_state):
    """gated_delta for one token (what every decode step runs) takes cpu/kernels' step: the
    output and the state of mlx-lm's recurrence, with the key heads shared (Hv > Hk) and a batch."""
    mx.random.seed(5)
    B, Hk, Hv, Dk, Dv = 3, 2, 4, 32, 16
    q, k = mx.random.normal((B, 1, Hk, Dk)), mx.random.normal((B, 1, Hk, Dk))
    v = mx.random.normal((B, 1, Hv, Dv))
    a, b = mx.random.normal((B, 1, Hv)), mx.random.normal((B, 1, Hv))
    A_log, dt_bias = mx.random.normal((Hv,)), mx.random.normal((Hv,))
    state = mx.random.normal((B, Hv, Dv, Dk)) * 0.3 if with_state else None
    y_ref, s_ref = gated_delta_update(q, k, v, a, b, A_log, dt_bias, state, use_kernel=False)
    y, s = gated_delta(q, k, v, a, b, A_log, dt_bias, state)
    assert y.shape == y_ref.shape and s.shape == s_ref.shape
    np.testing.assert_allclose(np.array(y), np.array(y_ref), atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.array(s), np.array(s_ref), atol=2e-5, rtol=0)


def layer_inputs(B, T, Hk, Hv, Dk, Dv, with_state):
    """q, k, v, g, beta, state as the DeltaNet layer hands them over (q and k normalised, q scaled)."""
    mx.random.seed(T * B)
    q, k = mx.random.normal((B, T, Hk, Dk)), mx.random.normal((B, T, Hk, Dk))
    q = q / mx.linalg.norm(q, axis=-1, keepdims=True) * Dk**-0.5
    k = k / mx.linalg.norm(k, axis=-1, keepdims=True)
    v = mx.random.normal((B, T, Hv, Dv))
    g = mx.exp(-mx.random.uniform(0, 2, (B, T, Hv)))
    beta = mx.sigmoid(mx.random.normal((B, T, Hv)))
    state = mx.random.normal((B, Hv, Dv, Dk)) * 0.3 if with_state else None
    return q, k, v, g, beta, state


# Each instruction set this CPU runs; Dv 6 and 12 fill part of a block of rows (2 vectors' worth,
# the rest padded), Dk 40 and 8 are no multiple of a vector; a batch of 2 with grouped key heads
# (Hv = 2 Hk) reads head h's keys at h // 2; 130 tokens at the real head sizes, several blocks.
@pytest.mark.skipif(kernels.load() is None, reason="the CPU kernels are built on Linux only")
@pytest.mark.parametrize("B,T,Hk,Hv,Dk,Dv", [(1, 1, 2, 4, 16, 16), (1, 130, 16, 16, 128, 128), (2, 37, 2, 4, 40, 6),
                                             (1, 5, 1, 3, 8, 12)])
@pytest.mark.parametrize("with_state", [False, True])
def test_a_prompt_through_the_scan_equals_the_recurrence(B, T, Hk, Hv, Dk, Dv, with_state):
    q, k, v, g, beta, state = layer_inputs(B, T, Hk, Hv, Dk, Dv, with_state)
    y_ref, s_ref = gated_delta_ops(q, k, v, g, beta, state)
    for isa in kernels._module.runnable_isas():
        zeros = mx.zeros((B, Hv, Dv, Dk)) if state is None else state
        y, s = kernels.gated_delta_scan(q, k, v, g, beta, zeros, isa=isa)
        np.testing.assert_allclose(np.array(y), np.array(y_ref), atol=2e-5, rtol=0, err_msg=isa)
        np.testing.assert_allclose(np.array(s), np.array(s_ref), atol=2e-5, rtol=0, err_msg=isa)
    y, s = scanned_gated_delta(q, k, v, g, beta, state)
    np.testing.assert_allclose(np.array(y), np.array(y_ref), atol=2e-5, rtol=0)


@pytest.mark.skipif(kernels.load() is None, reason="the CPU kernels are built on Linux only")
def test_the_scan_refuses_what_it_cannot_compute():
    q, k, v, g, beta, state = layer_inputs(1, 4, 2, 3, 8, 8, True)  # 3 value heads over 2 key heads
    with pytest.raises(ValueError, match="multiple of the key heads"):
        kernels.gated_delta_scan(q, k, v, g, beta, state)
    q, k, v, g, beta, state = layer_inputs(1, 4, 1, 1, 8, 8, True)
    with pytest.raises(ValueError, match="must be float32"):
        kernels.gated_delta_scan(q.astype(mx.bfloat16), k, v, g, beta, state)
    with pytest.raises(ValueError, match="state must be"):
        kernels.gated_delta_scan(q, k, v, g, beta, state[:, :, :4])


@pytest.mark.skipif(kernels.load() is None, reason="the CPU kernels are built on Linux only")
def test_a_prompt_takes_the_scan_and_training_or_no_kernels_the_chunks(monkeypatch):
    """A prompt's unmasked call goes through the scan; in training, or without the kernels, through
    the chunked form: each the recurrence's numbers."""
    q, k, v, _, _, state = layer_inputs(1, 20, 2, 4, 16, 16, True)
    a, b = mx.random.normal((1, 20, 4)), mx.random.normal((1, 20, 4))
    A_log, dt_bias = mx.random.normal((4,)) * 0.5, mx.random.normal((4,)) * 0.5
    y_ref, s_ref = gated_delta_ops(q, k, v, compute_g(A_log, a, dt_bias), mx.sigmoid(b), state)
    used = []
    for name in ("scanned_gated_delta", "chunked_gated_delta"):
        real = getattr(cpu_gated_delta, name)
        spy = lambda *x, real=real, name=name, **kw: used.append(name) or real(*x, **kw)  # noqa: E731
        monkeypatch.setattr(cpu_gated_delta, name, spy)
    y, s = gated_delta(q, k, v, a, b, A_log, dt_bias, state)
    y_trained, _ = gated_delta(q, k, v, a, b, A_log, dt_bias, state, training=True)
    monkeypatch.setattr(kernels, "load", lambda: None)
    y_chunked, _ = gated_delta(q, k, v, a, b, A_log, dt_bias, state)
    assert used == ["scanned_gated_delta", "chunked_gated_delta", "chunked_gated_delta"]
    for got in (y, y_trained, y_chunked):
        np.testing.assert_allclose(np.array(got), np.array(y_ref), atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.array(s), np.array(s_ref), atol=2e-5, rtol=0)


def test_a_prompt_leaves_only_the_states_held():
    """After a prompt the cache holds the conv state (three rows) and the recurrent state, not the
    prompt's whole conv input that the conv state was sliced from: left lazy it kept that alive
    in every layer until the chunk's end (18 x 12.6 MB at 512 tokens)."""
    import gc

    from mlx_lm.models.cache import ArraysCache

    from mlx_minicpmv.config import TextConfig
    from mlx_minicpmv.cpu.language_layers import CpuGatedDeltaNet
    from mlx_minicpmv.model.language import GatedDeltaNet

    from tests.checkpoints import tiny_config

    config = TextConfig.from_dict(tiny_config(64).text_config.to_dict())
    layer = GatedDeltaNet(config)
    layer.__class__ = CpuGatedDeltaNet
    layer.eval()
    mx.eval(layer.parameters())
    S = 2048
    x = mx.random.normal((1, S, config.hidden_size))
    mx.eval(x)
    gc.collect()
    before = mx.get_active_memory()
    cache = ArraysCache(size=2)
    y = layer(x, cache=cache)
    mx.eval(y)
    del y
    gc.collect()
    conv_input = (S + layer.conv_kernel_size - 1) * layer.conv_dim * 4
    states = cache[0].nbytes + cache[1].nbytes
    assert mx.get_active_memory() - before < states + conv_input / 4
