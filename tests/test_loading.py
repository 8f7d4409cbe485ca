"""load(): strict, with errors that name the file and the problem."""

import json
import shutil

import mlx.core as mx
import pytest

from mlx_minicpmv import load
from mlx_minicpmv.loading import CheckpointError


@pytest.fixture
def broken(tiny, tmp_path):
    """A fresh copy of the converted tiny model to damage."""
    path = tmp_path / "model"
    shutil.copytree(tiny.mlx_path, path)
    return path


def test_loads_converted_and_original_checkpoints(tiny):
    for path in (tiny.mlx_path, tiny.hf_path):
        model, processor = load(path)
        assert model.config.image_token_id == tiny.hf.config.image_token_id
        assert processor.eos_token_ids


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        load(tmp_path / "nowhere")


def test_missing_config(broken):
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load(broken)


def test_other_model_type(broken):
    config = json.loads((broken / "config.json").read_text())
    config["model_type"] = "llava"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'llava'.*only 'minicpmv4_6'"):
        load(broken)


def test_truncated_weights(broken):
    file = broken / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot be read .*truncated or corrupt"):
        load(broken)


def test_missing_weight(broken):
    weights = mx.load(str(broken / "model.safetensors"))
    weights.pop("language_model.norm.weight")
    mx.save_safetensors(str(broken / "model.safetensors"), weights)
    with pytest.raises(CheckpointError, match=r"1 weights missing \(e\.g\. language_model\.norm\.weight\)"):
        load(broken)


def test_shape_mismatch_names_file_and_key(broken):
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .*mlp\.down_proj\.weight has shape"):
        load(broken)


def test_no_weight_files(broken):
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing \(1 shard listed in model\.safetensors\.index\.json\)"):
        load(broken)


def test_unexpected_weights_from_another_model(broken):
    extra = {"language_model.layers.99.mlp.gate_proj.weight": mx.zeros((2, 2))}
    mx.save_safetensors(str(broken / "extra.safetensors"), extra)
    with pytest.raises(CheckpointError, match="unexpected weights in extra.safetensors"):
        load(broken)


def test_transposed_tied_head_keeps_the_values(tiny):
    """Where the GEMV extension is unavailable the CPU holds the tied head transposed (a faster
    one-token GEMM): same values, same lookups, same logits as the stored layout."""
    import numpy as np

    from mlx_minicpmv.cpu.gemv_layers import transpose_tied_head

    model, processor = load(tiny.mlx_path, cpu_kernels=False)  # its own copy, the stored layout
    stored = mx.load(str(tiny.mlx_path / "model.safetensors"))["language_model.embed_tokens.weight"]
    ids = mx.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    before = np.array(model(ids))
    transpose_tied_head(model)
    emb = model.language_model.embed_tokens
    assert emb.weight.shape == stored.shape and mx.array_equal(emb.weight, stored)
    np.testing.assert_allclose(np.array(model(ids)), before, atol=1e-5)


@pytest.mark.parametrize("name", ["./nope", "../nope", "./models/nope", "~/surely-no-such-model-folder", "/no/such/model",
                                  "nope", "models/nope", "models/MiniCPM-V-4.6/nope", "path object"])
def test_a_missing_folder_is_named_and_never_looked_up_on_the_hub(tmp_path, monkeypatch, name):
    """A name that can only be a path (or whose parent folder is there) and is not there: one
    line saying so, and the Hub is never asked (offline it said "the Hub is not reachable")."""
    import huggingface_hub

    from pathlib import Path

    (tmp_path / "models" / "MiniCPM-V-4.6").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **k: asked.append(repo) or pytest.fail())
    given = Path("owner/name") if name == "path object" else name  # a Path is a path, whatever its shape
    with pytest.raises(CheckpointError) as e:
        load(given)
    message = str(e.value)
    assert message.startswith(f"{given}: no such directory") and "\n" not in message, message
    assert "convert.py" in message and asked == []


def test_a_repo_id_still_goes_to_the_hub(tmp_path, monkeypatch):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.chdir(tmp_path)
    asked = []

    def not_there(repo, **kwargs):
        asked.append(repo)
        raise RepositoryNotFoundError("404", response=httpx.Response(404, request=httpx.Request("GET", "https://hf.co")))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_there)
    with pytest.raises(CheckpointError, match="openbmb/nope: no such local directory, and no such repo on the Hug"):
        load("openbmb/nope")
    assert asked == ["openbmb/nope"]


def held(before):
    import gc

    gc.collect()
    return mx.get_active_memory() - before


@pytest.mark.parametrize("thread", ["same thread", "another thread"])
def test_the_vision_weights_are_read_on_the_first_image(tiny, thread):
    """On the CPU a text-only session never holds the vision tower: ``load`` reads the rest, the
    first image the tower and merger (measured as memory, what a user's machine sees), in the
    loading thread or another (the server's scheduler), with the features of an eager load. The
    portable path, the one a Mac runs, reads everything at load as before."""
    import threading

    import numpy as np
    from mlx.utils import tree_flatten

    from tests.media import noise_image

    before = held(0)
    model, processor = load(tiny.mlx_path)
    vision = sum(v.nbytes for v in model.vision_parameters())
    rest = sum(v.nbytes for v in model.vision_parameters(False))
    assert vision > 0 and held(before) < rest + vision / 2

    inputs = processor([{"role": "user", "content": [{"type": "image", "image": noise_image(64, 48)},
                                                      {"type": "text", "text": "What is it?"}]}])
    out = {}

    def encode():
        out["features"] = model.encode_slices(inputs.pixel_values, inputs.target_sizes)
        mx.eval(out["features"])

    if thread == "same thread":
        encode()
    else:
        worker = threading.Thread(target=encode)
        worker.start()
        worker.join()
    assert held(before) >= rest + vision

    eager, _ = load(tiny.mlx_path, lazy=True)
    mx.eval(eager.parameters())
    np.testing.assert_array_equal(np.array(eager.encode_slices(inputs.pixel_values, inputs.target_sizes)),
                                  np.array(out["features"]))

    before = held(0)
    portable, _ = load(tiny.mlx_path, cpu_kernels=False)
    assert held(before) >= sum(v.nbytes for _, v in tree_flatten(portable.parameters()))


def test_vision_weights_damaged_after_load_are_named_on_the_first_image(broken):
    """The files the vision weights come from, truncated between load and the first image: an
    error that names the folder and the fix, and the text side keeps working."""
    from tests.media import noise_image

    model, processor = load(broken)
    (broken / "model.safetensors").write_bytes(b"")
    inputs = processor([{"role": "user", "content": [{"type": "image", "image": noise_image(64, 48)},
                                                      {"type": "text", "text": "What is it?"}]}])
    with pytest.raises(CheckpointError, match=f"{broken}: the vision weights cannot be read.*load it again"):
        model.encode_slices(inputs.pixel_values, inputs.target_sizes)
    assert model(mx.array([[1, 2, 3]])).shape[:2] == (1, 3)
