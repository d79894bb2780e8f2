"""Faults the way the world makes them, the load that measures what they cost, and the drills
that combine both. Shared by the Molecule scenarios' tests and by `make chaos`
(tools/chaos.py), which runs every drill on the development topology.

Every host is a systemd container named after its inventory host, driven from the controller:

- a server process killed (SIGKILL) with systemd free to restart it (`Restart=always`), or
  kept from restarting (the unit masked);
- a planned restart (`systemctl restart`, as an upgrade or a config change does);
- a deploy whose changed unit drop-in restarts the servers (`site.yml`), on a host slow to start
  its server again;
- a whole host lost (`docker kill`: its processes vanish and no TCP reset ever reaches its
  peers), and brought back with its disk (`docker start`);
- a host frozen (`docker pause`) and thawed;
- a network partition: iptables DROP rules in a container's network namespace, entered from
  the controller with nsenter, in both directions or only for one user's outgoing traffic
  (an asymmetric partition), then healed;
- a full disk: a file grows on a data node's filesystem until it refuses (ENOSPC), as a log
  does, then is deleted;
- Apache reloaded (`systemctl reload`, what logrotate runs every night), which starts the
  app's mod_wsgi daemon processes again.

`Load` enqueues through Apache without pause and records every answer; `executed` checks that
every job that got a 202 exists on the current master and ran. A drill (see `DRILLS`) starts
from a healthy platform, makes one fault under load, undoes it, and returns a `Result`.
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kit_checks import Group, Http, hosts_in, hostvars, load_group, rendered, run_playbook, wait_for
from kit_redis import ReplyError, parse_info

# --- The platform ---------------------------------------------------------------------------


@dataclass
class Platform:
    """The deployed hosts as the faults see them: inventory host = container name."""

    group: Group
    web: str  # inventory host of the VirtualHost
    workers: list[str]
    addresses: dict[str, str]
    app: str = "fridge"  # the app's name: its daemon processes, units and user
    worker_target: str = "fridge-workers.target"
    worker_units: str = "fridge-worker@*.service"

    @classmethod
    def from_inventory(cls) -> Platform:
        """The platform kit_checks' inventory describes (a scenario's, or inventories/dev)."""
        group = load_group(sorted(set(hosts_in("redis")) | set(hosts_in("redis_sentinel"))))
        every = sorted(set(hosts_in("all")) - {"localhost"})
        app = resolve_app_name(hostvars(hosts_in("web")[0]))
        return cls(
            group=group,
            web=hosts_in("web")[0],
            workers=hosts_in("workers"),
            addresses={h: hostvars(h)["kit_address"] for h in every},
            app=app,
            worker_target=f"{app}-workers.target",
            worker_units=f"{app}-worker@*.service",
        )

    @property
    def url(self) -> str:
        return f"http://{self.addresses[self.web]}"

    def master_host(self) -> str:
        return self.group.host_of(self.group.current_master())

    def replica_hosts(self) -> list[str]:
        master = self.master_host()
        return [h for h in self.group.nodes if h != master]

    def sentinel_user(self, host: str) -> str:
        """The system user the Sentinel on `host` runs as (the asymmetric partition's target)."""
        return sh(host, f"systemctl show -p User --value {self.group.flavor}-sentinel").strip()

    def workers_state(self) -> dict[str, str]:
        """Each worker unit's main PID and restart count, to prove workers were not restarted."""
        state = {}
        for host in self.workers:
            out = sh(host, f"systemctl show -p Id,MainPID,NRestarts '{self.worker_units}'")
            for block in out.strip().split("\n\n"):
                fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
                state[f"{host}/{fields.get('Id')}"] = (
                    f"pid {fields.get('MainPID')} restarts {fields.get('NRestarts')}"
                )
        return state

    def wait_healthy(self, timeout: float = 120) -> None:
        """Every Sentinel names one master and is out of TILT, every other data node
        replicates it in sync, each Sentinel knows all its peers and sees nothing down, and the
        web host answers /healthz."""
        group = self.group

        def healthy() -> bool:
            named = group.masters_named()
            answers = set(named.values())
            if None in answers or len(answers) != 1:
                return False
            master = answers.pop().split(":")[0]
            for address in group.nodes.values():
                if address == master:
                    continue
                info = group.role(address)
                if info.get("master_host") != master or info.get("master_link_status") != "up":
                    return False
            peers = len(group.sentinels) - 1
            for address in group.sentinels.values():
                with group.sentinel(address) as conn:
                    if parse_info(conn.command("INFO", "sentinel")).get("sentinel_tilt") != "0":
                        return False  # TILT (after a freeze or a clock jump): it acts on nothing
                with group.sentinel(address) as conn:
                    state = dict(
                        zip(*[iter(conn.command("SENTINEL", "MASTER", group.master_name))] * 2, strict=True)
                    )
                if int(state["num-other-sentinels"]) < peers or "s_down" in state["flags"]:
                    return False
                with group.sentinel(address) as conn:
                    replicas = conn.command("SENTINEL", "REPLICAS", group.master_name)
                if any("s_down" in dict(zip(*[iter(r)] * 2, strict=True))["flags"] for r in replicas):
                    return False
            return http_status(f"{self.url}/healthz") == 200

        wait_for(healthy, timeout, "a healthy platform (one master, replicas in sync, /healthz 200)", 0.5)


def resolve_app_name(variables: dict) -> str:
    from kit_checks import resolve

    return str(resolve(variables, variables.get("kit_app_name", "fridge")))


# --- Faults -----------------------------------------------------------------------------------


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def sh(host: str, command: str, check: bool = True) -> str:
    """Run a shell command in a host (container) as root."""
    return docker("exec", host, "sh", "-c", command, check=check)


def kill_server(group: Group, host: str, restart: bool = True) -> None:
    """SIGKILL the data node's server. With `restart`, systemd restarts it as it would after
    an OOM kill or a crash (Debian's unit: Restart=always, 100 ms); without, the unit is
    masked first and the node stays dead until `revive_server`."""
    service = group.service
    if restart:
        sh(host, f"systemctl kill --signal=SIGKILL {service}")
    else:
        sh(host, f"systemctl mask --runtime {service} && systemctl kill --signal=SIGKILL {service}")


def revive_server(group: Group, host: str) -> None:
    """Undo `kill_server(restart=False)`: the node's unit starts again with its config."""
    service = group.service
    sh(
        host,
        f"systemctl unmask --runtime {service}; systemctl reset-failed {service}; systemctl start {service}",
    )


def server_pid(group: Group, host: str) -> str:
    return sh(host, f"systemctl show -p MainPID --value {group.service}").strip()


def sentinel_pids(group: Group) -> dict[str, str]:
    service = group.service.replace("-server", "-sentinel")
    return {h: sh(h, f"systemctl show -p MainPID --value {service}").strip() for h in group.sentinels}


def served_certificates(group: Group) -> dict[str, str]:
    """The certificate (PEM) each data node and Sentinel presents, by "address:port"."""
    targets = [(a, 6379) for a in group.nodes.values()] + [(a, 26379) for a in group.sentinels.values()]
    return {f"{a}:{p}": ssl.get_server_certificate((a, p), timeout=2) for a, p in targets}


def make_certificates_due(group: Group) -> None:
    """Make the kit CA's host certificates due: the next run issues new ones, as it does when
    fewer than kit_redis_tls_renew_days remain (the CA itself is kept)."""
    host = next(iter(group.nodes))
    assert rendered(host, "kit_redis_tls_ca") == "kit", "only the kit's CA renews certificates itself"
    pki = Path(str(rendered(host, "kit_redis_tls_dir")))
    for name in {*group.nodes, *group.sentinels}:
        (pki / f"{name}.crt").unlink()


def loaded(group: Group, address: str) -> bool:
    """The server answers and has finished loading its data set."""
    with group.node(address) as conn:
        return parse_info(conn.command("INFO", "persistence")).get("loading") == "0"


def restart_server(group: Group, host: str) -> None:
    """A planned restart (an upgrade, a setting that needs one): SIGTERM, then start."""
    sh(host, f"systemctl restart {group.service}")


def lose_host(host: str) -> None:
    """The whole host vanishes: every process at once, no FIN and no RST to its peers."""
    docker("kill", host)


def return_host(host: str) -> None:
    """Power the host back on with its disk; wait for its systemd to finish booting."""
    docker("start", host)
    wait_for(
        lambda: sh(host, "systemctl is-system-running", check=False).strip() in ("running", "degraded"),
        120,
        f"{host} to boot",
        0.5,
    )


def freeze_host(host: str) -> None:
    docker("pause", host)


def thaw_host(host: str) -> None:
    docker("unpause", host)


def _netns(host: str, *iptables: str) -> None:
    pid = docker("inspect", "-f", "{{.State.Pid}}", host).strip()
    proc = subprocess.run(
        ["nsenter", "-t", pid, "-n", "iptables", "-w", *iptables],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"iptables {' '.join(iptables)} in {host}: {proc.stderr.strip()}")


def cut(platform: Platform, host: str, peer: str, port: int | None = None, user: str | None = None) -> None:
    """Drop traffic between `host` and `peer` (inventory hosts), from `host`'s network
    namespace. With `port`, only connections to that port (either side's). With `user`, only
    what that system user on `host` sends to `peer` (an asymmetric cut: `peer` still reaches
    `host`'s other processes and they reach it)."""
    address = platform.addresses[peer]
    if user is not None:
        uid = sh(host, f"id -u {user}").strip()
        _netns(host, "-A", "OUTPUT", "-d", address, "-m", "owner", "--uid-owner", uid, "-j", "DROP")
        return
    if port is None:
        _netns(host, "-A", "INPUT", "-s", address, "-j", "DROP")
        _netns(host, "-A", "OUTPUT", "-d", address, "-j", "DROP")
        return
    for chain, way, port_side in (
        ("INPUT", "-s", "--dport"),
        ("INPUT", "-s", "--sport"),
        ("OUTPUT", "-d", "--dport"),
        ("OUTPUT", "-d", "--sport"),
    ):
        _netns(host, "-A", chain, way, address, "-p", "tcp", port_side, str(port), "-j", "DROP")


def block_ssh(host: str) -> None:
    """Ansible cannot reach the host (its SSH port drops every packet, both ways); its servers
    run on and its peers still reach them. `heal` undoes it."""
    _netns(host, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP")
    _netns(host, "-A", "OUTPUT", "-p", "tcp", "--sport", "22", "-j", "DROP")


def heal(*hosts: str) -> None:
    for host in hosts:
        _netns(host, "-F", "INPUT")
        _netns(host, "-F", "OUTPUT")


def data_dir(group: Group, host: str) -> str:
    with group.node(group.nodes[host]) as conn:
        return str(conn.command("CONFIG", "GET", "dir")[1])


@contextlib.contextmanager
def small_disk(group: Group, host: str, mib: int = 256) -> Iterator[str]:
    """The data node's directory on a filesystem of its own of `mib` MiB (tmpfs) while the
    context lasts: a disk that can fill up without filling the machine's. The node must be a
    replica on entry (its restart then costs the platform nothing): its server is stopped, its
    files copied over, and it is started again; on exit the same, back to its disk."""
    directory = data_dir(group, host)
    saved = f"{directory}.on-disk"

    def restarted(command: str) -> None:
        """Stop the server, run `command`, start the server whatever came of it. A running
        AOF guard is restarted too: a container's mounts are private, so the new filesystem
        would not reach the namespace of a unit started before it (on a host it does)."""
        out = sh(
            host,
            f"systemctl stop {group.service}; ( {command} ); done=$?; systemctl reset-failed {group.service};"
            f" systemctl start {group.service}; systemctl try-restart kit-aof-guard;"
            " echo command=$done",
        )
        assert out.strip().endswith("command=0"), f"on {host}: {command}: {out}"
        wait_for(lambda: loaded(group, group.nodes[host]), 60, f"the server on {host} to load its data")

    assert group.role(group.nodes[host]).get("role") == "slave", f"{host} is not a replica"
    assert not sh(host, f"(mountpoint -q {directory} || test -e {saved}) && echo left", check=False), (
        f"{host}: {directory} is a mount point already, or {saved} is left from another drill"
    )
    try:
        restarted(
            f"set -e; cp -a {directory} {saved}; mount -t tmpfs -o size={mib}m tmpfs {directory}"
            f"; chown --reference={saved} {directory}; chmod --reference={saved} {directory}"
            f"; cp -a {saved}/. {directory}/"
        )
        yield directory
    finally:
        # A full disk first made room for (a server that cannot write may not stop), then the
        # files back to the node's own disk.
        free_disk(host, directory)
        restarted(
            f"set -e; if mountpoint -q {directory}; then rm -rf {saved}; cp -a {directory} {saved};"
            f" umount {directory}; find {directory} -mindepth 1 -delete; cp -a {saved}/. {directory}/; fi"
            f"; rm -rf {saved}"
        )


def fill_disk(group: Group, host: str, directory: str, stopped: Callable[[], bool] = lambda: False) -> None:
    """A file grows in `directory` until its filesystem refuses (ENOSPC), as a log does, and
    again if space comes free (a failed rewrite's temporary file deleted) before the server
    has met the full disk (or, `stopped`, has stopped on it)."""

    def refused() -> bool:
        dd = f"dd if=/dev/zero of={directory}/filler bs=1M oflag=append conv=notrunc 2>/dev/null"
        sh(host, dd, check=False)
        if stopped():
            return True
        with group.node(group.nodes[host]) as conn:
            return parse_info(conn.command("INFO", "persistence")).get("aof_last_write_status") == "err"

    wait_for(refused, 30, f"the server on {host} to meet its full disk", 0.2)


def free_disk(host: str, directory: str) -> None:
    sh(host, f"rm -f {directory}/filler")


def retried(group: Group, job_ids: list[str]) -> list[str]:
    """The jobs run more than once: a run failed (its horse died, its outcome was not recorded)
    and the job was retried. Every job of the load starts with the same retries, so those with
    fewer left than the others were retried."""
    with group.node(group.current_master()) as conn:
        left = {j: conn.command("HGET", f"rq:job:{j}", "retries_left") for j in job_ids}
    counts = {j: int(n) for j, n in left.items() if n is not None}
    most = max(counts.values(), default=0)
    return [j for j, n in counts.items() if n < most]


# --- Load -------------------------------------------------------------------------------------


@dataclass
class Answer:
    asked: float
    answered: float
    status: int
    job_id: str | None
    retry_after: list[str]  # every Retry-After header of the answer
    replayed: bool = False
    index: int = 0  # the request's number in its load: its Idempotency-Key and arguments
    json_error: bool = True  # an error's body is JSON naming its status, as every answer of the API


def http_status(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (http to a test host)
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


class Load:
    """Clients enqueueing jobs through Apache without pause (`POST /jobs`, the `add` task, so
    that the workers drain them as fast as they come), each request with an Idempotency-Key,
    recording every answer (status 0: no answer within the client's timeout)."""

    def __init__(
        self, url: str, name: str, clients: int = 2, pause: float = 0.02, timeout: float = 15
    ) -> None:
        # Every run its own keys: a key seen before would be answered as a replay of an old job.
        self.name = f"{name}-{uuid.uuid4().hex[:8]}"
        self.url, self.clients, self.pause, self.timeout = url, clients, pause, timeout
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self.stopped = float("inf")
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def send(self, index: int) -> Answer:
        """Request number `index`: the same key and arguments however often it is sent."""
        import json

        request = urllib.request.Request(  # noqa: S310 (http to a test host)
            f"{self.url}/jobs",
            data=json.dumps({"task": "add", "args": {"a": index, "b": 1}}).encode(),
            method="POST",
            headers={"Idempotency-Key": f"{self.name}-{index}", "Content-Type": "application/json"},
        )
        asked = time.monotonic()
        status, job_id, retry_after, replayed, json_error = 0, None, [], False, True
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310
                status, body = reply.status, reply.read()
                answer = json.loads(body)
                job_id, replayed = answer.get("job_id"), bool(answer.get("replayed"))
        except urllib.error.HTTPError as error:
            status, retry_after = error.code, error.headers.get_all("Retry-After") or []
            try:
                json_error = json.loads(error.read()).get("status") == error.code
            except Exception:  # not JSON, or cut short (http.client.IncompleteRead)
                json_error = False
        except Exception:  # no answer, or a broken one (cut short, not JSON)
            status = 0
        return Answer(asked, time.monotonic(), status, job_id, retry_after, replayed, index, json_error)

    def _run(self) -> None:
        while not self._stop.is_set():
            answer = self.send(next(self._counter))
            with self._lock:
                self.answers.append(answer)
            time.sleep(self.pause)

    def retry_refused(self, deadline: float = 60) -> list[Answer]:
        """Each request answered 503, sent again with its key as its Retry-After says, as a
        client keeping its promise would, until it is acknowledged; all within `deadline`."""
        retried = []
        give_up = time.monotonic() + deadline
        for refused in (a for a in self.answers if a.status == 503):
            answer = refused
            while answer.status != 202 and time.monotonic() < give_up:
                wait = float(answer.retry_after[0]) if answer.retry_after else 1.0
                time.sleep(max(0.0, answer.answered + wait - time.monotonic()))
                answer = self.send(refused.index)
            retried.append(answer)
        return retried

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        self.stopped = max((a.answered for a in self.answers), default=time.monotonic())

    def acked_since(self, moment: float) -> bool:
        """Some request asked after `moment` was acknowledged."""
        with self._lock:
            return any(a.status == 202 and a.asked > moment for a in self.answers)

    def acknowledged(self) -> list[str]:
        return [a.job_id for a in self.answers if a.status == 202 and a.job_id]

    def write_gap(self, since: float) -> float:
        """The longest time without an acknowledgement once the fault began (until the load
        stopped)."""
        acks = sorted(a.answered for a in self.answers if a.status == 202 and a.answered > since)
        points = [since, *acks, self.stopped]
        return max(b - a for a, b in itertools.pairwise(points))

    def longest(self) -> float:
        return max((a.answered - a.asked for a in self.answers), default=0.0)

    def rate(self, start: float, end: float) -> float:
        """Acknowledgements per second answered between two moments."""
        with self._lock:
            acks = sum(1 for a in self.answers if a.status == 202 and start <= a.answered < end)
        return round(acks / (end - start), 1)


def executed(group: Group, job_ids: list[str], timeout: float) -> tuple[list[str], list[str]]:
    """Wait until every job has run; return (missing: no trace on the master, not finished)."""
    pending = list(job_ids)
    missing: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            master = group.current_master()
            with group.node(master) as conn:
                statuses = [conn.command("HGET", f"rq:job:{j}", "status") for j in pending]
        except (OSError, ReplyError, AssertionError):
            statuses = None
        if statuses is not None:
            missing = [j for j, s in zip(pending, statuses, strict=True) if s is None]
            pending = [j for j, s in zip(pending, statuses, strict=True) if s != "finished"]
            if not pending or time.monotonic() > deadline:
                return missing, [j for j in pending if j not in missing]
        elif time.monotonic() > deadline:
            return missing, pending
        time.sleep(0.2)


# --- Drills -----------------------------------------------------------------------------------


@dataclass
class Result:
    fault: str
    requests: int
    acknowledged: int
    lost: int
    unfinished: int
    statuses: dict[int, int]
    write_gap: float
    longest: float
    detail: str = ""
    workers_restarted: list[str] = field(default_factory=list)
    replays: int = 0  # 202s for a key the load never sent before: the drill proved nothing
    # Acknowledgements per second in the second before the fault, and once the platform has
    # failed over while the lost host is still away (host-loss drills only).
    rate_before: float | None = None
    rate_during: float | None = None
    # worker-host-loss: the jobs its workers were running when the host was lost, how many of
    # them ran again as retries, and the seconds from its return until every job had run.
    in_flight: int = 0
    retried: int = 0
    rerun_after: float | None = None
    # disk-full: acknowledged jobs retried after a run that failed (its horse died, for one
    # that could not record the outcome). A job put back by follow.py is not counted.
    failed_runs: int | None = None
    # 503s without exactly one Retry-After: with none a client cannot tell them from a failure
    # (the kit promises Retry-After with every 503); with two, some clients cannot read it.
    bare_503: int = 0
    # app-crash: the 503s sent again with their keys and acknowledged, and how many of them
    # were answered as a replay (the job had been written before the process died).
    refused_retried: int | None = None
    refused_written: int | None = None
    # Errors whose body is not the API's JSON naming their status (Apache's HTML, a raw document).
    not_json: int = 0

    @property
    def errors_5xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500 and s != 503)

    @property
    def unavailable_503(self) -> int:
        return self.statuses.get(503, 0)

    @property
    def unanswered(self) -> int:
        return self.statuses.get(0, 0)

    def line(self) -> str:
        return (
            f"{self.fault}: {self.requests} requests, {self.acknowledged} acknowledged, {self.lost} lost, "
            f"{self.unfinished} not run, {self.errors_5xx} 5xx, {self.unavailable_503} x 503, "
            f"{self.unanswered} unanswered; write gap {self.write_gap:.2f}s, longest request "
            f"{self.longest:.2f}s"
            + (
                f"; {self.rate_during} acknowledged/s while the host is lost, {self.rate_before} before"
                if self.rate_during is not None
                else ""
            )
            + (f"; {self.bare_503} x 503 without exactly one Retry-After" if self.bare_503 else "")
            + (f"; {self.not_json} errors not in the API's JSON" if self.not_json else "")
            + (f"; {self.detail}" if self.detail else "")
        )


@contextlib.contextmanager
def under_load(platform: Platform, name: str, clients: int = 2, pause: float = 0.02) -> Iterator[Load]:
    load = Load(platform.url, name, clients=clients, pause=pause).start()
    try:
        wait_for(lambda: load.acked_since(0), 30, "the load to be acknowledged")
        yield load
    finally:
        load.stop()


def _settle(load: Load, seconds: float = 2.0) -> None:
    """Keep the load running until a request asked from now on is acknowledged (the fault is
    over), then a bit more."""
    now = time.monotonic()
    wait_for(lambda: load.acked_since(now), 60, "acknowledgements to resume")
    time.sleep(seconds)


def _finish(
    platform: Platform,
    fault: str,
    load: Load,
    began: float,
    before: dict,
    detail: str = "",
    rates: tuple[float, float] | tuple[None, None] = (None, None),
    also: list[str] | None = None,
) -> Result:
    """The drill's outcome: every job the load got a 202 for, and `also` (acknowledged to the
    drill itself), must exist on the master and have run."""
    after = platform.workers_state()
    restarted = [unit for unit, state in before.items() if after.get(unit) != state]
    acked = [*load.acknowledged(), *(also or [])]
    missing, unfinished = executed(platform.group, acked, timeout=180)
    return Result(
        fault=fault,
        requests=len(load.answers) + len(also or []),
        acknowledged=len(acked),
        lost=len(missing),
        unfinished=len(unfinished),
        statuses=dict(Counter(a.status for a in load.answers)),
        write_gap=load.write_gap(began),
        longest=load.longest(),
        detail=detail,
        workers_restarted=restarted,
        replays=sum(a.replayed for a in load.answers),
        bare_503=sum(1 for a in load.answers if a.status == 503 and len(a.retry_after) != 1),
        not_json=sum(1 for a in load.answers if a.status >= 400 and not a.json_error),
        rate_before=rates[0],
        rate_during=rates[1],
    )


def _queued_across(platform: Platform, name: str, fault: Callable[[str], None]) -> Result:
    """`fault(master host)` under load with the workers stopped, so that every job acknowledged
    before it must still be queued after it; the workers start again before the check."""
    master = platform.master_host()
    for host in platform.workers:
        sh(host, f"systemctl stop {platform.worker_target}")
    try:
        with under_load(platform, name) as load:
            time.sleep(1)
            began = time.monotonic()
            fault(master)
            _settle(load)
    finally:
        for host in platform.workers:
            sh(host, f"systemctl start {platform.worker_target}")
    before = platform.workers_state()
    stayed = platform.master_host() == master
    return _finish(platform, name, load, began, before, f"master {'kept' if stayed else 'changed'}")


KIT = Path(__file__).resolve().parents[3]


def switch_over(platform: Platform, target: str) -> None:
    """The planned switchover (playbooks/failover.yml) to the replica `target`. It waits until
    the Sentinels have a fresh view of it: a raw SENTINEL FAILOVER right after the replica's
    restart once raced a Sentinel that had just seen it reboot, which turned the new master
    back into a replica of the old one."""
    run = run_playbook("-e", f"to={target}", playbook=str(KIT / "playbooks" / "failover.yml"))
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert platform.master_host() == target, "the master did not move to the chosen replica"


def drill_failover(platform: Platform, name: str = "failover") -> Result:
    """The planned switchover (playbooks/failover.yml) to a replica named by host."""

    def switch(master: str) -> None:
        switch_over(platform, next(h for h in platform.group.nodes if h != master))

    return _queued_across(platform, name, switch)


def drill_rolling_restart(platform: Platform, name: str = "rolling-restart") -> Result:
    """playbooks/rolling_restart.yml: every data node (the master after a switchover), every
    Sentinel, Apache and the workers, one at a time, with the workers running."""
    master = platform.master_host()
    # One client: the run restarts every worker once, and every job enqueued meanwhile must
    # still be run before the drill ends (two clients left ~2,000 jobs to drain on two cores).
    with under_load(platform, name, clients=1, pause=0.05) as load:
        began = time.monotonic()
        run = run_playbook(playbook=str(KIT / "playbooks" / "rolling_restart.yml"))
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
        _settle(load)
    took = time.monotonic() - began
    # The workers were restarted on purpose: compare against the state after the run.
    before = platform.workers_state()
    moved = platform.master_host() != master
    return _finish(
        platform, name, load, began, before, f"{took:.0f} s, master {'moved' if moved else 'kept'}"
    )


# How long the master's server takes to start again in `deploy-restart`: past the development
# topology's down-after (2 s) and the Sentinels' election, so they fail over meanwhile unless
# the run has moved the master away first.
SLOW_START_SECONDS = 8


def drill_deploy_restart(platform: Platform, name: str = "deploy-restart") -> Result:
    """A deploy (`site.yml` on the data nodes) of a kit version whose systemd drop-in for the
    server differs from the one every data node runs on, as a new version's hardening does:
    the run restarts each server. The master's host takes SLOW_START_SECONDS to start its
    server again (a slow disk, a mount it waits for: an operator's drop-in that sleeps before
    the start stands for them)."""
    master = platform.master_host()
    unit = f"/etc/systemd/system/{platform.group.service}.service.d"
    slow = f"{unit}/zz-slow-start.conf"
    sh(master, f"printf '[Service]\\nExecStartPre=/bin/sleep {SLOW_START_SECONDS}\\n' > {slow}")
    for host in platform.group.nodes:
        sh(host, f"echo '# an older kit' >> {unit}/kit-hardening.conf && systemctl daemon-reload")
    try:
        with under_load(platform, name) as load:
            time.sleep(1)
            before = platform.workers_state()
            began = time.monotonic()
            run = run_playbook("--limit", ",".join(platform.group.nodes), playbook=str(KIT / "site.yml"))
            took = time.monotonic() - began
            assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
            _settle(load)
    finally:
        sh(master, f"rm -f {slow} && systemctl daemon-reload")
    platform.wait_healthy()
    now = platform.master_host()
    # The run's own switchover reports "every Sentinel agrees" (roles/redis, tasks/failover.yml).
    switched = "(every Sentinel agrees;" in " ".join(run.stdout.split())
    how = "switched over by the run" if switched else "not by the run"
    moved = f"master {'moved' if now != master else 'kept'} ({master} -> {now}, {how})"
    return _finish(platform, name, load, began, before, f"run {took:.0f} s, {moved}")


def drill_restart(platform: Platform, name: str = "restart") -> Result:
    """`systemctl restart` of the master's server (the AOF replays at start-up)."""
    return _queued_across(platform, name, lambda master: restart_server(platform.group, master))


def drill_crash(platform: Platform, name: str = "crash") -> Result:
    """SIGKILL of the master's server, restarted by systemd within 100 ms (below Sentinel's
    down-after)."""

    def crash(master: str) -> None:
        pid = server_pid(platform.group, master)
        kill_server(platform.group, master, restart=True)
        wait_for(
            lambda: (
                server_pid(platform.group, master) not in ("", "0", pid)
                and loaded(platform.group, platform.addresses[master])
            ),
            30,
            "systemd to restart the server",
        )

    return _queued_across(platform, name, crash)


def drill_power_cut(platform: Platform, name: str = "power-cut") -> Result:
    """Every data host lost at once (docker kill: Redis and Sentinel with them) and powered
    back on with its disk. The page cache survives on this machine, so this proves the
    start-up path, not fsync (see the README on appendfsync)."""
    data = list(platform.group.nodes)
    with under_load(platform, name) as load:
        time.sleep(1)
        before = platform.workers_state()
        began = time.monotonic()
        for host in data:
            lose_host(host)
        time.sleep(2)
        for host in data:
            return_host(host)
        _settle(load)
    return _finish(platform, name, load, began, before)


def drill_lose_master_host(
    platform: Platform, name: str = "host-loss", restart_replica_first: bool = False
) -> Result:
    """The master's whole host lost (no TCP reset reaches anyone), brought back later. With
    `restart_replica_first`, the replica was restarted just before: once promoted it must
    still hold every job (it resynchronised from the master after its own restart)."""
    master = platform.master_host()
    detail = ""
    with under_load(platform, name) as load:
        if restart_replica_first:
            for host in platform.replica_hosts():
                restart_server(platform.group, host)
            platform.wait_healthy()
            detail = "replica restarted first"
        time.sleep(1)
        before = platform.workers_state()
        began = time.monotonic()
        lose_host(master)
        old = platform.addresses[master]
        wait_for(
            lambda: {a for a in platform.group.masters_named().values() if a} - {f"{old}:6379"},
            60,
            "a new master",
        )
        promoted = time.monotonic() - began
        _settle(load, 0.5)
        # The host stays lost (for hours, in the world): the platform must serve meanwhile.
        serving = time.monotonic()
        time.sleep(2.5)
        rates = (load.rate(began - 1, began), load.rate(serving, time.monotonic()))
    return_host(master)
    return _finish(
        platform,
        name,
        load,
        began,
        before,
        f"{detail + '; ' if detail else ''}promoted after {promoted:.2f}s",
        rates,
    )


def drill_freeze_master(platform: Platform, name: str = "freeze") -> Result:
    """The master's host frozen (docker pause) past a failover, then thawed: it wakes up
    believing it is the master until Sentinel demotes it; nothing it accepts then may be
    acknowledged."""
    master = platform.master_host()
    old = platform.addresses[master]
    with under_load(platform, name) as load:
        time.sleep(1)
        before = platform.workers_state()
        began = time.monotonic()
        freeze_host(master)
        try:
            wait_for(
                lambda: {a for a in platform.group.masters_named().values() if a} - {f"{old}:6379"},
                60,
                "a new master",
            )
            time.sleep(1)
        finally:
            thaw_host(master)
        woke = time.monotonic()
        # Keep writing while it is awake and not yet demoted (Sentinel converts it ~8-10 s later).
        wait_for(lambda: platform.group.role(old).get("role") == "slave", 60, "the old master to be demoted")
        demoted = time.monotonic() - woke
        _settle(load)
    return _finish(platform, name, load, began, before, f"old master demoted {demoted:.1f}s after it woke")


def drill_partition(platform: Platform, name: str = "partition", hold: float | None = None) -> Result:
    """Jepsen's case: the master cut from its replica, the workers and two of the three
    Sentinels (its own stays with it), while the web tier still reaches it; held longer than
    repl-timeout, then healed. On the web host the Sentinel's traffic to the master is cut
    but not the app's (an asymmetric partition, by system user)."""
    master = platform.master_host()
    hold = hold if hold is not None else repl_timeout(platform) + 5
    others = [h for h in platform.group.nodes if h != master] + [h for h in platform.workers if h != master]
    sentinel_hosts = [h for h in platform.group.sentinels if h != master]
    cut_hosts = [master, *[h for h in sentinel_hosts if h not in others]]
    with under_load(platform, name) as load:
        time.sleep(1)
        before = platform.workers_state()
        began = time.monotonic()
        try:
            for peer in others:
                cut(platform, master, peer)
            for host in sentinel_hosts:
                if host in others:
                    continue  # already cut whole
                cut(platform, master, host, port=26379)
                cut(platform, host, master, user=platform.sentinel_user(host))
            time.sleep(hold)
        finally:
            heal(*cut_hosts)
        healed = time.monotonic()
        old = platform.addresses[master]
        wait_for(lambda: platform.group.role(old).get("role") == "slave", 90, "the old master to be demoted")
        demoted = time.monotonic() - healed
        _settle(load)
    return _finish(
        platform,
        name,
        load,
        began,
        before,
        f"held {hold:.0f}s; old master demoted {demoted:.1f}s after the heal",
    )


def drill_lose_worker_host(platform: Platform, name: str = "worker-host-loss", hold: float = 5.0) -> Result:
    """A worker host lost while every one of its workers runs a job (no TCP reset reaches
    Redis), powered back on `hold` seconds later. Its units start again with it and retry at
    once the jobs their last processes were running (`--recover`), instead of after the jobs'
    heartbeat has lapsed; the jobs acknowledged meanwhile wait in their queues; none is lost.
    `rerun_after`: from the host's return until every job had run."""
    host = platform.workers[0]
    units = sum(1 for unit in platform.workers_state() if unit.startswith(f"{host}/"))
    http = Http(platform.addresses[platform.web])
    with under_load(platform, name) as load:
        running = [http.post("/jobs", {"task": "sleep", "args": [5]}).json()["job_id"] for _ in range(units)]

        def started() -> dict[str, int] | None:
            jobs = {j: http.get(f"/jobs/{j}").json() for j in running}
            if any(job["status"] != "started" for job in jobs.values()):
                return None
            return {j: job["retries_left"] for j, job in jobs.items()}

        retries = wait_for(started, 30, f"every worker of {host} to run a job")
        began = time.monotonic()
        lose_host(host)
        time.sleep(hold)
        return_host(host)
        back = time.monotonic()
        _settle(load, 0.5)
    before = platform.workers_state()  # its units started again with the host
    result = _finish(platform, name, load, began, before, also=running)
    result.rerun_after = round(time.monotonic() - back, 2)
    result.in_flight = len(running)
    result.retried = sum(http.get(f"/jobs/{j}").json()["retries_left"] < left for j, left in retries.items())
    result.detail = (
        f"{result.retried} of the {result.in_flight} jobs it was running retried; every job run "
        f"{result.rerun_after:.1f}s after the host's return"
    )
    return result


def drill_disk_full(platform: Platform, name: str = "disk-full") -> Result:
    """The master's disk fills up (a file grows until ENOSPC): it refuses every write
    (MISCONF) and Sentinel's PING, so the Sentinels fail it over; the app and the workers
    follow the new master (no worker restarts, no job retried because its outcome could not
    be recorded), and once the disk is freed the old master comes back as a replica. Its
    directory is first put on a small filesystem of its own (small_disk), as a replica, which
    a planned failover then makes the master."""
    group = platform.group
    host = platform.replica_hosts()[0]
    with small_disk(group, host) as directory:
        platform.wait_healthy()
        switch_over(platform, host)
        platform.wait_healthy()
        address = f"{platform.addresses[host]}:6379"
        assert platform.master_host() == host, f"{host} is no longer the master"
        assert group.role(group.nodes[host]).get("role") == "master", f"{host} is not a master"
        with under_load(platform, name) as load:
            time.sleep(1)
            before = platform.workers_state()
            began = time.monotonic()
            fill_disk(group, host, directory)
            wait_for(lambda: {a for a in group.masters_named().values() if a} - {address}, 60, "a new master")
            promoted = time.monotonic() - began
            _settle(load)
            free_disk(host, directory)
            freed = time.monotonic()
            node = group.nodes[host]
            wait_for(lambda: group.role(node).get("role") == "slave", 60, "the old master to rejoin")
            rejoined = time.monotonic() - freed
        result = _finish(
            platform,
            name,
            load,
            began,
            before,
            f"promoted after {promoted:.2f}s; a replica again {rejoined:.1f}s after its disk was freed",
        )
        platform.wait_healthy()
    result.failed_runs = len(retried(group, load.acknowledged()))
    result.detail += f"; {result.failed_runs} job(s) retried after a failed run"
    return result


def app_daemons(platform: Platform) -> set[str]:
    """The PIDs of the app's mod_wsgi daemon processes on the web host (its user runs them)."""
    found = sh(platform.web, f"pgrep -u {platform.app} -d, -f '^[(]wsgi:'", check=False)
    return set(filter(None, found.strip().split(",")))


def drill_web_reload(platform: Platform, name: str = "web-reload", reloads: int = 5) -> Result:
    """Apache reloaded `reloads` times under a heavier load (`systemctl reload`: what logrotate's
    postrotate runs every night, and the kit's handlers on a changed configuration). Each
    reload starts the app's mod_wsgi daemon processes again while requests are on their way to
    the old ones: a request that meets no daemon must get a 503 that says when to retry. The
    six clients stay below the daemons' threads (see the README on a reload under more)."""

    def replaced(old: set[str]) -> bool:
        new = app_daemons(platform)
        return bool(new) and not new & old

    with under_load(platform, name, clients=6, pause=0.005) as load:
        time.sleep(1)
        before = platform.workers_state()
        began = time.monotonic()
        for _ in range(reloads):
            old = app_daemons(platform)
            sh(platform.web, "systemctl reload apache2")
            wait_for(lambda old=old: replaced(old), 30, "mod_wsgi to start the app's daemon processes again")
            _settle(load, 0.5)
    return _finish(platform, name, load, began, before, f"{reloads} reloads")


def drill_app_crash(platform: Platform, name: str = "app-crash", crashes: int = 5) -> Result:
    """One of the app's mod_wsgi daemon processes SIGKILLed under web-reload's load, `crashes`
    times, as the OOM killer or a crash in a C extension ends one; mod_wsgi starts another. The
    requests it held die with it, and mod_wsgi answers them 500 ("Truncated or oversized
    response headers"): the job may or may not be written. Each must get a 503 that says when
    to retry (role wsgi_site's wsgi_site_error_statuses), and every 202 a job that runs; then
    each refused request, sent again with its key, is acknowledged (a replay where its job had
    been written) and its job runs."""
    killed = []
    with under_load(platform, name, clients=6, pause=0.005) as load:
        time.sleep(1)
        before = platform.workers_state()
        began = time.monotonic()
        for round_ in range(crashes):
            daemons = sorted(app_daemons(platform))
            victim = daemons[round_ % len(daemons)]
            sh(platform.web, f"kill -KILL {victim}")
            killed.append(victim)

            def replaced(victim: str = victim, count: int = len(daemons)) -> bool:
                now = app_daemons(platform)
                return victim not in now and len(now) == count

            wait_for(replaced, 30, "mod_wsgi to start another daemon process")
            _settle(load, 0.5)
    retried = load.retry_refused()
    acked = [a for a in retried if a.status == 202 and a.job_id]
    written = sum(a.replayed for a in acked)
    detail = (
        f"{len(killed)} daemon processes SIGKILLed; {len(acked)} of {len(retried)} refused requests "
        f"acknowledged when sent again with their keys ({written} had been written: a replay)"
    )
    result = _finish(platform, name, load, began, before, detail, also=[a.job_id for a in acked if a.job_id])
    result.refused_retried, result.refused_written = len(acked), written
    return result


def drill_log_rotation(platform: Platform, name: str = "log-rotation") -> Result:
    """The nightly rotation of Apache's logs (`logrotate --force /etc/logrotate.d/apache2`, what
    logrotate.timer runs) under web-reload's load. The kit rotates them with copytruncate
    (role apache): Apache is not reloaded, its app daemons keep their processes, no request
    waits, and Apache goes on writing into the emptied logs."""
    log = f"/var/log/apache2/{platform.app}-access.log"
    with under_load(platform, name, clients=6, pause=0.005) as load:
        time.sleep(1)
        before = platform.workers_state()
        daemons = app_daemons(platform)
        began = time.monotonic()
        sh(platform.web, "logrotate --force /etc/logrotate.d/apache2")
        _settle(load, 1.0)
    kept = app_daemons(platform) == daemons
    written = int(sh(platform.web, f"wc -l < {log}").strip())
    rotated = sh(platform.web, f"ls {log}.1", check=False).strip() == f"{log}.1"
    assert rotated, f"logrotate did not rotate {log}"
    assert written > 0, f"Apache wrote nothing into {log} after its rotation"
    return _finish(
        platform,
        name,
        load,
        began,
        before,
        f"app daemons {'kept' if kept else 'started again (Apache reloaded)'}; "
        f"{written} requests logged in {log} since its rotation",
    )


def sentinels_seeing_down(group: Group, address: str) -> int:
    """How many Sentinels flag the replica at `address` down (s_down): none of them would
    promote it."""
    down = 0
    for sentinel in group.sentinels.values():
        with group.sentinel(sentinel) as conn:
            replicas = conn.command("SENTINEL", "REPLICAS", group.master_name)
        states = [dict(zip(*[iter(r)] * 2, strict=True)) for r in replicas]
        down += any(s["ip"] == address and "s_down" in s["flags"] for s in states)
    return down


def drill_replica_disk_full(
    platform: Platform, name: str = "replica-disk-full", full_for: float = 12.0
) -> Result:
    """A replica's disk fills up and stays full for `full_for` seconds under load, then is
    freed. Nothing acknowledged is lost either way. With the kit's default (roles/redis,
    redis_replica_ignore_disk_write_errors: true) it goes on confirming writes and refuses
    Sentinel's PING, so every Sentinel sees it down; its AOF is left with a hole, which
    kit-aof-guard's rewrite ends once the disk has room (or kit-aof-repair.py removes before
    its next start, small_disk's). With Redis' default (false) the replica stops on its first
    failed AOF write, systemd starts it again, and it cannot resynchronise until the disk has
    room: with one replica the app acknowledges nothing meanwhile (503)."""
    group = platform.group
    host = platform.replica_hosts()[0]
    address = group.nodes[host]

    def server() -> str:
        return sh(host, f"systemctl show -p MainPID,NRestarts {group.service}").strip()

    def written() -> bool:
        with group.node(address) as conn:
            status = parse_info(conn.command("INFO", "persistence")).get("aof_last_write_status")
        return status == "ok" and sentinels_seeing_down(group, address) == 0

    since = int(time.time())
    with small_disk(group, host) as directory:
        platform.wait_healthy()
        started = server()
        with under_load(platform, name) as load:
            time.sleep(1)
            before = platform.workers_state()
            began = time.monotonic()
            fill_disk(group, host, directory, stopped=lambda: server() != started)
            seen_down: float | None = None
            try:
                wait_for(
                    lambda: sentinels_seeing_down(group, address) == len(group.sentinels),
                    10,
                    f"every Sentinel to see {host} down",
                    0.2,
                )
                seen_down = time.monotonic() - began
            except AssertionError as late:
                if server() == started:  # the kit's default: it runs on and refuses Sentinel's PING
                    raise AssertionError(f"{late}; {host} kept running with its disk full") from None
                # One that stopped and started (Redis' default) may not be seen down: a note.
            time.sleep(max(0.0, began + full_for - time.monotonic()))  # the fault lasts full_for
            free_disk(host, directory)
            freed = time.monotonic()
            wait_for(written, 60, f"{host} to write what it held and be seen up again", 0.2)
            back = time.monotonic() - freed

            def rewritten() -> bool:
                guard = sh(host, f"journalctl -u kit-aof-guard --since @{since} -o cat", check=False)
                return "AOF was rewritten" in guard

            guarded = "not rewritten by kit-aof-guard"  # a replica that was restarted has nothing to do
            try:
                wait_for(rewritten, 30, "kit-aof-guard to rewrite the AOF", 0.2)
                guarded = f"rewritten by kit-aof-guard {time.monotonic() - freed:.1f}s after it had room"
            except AssertionError as late:
                if server() == started:  # it kept running: its AOF has a hole only a rewrite ends
                    raise AssertionError(f"{late}; {host} kept running through its full disk") from None
            _settle(load)
        result = _finish(
            platform,
            name,
            load,
            began,
            before,
            (
                f"every Sentinel saw the replica down after {seen_down:.1f}s"
                if seen_down is not None
                else "not seen down"
            )
            + f"; its disk full for {freed - began:.0f}s; written and up {back:.1f}s after it was freed"
            + f"; the replica {'kept running' if server() == started else 'was restarted'}"
            + f"; its AOF {guarded}",
        )
        platform.wait_healthy()
    # small_disk started the server again: the hole the full disk may have left in its AOF
    # (roles/redis/files/kit-aof-repair.py) was removed first, or the server would not have loaded.
    repairs = sh(host, f"journalctl -u {group.service} --since @{since} -o cat | grep 'NUL bytes' || true")
    guard = sh(host, f"journalctl -u kit-aof-guard --since @{since} -o cat", check=False)
    exposed = exposure(sh(host, f"journalctl -u {group.service} --since @{since} -o short-unix", check=False))
    result.detail += (
        f"; kit-aof-guard rewrote its AOF {guard.count('AOF was rewritten')} time(s)"
        + (f", {', '.join(f'{e:.3f}' for e in exposed)}s after the server wrote it again" if exposed else "")
        + f"; its next start removed {len(repairs.splitlines())} hole(s) from its AOF"
    )
    return result


def exposure(journal: str) -> list[float]:
    """From a data node's journal (`-o short-unix`, journald's time of each line): for each
    time the server wrote its AOF again after a failed write, the seconds until a rewrite
    began (a second full disk meanwhile could cut commands out of the file: roles/redis "A
    full disk")."""
    delays, solved = [], None
    for line in journal.splitlines():
        when = line.split(" ", 1)[0]
        if "AOF write error looks solved" in line:
            solved = solved or float(when)  # the first since the last rewrite
        elif "append only file rewriting started" in line and solved is not None:
            delays.append(float(when) - solved)
            solved = None
    return delays


def repl_timeout(platform: Platform) -> int:
    with platform.group.node(platform.group.current_master()) as conn:
        return int(conn.command("CONFIG", "GET", "repl-timeout")[1])


DRILLS: dict[str, Callable[[Platform], Result]] = {
    "failover": drill_failover,
    "rolling-restart": drill_rolling_restart,
    "restart": drill_restart,
    "deploy-restart": drill_deploy_restart,
    "crash": drill_crash,
    "power-cut": drill_power_cut,
    "host-loss": drill_lose_master_host,
    "replica-restart+host-loss": lambda p: drill_lose_master_host(
        p, "replica-restart+host-loss", restart_replica_first=True
    ),
    "freeze": drill_freeze_master,
    "partition": drill_partition,
    "worker-host-loss": drill_lose_worker_host,
    "disk-full": drill_disk_full,
    "replica-disk-full": drill_replica_disk_full,
    "web-reload": drill_web_reload,
    "app-crash": drill_app_crash,
    "log-rotation": drill_log_rotation,
}


def summary(results: list[Result]) -> list[dict]:
    """One row per fault: drills, acknowledged, lost, 5xx, 503, write gap median and max,
    acknowledgements per second while a lost host is away."""
    rows = []
    for fault, group in itertools.groupby(sorted(results, key=lambda r: r.fault), key=lambda r: r.fault):
        runs = list(group)
        gaps = [r.write_gap for r in runs]
        during = [r.rate_during for r in runs if r.rate_during is not None]
        reruns = [r.rerun_after for r in runs if r.rerun_after is not None]
        failed = [r.failed_runs for r in runs if r.failed_runs is not None]
        before = [r.rate_before for r in runs if r.rate_before is not None]
        rows.append(
            {
                "fault": fault,
                "drills": len(runs),
                "acknowledged": sum(r.acknowledged for r in runs),
                "lost": sum(r.lost for r in runs),
                "not_run": sum(r.unfinished for r in runs),
                "5xx": sum(r.errors_5xx for r in runs),
                "503": sum(r.unavailable_503 for r in runs),
                "503_bare": sum(r.bare_503 for r in runs),
                "unanswered": sum(r.unanswered for r in runs),
                "write_gap_median": round(statistics.median(gaps), 2),
                "write_gap_max": round(max(gaps), 2),
                "longest_request": round(max(r.longest for r in runs), 2),
                # Median acknowledgements per second once failed over with the host still lost
                # (before the fault), host-loss drills only.
                "rate_host_away": (
                    f"{statistics.median(during)} ({statistics.median(before)})" if during else "-"
                ),
                "workers_restarted": sum(len(r.workers_restarted) for r in runs),
                # Slowest drill: from a lost worker host's return until every job had run.
                "rerun_after_max": max(reruns) if reruns else "-",
                "failed_runs": sum(failed) if failed else "-",
            }
        )
    return rows
