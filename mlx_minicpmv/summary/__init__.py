from .export import FORMATS
from .segments import Span, plan_segments, scene_cuts
from .pipeline import follow_up, summarize
from .records import Chapter, Progress, SegmentSummary, Summary

__all__ = ["FORMATS", "Span", "plan_segments", "scene_cuts", "Chapter", "Progress", "SegmentSummary", "Summary",
           "follow_up", "summarize"]
