import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mlx_minicpmv  # noqa: E402,F401  (first: it picks the BLAS before mlx.core loads)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the app's tests run without a screen

from tests.checkpoints import build_checkpoint  # noqa: E402

# Tiny configs that between them move every constant the port could bake in (spec §13).
CONFIGS = {
    # insert_layer_id 1, DeltaNet with more value than key heads (2 -> 4), 16x mode.
    "base": dict(text=dict(linear_key_head_dim=32, linear_value_head_dim=32)),
    # Another insert_layer_id and layer pattern, Hk == Hv, other head sizes, 4x mode. 
    # Linear head dims are 32 in both: with 12 or 16 the random gated-DeltaNet norms made even
    # the reference's fp32 logits drift up to 2e-3 from its float64 ones, too noisy for 1e-3.
    "alt": dict(
        insert_layer_id=2, downsample_mode="4x",
        vision=dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=4, intermediate_size=96),
        text=dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=32, linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=32,
                  linear_value_head_dim=32,
                  layer_types=["full_attention", "linear_attention", "full_attention", "linear_attention"]),
    ),
}


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(2)
    return torch


class Tiny:
    """A tiny random checkpoint: its HF directory, the transformers model, and our conversion."""

    def __init__(self, root: Path, name: str):
        from mlx_minicpmv.convert import convert

        self.name = name
        self.hf_path = root / f"hf-{name}"
        self.hf = build_checkpoint(self.hf_path, seed=1 if name == "alt" else 0, **CONFIGS[name])
        self.mlx_path = convert(str(self.hf_path), str(root / f"mlx-{name}"), dtype="float32")
        self._loaded = None

    def load(self):
        from mlx_minicpmv import load

        if self._loaded is None:
            self._loaded = load(self.mlx_path)
        return self._loaded

    @property
    def hf64(self):
        """The reference in float64: what tells a conditioning problem of the random model
        (where fp32 itself is noisy) from a porting error."""
        if getattr(self, "_hf64", None) is None:
            import copy

            self._hf64 = copy.deepcopy(self.hf).double()
        return self._hf64

    @property
    def mode(self) -> str:
        return self.hf.config.downsample_mode


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny(tiny_root, torch_threads):
    return Tiny(tiny_root, "base")


@pytest.fixture(scope="session", params=sorted(CONFIGS))
def any_tiny(request, tiny_root, torch_threads):
    """Each tiny config in turn (built once per session)."""
    cache = request.config.cache_tiny = getattr(request.config, "cache_tiny", {})
    if request.param not in cache:
        cache[request.param] = Tiny(tiny_root, request.param) if request.param != "base" else request.getfixturevalue("tiny")
    return cache[request.param]
