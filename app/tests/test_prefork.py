"""The preforked work horse (prefork.py): one fork runs many jobs, and a job that kills its
process, leaks memory or runs past its timeout takes down its horse only; the worker records
the job's failure as RQ does, starts a new horse and carries on."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import wait_for_status
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
        while os.path.exists(f"/proc/{horse}") and _alive(horse):
            assert time.monotonic() < deadline, f"horse {horse} outlived its worker ({kill!r})"
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
