"""Fixtures: a real Redis master + replica + three Sentinels for the session, a Flask test
client per test, and worker processes started the way systemd starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fridge.web import create_app
from kitqueue.store import app_store
from redis_cluster import MASTER_NAME, PASSWORDS, SENTINEL_CLIENT_USER, WEB_USER, Cluster, env_for, wait_until

APP_DIR = Path(__file__).resolve().parents[1]

# Short timings so that retries, abandonment and scheduling happen within seconds.
FAST = {
    "DEMO_TASKS": True,
    "EAT_SECONDS": 0.05,
    "JOB_RETRIES": 2,
    "JOB_RETRY_INTERVALS": [0],
    "WORKER_JOB_MONITORING_INTERVAL": 1,
    "WORKER_HEARTBEAT_GRACE": 2,
    "WORKER_MAINTENANCE_INTERVAL": 2,
    "WORKER_INTERMEDIATE_GRACE": 3,
    "WORKER_TTL": 10,
}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """Master, replica and three Sentinels on free 127.0.0.1 ports, with the role's ACL users."""
    # As root, each data node gets a disk of its own (test_failover's disk-full-master).
    cluster = Cluster(tmp_path_factory.mktemp("redis"), disk_mib=256 if os.geteuid() == 0 else None)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _clean(request, cluster: Cluster) -> Iterator[None]:
    """Every test starts from an empty, healthy, replicated database, and ends with no command
    of the app's refused by Redis ACL: the whole suite runs RQ with the role's command lists."""
    cluster.flush()
    cluster.reset_acl_log()
    yield
    if request.node.get_closest_marker("acl_denials"):
        return
    refused = cluster.acl_denials()
    assert not refused, f"Redis refused the app's users: {refused}"


@pytest.fixture
def settings(cluster: Cluster) -> dict:
    return {
        "TESTING": True,
        "SENTINELS": cluster.sentinels,
        "SENTINEL_USERNAME": SENTINEL_CLIENT_USER,
        "SENTINEL_PASSWORD": PASSWORDS["sentinel_client"],
        "MASTER_NAME": MASTER_NAME,
        "REDIS_USERNAME": WEB_USER,
        "REDIS_PASSWORD": PASSWORDS["web"],
        **cluster.app_settings(),
        **FAST,
    }


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin(cluster):
    """An admin connection to the current master, to inspect what the app may not (KEYS)."""
    return cluster.admin(cluster.master_port())


@pytest.fixture
def room(admin) -> Iterator[None]:
    """Gives the master back its unlimited memory after a test that filled it (fill_memory)."""
    yield
    admin.delete("filler")
    admin.config_set("maxmemory", 0)


