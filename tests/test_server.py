"""The OpenAI-compatible server, end to end: uvicorn on 127.0.0.1 with the tiny model, driven by
the official ``openai`` client (and raw HTTP where a client would refuse to send the request)."""

import json
import os
import threading
import time

import httpx
import jsonschema
import pytest
from openai import OpenAI
from PIL import Image

from mlx_minicpmv import generate
from tests.media import make_video, noise_image
from tests.server_harness import MODEL, data_url, png_url, running_server, wait_idle

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    media, outside = root / "media", root / "outside"
    media.mkdir()
    outside.mkdir()
    make_video(media / "clip.mp4", seconds=3)
    make_video(media / "long.mp4", seconds=12, fps=2)
    noise_image(320, 240, seed=5).save(media / "picture.png")
    noise_image(64, 64, seed=6).save(outside / "secret.png")
    os.symlink(outside / "secret.png", media / "link.png")
    return root


@pytest.fixture(scope="module")
def server(tiny, files):
    model, processor = tiny.load()
    flags = ["--media-dir", str(files / "media"), "--max-image-pixels", "1e6", "--max-request-mb", "4",
             "--max-video-seconds", "10"]
    with running_server(model, processor, tiny.mlx_path, *flags) as (url, scheduler):
        yield url, scheduler


@pytest.fixture
def client(server):
    return OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def user(*parts):
    return [{"role": "user", "content": [*parts]}]


def text(t):
    return {"type": "text", "text": t}


def answer(model, processor, messages, **kw):
    return generate(model, processor, messages, max_tokens=kw.pop("max_tokens", MAX_TOKENS), temperature=0.0, **kw)


def streamed(client, messages, **kw):
    content, reasoning, usage, finish = [], [], None, None
    for c in client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **kw):
        if c.usage is not None:
            usage = c.usage
        for choice in c.choices:
            content.append(choice.delta.content or "")
            reasoning.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
            finish = choice.finish_reason or finish
    return "".join(content), "".join(reasoning), usage, finish


