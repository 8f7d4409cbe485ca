"""The conversation: message cards in a centred column, the answer streaming into the last one,
or, for a new chat, what can be done. It keeps to the bottom while the reader is at the bottom,
and stays put while they read above."""

from typing import Dict, List, Optional

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QFrame, QGridLayout, QHBoxLayout, QLabel, QPushButton, QScrollArea, QStackedWidget,
                               QToolButton, QVBoxLayout, QWidget)

from . import theme
from .history import Conversation, Message
from .icons import icon
from .message_view import MessageCard
from .timeline import Timeline

COLUMN_WIDTH = 780
EXAMPLES = (("Describe this photo in detail.", "image"),
            ("What happens in this video? Give times.", "film"),
            ("Find every person in the image.", "target"),
            ("Read all the text in this screenshot.", "copy"))


class EmptyState(QWidget):
    """A new chat: what the model can do, example prompts, and where to drop files."""

    promptChosen = Signal(str)
    attachRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        heading = QLabel("What's in your pictures and videos?")
        heading.setObjectName("heading")
        heading.setAlignment(Qt.AlignCenter)
        sub = QLabel("MiniCPM-V reads images and video on this Mac — nothing leaves it. It can describe, read "
                     "text, find and box objects, and summarise a video chapter by chapter.")
        sub.setWordWrap(True)
        sub.setAlignment(Qt.AlignCenter)
        sub.setProperty("muted", True)
        sub.setFixedWidth(560)
        grid = QGridLayout()
        grid.setSpacing(10)
        self.examples: List[QToolButton] = []
        for i, (text, name) in enumerate(EXAMPLES):
            button = QToolButton()
            button.setObjectName("prompt")
            button.setText(text)
            button.setProperty("icon_name", name)
            button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
            button.setIconSize(QSize(18, 18))
            button.setFixedWidth(300)
            button.setCursor(Qt.PointingHandCursor)
            button.setAccessibleName(f"Example: {text}")
            button.clicked.connect(lambda _=False, t=text: self.promptChosen.emit(t))
            self.examples.append(button)
            grid.addWidget(button, i // 2, i % 2)
        self.drop = QFrame()
        self.drop.setObjectName("card")
        self.drop.setMinimumWidth(550)
        self.drop_icon = QLabel()
        self.drop_icon.setAlignment(Qt.AlignCenter)
        drop_text = QLabel("Drop images or videos here, or paste them")
        drop_text.setAlignment(Qt.AlignCenter)
        drop_text.setStyleSheet("font-weight: 600;")
        drop_sub = QLabel("PNG, JPEG, HEIC, MP4, MOV, … · a video on its own gets a chaptered summary")
        drop_sub.setAlignment(Qt.AlignCenter)
        drop_sub.setProperty("muted", True)
        self.choose = QPushButton("Choose files…")
        self.choose.setAccessibleName("Choose images or videos")
        self.choose.clicked.connect(self.attachRequested)
        box = QVBoxLayout(self.drop)
        box.setContentsMargins(20, 18, 20, 18)
        box.addWidget(self.drop_icon)
        box.addWidget(drop_text)
        box.addWidget(drop_sub)
        box.addWidget(self.choose, 0, Qt.AlignCenter)
        layout = QVBoxLayout(self)
        layout.addStretch(2)
        layout.addWidget(heading)
        layout.addWidget(sub, 0, Qt.AlignCenter)
        layout.addSpacing(22)
        layout.addLayout(grid)
        layout.setAlignment(grid, Qt.AlignCenter)
        layout.addSpacing(18)
        layout.addWidget(self.drop, 0, Qt.AlignCenter)
        layout.addStretch(3)
        self.restyle()

    def restyle(self) -> None:
        c = theme.colors()
        for button in self.examples:
            button.setIcon(icon(button.property("icon_name"), c.accent, 18))
        self.drop_icon.setPixmap(icon("image", c.accent, 34).pixmap(34, 34))


class ChatView(QStackedWidget):
    """Page 0: the empty state; page 1: the conversation."""

    linkActivated = Signal(str)
    copyRequested = Signal(str)
    regenerateRequested = Signal()
    editRequested = Signal()
    imageClicked = Signal(str, list)
    findRequested = Signal(str)
    framesWanted = Signal(str, list)  # a timeline's video and its chapter starts

    def __init__(self, parent=None):
        super().__init__(parent)
        self.empty = EmptyState()
        self.scroll = QScrollArea()
        self.scroll.setObjectName("conversation")
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        inner = QWidget()
        inner.setObjectName("column")
        outer = QHBoxLayout(inner)
        outer.setContentsMargins(24, 16, 24, 16)
        self.column = QWidget()
        self.column.setObjectName("column")
        self.column.setMaximumWidth(COLUMN_WIDTH)
        self.cards_layout = QVBoxLayout(self.column)
        self.cards_layout.setContentsMargins(0, 0, 0, 0)
        self.cards_layout.setSpacing(14)
        self.cards_layout.addStretch()
        outer.addWidget(self.column)
        self.scroll.setWidget(inner)
        self.addWidget(self.empty)
        self.addWidget(self.scroll)
        self.cards: List[MessageCard] = []
        self.streaming_card: Optional[MessageCard] = None
        self.error_label = QLabel()
        self.error_label.setObjectName("banner")
        self.error_label.setWordWrap(True)
        self.error_label.setContentsMargins(12, 8, 12, 8)
        self.error_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.error_label.hide()
        self.cards_layout.addWidget(self.error_label)
        self.timelines: Dict[str, List[Timeline]] = {}
        self._conversation = None
        self._streaming: Optional[Message] = None
        self._last_flags = None
        self._shown: List[int] = []
        self.stick = True  # keep to the bottom as the answer grows: the reader is there
        bar = self.scroll.verticalScrollBar()
        bar.valueChanged.connect(self.on_scrolled)
        bar.rangeChanged.connect(self.on_range)

    # -- scrolling ------------------------------------------------------------------------------
    def at_bottom(self) -> bool:
        bar = self.scroll.verticalScrollBar()
        return bar.value() >= bar.maximum() - 8

    def on_scrolled(self, _value) -> None:
        self.stick = self.at_bottom()

    def on_range(self, _low, high) -> None:
        if self.stick:
            self.scroll.verticalScrollBar().setValue(high)

    def scroll_to_bottom(self) -> None:
        self.stick = True
        self.scroll.verticalScrollBar().setValue(self.scroll.verticalScrollBar().maximum())

    # -- content --------------------------------------------------------------------------------
    def _card(self, message: Message, last: bool, image: Optional[str]) -> MessageCard:
        card = MessageCard(message, last=last, image=image)
        card.copyRequested.connect(self.copyRequested)
        card.regenerateRequested.connect(self.regenerateRequested)
        card.editRequested.connect(self.editRequested)
        card.imageClicked.connect(self.imageClicked)
        card.findRequested.connect(self.findRequested)
        card.linkActivated.connect(self.linkActivated)
        if message.summary and message.summary.get("chapters"):
            timeline = Timeline(message.summary)
            timeline.seek.connect(lambda t, v=timeline.video: self.linkActivated.emit(f"seek:{t:.2f}@{v}"))
            card.bubble.layout().insertWidget(0, timeline)
            card.timeline = timeline
            self.timelines.setdefault(timeline.video, []).append(timeline)
            self.framesWanted.emit(timeline.video, timeline.chapter_starts())
        return card

    def show_conversation(self, conversation: Conversation, streaming: Optional[Message] = None,
                          error: str = "") -> None:
        """Show ``conversation`` (and the answer being written, if any). Cards of messages already
        shown are kept, so an answer streaming in touches only its own card."""
        messages = list(conversation.messages) + ([streaming] if streaming is not None else [])
        ids = [id(m) for m in messages]
        if conversation is not self._conversation or ids[:len(self._shown)] != self._shown \
                or self._last_flags != self._flags(conversation, streaming):
            self._rebuild(conversation, messages, streaming)
        else:
            for message in messages[len(self._shown):]:
                self._append(conversation, message, streaming)
        self._shown, self._streaming = ids, streaming
        if streaming is not None and self.streaming_card is not None:
            self.streaming_card.set_text(streaming.text, thinking=streaming.thinking)
        self.error_label.setText(f"⚠️  {error}")
        self.error_label.setVisible(bool(error))
        self.setCurrentIndex(0 if not messages and not error else 1)

    @staticmethod
    def _flags(conversation, streaming) -> tuple:
        # Which cards carry "regenerate" and "edit" depends on which message is last.
        return (len(conversation.messages), streaming is None)

    def _image_before(self, messages, index) -> Optional[str]:
        for m in reversed(messages[:index + 1]):
            for a in reversed(m.attachments):
                if a.kind == "image" and not a.missing:
                    return a.path
        return None

    def _rebuild(self, conversation, messages, streaming) -> None:
        for card in self.cards:
            card.deleteLater()
        self.cards, self.timelines, self.streaming_card = [], {}, None
        self._conversation = conversation
        self._last_flags = self._flags(conversation, streaming)
        self.stick = True
        for message in messages:
            self._append(conversation, message, streaming)

    def _append(self, conversation, message, streaming) -> None:
        messages = list(conversation.messages) + ([streaming] if streaming is not None else [])
        index = messages.index(message)
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        last = (index == len(messages) - 1 and streaming is None) or (index == last_user and streaming is None)
        card = self._card(message, last, self._image_before(messages, index))
        self.cards_layout.insertWidget(self.cards_layout.count() - 2, card)
        self.cards.append(card)
        if message is streaming:
            self.streaming_card = card

    def set_thumbnails(self, path: str, frames: list) -> None:
        for timeline in self.timelines.get(path, []):
            timeline.set_frames(frames)
        if frames:  # the video's own tile shows its first chapter's frame
            seconds, w, h, rgb = frames[0]
            self.set_video_thumbnail(path, QImage(rgb, w, h, 3 * w, QImage.Format_RGB888).copy())

    def set_video_thumbnail(self, path: str, image: QImage) -> None:
        for card in self.cards:
            for tile in card.videos:
                if tile.path == path:
                    tile.set_thumbnail(QPixmap.fromImage(image))

    def restyle(self) -> None:
        self.empty.restyle()
        if self._conversation is not None:
            streaming = self._streaming
            self._rebuild(self._conversation, list(self._conversation.messages) + ([streaming] if streaming else []),
                          streaming)

    def plain_text(self) -> str:
        """Everything a reader sees, as text: messages, thinking lines, errors."""
        parts = []
        for card in self.cards:
            if not card.thinking.isHidden():
                parts.append(card.thinking.toggle.text())
            parts.append(card.body.plain_text())
            if card.stats.text():
                parts.append(card.stats.text())
        if self.error_label.isVisibleTo(self):
            parts.append(self.error_label.text())
        return "\n".join(parts)
