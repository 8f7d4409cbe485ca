"""A fine-tuning data set the project makes itself: the colour of the largest shape in a picture,
and which of two colours a video shows first.

    python scripts/colour_task.py data/colours                  # images: 200 train, 40 valid, 40 test
    python scripts/colour_task.py data/colours --video          # and as many videos
    python -m mlx_minicpmv lora --model MODEL --train --data data/colours --iters 300 --num-layers -1

Each picture holds two or three shapes (rectangles, ellipses, triangles) of different colours
and sizes on a light background; the answer is one word, the colour of the largest. Each video
shows one colour filling the frame for its first half and another for its second; the answer is
the colour shown first. With four colours, chance is 25% on pictures and 50% on videos (two
colours are shown, one is the answer).
"""

import argparse
import json
import random
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40)}
QUESTION = "What colour is the largest shape?"
VIDEO_QUESTION = "Which colour is shown first?"


def draw_shape(draw, kind: str, box, fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "rectangle":
        draw.rectangle(box, fill=fill)
    elif kind == "ellipse":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def picture(rng: random.Random, size: int):
    """A picture and the colour of its largest shape (drawn last, so never hidden)."""
    from PIL import Image, ImageDraw

    names = rng.sample(sorted(COLOURS), rng.choice([2, 3]))
    # The largest clearly so (more than half the side, the others under a third), and drawn last
    sides = sorted(rng.sample(range(size // 8, size // 3), len(names) - 1)) + [rng.randint(size * 11 // 20, size * 17 // 20)]
    image = Image.new("RGB", (size, size), tuple(rng.randint(225, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for name, side in zip(names, sides):
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        draw_shape(draw, rng.choice(["rectangle", "ellipse", "triangle"]), (x, y, x + side, y + side), COLOURS[name])
    return image, names[-1]


def video(path: Path, rng: random.Random, size: int, seconds: int = 2, fps: int = 4) -> str:
    """A video of one colour, then another; returns the first."""
    import av
    import numpy as np

    first, second = rng.sample(sorted(COLOURS), 2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            rgb = COLOURS[first if i < seconds * fps // 2 else second]
            frame = np.empty((size, size, 3), np.uint8)
            frame[:] = [min(255, max(0, c + rng.randint(-12, 12))) for c in rgb]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return first


def example(media_kind: str, name: str, question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": media_kind, media_kind: name},
                                                     {"type": "text", "text": question}]},
                         {"role": "assistant", "content": answer}]}


def make(folder, train: int = 200, valid: int = 40, test: int = 40, seed: int = 0, size: int = 112,
         videos: bool = False) -> Path:
    """Write the images (and videos) and ``{train,valid,test}.jsonl`` into ``folder``."""
    folder = Path(folder)
    (folder / "media").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, count in (("train", train), ("valid", valid), ("test", test)):
        records = []
        for i in range(count):
            image, answer = picture(rng, size)
            name = f"media/{split}-{i}.png"
            image.save(folder / name)
            records.append(example("image", name, QUESTION, answer))
            if videos:
                name = f"media/{split}-{i}.mp4"
                records.append(example("video", name, VIDEO_QUESTION, video(folder / name, rng, size)))
        rng.shuffle(records)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the colour fine-tuning data set.")
    parser.add_argument("folder", help="Where to write media/ and train/valid/test.jsonl.")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--valid", type=int, default=40)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--size", type=int, default=112, help="Side of each picture and video frame in pixels.")
    parser.add_argument("--video", action="store_true", help="Add as many videos (which colour came first).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make(args.folder, args.train, args.valid, args.test, args.seed, args.size, args.video)
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
