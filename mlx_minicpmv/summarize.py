"""Summarise a video into timed chapters: ``python -m mlx_minicpmv.summarize VIDEO --model M``.

    --out summary.md   --format md|srt|vtt|json   --max-frames 8 (per segment)   --segment-seconds 60

The result is written atomically; a progress line shows segments done and the time left.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .summary import FORMATS, summarize
from .summary.export import short

__all__ = ["summarize", "main"]


def write_atomic(path: Path, text: str) -> None:
    """Temporary file beside ``path``, flushed, then renamed over it: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    from .cli import report_errors

    parser = argparse.ArgumentParser(description="Summarise a video into chapters with times.")
    parser.add_argument("video")
    parser.add_argument("--model", required=True, help="A converted model directory or a Hugging Face repo id.")
    parser.add_argument("--out", default=None, help="Output file (default: print to stdout).")
    parser.add_argument("--format", choices=sorted(FORMATS), default=None,
                        help="md, srt, vtt or json (default: from --out's suffix, else md).")
    parser.add_argument("--max-frames", type=int, default=8, help="Frames the model sees per segment.")
    parser.add_argument("--segment-seconds", type=float, default=60.0, help="Target segment length.")
    parser.add_argument("--no-scenes", action="store_true", help="Cut by time only, not at scene changes.")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    fmt = args.format or (Path(args.out).suffix.lstrip(".") if args.out else "md")
    if fmt not in FORMATS:
        parser.error(f"unknown format {fmt!r}; use one of {', '.join(sorted(FORMATS))}")

    def run() -> int:
        from .loading import load

        model, processor = load(args.model)
        summary = None
        for event in summarize(model, processor, args.video, segment_seconds=args.segment_seconds,
                               frames_per_segment=args.max_frames, scene_detection=not args.no_scenes):
            eta = f", about {short(event.eta_seconds)} left" if event.eta_seconds else ""
            print(f"\r{event.stage}: {event.done}/{event.total}{eta}    ", end="", file=sys.stderr, flush=True)
            summary = event.summary or summary
        print(file=sys.stderr)
        text = FORMATS[fmt](summary)
        if args.out:
            write_atomic(Path(args.out), text)
            print(f"wrote {args.out}", file=sys.stderr)
        else:
            print(text)
        for warning in summary.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0

    return report_errors(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
