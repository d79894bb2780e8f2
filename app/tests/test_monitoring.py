"""The alert rules (monitoring/prometheus/fridge-alerts.yml) against what /metrics says
during real faults: a worker stopped, a replica killed, frozen or on a full disk, Sentinels
killed, the master and its replica lost. Each test scrapes /metrics while healthy and during the fault, gives
Prometheus's own rule engine (promtool test rules) ten minutes of the first and twenty of the
second, and asserts exactly which alerts fire, with which labels."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from redis_cluster import Cluster, fill_memory, wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "fridge-alerts.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "fridge-dashboard.json"
PROMTOOL = ROOT / "tools" / "promtool.sh"
SCRAPE = 'job="fridge",instance="web1"'


def scrape(client) -> dict[str, str]:
    """/metrics as {series: value}, each series with the labels Prometheus adds (job, instance)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for line in response.get_data(as_text=True).splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            samples[f"{name}{{{SCRAPE}{',' + labels if labels else '}'}"] = value
    return samples


def firing(healthy: dict[str, str], fault: dict[str, str], expected: dict[str, list[dict]]) -> None:
    """Assert that after 10 minutes of `healthy` and 20 of `fault` (a scrape every 15 s) exactly
    the `expected` alerts fire ({alert: [labels besides severity]}); every other alert none."""
    rules = yaml.safe_load(RULES.read_text())
    severity = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # their wording is tested in fridge-alerts.test.yml
            if "alert" in rule:
                severity[rule["alert"]] = rule["labels"]["severity"]
    unknown = set(expected) - set(severity)
    assert not unknown, f"no such alert: {unknown}"
    series = []
    for name in sorted(set(healthy) | set(fault)):
        before = f"{healthy[name]}x39" if name in healthy else "_x40"
        gone = "stale _x79" if name in healthy else "_x80"  # a series that vanished goes stale
        after = f"{fault[name]}x79" if name in fault else gone
        series.append({"series": name, "values": f"{before} {after}"})
    tests = [
        {
            "eval_time": "29m",
            "alertname": alert,
            "exp_alerts": [
                {"exp_labels": {"severity": level, "job": "fridge", **labels}}
                for labels in expected.get(alert, [])
            ],
        }
        for alert, level in sorted(severity.items())
    ]
    document = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": series, "alert_rule_test": tests}],
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rules.yml").write_text(yaml.safe_dump(rules))
        (Path(tmp) / "test.yml").write_text(yaml.safe_dump(document))
        done = subprocess.run(
            [str(PROMTOOL), "test", "rules", "test.yml"], cwd=tmp, capture_output=True, text=True
        )
    scraped = "\n".join(f"  {s['series']} {s['values']}" for s in series)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nfrom these scrapes:\n{scraped}"


def scrape_when(client, condition, what: str, timeout: float = 20) -> dict[str, str]:
    def scraped() -> dict[str, str] | None:
        samples = scrape(client)
        return samples if condition(samples) else None

    return wait_until(scraped, timeout, what, 0.2)


def workers_seen(count: int):
    return lambda s: sum(int(v) for k, v in s.items() if k.startswith("fridge_workers{")) == count


@pytest.fixture
def healthy(client, workers) -> dict[str, str]:
    """/metrics of the healthy cluster with one live worker (nothing may fire on it)."""
    workers.start(1)
    return scrape_when(
        client,
        lambda s: workers_seen(1)(s) and s.get(f"fridge_replicas_online{{{SCRAPE}}}") == "1",
        "one live worker and the replica online in /metrics",
    )


def test_the_rules_and_the_dashboard_use_only_metrics_the_app_serves(healthy):
    served = {series.partition("{")[0] for series in healthy}
    used = set(re.findall(r"\bfridge_[a-z_]+\b", RULES.read_text()))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used |= {name for expr in exprs for name in re.findall(r"\bfridge_[a-z_]+\b", expr)}
    assert used - served == set(), f"used but not served: {sorted(used - served)}"
    # And the healthy cluster fires nothing.
    firing(healthy, healthy, {})


