"""``python -m mlx_minicpmv lora``: LoRA, DoRA or full fine-tuning on images, video and text.

mlx-lm's ``lora`` command with its flags and meanings (``--train``, ``--test``, ``--data``,
``--fine-tune-type``, ``--num-layers``, ``-c config.yaml`` whose values the flags override...),
plus ``--train-vision`` and the media options of ``generate``. Here ``--mask-prompt`` is on by
default (the loss is on the answers; ``--no-mask-prompt`` trains on the whole conversation).
The training step runs the portable model (MLX's own ops, as on Metal): the CPU
specialisations (``mlx_minicpmv/cpu``) have no gradients, but for the DeltaNet layers' chunked
delta rule, which MLX's CPU backend trains through (``load_for_training``).
"""

import argparse
import math
import re
import sys
import time
from pathlib import Path

import yaml

from ..options import argtype

# YAML 1.1 reads "1e-5" as a string; mlx-lm's loader reads it as a float, and so does this one.
YAML_LOADER = type("Loader", (yaml.SafeLoader,), {})
YAML_LOADER.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))

OPTIMIZERS = ("adam", "adamw", "muon", "sgd", "adafactor")

CONFIG_DEFAULTS = {
    "model": None,
    "train": False,
    "test": False,
    "data": "data",
    "fine_tune_type": "lora",
    "optimizer": "adam",
    "optimizer_config": {name: {} for name in OPTIMIZERS},
    "seed": 0,
    "num_layers": 16,
    "batch_size": 4,
    "iters": 1000,
    "val_batches": 25,
    "learning_rate": 1e-5,
    "steps_per_report": 10,
    "steps_per_eval": 200,
    "resume_adapter_file": None,
    "adapter_path": "adapters",
    "save_every": 100,
    "test_batches": 500,
    "max_seq_length": 2048,
    "grad_checkpoint": False,
    "grad_accumulation_steps": 1,
    "lr_schedule": None,
    "lora_parameters": {"rank": 8, "dropout": 0.0, "scale": 20.0},
    "mask_prompt": True,
    "train_vision": False,
    "max_slice_nums": None,
    "downsample_mode": None,
    "max_frames": 128,
    "fps": None,
    "stack_frames": None,
    "config": None,
    "verbose": False,
}
# Whole numbers and their least value (-1 = "all" where mlx-lm allows it).
COUNTS = {"num_layers": -1, "batch_size": 1, "iters": 1, "val_batches": -1, "steps_per_report": 1,
          "steps_per_eval": 1, "save_every": 1, "test_batches": -1, "max_seq_length": 2,
          "grad_accumulation_steps": 1, "seed": 0}


