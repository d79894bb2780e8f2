"""The HTTP API: enqueue (202), job status, health, metrics and the OpenAPI document."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Blueprint, current_app, jsonify, request, url_for
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from . import monitoring
from .openapi import document
from .queueing import enqueue, fetch_job
from .store import app_store
from .tasks import TASKS, BadArguments, offered, validate_comida

bp = Blueprint("api", __name__)

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
JOB_FIELDS = {"task", "args", "queue", "delay"}


class Unauthorized(Exception):
    """Enqueueing needs a bearer token (API_TOKENS) and the request has none that matches."""


@bp.before_app_request
def _utf8_path() -> None:
    """Werkzeug decodes a path's bytes with replacement characters; refuse them instead. WSGI
    hands PATH_INFO over as bytes decoded as Latin-1; REQUEST_URI is the path as sent."""
    raw = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI") or ""
    try:
        request.environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        unquote_to_bytes(raw.partition("?")[0]).decode("utf-8")
    except UnicodeError:
        raise BadArguments("the path is not valid UTF-8") from None


def _authorize() -> None:
    tokens = current_app.config["API_TOKENS"]
    if not tokens:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Compare with every token, so the time taken does not tell which one nearly matched.
    matches = [hmac.compare_digest(given.encode(), t.encode()) for t in tokens]
    if scheme.lower() != "bearer" or not any(matches):
        raise Unauthorized


def _accepted(result, task_name: str):
    status_url = url_for("api.job_status", job_id=result.job_id)
    response = jsonify(
        {
            "job_id": result.job_id,
            "task": task_name,
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
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not key.isprintable():
        raise BadArguments("Idempotency-Key must be 1 to 200 printable characters")
    return key


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
    _authorize()
    task = TASKS["eat"]
    kwargs = {"comida": validate_comida(comida, int(current_app.config["MAX_COMIDA_LENGTH"]))}
    queue = _queue(request.args.get("queue"), task.queue)
    result = enqueue(
        app_store(current_app),
        task,
        kwargs,
        queue,
        idempotency_key=_idempotency_key(),
        fingerprint=_fingerprint("comer", comida, queue),
    )
    return _accepted(result, task.name)


@bp.post("/jobs")
def create_job():
    """Enqueue a registered task: {"task": ..., "args": [...] or {...}, "queue": ..., "delay": s}."""
    _authorize()
    # A cross-site HTML form can send text/plain or form bodies, not application/json.
    if not request.is_json:
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    try:
        body = request.get_json(silent=False)
    except BadRequest:
        raise BadArguments("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadArguments("the body must be a JSON object")
    unknown = set(body) - JOB_FIELDS
    if unknown:
        raise BadArguments(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    name = body.get("task")
    tasks = offered(current_app.config)
    if not isinstance(name, str) or name not in tasks:
        raise BadArguments(f"unknown task {name!r} (tasks: {', '.join(tasks)})")
    task = tasks[name]
    kwargs = task.arguments(body.get("args"))
    queue = _queue(body.get("queue"), task.queue)
    delay = body.get("delay", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 30 * 86400:
        raise BadArguments("'delay' must be a number of seconds between 0 and 2592000")
    result = enqueue(
        app_store(current_app),
        task,
        kwargs,
        queue,
        idempotency_key=_idempotency_key(),
        fingerprint=_fingerprint("jobs", request.get_data(as_text=True)),
        delay=float(delay),
    )
    return _accepted(result, task.name)


@bp.get("/jobs/<job_id>")
def job_status(job_id: str):
    if not JOB_ID.match(job_id):
        raise BadArguments("a job id is 1 to 64 letters, digits, '-' or '_'")
    job = fetch_job(app_store(current_app), job_id)
    if job is None:
        response = jsonify({"error": f"no job {job_id}", "status": 404})
        response.status_code = 404
        return response
    return jsonify(monitoring.describe_job(job))


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


@bp.get("/openapi.json")
def openapi():
    return jsonify(document(current_app.config))
