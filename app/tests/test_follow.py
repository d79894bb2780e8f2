"""A worker follows a new master at once and puts back the jobs it took whose outcome stayed on
the old one (kitqueue/follow.py). The frozen master that comes back believing it is the master
is molecule/web's drill (test_your_own_app.py); here a planned failover switches the master
under a watch, with the records a lost outcome leaves behind on the new master."""

from __future__ import annotations

import uuid

import pytest
from conftest import wait_for_status
from kitqueue.config import for_worker
from kitqueue.follow import MasterWatch, Taken, orphans
from kitqueue.store import Store
from redis_cluster import PASSWORDS, WORKER_USER


def taken(job_id: str, execution: str = "e1", queue: str = "rq:queue:default") -> Taken:
    return Taken(job_id, execution, queue.rpartition(":")[2], queue, 0.0)


@pytest.mark.parametrize(
    ("status", "fetched", "started", "stranded"),
    [
        ("queued", {"j"}, set(), True),  # moved to the intermediate list, never started
        ("started", set(), {"j:e1"}, True),  # started by this execution, outcome lost
        ("started", {"j"}, {"j:e1"}, True),
        ("finished", set(), {"j:e1"}, False),  # the outcome reached the new master
        ("failed", set(), set(), False),
        ("queued", set(), set(), False),  # still in its queue: it runs anyway
        ("scheduled", set(), set(), False),  # waiting for a retry
        ("started", set(), {"j:e2"}, False),  # another worker runs it now
        ("started", {"j"}, {"j:e1", "j:e2"}, False),
        (None, {"j"}, set(), False),  # no record at all
    ],
)
def test_which_taken_jobs_are_stranded(status, fetched, started, stranded):
    job = taken("j")
    found = orphans([job], [status], {job.queue_key: fetched}, {job.queue_key: started})
    assert found == ([job] if stranded else [])


def test_after_a_failover_the_jobs_whose_outcome_was_lost_are_put_back_and_run(
    app, cluster, client, admin, workers
):
    worker_settings = for_worker(
        {**app.config, "WORKER_REDIS_USERNAME": WORKER_USER, "WORKER_REDIS_PASSWORD": PASSWORDS["worker"]}
    )
    store = Store(worker_settings, connection_retries=5)
    watch = MasterWatch(store, period=0)
    assert watch.follow(store.redis) is None  # the first check only notes the master

    def job(n: int) -> str:
        response = client.post("/jobs", json={"task": "add", "args": [n, 1]})
        assert response.status_code == 202, response.get_json()
        return response.get_json()["job_id"]

    # What the new master holds when a worker's outcome stayed on the old one (set by hand, as
    # RQ 3 writes it: the intermediate list, the started registry's job:execution members).
    fetched, started, elsewhere, finished = job(1), job(2), job(3), job(4)
    queue, intermediate, wip = "rq:queue:default", "rq:queue:default:intermediate", "rq:wip:default"
    for job_id in (fetched, started, elsewhere, finished):
        admin.lrem(queue, 0, job_id)
    admin.rpush(intermediate, fetched)
    admin.hset(f"rq:job:{started}", "status", "started")
    admin.zadd(wip, {f"{started}:mine": 9e9, f"{elsewhere}:theirs": 9e9})
    admin.hset(f"rq:job:{elsewhere}", "status", "started")
    admin.hset(f"rq:job:{finished}", "status", "finished")
    for job_id, execution in ((fetched, "mine"), (started, "mine"), (elsewhere, "mine"), (finished, "mine")):
        watch.took(job_id, execution, type("Q", (), {"name": "default", "key": queue})())
    admin.execute_command("WAIT", 1, 2000)

    _, new = cluster.failover()
    switched = watch.follow(store.redis)
    assert switched is not None
    address, stranded = switched
    assert address[1] == new
    assert watch.epoch == 1
    assert {t.job_id for t in stranded} == {fetched, started}

    master = cluster.admin(new)
    assert set(master.lrange(queue, 0, 1)) == {fetched.encode(), started.encode()}  # at the front
    assert master.lrange(intermediate, 0, -1) == []
    assert master.zrange(wip, 0, -1) == [f"{elsewhere}:theirs".encode()]
    assert master.hget(f"rq:job:{finished}", "status") == b"finished"
    assert watch.taken == type(watch.taken)(maxlen=watch.taken.maxlen)  # forgotten once checked
    assert watch.follow(store.redis) is None  # nothing more to do on the same master

    workers.start(1)
    for job_id, n in ((fetched, 1), (started, 2)):
        assert wait_for_status(client, job_id, {"finished"}, timeout=30)["result"] == n + 1


def test_jobs_taken_long_before_a_check_that_found_the_same_master_are_forgotten(store):
    watch = MasterWatch(store, period=0, keep=0)
    watch.follow(watch.store.redis)
    watch.took(uuid.uuid4().hex, "e", type("Q", (), {"name": "default", "key": "rq:queue:default"})())
    assert len(watch.taken) == 1
    assert watch.follow(watch.store.redis) is None
    assert len(watch.taken) == 0
