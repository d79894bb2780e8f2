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
"""
