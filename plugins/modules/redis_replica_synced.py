#!/usr/bin/python
"""Wait until a Redis or Valkey server is a replica in sync with its master."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_replica_synced
short_description: Wait until a data node is a replica in sync with its master
author: kit maintainers
description:
- Polls C(INFO) on the node until it has loaded its data, reports the replica role, its link to the
  master is up, no sync is in progress and it is at most O(max_lag_bytes) behind the offset its master
  reports; fails after O(timeout) seconds naming what it last saw.
- Never changes anything.
extends_documentation_fragment:
- kit.jobqueue.login
- kit.jobqueue.login.tls
options:
  max_lag_bytes:
    description: How far behind its master's replication offset the node may be.
    type: int
    default: 1048576
  timeout:
    description: Seconds to wait.
    type: float
    default: 120
"""

RETURN = r"""
master:
  description: "The master the node follows (ip:port)."
  type: str
  returned: success
lag_bytes:
  description: "How far behind the master it was when found in sync (-1: the master refused the login)."
  type: int
  returned: success
seconds:
  description: "How long the wait took."
  type: float
  returned: success
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kit.jobqueue.plugins.module_utils import kit_redis


def state(p: dict) -> tuple[bool, str, dict]:
    """(in sync, what was seen, result fields)."""
    tls = kit_redis.tls_context(p["tls_ca_file"])
    passwords = [p["login_password"], *p["login_previous_passwords"]]
    with kit_redis.login(p) as conn:
        info = kit_redis.parse_info(conn.command("INFO", "replication"))
        loading = kit_redis.parse_info(conn.command("INFO", "persistence")).get("loading")
    if loading != "0":
        return False, "still loading its data", {}
    if info.get("role") != "slave":
        return False, f"role {info.get('role')}", {}
    master = f"{info.get('master_host')}:{info.get('master_port')}"
    if info.get("master_link_status") != "up" or info.get("master_sync_in_progress") != "0":
        return (
            False,
            f"link to {master} {info.get('master_link_status')}, sync {info.get('master_sync_in_progress')}",
            {},
        )
    try:
        with kit_redis.connect_first(
            info["master_host"], int(info["master_port"]), p["login_user"], passwords, 2.0, tls
        ) as conn:
            reply = kit_redis.parse_info(conn.command("INFO", "replication"))
        offset = int(reply.get("master_repl_offset", 0))
    except kit_redis.ReplyError as error:
        if not kit_redis.is_auth_error(error):
            raise
        # A password changed with no previous one kept: the master learns it only at its own
        # restart, later in the run. Linked and done syncing is all the replica can tell.
        unmeasured = "in sync (the master refused the login: lag not measured)"
        return True, unmeasured, {"master": master, "lag_bytes": -1}
    lag = max(0, offset - int(info.get("slave_repl_offset", 0)))
    if lag > p["max_lag_bytes"]:
        return False, f"{lag} bytes behind {master}", {}
    return True, "in sync", {"master": master, "lag_bytes": lag}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **kit_redis.LOGIN_ARGUMENT_SPEC,
            "max_lag_bytes": {"type": "int", "default": 1048576},
            "timeout": {"type": "float", "default": 120},
        },
        supports_check_mode=True,
    )
    p = module.params
    started = time.monotonic()
    seen = "no answer"
    while time.monotonic() - started < p["timeout"]:
        try:
            synced, seen, fields = state(p)
        except (OSError, kit_redis.ReplyError) as error:
            synced, seen, fields = False, f"{type(error).__name__}: {error}", {}
        if synced:
            module.exit_json(changed=False, seconds=round(time.monotonic() - started, 2), **fields)
        time.sleep(0.5)
    module.fail_json(
        msg=f"{p['login_host']}:{p['login_port']} not a replica in sync after {p['timeout']:.0f} s: {seen}"
    )


if __name__ == "__main__":
    main()
