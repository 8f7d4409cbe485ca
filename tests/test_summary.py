"""Video summarisation: segments, scene cuts, timestamps, exports, partial results, bounded memory."""

import json
import re

import numpy as np
import pytest

from mlx_minicpmv.processing.video import probe
from mlx_minicpmv.summarize import main as summarize_main
from mlx_minicpmv.summary import FORMATS, Span, plan_segments, scene_cuts, summarize
from mlx_minicpmv.summary.segments import frame_times, thumbnails
from tests.media import make_video


def test_scene_cuts_are_found_where_they_are(tmp_path):
    path = make_video(tmp_path / "cuts.mp4", seconds=20, fps=10, scenes=(0, 1, 2, 3))
    info = probe(path)
    cuts = scene_cuts(*thumbnails(path, info))
    # each cut at the first thumbnail (one every 0.5 s) that shows the new scene
    assert len(cuts) == 3 and all(t - 1e-6 <= c < t + 0.5 for c, t in zip(cuts, (5, 10, 15))), cuts
    one_shot = make_video(tmp_path / "one.mp4", seconds=10, fps=10, scenes=(1,))
    assert scene_cuts(*thumbnails(one_shot, probe(one_shot))) == [], "motion inside a shot is not a cut"


def test_a_change_of_a_quarter_of_a_still_picture_is_where_a_cut_begins():
    """The distance between two thumbnails is the share of the picture whose colour changed
    (0..1), and on a still shot a cut needs more than the floor of 0.25: a change of 9/32 of
    the picture is one, 7/32 is not."""
    from PIL import Image

    from mlx_minicpmv.summary.segments import THUMB, histogram

    def picture(columns):
        pixels = np.zeros((THUMB[1], THUMB[0], 3), np.uint8)
        pixels[:, :columns] = 255
        return histogram(Image.fromarray(pixels))

    times = [0.5 * i for i in range(10)]
    for columns, cuts in ((9, [2.5]), (7, [])):
        hists = np.stack([picture(0)] * 5 + [picture(columns)] * 5)
        assert scene_cuts(times, hists) == cuts, f"{columns}/32 of the picture changed"


@pytest.mark.parametrize("duration,cuts,target", [(7200.0, [], 60.0), (600.0, [33.0, 34.0, 300.0], 60.0),
                                                  (20.0, [5.0, 10.0, 15.0], 5.0), (3.0, [], 60.0)])
def test_segments_cover_the_video_within_bounds(duration, cuts, target):
    spans = plan_segments(duration, cuts, target=target, min_len=min(8.0, target / 2), max_len=2 * target)
    assert spans[0].start == 0.0 and spans[-1].end == duration
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))
    assert all(s.length <= 2 * target + 1e-9 for s in spans)
    assert all(s.length >= min(8.0, target / 2) - 1e-9 for s in spans[:-1]) or len(spans) == 1
    for cut in cuts:  # a cut is a boundary unless it would leave a sliver
        near = min(abs(s.start - cut) for s in spans)
        assert near < 1e-9 or any(s.start < cut < s.end and (cut - s.start < 8 or s.end - cut < 8) for s in spans)
    if duration == 7200.0:
        assert len(spans) == 120


def test_frame_times_stay_inside_their_segment():
    times = frame_times(Span(60.0, 120.0), 8)
    assert len(times) == 8 and all(60.0 < t < 120.0 for t in times)
    assert frame_times(Span(0.0, 2.0), 8) == [0.5, 1.5]  # never more than 1 fps


@pytest.fixture(scope="module")
def summary(tiny, tmp_path_factory):
    model, processor = tiny.load()
    path = make_video(tmp_path_factory.mktemp("s") / "three.mp4", seconds=15, fps=10, scenes=(0, 1, 2))
    events = list(summarize(model, processor, path, segment_seconds=5, frames_per_segment=3,
                            segments_per_chapter=2, max_tokens=12))
    return events


