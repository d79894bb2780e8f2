"""A run lost between a change and the restart it notified: the next run makes the restart.

A replica of each group (Redis 7 on Debian 12, Valkey 8 on Debian 13) and its host's Sentinel;
for the restart of the server, each group's master too.
"""

from __future__ import annotations

import json
import re
import subprocess

import kit_checks
from kit_checks import (
    ReplyError,
    converge,
    hosts_in,
    kill_playbook_after,
    load_group,
    run_playbook,
    wait_for,
)
from kit_faults import kill_server, loaded, sh

_HARDEN = "install | Harden the unit beyond Debian's defaults"


def _replicas() -> dict:
    """The inventory name of a replica of each group -> its group."""
    targets = {}
    for group in (load_group(hosts_in(name)) for name in ("group_a", "group_b")):
        master = group.wait_settled()
        replica = next(a for a in group.nodes.values() if a != master)
        targets[group.host_of(replica)] = group
    return targets


def _unchanged(*args: str) -> None:
    """A run with `args` changes nothing on the hosts it reaches."""
    changed = {host: counts["changed"] for host, counts in converge(*args).items() if host != "localhost"}
    assert changed
    assert not any(changed.values()), changed


def _reloaded(host: str, unit: str) -> bool:
    """systemd has loaded the unit's files as they are on disk."""
    return sh(host, f"systemctl show -P NeedDaemonReload {unit}").strip() == "no"


def _main_pid(host: str, unit: str) -> str:
    return sh(host, f"systemctl show -p MainPID --value {unit}").strip()


def _noted(host: str, unit: str) -> str:
    """The digest of the drop-ins that need a restart, as the role last wrote it in the unit's
    kit-started.conf (the drop-ins' digest on disk, once a run has gone through)."""
    note = sh(host, f"cat /etc/systemd/system/{unit}.service.d/kit-started.conf")
    return re.search(r"echo (\S+) >", note).group(1)


def test_a_run_lost_before_its_restart_leaves_no_unit_change_unapplied():
    """A run that changes a unit's hardening drop-in, and is lost before its handler restarts the
    server (the controller's connection cut, a task failing after it), left the server confined
    as before, even after a crash that systemd restarted (on the unit it had loaded) and a
    daemon-reload by anything else since; the next run found the file as it wanted it and
    changed nothing, for good. Now each run first compares what the server and Sentinel read
    only at start with when they started (here the drop-ins; the bootstrap config's stamp and
    Sentinel's certificates are read the same way), and the drop-ins each start noted
    (kit-started.conf) with those on disk, and restarts them on the unit as it is on disk."""
    targets = _replicas()
    limit = ("--limit", ",".join(targets))
    units = {host: (g.service, f"{g.flavor}-sentinel") for host, g in targets.items()}

    def dropin(unit: str, name: str = "hardening") -> str:
        return f"/etc/systemd/system/{unit}.service.d/kit-{name}.conf"

    def started_on(host: str, unit: str) -> str:
        return sh(host, f"cat /run/kit-jobqueue/{unit}.unit").strip()

    # 1. Each server runs on a drop-in of an older kit (here changed by hand, its start noting
    # it as the role's kit-started.conf does), and the run that writes this kit's back is lost
    # at once.
    older = {host: "older-kit-" + _noted(host, server)[:8] for host, (server, _) in units.items()}
    for host, (server, _) in units.items():
        sh(host, f"echo '# changed by hand' >> {dropin(server)}")
        sh(host, f"sed -i 's/echo [0-9a-f]* >/echo {older[host]} >/' {dropin(server, 'started')}")
        sh(host, f"systemctl daemon-reload && systemctl restart {server}")
        assert started_on(host, server) == older[host], "the start noted no digest"
        wait_for(lambda h=host: loaded(targets[h], targets[h].nodes[h]), 60, f"{host} to load")
    before = {host: tuple(_main_pid(host, u) for u in pair) for host, pair in units.items()}
    kill_playbook_after(f"jobqueue.redis : {_HARDEN}", *limit, changes=len(targets))
    for host, (server, _) in units.items():
        assert "changed by hand" not in sh(host, f"cat {dropin(server)}"), "not written back"
        assert _main_pid(host, server) == before[host][0], f"{server} on {host} restarted by a lost run"
        assert not _reloaded(host, server), "the lost run reloaded systemd"
    # Then the server crashes and systemd restarts it, on the unit it has loaded (the older
    # drop-in), and something else reloads systemd (a package's script, an operator): the
    # server started after the file changed, and systemd has loaded it, yet the server runs
    # confined as the older file said.
    for host in units:
        kill_server(targets[host], host, restart=True)
    for host, (server, _) in units.items():
        wait_for(lambda h=host, u=server: _main_pid(h, u) not in ("", "0", before[h][0]), 30, f"{host} back")
        wait_for(lambda h=host: loaded(targets[h], targets[h].nodes[h]), 60, f"{host} to load")
        sh(host, "systemctl daemon-reload")
        assert _reloaded(host, server)
        assert started_on(host, server) == older[host]
    crashed = {host: _main_pid(host, server) for host, (server, _) in units.items()}

    # The masters' restart was lost too (their drop-in newer than their start, as a run lost
    # after writing it leaves it): the next run moves each group's master to its replica first.
    masters = {}
    for group in targets.values():
        master = group.host_of(group.wait_settled())
        masters[master] = (group, _main_pid(master, group.service))
        sh(master, f"touch {dropin(group.service)}")

    # 2. The next run, here one limited to the settings (which writes no drop-in), restarts each
    # server on its unit as on disk, the replicas first, then each master once it has been moved
    # away (both groups' in the same run); the one after changes nothing.
    config = ("--limit", ",".join([*targets, *masters]), "--tags", "redis_config")
    run = run_playbook(*config)
    assert run.returncode == 0, run.stdout[-5000:]
    said = " ".join(run.stdout.split())
    for host, (server, _) in units.items():
        assert f"{server} was started on its unit as it was before a run changed it" in said, said[-3000:]
        assert _main_pid(host, server) not in ("0", crashed[host]), f"{server} on {host} not restarted"
        assert started_on(host, server) == _noted(host, server), f"{server} on {host} on the older unit"
        wait_for(lambda host=host: loaded(targets[host], targets[host].nodes[host]), 60, f"{host} to load")
    for host, (group, pid) in masters.items():
        assert f"{group.service} started before {dropin(group.service)} changed" in said, said[-3000:]
        assert _main_pid(host, group.service) not in ("0", pid), f"{group.service} on {host} not restarted"
        now = group.wait_settled()
        old = group.nodes[host]
        assert now != old, f"the master {host} was restarted where it stood"
        assert f"Master of {group.master_name}: {old}:6379 -> {now}:6379" in said, said[-3000:]
        assert group.role(old).get("master_link_status") == "up", f"{host} is not a replica in sync again"
    _unchanged(*config)

    # 3. Sentinel's drop-in too, in a run lost as soon as it has written it back.
    for host, (_, sentinel) in units.items():
        sh(host, f"echo '# changed by hand' >> {dropin(sentinel)}")
    kill_playbook_after(f"jobqueue.redis_sentinel : {_HARDEN}", *limit, changes=len(targets))
    for host, (_, sentinel) in units.items():
        assert _main_pid(host, sentinel) == before[host][1], f"{sentinel} on {host} restarted by a lost run"

    # 4. The next run restarts each Sentinel; the one after changes nothing.
    run = run_playbook(*limit)
    assert run.returncode == 0, run.stdout[-5000:]
    for host, (_, sentinel) in units.items():
        assert f"{sentinel} started before {dropin(sentinel)} changed" in " ".join(run.stdout.split())
        assert _main_pid(host, sentinel) not in ("0", before[host][1]), f"{sentinel} on {host} not restarted"
        assert _reloaded(host, sentinel), f"{sentinel} on {host} restarted on the unit without its drop-in"
        assert started_on(host, sentinel) == _noted(host, sentinel), f"{sentinel} on {host}: its note"
    _unchanged(*limit)


