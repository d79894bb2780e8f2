#!/bin/sh
# Build an app's wheel (or one of its local packages') on the controller, reproducibly: from a
# clean copy of the source (no stale build/ directory), with fixed timestamps
# (SOURCE_DATE_EPOCH), without network access (the build backend comes from the running
# Python). Prints "changed" when the wheel in DEST differs from the one already there, and
# removes that distribution's other wheels from DEST (the app's and its packages' share it).
# A source whose files are byte for byte those the wheel in DEST was built from is not built
# again (DEST/.built-*: the files' sha256, the wheel's name and its sha256, checked, since
# another checkout of the same project writes the same wheel name there): a re-run costs two
# hashes, not a build. Usage: build-wheel.sh PYTHON SOURCE_DIR DEST_DIR
set -eu
python=$1 source=$2 dest=$3
mkdir -p "$dest"
# The source as built: everything but build products, caches and tests.
source_tar() {
  tar -C "$source" --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ \
      --exclude=.hypothesis --exclude=.venv --exclude=tests "$@" -cf - .
}
fingerprint=$( (printf '%s\n' "$python"; source_tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner) \
  | sha256sum | cut -d' ' -f1)
stamp="$dest/.built-$(printf '%s' "$source" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  read -r built name sum < "$stamp" || true
  if [ "$built" = "$fingerprint" ] && [ -f "$dest/$name" ] \
     && [ "$(sha256sum < "$dest/$name" | cut -d' ' -f1)" = "$sum" ]; then
    echo "unchanged $name"
    exit 0
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/out"
source_tar | tar -C "$work/src" -xf -
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
echo "$fingerprint $name $(sha256sum < "$dest/$name" | cut -d' ' -f1)" > "$stamp"
