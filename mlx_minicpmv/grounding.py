"""Boxes and points in an answer: what the model says about *where* things are in an image.

MiniCPM-V grounds a phrase as ``<ref>phrase</ref><box>x1 y1 x2 y2</box>`` (several boxes may
follow one ref) and a point as ``<ref>phrase</ref><point>x y</point>``, the coordinates on a
0–1000 scale of the image's width and height whatever its size (the tokenizer has ``<ref>``,
``<box>``, ``<point>`` and their ends as special tokens, ids 248080–248087). Asked for several
objects in JSON it writes a list such as ``[{"label": "cat", "bbox_2d": [x1, y1, x2, y2]}]``, often
inside a fenced block, on the same scale. ``parse`` reads both; ``Box.pixels`` and
``Point.pixels`` place them on an image of a given size; ``strip`` leaves the readable text.
``question`` asks for a phrase's boxes, with ``<ref>`` and ``</ref>`` as the special tokens the
model was trained on (the program asks, so the processor lets them through; text a person types
stays plain, see ``processing/prompt.py``). Pure functions, no MLX: a script, the server and the
app use the same ones.
"""

import json
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

SCALE = 1000.0  # the model's coordinates run from 0 to 1000 across the image, in each direction

_NUMBER = r"-?\d+(?:\.\d+)?"
_TAGGED = re.compile(
    r"(?:<ref>(?P<ref>.*?)</ref>\s*)?(?P<shapes>(?:<(?:box|point)>[^<]*</(?:box|point)>\s*)+)", re.S)
_SHAPE = re.compile(r"<(box|point)>([^<]*)</\1>")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_LABEL_KEYS = ("label", "ref", "name", "object", "text", "description")
_BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d")
_POINT_KEYS = ("point_2d", "point", "keypoint")


def _clamp(v: float) -> float:
    return min(max(float(v), 0.0), SCALE)


@dataclass(frozen=True)
class Box:
    """A rectangle, corners on the 0–1000 scale, ``x1 <= x2`` and ``y1 <= y2``."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def of(cls, label: str, coords) -> "Box":
        x1, y1, x2, y2 = (_clamp(c) for c in coords)
        return cls(label, min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))

    def pixels(self, width: float, height: float) -> Tuple[float, float, float, float]:
        """(left, top, right, bottom) on an image of ``width`` x ``height`` pixels."""
        return (self.x1 * width / SCALE, self.y1 * height / SCALE, self.x2 * width / SCALE, self.y2 * height / SCALE)


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float

    @classmethod
    def of(cls, label: str, coords) -> "Point":
        x, y = (_clamp(c) for c in coords)
        return cls(label, x, y)

    def pixels(self, width: float, height: float) -> Tuple[float, float]:
        return (self.x * width / SCALE, self.y * height / SCALE)


Region = Union[Box, Point]


def _numbers(text: str) -> List[float]:
    return [float(n) for n in re.findall(_NUMBER, text)]


def _tagged(text: str) -> List[Region]:
    found: List[Region] = []
    for match in _TAGGED.finditer(text):
        label = " ".join((match.group("ref") or "").split())
        for kind, body in _SHAPE.findall(match.group("shapes")):
            values = _numbers(body)
            # ``<box>`` may hold several boxes (4 numbers each); anything else is not a shape.
            if kind == "box" and values and len(values) % 4 == 0:
                found += [Box.of(label, values[i:i + 4]) for i in range(0, len(values), 4)]
            elif kind == "point" and values and len(values) % 2 == 0:
                found += [Point.of(label, values[i:i + 2]) for i in range(0, len(values), 2)]
    return found


def _json_candidates(text: str):
    yield from _FENCE.findall(text)
    for opener, closer in (("[", "]"), ("{", "}")):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            yield text[start:end + 1]


def _from_json(value, label: str = "") -> List[Region]:
    if isinstance(value, list):
        if len(value) in (2, 4) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [Box.of(label, value) if len(value) == 4 else Point.of(label, value)]
        return [r for item in value for r in _from_json(item, label)]
    if not isinstance(value, dict):
        return []
    own = next((str(value[k]) for k in _LABEL_KEYS if isinstance(value.get(k), (str, int, float))), label)
    for keys, size, make in ((_BOX_KEYS, 4, Box.of), (_POINT_KEYS, 2, Point.of)):
        for key in keys:
            coords = value.get(key)
            if isinstance(coords, list) and len(coords) == size and all(
                    isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords):
                return [make(" ".join(own.split()), coords)]
    # A wrapper ({"objects": [...]}) or a map from labels to coordinates ({"cat": [x1, y1, x2, y2]}).
    wrappers = ("objects", "boxes", "points", "detections", "keypoints")
    return [r for k, v in value.items() if isinstance(v, (list, dict)) and k not in _BOX_KEYS + _POINT_KEYS
            for r in _from_json(v, own if k in wrappers else k)]


def parse(text: str) -> List[Region]:
    """Every box and point in an answer, in order: the tagged form if there is any, else JSON."""
    found = _tagged(text)
    if found:
        return found
    for candidate in _json_candidates(text):
        try:
            regions = _from_json(json.loads(candidate))
        except ValueError:
            continue
        if regions:
            return regions
    return []


def strip(text: str, ref: str = r"\1") -> str:
    """The answer for reading: ``<ref>cat</ref><box>…</box>`` becomes ``cat``, bare shapes go.
    ``ref`` is the replacement for a ref's words (``r"**\1**"`` makes them bold Markdown)."""
    text = re.sub(r"<ref>(.*?)</ref>", ref, text, flags=re.S)
    text = re.sub(r"\s*<(box|point|quad)>[^<]*</\1>", "", text)
    return text


_GROUNDING_TAG = re.compile(r"</?(?:ref|box|quad|point)>")
_QUESTION = re.compile(r"Find <ref>(.*)</ref> in the image\. Give its bounding box\.", re.S)


def prompt(target: str) -> str:
    """A question that asks for ``target``'s boxes in the form ``parse`` reads (grounding tags
    typed into ``target`` are dropped: the phrase sits between the question's own)."""
    return f"Find <ref>{' '.join(_GROUNDING_TAG.sub(' ', target).split())}</ref> in the image. Give its bounding box."


def question(target: str) -> dict:
    """``prompt(target)`` as a text item of a user message, its ``<ref>`` and ``</ref>`` the
    special tokens (as transformers' processor encodes them); anything else in ``target`` plain."""
    return {"type": "text", "text": prompt(target), "special_tokens": ["<ref>", "</ref>"]}


def as_question(text: str) -> Optional[dict]:
    """``question(target)`` if ``text`` is a question ``prompt`` made (a chat stored as text,
    as the app keeps its history), else None."""
    match = _QUESTION.fullmatch(text)
    if match is None or prompt(match.group(1)) != text:  # a phrase of its own form only
        return None
    return question(match.group(1))
