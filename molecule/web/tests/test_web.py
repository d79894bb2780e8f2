"""The web tier through Apache: the VirtualHost, its headers, auth, a second app, deploys."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request

import pytest
import testinfra.utils.ansible_runner
from kit_checks import (
    Http,
    converge,
    exposure,
    get_host,
    installed_collection,
    kill_playbook_after,
    run_playbook,
    wait_for,
)

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("web")

DASHBOARD_USER = ("admin", "dev-dashboard-3d7f1a9c")  # development inventory's value


# Re-deploying fridge on the app host, without the example app's play (converge.yml tags it).
FRIDGE_ON_APP_HOST = ("--limit", "web-app1", "--skip-tags", "pantry")


def basic(user: str, password: str) -> dict:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_comer_platano_is_accepted_and_eaten_within_5_seconds(http):
    reply = http.get("/comer/platano")
    assert reply.status == 202, reply.body
    job = reply.json()
    assert reply.headers["Location"] == f"/jobs/{job['job_id']}"
    started = time.monotonic()
    done = http.wait_for_job(job["job_id"], {"finished", "failed"}, timeout=5)
    print(f"\nplatano eaten {time.monotonic() - started:.2f}s after the 202")
    assert done["status"] == "finished"
    assert done["result"] == "ate platano"


def test_healthz_is_200_and_apache_hides_its_version(http):
    reply = http.get("/healthz")
    assert reply.status == 200, reply.body
    assert reply.json()["workers"] >= 1
    assert "versions" not in reply.json()  # /metrics has them, for the monitoring's networks
    assert reply.headers["Server"] == "Apache"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["X-Frame-Options"] == "DENY"


def test_apache_runs_confined(host, http):
    """Debian's apache2.service scores 9.2 "UNSAFE"; the kit's drop-in brings it under 2.5
    (read-only system, no devices, five capabilities), and the site still serves and reloads."""
    ours, _ = exposure(host, "apache2.service")  # (the offline score reads the drop-in too)
    assert ours <= 2.5
    assert host.run("systemctl reload apache2").rc == 0
    assert wait_for(lambda: http.get("/healthz").status == 200, 15, "Apache to answer after a reload")


def test_trace_is_refused(http):
    assert http.request("TRACE", "/").status == 405


def test_apache_s_own_refusals_are_json_like_the_app_s(http):
    """A body over the limit (413) and a chunked one (411: mod_wsgi takes none) are refused by
    Apache before the app reads them. They were HTML pages, which a client of the JSON API
    cannot parse; they are JSON now, and the limit they name is the app's own, written once in
    the inventory (kit_app_max_request_body)."""
    reply = http.request("POST", "/jobs", body={"task": "eat", "args": ["x" * 70000]})
    assert reply.status == 413
    assert reply.headers["Content-Type"] == "application/json", reply.body[:200]
    assert reply.json() == {"error": "request body is larger than 65536 bytes", "status": 413}
    chunks = iter([json.dumps({"task": "eat", "args": ["x"]}).encode()])  # no length: chunked
    headers = {"Content-Type": "application/json"}
    chunked = urllib.request.Request(http.base + "/jobs", data=chunks, method="POST", headers=headers)  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(chunked, timeout=30)  # noqa: S310 (the test host)
    assert refused.value.code == 411
    assert refused.value.headers["Content-Type"] == "application/json"
    assert json.loads(refused.value.read())["status"] == 411


def test_dashboard_needs_credentials(http):
    assert http.get("/dashboard/").status == 401
    assert http.get("/dashboard/", headers=basic("admin", "not-the-password")).status == 401
    reply = http.get("/dashboard/", headers=basic(*DASHBOARD_USER))
    assert reply.status == 200
    assert b"Workers" in reply.body


def test_a_dashboard_user_taken_out_of_the_list_can_no_longer_log_in(http):
    former = ("former-admin", "former-dashboard-5e08b1d4")
    users = [dict(zip(("name", "password"), user, strict=True)) for user in (DASHBOARD_USER, former)]
    added = run_playbook(
        *FRIDGE_ON_APP_HOST, "--tags", "wsgi_site", "-e", json.dumps({"wsgi_site_basic_auth_users": users})
    )
    assert added.returncode == 0, added.stdout[-5000:]
    assert http.get("/dashboard/", headers=basic(*former)).status == 200
    # The inventory's list again (the dashboard's user alone): the other user is removed.
    recap = converge(*FRIDGE_ON_APP_HOST, "--tags", "wsgi_site")
    assert recap["web-app1"]["changed"] > 0
    assert http.get("/dashboard/", headers=basic(*former)).status == 401
    assert http.get("/dashboard/", headers=basic(*DASHBOARD_USER)).status == 200
    names = get_host("web-app1").run("cut -d: -f1 /etc/apache2/fridge.htpasswd").stdout.split()
    assert names == [DASHBOARD_USER[0]]


def test_a_second_app_runs_beside_with_its_own_dependency_version(http, host):
    metrics = host.run("curl -s http://127.0.0.1/metrics").stdout  # open to the monitoring alone
    fridge = dict(re.findall(r'(\w+)="([^"]*)"', re.search(r"^fridge_build_info\{(.*)\}", metrics, re.M)[1]))
    pantry = json.loads(
        host.run("curl -sk --resolve pantry.localhost:443:127.0.0.1 https://pantry.localhost/").stdout
    )
    print(f"\nfridge sees itsdangerous {fridge['itsdangerous']}, pantry sees {pantry['itsdangerous']}")
    assert pantry["app"] == "pantry"
    assert fridge["itsdangerous"] == "2.2.0"
    assert pantry["itsdangerous"] == "2.1.2"
    assert pantry["python"] == "/srv/pantry/venv"


def test_each_app_runs_as_its_own_user(host):
    daemons = host.run("ps -eo user:20,args | grep '(wsgi:' | grep -v grep").stdout
    assert any(line.split()[0] == "fridge" and "(wsgi:fridge)" in line for line in daemons.splitlines())
    assert any(line.split()[0] == "pantry" and "(wsgi:pantry)" in line for line in daemons.splitlines())
    config = host.file("/etc/fridge/config.toml")
    assert config.mode == 0o640
    assert config.group == "fridge"


def test_a_new_app_version_is_deployed_without_failed_requests(http, host):
    """Deploy a changed configuration (mod_wsgi restarts the daemon processes, the workers
    restart one at a time) while requests keep coming: none fails."""
    before = {i: host.service(f"fridge-worker@{i}.service").systemd_properties for i in (1, 2)}
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            results.append(http.get("/healthz").status)
            time.sleep(0.01)  # steady load, not a CPU race with the deploy on two cores

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        recap = converge(
            *FRIDGE_ON_APP_HOST, "--tags", "wsgi_app,wsgi_site,rq_workers", "-e", "kit_app_eat_seconds=0.1"
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    after = {i: host.service(f"fridge-worker@{i}.service").systemd_properties for i in (1, 2)}
    failed = [status for status in results if status != 200]
    changes = recap["web-app1"]["changed"]
    print(f"\n{len(results)} requests during the deploy, {len(failed)} failed; changes: {changes}")
    assert recap["web-app1"]["changed"] > 0
    assert failed == []
    assert len(results) > 50
    # Rolling restart: every instance has a new process, started one after the other.
    for i in (1, 2):
        assert after[i]["MainPID"] != before[i]["MainPID"]
    assert after[1]["ExecMainStartTimestampMonotonic"] < after[2]["ExecMainStartTimestampMonotonic"]
    # Put the scenario's own configuration back (and check it converges cleanly).
    converge(*FRIDGE_ON_APP_HOST, "--tags", "wsgi_app,wsgi_site,rq_workers")


def test_a_broken_apache_config_never_takes_the_server_down(http):
    # A location with a space: Apache refuses "<Location /two words>" (it takes one argument).
    locations = '{"wsgi_site_basic_auth_locations": [{"path": "/two words"}]}'
    broken = run_playbook(*FRIDGE_ON_APP_HOST, "--tags", "wsgi_site", "-e", locations)
    assert broken.returncode != 0, "a broken VirtualHost was accepted"
    said = " ".join((broken.stdout + broken.stderr).split())
    assert "configuration test failed, so Apache was NOT reloaded" in said, said[-3000:]
    # Apache was not reloaded with it: the app still answers.
    assert http.get("/healthz").status == 200
    assert http.get("/comer/pera").status == 202
    # A good run puts things right.
    recap = converge(*FRIDGE_ON_APP_HOST, "--tags", "wsgi_site")
    assert recap["web-app1"]["failed"] == 0
    assert get_host("web-app1").run("apache2ctl configtest").rc == 0


def test_a_run_lost_before_its_reload_leaves_no_configuration_unloaded(http):
    """A run that changes the VirtualHost and is lost before its handlers (the controller's
    connection cut, a task failing on the host) leaves a file Apache has not loaded. The next
    run found the file as it wanted it and changed nothing: Apache served the old
    configuration for good, with no sign of it. Now the apache role compares what Apache last
    loaded with the files, whatever the run's tags, and reloads."""
    without_413 = ("-e", '{"wsgi_site_error_documents": {"411": "a body needs a Content-Length"}}')
    args = (*FRIDGE_ON_APP_HOST, "--tags", "wsgi_site", *without_413)
    site = "/etc/apache2/sites-available/fridge.conf"
    oversized = {"task": "eat", "args": ["x" * 70000]}
    assert http.post("/jobs", oversized).headers["Content-Type"] == "application/json"
    kill_playbook_after("Write the VirtualHost", *args)
    app_host = get_host("web-app1")
    assert "ErrorDocument 413" not in app_host.file(site).content_string, "the killed run wrote the site"
    refused = http.post("/jobs", oversized)
    assert refused.headers["Content-Type"] == "application/json", ("Apache reloaded before the kill", refused)
    recap = converge(*args)
    assert recap["web-app1"]["failed"] == 0
    refused = http.post("/jobs", oversized)
    assert refused.status == 413
    assert refused.headers["Content-Type"].startswith("text/html"), refused.body[:300]  # Apache's own
    assert converge(*args)["web-app1"]["changed"] == 0
    converge(*FRIDGE_ON_APP_HOST, "--tags", "wsgi_site")
    assert http.post("/jobs", oversized).json()["status"] == 413


