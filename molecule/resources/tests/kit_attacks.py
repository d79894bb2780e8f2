"""Attacks on the data tier, made from the hosts an intruder would hold: a host outside the
topology (a throw-away container on the platform's network) and an app host, with the
credentials the kit put there. The scripts run on the host itself, so the host's firewall
and routes apply, as they would to an intruder."""

from __future__ import annotations

import hashlib
import json
import shlex

import testinfra
from kit_checks import hosts_in, hostvars
from kit_faults import docker

REDIS_PORT = 6379
SENTINEL_PORT = 26379

# Connects to each (address, port), sends an unauthenticated PING and prints what came back:
# the reply, "closed" (no answer in clear text: a TLS port), "timeout" (dropped: the filter)
# or "refused". With a CA (argv[2]) it asks again over TLS ("... tls"). Port 80 or 443 gets an
# HTTP request instead (443 over TLS without checking the certificate: only the answer counts).
PROBE = """
import json, socket, ssl, sys
out = {}
tls = ssl.create_default_context(cadata=sys.argv[2]) if len(sys.argv) > 2 else None
web = ssl.create_default_context()
web.check_hostname, web.verify_mode = False, ssl.CERT_NONE
for address, port in json.loads(sys.argv[1]):
    http = port in (80, 443)
    for mode in ["plain"] + (["tls"] if tls and not http else []):
        key = f"{address}:{port}" + (" tls" if mode == "tls" else "")
        try:
            with socket.create_connection((address, port), timeout=2) as raw:
                s = tls.wrap_socket(raw, server_hostname=address) if mode == "tls" else raw
                s = web.wrap_socket(raw) if port == 443 else s
                s.settimeout(2)
                s.sendall(b"PING\\r\\n" if not http else b"GET /healthz HTTP/1.0\\r\\n\\r\\n")
                out[key] = (s.recv(200).decode(errors="replace").splitlines() or ["closed"])[0]
        except TimeoutError:
            out[key] = "timeout"
        except ConnectionRefusedError:
            out[key] = "refused"
        except (ConnectionResetError, ssl.SSLError):
            out[key] = "closed"
print(json.dumps(out))
"""

# Runs on an app host as root (the intruder who took it): logs in with the credentials of the
# app's configuration (argv[1]["tier"]: "web" or "worker" picks the Redis user; the Sentinel
# login is the client one), asks a Sentinel where the master is, then runs each attack in a
# fresh session, on the master for Redis and on every Sentinel, and prints the last reply of
# each: "+OK", "-NOPERM ...", an integer, a list, or "closed"/"timeout".
ATTACK = r"""
import json, socket, ssl, sys, tomllib
plan = json.loads(sys.argv[1])
with open(plan["config"], "rb") as f:
    config = tomllib.load(f)
tls = ssl.create_default_context(cadata=config["REDIS_TLS_CA"]) if config.get("REDIS_TLS") else None
prefix = "WORKER_REDIS" if plan["tier"] == "worker" else "REDIS"
logins = {
    "redis": (config[prefix + "_USERNAME"], config[prefix + "_PASSWORD"]),
    "sentinel": (config["SENTINEL_USERNAME"], config["SENTINEL_PASSWORD"]),
}

def encode(args):
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)

def read(f):
    line = f.readline()
    if not line:
        return "closed"
    line = line.decode(errors="replace").rstrip("\r\n")
    kind, rest = line[:1], line[1:]
    if kind == "$":
        return None if int(rest) < 0 else f.read(int(rest) + 2)[:-2].decode(errors="replace")
    if kind == "*":
        return None if int(rest) < 0 else [read(f) for _ in range(int(rest))]
    return int(rest) if kind == ":" else line

def session(address, port, login, steps):
    try:
        with socket.create_connection((address, int(port)), timeout=3) as raw:
            s = tls.wrap_socket(raw, server_hostname=address) if tls else raw
            s.settimeout(3)
            f = s.makefile("rb")
            s.sendall(encode(["AUTH", *logins[login]]))
            said = read(f)
            if said != "+OK":
                return f"login refused: {said}"
            for step in steps:
                s.sendall(encode(step))
                said = read(f)
            return said
    except TimeoutError:
        return "timeout"
    except (ConnectionError, ssl.SSLError) as error:
        return f"closed: {error}"

first = plan["sentinels"][0]
master = session(*first, "sentinel", [["SENTINEL", "GET-MASTER-ADDR-BY-NAME", config["MASTER_NAME"]]])
out = {"redis_user": logins["redis"][0], "sentinel_user": logins["sentinel"][0], "master": master}
out["redis"] = {name: session(*master, "redis", steps) for name, steps in plan["redis"].items()}
out["sentinel"] = {
    name: {f"{a}:{p}": session(a, p, "sentinel", steps) for a, p in plan["sentinels"]}
    for name, steps in plan["sentinel"].items()
}
print(json.dumps(out))
"""


