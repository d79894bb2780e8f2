"""The kit's modules on the controller, against real redis-server and Sentinel processes on
loopback addresses: what redis_ha_status calls a problem (its logic alone, then a real group),
a backup and restore round trip (redis_backup, redis_restore), and every other module as
Ansible runs it."""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
since_start = _load(ROOT / "plugins/modules/changed_since_start.py", "kit_changed_since_start")

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
        (lambda s, n: s[1].update(sentinels=4), "Sentinel 10.0.0.12 knows Sentinels outside the group"),
        (
            lambda s, n: s[1].update(peers=["10.0.0.11:26379", "10.0.0.99:26379"]),
            "Sentinel 10.0.0.12 knows Sentinels outside the group (10.0.0.99:26379: 3 for 3)",
        ),
        (lambda s, n: n[1].update(link="down"), f"replica {R}: link to {M} is down"),
        (lambda s, n: n[1].update(offset=0), f"replica {R} is 1000 bytes behind {M}"),
        (lambda s, n: n[1].update(master="10.0.0.99:6379"), f"replica {R} follows 10.0.0.99:6379"),
        (
            lambda s, n: n.__setitem__(1, {"address": R, "error": "timed out"}),
            f"data node {R} does not answer",
        ),
        (lambda s, n: s[0].update(flags="master,s_down"), "Sentinel 10.0.0.11 sees its master down"),
        (
            lambda s, n: s[2].update(ckquorum="NOQUORUM 1 usable Sentinels."),
            "Sentinel 10.0.0.21 could not fail the master over now: NOQUORUM 1 usable Sentinels.",
        ),
        (
            lambda s, n: n[1].update(disk="its last AOF write failed"),
            f"data node {R} cannot write its disk: its last AOF write failed",
        ),
        (lambda s, n: n[0].update(aof_guards=0), f"data node {M}: no AOF guard is logged in"),
        (
            lambda s, n: n[1].update(aof_guards_error="NOPERM"),
            f"data node {R}: its AOF guards cannot be counted: NOPERM",
        ),
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
    def __init__(
        self, directory: Path, *extra: str, address: str = "127.0.0.1", port: int | None = None
    ) -> None:
        directory.mkdir()
        self.address = address
        self.port = port or free_port()
        # A configuration file (empty), so that CONFIG REWRITE works as on a deployed node.
        self.conf = directory / "redis.conf"
        self.conf.write_text("")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                str(self.conf),
                "--port",
                str(self.port),
                "--bind",
                address,
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
                # A replica syncs at once, not after Redis's default 5 s wait for other replicas.
                "--repl-diskless-sync-delay",
                "0",
                "--requirepass",
                "pw",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.conn = kit_redis.Connection(address, self.port, None, "pw", 2.0)
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
    master = Server(tmp_path / "master", "--masterauth", "pw")  # it can become a replica
    replica = Server(tmp_path / "replica", "--masterauth", "pw")
    replica("REPLICAOF", "127.0.0.1", master.port)
    deadline = time.monotonic() + 10
    # Linked, and the master's save for that full sync over: the link comes up before the
    # master has reaped its child (a BGSAVE then meets "Background save already in progress").
    while "master_link_status:up" not in replica("INFO", "replication") or (
        "rdb_bgsave_in_progress:0" not in master("INFO", "persistence")
    ):
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


def test_a_backup_during_another_save_waits_for_it_and_takes_its_own(pair, tmp_path):
    """Redis refuses BGSAVE (even SCHEDULE) while an RDB child runs, as during a replica's full
    sync: the backup waits for it, then saves the data as of its own request."""
    master, _ = pair
    for n in range(5):
        master("SET", f"before-{n}", "x")
    master("CONFIG", "SET", "rdb-key-save-delay", "200000")  # 0.2 s a key: a save of ~1 s
    master("BGSAVE")
    master("CONFIG", "SET", "rdb-key-save-delay", "0")  # the child already runs with the delay
    master("SET", "after", "y")
    assert kit_redis.parse_info(master("INFO", "persistence"))["rdb_bgsave_in_progress"] == "1"
    saved = backup.snapshot(params(master.port, dest=str(tmp_path / "during.rdb"), timeout=30))
    assert saved["key_count"] == 6
    assert b"after" in Path(saved["path"]).read_bytes()  # its own save, not the older one


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


def test_replica_synced_judges_by_the_replica_when_the_master_refuses_the_login(pair):
    """An admin password changed with no previous one kept: the restarted replica knows it, the
    master not until its own restart later in the run. Linked and done syncing is in sync."""
    master, replica = pair
    master("CONFIG", "SET", "requirepass", "not-yet")
    try:
        ok, seen, fields = synced.state(params(replica.port, max_lag_bytes=1024))
    finally:
        with kit_redis.Connection("127.0.0.1", master.port, None, "not-yet", 2.0) as conn:
            conn.command("CONFIG", "SET", "requirepass", "pw")
    assert (ok, fields["lag_bytes"]) == (True, -1), seen
    assert "the master refused the login" in seen


