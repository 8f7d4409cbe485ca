"""Chat template rendering and the expansion of image/video pads into placeholder text (spec §8, §10)."""

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
