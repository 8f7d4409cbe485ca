"""convert.py: layout, atomic writes, dtypes and quantisation, and its command line."""

import json
import os
import re

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
    convert(str(tiny.hf_path), str(target), dtype="float32")
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        convert(str(tiny.hf_path), str(target), dtype="float32")
    stale = target / "model.safetensors"
    stale.write_bytes(b"stale")
    convert(str(tiny.hf_path), str(target), dtype="float32", force=True)  # a converted model is replaced
    assert stale.stat().st_size > 100 and sorted(tmp_path.iterdir()) == [target]


def project_dir(root):
    """A directory of the user's own work: what --force must never delete."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "thesis.tex").write_text("years of work")
    (root / "data").mkdir()
    (root / "data" / "results.csv").write_text("1,2,3")
    return root


def tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


@pytest.mark.parametrize("case", ["project", "project with a model config", "empty", "regular file",
                                  "the source itself", "current directory"])
def test_force_replaces_only_a_converted_model(tiny, tmp_path, monkeypatch, capsys, case):
    """--force on anything but a directory convert.py made is refused in one line naming what
    is in the way, and nothing is touched (no stray .old- or .partial- entries either)."""
    import shutil

    source = tiny.hf_path
    if case == "project":
        target = project_dir(tmp_path / "work")
    elif case == "project with a model config":  # a model's config.json beside the user's files
        target = project_dir(tmp_path / "work")
        shutil.copyfile(tiny.mlx_path / "config.json", target / "config.json")
        shutil.copyfile(tiny.mlx_path / "model.safetensors", target / "model.safetensors")
    elif case == "empty":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "regular file":
        target = tmp_path / "notes.txt"
        target.write_text("keep")
    elif case == "the source itself":
        source = tmp_path / "hf"
        shutil.copytree(tiny.hf_path, source)
        target = source
    else:
        target = project_dir(tmp_path / "project")
        monkeypatch.chdir(target)
    before = tree(tmp_path)
    mlx_path = "." if case == "current directory" else str(target)
    code = main(["--hf-path", str(source), "--mlx-path", mlx_path, "--force"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "choose another --mlx-path" in err, err
    expected = {"project": "thesis.tex", "project with a model config": "data, thesis.tex", "empty": "it is empty",
                "regular file": "is a file", "the source itself": "holds the checkpoint being converted",
                "current directory": "thesis.tex"}[case]
    assert expected in err, err
    assert tree(tmp_path) == before


def test_written_files_follow_the_umask(tiny, tmp_path):
    """Converted models are shared like any folder: 0755/0644 under umask 022, not mkdtemp's 0700."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = convert(str(tiny.hf_path), str(tmp_path / "shared"), dtype="float32")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o644}


def test_interrupt_while_importing_prints_no_traceback(tmp_path):
    """Ctrl-C during convert.py's imports (seconds of MLX and tokenizer libraries) ends quietly."""
    import subprocess
    import sys
    from pathlib import Path

    fake = tmp_path / "mlx_lm"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise KeyboardInterrupt\n")  # as if Ctrl-C came while it loaded
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{root}")
    run = subprocess.run([sys.executable, str(root / "convert.py"), "--hf-path", "x", "--mlx-path", str(tmp_path / "o")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 130 and "Traceback" not in run.stderr and "interrupted" in run.stderr


def test_forced_conversion_keeps_the_old_model_until_the_new_one_is_written(tiny, tmp_path, monkeypatch):
    """--force over a working model that then fails (full disk): the old model still loads."""
    import mlx_lm.utils

    target = convert(str(tiny.hf_path), str(tmp_path / "m"), dtype="float32")
    before = sorted(p.name for p in target.iterdir())

    def full_disk(path, model, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mlx_lm.utils, "save_model", full_disk)
    with pytest.raises(OSError, match="no space left"):
        convert(str(tiny.hf_path), str(target), dtype="bfloat16", force=True)
    assert sorted(p.name for p in target.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"], "no partial directory is left behind"
    load(target)  # and loads
    assert json.loads((target / "config.json").read_text())["dtype"] == "float32"


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
    out = capsys.readouterr().out
    assert "Wrote" in out
    assert (tmp_path / "cli" / "model.safetensors").exists()
    written = sum(f.stat().st_size for f in (tmp_path / "cli").glob("*.safetensors"))
    said = re.search(r"\(([0-9.]+) GB\)", out)
    assert said and abs(float(said.group(1)) - written / 1e9) <= 0.005, f"the size said is not the size written: {out}"


def test_an_old_model_that_cannot_be_removed_does_not_fail_the_conversion(tiny, tmp_path, monkeypatch):
    """--force: once the new model is in place, an old copy the system will not delete (a file
    held open on a network drive) is left hidden beside it; the conversion did not fail."""
    target = convert(str(tiny.hf_path), str(tmp_path / "m"), dtype="float32")
    rmdir = os.rmdir

    def refuse_old(path, *args, **kwargs):
        if ".m.old-" in os.fspath(path):
            raise PermissionError(13, "Device or resource busy", os.fspath(path))
        return rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", refuse_old)
    assert convert(str(tiny.hf_path), str(target), dtype="bfloat16", force=True) == target
    monkeypatch.undo()
    assert json.loads((target / "config.json").read_text())["dtype"] == "bfloat16"
    load(target)


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
    model, processor = load(out, compute_dtype=None, cpu_kernels=False)  # the stored precision, as on Metal
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
    tokens = [s.token for s in stream_tokens(model, inputs, max_tokens=8, temperature=0.0)]
    assert len(tokens) == 8


@pytest.mark.parametrize("variant", ["bfloat16", "4-bit"])
def test_cpu_widens_half_and_quantised_weights_to_float32(tiny, tmp_path, variant, monkeypatch):
    """Where the CPU kernels are unavailable (tests/test_cpu_kernels.py covers them), ``load``
    runs every checkpoint in fp32 on the CPU backend (its bf16 and quantised matmuls are far
    slower): the same function as the stored precision, computed wider."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_minicpmv.cpu import kernels as cpu_kernels
    from mlx_minicpmv.loading import default_compute_dtype

    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_failed", "off for this test")

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
