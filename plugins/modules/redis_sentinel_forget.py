#!/usr/bin/python
"""Make a Sentinel forget the replicas and Sentinels that left the group (SENTINEL RESET, then wait)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_sentinel_forget
short_description: Make a Sentinel forget replicas that are no longer data nodes, and Sentinels gone
author: kit maintainers
extends_documentation_fragment:
- kit.jobqueue.login
- kit.jobqueue.login.tls
description:
- Lists the replicas the Sentinel knows for O(master_name). One whose address is not in O(nodes) (on
  O(node_port)) has left the group; Sentinel keeps it forever, shown down, and only C(SENTINEL RESET)
  clears it.
- With O(peers), a peer Sentinel whose address is not one of them and that this Sentinel sees down
  (C(s_down)) has left too (its host replaced or removed). Sentinel keeps it as well, and counts
  it among the voters of every failover (with three Sentinels and one gone but remembered, losing one more
  leaves two of four, no majority, and no failover). A peer that still answers is left alone (it
  votes as any other).
- Waits up to O(timeout) for such a replica to be seen down and fails, naming it, if it still answers
  (it would be found again at once in its master's C(INFO)); stop it first (C(playbooks/remove_replica.yml)).
- Refuses while a failover is under way or the master is seen down (a peer gone is then left for a
  later run).
- After the reset, waits until the Sentinel again knows every replica that answered before and as
  many peer Sentinels as answered before; fails after O(timeout) naming what is missing.
- Run it on one Sentinel at a time (the role's task has C(throttle) 1); the others keep the quorum
  meanwhile.
- Reports no change when the Sentinel knows no such replica or Sentinel.
options:
  login_host:
    description: Sentinel address.
    type: str
    default: 127.0.0.1
  login_port:
    description: Sentinel port.
    type: int
    default: 26379
  login_user:
    description: 'Sentinel user (default: its default user).'
    type: str
  master_name:
    description: Name of the monitored group.
    type: str
    required: true
  nodes:
    description: Addresses of the group's data nodes (the inventory's); any other replica is forgotten.
    type: list
    elements: str
    required: true
  node_port:
    description: Data node port.
    type: int
    default: 6379
  peers:
    description:
    - Addresses of every Sentinel of the group, this one included (the inventory's; on O(login_port)
      unless given as address:port). A peer not among them that is seen down is forgotten. Empty (the
      default) leaves the peers alone.
    type: list
    elements: str
    default: []
  timeout:
    description:
    - Seconds to wait for a leaving replica to be seen down, and then for the Sentinel to know the
      group again after the reset.
    type: float
    default: 60
"""

RETURN = r"""
forgotten:
  description: "Replicas (ip:port) the Sentinel no longer knows."
  type: list
  elements: str
  returned: always
forgotten_sentinels:
  description: "Peer Sentinels (ip:port), seen down and not in O(peers), that the Sentinel no longer knows."
  type: list
  elements: str
  returned: always
seconds:
  description: "How long it took, waits included."
  type: float
  returned: always
"""

import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kit.jobqueue.plugins.module_utils import kit_redis

GONE = {"s_down", "o_down", "disconnected"}


def view(conn: kit_redis.Connection, name: str) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """(SENTINEL MASTER's fields, {replica ip:port: its flags})."""
    master = {k: v for k, v in kit_redis.pairs(conn.command("SENTINEL", "MASTER", name)).items()}
    replicas = {}
    for entry in conn.command("SENTINEL", "REPLICAS", name):
        fields = kit_redis.pairs(entry)
        replicas[f"{fields['ip']}:{fields['port']}"] = set(str(fields["flags"]).split(","))
    return master, replicas


def strangers(replicas: dict[str, set[str]], nodes: list[str], port: int) -> list[str]:
    """Known replicas (or peers) that are not data nodes (or Sentinels) given as address, or address:port."""
    wanted = {node if ":" in node else f"{node}:{port}" for node in nodes}
    return sorted(address for address in replicas if address not in wanted)


def peer_view(conn: kit_redis.Connection, name: str) -> dict[str, set[str]]:
    """{peer Sentinel ip:port: its flags}, as this Sentinel sees them."""
    peers = {}
    for entry in conn.command("SENTINEL", "SENTINELS", name):
        fields = kit_redis.pairs(entry)
        peers[f"{fields['ip']}:{fields['port']}"] = set(str(fields["flags"]).split(","))
    return peers


# A peer seen down past down-after: one only "disconnected" (for about a second after any
# reconnection or restart) is no stranger gone.
PEER_DOWN = {"s_down", "o_down"}


