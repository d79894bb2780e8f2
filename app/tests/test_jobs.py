"""Job semantics: priority, retries and the failed registry, delays, recurring jobs, the
task allowlist, and the dashboard's actions on failed jobs."""

from __future__ import annotations

import time

import pytest
import redis
from conftest import wait_for_status
from fridge.config import load
from kitqueue.worker import check_schedules
from redis_cluster import PASSWORDS, WEB_USER, wait_until
from rq import Queue, Retry
from rq.serializers import JSONSerializer


def test_a_worker_takes_critical_before_default_before_low(settings, workers):
    from fridge.web import create_app

    # critical is not open to requests by default (PUBLIC_QUEUES); the operator opens it here.
    client = create_app({**settings, "PUBLIC_QUEUES": ["critical", "default", "low"]}).test_client()
    ids = {}
    for queue in ("low", "default", "critical"):
        ids[queue] = [
            client.post("/jobs", json={"task": "add", "args": [i, 0], "queue": queue}).get_json()["job_id"]
            for i in range(3)
        ]
    workers.start(1, "--burst")
    started = {}
    for job_ids in ids.values():
        for job_id in job_ids:
            started[job_id] = wait_for_status(client, job_id, {"finished"})["started_at"]
    order = sorted(started, key=started.get)
    assert order[:3] == ids["critical"]
    assert order[3:6] == ids["default"]
    assert order[6:] == ids["low"]


def test_failing_jobs_are_retried_then_land_in_the_failed_registry(client, workers):
    workers.start(1)
    job_id = client.post("/jobs", json={"task": "fail", "args": ["boom"]}).get_json()["job_id"]
    failed = wait_for_status(client, job_id, {"failed"}, timeout=20)
    assert failed["error"] == "RuntimeError: boom"
    assert failed["retries_left"] == 0
    overview = client.get("/dashboard/api/overview").get_json()
    assert [j["job_id"] for j in overview["failed_jobs"]] == [job_id]
    assert overview["counters"]["failures"] == 3  # first run + 2 retries (JOB_RETRIES=2)


def test_a_flaky_job_succeeds_on_a_retry(client, workers):
    workers.start(1)
    job_id = client.post("/jobs", json={"task": "flaky", "args": [2]}).get_json()["job_id"]
    done = wait_for_status(client, job_id, {"finished", "failed"}, timeout=20)
    assert done["status"] == "finished", done
    assert done["result"] == 3


