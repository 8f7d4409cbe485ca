"""What a video summary is made of: plain dataclasses, read by the pipeline, the exports and the app."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Tuple

if TYPE_CHECKING:
    import mlx.core as mx


@dataclass
class SegmentSummary:
    start: float
    end: float
    text: str
    frame_times: List[float]


@dataclass
class Chapter:
    start: float
    end: float
    title: str
    segments: List[SegmentSummary] = field(default_factory=list)


@dataclass
class Summary:
    video: str
    duration: float
    title: str = ""
    overview: str = ""
    chapters: List[Chapter] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    # ``summarize`` also sets ``seen``: a list of SeenFrame for ``follow_up`` (kept out of asdict).


@dataclass
class SeenFrame:
    """One frame the summary looked at, as the model saw it (for follow-up questions)."""

    time: float
    replacement: str
    features: "mx.array"
    size: Tuple[int, int]  # its patch grid (4.7 places the frame on its canvas by it)
    mode: str = "16x"  # the downsample mode its features were encoded at


@dataclass
class Progress:
    """One event of ``summarize``: what stage, how far, and what just finished."""

    stage: str  # "scanning", "segment", "chapter", "overview", "done"
    done: int
    total: int
    eta_seconds: Optional[float] = None
    segment: Optional[SegmentSummary] = None
    chapter: Optional[Chapter] = None
    summary: Optional[Summary] = None
