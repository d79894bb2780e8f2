#!/usr/bin/env bash
# `make bench`: speed and memory of the development platform (numbers, not pass/fail).
# Deploys it first when nothing answers on localhost:8080. Prints a table; the figures drift
# between machines and runs, so compare ratios taken in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
base=http://localhost:8080
duration=${BENCH_SECONDS:-5}

if ! curl -fs -o /dev/null "$base/healthz"; then
  echo "==> Nothing healthy on $base: deploying the development platform first (make dev)"
  tools/dev.sh up >/dev/null
fi
tools/need.sh wrk:wrk

rate() {  # wrk's requests/s and 99th percentile latency for one URL
  wrk -t2 -c16 -d"${duration}s" --latency "$@" 2>&1 | awk '
    /Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {bad=$NF}
    END {printf "%10.0f req/s  p99 %8s  non-2xx %s\n", rps, p99, (bad==""?0:bad)}'
}

echo "==> Web tier through Apache + mod_wsgi (wrk, 2 threads, 16 connections, ${duration}s each)"
printf '  %-48s' "GET /openapi.json (app only, no Redis)";  rate "$base/openapi.json"
printf '  %-48s' "GET /healthz (Sentinel + Redis reads)";    rate "$base/healthz"
printf '  %-48s' "GET /comer/<x> (enqueue + WAIT 1 replica)"; rate "$base/comer/bench"

# With kit_redis_tls, Redis and Sentinel speak TLS only, with the kit's development CA.
tls=()
if docker exec kit-data1 grep -q '^tls-port' /etc/redis/redis.conf; then tls=(--tls --cacert /etc/redis/tls/ca.crt); fi
admin=(docker exec -e REDISCLI_AUTH=dev-admin-4c1b9e2f kit-data1 redis-cli "${tls[@]}" --user kit-admin)
master=$(docker exec -e REDISCLI_AUTH=dev-sentinel-9e1a7c3f kit-data1 redis-cli "${tls[@]}" -p 26379 \
  SENTINEL get-master-addr-by-name kit | head -1)
# The eat jobs just enqueued take EAT_SECONDS each; drop them so the drain below measures
# the workers' own overhead with jobs that do nothing.
"${admin[@]}" -h "$master" DEL rq:queue:default >/dev/null

echo "==> Workers draining no-op jobs (2 workers on kit-worker1)"
script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat >"$script" <<'LUA'
wrk.method = "POST"
wrk.body = '{"task": "add", "args": [1, 2], "queue": "low"}'
wrk.headers["Content-Type"] = "application/json"
LUA
depth() { "${admin[@]}" -h "$master" LLEN rq:queue:low | tr -d '\r'; }
printf '  %-48s' "POST /jobs add (enqueue, 3s)"
wrk -t2 -c8 -d3s -s "$script" "$base/jobs" 2>&1 | awk '/Requests\/sec/ {printf "%10.0f req/s\n", $2}'
start=$(date +%s.%N); backlog=$(depth)
while [ "$(depth)" -gt 0 ]; do sleep 0.2; done
end=$(date +%s.%N)
awk -v n="$backlog" -v s="$start" -v e="$end" \
  'BEGIN {printf "  %d queued jobs drained in %.1fs: %.0f jobs/s (forking worker, fork per job)\n", n, e-s, n/(e-s)}'

echo "==> Memory (RSS)"
docker exec kit-app1 ps -eo rss=,args= | awk '/\(wsgi:/ {n++; s+=$1} END {printf "  mod_wsgi daemon processes: %d, %.1f MiB in all\n", n, s/1024}'
docker exec kit-worker1 ps -eo rss=,args= | awk '/rq:worker:/ {n++; s+=$1} END {printf "  workers: %d, %.1f MiB in all\n", n, s/1024}'
for h in kit-data1 kit-data2; do
  docker exec "$h" ps -eo rss=,args= | awk -v h="$h" '/redis-(server|sentinel)/ {printf "  %s %s: %.1f MiB\n", h, $2, $1/1024}'
done
