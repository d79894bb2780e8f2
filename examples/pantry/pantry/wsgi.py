"""pantry's web side: a bare WSGI callable, no framework, on kitqueue.

GET  /                the app's name and the version of itsdangerous it imports
POST /stock/<item>    202 {"job_id": ...} once the job is durable (on a replica); with an
                      Idempotency-Key header, a retry of the same request gets the same job.
                      503 with Retry-After when kitqueue cannot promise it (a failover that
                      outlasts the retry budget; the body names the job when it was written),
                      400 when the item is not acceptable
GET  /jobs/<id>       the job's status and result (404 when there is none)
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import itsdangerous
from kitqueue.queueing import NotDurable, RegisteredJob, enqueue
from kitqueue.registry import BadArguments, tasks
from kitqueue.store import Store, Unavailable
from rq.exceptions import NoSuchJobError
from rq.serializers import JSONSerializer

from . import config

log = logging.getLogger(__name__)
_store: Store | None = None
_lock = threading.Lock()


def store() -> Store:
    """One Store per process (each mod_wsgi daemon process builds its own, on first use)."""
    global _store
    with _lock:
        if _store is None:
            _store = Store(config.load())
        return _store


def _answer(start: Callable[..., Any], status: str, body: Any, *headers: tuple[str, str]) -> list[bytes]:
    data = json.dumps(body).encode()
    start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
    return [data]


def _job(job_id: str) -> dict[str, Any] | None:
    """The job's status and result, read in one retried unit (a failover answers 503)."""

    def read() -> dict[str, Any] | None:
        try:
            job = RegisteredJob.fetch(job_id, connection=store().redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return None
        status = job.get_status(refresh=False)
        return {"status": status, "result": job.return_value(refresh=False) if status == "finished" else None}

    return store().retrying(read)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    method = environ["REQUEST_METHOD"]
    try:  # WSGI hands the path over as latin-1 text of the request's bytes
        path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8")
    except UnicodeError:
        return _answer(start_response, "400 Bad Request", {"error": "the path is not UTF-8"})
    if path == "/" and method == "GET":
        body = {"app": "pantry", "itsdangerous": itsdangerous.__version__, "python": sys.prefix}
        return _answer(start_response, "200 OK", body)
    try:
        if path.startswith("/stock/") and method == "POST":
            task = tasks()["stock"]
            kwargs = task.arguments({"item": path.removeprefix("/stock/")})
            key = environ.get("HTTP_IDEMPOTENCY_KEY")
            fingerprint = json.dumps(kwargs)
            job = enqueue(store(), task, kwargs, task.queue, idempotency_key=key, fingerprint=fingerprint)
            return _answer(start_response, "202 Accepted", {"job_id": job.job_id, "queue": job.queue})
        if path.startswith("/jobs/") and method == "GET":
            found = _job(path.removeprefix("/jobs/"))
            if found is None:
                return _answer(start_response, "404 Not Found", {"error": "no such job"})
            return _answer(start_response, "200 OK", found)
    except BadArguments as error:
        return _answer(start_response, "400 Bad Request", {"error": str(error)})
    except Unavailable as error:
        log.warning("answering 503: %s", error.reason)
        body: dict[str, Any] = {"error": "the queue is unavailable (Redis failover or outage), retry later"}
        if isinstance(error, NotDurable):  # written, not yet on a replica: a retry with the key is safe
            body["job_id"] = error.job_id
        retry_after = str(store().config["RETRY_AFTER"])
        return _answer(start_response, "503 Service Unavailable", body, ("Retry-After", retry_after))
    return _answer(start_response, "404 Not Found", {"error": f"no route for {method} {path}"})
