"""The HTTP API through Flask's test client, against the real Redis cluster."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import wait_for_status
from kitqueue import queueing
from kitqueue.queueing import BOUND, COUNTED_SHA, SCRIPTS, UNIQUE_SHA
from kitqueue.store import app_store
from redis_cluster import SENTINEL_CLIENT_USER, wait_until


def queue_depth(store, name: str = "default") -> int:
    return store.redis.llen(f"rq:queue:{name}")


def test_comer_platano_answers_202_and_a_worker_eats_it(client, workers):
    workers.start(1)
    response = client.get("/comer/platano")
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["task"] == "eat"
    assert body["queue"] == "default"
    assert response.headers["Location"] == body["status_url"] == f"/jobs/{body['job_id']}"
    done = wait_for_status(client, body["job_id"], {"finished", "failed"})
    assert done["status"] == "finished", done
    assert done["result"] == "ate platano"
    assert done["args"] == {"comida": "platano"}
    assert all(done[k] for k in ("enqueued_at", "started_at", "ended_at"))


def test_post_comer_works_too_and_the_job_is_json_readable_with_redis_cli(client, store):
    response = client.post("/comer/manzana")
    assert response.status_code == 202
    job_id = response.get_json()["job_id"]
    raw = store.redis.hget(f"rq:job:{job_id}", "data")
    # The JSON serializer: any client (redis-cli, another language) can read the job.
    data = json.loads(__import__("zlib").decompress(raw))
    assert data[0] == "fridge.tasks.eat"
    assert data[3] == {"comida": "manzana"}


def test_post_jobs_runs_a_registered_task_with_list_or_object_args(client, workers):
    workers.start(1)
    first = client.post("/jobs", json={"task": "add", "args": [2, 3]})
    second = client.post("/jobs", json={"task": "add", "args": {"a": 1.5, "b": 1}, "queue": "low"})
    assert first.status_code == second.status_code == 202
    assert second.get_json()["queue"] == "low"
    assert wait_for_status(client, first.get_json()["job_id"], {"finished"})["result"] == 5
    assert wait_for_status(client, second.get_json()["job_id"], {"finished"})["result"] == 2.5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"task": "os.system", "args": ["id"]}, "unknown task 'os.system'"),
        ({"task": "eat", "args": ["x"], "queue": "urgent"}, "queue 'urgent' is not open to requests"),
        ({"task": "eat", "args": []}, "takes 1 argument"),
        ({"task": "eat", "args": {"food": "x"}}, "has no argument(s) food"),
        ({"task": "add", "args": ["1", 2]}, "'a' must be a number"),
        ({"task": "eat", "args": ["x"], "priority": 1}, "unknown field(s): priority"),
        ([1, 2], "must be a JSON object"),
        ({"task": "sleep", "args": [5], "delay": -1}, "'delay' must be"),
    ],
)
def test_bad_job_requests_are_400_and_enqueue_nothing(client, admin, body, message):
    response = client.post("/jobs", json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert admin.keys("rq:*") == []


def test_invalid_json_and_oversized_bodies_are_refused(client, admin):
    response = client.post("/jobs", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON" in response.get_json()["error"]
    big = json.dumps({"task": "eat", "args": ["x" * (65 * 1024)]})
    response = client.post("/jobs", data=big, content_type="application/json")
    assert response.status_code == 413
    assert "larger than 65536 bytes" in response.get_json()["error"]
    assert admin.keys("rq:*") == []


@pytest.mark.parametrize(
    ("comida", "message"),
    [(" ", "must not be empty"), ("x" * 65, "longer than 64"), ("pl\x01tano", "non-printable")],
    ids=["blank", "too-long", "control-character"],
)
def test_bad_comida_is_400(client, store, comida, message):
    response = client.get("/comer/" + comida)
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert queue_depth(store) == 0


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "idempotency-key"])
def test_an_enqueue_on_a_master_without_the_job_script_loads_it_and_counts_the_job_once(client, admin, keyed):
    """The job's script goes by SHA-1 in the enqueue's single round trip (with an
    Idempotency-Key, the one that claims the key with it). A master that does not hold it
    (restarted, or promoted by a failover) answers NOSCRIPT: the enqueue loads it and sends
    again, and the job is written, queued and counted once."""
    assert client.post("/comer/higo").status_code == 202
    admin.script_flush()
    assert not any(admin.script_exists(*SCRIPTS))
    counted = int(admin.get("fridge:stats:enqueued"))
    response = client.post("/comer/kiwi", headers={"Idempotency-Key": "k-1"} if keyed else {})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    assert admin.hget(f"rq:job:{job_id}", "status") == b"queued"
    assert admin.lrange("rq:queue:default", 0, -1).count(job_id.encode()) == 1
    assert int(admin.get("fridge:stats:enqueued")) == counted + 1
    script = COUNTED_SHA[UNIQUE_SHA]
    assert admin.script_exists(BOUND[script] if keyed else script) == [True]
    assert client.get(f"/jobs/{job_id}").get_json()["args"] == {"comida": "kiwi"}


def test_a_job_its_idempotency_key_refuses_is_neither_written_nor_counted(client, admin, monkeypatch):
    """A partition's race: the key was free where the request claimed it (the old master), and
    names another job where the job goes. The job's script refuses it there, and the retry
    answers the other job as a replay: nothing written, and the job counted as a replay only
    (before, it was counted as enqueued too, so `fridge_jobs_enqueued_total` ran ahead of the
    jobs there were)."""
    first = client.post("/comer/higo", headers={"Idempotency-Key": "race-1"})
    assert first.status_code == 202, first.get_json()
    stats = {name: int(admin.get(f"fridge:stats:{name}") or 0) for name in ("enqueued", "replayed")}
    jobs = len(admin.keys("rq:job:*"))
    real_claim = queueing._claim_idempotency_key
    raced = []

    def claimed_where_the_key_was_free(store_, key, fingerprint, new_id):
        if raced:
            return real_claim(store_, key, fingerprint, new_id)
        raced.append(new_id)
        return new_id, False, False

    monkeypatch.setattr(queueing, "_claim_idempotency_key", claimed_where_the_key_was_free)
    again = client.post("/comer/higo", headers={"Idempotency-Key": "race-1"})
    assert raced, "the request claimed its key"
    assert again.status_code == 202, again.get_json()
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert again.get_json()["replayed"] is True
    assert not admin.exists(f"rq:job:{raced[0]}"), "the refused job was written"
    assert len(admin.keys("rq:job:*")) == jobs
    assert int(admin.get("fridge:stats:enqueued") or 0) == stats["enqueued"]
    assert int(admin.get("fridge:stats:replayed") or 0) == stats["replayed"] + 1


def test_a_new_master_without_the_script_nor_a_replica_costs_one_wait_timeout_not_two(
    cluster, settings, admin
):
    """What a failover after the loss of the master's host leaves: a master that holds no
    script and has no replica. The first enqueue's WAIT, sent beside the script that the master
    refuses, times out; the second send, after the script is loaded, must not wait again."""
    from fridge.web import create_app

    client = create_app({**settings, "ACK_TIMEOUT_MS": 200}).test_client()
    assert client.get("/comer/nispero").status_code == 202  # a replica in sync when last seen
    master = cluster.master_port()
    replica = next(p for p in cluster.data_ports if p != master)
    cluster.kill(replica)
    try:
        wait_until(lambda: admin.info("replication")["connected_slaves"] == 0, 10, "the replica to go")
        admin.script_flush()
        admin.config_resetstat()
        response = client.get("/comer/lichi")
        assert response.status_code == 202, response.get_json()
        calls = {name: stats["calls"] for name, stats in admin.info("commandstats").items()}
        assert calls.get("cmdstat_script|load") == 1
        assert calls.get("cmdstat_wait") == 1, calls
    finally:
        cluster.restart(replica)


def test_idempotency_key_returns_the_same_job(client, store):
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/comer/pera", headers=headers)
    again = client.post("/comer/pera", headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["job_id"] == again.get_json()["job_id"]
    assert again.get_json()["replayed"] is True
    assert again.headers["Idempotent-Replayed"] == "true"
    assert queue_depth(store) == 1
    other = client.post("/comer/uva", headers=headers)
    assert other.status_code == 422
    assert "different request" in other.get_json()["error"]
    assert queue_depth(store) == 1


def test_an_idempotency_key_s_binding_reads_back_what_was_written():
    from kitqueue.queueing import Binding

    for bound in (Binding("4f2a", "sha-of-the-request"), Binding("4f2a", "sha", acknowledged=True)):
        assert Binding.parse(str(bound).encode()) == bound
    assert str(Binding("4f2a", "sha", acknowledged=True)) == "4f2a sha acknowledged"
    assert Binding.parse(b"4f2a sha") == ("4f2a", "sha", False)  # as written before the mark existed


@pytest.mark.parametrize("delay", [0, 30], ids=["queued", "delayed"])
def test_a_key_claimed_on_another_master_writes_no_second_job_where_it_names_the_first(
    client, admin, monkeypatch, delay
):
    """Two requests with one Idempotency-Key in a failover: the second one's claim went through
    the pool to a master where the key was free (the old one, see test_failover.py), and its
    job's connection then reached the master holding the first job and its key. The second job
    was written there, then found the key naming the first: the request answered the first
    job's id, as it must, but its own job stayed queued or scheduled, and both ran. Now the
    second job, queued or delayed, is written only where the key is free or names it (one
    script with the claim)."""
    from kitqueue import queueing

    headers = {"Idempotency-Key": "twice-at-once"}
    body = {"task": "add", "args": {"a": 1, "b": 2}, "delay": delay}
    first = client.post("/jobs", json=body, headers=headers)
    assert first.status_code == 202, first.get_json()
    real_claim = queueing._claim_idempotency_key
    elsewhere: list[str] = []

    def claimed_on_another_master(store_, key, fingerprint, new_id):
        if elsewhere:
            return real_claim(store_, key, fingerprint, new_id)
        elsewhere.append(new_id)
        return new_id, False, False  # the key was free where the pool's connection went

    monkeypatch.setattr(queueing, "_claim_idempotency_key", claimed_on_another_master)
    second = client.post("/jobs", json=body, headers=headers)
    assert second.status_code == 202, second.get_json()
    assert elsewhere, "the second request claimed its key"
    job_id = first.get_json()["job_id"]
    assert (second.get_json()["job_id"], second.get_json()["replayed"]) == (job_id, True)
    assert not admin.exists(f"rq:job:{elsewhere[0]}"), "the second request's job was written"
    waiting = admin.lrange("rq:queue:default", 0, -1) + admin.zrange("rq:scheduled:default", 0, -1)
    assert waiting == [job_id.encode()]


def test_a_replayed_idempotency_key_whose_job_is_gone_answers_its_id_and_runs_nothing(client, workers, admin):
    """A job acknowledged, failed and deleted from the dashboard (as one finished and expired
    after RESULT_TTL is gone): the client's retry with the same key within IDEMPOTENCY_TTL
    answers with that job's id, as a replay, and no job is written or run again."""
    headers = {"Idempotency-Key": "invoice-7"}
    body = {"task": "fail", "args": ["no stock"]}
    job_id = client.post("/jobs", json=body, headers=headers).get_json()["job_id"]
    workers.start(1)
    wait_for_status(client, job_id, {"failed"}, timeout=30)
    same_site = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    assert client.post(f"/dashboard/failed/{job_id}/delete", headers=same_site).status_code == 303
    assert client.get(f"/jobs/{job_id}").status_code == 404
    again = client.post("/jobs", json=body, headers=headers)
    assert again.status_code == 202, again.get_json()
    assert (again.get_json()["job_id"], again.get_json()["replayed"]) == (job_id, True)
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert not admin.exists(f"rq:job:{job_id}")
    assert admin.llen("rq:queue:default") == 0


