"""Summarise a video of any length into chapters a person can navigate by time.

The model does not know time, so the pipeline supplies it: the video is cut into segments
(scene changes, bounded lengths), each segment's frames are decoded, encoded, described and
dropped before the next, so memory stays bounded whatever the length; every statement keeps
the time range of the frames it came from. Segments are then grouped into chapters, each
titled by the model from its segments' text, and an overview is written from the chapters.
``summarize`` is a generator of progress events, so the app shows chapters as they finish.
"""

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

import mlx.core as mx

from ..generate import feature_cache, generate, stream_generate, stream_tokens
from ..processing import EncodedVideo
from ..processing.errors import MediaError
from ..processing.video import iter_frames, probe
from .export import short
from .segments import Span, frame_times, plan_segments, scene_cuts, thumbnails

SEGMENT_PROMPT = ("These frames are from {start} to {end} of a video. Describe what happens in this part in two or "
                  "three sentences. Mention only what is visible.")
TITLE_PROMPT = ("Here are descriptions of consecutive parts of a video:\n{text}\n\nGive a short title (at most eight "
                "words) for this chapter. Answer with the title only.")
OVERVIEW_PROMPT = ("Here are the chapters of a video with their descriptions:\n{text}\n\nWrite a short overall "
                   "summary of the video in three sentences.")


@dataclass
class SegmentSummary:
    start: float
    end: float
    text: str
    frame_times: List[float]


@dataclass
class Chapter:
    start: float
    end: float
    title: str
    segments: List[SegmentSummary] = field(default_factory=list)


@dataclass
class Summary:
    video: str
    duration: float
    title: str = ""
    overview: str = ""
    chapters: List[Chapter] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    # ``summarize`` also sets ``seen``: a list of SeenFrame for ``follow_up`` (kept out of asdict).


@dataclass
class SeenFrame:
    """One frame the summary looked at, as the model saw it (for follow-up questions)."""

    time: float
    replacement: str
    features: mx.array


@dataclass
class Progress:
    """One event of ``summarize``: what stage, how far, and what just finished."""

    stage: str  # "scanning", "segment", "chapter", "overview", "done"
    done: int
    total: int
    eta_seconds: Optional[float] = None
    segment: Optional[SegmentSummary] = None
    chapter: Optional[Chapter] = None
    summary: Optional[Summary] = None


# Special-token text (``<|image_pad|>``, ``<slice>``, ...) in a generated answer must not turn
# into placeholders when that answer is quoted in the next prompt.
SPECIAL = re.compile(r"<\|[a-z_]+\|>|</?(image|slice|image_id|ref|box|quad|point|timestamp|think)>")


def clean(text: str) -> str:
    return " ".join(SPECIAL.sub(" ", text).split())


def group_chapters(segments: List[SegmentSummary], per_chapter: int) -> List[List[SegmentSummary]]:
    return [segments[i: i + per_chapter] for i in range(0, len(segments), per_chapter)]


