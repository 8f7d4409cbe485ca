"""The desktop app, offscreen, with the tiny model and the real worker thread."""

import json

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from app.history import History
from app.window import MainWindow
from tests.media import make_video, noise_image

WAIT = 60_000  # ms; the tiny model answers in well under a second, a loaded CI machine is slower


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def open_window(qtbot, home, model=None):
    window = MainWindow(home)
    qtbot.addWidget(window)
    window.show()
    if model is not None:
        window.settings.temperature = 0.0  # greedy: the random model's answers are the same on every run
        window.requestLoad.emit(str(model))
        qtbot.waitUntil(lambda: window.pages.currentIndex() == 1, timeout=WAIT)
    return window


def ask(qtbot, window, text, done_timeout=WAIT):
    window.composer.edit.setPlainText(text)
    with qtbot.waitSignal(window.worker.done, timeout=done_timeout) as blocker:
        qtbot.mouseClick(window.composer.send_button, Qt.LeftButton)
    settle(qtbot, window)
    return blocker.args


def settle(qtbot, window):
    """The window has taken the answer in (its own slot ran, not just the worker's signal)."""
    qtbot.waitUntil(lambda: window.streaming is None and window.composer.send_button.isVisible(), timeout=WAIT)


def drop(widget, paths):
    """What the window system sends for a drag from a file manager: enter, then drop."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPoint(5, 5), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    assert QApplication.sendEvent(widget, enter) and enter.isAccepted()
    assert QApplication.sendEvent(widget, QDropEvent(QPointF(5, 5), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))


def test_first_run_offers_model_choice_and_remembers_it(qtbot, home, tiny):
    window = open_window(qtbot, home)
    assert window.pages.currentIndex() == 0, "no model yet: the picker shows"
    window.picker.folderChosen.emit(str(tiny.mlx_path))
    qtbot.waitUntil(lambda: window.pages.currentIndex() == 1, timeout=WAIT)
    window.close()
    again = open_window(qtbot, home)
    qtbot.waitUntil(lambda: again.pages.currentIndex() == 1, timeout=WAIT)  # the remembered model loads by itself
    assert again.settings.model_path == str(tiny.mlx_path)


def test_offline_download_says_so_and_does_not_hang(qtbot, home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    window = open_window(qtbot, home)
    with qtbot.waitSignal(window.worker.failed, timeout=WAIT) as blocker:
        window.picker.downloadRequested.emit("openbmb/MiniCPM-V-4.6")
    assert "not reachable" in blocker.args[0]
    qtbot.waitUntil(lambda: window.picker.download_button.isEnabled(), timeout=WAIT)
    assert "not reachable" in window.picker.message.text() and window.picker.download_button.isEnabled()


def test_dropped_files_attach(qtbot, home, tmp_path):
    window = open_window(qtbot, home)
    image = tmp_path / "photo.png"
    noise_image(64, 48).save(image)
    video = make_video(tmp_path / "clip.mp4", 2.0, 5)
    with qtbot.waitSignal(window.worker.frames, timeout=WAIT) as frames:
        drop(window.composer, [image, video, tmp_path / "notes.txt"])
    qtbot.waitUntil(lambda: window.composer.frames.count() == 2, timeout=WAIT)
    assert [a.kind for a in window.composer.attachments] == ["image", "video"]
    assert window.composer.strip.count() == 2
    assert [t for t, *_ in frames.args[1]] == [0.0, 1.0], "the frames the model will see, with times"
    assert window.composer.frames.count() == 2 and window.composer.frames.item(1).text() == "0:01"
    assert "notes.txt is not an image or a video" in window.error


def test_question_streams_into_the_view_and_is_saved(qtbot, home, tiny, tmp_path):
    window = open_window(qtbot, home, tiny.mlx_path)
    image = tmp_path / "photo.png"
    noise_image(300, 200, seed=3).save(image)
    window.composer.attach([str(image)])
    pieces = []
    window.worker.text.connect(pieces.append)
    reason, stats = ask(qtbot, window, "Describe this image.")
    assert pieces and reason in ("stop", "length") and stats["generation_tokens"] > 0
    answer = window.conversation.messages[-1]
    assert answer.role == "assistant" and answer.text == "".join(pieces)
    assert "tok/s" in window.speed.text()
    saved = json.loads((home / "conversations" / f"{window.conversation.id}.json").read_text())
    assert saved["messages"][0]["attachments"][0]["path"] == str(image)


def test_stop_ends_the_answer_and_the_next_question_works(qtbot, home, tiny):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_tokens = 3000
    window.settings.temperature = 0.0  # greedy: this prompt's answer runs long without an end token
    window.worker.text.connect(lambda _: window.composer.stop_button.click())
    window.composer.edit.setPlainText("Go on.")
    with qtbot.waitSignal(window.worker.done, timeout=WAIT) as blocker:
        window.composer.send_button.click()
    assert blocker.args[0] == "cancelled" and blocker.args[1]["generation_tokens"] < 3000
    window.worker.text.disconnect()
    settle(qtbot, window)
    window.settings.max_tokens = 4
    reason, _ = ask(qtbot, window, "And a short one?")
    assert reason in ("stop", "length")
    assert [m.role for m in window.conversation.messages] == ["user", "assistant", "user", "assistant"]


def test_an_error_shows_in_the_window_and_keeps_the_conversation(qtbot, home, tiny, tmp_path):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_tokens = 4
    ask(qtbot, window, "Hello?")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    window.composer.attach([str(broken)])
    window.composer.edit.setPlainText("What is this?")
    with qtbot.waitSignal(window.worker.failed, timeout=WAIT) as blocker:
        window.composer.send_button.click()
    assert "This file can't be used" in blocker.args[0] and "broken.jpg" in blocker.args[0]
    settle(qtbot, window)
    assert "This file can't be used" in window.view.plain_text()
    assert len(window.conversation.messages) == 3 and window.composer.send_button.isVisible()


def test_history_survives_a_restart_and_can_be_searched_and_deleted(qtbot, home, tiny):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_tokens = 3
    ask(qtbot, window, "Zebras in the savanna?")
    window.new_chat()
    ask(qtbot, window, "Penguins on the ice?")
    window.close()
    again = open_window(qtbot, home)
    assert again.chats.count() == 2
    again.search.setText("zebras")
    assert again.chats.count() == 1 and "Zebras" in again.chats.item(0).text()
    again.chats.setCurrentRow(0)
    assert again.conversation.messages[0].text == "Zebras in the savanna?"
    again.delete_chat()
    again.search.setText("")
    assert again.chats.count() == 1 and len(History(home / "conversations").list()) == 1


def test_settings_persist(qtbot, home):
    window = open_window(qtbot, home)
    window.settings.temperature = 0.2
    window.settings.downsample_mode = "4x"
    window.settings.system_prompt = "Be brief."
    from app.settings import save_settings

    save_settings(window.store, window.settings)
    window.close()
    again = open_window(qtbot, home)
    assert (again.settings.temperature, again.settings.downsample_mode, again.settings.system_prompt) == \
        (0.2, "4x", "Be brief.")


def test_moved_attachment_is_marked(qtbot, home, tmp_path):
    from app.chat_view import render_message
    from app.history import Attachment, Message

    gone = Message("user", "look", [Attachment(str(tmp_path / "moved.png"), "image")])
    assert "missing: the file was moved or deleted" in render_message(gone)


def test_video_without_a_question_is_summarised_with_clickable_times(qtbot, home, tiny, tmp_path):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_frames = 16
    video = make_video(tmp_path / "trip.mp4", seconds=12.0, fps=10, scenes=(0, 1, 2))
    with qtbot.waitSignal(window.worker.frames, timeout=WAIT):
        drop(window.composer, [video])
    assert window.composer.send_button.text() == "Summarise"
    chapters = []
    window.worker.summary_chapter.connect(chapters.append)
    with qtbot.waitSignal(window.worker.summary_done, timeout=WAIT) as done:
        window.composer.send_button.click()
    summary = done.args[0]
    settle(qtbot, window)
    assert chapters and [c.title for c in chapters] == [c.title for c in summary.chapters]
    assert "(seek:" not in window.view.plain_text() and "0:00" in window.view.plain_text()
    assert window.conversation.messages[-1].role == "assistant"
    with qtbot.waitSignal(window.worker.frame_ready, timeout=WAIT) as frame:
        window.view.linkActivated.emit("seek:4.00")
    assert abs(frame.args[1] - 4.0) < 0.2 and window.viewer.isVisible()
    out = tmp_path / "chapters.srt"
    with qtbot.waitSignal(window.worker.exported, timeout=WAIT):
        window.export_summary(str(out))
    assert out.read_text().startswith("1\n00:00:00,000 --> ")
    # A follow-up question is answered from the frames the summary saw: no decoding, no encoding.
    from mlx_minicpmv.processing import video as video_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    video_module.iter_frames, real = no_decoding, video_module.iter_frames
    try:
        window.settings.max_tokens = 4
        reason, stats = ask(qtbot, window, "What happens after the cut?")
    finally:
        video_module.iter_frames = real
    assert reason in ("stop", "length") and stats["prompt_tokens"] > 50 and not window.error


def test_summary_times_stay_links_whatever_the_model_wrote(qtbot):
    """Generated text with stray backticks, brackets and control bytes must not swallow the links."""
    from types import SimpleNamespace as NS

    from app.chat_view import ChatView
    from app.summary_view import chapters_markdown

    nasty = "`unclosed [bracket]( *star \x13\x06 <tts_pad> _under # hash"
    segments = [NS(start=0.0, end=5.0, text=nasty), NS(start=5.0, end=10.0, text="fine")]
    view = ChatView()
    qtbot.addWidget(view)
    view.setMarkdown(chapters_markdown([NS(start=0.0, end=10.0, title=nasty, segments=segments)], overview=nasty))
    text = view.toPlainText()
    assert "(seek:" not in text and text.count("0:05") == 2 and "unclosed [bracket]" in text
    assert view.toHtml().count('href="seek:') == 6
