"""The production inventory over SSH: Ansible logs in as an unprivileged user and becomes root;
the platform answers end to end."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import testinfra.utils.ansible_runner
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret
from kit_checks import (
    INVENTORY,
    SCENARIO_DIR,
    Http,
    changed_tasks,
    get_host,
    hosts_in,
    hostvars,
    play_recap,
    run_playbook,
)
from kit_faults import block_ssh, heal, sh

# The platform's hosts; the scenario's spare hosts join it only inside the scaling test.
_runner = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
testinfra_hosts = sorted(
    {h for group in ("redis", "redis_sentinel", "web", "workers") for h in _runner.get_hosts(group)}
)


def test_ansible_reaches_hosts_over_ssh_as_deploy(host):
    # testinfra goes through the inventory, so this is Ansible's own SSH connection with the
    # inventory's become: commands run as root through sudo from the "deploy" login. A root login
    # (as the docker connection would be) would have no SUDO_USER.
    assert host.ansible.get_variables()["ansible_user"] == "deploy"
    assert host.run("id -un").stdout.strip() == "root"
    assert host.run("printenv SUDO_USER").stdout.strip() == "deploy"


def _tls(name: str) -> str:
    """The operator's certificate or key, as prepare.yml made it (production: kit_app_tls)."""
    return str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "tls" / name)


def _api_token() -> str:
    """The bearer token enqueueing needs (production's kit_app_api_tokens, from the vault)."""
    return yaml.safe_load(SECRETS.read_text())["vault_kit_app_api_token"]


def _https(name: str | None = None) -> Http:
    """HTTPS to a web host (the first by default) as an API client: with the token."""
    address = hostvars(name or hosts_in("web")[0])["kit_address"]
    return Http(address, cafile=_tls("server.crt"), token=_api_token())


def test_https_serves_the_app_and_plain_http_only_redirects():
    address = hostvars(hosts_in("web")[0])["kit_address"]
    plain = Http(address).get("/comer/pan")
    assert plain.status == 301
    assert plain.headers["Location"].startswith("https://")
    https = _https().get("/healthz")
    assert https.status == 200, https.body
    assert https.headers["Strict-Transport-Security"].startswith("max-age=")


def test_fifty_jobs_through_apache_are_all_eaten():
    http = _https()
    job_ids = []
    for index in range(50):
        reply = http.get(f"/comer/prod-{index}")
        assert reply.status == 202, reply.body
        job_ids.append(reply.json()["job_id"])
    started = time.monotonic()
    for job_id in job_ids:
        assert http.wait_for_job(job_id, {"finished", "failed"}, timeout=60)["status"] == "finished"
    print(f"\n50 jobs eaten {time.monotonic() - started:.1f}s after the last 202")
    assert http.get("/healthz").json()["workers"] == 2


def test_production_defaults_keep_the_demo_tasks_and_critical_private():
    """inventories/prod as shipped, through Apache: the demo tasks (which tie up workers on
    request) are not offered, and the critical queue takes no job from the public API."""
    http = _https()
    for task, args in {"sleep": [100], "fail": ["x"], "flaky": [3], "crash": ["exit"]}.items():
        reply = http.post("/jobs", body={"task": task, "args": args})
        assert reply.status == 400, (task, reply.body)
        assert reply.json()["error"].startswith(f"unknown task '{task}'"), reply.body
    reply = http.post("/jobs", body={"task": "eat", "args": ["pan"], "queue": "critical"})
    assert reply.status == 400, reply.body
    assert "not open to requests" in reply.json()["error"]
    assert http.get("/comer/pan?queue=critical").status == 400
    # The same request on a public queue is taken: the refusals above are the defaults at work.
    assert http.post("/jobs", body={"task": "eat", "args": ["pan"], "queue": "low"}).status == 202