def summarize(model, processor, path: Union[str, Path], *, segment_seconds: float = 60.0,
              frames_per_segment: int = 8, segments_per_chapter: int = 3, scene_detection: bool = True,
              max_tokens: int = 160, cancel: Optional[Callable[[], bool]] = None,
              keep_per_segment: int = 2, **generation) -> Iterator[Progress]:
    """Yield ``Progress`` events; the last one (stage "done") carries the ``Summary``.

    A broken part of the file ends the segment loop with what was summarised so far kept and a
    warning added; a file that cannot be opened at all raises ``MediaError``.
    """
    path = str(path)
    info = probe(path)
    generation = dict(dict(temperature=0.0), **generation)
    summary = Summary(video=path, duration=info.duration, title=Path(path).stem)

    cuts: List[float] = []
    if scene_detection:
        times, thumbs = thumbnails(path, info, step=0.5)
        cuts = scene_cuts(times, thumbs)
        yield Progress("scanning", len(times), len(times))
    spans = plan_segments(info.duration, cuts, target=segment_seconds, min_len=min(8.0, segment_seconds / 2),
                          max_len=2 * segment_seconds)
    done: List[SegmentSummary] = []
    seen: List[SeenFrame] = []
    tic = time.perf_counter()
    for i, span in enumerate(spans):
        if cancel and cancel():
            summary.warnings.append(f"Stopped after {short(span.start)}; the rest was not summarised.")
            break
        try:
            frames = segment_frames(path, info, span, frames_per_segment)
        except MediaError as e:
            summary.warnings.append(f"The video could not be read after {short(span.start)} ({e}); "
                                    "the summary covers the part before.")
            break
        if not frames:
            summary.warnings.append(f"No frame could be decoded after {short(span.start)}; the file may be truncated.")
            break
        prompt = SEGMENT_PROMPT.format(start=short(span.start), end=short(span.end))
        messages = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": prompt}]}]
        inputs = processor(messages, video_max_slice_nums=1)
        text = clean(answer(model, processor, inputs, max_tokens, generation))
        segment = SegmentSummary(span.start, span.end, text, [t for _, t in frames])
        seen += remember(model, processor, inputs, keep_per_segment)
        done.append(segment)
        del frames
        elapsed = time.perf_counter() - tic
        yield Progress("segment", i + 1, len(spans), eta_seconds=elapsed / (i + 1) * (len(spans) - i - 1),
                       segment=segment)

    groups = group_chapters(done, segments_per_chapter)
    for k, group in enumerate(groups):
        text = "\n".join(f"[{short(s.start)}–{short(s.end)}] {s.text}" for s in group)
        title = clean(generate(model, processor, [{"role": "user", "content": TITLE_PROMPT.format(text=text)}],
                               max_tokens=24, **generation)).strip('"').splitlines()[0:1]
        chapter = Chapter(group[0].start, group[-1].end, (title[0] if title else "") or f"Part {k + 1}", group)
        summary.chapters.append(chapter)
        yield Progress("chapter", k + 1, len(groups), chapter=chapter)
    if summary.chapters:
        text = "\n".join(f"[{short(c.start)}–{short(c.end)}] {c.title}: " + " ".join(s.text for s in c.segments)
                         for c in summary.chapters)
        summary.overview = clean(generate(model, processor, [{"role": "user", "content": OVERVIEW_PROMPT.format(text=text)}],
                                          max_tokens=max_tokens, **generation))
    summary.seen = seen  # not a dataclass field: features stay out of the exports
    yield Progress("done", len(done), len(spans), summary=summary)


def answer(model, processor, inputs, max_tokens: int, generation: dict) -> str:
    eos = set(processor.eos_token_ids)
    tokens = [t for t, *_ in stream_tokens(model, inputs, max_tokens=max_tokens, eos_token_ids=eos, **generation)]
    return processor.decode([t for t in tokens if t not in eos])


def remember(model, processor, inputs, keep: int) -> List[SeenFrame]:
    """Up to ``keep`` frames of a segment as the model saw them: placeholder text and features
    (from the feature cache the segment's answer just filled, so nothing is encoded again)."""
    if keep <= 0:
        return []
    mode = inputs.downsample_mode
    features = feature_cache.features(model, inputs.pixel_values_videos, inputs.target_sizes_videos, mode)
    divisor = 4 if mode == "4x" else 16
    counts = [int(h) * int(w) // divisor for h, w in inputs.target_sizes_videos.tolist()]  # one slice per frame
    offsets = [sum(counts[:i]) for i in range(len(counts) + 1)]
    t = processor.tokens
    frames = [SeenFrame(time, t.image_start + t.video * n + t.image_end, features[offsets[i]: offsets[i + 1]])
              for i, (time, n) in enumerate(zip(inputs.frame_times[0], counts))]
    step = max(1, len(frames) // keep)
    return frames[::step][:keep]


def follow_up(model, processor, summary: Summary, question: str, *, max_frames: int = 32, **options):
    """Stream an answer to a question about a summarised video from the frames the summary
    saw: nothing is decoded or encoded again. ``options`` as for ``stream_generate``."""
    seen = getattr(summary, "seen", None)
    if not seen:
        raise ValueError("this summary kept no frames; summarise the video again (keep_per_segment > 0)")
    chosen = seen[:: max(1, -(-len(seen) // max_frames))][:max_frames]
    video = EncodedVideo("".join(f.replacement for f in chosen), mx.concatenate([f.features for f in chosen]),
                         [f.time for f in chosen])
    content = [{"type": "video", "video": video}, {"type": "text", "text": question}]
    return stream_generate(model, processor, [{"role": "user", "content": content}], **options)


def segment_frames(path, info, span: Span, per_segment: int):
    """Decode just this segment's sampled frames: [(PIL image, seconds)]."""
    times = frame_times(span, per_segment)
    indices = [min(int(t * info.fps), info.total_num_frames - 1) for t in times]
    return [(f.image.convert("RGB"), f.time) for f in iter_frames(path, sorted(set(indices)), info)]
