"""Real Redis for the tests: a master, a replica and three Sentinels on 127.0.0.1, with the
same ACL users and rules as the kit's `redis` role deploys (read from the role's files), over
plain TCP or, with `tls=make_tls(dir)`, over TLS only (`port 0`, a `tls-port`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "redis"
MASTER_NAME = "kit"
PASSWORDS = {
    "admin": "test-admin-pw-8Hn3",
    "replica": "test-replica-pw-2Kd7",
    "sentinel": "test-sentinel-acl-5Ws1",
    "web": "test-web-pw-9Qe4",
    "worker": "test-worker-pw-3Jc8",
    "sentinel_own": "test-sentinel-pw-4Lm6",
    "sentinel_client": "test-sentinel-client-pw-7Yu2",
}
SENTINEL_CLIENT_USER = "kit-client"
SENTINEL_ROLE = ROLE.parent / "redis_sentinel"


def sentinel_client_rules() -> str:
    """The client user's rules, as roles/redis_sentinel writes them."""
    internals = yaml.safe_load((SENTINEL_ROLE / "vars" / "main.yml").read_text())
    return " ".join(internals["__redis_sentinel_client_rules"].split())


# The app's two Redis users, one per tier, with the role's command lists.
WEB_USER, WORKER_USER = "fridge-web", "fridge-worker"
APP_KEYS = ("rq:*", "fridge:*")
WORKER_CHANNELS = ("rq:pubsub:*",)


def role_default(name: str) -> Any:
    """A default of roles/redis, so that these servers run as the role configures them."""
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())[name]


def app_commands() -> dict[str, list[str]]:
    """The command lists roles/redis gives the web tier's and the workers' users."""
    return {
        WEB_USER: role_default("redis_acl_rq_web_commands"),
        WORKER_USER: role_default("redis_acl_rq_worker_commands"),
    }


def app_user_rules(user: str) -> str:
    """The ACL rules of an app user, as roles/redis/templates/users.acl.j2 writes them."""
    keys = " ".join(f"~{k}" for k in APP_KEYS)
    channels = " ".join(f"&{c}" for c in (WORKER_CHANNELS if user == WORKER_USER else ()))
    commands = " ".join(f"+{c.lower()}" for c in app_commands()[user])
    return f"resetkeys resetchannels {keys} {channels} -@all {commands}"


def _role_rules() -> dict[str, str]:
    internals = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    return {
        "sentinel": " ".join(internals["__redis_acl_sentinel_rules"].split()),
        "replica": internals["__redis_acl_replication_rules"],
        "default": internals["__redis_acl_default_rules"],
    }


def acl_file() -> str:
    rules = _role_rules()

    def h(name: str) -> str:
        return "#" + hashlib.sha256(PASSWORDS[name].encode()).hexdigest()

    return "\n".join(
        [
            f"user default {rules['default']}",
            f"user kit-admin on {h('admin')} ~* &* +@all",
            f"user kit-replica on {h('replica')} resetkeys resetchannels -@all {rules['replica']}",
            f"user kit-sentinel on {h('sentinel')} resetkeys resetchannels -@all {rules['sentinel']}",
            f"user {WEB_USER} on {h('web')} {app_user_rules(WEB_USER)}",
            f"user {WORKER_USER} on {h('worker')} {app_user_rules(WORKER_USER)}",
            "",
        ]
    )


# Each pytest process (pytest-xdist's gw0, gw1, ...) takes its servers' ports from a block of
# its own, below the kernel's ephemeral range (32768-60999 by default). A port the kernel hands
# out for bind(0) could be handed to another process, or be taken as the source port of a
# client connection, before the server binds it: a TLS cluster then waited for Sentinels it
# could not log in to (a run of the app tests in four processes).
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_PORTS = itertools.count(20000 + 1000 * _WORKER)


def free_port() -> int:
    """The next port of this process's block that nothing listens on."""
    for port in _PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("unreachable: the count is endless")


def fill_memory(admin: redis.Redis, share: float) -> None:
    """Write 16 MiB of filler (key "filler"), then lower the master's maxmemory until what it
    uses is `share` of it. In pieces: a 16 MiB argument would count as used memory while it
    sits in the connection's buffer, and be freed soon after. The fixture `room` undoes it."""
    piece = b"x" * 2**16
    for offset in range(0, 2**24, len(piece)):
        admin.setrange("filler", offset, piece)
    admin.config_set("maxmemory", int(int(admin.info("memory")["used_memory"]) / share))


