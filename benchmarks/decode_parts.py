"""Where a decoded token's time goes on the CPU path: its parts one at a time, each against the
bytes of weights it reads.

    python benchmarks/decode_parts.py --model benchmarks/out/mlx-4bit

Prints the ops in a token's graph and, as medians of ``--repeats`` evaluations each, the milliseconds
(and GB/s of weights read) of: the whole token (the language model and the greedy pick, no
Python loop), the DeltaNet layers, the attention layers, the tied head, and the log-softmax and
argmax of sampling. The layers run one after another in one graph, each on the token's hidden
state, so a part's time holds its layers' own overheads but not the rest of the token's. The
roofline is ``compare.py``'s (its bandwidth probe; run that for the comparable figure).
"""

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mlx_minicpmv  # noqa: E402  (before mlx.core: the BLAS it loads, cpu/blas.py)
import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlx_minicpmv import load  # noqa: E402
from mlx_minicpmv.cpu.language_layers import CpuDecoderLayer  # noqa: E402


def median_ms(compute, repeats: int) -> float:
    mx.eval(compute())  # warm: compiled steps, scratch, caches
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        mx.eval(compute())
        times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1e3


def weight_bytes(modules) -> int:
    return sum(v.nbytes for m in modules for _, v in tree_flatten(m.parameters()))


def graph_ops(out: mx.array) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        dot = Path(tmp) / "token.dot"
        mx.export_to_dot(str(dot), out)
        return len(re.findall(r"shape=rectangle", dot.read_text()))  # an op's node; arrays are ellipses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a converted checkpoint (convert.py)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--context", type=int, default=16, help="prompt tokens in the cache before the token")
    args = parser.parse_args()

    model, _ = load(args.model)
    lm = model.language_model
    if not isinstance(lm.layers[0], CpuDecoderLayer):
        sys.exit("the CPU path is not in (MLX on a GPU, or MLX_MINICPMV_CPU_KERNELS=off): nothing of it to measure")
    cache = lm.make_cache()
    mx.eval(lm(lm.embed_tokens(mx.array([list(range(1000, 1000 + args.context))])), cache=cache))
    token = mx.array([[1234]])
    x = lm.embed_tokens(token)
    mx.eval(x)
    linear = [(i, layer) for i, layer in enumerate(lm.layers) if layer.is_linear]
    attention = [(i, layer) for i, layer in enumerate(lm.layers) if not layer.is_linear]

    def deltanet():  # each layer on the token's state; the cache is read, not advanced
        h = x
        for i, layer in linear:
            h = (layer.fused_step(h, cache[i][0], cache[i][1]) or layer.decode_step(h, cache[i][0], cache[i][1]))[0]
        return h

    def attention_layers():  # each through its decode path, its cache put back after
        h, kept = x, [(cache[i].keys, cache[i].values, cache[i].offset) for i, _ in attention]
        for i, layer in attention:
            h = layer(h, cache=cache[i])
        mx.eval(h)
        for (i, _), (keys, values, offset) in zip(attention, kept):
            cache[i].keys, cache[i].values, cache[i].offset = keys, values, offset
        return h

    logits = lm.embed_tokens.as_linear(lm.norm(x))
    mx.eval(logits)

    def whole():  # the caches grow by a token a call
        return mx.argmax(lm(lm.embed_tokens(token), cache=cache)[:, -1], -1)

    head = [lm.embed_tokens] if model.config.text_config.tie_word_embeddings else [lm.lm_head]
    parts = [
        ("whole token (model + argmax)", whole, weight_bytes([lm])),
        (f"{len(linear)} DeltaNet layers", deltanet, weight_bytes([layer for _, layer in linear])),
        (f"{len(attention)} attention layers", attention_layers, weight_bytes([layer for _, layer in attention])),
        ("head", lambda: lm.embed_tokens.as_linear(x) if head[0] is lm.embed_tokens else head[0](x), weight_bytes(head)),
        ("log-softmax", lambda: logits - model.logsumexp(logits, axis=-1, keepdims=True), 0),
        ("argmax", lambda: mx.argmax(logits, axis=-1), 0),
    ]
    mx.eval(whole())  # the first token makes what later ones reuse (compiled steps, the conv's taps)
    out = whole()
    print(f"{args.model}: {graph_ops(out)} ops in a decoded token's graph", flush=True)
    mx.eval(out)
    print("| part | ms | weights GB | GB/s |\n|---|---|---|---|")
    for name, compute, nbytes in parts:
        ms = median_ms(compute, args.repeats)
        rate = f"{nbytes / ms / 1e6:.1f}" if nbytes else ""
        print(f"| {name} | {ms:.2f} | {nbytes / 1e9:.3f} | {rate} |", flush=True)


if __name__ == "__main__":
    main()
