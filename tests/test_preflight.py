"""Bad input stops a run in preflight, before any host is touched, with a message that names
the problem. Runs the tier playbooks against the controller itself with only the preflight
tags and in check mode, so nothing can be installed even if a check wrongly passed.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Plain output whatever the caller asked for (make forces colour outside CI).
PLAIN = {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}

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
    "redis_sentinel_client_password": "preflight-sentinel-client-2Vx8",
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
    env = {**os.environ, **PLAIN}
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


REDIS, SENTINEL = "playbooks/redis.yml", "playbooks/sentinel.yml"


# A rotation's previous passwords are accepted as logins while listed: the example's "<the old
# ...>" left in place, or an empty value, would be a password anyone can type.
@pytest.mark.parametrize(
    ("playbook", "tags", "variable", "value"),
    [
        (REDIS, "redis_preflight", "redis_acl_admin_previous_passwords", "<the old vault_redis_admin_pw>"),
        (REDIS, "redis_preflight", "redis_ha_sentinel_previous_passwords", ""),
        (SENTINEL, "redis_sentinel_preflight", "redis_sentinel_previous_passwords", "changeme"),
        (SENTINEL, "redis_sentinel_preflight", "redis_sentinel_client_previous_passwords", "short"),
    ],
    ids=["redis-placeholder", "redis-empty", "sentinel-changeme", "sentinel-client-short"],
)
def test_a_placeholder_previous_password_is_refused_naming_it(tmp_path, playbook, tags, variable, value):
    result = run(playbook, tags, tmp_path, **{variable: ["a-real-old-password-7Hq2", value]})
    said = " ".join(result.stdout.split())
    assert result.returncode != 0
    refusal = f"{variable} holds a password that is empty, shorter than 12 characters or a placeholder"
    assert refusal in said, said[-2000:]
    assert "a-real-old-password-7Hq2" not in result.stdout, "a password was printed"


def test_an_application_user_with_a_placeholder_previous_password_is_refused_naming_it(tmp_path):
    users = [
        {"name": "app-web", "password": "web-password-3Jd8Lq", "keys": ["rq:*"], "commands": ["get"]},
        {
            "name": "app-worker",
            "password": "worker-password-5Kx2Mw",
            "previous_passwords": ["<the old vault_redis_worker_password>"],
            "keys": ["rq:*"],
            "commands": ["get"],
        },
    ]
    result = run("playbooks/redis.yml", "redis_preflight", tmp_path, redis_acl_app_users=users)
    said = " ".join(result.stdout.split())
    assert result.returncode != 0
    assert 'the entry for "app-worker" needs a name, a password' in said, said[-2000:]
    assert 'the entry for "app-web"' not in said
    for secret in ("web-password-3Jd8Lq", "worker-password-5Kx2Mw"):
        assert secret not in result.stdout, "a password was printed"
    users[1]["previous_passwords"] = ["worker-old-password-8Pn4"]
    result = run("playbooks/redis.yml", "redis_preflight", tmp_path, redis_acl_app_users=users)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "worker-old-password-8Pn4" not in result.stdout, "a password was printed"


@pytest.mark.parametrize(
    ("playbook", "tags", "overrides"),
    [
        ("playbooks/redis.yml", "redis_preflight", {"redis_ha_sentinels": ["127.0.0.1", "127.0.0.2"]}),
        ("playbooks/redis.yml", "redis_preflight", {"redis_ha_nodes": ["127.0.0.1"]}),
        ("playbooks/redis.yml", "redis_preflight", {"redis_ha_bootstrap_master": "10.9.9.9"}),
        ("playbooks/sentinel.yml", "redis_sentinel_preflight", {"redis_sentinel_quorum": 4}),
        ("playbooks/sentinel.yml", "redis_sentinel_preflight", {"redis_sentinel_quorum": 3}),
        ("playbooks/sentinel.yml", "redis_sentinel_preflight", {"redis_sentinel_peers": ["127.0.0.1"]}),
        ("playbooks/sentinel.yml", "redis_sentinel_preflight", {"redis_sentinel_nodes": ["127.0.0.1"]}),
        (
            "playbooks/redis.yml",
            "redis_preflight",
            {"redis_ha_nodes": ["127.0.0.1", "127.0.0.2", "127.0.0.2"], "twice": "127.0.0.2"},
        ),
        (
            "playbooks/sentinel.yml",
            "redis_sentinel_preflight",
            {"redis_sentinel_peers": ["127.0.0.1", "127.0.0.3", "127.0.0.3"], "twice": "127.0.0.3"},
        ),
    ],
    ids=[
        "two-sentinels",
        "no-replica",
        "master-not-a-node",
        "quorum-above-sentinels",
        "quorum-of-every-sentinel",
        "one-sentinel",
        "sentinel-without-replica",
        "node-listed-twice",
        "sentinel-listed-twice",
    ],
)
def test_impossible_topology_is_refused(tmp_path, playbook, tags, overrides):
    twice = overrides.pop("twice", None)
    result = run(playbook, tags, tmp_path, **overrides)
    said = " ".join(result.stdout.split())
    assert result.returncode != 0
    assert "Impossible topology" in said
    if twice:
        assert f"twice: {twice})" in said, said[-2000:]


@pytest.mark.parametrize("value", ["correct horse battery staple", 'quote"in-it-12', "back\\slash-in-it-12"])
@pytest.mark.parametrize(
    ("playbook", "tags", "variable"),
    [
        ("playbooks/redis.yml", "redis_preflight", "redis_acl_replication_password"),
        ("playbooks/sentinel.yml", "redis_sentinel_preflight", "redis_sentinel_auth_password"),
    ],
)
def test_a_password_redis_cannot_write_in_its_configuration_is_refused_naming_it(
    tmp_path, playbook, tags, variable, value
):
    """Redis writes masterauth, Sentinel auth-pass and sentinel-pass, unquoted: a space or a quote
    there would keep the server from starting again."""
    result = run(playbook, tags, tmp_path, **{variable: value})
    said = " ".join(result.stdout.split())
    assert result.returncode != 0
    assert f"{variable} has a space, a quote, a backslash" in said, said[-2000:]
    assert value not in result.stdout, "the refused secret was printed"


@pytest.mark.parametrize(
    ("playbook", "tags", "variable"),
    [
        ("playbooks/redis.yml", "redis_preflight", "redis_tls_auth_clients"),
        ("playbooks/sentinel.yml", "redis_sentinel_preflight", "redis_sentinel_tls_auth_clients"),
    ],
)
def test_client_certificates_required_are_refused_naming_the_setting(tmp_path, playbook, tags, variable):
    """The kit's clients (replicas, Sentinels, its modules, the app) have no certificate."""
    result = run(playbook, tags, tmp_path, **{variable: "yes"})
    said = " ".join(result.stdout.split())
    assert result.returncode != 0
    assert f"value of {variable} must be one of: no, optional" in said, said[-2000:]


