"""``stream_generate`` / ``generate``: chat messages in, text out, token by token.

The token loop is mlx-lm's ``generate_step`` (chunked prefill, ``mx.async_eval`` overlap,
samplers and logits processors); this module adds what a vision-language chat needs around
it: the processor, the vision splice before prefill, a prompt cache continued turn after
turn, stop ids from ``generation_config.json``, cancellation between tokens, a context check.

Run ``python -m mlx_minicpmv.generate --help`` for the command line.
"""

import argparse
import hashlib
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_logits_processors, make_sampler

PREFILL_STEP = 512
END_OF_TURN = "<|im_end|>"
FEATURE_CACHE_SIZE = 8


class FeatureCache:
    """Vision features by content hash of the pixels (and grid and mode), least recently used
    dropped first: asking again about the same image or video (regenerate, edit and resend,
    a new chat) encodes nothing."""

    def __init__(self, size: int = FEATURE_CACHE_SIZE):
        self.size, self.items = size, OrderedDict()

    @staticmethod
    def key(pixel_values, target_sizes, mode) -> str:
        h = hashlib.sha1(np.asarray(pixel_values).tobytes())
        h.update(np.asarray(target_sizes).tobytes() + str(mode).encode())
        return h.hexdigest()

    def features(self, model, pixel_values, target_sizes, mode):
        if pixel_values is None:
            return None
        key = self.key(pixel_values, target_sizes, mode)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = model.encode_slices(pixel_values, target_sizes, mode)
        mx.eval(value)
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


feature_cache = FeatureCache()


class ContextError(ValueError):
    """The prompt (plus the answer asked for) does not fit the model's context."""


@dataclass
class GenerationResponse:
    """One streamed step; ``finish_reason`` ("stop", "length", "cancelled") on the last one."""

    text: str
    token: int
    logprobs: mx.array
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float
    finish_reason: Optional[str] = None


@dataclass
class PromptCache:
    """The model state after a conversation's ``tokens``, continued turn after turn.

    Pass the same object to every ``stream_generate`` call of a conversation with only the new
    messages (mlx-lm's convention): each turn then processes only its own tokens. The DeltaNet
    recurrent state cannot be trimmed, so the cache always ends exactly after the last answer.
    """

    cache: list
    tokens: List[int] = field(default_factory=list)
    images: int = 0
    videos: int = 0

    @classmethod
    def new(cls, model) -> "PromptCache":
        return cls(model.make_cache())

    def continuation(self, processor) -> dict:
        """Processor options that render new messages as the continuation of this cache."""
        if not self.tokens:
            return {}
        end = processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        # An answer cut short (length, Stop) has no end-of-turn token yet: close it first.
        prefix = "\n" if self.tokens[-1] == end else END_OF_TURN + "\n"
        return dict(prefix=prefix, first_image_id=self.images, first_video_id=self.videos)


def sampling(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0):
    """mlx-lm's sampler and logits processors for the reference's sampling parameters."""
    sampler = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0, top_k=top_k, min_p=min_p)
    processors = make_logits_processors(repetition_penalty=repetition_penalty if repetition_penalty != 1.0 else None)
    return sampler, processors


def generation_defaults(processor) -> dict:
    """Sampling defaults of the checkpoint's ``generation_config.json``."""
    g = processor.generation_config
    return dict(temperature=g.get("temperature", 0.7) if g.get("do_sample", True) else 0.0,
                top_p=g.get("top_p", 1.0), top_k=g.get("top_k", 0) or 0,
                repetition_penalty=g.get("repetition_penalty", 1.0))


