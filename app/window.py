"""The main window: chats on the left, the conversation and the composer on the right, the model
in the header. No MLX here: all model work goes to ``ModelWorker`` on its own thread, through
signals."""

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QSettings, QStandardPaths, Qt, QThread, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QFileDialog, QInputDialog, QLabel, QMainWindow, QSplitter, QStackedWidget, QVBoxLayout,
                               QWidget)

from .chat_view import ChatView
from .composer import FILE_FILTER, Composer
from .drop_area import DropArea
from .header import Header
from .history import Attachment, Conversation, DamagedFile, History, Message
from .image_view import ImageDialog
from .local_server import LocalServer
from .markdown import readable, split_thinking
from .model_finder import find_models
from .model_picker import ModelPicker
from .settings import load_settings, save_settings
from .settings_dialog import SettingsDialog
from .sidebar import ID_ROLE, Sidebar
from .summary_view import FrameViewer, chapters_markdown, clock
from .theme import Theme
from .worker import GenerateRequest, ModelWorker, grounding_prompt


def app_home() -> Path:
    """Where history and settings live (``MINICPMV_APP_HOME`` overrides, for tests)."""
    override = os.environ.get("MINICPMV_APP_HOME")
    base = override or QStandardPaths.writableLocation(QStandardPaths.AppDataLocation) or str(Path.home() / ".mlx-minicpmv")
    return Path(base)


