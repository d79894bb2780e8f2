#!/usr/bin/python
"""Planned switchover of a Sentinel-managed group to a chosen (or any) replica in sync."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_failover
short_description: Move the master of a Sentinel-managed group to a replica, on purpose
author: kit maintainers
description:
- Asks every Sentinel who the master is and refuses to act when they disagree or fewer than a majority
  answer.
- Checks that the target replica (O(target), or any replica when omitted) is linked to the master
  and at most O(max_lag_bytes) behind it; refuses, naming it, when it is not.
- With a target and other replicas, gives those a C(replica-priority) of 0 for the switchover (restored
  afterwards) so that Sentinel can only choose the target.
- Waits (up to 12 s) until every Sentinel that answers sees the target as a healthy replica. One that
  still sees it as a master (the old master of a switchover a moment ago) would turn it back into a
  replica mid-failover.
- Runs C(SENTINEL FAILOVER), then waits until every Sentinel names the new master, the new master
  reports itself master and the old one is its replica with the link up.
- Once every Sentinel that answers (a majority) names the new master and sees it up, and it reports
  itself master, turns the old master into its replica as the Sentinels would (C(REPLICAOF),
  C(CONFIG REWRITE), its clients closed), instead of waiting the 8-10 s they take to do it
  themselves; refused, it warns and leaves it to them.
- Does nothing (C(changed=false)) when the target already is the master.
extends_documentation_fragment:
- kit.jobqueue.sentinel_group
options:
  node_user:
    description: ACL user allowed INFO, CONFIG, REPLICAOF, MULTI/EXEC and CLIENT KILL on the data nodes.
    type: str
  target:
    description: Address of the replica to promote; any replica in sync when omitted.
    type: str
  max_lag_bytes:
    description: How far behind the master (replication offset) the target may be.
    type: int
    default: 1048576
  timeout:
    description: Seconds to wait for every Sentinel and both nodes to agree.
    type: float
    default: 60
"""

