"""Helpers shared by the scenarios' testinfra tests.

Tests talk to the servers the way clients do (over TCP from the controller, which reaches the
containers' addresses on the Docker network) and to the hosts through testinfra.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypeVar

import testinfra
import testinfra.utils.ansible_runner
from kit_redis import Connection, ReplyError, pairs, parse_info

T = TypeVar("T")
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
SCENARIO_DIR = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", "")

__all__ = ["Connection", "ReplyError", "pairs", "parse_info"]


@cache
def get_host(name: str) -> testinfra.host.Host:
    """A testinfra host from the scenario's inventory."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@cache
def hostvars(name: str) -> dict:
    return get_host(name).ansible.get_variables()


@cache
def rendered(name: str, expression: str) -> object:
    """A Jinja expression evaluated by Ansible for inventory host `name`: variables that are
    templates (lookups, other variables) come out as the playbook sees them."""
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    task = ["-m", "ansible.builtin.debug", "-a", f"msg={{{{ {expression} }}}}"]
    cmd = ["ansible", "-i", INVENTORY, name, *task]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    try:
        # The document sits between the lines of ansible.cfg's timing callback.
        document, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{") :])
        return document["plays"][0]["tasks"][0]["hosts"][name]["msg"]
    except (ValueError, KeyError, IndexError) as error:
        said = f"{proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        raise AssertionError(f"cannot evaluate {expression!r} for {name}: {said}") from error


def tls_client(ca_pem: str | None) -> ssl.SSLContext | None:
    """A TLS client context trusting only `ca_pem` (certificate and address checked), or None."""
    return ssl.create_default_context(cadata=ca_pem) if ca_pem else None


def hosts_in(group: str) -> list[str]:
    """Inventory hosts of a group, in inventory order. testinfra's shared runner reads the
    scenario's inventory once (a runner of its own would run `ansible-inventory --list`, about
    2 s, on every call)."""
    return testinfra.utils.ansible_runner.AnsibleRunner.get_runner(INVENTORY).get_hosts(group)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, ReplyError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


def journal(host: testinfra.host.Host, unit: str, lines: int = 60) -> str:
    return host.run(f"journalctl -u {unit} --no-pager -n {lines}").stdout


def assert_running(host: testinfra.host.Host, unit: str) -> None:
    """Assert a unit runs and is enabled; print its journal when it does not."""
    service = host.service(unit)
    if not (service.is_running and service.is_enabled):
        print(f"--- journal of {unit} on {host.backend.get_hostname()} ---\n{journal(host, unit)}")
    assert service.is_running, f"{unit} is not running"
    assert service.is_enabled, f"{unit} is not enabled"


_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def _playbook_command(extra_args: tuple[str, ...], playbook: str, inventory: str | None) -> list[str]:
    inventory = inventory or INVENTORY
    if not inventory:
        raise RuntimeError("no inventory: run under Molecule or set kit_checks.INVENTORY")
    return ["ansible-playbook", "-i", inventory, os.path.join(SCENARIO_DIR, playbook), *extra_args]


_PLAIN_OUTPUT = {"ANSIBLE_FORCE_COLOR": "false", "ANSIBLE_NOCOLOR": "true"}


def run_playbook(
    *extra_args: str, playbook: str = "converge.yml", inventory: str | None = None
) -> subprocess.CompletedProcess:
    """Run one of the scenario's playbooks (converge by default) with Molecule's settings.
    The inventory is read at each call (`make chaos` sets INVENTORY after importing this
    module): an empty -i would make Ansible run every executable of the directory as one."""
    cmd = _playbook_command(extra_args, playbook, inventory)
    env = dict(os.environ, **_PLAIN_OUTPUT)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


def kill_playbook_after(task: str, *extra_args: str, playbook: str = "converge.yml", changes: int = 1) -> str:
    """Run a playbook as run_playbook does and SIGKILL it, with every process it started on
    this machine, the moment the task named reports a change (on `changes` hosts): a controller
    lost mid-run (a laptop's connection, a CI job cancelled). Returns its output up to then;
    fails when the task did not change anything or the run ended first."""
    cmd = _playbook_command(extra_args, playbook, None)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **_PLAIN_OUTPUT)
    run = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    said: list[str] = []
    armed, changed = False, 0
    assert run.stdout is not None
    for line in run.stdout:
        said.append(line)
        if line.startswith("TASK ["):
            armed = task in line
        elif armed and line.startswith("changed:"):
            changed += 1
            if changed < changes:
                continue
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            return "".join(said)
    run.wait()
    ended = f"the run ended (exit {run.returncode}) before {task!r} changed anything"
    raise AssertionError(f"{ended}: {''.join(said)[-3000:]}")


