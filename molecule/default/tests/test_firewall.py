"""roles/firewall on the platform: Redis and Sentinel answer only the topology's hosts, HTTP
answers everyone. Attacks come from a host outside the topology (a throw-away container on the
same network, as a compromised neighbour would be) and from the app host itself."""

from __future__ import annotations

import json
import shlex

import pytest
from kit_checks import get_host, hosts_in, hostvars
from kit_faults import docker

NETWORK = "kit-default"
OUTSIDER = "172.28.30.99"  # on the platform's network, in no group of the inventory

# Runs on a host: connects to each (address, port), sends an unauthenticated PING and prints
# what came back: the reply, "timeout" (dropped: the filter) or "refused".
PROBE = """
import json, socket, sys
out = {}
for address, port in json.loads(sys.argv[1]):
    key = f"{address}:{port}"
    try:
        with socket.create_connection((address, port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"PING\\r\\n" if port != 80 else b"GET /healthz HTTP/1.0\\r\\n\\r\\n")
            out[key] = s.recv(200).decode(errors="replace").splitlines()[0]
    except TimeoutError:
        out[key] = "timeout"
    except ConnectionRefusedError:
        out[key] = "refused"
print(json.dumps(out))
"""


def targets() -> list[tuple[str, int]]:
    data = [(hostvars(h)["kit_address"], 6379) for h in hosts_in("redis")]
    sentinels = [(hostvars(h)["kit_address"], 26379) for h in hosts_in("redis_sentinel")]
    return data + sentinels


def web() -> tuple[str, int]:
    return (hostvars(hosts_in("web")[0])["kit_address"], 80)


def test_a_host_outside_the_topology_reaches_only_http():
    got = json.loads(
        docker(
            "run", "--rm", "--network", NETWORK, "--ip", OUTSIDER, "kit-debian:13",
            "python3", "-c", PROBE, json.dumps([*targets(), web()]),
        )
    )  # fmt: skip
    print(f"from {OUTSIDER}: {got}")
    for address, port in targets():
        assert got[f"{address}:{port}"] == "timeout", (address, port)
    assert got["{}:{}".format(*web())].startswith("HTTP/1.1 200"), got


@pytest.mark.parametrize("name", hosts_in("web") + hosts_in("workers"))
def test_every_redis_and_sentinel_port_refuses_the_unauthenticated_from_an_app_host(name):
    host = get_host(name)
    probe = host.run(f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(targets()))}")
    assert probe.rc == 0, probe.stderr
    got = json.loads(probe.stdout)
    print(f"from {name}: {got}")
    for address, port in targets():
        assert got[f"{address}:{port}"].startswith("-NOAUTH"), (address, port, got)


PLATFORM = sorted({h for group in ("redis", "redis_sentinel", "web", "workers") for h in hosts_in(group)})


@pytest.mark.parametrize("name", PLATFORM)
def test_the_filter_is_loaded_at_boot_and_leaves_other_tables_alone(name):
    host = get_host(name)
    assert host.service("kit-firewall").is_enabled
    assert "policy drop" in host.run("nft list table inet kit").stdout
    # The kit's own unit is confined too: root with CAP_NET_ADMIN only, read-only system.
    report = host.run("systemd-analyze security kit-firewall.service --no-pager").stdout
    score = float(report.strip().splitlines()[-1].split(":")[1].split()[0])
    print(f"{name}: kit-firewall.service exposure {score}")
    assert score <= 2.0
    # Docker's own rules (its DNS at 127.0.0.11) live in another table and still work.
    other = next(h for h in hosts_in("redis") if h != name)
    assert host.run(f"getent hosts {other}").rc == 0