# --- a Sentinel forgets a replica that left the group --------------------------------------


def start_sentinel(
    directory: Path, master: Server, address: str = "127.0.0.1", port: int | None = None
) -> tuple[subprocess.Popen, int]:
    """A Sentinel on `address` (no password) watching `master` as "kit" (quorum 1, down after
    1 s); returns its process and port."""
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"sentinel monitor kit {master.address} {master.port} 1\n"
        "sentinel auth-pass kit pw\n"
        "sentinel down-after-milliseconds kit 1000\n"
    )
    port = port or free_port()
    command = ["redis-server", str(conf), "--sentinel", "--port", str(port), "--bind", address]
    return subprocess.Popen([*command, "--dir", str(directory)], stdout=subprocess.DEVNULL), port


@pytest.fixture
def group(pair, tmp_path) -> Iterator[tuple[Server, Server, Server, Server]]:
    """The pair, a second replica (the one to remove) and a Sentinel watching them (quorum 1,
    down after 1 s)."""
    master, replica = pair
    leaving = Server(tmp_path / "leaving", "--masterauth", "pw")
    leaving("REPLICAOF", "127.0.0.1", master.port)
    proc, port = start_sentinel(tmp_path, master)
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
        "forgotten_sentinels": [],
    }
    with kit_redis.Connection("127.0.0.1", port, None, None, 2.0) as conn:
        assert len(forget.view(conn, "kit")[1]) == 2, "check mode resets nothing"
    done = forget.forget(sentinel_params(port, nodes))
    assert done == {"changed": True, "forgotten": gone, "forgotten_sentinels": []}
    with kit_redis.Connection("127.0.0.1", port, None, None, 2.0) as conn:
        master_view, replicas = forget.view(conn, "kit")
    assert list(replicas) == [f"127.0.0.1:{replica.port}"]
    assert not replicas[f"127.0.0.1:{replica.port}"] & forget.GONE
    assert master_view["port"] == str(master.port)
    unchanged = {"changed": False, "forgotten": [], "forgotten_sentinels": []}
    assert forget.forget(sentinel_params(port, nodes)) == unchanged


def test_a_replica_that_still_answers_is_not_forgotten(group):
    master, replica, leaving, port = group
    nodes = [f"127.0.0.1:{master.port}", f"127.0.0.1:{replica.port}"]
    with pytest.raises(
        RuntimeError, match=f"127.0.0.1:{leaving.port} is not one of the data nodes .* still answers"
    ):
        forget.forget(sentinel_params(port, nodes, timeout=2))
    with kit_redis.Connection("127.0.0.1", port, None, None, 2.0) as conn:
        assert len(forget.view(conn, "kit")[1]) == 2, "nothing was reset"


# --- every module as Ansible runs it: a Python process given its arguments as JSON ----------


def run_module(name: str, tmp_path: Path, check_mode: bool = False, **args) -> dict:
    """Run plugins/modules/<name>.py the way Ansible does on a host (arguments in a JSON file,
    the result as JSON on stdout), importing kit_redis by its collection name."""
    args_file = tmp_path / f"{name}-args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check_mode}}))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / ".collections"), "HOME": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "plugins/modules" / f"{name}.py"), str(args_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    try:
        return json.loads(run.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"{name} printed no JSON: {run.stdout[-2000:]} {run.stderr[-2000:]}") from None


def login(port: int) -> dict:
    return {"login_host": "127.0.0.1", "login_port": port, "login_password": "pw"}


def test_the_client_logs_in_with_the_first_password_the_server_takes(pair):
    master, _ = pair
    with kit_redis.connect_first("127.0.0.1", master.port, None, ["old-one", "pw"]) as conn:
        assert conn.command("PING") == "PONG"
    with pytest.raises(kit_redis.ReplyError) as refused:
        kit_redis.connect_first("127.0.0.1", master.port, None, ["old-one", "older"])
    assert kit_redis.is_auth_error(refused.value)
    with pytest.raises(ConnectionRefusedError):
        kit_redis.connect_first("127.0.0.1", free_port(), None, ["pw"], timeout=0.5)
    info = kit_redis.parse_info(master("INFO", "replication"))
    assert info["role"] == "master"
    assert info["connected_slaves"] == "1"


