from .minicpmv import Model

__all__ = ["Model"]
