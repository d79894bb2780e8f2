"""The `fridge` console script, run as an operator runs it: a process with the app's settings."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import APP_DIR, FAST
from conftest import fridge_cli as fridge
from fridge.web import create_app
from redis_cluster import PASSWORDS, SENTINEL_CLIENT_USER, WEB_USER, env_for
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer


def test_status_counts_queues_and_workers_per_host(cluster, client, workers):
    for _ in range(3):
        assert client.post("/jobs", json={"task": "eat", "args": ["pera"], "queue": "low"}).status_code == 202
    as_web = env_for(cluster, **FAST, REDIS_USERNAME=WEB_USER, REDIS_PASSWORD=PASSWORDS["web"])
    done = fridge(as_web, "--json", "status")
    assert done.returncode == 0, done.stderr
    queues = {q["name"]: q for q in json.loads(done.stdout)["queues"]}
    assert queues["low"]["depth"] == 3, queues
    assert queues["default"]["depth"] == 0
    workers.start(1)
    deadline = time.monotonic() + 20
    while True:
        data = json.loads(fridge(as_web, "status", "--json").stdout)  # --json after the command too
        if data["workers"] and all(q["depth"] == 0 for q in data["queues"]):
            break
        assert time.monotonic() < deadline, data
        time.sleep(0.2)
    table = fridge(as_web, "status").stdout
    assert data["workers"][0]["host"] in table, table
    assert table.splitlines()[0].split() == ["queue", "waiting", "started", "scheduled", "failed"]


@pytest.mark.acl_denials
def test_status_with_the_workers_user_says_to_use_a_web_host(cluster):
    done = fridge(env_for(cluster, **FAST), "status")  # the workers' user: no LLEN, no SCAN
    assert done.returncode == 3
    assert "may not do this" in done.stderr, done.stderr
    assert "web host" in done.stderr


def test_status_says_redis_is_unreachable_and_exits_3(cluster):
    env = env_for(cluster, SENTINELS=["127.0.0.1:1"], RETRY_BUDGET=1.0)
    done = fridge(env, "status")
    assert done.returncode == 3
    assert "unreachable through Sentinel" in done.stderr, done.stderr
    assert done.stdout == ""


@pytest.fixture
def as_web(cluster) -> dict[str, str]:
    """The environment of an operator on a web host: the web tier's Redis user."""
    return env_for(cluster, **FAST, REDIS_USERNAME=WEB_USER, REDIS_PASSWORD=PASSWORDS["web"])


