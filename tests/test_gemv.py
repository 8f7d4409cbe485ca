"""The CPU GEMV extension for decoding: the same numbers as MLX's matmul, used by load(), and
a clear fallback where it cannot be built."""

import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_minicpmv import load
from mlx_minicpmv.cpu import gemv
from mlx_minicpmv.cpu.gemv_layers import GemvEmbedding, GemvLinear

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="built for MLX's CPU backend on Linux only")


@pytest.fixture(scope="module")
def ext():
    from mlx_minicpmv.cpu.gemv.build import NoCompilerError

    module = gemv.load()
    if module is None and isinstance(gemv.failure, NoCompilerError):
        pytest.skip(str(gemv.failure))  # the one reason to skip: nothing can build it here
    assert module is not None, f"the GEMV extension did not build: {gemv._failed}"
    return module


@pytest.mark.parametrize("rows", [(1,), (1, 1), (2, 3)])
def test_gemv_matches_matmul(ext, rows):
    x = mx.random.normal(rows + (96,), key=mx.random.key(0))
    w = mx.random.normal((40, 96), key=mx.random.key(1))
    np.testing.assert_allclose(np.array(gemv.gemv(x, w)), np.array(x @ w.T), atol=1e-4, rtol=1e-5)


def test_gemv_takes_transposed_and_strided_inputs(ext):
    x = mx.random.normal((1, 2 * 64), key=mx.random.key(2))[:, ::2]  # a strided row
    w = mx.random.normal((64, 50), key=mx.random.key(3)).T  # a (50, 64) transposed view
    for weight in (w, w[::2]):  # the second is neither row nor column contiguous
        np.testing.assert_allclose(np.array(gemv.gemv(x, weight)), np.array(x @ weight.T), atol=1e-4, rtol=1e-5)


def test_gemv_inside_compile(ext):
    w = mx.random.normal((33, 17), key=mx.random.key(4))
    step = mx.compile(lambda x: gemv.gemv(mx.tanh(x), w) * 2)
    x = mx.random.normal((1, 17), key=mx.random.key(5))
    np.testing.assert_allclose(np.array(step(x)), np.array((mx.tanh(x) @ w.T) * 2), atol=1e-4, rtol=1e-5)


def test_gemv_refuses_other_dtypes(ext):
    with pytest.raises(ValueError, match="float32 only"):
        gemv.gemv(mx.ones((1, 4), dtype=mx.bfloat16), mx.ones((3, 4), dtype=mx.bfloat16))


def test_load_decodes_through_gemv_with_the_same_logits(ext, tiny, monkeypatch):
    model, _ = load(tiny.mlx_path)
    lm = model.language_model
    layers = [m for _, m in lm.named_modules() if isinstance(m, (GemvLinear, GemvEmbedding))]
    assert isinstance(lm.embed_tokens, GemvEmbedding) and len(layers) > len(lm.layers)
    monkeypatch.setattr(gemv, "load", lambda: None)
    reference, _ = load(tiny.mlx_path)  # the same model on MLX's matmul
    assert not isinstance(reference.language_model.embed_tokens, GemvEmbedding)

    def last_logits(m):
        cache = m.make_cache()
        m(mx.array([[3, 1, 4, 1, 5]]), cache=cache)
        return np.array(m(mx.array([[9]]), cache=cache))  # one row: the GEMV path

    np.testing.assert_allclose(last_logits(model), last_logits(reference), atol=1e-4, rtol=1e-4)


def test_unbuildable_extension_falls_back_with_a_warning(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(gemv, "_module", None)
    monkeypatch.setattr(gemv, "_failed", None)
    monkeypatch.setenv("MLX_MINICPMV_CACHE", str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("PATH", str(tmp_path))  # and no compiler
    monkeypatch.delenv("CXX", raising=False)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler was found") as warned:
        assert gemv.load() is None
        assert gemv.load() is None  # asked again: no second warning
    assert len(warned) == 1
    model, processor = load(tiny.mlx_path)
    assert not any(isinstance(m, (GemvLinear, GemvEmbedding)) for _, m in model.named_modules())
    out = model(mx.array([[3, 1, 4]]))
    assert out.shape[-1] == model.config.text_config.vocab_size


def test_cmake_comes_from_the_wheel_where_the_system_has_none(tmp_path, monkeypatch):
    from mlx_minicpmv.cpu.gemv.build import find_cmake

    monkeypatch.setenv("PATH", str(tmp_path))
    cmake = find_cmake()
    assert cmake and "site-packages" in cmake
