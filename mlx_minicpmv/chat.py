"""Interactive multi-turn chat: ``python -m mlx_minicpmv.chat --model PATH_OR_REPO``.

Commands: ``/image FILE`` and ``/video FILE`` attach to the next question, ``/reset`` starts
over, ``/quit`` leaves. Each turn continues one ``PromptCache``, so a follow-up question
processes only its own tokens (the stats line shows how many).
"""

import argparse
import shlex
import sys

from .cli import add_sampling_args, options_from_args, report_errors, user_message
from .generate import PromptCache, stream_generate
from .processing.errors import MediaError

HELP = "Type a question. /image FILE, /video FILE attach media; /reset starts over; /quit leaves."


def run_chat(model, processor, options: dict, read=input, write=print) -> None:
    cache, images, videos = PromptCache.new(model), [], []
    write(HELP)
    while True:
        try:
            line = read(">> ").strip()
        except EOFError:
            return
        if not line:
            continue
        if line.startswith("/"):
            command, *rest = shlex.split(line)
            if command == "/quit":
                return
            if command == "/reset":
                cache, images, videos = PromptCache.new(model), [], []
                write("[new chat]")
            elif command in ("/image", "/video") and rest:
                (images if command == "/image" else videos).extend(rest)
                write(f"[attached {', '.join(rest)}]")
            else:
                write(HELP)
            continue
        message = user_message(line, images, videos)
        images, videos = [], []
        try:
            last = None
            for last in stream_generate(model, processor, [message], prompt_cache=cache, **options):
                write(last.text, end="", flush=True)
            write(f"\n[{last.prompt_tokens} new prompt tokens at {last.prompt_tps:.0f} tok/s, "
                  f"{last.generation_tokens} generated at {last.generation_tps:.1f} tok/s, "
                  f"peak {last.peak_memory:.2f} GB]")
        except MediaError as e:  # a bad attachment loses the question, not the conversation
            write(f"error: {e}")
        except KeyboardInterrupt:
            write("\n[stopped]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Chat with MiniCPM-V 4.6 about images and videos.")
    add_sampling_args(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        from .loading import load

        model, processor = load(args.model)
        run_chat(model, processor, options_from_args(args))
        return 0

    return report_errors(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
