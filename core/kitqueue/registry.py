"""The task registry: the only functions workers run, and what the API may accept.

An app registers its tasks through the entry point group `kitqueue.tasks`, in its
pyproject.toml::

    [project.entry-points."kitqueue.tasks"]
    pantry = "pantry.tasks:TASKS"

Each entry point names an iterable of `Task`. Every distribution installed in the app's
virtualenv may add tasks this way (a plugin too); two tasks with one name are refused. A request
names a task, never a Python path, and workers refuse any function not registered here,
whatever a job stored in Redis says.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from .schema import BadArguments, Schema, check

ENTRY_POINT_GROUP = "kitqueue.tasks"

__all__ = ["ENTRY_POINT_GROUP", "BadArguments", "Task", "allowed_paths", "offered", "settings", "tasks"]


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


class DuplicateTask(RuntimeError):
    """Two registered tasks share a name; the message names both functions."""


def collect(groups: Iterable[tuple[str, Iterable[Task]]]) -> dict[str, Task]:
    """Tasks by name from (source, tasks) pairs; a name registered twice is refused."""
    found: dict[str, Task] = {}
    origin: dict[str, str] = {}
    for source, registered in groups:
        for task in registered:
            if not isinstance(task, Task):
                raise TypeError(f"{source} registers {task!r}, which is not a kitqueue.registry.Task")
            if task.name in found:
                raise DuplicateTask(
                    f"task {task.name!r} is registered twice: {found[task.name].path} "
                    f"({origin[task.name]}) and {task.path} ({source})"
                )
            found[task.name], origin[task.name] = task, source
    return found


@functools.cache
def tasks() -> Mapping[str, Task]:
    """Every task the installed distributions register, by name (read once per process)."""
    points = entry_points(group=ENTRY_POINT_GROUP)
    return MappingProxyType(collect((f"entry point {p.name} = {p.value}", p.load()) for p in points))


@functools.cache
def by_path() -> Mapping[str, Task]:
    """The registered tasks by their function's Python path: the only functions a worker runs."""
    return MappingProxyType({task.path: task for task in tasks().values()})


def allowed_paths() -> frozenset[str]:
    """The Python paths of the registered functions: the only ones a worker runs."""
    return frozenset(by_path())


def offered(config: Mapping[str, Any]) -> dict[str, Task]:
    """The tasks the API accepts with these settings (demo tasks only with DEMO_TASKS on)."""
    return {name: task for name, task in tasks().items() if config["DEMO_TASKS"] or not task.demo}


# The settings of the worker running the current job (empty outside one): a task reads its own
# settings from the app's configuration file through it.
_SETTINGS: ContextVar[Mapping[str, Any]] = ContextVar("kitqueue_settings", default=MappingProxyType({}))


def settings() -> Mapping[str, Any]:
    """The running worker's settings: the app's configuration, its own keys included."""
    return _SETTINGS.get()
