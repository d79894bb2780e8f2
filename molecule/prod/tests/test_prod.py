"""The production inventory over SSH: Ansible logs in as an unprivileged user and becomes root;
the platform answers end to end."""

from __future__ import annotations

import os
import time

import testinfra.utils.ansible_runner
from kit_checks import Http, hosts_in, hostvars

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("all")


def test_ansible_reaches_hosts_over_ssh_as_deploy(host):
    # testinfra goes through the inventory, so this is Ansible's own SSH connection with the
    # inventory's become: commands run as root through sudo from the "deploy" login. A root login
    # (as the docker connection would be) would have no SUDO_USER.
    assert host.ansible.get_variables()["ansible_user"] == "deploy"
    assert host.run("id -un").stdout.strip() == "root"
    assert host.run("printenv SUDO_USER").stdout.strip() == "deploy"


def test_fifty_jobs_through_apache_are_all_eaten():
    http = Http(hostvars(hosts_in("web")[0])["kit_address"])
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


def test_production_timings_are_applied():
    v = hostvars(hosts_in("redis")[0])
    assert v["redis_sentinel_down_after_ms"] == 5000
