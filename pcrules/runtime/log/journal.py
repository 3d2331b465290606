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

Disk space is reserved ahead of the records (``fallocate`` with
``FALLOC_FL_KEEP_SIZE``, a chunk at a time), so that the decision log can
refuse a decision *before* anything changes when the disk is full, and a
record written after the decision lands in space that is already the file's.
A write cut short anyway is cut back off the file: no torn record stays in
front of later ones.

Framing (written down in ``data/README.md``): every record is
``MAGIC | length | CRC-32 | payload``, the payload a ``marshal``-encoded
``(table, row)`` of plain values and the CRC over length and payload. A reader
that meets a bad frame (a torn write, flipped bytes) skips to the next
``MAGIC`` whose frame checks out, and counts what it skipped.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import marshal
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Journal", "Scan", "scan", "read_records", "orphans", "remove_stale_temporaries", "whole_frames", "SUFFIX",
           "MAGIC"]

SUFFIX = ".journal"
MAGIC = b"\xa7PJ2"                # starts every record; never the first bytes of a legacy (unframed) journal
_HEADER = struct.Struct("<4sII")  # magic, payload length, CRC-32 of (length, payload)
_LEGACY_HEADER = struct.Struct("<II")  # journals written before the magic: length, CRC-32 of the payload
_MAX_PAYLOAD = 64 << 20           # a "length" beyond this is damage, not a record
_RESERVE_CHUNK = 1 << 20          # disk space reserved at a time
_FALLOC_FL_KEEP_SIZE = 1

# The process's own symbols (libc among them): find_library would fork ldconfig on every import.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _reserve_space(fd: int, offset: int, length: int) -> bool:
    """Reserve [offset, offset+length) for the file without growing its size; False where unsupported."""
    if _libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False  # a file system without it: writes are checked one by one instead
    raise OSError(code, os.strerror(code))


def frame(record: tuple[Any, ...]) -> bytes:
    payload = marshal.dumps(record)
    length = struct.pack("<I", len(payload))
    return MAGIC + length + struct.pack("<I", zlib.crc32(payload, zlib.crc32(length))) + payload


class Journal:
    """The journal this process appends to. Not thread-safe: the caller serialises appends."""

    def __init__(self, directory: Path):
        # Unique across hosts too: the PostgreSQL log records each journal's progress under this name.
        stem = f"{os.getpid()}-{uuid.uuid4().hex}"
        temporary = directory / f".{stem}.tmp"
        for attempt in range(3):
            directory.mkdir(parents=True, exist_ok=True)
            try:
                self.fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
                break
            except FileNotFoundError:  # another process closing its log removed the empty directory meanwhile
                if attempt == 2:
                    raise
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.path = directory / f"{stem}{SUFFIX}"
            os.rename(temporary, self.path)
        except BaseException:
            os.close(self.fd)
            temporary.unlink(missing_ok=True)
            raise
        self.offset = 0            # bytes written so far (the file's size)
        self.reserved = 0          # bytes of disk the file holds, written or reserved
        self.can_reserve = True

    @property
    def name(self) -> str:
        return self.path.name

    def reserve(self, headroom: int) -> None:
        """Make sure `headroom` more bytes fit in space already the file's; OSError (ENOSPC ...) if they cannot."""
        if not self.can_reserve or self.offset + headroom <= self.reserved:
            return
        start = max(self.offset, self.reserved)
        try:
            supported = _reserve_space(self.fd, start, max(_RESERVE_CHUNK, headroom))
            size = max(_RESERVE_CHUNK, headroom)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # A nearly full disk: just what the next decision needs, so the log works down to the last bytes.
            supported = _reserve_space(self.fd, self.offset, headroom)
            start, size = self.offset, headroom
        if supported:
            self.reserved = start + size
        else:
            self.can_reserve = False

    def append(self, record: tuple[Any, ...]) -> None:
        data = frame(record)
        try:
            written = os.write(self.fd, data)
        except OSError:
            self._cut_back()
            raise
        if written != len(data):  # a full disk: cut the partial frame off rather than leave it torn
            self._cut_back()
            raise OSError(errno.ENOSPC, f"decision log journal {self.path}: wrote {written} of {len(data)} bytes")
        self.offset += written

    def _cut_back(self) -> None:
        """Remove a partial frame, so that later records do not follow a torn one (recovery would skip it anyway)."""
        try:
            os.ftruncate(self.fd, self.offset)
        except OSError:
            pass

    def close(self, *, remove: bool) -> None:
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # releases the lock