def test_a_run_lost_before_its_restart_leaves_no_confinement_unapplied(http):
    """The same for a change that needs a restart (the unit's drop-in, the modules): a run that
    turns the confinement off is lost once it has removed the drop-in. Apache still runs
    confined; the next run with the same arguments restarts it unconfined, the one after
    changes nothing, and a run with the inventory's settings confines it again."""
    app_host = get_host("web-app1")

    def apache() -> tuple[str, str]:
        """Its main process (a reload keeps it), and the unit's confinement as systemd has it."""
        shown = dict(
            line.split("=", 1)
            for line in app_host.run("systemctl show -p MainPID -p ProtectSystem apache2").stdout.split()
        )
        return shown["MainPID"], shown["ProtectSystem"]

    args = (*FRIDGE_ON_APP_HOST, "--tags", "apache", "-e", "apache_systemd_hardening=false")
    pid, protected = apache()
    assert protected == "strict"
    kill_playbook_after("Remove the confinement when turned off", *args)
    assert not app_host.file("/etc/systemd/system/apache2.service.d/kit-hardening.conf").exists
    assert apache() == (pid, "strict"), "Apache was restarted, or systemd reloaded, before the kill"
    assert converge(*args)["web-app1"]["failed"] == 0
    restarted, unconfined = apache()
    assert (restarted != pid, unconfined) == (True, "no"), "no restart"
    assert converge(*args)["web-app1"]["changed"] == 0
    assert converge(*FRIDGE_ON_APP_HOST, "--tags", "apache")["web-app1"]["failed"] == 0
    assert apache()[1] == "strict"
    assert wait_for(lambda: http.get("/healthz").status == 200, 15, "Apache to answer after its restart")