def test_production_enqueues_and_reads_jobs_only_with_the_token():
    """inventories/prod as shipped: enqueueing (POST /jobs, and GET /comer/<food>, which any web
    page could make a visitor's browser send with an <img>) and reading a job (its arguments and
    result; a recurring job's id can be guessed) need the vault's bearer token; health and the
    OpenAPI document need none."""
    anonymous = Http(hostvars(hosts_in("web")[0])["kit_address"], cafile=_tls("server.crt"))
    job = {"task": "eat", "args": ["pan"]}
    wrong = {"Authorization": "Bearer " + "x" * len(_api_token())}
    for headers in ({}, wrong):
        for reply in (
            anonymous.get("/comer/img-tag", headers=headers),
            anonymous.post("/jobs", job, headers=headers),
        ):
            assert reply.status == 401, reply.body
            assert reply.headers["WWW-Authenticate"].startswith("Bearer"), reply.headers
    accepted = _https().post("/jobs", body=job)
    assert accepted.status == 202, accepted.body
    assert _https().get("/comer/with-the-token").status == 202
    for headers in ({}, wrong):
        assert anonymous.get(accepted.headers["Location"], headers=headers).status == 401
    assert _https().get(accepted.headers["Location"]).status == 200
    assert anonymous.get("/healthz").status == 200
    document = anonymous.get("/openapi.json")
    assert document.status == 200
    assert "bearer" in document.json()["components"]["securitySchemes"], "the document tells clients"


def test_production_timings_are_applied():
    v = hostvars(hosts_in("redis")[0])
    assert v["redis_sentinel_down_after_ms"] == 5000


VAULT_PASSWORD_FILE = str(Path(SCENARIO_DIR) / "vars" / "test-vault-password")
SECRETS = Path(SCENARIO_DIR) / "vars" / "test-secrets.yml"
PLAYBOOKS = Path(SCENARIO_DIR).parents[1] / "playbooks"


def _as_operator(
    *args: str, playbook: str = "converge.yml", inventory: str = INVENTORY
) -> subprocess.CompletedProcess:
    """A playbook run as the operator runs it: the scenario's secrets and vault password."""
    os.environ.setdefault("ANSIBLE_HOST_KEY_CHECKING", "false")  # as the scenario's converge
    os.environ.setdefault("ANSIBLE_VAULT_PASSWORD_FILE", VAULT_PASSWORD_FILE)
    return run_playbook(
        *args,
        "-e",
        f"@{SECRETS}",
        # These throw-away hosts' keys must not land in the user's known_hosts: the next
        # scenario run gets new ones, and strict checking would refuse them.
        "--ssh-extra-args=-o UserKnownHostsFile=/dev/null",
        playbook=playbook,
        inventory=inventory,
    )


def _day2(name: str, *args: str, inventory: str = INVENTORY) -> subprocess.CompletedProcess:
    """One of the kit's playbooks/ (status, backup, restore, ...)."""
    return _as_operator(*args, playbook=str(PLAYBOOKS / name), inventory=inventory)


@functools.cache
def _vault() -> VaultLib:
    password = Path(VAULT_PASSWORD_FILE).read_bytes().strip()
    return VaultLib([("default", VaultSecret(password))])


@functools.cache
def _decrypted(ciphertext: bytes) -> str:
    return _vault().decrypt(ciphertext).decode()


def _key_body(path: str) -> str:
    """The longest line of a vault-encrypted PEM private key (what a grep can find). Decrypted
    in this process, once per content (an `ansible-vault view` costs 2 s: the tests call this
    for every key on every secret check and every admin command)."""
    clear = _decrypted(Path(path).read_bytes())
    return max((line for line in clear.splitlines() if "-----" not in line), key=len)


def _secrets() -> dict[str, str]:
    """The vault's values for this scenario, the body of the HTTPS private key and of each
    data node's and Sentinel's TLS key ("redis tls key <host>")."""
    values = yaml.safe_load(SECRETS.read_text())
    found = {name: value for name, value in values.items() if name.startswith("vault_")}
    found["tls key"] = _key_body(_tls("server.key"))
    for name in sorted(set(hosts_in("redis")) | set(hosts_in("redis_sentinel"))):
        found[f"redis tls key {name}"] = _key_body(_tls(f"redis/{name}.key"))
    return found


def _grep_secrets(host, values: list[str], options: str, then: str = "") -> str:
    """grep -r `options` for any of `values` under /etc, /srv and /var/lib on `host`, piped into
    `then` if given (the patterns go through a root-only file, never a command line). One
    command: each host.run is an Ansible run of its own."""
    pattern = "/tmp/kit-secret-patterns"  # noqa: S108 (on the test host, removed by the script)
    script = (
        f"umask 077; cat > {pattern} <<'EOF'\n" + "\n".join(values) + "\nEOF\n"
        f"grep -r {options} -F -f {pattern} /etc /srv /var/lib 2>/dev/null {then}; rm -f {pattern}"
    )
    return host.run(script).stdout