def play_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of an ansible-playbook run, per host."""
    return {
        m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
        for m in _RECAP.findall(output)
    }


def changed_tasks(output: str) -> list[str]:
    """Each task an ansible-playbook run reported changed, with the host: "TASK [...] host"."""
    found, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK [") or line.startswith("RUNNING HANDLER ["):
            task = line.rstrip(" *")
        elif line.startswith("changed: ["):
            found.append(f"{task} {line.split(']')[0][len('changed: [') :]}")
    return found


def converge(*extra_args: str) -> dict[str, dict[str, int]]:
    """Run the scenario's converge playbook again; return the PLAY RECAP per host."""
    proc = run_playbook(*extra_args)
    recap = play_recap(proc.stdout)
    if proc.returncode != 0 or not recap:
        print(proc.stdout[-20000:], proc.stderr[-5000:])
        raise AssertionError(f"converge failed (exit {proc.returncode})")
    changed = [line for line in proc.stdout.splitlines() if line.startswith("changed:")]
    if any(r["changed"] for r in recap.values()):
        print("\n".join(changed) or proc.stdout[-20000:])
    return recap


def _score(output: str) -> float:
    """The overall exposure level `systemd-analyze security` ends with."""
    return float(output.strip().splitlines()[-1].split(":")[1].split()[0])


def unit_exposure(host: testinfra.host.Host, unit: str) -> float:
    """`systemd-analyze security` exposure of a unit as deployed (0 best, 10 worst)."""
    return _score(host.run(f"systemd-analyze security {unit} --no-pager").stdout)


def exposure(host: testinfra.host.Host, unit: str) -> tuple[float, float]:
    """`systemd-analyze security` exposure of the unit as deployed, and of Debian's unit file
    alone (analysed offline), printing both and the container relaxations applied."""
    ours = host.run(f"systemd-analyze security {unit} --no-pager").stdout
    vendor = host.run(f"systemd-analyze security --offline=true /lib/systemd/system/{unit}").stdout
    relaxed = host.run(f"cat /etc/systemd/system/{unit}.d/kit-container.conf 2>/dev/null").stdout
    print(f"\n{unit}: exposure {_score(ours)} as deployed, {_score(vendor)} for Debian's unit alone")
    print("container relaxations: " + (" ".join(relaxed.split("[Service]")[-1].split()) or "none"))
    return _score(ours), _score(vendor)


