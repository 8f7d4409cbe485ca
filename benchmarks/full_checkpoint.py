"""Build once a full-size random MiniCPM-V 4.6 checkpoint with the real config (spec §14), then
convert it in each precision and report convert time, peak memory, size on disk and load time.

    python benchmarks/full_checkpoint.py [--out benchmarks/out] [--variants bfloat16 ...] [--version 4.7]

``--version 4.7`` builds MiniCPM-V 4.7's 1B instead (tests/checkpoints.py's ``real_config``
says what its config is made of), under OUT/v4.7.

Compute does not depend on weight values, so this checkpoint serves every speed benchmark.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "float32": ["--dtype", "float32"],
    "bfloat16": ["--dtype", "bfloat16"],
    "8bit": ["--dtype", "bfloat16", "-q", "--q-bits", "8", "--q-group-size", "64"],
    "4bit": ["--dtype", "bfloat16", "-q", "--q-bits", "4", "--q-group-size", "64"],
}


def build(out: Path, version: str = "4.6") -> Path:
    hf = out / "hf-random-real-config"
    if (hf / "model.safetensors").exists():
        return hf
    import torch

    from tests.checkpoints import build_checkpoint

    torch.set_num_threads(os.cpu_count() or 2)
    tic = time.perf_counter()
    build_checkpoint(hf, real=True, dtype=torch.bfloat16, version=version)
    print(f"built {hf} in {time.perf_counter() - tic:.0f} s")
    return hf


def version_dir(out: Path, version: str) -> Path:
    """4.6's files where they always were, another version's in a folder of its own."""
    return out if version == "4.6" else out / f"v{version}"


# Peak RSS of the process itself: VmHWM on Linux (ru_maxrss there keeps the parent's peak
# across fork+exec), ru_maxrss (bytes) on macOS.
PEAK = """
def peak_rss_gb():
    import resource, sys
    if sys.platform == "linux":
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e9
"""

CONVERT = PEAK + """
import sys
from mlx_minicpmv.convert import main
code = main(sys.argv[1:])
print(f"peak-rss {peak_rss_gb():.2f}")
sys.exit(code)
"""


def measure_convert(args) -> dict:
    """Convert in a child process: wall time and that process's own peak RSS."""
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CONVERT, *args], capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    peak = float(proc.stdout.split("peak-rss")[-1])
    return dict(seconds=wall, peak_rss_gb=peak)


LOAD = PEAK + """
import sys, time
t = time.perf_counter()
from mlx_minicpmv import load
model, processor = load(sys.argv[1])
import mlx.core as mx
print(f"{time.perf_counter() - t:.2f} {peak_rss_gb():.2f} {mx.get_peak_memory() / 1e9:.2f}")
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--version", choices=["4.6", "4.7"], default="4.6", help="MiniCPM-V version")
    args = parser.parse_args()
    out = version_dir(Path(args.out), args.version)
    out.mkdir(parents=True, exist_ok=True)
    hf = build(out, args.version)
    rows = []
    for name in args.variants:
        target = out / f"mlx-{name}"
        # one process per step, so each peak RSS is that step's own
        conv = measure_convert(["--hf-path", str(hf), "--mlx-path", str(target), "--force", *VARIANTS[name]])
        size = sum(f.stat().st_size for f in target.glob("*.safetensors")) / 1e9
        load = subprocess.run([sys.executable, "-c", LOAD, str(target)], capture_output=True, text=True, check=True)
        load_s, load_rss, load_mlx = map(float, load.stdout.split()[-3:])
        rows.append(dict(variant=name, convert_s=round(conv["seconds"], 1), convert_peak_rss_gb=round(conv["peak_rss_gb"], 2),
                         size_gb=round(size, 3), load_s=load_s, load_peak_rss_gb=load_rss, load_mlx_peak_gb=load_mlx))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'variant':10} {'convert s':>10} {'conv RSS GB':>12} {'size GB':>8} {'load s':>7} {'load RSS GB':>12}")
    for r in rows:
        print(f"{r['variant']:10} {r['convert_s']:>10} {r['convert_peak_rss_gb']:>12} {r['size_gb']:>8} "
              f"{r['load_s']:>7} {r['load_peak_rss_gb']:>12}")


if __name__ == "__main__":
    main()
