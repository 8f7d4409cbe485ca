"""The OpenAI-compatible server under load, ours (and optionally mlx-vlm's) on a random checkpoint.

    flock /work/.bench.lock python benchmarks/serve.py                       # small model, ~5 min
    flock /work/.bench.lock python benchmarks/serve.py --size full --impls ours mlx-vlm

``--size small`` (the default) builds a random checkpoint with the real model's layer shapes
(hidden 1024, MLP 3584, 16 DeltaNet heads of 128, gated attention 8 x 256) but 8 text layers, a
32k vocabulary and a small vision tower: 0.2 B parameters, 0.8 GB in fp32, so a decode step
reads the weights from memory as the full model's does, at a third of the bytes. ``--size full``
is the real config (benchmarks/full_checkpoint.py, 1.3 B).

For each implementation a real server process (ours: ``python -m mlx_minicpmv.server``;
mlx-vlm 0.7.10: ``python -m mlx_vlm.server`` in its own environment, the same MLX and BLAS, as
compare.py sets it up) on 127.0.0.1, driven over HTTP:

- aggregate decode tokens/s with 1, 2, 4 and 8 concurrent streams: every stream asks for the
  same number of tokens after a short prompt; the figure counts the tokens all streams received
  while all of them were decoding (from the last stream's first token to the first stream's last
  token), so prefill is left out; with it the median time to first token of those streams;
- time to first token of a question about a 60 s 720p video, and of a follow-up question in
  that chat (the client resends the history, as chat clients do), each as a one-token answer.

The random model's head keeps only rows of tokens that the stand-in tokenizer spells as ASCII
text (``spellable``): every other row is zero, so every decoded token arrives as a chunk of text
to count and none ends an answer early. The matrices keep their shapes, so the work is the same.

Figures are printed as measured (``ROW {json}``), with the machine's load (``uptime``) before
and after, and kept in OUT/serve-SIZE/serve.json, merged with earlier runs', so a full run can be
split (``--skip-video``; ``--streams`` with no counts for the video alone; one ``--impls`` at a
time) and the table at the end still puts the figures of both implementations side by side,
each with the date, commit and load of the run that measured it. Never in the tests.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import OUT, convert_all, make_media, vlm_python, write_atomic  # noqa: E402
from full_checkpoint import build  # noqa: E402
from measure import FOLLOW_UP, QUESTION, report  # noqa: E402

PROMPT = "Write a long story about a fox and a dog."

# The small checkpoint: the real model's layer shapes, fewer layers, a smaller vocabulary.
SMALL = dict(
    vision=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=6),
    text=dict(vocab_size=32768, hidden_size=1024, intermediate_size=3584,
              layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 2, num_attention_heads=8,
              num_key_value_heads=2, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=16,
              linear_key_head_dim=128, linear_value_head_dim=128, max_position_embeddings=32768),
)


def build_small(out: Path) -> Path:
    hf = out / "hf-random-small"
    if not (hf / "model.safetensors").exists():
        from tests.checkpoints import build_checkpoint

        build_checkpoint(hf, **SMALL)
        spellable(hf)
    return hf


def spellable(hf: Path) -> None:
    """Zero the tied head's rows of every token the tokenizer does not spell as printable ASCII
    (ids past its stand-in vocabulary, partial UTF-8 bytes, the special tokens): the random model
    then answers in text that streams one chunk a token and never stops by itself."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    keep = [i for i in range(len(tok)) if i not in tok.all_special_ids and tok.decode([i]).isascii()
            and tok.decode([i]).strip() and tok.convert_ids_to_tokens(i) not in tok.get_added_vocab()]
    weights = load_file(hf / "model.safetensors")
    for name, w in weights.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            kept = w[keep].clone()
            w.zero_()
            w[keep] = kept
    save_file(weights, hf / ".model.safetensors.tmp", metadata={"format": "pt"})
    os.replace(hf / ".model.safetensors.tmp", hf / "model.safetensors")
    print(f"spellable: {len(keep)} of {len(tok)} token rows kept in the head", flush=True)


