"""Every error is JSON that names the problem; bad input is 4xx, a failover is 503."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request, url_for
from kitqueue.queueing import IdempotencyConflict, NotDurable
from kitqueue.schema import BadArguments
from kitqueue.store import FailingFast, Full, LoginRefused, Unavailable, is_transient, login_refusal
from werkzeug.exceptions import HTTPException

from .api import Unauthorized

log = logging.getLogger(__name__)


def error(status: int, message: str, **extra):
    response = jsonify({"error": message, "status": status, **extra})
    response.status_code = status
    return response


def register(app: Flask) -> None:
    retry_after = str(app.config["RETRY_AFTER"])

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        messages = {
            413: f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes",
            404: "no such resource",
            405: "method not allowed here",
        }
        # A sentence given to abort() (e.g. "no job <id>") names the problem; werkzeug's own
        # description is replaced by a short one.
        given = exc.description if exc.description != type(exc).description else None
        message = given or messages.get(exc.code or 0) or exc.description or exc.name
        response = error(exc.code or 500, message)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(BadArguments)
    def bad_arguments(exc: BadArguments):
        return error(400, str(exc))

    @app.errorhandler(IdempotencyConflict)
    def conflict(exc: IdempotencyConflict):
        return error(422, str(exc))

    @app.errorhandler(Unauthorized)
    def unauthorized(exc: Unauthorized):
        response = error(401, "enqueueing and reading jobs need a valid token: Authorization: Bearer <token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="fridge"'
        return response

    @app.errorhandler(Unavailable)
    def unavailable(exc: Unavailable):
        # The reason names servers and addresses: it goes to the log, not to the client.
        if isinstance(exc, LoginRefused):  # a configuration error: the operator's to mend
            log.error("answering 503: %s", exc.reason)
            refused = f"{exc.server} refused the app's login"
            response = error(503, f"the queue is unavailable: {refused} (see its log)")
        elif isinstance(exc, Full):
            log.warning("answering 503: %s", exc.reason)
            response = error(503, "the queue is full (Redis is near its memory limit), retry later")
        elif isinstance(exc, FailingFast):  # the Store logs when that begins and ends
            log.debug("answering 503: %s", exc.reason)
            response = error(503, "the queue is unavailable (Redis failover or outage), retry later")
        else:
            log.warning("answering 503: %s", exc.reason)
            response = error(503, "the queue is unavailable (Redis failover or outage), retry later")
        response.headers["Retry-After"] = retry_after
        return response

    @app.errorhandler(NotDurable)
    def not_durable(exc: NotDurable):
        if request.headers.get("Idempotency-Key"):
            message = "the job was stored but not yet replicated; retry with the same Idempotency-Key"
        else:
            # A retry without a key is a new job: this one may still run.
            status_url = url_for("api.job_status", job_id=exc.job_id)
            message = (
                f"job {exc.job_id} may have been stored but is not yet replicated: it may run, or be lost "
                f"in a failover (GET {status_url} tells); a retry enqueues another job (send an "
                "Idempotency-Key to make retries safe)"
            )
        response = error(
            503,
            message,
            job_id=exc.job_id,
            replicas=exc.acked,
            wanted=exc.wanted,
        )
        response.headers["Retry-After"] = retry_after
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        refused = login_refusal(exc, app.config["REDIS_USERNAME"])
        if refused is not None:  # outside a retry (which raises it as LoginRefused)
            return unavailable(refused)
        if is_transient(exc):
            # Redis failed under a read or write that no retry covered: a failover's error,
            # which a later try may not meet. The client is told when, as for Unavailable.
            reason = f"Redis unavailable outside a retry ({type(exc).__name__}: {exc})"
            return unavailable(Unavailable(reason))
        log.exception("unexpected error")
        return error(500, "internal error")
