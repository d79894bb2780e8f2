"""A minimal RESP2 client for the kit's modules.

The modules run on the managed hosts, which may have no Python Redis library (and Debian 12
and 13 ship redis-py 4.3 and 6.1, whose reply parsing differs). The handful of commands the
modules need (INFO, CONFIG, ACL, SENTINEL) are simple request/reply exchanges, so a small
typed client over a socket keeps the modules dependency-free and identical on every host.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

Reply = Any  # str | int | None | list[Reply]; errors raise ReplyError


class ReplyError(Exception):
    """The server answered with an error reply (-ERR ..., -NOAUTH ..., -WRONGPASS ...)."""


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """A client context trusting only `ca_file` (TLS 1.2+, certificate and name checked), or
    None for plain TCP when no CA is given."""
    if not ca_file:
        return None
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Connection:
    """One connection to a Redis, Valkey or Sentinel server, authenticated on open.

    With `tls`, the connection is TLS and the server's certificate must name `server_name`
    (the address connected to by default: a module that connects to 127.0.0.1 passes the
    host's own address, which the certificate names).
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 2.0,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.address = f"{host}:{port}"
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=server_name or host)
            except (ssl.SSLError, OSError) as error:
                sock.close()
                raise ConnectionError(
                    f"{self.address}: TLS handshake failed ({error}); is TLS on for this port, "
                    f"and is the certificate signed by the CA given and made for {server_name or host}?"
                ) from error
        self._sock = sock
        self._buf = b""
        if password:
            if username:
                self.command("AUTH", username, password)
            else:
                self.command("AUTH", password)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def command(self, *args: str | int | bytes, raw: bool = False) -> Reply:
        """Send one command and return its decoded reply (bulk strings as bytes with `raw`)."""
        self._sock.sendall(_encode(args))
        return self._read_reply(raw)

    def pipeline(self, commands: list[tuple[str | int | bytes, ...]], raw: bool = False) -> list[Reply]:
        """Send several commands at once, then read their replies in order; an error reply is
        returned as a ReplyError in its place, not raised."""
        self._sock.sendall(b"".join(_encode(args) for args in commands))
        replies: list[Reply] = []
        for _ in commands:
            try:
                replies.append(self._read_reply(raw))
            except ReplyError as error:
                replies.append(error)
        return replies

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{self.address} closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _read_exact(self, size: int) -> bytes:
        while len(self._buf) < size + 2:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{self.address} closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:size], self._buf[size + 2 :]
        return data

    def _read_reply(self, raw: bool = False) -> Reply:
        line = self._read_line()
        kind, rest = line[:1], line[1:].decode()
        if kind == b"+":
            return rest
        if kind == b"-":
            raise ReplyError(rest)
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._read_exact(size)
            return data if raw else data.decode()
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read_reply(raw) for _ in range(count)]
        raise ConnectionError(f"{self.address} sent an unexpected reply: {line[:40]!r}")


def _encode(args: tuple[str | int | bytes, ...]) -> bytes:
    """A command in RESP: an array of bulk strings (bytes sent as they are)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def pairs(reply: list[Reply]) -> dict[str, Reply]:
    """Turn a flat [key, value, key, value, ...] reply into a dict."""
    return {str(reply[i]): reply[i + 1] for i in range(0, len(reply) - 1, 2)}


def parse_info(text: str) -> dict[str, str]:
    """Parse an INFO reply ("key:value" lines, "# Section" headers) into a dict."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            info[key] = value
    return info


def is_auth_error(error: Exception) -> bool:
    """True when a reply error means the credentials were refused or required."""
    message = str(error).upper()
    return message.startswith(("NOAUTH", "WRONGPASS", "ERR AUTH", "NOPERM")) or (
        "AUTH" in message and "PASSWORD" in message
    )


def connect_first(
    host: str,
    port: int,
    username: str | None,
    passwords: list[str | None],
    timeout: float = 2.0,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> Connection:
    """Log in with the first of `passwords` the server accepts: the current password, then
    the previous ones while a rotation is under way. The first refusal is raised when none
    is accepted; any other error at once."""
    first: ReplyError | None = None
    for password in passwords or [None]:
        try:
            return Connection(host, port, username, password, timeout, tls, server_name)
        except ReplyError as error:
            if not is_auth_error(error):
                raise
            first = first or error
    raise first  # type: ignore[misc]


def connect_any_auth(
    host: str,
    port: int,
    username: str | None,
    passwords: list[str | None],
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> Connection:
    """Connect with the given credentials, or without any when the server has none yet.

    A freshly installed server has no password; after the kit's first run it refuses
    anonymous clients. Discovery must work in both states.
    """
    try:
        return connect_first(host, port, username, passwords, timeout, tls)
    except ReplyError as error:
        if not is_auth_error(error):
            raise
        conn = Connection(host, port, None, None, timeout, tls)
        try:
            conn.command("PING")
        except ReplyError:
            conn.close()
            raise error from None
        return conn


# The options of a module that logs in to one node (redis_backup, redis_restore,
# redis_replica_synced, redis_live_config, redis_sentinel_forget; doc fragment
# kit.jobqueue.login): their argument spec, and the login they describe.
LOGIN_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "login_host": {"type": "str", "default": "127.0.0.1"},
    "login_port": {"type": "int", "default": 6379},
    "login_user": {"type": "str"},
    "login_password": {"type": "str", "no_log": True},
    "login_previous_passwords": {"type": "list", "elements": "str", "default": [], "no_log": True},
    "tls_ca_file": {"type": "path"},
    "tls_server_name": {"type": "str"},
}


# The options of a module that reaches a whole group, its Sentinels then its data nodes
# (redis_ha_master, redis_ha_status, redis_failover; doc fragment kit.jobqueue.sentinel_group).
SENTINEL_GROUP_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "master_name": {"type": "str", "required": True},
    "sentinels": {"type": "list", "elements": "str", "required": True},
    "sentinel_port": {"type": "int", "default": 26379},
    "sentinel_password": {"type": "str", "no_log": True},
    "sentinel_previous_passwords": {"type": "list", "elements": "str", "default": [], "no_log": True},
    "node_user": {"type": "str"},
    "node_password": {"type": "str", "no_log": True},
    "node_previous_passwords": {"type": "list", "elements": "str", "default": [], "no_log": True},
    "tls_ca_file": {"type": "path"},
}


def login(params: dict[str, Any], timeout: float = 2.0) -> Connection:
    """Connect as LOGIN_ARGUMENT_SPEC's options say: the current password, then the previous
    ones; TLS when a CA file is given."""
    return connect_first(
        params["login_host"],
        params["login_port"],
        params["login_user"],
        [params["login_password"], *params["login_previous_passwords"]],
        timeout,
        tls_context(params["tls_ca_file"]),
        params["tls_server_name"],
    )


def fail_naming_server(module: Any, error: Exception, result: dict[str, Any]) -> None:
    """Fail the module with the error, naming the server it logged in to (login options)."""
    module.fail_json(msg=f"{module.params['login_host']}:{module.params['login_port']}: {error}", **result)


@contextlib.contextmanager
def reporting(module: Any, result: dict[str, Any]) -> Iterator[None]:
    """Run the block, then exit the module: changed when result["changes"] lists anything done
    (or, in check mode, to do); failed, naming the server, when Redis or the network refused."""
    try:
        yield
    except (OSError, ReplyError) as error:
        fail_naming_server(module, error, result)
    result["changed"] = bool(result["changes"])
    module.exit_json(**result)
