"""An app's settings: kitqueue's defaults here, then the app's own defaults, then a TOML file
(<APP>_CONFIG, for instance FRIDGE_CONFIG, written by the wsgi_app role), then <APP>_*
environment variables (JSON values), then a test mapping. Keys are upper case; an app keeps
its own keys beside these (a task reads them with kitqueue.registry.settings())."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

from .registry import offered

DEFAULTS: dict[str, Any] = {
    # Redis is reached only through Sentinel.
    "SENTINELS": ["127.0.0.1:26379"],
    # The Sentinel ACL user that may only ask where the master is (not the peers' password).
    "SENTINEL_USERNAME": None,
    "SENTINEL_PASSWORD": None,
    "MASTER_NAME": "kit",
    "REDIS_USERNAME": None,
    "REDIS_PASSWORD": None,
    # The workers' own Redis user, when a host runs both tiers from one configuration file
    # (the web tier's user may not take jobs, the workers' may not enqueue from outside).
    "WORKER_REDIS_USERNAME": None,
    "WORKER_REDIS_PASSWORD": None,
    "SENTINEL_TIMEOUT": 0.5,  # seconds, per Sentinel question
    # TLS for every connection: to the Sentinels, to the master, to a replica asked directly
    # (Redis and Sentinel with `port 0` and a `tls-port`). The server's certificate is verified,
    # host name included: it must name the addresses in SENTINELS and the one the Sentinels
    # report for each Redis server (an IP address unless they announce host names).
    "REDIS_TLS": False,
    # The CA certificate(s) that sign the servers' certificates, as PEM text (not a path: Ansible
    # writes it into config.toml); None trusts the system's store. Only with REDIS_TLS. (redis-py
    # trusts the system's store too when it is set: it adds these to ssl.create_default_context.)
    "REDIS_TLS_CA": None,
    # A lost host sends no TCP reset: these bound how long one attempt waits for it. The
    # socket timeout must exceed ACK_TIMEOUT_MS (WAIT blocks that long).
    "REDIS_CONNECT_TIMEOUT": 0.5,
    "REDIS_SOCKET_TIMEOUT": 1.0,
    # A request that meets a failover retries for this long, then answers 503; no attempt
    # starts in its last REDIS_SOCKET_TIMEOUT seconds, so a request ends within about
    # RETRY_BUDGET + 1 s (see Store.retrying).
    "RETRY_BUDGET": 5.0,
    "RETRY_AFTER": 2,
    # An outage that has lasted this long (seconds) is no failover (production's take about
    # 10 s at most): from then on, in each process, one request at a time tries Redis once and
    # the others answer 503 at once, instead of each holding a web thread for RETRY_BUDGET (see
    # Store.retrying). None: 20 s, or four budgets when RETRY_BUDGET is over 5 s.
    "FAIL_FAST_AFTER": None,
    # Queues in priority order: a worker takes from the first non-empty one.
    "QUEUES": ["critical", "default", "low"],
    # The demonstration and test tasks (sleep, fail, flaky) tie up workers on request: off
    # unless turned on (development, tests).
    "DEMO_TASKS": False,
    # 202 only after the job reached this many replicas (WAIT); 0 turns the check off.
    "ACK_REPLICAS": 1,
    "ACK_TIMEOUT_MS": 500,
    # A replica whose last acknowledgement is older than this (seconds) is not waited for.
    "REPLICA_MAX_LAG": 3,
    # "available": when no replica confirms, acknowledge on the master alone only if a majority
    # of the Sentinels name it and see no replica they could promote instead (the only replica
    # is down), and count it; "strict": never, answer 503 instead.
    "ACK_POLICY": "available",
    # Enqueues are refused (503) once the master's memory, plus what its queued jobs need to
    # finish (store.DRAIN_BYTES_PER_JOB each), reaches this share of its maxmemory: the rest is
    # the workers'. At maxmemory Redis refuses their commands too, and nothing drains.
    # 1: only Redis's own limit (then a full Redis stops the workers as well).
    "ENQUEUE_MEMORY_LIMIT": 0.9,
    # Jobs
    "JOB_TIMEOUT": 180,
    "JOB_RETRIES": 3,
    "JOB_RETRY_INTERVALS": [5, 30, 120],
    "RESULT_TTL": 86400,
    "FAILURE_TTL": 7 * 86400,
    "IDEMPOTENCY_TTL": 86400,
    # The app's own keys (idempotency, counters, recurring locks, the workers' wake-up list)
    # start with this prefix; None: the app's name. The app's Redis users need access to it.
    "KEY_PREFIX": None,
    # Recurring jobs: [{"name": ..., "task": ..., "args": [...], "every": seconds, "queue": ...}]
    "RECURRING": [],
    # Workers: heartbeat every N s; a job whose worker stopped beating for N + grace seconds
    # is abandoned and retried by the next maintenance pass (every M s).
    "WORKER_JOB_MONITORING_INTERVAL": 10,
    "WORKER_HEARTBEAT_GRACE": 30,
    "WORKER_MAINTENANCE_INTERVAL": 30,
    # A job moved out of its queue by a worker that died before starting it is re-run after
    # this long (see fetch.py).
    "WORKER_INTERMEDIATE_GRACE": 30,
    "WORKER_TTL": 60,
    # How often (seconds) a worker asks the Sentinels which master they name, while idle and
    # between jobs: after a failover it leaves an old master that came back within that time
    # and puts back the jobs whose outcome stayed there (follow.py).
    "WORKER_MASTER_CHECK_SECONDS": 1.0,
    # Each worker runs its jobs in one forked work horse (prefork.py), replaced after this many
    # jobs, or when its resident memory passes this many MiB after a job (1: a fork per job).
    "WORKER_MAX_JOBS": 1000,
    "WORKER_MAX_MEMORY_MB": 512,
    # A worker's Redis commands reconnect and retry this often (backoff up to 0.5 s, plus a
    # socket timeout each) before it gives up and systemd restarts it: a failover is ridden out.
    "WORKER_CONNECTION_RETRIES": 30,
}


def load(
    app: str,
    test_config: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings of the app `app` (its name: FRIDGE_CONFIG and FRIDGE_* for "fridge")."""
    settings = {**DEFAULTS, "KEY_PREFIX": app, **(defaults or {})}
    prefix = app.upper().replace("-", "_") + "_"
    path = os.environ.get(prefix + "CONFIG")
    if path:
        with open(path, "rb") as handle:
            settings.update({k.upper(): v for k, v in tomllib.load(handle).items()})
    settings.update(_from_environment(prefix))
    if test_config:
        settings.update(test_config)
    check(settings)
    return settings


