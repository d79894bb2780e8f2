"""The app's Redis users: the web tier's and the workers' each hold only the commands RQ and the
app use (roles/redis, redis_acl_rq_web_commands and redis_acl_rq_worker_commands).

Sufficient: every test of this suite runs the web tier and the workers as these users and
fails on any command Redis ACL refuses them (conftest's `_clean`). Necessary: here a real run
of each tier, watched with MONITOR on the master, uses every listed command. And nothing
else: the attacks at the end are refused."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from conftest import fridge_cli, wait_for_status
from fridge import browse
from kitqueue.store import app_store
from redis_cluster import PASSWORDS, WEB_USER, WORKER_USER, Cluster, app_commands, env_for, wait_until

# Listed, yet a short run cannot show them through MONITOR; each says why it is needed.
UNSEEN = {
    "hello": "every connection's handshake (RESP3 with AUTH): MONITOR hides it, it holds the password",
    "ping": "redis-py's health check on a pooled connection idle for 15 s (and /healthz)",
}
SAME_SITE = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}


# A Sentinel names each link it opens to the master and announces itself on it every 2 s
# (PUBLISH __sentinel__:hello). A link reopened under load can announce before the next CLIENT
# LIST shows it: a CI run blamed that PUBLISH on the web tier.
SENTINEL_LINK = re.compile(r"client setname sentinel-|publish __sentinel__:hello", re.IGNORECASE)


def command_name(line: str) -> str:
    """ "CLIENT SETNAME x" -> "client|setname"; "GET k" -> "get" (ACL's names)."""
    words = line.split()
    name = words[0].lower().strip('"')
    if name in ("client", "script", "config", "function", "object", "xinfo", "acl") and len(words) > 1:
        return f"{name}|{words[1].lower().strip(chr(34))}"
    return name


@dataclass
class Watch:
    """MONITOR on the master; commands between two markers are one tier's window."""

    cluster: Cluster
    seen: dict[str, set[str]] = field(default_factory=dict)
    _lines: list[tuple[str, str]] = field(default_factory=list)
    _users: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        port = self.cluster.master_port()
        self.admin = self.cluster.admin(port)
        self._monitor = self.cluster.admin(port).monitor()
        self._monitor.__enter__()
        self.lister = self.cluster.admin(port)
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._learn_users, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                got = self._monitor.next_command()
            except redis.TimeoutError:
                continue
            address = got["client_address"]
            if got["client_type"] == "tcp":
                address = f"{address}:{got['client_port']}"
            if SENTINEL_LINK.match(got["command"]):
                self._users[address] = "a Sentinel"
            self._lines.append((address, got["command"]))

    def _mark(self) -> int:
        """A marker only the admin sends; returns the line number once MONITOR showed it."""
        token = f"kit-acl-mark-{uuid.uuid4().hex}"
        self.admin.echo(token)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for index in range(len(self._lines) - 1, -1, -1):
                if token in self._lines[index][1]:
                    return index
            time.sleep(0.02)
        raise AssertionError("MONITOR did not show the marker within 10 s")

    def _learn_users(self) -> None:
        """Which user each connection logged in as (CLIENT LIST, every 50 ms). A connection
        listed between its accept and its HELLO shows `default` (the kit's `default` user is
        off, so nothing logs in as it): taken as its user, that hid the commands of RQ's
        scheduler connection, whose one SCRIPT EXISTS comes right after it logs in (a CI run
        failed on it, about 1 run in 14 here)."""
        while not self._stop.wait(0.05):
            with contextlib.suppress(redis.RedisError):
                for c in self.lister.client_list():
                    if c["user"] != "default":
                        self._users.setdefault(f"{c['addr']}", c["user"])

    @contextmanager
    def window(self, tier: str) -> Iterator[None]:
        """Commands of the app's connections between two markers are `tier`'s, and so are
        Lua's (scripts run as their caller) and those of connections too short-lived to be
        listed (a CLI's); connections seen logged in as anyone else, or naming themselves a
        Sentinel's, are left out."""
        start = self._mark()
        yield
        end = self._mark()
        for address, cmd in self._lines[start + 1 : end]:
            user = self._users.get(address, tier)
            if user == tier:
                self.seen.setdefault(tier, set()).add(command_name(cmd))

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._monitor.__exit__(None, None, None)


def test_each_tier_uses_every_command_it_is_given(client, workers, cluster):
    watch = Watch(cluster)
    # Scripts an earlier test loaded would spare both tiers their SCRIPT LOAD.
    watch.admin.script_flush()
    try:
        with watch.window(WEB_USER):
            ok = client.post(
                "/jobs", json={"task": "eat", "args": ["higo"]}, headers={"Idempotency-Key": "a1"}
            )
            assert ok.status_code == 202
            assert client.post(
                "/jobs", json={"task": "eat", "args": ["higo"]}, headers={"Idempotency-Key": "a1"}
            ).status_code in (200, 202)
            failing = client.post("/jobs", json={"task": "fail", "args": ["boom"]}).get_json()["job_id"]
            delayed = client.post("/jobs", json={"task": "eat", "args": ["kaki"], "delay": 1}).get_json()[
                "job_id"
            ]
            assert client.get(f"/jobs/{delayed}").get_json()["status"] == "scheduled"
            # A job that kills its work horse: the worker reads its status (HGET) to record it.
            crashing = client.post("/jobs", json={"task": "crash", "args": ["exit"]}).get_json()["job_id"]
        jobs = [ok.get_json()["job_id"], delayed, failing, crashing]
        with watch.window(WORKER_USER):
            # A recurring job too: the workers enqueue it durably themselves.
            tick = {"name": "tick", "task": "add", "args": [1, 1], "every": 1, "queue": "critical"}
            worker = workers.start(1, RECURRING=[tick])[0]
            wait_until(
                lambda: (
                    [watch.admin.hget(f"rq:job:{j}", "status") for j in jobs]
                    == [b"finished", b"finished", b"failed", b"failed"]
                    and int(watch.admin.get("fridge:stats:finished") or 0) >= 3
                ),
                30,
                "the worker to run, schedule and retry the jobs",
            )
            worker.send_signal(signal.SIGTERM)  # a warm shutdown, as systemctl stop
            assert worker.wait(timeout=30) == 0
        with watch.window(WEB_USER):
            wait_for_status(client, ok.get_json()["job_id"], {"finished"})
            wait_for_status(client, delayed, {"finished"})
            wait_for_status(client, failing, {"failed"})
            assert client.get("/dashboard/").status_code == 200
            assert client.get("/dashboard/api/overview").status_code == 200
            for path in (
                "/dashboard/jobs/waiting/default",
                "/dashboard/jobs/failed/default",
                f"/dashboard/job/{failing}",
            ):
                assert client.get(path).status_code == 200, path
            assert client.get("/metrics").status_code == 200
            client.get("/healthz")
            # The CLI, as an operator on a web host: failed jobs newest first, a queue emptied.
            as_web = env_for(cluster, REDIS_USERNAME=WEB_USER, REDIS_PASSWORD=PASSWORDS["web"])
            assert failing in fridge_cli(as_web, "failed").stdout
            assert fridge_cli(as_web, "empty", "low", "--yes").returncode == 0
            # RQ's own `rq info` (its settings shipped in fridge.rq_settings) counts registries
            # after cleaning their expired entries: ZRANGEBYSCORE (fridge's own reads do not).
            rq_info = subprocess.run(
                [str(Path(sys.executable).with_name("rq")), "info", "-c", "fridge.rq_settings"],
                env=as_web,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert rq_info.returncode == 0, rq_info.stderr
            assert client.post(f"/dashboard/failed/{failing}/requeue", headers=SAME_SITE).status_code == 303
            assert client.get(f"/jobs/{failing}").get_json()["status"] == "queued"
            # A requeue that finds the job requeued already (by another operator, after the
            # page's own check) lets go of the registry its transaction watched (UNWATCH).
            with pytest.raises(browse.NotFailed):
                browse.requeue_failed(app_store(client.application), "default", failing)
            assert client.post(f"/dashboard/failed/{crashing}/delete", headers=SAME_SITE).status_code == 303
            assert client.get(f"/jobs/{crashing}").status_code == 404
    finally:
        watch.close()

    listed = app_commands()
    for tier in (WEB_USER, WORKER_USER):
        unused = set(listed[tier]) - watch.seen[tier] - set(UNSEEN)
        assert not unused, f"{tier} is given commands RQ and the app did not use: {sorted(unused)}"
        extra = watch.seen[tier] - set(listed[tier])
        assert not extra, f"{tier} ran commands it is not given: {sorted(extra)}"


ATTACKS = [
    ("FLUSHALL",),
    ("CONFIG", "SET", "appendonly", "no"),
    ("CONFIG", "GET", "*"),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("SELECT", "1"),
    ("MOVE", "rq:queues", "1"),
    ("FUNCTION", "FLUSH"),
    ("SCRIPT", "FLUSH"),
    ("EVAL", "return redis.call('FLUSHALL')", "0"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("ACL", "SETUSER", "intruder", "on", ">intruder-pw-1234", "~*", "+@all"),
    ("REPLICAOF", "192.0.2.66", "6379"),
    ("DEBUG", "SLEEP", "0"),
    ("MONITOR",),
    ("SHUTDOWN", "NOSAVE"),
    # RQ's worker command channel: whoever may publish there stops jobs and workers.
    ("PUBLISH", "rq:pubsub:any-worker", '{"command": "shutdown"}'),
    # Keys outside the app's prefixes (rq:*, fridge:*).
    ("SET", "other-app:secret", "x"),
    ("GET", "other-app:secret"),
    ("DEL", "other-app:secret"),
]


@pytest.mark.acl_denials
@pytest.mark.parametrize("user", [WEB_USER, WORKER_USER])
def test_the_app_users_cannot_reconfigure_redis_or_leave_their_keys(cluster, user):
    port = cluster.master_port()
    as_user = redis.Redis(
        port=port,
        username=user,
        password=PASSWORDS["web" if user == WEB_USER else "worker"],
        socket_timeout=2,
    )
    got = {}
    for attack in ATTACKS:
        try:
            as_user.execute_command(*attack)
            got[" ".join(attack[:2])] = "accepted"
        except redis.exceptions.NoPermissionError:
            continue
        except redis.ResponseError as error:  # DEBUG is off for everyone (enable-debug-command)
            if "not allowed" not in str(error):
                got[" ".join(attack[:2])] = str(error)
    assert not got, f"{user} may run: {got}"
    assert as_user.get("fridge:probe") is None  # its own prefix still works
    assert cluster.admin(port).ping()  # nothing was shut down
