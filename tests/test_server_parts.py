"""The server's parts on their own: the conversation store, text routing, constrained decoding,
the strip bookkeeping of vision items, and the command."""

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import jsonschema
import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import ArraysCache, KVCache

from mlx_minicpmv.server.command import is_loopback
from mlx_minicpmv.server.conversations import ConversationStore, save_points
from mlx_minicpmv.server.grammar import Grammars
from mlx_minicpmv.server.output import TextStream
from mlx_minicpmv.server.protocol import ResponseFormat
from mlx_minicpmv.server.sequence import item_slices


def state(n_tokens: int, value: float):
    kv, arrays = KVCache(), ArraysCache(2)
    kv.update_and_fetch(mx.full((1, 2, n_tokens, 4), value), mx.full((1, 2, n_tokens, 4), value))
    arrays[0], arrays[1] = mx.full((1, 3, 8), value), mx.full((1, 2, 4, 4), value)
    return [arrays, kv]


def test_store_gives_the_longest_stored_prefix_with_the_same_media():
    store = ConversationStore(max_entries=8)
    store.save([1, 2, 3], [("a", 1)], state(3, 1.0))
    store.save([1, 2, 3, 4, 5], [("a", 1)], state(5, 2.0))
    cache, n = store.lookup([1, 2, 3, 4, 5, 6, 7], [("a", 1)])
    assert n == 5 and cache[1].offset == 5 and cache[0][0][0, 0, 0].item() == 2.0
    assert store.lookup([1, 2, 3, 4, 5, 6], [("a", 1)], limit=4)[1] == 3  # the caller needs a token left
    assert store.lookup([1, 2, 3, 4, 5, 6], [("b", 1)]) == (None, 0)  # same tokens, another image
    assert store.lookup([1, 2, 9], [("a", 1)]) == (None, 0)
    # A new image after the stored prefix does not matter to it.
    assert store.lookup([1, 2, 3, 4, 5, 6, 7], [("a", 1), ("c", 6)])[1] == 5


def test_a_continued_state_never_changes_the_stored_one():
    store = ConversationStore()
    store.save([1, 2, 3], [], state(3, 1.0))
    cache, _ = store.lookup([1, 2, 3, 4], [])
    cache[1].update_and_fetch(mx.full((1, 2, 1, 4), 9.0), mx.full((1, 2, 1, 4), 9.0))
    cache[0][1] = cache[0][1] + 5
    again, _ = store.lookup([1, 2, 3, 4], [])
    assert again[1].offset == 3 and again[1].keys.max().item() == 1.0 and again[0][1].max().item() == 1.0


def test_store_drops_least_recently_used_by_count_and_bytes():
    store = ConversationStore(max_entries=2)
    for i in range(3):
        store.save([i, 1, 2], [], state(3, float(i)))
    assert store.lookup([0, 1, 2, 3], [])[1] == 0 and store.lookup([2, 1, 2, 3], [])[1] == 3
    small = ConversationStore(max_entries=10, max_bytes=1)
    small.save([1, 2], [], state(2, 1.0))  # bigger than the whole budget: not kept
    assert not small.entries


def test_save_points_are_the_turn_boundaries():
    im = 7
    ids = [im, 1, 2, 8, 9, im, 3, 4, 8, 9, im, 5]
    assert save_points(ids, im, has_system=True) == [5, 10]
    assert save_points(ids, im, has_system=False) == [10]


