"""The connection to Redis, only ever through Sentinel, and the failover retry policy.

Two rules keep a failover or a partition from losing acknowledged jobs:
- the master is the one a majority of the Sentinels name (`QuorumSentinel.discover_master`),
  never the first Sentinel that answers, which may be the old master's own in a partition;
- a write the replicas did not confirm is acknowledged only when a majority of the Sentinels
  name this very master and none of them sees a replica it could promote instead
  (`QuorumSentinel.sole_master_doubt`); otherwise the request is retried, then answered 503.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import ssl
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import SSLConnection
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection
from rq import Queue
from rq.registry import ScheduledJobRegistry

from .config import fail_fast_after

log = logging.getLogger(__name__)
T = TypeVar("T")

# Replies a server gives while a failover is under way (redis-py raises most of them as a
# plain ResponseError): retry them like connection errors.
TRANSIENT_REPLIES = ("READONLY", "UNBLOCKED", "NOREPLICAS", "LOADING", "MASTERDOWN", "TRYAGAIN")

# A peer that vanished without a TCP reset (a lost host) is noticed on an idle connection
# (the workers' pubsub) after 5 + 3 x 2 s instead of the kernel's two hours.
KEEPALIVE = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 5),
        (getattr(socket, "TCP_KEEPINTVL", None), 2),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}

# The handshake asks only for what the app's Redis users may run (roles/redis,
# redis_acl_rq_*_commands): no CLIENT SETINFO (Redis 7.2+ only, so not in the lists) and no
# CLIENT MAINT_NOTIFICATIONS (Redis Enterprise); either would be refused and fill ACL LOG.
QUIET_HANDSHAKE: dict[str, Any] = {
    "driver_info": None,
    "maint_notifications_config": MaintNotificationsConfig(enabled=False),
}

Address = tuple[str, int]


def tls_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The ssl_* arguments of every connection when REDIS_TLS is on (none when it is off):
    the server's certificate must chain to REDIS_TLS_CA (None: the system's trust store) and
    name the host or IP address connected to, the one in SENTINELS or the one the Sentinels
    report for the master. A `redis.Redis` also needs ssl=True (see `_client_tls`); the master
    pool gets them with FollowingSSLConnection."""
    if not config["REDIS_TLS"]:
        return {}
    return {"ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_ca_data": config["REDIS_TLS_CA"]}


def _client_tls(config: dict[str, Any]) -> dict[str, Any]:
    """`tls_kwargs` for a `redis.Redis(...)`, which uses the ssl_* arguments only with ssl=True
    (then `_shared_context` gives it KitSSLConnection's handshake)."""
    tls = tls_kwargs(config)
    return {"ssl": True, **tls} if tls else {}


_CONTEXTS: dict[str | None, ssl.SSLContext] = {}


def tls_context(ca: str | None) -> ssl.SSLContext:
    """The client TLS context for a CA (PEM text; None: the system's trust store), made once per
    process and inherited by forked work horses: TLS 1.2 or newer, the certificate verified and
    its name checked, and only that CA trusted."""
    context = _CONTEXTS.get(ca)
    if context is None:
        context = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _CONTEXTS[ca] = context
    return context


class KitSSLConnection(SSLConnection):
    """redis-py's SSLConnection makes a new SSLContext for every connection, loading the
    system's trust store first (about 15 ms, and those CAs are then trusted besides
    REDIS_TLS_CA); an RQ work horse reconnects for every job. This one wraps the socket with the
    shared context of `tls_context`, so a reconnection costs the handshake alone. The kit's
    servers ask no client certificate (tls-auth-clients no: ACL passwords authenticate); a
    connection given one anyway is made by redis-py's own code, which presents it."""

    def _wrap_socket_with_ssl(self, sock: socket.socket) -> ssl.SSLSocket:
        if self.certfile:
            return super()._wrap_socket_with_ssl(sock)
        return tls_context(self.ca_data).wrap_socket(sock, server_hostname=self.host)


def _shared_context(client: redis.Redis) -> redis.Redis:
    """A client made with ssl=True connects with KitSSLConnection (redis.Redis chooses
    SSLConnection itself when ssl is on); its pool has made no connection yet."""
    if client.connection_pool.connection_class is SSLConnection:
        client.connection_pool.connection_class = KitSSLConnection
    return client


