"""The jobs workers run, and the allowlist the API and the workers enforce.

A request names a task; it never names a Python path. Workers refuse to run any function that
is not registered here, whatever a job stored in Redis says.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from .schema import BadArguments, Schema, check

log = logging.getLogger(__name__)

# How long eating takes: the worker sets it around each job from its constructor's setting.
EAT_SECONDS: ContextVar[float] = ContextVar("EAT_SECONDS", default=0.2)

__all__ = ["TASKS", "BadArguments", "Task", "offered", "validate_comida"]


def eat(comida: str) -> str:
    """The original notes' job: a worker takes food out of the fridge and eats it."""
    log.info("eating %s", comida)
    time.sleep(EAT_SECONDS.get())
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
    failures = int(failures)  # JSON may say 2.0 for the integer 2
    job = get_current_job()
    attempt = int(job.meta.get("attempt", 0)) + 1 if job else 1
    if job:
        job.meta["attempt"] = attempt
        job.save_meta()
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} of {failures + 1} fails on purpose")
    return attempt


def crash(how: str) -> None:
    """Kill the process running the job, as a broken extension or a stray exit does."""
    if how == "exit":
        os._exit(3)
    if how == "abort":
        os.abort()
    ctypes.string_at(0)  # "segfault": read address 0


# What `hog` keeps: memory a job leaves behind for the next jobs of the same process.
_HOARD: list[bytes] = []


def hog(mib: int) -> int:
    """Keep `mib` MiB allocated after the job (a leak); returns the process's total kept."""
    _HOARD.append(os.urandom(int(mib) * 2**20))
    return sum(map(len, _HOARD)) // 2**20


def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


# The arguments' JSON Schemas: the API checks requests against them and /openapi.json shows them.
COMIDA: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 64,
    "pattern": r"\S",
    "format": "printable",
    "description": "A food: 1 to 64 printable characters, not only spaces.",
}


def _between(kind: str, low: float, high: float) -> Schema:
    return {"type": kind, "minimum": low, "maximum": high}


def validate_comida(value: Any) -> str:
    return check(COMIDA, value, "comida")


@dataclass(frozen=True)
class Task:
    name: str
    func: Callable[..., Any]
    queue: str
    # Each argument's name and JSON Schema, in the order a list of arguments gives them.
    params: Mapping[str, Schema]
    # A demonstration or test task: the API offers it only with DEMO_TASKS on.
    demo: bool = False

    @property
    def path(self) -> str:
        return f"{self.func.__module__}.{self.func.__name__}"

    @property
    def description(self) -> str:
        """The first line of the function's docstring."""
        return (self.func.__doc__ or self.name).strip().splitlines()[0]

    @property
    def args_schema(self) -> Schema:
        """The arguments as a JSON object."""
        return {
            "type": "object",
            "properties": dict(self.params),
            "required": list(self.params),
            "additionalProperties": False,
        }

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
        return check(self.args_schema, args)


NUMBER = _between("number", -1e12, 1e12)
MESSAGE: Schema = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"}
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("eat", eat, "default", {"comida": COMIDA}),
        Task("sleep", sleep, "low", {"seconds": _between("number", 0, 3600)}, demo=True),
        Task("fail", fail, "default", {"message": MESSAGE}, demo=True),
        Task("flaky", flaky, "default", {"failures": _between("integer", 0, 10)}, demo=True),
        Task("crash", crash, "default", {"how": {"enum": ["exit", "abort", "segfault"]}}, demo=True),
        Task("hog", hog, "default", {"mib": _between("integer", 1, 1024)}, demo=True),
        Task("add", add, "default", {"a": NUMBER, "b": NUMBER}),
    )
}


def offered(config: Mapping[str, Any]) -> dict[str, Task]:
    """The tasks the API accepts with these settings (demo tasks only with DEMO_TASKS on)."""
    return {name: task for name, task in TASKS.items() if config["DEMO_TASKS"] or not task.demo}


ALLOWED_PATHS = frozenset(task.path for task in TASKS.values())
