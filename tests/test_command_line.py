"""One command line, as mlx-lm has it: ``python -m mlx_minicpmv <command>`` and the
``minicpmv-<command>`` scripts, on the tiny model, with nothing on stderr but what the command
says; and the media flags reach the processor as the reference's options do."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_minicpmv.cli import options_from_args
from mlx_minicpmv.generate import build_parser
from tests.media import make_video, noise_image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROCESSOR_KEYS = ("max_slice_nums", "downsample_mode", "fps", "stack_frames", "max_num_frames", "enable_thinking")


def run(args, stdin=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="default")
    return subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def no_warning(stderr: str) -> bool:
    return "Warning" not in stderr and "warning:" not in stderr and "Traceback" not in stderr


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    noise_image(448, 448).save(root / "p.png")  # whole 56-pixel blocks: 4x mode has exactly 4x the tokens
    make_video(root / "v.mp4", seconds=3, fps=5)
    return root


@pytest.mark.parametrize("form", ["module", "script", "old module"])
def test_generate_runs_in_every_form_without_warnings(tiny, media, form):
    command = {"module": [sys.executable, "-m", "mlx_minicpmv", "generate"],
               "script": [str(BIN / "minicpmv-generate")],
               "old module": [sys.executable, "-m", "mlx_minicpmv.generate"]}[form]
    done = run(command + ["--model", str(tiny.mlx_path), "--image", str(media / "p.png"), "--prompt", "-",
                          "--max-tokens", "3", "--temp", "0", "--json"], stdin="What is this?")
    assert done.returncode == 0 and no_warning(done.stderr), done.stderr
    answer = json.loads(done.stdout)
    assert answer["generation_tokens"] >= 1 and answer["prompt_tokens"] > 20 and answer["peak_memory_gb"] > 0
    assert set(answer) >= {"text", "finish_reason", "prompt_tps", "generation_tps", "warnings"}


def test_chat_convert_and_summarize_run_as_commands(tiny, media, tmp_path):
    chat = run([sys.executable, "-m", "mlx_minicpmv", "chat", "--model", str(tiny.mlx_path), "--max-tokens", "2",
                "--temp", "0"], stdin="Hello\n/quit\n")
    assert chat.returncode == 0 and no_warning(chat.stderr) and "new prompt tokens" in chat.stdout, chat.stderr
    convert = run([str(BIN / "minicpmv-convert"), "--hf-path", str(tiny.hf_path), "--mlx-path", str(tmp_path / "m"),
                   "--dtype", "float32"])
    assert convert.returncode == 0 and no_warning(convert.stderr) and (tmp_path / "m" / "config.json").exists()
    summary = run([str(BIN / "minicpmv-summarize"), str(media / "v.mp4"), "--model", str(tiny.mlx_path),
                   "--max-frames", "1", "--format", "json"])
    assert summary.returncode == 0 and no_warning(summary.stderr), summary.stderr
    assert json.loads(summary.stdout)["chapters"]
    listing = run([sys.executable, "-m", "mlx_minicpmv", "--help"])
    assert listing.returncode == 0 and all(c in listing.stdout for c in ("generate", "chat", "convert", "summarize"))
    unknown = run([sys.executable, "-m", "mlx_minicpmv", "nope"])
    assert unknown.returncode == 2 and "unknown command 'nope'" in unknown.stderr


def processed(processor, argv, content):
    options = options_from_args(build_parser().parse_args(["--model", "m", "--prompt", "p", *argv]))
    return processor([{"role": "user", "content": content}], **{k: options[k] for k in PROCESSOR_KEYS if k in options})


def test_media_flags_change_what_the_processor_makes(tiny, media):
    _, processor = tiny.load()
    image = [{"type": "image", "image": str(media / "p.png")}, {"type": "text", "text": "?"}]
    video = [{"type": "video", "video": str(media / "v.mp4")}, {"type": "text", "text": "?"}]
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    vpad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")

    def count(out, token):
        return int(np.sum(np.array(out.input_ids) == token))

    assert count(processed(processor, ["--downsample-mode", "4x"], image), pad) == \
        4 * count(processed(processor, [], image), pad)
    plain, stacked = processed(processor, [], video), processed(processor, ["--stack-frames", "3"], video)
    assert len(stacked.frame_times[0]) == 2 * len(plain.frame_times[0])  # a composite beside each second
    assert count(stacked, vpad) > count(plain, vpad)
    assert len(processed(processor, ["--fps", "2"], video).frame_times[0]) == 2 * len(plain.frame_times[0])
    assert len(processed(processor, ["--max-frames", "2"], video).frame_times[0]) == 2
    one = processed(processor, ["--max-slice-nums", "1"], [{"type": "image", "image": noise_image(1344, 1008)}])
    assert np.array(one.target_sizes).shape[0] == 1  # the source only: no slices
    # Thinking on opens a think block for the model to fill; off closes an empty one.
    assert processed(processor, ["--thinking"], image).text.endswith("assistant\n<think>\n")
    assert processed(processor, [], image).text.endswith("assistant\n<think>\n\n</think>\n\n")