def test_every_file_holding_a_secret_is_closed_to_other_users(host):
    """Every file under /etc, /srv and the data directories that holds a vault value (or its
    SHA-256, as ACL files do) belongs to root or the service that reads it and is not readable
    by other users."""
    values = list(_secrets().values())
    values += [hashlib.sha256(v.encode()).hexdigest() for v in values]
    listed = _grep_secrets(host, values, "-lZ", "| xargs -0r stat --printf '%U %G %a %n\\0'")
    owned = [entry.split(" ", 3) for entry in listed.split("\0") if entry]
    found = [path for _user, _group, _mode, path in owned]
    for user, group, mode, path in owned:
        print(f"{host.backend.get_hostname()}: {path} {user}:{group} {int(mode, 8):04o}")
        assert int(mode, 8) & 0o007 == 0, f"{path} is readable by other users ({int(mode, 8):04o})"
        assert user in ("root", "redis", "valkey", "fridge"), (path, user)
    if host.backend.get_hostname() in hosts_in("redis_sentinel"):
        assert any(p.endswith("sentinel.conf") for p in found), found
        assert any(p.endswith("sentinel-tls/server.key") for p in found), found
    if host.backend.get_hostname() in hosts_in("web"):
        assert any(p.endswith("server.key") for p in found), found


# The clear-text secrets each tier's hosts may hold (ACL files hold only SHA-256 hashes).
TIER_SECRETS = {
    "redis": {"vault_redis_admin_password", "vault_redis_replication_password"},
    "redis_sentinel": {
        "vault_redis_sentinel_password",
        "vault_redis_sentinel_acl_password",
        "vault_redis_sentinel_client_password",
    },
    "web": {
        "vault_redis_sentinel_client_password",
        "vault_redis_web_password",
        "vault_kit_app_api_token",
        "tls key",
    },
    "workers": {"vault_redis_sentinel_client_password", "vault_redis_worker_password"},
}


def test_each_host_holds_only_the_secrets_of_its_tiers(host):
    """A worker host cannot enqueue as the web tier or log in to Sentinel as a peer; a web host
    cannot take jobs as a worker; neither holds a Redis admin or replication password."""
    name = host.backend.get_hostname()
    secrets = _secrets()
    allowed = set().union(*(names for group, names in TIER_SECRETS.items() if name in hosts_in(group)))
    if name in hosts_in("redis") or name in hosts_in("redis_sentinel"):
        allowed.add(f"redis tls key {name}")  # its own TLS key only, no other host's
    found = set(_grep_secrets(host, list(secrets.values()), "-hoI").splitlines())
    held = {n for n, v in secrets.items() if v in found}
    print(f"{name} ({', '.join(g for g in TIER_SECRETS if name in hosts_in(g))}): {sorted(held)}")
    assert held <= allowed, f"{name} holds {sorted(held - allowed)}"
    owns = (
        ("web", "vault_redis_web_password"),
        ("web", "vault_kit_app_api_token"),
        ("workers", "vault_redis_worker_password"),
    )
    for group, own in owns:
        if name in hosts_in(group):
            assert own in held, f"{name} lacks its own {own}"


def test_each_data_node_s_aof_guard_reads_its_server_over_tls_with_its_own_narrow_login():
    """kit-aof-guard runs as the server's user, connected over TLS with a password that exists
    on its node alone; that login may read INFO and ask for BGREWRITEAOF, nothing else, and the
    guard cannot read the configuration files that hold the other logins' passwords."""
    for name in hosts_in("redis"):
        address = hostvars(name)["kit_address"]
        assert sh(name, "systemctl is-active kit-aof-guard").strip() == "active"
        pid = sh(name, "systemctl show -p MainPID --value kit-aof-guard").strip()
        assert sh(name, f"stat -c %U /proc/{pid}").strip() == "redis"
        assert sh(name, "stat -c '%U %a' /etc/redis/kit-aof-guard.pass").split() == ["redis", "600"]
        # Of /etc/redis its namespace holds an empty tmpfs, its password and the TLS files: not
        # redis.conf (masterauth) or sentinel.conf (the Sentinels' and the data nodes' logins).
        mounts = [line.split() for line in sh(name, f"cat /proc/{pid}/mountinfo").splitlines()]
        under = {m[4]: m[m.index("-") + 1] for m in mounts if m[4].startswith("/etc/redis")}
        assert under.keys() == {"/etc/redis", "/etc/redis/kit-aof-guard.pass", "/etc/redis/tls"}, under
        assert under["/etc/redis"] == "tmpfs"
        tls = f"redis-cli --no-auth-warning --tls --cacert /etc/redis/tls/ca.crt -h {address}"
        admin = f"REDISCLI_AUTH='{_secrets()['vault_redis_admin_password']}' {tls} --user kit-admin"
        assert "user=kit-aof-guard " in sh(name, f"{admin} CLIENT LIST"), f"{name}: the guard is not in"
        cli = f"REDISCLI_AUTH=$(cat /etc/redis/kit-aof-guard.pass) {tls} --user kit-aof-guard"
        assert "aof_last_write_status:ok" in sh(name, f"{cli} INFO persistence")
        for command in ("GET rq:queues", "CONFIG GET dir", "FLUSHALL", "ACL LIST"):
            assert "NOPERM" in sh(name, f"{cli} {command} 2>&1", check=False), command


