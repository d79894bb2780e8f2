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
see `epoch`), and for every job it took recently it reads the new master's record: one held by
this worker's own "started" execution and not finished or failed is put back at the front of
its queue at once. One that is only "fetched" (in the queue's intermediate list, started by
nobody) may also be another worker's fetch of this very moment (it moves the job, then
registers its execution): it is put back only if it is still so at a second look, `settle`
seconds later. The put-back itself is one script, so it checks the record again and changes it
in one step. A job may so run twice (its first run's outcome was lost), never zero times.

Left alone: RQ's scheduler process and the worker's command channel (pubsub) keep their own
connections, which follow the new master when the old one is demoted; a delayed job may so
wait up to ~10 s more.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis
from redis.sentinel import MasterNotFoundError
from rq.defaults import RQ_KEY_PREFIX
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.utils import as_text

from .store import Address, SentinelLoginRefused, Store

log = logging.getLogger("kitqueue.worker")

# Outcomes the new master already holds: nothing to put back.
SETTLED = {s.value for s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)}


# Put one job back, if the record is still as read: not settled, started by no other execution,
# and held by this execution or fetched. Also removes what RQ keeps of the execution (its hash,
# its entry in the job's executions and in the worker's).
# KEYS: job, intermediate list, started registry, queue, execution, job's executions, worker's
# executions. ARGV: job id, started member (job id:execution id), execution id.
PUT_BACK = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status or {" or ".join(f"status == '{s}'" for s in sorted(SETTLED))} then
  return 0
