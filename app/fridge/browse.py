"""Jobs a page at a time, for the dashboard and the CLI: a queue's waiting jobs and each
registry (scheduled, started, finished, failed), newest first, never read whole (a queue of
100,000 jobs costs one LRANGE or ZREVRANGE of a page and one pipeline of that page's jobs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kitqueue.queueing import RegisteredJob, make_queue
from kitqueue.store import Store
from rq.exceptions import InvalidJobOperation
from rq.registry import (
    BaseRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer

from .monitoring import describe_job

REGISTRIES: dict[str, type[BaseRegistry]] = {
    "scheduled": ScheduledJobRegistry,
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
}
# "waiting" is the queue itself; the others are its registries.
STATES = ("waiting", *REGISTRIES)
PAGE = 25


@dataclass(frozen=True)
class Page:
    state: str
    queue: str
    jobs: list[dict[str, Any]]
    total: int
    start: int
    size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def number(self) -> int:
        return self.start // self.size + 1


def registry(store: Store, state: str, queue: str) -> BaseRegistry:
    return REGISTRIES[state](queue=make_queue(store, queue))


def page(store: Store, state: str, queue: str, start: int = 0, size: int = PAGE) -> Page:
    """`size` jobs in `state` on `queue` from position `start`: waiting jobs in queue order (the
    next to run first), the registries newest first."""
    if state not in STATES:
        raise ValueError(f"no job state {state!r} (states: {', '.join(STATES)})")
    start = max(start, 0)
    if state == "waiting":
        rq_queue = make_queue(store, queue)
        total, ids = rq_queue.count, rq_queue.get_job_ids(start, size)
    else:
        found = registry(store, state, queue)
        total = found.get_job_count(cleanup=False)
        ids = found.get_job_ids(start, start + size - 1, desc=True, cleanup=False)
    jobs = RegisteredJob.fetch_many(ids, connection=store.redis, serializer=JSONSerializer) if ids else []
    described = [describe_job(job) for job in jobs if job is not None]
    return Page(state=state, queue=queue, jobs=described, total=total, start=start, size=size)


def requeue_all_failed(store: Store, queues: list[str]) -> list[str]:
    """Put every failed job of `queues` back in its queue, a page of ids at a time."""
    done: list[str] = []
    for name in queues:
        failed = FailedJobRegistry(queue=make_queue(store, name))
        while ids := failed.get_job_ids(0, 99, cleanup=False):
            for job_id in ids:
                try:
                    failed.requeue(job_id)
                except InvalidJobOperation:
                    failed.remove(job_id)  # its job expired: nothing to requeue
                    continue
                done.append(job_id)
    return done


def details(job: RegisteredJob) -> dict[str, Any]:
    """Everything the job page shows: describe_job, plus the traceback, the worker, the run
    time, the timeout and RQ's description."""
    found = describe_job(job)
    latest = job.latest_result()
    found["traceback"] = latest.exc_string if found["status"] == "failed" and latest is not None else None
    found["worker"] = job.worker_name
    found["timeout"] = job.timeout
    found["description"] = job.description
    if job.started_at and job.ended_at:
        found["seconds"] = round((job.ended_at - job.started_at).total_seconds(), 3)
    return found
