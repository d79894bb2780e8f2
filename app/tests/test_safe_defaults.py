"""The public API's safe defaults: demo tasks off, private queues, optional bearer tokens,
no internal addresses in public answers, no text/plain or non-UTF-8 input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import APP_DIR
from fridge.config import BadSetting
from fridge.web import create_app
from redis_cluster import env_for

TOKEN = "t0ken-for-the-tests-7d1c"  # noqa: S105 (a test value)


@pytest.fixture
def production(settings):
    """The app as a production inventory runs it: no demo tasks, default public queues."""
    defaults = {k: v for k, v in settings.items() if k not in ("DEMO_TASKS",)}
    return create_app({**defaults, "DEMO_TASKS": False}).test_client()


def enqueued(admin) -> int:
    return int(admin.get("fridge:stats:enqueued") or 0)


@pytest.mark.parametrize("task", ["sleep", "spawn", "fail", "flaky", "crash", "hog"])
def test_demo_tasks_are_refused_unless_turned_on(production, admin, task):
    response = production.post("/jobs", json={"task": task, "args": [1]})
    assert response.status_code == 400
    assert f"unknown task '{task}' (tasks: eat, add)" in response.get_json()["error"]
    assert enqueued(admin) == 0
    assert production.get("/openapi.json").get_json()["components"]["schemas"]["NewJob"]["properties"][
        "task"
    ]["enum"] == ["eat", "add"]


def test_the_critical_queue_is_not_public_by_default(production, admin):
    for response in (
        production.post("/jobs", json={"task": "eat", "args": ["x"], "queue": "critical"}),
        production.get("/comer/pan?queue=critical"),
    ):
        assert response.status_code == 400
        assert (
            "queue 'critical' is not open to requests (queues: default, low)" in response.get_json()["error"]
        )
    assert enqueued(admin) == 0
    assert production.post("/jobs", json={"task": "eat", "args": ["x"], "queue": "low"}).status_code == 202


def test_public_queues_are_configurable_and_checked(settings):
    client = create_app({**settings, "PUBLIC_QUEUES": ["critical"]}).test_client()
    assert client.post("/jobs", json={"task": "add", "args": [1, 2], "queue": "critical"}).status_code == 202
    with pytest.raises(BadSetting, match=r"PUBLIC_QUEUES names queue\(s\) not in QUEUES: urgent"):
        create_app({**settings, "PUBLIC_QUEUES": ["urgent"]})


@pytest.mark.parametrize(
    ("retries", "intervals", "said"),
    [
        (3, [], "JOB_RETRY_INTERVALS must list the seconds before each retry"),
        (3, [5, -1], "JOB_RETRY_INTERVALS must list the seconds before each retry"),
        (3, "5,30", "JOB_RETRY_INTERVALS must list the seconds before each retry"),
        (-1, [5], "JOB_RETRIES must be a whole number of retries"),
        ("three", [5], "JOB_RETRIES must be a whole number of retries"),
        (2.5, [5], "JOB_RETRIES must be a whole number of retries"),
    ],
    ids=["empty", "negative", "a-string", "negative-retries", "retries-a-word", "retries-a-fraction"],
)
def test_retry_settings_the_workers_cannot_follow_are_refused_naming_them(settings, retries, intervals, said):
    """An empty JOB_RETRY_INTERVALS was taken, then every failed job's retry raised IndexError
    in RQ, and so did each maintenance pass that met an abandoned job."""
    with pytest.raises(BadSetting, match=said):
        create_app({**settings, "JOB_RETRIES": retries, "JOB_RETRY_INTERVALS": intervals})
    create_app({**settings, "JOB_RETRIES": 0, "JOB_RETRY_INTERVALS": []})  # no retry: no interval
    create_app({**settings, "JOB_RETRIES": "3", "JOB_RETRY_INTERVALS": [5]})  # `-e kit_app_job_retries=3`


def test_a_task_whose_queue_is_not_in_queues_is_refused_at_start(settings, cluster):
    """Without `low` in QUEUES, `sleep` (queued on `low` by default) would be acknowledged on a
    queue no worker reads: the app and the workers refuse to start, naming the task and queue."""
    narrow = {"QUEUES": ["critical", "default"], "PUBLIC_QUEUES": ["default"]}
    with pytest.raises(BadSetting, match=r"task 'sleep' .*queue 'low'.* not in QUEUES \(critical, default\)"):
        create_app({**settings, **narrow})
    worker = subprocess.run(
        [sys.executable, "-m", "fridge.worker", "--burst"],
        env={**env_for(cluster, **narrow, DEMO_TASKS=True), "PYTHONPATH": str(APP_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode != 0
    assert "task 'sleep'" in worker.stderr, worker.stderr
    assert "queue 'low'" in worker.stderr, worker.stderr
    assert "Traceback" not in worker.stderr, worker.stderr
    # Demo tasks off, `sleep` is not offered: nothing can be put on `low`.
    assert create_app({**settings, **narrow, "DEMO_TASKS": False})


def test_tokens_guard_enqueueing_and_reading_jobs_when_configured(settings, admin):
    """With API_TOKENS, enqueueing and reading a job need one: a job's arguments and result are
    the client's data, and a recurring job's id (recurring-<name>-<period>) can be guessed."""
    client = create_app({**settings, "API_TOKENS": [TOKEN]}).test_client()
    ok = {"Authorization": f"Bearer {TOKEN}"}
    queued = client.post("/jobs", json={"task": "add", "args": {"a": 40, "b": 2}}, headers=ok)
    assert queued.status_code == 202
    job_url = f"/jobs/{queued.get_json()['job_id']}"
    counted = enqueued(admin)
    for headers in ({}, {"Authorization": "Bearer wrong-token-0000000"}, {"Authorization": f"Basic {TOKEN}"}):
        response = client.post("/jobs", json={"task": "eat", "args": ["x"]}, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.get("/comer/pan", headers=headers).status_code == 401
        for path in (job_url, "/jobs/recurring-report-0", "/jobs/nope"):
            read = client.get(path, headers=headers)
            assert read.status_code == 401, (path, headers)
            assert "args" not in read.get_json(), read.get_json()
    assert enqueued(admin) == counted
    assert client.post("/jobs", json={"task": "eat", "args": ["x"]}, headers=ok).status_code == 202
    assert client.get("/comer/pan", headers=ok).status_code == 202
    assert client.get(job_url, headers=ok).get_json()["args"] == {"a": 40, "b": 2}
    doc = client.get("/openapi.json").get_json()
    assert doc["paths"]["/jobs"]["post"]["security"] == [{"bearer": []}]
    assert doc["paths"]["/jobs/{job_id}"]["get"]["security"] == [{"bearer": []}]
    assert "401" in doc["paths"]["/jobs/{job_id}"]["get"]["responses"]
    with pytest.raises(BadSetting, match="API_TOKENS"):
        create_app({**settings, "API_TOKENS": ["short"]})


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_bodies_a_cross_site_form_can_send_are_refused(client, admin, content_type):
    body = json.dumps({"task": "eat", "args": ["x"]})
    response = client.post("/jobs", data=body, content_type=content_type)
    assert response.status_code == 415
    assert "application/json" in response.get_json()["error"]
    assert enqueued(admin) == 0


@pytest.mark.parametrize("path", ["/comer/%ff%fe", "/comer/pl%e1tano", "/jobs/%c3"])
def test_paths_that_are_not_utf8_are_400(client, admin, path):
    response = client.get(path)
    assert response.status_code == 400
    assert response.get_json()["error"] == "the path is not valid UTF-8"
    assert enqueued(admin) == 0
    assert client.get("/comer/pl%C3%A1tano").status_code == 202  # UTF-8 is fine


def test_unavailable_answers_name_no_server(settings):
    client = create_app({**settings, "SENTINELS": ["127.0.0.1:1"], "RETRY_BUDGET": 0.5}).test_client()
    for response in (client.get("/comer/platano"), client.get("/healthz")):
        assert response.status_code == 503
        text = response.get_data(as_text=True)
        assert "127.0.0.1" not in text
        assert "Error" not in text  # no exception text from redis-py


@pytest.mark.parametrize(
    "command",
    [
        ("SENTINEL", "SET", "kit", "auth-pass", "stolen"),
        ("SENTINEL", "REMOVE", "kit"),
        ("SENTINEL", "MONITOR", "evil", "192.0.2.1", "6379", "2"),
        ("SENTINEL", "FAILOVER", "kit"),
        ("SENTINEL", "CONFIG", "SET", "resolve-hostnames", "yes"),
        ("SENTINEL", "RESET", "*"),
        ("ACL", "SETUSER", "intruder", "on", ">pw", "+@all"),
        ("ACL", "LIST"),
        ("SHUTDOWN",),
        ("INFO",),
        ("CLIENT", "LIST"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_the_apps_sentinel_login_cannot_reconfigure_sentinel(cluster, settings, command):
    import redis

    port = int(cluster.sentinels[0].rsplit(":", 1)[1])
    client = redis.Redis(
        port=port, username=settings["SENTINEL_USERNAME"], password=settings["SENTINEL_PASSWORD"]
    )
    assert client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "kit")  # what it is for
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)
    assert client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "kit")  # still monitored


@pytest.mark.parametrize(
    ("name", "unit"), [("REQUEUE_ALL_AT_ONCE", "of jobs"), ("MAX_CONTENT_LENGTH", "of bytes")]
)
@pytest.mark.parametrize("value", [0, -1, 2.5, "ten", True, None])
def test_counts_must_be_whole_numbers(settings, name, unit, value):
    with pytest.raises(BadSetting, match=rf"{name} must be a whole number {unit}, 1 or more"):
        create_app({**settings, name: value})


def test_a_count_rendered_as_text_by_a_template_is_taken(settings):
    app = create_app({**settings, "MAX_CONTENT_LENGTH": "1024", "REQUEUE_ALL_AT_ONCE": "10"})
    assert (app.config["MAX_CONTENT_LENGTH"], app.config["REQUEUE_ALL_AT_ONCE"]) == (1024, 10)
    response = app.test_client().post("/jobs", json={"task": "add", "args": {"a": 1, "b": "x" * 1024}})
    assert response.status_code == 413
    assert response.get_json()["error"] == "request body is larger than 1024 bytes"


@pytest.mark.parametrize("value", [4.9, "20", True])
def test_fail_fast_after_must_leave_a_failover_its_budget(settings, value):
    """Shorter than RETRY_BUDGET (5 s), a failover's requests would be answered 503 at once
    instead of waiting for the new master. Unset, it follows RETRY_BUDGET: a deployment with a
    budget over 20 s still starts."""
    with pytest.raises(
        BadSetting, match=r"FAIL_FAST_AFTER must be a number of seconds no shorter than RETRY_BUDGET"
    ):
        create_app({**settings, "FAIL_FAST_AFTER": value})


def test_fail_fast_after_unset_follows_the_retry_budget(settings):
    from kitqueue.config import fail_fast_after

    assert fail_fast_after({**settings, "FAIL_FAST_AFTER": None, "RETRY_BUDGET": 5}) == 20
    assert fail_fast_after({**settings, "FAIL_FAST_AFTER": None, "RETRY_BUDGET": 30}) == 120
    create_app({**settings, "RETRY_BUDGET": 30})  # starts
