"""Summarise a video into timed chapters: ``python -m mlx_minicpmv summarize VIDEO --model M``.

    --out summary.md   --format md|srt|vtt|json   --max-frames 8 (per segment)   --segment-seconds 60
    --system TEXT   --downsample-mode 16x|4x   --thinking   (as generate's, for every question asked)

``--out`` is checked before any work (a folder, a path that cannot be written); the result is
written atomically, and if writing still fails the summary goes to standard output instead of
being lost. A progress line shows segments done and the time left.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .files import write_atomic
from .options import argtype
from .summary import FORMATS, summarize
from .summary.export import short

__all__ = ["summarize", "main"]


def check_writable(out: Path) -> None:
    """Fail now, in one line, if the summary could not be written to ``out`` later."""
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name such as {out / 'summary.md'}")
    parent = out.parent
    while not parent.exists():  # write_atomic makes the missing folders; the first existing one must take them
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {out}: {parent} is a file, not a folder; choose another place")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: {parent} is not writable; choose another place")
    if parent == out.parent:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", dir=parent)  # what write_atomic will do
        os.close(fd)
        os.unlink(probe)


def main(argv=None) -> int:
    from .cli import add_downsample_arg, add_system_arg, add_thinking_arg, report_errors

    parser = argparse.ArgumentParser(description="Summarise a video into chapters with times.")
    parser.add_argument("video")
    parser.add_argument("--model", required=True, help="A converted model directory or a Hugging Face repo id.")
    parser.add_argument("--adapter-path", default=None, help="A folder of fine-tuned adapters to apply.")
    parser.add_argument("--out", default=None, help="Output file (default: print to stdout).")
    parser.add_argument("--format", choices=sorted(FORMATS), default=None,
                        help="md, srt, vtt or json (default: from --out's suffix, else md).")
    parser.add_argument("--max-frames", type=argtype("frames_per_segment"), default=8,
                        help="Frames the model sees per segment.")
    parser.add_argument("--segment-seconds", type=argtype("segment_seconds"), default=60.0, help="Target segment length.")
    parser.add_argument("--no-scenes", action="store_true", help="Cut by time only, not at scene changes.")
    add_system_arg(parser)
    add_downsample_arg(parser)
    add_thinking_arg(parser)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    def run() -> int:
        from .loading import load

        if args.out:
            check_writable(Path(args.out))
        fmt = args.format or (Path(args.out).suffix.lstrip(".") if args.out else "md")
        if fmt not in FORMATS:
            raise ValueError(f"--out {args.out}: unknown format {fmt!r}; end the name with .md, .srt, .vtt or "
                             ".json, or pass --format")
        model, processor = load(args.model, adapter_path=args.adapter_path)
        summary = None
        for event in summarize(model, processor, args.video, segment_seconds=args.segment_seconds,
                               frames_per_segment=args.max_frames, scene_detection=not args.no_scenes,
                               system=args.system, downsample_mode=args.downsample_mode,
                               enable_thinking=args.thinking):
            eta = f", about {short(event.eta_seconds)} left" if event.eta_seconds else ""
            print(f"\r{event.stage}: {event.done}/{event.total}{eta}    ", end="", file=sys.stderr, flush=True)
            summary = event.summary or summary
        print(file=sys.stderr)
        text = FORMATS[fmt](summary)
        written = False
        if args.out:
            try:
                write_atomic(Path(args.out), text)
                written = True
                print(f"wrote {args.out}", file=sys.stderr)
            except OSError as e:
                print(f"error: could not write {args.out} ({e.strerror or e}); here is the summary instead:",
                      file=sys.stderr)
        if not written:
            print(text)
        for warning in summary.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0 if written or not args.out else 1

    return report_errors(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
