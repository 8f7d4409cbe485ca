"""The app's history folder: damaged files never stop the app, and nothing outside the folder is
read or removed whatever a file says."""

import json
import os

import pytest

from app.history import Conversation, DamagedFile, History, Message
from tests.app_driver import open_window

DAMAGED = {
    "list.json": "[]",
    "string.json": '"hello"',
    "null.json": "null",
    "text-null.json": json.dumps({"messages": [{"role": "user", "text": None}]}),
    "role.json": json.dumps({"messages": [{"role": "wizard", "text": "hi"}]}),
    "attachment.json": json.dumps({"messages": [{"role": "user", "text": "hi", "attachments": [{"path": 3}]}]}),
    "truncated.json": '{"title": "half a fi',
    "binary.json": b"\xff\xfe\x00garbage",
}


def write(folder, name, content):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.fixture
def folder(tmp_path):
    history = History(tmp_path / "home" / "conversations")
    good = Conversation(title="Zebras")
    good.add(Message("user", "Zebras?"))
    history.save(good)
    return history.root


def test_damaged_files_are_skipped_kept_and_reported_once(folder):
    for name, content in DAMAGED.items():
        write(folder, name, content)
    history = History(folder)
    assert [c.title for c in history.list()] == ["Zebras"]
    reported = history.unreported()
    assert sorted(r.split(":")[0] for r in reported) == sorted(DAMAGED)
    assert any("list.json: holds a JSON list" in r for r in reported)
    assert any("text-null.json: message 1 has no text" in r for r in reported)
    history.list("zebras")
    assert history.unreported() == [], "each damaged file is reported once"
    assert all((folder / name).exists() for name in DAMAGED), "nothing was deleted"


def test_cosmetic_fields_of_the_wrong_type_keep_the_conversation(folder):
    write(folder, "odd.json", json.dumps({"title": None, "updated": "yesterday", "created": [1],
                                          "messages": [{"role": "user", "text": "Penguins on ice?"}]}))
    history = History(folder)
    titles = [c.title for c in history.list()]
    assert "Penguins on ice?" in titles and history.unreported() == []


def test_the_file_name_is_the_identity_and_delete_stays_in_the_folder(tmp_path, folder):
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    write(folder, "sneaky.json", json.dumps({"id": "../../victim", "title": "Sneaky",
                                             "messages": [{"role": "user", "text": "hi"}]}))
    history = History(folder)
    sneaky = next(c for c in history.list() if c.title == "Sneaky")
    assert sneaky.id == "sneaky"
    assert history.load("sneaky").title == "Sneaky", "an id that differs from the name still opens"
    history.delete(sneaky.id)
    assert victim.read_text() == "precious" and not (folder / "sneaky.json").exists()
    for bad in ("../../victim", "../victim", "/etc/passwd", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            history.delete(bad)
        with pytest.raises(ValueError):
            history.load(bad)
    assert victim.read_text() == "precious"


def test_a_link_out_of_the_folder_is_not_read(tmp_path, folder):
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"title": "Secret", "messages": []}))
    os.symlink(outside, folder / "link.json")
    history = History(folder)
    assert "Secret" not in [c.title for c in history.list()]
    with pytest.raises(DamagedFile):
        history.load("link")


def test_saving_replaces_the_file_instead_of_writing_into_it(folder):
    """A crash mid-write must leave the old file whole: the new text goes to a new file that is
    renamed over the old one (a hard link to the old file keeps the old text)."""
    history = History(folder)
    conversation = history.list()[0]
    path = history.path(conversation.id)
    os.link(path, folder.parent / "before.json")
    before = path.read_text()
    conversation.add(Message("assistant", "Stripes."))
    history.save(conversation)
    assert (folder.parent / "before.json").read_text() == before
    assert "Stripes." in path.read_text()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [], "no temporary file is left"


def test_the_window_starts_lists_the_others_and_says_which_files_it_skipped(qtbot, folder):
    for name, content in DAMAGED.items():
        write(folder, name, content)
    window = open_window(qtbot, folder.parent)
    assert [window.sidebar.chats.item(i).text() for i in range(window.sidebar.chats.count())] == ["Zebras"]
    shown = window.view.error_label.text()
    assert "8 chat file(s) could not be read" in shown and "null.json" in shown and str(folder) in shown
    window.sidebar.search.setText("zeb")
    window.sidebar.search.setText("")
    assert window.history.unreported() == []
    window.sidebar.chats.setCurrentRow(0)
    assert window.conversation.title == "Zebras"
    window.close()
    assert all((folder / name).exists() for name in DAMAGED)


def test_an_answers_boxes_and_points_come_back_and_malformed_ones_are_dropped(folder):
    """A reopened conversation draws what the answer found again; a region of the wrong shape in
    the file is only not drawn, and the conversation still opens."""
    history = History(folder)
    found = [("the cat", "box", (0.1, 0.2, 0.5, 0.9)), ("its eye", "point", (0.3, 0.4))]
    chat = Conversation(title="Cats")
    chat.add(Message("user", "Find the cat"))
    chat.add(Message("assistant", "the cat", regions=found))
    history.save(chat)
    assert history.load(chat.id).messages[1].regions == found
    bad = [["ok", "box", [1, 2, 3, 4]], ["short", "box", [1, 2]], ["long", "point", [1, 2, 3]],
           [7, "box", [1, 2, 3, 4]], ["round", "circle", [1, 2]], ["yes", "point", [1, True]], ["two", "box"]]
    write(folder, "odd.json", json.dumps({"title": "Odd", "messages": [
        {"role": "user", "text": "where?"}, {"role": "assistant", "text": "here", "regions": bad}]}))
    assert history.load("odd").messages[1].regions == [("ok", "box", (1, 2, 3, 4))]
    assert history.unreported() == []


def test_deleting_a_conversation_that_is_already_gone_is_no_error(folder):
    """Deleted twice (two windows), or never saved (a new chat deleted at once): nothing to do."""
    history = History(folder)
    zebras = history.list()[0]
    history.delete(zebras.id)
    history.delete(zebras.id)
    history.delete(Conversation().id)
    assert history.list() == [] and history.unreported() == []
