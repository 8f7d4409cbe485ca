"""An image in the conversation, with the boxes and points of an answer drawn on it.

Regions arrive as plain ``(label, "box", (x1, y1, x2, y2))`` or ``(label, "point", (x, y))``
tuples on the model's 0–1000 scale (the worker parses them with ``mlx_minicpmv.grounding``).
"""

from pathlib import Path
from typing import Dict, Sequence, Tuple

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QDialog, QMenu, QVBoxLayout, QWidget

from . import theme

SCALE = 1000.0
_images: Dict[str, QImage] = {}  # decoded once per path, for every bubble and dialog showing it


def load_image(path: str) -> QImage:
    if path not in _images:
        image = QImage(path)
        if not image.isNull() and max(image.width(), image.height()) > 2400:
            image = image.scaled(2400, 2400, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        _images[path] = image
    return _images[path]


def region_rect(region, width: float, height: float) -> QRectF:
    """Where a region falls on an image drawn ``width`` x ``height`` pixels (a point: a 0-size rect)."""
    label, kind, coords = region
    if kind == "box":
        x1, y1, x2, y2 = coords
        return QRectF(x1 * width / SCALE, y1 * height / SCALE, (x2 - x1) * width / SCALE, (y2 - y1) * height / SCALE)
    x, y = coords
    return QRectF(x * width / SCALE, y * height / SCALE, 0, 0)


class AnnotatedImage(QWidget):
    clicked = Signal(str)
    findRequested = Signal(str)

    def __init__(self, path: str, regions: Sequence[Tuple] = (), max_size: QSize = QSize(360, 280), parent=None):
        super().__init__(parent)
        self.path, self.regions = path, list(regions)
        self.image = load_image(path)
        size = self.image.size() if not self.image.isNull() else QSize(160, 120)
        self.display = size.scaled(size.boundedTo(max_size), Qt.KeepAspectRatio)
        self.setFixedSize(self.display)
        self.setCursor(Qt.PointingHandCursor)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setContextMenuPolicy(Qt.DefaultContextMenu)
        name = Path(path).name
        boxes = f", {len(self.regions)} marked" if self.regions else ""
        self.setAccessibleName(f"Image {name}{boxes}")
        self.setToolTip(f"{name} — click to enlarge; right-click to find something in it")

    def set_regions(self, regions: Sequence[Tuple]) -> None:
        self.regions = list(regions)
        self.update()

    def paintEvent(self, event):
        c = theme.colors()
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.setRenderHint(QPainter.SmoothPixmapTransform)
        rect = QRectF(self.rect())
        clip = QPainterPath()
        clip.addRoundedRect(rect, 10, 10)
        painter.setClipPath(clip)
        if self.image.isNull():
            painter.fillRect(rect, QColor(c.surface))
            painter.setPen(QColor(c.muted))
            painter.drawText(rect, Qt.AlignCenter, "can't show this image")
        else:
            painter.drawImage(rect, self.image)
        painter.setClipping(False)
        font = QFont(self.font())
        font.setPointSizeF(max(8.0, font.pointSizeF() - 1))
        font.setWeight(QFont.DemiBold)
        painter.setFont(font)
        metrics = QFontMetrics(font)
        for i, region in enumerate(self.regions):
            color = QColor(c.region_colors[i % len(c.region_colors)])
            r = region_rect(region, self.width(), self.height())
            if region[1] == "box":
                fill = QColor(color)
                fill.setAlpha(40)
                painter.fillRect(r, fill)
                painter.setPen(QPen(color, 2))
                painter.setBrush(Qt.NoBrush)
                painter.drawRect(r.adjusted(1, 1, -1, -1))
                anchor = r.topLeft()
            else:
                painter.setPen(QPen(QColor("#ffffff"), 2))
                painter.setBrush(color)
                painter.drawEllipse(r.center(), 6, 6)
                anchor = r.center() + QPointF(8, -8)
            if region[0]:
                text = metrics.elidedText(region[0], Qt.ElideRight, 200)
                box = QRectF(0, 0, metrics.horizontalAdvance(text) + 10, metrics.height() + 4)
                top = anchor.y() - box.height() if anchor.y() - box.height() >= 0 else anchor.y()
                left = min(max(anchor.x(), 0), max(self.width() - box.width(), 0))
                box.moveTo(left, top)
                painter.setPen(Qt.NoPen)
                painter.setBrush(color)
                painter.drawRoundedRect(box, 4, 4)
                painter.setPen(QColor("#ffffff"))
                painter.drawText(box, Qt.AlignCenter, text)
        painter.end()

    def mouseReleaseEvent(self, event):
        if event.button() == Qt.LeftButton and self.rect().contains(event.position().toPoint()):
            self.clicked.emit(self.path)

    def keyPressEvent(self, event):
        if event.key() in (Qt.Key_Return, Qt.Key_Enter, Qt.Key_Space):
            self.clicked.emit(self.path)
        else:
            super().keyPressEvent(event)

    def contextMenuEvent(self, event):
        menu = QMenu(self)
        menu.addAction("Open large", lambda: self.clicked.emit(self.path))
        menu.addAction("Find in image…", lambda: self.findRequested.emit(self.path))
        menu.exec(event.globalPos())


class ImageDialog(QDialog):
    """The image large, with its boxes."""

    def __init__(self, path: str, regions: Sequence[Tuple], parent=None):
        super().__init__(parent)
        self.setWindowTitle(Path(path).name)
        screen = self.screen().availableGeometry().size() * 0.85 if self.screen() else QSize(1200, 900)
        self.image = AnnotatedImage(path, regions, QSize(max(screen.width(), 200), max(screen.height(), 200)), self)
        self.image.setCursor(Qt.ArrowCursor)
        self.image.clicked.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        layout.addWidget(self.image, 0, Qt.AlignCenter)
