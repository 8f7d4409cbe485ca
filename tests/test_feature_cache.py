"""The vision-feature cache: an answer never depends on what was asked before, or of which model."""

import gc

import pytest

from mlx_minicpmv import load, stream_generate
from mlx_minicpmv.generate import feature_cache
from tests.media import noise_image


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("fc") / "p.png"
    noise_image(448, 448, seed=5).save(path)
    return path


def answer(model, processor, picture, **options):
    question = [{"role": "user", "content": [{"type": "image", "image": str(picture)},
                                             {"type": "text", "text": "Describe this image."}]}]
    return [r.token for r in stream_generate(model, processor, question, max_tokens=8, temperature=0.0, **options)]


def test_another_model_asked_about_the_same_picture_encodes_it_itself(tiny, alt_tiny, picture):
    """Switching models (the app's model picker) and asking about the same picture again."""
    base, alt = tiny.load(), alt_tiny.load()
    feature_cache.clear()
    alone = answer(*alt, picture)
    feature_cache.clear()
    answer(*base, picture)  # base encodes the picture first
    assert answer(*alt, picture) == alone
    assert answer(*base, picture) == answer(*base, picture)  # and each model still hits its own entry
    assert feature_cache.held_for(base[0]) == 1 and feature_cache.held_for(alt[0]) == 1


def test_the_same_picture_in_another_downsample_mode(tiny, picture):
    """A 448² image is one slice: 256 tokens in 4x mode, 64 in 16x; the cache must not mix them."""
    model, processor = tiny.load()
    feature_cache.clear()
    fresh_4x = answer(model, processor, picture, downsample_mode="4x")
    feature_cache.clear()
    answer(model, processor, picture, downsample_mode="16x")
    assert answer(model, processor, picture, downsample_mode="4x") == fresh_4x
    assert feature_cache.held_for(model) == 2


def test_an_unloaded_model_leaves_no_features_behind(tiny, picture):
    model, processor = load(tiny.mlx_path)  # a copy of its own, to unload
    feature_cache.clear()
    answer(model, processor, picture)
    assert feature_cache.held_for(model) == 1 and len(feature_cache) == 1
    del model
    gc.collect()  # the model's compiled decode steps refer back to it: a cycle, freed by the collector
    assert len(feature_cache) == 0

    model, _ = tiny.load()
    answer(model, processor, picture)
    feature_cache.forget(model)  # unloading on purpose, without waiting for the collector
    assert feature_cache.held_for(model) == 0
