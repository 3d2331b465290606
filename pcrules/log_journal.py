"""A crash-safe append-only journal of log records, one file per writing process.

The decision log writes each record here before the runtime returns (one
``write(2)`` of a few hundred bytes: once it returns the data belongs to the
kernel, so a process killed with SIGKILL loses nothing) and moves records to
SQLite in batches. A journal left behind by a dead process is moved to SQLite
by the next process that opens the log. (A file mapped shared saved ~1.5 us a
record but, measured, stalled the writer for 100-350 ms now and then: page
faults into fresh extents wait for the ext4 commit a SQLite fsync holds.)

Each file is held with an exclusive ``flock`` for as long as its writer lives,
so a recovering process can tell a live writer's journal (locked) from an
orphan (lockable). Files are created under a temporary name and renamed once
locked: a recovering process never sees an unlocked live journal.

Records are ``marshal``-encoded tuples of plain values, framed by length and
CRC-32; a torn or corrupt tail (a write cut short) ends the readable part.
"""

from __future__ import annotations

import fcntl
import marshal
import os
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any, Iterator

__all__ = ["Journal", "read_records", "orphans", "remove_stale_temporaries", "SUFFIX"]

SUFFIX = ".journal"
_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload


class Journal:
    """The journal this process appends to. Not thread-safe: the caller serialises appends."""

    def __init__(self, directory: Path):
        stem = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        temporary = directory / f".{stem}.tmp"
        for attempt in range(3):
            directory.mkdir(parents=True, exist_ok=True)
            try:
                self.fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
                break
            except FileNotFoundError:  # another process closing its log removed the empty directory meanwhile
                if attempt == 2:
                    raise
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.path = directory / f"{stem}{SUFFIX}"
        os.rename(temporary, self.path)
        self.offset = 0  # bytes written so far

    @property
    def name(self) -> str:
        return self.path.name

    def append(self, record: tuple[Any, ...]) -> None:
        payload = marshal.dumps(record)
        data = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        written = os.write(self.fd, data)
        if written != len(data):  # a full disk: say so rather than keep a torn record
            raise OSError(f"decision log journal {self.path}: wrote {written} of {len(data)} bytes")
        self.offset += written

    def close(self, *, remove: bool) -> None:
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # releases the lock


def read_records(path: Path, offset: int = 0) -> tuple[list[tuple[Any, ...]], int]:
    """The whole records after `offset`, and the offset just past the last one."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    records, at = [], 0
    while at + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, at)
        payload = data[at + _HEADER.size:at + _HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break  # torn or corrupt: nothing after it can be trusted
        records.append(marshal.loads(payload))
        at += _HEADER.size + length
    return records, offset + at


def orphans(directory: Path) -> Iterator[tuple[Path, int]]:
    """Journals whose writer is gone, each yielded locked (path, fd); the caller closes the fd."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # another process recovered it meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer holds it
        try:
            same = os.fstat(fd).st_nlink > 0 and os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # recovered and removed by another process between our open and our lock
            os.close(fd)
            continue
        yield path, fd


def remove_stale_temporaries(directory: Path) -> int:
    """Remove journals a writer died creating (before the rename that publishes them: they hold no record)."""
    removed = 0
    for path in directory.glob(".*.tmp") if directory.is_dir() else ():
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its writer is alive and about to rename it
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)
        removed += 1
    return removed
