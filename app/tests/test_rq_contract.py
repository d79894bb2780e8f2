"""The RQ code kitqueue builds on beyond RQ's public API, pinned to the release it was read in.

kitqueue's worker, queue and scheduler override 37 of RQ's methods and call, copy or read 14
more of its internals (prefork.py runs what RQ's horse runs, scheduler.py is RQ's pass with
one change, fetch.py takes RQ's maintenance lock). A new RQ that changes one of them would
change the workers silently: this test fails instead, naming each method whose source
changed. Read each one again, mend kitqueue's code if needed, then pin the new sources: the
failure prints their digests.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import pkgutil
import re
import textwrap
from pathlib import Path

import kitqueue
import rq

READ_IN = "3.0.0"  # the RQ release these digests were taken from (every app's lock pins it)

# What kitqueue calls, copies or reads without overriding it (its overrides are found below):
# methods, module functions, and constants (a script's text: its value is pinned).
CALLED = (
    "rq.queue.Queue._enqueue_job",  # scheduler.py
    "rq.queue.Queue._enqueue_rate_limited_job",  # scheduler.py
    "rq.queue.Queue._prepare_for_queue",  # queueing.py
    "rq.queue.Queue._fetch_dequeued_job",  # fetch.py
    "rq.queue.Queue.acquire_maintenance_lock",  # fetch.py takes the same lock
    "rq.queue.Queue.registry_cleaning_key",  # fetch.py
    "rq.scripts.UNIQUE_ENQUEUE_SCRIPT",  # queueing.py runs it with its own arguments
    "rq.scripts.save_unique_job",  # queueing.py builds the same KEYS and ARGV
    "rq.scripts.UNIQUE_SCHEDULE_SCRIPT",  # queueing.py runs it with its own arguments
    "rq.scripts.schedule_unique_job",  # queueing.py builds the same KEYS and ARGV
    "rq.queue.Queue._check_rate_limit_namespace",  # queueing.py's schedule_job
    "rq.scripts._build_hset_args",  # queueing.py
    "rq.scripts.release_lock",  # fetch.py
    "rq.intermediate_queue.IntermediateQueue.get_first_seen_key",  # fetch.py's script writes it
    "rq.intermediate_queue.IntermediateQueue.cleanup",  # calls the pinned should_be_cleaned_up
    "rq.registry.StartedJobRegistry.cleanup",  # fetch.py
    "rq.scheduler.RQScheduler.get_locking_key",  # fetch.py
    "rq.executions.Execution.__init__",  # follow.py builds its key
    "rq.executions.Execution.job",  # prefork.py sets the job it reads
    "rq.worker.worker_classes.Worker.main_work_horse",  # prefork.py runs its steps in the horse
    "rq.worker.base.BaseWorker.perform_job",  # prefork.py's horse
    "rq.worker.base.BaseWorker.setup_work_horse_signals",  # prefork.py's horse
    "rq.worker.worker_classes.Worker.monitor_work_horse",  # calls prefork.py's wait_for_horse
    "rq.worker.base.BaseWorker.work",  # the loop every override runs in
    "rq.registry.BaseRegistry.requeue",  # fridge/browse.py does its steps in one transaction
)

# "module.Class.method": the first 16 hex digits of the SHA-256 of its source, in READ_IN.
PINNED = {
    "rq.executions.Execution.__init__": "5e899bdc6c1560ea",
    "rq.executions.Execution.job": "64bbbd823e887450",
    "rq.intermediate_queue.IntermediateQueue.cleanup": "784ecc7619d6e469",
    "rq.intermediate_queue.IntermediateQueue.get_first_seen_key": "a72ad208e6527f30",
    "rq.intermediate_queue.IntermediateQueue.should_be_cleaned_up": "75e279c10a2e870c",
    "rq.job.Job.func": "2f3d3ddb8a848c2c",
    "rq.queue.Queue._enqueue_async_job": "858694a266bc6bc6",
    "rq.queue.Queue._enqueue_job": "bcf605531f723a88",
    "rq.queue.Queue._enqueue_rate_limited_job": "7d8ddc00a41551a7",
    "rq.queue.Queue._fetch_dequeued_job": "0b0ac4463926ddb1",
    "rq.queue.Queue._check_rate_limit_namespace": "6f569f8b87103d08",
    "rq.queue.Queue._prepare_for_queue": "bf3032418884dcdc",
    "rq.queue.Queue.schedule_job": "caab96e840d80048",
    "rq.queue.Queue.acquire_maintenance_lock": "bb9518bac3f24a4e",
    "rq.queue.Queue.dequeue_any": "91d540fe86a73a3e",
    "rq.queue.Queue.intermediate_queue": "6b87b62f71481ddf",
    "rq.queue.Queue.lmove": "bb27444d88be391b",
    "rq.queue.Queue.registry_cleaning_key": "ec0dd450af39e24b",
    "rq.registry.BaseRegistry.requeue": "028cc60b63c35351",
    "rq.registry.StartedJobRegistry.cleanup": "3f15393e8e288175",
    "rq.scheduler.RQScheduler.enqueue_scheduled_jobs": "a8064476f220b4b4",
    "rq.scheduler.RQScheduler.get_locking_key": "4c5e7f1e19477492",
    "rq.scripts.UNIQUE_ENQUEUE_SCRIPT": "29cab659d28268b2",
    "rq.scripts.UNIQUE_SCHEDULE_SCRIPT": "42202a3a45f202ed",
    "rq.scripts._build_hset_args": "1d0e70e455414bf5",
    "rq.scripts.release_lock": "123c77fa8917d08b",
    "rq.scripts.save_unique_job": "af0753230560a727",
    "rq.scripts.schedule_unique_job": "2c79a63a1d82dab5",
    "rq.timeouts.UnixSignalDeathPenalty.handle_death_penalty": "be9705f5f529a7c6",
    "rq.worker.base.BaseWorker.__init__": "7a655455b399708a",
    "rq.worker.base.BaseWorker.clean_registries": "3b6158366e582b3c",
    "rq.worker.base.BaseWorker._start_scheduler": "a13b7b6ec099d91d",
    "rq.worker.base.BaseWorker.bootstrap": "b4043282188b9188",
    "rq.worker.base.BaseWorker.cleanup_execution": "75e78ab672bbb9f5",
    "rq.worker.base.BaseWorker.dequeue_job_and_maintain_ttl": "c9303b96de2519cf",
    "rq.worker.base.BaseWorker.get_heartbeat_ttl": "9db9b1b021ae80e5",
    "rq.worker.base.BaseWorker.increment_failed_job_count": "cd6db67662a75114",
    "rq.worker.base.BaseWorker.increment_successful_job_count": "c80a382264005cc2",
    "rq.worker.base.BaseWorker.perform_job": "38fcb4d8c0f8f1f8",
    "rq.worker.base.BaseWorker.prepare_execution": "7a4f367e58bfe13a",
    "rq.worker.base.BaseWorker.prepare_job_execution": "d2c62836d49c959c",
    "rq.worker.base.BaseWorker.procline": "5c56b0141873be2b",
    "rq.worker.base.BaseWorker.register_birth": "350d9703c3b679ad",
    "rq.worker.base.BaseWorker.request_stop": "d06386e1ca6caca3",
    "rq.worker.base.BaseWorker.run_maintenance_tasks": "284cd29591c4499e",
    "rq.worker.base.BaseWorker.setup_work_horse_signals": "01167890bb8c5931",
    "rq.worker.base.BaseWorker.stop_scheduler": "557bd44d53249107",
    "rq.worker.base.BaseWorker.teardown": "18d615a5d8c7b6e4",
    "rq.worker.base.BaseWorker.work": "7c1d51ba20fed3d7",
    "rq.worker.worker_classes.Worker.execute_job": "c5dc421e557a2426",
    "rq.worker.worker_classes.Worker.fork_work_horse": "b4dbc1994ee67469",
    "rq.worker.worker_classes.Worker.kill_horse": "6495108ab35dda3d",
    "rq.worker.worker_classes.Worker.main_work_horse": "71fc19b188b7c858",
    "rq.worker.worker_classes.Worker.monitor_work_horse": "b5edd5cbae2edc3b",
    "rq.worker.worker_classes.Worker.wait_for_horse": "bc07201c8feefa6e",
}


METHODS = (staticmethod, classmethod, property)


def overridden() -> set[str]:
    """Each RQ method (or class attribute that is a function) one of kitqueue's classes
    redefines, named where RQ defines it."""
    found = set()
    for info in pkgutil.iter_modules(kitqueue.__path__):
        module = importlib.import_module(f"kitqueue.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            rq_bases = [base for base in cls.__mro__[1:] if base.__module__.startswith("rq")]
            for name, value in vars(cls).items():
                if not inspect.isfunction(value) and not isinstance(value, METHODS):
                    continue
                owner = next((base for base in rq_bases if name in vars(base)), None)
                if owner is not None:
                    found.add(f"{owner.__module__}.{owner.__qualname__}.{name}")
    return found


def resolve(path: str):
    """The function, property getter or constant a dotted path names (module.Class.attr, or
    module.name)."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:-1]:
            owner = getattr(owner, name)
        value = inspect.getattr_static(owner, parts[-1])
        return value.fget if isinstance(value, property) else getattr(value, "__func__", value)
    raise LookupError(path)


