#!/usr/bin/env bash
# Build dist/dlrd: one file that runs on a Linux machine with no Python.
# Usage: bash packaging/build.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-freeze
.venv-freeze/bin/pip install -q '.[freeze]'
.venv-freeze/bin/pyinstaller --onefile --clean --noconfirm --name dlrd \
    --distpath dist --workpath build/pyinstaller --specpath build/pyinstaller \
    --collect-submodules dlrd packaging/entry.py
dist/dlrd version
