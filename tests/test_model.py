"""The MLX model against transformers' MiniCPMV4_6ForConditionalGeneration (and 4.7's), in fp32,
on tiny checkpoints.

Both sides get identical inputs (our processor's ids and pixels; the processor is compared
with the reference on its own in test_processor.py). Every parity test runs on both paths,
with the same bounds: the CPU path (the specialisations of mlx_minicpmv/cpu) and the portable
path that Metal runs, here on the CPU (``load(..., cpu_kernels=False)``). 4.7's reference lays
out its canvas positions itself from the token types (``parity.token_types``); ours are placed
by ``begin_prompt`` where a prompt is fed in pieces.
"""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import KVCache

from tests.media import make_video, noise_image
from tests.parity import LOGIT_TOL, assert_same_steps, reference_steps, token_types

FEATURE_TOL = 1e-5
CONDITIONING_TOL = 5e-4


def to_torch(x, dtype=None):
    import torch

    t = torch.from_numpy(np.array(x))
    return t.to(dtype) if dtype is not None else t


def hf_logits(t, inputs, float64=False):
    import torch

    model = t.hf64 if float64 else t.hf
    cast = torch.float64 if float64 else None
    kw = dict(input_ids=to_torch(inputs.input_ids, torch.long), downsample_mode=inputs.downsample_mode)
    if inputs.pixel_values is not None:
        kw.update(pixel_values=to_torch(inputs.pixel_values, cast), target_sizes=to_torch(inputs.target_sizes))
    if inputs.pixel_values_videos is not None:
        kw.update(pixel_values_videos=to_torch(inputs.pixel_values_videos, cast),
                  target_sizes_videos=to_torch(inputs.target_sizes_videos))
    with torch.no_grad():
        return model(**kw, **token_types(t, inputs.input_ids)).logits.numpy()


def our_logits(model, inputs):
    return np.array(model(inputs.input_ids, inputs.pixel_values, inputs.target_sizes, **{
        k: v for k, v in inputs.model_inputs().items() if k not in ("pixel_values", "target_sizes")}))


def user(*items):
    return [{"role": "user", "content": list(items)}]


def text(s):
    return {"type": "text", "text": s}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    paths = {}
    for i, (name, (w, h)) in enumerate({"small": (200, 200), "wide": (700, 300), "tall": (300, 520)}.items()):
        paths[name] = root / f"{name}.png"
        noise_image(w, h, seed=80 + i).save(paths[name])
    paths["video"] = make_video(root / "clip.mp4", seconds=3.2, fps=5, width=96, height=64)
    return paths


@pytest.fixture(params=["cpu", "portable"])
def path(request) -> str:
    return request.param


def loaded(t, path):
    return t.load(cpu_kernels=path == "cpu")


@pytest.mark.skipif(mx.default_device() != mx.cpu, reason="the CPU path exists where MLX runs on the CPU")
def test_the_two_paths_are_the_ones_named(tiny):
    """The CPU path has the CPU layers swapped in; the portable path has none of them."""
    cpu_model, _ = tiny.load(cpu_kernels=True)
    portable, _ = tiny.load(cpu_kernels=False)
    from_seam = lambda m: {type(x).__name__ for _, x in m.named_modules() if type(x).__module__.startswith("mlx_minicpmv.cpu")}
    assert {"CpuGatedDeltaNet", "CpuGatedAttention", "CpuDecoderLayer", "CpuMLP", "CpuVisionAttention",
            "CpuGELUTanh"} <= from_seam(cpu_model)
    assert from_seam(portable) == set()
    assert cpu_model.patches_per_pass == 1 < portable.patches_per_pass


