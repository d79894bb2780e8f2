#!/usr/bin/env bash
# tools/promtool.sh ARGS...: run Prometheus's promtool (checks and unit tests of the alert
# rules in monitoring/). Uses the one on PATH, else unpacks it from Debian's `prometheus`
# package into .cache/promtool without installing the package (which would start a
# Prometheus server on this host).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if command -v promtool >/dev/null; then exec promtool "$@"; fi
dir=$root/.cache/promtool
if [ ! -x "$dir/usr/bin/promtool" ]; then
  echo "==> Unpacking promtool from Debian's prometheus package into .cache/promtool" >&2
  work=$(mktemp -d) && chmod 0755 "$work" # apt-get download runs as _apt
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && timeout 600 apt-get download -qq prometheus >/dev/null) || {
    echo "error: cannot download Debian's prometheus package (apt-get download prometheus)" >&2
    exit 1
  }
  rm -rf "$dir" && mkdir -p "$dir"
  dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
  mkdir -p "$dir/usr/bin" && cp "$work/x/usr/bin/promtool" "$dir/usr/bin/promtool"
fi
exec "$dir/usr/bin/promtool" "$@"
