"""`fridge-worker --slots N`: one unit, N job slots forked from a parent that loaded the app
(kitqueue/pool.py), as systemd runs it: readiness, a slot killed mid-job, a warm stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import alive, descendants, group, wait_for_status
from redis_cluster import wait_until
from test_workers import children


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch) -> Iterator[socket.socket]:
    """systemd's notification socket, as the unit's NOTIFY_SOCKET (Type=notify)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def notifications(sock: socket.socket, until: str, timeout: float = 30) -> list[str]:
    """What the pool told systemd, until a message with `until` in it (or the deadline)."""
    heard: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(until in message for message in heard):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            heard.append(sock.recv(4096).decode())
        except TimeoutError:
            pytest.fail(f"no {until!r} from the pool in {timeout} s; heard {heard}")
    return heard


def registered(admin) -> set[str]:
    """The names of the workers registered in Redis."""
    return {key.decode().removeprefix("rq:worker:") for key in admin.smembers("rq:workers")}


def worker_of(admin, job_id: str) -> str:
    return (admin.hget(f"rq:job:{job_id}", "worker_name") or b"").decode()


def slots_of(pool_pid: int, admin) -> dict[int, str]:
    """The pool's slot processes (pid -> worker name), not their horses."""
    names = registered(admin)
    return {pid: name for pid in descendants(pool_pid) for name in names if name.endswith(f".{pid}")}


def test_a_pool_is_ready_once_every_slot_takes_jobs_and_runs_that_many_at_once(
    client, workers, admin, notify_socket
):
    (pool,) = workers.start(1, "--slots", "3")
    heard = notifications(notify_socket, "READY=1")
    ready = next(message for message in heard if "READY=1" in message)
    assert "STATUS=3 of 3 slots taking jobs" in ready, heard
    # Only the parent speaks to systemd (NotifyAccess=main); its slots registered first.
    assert len(slots_of(pool.pid, admin)) == 3, registered(admin)

    ids = [client.post("/jobs", json={"task": "sleep", "args": [2]}).get_json()["job_id"] for _ in range(3)]
    started = time.monotonic()
    done = [wait_for_status(client, job_id, {"finished", "failed"}, timeout=30) for job_id in ids]
    assert [d["status"] for d in done] == ["finished"] * 3, done
    assert time.monotonic() - started < 5, "three 2 s jobs ran one after the other"
    assert len({worker_of(admin, job_id) for job_id in ids}) == 3


def test_a_slot_killed_mid_job_is_replaced_and_its_job_runs_again(client, workers, admin, notify_socket):
    (pool,) = workers.start(1, "--slots", "2")
    notifications(notify_socket, "READY=1")
    job_id = client.post("/jobs", json={"task": "sleep", "args": [1]}).get_json()["job_id"]
    wait_for_status(client, job_id, {"started"}, timeout=15)
    victim = next(pid for pid, name in slots_of(pool.pid, admin).items() if name == worker_of(admin, job_id))
    for pid in [victim, *descendants(victim)]:  # the slot and its horse at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # The pool starts a new worker in that slot; the job, abandoned, is retried and finished.
    heard = notifications(notify_socket, "STATUS=2 of 2", timeout=30)
    assert pool.poll() is None
    done = wait_for_status(client, job_id, {"finished", "failed"}, timeout=60)
    assert done["status"] == "finished", (done, heard)
    assert done["retries_left"] == 1
    assert victim not in slots_of(pool.pid, admin)
    assert len(slots_of(pool.pid, admin)) == 2


def test_a_slot_killed_alone_takes_its_horse_and_the_program_its_job_ran_with_it(
    client, workers, admin, notify_socket
):
    """The OOM killer, or an operator's kill -9, picks one process: the slot. Its horse, in a
    process group of its own, and the program its job started in the background (`spawn`)
    would run on, and the job, abandoned once the slot's heartbeats stopped, would then run
    twice at once. The pool reaps what it kills: no zombie is left under it."""
    (pool,) = workers.start(1, "--slots", "2")
    notifications(notify_socket, "READY=1")
    job_id = client.post("/jobs", json={"task": "spawn", "args": [60]}).get_json()["job_id"]
    wait_for_status(client, job_id, {"started"}, timeout=15)
    victim = next(pid for pid, name in slots_of(pool.pid, admin).items() if name == worker_of(admin, job_id))
    # The slot's own children (its scheduler shares its group): the horse's program, still a
    # child of the job's shell for a moment, is a descendant too (CI once saw both).
    horses = [pid for pid in children(victim) if pid not in group(victim)]
    assert len(horses) == 1, horses
    programs = wait_until(lambda: [p for p in group(horses[0]) if p != horses[0]], 5, "the job's program")
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in horses), 5, f"its horse {horses} to end")
    wait_until(lambda: not any(alive(pid) for pid in programs), 5, f"the job's program {programs} to end")
    heard = notifications(notify_socket, "STATUS=2 of 2", timeout=30)
    slots = set(slots_of(pool.pid, admin))
    wait_until(lambda: set(children(pool.pid)) <= slots, 15, "only its slots under the pool")
    assert pool.poll() is None, heard


