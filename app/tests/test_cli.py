"""The `fridge` console script, run as an operator runs it: a process with the app's settings."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import APP_DIR, FAST
from redis_cluster import PASSWORDS, WEB_USER, env_for


def fridge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fridge.cli", *args],
        env={**env, "PYTHONPATH": str(APP_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_counts_queues_and_workers_per_host(cluster, client, workers):
    for _ in range(3):
        assert client.post("/jobs", json={"task": "eat", "args": ["pera"], "queue": "low"}).status_code == 202
    as_web = env_for(cluster, **FAST, REDIS_USERNAME=WEB_USER, REDIS_PASSWORD=PASSWORDS["web"])
    done = fridge(as_web, "--json", "status")
    assert done.returncode == 0, done.stderr
    queues = {q["name"]: q for q in json.loads(done.stdout)["queues"]}
    assert queues["low"]["depth"] == 3, queues
    assert queues["default"]["depth"] == 0
    workers.start(1)
    deadline = time.monotonic() + 20
    while True:
        data = json.loads(fridge(as_web, "--json", "status").stdout)
        if data["workers"] and all(q["depth"] == 0 for q in data["queues"]):
            break
        assert time.monotonic() < deadline, data
        time.sleep(0.2)
    table = fridge(as_web, "status").stdout
    assert data["workers"][0]["host"] in table, table
    assert table.splitlines()[0].split() == ["queue", "waiting", "started", "scheduled", "failed"]


@pytest.mark.acl_denials
def test_status_with_the_workers_user_says_to_use_a_web_host(cluster):
    done = fridge(env_for(cluster, **FAST), "status")  # the workers' user: no LLEN, no SCAN
    assert done.returncode == 3
    assert "may not read the queues" in done.stderr, done.stderr
    assert "web host" in done.stderr


def test_status_says_redis_is_unreachable_and_exits_3(cluster):
    env = env_for(cluster, SENTINELS=["127.0.0.1:1"], RETRY_BUDGET=1.0)
    done = fridge(env, "status")
    assert done.returncode == 3
    assert "unreachable through Sentinel" in done.stderr, done.stderr
    assert done.stdout == ""
