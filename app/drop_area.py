"""A widget that accepts dropped (and pasted) files and says which; it decides nothing else."""

from typing import List

from PySide6.QtCore import QMimeData, Signal
from PySide6.QtWidgets import QWidget


def local_files(mime: QMimeData) -> List[str]:
    return [url.toLocalFile() for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []


class DropArea(QWidget):
    filesDropped = Signal(list)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)

    def dragEnterEvent(self, event):
        if local_files(event.mimeData()):
            event.acceptProposedAction()

    def dragMoveEvent(self, event):
        if local_files(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event):
        files = local_files(event.mimeData())
        if files:
            event.acceptProposedAction()
            self.filesDropped.emit(files)