end
local prefix = ARGV[1] .. ':'
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if member ~= ARGV[2] and string.sub(member, 1, #prefix) == prefix then return 0 end
end
local mine = redis.call('ZREM', KEYS[3], ARGV[2])
local fetched = redis.call('LREM', KEYS[2], 0, ARGV[1])
if mine == 0 and fetched == 0 then return 0 end
redis.call('DEL', KEYS[5])
redis.call('ZREM', KEYS[6], ARGV[3])
redis.call('SREM', KEYS[7], ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('LPUSH', KEYS[4], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Taken:
    """A job this worker took from a queue."""

    job_id: str
    execution_id: str
    queue_name: str
    queue_key: str
    worker_name: str
    at: float  # time.monotonic()

    @property
    def started_member(self) -> str:
        """Its entry in the queue's started registry (RQ 3: job id, execution id)."""
        return f"{self.job_id}:{self.execution_id}"


def orphans(
    taken: list[Taken], statuses: list[str | None], fetched: dict[str, set[str]], started: dict[str, set[str]]
) -> tuple[list[Taken], list[Taken]]:
    """The taken jobs a master's record leaves stranded, as (held by this very execution in its
    started registry, only fetched): not settled, and started by no other execution. `fetched`
    holds the intermediate lists' job ids and `started` the started registries' members, by
    queue key. A job still queued, scheduled, or running elsewhere is left alone; so is one
    whose record is gone."""
    mine, only_fetched = [], []
    for job, status in zip(taken, statuses, strict=True):
        if status is None or status in SETTLED:
            continue
        members = started.get(job.queue_key, set())
        if any(m.startswith(f"{job.job_id}:") and m != job.started_member for m in members):
            continue
        if job.started_member in members:
            mine.append(job)
        elif job.job_id in fetched.get(job.queue_key, set()):
            only_fetched.append(job)
    return mine, only_fetched


@dataclass(frozen=True)
class Followed:
    """What a check did: `master` is new (`switched`) or still the one of the last switch, and
    the jobs put back in their queues."""

    master: Address
    switched: bool
    put_back: list[Taken]


class MasterWatch:
    """What one worker needs to follow a failover; see the module's documentation."""

    def __init__(
        self,
        store: Store,
        period: float = 1.0,
        keep: float = 60.0,
        settle: float | None = None,
        most: int = 10_000,
    ) -> None:
        self.store, self.period, self.keep = store, float(period), float(keep)
        self.settle = self.period if settle is None else float(settle)
        self.address: Address | None = None
        self.epoch = 0  # bumped at each new master: the horse drops its connections when it changes
        self.checked = float("-inf")
        self.refused: str | None = None  # the Sentinels' refusal of this login, once warned of
        self.pending = False  # a new master whose recovery has not run through yet
        self.taken: deque[Taken] = deque(maxlen=most)
        # Only fetched at the last look: job id -> (the job, when first seen so).
        self.doubtful: dict[str, tuple[Taken, float]] = {}
        self._put_back = store.redis.register_script(PUT_BACK)

    def took(self, job_id: str, execution: Any, queue: Any) -> None:
        """Note a job this worker took (`execution`: RQ's Execution the worker made for it)."""
        self.taken.append(
            Taken(job_id, execution.id, queue.name, queue.key, execution.worker_name, time.monotonic())
        )

    def follow(self, connection: redis.Redis) -> Followed | None:
        """Called while idle and between jobs; asks the Sentinels at most once per period. When
        the majority names another master than before: drop the idle connections, bump `epoch`,
        put the stranded jobs back (`recover`, through `connection`, which then reaches the new
        master) and say so (`Followed`); again at the next checks while some job is only
        fetched (`doubtful`). A failed recovery raises and is tried again at
        the next check. Jobs taken more than `keep` seconds before a check that found the
        master unchanged are forgotten: their records had that long to reach the replicas."""
        now = time.monotonic()
        if now - self.checked < self.period:
            return None
        self.checked = now
        try:
            named = self.store.master_address()
        except SentinelLoginRefused as error:  # a configuration error: the worker keeps its master
            if self.refused is None:  # said once, not at every check
                log.warning("master check: %s", error.reason)
            self.refused = error.reason
            return None
        except (MasterNotFoundError, redis.RedisError) as error:
            log.debug("master check: %s", error)
            return None
        if self.refused is not None:
            log.warning("master check: the Sentinels take this worker's login again")
            self.refused = None
        if self.address is None or (named == self.address and not self.pending and not self.doubtful):
            self.address = named
            while self.taken and self.taken[0].at < now - self.keep:
                self.taken.popleft()
            return None
        switched = named != self.address
        if switched:
            self.address, self.pending = named, True
            self.epoch += 1
            self.store.reset()
        put_back = self.recover(connection)
        switched, self.pending = switched or self.pending, False
        return Followed(named, switched, put_back) if switched or put_back else None

    def recover(self, connection: redis.Redis) -> list[Taken]:
        """Read the master's record of every taken (and doubtful) job; put back those its own
        execution holds, and those only fetched both now and `settle` seconds ago. The taken
        jobs are then forgotten; the newly doubtful ones kept for the next look."""
        now = time.monotonic()
        taken = list(
            {job.job_id: job for job in [*self.taken, *(t for t, _ in self.doubtful.values())]}.values()
        )
        if not taken:
            return []
        keys = sorted({job.queue_key for job in taken})
        intermediate = {key: IntermediateQueue.get_intermediate_queue_key(key) for key in keys}
        registry = {
            job.queue_key: StartedJobRegistry(job.queue_name, connection=connection).key for job in taken
        }
        pipe = connection.pipeline(transaction=False)
        for job in taken:
            pipe.hget(f"{Job.redis_job_namespace_prefix}{job.job_id}", "status")
        for key in keys:
            pipe.lrange(intermediate[key], 0, -1)
            pipe.zrange(registry[key], 0, -1)
        replies = pipe.execute()
        statuses = [None if s is None else as_text(s) for s in replies[: len(taken)]]
        rest = replies[len(taken) :]
        fetched = {key: {as_text(i) for i in rest[2 * n]} for n, key in enumerate(keys)}
        started = {key: {as_text(m) for m in rest[2 * n + 1]} for n, key in enumerate(keys)}
        mine, only_fetched = orphans(taken, statuses, fetched, started)
        seen = {
            job.job_id: self.doubtful[job.job_id][1] for job in only_fetched if job.job_id in self.doubtful
        }
        confirmed = [job for job in only_fetched if now - seen.get(job.job_id, now) >= self.settle]
        put_back = []
        for job in [*mine, *confirmed]:
            keys_of_job = [
                f"{Job.redis_job_namespace_prefix}{job.job_id}",
                intermediate[job.queue_key],
                registry[job.queue_key],
                job.queue_key,
                f"{RQ_KEY_PREFIX}:execution:{job.started_member}",
                ExecutionRegistry.key_template.format(job.job_id),
                WORKER_EXECUTIONS_KEY_TEMPLATE.format(job.worker_name),
            ]
            args = [job.job_id, job.started_member, job.execution_id]
            if self._put_back(keys=keys_of_job, args=args, client=connection):
                put_back.append(job)
        # Forgotten only now: a recovery that raised is run again, whole, at the next check.
        self.taken.clear()
        self.doubtful = {
            job.job_id: (job, seen.get(job.job_id, now)) for job in only_fetched if job not in confirmed
        }
        return put_back
