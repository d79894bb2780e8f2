#!/usr/bin/env bash
# `make bench`: speed and memory of the development platform (numbers, not pass/fail).
# Deploys it first when nothing answers on localhost:8080. Prints a table; the figures drift
# between machines and runs, so compare ratios taken in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
base=http://localhost:8080
duration=${BENCH_SECONDS:-10}

if ! curl -fs -o /dev/null "$base/healthz"; then
  echo "==> Nothing healthy on $base: deploying the development platform first (make dev)"
  tools/dev.sh up >/dev/null
fi
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "error: wrk is missing (apt-get install wrk)" >&2; exit 1
  fi
fi

rate() {  # wrk's requests/s and 99th percentile latency for one URL
  wrk -t2 -c16 -d"${duration}s" --latency "$@" 2>&1 | awk '
    /Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {bad=$NF}
    END {printf "%10.0f req/s  p99 %8s  non-2xx %s\n", rps, p99, (bad==""?0:bad)}'
}

echo "==> Web tier through Apache + mod_wsgi (wrk, 2 threads, 16 connections, ${duration}s each)"
printf '  %-44s' "GET /openapi.json (app only, no Redis)";  rate "$base/openapi.json"
printf '  %-44s' "GET /healthz (Sentinel + Redis reads)";    rate "$base/healthz"
printf '  %-44s' "GET /comer/<x> (enqueue, WAIT 1 replica)"; rate "$base/comer/bench"

echo "==> Workers draining the queue"
docker exec kit-data1 true 2>/dev/null || { echo "  (dev containers not found; skipped)"; exit 0; }
admin=(docker exec -e REDISCLI_AUTH=dev-admin-4c1b9e2f kit-data1 redis-cli --user kit-admin)
master=$(docker exec -e REDISCLI_AUTH=dev-sentinel-9e1a7c3f kit-data1 redis-cli -p 26379 \
  SENTINEL get-master-addr-by-name kit | head -1)
depth() { "${admin[@]}" -h "$master" LLEN rq:queue:default | tr -d '\r'; }
start=$(date +%s.%N); backlog=$(depth)
while [ "$(depth)" -gt 0 ]; do sleep 0.5; done
end=$(date +%s.%N)
awk -v n="$backlog" -v s="$start" -v e="$end" \
  'BEGIN {printf "  %d queued eat jobs drained in %.1fs: %.1f jobs/s (each job eats for EAT_SECONDS)\n", n, e-s, n/(e-s)}'

echo "==> Memory (RSS)"
docker exec kit-app1 ps -eo rss=,args= | awk '/\(wsgi:/ {n++; s+=$1} END {printf "  mod_wsgi daemon processes: %d, %.1f MiB in all\n", n, s/1024}'
docker exec kit-worker1 ps -eo rss=,args= | awk '/rq:worker:/ {n++; s+=$1} END {printf "  workers: %d, %.1f MiB in all\n", n, s/1024}'
for h in kit-data1 kit-data2; do
  docker exec "$h" ps -eo rss=,args= | awk -v h="$h" '/redis-(server|sentinel)/ {printf "  %s %s: %.1f MiB\n", h, $2, $1/1024}'
done
