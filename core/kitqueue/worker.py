"""The worker systemd runs (each app's `<app>-worker` command calls main() with the app's
settings): an RQ worker that follows Sentinel through a failover, runs only registered tasks
in a preforked work horse (prefork.py), schedules delayed and recurring jobs, and stops warm.

Signals (RQ's contract): SIGTERM or SIGINT finishes the running job and exits; a second one
kills the job. The process title shows what the worker does, as Resque's procline does:
`rq:worker:<name>: Listening on critical,default,low` (the worker) and `... Processing <task>
from <queue>` (its horse, while it runs a job).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq import worker_registration
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.intermediate_queue import IntermediateQueue
from rq.registry import clean_registries
from rq.serializers import JSONSerializer
from rq.utils import now as utcnow

from . import pool, registry, stats
from .config import BadSetting, for_worker
from .fetch import ReliableQueue, maintenance_lock, recover_predecessors
from .follow import MasterWatch
from .prefork import PreforkWorker
from .queueing import NotDurable, RegisteredJob, enqueue, make_queue
from .scheduler import KitScheduler
from .schema import BadArguments
from .store import LoginRefused, Store, Unavailable, is_transient, login_refusal

log = logging.getLogger("kitqueue.worker")


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) the worker's state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        log.warning("could not notify systemd: %s", error)


# How long a stopping worker waits for its scheduler's process before it kills it.
SCHEDULER_STOP_SECONDS = 10.0


def _alive(process: Any) -> bool:
    """multiprocessing's is_alive, unless the process is gone: a pid reaped outside its
    bookkeeping (its waitpid then fails with ECHILD) stays "alive" there for ever. Once in CI a
    cold shutdown waited the whole SCHEDULER_STOP_SECONDS for a scheduler that had said it
    stopped."""
    if not process.is_alive():
        return False
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _process_state(pid: int) -> str:
    """A process's state and where the kernel holds it, from /proc, for a log line."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        wchan = Path(f"/proc/{pid}/wchan").read_text() or "-"
    except OSError as error:
        return f"not readable: {error.strerror}"
    return f"state {stat.rsplit(')', 1)[1].split()[0]}, in {wchan}"


