"""Driving the app's window in tests as a person would: open it, drop files, type, send, wait for
the window's own reaction (never a fixed sleep: CI has two busy cores)."""

from PySide6.QtCore import QMimeData, QObject, QPoint, QPointF, Qt, QUrl, Slot
from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from app.window import MainWindow

WAIT = 60_000  # ms; the tiny model answers in well under a second, a loaded CI machine is slower


def open_window(qtbot, home, model=None, **kwargs):
    window = MainWindow(home, **kwargs)
    qtbot.addWidget(window)
    window.show()
    activate(qtbot, window)
    if model is not None:
        window.settings.temperature = 0.0  # greedy: the random model's answers are the same on every run
        window.requestLoad.emit(str(model))
        qtbot.waitUntil(lambda: window.pages.currentIndex() == 1, timeout=WAIT)
    return window


def activate(qtbot, window):
    """Shortcuts (Ctrl/Cmd+N, Esc, ...) go to the active window; a closed dialog may leave none."""
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=WAIT)


def settle(qtbot, window):
    """The window has taken the answer in (its own slot ran, not just the worker's signal)."""
    qtbot.waitUntil(lambda: window.streaming is None and window.composer.send_button.isVisible(), timeout=WAIT)


def ask(qtbot, window, text, attachments=()):
    """Type ``text`` (with files attached), press Enter, wait for the answer; (reason, stats)."""
    if attachments:
        window.composer.attach([str(a) for a in attachments])
    window.composer.edit.setPlainText(text)
    with qtbot.waitSignal(window.worker.done, timeout=WAIT) as blocker:
        qtbot.keyClick(window.composer.edit, Qt.Key_Return)
    settle(qtbot, window)
    return blocker.args


def mime_of(paths) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return mime


def drag_enter(widget, paths) -> QDragEnterEvent:
    mime = mime_of(paths)  # the event only points at it: it must outlive the event
    enter = QDragEnterEvent(QPoint(5, 5), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    enter.mime = mime
    QApplication.sendEvent(widget, enter)
    return enter


def drag_leave(widget) -> None:
    QApplication.sendEvent(widget, QDragLeaveEvent())


def drop(widget, paths):
    """What the window system sends for a drag from a file manager: enter, then drop."""
    assert drag_enter(widget, paths).isAccepted()
    mime = mime_of(paths)
    event = QDropEvent(QPointF(5, 5), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    assert QApplication.sendEvent(widget, event)


def answer_card(window):
    return [c for c in window.view.cards if c.message.role == "assistant"][-1]


class OnGui(QObject):
    """A slot that runs ``callback`` on the GUI thread when a worker signal arrives (a plain
    lambda would run on the worker's thread, where widgets must not be touched)."""

    def __init__(self, callback, parent):
        super().__init__(parent)
        self.callback = callback

    @Slot()
    def run(self, *args):
        self.callback()
