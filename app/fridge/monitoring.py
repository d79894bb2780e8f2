"""What the API, the dashboard and Prometheus show: jobs, queues, workers, health."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from rq import Worker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from .queueing import make_queue
from .store import Store, Unavailable

log = logging.getLogger(__name__)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def describe_job(job: Job) -> dict[str, Any]:
    status = job.get_status(refresh=False)
    status = status.value if isinstance(status, JobStatus) else status
    result: dict[str, Any] = {
        "job_id": job.id,
        "task": job.meta.get("task"),
        "args": job.kwargs,
        "queue": job.origin,
        "status": status,
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "retries_left": job.retries_left,
    }
    latest = job.latest_result()
    if status == "finished" and latest is not None:
        result["result"] = latest.return_value
    if status == "failed" and latest is not None and latest.exc_string:
        lines = [line for line in latest.exc_string.strip().splitlines() if line.strip()]
        result["error"] = lines[-1] if lines else latest.exc_string
    return result


def live_workers(store: Store) -> list[Worker]:
    """Workers whose last heartbeat is recent (a killed worker's key lingers until its TTL)."""
    now = datetime.now(UTC)
    ttl = float(store.config["WORKER_TTL"])
    alive = []
    for worker in Worker.all(connection=store.redis):
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if beat is not None and (now - beat).total_seconds() <= ttl:
            alive.append(worker)
    return alive


def health(store: Store) -> tuple[bool, dict[str, Any]]:
    try:
        store.retrying(store.redis.ping, budget=2.0)
        workers = store.retrying(lambda: len(live_workers(store)), budget=2.0)
    except (Unavailable, Exception) as error:
        # Public answer: no server names or addresses (they go to the log).
        log.warning("unhealthy: the Redis master is not reachable through Sentinel: %s", error)
        return False, {"reason": "the Redis master is not reachable through Sentinel"}
    details = {"workers": workers, "versions": versions()}
    if workers == 0:
        return False, {**details, "reason": "no worker is alive"}
    return True, details


def versions() -> dict[str, str]:
    """Versions of the app and of the libraries it runs with (its own virtualenv's)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("fridge", "flask", "itsdangerous", "redis", "rq"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def overview(store: Store) -> dict[str, Any]:
    queues = []
    for name in store.config["QUEUES"]:
        queue = make_queue(store, name)
        queues.append(
            {
                "name": name,
                "depth": queue.count,
                "started": StartedJobRegistry(queue=queue).count,
                "scheduled": ScheduledJobRegistry(queue=queue).count,
                "failed": FailedJobRegistry(queue=queue).count,
            }
        )
    workers = [
        {
            "name": w.name,
            "host": w.hostname,
            "state": w.get_state(),
            "queues": w.queue_names(),
            "current_job": w.get_current_job_id(),
            "successful": w.successful_job_count,
            "failed": w.failed_job_count,
            "last_heartbeat": _iso(w.last_heartbeat),
        }
        for w in live_workers(store)
    ]
    names = ("enqueued", "finished", "failures", "unreplicated")
    counters = store.redis.mget([store.key("stats", n) for n in names])
    return {
        "queues": queues,
        "workers": workers,
        "counters": dict(zip(names, (int(c or 0) for c in counters), strict=True)),
    }


def prometheus(store: Store) -> str:
    try:
        data = store.retrying(lambda: overview(store), budget=2.0)
        up = 1
    except Unavailable:
        data, up = {"queues": [], "workers": [], "counters": {}}, 0
    lines = [
        "# HELP fridge_redis_up Whether the Redis master answered through Sentinel.",
        "# TYPE fridge_redis_up gauge",
        f"fridge_redis_up {up}",
    ]
    gauges = {
        "fridge_queue_depth": ("Jobs waiting in the queue.", "depth"),
        "fridge_jobs_started": ("Jobs being run.", "started"),
        "fridge_jobs_scheduled": ("Jobs scheduled for later.", "scheduled"),
        "fridge_jobs_failed": ("Jobs in the failed-job registry.", "failed"),
    }
    for metric, (help_text, field) in gauges.items():
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        lines += [f'{metric}{{queue="{q["name"]}"}} {q[field]}' for q in data["queues"]]
    busy = sum(1 for w in data["workers"] if w["state"] == "busy")
    lines += [
        "# HELP fridge_workers Live workers by state.",
        "# TYPE fridge_workers gauge",
        f'fridge_workers{{state="busy"}} {busy}',
        f'fridge_workers{{state="idle"}} {len(data["workers"]) - busy}',
    ]
    for name, help_text in (
        ("enqueued", "Jobs accepted (202) since the counters began."),
        ("finished", "Jobs finished successfully."),
        ("failures", "Job executions that raised (each retry counts)."),
        ("unreplicated", "Jobs acknowledged while no replica was online (ACK_POLICY=available)."),
    ):
        metric = f"fridge_jobs_{name}_total"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        lines.append(f"{metric} {data['counters'].get(name, 0)}")
    return "\n".join(lines) + "\n"
