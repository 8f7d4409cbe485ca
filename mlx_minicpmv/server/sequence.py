"""One request on the model's thread: its prompt, its prefill, and what decoding it needs.

``Sequence.prepare`` renders the messages with the processor, finds the longest stored state
the prompt continues (``conversations.py``), and embeds only the tokens after it, running the
vision tower only for the images and videos among them. ``prefill_step`` then feeds those
embeddings to the model a chunk at a time, as mlx-lm's ``generate_step`` does (all but the last
prompt token; the last one is the first decode step), storing the state at the save points on
the way. After that the sequence joins the decode batch (``batch.py``).
"""

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from ..generate import feature_cache
from .conversations import ConversationStore, save_points
from .output import TextStream
from .protocol import APIError, ResponseFormat


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict] = None
    seed: Optional[int] = None


@dataclass
class Job:
    """A request as the HTTP layer hands it over: plain data, media already decoded."""

    messages: List[dict]
    media_digests: List[str] = field(default_factory=list)  # per image/video, conversation order
    max_tokens: Optional[int] = None  # None: the server's default, within the context
    sampling: Sampling = field(default_factory=Sampling)
    stop: List[str] = field(default_factory=list)
    enable_thinking: bool = False
    processor_options: dict = field(default_factory=dict)  # max_slice_nums, downsample_mode, use_image_id
    response_format: Optional[ResponseFormat] = None
    top_logprobs: Optional[int] = None  # None: no logprobs


def make_sampler(s: Sampling) -> Callable[[mx.array], mx.array]:
    """mlx-lm's filters, and a key of the request's own when it has a seed, so that a seeded
    request samples the same tokens whatever else shares its batch."""
    if s.temperature == 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    filters = []
    if 0 < s.top_p < 1:
        filters.append(lambda x: apply_top_p(x, s.top_p))
    if s.min_p > 0:
        filters.append(lambda x: apply_min_p(x, s.min_p))
    if s.top_k > 0:
        filters.append(lambda x: apply_top_k(x, s.top_k))
    key = [mx.random.key(s.seed)] if s.seed is not None else None

    def sample(logprobs):
        for f in filters:
            logprobs = f(logprobs)
        if key is None:
            return mx.random.categorical(logprobs * (1 / s.temperature))
        key[0], sub = mx.random.split(key[0])
        return mx.random.categorical(logprobs * (1 / s.temperature), key=sub)

    return sample


def make_processors(s: Sampling, vocab_size: int) -> list:
    try:
        bias = {int(k): float(v) for k, v in (s.logit_bias or {}).items()} or None
    except ValueError:
        raise APIError(400, "logit_bias: keys must be token ids (integers as strings)", param="logit_bias") from None
    if bias and not all(0 <= t < vocab_size for t in bias):
        raise APIError(400, f"logit_bias: token ids must be in [0, {vocab_size})", param="logit_bias")
    return make_logits_processors(
        logit_bias=bias,
        repetition_penalty=s.repetition_penalty if s.repetition_penalty != 1.0 else None,
        presence_penalty=s.presence_penalty or None, frequency_penalty=s.frequency_penalty or None)


def item_slices(target_sizes: np.ndarray, tokens_per_item: List[int]) -> List[Tuple[int, int, int, int]]:
    """Per item (first slice, end slice, first pixel column, end column) of a processor strip.

    Every slice of a kind has the same ratio of patches to placeholder tokens (the downsample
    factor), so the ratio is read off the totals instead of being assumed here.
    """
    patches = target_sizes[:, 0] * target_sizes[:, 1]
    ratio = patches.sum() / max(sum(tokens_per_item), 1)
    out, s = [], 0
    for n in tokens_per_item:
        start, need = s, n * ratio
        while need > 0:
            need -= patches[s]
            s += 1
        out.append((start, s, int(patches[:start].sum()), int(patches[:s].sum())))
    return out


def features_after(model, pixel_values, target_sizes, ids: np.ndarray, pad: int, spans, start: int, mode: str):
    """Vision features of the items whose placeholders lie at or after token ``start``."""
    if pixel_values is None:
        return None
    counts = [int(np.sum(ids[a:b] == pad)) for a, b in spans]
    sizes = np.asarray(target_sizes).reshape(-1, 2)
    patch = pixel_values.shape[2]
    feats = []
    for (a, _), (s0, s1, c0, c1) in zip(spans, item_slices(sizes, counts)):
        if a >= start:
            pv = pixel_values[..., c0 * patch: c1 * patch]
            feats.append(feature_cache.features(model, pv, mx.array(sizes[s0:s1]), mode))
    return mx.concatenate(feats, axis=0) if feats else None


class ModelContext:
    """What every sequence needs of the model, looked up once."""

    def __init__(self, model, processor, store: ConversationStore, default_max_tokens: int = 1024,
                 prefill_step: int = 512):
        from .grammar import Grammars

        self.model, self.processor, self.store = model, processor, store
        self.default_max_tokens, self.prefill_step = default_max_tokens, prefill_step
        tok = processor.tokenizer
        vocab = tok.get_vocab()
        self.im_start = vocab["<|im_start|>"]
        self.think_end = vocab.get("</think>")
        self.image_pad, self.video_pad = vocab[processor.tokens.image], vocab[processor.tokens.video]
        self.grammars = Grammars(tok, model.config.text_config.vocab_size, processor.eos_token_ids)