# -- answers equal generate's --------------------------------------------------------------------
CASES = {
    "text": lambda f: (user(text("The quick brown fox?")), user(text("The quick brown fox?"))),
    "image data URL": lambda f: (
        user({"type": "image_url", "image_url": {"url": png_url(noise_image(300, 200, seed=3))}}, text("What is it?")),
        user({"type": "image", "image": noise_image(300, 200, seed=3)}, text("What is it?"))),
    "video data URL": lambda f: (
        user({"type": "video_url", "video_url": {"url": data_url((f / "media" / "clip.mp4").read_bytes(), "video/mp4")}},
             text("What happens?")),
        user({"type": "video", "video": str(f / "media" / "clip.mp4")}, text("What happens?"))),
    "video path": lambda f: (
        user({"type": "video_url", "video_url": {"url": "clip.mp4"}}, text("And here?")),
        user({"type": "video", "video": str(f / "media" / "clip.mp4")}, text("And here?"))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_answers_equal_generate_greedy(tiny, files, client, case):
    model, processor = tiny.load()
    request, library = CASES[case](files)
    expected = answer(model, processor, library)
    prompt_tokens = processor(library).num_tokens
    r = client.chat.completions.create(model=MODEL, messages=request, max_tokens=MAX_TOKENS)
    assert r.choices[0].message.content == expected
    assert r.usage.prompt_tokens == prompt_tokens and r.usage.completion_tokens <= MAX_TOKENS
    assert r.choices[0].finish_reason in ("stop", "length")
    # Streamed, and now continuing from the state the first request stored: the same answer.
    content, reasoning, usage, finish = streamed(client, request, max_tokens=MAX_TOKENS)
    assert content == expected and reasoning == "" and finish == r.choices[0].finish_reason
    assert usage.prompt_tokens == prompt_tokens and usage.prompt_tokens_details.cached_tokens > 0


def test_follow_up_about_a_video_prefills_only_the_new_turn(tiny, files, server, client, monkeypatch):
    """...and resizes and encodes nothing: the stored state covers the video, so the processor
    only counts its placeholders (its frames are neither resized nor through the vision tower)."""
    from mlx_minicpmv.processing import processor as processing

    model, processor = tiny.load()
    scheduler = server[1]
    first = user({"type": "video_url", "video_url": {"url": "clip.mp4"}}, text("Summarise the video."))
    r1 = client.chat.completions.create(model=MODEL, messages=first, max_tokens=8)
    video_tokens = processor(user({"type": "video", "video": str(files / "media" / "clip.mp4")},
                                  text("Summarise the video."))).video_spans[0]
    follow = first + [{"role": "assistant", "content": r1.choices[0].message.content}, {"role": "user", "content": "Then?"}]
    work = []
    slice_image, encode = processing.slice_image, type(scheduler.ctx.model).encode_slices
    monkeypatch.setattr(processing, "slice_image", lambda *a, **k: work.append("resize") or slice_image(*a, **k))
    monkeypatch.setattr(type(scheduler.ctx.model), "encode_slices",
                        lambda *a, **k: work.append("encode") or encode(*a, **k))
    r2 = client.chat.completions.create(model=MODEL, messages=follow, max_tokens=8)
    assert work == []
    cached = r2.usage.prompt_tokens_details.cached_tokens
    print(f"follow-up: {r2.usage.prompt_tokens} prompt tokens, {cached} from the stored state")
    assert cached >= video_tokens[1] and r2.usage.prompt_tokens - cached < r1.usage.prompt_tokens / 4
    # The stored state changes nothing in the answer: the same request from nothing.
    scheduler.ctx.store.clear()
    r3 = client.chat.completions.create(model=MODEL, messages=follow, max_tokens=8)
    assert r3.usage.prompt_tokens_details.cached_tokens == 0 and "resize" in work  # the counters see real work
    assert r3.choices[0].message.content == r2.choices[0].message.content


# -- parameters ------------------------------------------------------------------------------------
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["colour", "count", "ok"],
          "properties": {"colour": {"enum": ["red", "green", "blue"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 9}, "ok": {"type": "boolean"}}}


def test_json_schema_answer_validates(client):
    messages = [{"role": "user", "content": "Describe the picture as JSON."}]
    free = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40).choices[0].message.content
    with pytest.raises((ValueError, jsonschema.ValidationError)):  # the random model alone writes no such JSON
        jsonschema.validate(json.loads(free), SCHEMA)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, response_format={
        "type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}})
    print(r.choices[0].message.content)
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    assert r.choices[0].finish_reason == "stop"


def test_json_object_and_system_prompt(client):
    system = {"role": "system", "content": "You are a careful assistant who answers in JSON. " * 3}
    r = client.chat.completions.create(model=MODEL, messages=[system, {"role": "user", "content": "A fox?"}],
                                       max_tokens=30, response_format={"type": "json_object"})
    text_ = r.choices[0].message.content
    assert text_.startswith("{")  # the random model alone starts with anything
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text_), dict)
    # A new chat with the same system prompt continues from the state after it.
    r2 = client.chat.completions.create(model=MODEL, messages=[system, {"role": "user", "content": "A dog?"}],
                                        max_tokens=2)
    assert r2.usage.prompt_tokens_details.cached_tokens >= 30


def test_json_schema_after_thinking(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Think, then answer in JSON."}], max_tokens=80,
        logit_bias={}, extra_body={"chat_template_kwargs": {"enable_thinking": True}},
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}})
    # The random model may think until max_tokens; if it ends its reasoning, the answer is valid JSON.
    if r.choices[0].finish_reason == "stop":
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


@pytest.mark.parametrize("thinking", [False, True])
def test_thinking_on_and_off(tiny, client, thinking):
    model, processor = tiny.load()
    messages = [{"role": "user", "content": "Think about the fox."}]
    expected = answer(model, processor, messages, max_tokens=20, enable_thinking=thinking)
    kw = dict(max_tokens=20, extra_body={"chat_template_kwargs": {"enable_thinking": thinking}})
    r = client.chat.completions.create(model=MODEL, messages=messages, **kw)
    reasoning = (r.choices[0].message.model_extra or {}).get("reasoning_content")
    content, s_reasoning, _, _ = streamed(client, messages, **kw)
    if not thinking:
        assert reasoning is None and r.choices[0].message.content == expected == content
        return
    think, closed, after = expected.partition("</think>")
    assert reasoning == think == s_reasoning
    assert r.choices[0].message.content == (after.lstrip("\n") if closed else "") == content


def test_seed_stop_and_logprobs(tiny, client):
    model, processor = tiny.load()
    messages = [{"role": "user", "content": "In the first scene a car drives"}]
    sampled = [client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=1.0,
                                              seed=s).choices[0].message.content for s in (7, 7, 8)]
    assert sampled[0] == sampled[1] != sampled[2]

    expected = answer(model, processor, messages, max_tokens=16)
    stop = next(expected[i: i + 2] for i in range(3, len(expected) - 2) if expected[i: i + 2].isprintable())
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, stop=[stop])
    assert r.choices[0].message.content == expected[: expected.find(stop)] and r.choices[0].finish_reason == "stop"

    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert 1 <= len(entries) <= 6
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)  # greedy: the chosen token is the best
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server[0] + "/health").json()["status"] == "ok"


