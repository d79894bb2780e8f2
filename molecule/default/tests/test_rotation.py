"""Password rotation under load: the app's Redis users (web, workers) and the Sentinel client
login get new passwords by two runs of the playbook, with enqueueing going on through Apache.

Run 1 (new value set, old one kept as `*_previous`): Redis and Sentinel accept both, the web
tier and the workers switch to the new one. Run 2 (`*_previous` gone, `--tags redis,sentinel`):
the old one is refused.
Not one request may fail in between. Last in the scenario: the passwords stay rotated.
"""

from __future__ import annotations

import json
import time
import tomllib
import uuid
from collections import Counter

import pytest
from kit_checks import ReplyError, converge, hosts_in, hostvars, resolve
from kit_faults import executed, sh, under_load

ROTATED = ("vault_redis_web_password", "vault_redis_worker_password", "vault_redis_sentinel_client_password")


def _run(values: dict[str, str], *args: str) -> dict[str, dict[str, int]]:
    return converge(*args, "-e", json.dumps(values))


def test_app_passwords_rotate_under_load_with_no_failed_request(platform, group):
    platform.wait_healthy()
    v = hostvars(hosts_in("web")[0])
    old = {name: resolve(v, v[name]) for name in ROTATED}
    new = {name: f"rotated-{uuid.uuid4().hex[:16]}" for name in ROTATED}
    web_user = tomllib.loads(platform_config(platform))["REDIS_USERNAME"]  # as deployed
    with under_load(platform, "rotation") as load:
        began = time.monotonic()
        _run({**new, **{f"{name}_previous": old[name] for name in ROTATED}})
        config = platform_config(platform)
        assert new["vault_redis_web_password"] in config
        assert new["vault_redis_sentinel_client_password"] in config
        _run(new, "--tags", "redis,sentinel")  # retiring the old ones touches the data tier only
        now = time.monotonic()
        while not load.acked_since(now):
            time.sleep(0.2)
    acked = load.acknowledged()
    missing, unfinished = executed(group, acked, timeout=180)
    statuses = Counter(a.status for a in load.answers)
    took = time.monotonic() - began
    print(f"\nrotation: {len(load.answers)} requests in {took:.0f}s, {dict(statuses)}, {len(missing)} lost")
    assert set(statuses) == {202}, dict(statuses)
    assert missing == []
    assert unfinished == []

    master = group.current_master()
    with pytest.raises(ReplyError, match="WRONGPASS"):
        group.node(master, user=(web_user, old["vault_redis_web_password"]))
    with group.node(master, user=(web_user, new["vault_redis_web_password"])) as conn:
        assert conn.command("PING") == "PONG"
    client_user = group.sentinel_client[0]
    for address in group.sentinels.values():
        with pytest.raises(ReplyError, match="WRONGPASS"):
            group.sentinel(address, user=(client_user, old["vault_redis_sentinel_client_password"]))
        with group.sentinel(address, user=(client_user, new["vault_redis_sentinel_client_password"])) as conn:
            assert conn.command("PING") == "PONG"


def platform_config(platform) -> str:
    """The app's configuration file on the web host."""
    return sh(platform.web, f"cat /etc/{platform.worker_target.removesuffix('-workers.target')}/config.toml")
