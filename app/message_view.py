"""One message of the conversation as a card: your messages as bubbles on the right, the model's
answers on the left with Markdown, highlighted code (each block with a Copy button), the thinking
folded under "Thought for N s", images with the answer's boxes, a summary's timeline, and the
actions (copy, regenerate, edit) that show on hover."""

from pathlib import Path
from typing import List, Optional

import shiboken6
from PySide6.QtCore import QEvent, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QTextDocument
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout,
                               QWidget)

from . import theme
from .history import Attachment, Message
from .icons import icon
from .image_view import AnnotatedImage
from .markdown import Segment, escape_markdown_html, highlight, readable, segments, split_thinking

BUBBLE_MAX = 560


def tool_button(name: str, tip: str, parent=None) -> QToolButton:
    button = QToolButton(parent)
    button.setIcon(icon(name, theme.colors().muted, 16))
    button.setIconSize(QSize(16, 16))
    button.setToolTip(tip)
    button.setAccessibleName(tip)
    button.setCursor(Qt.PointingHandCursor)
    button.setProperty("icon_name", name)
    return button


class Prose(QLabel):
    """Markdown text: selectable, wrapped, links reported (summary times are ``seek:`` links)."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self.setTextFormat(Qt.MarkdownText)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextBrowserInteraction)
        self.setOpenExternalLinks(False)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Minimum)
        self.set_markdown(text)

    def set_markdown(self, text: str) -> None:
        self.source = text
        self.setText(escape_markdown_html(text))

    def shown(self) -> str:
        document = QTextDocument()
        document.setMarkdown(self.text())
        return document.toPlainText()


class CodeBlock(QFrame):
    """A fenced code block, highlighted, scrolling sideways, with its language and a Copy button."""

    def __init__(self, segment: Segment, parent=None):
        super().__init__(parent)
        self.setObjectName("code")
        self.code = ""
        self.language = QLabel(segment.language or "code")
        self.language.setObjectName("language")
        self.copy_button = tool_button("copy", "Copy code")
        self.copy_button.setText("Copy")
        self.copy_button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.copy_button.clicked.connect(self.copy)
        self.body = QLabel()
        self.body.setTextFormat(Qt.RichText)
        self.body.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.body.setStyleSheet("background: transparent;")
        self.scroll = QScrollArea()
        self.scroll.setWidget(self.body)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.scroll.setStyleSheet("background: transparent;")
        top = QHBoxLayout()
        top.setContentsMargins(12, 6, 6, 0)
        top.addWidget(self.language)
        top.addStretch()
        top.addWidget(self.copy_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 8)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.scroll)
        self.set_segment(segment)

    def set_segment(self, segment: Segment) -> None:
        if segment.text == self.code and self.language.text() == (segment.language or "code"):
            return
        c = theme.colors()
        self.code = segment.text
        self.language.setText(segment.language or "code")
        self.body.setText(highlight(segment.text, segment.language, c.pygments, "transparent"))
        self.body.setContentsMargins(12, 0, 12, 0)
        lines = segment.text.count("\n") + 1
        self.scroll.setFixedHeight(self.body.fontMetrics().lineSpacing() * lines + 18)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.code)
        self.copy_button.setText("Copied")
        QTimer.singleShot(1500, self.copy_button, lambda: self.copy_button.setText("Copy"))  # not after it is gone


class Thinking(QWidget):
    """The model's thinking, folded under one line that says for how long it thought."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setCheckable(True)
        self.toggle.setAccessibleName("Show the thinking")
        self.body = Prose()
        self.body.setProperty("muted", True)
        self.body.setContentsMargins(14, 0, 0, 0)
        self.body.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toggle, 0, Qt.AlignLeft)
        layout.addWidget(self.body)
        self.toggle.toggled.connect(self.unfold)
        self.unfold(False)

    def unfold(self, on: bool) -> None:
        self.body.setVisible(on)
        self.toggle.setIcon(icon("chevron-down" if on else "chevron", theme.colors().muted, 14))

    def set_thought(self, text: str, finished: bool, seconds: float) -> None:
        if finished:
            self.toggle.setText(f"Thought for {max(1, round(seconds))} s" if seconds else "Thought")
        else:
            self.toggle.setText("Thinking…")
        if self.body.source != text:
            self.body.set_markdown(text or "…")