def test_live_config_changes_what_differs_once_and_check_mode_changes_nothing(pair, tmp_path):
    master, _ = pair
    first = run_module("redis_live_config", tmp_path, config={"maxmemory": "64mb"}, **login(master.port))
    assert first["changed"] is True, first
    assert first["changes"] == [{"maxmemory": {"before": "0", "after": "67108864"}}], first
    assert master("CONFIG", "GET", "maxmemory") == ["maxmemory", "67108864"]
    assert "maxmemory 64mb" in master.conf.read_text(), "the change is written to the file (CONFIG REWRITE)"
    again = run_module("redis_live_config", tmp_path, config={"maxmemory": "64mb"}, **login(master.port))
    assert again["changed"] is False, again
    dry = run_module("redis_live_config", tmp_path, True, config={"maxmemory": "32mb"}, **login(master.port))
    assert dry["changed"] is True
    assert master("CONFIG", "GET", "maxmemory") == ["maxmemory", "67108864"]


def test_an_immutable_setting_changed_beside_a_live_one_stays_in_the_file(pair, tmp_path):
    """An immutable setting goes to the file, for the restart; a live one changed in the same
    run made the module run CONFIG REWRITE afterwards, which wrote the running (old) value back:
    the restart applied nothing, and every run restarted the node again."""
    master, _ = pair
    wanted = {"tcp-backlog": "128", "maxmemory": "48mb"}
    args = {**login(master.port), "config_file": str(master.conf)}
    first = run_module("redis_live_config", tmp_path, config=wanted, **args)
    assert first["changed"] is True, first
    assert first["restart_required"] == ["tcp-backlog"], first
    written = master.conf.read_text()
    assert "tcp-backlog 128" in written.splitlines(), written
    assert "maxmemory 48mb" in written, "the live change is in the file too"
    again = run_module("redis_live_config", tmp_path, config=wanted, **args)
    assert again["restart_required"] == ["tcp-backlog"], "nothing is written until the restart"
    assert "tcp-backlog 128" in master.conf.read_text().splitlines()


def test_an_acl_load_then_the_settings_in_one_run(tmp_path):
    """Redis 7.0 closes the connections of every user an ACL LOAD replaces, once it has
    answered, the module's own among them: the settings after it failed with "Connection reset
    by peer" (a run that added a user on Debian 12 failed on every data node)."""
    users = tmp_path / "users.acl"
    users.write_text("user default on >pw ~* &* +@all\nuser kit-admin on >admin-pw ~* &* +@all\n")
    server = Server(tmp_path / "acl", "--aclfile", str(users))
    try:
        users.write_text(users.read_text() + "user newcomer on >newcomer-pw ~app:* -@all +ping\n")
        args = {**login(server.port), "login_user": "kit-admin", "login_password": "admin-pw"}
        done = run_module("redis_live_config", tmp_path, acl_load=True, config={"maxmemory": "64mb"}, **args)
        assert done.get("failed") is not True, done
        assert done["changes"] == [{"acl": "reloaded"}, {"maxmemory": {"before": "0", "after": "67108864"}}]
        with kit_redis.Connection("127.0.0.1", server.port, "newcomer", "newcomer-pw", 2.0) as conn:
            assert conn.command("PING") == "PONG"
    finally:
        server.proc.terminate()
        server.proc.wait()


def test_live_config_names_the_server_when_the_password_is_wrong(pair, tmp_path):
    master, _ = pair
    refused = run_module(
        "redis_live_config", tmp_path, config={}, **{**login(master.port), "login_password": "wrong"}
    )
    assert refused["failed"] is True
    assert refused["msg"].startswith(f"127.0.0.1:{master.port}: "), refused["msg"]
    assert "wrong" not in json.dumps(refused), "the password is not echoed"


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def group_args(sentinel_port: int, **extra) -> dict:
    return {
        "master_name": "kit",
        "sentinels": ["127.0.0.1"],
        "sentinel_port": sentinel_port,
        "node_password": "pw",
        **extra,
    }


def test_ha_master_follows_the_sentinel_and_refuses_a_master_outside_the_nodes(group, tmp_path):
    master, _, _, port = group
    found = run_module(
        "redis_ha_master", tmp_path, **group_args(port, nodes=["127.0.0.1"], bootstrap_master="10.9.9.9")
    )
    assert (found["master_host"], found["master_port"], found["changed"]) == (
        "127.0.0.1",
        master.port,
        False,
    ), found
    planted = run_module(
        "redis_ha_master", tmp_path, **group_args(port, nodes=["10.0.0.11"], bootstrap_master="10.0.0.11")
    )
    assert planted["failed"] is True
    assert "127.0.0.1" in planted["msg"], planted["msg"]


