"""The message being written: text, attachments as chips (drop, paste, Attach…), Send and Stop."""

from pathlib import Path
from typing import Dict, List

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QFileDialog, QFrame, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPlainTextEdit,
                               QPushButton, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout, QWidget)

from . import theme
from .drop_area import local_files
from .history import Attachment, kind_of
from .icons import icon
from .summary_view import clock

FILE_FILTER = ("Images and videos (*.png *.jpg *.jpeg *.gif *.webp *.bmp *.tif *.tiff *.heic "
               "*.mp4 *.mov *.m4v *.mkv *.avi *.webm);;All files (*)")


def file_size(path: str) -> str:
    try:
        size = Path(path).stat().st_size
    except OSError:
        return "missing"
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


class MessageEdit(QPlainTextEdit):
    """Enter sends, Shift+Enter breaks the line; pasted files become attachments; it grows with
    its text up to a few lines."""

    submit = Signal()
    filesPasted = Signal(list)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("message")
        self.setAcceptDrops(False)  # files dropped anywhere on the window go to the window's overlay
        self.setAccessibleName("Message")
        self.setTabChangesFocus(True)
        self.document().documentLayout().documentSizeChanged.connect(self.fit)
        self.fit()

    def fit(self, *_):
        lines = min(max(self.document().size().height(), 1), 8)
        self.setFixedHeight(int(lines * self.fontMetrics().lineSpacing() + 16))

    def keyPressEvent(self, event):
        if event.key() in (Qt.Key_Return, Qt.Key_Enter) and not event.modifiers() & Qt.ShiftModifier:
            self.submit.emit()
            return
        super().keyPressEvent(event)

    def canInsertFromMimeData(self, source):
        return bool(local_files(source)) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source):
        files = local_files(source)
        if files:
            self.filesPasted.emit(files)
        else:
            super().insertFromMimeData(source)