def stream_tokens(model, inputs, *, prompt_cache: Optional[PromptCache] = None, max_tokens=256,
                  temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, seed=None,
                  eos_token_ids=(), cancel: Optional[Callable[[], bool]] = None,
                  progress: Optional[Callable[[int, int], None]] = None,
                  prefill_step_size: int = PREFILL_STEP) -> Iterator[tuple]:
    """Append ``inputs`` to ``prompt_cache`` and generate: yields (token, logprobs, n, prompt_tps,
    generation_tps, finish_reason). After every yield the cache holds exactly what came before,
    the prompt, and the tokens yielded (generate_step feeds a token to the model before it
    yields it)."""
    cache = prompt_cache if prompt_cache is not None else PromptCache.new(model)
    ids = inputs.input_ids.reshape(-1)
    n_ctx = model.config.text_config.max_position_embeddings
    if len(cache.tokens) + ids.size + max(max_tokens, 0) > n_ctx:
        raise ContextError(
            f"the conversation would need {len(cache.tokens) + ids.size} prompt tokens plus {max_tokens} for the "
            f"answer, but the model's context is {n_ctx}; use fewer video frames or images, shorter text, "
            "fewer max tokens, or start a new chat"
        )
    if seed is not None:
        mx.random.seed(seed)
    sampler, processors = sampling(temperature, top_p, top_k, min_p, repetition_penalty)

    tic = time.perf_counter()
    mode = inputs.downsample_mode
    embeds = model.embed(
        ids[None],
        image_features=feature_cache.features(model, inputs.pixel_values, inputs.target_sizes, mode),
        video_features=(inputs.video_features if inputs.video_features is not None else
                        feature_cache.features(model, inputs.pixel_values_videos, inputs.target_sizes_videos, mode)),
    )[0]
    mx.eval(embeds)  # the vision tower runs once here, not once per prefill chunk
    steps = generate_step(
        ids, model, max_tokens=max_tokens, sampler=sampler, logits_processors=processors,
        prompt_cache=cache.cache, prefill_step_size=prefill_step_size, input_embeddings=embeds,
        prompt_progress_callback=progress,
    )
    cache.tokens += ids.tolist()
    cache.images += inputs.images
    cache.videos += inputs.videos
    prompt_tps = gen_start = None
    for n, (token, logprobs) in enumerate(steps, start=1):
        now = time.perf_counter()
        if prompt_tps is None:
            prompt_tps, gen_start = ids.size / max(now - tic, 1e-9), now
        cache.tokens.append(token)
        finish = ("stop" if token in eos_token_ids else "length" if n >= max_tokens
                  else "cancelled" if cancel is not None and cancel() else None)
        yield token, logprobs, n, prompt_tps, n / max(time.perf_counter() - gen_start, 1e-9), finish
        if finish:
            return


def stream_generate(model, processor, messages, *, max_tokens: int = 256,
                    prompt_cache: Optional[PromptCache] = None, cancel=None, progress=None, seed=None,
                    **options) -> Iterator[GenerationResponse]:
    """Process ``messages`` (transformers chat form) and stream the answer.

    ``options`` are sampling parameters (``temperature``, ``top_p``, ``top_k``, ``min_p``,
    ``repetition_penalty``; defaults from ``generation_config.json``) and processor options
    (``max_slice_nums``, ``downsample_mode``, ``max_num_frames``, ``enable_thinking``, ...).
    With a ``prompt_cache`` that holds earlier turns, ``messages`` are only the new ones.
    ``cancel()`` is checked between tokens; ``progress(done, total)`` reports the prefill.
    """
    sampling_keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
    params = {**generation_defaults(processor), **{k: options.pop(k) for k in sampling_keys if k in options}}
    if prompt_cache is not None:
        options.update(prompt_cache.continuation(processor))
    inputs = processor(messages, **options)
    detokenizer = processor.tokenizer.detokenizer
    detokenizer.reset()
    eos = set(processor.eos_token_ids)
    for token, logprobs, n, ptps, gtps, finish in stream_tokens(
        model, inputs, prompt_cache=prompt_cache, max_tokens=max_tokens, seed=seed, eos_token_ids=eos,
        cancel=cancel, progress=progress, **params,
    ):
        if token not in eos:
            detokenizer.add_token(token)
        if finish:
            detokenizer.finalize()
        yield GenerationResponse(detokenizer.last_segment, token, logprobs, inputs.num_tokens, ptps, n, gtps,
                                 mx.get_peak_memory() / 1e9, finish)


def generate(model, processor, messages, **kwargs) -> str:
    """The whole answer as one string (see ``stream_generate`` for the options)."""
    return "".join(r.text for r in stream_generate(model, processor, messages, **kwargs))


# -- command line ------------------------------------------------------------------------------
def main(argv=None) -> int:
    from .cli import add_sampling_args, options_from_args, report_errors, user_message

    parser = argparse.ArgumentParser(description="Ask MiniCPM-V 4.6 about images and videos.")
    add_sampling_args(parser)
    parser.add_argument("--image", action="append", default=[], help="An image file (repeatable).")
    parser.add_argument("--video", action="append", default=[], help="A video file (repeatable).")
    parser.add_argument("--prompt", required=True, help="The question or instruction.")
    args = parser.parse_args(argv)

    def run() -> int:
        from .loading import load

        model, processor = load(args.model)
        last = None
        for last in stream_generate(model, processor, [user_message(args.prompt, args.image, args.video)],
                                    **options_from_args(args)):
            print(last.text, end="", flush=True)
        print()
        print("=" * 10, file=sys.stderr)
        print(f"Prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tokens-per-sec\n"
              f"Generation: {last.generation_tokens} tokens, {last.generation_tps:.1f} tokens-per-sec\n"
              f"Peak memory: {last.peak_memory:.2f} GB", file=sys.stderr)
        return 0

    return report_errors(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