def count(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LoRA, DoRA or full fine-tuning of MiniCPM-V on images, video and text.")
    p.add_argument("--model", help="A converted model directory or a Hugging Face repo id (a quantised one trains as QLoRA).")
    p.add_argument("--train", action="store_true", default=None, help="Do training.")
    p.add_argument("--test", action="store_true", default=None, help="Evaluate on the test set (after training).")
    p.add_argument("--data", help="Folder with train.jsonl, valid.jsonl and test.jsonl (default: data).")
    p.add_argument("--fine-tune-type", choices=["lora", "dora", "full"], help="lora (default), dora or full.")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="Optimizer (default adam).")
    p.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=None,
                   help="Loss on the assistant's answers only (default; --no-mask-prompt: on every token).")
    p.add_argument("--num-layers", type=count(-1), help="Decoder layers to fine-tune, from the last (default 16; -1: all).")
    p.add_argument("--batch-size", type=count(1), help="Minibatch size (default 4).")
    p.add_argument("--iters", type=count(1), help="Iterations to train for (default 1000).")
    p.add_argument("--val-batches", type=count(-1), help="Validation batches, -1 for the whole set (default 25).")
    p.add_argument("--learning-rate", type=positive_float, help="Learning rate (default 1e-5).")
    p.add_argument("--steps-per-report", type=count(1), help="Steps between loss reports (default 10).")
    p.add_argument("--steps-per-eval", type=count(1), help="Steps between validations (default 200).")
    p.add_argument("--grad-accumulation-steps", type=count(1), help="Steps accumulated before each update (default 1).")
    p.add_argument("--resume-adapter-file", help="Adapter weights to continue training from.")
    p.add_argument("--adapter-path", help="Folder the adapters are saved to (and tested from) (default: adapters).")
    p.add_argument("--save-every", type=count(1), help="Save the adapters every N iterations (default 100).")
    p.add_argument("--test-batches", type=count(-1), help="Test batches, -1 for the whole set (default 500).")
    p.add_argument("--max-seq-length", type=count(2), help="Longest example in tokens, media included; longer "
                   "ones are cut from the end with a warning (default 2048).")
    p.add_argument("-c", "--config", help="A YAML file of these options (flags given here win).")
    p.add_argument("--grad-checkpoint", action="store_true", default=None,
                   help="Recompute each layer's activations in the backward: less memory, more time.")
    p.add_argument("--train-vision", action="store_true", default=None,
                   help="Also train the vision tower and the mergers (frozen by default).")
    p.add_argument("--seed", type=count(0), help="The random seed (default 0).")
    p.add_argument("--max-slice-nums", type=argtype("max_slice_nums"), help="Most slices per image (default 9).")
    p.add_argument("--downsample-mode", choices=["16x", "4x"], help="Vision tokens per patch grid (default 16x).")
    p.add_argument("--max-frames", type=argtype("max_num_frames"), help="Most video frames (default 128).")
    p.add_argument("--fps", type=argtype("fps"), help="Video frames sampled per second (default 1).")
    p.add_argument("--stack-frames", type=argtype("stack_frames"), help="Frames per second composed into one "
                   "extra image beside each sampled frame (default 1: none).")
    p.add_argument("--verbose", action="store_true", default=None, help="Show tracebacks on errors.")
    return p


def read_config(path) -> dict:
    """A ``-c`` YAML file's options, each known and of the right kind."""
    path = Path(path).expanduser()
    try:
        config = yaml.load(path.read_text(), YAML_LOADER)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of options, such as 'iters: 600'")
    unknown = sorted(set(config) - set(CONFIG_DEFAULTS) - {"config"})
    if unknown:
        raise ValueError(f"{path}: unknown option{'s' * (len(unknown) > 1)} {', '.join(unknown)}; the options are "
                         "the flags' names with underscores (num_layers, lora_parameters, ...)")
    for key, least in COUNTS.items():
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ValueError(f"{path}: {key} must be a whole number of at least {least}, got {value!r}")
    lora = config.get("lora_parameters")
    if lora is not None:
        if not isinstance(lora, dict) or set(lora) - {"keys", "rank", "scale", "dropout"}:
            raise ValueError(f"{path}: lora_parameters takes keys, rank, scale and dropout")
        if "alpha" in lora:
            raise ValueError(f"{path}: lora_parameters takes scale (mlx-lm's; PEFT's lora_alpha / rank), not alpha")
        config["lora_parameters"] = {**CONFIG_DEFAULTS["lora_parameters"], **lora}
    return config


def parse_args(argv=None):
    """Flags, then the ``-c`` file's values for what the flags left unset, then the defaults."""
    import types

    args = vars(build_parser().parse_args(argv))
    if args.get("config"):
        for key, value in read_config(args["config"]).items():
            if args.get(key) is None:
                args[key] = value
    for key, value in CONFIG_DEFAULTS.items():
        if args.get(key) is None:
            args[key] = value
    return types.SimpleNamespace(**args)


def build_optimizer(args):
    import mlx.optimizers as optim
    from mlx_lm.tuner.utils import build_schedule

    name = args.optimizer.lower()
    classes = dict(adam=optim.Adam, adamw=optim.AdamW, muon=optim.Muon, sgd=optim.SGD, adafactor=optim.Adafactor)
    if name not in classes:
        raise ValueError(f"optimizer {args.optimizer!r} is not one of {', '.join(classes)}")
    lr = build_schedule(args.lr_schedule) if args.lr_schedule else args.learning_rate
    return classes[name](learning_rate=lr, **(args.optimizer_config or {}).get(name, {}))


