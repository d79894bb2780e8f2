"""The example app (examples/pantry) deployed beside fridge by this scenario's converge, as README
"Deploy your own app" describes: built on kitqueue, its own task registered through an entry
point, its own dependency version, its own Redis users and workers; its acknowledged jobs all
run through a failover of the Redis group both apps share."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

from kit_attacks import attack_from, refused
from kit_checks import get_host, hosts_in, load_group, wait_for
from kit_faults import docker, freeze_host, thaw_host

APP_HOST = "web-app1"
CURL = "curl -sk --max-time 15 --resolve pantry.localhost:443:127.0.0.1"
LOG, STOP = "/root/pantry-load.log", "/root/pantry-load.stop"
RQ = "pantry:rq"  # pantry's RQ keys (kitqueue.use_namespace in examples/pantry/pantry/__init__.py)
# A client on the app host: POST /stock/<item> in a loop, each answer's body and status on a line.
LOAD = (
    f"rm -f {LOG} {STOP}; i=0; while [ ! -e {STOP} ]; do i=$((i+1)); "
    f"{CURL} -o - -w ' %{{http_code}}\\n' -X POST https://pantry.localhost/stock/jar-$i >> {LOG}; "
    "sleep 0.05; done"
)


def pantry(path: str, method: str = "GET") -> dict:
    run = get_host(APP_HOST).run(f"{CURL} -X {method} https://pantry.localhost{path}")
    assert run.rc == 0, run.stderr
    return json.loads(run.stdout)


def outcome(job_id: str) -> dict:
    """The job once it has finished or failed (30 s at most)."""
    return wait_for(
        lambda: (r := pantry(f"/jobs/{job_id}"))["status"] in ("finished", "failed") and r,
        30,
        f"job {job_id} to finish",
        0.3,
    )


def answers() -> list[tuple[str | None, int]]:
    """(job id or None, HTTP status) of every request the load has made so far."""
    found = []
    for line in get_host(APP_HOST).run(f"cat {LOG} 2>/dev/null").stdout.splitlines():
        status = re.search(r" (\d{3})$", line)
        if status is None:  # the request under way: its answer is not all written yet
            continue
        job = re.search(r'"job_id": "([0-9a-f]+)"', line)
        found.append((job.group(1) if job else None, int(status.group(1))))
    return found


def test_the_example_app_runs_its_own_task_with_its_own_dependency_version():
    host = get_host(APP_HOST)
    assert host.service("pantry-worker@1.service").is_running
    versions = {
        app: host.run(
            f"/srv/{app}/venv/bin/python -c 'import importlib.metadata as m;"
            f' print(m.version("kitqueue"), m.version("itsdangerous"))\''
        ).stdout.split()
        for app in ("fridge", "pantry")
    }
    assert versions == {"fridge": ["1.0.0", "2.2.0"], "pantry": ["1.0.0", "2.1.2"]}, versions
    job = pantry("/stock/honey", "POST")
    assert job["queue"] == "pantry", job
    done = outcome(job["job_id"])
    assert done["status"] == "finished", done
    assert done["result"]["item"] == "honey"
    assert done["result"]["itsdangerous"] == "2.1.2"  # run by pantry's worker, in pantry's venv
    # Each app's registry (kitqueue.registry, from its venv's entry points) holds its own tasks.
    registered = {
        app: host.run(
            f"/srv/{app}/venv/bin/python -c 'from kitqueue.registry import tasks; print(*sorted(tasks()))'"
        ).stdout.split()
        for app in ("fridge", "pantry")
    }
    assert registered == {
        "fridge": ["add", "crash", "eat", "fail", "flaky", "hog", "sleep", "spawn"],
        "pantry": ["stock"],
    }, registered


def test_each_app_keeps_its_jobs_and_its_logins_reach_nothing_of_the_other_s():
    """pantry's RQ keys are under its own prefix, so the two apps on one Redis group keep their
    jobs, queues and workers apart; each app's Redis logins (pantry's reach only `pantry:*`)
    are refused the other's keys, with the commands they may run on their own."""
    job = pantry("/stock/flour", "POST")
    assert outcome(job["job_id"])["status"] == "finished"
    key = f"{RQ}:job:{job['job_id']}"
    group = load_group(sorted(set(hosts_in("redis")) | set(hosts_in("redis_sentinel"))))
    with group.node(group.current_master()) as conn:
        assert conn.command("EXISTS", key) == 1
        assert conn.command("EXISTS", f"rq:job:{job['job_id']}") == 0
        assert conn.command("SMEMBERS", f"{RQ}:queues") == [f"{RQ}:queue:pantry"]
        fridge_queues = conn.command("SMEMBERS", "rq:queues")
        assert fridge_queues, "fridge's queues"
        assert not [q for q in fridge_queues if "pantry" in q], fridge_queues
        assert conn.command("SCARD", f"{RQ}:workers") >= 2  # its unit's two job slots
    host = get_host(APP_HOST)
    for tier in ("web", "worker"):
        mine = {"read-own-job": [["HGET", key, "status"]], "read-own-queues": [["SMEMBERS", f"{RQ}:queues"]]}
        theirs = {
            "read-fridge-queues": [["SMEMBERS", "rq:queues"]],
            "read-fridge-workers": [["SMEMBERS", "rq:workers"]],
            "push-to-fridge-queue": [["LPUSH", "rq:queue:default", "intruder"]],
        }
        got = attack_from(host, tier, "/etc/pantry/config.toml", {**mine, **theirs})
        print(f"\npantry's {tier} login: {got['redis']}")
        assert got["redis_user"] == f"pantry-{tier}"
        assert got["redis"]["read-own-job"] == "finished"
        assert got["redis"]["read-own-queues"] == [f"{RQ}:queue:pantry"]
        for step, reply in ((s, got["redis"][s]) for s in theirs):
            assert refused(reply), (tier, step, reply)
        got = attack_from(
            host,
            tier,
            redis={
                "read-own-queues": [["SMEMBERS", "rq:queues"]],
                "read-pantry-job": [["HGET", key, "status"]],
            },
        )
        print(f"fridge's {tier} login: {got['redis']}")
        assert got["redis_user"] == f"fridge-{tier}"
        assert sorted(got["redis"]["read-own-queues"]) == sorted(fridge_queues)
        assert refused(got["redis"]["read-pantry-job"]), got["redis"]


