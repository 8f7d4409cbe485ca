"""``load(path_or_repo) -> (model, processor)``: strict, with errors that name the file and the fix."""

import json
import os
from pathlib import Path
from typing import Dict, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .config import ModelConfig
from .cpu import seam
from .errors import CheckpointError
from .model import Model
from .model.minicpmv import READ_LOCK

# What a converted or original checkpoint directory must or may hold, for downloads.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def looks_like_a_path(path_or_repo) -> bool:
    """What only a path can be: a ``Path``, a name starting ``.``, ``/`` or ``~`` (a repo id
    never starts with ``.``), or any number of parts but the two of ``owner/name``."""
    text = str(path_or_repo)
    return isinstance(path_or_repo, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") != 1


def resolve(path_or_repo, allow_patterns=ALLOW_PATTERNS, tqdm_class=None) -> Path:
    """A local directory as is, or a Hugging Face repo id downloaded through huggingface_hub
    (its own progress bars, or ``tqdm_class``'s, and its cache). A name that can only be a path
    and is not there never reaches the Hub. Offline, one line says so."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the model directory that holds config.json")
        return path
    if looks_like_a_path(path_or_repo):
        raise CheckpointError(
            f"{path_or_repo}: no such directory (and not a Hugging Face repo id, which is owner/name); "
            "check the path, or make the model there with convert.py"
        )
    if path.parent.is_dir():  # models/nope: a mistyped local path, not a repo of a user "models"
        near = sorted(p.name for p in path.parent.iterdir() if p.is_dir() and not p.name.startswith("."))[:5]
        raise CheckpointError(
            f"{path_or_repo}: no such directory ({path.parent} holds {', '.join(near) or 'no model folders'}); "
            "check the name, or make the model there with convert.py"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(str(path_or_repo), allow_patterns=allow_patterns, tqdm_class=tqdm_class))
    except RepositoryNotFoundError:
        raise CheckpointError(f"{path_or_repo}: no such local directory, and no such repo on the Hugging Face Hub "
                              "(or it is private); check the name") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise CheckpointError(
            f"cannot download {path_or_repo}: there is no such local directory, the Hugging Face Hub is not "
            f"reachable and the model is not in the local cache ({type(e).__name__}); connect to the internet, "
            "or pass a local directory made by convert.py"
        ) from None


def load_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.exists():
        raise CheckpointError(f"{path}: no config.json; is this a MiniCPM-V 4.6 or 4.7 model directory?")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}); convert or download the model again") from None


def read_weights(path: Path) -> Tuple[Dict[str, mx.array], Dict[str, str]]:
    """All tensors of the directory's safetensors files (lazily), and the file of each."""
    files = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():  # a split checkpoint names its shards: a missing one is named, not counted
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a valid weight index ({e}); download or convert the model again") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(
                f"{path}: {', '.join(missing[:3])}{' and more' if len(missing) > 3 else ''} "
                f"{'is' if len(missing) == 1 else 'are'} missing ({len(shards)} shard{'s' * (len(shards) > 1)} listed in "
                f"{index.name}); "
                "the download or conversion is incomplete, download or convert it again")
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weight files; the conversion or download is incomplete")
    weights, origin = {}, {}
    for file in files:
        try:
            part = mx.load(str(file))
        except Exception as e:  # mlx raises RuntimeError/ValueError with its own text
            raise CheckpointError(
                f"{file}: cannot be read ({str(e).splitlines()[0]}); the file is truncated or corrupt, "
                "download or convert it again"
            ) from None
        weights.update(part)
        origin.update(dict.fromkeys(part, file.name))
    return weights, origin


# mlx-vlm's MiniCPM-V conversions (mlx-community's, what LM Studio downloads) nest the language
# model one level deeper and keep the window merger at the top; every other name, the norm
# offsets and the conv layouts are already ours. Its quantisation config is mlx-lm's.
MLX_VLM_PREFIXES = (("language_model.model.", "language_model."), ("vit_merger.", "vision_tower.vit_merger."))


def from_mlx_vlm(name: str) -> str:
    """Our name for a weight (or quantised layer) of an mlx-vlm conversion; ours pass unchanged."""
    for theirs, ours in MLX_VLM_PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return name


