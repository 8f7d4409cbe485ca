"""Choose a model: the MiniCPM-V checkpoints found on this computer (with where, size and
precision), a folder of one's own, or a download from Hugging Face converted on the spot."""

from typing import List

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QListWidget, QListWidgetItem,
                               QProgressBar, QPushButton, QVBoxLayout, QWidget)

from .model_finder import FoundModel

# The models offered for download, the first the default (README, "Which model").
REPOS = {
    "openbmb/MiniCPM-V-4.6": "MiniCPM-V 4.6 (1.3 B): the one proven here on every path",
    "openbmb/MiniCPM-V-4.7-1B": "MiniCPM-V 4.7 (1.55 B): newer, places slices and frames on a 2-D canvas",
}
DEFAULT_REPO = next(iter(REPOS))


class ModelPicker(QWidget):
    folderChosen = Signal(str)
    downloadRequested = Signal(str)
    cancelRequested = Signal()
    backRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("picker")
        self.found: List[FoundModel] = []
        heading = QLabel("Choose a model")
        heading.setObjectName("heading")
        self.message = QLabel("Models already on this computer are listed below. Or open a folder made by "
                              "convert.py, or download MiniCPM-V from Hugging Face and convert it here.")
        self.message.setWordWrap(True)
        self.message.setProperty("muted", True)
        self.models = QListWidget()
        self.models.setObjectName("models")
        self.models.setAccessibleName("Models found on this computer")
        self.models.setIconSize(QSize(0, 0))
        self.models.setMinimumHeight(150)
        self.use_button = QPushButton("Use this model")
        self.use_button.setObjectName("primary")
        self.use_button.setEnabled(False)
        self.open_button = QPushButton("Open folder…")
        self.back_button = QPushButton("Back to the chat")
        self.back_button.hide()
        self.repo = QComboBox()  # editable: any other repo id may be typed
        self.repo.setEditable(True)
        for repo, about in REPOS.items():
            self.repo.addItem(repo)
            self.repo.setItemData(self.repo.count() - 1, about, Qt.ToolTipRole)
        self.repo.setAccessibleName("Hugging Face repo id")
        self.repo.lineEdit().setAccessibleName("Hugging Face repo id")
        self.repo_about = QLabel(REPOS[DEFAULT_REPO])  # what the chosen model is, in a line
        self.repo_about.setProperty("muted", True)
        self.repo.currentTextChanged.connect(lambda text: self.repo_about.setText(REPOS.get(text.strip(), "")))
        self.download_button = QPushButton("Download and convert")
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        actions = QHBoxLayout()
        actions.addWidget(self.back_button)
        actions.addStretch()
        actions.addWidget(self.open_button)
        actions.addWidget(self.use_button)
        download = QHBoxLayout()
        download.addWidget(self.repo, 1)
        download.addWidget(self.download_button)
        column = QWidget()
        column.setMaximumWidth(640)
        layout = QVBoxLayout(column)
        layout.setSpacing(12)
        layout.addWidget(heading)
        layout.addWidget(self.message)
        layout.addWidget(self.models, 1)
        layout.addLayout(actions)
        layout.addSpacing(8)
        got = QLabel("Download from Hugging Face")
        got.setStyleSheet("font-weight: 600;")
        layout.addWidget(got)
        layout.addLayout(download)
        layout.addWidget(self.repo_about)
        layout.addWidget(self.progress)
        layout.addWidget(self.cancel_button, 0, Qt.AlignRight)
        outer = QHBoxLayout(self)
        outer.setContentsMargins(32, 32, 32, 32)
        outer.addWidget(column)
        self.open_button.clicked.connect(self.choose_folder)
        self.use_button.clicked.connect(self.use_selected)
        self.models.itemActivated.connect(lambda _: self.use_selected())
        self.models.currentRowChanged.connect(lambda row: self.use_button.setEnabled(row >= 0))
        self.download_button.clicked.connect(lambda: self.downloadRequested.emit(self.repo.currentText().strip()))
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.back_button.clicked.connect(self.backRequested)

    def set_models(self, found: List[FoundModel], current: str = "") -> None:
        self.found = list(found)
        self.models.clear()
        for model in self.found:
            item = QListWidgetItem(f"{model.name}\n{model.source} · {model.precision or '?'} · {model.size_text}")
            item.setToolTip(model.path)
            self.models.addItem(item)
            if model.path == current:
                self.models.setCurrentItem(item)
        if not self.found:
            self.models.addItem("No MiniCPM-V model found in this app's folder, the Hugging Face cache or LM Studio.")
            self.models.item(0).setFlags(Qt.NoItemFlags)

    def listed(self) -> List[str]:
        """What the list shows, one line per model."""
        return [self.models.item(i).text() for i in range(self.models.count())]

    def use_selected(self) -> None:
        row = self.models.currentRow()
        if 0 <= row < len(self.found):
            self.folderChosen.emit(self.found[row].path)

    def choose_folder(self):
        folder = QFileDialog.getExistingDirectory(self, "Choose a MiniCPM-V model folder")
        if folder:
            self.folderChosen.emit(folder)

    def set_busy(self, text: str) -> None:
        self.message.setText(text)
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.show()
        for b in (self.open_button, self.download_button, self.use_button):
            b.setEnabled(False)

    def set_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * done / max(total, 1)))

    def set_idle(self, text: str) -> None:
        self.message.setText(text)
        self.progress.hide()
        self.cancel_button.hide()
        self.open_button.setEnabled(True)
        self.download_button.setEnabled(True)
        self.use_button.setEnabled(self.models.currentRow() >= 0 and bool(self.found))
