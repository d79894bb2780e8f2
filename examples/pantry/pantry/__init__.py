"""pantry: an example app on the kit, built on kitqueue like fridge but with none of its code.

wsgi.py     the web side, a bare WSGI callable (no framework): POST /stock/<item> puts a
            job in the pantry queue and answers 202 once it is durable, 503 when it cannot
tasks.py    its task, registered through the entry point kitqueue.tasks (pyproject.toml)
worker.py   `pantry-worker`: kitqueue's worker with pantry's settings
config.py   kitqueue's settings from PANTRY_CONFIG, with pantry's queue

Its RQ keys are its own (`pantry:rq:...`, not RQ's shared `rq:...`): an app beside it on the
same Redis group cannot see its jobs, and its Redis users reach only `pantry:*`. This runs
before anything of pantry imports RQ.
"""

import kitqueue

kitqueue.use_namespace("pantry:rq")
