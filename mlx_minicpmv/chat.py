"""Interactive multi-turn chat: ``python -m mlx_minicpmv chat --model PATH_OR_REPO``.

Commands: ``/image FILE`` and ``/video FILE`` attach to the next question, ``/reset`` starts
over, ``/quit`` leaves. Each turn continues one ``PromptCache``, so a follow-up question
processes only its own tokens (the stats line shows how many).
"""

import argparse
import shlex
import sys

from .cli import add_media_args, add_sampling_args, one_line, options_from_args, report_errors, system_message, user_message
from .errors import CheckpointError, ContextError, MediaError
from .generate import PromptCache, stream_generate

HELP = "Type a question. /image FILE, /video FILE attach media; /reset starts over; /quit leaves."
# What ends a question (said in one line), never the chat.
QUESTION_ERRORS = (MediaError, ContextError, CheckpointError, ValueError, OSError, MemoryError)


def run_chat(model, processor, options: dict, read=input, write=print, system=None) -> None:
    def new():
        return PromptCache.new(model), system_message(system)

    (cache, pending), images, videos = new(), [], []
    write(HELP)
    while True:
        try:
            line = read(">> ").strip()
        except EOFError:
            return
        except KeyboardInterrupt:
            write("")
            return
        if not line:
            continue
        if line.startswith("/"):
            try:
                command, *rest = shlex.split(line)
            except ValueError as e:  # an unbalanced quote
                write(f"error: {e}; put a file name with spaces in matching quotes")
                continue
            if command == "/quit":
                return
            if command == "/reset":
                (cache, pending), images, videos = new(), [], []
                write("[new chat]")
            elif command in ("/image", "/video") and rest:
                (images if command == "/image" else videos).extend(rest)
                write(f"[attached {', '.join(rest)}]")
            else:
                write(HELP)
            continue
        message = user_message(line, images, videos)
        images, videos = [], []  # a bad attachment goes with its question
        before = list(cache.tokens)
        try:
            last = None
            for last in stream_generate(model, processor, pending + [message], prompt_cache=cache, **options):
                write(last.text, end="", flush=True)
            pending = []
            for warning in last.warnings:
                write(f"\nwarning: {warning}")
            write(f"\n[{last.prompt_tokens} new prompt tokens at {last.prompt_tps:.0f} tok/s, "
                  f"{last.generation_tokens} generated at {last.generation_tps:.1f} tok/s, "
                  f"peak {last.peak_memory:.2f} GB]")
        except QUESTION_ERRORS as e:  # the question is lost, not the conversation
            write(f"error: {one_line(e)}")
            if cache.tokens != before:  # failed half-way: what the cache holds no longer matches
                (cache, pending) = new()
                write("[the conversation could not be kept; a new chat starts]")
        except KeyboardInterrupt:
            write("\n[stopped]")


def main(argv=None) -> int:
    """``python -m mlx_minicpmv chat``; see ``--help``."""
    parser = argparse.ArgumentParser(description="Chat with MiniCPM-V 4.6 or 4.7 about images and videos.")
    add_sampling_args(parser)
    add_media_args(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        from .loading import load

        model, processor = load(args.model, adapter_path=args.adapter_path)
        run_chat(model, processor, options_from_args(args), system=args.system)
        return 0

    return report_errors(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