def test_job_status_of_unknown_or_malformed_ids(client):
    assert client.get("/jobs/does-not-exist").status_code == 404
    response = client.get("/jobs/" + "x" * 65)
    assert response.status_code == 400
    assert "'job_id' must be 1 to 64 letters" in response.get_json()["error"]


def test_a_job_that_cannot_reach_enough_replicas_is_not_acknowledged(cluster, settings):
    from fridge.web import create_app

    client = create_app(
        {**settings, "ACK_REPLICAS": 2, "ACK_TIMEOUT_MS": 200, "ACK_POLICY": "strict", "RETRY_BUDGET": 1}
    ).test_client()
    response = client.get("/comer/kiwi", headers={"Idempotency-Key": "kiwi-1"})
    assert response.status_code == 503
    body = response.get_json()
    assert body["replicas"] == 1
    assert body["wanted"] == 2
    assert "retry with the same Idempotency-Key" in body["error"]
    assert response.headers["Retry-After"] == "2"
    # Without a key, a retry is a second job: the answer names this one instead.
    response = client.get("/comer/pera")
    assert response.status_code == 503
    body = response.get_json()
    assert "retry with the same Idempotency-Key" not in body["error"], body
    assert f"job {body['job_id']} may have been stored" in body["error"], body


def test_healthz_needs_a_worker(client, workers):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "no worker is alive"
    workers.start(1)
    deadline = __import__("time").monotonic() + 15
    while client.get("/healthz").status_code != 200:
        assert __import__("time").monotonic() < deadline, client.get("/healthz").get_json()
        __import__("time").sleep(0.1)
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok"
    assert body["workers"] == 1
    port = str(app_store(client.application).master_address()[1])
    assert "master" not in body
    assert port not in json.dumps(body)  # no internal address in a public answer
    assert "versions" not in body  # nor which versions run
    metrics = client.get("/metrics").get_data(as_text=True)  # open to the monitoring alone
    assert re.search(r'^fridge_build_info\{fridge="[^"]+",.*rq="3\.0\.0"\} 1$', metrics, re.M), metrics