def test_the_api_survives_a_thousand_requests_generated_from_its_openapi_document(tmp_path):
    """Schemathesis generates requests (valid and not) for every operation of /openapi.json;
    Apache's access log counts what reached the VirtualHost and shows no 5xx."""
    web = hosts_in("web")[0]
    apache = get_host(web)
    log = "/var/log/apache2/fridge-access.log"
    before = int(apache.run(f"wc -l < {log}").stdout)
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"https://{hostvars(web)['kit_address']}/openapi.json",
            "--tls-verify",
            _tls("server.crt"),
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "100",
            "--seed",
            "20261123",
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            # Enqueueing needs the token: with it, its operations reach the app, not only the 401.
            "--header",
            f"Authorization: Bearer {_api_token()}",
        ],
        cwd=tmp_path,  # its reports and caches stay out of the tree
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    print(run.stdout[-3000:])
    lines = apache.run(f"tail -n +{before + 1} {log}").stdout.splitlines()
    statuses = [line.split('"')[2].split()[0] for line in lines if line.count('"') >= 2]
    counts = ", ".join(f"{s} x {statuses.count(s)}" for s in sorted(set(statuses)))
    print(f"{len(statuses)} requests reached Apache: {counts}")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert len(statuses) >= 1000
    assert [s for s in statuses if s.startswith("5")] == []


def _reissue(name: str, address: str) -> None:
    """What the operator's PKI does at renewal: a new key and certificate for the host, signed
    by the same CA, the key vault-encrypted, in place of the old files."""
    tls = Path(_tls("redis"))
    key, csr, crt = tls / f"{name}.key.new", tls / f"{name}.csr", tls / f"{name}.crt"
    subj = [
        "-subj",
        f"/CN={name}.example.net",
        "-addext",
        f"subjectAltName=IP:{address},DNS:{name}.example.net",
    ]
    run = {"check": True, "capture_output": True}
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, *subj, "-out", csr], **run
    )
    ca = ["-CA", tls / "ca.crt", "-CAkey", tls.parent / "operator-ca.key", "-CAcreateserial"]
    subprocess.run(
        ["openssl", "x509", "-req", "-in", csr, *ca, "-days", "90", "-copy_extensions", "copy", "-out", crt],
        **run,
    )
    env = {**os.environ, "ANSIBLE_VAULT_PASSWORD_FILE": VAULT_PASSWORD_FILE}
    subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt", key], env=env, **run)
    key.replace(tls / f"{name}.key")
    csr.unlink()


# --- Day-2 playbooks (status, backup, restore) over SSH ---------------------------------------


def _admin(host: str, command: str) -> str:
    """redis-cli as the admin user on a data host, to its own server (TLS, as deployed)."""
    password = _secrets()["vault_redis_admin_password"]
    address = hostvars(host)["kit_address"]
    return sh(
        host,
        f"REDISCLI_AUTH='{password}' redis-cli --no-auth-warning --tls --cacert /etc/redis/tls/ca.crt "
        f"-h {address} --user kit-admin {command}",
    ).strip()


def _host_at(address: str) -> str:
    return next(h for h in hosts_in("redis") if hostvars(h)["kit_address"] == address.split(":")[0])


