"""Adapters in a model: put in (LoRA, DoRA, or full layers unfrozen), saved, loaded and fused.

The layers are mlx-lm's (``LoRALinear``, ``DoRALinear``, ``linear_to_lora_layers``), so the
files are mlx-lm's too: ``adapters.safetensors`` (the trainable parameters under the model's
names) and ``adapter_config.json`` (the run's options, with ``fine_tune_type``, ``num_layers``,
``lora_parameters`` and, ours, ``train_vision``). mlx-lm's layers hold ``lora_a`` (in, r) and
``lora_b`` (r, out) with ``scale``; PEFT's ``lora_A.weight`` and ``lora_B.weight`` are their
transposes with ``scaling = lora_alpha / r``.
"""

import io
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from ..files import write_atomic

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
ADAPTER_LEAVES = {"lora_a", "lora_b", "m"}
FINE_TUNE_TYPES = ("lora", "dora", "full")
LORA_DEFAULTS = {"rank": 8, "dropout": 0.0, "scale": 20.0}


class VisionBlocks(nn.Module):
    """The vision tower's layers, its window merger and the final merger as one ``layers``
    list, the shape ``linear_to_lora_layers`` walks (it owns none of them)."""

    def __init__(self, model):
        super().__init__()
        self.layers = [*model.vision_tower.encoder.layers, model.vision_tower.vit_merger, *model.merger.mlp]


def check_options(fine_tune_type: str, num_layers: int, model) -> None:
    if fine_tune_type not in FINE_TUNE_TYPES:
        raise ValueError(f"fine_tune_type {fine_tune_type!r} is not one of {', '.join(FINE_TUNE_TYPES)}")
    total = len(model.language_model.layers)
    if num_layers > total or num_layers == 0 or num_layers < -1:
        raise ValueError(f"--num-layers {num_layers}: the language model has {total} layers; give 1 to {total}, "
                         "or -1 for all")


def apply(model, fine_tune_type: str = "lora", num_layers: int = 16, lora_parameters: dict = None,
          train_vision: bool = False) -> None:
    """Freeze ``model`` and make trainable what the options say: adapters on every linear layer
    of the last ``num_layers`` decoder layers (or those ``lora_parameters["keys"]`` name), or
    those layers whole (``full``); with ``train_vision`` the vision tower and both mergers too."""
    check_options(fine_tune_type, num_layers, model)
    model.freeze()
    lm = model.language_model
    if fine_tune_type == "full":
        for layer in lm.layers[-max(num_layers, 0):]:
            layer.unfreeze()
        if train_vision:
            model.vision_tower.unfreeze()
            model.merger.unfreeze()
        return
    params = {**LORA_DEFAULTS, **(lora_parameters or {})}
    dora = fine_tune_type == "dora"
    linear_to_lora_layers(lm, num_layers, params, use_dora=dora)
    if train_vision:  # every linear layer there: the keys name language-model layers
        linear_to_lora_layers(VisionBlocks(model), -1, dict(params, keys=None), use_dora=dora)


def trainable_weights(model) -> dict:
    return dict(tree_flatten(model.trainable_parameters()))


def save(model, path, iteration: int = None) -> None:
    """The trainable parameters as safetensors, written atomically (an interrupted write
    leaves the file that was there), with the iteration they are from in the metadata (where
    ``--resume-adapter-file`` continues the count; mlx-lm ignores it)."""
    buffer = io.BytesIO()
    mx.save_safetensors(buffer, trainable_weights(model), {} if iteration is None else {"iteration": str(iteration)})
    write_atomic(path, buffer.getvalue())


def saved_iteration(file) -> int:
    """The iteration an adapter file was saved at (0 where it does not say)."""
    try:
        _, metadata = mx.load(str(file), return_metadata=True)
        return int(metadata.get("iteration", 0))
    except (ValueError, RuntimeError):
        return 0


def save_config(config: dict, folder) -> None:
    write_atomic(Path(folder) / CONFIG_FILE, json.dumps(config, indent=4, sort_keys=True, default=str) + "\n")


def read_config(folder) -> dict:
    folder = Path(folder).expanduser()
    file = folder / CONFIG_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such adapter folder; pass the --adapter-path a training run wrote")
    if not file.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; pass the folder a training run wrote its adapters to")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e}); train again or restore the file") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return config


def load_weights(model, file, fine_tune_type: str) -> None:
    """Adapter (or, for ``full``, layer) weights into a model that has the adapters in,
    each checked against the model's parameter of that name (mlx-lm's checks)."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such adapter file")
    try:
        weights = mx.load(str(file))
    except Exception as e:  # mlx's own RuntimeError/ValueError text
        raise ValueError(f"{file}: cannot be read ({str(e).splitlines()[0]}); the file is truncated or not safetensors") from None
    params = dict(tree_flatten(model.parameters()))
    if fine_tune_type != "full":
        params = {k: v for k, v in params.items() if k.rsplit(".", 1)[-1] in ADAPTER_LEAVES}
    wrong = [f"{k} is not an adapter parameter of this model" for k in weights if k not in params]
    wrong += [f"{k} has shape {tuple(v.shape)}, the model's {tuple(params[k].shape)}"
              for k, v in weights.items() if k in params and v.shape != params[k].shape]
    if wrong:
        raise ValueError(f"{file}: does not fit this model ({'; '.join(wrong[:3])}); was it trained on another model "
                         "or with other --num-layers, --fine-tune-type or lora_parameters?")
    model.load_weights(list(weights.items()), strict=False)


def load(model, adapter_path) -> dict:
    """Put the adapters of a training run's folder into ``model`` (as trained, unfused);
    returns the run's config."""
    config = read_config(adapter_path)
    fine_tune_type = config.get("fine_tune_type", "lora")
    apply(model, fine_tune_type, config.get("num_layers", 16), config.get("lora_parameters"),
          config.get("train_vision", False))
    load_weights(model, Path(adapter_path).expanduser() / ADAPTER_FILE, fine_tune_type)
    model.freeze()
    return config


def fuse(model, dequantize: bool = False) -> None:
    """Merge every adapter into the layer under it (quantised layers are quantised again,
    unless ``dequantize``)."""
    fused = [(name, m.fuse(dequantize=dequantize)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
