"""Summarise a video of any length into chapters a person can navigate by time.

The model does not know time, so the pipeline supplies it: the video is cut into segments
(scene changes, bounded lengths), each segment's frames are decoded, encoded, described and
dropped before the next, so memory stays bounded whatever the length; every statement keeps
the time range of the frames it came from. Segments are then grouped into chapters, each
titled by the model from its segments' text, and an overview is written from the chapters.
``summarize`` is a generator of progress events, so the app shows chapters as they finish.

Every question of a summary (segment descriptions, chapter titles, the overview) is put the
same way: after the system prompt if one is given, at the chosen image detail, with or without
thinking; the thinking is dropped from what the summary keeps.
"""

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

import mlx.core as mx
import numpy as np

from ..downsample import patches_per_token
from ..errors import MediaError
from ..downsample import merge_side
from ..generate import feature_cache, stream_generate, stream_tokens
from ..options import check_all
from ..processing import EncodedVideo
from ..processing.video import decoded_end, iter_frames, probe, short_read
from .export import short
from .records import Chapter, Progress, SeenFrame, SegmentSummary, Summary
from .segments import Span, frame_times, plan_segments, scene_cuts, thumbnails

SEGMENT_PROMPT = ("These frames are from {start} to {end} of a video. Describe what happens in this part in two or "
                  "three sentences. Mention only what is visible.")
TITLE_PROMPT = ("Here are descriptions of consecutive parts of a video:\n{text}\n\nGive a short title (at most eight "
                "words) for this chapter. Answer with the title only.")
OVERVIEW_PROMPT = ("Here are the chapters of a video with their descriptions:\n{text}\n\nWrite a short overall "
                   "summary of the video in three sentences.")
# With thinking on, each answer may first think for this many tokens beyond its own length.
THINKING_TOKENS = 512


# Special-token text (``<|image_pad|>``, ``<slice>``, ...) in a generated answer must not turn
# into placeholders when that answer is quoted in the next prompt.
SPECIAL = re.compile(r"<\|[a-z_]+\|>|</?(image|slice|image_id|ref|box|quad|point|timestamp|think)>")


def clean(text: str) -> str:
    return " ".join(SPECIAL.sub(" ", text).split())


def group_chapters(segments: List[SegmentSummary], per_chapter: int) -> List[List[SegmentSummary]]:
    return [segments[i: i + per_chapter] for i in range(0, len(segments), per_chapter)]


def system_messages(system: Optional[str]) -> List[dict]:
    return [{"role": "system", "content": system}] if system else []


@dataclass
class Asker:
    """How a summary puts each question: system prompt, image detail, thinking and sampling."""

    model: object
    processor: object
    system: Optional[str]
    downsample_mode: Optional[str]
    thinking: bool
    sampling: dict

    def inputs(self, content, **options):
        messages = system_messages(self.system) + [{"role": "user", "content": content}]
        return self.processor(messages, downsample_mode=self.downsample_mode, enable_thinking=self.thinking,
                              **options)

    def answer(self, inputs, max_tokens: int) -> Optional[str]:
        """The answer without its thinking; None if the thinking had not ended within its tokens."""
        eos = set(self.processor.eos_token_ids)
        budget = max_tokens + (THINKING_TOKENS if self.thinking else 0)
        tokens = [s.token for s in stream_tokens(self.model, inputs, max_tokens=budget, eos_token_ids=eos,
                                                 **self.sampling)]
        text = self.processor.decode([t for t in tokens if t not in eos])
        if not self.thinking:
            return text
        _, ended, answer = text.partition("</think>")  # the prompt opened the thinking
        return answer if ended else None


