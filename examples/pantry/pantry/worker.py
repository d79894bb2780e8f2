"""`pantry-worker`: kitqueue's worker with pantry's settings (the rq_workers role runs it)."""

from __future__ import annotations

import sys

from kitqueue import worker

from . import config


def main(argv: list[str] | None = None) -> int:
    return worker.main(config.load, prog="pantry-worker", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