def test_a_rolling_restart_stops_at_a_web_host_whose_app_does_not_load(http):
    """playbooks/rolling_restart.yml reloads one web host at a time and waits until the app
    answers through it before the next. The app's entry script broken (as a bad upgrade leaves
    it: the daemons cannot import the app) stops the rollout at that host, naming the answer;
    it once went on to the next host and reloaded it too."""
    app_host = get_host("web-app1")
    script = "/var/www/fridge/wsgi.py"
    kept = app_host.run(f"cp -p {script} /root/wsgi.py.kept")
    assert kept.rc == 0, kept.stderr
    assert app_host.run(f"sed -i '1i raise ImportError(\"broken by the test\")' {script}").rc == 0
    try:
        playbook = str(installed_collection() / "playbooks/rolling_restart.yml")
        run = run_playbook("--tags", "web", playbook=playbook)
        broken = http.get("/healthz")
    finally:
        assert app_host.run(f"mv /root/wsgi.py.kept {script}").rc == 0
    # mod_wsgi's own 500 (the app never loaded) is answered 503 with Retry-After, in JSON as
    # the app's answers are (wsgi_site_error_statuses): a client holds its job and retries.
    assert broken.status == 503
    assert broken.json()["status"] == 503, broken.body[:300]
    assert "could not load" in broken.json()["error"], broken.body[:300]
    assert broken.headers.get("Retry-After") == "1", broken.headers
    said = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0, said[-3000:]
    assert "Wait until the app answers through this host again" in said, said[-3000:]
    assert "the app did not answer this request" in said, said[-3000:]
    wait_for(lambda: http.get("/healthz").status == 200, 30, "the app to load again")