class MainWindow(QMainWindow):
    requestLoad = Signal(str)
    requestAdapter = Signal(str)
    requestDownload = Signal(str, str)
    requestGenerate = Signal(object)
    requestPreview = Signal(str, int, float)
    requestSummary = Signal(str, str, dict)
    requestFrame = Signal(str, float)
    requestChapterFrames = Signal(str, list)
    requestExport = Signal(object, str)

    def __init__(self, home: Optional[Path] = None, files=(), model: Optional[str] = None):
        super().__init__()
        self.setWindowTitle("MiniCPM-V")
        self.resize(1180, 800)
        self.setMinimumSize(760, 520)
        self.home = Path(home or app_home())
        self.store = QSettings(str(self.home / "settings.ini"), QSettings.IniFormat)
        self.settings = load_settings(self.store)
        self.history = History(self.home / "conversations")
        self.conversation = Conversation()
        self.streaming: Optional[Message] = None  # the answer being written
        self.started = 0.0
        self.error = ""
        self.summary = None  # the last finished video summary, for export
        self.summary_video = ""
        self.summary_chapters = []
        self.model_info = {}  # what the worker said of the loaded model: path, name, precision, memory
        self.thumbnails = {}  # video path -> chapter frames already decoded
        self.theme = Theme(self.settings.appearance)

        self.sidebar = Sidebar()
        self.header = Header()
        self.view = ChatView()
        self.composer = Composer()
        chat = QWidget()
        chat.setObjectName("chat")
        column = QVBoxLayout(chat)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.header)
        column.addWidget(self.view, 1)
        holder = QWidget()
        holder.setMaximumWidth(820)
        bottom = QVBoxLayout(holder)
        bottom.setContentsMargins(24, 6, 24, 18)
        bottom.addWidget(self.composer)
        column.addWidget(holder, 0, Qt.AlignHCenter)
        holder.setMinimumWidth(560)
        self.picker = ModelPicker()
        self.pages = QStackedWidget()
        self.pages.addWidget(self.picker)
        self.pages.addWidget(chat)
        splitter = QSplitter()
        splitter.addWidget(self.sidebar)
        splitter.addWidget(self.pages)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([250, 930])
        splitter.setHandleWidth(1)
        self.drop_area = DropArea()
        inside = QVBoxLayout(self.drop_area)
        inside.setContentsMargins(0, 0, 0, 0)
        inside.addWidget(splitter)
        self.setCentralWidget(self.drop_area)
        self.viewer = FrameViewer(self)
        self.make_actions()

        self.thread = QThread(self)
        self.worker = ModelWorker()
        self.worker.moveToThread(self.thread)
        # Qt's worker-object pattern: the worker is deleted on its own thread as that thread
        # ends, never later from another one (a stray deferred delete crashed a later event loop).
        self.thread.finished.connect(self.worker.deleteLater)
        self.connect_worker()
        self.connect_widgets()
        self.local_server = LocalServer(self.worker, self)
        self.serving = QLabel()
        self.serving.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.serving.setProperty("muted", True)
        self.serving.hide()
        self.statusBar().addPermanentWidget(self.serving)
        self.local_server.started.connect(self.on_serving)
        self.local_server.stopped.connect(self.serving.hide)
        self.local_server.failed.connect(self.show_error)
        self.configure_server()
        self.theme.changed.connect(self.restyle)
        self.theme.apply()

        self.refresh_chats()
        self.report_damaged()
        self.refresh_models()
        self.render()
        self.thread.start()  # last: nothing above may fail with the thread running
        model = model or (self.settings.model_path if self.settings.model_path and
                          Path(self.settings.model_path).exists() else None)
        self.requestAdapter.emit(self.settings.adapter_path)  # queued first: the load below uses it
        if model:
            self.requestLoad.emit(model)
        self.open_files(files)
        self.composer.edit.setFocus()

    # -- wiring ---------------------------------------------------------------------------------
    def connect_worker(self):
        w = self.worker
        self.requestAdapter.connect(w.set_adapter)
        self.requestLoad.connect(w.load)
        self.requestDownload.connect(w.download_and_convert)
        self.requestGenerate.connect(w.generate)
        self.requestPreview.connect(w.preview_video)
        self.requestSummary.connect(w.summarise)
        self.requestFrame.connect(w.frame_at)
        self.requestChapterFrames.connect(w.chapter_frames)
        self.requestExport.connect(w.export_summary)
        # Worker signals go to this window's own methods, never to a lambda: a lambda has no
        # receiver object, so PySide calls it on the emitting (worker) thread, and a widget
        # touched from there crashes Qt (a segfault in CI).
        w.exported.connect(self.on_exported)
        w.summary_progress.connect(self.on_summary_progress)
        w.summary_chapter.connect(self.on_summary_chapter)
        w.summary_done.connect(self.on_summary_done)
        w.frame_ready.connect(self.viewer.show_frame)
        w.thumbnails.connect(self.on_thumbnails)
        w.loading.connect(self.on_loading)
        w.loaded.connect(self.on_loaded)
        w.download_progress.connect(self.picker.set_progress)
        w.prompt_progress.connect(self.header.set_prompt_progress)
        w.text.connect(self.on_text)
        w.done.connect(self.on_done)
        w.failed.connect(self.on_failed)
        w.frames.connect(self.on_frames)

    def connect_widgets(self):
        self.picker.folderChosen.connect(self.requestLoad)
        self.picker.downloadRequested.connect(self.download)
        self.picker.backRequested.connect(lambda: self.pages.setCurrentIndex(1))
        # Cancel must run now, on this thread: a queued call would wait behind the very job it
        # is meant to stop (the worker's event loop is busy running it).
        self.picker.cancelRequested.connect(self.worker.cancel, Qt.DirectConnection)
        self.composer.sendRequested.connect(self.send)
        self.composer.summariseRequested.connect(self.summarise)
        self.composer.stopRequested.connect(self.worker.cancel, Qt.DirectConnection)
        self.composer.videoAttached.connect(
            lambda p: self.requestPreview.emit(p, self.settings.max_frames, self.settings.fps))
        self.composer.rejected.connect(self.show_error)
        self.drop_area.filesDropped.connect(self.open_files)
        self.view.linkActivated.connect(self.on_link)
        self.view.copyRequested.connect(self.copy_text)
        self.view.regenerateRequested.connect(self.regenerate)
        self.view.editRequested.connect(self.edit_last)
        self.view.imageClicked.connect(self.show_image)
        self.view.findRequested.connect(self.ask_find_in_image)
        self.view.framesWanted.connect(self.want_chapter_frames)
        self.view.empty.promptChosen.connect(self.use_example)
        self.view.empty.attachRequested.connect(self.composer.pick_files)
        self.header.model.clicked.connect(self.show_picker)
        self.sidebar.new_button.clicked.connect(self.new_chat)
        self.sidebar.settings_button.clicked.connect(self.open_settings)
        self.sidebar.search.textChanged.connect(self.refresh_chats)
        self.sidebar.chats.currentItemChanged.connect(self.open_selected)
        self.sidebar.chats.deleteRequested.connect(self.delete_chat)

    def make_actions(self):
        menus = {}
        for menu, name, shortcut, slot in (
                ("File", "New chat", "Ctrl+N", self.new_chat),
                ("File", "Open files…", "Ctrl+O", self.composer.pick_files),
                ("File", "Export summary…", "Ctrl+Shift+E", self.choose_export),
                ("Edit", "Copy answer", "Ctrl+Shift+C", self.copy_answer),
                ("Edit", "Find chats", "Ctrl+F", self.focus_search),
                ("Edit", "Settings…", "Ctrl+,", self.open_settings),
                ("Chat", "Regenerate", "Ctrl+R", self.regenerate),
                ("Chat", "Edit last question", "Ctrl+E", self.edit_last),
                ("Chat", "Stop", "Esc", self.stop),
                ("Chat", "Choose model…", "Ctrl+Shift+M", self.show_picker),
                ("View", "Show chats", "Ctrl+Alt+S", lambda: self.sidebar.setVisible(self.sidebar.isHidden()))):
            if menu not in menus:
                menus[menu] = self.menuBar().addMenu(menu)
            action = QAction(name, self)
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.WindowShortcut)
            if name == "Settings…":
                action.setMenuRole(QAction.PreferencesRole)
            action.triggered.connect(slot)
            menus[menu].addAction(action)
            self.addAction(action)  # shortcuts work with the menu bar hidden too
            setattr(self, "action_" + name.split()[0].lower().strip("…"), action)

    def restyle(self):
        for part in (self.sidebar, self.header, self.composer, self.view):
            part.restyle()

    # -- model ----------------------------------------------------------------------------------
    def refresh_models(self):
        self.picker.set_models(find_models(self.home / "models"), self.settings.model_path)

    def show_picker(self):
        self.refresh_models()
        self.picker.back_button.setVisible(bool(self.model_info))
        self.pages.setCurrentIndex(0)

    def download(self, repo_id: str):
        target = self.home / "models" / repo_id.replace("/", "--")
        self.picker.set_busy(f"Downloading {repo_id}…")
        self.requestDownload.emit(repo_id, str(target))

    def on_loading(self, path: str):
        self.picker.set_busy(f"Loading {path}…")

    def on_exported(self, path: str):
        self.statusBar().showMessage(f"Exported {path}", 5000)

    def configure_server(self):
        s = self.settings
        self.local_server.configure(s.serve, s.serve_port, s.serve_key)

    def on_serving(self, address: str):
        self.serving.setText(f"Serving {address}" + (" · key required" if self.settings.serve_key else ""))
        self.serving.setAccessibleName(f"Local server at {address}")
        self.serving.show()

    def on_loaded(self, info: dict):
        self.model_info = dict(info)
        self.settings.model_path = info["path"]
        save_settings(self.store, self.settings)
        self.picker.set_idle(f"Loaded {info['name']}")
        self.header.set_model(info["name"], info["precision"], info["memory"])
        self.pages.setCurrentIndex(1)
        self.composer.edit.setFocus()

    # -- conversation ---------------------------------------------------------------------------
    def render(self):
        self.view.show_conversation(self.conversation, self.streaming, self.error)
        self.header.title.setText(self.conversation.title)

    def open_files(self, paths):
        if paths:
            self.composer.attach([str(p) for p in paths])
            self.composer.edit.setFocus()

    def use_example(self, text: str):
        self.composer.edit.setPlainText(text)
        self.composer.edit.setFocus()
        if not self.composer.attachments:
            self.composer.pick_files()

    def send(self, text: str, attachments: list):
        if self.streaming is not None:
            return
        self.conversation.add(Message("user", text, attachments))
        self.composer.clear()
        self.ask()

    def ask(self):
        self.error = ""
        self.streaming = Message("assistant", "", thinking=self.settings.thinking)
        self.started = time.monotonic()
        self.composer.set_busy(True)
        self.view.scroll_to_bottom()
        self.render()
        self.history.save(self.conversation)
        self.refresh_chats()
        messages = [m.to_library() for m in self.conversation.messages]
        self.requestGenerate.emit(GenerateRequest(self.conversation.id, messages, self.settings.generation_options(),
                                                  self.settings.system_prompt))

    def on_text(self, piece: str):
        if self.streaming is None:
            return
        self.streaming.text += piece
        if not self.streaming.thought_seconds and "</think>" in self.streaming.text:
            self.streaming.thought_seconds = time.monotonic() - self.started
        self.render()

    def on_done(self, reason: str, stats: dict):
        if self.streaming is None:
            return
        note = (f"{stats['prompt_tokens']} prompt tokens at {stats['prompt_tps']:.0f} tok/s · "
                f"{stats['generation_tokens']} tokens at {stats['generation_tps']:.1f} tok/s")
        if reason == "cancelled":
            note += " · stopped"
        answer, self.streaming = self.streaming, None
        answer.stats, answer.regions = note, list(stats.get("regions", []))
        if answer.thinking and not answer.thought_seconds:
            answer.thought_seconds = time.monotonic() - self.started
        self.conversation.add(answer)
        self.header.progress.hide()
        self.header.speed.setText(f"{stats['generation_tps']:.1f} tok/s")
        if stats.get("memory") and self.model_info:
            self.model_info["memory"] = stats["memory"]
            self.header.set_model(self.model_info["name"], self.model_info["precision"], stats["memory"])
        self.composer.set_busy(False)
        self.history.save(self.conversation)
        self.render()

    def on_failed(self, message: str):
        if self.pages.currentIndex() == 0:
            self.picker.set_idle(message)
        if self.streaming is not None and self.streaming.text:  # keep what was said before the failure
            self.streaming.stats = "interrupted"
            self.conversation.add(self.streaming)
        self.streaming = None
        self.header.progress.hide()
        self.composer.set_busy(False)
        self.show_error(message)

    def show_error(self, message: str):
        self.error = message
        self.statusBar().showMessage(message, 10000)
        self.render()

    def report_damaged(self):
        damaged = self.history.unreported()
        if damaged:
            self.show_error(f"{len(damaged)} chat file(s) could not be read and were left as they are in "
                            f"{self.history.root}: " + "; ".join(damaged))

    # -- images ---------------------------------------------------------------------------------
    def show_image(self, path: str, regions: list):
        self.image_dialog = ImageDialog(path, regions, self)
        self.image_dialog.show()

    def ask_find_in_image(self, path: str):
        target, ok = QInputDialog.getText(self, "Find in image", "What should be found in the image?")
        if ok and target.strip():
            self.find_in_image(path, target)

    def find_in_image(self, path: str, target: str):
        """Ask where ``target`` is in the image: the answer's boxes are drawn on it."""
        if self.streaming is None:
            self.send(grounding_prompt(target), [Attachment(path, "image")])

    # -- video summaries ------------------------------------------------------------------------
    def summarise(self, path: str):
        if self.streaming is not None:
            return
        self.conversation.add(Message("user", "Summarise this video.", [Attachment(path, "video")]))
        self.composer.clear()
        self.summary_video, self.summary_chapters, self.summary = path, [], None
        self.error = ""
        self.streaming = Message("assistant", chapters_markdown([], progress="Looking for scene changes…"))
        self.composer.set_busy(True)
        self.history.save(self.conversation)
        self.refresh_chats()
        self.render()
        self.requestSummary.emit(self.conversation.id, path, self.settings.summary_options())

    def on_summary_progress(self, stage: str, done: int, total: int, eta: float):
        left = f", about {clock(eta)} left" if eta >= 0 else ""
        text = {"scanning": "Scenes found", "segment": f"Segments summarised: {done}/{total}{left}",
                "chapter": f"Chapters titled: {done}/{total}", "done": "Done"}.get(stage, stage)
        self.statusBar().showMessage(text)
        self.header.set_prompt_progress(done if stage != "done" else total, max(total, 1))
        if self.streaming is not None and stage in ("segment", "scanning"):
            self.streaming.text = chapters_markdown(self.summary_chapters, progress=text)
            self.render()

    def on_summary_chapter(self, chapter):
        self.summary_chapters.append(asdict(chapter))
        if self.streaming is not None:
            self.streaming.text = chapters_markdown(self.summary_chapters, progress="Writing the overview…")
            self.render()

    def on_summary_done(self, summary):
        self.summary = summary
        data = asdict(summary)  # the library's dataclass as plain data; its frames stay in the worker
        text = chapters_markdown(data["chapters"], data["overview"], data["warnings"])
        self.conversation.add(Message("assistant", text, stats=f"{len(summary.chapters)} chapters", summary=data))
        self.streaming = None
        self.header.progress.hide()
        self.composer.set_busy(False)
        self.history.save(self.conversation)
        self.render()

    def want_chapter_frames(self, path: str, starts: list):
        if path in self.thumbnails:
            self.view.set_thumbnails(path, self.thumbnails[path])
        elif Path(path).is_file():
            self.requestChapterFrames.emit(path, starts)

    def on_thumbnails(self, path: str, frames: list):
        self.thumbnails[path] = frames
        self.view.set_thumbnails(path, frames)

    def on_frames(self, path: str, thumbs: list, duration: float):
        self.composer.show_frames(path, thumbs, duration)

    def on_link(self, url: str):
        if url.startswith("seek:"):
            seconds, _, video = url[5:].partition("@")
            video = video or self.summary_video or next(
                (a.path for m in reversed(self.conversation.messages) for a in m.attachments if a.kind == "video"), "")
            if video:
                self.requestFrame.emit(video, float(seconds))

    def choose_export(self):
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
    def stop(self):
        if self.streaming is not None:
            self.worker.cancel()

    def copy_text(self, text: str):
        QGuiApplication.clipboard().setText(text)
        self.statusBar().showMessage("Copied", 2000)

    def copy_answer(self):
        """The last answer as the reader sees it: without the thinking and the box coordinates."""
        answers = [m for m in self.conversation.messages if m.role == "assistant"]
        if answers:
            _, answer, _ = split_thinking(answers[-1].text, answers[-1].thinking)
            self.copy_text(readable(answer).replace("**", ""))

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
        self.composer.edit.setFocus()
        self.history.save(self.conversation)
        self.render()

    def open_settings(self):
        self.settings_dialog = SettingsDialog(self.settings, self)
        self.settings_dialog.accepted.connect(self.apply_settings)
        self.settings_dialog.open()

    def apply_settings(self):
        adapter = self.settings.adapter_path
        self.settings = self.settings_dialog.result_settings()
        if self.settings.adapter_path != adapter:
            self.requestAdapter.emit(self.settings.adapter_path)
            if self.model_info:  # the loaded model again, with (or without) the adapters
                self.requestLoad.emit(self.model_info["path"])
        save_settings(self.store, self.settings)
        self.theme.set_appearance(self.settings.appearance)
        self.configure_server()

    def focus_search(self):
        self.sidebar.show()
        self.sidebar.search.setFocus()
        self.sidebar.search.selectAll()

    # -- history --------------------------------------------------------------------------------
    def refresh_chats(self):
        self.sidebar.set_chats(self.history.list(self.sidebar.search.text()), self.conversation.id)

    def open_selected(self, item, _previous=None):
        if item is None or self.streaming is not None:
            return
        try:
            self.conversation = self.history.load(item.data(ID_ROLE))
        except DamagedFile as e:
            self.show_error(f"This chat can't be opened: {e}. The file was left as it is.")
            return
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
        self.composer.edit.setFocus()

    def delete_chat(self, conversation_id: Optional[str] = None):
        item = self.sidebar.chats.currentItem()
        conversation_id = conversation_id or (item.data(ID_ROLE) if item is not None else None)
        if conversation_id is None or self.streaming is not None:
            return
        self.history.delete(conversation_id)
        if conversation_id == self.conversation.id:
            self.conversation = Conversation()
        self.refresh_chats()
        self.render()

    def closeEvent(self, event):
        # The running job stops at its next token or prefill chunk; wait for it, so the thread
        # is never destroyed while it still runs.
        self.worker.cancel()
        self.local_server.shutdown()
        self.thread.quit()
        self.thread.wait()
        super().closeEvent(event)
