"""llama.cpp's MiniCPM-V 4.6 on the comparison's rows (see ../measure.py): what LM Studio and
Ollama run on a Linux CPU.

    python benchmarks/peers/llama_cpp_peer.py --hf OUT/hf-random-real-config --media OUT/media --quant Q8_0

Once, into benchmarks/out (never committed): the source vendored in the ``llama-cpp-python``
sdist (fetched from PyPI, so only PyPI is needed), built with ``-DGGML_NATIVE=ON``
(the kernels this CPU has), and the random checkpoint converted by llama.cpp's own converter
to F16 (text and the mmproj) and quantised by ``llama-quantize`` to Q8_0 and Q4_K_M. The
random checkpoint's toy tokenizer hashes to no known pre-tokenizer, so the converter is told
the real model's (``qwen35``); ``--no-mtp`` leaves out the MTP head, as ours does.

Rows: prefill (512 tokens) and decode (128 tokens) from ``llama-bench`` (the median of its
samples), first token for the images from ``llama-mtmd-cli -n 1 -c 4096``: the process's wall
time less that of the same command with a one-word text prompt (the same loads), medians of
3. Peak memory is the process's peak RSS. ggml uses its own kernels, not OpenBLAS.

Where a run dies of a signal (this build's repacked CPU kernels do for Q8_0 and Q4_K_M on the
AMX machine here: SIGILL in llama-bench, SIGSEGV), it runs again without weight repacking and
the rows say ``repack: 0``.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import DECODE_TOKENS, MEDIA, QUESTION, report  # noqa: E402

VERSION = "0.3.36"  # llama-cpp-python; its vendored llama.cpp is commit 0c1e570
OUT = Path(__file__).resolve().parents[1] / "out"
QUANTS = ("F16", "Q8_0", "Q4_K_M")
THREADS = os.cpu_count() or 2
TARGETS = ("llama-bench", "llama-mtmd-cli", "llama-quantize")

# Runs the converter with the pre-tokenizer forced: argv is the converter's own command line.
CONVERT = """
import sys
sys.path[:0] = [sys.argv.pop(1), sys.argv[1] + "/gguf-py"]
sys.argv.pop(1)
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen35"
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def run(cmd, **kw):
    print("+ " + " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def source(out: Path) -> Path:
    """llama.cpp's source as vendored in the llama-cpp-python sdist."""
    src = out / f"llama.cpp-{VERSION}"
    if (src / "CMakeLists.txt").exists():
        return src
    import json
    import urllib.parse
    import urllib.request

    # The sdist's address from PyPI's JSON API, fetched as a file: ``pip download --no-binary``
    # would build the sdist's metadata, and with it cmake from source for the build environment
    # (many minutes of both cores, beside whatever is being measured).
    index = "https://pypi.org/pypi/llama-cpp-python/json"  # the package's (a mirror may lack the per-version page)
    with urllib.request.urlopen(index, timeout=60) as r:
        files = json.load(r)["releases"][VERSION]
    url = urllib.parse.urljoin(index, next(f["url"] for f in files if f["packagetype"] == "sdist"))  # a mirror's may be relative
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        print(f"+ download {url}", file=sys.stderr, flush=True)
        urllib.request.urlretrieve(url, Path(tmp) / Path(url).name)
        with tarfile.open(next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))) as tar:
            tar.extractall(tmp, filter="data")
        staged = next(Path(tmp).glob("llama_cpp_python-*")) / "vendor" / "llama.cpp"
        os.replace(staged, src)
    return src