def test_ha_master_without_sentinels_keeps_the_node_that_holds_the_data(tmp_path):
    """No Sentinel answers (down, or refusing the run's password) and the nodes replicate from
    none: a master the Sentinels had promoted, whose replica was lost and rebuilt empty, holds
    the jobs. The bootstrap node (the inventory's first, the one rebuilt) was answered, and the
    role then made the master replicate from it: every job wiped. The node holding data is the
    master; two holding data are refused, named; none (a first deploy) is the bootstrap."""
    port = free_port()
    rebuilt = Server(tmp_path / "rebuilt", address="127.0.0.2", port=port)
    promoted = Server(tmp_path / "promoted", address="127.0.0.3", port=port)
    for server in (rebuilt, promoted):  # the Sentinels' user on the nodes: INFO, not DBSIZE
        server("ACL", "SETUSER", "watcher", "on", ">watcher-pw", "-@all", "+info", "+ping", "+auth", "+hello")
    args = {
        "master_name": "kit",
        "sentinels": ["127.0.0.1"],
        "sentinel_port": free_port(),  # nothing listens there
        "nodes": ["127.0.0.2", "127.0.0.3"],
        "node_port": port,
        "node_user": "watcher",
        "node_password": "watcher-pw",
        "bootstrap_master": "127.0.0.2",
    }
    try:
        first = run_module("redis_ha_master", tmp_path, **args)
        assert (first["master_host"], first["source"]) == ("127.0.0.2", "bootstrap"), first
        promoted("SET", "rq:job:kept", "1")
        found = run_module("redis_ha_master", tmp_path, **args)
        assert (found["master_host"], found["source"]) == ("127.0.0.3", "replication"), found
        rebuilt("SET", "rq:job:other", "1")
        both = run_module("redis_ha_master", tmp_path, **args)
        assert both["failed"] is True, both
        assert "127.0.0.2 (1 keys), 127.0.0.3 (1 keys)" in both["msg"], both["msg"]
    finally:
        for server in (rebuilt, promoted):
            server.proc.terminate()
            server.proc.wait()


def test_sentinel_monitor_sets_what_differs_once(group, tmp_path):
    master, _, _, port = group
    args = {
        "login_port": port,
        "master_name": "kit",
        "master_host": "127.0.0.1",
        "master_port": master.port,
        "auth_pass": "pw",
        "config_file": str(tmp_path / "sentinel.conf"),
    }

    def quorum() -> str:
        with kit_redis.Connection("127.0.0.1", port, None, None, 2.0) as conn:
            return kit_redis.pairs(conn.command("SENTINEL", "MASTER", "kit"))["quorum"]

    dry = run_module("redis_sentinel_monitor", tmp_path, True, quorum=2, **args)
    assert dry["changed"] is True, dry
    assert quorum() == "1", "check mode sets nothing"
    done = run_module("redis_sentinel_monitor", tmp_path, quorum=2, **args)
    assert done["changed"] is True, done
    assert {"quorum": {"before": "1", "after": "2"}} in done["changes"], done
    assert quorum() == "2"
    assert run_module("redis_sentinel_monitor", tmp_path, quorum=2, **args)["changed"] is False


def test_failover_promotes_a_replica_in_sync_and_then_changes_nothing(group, tmp_path):
    master, replica, leaving, port = group
    leaving.proc.terminate()  # a stopped replica is never chosen
    leaving.proc.wait()
    args = group_args(port, timeout=60)
    done = run_module("redis_failover", tmp_path, **args)
    assert done["changed"] is True, done.get("msg")
    assert done["failover_sent"] is True, done
    # The module turned the old master into a replica once the Sentinels named the new one, as
    # they would themselves only 8-10 s later (12.1 s in all before; 2.4 s now), and persisted
    # it for a restart.
    assert done["seconds"] < 8, done
    assert f"replicaof 127.0.0.1 {replica.port}" in master.conf.read_text()
    assert (done["old_master"], done["new_master"]) == (
        f"127.0.0.1:{master.port}",
        f"127.0.0.1:{replica.port}",
    )
    # Sentinel closes the clients of a node it reconfigures: ask on a new connection.
    with kit_redis.Connection("127.0.0.1", replica.port, None, "pw", 2.0) as conn:
        assert kit_redis.parse_info(conn.command("INFO", "replication"))["role"] == "master"
    again = run_module("redis_failover", tmp_path, **{**args, "target": "127.0.0.1"})
    assert again["changed"] is False, again


