"""``load(path_or_repo) -> (model, processor)``: strict, with errors that name the file and the fix."""

import json
from pathlib import Path
from typing import Dict, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .config import ModelConfig
from .model import Model
from .model.gemv_layers import use_gemv

# What a converted or original checkpoint directory must or may hold, for downloads.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or of another model."""


def resolve(path_or_repo, allow_patterns=ALLOW_PATTERNS, tqdm_class=None) -> Path:
    """A local directory as is, or a Hugging Face repo id downloaded through huggingface_hub
    (its own progress bars, or ``tqdm_class``'s, and its cache). Offline, one line says so."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the model directory that holds config.json")
        return path
    if str(path_or_repo).startswith((".", "/", "~")) or str(path_or_repo).count("/") != 1:
        raise CheckpointError(
            f"{path_or_repo}: no such directory, and not a Hugging Face repo id (owner/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(str(path_or_repo), allow_patterns=allow_patterns, tqdm_class=tqdm_class))
    except RepositoryNotFoundError:
        raise CheckpointError(f"{path_or_repo}: no such repo on the Hugging Face Hub (or it is private)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise CheckpointError(
            f"cannot download {path_or_repo}: the Hugging Face Hub is not reachable and the model is "
            f"not in the local cache ({type(e).__name__}); connect to the internet, or pass a local "
            "directory made by convert.py"
        ) from None


def load_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.exists():
        raise CheckpointError(f"{path}: no config.json; is this a MiniCPM-V 4.6 model directory?")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}); convert or download the model again") from None


def read_weights(path: Path) -> Tuple[Dict[str, mx.array], Dict[str, str]]:
    """All tensors of the directory's safetensors files (lazily), and the file of each."""
    files = sorted(path.glob("*.safetensors"))
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
    if problems:
        raise CheckpointError(
            f"{where}: the weights do not match config.json: " + "; ".join(problems)
            + ". The checkpoint is incomplete or from another model; convert it again with convert.py"
        )


def default_compute_dtype():
    """float32 where MLX runs on the CPU, else the stored precision.

    MLX's CPU backend multiplies bf16 matrices ~34x and quantised ones ~700x slower than
    fp32 (measured on the CI machine: 7.5 and 0.35 against 257 GFLOP/s), so there a half-precision or
    quantised checkpoint is widened once at load, at the memory cost of fp32 weights. On Metal
    (and CUDA) the stored precision runs as is.
    """
    return mx.float32 if mx.default_device() == mx.cpu else None


def widen(model: Model, dtype) -> None:
    """Dequantise every quantised layer (mlx-lm's ``dequantize_model``) and cast the floating
    parameters to ``dtype``."""
    from mlx_lm.utils import dequantize_model

    dequantize_model(model)
    model.set_dtype(dtype)


def transpose_tied_head(model: Model) -> None:
    """Hold the tied embedding as a transposed view of a (hidden, vocab) array on the CPU,
    where the GEMV extension (model/gemv_layers.py, 20 ms for the head) is unavailable.

    MLX's CPU matmul is always a GEMM, and for one decoded token ``h @ W.T`` over the 248k x
    1024 head took 76 ms against 48 ms with the transposed layout (measured), a seventh of a
    decode step. The view leaves the math and the memory as they were; embedding lookups
    gather columns instead (6 ms for 512 tokens). The copy costs ~4 s once at load.
    """
    emb = model.language_model.embed_tokens
    if model.config.text_config.tie_word_embeddings and isinstance(emb, nn.Embedding):
        emb.weight = mx.contiguous(emb.weight.T).T


def load_model(path, lazy: bool = False, compute_dtype="auto") -> Model:
    """A model from a local directory holding an HF or converted checkpoint.

    ``compute_dtype``: "auto" (``default_compute_dtype``), None to run the stored precision,
    or an MLX floating dtype that every layer is widened to (see ``widen``).
    """
    path = Path(path)
    config = load_config(path)
    model = build_model(config)
    weights, origin = read_weights(path)
    weights = model.sanitize(weights)
    origin = {k: origin.get(k) or origin.get(f"model.{k}") for k in weights}
    apply_quantization(model, config, weights)
    check_weights(model, weights, origin, path)
    model.load_weights(list(weights.items()), strict=True)
    if compute_dtype == "auto":
        compute_dtype = default_compute_dtype()
    if compute_dtype is not None:
        widen(model, compute_dtype)
    if mx.default_device() == mx.cpu and not use_gemv(model.language_model):
        transpose_tied_head(model)
    if not lazy:
        mx.eval(model.parameters())
    model.eval()
    return model


def load(path_or_repo, lazy: bool = False, compute_dtype="auto"):
    """``(model, processor)`` from a converted directory, an HF checkpoint directory or a repo id.

    On MLX's CPU backend the weights run in float32 whatever their stored precision
    (``compute_dtype="auto"``; see ``default_compute_dtype``); ``compute_dtype=None`` keeps it.
    """
    from .processing.processor import Processor

    path = resolve(path_or_repo)
    model = load_model(path, lazy=lazy, compute_dtype=compute_dtype)
    return model, Processor.from_pretrained(path)
