"""The bar above the conversation: the chat's title, prompt progress during a long prefill,
tokens per second after, and the model in use with its precision and the memory it takes."""

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QToolButton

from . import theme
from .icons import icon


class Header(QFrame):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("header")
        self.setFixedHeight(52)
        self.title = QLabel("New chat")
        self.title.setObjectName("title")
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setFixedWidth(160)
        self.progress.setAccessibleName("Reading the prompt")
        self.progress.hide()
        self.speed = QLabel("")
        self.speed.setProperty("muted", True)
        self.speed.setAccessibleName("Speed")
        self.model = QToolButton()
        self.model.setObjectName("model")
        self.model.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.model.setIconSize(QSize(16, 16))
        self.model.setAccessibleName("Model")
        self.model.setToolTip("Choose another model")
        self.model.setText("No model")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(20, 0, 14, 0)
        layout.setSpacing(12)
        layout.addWidget(self.title, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.speed)
        layout.addWidget(self.model)
        self.restyle()

    def restyle(self) -> None:
        self.model.setIcon(icon("cpu", theme.colors().accent, 16))

    def set_model(self, name: str, precision: str, memory_gb: float) -> None:
        parts = [name] + ([precision] if precision else []) + ([f"{memory_gb:.1f} GB"] if memory_gb > 0 else [])
        self.model.setText(" · ".join(parts))
        self.model.setAccessibleName("Model: " + ", ".join(parts))

    def set_prompt_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setVisible(done < total)
        if done < total:
            self.speed.setText(f"Reading {done}/{total} tokens")
