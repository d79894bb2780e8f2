"""Helpers shared by the scenarios' testinfra tests.

Tests talk to the servers the way clients do (over TCP from the controller, which reaches the
containers' addresses on the Docker network) and to the hosts through testinfra.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from functools import cache
from typing import TypeVar

import testinfra
from kit_redis import Connection, ReplyError, pairs, parse_info

T = TypeVar("T")
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
SCENARIO_DIR = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "")

__all__ = ["Connection", "ReplyError", "pairs", "parse_info"]


@cache
def get_host(name: str) -> testinfra.host.Host:
    """A testinfra host from the scenario's inventory."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@cache
def hostvars(name: str) -> dict:
    return get_host(name).ansible.get_variables()


def hosts_in(group: str) -> list[str]:
    """Inventory hosts of a group, in inventory order."""
    runner = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)
    return runner.get_hosts(group)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, ReplyError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


def journal(host: testinfra.host.Host, unit: str, lines: int = 60) -> str:
    return host.run(f"journalctl -u {unit} --no-pager -n {lines}").stdout


def assert_running(host: testinfra.host.Host, unit: str) -> None:
    """Assert a unit runs and is enabled; print its journal when it does not."""
    service = host.service(unit)
    if not (service.is_running and service.is_enabled):
        print(f"--- journal of {unit} on {host.backend.get_hostname()} ---\n{journal(host, unit)}")
    assert service.is_running, f"{unit} is not running"
    assert service.is_enabled, f"{unit} is not enabled"


_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def run_playbook(*extra_args: str, playbook: str = "converge.yml") -> subprocess.CompletedProcess:
    """Run one of the scenario's playbooks (converge by default) with Molecule's settings."""
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="false", ANSIBLE_NOCOLOR="true")
    cmd = ["ansible-playbook", "-i", INVENTORY, os.path.join(SCENARIO_DIR, playbook), *extra_args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


def converge(*extra_args: str) -> dict[str, dict[str, int]]:
    """Run the scenario's converge playbook again; return the PLAY RECAP per host."""
    proc = run_playbook(*extra_args)
    recap = {
        m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
        for m in _RECAP.findall(proc.stdout)
    }
    if proc.returncode != 0 or not recap:
        print(proc.stdout[-20000:], proc.stderr[-5000:])
        raise AssertionError(f"converge failed (exit {proc.returncode})")
    changed = [line for line in proc.stdout.splitlines() if line.startswith("changed:")]
    if any(r["changed"] for r in recap.values()):
        print("\n".join(changed) or proc.stdout[-20000:])
    return recap


def exposure(host: testinfra.host.Host, unit: str) -> tuple[float, float]:
    """`systemd-analyze security` exposure of the unit as deployed, and of Debian's unit file
    alone (analysed offline), printing both and the container relaxations applied."""

    def score(output: str) -> float:
        return float(output.strip().splitlines()[-1].split(":")[1].split()[0])

    ours = host.run(f"systemd-analyze security {unit} --no-pager").stdout
    vendor = host.run(f"systemd-analyze security --offline=true /lib/systemd/system/{unit}").stdout
    relaxed = host.run(f"cat /etc/systemd/system/{unit}.d/kit-container.conf 2>/dev/null").stdout
    print(f"\n{unit}: exposure {score(ours)} as deployed, {score(vendor)} for Debian's unit alone")
    print("container relaxations: " + (" ".join(relaxed.split("[Service]")[-1].split()) or "none"))
    return score(ours), score(vendor)
