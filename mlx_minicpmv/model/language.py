"""Qwen3.5-0.8B-style hybrid language model (spec §5), built from mlx-lm's Qwen3.5 blocks.

From ``mlx_lm.models.qwen3_5`` (mlx-lm 0.32.2) as they are: the gated DeltaNet (with its
``cache.lengths`` for batched decoding, ``use_kernel=not self.training`` and its sharding
hook), the SwiGLU MLP, and the forwards of the gated attention, of the decoder layer and of
the text model (masks from the caches, the pipeline hooks). What differs here, and why:

- ``RoPE``: the gated attention's rotary embedding is handed the reference's frequencies
  explicitly, where mlx-lm's ``nn.RoPE`` derives them from ``base``; the difference reaches
  ~1e-3 in the logits (see ``RoPE``). Only the attention's ``rope`` is replaced: for 4.7 by
  ``CanvasRoPE`` (canvas_rope.py), which reads 3-D positions that its caches carry beside
  their offset, so that the attention forward stays mlx-lm's.
- The kind of each layer comes from the HF config's ``layer_types``, which may hold any
  pattern (one test config alternates): mlx-lm derives it from ``full_attention_interval``.
  So ``DecoderLayer`` and ``LanguageModel`` have constructors of their own (and
  ``LanguageModel`` points the masks at the first layer of each kind); their forwards are
  mlx-lm's.
- ``LanguageModel`` keeps the HF checkpoint's layout, ``language_model.{embed_tokens, layers,
  norm, lm_head}`` (mlx-lm nests a ``model`` under a head-holding ``TextModel``), and takes
  the spliced input embeddings and returns logits in one call.

This is the model Metal runs. On MLX's CPU backend ``mlx_minicpmv/cpu`` swaps in faster
versions of these layers at load.
"""

from typing import List, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import qwen3_5
from mlx_lm.models.cache import ArraysCache, KVCache

from ..config import TextConfig
from .canvas_rope import CanvasKVCache, CanvasPositions, CanvasRoPE

GatedDeltaNet = qwen3_5.GatedDeltaNet
MLP = qwen3_5.MLP


class RoPE(nn.Module):
    """Partial rotate-half RoPE with the frequencies handed to the kernel.

    From ``base`` MLX derives frequencies that differ from the reference's fp32 ``inv_freq`` by
    up to 4e-6 in the rotated values at position 800 (measured), which the hybrid stack then
    amplifies to ~1e-3 in the logits; explicit frequencies bring it to the reference's 4e-7.
    """

    def __init__(self, dims: int, base: float):
        super().__init__()
        self.dims = dims
        self._freqs = mx.array((base ** (np.arange(0, dims, 2) / dims)).astype(np.float32))

    @property
    def freqs(self) -> mx.array:
        return self._freqs  # underscored: not a parameter

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        return mx.fast.rope(x, self.dims, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._freqs)


class GatedAttention(qwen3_5.Attention):
    """mlx-lm's Qwen3.5 gated attention (per-head [query | gate] q_proj, q/k norms, sigmoid
    gate before o_proj), with the RoPE above."""

    def __init__(self, config: TextConfig):
        rope_type = (config.rope_parameters or {}).get("type", "default")
        if rope_type != "default":
            raise ValueError(f"rope type {rope_type!r} is not used by MiniCPM-V 4.6 and not supported")
        super().__init__(config)
        dims = int(config.head_dim * config.partial_rotary_factor)
        if config.canvas_rope:  # 4.7: 3-D positions, from the cache (canvas_rope.py)
            self.rope = CanvasRoPE(dims, config.rope_theta, config.mrope_section)
        else:
            self.rope = RoPE(dims, config.rope_theta)


class DecoderLayer(qwen3_5.DecoderLayer):
    """mlx-lm's decoder layer, of the kind ``layer_type`` names: the constructor is ours (mlx-lm's
    derives the kind from the layer index), the forward mlx-lm's."""

    def __init__(self, config: TextConfig, layer_type: str):
        nn.Module.__init__(self)
        self.is_linear = layer_type == "linear_attention"
        if self.is_linear:
            self.linear_attn = GatedDeltaNet(config)
        else:
            self.self_attn = GatedAttention(config)
        # The checkpoint's norms are zero-centred, y = norm(x)·(1 + w); sanitize adds the 1, as
        # mlx-lm's does, so that the plain RMSNorm applies.
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)


class LanguageModel(qwen3_5.Qwen3_5TextModel):
    """mlx-lm's Qwen3.5 text model with layers from ``layer_types`` and the head beside it."""

    def __init__(self, config: TextConfig):
        super(qwen3_5.Qwen3_5TextModel, self).__init__()  # the pipeline state; the rest is below
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [DecoderLayer(config, kind) for kind in config.layer_types]
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Which layer's cache each kind of mask is made from: the first of its kind.
        self.ssm_idx = next((i for i, kind in enumerate(config.layer_types) if kind == "linear_attention"), None)
        self.fa_idx = next((i for i, kind in enumerate(config.layer_types) if kind != "linear_attention"), None)

    def __call__(self, embeds: mx.array, cache: Optional[List] = None, rows: Optional[mx.array] = None) -> mx.array:
        """(B, L, hidden) input embeddings -> (B, L, vocab) logits, advancing ``cache``.

        ``rows``: indices into the B·L positions whose logits alone are wanted, (N, vocab) then
        (training's loss reads only the answer's: the head is most of a step's logits memory).
        """
        h = super().__call__(None, cache, input_embeddings=embeds)
        if rows is not None:
            h = h.reshape(-1, h.shape[-1])[rows]
        if self.config.tie_word_embeddings:
            return self.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def make_cache(self) -> List:
        """Conv + recurrent state for DeltaNet layers, a KV cache for attention layers (4.7:
        ``CanvasKVCache``s sharing the conversation's canvas positions)."""
        if self.config.canvas_rope:
            positions = CanvasPositions()
            return [ArraysCache(size=2) if layer.is_linear else CanvasKVCache(positions) for layer in self.pipeline_layers]
        return [ArraysCache(size=2) if layer.is_linear else KVCache() for layer in self.pipeline_layers]
