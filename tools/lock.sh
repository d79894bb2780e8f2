#!/usr/bin/env bash
# Re-resolve requirements-dev.txt: keep its header and first block (what we ask for), resolve
# them in a scratch venv, and write the exact versions of everything else below "-- resolved --".
set -euo pipefail
cd "$(dirname "$0")/.."
pins=requirements-dev.txt
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
head_part=$(sed '/^# -- resolved --$/q' "$pins")
wanted=$(grep -E '^[A-Za-z]' <<<"$head_part")
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install --quiet $wanted 2> >(grep -v 'is ignored' >&2)
names=$(sed -E 's/[[=<>].*//' <<<"$wanted" | tr 'A-Z_' 'a-z-')
{
  echo "$head_part"
  "$scratch/venv/bin/pip" freeze | while read -r line; do
    n=$(sed -E 's/==.*//' <<<"$line" | tr 'A-Z_' 'a-z-')
    grep -qx "$n" <<<"$names" || echo "$line"
  done
} >"$pins.new"
mv "$pins.new" "$pins"
echo "==> $pins re-resolved"