def machine_load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free loopback port, stopped on exit."""

    def __init__(self, cmd, model_name: str, log: Path, start_timeout_s: float = 900):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model_name
        self.log = open(log, "w")
        self.proc = subprocess.Popen([str(c) for c in cmd] + ["--port", str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.time() + start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {log}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the server did not start in {start_timeout_s:.0f} s; see {log}")
            time.sleep(1)

    def chat(self, messages, timeout_s: float = 3600, **kw) -> dict:
        r = httpx.post(self.url + "/v1/chat/completions", timeout=timeout_s,
                       json=dict(model=self.model, messages=messages, temperature=0.0, **kw))
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
        return r.json()

    def stream_times(self, messages, max_tokens: int) -> list:
        """Arrival time of each streamed chunk that carries generated text."""
        times = []
        body = dict(model=self.model, messages=messages, temperature=0.0, max_tokens=max_tokens, stream=True)
        with httpx.stream("POST", self.url + "/v1/chat/completions", json=body, timeout=3600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                        times.append(time.perf_counter())
        return times

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def aggregate_decode(server: Server, streams: int, tokens: int) -> dict:
    """Tokens/s over all streams while all of them decode."""
    results, sent = [None] * streams, [0.0] * streams
    barrier = threading.Barrier(streams)

    def one(i):
        barrier.wait()
        sent[i] = time.perf_counter()
        results[i] = server.stream_times([{"role": "user", "content": f"{PROMPT} ({i})"}], tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start, end = max(r[0] for r in results), min(r[-1] for r in results)
    inside = sum(sum(1 for t in r if start < t <= end) for r in results)
    per_stream = statistics.median((len(r) - 1) / (r[-1] - r[0]) for r in results)
    ttft = statistics.median(r[0] - s for r, s in zip(results, sent))
    return dict(value=inside / (end - start) if end > start else float("nan"), window_s=end - start,
                per_stream_tps=per_stream, ttft_s=ttft, chunks=[len(r) for r in results])


STEPS = """
import json, statistics, sys, time
import mlx_minicpmv
from mlx_minicpmv import load
from mlx_minicpmv.cpu import gemv_layers
from mlx_minicpmv.server.scheduler import Scheduler
from mlx_minicpmv.server.sequence import Job

model, processor = load(sys.argv[1])
sizes, rounds, steps = json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
one_row, few_rows = gemv_layers.one_row, gemv_layers.few_rows
never = lambda x: False  # noqa: E731


def step_ms(batch, mode):
    # "gemv": as loaded (one row through OpenBLAS's sgemv, 2-8 through rows_matmul); "rows":
    # rows_matmul for one row too; "gemm": MLX's matmul for every row count.
    gemv_layers.one_row = one_row if mode == "gemv" else never
    gemv_layers.few_rows = never if mode == "gemm" else few_rows
    for layer in model.language_model.modules():  # a compiled decode step keeps the matmuls it was traced with
        if getattr(layer, "_decode_step", None) is not None:
            object.__setattr__(layer, "_decode_step", None)
    scheduler = Scheduler(model, processor, max_concurrency=batch)
    for i in range(batch):
        scheduler.submit(Job([{"role": "user", "content": f"Write a long story about a fox ({i})."}],
                             max_tokens=steps + 64))
    while len(scheduler.batch) < batch:
        scheduler.pump()
    scheduler.pump()  # the first step of this batch size (a compile) is not timed
    tic = time.perf_counter()
    for _ in range(steps):
        scheduler.pump()
    scheduler.close()
    return 1e3 * (time.perf_counter() - tic) / steps


modes = {b: ("gemv", "rows", "gemm") if b == 1 else ("rows", "gemm") for b in sizes}
times = {f"{b}/{m}": [] for b in sizes for m in modes[b]}
for _ in range(rounds):  # round robin, so that the machine's load falls on every figure alike
    for b in sizes:
        for m in modes[b]:
            times[f"{b}/{m}"].append(step_ms(b, m))
            print(f"{b} rows, {m}: {times[f'{b}/{m}'][-1]:.1f} ms a step", file=sys.stderr, flush=True)
print("STEPS " + json.dumps({k: statistics.median(v) for k, v in times.items() if v}))
"""


def decode_steps(model: Path, sizes, rounds: int, steps: int) -> dict:
    """The server's decode step in-process (no HTTP), by batch size: as loaded, with cpu/kernels'
    rows_matmul for one row too, and with MLX's GEMM throughout; medians over alternating rounds."""
    proc = subprocess.run([sys.executable, "-c", STEPS, str(model), json.dumps(sizes), str(rounds), str(steps)],
                          stdout=subprocess.PIPE, text=True, cwd=ROOT)  # progress on stderr, as it comes
    if proc.returncode:
        raise RuntimeError(f"the step timing failed ({proc.returncode}); its error is above")
    return json.loads(proc.stdout.split("STEPS ")[-1])


