"""Hugging Face checkpoint -> MLX weights, optionally quantised (mlx-lm's ``convert`` conventions).

Weights stream lazily from the safetensors files through cast/quantise into shards written
one at a time, so converting does not need twice the model in memory. Everything is written
into a hidden temporary directory beside the target and renamed at the end: an interrupted
or failed conversion never leaves a directory that looks loadable.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx

from .config import MODEL_TYPES
from .files import current_umask
from .loading import read_checkpoint, resolve
from .model import Model

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
# Files beside the weights that the processor, tokenizer and generation read.
METADATA_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
SKIP_FILES = {"config.json", "model.safetensors.index.json"}


def stored_dtype(config: dict) -> str:
    name = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    return name if name in DTYPES else "bfloat16"


def check_replaceable(target: Path, source: Path) -> None:
    """``--force`` replaces only a model convert.py made: a directory of a MiniCPM-V
    ``config.json``, weights and the metadata files it copies, and nothing else."""
    if target.is_symlink() or not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a converted model; --force replaces only a model "
                              "directory made by convert.py, so choose another --mlx-path")
    if target == source or target in source.parents:
        raise FileExistsError(f"{target} holds the checkpoint being converted; choose another --mlx-path")
    others = sorted(p.name for p in target.iterdir()
                    if not (p.is_file() and not p.is_symlink() and p.suffix in (".safetensors", *METADATA_SUFFIXES)))
    listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    try:
        model_type = json.loads((target / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type not in MODEL_TYPES:
        held = f"it holds {listed}" if others else "no MiniCPM-V config.json" if any(target.iterdir()) else "it is empty"
        raise FileExistsError(f"{target} is not a converted MiniCPM-V model ({held}); --force replaces only a "
                              "model directory made by convert.py, so choose another --mlx-path")
    if others:
        raise FileExistsError(f"{target} holds more than a converted model ({listed}); --force would delete "
                              "them, so move them or choose another --mlx-path")


def write_model(target: Path, model, config: dict, source: Path) -> None:
    """``model``'s weights, ``config`` and ``source``'s metadata files (tokenizer, templates,
    processor and generation configs) into ``target``, through a hidden temporary directory
    renamed at the end (an existing ``target`` is replaced only then)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the model is shared like any folder
        from mlx_lm.utils import save_model

        save_model(tmp, model, donate_model=True)
        with open(tmp / "config.json", "w") as f:
            json.dump(config, f, indent=2)
        for file in sorted(source.iterdir()):
            if file.is_file() and file.suffix in METADATA_SUFFIXES and file.name not in SKIP_FILES:
                shutil.copyfile(file, tmp / file.name)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == 28:
            raise OSError(28, f"no space left on the device while writing {target}; free some space "
                              "(the full model needs about 2.6 GB in bf16, 0.8 GB at 4 bits) and convert again") from None
        raise


def convert(hf_path: str, mlx_path: str = "mlx_model", dtype: str = None, quantize: bool = False,
            q_bits: int = 4, q_group_size: int = 64, force: bool = False) -> Path:
    target = Path(mlx_path).expanduser().resolve()
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists; pass --force to replace it, or choose another --mlx-path")
    source = resolve(hf_path)
    if target.exists():
        check_replaceable(target, source.resolve())
    config, model, weights = read_checkpoint(source)
    dtype = dtype or stored_dtype(config)
    weights = {
        k: v.astype(DTYPES[dtype]) if Model.cast_predicate(k) and mx.issubdtype(v.dtype, mx.floating) else v
        for k, v in weights.items()
    }
    model.load_weights(list(weights.items()))
    del weights
    config = dict(config, dtype=dtype)
    config.pop("torch_dtype", None)
    if quantize:
        from mlx_lm.utils import quantize_model

        model, config = quantize_model(model, config, q_group_size, q_bits, quant_predicate=Model.quant_predicate)

    write_model(target, model, config, source)
    return target


def configure_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert MiniCPM-V 4.6 or 4.7 from Hugging Face to MLX.")
    parser.add_argument("--hf-path", "--model", required=True,
                        help="A local Hugging Face checkpoint directory or a repo id (openbmb/MiniCPM-V-4.6).")
    parser.add_argument("--mlx-path", default="mlx_model", help="Directory to write the MLX model to.")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="Float type of the unquantised weights (default: the checkpoint's own).")
    parser.add_argument("-q", "--quantize", action="store_true", help="Quantise the weights.")
    parser.add_argument("--q-bits", type=int, choices=[4, 8], default=4, help="Bits per quantised weight.")
    parser.add_argument("--q-group-size", type=int, choices=[32, 64, 128], default=64, help="Quantisation group size.")
    parser.add_argument("--force", action="store_true", help="Replace --mlx-path if it exists.")
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks.")
    return parser


def main(argv=None) -> int:
    from .cli import report_errors

    args = configure_parser().parse_args(argv)

    def run() -> int:
        start = time.perf_counter()
        out = convert(args.hf_path, args.mlx_path, args.dtype, args.quantize, args.q_bits,
                      args.q_group_size, args.force)
        size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        print(f"Wrote {out} ({size / 1e9:.2f} GB) in {time.perf_counter() - start:.1f} s; "
              f"peak memory {mx.get_peak_memory() / 1e9:.2f} GB")
        return 0

    return report_errors(run, args.verbose, interrupted="interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(main())
