#!/bin/sh
# Build an app's wheel (or one of its local packages') on the controller, reproducibly: from a
# clean copy of the source (no stale build/ directory), with fixed timestamps
# (SOURCE_DATE_EPOCH), without network access (the build backend comes from the running
# Python). Prints "changed" when the wheel in DEST differs from the one already there, and
# removes that distribution's other wheels from DEST (the app's and its packages' share it).
# Usage: build-wheel.sh PYTHON SOURCE_DIR DEST_DIR
set -eu
python=$1 source=$2 dest=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/out" "$dest"
# A clean copy: everything but build products and caches.
tar -C "$source" --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.hypothesis --exclude=.venv --exclude=tests -cf - . | tar -C "$work/src" -xf -
SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel --quiet --no-deps --no-build-isolation \
    --no-index --wheel-dir "$work/out" "$work/src" >/dev/null
wheel=$(ls "$work/out"/*.whl)
name=$(basename "$wheel")
if [ -f "$dest/$name" ] && cmp -s "$wheel" "$dest/$name"; then
  echo "unchanged $name"
else
  rm -f "$dest/${name%%-*}"-*.whl
  cp "$wheel" "$dest/$name"
  echo "changed $name"
fi