def build(out: Path) -> Path:
    """The binaries, built once for this CPU."""
    bin_dir = out / "llama.cpp-build" / "bin"
    if all((bin_dir / t).exists() for t in TARGETS):
        return bin_dir
    src, tree = source(out), out / "llama.cpp-build"
    run(["cmake", "-S", src, "-B", tree, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
         "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
        stdout=subprocess.DEVNULL)
    run(["cmake", "--build", tree, "-j", str(THREADS), "--target", *TARGETS], stdout=subprocess.DEVNULL)
    return bin_dir


def convert(out: Path, hf: Path, bin_dir: Path) -> dict:
    """{quant: text-model GGUF} and the F16 mmproj, converted once."""
    src, gguf = source(out), out / "gguf"
    gguf.mkdir(exist_ok=True)
    paths = {q: gguf / f"model-{q}.gguf" for q in QUANTS}
    mmproj = gguf / "mmproj-F16.gguf"
    for target, extra in ((paths["F16"], ["--no-mtp"]), (mmproj, ["--mmproj"])):  # the mmproj pass refuses --no-mtp
        if not target.exists():
            partial = target.with_name(f".{target.name}.partial")
            run([sys.executable, "-c", CONVERT, src, src / "convert_hf_to_gguf.py", hf, "--outtype", "f16",
                 "--outfile", partial, *extra], stdout=subprocess.DEVNULL)
            os.replace(partial, target)
    for q in QUANTS[1:]:
        if not paths[q].exists():
            partial = paths[q].with_name(f".{paths[q].name}.partial")
            run([bin_dir / "llama-quantize", paths["F16"], partial, q, THREADS], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            os.replace(partial, paths[q])
    return dict(paths, mmproj=mmproj)


class Crashed(RuntimeError):
    """The process died of a signal."""


_crash = None  # how the default run died, once one has in this process: the rest run without repacking


def measured(cmd, no_repack) -> tuple:
    """timed_process(cmd), or with ``no_repack`` added once the default has died of a signal."""
    global _crash
    if _crash is None:
        try:
            return timed_process(cmd)
        except Crashed as e:
            _crash = str(e)
            print(f"   {e}: measured again without weight repacking", file=sys.stderr)
    return timed_process([*cmd, *no_repack])


def crash_note() -> dict:
    return {} if _crash is None else dict(repack=0, default_run=_crash)


def timed_process(cmd) -> tuple:
    """(wall seconds, peak RSS GB, stdout) of one run of ``cmd``; its own rusage via wait4."""
    tic = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    streams = {}
    readers = [threading.Thread(target=lambda k=k: streams.__setitem__(k, getattr(proc, k).read())) for k in ("stdout", "stderr")]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - tic
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode < 0:
        raise Crashed(f"{Path(str(cmd[0])).name} died of signal {-proc.returncode}")
    if proc.returncode:
        lines = streams["stderr"].strip().splitlines()
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed: {lines[-1] if lines else proc.returncode}")
    return seconds, usage.ru_maxrss / 1e6, streams["stdout"]


def bench_text(bin_dir: Path, model: Path, repeats: int):
    """prefill and decode rows from one llama-bench run (its samples' medians)."""
    import json

    _, peak, out = measured([bin_dir / "llama-bench", "-m", model, "-p", 512, "-n", DECODE_TOKENS,
                             "-t", THREADS, "-r", repeats, "-o", "json"], ["--repack", 0])
    for test in json.loads(out):
        row = "prefill" if test["n_prompt"] else "decode"
        samples = test["samples_ts"]
        report(row, value=statistics.median(samples), peak_gb=peak, runs=len(samples), **crash_note())


def bench_images(bin_dir: Path, model: Path, mmproj: Path, media: Path, rows, repeats: int):
    common = [bin_dir / "llama-mtmd-cli", "-m", model, "--mmproj", mmproj, "-n", 1, "-c", 4096, "-t", THREADS,
              "--temp", 0, "--no-warmup"]
    runs = {row: [measured(common + ["--image", media / MEDIA[row], "-p", QUESTION], ["--no-repack"])
                  for _ in range(repeats)] for row in rows}
    # the baseline after the images: with the same repacking as they ran with
    baseline = statistics.median(measured(common + ["-p", "Hi"], ["--no-repack"])[0] for _ in range(repeats))
    for row in rows:
        report(row, value=statistics.median(r[0] for r in runs[row]) - baseline, peak_gb=max(r[1] for r in runs[row]),
               runs=len(runs[row]), baseline_s=baseline, **crash_note())


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf", required=True, help="the random checkpoint in the HF layout")
    parser.add_argument("--media", required=True)
    parser.add_argument("--quant", choices=QUANTS, default="F16")
    parser.add_argument("--rows", nargs="*", default=["decode", "prefill", "image448", "image1344"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--prepare-only", action="store_true", help="build and convert, measure nothing")
    parser.add_argument("--row-budget-s", type=float, default=0, help="(accepted for compare.py; unused)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("cmake") is None:
        sys.exit("llama.cpp needs cmake and a C++ compiler to build (pip install cmake; apt install g++)")
    bin_dir = build(out)
    files = convert(out, Path(args.hf), bin_dir)
    if args.prepare_only:
        return
    if {"decode", "prefill"} & set(args.rows):
        bench_text(bin_dir, files[args.quant], args.repeats)
    images = [r for r in args.rows if r in ("image448", "image1344")]
    if images:
        bench_images(bin_dir, files[args.quant], files["mmproj"], Path(args.media), images, args.repeats)


if __name__ == "__main__":
    main()
