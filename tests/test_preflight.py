"""Bad input stops a run in preflight, before any host is touched, with a message that names
the problem. Runs the tier playbooks against the controller itself with only the preflight
tags and in check mode, so nothing can be installed even if a check wrongly passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "kit_address": "127.0.0.1",
    "redis_bind_address": "127.0.0.1",
    "redis_sentinel_bind_address": "127.0.0.1",
    "redis_ha_bootstrap_master": "127.0.0.1",
    "redis_ha_nodes": ["127.0.0.1", "127.0.0.2"],
    "redis_ha_sentinels": ["127.0.0.1", "127.0.0.2", "127.0.0.3"],
    "redis_sentinel_bootstrap_master": "127.0.0.1",
    "redis_sentinel_nodes": ["127.0.0.1", "127.0.0.2"],
    "redis_sentinel_peers": ["127.0.0.1", "127.0.0.2", "127.0.0.3"],
    "redis_acl_admin_password": "preflight-admin-4Kd9",
    "redis_acl_replication_password": "preflight-replica-8Jw2",
    "redis_acl_sentinel_password": "preflight-sentinel-1Lp5",
    "redis_ha_sentinel_password": "preflight-sentinel-pw-6Tq3",
    "redis_sentinel_password": "preflight-sentinel-pw-6Tq3",
    "redis_sentinel_auth_password": "preflight-sentinel-1Lp5",
}


def run(playbook: str, tags: str, tmp_path: Path, **overrides) -> subprocess.CompletedProcess:
    variables = {k: v for k, v in {**GOOD, **overrides}.items() if v is not None}
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(variables))
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "[redis]\ncontroller ansible_connection=local ansible_become=false "
        f"ansible_python_interpreter={sys.executable}\n[redis_sentinel]\ncontroller\n"
    )
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            str(ROOT / playbook),
            "--check",
            "--tags",
            tags,
            "-e",
            f"@{extra}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess, variable: str, value: str | None) -> None:
    """The run failed and said which variable is wrong (argument specs catch unset ones)."""
    assert result.returncode != 0
    if value is None:
        assert "missing required arguments" in result.stdout
        assert variable in result.stdout
    else:
        assert f"{variable} is missing, empty" in result.stdout


def test_valid_input_passes_preflight(tmp_path):
    result = run("playbooks/redis.yml", "redis_preflight", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    result = run("playbooks/sentinel.yml", "redis_sentinel_preflight", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("redis_acl_admin_password", None),
        ("redis_acl_admin_password", ""),
        ("redis_acl_replication_password", "changeme"),
        ("redis_acl_sentinel_password", "example-password-here"),
        ("redis_ha_sentinel_password", "short"),
    ],
    ids=["missing", "empty", "changeme", "example", "too-short"],
)
def test_redis_refuses_a_bad_password_and_names_it(tmp_path, variable, value):
    result = run("playbooks/redis.yml", "redis_preflight", tmp_path, **{variable: value})
    assert_refused(result, variable, value)
    if value and len(value) > 12:
        assert value not in result.stdout, "the refused secret was printed"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("redis_sentinel_password", None), ("redis_sentinel_auth_password", "CHANGEME")],
)
def test_sentinel_refuses_a_bad_password_and_names_it(tmp_path, variable, value):
    result = run("playbooks/sentinel.yml", "redis_sentinel_preflight", tmp_path, **{variable: value})
    assert_refused(result, variable, value)


@pytest.mark.parametrize(
    ("playbook", "tags", "overrides"),
    [
        ("playbooks/redis.yml", "redis_preflight", {"redis_ha_sentinels": ["127.0.0.1", "127.0.0.2"]}),
        ("playbooks/redis.yml", "redis_preflight", {"redis_ha_nodes": ["127.0.0.1"]}),
        ("playbooks/redis.yml", "redis_preflight", {"redis_ha_bootstrap_master": "10.9.9.9"}),
        ("playbooks/sentinel.yml", "redis_sentinel_preflight", {"redis_sentinel_quorum": 4}),
        ("playbooks/sentinel.yml", "redis_sentinel_preflight", {"redis_sentinel_peers": ["127.0.0.1"]}),
    ],
    ids=["two-sentinels", "no-replica", "master-not-a-node", "quorum-above-sentinels", "one-sentinel"],
)
def test_impossible_topology_is_refused(tmp_path, playbook, tags, overrides):
    result = run(playbook, tags, tmp_path, **overrides)
    assert result.returncode != 0
    assert "Impossible topology" in result.stdout


def test_valkey_is_refused_where_debian_does_not_package_it(tmp_path):
    release = Path("/etc/debian_version").read_text() if Path("/etc/debian_version").exists() else ""
    if not release.startswith("12"):
        pytest.skip("the controller is not Debian 12")
    result = run("playbooks/redis.yml", "redis_preflight", tmp_path, redis_flavor="valkey")
    assert result.returncode != 0
    assert "redis_flavor=valkey is not packaged on Debian 12" in result.stdout
