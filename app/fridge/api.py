"""The HTTP API: enqueue (202), job status, health, metrics and the OpenAPI document."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Blueprint, current_app, jsonify, request, url_for
from kitqueue.queueing import enqueue, read_job
from kitqueue.registry import Task, offered, tasks
from kitqueue.schema import BadArguments, check
from kitqueue.store import app_store
from werkzeug.exceptions import MethodNotAllowed, UnsupportedMediaType

from . import monitoring, openapi
from .tasks import validate_comida

bp = Blueprint("api", __name__)


class Unauthorized(Exception):
    """Enqueueing, and reading a job, need a bearer token (API_TOKENS) and the request has none
    that matches."""


@bp.before_app_request
def _utf8_path() -> None:
    """Werkzeug decodes a path's bytes with replacement characters; refuse them instead. WSGI
    hands PATH_INFO and QUERY_STRING over as bytes decoded as Latin-1; REQUEST_URI is the path
    as sent. A query's raw bytes that are not UTF-8 (Apache passes them on) once made werkzeug
    raise inside request.args: a 500."""
    environ = request.environ
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI") or ""
    try:
        environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        unquote_to_bytes(raw.partition("?")[0]).decode("utf-8")
    except UnicodeError:
        raise BadArguments("the path is not valid UTF-8") from None
    try:
        unquote_to_bytes(environ.get("QUERY_STRING", "").encode("latin-1")).decode("utf-8")
    except UnicodeError:
        raise BadArguments("the query string is not valid UTF-8") from None


def _authorize() -> None:
    tokens = current_app.config["API_TOKENS"]
    if not tokens:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Compare with every token, so the time taken does not tell which one nearly matched.
    matches = [hmac.compare_digest(given.encode(), t.encode()) for t in tokens]
    if scheme.lower() != "bearer" or not any(matches):
        raise Unauthorized


def _enqueue(task: Task, kwargs: dict[str, Any], queue: str, fingerprint: str, delay: float = 0.0):
    """Enqueue durably and answer 202 with the job's status URL."""
    result = enqueue(
        app_store(current_app),
        task,
        kwargs,
        queue,
        idempotency_key=_idempotency_key(),
        fingerprint=fingerprint,
        delay=delay,
    )
    status_url = url_for("api.job_status", job_id=result.job_id)
    response = jsonify(
        {
            "job_id": result.job_id,
            "task": task.name,
            "queue": result.queue,
            "status": "queued",
            "status_url": status_url,
            "replayed": result.replayed,
        }
    )
    response.status_code = 202
    response.headers["Location"] = status_url
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    return None if key is None else check(openapi.IDEMPOTENCY_KEY, key, "Idempotency-Key")


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _queue(name: Any, default: str) -> str:
    if name is None:
        return default
    public = current_app.config["PUBLIC_QUEUES"]
    if not isinstance(name, str) or name not in public:
        raise BadArguments(f"queue {name!r} is not open to requests (queues: {', '.join(public)})")
    return name


@bp.route("/comer/<comida>", methods=["GET", "POST"])
def comer(comida: str):
    """The original notes' example: put one food in the fridge for a worker to eat."""
    if request.method == "HEAD":  # Flask adds HEAD to every GET route; a link checker's HEAD
        raise MethodNotAllowed(["GET", "POST"])  # enqueued a job
    _authorize()
    task = tasks()["eat"]
    kwargs = {"comida": validate_comida(comida)}
    queue = _queue(request.args.get("queue"), task.queue)
    return _enqueue(task, kwargs, queue, _fingerprint("comer", comida, queue))


@bp.post("/jobs")
def create_job():
    """Enqueue a registered task: {"task": ..., "args": [...] or {...}, "queue": ..., "delay": s}."""
    _authorize()
    # A cross-site HTML form can send text/plain or form bodies, not application/json.
    if not request.is_json:
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    try:
        # NaN and Infinity are not JSON (Python's parser takes them, and NaN passes every limit).
        body = json.loads(request.get_data(), parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise BadArguments("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadArguments("the body must be a JSON object")
    schema = openapi.new_job(current_app.config)
    unknown = set(body) - set(schema["properties"])
    if unknown:
        raise BadArguments(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    name = body.get("task")
    tasks = offered(current_app.config)
    if not isinstance(name, str) or name not in tasks:
        raise BadArguments(f"unknown task {name!r} (tasks: {', '.join(tasks)})")
    task = tasks[name]
    queue = _queue(body.get("queue"), task.queue)
    check(schema, body)
    kwargs = task.arguments(body.get("args"))
    fingerprint = _fingerprint("jobs", request.get_data(as_text=True))
    return _enqueue(task, kwargs, queue, fingerprint, delay=float(body.get("delay", 0)))


def _not_json(constant: str) -> None:
    raise ValueError(constant)


@bp.get("/jobs/<job_id>")
def job_status(job_id: str):
    # A job's arguments and result are the client's data, and a recurring job's id is
    # predictable (recurring-<name>-<period>): reading one needs the token enqueueing does.
    _authorize()
    check(openapi.JOB_ID, job_id, "job_id")
    described = read_job(app_store(current_app), job_id, monitoring.describe_job)
    if described is None:
        response = jsonify({"error": f"no job {job_id}", "status": 404})
        response.status_code = 404
        return response
    return jsonify(described)


@bp.get("/healthz")
def healthz():
    healthy, details = monitoring.health(app_store(current_app))
    response = jsonify({"status": "ok" if healthy else "unavailable", **details})
    if not healthy:
        response.status_code = 503
        response.headers["Retry-After"] = str(current_app.config["RETRY_AFTER"])
    return response


@bp.get("/metrics")
def metrics():
    body = monitoring.prometheus(app_store(current_app))
    return body, 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}


@bp.get("/openapi.json", endpoint="openapi")
def openapi_document():
    return jsonify(openapi.document(current_app.config))
