"""The decision log in PostgreSQL, against a real server (tests/pgserver.py): the SQLite log's tables and columns,
the same rows, and exactly once under faults: a serving process killed with SIGKILL, PostgreSQL stopped under
load, and one host's journals moved by another host while the first retries.

The invariant asserted is the SQLite log's (tests/test_faults_log.py): every decision a client was given is in
the log exactly once, and nothing is in it twice.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from pgserver import PostgresServer

import pcrules
from helpers import T0, ev
from pcrules import Action, Runtime, SQLiteDecisionLog
from pcrules.errors import LogUnavailable
from pcrules.runtime.log import PostgresDecisionLog, open_log
from pcrules.runtime.log.postgres import SCHEMA_VERSION, describe, ingest_journals
from pcrules.server._procs import ServeProcess

pytestmark = pytest.mark.services  # a PostgreSQL server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pcrules.__file__)))
RULES = {"name": "pg", "policy": {"holdout": 0.0, "max_offers_per_session": 1, "offer_timeout_s": 3600},
         "queues": {"Billing": {}},
         "rules": [{"name": "bill", "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 0}},
                    "offer": {"queue": "Billing"}}]}
OPEN = {"visitor_rate": None, "address_rate": None, "metrics_public": True}  # one loopback address drives the load


def rows(url: str, sql: str, args: tuple = ()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def sqlite_rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


# --------------------------------------------------------------------------------------------- the schema


def test_the_tables_and_columns_mirror_the_sqlite_log(postgres_server, tmp_path):
    url = postgres_server.new_database("pg_schema")
    PostgresDecisionLog(url, journal_dir=tmp_path / "j").close()
    lite = tmp_path / "d.sqlite"
    SQLiteDecisionLog(lite).close()
    for table in ("decisions", "outcomes", "goals", "rulesets"):
        pg = rows(url, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                       "ORDER BY ordinal_position", (table,))
        sq = sqlite_rows(lite, f"SELECT name, type FROM pragma_table_info('{table}')")
        assert [c for c, _ in pg] == [c for c, _ in sq], table
        kinds = {"INTEGER": {"bigint", "integer"}, "REAL": {"double precision"}, "TEXT": {"text"}}
        assert all(p in kinds[s] for (_, p), (_, s) in zip(pg, sq)), (table, pg, sq)
    assert rows(url, "SELECT version FROM log_schema") == [(SCHEMA_VERSION,)] == [(2,)]
    indexes = {r[0] for r in rows(url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    sqlite_indexes = {r[0] for r in sqlite_rows(lite, "SELECT name FROM sqlite_master WHERE type = 'index' "
                                                      "AND name NOT LIKE 'sqlite_%'")}
    assert sqlite_indexes <= indexes and {"outcomes_ts", "goals_ts"} <= indexes
    # a second opener (another host starting at the same time) finds it made and changes nothing
    PostgresDecisionLog(url, journal_dir=tmp_path / "j2").close()
    assert rows(url, "SELECT count(*) FROM log_schema") == [(1,)]


def test_the_same_events_give_the_same_rows_as_sqlite(postgres_server, tmp_path):
    url = postgres_server.new_database("pg_same_rows")
    spec = {**RULES, "rules": RULES["rules"] + [{"name": "home", "when": {"page": "Home", "seconds_on_page":
                                                                          {"gte": 60}}, "offer": {"queue": "Billing"}}]}
    logs = {"pg": PostgresDecisionLog(url, journal_dir=tmp_path / "j"), "sqlite": SQLiteDecisionLog(tmp_path / "d.db")}
    for log in logs.values():
        offer_ids = iter(f"o{i}" for i in range(99))
        rt = Runtime(spec, log=log, clock=lambda: T0 + 1000, new_offer_id=lambda ids=offer_ids: next(ids))
        for i in range(20):
            d = rt.observe(ev(f"v{i}", f"s{i}", page="Bill Payment" if i % 2 else "Home",
                              seconds=30 if i % 4 else 90, ts=T0 + i))
            if d.action == Action.OFFER:
                (rt.accept if i % 3 else rt.decline)(d.offer_id, ts=T0 + i + 1)
        rt.record_goal("v1", "s1", "bill_paid", ts=T0 + 30, value=12.5)
        rt.close()
    compare = {"decisions": "ts, visitor_id, session_id, page, seconds_on_page, action, reason, rule, queue, score, "
                            "offer_id, holdout, expires_at, recheck_after, metadata, ruleset, ruleset_version, "
                            "explored, propensity",
               "outcomes": "offer_id, status, ts, visitor_id, session_id, rule, queue, offered_at, ruleset, "
                           "ruleset_version",
               "goals": "ts, visitor_id, session_id, goal, value", "rulesets": "name, version, spec"}
    for table, columns in compare.items():
        pg = rows(url, f"SELECT {columns} FROM {table} ORDER BY id")
        sq = sqlite_rows(tmp_path / "d.db", f"SELECT {columns} FROM {table} ORDER BY id")
        assert pg == sq and pg, table
    assert not list((tmp_path / "j").glob("*.journal"))  # all in: the journal is gone, its mark stays
    assert rows(url, "SELECT records FROM log_journals") == [(len(rows(url, "SELECT id FROM decisions"))
                                                              + len(rows(url, "SELECT id FROM outcomes")) + 1 + 1,)]


def test_open_log_chooses_by_url_and_never_prints_a_password(postgres_server, tmp_path):
    url = postgres_server.new_database("pg_open")
    log = open_log(url, journal_dir=tmp_path / "j")
    assert isinstance(log, PostgresDecisionLog) and log.connected
    log.close()
    assert isinstance(open_log(tmp_path / "d.sqlite"), SQLiteDecisionLog)
    assert describe("postgresql://app:s3cret@db.example:5433/log?sslmode=require&password=x") == \
        "postgresql://app:***@db.example:5433/log?sslmode=require"


def test_opening_with_postgresql_down_still_takes_records(tmp_path):
    # nothing listens there: the log opens at once, journals, reports the backlog and moves it when asked later
    log = PostgresDecisionLog("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1", journal_dir=tmp_path / "j")
    assert not log.connected
    for i in range(5):
        log.reserve()
        log.record_goal(f"v{i}", "s", "g", T0, None)
    health = log.health()
    assert health.ok and health.pending == 5 and "PostgreSQL does not answer" in health.problem
    with pytest.raises(LogUnavailable, match="does not answer"):
        log.flush()
    log.close()  # the records stay in the journal for the next opener
    assert len(list((tmp_path / "j").glob("*.journal"))) == 1


# --------------------------------------------------------------------------------------------- load helpers


class Load:
    """Threads observing through a server, each decision in a session of its own; what the clients were given."""

    def __init__(self, url: str, prefix: str, threads: int = 4):
        self.url, self.prefix = url, prefix
        self.given: dict[str, tuple[str, str]] = {}   # session id -> (action, offer id or "-")
        self.failed: Counter = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]
        self.slowest = 0.0

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            i = 0
            while not self.stop.is_set():
                session = f"{self.prefix}{n}-{i}"
                i += 1
                body = {"visitor_id": f"v{session}", "session_id": session,
                        "page": "Bill Payment" if i % 2 else "Home", "seconds_on_page": 5}
                start = time.monotonic()
                try:
                    r = http.post("/v1/observe", json=body)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failed[type(exc).__name__] += 1
                    time.sleep(0.01)
                    continue
                with self.lock:
                    self.slowest = max(self.slowest, time.monotonic() - start)
                    if r.status_code == 200:
                        out = r.json()
                        self.given[session] = (out["action"], out["offer_id"] or "-")
                    else:
                        self.failed[r.status_code] += 1

    def count(self) -> int:
        with self.lock:
            return len(self.given)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.count() >= n, f"only {self.count()} decisions in {timeout} s ({dict(self.failed)})"


def assert_exactly_once(url: str, given: dict[str, tuple[str, str]]) -> None:
    logged = rows(url, "SELECT session_id, action, coalesce(offer_id, '-') FROM decisions")
    twice = [s for s, n in Counter(s for s, _, _ in logged).items() if n > 1]
    assert not twice, f"{len(twice)} decisions logged twice, e.g. {twice[:5]}"
    found = {s: (a, o) for s, a, o in logged}
    missing = [s for s, decided in given.items() if found.get(s) != decided]
    assert not missing, f"{len(missing)} of {len(given)} decisions given to clients are not in PostgreSQL: " \
                        f"{[(s, given[s], found.get(s)) for s in missing[:5]]}"


def health(server: ServeProcess) -> dict:
    return httpx.get(server.url + "/healthz", timeout=5).json()


def metric(server: ServeProcess, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match[1])


def wait_drained(server: ServeProcess, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(server)
        # drained: nothing waits but what the last moments brought (a server under load is never at exactly 0)
        if h["log"]["problem"] is None and (h["log"]["pending"] == 0 or h["log"]["pending_age_s"] < 0.5):
            return h
        time.sleep(0.1)
    raise AssertionError(f"the backlog did not drain within {timeout} s: {h}")


def serve(tmp_path: Path, url: str, journal_dir: Path, name: str) -> ServeProcess:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    return ServeProcess(["--rules", str(rules), "--log", url], log_file=tmp_path / f"{name}.out",
                        config={**OPEN, "log_journal_dir": str(journal_dir)})


# --------------------------------------------------------------------------------------------- faults


@pytest.mark.faults
@pytest.mark.slow
def test_a_server_killed_with_sigkill_mid_load_loses_and_repeats_nothing(postgres_server, tmp_path):
    url = postgres_server.new_database("pg_sigkill")
    journals = tmp_path / "journal"
    first = serve(tmp_path, url, journals, "first").start()
    try:
        with Load(first.url, "a") as load:
            load.wait_for(1500)
            first.signal(signal.SIGKILL)  # mid-load: requests in flight, records journaled and not yet moved
            first.proc.wait(10)
        given = dict(load.given)
    finally:
        first.stop()
    left = list(journals.glob("*.journal"))
    assert left, "the killed server left no journal"
    second = serve(tmp_path, url, journals, "second").start()  # moves the dead one's journal on opening
    try:
        with Load(second.url, "b") as load:
            load.wait_for(500)
        given.update(load.given)
        h = wait_drained(second)
        assert h["log"]["database"] == "postgresql" and h["status"] == "ok"
    finally:
        second.stop()
    assert_exactly_once(url, given)
    assert not any(p.exists() for p in left)  # moved and removed
    print(f"{len(given)} decisions given, every one in PostgreSQL once")


@pytest.mark.faults
@pytest.mark.slow
def test_postgresql_down_under_load_keeps_serving_shows_the_backlog_and_drains_it(tmp_path):
    with PostgresServer() as pg:
        url = pg.new_database("pg_down")
        server = serve(tmp_path, url, tmp_path / "journal", "server").start()
        try:
            with Load(server.url, "d") as load:
                load.wait_for(300)
                pg.stop()
                stopped_at = load.count()
                backlog = []
                for _ in range(3):
                    time.sleep(0.7)
                    h = health(server)
                    assert h["status"] == "ok" and h["log"]["ok"], h  # decisions are still made and journaled
                    assert "PostgreSQL does not answer" in h["log"]["problem"], h
                    backlog.append((h["log"]["pending"], metric(server, "pcrules_log_pending")))
                served_while_down = load.count() - stopped_at
                assert backlog[0][0] < backlog[1][0] < backlog[2][0], backlog  # growing
                assert all(b[1] > 0 for b in backlog), backlog
                assert metric(server, "pcrules_log_pending_age_seconds") > 1.0
                restarted = time.monotonic()
                pg.start()
                wait_drained(server)
                drained_s = time.monotonic() - restarted
                assert metric(server, "pcrules_log_pending_age_seconds") < 1.0  # only the last moments' records
                load.wait_for(load.count() + 100)
            assert served_while_down > 200, served_while_down
            assert not load.failed, load.failed  # nothing refused, nothing failed
            assert load.slowest < 1.0, load.slowest
        finally:
            server.stop()
        assert_exactly_once(url, load.given)
        print(f"{len(load.given)} decisions, {served_while_down} served while PostgreSQL was down; "
              f"backlog seen {[b[0] for b in backlog]}, drained {drained_s:.1f} s after PostgreSQL started")


WRITER = r"""
import sys, time
from pcrules.runtime.log import PostgresDecisionLog
url, journal_dir, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
log = PostgresDecisionLog(url, journal_dir=journal_dir, flush_every_s=0.2, batch_rows=10_000, rotate_bytes=8_000,
                          host="host-a")
