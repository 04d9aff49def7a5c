#!/bin/sh
# dlrd benchmark: installs wrk from Debian's packages if it is missing, then runs bench/run.py.
#   bench/run.sh [run.py options]      (bench/run.sh --help lists them)
set -eu
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench: wrk is missing; install it with: sudo apt-get install -y wrk" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" bench/run.py "$@"
