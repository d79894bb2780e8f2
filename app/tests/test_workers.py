"""Worker processes as systemd runs them: warm shutdown, a SIGKILL mid-job, the procline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for_status
from fridge.web import create_app
from kitqueue.config import for_worker
from kitqueue.fetch import FETCH_MEMORY_SECONDS, FETCH_SCRIPT, recover_predecessors
from kitqueue.queueing import RegisteredJob, make_queue
from kitqueue.store import Store
from kitqueue.worker import build_worker
from redis_cluster import PASSWORDS, SENTINEL_CLIENT_USER, WORKER_USER, wait_until
from rq.serializers import JSONSerializer


def proc_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except FileNotFoundError:
        return ""


def children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


def wait_started(client, job_id: str) -> None:
    wait_for_status(client, job_id, {"started"}, timeout=15)


def test_sigterm_lets_the_running_job_finish(client, workers):
    (worker,) = workers.start(1)
    job_id = client.post("/jobs", json={"task": "sleep", "args": [2]}).get_json()["job_id"]
    wait_started(client, job_id)
    worker.send_signal(signal.SIGTERM)  # what systemd sends to the main process (KillMode=mixed)
    assert worker.wait(timeout=20) == 0
    done = client.get(f"/jobs/{job_id}").get_json()
    assert done["status"] == "finished", done
    assert done["result"] == 2


def test_a_warm_stop_runs_the_job_just_taken_and_leaves_none_behind(client, workers, admin):
    """A busy worker of no-op jobs spends much of each turn between taking a job from its
    queue and registering its run; a SIGTERM there made RQ raise StopRequested into the fetch
    and the job stayed in the intermediate list until a maintenance pass (30 s and more, as a
    failed attempt). Stopped at many moments of its loop, the worker runs what it took."""
    pipe = admin.pipeline(transaction=False)
    jobs = [client.post("/jobs", json={"task": "add", "args": [n, 1]}) for n in range(400)]
    ids = [job.get_json()["job_id"] for job in jobs]
    for turn in range(12):
        before = admin.llen("rq:queue:default")
        (worker,) = workers.start(1)
        wait_until(lambda b=before: admin.llen("rq:queue:default") < b - 10, 30, "the worker to take jobs")
        time.sleep(turn * 0.005)  # a different moment of its loop each time
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert admin.lrange("rq:queue:default:intermediate", 0, -1) == []
    for job_id in ids:
        pipe.hget(f"rq:job:{job_id}", "status")
    statuses = dict(zip(ids, (s.decode() for s in pipe.execute()), strict=True))
    queued = {j.decode() for j in admin.lrange("rq:queue:default", 0, -1)}
    assert {j for j, s in statuses.items() if s != "finished"} == queued
    assert all(statuses[j] == "queued" for j in queued)


def test_a_warm_stop_during_a_job_longer_than_the_maintenance_interval_starts_no_scheduler(
    client, workers, capfd
):
    """A stop asked during a job that outlasts the maintenance interval (2 s here): RQ's
    maintenance pass after the job started again the scheduler the stop had ended, forked while
    the worker's SIGTERM handler was the cold shutdown's; teardown's SIGTERM could reach it
    before it set its own, and teardown's join then waited for it for good (a CI run: the worker
    never exited, 20 s)."""
    (worker,) = workers.start(1)
    job_id = client.post("/jobs", json={"task": "sleep", "args": [3]}).get_json()["job_id"]
    wait_started(client, job_id)
    capfd.readouterr()  # what the worker said before the stop
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    said = capfd.readouterr().err
    assert "warm shut down requested" in said, said
    assert "Acquired scheduler lock" not in said.split("warm shut down requested", 1)[1], said
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "finished"


def test_stopping_a_scheduler_reaped_outside_multiprocessing_does_not_wait_for_it():
    """A scheduler process reaped where multiprocessing did not see it (its own waitpid then
    fails with ECHILD, and is_alive stays True for ever): the stop sees it gone at once. It
    used to send SIGTERM to the pid and wait SCHEDULER_STOP_SECONDS (10 s)."""
    from multiprocessing.context import ForkProcess
    from types import SimpleNamespace

    from kitqueue.worker import KitWorker

    process = ForkProcess(target=os._exit, args=(0,))
    process.start()
    os.waitpid(process.pid, 0)  # behind multiprocessing's back
    assert process.is_alive(), "premise: multiprocessing still counts it alive"
    worker = SimpleNamespace(scheduler=SimpleNamespace(_process=process), name="reaped")
    started = time.monotonic()
    KitWorker.stop_scheduler(worker)
    assert time.monotonic() - started < 1.0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop is the fault
def test_a_stop_request_dropped_by_a_finalizer_still_stops_the_idle_worker(app, client, admin):
    """RQ stops an idle worker by raising StopRequested out of its SIGTERM handler into
    whatever the worker was running. A signal that lands in a finalizer (a connection pool's
    __del__: a CI run of test_a_stopped_worker_fires_workers_down) has that exception printed
    and dropped by Python, and the worker listened on. Here the handler runs in a real
    finalizer; the fetch loop must still stop, and leave the waiting job to another worker."""
    from kitqueue.worker import build_worker
    from rq.exceptions import StopRequested

    reply = client.get("/comer/dropped-stop")
    assert reply.status_code == 202, reply.get_json()
    job_id, queue = reply.get_json()["job_id"], reply.get_json()["queue"]
    as_worker = {**app.config, "REDIS_USERNAME": WORKER_USER, "REDIS_PASSWORD": PASSWORDS["worker"]}
    worker = build_worker(Store(as_worker), [queue], "dropped-stop")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    class Finalizer:
        def __del__(self) -> None:
            worker.request_stop(signal.SIGTERM, None)

    try:
        Finalizer()  # collected at once: "Exception ignored in ... __del__", as in that run
        started = time.monotonic()
        with pytest.raises(StopRequested):
            worker.dequeue_job_and_maintain_ttl(timeout=30, max_idle_time=5)
        assert time.monotonic() - started < 2
        assert admin.lpos(f"rq:queue:{queue}", job_id) is not None, "the job waits for another worker"
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def test_a_job_whose_worker_was_sigkilled_is_retried_and_finished(client, workers):
    (victim,) = workers.start(1)
    job_id = client.post("/jobs", json={"task": "sleep", "args": [1]}).get_json()["job_id"]
    wait_started(client, job_id)
    workers.kill_all(victim)  # worker and work horse die at once, mid-job
    killed = time.monotonic()
    workers.start(1)
    done = wait_for_status(client, job_id, {"finished", "failed"}, timeout=60)
    print(f"\njob retried and finished {time.monotonic() - killed:.1f}s after its worker was SIGKILLed")
    assert done["status"] == "finished", done
    assert done["retries_left"] == 1


@pytest.mark.parametrize("slots", [1, 2])
def test_a_unit_restarted_after_a_kill_retries_its_last_process_s_job_at_once(settings, workers, slots):
    """systemd's restart of a unit whose process died (Restart=always): every process of the
    unit is gone (KillMode=mixed) before the same name starts again. With `--recover` the job
    its last process was running is retried at once, not after the heartbeat's grace (60 s
    here), and the retry (due 1 s later) is not held back by the scheduler lock the dead
    process held on its queue (up to 61 s); the job a worker of another name (`host-10`, whose
    names also start with `host-1`) runs, in another queue, is left alone."""
    client = create_app({**settings, "JOB_RETRY_INTERVALS": [1]}).test_client()
    grace = {"WORKER_HEARTBEAT_GRACE": 60}
    options = ("--recover", "--slots", str(slots))
    unit = workers.start_named("host-1", *options, "--queues", "low", **grace)
    workers.start_named("host-10", *options, "--queues", "default", **grace)
    abandoned = client.post("/jobs", json={"task": "sleep", "args": [3], "queue": "low"}).get_json()
    running = client.post("/jobs", json={"task": "sleep", "args": [6], "queue": "default"}).get_json()
    wait_started(client, abandoned["job_id"])
    wait_started(client, running["job_id"])
    workers.kill_all(unit)
    killed = time.monotonic()
    workers.start_named("host-1", *options, "--queues", "low", **grace)
    done = wait_for_status(client, abandoned["job_id"], {"finished", "failed"}, timeout=20)
    print(f"\njob retried and finished {time.monotonic() - killed:.1f}s after its unit was killed")
    assert (done["status"], done["retries_left"]) == ("finished", 1), done
    kept = wait_for_status(client, running["job_id"], {"finished", "failed"}, timeout=20)
    assert (kept["status"], kept["retries_left"]) == ("finished", 2), kept


def test_recovery_waits_for_the_maintenance_lock_and_leaves_the_job_while_it_stays_taken(
    app, client, workers, admin
):
    """The maintenance pass of another worker may be cleaning the same registry: recovery
    touches nothing without its lock (the pass would drop an entry it did not read), and
    leaves the job to the heartbeat's grace; once the lock is free it retries the job."""
    (dead,) = workers.start(1, WORKER_HEARTBEAT_GRACE=60)
    job_id = client.post("/jobs", json={"task": "sleep", "args": [3]}).get_json()["job_id"]
    wait_started(client, job_id)
    workers.kill_all(dead)
    registry, lock = "rq:wip:low", "rq:clean_registries:low"
    (entry,) = [e for e in admin.zrange(registry, 0, -1) if e.decode().startswith(job_id)]
    expiry = admin.zscore(registry, entry)
    as_worker = {**app.config, "REDIS_USERNAME": WORKER_USER, "REDIS_PASSWORD": PASSWORDS["worker"]}
    queues = [make_queue(Store(as_worker), q) for q in app.config["QUEUES"]]
    admin.set(lock, 1, ex=60)  # RQ's own pass holds it
    assert recover_predecessors(queues, "test-worker-0", lock_wait=0.5) == []
    assert admin.zscore(registry, entry) == expiry
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "started"
    admin.delete(lock)
    assert recover_predecessors(queues, "test-worker-0", lock_wait=0.5) == [job_id]
    assert recover_predecessors(queues, "test-worker-0", lock_wait=0.5) == [], "handled once"
    assert admin.exists(lock) == 0
    retried = client.get(f"/jobs/{job_id}").get_json()
    assert (retried["status"], retried["retries_left"]) == ("queued", 1), retried