# -- many clients -------------------------------------------------------------------------------------
PROMPTS = ["Describe the picture.", "The quick brown fox?", "Summarise the video.", "Compare the two images.",
           "In the first scene", "Thinking step by step", "A cat sits on a red sofa", "0123456789 + - * /"]


def concurrent_request(i):
    content = [text(PROMPTS[i])]
    if i % 3 == 0:
        content.insert(0, {"type": "image_url", "image_url": {"url": png_url(noise_image(200 + 20 * i, 150, seed=i))}})
    return dict(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=10 + 4 * i)


def test_eight_concurrent_clients_get_what_each_gets_alone(server, client):
    scheduler = server[1]
    alone = [client.chat.completions.create(**concurrent_request(i)).choices[0].message.content for i in range(8)]
    scheduler.ctx.store.clear()
    scheduler.peak_batch = 0
    results = [None] * 8
    barrier = threading.Barrier(8)

    def ask(i):
        barrier.wait()
        if i % 2:
            results[i] = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                stream=True, **concurrent_request(i)) if c.choices)
        else:
            results[i] = client.chat.completions.create(**concurrent_request(i)).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    print(f"peak decode batch {scheduler.peak_batch}")
    assert results == alone
    assert scheduler.peak_batch >= 4  # they were decoded together, not one after another