class Unavailable(Exception):
    """Redis could not be reached within the retry budget (answered as 503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FailingFast(Unavailable):
    """Answered at once in a long outage while another request tries Redis (Store._probe_lock);
    the log says when that begins and ends, not once per request."""


class Full(Unavailable):
    """The master's memory is (nearly) full. Enqueues are refused from ENQUEUE_MEMORY_LIMIT of
    its maxmemory on, so that the workers keep room to take and finish the jobs already queued:
    at maxmemory Redis refuses them too (LMOVE and HSET are "denyoom" commands), and the queue
    would never drain. Answered 503 at once: a retry within the request cannot help."""


# What a queued job adds to the master's memory when a worker finishes it (its result, kept for
# RESULT_TTL, and its registry entry): measured 1.1 to 1.8 kB with small results and the redis
# role's stream-node-max-bytes (5.4 kB with Redis' default); with 2 kB a test still met an OOM
# once (the workers' own connections and registries take some too). check_room counts this
# much room for each queued or scheduled job, so that the workers finish every job given them.
# Large results, or failures whose tracebacks are kept FAILURE_TTL, take more.
DRAIN_BYTES_PER_JOB = 3072


class Unconfirmed(Unavailable):
    """A write that may not be acknowledged yet (no replica confirmed it and the Sentinels do
    not vouch for this master alone): retried within the budget, then answered 503."""


class LoginRefused(Unavailable):
    """Redis refused the app's login (WRONGPASS, NOAUTH): a wrong REDIS_USERNAME or
    REDIS_PASSWORD, or a user the servers do not have. A configuration error, not a failover:
    no retry cures it, and it is said as it is (redis-py raises it as a ConnectionError)."""

    server = "Redis"  # who refused: said in public answers, without the user or the reason


class SentinelLoginRefused(LoginRefused, redis.ConnectionError):
    """So many Sentinels refused the app's login (SENTINEL_USERNAME, SENTINEL_PASSWORD) that those
    left could never name a master. Raised by QuorumSentinel.discover_master, under redis-py's
    connection code, and so also a ConnectionError: RQ's loops and redis-py's pipelines handle
    it as they handle an unreachable Sentinel, and a running worker rides it out, retrying, as
    it did a failover. Neither the kit's retries nor FailoverRetry take it for a failover."""

    server = "Sentinel"


def _login_refused(error: BaseException) -> bool:
    return isinstance(error, LoginRefused | redis.AuthenticationError) or (
        isinstance(error, redis.ResponseError) and str(error).upper().startswith(("WRONGPASS", "NOAUTH"))
    )


def login_refusal(error: BaseException, user: str | None) -> LoginRefused | None:
    """`error` as a LoginRefused naming `user` (the Redis user logged in as), when it is one."""
    if isinstance(error, LoginRefused):
        return error
    if not _login_refused(error):
        return None
    who = f"user {user}" if user else "the default user (REDIS_USERNAME is not set)"
    return LoginRefused(
        f"Redis refused the login of {who} ({error}): check the REDIS_USERNAME and REDIS_PASSWORD "
        "settings against the servers' ACL users"
    )


class FailoverRetry(Retry):
    """redis-py's Retry of a connection error, except a refused login (redis-py raises WRONGPASS
    as a ConnectionError): a configuration error that no retry cures. A worker with a wrong
    password spent its 30 connection retries (about 14 s) on each command first."""

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            return not _login_refused(error) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


class StaleMaster(redis.ConnectionError):
    """The server written to is not (or no longer) the master a majority of Sentinels name."""


