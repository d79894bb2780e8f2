"""Jinja filter `kit.jobqueue.listed_twice`: the items a list holds more than once, in the order
they first appear. The preflight checks name with it an address given to two hosts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable


def listed_twice(items: Iterable[Hashable]) -> list[Hashable]:
    counts = Counter(items)
    return [item for item, count in counts.items() if count > 1]


class FilterModule:
    def filters(self) -> dict:
        return {"listed_twice": listed_twice}
