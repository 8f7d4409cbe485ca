"""A video summary as a timeline: the chapters along a bar in proportion to their length, and a
strip of cards with a frame, the times and the title of each; a click shows that moment."""

from typing import List

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from . import theme
from .summary_view import clock


class TimeBar(QWidget):
    """The chapters as spans of one bar; a click seeks to the time under the pointer."""

    seek = Signal(float)

    def __init__(self, chapters: List[dict], duration: float, parent=None):
        super().__init__(parent)
        self.chapters, self.duration = chapters, max(duration, max((c["end"] for c in chapters), default=0), 1e-6)
        self.setFixedHeight(10)
        self.setCursor(Qt.PointingHandCursor)
        self.setAccessibleName("Video timeline")

    def paintEvent(self, event):
        c = theme.colors()
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor(c.border))
        p.drawRoundedRect(QRectF(self.rect()), 4, 4)
        for i, ch in enumerate(self.chapters):
            x0 = self.width() * ch["start"] / self.duration
            x1 = self.width() * ch["end"] / self.duration
            color = QColor(c.region_colors[i % len(c.region_colors)])
            p.setBrush(color)
            p.drawRoundedRect(QRectF(x0 + 1, 1, max(x1 - x0 - 2, 2), self.height() - 2), 3, 3)
        p.end()

    def mouseReleaseEvent(self, event):
        self.seek.emit(self.duration * min(max(event.position().x() / max(self.width(), 1), 0.0), 1.0))


class ChapterCard(QFrame):
    clicked = Signal(float)

    def __init__(self, index: int, chapter: dict, parent=None):
        super().__init__(parent)
        self.setObjectName("card")
        self.start = float(chapter["start"])
        self.setCursor(Qt.PointingHandCursor)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setFixedWidth(184)
        self.picture = QLabel()
        self.picture.setFixedSize(164, 92)
        self.picture.setAlignment(Qt.AlignCenter)
        self.picture.setStyleSheet(f"background: {theme.colors().border}; border-radius: 8px;")
        when = QLabel(f"{index + 1} · {clock(chapter['start'])}–{clock(chapter['end'])}")
        when.setProperty("muted", True)
        title = QLabel(chapter.get("title") or f"Part {index + 1}")
        title.setWordWrap(True)
        title.setStyleSheet("font-weight: 600;")
        title.setMaximumHeight(title.fontMetrics().lineSpacing() * 2 + 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.setSpacing(4)
        layout.addWidget(self.picture)
        layout.addWidget(when)
        layout.addWidget(title)
        layout.addStretch()
        self.setAccessibleName(f"Chapter {index + 1}, {clock(chapter['start'])}: {title.text()}")

    def set_frame(self, image: QImage) -> None:
        pixmap = QPixmap.fromImage(image).scaled(self.picture.size(), Qt.KeepAspectRatioByExpanding,
                                                 Qt.SmoothTransformation)
        self.picture.setPixmap(pixmap.copy((pixmap.width() - 164) // 2, (pixmap.height() - 92) // 2, 164, 92))

    def mouseReleaseEvent(self, event):
        if event.button() == Qt.LeftButton:
            self.clicked.emit(self.start)

    def keyPressEvent(self, event):
        if event.key() in (Qt.Key_Return, Qt.Key_Enter, Qt.Key_Space):
            self.clicked.emit(self.start)
        else:
            super().keyPressEvent(event)


class Timeline(QWidget):
    seek = Signal(float)

    def __init__(self, summary: dict, parent=None):
        super().__init__(parent)
        self.video = summary.get("video", "")
        chapters = summary.get("chapters") or []
        self.bar = TimeBar(chapters, float(summary.get("duration") or 0))
        self.bar.seek.connect(self.seek)
        self.cards = [ChapterCard(i, ch) for i, ch in enumerate(chapters)]
        strip = QWidget()
        row = QHBoxLayout(strip)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(10)
        for card in self.cards:
            card.clicked.connect(self.seek)
            row.addWidget(card)
        row.addStretch()
        scroll = QScrollArea()
        scroll.setWidget(strip)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setFixedHeight(strip.sizeHint().height() + 14)
        scroll.setStyleSheet("background: transparent;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(8)
        layout.addWidget(self.bar)
        layout.addWidget(scroll)

    def chapter_starts(self) -> List[float]:
        return [card.start for card in self.cards]

    def set_frames(self, frames: list) -> None:
        """(seconds, width, height, rgb) frames: each card takes the one nearest its start."""
        if not frames:
            return
        for card in self.cards:
            seconds, w, h, rgb = min(frames, key=lambda f: abs(f[0] - card.start))
            card.set_frame(QImage(rgb, w, h, 3 * w, QImage.Format_RGB888).copy())

    def sizeHint(self):
        return QSize(600, super().sizeHint().height())