def gone_peers(conn: kit_redis.Connection, p: dict) -> list[str]:
    """Peers that are not among p["peers"] and are seen down (none without p["peers"])."""
    if not p.get("peers"):
        return []
    peers = peer_view(conn, p["master_name"])
    return [a for a in strangers(peers, p["peers"], p["login_port"]) if peers[a] & PEER_DOWN]


def missing_after_reset(
    before_good: set[str], before_peers: int, master: dict[str, Any], replicas: dict[str, set[str]]
) -> list[str]:
    """`before_peers`: the peers it should know again (those it forgot not counted)."""
    missing = [f"replica {a}" for a in sorted(before_good) if a not in replicas or replicas[a] & GONE]
    peers = int(master.get("num-other-sentinels", 0))
    if peers < before_peers:
        missing.append(f"{before_peers - peers} peer Sentinel(s)")
    return missing


def forget(p: dict, check_mode: bool = False) -> dict:
    """Forget the replicas that are not data nodes, and the peers gone that are not Sentinels of
    the group; RuntimeError names what stops it."""
    name, deadline = p["master_name"], time.monotonic() + p["timeout"]
    with kit_redis.login(p) as conn:
        master, replicas = view(conn, name)
        leaving = strangers(replicas, p["nodes"], p["node_port"])
        flags = set(str(master.get("flags", "")).split(","))
        incident = flags & (GONE | {"failover_in_progress"})
        # A peer gone is left for a later run during an incident (a reset then would also drop
        # what this Sentinel knows of it); a replica that left stops the run, as it always did.
        gone = [] if incident else gone_peers(conn, p)
        if not leaving and not gone:
            return {"changed": False, "forgotten": [], "forgotten_sentinels": []}
        if incident:
            raise RuntimeError(
                f"Sentinel sees master {name} as {master.get('flags')}: not forgetting "
                f"{', '.join(leaving)} during an incident; re-run when the group is healthy."
            )
        while answering := [a for a in leaving if not replicas.get(a, GONE) & GONE]:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{', '.join(answering)} is not one of the data nodes ({', '.join(p['nodes'])}) "
                    "but still answers as a replica: stop it first (playbooks/remove_replica.yml "
                    "-e node=<host>, before removing the host from the inventory)."
                )
            time.sleep(0.5)
            master, replicas = view(conn, name)
        if check_mode:
            return {"changed": True, "forgotten": leaving, "forgotten_sentinels": gone}
        good = {a for a, f in replicas.items() if a not in leaving and not f & GONE}
        # Those that answer now: one down (restarting) is found again only once it is back.
        peers = sum(1 for flags in peer_view(conn, name).values() if not flags & GONE)
        conn.command("SENTINEL", "RESET", name)
        missing = ["the master"]
        while missing:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"after SENTINEL RESET this Sentinel does not know again: {', '.join(missing)} "
                    f"(within {p['timeout']:.0f}s)"
                )
            time.sleep(0.5)
            master, replicas = view(conn, name)
            back = [a for a in leaving if a in replicas]
            if back:
                raise RuntimeError(
                    f"{', '.join(back)} was found again after the reset: its master still lists it "
                    "as a replica. Stop it (playbooks/remove_replica.yml) and re-run."
                )
            missing = missing_after_reset(good, peers, master, replicas)
            back = [a for a in gone if a in peer_view(conn, name)]
            if back:
                raise RuntimeError(
                    f"Sentinel {', '.join(back)} was found again after the reset: it is running. "
                    "Stop it, or list it in the group's Sentinels (redis_sentinel_peers)."
                )
    return {"changed": True, "forgotten": leaving, "forgotten_sentinels": gone}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **kit_redis.LOGIN_ARGUMENT_SPEC,
            "login_port": {"type": "int", "default": 26379},
            "master_name": {"type": "str", "required": True},
            "nodes": {"type": "list", "elements": "str", "required": True},
            "node_port": {"type": "int", "default": 6379},
            "peers": {"type": "list", "elements": "str", "default": []},
            "timeout": {"type": "float", "default": 60},
        },
        supports_check_mode=True,
    )
    started = time.monotonic()
    try:
        result = forget(module.params, module.check_mode)
    except RuntimeError as error:
        module.fail_json(msg=str(error))
    except (OSError, kit_redis.ReplyError) as error:
        module.fail_json(msg=f"Sentinel {module.params['login_host']}:{module.params['login_port']}: {error}")
    module.exit_json(**result, seconds=round(time.monotonic() - started, 2))


if __name__ == "__main__":
    main()