RETURN = r"""
old_master:
  description: "Master before the run (ip:port)."
  type: str
  returned: always
new_master:
  description: "Master after the run (ip:port)."
  type: str
  returned: always
seconds:
  description: "How long the switchover took until everyone agreed."
  type: float
  returned: changed
failover_sent:
  description: "Whether a Sentinel was asked to fail over (false: refused before, nothing moved)."
  type: bool
  returned: always
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kit.jobqueue.plugins.module_utils import kit_redis

# Seconds the Sentinels may take to see a replica again (INFO every 10 s) before a refusal.
SENTINEL_REFRESH = 12.0


class Refused(Exception):
    """The switchover would not be safe; the message says why."""


class Group:
    def __init__(self, p: dict) -> None:
        self.p = p
        self.tls = kit_redis.tls_context(p["tls_ca_file"])

    def sentinel(self, address: str):
        passwords = [self.p["sentinel_password"], *self.p["sentinel_previous_passwords"]]
        return kit_redis.connect_first(address, self.p["sentinel_port"], None, passwords, 2.0, self.tls)

    def node(self, host: str, port: int):
        passwords = [self.p["node_password"], *self.p["node_previous_passwords"]]
        return kit_redis.connect_first(host, port, self.p["node_user"], passwords, 2.0, self.tls)

    def named(self) -> dict[str, str | None]:
        """What each Sentinel says the master is ("ip:port"), None when it does not answer."""
        found: dict[str, str | None] = {}
        for address in self.p["sentinels"]:
            try:
                with self.sentinel(address) as conn:
                    state = kit_redis.pairs(conn.command("SENTINEL", "MASTER", self.p["master_name"]))
                found[address] = f"{state['ip']}:{state['port']}"
            except (OSError, kit_redis.ReplyError):
                found[address] = None
        return found

    def agreed_master(self) -> str:
        named = self.named()
        answers = {a for a in named.values() if a}
        answered = sum(1 for a in named.values() if a)
        if len(answers) != 1 or answered < len(named) // 2 + 1:
            raise Refused(f"the Sentinels do not agree on the master: {named}")
        return answers.pop()

    def replicas(self) -> list[dict]:
        for address in self.p["sentinels"]:
            try:
                with self.sentinel(address) as conn:
                    return [
                        kit_redis.pairs(r)
                        for r in conn.command("SENTINEL", "REPLICAS", self.p["master_name"])
                    ]
            except (OSError, kit_redis.ReplyError):
                continue
        raise Refused("no Sentinel listed the replicas")

    def unsettled(self, target: str) -> list[str]:
        """The Sentinels that do not yet see `target` as a healthy replica reporting the replica
        role. One that last saw it as a master (the old master of a switchover a moment ago: a
        Sentinel reads a replica's INFO every 10 s) turns it back into a replica as soon as it is
        promoted, and the failover aborts (a drill: two switchovers 20 s apart). A Sentinel that
        does not answer is left out: the others still make the quorum."""
        waiting = []
        for address in self.p["sentinels"]:
            try:
                with self.sentinel(address) as conn:
                    views = conn.command("SENTINEL", "REPLICAS", self.p["master_name"])
            except (OSError, kit_redis.ReplyError):
                continue
            view = next((v for v in map(kit_redis.pairs, views) if f"{v['ip']}:{v['port']}" == target), None)
            if view is None or view.get("role-reported") != "slave" or not healthy(view):
                waiting.append(address)
        return waiting

    def info(self, where: str) -> dict[str, str]:
        host, port = where.rsplit(":", 1)
        with self.node(host, int(port)) as conn:
            return kit_redis.parse_info(conn.command("INFO", "replication"))

    def demote(self, old: str, target: str | None) -> bool:
        """Make the old master a replica of the new one, as its Sentinels would (their
        +convert-to-slave: REPLICAOF, CONFIG REWRITE so a restart keeps it, and its clients
        closed so that they ask the Sentinels again), once a majority of Sentinels answer, all
        name the new master (the target, when one was given) and see it up, no failover under
        way, and it reports itself master. The Sentinels wait 8 s after they first see the old
        master still claiming the role (and read a replica's INFO every 10 s): a planned
        switchover then took 11-12 s, most of it waiting for them. Returns whether there is
        nothing more to do: False while the Sentinels have not all named the new master yet."""
        views = []
        for address in self.p["sentinels"]:
            try:
                with self.sentinel(address) as conn:
                    views.append(kit_redis.pairs(conn.command("SENTINEL", "MASTER", self.p["master_name"])))
            except (OSError, kit_redis.ReplyError):
                continue
        named = {f"{v['ip']}:{v['port']}" for v in views}
        if len(views) < len(self.p["sentinels"]) // 2 + 1 or len(named) != 1:
            return False
        new = named.pop()
        if new == old or (target and new != target):
            return False
        if any(str(v.get("flags")) != "master" for v in views):  # s_down, o_down, failover_in_progress
            return False
        if self.info(old).get("role") != "master":
            return True  # the Sentinels have done it
        if self.info(new).get("role") != "master":
            return False
        host, port = old.rsplit(":", 1)
        new_host, new_port = new.rsplit(":", 1)
        steps = [
            ("REPLICAOF", new_host, new_port),
            ("CONFIG", "REWRITE"),
            ("CLIENT", "KILL", "TYPE", "normal"),  # SKIPME yes: not this connection
            ("CLIENT", "KILL", "TYPE", "pubsub"),
        ]
        with self.node(host, int(port)) as conn:
            conn.command("MULTI")
            for step in steps:
                try:
                    conn.command(*step)  # QUEUED; a refusal here discards the transaction
                except kit_redis.ReplyError as error:
                    name = " ".join(step[:1] if step[0] == "REPLICAOF" else step[:2])
                    raise kit_redis.ReplyError(f"{name} refused: {error}") from None
            try:
                conn.command("EXEC")
            except kit_redis.ReplyError as error:  # a step failed as it ran; those before it took effect
                raise kit_redis.ReplyError(f"REPLICAOF {new}, then CONFIG REWRITE: {error}") from None
        return True

    def set_priority(self, where: str, value: str) -> str:
        """Set a node's replica-priority; return the one it had."""
        host, port = where.rsplit(":", 1)
        with self.node(host, int(port)) as conn:
            before = conn.command("CONFIG", "GET", "replica-priority")[1]
            conn.command("CONFIG", "SET", "replica-priority", value)
        return str(before)


def healthy(replica: dict) -> bool:
    flags = set(str(replica.get("flags", "")).split(","))
    return not flags & {"s_down", "o_down", "disconnected"} and replica.get("master-link-status") == "ok"


def choose(group: Group, master: str) -> tuple[str, list[str]]:
    """The replica to promote and the other healthy ones; refuses a target not in sync."""
    replicas = {f"{r['ip']}:{r['port']}": r for r in group.replicas()}
    candidates = [a for a, r in replicas.items() if healthy(r) and r.get("slave-priority") != "0"]
    wanted = group.p["target"]
    if wanted:
        matches = [a for a in replicas if a.rsplit(":", 1)[0] == wanted]
        if not matches:
            raise Refused(
                f"{wanted} is not a replica of {master} (replicas: {', '.join(replicas) or 'none'})"
            )
        target = matches[0]
        if target not in candidates:
            state = replicas[target]
            raise Refused(
                f"{target} cannot be promoted: {state.get('flags')}, link "
                f"{state.get('master-link-status')}, priority {state.get('slave-priority')}"
            )
    elif candidates:
        target = candidates[0]
    else:
        raise Refused(f"no replica of {master} can be promoted (replicas: {', '.join(replicas) or 'none'})")
    lag = int(group.info(master).get("master_repl_offset", 0)) - int(
        group.info(target).get("slave_repl_offset", 0)
    )
    link = group.info(target).get("master_link_status")
    if link != "up" or lag > group.p["max_lag_bytes"]:
        raise Refused(
            f"{target} is not in sync with {master} (link {link}, {lag} bytes behind; "
            f"max_lag_bytes={group.p['max_lag_bytes']})"
        )
    return target, [a for a in candidates if a != target]


def agree(group: Group, old: str, new: str | None) -> str | None:
    """The new master once every Sentinel that answers names it, and they are a majority (the
    rule the switchover started under: agreed_master), it is master and the old one its
    replica. A Sentinel that is down (its host in maintenance) learns the new master when it
    is back; waiting for it moved the master, then reported a failure (and stopped a rolling
    restart halfway)."""
    named = group.named()
    answers = {a for a in named.values() if a}
    answered = sum(1 for a in named.values() if a)
    if len(answers) != 1 or answered < len(named) // 2 + 1 or old in answers:
        return None
    now = answers.pop()
    if new and now != new:
        return None
    if group.info(now).get("role") != "master":
        return None
    former = group.info(old)
    following = f"{former.get('master_host')}:{former.get('master_port')}" == now
    return (
        now
        if former.get("role") == "slave" and following and former.get("master_link_status") == "up"
        else None
    )


def switch(module: AnsibleModule, group: Group, result: dict) -> None:
    master = group.agreed_master()
    result["old_master"] = result["new_master"] = master
    if group.p["target"] and master.rsplit(":", 1)[0] == group.p["target"]:
        return
    # A replica restarted a moment ago (a rolling restart), or the old master of a switchover a
    # moment ago, is in sync at once, but the Sentinels refresh their view of a replica every
    # 10 s: give them that long before refusing.
    settled = time.monotonic() + min(group.p["timeout"], SENTINEL_REFRESH)
    while True:
        try:
            target, others = choose(group, master)
            if waiting := group.unsettled(target):
                raise Refused(f"{target} is not yet a settled replica for the Sentinels {', '.join(waiting)}")
            break
        except Refused:
            if time.monotonic() > settled:
                raise
            time.sleep(0.5)
    if module.check_mode:
        result.update(changed=True, new_master=target)
        return
    lowered: dict[str, str] = {}  # address -> the priority it had
    started = time.monotonic()
    try:
        for address in others if group.p["target"] else []:
            lowered[address] = group.set_priority(address, "0")
        reached = False  # a Sentinel may have started it: the command was cut, not refused
        for address in group.p["sentinels"]:
            try:
                result["failover_sent"] = True  # from here the master may be on its way elsewhere
                with group.sentinel(address) as conn:
                    conn.command("SENTINEL", "FAILOVER", group.p["master_name"])
                break
            except kit_redis.ReplyError as error:  # refused: this Sentinel started nothing
                result["failover_sent"] = reached
                result.setdefault("failover_errors", []).append(f"{address}: {error}")
            except OSError as error:
                reached = True
                result.setdefault("failover_errors", []).append(f"{address}: {error}")
        else:
            raise Refused(f"no Sentinel started the failover: {result['failover_errors']}")
        deadline = started + group.p["timeout"]
        demoted = False
        while True:
            try:
                now = agree(group, master, None if not group.p["target"] else target)
            except (OSError, kit_redis.ReplyError):
                now = None
            if not now and not demoted:
                try:
                    demoted = group.demote(master, target if group.p["target"] else None)
                except (OSError, kit_redis.ReplyError) as error:  # the Sentinels do it in 8-10 s
                    module.warn(f"the Sentinels are left to turn {master} into a replica: {error}")
                    demoted = True
            if now:
                break
            if time.monotonic() > deadline:
                raise Refused(
                    f"no agreement on a new master within {group.p['timeout']:.0f} s: {group.named()}"
                )
            time.sleep(0.2)
    finally:
        for address, priority in lowered.items():
            try:
                group.set_priority(address, priority)
            except (OSError, kit_redis.ReplyError) as error:
                module.warn(f"restore replica-priority on {address}: {error}")
    result.update(changed=True, new_master=now, seconds=round(time.monotonic() - started, 2))
    if silent := [address for address, said in group.named().items() if said is None]:
        module.warn(f"Sentinel(s) not answering: {', '.join(silent)}; each learns the new master once back")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **kit_redis.SENTINEL_GROUP_ARGUMENT_SPEC,
            "target": {"type": "str"},
            "max_lag_bytes": {"type": "int", "default": 1048576},
            "timeout": {"type": "float", "default": 60},
        },
        supports_check_mode=True,
    )
    result: dict = {"changed": False, "old_master": "", "new_master": "", "failover_sent": False}
    try:
        switch(module, Group(module.params), result)
    except Refused as error:
        module.fail_json(msg=str(error), **result)
    except (OSError, kit_redis.ReplyError) as error:
        module.fail_json(msg=f"{type(error).__name__}: {error}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
