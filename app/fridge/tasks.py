"""fridge's tasks: the jobs its workers run. They are registered with kitqueue through the
entry point `fridge = "fridge.tasks:TASKS"` (pyproject.toml); kitqueue.registry is the
allowlist the API and the workers enforce."""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import time
from typing import Any

from kitqueue.registry import Task, settings
from kitqueue.schema import Schema, check
from rq import get_current_job

from .config import DEFAULTS

log = logging.getLogger(__name__)

__all__ = ["TASKS", "validate_comida"]


def eat(comida: str) -> str:
    """The original notes' job: a worker takes food out of the fridge and eats it."""
    log.info("eating %s", comida)
    # How long eating takes: EAT_SECONDS in the app's configuration.
    time.sleep(float(settings().get("EAT_SECONDS", DEFAULTS["EAT_SECONDS"])))
    return f"ate {comida}"


def sleep(seconds: float) -> float:
    """Take `seconds` seconds (long-running job for shutdown and timeout checks)."""
    time.sleep(seconds)
    return seconds


def spawn(seconds: float) -> float:
    """Start the `sleep` program for `seconds` seconds in the background, as a shell script's
    `&` does, then wait as long: a program a job starts must not outlive the job's process."""
    command = f"/bin/sleep {float(seconds)} &"  # a number: checked by the task's schema
    subprocess.run(["/bin/sh", "-c", command], check=True)  # noqa: S603
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


NUMBER = _between("number", -1e12, 1e12)
MESSAGE: Schema = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"}
TASKS: tuple[Task, ...] = (
    Task("eat", eat, "default", {"comida": COMIDA}),
    Task("sleep", sleep, "low", {"seconds": _between("number", 0, 3600)}, demo=True),
    Task("spawn", spawn, "low", {"seconds": _between("number", 0, 3600)}, demo=True),
    Task("fail", fail, "default", {"message": MESSAGE}, demo=True),
    Task("flaky", flaky, "default", {"failures": _between("integer", 0, 10)}, demo=True),
    Task("crash", crash, "default", {"how": {"enum": ["exit", "abort", "segfault"]}}, demo=True),
    Task("hog", hog, "default", {"mib": _between("integer", 1, 1024)}, demo=True),
    Task("add", add, "default", {"a": NUMBER, "b": NUMBER}),
)
