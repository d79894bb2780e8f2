"""The dashboard's pages through Flask's test client against real Redis and Sentinels (the
real browser, through Apache, is molecule/web's test_dashboard_browser.py): the chart's
counters, the Redis group, a page per job, lists a page at a time over a queue of 100,000 jobs,
requeue all failed, and where an action's form may send the browser back to."""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
import uuid

import pytest
from conftest import wait_for_status
from kitqueue import stats
from kitqueue.queueing import make_queue
from rq import Queue
from rq.job import Job

SAME_SITE = {"Sec-Fetch-Site": "same-origin"}


def series(page: str, chart: str) -> dict:
    found = re.search(rf'id="{chart}" data-series="([^"]*)"', page)
    assert found, page
    return json.loads(html.unescape(found.group(1)))


COUNTED = re.compile(r"INCRBY \S+:stats:(finished|failures) 1")
RECORDED = re.compile(r"HSET rq:job:(\S+) .*\bstatus (finished|failed)\b")


@pytest.mark.parametrize(("task", "how"), [("fail", "boom"), ("crash", "exit")])  # in its horse; its parent
def test_a_job_seen_finished_or_failed_is_already_in_the_counters(client, workers, admin, task, how):
    """Whoever reads a job as finished or failed finds it counted (a CI run once read "failures:
    2" beside a job failed 3 times). On the master, in the order MONITOR lists the commands it
    ran: when a finished or failed status is written, its counter was already incremented, or
    is in the same MULTI/EXEC (which no reader sees halfway). A crashing job's failures are
    recorded by the worker, not by the horse that died."""
    counted = {"finished": 0, "failed": 0}
    outcomes: dict[str, set[str]] = {"finished": set(), "failed": set()}
    transactions: dict[tuple, list[tuple[str, str]]] = {}  # client -> its status writes until EXEC
    seen: list[str] = []

    def check(job_id: str, name: str) -> None:
        outcomes[name].add(job_id)  # RQ may write the status twice in one step
        # The failing job ran 3 times (its first run and 2 retries): all 3 counted.
        wanted = 3 if name == "failed" else len(outcomes[name])
        assert counted[name] >= wanted, f"{name}: {counted[name]} counted at {job_id}; {seen}"

    with admin.monitor() as monitor:
        workers.start(1)
        done = client.get("/comer/uva").get_json()["job_id"]
        failing = client.post("/jobs", json={"task": task, "args": [how]}).get_json()["job_id"]
        deadline = time.monotonic() + 30
        while not (outcomes["finished"] and outcomes["failed"]):
            assert time.monotonic() < deadline, seen[-40:]
            entry = monitor.next_command()
            command, sender = entry["command"], (entry["client_address"], entry["client_port"])
            if command == "MULTI":
                transactions[sender] = []
            elif command in ("EXEC", "DISCARD"):
                for job_id, name in transactions.pop(sender, []) if command == "EXEC" else []:
                    check(job_id, name)
            elif (count := COUNTED.fullmatch(command)) is not None:
                counted["failed" if count.group(1) == "failures" else "finished"] += 1
                seen.append(command)
            elif (status := RECORDED.match(command)) is not None:
                seen.append(command[:80])
                assert status.group(1) in (done, failing), command
                if sender in transactions:
                    transactions[sender].append(status.groups())
                else:
                    check(*status.groups())


