"""The preforked work horse (prefork.py): one fork runs many jobs, and a job that kills its
process, leaks memory or runs past its timeout takes down its horse only; the worker records
the job's failure as RQ does, starts a new horse and carries on."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios
import time

import pytest
from conftest import alive, group, wait_for_status
from fridge.web import create_app
from redis_cluster import wait_until
from test_workers import children, proc_title


def horses(worker) -> list[int]:
    return [
        pid
        for pid in children(worker.pid)
        if "Horse waiting" in proc_title(pid) or "Processing" in proc_title(pid)
    ]


def the_horse(worker) -> int:
    found = wait_until(lambda: horses(worker), 15, "the worker's horse")
    assert len(found) == 1, found
    return found[0]


def run(client, task: str, args, wanted=frozenset({"finished"}), timeout: float = 30) -> dict:
    response = client.post("/jobs", json={"task": task, "args": args})
    assert response.status_code == 202, response.get_json()
    return wait_for_status(client, response.get_json()["job_id"], set(wanted), timeout=timeout)


def a_new_horse(worker, old: int) -> int:
    return wait_until(lambda: next((h for h in horses(worker) if h != old), None), 15, "a new horse")


def test_one_horse_runs_many_jobs(client, workers):
    (worker,) = workers.start(1)
    assert run(client, "add", [1, 2])["result"] == 3
    horse = the_horse(worker)
    ids = [client.post("/jobs", json={"task": "add", "args": [n, 1]}).get_json()["job_id"] for n in range(30)]
    for n, job_id in enumerate(ids):
        assert wait_for_status(client, job_id, {"finished"})["result"] == n + 1
    assert horses(worker) == [horse], "the same horse ran every job"


@pytest.mark.parametrize("how", ["exit", "abort", "segfault"])
def test_a_job_that_kills_its_horse_fails_alone(client, workers, how):
    (worker,) = workers.start(1)
    run(client, "add", [1, 1])
    first = the_horse(worker)
    failed = run(client, "crash", [how], {"failed", "finished"})
    assert failed["status"] == "failed", failed
    assert "Work-horse terminated unexpectedly" in failed["error"], failed
    assert failed["retries_left"] == 0, "each of its attempts ran, in a new horse each time"
    assert worker.poll() is None, "the worker carries on"
    assert run(client, "add", [2, 2])["result"] == 4
    assert a_new_horse(worker, first) != first


def test_a_program_a_job_ran_dies_with_its_horse(client, workers):
    """A horse killed mid-job (the OOM killer, a crash in a C extension) while the program its
    job started in the background runs (`spawn`: the shell's `&`, in the horse's process
    group): the program is killed with it, or it would run on beside the job's retry."""
    (worker,) = workers.start(1)
    response = client.post("/jobs", json={"task": "spawn", "args": [60]})
    wait_for_status(client, response.get_json()["job_id"], {"started"}, timeout=15)
    horse = the_horse(worker)
    programs = wait_until(lambda: [p for p in group(horse) if p != horse], 5, "the job's program")
    os.kill(horse, signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in programs), 5, f"the job's program {programs} to end")
    # The job is retried in a new horse, whose program is then the only one running.
    retry = wait_until(
        lambda: [p for h in horses(worker) if h != horse for p in group(h) if p != h], 15, "the retry"
    )
    assert not any(alive(pid) for pid in programs), (programs, retry)
    assert worker.poll() is None, "the worker carries on"


def test_a_horse_over_its_memory_limit_is_replaced_after_the_job(client, workers):
    (worker,) = workers.start(1, WORKER_MAX_MEMORY_MB=150)
    run(client, "add", [1, 1])
    first = the_horse(worker)
    assert run(client, "hog", [20])["result"] == 20
    assert horses(worker) == [first], "under the limit, the horse stays"
    assert run(client, "hog", [120])["result"] == 140, "the job that passes the limit finishes"
    second = a_new_horse(worker, first)
    assert run(client, "hog", [1])["result"] == 1, "what the old horse kept is gone with it"
    assert horses(worker) == [second]


def test_a_horse_is_replaced_after_its_number_of_jobs(client, workers):
    (worker,) = workers.start(1, WORKER_MAX_JOBS=3)
    seen = []
    for n in range(7):
        run(client, "add", [n, 0])
        seen.append(the_horse(worker))
    assert len(set(seen)) == 3, seen  # jobs 1-3, 4-6, 7: each horse's title changes with it


