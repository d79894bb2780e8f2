#!/usr/bin/env python3
"""`make bench`: speed and memory of the development platform (`make dev`), each figure beside
a baseline measured in the same run. Numbers, never pass/fail.

- Deploy: the first `site.yml` on new containers against a no-op re-run, the median of three
  (BENCH_DEPLOY=0 keeps the running platform and times the re-runs only); the same over SSH on
  molecule/prod's hosts, before the containers are made (BENCH_SSH=0 skips it).
- Enqueue through Apache (wrk at 8, 32 and 128 connections) against a bare WSGI hello-world
  deployed beside the app with the kit's own roles (bench/hello.yml), the workers stopped.
- Enqueue to start: jobs sent one by one to idle workers.
- Drain: the kit's worker against RQ's `Worker` and `SimpleWorker`, 1, 2 and 4 of each, on the
  same Redis (bench/drain.py, run on the worker host).
- Memory of every daemon (RSS and PSS).
- Failover write gap: tools/chaos.py, BENCH_DRILLS (5) drills of each fault; BENCH_DRILLS=0
  reports the latest chaos results instead.

Writes bench/results/<UTC time>.json, bench/results/latest.md (also put in the README between
its bench markers) and bench/results/latest.png (bench/chart.py, in .venv-bench).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "molecule" / "resources" / "tests"), str(ROOT / "plugins" / "module_utils")]

import kit_checks  # noqa: E402
import kit_faults  # noqa: E402
from chaos import machine  # noqa: E402

INVENTORY = ROOT / "inventories" / "dev"
RESULTS = ROOT / "bench" / "results"
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
NOOP_RUNS = 3
CONNECTIONS = (8, 32, 128)
CPU_AT = 32
HELLO = "hello.bench"
# A process's daemon, from its command line: the first pattern that matches (its groups fill
# the name's {}), for the memory and the CPU tables.
DAEMONS = [
    (r"redis-sentinel|valkey-sentinel|\[sentinel\]", "sentinel"),
    (r"redis-server|valkey-server", "redis-server"),
    (r"^\(wsgi:([^)]+)\)", "mod_wsgi daemons ({})"),
    (r"apache2", "apache2"),
    (r"Horse waiting|Processing ", "worker horses"),
    (r"^rq:worker:", "workers"),
    (r"^rq:scheduler|Scheduler", "schedulers"),
    (r"docker-proxy", "Docker's port proxy"),
]


def run(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, **kwargs)  # noqa: S603


def playbook(*args: str) -> tuple[float, int]:
    """Run ansible-playbook on the development inventory: (seconds, tasks changed)."""
    started = time.monotonic()
    env = dict(os.environ, ANSIBLE_NOCOLOR="true")
    proc = run("ansible-playbook", "-i", str(INVENTORY), *args, env=env)
    log = ROOT / ".cache" / f"bench-{Path(args[-1]).stem}-{int(time.time())}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(proc.stdout)
    if proc.returncode:
        sys.exit(f"ansible-playbook {' '.join(args)} failed:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)  # make may force Ansible's colours
    changed = sum(r["changed"] for r in kit_checks.play_recap(plain).values())
    return round(time.monotonic() - started, 1), changed


def molecule_converge() -> tuple[float, int]:
    """`molecule converge -s prod` (site.yml over SSH): Ansible's own time, from profile_tasks'
    total (Molecule's start-up is not counted), and the tasks changed."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="true", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0", NO_COLOR="1")
    proc = run("molecule", "converge", "-s", "prod", env=env)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    log = ROOT / ".cache" / f"bench-ssh-converge-{int(time.time())}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(plain)
    if proc.returncode:
        sys.exit(f"molecule converge -s prod failed (see {log}):\n{plain[-4000:]}")
    recap = plain[plain.rindex("TASKS RECAP") :]
    hours, minutes, seconds = re.search(r"\)\s+(\d+):(\d\d):(\d\d\.\d+)", recap).groups()
    play_recap = plain[plain.rindex("PLAY RECAP") : plain.rindex("TASKS RECAP")]
    changed = sum(int(n) for n in re.findall(r"changed=(\d+)", play_recap))
    return round(int(hours) * 3600 + int(minutes) * 60 + float(seconds), 1), changed


def deploy_ssh() -> dict:
    """The same comparison over SSH: molecule/prod (four hosts reached like bare metal, TLS on),
    created afresh, converged, converged NOOP_RUNS times again, destroyed. Run while the
    development topology is down (one topology at a time on two cores)."""
    print("==> Deploy over SSH: molecule/prod created, site.yml, then again", flush=True)
    run("molecule", "destroy", "-s", "prod")
    first, first_changed = molecule_converge()
    runs = [molecule_converge() for _ in range(NOOP_RUNS)]
    run("molecule", "destroy", "-s", "prod")
    noop = statistics.median(seconds for seconds, _ in runs)
    return {
        "first_seconds": first,
        "first_changed": first_changed,
        "noop_runs": [seconds for seconds, _ in runs],
        "noop_seconds": noop,
        "noop_changed": max(changed for _, changed in runs),
        "noop_over_first": round(noop / first, 2),
    }


def deploy(fresh: bool) -> dict:
    result: dict = {"first_seconds": None, "first_changed": None}
    if fresh:
        run(str(ROOT / "tools" / "dev.sh"), "down")
        if os.environ.get("BENCH_SSH", "1") != "0":
            result["ssh"] = deploy_ssh()
        print("==> Deploy: new containers, then site.yml, then again", flush=True)
        playbook("playbooks/dev_containers.yml")
        result["first_seconds"], result["first_changed"] = playbook("site.yml")
    else:
        print("==> Deploy: a no-op re-run of site.yml on the running platform", flush=True)
    # Three no-op re-runs, the median reported: one run varies by about a second with what the
    # platform is doing meanwhile (the first deploy's workers and replicas still settling).
    runs = [playbook("site.yml") for _ in range(NOOP_RUNS)]
    result["noop_runs"] = [seconds for seconds, _ in runs]
    result["noop_seconds"] = statistics.median(result["noop_runs"])
    result["noop_changed"] = max(changed for _, changed in runs)
    if result["first_seconds"]:
        result["noop_over_first"] = round(result["noop_seconds"] / result["first_seconds"], 2)
    return result


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return round(float(number) * _UNITS[unit], 2)


def wrk(url: str, connections: int, host: str | None = None, cpu: dict[str, str] | None = None) -> dict:
    """wrk's rate, p50 and p99; with `cpu` (container id -> host name), also the CPU each
    daemon spent per request during the measured run (`cpu_by_daemon`)."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{SECONDS}s", "--latency", url]
    if host:
        args[1:1] = ["-H", f"Host: {host}"]
    # Warm-up: the daemons load the app on their first request.
    run(*["-d2s" if a.startswith("-d") else a for a in args])
    before = cpu_by_daemon(cpu) if cpu is not None else {}
    out = run(*args).stdout
    spent = {k: v - before.get(k, 0.0) for k, v in cpu_by_daemon(cpu).items()} if cpu is not None else {}
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])),
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "non_2xx": int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        **({"cpu_ms_per_request": per_request(spent, out)} if cpu is not None else {}),
    }


def cpu_by_daemon(names: dict[str, str]) -> dict[str, float]:
    """CPU seconds (user + system) spent so far by every process of this machine, summed by
    "host: daemon" (`names`: container id -> host name); the containers' processes are seen
    here, on the kernel they share. Also the whole machine's busy time (/proc/stat), which
    includes wrk's own and the time of any process that exited meanwhile (wrk's is lost that
    way; Apache's and Redis's daemons stay)."""
    ticks = os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            group = Path(f"/proc/{pid}/cgroup").read_text()
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found = re.search(r"docker[/-]([0-9a-f]{64})", group)
        host = names.get(found[1], "other container") if found else "this machine"
        line = line.strip()
        named = (name.format(*m.groups()) for pattern, name in DAEMONS if (m := re.search(pattern, line)))
        daemon = next(named, "kernel threads" if not line else "other processes")
        key = f"{host}: {daemon}"
        spent[key] = spent.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    cpu = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
    spent["all: the whole machine"] = (sum(cpu[:8]) - cpu[3] - cpu[4]) / ticks
    return spent


def per_request(spent: dict[str, float], wrk_output: str) -> dict[str, float]:
    """Milliseconds of CPU per request answered, for what spent at least 0.005 ms."""
    requests = int(re.search(r"(\d+) requests in", wrk_output)[1])
    rows = {k: round(v * 1000 / requests, 3) for k, v in spent.items()}
    return dict(sorted(((k, v) for k, v in rows.items() if v >= 0.005), key=lambda kv: -kv[1]))


def containers() -> dict[str, str]:
    """Every running container's id -> its name."""
    out = kit_faults.docker("ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}")
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def workers(platform: kit_faults.Platform, action: str) -> None:
    for host in platform.workers:
        kit_faults.sh(host, f"systemctl {action} {platform.worker_target}")


