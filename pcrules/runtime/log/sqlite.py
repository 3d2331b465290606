"""The decision log: every decision and every offer outcome, appended as it happens.

The default sink is a SQLite file in WAL mode. Each record is first appended
to a per-process journal (see :mod:`pcrules.log_journal`: one ``write(2)``, in
the kernel's hands before the runtime returns, so a process killed with SIGKILL
right after loses nothing; a power cut may lose the last few, as with SQLite's
``synchronous=NORMAL``) and reaches the SQLite tables in batches of
``batch_rows``, one transaction each, on the writing thread; a quiet writer's
records are moved by a background thread once they are ``flush_every_s`` old.
Readers of the file see a record within that interval;
:meth:`SQLiteDecisionLog.flush` makes it immediate. A journal left by a killed process is moved into the tables by
the next process that opens the log. The schema is documented in
``data/README.md``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ...core.decision import Decision, Outcome
from ...errors import LogUnavailable
from .journal import Journal, Scan, live_writers, orphans, read_records, remove_stale_temporaries

__all__ = ["DecisionLog", "JournalRecords", "LogHealth", "MemoryDecisionLog", "SQLiteDecisionLog", "SCHEMA",
           "SCHEMA_VERSION", "fresh_log", "refuse_if_open", "remove_log"]

log = logging.getLogger("pcrules.decision_log")

SCHEMA_VERSION = 2  # 2: decisions.explored and decisions.propensity (a version-1 file is upgraded in place)
SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id              INTEGER PRIMARY KEY,
    ts              REAL NOT NULL,      -- event time, epoch seconds
    visitor_id      TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    page            TEXT NOT NULL,
    seconds_on_page REAL NOT NULL,
    action          TEXT NOT NULL,      -- offer | wait | none
    reason          TEXT,               -- NULL for offer and wait
    rule            TEXT,
    queue           TEXT,
    score           REAL,
    offer_id        TEXT,
    holdout         INTEGER NOT NULL,   -- 1: a would-be offer withheld from a holdout visitor
    expires_at      REAL,
    recheck_after   REAL,
    metadata        TEXT,               -- JSON object, offers and would-be offers only
    ruleset         TEXT NOT NULL,
    ruleset_version TEXT NOT NULL,
    logged_at       REAL NOT NULL,      -- wall clock
    explored        INTEGER NOT NULL DEFAULT 0,  -- 1: an offer of a session in the exploration share
    propensity      REAL                -- offers: P(the logging policy made this offer at this moment)
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE INDEX IF NOT EXISTS decisions_offer ON decisions (offer_id) WHERE offer_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS outcomes (
    id              INTEGER PRIMARY KEY,
    offer_id        TEXT NOT NULL,
    status          TEXT NOT NULL,      -- accepted | declined | expired
    ts              REAL NOT NULL,      -- event time of the answer or of the expiry
    visitor_id      TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    rule            TEXT NOT NULL,
    queue           TEXT NOT NULL,
    offered_at      REAL NOT NULL,
    ruleset         TEXT NOT NULL,
    ruleset_version TEXT NOT NULL,
    logged_at       REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS outcomes_offer ON outcomes (offer_id);
CREATE TABLE IF NOT EXISTS goals (
    id              INTEGER PRIMARY KEY,
    ts              REAL NOT NULL,
    visitor_id      TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    goal            TEXT NOT NULL,
    value           REAL,
    logged_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS goals_visitor ON goals (visitor_id, session_id);
CREATE TABLE IF NOT EXISTS log_journals (
    file            TEXT PRIMARY KEY,   -- a journal in <log>.pending/ (internal)
    ingested        INTEGER NOT NULL    -- bytes of it already in the tables above
);
CREATE TABLE IF NOT EXISTS rulesets (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    activated_at    REAL NOT NULL,
    spec            TEXT NOT NULL       -- the spec as JSON
);
"""

