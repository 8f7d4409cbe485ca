"""The desktop app, offscreen, with the tiny model and the real worker thread: what a person
does and what they see."""

import json
import re
import time

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.history import History
from tests.app_driver import WAIT, OnGui, activate, answer_card, ask, drop, open_window, settle
from tests.media import make_video, noise_image


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    noise_image(300, 200, seed=3).save(path)
    return path


def prompt_tokens(card) -> int:
    """The prompt size the answer's footer shows."""
    return int(re.match(r"(\d+) prompt tokens", card.stats.text()).group(1))


def test_first_run_offers_model_choice_and_remembers_it(qtbot, home, tiny):
    window = open_window(qtbot, home)
    assert window.pages.currentIndex() == 0, "no model yet: the picker shows"
    window.picker.folderChosen.emit(str(tiny.mlx_path))
    qtbot.waitUntil(lambda: window.pages.currentIndex() == 1, timeout=WAIT)
    assert window.header.model.text().startswith("mlx-base · fp32 · ")
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


def test_cancelling_a_download_stops_it_and_saves_nothing(qtbot, home, monkeypatch):
    """The Hub is faked at huggingface_hub's edge: a download that reports progress until stopped."""
    import huggingface_hub

    def endless_download(repo_id, allow_patterns=None, tqdm_class=None, **kwargs):
        bar = tqdm_class(total=10 ** 9, unit="B")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            bar.update(1_000_000)  # raises once Cancel was pressed
            time.sleep(0.005)
        raise AssertionError("the download was never cancelled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", endless_download)
    window = open_window(qtbot, home)
    window.worker.download_progress.connect(OnGui(window.picker.cancel_button.click, window).run)
    with qtbot.waitSignal(window.worker.failed, timeout=WAIT) as blocker:
        window.picker.download_button.click()
    assert blocker.args[0] == "Download cancelled. Nothing was saved."
    qtbot.waitUntil(lambda: window.picker.download_button.isEnabled(), timeout=WAIT)
    assert window.picker.message.text() == "Download cancelled. Nothing was saved."
    assert not window.picker.cancel_button.isVisible() and not (home / "models").exists()


def test_dropped_files_attach_and_the_preview_leaves_the_frames_whole(qtbot, home, tmp_path, photo):
    window = open_window(qtbot, home)
    video = make_video(tmp_path / "clip.mp4", 2.0, 5)
    with qtbot.waitSignal(window.worker.frames, timeout=WAIT) as frames:
        drop(window.drop_area, [photo, video, tmp_path / "notes.txt"])
    qtbot.waitUntil(lambda: window.composer.frames.count() == 2, timeout=WAIT)
    assert [a.kind for a in window.composer.attachments] == ["image", "video"]
    assert [c.name.text() for c in window.composer.chips] == ["photo.png", "clip.mp4"]
    assert [t for t, *_ in frames.args[1]] == [0.0, 1.0], "the frames the model will see, with times"
    assert window.composer.frames.item(1).text() == "0:01"
    assert window.composer.chips[1].detail.text().startswith("Video · 0:02 · ")
    assert "notes.txt is not an image or a video" in window.error
    # The thumbnails are copies: the frames kept for the question stay full size.
    from mlx_minicpmv.processing.video import load_video_units

    s = window.settings
    assert {image.size for image, _ in load_video_units(str(video), s.max_frames, 1, s.fps)} == {(96, 64)}


def test_question_streams_into_the_view_and_is_saved(qtbot, home, tiny, photo):
    window = open_window(qtbot, home, tiny.mlx_path)
    pieces = []
    window.worker.text.connect(pieces.append)
    reason, stats = ask(qtbot, window, "Describe this image.", [photo])
    assert pieces and reason in ("stop", "length") and stats["generation_tokens"] > 0
    answer = window.conversation.messages[-1]
    assert answer.role == "assistant" and answer.text == "".join(pieces)
    card = answer_card(window)
    assert "tok/s" in card.stats.text() and "tok/s" in window.header.speed.text()
    assert card.message is answer and card.body.blocks, "the answer shows in its card"
    assert [c.message.role for c in window.view.cards] == ["user", "assistant"]
    assert window.view.cards[0].images[0].path == str(photo), "the picture shows in your message"
    saved = json.loads((home / "conversations" / f"{window.conversation.id}.json").read_text())
    assert saved["messages"][0]["attachments"][0]["path"] == str(photo)


