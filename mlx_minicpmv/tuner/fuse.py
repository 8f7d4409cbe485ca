"""``python -m mlx_minicpmv fuse``: a model with its adapters merged, written as a converted model.

mlx-lm's ``fuse``: the adapters of ``--adapter-path`` go into ``--model`` at its stored
precision, each merges into the layer under it (a quantised layer is quantised again unless
``--dequantize``), and the result is written like ``convert.py``'s output (atomically, with
the tokenizer and processor files), loadable like any other model.
"""

import argparse
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fuse fine-tuned adapters into the base model.")
    p.add_argument("--model", required=True, help="The base model: a converted directory or a Hugging Face repo id.")
    p.add_argument("--adapter-path", default="adapters", help="The folder a training run wrote (default: adapters).")
    p.add_argument("--save-path", default="fused_model", help="Where to write the fused model (default: fused_model).")
    p.add_argument("--dequantize", action="store_true", help="Write a quantised base's layers unquantised.")
    p.add_argument("--force", action="store_true", help="Replace --save-path if it holds a converted model.")
    p.add_argument("--verbose", action="store_true", help="Show tracebacks on errors.")
    return p


def fuse_model(model_path, adapter_path, save_path, dequantize: bool = False, force: bool = False) -> Path:
    from ..convert import check_replaceable, write_model
    from ..loading import read_checkpoint, resolve
    from . import adapters

    target = Path(save_path).expanduser().resolve()
    source = resolve(model_path)
    if target.exists():
        if not force:
            raise FileExistsError(f"{target} already exists; pass --force to replace it, or choose another --save-path")
        check_replaceable(target, source.resolve())
    config, model, weights = read_checkpoint(source)
    model.load_weights(list(weights.items()), strict=True)
    del weights
    adapters.load(model, adapter_path)
    adapters.fuse(model, dequantize=dequantize)
    if dequantize:
        from mlx_lm.utils import dequantize_model

        model = dequantize_model(model)
        config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    write_model(target, model, config, source)
    return target


def main(argv=None) -> int:
    from ..cli import report_errors

    args = build_parser().parse_args(argv)

    def run() -> int:
        start = time.perf_counter()
        out = fuse_model(args.model, args.adapter_path, args.save_path, args.dequantize, args.force)
        print(f"Wrote {out} in {time.perf_counter() - start:.1f} s")
        return 0

    return report_errors(run, args.verbose, interrupted="interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(main())