_INSERT_DECISION = (
    "INSERT INTO decisions (ts, visitor_id, session_id, page, seconds_on_page, action, reason, rule, queue, score,"
    " offer_id, holdout, expires_at, recheck_after, metadata, ruleset, ruleset_version, logged_at, explored,"
    " propensity) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_OUTCOME = (
    "INSERT INTO outcomes (offer_id, status, ts, visitor_id, session_id, rule, queue, offered_at, ruleset,"
    " ruleset_version, logged_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_GOAL = "INSERT INTO goals (ts, visitor_id, session_id, goal, value, logged_at) VALUES (?,?,?,?,?,?)"
_INSERT_RULESET = "INSERT INTO rulesets (name, version, activated_at, spec) VALUES (?,?,?,?)"
# A journal record is (table, row); the table as a small int keeps each record short.
DECISION, OUTCOME, GOAL, RULESET = range(4)
_dumps_text = json.JSONEncoder(ensure_ascii=False).encode  # built once: dumps(ensure_ascii=False) builds one per call
_INSERTS = (_INSERT_DECISION, _INSERT_OUTCOME, _INSERT_GOAL, _INSERT_RULESET)
_COLUMNS = {table: sql.count("?") for table, sql in enumerate(_INSERTS)}
_V1_DECISION_COLUMNS = _COLUMNS[DECISION] - 2  # a journal written before schema 2: no explored, propensity


@dataclass(frozen=True, slots=True)
class LogHealth:
    """What a decision log can do now (the server's /healthz and /metrics show it)."""

    ok: bool                       # it takes records: decisions are being made
    problem: str | None = None     # why it does not, in words (a full disk, an unwritable directory ...)
    pending: int = 0               # records journaled and not yet in the tables
    failures: int = 0              # failed attempts to move records into the tables since it opened
    quarantined: int = 0           # damaged journals moved aside when it opened (see data/README.md)
    pending_age_s: float = 0.0     # how long records have been waiting: since `pending` was last 0


@runtime_checkable
class DecisionLog(Protocol):
    def reserve(self) -> None:
        """Make sure the next decision's records can be written; raise LogUnavailable if not (nothing changes)."""
        ...

    def health(self) -> LogHealth: ...
    def record_decision(self, decision: Decision) -> None: ...
    def record_outcome(self, outcome: Outcome) -> None: ...
    def record_goal(self, visitor_id: str, session_id: str, goal: str, ts: float, value: float | None) -> None: ...
    def record_ruleset(self, name: str, version: str, spec: dict[str, Any], ts: float) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class MemoryDecisionLog:
    """A decision log in lists, for tests and notebooks: nothing is durable, and it is always writable."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.outcomes: list[Outcome] = []
        self.goals: list[tuple[str, str, str, float, float | None]] = []
        self.rulesets: list[tuple[str, str, dict[str, Any], float]] = []

    def reserve(self) -> None:
        pass

    def health(self) -> LogHealth:
        return LogHealth(ok=True)

    def record_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)

    def record_outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def record_goal(self, visitor_id: str, session_id: str, goal: str, ts: float, value: float | None) -> None:
        self.goals.append((visitor_id, session_id, goal, ts, value))

    def record_ruleset(self, name: str, version: str, spec: dict[str, Any], ts: float) -> None:
        self.rulesets.append((name, version, spec, ts))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def refuse_if_open(path: str | Path) -> None:
    """LogUnavailable if a running process has the log at `path` open (it holds a journal there)."""
    path = Path(path)
    writers = live_writers(path.with_name(path.name + ".pending"))
    if writers:
        raise LogUnavailable(str(path), f"it is open in {writers} running process(es) (pcrules serve?); stop them "
                                        "or choose another --log")


@contextlib.contextmanager
def fresh_log(path: str | Path) -> Iterator[Path]:
    """A new, empty log written beside `path` that replaces it when the block ends without an error.

    Refuses (LogUnavailable) at once if a running process has `path` open: its records would go to a file
    nobody reads. The old log is untouched until the new one is complete.
    """
    path = Path(path)
    refuse_if_open(path)
    new = path.with_name(path.name + ".new")
    remove_log(new)
    try:
        yield new
    except BaseException:
        remove_log(new)
        raise
    writers = live_writers(path.with_name(path.name + ".pending"))
    if writers:  # opened while we wrote: keep both, say where the new one is
        raise LogUnavailable(str(path), f"it was opened by {writers} process(es) meanwhile; the new log is {new}")
    remove_log(path)
    os.replace(new, path)


def remove_log(path: str | Path) -> None:
    """Delete a decision log (not open anywhere) and everything that belongs to it: WAL, shared memory, journals."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(f"{path}.pending", ignore_errors=True)  # a killed writer's journal would come back otherwise


def _why_not_writable(path: Path, exc: BaseException) -> str:
    directory = path.parent
    if not directory.exists():
        return f"its directory {directory} cannot be created: {getattr(exc, 'strerror', None) or exc}"
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f"{directory} is on a read-only file system"
    except OSError:
        pass
    if not os.access(directory, os.W_OK):
        return f"no permission to write in {directory}"
    return str(getattr(exc, "strerror", None) or exc)


_ROWS_PER_STATEMENT = 128


@functools.lru_cache(maxsize=64)
def _multi_insert(table: int, rows: int) -> str:
    head, _, values = _INSERTS[table].partition(" VALUES ")
    return f"{head} VALUES {','.join([values] * rows)}"


def _insert(db: sqlite3.Connection, records: list[tuple[int, tuple[Any, ...]]]) -> None:
    """Consecutive records of one table, many rows per INSERT; the order within each table is kept.

    Not executemany: the sqlite3 module releases the GIL around every statement step, and on a busy
    interpreter each release costs this thread a full switch interval (5 ms) to get it back, so a batch
    inserted row by row fell further and further behind the runtime. One step per 128 rows keeps up.
    """
    for table, group in groupby(records, key=lambda r: r[0]):
        rows = [row for _, row in group]
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):
            chunk = rows[start:start + _ROWS_PER_STATEMENT]
            db.execute(_multi_insert(table, len(chunk)), [value for row in chunk for value in row])


