"""MiniCPM-V 4.6 and 4.7 on MLX: ``load``, ``generate``, ``stream_generate``, the processor and the errors.

The public names are imported on first use, so that importing a small pure part of the
library (``mlx_minicpmv.errors``, ``mlx_minicpmv.files``) loads no MLX.
"""

import sys
import types

from .cpu import blas
from .lazy import exports

blas.load()  # before anything imports mlx.core (see cpu/blas.py)

from . import grounding  # noqa: E402  (pure: boxes and points of the model's answers)

_HOMES = {
    "load": "loading",
    "generate": "generate", "stream_generate": "generate", "GenerationResponse": "generate",
    "PromptCache": "generate",
    "Processor": "processing", "ProcessorOutput": "processing",
    "CheckpointError": "errors", "ContextError": "errors", "MediaError": "errors",
}

__all__ = list(_HOMES) + ["grounding"]

__getattr__, __dir__ = exports(__name__, _HOMES)


class _Library(types.ModuleType):
    def __setattr__(self, name, value):
        # Importing the submodule ``generate`` sets the package attribute of that name to the
        # module; ``mlx_minicpmv.generate`` stays the function, as the public surface says.
        if name in _HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Library