@pytest.mark.skipif(mx.default_device() != mx.cpu, reason="the CPU path exists where MLX runs on the CPU")
def test_a_decoded_token_takes_the_compiled_steps(tiny, monkeypatch):
    """On the CPU path a decoded token runs every DeltaNet layer as one kernel and every
    attention layer's parts before and after the cache as one kernel each (compiled steps where
    the kernels are not built), with the logits of the layers run as they are."""
    from mlx_minicpmv import load
    from mlx_minicpmv.cpu import kernels

    calls = []
    if kernels.load() is not None:
        for name in ("deltanet_decode", "attention_decode"):
            monkeypatch.setattr(kernels, name, lambda *a, real=getattr(kernels, name), name=name:
                                calls.append(name) or real(*a))
    model, _ = load(tiny.mlx_path)
    ids = mx.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    cache = model.make_cache()
    model(ids[:, :6], cache=cache)
    stepped = [model(ids[:, i : i + 1], cache=cache) for i in (6, 7)]
    layers = model.language_model.layers
    linear = sum(layer.is_linear for layer in layers)
    if kernels.load() is not None:
        assert calls.count("deltanet_decode") == 2 * linear
        assert calls.count("attention_decode") == 2 * 2 * (len(layers) - linear)  # front and back
    else:
        assert all(getattr(layer, "_step", None) is not None for layer in layers if layer.is_linear)
        assert all(getattr(layer, "_front", None) is not None for layer in layers if not layer.is_linear)
    full = model(ids)
    np.testing.assert_allclose(np.array(mx.concatenate(stepped, axis=1)), np.array(full[:, 6:]), atol=LOGIT_TOL, rtol=0)


