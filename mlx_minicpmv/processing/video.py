"""Video decoding with PyAV and frame sampling equal to ``MiniCPMV4_6VideoProcessor`` (spec §9).

Frames are decoded as a stream and only the sampled ones are kept (converted to RGB), so a
video is never held in memory whole; where the stream has a constant frame rate and the next
wanted frame is far ahead, the decoder seeks instead of decoding everything in between.
Every frame keeps its presentation time.
"""

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from PIL import Image

from ..errors import MediaError

SEPARATOR_PX = 6


@dataclass(frozen=True)
class VideoInfo:
    """The metadata the reference samples from (``stream.frames``, ``average_rate``)."""

    path: str
    total_num_frames: int
    fps: float
    duration: float
    width: int
    height: int


@dataclass
class Frame:
    index: int
    time: float
    image: Image.Image


def _open(path):
    import av
    import os

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise MediaError(f"{path}: the file is empty (0 bytes); was the copy or download interrupted?")
    try:
        container = av.open(str(path))
    except IsADirectoryError:
        raise MediaError(f"{path}: is a folder, not a video file") from None
    except FileNotFoundError:
        raise MediaError(f"{path}: no such file") from None
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: not a video FFmpeg can read ({e.strerror or e}); is the file complete?") from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: the file has no video stream (audio only?)")
    return container


def probe(path) -> VideoInfo:
    container = _open(path)
    with container:
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.codec is None:
            raise MediaError(f"{path}: the video codec is not supported by this FFmpeg build")
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        total = int(stream.frames or 0)
        if total == 0 and fps:
            # Containers without a frame count (some MKV/WebM): estimate it from the duration.
            seconds = (float(stream.duration * stream.time_base) if stream.duration
                       else (container.duration or 0) / 1e6)
            total = int(round(seconds * fps))
        if total <= 0 or fps <= 0:
            raise MediaError(f"{path}: the video has no frames (zero length or unreadable header)")
        return VideoInfo(str(path), total, fps, total / fps, stream.width, stream.height)


def sample_indices(info: VideoInfo, max_num_frames: int = 128, stack_frames: int = 1,
                   fps: float = 1.0) -> Tuple[List[int], List[int], List[float]]:
    """(main frame indices, sub-frame indices, sub-frame times) as the reference samples them.

    ``fps`` = 1 is the reference; another rate samples main frames every 1/fps seconds with the
    same cap of ``max_num_frames`` uniform frames for long videos.
    """
    total, avg_fps, duration = info.total_num_frames, info.fps, info.duration
    num_seconds = math.ceil(duration)
    if duration * fps > max_num_frames:
        timestamps = [round(i * 0.1, 1) for i in range(int(duration / 0.1))]
        main = [min(int(ts * avg_fps), total - 1) for ts in timestamps]
        if len(main) > max_num_frames:
            main = [main[i] for i in np.linspace(0, len(main) - 1, max_num_frames, dtype=int)]
    elif fps == 1.0:
        main = [int(i * avg_fps) for i in range(num_seconds)]
    else:
        main = [min(int(i / fps * avg_fps), total - 1) for i in range(math.ceil(duration * fps))]
    sub_times: List[float] = []
    if stack_frames > 1:
        sub_times = [sec + j / stack_frames for sec in range(num_seconds)
                     for j in range(1, stack_frames) if sec + j / stack_frames < duration]
        cap = max_num_frames * (stack_frames - 1)
        if len(sub_times) > cap:
            sub_times = [sub_times[int(i)] for i in np.linspace(0, len(sub_times) - 1, cap, dtype=int)]
    sub = [min(int(t * avg_fps), total - 1) for t in sub_times]
    return main, sub, sub_times


def iter_frames(path, indices: Sequence[int], info: VideoInfo = None) -> Iterator[Frame]:
    """Yield the frames at the given decode-order indices (sorted, repeats allowed), one at a time."""
    import av

    wanted = sorted(indices)
    if not wanted:
        return
    container = _open(path)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 0)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        # Seeking maps a time back to a decode index, which is exact only at a constant rate.
        constant = bool(stream.guessed_rate and stream.average_rate and stream.guessed_rate == stream.average_rate)
        pos, k = 0, 0
        sought = None  # the frame the last seek was for: decode forward to it, never seek for it again
        try:
            while k < len(wanted):
                if constant and wanted[k] - pos > 4 * rate + 16 and sought != wanted[k]:
                    target = start + (wanted[k] - 0.5) / rate
                    container.seek(int(target / stream.time_base), stream=stream, backward=True)
                    pos, sought = None, wanted[k]
                for frame in container.decode(stream):
                    t = float(frame.pts * stream.time_base) if frame.pts is not None else (pos or 0) / (rate or 1)
                    if pos is None:  # after a seek, recover the index from the timestamp
                        pos = int(round((t - start) * rate))
                    while k < len(wanted) and wanted[k] == pos:
                        image = upright(frame)
                        yield Frame(pos, t, image)
                        k += 1
                        while k < len(wanted) and wanted[k] == pos:
                            yield Frame(pos, t, image)
                            k += 1
                    pos += 1
                    if k < len(wanted) and constant and wanted[k] - pos > 4 * rate + 16 and sought != wanted[k]:
                        break
                else:
                    break  # end of stream
        except av.error.FFmpegError as e:
            if k == 0:
                raise MediaError(f"{path}: the video cannot be decoded ({e.strerror or e}); the file is corrupt") from None
            # A broken tail: keep what was decoded (the caller sees fewer frames than asked).
        if k < len(wanted) and k == 0:
            raise MediaError(f"{path}: no frame could be decoded; the file is truncated or the codec unsupported")


