"""A video summary as Markdown with clickable times, and the frame shown for a clicked time."""

import re

from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QDialog, QLabel, QVBoxLayout

from mlx_minicpmv.summary.export import short as clock  # pure: loads no MLX


def escape(text: str) -> str:
    """Model text shown literally: a stray backtick or bracket must not swallow the time links."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", " ".join(text.split()))


def link(seconds: float) -> str:
    return f"[{clock(seconds)}](seek:{seconds:.2f})"


def chapters_markdown(chapters, overview: str = "", warnings=(), progress: str = "") -> str:
    """Chapters (dicts, as ``dataclasses.asdict`` gives them) with their segments; every time is a
    ``seek:SECONDS`` link."""
    lines = []
    if overview:
        lines += [escape(overview), ""]
    for c in chapters:
        lines += [f"**{link(c['start'])}–{link(c['end'])} {escape(c['title'])}**", ""]
        lines += [f"- {link(s['start'])}–{link(s['end'])} {escape(s['text'])}" for s in c["segments"]]
        lines.append("")
    if progress:
        lines.append(f"*{progress}*")
    lines += [f"> {escape(w)}" for w in warnings]
    return "\n".join(lines)


class FrameViewer(QDialog):
    """The frame at a clicked time."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel()
        self.caption = QLabel()
        layout = QVBoxLayout(self)
        layout.addWidget(self.label)
        layout.addWidget(self.caption)

    def show_frame(self, path: str, seconds: float, width: int, height: int, rgb: bytes) -> None:
        image = QImage(rgb, width, height, 3 * width, QImage.Format_RGB888).copy()
        self.label.setPixmap(QPixmap.fromImage(image))
        self.caption.setText(f"{clock(seconds)} — {path}")
        self.setWindowTitle(f"Frame at {clock(seconds)}")
        self.show()
        self.raise_()
