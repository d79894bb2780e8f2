#!/usr/bin/python3
"""Rewrite the append-only file once a full disk is over, before a second one can damage it.

A node that runs on through a full disk (a replica with replica-ignore-disk-write-errors, a
master that no failover took away) is left with a hole in its incremental AOF file (see
kit-aof-repair.py), and with the server's idea of that file's size short by the hole. The next
write the disk cuts short is truncated to that size, which cuts off the end of commands
already written: no repair brings them back. A rewrite (BGREWRITEAOF) starts a new incremental
file at a fresh offset and ends the exposure. Not during the episode: a rewrite under a full
disk can duplicate commands (redis/redis#14372, valkey-io/valkey#2627).

Runs beside the server as its user (systemd unit kit-aof-guard), logged in as a Redis user that
may run INFO and BGREWRITEAOF only, with a password that exists on this node alone. Every
--interval seconds it reads INFO persistence, and every --episode-interval seconds while an
episode lasts, so that the rewrite begins within moments of the server writing again (a second
full disk in between is the exposure). It asks for a rewrite, and again every 10 s until one has
begun, once the server writes its AOF again after either sign of an episode:
- the last write failed (aof_last_write_status:err), however it ended;
- its files are longer than what the server counts as written (aof_current_size): a hole,
  also from an episode it did not see (shorter than --interval, or while it was stopped).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import time
from pathlib import Path

RETRY = 10.0  # seconds before asking again for a rewrite that was refused or has not begun


class ReplyError(Exception):
    """An error reply from the server."""


class Client:
    """Just enough RESP2 for INFO and BGREWRITEAOF."""

    def __init__(self, args: argparse.Namespace) -> None:
        sock = socket.create_connection((args.host, args.port), timeout=5)
        if args.tls_ca:
            context = ssl.create_default_context(cafile=args.tls_ca)
            if args.tls_cert:
                context.load_cert_chain(args.tls_cert, args.tls_key)
            sock = context.wrap_socket(sock, server_hostname=args.tls_name or args.host)
        self.stream = sock.makefile("rwb")
        password = Path(args.password_file).read_text()  # all of it: the ACL holds its SHA-256
        self.command("AUTH", args.user, password)

    def command(self, *words: str) -> str:
        self.stream.write(f"*{len(words)}\r\n".encode())
        for word in words:
            data = word.encode()
            self.stream.write(b"$%d\r\n%s\r\n" % (len(data), data))
        self.stream.flush()
        line = self.stream.readline()
        if not line:
            raise OSError("the server closed the connection")
        kind, rest = line[:1], line[1:-2].decode()
        if kind == b"$":
            return "" if int(rest) < 0 else self.stream.read(int(rest) + 2)[:-2].decode()
        if kind == b"-":
            raise ReplyError(rest)
        if kind in (b"+", b":"):
            return rest
        raise OSError(f"unexpected reply {line!r}")

    def info(self) -> dict[str, str]:
        pairs = (line.split(":", 1) for line in self.command("INFO", "persistence").splitlines())
        return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}

    def close(self) -> None:
        self.stream.close()


def on_disk(manifest: Path, with_base: bool) -> int:
    """The size of the files the manifest lists, which the server counts as aof_current_size:
    its base (but the empty one a fresh server makes, which it does not count: INFO's
    aof_base_size is 0 then) and its incremental files. OSError while a rewrite replaces them."""
    total = 0
    for line in manifest.read_text().splitlines():
        fields = line.split()
        pairs = dict(zip(fields[::2], fields[1::2], strict=False))
        if (pairs.get("type") == "i" or (with_base and pairs.get("type") == "b")) and "file" in pairs:
            total += (manifest.parent / pairs["file"].strip('"')).stat().st_size
    return total


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Guard:
    """What one reading of INFO persistence asks for. One per connection: a server that
    restarted has loaded its files (kit-aof-repair.py removed a hole first) and counts them
    afresh, so nothing carries over."""

    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.reason: str | None = None  # why a rewrite is due, until one has begun
        self.asked: int | None = None  # aof_rewrites when the guard asked for one
        self.asked_at = -RETRY
        self.unreadable: str | None = None  # the manifest's error, said once

    @property
    def waiting(self) -> bool:
        """A rewrite is due and not asked for yet: the server's next write starts the exposure."""
        return self.reason is not None and self.asked is None

    def check(self, client: Client) -> None:
        info = client.info()
        if not _watching(info):  # no AOF (a new one starts whole), or loading the files afresh
            self.reason, self.asked, self.asked_at = None, None, -RETRY
            return
        if info.get("aof_last_write_status") == "err":
            if self.reason is None:
                log("the server cannot write its AOF (a full or failing disk): a rewrite once it can")
            # Not during the episode: the rewrite would first write its buffer to the old file.
            self.reason, self.asked, self.asked_at = "its AOF could not be written", None, -RETRY
            return
        if _rewriting(info):
            return
        if self.reason is None:
            self.reason = self.hole(client, info)
            if self.reason is None:
                return
        rewrites = int(info.get("aof_rewrites", 0))
        if self.asked is not None and rewrites > self.asked:
            # It began, so the server writes to a new incremental file, at a size it counts
            # right: the exposure is over. A rewrite that then failed (no room for a copy of
            # the data set) is the server's to try again; the hole left in the older file is
            # removed at the next start.
            if info.get("aof_last_bgrewrite_status") == "ok":
                log("the AOF was rewritten: a new disk error can no longer cut commands out of it")
            else:
                log(
                    "the rewrite began, then failed (room for a copy of the data set?): new writes go to"
                    " a new incremental file all the same; kit-aof-repair.py removes the older one's hole"
                    " at the next start"
                )
            self.reason, self.asked, self.asked_at = None, None, -RETRY
            return
        if time.monotonic() < self.asked_at + RETRY:
            return  # asked a moment ago, and refused or not begun yet
        log(f"asking for BGREWRITEAOF: {self.reason}")
        self.asked, self.asked_at = rewrites, time.monotonic()
        try:
            client.command("BGREWRITEAOF")
        except ReplyError as error:  # a save or a rewrite under way: asked again after RETRY
            log(f"BGREWRITEAOF refused: {error}")

    def hole(self, client: Client, info: dict[str, str]) -> str | None:
        """Why a rewrite is due if the files are longer than the server counts (INFO before and
        after reading them: what it wrote by the second is at least what was on disk, but for
        a hole), else None."""
        try:
            size = on_disk(self.manifest, info.get("aof_base_size") != "0")
        except OSError as error:
            if str(error) != self.unreadable:
                log(f"cannot read the AOF's files, so no hole can be found: {error}")
            self.unreadable = str(error)
            return None
        self.unreadable = None
        after = client.info()
        if not _watching(after) or _rewriting(after) or after.get("aof_last_write_status") != "ok":
            return None  # an episode, a rewrite or a change began meanwhile: asked again next time
        if after.get("aof_rewrites") != info.get("aof_rewrites") or "aof_current_size" not in after:
            return None
        written = int(after["aof_current_size"])
        if size <= written:
            return None
        return f"its AOF holds {size - written} bytes more than the server wrote (a hole)"


def _watching(info: dict[str, str]) -> bool:
    return info.get("aof_enabled") == "1" and info.get("loading", "0") == "0"


def _rewriting(info: dict[str, str]) -> bool:
    return "1" in (info.get("aof_rewrite_in_progress"), info.get("aof_rewrite_scheduled"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--tls-ca")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-name", help="the name the server's certificate carries")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--episode-interval", type=float, default=0.05, help="while a rewrite is due")
    args = parser.parse_args(argv)
    guard, client, failing = Guard(args.manifest), None, None
    while True:
        try:
            if client is None:
                client, guard = Client(args), Guard(args.manifest)
            guard.check(client)
            if failing:
                log("the server answers again")
            failing = None
        except (OSError, ReplyError) as error:
            if client is not None:
                client.close()
            client = None
            if str(error) != failing:
                log(f"cannot read the server's state: {error}")
            failing = str(error)
        time.sleep(args.episode_interval if client is not None and guard.waiting else args.interval)


if __name__ == "__main__":
    sys.exit(main())