def test_a_second_turn_prefills_only_its_own_tokens(qtbot, home, tiny, photo):
    """The conversation's cache is continued: the history is not sent again on top of it."""
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_tokens = 4
    ask(qtbot, window, "Describe this image.", [photo])
    first = prompt_tokens(answer_card(window))
    ask(qtbot, window, "And the colours?")
    continued = prompt_tokens(answer_card(window))
    window.new_chat()
    ask(qtbot, window, "And the colours?")
    alone = prompt_tokens(answer_card(window))
    # The continuation is the same question plus the "<|im_end|>\n" closing the cut-off answer.
    assert first > 60 and continued - alone in (1, 2), (first, continued, alone)


def test_stop_ends_the_answer_and_the_next_question_works(qtbot, home, tiny):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_tokens = 3000  # greedy: this prompt's answer runs long without an end token
    window.worker.text.connect(OnGui(lambda: qtbot.keyClick(window, Qt.Key_Escape), window).run)  # Esc stops
    window.composer.edit.setPlainText("Go on.")
    with qtbot.waitSignal(window.worker.done, timeout=WAIT) as blocker:
        window.composer.send_button.click()
    assert blocker.args[0] == "cancelled" and blocker.args[1]["generation_tokens"] < 3000
    window.worker.text.disconnect()
    settle(qtbot, window)
    assert answer_card(window).stats.text().endswith("· stopped")
    window.settings.max_tokens = 4
    reason, _ = ask(qtbot, window, "And a short one?")
    assert reason in ("stop", "length")
    assert [m.role for m in window.conversation.messages] == ["user", "assistant", "user", "assistant"]


def test_stop_during_the_prompt_ends_before_any_token(qtbot, home, tiny, tmp_path):
    """Stop pressed while a video's prompt is being read: nothing is generated."""
    window = open_window(qtbot, home, tiny.mlx_path)
    video = make_video(tmp_path / "long.mp4", 4.0, 5)
    # Pressed from the worker's own progress report, so it lands inside the prefill every time.
    window.worker.prompt_progress.connect(window.worker.cancel, Qt.DirectConnection)
    pieces = []
    window.worker.text.connect(pieces.append)
    reason, stats = ask(qtbot, window, "What happens?", [video])
    window.worker.prompt_progress.disconnect()
    assert reason == "cancelled" and stats["generation_tokens"] == 0 and pieces == []
    assert answer_card(window).stats.text().endswith("· stopped")
    window.settings.max_tokens = 3
    assert ask(qtbot, window, "Still there?")[0] in ("stop", "length"), "the next question starts afresh"


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
    qtbot.keyClick(window, Qt.Key_N, Qt.ControlModifier)  # Ctrl/Cmd+N: a new chat
    assert window.conversation.messages == [] and window.view.currentIndex() == 0, "the empty state shows"
    ask(qtbot, window, "Penguins on the ice?")
    window.close()
    again = open_window(qtbot, home)
    chats = again.sidebar.chats
    assert chats.count() == 2
    qtbot.keyClick(again, Qt.Key_F, Qt.ControlModifier)  # Ctrl/Cmd+F: search the chats
    assert again.sidebar.search.hasFocus()
    qtbot.keyClicks(again.sidebar.search, "zebras")
    assert chats.count() == 1 and "Zebras" in chats.item(0).text()
    chats.setCurrentRow(0)
    assert again.conversation.messages[0].text == "Zebras in the savanna?"
    assert "Zebras in the savanna?" in again.view.plain_text()
    again.delete_chat()
    again.sidebar.search.setText("")
    assert chats.count() == 1 and len(History(home / "conversations").list()) == 1


def accept_settings(qtbot, window, **values):
    """Open Settings with Ctrl/Cmd+, and change what a person would change, then OK."""
    activate(qtbot, window)
    qtbot.keyClick(window, Qt.Key_Comma, Qt.ControlModifier)
    dialog = window.settings_dialog
    qtbot.waitUntil(dialog.isVisible, timeout=WAIT)
    for name, value in values.items():
        widget = getattr(dialog, name)
        if name == "system":
            widget.setPlainText(value)
        elif name == "thinking":
            widget.setChecked(value)
        elif name in ("detail", "appearance"):
            widget.setCurrentIndex(value)
        elif name == "adapter":
            widget.setText(value)
        else:
            widget.setValue(value)
    dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=WAIT)