class Chip(QFrame):
    """An attachment: thumbnail, name, size or length, and a remove button."""

    removed = Signal(object)

    def __init__(self, attachment: Attachment, parent=None):
        super().__init__(parent)
        self.setObjectName("chip")
        self.attachment = attachment
        self.picture = QLabel()
        self.picture.setFixedSize(40, 40)
        self.picture.setAlignment(Qt.AlignCenter)
        if attachment.kind == "image":
            pixmap = QPixmap(attachment.path)
            if not pixmap.isNull():
                self.set_picture(pixmap)
        if self.picture.pixmap().isNull():
            self.picture.setPixmap(icon("film" if attachment.kind == "video" else "image", theme.colors().muted, 24)
                                   .pixmap(24, 24))
        name = Path(attachment.path).name
        self.name = QLabel(self.fontMetrics().elidedText(name, Qt.ElideMiddle, 150))
        self.name.setStyleSheet("font-weight: 600;")
        self.detail = QLabel(("Video · " if attachment.kind == "video" else "") + file_size(attachment.path))
        self.detail.setProperty("muted", True)
        self.remove_button = QToolButton()
        self.remove_button.setIcon(icon("close", theme.colors().muted, 14))
        self.remove_button.setAccessibleName(f"Remove {name}")
        self.remove_button.setToolTip(f"Remove {name}")
        self.remove_button.clicked.connect(lambda: self.removed.emit(self))
        text = QVBoxLayout()
        text.setSpacing(0)
        text.addWidget(self.name)
        text.addWidget(self.detail)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(5, 5, 4, 5)
        layout.setSpacing(8)
        layout.addWidget(self.picture)
        layout.addLayout(text)
        layout.addWidget(self.remove_button, 0, Qt.AlignTop)
        self.setAccessibleName(f"Attachment {name}")

    def set_picture(self, pixmap: QPixmap) -> None:
        scaled = pixmap.scaled(40, 40, Qt.KeepAspectRatioByExpanding, Qt.SmoothTransformation)
        self.picture.setPixmap(scaled.copy((scaled.width() - 40) // 2, (scaled.height() - 40) // 2, 40, 40))

    def set_duration(self, seconds: float) -> None:
        self.detail.setText(f"Video · {clock(seconds)} · {file_size(self.attachment.path)}")


class Composer(QFrame):
    sendRequested = Signal(str, list)  # text, [Attachment]
    summariseRequested = Signal(str)  # a video dropped with no question
    stopRequested = Signal()
    videoAttached = Signal(str)
    rejected = Signal(str)  # a file that is neither an image nor a video

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("composer")
        self.attachments: List[Attachment] = []
        self.chips: List[Chip] = []
        self.durations: Dict[str, float] = {}
        self.edit = MessageEdit()
        self.edit.setPlaceholderText("Ask about an image or a video…")
        self.chip_row = QWidget()
        self.chip_layout = QHBoxLayout(self.chip_row)
        self.chip_layout.setContentsMargins(0, 0, 0, 0)
        self.chip_layout.setSpacing(8)
        self.chip_layout.addStretch()
        self.strip = QScrollArea()
        self.strip.setWidget(self.chip_row)
        self.strip.setWidgetResizable(True)
        self.strip.setFrameShape(QFrame.NoFrame)
        self.strip.setFixedHeight(58)
        self.strip.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.strip.setStyleSheet("background: transparent;")
        self.strip.hide()
        self.frames = QListWidget()  # what the model will see of a video, with times
        self.frames.setAccessibleName("Frames the model will see")
        self.frames.setFlow(QListWidget.LeftToRight)
        self.frames.setViewMode(QListWidget.IconMode)
        self.frames.setWrapping(False)
        self.frames.setMovement(QListWidget.Static)
        self.frames.setIconSize(QSize(80, 45))
        self.frames.setFixedHeight(84)
        self.frames.setFrameShape(QFrame.NoFrame)
        self.frames.setStyleSheet("background: transparent;")
        self.frames.hide()
        self.attach_button = QToolButton()
        self.attach_button.setAccessibleName("Attach images or videos")
        self.attach_button.setToolTip("Attach images or videos (⌘O)")
        self.send_button = QPushButton()
        self.send_button.setObjectName("send")
        self.send_button.setCursor(Qt.PointingHandCursor)
        self.stop_button = QPushButton()
        self.stop_button.setObjectName("stop")
        self.stop_button.setAccessibleName("Stop")
        self.stop_button.setToolTip("Stop (Esc)")
        self.stop_button.setFixedSize(32, 32)
        self.stop_button.hide()
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.attach_button)
        self.hint = QLabel("Enter to send · Shift+Enter for a new line")
        self.hint.setProperty("muted", True)
        self.hint.setStyleSheet("font-size: 11px;")
        buttons.addWidget(self.hint)
        buttons.addStretch()
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.send_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 10, 8)
        layout.setSpacing(6)
        layout.addWidget(self.strip)
        layout.addWidget(self.frames)
        layout.addWidget(self.edit)
        layout.addLayout(buttons)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)

        self.edit.filesPasted.connect(self.attach)
        self.edit.submit.connect(self.send)
        self.edit.textChanged.connect(self.update_send_label)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stopRequested)
        self.attach_button.clicked.connect(self.pick_files)
        self.restyle()

    def restyle(self) -> None:
        c = theme.colors()
        self.attach_button.setIcon(icon("attach", c.muted, 20))
        self.attach_button.setIconSize(QSize(20, 20))
        self.stop_button.setIcon(icon("stop", c.window, 16))
        for chip in self.chips:
            chip.remove_button.setIcon(icon("close", c.muted, 14))
        self.update_send_label()

    def pick_files(self):
        files, _ = QFileDialog.getOpenFileNames(self, "Attach images or videos", "", FILE_FILTER)
        self.attach(files)

    def attach(self, paths) -> None:
        for path in paths:
            kind = kind_of(path)
            if kind is None:
                self.rejected.emit(f"{Path(path).name} is not an image or a video this app can read.")
                continue
            attachment = Attachment(str(path), kind)
            self.attachments.append(attachment)
            chip = Chip(attachment)
            chip.removed.connect(self.remove)
            self.chips.append(chip)
            self.chip_layout.insertWidget(self.chip_layout.count() - 1, chip)
            if kind == "video":
                self.videoAttached.emit(str(path))
        self.strip.setVisible(bool(self.attachments))
        self.update_send_label()

    def remove(self, chip: Chip) -> None:
        self.chips.remove(chip)
        self.attachments.remove(chip.attachment)
        chip.deleteLater()
        if not any(a.kind == "video" for a in self.attachments):
            self.frames.clear()
            self.frames.hide()
        self.strip.setVisible(bool(self.attachments))
        self.update_send_label()

    def show_frames(self, path: str, thumbs: list, duration: float) -> None:
        chips = [c for c in self.chips if c.attachment.path == path]
        if not chips:
            return
        self.frames.clear()
        for seconds, width, height, rgb in thumbs:
            image = QImage(rgb, width, height, 3 * width, QImage.Format_RGB888).copy()
            item = QListWidgetItem(clock(seconds))
            item.setIcon(QPixmap.fromImage(image))
            self.frames.addItem(item)
        for chip in chips:
            if thumbs:
                _, w, h, rgb = thumbs[0]
                chip.set_picture(QPixmap.fromImage(QImage(rgb, w, h, 3 * w, QImage.Format_RGB888).copy()))
            chip.set_duration(duration)
        self.frames.setVisible(bool(thumbs))

    def only_a_video(self) -> bool:
        return not self.edit.toPlainText().strip() and [a.kind for a in self.attachments] == ["video"]

    def update_send_label(self) -> None:
        """A video with no question: the button offers to summarise it."""
        c = theme.colors()
        if self.only_a_video():
            self.send_button.setText("Summarise")
            self.send_button.setIcon(icon("film", c.accent_text, 16))
            self.send_button.setMinimumWidth(0)
            self.send_button.setFixedHeight(32)
            self.send_button.setMaximumWidth(16777215)
            self.send_button.setStyleSheet("padding: 0 14px;")
            self.send_button.setAccessibleName("Summarise the video")
        else:
            self.send_button.setText("")
            self.send_button.setIcon(icon("send", c.accent_text, 18))
            self.send_button.setStyleSheet("")
            self.send_button.setFixedSize(32, 32)
            self.send_button.setAccessibleName("Send")
        self.send_button.setToolTip(self.send_button.accessibleName() + " (Enter)")
        self.send_button.setEnabled(bool(self.edit.toPlainText().strip() or self.attachments))

    def send(self) -> None:
        text = self.edit.toPlainText().strip()
        if not text and not self.attachments:
            return
        if self.only_a_video():
            self.summariseRequested.emit(self.attachments[0].path)
            return
        self.sendRequested.emit(text, list(self.attachments))

    def clear(self) -> None:
        self.edit.clear()
        for chip in self.chips:
            chip.deleteLater()
        self.chips, self.attachments = [], []
        self.strip.hide()
        self.frames.clear()
        self.frames.hide()
        self.update_send_label()

    def set_busy(self, busy: bool) -> None:
        self.send_button.setVisible(not busy)
        self.stop_button.setVisible(busy)
