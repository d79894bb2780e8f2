"""roles/firewall on the platform: Redis and Sentinel answer only the topology's hosts, HTTP
answers everyone. Attacks come from a host outside the topology (a throw-away container on the
same network, as a compromised neighbour would be) and from the app host itself."""

from __future__ import annotations

import json
import shlex

import pytest
from kit_checks import get_host, hosts_in, hostvars, rendered
from kit_faults import docker

NETWORK = "kit-default"
OUTSIDER = "172.28.30.99"  # on the platform's network, in no group of the inventory

# Runs on a host: connects to each (address, port), sends an unauthenticated PING and prints
# what came back: the reply, "closed" (no answer in clear text: a TLS port), "timeout"
# (dropped: the filter) or "refused". With a CA (argv[2]) it asks again over TLS ("... tls").
PROBE = """
import json, socket, ssl, sys
out = {}
tls = ssl.create_default_context(cadata=sys.argv[2]) if len(sys.argv) > 2 else None
for address, port in json.loads(sys.argv[1]):
    for mode in ["plain"] + (["tls"] if tls and port != 80 else []):
        key = f"{address}:{port}" + (" tls" if mode == "tls" else "")
        try:
            with socket.create_connection((address, port), timeout=2) as raw:
                s = tls.wrap_socket(raw, server_hostname=address) if mode == "tls" else raw
                s.settimeout(2)
                s.sendall(b"PING\\r\\n" if port != 80 else b"GET /healthz HTTP/1.0\\r\\n\\r\\n")
                out[key] = (s.recv(200).decode(errors="replace").splitlines() or ["closed"])[0]
        except TimeoutError:
            out[key] = "timeout"
        except ConnectionRefusedError:
            out[key] = "refused"
        except ConnectionResetError:
            out[key] = "closed"
print(json.dumps(out))
"""


def tls_ca() -> str:
    """The CA of the Redis and Sentinel certificates, when they speak TLS ('' when not)."""
    return str(
        rendered(hosts_in("redis")[0], "redis_tls_ca_certificate if redis_tls | default(false) else ''")
    )


def targets() -> list[tuple[str, int]]:
    data = [(hostvars(h)["kit_address"], 6379) for h in hosts_in("redis")]
    sentinels = [(hostvars(h)["kit_address"], 26379) for h in hosts_in("redis_sentinel")]
    return data + sentinels


def web() -> tuple[str, int]:
    return (hostvars(hosts_in("web")[0])["kit_address"], 80)


def test_a_host_outside_the_topology_reaches_only_http():
    got = json.loads(
        docker(
            "run", "--rm", "--network", NETWORK, "--ip", OUTSIDER, "kit-debian:13",
            "python3", "-c", PROBE, json.dumps([*targets(), web()]),
        )
    )  # fmt: skip
    print(f"from {OUTSIDER}: {got}")
    for address, port in targets():
        assert got[f"{address}:{port}"] == "timeout", (address, port)
    assert got["{}:{}".format(*web())].startswith("HTTP/1.1 200"), got


@pytest.mark.parametrize("name", hosts_in("web") + hosts_in("workers"))
def test_every_redis_and_sentinel_port_refuses_the_unauthenticated_from_an_app_host(name):
    host = get_host(name)
    ca = tls_ca()
    args = " ".join(shlex.quote(a) for a in [json.dumps(targets()), *([ca] if ca else [])])
    probe = host.run(f"python3 -c {shlex.quote(PROBE)} {args}")
    assert probe.rc == 0, probe.stderr
    got = json.loads(probe.stdout)
    print(f"from {name}: {got}")
    for address, port in targets():
        if ca:  # TLS only: clear text gets nothing; over TLS, no command without a login
            plain = got[f"{address}:{port}"]  # "closed", or a TLS alert: no RESP reply
            assert plain != "timeout", (address, port, got)
            assert plain[:1] not in ("+", "-", "$", "*", ":"), (address, port, got)
            assert got[f"{address}:{port} tls"].startswith("-NOAUTH"), (address, port, got)
        else:
            assert got[f"{address}:{port}"].startswith("-NOAUTH"), (address, port, got)


PLATFORM = sorted({h for group in ("redis", "redis_sentinel", "web", "workers") for h in hosts_in(group)})


@pytest.mark.parametrize("name", PLATFORM)
def test_the_filter_is_loaded_at_boot_and_leaves_other_tables_alone(name):
    host = get_host(name)
    assert host.service("kit-firewall").is_enabled
    assert "policy drop" in host.run("nft list table inet kit").stdout
    # The kit's own unit is confined too: root with CAP_NET_ADMIN only, read-only system.
    report = host.run("systemd-analyze security kit-firewall.service --no-pager").stdout
    score = float(report.strip().splitlines()[-1].split(":")[1].split()[0])
    print(f"{name}: kit-firewall.service exposure {score}")
    assert score <= 2.0
    # Docker's own rules (its DNS at 127.0.0.11) live in another table and still work.
    other = next(h for h in hosts_in("redis") if h != name)
    assert host.run(f"getent hosts {other}").rc == 0
