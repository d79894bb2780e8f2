"""kitqueue.use_namespace: an app's RQ keys under a prefix of its own (examples/pantry uses it;
molecule/web shows its jobs run with Redis users that reach only `pantry:*`). RQ reads the
prefix when it is first imported, so each case runs in a Python of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

KEYS = """
import json
from rq import Queue, Worker
from rq.command import PUBSUB_CHANNEL_TEMPLATE
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, ExecutionRegistry
from rq.group import Group
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.rate_limit import RateLimitRegistry
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.scheduler import SCHEDULER_LOCKING_KEY_TEMPLATE
from rq.suspension import WORKERS_SUSPENDED
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY
queue = Queue.redis_queue_namespace_prefix + "default"
print(json.dumps([
    Job.key_for("j1"), queue, Queue.redis_queues_keys, IntermediateQueue.get_intermediate_queue_key(queue),
    StartedJobRegistry.key_template.format("default"), FailedJobRegistry.key_template.format("default"),
    ScheduledJobRegistry.key_template.format("default"), ExecutionRegistry.key_template.format("j1"),
    WORKER_EXECUTIONS_KEY_TEMPLATE.format("w1"), Result.get_key("j1"),
    Worker.redis_worker_namespace_prefix + "w1", REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY % "default",
    PUBSUB_CHANNEL_TEMPLATE % "w1", SCHEDULER_LOCKING_KEY_TEMPLATE % "default", WORKERS_SUSPENDED,
    Group.REDIS_GROUP_KEY, RateLimitRegistry.rl_keys_key,
]))
"""


def python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RQ_KEY_PREFIX"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)


def test_every_rq_key_and_channel_of_the_app_is_under_its_prefix():
    run = python(f"import kitqueue; kitqueue.use_namespace('pantry:rq')\n{KEYS}")
    assert run.returncode == 0, run.stderr
    keys = json.loads(run.stdout)
    assert all(key.startswith("pantry:rq:") for key in keys), keys
    assert keys[0] == "pantry:rq:job:j1"
    plain = python(KEYS)  # without it: RQ's own keys, as fridge keeps them
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout) == [key.replace("pantry:rq:", "rq:") for key in keys]


def test_a_namespace_set_after_rq_was_imported_is_refused_by_name():
    run = python("import rq, kitqueue; kitqueue.use_namespace('pantry:rq')")
    assert run.returncode != 0
    assert "RQ was imported before use_namespace('pantry:rq')" in run.stderr
    assert "keeps its keys under 'rq'" in run.stderr
    # The prefix RQ already has is no conflict.
    assert python("import rq, kitqueue; kitqueue.use_namespace('rq')").returncode == 0


@pytest.mark.parametrize("prefix", ["", "pantry *", "pantry:*", "pan[try]", "a/b"])
def test_a_prefix_rq_or_an_acl_pattern_could_not_take_is_refused_by_name(prefix):
    import kitqueue

    with pytest.raises(ValueError, match=r"use only letters, digits and _ \. : - \{ \}"):
        kitqueue.use_namespace(prefix)
    assert os.environ.get("RQ_KEY_PREFIX") != prefix


def test_kitqueue_s_registry_and_schemas_leave_rq_unimported():
    """A worker loads the apps' tasks (entry points) through kitqueue.registry: an app package
    that sets its namespace on import must still come before RQ."""
    run = python("import sys, kitqueue.registry, kitqueue.schema; print('rq' in sys.modules)")
    assert (run.returncode, run.stdout.strip()) == (0, "False"), run.stderr