def test_end_to_end_summary_on_the_tiny_model(summary):
    stages = [e.stage for e in summary]
    assert stages[0] == "scanning" and stages[-1] == "done"
    assert stages.count("segment") == 3 and stages.count("chapter") == 2
    result = summary[-1].summary
    segments = [s for c in result.chapters for s in c.segments]
    assert [(s.start, s.end) for s in segments] == [(0.0, 5.0), (5.0, 10.0), (10.0, 15.0)]
    for s in segments:  # every statement knows the time range and the frames it came from
        assert s.frame_times and all(s.start <= t < s.end for t in s.frame_times)
    assert result.chapters[0].start == 0.0 and result.chapters[-1].end == 15.0
    assert all(c.title for c in result.chapters) and result.overview is not None
    eta = [e.eta_seconds for e in summary if e.stage == "segment"]
    assert eta[-1] == 0.0 and all(x >= 0 for x in eta)


def parse_cues(text: str, sep: str):
    pattern = rf"(\d\d):(\d\d):(\d\d){sep}(\d\d\d) --> (\d\d):(\d\d):(\d\d){sep}(\d\d\d)\n(.+)"
    cues = []
    for m in re.finditer(pattern, text):
        g = [int(x) for x in m.groups()[:8]]
        cues.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000,
                     m.group(9)))
    return cues


def test_exports_parse_back(summary):
    result = summary[-1].summary
    expected = [(c.start, c.end, c.title) for c in result.chapters]
    srt = FORMATS["srt"](result)
    assert parse_cues(srt, ",") == expected and srt.startswith("1\n00:00:00,000 --> ")
    vtt = FORMATS["vtt"](result)
    assert vtt.startswith("WEBVTT\n\n") and parse_cues(vtt, r"\.") == expected
    data = json.loads(FORMATS["json"](result))
    assert [s["frame_times"] for c in data["chapters"] for s in c["segments"]]
    md = FORMATS["md"](result)
    assert md.count("## [") == len(result.chapters) and "- **0:00–0:05**" in md


def test_truncated_video_keeps_the_part_before(tiny, tmp_path):
    model, processor = tiny.load()
    full = make_video(tmp_path / "full.mkv", seconds=20, fps=10, scenes=(0, 1, 2, 3))
    cut = tmp_path / "cut.mkv"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.55)])
    events = list(summarize(model, processor, cut, segment_seconds=5, frames_per_segment=2, max_tokens=4))
    result = events[-1].summary
    segments = [s for c in result.chapters for s in c.segments]
    assert 1 <= len(segments) < 4, "the readable first part is summarised"
    assert result.warnings and "truncated" in result.warnings[0] or "could not be read" in result.warnings[0]


