"""The main window: history sidebar, conversation, composer, status bar. No MLX here: all model
work goes to ``ModelWorker`` on its own thread, through signals."""

import os
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QSettings, QStandardPaths, Qt, QThread, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QLabel, QLineEdit, QListWidget, QListWidgetItem, QMainWindow, QProgressBar,
                               QPushButton, QSplitter, QStackedWidget, QVBoxLayout, QWidget)

from .chat_view import ChatView
from .composer import Composer
from .history import Conversation, History, Message
from .model_picker import ModelPicker
from .settings import load_settings, save_settings
from .settings_dialog import SettingsDialog
from .summary_view import FrameViewer, chapters_markdown, clock
from .worker import GenerateRequest, ModelWorker


def app_home() -> Path:
    """Where history and settings live (``MINICPMV_APP_HOME`` overrides, for tests)."""
    override = os.environ.get("MINICPMV_APP_HOME")
    base = override or QStandardPaths.writableLocation(QStandardPaths.AppDataLocation) or str(Path.home() / ".mlx-minicpmv")
    return Path(base)


class MainWindow(QMainWindow):
    requestLoad = Signal(str)
    requestDownload = Signal(str, str)
    requestGenerate = Signal(object)
    requestPreview = Signal(str, int, float)
    requestSummary = Signal(str, str, dict)
    requestFrame = Signal(str, float)
    requestExport = Signal(object, str)

    def __init__(self, home: Optional[Path] = None):
        super().__init__()
        self.setWindowTitle("MiniCPM-V")
        self.resize(1100, 760)
        self.home = Path(home or app_home())
        self.store = QSettings(str(self.home / "settings.ini"), QSettings.IniFormat)
        self.settings = load_settings(self.store)
        self.history = History(self.home / "conversations")
        self.conversation = Conversation()
        self.streaming: Optional[str] = None
        self.error = ""
        self.summary = None  # the last finished video summary, for export and timestamps
        self.summary_video = ""
        self.summary_chapters = []

        # widgets
        self.search = QLineEdit(placeholderText="Search chats")
        self.chats = QListWidget()
        self.new_button = QPushButton("New chat")
        self.delete_button = QPushButton("Delete")
        sidebar = QWidget()
        side = QVBoxLayout(sidebar)
        side.addWidget(self.new_button)
        side.addWidget(self.search)
        side.addWidget(self.chats)
        side.addWidget(self.delete_button)
        self.view = ChatView()
        self.composer = Composer()
        chat = QWidget()
        column = QVBoxLayout(chat)
        column.addWidget(self.view, 1)
        column.addWidget(self.composer)
        self.picker = ModelPicker()
        self.pages = QStackedWidget()
        self.pages.addWidget(self.picker)
        self.pages.addWidget(chat)
        splitter = QSplitter()
        splitter.addWidget(sidebar)
        splitter.addWidget(self.pages)
        splitter.setSizes([250, 850])
        self.setCentralWidget(splitter)
        self.speed = QLabel("")
        self.progress = QProgressBar(maximumWidth=200)
        self.progress.hide()
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.speed)
        self.make_actions()

        # the worker, on one long-lived thread
        self.thread = QThread(self)
        self.worker = ModelWorker()
        self.worker.moveToThread(self.thread)
        # Qt's worker-object pattern: the worker is deleted on its own thread as that thread
        # ends, never later from another one (a stray deferred delete crashed a later event loop).
        self.thread.finished.connect(self.worker.deleteLater)
        self.requestLoad.connect(self.worker.load)
        self.requestDownload.connect(self.worker.download_and_convert)
        self.requestGenerate.connect(self.worker.generate)
        self.requestPreview.connect(self.worker.preview_video)
        self.requestSummary.connect(self.worker.summarise)
        self.requestFrame.connect(self.worker.frame_at)
        self.requestExport.connect(self.worker.export_summary)
        self.worker.exported.connect(lambda p: self.statusBar().showMessage(f"Exported {p}", 5000))
        self.worker.summary_progress.connect(self.on_summary_progress)
        self.worker.summary_chapter.connect(self.on_summary_chapter)
        self.worker.summary_done.connect(self.on_summary_done)
        self.viewer = FrameViewer(self)
        self.worker.frame_ready.connect(self.viewer.show_frame)
        self.view.linkActivated.connect(self.on_link)
        self.worker.loading.connect(lambda p: self.picker.set_busy(f"Loading {p}…"))
        self.worker.loaded.connect(self.on_loaded)
        self.worker.download_progress.connect(self.picker.set_progress)
        self.worker.prompt_progress.connect(self.on_prompt_progress)
        self.worker.text.connect(self.on_text)
        self.worker.done.connect(self.on_done)
        self.worker.failed.connect(self.on_failed)
        self.worker.frames.connect(self.composer.show_frames)
        self.thread.start()

        self.picker.folderChosen.connect(self.requestLoad)
        self.picker.downloadRequested.connect(self.download)
        # Cancel must run now, on this thread: a queued call would wait behind the very job it
        # is meant to stop (the worker's event loop is busy running it).
        self.picker.cancelRequested.connect(self.worker.cancel, Qt.DirectConnection)
        self.composer.sendRequested.connect(self.send)
        self.composer.summariseRequested.connect(self.summarise)
        self.composer.stopRequested.connect(self.worker.cancel, Qt.DirectConnection)
        self.composer.videoAttached.connect(
            lambda p: self.requestPreview.emit(p, self.settings.max_frames, self.settings.fps))
        self.composer.rejected.connect(self.show_error)
        self.new_button.clicked.connect(self.new_chat)
        self.delete_button.clicked.connect(self.delete_chat)
        self.search.textChanged.connect(self.refresh_chats)
        self.chats.currentItemChanged.connect(self.open_selected)

        self.refresh_chats()
        self.render()
        if self.settings.model_path and Path(self.settings.model_path).exists():
            self.requestLoad.emit(self.settings.model_path)

    def make_actions(self):
        bar = self.addToolBar("Chat")
        for name, shortcut, slot in (("Copy answer", QKeySequence.Copy, self.copy_answer),
                                     ("Regenerate", "Ctrl+R", self.regenerate),
                                     ("Edit last question", "Ctrl+E", self.edit_last),
                                     ("Export summary…", "Ctrl+Shift+E", self.choose_export),
                                     ("Settings…", QKeySequence.Preferences, self.open_settings)):
            action = QAction(name, self)
            action.setShortcut(shortcut)
            action.triggered.connect(slot)
            bar.addAction(action)
            setattr(self, "action_" + name.split()[0].lower().strip("…"), action)

    # -- model ----------------------------------------------------------------------------------
    def download(self, repo_id: str):
        target = self.home / "models" / repo_id.replace("/", "--")
        self.picker.set_busy(f"Downloading {repo_id}…")
        self.requestDownload.emit(repo_id, str(target))

    def on_loaded(self, path: str):
        self.settings.model_path = path
        save_settings(self.store, self.settings)
        self.picker.set_idle(f"Loaded {path}")
        self.pages.setCurrentIndex(1)
        self.statusBar().showMessage(f"Model: {path}", 5000)

    # -- conversation ---------------------------------------------------------------------------
    def render(self):
        self.view.show_conversation(self.conversation, self.streaming, self.error)

    def send(self, text: str, attachments: list):
        if self.streaming is not None:
            return
        self.conversation.add(Message("user", text, attachments))
        self.composer.clear()
        self.ask()

    def ask(self):
        self.error = ""
        self.streaming = ""
        self.composer.set_busy(True)
        self.render()
        self.history.save(self.conversation)
        self.refresh_chats()
        messages = [m.to_library() for m in self.conversation.messages]
        self.requestGenerate.emit(GenerateRequest(self.conversation.id, messages, self.settings.generation_options(),
                                                  self.settings.system_prompt))

    def on_text(self, piece: str):
        if self.streaming is None:
            return
        self.streaming += piece
        self.render()

    def on_prompt_progress(self, done: int, total: int):
        self.progress.setVisible(done < total)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def on_done(self, reason: str, stats: dict):
        note = (f"{stats['prompt_tokens']} prompt tokens at {stats['prompt_tps']:.0f} tok/s · "
                f"{stats['generation_tokens']} tokens at {stats['generation_tps']:.1f} tok/s · "
                f"{stats['peak_memory']:.2f} GB")
        if reason == "cancelled":
            note += " · stopped"
        self.conversation.add(Message("assistant", self.streaming or "", stats=note))
        self.streaming = None
        self.progress.hide()
        self.speed.setText(note)
        self.composer.set_busy(False)
        self.history.save(self.conversation)
        self.render()

    def on_failed(self, message: str):
        if self.pages.currentIndex() == 0:
            self.picker.set_idle(message)
        if self.streaming is not None and self.conversation.messages and self.conversation.messages[-1].role == "user":
            if self.streaming:  # keep what was said before the failure
                self.conversation.add(Message("assistant", self.streaming, stats="interrupted"))
        self.streaming = None
        self.progress.hide()
        self.composer.set_busy(False)
        self.show_error(message)

    def show_error(self, message: str):
        self.error = message
        self.statusBar().showMessage(message, 10000)
        self.render()

    # -- video summaries ------------------------------------------------------------------------
    def summarise(self, path: str):
        if self.streaming is not None:
            return
        from .history import Attachment

        self.conversation.add(Message("user", "Summarise this video.", [Attachment(path, "video")]))
        self.composer.clear()
        self.summary_video, self.summary_chapters, self.summary = path, [], None
        self.error, self.streaming = "", chapters_markdown([], progress="Looking for scene changes…")
        self.composer.set_busy(True)
        self.history.save(self.conversation)
        self.refresh_chats()
        self.render()
        s = self.settings
        self.requestSummary.emit(self.conversation.id, path, dict(frames_per_segment=max(1, min(16, s.max_frames // 8)),
                                            temperature=s.temperature, top_p=s.top_p))

    def on_summary_progress(self, stage: str, done: int, total: int, eta: float):
        left = f", about {clock(eta)} left" if eta >= 0 else ""
        text = {"scanning": "Scenes found", "segment": f"Segments summarised: {done}/{total}{left}",
                "chapter": f"Chapters titled: {done}/{total}", "done": "Done"}.get(stage, stage)
        self.statusBar().showMessage(text)
        self.progress.setVisible(stage != "done")
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        if self.streaming is not None and stage in ("segment", "scanning"):
            self.streaming = chapters_markdown(self.summary_chapters, progress=text)
            self.render()

    def on_summary_chapter(self, chapter):
        self.summary_chapters.append(chapter)
        self.streaming = chapters_markdown(self.summary_chapters, progress="Writing the overview…")
        self.render()

    def on_summary_done(self, summary):
        self.summary = summary
        text = chapters_markdown(summary.chapters, summary.overview, summary.warnings)
        self.conversation.add(Message("assistant", text, stats=f"{len(summary.chapters)} chapters"))
        self.streaming = None
        self.progress.hide()
        self.composer.set_busy(False)
        self.history.save(self.conversation)
        self.render()

    def on_link(self, url: str):
        if url.startswith("seek:"):
            video = self.summary_video or next((a.path for m in reversed(self.conversation.messages)
                                                for a in m.attachments if a.kind == "video"), "")
            if video:
                self.requestFrame.emit(video, float(url[5:]))

    def choose_export(self):
        from PySide6.QtWidgets import QFileDialog

        if self.summary is None:
            self.show_error("Summarise a video first (drop it with no question), then export its chapters.")
            return
        name = Path(self.summary_video).with_suffix(".md").name
        path, _ = QFileDialog.getSaveFileName(self, "Export summary", name,
                                              "Markdown (*.md);;SubRip (*.srt);;WebVTT (*.vtt);;JSON (*.json)")
        if path:
            self.export_summary(path)

    def export_summary(self, path: str):
        """Formatting belongs to the library, so the worker writes the file."""
        self.requestExport.emit(self.summary, path)

    # -- actions --------------------------------------------------------------------------------
    def copy_answer(self):
        answers = [m.text for m in self.conversation.messages if m.role == "assistant"]
        if answers:
            QGuiApplication.clipboard().setText(answers[-1])

    def regenerate(self):
        if self.streaming is not None or not self.conversation.messages:
            return
        while self.conversation.messages and self.conversation.messages[-1].role == "assistant":
            self.conversation.messages.pop()
        if self.conversation.messages:
            self.ask()

    def edit_last(self):
        if self.streaming is not None:
            return
        users = [i for i, m in enumerate(self.conversation.messages) if m.role == "user"]
        if not users:
            return
        last = self.conversation.messages[users[-1]]
        del self.conversation.messages[users[-1]:]
        self.composer.clear()
        self.composer.edit.setPlainText(last.text)
        self.composer.attach([a.path for a in last.attachments])
        self.history.save(self.conversation)
        self.render()

    def open_settings(self):
        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            self.settings = dialog.result_settings()
            save_settings(self.store, self.settings)

    # -- history --------------------------------------------------------------------------------
    def refresh_chats(self):
        self.chats.blockSignals(True)
        self.chats.clear()
        for conversation in self.history.list(self.search.text()):
            item = QListWidgetItem(conversation.title)
            item.setData(256, conversation.id)
            self.chats.addItem(item)
            if conversation.id == self.conversation.id:
                self.chats.setCurrentItem(item)
        self.chats.blockSignals(False)

    def open_selected(self, item, _previous=None):
        if item is None or self.streaming is not None:
            return
        self.conversation = self.history.load(item.data(256))
        self.error = ""
        self.render()

    def new_chat(self):
        if self.streaming is not None:
            return
        self.conversation = Conversation()
        self.error = ""
        self.composer.clear()
        self.refresh_chats()
        self.render()

    def delete_chat(self):
        item = self.chats.currentItem()
        if item is None or self.streaming is not None:
            return
        self.history.delete(item.data(256))
        if item.data(256) == self.conversation.id:
            self.conversation = Conversation()
        self.refresh_chats()
        self.render()

    def closeEvent(self, event):
        # The running job stops at its next token or prefill chunk; wait for it, so the thread
        # is never destroyed while it still runs.
        self.worker.cancel()
        self.thread.quit()
        self.thread.wait()
        super().closeEvent(event)