def refusal(error: BaseException) -> Unavailable | None:
    """What a server's refusal to write means for the caller: memory full (OOM), not cured by
    a retry within a request; or a disk it cannot write (MISCONF) on a client of one node (on
    the master's pool it is a CannotPersist, retried until the Sentinels replace that master)."""
    text = str(error) if isinstance(error, redis.ResponseError) else ""
    if isinstance(error, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return Full(f"Redis refused a write: {text}")
    if text.startswith("MISCONF"):
        return Unavailable(f"Redis cannot write to its disk: {text}")
    return None


# A socket's failures (a file's, such as a missing or unreadable one, are bugs: a 500 with its
# traceback, not a 503 blamed on a failover).
NETWORK_ERRORS = (ConnectionError, TimeoutError, ssl.SSLError, socket.gaierror, socket.herror)
NETWORK_ERRNOS = frozenset(
    {
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.EHOSTDOWN,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.EADDRNOTAVAIL,
        errno.ENOBUFS,
        errno.EPROTO,
    }
)


def is_transient(error: BaseException) -> bool:
    """True for errors that a failover explains and a retry may cure (not a refused login,
    which redis-py raises as a ConnectionError)."""
    if _login_refused(error):
        return False
    if isinstance(error, Unconfirmed | redis.ConnectionError | redis.TimeoutError | redis.ReadOnlyError):
        return True
    if isinstance(error, OSError):  # a socket error redis-py did not wrap, not a file's
        return isinstance(error, NETWORK_ERRORS) or error.errno in NETWORK_ERRNOS
    if isinstance(error, redis.BusyLoadingError | redis.exceptions.TryAgainError):
        return True
    if isinstance(error, redis.ResponseError):
        text = str(error).upper()
        return text.startswith(TRANSIENT_REPLIES) or "READ ONLY REPLICA" in text
    return False


def _new_locks_after_fork() -> None:
    """A forked child (a worker's horse) has only the thread that forked: a lock another thread
    held at that moment would never be released there."""
    for sentinel in _QUORUM_SENTINELS:
        sentinel._order_lock = threading.Lock()
    for store in _STORES:
        store._probing, store._outage_lock = threading.RLock(), threading.Lock()


_QUORUM_SENTINELS: weakref.WeakSet[QuorumSentinel] = weakref.WeakSet()
_STORES: weakref.WeakSet[Store] = weakref.WeakSet()
os.register_at_fork(after_in_child=_new_locks_after_fork)


class QuorumSentinel(Sentinel):
    """redis-py's Sentinel client, asking for a majority instead of the first answer.

    Sentinels are asked in turn and the answer stops as soon as a majority of all the
    configured Sentinels agree, or can no longer agree. One that fails to answer (a lost or
    frozen host) moves to the back of the list and is marked silent until it answers again.
    `sole_master_doubt` asks a silent Sentinel last, and not at all when a majority of the
    others confirmed the master and see that Sentinel down themselves (`s_down`): while the
    master's host is lost with its Sentinel, every acknowledgement without a replica asks the
    Sentinels, and waiting for the lost one each time cost every such request SENTINEL_TIMEOUT
    (0.5 s). A Sentinel the others see up is asked as before, even when it did not answer this
    process last time: it may be the one to lead a failover, from its own view.
    """

    def __init__(self, sentinels: list[Address], **kwargs: Any) -> None:
        super().__init__(sentinels, **kwargs)
        self.majority = len(self.sentinels) // 2 + 1
        self._order_lock = threading.Lock()
        self._silent: set[int] = set()  # id() of the Sentinels whose last question failed
        _QUORUM_SENTINELS.add(self)

    def _unanswered(self, sentinel: redis.Redis) -> None:
        with self._order_lock:
            if sentinel in self.sentinels:
                self.sentinels.remove(sentinel)
                self.sentinels.append(sentinel)
            self._silent.add(id(sentinel))

    def _answered(self, sentinel: redis.Redis) -> None:
        self._silent.discard(id(sentinel))

    def silent(self) -> list[str]:
        """The Sentinels whose last question failed, by address."""
        return [_name(s) for s in list(self.sentinels) if id(s) in self._silent]

    def in_turn(self) -> tuple[list[redis.Redis], list[redis.Redis]]:
        """(the Sentinels that answered their last question, those that did not), in order."""
        order = list(self.sentinels)
        return [s for s in order if id(s) not in self._silent], [s for s in order if id(s) in self._silent]

    def discover_master(self, service_name: str) -> Address:
        votes: Counter[Address] = Counter()
        errors: list[str] = []
        refused: list[str] = []  # the Sentinels that refused this login
        order = list(self.sentinels)  # those that did not answer last are at the back
        for index, sentinel in enumerate(order):
            if max(votes.values(), default=0) + len(order) - index < self.majority:
                # The Sentinels left cannot make a majority: do not wait on them.
                errors += [f"{_name(s)}: not asked" for s in order[index:]]
                break
            try:
                state = sentinel.sentinel_master(service_name)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as error:
                if _login_refused(error):  # it answered: no to this login (not a failover)
                    self._answered(sentinel)
                    refused.append(f"{_name(sentinel)}: {error}")
                    continue
                if isinstance(error, redis.ResponseError):
                    self._answered(sentinel)
                    errors.append(f"{_name(sentinel)}: {error}")
                    continue
                errors.append(f"{_name(sentinel)}: {error}")
                self._unanswered(sentinel)
                continue
            self._answered(sentinel)
            if not self.check_master_state(state, service_name):
                continue  # it sees that master down: no vote
            address = (state["ip"], int(state["port"]))
            votes[address] += 1
            if votes[address] >= self.majority:
                return address
        errors += refused
        # Only when those that took the login could never make a majority: one Sentinel
        # refusing (a host a rotation missed) while another is lost or sees the master down
        # is a failover's, retried as before.
        if len(refused) > len(self.sentinels) - self.majority:
            user = self.sentinel_kwargs.get("username")
            who = f"user {user}" if user else "the default user (SENTINEL_USERNAME is not set)"
            raise SentinelLoginRefused(
                f"Sentinel refused the login of {who} ({'; '.join(refused)}): check the "
                "SENTINEL_USERNAME and SENTINEL_PASSWORD settings against the Sentinels' users"
            )
        seen = ", ".join(f"{h}:{p} x{n}" for (h, p), n in votes.items()) or "none"
        raise MasterNotFoundError(
            f"no master of {service_name!r} named by {self.majority} of {len(self.sentinels)} "
            f"Sentinels (votes: {seen}{'; ' + '; '.join(errors) if errors else ''})"
        )

    def sole_master_doubt(
        self, service_name: str, address: Address, deposed: Callable[[Address], bool]
    ) -> str | None:
        """Why a write that reached no replica may be lost on `address`, or None if it may not.

        None when a majority of the Sentinels answer, every one that answers names `address`
        as the master with no failover under way, and none lists a replica it could promote.
        A Sentinel that did not answer its last question is not waited for when a majority
        of the others confirm and see it down themselves (see the class).
        A replica cut off from the master only, as in a partition, is such a replica: the
        Sentinels could promote it, and what `address` accepted alone would vanish when it is
        demoted. So is a replica that reports itself master, unless `deposed` says it is the
        master this one was promoted from: after a failover Sentinel lists the old master as a
        replica at once but reconfigures it only some 8 s after it reports back as a master
        (SENTINEL_PUBLISH_PERIOD * 4), and counting it would refuse every unreplicated write
        for that long after each planned failover, a frozen master's return or a healed
        partition. (Writes accepted alone in those seconds are lost only if this master fails
        in turn before the old one has synced from it: a second fault.)
        """
        confirmed = 0
        seen_down: Counter[Address] = Counter()  # Sentinels, by address, that answering ones see down
        ask, silent = self.in_turn()
        for index, sentinel in enumerate(ask + silent):
            if (
                index >= len(ask)
                and confirmed >= self.majority
                and seen_down[_address(sentinel)] >= self.majority
            ):
                continue  # lost to the others too: not waited for
            try:
                pipe = sentinel.pipeline(transaction=False)
                pipe.sentinel_master(service_name)
                pipe.sentinel_slaves(service_name)
                pipe.sentinel_sentinels(service_name)
                master, replicas, peers = pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError):
                self._unanswered(sentinel)
                continue
            except redis.ResponseError as error:
                self._answered(sentinel)
                return f"{_name(sentinel)}: {error}"
            self._answered(sentinel)
            named = (master["ip"], int(master["port"]))
            if named != address:
                return f"{_name(sentinel)} names {named[0]}:{named[1]} as the master"
            if "failover_in_progress" in _flags(master):
                return f"{_name(sentinel)} has a failover under way"
            for replica in replicas:
                where = (replica["ip"], int(replica["port"]))
                if not _promotable(replica):
                    continue
                if replica.get("role-reported") == "master" and deposed(where):
                    continue
                return f"{_name(sentinel)} could promote {where[0]}:{where[1]}"
            seen_down.update((peer["ip"], int(peer["port"])) for peer in peers if "s_down" in _flags(peer))
            confirmed += 1
        if confirmed >= self.majority:
            return None
        return f"only {confirmed} of {len(self.sentinels)} Sentinels confirmed the master"


