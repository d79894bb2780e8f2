"""Faults while a client enqueues without pause: no 500, no acknowledged job lost, no request
longer than the retry budget plus one socket timeout, and the workers follow the new master
without a restart.

- sentinel-failover: a planned SENTINEL FAILOVER;
- sigkill-master: the master's process dies (a TCP reset reaches its clients) and stays dead;
- freeze-master: the master stops (SIGSTOP) for longer than a failover, then resumes: what it
  accepts after it wakes must not be acknowledged, since it is no longer the master;
- freeze-replica: the only replica stops answering (a lost host: no reset), so writes must be
  acknowledged on the master alone once the Sentinels see the replica down, then replicated
  again when it returns;
- disk-full-master: the master's disk fills up (a file grows until ENOSPC, as logs do): it
  refuses every write (MISCONF) and Sentinel's PING, so the Sentinels fail it over; no worker
  exits and no job runs twice (a horse that cannot record its job's outcome waits for the new
  master instead of dying). Once the disk is freed the old master comes back as a replica."""

from __future__ import annotations

import collections
import itertools
import threading
import time
from functools import partial
from unittest import mock

import pytest
import redis
from conftest import wait_for_status
from kitqueue import queueing
from kitqueue.config import for_worker
from kitqueue.fetch import ReliableQueue
from kitqueue.queueing import NotDurable, RegisteredJob, make_queue
from kitqueue.scheduler import KitScheduler
from kitqueue.store import Store
from kitqueue.worker import Recurring
from redis.client import Pipeline
from redis.commands.core import Script
from redis_cluster import MASTER_NAME, PASSWORDS, WORKER_USER, wait_until


