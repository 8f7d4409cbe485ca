"""MiniCPM-V 4.6 on MLX: ``load``, ``generate``, ``stream_generate`` and the processor."""

from . import blas

blas.load()  # before anything imports mlx.core (see blas.py)

from .loading import load  # noqa: E402

__all__ = ["load"]