def test_status_agrees_and_fails_naming_a_stopped_replica(tmp_path):
    report = tmp_path / "status.json"
    run = _day2("status.yml", "-e", f"status_json={report}")
    assert run.returncode == 0, run.stdout[-5000:]
    assert "No problem found." in run.stdout
    state = json.loads(report.read_text())
    print("\n" + run.stdout[run.stdout.index("Redis group") : run.stdout.index("No problem found.")])
    nodes = {n["address"]: n for n in state["nodes"]}
    assert set(nodes) == {f"{hostvars(h)['kit_address']}:6379" for h in hosts_in("redis")}
    assert [n["role"] for n in nodes.values()].count("master") == 1
    assert {s["master"] for s in state["sentinels"]} == {state["master"]}
    assert len({s["epoch"] for s in state["sentinels"]}) == 1
    assert all(n["lag_bytes"] <= 1048576 for n in nodes.values() if n["role"] == "replica")
    assert [q["name"] for q in state["queues"]] == ["critical", "default", "low"]
    for host in hosts_in("workers"):
        units = state["hosts"][host]["worker_units"]
        assert units.count("running") == state["hosts"][host]["workers_wanted"] > 0, state["hosts"]
    for host in hosts_in("web"):
        assert state["hosts"][host]["apache"] == "running"

    assert all(n["disk"] == "ok" and n["aof_guards"] == 1 for n in nodes.values()), nodes

    # A replica stopped, and the master's AOF guard: both named in one run.
    replica = _host_at(next(a for a, n in nodes.items() if n["role"] == "replica"))
    master = _host_at(state["master"])
    sh(replica, "systemctl stop redis-server")
    sh(master, "systemctl stop kit-aof-guard")
    try:
        broken = _day2("status.yml", "-e", f"status_json={report}")
    finally:
        sh(replica, "systemctl start redis-server")
        sh(master, "systemctl start kit-aof-guard")
    said = broken.stdout
    assert broken.returncode != 0
    assert f"data node {hostvars(replica)['kit_address']}:6379 does not answer" in said, said[-5000:]
    assert f"data node {state['master']}: no AOF guard is logged in" in said, said[-5000:]
    assert "Problems:" in said
    assert json.loads(report.read_text())["problems"], "the JSON lists the problems too"
    _wait_in_sync(replica)

    # The first data host and the web host cut off from Ansible: the other hosts are still
    # read (the group's state from the second data host) and the two are named. It once failed
    # on an undefined variable, with no report.
    unreachable = [hosts_in("redis")[0], hosts_in("web")[0]]
    cut_off, after = _status_cut_off(report, unreachable)
    for host in unreachable:
        assert f"{host}: Ansible cannot reach it" in after["problems"], cut_off.stdout[-5000:]
    assert after["master"] == state["master"], "the second data host read the group"
    assert all("error" not in n for n in after["nodes"]), after["nodes"]
    assert "the app cannot read the queues: no web host was reached" in " ".join(after["problems"])

    # Every host cut off: Ansible would stop before the report; the report names them all.
    everyone = sorted({*hosts_in("redis"), *hosts_in("web"), *hosts_in("workers")})
    alone, nothing = _status_cut_off(report, everyone)
    assert nothing["master"] is None, nothing
    for host in everyone:
        assert f"{host}: Ansible cannot reach it" in nothing["problems"], alone.stdout[-5000:]
    assert any(p.startswith("no data node was read") for p in nothing["problems"]), nothing["problems"]

    limited = _day2("status.yml", "--limit", hosts_in("workers")[0])
    assert limited.returncode != 0, "a partial run once reported nothing and ended green"
    assert "status.yml reads the whole platform" in " ".join((limited.stdout + limited.stderr).split())


def test_a_rolling_restart_of_the_web_tier_waits_for_the_app_over_https():
    """playbooks/rolling_restart.yml --tags web as the operator runs it, on production's
    settings (HTTPS, the server name the host's FQDN, facts gathered by the play): each web host
    is reloaded and then waited until the app answers through it again."""
    run = _day2("rolling_restart.yml", "--tags", "web")
    said = run.stdout + run.stderr
    assert run.returncode == 0, said[-5000:]
    waited = said.split("TASK [Wait until the app answers through this host again]")[1:]
    assert len(waited) == len(hosts_in("web")), said[-5000:]
    results = [block.split("TASK [")[0].split("PLAY RECAP")[0] for block in waited]
    assert all("ok: [" in result and "fatal" not in result for result in results), results