def run_json(env: dict[str, str], *args: str) -> Any:
    done = fridge(env, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def show_when(env: dict[str, str], job_id: str, status: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while (job := run_json(env, "show", job_id))["status"] != status:
        assert time.monotonic() < deadline, f"job {job_id} not {status}: {job}"
        time.sleep(0.2)
    return job


def test_a_job_from_enqueue_to_failed_requeued_and_deleted(as_web, workers, admin):
    workers.start(1)
    eaten = run_json(as_web, "enqueue", "eat", '["pera"]')
    assert eaten["queue"] == "default"
    assert eaten["replayed"] is False
    job = show_when(as_web, eaten["job_id"], "finished")
    assert job["result"] == "ate pera" or "pera" in str(job["result"]), job
    assert job["task"] == "eat"
    assert job["args"] == {"comida": "pera"}

    failing = run_json(as_web, "enqueue", "fail", '{"message": "boom"}', "--queue", "low")["job_id"]
    job = show_when(as_web, failing, "failed")
    assert "boom" in job["error"], job
    assert "Traceback" in job["traceback"], job
    assert job["queue"] == "low"
    assert job["retries_left"] == 0
    text = fridge(as_web, "show", failing).stdout
    assert "traceback:" in text, text
    assert "boom" in text, text
    listed = run_json(as_web, "failed")
    assert [j["job_id"] for j in listed] == [failing], listed
    assert failing in fridge(as_web, "failed", "--queue", "low").stdout

    workers.stop(workers.procs[0])
    assert admin.ttl(f"rq:job:{failing}") > 0  # FAILURE_TTL
    assert run_json(as_web, "requeue", failing) == {"requeued": [failing]}
    assert run_json(as_web, "show", failing)["status"] == "queued"
    assert admin.ttl(f"rq:job:{failing}") == -1  # it waits however long: the failure TTL is gone
    assert run_json(as_web, "failed") == []
    assert {q["name"]: q["depth"] for q in run_json(as_web, "queues")}["low"] == 1
    # Not failed any more: neither requeued twice nor deleted as a failed job.
    again = fridge(as_web, "requeue", failing)
    assert again.returncode == 1, again.stderr
    assert "is not failed" in again.stderr, again.stderr

    workers.start(1)
    show_when(as_web, failing, "failed")
    assert run_json(as_web, "delete", failing) == {"deleted": [failing]}
    gone = fridge(as_web, "show", failing)
    assert gone.returncode == 1
    assert f"no job {failing}" in gone.stderr
    assert run_json(as_web, "workers")[0]["state"] in ("idle", "busy")


def test_requeue_all_pages_through_more_failed_jobs_than_one_read(as_web, settings, workers):
    # Enqueued through the API (130 CLI processes would take 25 s), with no retry.
    api = create_app({**settings, "JOB_RETRIES": 0}).test_client()
    ids = {api.post("/jobs", json={"task": "fail", "args": ["x"]}).get_json()["job_id"] for _ in range(130)}
    workers.start(1)
    deadline = time.monotonic() + 60
    while (failed := {q["name"]: q["failed"] for q in run_json(as_web, "queues")})["default"] < 130:
        assert time.monotonic() < deadline, failed
        time.sleep(0.5)
    workers.stop(workers.procs[0])
    assert len(run_json(as_web, "failed", "--limit", "500")) == 130
    page = run_json(as_web, "failed", "--limit", "20", "--start", "20")
    assert len(page) == 20
    requeued = run_json(as_web, "requeue", "--all", "--queue", "default")["requeued"]
    assert sorted(requeued) == sorted(ids)
    queues = {q["name"]: q for q in run_json(as_web, "queues")}
    assert (queues["default"]["depth"], queues["default"]["failed"]) == (130, 0)


def test_requeue_all_drops_the_entry_of_a_failed_job_that_expired(as_web, admin):
    """A failed job's hash expired (FAILURE_TTL) before its registry entry was cleaned: its entry
    is dropped, this run and every later one goes on."""
    admin.zadd("rq:failed:default", {"0badc0de" * 4: 1})
    for _ in range(2):
        done = fridge(as_web, "requeue", "--all")
        assert (done.returncode, done.stdout.strip()) == (0, "requeued 0 job(s)"), done.stderr
        assert admin.zcard("rq:failed:default") == 0


def test_requeue_all_killed_midway_leaves_each_job_failed_or_queued_never_neither(as_web, admin):
    """`fridge requeue --all` killed (SIGKILL) while it works, ten times over: each job is
    still in its failed registry or back in its queue, never in both and never in neither. RQ's
    requeue took a job out of the registry (ZREM), then queued it in a second round trip: a
    process killed between the two (or a failover) left the job in neither place, where no
    worker, no dashboard and no requeue would ever find it again."""
    failed = FailedJobRegistry("default", connection=admin, serializer=JSONSerializer)
    with admin.pipeline() as pipe:  # what a worker records for a job that failed (RQ's own calls)
        made = {"connection": admin, "serializer": JSONSerializer, "origin": "default"}
        jobs = [Job.create("fridge.tasks.eat", args=("kiwi",), **made) for _ in range(3000)]
        for job in jobs:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            job.save(pipeline=pipe)
            failed.add(job, ttl=3600, exc_string="Traceback: boom", pipeline=pipe)
        pipe.execute()
    ids = {job.id.encode() for job in jobs}
    for kill in range(10):
        queued = admin.llen("rq:queue:default")
        requeue = subprocess.Popen(
            [sys.executable, "-m", "fridge.cli", "requeue", "--all"],
            env={**as_web, "PYTHONPATH": str(APP_DIR)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while admin.llen("rq:queue:default") == queued:  # it has begun
            assert requeue.poll() is None, requeue.stderr.read() if requeue.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(0.013 * kill)  # each kill at another point of a requeue's round trips
        requeue.kill()
        assert requeue.wait() == -9, "it finished before it was killed: give it more jobs"
        requeue.stderr.close()
        waiting, listed = set(admin.lrange("rq:queue:default", 0, -1)), set(admin.zrange(failed.key, 0, -1))
        lost, both = len(ids - waiting - listed), len(waiting & listed)
        assert (lost, both) == (0, 0), f"kill {kill}: {lost} job(s) in neither place, {both} in both"
        assert len(waiting) < len(ids)


def test_empty_deletes_waiting_jobs_only_once_confirmed(as_web):
    for _ in range(5):
        run_json(as_web, "enqueue", "eat", '["kiwi"]', "--queue", "low")
    depth = lambda: {q["name"]: q["depth"] for q in run_json(as_web, "queues")}["low"]  # noqa: E731
    unconfirmed = fridge(as_web, "empty", "low")  # stdin is not a terminal
    assert unconfirmed.returncode == 2
    assert "--yes" in unconfirmed.stderr
    assert depth() == 5
    # At a terminal it asks for the queue's name.
    assert typed(as_web, "default\n", "empty", "low").returncode == 2
    assert depth() == 5
    answered = typed(as_web, "low\n", "empty", "low")
    assert answered.returncode == 0
    assert "deleted 5 waiting job(s) of low" in answered.stdout
    assert depth() == 0
    run_json(as_web, "enqueue", "eat", '["kiwi"]', "--queue", "low")
    assert run_json(as_web, "empty", "low", "--yes") == {"queue": "low", "deleted": 1}


def typed(env: dict[str, str], answer: str, *args: str) -> subprocess.CompletedProcess:
    """Run fridge with a terminal as its stdin, typing `answer`."""
    leader, follower = pty.openpty()
    os.write(leader, answer.encode())
    try:
        return fridge(env, *args, stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("enqueue", "teleport"), 2, "unknown task 'teleport' (tasks: eat, sleep"),
        (("enqueue", "eat", "[pera"), 2, "ARGS is not JSON"),
        (("enqueue", "eat", '["a", "b"]'), 2, "task 'eat' takes 1 argument(s): comida"),
        (("enqueue", "eat", '["pera"]', "--queue", "nowhere"), 2, "no queue 'nowhere' (queues: critical"),
        (("enqueue", "eat", '["pera"]', "--delay", "-1"), 2, "--delay must be between 0"),
        (("show", "0123456789abcdef"), 1, "no job 0123456789abcdef"),
        (("delete", "0123456789abcdef"), 1, "no job 0123456789abcdef"),
        (("requeue",), 2, "give job ids or --all"),
        (("failed", "--queue", "nowhere"), 2, "no queue 'nowhere'"),
        (("empty", "nowhere", "--yes"), 2, "no queue 'nowhere'"),
    ],
)
def test_bad_input_gets_a_message_and_an_exit_code(as_web, args, code, message):
    done = fridge(as_web, *args)
    assert (done.returncode, done.stdout) == (code, ""), done.stderr
    assert message in done.stderr, done.stderr


def test_a_finished_job_is_not_deleted_as_a_failed_one(as_web, workers):
    workers.start(1)
    job_id = run_json(as_web, "enqueue", "eat", '["uva"]')["job_id"]
    show_when(as_web, job_id, "finished")
    done = fridge(as_web, "delete", job_id)
    assert done.returncode == 1, done.stderr
    assert "is not failed (status: finished)" in done.stderr, done.stderr
    assert run_json(as_web, "show", job_id)["status"] == "finished"


def test_enqueue_when_redis_is_unreachable_exits_3_and_enqueues_nothing(cluster, as_web, admin):
    env = {**as_web, "FRIDGE_SENTINELS": json.dumps(["127.0.0.1:1"]), "FRIDGE_RETRY_BUDGET": "1.0"}
    done = fridge(env, "enqueue", "eat", '["pera"]')
    assert done.returncode == 3, done.stderr
    assert "unreachable through Sentinel" in done.stderr, done.stderr
    assert admin.llen("rq:queue:default") == 0


def test_rq_info_works_with_the_shipped_settings(as_web, workers):
    """RQ's own `rq info`, through Sentinel with the app's configuration and web user."""
    rq = Path(sys.executable).with_name("rq")

    def rq_info() -> str:
        done = subprocess.run(
            [str(rq), "info", "-c", "fridge.rq_settings"],
            env={**as_web, "PYTHONPATH": str(APP_DIR)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    for _ in range(3):
        run_json(as_web, "enqueue", "eat", '["mango"]', "--queue", "low")
    assert re.search(r"^low\s+\|\S* 3, 0 executing", rq_info(), re.MULTILINE), rq_info()
    workers.start(1)
    deadline = time.monotonic() + 20
    while not re.search(r"^1 workers,", text := rq_info(), re.MULTILINE) or not re.search(
        r"^low\s+\| 0, 0 executing, 3 finished", text, re.MULTILINE
    ):
        assert time.monotonic() < deadline, text
        time.sleep(0.5)


def test_reading_the_queues_cleans_nothing_with_the_web_tier_s_user(as_web, admin):
    """RQ's registry `.count` first cleans expired entries (writes: a worker that died with a job
    leaves one until a worker's maintenance handles it). The web tier's user may not write
    there, so `queues`, the dashboard and /metrics count without cleaning (found when a test's
    killed worker left such an entry: `fridge queues` failed with NOPERM)."""
    admin.zadd("rq:wip:default", {"0badc0de0badc0de0badc0de0badc0de:0123456789abcdef": 1})
    try:
        queues = {q["name"]: q for q in run_json(as_web, "queues")}
        assert queues["default"]["started"] == 1
    finally:
        admin.zrem("rq:wip:default", "0badc0de0badc0de0badc0de0badc0de:0123456789abcdef")


def test_reading_a_worker_s_current_job_writes_nothing_with_the_web_tier_s_user(as_web, admin, workers):
    """RQ's `get_current_job_id` on a worker read from Redis removes the index entries whose
    execution hash is gone (SREM). One is there whenever a job ends between its two reads: a CI
    run's `fridge queues` failed with NOPERM so. The app reads the index without writing."""
    workers.start(1)
    deadline = time.monotonic() + 20
    while not (found := run_json(as_web, "status")["workers"]):
        assert time.monotonic() < deadline, "the worker did not register"
        time.sleep(0.2)
    index = f"rq:worker:{found[0]['name']}:executions"
    gone, running = "0badc0de0badc0de0badc0de0badc0de:0123456789abcdef", "feedface" * 4 + ":fedcba9876543210"
    admin.sadd(index, gone)
    try:
        assert run_json(as_web, "status")["workers"][0]["current_job"] is None
        admin.hset(f"rq:execution:{running}", "job_id", running.split(":")[0])
        admin.sadd(index, running)
        assert run_json(as_web, "status")["workers"][0]["current_job"] == "feedface" * 4
        assert admin.sismember(index, gone), "the web tier's read removed an entry"
    finally:
        admin.srem(index, gone, running)
        admin.delete(f"rq:execution:{running}")


# A read and a write, each retried; a command that is not (requeue).
COMMANDS = (("status",), ("enqueue", "eat", '["pera"]'), ("requeue", "--all"))


@pytest.mark.acl_denials
@pytest.mark.parametrize(
    ("server", "user", "password", "commands"),
    [
        ("Redis", WEB_USER, "not-the-password-1", COMMANDS),
        ("Redis", "nobody", "x" * 16, COMMANDS),
        ("Sentinel", SENTINEL_CLIENT_USER, "not-the-password-1", COMMANDS[:2]),
    ],
)
def test_a_refused_login_is_named_at_once(as_web, server, user, password, commands):
    """A wrong Redis or Sentinel user or password is a configuration error, not a failover: said
    at once, naming the user and the settings to check, instead of "unreachable" after the
    whole retry budget."""
    setting = "REDIS" if server == "Redis" else "SENTINEL"
    env = {**as_web, f"FRIDGE_{setting}_USERNAME": json.dumps(user)}
    env[f"FRIDGE_{setting}_PASSWORD"] = json.dumps(password)
    for args in commands:
        started = time.monotonic()
        done = fridge(env, *args)
        took = time.monotonic() - started
        assert done.returncode == 3, done.stderr
        assert f"{server} refused the login of user {user}" in done.stderr, done.stderr
        assert f"{setting}_PASSWORD" in done.stderr, done.stderr
        assert password not in done.stderr
        assert "Traceback" not in done.stderr
        assert took < 4, f"{args}: {took:.1f}s (RETRY_BUDGET is 5 s)"


def test_an_enqueue_not_yet_replicated_says_so_with_its_job_id(as_web, admin):
    """Not "Redis is unreachable": the job is on the master, not yet on enough replicas; the
    message gives its id, to look it up before enqueueing it again."""
    strict = {"FRIDGE_ACK_REPLICAS": "2", "FRIDGE_ACK_TIMEOUT_MS": "200", "FRIDGE_ACK_POLICY": '"strict"'}
    env = {**as_web, **strict, "FRIDGE_RETRY_BUDGET": "1"}
    done = fridge(env, "enqueue", "eat", '["pera"]')
    assert done.returncode == 3, done.stderr
    (job_id,) = [key.decode().removeprefix("rq:job:") for key in admin.keys("rq:job:*")]
    assert f"job {job_id}" in done.stderr, done.stderr
    assert "1 of 2 replica(s)" in done.stderr, done.stderr
    assert "unreachable" not in done.stderr, done.stderr
    keyed = fridge(env, "enqueue", "eat", '["kiwi"]', "--idempotency-key", "kiwi-1")
    assert "run it again with the same --idempotency-key" in keyed.stderr, keyed.stderr
