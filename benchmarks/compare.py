"""mlx-minicpmv against mlx-vlm, transformers and llama.cpp, on the same machine in the same run.

    python benchmarks/compare.py                     # everything (hours on a 2-core CPU)
    python benchmarks/compare.py --variants float32 --impls ours mlx-vlm
    python benchmarks/compare.py --variants bfloat16 8bit 4bit --impls ours llama.cpp --rows decode prefill image448
    python benchmarks/compare.py --version 4.7       # MiniCPM-V 4.7's 1B (under OUT/v4.7)

Once, it builds a full-size random checkpoint with the real config through transformers
(compute does not depend on the weight values), makes the media, converts the checkpoint
with each implementation's own converter, and sets up mlx-vlm in its own environment
(benchmarks/out/venv-vlm: the same MLX version, the same BLAS). Then each implementation and
precision runs in a process of its own (benchmarks/bench.py, peers/mlx_vlm_peer.py,
peers/transformers_peer.py), printing each figure as it has it; a process past its time
limit is stopped and its missing figures show as "timeout". The implementations take turns, one
repeat each at a time (``--no-interleave``: all of one's repeats, then the next's), because a
shared machine's speed drifts by tens of percent over minutes, and a ratio should not depend on
which implementation drew the slow ones. Each turn is a process of its own, so the MLX runners
run each row once untimed first (``--warmup 1``: the one-time costs of a first run, such as the
read of the vision weights on the first image, which llama.cpp's figures leave out too). The
memory bandwidth is probed after every turn and the best probe kept. The table prints each figure, our
ratio to each peer (above 1: we are faster), the machine's memory bandwidth and the decode
roofline it implies, and goes to benchmarks/out/compare.{json,md}.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from full_checkpoint import VARIANTS, build, measure_convert, version_dir  # noqa: E402
from measure import ROWS  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
VLM_VERSION = "0.7.10"
# mlx-vlm's converter options for each precision (the same groups as ours).
VLM_VARIANTS = {
    "float32": dict(dtype="float32"),
    "bfloat16": dict(dtype="bfloat16"),
    "8bit": dict(dtype="bfloat16", quantize=True, q_bits=8, q_group_size=64),
    "4bit": dict(dtype="bfloat16", quantize=True, q_bits=4, q_group_size=64),
}
# llama.cpp's format at each of our precisions (peers/llama_cpp_peer.py): the same bits, as near as
# its formats come (Q4_K_M keeps some tensors at 6 bits; ours keeps the DeltaNet gates in bf16).
LLAMA_CPP_QUANTS = {"bfloat16": "F16", "8bit": "Q8_0", "4bit": "Q4_K_M"}
# What each figure is, and whether more is better.
FIGURES = {
    "decode": ("decode, 128 tokens after a 16-token prompt (tokens/s)", True),
    "prefill": ("prefill, 512-token text prompt (tokens/s)", True),
    "image448": ("first token, 448x448 image (s)", False),
    "image1344": ("first token, 1344x1008 image, sliced (s)", False),
    "video60": ("first token, 60 s 720p video at 1 fps (s)", False),
    "followup": ("first token, follow-up in that video chat (s)", False),
}


def make_media(media: Path, hf: Path):
    from tests.media import make_video, noise_image

    media.mkdir(parents=True, exist_ok=True)
    if not (media / "text512.json").exists():
        from mlx_minicpmv.processing.processor import Processor

        noise_image(448, 448, seed=1).save(media / "448.png")
        noise_image(1344, 1008, seed=2).save(media / "1344.png")
        make_video(media / "v720.mp4", seconds=60, fps=10, width=1280, height=720, codec="libx264", scenes=(0, 1, 2))
        words = ("the quick brown fox jumps over the lazy dog and then " * 200).split()
        ids = Processor.from_pretrained(hf).tokenizer.encode(" ".join(words))[:512]
        write_atomic(media / "text512.json", json.dumps(ids))


def write_atomic(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def vlm_python(out: Path) -> Path:
    """mlx-vlm's environment, made once: the MLX version ours runs, mlx-vlm pinned."""
    import mlx.core as mx

    venv = out / "venv-vlm"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        from importlib import metadata

        mlx = f"mlx[cpu]=={mx.__version__}" if sys.platform == "linux" else f"mlx=={mx.__version__}"
        # The OpenBLAS wheel ours loads, which the peer loads the same way (peers/mlx_vlm_peer.py).
        blas = [f"cmeel-openblas=={metadata.version('cmeel-openblas')}"] if sys.platform == "linux" else []
        subprocess.run([str(python), "-m", "pip", "install", "-q", mlx, *blas, f"mlx-vlm=={VLM_VERSION}"], check=True)
    return python


VLM_CONVERT = """
import sys, json
from mlx_vlm import convert
convert(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
"""