def test_a_run_lost_before_its_acl_load_leaves_no_user_unloaded():
    """A run that adds a user (or rotates a password) writes the users file, and the ACL LOAD
    that applies it comes later in the run. Lost in between, the server kept the old users and
    the next run, finding the file as it wanted it, loaded nothing: the apps given the new
    password were refused. Now the role records what the server loaded and loads what differs."""
    targets = _replicas()
    limit = ("--limit", ",".join(targets), "--tags", "redis")
    newcomer = ("lost-run-check", "molecule-lost-run-5Tz8")
    # The inventory's users as written (templates unrendered: the role's defaults resolve them).
    inventory = ["ansible-inventory", "-i", kit_checks.INVENTORY, "--host", next(iter(targets))]
    users = json.loads(subprocess.run(inventory, capture_output=True, text=True, check=True).stdout)[
        "redis_acl_app_users"
    ]
    user = {"name": newcomer[0], "password": newcomer[1], "keys": ["app:x"], "commands": ["ping"]}
    extra = {"redis_acl_app_users": [*users, user]}
    added = ("-e", json.dumps(extra))

    def logs_in(host: str) -> bool:
        group = targets[host]
        try:
            with group.node(group.nodes[host], user=newcomer) as conn:
                return conn.command("PING") == "PONG"
        except ReplyError as error:
            if "WRONGPASS" not in str(error):
                raise
            return False

    kill_playbook_after(
        "jobqueue.redis : configure | Write the ACL users file", *limit, *added, changes=len(targets)
    )
    for host in targets:
        assert newcomer[0] in sh(host, f"cat /etc/{targets[host].flavor}/users.acl"), (
            "the lost run wrote no user"
        )
        assert not logs_in(host), f"the lost run loaded the users on {host}"
    converge(*limit, *added)
    for host in targets:
        assert logs_in(host), f"{newcomer[0]} refused on {host} after the next run"
    _unchanged(*limit, *added)
    converge(*limit)  # the user removed again, as the inventory has it
    for host in targets:
        assert not logs_in(host)