def test_a_job_past_its_timeout_fails_and_its_horse_is_replaced(settings, workers):
    client = create_app({**settings, "JOB_TIMEOUT": 1}).test_client()
    (worker,) = workers.start(1)
    run(client, "add", [1, 1])
    first = the_horse(worker)
    failed = run(client, "sleep", [30], {"failed", "finished"})
    assert failed["status"] == "failed", failed
    assert "JobTimeoutException" in failed["error"], failed
    assert a_new_horse(worker, first) != first
    assert worker.poll() is None
    assert run(client, "add", [2, 3])["result"] == 5


def test_the_horse_goes_with_its_worker(client, workers):
    """SIGTERM: the worker stops its idle horse before it exits. SIGKILL of the worker alone
    (no systemd to kill the rest): the orphaned horse notices within a second and exits."""
    for kill in (signal.SIGTERM, signal.SIGKILL):
        (worker,) = workers.start(1)
        run(client, "add", [1, 1])
        horse = the_horse(worker)
        os.kill(worker.pid, kill)
        worker.wait(timeout=20)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{horse}") and alive(horse):
            assert time.monotonic() < deadline, f"horse {horse} outlived its worker ({kill!r})"
            time.sleep(0.05)


def counted(admin, name: str) -> int:
    return int(admin.get(f"fridge:stats:{name}") or 0)


def zombies(worker) -> list[int]:
    return [pid for pid in children(worker.pid) if not alive(pid)]


def test_timeouts_that_coincide_with_heartbeats_are_recorded_once(settings, workers, admin):
    """The job timeout (2 s) is a multiple of the heartbeat interval (1 s): the worker's alarm
    lands while the horse records the timeout and retires. Each attempt is still recorded once
    (2 jobs x 3 attempts = 6 failures, no fourth attempt) and every old horse is reaped."""
    client = create_app({**settings, "JOB_TIMEOUT": 2}).test_client()
    (worker,) = workers.start(1)
    ids = [client.post("/jobs", json={"task": "sleep", "args": [30]}).get_json()["job_id"] for _ in range(2)]
    for job_id in ids:
        failed = wait_for_status(client, job_id, {"failed", "finished"}, timeout=60)
        assert (failed["status"], failed["retries_left"]) == ("failed", 0), failed
    time.sleep(1)  # any extra attempt would have started by now
    assert counted(admin, "failures") == 6
    assert zombies(worker) == []


def test_a_horse_per_job_runs_each_job_once(client, workers, admin):
    """WORKER_MAX_JOBS=1 (RQ's fork per job): every answer is followed by the horse's exit."""
    workers.start(1, WORKER_MAX_JOBS=1)
    assert run(client, "flaky", [1])["result"] == 2
    for n in range(5):
        assert run(client, "add", [n, n])["result"] == 2 * n
    assert (counted(admin, "failures"), counted(admin, "finished")) == (1, 6)


def test_a_stop_command_stops_the_job_and_a_new_horse_takes_the_next(client, workers, admin):
    from rq.command import send_stop_job_command
    from rq.serializers import JSONSerializer

    (worker,) = workers.start(1)
    job_id = client.post("/jobs", json={"task": "sleep", "args": [30]}).get_json()["job_id"]
    wait_for_status(client, job_id, {"started"})
    first = the_horse(worker)
    send_stop_job_command(admin, job_id, serializer=JSONSerializer)
    assert wait_for_status(client, job_id, {"stopped", "failed", "finished"})["status"] == "stopped"
    assert a_new_horse(worker, first) != first
    assert run(client, "add", [1, 2])["result"] == 3


def test_a_cold_shutdown_kills_the_job_and_a_new_worker_runs_it_again(client, workers):
    """A second SIGTERM (RQ's cold shutdown) kills the horse mid-job and the worker exits at
    once; the abandoned job is retried by the next worker."""
    (worker,) = workers.start(1)
    job_id = client.post("/jobs", json={"task": "sleep", "args": [3]}).get_json()["job_id"]
    wait_for_status(client, job_id, {"started"})
    horse = the_horse(worker)
    worker.send_signal(signal.SIGTERM)
    time.sleep(1.2)  # RQ ignores a second signal within a second of the first
    worker.send_signal(signal.SIGTERM)
    # Within SCHEDULER_STOP_SECONDS and a margin: once in CI (1 run in about 50) the scheduler
    # said it had stopped and the worker still waited the whole 10 s for it to exit. The
    # warning now says what state the kernel had it in.
    assert worker.wait(timeout=25) is not None
    assert not alive(horse)
    workers.start(1)
    done = wait_for_status(client, job_id, {"finished", "failed"}, timeout=60)
    assert (done["status"], done["retries_left"]) == ("finished", 1), done


