#!/usr/bin/python
"""Reconcile what a running Sentinel monitors with the wanted settings."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_sentinel_monitor
short_description: Make a running Sentinel monitor a master group with the wanted settings
author: kit maintainers
description:
  - When the Sentinel does not monitor O(master_name) yet, starts monitoring it at
    O(master_host) with C(SENTINEL MONITOR) and applies every setting.
  - When it already does, never touches the master address (Sentinel knows the current master
    better than the inventory after a failover) and applies only the settings whose live value
    differs, with C(SENTINEL SET). Sentinel persists them in its own config file.
  - The credentials Sentinel uses for the data nodes cannot be read back through the protocol,
    so they are compared with the lines Sentinel wrote in O(config_file).
  - Makes the ACL user O(client_user) (what clients log in as) have exactly O(client_rules) and
    O(client_password), with C(ACL SETUSER) and C(SENTINEL FLUSHCONFIG), when they differ. The
    rules are compared as Sentinel normalises them, through a throw-away probe user.
options:
  login_host:
    description: "Sentinel address."
    type: str
    default: 127.0.0.1
  login_port:
    description: "Sentinel port."
    type: int
    default: 26379
  login_password:
    description: "Sentinel password (requirepass)."
    type: str
  master_name:
    description: "Name of the monitored group."
    type: str
    required: true
  master_host:
    description: "Master address used when the group is not monitored yet."
    type: str
    required: true
  master_port:
    description: "Master port used when the group is not monitored yet."
    type: int
    default: 6379
  quorum:
    description: "Sentinels that must agree that the master is down."
    type: int
    required: true
  settings:
    description: "Per-group settings (down-after-milliseconds, failover-timeout, parallel-syncs...)."
    type: dict
    default: {}
  auth_user:
    description: "ACL user Sentinel logs in as on the data nodes."
    type: str
  auth_pass:
    description: "Password of O(auth_user)."
    type: str
  client_user:
    description: "ACL user for clients; none when unset."
    type: str
  client_password:
    description: "Password of O(client_user)."
    type: str
  client_previous_passwords:
    description:
      - Passwords O(client_user) also accepts while clients switch to O(client_password)
        (rotation); an empty list leaves only O(client_password).
    type: list
    elements: str
    default: []
  client_rules:
    description: "ACL rules of O(client_user), without its password."
    type: str
    default: ""
  config_file:
    description: "The Sentinel config file (read only)."
    type: path
    required: true
  login_previous_passwords:
    description:
      - Tried when the Sentinel refuses O(login_password) (a rotation under way). Its default
        user (the peers' and the kit's login) is made to accept exactly O(login_password) and
        these.
    type: list
    elements: str
    default: []
  peer_password:
    description:
      - What this Sentinel sends its peers (C(sentinel-pass)). Set it in a task after every
        Sentinel accepts it, so that no peer ever refuses another.
    type: str
extends_documentation_fragment:
- kit.jobqueue.login.tls
"""

RETURN = r"""
changes:
  description: "Settings that differed (secrets masked)."
  type: list
  returned: always
master:
  description: "Master address as this Sentinel knows it."
  type: str
  returned: always
"""

import hashlib

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kit.jobqueue.plugins.module_utils import kit_redis

PROBE = "kit-acl-probe"


def file_settings(path: str, name: str) -> dict[str, str]:
    """The `sentinel auth-user/auth-pass <name> <value>` lines of the config file."""
    found: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                words = line.split()
                if len(words) == 4 and words[0] == "sentinel" and words[2] == name:
                    found[words[1]] = words[3].strip('"')
    except FileNotFoundError:
        pass
    return found


