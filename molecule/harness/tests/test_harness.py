"""The containers behave like hosts: systemd is PID 1 and manages services."""

import pytest


def test_systemd_is_pid_1(host):
    assert host.run("cat /proc/1/comm").stdout.strip() == "systemd"


def test_system_state_is_running(host):
    state = host.run("systemctl is-system-running --wait")
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert state.stdout.strip() == "running", f"failed units:\n{failed}"


@pytest.mark.parametrize("unit", ["kit-harness.service", "systemd-journald.service"])
def test_unit_is_running(host, unit):
    service = host.service(unit)
    if not service.is_running:
        print(host.run(f"journalctl -u {unit} --no-pager -n 50").stdout)
    assert service.is_running


def test_debian_release_matches_image(host):
    expected = {"harness-debian13": "13", "harness-debian12": "12"}[host.backend.get_hostname()]
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.split(".")[0] == expected
