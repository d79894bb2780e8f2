#!/usr/bin/python
"""Put an RDB backup back on the master of a Sentinel group, live, through replication."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_restore
short_description: Replace the master's data with an RDB backup, live, so every replica follows
author: kit maintainers
description:
- Loads O(src) into a temporary server (the host's own server binary, on 127.0.0.1 with a random port
  and password, as O(run_as)), then, on the master, deletes every key (C(FLUSHALL)) and writes each
  key of the backup with C(RESTORE ... REPLACE), keeping its time to live. Lists go last, so a worker
  never takes a job id whose job is not back yet.
- Nothing restarts and no failover happens; the replicas receive the restore through replication like
  any write; the module waits (C(WAIT)) for O(replicas) of them to confirm.
- Refuses to write to a node that is not master.
extends_documentation_fragment:
- kit.jobqueue.login
- kit.jobqueue.login.tls
options:
  src:
    description: The RDB file on the master's host.
    type: path
    required: true
  server_binary:
    description: redis-server or valkey-server (same version as the master, so it reads its RDB).
    type: path
    required: true
  run_as:
    description: User the temporary server runs as.
    type: str
    required: true
  replicas:
    description: How many replicas must confirm the restored data.
    type: int
    default: 0
  timeout:
    description: Seconds for the temporary server to load the backup, and for the replicas.
    type: float
    default: 300
"""

EXAMPLES = r"""
- name: Restore a backup on the master
  kit.jobqueue.redis_restore:
    src: /var/lib/redis/restore.rdb
    server_binary: /usr/bin/redis-server
    run_as: redis
    login_user: kit-admin
    login_password: "{{ vault_redis_admin_password }}"
    replicas: 1
"""

RETURN = r"""
key_count:
  description: "Keys written, by database number."
  type: dict
  returned: success
replaced:
  description: "Keys the master held before (deleted), by database number."
  type: dict
  returned: success
replicas_confirmed:
  description: "Replicas that confirmed the restored data."
  type: int
  returned: success
seconds:
  description: "How long the restore took."
  type: float
  returned: success
"""

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kit.jobqueue.plugins.module_utils import kit_redis

BATCH = 500


def keyspace(conn: kit_redis.Connection) -> dict[int, int]:
    """Database number -> key count ("db0:keys=3,expires=0,avg_ttl=0")."""
    found = {}
    for name, value in kit_redis.parse_info(conn.command("INFO", "keyspace")).items():
        if name.startswith("db"):
            found[int(name[2:])] = int(dict(f.split("=") for f in value.split(","))["keys"])
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_temporary(p: dict, workdir: str) -> tuple[subprocess.Popen, kit_redis.Connection]:
    account = pwd.getpwnam(p["run_as"])
    shutil.copyfile(p["src"], os.path.join(workdir, "dump.rdb"))
    for path in (workdir, os.path.join(workdir, "dump.rdb")):
        os.chown(path, account.pw_uid, account.pw_gid)
    port, password = free_port(), secrets.token_hex(16)
    config = "\n".join(
        [
            "bind 127.0.0.1",
            f"port {port}",
            f"requirepass {password}",
            f"dir {workdir}",
            "dbfilename dump.rdb",
            "appendonly no",
            'save ""',
            "daemonize no",
            f"logfile {workdir}/server.log",
        ]
    )
    with open(os.path.join(workdir, "restore.conf"), "w") as handle:
        handle.write(config + "\n")
    os.chown(os.path.join(workdir, "restore.conf"), account.pw_uid, account.pw_gid)

    # The host's own server binary (a module argument, not input from the network).
    server = subprocess.Popen(  # noqa: S603
        [p["server_binary"], os.path.join(workdir, "restore.conf")],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[] if os.geteuid() == 0 else None,
    )
    deadline = time.monotonic() + p["timeout"]
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the temporary server could not read the backup: {tail(workdir)}")
        try:
            conn = kit_redis.Connection("127.0.0.1", port, None, password, 2.0)
            if kit_redis.parse_info(conn.command("INFO", "persistence")).get("loading") == "0":
                return server, conn
            conn.close()
        except (OSError, kit_redis.ReplyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the temporary server did not load the backup within {p['timeout']:.0f} s")
        time.sleep(0.1)


def tail(workdir: str) -> str:
    try:
        with open(os.path.join(workdir, "server.log")) as handle:
            return " | ".join(handle.read().strip().splitlines()[-3:])
    except OSError:
        return "no log"


def copy_database(source: kit_redis.Connection, master: kit_redis.Connection, db: int) -> int:
    """Write every key of `db` on the master (lists last); return how many."""
    source.command("SELECT", db)
    master.command("SELECT", db)
    keys: list[bytes] = []
    cursor = "0"
    while True:
        cursor, batch = source.command("SCAN", cursor, "COUNT", 1000, raw=True)
        keys += batch
        cursor = cursor.decode()
        if cursor == "0":
            break
    kinds = source.pipeline([("TYPE", k) for k in keys])
    kind_of = dict(zip(keys, kinds, strict=True))
    ordered = [k for k in keys if kind_of[k] != "list"] + [k for k in keys if kind_of[k] == "list"]
    written = 0
    for start in range(0, len(ordered), BATCH):
        batch = ordered[start : start + BATCH]
        dumped = source.pipeline([c for k in batch for c in (("PTTL", k), ("DUMP", k))], raw=True)
        commands = []
        for index, key in enumerate(batch):
            ttl, payload = dumped[2 * index], dumped[2 * index + 1]
            if payload is None or ttl == -2:  # expired meanwhile
                continue
            commands.append(("RESTORE", key, max(int(ttl), 0), payload, "REPLACE"))
        for reply in master.pipeline(commands):
            if isinstance(reply, kit_redis.ReplyError):
                raise RuntimeError(f"RESTORE refused on the master: {reply}")
        written += len(commands)
    return written


def restore(p: dict) -> dict:
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="kit-restore-", dir=os.path.dirname(p["src"]))
    server = None
    try:
        with kit_redis.login(p, 10.0) as master:
            role = kit_redis.parse_info(master.command("INFO", "replication")).get("role")
            if role != "master":
                raise RuntimeError(f"{p['login_host']}:{p['login_port']} is a {role}, not the master")
            server, source = start_temporary(p, workdir)
            with source:
                replaced = keyspace(master)
                master.command("FLUSHALL", "SYNC")
                keys = {db: copy_database(source, master, db) for db in sorted(keyspace(source))}
                master.command("SELECT", 0)
                confirmed = (
                    master.command("WAIT", p["replicas"], int(p["timeout"] * 1000)) if p["replicas"] else 0
                )
                if confirmed < p["replicas"]:
                    raise RuntimeError(f"{confirmed} of {p['replicas']} replicas confirmed the restored data")
                with contextlib.suppress(OSError):  # it closes the connection as it exits
                    source.command("SHUTDOWN", "NOSAVE")
    finally:
        if server is not None:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "key_count": keys,
        "replaced": replaced,
        "replicas_confirmed": confirmed,
        "seconds": round(time.monotonic() - started, 2),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **kit_redis.LOGIN_ARGUMENT_SPEC,
            "src": {"type": "path", "required": True},
            "server_binary": {"type": "path", "required": True},
            "run_as": {"type": "str", "required": True},
            "replicas": {"type": "int", "default": 0},
            "timeout": {"type": "float", "default": 300},
        },
        supports_check_mode=False,
    )
    try:
        result = restore(module.params)
    except (OSError, kit_redis.ReplyError, TimeoutError, RuntimeError, KeyError) as error:
        module.fail_json(msg=f"restore of {module.params['src']} failed: {error}")
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