def test_dashboard_requeues_and_deletes_failed_jobs(client, workers, admin):
    workers.start(1)
    first = client.post("/jobs", json={"task": "fail", "args": ["one"]}).get_json()["job_id"]
    second = client.post("/jobs", json={"task": "fail", "args": ["two"]}).get_json()["job_id"]
    wait_for_status(client, first, {"failed"}, timeout=20)
    wait_for_status(client, second, {"failed"}, timeout=20)
    page = client.get("/dashboard/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for text in (first, second, "critical", "RuntimeError: one"):
        assert text in html

    # Actions must come from the dashboard page itself (a real browser's requests are
    # checked in molecule/web: test_dashboard_browser.py).
    for forged in (
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": "https://other.localhost"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/cats.html"},
        {},  # an old browser posting a form whose page hid the referrer
    ):
        refused = client.post(f"/dashboard/failed/{first}/delete", headers=forged)
        assert refused.status_code == 403, forged
        assert "dashboard page" in refused.get_json()["error"]
    ended = client.get(f"/jobs/{first}").get_json()
    assert ended["status"] == "failed"
    scripted = client.post(f"/dashboard/failed/{first}/requeue", headers={"X-Requested-With": "curl"})
    assert scripted.status_code == 303  # a script says so with a header no form can send
    deadline = time.monotonic() + 20
    while (again := client.get(f"/jobs/{first}").get_json())["ended_at"] == ended["ended_at"]:
        assert time.monotonic() < deadline, again  # it ran (and failed) once more
        time.sleep(0.05)
    wait_for_status(client, first, {"failed"}, timeout=20)
    same_site = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    assert client.post(f"/dashboard/failed/{first}/delete", headers=same_site).status_code == 303
    assert client.get(f"/jobs/{first}").status_code == 404
    before = client.get(f"/jobs/{second}").get_json()
    assert before["status"] == "failed", before
    assert before["ended_at"], before
    failures = client.get("/dashboard/api/overview").get_json()["counters"]["failures"]
    assert client.post(f"/dashboard/failed/{second}/requeue", headers=same_site).status_code == 303

    def ran_again() -> dict | None:
        # Only a new run sets a new ended_at; the requeue alone leaves the old one or none.
        now = client.get(f"/jobs/{second}").get_json()
        rerun = now["ended_at"] not in (None, before["ended_at"])
        return now if rerun and now["status"] == "failed" else None

    requeued = wait_until(ran_again, 20, f"job {second} to run and fail again after the requeue")
    assert requeued["error"] == "RuntimeError: two"
    assert client.get("/dashboard/api/overview").get_json()["counters"]["failures"] > failures
    assert client.post(f"/dashboard/failed/{second}/explode", headers=same_site).status_code == 404


def test_delayed_jobs_run_after_their_delay(client, workers):
    workers.start(1)
    asked = time.time()
    job_id = client.post("/jobs", json={"task": "eat", "args": ["higo"], "delay": 2}).get_json()["job_id"]
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "scheduled"
    done = wait_for_status(client, job_id, {"finished"}, timeout=20)
    started = __import__("datetime").datetime.fromisoformat(done["started_at"]).timestamp()
    assert started - asked >= 2


def test_recurring_jobs_run_once_per_period_however_many_workers_run(client, workers, admin):
    schedule = [{"name": "tick", "task": "add", "args": [1, 1], "every": 1, "queue": "critical"}]
    workers.start(3, RECURRING=schedule)
    # The window opens once the schedule runs (the workers' start-up is not what is measured).
    wait_until(lambda: admin.keys("rq:job:recurring-tick-*"), 30, "the first recurring job")
    begin = time.time()
    time.sleep(4.2)  # the window watched: four whole periods
    end = time.time()
    ids = sorted(k.decode().split(":")[-1] for k in admin.keys("rq:job:recurring-tick-*"))
    slots = [int(i.rsplit("-", 1)[1]) for i in ids]
    assert len(slots) == len(set(slots)), "a period got two jobs"
    in_window = [s for s in slots if int(begin) + 1 <= s <= int(end) - 1]
    assert in_window == list(range(int(begin) + 1, int(end))), (slots, begin, end)


def test_a_recurring_job_s_queue_is_checked_as_it_will_be_enqueued(settings):
    """With no queue of its own a recurring job goes to its task's queue: that queue is the one
    checked (`default` was, whatever the task's)."""
    napping = {"name": "nap", "task": "sleep", "args": [1], "every": 5}  # `sleep` goes to `low`
    config = {**load({**settings, "DEMO_TASKS": True}), "RECURRING": [napping]}
    with pytest.raises(SystemExit, match=r"RECURRING nap: queue 'low' \(task sleep's\) is not in QUEUES"):
        check_schedules({**config, "QUEUES": ["critical", "default"]})
    assert check_schedules({**config, "QUEUES": ["critical", "low"]}) == [napping]
    elsewhere = {**napping, "queue": "urgent"}
    with pytest.raises(SystemExit, match=r"RECURRING nap: queue 'urgent' is not in QUEUES"):
        check_schedules({**config, "RECURRING": [elsewhere]})
    # Its jobs would be refused by the workers (test_workers_refuse_a_stored_job_the_api_would_refuse).
    with pytest.raises(SystemExit, match=r"RECURRING nap: 'sleep' is a demo task, and DEMO_TASKS is off"):
        check_schedules({**config, "QUEUES": ["critical", "low"], "DEMO_TASKS": False})


def test_workers_refuse_functions_that_are_not_registered_tasks(client, workers, cluster):
    # Someone with write access to Redis stores a job naming an arbitrary function.
    queue = Queue("default", connection=cluster.admin(cluster.master_port()), serializer=JSONSerializer)
    job = queue.enqueue("os.getcwd", job_id="intruder", retry=None)
    workers.start(1)
    failed = wait_for_status(client, job.id, {"failed", "finished"}, timeout=20)
    assert failed["status"] == "failed"
    assert "not a registered task" in failed["error"]


def test_workers_refuse_a_stored_job_the_api_would_refuse(client, workers, cluster):
    """A web host's Redis login may write jobs (it enqueues): taken over, it could store in a
    queue a demo task where DEMO_TASKS is off (`hog`: memory the worker host has not got), or
    a task with arguments its schema refuses, or given by position. The worker checks what the
    API checks: each such job fails naming why, and runs nothing."""
    web = redis.Redis(
        port=cluster.master_port(), username=WEB_USER, password=PASSWORDS["web"], **cluster.client_tls()
    )
    queue = Queue("default", connection=web, serializer=JSONSerializer)
    retry = Retry(max=2)  # a refusal is final: not retried
    stored = {
        "demo": queue.enqueue("fridge.tasks.hog", kwargs={"mib": 4096}, retry=retry),
        "schema": queue.enqueue("fridge.tasks.eat", kwargs={"comida": "x" * 10_000}, retry=retry),
        "position": queue.enqueue("fridge.tasks.add", args=[1, 2], retry=retry),
        "good": queue.enqueue("fridge.tasks.add", kwargs={"a": 1, "b": 2}, retry=retry),
    }
    workers.start(1, DEMO_TASKS=False)
    done = {kind: wait_for_status(client, job.id, {"failed", "finished"}) for kind, job in stored.items()}
    assert done["good"]["result"] == 3, done["good"]
    reasons = {
        "demo": "refusing to run 'hog': a demo task, and DEMO_TASKS is off",
        "schema": "'comida' is longer than 64 characters",
        "position": "task 'add' takes its arguments by name, not by position",
    }
    for kind, reason in reasons.items():
        assert (done[kind]["status"], done[kind]["retries_left"]) == ("failed", 0), done[kind]
        assert reason in done[kind]["error"], done[kind]
        assert len(queue.fetch_job(stored[kind].id).results()) == 1, "refused once, not retried"


def test_a_job_over_its_timeout_is_stopped_and_failed(settings, workers):
    from fridge.web import create_app

    client = create_app({**settings, "JOB_TIMEOUT": 1, "JOB_RETRIES": 0}).test_client()
    workers.start(1)
    job_id = client.post("/jobs", json={"task": "sleep", "args": [30]}).get_json()["job_id"]
    failed = wait_for_status(client, job_id, {"failed", "finished"}, timeout=20)
    assert failed["status"] == "failed"
    assert "JobTimeoutException" in failed["error"]
