"""The SQLite decision log: durable before observe() returns, WAL, the documented schema, outcomes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pcrules
from helpers import T0, ev, make_runtime, rule
from pcrules import Action, SQLiteDecisionLog
from pcrules.decision_log import SCHEMA_VERSION

# the directory holding the pcrules under test, for subprocesses
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pcrules.__file__)))

DECISION_COLUMNS = ["id", "ts", "visitor_id", "session_id", "page", "seconds_on_page", "action", "reason", "rule",
                    "queue", "score", "offer_id", "holdout", "expires_at", "recheck_after", "metadata", "ruleset",
                    "ruleset_version", "logged_at", "explored", "propensity"]
OUTCOME_COLUMNS = ["id", "offer_id", "status", "ts", "visitor_id", "session_id", "rule", "queue", "offered_at",
                   "ruleset", "ruleset_version", "logged_at"]
GOAL_COLUMNS = ["id", "ts", "visitor_id", "session_id", "goal", "value", "logged_at"]
RULESET_COLUMNS = ["id", "name", "version", "activated_at", "spec"]


def columns(db, table):
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]


CHILD = r"""
import sys
import pcrules
path = sys.argv[1]
spec = {"name": "kill", "policy": {"holdout": 0.0, "max_offers_per_session": 1},
        "queues": {"Billing": {}},
        "rules": [{"name": "r", "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 300}},
                   "offer": {"queue": "Billing"}}]}
rt = pcrules.Runtime(spec, log=pcrules.SQLiteDecisionLog(path))
i = 0
while True:
    # alternate offers, waits and none, each in a session named after its row
    page = "Home" if i % 3 == 2 else "Bill Payment"
    d = rt.observe({"visitor_id": f"v{i}", "session_id": f"row-{i}", "page": page,
                    "seconds_on_page": 301 if i % 3 == 0 else 10, "ts": 1767614400 + i * 0.01})
    print(f"row-{i} {d.action} {d.offer_id or '-'}", flush=True)
    i += 1