def purge(platform: kit_faults.Platform, *queues: str) -> None:
    """Drop the jobs waiting in these queues (wrk's thousands of eat jobs)."""
    script = (
        "local n = 0 for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do "
        "redis.call('DEL', 'rq:job:' .. id) n = n + 1 end redis.call('DEL', KEYS[1]) return n"
    )
    with platform.group.node(platform.group.current_master()) as conn:
        for queue in queues:
            conn.command("EVAL", script, "1", f"rq:queue:{queue}")


def http(platform: kit_faults.Platform) -> list[dict]:
    print("==> Enqueue through Apache against the hello-world app (workers stopped)", flush=True)
    playbook(str(ROOT / "bench" / "hello.yml"))
    workers(platform, "stop")
    rows = []
    master = platform.master_host()
    ids = {cid: f"{name} (master)" if name == master else name for cid, name in containers().items()}
    try:
        for connections in CONNECTIONS:
            cpu = ids if connections == CPU_AT else None  # where the CPU goes, at one level
            hello = wrk(f"{platform.url}/", connections, HELLO, cpu=cpu)
            enqueue = wrk(f"{platform.url}/comer/bench", connections, cpu=cpu)
            purge(platform, "default")
            row = {"connections": connections, "hello": hello, "enqueue": enqueue}
            row["enqueue_over_hello"] = round(enqueue["rps"] / hello["rps"], 2)
            rows.append(row)
            print(f"  {connections:4} connections: {json.dumps(row)}", flush=True)
    finally:
        workers(platform, "start")
    return rows


