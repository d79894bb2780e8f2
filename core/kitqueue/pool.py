"""Several job slots under one systemd unit: a parent that has loaded the app forks one worker
per slot and keeps that many running (resque-pool's and Unicorn's master). The slots share the
parent's memory until they write to it, so a slot costs what its worker and its horse write,
not a whole interpreter with the app.

The parent runs no job and keeps no Redis connection. It restarts a slot that died (after
`respawn_seconds`, as systemd's RestartSec would), tells systemd it is ready once every slot
has registered, and passes SIGTERM and SIGINT on to the slots: each finishes its running job
and exits (RQ's warm shutdown; a second signal kills the jobs), and the parent exits when the
last one has. A slot whose parent is gone is sent SIGTERM by the kernel, and stops the same way
(under systemd, the unit's stop then kills what is left at once: KillMode=mixed sends SIGKILL to
the other processes once the main one has gone, and their jobs are retried as abandoned ones).

A slot killed alone (the OOM killer, a kill -9) takes its horse with it (prefork.py), but not a
program the horse's job started: abandoned, the job would be retried while that program still
ran. Each slot tells the parent the pid of every horse it starts; the parent is the slots'
subreaper, so a dead slot's horse becomes its child (its pid, which is also its process group's
id, cannot be reused before the parent reaps it), and the parent kills the horse's group: the
horse and what its job started. It reaps whatever else a slot or a job left to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import os
import select
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("kitqueue.pool")

MAX_SLOTS = 64
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# How often the parent reaps what a slot or a job left behind, besides when a slot ends; an
# ended slot's scheduler has as long to stop on SIGTERM before it is killed.
SWEEP_SECONDS = 5.0
# What a slot tells the parent: (slot, 0) once it takes jobs, (slot, pid) when it starts a horse.
# Shorter than PIPE_BUF: each is written whole, and a read of whole records returns whole ones.
_RECORD = struct.Struct("<BI")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# A slot's work: (slot number, ready, horse) -> exit code; it calls ready() once it takes jobs
# and horse(pid) whenever it starts a horse.
Slot = Callable[[int, Callable[[], None], Callable[[int], None]], int]


@dataclass
class _Running:
    slot: int
    pid: int
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
        self.stopping = False
        self.terminated: dict[int, float] = {}  # an ended slot's process group -> when sent SIGTERM
        self.horses: dict[int, int] = {}  # slot -> the pid of the last horse it started

    def run(self) -> int:
        """Start the slots and keep them running until a stop signal; then wait for them."""
        for number in _STOP_SIGNALS:
            signal.signal(number, self._stop)
        # The slots' collectors leave the parent's objects alone, so the pages they share are
        # not copied for them (the gc module's advice for fork without exec).
        gc.freeze()
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
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
        timeout = SWEEP_SECONDS
        if self.due and not self.stopping:
            timeout = min(timeout, max(0.0, min(self.due.values()) - now))
        readable = select.select([ready_out, *self.running], [], [], timeout)[0]
        if ready_out in readable:
            told = list(_RECORD.iter_unpack(os.read(ready_out, _RECORD.size * 64)))
            self.horses.update((slot, pid) for slot, pid in told if pid)
            if any(not pid for _, pid in told):
                self.ready.update(slot for slot, pid in told if not pid)
                # systemd's start (and so a rolling restart) waits until every slot takes jobs.
                self.notify(f"READY=1\n{self._status()}" if len(self.ready) == self.slots else self._status())
        for pidfd in (fd for fd in readable if fd in self.running):
            self._reap(pidfd)
        self._sweep()
        for slot, when in list(self.due.items()):
            if not self.stopping and when <= time.monotonic():
                del self.due[slot]
                self._fork(slot, ready_out, ready_in)

    def _sweep(self) -> None:
        """Reap the children that are not slots and have ended: what a slot or a job left to
        this process (its subreaper). An ended slot's own group (RQ's scheduler, sent SIGTERM)
        that is still there a sweep later is killed; one of its processes, still this one's
        child, keeps the group's id from being reused. Anything else is left to run: a program
        a running job started and left (a shell's background job) is its horse's to end."""
        now = time.monotonic()
        slots = {running.pid for running in self.running.values()}
        for pid in _children() - slots:
            with contextlib.suppress(ProcessLookupError):
                group = os.getpgid(pid)
                if now - self.terminated.get(group, now) >= SWEEP_SECONDS:
                    os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped now if it ended, else at a later sweep
        self.terminated = {group: when for group, when in self.terminated.items() if now - when < 60}

    def _status(self) -> str:
        return f"STATUS={len(self.ready)} of {self.slots} slots taking jobs"

    def _reap(self, pidfd: int) -> None:
        ended = self.running.pop(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(ended.pid, 0)
        # What the slot started and left behind (RQ's scheduler, a forked process) goes with it;
        # its horse has a group of its own and stops once it has no parent.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ended.pid, signal.SIGTERM)
            self.terminated[ended.pid] = time.monotonic()
        # Its horse and what the horse's job started: the horse is this process's child now
        # (reparented when the slot died), so its pid is still its group's. A horse that is not
        # was reaped by the slot, which killed its group then (prefork.py).
        horse = self.horses.pop(ended.slot, None)
        slots = {running.pid for running in self.running.values()}
        if horse is not None and horse in _children() - slots:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(horse, signal.SIGKILL)
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
        # A stop signal that comes while the slot is forked waits until the slot is in
        # self.running: _stop then passes it on. The slot itself must not run _stop (a copy of
        # this process's handler) in that window: it would keep the signal and work on.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            if self.stopping:
                return
            pid = os.fork()
            if pid == 0:  # the slot: it never returns
                code = 1
                try:
                    os.setpgid(0, 0)  # the slot and what it starts, apart from the instance
                    for number in _STOP_SIGNALS:
                        signal.signal(number, signal.SIG_DFL)  # until its worker has its own
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
                    os.close(ready_out)
                    for pidfd in self.running:
                        os.close(pidfd)
                    stop_with(parent)

                    def tell(pid: int) -> None:
                        with contextlib.suppress(OSError):
                            os.write(ready_in, _RECORD.pack(slot, pid))

                    code = self.work(slot, functools.partial(tell, 0), tell)
                except BaseException:
                    log.exception("slot %d failed", slot)
                finally:
                    os._exit(code)
            self.running[os.pidfd_open(pid)] = _Running(slot, pid, time.monotonic())
            # A signal caught just before the mask, whose handler ran right after the fork.
            if self.stopping:
                os.kill(pid, signal.SIGTERM)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _prctl(option: int, value: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) == 0:
        return True
    log.warning("prctl(%d, %d) failed: errno %d", option, value, ctypes.get_errno())
    return False


def _children() -> set[int]:
    """This process's children (Linux: /proc/<pid>/task/<tid>/children, CONFIG_PROC_CHILDREN,
    which Debian's kernels have)."""
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as children:
                found.update(int(pid) for pid in children.read().split())
        except FileNotFoundError:
            _warn_no_children()
    return found


@functools.cache
def _warn_no_children() -> None:
    log.warning("this kernel lists no process's children: what a slot leaves is not reaped")


def stop_with(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """`sig` to this process when its parent dies, also if it died while this one was being
    forked: SIGTERM (a warm shutdown) to a slot when the pool dies, SIGKILL to a horse when its
    worker dies (prefork.py)."""
    if not _prctl(_PR_SET_PDEATHSIG, int(sig)):
        log.warning("could not ask to be stopped with process %d", parent)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
