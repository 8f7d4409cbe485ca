"""OpenBLAS on Linux: MLX really computes with it (not merely a path was opened), it changes
speed and not results, and the wheel's library is only opened on a CPU it was built for."""

import ctypes
import subprocess
import sys

import numpy as np
import pytest

from mlx_minicpmv import blas

linux = pytest.mark.skipif(sys.platform != "linux", reason="MLX uses Accelerate/Metal off Linux")

LOGITS = """
import sys, numpy as np
import mlx_minicpmv
from mlx_minicpmv import blas, load
model, processor = load(sys.argv[1])
inputs = processor("Describe the quick brown fox, then compare the two.")
np.save(sys.argv[2], np.array(model(inputs.input_ids)))
print(blas.loaded)
"""

MATMUL = """
import sys, numpy as np
import mlx_minicpmv, mlx.core as mx
a, b = (np.load(f) for f in sys.argv[1:3])
np.save(sys.argv[3], np.array(mx.array(a) @ mx.array(b)))
"""


def run_without_blas(script, *args):
    env = {"MLX_MINICPMV_BLAS": "off", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True,
                          text=True, check=True)


def sgemm(library, a, b):
    """``a @ b`` by the library's own ``cblas_sgemm``, called as MLX's CPU matmul calls it."""
    (m, k), n = a.shape, b.shape[1]
    c = np.zeros((m, n), np.float32)
    ptr = ctypes.c_void_p
    library.cblas_sgemm(101, 111, 111, m, n, k, ctypes.c_float(1.0), a.ctypes.data_as(ptr), k,  # row-major, no trans
                        b.ctypes.data_as(ptr), n, ctypes.c_float(0.0), c.ctypes.data_as(ptr), n)
    return c


@linux
def test_the_wheels_openblas_is_opened():
    """A fresh machine has no system OpenBLAS; the dependency's wheel is what loads."""
    assert blas.wheel_library() is not None, "cmeel-openblas is a dependency on Linux: pip install -e ."
    assert blas.loaded == str(blas.wheel_library()), f"OpenBLAS not loaded: {blas.failure}"


@linux
def test_mlx_matmul_is_computed_by_openblas(tmp_path):
    """MLX's fp32 matmul equals, bit for bit, what the opened OpenBLAS computes, and not what
    MLX's bundled reference BLAS computes (run in a process with MLX_MINICPMV_BLAS=off): an
    OpenBLAS opened where MLX does not bind to it fails here."""
    import mlx.core as mx

    assert blas.loaded, f"OpenBLAS not loaded: {blas.failure}"
    rng = np.random.default_rng(0)
    a = rng.standard_normal((96, 1000), dtype=np.float32)
    b = rng.standard_normal((1000, 80), dtype=np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    run_without_blas(MATMUL, tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "ref.npy")
    reference = np.load(tmp_path / "ref.npy")
    ours = np.array(mx.array(a) @ mx.array(b))
    openblas = sgemm(ctypes.CDLL(blas.loaded), a, b)
    assert not np.array_equal(openblas, reference), "the two BLAS round alike here: the test cannot tell them apart"
    np.testing.assert_array_equal(ours, openblas)
    np.testing.assert_allclose(ours, reference, atol=1e-3)


@linux
def test_openblas_gives_the_same_logits(tiny, tmp_path):
    assert blas.loaded, f"OpenBLAS not loaded: {blas.failure}"
    from mlx_minicpmv import load

    model, processor = load(tiny.mlx_path)
    ours = np.array(model(processor("Describe the quick brown fox, then compare the two.").input_ids))
    run = run_without_blas(LOGITS, tiny.mlx_path, tmp_path / "off")
    assert run.stdout.strip().splitlines()[-1] == "None"
    np.testing.assert_allclose(ours, np.load(tmp_path / "off.npy"), atol=1e-4, rtol=0)


@pytest.mark.parametrize("core, flags, missing", [
    ("SKYLAKEX", "fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx avx2 fma", ["AVX512VL"]),
    ("ZEN", "fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx avx2 fma", []),
    ("ZEN", "fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx", ["AVX2", "FMA3"]),
])
def test_a_wheel_built_for_another_cpu_is_refused(tmp_path, monkeypatch, core, flags, missing):
    """cmeel-openblas builds for one CPU (0.3.31: Skylake-X, AVX-512): opened elsewhere it dies
    of SIGILL at the first matmul, so its config header is checked first."""
    haves = {"SKYLAKEX": "SSE3 SSSE3 SSE4_1 SSE4_2 AVX AVX2 AVX512VL FMA3 CFLUSH",
             "ZEN": "SSE3 SSSE3 SSE4_1 SSE4_2 SSE4A AVX AVX2 FMA3 MISALIGNSSE"}[core]
    header = tmp_path / "include" / "openblas" / "openblas_config.h"
    header.parent.mkdir(parents=True)
    header.write_text("".join(f"#define OPENBLAS_HAVE_{h}\n" for h in haves.split()) + f"#define OPENBLAS_CORE_{core}\n")
    (tmp_path / "lib").mkdir()
    monkeypatch.setattr(blas, "cpu_flags", lambda: set(flags.split()))
    assert blas.missing_features(tmp_path / "lib" / "libopenblas.so.0") == missing


@linux
def test_soname_is_rewritten_in_place():
    source = blas.bundled("libgfortran")
    assert source is not None, "mlx[cpu] ships libgfortran"
    data = bytearray(source.read_bytes())
    start, end = blas.soname_span(data)
    assert bytes(data[start:end]).startswith(b"libgfortran-")
    size = len(data)
    blas.set_soname(data, b"libgfortran.so.5")
    assert bytes(data[slice(*blas.soname_span(data))]) == b"libgfortran.so.5" and len(data) == size
    with pytest.raises(ValueError, match="longer"):
        blas.set_soname(data, b"libgfortran.so.5" + b"x" * 64)
