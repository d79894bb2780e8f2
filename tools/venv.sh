#!/usr/bin/env bash
# Create or update a virtualenv from pinned requirement files.
#   tools/venv.sh                         .venv from requirements-dev.txt (the toolchain)
#   tools/venv.sh .venv-app app/requirements-test.lock   the app's test environment
# The venv records the hash of the pins it was built from; when they did not change this
# returns at once and installs nothing. Files with --hash lines install with --require-hashes.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${1:-.venv}
shift || true
pins=("${@:-requirements-dev.txt}")
python=${PYTHON:-python3}
want=$(cat "${pins[@]}" | sha256sum | cut -c1-16)
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
echo "==> Installing ${pins[*]} into $venv"
args=()
for f in "${pins[@]}"; do args+=(-r "$f"); done
# pip warns about the machine's optional local indexes; those lines are noise here.
"$venv/bin/python" -m pip install --quiet "${args[@]}" 2> >(grep -v 'is ignored: it is neither' >&2)
echo "$want" >"$stamp"
echo "==> $venv ready in $(( $(date +%s) - started ))s"