def test_item_slices_split_a_strip_by_placeholder_tokens():
    sizes = np.array([[32, 32], [16, 32], [16, 32], [32, 32]])  # an image of 3 slices, then one of 1
    out = item_slices(sizes, [(1024 + 512 + 512) // 16, 1024 // 16])
    assert out == [(0, 3, 0, 2048), (3, 4, 2048, 3072)]


@pytest.fixture(scope="module")
def processor(tiny):
    return tiny.load()[1]


def tokens(processor, text):
    return processor.tokenizer.encode(text, add_special_tokens=False)


def route(processor, ids, thinking, stops=()):
    tok = processor.tokenizer
    stream = TextStream(tok.detokenizer, processor.eos_token_ids, tok.convert_tokens_to_ids("</think>"), thinking,
                        stops)
    reasoning, content = "", ""
    for t in ids:
        r, c = stream.add(t)
        reasoning, content = reasoning + r, content + c
        if stream.stopped:
            break
    r, c = stream.finish()
    return reasoning + r, content + c, stream.stopped


def test_reasoning_and_answer_are_split_at_the_end_of_thinking(processor):
    ids = tokens(processor, "The fox thinks.</think>\n\nThe answer.") + processor.eos_token_ids[:1]
    assert route(processor, ids, thinking=True) == ("The fox thinks.", "The answer.", False)
    assert route(processor, tokens(processor, "The answer."), thinking=False) == ("", "The answer.", False)


def test_stop_strings_cut_the_answer_even_across_tokens(processor):
    ids = tokens(processor, "The quick brown fox jumps over the lazy dog.")
    assert route(processor, ids, False, stops=["fox j"]) == ("", "The quick brown ", True)
    assert route(processor, ids, False, stops=["cat"]) == ("", "The quick brown fox jumps over the lazy dog.", False)


def test_constraint_makes_random_logits_write_valid_json(processor):
    schema = {"type": "object", "required": ["name", "n"], "additionalProperties": False,
              "properties": {"name": {"enum": ["fox", "dog"]}, "n": {"type": "integer", "minimum": 0, "maximum": 99}}}
    vocab = len(processor.tokenizer.get_vocab())
    grammars = Grammars(processor.tokenizer, vocab + 7, processor.eos_token_ids)
    rf = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {"schema": schema}})
    rng = np.random.default_rng(0)
    for trial in range(3):
        constraint, context = grammars.constraint(rf), [1, 2, 3]
        while True:
            logits = constraint(mx.array(context), mx.array(rng.normal(size=(1, vocab + 7)).astype(np.float32)))
            token = int(mx.argmax(logits, axis=-1).item())
            if token in processor.eos_token_ids:
                break
            context.append(token)
            assert len(context) < 200
        jsonschema.validate(json.loads(processor.tokenizer.decode(context[3:])), schema)
        assert constraint.done


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_the_command_serves_and_reports_a_missing_model_in_one_line(tiny, tmp_path):
    bad = subprocess.run([sys.executable, "-m", "mlx_minicpmv.server", "--model", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in bad.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "mlx_minicpmv.server", "--model", str(tiny.mlx_path),
                             "--port", str(port), "--temp", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        deadline, health = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health is not None and health["status"] == "ok", proc.stdout.read() if proc.poll() is not None else ""
        name = health["model"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                       json=dict(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=3))
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Hi" not in out  # nothing of a conversation is logged unless asked


@pytest.mark.parametrize("cpu_kernels", [True, False], ids=["cpu path", "portable path"])
def test_a_batch_gives_each_request_the_tokens_it_gets_alone(tiny, cpu_kernels):
    """Requests joining and leaving the decode batch at different steps, with and without an
    image, on the CPU path and on the portable one a Mac runs."""
    from mlx_minicpmv import load
    from mlx_minicpmv.server.scheduler import Scheduler
    from mlx_minicpmv.server.sequence import Job
    from tests.media import noise_image

    model, processor = load(tiny.mlx_path, cpu_kernels=cpu_kernels)
    scheduler = Scheduler(model, processor, max_concurrency=4)
    prompts = ["The quick brown fox?", "A cat sits on a red sofa", "Compare the two images.", "In the first scene"]

    def job(i):
        content = [{"type": "text", "text": prompts[i]}]
        if i % 2 == 0:
            content.insert(0, {"type": "image", "image": noise_image(180 + 40 * i, 120, seed=i)})
        return Job([{"role": "user", "content": content}], media_digests=[f"image {i}"] if i % 2 == 0 else [],
                   max_tokens=24 - 4 * i)  # the first runs longest: all four overlap

    def tokens_of(handles):
        while scheduler.pump():
            pass
        out = []
        for h in handles:
            events = []
            while not events or events[-1].kind not in ("done", "error"):
                events.append(h.get_sync(timeout=5))
            assert events[-1].kind == "done", events[-1].error
            out.append("".join(e.content for e in events))
        return out

    alone = [tokens_of([scheduler.submit(job(i))])[0] for i in range(4)]
    scheduler.ctx.store.clear()
    together = tokens_of([scheduler.submit(job(i)) for i in range(4)])
    assert together == alone and scheduler.peak_batch == 4
