"""Several job slots under one systemd unit: a parent that has loaded the app forks one worker
per slot and keeps that many running (resque-pool's and Unicorn's master). The slots share the
parent's memory until they write to it, so a slot costs what its worker and its horse write,
not a whole interpreter with the app.

The parent runs no job and opens no Redis connection. It restarts a slot that died (after
`respawn_seconds`, as systemd's RestartSec would), tells systemd it is ready once every slot
has registered, and passes SIGTERM and SIGINT on to the slots: each finishes its running job
and exits (RQ's warm shutdown; a second signal kills the jobs), and the parent exits when the
last one has. A slot whose parent is gone is sent SIGTERM by the kernel, and stops the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("kitqueue.pool")

MAX_SLOTS = 64
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# A slot's work: (slot number, ready) -> exit code; it calls ready() once it takes jobs.
Slot = Callable[[int, Callable[[], None]], int]


@dataclass
class _Running:
    slot: int
    pid: int
    pidfd: int
    started: float


class Pool:
    """`slots` processes, each forked from this one and running `work`; see the module."""

    def __init__(
        self,
        slots: int,
        work: Slot,
        notify: Callable[[str], None],
        respawn_seconds: float = 2.0,
        burst: bool = False,
    ) -> None:
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"a pool has 1 to {MAX_SLOTS} slots, not {slots}")
        self.slots, self.work, self.notify = slots, work, notify
        self.respawn_seconds = respawn_seconds
        self.burst = burst  # a slot that ends with exit code 0 (its queues are empty) stays ended
        self.running: dict[int, _Running] = {}  # by pidfd
        self.due: dict[int, float] = {}  # slot -> when it starts again
        self.ready: set[int] = set()
        self.started = 0  # slot processes started, restarts included
        self.stopping = False

    def run(self) -> int:
        """Start the slots and keep them running until a stop signal; then wait for them."""
        for number in _STOP_SIGNALS:
            signal.signal(number, self._stop)
        # The slots' collectors leave the parent's objects alone, so the pages they share are
        # not copied for them (the gc module's advice for fork without exec).
        gc.freeze()
        ready_out, ready_in = os.pipe()
        try:
            for slot in range(1, self.slots + 1):
                self._fork(slot, ready_out, ready_in)
            while self.running or (self.due and not self.stopping):
                self._wait(ready_out, ready_in)
        finally:
            os.close(ready_out)
            os.close(ready_in)
        self.notify(f"STATUS=all {self.slots} slots stopped")
        return 0

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        self.notify("STOPPING=1")
        for running in list(self.running.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(running.pid, signum)

    def _wait(self, ready_out: int, ready_in: int) -> None:
        now = time.monotonic()
        timeout = None if self.stopping or not self.due else max(0.0, min(self.due.values()) - now)
        readable = select.select([ready_out, *self.running], [], [], timeout)[0]
        if ready_out in readable:
            self.ready.update(os.read(ready_out, 512))
            # systemd's start (and so a rolling restart) waits until every slot takes jobs.
            self.notify(f"READY=1\n{self._status()}" if len(self.ready) == self.slots else self._status())
        for pidfd in (fd for fd in readable if fd in self.running):
            self._reap(self.running.pop(pidfd))
        for slot, when in list(self.due.items()):
            if not self.stopping and when <= time.monotonic():
                del self.due[slot]
                self._fork(slot, ready_out, ready_in)

    def _status(self) -> str:
        return f"STATUS={len(self.ready)} of {self.slots} slots taking jobs"

    def _reap(self, ended: _Running) -> None:
        os.close(ended.pidfd)
        _, status = os.waitpid(ended.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if self.stopping or (self.burst and code == 0):
            return
        self.ready.discard(ended.slot)
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        log.warning("slot %d (pid %d) ended (%s); it starts again", ended.slot, ended.pid, how)
        self.notify(self._status())
        # Not sooner than respawn_seconds after its last start: a slot that cannot start
        # (Redis unreachable, a bad setting) does not spin.
        self.due[ended.slot] = max(time.monotonic(), ended.started + self.respawn_seconds)

    def _fork(self, slot: int, ready_out: int, ready_in: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the slot: it never returns
            code = 1
            try:
                for number in _STOP_SIGNALS:
                    signal.signal(number, signal.SIG_DFL)
                os.close(ready_out)
                _stop_with(parent)
                for running in self.running.values():
                    os.close(running.pidfd)

                def ready() -> None:
                    with contextlib.suppress(OSError):
                        os.write(ready_in, bytes([slot]))

                code = self.work(slot, ready)
            except BaseException:
                log.exception("slot %d failed", slot)
            finally:
                os._exit(code)
        pidfd = os.pidfd_open(pid)
        self.running[pidfd] = _Running(slot, pid, pidfd, time.monotonic())
        self.started += 1
        if self.stopping:  # the stop signal came while it was being forked
            os.kill(pid, signal.SIGTERM)


def _stop_with(parent: int) -> None:
    """SIGTERM (a warm shutdown) to this process when its parent dies, also if it died while
    this one was being forked."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("could not ask to be stopped with the pool: errno %d", ctypes.get_errno())
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
