"""A worker follows the master the Sentinel majority names, within a second, and puts back the
jobs whose outcome stayed on the old one.

After a failover, a worker's open connections may still reach the old master: a frozen host
that thaws, a partition that heals. That server believes it is the master until Sentinel
demotes it, some 10 s later, and what it accepts then is discarded by the demotion. Measured
before this module (molecule/web, the master's host frozen past a failover): the worker ran
jobs there for those 10 s, the queue on the new master waited, and a job it had taken just
before the freeze stayed "fetched" or "started" on the new master, freed only by the stuck-job
grace (30 to 70 s).

So a worker asks the Sentinels at most once per `period` seconds, while idle and between
jobs. When the majority names another master, it drops its idle connections (and its horse's:
see `epoch`), and for every job it took recently it reads the new master's record: one that
stopped at "fetched" (in the queue's intermediate list) or at this worker's own "started"
execution, and is not finished or failed, is put back at the front of its queue. A job may so
run twice (its first run's outcome was lost), never zero times.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis
from redis.sentinel import MasterNotFoundError
from rq.intermediate_queue import IntermediateQueue
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.utils import as_text

from .store import Address, Store

log = logging.getLogger("kitqueue.worker")

# Outcomes the new master already holds: nothing to put back.
SETTLED = {s.value for s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)}


@dataclass(frozen=True)
class Taken:
    """A job this worker took from a queue."""

    job_id: str
    execution_id: str
    queue_name: str
    queue_key: str
    at: float  # time.monotonic()

    @property
    def started_member(self) -> str:
        """Its entry in the queue's started registry (RQ 3: job id, execution id)."""
        return f"{self.job_id}:{self.execution_id}"


def orphans(
    taken: list[Taken], statuses: list[str | None], fetched: dict[str, set[str]], started: dict[str, set[str]]
) -> list[Taken]:
    """The taken jobs a master's record leaves stranded: not settled, and held either in the
    queue's intermediate list (`fetched`, by queue key) or by this very execution in its started
    registry (`started`, members by queue key), and by no other execution. A job still queued,
    scheduled, or running elsewhere is left alone; so is one whose record is gone."""
    stranded = []
    for job, status in zip(taken, statuses, strict=True):
        if status is None or status in SETTLED:
            continue
        members = started.get(job.queue_key, set())
        mine = job.started_member in members
        others = any(m.startswith(f"{job.job_id}:") and m != job.started_member for m in members)
        if others or not (mine or job.job_id in fetched.get(job.queue_key, set())):
            continue
        stranded.append(job)
    return stranded


class MasterWatch:
    """What one worker needs to follow a failover; see the module's documentation."""

    def __init__(self, store: Store, period: float = 1.0, keep: float = 60.0, most: int = 10_000) -> None:
        self.store, self.period, self.keep = store, float(period), float(keep)
        self.address: Address | None = None
        self.epoch = 0  # bumped at each new master: the horse drops its connections when it changes
        self.checked = float("-inf")
        self.pending = False  # a new master whose recovery has not run through yet
        self.taken: deque[Taken] = deque(maxlen=most)

    def took(self, job_id: str, execution_id: str, queue: Any) -> None:
        self.taken.append(Taken(job_id, execution_id, queue.name, queue.key, time.monotonic()))

    def follow(self, connection: redis.Redis) -> tuple[Address, list[Taken]] | None:
        """Called while idle and between jobs; asks the Sentinels at most once per period. When
        the majority names another master than before: drop the idle connections, bump `epoch`,
        put the stranded jobs back (`recover`, through `connection`, which then reaches the new
        master) and return (new master, jobs put back). A failed recovery raises and is tried
        again at the next check. Jobs taken more than `keep` seconds before a check that found
        the master unchanged are forgotten: their records had that long to reach the replicas."""
        now = time.monotonic()
        if now - self.checked < self.period:
            return None
        self.checked = now
        try:
            named = self.store.master_address()
        except (MasterNotFoundError, redis.RedisError) as error:
            log.debug("master check: %s", error)
            return None
        if self.address is None or (named == self.address and not self.pending):
            self.address = named
            while self.taken and self.taken[0].at < now - self.keep:
                self.taken.popleft()
            return None
        if named != self.address:
            self.address, self.pending = named, True
            self.epoch += 1
            self.store.reset()
        stranded = self.recover(connection)
        self.pending = False
        return named, stranded

    def recover(self, connection: redis.Redis) -> list[Taken]:
        """Put the stranded taken jobs (`orphans`) back at the front of their queues on the
        master `connection` reaches; the taken jobs are then forgotten."""
        taken = list(self.taken)
        if not taken:
            return []
        keys = sorted({job.queue_key for job in taken})
        intermediate = {key: IntermediateQueue.get_intermediate_queue_key(key) for key in keys}
        registry = {
            job.queue_key: StartedJobRegistry(job.queue_name, connection=connection).key for job in taken
        }
        pipe = connection.pipeline(transaction=False)
        for job in taken:
            pipe.hget(f"rq:job:{job.job_id}", "status")
        for key in keys:
            pipe.lrange(intermediate[key], 0, -1)
            pipe.zrange(registry[key], 0, -1)
        replies = pipe.execute()
        statuses = [None if s is None else as_text(s) for s in replies[: len(taken)]]
        rest = replies[len(taken) :]
        fetched = {key: {as_text(i) for i in rest[2 * n]} for n, key in enumerate(keys)}
        started = {key: {as_text(m) for m in rest[2 * n + 1]} for n, key in enumerate(keys)}
        stranded = orphans(taken, statuses, fetched, started)
        if stranded:
            pipe = connection.pipeline(transaction=True)
            for job in stranded:
                pipe.lrem(intermediate[job.queue_key], 0, job.job_id)
                pipe.zrem(registry[job.queue_key], job.started_member)
                pipe.hset(f"rq:job:{job.job_id}", "status", JobStatus.QUEUED.value)
                pipe.lpush(job.queue_key, job.job_id)
            pipe.execute()
        self.taken.clear()
        return stranded
