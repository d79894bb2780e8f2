"""Sentinel hosts: the service, where it listens and its identity."""

import hashlib
import os

import testinfra.utils.ansible_runner
from kit_checks import assert_running, exposure

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
