"""What every runner of the side-by-side comparison shares.

A runner measures one implementation at one precision and prints one ``ROW {json}`` line per
figure as soon as it has it, so a runner stopped at its time limit still reports what it
finished. Standard library only: this file is imported from mlx-vlm's environment too.
"""

import argparse
import json
import statistics
import sys
import time
import traceback

# Cheapest first: a runner stopped at its time limit has measured the most it could.
ROWS = ("decode", "prefill", "image448", "image1344", "video60", "followup")
# Decoding follows a short prompt, so that a slow prefill does not eat a slow peer's time.
DECODE_TOKENS, DECODE_PROMPT_TOKENS = 128, 16
QUESTION = "Describe what you see in detail."
FOLLOW_UP = "And what colour is it?"
MEDIA = {"image448": "448.png", "image1344": "1344.png", "video60": "v720.mp4"}


def arguments(description: str):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="the checkpoint this runner loads")
    parser.add_argument("--media", required=True, help="folder with 448.png, 1344.png, v720.mp4, text512.json")
    parser.add_argument("--rows", nargs="*", default=list(ROWS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--row-budget-s", type=float, default=240.0,
                        help="no further repeat of a row once its runs have taken this long")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed runs of each row first: a process's first run of a row also pays its "
                             "one-time costs (compiling, the first read of lazily loaded weights, buffers)")
    return parser.parse_args()


def text_ids(media) -> list:
    """The 512 token ids of the text prompt, the same for every implementation."""
    with open(f"{media}/text512.json") as f:
        return json.load(f)


def report(row: str, **fields):
    print("ROW " + json.dumps(dict(row=row, **fields)), flush=True)


def measure(row: str, fn, repeats: int, budget_s: float, warmup: int = 0):
    """``fn() -> (value, peak_gb, info)`` up to ``repeats`` times (fewer once ``budget_s`` have
    gone), after ``warmup`` untimed runs: reports the median value, the largest peak and the
    number of runs. An exception is reported as the row's error, and the runner goes on with the
    next row."""
    runs, start = [], time.perf_counter()
    try:
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        while len(runs) < repeats:
            runs.append(fn())
            if time.perf_counter() - start > budget_s:
                break
    except Exception as e:  # a failing peer is a result to print, not a crash of the comparison
        traceback.print_exc(file=sys.stderr)
        report(row, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        return
    report(row, value=statistics.median(r[0] for r in runs), peak_gb=max(r[1] for r in runs),
           runs=len(runs), **runs[-1][2])


def timed(fn):
    """Seconds ``fn()`` took, and what it returned."""
    tic = time.perf_counter()
    out = fn()
    return time.perf_counter() - tic, out
