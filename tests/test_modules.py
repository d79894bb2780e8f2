"""The kit's modules' own logic, on the controller: what redis_ha_status calls a problem, and a
backup and restore round trip (redis_backup, redis_restore) against real redis-server processes
(a master and its replica on 127.0.0.1)."""

from __future__ import annotations

import getpass
import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The modules import their client by its name in the collection, as Ansible ships it to a host:
# the work tree is the collection through the committed link in .collections.
sys.path.insert(0, str(ROOT / ".collections"))
kit_redis = importlib.import_module("ansible_collections.kit.jobqueue.plugins.module_utils.kit_redis")
status = _load(ROOT / "plugins/modules/redis_ha_status.py", "kit_redis_ha_status")
backup = _load(ROOT / "plugins/modules/redis_backup.py", "kit_redis_backup")
restore = _load(ROOT / "plugins/modules/redis_restore.py", "kit_redis_restore")
synced = _load(ROOT / "plugins/modules/redis_replica_synced.py", "kit_redis_replica_synced")
forget = _load(ROOT / "plugins/modules/redis_sentinel_forget.py", "kit_redis_sentinel_forget")

M, R = "10.0.0.11:6379", "10.0.0.12:6379"


def sentinel(address: str, master: str = M, epoch: int = 1, known: int = 3, flags: str = "master") -> dict:
    return {"address": address, "master": master, "epoch": epoch, "sentinels": known, "flags": flags}


def healthy() -> tuple[list[dict], list[dict]]:
    sentinels = [sentinel(a) for a in ("10.0.0.11", "10.0.0.12", "10.0.0.21")]
    nodes = [
        {"address": M, "role": "master", "offset": 1000, "key_count": 5},
        {"address": R, "role": "replica", "master": M, "link": "up", "offset": 990, "key_count": 5},
    ]
    return sentinels, nodes


def test_a_healthy_group_has_its_master_and_no_problem():
    sentinels, nodes = healthy()
    assert status.assess(sentinels, nodes, 1024) == (M, [])
    assert nodes[1]["lag_bytes"] == 10


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda s, n: n[1].update(role="master"), "2 data nodes are master"),
        (lambda s, n: s[2].update(master=R), "the Sentinels name different masters"),
        (
            lambda s, n: [x.update(master=R) for x in s],
            f"Sentinel 10.0.0.11 names {R}, but {M} is the master",
        ),
        (lambda s, n: s[0].update(epoch=2), "the Sentinels are at different epochs"),
        (lambda s, n: s[1].update(sentinels=2), "Sentinel 10.0.0.12 knows 2 of the 3 Sentinels"),
        (lambda s, n: n[1].update(link="down"), f"replica {R}: link to {M} is down"),
        (lambda s, n: n[1].update(offset=0), f"replica {R} is 1000 bytes behind {M}"),
        (lambda s, n: n[1].update(master="10.0.0.99:6379"), f"replica {R} follows 10.0.0.99:6379"),
        (
            lambda s, n: n.__setitem__(1, {"address": R, "error": "timed out"}),
            f"data node {R} does not answer",
        ),
        (lambda s, n: s[0].update(flags="master,s_down"), "Sentinel 10.0.0.11 sees its master down"),
        (
            lambda s, n: (
                [x.update(master="10.0.0.99:6379") for x in s],
                n[0].update(role="replica", master="10.0.0.99:6379", link="up"),
            ),
            "the Sentinels' master 10.0.0.99:6379 is not one of the inventory's data nodes",
        ),
    ],
)
def test_each_disagreement_is_named(breakage, expected):
    sentinels, nodes = healthy()
    breakage(sentinels, nodes)
    _, problems = status.assess(sentinels, nodes, 100)
    assert any(p.startswith(expected) for p in problems), problems


# --- backup and restore against real servers ------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, directory: Path, *extra: str) -> None:
        directory.mkdir()
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                "pw",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.conn = kit_redis.Connection("127.0.0.1", self.port, None, "pw", 2.0)
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def __call__(self, *args, **kwargs):
        return self.conn.command(*args, **kwargs)


