"""The API's contract: the request schemas and limits, and the OpenAPI 3.1 document built from them.

api.py validates requests against these very objects (schema.check) and /openapi.json shows
them, so the document cannot drift from what the API accepts; each task's arguments come from
its entry in tasks.TASKS (registered with kitqueue.registry).
"""

from __future__ import annotations

from typing import Any

from kitqueue.registry import Task, offered
from kitqueue.schema import Schema

from .tasks import COMIDA

ERROR = {"$ref": "#/components/schemas/Error"}
JOB_ID: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]{1,64}$",
    "description": "1 to 64 letters, digits, '-' or '_'",
}
IDEMPOTENCY_KEY: Schema = {"type": "string", "minLength": 1, "maxLength": 200, "format": "printable"}
DELAY: Schema = {"type": "number", "minimum": 0, "maximum": 30 * 86400, "description": "Seconds to wait."}
JOB_STATUSES = ["queued", "started", "deferred", "finished", "stopped", "scheduled", "canceled", "failed"]


def new_job(config: dict[str, Any]) -> Schema:
    """POST /jobs's body, whatever the task (its arguments are checked by the task's schema)."""
    return {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "properties": {
            "task": {"type": "string", "enum": list(offered(config))},
            "args": {"type": ["array", "object"]},
            "queue": queue(config),
            "delay": DELAY,
        },
    }


def queue(config: dict[str, Any]) -> Schema:
    return {"type": "string", "enum": list(config["PUBLIC_QUEUES"])}


def _task_variant(task: Task) -> Schema:
    """One task's body: its name and its arguments, as an object or a list in order."""
    listed = {
        "type": "array",
        "prefixItems": list(task.params.values()),
        "minItems": len(task.params),
        "maxItems": len(task.params),
    }
    return {
        "title": task.name,
        "description": task.description,
        "required": ["task", "args"] if task.params else ["task"],
        "properties": {"task": {"const": task.name}, "args": {"oneOf": [task.args_schema, listed]}},
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schemas(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["error", "status"],
            "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
        },
        "NewJob": {**new_job(config), "oneOf": [_task_variant(t) for t in offered(config).values()]},
        "Accepted": {
            "type": "object",
            "properties": {
                "job_id": {"type": "string"},
                "task": {"type": "string"},
                "queue": {"type": "string"},
                "status": {"type": "string"},
                "status_url": {"type": "string"},
                "replayed": {"type": "boolean"},
            },
        },
        "Job": {
            "type": "object",
            "properties": {
                "job_id": {"type": "string"},
                "task": {"type": ["string", "null"]},
                "args": {"type": "object"},
                "queue": {"type": "string"},
                "status": {"type": "string", "enum": JOB_STATUSES},
                "result": {},
                "error": {"type": "string"},
                "enqueued_at": {"type": ["string", "null"]},
                "started_at": {"type": ["string", "null"]},
                "ended_at": {"type": ["string", "null"]},
                "retries_left": {"type": ["integer", "null"]},
            },
        },
    }


def _param(name: str, where: str, schema: Schema, required: bool) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema}


def document(config: dict[str, Any]) -> dict[str, Any]:
    secured = bool(config["API_TOKENS"])
    idempotency = _param("Idempotency-Key", "header", IDEMPOTENCY_KEY, False)
    idempotency["description"] = (
        "Repeating a key returns the job first enqueued with it instead of a new one."
    )
    accepted = _json({"$ref": "#/components/schemas/Accepted"}, "Enqueued (durably: reached a replica).")
    accepted["headers"] = {"Location": {"schema": {"type": "string"}, "description": "The job's status URL."}}
    unavailable = _json(
        ERROR,
        "Not acknowledged: Redis unreachable within the retry budget (failover), the queue full, the job"
        " not yet on a replica, or the app's process lost before it answered. Retry after Retry-After,"
        " with the same Idempotency-Key: the job may have been written.",
    )
    unavailable["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    bad = _json(ERROR, "Bad input: the error names the problem; nothing was enqueued.")
    enqueue_errors: dict[str, Any] = {"400": bad, "503": unavailable}
    guard = {"security": [{"bearer": []}]} if secured else {}
    if secured:
        enqueue_errors["401"] = _json(ERROR, "No valid bearer token.")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fridge",
            "version": "1.0.0",
            "description": "Requests are not executed: they are queued in Redis for workers to run.",
        },
        "paths": {
            "/comer/{comida}": {
                "parameters": [
                    _param("comida", "path", COMIDA, True),
                    _param("queue", "query", queue(config), False),
                    idempotency,
                ],
                "get": {
                    "summary": "Put one food in the fridge (enqueue an eat job)",
                    "operationId": "comerGet",
                    **guard,
                    "responses": {"202": accepted, **enqueue_errors},
                },
                "post": {
                    "summary": "Put one food in the fridge (enqueue an eat job)",
                    "operationId": "comerPost",
                    **guard,
                    "responses": {"202": accepted, **enqueue_errors},
                },
            },
            "/jobs": {
                "post": {
                    "summary": "Enqueue a registered task",
                    "operationId": "createJob",
                    **guard,
                    "parameters": [idempotency],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewJob"}}},
                    },
                    "responses": {
                        "202": accepted,
                        **enqueue_errors,
                        "413": _json(ERROR, f"Body larger than {config['MAX_CONTENT_LENGTH']} bytes."),
                        "415": _json(ERROR, "The body is not sent as application/json."),
                        "422": _json(ERROR, "Idempotency-Key reused for a different request."),
                    },
                }
            },
            "/jobs/{job_id}": {
                "get": {
                    "summary": "Status, result or failure of a job",
                    "operationId": "getJob",
                    **guard,
                    "parameters": [_param("job_id", "path", JOB_ID, True)],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Job"}, "The job."),
                        "400": bad,
                        "404": _json(ERROR, "No such job."),
                        "503": unavailable,
                        **({"401": enqueue_errors["401"]} if secured else {}),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "200 when the master answers through Sentinel and a worker is alive",
                    "operationId": "health",
                    "responses": {
                        "200": _json({"type": "object"}, "Healthy."),
                        "503": _json({"type": "object"}, "Unhealthy; `reason` says why."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {"200": {"description": "Text format 0.0.4", "content": {"text/plain": {}}}},
                }
            },
        },
        "components": {
            **({"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}} if secured else {}),
            "schemas": _schemas(config),
        },
    }
