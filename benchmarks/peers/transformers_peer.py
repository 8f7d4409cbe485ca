"""transformers' MiniCPM-V 4.6 or 4.7 (the reference) on torch CPU, on the comparison's rows (see
../measure.py), in our own environment (torch 2.13 CPU, transformers 5.24).

    python transformers_peer.py --model OUT/hf-random-real-config --media OUT/media --dtype float32

transformers' video processor needs torchvision, which does not install beside this torch
(spec §15), so the model gets our processor's tensors (exact to the reference's for images)
and the processing is left out of its times: that favours transformers, never us. Peak memory
is the process's peak RSS over the row (reset through /proc/self/clear_refs).
"""

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mlx_minicpmv  # noqa: E402,F401  (first: picks the BLAS before mlx.core loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForImageTextToText  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from measure import DECODE_PROMPT_TOKENS, DECODE_TOKENS, MEDIA, QUESTION, arguments, measure, text_ids  # noqa: E402
from mlx_minicpmv.processing.processor import Processor  # noqa: E402
from rss import peak_rss_gb  # noqa: E402


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Clock(BaseStreamer):
    """The time of each ``put``: the prompt first, then each new token."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def torch_inputs(inputs, dtype, config):
    ids = np.array(inputs.input_ids)
    kw = dict(input_ids=torch.from_numpy(ids).long(), downsample_mode=inputs.downsample_mode)
    if config.model_type == "minicpmv4_7":  # its processor's token types, which its canvas positions need
        types = np.where(ids == config.image_token_id, 1, np.where(ids == config.video_token_id, 2, 0))
        kw["mm_token_type_ids"] = torch.from_numpy(types)
    for name in ("pixel_values", "target_sizes", "pixel_values_videos", "target_sizes_videos"):
        value = getattr(inputs, name)
        if value is not None:
            t = torch.from_numpy(np.array(value))
            kw[name] = t.to(dtype) if name.startswith("pixel") else t
    return kw


def main():
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    known, rest = extra.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    args = arguments(__doc__.splitlines()[0])
    dtype = getattr(torch, known.dtype)
    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).eval()
    processor = Processor.from_pretrained(Path(args.model))
    media = Path(args.media)

    def generate(kw, tokens):
        clock = Clock()
        reset_peak_rss()
        with torch.no_grad():
            model.generate(**kw, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                           eos_token_id=None, pad_token_id=0, streamer=clock)
        return clock.times, peak_rss_gb()

    text = processor("x")
    text.input_ids = np.array([text_ids(media)])
    text_kw = torch_inputs(text, dtype, model.config)

    def prefill():
        start = time.perf_counter()
        times, peak = generate(text_kw, 1)
        return text_kw["input_ids"].shape[1] / (times[-1] - start), peak, dict(prompt_tokens=text_kw["input_ids"].shape[1])

    short = {k: v[:, :DECODE_PROMPT_TOKENS] if k in ("input_ids", "mm_token_type_ids") else v for k, v in text_kw.items()}

    def decode():
        times, peak = generate(short, DECODE_TOKENS + 1)
        return DECODE_TOKENS / (times[-1] - times[1]), peak, dict(tokens=len(times) - 1)

    def with_media(row):
        kind = "video" if row == "video60" else "image"
        inputs = processor([{"role": "user", "content": [{"type": kind, kind: str(media / MEDIA[row])},
                                                          {"type": "text", "text": QUESTION}]}])
        kw = torch_inputs(inputs, dtype, model.config)

        def run():
            start = time.perf_counter()
            times, peak = generate(kw, 1)
            return times[-1] - start, peak, dict(prompt_tokens=kw["input_ids"].shape[1])

        return run

    rows = {"prefill": prefill, "decode": decode, **{r: with_media(r) for r in MEDIA}}
    for row in args.rows:
        if row in rows:  # no follow-up row: generate() keeps no chat state between calls
            measure(row, rows[row], args.repeats, args.row_budget_s, args.warmup)


if __name__ == "__main__":
    main()
