"""Canvas M-RoPE positions of MiniCPM-V 4.7, computed on the host (numpy only).

Reference: transformers 5.24 ``models/minicpmv4_7/modular_minicpmv4_7.py``,
``MiniCPMV4_7Model.get_rope_index`` and ``_group_visual_frames``. 4.6 numbers every token
1, 2, 3, ...; 4.7 gives each token a (t, h, w) position: text keeps t = h = w, while each
image, video frame and slice is pinned onto a 2-D canvas anchored on its ``<image>``,
``</image>``, ``<slice>``, ``</slice>`` and row-ending newline tokens.

The positions depend only on the token ids and the processor's patch grids, never on a value
the model computes, so they are worked out once per prompt here and handed to the graph.
``start`` continues an earlier conversation: the prompt is laid out as the tail of the whole
conversation would be in one ``get_rope_index`` pass.
"""

import itertools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..downsample import merge_side

TEXT, IMAGE, VIDEO = 0, 1, 2


@dataclass(frozen=True)
class Markers:
    """The token ids the canvas is anchored on (from ``config.json``)."""

    image_pad: int
    video_pad: int
    image_start: int
    image_end: int
    slice_start: int
    slice_end: int
    newline: int

    @property
    def boundaries(self) -> Tuple[int, ...]:
        return (self.slice_start, self.slice_end, self.image_start, self.image_end, self.newline)


@dataclass
class Frame:
    """One picture or video frame: a thumbnail crop, then the slices that tile it."""

    modality: int
    thumb: Tuple[int, int]  # [start, end) of the thumbnail's pad tokens
    slices: List[Tuple[int, int]]
    end: int = 0  # one past the markers that close the frame


def modalities(ids: np.ndarray, markers: Markers) -> np.ndarray:
    """Per token: 0 text, 1 image pad, 2 video pad (the processor's ``mm_token_type_ids``)."""
    return np.where(ids == markers.image_pad, IMAGE, np.where(ids == markers.video_pad, VIDEO, TEXT))


def group_frames(ids: Sequence[int], types: Sequence[int], markers: Markers) -> List[Tuple[int, int, List[Frame]]]:
    """(group start, group end, frames) for each run of frames that only markers separate.

    Each maximal run of one non-text type is a crop. A crop behind ``<slice>`` belongs to the
    frame before it; any other crop opens a frame. Frames with nothing but markers between them
    (a clip's frames) share a group, so that the text position steps past them once.
    """
    boundaries = markers.boundaries
    groups: List[Tuple[int, List[Frame]]] = []
    frame: Optional[Frame] = None
    previous_end = 0
    for modality, run in itertools.groupby(enumerate(types), lambda item: item[1]):
        if modality == TEXT:
            continue
        run = list(run)
        crop = (run[0][0], run[-1][0] + 1)
        if frame is not None and ids[crop[0] - 1] == markers.slice_start:
            frame.slices.append(crop)
        else:
            frame = Frame(modality, crop, [])
            adjacent = groups and all(t in boundaries for t in ids[previous_end : crop[0] - 1])
            if adjacent:
                groups[-1][1].append(frame)
            else:
                groups.append((crop[0] - 1, [frame]))
        previous_end = crop[1]

    out = []
    for start, frames in groups:
        for f in frames:
            end = f.slices[-1][1] if f.slices else f.thumb[1]
            while end < len(ids) and ids[end] in boundaries:
                end += 1
            f.end = end
        out.append((start, frames[-1].end, frames))
    return out


