"""fridge: HTTP requests put jobs in a Redis queue (the fridge); workers take them out.

Built on kitqueue (core/), the kit's queueing core: failover-aware connection, durable
enqueue, reliable fetch, the worker, the task registry. fridge adds, each importing only those
below it:
  web.py (Flask app factory) -> api.py, dashboard.py, errors.py   the web tier
  cli.py (fridge), worker.py (fridge-worker: kitqueue's worker)   commands
  browse.py, monitoring.py, openapi.py                            reading the queues
  tasks.py (registered through the entry point kitqueue.tasks)    the jobs
  config.py (kitqueue's settings plus the web tier's)             the base
The worker builds its connection from the configuration alone: it never imports Flask.
"""
