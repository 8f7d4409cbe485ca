"""Line icons drawn with QPainter in the theme's colours (no icon files to ship or to blur)."""

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap


def _path(name: str) -> QPainterPath:
    """The icon on a 24 x 24 grid."""
    p = QPainterPath()
    if name == "plus":
        p.moveTo(12, 5); p.lineTo(12, 19); p.moveTo(5, 12); p.lineTo(19, 12)
    elif name == "send":  # an arrow up
        p.moveTo(12, 19); p.lineTo(12, 5); p.moveTo(6, 11); p.lineTo(12, 5); p.lineTo(18, 11)
    elif name == "stop":
        p.addRoundedRect(QRectF(7, 7, 10, 10), 2, 2)
    elif name == "attach":  # a paperclip
        p.moveTo(16.5, 7.5); p.lineTo(8.8, 15.2)
        p.arcTo(QRectF(6.3, 12.7, 5, 5), 135, 180)
        p.lineTo(18.4, 8.0)
        p.arcTo(QRectF(13.4, 3.0, 8, 8), 315, 180)
        p.lineTo(6.7, 13.0)
        p.arcTo(QRectF(2.8, 11.0, 8, 8), 135, 180)
        p.lineTo(14.0, 15.8)
    elif name == "copy":
        p.addRoundedRect(QRectF(8, 8, 11, 11), 2, 2)
        p.moveTo(5, 15); p.lineTo(5, 6); p.quadTo(5, 5, 6, 5); p.lineTo(15, 5)
    elif name == "regenerate":
        p.arcMoveTo(QRectF(5, 5, 14, 14), 60)
        p.arcTo(QRectF(5, 5, 14, 14), 60, 300)
        p.moveTo(15.5, 3.5); p.lineTo(15.5, 7.8); p.lineTo(19.5, 7.8)
    elif name == "edit":  # a pencil
        p.moveTo(5, 19); p.lineTo(5.8, 15.2); p.lineTo(15.5, 5.5); p.lineTo(18.5, 8.5); p.lineTo(8.8, 18.2)
        p.closeSubpath(); p.moveTo(13.5, 7.5); p.lineTo(16.5, 10.5)
    elif name == "close":
        p.moveTo(7, 7); p.lineTo(17, 17); p.moveTo(17, 7); p.lineTo(7, 17)
    elif name == "search":
        p.addEllipse(QRectF(5, 5, 10, 10)); p.moveTo(13.5, 13.5); p.lineTo(19, 19)
    elif name == "settings":  # sliders
        for y, x in ((7, 9), (12, 15), (17, 7)):
            p.moveTo(4, y); p.lineTo(20, y); p.addEllipse(QPointF(x, y), 1.8, 1.8)
    elif name == "trash":
        p.moveTo(5, 7); p.lineTo(19, 7); p.moveTo(10, 7); p.lineTo(10, 5); p.lineTo(14, 5); p.lineTo(14, 7)
        p.moveTo(7, 7); p.lineTo(8, 19); p.lineTo(16, 19); p.lineTo(17, 7)
    elif name == "chevron":
        p.moveTo(9, 6); p.lineTo(15, 12); p.lineTo(9, 18)
    elif name == "chevron-down":
        p.moveTo(6, 9); p.lineTo(12, 15); p.lineTo(18, 9)
    elif name == "film":
        p.addRoundedRect(QRectF(4, 6, 16, 12), 2, 2)
        for x in (4, 16):
            p.moveTo(x, 10); p.lineTo(x + 4, 10); p.moveTo(x, 14); p.lineTo(x + 4, 14)
        p.moveTo(8, 6); p.lineTo(8, 18); p.moveTo(16, 6); p.lineTo(16, 18)
    elif name == "image":
        p.addRoundedRect(QRectF(4, 5, 16, 14), 2, 2); p.addEllipse(QPointF(9, 10), 1.5, 1.5)
        p.moveTo(4, 17); p.lineTo(10, 12); p.lineTo(14, 15.5); p.lineTo(16, 14); p.lineTo(20, 17)
    elif name == "target":  # find in image
        p.addEllipse(QRectF(6, 6, 12, 12))
        for a, b in (((12, 3), (12, 8)), ((12, 16), (12, 21)), ((3, 12), (8, 12)), ((16, 12), (21, 12))):
            p.moveTo(*a); p.lineTo(*b)
    elif name == "sidebar":
        p.addRoundedRect(QRectF(4, 5, 16, 14), 2, 2); p.moveTo(10, 5); p.lineTo(10, 19)
    elif name == "cpu":
        p.addRoundedRect(QRectF(7, 7, 10, 10), 1.5, 1.5)
        for v in (10, 14):
            for a, b in (((v, 4), (v, 7)), ((v, 17), (v, 20)), ((4, v), (7, v)), ((17, v), (20, v))):
                p.moveTo(*a); p.lineTo(*b)
    else:
        raise KeyError(f"no icon named {name!r}")
    return p


def pixmap(name: str, color: str, size: int = 18, width: float = 1.7, ratio: float = 2.0) -> QPixmap:
    px = QPixmap(int(size * ratio), int(size * ratio))
    px.fill(Qt.transparent)
    px.setDevicePixelRatio(ratio)
    painter = QPainter(px)
    painter.setRenderHint(QPainter.Antialiasing)
    painter.scale(size / 24, size / 24)
    pen = QPen(QColor(color), width * 24 / size * (size / 18), Qt.SolidLine, Qt.RoundCap, Qt.RoundJoin)
    painter.setPen(pen)
    if name == "stop":
        painter.setBrush(QColor(color))
    painter.drawPath(_path(name))
    painter.end()
    return px


def icon(name: str, color: str, size: int = 18) -> QIcon:
    return QIcon(pixmap(name, color, size))