def convert_all(out: Path, hf: Path, variants, impls) -> dict:
    """Each implementation's conversions (timed; skipped where already made), their sizes."""
    stats = json.loads((out / "convert.json").read_text()) if (out / "convert.json").exists() else {}
    for name in variants:
        jobs = []
        if "ours" in impls:
            jobs.append(("ours", out / f"mlx-{name}", [sys.executable, "-m", "mlx_minicpmv.convert", "--hf-path", str(hf),
                                                      "--mlx-path", str(out / f"mlx-{name}"), "--force", *VARIANTS[name]]))
        if "mlx-vlm" in impls:
            jobs.append(("mlx-vlm", out / f"vlm-{name}", [str(vlm_python(out)), "-c", VLM_CONVERT, str(hf),
                                                          str(out / f"vlm-{name}"), json.dumps(VLM_VARIANTS[name])]))
        for impl, target, cmd in jobs:
            key = f"{impl}/{name}"
            if key in stats and target.exists():
                continue
            tic = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            size = sum(f.stat().st_size for f in target.glob("*.safetensors")) / 1e9
            stats[key] = dict(convert_s=time.perf_counter() - tic, size_gb=size)
            print(f"converted {key}: {stats[key]['convert_s']:.1f} s, {size:.2f} GB", flush=True)
            write_atomic(out / "convert.json", json.dumps(stats, indent=2))
    return stats