def test_a_program_a_running_job_left_to_the_pool_does_not_stop_the_job(
    client, workers, admin, notify_socket
):
    """The shell `spawn` runs exits at once, and the program it started in the background is
    handed to the pool (the slots' subreaper) while the job runs on: the pool's sweeps (every
    5 s) leave both alone, and reap the program once it ends."""
    (pool,) = workers.start(1, "--slots", "2")
    notifications(notify_socket, "READY=1")
    job_id = client.post("/jobs", json={"task": "spawn", "args": [8]}).get_json()["job_id"]
    wait_for_status(client, job_id, {"started"}, timeout=15)
    left = wait_until(lambda: set(children(pool.pid)) - set(slots_of(pool.pid, admin)), 5, "the program")
    done = wait_for_status(client, job_id, {"finished", "failed"}, timeout=30)
    assert (done["status"], done["retries_left"]) == ("finished", 2), (done, left)
    slots = set(slots_of(pool.pid, admin))
    wait_until(lambda: set(children(pool.pid)) <= slots, 15, "the ended program reaped")


def test_what_a_killed_slot_started_goes_with_it(workers, admin, notify_socket):
    """RQ's scheduler runs in a process the slot holding its lock forks, which outlives a slot
    killed outright: the pool ends it with the slot (each slot heads a process group)."""
    (pool,) = workers.start(1, "--slots", "2")
    notifications(notify_socket, "READY=1")

    def with_scheduler() -> list[int]:
        return [pid for pid in slots_of(pool.pid, admin) if len(group(pid)) > 1]

    holder = wait_until(with_scheduler, 15, "a slot with RQ's scheduler")
    scheduler = [pid for pid in group(holder[0]) if pid != holder[0]]
    os.kill(holder[0], signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in scheduler), 10, f"its scheduler {scheduler} to end")


def test_sigterm_lets_every_slot_finish_its_job_then_the_pool_exits(client, workers, notify_socket):
    (pool,) = workers.start(1, "--slots", "2")
    notifications(notify_socket, "READY=1")
    ids = [client.post("/jobs", json={"task": "sleep", "args": [2]}).get_json()["job_id"] for _ in range(2)]
    for job_id in ids:
        wait_for_status(client, job_id, {"started"}, timeout=15)
    under = descendants(pool.pid)  # the slots and their horses
    assert len(under) >= 4, under
    pool.send_signal(signal.SIGTERM)  # systemd's stop: to the main process only (KillMode=mixed)
    assert pool.wait(timeout=30) == 0
    assert "STOPPING=1" in "".join(notifications(notify_socket, "slots stopped"))
    for job_id in ids:
        done = client.get(f"/jobs/{job_id}").get_json()
        assert done["status"] == "finished", done
    assert [pid for pid in under if alive(pid)] == []


@pytest.mark.parametrize("after", [0.0, 0.3, 0.6, 1.0])
def test_a_stop_while_the_slots_start_stops_them_all(workers, admin, after):
    """systemctl stop (or restart) right after a start: whenever the signal comes, while the
    pool imports, forks its slots or waits for them, it reaches every slot."""
    (pool,) = workers.start(1, "--slots", "3")
    time.sleep(after)
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) in (0, -signal.SIGTERM)  # -SIGTERM: before its handler was set
    # Nothing of the pool is left for the unit's stop (or the teardown) to kill: every slot
    # stopped, and stopped warm, taking its name (and its scheduler's) out of the registry.
    left: list[list[int]] = [[]]

    def no_process_left() -> bool:
        left[0] = workers.left_by(pool)
        return not left[0]

    try:
        wait_until(no_process_left, 15, "the pool's processes to end")
    except AssertionError as late:
        raise AssertionError(f"{late}; still running: {left[0]}") from None
    ours = "rq:worker:test-worker-0."
    still: list[str] = []

    def unregistered() -> bool:
        # The registry (rq:workers and each queue's rq:workers:<queue>) holds none of the slots;
        # the hash a slot leaves for 60 s says it registered its death (RQ's register_death).
        sets = ["rq:workers", *(k.decode() for k in admin.scan_iter(match="rq:workers:*"))]
        members = [(s, m.decode()) for s in sets for m in admin.smembers(s)]
        still[:] = [f"{s} {m}" for s, m in members if m.startswith(ours)]
        still.extend(
            f"{k.decode()} without its death"
            for k in admin.scan_iter(match=f"{ours}*")
            if admin.type(k) == b"hash" and not admin.hexists(k, "death")
        )
        return not still

    try:
        wait_until(unregistered, 15, "the pool's slots to leave the worker registry")
    except AssertionError as late:
        raise AssertionError(f"{late}; still registered: {still}") from None


def test_the_pool_keeps_no_connection_of_its_own(workers, admin, notify_socket):
    workers.start(1, "--slots", "2")
    notifications(notify_socket, "READY=1")
    names = [client["name"] for client in admin.client_list()]
    assert "test-worker-0.pool" not in names, names
    assert len([n for n in names if n.startswith("test-worker-0.")]) >= 2, names


def test_when_the_pool_dies_its_slots_finish_their_jobs_and_stop(client, workers, admin, notify_socket):
    (pool,) = workers.start(1, "--slots", "2")
    notifications(notify_socket, "READY=1")
    slots = list(slots_of(pool.pid, admin))
    job_id = client.post("/jobs", json={"task": "sleep", "args": [2]}).get_json()["job_id"]
    wait_for_status(client, job_id, {"started"}, timeout=15)
    pool.send_signal(signal.SIGKILL)  # the parent alone: the kernel tells each slot (SIGTERM)
    pool.wait()
    wait_until(lambda: not any(alive(pid) for pid in slots), 30, f"the slots {slots} to stop")
    done = client.get(f"/jobs/{job_id}").get_json()
    assert done["status"] == "finished", done  # a warm stop: the running job was not cut short