# How long a master connection waits before it raises CannotPersist (see FollowingConnection).
CANNOT_PERSIST_PAUSE = 0.25


class CannotPersist(redis.ConnectionError):
    """The master refused a write because it cannot write to its disk (MISCONF: a full disk,
    an I/O error). Such a master also refuses Sentinel's PING, so the Sentinels fail it over
    after down-after; until they do, the retry finds the same master and the same refusal."""


class FollowingConnection(SentinelManagedConnection):
    """A master connection that reconnects to the master the Sentinels name now.

    redis-py reconnects inside a command's retry loop through `send_packed_command`, which
    reuses the address the connection had (redis/redis-py issue 3874): after a failover every
    retry went back to the demoted master, and a worker gave up with "The previous master is
    now a slave". Reconnecting through `connect()` asks the Sentinels first.

    A master that cannot write to its disk is treated as redis-py treats a demoted one (its
    READONLY): the connection is dropped and the refusal raised as a connection error, which
    the workers' connection retries and the web's `Store.retrying` ride out until the Sentinels
    name a new master. Measured before (make dev, the master's disk filled under load): every
    worker died on the refusal, a horse died writing its job's outcome (the job ran twice), and
    the app kept writing to the old master for 8 s after the Sentinels had replaced it.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as error:
            # A transaction's EXEC refused for it: "EXECABORT Transaction discarded because of:
            # MISCONF ..." (nothing of it ran, as with a refused command).
            text = str(error)
            refused = text.startswith("MISCONF") or (
                isinstance(error, redis.exceptions.ExecAbortError) and "MISCONF" in text
            )
            if not refused or not self.connection_pool.is_master:
                raise
            self.disconnect()
            # Not at once: RQ retries a WATCHed transaction without a pause (redis-py turns the
            # connection error into a WatchError), and each retry asks the Sentinels again.
            time.sleep(CANNOT_PERSIST_PAUSE)
            raise CannotPersist(f"{self.host}:{self.port} cannot write to its disk: {error}") from error


class FollowingSSLConnection(FollowingConnection, KitSSLConnection):
    """FollowingConnection over TLS, built as redis-py builds SentinelManagedSSLConnection:
    SentinelManagedConnection's `connect` (ask the Sentinels), SSLConnection's `_connect` (wrap
    the socket and verify the certificate, with KitSSLConnection's shared context).
    SentinelConnectionPool picks its SSL class from an `ssl` argument only when no
    connection_class is given, and drops `ssl` either way: the Store chooses the class itself."""


def _flags(state: dict[str, Any]) -> set[str]:
    flags = state.get("flags", "")
    return set(flags.split(",")) if isinstance(flags, str) else set(flags)


def _promotable(replica: dict[str, Any]) -> bool:
    """Whether Sentinel's own choice of a replica to promote (sentinelSelectSlave) could fall
    on this one: not down, not disconnected, a non-zero priority, and an INFO reply since
    Sentinel learnt of it. That last rule matters right after a failover: Sentinel lists the
    old master as a replica at once, and while that host is lost or frozen it is neither down
    (for another down-after period) nor "disconnected" (the flag clears when a connection is
    attempted, not made), but it has never answered INFO, so Sentinel cannot choose it. Being
    promoted now counts as promotable."""
    if "promoted" in _flags(replica):
        return True
    if replica["is_sdown"] or replica["is_odown"] or replica["is_disconnected"]:
        return False
    if int(replica.get("slave-priority", 1)) == 0:
        return False
    # Never refreshed: Redis 7.2+ prints info-refresh 0, older ones the time since the epoch.
    refreshed = int(replica.get("info-refresh", 1))
    never = (refreshed == 0 or refreshed > 10**11) and int(replica.get("slave-repl-offset", 1)) == 0
    return not never


def _address(sentinel: redis.Redis) -> Address:
    kwargs = sentinel.connection_pool.connection_kwargs
    return (str(kwargs.get("host")), int(kwargs.get("port") or 0))


def _name(sentinel: redis.Redis) -> str:
    host, port = _address(sentinel)
    return f"Sentinel {host}:{port}"


# Where a Flask app keeps its Store (app.extensions; fridge.web.create_app puts it there).
APP_EXTENSION = "kitqueue"


def app_store(app: Any) -> Store:
    """The Store of a Flask app that put one under APP_EXTENSION (Flask's `current_app`)."""
    return app.extensions[APP_EXTENSION]


class Store:
    """One Sentinel client and one master connection pool per process."""

    def __init__(self, config: dict[str, Any], connection_retries: int = 0) -> None:
        """`connection_retries`: how often redis-py itself reconnects and retries a command
        that met a connection error or timeout. 0 for web requests, whose RETRY_BUDGET
        `retrying` owns; workers, which have no caller waiting, ride out a failover with it."""
        self.config = config
        sentinels = [host_port(s) for s in config["SENTINELS"]]
        timeout = float(config["SENTINEL_TIMEOUT"])
        self.sentinel = QuorumSentinel(
            sentinels,
            # Set explicitly: with a dict here redis-py copies nothing from the master kwargs.
            sentinel_kwargs={
                "username": config["SENTINEL_USERNAME"],
                "password": config["SENTINEL_PASSWORD"],
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                # redis-py 8 retries a client's commands 10 times with backoff by default: a
                # lost Sentinel host would cost seconds per question instead of one timeout.
                "retry": Retry(NoBackoff(), 0),
                **_client_tls(config),
            },
        )
        for sentinel in self.sentinel.sentinels:
            _shared_context(sentinel)
        self.master_name = config["MASTER_NAME"]
        self.redis = self.sentinel.master_for(
            self.master_name,
            username=config["REDIS_USERNAME"],
            password=config["REDIS_PASSWORD"],
            socket_timeout=float(config["REDIS_SOCKET_TIMEOUT"]),
            socket_connect_timeout=float(config["REDIS_CONNECT_TIMEOUT"]),
            socket_keepalive=True,
            socket_keepalive_options=KEEPALIVE,
            health_check_interval=15,
            retry=FailoverRetry(ExponentialBackoff(cap=0.5, base=0.05), connection_retries)
            if connection_retries
            else Retry(NoBackoff(), 0),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            connection_class=FollowingSSLConnection if config["REDIS_TLS"] else FollowingConnection,
            **tls_kwargs(config),
            **QUIET_HANDSHAKE,
        )
        self.key_prefix = config["KEY_PREFIX"]
        # The master of this process's last acknowledgement and its replicas in sync then: the
        # next one on the same master sends its WAIT with its other commands (see
        # queueing._confirm_durable). None: none made yet.
        self.replicas_in_sync: tuple[Address, int] | None = None
        # What check_room read of the master (see memory()) and when.
        self._memory: tuple[int, int, int] = (0, 0, 0)
        self._memory_read = -math.inf
        # This process's attempts failing transiently: the first and the last failure, each
        # within a RETRY_BUDGET of the one before (None once one succeeds); and the one attempt
        # allowed at a time in this process once that has lasted FAIL_FAST_AFTER (see
        # _probe_lock), re-entrant: a command line's action may call retrying inside it.
        self.outage: tuple[float, float] | None = None
        self._failing_fast = False  # said once in the log when it begins, and when it ends
        self._outage_lock = threading.Lock()
        self._probing = threading.RLock()
        _STORES.add(self)

    def memory(self) -> tuple[int, int, int]:
        """The master's memory as Redis counts it against maxmemory (replica output buffers and
        the AOF buffer left out), its maxmemory (0: none), and the room its queued and scheduled
        jobs will need to finish (DRAIN_BYTES_PER_JOB each), every app's queues on this group
        included (rq:queues). Two round trips."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.info("memory")
        pipe.smembers(Queue.redis_queues_keys)
        info, keys = pipe.execute()
        jobs = 0
        if keys:
            prefix = Queue.redis_queue_namespace_prefix
            pipe = self.redis.pipeline(transaction=False)
            for key in (k.decode() for k in keys):
                pipe.llen(key)
                pipe.zcard(ScheduledJobRegistry.key_template.format(key.removeprefix(prefix)))
            jobs = sum(pipe.execute())
        used = int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))
        return used, int(info.get("maxmemory", 0)), jobs * DRAIN_BYTES_PER_JOB

    def check_room(self) -> None:
        """Raise Full when the master's memory plus the room its jobs need to finish reaches
        ENQUEUE_MEMORY_LIMIT of its maxmemory. Read once a second per process while far from
        that (no round trip per request), every 0.1 s within a tenth of it: a second of
        enqueues cannot overshoot the limit into the workers' room."""
        limit = float(self.config["ENQUEUE_MEMORY_LIMIT"])
        if limit >= 1:
            return
        now = time.monotonic()
        used, maximum, needed = self._memory
        near = maximum and used + needed >= 0.9 * limit * maximum
        if now - self._memory_read >= (0.1 if near else 1.0):
            self._memory, self._memory_read = self.memory(), now
        used, maximum, needed = self._memory
        if maximum and used + needed >= limit * maximum:
            raise Full(
                f"Redis uses {used / 2**20:.1f} of its {maximum / 2**20:.1f} MiB (maxmemory) and its "
                f"queued jobs need about {needed / 2**20:.1f} MiB more to finish; enqueues stop at "
                f"{limit:.0%} (ENQUEUE_MEMORY_LIMIT) so that the workers can drain the queues"
            )

    def disconnect(self) -> None:
        """Close this process's connections to Redis and the Sentinels; a later command opens
        new ones."""
        self.redis.connection_pool.disconnect()
        for sentinel in self.sentinel.sentinels:
            sentinel.connection_pool.disconnect()

    def key(self, *parts: str) -> str:
        return ":".join((self.key_prefix, *parts))

    def master_address(self) -> Address:
        return self.sentinel.discover_master(self.master_name)

    def node(self, address: Address) -> redis.Redis:
        """A client of one Redis server, not through Sentinel: one try, short timeouts. The
        caller closes it."""
        return _shared_context(
            redis.Redis(
                host=address[0],
                port=address[1],
                username=self.config["REDIS_USERNAME"],
                password=self.config["REDIS_PASSWORD"],
                socket_timeout=float(self.config["SENTINEL_TIMEOUT"]),
                socket_connect_timeout=float(self.config["SENTINEL_TIMEOUT"]),
                retry=Retry(NoBackoff(), 0),
                **_client_tls(self.config),
                **QUIET_HANDSHAKE,
            )
        )

    def sole_master_doubt(self, address: Address, me: Replication) -> str | None:
        """See QuorumSentinel.sole_master_doubt; `me` is the INFO replication of `address`."""

        def deposed(other: Address) -> bool:
            """`other`, which reports itself master, is the master `address` was promoted
            from: its replication id is the one `address` inherited (PSYNC2's replid2), and
            not the other way round."""
            client = self.node(other)
            try:
                them = Replication.from_info(client.info("replication"))
            except redis.RedisError:
                return False
            finally:
                client.close()
            return them.role == "master" and me.replid2 == them.replid and them.replid2 != me.replid

        return self.sentinel.sole_master_doubt(self.master_name, address, deposed)

    def reset(self) -> None:
        """Drop idle pooled connections so the next command asks the Sentinels again. Those
        other threads are using are left alone: closing them under a reader raises EBADF."""
        self.redis.connection_pool.disconnect(inuse_connections=False)

    def retrying(self, action: Callable[[], T], budget: float | None = None) -> T:
        """Run `action`, retrying transient failover errors for at most `budget` seconds.

        One attempt may itself wait for a lost or frozen host: a Sentinel question (0.5 s), a
        connection, a read (REDIS_SOCKET_TIMEOUT). So no attempt starts in the budget's last
        REDIS_SOCKET_TIMEOUT seconds (at most half the budget), and a request ends within about
        the budget plus one second even when its last attempt meets a frozen Sentinel and then a
        frozen master."""
        budget = float(self.config["RETRY_BUDGET"] if budget is None else budget)
        reserve = min(float(self.config["REDIS_SOCKET_TIMEOUT"]), budget / 2)
        deadline = time.monotonic() + budget - reserve
        delay = 0.05
        probe = None
        try:
            probe = self._probe_lock()
            if probe is not None:
                deadline = -math.inf  # one attempt, no retry, asking the Sentinels afresh
                self.reset()
            while True:
                try:
                    result = action()
                except Exception as error:
                    refused = refusal(error) or login_refusal(error, self.config["REDIS_USERNAME"])
                    if refused is error:
                        raise
                    if refused is not None:
                        raise refused from error
                    if not is_transient(error):
                        raise
                    self._failed()
                    if time.monotonic() + delay > deadline:
                        if isinstance(error, Unavailable):
                            raise
                        raise Unavailable(f"Redis unavailable ({type(error).__name__}: {error})") from error
                    log.warning("Redis failover under way (%s); retrying in %.2fs", error, delay)
                    self.reset()
                    time.sleep(delay)
                    # Short steps: the new master is used within 0.2 s of Sentinel naming it.
                    delay = min(delay * 2, 0.2)
                else:
                    with self._outage_lock:
                        outage, self.outage = self.outage, None
                        if self._failing_fast:
                            self._failing_fast = False
                            lasted = time.monotonic() - outage[0] if outage else 0.0
                            log.warning("Redis answers again after %.0f s of outage", lasted)
                    return result
        finally:
            if probe is not None:
                probe.release()

    def _failed(self) -> None:
        """Note a transient failure: it goes on the outage under way, or begins one."""
        with self._outage_lock:
            now, outage = time.monotonic(), self.outage
            if outage is None or now - outage[1] > float(self.config["RETRY_BUDGET"]):
                self.outage = (now, now)
            else:
                self.outage = (outage[0], now)

    def _probe_lock(self) -> Any:
        """An outage that has lasted FAIL_FAST_AFTER is no failover: waiting a whole budget in
        every request then only fills the web threads, and requests queue in front of them
        until mod_wsgi drops them with a 504 and no Retry-After. From then on one request at a
        time makes a single attempt, which ends the outage when it succeeds; the others are
        answered Unavailable (503, Retry-After) at once. Returns the lock this request holds as
        that attempt, or None outside such an outage (also when no attempt failed within the
        last budget: nothing says it goes on)."""
        outage, now = self.outage, time.monotonic()
        if outage is None or now - outage[1] > float(self.config["RETRY_BUDGET"]):
            return None
        lasted = now - outage[0]
        if lasted < fail_fast_after(self.config):
            return None
        if not self._probing.acquire(blocking=False):
            raise FailingFast(f"Redis unavailable for {lasted:.0f} s; another request is trying it")
        if not self._failing_fast:
            self._failing_fast = True
            log.warning(
                "Redis unavailable for %.0f s: no failover takes that long; from now on one request "
                "at a time tries it once and the others answer 503 at once, until one succeeds",
                lasted,
            )
        return self._probing


class PinnedConnection:
    """One pooled connection held for a sequence of commands (WAIT covers only the writes of
    the connection it runs on, and the server's address must be known)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    @property
    def address(self) -> Address:
        return (self.connection.host, int(self.connection.port))

    @property
    def address_text(self) -> str:
        return f"{self.connection.host}:{self.connection.port}"

    def run(self, *commands: tuple[Any, ...], raising: bool = True) -> list[Any]:
        """Send `commands` in one round trip and return their raw replies, in order. An error
        reply is raised once every reply is read (`raising`), or returned in its place; but a
        master's MISCONF is raised at once as CannotPersist, the connection dropped with the
        replies not read (FollowingConnection)."""
        conn = self.connection
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as error:  # read every reply before raising
                replies.append(error)
        failed = next((r for r in replies if isinstance(r, redis.ResponseError)), None)
        if raising and failed is not None:
            raise failed
        return replies


@contextmanager
def pinned_connection(store: Store) -> Iterator[PinnedConnection]:
    pool = store.redis.connection_pool
    connection = pool.get_connection()
    try:
        yield PinnedConnection(connection)
    except BaseException:
        connection.disconnect()  # a reply may still be unread
        raise
    finally:
        pool.release(connection)


@dataclass
class Replication:
    """INFO replication, as far as acknowledgements need it."""

    role: str
    replid: str = ""
    replid2: str = ""
    replicas: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes | str) -> Replication:
        text = raw.decode() if isinstance(raw, bytes) else raw
        found = cls(role="")
        for line in text.splitlines():
            key, _, value = line.strip().partition(":")
            if key == "role":
                found.role = value
            elif key == "master_replid":
                found.replid = value
            elif key == "master_replid2":
                found.replid2 = value
            elif key.startswith("slave") and key[5:].isdigit():
                found.replicas.append(dict(i.split("=", 1) for i in value.split(",") if "=" in i))
        return found

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Replication:
        """From redis-py's parsed INFO replication."""
        return cls(str(info.get("role")), str(info.get("master_replid")), str(info.get("master_replid2")))

    def in_sync(self, max_lag: int) -> int:
        """Replicas linked (state online) that acknowledged within `max_lag` seconds."""
        return sum(
            1 for r in self.replicas if r.get("state") == "online" and int(r.get("lag", "0")) <= max_lag
        )


def host_port(address: str) -> tuple[str, int]:
    host, _, port = str(address).rpartition(":")
    return (host or str(address)), int(port or 26379)
