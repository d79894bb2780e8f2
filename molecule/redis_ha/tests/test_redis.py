"""Data nodes: the service, where it listens, its files and its unit hardening."""

import os
import re

import pytest
import testinfra.utils.ansible_runner
from kit_checks import assert_running, exposure, unit_exposure

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("redis")


@pytest.fixture(scope="module")
def v(host):
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def flavor(v):
    return v["redis_flavor"]


def test_service_runs(host, flavor):
    assert_running(host, f"{flavor}-server")


def test_listens_on_private_address_and_localhost_only(host, v):
    assert host.socket(f"tcp://{v['kit_address']}:6379").is_listening
    assert host.socket("tcp://127.0.0.1:6379").is_listening
    assert not host.socket("tcp://0.0.0.0:6379").is_listening


def test_files_belong_to_the_service_user(host, flavor):
    for path in (f"/etc/{flavor}/{flavor}.conf", f"/etc/{flavor}/users.acl"):
        f = host.file(path)
        assert f.user == flavor
        assert not f.mode & 0o007, f"{path} is readable by others ({oct(f.mode)})"


def test_acl_file_holds_no_plain_text_password(host, flavor, v):
    content = host.file(f"/etc/{flavor}/users.acl").content_string
    for secret in (
        "redis_acl_admin_password",
        "redis_acl_replication_password",
        "redis_acl_sentinel_password",
    ):
        assert v[secret] not in content
    assert "user default off" in content


def test_unit_is_at_least_as_hardened_as_debians(host, flavor):
    ours, debian = exposure(host, f"{flavor}-server.service")
    assert ours <= debian
    assert ours <= 1.5  # the kit's ceiling for its data nodes


def test_the_aof_guard_runs_confined(host):
    """kit-aof-guard only reads its server over the network: no capability, no device, no
    system call beyond a service's, no other process in sight. It was at 5.8 (MEDIUM); the
    kit's ceiling for the units beside its data is 1.5."""
    assert host.service("kit-aof-guard").is_running
    assert unit_exposure(host, "kit-aof-guard.service") <= 1.5


def test_persistence_is_aof_everysec_plus_rdb(host, flavor):
    """In the config the server starts with: as the role wrote it (values quoted) or as the
    server rewrote it since (CONFIG REWRITE, a failover)."""
    content = host.file(f"/etc/{flavor}/{flavor}.conf").content_string
    assert re.search(r'^appendonly "?yes"?$', content, re.MULTILINE), content
    assert re.search(r'^appendfsync "?everysec"?$', content, re.MULTILINE), content
    assert "\nsave " in content