def rss_mb(field: str = "VmRSS") -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_growth_mb(run) -> float:
    """How far the resident memory rose above its level at the start while ``run()`` ran: the
    kernel's own high-water mark (VmHWM), reset first, so no short peak between samples hides."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    start = rss_mb()
    run()
    return rss_mb("VmHWM") - start


needs_proc = pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"),
                                reason="reads Linux /proc (the memory figures are Linux's)")


@needs_proc
def test_scene_scan_memory_stays_bounded(tmp_path):
    """The scan decodes a thumbnail every 0.5 s and keeps only its histogram: 2.5 minutes of
    640x360 (300 decoded frames, 207 MB as RGB) in a few MB (seen: 2)."""
    path = make_video(tmp_path / "scan.mp4", seconds=150, fps=2, width=640, height=360, scenes=(0, 1))
    info = probe(path)
    found = {}
    grew = peak_growth_mb(lambda: found.update(cuts=scene_cuts(*thumbnails(path, info))))
    print(f"peak RSS growth while scanning: {grew:.0f} MB")
    assert len(found["cuts"]) == 1 and grew < 60


@needs_proc
def test_memory_stays_bounded_on_a_long_video(tiny, tmp_path):
    """8 minutes of 640x360 (2880 frames: 2 GB if decoded at once) summarised in bounded memory."""
    model, processor = tiny.load()
    path = make_video(tmp_path / "long.mp4", seconds=480, fps=6, width=640, height=360, scenes=(0, 1, 2, 3))
    events = []
    grew = peak_growth_mb(lambda: events.extend(summarize(model, processor, path, segment_seconds=60,
                                                          frames_per_segment=2, max_tokens=2)))
    event = events[-1]
    assert event.stage == "done" and len([s for c in event.summary.chapters for s in c.segments]) >= 8
    print(f"peak RSS growth while summarising 8 minutes: {grew:.0f} MB")
    assert grew < 400


def test_command_line_writes_the_chosen_format(tiny, tmp_path, capsys):
    path = make_video(tmp_path / "clip.mp4", seconds=6, fps=10, scenes=(0, 1))
    out = tmp_path / "chapters.vtt"
    code = summarize_main([str(path), "--model", str(tiny.mlx_path), "--out", str(out), "--max-frames", "2",
                           "--segment-seconds", "3"])
    assert code == 0 and out.read_text().startswith("WEBVTT")
    assert "segment" in capsys.readouterr().err


def test_command_line_audio_only_file(tiny, tmp_path, capsys):
    import av
    import numpy as np

    wav = tmp_path / "voice.wav"
    with av.open(str(wav), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    code = summarize_main([str(wav), "--model", str(tiny.mlx_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "voice.wav: the file has no video stream" in err


def test_follow_up_uses_the_frames_the_summary_saw_without_decoding_or_encoding(tiny, summary, monkeypatch):
    from mlx_minicpmv.processing import video as video_module
    from mlx_minicpmv.summary import follow_up

    model, processor = tiny.load()
    result = summary[-1].summary
    assert len(result.seen) == 6  # 2 kept per segment
    monkeypatch.setattr(video_module, "iter_frames", lambda *a, **k: pytest.fail("decoded again"))
    monkeypatch.setattr(type(model), "encode_slices", lambda *a, **k: pytest.fail("encoded again"))
    answer = [r.token for r in follow_up(model, processor, result, "What colour is the car?", max_tokens=6,
                                         temperature=0.0)]
    assert len(answer) >= 1
    monkeypatch.undo()
    # The same question over those frames decoded and encoded afresh gives the same tokens.
    from mlx_minicpmv.processing.video import iter_frames, probe

    path = result.video
    info = probe(path)
    times = [f.time for f in result.seen]
    frames = [(f.image, f.time) for f in iter_frames(path, [min(int(t * info.fps), info.total_num_frames - 1)
                                                           for t in times], info)]
    fresh = [r.token for r in stream_generate_frames(model, processor, frames, "What colour is the car?")]
    assert answer == fresh


def stream_generate_frames(model, processor, frames, question, **options):
    from mlx_minicpmv import stream_generate

    content = [{"type": "video", "video": frames}, {"type": "text", "text": question}]
    return stream_generate(model, processor, [{"role": "user", "content": content}], max_tokens=6, temperature=0.0,
                           **options)


def hand_made_summary():
    from mlx_minicpmv.summary import Chapter, SegmentSummary, Summary

    return Summary(
        video="/videos/trip.mp4", duration=3725.5, title="trip", overview="A drive, then a long walk.",
        chapters=[
            Chapter(0.0, 65.5, "The car", [SegmentSummary(0.0, 30.0, "A car starts.", [3.75, 11.25]),
                                           SegmentSummary(30.0, 65.5, "It drives off.", [40.0])]),
            Chapter(65.5, 3725.5, "Walking", [SegmentSummary(65.5, 3725.5, "Someone walks.", [100.0, 3700.25])]),
        ],
        warnings=["Stopped after 1:01:05; the rest was not summarised."])


def test_markdown_export_gives_each_chapter_its_times():
    assert FORMATS["md"](hand_made_summary()) == (
        "# trip\n\nA drive, then a long walk.\n\n"
        "## [0:00–1:05] The car\n\n- **0:00–0:30** A car starts.\n- **0:30–1:05** It drives off.\n\n"
        "## [1:05–1:02:05] Walking\n\n- **1:05–1:02:05** Someone walks.\n\n"
        "> Stopped after 1:01:05; the rest was not summarised.\n")


def test_subtitle_exports_count_hours_and_milliseconds():
    summary = hand_made_summary()
    assert FORMATS["srt"](summary) == ("1\n00:00:00,000 --> 00:01:05,500\nThe car\n\n"
                                       "2\n00:01:05,500 --> 01:02:05,500\nWalking\n")
    assert FORMATS["vtt"](summary) == ("WEBVTT\n\nchapter-1\n00:00:00.000 --> 00:01:05.500\nThe car\n\n"
                                       "chapter-2\n00:01:05.500 --> 01:02:05.500\nWalking\n")


def test_json_export_holds_every_field_and_no_features():
    summary = hand_made_summary()
    summary.seen = ["frames a follow-up question would use"]  # never exported
    assert json.loads(FORMATS["json"](summary)) == {
        "video": "/videos/trip.mp4", "duration": 3725.5, "title": "trip", "overview": "A drive, then a long walk.",
        "chapters": [
            {"start": 0.0, "end": 65.5, "title": "The car", "segments": [
                {"start": 0.0, "end": 30.0, "text": "A car starts.", "frame_times": [3.75, 11.25]},
                {"start": 30.0, "end": 65.5, "text": "It drives off.", "frame_times": [40.0]}]},
            {"start": 65.5, "end": 3725.5, "title": "Walking", "segments": [
                {"start": 65.5, "end": 3725.5, "text": "Someone walks.", "frame_times": [100.0, 3700.25]}]}],
        "warnings": ["Stopped after 1:01:05; the rest was not summarised."]}


def test_each_description_is_the_models_answer_in_max_tokens(tiny, tmp_path, prompts):
    """A segment's description is the model's greedy answer to that segment's question in
    ``max_tokens`` tokens, no more and no less: the same input through the library gives it."""
    from mlx_minicpmv.generate import stream_tokens
    from mlx_minicpmv.summary.pipeline import clean

    model, processor = tiny.load()
    path = make_video(tmp_path / "two.mp4", seconds=4, fps=5)
    events = list(summarize(model, processor, path, segment_seconds=2, frames_per_segment=2, max_tokens=3,
                            scene_detection=False))
    segments = [e.segment for e in events if e.stage == "segment"]
    assert len(segments) == 2
    eos = set(processor.eos_token_ids)
    for segment, inputs in zip(segments, prompts):  # the segments' questions come first
        tokens = [s.token for s in stream_tokens(model, inputs, max_tokens=3, eos_token_ids=eos)]
        assert len(tokens) == 3, "the tiny model ended early: the test cannot tell 3 tokens from 4"
        assert segment.text == clean(processor.decode(tokens))


def test_stop_keeps_what_was_summarised_and_says_where_it_stopped(tiny, tmp_path):
    model, processor = tiny.load()
    path = make_video(tmp_path / "stop.mp4", seconds=15, fps=10, scenes=(0, 1, 2))
    events = []
    for event in summarize(model, processor, path, segment_seconds=5, frames_per_segment=2, max_tokens=3,
                           cancel=lambda: any(e.stage == "segment" for e in events)):
        events.append(event)
    result = events[-1].summary
    assert [e.stage for e in events] == ["scanning", "segment", "chapter", "done"]
    assert [(s.start, s.end) for c in result.chapters for s in c.segments] == [(0.0, 5.0)]
    assert result.warnings == ["Stopped after 0:05; the rest was not summarised."]
    assert "> Stopped after 0:05" in FORMATS["md"](result)


THINKING_WARNING = ("The model was still thinking when its tokens ran out, so some parts have no text; "
                    "turn thinking off or allow more tokens.")


def short_summary(tiny, path, **options):
    model, processor = tiny.load()
    events = list(summarize(model, processor, path, segment_seconds=2, frames_per_segment=2, max_tokens=2,
                            scene_detection=False, **options))
    return events[-1].summary


def test_system_detail_and_thinking_reach_every_question_and_the_follow_up(tiny, tmp_path, prompts, monkeypatch):
    from mlx_minicpmv.summary import follow_up, pipeline

    monkeypatch.setattr(pipeline, "THINKING_TOKENS", 2)  # the random model never ends a thought: keep it short
    model, processor = tiny.load()
    path = make_video(tmp_path / "v.mp4", seconds=4, fps=5)
    short_summary(tiny, path)
    plain = list(prompts)
    prompts.clear()
    summary = short_summary(tiny, path, system="Answer as a film critic.", downsample_mode="4x", enable_thinking=True)
    asked = list(prompts)
    assert len(asked) == len(plain) == 4  # two segments, a chapter title, the overview
    for out in asked:
        assert out.text.startswith("<|im_start|>system\nAnswer as a film critic.<|im_end|>")
        assert out.text.endswith("assistant\n<think>\n") and out.downsample_mode == "4x"
    vpad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    # about four times the tokens a frame (each mode resizes it to its own whole blocks: 520 against 140)
    assert sum(np.array(asked[0].input_ids).ravel() == vpad) > 3 * sum(np.array(plain[0].input_ids).ravel() == vpad)
    assert summary.warnings == [THINKING_WARNING]  # once, however many answers it cut short
    assert [s.text for c in summary.chapters for s in c.segments] == ["", ""]
    assert [c.title for c in summary.chapters] == ["Part 1"] and summary.overview == ""

    # A follow-up gets the system prompt, and the frames' own detail whatever the options say
    # (their 4x features are reused as they are).
    prompts.clear()
    list(follow_up(model, processor, summary, "Who drives?", system="Be brief.", downsample_mode="16x",
                   max_tokens=2, temperature=0.0))
    (out,) = prompts
    assert out.text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and out.downsample_mode == "4x"
    assert out.video_features is not None and out.video_features.shape[0] == sum(
        f.features.shape[0] for f in summary.seen)


def test_the_summary_keeps_what_follows_the_thinking(tiny, tmp_path, monkeypatch):
    """With thinking on, each answer is what the model says after ``</think>``."""
    from types import SimpleNamespace

    from mlx_minicpmv.summary import pipeline

    _, processor = tiny.load()
    said = processor.tokenizer.encode("A car waits.</think>\n\nA red car drives off.", add_special_tokens=False)
    assert processor.tokenizer.convert_tokens_to_ids("</think>") in said
    monkeypatch.setattr(pipeline, "stream_tokens", lambda *a, **k: (SimpleNamespace(token=t) for t in said))
    summary = short_summary(tiny, make_video(tmp_path / "v.mp4", seconds=4, fps=5), enable_thinking=True)
    assert [s.text for c in summary.chapters for s in c.segments] == ["A red car drives off."] * 2
    assert [c.title for c in summary.chapters] == ["A red car drives off."]
    assert summary.overview == "A red car drives off." and summary.warnings == []


def test_command_line_takes_system_detail_and_thinking(tiny, tmp_path, prompts, monkeypatch, capsys):
    from mlx_minicpmv.summary import pipeline

    monkeypatch.setattr(pipeline, "THINKING_TOKENS", 2)
    path = make_video(tmp_path / "v.mp4", seconds=4, fps=5)
    code = summarize_main([str(path), "--model", str(tiny.mlx_path), "--max-frames", "2", "--segment-seconds", "2",
                           "--no-scenes", "--format", "json", "--system", "Be brief.", "--downsample-mode", "4x",
                           "--thinking"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["chapters"]
    assert prompts and all(p.text.startswith("<|im_start|>system\nBe brief.<|im_end|>") for p in prompts)
    assert all(p.downsample_mode == "4x" and p.text.endswith("<think>\n") for p in prompts)
    assert f"warning: {THINKING_WARNING}" in err
    with pytest.raises(SystemExit):
        summarize_main([str(path), "--model", str(tiny.mlx_path), "--downsample-mode", "8x"])
    assert "--downsample-mode: invalid choice: '8x'" in capsys.readouterr().err
