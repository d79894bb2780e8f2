"""kitqueue: the kit's queueing core, for any app deployed with it (fridge is one).

  registry.py   the tasks an app registers (entry points "kitqueue.tasks"): the only functions
                workers run
  queueing.py   durable enqueue (WAIT on a replica, idempotency keys), retried through a failover
  fetch.py      reliable fetch: a job taken from its queue is never lost with its worker
  worker.py     the worker (`<app>-worker`): preforked horses (prefork.py), recurring jobs,
                sd_notify, warm shutdown
  store.py      the failover-aware Redis connection through Sentinel (TLS, ACL users)
  config.py     settings from <APP>_CONFIG (TOML) and <APP>_* variables
  schema.py     task arguments checked against JSON Schemas
  stats.py      per-minute and per-hour counters of finished and failed jobs
It never imports a web framework.

use_namespace (below) gives an app's RQ keys a prefix of their own; it is here, where nothing
imports RQ, because RQ reads its prefix once, when it is first imported.
"""

from __future__ import annotations

import os
import re
import sys


def use_namespace(prefix: str) -> None:
    """Put this process's RQ keys under `prefix`: with "pantry:rq", pantry's jobs, queues,
    registries and workers are `pantry:rq:job:<id>`, `pantry:rq:queues`, ... instead of RQ's
    `rq:...`. Apps that share a Redis group then keep their jobs apart, and each app's Redis
    users need no key outside its own prefix (`~pantry:*`).

    Call it first thing in the app's package (its `__init__.py`), before anything imports RQ:
    RQ reads RQ_KEY_PREFIX once, at its import. Processes the app starts inherit it."""
    if not re.fullmatch(r"[A-Za-z0-9_.:{}-]+", prefix):  # RQ's own rule (rq/defaults.py)
        raise ValueError(f"RQ key prefix {prefix!r}: use only letters, digits and _ . : - {{ }}")
    loaded = sys.modules.get("rq.defaults")
    if loaded is not None and prefix != loaded.RQ_KEY_PREFIX:
        raise RuntimeError(
            f"RQ was imported before use_namespace({prefix!r}) and keeps its keys under "
            f"{loaded.RQ_KEY_PREFIX!r}: call it in the app's package before anything imports RQ"
        )
    os.environ["RQ_KEY_PREFIX"] = prefix