CASES = {
    "text": lambda m: user(text("Describe the quick brown fox, then compare the two.")),
    "unsliced image": lambda m: user({"type": "image", "image": str(m["small"])}, text("Describe this image.")),
    "sliced image": lambda m: user({"type": "image", "image": str(m["wide"])}, text("What is in the picture?")),
    "two images": lambda m: user({"type": "image", "image": str(m["small"])},
                                 {"type": "image", "image": str(m["tall"])}, text("Compare the two images.")),
    "video": lambda m: user({"type": "video", "video": str(m["video"])}, text("Summarise the video.")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_reference(any_tiny, media, case, path):
    model, processor = loaded(any_tiny, path)
    inputs = processor(CASES[case](media), downsample_mode=any_tiny.mode)
    if case == "sliced image":
        assert inputs.target_sizes.shape[0] > 1, "the wide image must be sliced"
    ref, ref64 = any_tiny.reference(("test_logits_match_reference", case), lambda: (hf_logits(any_tiny, inputs),
                                                               hf_logits(any_tiny, inputs, float64=True)))
    ours = our_logits(model, inputs)
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 0.5, "logits of order 1, or the tolerance means nothing"
    # Random gated-DeltaNet layers amplify fp32 rounding a thousandfold where a head's output
    # is near zero before its RMSNorm; on such inputs the reference itself is off from float64
    # by more than 1e-3. The test inputs are chosen well-conditioned, and this checks it.
    assert np.abs(ref - ref64).max() < CONDITIONING_TOL
    np.testing.assert_allclose(ours, ref, atol=LOGIT_TOL, rtol=0)


@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_vision_features_match_reference(any_tiny, media, mode, path):
    model, processor = loaded(any_tiny, path)
    packed = processor.process_images([media["wide"], media["small"]], downsample_mode=mode)
    import torch

    def reference():
        with torch.no_grad():
            return torch.cat(any_tiny.hf.model.get_image_features(
                to_torch(packed.pixel_values), to_torch(packed.target_sizes), downsample_mode=mode).pooler_output).numpy()

    ref = any_tiny.reference(("test_vision_features_match_reference", mode), reference)
    ours = np.array(model.encode_slices(mx.array(packed.pixel_values), packed.target_sizes, mode))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=FEATURE_TOL, rtol=0)


def test_greedy_tokens_match_reference_generate(any_tiny, media, path):
    import torch

    from mlx_minicpmv.generate import stream_tokens

    model, processor = loaded(any_tiny, path)
    inputs = processor(CASES["sliced image"](media), downsample_mode=any_tiny.mode)
    ref_tokens, ref_logprobs = any_tiny.reference("test_greedy_tokens_match_reference_generate", lambda: reference_steps(
        any_tiny, input_ids=to_torch(inputs.input_ids, torch.long), pixel_values=to_torch(inputs.pixel_values),
        target_sizes=to_torch(inputs.target_sizes), downsample_mode=inputs.downsample_mode))
    assert len(ref_tokens) == 32
    assert_same_steps(list(stream_tokens(model, inputs, max_tokens=32, temperature=0.0)), ref_tokens, ref_logprobs)


def test_cached_decoding_equals_full_sequence(any_tiny, media, path):
    model, processor = loaded(any_tiny, path)
    inputs = processor(CASES["sliced image"](media), downsample_mode=any_tiny.mode)
    ids = inputs.input_ids
    full = model(ids, inputs.pixel_values, inputs.target_sizes)
    embeds = model.embed(ids, inputs.pixel_values, inputs.target_sizes)
    L, tail = ids.shape[1], 6
    cache = model.make_cache()
    model.begin_prompt(cache, ids, inputs.target_sizes, None, inputs.downsample_mode)
    model(ids[:, : L - tail], cache=cache, input_embeddings=embeds[:, : L - tail])
    steps = [model(ids[:, i : i + 1], cache=cache, input_embeddings=embeds[:, i : i + 1]) for i in range(L - tail, L)]
    stepped = mx.concatenate(steps, axis=1)
    np.testing.assert_allclose(np.array(stepped), np.array(full[:, L - tail :]), atol=LOGIT_TOL, rtol=0)


def test_chunked_prefill_leaves_the_same_state(any_tiny, media, path):
    model, processor = loaded(any_tiny, path)
    inputs = processor(CASES["two images"](media), downsample_mode=any_tiny.mode)
    embeds = model.embed(inputs.input_ids, inputs.pixel_values, inputs.target_sizes)
    one, chunked = model.make_cache(), model.make_cache()
    for cache in (one, chunked):
        model.begin_prompt(cache, inputs.input_ids, inputs.target_sizes, None, inputs.downsample_mode)
    model(inputs.input_ids, cache=one, input_embeddings=embeds)
    L = embeds.shape[1]
    for start in range(0, L, 37):  # 37 does not divide anything in the model
        model(inputs.input_ids[:, start : start + 37], cache=chunked, input_embeddings=embeds[:, start : start + 37])
    assert L > 3 * 37
    a, b = (tree_flatten([layer_state(c) for c in cache]) for cache in (one, chunked))
    assert [k for k, _ in a] == [k for k, _ in b] and len(a) >= len(one)
    for (_, x), (_, y) in zip(a, b):
        assert x.shape == y.shape
        # Chunking changes the matmul shapes and so the fp32 rounding (seen: 1.9e-5 at most).
        np.testing.assert_allclose(np.array(x), np.array(y), atol=1e-4, rtol=0)
    step = inputs.input_ids[:, -1:]
    np.testing.assert_allclose(np.array(model(step, cache=one)), np.array(model(step, cache=chunked)),
                               atol=LOGIT_TOL, rtol=0)


def layer_state(cache):
    """A layer's state as arrays: a KV cache's filled part (its buffer grows in steps of 256), a
    DeltaNet layer's conv and recurrent states."""
    if isinstance(cache, KVCache):
        return [cache.keys[..., : cache.offset, :], cache.values[..., : cache.offset, :]]
    return [x for _, x in tree_flatten(cache.state) if isinstance(x, mx.array)]


def test_placeholder_count_mismatch_is_an_error(tiny, media):
    model, processor = tiny.load()
    inputs = processor(CASES["unsliced image"](media))
    ids = np.array(inputs.input_ids)
    pad = model.config.image_token_id
    ids[0, np.flatnonzero(ids[0] == pad)[0]] = 5  # one placeholder fewer than features
    with pytest.raises(ValueError, match=r"image placeholder tokens but the image inputs give"):
        model(mx.array(ids), inputs.pixel_values, inputs.target_sizes)


def test_sanitize_is_pure_and_idempotent(tiny):
    from mlx_minicpmv.loading import read_weights

    model, _ = tiny.load()
    weights, _ = read_weights(tiny.hf_path)
    before = {k: np.array(v) for k, v in weights.items()}
    once = model.sanitize(weights)
    twice = model.sanitize(once)
    assert set(once) == set(twice)
    assert all(np.array_equal(np.array(once[k]), np.array(twice[k])) for k in once)
    assert all(np.array_equal(before[k], np.array(weights[k])) for k in weights), "input left untouched"
    assert "lm_head.weight" not in once and not any(k.startswith("model.") for k in once)
    # MTP weights (none in the release, spec §16.19, but a re-export may carry them) are dropped,
    # and only they: a checkpoint that lists them first loads as one without them.
    with_mtp = {"mtp.fc.weight": mx.zeros((2, 2)), "model.mtp.layers.0.norm.weight": mx.zeros((2,)), **weights}
    assert set(model.sanitize(with_mtp)) == set(once)