def test_a_maintenance_pass_cut_off_leaves_no_lock_that_holds_back_the_next(workers, admin):
    """A worker's maintenance pass holds its queue's lock. RQ's lasts 15 minutes and was given
    back only by a pass that ended well: a rolling restart's SIGTERM in the pass left it taken,
    and every abandoned job of the queue then waited for it to lapse. Here the pass over
    `critical` is made long for real (5,000 entries of jobs that are gone, each read once),
    then cut off: by SIGTERM (the lock is given back as the worker stops), and by SIGKILL of
    the whole unit (the same name started again with --recover frees its dead process's lock
    and its pass runs at once)."""
    registry, lock = "rq:wip:critical", "rq:clean_registries:critical"

    def fill() -> None:
        admin.zadd(registry, {f"gone-{n}:x": 1 for n in range(5_000)})

    def in_the_pass(name: str) -> str:
        def held() -> str:
            holder = (admin.get(lock) or b"").decode()
            return holder if holder.startswith(f"{name}.") else ""

        try:
            return wait_until(held, 30, "")
        except AssertionError:
            raise AssertionError(f"no pass of {name}: the lock holds {admin.get(lock)!r}") from None

    fill()
    (worker,) = workers.start(1, "--queues", "critical")
    holder = in_the_pass("test-worker-0")
    # The pass waits on Redis when the signal comes: it is surely cut off. Shorter than the
    # Sentinels' down-after (1 s): 1.5 s made them fail the master over, now and then.
    admin.execute_command("CLIENT", "PAUSE", 500)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert holder.endswith(".maintenance"), holder
    assert admin.zcard(registry) > 0, "the pass was not cut off: nothing shown"
    assert admin.exists(lock) == 0, f"the lock stayed taken: {admin.get(lock)!r}, {admin.ttl(lock)} s"

    fill()
    unit = workers.start_named("host-1", "--recover", "--queues", "critical")
    in_the_pass("host-1")
    admin.execute_command("CLIENT", "PAUSE", 500)
    workers.kill_all(unit)
    assert admin.exists(lock) == 1, "killed in its pass: the lock is left"
    started = time.monotonic()
    workers.start_named("host-1", "--recover", "--queues", "critical")
    wait_until(lambda: admin.zcard(registry) == 0, 60, "the next pass over critical")
    print(f"\nthe restarted unit's pass ran {time.monotonic() - started:.1f} s after the kill")