def enqueue_to_start(platform: kit_faults.Platform, jobs: int = 200) -> dict:
    print(f"==> Enqueue to start: {jobs} jobs, one at a time, idle workers", flush=True)
    platform.wait_healthy()
    http = kit_checks.Http(platform.addresses[platform.web])
    for n in range(10):  # until the workers (just started) have taken jobs and forked their horses
        warm = http.post("/jobs", {"task": "add", "args": [n, 0]}).json()["job_id"]
        http.wait_for_job(warm, {"finished"}, 60)
    ids = []
    for n in range(jobs):
        ids.append(http.post("/jobs", {"task": "add", "args": [n, 1]}).json()["job_id"])
        time.sleep(0.05)
    waits = []
    for job_id in ids:
        job = http.wait_for_job(job_id, {"finished"}, 30)
        started, enqueued = (datetime.fromisoformat(job[k]) for k in ("started_at", "enqueued_at"))
        waits.append((started - enqueued).total_seconds() * 1000)
    waits.sort()
    return {
        "jobs": jobs,
        "p50_ms": round(statistics.median(waits), 1),
        "p99_ms": round(waits[int(len(waits) * 0.99) - 1], 1),
    }


def drain(platform: kit_faults.Platform) -> tuple[list[dict], dict]:
    """The drain table's rows, and the memory of one kit worker and one RQ `Worker` while they
    run jobs that last (bench/drain.py --busy)."""
    host = platform.workers[0]
    unit = platform.worker_units.replace("*", "1")
    print(f"==> Drain on {host}: the kit's worker, RQ's Worker and SimpleWorker; both pools", flush=True)
    env = kit_faults.sh(host, f"systemctl show -p Environment --value {unit}").split()
    python = kit_faults.sh(host, f"systemctl show -p ExecStart --value {unit}")
    python = re.search(r"path=(\S+)/[^/ ]+-worker ", python)[1] + "/python"
    workers(platform, "stop")
    try:
        proc = run(
            "docker",
            "exec",
            "-i",
            *[a for e in env for a in ("-e", e)],
            host,
            python,
            "-",
            "--jobs",
            os.environ.get("BENCH_DRAIN_JOBS", "600"),
            "--workers",
            "1,2,4",
            "--busy",
            "20",
            input=(ROOT / "bench" / "drain.py").read_text(),
        )
    finally:
        workers(platform, "start")
    if proc.returncode:
        sys.exit(f"bench/drain.py failed:\n{proc.stderr[-4000:]}")
    return drain_rows(json.loads(proc.stdout))


