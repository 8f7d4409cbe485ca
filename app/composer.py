"""The message being written: text, attachments (drop, paste, picker), Send and Stop."""

from pathlib import Path
from typing import List

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPlainTextEdit,
                               QPushButton, QVBoxLayout)

from .drop_area import DropArea, local_files
from .history import Attachment, kind_of


class MessageEdit(QPlainTextEdit):
    """Enter sends, Shift+Enter breaks the line; pasted files become attachments."""

    submit = Signal()
    filesPasted = Signal(list)

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


class Composer(DropArea):
    sendRequested = Signal(str, list)  # text, [Attachment]
    summariseRequested = Signal(str)  # a video dropped with no question
    stopRequested = Signal()
    videoAttached = Signal(str)
    rejected = Signal(str)  # a file that is neither an image nor a video

    def __init__(self, parent=None):
        super().__init__(parent)
        self.attachments: List[Attachment] = []
        self.edit = MessageEdit()
        self.edit.setPlaceholderText("Ask about an image or a video — drop files here")
        self.edit.setFixedHeight(80)
        self.strip = QListWidget()
        self.strip.setFlow(QListWidget.LeftToRight)
        self.strip.setViewMode(QListWidget.IconMode)
        self.strip.setFixedHeight(96)
        self.strip.setIconSize(QPixmap(64, 64).size())
        self.strip.hide()
        self.frames = QListWidget()  # what the model will see of a video, with times
        self.frames.setFlow(QListWidget.LeftToRight)
        self.frames.setViewMode(QListWidget.IconMode)
        self.frames.setIconSize(QPixmap(96, 64).size())
        self.frames.setFixedHeight(110)
        self.frames.hide()
        self.attach_button = QPushButton("Attach…")
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        self.stop_button.hide()
        buttons = QHBoxLayout()
        buttons.addWidget(self.attach_button)
        buttons.addStretch()
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.send_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.strip)
        layout.addWidget(self.frames)
        layout.addWidget(self.edit)
        layout.addLayout(buttons)

        self.filesDropped.connect(self.attach)
        self.edit.filesPasted.connect(self.attach)
        self.edit.submit.connect(self.send)
        self.edit.textChanged.connect(self.update_send_label)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stopRequested)
        self.attach_button.clicked.connect(self.pick_files)

    def pick_files(self):
        files, _ = QFileDialog.getOpenFileNames(self, "Attach images or videos", "",
                                                "Images and videos (*.png *.jpg *.jpeg *.gif *.webp *.bmp *.tif *.tiff "
                                                "*.mp4 *.mov *.m4v *.mkv *.avi *.webm);;All files (*)")
        self.attach(files)

    def attach(self, paths) -> None:
        for path in paths:
            kind = kind_of(path)
            if kind is None:
                self.rejected.emit(f"{Path(path).name} is not an image or a video this app can read.")
                continue
            self.attachments.append(Attachment(str(path), kind))
            item = QListWidgetItem(Path(path).name)
            if kind == "image":
                pixmap = QPixmap(str(path))
                if not pixmap.isNull():
                    item.setIcon(pixmap.scaled(64, 64, Qt.KeepAspectRatio, Qt.SmoothTransformation))
            else:
                self.videoAttached.emit(str(path))
            self.strip.addItem(item)
        self.strip.setVisible(bool(self.attachments))
        self.update_send_label()

    def show_frames(self, path: str, thumbs: list) -> None:
        if not any(a.path == path for a in self.attachments):
            return
        self.frames.clear()
        for row, a in enumerate(self.attachments):  # the video's own thumbnail: its first frame
            if a.path == path and thumbs:
                _, w, h, rgb = thumbs[0]
                self.strip.item(row).setIcon(QPixmap.fromImage(QImage(rgb, w, h, 3 * w, QImage.Format_RGB888).copy()))
        for seconds, width, height, rgb in thumbs:
            image = QImage(rgb, width, height, 3 * width, QImage.Format_RGB888).copy()
            item = QListWidgetItem(f"{int(seconds) // 60}:{int(seconds) % 60:02d}")
            item.setIcon(QPixmap.fromImage(image))
            self.frames.addItem(item)
        self.frames.show()

    def only_a_video(self) -> bool:
        return not self.edit.toPlainText().strip() and [a.kind for a in self.attachments] == ["video"]

    def update_send_label(self) -> None:
        """A video with no question: the button offers to summarise it."""
        self.send_button.setText("Summarise" if self.only_a_video() else "Send")

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
        self.attachments = []
        self.strip.clear()
        self.strip.hide()
        self.frames.clear()
        self.frames.hide()
        self.update_send_label()

    def set_busy(self, busy: bool) -> None:
        self.send_button.setVisible(not busy)
        self.stop_button.setVisible(busy)
