"""``response_format`` by constrained decoding: llguidance's matcher as an MLX logits processor.

llguidance (the Rust library behind Guidance, with wheels for Linux and macOS arm64 and no
dependency on torch) compiles a JSON schema against the tokenizer's vocabulary and, at each
step, gives the set of tokens that keep the output a prefix of a valid document; every other
logit is set to -inf before sampling, so even a random model writes JSON that validates. Its
own ``llguidance.mlx`` applies the mask with a Metal kernel, which does not run on MLX's CPU
backend, so the mask is applied here with ``mx.where`` over the unpacked bitmask (the same on
every backend).

JSON is written compactly (``whitespace_flexible`` off): a free run of whitespace is where a
small model could loop until ``max_tokens``. With thinking on, the constraint starts after
``</think>`` (as vLLM's structured outputs wait for the reasoning to end), and the reasoning
may not end the turn, so an answer that stops is always the JSON asked for.
"""

import json
from typing import Optional, Sequence

import mlx.core as mx
import numpy as np

from .protocol import APIError, ResponseFormat


def _json_grammar(response_format: ResponseFormat, leading_newlines: bool) -> str:
    import llguidance

    if response_format.type == "json_object":
        schema = {"type": "object"}
    else:
        schema = dict(response_format.json_schema.schema_ or {})
    schema.setdefault("x-guidance", {}).setdefault("whitespace_flexible", False)
    if not leading_newlines:
        return llguidance.grammar_from("json_schema", json.dumps(schema))
    # After "</think>" the model writes a blank line or two before the answer.
    return llguidance.grammar_from("lark", "start: NL json\nNL: /\\n{0,2}/\njson: %json " + json.dumps(schema))


class Grammars:
    """The llguidance view of the tokenizer, built once (about a second for the real vocabulary)."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int]):
        self._hf, self.vocab_size, self.eos = tokenizer, vocab_size, list(eos_token_ids)
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            import llguidance.hf

            hf = getattr(self._hf, "_tokenizer", self._hf)  # mlx-lm's TokenizerWrapper holds the HF one
            self._tokenizer = llguidance.hf.from_tokenizer(hf, n_vocab=self.vocab_size, eos_token=self.eos)
        return self._tokenizer

    def constraint(self, response_format: ResponseFormat, think_end: Optional[int] = None) -> "JSONConstraint":
        """A fresh logits processor for one request; a schema llguidance refuses is a 400."""
        import llguidance

        try:
            grammar = _json_grammar(response_format, leading_newlines=think_end is not None)
        except (ValueError, TypeError, RuntimeError) as e:
            raise APIError(400, f"response_format: the JSON schema cannot be compiled ({e})",
                           param="response_format") from None
        matcher = llguidance.LLMatcher(self.tokenizer, grammar)
        if matcher.is_error():
            raise APIError(400, f"response_format: the JSON schema cannot be used ({matcher.get_error()})",
                           param="response_format")
        return JSONConstraint(matcher, self.vocab_size, think_end, self.eos)


class JSONConstraint:
    """``processor(tokens, logits) -> logits`` in mlx-lm's convention: ``tokens`` is the whole
    context so far (prompt and answer), of which this counts the new ones."""

    def __init__(self, matcher, vocab_size: int, think_end: Optional[int] = None, eos: Sequence[int] = ()):
        self.matcher, self.vocab_size = matcher, vocab_size
        self.eos = mx.array(list(eos), dtype=mx.int32)
        self.waiting = think_end is not None  # for the end of the reasoning
        self.think_end = think_end
        self.seen: Optional[int] = None

    def _advance(self, new: Sequence[int]) -> None:
        for t in new:
            if self.waiting:
                self.waiting = t != self.think_end
            elif not self.matcher.is_stopped() and not self.matcher.consume_token(int(t)):
                raise RuntimeError(f"the sampled token {t} is outside the grammar ({self.matcher.get_error()})")

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        n = tokens.size
        if self.seen is None:
            self.seen = n  # the first call sees the prompt only
        elif n > self.seen:
            self._advance(tokens[self.seen:].tolist())
            self.seen = n
        if self.waiting:  # the reasoning may not end the answer before the JSON is written
            return logits if not self.eos.size else logits.at[:, self.eos].add(-mx.inf)
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = np.zeros(logits.shape[-1], dtype=bool)
        k = min(len(bits), logits.shape[-1])
        allowed[:k] = bits[:k]
        return mx.where(mx.array(allowed), logits, mx.array(-mx.inf, dtype=logits.dtype))

    @property
    def done(self) -> bool:
        return not self.waiting and self.matcher.is_stopped()
