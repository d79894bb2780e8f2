"""Reliable fetch for priority queues.

RQ moves a job atomically into an "intermediate" list (BLMOVE) only when a worker listens on
a single queue; with several queues it pops with BLPOP, and a job popped by a worker that
dies (or loses its master) before registering it as started is gone. Here every queue, in
priority order, is read with LMOVE into its intermediate list, so a popped job is never held
only in a process's memory. A worker that dies there leaves the job in the list; the
maintenance pass re-runs it (as a failed attempt, so its retries apply) once it has been
stuck longer than a grace period.

Idle workers block on a small wake-up list that every enqueue pushes to, and look at the
queues again at least once a second for jobs that arrive another way (scheduled, retried).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import timedelta

from rq import Queue
from rq.exceptions import DequeueTimeout, StopRequested
from rq.intermediate_queue import IntermediateQueue
from rq.utils import as_text, now

# Shorter than the socket timeout (REDIS_SOCKET_TIMEOUT), which a blocking read must not reach.
POLL_SECONDS = 0.5


class GracefulIntermediateQueue(IntermediateQueue):
    """RQ's intermediate list with a configurable "stuck" threshold (RQ hard-codes 1 minute)."""

    grace_seconds = 30.0

    def should_be_cleaned_up(self, job_id: str) -> bool:
        first_seen = self.get_first_seen(job_id)
        return first_seen is not None and now() - first_seen > timedelta(seconds=self.grace_seconds)


class ReliableQueue(Queue):
    """RQ's queue read with reliable fetch. RQ makes its own instances of the worker's queue
    class (a job's origin, retries), so the settings are class attributes of a subclass made
    for one worker (`configured`), never written into this class."""

    wake_key = "kitqueue:wake"
    intermediate_class: type[GracefulIntermediateQueue] = GracefulIntermediateQueue
    # Set when the worker is asked to stop (KitWorker.request_stop, a signal handler): the fetch
    # loop then takes no more jobs and raises StopRequested. Set on the class `configured`
    # made for that worker.
    stop_requested = False
    # Called at every turn of the fetch loop (KitWorker.follow_master, set on the class
    # `configured` made for that worker): it checks, at most once a second, which master the
    # Sentinels name.
    between_polls: Callable[[], None] | None = None

    @classmethod
    def configured(cls, wake_key: str, grace_seconds: float) -> type[ReliableQueue]:
        base = cls.intermediate_class
        intermediate = type(base.__name__, (base,), {"grace_seconds": grace_seconds})
        return type(cls.__name__, (cls,), {"wake_key": wake_key, "intermediate_class": intermediate})

    @property
    def intermediate_queue(self) -> IntermediateQueue:
        return self.intermediate_class(self.key, connection=self.connection)

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection,
        job_class=None,
        serializer=None,
        death_penalty_class=None,
    ):
        queues = list(queues)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if cls.stop_requested:
                raise StopRequested()
            if cls.between_polls is not None:
                cls.between_polls()
            for queue in queues:
                moved = cls.lmove(connection, queue.key, None)
                if moved is None:
                    continue
                queue_key, job_id = map(as_text, moved)
                fetched = cls._fetch_dequeued_job(
                    connection,
                    queue_key,
                    job_id,
                    job_class=job_class,
                    serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )
                if fetched is not None:
                    return fetched
                break  # the job hash was gone; look at the queues again from the top
            else:
                if deadline is None:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DequeueTimeout(timeout, [q.key for q in queues])
                try:
                    connection.blpop([cls.wake_key], timeout=min(remaining, POLL_SECONDS))
                except BaseException:
                    # A warm-shutdown signal interrupts the blocking read; the connection, back
                    # in the pool, still owes a reply and must not serve another command. (The
                    # pubsub connection is in use, so it is left alone.)
                    connection.connection_pool.disconnect(inuse_connections=False)
                    raise
