"""``stream_generate`` / ``generate``: chat messages in, text out, token by token.

The token loop is mlx-lm's ``generate_step`` (chunked prefill, ``mx.async_eval`` overlap,
samplers and logits processors); this module adds what a vision-language chat needs around
it: the processor, the vision splice before prefill, a prompt cache kept across turns, stop
ids from ``generation_config.json``, cancellation between tokens and a context check.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_logits_processors, make_sampler

PREFILL_STEP = 512


class ContextError(ValueError):
    """The prompt (plus the answer asked for) does not fit the model's context."""


@dataclass
class GenerationResponse:
    text: str
    token: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float
    finish_reason: Optional[str] = None  # "stop", "length", "cancelled" on the last response


@dataclass
class PromptCache:
    """The model state after ``tokens``: reusable when the next prompt starts with them.

    The DeltaNet recurrent state cannot be trimmed back, so a cache is only ever extended;
    a prompt that diverges from ``tokens`` starts a fresh one.
    """

    cache: list
    tokens: List[int] = field(default_factory=list)

    @classmethod
    def new(cls, model) -> "PromptCache":
        return cls(model.make_cache(), [])


def sampling(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0):
    """mlx-lm's sampler and logits processors for the reference's sampling parameters."""
    sampler = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0, top_k=top_k, min_p=min_p)
    processors = make_logits_processors(repetition_penalty=repetition_penalty if repetition_penalty != 1.0 else None)
    return sampler, processors


def generation_defaults(processor) -> dict:
    g = processor.generation_config
    return dict(temperature=g.get("temperature", 0.7) if g.get("do_sample", True) else 0.0,
                top_p=g.get("top_p", 1.0), top_k=g.get("top_k", 0),
                repetition_penalty=g.get("repetition_penalty", 1.0))


def stream_tokens(model, inputs, *, prompt_cache: Optional[PromptCache] = None, max_tokens=256,
                  temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, seed=None,
                  eos_token_ids=(), cancel: Optional[Callable[[], bool]] = None,
                  progress: Optional[Callable[[int, int], None]] = None,
                  prefill_step_size: int = PREFILL_STEP) -> Iterator[tuple]:
    """The token loop on processed inputs: yields (token, n, prompt_tps, gen_tps, finish_reason).

    Only the part of ``inputs.input_ids`` that ``prompt_cache`` has not seen is run; the cache
    ends holding the prompt and every token yielded.
    """
    ids = inputs.input_ids.reshape(-1)
    n_ctx = model.config.text_config.max_position_embeddings
    cache = prompt_cache or PromptCache.new(model)
    ids_list = ids.tolist()
    reuse = len(cache.tokens) if ids_list[: len(cache.tokens)] == cache.tokens and len(cache.tokens) < len(ids_list) else 0
    if reuse == 0 and cache.tokens:
        cache.cache, cache.tokens = model.make_cache(), []
    total = len(ids_list) + max(max_tokens, 0)
    if total > n_ctx:
        raise ContextError(
            f"the prompt has {len(ids_list)} tokens and {max_tokens} more were asked for, but the model's "
            f"context is {n_ctx}; use fewer video frames or images, a shorter text, or fewer max tokens"
        )
    if seed is not None:
        mx.random.seed(seed)
    sampler, processors = sampling(temperature, top_p, top_k, min_p, repetition_penalty)

    tic = time.perf_counter()
    new_ids = ids[reuse:]
    if reuse and not has_vision_tokens(model, ids_list[reuse:]):
        new_embeds = model.embed(new_ids[None])[0]  # a follow-up in text: nothing to encode
    else:
        new_embeds = model.embed(ids[None], **inputs.model_inputs())[0][reuse:]
    mx.eval(new_embeds)
    steps = generate_step(new_ids, model, max_tokens=max_tokens, sampler=sampler, logits_processors=processors,
                          prompt_cache=cache.cache, prefill_step_size=prefill_step_size,
                          prompt_progress_callback=(lambda a, b: progress(reuse + a, reuse + b)) if progress else None,
                          input_embeddings=new_embeds)
    # generate_step feeds each token to the model before yielding it, so after every yield the
    # state holds exactly the prompt and the tokens yielded so far.
    cache.tokens = list(ids_list)
    prompt_tps = gen_start = None
    n = 0
    finish = None
    for n, (token, _) in enumerate(steps, start=1):
        now = time.perf_counter()
        if prompt_tps is None:
            prompt_tps = len(new_ids) / max(now - tic, 1e-9)
            gen_start = now
        cache.tokens.append(token)
        if token in eos_token_ids:
            finish = "stop"
        elif n >= max_tokens:
            finish = "length"
        elif cancel is not None and cancel():
            finish = "cancelled"
        yield token, n, prompt_tps, n / max(time.perf_counter() - gen_start, 1e-9), finish
        if finish:
            break


def has_vision_tokens(model, ids: List[int]) -> bool:
    return bool({model.config.image_token_id, model.config.video_token_id} & set(ids))


def stream_generate(model, processor, messages, *, max_tokens: int = 256, prompt_cache: Optional[PromptCache] = None,
                    cancel=None, progress=None, seed=None, **options) -> Iterator[GenerationResponse]:
    """Process ``messages`` (transformers chat form) and stream the answer.

    ``options`` are sampling parameters (``temperature``, ``top_p``, ``top_k``, ``min_p``,
    ``repetition_penalty``; defaults from ``generation_config.json``) and processor options
    (``max_slice_nums``, ``downsample_mode``, ``max_num_frames``, ``enable_thinking``, ...).
    """
    sampling_keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
    params = {**generation_defaults(processor), **{k: options.pop(k) for k in sampling_keys if k in options}}
    inputs = processor(messages, **options)
    detokenizer = processor.tokenizer.detokenizer
    detokenizer.reset()
    eos = set(processor.eos_token_ids)
    for token, n, ptps, gtps, finish in stream_tokens(
        model, inputs, prompt_cache=prompt_cache, max_tokens=max_tokens, seed=seed, eos_token_ids=eos,
        cancel=cancel, progress=progress, **params,
    ):
        if token not in eos:
            detokenizer.add_token(token)
        if finish:
            detokenizer.finalize()
        yield GenerationResponse(detokenizer.last_segment, token, inputs.num_tokens, ptps, n, gtps,
                                 mx.get_peak_memory() / 1e9, finish)


def generate(model, processor, messages, **kwargs) -> str:
    """The whole answer as one string (see ``stream_generate`` for the options)."""
    return "".join(r.text for r in stream_generate(model, processor, messages, **kwargs))
