"""The MLX model against transformers' MiniCPMV4_6ForConditionalGeneration, in fp32, on tiny checkpoints.

Both sides get identical inputs (our processor's ids and pixels; the processor is compared
with the reference on its own in test_processor.py).
"""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from tests.media import make_video, noise_image

FEATURE_TOL = 1e-5
LOGIT_TOL = 1e-3
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
        return model(**kw).logits.numpy()


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


CASES = {
    "text": lambda m: user(text("Describe the quick brown fox, then compare the two.")),
    "unsliced image": lambda m: user({"type": "image", "image": str(m["small"])}, text("Describe this image.")),
    "sliced image": lambda m: user({"type": "image", "image": str(m["wide"])}, text("What is in the picture?")),
    "two images": lambda m: user({"type": "image", "image": str(m["small"])},
                                 {"type": "image", "image": str(m["tall"])}, text("Compare the two images.")),
    "video": lambda m: user({"type": "video", "video": str(m["video"])}, text("Summarise the video.")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_reference(any_tiny, media, case):
    model, processor = any_tiny.load()
    inputs = processor(CASES[case](media), downsample_mode=any_tiny.mode)
    if case == "sliced image":
        assert inputs.target_sizes.shape[0] > 1, "the wide image must be sliced"
    ref, ours = hf_logits(any_tiny, inputs), our_logits(model, inputs)
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 0.5, "logits of order 1, or the tolerance means nothing"
    # Random gated-DeltaNet layers amplify fp32 rounding a thousandfold where a head's output
    # is near zero before its RMSNorm; on such inputs the reference itself is off from float64
    # by more than 1e-3. The test inputs are chosen well-conditioned, and this checks it.
    assert np.abs(ref - hf_logits(any_tiny, inputs, float64=True)).max() < CONDITIONING_TOL
    np.testing.assert_allclose(ours, ref, atol=LOGIT_TOL, rtol=0)


@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_vision_features_match_reference(any_tiny, media, mode):
    model, processor = any_tiny.load()
    packed = processor.process_images([media["wide"], media["small"]], downsample_mode=mode)
    import torch

    with torch.no_grad():
        ref = any_tiny.hf.model.get_image_features(
            to_torch(packed.pixel_values), to_torch(packed.target_sizes), downsample_mode=mode).pooler_output
    ref = torch.cat(ref).numpy()
    ours = np.array(model.encode_slices(mx.array(packed.pixel_values), packed.target_sizes, mode))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=FEATURE_TOL, rtol=0)


def test_greedy_tokens_match_reference_generate(any_tiny, media):
    import torch

    from mlx_minicpmv.generate import stream_tokens

    model, processor = any_tiny.load()
    inputs = processor(CASES["sliced image"](media), downsample_mode=any_tiny.mode)
    with torch.no_grad():
        out = any_tiny.hf.generate(
            input_ids=to_torch(inputs.input_ids, torch.long), pixel_values=to_torch(inputs.pixel_values),
            target_sizes=to_torch(inputs.target_sizes), downsample_mode=inputs.downsample_mode,
            max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    ref = out[0, inputs.num_tokens:].tolist()
    ours = [token for token, *_ in stream_tokens(model, inputs, max_tokens=32, temperature=0.0)]
    assert len(ref) == 32
    assert ours == ref


def test_cached_decoding_equals_full_sequence(tiny, media):
    model, processor = tiny.load()
    inputs = processor(CASES["sliced image"](media))
    ids = inputs.input_ids
    full = model(ids, inputs.pixel_values, inputs.target_sizes)
    embeds = model.embed(ids, inputs.pixel_values, inputs.target_sizes)
    L, tail = ids.shape[1], 6
    cache = model.make_cache()
    model(ids[:, : L - tail], cache=cache, input_embeddings=embeds[:, : L - tail])
    steps = [model(ids[:, i : i + 1], cache=cache, input_embeddings=embeds[:, i : i + 1]) for i in range(L - tail, L)]
    stepped = mx.concatenate(steps, axis=1)
    np.testing.assert_allclose(np.array(stepped), np.array(full[:, L - tail :]), atol=LOGIT_TOL, rtol=0)


def test_chunked_prefill_leaves_the_same_state(tiny, media):
    model, processor = tiny.load()
    inputs = processor(CASES["two images"](media))
    embeds = model.embed(inputs.input_ids, inputs.pixel_values, inputs.target_sizes)
    one = model.make_cache()
    model(inputs.input_ids, cache=one, input_embeddings=embeds)
    chunked = model.make_cache()
    L = embeds.shape[1]
    for start in range(0, L, 37):  # 37 does not divide anything in the model
        model(inputs.input_ids[:, start : start + 37], cache=chunked, input_embeddings=embeds[:, start : start + 37])
    assert L > 3 * 37
    a, b = ([(k, v) for k, v in tree_flatten([c.state for c in cache]) if isinstance(v, mx.array)] for cache in (one, chunked))
    assert [k for k, _ in a] == [k for k, _ in b] and len(a) >= len(one)
    for (_, x), (_, y) in zip(a, b):
        assert x.shape == y.shape
        # Chunking changes the matmul shapes and so the fp32 rounding (seen: 1.9e-5 at most).
        np.testing.assert_allclose(np.array(x), np.array(y), atol=1e-4, rtol=0)
    step = inputs.input_ids[:, -1:]
    np.testing.assert_allclose(np.array(model(step, cache=one)), np.array(model(step, cache=chunked)),
                               atol=LOGIT_TOL, rtol=0)


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
    from mlx_minicpmv.model import Model

    weights, _ = read_weights(tiny.hf_path)
    before = {k: np.array(v) for k, v in weights.items()}
    once = Model.sanitize(weights)
    twice = Model.sanitize(once)
    assert set(once) == set(twice)
    assert all(np.array_equal(np.array(once[k]), np.array(twice[k])) for k in once)
    assert all(np.array_equal(before[k], np.array(weights[k])) for k in weights), "input left untouched"
    assert "lm_head.weight" not in once and not any(k.startswith("model.") for k in once)
