#!/usr/bin/python3
"""Remove the hole a full disk leaves in an append-only file, before the server loads it.

When a write to the AOF fills the disk part-way (a short write), Redis truncates the file back
to its size before that write and keeps the whole buffer to write again. But the incremental
file a rewrite opens has no O_APPEND (aof.c, openNewIncrAofForAppend: O_WRONLY|O_TRUNC|O_CREAT)
and the truncation does not move the file offset: once the disk has room, the buffer lands
after a run of NUL bytes as long as the short write, which ends where the disk's last free
block did. The server runs on, but refuses to start on that file ("Bad file format reading the
append only file") until it is rewritten (BGREWRITEAOF) or cut at the hole by
redis-check-aof --fix, which drops every write after it. Seen with Redis 7.0 and 8.0 and
Valkey 8 (a master whose disk filled and was freed without a failover, or a replica with
replica-ignore-disk-write-errors).

Run before each start (ExecStartPre), as the server's user. Each incremental file of the
manifest is read command by command (RESP arrays of bulk strings). A run of NUL bytes where a
command should start is removed when it ends at a block boundary (4 KiB) and a command
follows, or when it ends the file. The repaired file is written beside the original, synced
and renamed over it only if everything else in the file is whole; a command cut short at the
end (a crash mid-write: the server's aof-load-truncated loads the rest) is kept as it is.
Anything else (zeros that a power cut left between whole blocks, real damage) leaves the file
untouched for the server to report. It never stops the server from starting: it says what it
did, or why it did nothing, and exits 0.

Not repairable here: a second full disk before the file is rewritten. Redis then truncates the
file to the size it believes it has, which the first hole makes too short, and cuts off the
end of commands it had written. Rewrite the AOF (BGREWRITEAOF) once a full disk is over.
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 4096  # a short write ends where the disk's last free block ended (its block size)


@dataclass
class Scan:
    """What reading one incremental file found."""

    holes: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) to remove
    damage: int | None = None  # offset of something this script does not repair


def incremental_files(manifest: Path) -> list[Path]:
    """The incremental files the manifest lists ("file <name> seq <n> type i"), in order."""
    files = []
    for line in manifest.read_text().splitlines():
        fields = line.split()
        pairs = dict(zip(fields[::2], fields[1::2], strict=False))
        if pairs.get("type") == "i" and "file" in pairs:
            files.append(manifest.parent / pairs["file"].strip('"'))
    return files


CUT = -1  # a command that the end of the file cuts short
BAD = -2  # bytes that are not a command


def _command_end(data: bytes | mmap.mmap, at: int) -> int:
    """Where the command (a RESP array of bulk strings) or annotation ("#...") at `at` ends;
    CUT if the file ends inside it, BAD if the bytes there are not one."""
    size = len(data)
    line_end = data.find(b"\r\n", at)
    if line_end < 0:
        return CUT if data[at:size].lstrip(b"*#$-0123456789\r") == b"" else BAD
    if data[at : at + 1] == b"#":
        return line_end + 2
    if data[at : at + 1] != b"*" or not data[at + 1 : line_end].isdigit():
        return BAD
    count = int(data[at + 1 : line_end])
    at = line_end + 2
    for _ in range(count):
        if at >= size:
            return CUT
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return CUT if data[at:size].lstrip(b"$0123456789\r") == b"" else BAD
        if data[at : at + 1] != b"$" or not data[at + 1 : line_end].isdigit():
            return BAD
        at = line_end + 2 + int(data[at + 1 : line_end]) + 2
        if at > size:
            return CUT
        if data[at - 2 : at] != b"\r\n":
            return BAD
    return at


def scan(data: bytes | mmap.mmap, block: int = BLOCK) -> Scan:
    """The holes to remove from an incremental file's bytes, or where it is damaged. A hole
    starts where a command should (inside a block, or at the file's start) and ends at a block
    boundary, where the full disk stopped the write, before a command; or it ends the file.
    Zeros over whole blocks from a block boundary are what a power cut leaves, not a hole."""
    found = Scan()
    size = len(data)
    at = 0
    while at < size:
        end = _command_end(data, at)
        if end > 0:
            at = end
            continue
        if end == CUT:
            break  # a crash mid-write: the server loads the rest (aof-load-truncated)
        nuls = at
        while nuls < size and data[nuls] == 0:
            nuls += 1
        ends_the_file = nuls == size and nuls > at
        cut_short_write = (at == 0 or at % block) and nuls % block == 0 and _command_end(data, nuls) != BAD
        if ends_the_file or (nuls > at and cut_short_write):
            found.holes.append((at, nuls - at))
            at = nuls
            continue
        found.damage = at
        break
    return found


def rewrite_without(path: Path, holes: list[tuple[int, int]]) -> None:
    """Write `path` again without its holes: a new file beside it (same mode and owner),
    synced, renamed over it (a crash leaves either file whole), then the directory synced."""
    needed = path.stat().st_size - sum(length for _, length in holes)
    stat = os.statvfs(path.parent)
    if stat.f_bavail * stat.f_frsize < needed + BLOCK:
        raise OSError(f"{needed} bytes free are needed to write {path.name} again")
    temporary = path.with_name(f".{path.name}.repair")
    original = path.stat()
    try:
        with path.open("rb") as source, temporary.open("wb") as target:
            os.fchmod(target.fileno(), original.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.fchown(target.fileno(), original.st_uid, original.st_gid)
            at = 0
            for offset, length in [*holes, (original.st_size, 0)]:
                source.seek(at)
                left = offset - at
                while left > 0 and (chunk := source.read(min(1 << 20, left))):
                    target.write(chunk)
                    left -= len(chunk)
                at = offset + length
            target.flush()
            os.fsync(target.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def repair(path: Path) -> Scan:
    """Remove the holes of one incremental file if nothing else is wrong with it."""
    if path.stat().st_size == 0:
        return Scan()
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # Most starts: no NUL where a command could start, nothing to read command by command.
        if data[0] != 0 and data.find(b"\r\n\0") < 0:
            return Scan()
        found = scan(data, os.statvfs(path.parent).f_bsize or BLOCK)
    if found.holes and found.damage is None:
        rewrite_without(path, found.holes)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("manifest", type=Path, help="the AOF manifest (appendonlydir/<name>.manifest)")
    args = parser.parse_args(argv)
    try:
        files = incremental_files(args.manifest) if args.manifest.exists() else []
    except (OSError, UnicodeDecodeError) as error:
        print(f"could not read the AOF manifest: {error}", file=sys.stderr)
        return 0
    for path in files:
        try:
            if not path.exists():
                continue
            found = repair(path)
        except OSError as error:
            print(f"{path.name}: could not check or repair it: {error}", file=sys.stderr)
            continue
        where = ", ".join(f"{length} at offset {offset}" for offset, length in found.holes)
        if found.damage is not None:
            print(
                f"{path.name}: left as it is: damaged at offset {found.damage} (not a hole a full disk"
                f" leaves){'; NUL bytes also found: ' + where if where else ''}",
                file=sys.stderr,
            )
        elif found.holes:
            print(
                f"{path.name}: removed the NUL bytes a write cut short by a full disk left ({where});"
                " every command after them is kept",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
