"""A summary as Markdown chapters, SubRip, WebVTT or JSON."""

import json
from dataclasses import asdict

from .records import Summary


def clock(seconds: float, sep: str = ",", hours: bool = True) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}" if hours else f"{m:02d}:{s:02d}"


def short(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def to_markdown(summary: Summary) -> str:
    lines = [f"# {summary.title}", "", summary.overview, ""]
    for chapter in summary.chapters:
        lines += [f"## [{short(chapter.start)}–{short(chapter.end)}] {chapter.title}", ""]
        for seg in chapter.segments:
            lines.append(f"- **{short(seg.start)}–{short(seg.end)}** {seg.text}")
        lines.append("")
    if summary.warnings:
        lines += ["> " + w for w in summary.warnings] + [""]
    return "\n".join(lines)


def to_srt(summary: Summary) -> str:
    cues = []
    for i, chapter in enumerate(summary.chapters, start=1):
        cues.append(f"{i}\n{clock(chapter.start)} --> {clock(chapter.end)}\n{chapter.title}\n")
    return "\n".join(cues)


def to_vtt(summary: Summary) -> str:
    cues = ["WEBVTT", ""]
    for i, chapter in enumerate(summary.chapters, start=1):
        cues += [f"chapter-{i}", f"{clock(chapter.start, '.')} --> {clock(chapter.end, '.')}", chapter.title, ""]
    return "\n".join(cues)


def to_json(summary: Summary) -> str:
    return json.dumps(asdict(summary), indent=2, ensure_ascii=False)


FORMATS = {"md": to_markdown, "srt": to_srt, "vtt": to_vtt, "json": to_json}
