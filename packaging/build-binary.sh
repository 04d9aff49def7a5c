#!/usr/bin/env bash
# Build dist/dlrd (one file) and dist/dlrd-dir/ (one directory: dlrd + _internal/) from one
# PyInstaller analysis (packaging/dlrd.spec), in a venv of its own (.venv-freeze) so the build
# never depends on, or changes, the development venv.
# Usage: bash packaging/build-binary.sh   (from anywhere; it works in the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
python=${PYTHON:-python3}
# Exit status 3: no build environment (tests/test_binary.py skips then, and says why).
if [ ! -x .venv-freeze/bin/pip ]; then
    "$python" -m venv .venv-freeze \
        || { echo "build-binary.sh: $python -m venv failed (Debian: apt install python3-venv)" >&2; exit 3; }
fi
# Reinstalled on every build: the bundle must hold this tree's dlrd, not the last build's.
.venv-freeze/bin/pip install -q --disable-pip-version-check '.[freeze]' \
    || { echo "build-binary.sh: cannot install PyInstaller ('.[freeze]') into .venv-freeze" >&2; exit 3; }
rm -rf dist/dlrd dist/dlrd-dir
.venv-freeze/bin/pyinstaller --clean --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/dlrd.spec
dist/dlrd version
dist/dlrd-dir/dlrd version >/dev/null
echo "built dist/dlrd ($(du -h dist/dlrd | cut -f1)) and dist/dlrd-dir ($(du -sh dist/dlrd-dir | cut -f1))" \
    "in $(( $(date +%s) - started )) s"