def resolve(variables: dict, value: object, depth: int = 5) -> object:
    """Follow plain `{{ name }}` references of inventory variables (the inventories point
    role variables at vault_* ones); anything more complex is returned unchanged."""
    match = re.fullmatch(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", value) if isinstance(value, str) else None
    if match and depth and match.group(1) in variables:
        return resolve(variables, variables[match.group(1)], depth - 1)
    return value


@dataclass
class Group:
    """One Sentinel-managed group as the inventory describes it."""

    name: str
    flavor: str
    master_name: str
    nodes: dict[str, str]  # inventory host -> address
    sentinels: dict[str, str]
    admin: tuple[str, str]
    sentinel_password: str
    sentinel_client: tuple[str, str]  # what the app logs in to Sentinel as
    app: tuple[str, str]
    down_after_ms: int
    tls_ca: str | None = None  # the CA (PEM) when Redis and Sentinel speak TLS only

    @property
    def tls(self) -> ssl.SSLContext | None:
        return tls_client(self.tls_ca)

    @property
    def service(self) -> str:
        return f"{self.flavor}-server"

    def node(self, address: str, user: tuple[str, str] | None = None, timeout: float = 1.0) -> Connection:
        """A connection to a data node; `timeout` longer than any WAIT sent on it."""
        username, password = user or self.admin
        return Connection(address, 6379, username, password, timeout=timeout, tls=self.tls)

    def sentinel(self, address: str, user: tuple[str, str] | None = None) -> Connection:
        username, password = user or (None, self.sentinel_password)
        return Connection(address, 26379, username, password, timeout=1.0, tls=self.tls)

    def masters_named(self) -> dict[str, str | None]:
        """What each reachable Sentinel says the master is ("ip:port")."""
        named = {}
        for address in self.sentinels.values():
            try:
                with self.sentinel(address) as conn:
                    reply = conn.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                named[address] = ":".join(reply) if reply else None
            except OSError:
                named[address] = None
        return named

    def role(self, address: str) -> dict[str, str]:
        with self.node(address) as conn:
            return parse_info(conn.command("INFO", "replication"))

    def current_master(self) -> str:
        answers = {a for a in self.masters_named().values() if a}
        assert len(answers) == 1, f"Sentinels disagree on the master: {answers}"
        return answers.pop().split(":")[0]

    def settled_master(self) -> str | None:
        """The master, once every Sentinel names it, sees it up with no failover under way
        (flags "master" alone), and has heard it within half of down-after-milliseconds (so
        none is about to find it down): else None. A restart that outlasted down-after (a slow
        start on a loaded machine) leads to a failover a test must not read half-way."""
        named = set()
        for address in self.sentinels.values():
            try:
                with self.sentinel(address) as conn:
                    state = dict(pairs(conn.command("SENTINEL", "MASTER", self.master_name)))
            except (OSError, ReplyError):
                return None
            heard = int(state.get("last-ok-ping-reply", self.down_after_ms))
            if state.get("flags") != "master" or heard >= self.down_after_ms // 2:
                return None
            named.add(state.get("ip"))
        return named.pop() if len(named) == 1 else None

    def wait_settled(self, what: str = "the Sentinels to agree on a master, no failover under way") -> str:
        return wait_for(self.settled_master, 60, what, 0.2)

    def host_of(self, address: str) -> str:
        """The inventory name of the data node at `address`."""
        return next(h for h, a in self.nodes.items() if a == address)


def tls_ca(host: str | None = None) -> str:
    """The CA (PEM) of the Redis and Sentinel certificates as `host` (the first data node by
    default) sees it, when they speak TLS ('' when not)."""
    expression = "redis_tls_ca_certificate if redis_tls | default(false) else ''"
    return str(rendered(host or hosts_in("redis")[0], expression))


def load_group(
    members: list[str], data_group: str = "redis", sentinel_group: str = "redis_sentinel"
) -> Group:
    """A Sentinel-managed group from inventory hosts: its data nodes, Sentinels and secrets."""
    data = [h for h in members if h in hosts_in(data_group)]
    watchers = [h for h in members if h in hosts_in(sentinel_group)]
    v = hostvars(members[0])
    # The kit's inventories list the app's users in kit_app_redis_users (redis_acl_app_users
    # adds other apps' to them); a scenario of the data tier alone sets redis_acl_app_users.
    app = resolve(v, v.get("kit_app_redis_users", v["redis_acl_app_users"]))[0]
    return Group(
        name=members[0],
        flavor=resolve(v, v.get("redis_flavor", "redis")),
        master_name=resolve(v, v.get("redis_ha_master_name", "kit")),
        nodes={h: hostvars(h)["kit_address"] for h in data},
        sentinels={h: hostvars(h)["kit_address"] for h in watchers},
        admin=(
            resolve(v, v.get("redis_acl_admin_user", "kit-admin")),
            resolve(v, v["redis_acl_admin_password"]),
        ),
        sentinel_password=resolve(v, v["redis_sentinel_password"]),
        sentinel_client=(
            resolve(v, v.get("redis_sentinel_client_user", "kit-client")),
            resolve(v, v["redis_sentinel_client_password"]),
        ),
        app=(resolve(v, app["name"]), resolve(v, app["password"])),
        down_after_ms=int(resolve(v, v["redis_sentinel_down_after_ms"])),
        tls_ca=tls_ca(data[0]) or None,
    )


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Http:
    """A tiny HTTP client for the app's VirtualHost (no redirects, no retries). With `cafile`,
    HTTPS that trusts only that certificate (checked against the address). With `token`, every
    request carries it as the API's bearer token unless it names its own Authorization."""

    def __init__(self, address: str, cafile: str | None = None, token: str | None = None) -> None:
        self.base = f"https://{address}" if cafile else f"http://{address}"
        self.token = token
        handlers: list = [_NoRedirect]
        if cafile:
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=cafile)))
        self._opener = urllib.request.build_opener(*handlers)

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        url = self.base + path  # always the test host
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
        if self.token and not request.has_header("Authorization"):
            request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=30) as response:
                return Reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Reply(error.code, dict(error.headers), error.read())

    def get(self, path: str, **kwargs) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: dict | None = None, **kwargs) -> Reply:
        return self.request("POST", path, body=body, **kwargs)

    def wait_for_job(self, job_id: str, wanted: set[str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        job: dict = {}
        while time.monotonic() < deadline:
            job = self.get(f"/jobs/{job_id}").json()
            if job.get("status") in wanted:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not {wanted} within {timeout}s: {job}")


def installed_collection() -> Path:
    """The collection kit.jobqueue as the scenario's dependency step installed it
    (tools/install-collection.sh), checked to be the only one Ansible finds, a copy (not a link
    to the work tree) with its manifest, shipping neither tests nor inventories."""
    installed = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "collections"
    assert os.environ["ANSIBLE_COLLECTIONS_PATH"] == str(installed)
    listed = subprocess.run(
        ["ansible-galaxy", "collection", "list", "kit.jobqueue", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    found = {path: names for path, names in json.loads(listed.stdout).items() if "kit.jobqueue" in names}
    assert list(found) == [str(installed / "ansible_collections")], found
    collection = installed / "ansible_collections/kit/jobqueue"
    assert not collection.is_symlink(), "a link to the work tree, not an installed copy"
    manifest = json.loads((collection / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["name"] == "jobqueue"
    assert not (collection / "molecule").exists(), "tests are not shipped"
    assert not (collection / "inventories").exists(), "inventories (and their secrets) are not shipped"
    return collection
