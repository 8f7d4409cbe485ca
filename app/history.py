"""Conversations on disk: one JSON file each, written atomically. Plain dataclasses, no Qt.

Attachments are referenced by path, never copied; ``Attachment.missing`` tells when a file
has moved since.
"""

import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}


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

    def to_library(self) -> dict:
        """The transformers chat form that ``mlx_minicpmv`` takes."""
        if self.role != "user" or not self.attachments:
            return {"role": self.role, "content": self.text}
        items = [{"type": a.kind, a.kind: a.path} for a in self.attachments]
        return {"role": self.role, "content": items + [{"type": "text", "text": self.text}]}


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

    @classmethod
    def from_dict(cls, data: dict) -> "Conversation":
        messages = [Message(m["role"], m["text"], [Attachment(**a) for a in m.get("attachments", [])], m.get("stats", ""))
                    for m in data.get("messages", [])]
        return cls(data["id"], data.get("title", "Untitled"), data.get("created", 0), data.get("updated", 0), messages)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over it.

    (``mlx_minicpmv.summarize`` has its own copy: the app calls the library only from its
    worker thread, and history is saved on the GUI thread.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class History:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, conversation_id: str) -> Path:
        return self.root / f"{conversation_id}.json"

    def save(self, conversation: Conversation) -> None:
        write_atomic(self.path(conversation.id), json.dumps(asdict(conversation), indent=1, ensure_ascii=False))

    def load(self, conversation_id: str) -> Conversation:
        return Conversation.from_dict(json.loads(self.path(conversation_id).read_text(encoding="utf-8")))

    def list(self, query: str = "") -> List[Conversation]:
        """All readable conversations, newest first; ``query`` matches titles and message text."""
        found = []
        for file in self.root.glob("*.json"):
            try:
                conversation = Conversation.from_dict(json.loads(file.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged file is skipped, never deleted
            words = query.lower().split()
            haystack = (conversation.title + " " + " ".join(m.text for m in conversation.messages)).lower()
            if all(w in haystack for w in words):
                found.append(conversation)
        return sorted(found, key=lambda c: c.updated, reverse=True)

    def delete(self, conversation_id: str) -> None:
        self.path(conversation_id).unlink(missing_ok=True)