@pytest.mark.parametrize(
    "path", ["/etc/apache2/sites-enabled/010-fridge.conf", "/etc/apache2/sites-enabled/060-pantry.conf"]
)
def test_virtualhosts_are_enabled(host, path):
    assert host.file(path).is_symlink


def test_the_second_app_serves_https_only_with_tls_1_2_or_newer(host, http):
    redirect = http.get("/", headers={"Host": "pantry.localhost"})
    assert redirect.status == 301
    assert redirect.headers["Location"] == "https://pantry.localhost/"
    sni = "-servername pantry.localhost -connect 127.0.0.1:443"
    for version in ("-tls1_2", "-tls1_3"):
        ok = host.run(f"echo | openssl s_client {version} {sni} 2>&1")
        assert "Cipher is (NONE)" not in ok.stdout, ok.stdout[-500:]
    # The client is allowed TLS 1.1 (security level 0); the server must refuse it.
    old = host.run(f"echo | openssl s_client -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' {sni} 2>&1")
    assert "alert protocol version" in old.stdout, old.stdout[-500:]
    page = host.run("curl -sk --resolve pantry.localhost:443:127.0.0.1 -D - https://pantry.localhost/")
    assert '"app": "pantry"' in page.stdout
    assert "Strict-Transport-Security: max-age=63072000" in page.stdout


def test_metrics_answer_only_the_configured_networks(http, host):
    assert http.get("/metrics").status == 403  # the controller is not in kit_app_metrics_networks
    local = host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/metrics")
    assert local.stdout == "200"


def test_public_answers_hold_no_internal_address(http):
    for path in ("/healthz", "/comer/%ff%fe", "/openapi.json", "/jobs/nope"):
        text = http.get(path).body.decode()
        assert "172.28.20." not in text, (path, text)  # every host of the scenario is in there


def test_bad_encodings_and_form_bodies_are_4xx_through_apache(http):
    reply = http.get("/comer/%ff%fe")
    assert reply.status == 400
    assert reply.json()["error"] == "the path is not valid UTF-8"
    form = http.request("POST", "/jobs", headers={"Content-Type": "text/plain"})
    assert form.status == 415