@pytest.mark.parametrize(
    "how", ["sentinel-failover", "sigkill-master", "freeze-master", "freeze-replica", "disk-full-master"]
)
def test_faults_under_continuous_enqueueing(app, cluster, workers, how):
    if how == "disk-full-master" and not cluster.disk_mib:
        pytest.skip("needs root: each data node's directory on a filesystem of its own (tmpfs)")
    # A job's started entry outlives its last heartbeat by the monitoring interval plus the
    # grace: 3 s with FAST's, shorter than this fault's write gap (2.6-3.1 s, and a heartbeat
    # may be due just before it), so the other worker's maintenance pass sometimes took a job
    # whose horse was waiting for the new master for abandoned, and it ran twice (1 run in 4).
    # The defaults give 40 s; 10 keeps the claim "no job runs twice" about the horse.
    workers.start(2, **({"WORKER_HEARTBEAT_GRACE": 10} if how == "disk-full-master" else {}))
    workers.supervise()
    client = app.test_client()
    results: list[tuple[float, int, str | None]] = []
    longest = 0.0
    stop = threading.Event()

    def enqueue_forever() -> None:
        nonlocal longest
        index = 0
        while not stop.is_set():
            index += 1
            time.sleep(0.005)
            asked = time.monotonic()
            response = client.post(f"/comer/food-{index}", headers={"Idempotency-Key": f"{how}-{index}"})
            body = response.get_json() or {}
            results.append((time.monotonic(), response.status_code, body.get("job_id")))
            longest = max(longest, time.monotonic() - asked)

    reads: list[tuple[str, int, str | None]] = []

    def read_forever() -> None:
        """A client following its jobs meanwhile: each read either answers or says when to retry."""
        while not stop.is_set():
            time.sleep(0.002)
            job_id = next((j for _, s, j in reversed(results) if s == 202), None)
            for path in (f"/jobs/{job_id}", f"/dashboard/job/{job_id}") if job_id else ():
                response = client.get(path)
                reads.append((path, response.status_code, response.headers.get("Retry-After")))

    thread = threading.Thread(target=enqueue_forever)
    thread.start()
    reader = threading.Thread(target=read_forever)
    reader.start()
    time.sleep(1.5)
    old = cluster.master_port()
    began = time.monotonic()
    replica = next(p for p in cluster.data_ports if p != old)
    if how == "sentinel-failover":
        _, new = cluster.failover()
    elif how == "sigkill-master":
        cluster.kill(old)  # it stays dead: the new master has no replica for a while
        new = wait_until(lambda: (p := cluster.master_port()) != old and p, 30, "a new master")
    elif how == "freeze-master":
        cluster.freeze(old)
        new = wait_until(lambda: (p := cluster.master_port()) != old and p, 30, "a new master")
        time.sleep(1)
        cluster.thaw(old)  # it wakes up believing it is the master, until Sentinel demotes it
    elif how == "disk-full-master":
        cluster.fill_disk(old)
        new = wait_until(lambda: (p := cluster.master_port()) != old and p, 30, "a new master")
    else:
        cluster.freeze(replica)
        new = old
        wait_until(
            lambda: any(
                "s_down" in r["flags"]
                for r in cluster.sentinel(cluster.sentinel_ports[0]).sentinel_slaves(MASTER_NAME)
            ),
            30,
            "the Sentinels to see the replica down",
        )
    promoted = time.monotonic() - began
    # Keep writing until acknowledgements have resumed for two seconds.
    wait_until(lambda: any(t > began and s == 202 for t, s, _ in results), 30, "writes to resume")
    time.sleep(2)
    if how == "freeze-replica":
        cluster.thaw(replica)  # back in sync within a second or two, under load
        wait_until(lambda: cluster.admin(old).execute_command("WAIT", 1, 100) == 1, 30, "the replica")
        time.sleep(1)
    stop.set()
    thread.join(timeout=30)
    reader.join(timeout=30)
    if how == "sigkill-master":
        cluster.restart(old)  # it comes back and Sentinel turns it into a replica
    if how == "disk-full-master":
        cluster.free_disk(old)  # it writes again, answers PING, and Sentinel makes it a replica

    statuses = [status for _, status, _ in results]
    acked = [job_id for _, status, job_id in results if status == 202]
    acks = sorted(t for t, s, _ in results if s == 202)
    gap = max(b - a for a, b in itertools.pairwise(acks) if b > began)
    unreplicated = int(cluster.admin(cluster.master_port()).get("fridge:stats:unreplicated") or 0)
    print(
        f"\n{how}: {len(results)} requests, {len(acked)} acknowledged ({unreplicated} on the master "
        f"alone), {statuses.count(503)} answered 503; new master after {promoted:.2f}s; "
        f"write gap {gap:.2f}s; longest request {longest:.2f}s"
    )
    assert 500 not in statuses
    assert set(statuses) <= {202, 503}
    read_statuses = collections.Counter(status for _, status, _ in reads)
    print(f"{how}: reads of the acknowledged jobs, by status: {dict(read_statuses)}")
    assert set(read_statuses) <= {200, 503}, [r for r in reads if r[1] not in (200, 503)][:3]
    assert all(retry for _, status, retry in reads if status == 503)
    assert read_statuses[200] > 0
    assert (new != old) is (how != "freeze-replica")
    assert gap < 6
    budget = app.config["RETRY_BUDGET"] + 1.0
    assert longest <= budget, f"a request took {longest:.2f}s (budget {budget}s)"
    if how == "freeze-replica":
        assert unreplicated > 0  # it kept accepting while the replica was away

    # Every acknowledged job exists on the new master and gets eaten, by the same workers.
    admin = cluster.admin(cluster.master_port())

    def unfinished() -> list[str]:
        pipe = admin.pipeline(transaction=False)
        for job_id in acked:
            pipe.hget(f"rq:job:{job_id}", "status")
        return [j for j, status in zip(acked, pipe.execute(), strict=True) if status != b"finished"]

    def retried() -> list[str]:
        """Jobs run more than once: a run failed (its horse died) and the job was retried."""
        pipe = admin.pipeline(transaction=False)
        for job_id in acked:
            pipe.hget(f"rq:job:{job_id}", "retries_left")
        left = zip(acked, pipe.execute(), strict=True)
        return [j for j, n in left if n is not None and int(n) != app.config["JOB_RETRIES"]]

    deadline = time.monotonic() + 60
    while (left := unfinished()) and time.monotonic() < deadline:
        time.sleep(0.2)
    ran = time.monotonic() - began
    again = retried()
    print(
        f"{how}: worker restarts {workers.restarts}; acknowledged jobs not finished: {len(left)}; "
        f"all ran {ran:.1f}s after the fault began; retried after a failed run: {len(again)}"
    )
    assert left == [], [client.get(f"/jobs/{j}").get_json() for j in left[:5]]
    assert workers.restarts == 0, "a worker exited instead of following the new master"
    if how == "disk-full-master":
        assert again == [], [client.get(f"/jobs/{j}").get_json() for j in again[:3]]
        cluster.wait_healthy()  # the old master, its disk freed, follows the new one
        assert cluster.admin(old).info("replication")["role"] == "slave"

    # Delayed jobs still run: the worker holding RQ's scheduler lock kept it through the fault.
    asked = time.monotonic()
    delayed = client.post("/jobs", json={"task": "add", "args": [1, 2], "delay": 1}).get_json()["job_id"]
    assert wait_for_status(client, delayed, {"finished"}, timeout=90)["result"] == 3
    late = time.monotonic() - asked
    print(f"{how}: a job delayed by 1 s after the failover ran {late:.1f}s after it was asked")


