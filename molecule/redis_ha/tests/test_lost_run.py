"""A run lost between a change and the restart it notified: the next run makes the restart.

A replica of each group (Redis 7 on Debian 12, Valkey 8 on Debian 13) and its host's Sentinel.
"""

from __future__ import annotations

from kit_checks import hosts_in, kill_playbook_after, load_group, play_recap, run_playbook, wait_for
from kit_faults import loaded, sh

_HARDEN = "install | Harden the unit beyond Debian's defaults"


def _main_pid(host: str, unit: str) -> str:
    return sh(host, f"systemctl show -p MainPID --value {unit}").strip()


def test_a_run_lost_before_its_restart_leaves_no_unit_change_unapplied():
    """A run that changes a unit's hardening drop-in, and is lost before its handler restarts the
    server (the controller's connection cut, a task failing after it), left the server confined
    as before; the next run found the file as it wanted it and changed nothing, for good. Now each
    run first compares what the server and Sentinel read only at start (drop-ins, the bootstrap
    config's stamp, Sentinel's certificates) with when they started, and restarts them."""
    groups = [load_group(hosts_in(name)) for name in ("group_a", "group_b")]
    targets = {}  # host -> its group, the replica of each group
    for group in groups:
        master = group.current_master()
        replica = next(a for a in group.nodes.values() if a != master)
        targets[group.host_of(replica)] = group
    limit = ("--limit", ",".join(targets))
    units = {host: (g.service, f"{g.flavor}-sentinel") for host, g in targets.items()}
    before = {host: tuple(_main_pid(host, u) for u in pair) for host, pair in units.items()}

    def dropin(unit: str) -> str:
        return f"/etc/systemd/system/{unit}.service.d/kit-hardening.conf"

    # 1. The server's drop-in changes (here by hand, as a new version of the kit would), and the
    # run that writes it back is lost at once.
    for host, (server, _) in units.items():
        sh(host, f"echo '# changed by hand' >> {dropin(server)}")
    kill_playbook_after(f"jobqueue.redis : {_HARDEN}", *limit, changes=len(targets))
    for host, (server, _) in units.items():
        assert "changed by hand" not in sh(host, f"cat {dropin(server)}"), "not written back"
        assert _main_pid(host, server) == before[host][0], f"{server} on {host} restarted by a lost run"

    # 2. Sentinel's drop-in too, in a run lost after the data nodes' play: that play restarted
    # each server, its drop-in newer than its start.
    for host, (_, sentinel) in units.items():
        sh(host, f"echo '# changed by hand' >> {dropin(sentinel)}")
    said = kill_playbook_after(f"jobqueue.redis_sentinel : {_HARDEN}", *limit, changes=len(targets))
    for host, (server, sentinel) in units.items():
        assert f"{server} started before {dropin(server)} changed" in " ".join(said.split()), said[-3000:]
        assert _main_pid(host, server) not in ("0", before[host][0]), f"{server} on {host} not restarted"
        assert _main_pid(host, sentinel) == before[host][1], f"{sentinel} on {host} restarted by a lost run"
        wait_for(lambda host=host: loaded(targets[host], targets[host].nodes[host]), 60, f"{host} to load")

    # 3. The next run restarts each Sentinel; the one after changes nothing.
    run = run_playbook(*limit)
    assert run.returncode == 0, run.stdout[-5000:]
    for host, (_, sentinel) in units.items():
        assert f"{sentinel} started before {dropin(sentinel)} changed" in " ".join(run.stdout.split())
        assert _main_pid(host, sentinel) not in ("0", before[host][1]), f"{sentinel} on {host} not restarted"
    again = run_playbook(*limit)
    recap = play_recap(again.stdout)
    assert again.returncode == 0, again.stdout[-5000:]
    changed = {host: recap[host]["changed"] for host in targets}
    assert changed == dict.fromkeys(targets, 0), again.stdout[-5000:]
