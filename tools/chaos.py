#!/usr/bin/env python3
"""`make chaos`: every fault drill of molecule/resources/tests/kit_faults.py, N times each
(CHAOS_DRILLS, default 5), on the development topology (`make dev`), under continuous enqueue
load through Apache. Prints one line per drill and a table per fault, and writes the results
as JSON (and the table as Markdown) under bench/results/.

    make chaos                                  # every fault, 5 drills each
    make chaos CHAOS_DRILLS=1 CHAOS_FAULTS="crash partition"

Exit status 1 when any drill lost an acknowledged job, left one unrun, answered 5xx other
than 503 or a 503 without Retry-After, or restarted a worker, or when the platform, failed
over with a lost host still away, acknowledged under half as many jobs per second as before
the fault: those are the kit's promises.
"""

from __future__ import annotations

import json
import os
import platform as host_platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "molecule" / "resources" / "tests"), str(ROOT / "plugins" / "module_utils")]

import kit_checks  # noqa: E402
import kit_faults  # noqa: E402

COLUMNS = [
    ("fault", "Fault"),
    ("drills", "Drills"),
    ("acknowledged", "Acknowledged"),
    ("lost", "Lost"),
    ("not_run", "Not run"),
    ("5xx", "5xx"),
    ("503", "503"),
    ("503_bare", "503 without Retry-After"),
    ("unanswered", "Unanswered"),
    ("write_gap_median", "Write gap median (s)"),
    ("write_gap_max", "Write gap max (s)"),
    ("longest_request", "Longest request (s)"),
    ("rate_host_away", "Acknowledged/s, host still lost (before)"),
    ("workers_restarted", "Workers restarted"),
    ("rerun_after_max", "Every job run, s after the worker host's return (max)"),
    ("failed_runs", "Retried after a failed run"),
]


def machine() -> dict:
    """What the figures were measured on: rates move with the CPU, not only with the core count
    (README, "Performance": hello-world 2.5 times faster on one machine than on another). A
    virtual machine's model name is often generic; its family and model numbers are not."""
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())  # the first CPU's
    family, model = info.get("cpu family", "?"), info.get("model", "?")
    cpu = f"{info.get('model name', 'unknown')} (family {family}, model {model})"
    return {"cpus": os.cpu_count(), "cpu": cpu, "system": host_platform.platform()}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    drills = int(os.environ.get("CHAOS_DRILLS", "5"))
    faults = os.environ.get("CHAOS_FAULTS", "").split() or list(kit_faults.DRILLS)
    unknown = [f for f in faults if f not in kit_faults.DRILLS]
    if unknown:
        known = ", ".join(kit_faults.DRILLS)
        print(f"unknown fault(s): {', '.join(unknown)} (known: {known})", file=sys.stderr)
        return 2
    kit_checks.INVENTORY = str(ROOT / "inventories" / "dev")
    platform = kit_faults.Platform.from_inventory()
    if kit_faults.http_status(f"{platform.url}/healthz") != 200:
        print("==> Nothing healthy on the development platform: deploying it first (make dev)")
        subprocess.run([str(ROOT / "tools" / "dev.sh"), "up"], check=True, stdout=subprocess.DEVNULL)  # noqa: S603

    print(f"==> {drills} drill(s) of each fault: {', '.join(faults)}")
    started = time.monotonic()
    results = []
    for fault in faults:
        for number in range(1, drills + 1):
            platform.wait_healthy()
            result = kit_faults.DRILLS[fault](platform)
            results.append(result)
            print(f"  [{number}/{drills}] {result.line()}", flush=True)
    platform.wait_healthy()

    rows = kit_faults.summary(results)
    table = markdown(rows)
    print(f"\n{table}\n")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    report = {
        "date": stamp,
        "machine": machine(),
        "topology": "inventories/dev (make dev)",
        "minutes": round((time.monotonic() - started) / 60, 1),
        "summary": rows,
        "drills": [vars(r) for r in results],
    }
    (out / f"chaos-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    footer = f"{len(results)} drills in {report['minutes']} min, {stamp}."
    (out / "chaos-latest.md").write_text(f"{table}\n\n{footer}\n")
    print(f"==> Written bench/results/chaos-{stamp}.json and bench/results/chaos-latest.md")
    broken = [
        r
        for r in results
        if r.lost
        or r.unfinished
        or r.errors_5xx
        or r.bare_503
        or r.workers_restarted
        or r.replays
        or r.failed_runs
        or (r.rate_during is not None and r.rate_during < 0.5 * (r.rate_before or 0))
    ]
    for result in broken:
        print(f"PROMISE BROKEN: {result.line()} {result.workers_restarted or ''}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
