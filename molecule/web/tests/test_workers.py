"""Workers under systemd: instances, scaling, warm stop, hardening, logs."""

from __future__ import annotations

import os
import time

import testinfra.utils.ansible_runner
from kit_checks import assert_running, converge, exposure, wait_for

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("workers")


# fridge's workers alone, not the example app's (converge.yml tags its play).
FRIDGE_WORKERS = ("--skip-tags", "pantry", "--tags", "rq_workers")


def instances(host, state: str) -> list[str]:
    out = host.run(
        f"systemctl list-units --all --plain --no-legend --state={state} 'fridge-worker@*.service'"
    )
    return sorted(line.split()[0] for line in out.stdout.splitlines() if line.strip())


def test_the_configured_number_of_workers_runs(host):
    assert_running(host, "fridge-workers.target")
    for i in (1, 2):
        assert_running(host, f"fridge-worker@{i}.service")
    assert instances(host, "running") == ["fridge-worker@1.service", "fridge-worker@2.service"]


def test_unit_has_the_lifecycle_settings(host):
    props = host.service("fridge-worker@1.service").systemd_properties
    assert props["Restart"] == "always"
    assert props["KillMode"] == "mixed"
    assert props["KillSignal"] == "15"
    # Longer than the job timeout (180 s): a stop lets the running job finish.
    assert props["TimeoutStopUSec"] == "3min 30s"
    assert "fridge-workers.target" in props["PartOf"]
    assert host.run("systemd-analyze verify fridge-worker@1.service").rc == 0


def test_lowering_the_count_leaves_exactly_that_many_and_kills_no_running_job(host, http):
    converge("--limit", host.backend.get_hostname(), *FRIDGE_WORKERS, "-e", "rq_workers_count=3")
    assert instances(host, "running") == [f"fridge-worker@{i}.service" for i in (1, 2, 3)]
    # Every instance busy with a 6-second job when the count drops to 1.
    jobs = [http.post("/jobs", body={"task": "sleep", "args": [6]}).json()["job_id"] for _ in range(3)]
    started = [http.wait_for_job(job_id, {"started"}, timeout=15) for job_id in jobs]
    converge("--limit", host.backend.get_hostname(), *FRIDGE_WORKERS, "-e", "rq_workers_count=1")
    for job_id, before in zip(jobs, started, strict=True):
        done = http.wait_for_job(job_id, {"finished", "failed"}, timeout=30)
        assert done["status"] == "finished", done
        assert done["retries_left"] == before["retries_left"], "a job was killed and retried"
    assert instances(host, "running") == ["fridge-worker@1.service"]
    assert instances(host, "failed") == []
    assert not host.service("fridge-worker@2.service").is_enabled
    assert not host.service("fridge-worker@3.service").is_enabled
    converge("--limit", host.backend.get_hostname(), *FRIDGE_WORKERS)
    assert instances(host, "running") == ["fridge-worker@1.service", "fridge-worker@2.service"]


def _instance_running(http, job_id: str) -> str:
    """The instance number of the unit whose worker runs the job."""
    worker = http.get("/dashboard/api/overview", headers=_auth()).json()
    busy = [w["name"] for w in worker["workers"] if w["current_job"] == job_id]
    assert busy, worker
    return busy[0].split(".")[0].rsplit("-", 1)[1]  # <host>-<instance>.<pid>


def test_sigterm_lets_a_busy_worker_finish_its_5_second_job(host, http):
    job_id = http.post("/jobs", body={"task": "sleep", "args": [5]}).json()["job_id"]
    job = http.wait_for_job(job_id, {"started"}, timeout=10)
    instance = _instance_running(http, job_id)
    started = time.monotonic()
    stop = host.run(f"systemctl stop fridge-worker@{instance}.service")  # SIGTERM to the main process
    waited = time.monotonic() - started
    assert stop.rc == 0
    done = http.get(f"/jobs/{job_id}").json()
    print(f"\nstop of fridge-worker@{instance} waited {waited:.1f}s for its job: {done['status']}")
    assert done["status"] == "finished", done
    assert job["status"] == "started"
    host.run(f"systemctl start fridge-worker@{instance}.service")
    wait_for(
        lambda: host.service(f"fridge-worker@{instance}.service").is_running, 30, "the worker to start again"
    )


def test_exposure_meets_the_target(host):
    ours, _ = exposure(host, "fridge-worker@1.service")
    assert ours <= 1.5


def test_each_instance_logs_to_the_journal_under_its_own_name(host):
    for i in (1, 2):
        out = host.run(f"journalctl -t fridge-worker-{i} --no-pager -n 50").stdout
        assert "Listening on" in out or "started with PID" in out, out


def test_the_process_title_says_what_each_worker_does(host):
    titles = host.run("ps -eo args").stdout
    assert titles.count("Listening on critical,default,low") >= 1, titles


def _auth() -> dict:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(b"admin:dev-dashboard-3d7f1a9c").decode()}


def test_a_unit_killed_mid_job_is_restarted_and_retries_its_job_at_once(host, http):
    """The way the world kills a worker: every process of its unit SIGKILLed at once (the OOM
    killer, `systemctl kill`). systemd restarts the unit (Restart=always), and the new process
    retries the job its last one was running at once (`--recover`), not once the job's heartbeat
    has lapsed (10 s of monitoring interval plus 30 s of grace)."""
    job_id = http.post("/jobs", body={"task": "sleep", "args": [5]}).json()["job_id"]
    job = http.wait_for_job(job_id, {"started"}, timeout=10)
    unit = f"fridge-worker@{_instance_running(http, job_id)}.service"
    restarts = int(host.service(unit).systemd_properties["NRestarts"])
    killed = time.monotonic()
    assert host.run(f"systemctl kill --signal=SIGKILL {unit}").rc == 0
    done = http.wait_for_job(job_id, {"finished", "failed"}, timeout=60)
    took = time.monotonic() - killed
    print(f"\n{unit} SIGKILLed mid-job: job {done['status']} {took:.1f}s later")
    assert done["status"] == "finished", done
    assert done["retries_left"] == job["retries_left"] - 1, "the job ran again as a retry"
    assert took < 25, f"retried only after {took:.1f}s: the heartbeat's grace, not the restart"
    assert int(host.service(unit).systemd_properties["NRestarts"]) == restarts + 1
    wait_for(lambda: host.service(unit).is_running, 30, f"{unit} to run again")
