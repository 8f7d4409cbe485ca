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

# MiniCPM-V 4.7 (canvas M-RoPE): an untied head in 16x mode (as the 1B's 1.55 B parameters
# imply), and in 4x mode a tied one with mrope sections other than the default [11, 11, 10]
# (head_dim 64: 8 rotary frequencies, so the sections decide which axis each one turns with).
CANVAS_CONFIGS = {
    "canvas": dict(version="4.7", seed=2, tie_word_embeddings=False,
                   text=dict(linear_key_head_dim=32, linear_value_head_dim=32)),
    "canvas-4x": dict(
        version="4.7", seed=4, insert_layer_id=2, downsample_mode="4x",
        vision=dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=4, intermediate_size=96),
        text=dict(num_attention_heads=2, num_key_value_heads=1, head_dim=64, linear_num_key_heads=2,
                  linear_num_value_heads=2, linear_key_head_dim=32, linear_value_head_dim=32,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                   "mrope_section": [4, 1, 3]},
                  layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention"]),
    ),
}
CONFIGS.update(CANVAS_CONFIGS)


@pytest.fixture(scope="session", autouse=True)
def cpu_extension_built():
    """On a fresh machine the first model load builds the CPU GEMV extension (15-80 s, once per
    MLX version, cached): build it before any test rather than inside one that waits on a timer
    (the app's 60 s waits failed so on a fresh clone)."""
    from mlx_minicpmv.cpu import gemv, kernels

    gemv.load()
    kernels.load()  # the quantised/half kernels (mlx_minicpmv/cpu/kernels), likewise


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
        self.hf = build_checkpoint(self.hf_path, **{"seed": 1 if name == "alt" else 0, **CONFIGS[name]})
        self.mlx_path = convert(str(self.hf_path), str(root / f"mlx-{name}"), dtype="float32")
        self._loaded = {}
        self._references = {}

    def reference(self, key, compute):
        """``compute()``'s result, once per session: a reference output that the CPU and the
        portable path are both compared with (the reference is the slow side of each test)."""
        if key not in self._references:
            self._references[key] = compute()
        return self._references[key]

    def load(self, cpu_kernels: bool = True):
        """(model, processor) of the fp32 conversion: on the CPU path (mlx_minicpmv/cpu's
        specialisations in), or with ``cpu_kernels=False`` on the portable path that Metal runs."""
        from mlx_minicpmv import load

        if cpu_kernels not in self._loaded:
            self._loaded[cpu_kernels] = load(self.mlx_path, cpu_kernels=cpu_kernels)
        return self._loaded[cpu_kernels]

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


def tiny_model(request, name: str) -> Tiny:
    """The tiny checkpoint ``name`` of CONFIGS, built once per session."""
    cache = request.config.cache_tiny = getattr(request.config, "cache_tiny", {})
    if name not in cache:
        cache[name] = Tiny(request.getfixturevalue("tiny_root"), name)
    return cache[name]


@pytest.fixture(scope="session")
def tiny(request, torch_threads):
    return tiny_model(request, "base")


@pytest.fixture(scope="session")
def alt_tiny(request, torch_threads):
    return tiny_model(request, "alt")


@pytest.fixture(scope="session", params=sorted(CONFIGS))
def any_tiny(request, torch_threads):
    """Each tiny config, 4.6 and 4.7, in turn (built once per session)."""
    return tiny_model(request, request.param)


@pytest.fixture(scope="session", params=sorted(CANVAS_CONFIGS))
def canvas_tiny(request, torch_threads):
    """Each tiny 4.7 config in turn (built once per session)."""
    return tiny_model(request, request.param)


@pytest.fixture
def prompts(monkeypatch):
    """Every ``ProcessorOutput`` the processor makes during the test: what the model is given."""
    from mlx_minicpmv.processing.processor import Processor

    made = []
    real = Processor.__call__

    def recorded(self, *args, **kwargs):
        made.append(real(self, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(Processor, "__call__", recorded)
    return made


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "torchvision: compares with transformers' video processor, which needs torchvision; left out "
        "of the default run, run by scripts/test_torchvision.sh (pytest -m torchvision in its own venv)")


def pytest_collection_modifyitems(config, items):
    """Leave the torchvision-marked tests out unless ``-m`` names the marker: deselected (and
    counted as such), since the default suite's torch has no torchvision to run them."""
    if "torchvision" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("torchvision") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