def test_a_wait_for_the_horse_interrupted_by_a_heartbeat_loses_nothing(admin, monkeypatch):
    """RQ's monitor interrupts wait_for_horse every job_monitoring_interval (an exception from
    its alarm) and calls it again. Interrupted while reaping a horse that answered "retiring",
    the next call still reports that answer and reaps it (it used to return "no horse": the job
    was recorded twice, as failed by a dead horse, and the horse was left a zombie)."""
    from kitqueue.prefork import RETIRING, PreforkWorker
    from rq import Queue
    from rq.timeouts import HorseMonitorTimeoutException

    def answer_then_linger(self, parent, jobs, answers):
        os.read(jobs, 100)
        os.write(answers, RETIRING)
        time.sleep(0.3)  # a big process takes a while to exit
        return 0

    monkeypatch.setattr(PreforkWorker, "_run_horse", answer_then_linger)
    worker = PreforkWorker([Queue("q", connection=admin)], connection=admin)
    horse = worker._start_horse()
    os.write(horse.jobs, b"job\n")
    real_wait4, interrupted = os.wait4, []

    def wait4(pid, options):
        if not interrupted:
            interrupted.append(pid)
            raise HorseMonitorTimeoutException("heartbeat due")
        return real_wait4(pid, options)

    monkeypatch.setattr(os, "wait4", wait4)
    with pytest.raises(HorseMonitorTimeoutException):
        worker.wait_for_horse()
    pid, status, _ = worker.wait_for_horse()  # as RQ's monitor calls it again
    assert (pid, status) == (horse.pid, 0)
    assert worker._horse is None
    assert not os.path.exists(f"/proc/{horse.pid}"), "reaped, no zombie left"


def test_a_timeout_marks_its_horse_even_when_the_job_swallows_it():
    from kitqueue.prefork import RetiringDeathPenalty
    from rq.timeouts import JobTimeoutException

    RetiringDeathPenalty.struck = False
    with RetiringDeathPenalty(1, JobTimeoutException, job_id="x"), contextlib.suppress(Exception):
        time.sleep(3)  # a task that catches every Exception
    assert RetiringDeathPenalty.struck, "its horse is replaced after this job"


def unread(pid: int) -> int:
    """Bytes waiting in the pipes a process holds (FIONREAD on each, opened through /proc)."""
    waiting = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
            continue
        pipe = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
        try:
            waiting += struct.unpack("i", fcntl.ioctl(pipe, termios.FIONREAD, b"\0\0\0\0"))[0]
        finally:
            os.close(pipe)
    return waiting


def test_a_horse_killed_as_its_job_arrives_leaves_nothing_of_it_behind(client, workers, admin):
    """The kernel kills the horse (the OOM killer, say) after the worker took a job, before the
    horse started it: the worker records the failure and the job is retried. The first take must
    not stay in the queue's intermediate list: RQ's maintenance would meet it there and fail (or
    retry) the job, finished by then, a second time."""
    (worker,) = workers.start(1)
    run(client, "add", [1, 1])
    horse = the_horse(worker)
    os.kill(horse, signal.SIGSTOP)  # it cannot read the job the worker sends it
    job_id = client.post("/jobs", json={"task": "add", "args": [2, 3]}).get_json()["job_id"]
    taken = "rq:queue:default:intermediate"
    wait_until(lambda: job_id.encode() in admin.lrange(taken, 0, -1), 15, "the worker to take the job")
    wait_until(lambda: unread(horse), 15, "the worker to send the horse the job")
    os.kill(horse, signal.SIGKILL)
    done = wait_for_status(client, job_id, {"finished", "failed"}, timeout=30)
    assert done["status"] == "finished", done
    # Two maintenance passes and the intermediate list's grace (FAST: 2 s, 3 s), and more.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert job_id.encode() not in admin.lrange(taken, 0, -1), "the first take stayed"
        time.sleep(0.5)
    after = client.get(f"/jobs/{job_id}").get_json()
    assert (after["status"], after["retries_left"]) == ("finished", done["retries_left"]), after