@pytest.fixture
def store(app):
    return app_store(app)


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    parent_of = {int(a): int(b) for a, b in (line.split() for line in out.splitlines())}
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parent_of.items() if parent == current]
        found += kids
        frontier += kids
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def group(pgid: int) -> list[int]:
    """The processes of a process group."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid, of in (line.split() for line in out.splitlines()) if int(of) == pgid]


def start_tick(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except OSError:  # gone (FileNotFoundError), or going as it is read (ProcessLookupError)
        return None


def session(sid: int, started: int | None) -> list[int]:
    """The live processes of the session that `sid`, started at tick `started`, leads: its
    forks keep it when orphaned, whatever command line they take (RQ names its processes
    `rq:worker:...` with setproctitle). Empty when that pid leads another session now."""
    if start_tick(sid) not in (started, None):
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # gone meanwhile
                if os.getsid(int(entry.name)) == sid:
                    found.append(int(entry.name))
    return [pid for pid in found if alive(pid)]


class Workers:
    """`fridge-worker` processes, each in its own process group like a systemd unit's cgroup."""

    def __init__(self, cluster: Cluster, settings: dict) -> None:
        self.cluster, self.settings = cluster, settings
        self.procs: list[subprocess.Popen] = []
        self.started: dict[int, int | None] = {}  # each worker's start tick, by pid
        self.restarts = 0
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None

    def _spawn(self, name: str, args: tuple[str, ...], env: dict) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fridge.worker", "--name", name, *args],
            env=env,
            start_new_session=True,
        )
        self.started[proc.pid] = start_tick(proc.pid)
        return proc

    def left_by(self, proc: subprocess.Popen) -> list[int]:
        """The processes left in the session of a worker this pool started (its slots, horses
        and schedulers keep it), zombies aside."""
        return session(proc.pid, self.started[proc.pid])

    def _env(self, extra: dict) -> dict:
        return {**env_for(self.cluster, **{**FAST, **extra}), "PYTHONPATH": str(APP_DIR)}

    def start(self, count: int = 1, *args: str, **extra) -> list[subprocess.Popen]:
        env = self._env(extra)
        started = [self._spawn(f"test-worker-{index}", args, env) for index in range(count)]
        self.procs += started
        self._args, self._env_used = args, env
        return started

    def start_named(self, name: str, *args: str, **extra) -> subprocess.Popen:
        """One worker named `name` (`--name`), as a unit of that name starts again."""
        proc = self._spawn(name, args, self._env(extra))
        self.procs.append(proc)
        return proc

    def supervise(self) -> None:
        """Restart any worker that exits, one second later: systemd's Restart=always."""

        def loop() -> None:
            while not self._supervising.wait(0.2):
                for position, proc in enumerate(self.procs):
                    if proc.poll() is not None:
                        time.sleep(1)
                        name = f"test-worker-{position}"
                        self.procs[position] = self._spawn(name, self._args, self._env_used)
                        self.restarts += 1

        self._supervisor = threading.Thread(target=loop, daemon=True)
        self._supervisor.start()

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)

    def kill_all(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker and every process under it at once, as `systemctl kill
        --signal=SIGKILL` does to a unit's cgroup (the work horse has its own process group)."""
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        """Every process the workers started goes, as with a unit's cgroup: also those a test
        left behind by killing a worker alone (its scheduler, orphaned, kept its locks alive with
        EXPIREs that a later test, test_acl's, saw from an unknown connection; an orphaned worker
        with the tests' passwords joined a later test's cluster on a reused port). Each worker
        leads a session of its own, which its children keep when orphaned."""
        self._supervising.set()
        if self._supervisor:
            self._supervisor.join()
        for proc in self.procs:
            if proc.poll() is None:
                self.kill_all(proc)
        # Every worker ever started here, also those the supervisor replaced, until none is
        # left (a fork made while the first sweep killed joins the next one).
        deadline = time.monotonic() + 10
        while left := [pid for leader, tick in self.started.items() for pid in session(leader, tick)]:
            assert time.monotonic() < deadline, f"the workers' processes {left} outlive SIGKILL"
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


@pytest.fixture
def workers(cluster, settings) -> Iterator[Workers]:
    pool = Workers(cluster, settings)
    try:
        yield pool
    finally:
        pool.close()


def wait_for_status(client, job_id: str, wanted: set[str], timeout: float = 15) -> dict:
    seen: list[dict] = [{}]

    def reached() -> dict | None:
        seen[0] = client.get(f"/jobs/{job_id}").get_json()
        return seen[0] if seen[0].get("status") in wanted else None

    try:
        return wait_until(reached, timeout, f"job {job_id} to be {wanted}")
    except AssertionError as late:
        raise AssertionError(f"{late}; last seen: {seen[0]}") from None


def fridge_cli(env: dict[str, str], *args: str, **options) -> subprocess.CompletedProcess:
    """The `fridge` console script, as a process with the settings in `env`."""
    return subprocess.run(
        [sys.executable, "-m", "fridge.cli", *args],
        env={**env, "PYTHONPATH": str(APP_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **options,
    )
