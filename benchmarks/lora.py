"""One LoRA training step, ours against transformers + PEFT on torch CPU and mlx-vlm 0.7.10's trainer:
seconds per step and peak memory.

    python benchmarks/lora.py                       # the full-size random checkpoint (built once, as full_checkpoint.py)
    python benchmarks/lora.py --hf-model DIR        # another HF checkpoint (a tiny one: tests/checkpoints.py)
    python benchmarks/lora.py --steps 3 --only image --impls mlx-vlm --checkpointing plain   # one part of the table

Batch 1: one 448x448 image with ~256 text tokens, and one 8-frame video (8 s at 1 fps) with a short
question; LoRA rank 8 (scale 20, PEFT's lora_alpha 160) on every linear layer of every decoder layer, the
tower frozen, the loss on the answer; each with and without gradient checkpointing. Every configuration
runs in a process of its own (peak RSS is the process's; ours also reports MLX's own peak); the first
step is a warm-up, the rest are timed. Ours runs the command's own pieces (``tuner.lora.load_for_training``,
``tuner.data``, ``tuner.trainer``) on the portable path in fp32; transformers runs the same ids, pixels and
mask through its model in fp32 with PEFT. mlx-vlm runs its own trainer (peers/mlx_vlm_lora_peer.py)
in its own environment (compare.py's venv-vlm: the same MLX and BLAS) on its own conversion, with the
same conversation as a row of its dataset format; it takes images only, so it has no video rows.

Each run adds its figures to OUT/lora.json (with the date, the commit and the load average when that
configuration started), so that the table can be made in parts (``--impls``, ``--only``,
``--checkpointing``) and printed whole from what has been measured (``--table``). Seconds per step are
the median of the timed steps.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rss import peak_rss_gb  # noqa: E402

RANK, SCALE = 8, 20.0
IMPLS = ("ours", "transformers", "mlx-vlm")
WORDS = ("the quick brown fox jumps over the lazy dog while a cat sits on a red sofa near the window and "
         "a person walks into a kitchen ").split()


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def make_data(out: Path, tokenizer) -> dict:
    """Two data folders: an image question of ~256 text tokens, and an 8-frame video question."""
    from tests.media import make_video, noise_image

    folders = {}
    text = " ".join(WORDS[i % len(WORDS)] for i in range(400))
    ids = tokenizer.encode(text)[:200]
    question, answer = tokenizer.decode(ids[:200]), tokenizer.decode(tokenizer.encode(text)[200:256])
    for kind in ("image", "video"):
        folder = out / f"lora-{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "image":
            noise_image(448, 448, seed=1).save(folder / "media.png")
            part = {"type": "image", "image": "media.png"}
            user = [part, {"type": "text", "text": question}]
        else:
            make_video(folder / "media.mp4", seconds=8, fps=4, width=448, height=448)
            user = [{"type": "video", "video": "media.mp4"}, {"type": "text", "text": "What happens?"}]
        record = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
        (folder / "train.jsonl").write_text(json.dumps(record) + "\n")
        if kind == "image":  # the same conversation as mlx-vlm's dataset rows have it (images beside the text)
            (folder / "mlx-vlm").mkdir(exist_ok=True)
            row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                   "images": [str((folder / "media.png").resolve())]}
            (folder / "mlx-vlm" / "train.jsonl").write_text(json.dumps(row) + "\n")
        folders[kind] = folder
    return folders


# -- runners (each in its own process) ------------------------------------------------------------
def run_ours(model_path: str, data: str, steps: int, grad_checkpoint: bool) -> dict:
    import mlx_minicpmv  # noqa: F401  (the BLAS first)
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mlx_minicpmv.tuner import adapters, data as tuner_data, trainer
    from mlx_minicpmv.tuner.lora import load_for_training

    model, processor = load_for_training(model_path)
    batch = next(tuner_data.iterate_batches(tuner_data.load_datasets(data, processor, ["train"], max_seq_length=1 << 20)["train"], 1))
    adapters.apply(model, "lora", -1, {"rank": RANK, "scale": SCALE, "dropout": 0.0})
    if grad_checkpoint:
        trainer.checkpoint_layers(trainer.checkpointed_layers(model, False))
    optimizer = optim.Adam(learning_rate=1e-5)
    value_and_grad = nn.value_and_grad(model, trainer.loss)
    model.train()
    times = []
    for step in range(steps + 1):
        if step == 1:
            mx.reset_peak_memory()
        tic = time.perf_counter()
        (value, _), grads = value_and_grad(model, batch.ids, batch.mask, trainer.vision_inputs(model, batch, True))
        optimizer.update(model, grads)
        mx.eval(value, model.parameters(), optimizer.state)
        times.append(time.perf_counter() - tic)
    return dict(seconds_per_step=median(times[1:]), step_times=times, tokens=int(batch.ids.shape[1]), loss=value.item(),
                mlx_peak_gb=mx.get_peak_memory() / 1e9, peak_rss_gb=peak_rss_gb())


def run_transformers(hf_path: str, model_path: str, data: str, steps: int, grad_checkpoint: bool) -> dict:
    import mlx_minicpmv  # noqa: F401
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from tests.checkpoints import model_class

    from mlx_minicpmv.processing.processor import Processor
    from mlx_minicpmv.tuner import data as tuner_data

    torch.set_num_threads(os.cpu_count() or 2)
    processor = Processor.from_pretrained(model_path)
    batch = next(tuner_data.iterate_batches(tuner_data.load_datasets(data, processor, ["train"], max_seq_length=1 << 20)["train"], 1))
    version = {"minicpmv4_6": "4.6", "minicpmv4_7": "4.7"}[json.loads((Path(hf_path) / "config.json").read_text())["model_type"]]
    hf = model_class(version).from_pretrained(hf_path, dtype=torch.float32)
    if grad_checkpoint:
        hf.gradient_checkpointing_enable()
        hf.enable_input_require_grads()
    model = get_peft_model(hf, LoraConfig(r=RANK, lora_alpha=SCALE * RANK, lora_dropout=0.0,
                                          target_modules=r"model\.language_model\.layers\.\d+\..*_proj.*"))
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.from_numpy(np.array(batch.ids)).long()
    mask = torch.from_numpy(np.array(batch.mask))[:, 1:].flatten()
    media = {k: torch.from_numpy(np.array(v)) for k, v in batch.media.items()}
    times = []
    for _ in range(steps + 1):
        tic = time.perf_counter()
        logits = model(input_ids=ids[:, :-1], **media).logits
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        loss = (ce * mask).sum() / mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - tic)
    return dict(seconds_per_step=median(times[1:]), step_times=times, tokens=int(ids.shape[1]), loss=loss.item(),
                peak_rss_gb=peak_rss_gb())


# -- the driver -----------------------------------------------------------------------------------
def child(args) -> int:
    if args.run == "ours":
        result = run_ours(args.model, args.data, args.steps, args.grad_checkpoint)
    else:
        result = run_transformers(args.hf_model, args.model, args.data, args.steps, args.grad_checkpoint)
    print("RESULT " + json.dumps(result))
    return 0


def measure(args, impl: str, data: Path, grad_checkpoint: bool) -> dict:
    if impl == "mlx-vlm":
        cmd = [str(args.vlm_python), str(ROOT / "benchmarks" / "peers" / "mlx_vlm_lora_peer.py"), "--model", str(args.vlm_model),
               "--data", str(data / "mlx-vlm"), "--steps", str(args.steps), "--rank", str(RANK), "--scale", str(SCALE)]
    else:
        cmd = [sys.executable, __file__, "--run", impl, "--model", str(args.model), "--hf-model", str(args.hf_model),
               "--data", str(data), "--steps", str(args.steps)]
    cmd += ["--grad-checkpoint"] if grad_checkpoint else []
    when = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=commit(),
                load=" ".join(f"{x:.2f}" for x in os.getloadavg()))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return dict(error=" | ".join(tail), **when)
    return dict(json.loads(lines[-1][len("RESULT "):]), **when)


def commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def table(results: dict) -> str:
    """The measured rows, ours against each peer (ratio = their seconds per step / ours)."""
    head = (f"{'input':<6} {'ckpt':<5} {'tokens':>6} {'ours s':>7} {'torch s':>8} {'vlm s':>7} {'x torch':>8} {'x vlm':>6} "
            f"{'ours MLX GB':>11} {'vlm MLX GB':>10} {'ours RSS':>8} {'torch RSS':>9} {'vlm RSS':>8}  when (ours)")
    lines = [head]
    for kind in ("image", "video"):
        for ckpt in ("plain", "checkpointed"):
            r = {impl: results.get(f"{kind}/{ckpt}/{impl}", {}) for impl in IMPLS}
            if not any(r.values()):
                continue
            ours, torch_, vlm = r["ours"], r["transformers"], r["mlx-vlm"]

            def f(x, key, width, fmt=".2f"):
                value = x.get(key)
                return f"{'err' if 'error' in x else '-':>{width}}" if value is None else f"{value:>{width}{fmt}}"

            def ratio(peer, width):
                if "seconds_per_step" in peer and "seconds_per_step" in ours:
                    return f"{peer['seconds_per_step'] / ours['seconds_per_step']:>{width - 1}.2f}x"
                return f"{'-':>{width}}"

            when = f"{ours.get('date', '')} {ours.get('commit', '')} load {ours.get('load', '')}" if ours else ""
            lines.append(f"{kind:<6} {ckpt[:5]:<5} {f(ours, 'tokens', 6, 'd')} {f(ours, 'seconds_per_step', 7)} "
                         f"{f(torch_, 'seconds_per_step', 8)} {f(vlm, 'seconds_per_step', 7)} {ratio(torch_, 8)} {ratio(vlm, 6)} "
                         f"{f(ours, 'mlx_peak_gb', 11)} {f(vlm, 'mlx_peak_gb', 10)} {f(ours, 'peak_rss_gb', 8)} "
                         f"{f(torch_, 'peak_rss_gb', 9)} {f(vlm, 'peak_rss_gb', 8)}  {when}")
    errors = [f"{key}: {r['error']}" for key, r in results.items() if "error" in r]
    return "\n".join(lines + errors)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    parser.add_argument("--hf-model", help="An HF checkpoint (default: the full-size random one, built once).")
    parser.add_argument("--model", help="Its conversion (default: made from --hf-model in float32).")
    parser.add_argument("--vlm-model", help="mlx-vlm's conversion of it (default: made by compare.py's converter in float32).")
    parser.add_argument("--vlm-python", help="mlx-vlm's environment's python (default: compare.py's OUT/venv-vlm, made once).")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps after one warm-up.")
    parser.add_argument("--only", choices=["image", "video"], help="One of the two inputs.")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="The columns to measure.")
    parser.add_argument("--checkpointing", choices=["plain", "checkpointed"], help="Only with or only without it.")
    parser.add_argument("--table", action="store_true", help="Print the table of OUT/lora.json and measure nothing.")
    parser.add_argument("--timeout", type=int, default=3600, help="Seconds each configuration may take.")
    parser.add_argument("--run", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--grad-checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return child(args)

    from mlx_minicpmv.files import write_atomic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "lora.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    if args.table:
        print(table(results))
        return 0
    if args.hf_model is None:
        from full_checkpoint import build

        args.hf_model = build(out)
    if args.model is None:
        from mlx_minicpmv.convert import convert

        target = out / f"lora-mlx-{Path(args.hf_model).name}"
        args.model = target if (target / "config.json").exists() else convert(str(args.hf_model), str(target), dtype="float32")
    if "mlx-vlm" in args.impls:
        from compare import convert_all, vlm_python

        args.vlm_python = args.vlm_python or vlm_python(out)
        if args.vlm_model is None:
            convert_all(out, Path(args.hf_model), ["float32"], ["mlx-vlm"])
            args.vlm_model = out / "vlm-float32"
    from mlx_minicpmv.processing.processor import Processor

    folders = make_data(out, Processor.from_pretrained(args.model).tokenizer)
    for kind in [args.only] if args.only else ["image", "video"]:
        for ckpt in [args.checkpointing] if args.checkpointing else ["plain", "checkpointed"]:
            for impl in args.impls:
                if impl == "mlx-vlm" and kind == "video":
                    continue  # its trainer takes images only
                result = measure(args, impl, folders[kind], ckpt == "checkpointed")
                results[f"{kind}/{ckpt}/{impl}"] = result
                write_atomic(store, json.dumps(results, indent=1))
                print(kind, ckpt, impl, json.dumps(result), flush=True)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
