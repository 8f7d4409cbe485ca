"""MiniCPM-V 4.7's rotary embedding: 3-D (t, h, w) positions, interleaved across frequencies.

Reference: transformers 5.24 ``Qwen3_5TextRotaryEmbedding`` (``mrope_section``, default
[11, 11, 10]): frequency i turns with the h position when ``i % 3 == 1`` and
``i < 3·section[1]``, with w when ``i % 3 == 2`` and ``i < 3·section[2]``, else with t. Text
has t = h = w, so there it is 4.6's 1-D RoPE.

The positions are conversation state, like the KV cache's offset, so they live beside it: a
4.7 conversation's attention caches are ``CanvasKVCache``s sharing one ``CanvasPositions``,
whose ``offset`` also tells the rope where its tokens sit. mlx-lm's attention forward
(``self.rope(queries, offset=cache.offset)``) then runs unchanged on both models. In the
server's decode batch (``CanvasBatchKVCache``) every token is text, so each row's offset is
simply its own text position: its length plus its conversation's ``delta``.
"""

from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache


class CanvasPositions:
    """Where each token of one conversation sits: the canvas positions of the latest prompt
    with images or videos (``place``), and 1-D text positions on from its end."""

    def __init__(self):
        self.start = 0  # conversation index of the placed prompt's first token
        self.table = np.zeros((3, 0), np.int64)
        self.delta = 0  # a text token at conversation index i sits at i + delta
        self._last = None

    def place(self, index: int, positions: np.ndarray) -> None:
        """The next ``n`` tokens, from conversation index ``index`` on, sit at ``positions``:
        (3, n) from ``canvas.canvas_positions``, started at ``next_position``, or (B, 3, n) from
        ``canvas.batch_positions`` for a batch of prompts (each row then has its own delta)."""
        self.start, self.table, self._last = index, np.asarray(positions, np.int64), None
        n = self.table.shape[-1]
        if n:
            delta = self.table.max(axis=(-2, -1)) + 1 - (index + n)
            self.delta = int(delta) if delta.ndim == 0 else delta

    def next_position(self, index: int) -> int:
        """Where conversation token ``index`` sits if it is text after everything placed."""
        return index + self.delta

    def lookup(self, index: int, n: int) -> np.ndarray:
        """(3, n) positions of conversation tokens [index, index + n) ((B, 3, n) for a batch)."""
        if self._last is not None and self._last[0] == (index, n):
            return self._last[1]
        if index < self.start:
            raise ValueError(f"token {index} comes before the prompt placed at {self.start}; "
                             "a conversation's positions only move forward")
        i = np.arange(index, index + n)
        out = np.repeat((i + np.asarray(self.delta)[..., None])[..., None, :], 3, axis=-2)
        inside = i < self.start + self.table.shape[-1]
        out[..., inside] = self.table[..., i[inside] - self.start]
        self._last = ((index, n), out)
        return out

    def copy(self) -> "CanvasPositions":
        out = CanvasPositions()
        out.start, out.table, out.delta = self.start, self.table, self.delta
        return out


class Offset(int):
    """A KV cache offset (an int, as mlx-lm's caches and masks use it) that also carries the
    conversation's ``CanvasPositions`` to the rope."""

    def __new__(cls, value: int, positions: CanvasPositions):
        self = super().__new__(cls, value)
        self.positions = positions
        return self


class CanvasKVCache(KVCache):
    """mlx-lm's KV cache of a 4.7 attention layer: its ``offset`` is an ``Offset``."""

    def __init__(self, positions: CanvasPositions):
        self.positions = positions
        super().__init__()

    @property
    def offset(self) -> Offset:
        return Offset(self._offset, self.positions)

    @offset.setter
    def offset(self, value) -> None:
        self._offset = int(value)

    @classmethod
    def merge(cls, caches) -> "CanvasBatchKVCache":
        return CanvasBatchKVCache.merge(caches)


class CanvasBatchKVCache(BatchKVCache):
    """mlx-lm's batch KV cache of 4.7 sequences that have been prefilled: what they decode is
    text, so each row's ``offset`` (which only the rope reads; masks come from the index and
    the padding) is its text position, its length plus its conversation's ``delta``."""

    @classmethod
    def merge(cls, caches) -> "CanvasBatchKVCache":
        if any(c.empty() for c in caches):
            raise ValueError("a 4.7 sequence joins a decode batch after its prompt, not before")
        batch = super().merge(caches)
        batch.offset = batch.offset + mx.array([c.positions.delta for c in caches])
        return batch

    def extract(self, idx: int) -> CanvasKVCache:
        """Row ``idx`` back as a single sequence's cache, its positions continuing as text."""
        plain = super().extract(idx)
        positions = CanvasPositions()
        positions.delta = int(self.offset[idx].item()) - plain.offset
        out = CanvasKVCache(positions)
        out.keys, out.values, out.offset = plain.keys, plain.values, plain.offset
        return out


def axis_of_frequency(half: int, sections) -> np.ndarray:
    """For each of ``half`` rotary frequencies, the position axis it turns with (0 t, 1 h, 2 w)."""
    i = np.arange(half)
    axis = np.zeros(half, np.int64)
    axis[(i % 3 == 1) & (i < 3 * sections[1])] = 1
    axis[(i % 3 == 2) & (i < 3 * sections[2])] = 2
    return axis


class CanvasRoPE(nn.Module):
    """Partial rotate-half RoPE over 3-D positions; ``offset`` is the attention cache's."""

    def __init__(self, dims: int, base: float, sections=(11, 11, 10)):
        super().__init__()
        self.dims = dims
        exponents = np.arange(0, dims, 2) / dims
        self._periods = mx.array((base**exponents).astype(np.float32))  # for mx.fast.rope, as 4.6's RoPE
        # The reference's float32 inv_freq, 1 / base ** (arange / dims): its scalar float32 pow
        # is correctly rounded, as numpy's is (torch's vectorised pow, from 16 frequencies on,
        # is off by an ulp or two here and there, by the machine's vector unit).
        f32 = np.float32
        self._inv_freq = mx.array(f32(1) / np.power(f32(base), np.arange(0, dims, 2, dtype=f32) / f32(dims)))
        self._axis = axis_of_frequency(dims // 2, sections)

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        L = x.shape[-2]
        if isinstance(offset, mx.array):  # a decode batch: each row's text position
            return self.rope_1d(x, offset)
        positions: Optional[CanvasPositions] = getattr(offset, "positions", None)
        if positions is None:
            return self.rope_1d(x, int(offset))
        pos = positions.lookup(int(offset), L)
        if pos.ndim == 2 and (pos == pos[0]).all() and (pos[0] == pos[0, 0] + np.arange(L)).all():
            return self.rope_1d(x, int(pos[0, 0]))  # text (every decoded token): one kernel
        # Each frequency's position, then its angle in float32 as the reference computes it:
        # (L, half), or (B, 1, L, half) for a batch of prompts.
        angles = mx.array(np.swapaxes(pos[..., self._axis, :], -1, -2).astype(np.float32)) * self._inv_freq
        if angles.ndim == 3:
            angles = angles[:, None]
        cos, sin = mx.cos(angles).astype(x.dtype), mx.sin(angles).astype(x.dtype)
        half = self.dims // 2
        x1, x2, rest = x[..., :half], x[..., half : self.dims], x[..., self.dims :]
        return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)

    def rope_1d(self, x: mx.array, offset) -> mx.array:
        return mx.fast.rope(x, self.dims, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._periods)
