#!/usr/bin/env bash
# Create or update the project virtualenv (.venv/) from requirements-dev.txt.
# The venv records the hash of the pins it was built from; when the pins did not change,
# this returns at once and installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
pins=requirements-dev.txt
python=${PYTHON:-python3}
want=$(sha256sum "$pins" | cut -c1-16)
stamp="$venv/.pins-sha256"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: $python is missing or older than 3.11 (ansible-core 2.19 needs 3.11+);" \
       "set PYTHON=/path/to/python3.11+" >&2
  exit 1
fi

started=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "==> Creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi
echo "==> Installing the pinned toolchain from $pins into $venv"
"$venv/bin/python" -m pip install --quiet -r "$pins" 2> >(grep -v 'is ignored' >&2)
echo "$want" >"$stamp"
echo "==> $venv ready in $(( $(date +%s) - started ))s"
