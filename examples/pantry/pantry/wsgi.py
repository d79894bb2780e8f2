"""pantry's web side: a bare WSGI callable, no framework, on kitqueue.

GET  /                the app's name and the version of itsdangerous it imports
POST /stock/<item>    202 {"job_id": ...} once the job is durable (on a replica), 503 with
                      Retry-After when kitqueue cannot promise it (a failover that outlasts
                      the retry budget), 400 when the item is not acceptable
GET  /jobs/<id>       the job's status and result (404 when there is none)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

import itsdangerous
from kitqueue.queueing import enqueue, fetch_job
from kitqueue.registry import BadArguments, tasks
from kitqueue.store import Store, Unavailable

from . import config

_store: Store | None = None


def store() -> Store:
    """One Store per process (mod_wsgi's daemon processes each build theirs)."""
    global _store
    if _store is None:
        _store = Store(config.load())
    return _store


def _answer(start: Callable[..., Any], status: str, body: Any, *headers: tuple[str, str]) -> list[bytes]:
    data = json.dumps(body).encode()
    start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
    return [data]


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    if path == "/" and method == "GET":
        return _answer(
            start_response,
            "200 OK",
            {"app": "pantry", "itsdangerous": itsdangerous.__version__, "python": sys.prefix},
        )
    try:
        if path.startswith("/stock/") and method == "POST":
            task = tasks()["stock"]
            kwargs = task.arguments({"item": unquote(path.removeprefix("/stock/"))})
            job = enqueue(store(), task, kwargs, task.queue)
            return _answer(start_response, "202 Accepted", {"job_id": job.job_id, "queue": job.queue})
        if path.startswith("/jobs/") and method == "GET":
            found = fetch_job(store(), path.removeprefix("/jobs/"))
            if found is None:
                return _answer(start_response, "404 Not Found", {"error": "no such job"})
            status = found.get_status(refresh=False)
            result = found.return_value(refresh=False) if status == "finished" else None
            return _answer(start_response, "200 OK", {"status": status, "result": result})
    except BadArguments as error:
        return _answer(start_response, "400 Bad Request", {"error": str(error)})
    except Unavailable as error:
        retry_after = str(config.load().get("RETRY_AFTER", 2))
        body = {"error": f"the queue is unavailable, retry later: {error.reason}"}
        return _answer(start_response, "503 Service Unavailable", body, ("Retry-After", retry_after))
    return _answer(start_response, "404 Not Found", {"error": f"no route for {method} {path}"})
