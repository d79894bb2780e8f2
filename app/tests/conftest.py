"""Fixtures: a real Redis master + replica + three Sentinels for the session, a Flask test
client per test, and worker processes started the way systemd starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fridge import create_app
from redis_cluster import MASTER_NAME, PASSWORDS, Cluster, env_for

APP_DIR = Path(__file__).resolve().parents[1]

# Short timings so that retries, abandonment and scheduling happen within seconds.
FAST = {
    "EAT_SECONDS": 0.05,
    "JOB_RETRIES": 2,
    "JOB_RETRY_INTERVALS": [0],
    "WORKER_JOB_MONITORING_INTERVAL": 1,
    "WORKER_HEARTBEAT_GRACE": 2,
    "WORKER_MAINTENANCE_INTERVAL": 2,
    "WORKER_TTL": 10,
}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """Master, replica and three Sentinels on free 127.0.0.1 ports, with the role's ACL users."""
    cluster = Cluster(tmp_path_factory.mktemp("redis"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _clean(request, cluster: Cluster) -> None:
    """Every test starts from an empty, healthy, replicated database."""
    cluster.flush()


@pytest.fixture
def settings(cluster: Cluster) -> dict:
    return {
        "TESTING": True,
        "SENTINELS": cluster.sentinels,
        "SENTINEL_PASSWORD": PASSWORDS["sentinel_own"],
        "MASTER_NAME": MASTER_NAME,
        "REDIS_USERNAME": "app",
        "REDIS_PASSWORD": PASSWORDS["app"],
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
def store(app):
    return app.extensions["fridge"]


class Workers:
    """`fridge-worker` processes, each in its own process group like a systemd unit's cgroup."""

    def __init__(self, cluster: Cluster, settings: dict) -> None:
        self.cluster, self.settings = cluster, settings
        self.procs: list[subprocess.Popen] = []

    def start(self, count: int = 1, *args: str, **extra) -> list[subprocess.Popen]:
        env = env_for(self.cluster, **{**FAST, **extra})
        env["PYTHONPATH"] = str(APP_DIR)
        started = []
        for index in range(count):
            proc = subprocess.Popen(  # noqa: S603 - our own entry point
                [sys.executable, "-m", "fridge.worker", "--name", f"test-worker-{index}", *args],
                env=env,
                start_new_session=True,
            )
            started.append(proc)
        self.procs += started
        return started

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)

    def kill_group(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker and its work horse at once (a machine or cgroup kill)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


@pytest.fixture
def workers(cluster, settings) -> Iterator[Workers]:
    pool = Workers(cluster, settings)
    try:
        yield pool
    finally:
        pool.close()


def wait_for_status(client, job_id: str, wanted: set[str], timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job_id}").get_json()
        if body.get("status") in wanted:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not {wanted} after {timeout}s: {body}")
