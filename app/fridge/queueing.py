"""Putting jobs in the fridge: RQ queues with the JSON serializer, durable acknowledgements
(WAIT) and idempotency keys, all retried through a failover."""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from .fetch import FridgeQueue
from .store import Store, Unavailable
from .tasks import ALLOWED_PATHS, Task

log = logging.getLogger(__name__)


class UnknownTask(Exception):
    """A stored job names a function that is not a registered task."""


class FridgeJob(Job):
    """RQ job that only ever resolves registered task functions."""

    @property
    def func(self):
        if self.func_name not in ALLOWED_PATHS:
            raise UnknownTask(f"refusing to run {self.func_name!r}: not a registered task")
        return super().func


class NotDurable(Exception):
    """The job was written but did not reach enough replicas in time."""

    def __init__(self, job_id: str, acked: int, wanted: int) -> None:
        super().__init__(f"job {job_id} reached {acked} of {wanted} replica(s)")
        self.job_id, self.acked, self.wanted = job_id, acked, wanted


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused for a different request."""


@dataclass
class Enqueued:
    job_id: str
    queue: str
    replayed: bool


def make_queue(store: Store, name: str) -> Queue:
    return FridgeQueue(
        name,
        connection=store.redis,
        serializer=JSONSerializer,
        job_class=FridgeJob,
        default_timeout=int(store.config["JOB_TIMEOUT"]),
    )


def fetch_job(store: Store, job_id: str) -> Job | None:
    def fetch() -> Job | None:
        try:
            return FridgeJob.fetch(job_id, connection=store.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    return store.retrying(fetch)


def _confirm_durable(store: Store, job_id: str, replayed: bool = False) -> None:
    """Wait until the replicas hold everything this process wrote so far.

    WAIT covers the writes of the connection it runs on, so it follows a small write (the
    enqueued counter) on the same connection; replication is ordered, so that write reaching
    a replica means the job, written before it, did too.

    ACK_POLICY "strict": fewer than ACK_REPLICAS acknowledgements is a 503 (NotDurable).
    ACK_POLICY "available" (default): the same, except when no replica is online at all (the
    only replica is down or still resynchronising after a failover): then the job is
    acknowledged on the master's AOF alone and counted in fridge_jobs_unreplicated_total,
    because refusing every write until a replica returns would turn a failover into an outage.

    The WAIT comes first even when no replica is online, on purpose: on an old master that
    Sentinel is demoting, the blocked WAIT is answered UNBLOCKED when the node turns replica, and
    the request is retried on the new master instead of being acknowledged on a node whose
    writes are about to be discarded. (Skipping the WAIT when INFO shows no replica was tried: a
    SENTINEL FAILOVER under load then lost some 200 acknowledged jobs.)
    """
    wanted = int(store.config["ACK_REPLICAS"])
    pipe = store.redis.pipeline(transaction=False)
    pipe.incr(store.key("stats", "replayed" if replayed else "enqueued"))
    pipe.lpush(store.key("wake"), 1)  # wakes one idle worker at once (see fetch.py)
    pipe.ltrim(store.key("wake"), 0, 99)
    if wanted > 0:
        pipe.execute_command("WAIT", wanted, int(store.config["ACK_TIMEOUT_MS"]))
    replies = pipe.execute()
    acked = int(replies[-1]) if wanted > 0 else 0
    if wanted <= 0 or acked >= wanted:
        return
    if store.config["ACK_POLICY"] == "available":
        online = online_replicas(store)
        if online == 0 or acked >= online:
            if online == 0:
                store.redis.incr(store.key("stats", "unreplicated"))
                log.warning("job %s acknowledged without a replica: none is online", job_id)
            return
    raise NotDurable(job_id, acked, wanted)


def online_replicas(store: Store) -> int:
    """Replicas of the master that are in sync (state=online), from INFO replication."""
    info = store.redis.info("replication")
    return sum(
        1
        for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


def enqueue(
    store: Store,
    task: Task,
    kwargs: dict[str, Any],
    queue_name: str,
    idempotency_key: str | None = None,
    fingerprint: str = "",
    delay: float = 0,
    job_id: str | None = None,
) -> Enqueued:
    """Enqueue `task` once, even when retried through a failover; 503s raise Unavailable."""
    job_id = job_id or uuid.uuid4().hex
    replayed = False
    if idempotency_key:
        job_id, replayed = _claim_idempotency_key(store, idempotency_key, fingerprint, job_id)
    queue = make_queue(store, queue_name)
    retries = int(store.config["JOB_RETRIES"])
    retry = Retry(max=retries, interval=list(store.config["JOB_RETRY_INTERVALS"])) if retries else None

    def put() -> None:
        if replayed and FridgeJob.exists(job_id, connection=store.redis):
            return
        options = {
            "job_id": job_id,
            "unique": True,
            "kwargs": kwargs,
            "retry": retry,
            "result_ttl": int(store.config["RESULT_TTL"]),
            "failure_ttl": int(store.config["FAILURE_TTL"]),
            "description": f"{task.name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})",
            "meta": {"task": task.name},
        }
        try:
            if delay > 0:
                # RQ keeps whole seconds; round up so a job never runs before its delay.
                at = datetime.fromtimestamp(math.ceil(time.time() + delay), UTC)
                queue.enqueue_at(at, task.func, **options)
            else:
                queue.enqueue(task.func, **options)
        except DuplicateJobError:
            pass  # an earlier attempt of this very request got through before the error

    store.retrying(put)
    store.retrying(lambda: _confirm_durable(store, job_id, replayed))
    return Enqueued(job_id=job_id, queue=queue_name, replayed=replayed)


def _claim_idempotency_key(store: Store, key: str, fingerprint: str, new_id: str) -> tuple[str, bool]:
    """Bind the key to a job id (first use) or return the id it is bound to (replay)."""
    redis_key = store.key("idem", hashlib.sha256(key.encode()).hexdigest())
    value = f"{new_id} {fingerprint}"
    ttl = int(store.config["IDEMPOTENCY_TTL"])

    def claim() -> str | None:
        if store.redis.set(redis_key, value, nx=True, ex=ttl):
            return None
        existing = store.redis.get(redis_key)
        return existing.decode() if existing else None

    existing = store.retrying(claim)
    if existing is None:
        return new_id, False
    job_id, _, stored_fingerprint = existing.partition(" ")
    if stored_fingerprint != fingerprint:
        raise IdempotencyConflict("this Idempotency-Key was already used for a different request")
    return job_id, True


__all__ = [
    "Enqueued",
    "IdempotencyConflict",
    "NotDurable",
    "Unavailable",
    "enqueue",
    "fetch_job",
    "make_queue",
]
