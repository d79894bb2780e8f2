"""Job counters kept in Redis: totals (since the counters began) and per-minute and per-hour
buckets, which expire on their own (the dashboard's chart: the last hour by minute, the last day
by hour). A worker counts each finished job and each failed execution in the transaction in
which RQ records it."""

from __future__ import annotations

import time
from typing import Any

import redis

NAMES = ("finished", "failures")
# Each bucket outlives the window it is drawn in by one bucket.
MINUTES, HOURS = 60, 24
KEEP = {"m": (MINUTES + 1) * 60, "h": (HOURS + 1) * 3600}


def _bucket(prefix: str, name: str, unit: str, index: int) -> str:
    return f"{prefix}:stats:{name}:{unit}:{index}"


def add(pipe: Any, prefix: str, name: str, now: float | None = None) -> None:
    """Queue on `pipe` the commands that add one to counter `name`: its total and this minute's
    and this hour's buckets. They run when the pipeline does (with what else it records)."""
    now = time.time() if now is None else now
    pipe.incr(f"{prefix}:stats:{name}")
    for unit, seconds in (("m", 60), ("h", 3600)):
        key = _bucket(prefix, name, unit, int(now // seconds))
        pipe.incr(key)
        pipe.expire(key, KEEP[unit])


def count(client: redis.Redis, prefix: str, name: str, now: float | None = None) -> None:
    """Add one to counter `name` now, in one round trip."""
    pipe = client.pipeline(transaction=False)
    add(pipe, prefix, name, now)
    pipe.execute()


def activity(client: redis.Redis, prefix: str, now: float | None = None) -> dict[str, Any]:
    """The last hour by minute and the last day by hour, oldest first, in one MGET:
    {"minutes": {"t": [unix times], "finished": [...], "failures": [...]}, "hours": {...}}."""
    now = time.time() if now is None else now
    windows = {"minutes": ("m", 60, MINUTES), "hours": ("h", 3600, HOURS)}
    keys: list[str] = []
    for unit, seconds, size in windows.values():
        last = int(now // seconds)
        keys += [_bucket(prefix, n, unit, i) for n in NAMES for i in range(last - size + 1, last + 1)]
    values = iter(int(v or 0) for v in client.mget(keys))
    found: dict[str, Any] = {}
    for window, (_unit, seconds, size) in windows.items():
        last = int(now // seconds)
        found[window] = {"t": [i * seconds for i in range(last - size + 1, last + 1)]}
        for name in NAMES:
            found[window][name] = [next(values) for _ in range(size)]
    return found
