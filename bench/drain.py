"""Drain speed and memory of the kit's worker against RQ's, in the same run, on the same Redis.

Run where the app is installed, with its configuration (FRIDGE_CONFIG and the environment the
worker units get), by the app's Python:

    python bench/drain.py --jobs 600 --workers 1,2,4 > drain.json

For each kind of worker and each number of workers: a queue of its own is filled with no-op
jobs (fridge.tasks.add), that many worker processes start in burst mode, and the rate is the
number of jobs over the time from the first job's start to the last one's end (process start-up
is not counted). Memory: the proportional set size (PSS) of one worker with its children
(its horse), sampled every 50 ms over that same time: the mean and the peak. Kinds:
- fridge: the kit's worker (one preforked work horse runs many jobs);
- rq: RQ's stock forking `Worker` (a fork for every job);
- rq-simple: RQ's `SimpleWorker` (no fork at all: no crash isolation; the ceiling);
- fridge-pool, rq-pool: with 2 or more workers, one process forks them all (see POOLS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

CHILD = """
import sys
from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer
from fridge.config import for_worker, load
from kitqueue.store import Store
from kitqueue.worker import build_worker, run_slots

kind, queue, name, slots = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = Store(for_worker(load()))
quiet = {"burst": True, "with_scheduler": False, "logging_level": "WARNING"}
if kind == "fridge-pool":  # fridge-worker --slots
    sys.exit(run_slots(store, [queue], name, slots, lambda worker: worker.work(**quiet), burst=True))
if kind == "fridge":
    worker = build_worker(store, [queue], name)
elif kind == "rq-pool":
    from rq.worker_pool import WorkerPool
    master = store.node(store.master_address())  # its workers rebuild a plain connection from it
    WorkerPool([queue], connection=master, num_workers=slots, serializer=JSONSerializer).start(
        burst=True, logging_level="WARNING"
    )
    sys.exit(0)
else:
    from rq import Queue
    cls = Worker if kind == "rq" else SimpleWorker
    worker = cls([Queue(queue, connection=store.redis, serializer=JSONSerializer)],
                 connection=store.redis, serializer=JSONSerializer, name=name)
worker.work(**quiet)
"""

KINDS = ("fridge", "rq", "rq-simple", "fridge-pool", "rq-pool")
# One process whose `workers` slots are worker processes forked from it: `fridge-worker --slots`
# (kitqueue/pool.py) and RQ's WorkerPool (`rq worker-pool`). Their memory is per slot: the
# whole process tree's over the number of slots. With one worker they are the plain kinds.
POOLS = ("fridge-pool", "rq-pool")
# A job that runs this long (fridge.tasks.sleep): RQ's horse then lives for most of the run, as
# it does with real work, where with no-op jobs its worker is mostly the parent alone.
BUSY_SECONDS = 0.3


def pss_mib(pid: int) -> float:
    """PSS of a process and its descendants, in MiB (0 when it is gone)."""
    total = 0
    pids, seen = [pid], set()
    while pids:
        current = pids.pop()
        seen.add(current)
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            kids = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        pids += [int(k) for k in kids if int(k) not in seen]
    return total / 1024


def drain(store, kind: str, jobs: int, workers: int, job_seconds: float = 0.0) -> dict:
    """`jobs` no-op jobs (fridge.tasks.add), or with `job_seconds` jobs that sleep that long."""
    from fridge.tasks import add, sleep
    from rq import Queue
    from rq.serializers import JSONSerializer

    name = f"bench-{kind}-{workers}-{uuid.uuid4().hex[:6]}"
    queue = Queue(name, connection=store.redis, serializer=JSONSerializer)
    # By name: the kit's worker fails a stored job whose arguments come by position, as its API
    # refuses it (RQ's workers take both).
    task, kwargs = (sleep, {"seconds": job_seconds}) if job_seconds else (add, {"a": 1, "b": 2})
    with store.redis.pipeline() as pipe:
        data = [Queue.prepare_data(task, kwargs=kwargs, result_ttl=600, ttl=600) for _ in range(jobs)]
        enqueued = queue.enqueue_many(data, pipeline=pipe)
        pipe.execute()
    ids = [job.id for job in enqueued]
    pooled = kind in POOLS
    command = [sys.executable, "-c", CHILD, kind, name]
    procs = [
        subprocess.Popen([*command, f"{name}-{n}", str(workers)], env=os.environ)  # noqa: S603
        for n in range(1 if pooled else workers)
    ]
    slots = workers if pooled else 1  # job slots in each process's tree
    sampled: list[tuple[float, float]] = []  # (when, PSS of one worker, or one slot of a pool)
    while any(p.poll() is None for p in procs):
        now = time.time()
        sampled += [(now, m / slots) for m in (pss_mib(p.pid) for p in procs if p.poll() is None) if m]
        time.sleep(0.05)
    with store.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(f"rq:job:{job_id}")
        hashes = pipe.execute()
    rows = [[h.get(k, h.get(k.encode())) for k in ("status", "started_at", "ended_at")] for h in hashes]
    finished = [r for r in rows if r[0] in (b"finished", "finished")]
    starts = [_when(r[1]) for r in finished]
    ends = [_when(r[2]) for r in finished]
    seconds = (max(ends) - min(starts)).total_seconds() if finished else float("nan")
    # Memory while the jobs run, as the rate: not while the workers start (import) or stop.
    first, last = (min(starts).timestamp(), max(ends).timestamp()) if finished else (0.0, 0.0)
    samples = [m for when, m in sampled if first <= when <= last] or [m for _, m in sampled]
    store.redis.delete(*[f"rq:job:{job_id}" for job_id in ids])
    return {
        "kind": kind,
        "workers": workers,
        "jobs": jobs,
        "job_seconds": job_seconds,
        "finished": len(finished),
        "seconds": round(seconds, 3),
        "jobs_per_second": round(len(finished) / seconds, 1) if finished else 0.0,
        "pss_mib_mean": round(sum(samples) / len(samples), 1) if samples else 0.0,
        "pss_mib_peak": round(max(samples, default=0.0), 1),
    }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _when(value) -> datetime:
    """RQ's timestamps are UTC, with or without a zone."""
    moment = datetime.fromisoformat(_text(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def checked(result: dict) -> dict:
    """A result, printed; a drain whose jobs did not all finish is no figure (the worker's log
    above says why): the bench stops, naming it."""
    print(json.dumps(result), file=sys.stderr)
    if result["finished"] < result["jobs"]:
        done = f"{result['finished']} of {result['jobs']} jobs finished"
        sys.exit(f"{result['kind']} with {result['workers']} worker(s): {done}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="then this many jobs of BUSY_SECONDS on one kit worker and one RQ Worker: memory while jobs run",
    )
    args = parser.parse_args()
    from fridge.config import for_worker, load
    from kitqueue.store import Store

    store = Store(for_worker(load()))
    results = []
    for workers in map(int, args.workers.split(",")):
        for kind in args.kinds.split(","):
            if kind in POOLS and workers == 1:
                continue
            results.append(checked(drain(store, kind, args.jobs * workers, workers)))
    for kind in ("fridge", "rq") if args.busy else ():
        results.append(checked(drain(store, kind, args.busy, 1, BUSY_SECONDS)))
    json.dump(results, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