def test_a_dead_worker_s_registration_leaves_healthz_and_metrics_alone(client, workers, admin):
    """A worker that died without deregistering (SIGKILL, a lost host) stays in `rq:workers`
    once its key has expired, until a worker's maintenance pass removes it. RQ's `Worker.all`
    removes it itself (SREM), which the web tier's user may not do: on make dev /healthz
    answered 503 ("the Redis master is not reachable") and /metrics said Redis was down from
    119 s after a worker unit's SIGKILL until that pass. The app reads the workers without
    writing and leaves the entry to the workers."""
    workers.start(1)
    deadline = time.monotonic() + 15
    while client.get("/healthz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/healthz").get_json()
        time.sleep(0.1)
    ghost = "rq:worker:lost-host-1.4242"  # registered, its key expired with its heartbeats
    admin.sadd("rq:workers", ghost)
    try:
        response = client.get("/healthz")
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["workers"] == 1
        metrics = client.get("/metrics").get_data(as_text=True)
        assert "fridge_redis_up 1" in metrics
        assert 'fridge_workers{state="idle"} 1' in metrics or 'fridge_workers{state="busy"} 1' in metrics
        assert admin.sismember("rq:workers", ghost), "the web tier removed a worker's registration"
    finally:
        admin.srem("rq:workers", ghost)