def test_failover_whose_login_may_not_demote_the_old_master_leaves_it_to_the_sentinels(group, tmp_path):
    """An admin login refused REPLICAOF on the old master: the switchover still ends, with a
    warning, once the Sentinels have turned the old master into a replica themselves."""
    master, replica, leaving, port = group
    leaving.proc.terminate()
    leaving.proc.wait()
    for server in (master, replica):
        server("ACL", "SETUSER", "narrow", "on", ">narrow-pw", "~*", "&*", "+@all", "-replicaof", "-slaveof")
    done = run_module(
        "redis_failover",
        tmp_path,
        **group_args(port, timeout=60, node_user="narrow", node_password="narrow-pw"),  # noqa: S106
    )
    assert done["changed"] is True, done.get("msg")
    assert done["new_master"] == f"127.0.0.1:{replica.port}", done
    assert "the Sentinels are left to turn" in str(done.get("warnings")), done
    assert "REPLICAOF refused" in str(done.get("warnings")), done
    assert done["seconds"] >= 8, done  # the Sentinels' own wait


def test_failover_with_no_replica_in_sync_is_refused_before_any_sentinel_is_asked(group, tmp_path):
    """The restart handler restarts a master where it is only when nothing was moved: the
    refusal says so (failover_sent false), and the master stays."""
    master, replica, leaving, port = group
    for server in (replica, leaving):
        server.proc.terminate()
        server.proc.wait()
    refused = run_module("redis_failover", tmp_path, **group_args(port, timeout=2))
    assert refused["failed"] is True, refused
    assert refused["failover_sent"] is False, refused
    assert "can be promoted" in refused["msg"], refused["msg"]
    assert _names(f"127.0.0.1:{port}") == f"127.0.0.1:{master.port}"


def test_failover_with_one_sentinel_of_three_down_ends_on_the_majority_s_word(group, tmp_path):
    """A planned switchover while one Sentinel's host is down (in maintenance): the switchover
    starts on a majority's word, and ends on it. It waited for every Sentinel, so it moved the
    master, then failed after its timeout ("no agreement"), and a rolling restart stopped
    there."""
    master, replica, leaving, port = group
    leaving.proc.terminate()
    leaving.proc.wait()
    (tmp_path / "second").mkdir()
    second, _ = start_sentinel(tmp_path / "second", master, address="127.0.0.2", port=port)
    try:
        wait_for(lambda: _names(f"127.0.0.2:{port}"), 20, "the second Sentinel")
        args = group_args(port, timeout=20, sentinels=["127.0.0.1", "127.0.0.2", "127.0.0.3"])
        done = run_module("redis_failover", tmp_path, **args)
        assert done["changed"] is True, done.get("msg")
        assert done["new_master"] == f"127.0.0.1:{replica.port}", done
        assert "Sentinel(s) not answering: 127.0.0.3" in str(done.get("warnings")), done
    finally:
        second.terminate()
        second.wait()


def _names(sentinel: str) -> str | None:
    host, port = sentinel.split(":")
    try:
        with kit_redis.Connection(host, int(port), None, None, 2.0) as conn:
            state = kit_redis.pairs(conn.command("SENTINEL", "MASTER", "kit"))
            return f"{state['ip']}:{state['port']}"
    except (OSError, kit_redis.ReplyError):
        return None


def wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)
    return found


# --- redis_ha_status against a real group ----------------------------------------------------