def test_with_every_data_node_s_disk_full_an_enqueue_is_refused_with_503_then_accepted_once_freed(
    app, cluster, caplog
):
    """No master can write: nothing to fail over to. The enqueue is retried for the budget,
    then refused with 503 and Retry-After, the log naming the disk; the same request is
    accepted once there is room, as one job."""
    if not cluster.disk_mib:
        pytest.skip("needs root: each data node's directory on a filesystem of its own (tmpfs)")
    client = app.test_client()
    key = {"Idempotency-Key": "both-disks-full"}
    master = cluster.master_port()
    for port in sorted(cluster.data_ports, key=lambda p: p == master):  # the replica's first
        cluster.fill_disk(port)
    try:
        asked = time.monotonic()
        refused = client.post("/comer/platano", headers=key)
        took = time.monotonic() - asked
    finally:
        for port in cluster.data_ports:
            cluster.free_disk(port)
    assert refused.status_code == 503, refused.get_json()
    assert int(refused.headers["Retry-After"]) > 0
    assert took <= app.config["RETRY_BUDGET"] + 1.5, took
    assert any("cannot write to its disk" in r.getMessage() for r in caplog.records), caplog.text
    accepted = wait_until(
        lambda: (r := client.post("/comer/platano", headers=key)).status_code == 202 and r, 30, "room"
    )
    again = client.post("/comer/platano", headers=key)
    assert again.get_json()["job_id"] == accepted.get_json()["job_id"]


def test_a_recurring_period_a_fault_kept_from_its_replica_is_enqueued_once_the_replica_is_back(
    app, cluster, admin
):
    """The only replica lost (frozen: no reset) under ACK_POLICY strict: the period's job cannot
    be acknowledged. The worker's next tick, once the replica is back, tries that period again
    under the same job id; before, the period stayed claimed and its job was never confirmed."""
    settings = for_worker(
        {
            **app.config,
            "ACK_POLICY": "strict",
            "ACK_TIMEOUT_MS": 200,
            "WORKER_REDIS_USERNAME": WORKER_USER,
            "WORKER_REDIS_PASSWORD": PASSWORDS["worker"],
        }
    )
    schedule = {"name": "nightly", "task": "add", "args": [1, 1], "every": 3600}
    recurring = Recurring(Store(settings, connection_retries=5), [schedule], owner="test")
    now = time.time()
    job_key = f"rq:job:recurring-nightly-{int(now // 3600)}"
    replica = next(p for p in cluster.data_ports if p != cluster.master_port())
    cluster.freeze(replica)
    try:
        with pytest.raises(NotDurable):
            recurring.tick(schedule, now)
    finally:
        cluster.thaw(replica)
    wait_until(lambda: admin.execute_command("WAIT", 1, 100) == 1, 30, "the replica back in sync")
    assert recurring.tick(schedule, now), "the period stayed claimed after its enqueue failed"
    assert cluster.admin(replica).exists(job_key)
    assert not recurring.tick(schedule, now)  # claimed now: once per period
    queued = admin.lrange("rq:queue:default", 0, -1)
    assert queued.count(job_key.removeprefix("rq:job:").encode()) == 1