def our_names(weights: dict, origin: dict, config: dict):
    """``weights``, ``origin`` and ``config``'s per-layer quantisation entries under our names."""
    weights = {from_mlx_vlm(k): v for k, v in weights.items()}
    origin = {from_mlx_vlm(k): v for k, v in origin.items()}
    q = config.get("quantization")
    if isinstance(q, dict):
        config = dict(config, quantization={from_mlx_vlm(k): v for k, v in q.items()})
    return weights, origin, config


def build_model(config: dict) -> Model:
    try:
        return Model(ModelConfig.from_dict(config))
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"config.json: {e}") from None


def apply_quantization(model: Model, config: dict, weights: Dict[str, mx.array]) -> None:
    """Turn the layers that have quantised weights in the checkpoint into quantised layers."""
    q = config.get("quantization")
    if not q:
        return

    def predicate(path, module):
        if f"{path}.scales" not in weights:
            return False
        return q[path] if isinstance(q.get(path), dict) else True

    nn.quantize(model, group_size=q["group_size"], bits=q["bits"], mode=q.get("mode", "affine"),
                class_predicate=predicate)


def check_weights(model: Model, weights: Dict[str, mx.array], origin: Dict[str, str], where: Path) -> None:
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        files = sorted({origin.get(k, '?') for k in unexpected})
        problems.append(f"{len(unexpected)} unexpected weights in {', '.join(files)} (e.g. {', '.join(unexpected[:3])})")
    for key in sorted(set(expected) & set(weights)):
        if expected[key].shape != weights[key].shape:
            problems.append(
                f"{origin.get(key, '?')}: {key} has shape {tuple(weights[key].shape)}, "
                f"config.json implies {tuple(expected[key].shape)}"
            )
            break
    for key in sorted(set(expected) & set(weights)):
        # Any float width loads (and is cast); integers only where the layer holds them (quantised)
        want, got = expected[key].dtype, weights[key].dtype
        if (mx.issubdtype(want, mx.floating) and not mx.issubdtype(got, mx.floating)) or \
                (not mx.issubdtype(want, mx.floating) and got != want):
            problems.append(f"{origin.get(key, '?')}: {key} is {got}, where the model needs "
                            f"{'a float type' if mx.issubdtype(want, mx.floating) else want}")
            break
    if problems:
        raise CheckpointError(
            f"{where}: the weights do not match config.json: " + "; ".join(problems)
            + ". The checkpoint is incomplete or from another model; convert it again with convert.py"
        )


def read_checkpoint(path: Path) -> Tuple[dict, Model, Dict[str, mx.array]]:
    """What ``load`` and ``convert`` both read: ``config.json``, the model it describes (with
    quantised layers where the checkpoint has quantised weights), and the weights (lazily, in
    this package's layout, mlx-vlm's names mapped), checked against the model. Nothing is
    loaded into it yet."""
    config = load_config(path)
    model = build_model(config)
    weights, origin = read_weights(path)
    weights, origin, config = our_names(weights, origin, config)
    weights = model.sanitize(weights)
    origin = {k: origin.get(k) or origin.get(f"model.{k}") for k in weights}
    apply_quantization(model, config, weights)
    check_weights(model, weights, origin, path)
    return config, model, weights


def default_compute_dtype(cpu_kernels=None):
    """What ``compute_dtype="auto"`` means: the CPU seam's dtype where it applies
    (``cpu/seam.py``: float32), else None, the stored precision (Metal, CUDA)."""
    return seam.compute_dtype() if seam.applies(cpu_kernels) else None


def widen(model: Model, dtype, keep=None) -> None:
    """Cast the floating parameters to ``dtype``, then dequantise every quantised layer (as
    mlx-lm's ``dequantize_model``), except in the layers ``keep(layer)`` holds for: the CPU
    kernels read those as stored (``cpu/kernel_layers.py``). Scales and biases are widened
    first, so a layer stored with bf16 scales dequantises to exactly what its quantised matmul
    computes, not a bf16 rounding of it (mlx-vlm's 8-bit files: logits 0.29 from mlx-vlm's own
    float32 forward the other way round, 1e-4 this way)."""
    keep = keep or (lambda layer: False)
    kept = {id(m) for _, m in model.named_modules() if keep(m)}

    def cast():
        model.apply(lambda a: a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a,
                    lambda module, key, value: nn.Module.valid_parameter_filter(module, key, value)
                    and id(module) not in kept)

    cast()
    swaps = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) and id(m) not in kept:
            w = mx.dequantize(m["weight"], m["scales"], m.get("biases"), m.group_size, m.bits, mode=m.mode)
            new = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m) if isinstance(m, nn.QuantizedLinear) else nn.Embedding(*w.shape)
            new.weight = w
            if "bias" in m:
                new.bias = m["bias"]
            swaps.append((name, new))
    if swaps:
        model.update_modules(tree_unflatten(swaps))


