"""The valid range of every generation, media and summary option, in one table.

The library checks its keyword arguments against it (``check``) and the command lines parse their
flags with it (``argtype``), so ``--max-tokens 0`` and ``max_tokens=0`` get the same one-line
answer, before any work, instead of a traceback or a silently different setting.
"""

import argparse
import math
from typing import NamedTuple, Optional


class Range(NamedTuple):
    kind: type
    low: Optional[float] = None  # inclusive unless low_open
    high: Optional[float] = None  # inclusive
    low_open: bool = False

    def describe(self) -> str:
        what = "a whole number" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} {'above' if self.low_open else 'from'} {self.low:g} {'and' if self.low_open else 'to'} at most {self.high:g}"
        if self.low is not None:
            return f"{what} {'above' if self.low_open else 'of at least'} {self.low:g}"
        return what


RANGES = {
    "max_tokens": Range(int, 1),
    "temperature": Range(float, 0),
    "top_p": Range(float, 0, 1, low_open=True),
    "top_k": Range(int, 0),
    "min_p": Range(float, 0, 1),
    "repetition_penalty": Range(float, 0, low_open=True),
    "seed": Range(int, 0),
    "max_slice_nums": Range(int, 1),
    "video_max_slice_nums": Range(int, 1),
    "max_num_frames": Range(int, 1),
    "fps": Range(float, 0, low_open=True),
    "stack_frames": Range(int, 1),
    "segment_seconds": Range(float, 0, low_open=True),
    "frames_per_segment": Range(int, 1),
}


def check(name: str, value):
    """``value`` if it is in ``name``'s range (None passes: "the default"), else ValueError."""
    if value is None or name not in RANGES:
        return value
    r = RANGES[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and r.kind is int:
        ok = float(value).is_integer()
    if ok and r.low is not None:
        ok = value > r.low if r.low_open else value >= r.low
    if ok and r.high is not None:
        ok = value <= r.high
    if not ok:
        raise ValueError(f"{name} must be {r.describe()}, got {value!r}")
    return r.kind(value)


def check_all(**values) -> dict:
    return {name: check(name, value) for name, value in values.items()}


def argtype(name: str):
    """An argparse ``type=`` that parses and range-checks the flag for option ``name``."""
    kind = RANGES[name].kind

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {RANGES[name].describe()}, got {text!r}") from None
        try:
            return check(name, value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {RANGES[name].describe()}, got {text!r}") from None

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse
