"""What the command lines share: their flags (range-checked as they are parsed, with the
reference's names and defaults), the messages they build, and one-line error reporting."""

import argparse
import sys
from typing import Callable

from .errors import CheckpointError, ContextError, MediaError
from .options import argtype


def user_message(prompt: str, images=(), videos=()) -> dict:
    content = [{"type": "image", "image": i} for i in images] + [{"type": "video", "video": v} for v in videos]
    return {"role": "user", "content": content + [{"type": "text", "text": prompt}]}


def system_message(text) -> list:
    return [{"role": "system", "content": text}] if text else []


def read_prompt(text: str) -> str:
    """``-`` reads the prompt from standard input (``echo ... | minicpmv-generate --prompt -``)."""
    return sys.stdin.read() if text == "-" else text


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="A converted model directory or a Hugging Face repo id.")
    parser.add_argument("--adapter-path", default=None,
                        help="A folder of fine-tuned adapters (adapters.safetensors, adapter_config.json) to apply.")
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks on errors.")


# One definition per flag: generate and chat take them through the groups below, summarize
# takes these three on their own (its frames are sampled per segment, not by --fps).
def add_system_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", default=None, help="A system prompt.")


def add_downsample_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--downsample-mode", choices=["16x", "4x"], default=None,
                        help="Vision tokens per patch grid: 16x (default) or 4x (four times the tokens, finer detail).")


def add_thinking_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thinking", action="store_true", help="Let the model think before answering.")


def add_sampling_args(parser: argparse.ArgumentParser, max_frames: int = 128) -> None:
    """The model, sampling and basic media flags every generating command takes."""
    add_model_args(parser)
    parser.add_argument("--max-tokens", type=argtype("max_tokens"), default=1024, help="Most tokens to generate.")
    parser.add_argument("--temp", type=argtype("temperature"), default=None,
                        help="Sampling temperature (0: greedy; default: the model's).")
    parser.add_argument("--top-p", type=argtype("top_p"), default=None, help="Nucleus sampling threshold (0, 1].")
    parser.add_argument("--top-k", type=argtype("top_k"), default=None, help="Sample from the k most likely tokens (0: off).")
    parser.add_argument("--min-p", type=argtype("min_p"), default=None, help="Minimum probability relative to the top token.")
    parser.add_argument("--repetition-penalty", type=argtype("repetition_penalty"), default=None)
    parser.add_argument("--seed", type=argtype("seed"), default=None, help="Random seed for sampling.")
    add_thinking_arg(parser)
    parser.add_argument("--max-slice-nums", type=argtype("max_slice_nums"), default=None,
                        help="Most slices per image (default 9).")
    parser.add_argument("--max-frames", type=argtype("max_num_frames"), default=max_frames,
                        help=f"Most video frames (default {max_frames}; longer videos are sampled evenly).")


def add_media_args(parser: argparse.ArgumentParser) -> None:
    """The other knobs the model's own documentation turns, under the reference processor's names."""
    add_system_arg(parser)
    add_downsample_arg(parser)
    parser.add_argument("--fps", type=argtype("fps"), default=None, help="Video frames sampled per second (default 1).")
    parser.add_argument("--stack-frames", type=argtype("stack_frames"), default=None,
                        help="Frames per second composed into one extra image beside each sampled frame (default 1: none).")


def options_from_args(args) -> dict:
    """``stream_generate`` keyword arguments from parsed sampling and media flags."""
    names = dict(temp="temperature", top_p="top_p", top_k="top_k", min_p="min_p", repetition_penalty="repetition_penalty",
                 max_slice_nums="max_slice_nums", downsample_mode="downsample_mode", fps="fps",
                 stack_frames="stack_frames")
    opts = {v: getattr(args, k) for k, v in names.items() if getattr(args, k, None) is not None}
    return dict(opts, max_tokens=args.max_tokens, seed=args.seed, enable_thinking=args.thinking,
                max_num_frames=args.max_frames)


def one_line(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "not enough memory for this input; use fewer or smaller images, fewer video frames, or a smaller model"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def report_errors(run: Callable[[], int], verbose: bool, interrupted: str = "interrupted") -> int:
    """Run a command-line body: expected failures become one line on stderr and exit code 1."""
    try:
        return run()
    except (CheckpointError, MediaError, ContextError, FileNotFoundError, ValueError, OSError, MemoryError) as e:
        if verbose:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
