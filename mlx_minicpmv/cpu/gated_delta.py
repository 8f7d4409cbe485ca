"""Gated delta rule for CPU prefill: one kernel over the prompt, or a chunked, matmul-shaped form.

mlx-lm runs the recurrence as a Metal kernel on the GPU; on MLX's CPU backend it falls back
to a Python loop of one compiled step per token, which is slow for long prompts. A prompt goes
through ``cpu/kernels``' ``gated_delta_scan``: mlx-lm's per-token step in C++, token after
token, each head on the kernels' thread pool, one call a layer. The chunked form (the one
transformers uses; spec §5.4) does the same math as a few matmuls per 64-token chunk, which
MLX runs as ~1,000 small sgemm calls a layer, each split over OpenBLAS's threads: ~33-50 ms a
layer at 511 tokens on two quiet cores, seconds on two busy ones, where each call waits for its
second thread to be scheduled (a 512-token prefill of the full-size model took 120-139 s, a
profile put 107 s of 128 in this rule, while other processes ran). It serves training (the
scan has no gradient) and machines where the kernels cannot be built. A decoded token goes
through the kernels' ``gated_delta_step``, one pass over each state where MLX's ops make four
(2.1 ms a layer for a batch of 4 against 0.5 ms for one sequence: most of what a batch's
decode step added besides the matmuls). ``gated_delta`` dispatches: the scan, else the chunked
form, for unmasked multi-token calls, the step for one unmasked token outside training,
mlx-lm's recurrence otherwise. tests/test_gated_delta.py checks them against each other,
gradients too.

In training the chunked form is differentiated as it stands (MLX's triangular inverse gets its
gradient from ``unit_lower_inverse``; ``mx.exp`` replaces the fast exp, whose bit tricks have
none): the recurrence keeps every token's (Dv, Dk) state for the backward pass, ~3 MB a token
and layer at the real config, 21 GB for one 350-token image example without checkpointing, where
the chunked form keeps one state a chunk.

The decays stay in log space from the layer's inputs to the segment sums: mlx-lm's ``compute_g``
gives exp(-A·softplus(a + dt_bias)), which is 0.0 in fp32 once A·softplus(...) passes ~104, and
the log of it, -inf, made NaN of every later decay in the chunk (-inf - -inf), where the
recurrence multiplies by 0 and goes on (a DeltaNet layer of the real config fed inputs 100x its
usual scale: all NaN). Each decay between two positions is a sum over the positions between them
rather than a difference of running sums, which loses the small ones after a large one
(ulp(1.6e8) = 16).
"""

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.gated_delta import compute_g, gated_delta_update

from . import fast_math, kernels

CHUNK = 64


def log_decay(A_log, a, dt_bias):
    """log g = -A·softplus(a + dt_bias) (B, T, Hv) in fp32: mlx-lm's ``compute_g`` before its exp."""
    return -mx.exp(A_log.astype(mx.float32)) * nn.softplus(a + dt_bias)


def segment_sums(x):
    """(..., C) -> (..., C, C) with [i, j] the sum of x over (j, i] for j <= i (0 on the diagonal;
    0 above it too, for the caller to mask), each summed on its own: no cancellation."""
    C = x.shape[-1]
    strictly = mx.tril(mx.ones((C, C), dtype=mx.bool_), k=-1)
    return mx.cumsum(mx.where(strictly, x[..., :, None], 0), axis=-2)


@mx.custom_function
def unit_lower_inverse(m):
    """The inverse of a lower-triangular (..., C, C) matrix, by forward substitution on the CPU."""
    return mx.linalg.tri_inv(m, upper=False, stream=mx.cpu)


@unit_lower_inverse.vjp
def _unit_lower_inverse_vjp(primals, cotangent, inverse):
    # d(M^-1) = -M^-1 dM M^-1, so dL/dM = -M^-T (dL/dX) M^-T, on the lower triangle M lives in
    t = inverse.swapaxes(-1, -2)
    return (mx.tril(-(t @ cotangent @ t)),)


