"""The same rows as bench.py, measured with mlx-vlm's MiniCPM-V 4.6 (its own converter).

Runs inside mlx-vlm's own environment (bench_peers.py makes it); prints one JSON line per variant.
    python mlx_vlm_peer.py HF_CHECKPOINT OUT_DIR MEDIA_DIR VARIANT [REPEATS]
"""

import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Same BLAS as ours (see mlx_minicpmv/blas.py), loaded before mlx.core.
if sys.platform == "linux" and os.environ.get("MLX_MINICPMV_BLAS", "") != "off":
    for name in ("libopenblas.so.0", "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"):
        try:
            ctypes.CDLL(name, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
            break
        except OSError:
            pass

import mlx.core as mx  # noqa: E402
from mlx_vlm import apply_chat_template, convert, load, stream_generate  # noqa: E402

VARIANTS = {
    "float32": dict(dtype="float32"),
    "bfloat16": dict(dtype="bfloat16"),
    "8bit": dict(dtype="bfloat16", quantize=True, q_bits=8, q_group_size=64),
    "4bit": dict(dtype="bfloat16", quantize=True, q_bits=4, q_group_size=64),
}
TEXT = " ".join(("the quick brown fox jumps over the lazy dog and then " * 200).split()[:420])


def first_token_time(model, processor, prompt, **media):
    mx.reset_peak_memory()
    tic = time.perf_counter()
    for r in stream_generate(model, processor, prompt, max_tokens=1, temperature=0.0, **media):
        break
    return time.perf_counter() - tic, mx.get_peak_memory() / 1e9, r.prompt_tokens


def main():
    hf, out, media, variant = sys.argv[1:5]
    repeats = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    target = Path(out) / f"vlm-{variant}"
    tic = time.perf_counter()
    if not target.exists():
        convert(hf, str(target), **VARIANTS[variant])
    convert_s = time.perf_counter() - tic
    model, processor = load(str(target))
    config = model.config
    row = {"convert_s": convert_s, "size_gb": sum(f.stat().st_size for f in target.glob("*.safetensors")) / 1e9}

    def med(fn):
        values = [fn() for _ in range(repeats)]
        return statistics.median(v[0] for v in values), max(v[1] for v in values)

    text = apply_chat_template(processor, config, TEXT, num_images=0)
    t, peak, n = first_token_time(model, processor, text)
    row["prefill_tokens"] = n
    row["prefill_tps"], row["prefill_peak_gb"] = med(lambda: (lambda t, p, n: (n / t, p))(*first_token_time(model, processor, text)))

    def decode():
        mx.reset_peak_memory()
        start = None
        for r in stream_generate(model, processor, text, max_tokens=129, temperature=0.0):
            if start is None:
                start = time.perf_counter()
        return (r.generation_tokens - 1) / (time.perf_counter() - start), mx.get_peak_memory() / 1e9

    row["decode_tps"], row["decode_peak_gb"] = med(decode)
    image_prompt = apply_chat_template(processor, config, "Describe what you see in detail.", num_images=1)
    for name, file in (("image448", "448.png"), ("image1344", "1344.png")):
        row[f"ttft_{name}_s"], row[f"ttft_{name}_peak_gb"] = med(
            lambda: first_token_time(model, processor, image_prompt, image=[str(Path(media) / file)])[:2])
    try:
        video_prompt = apply_chat_template(processor, config, "Describe what you see in detail.", video=str(Path(media) / "v720.mp4"))
        row["ttft_video60_s"], row["ttft_video60_peak_gb"] = med(
            lambda: first_token_time(model, processor, video_prompt, video=[str(Path(media) / "v720.mp4")])[:2])
    except Exception as e:  # report, do not hide: the table shows the failure
        row["video_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    print(json.dumps({variant: row}), flush=True)


if __name__ == "__main__":
    main()
