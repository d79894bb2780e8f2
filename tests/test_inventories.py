"""The development inventory shares production's settings but never its secrets: once an
operator creates the encrypted inventories/prod/group_vars/all/vault.yml, dev runs still work.
Production's settings as shipped give the app what it needs (its API token on web hosts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PLAIN = {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "KIT_ROOT": str(ROOT)}


def test_dev_links_every_prod_settings_file_but_the_vault():
    prod = {p.name for p in (ROOT / "inventories/prod/group_vars/all").iterdir() if p.suffix == ".yml"}
    dev = ROOT / "inventories/dev/group_vars/all"
    assert {p.name for p in dev.iterdir()} == prod - {"vault.yml"}
    for link in dev.iterdir():
        assert link.is_symlink(), f"{link} must link production's file (one source)"
        assert link.resolve() == (ROOT / "inventories/prod/group_vars/all" / link.name).resolve()


def test_an_encrypted_prod_vault_does_not_stop_dev_runs(tmp_path):
    copy = tmp_path / "inventories"
    shutil.copytree(ROOT / "inventories", copy, symlinks=True, ignore=shutil.ignore_patterns(".pki"))
    secret = tmp_path / "pass"
    secret.write_text("operator-vault-password\n")
    vault = copy / "prod/group_vars/all/vault.yml"
    vault.write_text("vault_redis_admin_password: operator-secret-9Xk2\n")
    env = {**os.environ, **PLAIN}
    subprocess.run(
        [BIN / "ansible-vault", "encrypt", "--vault-password-file", secret, vault], env=env, check=True
    )

    def inventory(name: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [BIN / "ansible-inventory", "-i", copy / name, "--list"], env=env, capture_output=True, text=True
        )

    dev = inventory("dev")
    assert dev.returncode == 0, dev.stderr
    assert "operator-secret" not in dev.stdout
    prod = inventory("prod")  # the same check on prod needs the vault password: the test can fail
    assert prod.returncode != 0
    assert "vault" in prod.stderr.lower()


def _app_secrets(extra: dict) -> dict[str, dict]:
    """The app's secret configuration (wsgi_app_secret_config) as the production inventory gives
    it to each web and worker host, with `extra` as the vault."""
    env = {**os.environ, **PLAIN, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json"}
    task = ["-m", "ansible.builtin.debug", "-a", "msg={{ wsgi_app_secret_config }}"]
    run = subprocess.run(
        [BIN / "ansible", "-i", ROOT / "inventories/prod", "web:workers", *task, "-e", json.dumps(extra)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # The JSON document sits between the lines of ansible.cfg's timing callback.
    document, _ = json.JSONDecoder().raw_decode(run.stdout[run.stdout.index("{") :])
    hosts = [task["hosts"] for play in document["plays"] for task in play["tasks"]]
    return {name: result["msg"] for found in hosts for name, result in found.items()}


def test_prod_enqueueing_needs_the_vaulted_token_unless_opened_explicitly():
    """As shipped, production's web hosts get the vault's API token (the API refuses to enqueue
    without it) and worker hosts none; `kit_app_api_tokens: []` is the explicit way to open it."""
    vault = {
        "vault_redis_web_password": "inventory-test-web-3Fq8",
        "vault_redis_worker_password": "inventory-test-worker-7Lm2",
        "vault_redis_sentinel_client_password": "inventory-test-client-5Ds1",
        "vault_kit_app_api_token": "inventory-test-api-token-9Kw4",
    }
    shipped = _app_secrets(vault)
    assert shipped["app1.example.net"]["api_tokens"] == ["inventory-test-api-token-9Kw4"]
    assert "api_tokens" not in shipped["worker1.example.net"]
    opened = _app_secrets({**vault, "kit_app_api_tokens": []})
    assert "api_tokens" not in opened["app1.example.net"]