def _sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)


_FLUSH_SCRIPT = "return redis.call('FLUSHALL')"
_READ_SCRIPT = "return redis.call('GET', KEYS[1])"
_LIBRARY = "#!lua name=intruder\nredis.register_function('intruder', function() return 1 end)"

# What an intruder holding an app host's Redis login tries on the master. Each must be
# refused (NOPERM, or a script error naming the permission). Worker user and web user alike.
REDIS_ATTACKS: dict[str, list[list[str]]] = {
    "flushall": [["FLUSHALL"]],
    "config-set": [["CONFIG", "SET", "maxmemory", "1"]],
    "acl-setuser": [["ACL", "SETUSER", "intruder", "on", ">x", "+@all", "~*"]],
    "shutdown": [["SHUTDOWN", "NOSAVE"]],
    "replicaof": [["REPLICAOF", "192.0.2.1", "6379"]],
    "function-load": [["FUNCTION", "LOAD", _LIBRARY]],
    "function-delete": [["FUNCTION", "DELETE", "intruder"]],
    "function-flush": [["FUNCTION", "FLUSH"]],
    "script-flush": [["SCRIPT", "FLUSH"]],
    "eval": [["EVAL", "return 1", "0"]],
    "keys": [["KEYS", "*"]],
    "scan": [["SCAN", "0"]],
    "select": [["SELECT", "1"]],
    "move": [["MOVE", "fridge:intruder", "1"]],
    "client-list": [["CLIENT", "LIST"]],
    "client-kill": [["CLIENT", "KILL", "TYPE", "normal"]],
    "monitor": [["MONITOR"]],
    "debug": [["DEBUG", "SLEEP", "0"]],
    "write-outside-prefix": [["SET", "intruder", "1"]],
    "read-outside-prefix": [["GET", "other:secret"]],
    "publish-worker-command": [["PUBLISH", "rq:pubsub:any-worker", '{"command": "shutdown"}']],
    # A script runs with its caller's rights: loading one is allowed, its commands are not.
    "script-runs-flushall": [["SCRIPT", "LOAD", _FLUSH_SCRIPT], ["EVALSHA", _sha1(_FLUSH_SCRIPT), "0"]],
    "script-reads-outside-prefix": [
        ["SCRIPT", "LOAD", _READ_SCRIPT],
        ["EVALSHA", _sha1(_READ_SCRIPT), "1", "other:secret"],
    ],
}
# What the same login may do: the attacks above are refused for what they do, not because the
# login failed (the prefix is the app's, `fridge`).
REDIS_ALLOWED: dict[str, list[list[str]]] = {
    "ping": [["PING"]],
    "write-inside-prefix": [["SET", "fridge:attack-probe", "1"], ["DEL", "fridge:attack-probe"]],
}

