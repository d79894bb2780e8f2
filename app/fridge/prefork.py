"""A worker whose work horse is forked once and runs many jobs (the preforking model of Resque
and Unicorn), instead of RQ's fork for every job.

The parent stays RQ's `Worker`: it dequeues (reliable fetch), registers each execution, keeps
the heartbeats, kills a job past its timeout, and records a horse that died mid-job as that
job's failure (retried while it has retries left), as RQ does for a horse it forked for one job.
Only the horse lives on: it reads each job's id from a pipe, runs it, and answers one byte.

The horse is replaced after `max_jobs` jobs, when its resident memory passes `max_memory_mb`
after a job, after a job that timed out (the timeout interrupted that job's code anywhere),
and at once when it dies. What a job leaves in memory can therefore reach later jobs of the
same horse: tasks must not keep state in globals (RQ's SimpleWorker has the same rule).
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
import time
from dataclasses import dataclass, field
from typing import Any

from rq import Worker
from rq.executions import Execution
from rq.timeouts import JobTimeoutException

log = logging.getLogger("fridge.worker")

# The horse's answer after each job.
CARRY_ON, RETIRING = b".", b"r"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_mib() -> float:
    """This process's resident memory (RSS), in MiB."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE / 2**20


@dataclass
class Horse:
    """The parent's handle on its horse: the pid and the two pipes' ends it keeps."""

    pid: int
    jobs: int  # written by the parent: one JSON line per job
    answers: int  # read by the parent: one byte per job, end of file when the horse is gone
    closed: set[int] = field(default_factory=set)

    def close(self, *fds: int) -> None:
        for fd in fds or (self.jobs, self.answers):
            if fd not in self.closed:
                self.closed.add(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)


class PreforkWorker(Worker):
    """RQ's forking worker with a long-lived horse; see the module's documentation."""

    def __init__(self, *args: Any, max_jobs: int = 1000, max_memory_mb: float = 512, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_jobs = max(1, int(max_jobs))
        self.max_memory_mb = float(max_memory_mb)
        self.horses_started = 0
        self._horse: Horse | None = None
        self._retire = False  # set in the horse by a job that timed out

    # The parent.

    def execute_job(self, job, queue) -> None:
        super().execute_job(job, queue)
        if self._horse is None and not self._stop_requested:
            self._start_horse()  # a new horse at once, not when the next job arrives

    def fork_work_horse(self, job, queue) -> None:
        """Hand the job to the horse (starting one when there is none): RQ calls this after it
        registered the execution, then waits for the horse with `wait_for_horse`."""
        line = json.dumps([job.id, self.execution.id, queue.name]).encode() + b"\n"
        horse = self._horse or self._start_horse()
        try:
            os.write(horse.jobs, line)  # shorter than PIPE_BUF: written whole or not at all
        except BrokenPipeError:  # it died while idle: no job was lost with it
            self._bury(horse)
            horse = self._start_horse()
            os.write(horse.jobs, line)
        self._horse_pid = horse.pid

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """Until the horse has run the job: (pid, 0, None) when it carries on; when it retired
        or died, RQ's own answer for a horse that ended, os.wait4's (pid, status, rusage).
        RQ's job monitor interrupts this every job_monitoring_interval to send heartbeats."""
        horse = self._horse
        if horse is None:
            return None, None, None
        answer = os.read(horse.answers, 1)
        if answer == CARRY_ON:
            return horse.pid, os.EX_OK, None
        return self._bury(horse)

    def _start_horse(self) -> Horse:
        jobs_out, jobs_in = os.pipe()
        answers_out, answers_in = os.pipe()
        # The horse's collector leaves the parent's objects alone, so the pages they share are
        # not copied for it (the gc module's advice for fork without exec).
        gc.freeze()
        pid = os.fork()
        if pid:
            gc.unfreeze()
        else:  # the horse: it never returns
            code = 1
            try:
                os.close(jobs_in)
                os.close(answers_out)
                code = self._run_horse(jobs_out, answers_in)
            finally:
                os._exit(code)
        os.close(jobs_out)
        os.close(answers_in)
        self._horse = Horse(pid, jobs_in, answers_out)
        self.horses_started += 1
        log.info("Worker %s: horse %s started (horse number %d)", self.name, pid, self.horses_started)
        return self._horse

    def _bury(self, horse: Horse) -> tuple[int | None, int | None, Any]:
        """Reap a horse that ended; the next job gets a new one."""
        if self._horse is horse:
            self._horse = None
        horse.close()
        try:
            return os.wait4(horse.pid, 0)
        except ChildProcessError:  # already reaped (by a cold shutdown's handler)
            return horse.pid, None, None

    def _stop_horse(self, patience: float = 5.0) -> None:
        """An idle horse exits when its pipe closes; one that does not is killed."""
        horse = self._horse
        if horse is None:
            return
        horse.close(horse.jobs)
        deadline = time.monotonic() + patience
        with contextlib.suppress(ChildProcessError):
            while not os.waitpid(horse.pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(horse.pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
        self._bury(horse)

    def teardown(self) -> None:
        super().teardown()
        if not self.is_horse:
            self._stop_horse()

    # The horse.

    def _run_horse(self, jobs: int, answers: int) -> int:
        """Run each job the parent sends until the pipe closes, the parent is gone or a limit
        is reached. An error outside the job (which RQ records itself) ends the horse with 1,
        and the parent then records the job's failure, as for a horse that crashed."""
        os.setpgrp()  # kill_horse kills the horse's group: the horse and what its job started
        random.seed()
        self.setup_work_horse_signals()
        self._is_horse = True
        parent, buffered, done = os.getppid(), b"", 0
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
            self._perform(*json.loads(line))
            done += 1
            retire = self._retire or done >= self.max_jobs or resident_mib() > self.max_memory_mb
            os.write(answers, RETIRING if retire else CARRY_ON)
            if retire:
                return 0
            self.procline(f"Horse waiting for a job ({done} run)")

    def _perform(self, job_id: str, execution_id: str, queue_name: str) -> None:
        """What RQ's horse does for the job it was forked for; the job, queue and execution
        are read back from Redis, as RQ's SpawnWorker's horse does."""
        job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
        queue = self.queue_class(
            queue_name,
            connection=self.connection,
            job_class=self.job_class,
            serializer=self.serializer,
            death_penalty_class=self.death_penalty_class,
        )
        execution = Execution.fetch(execution_id, job.id, connection=self.connection)
        execution._job = job
        self.executions = {}
        self.execution = execution
        os.environ["RQ_JOB_ID"] = job.id
        self.perform_job(job, queue, execution)

    def handle_exception(self, job, *exc_info: Any) -> None:
        if self.is_horse and exc_info and isinstance(exc_info[1], JobTimeoutException):
            self._retire = True
        super().handle_exception(job, *exc_info)
