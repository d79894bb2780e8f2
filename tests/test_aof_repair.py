"""roles/redis/files/kit-aof-repair.py against a real redis-server: the hole a short write
leaves in an append-only file stops the server from starting, the repair removes it and every
write (those after the hole too) loads again; what is not such a hole is left alone."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".collections"))
kit_redis = importlib.import_module("ansible_collections.kit.jobqueue.plugins.module_utils.kit_redis")
spec = importlib.util.spec_from_file_location("kit_aof_repair", ROOT / "roles/redis/files/kit-aof-repair.py")
aof_repair = importlib.util.module_from_spec(spec)
sys.modules["kit_aof_repair"] = aof_repair  # its dataclass looks its module up
spec.loader.exec_module(aof_repair)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A redis-server with an AOF in `directory`, as a data node runs it (everysec)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        if not shutil.which("redis-server"):
            pytest.fail(
                "redis-server is needed (make test installs it with the app tests' tools/app-tests.sh)"
            )
        self.directory = directory
        self.port = port or free_port()
        self.log = directory.parent / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)),
                *(
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--save",
                    "",
                    "--logfile",
                    str(self.log),
                ),
            ]
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log.read_text()[-600:]}")
            with contextlib.suppress(OSError):
                self.conn = kit_redis.Connection("127.0.0.1", self.port, None, None, 2.0)
                if self.conn.command("PING") == "PONG":
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def __call__(self, *args):
        return self.conn.command(*args)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def directory(tmp_path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def manifest(directory: Path) -> Path:
    return directory / "appendonlydir" / "appendonly.aof.manifest"


def incremental(directory: Path) -> Path:
    (path,) = aof_repair.incremental_files(manifest(directory))
    return path


def repair(directory: Path) -> int:
    return aof_repair.main([str(manifest(directory))])


def with_hole(data: bytes, before: bytes) -> tuple[bytes, int, int]:
    """`data` with a hole as a full disk leaves it: NUL bytes from the start of the command
    `before` up to the next 4 KiB boundary, then that command and the rest."""
    at = data.index(before)
    length = (-at) % 4096 or 4096
    return data[:at] + b"\0" * length + data[at:], at, length


def fails_to_start(directory: Path) -> str:
    """Start a server on `directory` and return its log, asserting that it exits."""
    port = free_port()
    log = directory.parent / f"refused-{port}.log"
    run = subprocess.run(
        [
            *("redis-server", "--port", str(port), "--dir", str(directory), "--appendonly", "yes"),
            *("--save", "", "--logfile", str(log)),
        ],
        timeout=30,
        check=False,
    )
    assert run.returncode != 0
    return log.read_text()


def with_keys(directory: Path, count: int) -> Server:
    server = Server(directory)
    server("BGREWRITEAOF")  # as after a full sync: the incremental file it opens has no O_APPEND
    deadline = time.monotonic() + 10
    while "aof_rewrite_in_progress:0" not in server("INFO", "persistence"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for i in range(count):
        server("SET", f"job:{i}", "x" * 100)
    return server


def test_a_hole_of_nuls_between_two_commands_is_removed_and_every_write_loads(directory):
    server = with_keys(directory, 200)
    server.stop()
    path = incremental(directory)
    data = path.read_bytes()
    holed, at, length = with_hole(data, b"*3\r\n$3\r\nSET\r\n$6\r\njob:99\r\n")
    path.write_bytes(holed)
    assert "Bad file format" in fails_to_start(directory)

    assert aof_repair.repair(path).holes == [(at, length)]
    assert path.read_bytes() == data
    server = Server(directory)
    assert server("DBSIZE") == 200
    server.stop()


def test_nuls_at_the_end_are_removed_and_a_command_cut_short_is_left_to_the_server(directory):
    server = with_keys(directory, 50)
    server.stop()
    path = incremental(directory)
    data = path.read_bytes()
    path.write_bytes(data + b"\0" * 100)
    assert repair(directory) == 0
    assert path.read_bytes() == data

    # A crash in the middle of a write: the server loads what is whole (aof-load-truncated),
    # and the repair changes nothing, also with a hole before it (which it removes).
    holed, _, _ = with_hole(data[:-7], b"*3\r\n$3\r\nSET\r\n$6\r\njob:20\r\n")
    path.write_bytes(holed)
    found = aof_repair.repair(path)
    assert (len(found.holes), found.damage) == (1, None)
    assert path.read_bytes() == data[:-7]
    server = Server(directory)
    assert server("DBSIZE") == 49
    server.stop()


@pytest.mark.parametrize(
    "damage",
    ["garbage before a command", "zeros from a block boundary", "zeros not up to a block boundary"],
)
def test_other_damage_is_left_for_the_server_to_report(directory, damage):
    """What a full disk does not leave (zeros that a power cut left over whole blocks, bytes
    that are no command) is not touched, whatever holes the file also has."""
    server = with_keys(directory, 200)
    server.stop()
    path = incremental(directory)
    data = path.read_bytes()
    holed, _, _ = with_hole(data, b"*3\r\n$3\r\nSET\r\n$6\r\njob:20\r\n")
    at = holed.index(b"*3\r\n$3\r\nSET\r\n$7\r\njob:150\r\n")
    if damage == "garbage before a command":
        broken = holed[:at] + b"garbage\r\n" + holed[at:]
    elif damage == "zeros from a block boundary":
        # A command that ends at a block boundary, then a whole block of zeros, then commands.
        pad = next(
            c
            for n in range(4096)
            if (at + len(c := b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (n, b"x" * n))) % 4096 == 0
        )
        broken = holed[:at] + pad + b"\0" * 4096 + holed[at:]
    else:
        broken = holed[:at] + b"\0" * 10 + holed[at:]
    path.write_bytes(broken)
    assert repair(directory) == 0
    assert path.read_bytes() == broken


def test_no_aof_yet_is_nothing_to_do(tmp_path):
    assert aof_repair.main([str(tmp_path / "appendonlydir" / "appendonly.aof.manifest")]) == 0
    (tmp_path / "appendonlydir").mkdir()
    (tmp_path / "appendonlydir" / "appendonly.aof.1.incr.aof").write_bytes(b"")
    (tmp_path / "appendonlydir" / "appendonly.aof.manifest").write_text(
        "file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\n"
    )
    assert aof_repair.main([str(tmp_path / "appendonlydir" / "appendonly.aof.manifest")]) == 0


def full_disk_episode(server: Server, directory: Path, tag: str, hold: float = 0.0) -> int:
    """The disk fills in the middle of a write (a short write): writes of 50 kB until the
    server refuses one (MISCONF), then, `hold` seconds later, the disk is freed and the server
    writes its buffer again. Returns how many writes it accepted."""
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1k", "count=100000"], capture_output=True)
    os.truncate(filler, filler.stat().st_size - 12 * 1024)  # 12 KiB left: a 50 kB write is cut short
    refused = None
    written = 0
    for i in range(100):
        try:
            server("SET", f"{tag}:{i}", "y" * 50_000)
            written += 1
        except kit_redis.ReplyError as error:
            refused = str(error)
            break
    assert refused is not None
    assert refused.startswith("MISCONF"), refused
    time.sleep(hold)
    filler.unlink()
    deadline = time.monotonic() + 10
    while True:  # the server writes its buffer again once it can
        try:
            server("SET", f"{tag}:after", "1")
            return written + 1
        except kit_redis.ReplyError:
            assert time.monotonic() < deadline, "the server never wrote again"
            time.sleep(0.2)


@pytest.fixture
def small_disk(directory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("a small filesystem of its own (tmpfs) needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(directory)], check=True)
    yield directory
    subprocess.run(["umount", str(directory)], check=False)


def test_a_real_full_disk_leaves_a_hole_that_the_repair_removes(small_disk):
    """The fault itself, on a master that was not failed over: Redis truncates the write cut
    short and writes the whole buffer again once the disk has room, after a hole."""
    server = with_keys(small_disk, 10)
    written = 10 + full_disk_episode(server, small_disk, "first")
    assert "Short write" in server.log.read_text()
    server.stop()
    assert "Bad file format" in fails_to_start(small_disk)

    assert repair(small_disk) == 0
    server = Server(small_disk)
    assert server("DBSIZE") == written
    server.stop()


def test_a_second_full_disk_cuts_commands_unless_the_aof_was_rewritten_in_between(small_disk):
    """After a hole, Redis's idea of the file's size is short by the hole: the next short write
    truncates the file there and cuts off the end of commands already written. The repair
    cannot bring those back and leaves the file alone; a rewrite after the first episode (a
    new incremental file) prevents it."""
    server = with_keys(small_disk, 10)
    full_disk_episode(server, small_disk, "first")
    full_disk_episode(server, small_disk, "second")
    server.stop()
    path = incremental(small_disk)
    damaged = path.read_bytes()
    found = aof_repair.repair(path)
    assert found.damage is not None
    assert path.read_bytes() == damaged
    assert "Bad file format" in fails_to_start(small_disk)

    for name in list((small_disk / "appendonlydir").iterdir()):
        name.unlink()
    server = with_keys(small_disk, 10)
    written = 10 + full_disk_episode(server, small_disk, "first")
    server("BGREWRITEAOF")
    deadline = time.monotonic() + 10
    while "aof_rewrite_in_progress:0" not in server("INFO", "persistence"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    written += full_disk_episode(server, small_disk, "second")
    server.stop()
    assert repair(small_disk) == 0
    server = Server(small_disk)
    assert server("DBSIZE") == written
    server.stop()


# The guard (files/kit-aof-guard.py), logged in with the role's own rules for its user.
GUARD_RULES = yaml.safe_load((ROOT / "roles/redis/vars/main.yml").read_text())["__redis_acl_aof_guard_rules"]


def guard_user(server: Server) -> None:
    server("ACL", "SETUSER", "kit-aof-guard", "on", ">guard-secret", *GUARD_RULES.split())


@contextlib.contextmanager
def guard(server: Server, directory: Path, interval: float = 0.2) -> Iterator[Path]:
    """kit-aof-guard watching `server`, as the unit runs it; yields its log."""
    password = directory.parent / "guard.pass"
    password.write_text("guard-secret")
    guard_user(server)
    log = directory.parent / f"guard-{server.port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, str(ROOT / "roles/redis/files/kit-aof-guard.py")),
                *("--port", str(server.port)),
                *("--user", "kit-aof-guard", "--password-file", str(password), "--interval", str(interval)),
                *("--manifest", str(manifest(directory))),
            ],
            stderr=out,
        )
    try:
        yield log
    finally:
        proc.terminate()
        proc.wait(10)


def rewritten_after(log: Path, count: int) -> None:
    """Wait until the guard has reported `count` finished rewrites."""
    deadline = time.monotonic() + 20
    while log.read_text().count("the AOF was rewritten") < count:
        assert time.monotonic() < deadline, f"the guard rewrote nothing: {log.read_text()}"
        time.sleep(0.1)


def test_with_no_full_disk_the_guard_asks_for_nothing(directory):
    """No false alarm from the sizes it compares: a fresh server (its empty base file is not
    counted), writes during a rewrite (counted in the new base's size), a restart (the files
    loaded)."""
    server = Server(directory)
    with guard(server, directory) as log:
        for i in range(300):
            server("SET", f"fresh:{i}", "z" * 500)
        time.sleep(1)
        server("BGREWRITEAOF")
        for i in range(3000):  # while it rewrites: written to the new incremental file
            server("SET", f"during:{i}", "z" * 500)
        wait_until_rewritten = time.monotonic() + 10
        while "aof_rewrite_in_progress:0" not in server("INFO", "persistence"):
            assert time.monotonic() < wait_until_rewritten
            time.sleep(0.05)
        for i in range(300):
            server("SET", f"after:{i}", "z" * 500)
        time.sleep(1)
        server.stop()
        server = Server(directory, server.port)
        guard_user(server)  # as the ACL file gives it back on a node
        for i in range(300):
            server("SET", f"restarted:{i}", "z" * 500)
        time.sleep(1.5)
        assert "BGREWRITEAOF" not in log.read_text(), log.read_text()
        assert "the server answers again" in log.read_text()  # it did watch the restarted server
    server.stop()


def every_write_loads(server: Server, directory: Path, written: int) -> None:
    """Stop the server, repair as its unit does before each start, start it: all `written` keys
    are back."""
    server.stop()
    assert repair(directory) == 0
    server = Server(directory)
    assert server("DBSIZE") == written
    server.stop()


def exposures(server_log: str) -> list[float]:
    """From redis-server's log: for each time it wrote its AOF again after a failed write, the
    seconds until a rewrite began (a second full disk meanwhile could cut commands out)."""
    delays, solved = [], None
    for line in server_log.splitlines():
        stamp = re.match(r"\d+:[A-Z] (\d\d \w{3} \d{4} [\d:.]+) ", line)
        if not stamp:
            continue
        if "AOF write error looks solved" in line:
            solved = solved or datetime.strptime(stamp[1], "%d %b %Y %H:%M:%S.%f")  # the first
        elif "append only file rewriting started" in line and solved is not None:
            delays.append((datetime.strptime(stamp[1], "%d %b %Y %H:%M:%S.%f") - solved).total_seconds())
            solved = None
    return delays


def test_the_guard_rewrites_the_aof_once_a_full_disk_is_over_and_a_second_one_loses_nothing(small_disk):
    """Two full disks, one after the other, on a server that runs on through them: with the
    guard, every write of both loads again after a restart (without it, the test above: the
    file is damaged for good). Writes with no episode make it ask for nothing. Each disk
    stays full for longer than the guard's interval (1 s here), which then reads the server
    more often: the rewrite begins within moments of the server writing again."""
    server = with_keys(small_disk, 10)
    with guard(server, small_disk, interval=1.0) as log:
        for i in range(200):  # no episode: nothing to do
            server("SET", f"calm:{i}", "z" * 1000)
        time.sleep(1.5)
        assert "BGREWRITEAOF" not in log.read_text()
        written = 210 + full_disk_episode(server, small_disk, "first", hold=1.5)
        rewritten_after(log, 1)
        written += full_disk_episode(server, small_disk, "second", hold=1.5)
        rewritten_after(log, 2)
    delays = exposures(server.log.read_text())
    every_write_loads(server, small_disk, written)
    print(f"\nrewrites began {', '.join(f'{d:.3f}' for d in delays)} s after the server wrote again")
    assert len(delays) == 2, delays
    assert max(delays) < 0.3, delays


def test_a_hole_left_while_the_guard_was_away_is_found_by_the_files_size(small_disk):
    """An episode the guard did not see (stopped, or shorter than its interval): the hole
    makes the incremental file longer than the server's count, and it rewrites all the same."""
    server = with_keys(small_disk, 10)
    written = 10 + full_disk_episode(server, small_disk, "first")
    with guard(server, small_disk) as log:
        rewritten_after(log, 1)
        assert "bytes more than the server wrote" in log.read_text()
        written += full_disk_episode(server, small_disk, "second")
        rewritten_after(log, 2)
    every_write_loads(server, small_disk, written)