def wait_until(check, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (redis.RedisError, OSError) as error:
            last = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = fridge tests
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


@dataclass
class TLS:
    """A throw-away CA, a server certificate it signed (127.0.0.1 and localhost) that every
    server presents, and a second CA that signed nothing here."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    other_ca_file: Path

    @property
    def ca(self) -> str:
        return self.ca_file.read_text()

    @property
    def other_ca(self) -> str:
        return self.other_ca_file.read_text()

    def server_lines(self, port: int) -> list[str]:
        """redis.conf or sentinel.conf lines: TLS on `port`, no plain-text port; outgoing
        connections (replication, Sentinel to Redis and to its peers) in TLS too."""
        return [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {self.cert_file}",
            f"tls-key-file {self.key_file}",
            f"tls-ca-cert-file {self.ca_file}",
            "tls-auth-clients no",
            "tls-replication yes",
        ]


def make_tls(directory: Path) -> TLS:
    """Generate the CAs and the server certificate with the openssl command (EC P-256, valid
    two days, the extensions Python 3.13's strict verification wants)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "openssl.cnf").write_text(OPENSSL_CNF)

    def openssl(command: str, *extra: str) -> None:
        """`command` split on spaces (none of its arguments has one), then `extra`."""
        binary = shutil.which("openssl")
        if binary is None:
            raise RuntimeError("the TLS tests need the openssl command (Debian: apt-get install openssl)")
        run = subprocess.run(
            [binary, *command.split(), *extra], cwd=directory, capture_output=True, text=True
        )
        if run.returncode:
            raise RuntimeError(f"openssl {command} failed: {run.stderr}")

    key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    for name, subject in (("ca", "/CN=fridge test CA"), ("other-ca", "/CN=fridge other CA")):
        files = f"-keyout {name}.key -out {name}.crt"
        openssl(f"req -x509 -new {key} {files} -days 2 -config openssl.cnf -extensions ca", "-subj", subject)
    openssl(f"req -new {key} -keyout server.key -out server.csr -subj /CN=localhost -config openssl.cnf")
    openssl(
        f"x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 0x{secrets.token_hex(8)} -days 2 "
        "-extfile openssl.cnf -extensions server -out server.crt"
    )
    return TLS(
        directory / "ca.crt", directory / "server.crt", directory / "server.key", directory / "other-ca.crt"
    )


@dataclass
class Cluster:
    workdir: Path
    data_ports: list[int] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)
    down_after_ms: int = 1000
    tls: TLS | None = None
    # Each data node's directory on a filesystem of its own of this size (tmpfs, as root), like
    # the disks of separate hosts: fill_disk then fills one node's disk alone. None: plain
    # directories of the work directory (fill_disk is not available).
    disk_mib: int | None = None

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    def app_settings(self) -> dict:
        """The app's TLS settings for this cluster (none for a plain-text one)."""
        return {"REDIS_TLS": True, "REDIS_TLS_CA": self.tls.ca} if self.tls else {}

    def client_tls(self) -> dict:
        """A `redis.Redis`'s arguments to reach this cluster's servers."""
        return {"ssl": True, "ssl_ca_data": self.tls.ca} if self.tls else {}

    def admin(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port,
            username="kit-admin",
            password=PASSWORDS["admin"],
            socket_timeout=2,
            **self.client_tls(),
        )

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, password=PASSWORDS["sentinel_own"], socket_timeout=2, **self.client_tls()
        )

    def listen_lines(self, port: int) -> list[str]:
        return self.tls.server_lines(port) if self.tls else [f"port {port}"]

    def master_port(self) -> int:
        _, port = self.sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def start(self) -> None:
        (self.workdir / "users.acl").write_text(acl_file())
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        master = self.data_ports[0]
        for index, port in enumerate(self.data_ports):
            data = self.workdir / f"redis-{port}"
            data.mkdir()
            if self.disk_mib:
                options = f"size={self.disk_mib}m,mode=0700"
                subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(data)], check=True)
            conf = data / "redis.conf"
            lines = [
                *self.listen_lines(port),
                "bind 127.0.0.1",
                "protected-mode yes",
                f"dir {data}",
                "daemonize no",
                f"aclfile {self.workdir / 'users.acl'}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "masteruser kit-replica",
                f"masterauth {PASSWORDS['replica']}",
                "repl-diskless-sync yes",
                "repl-diskless-sync-delay 0",
                f"stream-node-max-bytes {role_default('redis_stream_node_max_bytes')}",
                "replica-ignore-disk-write-errors "
                + ("yes" if role_default("redis_replica_ignore_disk_write_errors") else "no"),
                "logfile redis.log",
            ]
            if index:
                lines.append(f"replicaof 127.0.0.1 {master}")
            conf.write_text("\n".join(lines) + "\n")
            self._spawn(port, ["redis-server", str(conf)], data)
        for port in self.data_ports:
            wait_until(lambda p=port: self.admin(p).ping(), 10, f"redis on {port}")
        wait_until(
            lambda: self.admin(self.data_ports[1]).info("replication")["master_link_status"] == "up",
            10,
            "the replica to sync",
        )
        client_rules = sentinel_client_rules()
        for port in self.sentinel_ports:
            data = self.workdir / f"sentinel-{port}"
            data.mkdir()
            conf = data / "sentinel.conf"
            conf.write_text(
                "\n".join(
                    [
                        *self.listen_lines(port),
                        "bind 127.0.0.1",
                        f"dir {data}",
                        "daemonize no",
                        "logfile sentinel.log",
                        f"requirepass {PASSWORDS['sentinel_own']}",
                        f"sentinel sentinel-pass {PASSWORDS['sentinel_own']}",
                        f"user {SENTINEL_CLIENT_USER} on >{PASSWORDS['sentinel_client']} {client_rules}",
                        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2",
                        f"sentinel auth-user {MASTER_NAME} kit-sentinel",
                        f"sentinel auth-pass {MASTER_NAME} {PASSWORDS['sentinel']}",
                        f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                        f"sentinel failover-timeout {MASTER_NAME} 5000",
                        f"sentinel parallel-syncs {MASTER_NAME} 1",
                    ]
                )
                + "\n"
            )
            self._spawn(port, ["redis-sentinel", str(conf)], data)
        for port in self.sentinel_ports:
            wait_until(
                lambda p=port: (
                    (m := self.sentinel(p).sentinel_master(MASTER_NAME))["num-other-sentinels"] == 2
                    and m["num-slaves"] == 1
                ),
                20,
                f"sentinel {port} to see its peers and the replica",
            )

    def _spawn(self, port: int, cmd: list[str], cwd: Path) -> None:
        binary = shutil.which(cmd[0])
        if binary is None:
            raise RuntimeError(
                f"{cmd[0]} is not installed (Debian: apt-get install redis-server redis-sentinel)"
            )
        self.processes[port] = subprocess.Popen(
            [binary, *cmd[1:]], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def restart(self, port: int) -> None:
        """Start a data node again with its own (possibly Sentinel-rewritten) config."""
        data = self.workdir / f"redis-{port}"
        self._spawn(port, ["redis-server", str(data / "redis.conf")], data)
        wait_until(lambda: self.admin(port).ping(), 10, f"redis on {port} to restart")

    def restart_sentinel(self, port: int) -> None:
        """Start a Sentinel again with its own (Sentinel-rewritten) config."""
        data = self.workdir / f"sentinel-{port}"
        self._spawn(port, ["redis-sentinel", str(data / "sentinel.conf")], data)
        wait_until(lambda: self.sentinel(port).ping(), 10, f"sentinel on {port} to restart")

    @contextmanager
    def sentinel_client_password(self, ports: list[int], password: str) -> Iterator[None]:
        """The Sentinels at `ports` take only `password` for the app's Sentinel user (changed on
        them and not in the app's settings, or a host a password rotation missed). Its open
        connections to them are closed, as their restart would: the next question logs in."""

        def take(port: int, taken: str) -> None:
            sentinel = self.sentinel(port)
            sentinel.execute_command("ACL", "SETUSER", SENTINEL_CLIENT_USER, "resetpass", f">{taken}")
            sentinel.execute_command("CLIENT", "KILL", "USER", SENTINEL_CLIENT_USER)

        try:
            for port in ports:
                take(port, password)
            yield
        finally:  # every Sentinel given back the password, also after one failed on the way
            for port in ports:
                with contextlib.suppress(redis.RedisError):
                    take(port, PASSWORDS["sentinel_client"])

    def kill(self, port: int) -> None:
        proc = self.processes.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def freeze(self, port: int) -> None:
        """SIGSTOP: the process neither answers nor closes its connections (a frozen or lost
        host: no TCP reset arrives; the kernel still completes new handshakes)."""
        self.processes[port].send_signal(signal.SIGSTOP)

    def thaw(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)

    def fill_disk(self, port: int) -> None:
        """Fill the disk of a data node (disk_mib) as a growing log file would, until the
        filesystem refuses (ENOSPC). A node meets it at its next write (until then it still
        accepts one): one is made on the master here, so that the node has met it on return
        (a replica through replication: fill a replica's disk before the master's)."""
        chunk = b"\0" * 2**20
        with open(self.workdir / f"redis-{port}" / "filler", "ab", buffering=0) as filler:
            while True:
                try:
                    filler.write(chunk)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
        node, master = self.admin(port), self.admin(self.master_port())

        def refusing() -> bool:
            with contextlib.suppress(redis.ResponseError):  # MISCONF, when `port` is the master
                master.set("fill-disk-probe", 1)
            if self.processes[port].poll() is not None:
                # A replica stops at the next write it is sent after its AOF write failed
                # (replica-ignore-disk-write-errors no): met, even before INFO could say so.
                return True
            return node.info("persistence")["aof_last_write_status"] == "err"

        wait_until(refusing, 10, f"redis on {port} to meet its full disk")

    def free_disk(self, port: int) -> None:
        """Delete the filler; a node that ran on through its full disk then writes what it
        held, and its AOF is rewritten as the node's kit-aof-guard does (the full disk left a
        hole in it, which would stop its next start here, where kit-aof-repair.py does not run)."""
        (self.workdir / f"redis-{port}" / "filler").unlink(missing_ok=True)
        if self.processes[port].poll() is not None:
            return  # it stopped on its full disk
        node = self.admin(port)
        wait_until(
            lambda: node.info("persistence")["aof_last_write_status"] == "ok", 30, f"redis on {port} to write"
        )
        done = node.info("persistence")["aof_rewrites"]
        wait_until(
            lambda: node.info("persistence")["aof_rewrite_in_progress"] == 0, 30, "a rewrite under way"
        )
        with contextlib.suppress(redis.ResponseError):  # one began meanwhile (a full sync's): it will do
            node.bgrewriteaof()

        def rewritten() -> bool:
            info = node.info("persistence")
            finished = not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
            return info["aof_rewrites"] > done and finished and info["aof_last_bgrewrite_status"] == "ok"

        wait_until(rewritten, 30, f"the AOF of redis on {port} rewritten")

    def failover(self) -> tuple[int, int]:
        """SENTINEL FAILOVER; returns (old, new) master ports once every Sentinel agrees. A
        Sentinel whose timer ran late (four test processes on two cores) enters TILT mode and acts
        on nothing for 30 s, and a failover it started may be aborted: one not done in 20 s is
        asked for again, for up to 90 s (two runs timed out waiting once, at 30 and 60 s)."""
        old = self.master_port()
        deadline = time.monotonic() + 90
        while True:
            try:
                self.sentinel(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
            except redis.ResponseError as error:  # INPROG: the last one still runs
                if "INPROG" not in str(error) or time.monotonic() > deadline:
                    raise
            try:
                new = wait_until(
                    lambda: (p := self.master_port()) != old and p, 20, "the Sentinels to promote the replica"
                )
                break
            except AssertionError:  # aborted (a Sentinel in TILT, a replica it found late): again
                if time.monotonic() > deadline:
                    raise
                if (late := self.master_port()) != old:  # done just now: not a second one
                    new = late
                    break
        wait_until(
            lambda: all(
                int(self.sentinel(s).sentinel_get_master_addr_by_name(MASTER_NAME)[1]) == new
                for s in self.sentinel_ports
            ),
            30,
            "every Sentinel to name the new master",
        )
        return old, new

    def wait_healthy(self) -> None:
        """Master known, replica linked and seen up by every running Sentinel: the state every
        test starts from. A Sentinel clears a replica's s_down flag only at its next PING after
        the replica answers again: a test that freezes the replica right after one that thawed
        it would otherwise find the old flag and go on before that Sentinel had seen the new
        freeze (test_store.py, a failed CI run: "Sentinel ... could promote" the frozen one)."""

        def healthy() -> bool:
            master = self.master_port()
            replica = next(p for p in self.data_ports if p != master)
            info = self.admin(replica).info("replication")
            if info.get("master_port") != master or info.get("master_link_status") != "up":
                return False
            sentinels = [
                p for p in self.sentinel_ports if p in self.processes and self.processes[p].poll() is None
            ]
            return not any(
                r["is_sdown"] and int(r["port"]) == replica
                for p in sentinels
                for r in self.sentinel(p).sentinel_slaves(MASTER_NAME)
            )

        wait_until(healthy, 60, "the replica to follow the master and every Sentinel to see it up")

    def flush(self) -> None:
        self.wait_healthy()
        master = self.admin(self.master_port())
        master.flushall()
        master.execute_command("WAIT", 1, 2000)

    def reset_acl_log(self) -> None:
        for port in self.data_ports:
            if port in self.processes:
                self.admin(port).acl_log_reset()

    def acl_denials(self) -> list[str]:
        """What Redis ACL refused the app's users since reset_acl_log, on every running node
        ("user: command or key (context)")."""
        found = []
        for port in self.data_ports:
            if port not in self.processes:
                continue
            try:
                entries = self.admin(port).acl_log()
            except redis.RedisError:  # frozen or restarting: nothing to read
                continue
            found += [
                f"{e['username']}: {e['reason']} {e['object']} ({e['context']})"
                for e in entries
                if e["username"] in (WEB_USER, WORKER_USER)
            ]
        return found

    def stop(self) -> None:
        for proc in self.processes.values():
            proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a master waits up to shutdown-timeout for replicas
                proc.kill()
                proc.wait()
        if self.disk_mib:
            for port in self.data_ports:
                subprocess.run(["umount", str(self.workdir / f"redis-{port}")], check=False)


def env_for(cluster: Cluster, **extra) -> dict[str, str]:
    """The environment a worker process needs to reach this cluster (as the workers' user)."""
    import json

    settings = {
        "SENTINELS": cluster.sentinels,
        "SENTINEL_USERNAME": SENTINEL_CLIENT_USER,
        "SENTINEL_PASSWORD": PASSWORDS["sentinel_client"],
        "MASTER_NAME": MASTER_NAME,
        "REDIS_USERNAME": WORKER_USER,
        "REDIS_PASSWORD": PASSWORDS["worker"],
        **cluster.app_settings(),
        **extra,
    }
    env = dict(os.environ)
    env.update({f"FRIDGE_{k}": json.dumps(v) for k, v in settings.items()})
    return env


def main() -> None:
    """`python tests/redis_cluster.py [--tls]`: a local master, replica and three Sentinels for
    development; prints the environment to export for `flask run` (the web tier's Redis user)
    and the worker's own user, as on a deployed platform."""
    import shlex
    import sys
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="fridge-redis-"))
    cluster = Cluster(workdir, tls=make_tls(workdir / "tls") if "--tls" in sys.argv[1:] else None)
    cluster.start()
    print(
        f"# master 127.0.0.1:{cluster.data_ports[0]}, replica 127.0.0.1:{cluster.data_ports[1]}, "
        f"Sentinels {', '.join(cluster.sentinels)}; data in {workdir}"
    )
    web = env_for(cluster, REDIS_USERNAME=WEB_USER, REDIS_PASSWORD=PASSWORDS["web"])
    for name, value in web.items():
        if name.startswith("FRIDGE_"):
            print(f"export {name}={shlex.quote(value)}")
    logins = {k: v for k, v in env_for(cluster).items() if k.startswith("FRIDGE_REDIS_")}
    worker = " ".join(f"{k}={shlex.quote(v)}" for k, v in logins.items())
    print("# A worker, in the background, logged in as the workers' user:")
    print(f"{worker} python -m fridge.worker &")
    print("# Ctrl-C stops them.", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