def test_healthz_is_503_when_no_sentinel_answers(settings):
    from fridge.web import create_app

    client = create_app({**settings, "SENTINELS": ["127.0.0.1:1"], "RETRY_BUDGET": 0.5}).test_client()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "not reachable through Sentinel" in response.get_json()["reason"]


def test_enqueue_answers_503_with_retry_after_when_redis_is_unreachable(settings):
    from fridge.web import create_app

    client = create_app({**settings, "SENTINELS": ["127.0.0.1:1"], "RETRY_BUDGET": 0.5}).test_client()
    response = client.get("/comer/platano")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert "unavailable" in response.get_json()["error"]


@pytest.mark.acl_denials
@pytest.mark.parametrize(("user", "password"), [("fridge-web", "not-the-password-1"), ("nobody", "x" * 16)])
def test_a_refused_redis_login_answers_503_at_once_and_says_why(settings, caplog, user, password):
    """A wrong Redis user or password is a configuration error, not a failover: the request does
    not wait the whole retry budget, and the answer and the log say the login was refused."""
    from fridge.web import create_app

    client = create_app({**settings, "REDIS_USERNAME": user, "REDIS_PASSWORD": password}).test_client()
    started = time.monotonic()
    response = client.get("/comer/platano")
    took = time.monotonic() - started
    assert response.status_code == 503
    assert "Redis refused the app's login" in response.get_json()["error"]
    assert took < 2, f"{took:.1f}s (RETRY_BUDGET: {settings.get('RETRY_BUDGET', 5)} s)"
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    said = f"Redis refused the login of user {user}"
    assert any(said in m and "REDIS_PASSWORD" in m for m in logged), logged
    assert not any("failover" in r.getMessage() for r in caplog.records), caplog.text
    health = client.get("/healthz")
    assert (health.status_code, health.get_json()["reason"]) == (503, "Redis refused the app's login")


