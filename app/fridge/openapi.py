"""The OpenAPI 3.1 document of the HTTP API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from .tasks import offered

ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document(config: dict[str, Any]) -> dict[str, Any]:
    queues = list(config["PUBLIC_QUEUES"])
    secured = bool(config["API_TOKENS"])
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Repeating a key returns the job first enqueued with it instead of a new one.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    }
    accepted = _json({"$ref": "#/components/schemas/Accepted"}, "Enqueued (durably: reached a replica).")
    accepted["headers"] = {"Location": {"schema": {"type": "string"}, "description": "The job's status URL."}}
    unavailable = _json(ERROR, "Redis unreachable within the retry budget (failover); see Retry-After.")
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
                    {
                        "name": "comida",
                        "in": "path",
                        "required": True,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": int(config["MAX_COMIDA_LENGTH"]),
                        },
                    },
                    {
                        "name": "queue",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": queues},
                    },
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
                        "413": _json(ERROR, "Body larger than 64 KiB."),
                        "415": _json(ERROR, "The body is not sent as application/json."),
                        "422": _json(ERROR, "Idempotency-Key reused for a different request."),
                    },
                }
            },
            "/jobs/{job_id}": {
                "get": {
                    "summary": "Status, result or failure of a job",
                    "operationId": "getJob",
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        }
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Job"}, "The job."),
                        "400": bad,
                        "404": _json(ERROR, "No such job."),
                        "503": unavailable,
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
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "status"],
                    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
                },
                "NewJob": {
                    "type": "object",
                    "required": ["task"],
                    "additionalProperties": False,
                    "properties": {
                        "task": {"type": "string", "enum": list(offered(config))},
                        "args": {"oneOf": [{"type": "array"}, {"type": "object"}]},
                        "queue": {"type": "string", "enum": queues},
                        "delay": {"type": "number", "minimum": 0, "maximum": 2592000},
                    },
                },
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
                        "status": {
                            "type": "string",
                            "enum": [
                                "queued",
                                "started",
                                "deferred",
                                "finished",
                                "stopped",
                                "scheduled",
                                "canceled",
                                "failed",
                            ],
                        },
                        "result": {},
                        "error": {"type": "string"},
                        "enqueued_at": {"type": ["string", "null"]},
                        "started_at": {"type": ["string", "null"]},
                        "ended_at": {"type": ["string", "null"]},
                        "retries_left": {"type": ["integer", "null"]},
                    },
                },
            },
        },
    }
