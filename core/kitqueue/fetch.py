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

A job whose worker died while running it stays "started" until its heartbeat expires (the job
monitoring interval plus WORKER_HEARTBEAT_GRACE), and the next maintenance pass retries it.
A worker that owns its name (one systemd unit: `--recover`) does not wait for that: at start
it hands the jobs its predecessors of that name were running to the same retry at once
(`recover_predecessors`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta

from redis.commands.core import Script
from rq import Queue
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.scripts import release_lock
from rq.utils import as_text, now, parse_composite_key

log = logging.getLogger(__name__)

# Shorter than the socket timeout (REDIS_SOCKET_TIMEOUT), which a blocking read must not reach.
POLL_SECONDS = 0.5

# ReliableQueue.lmove: LMOVE from the queue into its intermediate list, and the "first seen"
# mark of RQ's cleanup (IntermediateQueue.get_first_seen_key) dropped for the job taken. Run
# at most once per fetch: KEYS[3], the worker's last fetch, holds ARGV[1] (a token new for
# every fetch) and the job it took; the same fetch sent again (its reply lost: a stalled
# master, see ReliableQueue.lmove) answers that job instead of moving another, while the job
# is still where the first sending put it and no maintenance pass has met it there (a pass
# marks it, and retries it on a later one: then it is no longer this fetch's).
FETCH = b"""
local last = redis.call('GET', KEYS[3])
if last then
  local space = string.find(last, ' ', 1, true)
  if space and string.sub(last, 1, space - 1) == ARGV[1] then
    local taken = string.sub(last, space + 1)
    if redis.call('EXISTS', KEYS[2] .. ':first_seen:' .. taken) == 0 then
      for _, held in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
        if held == taken then return taken end
      end
    end
  end
end
local job_id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if job_id then
  redis.call('DEL', KEYS[2] .. ':first_seen:' .. job_id)
  redis.call('SET', KEYS[3], ARGV[1] .. ' ' .. job_id, 'EX', ARGV[2])
end
return job_id
"""
# Seconds a worker's last fetch is remembered: far longer than a command's retries take.
FETCH_MEMORY_SECONDS = 600
# The script's sha is computed once; each call runs it on the worker's connection (EVALSHA,
# and SCRIPT LOAD first on a master that has not run it yet).
FETCH_SCRIPT = Script(None, FETCH)  # type: ignore[arg-type]


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
    # True from the moment a job is taken from its queue until the worker has registered its
    # run (KitWorker.prepare_execution): a stop asked then lets the job run first
    # (KitWorker.request_stop). Set on the class `configured` made for that worker.
    holding = False
    # Called at every turn of the fetch loop (KitWorker.follow_master, set on the class
    # `configured` made for that worker): it checks, at most once a second, which master the
    # Sentinels name.
    between_polls: Callable[[], None] | None = None

    # The key holding this worker's last fetch (FETCH); set by `configured`. None: RQ's own
    # queues of this class (no worker of the kit fetches through them) keep no record.
    fetch_key: str | None = None
    # The fetch under way: its token and its queue's key, kept until the job it moved is read
    # (or none was moved). A fetch whose reply, or the read of whose job, was lost past the
    # connection's retries (an outage, a refused login) is sent again as the same fetch by the
    # worker's next try, which then answers that job instead of moving the next one and leaving
    # it in the intermediate list for a maintenance pass (charged as a failed attempt).
    pending: tuple[str, str] | None = None

    @classmethod
    def configured(cls, wake_key: str, grace_seconds: float, fetch_key: str) -> type[ReliableQueue]:
        base = cls.intermediate_class
        intermediate = type(base.__name__, (base,), {"grace_seconds": grace_seconds})
        attributes = {"wake_key": wake_key, "intermediate_class": intermediate, "fetch_key": fetch_key}
        return type(cls.__name__, (cls,), attributes)

    @property
    def intermediate_queue(self) -> IntermediateQueue:
        return self.intermediate_class(self.key, connection=self.connection)

    @classmethod
    def lmove(cls, connection, queue_key: str, timeout: int | None):
        """RQ's non-blocking LMOVE into the intermediate list, as one script (FETCH) that also:
        - drops the job's "first seen" mark. RQ's cleanup of that list marks a job it finds
          there (for 24 h) and never removes the mark: a job fetched again later (a retry, a
          requeue) was then "stuck" from the mark of its earlier fetch, and a pass that met it
          in the list while this worker registered the run retried it: it ran twice (seen once
          in about 17 runs of test_pool's slot killed mid-job);
        - runs once however often it is sent. A master that stalls longer than the socket
          timeout gets the fetch again from the connection's retry and, on waking, ran both:
          the first moved a job into the intermediate list whose reply nobody read, stranded
          there until a maintenance pass (30 s and more) retried it as a failed attempt
          (app/tests/test_failover.py)."""
        assert timeout is None, "the kit's fetch does not block on the queues (see dequeue_any)"
        assert cls.fetch_key is not None, "a worker's queue class comes from ReliableQueue.configured"
        intermediate = cls.intermediate_class(queue_key, connection=connection)
        keys = [queue_key, intermediate.key, cls.fetch_key]
        if cls.pending is None or cls.pending[1] != queue_key:
            cls.pending = (uuid.uuid4().hex, queue_key)
        job_id = FETCH_SCRIPT(keys=keys, args=[cls.pending[0], FETCH_MEMORY_SECONDS], client=connection)
        if job_id is None:
            cls.pending = None
            return None
        return queue_key, job_id

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
            # A fetch that was cut off is sent again first (see `pending`).
            resent = [q for q in queues if cls.pending is not None and q.key == cls.pending[1]]
            for queue in resent + [q for q in queues if q not in resent]:
                # Holding from before the move: a stop asked while its reply is on the way
                # must not be raised into it (the job would be moved and never run).
                cls.holding = True
                moved = cls.lmove(connection, queue.key, None)
                if moved is None:
                    cls.holding = False
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
                cls.pending = None  # this fetch is over: the job was read, or is gone
                if fetched is not None:
                    return fetched
                cls.holding = False
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


def recover_predecessors(queues: Iterable[Queue], prefix: str, lock_wait: float = 10.0) -> list[str]:
    """Retry at once, as abandoned, the jobs that earlier workers named `<prefix>.<pid>` were
    running, and free the scheduler locks they held; return the jobs' ids.

    Only for a name one process owns: a systemd unit (`<host>-<instance>`), whose next
    process starts only once every process of the last one has gone, so none of those jobs
    still runs. Each job goes through RQ's own handling of an abandoned job (the maintenance
    pass's, under the same per-queue lock): retried after its retry interval while it has
    retries left, else failed. When the lock stays taken, or the execution's record has
    expired, the jobs are left to the maintenance pass once their heartbeat lapses, as before.
    A scheduler lock (KitWorker names its scheduler `<worker>.scheduler`) left to lapse would
    hold back every retry and delayed job of the queue for up to a minute; a maintenance lock
    left by a pass killed midway (`<worker>.maintenance`), every abandoned job's retry."""
    worker = re.compile(rf"{re.escape(prefix)}\.\d+")
    scheduler = re.compile(rf"{re.escape(prefix)}\.\d+\.scheduler")
    maintenance = re.compile(rf"{re.escape(prefix)}\.\d+\.maintenance")
    recovered: list[str] = []
    for queue in queues:
        connection = queue.connection
        held = (
            (RQScheduler.get_locking_key(queue.name), scheduler),
            (queue.registry_cleaning_key, maintenance),
        )
        for lock, held_by in held:
            holder = as_text(connection.get(lock) or b"")
            if held_by.fullmatch(holder):
                release_lock(connection, lock, holder)
        registry = StartedJobRegistry(
            queue.name, connection=connection, job_class=queue.job_class, serializer=queue.serializer
        )
        entries = [as_text(entry) for entry in connection.zrange(registry.key, 0, -1)]
        if not entries:
            continue
        with connection.pipeline(transaction=False) as pipeline:
            for entry in entries:
                pipeline.hget(Execution.from_composite_key(entry, connection).key, "worker_name")
                job_id = parse_composite_key(entry)[0]
                pipeline.hget(f"{queue.job_class.redis_job_namespace_prefix}{job_id}", "status")
            replies = [as_text(r) if r is not None else "" for r in pipeline.execute()]
        ours = [
            entry
            for entry, name, status in zip(entries, replies[::2], replies[1::2], strict=True)
            if worker.fullmatch(name) and status == "started"
        ]
        if not ours:
            continue
        with maintenance_lock(queue, f"{prefix}.recover", lock_wait) as taken:
            if not taken:
                log.warning("queue %s: the maintenance lock stayed taken; left to the next pass", queue.name)
                continue
            _expire(registry, ours)
            recovered += [parse_composite_key(entry)[0] for entry in ours]
    return recovered


def _expire(registry: StartedJobRegistry, entries: list[str]) -> None:
    """RQ's cleanup of the started registry, for these entries alone: their score (their
    heartbeat's expiry) set to 1, kept only if they are still there, then cleaned up to 1."""
    registry.connection.zadd(registry.key, dict.fromkeys(entries, 1), xx=True)
    registry.cleanup(timestamp=1)


# How long a queue's maintenance lock lasts when its holder is killed before it gives it back
# (RQ's own: 15 minutes, also when a stop signal or an error interrupts the pass; a unit's
# restart with --recover frees its dead process's at once). Far longer than a pass, which takes
# milliseconds, and still longer than one a failover stretches (each command's retries ride it
# out): two passes at once could retry one abandoned job twice.
MAINTENANCE_LOCK_SECONDS = 300


@contextlib.contextmanager
def maintenance_lock(queue: Queue, token: str, wait: float = 0.0) -> Iterator[bool]:
    """The queue's maintenance lock (RQ's key: one pass at a time over its registries), taken
    with an owner and a short expiry, and given back however the block ends: a retry after a
    lost connection finds it its own, and one left by a killed holder lapses in
    MAINTENANCE_LOCK_SECONDS. Yields False when it stayed taken for `wait` seconds."""
    key = queue.registry_cleaning_key
    connection = queue.connection
    deadline = time.monotonic() + wait
    # Given back (if it is this token's) also when a stop signal lands while the SET's reply is
    # on its way: the lock is then taken, though the SET never returned.
    try:
        while not connection.set(key, token, nx=True, ex=MAINTENANCE_LOCK_SECONDS):
            if as_text(connection.get(key) or b"") == token:
                break
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(0.2)
        yield True
    except BaseException:
        # A stop signal raised into a command (RQ's warm stop of an idle worker) can leave the
        # connection back in the pool owing that command's reply: the release would read it as
        # its own and give nothing back (seen: the lock left taken for its whole expiry).
        connection.connection_pool.disconnect(inuse_connections=False)
        raise
    finally:
        release_lock(connection, key, token)