def test_the_overview_charts_finished_and_failed_jobs_and_shows_the_redis_group(client, workers, cluster):
    workers.start(1)
    done = [client.get(f"/comer/{fruit}").get_json()["job_id"] for fruit in ("uva", "pera", "kiwi")]
    failing = client.post("/jobs", json={"task": "fail", "args": ["boom"]}).get_json()["job_id"]
    for job_id in done:
        wait_for_status(client, job_id, {"finished"})
    wait_for_status(client, failing, {"failed"})
    page = client.get("/dashboard/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    minutes, hours = series(text, "chart-minutes"), series(text, "chart-hours")
    assert len(minutes["t"]) == 60
    assert len(hours["t"]) == 24
    # A minute may have turned during the test: the last two buckets hold every count.
    assert sum(minutes["finished"][-2:]) == 3
    assert sum(minutes["failures"][-2:]) == 3  # the first run and its 2 retries (FAST)
    assert hours["finished"][-1] + hours["finished"][-2] == 3
    master = cluster.master_port()
    for sentinel in cluster.sentinels:
        assert re.search(rf"<td>{sentinel}</td><td>yes</td><td>127.0.0.1:{master}</td>", text), text
    replica = next(p for p in cluster.data_ports if p != master)
    assert f"<tr><td>127.0.0.1:{replica}</td><td>online</td>" in text
    assert f'href="/dashboard/job/{failing}"' in text
    assert "Requeue all failed" in text


def test_each_job_has_a_page_with_its_arguments_times_and_traceback(client, workers):
    workers.start(1)
    failing = client.post("/jobs", json={"task": "fail", "args": ["no hay fruta"]}).get_json()["job_id"]
    eaten = client.get("/comer/mango").get_json()["job_id"]
    wait_for_status(client, failing, {"failed"})
    wait_for_status(client, eaten, {"finished"})
    page = client.get(f"/dashboard/job/{failing}").get_data(as_text=True)
    for shown in (
        "<th>Task</th><td>fail</td>",
        '<code>{"message": "no hay fruta"}</code>',
        "<th>Retries left</th><td>0</td>",
        "RuntimeError: no hay fruta",
        "Traceback (most recent call last)",
        ">Requeue</button>",
    ):
        assert shown in page, (shown, page)
    page = client.get(f"/dashboard/job/{eaten}").get_data(as_text=True)
    assert '<th>Result</th><td><code>"ate mango"</code>' in page, page
    assert re.search(r"<th>Ran for</th><td>[0-9.]+ s</td>", page)
    assert ">Requeue</button>" not in page
    found = client.get(f"/dashboard/find?job_id={eaten}")
    assert (found.status_code, found.headers["Location"]) == (302, f"/dashboard/job/{eaten}")
    assert client.get("/dashboard/job/0123456789abcdef").status_code == 404


def test_lists_page_through_a_queue_of_100000_jobs(client, store):
    queue = make_queue(store, "low")
    started = time.monotonic()
    # RQ enqueues 1,000 jobs; the other 99,000 are copies of their hashes under new ids, queued
    # behind them (RQ's enqueue_many for all 100,000 costs 40 s of CPU: the fill is not what
    # is measured here, the pages are).
    jobs = queue.enqueue_many(
        [Queue.prepare_data("fridge.tasks.eat", kwargs={"comida": "pan"}) for _ in range(1000)]
    )
    fields = store.redis.hgetall(jobs[0].key)
    for _ in range(99):
        with store.redis.pipeline(transaction=False) as pipe:
            ids = [uuid.uuid4().hex for _ in range(1000)]
            for job_id in ids:
                pipe.hset(Job.key_for(job_id), mapping=fields)
            pipe.rpush(queue.key, *ids)
            pipe.execute()
    print(f"\n100,000 jobs queued in {time.monotonic() - started:.1f}s")
    assert queue.count == 100_000
    assert queue.fetch_job(queue.get_job_ids(offset=99_999, length=1)[0]).kwargs == {"comida": "pan"}
    for path, expected in (
        ("/dashboard/", '<a href="/dashboard/jobs/waiting/low">100000</a>'),
        ("/dashboard/jobs/waiting/low", "Page 1 of 4000"),
        ("/dashboard/jobs/waiting/low?page=2345", "Page 2345 of 4000"),
        ("/dashboard/jobs/waiting/low?page=4000", "Page 4000 of 4000"),
    ):
        started = time.monotonic()
        page = client.get(path)
        took = time.monotonic() - started
        print(f"{path}: {took * 1000:.0f} ms")
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert expected in text, text[:2000]
        assert took < 1.0, f"{path} took {took:.2f}s with 100,000 jobs waiting"
    last = client.get("/dashboard/jobs/waiting/low?page=4000").get_data(as_text=True)
    assert '<td class="num">100000</td>' in last
    assert 'rel="next"' not in last
    assert 'rel="prev"' in last


def test_requeue_all_failed_and_the_form_returns_only_to_the_dashboard(client, workers, store):
    no_retry = {"JOB_RETRIES": 0}
    ids = []
    for _ in range(30):
        ids.append(
            client.post("/jobs", json={"task": "fail", "args": ["x"], "queue": "low"}).get_json()["job_id"]
        )
    workers.start(1, **no_retry)
    for job_id in ids:
        wait_for_status(client, job_id, {"failed"})
    workers.stop(workers.procs[0])
    failed = client.get("/dashboard/jobs/failed/low?page=2").get_data(as_text=True)
    assert "Page 2 of 2" in failed
    assert failed.count(">Delete</button>") == 5
    answer = client.post(
        "/dashboard/failed/requeue-all",
        data={"queue": "low", "next": "/dashboard/jobs/failed/low?page=2"},
        headers=SAME_SITE,
    )
    assert (answer.status_code, answer.headers["Location"]) == (303, "/dashboard/jobs/failed/low?page=2")
    assert make_queue(store, "low").count == 30
    assert "0 failed jobs" in client.get("/dashboard/jobs/failed/low").get_data(as_text=True)
    for elsewhere in ("https://evil.example/", "//evil.example/dashboard/", "/jobs", "/dashboard/\\\\evil"):
        moved = client.post("/dashboard/failed/requeue-all", data={"next": elsewhere}, headers=SAME_SITE)
        assert moved.headers["Location"] == "/dashboard/", elsewhere


def test_requeue_all_puts_back_at_most_so_many_per_click_and_says_how_many_are_left(client, workers, store):
    """Tens of thousands of failed jobs after an outage held a web thread for minutes, and a
    second click a second one; a click now does REQUEUE_ALL_AT_ONCE of them."""
    ids = [
        client.post("/jobs", json={"task": "fail", "args": ["x"], "queue": "low"}).get_json()["job_id"]
        for _ in range(12)
    ]
    workers.start(1, JOB_RETRIES=0)
    for job_id in ids:
        wait_for_status(client, job_id, {"failed"})
    workers.stop(workers.procs[0])
    client.application.config["REQUEUE_ALL_AT_ONCE"] = 5
    answers = [
        client.post(
            "/dashboard/failed/requeue-all",
            data={"queue": "low"},
            headers={**SAME_SITE, "Accept": "application/json"},
        ).get_json()
        for _ in range(3)
    ]
    assert [(a["requeued"], a["left"]) for a in answers] == [(5, 7), (5, 2), (2, 0)], answers
    assert make_queue(store, "low").count == 12


def test_the_counters_fill_the_minute_and_hour_buckets_and_expire(admin):
    now = 1_800_000_000.0  # a fixed clock: the buckets are the key names
    for offset in (0, 0, 61, 3599, 3600):
        stats.count(admin, "fridge", "finished", now + offset)
    stats.count(admin, "fridge", "failures", now + 61)
    seen = stats.activity(admin, "fridge", now + 3600)
    minutes, hours = seen["minutes"], seen["hours"]
    assert minutes["t"][-1] == int((now + 3600) // 60) * 60
    assert minutes["finished"][-1] == 1  # now + 3600
    assert sum(minutes["finished"]) == 3  # 61, 3599, 3600 are within the last hour; 0 is not
    assert minutes["failures"].count(1) == 1
    assert hours["finished"][-1] + hours["finished"][-2] == 5
    assert int(admin.get("fridge:stats:finished")) == 5
    for key in admin.scan_iter("fridge:stats:*:m:*"):
        assert 0 < admin.ttl(key) <= stats.KEEP["m"]
    for key in admin.scan_iter("fridge:stats:*:h:*"):
        assert 0 < admin.ttl(key) <= stats.KEEP["h"]


def test_the_dashboard_follows_a_failover(client, cluster):
    assert client.get("/dashboard/").status_code == 200
    _old, new = cluster.failover()
    page = client.get("/dashboard/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    for sentinel in cluster.sentinels:
        assert re.search(rf"<td>{sentinel}</td><td>yes</td><td>127.0.0.1:{new}</td>", text), text
    assert client.get("/dashboard/jobs/waiting/default").status_code == 200


def test_no_page_that_shows_a_job_is_kept_by_the_browser(client, workers):
    """A job's arguments, result and traceback appear on the pages and their JSON: no-store
    keeps them out of the browser's disk cache."""
    job_id = client.post("/jobs", json={"task": "fail", "args": ["kept nowhere"]}).get_json()["job_id"]
    workers.start(1)
    wait_for_status(client, job_id, {"failed"}, timeout=30)
    pages = ("/dashboard/", f"/dashboard/job/{job_id}", "/dashboard/api/overview")
    pages += ("/dashboard/jobs/failed/default",)
    for path in pages:
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert "no-store" in answer.headers.get("Cache-Control", ""), (path, answer.headers)


def test_the_pages_name_their_assets_by_content_and_the_browser_keeps_them(client):
    """Apache checks the Basic auth password (bcrypt) on every request: each asset a page uses
    is named by a hash of its content and sent to be kept a year without asking again, privately
    (the real browser's refresh is molecule/web's test_a_refresh_fetches_only_the_page)."""
    page = client.get("/dashboard/").get_data(as_text=True)
    assets = re.findall(r'(?:href|src)="(/dashboard/static/[^"]+)"', page)
    assert len(assets) == 4, page
    for url in assets:
        path, _, version = url.partition("?v=")
        assert re.fullmatch(r"[0-9a-f]{12}", version), url
        answer = client.get(url)
        body, cache = answer.get_data(), answer.headers["Cache-Control"]
        answer.close()
        assert answer.status_code == 200, url
        assert {d.strip() for d in cache.split(",")} == {"private", "max-age=31536000", "immutable"}, cache
        # The version is the content's: another content would be another name.
        assert hashlib.sha256(body).hexdigest()[:12] == version, url
        # Without a version (a hand-typed URL), or under another content's version (a page
        # from a web host that a rolling deploy already upgraded), the browser asks each time.
        for other in (path, f"{path}?v=0123456789ab"):
            answer = client.get(other)
            answer.close()
            assert "no-cache" in answer.headers["Cache-Control"], other


ACTION = {**SAME_SITE, "Accept": "application/json"}


def failed_jobs(client, workers, count: int) -> list[str]:
    """`count` jobs failed on `default` (no retry), the worker then stopped: nothing runs after."""
    ids = [
        client.post("/jobs", json={"task": "fail", "args": ["x"]}).get_json()["job_id"] for _ in range(count)
    ]
    worker = workers.start(1, JOB_RETRIES=0)[0]
    for job_id in ids:
        wait_for_status(client, job_id, {"failed"})
    workers.stop(worker)
    assert worker.wait(timeout=30) == 0
    return ids


def test_failed_job_actions_act_only_on_a_job_in_the_failed_registry(client, workers, admin):
    """A stale page, a double click, another operator first: Delete and Requeue act only on a job
    still in its queue's failed registry, and otherwise answer 409 (404: no such job) with a
    sentence, changing nothing. A queued job is never deleted from the dashboard."""
    (failing,) = failed_jobs(client, workers, 1)
    waiting = client.post("/jobs", json={"task": "eat", "args": ["uva"]}).get_json()["job_id"]
    for action in ("delete", "requeue"):
        answer = client.post(f"/dashboard/failed/{waiting}/{action}", headers=ACTION)
        assert answer.status_code == 409, (action, answer.get_json())
        assert f"job {waiting} is not failed (status: queued)" in answer.get_json()["error"]
    assert client.get(f"/jobs/{waiting}").get_json()["status"] == "queued"
    assert admin.lrange("rq:queue:default", 0, -1) == [waiting.encode()]

    missing = client.post("/dashboard/failed/0123456789abcdef/delete", headers=ACTION)
    assert missing.status_code == 404
    assert "no job 0123456789abcdef" in missing.get_json()["error"]

    # Another operator's requeue has taken it out of the failed registry, its status not yet
    # written: this page still sees it failed.
    score = admin.zscore("rq:failed:default", failing)
    admin.zrem("rq:failed:default", failing)
    for action in ("requeue", "delete"):
        answer = client.post(f"/dashboard/failed/{failing}/{action}", headers=ACTION)
        assert answer.status_code == 409, (action, answer.get_json())
        assert f"job {failing} is not failed any more" in answer.get_json()["error"]
    assert admin.exists(f"rq:job:{failing}")
    assert admin.lrange("rq:queue:default", 0, -1) == [waiting.encode()]

    admin.zadd("rq:failed:default", {failing: score})
    assert client.post(f"/dashboard/failed/{failing}/requeue", headers=ACTION).status_code == 200
    twice = client.post(f"/dashboard/failed/{failing}/requeue", headers=ACTION)  # a double click
    assert twice.status_code == 409, twice.get_json()
    assert admin.lrange("rq:queue:default", 0, -1) == [waiting.encode(), failing.encode()]


def test_a_requeued_job_loses_its_failure_ttl_and_waits_however_long(client, workers, admin):
    """RQ gives a failed job's hash FAILURE_TTL and its requeue leaves it: a job requeued late in
    that time expired while it waited, though "Requeued" was reported. Requeued one at a time or
    all at once, it waits in its queue with no expiry."""
    ids = failed_jobs(client, workers, 3)
    for job_id in ids:
        assert admin.ttl(f"rq:job:{job_id}") > 0  # FAILURE_TTL
    assert client.post(f"/dashboard/failed/{ids[0]}/requeue", headers=ACTION).status_code == 200
    answer = client.post("/dashboard/failed/requeue-all", data={"queue": "default"}, headers=ACTION)
    assert answer.get_json() == {"action": "requeue", "requeued": 2, "left": 0}
    for job_id in ids:
        assert client.get(f"/jobs/{job_id}").get_json()["status"] == "queued"
        assert admin.ttl(f"rq:job:{job_id}") == -1, job_id


def test_requeue_all_drops_the_entry_of_a_failed_job_that_expired_and_goes_on(client, workers, admin):
    """A failed job's hash expires (FAILURE_TTL) before its registry entry is cleaned: requeue all
    drops that entry and requeues the others, this time and the next."""
    (failing,) = failed_jobs(client, workers, 1)
    expired = "0badc0de" * 4
    admin.zadd("rq:failed:default", {expired: 1})  # the oldest entry: met first
    answer = client.post("/dashboard/failed/requeue-all", headers=ACTION)
    assert (answer.status_code, answer.get_json()) == (200, {"action": "requeue", "requeued": 1, "left": 0})
    assert admin.zcard("rq:failed:default") == 0
    assert admin.lrange("rq:queue:default", 0, -1) == [failing.encode()]
    again = client.post("/dashboard/failed/requeue-all", headers=ACTION)
    assert (again.status_code, again.get_json()) == (200, {"action": "requeue", "requeued": 0, "left": 0})


def test_a_requeue_cut_off_is_a_503_and_leaves_the_job_in_one_place(client, workers, admin, caplog):
    """The master stops taking writes while a requeue's transaction waits on it (CLIENT PAUSE
    WRITE, as a coordinated failover pauses them): the transaction's reply is lost, so the
    answer is 503 with Retry-After, saying the requeue may or may not be done; it is not
    retried (its retry would find the job gone from the registry and say it was not failed).
    Afterwards the job is failed or queued, never both, never neither."""
    (failing,) = failed_jobs(client, workers, 1)
    admin.execute_command("CLIENT", "PAUSE", 2500, "WRITE")
    try:
        answer = client.post(f"/dashboard/failed/{failing}/requeue", headers=ACTION)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    assert answer.status_code == 503, answer.get_json()
    assert answer.headers["Retry-After"]
    logged = [r.getMessage() for r in caplog.records if "answering 503" in r.getMessage()]
    assert any(f"requeue of job {failing}, which may or may not be done" in m for m in logged), logged
    queued = admin.lrange("rq:queue:default", 0, -1).count(failing.encode())
    listed = admin.zscore("rq:failed:default", failing) is not None
    assert queued + listed == 1, (queued, listed)
    again = client.post(f"/dashboard/failed/{failing}/requeue", headers=ACTION)
    assert again.status_code == (409 if queued else 200), again.get_json()
    assert admin.lrange("rq:queue:default", 0, -1) == [failing.encode()]
    assert admin.zscore("rq:failed:default", failing) is None
