"""MiniCPM-V 4.6 and 4.7: vision tower + merger + hybrid language model, and the splice between them.

References: transformers 5.23 ``models/minicpmv4_6/modeling_minicpmv4_6.py`` and
``models/qwen3_5/modeling_qwen3_5.py``; ``shared/model-spec.md`` says what was checked.
4.7 (``models/minicpmv4_7``) is the same network whose language model turns with 3-D canvas
positions: ``begin_prompt`` places a prompt's positions (``canvas.py``) in the cache, and the
attention's rotary embedding reads them there (``canvas_rope.py``).
"""

import threading
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ..config import ModelConfig
from ..downsample import merge_side
from ..errors import CheckpointError
from .canvas import batch_positions, canvas_positions
from .canvas_rope import CanvasKVCache
from .language import LanguageModel
from .merger import Merger
from .vision import VisionTower, check_grid

# A bound on patches per tower pass: slices of one size go through the tower together, which
# fills a GPU, while a long video's activations (B·L·4304 floats in the MLP) stay a few
# hundred MB whatever the frame count.
MAX_PATCHES_PER_PASS = 16384

# The vision side's modules: what ``defer_vision`` leaves unread until the first image or video.
ON_FIRST_IMAGE = ("vision_tower.", "merger.")

# Held while what a deferred load put on its any-thread stream is computed (loading.py): two
# threads' first images read the vision weights once, and never beside another load.
READ_LOCK = threading.Lock()

# Norm weights the reference stores zero-centred (it computes ``x * (1 + w)``): ``sanitize``
# adds the 1 once, so the model multiplies by the weight as mlx-lm's RMSNorm does.
ZERO_CENTRED = (
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    "language_model.norm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
)


class Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.patches_per_pass = MAX_PATCHES_PER_PASS
        # log Σ exp of the logits, for generation's log-probabilities (the CPU seam's has a fast exp)
        self.logsumexp = mx.logsumexp
        vc, tc = config.vision_config, config.text_config
        self.vision_tower = VisionTower(vc)
        self.merger = Merger(vc.hidden_size, tc.hidden_size, config.merge_kernel_size, config.merger_times)
        self.language_model = LanguageModel(tc)

    # -- vision -------------------------------------------------------------------------------
    def defer_vision(self, where) -> None:
        """Leave the vision weights unread until the first image or video needs them
        (``ON_FIRST_IMAGE``); ``where`` names the files in an error."""
        object.__setattr__(self, "_vision_deferred", str(where))

    def read_vision(self) -> None:
        """Read the vision weights ``defer_vision`` left, once, whichever thread asks first."""
        with READ_LOCK:
            where = getattr(self, "_vision_deferred", None)
            if where is None:
                return
            try:
                mx.eval(self.vision_parameters())
            except RuntimeError as e:
                raise CheckpointError(
                    f"{where}: the vision weights cannot be read ({str(e).splitlines()[0]}); the files changed since "
                    "the model was loaded: load it again, or convert or download it again if they are damaged"
                ) from None
            object.__setattr__(self, "_vision_deferred", None)

    def vision_parameters(self, vision: bool = True) -> list:
        """The parameters of the vision side (``ON_FIRST_IMAGE``), or with ``vision=False`` all others."""
        return [v for k, v in tree_flatten(self.parameters()) if k.startswith(ON_FIRST_IMAGE) == vision]

    def encode_slices(
        self, pixel_values: mx.array, target_sizes, downsample_mode: Optional[str] = None
    ) -> mx.array:
        """Features of every slice, concatenated in processor order: (Σ tokens, text hidden).

        ``target_sizes`` are the processor's patch grids, read on the host once: they are
        inputs, so no computed value ever comes back to Python.
        """
        multiple = merge_side(downsample_mode or self.config.downsample_mode)
        use_vit_merger = multiple > self.merger.kernel  # 16x: the window merger runs inside the tower
        sizes = [tuple(int(v) for v in s) for s in np.asarray(target_sizes).reshape(-1, 2)]
        for h, w in sizes:
            check_grid(h, w, multiple)
        self.read_vision()
        patches = self.vision_tower.embeddings.patchify(pixel_values)
        if patches.shape[0] != sum(h * w for h, w in sizes):
            raise ValueError(
                f"pixel_values hold {patches.shape[0]} patches but target_sizes describe "
                f"{sum(h * w for h, w in sizes)}"
            )
        offsets = np.concatenate([[0], np.cumsum([h * w for h, w in sizes])])

        groups: Dict[Tuple[int, int], List[int]] = defaultdict(list)
        for i, hw in enumerate(sizes):
            groups[hw].append(i)
        out: List[Optional[mx.array]] = [None] * len(sizes)
        for (h, w), members in groups.items():
            step = max(1, self.patches_per_pass // (h * w))
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                x = mx.stack([patches[offsets[i] : offsets[i + 1]] for i in chunk])
                x, (h2, w2) = self.vision_tower(x, h, w, use_vit_merger)
                x = self.merger(x, h2, w2)
                for j, i in enumerate(chunk):
                    out[i] = x[j]
        return mx.concatenate(out, axis=0)

    # -- text ---------------------------------------------------------------------------------
    def embed(
        self,
        input_ids: mx.array,
        pixel_values: Optional[mx.array] = None,
        target_sizes=None,
        pixel_values_videos: Optional[mx.array] = None,
        target_sizes_videos=None,
        downsample_mode: Optional[str] = None,
        image_features: Optional[mx.array] = None,
        video_features: Optional[mx.array] = None,
    ) -> mx.array:
        """Token embeddings with vision features written over the image/video pad tokens.

        Precomputed ``image_features``/``video_features`` (from ``encode_slices``) skip the tower.
        """
        embeds = self.language_model.embed_tokens(input_ids)
        if image_features is None and pixel_values is not None:
            image_features = self.encode_slices(pixel_values, target_sizes, downsample_mode)
        if video_features is None and pixel_values_videos is not None:
            video_features = self.encode_slices(pixel_values_videos, target_sizes_videos, downsample_mode)
        for features, token_id, kind in (
            (image_features, self.config.image_token_id, "image"),
            (video_features, self.config.video_token_id, "video"),
        ):
            embeds = splice(embeds, input_ids, features, token_id, kind)
        return embeds

    def __call__(
        self,
        input_ids: mx.array,
        pixel_values: Optional[mx.array] = None,
        target_sizes=None,
        cache: Optional[list] = None,
        input_embeddings: Optional[mx.array] = None,
        rows: Optional[mx.array] = None,
        **vision_inputs,
    ) -> mx.array:
        """(B, L) ids [+ processor pixel_values/target_sizes] -> (B, L, vocab) logits (or, given
        ``rows``, indices into the B·L positions, those positions' (N, vocab) logits only).

        ``vision_inputs`` may hold ``pixel_values_videos``, ``target_sizes_videos``,
        ``downsample_mode``, ``image_features`` and ``video_features``. Ready
        ``input_embeddings`` (from ``embed``) skip the embedding step, as mlx-lm's
        ``generate_step`` passes them chunk by chunk.
        """
        if input_embeddings is None:
            sizes = (target_sizes, vision_inputs.get("target_sizes_videos"))
            if self.config.canvas_rope and any(s is not None for s in sizes):
                cache = cache if cache is not None else self.make_cache()
                self.begin_prompt(cache, input_ids, *sizes, vision_inputs.get("downsample_mode"))
            input_embeddings = self.embed(input_ids, pixel_values, target_sizes, **vision_inputs)
        return self.language_model(input_embeddings, cache, rows)

    def make_cache(self) -> list:
        return self.language_model.make_cache()

    def begin_prompt(self, cache: list, input_ids, target_sizes=None, target_sizes_videos=None,
                     downsample_mode: Optional[str] = None, fed: int = 0) -> None:
        """Place a prompt's canvas positions in ``cache`` before the prompt is fed, in one piece
        or in chunks (4.7; a no-op for 4.6, which numbers tokens by their place in the cache).

        ``input_ids`` are the prompt's ids and ``target_sizes``/``target_sizes_videos`` the
        processor's patch grids of its images and videos (a batch of B > 1 prompts, as the
        tuner feeds them, goes into an empty cache, each row from 0). The positions start where the
        conversation in ``cache`` stands, so a later turn continues it; everything fed after the
        prompt (the answer, a text-only next turn) continues as text. Computed on the host from
        these inputs alone: nothing comes back from the graph.

        ``fed``: the cache already holds ``input_ids[:fed]`` (a stored state of the same
        conversation, whose ids and grids are given whole, as the server has them); the whole
        conversation is then laid out and its positions placed from token ``fed`` on.
        """
        if not self.config.canvas_rope:
            return
        kv = next((c for c in cache if isinstance(c, CanvasKVCache)), None)
        ids = np.asarray(input_ids)
        pads = (self.config.image_token_id, self.config.video_token_id)
        if kv is None or not np.isin(ids, pads).any():
            return  # no attention layer to turn, or text: it continues where the cache stands
        index = int(kv.offset)
        mode = downsample_mode or self.config.downsample_mode
        if ids.ndim == 2 and ids.shape[0] != 1:  # a batch to train on or score: each row from 0
            if index or fed:
                raise ValueError(f"a batch of {ids.shape[0]} prompts with images or videos goes into an empty cache; "
                                 "a conversation goes on one prompt at a time")
            kv.positions.place(0, batch_positions(ids, target_sizes, target_sizes_videos, self.config.markers, mode))
            return
        if fed and index != fed:
            raise ValueError(f"the cache holds {index} tokens, not the {fed} said to be fed")
        start = 0 if fed else kv.positions.next_position(index)
        positions = canvas_positions(ids.reshape(-1), target_sizes, target_sizes_videos, self.config.markers, mode,
                                     start=start)
        kv.positions.place(index, positions[:, fed:])

    # -- weights ------------------------------------------------------------------------------
    def sanitize(self, weights: Dict[str, mx.array]) -> Dict[str, mx.array]:
        """HF state dict -> this module tree. Pure and idempotent: only ``model.``-prefixed
        (HF) keys and ``lm_head`` are rewritten, so a converted checkpoint passes through
        unchanged."""
        out = {}
        for key, value in weights.items():
            if key.startswith(("mtp.", "model.mtp.")) or ".mtp." in key:
                continue  # MTP weights are never used (spec §16.19)
            if key == "lm_head.weight":
                if not self.config.tie_word_embeddings:  # 4.7's 1B has its own head
                    out["language_model.lm_head.weight"] = value
                continue
            if not key.startswith("model."):
                out[key] = value
                continue
            key = key[len("model.") :]
            if key.endswith("patch_embedding.weight"):
                value = value.transpose(0, 2, 3, 1)  # (O, C, kh, kw) -> MLX (O, kh, kw, C)
            elif key.endswith("conv1d.weight"):
                value = value.transpose(0, 2, 1)  # (C, 1, K) -> MLX (C, K, 1)
            elif key.endswith(ZERO_CENTRED):
                value = (value.astype(mx.float32) + 1.0).astype(value.dtype)
            out[key] = value
        return out

    @staticmethod
    def cast_predicate(path: str) -> bool:
        """Parameters a dtype conversion may cast: the DeltaNet decay parameters stay fp32,
        since g = -exp(A_log)·softplus(a + dt_bias) compounds over every token."""
        return not path.endswith(("A_log", "dt_bias"))

    @staticmethod
    def quant_predicate(path: str, module: nn.Module) -> bool:
        """Layers a quantisation may touch (see README, "Quantisation", for the measured why):
        the DeltaNet gate projections (16 outputs that set decay and write rate) and the
        position table stay in the float dtype."""
        return not path.endswith(("in_proj_a", "in_proj_b", "position_embedding"))


def splice(embeds: mx.array, input_ids: mx.array, features, token_id: int, kind: str) -> mx.array:
    """Write ``features`` row by row over the ``token_id`` positions (row-major over batch, seq).

    Gather by a running count instead of masked_scatter, so the graph needs no host sync.
    Without features the ids embed as plain tokens, as in the reference (a decode step that
    samples a pad token must not fail).
    """
    if features is None:
        return embeds
    n_tokens = int(np.sum(np.asarray(input_ids) == token_id))
    n_features = features.shape[0]
    if n_tokens != n_features:
        raise ValueError(
            f"the prompt has {n_tokens} {kind} placeholder tokens but the {kind} inputs give "
            f"{n_features} features; build the prompt and the pixels with the same processor call"
        )
    mask = input_ids == token_id
    index = mx.maximum(mx.cumsum(mask.reshape(-1).astype(mx.int32)) - 1, 0)
    gathered = features.astype(embeds.dtype)[index].reshape(embeds.shape)
    return mx.where(mask[..., None], gathered, embeds)