_RETRY_AFTER_FAILURE_S = 0.5
_HEADROOM = 64 << 10  # disk reserved ahead of a decision: its record and the expiries it may close


def _room(journal: Journal) -> None:
    """Disk space for the next decision's records in `journal`, reserved; OSError (ENOSPC ...) if there is none."""
    journal.reserve(_HEADROOM)
    if not journal.can_reserve:  # a file system without fallocate: look at the free space instead
        fs = os.fstatvfs(journal.fd)
        if fs.f_bavail * fs.f_frsize < _HEADROOM:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _well_formed(record: tuple[Any, ...]) -> bool:
    """A journal record the tables can take: (table, row) with the table's number of columns."""
    if not (isinstance(record, tuple) and len(record) == 2 and record[0] in _COLUMNS
            and isinstance(record[1], tuple)):
        return False
    table, width = record[0], len(record[1])
    return width == _COLUMNS[table] or (table == DECISION and width == _V1_DECISION_COLUMNS)


def _current(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """A well-formed record in today's columns (a version-1 decision: not explored, no propensity)."""
    table, row = record
    if table == DECISION and len(row) == _V1_DECISION_COLUMNS:
        return table, row + (0, None)
    return record


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a log file to SCHEMA_VERSION: each step adds what its version added, in one transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    columns = {row[1] for row in db.execute("PRAGMA table_info(decisions)")}
    if columns and version < 2 and "explored" not in columns:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("ALTER TABLE decisions ADD COLUMN explored INTEGER NOT NULL DEFAULT 0")
            db.execute("ALTER TABLE decisions ADD COLUMN propensity REAL")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


# Shared with the PostgreSQL log (postgres.py), which journals the same records the same way.
INSERTS = _INSERTS
well_formed, upgrade_record, reserve_room, why_not_writable = _well_formed, _current, _room, _why_not_writable


class _Sink:
    """The journal, the pending records and the SQLite connection, shared with the background thread.

    Kept apart from SQLiteDecisionLog so the thread holds no reference to the log: a log dropped without
    close() is still collected, and its finaliser stops the thread.
    """

    def __init__(self, path: Path, wal_pages: int, rotate_bytes: int, batch_rows: int, max_pending: int):
        self.path = path
        self.lock = threading.Lock()          # journal + pending: held for microseconds by every record_*
        self.flush_lock = threading.Lock()    # one flush at a time
        self.rotate_bytes = rotate_bytes
        self.pending: list[tuple[int, tuple[Any, ...]]] = []
        self.oldest = 0.0  # monotonic time of the oldest pending record
        self.retired: list[tuple[Journal, int]] = []  # rotated out, removed once committed (with their size)
        self.batch_rows = batch_rows
        self.max_pending = max_pending
        self.failures = 0
        self.retry_at = 0.0                    # monotonic time before which the writing thread does not flush
        self.problem: str | None = None        # why the last reserve failed (records are refused meanwhile)
        self.flush_problem: str | None = None  # why the last move into SQLite failed (records wait meanwhile)
        self.unjournaled = 0                   # records a failing disk kept out of the journal (in memory only)
        self.quarantined: list[Path] = []
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA page_size=1024")  # only takes effect on a new file
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            _migrate(self.db)
            self.db.executescript(SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db.execute(f"PRAGMA wal_autocheckpoint={int(wal_pages)}")
            self.directory = path.with_name(path.name + ".pending")
            self.recovered = self._recover()
            self.journal: Journal | None = Journal(self.directory)
        except BaseException:
            self.db.close()
            raise

    def _recover(self) -> int:
        """Move the journals of dead writers into the tables; the number of records moved.

        A journal that was read whole is removed; one with damage (a torn or corrupt frame) is moved to
        ``<log>.quarantine/`` once its good records are in the tables, never deleted (see data/README.md).
        """
        moved = 0
        remove_stale_temporaries(self.directory)
        for journal_path, fd in orphans(self.directory):
            try:
                row = self.db.execute("SELECT ingested FROM log_journals WHERE file = ?",
                                      (journal_path.name,)).fetchone()
                found = read_records(journal_path, row[0] if row else 0, accept=_well_formed)
                self._commit([_current(r) for r in found.records], [(journal_path.name, found.end)])
                if found.clean:
                    journal_path.unlink(missing_ok=True)
                else:
                    self._quarantine(journal_path, found)
                self.db.execute("DELETE FROM log_journals WHERE file = ?", (journal_path.name,))
                moved += len(found.records)
            finally:
                os.close(fd)
        if moved:
            log.warning("decision log %s: recovered %d record(s) a stopped process had journaled", self.path, moved)
        return moved

    def _quarantine(self, journal_path: Path, found: Scan) -> None:
        aside = self.path.with_name(self.path.name + ".quarantine")
        aside.mkdir(exist_ok=True)
        target = aside / journal_path.name
        os.replace(journal_path, target)
        self.quarantined.append(target)
        first = found.damaged[0][0]
        log.error("decision log %s: journal %s was damaged: kept %d record(s), skipped %d byte(s) in %d place(s)"
                  " (the first at offset %d)%s; moved it to %s, where nothing removes it",
                  self.path, journal_path.name, len(found.records), found.skipped_bytes, len(found.damaged), first,
                  " (an old-format journal cannot be read past damage)" if found.legacy else "", target)

    def _commit(self, records: list[tuple[int, tuple[Any, ...]]], progress: list[tuple[str, int]]) -> None:
        """The records and how far their journals are ingested, in one transaction: a crash repeats nothing."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            _insert(db, records)
            db.executemany("INSERT INTO log_journals (file, ingested) VALUES (?, ?) "
                           "ON CONFLICT (file) DO UPDATE SET ingested = excluded.ingested", progress)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT (a full disk) may have rolled back already
                db.execute("ROLLBACK")
            raise

    def reserve(self) -> None:
        """Room for the next decision's records, in the journal's reserved space and in memory."""
        with self.lock:
            journal = self.journal
            if journal is None:
                raise LogUnavailable(str(self.path), "it is closed")
            try:
                try:
                    _room(journal)
                except OSError:
                    # Every record of this journal may be in the tables already: a fresh one gives its space back.
                    if not self._restart_journal():
                        raise
                    _room(self.journal)  # type: ignore[arg-type]
            except OSError as exc:
                self.problem = f"{self.directory}: {exc.strerror or exc}"
                raise LogUnavailable(str(self.path), self.problem) from None
            if len(self.pending) >= self.max_pending:
                self.problem = (f"{len(self.pending)} records are waiting to be moved into SQLite, which fails: "
                                f"{self.flush_problem}")
                raise LogUnavailable(str(self.path), self.problem)
            self.problem = None

    def _restart_journal(self) -> bool:
        """Swap the journal for an empty one when all its records are in the tables (called holding `lock`)."""
        old = self.journal
        if old is None or self.pending or self.retired or old.offset == 0 or not self.flush_lock.acquire(False):
            return False
        try:
            fresh = Journal(self.directory)
            old.close(remove=True)
            self.journal = fresh
            with contextlib.suppress(sqlite3.Error):  # a leftover row names a file that is gone: harmless
                self.db.execute("DELETE FROM log_journals WHERE file = ?", (old.name,))
            return True
        except OSError:
            return False
        finally:
            self.flush_lock.release()

    def append(self, table: int, row: tuple[Any, ...]) -> None:
        with self.lock:
            if self.journal is None:
                raise RuntimeError(f"decision log {self.path} is closed")
            try:
                self.journal.append((table, row))
            except OSError as exc:
                # Space was reserved before the decision was made, so this is a failing disk (EIO ...), after the
                # decision took effect: keep the record in memory (it reaches the tables with the next batch) and
                # let the next reserve refuse decisions until the disk answers again.
                self.unjournaled += 1
                self.journal.reserved = 0
                self.problem = f"{self.journal.path}: {exc.strerror or exc}"
                log.error("decision log %s: journal write failed (%s); the record is kept in memory until it is "
                          "in SQLite", self.path, exc)
            pending = self.pending
            if not pending:
                self.oldest = time.monotonic()
            pending.append((table, row))
            full = len(pending) >= self.batch_rows and time.monotonic() >= self.retry_at
        if full:
            # Moved by the writing thread itself, in one transaction per batch: a background thread that had
            # to win the GIL back from a busy interpreter at every SQLite call fell further and further behind.
            try:
                self.flush(blocking=False)
            except Exception as exc:  # journaled and still pending: the next batch or the background thread retries
                self.failed(exc)

    def failed(self, exc: Exception) -> None:
        # Requests stop trying for a while (a failing commit on a full disk costs them ~10 ms each); the
        # background thread keeps trying meanwhile.
        self.retry_at = time.monotonic() + _RETRY_AFTER_FAILURE_S
        self.failures += 1
        self.flush_problem = str(exc)
        if self.failures in (1, 10, 100) or self.failures % 1000 == 0:  # a full disk fails every batch: no log flood
            log.warning("decision log %s: moving records into SQLite failed (%d time(s) so far, %d record(s) wait):"
                        " %s; retrying", self.path, self.failures, len(self.pending), exc)

    def due(self, max_age_s: float) -> bool:
        """Records have waited longer than `max_age_s` (a quiet writer: the background thread moves them)."""
        return bool(self.pending) and time.monotonic() - self.oldest >= max_age_s

    def flush(self, *, final: bool = False, blocking: bool = True) -> None:
        if not self.flush_lock.acquire(blocking):
            return  # another thread is flushing
        try:
            self._flush(final)
            self.flush_problem = None
        finally:
            self.flush_lock.release()

    def _flush(self, final: bool) -> None:
        with self.lock:
            journal = self.journal
            if journal is None and not self.retired:
                return
            batch, self.pending = self.pending, []
            progress = []
            if journal is not None:
                end = journal.offset
                fresh = None
                if not final and end >= self.rotate_bytes:
                    try:
                        fresh = Journal(self.directory)
                    except OSError as exc:  # keep writing to this one; rotation is tried again next batch
                        log.warning("decision log %s: cannot start a new journal (%s)", self.path, exc)
                if final or fresh is not None:
                    # Later records go to the fresh journal; this one is removed once all of it is committed.
                    self.retired.append((journal, end))
                    self.journal = fresh
                else:
                    progress.append((journal.name, end))
            retired = list(self.retired)
        progress += [(j.name, end) for j, end in retired]
        try:
            self._commit(batch, progress)
        except BaseException:
            with self.lock:  # kept for the next attempt, ahead of anything recorded meanwhile
                self.pending[:0] = batch
            raise
        with self.lock:
            self.unjournaled = 0 if not self.pending else self.unjournaled
        for j, end in retired:  # all of each is in the tables now (and marked so, should we die right here)
            j.close(remove=True)
            self.db.execute("DELETE FROM log_journals WHERE file = ?", (j.name,))
            with self.lock:
                self.retired.remove((j, end))

    def health(self) -> LogHealth:
        try:
            self.reserve()
        except LogUnavailable as exc:
            return LogHealth(False, exc.reason, len(self.pending), self.failures, len(self.quarantined), self.age())
        problem = self.flush_problem and f"moving records into SQLite fails: {self.flush_problem}"
        return LogHealth(True, problem, len(self.pending), self.failures, len(self.quarantined), self.age())

    def age(self) -> float:
        return round(time.monotonic() - self.oldest, 3) if self.pending else 0.0

    def checkpoint(self) -> None:
        with self.flush_lock:
            # On a full disk the WAL's space goes back to the file system (TRUNCATE) once it is copied back.
            self.db.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if self.problem else 'PASSIVE'})")


def _background(sink: _Sink, stop: threading.Event, flush_every_s: float, checkpoint_every_s: float) -> None:
    last_checkpoint = time.monotonic()
    while not stop.wait(flush_every_s / 2):
        try:
            if sink.due(flush_every_s):
                sink.flush()
            if time.monotonic() - last_checkpoint >= checkpoint_every_s:
                sink.checkpoint()
                last_checkpoint = time.monotonic()
        except Exception as exc:  # a busy or full disk: the records stay journaled and pending; the next round retries
            sink.failed(exc)


class JournalRecords:
    """The record_* methods of a journaled log: each record is `(table, row)`, the row in its table's INSERT
    order (data/README.md). Shared by the SQLite and the PostgreSQL logs, so both write the same records."""

    _append: Callable[[int, tuple[Any, ...]], None]

    def record_decision(self, d: Decision) -> None:
        metadata = _dumps_text(d.metadata) if d.metadata else None
        self._append(DECISION, (d.ts, d.visitor_id, d.session_id, d.page, d.seconds_on_page, d.action.value,
                                d.reason.value if d.reason else None, d.rule, d.queue, d.score, d.offer_id,
                                int(d.holdout), d.expires_at, d.recheck_after, metadata, d.ruleset,
                                d.ruleset_version, time.time(), int(d.explored), d.propensity))

    def record_outcome(self, o: Outcome) -> None:
        self._append(OUTCOME, (o.offer_id, o.status.value, o.ts, o.visitor_id, o.session_id, o.rule, o.queue,
                               o.offered_at, o.ruleset, o.ruleset_version, time.time()))

    def record_goal(self, visitor_id: str, session_id: str, goal: str, ts: float, value: float | None) -> None:
        self._append(GOAL, (ts, visitor_id, session_id, goal, value, time.time()))

    def record_ruleset(self, name: str, version: str, spec: dict[str, Any], ts: float) -> None:
        self._append(RULESET, (name, version, ts, json.dumps(spec, default=str, ensure_ascii=False)))


class SQLiteDecisionLog(JournalRecords):
    """The default decision log (see the module docstring for how a record reaches the file).

    Checkpoints (copying the WAL back into the database) run on the same
    background thread, not inside a write that happens to cross the
    threshold. Small pages (1 KiB) keep each commit's WAL write small.
    """

    def __init__(self, path: str | Path, *, flush_every_s: float = 0.05, checkpoint_every_s: float = 0.25,
                 wal_pages: int = 4000, rotate_bytes: int = 16 << 20, batch_rows: int = 256,
                 max_pending: int = 200_000):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = _Sink(self.path, wal_pages, rotate_bytes, batch_rows, max_pending)
        except (OSError, sqlite3.Error) as exc:  # one line naming the path, not a driver traceback
            raise LogUnavailable(str(self.path), _why_not_writable(self.path, exc)) from None
        self._append = self._sink.append
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_background, args=(self._sink, self._stop, flush_every_s,
                                                                  checkpoint_every_s),
                                        name="pcrules-log-writer", daemon=True)
        self._thread.start()
        weakref.finalize(self, self._stop.set)

    @property
    def recovered(self) -> int:
        """Records a stopped process had journaled, moved into the tables when this log opened."""
        return self._sink.recovered

    @property
    def quarantined(self) -> list[Path]:
        """Damaged journals moved aside when this log opened (their good records are in the tables)."""
        return list(self._sink.quarantined)

    def reserve(self) -> None:
        """Raise LogUnavailable unless the next decision's records can be journaled (disk space is reserved)."""
        self._sink.reserve()

    def health(self) -> LogHealth:
        return self._sink.health()

    def flush(self) -> None:
        """Everything recorded so far is in the SQLite tables when this returns."""
        self._sink.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        sink = self._sink
        try:
            try:
                sink.flush(final=True)
            except (OSError, sqlite3.Error) as exc:
                # The journal stays on disk (unlocked once we exit) and the next process to open the log
                # moves it; only records a failing disk kept out of the journal are lost here.
                log.error("decision log %s: %d record(s) could not be moved into SQLite at close (%s); they stay in "
                          "the journal for the next process that opens the log%s", self.path, len(sink.pending), exc,
                          f", except {sink.unjournaled} held only in memory" if sink.unjournaled else "")
                return
            with contextlib.suppress(sqlite3.Error):
                sink.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with contextlib.suppress(OSError):  # still in use by another process's journal: it stays
                sink.directory.rmdir()
        finally:
            sink.db.close()