class KitWorker(PreforkWorker):
    """RQ's worker with a preforked horse, failover-aware dequeueing and a shorter abandonment
    window."""

    def __init__(
        self,
        *args: Any,
        heartbeat_grace: int = 30,
        stats_prefix: str = "kitqueue",
        settings: dict[str, Any] | None = None,
        watch: MasterWatch | None = None,
        notify: Callable[[str], None] = sd_notify,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.watch = watch
        self.notify = notify  # what tells systemd (or a pool, pool.py) the worker's state
        if watch is not None and self._reliable():
            self.queue_class.between_polls = staticmethod(self.follow_master)
        self.heartbeat_grace = heartbeat_grace
        self.stats_prefix = stats_prefix
        self.settings = settings or {}
        # RQ's backoff after a connection error grows to 60 s; a failover is over in seconds.
        self.max_connection_wait_time = 1.0

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """RQ's, with a stop signal noted from the very start. RQ installs its handlers only
        once the worker is registered and its scheduler started: a SIGTERM in between (a pool
        stopped while its slots start, a unit stopped just after it started) killed the worker
        with Python's default action, its registration left in `rq:workers`. Noted here, the
        stop is taken at the work loop's first turn, which unregisters the worker."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._note_stop)
        super().bootstrap(*args, **kwargs)

    def _note_stop(self, signum: int, frame: Any) -> None:
        self._stop_requested = True
        if self._reliable():
            self.queue_class.stop_requested = True

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        """Registered in Redis: from now on it takes jobs. systemd's start (and so a rolling
        restart) waits for this moment."""
        super().register_birth(*args, **kwargs)
        self.notify(f"READY=1\nSTATUS=registered as {self.name}")

    def request_stop(self, signum: int, frame: Any) -> None:
        """A warm shutdown (SIGTERM, SIGINT). RQ stops an idle worker by raising StopRequested
        out of this handler into whatever the worker was running. When the signal lands in a
        finalizer (a connection pool's __del__, seen in a test run), Python prints that
        exception and drops it, and the worker listened on until systemd killed it. The request
        is also kept where the loops find it: RQ's (`_stop_requested`) and the fetch loop
        (`ReliableQueue.stop_requested`), which takes no other job and stops within
        POLL_SECONDS. Plain attributes: a lock taken in a signal handler could deadlock."""
        self._note_stop(signum, frame)
        if self._reliable() and self.queue_class.holding:
            # A job taken from its queue, its run not registered yet: RQ, seeing the worker
            # idle, would raise StopRequested into the fetch and leave the job in the
            # intermediate list for a maintenance pass (30 s and more, charged as a failed
            # attempt: with no retry left, failed without having run). It runs first, as a
            # running job does, and the work loop stops after it; a second signal is cold.
            self._shutdown_requested_date = utcnow()
            signal.signal(signal.SIGINT, self.request_force_stop)
            signal.signal(signal.SIGTERM, self.request_force_stop)
            self.handle_warm_shutdown_request()
            return
        super().request_stop(signum, frame)

    def prepare_execution(self, job: Any) -> Any:
        execution = super().prepare_execution(job)
        if self._reliable():
            self.queue_class.holding = False  # registered: RQ's warm stop (BUSY) takes over
        return execution

    def _reliable(self) -> bool:
        """The worker reads its queues with reliable fetch, through its own class (configured)."""
        return issubclass(self.queue_class, ReliableQueue) and self.queue_class is not ReliableQueue

    def follow_master(self) -> None:
        """Between jobs and while idle: follow a new master at once, and put back the jobs
        whose outcome stayed on the old one (follow.py)."""
        if self.watch is None:
            return
        try:
            switched = self.watch.follow(self.connection)
        except redis.RedisError as error:
            log.warning("Worker %s: a new master, not checked yet (%s); trying again", self.name, error)
            return
        finally:
            self.connection_epoch = self.watch.epoch
        if switched is None:
            return
        host, port = switched.master
        put_back = (
            f"put back in their queues {len(switched.put_back)} job(s) it had taken whose outcome "
            f"the new master does not have: {', '.join(job.job_id for job in switched.put_back)}"
            if switched.put_back
            else ""
        )
        if switched.switched:
            log.warning(
                "Worker %s: the Sentinels name a new master, %s:%s; reconnected%s",
                self.name,
                host,
                port,
                f"; {put_back}" if put_back else "",
            )
        else:
            log.warning("Worker %s: after the failover to %s:%s, %s", self.name, host, port, put_back)

    def fork_work_horse(self, job, queue) -> None:
        if self.watch is not None:
            self.watch.took(job.id, self.execution, queue)
        super().fork_work_horse(job, queue)

    def run_maintenance_tasks(self) -> None:
        """RQ's, but not once a stop was asked. RQ starts the scheduler again here when its
        process is not alive, which the warm shutdown just made so: the new one was forked
        while this process's SIGTERM handler was the cold shutdown's, teardown's SIGTERM could
        reach it before it set its own, and teardown's join then waited for it for good (a test
        run: the worker never exited). Registries are cleaned by the next worker's pass."""
        if self._stop_requested:
            return
        super().run_maintenance_tasks()

    def clean_registries(self) -> None:
        """RQ's maintenance pass over each queue, its steps in its order, under the queue's lock
        taken as fetch.maintenance_lock takes it. RQ's lock lasts 15 minutes and is given back
        only when the pass ends well: a pass a stop signal (a rolling restart), a kill or an
        error interrupted left it taken, and every abandoned job of the queue waited for it to
        lapse before its retry. Each step is one transaction: an interrupted pass leaves no
        job half handled."""
        for queue in self.queues:
            with maintenance_lock(queue, f"{self.name}.maintenance") as taken:
                if taken:
                    self.log.info("Worker %s: cleaning registries for queue: %s", self.name, queue.name)
                    clean_registries(queue, self._exc_handlers)
                    worker_registration.clean_worker_registry(queue)
                    queue.intermediate_queue.cleanup(self, queue)
        self.last_cleaned_at = utcnow()

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's, with the kit's scheduler (kitqueue/scheduler.py: each due job moved once),
        named after this worker (`<worker>.scheduler`) instead of a random id. Its lock on each
        queue then says whose it is, so a restarted unit frees its dead predecessor's lock at
        once (fetch.recover_predecessors), instead of leaving every retry and delayed job
        waiting up to 61 s for that lock to lapse."""
        self.scheduler = KitScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
            name=f"{self.name}.scheduler",
        )
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if not burst:
            self.scheduler.start()
            return
        try:
            self.scheduler.register_birth()
            self.scheduler.enqueue_scheduled_jobs()
        finally:
            self.scheduler.release_locks()
            self.scheduler.register_death()

    def stop_scheduler(self) -> None:
        """RQ's sends the scheduler's process one SIGTERM and waits for it without end. A stop
        that comes as the worker starts it (a restart right after a start) can reach the new
        process before it has set its own handler: the handler it inherited from the worker
        takes the signal, the scheduler runs on, and the worker never exited (seen: a slot of a
        pool, 1 stop in 7). The signal is sent again each second; after SCHEDULER_STOP_SECONDS
        the process is killed (a due job it was moving stays due: the move is one script)."""
        process = self.scheduler._process if self.scheduler is not None else None
        if process is None or not process.pid:
            return
        deadline = time.monotonic() + SCHEDULER_STOP_SECONDS
        while _alive(process) and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGTERM)
            process.join(1.0)
        if _alive(process):
            log.warning(
                "Worker %s: its scheduler %s did not stop (%s); killed",
                self.name,
                process.pid,
                _process_state(process.pid),
            )
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)
            process.join()

    def procline(self, message: str) -> None:
        super().procline(message)
        if not self.is_horse:  # systemd hears the main process only (NotifyAccess=main)
            self.notify(f"STATUS={message}")

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        """How long a running job stays "started" without a heartbeat before it counts as
        abandoned (its worker died) and is retried. RQ adds 60 s; we add a configurable grace."""
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - working_time, interval)
        return int(max(interval, 1)) + int(self.heartbeat_grace)

    def dequeue_job_and_maintain_ttl(self, *args: Any, **kwargs: Any):
        """RQ retries connection errors itself; replies a failover produces (UNBLOCKED when
        the master it was blocked on became a replica, READONLY...) are retried here too."""
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(*args, **kwargs)
            except redis.ResponseError as error:
                if not is_transient(error):
                    raise
                log.warning("Worker %s: failover under way (%s); reconnecting", self.name, error)
                self.connection.connection_pool.disconnect(inuse_connections=False)
                time.sleep(0.5)

    def prepare_job_execution(self, job, remove_from_intermediate_queue: bool = False) -> None:
        # Every queue is read through its intermediate list (fetch.py), not only single ones.
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def cleanup_execution(self, job, pipeline, execution=None) -> None:
        """RQ's, and the outcome of an execution this worker registered takes the job out of its
        queue's intermediate list in the same transaction. The horse takes it out when it starts
        the job (prepare_job_execution); a horse that died before (killed as the job arrived, or
        unable to read it in a failover) left the worker's take there, and RQ's maintenance,
        meeting it later, would fail or retry the job a second time, finished by then. Without
        an execution (RQ's maintenance failing a stuck take) RQ removes the take itself, after
        its transaction: one removed here too could then be another worker's new take."""
        super().cleanup_execution(job, pipeline=pipeline, execution=execution)
        if execution is not None:
            queue_key = self.queue_class.redis_queue_namespace_prefix + job.origin
            pipeline.lrem(IntermediateQueue.get_intermediate_queue_key(queue_key), 1, job.id)

    def perform_job(self, job, queue, *args: Any, **kwargs: Any) -> bool:
        """Runs the job with the worker's settings readable by its task (registry.settings())."""
        token = registry._SETTINGS.set(self.settings)
        try:
            return super().perform_job(job, queue, *args, **kwargs)
        finally:
            registry._SETTINGS.reset(token)

    # RQ counts each finished job and each failed execution for the worker in the transaction
    # that records it (the horse's, or the parent's for a horse that died): the dashboard's
    # counters go in the same one, so nobody sees a job finished or failed and not yet counted,
    # and an outcome that is not recorded is not counted.
    def increment_successful_job_count(self, pipeline=None) -> None:
        super().increment_successful_job_count(pipeline)
        self._count("finished", pipeline)

    def increment_failed_job_count(self, pipeline=None) -> None:
        super().increment_failed_job_count(pipeline)
        self._count("failures", pipeline)

    def _count(self, name: str, pipeline: Any) -> None:
        if pipeline is not None:
            stats.add(pipeline, self.stats_prefix, name)
            return
        try:
            stats.count(self.connection, self.stats_prefix, name)
        except redis.RedisError as error:
            log.warning("could not count %s: %s", name, error)


class Recurring(threading.Thread):
    """Enqueues each recurring job once per period, however many workers run: the first
    worker to claim the period's slot (SET NX) enqueues it, with a job id derived from the slot
    so that a claim lost in a failover still cannot produce a second job."""

    def __init__(self, store: Store, schedules: list[dict[str, Any]], owner: str) -> None:
        super().__init__(name="kitqueue-recurring", daemon=True)
        self.store, self.schedules, self.owner = store, schedules, owner
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            for schedule in self.schedules:
                try:
                    self.tick(schedule, time.time())
                except (redis.RedisError, Unavailable, NotDurable) as error:
                    log.warning("recurring job %s: %s", schedule["name"], error)

    def tick(self, schedule: dict[str, Any], now: float) -> bool:
        every = float(schedule["every"])
        slot = int(now // every)
        claim = self.store.key("recurring", schedule["name"], str(slot))
        if not self.store.redis.set(claim, self.owner, nx=True, ex=int(every * 2) + 60):
            return False
        task = registry.tasks()[schedule["task"]]
        try:
            enqueue(
                self.store,
                task,
                task.arguments(schedule.get("args")),
                schedule.get("queue", task.queue),
                job_id=f"recurring-{schedule['name']}-{slot}",
            )
        except (redis.RedisError, Unavailable, NotDurable):
            # Full, a failover past the budget, a job not yet on a replica: the next tick tries
            # this period again, under the same job id (never a second job).
            with contextlib.suppress(redis.RedisError, Unavailable):
                self.store.redis.delete(claim)
            raise
        log.info("recurring job %s enqueued for period %s", schedule["name"], slot)
        return True


def check_schedules(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Refuse a recurring job that names an unknown task or queue, or has no period."""
    schedules = list(config["RECURRING"])
    for schedule in schedules:
        name = schedule.get("name", "?")
        if schedule.get("task") not in registry.tasks():
            raise SystemExit(f"RECURRING {name}: unknown task {schedule.get('task')!r}")
        if schedule["task"] not in registry.offered(config):  # its jobs would be refused (queueing.py)
            raise SystemExit(f"RECURRING {name}: {schedule['task']!r} is a demo task, and DEMO_TASKS is off")
        task = registry.tasks()[schedule["task"]]
        queue = schedule.get("queue", task.queue)  # as Recurring.tick enqueues it
        if queue not in config["QUEUES"]:
            whose = "" if "queue" in schedule else f" (task {task.name}'s)"
            raise SystemExit(
                f"RECURRING {name}: queue {queue!r}{whose} is not in QUEUES ({', '.join(config['QUEUES'])})"
            )
        if not isinstance(schedule.get("every"), int | float) or schedule["every"] < 1:
            raise SystemExit(f"RECURRING {name}: 'every' must be a number of seconds >= 1")
        try:
            registry.tasks()[schedule["task"]].arguments(schedule.get("args"))
        except BadArguments as error:
            raise SystemExit(f"RECURRING {name}: {error}") from None
    return schedules


def build_worker(
    store: Store, queue_names: list[str], name: str, notify: Callable[[str], None] = sd_notify
) -> KitWorker:
    config = store.config
    queue_class = ReliableQueue.configured(
        store.key("wake"), float(config["WORKER_INTERMEDIATE_GRACE"]), store.key("fetch", name)
    )
    return KitWorker(
        [make_queue(store, q, queue_class) for q in queue_names],
        heartbeat_grace=int(config["WORKER_HEARTBEAT_GRACE"]),
        stats_prefix=store.key_prefix,
        settings=config,
        watch=MasterWatch(store, float(config["WORKER_MASTER_CHECK_SECONDS"])),
        notify=notify,
        max_jobs=int(config["WORKER_MAX_JOBS"]),
        max_memory_mb=float(config["WORKER_MAX_MEMORY_MB"]),
        name=name,
        connection=store.redis,
        job_class=RegisteredJob,
        queue_class=queue_class,
        serializer=JSONSerializer,
        worker_ttl=int(config["WORKER_TTL"]),
        job_monitoring_interval=int(config["WORKER_JOB_MONITORING_INTERVAL"]),
        maintenance_interval=int(config["WORKER_MAINTENANCE_INTERVAL"]),
        default_result_ttl=int(config["RESULT_TTL"]),
    )


def main(load_settings: Callable[[], dict[str, Any]], prog: str, argv: list[str] | None = None) -> int:
    """An app's worker command: `load_settings` reads the app's settings (its config.load)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="worker name prefix (the pid is appended; default: the host name)")
    parser.add_argument("--queues", help="comma-separated queues in priority order (default: QUEUES)")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument(
        "--slots",
        type=int,
        default=1,
        help="jobs run at once: one worker each, forked from this process once it has loaded "
        f"the app, and restarted when it dies (1 to {pool.MAX_SLOTS}; default 1: this process "
        "is the worker)",
    )
    parser.add_argument(
        "--recover",
        action="store_true",
        help="the name is this process's alone (one systemd unit, whose next process starts "
        "only once the last one's have all gone): at start, retry at once the jobs that earlier "
        "processes of that name were running, instead of after their heartbeat's grace",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.slots <= pool.MAX_SLOTS:
        parser.error(f"--slots must be 1 to {pool.MAX_SLOTS}, not {args.slots}")
    if args.recover and not args.name:
        # The host name alone is every unit's of the host: one would retry the others' jobs.
        parser.error("--recover needs --name, a name this process alone has (a unit's: --name %H-%i)")
    args.name = args.name or socket.gethostname()

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = for_worker(load_settings())
    except BadSetting as error:
        raise SystemExit(f"{prog}: {error}") from None
    queue_names = args.queues.split(",") if args.queues else list(config["QUEUES"])
    unknown = [q for q in queue_names if q not in config["QUEUES"]]
    if unknown:
        parser.error(f"unknown queue(s): {', '.join(unknown)} (QUEUES: {', '.join(config['QUEUES'])})")
    schedules = check_schedules(config)  # this loads the app's tasks: before any fork
    store = Store(config, connection_retries=int(config["WORKER_CONNECTION_RETRIES"]))

    def serve(worker: KitWorker) -> None:
        recurring = Recurring(store, schedules, worker.name)
        if schedules:
            recurring.start()
        try:
            worker.work(with_scheduler=True, burst=args.burst, logging_level="INFO")
        finally:
            recurring.stopping.set()

    try:
        if args.recover:
            recover(store, args.name)
        if args.slots > 1:
            return run_slots(store, queue_names, args.name, args.slots, serve, burst=args.burst)
        serve(build_worker(store, queue_names, f"{args.name}.{os.getpid()}"))
    except (LoginRefused, redis.AuthenticationError) as error:
        # A wrong password or user: one line for the journal, no traceback, and no retry as
        # for a failover (systemd's Restart= tries again, and says it again).
        refused = error if isinstance(error, LoginRefused) else login_refusal(error, config["REDIS_USERNAME"])
        raise SystemExit(f"{prog}: {refused.reason if refused else error}") from None
    return 0


def recover(store: Store, name: str) -> list[str]:
    """Retry the jobs this name's earlier processes were running (fetch.recover_predecessors),
    in every queue of the app. A failure leaves them to the maintenance pass, and the worker
    starts all the same."""
    try:
        queues = [make_queue(store, q) for q in store.config["QUEUES"]]
        recovered = store.retrying(lambda: recover_predecessors(queues, name))
    except LoginRefused:  # a configuration error: the worker could not start either
        raise
    except Exception:  # it only hastens what the maintenance pass does: never keep the worker down
        log.exception("%s: its earlier processes' jobs are left to the maintenance pass", name)
        return []
    if recovered:
        log.warning(
            "%s: %d job(s) its earlier processes were running, retried as abandoned: %s",
            name,
            len(recovered),
            ", ".join(recovered),
        )
    return recovered


def run_slots(
    store: Store,
    queue_names: list[str],
    prefix: str,
    slots: int,
    serve: Callable[[KitWorker], None],
    burst: bool = False,
) -> int:
    """`slots` workers, each in a process forked from this one (pool.py), named like a lone
    worker (`<prefix>.<pid>`) and run by `serve`. They share this process's `store`: a forked
    process opens connections of its own (redis-py's pools start afresh in a new process)."""
    # What building a worker loads (modules, caches, a connection's) is loaded here once, not
    # by every slot: 1.3 MiB less written by each (measured with two slots). Building one names
    # its connection in Redis: closed again, as the slots open their own.
    build_worker(store, queue_names, f"{prefix}.pool")
    store.disconnect()

    def slot(number: int, ready: Callable[[], None], horse: Callable[[int], None]) -> int:
        def notify(message: str) -> None:
            if "READY=1" in message.splitlines():
                ready()

        worker = build_worker(store, queue_names, f"{prefix}.{os.getpid()}", notify)
        worker.on_horse = horse  # the pool kills a horse's group when its slot dies alone
        serve(worker)
        return 0

    return pool.Pool(slots, slot, sd_notify, burst=burst).run()