def first_token_s(server: Server, messages, timeout_s: float):
    """(seconds to a one-token answer, the answer, None), or (seconds, None, why) where there was
    none: past ``timeout_s``, or the server answered with an error (a peer's own time limit)."""
    tic = time.perf_counter()
    try:
        answer = server.chat(messages, max_tokens=1, timeout_s=timeout_s)
    except httpx.TimeoutException:
        return time.perf_counter() - tic, None, f"no answer within {timeout_s:.0f} s"
    except RuntimeError as e:  # an error status; the table says which
        return time.perf_counter() - tic, None, f"{e} (after {time.perf_counter() - tic:.0f} s)"
    return time.perf_counter() - tic, answer, None


def video_turns(server: Server, video: str, timeout_s: float) -> dict:
    first = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                          {"type": "text", "text": QUESTION}]}]
    t_first, answer, why = first_token_s(server, first, timeout_s)
    if answer is None:
        return dict(error=f"first question: {why}", first_s=None, followup_s=None)
    follow = first + [{"role": "assistant", "content": answer["choices"][0]["message"]["content"] or ""},
                      {"role": "user", "content": FOLLOW_UP}]
    t_follow, second, why = first_token_s(server, follow, timeout_s)
    if second is None:
        return dict(error=f"follow-up: {why}", first_s=t_first, followup_s=None)
    return dict(first_s=t_first, followup_s=t_follow, ratio=t_follow / t_first,
                first_prompt_tokens=answer.get("usage", {}).get("prompt_tokens"),
                followup_usage=second.get("usage"))


def run_impl(name: str, cmd, model_name: str, video: str, args, out: Path) -> dict:
    figures = {}
    server = Server(cmd, model_name, out / f"serve-{name}.log")
    try:
        for n in args.streams:
            aggregate_decode(server, n, 8)  # warm-up: a batch of this size runs once before it is timed
            row = aggregate_decode(server, n, args.decode_tokens)
            figures[f"decode{n}"], figures[f"ttft{n}"] = row["value"], row["ttft_s"]
            report(f"{name}/decode x{n}", **row)
        if not args.skip_video:
            row = video_turns(server, video, args.video_timeout_s)
            figures.update(video_first=row["first_s"], video_followup=row["followup_s"])
            report(f"{name}/video", **row)
    finally:
        server.close()
    return figures


