"""roles/firewall on the platform: Redis and Sentinel answer only the topology's hosts, HTTP
answers everyone. Attacks come from a host outside the topology (a throw-away container on the
same network, as a compromised neighbour would be) and from the app host itself."""

from __future__ import annotations

import pytest
from kit_attacks import assert_no_command_without_login, probe_from, probe_from_outside, redis_targets
from kit_checks import get_host, hosts_in, hostvars, tls_ca

NETWORK = "kit-default"
OUTSIDER = "172.28.30.99"  # on the platform's network, in no group of the inventory


def web() -> tuple[str, int]:
    return (hostvars(hosts_in("web")[0])["kit_address"], 80)


def test_a_host_outside_the_topology_reaches_only_http():
    got = probe_from_outside(NETWORK, OUTSIDER, [*redis_targets(), web()])
    print(f"from {OUTSIDER}: {got}")
    for address, port in redis_targets():
        assert got[f"{address}:{port}"] == "timeout", (address, port)
    assert got["{}:{}".format(*web())].startswith("HTTP/1.1 200"), got


@pytest.mark.parametrize("name", hosts_in("web") + hosts_in("workers"))
def test_every_redis_and_sentinel_port_refuses_the_unauthenticated_from_an_app_host(name):
    ca = tls_ca()
    got = probe_from(get_host(name), redis_targets(), ca)
    print(f"from {name}: {got}")
    assert_no_command_without_login(got, redis_targets(), tls=bool(ca))


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
