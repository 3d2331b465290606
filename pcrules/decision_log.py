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
import functools
import json
import os
import shutil
import logging
import sqlite3
import threading
import time
import weakref
from itertools import groupby
from pathlib import Path
from typing import Protocol, runtime_checkable

from .decision import Decision, Outcome
from .log_journal import Journal, orphans, read_records, remove_stale_temporaries

__all__ = ["DecisionLog", "SQLiteDecisionLog", "SCHEMA", "SCHEMA_VERSION", "remove_log"]

log = logging.getLogger("pcrules.decision_log")

SCHEMA_VERSION = 1
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
    logged_at       REAL NOT NULL       -- wall clock
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
    " offer_id, holdout, expires_at, recheck_after, metadata, ruleset, ruleset_version, logged_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
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


@runtime_checkable
class DecisionLog(Protocol):
    def record_decision(self, decision: Decision) -> None: ...
    def record_outcome(self, outcome: Outcome) -> None: ...
    def record_goal(self, visitor_id: str, session_id: str, goal: str, ts: float, value: float | None) -> None: ...
    def record_ruleset(self, name: str, version: str, spec: dict, ts: float) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def remove_log(path: str | Path) -> None:
    """Delete a decision log (not open anywhere) and everything that belongs to it: WAL, shared memory, journals."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(f"{path}.pending", ignore_errors=True)  # a killed writer's journal would come back otherwise


_ROWS_PER_STATEMENT = 128


@functools.lru_cache(maxsize=64)
def _multi_insert(table: int, rows: int) -> str:
    head, _, values = _INSERTS[table].partition(" VALUES ")
    return f"{head} VALUES {','.join([values] * rows)}"


def _insert(db: sqlite3.Connection, records: list[tuple[int, tuple]]) -> None:
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


class _Sink:
    """The journal, the pending records and the SQLite connection, shared with the background thread.

    Kept apart from SQLiteDecisionLog so the thread holds no reference to the log: a log dropped without
    close() is still collected, and its finaliser stops the thread.
    """

    def __init__(self, path: Path, wal_pages: int, rotate_bytes: int, batch_rows: int):
        self.path = path
        self.lock = threading.Lock()          # journal + pending: held for microseconds by every record_*
        self.flush_lock = threading.Lock()    # one flush at a time
        self.rotate_bytes = rotate_bytes
        self.pending: list[tuple[int, tuple]] = []
        self.oldest = 0.0  # monotonic time of the oldest pending record
        self.retired: list[tuple[Journal, int]] = []  # rotated out, removed once committed (with their size)
        self.batch_rows = batch_rows
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA page_size=1024")  # only takes effect on a new file
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.db.execute(f"PRAGMA wal_autocheckpoint={int(wal_pages)}")
        self.directory = path.with_name(path.name + ".pending")
        self.recovered = self._recover()
        self.journal: Journal | None = Journal(self.directory)
        self.failures = 0

    def _recover(self) -> int:
        """Move the journals of dead writers into the tables; the number of records moved."""
        moved = 0
        remove_stale_temporaries(self.directory)
        for journal_path, fd in orphans(self.directory):
            try:
                row = self.db.execute("SELECT ingested FROM log_journals WHERE file = ?", (journal_path.name,)).fetchone()
                records, end = read_records(journal_path, row[0] if row else 0)
                self._commit(records, [(journal_path.name, end)])
                journal_path.unlink(missing_ok=True)
                self.db.execute("DELETE FROM log_journals WHERE file = ?", (journal_path.name,))
                moved += len(records)
            finally:
                os.close(fd)
        if moved:
            log.warning("decision log %s: recovered %d record(s) a stopped process had journaled", self.path, moved)
        return moved

    def _commit(self, records: list[tuple[int, tuple]], progress: list[tuple[str, int]]) -> None:
        """The records and how far their journals are ingested, in one transaction: a crash repeats nothing."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            _insert(db, records)
            db.executemany("INSERT INTO log_journals (file, ingested) VALUES (?, ?) "
                           "ON CONFLICT (file) DO UPDATE SET ingested = excluded.ingested", progress)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def append(self, table: int, row: tuple) -> None:
        with self.lock:
            if self.journal is None:
                raise RuntimeError(f"decision log {self.path} is closed")
            self.journal.append((table, row))
            pending = self.pending
            if not pending:
                self.oldest = time.monotonic()
            pending.append((table, row))
            full = len(pending) >= self.batch_rows
        if full:
            # Moved by the writing thread itself, in one transaction per batch: a background thread that had
            # to win the GIL back from a busy interpreter at every SQLite call fell further and further behind.
            try:
                self.flush(blocking=False)
            except Exception:  # journaled and still pending: the next batch or the background thread retries
                self.failures += 1
                log.warning("decision log %s: moving records into SQLite failed; retrying", self.path, exc_info=True)

    def due(self, max_age_s: float) -> bool:
        """Records have waited longer than `max_age_s` (a quiet writer: the background thread moves them)."""
        return bool(self.pending) and time.monotonic() - self.oldest >= max_age_s

    def flush(self, *, final: bool = False, blocking: bool = True) -> None:
        if not self.flush_lock.acquire(blocking):
            return  # another thread is flushing
        try:
            self._flush(final)
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
                if final or end >= self.rotate_bytes:
                    # Later records go to a fresh journal; this one is removed once all of it is committed.
                    self.retired.append((journal, end))
                    self.journal = None if final else Journal(self.directory)
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
        for j, end in retired:  # all of each is in the tables now (and marked so, should we die right here)
            j.close(remove=True)
            self.db.execute("DELETE FROM log_journals WHERE file = ?", (j.name,))
            with self.lock:
                self.retired.remove((j, end))

    def checkpoint(self) -> None:
        with self.flush_lock:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _background(sink: _Sink, stop: threading.Event, flush_every_s: float, checkpoint_every_s: float) -> None:
    last_checkpoint = time.monotonic()
    while not stop.wait(flush_every_s / 2):
        try:
            if sink.due(flush_every_s):
                sink.flush()
            if time.monotonic() - last_checkpoint >= checkpoint_every_s:
                sink.checkpoint()
                last_checkpoint = time.monotonic()
        except Exception:  # a busy or full disk: the records stay journaled and pending; the next round retries
            sink.failures += 1
            log.warning("decision log %s: moving records into SQLite failed; retrying", sink.path, exc_info=True)


