"""Model states of recent conversations, so a follow-up continues where the last turn began.

Chat clients send the whole history every turn. The state of the hybrid model after a prefix
of tokens is the attention layers' keys and values plus the DeltaNet layers' conv and
recurrent state; the KV part could be cut back to any shorter prefix, but the recurrent state
cannot be rewound (it is a running sum over every token). So states are kept only at points a
later request is likely to share, and a request continues from the longest stored one that is
a prefix of its own tokens.

Which points: a client re-renders the earlier answers through the chat template, and this
template writes a past assistant turn as ``<|im_start|>assistant\\n{answer}``, without the
``<think>\\n\\n</think>\\n\\n`` block the model was actually given before it answered. The
state after the answer is therefore never a prefix of the next request, while the state just
before the generation prompt (``<|im_start|>assistant``) always is. That point, the end of the
user's turn, is stored for every request; the follow-up then prefills only the last answer and
the new question, and neither encodes nor prefills the images and videos of earlier turns.
The end of a system message is stored too, so new chats that share a long system prompt skip it.

A stored state matches a request only if the tokens agree *and* so do the media digests in
that prefix: two images of the same size give the same placeholder tokens.
"""

from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import ArraysCache, KVCache

from ..model.canvas_rope import CanvasKVCache


def copy_cache(cache: list) -> list:
    """A copy that shares no array object with ``cache``: ``KVCache`` writes new keys into its
    buffer in place, which must never reach a stored state (or a stored state's user)."""
    out, positions = [], None
    for c in cache:
        if isinstance(c, KVCache):
            if isinstance(c, CanvasKVCache):  # 4.7: the copy's layers share one copy of the positions
                positions = positions or c.positions.copy()
                n = CanvasKVCache(positions)
            else:
                n = KVCache()
            if c.keys is not None:
                n.keys = mx.contiguous(c.keys[..., : c.offset, :])
                n.values = mx.contiguous(c.values[..., : c.offset, :])
                n.offset = c.offset
        elif isinstance(c, ArraysCache):
            n = ArraysCache(len(c.cache))
            n.cache = list(c.cache)  # DeltaNet layers assign new arrays, never write into these
        else:
            raise TypeError(f"cannot copy a {type(c).__name__} layer cache")
        out.append(n)
    mx.eval([[a for a in (getattr(c, "keys", None), getattr(c, "values", None)) if a is not None] for c in out])
    return out


def cache_nbytes(cache: list) -> int:
    return sum(c.nbytes for c in cache)


@dataclass
class Entry:
    tokens: np.ndarray
    media: Tuple[str, ...]  # digests of the images/videos inside ``tokens``, in order
    cache: list
    nbytes: int


class ConversationStore:
    """Least recently used states, bounded by count and by bytes."""

    def __init__(self, max_entries: int = 32, max_bytes: int = 4 << 30):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries: "OrderedDict[tuple, Entry]" = OrderedDict()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def lookup(self, tokens: Sequence[int], media: Sequence[Tuple[str, int]], limit: Optional[int] = None):
        """(copy of the longest stored state that is a prefix of ``tokens``, its length), or
        (None, 0). ``media`` is (digest, first token) of each item of the request; ``limit``
        the longest prefix the caller can use."""
        ids = np.asarray(tokens)
        limit = len(ids) if limit is None else limit
        best: Optional[Tuple[tuple, Entry]] = None
        for key, e in self.entries.items():
            n = len(e.tokens)
            if n > limit or (best is not None and n <= len(best[1].tokens)):
                continue
            if e.media != tuple(d for d, start in media if start < n) or not np.array_equal(ids[:n], e.tokens):
                continue
            best = (key, e)
        if best is None:
            self.misses += 1
            return None, 0
        self.hits += 1
        self.entries.move_to_end(best[0])
        return copy_cache(best[1].cache), len(best[1].tokens)

    def save(self, tokens: Sequence[int], media: Sequence[Tuple[str, int]], cache: list) -> None:
        """Keep a copy of ``cache``, the state after ``tokens``."""
        ids = np.asarray(tokens, dtype=np.int64)
        digests = tuple(d for d, start in media if start < len(ids))
        key = (ids.tobytes(), digests)
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        state = copy_cache(cache)
        size = cache_nbytes(state)
        if size > self.max_bytes:
            return
        self.entries[key] = Entry(ids, digests, state, size)
        while len(self.entries) > self.max_entries or self.nbytes > self.max_bytes:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


def save_points(ids: Sequence[int], im_start: int, has_system: bool) -> List[int]:
    """Where to store states while prefilling ``ids``: before the generation prompt's
    ``<|im_start|>`` and, after a system message, before the first user turn."""
    starts = np.flatnonzero(np.asarray(ids) == im_start).tolist()
    points = []
    if has_system and len(starts) > 1:
        points.append(starts[1])
    if starts and starts[-1] > 0:
        points.append(starts[-1])
    return sorted(set(points))
