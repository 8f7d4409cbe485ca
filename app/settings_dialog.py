"""The settings form."""

from dataclasses import replace

from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QWidget)

from .settings import Settings

APPEARANCES = ("system", "light", "dark")


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        self.max_tokens = QSpinBox(minimum=16, maximum=32768, value=settings.max_tokens)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.1, value=settings.temperature)
        self.top_p = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05, value=settings.top_p)
        self.thinking = QCheckBox("Let the model think before answering")
        self.thinking.setChecked(settings.thinking)
        self.detail = QComboBox()
        self.detail.addItems(["Standard (16x)", "High (4x)"])
        self.detail.setCurrentIndex(1 if settings.downsample_mode == "4x" else 0)
        self.slices = QSpinBox(minimum=1, maximum=36, value=settings.max_slice_nums)
        self.frames = QSpinBox(minimum=1, maximum=512, value=settings.max_frames)
        self.fps = QDoubleSpinBox(minimum=0.1, maximum=10.0, singleStep=0.5, value=settings.fps)
        self.system = QPlainTextEdit(settings.system_prompt)
        self.system.setFixedHeight(90)
        self.appearance = QComboBox()
        self.appearance.addItems(["Follow the system", "Light", "Dark"])
        self.appearance.setCurrentIndex(APPEARANCES.index(settings.appearance) if settings.appearance in APPEARANCES else 0)
        self.serve = QCheckBox("Serve on localhost (OpenAI-compatible API)")
        self.serve.setChecked(settings.serve)
        self.serve.setToolTip("Other programs on this computer can use the loaded model at "
                              "http://127.0.0.1:PORT/v1 (chat completions with images and video)")
        self.port = QSpinBox(minimum=1024, maximum=65535, value=settings.serve_port)
        self.key = QLineEdit(settings.serve_key)
        self.key.setEchoMode(QLineEdit.PasswordEchoOnEdit)
        self.key.setPlaceholderText("Optional: clients then send it as a Bearer token")
        self.serve.toggled.connect(self.port.setEnabled)
        self.serve.toggled.connect(self.key.setEnabled)
        self.port.setEnabled(settings.serve)
        self.key.setEnabled(settings.serve)
        self.adapter = QLineEdit(settings.adapter_path)
        self.adapter.setPlaceholderText("None: the model as converted")
        self.adapter.setToolTip("A folder that python -m mlx_minicpmv lora wrote (adapters.safetensors and "
                                "adapter_config.json); the model is loaded again with it")
        self.adapter.setClearButtonEnabled(True)
        self.adapter_button = QPushButton("Choose…")
        self.adapter_button.clicked.connect(self.choose_adapter)
        adapter_row = QWidget()
        row = QHBoxLayout(adapter_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.adapter, 1)
        row.addWidget(self.adapter_button)
        form = QFormLayout(self)
        form.setContentsMargins(20, 20, 20, 16)
        form.setSpacing(10)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("", self.thinking)
        form.addRow("Image detail", self.detail)
        form.addRow("Max slices per image", self.slices)
        form.addRow("Video frames (at most)", self.frames)
        form.addRow("Video frames per second", self.fps)
        form.addRow("System prompt", self.system)
        form.addRow("Adapter", adapter_row)
        form.addRow("Appearance", self.appearance)
        form.addRow("Local server", self.serve)
        form.addRow("Port", self.port)
        form.addRow("API key", self.key)
        for label, widget in (("Max tokens", self.max_tokens), ("Temperature", self.temperature), ("Top-p", self.top_p),
                              ("Thinking", self.thinking), ("Image detail", self.detail),
                              ("Max slices per image", self.slices), ("Video frames (at most)", self.frames),
                              ("Video frames per second", self.fps), ("System prompt", self.system),
                              ("Adapter folder", self.adapter), ("Choose an adapter folder", self.adapter_button),
                              ("Appearance", self.appearance), ("Serve on localhost", self.serve),
                              ("Server port", self.port), ("Server API key", self.key)):
            widget.setAccessibleName(label)
        self.buttons = buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def choose_adapter(self):
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder of fine-tuned adapters", self.adapter.text())
        if folder:
            self.adapter.setText(folder)

    def result_settings(self) -> Settings:
        return replace(self.settings, max_tokens=self.max_tokens.value(), temperature=self.temperature.value(),
                       top_p=self.top_p.value(), thinking=self.thinking.isChecked(),
                       downsample_mode="4x" if self.detail.currentIndex() == 1 else "16x",
                       max_slice_nums=self.slices.value(), max_frames=self.frames.value(), fps=self.fps.value(),
                       system_prompt=self.system.toPlainText().strip(),
                       appearance=APPEARANCES[self.appearance.currentIndex()], serve=self.serve.isChecked(),
                       serve_port=self.port.value(), serve_key=self.key.text().strip(),
                       adapter_path=self.adapter.text().strip())