def sentinel_pass(path: str) -> str | None:
    """The `sentinel sentinel-pass <value>` line of the config file."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                words = line.split()
                if len(words) == 3 and words[:2] == ["sentinel", "sentinel-pass"]:
                    return words[2].strip('"')
    except FileNotFoundError:
        pass
    return None


def acl_user(conn: kit_redis.Connection, name: str) -> dict | None:
    reply = conn.command("ACL", "GETUSER", name)
    return kit_redis.pairs(reply) if reply else None


def digests(passwords: list[str]) -> list[str]:
    """SHA-256 of each password, as ACL GETUSER lists them (the new one first, no repeats)."""
    return list(dict.fromkeys(hashlib.sha256(p.encode()).hexdigest() for p in passwords))


def client_user_differs(
    conn: kit_redis.Connection, name: str, passwords: list[str], rules: str, check_mode: bool
) -> bool:
    """True when the user is missing, does not accept exactly these passwords or has other
    permissions. The rules are compared through a probe user, which check mode does not create."""
    current = acl_user(conn, name)
    if current is None:
        return True
    if "on" not in current["flags"] or set(current["passwords"]) != set(digests(passwords)):
        return True
    if check_mode:
        return False
    conn.command("ACL", "SETUSER", PROBE, "reset", "off", *rules.split())
    try:
        probe = acl_user(conn, PROBE) or {}
    finally:
        conn.command("ACL", "DELUSER", PROBE)
    fields = ("commands", "keys", "channels")
    return any(current.get(f) != probe.get(f) for f in fields)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "login_host": {"type": "str", "default": "127.0.0.1"},
            "login_port": {"type": "int", "default": 26379},
            "login_password": {"type": "str", "no_log": True},
            "login_previous_passwords": {"type": "list", "elements": "str", "default": [], "no_log": True},
            "peer_password": {"type": "str", "no_log": True},
            "tls_ca_file": {"type": "path"},
            "tls_server_name": {"type": "str"},
            "master_name": {"type": "str", "required": True},
            "master_host": {"type": "str", "required": True},
            "master_port": {"type": "int", "default": 6379},
            "quorum": {"type": "int", "required": True},
            "settings": {"type": "dict", "default": {}},
            "auth_user": {"type": "str"},
            "auth_pass": {"type": "str", "no_log": True},
            "client_user": {"type": "str"},
            "client_password": {"type": "str", "no_log": True},
            "client_previous_passwords": {"type": "list", "elements": "str", "default": [], "no_log": True},
            "client_rules": {"type": "str", "default": ""},
            "config_file": {"type": "path", "required": True},
        },
        required_by={"client_user": ("client_password",)},
        supports_check_mode=True,
    )
    p = module.params
    name = p["master_name"]
    result: dict = {"changed": False, "changes": [], "master": ""}
    wanted = {"quorum": str(p["quorum"])}
    wanted.update({k: str(v) for k, v in p["settings"].items()})
    with kit_redis.reporting(module, result):
        own = [p["login_password"], *p["login_previous_passwords"]]
        with kit_redis.connect_first(
            p["login_host"],
            p["login_port"],
            None,
            own,
            tls=kit_redis.tls_context(p["tls_ca_file"]),
            server_name=p["tls_server_name"],
        ) as conn:
            try:
                state = kit_redis.pairs(conn.command("SENTINEL", "MASTER", name))
            except kit_redis.ReplyError as error:
                if "no such master" not in str(error).lower():
                    raise
                state = None
            updates: list[str] = []
            if state is None:
                result["changes"].append({"monitor": f"{p['master_host']} {p['master_port']}"})
                if not module.check_mode:
                    conn.command("SENTINEL", "MONITOR", name, p["master_host"], p["master_port"], p["quorum"])
                for key, value in wanted.items():
                    if key != "quorum":
                        updates += [key, value]
                known = {}
                result["master"] = f"{p['master_host']}:{p['master_port']}"
            else:
                result["master"] = f"{state['ip']}:{state['port']}"
                for key, value in wanted.items():
                    if str(state.get(key)) != value:
                        result["changes"].append({key: {"before": state.get(key), "after": value}})
                        updates += [key, value]
                known = file_settings(p["config_file"], name)
            for key in ("auth-user", "auth-pass"):
                value = p[key.replace("-", "_")]
                if value and known.get(key) != value:
                    if state is not None:
                        result["changes"].append({key: "********" if key == "auth-pass" else value})
                    updates += [key, value]
            if updates and not module.check_mode:
                conn.command("SENTINEL", "SET", name, *updates)
            flush = False
            if p["login_password"] and set((acl_user(conn, "default") or {}).get("passwords", [])) != set(
                digests(own)
            ):
                result["changes"].append(
                    {"password": "accepted: the current one" + (" and previous" if own[1:] else "")}
                )
                flush = True
                if not module.check_mode:
                    conn.command("ACL", "SETUSER", "default", "resetpass", *(f"#{d}" for d in digests(own)))
            if p["peer_password"] and sentinel_pass(p["config_file"]) != p["peer_password"]:
                result["changes"].append({"sentinel-pass": "********"})
                flush = True
                if not module.check_mode:
                    conn.command("SENTINEL", "CONFIG", "SET", "sentinel-pass", p["peer_password"])
            if flush and not module.check_mode:
                conn.command("SENTINEL", "FLUSHCONFIG")
            user = p["client_user"]
            passwords = [p["client_password"], *p["client_previous_passwords"]] if user else []
            differs = user and client_user_differs(
                conn, user, passwords, p["client_rules"], module.check_mode
            )
            if differs:
                result["changes"].append({"acl user": user})
                if not module.check_mode:
                    hashes = [f"#{d}" for d in digests(passwords)]
                    rules = p["client_rules"].split()
                    conn.command("ACL", "SETUSER", user, "reset", "on", *hashes, *rules)
                    conn.command("SENTINEL", "FLUSHCONFIG")


if __name__ == "__main__":
    main()