def slot_workers(host, unit: str) -> dict[int, str]:
    """The unit's job slots: its main process's children (pid -> process title)."""
    main = host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
    pids = host.run(f"cat /proc/{main}/task/{main}/children").stdout.split()
    return {int(pid): host.run(f"ps -o args= -p {pid}").stdout.strip() for pid in pids}


def test_the_example_app_s_unit_runs_two_job_slots_and_replaces_one_killed():
    """rq_workers_slots: 2 (converge.yml): one unit, two workers forked from its process. A
    slot killed by the kernel (SIGKILL, as the OOM killer does) is replaced by the unit itself:
    systemd does not restart the unit and the other slot carries on."""
    host = get_host(APP_HOST)
    unit = "pantry-worker@1.service"

    def show(prop: str) -> str:
        return host.run(f"systemctl show -p {prop} --value {unit}").stdout.strip()

    restarts = show("NRestarts")
    assert show("StatusText") == "2 of 2 slots taking jobs"
    slots = slot_workers(host, unit)
    assert len(slots) == 2, slots
    assert all(title.startswith("rq:worker:") for title in slots.values()), slots
    victim = min(slots)
    assert host.run(f"kill -KILL {victim}").rc == 0
    wait_for(
        lambda: len(new := slot_workers(host, unit)) == 2 and victim not in new,
        30,
        "a new slot in place of the killed one",
        0.3,
    )
    wait_for(lambda: show("StatusText") == "2 of 2 slots taking jobs", 30, "both slots taking jobs", 0.3)
    assert (show("ActiveState"), show("NRestarts")) == ("active", restarts)
    job = pantry("/stock/salt", "POST")
    done = outcome(job["job_id"])
    assert done["status"] == "finished", done


