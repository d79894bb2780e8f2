#!/usr/bin/python
"""Report the state of a Redis/Valkey Sentinel group and what is wrong with it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_ha_status
short_description: Read who is master, each replica's lag and each Sentinel's view, and flag disagreements
author: kit maintainers
description:
- Asks every Sentinel in O(sentinels) which master it names for O(master_name), with its configuration
  epoch, the replicas and Sentinels it knows, and whether it could fail the master over now
  (C(SENTINEL CKQUORUM), whether it reaches enough of its peers for the quorum and a majority); asks every
  data node in O(nodes) its role, the master it follows, its link, replication offset and key
  count, whether its last AOF write and RDB save worked, and how many clients are logged in as
  O(aof_guard_user).
- Returns the findings and a list of O(problems), such as no master or two masters, a node or a Sentinel
  that does not answer, a Sentinel that names another master than the others or than the node that
  is master, Sentinels at different epochs, not knowing each other or knowing one that is not in
  O(sentinels), a Sentinel that could not fail
  the master over (its peers unreachable or refusing its login), a replica following another
  node, with its link down or more than O(max_lag_bytes) behind, a master that is not one of O(nodes),
  a node that cannot write its disk, a node whose AOF guard is not logged in.
- Never changes anything; never fails on what it finds (the caller decides).
extends_documentation_fragment:
- kit.jobqueue.sentinel_group
options:
  nodes:
    description: Addresses of every data node of the inventory.
    type: list
    elements: str
    required: true
  node_port:
    description: Data nodes' port.
    type: int
    default: 6379
  node_user:
    description: ACL user allowed INFO and DBSIZE on the data nodes.
    type: str
  max_lag_bytes:
    description: A replica further behind its master's offset than this is out of sync.
    type: int
    default: 1048576
  aof_guard_user:
    description:
    - The ACL user of each node's AOF guard (the role's C(kit-aof-guard.service)). A node with no
      client logged in as this user is a problem. Not checked when omitted. O(node_user) needs
      C(CLIENT LIST) for it.
    type: str
"""

EXAMPLES = r"""
- name: Read the state of the group
  kit.jobqueue.redis_ha_status:
    master_name: kit
    sentinels: [10.0.0.11, 10.0.0.12, 10.0.0.21]
    nodes: [10.0.0.11, 10.0.0.12]
    sentinel_password: "{{ vault_redis_sentinel_password }}"
    node_user: kit-admin
    node_password: "{{ vault_redis_admin_password }}"
  register: state
"""