def _workers_store(app, connection_retries: int | None = None) -> Store:
    """A worker's Store (its login, its retries unless given), whose connections give up
    waiting for a reply after 0.3 s: a stall of the master longer than that and shorter than
    down-after makes them send their command again."""
    settings = for_worker(
        {
            **app.config,
            "REDIS_SOCKET_TIMEOUT": 0.3,
            "ACK_TIMEOUT_MS": 200,
            "WORKER_REDIS_USERNAME": WORKER_USER,
            "WORKER_REDIS_PASSWORD": PASSWORDS["worker"],
        }
    )
    retries = int(settings["WORKER_CONNECTION_RETRIES"]) if connection_retries is None else connection_retries
    return Store(settings, connection_retries=retries)


def test_a_delayed_job_is_queued_once_when_the_master_stalls_while_the_scheduler_moves_it(
    app, cluster, client, admin
):
    """The master stalls (SIGSTOP, shorter than Sentinel's down-after: a slow disk, a paused VM)
    just as the scheduler sends the move of a due job to its queue. The connection gives up
    waiting for the reply after its socket timeout, while the stalled server still holds the
    transaction and runs it on waking. RQ's scheduler sent it again (its id queued twice: two
    workers ran the job); the kit's is never sent twice, and the next pass finds it moved.
    The moment of the stall is chosen by a hook on the transaction's send, so the test meets
    the window every time; the stall itself is the real server's."""
    store = _workers_store(app)
    job_id = client.post("/jobs", json={"task": "add", "args": [1, 2], "delay": 1}).get_json()["job_id"]
    due = admin.zscore("rq:scheduled:default", job_id)
    wait_until(lambda: time.time() >= due + 0.1, 10, "the job to be due")
    scheduler = KitScheduler(["default"], connection=store.redis, name="test.scheduler")
    assert scheduler.acquire_locks() == {"default"}
    master, send = cluster.master_port(), Pipeline.execute

    def stalled_send(pipeline: Pipeline, raise_on_error: bool = True):
        if any(args[0] == "ZREM" for args, _ in pipeline.command_stack):  # the move
            cluster.freeze(master)
            threading.Timer(0.7, cluster.thaw, [master]).start()
        return send(pipeline, raise_on_error)

    try:
        with mock.patch.object(Pipeline, "execute", stalled_send):
            scheduler.enqueue_scheduled_jobs()
        wait_until(lambda: admin.zscore("rq:scheduled:default", job_id) is None, 10, "the job moved")
        scheduler.enqueue_scheduled_jobs()  # the next pass
    finally:
        scheduler.release_locks()
    assert cluster.master_port() == master  # a stall, not a failover
    assert admin.lrange("rq:queue:default", 0, -1).count(job_id.encode()) == 1


def _a_worker_s_fetch(app, client, connection_retries: int | None = None):
    """A worker's fetch on `default` (its script loaded on the master), and two jobs queued
    there: (queue, fetch, first, second)."""
    store = _workers_store(app, connection_retries)
    queue_class = ReliableQueue.configured(store.key("wake"), 30.0, store.key("fetch", "test.fetch"))
    queue = make_queue(store, "default", queue_class)
    fetch = partial(queue_class.dequeue_any, [queue], None, connection=store.redis, job_class=RegisteredJob)
    assert fetch() is None  # the queue is empty; the script is loaded on the master now
    first, second = (client.get(f"/comer/{food}").get_json()["job_id"] for food in ("uno", "dos"))
    return queue, fetch, first, second


