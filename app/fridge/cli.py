"""`fridge`: the queue from the command line, through Sentinel, with the app's configuration
(FRIDGE_CONFIG; on a deployed web host `sudo fridge ...` sets it).

    fridge status                   queues (waiting, started, scheduled, failed), workers by host
    fridge queues | workers         one of the two
    fridge enqueue TASK [ARGS]      ARGS: a JSON list or object; --queue, --delay SECONDS
    fridge show JOB_ID              a job: task, arguments, status, times, result or traceback
    fridge failed                   failed jobs, newest first (--queue, --start, --limit)
    fridge requeue JOB_ID... | --all [--queue Q]
    fridge delete JOB_ID...         failed jobs only
    fridge empty QUEUE              its waiting jobs, after typing the queue's name (or --yes)

`--json` (before or after the command) prints JSON for scripts. Exit codes: 0 done, 1 a job that is not
there (or not failed), 2 bad usage or input, 3 Redis unreachable through Sentinel, a refused
login, no configuration, a job not yet replicated, or a Redis user that may not do this (the
message says which).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from kitqueue.queueing import IdempotencyConflict, NotDurable, enqueue, fetch_job, make_queue
from kitqueue.registry import offered
from kitqueue.schema import BadArguments
from kitqueue.store import Full, LoginRefused, Store, Unavailable, login_refusal
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError, TimeoutError
from rq.exceptions import NoSuchJobError

from . import browse
from . import config as config_module
from .monitoring import describe_job, overview

NOT_FOUND, USAGE, UNREACHABLE = 1, 2, 3


class Failure(Exception):
    """What the command could not do, and its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_table(data: dict[str, Any]) -> str:
    """The overview as aligned text: one line per queue, then workers busy/idle per host."""
    return queues_table(data) + "\n\n" + workers_table(data)


def queues_table(data: dict[str, Any]) -> str:
    lines = [f"{'queue':<12} {'waiting':>8} {'started':>8} {'scheduled':>9} {'failed':>7}"]
    lines += [
        f"{q['name']:<12} {q['depth']:>8} {q['started']:>8} {q['scheduled']:>9} {q['failed']:>7}"
        for q in data["queues"]
    ]
    return "\n".join(lines)


def workers_table(data: dict[str, Any]) -> str:
    busy = Counter(w["host"] for w in data["workers"] if w["state"] == "busy")
    hosts = sorted({w["host"] for w in data["workers"]})
    lines = [f"{'workers on':<24} {'busy':>5} {'idle':>5}"]
    for host in hosts:
        total = sum(1 for w in data["workers"] if w["host"] == host)
        lines.append(f"{host:<24} {busy[host]:>5} {total - busy[host]:>5}")
    if not hosts:
        lines.append("(no live worker)")
    return "\n".join(lines)


def job_text(job: dict[str, Any]) -> str:
    lines = [f"{key:<14} {value}" for key, value in job.items() if key != "traceback" and value is not None]
    if job.get("traceback"):
        lines += ["traceback:", job["traceback"].rstrip()]
    return "\n".join(lines)


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "(no failed job)"
    lines = [f"{'job':<32} {'queue':<10} {'task':<8} {'ended at':<32} error"]
    lines += [
        f"{j['job_id']:<32} {j['queue']:<10} {j['task'] or '?':<8} {j['ended_at'] or '-':<32} "
        f"{j.get('error', '')}"
        for j in jobs
    ]
    return "\n".join(lines)


def _queue_name(store: Store, name: str) -> str:
    if name not in store.config["QUEUES"]:
        raise Failure(USAGE, f"no queue {name!r} (queues: {', '.join(store.config['QUEUES'])})")
    return name


def _failed_job(store: Store, job_id: str) -> Any:
    job = fetch_job(store, job_id)
    if job is None:
        raise Failure(NOT_FOUND, f"no job {job_id}")
    status = describe_job(job)["status"]  # the job's own status: the registry is never read whole
    if status != "failed":
        raise Failure(NOT_FOUND, f"job {job_id} is not failed (status: {status})")
    return job


def cmd_status(store: Store, args: argparse.Namespace) -> tuple[Any, str]:
    data = overview(store)
    return data, status_table(data)


