#!/usr/bin/python3
"""Remove the hole a full disk leaves in an append-only file, before the server loads it.

When a write to the AOF fills the disk part-way (a short write), Redis truncates the file back
to its size before that write and keeps the whole buffer to write again. But the incremental
file a rewrite opens has no O_APPEND (aof.c, openNewIncrAofForAppend: O_WRONLY|O_TRUNC|O_CREAT)
and the truncation does not move the file offset: once the disk has room, the buffer lands
after a run of NUL bytes as long as the short write. The server runs on, but refuses to start
on that file ("Bad file format reading the append only file") until an operator runs
redis-check-aof --fix, which cuts the file at the hole and drops every write after it.
Measured with Redis 7.0.15 and 8.0.2 (a master whose disk filled and was freed; a replica with
replica-ignore-disk-write-errors). A rewrite (BGREWRITEAOF, or a replica's full resync) starts
a new incremental file and ends the exposure.

Run before each start (ExecStartPre), as the server's user. For each incremental file of the
manifest, redis-check-aof says where its first bad command starts; if the bytes there are NULs
followed by a command ('*') or by the end of the file, the NULs are removed and the file is
checked again. Anything else (a command cut short by a crash, which the server's
aof-load-truncated handles; real damage) is left for the server to report. It never stops the
server from starting: it says what it did, or why it could not, and exits 0.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

CHUNK = 1 << 20
MAX_REPAIRS = 1000  # holes in one file: one per short write that was written again


def incremental_files(manifest: Path) -> list[Path]:
    """The incremental files the manifest lists ("file <name> seq <n> type i"), in order."""
    files = []
    for line in manifest.read_text().splitlines():
        fields = line.split()
        pairs = dict(zip(fields[::2], fields[1::2], strict=False))
        if pairs.get("type") == "i" and "file" in pairs:
            files.append(manifest.parent / pairs["file"].strip('"'))
    return files


def first_bad_offset(check_tool: str, path: Path) -> int | None:
    """Where redis-check-aof says the first bad command of `path` starts, None if it is valid."""
    run = subprocess.run([check_tool, str(path)], capture_output=True, text=True, check=False)  # noqa: S603 (the role's)
    output = run.stdout + run.stderr
    if run.returncode == 0 and "is valid" in output:
        return None
    found = re.search(r"ok_up_to=(\d+)", output)
    if not found:
        raise RuntimeError(f"{check_tool} {path}: no verdict in {output.strip()!r}")
    return int(found.group(1))


def hole_length(path: Path, offset: int) -> int:
    """How many NUL bytes start at `offset` when a command or the end of the file follows
    them; 0 when something else does (not a hole this script knows)."""
    length = 0
    with path.open("rb") as file:
        file.seek(offset)
        while chunk := file.read(CHUNK):
            stripped = chunk.lstrip(b"\0")
            length += len(chunk) - len(stripped)
            if stripped:
                return length if stripped.startswith(b"*") else 0
    return length


def cut(path: Path, offset: int, length: int) -> None:
    """Write `path` again without its bytes [offset, offset + length): a new file beside it,
    synced, then renamed over it (a crash leaves either file whole)."""
    temporary = path.with_name(f".{path.name}.repair")
    mode = path.stat().st_mode & 0o7777
    with path.open("rb") as source, temporary.open("wb") as target:
        os.fchmod(target.fileno(), mode)
        left = offset
        while left and (chunk := source.read(min(CHUNK, left))):
            target.write(chunk)
            left -= len(chunk)
        source.seek(offset + length)
        while chunk := source.read(CHUNK):
            target.write(chunk)
        target.flush()
        os.fsync(target.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def repair(check_tool: str, path: Path) -> list[tuple[int, int]]:
    """Remove each hole of `path`, first to last: the (offset, length) of each one removed."""
    removed: list[tuple[int, int]] = []
    for _ in range(MAX_REPAIRS):
        offset = first_bad_offset(check_tool, path)
        if offset is None:
            break
        length = hole_length(path, offset)
        if not length:
            break
        cut(path, offset, length)
        removed.append((offset, length))
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("manifest", type=Path, help="the AOF manifest (appendonlydir/<name>.manifest)")
    parser.add_argument("--check-tool", default="/usr/bin/redis-check-aof")
    args = parser.parse_args(argv)
    if not args.manifest.exists():
        return 0  # no AOF yet
    try:
        for path in incremental_files(args.manifest):
            if not path.exists():
                continue
            for offset, length in repair(args.check_tool, path):
                print(
                    f"{path.name}: removed {length} NUL bytes at offset {offset}, the hole a short "
                    "write left (the disk was full); every command after it is kept",
                    file=sys.stderr,
                )
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        print(f"could not check or repair the append-only file: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
