"""Config and checkpoint variants the real 4.6 does not use but the format allows: an untied
``lm_head``, ``merger_times`` > 1, and quantisation with per-layer settings."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from mlx_minicpmv import load
from mlx_minicpmv.convert import convert
from tests.checkpoints import build_checkpoint
from tests.media import noise_image
from tests.parity import LOGIT_TOL

VARIANTS = {
    "untied": dict(tie_word_embeddings=False),
    "merged twice": dict(merger_times=2),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory, torch_threads):
    root = tmp_path_factory.mktemp("variant")
    hf = build_checkpoint(root / "hf", seed=3, **VARIANTS[request.param])
    model, processor = load(convert(str(root / "hf"), str(root / "mlx"), dtype="float32"))
    return request.param, hf, model, processor


def test_text_logits_match_reference(variant):
    import torch

    name, hf, model, processor = variant
    ids = processor("Describe the quick brown fox, then compare the two.").input_ids
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(np.array(ids)).long()).logits.numpy()
    if name == "untied":
        head, table = hf.lm_head.weight, hf.model.language_model.embed_tokens.weight
        assert not torch.equal(head, table), "the head is its own matrix, or this test means nothing"
    np.testing.assert_allclose(np.array(model(ids)), ref, atol=LOGIT_TOL, rtol=0)


@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_vision_features_match_reference(variant, mode):
    """A 448² image is one 32x32-patch slice: with the merger run twice it still divides."""
    import torch

    _, hf, model, processor = variant
    packed = processor.process_images([noise_image(448, 448, seed=9)], downsample_mode=mode)
    with torch.no_grad():
        ref = hf.model.get_image_features(torch.from_numpy(packed.pixel_values), torch.from_numpy(packed.target_sizes),
                                          downsample_mode=mode).pooler_output
    ref = torch.cat(ref).numpy()
    ours = np.array(model.encode_slices(mx.array(packed.pixel_values), packed.target_sizes, mode))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_per_layer_quantisation_settings_load_as_written(tiny, tmp_path):
    """A mixed-precision checkpoint (mlx-lm's per-layer entries in config.json's quantization:
    8 bits for the MLP down projections, 4 for the rest, none for the DeltaNet gates) loads into
    the same layers and gives the logits of the model that was saved."""
    from mlx_lm.utils import quantize_model, save_model

    from mlx_minicpmv.model import Model

    _, processor = tiny.load()
    # The portable path on both sides: quantize_model makes MLX's QuantizedLinear, and the
    # question here is which layers get which bits, not the CPU kernels (checked below).
    model, _ = load(tiny.mlx_path, compute_dtype=None, cpu_kernels=False)  # a copy of its own to quantise

    def mixed(path, module):
        if not Model.quant_predicate(path, module):
            return False
        return dict(group_size=32, bits=8, mode="affine") if path.endswith("down_proj") else True

    config = json.loads((tiny.mlx_path / "config.json").read_text())
    model, config = quantize_model(model, config, 32, 4, quant_predicate=mixed)
    assert any(isinstance(v, dict) and v.get("bits") == 8 for v in config["quantization"].values())
    out = tmp_path / "mixed"
    out.mkdir()
    ids = processor("Describe the quick brown fox, then compare the two.").input_ids
    expected = np.array(model(ids))
    save_model(out, model)
    (out / "config.json").write_text(json.dumps(config))
    for f in tiny.mlx_path.iterdir():
        if f.suffix in (".json", ".jinja") and f.name != "config.json":
            shutil.copyfile(f, out / f.name)
    loaded, _ = load(out, compute_dtype=None, cpu_kernels=False)
    np.testing.assert_array_equal(np.array(loaded(ids)), expected)
    # Through the CPU's quantised kernels (a different summation order): within 1e-4 of the scale.
    on_cpu, _ = load(out, compute_dtype=None)
    np.testing.assert_allclose(np.array(on_cpu(ids)), expected, rtol=0, atol=1e-4 * np.abs(expected).max())
