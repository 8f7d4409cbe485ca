"""One LoRA training step through mlx-vlm's own trainer, in mlx-vlm's environment (compare.py
makes it: the same MLX version and the same BLAS as ours). ../lora.py runs it.

    python mlx_vlm_lora_peer.py --model OUT/vlm-float32 --data DIR --steps 3 [--grad-checkpoint]

Drives ``python -m mlx_vlm.train``'s own path (``mlx_vlm.train.parse_args`` and ``run``): its
dataset (``DIR/train.jsonl``, a chat row with an ``images`` field), LoRA on the language model's
linear layers as it picks them by default (rank 8, alpha 160 = scale 20 as ours), the loss on the
completion (``--train-on-completions``), Adam at 1e-5, batch 1, a report every step. A callback
reads each step's own figures from the trainer's report: ``step_time`` (the step without data
loading) and MLX's peak memory, reset after the warm-up step as ours is.
"""

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path


def _load_our_blas():
    """The BLAS ours uses, by mlx_minicpmv/cpu/blas.py itself (standard library only), before mlx.core."""
    spec = importlib.util.spec_from_file_location("blas", Path(__file__).resolve().parents[2] / "mlx_minicpmv" / "cpu" / "blas.py")
    blas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blas)
    blas.load()


_load_our_blas()

import mlx.core as mx  # noqa: E402
from mlx_vlm import train as vlm_train  # noqa: E402
from mlx_vlm.trainer.common.callbacks import TrainingCallback  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rss import peak_rss_gb  # noqa: E402


class Steps(TrainingCallback):
    def __init__(self):
        self.reports = []

    def on_train_loss_report(self, info):
        self.reports.append(info)
        mx.reset_peak_memory()  # the next report's peak is its own step's


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--grad-checkpoint", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--model", args.model, "--data", args.data, "--iters", str(args.steps + 1), "--batch-size", "1",
                "--steps-per-report", "1", "--steps-per-save", "1000000", "--optimizer", "adam", "--learning-rate", "1e-5",
                "--lora-rank", str(args.rank), "--lora-alpha", str(args.scale * args.rank), "--lora-dropout", "0",
                "--train-on-completions", "--output-path", tmp, "--max-seq-length", "4096"]
        if args.grad_checkpoint:
            argv.append("--grad-checkpoint")
        parsed, settings = vlm_train.parse_args(argv)
        steps = Steps()
        vlm_train.run(parsed, settings, steps)
    timed = steps.reports[1:]
    times = sorted(r["step_time"] for r in timed)
    result = dict(seconds_per_step=times[len(times) // 2], step_times=[r["step_time"] for r in steps.reports],
                  tokens=int(timed[-1].get("average_sequence_length", 0)) + 1, loss=timed[-1]["train_loss"],
                  mlx_peak_gb=max(r["peak_memory"] for r in timed), peak_rss_gb=peak_rss_gb())
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
