"""The running decode batch: every prefilled sequence advances one token per step, together.

Decoding a token reads every weight once whatever the batch size, so B sequences cost little
more than one. Each sequence is prefilled alone (with its own images and its own stored
state), then joins: its attention caches become one left-padded ``BatchKVCache`` and its
DeltaNet states rows of one ``ArraysCache`` (mlx-lm's ``merge``/``extend``/``filter``/
``extract``), and a sequence that ends or is cancelled leaves at the next step.

A batch of one keeps the plain caches, so a lone request runs exactly the path of
``generate`` (no mask, the one-row decoding kernels) and gets exactly its tokens.
"""

from typing import List, Tuple

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, KVCache


def batched(cache: list) -> list:
    """A single sequence's caches as batch caches of one row."""
    out = []
    for c in cache:
        if isinstance(c, (KVCache, ArraysCache)):
            out.append(type(c).merge([c]))
        else:
            raise TypeError(f"a {type(c).__name__} layer cache cannot join a batch")
    return out


class DecodeBatch:
    def __init__(self, model):
        self.model = model
        self.seqs: list = []
        self.cache = None

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq) -> None:
        """Join a prefilled sequence; its own cache moves into the batch's."""
        if not self.seqs:
            self.cache = seq.cache
        else:
            if len(self.seqs) == 1:
                self.cache = batched(self.cache)
            for mine, theirs in zip(self.cache, batched(seq.cache)):
                mine.extend(theirs)
        seq.cache = None
        self.seqs.append(seq)

    def remove(self, leaving: List[int]) -> None:
        keep = [i for i in range(len(self.seqs)) if i not in set(leaving)]
        if not keep:
            self.seqs, self.cache = [], None
            return
        if len(self.seqs) > 1:
            if len(keep) == 1:
                self.cache = [c.extract(keep[0]) for c in self.cache]  # back to the plain path
            elif len(keep) < len(self.seqs):
                for c in self.cache:
                    c.filter(keep)
        self.seqs = [self.seqs[i] for i in keep]

    def step(self) -> Tuple[List[int], mx.array]:
        """One token for every sequence: (tokens, log-probabilities (B, vocab))."""
        seqs = self.seqs
        inputs = mx.array([s.tokens[-1] for s in seqs])
        logits = self.model(inputs[:, None], cache=self.cache)[:, -1, :]
        if any(s.processors for s in seqs):
            rows = []
            for i, s in enumerate(seqs):
                row = logits[i: i + 1]
                if s.processors:
                    context = mx.array(s.tokens)
                    for processor in s.processors:
                        row = processor(context, row)
                rows.append(row)
            logits = mx.concatenate(rows, axis=0)
        logprobs = logits - self.model.logsumexp(logits, axis=-1, keepdims=True)
        if all(s.job.sampling.temperature == 0 for s in seqs):
            tokens = mx.argmax(logprobs, axis=-1)
        else:
            tokens = mx.concatenate([s.sampler(logprobs[i: i + 1]) for i, s in enumerate(seqs)], axis=0)
        mx.eval(tokens, logprobs)
        return tokens.tolist(), logprobs