def test_settings_from_the_dialog_reach_generation(qtbot, home, tiny, photo):
    """What the dialog sets shows in what the model is given (the prompt size under each answer)
    and in what comes back."""
    window = open_window(qtbot, home, tiny.mlx_path)
    accept_settings(qtbot, window, max_tokens=16, temperature=0.0)

    def new_question():
        window.new_chat()
        ask(qtbot, window, "What is this?", [photo])
        card = answer_card(window)
        return prompt_tokens(card), card

    base, card = new_question()
    assert window.conversation.messages[-1].stats.split(" · ")[1].startswith(
        tuple(f"{n} tokens" for n in range(1, 17))), "max tokens 16"
    assert card.thinking.isHidden()
    accept_settings(qtbot, window, system="Answer in one word.")
    with_system, _ = new_question()
    assert with_system > base
    accept_settings(qtbot, window, thinking=True)
    thinking, card = new_question()
    assert thinking < with_system, "thinking on: the prompt leaves the think block open"
    assert card.thinking.isVisibleTo(card) and card.thinking.toggle.text().startswith("Thought")
    accept_settings(qtbot, window, detail=1)  # High (4x): four times the image's tokens
    detailed, _ = new_question()
    assert detailed > thinking + 64
    window.close()
    again = open_window(qtbot, home)
    s = again.settings
    assert (s.max_tokens, s.system_prompt, s.thinking, s.downsample_mode) == (16, "Answer in one word.", True, "4x")