"""


def test_every_decision_printed_before_sigkill_is_in_the_database(tmp_path):
    path = tmp_path / "decisions.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT}, text=True)
    printed = []
    deadline = time.monotonic() + 60
    try:
        while len(printed) < 400 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(line.split())
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the child is still writing
    finally:
        proc.kill()
        proc.wait(10)
    assert len(printed) >= 400, proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL

    SQLiteDecisionLog(path).close()  # opening the log moves the dead writer's journal into the tables
    with sqlite3.connect(path) as db:
        rows = {r[0]: (r[1], r[2] or "-") for r in
                db.execute("SELECT session_id, action, offer_id FROM decisions")}
    missing = [p for p in printed if rows.get(p[0]) != (p[1], p[2])]
    assert not missing, missing[:5]
    assert {p[1] for p in printed} == {"offer", "wait", "none"}
    assert len(rows) >= len(printed)


def test_wal_mode_and_schema_as_documented(tmp_path):
    log = SQLiteDecisionLog(tmp_path / "log.sqlite")
    log.close()
    with sqlite3.connect(tmp_path / "log.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert columns(db, "decisions") == DECISION_COLUMNS
        assert columns(db, "outcomes") == OUTCOME_COLUMNS
        assert columns(db, "goals") == GOAL_COLUMNS
        assert columns(db, "rulesets") == RULESET_COLUMNS
    # reopening an existing log is fine and keeps its rows
    SQLiteDecisionLog(tmp_path / "log.sqlite").close()


def test_decision_rows_hold_what_was_decided(tmp_path):
    log = SQLiteDecisionLog(tmp_path / "log.sqlite")
    rt = make_runtime([rule(metadata={"Page Name": "{page}", "Time spent on page": "{minutes} mins"})], log=log)
    offer = rt.observe(ev(seconds=301, ts=T0))
    wait = rt.observe(ev(visitor="v2", seconds=100, ts=T0 + 1))
    none = rt.observe(ev(visitor="v3", page="Home", seconds=5, ts=T0 + 2))
    rt.flush()
    with sqlite3.connect(log.path) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM decisions ORDER BY id")]
        rulesets = db.execute("SELECT name, version, spec FROM rulesets").fetchall()
    assert [r["action"] for r in rows] == ["offer", "wait", "none"]
    o, w, n = rows
    assert (o["visitor_id"], o["session_id"], o["page"], o["seconds_on_page"], o["ts"]) == (
        "v1", "s1", "Bill Payment", 301, T0)
    assert (o["reason"], o["rule"], o["queue"], o["offer_id"], o["holdout"], o["expires_at"]) == (
        None, "bill", "Billing", offer.offer_id, 0, T0 + 60)
    assert json.loads(o["metadata"]) == {"Page Name": "Bill Payment", "Time spent on page": "5 mins"}
    assert (o["ruleset"], o["ruleset_version"]) == ("test", rt.spec.version)
    assert (w["recheck_after"], w["rule"], w["reason"], w["offer_id"], w["metadata"]) == (200, "bill", None, None, None)
    assert (n["reason"], n["rule"], n["recheck_after"]) == ("no_rule", None, None)
    assert all(r["logged_at"] > 1e9 for r in rows)
    assert wait.recheck_after == 200 and none.reason == "no_rule"
    assert [(name, version) for name, version, _ in rulesets] == [("test", rt.spec.version)]
    assert json.loads(rulesets[0][2])["rules"][0]["name"] == "bill"


def test_outcomes_table_gets_accepted_declined_and_expired_rows(tmp_path):
    log = SQLiteDecisionLog(tmp_path / "log.sqlite")
    rt = make_runtime(log=log)
    a = rt.observe(ev(visitor="va", session="sa", seconds=301, ts=T0))
    d = rt.observe(ev(visitor="vd", session="sd", seconds=301, ts=T0))
    e = rt.observe(ev(visitor="ve", session="se", seconds=301, ts=T0))
    x = rt.observe(ev(visitor="vx", session="sx", seconds=301, ts=T0))
    rt.accept(a.offer_id, ts=T0 + 5)
    rt.decline(d.offer_id, ts=T0 + 6)
    rt.expire(e.offer_id, ts=T0 + 7)
    rt.observe(ev(visitor="other", session="o", page="Home", seconds=1, ts=T0 + 60))  # expires x automatically
    rt.flush()
    with sqlite3.connect(log.path) as db:
        rows = db.execute("SELECT offer_id, status, ts, visitor_id, session_id, rule, queue, offered_at, ruleset"
                          " FROM outcomes ORDER BY id").fetchall()
    assert rows == [
        (a.offer_id, "accepted", T0 + 5, "va", "sa", "bill", "Billing", T0, "test"),
        (d.offer_id, "declined", T0 + 6, "vd", "sd", "bill", "Billing", T0, "test"),
        (e.offer_id, "expired", T0 + 7, "ve", "se", "bill", "Billing", T0, "test"),
        (x.offer_id, "expired", T0 + 60, "vx", "sx", "bill", "Billing", T0, "test"),
    ]
    assert all(r.action == Action.OFFER for r in (a, d, e, x))


def test_reload_is_recorded(tmp_path):
    log = SQLiteDecisionLog(tmp_path / "log.sqlite")
    rt = make_runtime(log=log)
    rt.reload({"name": "second", "queues": {"Billing": {}},
               "rules": [{"name": "r", "when": {"page": "Home"}, "offer": {"queue": "Billing"}}]})
    rt.flush()
    with sqlite3.connect(log.path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM rulesets ORDER BY id")] == ["test", "second"]
    d = rt.observe(ev(page="Home", seconds=1))
    rt.flush()
    with sqlite3.connect(log.path) as db:
        assert db.execute("SELECT ruleset FROM decisions").fetchall() == [("second",)]
    assert d.ruleset == "second"


def test_wal_stays_bounded_under_sustained_writes(tmp_path):
    """Only a checkpoint that completes between two writes lets the WAL start over; without the
    writer's own (large) automatic checkpoint, a background-only PASSIVE checkpoint let it grow by GBs."""
    import os

    from pcrules import SQLiteDecisionLog
    from pcrules.decision import Action, Decision, Reason

    path = tmp_path / "log.sqlite"
    log = SQLiteDecisionLog(path, wal_pages=500)
    for i in range(20_000):
        log.record_decision(Decision(Action.NONE, Reason.NO_RULE, f"v{i}", "s", 1000.0 + i, "Home", 1.0, "r", "x"))
        if i % 50 == 0:
            log.flush()  # many small transactions, as under steady load
    wal = os.path.getsize(f"{path}-wal")
    log.close()
    # 500 pages of 1 KiB, plus what was written while the last checkpoint ran
    assert wal < 2_000_000, f"WAL grew to {wal:,} bytes"


