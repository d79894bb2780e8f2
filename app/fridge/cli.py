"""`fridge`: the queue from the command line, through Sentinel, with the app's configuration.

    fridge status            queues (waiting, started, scheduled, failed), workers by host
    fridge status --json     the same for scripts

Exit codes: 0 done, 2 bad usage, 3 Redis unreachable through Sentinel or no configuration
(the message says which).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from redis.exceptions import NoPermissionError

from . import config as config_module
from .monitoring import overview
from .store import Store, Unavailable

UNREACHABLE = 3


def status_table(data: dict[str, Any]) -> str:
    """The overview as aligned text: one line per queue, then workers busy/idle per host."""
    lines = [f"{'queue':<12} {'waiting':>8} {'started':>8} {'scheduled':>9} {'failed':>7}"]
    lines += [
        f"{q['name']:<12} {q['depth']:>8} {q['started']:>8} {q['scheduled']:>9} {q['failed']:>7}"
        for q in data["queues"]
    ]
    busy = Counter(w["host"] for w in data["workers"] if w["state"] == "busy")
    hosts = sorted({w["host"] for w in data["workers"]})
    lines.append("")
    lines.append(f"{'workers on':<24} {'busy':>5} {'idle':>5}")
    for host in hosts:
        total = sum(1 for w in data["workers"] if w["host"] == host)
        lines.append(f"{host:<24} {busy[host]:>5} {total - busy[host]:>5}")
    if not hosts:
        lines.append("(no live worker)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fridge", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="queues, started, scheduled and failed jobs, live workers per host")
    args = parser.parse_args(argv)

    try:
        settings = config_module.load()
    except (OSError, ValueError) as error:
        print(f"fridge: cannot read the configuration: {error}", file=sys.stderr)
        return UNREACHABLE
    store = Store(settings)
    try:
        data = store.retrying(lambda: overview(store), budget=float(settings["RETRY_BUDGET"]))
    except Unavailable as error:
        print(f"fridge: Redis is unreachable through Sentinel: {error.reason}", file=sys.stderr)
        return UNREACHABLE
    except NoPermissionError as error:
        print(
            f"fridge: the Redis user {settings['REDIS_USERNAME']} may not read the queues ({error}): "
            "run this on a web host (the workers' user may only take jobs)",
            file=sys.stderr,
        )
        return UNREACHABLE
    print(json.dumps(data, indent=2) if args.json else status_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