@pytest.fixture
def inventory_group(tmp_path) -> Iterator[tuple[Server, Server, int]]:
    """A master and its replica on one port at two loopback addresses, as an inventory's data
    nodes are (the module asks every node on one port), and a Sentinel that knows both."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is needed (make test installs it with the app tests' tools/app-tests.sh)")
    port = free_port()
    # Its `dir` may be changed at run time: the test takes its disk away.
    master = Server(tmp_path / "master", "--enable-protected-configs", "yes", address="127.0.0.2", port=port)
    # The master lists a replica at its connection's source address (127.0.0.1) unless told.
    replica = Server(tmp_path / "replica", "--masterauth", "pw", "--replica-announce-ip", "127.0.0.3",
                     address="127.0.0.3", port=port)  # fmt: skip
    replica("REPLICAOF", master.address, port)
    proc, sentinel_port = start_sentinel(tmp_path, master)
    deadline = time.monotonic() + 20
    while True:  # the replica is in sync and the Sentinel knows it
        try:
            with kit_redis.Connection("127.0.0.1", sentinel_port, None, None, 2.0) as conn:
                known = conn.command("SENTINEL", "REPLICAS", "kit")
            if known and "master_link_status:up" in replica("INFO", "replication"):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the replica did not sync or the Sentinel did not find it"
        time.sleep(0.1)
    yield master, replica, sentinel_port
    for process in (proc, master.proc, replica.proc):
        process.terminate()
        process.wait()


def test_status_reads_a_real_group_and_names_what_is_wrong(inventory_group, tmp_path):
    master, replica, sentinel_port = inventory_group
    at = {server: f"{server.address}:{server.port}" for server in (master, replica)}
    args = group_args(sentinel_port, nodes=[master.address, replica.address], node_port=master.port)
    master("SET", "fridge:k", "v")
    assert master("WAIT", 1, 2000) == 1

    state = run_module("redis_ha_status", tmp_path, **args)
    assert (state["changed"], state["problems"], state["master"]) == (False, [], at[master]), state
    nodes = {n["address"]: n for n in state["nodes"]}
    assert (nodes[at[master]]["role"], nodes[at[master]]["key_count"]) == ("master", 1)
    seen = nodes[at[replica]]
    assert (seen["role"], seen["master"], seen["link"], seen["key_count"]) == ("replica", at[master], "up", 1)
    assert 0 <= seen["lag_bytes"] <= 1048576
    (sentinel,) = state["sentinels"]
    assert (sentinel["master"], sentinel["replicas"], sentinel["sentinels"]) == (at[master], [at[replica]], 1)
    assert {n["disk"] for n in state["nodes"]} == {"ok"}

    # The master's save fails (its directory gone, as a disk gone would), and only the replica
    # has its AOF guard logged in: both named.
    gone = tmp_path / "gone"
    gone.mkdir()
    master("CONFIG", "SET", "dir", str(gone))
    gone.rmdir()
    saved = lambda: "rdb_bgsave_in_progress:0" in master("INFO", "persistence")  # noqa: E731
    wait_until(saved, "the save for the full sync to end")
    master("BGSAVE")
    wait_until(saved, "the save to end")
    for server in (master, replica):
        server("ACL", "SETUSER", "kit-aof-guard", "on", ">guard", "-@all", "+info")
    with kit_redis.Connection(replica.address, replica.port, "kit-aof-guard", "guard", 2.0) as guard:
        guard.command("INFO", "persistence")
        faulty = run_module("redis_ha_status", tmp_path, **args, aof_guard_user="kit-aof-guard")
    assert faulty["problems"] == [
        f"data node {at[master]} cannot write its disk: its last RDB save failed",
        f"data node {at[master]}: no AOF guard is logged in (kit-aof-guard.service: after a full disk,"
        " nothing rewrites the AOF before a second one can damage it)",
    ], faulty
    assert {n["address"]: n["aof_guards"] for n in faulty["nodes"]} == {at[master]: 0, at[replica]: 1}
    master("CONFIG", "SET", "dir", str(tmp_path / "master"))
    master("BGSAVE")
    wait_until(lambda: "rdb_last_bgsave_status:ok" in master("INFO", "persistence"), "a save that works")

    # An inventory that lacks the master: the module names it instead of following it.
    outside = run_module("redis_ha_status", tmp_path, **{**args, "nodes": [replica.address]})
    assert outside["master"] is None
    assert (
        f"the Sentinels' master {at[master]} is not one of the inventory's data nodes" in outside["problems"]
    )

    # A replica that stops: named, and the module still reports (the caller decides).
    replica.proc.terminate()
    replica.proc.wait()
    down = run_module("redis_ha_status", tmp_path, **args)
    assert "failed" not in down, down
    assert [p for p in down["problems"] if p.startswith(f"data node {at[replica]} does not answer")], down


def _sentinels(
    tmp_path: Path, master: Server, port: int, addresses: list[str]
) -> dict[str, subprocess.Popen]:
    """A Sentinel (quorum 2, down after 1 s) at each address, all on `port`, announcing it."""
    procs = {}
    for address in addresses:
        directory = tmp_path / address
        directory.mkdir()
        (directory / "sentinel.conf").write_text(
            f"sentinel monitor kit {master.address} {master.port} 2\n"
            "sentinel auth-pass kit pw\n"
            "sentinel down-after-milliseconds kit 1000\n"
            "requirepass spw\n"
            "sentinel sentinel-pass spw\n"
            f"sentinel announce-ip {address}\n"  # else each would announce its source, 127.0.0.1
        )
        command = ["redis-server", str(directory / "sentinel.conf"), "--sentinel", "--port", str(port)]
        procs[address] = subprocess.Popen(
            [*command, "--bind", address, "--dir", str(directory)], stdout=subprocess.DEVNULL
        )
    return procs


def test_status_names_a_sentinel_whose_peers_refuse_it(tmp_path):
    """Three Sentinels (quorum 2) that each answer the module, but one was given another peer
    password (a rotation half done): its peers refuse it, so it could never be elected to fail
    the master over, though it knows all three and names the right master. SENTINEL CKQUORUM
    says so; before, the status found no problem."""
    master = Server(tmp_path / "master", address="127.0.0.2")
    port = free_port()
    addresses = ["127.0.0.4", "127.0.0.5", "127.0.0.6"]
    procs = list(_sentinels(tmp_path, master, port, addresses).values())
    args = {
        **group_args(port, nodes=[master.address], node_port=master.port),
        "sentinels": addresses,
        "sentinel_password": "spw",
    }
    try:

        def read() -> dict:
            return run_module("redis_ha_status", tmp_path, **args)

        wait_until(lambda: read()["problems"] == [], "the three Sentinels to know each other", 30)
        with kit_redis.Connection(addresses[0], port, None, "spw", 2.0) as conn:
            conn.command("SENTINEL", "CONFIG", "SET", "sentinel-pass", "not-the-peers-password")
        said = f"Sentinel {addresses[0]} could not fail the master over now: NOQUORUM"
        wait_until(lambda: any(p.startswith(said) for p in read()["problems"]), "the status to name it", 30)
        others = [s for s in read()["sentinels"] if s["address"] != addresses[0]]
        assert {s.get("ckquorum") for s in others} == {"ok"}, others
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        master.proc.terminate()
        master.proc.wait()


def test_a_sentinel_gone_for_good_is_forgotten_so_one_more_loss_still_fails_over(tmp_path):
    """Three Sentinels; one host replaced (the Sentinel at .6 gone for good, a new one at .7).
    The others remembered the old one and counted it among the voters: two of four, once one
    more Sentinel was lost, made no majority, and no failover could start. The role's forget
    step, given the group's Sentinels, forgets the one seen down; a second run changes nothing."""
    master = Server(tmp_path / "master", address="127.0.0.2")
    port = free_port()
    procs = _sentinels(tmp_path, master, port, ["127.0.0.4", "127.0.0.5", "127.0.0.6"])
    try:

        def known(address: str) -> dict[str, set[str]]:
            try:
                with kit_redis.Connection(address, port, None, "spw", 2.0) as conn:
                    return forget.peer_view(conn, "kit")
            except OSError:  # not listening yet
                return {}

        wait_until(
            lambda: all(len(known(a)) == 2 for a in procs), "the three Sentinels to know each other", 30
        )
        old = procs.pop("127.0.0.6")
        old.terminate()
        old.wait()
        procs.update(_sentinels(tmp_path, master, port, ["127.0.0.7"]))
        group = ["127.0.0.4", "127.0.0.5", "127.0.0.7"]
        gone = f"127.0.0.6:{port}"

        def settled() -> bool:
            """The two old ones see .6 down and know .7; .7 knows them."""
            views = {a: known(a) for a in group}
            return all(
                "s_down" in views[a].get(gone, set()) and f"127.0.0.7:{port}" in views[a] for a in group[:2]
            ) and {f"{a}:{port}" for a in group[:2]} <= set(views[group[2]])

        wait_until(settled, "the old one to be seen down and the new one known", 30)
        status_args = {
            **group_args(port, nodes=[master.address], node_port=master.port),
            "sentinels": group,
            "sentinel_password": "spw",
        }
        stale = f"Sentinel 127.0.0.4 knows Sentinels outside the group ({gone}: 4 for 3)"
        before = run_module("redis_ha_status", tmp_path, **status_args)["problems"]
        assert any(p.startswith(stale) for p in before), before
        for address in group:
            args = {
                "login_host": address,
                "login_port": port,
                "login_password": "spw",
                "master_name": "kit",
                "nodes": [master.address],
                "node_port": master.port,
                "peers": group,
                "timeout": 30,
            }
            result = run_module("redis_sentinel_forget", tmp_path, **args)
            assert "failed" not in result, result
            if address != group[2]:  # the new one never met it
                assert (result["changed"], result["forgotten_sentinels"]) == (True, [gone]), result
            assert gone not in known(address)
            assert run_module("redis_sentinel_forget", tmp_path, **args)["changed"] is False
        after = run_module("redis_ha_status", tmp_path, **status_args)["problems"]
        assert not [p for p in after if "outside the group" in p], after
        second = procs.pop("127.0.0.5")
        second.terminate()
        second.wait()
        with kit_redis.Connection("127.0.0.4", port, None, "spw", 2.0) as conn:
            wait_until(
                lambda: "s_down" in known("127.0.0.4")[f"127.0.0.5:{port}"],
                "the second loss to be seen (s_down: a peer only disconnected still counts as usable)",
                30,
            )
            assert str(conn.command("SENTINEL", "CKQUORUM", "kit")).startswith("OK")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait()
        master.proc.terminate()
        master.proc.wait()


