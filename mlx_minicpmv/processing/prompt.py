"""Chat template rendering and the expansion of image/video pads into placeholder text (spec §8, §10).

Special tokens (turn markers, media markers) come only from the template and the processor: what
a user or system message says is encoded as plain text, so typing ``<|im_end|>`` cannot forge a
turn and typing ``<image>`` or ``<|image_pad|>`` is just text. (transformers' processor encodes
the rendered prompt whole, so there such text becomes the special tokens.) Before rendering, the
special-token strings inside user and system text are swapped for private-use marks that no
template step can take for a token or trim; after expansion the prompt is split at the special
tokens that remain, which are the template's and the processor's, and each piece between them
is encoded with the marks put back and ``split_special_tokens``.

One exception, made by the program and never by what a person types: a text item may declare
grounding tags it holds as tokens (``{"type": "text", "text": ..., "special_tokens": ["<ref>",
"</ref>"]}``), as ``mlx_minicpmv.grounding.question`` does. The model learned ``<ref>``…``</ref>``
as those tokens (transformers' processor makes them from any text), and a grounding tag can
forge no turn and no media. The server and the command lines never set the key.
"""

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class SpecialTokens:
    """The marker strings the processor writes, read from the tokenizer's named tokens."""

    image: str = "<|image_pad|>"
    video: str = "<|video_pad|>"
    image_start: str = "<image>"
    image_end: str = "</image>"
    slice_start: str = "<slice>"
    slice_end: str = "</slice>"
    id_start: str = "<image_id>"
    id_end: str = "</image_id>"

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokens":
        names = dict(image="image_token", video="video_token", image_start="image_start_token",
                     image_end="image_end_token", slice_start="slice_start_token", slice_end="slice_end_token",
                     id_start="image_id_start_token", id_end="image_id_end_token")
        found = {k: getattr(tokenizer, v, None) for k, v in names.items()}
        return cls(**{k: v for k, v in found.items() if isinstance(v, str)})


def unit_placeholder(pad: str, tokens: Sequence[int], grid: Optional[Tuple[int, int]], t: SpecialTokens) -> str:
    """One image (or video frame): source tokens, then slice rows joined by newlines."""
    text = t.image_start + pad * tokens[0] + t.image_end
    if grid:
        rows, cols = grid
        per = tokens[1:]
        text += "\n".join(
            "".join(t.slice_start + pad * per[r * cols + c] + t.slice_end for c in range(cols))
            for r in range(rows)
        )
    return text


def image_id(k: int, t: SpecialTokens) -> str:
    return f"{t.id_start}{k}{t.id_end}"


def expand(text: str, pad: str, replacements: Sequence[str]) -> str:
    """Replace the k-th ``pad`` of ``text`` with ``replacements[k]``."""
    parts = text.split(pad)
    if len(parts) - 1 != len(replacements):
        kind = "image" if "image" in pad else "video"
        raise ValueError(
            f"the prompt has {len(parts) - 1} {kind} placeholders but {len(replacements)} {kind}s were given"
        )
    out = [parts[0]]
    for rep, part in zip(replacements, parts[1:]):
        out += [rep, part]
    return "".join(out)


def render(tokenizer, messages: List[dict], enable_thinking: bool = False,
           add_generation_prompt: bool = True, tools=None) -> str:
    """The real chat template through the tokenizer's Jinja renderer (the same one HF uses)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; copy chat_template.jinja into the model directory")
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking, tools=tools,
    )


PROTECTED_ROLES = ("user", "system")
# What a text item may declare as special tokens: the grounding tags, nothing that makes turns or media.
DECLARABLE = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<point>", "</point>")
MARK = re.compile("\ue000(\\d+)\ue001")


class PlainText:
    """Encodes a rendered prompt with special tokens only where the template put them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        self.strings = sorted(specials, key=len, reverse=True)  # longest first, as the tokenizer matches
        self.pattern = re.compile("(" + "|".join(map(re.escape, self.strings)) + ")") if self.strings else None

    def protect(self, messages: List[dict]) -> List[dict]:
        """Copies of ``messages`` whose user and system text has its special-token strings marked,
        but for the grounding tags a text item declares (``special_tokens``)."""
        if self.pattern is None:
            return messages
        index = {s: i for i, s in enumerate(self.strings)}

        def mark(text, keep=()):
            if not isinstance(text, str):
                return text
            return self.pattern.sub(lambda m: m.group() if m.group() in keep else f"\ue000{index[m.group()]}\ue001", text)

        def item_text(item):
            keep = item.get("special_tokens") or ()
            wrong = [t for t in keep if t not in DECLARABLE]
            if isinstance(keep, str) or wrong:
                raise ValueError(f"a text item may declare only grounding tags ({' '.join(DECLARABLE)}) as special "
                                 f"tokens, not {wrong or keep!r}")
            return mark(item["text"], keep)

        out = []
        for message in messages:
            if isinstance(message, dict) and message.get("role") in PROTECTED_ROLES:
                content = message.get("content")
                if isinstance(content, list):
                    content = [dict(item, text=item_text(item)) if isinstance(item, dict) and "text" in item
                               else item for item in content]
                message = dict(message, content=mark(content))
            out.append(message)
        return out

    def restore(self, text: str) -> str:
        return MARK.sub(lambda m: self.strings[int(m.group(1))], text)

    def encode(self, text: str) -> List[int]:
        """Token ids: each special-token string left in ``text`` as its id, the text between as
        plain text (marked strings restored and encoded as the characters they are)."""
        if self.pattern is None:
            return self.tokenizer.encode(self.restore(text), add_special_tokens=False, split_special_tokens=True)
        pieces = self.pattern.split(text)  # plain, special, plain, ...
        encoded = {}  # a video prompt repeats a few short pieces thousands of times
        ids = []
        for k, piece in enumerate(pieces):
            if k % 2:
                ids.append(self.tokenizer.convert_tokens_to_ids(piece))
            elif piece:
                if piece not in encoded:
                    encoded[piece] = self.tokenizer.encode(self.restore(piece), add_special_tokens=False,
                                                           split_special_tokens=True)
                ids += encoded[piece]
        return ids
