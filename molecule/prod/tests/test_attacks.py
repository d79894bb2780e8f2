"""The attack suite on the production inventory as deployed (TLS with the operator's CA, the
firewall, production defaults), made from the hosts an intruder would hold: a host outside the
topology, and each app host with the credentials the kit put on it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kit_attacks import (
    REDIS_ATTACKS,
    SENTINEL_ATTACKS,
    assert_no_command_without_login,
    attack_from,
    probe_from,
    probe_from_outside,
    redis_targets,
    refused,
)
from kit_checks import get_host, hosts_in, hostvars

NETWORK = "kit-prod"
OUTSIDER = "172.28.40.99"  # on the platform's network, in no group of the inventory
# The operator's CA of the Redis and Sentinel certificates, as prepare.yml made it.
CA = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "tls" / "redis" / "ca.crt"


def test_a_host_outside_the_topology_reaches_only_the_web_server():
    web = hostvars(hosts_in("web")[0])["kit_address"]
    got = probe_from_outside(NETWORK, OUTSIDER, [*redis_targets(), (web, 443), (web, 80)])
    print(f"from {OUTSIDER}: {got}")
    for address, port in redis_targets():
        assert got[f"{address}:{port}"] == "timeout", (address, port, got)
    assert got[f"{web}:443"].startswith("HTTP/1.1 200"), got
    assert got[f"{web}:80"].startswith("HTTP/1.1 301"), got


@pytest.mark.parametrize("name", hosts_in("web") + hosts_in("workers"))
def test_from_an_app_host_every_port_speaks_only_tls_and_nothing_runs_without_a_login(name):
    got = probe_from(get_host(name), redis_targets(), CA.read_text())
    print(f"from {name}: {got}")
    assert_no_command_without_login(got, redis_targets(), tls=True)


APP_HOSTS = [(h, "web") for h in hosts_in("web")] + [(h, "worker") for h in hosts_in("workers")]


@pytest.mark.parametrize(("name", "tier"), APP_HOSTS)
def test_an_app_hosts_logins_cannot_reconfigure_anything_nor_leave_their_prefix(name, tier):
    got = attack_from(get_host(name), tier)
    print(f"from {name} as {got['redis_user']} / {got['sentinel_user']}:\n{json.dumps(got, indent=1)}")
    assert got["redis_user"] == f"fridge-{tier}"
    master = got["master"]
    assert isinstance(master, list), master
    for attack in REDIS_ATTACKS:
        assert refused(got["redis"][attack]), (attack, got["redis"][attack])
    for attack in SENTINEL_ATTACKS:
        for sentinel, reply in got["sentinel"][attack].items():
            assert refused(reply), (attack, sentinel, reply)
    # The same logins work where they should (after the attacks: nothing was changed).
    assert got["redis"]["ping"] == "+PONG"
    assert got["redis"]["write-inside-prefix"] == 1
    for sentinel, reply in got["sentinel"]["get-master-addr"].items():
        assert reply == master, (sentinel, reply)
    for sentinel, reply in got["sentinel"]["replicas"].items():
        assert isinstance(reply, list), (sentinel, reply)
        assert reply, f"{sentinel} knows no replica"  # the attacks did not make it forget