_STARTED = "2026-12-07 14:16:54.473538 UTC"


def test_changed_since_start_lists_the_files_modified_after_the_main_process_started(tmp_path):
    show = since_start.fields(f"ActiveState=active\nExecMainStartTimestamp=Mon {_STARTED}\n")
    started = since_start.start_time(show)
    assert started == pytest.approx(1796653014.473538, abs=1e-6)
    before, after, gone = tmp_path / "hardening.conf", tmp_path / "stamp", tmp_path / "container.conf"
    for path, mtime in ((before, started - 0.001), (after, started + 0.001)):
        path.write_text("x")
        os.utime(path, (mtime, mtime))
    assert since_start.changed_after(started, [str(before), str(after), str(gone)]) == [str(after)]


@pytest.mark.parametrize(
    "show",
    [
        "ActiveState=inactive\nExecMainStartTimestamp=Mon 2026-12-07 14:16:54.473538 UTC\n",
        "ActiveState=active\nExecMainStartTimestamp=\n",
        "ActiveState=inactive\nExecMainStartTimestamp=\n",  # no such unit
    ],
    ids=["stopped", "no-start-time", "unknown-unit"],
)
def test_changed_since_start_lists_nothing_for_a_unit_not_running(show, tmp_path):
    path = tmp_path / "hardening.conf"
    path.write_text("x")
    assert since_start.start_time(since_start.fields(show)) is None
    assert since_start.changed_after(None, [str(path)]) == []