class SQLiteDecisionLog:
    """The default decision log (see the module docstring for how a record reaches the file).

    Checkpoints (copying the WAL back into the database) run on the same
    background thread, not inside a write that happens to cross the
    threshold. Small pages (1 KiB) keep each commit's WAL write small.
    """

    def __init__(self, path: str | Path, *, flush_every_s: float = 0.05, checkpoint_every_s: float = 0.25,
                 wal_pages: int = 4000, rotate_bytes: int = 16 << 20, batch_rows: int = 256):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = _Sink(self.path, wal_pages, rotate_bytes, batch_rows)
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

    def record_decision(self, d: Decision) -> None:
        metadata = _dumps_text(d.metadata) if d.metadata else None
        self._append(DECISION, (d.ts, d.visitor_id, d.session_id, d.page, d.seconds_on_page, d.action.value,
                                d.reason.value if d.reason else None, d.rule, d.queue, d.score, d.offer_id,
                                int(d.holdout), d.expires_at, d.recheck_after, metadata, d.ruleset,
                                d.ruleset_version, time.time()))

    def record_outcome(self, o: Outcome) -> None:
        self._append(OUTCOME, (o.offer_id, o.status.value, o.ts, o.visitor_id, o.session_id, o.rule, o.queue,
                               o.offered_at, o.ruleset, o.ruleset_version, time.time()))

    def record_goal(self, visitor_id: str, session_id: str, goal: str, ts: float, value: float | None) -> None:
        self._append(GOAL, (ts, visitor_id, session_id, goal, value, time.time()))

    def record_ruleset(self, name: str, version: str, spec: dict, ts: float) -> None:
        self._append(RULESET, (name, version, ts, json.dumps(spec, default=str, ensure_ascii=False)))

    def flush(self) -> None:
        """Everything recorded so far is in the SQLite tables when this returns."""
        self._sink.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        sink = self._sink
        try:
            sink.flush(final=True)
            with contextlib.suppress(sqlite3.Error):
                sink.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with contextlib.suppress(OSError):  # still in use by another process's journal: it stays
                sink.directory.rmdir()
        finally:
            sink.db.close()
