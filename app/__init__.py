"""The desktop app: ``python -m app`` (or ``minicpmv-app``)."""