@dataclass
class Scan:
    """What a journal held: the records that check out, and the damage skipped to reach them."""

    records: list[tuple[Any, ...]] = field(default_factory=list)
    end: int = 0                  # offset just past the last byte read
    skipped_bytes: int = 0        # bytes in no good frame (torn writes, flipped bytes)
    damaged: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of each skipped run
    legacy: bool = False          # a journal written before framing had a magic: no resynchronisation

    @property
    def clean(self) -> bool:
        return not self.skipped_bytes


def whole_frames(data: bytes) -> tuple[int, int]:
    """(bytes, records) of the longest prefix of `data` made of whole frames, read by their headers alone (a reader
    of a journal still being written stops at the last whole record; scan() checks them)."""
    at = count = 0
    size, header = len(data), _HEADER.size
    while at + header <= size and data.startswith(MAGIC, at):
        end = at + header + _HEADER.unpack_from(data, at)[1]
        if end > size:
            break
        at, count = end, count + 1
    return at, count


def _valid(record: Any) -> bool:
    return (isinstance(record, tuple) and len(record) == 2 and isinstance(record[0], int)
            and isinstance(record[1], tuple))


def scan(data: bytes, base: int = 0, *, accept: Any = _valid) -> Scan:
    """Every good record in `data` (journal bytes starting at offset `base`), resynchronising past damage."""
    if base == 0 and data and not data.startswith(MAGIC):
        legacy = _scan_legacy(data, accept)
        if legacy.records:  # framed the old way (a journal left by an earlier version)
            return legacy
    out, at, size = Scan(), 0, len(data)
    header = _HEADER.size
    while at < size:
        good = False
        if data.startswith(MAGIC, at) and at + header <= size:
            _, length, crc = _HEADER.unpack_from(data, at)
            end = at + header + length
            if length <= _MAX_PAYLOAD and end <= size:
                payload = data[at + header:end]
                if zlib.crc32(payload, zlib.crc32(data[at + 4:at + 8])) == crc:
                    try:
                        record = marshal.loads(payload)
                    except (ValueError, EOFError, TypeError):
                        record = None
                    if accept(record):
                        out.records.append(record)
                        at, good = end, True
        if not good:
            following = data.find(MAGIC, at + 1)
            stop = size if following < 0 else following
            if out.damaged and sum(out.damaged[-1]) == base + at:  # one damaged run, however many false starts
                out.damaged[-1] = (out.damaged[-1][0], out.damaged[-1][1] + stop - at)
            else:
                out.damaged.append((base + at, stop - at))
            out.skipped_bytes += stop - at
            at = stop
    out.end = base + size
    return out


def _scan_legacy(data: bytes, accept: Any) -> Scan:
    out, at = Scan(legacy=True), 0
    while at + _LEGACY_HEADER.size <= len(data):
        length, crc = _LEGACY_HEADER.unpack_from(data, at)
        payload = data[at + _LEGACY_HEADER.size:at + _LEGACY_HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        try:
            record = marshal.loads(payload)
        except (ValueError, EOFError, TypeError):
            break
        if not accept(record):
            break
        out.records.append(record)
        at += _LEGACY_HEADER.size + length
    if at < len(data):  # without a magic there is nothing to resynchronise on
        out.damaged.append((at, len(data) - at))
        out.skipped_bytes = len(data) - at
    out.end = len(data)
    return out


def read_records(path: Path, offset: int = 0, *, accept: Any = _valid) -> Scan:
    """The records of a journal file after `offset` (how far an earlier recovery got)."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    return scan(data, offset, accept=accept)


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


def _held(path: Path) -> bool | None:
    """Whether a live process holds `path`'s lock (None: the file is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def live_writers(directory: Path) -> int:
    """Journals a live process holds (it has the log open)."""
    return sum(1 for path in directory.glob(f"*{SUFFIX}") if _held(path)) if directory.is_dir() else 0


def remove_stale_temporaries(directory: Path) -> int:
    """Remove journals a writer died creating (before the rename that publishes them: they hold no record)."""
    removed = 0
    for path in directory.glob(".*.tmp") if directory.is_dir() else ():
        if _held(path) is False:  # a live writer is about to rename it
            path.unlink(missing_ok=True)
            removed += 1
    return removed