class Sequence:
    """A request from its prompt to its last token. Runs only on the thread that owns MLX."""

    def __init__(self, job: Job, handle, uid: int):
        self.job, self.handle, self.uid = job, handle, uid
        self.ids: List[int] = []
        self.tokens: List[int] = []  # prompt and answer so far
        self.cache = None
        self.cached = 0
        self.done_to = 0  # prompt tokens in the cache
        self.generated = 0
        self.max_tokens = 0
        self.sampler = self.processors = self.text = None
        self.context = None  # mx.array of tokens for the logits processors
        self.embeds = None
        self.plan: List[int] = []
        self.media: List[Tuple[str, int]] = []
        self.saves: List[int] = []

    # -- before the prefill ---------------------------------------------------------------------
    def prepare(self, ctx: "ModelContext") -> None:
        job, model, processor = self.job, ctx.model, ctx.processor
        # The placeholders first, without a pixel resized: a follow-up resends every image and video
        # of the chat, and the stored state may cover them all (a 60 s video's 60 frames took most
        # of a follow-up's 22.8 s to resize, only to be counted).
        options = dict(enable_thinking=job.enable_thinking, **job.processor_options)
        inputs = processor(job.messages, pixels=False, **options)
        ids = np.asarray(inputs.input_ids).reshape(-1)
        self.ids = ids.tolist()
        n_ctx = model.config.text_config.max_position_embeddings
        room = n_ctx - len(self.ids)
        if room < 1:
            raise APIError(400, f"the prompt is {len(self.ids)} tokens, over the model's context of {n_ctx}; send "
                           "fewer images or video frames (mm_processor_kwargs.max_num_frames), shorter text, or fewer "
                           "past messages", param="messages", code="context_length_exceeded")
        if job.max_tokens is not None and job.max_tokens > room:
            raise APIError(400, f"the prompt is {len(self.ids)} tokens and max_tokens is {job.max_tokens}, but the "
                           f"model's context is {n_ctx}; lower max_tokens, or send fewer images, frames or messages",
                           param="max_tokens", code="context_length_exceeded")
        self.max_tokens = job.max_tokens if job.max_tokens is not None else min(ctx.default_max_tokens, room)

        # Images and videos in token order, which is the conversation order of the digests.
        starts = sorted(a for a, _ in inputs.image_spans + inputs.video_spans)
        if len(job.media_digests) != len(starts):
            raise APIError(500, f"{len(job.media_digests)} media digests for {len(starts)} images and videos")
        self.media = list(zip(job.media_digests, starts))

        store = ctx.store
        cache, self.cached = store.lookup(self.ids, self.media, limit=len(self.ids) - 1)
        self.cache = cache if cache is not None else model.make_cache()
        self.done_to = self.cached
        if any(start >= self.cached for _, start in self.media):  # media to encode: their pixels after all
            inputs = processor(job.messages, **options)
        has_system = job.messages[0]["role"] == "system"
        self.saves = [p for p in save_points(self.ids, ctx.im_start, has_system) if self.cached < p < len(self.ids)]

        mode = inputs.downsample_mode
        self.embeds = model.embed(
            mx.array(ids[self.cached:])[None],
            image_features=features_after(model, inputs.pixel_values, inputs.target_sizes, ids, ctx.image_pad,
                                          inputs.image_spans, self.cached, mode),
            video_features=features_after(model, inputs.pixel_values_videos, inputs.target_sizes_videos, ids,
                                          ctx.video_pad, inputs.video_spans, self.cached, mode),
        )[0]
        mx.eval(self.embeds)  # the vision tower runs once, here
        # 4.7: the whole conversation laid out on its canvas, placed from the stored state on.
        model.begin_prompt(self.cache, ids[None], inputs.target_sizes, inputs.target_sizes_videos, mode,
                           fed=self.cached)

        # Chunk ends: every prefill_step tokens, and at each save point.
        end = len(self.ids) - 1
        cuts = set(range(self.cached + ctx.prefill_step, end, ctx.prefill_step)) | set(self.saves) | {end}
        self.plan = sorted(c for c in cuts if self.cached < c <= end)

        self.sampler = make_sampler(job.sampling)
        self.processors = make_processors(job.sampling, model.config.text_config.vocab_size)
        if job.response_format is not None and job.response_format.type != "text":
            self.processors.append(ctx.grammars.constraint(job.response_format,
                                                           ctx.think_end if job.enable_thinking else None))
        self.text = TextStream(processor.tokenizer.detokenizer, processor.eos_token_ids, ctx.think_end,
                               job.enable_thinking, job.stop)
        self.tokens = list(self.ids)

    # -- the prefill ------------------------------------------------------------------------------
    @property
    def prefilled(self) -> bool:
        return not self.plan

    def prefill_step(self, model, store: ConversationStore) -> None:
        """Feed the next chunk of the prompt; store the state if the chunk ends at a save point."""
        end = self.plan.pop(0)
        a, b = self.done_to - self.cached, end - self.cached
        model(None, cache=self.cache, input_embeddings=self.embeds[a:b][None])
        mx.eval([c.state for c in self.cache])
        self.done_to = end
        if end in self.saves:
            store.save(self.ids[:end], self.media, self.cache)
        if self.prefilled:
            self.embeds = None
            mx.clear_cache()
