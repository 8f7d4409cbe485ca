"""Images and videos the tests make themselves (PyAV, Pillow)."""

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def scene_frame(i: int, width: int, height: int, scene: int = 0) -> np.ndarray:
    """A moving gradient, different per scene, so frames differ and cuts are visible."""
    y, x = np.mgrid[0:height, 0:width]
    base = [(255, 80, 20), (20, 90, 255), (40, 200, 60), (230, 230, 40)][scene % 4]
    wave = (np.sin((x + 7 * i) / 9.0) * 0.5 + 0.5)[..., None]
    img = (np.array(base)[None, None] * (0.5 + 0.5 * wave)).astype(np.uint8)
    img[(y // 16 + i) % 8 == 0] = 255 - img[(y // 16 + i) % 8 == 0]
    return img


def make_video(path, seconds: float = 3.0, fps: int = 10, width: int = 96, height: int = 64,
               codec: str = "mpeg4", scenes=(0,), vfr: bool = False) -> Path:
    """Write a small video; ``scenes`` split its length evenly; ``vfr`` jitters frame times."""
    import av

    path = Path(path)
    n = int(round(seconds * fps))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            scene = scenes[min(len(scenes) - 1, i * len(scenes) // n)]
            frame = av.VideoFrame.from_ndarray(scene_frame(i, width, height, scene), format="rgb24")
            if vfr:
                frame.pts = int(1000 * i / fps + (0 if i % 3 else 30 * (i > 0)))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rotate_for_display(path, degrees_clockwise: int = 90) -> Path:
    """Give an MP4 the display matrix a phone writes for portrait video (rotate 90° clockwise
    to show), by rewriting the identity matrix of its track header in place."""
    import struct

    path = Path(path)
    data = bytearray(path.read_bytes())
    identity = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    matrices = {90: (0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000),
                270: (0, -0x10000, 0, 0x10000, 0, 0, 0, 0, 0x40000000)}
    at = data.find(identity, data.find(b"tkhd"))
    assert at > 0, "no track header matrix found"
    data[at: at + 36] = struct.pack(">9i", *matrices[degrees_clockwise])
    path.write_bytes(bytes(data))
    return path
