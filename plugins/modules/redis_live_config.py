#!/usr/bin/python
"""Reconcile a running Redis or Valkey server with the wanted configuration."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_live_config
short_description: Apply settings and replication to a running Redis or Valkey server
author: kit maintainers
description:
- Compares each wanted setting with the live value (C(CONFIG GET)), applies only the ones that differ
  (C(CONFIG SET)) and persists them with C(CONFIG REWRITE). Reports a change only when a live value
  differed, so a file that the server rewrites itself (as Redis does when Sentinel reconfigures it)
  never makes a run report changes.
- Settings the server refuses to change at runtime (immutable ones) are written into O(config_file)
  instead and returned in RV(restart_required).
- Points the server at O(replicaof) when it is a replica of another master or a master. A server that
  should be the master is promoted only with O(promote), because after bootstrap Sentinel, not Ansible,
  decides who is master.
extends_documentation_fragment:
- kit.jobqueue.login
- kit.jobqueue.login.tls
options:
  config:
    description: Wanted settings (name to value, as in the config file).
    type: dict
    default: {}
  secret_config:
    description: Like O(config) but never shown in output or diffs.
    type: dict
    default: {}
  replicaof:
    description: Master to follow (host, port); omit on the master.
    type: dict
  promote:
    description: Turn a replica into a master when O(replicaof) is omitted.
    type: bool
    default: false
  config_file:
    description: Config file for settings that cannot change at runtime.
    type: path
  acl_load:
    description:
    - Reload the ACL file (C(ACL LOAD)) first. When the server refuses O(login_user) (its password
      just changed in that file), nothing else is done and RV(restart_required) names C(aclfile);
      a restart loads the new users.
    type: bool
    default: false
  tls_reload:
    description:
    - Make the server read its TLS certificate, key and CA files again (C(CONFIG SET) of their unchanged
      paths does), for renewed files. Connections already open keep going; no restart.
    type: bool
    default: false
"""

RETURN = r"""
changes:
  description: "Settings that differed (secret values masked)."
  type: list
  returned: always
restart_required:
  description: "Immutable settings written to the file; a restart applies them."
  type: list
  returned: always
role:
  description: "Replication role after the run."
  type: str
  returned: always
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kit.jobqueue.plugins.module_utils import kit_redis

_UNITS = {"k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
_MEMORY = re.compile(r"^(\d+)(k|kb|m|mb|g|gb)$", re.IGNORECASE)


def normalize(value: object) -> str:
    """The form CONFIG GET answers in: memory units as bytes, lower-case words, single spaces."""
    text = " ".join(str(value).split())
    if isinstance(value, bool):
        text = "yes" if value else "no"
    match = _MEMORY.match(text)
    if match:
        return str(int(match.group(1)) * _UNITS[match.group(2).lower()])
    return text.lower() if text.lower() in ("yes", "no") else text


def write_setting(path: str, key: str, value: str) -> None:
    """Replace the first `key ...` line of a config file (or append one)."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    new_line = f"{key} {value}"
    for index, line in enumerate(lines):
        if line.split(" ", 1)[0].lower() == key.lower():
            lines[index] = new_line
            break
    else:
        lines.append(new_line)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def reconcile_config(
    module: AnsibleModule, conn: kit_redis.Connection, result: dict
) -> tuple[bool, dict[str, str]]:
    """Sets what differs live. Returns whether anything was, and the immutable settings, for
    the file: written after any CONFIG REWRITE, which would put the running values back."""
    wanted = dict(module.params["config"])
    secret_keys = set(module.params["secret_config"])
    wanted.update(module.params["secret_config"])
    changed_live = False
    for_file: dict[str, str] = {}
    for key, value in wanted.items():
        reply = conn.command("CONFIG", "GET", key)
        if not reply:
            module.fail_json(msg=f"the server does not know the setting '{key}'", **result)
        current = normalize(reply[1])
        target = normalize(value)
        if current == target:
            continue
        shown = "********" if key in secret_keys else {"before": current, "after": target}
        result["changes"].append({key: shown})
        if module.check_mode:
            continue
        try:
            conn.command("CONFIG", "SET", key, str(value))
            changed_live = True
        except kit_redis.ReplyError as error:
            if "immutable" not in str(error).lower() or not module.params["config_file"]:
                module.fail_json(msg=f"CONFIG SET {key} failed: {error}", **result)
            for_file[key] = str(value)
            result["restart_required"].append(key)
    return changed_live, for_file


