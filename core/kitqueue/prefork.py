"""A worker whose work horse is forked once and runs many jobs (the preforking model of Resque
and Unicorn), instead of RQ's fork for every job.

The parent stays RQ's `Worker`: it dequeues (reliable fetch), registers each execution, keeps
the heartbeats, kills a job past its timeout, and records a horse that died mid-job as that
job's failure (retried while it has retries left), as RQ does for a horse it forked for one job.
Only the horse lives on: it reads each job's id from a pipe, runs it, and answers one byte.

The horse is replaced after `max_jobs` jobs, when its resident memory passes `max_memory_mb`
after a job, after a job that ran past its timeout (the timeout interrupted that job's code
anywhere, whatever the job then did with the exception), and at once when it dies. What a job
leaves behind in its process (globals, threads, signal or logging handlers) reaches the later
jobs of the same horse: tasks must leave none (RQ's SimpleWorker has the same rule).

RQ's job monitor waits for the horse in `wait_for_horse` under an alarm that interrupts it
every job_monitoring_interval to send heartbeats, and calls it again: so the horse's answer is
read with that alarm held back and kept until the next job, and the horse is reaped before it
is forgotten. A horse's death is seen through its pidfd, not through the pipes, which a process
the job forked may still hold open. A horse dies with its worker (SIGKILL from the kernel),
and what its job started (the horse's process group) with the horse: the worker kills the group
when it reaps the horse, and a pool (pool.py) when the worker died alone. A program a job leaves
running therefore ends with its horse (after `max_jobs` jobs, a memory limit, a stop).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import random
import select
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rq import Worker
from rq.executions import Execution
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from .pool import stop_with

log = logging.getLogger("kitqueue.worker")

# The horse's answer after each job; b"" (end of file) or no answer: it died.
CARRY_ON, RETIRING = b".", b"r"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_mib() -> float:
    """This process's resident memory (RSS), in MiB."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE / 2**20


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class RetiringDeathPenalty(UnixSignalDeathPenalty):
    """RQ's job timeout (SIGALRM), which also marks the horse it struck for replacement."""

    struck = False  # in the horse: a job of this one ran past its timeout

    def handle_death_penalty(self, signum: int, frame: Any) -> None:
        if issubclass(self._exception, JobTimeoutException):
            RetiringDeathPenalty.struck = True
        super().handle_death_penalty(signum, frame)


@dataclass
class Horse:
    """The parent's handle on its horse."""

    pid: int
    jobs: int  # written by the parent: one JSON line per job
    answers: int  # read by the parent: one byte per job
    pidfd: int  # readable once the horse has exited
    answer: bytes | None = None  # the current job's answer, once read
    closed: set[int] = field(default_factory=set)

    def close(self, *fds: int) -> None:
        fresh = [fd for fd in fds or (self.jobs, self.answers, self.pidfd) if fd not in self.closed]
        self.closed.update(fresh)
        _close(*fresh)

    def exited(self) -> bool:
        return bool(select.select([self.pidfd], [], [], 0)[0])