def test_a_worker_takes_one_job_when_the_master_stalls_while_its_fetch_is_on_the_way(
    app, cluster, client, admin
):
    """The master stalls (SIGSTOP, shorter than down-after) just as a worker sends its fetch
    (the move of the next job into the queue's intermediate list). The connection sends it
    again when no reply comes, and the stalled server runs both on waking: the kit's fetch moves
    one job, the first, and answers it to the second sending. Before, the second moved the next
    job too: the worker ran that one, and the first waited in the intermediate list, its reply
    lost, until a maintenance pass (30 s and more) retried it as a failed attempt. The moment is
    chosen by a hook on the fetch's sending; the stall is the real server's."""
    queue, fetch, first, second = _a_worker_s_fetch(app, client)
    master, send = cluster.master_port(), Script.__call__

    def stalled_send(script: Script, *args, **kwargs):
        cluster.freeze(master)
        threading.Timer(0.7, cluster.thaw, [master]).start()
        return send(script, *args, **kwargs)

    def scripts_run() -> int:
        return admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    before = scripts_run()
    with mock.patch.object(Script, "__call__", stalled_send):
        job, _ = fetch()
    assert cluster.master_port() == master  # a stall, not a failover
    assert scripts_run() - before >= 2, "the fetch was not sent again: nothing tested"
    intermediate = queue.intermediate_queue.key
    assert (job.id, admin.lrange(intermediate, 0, -1)) == (first, [first.encode()]), "one job taken"
    assert admin.lrange(queue.key, 0, -1) == [second.encode()]


def test_a_fetch_cut_off_past_its_retries_is_sent_again_as_the_same_fetch(app, cluster, client, admin):
    """The fetch moved a job into the intermediate list, then the master stopped answering
    (SIGSTOP, shorter than down-after) before the job was read, and the connection's retries
    ran out: the error reaches the worker's loop, which fetches again. That fetch was a new one:
    it moved the next job, and the first waited in the intermediate list until a maintenance
    pass (30 s and more) retried it as a failed attempt. It is now the same fetch sent again,
    which answers the job the first moved."""
    queue, fetch, first, second = _a_worker_s_fetch(app, client, connection_retries=0)  # none left
    master, send = cluster.master_port(), Script.__call__

    def stalled_after(script: Script, *args, **kwargs):
        moved = send(script, *args, **kwargs)
        cluster.freeze(master)  # the move done, the job's read to come
        threading.Timer(0.7, cluster.thaw, [master]).start()
        return moved

    with mock.patch.object(Script, "__call__", stalled_after), pytest.raises(redis.RedisError):
        fetch()
    wait_until(lambda: admin.ping(), 10, "the master to answer again")
    assert admin.lrange(queue.intermediate_queue.key, 0, -1) == [first.encode()], "the fetch moved one job"
    job, _ = fetch()
    assert cluster.master_port() == master  # a stall, not a failover
    assert job.id == first
    assert admin.lrange(queue.intermediate_queue.key, 0, -1) == [first.encode()], "one job taken"
    assert admin.lrange(queue.key, 0, -1) == [second.encode()]


def test_an_idempotency_key_claimed_on_the_old_master_is_bound_where_the_job_is(app, cluster, monkeypatch):
    """A partition's race: the key is claimed through the pool on the old master (a web host
    still reaches it, and it no longer replicates), then another request's thread meets the new
    master and moves the pool, and the job is written and acknowledged there. The key lived only
    on the old master, which the new one's data then replaced: a retry of the request with the
    same key wrote a second job. The key is now claimed again beside the job, on its
    connection, and replicated with it."""
    client = app.test_client()
    old = cluster.master_port()
    real_claim = queueing._claim_idempotency_key
    raced = []

    def claim_in_a_partition(store_, key, fingerprint, new_id):
        if raced:
            return real_claim(store_, key, fingerprint, new_id)
        raced.append(True)
        # The old master's side of a partition: what it takes from now on reaches no replica.
        cluster.admin(old).execute_command("ACL", "SETUSER", "kit-replica", "off")
        cluster.admin(old).execute_command("CLIENT", "KILL", "USER", "kit-replica")
        claimed = real_claim(store_, key, fingerprint, new_id)  # through the pool: the old master
        _, new = cluster.failover()
        wait_until(
            lambda: cluster.admin(old).info("replication").get("master_link_status") == "up",
            30,
            "the old master to follow the new one (its copy of the key replaced)",
        )
        wait_until(
            lambda: cluster.admin(new).execute_command("WAIT", 1, 200) == 1,
            30,
            "the old master to acknowledge the new one's writes (a full sync may come twice)",
        )
        premise = queueing._idempotency_redis_key(store_, key)
        assert not cluster.admin(new).exists(premise), "the claim stayed on the old master's side"
        # Another thread's lookup meets the new master: redis-py drops the pool's idle connections.
        assert store_.redis.connection_pool.get_master_address()[1] == new
        return claimed

    monkeypatch.setattr(queueing, "_claim_idempotency_key", claim_in_a_partition)
    try:
        first = client.post("/comer/higo", headers={"Idempotency-Key": "partition-1"})
    finally:
        cluster.admin(old).execute_command("ACL", "SETUSER", "kit-replica", "on")
    assert raced, "the request claimed its key"
    # The job is on the new master; its one replica (the old master, just resynced) may not
    # acknowledge it within ACK_TIMEOUT_MS on a loaded machine: then the answer is 503 naming
    # the job, and a client retries with the same key, as this one does.
    assert first.status_code in (202, 503), first.get_json()
    retries = []

    def retried() -> bool:
        retries.append(client.post("/comer/higo", headers={"Idempotency-Key": "partition-1"}))
        return retries[-1].status_code == 202

    wait_until(retried, 30, "the retry with the same key to be acknowledged", interval=0.5)
    ids = {r.get_json().get("job_id") for r in (first, *retries)} - {None}
    assert len(ids) == 1, f"a retry wrote a second job: {ids}"
    assert retries[-1].get_json().get("replayed") is True


