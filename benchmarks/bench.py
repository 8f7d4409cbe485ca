"""mlx-minicpmv's rows of the comparison (benchmarks/compare.py runs it; see measure.py).

    python benchmarks/bench.py --model benchmarks/out/mlx-float32 --media benchmarks/out/media

Times run from the files, as a user waits: processing (decode, slicing) + vision + prefill +
the first sampled token, with the vision-feature and decoded-video caches emptied first.
Decoding always generates the fixed number of tokens (eos ignored).
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mlx_minicpmv  # noqa: E402  (first: picks the BLAS before mlx.core loads)
import mlx.core as mx  # noqa: E402

from measure import DECODE_PROMPT_TOKENS, DECODE_TOKENS, FOLLOW_UP, MEDIA, QUESTION, arguments, measure, text_ids, timed  # noqa: E402
from mlx_minicpmv import PromptCache, load  # noqa: E402
from mlx_minicpmv.generate import feature_cache, stream_tokens  # noqa: E402
from mlx_minicpmv.processing import video  # noqa: E402


def first_token(model, make_inputs, cache=None):
    """(seconds to the first token from the files, peak GB, info), cold caches."""
    feature_cache.clear()
    video.clear_cache()
    mx.reset_peak_memory()

    def run():
        inputs = make_inputs()
        for _ in stream_tokens(model, inputs, prompt_cache=cache, max_tokens=1, temperature=0.0):
            break
        return inputs

    seconds, inputs = timed(run)
    return seconds, mx.get_peak_memory() / 1e9, dict(prompt_tokens=int(inputs.input_ids.size))


def main():
    args = arguments(__doc__.splitlines()[0])
    model, processor = load(args.model)
    media = Path(args.media)
    ids = text_ids(media)

    def text_inputs(n=len(ids)):
        out = processor("x")
        out.input_ids = mx.array([ids[:n]])
        return out

    def media_inputs(row):
        kind = "video" if row == "video60" else "image"
        item = {"type": kind, kind: str(media / MEDIA[row])}
        return lambda: processor([{"role": "user", "content": [item, {"type": "text", "text": QUESTION}]}])

    def prefill():
        s, peak, info = first_token(model, text_inputs)
        return len(ids) / s, peak, info

    def decode():
        inputs = text_inputs(DECODE_PROMPT_TOKENS)
        mx.reset_peak_memory()
        start = None
        for step in stream_tokens(model, inputs, max_tokens=DECODE_TOKENS + 1, temperature=0.0):
            if step.generation_tokens == 1:  # the clock starts at the first token: what follows is decoding alone
                start = time.perf_counter()
        return DECODE_TOKENS / (time.perf_counter() - start), mx.get_peak_memory() / 1e9, dict(tokens=step.generation_tokens)

    def follow_up():
        cache = PromptCache.new(model)
        for _ in stream_tokens(model, media_inputs("video60")(), prompt_cache=cache, max_tokens=8, temperature=0.0):
            pass
        return first_token(model, lambda: processor(FOLLOW_UP, **cache.continuation(processor)), cache)

    rows = {"prefill": prefill, "decode": decode, "followup": follow_up}
    rows.update({r: (lambda r=r: first_token(model, media_inputs(r))) for r in MEDIA})
    for row in args.rows:
        measure(row, rows[row], args.repeats, args.row_budget_s, args.warmup)


if __name__ == "__main__":
    main()
