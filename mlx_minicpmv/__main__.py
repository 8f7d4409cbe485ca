"""``python -m mlx_minicpmv <command> [options]``: one command line, as mlx-lm has it.

Each command is a module with ``main(argv) -> int``; adding one is one line in ``COMMANDS`` (and
its ``minicpmv-<command>`` console script in pyproject.toml).
"""

import importlib
import sys

COMMANDS = {
    "generate": ("mlx_minicpmv.generate", "answer one question about images and videos"),
    "chat": ("mlx_minicpmv.chat", "a multi-turn chat in the terminal"),
    "convert": ("mlx_minicpmv.convert", "convert a Hugging Face checkpoint to MLX"),
    "summarize": ("mlx_minicpmv.summarize", "summarise a video into timed chapters"),
    "serve": ("mlx_minicpmv.server.command", "an OpenAI-compatible local server for images and video"),
    "lora": ("mlx_minicpmv.tuner.lora", "fine-tune on images, video and text (LoRA, DoRA or full)"),
    "fuse": ("mlx_minicpmv.tuner.fuse", "merge fine-tuned adapters into a model"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return ("usage: python -m mlx_minicpmv <command> [options]\n\ncommands:\n" + "\n".join(lines)
            + "\n\n`python -m mlx_minicpmv <command> --help` for a command's options.")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    sys.argv[0] = f"python -m mlx_minicpmv {name}"  # what its --help and errors call it
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
