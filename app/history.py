"""Conversations on disk: one JSON file each, written atomically and readable by their owner
only (0600). Plain dataclasses, no Qt.

A conversation's identity is its file name: whatever a file says inside, only names found by
listing the history folder are read, written or removed, so nothing outside the folder is ever
touched. A file that cannot be read as a conversation is skipped and left as it is (the person
may want it back), and reported once. Attachments are referenced by path, never copied;
``Attachment.missing`` tells when a file has moved since.
"""

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from mlx_minicpmv import grounding  # pure: loads no MLX
from mlx_minicpmv.files import PRIVATE, write_atomic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
# What ``Conversation()`` makes and what a listed file name may be: no separators, no dots.
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def kind_of(path) -> Optional[str]:
    suffix = Path(path).suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


@dataclass
class Attachment:
    path: str
    kind: str  # "image" or "video"

    @property
    def missing(self) -> bool:
        return not Path(self.path).is_file()


@dataclass
class Message:
    role: str  # "user" or "assistant"
    text: str
    attachments: List[Attachment] = field(default_factory=list)
    stats: str = ""
    thinking: bool = False  # the answer began inside the model's thinking (thinking on)
    thought_seconds: float = 0.0  # how long it thought
    regions: list = field(default_factory=list)  # the answer's boxes and points: (label, kind, coords)
    summary: Optional[dict] = None  # a video summary's chapters, for the timeline

    def to_library(self) -> dict:
        """The transformers chat form that ``mlx_minicpmv`` takes. A "Find in image…" question
        (the app's own, kept as its text) goes as ``grounding.question``: its ``<ref>`` tags are
        tokens; anything a person types is plain text."""
        if self.role != "user" or not self.attachments:
            return {"role": self.role, "content": self.text}
        items = [{"type": a.kind, a.kind: a.path} for a in self.attachments]
        text = grounding.as_question(self.text) or {"type": "text", "text": self.text}
        return {"role": self.role, "content": items + [text]}


@dataclass
class Conversation:
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    title: str = "New chat"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    messages: List[Message] = field(default_factory=list)

    def add(self, message: Message) -> None:
        self.messages.append(message)
        self.updated = time.time()
        if self.title == "New chat" and message.role == "user" and message.text.strip():
            self.title = " ".join(message.text.split())[:60]


class DamagedFile(ValueError):
    """A history file that is not a conversation; the message says what is wrong with it."""


def _number(value, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _message(data, where: str) -> Message:
    if not isinstance(data, dict):
        raise DamagedFile(f"{where} is not an object")
    role, text = data.get("role"), data.get("text")
    if role not in ("user", "assistant"):
        raise DamagedFile(f"{where} has role {role!r}, not 'user' or 'assistant'")
    if not isinstance(text, str):
        raise DamagedFile(f"{where} has no text")
    attachments = data.get("attachments") or []
    if not isinstance(attachments, list) or not all(
            isinstance(a, dict) and isinstance(a.get("path"), str) and a.get("kind") in ("image", "video")
            for a in attachments):
        raise DamagedFile(f"{where} has attachments that are not image or video paths")
    summary = data.get("summary")
    return Message(role, text, [Attachment(a["path"], a["kind"]) for a in attachments],
                   data.get("stats") if isinstance(data.get("stats"), str) else "",
                   data.get("thinking") is True, _number(data.get("thought_seconds"), 0.0),
                   _regions(data.get("regions")), summary if isinstance(summary, dict) else None)


def _regions(value) -> list:
    """The well-formed boxes and points of a stored answer (others are only not drawn)."""
    sizes = {"box": 4, "point": 2}
    return [(r[0], r[1], tuple(r[2])) for r in (value if isinstance(value, list) else [])
            if isinstance(r, list) and len(r) == 3 and isinstance(r[0], str) and r[1] in sizes
            and isinstance(r[2], list) and len(r[2]) == sizes[r[1]]
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r[2])]


def conversation_from_json(text: str, conversation_id: str, modified: float = 0.0) -> Conversation:
    """A conversation from a file's text; its id is the file's name, not what the file says.

    The messages must be what they claim to be; a title or time of the wrong type only falls
    back to a default, so a conversation is never lost for a cosmetic field."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DamagedFile(f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DamagedFile(f"holds a JSON {type(data).__name__}, not a conversation object")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise DamagedFile("has no list of messages")
    parsed = [_message(m, f"message {i + 1}") for i, m in enumerate(messages)]
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        first = next((m.text for m in parsed if m.role == "user" and m.text.strip()), "")
        title = " ".join(first.split())[:60] or "Untitled"
    updated = _number(data.get("updated"), modified)
    return Conversation(conversation_id, title, _number(data.get("created"), updated), updated, parsed)


class History:
    """The folder of conversations. ``damaged`` maps each unreadable file found so far to what is
    wrong with it; ``unreported()`` hands each of them out once, for the window to say."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.damaged: Dict[str, str] = {}
        self._reported: set = set()

    def path(self, conversation_id: str) -> Path:
        """The file of a conversation id; an id that could name anything else is refused."""
        if not isinstance(conversation_id, str) or not CONVERSATION_ID.fullmatch(conversation_id):
            raise ValueError(f"{conversation_id!r} is not a conversation id (letters, digits, '-' and '_')")
        return self.root / f"{conversation_id}.json"

    def _files(self):
        for file in sorted(self.root.glob("*.json")):
            if CONVERSATION_ID.fullmatch(file.stem) and file.is_file() and not file.is_symlink():
                yield file

    def _read(self, file: Path) -> Optional[Conversation]:
        try:
            conversation = conversation_from_json(file.read_text(encoding="utf-8"), file.stem, file.stat().st_mtime)
        except (OSError, UnicodeDecodeError) as e:
            self.damaged[file.name] = f"cannot be read ({getattr(e, 'strerror', None) or e})"
            return None
        except DamagedFile as e:
            self.damaged[file.name] = str(e)
            return None
        self.damaged.pop(file.name, None)
        return conversation

    def save(self, conversation: Conversation) -> None:
        # Private (0600) whatever the umask: a conversation is its owner's to read.
        write_atomic(self.path(conversation.id), json.dumps(asdict(conversation), indent=1, ensure_ascii=False),
                     mode=PRIVATE)

    def load(self, conversation_id: str) -> Conversation:
        """The conversation stored under this id; ``DamagedFile`` when it cannot be read."""
        file = self.path(conversation_id)
        conversation = self._read(file) if file in set(self._files()) else None
        if conversation is None:
            raise DamagedFile(f"{file.name} {self.damaged.get(file.name, 'is not in the history folder')}")
        return conversation

    def list(self, query: str = "") -> List[Conversation]:
        """All readable conversations, newest first; ``query`` matches titles and message text."""
        words = query.lower().split()
        found = []
        for file in self._files():
            conversation = self._read(file)
            if conversation is None:
                continue  # kept on disk, named in ``damaged``
            haystack = (conversation.title + " " + " ".join(m.text for m in conversation.messages)).lower()
            if all(w in haystack for w in words):
                found.append(conversation)
        return sorted(found, key=lambda c: c.updated, reverse=True)

    def unreported(self) -> List[str]:
        """Damaged files not yet reported, each as 'NAME: what is wrong'."""
        fresh = [f"{name}: {why}" for name, why in sorted(self.damaged.items()) if name not in self._reported]
        self._reported.update(self.damaged)
        return fresh

    def delete(self, conversation_id: str) -> None:
        self.path(conversation_id).unlink(missing_ok=True)
