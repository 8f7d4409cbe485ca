"""Bad or odd input to the library and the command lines: one line that names the cause, before
any work, and nothing lost (issue 11). Each test covers a class of input, not one example."""

import json
import shutil
import struct
import zlib

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from mlx_minicpmv import MediaError, load, stream_generate
from mlx_minicpmv.chat import run_chat
from mlx_minicpmv.generate import main as generate_main
from mlx_minicpmv.loading import CheckpointError
from mlx_minicpmv.processing.image import MAX_DECODED_PIXELS, load_image
from mlx_minicpmv.summarize import main as summarize_main
from mlx_minicpmv.summary import summarize
from tests.media import make_video, noise_image


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- images whose header promises more pixels than is safe to decode ---------------------------
def png_header_only(path, width, height, mode_byte=2):
    """A PNG whose header claims ``width`` x ``height`` (an 874 KB file can: zeros compress well);
    its image data is a token, so only what happens before decoding is exercised."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode_byte, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(30000, 30000), (9000, 9000), (100000, 700)])
def test_image_bomb_is_refused_before_decoding(tmp_path, size):
    path = png_header_only(tmp_path / "bomb.png", *size)
    before = rss_mb()
    with pytest.raises(MediaError, match=rf"bomb.png: too many pixels.*the limit is {MAX_DECODED_PIXELS // 10**6} MP"):
        load_image(str(path))
    assert rss_mb() - before < 50


def test_an_image_is_decoded_once(tiny, tmp_path, monkeypatch):
    from mlx_minicpmv.processing import image as image_module

    _, processor = tiny.load()
    noise_image(640, 480).save(tmp_path / "p.png")
    opened, converted = [], []
    real_open, real_rgb = image_module.open_bounded, image_module.to_rgb
    monkeypatch.setattr(image_module, "open_bounded", lambda s: opened.append(s) or real_open(s))
    monkeypatch.setattr(image_module, "to_rgb", lambda i: converted.append(i) or real_rgb(i))
    processor([{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "p.png")},
                                            {"type": "text", "text": "What?"}]}])
    assert len(opened) == 1 and len(converted) == 1


# -- paths that are not what they claim ---------------------------------------------------------
def test_folders_given_as_media_are_named_as_folders(tiny, tmp_path, capsys):
    folder = tmp_path / "holiday"
    folder.mkdir()
    for flag in ("--image", "--video"):
        code = generate_main(["--model", str(tiny.mlx_path), "--prompt", "?", flag, str(folder)])
        err = capsys.readouterr().err.strip()
        assert code == 1 and "holiday: is a folder, not a" in err and "\n" not in err


def test_a_mistyped_local_model_path_is_not_taken_for_a_repo(tmp_path, monkeypatch, capsys):
    (tmp_path / "models" / "MiniCPM-V-4.6").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    code = generate_main(["--model", "models/nope", "--prompt", "hi"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "models/nope: no such directory" in err and "MiniCPM-V-4.6" in err
    assert "Hub" not in err


def test_a_missing_shard_is_named(tiny, tmp_path):
    path = tmp_path / "split"
    shutil.copytree(tiny.mlx_path, path)
    weights = mx.load(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        mx.save_safetensors(str(path / name), {k: weights[k] for k in part})
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    load(path)  # whole: loads
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors is missing \(2 shards listed"):
        load(path)


@pytest.mark.parametrize("dtype", [mx.int32, mx.uint8, mx.bool_])
def test_a_weight_of_the_wrong_dtype_is_refused(tiny, tmp_path, dtype):
    path = tmp_path / "m"
    shutil.copytree(tiny.mlx_path, path)
    weights = mx.load(str(path / "model.safetensors"))
    key = "language_model.layers.0.mlp.up_proj.weight"
    weights[key] = weights[key].astype(dtype)
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    with pytest.raises(CheckpointError, match=rf"{key} is {dtype}, where the model needs a float type"):
        load(path)


# -- option values --------------------------------------------------------------------------------
CLI_VALUES = [("--max-tokens", "0"), ("--max-tokens", "-5"), ("--temp", "-1"), ("--top-p", "2"), ("--top-p", "0"),
              ("--top-k", "-3"), ("--min-p", "1.5"), ("--repetition-penalty", "0"), ("--max-slice-nums", "0"),
              ("--max-frames", "0"), ("--fps", "0"), ("--stack-frames", "0"), ("--seed", "-1"), ("--temp", "nan"),
              ("--max-tokens", "2.5")]


@pytest.mark.parametrize("flag, value", CLI_VALUES)
def test_out_of_range_flags_are_refused_as_parsed(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        generate_main(["--model", "unused", "--prompt", "hi", flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flag}: must be" in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value", [("--segment-seconds", "0"), ("--segment-seconds", "-5"), ("--max-frames", "0")])
def test_summarize_flags_are_refused_as_parsed(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        summarize_main(["video.mp4", "--model", "unused", flag, value])
    assert exit_.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err


@pytest.mark.parametrize("option", [dict(max_tokens=0), dict(temperature=-1), dict(top_p=2.0), dict(top_k=-3),
                                    dict(min_p=-0.1), dict(max_slice_nums=0), dict(max_num_frames=0), dict(fps=0),
                                    dict(seed=-1), dict(repetition_penalty=0)])
def test_library_options_are_range_checked(tiny, option, monkeypatch):
    model, processor = tiny.load()
    from mlx_minicpmv.processing import video as video_module

    monkeypatch.setattr(video_module, "iter_frames", lambda *a, **k: pytest.fail("work started"))
    name = next(iter(option))
    with pytest.raises(ValueError, match=rf"{name} must be"):
        list(stream_generate(model, processor, [{"role": "user", "content": "hi"}], **option))


@pytest.mark.parametrize("option", [dict(segment_seconds=0), dict(segment_seconds=-5), dict(frames_per_segment=0)])
def test_summary_options_are_range_checked(tiny, tmp_path, option):
    model, processor = tiny.load()
    with pytest.raises(ValueError, match=rf"{next(iter(option))} must be"):
        next(summarize(model, processor, tmp_path / "never-opened.mp4", **option))


# -- truncated videos: the duration is what decodes -------------------------------------------------
@pytest.fixture(scope="module")
def truncated_video(tmp_path_factory):
    """A 30 s video whose file ends about half-way; its header still says 30 s."""
    root = tmp_path_factory.mktemp("cut")
    full = make_video(root / "full.mkv", seconds=30, fps=10, scenes=(0, 1, 2, 3))
    cut = root / "cut.mkv"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.55)])
    return cut


def test_a_short_read_is_a_warning_in_generate(tiny, truncated_video, capsys):
    code = generate_main(["--model", str(tiny.mlx_path), "--video", str(truncated_video), "--prompt", "What happens?",
                          "--max-tokens", "2", "--temp", "0"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: " in err and "decodes only to 1" in err and "of the 30.0 s" in err


def test_a_short_read_is_a_warning_in_the_summary(tiny, truncated_video):
    model, processor = tiny.load()
    events = list(summarize(model, processor, truncated_video, segment_seconds=5, frames_per_segment=1, max_tokens=2))
    summary = events[-1].summary
    assert 15 <= summary.duration <= 18, summary.duration
    assert summary.chapters[-1].end <= summary.duration
    assert any("decodes only to" in w for w in summary.warnings)


# -- summarize --out ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["folder", "under a file"])
def test_summary_output_is_checked_before_any_work(tiny, tmp_path, monkeypatch, capsys, case):
    import mlx_minicpmv.loading as loading

    monkeypatch.setattr(loading, "load", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = {"folder": tmp_path, "under a file": blocker / "summary.md"}[case]
    code = summarize_main(["clip.mp4", "--model", str(tiny.mlx_path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: --out") and "\n" not in err


def test_a_summary_that_cannot_be_written_is_printed(tiny, tmp_path, monkeypatch, capsys):
    import mlx_minicpmv.summarize as command

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(command, "write_atomic", full_disk)
    video = make_video(tmp_path / "clip.mp4", seconds=4, fps=5)
    code = summarize_main([str(video), "--model", str(tiny.mlx_path), "--out", str(tmp_path / "s.md"),
                           "--max-frames", "1", "--segment-seconds", "2"])
    captured = capsys.readouterr()
    assert code == 1 and "could not write" in captured.err and "No space left" in captured.err
    assert captured.out.startswith("# clip")  # the summary itself, on standard output


def test_written_summary_follows_the_umask(tiny, tmp_path):
    import os
    import stat

    video = make_video(tmp_path / "clip.mp4", seconds=3, fps=5)
    old = os.umask(0o022)
    try:
        assert summarize_main([str(video), "--model", str(tiny.mlx_path), "--out", str(tmp_path / "s.md"),
                               "--max-frames", "1"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.md").stat().st_mode) == 0o644


# -- chat: an error ends the question, never the chat -------------------------------------------------
def test_chat_survives_every_kind_of_bad_question(tiny, picture_path):
    model, processor = tiny.load()
    lines = iter(["Hello there.", '/image "unbalanced', "what is <|image_pad|> here <image>?",
                  "x " * 3000, f"/image {picture_path.parent / 'gone.png'}", "And this?", "Last one.", "/quit"])
    out = []
    run_chat(model, processor, dict(max_tokens=3, temperature=0.0), read=lambda _: next(lines),
             write=lambda *a, **k: out.append(" ".join(map(str, a))))
    log = "\n".join(out)
    assert "quotation" in log or "quote" in log  # the unbalanced quote
    assert "context is" in log  # the overflow, in its own words
    assert "gone.png: no such file" in log
    assert "[new chat]" not in log and "could not be kept" not in log
    stats = [line for line in out if "new prompt tokens" in line]
    assert len(stats) == 3  # hello, the typed placeholder, last one (the bad attachment's question failed)
    new_tokens = [int(line.split()[0].strip("[")) for line in stats]
    assert new_tokens[-1] < 40, "the last question continued the same conversation"


@pytest.fixture
def picture_path(tmp_path):
    path = tmp_path / "p.png"
    noise_image(64, 48).save(path)
    return path