def chunked_gated_delta(q, k, v, log_g, beta, state=None, chunk: int = CHUNK, exp=fast_math.exp):
    """mlx-lm's ``gated_delta_ops`` without a mask, with the decay given as its log.

    Shapes: q, k (B, T, Hk, Dk) (normalised, q scaled); v (B, T, Hv, Dv); log_g (B, T, Hv)
    log-decay in [-inf, 0]; beta (B, T, Hv); state (B, Hv, Dv, Dk) fp32. Returns y (B, T, Hv, Dv)
    in q's dtype and the new state. ``exp`` for the (64, 64) decays: ``mx.exp`` where a gradient
    goes through them.
    """
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[-2:]
    dtype = q.dtype
    if Hv > Hk:
        q, k = (mx.repeat(x, Hv // Hk, axis=2) for x in (q, k))
    # (B, H, T, d) in fp32, time padded to whole chunks (padding has beta = 0 and no decay)
    q, k, v = (x.astype(mx.float32).transpose(0, 2, 1, 3) for x in (q, k, v))
    log_g = log_g.astype(mx.float32).transpose(0, 2, 1)
    beta = beta.astype(mx.float32).transpose(0, 2, 1)
    pad = (-T) % chunk
    if pad:
        q, k, v = (mx.pad(x, [(0, 0), (0, 0), (0, pad), (0, 0)]) for x in (q, k, v))
        log_g, beta = (mx.pad(x, [(0, 0), (0, 0), (0, pad)]) for x in (log_g, beta))
    N = (T + pad) // chunk
    q, k, v = (x.reshape(B, Hv, N, chunk, -1) for x in (q, k, v))
    log_g, beta = log_g.reshape(B, Hv, N, chunk), beta.reshape(B, Hv, N, chunk)

    gamma = mx.cumsum(log_g, axis=-1)  # within each chunk, from its start
    seg = segment_sums(log_g)  # from position j to position i
    causal = mx.tril(mx.ones((chunk, chunk), dtype=mx.bool_))
    # fast_math.exp over these (B, H, N, 64, 64): the whole rule at 511 tokens 34.7 -> 32.7 ms (A/B)
    decay = mx.where(causal, exp(seg), 0)
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    strictly = mx.tril(mx.ones((chunk, chunk), dtype=mx.bool_), k=-1)
    lower = mx.where(strictly, (k_beta @ k.swapaxes(-1, -2)) * decay, 0)
    eye = mx.eye(chunk, dtype=mx.float32)
    # T = (I + L)^-1 by forward substitution: the CPU triangular inverse
    t_inv = unit_lower_inverse(eye + lower)
    u = t_inv @ v_beta
    w = t_inv @ (k_beta * mx.exp(gamma)[..., None])
    attn = (q @ k.swapaxes(-1, -2)) * decay
    q_decayed = q * mx.exp(gamma)[..., None]
    k_to_end = k * mx.exp(seg[..., -1, :])[..., None]
    chunk_decay = mx.exp(gamma[..., -1])[..., None, None]

    s = (mx.zeros((B, Hv, Dv, Dk), mx.float32) if state is None else state.astype(mx.float32)).swapaxes(-1, -2)
    outs = []
    for n in range(N):  # S: (B, H, Dk, Dv)
        v_new = u[:, :, n] - w[:, :, n] @ s
        outs.append(q_decayed[:, :, n] @ s + attn[:, :, n] @ v_new)
        s = s * chunk_decay[:, :, n] + k_to_end[:, :, n].swapaxes(-1, -2) @ v_new
    y = mx.concatenate(outs, axis=2)[:, :, :T].transpose(0, 2, 1, 3)
    return y.astype(dtype), s.swapaxes(-1, -2)


def gated_delta(q, k, v, a, b, A_log, dt_bias, state=None, mask=None, *, training: bool = False):
    """mlx-lm's ``gated_delta_update`` contract; the kernels or the chunked form where they apply."""
    if not training and mask is None and q.shape[1] == 1 and kernels.load() is not None:
        return delta_step(q, k, v, compute_g(A_log, a, dt_bias), mx.sigmoid(b), state)
    if mask is not None or q.shape[1] == 1:
        return gated_delta_update(q, k, v, a, b, A_log, dt_bias, state, mask, use_kernel=not training)
    if not training and kernels.load() is not None:
        return scanned_gated_delta(q, k, v, compute_g(A_log, a, dt_bias), mx.sigmoid(b), state)
    return chunked_gated_delta(q, k, v, log_decay(A_log, a, dt_bias), mx.sigmoid(b), state,
                               exp=mx.exp if training else fast_math.exp)


def scanned_gated_delta(q, k, v, g, beta, state=None):
    """A prompt through the kernel, in ``gated_delta_ops``' shapes (g the decay in linear space)."""
    B, _, _, Dk = q.shape
    Hv, Dv = v.shape[-2:]
    state = mx.zeros((B, Hv, Dv, Dk), mx.float32) if state is None else state
    y, state = kernels.gated_delta_scan(*(x.astype(mx.float32) for x in (q, k, v, g, beta, state)))
    return y.astype(q.dtype), state


def delta_step(q, k, v, g, beta, state=None):
    """One token (T = 1) through the kernel, in ``gated_delta_update``'s shapes and dtypes."""
    B, _, Hk, Dk = q.shape
    Hv, Dv = v.shape[-2:]
    if Hv > Hk:
        q, k = (mx.repeat(x, Hv // Hk, axis=2) for x in (q, k))
    if state is None:
        state = mx.zeros((B, Hv, Dv, Dk), dtype=mx.float32)
    f32 = (x[:, 0].astype(mx.float32) for x in (q, k, v, g, beta))
    y, state = kernels.gated_delta_step(*f32, state.astype(mx.float32))
    return y[:, None].astype(q.dtype), state
