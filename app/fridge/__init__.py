"""fridge: HTTP requests put jobs in a Redis queue (the fridge); RQ workers take them out.

Layers, each importing only those below it:
  web.py (Flask app factory) -> api.py, dashboard.py, errors.py   the web tier
  worker.py (fridge-worker), cli.py (fridge)                      processes of their own
  queueing.py, fetch.py, monitoring.py, tasks.py                  the queueing core
  store.py (failover-aware Redis connection), config.py          the base
The worker builds its connection from the configuration alone: it never imports Flask.
"""
