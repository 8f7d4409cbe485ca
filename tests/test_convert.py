"""convert.py: layout, atomic writes, dtypes and quantisation, and its command line."""

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_minicpmv import load
from mlx_minicpmv.convert import convert, main
from mlx_minicpmv.generate import stream_tokens

METADATA = ["chat_template.jinja", "generation_config.json", "preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json"]


def prompt(processor):
    return processor("Describe the quick brown fox, then compare the two.")


def test_conversion_layout(tiny):
    out = tiny.mlx_path
    for name in METADATA + ["config.json", "model.safetensors"]:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and config["model_type"] == "minicpmv4_6"
    assert "vision_config" in config and "quantization" not in config
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def test_refuses_to_overwrite_unless_forced(tiny, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        convert(str(tiny.hf_path), str(target), dtype="float32")
    assert (target / "keep.txt").read_text() == "mine"
    convert(str(tiny.hf_path), str(target), dtype="float32", force=True)
    assert (target / "model.safetensors").exists() and not (target / "keep.txt").exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_interrupted_conversion_leaves_nothing_loadable(tiny, tmp_path, monkeypatch, failure):
    import mlx_lm.utils

    real_save = mlx_lm.utils.save_model

    def save_then_fail(path, model, **kw):
        real_save(path, model, **kw)  # the weights are there, the rest is not
        raise failure

    monkeypatch.setattr(mlx_lm.utils, "save_model", save_then_fail)
    target = tmp_path / "out"
    with pytest.raises(type(failure)) as info:
        convert(str(tiny.hf_path), str(target), dtype="float32")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [], "no partial directory is left behind"
    if isinstance(failure, OSError):
        assert "no space left on the device" in str(info.value) and "free some space" in str(info.value)


def test_offline_repo_id_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["--hf-path", "openbmb/MiniCPM-V-4.6", "--mlx-path", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert "cannot download openbmb/MiniCPM-V-4.6" in err and "not reachable" in err
    assert not (tmp_path / "x").exists()


def test_command_line_converts(tiny, tmp_path, capsys):
    assert main(["--hf-path", str(tiny.hf_path), "--mlx-path", str(tmp_path / "cli"), "--dtype", "float32"]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert (tmp_path / "cli" / "model.safetensors").exists()


# Logit error of each conversion against fp32 on the tiny model: (mean |error| bound, minimum
# correlation with the fp32 logits). The random tiny model amplifies weight rounding far more
# than a trained one (bf16 alone moves its logits by 0.03 on average, 4-bit by 0.6 with logits
# of mean size 0.8), so the bounds catch a broken cast or quantiser (correlation near 0), not
# quality; the README gives the measured figures.
VARIANTS = {
    "bfloat16": (dict(dtype="bfloat16"), 0.1, 0.99),
    "float16": (dict(dtype="float16"), 0.02, 0.999),
    "8-bit": (dict(dtype="float32", quantize=True, q_bits=8, q_group_size=32), 0.15, 0.98),
    "4-bit": (dict(dtype="float32", quantize=True, q_bits=4, q_group_size=32), 1.2, 0.4),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lower_precision_conversions_load_and_generate(tiny, tmp_path, variant):
    kwargs, mean_bound, min_corr = VARIANTS[variant]
    out = convert(str(tiny.hf_path), str(tmp_path / variant), **kwargs)
    model, processor = load(out, compute_dtype=None)  # the stored precision, as on Metal
    config = json.loads((out / "config.json").read_text())
    if kwargs.get("quantize"):
        assert config["quantization"]["bits"] == kwargs["q_bits"]
        assert "scales" in str(model.language_model.layers[0].mlp.gate_proj.parameters().keys())
        # the DeltaNet gate projections stay unquantised by design
        assert "scales" not in model.language_model.layers[0].linear_attn.in_proj_a.parameters()
    else:
        assert model.language_model.embed_tokens.weight.dtype == getattr(mx, kwargs["dtype"])
        assert model.language_model.layers[0].linear_attn.A_log.dtype == mx.float32
    reference, _ = tiny.load()
    inputs = prompt(processor)
    ours = np.array(model(inputs.input_ids).astype(mx.float32))
    ref = np.array(reference(inputs.input_ids))
    error = np.abs(ours - ref)
    corr = np.corrcoef(ours.ravel(), ref.ravel())[0, 1]
    print(f"{variant}: |logit error| vs fp32 mean {error.mean():.4f} max {error.max():.4f}, correlation {corr:.4f}")
    assert error.mean() < mean_bound and corr > min_corr
    tokens = [t for t, *_ in stream_tokens(model, inputs, max_tokens=8, temperature=0.0)]
    assert len(tokens) == 8


@pytest.mark.parametrize("variant", ["bfloat16", "4-bit"])
def test_cpu_widens_half_and_quantised_weights_to_float32(tiny, tmp_path, variant):
    """On the CPU backend ``load`` runs every checkpoint in fp32 (its bf16 and quantised matmuls
    are far slower): the same function as the stored precision, computed wider."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_minicpmv.loading import default_compute_dtype

    assert mx.default_device() == mx.cpu and default_compute_dtype() == mx.float32
    kwargs = VARIANTS[variant][0]
    out = convert(str(tiny.hf_path), str(tmp_path / variant), **kwargs)
    stored, processor = load(out, compute_dtype=None)
    widened, _ = load(out)
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in widened.named_modules())
    assert {v.dtype for _, v in tree_flatten(widened.parameters())} == {mx.float32}
    inputs = prompt(processor)
    a = np.array(stored(inputs.input_ids).astype(mx.float32))
    b = np.array(widened(inputs.input_ids))
    # bf16 activations round at every layer in the stored run; the widened one keeps fp32
    assert np.abs(a - b).max() < (0.5 if variant == "bfloat16" else 1e-3)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