# What an intruder holding the app's Sentinel login tries on every Sentinel.
SENTINEL_ATTACKS: dict[str, list[list[str]]] = {
    "sentinel-remove": [["SENTINEL", "REMOVE", "kit"]],
    "sentinel-monitor": [["SENTINEL", "MONITOR", "intruder", "192.0.2.1", "6379", "2"]],
    "sentinel-set-auth-pass": [["SENTINEL", "SET", "kit", "auth-pass", "x"]],
    "sentinel-reset": [["SENTINEL", "RESET", "*"]],
    "sentinel-failover": [["SENTINEL", "FAILOVER", "kit"]],
    "sentinel-config-set": [["SENTINEL", "CONFIG", "SET", "resolve-hostnames", "yes"]],
    "sentinel-flushconfig": [["SENTINEL", "FLUSHCONFIG"]],
    "acl-setuser": [["ACL", "SETUSER", "intruder", "on", ">x", "+@all"]],
    "shutdown": [["SHUTDOWN"]],
    "client-list": [["CLIENT", "LIST"]],
    "info": [["INFO"]],
}
SENTINEL_ALLOWED: dict[str, list[list[str]]] = {
    "get-master-addr": [["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "kit"]],
    "replicas": [["SENTINEL", "REPLICAS", "kit"]],
}


def redis_targets() -> list[tuple[str, int]]:
    """Every data node's and every Sentinel's address and port, from the inventory."""
    data = [(hostvars(h)["kit_address"], REDIS_PORT) for h in hosts_in("redis")]
    sentinels = [(hostvars(h)["kit_address"], SENTINEL_PORT) for h in hosts_in("redis_sentinel")]
    return data + sentinels


def probe_from_outside(network: str, address: str, targets: list[tuple[str, int]]) -> dict[str, str]:
    """PROBE from a throw-away container at `address` on `network`, in no inventory group."""
    container = ["--rm", "--network", network, "--ip", address, "kit-debian:13"]
    out = docker("run", *container, "python3", "-c", PROBE, json.dumps(targets))
    return json.loads(out)


def probe_from(host: testinfra.host.Host, targets: list[tuple[str, int]], ca: str) -> dict[str, str]:
    """PROBE from an inventory host (plain, and over TLS trusting `ca` when given)."""
    args = " ".join(shlex.quote(a) for a in [json.dumps(targets), *([ca] if ca else [])])
    probe = host.run(f"python3 -c {shlex.quote(PROBE)} {args}")
    assert probe.rc == 0, probe.stderr
    return json.loads(probe.stdout)


def attack_from(
    host: testinfra.host.Host,
    tier: str,
    config: str = "/etc/fridge/config.toml",
    redis: dict[str, list[list[str]]] | None = None,
) -> dict:
    """ATTACK from an app host with the credentials of its configuration for `tier`: the
    attacks above, or only the steps `redis` names, on the master (no Sentinel attack then)."""
    sentinels = [t for t in redis_targets() if t[1] == SENTINEL_PORT]
    plan = {
        "config": config,
        "tier": tier,
        "sentinels": sentinels,
        "redis": {**REDIS_ATTACKS, **REDIS_ALLOWED} if redis is None else redis,
        "sentinel": {**SENTINEL_ATTACKS, **SENTINEL_ALLOWED} if redis is None else {},
    }
    run = host.run(f"python3 -c {shlex.quote(ATTACK)} {shlex.quote(json.dumps(plan))}")
    assert run.rc == 0, run.stderr
    return json.loads(run.stdout)


def refused(reply: object) -> bool:
    """A refusal: NOPERM (the ACL), a script's error saying its caller may not run the command,
    or DEBUG's own gate (enable-debug-command, off: no client may run it, whatever its ACL)."""
    text = str(reply)
    said = ("NOPERM", "can't run this command", "DEBUG command not allowed")
    return text.startswith("-") and any(words in text for words in said)


def assert_no_command_without_login(got: dict[str, str], targets: list[tuple[str, int]], tls: bool) -> None:
    """PROBE's answers from a host the firewall lets in: every port answers, and none runs a
    command without a login. With TLS, clear text gets no RESP reply at all (the plain port is
    off) and a TLS session gets NOAUTH."""
    for address, port in targets:
        plain = got[f"{address}:{port}"]
        assert plain not in ("timeout", "refused"), (address, port, got)
        if tls:  # "closed", or the bytes of a TLS alert: no RESP reply
            assert plain[:1] not in ("+", "-", "$", "*", ":"), (address, port, got)
            assert got[f"{address}:{port} tls"].startswith("-NOAUTH"), (address, port, got)
        else:
            assert plain.startswith("-NOAUTH"), (address, port, got)
