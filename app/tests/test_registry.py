"""kitqueue's task registry: what an app registers through its entry points is all a worker
runs (test_jobs.py: a stored job naming another function fails), and a name registered twice
is refused with both functions named."""

from __future__ import annotations

import pytest
from kitqueue.registry import ENTRY_POINT_GROUP, DuplicateTask, Task, allowed_paths, collect, tasks


def twice(x: int) -> int:
    """Double."""
    return 2 * x


def test_fridge_registers_its_tasks_through_its_entry_point():
    from importlib.metadata import entry_points

    points = {p.name: p.value for p in entry_points(group=ENTRY_POINT_GROUP)}
    assert points == {"fridge": "fridge.tasks:TASKS"}
    assert sorted(tasks()) == ["add", "crash", "eat", "fail", "flaky", "hog", "sleep", "spawn"]
    assert "fridge.tasks.eat" in allowed_paths()


def test_a_name_registered_twice_is_refused_naming_both():
    one = Task("double", twice, "default", {"x": {"type": "integer"}})
    other = Task("double", print, "default", {})
    with pytest.raises(DuplicateTask, match=r"'double' is registered twice: .*twice \(a\) and .*print \(b\)"):
        collect([("a", [one]), ("b", [other])])
    with pytest.raises(TypeError, match=r"not a kitqueue\.registry\.Task"):
        collect([("a", [twice])])
    assert collect([("a", [one])]) == {"double": one}