class Body(QWidget):
    """An answer's text as prose and code blocks, updated in place as it streams (no flicker:
    only the widgets whose text changed are touched)."""

    linkActivated = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.layout_.setSpacing(8)
        self.blocks: List[QWidget] = []

    def set_text(self, text: str) -> None:
        parts = segments(readable(text))
        for i, part in enumerate(parts):
            block = self.blocks[i] if i < len(self.blocks) else None
            if part.kind == "prose" and isinstance(block, Prose):
                if block.source != part.text:
                    block.set_markdown(part.text)
                continue
            if part.kind == "code" and isinstance(block, CodeBlock):
                block.set_segment(part)
                continue
            for stale in self.blocks[i:]:
                stale.deleteLater()
            self.blocks = self.blocks[:i]
            block = Prose(part.text) if part.kind == "prose" else CodeBlock(part)
            if isinstance(block, Prose):
                block.linkActivated.connect(self.linkActivated)
            self.layout_.addWidget(block)
            self.blocks.append(block)
        for stale in self.blocks[len(parts):]:
            stale.deleteLater()
        self.blocks = self.blocks[:len(parts)]

    def plain_text(self) -> str:
        """The text as the reader sees it (Markdown rendered, links as their words)."""
        return "\n".join(b.shown() if isinstance(b, Prose) else b.code for b in self.blocks)


class VideoTile(QFrame):
    """A video attachment: its first frame (once known), name and length."""

    def __init__(self, attachment: Attachment, parent=None):
        super().__init__(parent)
        self.setObjectName("chip")
        self.path = attachment.path
        self.picture = QLabel()
        self.picture.setFixedSize(96, 54)
        self.picture.setAlignment(Qt.AlignCenter)
        self.picture.setPixmap(icon("film", theme.colors().muted, 28).pixmap(28, 28))
        name = QLabel(Path(attachment.path).name + (" — missing" if attachment.missing else ""))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 6, 10, 6)
        layout.addWidget(self.picture)
        layout.addWidget(name)
        self.setAccessibleName(f"Video {Path(attachment.path).name}")

    def set_thumbnail(self, pixmap) -> None:
        self.picture.setPixmap(pixmap.scaled(self.picture.size(), Qt.KeepAspectRatio, Qt.SmoothTransformation))


