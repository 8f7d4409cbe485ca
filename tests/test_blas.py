"""The optimised BLAS on Linux changes speed, not results."""

import subprocess
import sys

import numpy as np
import pytest

from mlx_minicpmv import blas

SCRIPT = """
import sys, numpy as np
import mlx_minicpmv
from mlx_minicpmv import blas, load
model, processor = load(sys.argv[1])
inputs = processor("Describe the quick brown fox, then compare the two.")
np.save(sys.argv[2], np.array(model(inputs.input_ids)))
print(blas.loaded)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="MLX uses Accelerate/Metal off Linux")
def test_openblas_is_used_and_gives_the_same_logits(tiny, tmp_path):
    assert blas.loaded, "OpenBLAS not found: install libopenblas0 (apt) as .ci/run does"
    outs = {}
    for setting in ("on", "off"):
        env = {"MLX_MINICPMV_BLAS": setting, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
        run = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny.mlx_path), str(tmp_path / setting)],
                             env=env, capture_output=True, text=True, check=True)
        outs[setting] = (run.stdout.strip().splitlines()[-1], np.load(tmp_path / f"{setting}.npy"))
    assert outs["on"][0] != "None" and outs["off"][0] == "None"
    np.testing.assert_allclose(outs["on"][1], outs["off"][1], atol=1e-4, rtol=0)
