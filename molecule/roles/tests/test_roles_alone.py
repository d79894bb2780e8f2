"""Each role on its own host with only its declared dependencies (none), as molecule.yml
says: what it is for works without the kit's other roles."""

from __future__ import annotations

import pytest
from kit_checks import get_host, installed_collection


def test_the_roles_come_from_the_installed_collection():
    collection = installed_collection()
    for role in ("apache", "wsgi_app", "firewall", "rq_workers"):
        assert (collection / "roles" / role / "tasks/main.yml").is_file(), role


def test_apache_alone_runs_and_hides_its_version():
    host = get_host("alone-apache")
    assert host.service("apache2").is_running
    assert not host.file("/etc/apache2/sites-enabled/000-default.conf").exists
    reply = host.run("curl -s -o /dev/null -D - http://127.0.0.1/")
    assert reply.stdout.startswith("HTTP/1.1 "), reply.stdout
    assert "Server: Apache\r\n" in reply.stdout  # no version, no OS
    assert "wsgi_module" in host.run("apache2ctl -M").stdout


def test_the_app_installs_alone_without_apache():
    host = get_host("alone-app")
    assert host.file("/srv/fridge/venv/bin/fridge-worker").is_file
    config = host.file("/etc/fridge/config.toml")
    assert (config.user, config.group, config.mode) == ("root", "fridge", 0o640)
    assert host.run("/srv/fridge/venv/bin/python -c 'import fridge.worker'").rc == 0
    assert not host.package("apache2").is_installed
    assert not host.package("redis-server").is_installed


def test_the_firewall_alone_filters():
    host = get_host("alone-firewall")
    assert host.service("kit-firewall").is_enabled
    rules = host.run("nft list table inet kit").stdout
    assert "policy drop" in rules
    assert "192.0.2.10" in rules
    assert "6379" in rules


@pytest.mark.parametrize("instance", [1, 2])
def test_workers_alone_run_any_command_without_the_app(instance):
    host = get_host("alone-firewall")
    unit = host.service(f"probe-worker@{instance}")
    assert unit.is_running
    # Running, not restarting in a loop (Type=simple: a start "succeeds" at once).
    assert unit.systemd_properties["NRestarts"] == "0"
    assert host.service("probe-workers.target").is_running
    assert not host.file("/srv/fridge").exists  # no app on this host
