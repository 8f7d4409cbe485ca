"""stream_generate, the prompt cache across turns, and the command lines with bad input."""

import time

import numpy as np
import pytest

import mlx.core as mx
from mlx_minicpmv import PromptCache, generate, stream_generate
from mlx_minicpmv.chat import run_chat
from mlx_minicpmv.generate import ContextError
from mlx_minicpmv.generate import main as generate_main
from tests.media import make_video, noise_image


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "p.png"
    noise_image(700, 300, seed=81).save(path)
    return path


def ask(text, image=None):
    content = ([{"type": "image", "image": str(image)}] if image else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def test_stream_reports_statistics_and_finish(tiny, picture):
    model, processor = tiny.load()
    responses = list(stream_generate(model, processor, ask("Describe this image.", picture), max_tokens=12,
                                     temperature=0.0))
    last = responses[-1]
    assert last.finish_reason in ("stop", "length") and all(r.finish_reason is None for r in responses[:-1])
    assert last.prompt_tokens > 100 and last.prompt_tps > 0 and last.generation_tps > 0
    assert last.generation_tokens == len(responses) and 0 < last.peak_memory < 24, "in GB"
    text = generate(model, processor, ask("Describe this image.", picture), max_tokens=12, temperature=0.0)
    assert text == "".join(r.text for r in responses)


def test_an_answer_is_256_tokens_at_most_unless_asked(tiny, monkeypatch):
    """mlx-lm's default length, seen with the end-of-turn tokens out of the model's reach."""
    model, processor = tiny.load()
    monkeypatch.setattr(type(processor), "eos_token_ids", property(lambda self: []))
    responses = list(stream_generate(model, processor, ask("Go on and on."), temperature=0.0))
    assert len(responses) == 256 and responses[-1].finish_reason == "length"


def test_generation_speed_is_the_tokens_over_the_time_they_took(tiny):
    """At least the tokens over the whole call's time: the rate counts only the answer's time, no
    floor (a second's floor made 8 tokens in 0.1 s read as 8 tokens/s)."""
    model, processor = tiny.load()
    tic = time.perf_counter()
    last = list(stream_generate(model, processor, ask("Hello?"), max_tokens=8, temperature=0.0))[-1]
    wall = time.perf_counter() - tic
    assert last.generation_tps >= last.generation_tokens / wall


def test_stops_on_the_eos_ids_of_generation_config(tiny, picture):
    model, processor = tiny.load()
    greedy = [r.token for r in stream_generate(model, processor, ask("Describe.", picture), max_tokens=6, temperature=0.0)]
    processor.tokenizer.add_eos_token(greedy[2])  # pretend the third greedy token ends the answer
    try:
        responses = list(stream_generate(model, processor, ask("Describe.", picture), max_tokens=6, temperature=0.0))
    finally:
        processor.tokenizer._eos_token_ids.discard(greedy[2])
    assert responses[-1].finish_reason == "stop" and len(responses) == 3


def test_seeded_sampling_is_reproducible(tiny):
    model, processor = tiny.load()
    opts = dict(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, min_p=0.05, repetition_penalty=1.1)
    a = [r.token for r in stream_generate(model, processor, ask("The quick brown fox?"), seed=7, **opts)]
    b = [r.token for r in stream_generate(model, processor, ask("The quick brown fox?"), seed=7, **opts)]
    c = [r.token for r in stream_generate(model, processor, ask("The quick brown fox?"), seed=8, **opts)]
    assert a == b and a != c


def test_cancel_between_tokens(tiny):
    model, processor = tiny.load()
    count = iter(range(100))
    responses = list(stream_generate(model, processor, ask("Go on."), max_tokens=50, temperature=0.0,
                                     cancel=lambda: next(count) >= 4))
    assert responses[-1].finish_reason == "cancelled" and len(responses) == 5


def test_follow_up_processes_only_new_tokens_and_equals_full_prefill(tiny, picture):
    model, processor = tiny.load()
    cache = PromptCache.new(model)
    first = list(stream_generate(model, processor, ask("Describe this image.", picture), prompt_cache=cache,
                                 max_tokens=5, temperature=0.0))
    after_first = list(cache.tokens)
    follow = list(stream_generate(model, processor, ask("And the colours?"), prompt_cache=cache, max_tokens=3,
                                  temperature=0.0))
    new_tokens = follow[-1].prompt_tokens
    print(f"first turn {first[-1].prompt_tokens} prompt tokens; follow-up processed {new_tokens}")
    prefix = "\n" if first[-1].finish_reason == "stop" else "<|im_end|>\n"
    assert new_tokens == processor(ask("And the colours?"), prefix=prefix).num_tokens < first[-1].prompt_tokens / 4
    assert cache.tokens[: len(after_first)] == after_first
    assert len(cache.tokens) == len(after_first) + new_tokens + len(follow)

    # A fresh prefill of the whole conversation (the first turn's image, all the tokens so far).
    first_inputs = processor(ask("Describe this image.", picture))
    conversation = mx.array([after_first + cache.tokens[len(after_first):][:new_tokens]])
    logits = model(conversation, first_inputs.pixel_values, first_inputs.target_sizes)[0, -1]
    fresh = logits - mx.logsumexp(logits)
    np.testing.assert_allclose(np.array(follow[0].logprobs), np.array(fresh), atol=1e-3, rtol=0)
    assert "<|im_end|>\n<|im_start|>user\nAnd the colours?" in processor.decode(cache.tokens)


def test_images_and_videos_are_numbered_on_across_turns(tiny, picture, tmp_path):
    """A continued conversation numbers its media as the whole conversation in one call would:
    the second turn's picture is image 1, not image 0 again."""
    model, processor = tiny.load()
    clip = make_video(tmp_path / "c.mp4", 2.0, 5)
    options = dict(video_use_image_id=True)  # number the video too

    def turn(text):
        return [{"role": "user", "content": [{"type": "image", "image": str(picture)},
                                             {"type": "video", "video": str(clip)}, {"type": "text", "text": text}]}]

    cache = PromptCache.new(model)
    first = list(stream_generate(model, processor, turn("What is here?"), prompt_cache=cache, max_tokens=3,
                                 temperature=0.0, **options))
    start = len(cache.tokens)
    second = list(stream_generate(model, processor, turn("And now?"), prompt_cache=cache, max_tokens=3,
                                  temperature=0.0, **options))
    prefix = "\n" if first[-1].finish_reason == "stop" else "<|im_end|>\n"
    expected = processor(turn("And now?"), prefix=prefix, first_image_id=1, first_video_id=1, **options)
    assert cache.tokens[start: start + second[-1].prompt_tokens] == np.array(expected.input_ids)[0].tolist()
    text = processor.decode(cache.tokens)
    assert text.count("<image_id>0</image_id>") == 2 and text.count("<image_id>1</image_id>") == 2


def test_cut_answer_is_closed_before_the_next_turn(tiny):
    model, processor = tiny.load()
    cache = PromptCache.new(model)
    list(stream_generate(model, processor, ask("Tell me a story."), prompt_cache=cache, max_tokens=3,
                         temperature=0.0))
    list(stream_generate(model, processor, ask("Shorter."), prompt_cache=cache, max_tokens=2, temperature=0.0))
    assert "<|im_end|>\n<|im_start|>user\nShorter." in processor.decode(cache.tokens)


def test_prompt_over_the_context_is_refused(tiny):
    model, processor = tiny.load()
    with pytest.raises(ContextError, match=r"model's context is 4096; use fewer video frames"):
        list(stream_generate(model, processor, ask("fox " * 5000), max_tokens=8))


def test_chat_loop_keeps_the_conversation(tiny, picture, tmp_path):
    model, processor = tiny.load()
    lines = iter([f"/image {picture}", "Describe it.", f"/image {tmp_path / 'missing.png'}", "Again?",
                  "And now?", "/reset", "Hi", "/quit"])
    out = []
    run_chat(model, processor, dict(max_tokens=4, temperature=0.0), read=lambda _: next(lines),
             write=lambda *a, **k: out.append(" ".join(map(str, a))))
    log = "\n".join(out)
    assert "error: " in log and "missing.png: no such file" in log  # a bad attachment loses no history
    stats = [line for line in out if "new prompt tokens" in line]
    assert len(stats) == 3 and "[new chat]" in log


# -- the command line with bad input: one line, exit code 1, no traceback -------------------------
def bad_inputs(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    good = make_video(tmp_path / "good.avi", 2, 10, codec="mpeg4")
    unsupported = tmp_path / "unsupported.avi"
    unsupported.write_bytes(good.read_bytes().replace(b"FMP4", b"ZQZQ"))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"
    full = make_video(tmp_path / "full.mp4", 3, 10, codec="libx264").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    return {
        "corrupt image": (["--image", str(corrupt)], "corrupt.jpg: "),
        "not an image": (["--image", str(text)], "notes.png: not an image format"),
        "missing image": (["--image", str(tmp_path / "gone.png")], "gone.png: no such file"),
        "unsupported codec": (["--video", str(unsupported)], "unsupported.avi: the video codec is not supported"),
        "zero-length video": (["--video", str(empty)], "empty.mp4: the file is empty (0 bytes)"),
        "truncated video": (["--video", str(truncated)], "truncated.mp4: not a video FFmpeg can read"),
        "prompt over context": (["--max-tokens", "5000"], "the model's context is 4096"),
    }


@pytest.mark.parametrize("case", ["corrupt image", "not an image", "missing image", "unsupported codec",
                                  "zero-length video", "truncated video", "prompt over context"])
def test_command_line_bad_input(tiny, tmp_path, capsys, case):
    args, message = bad_inputs(tmp_path)[case]
    code = generate_main(["--model", str(tiny.mlx_path), "--prompt", "What is this?", "--temp", "0", *args])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert message in err


def test_command_line_missing_model(tmp_path, capsys):
    code = generate_main(["--model", str(tmp_path / "nope"), "--prompt", "hi"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "nope: no such directory" in err and "\n" not in err


def test_command_line_streams_and_reports(tiny, picture, capsys):
    code = generate_main(["--model", str(tiny.mlx_path), "--image", str(picture), "--prompt", "Describe.",
                          "--max-tokens", "6", "--temp", "0"])
    captured = capsys.readouterr()
    assert code == 0
    assert "Prompt:" in captured.err and "tokens-per-sec" in captured.err and "Peak memory" in captured.err


def test_asking_again_about_a_video_decodes_and_encodes_nothing(tiny, tmp_path, monkeypatch):
    from mlx_minicpmv.processing import video as video_module

    model, processor = tiny.load()
    path = make_video(tmp_path / "again.mp4", 3.0, 8)
    question = [{"role": "user", "content": [{"type": "video", "video": str(path)},
                                             {"type": "text", "text": "What happens?"}]}]
    first = [r.token for r in stream_generate(model, processor, question, max_tokens=4, temperature=0.0)]
    decodes, encodes = [], []
    monkeypatch.setattr(video_module, "iter_frames", lambda *a, **k: decodes.append(a) or iter(()))
    real_encode = type(model).encode_slices
    monkeypatch.setattr(type(model), "encode_slices", lambda self, *a, **k: encodes.append(a) or real_encode(self, *a, **k))
    again = [r.token for r in stream_generate(model, processor, question, max_tokens=4, temperature=0.0)]
    assert again == first and decodes == [] and encodes == []


def test_the_token_loop_is_mlx_lms(tiny):
    """generate.generate_step yields what mlx-lm's ``generate_step`` yields, token for token and
    log-probability for log-probability, with a logits processor, over several prefill chunks
    (on the portable path, whose logsumexp is MLX's own; the CPU seam only changes its exp)."""
    from mlx_lm.generate import generate_step as mlx_lm_generate_step
    from mlx_lm.sample_utils import make_logits_processors

    from mlx_minicpmv.generate import generate_step

    model, _ = tiny.load(cpu_kernels=False)
    ids = mx.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7])
    runs = []
    for loop in (generate_step, mlx_lm_generate_step):
        cache, chunks = model.make_cache(), []
        steps = loop(ids, model, max_tokens=6, sampler=lambda lp: mx.argmax(lp, axis=-1), prompt_cache=cache,
                     logits_processors=make_logits_processors(repetition_penalty=1.3), prefill_step_size=4,
                     input_embeddings=model.embed(ids[None])[0], prompt_progress_callback=lambda d, t: chunks.append(d))
        out = list(steps)
        runs.append(([t for t, _ in out], [np.array(lp) for _, lp in out], chunks))
    (ours, our_lp, our_chunks), (theirs, their_lp, their_chunks) = runs
    assert ours == theirs and len(ours) == len(our_lp) == 6 and our_chunks == their_chunks == [0, 4, 8, 12, 13, 14]
    for a, b in zip(our_lp, their_lp):
        np.testing.assert_array_equal(a, b)
