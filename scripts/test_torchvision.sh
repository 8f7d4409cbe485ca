#!/usr/bin/env bash
# The tests marked `torchvision` (tests/test_video_reference.py): our video pixels against
# transformers' own video processor, which needs torchvision. torchvision does not install beside
# the default suite's torch 2.13, so they run in a venv of their own with torch 2.14.1 and
# torchvision 0.29.1 (on x86_64 Linux with Python 3.11 pip takes both from the local disk).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-torchvision
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
fi
"$venv/bin/pip" install -q -e . "transformers>=5.23,<5.25" pytest
exec "$venv/bin/python" -m pytest -m torchvision tests/test_video_reference.py "$@"
