"""The interactive chat loop and the one-shot command line, as a person at the terminal sees them."""

import re

import pytest

from mlx_minicpmv import generate
from mlx_minicpmv.chat import run_chat
from mlx_minicpmv.cli import user_message
from mlx_minicpmv.generate import main as generate_main
from tests.media import noise_image

OPTIONS = dict(max_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "p.png"
    noise_image(300, 200, seed=3).save(path)
    return path


def chat(tiny, lines):
    """The session's screen, without the timings (they differ from run to run)."""
    model, processor = tiny.load()
    typed, out = iter(lines + ["/quit"]), []
    run_chat(model, processor, dict(OPTIONS), read=lambda _: next(typed), write=lambda *a, **k: out.append(
        " ".join(map(str, a)) + k.get("end", "\n")))
    return re.sub(r"at [\d.]+ tok/s|peak [\d.]+ GB", "", "".join(out))


def turns(screen):
    """(answer, prompt tokens) of each turn."""
    notes = ("Type a question", "[attached ", "[new chat]", "error: ")
    body = "\n".join(line for line in screen.split("\n") if not line.startswith(notes))
    parts = re.split(r"\n\[(\d+) new prompt tokens[^\]]*\]\n", body)
    return list(zip(parts[0:-1:2], map(int, parts[1::2])))


def test_a_bad_attachment_loses_the_question_not_the_conversation(tiny, picture, tmp_path):
    broken = chat(tiny, [f"/image {picture}", "Describe it.", f"/image {tmp_path / 'missing.png'}", "Again?",
                         "And the colours?"])
    clean = chat(tiny, [f"/image {picture}", "Describe it.", "And the colours?"])
    assert "missing.png: no such file" in broken
    assert turns(broken) == turns(clean), "the next question goes on from the same conversation"


def test_each_question_continues_the_conversation_and_reset_starts_over(tiny, picture):
    model, processor = tiny.load()
    screen = chat(tiny, [f"/image {picture}", "Describe it.", "And the colours?", "/reset", "Hi"])
    (first, n1), (second, n2), (after_reset, n3) = turns(screen)
    assert "[new chat]" in screen
    cache_free = processor([user_message("Describe it.", [str(picture)])]).num_tokens
    assert n1 == cache_free, "the picture goes with the first question"
    # the follow-up processes only its own tokens (after the end of the first answer), no picture
    assert n2 < processor([user_message("And the colours?")]).num_tokens + 3 < cache_free
    fresh = generate(model, processor, [user_message("Hi")], **OPTIONS)
    assert (after_reset, n3) == (fresh, processor([user_message("Hi")]).num_tokens)
    assert first == generate(model, processor, [user_message("Describe it.", [str(picture)])], **OPTIONS)


def test_command_line_prints_the_answer(tiny, picture, capsys):
    model, processor = tiny.load()
    code = generate_main(["--model", str(tiny.mlx_path), "--image", str(picture), "--prompt", "Describe.",
                          "--max-tokens", "6", "--temp", "0"])
    out = capsys.readouterr().out
    expected = generate(model, processor, [user_message("Describe.", [str(picture)])], max_tokens=6,
                        temperature=0.0)
    assert code == 0 and expected.strip() and out == expected + "\n"
