#!/bin/sh
# Add MiniCPM-V to the Linux desktop menu (after `pip install -e ".[app]"`).
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p ~/.local/share/applications ~/.local/share/icons/hicolor/256x256/apps
cp "$here/assets/icon-256.png" ~/.local/share/icons/hicolor/256x256/apps/minicpmv-app.png
cp "$here/packaging/minicpmv-app.desktop" ~/.local/share/applications/
echo "Installed: look for MiniCPM-V in your applications menu."
