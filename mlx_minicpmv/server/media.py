"""Where a request's images and videos come from, and the limits on them.

A part's URL is a ``data:`` URL, a path or ``file://`` URL under one of the ``--media-dir``
folders, or (only with ``--allow-remote-media``) an ``http(s)`` URL. Paths are resolved with
symlinks followed and must stay inside a media folder, so ``..`` and links that point out are
refused. Images are checked for pixels from their header before they are decoded; videos for
length from their container before a frame is decoded. Media is decoded here, on the HTTP
side's worker threads, so the thread that owns MLX only sees ready frames.

Each item gets a digest of its content and of the options that shape what the model sees, so
the conversation store can tell two different images with the same token layout apart.
"""

import base64
import binascii
import hashlib
import io
import os
import tempfile
import threading
import urllib.parse
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

from PIL import Image

from ..errors import MediaError
from ..processing.image import load_image
from ..processing.video import load_video_units, probe
from .protocol import APIError

VIDEO_TYPES = {"video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm", "video/x-matroska": ".mkv",
               "video/mkv": ".mkv", "application/octet-stream": ".mp4"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".webm", ".mkv"}


@dataclass(frozen=True)
class MediaLimits:
    max_image_pixels: int = 64_000_000
    max_video_seconds: float = 3600.0
    max_video_frames: int = 128
    max_remote_bytes: int = 200 * 1024 * 1024
    remote_timeout: float = 30.0


@dataclass
class Media:
    """One resolved item: an RGB image, or a video's sampled frames with their times."""

    kind: str  # "image" | "video"
    value: object  # PIL image, or [(PIL image, seconds)]
    digest: str


@dataclass
class VideoOptions:
    max_num_frames: int = 128
    fps: float = 1.0
    stack_frames: int = 1

    def key(self) -> bytes:
        return f"{self.max_num_frames}/{self.fps}/{self.stack_frames}".encode()