def refused_topology(tmp_path: Path, groups: str) -> str:
    """site.yml on an inventory of these groups (YAML lines under `children:`): it must stop
    in the preflight. Returns what it said, on one line."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n" + groups)
    result = run_site(tmp_path, PROD_SECRETS, inventory=inventory)
    assert result.returncode != 0
    assert stopped_in_preflight(result.stdout), result.stdout[-3000:]
    return " ".join((result.stdout + result.stderr).split())


def test_two_hosts_with_one_address_are_refused_naming_them(tmp_path):
    said = refused_topology(
        tmp_path,
        "    redis: {hosts: {a: {kit_address: 10.0.0.1}, b: {kit_address: 10.0.0.1}}}\n"
        "    redis_sentinel: {hosts: {a: {}, b: {}, c: {kit_address: 10.0.0.3}}}\n"
        "    web: {hosts: {c: {}}}\n"
        "    workers: {hosts: {c: {}}}\n",
    )
    refusal = "Impossible topology: each host needs a kit_address of its own, but a (10.0.0.1), b (10.0.0.1)"
    assert f"{refusal} share one" in said, said[-3000:]


def test_a_run_limited_to_some_tiers_is_checked_too(tmp_path):
    """The rotation's second run is `site.yml --tags redis,sentinel`: the tags must not skip
    the preflight."""
    result = run_site(tmp_path, args=("--tags", "redis,sentinel"))
    assert result.returncode != 0
    assert "vault_redis_admin_password is missing, empty" in result.stdout + result.stderr
    assert stopped_in_preflight(result.stdout), result.stdout[-3000:]


def test_valkey_is_refused_where_debian_does_not_package_it(tmp_path):
    release = Path("/etc/debian_version").read_text() if Path("/etc/debian_version").exists() else ""
    if not release.startswith("12"):
        pytest.skip("the controller is not Debian 12")
    result = run("playbooks/redis.yml", "redis_preflight", tmp_path, redis_flavor="valkey")
    assert result.returncode != 0
    assert "redis_flavor=valkey is not packaged on Debian 12" in result.stdout


# --- site.yml with the production inventory ---------------------------------------------------

PROD_SECRETS = {
    "vault_redis_admin_password": "prod-test-admin-8Jq2",
    "vault_redis_replication_password": "prod-test-replica-3Kd9",
    "vault_redis_sentinel_acl_password": "prod-test-sentinel-acl-5Lp1",
    "vault_redis_sentinel_password": "prod-test-sentinel-7Wc4",
    "vault_redis_sentinel_client_password": "prod-test-sentinel-client-4Ry1",
    "vault_redis_web_password": "prod-test-web-2Nf6",
    "vault_redis_worker_password": "prod-test-worker-6Gv1",
    "vault_dashboard_password": "prod-test-dashboard-9Hx3",
    "vault_kit_app_api_token": "prod-test-api-token-4Vb8Qe",
}


def run_site(
    tmp_path: Path,
    extra: dict | None = None,
    playbook: str = "site.yml",
    inventory: Path | None = None,
    args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """site.yml (or one playbook) against the production inventory; a passing preflight
    would go on to the real hosts, so tests that expect a pass run playbooks/preflight.yml."""
    cmd = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(inventory or ROOT / "inventories/prod"),
        str(ROOT / playbook),
    ]
    if extra is not None:
        extra_file = tmp_path / "extra.json"
        extra_file.write_text(json.dumps(extra))
        cmd += ["-e", f"@{extra_file}"]
    cmd += args
    env = {**os.environ, **PLAIN}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def stopped_in_preflight(output: str) -> bool:
    """Only the preflight play started and no host was reached (the production inventory's
    example hosts do not exist: a connection attempt would show in the recap as unreachable)."""
    plays = [line for line in output.splitlines() if line.startswith("PLAY [") and "RECAP" not in line]
    recap = output.split("PLAY RECAP", 1)[-1]
    return (
        len(plays) == 1
        and plays[0].startswith("PLAY [Check secrets and topology")
        and "unreachable=0" in recap
        and all(f"unreachable={n}" not in recap for n in range(1, 10))
    )


def test_site_without_the_vault_stops_in_preflight_naming_the_secret(tmp_path):
    result = run_site(tmp_path)
    assert result.returncode != 0
    assert "vault_redis_admin_password is missing, empty" in result.stdout + result.stderr
    assert "ansible-vault create" in result.stdout + result.stderr
    assert stopped_in_preflight(result.stdout), "a host was touched"


def test_a_run_limited_to_one_host_is_checked_too(tmp_path):
    """Scaling out is `site.yml --limit <new host>`: the limit must not skip the preflight."""
    graph = [str(Path(sys.executable).parent / "ansible-inventory"), "--graph", "web"]
    listed = subprocess.run(
        [*graph, "-i", str(ROOT / "inventories/prod")], capture_output=True, text=True, check=True
    )
    web = listed.stdout.split("--")[-1].strip()
    result = run_site(tmp_path, args=("--limit", web))
    assert result.returncode != 0
    assert "vault_redis_admin_password is missing, empty" in result.stdout + result.stderr
    assert stopped_in_preflight(result.stdout), result.stdout[-3000:]


def example_values() -> dict[str, str]:
    """The placeholders vault.yml.example ships, by name."""
    example = (ROOT / "inventories/prod/group_vars/all/vault.yml.example").read_text()
    return dict(line.split(": ", 1) for line in example.splitlines() if line.startswith("vault_"))


def test_site_with_the_example_values_stops_in_preflight(tmp_path):
    result = run_site(tmp_path, example_values())
    assert result.returncode != 0
    for name in PROD_SECRETS:
        assert f"{name} is missing, empty" in result.stdout + result.stderr
    assert stopped_in_preflight(result.stdout), result.stdout[-3000:]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("vault_redis_admin_password_previous", "<the old vault_redis_admin_password>"),
        ("vault_redis_worker_password_previous", ""),
        ("vault_kit_app_api_token_previous", "old-api-token-x"),
    ],
    ids=["example-line", "empty", "token-shorter-than-16"],
)
def test_site_refuses_a_placeholder_previous_secret_naming_it(tmp_path, name, value):
    """The rotation's first run sets <name>_previous from vault.yml.example's commented lines."""
    variables = {**PROD_SECRETS, "kit_app_tls": False, "kit_redis_tls": False, name: value}
    result = run_site(tmp_path, variables, "playbooks/preflight.yml")
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert f"{name} is set but empty, shorter than" in said, said[-3000:]
    assert "while a rotation is under way it is accepted as a login" in said
    for secret in PROD_SECRETS.values():
        assert secret not in result.stdout + result.stderr, "a secret was printed"
    variables[name] = "a-real-old-secret-4Tz9xQ"
    result = run_site(tmp_path, variables, "playbooks/preflight.yml")
    assert result.returncode == 0, result.stdout[-3000:]


# Production enqueues only with a bearer token (kit_app_api_tokens: [vault_kit_app_api_token]);
# without TLS, so that the token is the only thing the preflight can refuse.
@pytest.mark.parametrize(
    "token",
    [example_values()["vault_kit_app_api_token"], None, "only-15-chars-x"],
    ids=["example", "missing", "shorter-than-16"],
)
def test_the_api_token_is_refused_naming_it_unless_the_api_is_opened(tmp_path, token):
    variables = {**PROD_SECRETS, "kit_app_tls": False, "kit_redis_tls": False}
    variables.pop("vault_kit_app_api_token")
    if token is not None:
        variables["vault_kit_app_api_token"] = token
    result = run_site(tmp_path, variables, "playbooks/preflight.yml")
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert not token or token not in said, "the refused token was printed"
    assert "vault_kit_app_api_token is missing, empty, shorter than 16 characters" in said, said[-3000:]
    assert "kit_app_api_tokens: [] instead" in said
    assert [name for name in PROD_SECRETS if f"{name} is missing" in said] == ["vault_kit_app_api_token"]
    # The operator who wants enqueueing open says so: no token is asked for.
    opened = run_site(tmp_path, {**variables, "kit_app_api_tokens": []}, "playbooks/preflight.yml")
    assert opened.returncode == 0, opened.stdout[-3000:]


def test_site_starts_with_the_preflight_play():
    top = [line for line in (ROOT / "site.yml").read_text().splitlines() if "import_playbook" in line]
    assert [line.split()[-1] for line in top] == ["playbooks/site.yml"]
    imports = [
        line for line in (ROOT / "playbooks/site.yml").read_text().splitlines() if "import_playbook" in line
    ]
    assert imports[0].split()[-1] == "preflight.yml"


VAULT_PASSWORD = "preflight-vault-password-5Tg8"  # noqa: S105 (a test value)


def vault(tmp_path: Path, *args: str) -> tuple[str, ...]:
    """Run ansible-vault with the tests' password; return the arguments a playbook run needs."""
    password = tmp_path / "vault-password"
    password.write_text(VAULT_PASSWORD + "\n")
    if args:
        tool = str(Path(sys.executable).parent / "ansible-vault")
        run = [tool, *args[:1], "--vault-password-file", str(password), *args[1:]]
        subprocess.run(run, check=True, capture_output=True, env={**os.environ, **PLAIN})
    return ("--vault-password-file", str(password))


