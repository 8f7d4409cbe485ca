"""The MiniCPM-V checkpoints already on this computer: the app's own models folder, the Hugging
Face cache and LM Studio's models folder, each with its size and precision. Plain files and
JSON, no Qt and no MLX: a checkpoint is recognised by its ``config.json``'s ``model_type``.
"""

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

MODEL_TYPES = ("minicpmv4_6", "minicpmv4_7")
DTYPES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class FoundModel:
    path: str
    name: str
    source: str  # where it was found, in words
    size: int  # bytes of weights
    precision: str  # "4-bit", "8-bit", "bf16", "fp32", ...
    model_type: str

    @property
    def size_text(self) -> str:
        return f"{self.size / 1e9:.1f} GB" if self.size >= 1e8 else f"{self.size / 1e6:.0f} MB"


def _config(path: Path) -> Optional[dict]:
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _header_dtype(file: Path) -> Optional[str]:
    """The dtype holding most of a safetensors file's values, read from its JSON header."""
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return None
    counts = {}
    for name, entry in header.items():
        if name != "__metadata__" and isinstance(entry, dict) and "dtype" in entry:
            n = 1
            for d in entry.get("shape", []):
                n *= d
            counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + n
    return max(counts, key=counts.get) if counts else None


def precision(path: Path, config: dict) -> str:
    q = config.get("quantization") or config.get("quantization_config")
    if isinstance(q, dict) and isinstance(q.get("bits"), int):
        return f"{q['bits']}-bit"
    weights = sorted(path.glob("*.safetensors"))
    stored = _header_dtype(weights[0]) if weights else None
    stored = stored or config.get("torch_dtype") or config.get("dtype") or ""
    return DTYPES.get(stored, str(stored).lower())


def describe(path, name: str = "", source: str = "") -> Optional[FoundModel]:
    """A checkpoint directory as a ``FoundModel``, or None when it is not a MiniCPM-V model."""
    path = Path(path).expanduser()
    config = _config(path)
    if config is None or config.get("model_type") not in MODEL_TYPES:
        return None
    size = 0
    for file in path.glob("*.safetensors"):
        try:
            size += file.stat().st_size  # the HF cache links to blobs: stat follows the link
        except OSError:
            pass
    return FoundModel(str(path), name or path.name, source, size, precision(path, config), config["model_type"])


def hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def lm_studio_folders() -> List[Path]:
    home = Path.home()
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def _directories(root: Path, depth: int) -> Iterator[Path]:
    """``root``'s sub-directories down to ``depth`` levels, in name order."""
    if depth == 0 or not root.is_dir():
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        yield child
        yield from _directories(child, depth - 1)


def _hf_snapshots(cache: Path) -> Iterator[Tuple[str, Path]]:
    """(owner/name, snapshot directory) of each cached model repo: the revision ``main`` points
    at, else the newest snapshot."""
    for repo in sorted(cache.glob("models--*")):
        name = repo.name[len("models--"):].replace("--", "/")
        ref = repo / "refs" / "main"
        try:
            snapshot = repo / "snapshots" / ref.read_text().strip()
        except OSError:
            snapshot = None
        if snapshot is None or not snapshot.is_dir():
            snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
            if not snapshots:
                continue
            snapshot = snapshots[-1]
        yield name, snapshot


def find_models(app_models: Optional[Path] = None) -> List[FoundModel]:
    """Every MiniCPM-V checkpoint in the usual places, the app's own first."""
    found: List[FoundModel] = []
    seen = set()

    def add(model: Optional[FoundModel]):
        if model is not None and os.path.realpath(model.path) not in seen:
            seen.add(os.path.realpath(model.path))
            found.append(model)

    if app_models is not None:
        for folder in _directories(Path(app_models), 2):
            add(describe(folder, source="This app"))
    for name, snapshot in _hf_snapshots(hf_cache()):
        add(describe(snapshot, name=name, source="Hugging Face cache"))
    for root in lm_studio_folders():
        for folder in _directories(root, 3):
            relative = folder.relative_to(root)
            add(describe(folder, name=str(relative), source="LM Studio"))
    return found