def spread(extent: int, n: int) -> np.ndarray:
    """``torch.linspace(0, extent - 1, n).round().long()``: n points spread over ``extent``.

    The reference rounds float32 values half to even, so a point that lands near .5 goes
    up or down with the last bit of its float32 value. This reproduces torch's CPU kernel bit
    for bit: ``step·i`` below the midpoint, ``end − step·(n−1−i)`` from it on, each with one
    rounding (a fused multiply-add; float64 holds the exact product). numpy's own float32 or
    float64 ``linspace`` rounds differently for 565 of the 33,670 (extent, n) pairs up to 259.
    """
    if n == 1:
        return np.zeros(1, np.int64)
    end = np.float32(extent - 1)
    step = np.float64(end / np.float32(n - 1))
    i = np.arange(n)
    values = np.where(i < n // 2, step * i, np.float64(end) - step * (n - 1 - i)).astype(np.float32)
    return np.rint(values).astype(np.int64)


def grid_positions(origin: int, grid, merge: int, canvas=(0, 0), offset=(0, 0)) -> np.ndarray:
    """(3, h·w) positions of one crop's LLM tokens, row-major: t frozen at ``origin``; h and w
    spread over the canvas when it is larger than the crop (a thumbnail under its slices),
    else counted from the crop's ``offset`` on it."""
    h, w = int(grid[0]) // merge, int(grid[1]) // merge
    rows = spread(canvas[0] or h, h) + offset[0]
    cols = spread(canvas[1] or w, w) + offset[1]
    H, W = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([np.zeros_like(H), H, W]).reshape(3, -1) + origin


def canvas_positions(ids, image_sizes, video_sizes, markers: Markers, downsample_mode: str = "16x",
                     start: int = 0) -> np.ndarray:
    """(3, len(ids)) int64 positions [t, h, w] of a prompt whose first token sits at ``start``.

    ``image_sizes`` / ``video_sizes``: the processor's patch grids (``target_sizes`` and
    ``target_sizes_videos``), one (h, w) row per crop in prompt order. The next token after
    the prompt sits at ``positions.max() + 1`` on every axis.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    merge = merge_side(downsample_mode)
    grids = {IMAGE: _rows(image_sizes), VIDEO: _rows(video_sizes)}
    used = {IMAGE: 0, VIDEO: 0}
    types = modalities(ids, markers)
    id_list, type_list = ids.tolist(), types.tolist()

    def next_grid(modality: int, crop: Tuple[int, int]):
        kind = "image" if modality == IMAGE else "video"
        if used[modality] >= len(grids[modality]):
            raise ValueError(f"the prompt has more {kind} crops than the {len(grids[modality])} {kind} grids given; "
                             "build the prompt and the pixels with the same processor call")
        grid = grids[modality][used[modality]]
        used[modality] += 1
        tokens = (grid[0] // merge) * (grid[1] // merge)
        if crop[1] - crop[0] != tokens:
            raise ValueError(f"a {kind} crop of {crop[1] - crop[0]} placeholder tokens has a {grid[0]}x{grid[1]} "
                             f"patch grid ({tokens} tokens in {downsample_mode} mode); use the same downsample_mode "
                             "for the processor and the model")
        return grid

    pos = np.arange(len(ids), dtype=np.int64)[None].repeat(3, axis=0) + start
    current, cursor = start, 0
    for group_start, group_end, frames in group_frames(id_list, type_list, markers):
        pos[:, cursor:group_start] = np.arange(group_start - cursor) + current
        current += group_start - cursor
        # Only markers separate the frames of a group, and each frame's span runs up to the
        # next one's pads, so the reference's steps for text inside a group never apply.
        for f in frames:
            thumb = next_grid(f.modality, f.thumb)
            frame_start, end = f.thumb[0] - 1, f.end
            origin = current
            canvas_h, canvas_w = thumb[0] // merge, thumb[1] // merge
            rows = cols = slice_h = slice_w = 0
            if f.slices:
                first_slice = next_grid(f.modality, f.slices[0])
                rows, cols = _slice_layout(f.slices)
                slice_h, slice_w = first_slice[0] // merge, first_slice[1] // merge
                canvas_h, canvas_w = rows * slice_h, cols * slice_w

            pos[:, frame_start:end] = origin  # markers inside the frame: t = h = w = origin
            pos[1:, frame_start] = max(origin - 1, 0)  # <image>: the halo above-left of the canvas
            if f.thumb[1] < end:  # </image>: the far corner
                pos[1, f.thumb[1]], pos[2, f.thumb[1]] = origin + canvas_h, origin + canvas_w
            # The thumbnail is stretched over the whole canvas, so it lines up with the slices.
            pos[:, f.thumb[0] : f.thumb[1]] = grid_positions(origin, thumb, merge, (canvas_h, canvas_w))
            for k, (s0, s1) in enumerate(f.slices):
                grid = first_slice if k == 0 else next_grid(f.modality, (s0, s1))
                top, left = (k // cols) * slice_h, (k % cols) * slice_w
                if s0 - 1 >= frame_start:  # <slice>: the slice's top-left corner
                    pos[1, s0 - 1], pos[2, s0 - 1] = origin + top, origin + left
                if s1 < end:  # </slice>: its bottom-right corner
                    pos[1, s1] = origin + top + grid[0] // merge - 1
                    pos[2, s1] = origin + left + grid[1] // merge - 1
                pos[:, s0:s1] = grid_positions(origin, grid, merge, offset=(top, left))
            for k in range(len(f.slices) - 1):  # the newline ending a row: past its right edge
                gap_start, gap_end = f.slices[k][1], f.slices[k + 1][0]
                if gap_end - gap_start > 2:
                    pos[1, gap_start + 1 : gap_end - 1] = origin + (k // cols + 1) * slice_h - 1
                    pos[2, gap_start + 1 : gap_end - 1] = origin + cols * slice_w
            current = origin + max(canvas_h, canvas_w) + 1
        cursor = group_end
    pos[:, cursor:] = np.arange(len(ids) - cursor) + current
    for modality, kind in ((IMAGE, "image"), (VIDEO, "video")):
        if used[modality] != len(grids[modality]):
            raise ValueError(f"{len(grids[modality])} {kind} grids were given for {used[modality]} {kind} crops "
                             "in the prompt; build the prompt and the pixels with the same processor call")
    return pos


def batch_positions(ids, image_sizes, video_sizes, markers: Markers, downsample_mode: str = "16x") -> np.ndarray:
    """(B, 3, L) positions of a batch of prompts (training, scoring), each row from 0 on a
    canvas of its own. The grids are the rows' one after another, as the rows' media are
    concatenated; each maximal run of pads is one crop, which says how many grids are a row's."""
    grids = {IMAGE: _rows(image_sizes), VIDEO: _rows(video_sizes)}
    out = []
    for row in np.asarray(ids, dtype=np.int64):
        types = modalities(row, markers)
        starts = types != np.concatenate([[TEXT], types[:-1]])
        mine = {}
        for m in (IMAGE, VIDEO):
            crops = int(np.sum(starts & (types == m)))
            mine[m], grids[m] = grids[m][:crops], grids[m][crops:]
        out.append(canvas_positions(row, mine[IMAGE], mine[VIDEO], markers, downsample_mode))
    if grids[IMAGE] or grids[VIDEO]:
        raise ValueError(f"{len(grids[IMAGE])} image and {len(grids[VIDEO])} video grids are left over after the "
                         "batch's crops; build each row and its pixels with the same processor call")
    return np.stack(out)


def _rows(sizes) -> List[Tuple[int, int]]:
    if sizes is None:
        return []
    return [(int(h), int(w)) for h, w in np.asarray(sizes).reshape(-1, 2)]


def _slice_layout(slices: List[Tuple[int, int]]) -> Tuple[int, int]:
    """(rows, cols) of a frame's slices: a gap wider than ``</slice><slice>`` is the newline
    that ends a row, and so fixes the column count."""
    cols = len(slices)
    for k in range(len(slices) - 1):
        if slices[k + 1][0] - slices[k][1] > 2:
            cols = k + 1
            break
    rows = len(slices) // cols
    return (rows, cols) if rows * cols == len(slices) else (1, len(slices))