PROD_TLS_HOSTS = ("data1.example.net", "data2.example.net", "app1.example.net")


def tls_files(tmp_path: Path, encrypt: bool = True) -> dict[str, str]:
    """Where the operator's certificates and keys are (production serves HTTPS, kit_app_tls,
    and Redis and Sentinel over TLS, kit_redis_tls); the keys encrypted with ansible-vault, as
    the README says."""
    redis = tmp_path / "redis"
    redis.mkdir(exist_ok=True)
    files = [tmp_path / "server.crt", tmp_path / "server.key", redis / "ca.crt"]
    files += [redis / f"{host}.{kind}" for host in PROD_TLS_HOSTS for kind in ("crt", "key")]
    for path in files:
        path.write_text("PEM\n")
    if encrypt:
        vault(tmp_path, "encrypt", *(str(p) for p in files if p.suffix == ".key"))
    return {
        "kit_app_tls_certificate_file": str(tmp_path / "server.crt"),
        "kit_app_tls_key_file": str(tmp_path / "server.key"),
        "kit_redis_tls": True,
        "kit_redis_tls_dir": str(redis),
    }


def test_redis_tls_without_the_operators_certificates_is_refused_naming_them(tmp_path):
    files = tls_files(tmp_path)
    (tmp_path / "redis" / "data2.example.net.key").unlink()
    (tmp_path / "redis" / "ca.crt").unlink()
    result = run_site(tmp_path, {**PROD_SECRETS, **files}, "playbooks/preflight.yml", args=vault(tmp_path))
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "kit_redis_tls is on with the operator's certificates" in said
    assert f"{tmp_path}/redis/ca.crt, {tmp_path}/redis/data2.example.net.key are missing" in said