def cmd_queues(store: Store, args: argparse.Namespace) -> tuple[Any, str]:
    data = overview(store)
    return data["queues"], queues_table(data)


def cmd_workers(store: Store, args: argparse.Namespace) -> tuple[Any, str]:
    data = overview(store)
    return data["workers"], workers_table(data)


def cmd_enqueue(store: Store, args: argparse.Namespace) -> tuple[Any, str]:
    tasks = offered(store.config)
    if args.task not in tasks:
        raise Failure(USAGE, f"unknown task {args.task!r} (tasks: {', '.join(tasks)})")
    task = tasks[args.task]
    try:
        raw = json.loads(args.args) if args.args is not None else None
    except ValueError:
        raise Failure(USAGE, f"ARGS is not JSON: {args.args!r} (a list or an object)") from None
    try:
        kwargs = task.arguments(raw)
    except BadArguments as error:
        raise Failure(USAGE, str(error)) from None
    queue = _queue_name(store, args.queue or task.queue)
    if not 0 <= args.delay <= 365 * 86400:
        raise Failure(USAGE, f"--delay must be between 0 and a year in seconds, not {args.delay}")
    try:
        done = enqueue(store, task, kwargs, queue, idempotency_key=args.idempotency_key, delay=args.delay)
    except IdempotencyConflict as error:
        raise Failure(USAGE, str(error)) from None
    data = {"job_id": done.job_id, "task": task.name, "queue": done.queue, "replayed": done.replayed}
    return data, f"{done.job_id} queued on {done.queue}{' (replayed)' if done.replayed else ''}"


def cmd_show(store: Store, args: argparse.Namespace) -> tuple[Any, str]:
    job = fetch_job(store, args.job_id)
    if job is None:
        raise Failure(NOT_FOUND, f"no job {args.job_id}")
    data = browse.details(job)
    return data, job_text(data)


def cmd_failed(store: Store, args: argparse.Namespace) -> tuple[Any, str]:
    names = [_queue_name(store, args.queue)] if args.queue else store.config["QUEUES"]
    found = [job for name in names for job in browse.page(store, "failed", name, args.start, args.limit).jobs]
    found.sort(key=lambda j: j["ended_at"] or "", reverse=True)
    return found[: args.limit], jobs_table(found[: args.limit])


def cmd_requeue(store: Store, args: argparse.Namespace) -> tuple[Any, str]:
    if args.all == bool(args.job_ids):
        raise Failure(USAGE, "give job ids or --all, not both nor neither")
    done: list[str] = []
    if args.all:
        names = [_queue_name(store, args.queue)] if args.queue else store.config["QUEUES"]
        done = browse.requeue_all_failed(store, names)
    else:
        for job_id in args.job_ids:
            job = _failed_job(store, job_id)
            try:
                browse.requeue_failed(store, job.origin, job_id)
            except (browse.NotFailed, NoSuchJobError):
                raise Failure(NOT_FOUND, f"job {job_id} is not failed any more") from None
            done.append(job_id)
    return {"requeued": done}, f"requeued {len(done)} job(s)"


def cmd_delete(store: Store, args: argparse.Namespace) -> tuple[Any, str]:
    for job_id in args.job_ids:
        job = _failed_job(store, job_id)
        try:
            browse.delete_failed(store, job)
        except browse.NotFailed:
            raise Failure(NOT_FOUND, f"job {job_id} is not failed any more") from None
    return {"deleted": args.job_ids}, f"deleted {len(args.job_ids)} failed job(s)"


def cmd_empty(store: Store, args: argparse.Namespace) -> tuple[Any, str]:
    queue = make_queue(store, _queue_name(store, args.queue))
    if not args.yes:
        if not sys.stdin.isatty():
            raise Failure(USAGE, f"emptying {args.queue} deletes its waiting jobs: confirm with --yes")
        answer = input(f"Delete the {queue.count} waiting job(s) of queue {args.queue}? Type its name: ")
        if answer.strip() != args.queue:
            raise Failure(USAGE, "not confirmed: nothing deleted")
    deleted = queue.empty()
    return {"queue": args.queue, "deleted": deleted}, f"deleted {deleted} waiting job(s) of {args.queue}"