def bandwidth_gbs() -> float:
    """Read bandwidth with every core, the best of three streaming reads of 1 GB: a thread per
    core summing its own part (numpy releases the GIL), numpy's GEMV, and the GEMV of the BLAS
    that MLX uses here. A roofline has to bound what a decode step can read, and on the CI
    machine the BLAS GEMV streams fastest (up to 56 GB/s where the sums read ~30)."""
    import ctypes

    import numpy as np

    from mlx_minicpmv import blas

    threads = os.cpu_count() or 1
    parts = [np.ones(256 * 1024 * 1024 // threads, dtype=np.float32) for _ in range(threads)]
    matrix, x, y = np.ones((256 * 1024, 1024), dtype=np.float32), np.ones(1024, np.float32), np.zeros(256 * 1024, np.float32)

    def sums():
        workers = [threading.Thread(target=p.sum) for p in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    reads = {"sums": sums, "numpy gemv": lambda: matrix @ x}
    _, library = blas.open_library()  # this process may have imported mlx.core before blas.load()
    if library:
        sgemv = library.cblas_sgemv
        sgemv.argtypes = [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                              ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
        reads["blas gemv"] = lambda: sgemv(101, 111, matrix.shape[0], matrix.shape[1], 1.0, matrix.ctypes.data,
                                           matrix.shape[1], x.ctypes.data, 1, 0.0, y.ctypes.data, 1)
    best = {}
    for name, read in reads.items():
        for _ in range(10):  # the best of 10: other tenants of the machine come and go
            tic = time.perf_counter()
            read()
            best[name] = max(best.get(name, 0.0), matrix.nbytes / (time.perf_counter() - tic) / 1e9)
    print("read bandwidth, GB/s: " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()), flush=True)
    return max(best.values())


def lm_weight_bytes(model_dir: Path) -> int:
    """Bytes one decode step reads: the language model's weights as ``load`` holds them on this
    machine (the tied embedding once, as the head; on the CPU the kernels' layers as stored,
    the rest in fp32), not the vision tower's."""
    from mlx_minicpmv.loading import load_model
    from mlx.utils import tree_flatten

    model = load_model(model_dir, lazy=True)
    return sum(v.nbytes for _, v in tree_flatten(model.language_model.parameters()))


# Set on some shared machines to force OpenBLAS's AVX2 kernels; a user's machine does not set
# them. --native-openblas drops them from every runner's environment alike (never in tests).
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
RUNNER_ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}

BLAS_REPORT = """
import mlx_minicpmv, mlx.core
from threadpoolctl import threadpool_info
print("; ".join(f"{i['internal_api']} {i.get('version')} {i.get('architecture')} x{i['num_threads']}"
                for i in threadpool_info() if i['user_api'] == 'blas'))
"""


def blas_kernel() -> str:
    """Which BLAS and which of its kernels the MLX runners get, by threadpoolctl in a process
    with their environment (every MLX runner loads the same library the same way)."""
    done = subprocess.run([sys.executable, "-c", BLAS_REPORT], cwd=ROOT, env=RUNNER_ENV, capture_output=True, text=True)
    if done.returncode:
        return f"unknown ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}; pip install -e \".[bench]\")"
    return done.stdout.strip()


def run(cmd, timeout_s: float, label: str, asked) -> dict:
    """One runner: its ROW lines (printed as they come), or what it had when stopped."""
    print(f"\n== {label}: {' '.join(str(c) for c in cmd[1:3])} ...", flush=True)
    rows, tic = {}, time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=RUNNER_ENV)
    err = []
    drain = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    drain.start()
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    for line in proc.stdout:
        if line.startswith("ROW "):
            row = json.loads(line[4:])
            rows[row.pop("row")] = row
            print(f"   {label} {line[4:].strip()}", flush=True)
    proc.wait()
    timer.cancel()
    if proc.returncode and time.perf_counter() - tic < timeout_s:
        print("".join(err[-20:]), file=sys.stderr)
    rows["_stopped"] = time.perf_counter() - tic >= timeout_s
    rows["_asked"] = asked
    rows["_seconds"] = time.perf_counter() - tic
    return rows


def merged(passes: list) -> dict:
    """One runner's rows from its passes: the median value (of every repeat, when a pass ran
    several), the largest peak, the runs counted; an error only where no pass measured the row."""
    rows = {"_asked": passes[0]["_asked"], "_stopped": any(p["_stopped"] for p in passes),
            "_seconds": sum(p["_seconds"] for p in passes)}
    for figure in {f for p in passes for f in p if not f.startswith("_")}:
        got = [p[figure] for p in passes if figure in p]
        ok = [r for r in got if "value" in r]
        if not ok:
            rows[figure] = got[0]
            continue
        values = [v for r in ok for v in r.get("values", [r["value"]])]
        rows[figure] = {**ok[-1], "value": statistics.median(values), "values": values,
                        "runs": sum(r.get("runs", 1) for r in ok)}
        if any("peak_gb" in r for r in ok):
            rows[figure]["peak_gb"] = max(r["peak_gb"] for r in ok if "peak_gb" in r)
    return rows


def cell(rows: dict, figure: str):
    r = rows.get(figure)
    if r is None:  # stopped before it, or not asked of this runner (or not measured by it)
        return None, "timeout" if rows.get("_stopped") and figure in rows.get("_asked", ()) else "-"
    if "error" in r:
        return None, "error"
    return r["value"], f"{r['value']:.2f}" + ("" if r.get("runs", 3) >= 3 else f" (n={r['runs']})")


def table(results: dict, stats: dict, bandwidth: float, weight_bytes) -> str:
    """``weight_bytes``: {variant: bytes a decode step reads} (an int, as older runs stored it,
    is the fp32 figure)."""
    if not isinstance(weight_bytes, dict):
        weight_bytes = {"float32": weight_bytes}
    lines = [f"Memory read bandwidth {bandwidth:.1f} GB/s. Bytes a decode step reads and the decode roofline they "
             "imply: " + "; ".join(f"{v} {b / 1e9:.2f} GB, {bandwidth * 1e9 / b:.2f} tokens/s"
                                   for v, b in weight_bytes.items()) + ".", ""]
    for variant, impls in results.items():
        peers = [p for p in ("mlx-vlm", "transformers", "llama.cpp") if p in impls]
        head = ["figure", "ours", "ours peak GB"] + sum(([p, f"{p} peak GB", f"ours vs {p}"] for p in peers), [])
        lines += [f"### {variant}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for figure, (label, more_is_better) in FIGURES.items():
            ours, ours_text = cell(impls.get("ours", {}), figure)
            row = [label, ours_text, _peak(impls.get("ours", {}), figure)]
            for p in peers:
                value, text = cell(impls[p], figure)
                ratio = "" if ours is None or value is None else f"{(ours / value if more_is_better else value / ours):.2f}x"
                row += [text, _peak(impls[p], figure), ratio]
            lines.append("| " + " | ".join(row) + " |")
        conv = [f"{impl}: convert {s['convert_s']:.1f} s, {s['size_gb']:.2f} GB on disk"
                for impl in ("ours", "mlx-vlm") if (s := stats.get(f"{impl}/{variant}"))]
        if "value" in impls.get("ours", {}).get("decode", {}) and variant in weight_bytes:
            share = impls["ours"]["decode"]["value"] / (bandwidth * 1e9 / weight_bytes[variant])
            conv.append(f"{variant} decode at {100 * share:.0f}% of the roofline")
        lines += ["", "; ".join(conv), ""]
    return "\n".join(lines)


def _peak(rows, figure):
    r = rows.get(figure) or {}
    return f"{r['peak_gb']:.2f}" if "peak_gb" in r else ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--impls", nargs="*", default=["ours", "mlx-vlm", "transformers"])
    parser.add_argument("--rows", nargs="*", default=list(ROWS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--row-budget-s", type=float, default=60.0,
                        help="a row is not repeated once its runs took this long (then n < 3 is shown)")
    parser.add_argument("--timeout-s", type=float, default=1200.0, help="time limit of one runner")
    parser.add_argument("--peer-variant-timeout-s", type=float, default=480.0,
                        help="time limit of a peer at a precision other than float32")
    parser.add_argument("--video-variants", nargs="*", default=["float32"],
                        help="precisions that run the video and follow-up rows")
    parser.add_argument("--no-interleave", dest="interleave", action="store_false",
                        help="each implementation's repeats in one process, one after the other (default: in turns)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the last run again")
    parser.add_argument("--native-openblas", action="store_true",
                        help=f"drop {' and '.join(OPENBLAS_OVERRIDES)} from every runner's environment")
    parser.add_argument("--version", choices=["4.6", "4.7"], default="4.6", help="MiniCPM-V version")
    args = parser.parse_args()
    if args.native_openblas:
        for name in OPENBLAS_OVERRIDES:
            RUNNER_ENV.pop(name, None)
    out = version_dir(Path(args.out), args.version)
    if args.table_only:
        last = json.loads((out / "compare.json").read_text())
        print(table(last["results"], last["convert"], last["bandwidth_gbs"], last["weight_bytes"]))
        return
    out.mkdir(parents=True, exist_ok=True)
    hf = build(out, args.version)
    media = out / "media"
    make_media(media, hf)
    stats = convert_all(out, hf, args.variants, args.impls)
    bandwidth = bandwidth_gbs()
    weight_bytes = {v: lm_weight_bytes(out / f"mlx-{v}") for v in args.variants if (out / f"mlx-{v}").exists()}
    print(f"BLAS of the MLX runners: {blas_kernel()}", flush=True)
    print(f"memory bandwidth {bandwidth:.1f} GB/s; GB read per decoded token: "
          + ", ".join(f"{v} {b / 1e9:.2f}" for v, b in weight_bytes.items()), flush=True)

    results = {}
    for variant in args.variants:
        rows = [r for r in args.rows if variant in args.video_variants or r not in ("video60", "followup")]
        timeout = args.timeout_s if variant == "float32" else args.peer_variant_timeout_s
        jobs = []  # (implementation, command without the common options, time limit, rows it measures)
        if "ours" in args.impls:
            jobs.append(("ours", [sys.executable, ROOT / "benchmarks" / "bench.py", "--model", out / f"mlx-{variant}"],
                         args.timeout_s, rows))
        if "mlx-vlm" in args.impls:
            jobs.append(("mlx-vlm", [vlm_python(out), ROOT / "benchmarks" / "peers" / "mlx_vlm_peer.py", "--model",
                                     out / f"vlm-{variant}"], timeout, [r for r in rows if r != "followup"]))
        if "transformers" in args.impls and variant in ("float32", "bfloat16"):
            jobs.append(("transformers", [sys.executable, ROOT / "benchmarks" / "peers" / "transformers_peer.py",
                                          "--model", hf, "--dtype", variant], timeout, [r for r in rows if r != "followup"]))
        if "llama.cpp" in args.impls and variant in LLAMA_CPP_QUANTS:
            jobs.append(("llama.cpp", [sys.executable, ROOT / "benchmarks" / "peers" / "llama_cpp_peer.py",
                                       "--hf", hf, "--quant", LLAMA_CPP_QUANTS[variant], "--out", out], timeout,
                         [r for r in rows if r not in ("video60", "followup")]))
        # Taken in turns, a repeat of each implementation after the other, so that a shared machine's
        # slow minutes fall on all of them alike (with --no-interleave each runs its repeats in one go).
        passes = args.repeats if args.interleave else 1
        common = ["--media", media, "--rows", *rows, "--repeats", 1 if args.interleave else args.repeats,
                  "--row-budget-s", args.row_budget_s]
        warmup = ["--warmup", 1] if args.interleave else []  # not for llama.cpp: llama-bench warms up by itself
        runs = {impl: [] for impl, *_ in jobs}
        for n in range(passes):
            for impl, cmd, limit, asked in jobs:
                label = f"{impl} {LLAMA_CPP_QUANTS[variant] if impl == 'llama.cpp' else variant}"
                runs[impl].append(run(cmd + common + (warmup if impl != "llama.cpp" else []), limit,
                                      label + (f" ({n + 1}/{passes})" if passes > 1 else ""), asked))
            bandwidth = max(bandwidth, bandwidth_gbs())  # the roofline is the best probe of the run
        impls = {impl: merged(impl_runs) for impl, impl_runs in runs.items()}
        results[variant] = impls
        write_atomic(out / "compare.json", json.dumps(dict(bandwidth_gbs=bandwidth, weight_bytes=weight_bytes,
                                                           convert=stats, results=results), indent=2))
    text = table(results, stats, bandwidth, weight_bytes)
    write_atomic(out / "compare.md", text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