for i in range(first, first + count):
    log.reserve()
    log.record_goal(f"r{i}", "s", "g", 1767614400.0 + i, float(i))
    print(i, flush=True)
    if i % 10 == 0:  # about 2,000 records/s: several journals and several rounds of its mover before the kill
        time.sleep(0.005)
log.close()
print("closed", flush=True)
"""


def _copy_journals(source: Path, target: Path) -> int:
    """Another host given host A's journals as they are now (a snapshot of each file, perhaps mid-record)."""
    copied = 0
    for path in source.glob("*.journal"):
        try:
            shutil.copyfile(path, target / f".{path.name}.copy")
        except FileNotFoundError:
            continue
        os.replace(target / f".{path.name}.copy", target / path.name)
        copied += 1
    return copied


@pytest.mark.faults
def test_two_hosts_moving_the_same_journals_never_duplicate_or_drop_a_record(postgres_server, tmp_path):
    url = postgres_server.new_database("pg_two_hosts")
    a_dir, b_dir = tmp_path / "host-a", tmp_path / "host-b"
    b_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT}
    printed: list[int] = []
    moved_by_b = 0

    def host_b_round() -> None:
        nonlocal moved_by_b
        if a_dir.exists():
            _copy_journals(a_dir, b_dir)
        moved_by_b += ingest_journals(url, b_dir, batch_bytes=2_000)

    # Host A writes 0..; it is killed mid-way, while host B moves copies of its journals over and over.
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, str(a_dir), "0", "100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    stop = threading.Event()

    def read_a() -> None:
        for line in proc.stdout:
            if line.strip().isdigit():
                printed.append(int(line))
            if stop.is_set():
                break

    reader = threading.Thread(target=read_a, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while len(printed) < 1500 and time.monotonic() < deadline:
        host_b_round()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    reader.join(5)
    assert len(printed) >= 1500, proc.stderr.read()
    killed_at = max(printed)
    host_b_round()
    # Host A restarts on its own journal directory (moving what it left) and writes more, as B keeps going.
    again = subprocess.Popen([sys.executable, "-c", WRITER, url, str(a_dir), str(killed_at + 1), "1500"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while again.poll() is None:
        host_b_round()
    out, err = again.communicate(timeout=30)
    assert again.returncode == 0 and "closed" in out, err
    printed += [int(x) for x in out.split() if x.isdigit()]
    host_b_round()
    host_b_round()
    logged = [r[0] for r in rows(url, "SELECT visitor_id FROM goals")]
    twice = [v for v, n in Counter(logged).items() if n > 1]
    assert not twice, f"{len(twice)} records moved twice, e.g. {twice[:5]}"
    missing = sorted(set(f"r{i}" for i in printed) - set(logged))
    assert not missing, f"{len(missing)} records lost, e.g. {missing[:5]}"
    assert moved_by_b > 0, "host B never moved a record first: the race was not exercised"
    hosts = dict(rows(url, "SELECT host, count(*) FROM log_journals GROUP BY host"))
    assert set(hosts) <= {"host-a", os.uname().nodename} and len(printed) >= 3000
    print(f"{len(printed)} records, {moved_by_b} moved by host B first, journals' last movers {hosts}")


def test_a_stale_copy_of_a_journal_adds_nothing(postgres_server, tmp_path):
    url = postgres_server.new_database("pg_stale_copy")
    log = PostgresDecisionLog(url, journal_dir=tmp_path / "a", flush_every_s=3600)
    for i in range(10):
        log.record_goal(f"v{i}", "s", "g", T0 + i, None)
    (journal,) = (tmp_path / "a").glob("*.journal")
    (tmp_path / "b").mkdir()
    shutil.copyfile(journal, tmp_path / "b" / journal.name)  # taken before any of it was moved
    log.close()
    assert ingest_journals(url, tmp_path / "b") == 0
    assert rows(url, "SELECT count(*) FROM goals") == [(10,)]
    assert not list((tmp_path / "b").glob("*.journal"))


STUCK_WRITER = r"""
import sys, time
import pcrules.runtime.log.postgres as pg
url, journal_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
claim, calls = pg._claim, [0]

def stuck_claim(*args):
    moved = claim(*args)
    calls[0] += 1
    if calls[0] == 3:  # the third batch: its mark moved, its rows not copied, its transaction open
        print("mid-batch", flush=True)
        time.sleep(120)
    return moved

pg._claim = stuck_claim
log = pg.PostgresDecisionLog(url, journal_dir=journal_dir, flush_every_s=0.02, batch_rows=50)
for i in range(count):
    log.reserve()
    log.record_goal(f"r{i}", "s", "g", 1767614400.0 + i, None)
    print(i, flush=True)
    time.sleep(0.001)
time.sleep(120)
"""


@pytest.mark.faults
def test_a_host_killed_mid_batch_while_another_waits_on_its_journal(postgres_server, tmp_path):
    url = postgres_server.new_database("pg_mid_batch")
    a_dir, b_dir = tmp_path / "host-a", tmp_path / "host-b"
    b_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", STUCK_WRITER, url, str(a_dir), "400"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if lines[-1] == "399":
                break
        assert "mid-batch" in lines, proc.stderr.read()
        printed = [int(x) for x in lines if x.isdigit()]
        _copy_journals(a_dir, b_dir)  # host B is given host A's journal while A's batch is open
        moved: list[int] = []
        b = threading.Thread(target=lambda: moved.append(ingest_journals(url, b_dir)))
        b.start()
        b.join(1.0)
        assert b.is_alive(), "host B did not wait for the open batch on the same journal"
        os.kill(proc.pid, signal.SIGKILL)  # PostgreSQL rolls A's batch back: B's compare-and-set goes through
        b.join(30)
        assert not b.is_alive() and moved and moved[0] > 0
    finally:
        proc.kill()
        proc.wait(10)
    again = PostgresDecisionLog(url, journal_dir=a_dir)  # A restarts: what B moved is not moved again
    again.close()
    logged = [r[0] for r in rows(url, "SELECT visitor_id FROM goals")]
    assert sorted(logged, key=lambda v: int(v[1:])) == [f"r{i}" for i in printed] == [f"r{i}" for i in range(400)]
    assert not list(a_dir.glob("*.journal")) and not list(b_dir.glob("*.journal"))