def drain_rows(results: list[dict]) -> tuple[list[dict], dict]:
    """bench/drain.py's results as the drain table's rows (one per number of workers) and the
    memory while jobs run."""
    busy = {r["kind"]: r for r in results if r["job_seconds"]}
    results = [r for r in results if not r["job_seconds"]]
    rows = []
    for count in sorted({r["workers"] for r in results}):
        by_kind = {r["kind"]: r for r in results if r["workers"] == count}
        kit, rq, simple = by_kind["fridge"], by_kind["rq"], by_kind["rq-simple"]
        rows.append(
            {
                "workers": count,
                **{f"{k}_jobs_per_second": v["jobs_per_second"] for k, v in by_kind.items()},
                **{f"{k}_pss_mib": v["pss_mib_mean"] for k, v in by_kind.items()},
                **{f"{k}_pss_mib_peak": v["pss_mib_peak"] for k, v in by_kind.items()},
                "kit_over_rq": round(kit["jobs_per_second"] / rq["jobs_per_second"], 2),
                "kit_over_simple": round(kit["jobs_per_second"] / simple["jobs_per_second"], 2),
            }
        )
        print(f"  {json.dumps(rows[-1])}", flush=True)
    kit, rq = busy["fridge"], busy["rq"]
    while_busy = {
        "jobs": kit["jobs"],
        "job_seconds": kit["job_seconds"],
        **{f"{k}_pss_mib": v["pss_mib_mean"] for k, v in (("kit", kit), ("rq", rq))},
        **{f"{k}_pss_mib_peak": v["pss_mib_peak"] for k, v in (("kit", kit), ("rq", rq))},
    }
    print(f"  while jobs run: {json.dumps(while_busy)}", flush=True)
    return rows, while_busy


MEMORY = r"""
import collections, os, re
kinds = collections.defaultdict(lambda: [0, 0, 0])
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        line = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
        pss = rss = 0
        for row in open(f"/proc/{pid}/smaps_rollup"):
            if row.startswith("Pss:"): pss = int(row.split()[1])
            if row.startswith("Rss:"): rss = int(row.split()[1])
    except OSError:
        continue
    for pattern, name in DAEMONS:
        if m := re.search(pattern, line):
            name = name.format(*m.groups())
            kinds[name][0] += 1; kinds[name][1] += rss; kinds[name][2] += pss
            break
for name, (n, rss, pss) in sorted(kinds.items()):
    print(f"{name}\t{n}\t{rss / 1024:.1f}\t{pss / 1024:.1f}")
"""


def memory(platform: kit_faults.Platform) -> list[dict]:
    print("==> Memory of every daemon (RSS and PSS)", flush=True)
    code = f"DAEMONS = {DAEMONS!r}\n{MEMORY}"
    rows = []
    for host in sorted(platform.addresses):
        out = kit_faults.docker("exec", "-i", host, "python3", "-c", code)
        for line in out.splitlines():
            name, count, rss, pss = line.split("\t")
            rows.append(
                {
                    "host": host,
                    "daemon": name,
                    "processes": int(count),
                    "rss_mib": float(rss),
                    "pss_mib": float(pss),
                }
            )
    return rows


