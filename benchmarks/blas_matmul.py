"""A 1024^3 float32 matmul through MLX with the BLAS mlx_minicpmv loads (the cmeel-openblas wheel's,
else the system's) against MLX's bundled reference BLAS, side by side, medians.

    python benchmarks/blas_matmul.py [--size 1024] [--repeats 9]

Each BLAS runs in a process of its own (the choice is made before mlx.core loads), alternating.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

TIME = """
import json, sys, time
import mlx_minicpmv
import mlx.core as mx
from mlx_minicpmv import blas
n = int(sys.argv[1])
a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
mx.eval(a, b, a @ b)
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    mx.eval(a @ b)
    times.append(time.perf_counter() - t)
print(json.dumps(dict(blas=blas.loaded, times=times)))
"""


def run(setting: str, size: int, repeats: int) -> dict:
    env = dict(os.environ, MLX_MINICPMV_BLAS=setting)
    done = subprocess.run([sys.executable, "-c", TIME, str(size), str(repeats)], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times = {"on": [], "off": []}
    name = None
    for _ in range(args.rounds):
        for setting in ("on", "off"):
            result = run(setting, args.size, args.repeats)
            times[setting] += result["times"]
            name = result["blas"] if setting == "on" else name
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    print(f"{args.size}^3 float32 matmul, median of {len(times['on'])} each (load average {os.getloadavg()[0]:.1f}):")
    print(f"  OpenBLAS ({name}): {on * 1e3:.1f} ms")
    print(f"  MLX's bundled reference BLAS: {off * 1e3:.1f} ms  ({off / on:.1f}x slower)")


if __name__ == "__main__":
    main()
