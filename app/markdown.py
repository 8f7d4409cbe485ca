"""An answer's text, ready to show: prose and fenced code apart, code highlighted with Pygments,
the thinking apart from the answer, the grounding tags as plain words. Text in, text out."""

import html
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from mlx_minicpmv import grounding  # pure: loads no MLX

FENCE = re.compile(r"^```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^```[ \t]*$|\Z)", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
UNESCAPED_ANGLE = re.compile(r"(?<!\\)<")


@dataclass(frozen=True)
class Segment:
    kind: str  # "prose" or "code"
    text: str
    language: str = ""


def segments(text: str) -> List[Segment]:
    """Prose and fenced code blocks, in order; a fence still open while streaming is code too."""
    out, at = [], 0
    for match in FENCE.finditer(text):
        if text[at:match.start()].strip():
            out.append(Segment("prose", text[at:match.start()].strip("\n")))
        out.append(Segment("code", match.group(2).rstrip("\n"), match.group(1)))
        at = match.end()
    if text[at:].strip():
        out.append(Segment("prose", text[at:].strip("\n")))
    return out


def split_thinking(text: str, started: bool) -> Tuple[Optional[str], str, bool]:
    """(thought, answer, thought finished). ``started``: the prompt opened the thinking (thinking
    on), so the text begins inside it; otherwise a thought is there only if the text opens one."""
    if not started:
        stripped = text.lstrip()
        if not stripped.startswith("<think>"):
            return None, text, False
        text = stripped[len("<think>"):]
    thought, end, answer = text.partition("</think>")
    return thought.strip(), answer.strip(), bool(end)


def readable(text: str) -> str:
    """Grounding tags as words: ``<ref>cat</ref><box>…</box>`` reads "cat" (the boxes are drawn
    on the image instead); other markup stays visible as text."""
    return grounding.strip(text, ref=r"**\1**")


def escape_markdown_html(text: str) -> str:
    """Markdown for a QLabel: angle brackets outside code spans are escaped, so text such as
    ``<tts_pad>`` stays visible instead of being taken for an HTML tag."""
    out, at = [], 0
    for match in CODE_SPAN.finditer(text):
        out += [UNESCAPED_ANGLE.sub(r"\\<", text[at:match.start()]), match.group(0)]
        at = match.end()
    out.append(UNESCAPED_ANGLE.sub(r"\\<", text[at:]))
    return "".join(out)


def highlight(code: str, language: str, style: str, background: str) -> str:
    """Rich text (HTML) for a code block, coloured by Pygments in ``style``."""
    from pygments import highlight as pygmentize
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name, guess_lexer
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language) if language else guess_lexer(code)
    except ClassNotFound:
        lexer = TextLexer()
    if lexer.name == "Text only" or not code.strip():
        body = html.escape(code)
    else:
        formatter = HtmlFormatter(noclasses=True, nowrap=True, style=style)
        body = pygmentize(code, lexer, formatter).rstrip("\n")
    return (f'<pre style="margin:0; background:{background}; white-space:pre; '
            f'font-family: Menlo, \'SF Mono\', \'DejaVu Sans Mono\', monospace;">{body}</pre>')