@pytest.fixture
def pair(tmp_path) -> Iterator[tuple[Server, Server]]:
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is needed (make test installs it with the app tests' tools/app-tests.sh)")
    master = Server(tmp_path / "master")
    replica = Server(tmp_path / "replica", "--masterauth", "pw")
    replica("REPLICAOF", "127.0.0.1", master.port)
    deadline = time.monotonic() + 10
    while "master_link_status:up" not in replica("INFO", "replication"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield master, replica
    for server in (master, replica):
        server.proc.terminate()
        server.proc.wait()


def params(port: int, **extra) -> dict:
    return {
        "login_host": "127.0.0.1",
        "login_port": port,
        "login_user": None,
        "login_password": "pw",
        "login_previous_passwords": [],
        "tls_ca_file": None,
        "tls_server_name": None,
        **extra,
    }


def test_backup_of_a_replica_restores_every_key_type_ttl_and_binary_value(pair, tmp_path):
    master, replica = pair
    master("RPUSH", "rq:queue:default", "job-1", "job-2")
    master("HSET", "rq:job:job-1", "data", b"\x00\xff\xfebinary")
    master("ZADD", "rq:scheduled:default", 1700000000, "job-2")
    master("SET", "expiring", "soon", "EX", 3600)
    master("SELECT", 3)
    master("SET", "in-db-3", "yes")
    master("SELECT", 0)
    master("WAIT", 1, 2000)
    saved = backup.snapshot(params(replica.port, dest=str(tmp_path / "backup.rdb"), timeout=30))
    assert saved["key_count"] == 4
    assert saved["sha256"] == backup.sha256(str(tmp_path / "backup.rdb"))

    master("FLUSHALL")
    master("SET", "written-after-the-backup", "gone after the restore")
    done = restore.restore(
        params(
            master.port,
            src=str(tmp_path / "backup.rdb"),
            server_binary=shutil.which("redis-server"),
            run_as=getpass.getuser(),
            replicas=1,
            timeout=30,
        )
    )
    assert done["key_count"] == {0: 4, 3: 1}
    assert done["replaced"] == {0: 1}
    assert done["replicas_confirmed"] == 1
    for server in (master, replica):
        assert server("LRANGE", "rq:queue:default", 0, -1) == ["job-1", "job-2"]
        assert server("HGET", "rq:job:job-1", "data", raw=True) == b"\x00\xff\xfebinary"
        assert server("ZSCORE", "rq:scheduled:default", "job-2") == "1700000000"
        assert 3500 < server("TTL", "expiring") <= 3600
        assert server("EXISTS", "written-after-the-backup") == 0
    assert not list((tmp_path).glob("kit-restore-*")), "the temporary server's files are removed"


def test_restore_refuses_a_replica(pair, tmp_path):
    master, replica = pair
    saved = backup.snapshot(params(master.port, dest=str(tmp_path / "b.rdb"), timeout=30))
    with pytest.raises(RuntimeError, match="is a slave, not the master"):
        restore.restore(
            params(
                replica.port,
                src=saved["path"],
                server_binary=shutil.which("redis-server"),
                run_as=getpass.getuser(),
                replicas=0,
                timeout=30,
            )
        )


def test_replica_synced_sees_a_replica_in_sync_and_not_a_master(pair):
    master, replica = pair
    master("SET", "k", "v")
    master("WAIT", 1, 2000)
    ok, seen, fields = synced.state(params(replica.port, max_lag_bytes=1024))
    assert (ok, seen) == (True, "in sync")
    assert fields["master"] == f"127.0.0.1:{master.port}"
    assert synced.state(params(master.port, max_lag_bytes=1024))[:2] == (False, "role master")


# --- a Sentinel forgets a replica that left the group --------------------------------------


@pytest.fixture
def group(pair, tmp_path) -> Iterator[tuple[Server, Server, Server, Server]]:
    """The pair, a second replica (the one to remove) and a Sentinel watching them (quorum 1,
    down after 1 s)."""
    master, replica = pair
    leaving = Server(tmp_path / "leaving", "--masterauth", "pw")
    leaving("REPLICAOF", "127.0.0.1", master.port)
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"sentinel monitor kit 127.0.0.1 {master.port} 1\n"
        "sentinel auth-pass kit pw\n"
        "sentinel down-after-milliseconds kit 1000\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            str(conf),
            "--sentinel",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:  # the Sentinel knows both replicas, up
        try:
            with kit_redis.Connection("127.0.0.1", port, None, None, 2.0) as conn:
                if len(forget.view(conn, "kit")[1]) == 2 and all(
                    not flags & forget.GONE for flags in forget.view(conn, "kit")[1].values()
                ):
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the Sentinel did not find both replicas"
        time.sleep(0.1)
    yield master, replica, leaving, port
    proc.terminate()
    proc.wait()
    leaving.proc.terminate()
    leaving.proc.wait()


def sentinel_params(port: int, nodes: list[str], timeout: float = 20) -> dict:
    return {
        **params(port, master_name="kit", nodes=nodes, node_port=6379, timeout=timeout),
        "login_password": None,
    }


def test_a_sentinel_forgets_a_stopped_replica_and_keeps_the_others(group):
    master, replica, leaving, port = group
    nodes = [f"127.0.0.1:{master.port}", f"127.0.0.1:{replica.port}"]
    leaving.proc.terminate()
    leaving.proc.wait()
    gone = [f"127.0.0.1:{leaving.port}"]
    assert forget.forget(sentinel_params(port, nodes), check_mode=True) == {
        "changed": True,
        "forgotten": gone,
    }
    with kit_redis.Connection("127.0.0.1", port, None, None, 2.0) as conn:
        assert len(forget.view(conn, "kit")[1]) == 2, "check mode resets nothing"
    done = forget.forget(sentinel_params(port, nodes))
    assert done == {"changed": True, "forgotten": gone}
    with kit_redis.Connection("127.0.0.1", port, None, None, 2.0) as conn:
        master_view, replicas = forget.view(conn, "kit")
    assert list(replicas) == [f"127.0.0.1:{replica.port}"]
    assert not replicas[f"127.0.0.1:{replica.port}"] & forget.GONE
    assert master_view["port"] == str(master.port)
    assert forget.forget(sentinel_params(port, nodes)) == {"changed": False, "forgotten": []}


def test_a_replica_that_still_answers_is_not_forgotten(group):
    master, replica, leaving, port = group
    nodes = [f"127.0.0.1:{master.port}", f"127.0.0.1:{replica.port}"]
    with pytest.raises(
        RuntimeError, match=f"127.0.0.1:{leaving.port} is not one of the data nodes .* still answers"
    ):
        forget.forget(sentinel_params(port, nodes, timeout=2))
    with kit_redis.Connection("127.0.0.1", port, None, None, 2.0) as conn:
        assert len(forget.view(conn, "kit")[1]) == 2, "nothing was reset"