def for_worker(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a worker runs with: the workers' Redis user when one is configured."""
    worker = dict(settings)
    if settings["WORKER_REDIS_USERNAME"]:
        worker["REDIS_USERNAME"] = settings["WORKER_REDIS_USERNAME"]
        worker["REDIS_PASSWORD"] = settings["WORKER_REDIS_PASSWORD"]
    return worker


def fail_fast_after(settings: Mapping[str, Any]) -> float:
    """FAIL_FAST_AFTER in seconds, its default derived from RETRY_BUDGET."""
    if settings["FAIL_FAST_AFTER"] is not None:
        return float(settings["FAIL_FAST_AFTER"])
    return max(20.0, 4 * float(settings["RETRY_BUDGET"]))


class BadSetting(ValueError):
    """A setting the app cannot keep its promises with; the message names it."""


def check(settings: Mapping[str, Any]) -> None:
    """Refuse settings that would break an acknowledgement's guarantee, or cannot work."""
    if settings["ACK_POLICY"] not in ("available", "strict"):
        raise BadSetting(f"ACK_POLICY must be 'available' or 'strict', not {settings['ACK_POLICY']!r}")
    if float(settings["ACK_TIMEOUT_MS"]) / 1000 >= float(settings["REDIS_SOCKET_TIMEOUT"]):
        raise BadSetting(
            f"ACK_TIMEOUT_MS ({settings['ACK_TIMEOUT_MS']}) must be shorter than REDIS_SOCKET_TIMEOUT "
            f"({settings['REDIS_SOCKET_TIMEOUT']} s): WAIT blocks for that long on the socket"
        )
    fail_fast = settings["FAIL_FAST_AFTER"]
    if fail_fast is not None and (
        isinstance(fail_fast, bool)
        or not isinstance(fail_fast, int | float)
        or fail_fast < float(settings["RETRY_BUDGET"])
    ):
        raise BadSetting(
            f"FAIL_FAST_AFTER must be a number of seconds no shorter than RETRY_BUDGET "
            f"({settings['RETRY_BUDGET']}), not {fail_fast!r}: a failover must be waited for"
        )
    limit = settings["ENQUEUE_MEMORY_LIMIT"]
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 1:
        raise BadSetting(
            f"ENQUEUE_MEMORY_LIMIT must be a share of maxmemory above 0 and at most 1, not {limit!r}"
        )
    # An enqueue confirms the job by reading it back, possibly after a worker already ran it.
    if int(settings["RESULT_TTL"]) < 60:
        raise BadSetting(f"RESULT_TTL ({settings['RESULT_TTL']}) must be at least 60 seconds")
    # RQ reads a retry's wait from this list (the last one for the later retries): an empty list
    # made every failed job's retry, and every maintenance pass that met one, raise IndexError.
    # A number in a string is one (`-e kit_app_job_retries=5` renders "5"), as for the others.
    retries, intervals = settings["JOB_RETRIES"], settings["JOB_RETRY_INTERVALS"]
    if isinstance(retries, bool) or not str(retries).isdigit():
        raise BadSetting(f"JOB_RETRIES must be a whole number of retries, 0 or more, not {retries!r}")
    retries = int(retries)
    if retries and (
        not isinstance(intervals, list)
        or not intervals
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in intervals)
    ):
        raise BadSetting(
            f"JOB_RETRY_INTERVALS must list the seconds before each retry (whole numbers, 0 or more; "
            f"the last one for any later retry), not {intervals!r}"
        )
    if not isinstance(settings["REDIS_TLS"], bool):
        raise BadSetting(f"REDIS_TLS must be true or false, not {settings['REDIS_TLS']!r}")
    # A task's own queue takes every job that names none: one no worker reads would take
    # acknowledged jobs that never run. (Loads the app's tasks, by their entry points.)
    queues = list(settings["QUEUES"])
    for task in offered(settings).values():
        if task.queue not in queues:
            raise BadSetting(
                f"task {task.name!r} goes to queue {task.queue!r} by default, which is not in QUEUES "
                f"({', '.join(map(str, queues))}): add the queue to QUEUES, or no worker would run its jobs"
            )
    ca = settings["REDIS_TLS_CA"]
    if ca is not None:
        if not settings["REDIS_TLS"]:
            raise BadSetting("REDIS_TLS_CA is set but REDIS_TLS is off: no connection would use it")
        if not _pem_certificates(ca):
            raise BadSetting(
                "REDIS_TLS_CA must be the text of PEM certificate(s) (-----BEGIN CERTIFICATE-----...), "
                "not a path or a key"
            )


def _pem_certificates(text: Any) -> int:
    """How many certificates redis-py will load from `text` (its ssl_ca_data): 0 for what is not
    PEM certificates (a path, a key, a truncated or corrupted certificate)."""
    import ssl

    if not isinstance(text, str) or "-----BEGIN CERTIFICATE-----" not in text:
        return 0
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError):
        return 0
    return context.cert_store_stats()["x509"]


def _from_environment(prefix: str) -> dict[str, Any]:
    import json

    found: dict[str, Any] = {}
    for name, raw in os.environ.items():
        if not name.startswith(prefix) or name == prefix + "CONFIG":
            continue
        key = name.removeprefix(prefix)
        try:
            found[key] = json.loads(raw)
        except json.JSONDecodeError:
            found[key] = raw
    return found
