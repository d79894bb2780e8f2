"""Jobs a page at a time, for the dashboard and the CLI: a queue's waiting jobs and each
registry (scheduled, started, finished, failed), newest first, never read whole (a queue of
100,000 jobs costs one LRANGE or ZREVRANGE of a page and one pipeline of that page's jobs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from kitqueue.queueing import RegisteredJob, make_queue
from kitqueue.store import Store, Unavailable
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.registry import (
    BaseRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer

from .monitoring import describe_job

# A requeue's transaction starts again when its queue's failed registry changed under it (another
# job failed or was requeued meanwhile), at most this many times.
WATCH_ATTEMPTS = 50

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


class NotFailed(Exception):
    """The job is not (or no longer) in its queue's failed registry: requeued or deleted by
    someone else meanwhile. Nothing was done."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is not failed any more: nothing done")


class _Requeued(RegisteredJob):
    """A failed job on its way back to its queue. FailedJobRegistry.add gave its hash an expiry
    (FAILURE_TTL) and RQ's requeue leaves it: a job requeued late in that time expired while it
    waited. The requeue's transaction (requeue_failed) writes the job with RQ's
    Queue._persist_job, whose last step is `cleanup(ttl=job.ttl)`; for a job with no TTL of
    its own that step drops the expiry here (PERSIST), in the same transaction."""

    def cleanup(
        self, ttl: int | None = None, pipeline: Pipeline | None = None, remove_from_queue: bool = True
    ) -> None:
        if ttl is None and pipeline is not None:
            pipeline.persist(self.key)
            return
        super().cleanup(ttl, pipeline, remove_from_queue)


def requeue_failed(store: Store, queue: str, job_id: str) -> None:
    """Put a failed job of `queue` back in it, with no expiry, in one transaction: its removal
    from the failed registry (ZREM) and RQ's own writes of a queued job (Queue._enqueue_job)
    commit together or not at all. RQ's requeue (BaseRegistry.requeue, whose steps these are)
    sends the ZREM first and the writes in a second round trip: a process killed between the
    two, or a failover, left the job in neither place (app/tests/test_cli.py). The registry and
    the job are watched (WATCH) and the job read after: NotFailed when it is not in the
    registry, NoSuchJobError when it is gone; nothing is done then. Not retried through a
    failover: a connection lost meanwhile is Unavailable (503), saying the requeue may or may
    not be done (a lost EXEC reply), and a second try says NotFailed for a job that was."""
    failed = registry(store, "failed", queue)
    with store.redis.pipeline() as pipe:
        for attempt in range(WATCH_ATTEMPTS):
            try:
                pipe.watch(failed.key, _Requeued.key_for(job_id))
                job = _Requeued.fetch(job_id, connection=store.redis, serializer=JSONSerializer)
                if pipe.zscore(failed.key, job.id) is None:
                    raise NotFailed(job_id)
                origin = Queue(
                    job.origin, connection=store.redis, job_class=_Requeued, serializer=JSONSerializer
                )
                pipe.multi()
                pipe.zrem(failed.key, job.id)
                job.started_at = job.ended_at = None
                job._exc_info = ""  # as RQ's requeue
                origin._enqueue_job(job, pipeline=pipe)
                pipe.execute()
                return
            except WatchError as error:
                # redis-py raises a connection lost while watching as a WatchError too.
                lost = error.__cause__ or error.__context__
                if isinstance(lost, redis.ConnectionError | redis.TimeoutError):
                    raise Unavailable(
                        f"Redis connection lost during the requeue of job {job_id}, which may or may "
                        f"not be done ({type(lost).__name__}: {lost})"
                    ) from error
                if attempt + 1 == WATCH_ATTEMPTS:  # the registry changed under every try
                    changing = f"the failed registry of {queue} kept changing: job {job_id} not requeued"
                    raise Unavailable(changing) from error


def delete_failed(store: Store, job: RegisteredJob) -> None:
    """Delete a failed job, only once it is taken out of its queue's failed registry (ZREM):
    NotFailed when it was not there (requeued meanwhile: it is queued, and stays)."""
    if not registry(store, "failed", job.origin).remove(job.id):
        raise NotFailed(job.id)
    job.delete()


def failed_count(store: Store, queues: list[str]) -> int:
    return sum(registry(store, "failed", name).get_job_count(cleanup=False) for name in queues)


def requeue_all_failed(store: Store, queues: list[str], at_most: int | None = None) -> list[str]:
    """Put every failed job of `queues` back in its queue (`at_most` of them), a page of ids
    at a time."""
    done: list[str] = []
    for name in queues:
        failed = FailedJobRegistry(queue=make_queue(store, name))
        while ids := failed.get_job_ids(0, 99, cleanup=False):
            for job_id in ids:
                if at_most is not None and len(done) >= at_most:
                    return done
                try:
                    requeue_failed(store, name, job_id)
                except NoSuchJobError:
                    failed.remove(job_id)  # its job expired before its entry: nothing to requeue
                    continue
                except NotFailed:
                    continue  # requeued or deleted by someone else meanwhile
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