class PreforkWorker(Worker):
    """RQ's forking worker with a long-lived horse; see the module's documentation."""

    death_penalty_class = RetiringDeathPenalty

    def __init__(self, *args: Any, max_jobs: int = 1000, max_memory_mb: float = 512, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_jobs = max(1, int(max_jobs))
        self.max_memory_mb = float(max_memory_mb)
        self.horses_started = 0
        self._horse: Horse | None = None
        # Told the pid of each horse started (a pool's slot tells the pool: pool.py).
        self.on_horse: Callable[[int], None] | None = None
        # Bumped when the worker follows a new master (follow.py); part of `_epoch`, sent with
        # each job: when that changes, the horse drops its Redis connections before the job.
        self.connection_epoch = 0

    # The parent.

    def execute_job(self, job, queue) -> None:
        super().execute_job(job, queue)
        if self._horse is None and not self._stop_requested:
            self._start_horse()  # a new horse at once, not when the next job arrives

    def fork_work_horse(self, job, queue) -> None:
        """Hand the job to the horse (starting one when there is none): RQ calls this after it
        registered the execution, then waits for the horse with `wait_for_horse`."""
        line = json.dumps([job.id, self.execution.id, queue.name, self._epoch()]).encode() + b"\n"
        horse = self._horse
        if horse is not None and horse.exited():  # it died while idle: no job was lost with it
            self._bury(horse)
            horse = None
        horse = horse or self._start_horse()
        horse.answer = None
        self._horse_pid = horse.pid
        # Shorter than PIPE_BUF: written whole or not at all. A horse that died just now is
        # reported by wait_for_horse, as the job's failure.
        with contextlib.suppress(BrokenPipeError):
            os.write(horse.jobs, line)

    def _epoch(self) -> str:
        """What the horse's connections must match, sent with each job: follow.py's epoch, and
        the master the parent's pool reached last. That one also changes without follow.py,
        when a command's own retries reconnect to a new master (one that could not write to
        its disk: store.CannotPersist). A horse still connected to the old master would read
        the job there, but not the execution the parent registered on the new one (seen: the
        horse died and the job ran twice)."""
        return f"{self.connection_epoch}/{self.connection.connection_pool.master_address}"

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """Until the horse has run the job: (pid, 0, None) when it carries on; (pid, 0, rusage)
        when it retired after the job; when it died, os.wait4's (pid, status, rusage).

        RQ's monitor interrupts this with an exception every job_monitoring_interval, then
        calls it again: nothing here is lost to an interruption (see the module's docstring)."""
        horse = self._horse
        if horse is None:
            return None, None, None
        while horse.answer is None:
            ready = select.select([horse.answers, horse.pidfd], [], [], None)[0]
            if horse.answers not in ready and not select.select([horse.answers], [], [], 0)[0]:
                horse.answer = b""  # it exited without answering
                break
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            try:
                horse.answer = os.read(horse.answers, 1)  # b"": it closed the pipe, exiting
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if horse.answer == CARRY_ON:
            return horse.pid, os.EX_OK, None
        pid, status, rusage = self._bury(horse)
        return pid, (os.EX_OK if horse.answer == RETIRING else status), rusage

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.horse_pid:  # 0 would be this worker's own process group
            super().kill_horse(sig)

    def _start_horse(self) -> Horse:
        jobs_out, jobs_in = os.pipe()
        answers_out, answers_in = os.pipe()
        parent = os.getpid()
        # The horse's collector leaves the parent's objects alone, so the pages they share are
        # not copied for it (the gc module's advice for fork without exec). A worker forked by a
        # pool (pool.py) came frozen, and stays so: thawing would hand the pool's objects to its
        # collector, whose full collections would then copy the pool's pages for every slot.
        thaw = gc.get_freeze_count() == 0
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the horse: it never returns
            code = 1
            try:
                os.close(jobs_in)
                os.close(answers_out)
                code = self._run_horse(parent, jobs_out, answers_in)
            finally:
                os._exit(code)
        if thaw:
            gc.unfreeze()
        os.close(jobs_out)
        os.close(answers_in)
        self._horse = Horse(pid, jobs_in, answers_out, os.pidfd_open(pid))
        self.horses_started += 1
        if self.on_horse is not None:
            self.on_horse(pid)
        log.info("Worker %s: horse %s started (horse number %d)", self.name, pid, self.horses_started)
        return self._horse

    def _bury(self, horse: Horse) -> tuple[int, int | None, Any]:
        """Reap a horse that ended, with what its job started, then forget it; the next job
        gets a new one. A program the job ran (its process group) would otherwise run on once
        the horse died (a crash, the OOM killer), beside the job's retry. Until the horse is
        reaped, its pid, the group's id, cannot be reused: the group is killed first."""
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.waitid(os.P_PID, horse.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
            os.killpg(horse.pid, signal.SIGKILL)
        try:
            pid, status, rusage = os.wait4(horse.pid, 0)
        except ChildProcessError:  # already reaped
            pid, status, rusage = horse.pid, None, None
        if self._horse is horse:
            self._horse = None
        horse.close()
        return pid, status, rusage

    def _stop_horse(self, patience: float = 5.0) -> None:
        """An idle horse exits when its pipe closes; one that does not is killed."""
        horse = self._horse
        if horse is None:
            return
        horse.close(horse.jobs)
        if not select.select([horse.pidfd], [], [], patience)[0]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(horse.pid, signal.SIGKILL)
        self._bury(horse)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            if not self.is_horse:
                self._stop_horse()

    # The horse.

    def _run_horse(self, parent: int, jobs: int, answers: int) -> int:
        """Run each job the parent sends until the pipe closes, the parent is gone or a limit
        is reached. An error outside the job (which RQ records itself) ends the horse with 1,
        and the parent then records the job's failure, as for a horse that crashed."""
        os.setpgrp()  # kill_horse kills the horse's group: the horse and what its job started
        # Killed with its worker: a worker killed alone (the OOM killer, a kill -9 of one slot of
        # a pool) would leave it running its job, which, abandoned, would then run twice at once.
        stop_with(parent, signal.SIGKILL)
        # A process a job forks must not hold the horse's pipes (nor answer in its name).
        os.register_at_fork(after_in_child=lambda: _close(jobs, answers))
        random.seed()
        self.setup_work_horse_signals()
        self._is_horse = True
        os.environ["RQ_WORKER_ID"] = self.name
        buffered, done, epoch = b"", 0, self._epoch()
        self.procline("Horse waiting for a job (0 run)")
        while True:
            while b"\n" not in buffered:
                if not select.select([jobs], [], [], 1.0)[0]:
                    if os.getppid() != parent:  # the parent was killed: nobody waits for answers
                        return 0
                    continue
                chunk = os.read(jobs, 4096)
                if not chunk:  # the parent closed the pipe: stop
                    return 0
                buffered += chunk
            line, _, buffered = buffered.partition(b"\n")
            job_id, execution_id, queue_name, job_epoch = json.loads(line)
            if job_epoch != epoch:  # the worker follows a new master: so do its horse's connections
                self.connection.connection_pool.disconnect()
                epoch = job_epoch
            RetiringDeathPenalty.struck = False
            self._perform(job_id, execution_id, queue_name)
            done += 1
            retire = RetiringDeathPenalty.struck or done >= self.max_jobs
            retire = retire or resident_mib() > self.max_memory_mb
            os.write(answers, RETIRING if retire else CARRY_ON)
            if retire:
                return 0
            self.procline(f"Horse waiting for a job ({done} run)")

    def _perform(self, job_id: str, execution_id: str, queue_name: str) -> None:
        """What RQ's horse does for the job it was forked for; the job, queue and execution
        are read back from Redis, as RQ's SpawnWorker's horse does."""
        try:
            job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
            queue = self.queue_class(
                queue_name,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
            execution = Execution.fetch(execution_id, job.id, connection=self.connection)
        except BaseException:
            log.exception("Horse of %s: could not load job %s; the worker records it", self.name, job_id)
            raise
        execution._job = job
        self.executions = {}
        self.execution = execution
        os.environ["RQ_JOB_ID"] = job.id
        self.perform_job(job, queue, execution)