def test_what_the_app_serves_of_the_redis_group(healthy, cluster: Cluster):
    master = f"127.0.0.1:{cluster.master_port()}"
    replica = next(f"127.0.0.1:{p}" for p in cluster.data_ports if f"127.0.0.1:{p}" != master)
    for sentinel in cluster.sentinels:
        assert healthy[f'fridge_sentinel_up{{{SCRAPE},sentinel="{sentinel}"}}'] == "1"
        named = f'fridge_sentinel_master_info{{{SCRAPE},sentinel="{sentinel}",master="{master}"}}'
        assert healthy[named] == "1"
        assert healthy[f'fridge_sentinel_known_sentinels{{{SCRAPE},sentinel="{sentinel}"}}'] == "3"
        assert healthy[f'fridge_sentinel_known_replicas{{{SCRAPE},sentinel="{sentinel}"}}'] == "1"
        assert healthy[f'fridge_sentinel_master_down{{{SCRAPE},sentinel="{sentinel}"}}'] == "0"
    assert int(healthy[f'fridge_replica_lag_seconds{{{SCRAPE},replica="{replica}"}}']) <= 1
    assert healthy[f'fridge_redis_disk_writes_ok{{{SCRAPE},node="{master}",role="master"}}'] == "1"
    assert healthy[f'fridge_redis_disk_writes_ok{{{SCRAPE},node="{replica}",role="replica"}}'] == "1"


def test_a_nearly_full_master_fires_redis_nearly_full(client, healthy, admin, room):
    fill_memory(admin, 0.85)  # enqueues still go in (they stop at 0.9): only the warning fires
    fault = scrape_when(
        client,
        lambda s: int(s.get(f"fridge_redis_memory_max_bytes{{{SCRAPE}}}", 0)) > 0,
        "maxmemory in /metrics",
    )
    firing(healthy, fault, {"FridgeRedisNearlyFull": [{}]})


def test_a_stopped_worker_fires_workers_down(client, workers, healthy):
    workers.stop(workers.procs[0])  # SIGTERM: a warm shutdown, as `systemctl stop`
    fault = scrape_when(client, workers_seen(0), "no live worker in /metrics")
    firing(healthy, fault, {"FridgeWorkersDown": [{}]})


def test_a_killed_replica_fires_no_replica_online(client, cluster: Cluster, healthy):
    replica = next(p for p in cluster.data_ports if p != cluster.master_port())
    cluster.kill(replica)
    try:
        fault = scrape_when(
            client, lambda s: s.get(f"fridge_replicas_online{{{SCRAPE}}}") == "0", "no replica online"
        )
    finally:
        cluster.restart(replica)
    firing(healthy, fault, {"FridgeNoReplicaOnline": [{}]})


def test_a_replica_running_on_through_its_full_disk_fires_cannot_write_disk(
    client, cluster: Cluster, healthy
):
    """A replica goes on through its full disk (the role's redis_replica_ignore_disk_write_errors:
    true) and confirms the master's writes as before: only its failed AOF writes tell."""
    if not cluster.disk_mib:
        pytest.skip("a disk of its own for each node (tmpfs) needs root")
    replica = next(p for p in cluster.data_ports if p != cluster.master_port())
    series = f'fridge_redis_disk_writes_ok{{{SCRAPE},node="127.0.0.1:{replica}",role="replica"}}'
    try:
        cluster.fill_disk(replica)
        fault = scrape_when(client, lambda s: s.get(series) == "0", "the replica's failed writes in /metrics")
    finally:
        cluster.free_disk(replica)
    assert fault[f"fridge_replicas_online{{{SCRAPE}}}"] == "1"  # it confirms writes all along
    firing(healthy, fault, {"FridgeRedisCannotWriteDisk": [{"node": f"127.0.0.1:{replica}"}]})


