"""What the command lines share: their sampling flags and one-line error reporting."""

import argparse
import sys
from typing import Callable


def user_message(prompt: str, images=(), videos=()) -> dict:
    content = [{"type": "image", "image": i} for i in images] + [{"type": "video", "video": v} for v in videos]
    return {"role": "user", "content": content + [{"type": "text", "text": prompt}]}


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="A converted model directory or a Hugging Face repo id.")
    parser.add_argument("--max-tokens", type=int, default=1024, help="Most tokens to generate.")
    parser.add_argument("--temp", type=float, default=None, help="Sampling temperature (0: greedy; default: the model's).")
    parser.add_argument("--top-p", type=float, default=None, help="Nucleus sampling threshold.")
    parser.add_argument("--top-k", type=int, default=None, help="Sample from the k most likely tokens (0: off).")
    parser.add_argument("--min-p", type=float, default=None, help="Minimum probability relative to the top token.")
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="Random seed for sampling.")
    parser.add_argument("--thinking", action="store_true", help="Let the model think before answering.")
    parser.add_argument("--max-slice-nums", type=int, default=None, help="Most slices per image (default 9).")
    parser.add_argument("--max-frames", type=int, default=128, help="Most video frames (1 per second up to this).")
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks on errors.")


def options_from_args(args) -> dict:
    names = dict(temp="temperature", top_p="top_p", top_k="top_k", min_p="min_p",
                 repetition_penalty="repetition_penalty", max_slice_nums="max_slice_nums")
    opts = {v: getattr(args, k) for k, v in names.items() if getattr(args, k) is not None}
    return dict(opts, max_tokens=args.max_tokens, seed=args.seed, enable_thinking=args.thinking,
                max_num_frames=args.max_frames)


def report_errors(run: Callable[[], int], verbose: bool, interrupted: str = "interrupted") -> int:
    """Run a command-line body: expected failures become one line on stderr and exit code 1."""
    from .generate import ContextError
    from .loading import CheckpointError
    from .processing.errors import MediaError

    try:
        return run()
    except (CheckpointError, MediaError, ContextError, FileNotFoundError, ValueError, OSError, MemoryError) as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
