"""Tokens -> the text a client sees: reasoning and answer apart, stop strings cut.

With thinking on, the prompt ends in ``<think>\\n`` and everything up to the ``</think>`` token
is reasoning (vLLM's ``reasoning_content``); the answer follows, without the blank line the
model writes first. A ``stop`` string ends the answer before it; text that might be the start
of one is held back until the next token shows it is not.
"""

from typing import List, Optional, Sequence, Tuple


class TextStream:
    def __init__(self, detokenizer, eos_token_ids: Sequence[int], think_end: Optional[int], thinking: bool,
                 stops: Sequence[str] = ()):
        self.detokenizer = detokenizer
        self.eos = set(eos_token_ids)
        self.think_end = think_end
        self.reasoning_mode = thinking and think_end is not None
        self.stops: List[str] = list(stops)
        self.pending = ""  # answer text held back: it may begin a stop string
        self.started = False  # the answer's leading newlines are dropped
        self.stopped = False
        self.reasoning_text: Optional[str] = "" if self.reasoning_mode else None
        self.content_text = ""

    def add(self, token: int) -> Tuple[str, str]:
        """(reasoning delta, answer delta) after ``token``; ``stopped`` turns true at a stop string."""
        if self.stopped or token in self.eos:
            return "", ""
        if self.reasoning_mode and token == self.think_end:
            self.detokenizer.finalize()
            reasoning = self.detokenizer.last_segment
            self.detokenizer.reset()
            self.reasoning_mode = False
            self.reasoning_text += reasoning
            return reasoning, ""
        self.detokenizer.add_token(token)
        return self._route(self.detokenizer.last_segment)

    def finish(self) -> Tuple[str, str]:
        """What is left once generation ends."""
        if self.stopped:
            return "", ""
        self.detokenizer.finalize()
        reasoning, content = self._route(self.detokenizer.last_segment)
        if not self.stopped:
            content += self.pending
            self.content_text += self.pending
            self.pending = ""
        return reasoning, content

    def _route(self, text: str) -> Tuple[str, str]:
        if self.reasoning_mode:
            self.reasoning_text += text
            return text, ""
        return "", self._answer(text)

    def _answer(self, text: str) -> str:
        if not self.started:
            text = text.lstrip("\n")
            self.started = bool(text)
        held = self.pending + text
        for stop in self.stops:
            at = held.find(stop)
            if at >= 0:
                self.stopped = True
                self.pending = ""
                self.content_text += held[:at]
                return held[:at]
        keep = max((k for s in self.stops for k in range(1, len(s)) if held.endswith(s[:k])), default=0)
        out, self.pending = (held[:-keep], held[-keep:]) if keep else (held, "")
        self.content_text += out
        return out
