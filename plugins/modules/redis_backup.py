#!/usr/bin/python
"""Take a consistent snapshot (BGSAVE) of a Redis or Valkey node and copy it aside."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_backup
short_description: Take a consistent RDB snapshot of a data node and copy it to a file
author: kit maintainers
description:
- Runs C(BGSAVE SCHEDULE) on the node (it waits for an AOF rewrite under way), waits until that save
  has finished and succeeded, then copies the node's RDB file to O(dest) and returns its SHA-256,
  size and key count. Meant to run on a replica in sync, so the master does not fork.
- The copy is taken as soon as the save ends; a later save or full resync replacing the node's own
  file does not change it.
extends_documentation_fragment:
- kit.jobqueue.login
- kit.jobqueue.login.tls
options:
  timeout:
    description: Seconds to wait for the save.
    type: float
    default: 600
  dest:
    description: Where to copy the snapshot on the node's host.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Snapshot a replica
  kit.jobqueue.redis_backup:
    login_user: kit-admin
    login_password: "{{ vault_redis_admin_password }}"
    dest: /var/lib/redis/backup.rdb
"""

RETURN = r"""
path:
  description: "The copy (O(dest))."
  type: str
  returned: success
sha256:
  description: "SHA-256 of the copy."
  type: str
  returned: success
size:
  description: "Its size in bytes."
  type: int
  returned: success
key_count:
  description: "Keys in the node's database 0 when the save ended."
  type: int
  returned: success
seconds:
  description: "How long the save took."
  type: float
  returned: success
"""

import hashlib
import os
import shutil
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kit.jobqueue.plugins.module_utils import kit_redis


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def start_save(conn: kit_redis.Connection, deadline: float) -> int:
    """Start a save of this node's data as of now; return the count of saves before it. An RDB
    child already under way (a replica's full sync, a save of the node's own) makes Redis refuse
    BGSAVE, SCHEDULE or not: wait for it to end, then start one of our own (the other one's data
    is older than the request, and a sync to a replica writes no file)."""
    while True:
        saves = int(kit_redis.parse_info(conn.command("INFO", "persistence")).get("rdb_saves", 0))
        try:
            conn.command("BGSAVE", "SCHEDULE")
            return saves
        except kit_redis.ReplyError as error:
            if "already in progress" not in str(error):
                raise
        if time.monotonic() > deadline:
            raise TimeoutError("another save of the node was still under way at the timeout")
        time.sleep(0.1)


def snapshot(p: dict) -> dict:
    with kit_redis.login(p, 5.0) as conn:
        started = time.monotonic()
        saves = start_save(conn, started + p["timeout"])
        while True:
            now = kit_redis.parse_info(conn.command("INFO", "persistence"))
            if now.get("rdb_bgsave_in_progress") == "0" and int(now.get("rdb_saves", 0)) > saves:
                break
            if time.monotonic() - started > p["timeout"]:
                raise TimeoutError(
                    f"the save did not end within {p['timeout']:.0f} s: {now.get('rdb_bgsave_in_progress')}"
                )
            time.sleep(0.1)
        if now.get("rdb_last_bgsave_status") != "ok":
            raise RuntimeError(f"the save failed ({now.get('rdb_last_bgsave_status')}): see the node's log")
        directory = conn.command("CONFIG", "GET", "dir")[1]
        filename = conn.command("CONFIG", "GET", "dbfilename")[1]
        keys = conn.command("DBSIZE")
        seconds = round(time.monotonic() - started, 2)
        # Copy before anything else may replace the node's file (next save, full resync).
        tmp = f"{p['dest']}.partial"
        shutil.copyfile(os.path.join(directory, filename), tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, p["dest"])
    return {
        "path": p["dest"],
        "sha256": sha256(p["dest"]),
        "size": os.path.getsize(p["dest"]),
        "key_count": keys,
        "seconds": seconds,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **kit_redis.LOGIN_ARGUMENT_SPEC,
            "dest": {"type": "path", "required": True},
            "timeout": {"type": "float", "default": 600},
        },
        supports_check_mode=False,
    )
    try:
        result = snapshot(module.params)
    except (OSError, kit_redis.ReplyError, TimeoutError, RuntimeError) as error:
        module.fail_json(
            msg=f"backup of {module.params['login_host']}:{module.params['login_port']} failed: {error}"
        )
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
