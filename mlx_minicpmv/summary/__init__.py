"""Video summaries: segments, the pipeline that asks the model about them, the records and their exports.

Names are imported on first use, so that the pure parts (``records``, ``export``) load no MLX: the app
formats times and exports on its GUI thread, where MLX must never be loaded.
"""

from ..lazy import exports

_HOMES = {
    "FORMATS": "export",
    "Span": "segments", "plan_segments": "segments", "scene_cuts": "segments",
    "follow_up": "pipeline", "summarize": "pipeline",
    "Chapter": "records", "Progress": "records", "SegmentSummary": "records", "Summary": "records",
}

__all__ = list(_HOMES)

__getattr__, __dir__ = exports(__name__, _HOMES)
