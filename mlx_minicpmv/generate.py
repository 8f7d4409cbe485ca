"""``stream_generate`` / ``generate``: chat messages in, text out, token by token.

The token loop is mlx-lm's ``generate_step`` (chunked prefill, ``mx.async_eval`` overlap,
samplers and logits processors; ``generate_step`` below is its body for this model); this
module adds what a vision-language chat needs around it: the processor, the vision splice
before prefill, a prompt cache continued turn after turn, stop ids from
``generation_config.json``, cancellation between tokens, a context check.

Run ``python -m mlx_minicpmv.generate --help`` for the command line.
"""

import argparse
import hashlib
import sys
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream
from mlx_lm.sample_utils import make_logits_processors, make_sampler

from .errors import ContextError
from .options import check_all
from .threads import note_current_thread

PREFILL_STEP = 512
END_OF_TURN = "<|im_end|>"
FEATURE_CACHE_SIZE = 8


class FeatureCache:
    """Vision features by model and by content hash of the pixels (and grid and mode), least
    recently used dropped first: asking again about the same image or video (regenerate, edit
    and resend, a new chat) encodes nothing.

    Features belong to the model that made them: another model asked about the same picture
    encodes it itself, and a model's features go when the model is garbage collected (or on
    ``forget``), so an unloaded model's features neither linger nor get reused.
    """

    def __init__(self, size: int = FEATURE_CACHE_SIZE):
        self.size, self.lock = size, threading.Lock()
        self._models: Dict[int, "OrderedDict[str, mx.array]"] = {}  # id(model) -> content key -> features

    @staticmethod
    def key(pixel_values, target_sizes, mode) -> str:
        h = hashlib.sha1(np.asarray(pixel_values).tobytes())
        h.update(np.asarray(target_sizes).tobytes() + str(mode).encode())
        return h.hexdigest()

    def features(self, model, pixel_values, target_sizes, mode):
        if pixel_values is None:
            return None
        key = self.key(pixel_values, target_sizes, mode)
        with self.lock:  # threads share it: check-then-move must not race an eviction
            entries = self._entries(model)
            if key in entries:
                entries.move_to_end(key)
                return entries[key]
        value = model.encode_slices(pixel_values, target_sizes, mode)
        mx.eval(value)
        with self.lock:
            entries = self._entries(model)
            entries[key] = value
            while len(entries) > self.size:
                entries.popitem(last=False)
        return value

    def _entries(self, model) -> "OrderedDict[str, mx.array]":
        entries = self._models.get(id(model))
        if entries is None:
            # Dropped when the model is collected, by a plain dict pop without the lock (the
            # collector may run in a thread that holds it); an id is reused only after that.
            entries = self._models[id(model)] = OrderedDict()
            weakref.finalize(model, self._models.pop, id(model), None)
        return entries

    def held_for(self, model) -> int:
        """How many encoded images and videos are kept for ``model``."""
        return len(self._models.get(id(model), ()))

    def __len__(self) -> int:
        return sum(len(entries) for entries in list(self._models.values()))

    def forget(self, model) -> None:
        """Drop ``model``'s features now (a model being unloaded)."""
        self._models.pop(id(model), None)

    def clear(self) -> None:
        self._models.clear()


feature_cache = FeatureCache()


@dataclass
class TokenStep:
    """One token of ``stream_tokens``; ``finish_reason`` ("stop", "length", "cancelled") on the last."""

    token: int
    logprobs: mx.array
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    finish_reason: Optional[str] = None


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
    warnings: List[str] = field(default_factory=list)  # about the media as read (a short video)


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


