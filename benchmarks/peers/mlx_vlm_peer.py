"""mlx-vlm's MiniCPM-V 4.6 or 4.7 on the comparison's rows (see ../measure.py), in mlx-vlm's own
environment (compare.py makes it: the same MLX version and the same BLAS as ours).

    python mlx_vlm_peer.py --model OUT/vlm-float32 --media OUT/media

Times run from the files through mlx-vlm's ``stream_generate`` (its processing included, as
ours), eos ignored while decoding.
"""

import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load_our_blas():
    """The BLAS ours uses, by mlx_minicpmv/cpu/blas.py itself (standard library only; importing the
    package would need ours installed here), before mlx.core."""
    spec = importlib.util.spec_from_file_location("blas", Path(__file__).resolve().parents[2] / "mlx_minicpmv" / "cpu" / "blas.py")
    blas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blas)
    blas.load()


_load_our_blas()

import mlx.core as mx  # noqa: E402
import mlx_vlm.utils  # noqa: E402
from mlx_vlm import apply_chat_template, load, stream_generate  # noqa: E402

from measure import DECODE_PROMPT_TOKENS, DECODE_TOKENS, MEDIA, QUESTION, arguments, measure, text_ids  # noqa: E402

# A fixed number of tokens whatever the random model samples.
mlx_vlm.utils.StoppingCriteria.__call__ = lambda self, token: False


def main():
    args = arguments(__doc__.splitlines()[0])
    model, processor = load(args.model)
    # The random model samples ids past the tokenizer's last (the embedding is padded to
    # 248094 rows); mlx-vlm's detokenizer would raise on them, so they decode as token 0.
    tokenmap = getattr(processor.detokenizer, "tokenmap", None)
    if tokenmap is not None:
        tokenmap.extend(tokenmap[:1] * (model.config.text_config.vocab_size - len(tokenmap)))
    media = Path(args.media)
    ids = mx.array([text_ids(media)])

    def first(prompt="", **kw):
        mx.reset_peak_memory()
        tic = time.perf_counter()
        for r in stream_generate(model, processor, prompt, max_tokens=1, temperature=0.0, **kw):
            break
        return time.perf_counter() - tic, mx.get_peak_memory() / 1e9, dict(prompt_tokens=r.prompt_tokens)

    def prefill():
        s, peak, info = first(input_ids=ids)
        return info["prompt_tokens"] / s, peak, info

    def decode():
        mx.reset_peak_memory()
        start = None
        for r in stream_generate(model, processor, "", input_ids=ids[:, :DECODE_PROMPT_TOKENS], max_tokens=DECODE_TOKENS + 1, temperature=0.0):
            if start is None:
                start = time.perf_counter()
        return ((r.generation_tokens - 1) / (time.perf_counter() - start), mx.get_peak_memory() / 1e9,
                dict(tokens=r.generation_tokens))

    def with_media(row):
        file = str(media / MEDIA[row])
        if row == "video60":
            prompt = apply_chat_template(processor, model.config, QUESTION, video=file)
            return lambda: first(prompt, video=[file], fps=1.0)
        prompt = apply_chat_template(processor, model.config, QUESTION, num_images=1)
        return lambda: first(prompt, image=[file])

    rows = {"prefill": prefill, "decode": decode, **{r: with_media(r) for r in MEDIA}}
    for row in args.rows:
        if row in rows:  # no follow-up row: its stream_generate caches image features only, not video
            measure(row, rows[row], args.repeats, args.row_budget_s, args.warmup)


if __name__ == "__main__":
    main()
