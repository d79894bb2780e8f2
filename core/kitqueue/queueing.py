"""Putting jobs in a queue: RQ queues with the JSON serializer, durable acknowledgements
(WAIT) and idempotency keys, all retried through a failover."""

from __future__ import annotations

import calendar
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import redis
from redis.exceptions import NoScriptError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.scripts import UNIQUE_ENQUEUE_SCRIPT, UNIQUE_SCHEDULE_SCRIPT, _build_hset_args
from rq.serializers import JSONSerializer

from .fetch import ReliableQueue
from .registry import Task, by_path, settings
from .schema import BadArguments
from .store import (
    CannotPersist,
    Full,
    Replication,
    StaleMaster,
    Store,
    Unavailable,
    Unconfirmed,
    pinned_connection,
    refusal,
)

log = logging.getLogger(__name__)

Commands = tuple[tuple[Any, ...], ...]
T = TypeVar("T")


class UnknownTask(Exception):
    """A stored job names a function that is not a registered task."""


class RegisteredJob(Job):
    """RQ job that only ever resolves registered task functions."""

    @property
    def func(self):
        """The task's function, for a stored job the API could have made. Anyone who can
        write to Redis (a web host's login can) could store a job naming any function, a demo
        task (`crash`, `hog`) where DEMO_TASKS is off, or arguments the task's schema refuses:
        the worker checks what the API checks, and the job fails naming the reason."""
        try:
            task = by_path().get(self.func_name)
            if task is None:
                raise UnknownTask(f"refusing to run {self.func_name!r}: not a registered task")
            running = settings()  # the worker's settings, while it runs the job
            if task.demo and running and not running.get("DEMO_TASKS"):
                raise UnknownTask(f"refusing to run {task.name!r}: a demo task, and DEMO_TASKS is off")
            if self.args:
                raise BadArguments(f"task '{task.name}' takes its arguments by name, not by position")
            task.arguments(self.kwargs)
        except (UnknownTask, BadArguments):
            self.retries_left = 0  # a refusal is final: no retry would be taken
            raise
        return super().func


class NotDurable(Unconfirmed):
    """The job was written but neither reached a replica nor may be acknowledged without one.
    Retried within the budget like a failover; then answered 503 with the job id."""

    def __init__(self, job_id: str, acked: int, wanted: int, reason: str) -> None:
        super().__init__(f"job {job_id} reached {acked} of {wanted} replica(s): {reason}")
        self.job_id, self.acked, self.wanted = job_id, acked, wanted


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused for a different request."""


@dataclass
class Enqueued:
    job_id: str
    queue: str
    replayed: bool


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)


# RQ's unique writes of a job, queued (UNIQUE_ENQUEUE_SCRIPT) or delayed (UNIQUE_SCHEDULE_SCRIPT),
# as EnqueueingQueue puts them in the caller's pipeline.
UNIQUE_SHA, SCHEDULE_SHA = _sha(UNIQUE_ENQUEUE_SCRIPT), _sha(UNIQUE_SCHEDULE_SCRIPT)
# Each counts the job it writes, and only then: the last of KEYS is the counter (the stats'
# "enqueued", or "replayed"), taken off before RQ's script reads its own, which runs as it is
# inside a function. A job already there (this request's earlier attempt wrote it) is not
# counted again, nor is one an idempotency key refuses (`_bind`).
_COUNT_HEAD = """
local counter = table.remove(KEYS)
local function write()
"""
_COUNT_TAIL = """
end
local written = write()
if written == 1 then
    redis.call("INCRBY", counter, 1)
end
return written
"""
COUNTED = {
    sha: _COUNT_HEAD + script + _COUNT_TAIL
    for sha, script in ((UNIQUE_SHA, UNIQUE_ENQUEUE_SCRIPT), (SCHEDULE_SHA, UNIQUE_SCHEDULE_SCRIPT))
}
# Each run only where an idempotency key is free or already names the job (`_bind`): the last of
# KEYS is the key, the last two ARGV its value and TTL, all taken off before the counted script
# reads its own. A key that names another job is answered with its value, and nothing is
# written: the check and the job's write are one step on the server.
_BIND = """
local key = table.remove(KEYS)
local ttl = table.remove(ARGV)
local value = table.remove(ARGV)
local bound = redis.call("GET", key)
if not bound then
    redis.call("SET", key, value, "EX", ttl)
