"""MiniCPM-V 4.6 on MLX: ``load``, ``generate``, ``stream_generate`` and the processor."""

from . import blas

blas.load()  # before anything imports mlx.core (see blas.py)

from .generate import GenerationResponse, PromptCache, generate, stream_generate  # noqa: E402
from .loading import load  # noqa: E402
from .processing import MediaError, Processor, ProcessorOutput  # noqa: E402

__all__ = ["load", "generate", "stream_generate", "GenerationResponse", "PromptCache", "Processor",
           "ProcessorOutput", "MediaError"]
