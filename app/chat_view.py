"""The conversation, rendered as Markdown, with the answer streaming into its last bubble."""

import html
from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QImage, QTextDocument
from PySide6.QtWidgets import QTextBrowser

THUMB_HEIGHT = 120

from .history import Conversation, Message


def render_message(message: Message) -> str:
    who = "You" if message.role == "user" else "MiniCPM-V"
    parts = [f"**{who}**\n"]
    for a in message.attachments:
        if a.missing:
            parts.append(f"*{a.kind}* `{a.path}` — *missing: the file was moved or deleted*\n")
        elif a.kind == "image":
            parts.append(f"![{Path(a.path).name}]({QUrl.fromLocalFile(a.path).toString().replace('file:', 'thumb:', 1)})\n")
        else:
            parts.append(f"*video* `{Path(a.path).name}`\n")
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
        self._thumbs = {}

    def show_conversation(self, conversation: Conversation, streaming: str = None, error: str = "") -> None:
        self._conversation, self._error = conversation, error
        blocks = [render_message(m) for m in conversation.messages]
        if streaming is not None:
            blocks.append(render_message(Message("assistant", streaming)))
        if error:
            blocks.append(f"> ⚠️ {error}")
        self.setMarkdown("\n\n---\n\n".join(blocks))
        self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())

    def loadResource(self, kind, url):
        """Attached images show as thumbnails (``thumb:`` URLs), scaled once and kept."""
        if kind == QTextDocument.ImageResource and url.scheme() == "thumb":
            path = QUrl(url.toString().replace("thumb:", "file:", 1)).toLocalFile()
            if path not in self._thumbs:
                image = QImage(path)
                self._thumbs[path] = image.scaledToHeight(THUMB_HEIGHT, Qt.SmoothTransformation) if not image.isNull() else image
            return self._thumbs[path]
        return super().loadResource(kind, url)

    def plain_text(self) -> str:
        return self.toPlainText()