def load_model(path, lazy: bool = False, compute_dtype="auto", cpu_kernels=None, adapter_path=None,
               defer_vision: bool = True) -> Model:
    """A model from a local directory holding an HF checkpoint (converted in memory, lazily,
    at its own precision), ours, or mlx-vlm's conversion (mlx-community's) as it is.

    ``compute_dtype``: "auto" (``default_compute_dtype``), None to run the stored precision,
    or an MLX floating dtype that every layer is widened to (see ``widen``).
    ``cpu_kernels``: whether the CPU specialisations go in where MLX runs on the CPU (None: as
    ``MLX_MINICPMV_CPU_KERNELS`` says, on by default; False: the portable path, as on Metal).
    ``adapter_path``: a folder of fine-tuned adapters (``tuner/adapters.py``), put in before the
    precision and the CPU layers are chosen, so that they are widened and specialised with the rest.
    ``defer_vision``: where the CPU seam applies, read the vision tower's weights on the first
    image or video rather than now (``Model.defer_vision``): a text-only session never holds them,
    0.5-1.1 GB of the 1.3B model's weights. False reads everything now.
    """
    if defer_vision and not lazy and seam.applies(cpu_kernels):
        with READ_LOCK, mx.stream(seam.any_thread_stream()):
            model = build(Path(path), compute_dtype, cpu_kernels, adapter_path)
            mx.eval(model.vision_parameters(False))
        model.defer_vision(path)
    else:
        model = build(Path(path), compute_dtype, cpu_kernels, adapter_path)
        if not lazy:
            mx.eval(model.parameters())
    model.eval()
    return model


def build(path: Path, compute_dtype, cpu_kernels, adapter_path) -> Model:
    """``load_model``'s model with its weights in place, lazily: nothing read yet."""
    _, model, weights = read_checkpoint(path)
    model.load_weights(list(weights.items()), strict=True)
    if adapter_path is not None:
        from .tuner import adapters

        adapters.load(model, adapter_path)
    if compute_dtype == "auto":
        compute_dtype = default_compute_dtype(cpu_kernels)
    if compute_dtype is not None:
        # fp32 where the seam applies: there the layers its kernels read stay as stored
        keep = seam.keeps_stored if seam.applies(cpu_kernels) and compute_dtype == mx.float32 else None
        widen(model, compute_dtype, keep)
    if seam.applies(cpu_kernels):
        seam.specialise(model)
    return model


def load(path_or_repo, lazy: bool = False, compute_dtype="auto", cpu_kernels=None, adapter_path=None):
    """``(model, processor)`` from a converted directory, an HF checkpoint directory or a repo id.

    On MLX's CPU backend the CPU specialisations go in (``mlx_minicpmv/cpu``) and the weights
    run in float32 whatever their stored precision (``compute_dtype="auto"``);
    ``compute_dtype=None`` keeps the stored precision, and ``cpu_kernels=False`` (or
    ``MLX_MINICPMV_CPU_KERNELS=off``) runs the portable model, the one Metal runs, on the CPU.
    ``adapter_path`` applies the adapters a ``python -m mlx_minicpmv lora`` run wrote there.
    On the CPU the vision tower's weights are read on the first image or video
    (``Model.defer_vision``); ``lazy=True`` defers all of them.
    """
    from .processing.processor import Processor

    path = resolve(path_or_repo)
    model = load_model(path, lazy=lazy, compute_dtype=compute_dtype, cpu_kernels=cpu_kernels, adapter_path=adapter_path)
    return model, Processor.from_pretrained(path)