READS = (cmd_status, cmd_queues, cmd_workers, cmd_show, cmd_failed)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="fridge",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--json", action="store_true", help="print JSON instead of text")
    # Also after the command (`fridge status --json`); absent there, it leaves the top's value.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text"
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, run: Callable[..., tuple[Any, str]], text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=text, description=text, parents=[after])
        # Reads are retried through a failover; enqueue retries itself (under one job id);
        # requeue, delete and empty are not retried (a retry could act twice): exit 3, run again.
        command.set_defaults(run=run, retried=run in READS)
        return command

    add("status", cmd_status, "queues, started, scheduled and failed jobs, live workers per host")
    add("queues", cmd_queues, "each queue's waiting, started, scheduled and failed jobs")
    add("workers", cmd_workers, "live workers per host, busy and idle")
    command = add("enqueue", cmd_enqueue, "put a job in a queue, durably, as POST /jobs does")
    command.add_argument("task")
    command.add_argument("args", nargs="?", help="a JSON list or object, e.g. '[\"platano\"]'")
    command.add_argument("--queue", help="any of the app's queues (default: the task's)")
    command.add_argument("--delay", type=float, default=0.0, help="run it this many seconds later")
    command.add_argument("--idempotency-key", help="a retried command with the same key enqueues once")
    add("show", cmd_show, "one job: task, arguments, status, times, result or traceback").add_argument(
        "job_id"
    )
    command = add("failed", cmd_failed, "failed jobs, newest first")
    command.add_argument("--queue")
    command.add_argument("--start", type=int, default=0, help="skip this many of each queue's newest")
    command.add_argument("--limit", type=int, default=50)
    command = add("requeue", cmd_requeue, "put failed jobs back in their queues")
    command.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    command.add_argument("--all", action="store_true", help="every failed job (of --queue)")
    command.add_argument("--queue")
    command = add("delete", cmd_delete, "delete failed jobs")
    command.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    command = add("empty", cmd_empty, "delete the waiting jobs of a queue, after confirmation")
    command.add_argument("queue")
    command.add_argument("--yes", action="store_true", help="do not ask (scripts)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = config_module.load()
    except (OSError, ValueError) as error:
        print(f"fridge: cannot read the configuration: {error}", file=sys.stderr)
        return UNREACHABLE
    store = Store(settings)
    try:
        try:
            if args.retried:
                budget = float(settings["RETRY_BUDGET"])
                data, text = store.retrying(lambda: args.run(store, args), budget=budget)
            else:
                data, text = args.run(store, args)
        except AuthenticationError as error:  # a command that is not retried
            raise login_refusal(error, settings["REDIS_USERNAME"]) or error from error
    except Failure as failure:
        print(f"fridge: {failure}", file=sys.stderr)
        return failure.code
    except LoginRefused as error:
        print(f"fridge: {error.reason} (FRIDGE_CONFIG, FRIDGE_* variables)", file=sys.stderr)
        return UNREACHABLE
    except Full as error:
        print(f"fridge: the queue is full, retry later: {error.reason}", file=sys.stderr)
        return UNREACHABLE
    except NotDurable as error:
        if getattr(args, "idempotency_key", None):
            again = "run it again with the same --idempotency-key"
        else:
            again = (
                f"`fridge show {error.job_id}` tells whether it is there; running the command again "
                "enqueues another job (--idempotency-key makes a retry safe)"
            )
        print(
            f"fridge: not acknowledged: {error.reason}. The job is stored, not yet on enough replicas: "
            f"it may run, or be lost in a failover; {again}",
            file=sys.stderr,
        )
        return UNREACHABLE
    except Unavailable as error:
        print(f"fridge: Redis is unreachable through Sentinel: {error.reason}", file=sys.stderr)
        return UNREACHABLE
    except (ConnectionError, TimeoutError) as error:
        print(f"fridge: Redis is unreachable through Sentinel: {error}", file=sys.stderr)
        return UNREACHABLE
    except NoPermissionError as error:
        print(
            f"fridge: the Redis user {settings['REDIS_USERNAME']} may not do this ({error}): "
            "on a worker host, run it on a web host (the workers' user may only take jobs)",
            file=sys.stderr,
        )
        return UNREACHABLE
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