# -- disconnects, queue, limits -------------------------------------------------------------------------
def test_disconnect_frees_the_slot(tiny, files):
    model, processor = tiny.load()
    with running_server(model, processor, tiny.mlx_path, "--max-concurrency", "1") as (url, scheduler):
        never_stop = {str(t): -100 for t in processor.eos_token_ids}
        body = dict(model=MODEL, messages=[{"role": "user", "content": "Go on and on."}], max_tokens=3000,
                    stream=True, logit_bias=never_stop)
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
        # Not streamed: the client gives up waiting, long before its 3000 tokens (the tiny model
        # decodes ~1000 a second on the CPU path).
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=dict(body, stream=False), timeout=0.5)
        assert wait_idle(scheduler, 30)
        assert scheduler.stats().tokens < 2000 and scheduler.served == 0
        r = httpx.post(url + "/v1/chat/completions", json=dict(body, stream=False, max_tokens=4), timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4


def test_full_queue_answers_503_with_retry_after(tiny):
    model, processor = tiny.load()
    flags = ("--max-concurrency", "1", "--max-queue", "1")
    with running_server(model, processor, tiny.mlx_path, *flags, pump=False) as (url, scheduler):
        body = dict(model=MODEL, messages=[{"role": "user", "content": "Go on."}], max_tokens=4)
        first = []
        waiting = threading.Thread(target=lambda: first.append(httpx.post(url + "/v1/chat/completions", json=body,
                                                                          timeout=60)))
        waiting.start()
        deadline = time.time() + 10
        while scheduler.stats().waiting < 1 and time.time() < deadline:
            time.sleep(0.02)
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        assert "busy" in r.json()["error"]["message"] and r.json()["error"]["code"] == "server_busy"
        scheduler.start()  # the owner starts pumping: the queued request is answered
        waiting.join(30)
        assert first[0].status_code == 200


BAD = {
    "malformed JSON": (b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
    "wrong type": (dict(messages="hello"), 400, "messages"),
    "no messages": (dict(messages=[]), 400, "messages"),
    "unknown model": (dict(model="gpt-4"), 404, "does not exist"),
    "n=2": (dict(n=2), 400, "n=2"),
    "negative max_tokens": (dict(max_tokens=-1), 400, "max_tokens"),
    "audio part": (dict(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]), 400,
                   "input_audio"),
    "corrupt image": (dict(messages=user({"type": "image_url", "image_url": {"url": data_url(b"\x89PNG junk" * 50,
                                                                                            "image/png")}})), 400, "image"),
    "not base64": (dict(messages=user({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}})), 400,
                   "base64"),
    "corrupt video": (dict(messages=user({"type": "video_url", "video_url": {"url": data_url(os.urandom(4000),
                                                                                            "video/mp4")}})), 400, "video"),
    "unsupported video type": (dict(messages=user({"type": "video_url", "video_url": {"url": data_url(b"abc", "text/plain")}})),
                               400, "text/plain"),
    "image over the pixel limit": (dict(messages=user({"type": "image_url", "image_url": {"url": "big"}})), 400,
                                   "--max-image-pixels"),
    "prompt over the context": (dict(messages=[{"role": "user", "content": "fox " * 5000}]), 400, "context"),
    "answer over the context": (dict(max_tokens=100000), 400, "max_tokens"),
    "bad schema": (dict(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}), 400,
                   "schema"),
    "top_logprobs alone": (dict(top_logprobs=2), 400, "logprobs"),
    "logit_bias out of the vocabulary": (dict(logit_bias={"99999999": 5}), 400, "logit_bias"),
    "logit_bias not a token id": (dict(logit_bias={"fox": 5}), 400, "logit_bias"),
    "tools": (dict(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tool"),
    "request too large": (dict(padding="x" * (5 * 2**20)), 413, "--max-request-mb"),
    "too many frames": (dict(mm_processor_kwargs={"max_num_frames": 1000}), 400, "--max-video-frames"),
    "video too long": (dict(messages=user({"type": "video_url", "video_url": {"url": "long.mp4"}})), 400,
                       "--max-video-seconds"),
    "unknown mm kwarg": (dict(mm_processor_kwargs={"frames": 3}), 400, "mm_processor_kwargs"),
    "system message later": (dict(messages=[{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                                            {"role": "user", "content": "c"}]), 400, "system"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_gets_its_status_and_message_and_the_server_goes_on(server, case):
    url = server[0]
    body, status, words = BAD[case]
    if isinstance(body, dict):
        body = dict(dict(model=MODEL, messages=user({"type": "video_url", "video_url": {"url": "clip.mp4"}},
                                                    text("Hi"))) if case == "too many frames" else
                    dict(model=MODEL, messages=[{"role": "user", "content": "Hi"}]), **body)
        if case == "image over the pixel limit":
            body["messages"][0]["content"][0]["image_url"]["url"] = png_url(Image.new("RGB", (1200, 1000), (20, 90, 200)))
        body = json.dumps(body).encode()
    r = httpx.post(url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    error = r.json()["error"]
    print(case, r.status_code, error["message"])
    assert r.status_code == status
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"]
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    ok = httpx.post(url + "/v1/chat/completions", timeout=60,
                    json=dict(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


# -- safety -------------------------------------------------------------------------------------------
def test_api_key_is_checked(tiny):
    model, processor = tiny.load()
    with running_server(model, processor, tiny.mlx_path, "--api-key", "sesame") as (url, _):
        body = dict(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/health").status_code == 200
        good = OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert good.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=2).choices


@pytest.mark.parametrize("where", ["../outside/secret.png", "{outside}/secret.png", "file://{outside}/secret.png",
                                   "link.png", "file:///etc/hostname"])
def test_paths_that_leave_the_media_folders_are_refused(server, files, where):
    url = where.format(outside=files / "outside")
    body = dict(model=MODEL, messages=user({"type": "image_url", "image_url": {"url": url}}, text("Hi")))
    r = httpx.post(server[0] + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed"
    assert "--media-dir" in r.json()["error"]["message"]


def test_paths_need_a_media_dir_and_remote_media_is_off(tiny, files):
    model, processor = tiny.load()
    with running_server(model, processor, tiny.mlx_path, "--allowed-origins", "http://localhost:3000") as (url, _):
        for src, code in ((str(files / "media" / "picture.png"), "path_not_allowed"),
                          ("http://127.0.0.1:9/picture.png", "remote_media_disabled")):
            body = dict(model=MODEL, messages=user({"type": "image_url", "image_url": {"url": src}}, text("Hi")))
            r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
            assert r.status_code == 400 and r.json()["error"]["code"] == code
        preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
        r = httpx.options(url + "/v1/chat/completions", headers=preflight)
        assert r.headers.get("access-control-allow-origin") == "http://localhost:3000"


def test_cors_is_off_by_default(server):
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(server[0] + "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers


def test_embedded_server_runs_on_a_thread_the_caller_owns(tiny):
    """The app's shape: HTTP on its own thread, MLX only on the thread that calls ``pump``."""
    from mlx_minicpmv.server.embedded import EmbeddedServer

    model, processor = tiny.load()
    server = EmbeddedServer(model, processor, port=0, api_key="k", model_name="app-model")
    address = server.start()
    answers, calls, owner = [], [], threading.current_thread()
    cls = type(model.language_model)
    original = cls.__call__

    def recording(self, *a, **k):
        calls.append(threading.current_thread())
        return original(self, *a, **k)

    client = OpenAI(base_url=address, api_key="k", max_retries=0)
    ask = threading.Thread(target=lambda: answers.append(client.chat.completions.create(
        model="app-model", max_tokens=3, messages=[{"role": "user", "content": "Hi"}])))
    cls.__call__ = recording
    try:
        ask.start()
        deadline = time.time() + 60
        while ask.is_alive() and time.time() < deadline:
            server.pump(timeout=0.05)
        ask.join(1)
    finally:
        cls.__call__ = original
        port = server.port
        try:
            with pytest.raises(OSError, match="choose another port"):
                EmbeddedServer(model, processor, port=port).start()
        finally:
            server.stop()
    assert answers and answers[0].choices[0].message.role == "assistant"
    assert calls and set(calls) == {owner}


def test_mm_processor_kwargs_reach_the_processor(tiny, files, client):
    model, processor = tiny.load()
    video = str(files / "media" / "clip.mp4")
    picture = noise_image(900, 500, seed=9)
    for kwargs, library, video_options in (
        ({"max_num_frames": 2}, {}, dict(max_num_frames=2)),
        ({"fps": 2, "stack_frames": 2}, {}, dict(fps=2.0, stack_frames=2)),
        ({"max_slice_nums": 1, "downsample_mode": "4x"}, dict(max_slice_nums=1, downsample_mode="4x"), {}),
    ):
        from mlx_minicpmv.processing.video import load_video_units

        frames = list(load_video_units(video, **{**dict(max_num_frames=128, stack_frames=1, fps=1.0), **video_options}))
        expected = processor(user({"type": "image", "image": picture}, {"type": "video", "video": frames}, text("Hi")),
                             **library).num_tokens
        r = client.chat.completions.create(
            model=MODEL, max_tokens=1, extra_body={"mm_processor_kwargs": kwargs},
            messages=user({"type": "image_url", "image_url": {"url": png_url(picture)}},
                          {"type": "video_url", "video_url": {"url": "clip.mp4"}}, text("Hi")))
        assert r.usage.prompt_tokens == expected, kwargs


# -- MiniCPM-V 4.7: canvas positions through stored conversations and the decode batch ---------------
@pytest.fixture(scope="module")
def canvas(request, torch_threads, files):
    """The 16x tiny 4.7 checkpoint behind a server whose scheduler starts when a test says so."""
    from tests.conftest import tiny_model

    t = tiny_model(request, "canvas")
    model, processor = t.load()
    with running_server(model, processor, t.mlx_path, "--media-dir", str(files / "media"), pump=False) as (url, s):
        yield t, OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120), s


def test_a_4_7_model_serves_what_generate_answers(canvas, files):
    """Images, a follow-up from the stored state (its positions laid out anew from the whole
    conversation), and three requests decoded in one batch (each row its own text positions):
    the answers ``generate`` gives each conversation from nothing."""
    t, client, scheduler = canvas
    model, processor = t.load()
    picture = files / "media" / "picture.png"
    wide = noise_image(700, 300, seed=12)
    asked = {
        "image": (user({"type": "image_url", "image_url": {"url": "picture.png"}}, text("What is it?")),
                  user({"type": "image", "image": str(picture)}, text("What is it?"))),
        "sliced image": (user({"type": "image_url", "image_url": {"url": png_url(wide)}}, text("And this?")),
                         user({"type": "image", "image": wide}, text("And this?"))),
        "text": (user(text("The quick brown fox?")), user(text("The quick brown fox?"))),
    }
    expected = {k: answer(model, processor, library) for k, (_, library) in asked.items()}
    assert len(set(expected.values())) == 3, "the three answers differ, so a swapped row would show"
    results, threads = {}, []
    for k, (request, _) in asked.items():
        ask = lambda k=k, request=request: results.__setitem__(k, client.chat.completions.create(
            model=MODEL, messages=request, max_tokens=MAX_TOKENS))
        threads.append(threading.Thread(target=ask))
        threads[-1].start()
    while scheduler.stats().waiting < 3:  # queued before the scheduler runs: they decode together
        time.sleep(0.02)
    scheduler.start()
    for thread in threads:
        thread.join(300)
    assert {k: r.choices[0].message.content for k, r in results.items()} == expected
    assert scheduler.peak_batch >= 2

    first, library = asked["sliced image"]
    follow = [{"role": "assistant", "content": expected["sliced image"]}, {"role": "user", "content": "Then?"}]
    r = client.chat.completions.create(model=MODEL, messages=first + follow, max_tokens=MAX_TOKENS)
    image_end = processor(library).image_spans[-1][1]
    assert r.usage.prompt_tokens_details.cached_tokens >= image_end, "continued from the stored state"
    assert r.choices[0].message.content == answer(model, processor, library + follow)