def test_an_adapter_chosen_in_settings_is_put_on_the_model(qtbot, home, tiny, tmp_path):
    """Settings → Adapter loads the model again with a fine-tuning run's adapters (and without
    them once cleared); the header names it; the choice is kept for the next start."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from mlx_minicpmv.loading import load_model
    from mlx_minicpmv.tuner import adapters

    folder = tmp_path / "colours"
    folder.mkdir()
    lora = {"rank": 4, "scale": 2.0, "dropout": 0.0}
    adapters.save_config({"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": lora}, folder)
    trained = load_model(tiny.mlx_path, cpu_kernels=False)
    adapters.apply(trained, "lora", 2, lora)
    # LoRA starts with B = 0, which changes nothing: give it weights, as training would.
    trained.update(tree_unflatten([(k, mx.random.normal(v.shape, key=mx.random.key(i)) * 0.5)
                                   for i, (k, v) in enumerate(tree_flatten(trained.trainable_parameters()))]))
    adapters.save(trained, folder / adapters.ADAPTER_FILE)

    def lora_layers():
        return sum(hasattr(m, "lora_a") for _, m in window.worker.model.named_modules())

    window = open_window(qtbot, home, tiny.mlx_path)
    assert lora_layers() == 0
    with qtbot.waitSignal(window.worker.loaded, timeout=WAIT):
        accept_settings(qtbot, window, adapter=str(folder))
    # The worker's signal can reach the test before the window's own slot has taken it in.
    qtbot.waitUntil(lambda: "colours" in window.model_info["name"], timeout=WAIT)
    assert lora_layers() > 0 and "colours" in window.model_info["name"]
    with qtbot.waitSignal(window.worker.loaded, timeout=WAIT):
        accept_settings(qtbot, window, adapter="")
    qtbot.waitUntil(lambda: "colours" not in window.model_info["name"], timeout=WAIT)
    assert lora_layers() == 0
    with qtbot.waitSignal(window.worker.loaded, timeout=WAIT):
        accept_settings(qtbot, window, adapter=str(folder))
    window.close()
    # The reopened window loads the remembered model and open_window asks for it once more: the
    # second load empties worker.model while it runs, so wait for a model that is there and read it once.
    again = open_window(qtbot, home, tiny.mlx_path)

    def adapted():
        model = again.worker.model
        return model is not None and sum(hasattr(m, "lora_a") for _, m in model.named_modules()) > 0

    qtbot.waitUntil(lambda: "colours" in again.model_info.get("name", "") and adapted(), timeout=WAIT)
    assert again.settings.adapter_path == str(folder)


def test_regenerate_answers_the_same_question_again(qtbot, home, tiny, photo):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_tokens = 4
    ask(qtbot, window, "Describe this image.", [photo])
    first = answer_card(window)
    prompt = prompt_tokens(first)
    with qtbot.waitSignal(window.worker.done, timeout=WAIT):
        qtbot.keyClick(window, Qt.Key_R, Qt.ControlModifier)
    settle(qtbot, window)
    assert [m.role for m in window.conversation.messages] == ["user", "assistant"]
    again = answer_card(window)
    assert again is not first and prompt_tokens(again) == prompt, "the same question, from the start"
    with qtbot.waitSignal(window.worker.done, timeout=WAIT):
        again.regenerate_button.click()  # the answer's own action does the same
    settle(qtbot, window)
    assert len(window.conversation.messages) == 2


def test_edit_last_question_puts_it_back_in_the_composer(qtbot, home, tiny, photo):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_tokens = 3
    ask(qtbot, window, "Describe this image.", [photo])
    window.view.cards[0].edit_button.click()
    assert window.composer.edit.toPlainText() == "Describe this image."
    assert [a.path for a in window.composer.attachments] == [str(photo)]
    assert window.conversation.messages == []
    saved = json.loads((home / "conversations" / f"{window.conversation.id}.json").read_text())
    assert saved["messages"] == [], "the edit is saved"
    window.composer.edit.setPlainText("Describe the colours.")
    ask(qtbot, window, "Describe the colours.")
    assert [m.text for m in window.conversation.messages if m.role == "user"] == ["Describe the colours."]
    assert window.conversation.messages[0].attachments[0].path == str(photo)


def test_copy_answer_copies_what_the_answer_says(qtbot, home, tiny):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_tokens = 6
    ask(qtbot, window, "Say something.")
    QGuiApplication.clipboard().setText("")
    qtbot.keyClick(window, Qt.Key_C, Qt.ControlModifier | Qt.ShiftModifier)
    assert QGuiApplication.clipboard().text() == window.conversation.messages[-1].text.strip()
    QGuiApplication.clipboard().setText("")
    window.view.cards[0].copy_button.click()
    assert QGuiApplication.clipboard().text() == "Say something."


def test_find_in_image_asks_for_boxes(qtbot, home, tiny, photo, prompts):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_tokens = 3
    with qtbot.waitSignal(window.worker.done, timeout=WAIT):
        window.find_in_image(str(photo), "the red car")
    settle(qtbot, window)
    question = window.conversation.messages[0]
    assert "<ref>the red car</ref>" in question.text and question.attachments[0].path == str(photo)
    ids = prompts[-1].input_ids.tolist()[0]  # the model gets <ref> as the token it was trained on
    assert ids.count(window.worker.processor.tokenizer.convert_tokens_to_ids("<ref>")) == 1


def test_video_without_a_question_is_summarised_as_a_timeline(qtbot, home, tiny, tmp_path, monkeypatch, prompts):
    window = open_window(qtbot, home, tiny.mlx_path)
    window.settings.max_frames = 16
    window.settings.system_prompt = "Answer in French."  # the summary's questions get it, as a chat's do
    video = make_video(tmp_path / "trip.mp4", seconds=12.0, fps=10, scenes=(0, 1, 2))
    with qtbot.waitSignal(window.worker.frames, timeout=WAIT):
        drop(window.drop_area, [video])
    assert window.composer.send_button.text() == "Summarise"
    chapters = []
    window.worker.summary_chapter.connect(chapters.append)
    with qtbot.waitSignal(window.worker.thumbnails, timeout=WAIT) as frames:
        with qtbot.waitSignal(window.worker.summary_done, timeout=WAIT) as done:
            window.composer.send_button.click()
    summary = done.args[0]
    settle(qtbot, window)
    decode = window.worker.processor.tokenizer.decode
    assert prompts and all("Answer in French." in decode(p.input_ids.tolist()[0]) for p in prompts)
    assert chapters and [c.title for c in chapters] == [c.title for c in summary.chapters]
    timeline = answer_card(window).timeline
    assert [card.start for card in timeline.cards] == [c.start for c in summary.chapters]
    assert frames.args[0] == str(video) and len(frames.args[1]) == len(summary.chapters)
    qtbot.waitUntil(lambda: all(not card.picture.pixmap().isNull() for card in timeline.cards),
                    timeout=WAIT)  # a frame on every chapter
    assert "(seek:" not in window.view.plain_text() and "0:00" in window.view.plain_text()
    with qtbot.waitSignal(window.worker.frame_ready, timeout=WAIT) as frame:
        qtbot.mouseClick(timeline.cards[-1], Qt.LeftButton)
    assert abs(frame.args[1] - summary.chapters[-1].start) < 0.2
    qtbot.waitUntil(window.viewer.isVisible, timeout=WAIT)  # the window's own slot shows the frame
    out = tmp_path / "chapters.srt"
    with qtbot.waitSignal(window.worker.exported, timeout=WAIT):
        window.export_summary(str(out))
    assert out.read_text().startswith("1\n00:00:00,000 --> ")

    # A follow-up question is answered from the frames the summary saw: nothing is decoded (the
    # file is gone) and nothing is encoded (the vision tower is not called).
    from mlx_minicpmv.model import Model

    calls = []
    real = Model.encode_slices
    monkeypatch.setattr(Model, "encode_slices", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    video.rename(tmp_path / "moved.mp4")
    window.settings.max_tokens = 4
    reason, stats = ask(qtbot, window, "What happens after the cut?")
    assert reason in ("stop", "length") and stats["prompt_tokens"] > 50 and not window.error
    assert calls == [], "the summary's frames were encoded again"