def test_enqueueing_and_reading_jobs_need_an_api_token_and_apache_passes_it_to_the_app(app_host_vars):
    """kit_app_api_tokens on: mod_wsgi hands the Authorization header to the API's paths (it
    drops it by default, which would refuse every token), and to no other path."""
    first, second = app_host_vars["kit_app_api_tokens"]
    address = app_host_vars["kit_address"]
    job = {"task": "add", "args": [1, 2]}
    anonymous = Http(address)
    assert anonymous.post("/jobs", body=job).status == 401
    assert anonymous.get("/comer/pan").status == 401
    wrong = {"Authorization": "Bearer " + "x" * len(first)}
    assert anonymous.post("/jobs", body=job, headers=wrong).status == 401
    assert anonymous.post("/jobs", body=job, headers=basic("admin", first)).status == 401
    accepted = Http(address, token=first).post("/jobs", body=job)
    assert accepted.status == 202, accepted.body
    assert Http(address, token=second).get("/comer/pan").status == 202
    # Reading a job needs one too: its arguments and result are its client's, and a recurring
    # job's id (recurring-<name>-<period>) can be guessed.
    assert anonymous.get(accepted.headers["Location"]).status == 401
    assert anonymous.get(accepted.headers["Location"], headers=wrong).status == 401
    assert Http(address, token=second).get(accepted.headers["Location"]).json()["args"] == {"a": 1, "b": 2}


def test_demo_tasks_and_critical_follow_the_inventory(http):
    # The development inventory turns the demo tasks on; critical stays private.
    assert http.post("/jobs", body={"task": "add", "args": [1, 2]}).status == 202
    assert http.post("/jobs", body={"task": "sleep", "args": [0]}).status == 202
    reply = http.post("/jobs", body={"task": "add", "args": [1, 2], "queue": "critical"})
    assert reply.status == 400
    assert "not open to requests" in reply.json()["error"]


def test_the_app_host_holds_only_the_client_credentials(host, app_host_vars):
    """The app's config has its tiers' Redis users (this host serves the app and runs its
    workers: both) and the Sentinel client login, never the Sentinel peers' password nor any
    other Redis user's."""
    config = host.file("/etc/fridge/config.toml").content_string
    v = app_host_vars
    assert v["vault_redis_sentinel_client_password"] in config
    assert v["vault_redis_web_password"] in config
    assert v["vault_redis_worker_password"] in config
    assert 'REDIS_USERNAME = "fridge-web"' in config
    assert 'WORKER_REDIS_USERNAME = "fridge-worker"' in config
    for other in (
        "vault_redis_sentinel_password",
        "vault_redis_admin_password",
        "vault_redis_replication_password",
        "vault_redis_sentinel_acl_password",
    ):
        assert v[other] not in config, other


def test_the_cli_and_rq_info_work_on_the_app_host(host):
    """An operator on the app host (root, as with sudo): `fridge` and RQ's own `rq info` reach
    the queue through Sentinel over TLS with the app's configuration; a user outside the app's
    group cannot read that configuration and is told so."""
    queued = host.run("""fridge --json enqueue eat '["higo"]' --queue low""")
    assert queued.rc == 0, queued.stderr
    job_id = json.loads(queued.stdout)["job_id"]

    def finished() -> bool:
        shown = host.run(f"fridge --json show {job_id}")
        assert shown.rc == 0, shown.stderr
        return json.loads(shown.stdout)["status"] == "finished"

    assert wait_for(finished, 15, f"job {job_id} to finish")
    status = host.run("fridge status")
    assert status.rc == 0, status.stderr
    assert status.stdout.splitlines()[0].split() == ["queue", "waiting", "started", "scheduled", "failed"]
    info = host.run("rq info -c fridge.rq_settings")
    assert info.rc == 0, info.stderr
    assert "workers," in info.stdout, info.stdout
    outsider = host.run("runuser -u nobody -- fridge status")
    assert outsider.rc == 3, outsider.stdout
    assert "cannot read the configuration" in outsider.stderr, outsider.stderr


def test_a_second_app_may_not_take_the_first_apps_commands(host):
    """Both apps on this host apply wsgi_app; given the same command name, the second stops with
    a message naming the file instead of overwriting the first app's command on every run."""
    before = host.file("/usr/local/bin/fridge").content_string
    run = run_playbook("--tags", "wsgi_app_config", "--check", "-e", '{"wsgi_app_commands": ["fridge"]}')
    assert run.returncode != 0, run.stdout[-3000:]
    # The message, however the callback prints it (wrapped, quoted, on stdout or stderr).
    said = re.sub(r"\W+", " ", run.stdout + run.stderr)
    assert "usr local bin fridge exists and is not a command of pantry" in said, run.stdout + run.stderr
    assert host.file("/usr/local/bin/fridge").content_string == before
    assert "wsgi_app command of fridge" in before