RETURN = r"""
master:
  description: "The master every answering node and Sentinel agrees on (ip:port), or null."
  type: str
  returned: always
nodes:
  description: >-
    Per data node: address, role, master and link (replicas), offset, lag_bytes, key_count, disk
    (C(ok), or which of the last AOF write and RDB save failed) and aof_guards (clients logged in as
    O(aof_guard_user), when given).
  type: list
  elements: dict
  returned: always
sentinels:
  description: >-
    Per Sentinel: address, master, epoch, quorum, sentinels it knows (itself too), replicas, peers
    (the other Sentinels it knows, ip:port), and ckquorum
    (C(ok), or the Sentinel's answer to C(SENTINEL CKQUORUM)).
  type: list
  elements: dict
  returned: always
problems:
  description: "What is wrong, one sentence each; empty when all agree."
  type: list
  elements: str
  returned: always
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kit.jobqueue.plugins.module_utils import kit_redis


def read_sentinel(p: dict, address: str) -> dict[str, Any]:
    seen: dict[str, Any] = {"address": address}
    passwords = [p["sentinel_password"], *p["sentinel_previous_passwords"]]
    try:
        with kit_redis.connect_first(
            address, p["sentinel_port"], None, passwords, 2.0, kit_redis.tls_context(p["tls_ca_file"])
        ) as conn:
            state = kit_redis.pairs(conn.command("SENTINEL", "MASTER", p["master_name"]))
            replicas = conn.command("SENTINEL", "REPLICAS", p["master_name"])
            peers = conn.command("SENTINEL", "SENTINELS", p["master_name"])
            try:  # whether it reaches enough of its peers to be elected and fail the master over
                conn.command("SENTINEL", "CKQUORUM", p["master_name"])
                seen["ckquorum"] = "ok"
            except kit_redis.ReplyError as refused:
                seen["ckquorum"] = str(refused)
    except (OSError, kit_redis.ReplyError) as error:
        return {**seen, "error": str(error)}
    return {
        **seen,
        "master": f"{state['ip']}:{state['port']}",
        "flags": state.get("flags"),
        "epoch": int(state.get("config-epoch", 0)),
        "quorum": int(state.get("quorum", 0)),
        "sentinels": int(state.get("num-other-sentinels", 0)) + 1,
        "replicas": sorted(f"{r['ip']}:{r['port']}" for r in map(kit_redis.pairs, replicas)),
        "peers": sorted(f"{r['ip']}:{r['port']}" for r in map(kit_redis.pairs, peers)),
    }


def read_node(p: dict, address: str) -> dict[str, Any]:
    where = f"{address}:{p['node_port']}"
    passwords = [p["node_password"], *p["node_previous_passwords"]]
    try:
        with kit_redis.connect_first(
            address, p["node_port"], p["node_user"], passwords, 2.0, kit_redis.tls_context(p["tls_ca_file"])
        ) as conn:
            info = kit_redis.parse_info(conn.command("INFO", "replication"))
            keys = conn.command("DBSIZE")
            persistence = kit_redis.parse_info(conn.command("INFO", "persistence"))
            try:
                clients = conn.command("CLIENT", "LIST") if p["aof_guard_user"] else ""
            except kit_redis.ReplyError as error:  # node_user may not list clients: not a dead node
                clients = error
    except (OSError, kit_redis.ReplyError) as error:
        return {"address": where, "error": str(error)}
    seen: dict[str, Any] = {
        "address": where,
        "role": "master" if info.get("role") == "master" else "replica",
        "offset": int(info.get("master_repl_offset", 0)),
        "key_count": keys,
        "disk": disk_state(persistence),
    }
    if isinstance(clients, kit_redis.ReplyError):
        seen["aof_guards_error"] = str(clients)
    elif p["aof_guard_user"]:
        seen["aof_guards"] = logged_in(clients, p["aof_guard_user"])
    if seen["role"] == "replica":
        seen.update(
            master=f"{info.get('master_host')}:{info.get('master_port')}",
            link=info.get("master_link_status"),
            offset=int(info.get("slave_repl_offset", 0)),
        )
    return seen


def disk_state(info: dict[str, str]) -> str:
    """INFO persistence: "ok", or which of the last AOF write (when the AOF is on) and the last
    RDB save failed (the same reading as the app's /metrics fridge_redis_disk_writes_ok)."""
    failed = []
    if info.get("aof_enabled") == "1" and info.get("aof_last_write_status") != "ok":
        failed.append("its last AOF write failed")
    if info.get("rdb_last_bgsave_status") != "ok":
        failed.append("its last RDB save failed")
    return " and ".join(failed) or "ok"


def logged_in(client_list: str | bytes, user: str) -> int:
    """How many clients of a CLIENT LIST reply are logged in as `user`."""
    text = client_list.decode() if isinstance(client_list, bytes) else client_list
    return sum(f" user={user} " in f" {line} " for line in text.splitlines())


def assess(
    sentinels: list[dict[str, Any]], nodes: list[dict[str, Any]], max_lag_bytes: int
) -> tuple[str | None, list[str]]:
    """The agreed master (or None) and every problem found, from what was read. Fills in each
    replica's lag_bytes."""
    problems = [f"data node {n['address']} does not answer: {n['error']}" for n in nodes if "error" in n]
    problems += [f"Sentinel {s['address']} does not answer: {s['error']}" for s in sentinels if "error" in s]
    masters = [n["address"] for n in nodes if n.get("role") == "master"]
    if not masters:
        problems.append("no data node is master")
    elif len(masters) > 1:
        problems.append(f"{len(masters)} data nodes are master: {', '.join(masters)}")
    answering = [s for s in sentinels if "error" not in s]
    named = sorted({s["master"] for s in answering})
    if len(named) > 1:
        views = ", ".join(f"{s['address']} names {s['master']}" for s in answering)
        problems.append(f"the Sentinels name different masters: {views}")
    master = masters[0] if len(masters) == 1 else None
    group = {x["address"] for x in sentinels}
    for s in answering:
        if master and s["master"] != master and len(named) == 1:
            problems.append(f"Sentinel {s['address']} names {s['master']}, but {master} is the master")
        if s["sentinels"] < len(sentinels):
            problems.append(
                f"Sentinel {s['address']} knows {s['sentinels']} of the {len(sentinels)} Sentinels"
            )
        outside = [a for a in s.get("peers", []) if a.rsplit(":", 1)[0] not in group]
        if outside or ("peers" not in s and s["sentinels"] > len(sentinels)):
            named = f"{', '.join(outside)}: " if outside else ""
            problems.append(
                f"Sentinel {s['address']} knows Sentinels outside the group ({named}{s['sentinels']} "
                f"for {len(sentinels)}): one gone still counts among the voters of a failover (once "
                "it is seen down, site.yml makes every Sentinel forget it)"
            )
        if s.get("ckquorum", "ok") != "ok":
            problems.append(f"Sentinel {s['address']} could not fail the master over now: {s['ckquorum']}")
        if "o_down" in str(s.get("flags")) or "s_down" in str(s.get("flags")):
            problems.append(f"Sentinel {s['address']} sees its master down ({s['flags']})")
    epochs = sorted({s["epoch"] for s in answering})
    if len(epochs) > 1:
        problems.append(
            "the Sentinels are at different epochs: "
            + ", ".join(f"{s['address']} {s['epoch']}" for s in answering)
        )
    if named and len(named) == 1 and named[0] not in {n["address"] for n in nodes}:
        problems.append(f"the Sentinels' master {named[0]} is not one of the inventory's data nodes")
    for n in nodes:
        if n.get("disk", "ok") != "ok":
            problems.append(f"data node {n['address']} cannot write its disk: {n['disk']}")
        if "aof_guards_error" in n:
            error = n["aof_guards_error"]
            problems.append(f"data node {n['address']}: its AOF guards cannot be counted: {error}")
        if n.get("aof_guards") == 0:
            problems.append(
                f"data node {n['address']}: no AOF guard is logged in (kit-aof-guard.service: after a"
                " full disk, nothing rewrites the AOF before a second one can damage it)"
            )
    by_address = {n["address"]: n for n in nodes}
    for n in nodes:
        if n.get("role") != "replica":
            continue
        if master and n["master"] != master:
            problems.append(f"replica {n['address']} follows {n['master']}, not the master {master}")
        elif n.get("link") != "up":
            problems.append(f"replica {n['address']}: link to {n['master']} is {n.get('link')}")
        elif n["master"] in by_address:
            n["lag_bytes"] = max(0, by_address[n["master"]]["offset"] - n["offset"])
            if n["lag_bytes"] > max_lag_bytes:
                problems.append(f"replica {n['address']} is {n['lag_bytes']} bytes behind {n['master']}")
    return (master if not problems or (master and named == [master]) else None), problems


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **kit_redis.SENTINEL_GROUP_ARGUMENT_SPEC,
            "nodes": {"type": "list", "elements": "str", "required": True},
            "node_port": {"type": "int", "default": 6379},
            "max_lag_bytes": {"type": "int", "default": 1048576},
            "aof_guard_user": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    sentinels = [read_sentinel(p, a) for a in p["sentinels"]]
    nodes = [read_node(p, a) for a in p["nodes"]]
    master, problems = assess(sentinels, nodes, p["max_lag_bytes"])
    module.exit_json(changed=False, master=master, nodes=nodes, sentinels=sentinels, problems=problems)


if __name__ == "__main__":
    main()
