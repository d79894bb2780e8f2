"""Redis and Sentinel over TLS only (`port 0`, a `tls-port`, as roles/redis can deploy them):
the app, its workers and RQ's scheduler reach them with REDIS_TLS, verifying the certificate and
the host name; a plain-text client or one trusting another CA is refused, and the app then
answers 503, not 500. One TLS cluster for the module, in place of the session's plain one."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator

import pytest
import redis
from conftest import wait_for_status
from fridge.config import BadSetting
from fridge.config import load as load_config
from fridge.web import create_app
from kitqueue.store import FollowingSSLConnection, Store, pinned_connection, tls_context
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError
from redis_cluster import Cluster, make_tls


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """Overrides conftest's `cluster` for this module, so `settings` (REDIS_TLS and the CA),
    the workers' environment and the ACL LOG check after each test all use it."""
    workdir = tmp_path_factory.mktemp("redis-tls")
    cluster = Cluster(workdir, tls=make_tls(workdir / "tls"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def probe(port: int, host: str = "127.0.0.1", **tls) -> redis.Redis:
    """A client that tries once: redis-py's default retries a refused handshake for seconds."""
    return redis.Redis(host=host, port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0), **tls)


def test_a_request_is_enqueued_and_run_by_a_worker_over_tls(client, store, workers):
    workers.start(1)
    response = client.get("/comer/platano")
    assert response.status_code == 202, response.get_json()
    # A delayed job is moved to its queue by RQ's scheduler, which builds its own connection
    # pool from the worker's connection class and arguments.
    delayed = client.post("/jobs", json={"task": "add", "args": [2, 3], "delay": 1})
    assert delayed.status_code == 202, delayed.get_json()
    assert wait_for_status(client, response.get_json()["job_id"], {"finished"})["result"] == "ate platano"
    assert wait_for_status(client, delayed.get_json()["job_id"], {"finished"}, timeout=20)["result"] == 5
    assert store.redis.connection_pool.connection_class is FollowingSSLConnection
    with pinned_connection(store) as pinned:
        assert isinstance(pinned.connection._sock, ssl.SSLSocket)
        assert ("IP Address", "127.0.0.1") in pinned.connection._sock.getpeercert()["subjectAltName"]


def test_plain_text_is_refused_by_redis_and_sentinel(cluster):
    master, sentinel = cluster.master_port(), cluster.sentinel_ports[0]
    assert cluster.admin(master).config_get("port") == {"port": "0"}  # no plain-text port
    for port in (master, sentinel):
        with pytest.raises(redis.ConnectionError):
            probe(port).ping()
    # The same ports answer in TLS.
    assert cluster.admin(master).ping()
    assert cluster.sentinel(sentinel).ping()


def test_a_certificate_from_another_ca_is_refused_and_the_app_answers_503(cluster, settings, caplog):
    other = {"ssl": True, "ssl_ca_data": cluster.tls.other_ca}
    for port in (cluster.master_port(), cluster.sentinel_ports[0]):
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            probe(port, **other).ping()
    client = create_app({**settings, "REDIS_TLS_CA": cluster.tls.other_ca, "RETRY_BUDGET": 0.5}).test_client()
    with caplog.at_level(logging.WARNING, logger="fridge"):
        response = client.get("/comer/platano")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert "unavailable" in response.get_json()["error"]
    assert [
        r
        for r in caplog.records
        if "answering 503" in r.getMessage() and "CERTIFICATE_VERIFY_FAILED" in r.getMessage()
    ], [r.getMessage() for r in caplog.records]


def test_the_host_name_is_verified(cluster, settings):
    """127.1 reaches 127.0.0.1, but the certificate names only 127.0.0.1 and localhost."""
    mismatch = "Hostname mismatch, certificate is not valid for '127.1'"
    store = Store(load_config({**settings, "SENTINELS": [f"127.1:{p}" for p in cluster.sentinel_ports]}))
    with pytest.raises(MasterNotFoundError, match=mismatch):
        store.master_address()
    # The direct client a write acknowledged without replicas may use (Store.sole_master_doubt).
    store = Store(load_config(settings))
    replica = next(p for p in cluster.data_ports if p != cluster.master_port())
    with store.node(("127.0.0.1", replica)) as node:
        assert node.info("replication")["role"] == "slave"
    with store.node(("127.1", replica)) as node, pytest.raises(redis.ConnectionError, match=mismatch):
        node.ping()


def test_tls_settings_that_cannot_work_are_refused(cluster):
    with pytest.raises(BadSetting, match="REDIS_TLS_CA is set but REDIS_TLS is off"):
        load_config({"REDIS_TLS_CA": cluster.tls.ca})
    key = (cluster.tls.key_file).read_text()
    truncated = cluster.tls.ca[: len(cluster.tls.ca) // 2] + "\n-----END CERTIFICATE-----\n"
    for bad in (str(cluster.tls.ca_file), "", key, truncated, ["a list"]):
        with pytest.raises(BadSetting, match="REDIS_TLS_CA must be the text of PEM certificate"):
            load_config({"REDIS_TLS": True, "REDIS_TLS_CA": bad})
    with pytest.raises(BadSetting, match="REDIS_TLS must be true or false"):
        load_config({"REDIS_TLS": "yes"})
    assert load_config({"REDIS_TLS": True})["REDIS_TLS_CA"] is None  # the system's trust store
    bundle = f"# two CAs\n{cluster.tls.other_ca}{cluster.tls.ca}"
    assert load_config({"REDIS_TLS": True, "REDIS_TLS_CA": bundle})["REDIS_TLS_CA"] == bundle


def test_a_failover_over_tls_is_followed(cluster, client):
    """The Sentinels promote the replica over TLS (tls-replication), and the app's connection
    (FollowingSSLConnection) follows them to the new master."""
    assert client.get("/comer/antes").status_code == 202
    _, new = cluster.failover()
    response = client.get("/comer/despues")
    assert response.status_code == 202, response.get_json()
    assert cluster.admin(new).exists(f"rq:job:{response.get_json()['job_id']}")


def test_every_tls_connection_shares_one_context_that_trusts_only_the_kit_ca(cluster, store):
    """redis-py makes a TLS context for each connection, loading the system's trust store first
    (15 ms per connection here; an RQ work horse reconnects for every job) and trusting it
    besides REDIS_TLS_CA. The Store's master pool, its Sentinel clients and its direct node
    clients all wrap their sockets with one context, holding the kit's CA alone."""
    shared = tls_context(cluster.tls.ca)
    assert shared.cert_store_stats()["x509_ca"] == 1, "only the kit's CA is trusted"
    store.redis.ping()
    store.master_address()
    replica = next(p for p in cluster.data_ports if p != cluster.master_port())
    with store.node(("127.0.0.1", replica)) as node:
        node.ping()
        clients = [store.redis, node, *store.sentinel.sentinels]
        pools = [c.connection_pool._available_connections for c in clients]
        sockets = [available[0]._sock for available in pools if available]
        assert len(sockets) >= 3
        assert all(sock.context is shared for sock in sockets), [type(s) for s in sockets]
    rounds = []
    for _ in range(3):  # the best of 3 rounds: a busy machine slows one round, not the three
        started = time.perf_counter()
        for _ in range(10):  # what 10 jobs' work horses do: a new connection each
            store.redis.connection_pool.disconnect()
            store.redis.ping()
        rounds.append((time.perf_counter() - started) / 10)
    per_connection = min(rounds)
    print(f"TLS reconnection and PING: {per_connection * 1000:.1f} ms")
    assert per_connection < 0.012, "a reconnection should cost a handshake, not a trust store load"