def summarize(model, processor, path: Union[str, Path], *, segment_seconds: float = 60.0,
              frames_per_segment: int = 8, segments_per_chapter: int = 3, scene_detection: bool = True,
              max_tokens: int = 160, cancel: Optional[Callable[[], bool]] = None,
              keep_per_segment: int = 2, system: Optional[str] = None, downsample_mode: Optional[str] = None,
              enable_thinking: bool = False, **sampling) -> Iterator[Progress]:
    """Yield ``Progress`` events; the last one (stage "done") carries the ``Summary``.

    ``system``, ``downsample_mode`` and ``enable_thinking`` as for ``stream_generate``, for every
    question the summary asks; ``sampling``: ``temperature`` (default 0), ``top_p``, ``top_k``,
    ``min_p``, ``repetition_penalty``, ``seed``. With thinking on, each answer gets
    ``THINKING_TOKENS`` more to think in, and only what follows the thinking is kept.

    A broken part of the file ends the segment loop with what was summarised so far kept and a
    warning added; a file that cannot be opened at all raises ``MediaError``.
    """
    check_all(segment_seconds=segment_seconds, frames_per_segment=frames_per_segment, max_tokens=max_tokens)
    if downsample_mode is not None:
        merge_side(downsample_mode)  # a ValueError naming the modes, before any work
    path = str(path)
    info = probe(path)
    ask = Asker(model, processor, system, downsample_mode, enable_thinking, dict(dict(temperature=0.0), **sampling))
    end = decoded_end(path, info)  # the duration is what decodes, not what the header says
    if end <= 0:
        raise MediaError(f"{path}: no frame could be decoded; the file is truncated or the codec unsupported")
    summary = Summary(video=path, duration=end, title=Path(path).stem)
    if end < info.duration - 1 / info.fps:
        summary.warnings.append(short_read(path, info, end))
        info = replace(info, duration=end, total_num_frames=max(1, int(end * info.fps)))

    def kept(text: Optional[str]) -> str:
        if text is None:
            warning = ("The model was still thinking when its tokens ran out, so some parts have no text; "
                       "turn thinking off or allow more tokens.")
            if warning not in summary.warnings:
                summary.warnings.append(warning)
            return ""
        return clean(text)

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
        inputs = ask.inputs([{"type": "video", "video": frames}, {"type": "text", "text": prompt}],
                            video_max_slice_nums=1)
        text = kept(ask.answer(inputs, max_tokens))
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
        title = kept(ask.answer(ask.inputs(TITLE_PROMPT.format(text=text)), 24))
        title = title.strip('"').splitlines()[0:1]
        chapter = Chapter(group[0].start, group[-1].end, (title[0] if title else "") or f"Part {k + 1}", group)
        summary.chapters.append(chapter)
        yield Progress("chapter", k + 1, len(groups), chapter=chapter)
    if summary.chapters:
        text = "\n".join(f"[{short(c.start)}–{short(c.end)}] {c.title}: " + " ".join(s.text for s in c.segments)
                         for c in summary.chapters)
        summary.overview = kept(ask.answer(ask.inputs(OVERVIEW_PROMPT.format(text=text)), max_tokens))
    summary.seen = seen  # not a dataclass field: features stay out of the exports
    yield Progress("done", len(done), len(spans), summary=summary)


def remember(model, processor, inputs, keep: int) -> List[SeenFrame]:
    """Up to ``keep`` frames of a segment as the model saw them: placeholder text and features
    (from the feature cache the segment's answer just filled, so nothing is encoded again)."""
    if keep <= 0:
        return []
    mode = inputs.downsample_mode
    features = feature_cache.features(model, inputs.pixel_values_videos, inputs.target_sizes_videos, mode)
    divisor = patches_per_token(mode)
    sizes = [(int(h), int(w)) for h, w in inputs.target_sizes_videos.tolist()]  # one slice per frame
    counts = [h * w // divisor for h, w in sizes]
    offsets = [sum(counts[:i]) for i in range(len(counts) + 1)]
    t = processor.tokens
    frames = [SeenFrame(time, t.image_start + t.video * n + t.image_end, features[offsets[i]: offsets[i + 1]], sizes[i],
                        mode) for i, (time, n) in enumerate(zip(inputs.frame_times[0], counts))]
    step = max(1, len(frames) // keep)
    return frames[::step][:keep]


def follow_up(model, processor, summary: Summary, question: str, *, max_frames: int = 32,
              system: Optional[str] = None, **options):
    """Stream an answer to a question about a summarised video from the frames the summary
    saw: nothing is decoded or encoded again. ``system``: a system prompt before the question;
    ``options`` as for ``stream_generate``, but the image detail is the one the frames were
    seen at (their features are reused as they are)."""
    seen = getattr(summary, "seen", None)
    if not seen:
        raise ValueError("this summary kept no frames; summarise the video again (keep_per_segment > 0)")
    chosen = seen[:: max(1, -(-len(seen) // max_frames))][:max_frames]
    video = EncodedVideo("".join(f.replacement for f in chosen), mx.concatenate([f.features for f in chosen]),
                         [f.time for f in chosen], np.array([f.size for f in chosen], np.int32))
    content = [{"type": "video", "video": video}, {"type": "text", "text": question}]
    options["downsample_mode"] = chosen[0].mode
    return stream_generate(model, processor, system_messages(system) + [{"role": "user", "content": content}],
                           **options)


def segment_frames(path, info, span: Span, per_segment: int):
    """Decode just this segment's sampled frames: [(PIL image, seconds)]."""
    times = frame_times(span, per_segment)
    indices = [min(int(t * info.fps), info.total_num_frames - 1) for t in times]
    return [(f.image.convert("RGB"), f.time) for f in iter_frames(path, sorted(set(indices)), info)]
