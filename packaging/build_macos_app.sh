#!/bin/sh
# Build MiniCPM-V.app (and a .dmg) on a Mac with Briefcase; the config is [tool.briefcase] in pyproject.toml.
set -e
cd "$(dirname "$0")/.."
python3 -m venv .venv-briefcase && . .venv-briefcase/bin/activate
pip install -q briefcase
python scripts/make_icons.py
sips -s format icns assets/icon-1024.png --out assets/icon.icns >/dev/null
briefcase create macOS app && briefcase build macOS app && briefcase package macOS app --adhoc-sign
echo "Built: see build/ and dist/"
