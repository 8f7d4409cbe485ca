"""Speed and memory of mlx-minicpmv on a full-size random checkpoint (real config).

    python benchmarks/full_checkpoint.py          # once: builds and converts the checkpoints
    python benchmarks/bench.py [--variants float32 bfloat16 8bit 4bit] [--repeats 3]

Each row is the median of ``--repeats`` runs, always generating a fixed number of tokens
(eos ignored). It also measures this machine's memory bandwidth and the fp32 decode roofline
it implies (bytes of weights read per token). Runs unchanged on a Mac (Metal) and on Linux.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_minicpmv  # noqa: E402  (first: picks the BLAS before mlx.core loads)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlx_minicpmv import PromptCache, load  # noqa: E402
from mlx_minicpmv.generate import feature_cache, stream_tokens  # noqa: E402
from tests.media import make_video, noise_image  # noqa: E402

OUT = ROOT / "benchmarks" / "out"


def median_of(fn, repeats):
    values = [fn() for _ in range(repeats)]
    return statistics.median(v[0] for v in values), max(v[1] for v in values)


def timed_prefill(model, inputs, cache=None):
    """Seconds to the first token (vision + prefill + first sample) and peak memory, cold:
    the vision feature cache is emptied first."""
    feature_cache.items.clear()
    mx.reset_peak_memory()
    tic = time.perf_counter()
    for _ in stream_tokens(model, inputs, prompt_cache=cache, max_tokens=1, temperature=0.0):
        break
    return time.perf_counter() - tic, mx.get_peak_memory() / 1e9


def decode_tps(model, inputs, n=128):
    mx.reset_peak_memory()
    tic = None
    for token, _, i, *_ in stream_tokens(model, inputs, max_tokens=n + 1, temperature=0.0, eos_token_ids=()):
        if i == 1:
            tic = time.perf_counter()
    return n / (time.perf_counter() - tic), mx.get_peak_memory() / 1e9


def bandwidth_gbs():
    """Read bandwidth, GB/s: the best of numpy summing 512 MB (MLX's own CPU reduction reads
    at a third of that here, so it would understate what a matmul can stream)."""
    x = np.ones(128 * 1024 * 1024, dtype=np.float32)
    best = 0
    for _ in range(5):
        tic = time.perf_counter()
        x.sum()
        best = max(best, x.nbytes / (time.perf_counter() - tic) / 1e9)
    return best


def weight_bytes_per_token(model):
    """Bytes of weights one decode step reads: everything but the vision tower and merger
    (the tied embedding is read once, as the LM head)."""
    params = tree_flatten(model.language_model.parameters())
    return sum(v.nbytes for _, v in params)


def inputs_for(processor, media, kind):
    user = lambda *items: [{"role": "user", "content": list(items)}]
    text = {"type": "text", "text": "Describe what you see in detail."}
    if kind == "text512":
        words = ("the quick brown fox jumps over the lazy dog and then " * 200).split()
        out = processor(" ".join(words))
        ids = out.input_ids[:, :512]
        out.input_ids = ids
        return out
    if kind == "image448":
        return processor(user({"type": "image", "image": str(media["448"])}, text))
    if kind == "image1344":
        return processor(user({"type": "image", "image": str(media["1344"])}, text))
    if kind == "video60":
        return processor(user({"type": "video", "video": str(media["video"])}, text))
    raise ValueError(kind)


def make_media(root: Path):
    media = {"448": root / "448.png", "1344": root / "1344.png", "video": root / "v720.mp4"}
    if not media["448"].exists():
        noise_image(448, 448, seed=1).save(media["448"])
        noise_image(1344, 1008, seed=2).save(media["1344"])
        make_video(media["video"], seconds=60, fps=10, width=1280, height=720, codec="libx264", scenes=(0, 1, 2))
    return media


class Row(dict):
    """A result row that prints each figure as soon as it is measured (long CPU runs)."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        print(f"  {self.name} {key} = {value:.3f}", flush=True)


def bench_variant(path, media, repeats):
    model, processor = load(path)
    row = Row(Path(path).name)
    text = inputs_for(processor, media, "text512")
    row["prefill_tps"], row["prefill_peak_gb"] = median_of(
        lambda: (lambda s, m: (512 / s, m))(*timed_prefill(model, text)), repeats)
    row["decode_tps"], row["decode_peak_gb"] = median_of(lambda: decode_tps(model, text), repeats)
    for kind in ("image448", "image1344", "video60"):
        inputs = inputs_for(processor, media, kind)  # decoding and slicing are outside the timing
        row[f"ttft_{kind}_s"], row[f"ttft_{kind}_peak_gb"] = median_of(lambda: timed_prefill(model, inputs), repeats)
    # Follow-up question in the same video chat: only its own tokens are processed.
    video = inputs_for(processor, media, "video60")

    def follow_up():
        cache = PromptCache.new(model)
        for _ in stream_tokens(model, video, prompt_cache=cache, max_tokens=8, temperature=0.0):
            pass
        follow = processor("And what colour is it?", **cache.continuation(processor))
        return timed_prefill(model, follow, cache)

    row["ttft_followup_s"], row["ttft_followup_peak_gb"] = median_of(follow_up, repeats)
    row["weights_gb_per_token"] = weight_bytes_per_token(model) / 1e9
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="*", default=["float32", "bfloat16", "8bit", "4bit"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    out = Path(args.out)
    media = make_media(out)
    bw = bandwidth_gbs()
    print(f"device {mx.default_device()}, BLAS {mlx_minicpmv.blas.loaded}, memory bandwidth {bw:.1f} GB/s")
    results = {}
    for name in args.variants:
        results[name] = bench_variant(out / f"mlx-{name}", media, args.repeats)
        r = results[name]
        r["roofline_tps"] = bw / r["weights_gb_per_token"]
        print(json.dumps({name: {k: round(v, 3) for k, v in r.items()}}), flush=True)
    cols = ["prefill_tps", "decode_tps", "roofline_tps", "ttft_image448_s", "ttft_image1344_s", "ttft_video60_s",
            "ttft_followup_s", "decode_peak_gb", "ttft_video60_peak_gb"]
    print("\n" + "variant".ljust(10) + "".join(c.rjust(20) for c in cols))
    for name, r in results.items():
        print(name.ljust(10) + "".join(f"{r[c]:20.3f}" for c in cols))
    (out / "bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
