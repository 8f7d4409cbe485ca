"""Files the app and the summariser write: atomically, and read back without losing anything."""

import json
import os
import stat
from contextlib import contextmanager

import pytest

from app.history import Attachment, Conversation, History, Message
from mlx_minicpmv import files

# The app's history and the summaries, exports and models go through the one writer: the
# history privately, the rest with the umask's mode.
WRITERS = {"app history": lambda path, text: files.write_atomic(path, text, mode=files.PRIVATE),
           "summary output": files.write_atomic}


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path, writer):
    """Text that cannot be encoded fails after the file was opened, as a full disk would: the
    old content stays, and no temporary file is left beside it."""
    target = tmp_path / "chapters.md"
    target.write_text("the old summary, complete")
    with pytest.raises(UnicodeEncodeError):
        WRITERS[writer](target, "a new summary, cut short here \udcff and never finished")
    assert target.read_text() == "the old summary, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["chapters.md"]
    WRITERS[writer](target, "ünïcode, written whole")
    assert target.read_text(encoding="utf-8") == "ünïcode, written whole"
    assert [p.name for p in tmp_path.iterdir()] == ["chapters.md"]


def conversation(title_text: str, updated: float) -> Conversation:
    c = Conversation()
    c.add(Message("user", title_text, [Attachment("/photos/cat.png", "image")]))
    c.add(Message("assistant", "A cat on a red sofa.", stats="12 tokens"))
    c.updated = updated
    return c


def test_conversations_come_back_as_saved_newest_first(tmp_path):
    store = History(tmp_path)
    old, new = conversation("What is on the sofa?", 100.0), conversation("Where is the dog?", 200.0)
    store.save(old)
    store.save(new)
    assert [c.id for c in store.list()] == [new.id, old.id]
    again = store.load(old.id)
    assert again == old
    assert again.messages[0].to_library() == {"role": "user", "content": [
        {"type": "image", "image": "/photos/cat.png"}, {"type": "text", "text": "What is on the sofa?"}]}
    assert [c.id for c in store.list("DOG where")] == [new.id]
    assert [c.id for c in store.list("red sofa")] == [new.id, old.id]  # answers are searched too


@pytest.mark.parametrize("damage", ["not json at all {", '{"title": "no id"}', '{"id": "x", "messages": 5}', "[]"])
def test_a_damaged_file_is_skipped_and_kept(tmp_path, damage):
    store = History(tmp_path)
    good = conversation("What is on the sofa?", 100.0)
    store.save(good)
    broken = tmp_path / "broken.json"
    broken.write_text(damage)
    assert [c.id for c in store.list()] == [good.id]
    assert broken.read_text() == damage, "a damaged conversation is never deleted or rewritten"


def test_write_atomic_gives_the_umask_mode_or_the_one_asked_for(tmp_path):
    target = tmp_path / "out.txt"
    with umask(0o022):
        files.write_atomic(target, "shared")
        assert mode_of(target) == 0o644
        files.write_atomic(target, "private", mode=files.PRIVATE)
        assert mode_of(target) == 0o600 and target.read_text() == "private"
    with umask(0o077):
        files.write_atomic(target, "the umask keeps it private")
        assert mode_of(target) == 0o600


def test_conversations_are_private_whatever_the_umask(tmp_path):
    store = History(tmp_path)
    c = conversation("What is on the sofa?", 100.0)
    with umask(0o000):
        store.save(c)  # a new file
        assert mode_of(store.path(c.id)) == 0o600
        c.add(Message("user", "And the dog?"))
        store.save(c)  # replaced
        assert mode_of(store.path(c.id)) == 0o600
    assert store.load(c.id) == c


def test_a_find_in_image_question_goes_with_its_ref_tags_as_tokens():
    """The app keeps its grounding question as text; the library gets it as ``grounding.question``,
    and anything a person typed as plain text."""
    from mlx_minicpmv import grounding

    photo = [Attachment("/photos/cat.png", "image")]
    asked = Message("user", grounding.prompt("the red car"), photo).to_library()
    assert asked["content"][-1] == grounding.question("the red car")
    typed = Message("user", "Where is <ref>the dog</ref>?", photo).to_library()
    assert typed["content"][-1] == {"type": "text", "text": "Where is <ref>the dog</ref>?"}