def generate_step(prompt: mx.array, model, input_embeddings: mx.array, *, prompt_cache: List, sampler,
                  logits_processors: List, max_tokens: int, prefill_step_size: int,
                  prompt_progress_callback: Optional[Callable[[int, int], None]] = None) -> Iterator:
    """(token, log-probabilities) after (token, log-probabilities): mlx-lm's ``generate_step`` for
    a prompt given as embeddings, step for step (the prompt but its last token in chunks, then
    each token's step queued before the one before it is yielded), with the log-probabilities'
    ``logsumexp`` from the model: on the CPU the seam's kernel, where MLX's scalar exp took 3 ms
    of a decoded token over the 248k-token vocabulary, and mlx-lm's loop has no hook for it."""
    progress = prompt_progress_callback or (lambda *_: None)
    tokens = None

    def step(input_tokens: mx.array, embeddings: Optional[mx.array] = None):
        nonlocal tokens
        logits = model(input_tokens[None], cache=prompt_cache,
                       input_embeddings=None if embeddings is None else embeddings[None])[:, -1, :]
        if logits_processors and len(input_tokens) > 0:
            tokens = mx.concat([tokens, input_tokens]) if tokens is not None else input_tokens
            for processor in logits_processors:
                logits = processor(tokens, logits)
        logprobs = logits - model.logsumexp(logits, axis=-1, keepdims=True)
        return sampler(logprobs), logprobs.squeeze(0)

    with mx.stream(generation_stream):
        total, done = len(input_embeddings), 0
        progress(done, total)
        while total - done > 1:
            n = min(prefill_step_size, total - done - 1)
            model(prompt[:n][None], cache=prompt_cache, input_embeddings=input_embeddings[:n][None])
            mx.eval([c.state for c in prompt_cache])
            if logits_processors:
                tokens = mx.concat([tokens, prompt[:n]]) if tokens is not None else prompt[:n]
            done += n
            progress(done, total)
            prompt, input_embeddings = prompt[n:], input_embeddings[n:]
            mx.clear_cache()

        y, logprobs = step(prompt, input_embeddings)
        mx.async_eval(y, logprobs)
        n = 0
        while True:
            if n != max_tokens:
                next_y, next_logprobs = step(y)
                mx.async_eval(next_y, next_logprobs)
            if n == 0:
                mx.eval(y)
                progress(total, total)
            if n == max_tokens:
                break
            yield y.item(), logprobs
            if n % 256 == 0:
                mx.clear_cache()
            y, logprobs = next_y, next_logprobs
            n += 1


