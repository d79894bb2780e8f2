"""Password rotation (and certificate renewal, with TLS) under load: every password of the
platform but the dashboard's (the app's Redis users and Sentinel login, the admin, replication
and Sentinel ones) changes by two runs of the playbook, and with TLS every Redis and Sentinel
certificate is renewed, with enqueueing going on through Apache.

Run 1 (new value set, old one kept as `*_previous`): Redis and Sentinel accept both, the web
tier and the workers switch to the new one. Run 2 (`*_previous` gone, `--tags redis,sentinel`,
the kit CA's host certificates due for renewal): the old password is refused, every server
presents its new certificate; the data nodes reloaded theirs live (same process: no restart,
no failover), the Sentinels restarted one at a time.
Not one request may fail in between, and both runs, made at -vvv, print none of the passwords.
Last in the scenario: the passwords stay rotated.
"""

from __future__ import annotations

import base64
import json
import time
import tomllib
import uuid
from collections import Counter

import pytest
from kit_checks import (
    ReplyError,
    hosts_in,
    hostvars,
    pairs,
    play_recap,
    rendered,
    resolve,
    run_playbook,
    wait_for,
)
from kit_faults import (
    executed,
    make_certificates_due,
    sentinel_pids,
    served_certificates,
    server_pid,
    sh,
    under_load,
)

# Every password the playbook sets but the dashboard's: the app's (web, workers, Sentinel
# client) and the data tier's own (admin, replication, Sentinels' login on the nodes, Sentinels'
# password among themselves).
ROTATED = (
    "vault_redis_web_password",
    "vault_redis_worker_password",
    "vault_redis_sentinel_client_password",
    "vault_redis_admin_password",
    "vault_redis_replication_password",
    "vault_redis_sentinel_acl_password",
    "vault_redis_sentinel_password",
)


