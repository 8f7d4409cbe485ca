"""First run: choose a converted model folder, or download and convert a Hugging Face repo."""

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QVBoxLayout,
                               QWidget)

DEFAULT_REPO = "openbmb/MiniCPM-V-4.6"


class ModelPicker(QWidget):
    folderChosen = Signal(str)
    downloadRequested = Signal(str)
    cancelRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.message = QLabel("No model yet. Open a folder made by convert.py, or download and convert one.")
        self.message.setWordWrap(True)
        self.open_button = QPushButton("Open converted folder…")
        self.repo = QLineEdit(DEFAULT_REPO)
        self.download_button = QPushButton("Download and convert")
        self.progress = QProgressBar()
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        row = QHBoxLayout()
        row.addWidget(self.repo)
        row.addWidget(self.download_button)
        layout = QVBoxLayout(self)
        layout.addStretch()
        layout.addWidget(self.message)
        layout.addWidget(self.open_button)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.cancel_button)
        layout.addStretch()
        self.open_button.clicked.connect(self.choose_folder)
        self.download_button.clicked.connect(lambda: self.downloadRequested.emit(self.repo.text().strip()))
        self.cancel_button.clicked.connect(self.cancelRequested)

    def choose_folder(self):
        folder = QFileDialog.getExistingDirectory(self, "Choose a converted MiniCPM-V 4.6 folder")
        if folder:
            self.folderChosen.emit(folder)

    def set_busy(self, text: str) -> None:
        self.message.setText(text)
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.show()
        self.open_button.setEnabled(False)
        self.download_button.setEnabled(False)

    def set_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * done / max(total, 1)))

    def set_idle(self, text: str) -> None:
        self.message.setText(text)
        self.progress.hide()
        self.cancel_button.hide()
        self.open_button.setEnabled(True)
        self.download_button.setEnabled(True)
