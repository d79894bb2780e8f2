"""fridge's settings: kitqueue's (kitqueue/config.py: Sentinel, Redis, acknowledgements, jobs,
workers), read from FRIDGE_CONFIG and FRIDGE_* variables, plus the web tier's and the tasks'."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kitqueue import config as _core
from kitqueue.config import BadSetting, for_worker

__all__ = ["DEFAULTS", "NAME", "BadSetting", "for_worker", "load"]

NAME = "fridge"

DEFAULTS: dict[str, Any] = {
    # The queues a request may name ("queue" in POST /jobs, ?queue= on /comer); the others
    # only take the jobs the app itself puts there.
    "PUBLIC_QUEUES": ["default", "low"],
    # When not empty, enqueueing needs "Authorization: Bearer <one of these>" (a secret).
    "API_TOKENS": [],
    # Requests
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # How long the example task, eat, takes (seconds).
    "EAT_SECONDS": 0.2,
    # The dashboard's "Requeue all failed" puts back at most this many jobs per click (a
    # transaction of a few round trips each: about a second for 1,000); the answer says how
    # many are left. Unbounded, tens of thousands after an outage held a web thread for minutes.
    "REQUEUE_ALL_AT_ONCE": 1000,
}


def load(test_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    settings = _core.load(NAME, test_config, DEFAULTS)
    unknown = [q for q in settings["PUBLIC_QUEUES"] if q not in settings["QUEUES"]]
    if unknown:
        raise BadSetting(f"PUBLIC_QUEUES names queue(s) not in QUEUES: {', '.join(map(str, unknown))}")
    tokens = settings["API_TOKENS"]
    if not isinstance(tokens, list) or any(not isinstance(t, str) or len(t) < 16 for t in tokens):
        raise BadSetting("API_TOKENS must be a list of tokens of at least 16 characters")
    _whole_number(settings, "REQUEUE_ALL_AT_ONCE", "of jobs")
    _whole_number(settings, "MAX_CONTENT_LENGTH", "of bytes")
    return settings


def _whole_number(settings: dict[str, Any], name: str, unit: str) -> None:
    value = settings[name]
    if isinstance(value, str) and value.isdigit():  # as a template renders "{{ n }}"
        value = settings[name] = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadSetting(f"{name} must be a whole number {unit}, 1 or more (got {value!r})")
