"""The language model's layers as MLX's CPU backend runs them fast (see ``seam.py``).

Each class is the portable layer of ``model/language.py`` (mlx-lm's) with the same math
computed otherwise: the fast exp family (``fast_math``), the chunked delta rule for prefill,
the depthwise conv as one fused kernel, a causal softmax attention, and a compiled decode
step for each DeltaNet layer. Figures measured on the CI machine (2 cores, fp32).
"""

import threading
from functools import partial

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import sum_gradients
from mlx.utils import tree_flatten
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.cache import KVCache
from mlx_lm.models.gated_delta import normalize_qk

from ..model.language import MLP, DecoderLayer, GatedAttention, GatedDeltaNet, RoPE
from . import fast_math, kernels, norm_layers
from .gated_delta import gated_delta
from .kernel_layers import stored
from .registry import replaces

PLAN_LOCK = threading.Lock()  # one thread makes a layer's plan; the others then use it


def causal_attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """Causal GQA attention with ``fast_math.softmax``; q (B, Hq, L, D), k and v (B, Hkv, S, D)
    with the L queries the last of the S positions. The query heads that share a kv head are
    stacked into one matmul against it."""
    B, Hq, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    scores = ((q * scale).reshape(B, Hkv, Hq // Hkv * L, D) @ k.swapaxes(-1, -2)).reshape(B, Hkv, Hq // Hkv, L, S)
    if L > 1:  # one query, the last position, sees every key
        scores = mx.where(mx.arange(S)[None] <= mx.arange(S - L, S)[:, None], scores, -mx.inf)
    probs = fast_math.softmax(scores, axis=-1)
    return (probs.reshape(B, Hkv, Hq // Hkv * L, S) @ v).reshape(B, Hq, L, v.shape[-1])


@replaces(GatedAttention)
class CpuGatedAttention(GatedAttention):
    """mlx-lm's forward with the gate's sigmoid and a prefill's causal softmax from
    ``fast_math``. For 512 tokens: MLX's sigmoid 25 ms against 4, its CPU SDPA 50 ms against 41
    for ``causal_attention``; the 6 layers 750 -> 510 ms. Written as ``project`` and ``finish``
    around the cache so that a decoded token can compile them (``CpuDecoderLayer``)."""

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        queries, keys, values, gate = self.project(x, offset=cache.offset if cache is not None else 0)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        if isinstance(mask, str) and mask == "causal" and x.shape[1] > 1 and fast_math.fast(queries):
            output = causal_attention(queries, keys, values, self.scale)
        else:
            output = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
        return self.finish(output, gate)

    def project(self, x: mx.array, offset=0):
        """(queries, keys, values) as (B, heads, L, D), turned to ``offset``, and the gate."""
        B, L, _ = x.shape
        queries, gate = mx.split(self.q_proj(x).reshape(B, L, self.num_attention_heads, -1), 2, axis=-1)
        gate = gate.reshape(B, L, -1)
        keys, values = self.k_proj(x), self.v_proj(x)
        queries = self.q_norm(queries).transpose(0, 2, 1, 3)
        keys = self.k_norm(keys.reshape(B, L, self.num_key_value_heads, -1)).transpose(0, 2, 1, 3)
        values = values.reshape(B, L, self.num_key_value_heads, -1).transpose(0, 2, 1, 3)
        return self.rope(queries, offset=offset), self.rope(keys, offset=offset), values, gate

    def finish(self, output: mx.array, gate: mx.array) -> mx.array:
        B, _, L, _ = output.shape
        return self.o_proj(output.transpose(0, 2, 1, 3).reshape(B, L, -1) * fast_math.sigmoid(gate))


@replaces(MLP)
class CpuMLP(MLP):
    """mlx-lm's SwiGLU MLP with the fast SiLU."""

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(fast_math.swiglu(self.gate_proj(x), self.up_proj(x)))


@partial(mx.compile, shapeless=True)
def _sum_of_products(*taps_and_weights):
    half = len(taps_and_weights) // 2
    out = taps_and_weights[0] * taps_and_weights[half]
    for x, w in zip(taps_and_weights[1:half], taps_and_weights[half + 1 :]):
        out = out + x * w
    return out


def causal_conv(x: mx.array, weight: mx.array) -> mx.array:
    """Depthwise causal conv as K shifted multiply-adds in one fused kernel: (B, T+K-1, C),
    weight (C, K, 1) -> (B, T, C).

    MLX's grouped ``conv1d`` with one group per channel took 159 ms for 515 x 6144 on the CPU,
    the unfused multiply-adds 12 ms, this 4 ms (and 1.2 ms against 0.15 ms per decoded
    token), the same result.
    """
    K = weight.shape[1]
    T = x.shape[1] - K + 1
    return _sum_of_products(*(x[:, k : k + T] for k in range(K)), *(weight[:, k, 0] for k in range(K)))


@replaces(GatedDeltaNet)
class CpuGatedDeltaNet(GatedDeltaNet):
    """mlx-lm's gated DeltaNet forward (cache lengths, sharding hook and all), with the conv,
    the SiLUs and the prefill's delta rule computed as above; written as a function of its
    state (``mix``) so that a decode step can be compiled (``CpuDecoderLayer``)."""

    def __call__(self, inputs: mx.array, mask=None, cache=None) -> mx.array:
        if self.sharding_group is not None:
            inputs = sum_gradients(self.sharding_group)(inputs)
        conv_state, state, lengths = (cache[0], cache[1], cache.lengths) if cache is not None else (None, None, None)
        out, conv_state, state = self.mix(inputs, conv_state, state, mask, lengths)
        if cache is not None and inputs.shape[1] > 1 and not self.training:
            # The conv state is three rows of the chunk's conv input; left lazy until the chunk's
            # end it holds all of that input alive, in every layer at once (a 512-token chunk:
            # 18 x 12.6 MB, the prefill's peak 1.18 -> 0.97 GB at 8 bits).
            mx.async_eval(conv_state)
        if cache is not None:
            cache[0], cache[1] = conv_state, state
            cache.advance(inputs.shape[1])
        if self.sharding_group is not None:
            out = mx.distributed.all_sum(out, group=self.sharding_group)
        return out

    def mix(self, inputs: mx.array, conv_state=None, state=None, mask=None, lengths=None):
        """(B, S, hidden) -> (output, conv state, recurrent state)."""
        B, S, _ = inputs.shape
        qkv = self.in_proj_qkv(inputs)
        z = self.in_proj_z(inputs).reshape(B, S, self.num_v_heads, self.head_v_dim)
        b, a = self.in_proj_b(inputs), self.in_proj_a(inputs)
        if conv_state is None:
            conv_state = mx.zeros((B, self.conv_kernel_size - 1, self.conv_dim), dtype=inputs.dtype)
        if mask is not None:
            qkv = mx.where(mask[..., None], qkv, 0)
        n_keep = self.conv_kernel_size - 1
        if lengths is None and not self.training and fast_math.fast(qkv) and fast_math.by_kernel(qkv):
            # A prompt: the conv and its SiLU in one pass on every core, reading the state and
            # the new rows where they are, without the concatenated copy (cpu/kernels/conv.cpp).
            conv_out = kernels.causal_conv_silu(conv_state.astype(mx.float32), qkv, self.conv1d.weight[:, :, 0].T)
            rows = qkv if S >= n_keep else mx.concatenate([conv_state, qkv], axis=1)
            conv_state = mx.contiguous(rows[:, -n_keep:, :])
        else:
            conv_input = mx.concatenate([conv_state, qkv], axis=1)
            if lengths is not None:  # each sequence's state ends at its own length (batched decoding)
                ends = mx.clip(lengths, 0, S)
                conv_state = mx.take_along_axis(conv_input, (ends[:, None] + mx.arange(n_keep))[..., None], axis=1)
            else:
                conv_state = mx.contiguous(conv_input[:, -n_keep:, :])
            # in training MLX's own SiLU: the fast one's bit tricks have no gradient
            silu = nn.silu if self.training else fast_math.silu
            conv_out = silu(causal_conv(conv_input, self.conv1d.weight))
        q, k, v = (
            t.reshape(B, S, h, d)
            for t, h, d in zip(
                mx.split(conv_out, [self.key_dim, 2 * self.key_dim], -1),
                [self.num_k_heads, self.num_k_heads, self.num_v_heads],
                [self.head_k_dim, self.head_k_dim, self.head_v_dim],
            )
        )
        normalize = normalize_qk if self.training else norm_layers.normalize_qk
        q, k = normalize(q, k, inv_scale=self.head_k_dim**-0.5, eps=1e-6)
        out, state = gated_delta(q, k, v, a, b, self.A_log, self.dt_bias, state, mask, training=self.training)
        if fast_math.fast(out) and not self.training:  # the gated RMSNorm, silu(z)·rms_norm(out), with the fast SiLU
            gated = fast_math.swiglu(z, norm_layers.rms_norm(out, self.norm.weight, self.norm.eps))
        else:
            gated = self.norm(out, z)
        return self.out_proj(gated.reshape(B, S, -1)), conv_state, state


@replaces(DecoderLayer)
class CpuDecoderLayer(DecoderLayer):
    """mlx-lm's decoder layer; one decoded token runs as compiled steps.

    A DeltaNet layer's state has fixed shapes, so one trace serves every token, and the layer's
    ~50 small ops become a few kernels (the per-op dispatch was a quarter of a CPU decode step,
    ~5% of it saved). An attention layer's KV cache grows every token: what comes before the
    cache (norm, projections, q/k norms, RoPE at the offset given as an array) and after it (gate,
    o_proj, MLP) compile; the attention over the cache is ``causal_attention``'s three ops, where
    MLX's CPU SDPA took 0.3 ms for one token."""

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        if self.compiles(x, mask, cache):
            out, cache[0], cache[1] = self.fused_step(x, cache[0], cache[1]) or self.decode_step(x, cache[0], cache[1])
            cache.advance(1)
            return out
        if self.compiles_attention(x, mask, cache):
            fused = self.fused_attention(x, cache)
            if fused is not None:
                return fused
            queries, keys, values, gate = self.attention_front(x, mx.array(cache.offset))
            keys, values = cache.update_and_fetch(keys, values)
            output = causal_attention(queries, keys, values, self.self_attn.scale)
            return self.attention_back(x, output, gate)
        return super().__call__(x, mask, cache)

    def compiles(self, x, mask, cache) -> bool:
        return (self.is_linear and x.shape[1] == 1 and mask is None and cache is not None and cache[1] is not None
                and isinstance(self.linear_attn, CpuGatedDeltaNet) and self.linear_attn.sharding_group is None
                and not self.training)

    def fused_step(self, x, conv_state, state):
        """One sequence's token through ``kernels.deltanet_decode``, the whole layer as one
        primitive (MLX's ~6 us an op made ~90 ops cost more than the layer's 4-bit matmuls), or
        None where it does not apply: a projection that is not a plain layer of stored weights
        (a LoRA adapter, a bias), a batch, or activations not in float32."""
        if x.shape[0] != 1 or not x.dtype == conv_state.dtype == state.dtype == mx.float32:
            return None
        plan = self.planned("_deltanet_plan", (self.linear_attn, self.mlp, self.input_layernorm,
                                               self.post_attention_layernorm), self.deltanet_plan)
        if plan is None:
            return None
        arrays, kinds, dims, eps = plan
        return kernels.deltanet_decode([x, conv_state, state] + arrays, kinds, dims, eps)

    def deltanet_plan(self):
        """``fused_step``'s arguments besides the token and the state, or None where the layer
        is not for it."""
        attn, mlp = self.linear_attn, self.mlp
        if type(mlp) is not CpuMLP or not all(a.dtype == mx.float32 for a in (attn.A_log, attn.dt_bias, attn.conv1d.weight)):
            return None
        projections = stored(attn.in_proj_qkv, attn.in_proj_z, attn.in_proj_b, attn.in_proj_a, attn.out_proj,
                             mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        norms = (self.input_layernorm, self.post_attention_layernorm, attn.norm)
        if (projections is None or any(n["weight"].dtype != mx.float32 for n in norms)
                or self.input_layernorm.eps != self.post_attention_layernorm.eps):
            return None
        kinds, weights = projections
        taps = mx.contiguous(attn.conv1d.weight[:, :, 0].T)  # (C, kernel, 1) as (kernel, C), the layout its kernel reads
        arrays = [self.input_layernorm["weight"], self.post_attention_layernorm["weight"], taps, attn.A_log,
                  attn.dt_bias, attn.norm["weight"]] + weights
        dims = [self.input_layernorm["weight"].size, mlp.gate_proj["weight"].shape[0], attn.num_k_heads,
                attn.num_v_heads, attn.head_k_dim, attn.head_v_dim, attn.conv_kernel_size]
        eps = [self.input_layernorm.eps, attn.norm.eps, 1e-6]
        return arrays, kinds, dims, eps

    def planned(self, name: str, modules, make):
        """``make()``, made once and kept while every module and array under ``modules`` (two
        levels down: a projection's weights) is the same object: a LoRA adapter put in or
        weights loaded make it again. Gathering and checking a layer's ~30 arrays through
        nn.Module's attributes took more of a decoded token than comparing their identities."""
        objects = []
        for module in modules:
            objects.append(module)
            for child in module.values():
                objects.append(child)
                if isinstance(child, dict):
                    objects.extend(child.values())
        key = list(map(id, objects))
        kept = getattr(self, name, None)
        if kept is None or kept[0] != key:
            with PLAN_LOCK:
                kept = getattr(self, name, None)
                if kept is None or kept[0] != key:
                    plan = make()
                    # Computed now: threads that generate at once share a plan, and two threads
                    # evaluating one lazy array (the conv taps' transpose) crashed MLX's eval or
                    # left one stream waiting forever on the other's event.
                    mx.eval([a for _, a in tree_flatten(plan) if isinstance(a, mx.array)])
                    kept = (key, objects, plan)  # the objects held, so that no other takes one's id
                    object.__setattr__(self, name, kept)
        return kept[2]

    def fused_attention(self, x, cache):
        """The token through ``kernels.attention_decode``: everything before the KV cache update
        as one primitive and everything after it as another, or None where a projection is not a
        plain layer of stored weights or the norms differ from what the kernels take."""
        plan = self.planned("_attention_plan", (self.self_attn, self.mlp, self.input_layernorm,
                                                self.post_attention_layernorm), self.attention_plan)
        if plan is None:
            return None
        front, front_kinds, back, back_kinds, dims, floats = plan
        dims = dims + [cache.offset]
        q, k, v, gate = kernels.attention_decode([x] + front, front_kinds, dims, floats, True)
        keys, values = cache.update_and_fetch(k, v)
        return kernels.attention_decode([x, q, keys, values, gate] + back, back_kinds, dims, floats, False)

    def attention_plan(self):
        """``fused_attention``'s arguments besides the token and the cache: the front's arrays and
        kinds, the back's, the dims but the offset, the floats; None where the layer is not for it."""
        attn, mlp = self.self_attn, self.mlp
        if type(mlp) is not CpuMLP:
            return None
        front = stored(attn.q_proj, attn.k_proj, attn.v_proj)
        back = stored(attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        norms = (self.input_layernorm, self.post_attention_layernorm, attn.q_norm, attn.k_norm)
        if (front is None or back is None or any(n["weight"].dtype != mx.float32 for n in norms)
                or len({n.eps for n in norms}) != 1):
            return None
        dims = [self.input_layernorm["weight"].size, mlp.gate_proj["weight"].shape[0], attn.num_attention_heads,
                attn.num_key_value_heads, attn.head_dim, attn.rope.dims]
        floats = [self.input_layernorm.eps, attn.scale]
        front_arrays = [self.input_layernorm["weight"], attn.q_norm["weight"], attn.k_norm["weight"], attn.rope.freqs]
        return (front_arrays + front[1], front[0], [self.post_attention_layernorm["weight"]] + back[1], back[0],
                dims, floats)

    def compiles_attention(self, x, mask, cache) -> bool:
        """One token of one sequence through mlx-lm's plain KV cache (4.7's canvas positions and
        the server's batches take the layer as it is)."""
        return (not self.is_linear and x.shape[:2] == (1, 1) and mask is None and type(cache) is KVCache
                and isinstance(self.self_attn, CpuGatedAttention) and type(self.self_attn.rope) is RoPE
                and fast_math.fast(x) and not self.training)

    def step(self, x, conv_state, state):
        h, conv_state, state = self.linear_attn.mix(self.input_layernorm(x), conv_state, state)
        h = x + h
        return h + self.mlp(self.post_attention_layernorm(h)), conv_state, state

    def front(self, x, offset):
        return self.self_attn.project(self.input_layernorm(x), offset)

    def back(self, x, output, gate):
        h = x + self.self_attn.finish(output, gate)
        return h + self.mlp(self.post_attention_layernorm(h))

    def compiled(self, name: str):
        if getattr(self, f"_{name}", None) is None:
            object.__setattr__(self, f"_{name}", mx.compile(getattr(self, name)))
        return getattr(self, f"_{name}")

    @property
    def decode_step(self):
        return self.compiled("step")

    @property
    def attention_front(self):
        return self.compiled("front")

    @property
    def attention_back(self):
        return self.compiled("back")
