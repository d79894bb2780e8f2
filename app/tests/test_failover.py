"""A failover while a client enqueues without pause: no 500, no acknowledged job lost, the
workers follow the new master without a restart."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from conftest import wait_for_status
from redis_cluster import wait_until


@pytest.mark.parametrize("how", ["sentinel-failover", "sigkill-master"])
def test_failover_under_continuous_enqueueing(app, cluster, workers, how):
    workers.start(2)
    workers.supervise()
    client = app.test_client()
    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def enqueue_forever() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            time.sleep(0.005)
            response = client.post(f"/comer/food-{index}", headers={"Idempotency-Key": f"{how}-{index}"})
            body = response.get_json() or {}
            results.append((time.monotonic(), response.status_code, body.get("job_id")))

    thread = threading.Thread(target=enqueue_forever)
    thread.start()
    time.sleep(1.5)
    old = cluster.master_port()
    began = time.monotonic()
    if how == "sentinel-failover":
        _, new = cluster.failover()
    else:
        cluster.kill(old)  # it stays dead: the new master has no replica for a while
        new = wait_until(lambda: (p := cluster.master_port()) != old and p, 30, "a new master")
    promoted = time.monotonic() - began
    # Keep writing until acknowledgements have resumed for two seconds.
    wait_until(lambda: any(t > began and s == 202 for t, s, _ in results), 30, "writes to resume")
    time.sleep(2)
    stop.set()
    thread.join(timeout=30)
    if how == "sigkill-master":
        cluster.restart(old)  # it comes back and Sentinel turns it into a replica

    statuses = [status for _, status, _ in results]
    acked = [job_id for _, status, job_id in results if status == 202]
    acks = sorted(t for t, s, _ in results if s == 202)
    gap = max(b - a for a, b in itertools.pairwise(acks) if b > began)
    print(
        f"\n{how}: {len(results)} requests, {len(acked)} acknowledged, {statuses.count(503)} answered 503; "
        f"new master after {promoted:.2f}s; write gap {gap:.2f}s"
    )
    assert 500 not in statuses
    assert set(statuses) <= {202, 503}
    assert new != old
    assert gap < 6

    # Every acknowledged job exists on the new master and gets eaten (a worker that lost its
    # master mid-job exits and is restarted, as systemd does; its job is retried).
    admin = cluster.admin(cluster.master_port())

    def unfinished() -> list[str]:
        pipe = admin.pipeline(transaction=False)
        for job_id in acked:
            pipe.hget(f"rq:job:{job_id}", "status")
        return [j for j, status in zip(acked, pipe.execute(), strict=True) if status != b"finished"]

    deadline = time.monotonic() + 60
    while (left := unfinished()) and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"{how}: worker restarts {workers.restarts}; acknowledged jobs not finished: {len(left)}")
    assert left == [], [client.get(f"/jobs/{j}").get_json() for j in left[:5]]

    # Delayed jobs still run. When the failover killed the worker that held RQ's scheduler
    # lock (61 s TTL), a restarted worker takes the lock over once it expires.
    asked = time.monotonic()
    delayed = client.post("/jobs", json={"task": "add", "args": [1, 2], "delay": 1}).get_json()["job_id"]
    assert wait_for_status(client, delayed, {"finished"}, timeout=90)["result"] == 3
    late = time.monotonic() - asked
    print(f"{how}: a job delayed by 1 s after the failover ran {late:.1f}s after it was asked")
