"""Generation from worker threads: right answers, and a process that exits cleanly.

MLX frees a thread's compile cache as the OS thread ends, taking the GIL; a thread that ended
while the interpreter was finalising aborted the process (rc 134, "terminate called without an
active exception") in 1 to 4 runs of 6 before ``threads.py`` made exit wait for such threads.
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

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
    import io

    import mlx.core as mx

    dot = io.StringIO()
    mx.export_to_dot(dot, array)
    return "shape=rectangle" not in dot.getvalue()


def test_the_plans_threads_share_hold_computed_arrays(tiny):
    """A layer's plan for its fused decode kernels is made once and used by every thread that
    generates; an array left lazy in it (the conv taps' transpose) was evaluated by two threads'
    graphs at once, which crashed MLX's eval (SIGSEGV, a primitive gone under it) or left a stream
    waiting forever, in about 1 of 20 runs of the test above."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    assert not computed(mx.contiguous(mx.ones((2, 3)).T))  # the check sees a lazy array
    model, _ = tiny.load()
    layers = model.language_model.layers
    made = []
    for layer in layers:
        modules = (layer.linear_attn if layer.is_linear else layer.self_attn, layer.mlp, layer.input_layernorm,
                   layer.post_attention_layernorm)
        make = layer.deltanet_plan if layer.is_linear else layer.attention_plan
        plan = layer.planned("_plan_under_test", modules, make)  # a name of its own: made here, now
        object.__delattr__(layer, "_plan_under_test")
        made.append((layer.is_linear, [a for _, a in tree_flatten(plan) if isinstance(a, mx.array)]))
    assert {linear for linear, arrays in made if arrays} == {True, False}  # both kinds of layer have plans
    assert all(computed(a) for _, arrays in made for a in arrays)
