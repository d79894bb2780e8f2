"""`fridge-worker`: kitqueue's worker (kitqueue/worker.py) with fridge's settings."""

from __future__ import annotations

import sys

from kitqueue import worker

from . import config


def main(argv: list[str] | None = None) -> int:
    return worker.main(config.load, prog="fridge-worker", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
