#!/usr/bin/env bash
# The app's tests (`make test-app`): real redis-server and redis-sentinel processes on
# 127.0.0.1, started by the tests' fixtures. Installs Debian's packages when they are missing
# (root on Debian), without letting their services start on this host.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-sentinel >/dev/null; then
  if [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ]; then
    echo "==> Installing Debian's redis-server and redis-sentinel for the app tests"
    policy=/usr/sbin/policy-rc.d
    created=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && created=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
      redis-server redis-sentinel >/dev/null || { [ -n "$created" ] && rm -f "$policy"; exit 1; }
    [ -n "$created" ] && rm -f "$policy"
  else
    echo "error: the app tests need redis-server and redis-sentinel on PATH" \
         "(Debian: apt-get install redis-server redis-sentinel)." >&2
    exit 1
  fi
fi

# test_monitoring.py runs the alert rules with Prometheus's promtool.
tools/promtool.sh --version >/dev/null
tools/venv.sh .venv-app app/requirements-test.lock
# kitqueue (core/) and fridge, editable: their entry points register fridge's tasks
# (kitqueue.registry), as the wsgi_app role's installed wheels do on the hosts.
.venv-app/bin/python -m pip install --quiet --no-deps -e core -e app
cd app
exec ../.venv-app/bin/python -m pytest "$@"
