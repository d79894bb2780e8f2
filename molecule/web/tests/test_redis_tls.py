"""Redis and Sentinel over TLS with the kit's own CA (playbooks/pki.yml), as development and
this scenario run them: only TLS answers, and a due certificate is renewed by the next run
without restarting a data node."""

from __future__ import annotations

import tomllib

from kit_attacks import assert_no_command_without_login, probe_from, redis_targets
from kit_checks import converge, get_host, hosts_in, load_group, tls_ca
from kit_faults import make_certificates_due, sentinel_pids, served_certificates, server_pid


def test_from_the_app_host_every_port_speaks_only_tls_and_the_app_uses_it():
    ca = tls_ca()
    assert ca, "this scenario turns Redis TLS on (host_vars)"
    name = hosts_in("web")[0]
    app = get_host(name)
    got = probe_from(app, redis_targets(), ca)
    print(f"from {name}: {got}")
    assert_no_command_without_login(got, redis_targets(), tls=True)
    config = tomllib.loads(app.file("/etc/fridge/config.toml").content_string)
    assert config["REDIS_TLS"] is True
    assert config["REDIS_TLS_CA"].strip() == ca.strip()


def test_due_certificates_are_renewed_without_restarting_a_data_node(http):
    """The kit's CA issues host certificates for 90 days; the run that finds fewer than 30 left
    issues new ones (made due here by removing them from the controller). Each server then
    presents its new certificate, the data nodes kept their process (reloaded live: no
    failover), each Sentinel restarted; the next run renews nothing; the app enqueues."""
    group = load_group(sorted(set(hosts_in("redis")) | set(hosts_in("redis_sentinel"))))
    before = served_certificates(group)
    redis_pids = {h: server_pid(group, h) for h in group.nodes}
    sentinels = sentinel_pids(group)
    make_certificates_due(group)
    recap = converge("--tags", "redis,sentinel")
    assert any(counts["changed"] for counts in recap.values())
    after = served_certificates(group)
    assert all(after[t] != before[t] for t in before), "a server kept its old certificate"
    assert {h: server_pid(group, h) for h in group.nodes} == redis_pids, "a data node restarted"
    now = sentinel_pids(group)
    assert all(now[h] != sentinels[h] for h in now), (sentinels, now)
    again = converge("--tags", "redis,sentinel")
    assert not any(counts["changed"] for counts in again.values()), again
    reply = http.get("/comer/renewed")
    assert reply.status == 202, reply.body
    job = http.wait_for_job(reply.json()["job_id"], {"finished", "failed"}, timeout=60)
    assert job["status"] == "finished", job
