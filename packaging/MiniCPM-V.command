#!/bin/bash
# Double-click on a Mac: sets up (first time) and starts the MiniCPM-V app from this checkout.
cd "$(dirname "$0")/.." || exit 1
if [ ! -x .venv/bin/python ]; then
    echo "First start: installing into .venv (a few minutes)…"
    python3 -m venv .venv && .venv/bin/pip install -q -e ".[app]" || { echo "Install failed"; read -r; exit 1; }
fi
exec .venv/bin/python -m app
