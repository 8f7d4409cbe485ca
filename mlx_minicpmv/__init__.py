"""MiniCPM-V 4.6 on MLX: ``load``, ``generate``, ``stream_generate`` and the processor."""

from .loading import load

__all__ = ["load"]
