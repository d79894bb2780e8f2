#!/usr/bin/python
"""Find the current Redis master: ask the Sentinels first, the data nodes second."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_ha_master
short_description: Find the current master of a Sentinel-managed Redis or Valkey group
author: kit maintainers
description:
- Asks every reachable Sentinel for the master of O(master_name) and keeps the answer with the highest
  configuration epoch, so that a re-run after a failover follows the new master.
- When no Sentinel knows the group yet (first bootstrap) or none can be asked, reads C(INFO replication) on
  the data nodes; a node that replicas point to is the master, else the only node with replicas, else the
  only node that holds data (a master whose replicas are gone must not replicate from an empty node).
- When the nodes are still unconfigured standalone servers holding no data, answers O(bootstrap_master).
- Fails, naming them, when several standalone nodes hold data and no Sentinel answers.
- Fails, naming the Sentinel and the address, when any Sentinel names a master that is not one of
  O(nodes) (for instance one reconfigured by hand or by an attacker), or when the master found otherwise
  is not. The roles would otherwise make every node replicate from it and send it the replication
  password.
- Read-only; never reports a change.
extends_documentation_fragment:
- kit.jobqueue.sentinel_group
options:
  sentinels:
    description: Sentinel addresses.
    type: list
    elements: str
    default: []
  nodes:
    description: Data node addresses (the inventory's); the master must be one of them.
    type: list
    elements: str
    default: []
  node_port:
    description: Data node port.
    type: int
    default: 6379
  node_user:
    description: ACL user allowed to run INFO on the nodes.
    type: str
  bootstrap_master:
    description: Master to use when nothing is configured yet.
    type: str
    required: true
  timeout:
    description: Connect and reply timeout in seconds.
    type: float
    default: 1.0
"""