def test_a_job_s_arguments_never_reach_the_worker_s_log(client, workers):
    """RQ's worker logs the description of each job it takes and finishes, at INFO: the kit's
    named every argument's value, so an app's (an e-mail address, a token) went to the journal,
    once per attempt. It logs the task and the job's id."""
    job_id = client.post("/jobs", json={"task": "add", "args": [13371337, 1]}).get_json()["job_id"]
    run = subprocess.run(
        [sys.executable, "-m", "fridge.worker", "--burst", "--queues", "default"],
        env=workers._env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert client.get(f"/jobs/{job_id}").get_json()["result"] == 13371338
    logged = run.stdout + run.stderr
    assert f"default: add ({job_id})" in logged, logged[-2000:]
    assert "13371337" not in logged, logged[-2000:]


def test_recover_without_a_name_of_its_own_is_refused():
    """The host name, the default, is every unit's of the host: one would retry the jobs the
    others run."""
    run = subprocess.run(
        [sys.executable, "-m", "fridge.worker", "--recover"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert run.returncode == 2, run
    assert "--recover needs --name" in run.stderr, run.stderr


@pytest.mark.acl_denials
@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("FRIDGE_SENTINEL_PASSWORD", f"Sentinel refused the login of user {SENTINEL_CLIENT_USER}"),
        ("FRIDGE_REDIS_PASSWORD", f"Redis refused the login of user {WORKER_USER}"),
    ],
)
def test_a_worker_whose_login_is_refused_says_so_in_one_line_and_exits(workers, setting, said):
    """A wrong password for the Sentinels or for Redis: the worker ends with one line that names
    the user and the settings to check (what `journalctl -u` shows), not with a traceback
    about a master no Sentinel named, after retrying as for a failover."""
    env = {**workers._env({}), setting: json.dumps("not-the-password-1")}
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "fridge.worker", "--name", "refused", "--recover"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    took = time.monotonic() - started
    assert run.returncode == 1, run
    assert f"fridge-worker: {said}" in run.stderr, run.stderr
    assert setting.removeprefix("FRIDGE_") in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert "not-the-password-1" not in run.stderr
    assert took < 10, f"{took:.1f}s"


def test_a_running_worker_rides_out_sentinels_refusing_it_then_goes_on(client, workers, cluster, admin):
    """The Sentinels' password is changed on them and not yet in the workers' settings, and the
    worker's connections drop meanwhile (a failover, a restart): its reconnection is refused. A
    worker that had started keeps running, retrying as for a failover, and takes jobs again once
    the Sentinels take its login (before, the refusal escaped RQ's loop and the worker exited)."""
    (worker,) = workers.start(1)
    wait_for_status(client, client.get("/comer/uva").get_json()["job_id"], {"finished"})
    refused_before = refusals(cluster)
    with cluster.sentinel_client_password(cluster.sentinel_ports, "another-password-1"):
        admin.client_kill_filter(user=WORKER_USER)
        wait_until(lambda: refusals(cluster) > refused_before, 10, "the worker's reconnection to be refused")
        time.sleep(2)  # a few more of its retries
        assert worker.poll() is None, "the worker exited on the refusal"
    wait_for_status(client, client.get("/comer/kiwi").get_json()["job_id"], {"finished"}, timeout=30)
    assert worker.poll() is None


def refusals(cluster) -> int:
    """The Sentinels' refusals of the app's Sentinel user so far (their ACL LOG)."""
    return sum(
        int(entry["count"])
        for port in cluster.sentinel_ports
        for entry in cluster.sentinel(port).acl_log()
        if entry["username"] == SENTINEL_CLIENT_USER and entry["reason"] == "auth"
    )


def test_the_process_title_says_what_the_worker_does(client, workers):
    (worker,) = workers.start(1)
    deadline = time.monotonic() + 15
    while "Listening on" not in proc_title(worker.pid):
        assert time.monotonic() < deadline, proc_title(worker.pid)
        time.sleep(0.05)
    assert proc_title(worker.pid).startswith(
        f"rq:worker:test-worker-0.{worker.pid}: Listening on critical,default,low"
    )
    job_id = client.post("/jobs", json={"task": "sleep", "args": [2]}).get_json()["job_id"]
    wait_started(client, job_id)
    titles = [proc_title(pid) for pid in children(worker.pid)]
    assert any("Processing fridge.tasks.sleep from low" in title for title in titles), titles


def test_an_idle_worker_stops_cleanly_on_sigterm(workers):
    (worker,) = workers.start(1)
    deadline = time.monotonic() + 15
    while "Listening on" not in proc_title(worker.pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(3):  # whatever it is doing between polls
        time.sleep(0.37)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0


def test_the_worker_imports_neither_flask_nor_the_web_tier():
    """fridge-worker builds its connection from the configuration alone (issue: workers built
    the whole Flask app, API and dashboard to read their settings)."""
    code = (
        "import sys, fridge.worker, kitqueue.registry; kitqueue.registry.tasks(); "
        "loaded = [m for m in ('flask', 'fridge.web', 'fridge.api', 'fridge.dashboard')"
        " if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_worker_s_settings_stay_in_its_own_queue_class():
    from kitqueue.fetch import GracefulIntermediateQueue, ReliableQueue

    configured = ReliableQueue.configured("app:wake", 7.5, "app:fetch:w1")
    assert (configured.wake_key, configured.intermediate_class.grace_seconds) == ("app:wake", 7.5)
    assert configured.fetch_key == "app:fetch:w1"
    assert issubclass(configured, ReliableQueue)
    assert (ReliableQueue.wake_key, GracefulIntermediateQueue.grace_seconds) == ("kitqueue:wake", 30.0)
    assert ReliableQueue.fetch_key is None


def test_the_eat_pause_comes_from_the_worker_s_settings(client, workers):
    """EAT_SECONDS, a setting of fridge's own, reaches the eat task from the worker's settings
    (kitqueue.registry.settings(), set for the job it runs; no module global is written): a
    worker configured with 0.8 s takes at least that long to eat."""
    from datetime import datetime

    from kitqueue import registry

    workers.start(1, EAT_SECONDS=0.8)
    job_id = client.get("/comer/pan").get_json()["job_id"]
    done = wait_for_status(client, job_id, {"finished"})
    took = datetime.fromisoformat(done["ended_at"]) - datetime.fromisoformat(done["started_at"])
    assert took.total_seconds() >= 0.8, done
    assert registry.settings() == {}  # outside a job of a worker: nothing set


def test_a_job_fetched_again_is_not_taken_for_stuck_by_the_mark_of_its_earlier_fetch(app, client, admin):
    """RQ's cleanup of the intermediate list marks a job it finds there (between a worker's
    fetch and the registration of its run) and never removed the mark: a job fetched again
    later (a retry, a requeue) was "stuck" from the old mark, and another worker's pass that
    met it in the list while the fetching worker registered its run retried it: both ran it
    (seen once in about 17 runs of test_pool's slot killed mid-job). The two real code paths
    are run here in the order that race takes: the fetch, a maintenance pass, the job back in
    its queue past the grace, fetched again, and another pass before the run registers."""
    settings = for_worker(
        {
            **app.config,
            "WORKER_INTERMEDIATE_GRACE": 0.5,
            "WORKER_REDIS_USERNAME": WORKER_USER,
            "WORKER_REDIS_PASSWORD": PASSWORDS["worker"],
        }
    )
    store = Store(settings, connection_retries=5)
    fetcher, other = (build_worker(store, ["default"], f"test-{n}", notify=lambda _: None) for n in "ab")
    queue = fetcher.queues[0]
    job_id = client.post("/jobs", json={"task": "add", "args": [1, 2]}).get_json()["job_id"]

    def fetch() -> RegisteredJob:
        job, _ = fetcher.queue_class.dequeue_any(
            [queue], None, connection=store.redis, job_class=RegisteredJob, serializer=JSONSerializer
        )
        assert job.id == job_id
        return job

    job = fetch()
    other.clean_registries()  # a pass meets it in the list: the first-seen mark
    assert admin.exists(queue.intermediate_queue.get_first_seen_key(job_id))
    queue.intermediate_queue.remove(job_id)  # its run registered (RQ's prepare_execution)
    queue.enqueue_job(job)  # and the job back in its queue, as a retry or a requeue puts it
    time.sleep(0.6)  # past the grace
    fetch()
    other.clean_registries()  # a pass while the fetcher registers this run
    assert queue.intermediate_queue.get_job_ids() == [job_id], "taken back from the fetching worker"
    assert admin.lrange(queue.key, 0, -1) == []
    assert int(admin.hget(f"rq:job:{job_id}", "retries_left")) == app.config["JOB_RETRIES"]


def test_a_fetch_sent_again_answers_its_job_only_while_no_maintenance_pass_has_met_it(app, client, admin):
    """The fetch script runs once per fetch (its token): sent again, it answers the job the
    first sending took (test_failover stalls a real master between the two). Once a maintenance
    pass has met that job in the intermediate list (it marks it, and retries it on a later
    pass), it is no longer the fetch's: a resend that comes that late takes the next job rather
    than run one that is retried elsewhere."""
    settings = for_worker(
        {**app.config, "WORKER_REDIS_USERNAME": WORKER_USER, "WORKER_REDIS_PASSWORD": PASSWORDS["worker"]}
    )
    store = Store(settings, connection_retries=5)
    worker = build_worker(store, ["default"], "test-resend", notify=lambda _: None)
    queue = worker.queues[0]
    first, second = (client.get(f"/comer/{food}").get_json()["job_id"] for food in ("uno", "dos"))
    keys = [queue.key, queue.intermediate_queue.key, worker.queue_class.fetch_key]

    def send(token: str) -> str | None:
        taken = FETCH_SCRIPT(keys=keys, args=[token, FETCH_MEMORY_SECONDS], client=store.redis)
        return None if taken is None else taken.decode()

    assert send("fetch-1") == first
    assert send("fetch-1") == first  # the same fetch, sent again: nothing more moved
    assert admin.lrange(queue.intermediate_queue.key, 0, -1) == [first.encode()]
    assert admin.lrange(queue.key, 0, -1) == [second.encode()]
    worker.clean_registries()  # a maintenance pass meets the first job there
    assert admin.exists(queue.intermediate_queue.get_first_seen_key(first))
    assert send("fetch-1") == second
    assert send("fetch-2") is None  # a new fetch: the queue is empty