def test_a_master_failed_over_for_its_full_disk_fires_cannot_write_disk(client, cluster: Cluster, healthy):
    """The Sentinels replace a master that cannot write; the old one, its disk still full, is
    no replica of the new master (it refuses Sentinel's PING, so Sentinel cannot turn it into
    one), but the Sentinels list it, and its disk is reported from there."""
    if not cluster.disk_mib:
        pytest.skip("a disk of its own for each node (tmpfs) needs root")
    old = cluster.master_port()
    series = f'fridge_redis_disk_writes_ok{{{SCRAPE},node="127.0.0.1:{old}",role="replica"}}'
    try:
        cluster.fill_disk(old)
        fault = scrape_when(
            client,
            lambda s: s.get(series) == "0" and s.get(f"fridge_replicas_online{{{SCRAPE}}}") == "0",
            "the old master's failed writes in /metrics, after the failover",
            30,
        )
    finally:
        cluster.free_disk(old)
        cluster.wait_healthy()
    assert f'fridge_redis_disk_writes_ok{{{SCRAPE},node="127.0.0.1:{old}",role="master"}}' not in fault
    firing(
        healthy,
        fault,
        {"FridgeRedisCannotWriteDisk": [{"node": f"127.0.0.1:{old}"}], "FridgeNoReplicaOnline": [{}]},
    )


def test_a_frozen_replica_fires_replica_lagging(client, cluster: Cluster, healthy):
    replica = next(p for p in cluster.data_ports if p != cluster.master_port())
    lag = f'fridge_replica_lag_seconds{{{SCRAPE},replica="127.0.0.1:{replica}"}}'
    cluster.freeze(replica)  # SIGSTOP: it keeps its connection and stops acknowledging
    try:
        fault = scrape_when(client, lambda s: int(s.get(lag, 0)) > 10, "a lag over 10 s", timeout=30)
    finally:
        cluster.thaw(replica)
    firing(healthy, fault, {"FridgeReplicaLagging": [{"replica": f"127.0.0.1:{replica}"}]})


def test_killed_sentinels_fire_sentinel_down_then_quorum_lost(client, cluster: Cluster, healthy):
    first, second = cluster.sentinel_ports[:2]
    up = 'fridge_sentinel_up{%s,sentinel="127.0.0.1:%d"}'
    cluster.kill(first)
    try:
        one = scrape_when(client, lambda s: s.get(up % (SCRAPE, first)) == "0", "one Sentinel down")
        firing(healthy, one, {"FridgeSentinelDown": [{"sentinel": f"127.0.0.1:{first}"}]})
        cluster.kill(second)
        try:
            two = scrape_when(client, lambda s: s.get(up % (SCRAPE, second)) == "0", "two Sentinels down")
        finally:
            cluster.restart_sentinel(second)
    finally:
        cluster.restart_sentinel(first)
    # The app keeps the master it is connected to (it asks the Sentinels on a new connection):
    # the master is not missing, but no failover could be agreed now.
    assert two[f"fridge_redis_up{{{SCRAPE}}}"] == "1"
    firing(
        healthy,
        two,
        {
            "FridgeSentinelDown": [{"sentinel": f"127.0.0.1:{p}"} for p in (first, second)],
            "FridgeSentinelQuorumLost": [{}],
        },
    )


def test_a_lost_master_with_no_replica_fires_master_missing(client, cluster: Cluster, healthy):
    master = cluster.master_port()
    replica = next(p for p in cluster.data_ports if p != master)
    cluster.kill(replica)
    cluster.kill(master)
    try:
        fault = scrape_when(client, lambda s: s.get(f"fridge_redis_up{{{SCRAPE}}}") == "0", "no master")
    finally:
        cluster.restart(master)
        cluster.restart(replica)
    # Queues, workers and replicas are unknown then, not zero: only the master's loss pages.
    assert not any(k.startswith(("fridge_workers", "fridge_replicas_online")) for k in fault)
    firing(healthy, fault, {"FridgeMasterMissing": [{}]})