def sampling(temperature, top_p, top_k, min_p, repetition_penalty):
    """mlx-lm's sampler and logits processors for the reference's sampling parameters (no defaults
    here: ``stream_tokens`` and the checkpoint's generation config own them)."""
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
                  prefill_step_size: int = PREFILL_STEP) -> Iterator[TokenStep]:
    """Append ``inputs`` to ``prompt_cache`` and generate, one ``TokenStep`` a token. After every
    yield the cache holds exactly what came before, the prompt, and the tokens yielded
    (generate_step feeds a token to the model before it yields it)."""
    check_all(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
              repetition_penalty=repetition_penalty, seed=seed)
    note_current_thread()  # see threads.py: this thread must end before the interpreter does
    cache = prompt_cache if prompt_cache is not None else PromptCache.new(model)
    ids = inputs.input_ids.reshape(-1)
    n_ctx = model.config.text_config.max_position_embeddings
    if len(cache.tokens) + ids.size + max_tokens > n_ctx:
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
    # 4.7: where the prompt's images and videos sit, continuing the conversation in the cache.
    model.begin_prompt(cache.cache, ids[None], inputs.target_sizes, inputs.target_sizes_videos, mode)
    steps = generate_step(
        ids, model, embeds, max_tokens=max_tokens, sampler=sampler, logits_processors=processors,
        prompt_cache=cache.cache, prefill_step_size=prefill_step_size, prompt_progress_callback=progress,
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
        yield TokenStep(token, logprobs, n, prompt_tps, n / max(time.perf_counter() - gen_start, 1e-9), finish)
        if finish:
            return


def stream_generate(model, processor, messages, *, max_tokens: int = 256,
                    prompt_cache: Optional[PromptCache] = None, cancel=None, progress=None, seed=None,
                    **options) -> Iterator[GenerationResponse]:
    """Process ``messages`` (transformers chat form) and stream the answer.

    Threads: one model may serve several threads at once (each call has its own state and
    detokenizer; the vision-feature and decoded-video caches are locked), but a ``PromptCache``
    belongs to one conversation and must not be used by two calls at the same time. Threads
    that ran generation are waited for at interpreter exit (see ``threads.py``).

    ``options`` are sampling parameters (``temperature``, ``top_p``, ``top_k``, ``min_p``,
    ``repetition_penalty``; defaults from ``generation_config.json``) and processor options
    (``max_slice_nums``, ``downsample_mode``, ``max_num_frames``, ``enable_thinking``, ...).
    With a ``prompt_cache`` that holds earlier turns, ``messages`` are only the new ones.
    ``cancel()`` is checked between tokens; ``progress(done, total)`` reports the prefill.
    An answer is at most ``max_tokens`` long: 256 unless given, as in mlx-lm.
    """
    sampling_keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
    chosen = {k: options.pop(k) for k in sampling_keys if k in options}
    check_all(max_tokens=max_tokens, seed=seed, **chosen)  # before any media is decoded
    params = {**generation_defaults(processor), **{k: v for k, v in chosen.items() if v is not None}}
    if prompt_cache is not None:
        options.update(prompt_cache.continuation(processor))
    inputs = processor(messages, **options)
    detokenizer = processor.tokenizer.detokenizer
    detokenizer.reset()
    eos = set(processor.eos_token_ids)
    for step in stream_tokens(
        model, inputs, prompt_cache=prompt_cache, max_tokens=max_tokens, seed=seed, eos_token_ids=eos,
        cancel=cancel, progress=progress, **params,
    ):
        if step.token not in eos:
            detokenizer.add_token(step.token)
        if step.finish_reason:
            detokenizer.finalize()
        yield GenerationResponse(detokenizer.last_segment, step.token, step.logprobs, inputs.num_tokens,
                                 step.prompt_tps, step.generation_tokens, step.generation_tps,
                                 mx.get_peak_memory() / 1e9, step.finish_reason, inputs.warnings)


def generate(model, processor, messages, **kwargs) -> str:
    """The whole answer as one string (see ``stream_generate`` for the options)."""
    return "".join(r.text for r in stream_generate(model, processor, messages, **kwargs))


# -- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .cli import add_media_args, add_sampling_args

    parser = argparse.ArgumentParser(description="Ask MiniCPM-V 4.6 or 4.7 about images and videos.")
    add_sampling_args(parser)
    add_media_args(parser)
    parser.add_argument("--image", action="append", default=[], help="An image file (repeatable).")
    parser.add_argument("--video", action="append", default=[], help="A video file (repeatable).")
    parser.add_argument("--prompt", required=True, help="The question or instruction; - reads it from standard input.")
    parser.add_argument("--json", action="store_true",
                        help="Print one JSON object (answer, token counts, speeds, peak memory) instead of streaming.")
    return parser


def main(argv=None) -> int:
    """``python -m mlx_minicpmv generate``; see ``--help``."""
    import json

    from .cli import options_from_args, read_prompt, report_errors, system_message, user_message

    args = build_parser().parse_args(argv)

    def run() -> int:
        from .loading import load

        prompt = read_prompt(args.prompt)
        messages = system_message(args.system) + [user_message(prompt, args.image, args.video)]
        model, processor = load(args.model, adapter_path=args.adapter_path)
        text, last = [], None
        for last in stream_generate(model, processor, messages, **options_from_args(args)):
            text.append(last.text)
            if not args.json:
                print(last.text, end="", flush=True)
        if args.json:
            print(json.dumps(dict(
                text="".join(text), finish_reason=last.finish_reason, prompt_tokens=last.prompt_tokens,
                generation_tokens=last.generation_tokens, prompt_tps=round(last.prompt_tps, 3),
                generation_tps=round(last.generation_tps, 3), peak_memory_gb=round(last.peak_memory, 3),
                warnings=last.warnings), ensure_ascii=False))
        else:
            print()
            print("=" * 10, file=sys.stderr)
            print(f"Prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tokens-per-sec\n"
                  f"Generation: {last.generation_tokens} tokens, {last.generation_tps:.1f} tokens-per-sec\n"
                  f"Peak memory: {last.peak_memory:.2f} GB", file=sys.stderr)
        for warning in last.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0

    return report_errors(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