def load_for_training(path):
    """The model on the portable path at its stored precision (a quantised one stays quantised:
    QLoRA), and where MLX computes on the CPU its float weights widened to float32 (its bf16
    matmul is ~34x slower there) and the DeltaNet layers' chunked delta rule
    (``seam.specialise_for_training``); and the processor."""
    import mlx.core as mx
    import mlx.nn as nn

    from ..cpu import seam
    from ..loading import load_model, resolve, widen
    from ..processing.processor import Processor

    path = resolve(path)
    model = load_model(path, compute_dtype=None, cpu_kernels=False)
    if seam.applies(True):
        widen(model, seam.compute_dtype(), keep=lambda m: isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)))
        if seam.applies():  # unless MLX_MINICPMV_CPU_KERNELS=off: then the path a Mac runs
            seam.specialise_for_training(model)
        mx.eval(model.parameters())
    return model, Processor.from_pretrained(path)


def adapter_config(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("verbose", "config")}


def train_model(args, model, train_set, valid_set, print_fn=print, training_callback=None) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from . import adapters, trainer

    mx.random.seed(args.seed)
    adapters.apply(model, args.fine_tune_type, args.num_layers, args.lora_parameters, args.train_vision)
    start = 0
    if args.resume_adapter_file is not None:
        print_fn(f"Loading fine-tuned weights from {args.resume_adapter_file}")
        adapters.load_weights(model, args.resume_adapter_file, args.fine_tune_type)
        start = adapters.saved_iteration(args.resume_adapter_file)
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    print_fn(f"Trainable parameters: {100 * trainable / total:.3f}% ({trainable / 1e6:.3f}M/{total / 1e6:.3f}M)")
    folder = Path(args.adapter_path)
    folder.mkdir(parents=True, exist_ok=True)
    adapters.save_config(adapter_config(args), folder)
    training_args = trainer.TrainingArgs(
        batch_size=args.batch_size, iters=args.iters, val_batches=args.val_batches,
        steps_per_report=args.steps_per_report, steps_per_eval=args.steps_per_eval, steps_per_save=args.save_every,
        adapter_file=folder / adapters.ADAPTER_FILE, grad_checkpoint=args.grad_checkpoint,
        grad_accumulation_steps=args.grad_accumulation_steps, train_vision=args.train_vision, seed=args.seed)
    trainer.train(model, build_optimizer(args), train_set, valid_set, training_args, training_callback,
                  start=start, print_fn=print_fn)


def run(args, print_fn=print, training_callback=None) -> int:
    from . import adapters, trainer
    from .data import load_datasets

    if not args.model:
        raise ValueError("--model is required (a converted model directory or a Hugging Face repo id)")
    if not (args.train or args.test):
        raise ValueError("give --train, --test or both")
    print_fn("Loading pretrained model")
    model, processor = load_for_training(args.model)
    print_fn("Loading datasets")
    needed = (["train", "valid"] if args.train else []) + (["test"] if args.test else [])
    sets = load_datasets(args.data, processor, needed, mask_prompt=args.mask_prompt,
                         max_seq_length=args.max_seq_length, max_slice_nums=args.max_slice_nums,
                         downsample_mode=args.downsample_mode, max_num_frames=args.max_frames, fps=args.fps,
                         stack_frames=args.stack_frames)
    for name in needed:
        if name not in sets and name != "valid":
            raise FileNotFoundError(f"{Path(args.data) / (name + '.jsonl')}: no such file; --{name} needs it")
    if args.train:
        print_fn("Training")
        train_model(args, model, sets["train"], sets.get("valid"), print_fn, training_callback)
    elif args.adapter_path:
        adapters.load(model, args.adapter_path)
    if args.test:
        print_fn("Testing")
        test_loss = trainer.evaluate(model, sets["test"], args.batch_size, args.test_batches)
        print_fn(f"Test loss {test_loss:.3f}, Test ppl {math.exp(min(test_loss, 700)):.3f}.")
    return 0


def main(argv=None) -> int:
    from ..cli import report_errors
    from .trainer import TrainingStopped

    start = time.perf_counter()
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)

    def body() -> int:
        try:
            code = run(parse_args(argv))
        except TrainingStopped as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"Done in {time.perf_counter() - start:.1f} s.")
        return code

    return report_errors(body, verbose, interrupted="interrupted; the adapters of the last save are kept")


if __name__ == "__main__":
    sys.exit(main())
