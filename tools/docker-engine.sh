#!/usr/bin/env bash
# Make sure a Docker engine answers. On a Debian host where we are root and no engine runs,
# install Debian's docker.io and start dockerd detached (log in $KIT_STATE/dockerd.log).
# Anywhere else, stop with a message that says how to get an engine. Never hangs: every wait
# has a deadline.
set -euo pipefail

state_dir="${KIT_STATE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}"
mkdir -p "$state_dir"
log="$state_dir/dockerd.log"
pidfile="$state_dir/dockerd.pid"
deadline_s="${KIT_DOCKER_TIMEOUT:-60}"

if timeout 10 docker info >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || [ ! -r /etc/debian_version ]; then
  cat >&2 <<'MSG'
error: no Docker engine answers (`docker info` failed).
  The kit's containers need one. Either start your engine (e.g. `sudo systemctl start docker`),
  install Docker Engine (https://docs.docker.com/engine/install/), or run `make` as root on a
  Debian host, where the harness installs Debian's docker.io and starts dockerd itself.
MSG
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "==> Installing Debian's docker.io (no Docker engine found)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  # --no-install-recommends would drop apparmor/cgroupfs helpers we do not need either way.
  timeout 900 apt-get install -y -qq --no-install-recommends docker.io containerd runc iptables >/dev/null
fi

echo "==> Starting dockerd in the background (log: $log)"
# setsid + nohup: detached from this terminal, so make and CI never wait on it.
setsid nohup dockerd >"$log" 2>&1 </dev/null &
echo $! >"$pidfile"

for _ in $(seq "$deadline_s"); do
  if timeout 5 docker info >/dev/null 2>&1; then
    echo "==> dockerd answers (pid $(cat "$pidfile"))"
    exit 0
  fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "error: dockerd exited during start-up; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  sleep 1
done
echo "error: dockerd did not answer within ${deadline_s}s; last lines of $log:" >&2
tail -n 20 "$log" >&2
exit 1
