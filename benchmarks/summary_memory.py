"""Peak memory while summarising long synthetic videos (issue: memory stays bounded).

    python benchmarks/summary_memory.py --model PATH [--minutes 10 120]

Prints, per length: the process's peak RSS before and after summarising and the growth.
With a tiny test model the growth is the pipeline's own (decoding, frames, segment state).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_minicpmv  # noqa: E402,F401
from mlx_minicpmv import load  # noqa: E402
from mlx_minicpmv.summary import summarize  # noqa: E402
from tests.media import make_video  # noqa: E402


def status(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--minutes", type=float, nargs="*", default=[10, 120])
    args = parser.parse_args()
    model, processor = load(args.model)
    work = Path(tempfile.mkdtemp())
    for minutes in args.minutes:
        path = make_video(work / f"{minutes:g}min.mp4", seconds=60 * minutes, fps=2, width=320, height=180,
                          scenes=tuple(range(4)) * 3)
        before, peak_before = status("VmRSS"), status("VmHWM")
        tic = time.perf_counter()
        peak = before
        for event in summarize(model, processor, path, frames_per_segment=4, max_tokens=8):
            peak = max(peak, status("VmRSS"))
        segments = sum(len(c.segments) for c in event.summary.chapters)
        print(f"{minutes:g} min: {segments} segments, {time.perf_counter() - tic:.0f} s, RSS {before:.0f} MB -> "
              f"peak {peak:.0f} MB (+{peak - before:.0f} MB); process peak so far {status('VmHWM'):.0f} MB "
              f"(was {peak_before:.0f})", flush=True)
        path.unlink()


if __name__ == "__main__":
    main()