def reconcile_replication(module: AnsibleModule, conn: kit_redis.Connection, result: dict) -> bool:
    info = kit_redis.parse_info(conn.command("INFO", "replication"))
    role = info.get("role", "master")
    wanted = module.params["replicaof"]
    if wanted:
        host, port = str(wanted["host"]), int(wanted["port"])
        if role == "slave" and info.get("master_host") == host and int(info["master_port"]) == port:
            result["role"] = "replica"
            return False
        result["changes"].append({"replicaof": {"before": _describe(info), "after": f"{host} {port}"}})
        if not module.check_mode:
            conn.command("REPLICAOF", host, port)
        result["role"] = "replica"
        return True
    if role == "slave" and module.params["promote"]:
        result["changes"].append({"replicaof": {"before": _describe(info), "after": "no one"}})
        if not module.check_mode:
            conn.command("REPLICAOF", "NO", "ONE")
        result["role"] = "master"
        return True
    result["role"] = "master" if role == "master" else "replica"
    return False


TLS_FILES = ("tls-cert-file", "tls-key-file", "tls-ca-cert-file")


def reload_tls(module: AnsibleModule, conn: kit_redis.Connection, result: dict) -> None:
    """Setting a TLS file's path, even to the same value, reloads it (Redis 7+, Valkey)."""
    paths = [conn.command("CONFIG", "GET", name) for name in TLS_FILES]
    settings = [word for reply in paths for word in reply]
    if not settings[1::2] or not all(settings[1::2]):
        module.fail_json(msg="tls_reload: the server has no TLS files configured", **result)
    result["changes"].append({"tls": "certificate, key and CA reloaded"})
    if not module.check_mode:
        conn.command("CONFIG", "SET", *settings)


def _describe(info: dict[str, str]) -> str:
    if info.get("role") == "slave":
        return f"{info.get('master_host')} {info.get('master_port')}"
    return "no one"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **kit_redis.LOGIN_ARGUMENT_SPEC,
            "config": {"type": "dict", "default": {}},
            "secret_config": {"type": "dict", "default": {}, "no_log": True},
            "replicaof": {
                "type": "dict",
                "options": {
                    "host": {"type": "str", "required": True},
                    "port": {"type": "int", "default": 6379},
                },
            },
            "promote": {"type": "bool", "default": False},
            "config_file": {"type": "path"},
            "acl_load": {"type": "bool", "default": False},
            "tls_reload": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    result: dict = {"changed": False, "changes": [], "restart_required": [], "role": ""}
    try:
        conn = kit_redis.login(p)
    except kit_redis.ReplyError as error:
        if p["acl_load"] and kit_redis.is_auth_error(error):
            result.update(changed=True, restart_required=["aclfile"])
            module.exit_json(**result)
        kit_redis.fail_naming_server(module, error, result)
    except OSError as error:
        kit_redis.fail_naming_server(module, error, result)
    if p["acl_load"]:
        result["changes"].append({"acl": "reloaded"})
        if not module.check_mode:
            # Redis 7.0 closes every connection of the users it replaces after ACL LOAD answers,
            # this one too (its user is replaced even when unchanged): the rest on a new one.
            try:
                with conn:
                    conn.command("ACL", "LOAD")
                conn = kit_redis.login(p)
            except (OSError, kit_redis.ReplyError) as error:
                kit_redis.fail_naming_server(module, error, result)
    with kit_redis.reporting(module, result), conn:
        if p["tls_reload"]:
            reload_tls(module, conn, result)
        config_changed, for_file = reconcile_config(module, conn, result)
        replication_changed = reconcile_replication(module, conn, result)
        if (config_changed or replication_changed) and not module.check_mode:
            conn.command("CONFIG", "REWRITE")
        for key, value in for_file.items():
            write_setting(module.params["config_file"], key, value)


if __name__ == "__main__":
    main()