def printed_forms(secret: str) -> set[str]:
    """The ways `secret` shows in a text: as is, and base64-encoded inside a longer encoded
    text (a slurped file, `b64encode` of a template) at each of the three byte alignments. The
    characters at either edge of an encoding also carry bits of the neighbouring bytes, so only
    the characters made of the secret's bits alone are kept: base64 character i holds bits
    6i..6i+5 of the bytes, so the secret behind `shift` bytes fills characters
    ceil(8 * shift / 6) to floor(8 * (shift + len) / 6)."""
    raw = secret.encode()
    forms = {secret}
    for shift in range(3):
        encoded = base64.b64encode(b"x" * shift + raw).decode()
        forms.add(encoded[-(-8 * shift // 6) : 8 * (shift + len(raw)) // 6])
    return forms


def test_printed_forms_find_a_password_inside_any_base64_text():
    """The helper itself: a secret anywhere in a file is found in that file's base64."""
    value = "rotated-0123456789abcdef"
    for before in range(6):  # every alignment, twice
        for text in (f"masterauth {value}\nport 6379\n", f"masterauth {value}"):
            encoded = base64.b64encode(("#" * before + text).encode()).decode()
            assert any(form in encoded for form in printed_forms(value)), (before, text)
            wrong = base64.b64encode(("#" * before + text.replace("def", "deX")).encode()).decode()
            assert not any(form in wrong for form in printed_forms(value)), (before, text)


def _run(values: dict[str, str], *args: str) -> dict[str, dict[str, int]]:
    """A run that changes the passwords, at -vvv (every module's arguments and results are
    printed): no password, old or new, may be in its output, as is or base64-encoded (slurp
    returns a file's content in base64)."""
    run = run_playbook(*args, "-vvv", "-e", json.dumps(values))
    said = run.stdout + run.stderr
    recap = play_recap(run.stdout)
    assert run.returncode == 0, said[-20000:]
    assert recap, said[-5000:]
    assert any(counts["changed"] for counts in recap.values()), "the run changed nothing"
    assert len(said) > 200_000  # really verbose
    leaked = sorted(name for name, value in values.items() if any(f in said for f in printed_forms(value)))
    assert leaked == [], f"printed (as is or in base64) by ansible-playbook -vvv while rotating: {leaked}"
    return recap


def test_app_passwords_rotate_and_certificates_renew_under_load_with_no_failed_request(platform, group):
    platform.wait_healthy()
    tls = bool(group.tls_ca)  # renewal too when Redis and Sentinel speak TLS (molecule/prod does)
    v = hostvars(hosts_in("web")[0])
    old = {name: resolve(v, v[name]) for name in ROTATED}
    new = {name: f"rotated-{uuid.uuid4().hex[:16]}" for name in ROTATED}
    web_user = tomllib.loads(platform_config(platform))["REDIS_USERNAME"]  # as deployed
    # One client, a little slower than the drills': the two runs of the playbook share the two
    # cores with the workers, and with TLS every job's work horse opens its own connections;
    # this test is about refusals during the change, not throughput.
    with under_load(platform, "rotation", clients=1, pause=0.05) as load:
        began = time.monotonic()
        _run({**new, **{f"{name}_previous": old[name] for name in ROTATED}})
        config = platform_config(platform)
        assert new["vault_redis_web_password"] in config
        assert new["vault_redis_sentinel_client_password"] in config
        if tls:
            certificates = served_certificates(group)
            redis_pids = {h: server_pid(group, h) for h in group.nodes}
            sentinels_before = sentinel_pids(group)
            make_certificates_due(group)
        _run(new, "--tags", "redis,sentinel")  # retiring the old ones touches the data tier only
        now = time.monotonic()
        wait_for(lambda: load.acked_since(now), 60, "a request acknowledged after the second run", 0.2)
    # The tests' own logins follow the rotation.
    group.admin = (group.admin[0], new["vault_redis_admin_password"])
    group.sentinel_password = new["vault_redis_sentinel_password"]
    acked = load.acknowledged()
    missing, unfinished = executed(group, acked, timeout=180)
    statuses = Counter(a.status for a in load.answers)
    took = time.monotonic() - began
    print(f"\nrotation: {len(load.answers)} requests in {took:.0f}s, {dict(statuses)}, {len(missing)} lost")
    assert set(statuses) == {202}, dict(statuses)
    assert missing == []
    assert unfinished == []

    if tls:
        renewed = served_certificates(group)
        assert all(renewed[t] != certificates[t] for t in certificates), "a server kept its old certificate"
        assert {h: server_pid(group, h) for h in group.nodes} == redis_pids, "a data node restarted"
        after = sentinel_pids(group)
        assert all(after[h] != sentinels_before[h] for h in after), (sentinels_before, after)

    master = group.current_master()
    for replica in (a for a in group.nodes.values() if a != master):  # linked with the new password
        assert group.role(replica)["master_link_status"] == "up"
    for address in group.sentinels.values():
        wait_for(
            lambda a=address: watching(group, a), 30, f"Sentinel {address} to see its peers and the nodes"
        )
    # Every rotated password, on every server that checks it, for the user it belongs to: the
    # old one is refused, the new one taken (which also proves the user name right: Redis
    # answers WRONGPASS to a user that does not exist too). Users as the inventory names them,
    # the role's default where it names none.
    worker_user = rendered(hosts_in("web")[0], "kit_app_worker_redis_user")
    replication_user = resolve(v, v.get("redis_acl_replication_user", "kit-replica"))
    sentinel_acl_user = resolve(v, v.get("redis_acl_sentinel_user", "kit-sentinel"))
    logins = {  # password -> (where it is checked, user; None: Sentinel's default user)
        "vault_redis_web_password": ("node", web_user),
        "vault_redis_worker_password": ("node", worker_user),
        "vault_redis_admin_password": ("node", group.admin[0]),
        "vault_redis_replication_password": ("node", replication_user),
        "vault_redis_sentinel_acl_password": ("node", sentinel_acl_user),
        "vault_redis_sentinel_client_password": ("sentinel", group.sentinel_client[0]),
        "vault_redis_sentinel_password": ("sentinel", None),
    }
    assert sorted(logins) == sorted(ROTATED), "each rotated password needs its login here"
    servers = {"node": (group.node, group.nodes), "sentinel": (group.sentinel, group.sentinels)}
    for name, (kind, user) in logins.items():
        connect, addresses = servers[kind]
        for address in addresses.values():
            with pytest.raises(ReplyError, match="WRONGPASS"):
                connect(address, user=(user, old[name])).close()
            with connect(address, user=(user, new[name])):
                pass  # AUTH passed (some of these users may run nothing else, not even PING)
    with group.node(master, user=(web_user, new["vault_redis_web_password"])) as conn:
        assert conn.command("PING") == "PONG"


def watching(group, address: str) -> bool:
    """The Sentinel logs in to the master and sees its peers and the replica: they all take
    the new passwords."""
    with group.sentinel(address) as conn:
        state = pairs(conn.command("SENTINEL", "MASTER", group.master_name))
    seen = {k: state[k] for k in ("flags", "num-other-sentinels", "num-slaves")}
    print(f"Sentinel {address}: {seen}")
    return (
        state["flags"] == "master"
        and int(state["num-other-sentinels"]) == len(group.sentinels) - 1
        and int(state["num-slaves"]) == len(group.nodes) - 1
    )


def platform_config(platform) -> str:
    """The app's configuration file on the web host."""
    return sh(platform.web, f"cat /etc/{platform.worker_target.removesuffix('-workers.target')}/config.toml")
