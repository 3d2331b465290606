"""The decision log: every decision and every offer outcome, appended as it happens.

The default sink is a SQLite file in WAL mode with one autocommitted INSERT
per record: a decision is on disk before the runtime returns it, so a process
killed with SIGKILL right after loses nothing (a power cut may lose the last
few, as ``synchronous=NORMAL`` allows). The schema is documented in
``data/README.md``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Protocol, runtime_checkable

from .decision import Decision, Outcome

__all__ = ["DecisionLog", "SQLiteDecisionLog", "SCHEMA", "SCHEMA_VERSION"]

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


@runtime_checkable
class DecisionLog(Protocol):
    def record_decision(self, decision: Decision) -> None: ...
    def record_outcome(self, outcome: Outcome) -> None: ...
    def record_goal(self, visitor_id: str, session_id: str, goal: str, ts: float, value: float | None) -> None: ...
    def record_ruleset(self, name: str, version: str, spec: dict, ts: float) -> None: ...
    def close(self) -> None: ...


def _checkpoint_loop(path: Path, stop: threading.Event, every_s: float) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    try:
        while not stop.wait(every_s):
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:  # a busy reader: the next round catches up
                log.warning("decision log checkpoint failed; retrying", exc_info=True)
    finally:
        db.close()


class SQLiteDecisionLog:
    """The default decision log.

    Checkpoints (copying the WAL back into the database, with an fsync of
    each) mostly run on a background thread with its own connection, not
    inside the INSERT that happens to cross the threshold. The writer keeps a
    (large) automatic checkpoint of its own, because only a checkpoint that
    completes between two writes lets the WAL start over: without it the WAL
    grew by gigabytes under steady load. Small pages (1 KiB) keep each
    commit's WAL write small.
    """

    def __init__(self, path: str | Path, *, checkpoint_every_s: float = 0.25, wal_pages: int = 4000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: every INSERT commits on its own, before the caller sees the decision.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA page_size=1024")  # only takes effect on a new file
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={int(wal_pages)}")
        self._stop = threading.Event()
        # The thread holds no reference to self, so a log dropped without close() is still collected.
        self._checkpointer = threading.Thread(target=_checkpoint_loop, args=(self.path, self._stop, checkpoint_every_s),
                                              name="pcrules-log-checkpoint", daemon=True)
        self._checkpointer.start()
        weakref.finalize(self, self._stop.set)

    def record_decision(self, d: Decision) -> None:
        metadata = json.dumps(dict(d.metadata), ensure_ascii=False) if d.metadata else None
        row = (d.ts, d.visitor_id, d.session_id, d.page, d.seconds_on_page, d.action.value,
               d.reason.value if d.reason else None, d.rule, d.queue, d.score, d.offer_id, int(d.holdout),
               d.expires_at, d.recheck_after, metadata, d.ruleset, d.ruleset_version, time.time())
        with self._lock:
            self._db.execute(_INSERT_DECISION, row)

    def record_outcome(self, o: Outcome) -> None:
        row = (o.offer_id, o.status.value, o.ts, o.visitor_id, o.session_id, o.rule, o.queue, o.offered_at,
               o.ruleset, o.ruleset_version, time.time())
        with self._lock:
            self._db.execute(_INSERT_OUTCOME, row)

    def record_goal(self, visitor_id: str, session_id: str, goal: str, ts: float, value: float | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO goals (ts, visitor_id, session_id, goal, value, logged_at) VALUES (?,?,?,?,?,?)",
                (ts, visitor_id, session_id, goal, value, time.time()),
            )

    def record_ruleset(self, name: str, version: str, spec: dict, ts: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO rulesets (name, version, activated_at, spec) VALUES (?,?,?,?)",
                (name, version, ts, json.dumps(spec, default=str, ensure_ascii=False)),
            )

    def close(self) -> None:
        self._stop.set()
        self._checkpointer.join(timeout=10)
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass
            self._db.close()