class _Named(io.BytesIO):
    """Bytes that an error message names by where they came from."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


@dataclass
class MediaResolver:
    media_dirs: Sequence[Path] = ()
    allow_remote: bool = False
    limits: MediaLimits = field(default_factory=MediaLimits)

    def __post_init__(self):
        self.media_dirs = [Path(os.path.realpath(Path(d).expanduser())) for d in self.media_dirs]
        for d in self.media_dirs:
            if not d.is_dir():
                raise ValueError(f"--media-dir {d}: no such folder")
        # Decoded videos by content digest: a follow-up question that resends a data URL decodes
        # nothing. Two entries, as the library keeps for files (processing/video.py).
        self._videos: "OrderedDict[str, list]" = OrderedDict()
        self._lock = threading.Lock()  # video decoding one at a time: the library's unit cache is not thread-safe

    # -- where the bytes come from ---------------------------------------------------------------
    def fetch(self, url: str, kind: str, where: str) -> Tuple[object, str, str]:
        """(bytes or local path, digest seed, a name for errors) of a part's URL."""
        if url.startswith("data:"):
            return self._data_url(url, kind, where)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            if not self.allow_remote:
                raise APIError(400, f"{where}: fetching remote media is off; send the {kind} as a data URL, put it "
                               "under a --media-dir folder, or start the server with --allow-remote-media",
                               param=where, code="remote_media_disabled")
            data = self._download(url, where)
            return data, hashlib.sha256(data).hexdigest(), url
        if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
            path = self.local_path(url, where)
            st = path.stat()
            return path, f"{path}|{st.st_size}|{st.st_mtime_ns}", str(path)
        raise APIError(400, f"{where}: unsupported URL scheme {scheme!r}; use a data: URL or a path under --media-dir",
                       param=where)

    def local_path(self, url: str, where: str) -> Path:
        if not self.media_dirs:
            raise APIError(400, f"{where}: local paths are off; start the server with --media-dir DIR to allow "
                           "files under DIR, or send the media as a data URL", param=where, code="path_not_allowed")
        raw = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url.startswith("file:") else url
        candidates = [Path(raw).expanduser()] if os.path.isabs(os.path.expanduser(raw)) else \
            [d / raw for d in self.media_dirs]
        for candidate in candidates:
            real = Path(os.path.realpath(candidate))  # follows every symlink, removes ".."
            if not any(real == d or d in real.parents for d in self.media_dirs):
                continue
            if not real.is_file():
                raise APIError(400, f"{where}: {raw}: no such file under the media folders", param=where)
            return real
        raise APIError(403, f"{where}: {raw} is outside the folders this server may read (--media-dir); "
                       "paths that leave them (.., symlinks) are refused", param=where, code="path_not_allowed")

    def _data_url(self, url: str, kind: str, where: str):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise APIError(400, f"{where}: a data URL must be base64 ('data:<type>;base64,...')", param=where)
        mime = header[5:].split(";")[0].lower()
        if kind == "video" and mime and mime not in VIDEO_TYPES:
            raise APIError(400, f"{where}: data URL type {mime!r} is not a video this server takes "
                           "(video/mp4, video/quicktime, video/webm, video/x-matroska)", param=where)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, f"{where}: the data URL is not valid base64", param=where) from None
        if not data:
            raise APIError(400, f"{where}: the data URL holds no bytes", param=where)
        return data, hashlib.sha256(data).hexdigest(), f"{where} (data URL)"

    def _download(self, url: str, where: str) -> bytes:
        cap = self.limits.max_remote_bytes
        try:
            with urllib.request.urlopen(url, timeout=self.limits.remote_timeout) as r:
                data = r.read(cap + 1)
        except OSError as e:
            raise APIError(400, f"{where}: cannot fetch {url} ({e})", param=where) from None
        if len(data) > cap:
            raise APIError(400, f"{where}: {url} is larger than the {cap // 2**20} MB limit on remote media",
                           param=where, code="media_too_large")
        return data

    # -- decoding --------------------------------------------------------------------------------
    def image(self, url: str, where: str) -> Media:
        source, seed, name = self.fetch(url, "image", where)
        opened = _Named(source, name) if isinstance(source, bytes) else source
        try:
            with Image.open(opened) as probe_image:
                w, h = probe_image.size
        except Exception:
            w = h = 0  # not readable at all: load_image below names the problem
        if w * h > self.limits.max_image_pixels:
            raise APIError(400, f"{where}: the image is {w}x{h} = {w * h / 1e6:.0f} MP, over the server's limit of "
                           f"{self.limits.max_image_pixels / 1e6:.0f} MP (--max-image-pixels); downscale it",
                           param=where, code="image_too_large")
        if isinstance(opened, io.BytesIO):
            opened.seek(0)
        try:
            image = load_image(opened)
        except MediaError as e:
            raise APIError(400, f"{where}: {e}", param=where, code="invalid_media") from None
        return Media("image", image, hashlib.sha256(b"image|" + seed.encode()).hexdigest())

    def video(self, url: str, where: str, options: VideoOptions) -> Media:
        if options.max_num_frames > self.limits.max_video_frames:
            raise APIError(400, f"mm_processor_kwargs.max_num_frames: {options.max_num_frames} is over the server's "
                           f"limit of {self.limits.max_video_frames} frames (--max-video-frames)",
                           param="mm_processor_kwargs.max_num_frames", code="too_many_frames")
        source, seed, name = self.fetch(url, "video", where)
        if isinstance(source, Path) and source.suffix.lower() not in VIDEO_SUFFIXES:
            raise APIError(400, f"{where}: {source.name} is not a video file this server takes "
                           f"({', '.join(sorted(VIDEO_SUFFIXES))})", param=where)
        digest = hashlib.sha256(b"video|" + seed.encode() + b"|" + options.key()).hexdigest()
        with self._lock:
            if digest in self._videos:
                self._videos.move_to_end(digest)
                return Media("video", self._videos[digest], digest)
            try:
                frames = self._decode_video(source, name, where, options)
            except MediaError as e:
                raise APIError(400, f"{where}: {e}", param=where, code="invalid_media") from None
            self._videos[digest] = frames
            while len(self._videos) > 2:
                self._videos.popitem(last=False)
        return Media("video", frames, digest)

    def _decode_video(self, source, name: str, where: str, options: VideoOptions) -> list:
        if isinstance(source, Path):
            return self._checked_units(str(source), name, where, options)
        # PyAV probes containers by file; the bytes live in a private temporary file meanwhile.
        with tempfile.TemporaryDirectory(prefix="minicpmv-video-") as tmp:
            path = os.path.join(tmp, "video")
            with open(path, "wb") as f:
                f.write(source)
            return self._checked_units(path, name, where, options)

    def _checked_units(self, path: str, name: str, where: str, options: VideoOptions) -> list:
        try:
            info = probe(path)
        except MediaError as e:
            raise MediaError(str(e).replace(path, name)) from None
        if info.duration > self.limits.max_video_seconds:
            raise APIError(400, f"{where}: the video is {info.duration:.0f} s long, over the server's limit of "
                           f"{self.limits.max_video_seconds:.0f} s (--max-video-seconds); trim it",
                           param=where, code="video_too_long")
        try:
            units = load_video_units(path, options.max_num_frames, options.stack_frames, options.fps)
        except MediaError as e:
            raise MediaError(str(e).replace(path, name)) from None
        return list(units)


def part_url(part) -> str:
    value = getattr(part, "image_url", None) or getattr(part, "video_url", None)
    return value if isinstance(value, str) else value.url


def resolve_messages(messages, resolver: MediaResolver, video: VideoOptions) -> Tuple[List[dict], List[Media]]:
    """Request messages -> the processor's chat form, with each media part decoded, and the
    media in conversation order. A ``developer`` message is a system message (OpenAI's rename)."""
    out, media = [], []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        if m.content is None or isinstance(m.content, str):
            message = {"role": role, "content": m.content or ""}
        else:
            content = []
            for j, part in enumerate(m.content):
                where = f"messages[{i}].content[{j}]"
                if part.type == "text":
                    content.append({"type": "text", "text": part.text})
                    continue
                if role != "user":
                    raise APIError(400, f"{where}: images and videos go in user messages, not {role} ones",
                                   param=where)
                if part.type == "image_url":
                    item = resolver.image(part_url(part), where)
                    content.append({"type": "image", "image": item.value})
                else:
                    item = resolver.video(part_url(part), where, video)
                    content.append({"type": "video", "video": item.value})
                media.append(item)
            message = {"role": role, "content": content}
        if role == "assistant" and m.reasoning_content is not None:
            message["reasoning_content"] = m.reasoning_content
        out.append(message)
    if out[0]["role"] != "system" and any(m["role"] == "system" for m in out):
        raise APIError(400, "messages: a system message must come first", param="messages")
    if out[-1]["role"] != "user":
        raise APIError(400, "messages: the last message must be the user's (continuing an assistant message is not "
                       "supported)", param="messages")
    return out, media