def decoded_end(path, info: VideoInfo, step: float = 5.0) -> float:
    """How far the file really decodes, in seconds: the header's duration when its last frame
    decodes, else just past the last frame a coarse scan (every ``step`` s) finds. A truncated
    download keeps the header of the whole video."""
    def times_of(indices):
        try:
            return [f.time for f in iter_frames(path, indices, info)]
        except MediaError:  # none of them decodes
            return []

    last = info.total_num_frames - 1
    if times_of([last]):
        return info.duration
    coarse = sorted({min(int(t * info.fps), last) for t in np.arange(0, info.duration, step)})
    times = times_of(coarse)
    if not times:
        return 0.0
    reached = coarse[len(times) - 1]  # then every frame after the last one the scan reached
    times = times_of(list(range(reached, min(last, reached + int(step * info.fps) + 1)))) or times
    return min(info.duration, times[-1] + 1 / info.fps)


def short_read(path, info: VideoInfo, end: float) -> str:
    return (f"{path}: the file decodes only to {end:.1f} s of the {info.duration:.1f} s its header gives; "
            "it may be truncated (an interrupted copy or download), so the rest was not seen")


def upright(frame) -> Image.Image:
    """The frame as it is meant to be shown: phones store portrait video as landscape frames
    plus a display matrix (``frame.rotation``, degrees counterclockwise), applied here. The
    reference ignores it, so only rotated videos differ from it."""
    image = frame.to_image()
    rotation = getattr(frame, "rotation", 0) or 0
    return image.rotate(rotation, expand=True) if rotation % 360 else image


def stack_canvas(images: Sequence[Image.Image]) -> Image.Image:
    """Sub-frames of one second on one canvas with 6 px black lines (reference layout)."""
    n, width, height = len(images), images[0].width, images[0].height

    def ratio(rows, cols):
        return (cols * width + (cols - 1) * SEPARATOR_PX) / max(1, rows * height + (rows - 1) * SEPARATOR_PX)

    if n == 4:
        rows, cols = 2, 2
    elif n == 3:
        rows, cols = min([(1, 3), (3, 1)], key=lambda rc: abs(ratio(*rc) - 1.0))
    elif n == 2:
        r = [abs(ratio(1, 2) - 1.0), abs(ratio(2, 1) - 1.0)]
        if r[0] == r[1]:
            rows, cols = (1, 2) if width / height >= 1.0 else (2, 1)
        else:
            rows, cols = [(1, 2), (2, 1)][int(np.argmin(r))]
    else:
        rows, cols = 1, n
    canvas = Image.new("RGB", (cols * width + (cols - 1) * SEPARATOR_PX, rows * height + (rows - 1) * SEPARATOR_PX))
    for i, image in enumerate(images):
        row, col = divmod(i, cols)
        canvas.paste(image, (col * (width + SEPARATOR_PX), row * (height + SEPARATOR_PX)))
    return canvas


UNIT_CACHE_SIZE = 2
_units: "OrderedDict[tuple, list]" = OrderedDict()
_units_lock = threading.Lock()


def clear_cache() -> None:
    """Forget the decoded videos kept for asking again (benchmarks time a cold start)."""
    with _units_lock:
        _units.clear()


def file_key(path) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


class Units(list):
    """[(image, seconds)], with ``warnings`` about how the video was read (a short read)."""

    def __init__(self, units=(), warnings=()):
        super().__init__(units)
        self.warnings = list(warnings)


def load_video_units(path, max_num_frames: int = 128, stack_frames: int = 1, fps: float = 1.0) -> Units:
    """The visual units the model sees, with their times: [(image, seconds)], in order
    main_0, composite_0, main_1, ... (composites only with ``stack_frames`` > 1). Where the file
    decodes to less than its header says, ``.warnings`` says so.

    The last couple of results are kept (by file identity and sampling), so asking about the
    same video again decodes nothing."""
    try:
        key = (file_key(path), max_num_frames, stack_frames, fps)
    except OSError:
        key = None
    with _units_lock:  # threads share the cache
        if key in _units:
            _units.move_to_end(key)
            return _units[key]
    units = _decode_units(path, max_num_frames, stack_frames, fps)
    if key is not None:
        with _units_lock:
            _units[key] = units
            while len(_units) > UNIT_CACHE_SIZE:
                _units.popitem(last=False)
    return units


def _decode_units(path, max_num_frames, stack_frames, fps):
    info = probe(path)
    main, sub, sub_times = sample_indices(info, max_num_frames, stack_frames, fps)
    frames = {}
    for f in iter_frames(path, set(main) | set(sub), info):
        frames[f.index] = f
    if not frames:
        raise MediaError(f"{path}: no frame could be decoded")
    main_frames = [frames[i] for i in main if i in frames]
    warnings = []
    if len(main_frames) < len(main):
        end = max(f.time for f in frames.values()) + 1 / info.fps
        warnings.append(short_read(path, info, end))
    units = Units(warnings=warnings)
    for sec, f in enumerate(main_frames):
        units.append((f.image.convert("RGB"), f.time))
        group = [frames[i] for i, t in zip(sub, sub_times) if sec <= t < sec + 1 and i in frames]
        if group:
            units.append((stack_canvas([g.image.convert("RGB") for g in group]), group[0].time))
    return units