RETURN = r"""
master_host:
  description: "Address of the current master."
  type: str
  returned: always
master_port:
  description: "Port of the current master."
  type: int
  returned: always
source:
  description: "How it was found: sentinel, replication or bootstrap."
  type: str
  returned: always
sentinels_answered:
  description: "Sentinels that know the group."
  type: int
  returned: always
not_answering:
  description: "Addresses that did not answer."
  type: list
  returned: always
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kit.jobqueue.plugins.module_utils import kit_redis


def ask_sentinels(params: dict, unreachable: list[str]) -> list[dict]:
    answers = []
    for address in params["sentinels"]:
        try:
            with kit_redis.connect_first(
                address,
                params["sentinel_port"],
                None,
                [params["sentinel_password"], *params["sentinel_previous_passwords"]],
                params["timeout"],
                params["tls"],
            ) as conn:
                state = kit_redis.pairs(conn.command("SENTINEL", "MASTER", params["master_name"]))
        except kit_redis.ReplyError as error:
            if "no such master" in str(error).lower():
                continue
            unreachable.append(f"{address}:{params['sentinel_port']} ({error})")
            continue
        except OSError as error:
            unreachable.append(f"{address}:{params['sentinel_port']} ({error})")
            continue
        answers.append(
            {
                "host": state["ip"],
                "port": int(state["port"]),
                "epoch": int(state.get("config-epoch", 0)),
                "sentinel": f"{address}:{params['sentinel_port']}",
            }
        )
    return answers


class Ambiguous(Exception):
    """Several data nodes hold data and none replicates from another: no master to pick."""


def ask_nodes(params: dict, unreachable: list[str]) -> tuple[str, int] | None:
    """The master the replicas follow; else the one node with replicas; else the one node that
    holds data (a master the Sentinels promoted, whose replicas are gone or new, must not be
    made to replicate from an empty bootstrap node: its jobs would be wiped); None when no node
    holds any (nothing configured yet). Ambiguous when several hold data on their own."""
    masters: list[str] = []
    holders: list[tuple[str, int]] = []  # standalone nodes holding data, with their key counts
    pointed_to: list[tuple[str, int]] = []
    for address in params["nodes"]:
        try:
            with kit_redis.connect_any_auth(
                address,
                params["node_port"],
                params["node_user"],
                [params["node_password"], *params["node_previous_passwords"]],
                params["timeout"],
                params["tls"],
            ) as conn:
                info = kit_redis.parse_info(conn.command("INFO", "replication"))
                # INFO, not DBSIZE: the Sentinels' user on the nodes may run INFO alone.
                keyspace = kit_redis.parse_info(conn.command("INFO", "keyspace"))
                keys = sum(int(v.split(",")[0].removeprefix("keys=")) for v in keyspace.values())
        except (OSError, kit_redis.ReplyError) as error:
            unreachable.append(f"{address}:{params['node_port']} ({error})")
            continue
        if info.get("role") == "slave":
            pointed_to.append((info["master_host"], int(info["master_port"])))
        elif int(info.get("connected_slaves", "0")) > 0:
            masters.append(address)
        elif keys:
            holders.append((address, keys))
    if pointed_to:
        # The address most replicas follow; ties go to the first one seen.
        return max(pointed_to, key=pointed_to.count)
    if len(masters) == 1:
        return masters[0], params["node_port"]
    if len(holders) > 1:
        raise Ambiguous(", ".join(f"{address} ({keys} keys)" for address, keys in holders))
    if holders:
        return holders[0][0], params["node_port"]
    return None


def _same_host(a: str, b: str) -> bool:
    """Equal addresses, whatever their spelling (fd00::1 is fd00:0::1)."""
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def foreign_master(params: dict, named: list[tuple[str, int, str]]) -> str | None:
    """A master that is not one of the inventory's data nodes is refused, whoever names it
    (each Sentinel is checked, not only the answer the run follows): someone who could
    reconfigure a Sentinel (SENTINEL MONITOR) must not get every node to replicate from, and
    send the replication password to, an address of their choosing. Without a node list
    there is nothing to check against."""
    if not params["nodes"]:
        return None
    port = params["node_port"]
    strangers = [
        f"{who} names {host}:{at}"
        for host, at, who in named
        if not (at == port and any(_same_host(host, node) for node in params["nodes"]))
    ]
    if not strangers:
        return None
    return (
        f"{'; '.join(strangers)} as master of {params['master_name']}, which is not one of the "
        f"inventory's data nodes ({', '.join(f'{n}:{port}' for n in params['nodes'])}); refusing to "
        "follow it. If a Sentinel was reconfigured by hand or by an attacker, fix it "
        f"(SENTINEL REMOVE {params['master_name']} on it, then re-run the playbook)."
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **kit_redis.SENTINEL_GROUP_ARGUMENT_SPEC,
            "sentinels": {"type": "list", "elements": "str", "default": []},
            "nodes": {"type": "list", "elements": "str", "default": []},
            "node_port": {"type": "int", "default": 6379},
            "bootstrap_master": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 1.0},
        },
        supports_check_mode=True,
    )
    params = dict(module.params, tls=kit_redis.tls_context(module.params["tls_ca_file"]))
    unreachable: list[str] = []
    answers = ask_sentinels(params, unreachable)
    result: dict = {"changed": False, "sentinels_answered": len(answers)}
    if answers:
        said = [(a["host"], a["port"], a["epoch"]) for a in answers]
        best = max(answers, key=lambda a: (a["epoch"], said.count((a["host"], a["port"], a["epoch"]))))
        result.update(master_host=best["host"], master_port=best["port"], source="sentinel")
    else:
        try:
            found = ask_nodes(params, unreachable)
        except Ambiguous as holders:
            module.fail_json(
                msg=f"No Sentinel names the master of {params['master_name']} (not answering: "
                f"{', '.join(unreachable) or 'none'}), and several data nodes hold data while none "
                f"replicates from another: {holders}. Refusing to pick one: the others' data would "
                "be replaced. Bring the Sentinels back (or fix their login) and re-run, or keep the "
                "node whose data is wanted and empty the others.",
                **result,
            )
        if found:
            result.update(master_host=found[0], master_port=found[1], source="replication")
        else:
            result.update(
                master_host=params["bootstrap_master"],
                master_port=params["node_port"],
                source="bootstrap",
            )
    result["not_answering"] = unreachable
    named = [(a["host"], a["port"], f"the Sentinel at {a['sentinel']}") for a in answers]
    if not answers:
        named.append((result["master_host"], result["master_port"], f"the {result['source']}"))
    stranger = foreign_master(params, named)
    if stranger:
        module.fail_json(msg=stranger, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