@pytest.mark.parametrize("weekday", ["Mon", "Mo", "lun."])
def test_changed_since_start_reads_the_start_whatever_the_weekday_says(weekday):
    """strptime's %a reads the weekday in the module's locale (Ansible sets it from the
    environment: "Mo" in de_DE) while systemd writes it in English: the weekday is not read."""
    show = since_start.fields(f"ActiveState=active\nExecMainStartTimestamp={weekday} {_STARTED}\n")
    assert since_start.start_time(show) == pytest.approx(1796653014.473538, abs=1e-6)


def test_changed_since_start_digests_the_drop_ins_with_their_paths_and_absence(tmp_path):
    """The digest a unit's start notes (kit-started.conf) changes with a drop-in's content, and
    with one that appears or goes (a host that stops being a container loses kit-container.conf)."""
    hardening, container = tmp_path / "kit-hardening.conf", tmp_path / "kit-container.conf"
    paths = [str(hardening), str(container)]
    hardening.write_text("[Service]\nProtectSystem=strict\n")
    without = since_start.unit_digest(paths)
    container.write_text("[Service]\nPrivateUsers=false\n")
    with_container = since_start.unit_digest(paths)
    assert with_container != without
    assert since_start.unit_digest(paths) == with_container  # stable
    hardening.write_text("[Service]\nProtectSystem=full\n")
    assert since_start.unit_digest(paths) not in (without, with_container)
    container.write_text("")  # empty is not absent
    container_empty = since_start.unit_digest(paths)
    container.unlink()
    assert since_start.unit_digest(paths) != container_empty


def test_changed_since_start_says_a_unit_started_on_other_drop_ins_than_on_disk(tmp_path):
    """A run lost before its restart, a crash that systemd restarted on the unit it had loaded,
    then a daemon-reload by anything else (NeedDaemonReload no longer says): the digest the
    start noted differs from the drop-ins on disk. No note (a start before the unit noted it)
    leaves NeedDaemonReload alone to say; a unit not running needs nothing."""
    note = tmp_path / "redis-server.unit"
    assert since_start.noted(str(note)) is None
    assert since_start.noted(None) is None
    note.write_text("abc\n")
    assert since_start.noted(str(note)) == "abc"
    reloaded, unreloaded = {"NeedDaemonReload": "no"}, {"NeedDaemonReload": "yes"}
    assert since_start.unit_changed(reloaded, 1.0, "abc", "def")
    assert not since_start.unit_changed(reloaded, 1.0, "def", "def")
    assert not since_start.unit_changed(reloaded, 1.0, None, "def")
    assert since_start.unit_changed(unreloaded, 1.0, None, "def")
    assert since_start.unit_changed(unreloaded, 1.0, "def", "def")
    assert not since_start.unit_changed(unreloaded, None, "abc", "def")


def test_changed_since_start_says_whether_the_note_drop_in_holds_the_digest(tmp_path):
    """The role writes kit-started.conf again only when it does not hold the drop-ins' digest:
    a no-op run spends no task on it."""
    note = tmp_path / "kit-started.conf"
    assert not since_start.note_holds(str(note), "abc")
    assert not since_start.note_holds(None, "abc")
    note.write_text("[Service]\nExecStartPre=-+/bin/sh -c 'echo abc > /run/kit-jobqueue/x.unit'\n")
    assert since_start.note_holds(str(note), "abc")
    assert not since_start.note_holds(str(note), "def")
