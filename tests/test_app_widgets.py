"""The window's parts without a model: drop overlay, chips, keys, boxes drawn on images, light and
dark, models found on disk, scrolling, the command line and files opened by the system."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QEvent, QMimeData, Qt, QUrl
from PySide6.QtGui import QColor, QFileOpenEvent, QGuiApplication, QImage
from PySide6.QtWidgets import QApplication

from app.history import Attachment, Conversation, Message
from app.image_view import AnnotatedImage
from tests.app_driver import WAIT, drag_enter, drag_leave, drop, open_window, settle
from tests.media import make_video, noise_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    noise_image(64, 48).save(path)
    return path


def test_the_overlay_shows_while_files_are_dragged_over_the_window(qtbot, home, photo):
    window = open_window(qtbot, home)
    overlay = window.drop_area.overlay
    assert not overlay.isVisible()
    assert drag_enter(window.drop_area, [photo]).isAccepted()
    assert overlay.isVisible() and overlay.geometry() == window.drop_area.rect()
    drag_leave(window.drop_area)
    assert not overlay.isVisible()
    drop(window.drop_area, [photo])
    assert not overlay.isVisible() and [a.path for a in window.composer.attachments] == [str(photo)]


def test_chips_show_the_file_and_remove(qtbot, home, photo, tmp_path):
    window = open_window(qtbot, home)
    other = tmp_path / "other.jpg"
    noise_image(30, 30).save(other)
    window.open_files([photo, other])
    chips = window.composer.chips
    assert [c.name.text() for c in chips] == ["photo.png", "other.jpg"]
    assert chips[0].detail.text().endswith(" bytes") or chips[0].detail.text().endswith("KB")
    assert not chips[0].picture.pixmap().isNull() and chips[0].remove_button.accessibleName() == "Remove photo.png"
    chips[0].remove_button.click()
    assert [a.path for a in window.composer.attachments] == [str(other)]
    window.composer.chips[0].remove_button.click()
    assert window.composer.attachments == [] and not window.composer.strip.isVisible()


def test_pasted_files_attach(qtbot, home, photo):
    window = open_window(qtbot, home)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(photo))])
    QGuiApplication.clipboard().setMimeData(mime)
    window.composer.edit.setFocus()
    qtbot.keyClick(window.composer.edit, Qt.Key_V, Qt.ControlModifier)
    assert [a.path for a in window.composer.attachments] == [str(photo)]
    assert window.composer.edit.toPlainText() == "", "the file is attached, not its path pasted as text"


def test_enter_sends_shift_enter_breaks_the_line(qtbot, home):
    window = open_window(qtbot, home)
    sent = []
    window.composer.sendRequested.connect(lambda text, files: sent.append(text))
    edit = window.composer.edit
    qtbot.keyClicks(edit, "first line")
    qtbot.keyClick(edit, Qt.Key_Return, Qt.ShiftModifier)
    qtbot.keyClicks(edit, "second")
    assert edit.toPlainText() == "first line\nsecond" and sent == []
    qtbot.keyClick(edit, Qt.Key_Return)
    assert sent == ["first line\nsecond"]


def test_keys_do_what_they_say(qtbot, home):
    window = open_window(qtbot, home)
    window.conversation.add(Message("user", "hi"))
    qtbot.keyClick(window, Qt.Key_N, Qt.ControlModifier)
    assert window.conversation.messages == [] and window.composer.edit.hasFocus()
    qtbot.keyClick(window, Qt.Key_F, Qt.ControlModifier)
    assert window.sidebar.search.hasFocus()
    qtbot.keyClick(window, Qt.Key_Comma, Qt.ControlModifier)
    qtbot.waitUntil(window.settings_dialog.isVisible, timeout=WAIT)
    window.settings_dialog.reject()
    cancelled = []
    window.worker.cancel = lambda: cancelled.append(True)  # Esc asks the worker to stop
    window.streaming = Message("assistant", "…")
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=WAIT)
    qtbot.keyClick(window, Qt.Key_Escape)
    window.streaming = None
    assert cancelled == [True]


def test_every_control_has_an_accessible_name(qtbot, home, photo):
    from PySide6.QtWidgets import QAbstractButton, QLineEdit, QListWidget, QPlainTextEdit

    window = open_window(qtbot, home)
    window.open_files([photo])
    window.conversation.add(Message("user", "look", [Attachment(str(photo), "image")]))
    window.conversation.add(Message("assistant", "A ```py\nx = 1\n``` block", stats="1 prompt tokens"))
    window.render()
    for page in (0, 1):
        window.pages.setCurrentIndex(page)
        controls = [w for kind in (QAbstractButton, QLineEdit, QPlainTextEdit, QListWidget)
                    for w in window.findChildren(kind) if w.isVisibleTo(window) and w.focusPolicy() != Qt.NoFocus]
        unnamed = [w for w in controls if not (w.accessibleName() or (isinstance(w, QAbstractButton) and w.text()))]
        assert controls and unnamed == [], unnamed


def draw(widget) -> QImage:
    return widget.grab().toImage().convertToFormat(QImage.Format_RGB32)


def near(color: QColor, expected: str, tolerance: int = 40) -> bool:
    e = QColor(expected)
    return max(abs(color.red() - e.red()), abs(color.green() - e.green()), abs(color.blue() - e.blue())) <= tolerance


def test_boxes_in_an_answer_are_drawn_at_their_pixels(qtbot, tmp_path):
    """A 320 x 240 grey image, a box on 250..750 x 500..1000 and a point: the box's edge is in the
    first region colour at x = 80..240, y = 120..240; outside it the image is untouched."""
    from app import theme

    path = tmp_path / "grey.png"
    grey = QImage(320, 240, QImage.Format_RGB32)
    grey.fill(QColor("#808080"))
    grey.save(str(path))
    view = AnnotatedImage(str(path), [("", "box", (250, 500, 750, 1000)), ("", "point", (100, 100))])
    qtbot.addWidget(view)
    assert (view.width(), view.height()) == (320, 240), "shown at its own size"
    image = draw(view)
    red, green = theme.colors().region_colors[:2]
    for x, y in ((81, 180), (238, 180), (160, 121), (160, 238)):
        assert near(image.pixelColor(x, y), red), (x, y, image.pixelColor(x, y).name())
    for x, y in ((76, 180), (160, 115), (300, 60), (40, 200)):
        assert near(image.pixelColor(x, y), "#808080", 6), (x, y, image.pixelColor(x, y).name())
    assert not near(image.pixelColor(160, 180), "#808080", 6), "the box is tinted inside"
    assert near(image.pixelColor(32, 24), green), "the point at (100, 100) of 1000 is at pixel (32, 24)"


def test_an_answer_with_boxes_draws_them_on_the_image_asked_about(qtbot, home, tmp_path, monkeypatch):
    """The worker reads the boxes from the streamed answer (faked here at the library's edge:
    the tiny random model never writes any) and the answer shows the image with them, labelled."""
    import mlx_minicpmv

    from mlx_minicpmv.generate import GenerationResponse

    answer = ["I see ", "<ref>a cat</ref><box>100 100 500 900</box>", " and ",
              "<ref>a ball</ref><point>750 250</point>."]

    def fake_stream(model, processor, messages, **options):
        for i, piece in enumerate(answer):
            yield GenerationResponse(piece, i, None, 10, 1.0, i + 1, 1.0, 0.0, "stop" if i == len(answer) - 1 else None)

    monkeypatch.setattr(mlx_minicpmv, "stream_generate", fake_stream)
    path = tmp_path / "pets.png"
    noise_image(200, 100).save(path)
    window = open_window(qtbot, home)
    window.worker.model = SimpleNamespace(make_cache=list)  # "loaded": the stream above stands in for it
    window.pages.setCurrentIndex(1)
    with qtbot.waitSignal(window.worker.done, timeout=WAIT) as done:
        window.find_in_image(str(path), "the cat")
    settle(qtbot, window)
    assert done.args[1]["regions"] == [("a cat", "box", (100.0, 100.0, 500.0, 900.0)),
                                       ("a ball", "point", (750.0, 250.0))]
    card = window.view.cards[-1]
    assert [i.path for i in card.images] == [str(path)] and len(card.images[0].regions) == 2
    assert card.body.plain_text() == "I see a cat and a ball.", "the tags read as words"
    image = draw(card.images[0])
    red = window.theme.colors.region_colors[0]
    assert near(image.pixelColor(21, 50), red), "the cat's box: left edge at 100/1000 of 200 px"
    saved = json.loads((home / "conversations" / f"{window.conversation.id}.json").read_text())
    assert saved["messages"][1]["regions"][0] == ["a cat", "box", [100.0, 100.0, 500.0, 900.0]]
    QGuiApplication.clipboard().setText("")
    window.copy_answer()
    assert QGuiApplication.clipboard().text() == "I see a cat and a ball."
    with qtbot.waitSignal(card.images[0].clicked):
        qtbot.mouseClick(card.images[0], Qt.LeftButton)
    assert window.image_dialog.isVisible() and window.image_dialog.image.regions == card.images[0].regions


def test_dark_mode_follows_the_system_live(qtbot, home):
    from app.theme import DARK, LIGHT

    window = open_window(qtbot, home)
    assert window.theme.appearance == "system"
    QGuiApplication.styleHints().colorSchemeChanged.emit(Qt.ColorScheme.Light)
    assert QApplication.palette().window().color() == QColor(LIGHT.window)
    before = draw(window.view).pixelColor(20, 20)
    QGuiApplication.styleHints().colorSchemeChanged.emit(Qt.ColorScheme.Dark)  # what macOS sends on a switch
    assert QApplication.palette().window().color() == QColor(DARK.window)
    after = draw(window.view).pixelColor(20, 20)
    assert near(before, LIGHT.window, 3) and near(after, DARK.window, 3), (before.name(), after.name())
    QGuiApplication.styleHints().colorSchemeChanged.emit(Qt.ColorScheme.Light)
    assert near(draw(window.view).pixelColor(20, 20), LIGHT.window, 3)


def fake_checkpoint(folder: Path, model_type="minicpmv4_6", quantization=None, dtype="BF16") -> Path:
    folder.mkdir(parents=True)
    config = {"model_type": model_type}
    if quantization:
        config["quantization"] = quantization
    (folder / "config.json").write_text(json.dumps(config))
    header = json.dumps({"w": {"dtype": dtype, "shape": [4, 4], "data_offsets": [0, 32]}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(32))
    return folder


def test_the_picker_lists_models_in_the_hf_cache_and_lm_studio(qtbot, home, tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    snapshot = fake_checkpoint(cache / "models--openbmb--MiniCPM-V-4.6" / "snapshots" / "abc123")
    (cache / "models--openbmb--MiniCPM-V-4.6" / "refs").mkdir()
    (cache / "models--openbmb--MiniCPM-V-4.6" / "refs" / "main").write_text("abc123")
    fake_checkpoint(cache / "models--someone--llama" / "snapshots" / "x", model_type="llama")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    fake_checkpoint(tmp_path / "user" / ".lmstudio" / "models" / "mlx-community" / "MiniCPM-V-4.6-4bit",
                    quantization={"group_size": 64, "bits": 4}, dtype="U32")
    fake_checkpoint(tmp_path / "user" / ".cache" / "lm-studio" / "models" / "mlx-community" / "MiniCPM-V-4.7-8bit",
                    model_type="minicpmv4_7", quantization={"group_size": 64, "bits": 8})
    fake_checkpoint(home / "models" / "MiniCPM-V-4.6-fp32", dtype="F32")
    window = open_window(qtbot, home)
    listed = window.picker.listed()
    assert listed == [
        "MiniCPM-V-4.6-fp32\nThis app · fp32 · 0 MB",
        "openbmb/MiniCPM-V-4.6\nHugging Face cache · bf16 · 0 MB",
        "mlx-community/MiniCPM-V-4.6-4bit\nLM Studio · 4-bit · 0 MB",
        "mlx-community/MiniCPM-V-4.7-8bit\nLM Studio · 8-bit · 0 MB",
    ]
    chosen = []
    window.picker.folderChosen.disconnect()
    window.picker.folderChosen.connect(chosen.append)
    window.picker.models.setCurrentRow(1)
    window.picker.use_button.click()
    assert chosen == [str(snapshot)]


def test_the_first_run_offers_both_models_for_download(qtbot, home):
    window = open_window(qtbot, home)
    picker = window.picker
    offered = [picker.repo.itemText(i) for i in range(picker.repo.count())]
    assert offered == ["openbmb/MiniCPM-V-4.6", "openbmb/MiniCPM-V-4.7-1B"]
    assert all(picker.repo.itemData(i, Qt.ToolTipRole) for i in range(picker.repo.count())), "each says what it is"
    asked = []
    picker.downloadRequested.disconnect()
    picker.downloadRequested.connect(asked.append)
    picker.repo.setCurrentIndex(1)
    assert picker.repo_about.text().startswith("MiniCPM-V 4.7")
    picker.download_button.click()
    picker.repo.setEditText("someone/MiniCPM-V-4.7-1B-8bit")  # or any repo id typed in
    picker.download_button.click()
    assert asked == ["openbmb/MiniCPM-V-4.7-1B", "someone/MiniCPM-V-4.7-1B-8bit"]


def long_conversation() -> Conversation:
    conversation = Conversation()
    for i in range(30):
        conversation.add(Message("user", f"Question {i}?"))
        conversation.add(Message("assistant", f"Answer {i}. " + "Words go on. " * 30, stats="stats"))
    return conversation


def test_scroll_stays_put_while_reading_above_and_follows_at_the_bottom(qtbot, home):
    window = open_window(qtbot, home)
    window.pages.setCurrentIndex(1)
    window.conversation = long_conversation()
    window.render()
    bar = window.view.scroll.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0 and bar.value() == bar.maximum(), timeout=WAIT)
    window.streaming = Message("assistant", "")
    window.render()
    for i in range(20):  # the answer grows while the reader is at the bottom: it stays in view
        window.on_text(f"More text {i}. " * 8)
        QApplication.processEvents()
    assert bar.value() == bar.maximum()
    bar.setValue(bar.maximum() // 3)  # the reader scrolls up to read
    reading = bar.value()
    for i in range(20):
        window.on_text(f"Even more {i}. " * 8)
        QApplication.processEvents()
    assert bar.value() == reading and bar.maximum() > reading
    window.on_done("stop", dict(prompt_tokens=1, prompt_tps=1.0, generation_tokens=1, generation_tps=1.0,
                                peak_memory=0.0, regions=[]))
    QApplication.processEvents()
    assert bar.value() == reading, "the end of the answer does not pull the reader down either"


def test_thinking_is_folded_under_how_long_it_took(qtbot, home):
    window = open_window(qtbot, home)
    window.conversation.add(Message("user", "Why?"))
    window.conversation.add(Message("assistant", "Let me see.\n</think>\n\nBecause.", thinking=True,
                                    thought_seconds=3.2))
    window.render()
    card = window.view.cards[-1]
    assert card.thinking.toggle.text() == "Thought for 3 s" and card.body.plain_text() == "Because."
    assert not card.thinking.body.isVisibleTo(card)
    card.thinking.toggle.click()
    assert card.thinking.body.isVisibleTo(card) and card.thinking.body.shown() == "Let me see."


def test_code_blocks_are_highlighted_and_copied(qtbot, home):
    window = open_window(qtbot, home)
    window.conversation.add(Message("user", "Code?"))
    window.conversation.add(Message("assistant", "Here:\n```python\ndef f():\n    return 1\n```\nDone."))
    window.render()
    block = window.view.cards[-1].body.blocks[1]
    assert block.language.text() == "python" and "color" in block.body.text(), "Pygments coloured it"
    block.copy_button.click()
    assert QGuiApplication.clipboard().text() == "def f():\n    return 1"
    assert block.copy_button.text() == "Copied"


def test_actions_show_on_hover_and_keep_their_place(qtbot, home):
    window = open_window(qtbot, home)
    window.conversation.add(Message("user", "Hi"))
    window.conversation.add(Message("assistant", "Hello.", stats="s"))
    window.render()
    card = window.view.cards[-1]
    height = card.actions.height()
    assert not card.actions_shown()
    QApplication.sendEvent(card, QEvent(QEvent.Enter))
    assert card.actions_shown() and card.regenerate_button.isVisibleTo(card)
    assert not card.edit_button.isVisibleTo(card), "edit is on your last question, regenerate on the answer"
    assert window.view.cards[0].edit_button.isVisibleTo(window.view.cards[0])
    QApplication.sendEvent(card, QEvent(QEvent.Leave))
    assert not card.actions_shown() and card.actions.height() == height


def test_summary_times_stay_links_whatever_the_model_wrote(qtbot):
    """Generated text with stray backticks, brackets and control bytes must not swallow the links."""
    from app.message_view import Prose
    from app.summary_view import chapters_markdown

    nasty = "`unclosed [bracket]( *star \x13\x06 <tts_pad> _under # hash"
    segments = [dict(start=0.0, end=5.0, text=nasty), dict(start=5.0, end=10.0, text="fine")]
    label = Prose(chapters_markdown([dict(start=0.0, end=10.0, title=nasty, segments=segments)], overview=nasty))
    qtbot.addWidget(label)
    text = label.shown()
    assert "(seek:" not in text and text.count("0:05") == 2 and "unclosed [bracket]" in text and "<tts_pad>" in text
    from PySide6.QtGui import QTextDocument

    document = QTextDocument()
    document.setMarkdown(label.text())
    assert document.toHtml().count('href="seek:') == 6


def test_a_moved_attachment_is_marked(qtbot, home, tmp_path):
    window = open_window(qtbot, home)
    window.conversation.add(Message("user", "look", [Attachment(str(tmp_path / "moved.mp4"), "video")]))
    window.render()
    tile = window.view.cards[0].videos[0]
    assert any(label.text() == "moved.mp4 — missing" for label in tile.findChildren(type(tile.picture)))


def test_app_help_runs_without_a_window():
    out = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: minicpmv-app [-h] [--model DIR_OR_REPO]")
    assert "FILES" in out.stdout and out.stderr == ""


def test_app_started_with_files_has_them_attached(qtbot, home, tmp_path, photo, monkeypatch):
    """``minicpmv-app --model DIR FILE…``: the window opens with the files attached and loads the model."""
    from app.__main__ import create_window, parse_args

    monkeypatch.setenv("MINICPMV_APP_HOME", str(home))
    video = make_video(tmp_path / "clip.mp4", 1.0, 5)
    args = parse_args(["--model", str(tmp_path / "no-such-model"), str(photo), str(video)])
    window = create_window(args, QApplication.instance())
    qtbot.addWidget(window)
    assert [a.path for a in window.composer.attachments] == [str(photo), str(video)]
    qtbot.waitUntil(lambda: "no-such-model" in window.picker.message.text(), timeout=WAIT)


def test_files_opened_by_the_system_arrive_as_attachments(qtbot, home, photo, monkeypatch):
    """macOS sends a QFileOpenEvent for a file dropped on the Dock icon or opened with "Open With"."""
    from app.__main__ import Application, create_window, parse_args

    monkeypatch.setenv("MINICPMV_APP_HOME", str(home))
    app = QApplication.instance()
    window = create_window(parse_args([]), app)
    qtbot.addWidget(window)
    handler = SimpleNamespace(window=window, pending=[])
    event = QFileOpenEvent(str(photo))
    assert Application.event(handler, event) is True
    assert [a.path for a in window.composer.attachments] == [str(photo)]
    early = SimpleNamespace(window=None, pending=[])
    Application.event(early, QFileOpenEvent(str(photo)))  # before the window exists: kept for it
    assert early.pending == [str(photo)]
