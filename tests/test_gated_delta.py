"""The chunked gated delta rule against mlx-lm's per-token recurrence."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.gated_delta import gated_delta_ops

from mlx_minicpmv.cpu.gated_delta import chunked_gated_delta


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
    y, s = chunked_gated_delta(q, k, v, g, beta, state)
    np.testing.assert_allclose(np.array(y), np.array(y_ref), atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.array(s), np.array(s_ref), atol=2e-5, rtol=0)
