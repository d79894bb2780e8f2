"""What the API, the dashboard and Prometheus show: jobs, queues, workers, health."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import redis
from kitqueue.queueing import make_queue
from kitqueue.store import LoginRefused, Store, Unavailable
from rq import Worker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.utils import as_text

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
    """Workers whose last heartbeat is recent (a killed worker's key lingers until its TTL),
    read without writing. A worker that died without deregistering stays in `rq:workers` after
    its key expired, until a worker's maintenance pass removes it; RQ's `Worker.all` removes it
    itself (SREM), a write the web tier's user may not make: /healthz answered 503 and /metrics
    said Redis was down meanwhile (from 119 s after a worker's SIGKILL on make dev)."""
    now = datetime.now(UTC)
    ttl = float(store.config["WORKER_TTL"])
    prefix = Worker.redis_worker_namespace_prefix
    alive = []
    for key in sorted(as_text(k) for k in store.redis.smembers(Worker.redis_workers_keys)):
        # What Worker.find_by_key builds, without its SREM of a key that has expired.
        worker = Worker([], key.removeprefix(prefix), connection=store.redis, prepare_for_work=False)
        worker.refresh()  # nothing to read once the key has expired: no heartbeat
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if beat is not None and (now - beat).total_seconds() <= ttl:
            alive.append(worker)
    return alive


def current_job_id(worker: Worker) -> str | None:
    """The job a worker is running, read without writing. RQ's `get_current_job_id` removes the
    index entries whose execution is gone (SREM), a write the web tier's user may not make: an
    execution that ends between its two reads made `fridge queues` fail with NOPERM (a CI run)."""
    members = sorted(as_text(m) for m in worker.connection.smembers(worker.executions_key))
    executions = [Execution.from_composite_key(member, connection=worker.connection) for member in members]
    if not executions:
        return None
    with worker.connection.pipeline(transaction=False) as pipeline:
        for execution in executions:
            pipeline.exists(execution.key)
        present = pipeline.execute()
    return next((e.job_id for e, found in zip(executions, present, strict=True) if found), None)


def health(store: Store) -> tuple[bool, dict[str, Any]]:
    try:
        store.retrying(store.redis.ping, budget=2.0)
        workers = store.retrying(lambda: len(live_workers(store)), budget=2.0)
    except LoginRefused as error:
        log.error("unhealthy: %s", error.reason)
        return False, {"reason": f"{error.server} refused the app's login"}
    except (Unavailable, Exception) as error:
        # Public answer: no server names or addresses (they go to the log).
        log.warning("unhealthy: the Redis master is not reachable through Sentinel: %s", error)
        return False, {"reason": "the Redis master is not reachable through Sentinel"}
    # No versions in this public answer: they tell an attacker which flaws to try. /metrics,
    # open to the monitoring's networks alone, has them (fridge_build_info).
    details = {"workers": workers}
    if workers == 0:
        return False, {**details, "reason": "no worker is alive"}
    return True, details


def versions() -> dict[str, str]:
    """Versions of the app and of the libraries it runs with (its own virtualenv's)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("fridge", "kitqueue", "flask", "itsdangerous", "redis", "rq"):
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
                "started": StartedJobRegistry(queue=queue).get_job_count(cleanup=False),
                "scheduled": ScheduledJobRegistry(queue=queue).get_job_count(cleanup=False),
                "failed": FailedJobRegistry(queue=queue).get_job_count(cleanup=False),
            }
        )
    workers = [
        {
            "name": w.name,
            "host": w.hostname,
            "state": w.get_state(),
            "queues": w.queue_names(),
            "current_job": current_job_id(w),
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


def sentinel_view(store: Store) -> list[dict[str, Any]]:
    """What each configured Sentinel says of the master: whether it answered, the master it
    names, whether it sees that master down, how many replicas and Sentinels it knows. One
    question per Sentinel (a lost one costs SENTINEL_TIMEOUT), in the configuration's order."""
    view = []
    for sentinel in sorted(store.sentinel.sentinels, key=_address):
        entry: dict[str, Any] = {"sentinel": _address(sentinel), "up": False}
        try:
            state = sentinel.sentinel_master(store.master_name)
        except redis.RedisError as error:
            log.info("Sentinel %s did not answer: %s", entry["sentinel"], error)
        else:
            entry.update(
                up=True,
                master=f"{state['ip']}:{state['port']}",
                master_down=bool(state["is_sdown"] or state["is_odown"]),
                replicas=int(state["num-slaves"]),
                sentinels=int(state["num-other-sentinels"]) + 1,
            )
        view.append(entry)
    return view


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def replication(store: Store) -> dict[str, Any]:
    """The master's own view of its replicas (INFO replication): each one's state, the
    seconds since its last acknowledgement and how many bytes it is behind."""
    info = store.redis.info("replication")
    offset = int(info.get("master_repl_offset", 0))
    replicas = []
    for index in range(int(info.get("connected_slaves", 0))):
        replica = info.get(f"slave{index}")
        if not isinstance(replica, dict):
            continue
        replicas.append(
            {
                "replica": f"{replica['ip']}:{replica['port']}",
                "online": replica.get("state") == "online",
                "lag_seconds": int(replica.get("lag", 0)),
                "lag_bytes": max(offset - int(replica.get("offset", 0)), 0),
            }
        )
    return {"role": info.get("role"), "replicas": replicas}


def _writes_its_disk(info: dict[str, Any]) -> bool:
    """INFO persistence: the last AOF write (when the AOF is on) and the last RDB save worked."""
    aof = info.get("aof_enabled") != 1 or info.get("aof_last_write_status") == "ok"
    return aof and info.get("rdb_last_bgsave_status") == "ok"


def disk_writes(store: Store, replicas: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """(address, role, writes its disk) of the master, of each replica it lists and of each
    one a Sentinel knows (an old master failed over for its full disk is no replica of the new
    one, but the Sentinels still list it). A node that does not answer, or that a Sentinel sees
    disconnected (its host lost), is left out: other alerts cover those."""
    info = store.redis.info("persistence")
    master = store.redis.connection_pool.master_address  # the one this INFO reached, asked no one
    nodes = [(f"{master[0]}:{master[1]}", "master", _writes_its_disk(info))] if master else []
    addresses = [replica["replica"] for replica in replicas]
    for sentinel in store.sentinel.sentinels:
        try:
            known = sentinel.sentinel_slaves(store.master_name)
        except redis.RedisError:
            continue
        addresses += [f"{r['ip']}:{r['port']}" for r in known if not r.get("is_disconnected")]
        break
    for address in dict.fromkeys(addresses):
        host, _, port = address.rpartition(":")
        if master and (host, int(port)) == tuple(master):
            continue
        client = store.node((host, int(port)))
        try:
            nodes.append((address, "replica", _writes_its_disk(client.info("persistence"))))
        except redis.RedisError:
            continue
        finally:
            client.close()
    return nodes


def _gauge(name: str, help_text: str, samples: list[tuple[str, Any]]) -> list[str]:
    """One metric in the text format: HELP, TYPE and `name{labels} value` per sample."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    return lines + [f"{name}{labels} {int(value)}" for labels, value in samples]


def prometheus(store: Store) -> str:
    try:
        data = store.retrying(lambda: overview(store), budget=2.0)
        copies = store.retrying(lambda: replication(store), budget=2.0)
        memory = store.retrying(store.memory, budget=2.0)
        up = 1
    except Unavailable:
        data, copies, memory, up = None, None, (0, 0, 0), 0
    disks = []
    if copies is not None:
        try:
            disks = store.retrying(lambda: disk_writes(store, copies["replicas"]), budget=2.0)
        except Unavailable as error:  # the other metrics stand; this one is asked again next scrape
            log.info("the data nodes' disk state is unknown: %s", error)
    lines = [
        "# HELP fridge_redis_up Whether the Redis master answered through Sentinel.",
        "# TYPE fridge_redis_up gauge",
        f"fridge_redis_up {up}",
    ]
    labels = ",".join(f'{name}="{value}"' for name, value in versions().items())
    lines += _gauge("fridge_build_info", "The app's and its libraries' versions (1).", [(f"{{{labels}}}", 1)])
    view = sentinel_view(store)
    answered = [s for s in view if s["up"]]
    lines += _gauge(
        "fridge_sentinel_up",
        "Whether this Sentinel answered the app.",
        [(f'{{sentinel="{s["sentinel"]}"}}', s["up"]) for s in view],
    )
    lines += _gauge(
        "fridge_sentinel_master_info",
        "The master each Sentinel names (1); Sentinels that name different masters disagree.",
        [(f'{{sentinel="{s["sentinel"]}",master="{s["master"]}"}}', 1) for s in answered],
    )
    for metric, field, help_text in (
        ("fridge_sentinel_master_down", "master_down", "Whether this Sentinel sees the master down."),
        ("fridge_sentinel_known_replicas", "replicas", "Replicas this Sentinel knows of the master."),
        ("fridge_sentinel_known_sentinels", "sentinels", "Sentinels this one knows, itself included."),
    ):
        lines += _gauge(metric, help_text, [(f'{{sentinel="{s["sentinel"]}"}}', s[field]) for s in answered])
    if data is None or copies is None:
        # Nothing is known of queues, workers or replicas: report nothing rather than zeros
        # (zero workers would page for the wrong fault).
        return "\n".join(lines) + "\n"
    replicas = copies["replicas"]
    for metric, value, help_text in zip(
        (
            "fridge_redis_memory_used_bytes",
            "fridge_redis_memory_max_bytes",
            "fridge_redis_memory_reserved_bytes",
        ),
        memory,
        (
            "Memory the Redis master counts against maxmemory (used_memory - mem_not_counted_for_evict).",
            "The master's maxmemory (0: no limit).",
            "Room the queued and scheduled jobs need to finish; enqueues stop when used plus this "
            "reaches ENQUEUE_MEMORY_LIMIT of maxmemory.",
        ),
        strict=True,
    ):
        lines += _gauge(metric, help_text, [("", value)])
    lines += _gauge(
        "fridge_redis_disk_writes_ok",
        "Whether the data node's last AOF write and last RDB save worked (0: a full or failing disk).",
        [(f'{{node="{node}",role="{role}"}}', ok) for node, role, ok in disks],
    )
    lines += _gauge(
        "fridge_replicas_online",
        "Replicas connected to the master and in sync (INFO replication, state=online).",
        [("", sum(1 for r in replicas if r["online"]))],
    )
    for metric, field, help_text in (
        (
            "fridge_replica_lag_seconds",
            "lag_seconds",
            "Seconds since the replica last acknowledged the master's stream.",
        ),
        (
            "fridge_replica_lag_bytes",
            "lag_bytes",
            "Bytes of the master's stream the replica has not acknowledged.",
        ),
    ):
        lines += _gauge(metric, help_text, [(f'{{replica="{r["replica"]}"}}', r[field]) for r in replicas])
    for metric, field, help_text in (
        ("fridge_queue_depth", "depth", "Jobs waiting in the queue."),
        ("fridge_jobs_started", "started", "Jobs being run."),
        ("fridge_jobs_scheduled", "scheduled", "Jobs scheduled for later."),
        ("fridge_jobs_failed", "failed", "Jobs in the failed-job registry."),
    ):
        lines += _gauge(metric, help_text, [(f'{{queue="{q["name"]}"}}', q[field]) for q in data["queues"]])
    busy = sum(1 for w in data["workers"] if w["state"] == "busy")
    lines += _gauge(
        "fridge_workers",
        "Live workers by state.",
        [('{state="busy"}', busy), ('{state="idle"}', len(data["workers"]) - busy)],
    )
    for name, help_text in (
        ("enqueued", "Jobs written to a queue (each once) since the counters began."),
        ("finished", "Jobs finished successfully."),
        ("failures", "Job executions that raised (each retry counts)."),
        ("unreplicated", "Jobs acknowledged while no replica was online (ACK_POLICY=available)."),
    ):
        metric = f"fridge_jobs_{name}_total"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        lines.append(f"{metric} {data['counters'].get(name, 0)}")
    return "\n".join(lines) + "\n"
