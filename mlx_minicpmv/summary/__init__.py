"""Video summaries: segments, the pipeline that asks the model about them, the records and their exports.

Names are imported on first use, so that the pure parts (``records``, ``export``) load no MLX: the app
formats times and exports on its GUI thread, where MLX must never be loaded.
"""

import importlib

_HOMES = {
    "FORMATS": "export",
    "Span": "segments", "plan_segments": "segments", "scene_cuts": "segments",
    "follow_up": "pipeline", "summarize": "pipeline",
    "Chapter": "records", "Progress": "records", "SegmentSummary": "records", "Summary": "records",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
