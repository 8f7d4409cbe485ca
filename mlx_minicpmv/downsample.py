"""The two downsample modes (spec §3, §8): how many vision patches become one language token.

In "16x" the window merger inside the tower and the final merger each merge 2x2, so 4x4
patches make one token; in "4x" the window merger is skipped and 2x2 patches make one.
Plain Python: the processor, the model and the summary all read it from here.
"""

MODES = {"16x": 4, "4x": 2}  # patches per token along each side of the grid


def merge_side(mode: str) -> int:
    """Patches per token along each side in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"downsample_mode must be '16x' or '4x', got {mode!r}")
    return MODES[mode]


def patches_per_token(mode: str) -> int:
    return merge_side(mode) ** 2
