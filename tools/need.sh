#!/usr/bin/env bash
# tools/need.sh COMMAND:PACKAGE...: install the Debian packages whose commands are missing
# (as root on Debian), or say which ones to install and fail. The fault drills need iptables
# and nsenter on the controller; the benchmarks need wrk.
set -euo pipefail
missing=()
for pair in "$@"; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ]; then
  echo "==> Installing Debian package(s): ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "error: missing ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
  exit 1
fi