def test_every_acknowledged_job_of_the_example_app_runs_through_a_failover():
    """pantry's clients keep posting while the master's host is frozen (no TCP reset reaches
    anyone) until the Sentinels promote the replica: every 202 is a job that runs."""
    group = load_group(sorted(set(hosts_in("redis")) | set(hosts_in("redis_sentinel"))))
    old = group.current_master()
    master = next(host for host, address in group.nodes.items() if address == old)
    app = get_host(APP_HOST)
    app.run(f"rm -f {LOG}; cat > /root/pantry-load.sh <<'EOF'\n{LOAD}\nEOF")
    docker("exec", "-d", APP_HOST, "sh", "/root/pantry-load.sh")
    try:
        wait_for(lambda: sum(s == 202 for _, s in answers()) >= 20, 30, "the load's first 202s", 0.3)
        began = time.monotonic()
        freeze_host(master)
        try:
            wait_for(
                lambda: {a for a in group.masters_named().values() if a} - {f"{old}:6379"},
                60,
                "a new master",
                0.3,
            )
        finally:
            thaw_host(master)
            thawed = time.time()
        failover = time.monotonic() - began
        after = len(answers())
        wait_for(lambda: sum(s == 202 for _, s in answers()[after:]) >= 20, 60, "202s after it", 0.3)
    finally:
        app.run(f"touch {STOP}")
    # The loop ends after the request under way (curl gives up after 15 s).
    wait_for(lambda: app.run("pgrep -f '[p]antry-load.sh'").rc == 1, 20, "the client loop to end", 0.2)
    got = answers()
    acked = [job for job, status in got if status == 202]
    other = [(job, status) for job, status in got if status not in (202, 503)]
    unavailable = sum(status == 503 for _, status in got)
    print(f"\nfailover {failover:.1f}s: {len(got)} requests, {len(acked)} acknowledged, {unavailable} x 503")
    assert not other, f"answers other than 202 or 503: {other[:5]}"
    new = group.current_master()
    assert new != old

    def unfinished() -> list[str]:
        with group.node(new) as conn:
            states = [conn.command("HGET", f"{RQ}:job:{job}", "status") for job in acked]
        return [job for job, state in zip(acked, states, strict=True) if state != "finished"]

    waited = time.monotonic()
    deadline = waited + 60
    while (left := unfinished()) and time.monotonic() < deadline:
        time.sleep(0.5)
    with group.node(new) as conn:
        where = {job: whereabouts(conn, "pantry", job) for job in left[:5]}
        times = [conn.command("HMGET", f"{RQ}:job:{job}", "enqueued_at", "ended_at") for job in acked]
    assert not left, f"{len(left)} of {len(acked)} acknowledged jobs did not run: {where}"
    # The workers leave the old master when it wakes (it believes it is the master until
    # Sentinel demotes it, ~10 s later) and put back the jobs whose outcome stayed there: each
    # job runs within seconds of its acknowledgement or of the thaw, whichever is later (before
    # follow.py: 9.4 s for a job acknowledged after the thaw, 30-70 s for a job put back by the
    # stuck-job grace alone).
    waits = sorted(
        (_instant(ended) - max(_instant(enqueued), thawed), job)
        for job, (enqueued, ended) in zip(acked, times, strict=True)
    )
    after_thaw = sum(_instant(enqueued) > thawed for enqueued, _ in times)
    slowest = waits[-1]
    print(
        f"all ran {time.monotonic() - waited:.1f}s after the load ended; {after_thaw} acknowledged "
        f"after the thaw; the slowest ran {slowest[0]:.2f}s after its acknowledgement or the thaw"
    )
    assert after_thaw, "no job was acknowledged after the old master woke up"
    assert slowest[0] < 5, f"job {slowest[1]} waited {slowest[0]:.1f}s: a worker stayed on the old master"


def _instant(stamp: str) -> float:
    """An RQ timestamp (UTC, ISO 8601) as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def whereabouts(conn, queue: str, job: str) -> str:
    """Where a job is on a node: its status and every RQ list or registry of `queue` holding it
    (RQ 3 keeps a started job as "<job id>:<execution id>")."""
    status = conn.command("HGET", f"{RQ}:job:{job}", "status")
    lists = {"queued": f"{RQ}:queue:{queue}", "fetched": f"{RQ}:queue:{queue}:intermediate"}
    registries = {"started": "wip", "scheduled": "scheduled", "failed": "failed", "finished": "finished"}
    places = [name for name, key in lists.items() if job in conn.command("LRANGE", key, 0, -1)]
    places += [
        name
        for name, kind in registries.items()
        if any(m.split(":")[0] == job for m in conn.command("ZRANGE", f"{RQ}:{kind}:{queue}", 0, -1))
    ]
    return f"status {status or 'none (no job hash)'}, in {', '.join(places) or 'no list'}"
