"""The jobs workers run, and the allowlist the API and the workers enforce.

A request names a task; it never names a Python path. Workers refuse to run any function that
is not registered here, whatever a job stored in Redis says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

log = logging.getLogger(__name__)

# How long eating takes, set by the worker from its config (EAT_SECONDS).
EAT_SECONDS = 0.2


class BadArguments(ValueError):
    """The arguments do not fit the task (answered as 400, nothing enqueued)."""


def eat(comida: str) -> str:
    """The original notes' job: a worker takes food out of the fridge and eats it."""
    log.info("eating %s", comida)
    time.sleep(EAT_SECONDS)
    return f"ate {comida}"


def sleep(seconds: float) -> float:
    """Take `seconds` seconds (long-running job for shutdown and timeout checks)."""
    time.sleep(seconds)
    return seconds


def fail(message: str) -> None:
    """Always fail: exercises retries and the failed-job registry."""
    raise RuntimeError(message)


def flaky(failures: int) -> int:
    """Fail the first `failures` attempts, then succeed; returns the attempt that worked."""
    job = get_current_job()
    attempt = int(job.meta.get("attempt", 0)) + 1 if job else 1
    if job:
        job.meta["attempt"] = attempt
        job.save_meta()
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} of {failures + 1} fails on purpose")
    return attempt


def add(a: float, b: float) -> float:
    return a + b


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadArguments(f"'{name}' must be a number")
    if not low <= value <= high:
        raise BadArguments(f"'{name}' must be between {low} and {high}")
    return value


def _text(value: Any, name: str, max_length: int = 200) -> str:
    if not isinstance(value, str) or not value:
        raise BadArguments(f"'{name}' must be a non-empty string")
    if len(value) > max_length:
        raise BadArguments(f"'{name}' is longer than {max_length} characters")
    return value


def validate_comida(value: Any, max_length: int = 64) -> str:
    """1 to 64 printable characters, no control or separator characters."""
    if not isinstance(value, str) or not value.strip():
        raise BadArguments("comida must not be empty")
    if len(value) > max_length:
        raise BadArguments(f"comida is longer than {max_length} characters")
    if not value.isprintable():
        raise BadArguments("comida contains non-printable characters")
    return value


@dataclass(frozen=True)
class Task:
    name: str
    func: Callable[..., Any]
    queue: str
    params: tuple[str, ...]
    check: Callable[[dict[str, Any]], dict[str, Any]]
    description: str
    # A demonstration or test task: the API offers it only with DEMO_TASKS on.
    demo: bool = False

    @property
    def path(self) -> str:
        return f"{self.func.__module__}.{self.func.__name__}"

    def arguments(self, args: Any) -> dict[str, Any]:
        """Turn a request's args (list or object) into checked keyword arguments."""
        if args is None:
            args = {}
        if isinstance(args, list):
            if len(args) != len(self.params):
                raise BadArguments(
                    f"task '{self.name}' takes {len(self.params)} argument(s): {', '.join(self.params)}"
                )
            args = dict(zip(self.params, args, strict=True))
        if not isinstance(args, dict):
            raise BadArguments("'args' must be a list or an object")
        unknown = set(args) - set(self.params)
        missing = set(self.params) - set(args)
        if unknown:
            raise BadArguments(f"task '{self.name}' has no argument(s) {', '.join(sorted(unknown))}")
        if missing:
            raise BadArguments(f"task '{self.name}' needs argument(s) {', '.join(sorted(missing))}")
        return self.check(args)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "eat",
            eat,
            "default",
            ("comida",),
            lambda a: {"comida": validate_comida(a["comida"])},
            "Eat one food from the fridge.",
        ),
        Task(
            "sleep",
            sleep,
            "low",
            ("seconds",),
            lambda a: {"seconds": _number(a["seconds"], "seconds", 0, 3600)},
            "Sleep for a number of seconds.",
            demo=True,
        ),
        Task(
            "fail",
            fail,
            "default",
            ("message",),
            lambda a: {"message": _text(a["message"], "message")},
            "Always fail with the given message.",
            demo=True,
        ),
        Task(
            "flaky",
            flaky,
            "default",
            ("failures",),
            lambda a: {"failures": int(_number(a["failures"], "failures", 0, 10))},
            "Fail a number of times, then succeed.",
            demo=True,
        ),
        Task(
            "add",
            add,
            "default",
            ("a", "b"),
            lambda a: {"a": _number(a["a"], "a", -1e12, 1e12), "b": _number(a["b"], "b", -1e12, 1e12)},
            "Add two numbers.",
        ),
    )
}


def offered(config: Mapping[str, Any]) -> dict[str, Task]:
    """The tasks the API accepts with these settings (demo tasks only with DEMO_TASKS on)."""
    return {name: task for name, task in TASKS.items() if config["DEMO_TASKS"] or not task.demo}


ALLOWED_PATHS = frozenset(task.path for task in TASKS.values())