# ----------------------------------------------------------------------------- the journal in front of SQLite

JOURNAL_CHILD = r"""
import os, signal, sys
from pcrules import SQLiteDecisionLog
from pcrules.decision import Action, Decision, Reason
log = SQLiteDecisionLog(sys.argv[1], flush_every_s=3600)  # nothing moves to SQLite on its own
first, later = int(sys.argv[2]), int(sys.argv[3])
for i in range(first + later):
    if i == first:
        log.flush()
    log.record_decision(Decision(Action.NONE, Reason.NO_RULE, f"v{i}", "s", 1000.0 + i, "Home", 1.0, "r", "x"))
log.record_goal("v0", "s", "bill_paid", 2000.0, 12.5)
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_writer(path, first, later):
    proc = subprocess.run([sys.executable, "-c", JOURNAL_CHILD, str(path), str(first), str(later)],
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def table(path, sql):
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def test_records_only_journaled_when_the_writer_was_killed_are_recovered_once(tmp_path):
    path = tmp_path / "log.sqlite"
    killed_writer(path, first=30, later=70)  # 30 committed to SQLite, 70 + 1 goal only in the journal
    assert table(path, "SELECT count(*) FROM decisions") == [(30,)]
    log = SQLiteDecisionLog(path)
    assert log.recovered == 71
    log.close()
    assert [r[0] for r in table(path, "SELECT visitor_id FROM decisions ORDER BY id")] == [f"v{i}" for i in range(100)]
    assert table(path, "SELECT goal, value FROM goals") == [("bill_paid", 12.5)]
    # reopening again repeats nothing, and nothing is left behind
    again = SQLiteDecisionLog(path)
    assert again.recovered == 0
    again.close()
    assert table(path, "SELECT count(*) FROM decisions") == [(100,)]
    assert not list((tmp_path / "log.sqlite.pending").glob("*.journal"))
    assert table(path, "SELECT count(*) FROM log_journals") == [(0,)]


def test_a_torn_tail_ends_the_recovery_without_losing_the_whole_records(tmp_path):
    path = tmp_path / "log.sqlite"
    killed_writer(path, first=0, later=10)
    (journal,) = (tmp_path / "log.sqlite.pending").glob("*.journal")
    with open(journal, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02")  # a record header whose payload never made it
    log = SQLiteDecisionLog(path)
    log.close()
    assert log.recovered == 11 and table(path, "SELECT count(*) FROM decisions") == [(10,)]


def test_a_live_writers_journal_is_never_taken_by_another_opener(tmp_path):
    path = tmp_path / "log.sqlite"
    live = SQLiteDecisionLog(path, flush_every_s=3600)
    live.record_decision(pcrules.decision.Decision(Action.NONE, pcrules.Reason.NO_RULE, "v", "s", 1.0, "Home", 1.0,
                                                   "r", "x"))
    other = SQLiteDecisionLog(path)  # a second worker on the same file
    assert other.recovered == 0
    other.close()
    assert table(path, "SELECT count(*) FROM decisions") == [(0,)]  # still only journaled, and still the live one's
    live.close()
    assert table(path, "SELECT count(*) FROM decisions") == [(1,)]


def test_journals_rotate_and_every_record_arrives_once(tmp_path):
    path = tmp_path / "log.sqlite"
    log = SQLiteDecisionLog(path, flush_every_s=3600, rotate_bytes=2_000)
    for i in range(500):
        log.record_decision(pcrules.decision.Decision(Action.NONE, pcrules.Reason.NO_RULE, f"v{i}", "s", float(i),
                                                      "Home", 1.0, "r", "x"))
        if i % 20 == 0:
            log.flush()
    assert len(list((tmp_path / "log.sqlite.pending").glob("*.journal"))) == 1  # old ones removed once committed
    log.close()
    assert [r[0] for r in table(path, "SELECT visitor_id FROM decisions ORDER BY id")] == [f"v{i}" for i in range(500)]
    assert not (tmp_path / "log.sqlite.pending").exists()


def test_records_reach_the_file_on_their_own_within_the_flush_interval(tmp_path):
    path = tmp_path / "log.sqlite"
    log = SQLiteDecisionLog(path, flush_every_s=0.02)
    log.record_goal("v", "s", "bill_paid", 1.0, None)
    deadline = time.monotonic() + 10
    while table(path, "SELECT count(*) FROM goals") != [(1,)]:
        assert time.monotonic() < deadline, "the background writer never moved the record"
        time.sleep(0.01)
    log.close()


def test_remove_log_takes_the_journal_of_a_killed_writer_with_it(tmp_path):
    from pcrules.decision_log import remove_log

    path = tmp_path / "log.sqlite"
    killed_writer(path, first=5, later=5)
    remove_log(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    fresh = SQLiteDecisionLog(path)  # a new log does not inherit the old one's journaled records
    assert fresh.recovered == 0
    fresh.close()
    assert table(path, "SELECT count(*) FROM decisions") == [(0,)]


def test_a_busy_writer_moves_its_own_batches_and_never_piles_up(tmp_path):
    """A background-only mover lost every GIL hand-off to a busy writer and fell behind without bound."""
    from pcrules.decision import Decision, Reason

    path = tmp_path / "log.sqlite"
    log = SQLiteDecisionLog(path, flush_every_s=3600, batch_rows=100)  # no help from the background thread
    worst = 0
    for i in range(5_000):
        log.record_decision(Decision(Action.NONE, Reason.NO_RULE, f"v{i}", "s", float(i), "Home", 1.0, "r", "x"))
        worst = max(worst, len(log._sink.pending))
    assert worst <= 100
    assert table(path, "SELECT count(*) FROM decisions") == [(5_000,)]  # every full batch is in the file already
    log.close()


def test_a_journal_its_writer_died_creating_is_removed_and_a_live_ones_kept(tmp_path):
    import fcntl

    path = tmp_path / "log.sqlite"
    pending = tmp_path / "log.sqlite.pending"
    pending.mkdir()
    (pending / ".123-dead.tmp").write_bytes(b"")
    alive = pending / ".456-alive.tmp"
    alive.write_bytes(b"")
    fd = os.open(alive, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # its writer holds it, about to rename it
    try:
        log = SQLiteDecisionLog(path)
        assert not (pending / ".123-dead.tmp").exists() and alive.exists()
        log.close()
    finally:
        os.close(fd)


def test_a_version_1_log_and_journal_are_upgraded_in_place(tmp_path):
    """A log written before exploration (schema 1): its rows keep their values, gain explored=0 and a NULL
    propensity, and a version-1 journal left by a stopped process is still moved into the tables."""
    from pcrules.runtime.log import sqlite as sqlite_log

    path = tmp_path / "old.sqlite"
    import re

    v1_schema = re.sub(r"logged_at       REAL NOT NULL,.*?\n(\s*propensity[^\n]*\n)", "logged_at REAL NOT NULL\n",
                       sqlite_log.SCHEMA, flags=re.S)
    assert "explored" not in v1_schema.split("CREATE TABLE IF NOT EXISTS outcomes")[0]
    with sqlite3.connect(path) as db:
        db.executescript(v1_schema)
        db.execute("PRAGMA user_version=1")
        db.execute("INSERT INTO decisions (ts, visitor_id, session_id, page, seconds_on_page, action, holdout, ruleset,"
                   " ruleset_version, logged_at) VALUES (1, 'v', 's', 'Home', 0, 'none', 0, 'r', '1', 2)")
    SQLiteDecisionLog(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert columns(db, "decisions") == DECISION_COLUMNS
        assert db.execute("SELECT visitor_id, explored, propensity FROM decisions").fetchall() == [("v", 0, None)]
    old = (sqlite_log.DECISION, (3.0, "v2", "s2", "Home", 0.0, "none", "no_rule", None, None, None, None, 0, None, None,
                                 None, "r", "1", 4.0))
    assert sqlite_log._well_formed(old) and sqlite_log._current(old)[1][-2:] == (0, None)