@pytest.mark.parametrize(
    ("user", "password"), [(SENTINEL_CLIENT_USER, "not-the-password-1"), ("nobody", "x" * 16)]
)
def test_a_refused_sentinel_login_answers_503_at_once_and_says_why(settings, caplog, user, password):
    """A wrong Sentinel user or password is a configuration error too: every Sentinel refuses
    it, and the request does not wait the retry budget out as for a failover."""
    from fridge.web import create_app

    client = create_app({**settings, "SENTINEL_USERNAME": user, "SENTINEL_PASSWORD": password}).test_client()
    started = time.monotonic()
    response = client.get("/comer/platano")
    took = time.monotonic() - started
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert "Sentinel refused the app's login" in response.get_json()["error"]
    assert took < 2, f"{took:.1f}s (RETRY_BUDGET: {settings.get('RETRY_BUDGET', 5)} s)"
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    said = f"Sentinel refused the login of user {user}"
    assert any(said in m and "SENTINEL_PASSWORD" in m for m in logged), logged
    assert not any(password in r.getMessage() for r in caplog.records), caplog.text
    assert not any("failover" in r.getMessage() for r in caplog.records), caplog.text
    health = client.get("/healthz")
    assert (health.status_code, health.get_json()["reason"]) == (503, "Sentinel refused the app's login")


def test_metrics_in_prometheus_text_format(client, workers):
    workers.start(1)
    job_id = client.get("/comer/fresa").get_json()["job_id"]
    client.post("/jobs", json={"task": "sleep", "args": [1], "queue": "low", "delay": 3600})
    wait_for_status(client, job_id, {"finished"})
    text = client.get("/metrics").get_data(as_text=True)
    assert client.get("/metrics").headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "fridge_redis_up 1" in text
    for queue in ("critical", "default", "low"):
        assert f'fridge_queue_depth{{queue="{queue}"}} 0' in text
    assert 'fridge_jobs_scheduled{queue="low"} 1' in text
    assert "fridge_jobs_enqueued_total 2" in text
    assert "fridge_jobs_finished_total 1" in text
    assert 'fridge_workers{state="idle"} 1' in text or 'fridge_workers{state="busy"} 1' in text


def test_openapi_document_describes_the_routes(client):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) >= {"/comer/{comida}", "/jobs", "/jobs/{job_id}", "/healthz", "/metrics"}
    assert doc["components"]["schemas"]["NewJob"]["properties"]["task"]["enum"] == [
        "eat",
        "sleep",
        "spawn",
        "fail",
        "flaky",
        "crash",
        "hog",
        "add",
    ]


def test_unknown_routes_and_methods_answer_json_4xx(client):
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.get_json()["error"] == "no such resource"
    response = client.delete("/jobs")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


def test_available_policy_acknowledges_with_every_online_replica(settings, admin):
    from fridge.web import create_app

    # Two replicas wanted, one exists and acknowledges: "available" accepts, "strict" does not.
    client = create_app({**settings, "ACK_REPLICAS": 2, "ACK_TIMEOUT_MS": 200}).test_client()
    assert client.get("/comer/mango").status_code == 202
    assert admin.get("fridge:stats:unreplicated") is None


def test_with_no_replica_online_available_acknowledges_and_strict_refuses(cluster, settings, admin):
    from fridge.web import create_app

    master = cluster.master_port()
    replica = next(p for p in cluster.data_ports if p != master)
    cluster.kill(replica)
    try:
        wait_until(
            lambda: admin.info("replication")["connected_slaves"] == 0, 10, "the master to lose its replica"
        )
        # "available": after ACK_TIMEOUT_MS (the WAIT that lets a demotion unblock it) the job is
        # acknowledged on the master alone, and counted.
        available = create_app({**settings, "ACK_TIMEOUT_MS": 200}).test_client()
        response = available.get("/comer/lima")
        assert response.status_code == 202, response.get_json()
        assert admin.get("fridge:stats:unreplicated") == b"1"

        strict = create_app(
            {**settings, "ACK_TIMEOUT_MS": 200, "ACK_POLICY": "strict", "RETRY_BUDGET": 1}
        ).test_client()
        response = strict.get("/comer/pomelo")
        assert response.status_code == 503
        assert response.get_json()["replicas"] == 0
        assert admin.get("fridge:stats:unreplicated") == b"1"
    finally:
        cluster.restart(replica)