def _status_cut_off(report: Path, hosts: list[str]) -> tuple[subprocess.CompletedProcess, dict]:
    """status.yml with `hosts` cut off from Ansible: it fails, and writes its report."""
    for host in hosts:
        block_ssh(host)
    try:
        run = _day2("status.yml", "-e", f"status_json={report}")
    finally:
        heal(*hosts)
    assert run.returncode != 0
    return run, json.loads(report.read_text())


def _wait_in_sync(replica: str) -> None:
    deadline = time.monotonic() + 60
    while "master_link_status:up" not in _admin(replica, "INFO replication"):
        assert time.monotonic() < deadline, f"{replica} did not come back in sync"
        time.sleep(0.5)


def test_backup_wipe_restore_brings_every_job_back(tmp_path):
    """Workers stopped, 20 jobs queued; backed up (three times: retention keeps the newest), the data
    wiped on the master, restored: every node holds the data again and every job runs."""
    workers = hosts_in("workers")
    for host in workers:
        sh(host, "systemctl stop fridge-workers.target")
    http = _https()
    job_ids = []
    for index in range(20):
        reply = http.get(f"/comer/backup-{index}")
        assert reply.status == 202, reply.body
        job_ids.append(reply.json()["job_id"])
    where = ("-e", f"redis_backup_dir={tmp_path}")
    master = next(h for h in hosts_in("redis") if "role:master" in _admin(h, "INFO replication"))
    replica = next(h for h in hosts_in("redis") if h != master)
    # A --limit chooses among its own hosts (it once left the replica out, skipped every step
    # and ended green with no backup); a limit to a node that is down takes none and says so.
    sh(replica, "systemctl stop redis-server")
    try:
        refused = _day2("backup.yml", *where, "--limit", replica)
    finally:
        sh(replica, "systemctl start redis-server")
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0, said[-3000:]
    assert f"none of this run's hosts ({replica}) is a replica in sync or the master" in said, said[-3000:]
    assert not list(tmp_path.iterdir()), "nothing is written"
    _wait_in_sync(replica)
    limited = _day2("backup.yml", *where, "--limit", master)
    assert limited.returncode == 0, limited.stdout[-5000:]
    assert f"taken on {hostvars(master)['kit_address']}:6379" in " ".join(limited.stdout.split())
    time.sleep(1)  # backups are named by the second
    first = _day2("backup.yml", *where)
    assert first.returncode == 0, first.stdout[-5000:]
    assert f"taken on {hostvars(replica)['kit_address']}:6379" in " ".join(first.stdout.split())
    time.sleep(1)  # backups are named by the second
    second = _day2("backup.yml", *where, "-e", "redis_backup_keep=1")
    assert second.returncode == 0, second.stdout[-5000:]
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == 2, kept  # the newest backup and its checksum
    assert kept[1] == kept[0] + ".sha256"
    checked = subprocess.run(["sha256sum", "-c", kept[1]], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    assert _admin(master, "FLUSHALL") == "OK"
    assert http.get(f"/jobs/{job_ids[0]}").status == 404, "the wipe removed the jobs"

    unconfirmed = _day2("restore.yml", *where)
    assert unconfirmed.returncode != 0
    assert "which will all be replaced" in unconfirmed.stdout
    assert "-e confirm=yes" in unconfirmed.stdout + unconfirmed.stderr
    assert _admin(master, "DBSIZE") == "0", "nothing may change without confirm=yes"

    started = time.monotonic()
    restored = _day2("restore.yml", *where, "-e", "confirm=yes")
    assert restored.returncode == 0, restored.stdout[-5000:]
    assert "every node agrees" in restored.stdout
    print(f"\nrestore.yml took {time.monotonic() - started:.1f}s")
    for job_id in job_ids:
        assert http.wait_for_job(job_id, {"finished", "failed"}, timeout=60)["status"] == "finished"
    for host in workers:
        assert sh(host, "systemctl is-active fridge-workers.target").strip() == "active"


def test_renewed_certificates_are_loaded_without_restarting_redis():
    """The operator replaces every Redis and Sentinel certificate and key and re-runs the data
    tier: each server presents its new certificate; the data nodes kept their process (reloaded
    live: no failover), the Sentinels restarted one at a time; the app enqueues over TLS."""
    nodes = {h: hostvars(h)["kit_address"] for h in hosts_in("redis")}
    sentinels_at = {h: hostvars(h)["kit_address"] for h in hosts_in("redis_sentinel")}
    targets = [f"{a}:6379" for a in nodes.values()] + [f"{a}:26379" for a in sentinels_at.values()]
    # Asked from a data host: the firewall lets only the platform's hosts reach these ports.
    probe = next(iter(nodes))
    listening = sh(probe, "grep '^port\\|^tls-port' /etc/redis/redis.conf").split()
    assert listening == ["port", "0", "tls-port", "6379"], "production's scenario runs Redis over TLS"

    def served(target: str) -> str:
        return sh(
            probe, f"openssl s_client -connect {target} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        )

    before = {t: served(t) for t in targets}
    redis = "systemctl show -p MainPID --value redis-server"
    sentinel = "systemctl show -p MainPID --value redis-sentinel"
    pids = {h: sh(h, redis).strip() for h in nodes}
    sentinels = {h: sh(h, sentinel).strip() for h in sentinels_at}
    for name in {*nodes, *sentinels_at}:
        _reissue(name, hostvars(name)["kit_address"])
    run = _as_operator("--tags", "redis,sentinel")
    assert run.returncode == 0, run.stdout[-5000:]
    after = {t: served(t) for t in targets}
    print(f"\nserials before {before}\nafter {after}")
    assert all(v.startswith("serial=") for v in [*before.values(), *after.values()]), (before, after)
    assert all(after[t] != before[t] for t in targets), "a server kept its old certificate"
    assert {h: sh(h, redis).strip() for h in nodes} == pids, "a data node restarted"
    assert all(sh(h, sentinel).strip() != sentinels[h] for h in sentinels_at), "a Sentinel kept the old one"
    http = _https()
    reply = http.get("/comer/renewed")
    assert reply.status == 202, reply.body
    assert (
        http.wait_for_job(reply.json()["job_id"], {"finished", "failed"}, timeout=60)["status"] == "finished"
    )


# --- Scaling the data and web tiers (day 2) ---------------------------------------------------


def _inventory_with(directory: Path, joins: dict[str, str]) -> str:
    """The scenario's inventory as the operator edits it: each host of `joins` added to a group;
    the same group_vars and host_vars."""
    source = Path(INVENTORY)
    directory.mkdir()
    for linked in ("group_vars", "host_vars"):
        (directory / linked).symlink_to((source.parent / linked).resolve())
    document = yaml.safe_load(source.read_text())
    for name, group in joins.items():
        document.setdefault(group, {}).setdefault("hosts", {})[name] = {}
    edited = directory / source.name
    edited.write_text(yaml.safe_dump(document))
    return str(edited)


def _recap_changed(run: subprocess.CompletedProcess) -> dict[str, int]:
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    changed = {host: counts["changed"] for host, counts in play_recap(run.stdout).items()}
    assert changed, run.stdout[-3000:]
    return changed


def _sentinels_know(report: Path, inventory: str) -> list[list[str]]:
    run = _day2("status.yml", "-e", f"status_json={report}", inventory=inventory)
    assert run.returncode == 0, run.stdout[-5000:]
    assert "No problem found." in run.stdout
    return [sorted(s["replicas"]) for s in json.loads(report.read_text())["sentinels"]]


def test_a_replica_and_a_web_host_join_then_the_replica_leaves(tmp_path):
    """Scaling out as the operator does it: two hosts added to the inventory (a data node, a web
    host), the firewall opened to them, then only they are deployed (--limit). The Sentinels
    learn the replica, the new web host enqueues, and a full run changes nothing. That run is
    verbose (-vvv shows every module's arguments and results): none of the vault's values, TLS
    keys included (the new node's too), may appear in it. Then the replica is removed: the
    master cannot be, the replica is stopped and every Sentinel forgets it; back to the first
    inventory, `site.yml --check` (the dry run an operator makes before a change) goes through
    every play (the app's wheels are built on the controller and compared with the hosts') and
    reports nothing to change."""
    new_node, new_web = "prod-data3", "prod-app2"
    node_address = hostvars(new_node)["kit_address"]
    _reissue(new_node, node_address)  # the operator's PKI issues the new data node's certificate
    scaled = _inventory_with(tmp_path / "scaled", {new_node: "redis", new_web: "web"})

    timings = {}
    started = time.monotonic()
    opened = _day2("firewall.yml", inventory=scaled)
    assert opened.returncode == 0, opened.stdout[-5000:]
    timings["firewall.yml"] = time.monotonic() - started
    started = time.monotonic()
    limited = _as_operator("--limit", f"{new_node},{new_web}", inventory=scaled)
    assert set(_recap_changed(limited)) == {new_node, new_web}, "--limit deploys the new hosts only"
    timings["site.yml --limit"] = time.monotonic() - started

    deadline = time.monotonic() + 60
    while "master_link_status:up" not in _admin(new_node, "INFO replication"):
        assert time.monotonic() < deadline, "the new data node is not a replica in sync"
        time.sleep(0.5)
    known = _sentinels_know(tmp_path / "scaled.json", scaled)
    replicas = {f"{hostvars(h)['kit_address']}:6379" for h in [*hosts_in("redis"), new_node]}
    assert all(len(k) == 2 and set(k) < replicas for k in known), known
    assert all(f"{node_address}:6379" in k for k in known), "every Sentinel learned the new replica"

    http = _https(new_web)
    reply = http.get("/comer/scaled-out")
    assert reply.status == 202, reply.body
    job = http.wait_for_job(reply.json()["job_id"], {"finished", "failed"}, timeout=60)
    assert job["status"] == "finished"

    started = time.monotonic()
    verbose = _as_operator("-vvv", inventory=scaled)
    again = _recap_changed(verbose)
    timings["site.yml -vvv (scaled)"] = time.monotonic() - started
    assert len(again) == 6, again
    assert not any(again.values()), (again, changed_tasks(verbose.stdout))
    said = verbose.stdout + verbose.stderr
    assert len(said) > 200_000  # really verbose: module arguments and results are in there
    secrets = {**_secrets(), f"redis tls key {new_node}": _key_body(_tls(f"redis/{new_node}.key"))}
    leaked = [name for name, value in secrets.items() if value in said]
    assert leaked == [], f"printed by ansible-playbook -vvv: {leaked}"

    master = _host_at(json.loads((tmp_path / "scaled.json").read_text())["master"])
    refused = _day2("remove_replica.yml", "-e", f"node={master}", inventory=scaled)
    assert refused.returncode != 0
    said = " ".join((refused.stdout + refused.stderr).split())  # Ansible wraps and splits its messages
    assert f"{master} ({hostvars(master)['kit_address']}) is the master. Move the master first" in said, said[
        -3000:
    ]
    assert "master_link_status:up" in _admin(new_node, "INFO replication"), "nothing was touched"

    # The other replica down: removing the new one would leave the master alone.
    other = next(h for h in hosts_in("redis") if h != master)
    sh(other, "systemctl stop redis-server")
    try:
        alone = _day2("remove_replica.yml", "-e", f"node={new_node}", inventory=scaled)
    finally:
        sh(other, "systemctl start redis-server")
    said = " ".join((alone.stdout + alone.stderr).split())
    assert alone.returncode != 0, said[-3000:]
    master_at = f"{hostvars(master)['kit_address']}:6379"
    assert f"would leave the master {master_at} with no other replica in sync" in said, said[-3000:]
    assert "master_link_status:up" in _admin(new_node, "INFO replication"), "nothing was touched"
    _wait_in_sync(other)

    started = time.monotonic()
    removed = _day2("remove_replica.yml", "-e", f"node={new_node}", inventory=scaled)
    assert removed.returncode == 0, removed.stdout[-5000:]
    timings["remove_replica.yml"] = time.monotonic() - started
    said = " ".join(removed.stdout.split())
    assert said.count(f"This Sentinel forgot {node_address}:6379") == 3, removed.stdout[-5000:]
    assert sh(new_node, "systemctl is-enabled redis-server", check=False).strip() == "disabled"

    started = time.monotonic()
    closed = _day2("firewall.yml")  # the first inventory again: the two hosts are gone from it
    assert closed.returncode == 0, closed.stdout[-5000:]
    timings["firewall.yml (back)"] = time.monotonic() - started
    known = _sentinels_know(tmp_path / "back.json", INVENTORY)
    assert all(len(k) == 1 and f"{node_address}:6379" not in k for k in known), known
    started = time.monotonic()
    dry = _as_operator("--check")
    back = _recap_changed(dry)
    timings["site.yml --check (back)"] = time.monotonic() - started
    assert set(testinfra_hosts) <= set(back), back
    changed = [line for line in dry.stdout.splitlines() if line.startswith("changed:")]
    assert not any(back.values()), "\n".join(changed) or back
    print("\n" + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items()))