def test_a_redis_tls_key_in_clear_text_is_refused(tmp_path):
    files = tls_files(tmp_path)
    (tmp_path / "redis" / "app1.example.net.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    result = run_site(tmp_path, {**PROD_SECRETS, **files}, "playbooks/preflight.yml", args=vault(tmp_path))
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert f"{tmp_path}/redis/app1.example.net.key: private key(s) in clear text" in said


def test_a_tls_key_in_clear_text_is_refused(tmp_path):
    files = tls_files(tmp_path, encrypt=False)
    result = run_site(tmp_path, {**PROD_SECRETS, **files}, playbook="playbooks/preflight.yml")
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert f"{files['kit_app_tls_key_file']} is a private key in clear text" in said


def test_https_without_the_operators_certificate_is_refused_naming_it(tmp_path):
    result = run_site(tmp_path, PROD_SECRETS, playbook="playbooks/preflight.yml")
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "kit_app_tls is on but the certificate (" in said
    assert "inventories/prod/files/tls/server.crt" in said
    plain = run_site(
        tmp_path, {**PROD_SECRETS, "kit_app_tls": False, "kit_redis_tls": False}, "playbooks/preflight.yml"
    )
    assert plain.returncode == 0, plain.stdout[-3000:]


def test_real_secrets_pass_preflight(tmp_path):
    variables = {**PROD_SECRETS, **tls_files(tmp_path)}
    result = run_site(tmp_path, variables, playbook="playbooks/preflight.yml", args=vault(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_an_inventory_with_two_sentinels_is_refused(tmp_path):
    said = refused_topology(
        tmp_path,
        "    redis: {hosts: {a: {kit_address: 10.0.0.1}, b: {kit_address: 10.0.0.2}}}\n"
        "    redis_sentinel: {hosts: {a: {}, b: {}}}\n"
        "    web: {hosts: {a: {}}}\n"
        "    workers: {hosts: {b: {}}}\n",
    )
    assert "Impossible topology" in said
    assert "redis_sentinel=2" in said


def test_an_inventory_where_no_failover_could_promote_a_replica_is_refused(tmp_path):
    """Sentinel never promotes a replica with replica-priority 0: with it on every node but the
    master, the group has no failover at all, which nothing said."""
    said = refused_topology(
        tmp_path,
        "    redis: {hosts: {a: {kit_address: 10.0.0.1},\n"
        "                    b: {kit_address: 10.0.0.2, redis_replica_priority: 0}}}\n"
        "    redis_sentinel: {hosts: {a: {}, b: {}, c: {kit_address: 10.0.0.3}}}\n"
        "    web: {hosts: {c: {}}}\n"
        "    workers: {hosts: {c: {}}}\n",
    )
    assert "Sentinel promotes only a replica whose redis_replica_priority is above 0" in said, said[-3000:]
    assert "only a of a, b have one" in said


def encrypt_string(tmp_path: Path, name: str, value: str) -> str:
    tool = str(Path(sys.executable).parent / "ansible-vault")
    return subprocess.run(
        [tool, "encrypt_string", *vault(tmp_path), "--stdin-name", name],
        input=value,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **PLAIN},
    ).stdout


def prod_preflight(tmp_path: Path, inventory: Path, *args: str) -> subprocess.CompletedProcess:
    """playbooks/preflight.yml on a copy of the production inventory, with the operator's TLS
    files and the tests' vault password."""
    playbook, hosts = "playbooks/preflight.yml", inventory / "hosts.yml"
    return run_site(tmp_path, tls_files(tmp_path), playbook, hosts, (*vault(tmp_path), *args))


def test_a_production_vault_file_in_clear_text_is_refused(tmp_path):
    inventory = tmp_path / "prod"
    shutil.copytree(ROOT / "inventories/prod", inventory)
    secrets = inventory / "group_vars/all/vault.yml"

    def preflight() -> subprocess.CompletedProcess:
        return prod_preflight(tmp_path, inventory)

    secrets.write_text("".join(f"{name}: {value}\n" for name, value in PROD_SECRETS.items()))
    result = run_site(tmp_path, inventory=inventory / "hosts.yml")
    assert result.returncode != 0
    assert f"{secrets} is not encrypted" in " ".join((result.stdout + result.stderr).split())
    assert stopped_in_preflight(result.stdout), result.stdout[-3000:]

    # One value encrypted inline, the others still in clear text: refused.
    first, *others = PROD_SECRETS.items()
    secrets.write_text(encrypt_string(tmp_path, *first) + "".join(f"{k}: {v}\n" for k, v in others))
    result = preflight()
    assert result.returncode != 0
    assert f"{secrets} is not encrypted" in " ".join(result.stdout.split())

    # Every value encrypted inline (ansible-vault encrypt_string), or the whole file: accepted.
    secrets.write_text("".join(encrypt_string(tmp_path, k, v) for k, v in PROD_SECRETS.items()))
    assert preflight().returncode == 0
    secrets.write_text("".join(f"{name}: {value}\n" for name, value in PROD_SECRETS.items()))
    vault(tmp_path, "encrypt", str(secrets))
    result = preflight()
    assert result.returncode == 0, result.stdout[-3000:]


def clear_text_vault(tmp_path: Path, shape: str) -> tuple[str, list[str]]:
    """PROD_SECRETS as a vault.yml in one of the YAML shapes that a search for "name: value"
    lines took for encrypted, and the names it leaves in clear text."""
    names = list(PROD_SECRETS)
    if shape == "value-on-the-next-line":
        return "".join(f"{k}:\n  {v}\n" for k, v in PROD_SECRETS.items()), names
    if shape == "quoted-keys":  # single and double quotes in turn
        quoted = [f'"{k}"' if i % 2 else f"'{k}'" for i, k in enumerate(names)]
        return "".join(f"{q}: {v}\n" for q, v in zip(quoted, PROD_SECRETS.values(), strict=True)), names
    if shape == "flow-style":
        return "{" + ", ".join(f"{k}: {v}" for k, v in PROD_SECRETS.items()) + "}\n", names
    # Every value an inline !vault but the last, which sits on the line after its name.
    *encrypted, (last, value) = PROD_SECRETS.items()
    return "".join(encrypt_string(tmp_path, k, v) for k, v in encrypted) + f"{last}:\n  {value}\n", [last]


@pytest.mark.parametrize("shape", ["value-on-the-next-line", "quoted-keys", "flow-style", "one-value-left"])
def test_a_clear_text_vault_file_in_any_yaml_shape_is_refused_naming_it(tmp_path, shape):
    inventory = tmp_path / "prod"
    shutil.copytree(ROOT / "inventories/prod", inventory)
    secrets = inventory / "group_vars/all/vault.yml"
    text, clear = clear_text_vault(tmp_path, shape)
    secrets.write_text(text)
    # -v: the values read to check them would be printed, were they not hidden (no_log).
    result = prod_preflight(tmp_path, inventory, "-v")
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert f"{secrets} is not encrypted ({', '.join(clear)} in clear text)" in said, said[-3000:]
    assert [v for v in PROD_SECRETS.values() if v in result.stdout + result.stderr] == []


def _clear_secrets_lookup():
    import importlib.util

    path = ROOT / "plugins/lookup/clear_secrets.py"
    spec = importlib.util.spec_from_file_location("kit_clear_secrets", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_variable_files_are_those_ansible_reads_at_any_depth(tmp_path):
    lookup = _clear_secrets_lookup()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "secrets.yml").write_text("vault_x: 1\n")
    files = ["group_vars/all/vault.yml", "group_vars/web.yaml", "group_vars/all/deep/er.json"]
    files += ["host_vars/h1", "host_vars/h1.yml.example", "host_vars/.h1.yml", "host_vars/.git/h1.yml"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a: 1\n")
    (tmp_path / "host_vars/h2").symlink_to(shared)  # a linked directory, as molecule links them
    assert [str(p.relative_to(tmp_path)) for p in lookup.vars_files(str(tmp_path))] == [
        "group_vars/web.yaml",
        "group_vars/all/vault.yml",
        "group_vars/all/deep/er.json",
        "host_vars/h1",
        "host_vars/h2/secrets.yml",
    ]
    assert lookup.vars_files("") == []  # an inventory given as a list of hosts has no directory


def test_a_secret_is_in_clear_text_unless_encrypted_templated_or_empty(tmp_path):
    lookup = _clear_secrets_lookup()
    settings = tmp_path / "secrets.yml"
    settings.write_text(
        "redis_port: 6379\n"
        "vault_in_clear: s3cret-value\n"
        "vault_number: 123456789012\n"
        "vault_sealed: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n"
        "vault_from_elsewhere: \"{{ lookup('community.hashi_vault.hashi_vault', 'kit/redis') }}\"\n"
        "vault_unsafe: !unsafe 'a{b'\n"
        "vault_empty:\n"
    )
    assert lookup.clear_secrets(settings) == ["vault_in_clear", "vault_number", "vault_unsafe"]
    vault = tmp_path / "Vault.yml"  # every value of a vault* file is a secret
    sealed = "vault_sealed: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n"
    vault.write_text("redis_admin: s3cret-value\n" + sealed)
    assert lookup.clear_secrets(vault) == ["redis_admin"]
    vault.write_text("$ANSIBLE_VAULT;1.1;AES256\n6162\n")  # encrypted whole
    assert lookup.clear_secrets(vault) == []


def test_a_secret_in_clear_text_in_any_variable_file_is_refused_naming_it(tmp_path):
    """Not only group_vars/all/vault.yml: a vault_* variable in clear text in a host's
    variables (a previous password kept for a rotation, say) is refused, naming the file and
    the variable; encrypted inline it passes, as do the variables of other names beside it."""
    inventory = tmp_path / "prod"
    shutil.copytree(ROOT / "inventories/prod", inventory)
    secrets = inventory / "group_vars/all/vault.yml"
    secrets.write_text("".join(f"{name}: {value}\n" for name, value in PROD_SECRETS.items()))
    vault(tmp_path, "encrypt", str(secrets))
    host = inventory / "host_vars/data1.example.net.yml"
    settings = host.read_text()
    name, old = "vault_redis_admin_password_previous", "prod-test-old-admin-3Rt7"

    def preflight() -> subprocess.CompletedProcess:
        return prod_preflight(tmp_path, inventory, "-v")

    host.write_text(settings + f"redis_port: 6379\n{name}:\n  {old}\n")
    result = preflight()
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert f"{host} is not encrypted ({name} in clear text)" in said, said[-3000:]
    assert old not in result.stdout + result.stderr
    host.write_text(settings + "redis_port: 6379\n" + encrypt_string(tmp_path, name, old))
    result = preflight()
    assert result.returncode == 0, result.stdout[-3000:]


def certificate(address: str | None, days: tuple[int, int]) -> dict[str, str]:
    """A self-signed certificate for `address` (its IP SAN; None: no SAN at all), valid from
    days[0] to days[1] counted from now, with its key and itself as the CA: PEM text, as the
    roles take it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"redis {address}")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
    )
    if address:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {"certificate": pem, "key": key_pem, "ca_certificate": pem}


def redis_tls(cert: dict[str, str]) -> dict:
    """The data node's and the Sentinel's TLS inputs, both the same certificate."""
    variables: dict = {}
    for prefix in ("redis", "redis_sentinel"):
        variables[f"{prefix}_tls"] = True
        variables.update({f"{prefix}_tls_{part}": text for part, text in cert.items()})
    return variables


@pytest.mark.parametrize(
    ("address", "days", "refused"),
    [
        ("127.0.0.1", (-1, 30), False),
        ("127.0.0.9", (-1, 30), True),  # names another host
        ("127.0.0.1", (-30, -1), True),  # expired
        ("127.0.0.1", (1, 30), True),  # not valid yet
        (None, (-1, 30), True),  # no SAN at all
    ],
    ids=["good", "another-address", "expired", "not-yet-valid", "no-san"],
)
def test_a_redis_certificate_must_name_the_node_and_be_valid_now(tmp_path, address, days, refused):
    result = run(
        "playbooks/redis.yml",
        "redis_preflight,redis_sentinel_preflight",
        tmp_path,
        **redis_tls(certificate(address, days)),
    )
    said = " ".join(result.stdout.split())
    if not refused:
        assert result.returncode == 0, said[-3000:]
        return
    assert result.returncode != 0
    assert "must name this node's address (IP:127.0.0.1) and be valid now" in said
    assert f"SANs: IP:{address}" in said if address else "SANs: none" in said


@pytest.mark.parametrize("wrong", ["key", "ca_certificate"])
def test_a_redis_certificate_must_match_its_key_and_come_from_the_ca(tmp_path, wrong):
    """A renewal signed by another CA passed (every client would refuse every node once they
    reloaded it), and so did a key of another certificate (a server that cannot start)."""
    good, other = certificate("127.0.0.1", (-1, 30)), certificate("127.0.0.1", (-1, 30))
    result = run(
        "playbooks/redis.yml",
        "redis_preflight,redis_sentinel_preflight",
        tmp_path,
        **redis_tls({**good, wrong: other["key" if wrong == "key" else "certificate"]}),
    )
    said = " ".join(result.stdout.split())
    assert result.returncode != 0, said[-3000:]
    assert "redis_tls_certificate, redis_tls_key and redis_tls_ca_certificate do not go together" in said
    if wrong == "key":
        assert "the key is not the certificate's" in said
        assert "PRIVATE KEY" not in result.stdout + result.stderr, "no key is shown"
    else:
        assert "was not signed by the CA (CN=redis 127.0.0.1)" in said, said[-3000:]


def test_tls_mismatch_follows_the_intermediates_sent_with_the_certificate():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    sys.path.insert(0, str(ROOT / ".collections"))
    tls_mismatch = importlib.import_module("ansible_collections.kit.jobqueue.plugins.filter.tls_mismatch")
    now = datetime.datetime.now(datetime.UTC)

    def issue(name: str, signer=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name, issuer_key = signer or (subject, key)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(issuer_key, hashes.SHA256())
        )
        return cert, key

    def pem(*items) -> str:
        return "".join(
            i.public_bytes(serialization.Encoding.PEM).decode()
            if isinstance(i, x509.Certificate)
            else i.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()
            for i in items
        )

    root, root_key = issue("root")
    middle, middle_key = issue("middle", (root.subject, root_key))
    leaf, leaf_key = issue("leaf", (middle.subject, middle_key))
    check = tls_mismatch.tls_mismatch
    assert check(pem(leaf, middle), pem(leaf_key), pem(root)) == []
    assert check(pem(leaf), pem(leaf_key), pem(middle, root)) == []  # the CA file holds it
    assert check(pem(leaf), pem(leaf_key), pem(root)) == [
        "the certificate (CN=leaf, issued by CN=middle) was not signed by the CA (CN=root)"
    ]
    assert check(pem(leaf, middle), pem(middle_key), pem(root)) == [
        "the key is not the certificate's (its public key differs)"
    ]
    # Cross-signed: the same intermediate by the old root and the new one, in either order.
    old_root, old_root_key = issue("old root")
    crossed = (
        x509.CertificateBuilder()
        .subject_name(middle.subject)
        .issuer_name(old_root.subject)
        .public_key(middle.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(old_root_key, hashes.SHA256())
    )
    assert check(pem(leaf, crossed, middle), pem(leaf_key), pem(root)) == []
    assert check(pem(leaf, middle, crossed), pem(leaf_key), pem(old_root)) == []
    unreadable = check("not a certificate", pem(leaf_key), pem(root))
    assert unreadable == ["the certificate cannot be read (not PEM)"]


@pytest.mark.parametrize(("slots", "refused"), [(2, False), (0, True), (65, True)])
def test_worker_slots_out_of_range_are_refused_naming_the_setting(tmp_path, slots, refused):
    playbook = tmp_path / "workers.yml"
    playbook.write_text(
        "- hosts: all\n  gather_facts: false\n  roles:\n    - role: kit.jobqueue.rq_workers\n"
        f"      vars: {{rq_workers_app: probe, rq_workers_slots: {slots}, rq_workers_in_container: false}}\n"
    )
    result = run(str(playbook), "rq_workers_preflight", tmp_path)
    assert (result.returncode != 0) == refused, result.stdout[-3000:]
    if refused:
        assert f"rq_workers_slots 1 to 64 (got {slots})" in result.stdout


@pytest.mark.parametrize(
    ("statuses", "refused"),
    [
        ({500: 503}, False),
        ({}, False),
        ({502: 503}, False),  # no document for 502: Apache's page, unused
        ({500: 200}, True),
        ({99: 503}, True),
        ({500: 999}, True),
    ],
)
def test_error_statuses_outside_4xx_5xx_are_refused_naming_them(tmp_path, statuses, refused):
    role = ROOT / "roles" / "wsgi_site"
    playbook = tmp_path / "site.yml"
    playbook.write_text(
        f"- hosts: all\n  gather_facts: false\n  vars_files: [{role}/defaults/main.yml]\n"
        f"  tasks:\n    - ansible.builtin.import_tasks: {role}/tasks/preflight.yml\n"
    )
    result = run(str(playbook), "all", tmp_path, wsgi_site_name="probe", wsgi_site_error_statuses=statuses)
    said = " ".join(result.stdout.split())
    assert (result.returncode != 0) == refused, said[-3000:]
    if refused:
        assert "wsgi_site_error_statuses" in said, said[-3000:]
        assert "statuses (400-599)" in said, said[-3000:]