elseif string.sub(bound, 1, #ARGV[1] + 1) ~= ARGV[1] .. " " then
    return bound
end
"""
# RQ's script's SHA-1 -> its counted script's, and that one's -> the same bound to a key.
COUNTED_SHA = {sha: _sha(script) for sha, script in COUNTED.items()}
BOUND = {_sha(script): _sha(_BIND + script) for script in COUNTED.values()}
# The scripts an enqueue sends by SHA-1, for a master that does not hold them yet (NOSCRIPT).
SCRIPTS = {
    sha: script
    for counted in COUNTED.values()
    for sha, script in ((_sha(counted), counted), (_sha(_BIND + counted), _BIND + counted))
}


class EnqueueingQueue(ReliableQueue):
    """RQ's queue, whose unique enqueue joins the caller's pipeline.

    RQ writes a unique job with its script in a round trip of its own, ignoring the pipeline it
    is given. This queue puts the same script, with RQ's own arguments, in that pipeline, which
    `_confirm_durable` sends with its acknowledgement commands: one round trip per enqueue
    instead of two (in-process, 1.34 -> 0.97 ms of CPU per request). A duplicate id answers 0
    instead of raising: the job is left as it is, as RQ's DuplicateJobError leaves it."""

    def _enqueue_async_job(
        self, job: Job, pipeline: Any = None, at_front: bool = False, unique: bool = False
    ) -> Job:
        if not unique or pipeline is None:
            return super()._enqueue_async_job(job, pipeline=pipeline, at_front=at_front, unique=unique)
        self._prepare_for_queue(job)
        ttl = job.ttl if job.ttl is not None else -1
        keys_and_args = [job.key, self.key, job.id, "L" if at_front else "R", ttl, *_build_hset_args(job)]
        pipeline.execute_command("EVALSHA", UNIQUE_SHA, 2, *keys_and_args)
        return job

    def schedule_job(self, job: Job, when: datetime, pipeline: Any = None, unique: bool = False) -> Job:
        """RQ's unique schedule of a delayed job, in the caller's pipeline (as above): RQ's own
        runs its script at once, before the idempotency key could be claimed with it."""
        if not unique or pipeline is None:
            return super().schedule_job(job, when, pipeline=pipeline, unique=unique)
        self._check_rate_limit_namespace(job)
        job._status = JobStatus.SCHEDULED
        registry = ScheduledJobRegistry(queue=self)
        ttl = job.ttl if job.ttl is not None else -1
        at = calendar.timegm((when if when.tzinfo else when.astimezone()).utctimetuple())
        keys = [job.key, registry.key, self.redis_queues_keys]
        args = [job.id, ttl, at, self.key, *_build_hset_args(job)]
        pipeline.execute_command("EVALSHA", SCHEDULE_SHA, len(keys), *keys, *args)
        return job


def make_queue(store: Store, name: str, queue_class: type[ReliableQueue] = EnqueueingQueue) -> Queue:
    return queue_class(
        name,
        connection=store.redis,
        serializer=JSONSerializer,
        job_class=RegisteredJob,
        default_timeout=int(store.config["JOB_TIMEOUT"]),
    )


def fetch_job(store: Store, job_id: str) -> Job | None:
    return read_job(store, job_id, lambda job: job)


def read_job(store: Store, job_id: str, read: Callable[[Job], T]) -> T | None:
    """Fetch a job and `read` more of it (its latest result, its registry) under one retry: a
    failover between the fetch and a later read retries both, where a read of its own would
    have met the lost master outside any retry (a 500 for GET /jobs/<id>). None: no such job."""

    def fetch_and_read() -> T | None:
        try:
            job = RegisteredJob.fetch(job_id, connection=store.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return None
        return read(job)

    return store.retrying(fetch_and_read)


def _confirm_durable(
    store: Store,
    job_id: str,
    replayed: bool = False,
    first: Commands = (),
    binding: tuple[str, str, int] | None = None,
) -> None:
    """Acknowledge only what will survive a failover: the job on this master and on
    ACK_REPLICAS replicas (WAIT), or on this master alone when the Sentinels say no replica
    could replace it (ACK_POLICY "available", see QuorumSentinel.sole_master_doubt).

    Everything runs on one connection, in order: EXISTS proves the job is on the server the
    connection reaches (a retry may have moved to a new master since `put`), the writes after
    it are what WAIT waits for, and replication is ordered, so a replica that has them has the
    job. WAIT waits only for the replicas INFO shows in sync: a lost replica host keeps its
    link "online" until repl-timeout, but its lag grows, and waiting for it could only time out.
    The WAIT goes in the same round trip as the rest, for as many replicas as were in sync at
    this process's last acknowledgement on the same master; when INFO now shows more in sync
    than that, a second WAIT asks for them (fewer: the first WAIT may have waited its timeout,
    once). On a master this process has not acknowledged on yet (the first request after a
    failover) no WAIT goes with the rest: a master promoted because its old master's host was
    lost has no replica, and that WAIT would only have waited its whole timeout.

    ACK_POLICY "strict" needs ACK_REPLICAS acknowledgements. "available" (the default) also
    accepts fewer when every replica in sync acknowledged, and none at all when the Sentinel
    majority confirms this master and sees no other node it could promote (the only replica is
    down); that last case is counted (fridge reports fridge_jobs_unreplicated_total).

    `first`: commands that go ahead of these in the same round trip (RQ's own writes: the
    queue's registration and the job's script, see EnqueueingQueue).

    `binding`: an idempotency key's (Redis key, value, TTL). It is claimed again here, on the
    job's own connection, and must name this job: the first claim went through the pool, whose
    connection may have reached another master than this one (in a partition, the old master a
    web host still reaches, while another thread's lookup already moved the pool to the new
    one). The key then lived only where the job did not, and a replay wrote the job again.
    The job's write is made with the claim, in one script (`_bind`): when the key names another
    job there, this one is not written (written, then refused, it stayed queued, and both ran).
    """
    counter = store.key("stats", "replayed" if replayed else "enqueued")
    first, scripted = _counted(first, counter)
    bound_at = None
    if binding is not None:
        first, bound_at = _bind(first, binding)
    wanted = int(store.config["ACK_REPLICAS"])
    timeout_ms = int(store.config["ACK_TIMEOUT_MS"])
    max_lag = int(store.config["REPLICA_MAX_LAG"])

    def batch(count: int) -> list[tuple[Any, ...]]:
        commands = [
            *first,
            ("EXISTS", f"{RegisteredJob.redis_job_namespace_prefix}{job_id}"),
            # A replay answered from the job there; a job written counts itself (_COUNT_HEAD),
            # and a read holds the place (no write to replicate, none to refuse).
            ("EXISTS", counter) if scripted else ("INCRBY", counter, count),
            ("LPUSH", store.key("wake"), 1),  # wakes one idle worker at once (see fetch.py)
            ("LTRIM", store.key("wake"), 0, 99),
            ("INFO", "replication"),
        ]
        return [*commands, ("WAIT", guess, timeout_ms)] if guess else commands

    with pinned_connection(store) as conn:
        last = store.replicas_in_sync
        guess = min(wanted, last[1]) if last is not None and last[0] == conn.address else 0
        replies = conn.run(*batch(1), raising=False)
        missing = [first[i][1] for i, r in enumerate(replies[: len(first)]) if isinstance(r, NoScriptError)]
        if missing:
            # A master that has not run the script yet (new, or restarted): load it and send the
            # whole again. It waits only for the replicas the first send found in sync.
            info = replies[len(first) + 4]
            if not isinstance(info, Exception):
                guess = min(wanted, Replication.parse(info).in_sync(max_lag))
            conn.run(*(("SCRIPT", "LOAD", SCRIPTS[sha]) for sha in missing))
            replies = conn.run(*batch(0), raising=False)
        # The key's SET refused (the job's own write took the master to maxmemory) while the
        # key is still free: the job stands, as for its counters below, and the key is left.
        claim = len(first) - 2 if binding is not None and bound_at is None else -1
        refused = {claim} if claim >= 0 and refusal(replies[claim]) is not None else set()
        ahead = enumerate(replies[: len(first)])
        failed = next((r for i, r in ahead if isinstance(r, Exception) and i not in refused), None)
        if failed is not None:
            raise failed
        if bound_at is not None:
            bound = replies[bound_at]  # RQ's 1 or 0 (written, or there already), or the key's value
            if isinstance(bound, bytes):
                raise BoundElsewhere(f"idempotency key {binding[0]} names another job on {conn.address_text}")
        elif binding is not None:
            bound = replies[len(first) - 1]
            if bound is None and refused:
                log.warning("job %s stored; its idempotency key was refused: %s", job_id, replies[claim])
            elif Binding.parse(bound or b"").job_id != job_id:
                raise BoundElsewhere(f"idempotency key {binding[0]} names another job on {conn.address_text}")
        exists, info = replies[len(first)], replies[len(first) + 4]
        if isinstance(info, Exception):
            raise info
        replication = Replication.parse(info)
        if not exists or replication.role != "master":
            raise StaleMaster(f"job {job_id} is not on {conn.address_text} (role {replication.role})")
        # The job is on this master. Its counter and wake-up may still have been refused, when
        # the job's own write took the master to maxmemory (OOM): the job stands, so does its 202.
        counters = {i for i in range(len(first) + 1, len(first) + 4) if refusal(replies[i]) is not None}
        if counters:
            log.warning(
                "job %s stored; its counter and wake-up were refused: %s", job_id, replies[min(counters)]
            )
        refused |= counters
        failed = next(
            (r for i, r in enumerate(replies) if isinstance(r, Exception) and i not in refused), None
        )
        if failed is not None:
            raise failed
        if wanted <= 0:
            return
        in_sync = replication.in_sync(max_lag)
        store.replicas_in_sync = (conn.address, in_sync)
        acked = int(replies[-1]) if guess else 0
        if acked < min(wanted, in_sync):
            acked = max(acked, int(conn.run(("WAIT", min(wanted, in_sync), timeout_ms))[0]))
        address = conn.address
    if acked >= wanted:
        return
    if store.config["ACK_POLICY"] != "available":
        raise NotDurable(job_id, acked, wanted, "ACK_POLICY is strict")
    if acked and acked >= in_sync:
        return  # every replica in sync has it; a failover promotes the most advanced one
    doubt = store.sole_master_doubt(address, replication)
    if doubt is not None:
        raise NotDurable(job_id, acked, wanted, doubt)
    try:
        store.redis.incr(store.key("stats", "unreplicated"))
    except (redis.ResponseError, CannotPersist) as error:
        if isinstance(error, redis.ResponseError) and refusal(error) is None:
            raise
        log.warning("job %s stored; its count as unreplicated was refused: %s", job_id, error)
    _unreplicated_log.note(job_id)


class BoundElsewhere(StaleMaster):
    """The idempotency key names another job on the master the job went to."""


def _counted(first: Commands, counter: str) -> tuple[Commands, bool]:
    """RQ's unique write among `first` becomes its counted script (COUNTED), which adds the job
    to `counter` when it writes it; and whether there was one (a replay of a job still there
    has none)."""
    for index, command in enumerate(first):
        if command[0] == "EVALSHA" and command[1] in COUNTED_SHA:
            numkeys = int(command[2])
            keys, args = command[3 : 3 + numkeys], command[3 + numkeys :]
            counted = ("EVALSHA", COUNTED_SHA[command[1]], numkeys + 1, *keys, counter, *args)
            return (*first[:index], counted, *first[index + 1 :]), True
    return first, False


def _bind(first: Commands, binding: tuple[str, str, int]) -> tuple[Commands, int | None]:
    """Claim the key (Redis key, value, TTL) with the job: the counted write among `first`
    becomes its bound script (BOUND), and its index is returned. Without one (a replay whose job
    is there) the claim and a read of the key go last, and the index is None."""
    redis_key, value, ttl = binding
    for index, command in enumerate(first):
        if command[0] == "EVALSHA" and command[1] in BOUND:
            sha, numkeys = command[1], int(command[2])
            keys, args = command[3 : 3 + numkeys], command[3 + numkeys :]
            bound = ("EVALSHA", BOUND[sha], numkeys + 1, *keys, redis_key, *args, value, ttl)
            return (*first[:index], bound, *first[index + 1 :]), index
    return (*first, ("SET", redis_key, value, "NX", "EX", ttl), ("GET", redis_key)), None


class _EveryFewSeconds:
    """Log acknowledgements without a replica once per period, with a count, not once each:
    while the only replica is down every enqueue takes that path."""

    period = 10.0

    def __init__(self) -> None:
        self.count, self.since = 0, 0.0

    def note(self, job_id: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.since >= self.period:
            log.warning(
                "%d job(s) acknowledged without a replica (the Sentinels see none to promote), "
                "the last one %s",
                self.count,
                job_id,
            )
            self.count, self.since = 0, now


_unreplicated_log = _EveryFewSeconds()


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
    new_id = job_id or uuid.uuid4().hex
    job_id, replayed = new_id, False
    queue = make_queue(store, queue_name)
    retries = int(store.config["JOB_RETRIES"])
    retry = Retry(max=retries, interval=list(store.config["JOB_RETRY_INTERVALS"])) if retries else None

    def put() -> Commands:
        """Write the job (RQ's atomic unique enqueue); return the commands RQ would have sent
        in a round trip of their own, for _confirm_durable's."""
        if replayed and RegisteredJob.exists(job_id, connection=store.redis):
            return ()
        deferred = store.redis.pipeline(transaction=False)
        options = {
            "job_id": job_id,
            "unique": True,
            "kwargs": kwargs,
            "retry": retry,
            "result_ttl": int(store.config["RESULT_TTL"]),
            "failure_ttl": int(store.config["FAILURE_TTL"]),
            # RQ's workers log the description of each job they take and finish: the task's
            # name, never its arguments (an app's may be personal data; the journal is read
            # more widely than the queue). The arguments are the job's kwargs.
            "description": task.name,
            "meta": {"task": task.name},
        }
        try:
            # EnqueueingQueue puts the queue's registration (SADD rq:queues) and the job's
            # script in the pipeline given: _confirm_durable sends them.
            if delay > 0:
                # RQ keeps whole seconds; round up so a job never runs before its delay.
                at = datetime.fromtimestamp(math.ceil(time.time() + delay), UTC)
                queue.enqueue_at(at, task.func, pipeline=deferred, **options)
            else:
                queue.enqueue(task.func, pipeline=deferred, **options)
        except DuplicateJobError:
            pass  # an earlier attempt of this very request got through before the error
        return tuple(args for args, _options in deferred.command_stack)

    room_checked = False

    def put_durably() -> None:
        nonlocal job_id, replayed, room_checked
        if not room_checked:  # once: a retry may find its own job written, and no "full" then
            _check_room(store, idempotency_key)
            room_checked = True
        acknowledged = False
        if idempotency_key:
            claimed = _claim_idempotency_key(store, idempotency_key, fingerprint, new_id)
            job_id, replayed, acknowledged = claimed
        if acknowledged and not RegisteredJob.exists(job_id, connection=store.redis):
            return  # acknowledged once, and gone since (its result expired, or deleted): not again
        binding = None
        if idempotency_key:
            redis_key = _idempotency_redis_key(store, idempotency_key)
            binding = (redis_key, str(Binding(job_id, fingerprint)), int(store.config["IDEMPOTENCY_TTL"]))
        _confirm_durable(store, job_id, replayed, put(), binding)
        if idempotency_key and not acknowledged:
            _mark_acknowledged(store, idempotency_key, Binding(job_id, fingerprint, acknowledged=True))

    # One unit, under one retry budget: when the confirmation finds the job missing (it went to
    # a master that has been replaced since), the retry claims the key and writes the job again
    # on the new one.
    store.retrying(put_durably)
    return Enqueued(job_id=job_id, queue=queue_name, replayed=replayed)


def _check_room(store: Store, idempotency_key: str | None) -> None:
    """Refuse a new job while Redis is (nearly) full (Store.check_room); a replay of a job
    already stored, or acknowledged once, needs no room and goes on."""
    try:
        store.check_room()
    except Full:
        raw = store.redis.get(_idempotency_redis_key(store, idempotency_key)) if idempotency_key else None
        bound = Binding.parse(raw) if raw is not None else None
        if bound is None:
            raise
        if not (bound.acknowledged or RegisteredJob.exists(bound.job_id, connection=store.redis)):
            raise


ACKNOWLEDGED = "acknowledged"


class Binding(NamedTuple):
    """What an idempotency key holds in Redis: `<job id> <fingerprint>`, and ` acknowledged`
    once its job was (_mark_acknowledged)."""

    job_id: str
    fingerprint: str
    acknowledged: bool = False

    @classmethod
    def parse(cls, raw: bytes) -> Binding:
        job_id, _, rest = raw.decode().partition(" ")
        fingerprint, _, state = rest.partition(" ")
        return cls(job_id, fingerprint, state == ACKNOWLEDGED)

    def __str__(self) -> str:
        return " ".join([self.job_id, self.fingerprint, *[ACKNOWLEDGED] * self.acknowledged])


def _idempotency_redis_key(store: Store, key: str) -> str:
    return store.key("idem", hashlib.sha256(key.encode()).hexdigest())


def _claim_idempotency_key(store: Store, key: str, fingerprint: str, new_id: str) -> tuple[str, bool, bool]:
    """Bind the key to a job id (first use) or return the id it is bound to (replay), and
    whether that job was acknowledged (_mark_acknowledged)."""
    redis_key = _idempotency_redis_key(store, key)
    value = str(Binding(new_id, fingerprint))
    ttl = int(store.config["IDEMPOTENCY_TTL"])

    if store.redis.set(redis_key, value, nx=True, ex=ttl):
        return new_id, False, False
    existing = store.redis.get(redis_key)
    if existing is None:  # expired in between: claim it again on the next attempt
        raise StaleMaster(f"idempotency key {redis_key} vanished while being claimed")
    bound = Binding.parse(existing)
    if bound.fingerprint != fingerprint:
        raise IdempotencyConflict("this Idempotency-Key was already used for a different request")
    # Our own claim, from an earlier attempt of this very request, is no replay.
    return bound.job_id, bound.job_id != new_id, bound.acknowledged


def _mark_acknowledged(store: Store, key: str, bound: Binding) -> None:
    """Note on the key that its job was acknowledged, once it was: a replay that then finds no
    job (finished and expired after RESULT_TTL, or deleted) answers with its id and does not
    write it again. Before the acknowledgement the mark would be wrong (a job lost in a
    failover must be written again by the replay); a mark lost in a failover leaves only the
    narrower case of a job that is gone and written again."""
    try:
        store.redis.set(_idempotency_redis_key(store, key), str(bound), xx=True, keepttl=True)
    except (redis.RedisError, Unavailable) as error:
        log.warning("job acknowledged; its idempotency key could not be marked so: %s", error)


__all__ = [
    "BoundElsewhere",
    "Enqueued",
    "Full",
    "IdempotencyConflict",
    "NotDurable",
    "Unavailable",
    "enqueue",
    "fetch_job",
    "make_queue",
]
