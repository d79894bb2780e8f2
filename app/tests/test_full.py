"""When the master's memory fills up (workers stopped for a day, a burst, results kept for
RESULT_TTL): enqueues answer 503 with Retry-After, naming the problem, and write nothing; the
workers keep draining the queues; enqueues resume by themselves once there is room again.

At maxmemory Redis (noeviction, as the kit sets it) refuses every command that may grow
memory, the workers' LMOVE and HSET included: the app stops enqueueing before that
(ENQUEUE_MEMORY_LIMIT, 90 % by default) so that the rest stays theirs."""

from __future__ import annotations

import time
import uuid

import pytest
from fridge.config import BadSetting
from fridge.web import create_app
from redis_cluster import wait_until

MiB = 2**20


def enqueue(client, keyed: bool = False) -> tuple[int, dict, dict]:
    headers = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
    response = client.post("/jobs", json={"task": "add", "args": [1, 2]}, headers=headers)
    return response.status_code, response.get_json(), dict(response.headers)


def fill_with_jobs(client, admin, room: int, keyed: bool = False) -> tuple[list[str], tuple[int, dict, dict]]:
    """Give the master `room` bytes more than it holds, and enqueue until the app refuses:
    the queue itself fills Redis. Returns the accepted job ids and the first refusal."""
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + room)
    accepted: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body, headers = enqueue(client, keyed)
        if status != 202:
            return accepted, (status, body, headers)
        accepted.append(body["job_id"])
    raise AssertionError(f"the app still accepts after {len(accepted)} jobs")


def test_a_nearly_full_redis_refuses_enqueues_and_the_workers_drain_what_is_queued(
    client, workers, admin, room
):
    """At the default limit, with the memory taken by the queue itself (the workers stopped):
    the app counts what the queued jobs will need to finish (their results, kept a day), so
    the workers finish every one of them without Redis ever refusing them."""
    admin.config_resetstat()  # errorstats from 0
    kept = client.post("/jobs", json={"task": "add", "args": [1, 2]}, headers={"Idempotency-Key": "kept"})
    accepted, (status, body, headers) = fill_with_jobs(client, admin, 8 * MiB)
    accepted.append(kept.get_json()["job_id"])
    used, maximum = int(admin.info("memory")["used_memory"]), int(admin.config_get("maxmemory")["maxmemory"])
    print(f"\nrefused after {len(accepted)} jobs, at {used / maximum:.2f} of maxmemory")
    assert len(accepted) > 100
    assert status == 503, body
    assert body["error"] == "the queue is full (Redis is near its memory limit), retry later"
    assert headers["Retry-After"] == "2"
    assert admin.llen("rq:queue:default") == len(accepted)
    assert enqueue(client)[0] == 503
    assert admin.llen("rq:queue:default") == len(accepted)  # a refused request writes nothing
    # A replay of a stored job needs no room: it is answered as always.
    again = client.post("/jobs", json={"task": "add", "args": [1, 2]}, headers={"Idempotency-Key": "kept"})
    assert again.status_code == 202
    assert again.get_json()["replayed"] is True

    # The workers take, run and record every queued job; Redis never refuses them (a worker
    # that met an OOM would stop, and the count would not be reached).
    workers.start(1)
    wait_until(
        lambda: int(admin.get("fridge:stats:finished") or 0) == len(accepted),
        90,
        f"the worker to finish the {len(accepted)} queued jobs",
    )
    assert admin.llen("rq:queue:default") == 0
    for job_id in (accepted[0], accepted[-1]):
        assert admin.hget(f"rq:job:{job_id}", "status") == b"finished"
    assert _oom_errors(admin) == 0

    # Room again (maxmemory raised, results expired): enqueues resume by themselves.
    admin.config_set("maxmemory", 0)
    wait_until(lambda: enqueue(client)[0] == 202, 5, "enqueueing to resume once there is room")


def _oom_errors(admin) -> int:
    """Commands Redis refused for memory since CONFIG RESETSTAT (INFO errorstats)."""
    return int(admin.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "idempotency-key"])
def test_a_full_redis_answers_503_not_500_and_keeps_no_part_of_the_job(settings, admin, room, keyed):
    """With the limit at 1 only Redis's own maxmemory stops enqueues: its OOM refusal is a
    503 naming the problem (it was a 500 "internal error"), and no job is half written. With an
    Idempotency-Key, a job whose own write reached maxmemory still gets its 202 though its key's
    binding beside it is refused: no job is stored that was answered 503."""
    client = create_app({**settings, "ENQUEUE_MEMORY_LIMIT": 1}).test_client()
    accepted, (status, body, headers) = fill_with_jobs(client, admin, MiB, keyed)
    assert len(accepted) > 100
    assert status == 503, body
    assert body["error"] == "the queue is full (Redis is near its memory limit), retry later"
    assert headers["Retry-After"] == "2"
    started = time.monotonic()
    assert enqueue(client)[0] == 503
    assert time.monotonic() - started < 1, "a full Redis is no failover: answered at once"
    assert admin.llen("rq:queue:default") == len(accepted)
    assert sorted(k.decode() for k in admin.keys("rq:job:*")) == sorted(f"rq:job:{j}" for j in accepted)


@pytest.mark.parametrize("limit", [0, 1.5, "0.9", True])
def test_the_memory_limit_must_be_a_share_of_maxmemory(settings, limit):
    with pytest.raises(BadSetting, match=r"ENQUEUE_MEMORY_LIMIT must be a share of maxmemory"):
        create_app({**settings, "ENQUEUE_MEMORY_LIMIT": limit})
