"""The connection to Redis, only ever through Sentinel, and the failover retry policy."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

log = logging.getLogger(__name__)
T = TypeVar("T")

# Replies a server gives while a failover is under way (redis-py raises most of them as a
# plain ResponseError): retry them like connection errors.
TRANSIENT_REPLIES = ("READONLY", "UNBLOCKED", "NOREPLICAS", "LOADING", "MASTERDOWN", "TRYAGAIN")


class Unavailable(Exception):
    """Redis could not be reached within the retry budget (answered as 503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_transient(error: BaseException) -> bool:
    """True for errors that a failover explains and a retry may cure."""
    if isinstance(error, redis.ConnectionError | redis.TimeoutError | redis.ReadOnlyError):
        return True
    if isinstance(error, redis.BusyLoadingError | redis.exceptions.TryAgainError):
        return True
    if isinstance(error, redis.ResponseError):
        text = str(error).upper()
        return text.startswith(TRANSIENT_REPLIES) or "READ ONLY REPLICA" in text
    return False


class Store:
    """One Sentinel client and one master connection pool per process."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        sentinels = [_host_port(s) for s in config["SENTINELS"]]
        timeout = float(config["SENTINEL_TIMEOUT"])
        self.sentinel = Sentinel(
            sentinels,
            # Set explicitly: with a dict here redis-py copies nothing from the master kwargs.
            sentinel_kwargs={
                "password": config["SENTINEL_PASSWORD"],
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
            },
        )
        self.master_name = config["MASTER_NAME"]
        self.redis = self.sentinel.master_for(
            self.master_name,
            username=config["REDIS_USERNAME"],
            password=config["REDIS_PASSWORD"],
            socket_timeout=float(config["REDIS_SOCKET_TIMEOUT"]),
            socket_connect_timeout=float(config["REDIS_CONNECT_TIMEOUT"]),
            socket_keepalive=True,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.key_prefix = config["KEY_PREFIX"]

    def key(self, *parts: str) -> str:
        return ":".join((self.key_prefix, *parts))

    def master_address(self) -> tuple[str, int]:
        return self.sentinel.discover_master(self.master_name)

    def reset(self) -> None:
        """Drop pooled connections so the next command asks the Sentinels again."""
        self.redis.connection_pool.disconnect()

    def retrying(self, action: Callable[[], T], budget: float | None = None) -> T:
        """Run `action`, retrying transient failover errors for at most `budget` seconds."""
        budget = float(self.config["RETRY_BUDGET"] if budget is None else budget)
        deadline = time.monotonic() + budget
        delay = 0.05
        while True:
            try:
                return action()
            except Exception as error:
                if not is_transient(error):
                    raise
                if time.monotonic() + delay > deadline:
                    raise Unavailable(f"Redis unavailable ({type(error).__name__}: {error})") from error
                log.warning("Redis failover under way (%s); retrying in %.2fs", error, delay)
                self.reset()
                time.sleep(delay)
                # Short steps: the new master is used within 0.2 s of Sentinel naming it.
                delay = min(delay * 2, 0.2)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = str(address).rpartition(":")
    return (host or str(address)), int(port or 26379)
