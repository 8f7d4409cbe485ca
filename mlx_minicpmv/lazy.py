"""A package's public names imported on first use, so that importing its pure parts loads no MLX."""

import importlib
import sys


def exports(package: str, homes: dict):
    """``__getattr__`` and ``__dir__`` for ``package``, whose public names live in the submodules that
    ``homes`` gives for each name (``{"load": "loading"}``)."""

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{homes[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
