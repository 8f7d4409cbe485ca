"""The conversation, rendered as Markdown, with the answer streaming into its last bubble."""

import html

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QTextBrowser

from .history import Conversation, Message


def render_message(message: Message) -> str:
    who = "You" if message.role == "user" else "MiniCPM-V"
    parts = [f"**{who}**\n"]
    for a in message.attachments:
        mark = " — *missing: the file was moved or deleted*" if a.missing else ""
        parts.append(f"📎 `{a.path}` ({a.kind}){mark}\n")
    text = message.text if message.role == "assistant" else html.escape(message.text)
    parts.append(text or "…")
    if message.stats:
        parts.append(f"\n\n<small>{message.stats}</small>")
    return "\n".join(parts)


class ChatView(QTextBrowser):
    """Read-only Markdown; links (timestamps, files) are reported, not followed."""

    linkActivated = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setOpenLinks(False)
        self.anchorClicked.connect(lambda url: self.linkActivated.emit(url.toString()))
        self._conversation = None
        self._error = ""

    def show_conversation(self, conversation: Conversation, streaming: str = None, error: str = "") -> None:
        self._conversation, self._error = conversation, error
        blocks = [render_message(m) for m in conversation.messages]
        if streaming is not None:
            blocks.append(render_message(Message("assistant", streaming)))
        if error:
            blocks.append(f"> ⚠️ {error}")
        self.setMarkdown("\n\n---\n\n".join(blocks))
        self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())

    def plain_text(self) -> str:
        return self.toPlainText()