def digest(path: str) -> str:
    value = resolve(path)
    source = value if isinstance(value, str) else textwrap.dedent(inspect.getsource(value))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def test_every_lock_file_holds_the_release_the_digests_were_taken_from():
    assert rq.__version__ == READ_IN, f"RQ {rq.__version__} installed; the digests below are of {READ_IN}"
    root = Path(__file__).resolve().parents[2]
    locks = [root / "app" / "requirements.lock", *sorted((root / "examples").glob("*/requirements.lock"))]
    pinned = {
        lock.relative_to(root).as_posix(): re.findall(r"^rq==(\S+)", lock.read_text(), re.M) for lock in locks
    }
    assert len(pinned) >= 2, pinned
    assert all(found == [READ_IN] for found in pinned.values()), pinned


def test_every_rq_method_kitqueue_overrides_or_calls_is_pinned():
    wanted = overridden() | set(CALLED)
    assert "rq.worker.worker_classes.Worker.fork_work_horse" in wanted  # the walk finds overrides
    missing = {path: digest(path) for path in sorted(wanted - PINNED.keys())}
    assert not missing, f"pin these in PINNED (RQ {rq.__version__}): {missing}"
    assert not PINNED.keys() - wanted, f"no longer overridden or called: {sorted(PINNED.keys() - wanted)}"


def test_the_pinned_rq_methods_are_those_kitqueue_was_written_against():
    changed = {path: digest(path) for path, pinned in PINNED.items() if digest(path) != pinned}
    assert not changed, f"RQ {rq.__version__} changed these since {READ_IN}; read them again: {changed}"