def table(results: dict, streams) -> str:
    impls = list(results)
    lines = [f"{'figure':44}" + "".join(f"{i:>12}" for i in impls)
             + ("     ours / mlx-vlm" if len(impls) == 2 else "")]

    def row(label, key, fmt):
        vals = [results[i].get(key) for i in impls]
        cells = "".join(f"{fmt.format(v) if v is not None else '-':>12}" for v in vals)
        ratio = f"{vals[0] / vals[1]:>15.2f}x" if len(vals) == 2 and None not in vals and vals[1] else ""
        lines.append(f"{label:44}{cells}{ratio}")

    for n in streams:
        row(f"decode, {n} concurrent stream(s) (tokens/s)", f"decode{n}", "{:.2f}")
    for n in streams[1:]:
        for i in impls:
            r = results[i]
            if r.get("decode1") and r.get(f"decode{n}"):
                r[f"scale{n}"] = r[f"decode{n}"] / r["decode1"]
        row(f"aggregate at {n} streams / 1 stream", f"scale{n}", "{:.2f}")
    for n in streams:
        row(f"first token, {n} stream(s), median (s)", f"ttft{n}", "{:.2f}")
    row("first token, 60 s video question (s)", "video_first", "{:.1f}")
    row("first token, follow-up question (s)", "video_followup", "{:.2f}")
    for i in impls:
        r = results[i]
        if r.get("video_first") and r.get("video_followup"):
            r["followup_pct"] = 100 * r["video_followup"] / r["video_first"]
    row("follow-up / first question (%)", "followup_pct", "{:.1f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="default: benchmarks/out/serve-SIZE")
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--impls", nargs="*", default=["ours"])
    parser.add_argument("--streams", nargs="*", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--decode-tokens", type=int, default=48)
    parser.add_argument("--variant", default="float32")
    parser.add_argument("--skip-video", action="store_true")
    parser.add_argument("--steps-only", action="store_true",
                        help="only the in-process decode step by batch size: as loaded, all through the rows "
                             "kernel, all through MLX's GEMM (no server)")
    parser.add_argument("--step-rounds", type=int, default=3)
    parser.add_argument("--video-timeout-s", type=float, default=600,
                        help="give up on a video question after this long (reported as such)")
    args = parser.parse_args()
    out = Path(args.out or OUT / f"serve-{args.size}")
    out.mkdir(parents=True, exist_ok=True)
    if args.size == "small":
        hf = build_small(out)
    else:  # compare.py's full-size checkpoint stays as it is: a spellable copy here
        hf = out / "hf-random-real-config"
        if not (hf / "model.safetensors").exists():
            import shutil

            shutil.copytree(build(OUT), hf, dirs_exist_ok=True)
            spellable(hf)
    convert_all(out, hf, [args.variant], args.impls)
    if args.steps_only:
        print("load before:", machine_load(), flush=True)
        ms = decode_steps(out / f"mlx-{args.variant}", args.streams, args.step_rounds, 16)
        print("load after:", machine_load(), flush=True)
        names = {"gemv": "as loaded", "rows": "rows kernel", "gemm": "MLX GEMM"}
        print(f"{'decode step, in-process':36}{'ms/step':>10}{'tokens/s':>10}{'x 1 stream':>12}")
        for key, value in ms.items():
            b, mode = key.split("/")
            rate = int(b) * 1e3 / value
            print(f"{b} stream(s), {names[mode]:21}{value:>10.1f}{rate:>10.2f}{rate / (1e3 / ms['1/gemv']):>12.2f}")
        return
    media = out / "media"
    if not args.skip_video:
        make_media(media, hf)
    media.mkdir(exist_ok=True)
    video = media / "v720.mp4"

    before = machine_load()
    print("load before:", before, flush=True)
    results = {}
    if "ours" in args.impls:
        model = out / f"mlx-{args.variant}"
        cmd = [sys.executable, "-m", "mlx_minicpmv.server", "--model", model, "--media-dir", media,
               "--max-concurrency", str(max(args.streams, default=1)), "--temp", "0"]
        results["ours"] = run_impl("ours", cmd, model.name, "v720.mp4", args, out)
    if "mlx-vlm" in args.impls:
        model = out / f"vlm-{args.variant}"
        # mlx-vlm's server loads the model a request names; it listens on 0.0.0.0 unless told.
        cmd = [vlm_python(out), "-c", VLM_SERVER, "--model", model, "--host", "127.0.0.1",
               "--max-num-seqs", str(max(args.streams, default=1))]
        results["mlx-vlm"] = run_impl("mlx-vlm", cmd, str(model), str(video), args, out)
    after = machine_load()
    print("load after:", after, flush=True)
    print()
    merged = keep(out / "serve.json", results, dict(before=before, after=after, streams=args.streams,
                                                      video=not args.skip_video, decode_tokens=args.decode_tokens))
    print(table(merged, sorted({int(k[6:]) for r in merged.values() for k in r if k.startswith("decode")})))


def keep(path: Path, results: dict, run: dict) -> dict:
    """Merge this run's figures into the file's: {impl: {figure: value, "runs": [...]}}."""
    import datetime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    run = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=commit, **run)
    merged = json.loads(path.read_text()) if path.exists() else {}
    for impl, figures in results.items():
        mine = merged.setdefault(impl, {})
        mine.update(figures)
        mine.setdefault("runs", []).append(dict(run, figures=sorted(figures)))
    write_atomic(path, json.dumps(merged, indent=2))
    order = sorted(merged, key=lambda impl: impl != "ours")  # ours first: the ratio column is ours / mlx-vlm
    return {impl: {k: v for k, v in merged[impl].items() if k != "runs"} for impl in order}


# mlx-vlm's server with the BLAS ours uses loaded first (as peers/mlx_vlm_peer.py does).
VLM_SERVER = f"""
import importlib.util, runpy, sys
spec = importlib.util.spec_from_file_location("blas", {str(ROOT / 'mlx_minicpmv' / 'cpu' / 'blas.py')!r})
blas = importlib.util.module_from_spec(spec); spec.loader.exec_module(blas); blas.load()
sys.argv = ["mlx_vlm.server"] + sys.argv[1:]
runpy.run_module("mlx_vlm.server", run_name="__main__")
"""


if __name__ == "__main__":
    main()
