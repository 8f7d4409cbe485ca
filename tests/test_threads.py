"""Generation from worker threads: right answers, and a process that exits cleanly.

MLX frees a thread's compile cache as the OS thread ends, taking the GIL; a thread that ended
while the interpreter was finalising aborted the process (rc 134, "terminate called without an
active exception") in 1 to 4 runs of 6 before ``threads.py`` made exit wait for such threads.
"""

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_minicpmv import stream_generate, threads
from tests.media import noise_image

SCRIPT = """
import sys, threading
import mlx_minicpmv
from mlx_minicpmv import load, stream_generate
from PIL import Image
model, processor = load(sys.argv[1])
image = Image.open(sys.argv[2])
def ask(i):
    content = [{"type": "image", "image": image}, {"type": "text", "text": f"Describe {i}."}]
    list(stream_generate(model, processor, [{"role": "user", "content": content}], max_tokens=6, temperature=0.0))
workers = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
[w.start() for w in workers]
[w.join() for w in workers]
print("answered")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the OS-thread check reads /proc")
def test_threads_that_generated_are_waited_for_at_exit(tiny):
    model, processor = tiny.load()
    done = []
    worker = threading.Thread(target=lambda: done.append(
        [r.token for r in stream_generate(model, processor, "Hi", max_tokens=3, temperature=0.0)]))
    worker.start()
    worker.join()
    native = worker.native_id
    assert done and native in threads._noted
    threads.wait_for_finished_threads()
    assert not threads.os_thread_exists(native)


def test_worker_threads_end_without_aborting_the_process(tiny, tmp_path):
    image = tmp_path / "p.png"
    noise_image(300, 200).save(image)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("TOKENIZERS_PARALLELISM", None)  # as a user's script runs
    env["PYTHONFAULTHANDLER"] = "1"  # a crash prints every thread's Python stack into the failure
    for attempt in range(3):
        run = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny.mlx_path), str(image)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and "answered" in run.stdout, (attempt, run.returncode, run.stderr[-3000:])
        assert "terminate called" not in run.stderr


def computed(array) -> bool:
    """Whether ``array`` holds its values: its graph (``mx.export_to_dot``) has no operation left."""
    dot = io.StringIO()
    mx.export_to_dot(dot, array)
    return "shape=rectangle" not in dot.getvalue()


def test_the_plans_threads_share_hold_computed_arrays(tiny):
    """A layer's plan for its fused decode kernels is made once and used by every thread that
    generates; an array left lazy in it (the conv taps' transpose) was evaluated by two threads'
    graphs at once, which crashed MLX's eval (SIGSEGV, a primitive gone under it) or left a stream
    waiting forever, in about 1 of 20 runs of the test above. Each plan is made again here by a
    decoded token's own call, whose output is left unevaluated."""
    assert not computed(mx.contiguous(mx.ones((2, 3)).T))  # the check sees a lazy array
    model, _ = tiny.load()
    lm = model.language_model
    cache = lm.make_cache()
    mx.eval(lm(lm.embed_tokens(mx.array([[20, 21, 22]])), cache=cache))
    x = mx.zeros((1, 1, lm.layers[0].input_layernorm.weight.size))
    plans = {}
    for i, (layer, c) in enumerate(zip(lm.layers, cache)):
        name = "_deltanet_plan" if layer.is_linear else "_attention_plan"
        if name in vars(layer):
            object.__delattr__(layer, name)
        out = layer.fused_step(x, c[0], c[1]) if layer.is_linear else layer.fused_attention(x, c)
        assert out is not None
        plans[i] = [a for _, a in tree_flatten(vars(layer)[name][2]) if isinstance(a, mx.array)]
    assert {layer.is_linear for layer in lm.layers} == {True, False}  # both kinds of layer made theirs
    assert all(computed(a) for arrays in plans.values() for a in arrays)