class MessageCard(QFrame):
    """A message. ``image`` is the picture an answer's boxes refer to (the last one asked about)."""

    copyRequested = Signal(str)
    regenerateRequested = Signal()
    editRequested = Signal()
    imageClicked = Signal(str, list)
    findRequested = Signal(str)
    linkActivated = Signal(str)

    def __init__(self, message: Message, last: bool = False, image: Optional[str] = None, parent=None):
        super().__init__(parent)
        self.message = message
        self.user = message.role == "user"
        self.setObjectName("message")
        self.bubble = QFrame()
        self.bubble.setObjectName("user" if self.user else "assistant")
        inner = QVBoxLayout(self.bubble)
        inner.setContentsMargins(14, 9, 14, 9) if self.user else inner.setContentsMargins(0, 0, 0, 0)
        inner.setSpacing(8)
        self.images: List[AnnotatedImage] = []
        self.videos: List[VideoTile] = []
        self.timeline = None
        self.thinking = Thinking()
        self.thinking.hide()
        self.body = Body()
        self.body.linkActivated.connect(self.linkActivated)
        media = QVBoxLayout()
        media.setSpacing(6)
        for a in message.attachments:
            if a.kind == "image" and not a.missing:
                self.add_image(media, a.path, [])
            else:
                tile = VideoTile(a)
                self.videos.append(tile)
                media.addWidget(tile, 0, Qt.AlignRight if self.user else Qt.AlignLeft)
        if not self.user:
            inner.addWidget(self.thinking)
        if image and message.regions and not self.user:  # the picture with what the answer found on it
            self.add_image(inner, image, message.regions)
        inner.addWidget(self.body)
        self.stats = QLabel(message.stats)
        self.stats.setProperty("muted", True)
        self.actions = QWidget()
        self.actions.setFixedHeight(28)
        row = QHBoxLayout(self.actions)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        self.copy_button = tool_button("copy", "Copy message")
        self.copy_button.clicked.connect(lambda: self.copyRequested.emit(self.message.text))
        self.regenerate_button = tool_button("regenerate", "Regenerate answer")
        self.regenerate_button.clicked.connect(self.regenerateRequested)
        self.edit_button = tool_button("edit", "Edit and resend")
        self.edit_button.clicked.connect(self.editRequested)
        if self.user:
            row.addStretch()
        else:
            row.addWidget(self.stats)
        for b in (self.copy_button, self.regenerate_button, self.edit_button):
            row.addWidget(b)
        if self.user:
            row.addWidget(self.stats)
        self.stats.setVisible(bool(message.stats))  # only once it has a parent: else it is a window
        if not self.user:
            row.addStretch()
        self.regenerate_button.setVisible(last and not self.user)
        self.edit_button.setVisible(last and self.user)
        for b in self.action_buttons:
            b.installEventFilter(self)
        self.set_actions_shown(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 4)
        layout.setSpacing(4)
        if self.user:
            self.bubble.setMaximumWidth(BUBBLE_MAX)
            layout.addLayout(media)
            if message.text:
                layout.addWidget(self.bubble, 0, Qt.AlignRight)
        else:
            layout.addLayout(media)
            layout.addWidget(self.bubble)
        layout.addWidget(self.actions)
        self.set_text(message.text, thinking=message.thinking, seconds=message.thought_seconds, finished=True)

    def add_image(self, layout, path: str, regions) -> None:
        view = AnnotatedImage(path, regions)
        view.clicked.connect(lambda p, v=view: self.imageClicked.emit(p, v.regions))
        view.findRequested.connect(self.findRequested)
        self.images.append(view)
        layout.addWidget(view, 0, Qt.AlignRight if self.user else Qt.AlignLeft)

    def set_text(self, text: str, thinking: bool = False, seconds: float = 0.0, finished: bool = False) -> None:
        self.message.text = text
        if self.user:
            self.body.set_text(text)
            for block in self.body.blocks:  # a bubble as wide as its text, up to its maximum
                if isinstance(block, Prose):
                    widest = max((block.fontMetrics().horizontalAdvance(line) for line in text.splitlines()), default=0)
                    block.setMinimumWidth(min(widest + 8, BUBBLE_MAX - 28))
            return
        thought, answer, thought_done = split_thinking(text, thinking)
        self.thinking.setVisible(thought is not None)
        if thought is not None:
            self.thinking.set_thought(thought, thought_done or finished, seconds)
        self.body.set_text(answer if (answer or thought is not None) else (text or "…"))

    def set_stats(self, stats: str) -> None:
        self.stats.setText(stats)
        self.stats.setVisible(bool(stats))

    @property
    def action_buttons(self):
        return (self.copy_button, self.regenerate_button, self.edit_button)

    def set_actions_shown(self, shown: bool) -> None:
        """The row keeps its height, so nothing below moves as the pointer passes; hidden actions
        are only transparent, so Tab still reaches them (and shows them)."""
        self._hovered = shown
        for b in self.action_buttons:
            visible = shown or b.hasFocus()
            b.setIcon(icon(b.property("icon_name"), theme.colors().muted if visible else "#00000000", 16))

    def actions_shown(self) -> bool:
        return self._hovered

    def eventFilter(self, watched, event):
        # (Focus leaves as a card is deleted too, when its buttons may already be gone.)
        if event.type() in (QEvent.FocusIn, QEvent.FocusOut) and all(map(shiboken6.isValid, self.action_buttons)):
            self.set_actions_shown(self._hovered)
        return False

    def enterEvent(self, event):
        self.set_actions_shown(True)
        super().enterEvent(event)

    def leaveEvent(self, event):
        self.set_actions_shown(False)
        super().leaveEvent(event)
