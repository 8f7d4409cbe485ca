"""Where to cut a video: scene changes, then segments of a bounded length (pure, no model).

Scene changes are found on a low-resolution pass (a small thumbnail every ``step`` seconds):
a cut is where the colour histograms of consecutive thumbnails differ far more than the
video's usual change. Histograms ignore motion inside a shot, so panning or a moving subject
is not taken for a cut. Segments then follow the cuts, split or merged to stay between
``min_len`` and ``max_len`` seconds, so a 2-hour film and a 20-second clip both give a
sensible number of parts.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..processing.video import VideoInfo, iter_frames

THUMB = (32, 18)
BINS = 16


@dataclass(frozen=True)
class Span:
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


def histogram(image) -> np.ndarray:
    """Normalised per-channel colour histogram of a small RGB thumbnail: (3 * BINS,)."""
    rgb = np.asarray(image.convert("RGB").resize(THUMB), dtype=np.uint8).reshape(-1, 3)
    h = np.concatenate([np.bincount(rgb[:, c] // (256 // BINS), minlength=BINS) for c in range(3)])
    return h.astype(np.float32) / rgb.shape[0]


def thumbnails(path, info: VideoInfo, step: float = 0.5,
               progress: Optional[Callable[[int, int], None]] = None) -> Tuple[List[float], np.ndarray]:
    """(times, colour histograms (n, 3 * BINS)) every ``step`` seconds, decoded one by one."""
    wanted = sorted({min(int(t * info.fps), info.total_num_frames - 1)
                     for t in np.arange(0, info.duration, step)})
    times, thumbs = [], []
    for frame in iter_frames(path, wanted, info):
        times.append(frame.time)
        thumbs.append(histogram(frame.image))
        if progress:
            progress(len(times), len(wanted))
    return times, np.stack(thumbs) if thumbs else np.zeros((0, 3 * BINS), np.float32)


def scene_cuts(times: Sequence[float], hists: np.ndarray, sensitivity: float = 6.0, floor: float = 0.25) -> List[float]:
    """Times where the picture changes abruptly: the histogram distance (half the L1 per
    channel, 0..1) between consecutive thumbnails above ``max(floor, median + sensitivity * MAD)``."""
    if len(hists) < 2:
        return []
    diff = np.abs(np.diff(hists, axis=0)).sum(axis=1) / 6
    median = float(np.median(diff))
    mad = float(np.median(np.abs(diff - median))) + 1e-6
    threshold = max(floor, median + sensitivity * mad)
    return [float(times[i + 1]) for i in np.flatnonzero(diff > threshold)]


def plan_segments(duration: float, cuts: Sequence[float] = (), target: float = 60.0,
                  min_len: float = 8.0, max_len: float = 120.0) -> List[Span]:
    """Segments covering [0, duration): scene cuts where they fall, pieces longer than 1.5 x
    ``target`` split evenly towards ``target`` (never above ``max_len``), pieces shorter than
    ``min_len`` merged with a neighbour."""
    if duration <= 0:
        return []
    bounds = [0.0] + sorted(c for c in cuts if 0 < c < duration) + [duration]
    pieces: List[Span] = []
    for a, b in zip(bounds, bounds[1:]):
        n = max(int(np.ceil((b - a) / max_len)), int(round((b - a) / target))) if b - a > 1.5 * target else 1
        edges = np.linspace(a, b, n + 1)
        pieces += [Span(float(x), float(y)) for x, y in zip(edges, edges[1:])]
    merged: List[Span] = []
    for piece in pieces:
        if merged and (piece.length < min_len or merged[-1].length < min_len) and \
                merged[-1].length + piece.length <= max_len:
            merged[-1] = Span(merged[-1].start, piece.end)
        else:
            merged.append(piece)
    return merged


def frame_times(span: Span, per_segment: int, fps: float = 1.0) -> List[float]:
    """Sample times inside a segment: ``fps`` per second, at most ``per_segment`` spread evenly."""
    n = max(1, min(per_segment, int(np.ceil(span.length * fps))))
    return [span.start + (i + 0.5) * span.length / n for i in range(n)]
