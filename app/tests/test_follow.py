"""A worker follows a new master at once and puts back the jobs it took whose outcome stayed on
the old one (kitqueue/follow.py). The frozen master that comes back believing it is the master
is molecule/web's drill (test_your_own_app.py, with the deployed workers); here a planned
failover switches the master under a watch, with the records a lost outcome leaves behind on
the new master."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
from conftest import wait_for_status
from kitqueue.config import for_worker
from kitqueue.follow import MasterWatch, Taken, orphans
from kitqueue.store import Store
from kitqueue.store import app_store as store_of
from redis_cluster import PASSWORDS, WORKER_USER

QUEUE = SimpleNamespace(name="default", key="rq:queue:default")


def taken(job_id: str, execution: str = "e1") -> Taken:
    return Taken(job_id, execution, QUEUE.name, QUEUE.key, "w1", 0.0)


@pytest.mark.parametrize(
    ("status", "fetched", "started", "kind"),
    [
        ("started", set(), {"j:e1"}, "mine"),  # started by this execution, outcome lost
        ("started", {"j"}, {"j:e1"}, "mine"),
        ("queued", {"j"}, set(), "fetched"),  # moved to the intermediate list, never started...
        # ...or another worker's fetch of this moment, before it registers its execution: only
        # a second look tells them apart
        ("queued", {"j"}, {"k:e3"}, "fetched"),
        ("finished", set(), {"j:e1"}, None),  # the outcome reached the new master
        ("failed", set(), set(), None),
        ("queued", set(), set(), None),  # still in its queue: it runs anyway
        ("scheduled", set(), set(), None),  # waiting for a retry
        ("started", set(), {"j:e2"}, None),  # another worker runs it now
        ("started", {"j"}, {"j:e1", "j:e2"}, None),
        (None, {"j"}, set(), None),  # no record at all
    ],
)
def test_which_taken_jobs_are_stranded(status, fetched, started, kind):
    job = taken("j")
    mine, only_fetched = orphans([job], [status], {job.queue_key: fetched}, {job.queue_key: started})
    assert (mine, only_fetched) == ([job] if kind == "mine" else [], [job] if kind == "fetched" else [])


def test_after_a_failover_the_jobs_whose_outcome_was_lost_are_put_back_and_run(
    app, cluster, client, admin, workers
):
    worker_settings = for_worker(
        {**app.config, "WORKER_REDIS_USERNAME": WORKER_USER, "WORKER_REDIS_PASSWORD": PASSWORDS["worker"]}
    )
    store = Store(worker_settings, connection_retries=5)
    watch = MasterWatch(store, period=0, settle=0.5)
    assert watch.follow(store.redis) is None  # the first check only notes the master

    def job(n: int) -> str:
        response = client.post("/jobs", json={"task": "add", "args": [n, 1]})
        assert response.status_code == 202, response.get_json()
        return response.get_json()["job_id"]

    # What the new master holds when a worker's outcome stayed on the old one, set by hand as
    # RQ 3 writes it: the intermediate list, the started registry's job:execution members, the
    # execution's hash and its entries in the job's and the worker's executions.
    fetched, claimed, started, elsewhere, finished = (job(n) for n in range(1, 6))
    queue, intermediate, wip = QUEUE.key, "rq:queue:default:intermediate", "rq:wip:default"
    mine = SimpleNamespace(id="mine", worker_name="w1")
    for job_id in (fetched, claimed, started, elsewhere, finished):
        admin.lrem(queue, 0, job_id)
        watch.took(job_id, mine, QUEUE)
    admin.rpush(intermediate, fetched, claimed)
    admin.hset(f"rq:job:{started}", "status", "started")
    admin.zadd(wip, {f"{started}:mine": 9e9, f"{elsewhere}:theirs": 9e9})
    admin.hset(f"rq:execution:{started}:mine", "worker_name", "w1")
    admin.zadd(f"rq:executions:{started}", {"mine": 9e9})
    admin.sadd("rq:worker:w1:executions", f"{started}:mine")
    admin.hset(f"rq:job:{elsewhere}", "status", "started")
    admin.hset(f"rq:job:{finished}", "status", "finished")
    admin.execute_command("WAIT", 1, 2000)
    assert watch.follow(store.redis) is None  # the same master: the taken jobs are kept
    assert len(watch.taken) == 5

    _, new = cluster.failover()
    first = watch.follow(store.redis)
    assert first is not None
    assert first.switched
    assert first.master[1] == new
    assert watch.epoch == 1
    assert [t.job_id for t in first.put_back] == [started]  # its own execution: at once
    master = cluster.admin(new)
    assert master.lrange(queue, 0, 0) == [started.encode()]
    assert master.zrange(wip, 0, -1) == [f"{elsewhere}:theirs".encode()]
    assert not master.exists(f"rq:execution:{started}:mine", f"rq:executions:{started}")
    assert not master.sismember("rq:worker:w1:executions", f"{started}:mine")
    # Only fetched: maybe another worker's fetch of this very moment. Here one worker does
    # register its execution of `claimed` before the second look.
    assert set(watch.doubtful) == {fetched, claimed}
    master.zadd(wip, {f"{claimed}:another": 9e9})
    assert watch.follow(store.redis) is None  # too early for a second look
    time.sleep(0.5)
    second = watch.follow(store.redis)
    assert second is not None
    assert not second.switched
    assert [t.job_id for t in second.put_back] == [fetched]
    assert master.lrange(queue, 0, 1) == [fetched.encode(), started.encode()]
    assert master.lrange(intermediate, 0, -1) == [claimed.encode()]
    assert master.hget(f"rq:job:{finished}", "status") == b"finished"
    assert not watch.doubtful
    assert not watch.taken
    assert watch.follow(store.redis) is None  # nothing more to do on the same master

    master.zrem(wip, f"{elsewhere}:theirs", f"{claimed}:another")  # let a real worker run all
    workers.start(1)
    for job_id, n in ((fetched, 1), (started, 3)):
        assert wait_for_status(client, job_id, {"finished"}, timeout=30)["result"] == n + 1


def test_jobs_taken_long_before_a_check_that_found_the_same_master_are_forgotten(store):
    watch = MasterWatch(store, period=0, keep=0)
    watch.follow(watch.store.redis)
    watch.took(uuid.uuid4().hex, SimpleNamespace(id="e", worker_name="w"), QUEUE)
    assert len(watch.taken) == 1
    assert watch.follow(watch.store.redis) is None
    assert len(watch.taken) == 0


def test_a_master_check_the_sentinels_refuse_keeps_the_worker_going_and_says_why(settings, caplog):
    """A worker whose Sentinel login is refused (a password changed on the Sentinels only) keeps
    the master it has and its jobs, and says why at each check, instead of ending."""
    from fridge.web import create_app

    refused = create_app({**settings, "SENTINEL_PASSWORD": "not-the-password-1"})
    watch = MasterWatch(store_of(refused), period=0, keep=60)
    watch.address = ("127.0.0.1", 1)
    watch.took(uuid.uuid4().hex, SimpleNamespace(id="e", worker_name="w"), QUEUE)
    assert watch.follow(watch.store.redis) is None
    assert (watch.address, len(watch.taken)) == (("127.0.0.1", 1), 1)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("Sentinel refused the login of user" in m and "SENTINEL_PASSWORD" in m for m in warned), warned
