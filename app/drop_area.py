"""The window as a drop target: files dragged over it show an overlay that says where they go,
and dropped files are reported. It decides nothing else."""

from typing import List

from PySide6.QtCore import QMimeData, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import QWidget

from . import theme


def local_files(mime: QMimeData) -> List[str]:
    return [url.toLocalFile() for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []


class DropOverlay(QWidget):
    """A tinted card over the window while files are dragged over it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAttribute(Qt.WA_TransparentForMouseEvents)
        self.setAccessibleName("Drop images or videos to attach them")
        self.count = 0
        self.hide()

    def paintEvent(self, event):
        c = theme.colors()
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        tint = QColor(c.window)
        tint.setAlpha(215)
        p.fillRect(self.rect(), tint)
        card = QRectF(self.rect()).adjusted(28, 28, -28, -28)
        fill = QColor(c.overlay)
        fill.setAlpha(28)
        p.setBrush(fill)
        p.setPen(QPen(QColor(c.accent), 2.5, Qt.DashLine))
        p.drawRoundedRect(card, 22, 22)
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.8)
        font.setWeight(QFont.Bold)
        p.setFont(font)
        p.setPen(QColor(c.text))
        things = f"{self.count} files" if self.count > 1 else "the file"
        p.drawText(card.adjusted(0, -30, 0, -30), Qt.AlignCenter, f"Drop to attach {things}")
        font.setPointSizeF(font.pointSizeF() / 1.8)
        font.setWeight(QFont.Normal)
        p.setFont(font)
        p.setPen(QColor(c.muted))
        p.drawText(card.adjusted(0, 30, 0, 30), Qt.AlignCenter,
                   "Images and videos · a video alone can be summarised chapter by chapter")
        p.end()


class DropArea(QWidget):
    """A widget that takes dropped files for everything inside it, with the overlay on top."""

    filesDropped = Signal(list)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.overlay = DropOverlay(self)

    def resizeEvent(self, event):
        self.overlay.setGeometry(self.rect())
        super().resizeEvent(event)

    def dragEnterEvent(self, event):
        files = local_files(event.mimeData())
        if files:
            event.acceptProposedAction()
            self.overlay.count = len(files)
            self.overlay.setGeometry(self.rect())
            self.overlay.raise_()
            self.overlay.show()

    def dragMoveEvent(self, event):
        if local_files(event.mimeData()):
            event.acceptProposedAction()

    def dragLeaveEvent(self, event):
        self.overlay.hide()

    def dropEvent(self, event):
        self.overlay.hide()
        files = local_files(event.mimeData())
        if files:
            event.acceptProposedAction()
            self.filesDropped.emit(files)
