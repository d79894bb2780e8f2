"""Sentinel hosts: the service, where it listens and its identity."""

import hashlib
import os
import time

import testinfra.utils.ansible_runner
from kit_checks import assert_running, converge, exposure, hosts_in, load_group, run_playbook, wait_for

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("redis_sentinel")


def test_service_runs(host):
    assert_running(host, f"{host.ansible.get_variables()['redis_sentinel_flavor']}-sentinel")


def test_listens_on_private_address_and_localhost_only(host):
    address = host.ansible.get_variables()["kit_address"]
    assert host.socket(f"tcp://{address}:26379").is_listening
    assert host.socket("tcp://127.0.0.1:26379").is_listening
    assert not host.socket("tcp://0.0.0.0:26379").is_listening


def test_sentinel_id_is_derived_from_the_inventory_name(host):
    v = host.ansible.get_variables()
    flavor = v["redis_sentinel_flavor"]
    expected = hashlib.sha1(v["inventory_hostname"].encode()).hexdigest()  # noqa: S324 - an id, not a secret
    assert f"sentinel myid {expected}" in host.file(f"/etc/{flavor}/sentinel.conf").content_string


def test_unit_is_at_least_as_hardened_as_debians(host):
    ours, debian = exposure(host, f"{host.ansible.get_variables()['redis_sentinel_flavor']}-sentinel.service")
    assert ours <= debian
    assert ours <= 1.5  # the kit's ceiling for Sentinel


def test_a_master_outside_the_inventory_is_refused_naming_it():
    """Someone with Sentinel's admin password points every Sentinel at an address of theirs
    (one planted Sentinel alone does not last: its peers' hello messages carry a higher
    configuration epoch and Sentinel itself moves it back to the real master within seconds).
    The next run must stop before any node replicates from it (and sends it the replication
    password), naming each Sentinel and the address; after the operator removes the planted
    group, a run restores the monitoring of the real master."""
    groups = [load_group(hosts_in(name)) for name in ("group_a", "group_b")]
    masters = {g.name: g.current_master() for g in groups}
    rogue = "192.0.2.66"  # TEST-NET-1: nobody's

    def planted(g) -> bool:
        """Plant the rogue where it is not (yet, or any more: a Sentinel planted first may
        have been moved back by a peer planted after it); true once every Sentinel names it."""
        for address, named in g.masters_named().items():
            if named != f"{rogue}:6379":
                with g.sentinel(address) as conn:
                    conn.command("SENTINEL", "REMOVE", g.master_name)
                    conn.command("SENTINEL", "MONITOR", g.master_name, rogue, 6379, 2)
        time.sleep(2.5)  # longer than Sentinel's hello period: would a peer move it back?
        return set(g.masters_named().values()) == {f"{rogue}:6379"}

    for g in groups:
        wait_for(lambda g=g: planted(g), 30, f"every Sentinel of {g.name} to name {rogue}")
    try:
        refused = run_playbook()
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode != 0
        for g in groups:
            for address in g.sentinels.values():
                assert f"the Sentinel at {address}:26379 names {rogue}:6379" in said
            assert f"names {rogue}:6379 as master of kit, which is not one of the inventory's data" in said
            for address in g.nodes.values():
                assert g.role(address).get("master_host") != rogue
    finally:
        for g in groups:
            for address in g.sentinels.values():
                with g.sentinel(address) as conn:
                    conn.command("SENTINEL", "REMOVE", g.master_name)
    # The refused run stopped before configuring anything: the Sentinels' play alone restores
    # their monitoring (it finds the real master from the data nodes).
    converge("--tags", "sentinel")
    for g in groups:
        wait_for(
            lambda g=g: set(g.masters_named().values()) == {f"{masters[g.name]}:6379"},
            30,
            f"{g.name}'s Sentinels to monitor the real master again",
        )