def test_an_outage_past_fail_fast_after_answers_at_once_instead_of_filling_the_web_threads(settings, cluster):
    """Both data nodes frozen (their hosts lost: no TCP reset), with clients enqueueing
    throughout. Until FAIL_FAST_AFTER each request waits its budget out, as through a
    failover. Past it, each one doing so only held a web thread: at 1.6 requests/s per 8
    threads the rest queued in mod_wsgi until it dropped them with a 504 and no Retry-After.
    Now one request at a time tries Redis once and the others get 503 with Retry-After at once;
    the first success after the thaw ends it. (The Sentinels are told to wait a minute before
    calling a node down meanwhile: a failover they began and abandoned would hold off the next
    one for 10 s, in the tests after this one.)"""
    from fridge.web import create_app

    budget, fail_fast = 1.0, 2.0
    app = create_app(
        {
            **settings,
            "RETRY_BUDGET": budget,
            "FAIL_FAST_AFTER": fail_fast,
            "REDIS_SOCKET_TIMEOUT": 0.3,
            "ACK_TIMEOUT_MS": 200,
        }
    )
    assert app.test_client().get("/comer/higo").status_code == 202

    def timed_get() -> tuple[int, str | None, float]:
        started = time.monotonic()
        response = app.test_client().get("/comer/higo")
        return response.status_code, response.headers.get("Retry-After"), time.monotonic() - started

    def down_after(ms: int) -> None:
        for port in cluster.sentinel_ports:
            cluster.sentinel(port).execute_command(
                "SENTINEL", "SET", MASTER_NAME, "down-after-milliseconds", ms
            )

    down_after(60_000)
    try:
        for port in cluster.data_ports:
            cluster.freeze(port)
        frozen = time.monotonic()
        waited = []
        while (began := time.monotonic() - frozen) < fail_fast + budget:  # clients keep enqueueing
            waited.append((began, *timed_get()))
            assert waited[-1][1:3] == (503, "2"), waited
            assert len(waited) < 30, waited
        # Those begun before FAIL_FAST_AFTER waited as through a failover.
        early = [took for began, _, _, took in waited if began < fail_fast]
        assert min(early) >= budget / 2, f"a failover's wait: {waited}"
        answers: list[tuple[int, str | None, float]] = []
        threads = [threading.Thread(target=lambda: answers.append(timed_get())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [(s, r) for s, r, _ in answers] == [(503, "2")] * 8, answers
        quick = [took for _, _, took in answers if took < budget / 2]
        assert len(quick) >= 7, f"each waited (s): {sorted(round(t, 2) for _, _, t in answers)}"
    finally:
        for port in cluster.data_ports:
            cluster.thaw(port)
        down_after(cluster.down_after_ms)
    wait_until(
        lambda: app.test_client().get("/comer/higo").status_code == 202, 30, "an enqueue after the thaw"
    )
    cluster.wait_healthy()
