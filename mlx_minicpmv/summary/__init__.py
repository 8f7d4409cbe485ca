from .export import FORMATS
from .segments import Span, plan_segments, scene_cuts
from .summarize import Chapter, Progress, SegmentSummary, Summary, follow_up, summarize

__all__ = ["FORMATS", "Span", "plan_segments", "scene_cuts", "Chapter", "Progress", "SegmentSummary", "Summary",
           "follow_up", "summarize"]