def failover() -> dict:
    drills = os.environ.get("BENCH_DRILLS", "5")
    if drills != "0":
        print(f"==> Failover write gap: tools/chaos.py, {drills} drills of each fault", flush=True)
        chaos = [sys.executable, str(ROOT / "tools" / "chaos.py")]
        subprocess.run(chaos, check=False, env=dict(os.environ, CHAOS_DRILLS=drills))  # noqa: S603
    latest = max(RESULTS.glob("chaos-2*.json"), key=lambda p: p.name)
    report = json.loads(latest.read_text())
    keys = ("fault", "drills", "acknowledged", "lost", "write_gap_median", "write_gap_max")
    rows = [{k: r[k] for k in keys} for r in report["summary"]]
    return {"source": latest.name, "date": report["date"], "faults": rows}


def markdown(report: dict) -> str:
    lines = [
        f"Measured by `make bench` on {report['date']} ({report['machine']['cpus']} cores, "
        f"{report['machine']['cpu']}, "
        "inventories/dev: every host a container on one machine).",
        "",
        "| Drain, no-op jobs | Kit's worker | RQ `Worker` | RQ `SimpleWorker` | Kit / `Worker` "
        "| Kit / `SimpleWorker` | PSS per worker, mean (peak): kit, `Worker` (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["drain"]:
        lines.append(
            f"| {r['workers']} worker(s) | {r['fridge_jobs_per_second']:.0f} jobs/s | "
            f"{r['rq_jobs_per_second']:.0f} | {r['rq-simple_jobs_per_second']:.0f} | "
            f"**{r['kit_over_rq']:.2f}x** | {r['kit_over_simple']:.2f}x | "
            f"{r['fridge_pss_mib']:.1f} ({r['fridge_pss_mib_peak']:.1f}), "
            f"{r['rq_pss_mib']:.1f} ({r['rq_pss_mib_peak']:.1f}) |"
        )
    pooled = [r for r in report["drain"] if "fridge-pool_pss_mib" in r]
    if pooled:
        lines += [
            "",
            "| Job slots in one process | Kit (`--slots`) | RQ `WorkerPool` | Kit / `WorkerPool` "
            "| PSS per slot, mean (peak): kit, `WorkerPool`, one RQ `Worker` each (MiB) |",
            "|---|---|---|---|---|",
        ]
    for r in pooled:
        lines.append(
            f"| {r['workers']} slots | {r['fridge-pool_jobs_per_second']:.0f} jobs/s | "
            f"{r['rq-pool_jobs_per_second']:.0f} | "
            f"{r['fridge-pool_jobs_per_second'] / r['rq-pool_jobs_per_second']:.2f}x | "
            f"**{r['fridge-pool_pss_mib']:.1f}** ({r['fridge-pool_pss_mib_peak']:.1f}), "
            f"{r['rq-pool_pss_mib']:.1f} ({r['rq-pool_pss_mib_peak']:.1f}), {r['rq_pss_mib']:.1f} |"
        )
    if b := report.get("memory_while_busy"):
        lines += [
            "",
            f"PSS per worker while it runs jobs of {b['job_seconds']} s ({b['jobs']} jobs, one worker), "
            f"mean (peak): kit {b['kit_pss_mib']} ({b['kit_pss_mib_peak']}) MiB, RQ `Worker` "
            f"{b['rq_pss_mib']} ({b['rq_pss_mib_peak']}) MiB.",
        ]
    lines += [
        "",
        "| Connections | Enqueue (`GET /comer/x`) | p50 / p99 | Hello-world | p50 / p99 | Enqueue / hello |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["http"]:
        e, h = r["enqueue"], r["hello"]
        lines.append(
            f"| {r['connections']} | {e['rps']} req/s | {e['p50_ms']} / **{e['p99_ms']} ms** | "
            f"{h['rps']} req/s | {h['p50_ms']} / {h['p99_ms']} ms | **{r['enqueue_over_hello']:.2f}** |"
        )
    lines += cpu_table(report["http"])
    s, d = report["enqueue_to_start"], report["deploy"]
    lines += [
        "",
        f"Enqueue to start ({s['jobs']} jobs, idle workers): p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms.",
    ]
    first = f"{d['first_seconds']} s ({d['first_changed']} changes)" if d["first_seconds"] else "not measured"
    ratio = f", **{d['noop_over_first']:.2f}** of the first" if d.get("noop_over_first") else ""
    lines += [
        "",
        f"Deploy (`site.yml`): first {first}; no-op re-run {d['noop_seconds']} s, the median of "
        f"{', '.join(map(str, d.get('noop_runs', [d['noop_seconds']])))} "
        f"({d['noop_changed']} changes at most){ratio}.",
    ]
    if ssh := d.get("ssh"):
        lines += [
            "",
            f"Over SSH (molecule/prod: four hosts reached like bare metal, TLS on; Ansible's own time): "
            f"first {ssh['first_seconds']} s ({ssh['first_changed']} changes); no-op re-run "
            f"{ssh['noop_seconds']} s, the median of {', '.join(map(str, ssh['noop_runs']))} "
            f"({ssh['noop_changed']} changes at most), **{ssh['noop_over_first']:.2f}** of the first.",
        ]
    f = report["failover"]
    lines += [
        "",
        f"| Fault ({f['source']}) | Drills | Acknowledged | Lost | Write gap median / max (s) |",
        "|---|---|---|---|---|",
    ]
    for r in f["faults"]:
        lines.append(
            f"| {r['fault']} | {r['drills']} | {r['acknowledged']} | {r['lost']} | "
            f"{r['write_gap_median']} / {r['write_gap_max']} |"
        )
    lines += ["", "| Host | Daemon | Processes | RSS (MiB) | PSS (MiB) |", "|---|---|---|---|---|"]
    for r in report["memory"]:
        lines.append(f"| {r['host']} | {r['daemon']} | {r['processes']} | {r['rss_mib']} | {r['pss_mib']} |")
    return "\n".join(lines) + "\n"


def cpu_table(http: list[dict]) -> list[str]:
    """Where the CPU went, per request, in the run that measured it (CPU_AT connections)."""
    row = next((r for r in http if "cpu_ms_per_request" in r["enqueue"]), None)
    if row is None:
        return []
    enqueue, hello = row["enqueue"]["cpu_ms_per_request"], row["hello"]["cpu_ms_per_request"]
    total = "all: the whole machine"
    keys = sorted(set(enqueue) | set(hello), key=lambda k: (k == total, -enqueue.get(k, 0.0)))
    lines = [
        "",
        f"| CPU per request at {row['connections']} connections (ms) | Enqueue | Hello-world |",
        "|---|---|---|",
    ]
    for key in keys:
        e, h = (f"{side[key]:.3f}" if key in side else "-" for side in (enqueue, hello))
        lines.append(f"| {key} | **{e}** | **{h}** |" if key == total else f"| {key} | {e} | {h} |")
    return lines


def readme(summary: str) -> None:
    path = ROOT / "README.md"
    text = path.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        path.write_text(f"{head}{begin}\n{summary}{end}{rest.split(end, 1)[1]}")


def main() -> int:
    kit_checks.INVENTORY = str(INVENTORY)
    run(str(ROOT / "tools" / "need.sh"), "wrk:wrk")
    fresh = os.environ.get("BENCH_DEPLOY", "1") != "0"
    if not fresh and kit_faults.http_status("http://localhost:8080/healthz") != 200:
        fresh = True
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    report: dict = {"date": stamp, "machine": machine()}
    report["deploy"] = deploy(fresh)
    platform = kit_faults.Platform.from_inventory()
    platform.wait_healthy()
    report["http"] = http(platform)
    report["enqueue_to_start"] = enqueue_to_start(platform)
    report["drain"], report["memory_while_busy"] = drain(platform)
    enqueue_to_start(platform, jobs=10)  # the restarted workers have their horses again
    report["memory"] = memory(platform)
    report["failover"] = failover()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    summary = markdown(report)
    (RESULTS / "latest.md").write_text(summary)
    readme(summary)
    chart = run(
        str(ROOT / ".venv-bench" / "bin" / "python"),
        str(ROOT / "bench" / "chart.py"),
        str(out),
        str(RESULTS / "latest.png"),
    )
    drawn = "ok" if chart.returncode == 0 else chart.stderr.strip()[-300:]
    print(f"\n{summary}\n==> Written {out.relative_to(ROOT)}, bench/results/latest.md and latest.png")
    print(f"    (chart: {drawn}); the README shows the summary")
    return 0


if __name__ == "__main__":
    sys.exit(main())
