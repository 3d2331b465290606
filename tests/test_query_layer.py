"""One query layer for both decision logs (pcrules.logdb): every query the ops dashboard, pcrules.uplift and
training from the log run gives the same answer on a SQLite log and on a PostgreSQL copy of it, and the answers
equal SQL written by hand for each database.

The log: the shipped sample replayed through the default ruleset (~37k decisions, offers with every outcome,
holdout would-be offers), with goals for some eligible visitors (two goal names, some before and some after
the attribution window), copied row for row into a fresh PostgreSQL database (tests/logcopy.py) on the
``postgres_server`` of tests/pgserver.py.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from logcopy import copy_log

from pcrules import SQLiteDecisionLog, logdb, ops
from pcrules.ops import Filters
from pcrules.scoring.training import offers_from_log, train_on_offers
from pcrules.stats import uplift as up

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_dashboard  # noqa: E402

pytestmark = pytest.mark.services  # a PostgreSQL server


def build_log(path: Path) -> None:
    """The sample replayed through the default ruleset, then goals (benchmarks/bench_dashboard.py's base_log):
    every 3rd treated and 4th withheld eligible visitor converts 5 minutes after her first eligible decision
    (bill_paid), every 7th two days later (outside the window: plan_bought)."""
    bench_dashboard.base_log(path, late_goal="plan_bought")


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory, postgres_server: Any) -> Iterator[dict[str, Any]]:
    """{"sqlite": path, "postgresql": URL} of the same log."""
    path = tmp_path_factory.mktemp("query-layer") / "decisions.sqlite"
    build_log(path)
    url = postgres_server.new_database("test_query_layer")
    copy_log(path, url).dispose()
    yield {"sqlite": path, "postgresql": url}


@pytest.fixture(scope="module")
def span(logs: dict[str, Any]) -> tuple[float, float]:
    with ops.open_log(logs["sqlite"]) as conn:
        info = ops.log_info(conn)
    return info.first_ts, info.last_ts  # type: ignore[return-value]


def both(logs: dict[str, Any], query: Any, *args: Any, **kw: Any) -> tuple[Any, Any]:
    """`query(conn, ...)` on the SQLite log and on the PostgreSQL one."""
    out = []
    for log in (logs["sqlite"], logs["postgresql"]):
        with ops.open_log(log) as conn:
            out.append(query(conn, *args, **kw))
    return out[0], out[1]


def filters(span: tuple[float, float], conn_queues: list[str], pages: list[str]) -> list[Filters]:
    first, last = span
    middle = (first + last) / 2
    return [Filters(), Filters(start=last - 7 * 86400), Filters(start=last - 86400), Filters(start=middle, end=last),
            Filters(queue=conn_queues[0]), Filters(page=pages[0]),
            Filters(start=first + 1800.5, end=middle + 1234.5, queue=conn_queues[-1])]


def test_the_copy_is_the_same_log(logs: dict[str, Any]) -> None:
    stamp_sqlite, stamp_pg = both(logs, ops.log_stamp)
    assert stamp_sqlite == stamp_pg and min(stamp_sqlite) >= 1
    info_sqlite, info_pg = both(logs, ops.log_info)
    assert info_sqlite == info_pg and info_sqlite.decisions > 30_000


def test_tiles_series_and_reasons_are_the_same_on_both(logs: dict[str, Any], span: tuple[float, float]) -> None:
    (queues, pages), choices_pg = both(logs, ops.choices)
    assert choices_pg == (queues, pages) and queues and pages
    assert both(logs, ops.choices, ["Callback"], max_pages=3, window=500)[0] == \
        both(logs, ops.choices, ["Callback"], max_pages=3, window=500)[1]
    for f in filters(span, queues, pages):
        cube_sqlite, cube_pg = both(logs, ops.offer_cube, f)
        assert cube_sqlite == cube_pg, f
        assert cube_sqlite.per_hour() == cube_pg.per_hour()
        assert cube_sqlite.chats_per_hour_by_queue() == cube_pg.chats_per_hour_by_queue()
        for column in ("page", "rule", "queue"):
            assert both(logs, ops.offers_by, column, f) == both(logs, ops.offers_by, column, f)[::-1]
        summary_sqlite, summary_pg = both(logs, ops.decision_summary, f)
        assert summary_sqlite == summary_pg, f
        assert both(logs, ops.recent_decisions, f, 40)[0] == both(logs, ops.recent_decisions, f, 40)[1]
        for goal in (None, "bill_paid"):
            assert both(logs, ops.uplift, f, goal)[0] == both(logs, ops.uplift, f, goal)[1], (f, goal)
    every = both(logs, ops.offer_counts)[0]
    assert every.offers > 100 and every.accepted and every.declined and every.expired
    live_sqlite, live_pg = both(logs, ops.live_ruleset)
    assert (live_sqlite.name, live_sqlite.version, live_sqlite.spec, live_sqlite.created, live_sqlite.log_ruleset) \
        == (live_pg.name, live_pg.version, live_pg.spec, live_pg.created, live_pg.log_ruleset)
    assert live_sqlite.spec.get("rules")


def test_uplift_figures_are_the_same_on_both(logs: dict[str, Any], span: tuple[float, float]) -> None:
    first, last = span
    middle = (first + last) / 2
    cases: list[dict[str, Any]] = [
        {}, {"min_per_arm": 1}, {"goals": "bill_paid"}, {"goals": ["bill_paid", "plan_bought"]},
        {"goals": "no_such_goal"}, {"unit": "session"}, {"window_s": 3 * 86400.0}, {"window_s": 60.0},
        {"since": middle}, {"until": middle}, {"as_of": middle + 86400.0}, {"ruleset": "default"},
        {"ruleset": "another"}, {"mde": 0.05, "min_per_arm": 10}]
    for kw in cases:
        rows_kw = {k: v for k, v in kw.items() if k not in ("min_per_arm", "mde")}
        rows = [sorted(up.unit_counts(log, **rows_kw), key=repr) for log in (logs["sqlite"], logs["postgresql"])]
        assert rows[0] == rows[1], kw
        assert up.uplift_report(logs["sqlite"], **kw) == up.uplift_report(logs["postgresql"], **kw), kw
    report = up.uplift_report(logs["sqlite"], min_per_arm=1)
    assert report.overall.n_treated > 100 and report.overall.n_control > 5 and report.by_page


def test_frames_for_notebooks_and_effects_are_the_same_on_both(logs: dict[str, Any], span: tuple[float, float]) -> None:
    middle = sum(span) / 2
    for kw in ({}, {"since": middle}, {"until": middle}):
        eligible = [up.read_eligible(log, **kw) for log in (logs["sqlite"], logs["postgresql"])]
        pd.testing.assert_frame_equal(eligible[0], eligible[1], check_dtype=False)
        goals = [up.read_goals(log, **kw) for log in (logs["sqlite"], logs["postgresql"])]
        pd.testing.assert_frame_equal(goals[0], goals[1], check_dtype=False)
    eligible = up.read_eligible(logs["postgresql"])
    assert set(eligible["action"]) == {"offer", "none"} and eligible["holdout"].sum() > 0
    # effects from the log, read from PostgreSQL, equal those read from SQLite
    from pcrules.decision_value import effects_from_log

    effects = [effects_from_log(up.read_eligible(log), up.read_goals(log), min_per_arm=1)
               for log in (logs["sqlite"], logs["postgresql"])]
    assert effects[0].pooled == effects[1].pooled
    pd.testing.assert_frame_equal(effects[0].table, effects[1].table, check_dtype=False)
    assert effects[0].pooled_effect == effects[1].pooled_effect


def test_training_offers_are_the_same_on_both(logs: dict[str, Any]) -> None:
    offers = [offers_from_log(log) for log in (logs["sqlite"], logs["postgresql"])]
    pd.testing.assert_frame_equal(offers[0], offers[1], check_dtype=False)
    frame = offers[1]
    with sqlite3.connect(logs["sqlite"]) as db:
        by_status = dict(db.execute("SELECT o.status, COUNT(*) FROM decisions d JOIN outcomes o ON o.offer_id ="
                                    " d.offer_id WHERE d.action = 'offer' GROUP BY o.status").fetchall())
    assert frame["response"].value_counts().to_dict() == {
        "accept": by_status["accepted"], "decline": by_status["declined"], "none": by_status["expired"]}
    assert frame.loc[frame["response"] == "none", "response_delay_s"].isna().all()
    assert (frame.loc[frame["response"] != "none", "response_delay_s"] >= 0).all()
    result = train_on_offers(frame, refit=False)  # a model trains on the log's offers, whichever database
    assert result.n_train + result.n_test == len(frame)


# --------------------------------------------------------------------------- SQL written by hand, per database

HOUR = {"sqlite": "CAST(d.ts / 3600 AS INTEGER)", "postgresql": "CAST(FLOOR(d.ts / 3600) AS BIGINT)"}


def by_hand(log: Any, dialect: str, sql: str) -> list[tuple[Any, ...]]:
    with logdb.connect(log) as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql.replace("{hour}", HOUR[dialect])).all()]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_queries_equal_sql_written_by_hand(logs: dict[str, Any], dialect: str) -> None:
    log = logs[dialect]
    with ops.open_log(log) as conn:
        cube = ops.offer_cube(conn)
        summary = ops.decision_summary(conn)
        uplift = ops.uplift(conn)
        info = ops.log_info(conn)
    # offers per hour and status
    hourly = by_hand(log, dialect, "SELECT {hour}, o.status, COUNT(*) FROM decisions d LEFT JOIN outcomes o"
                                   " ON o.offer_id = d.offer_id WHERE d.action = 'offer' GROUP BY 1, 2")
    expected: dict[float, list[int]] = {}
    for hour, status, n in hourly:
        cell = expected.setdefault(float(hour) * 3600, [0, 0, 0, 0])
        cell[0] += n
        if status:
            cell[("accepted", "declined", "expired").index(status) + 1] += n
    assert {h: [c.offers, c.accepted, c.declined, c.expired] for h, c in cube.per_hour()} == expected
    # the hour is the floor, on both (PostgreSQL's CAST alone rounds: it would move the second half of each hour)
    rounded = by_hand(log, dialect, "SELECT COUNT(*) FROM decisions d WHERE CAST(d.ts / 3600 AS INTEGER) <> {hour}")
    assert rounded[0][0] > 0 if dialect == "postgresql" else rounded[0][0] == 0
    # decisions by action and reason
    reasons = by_hand(log, dialect, "SELECT action, reason, COUNT(*) FROM decisions GROUP BY action, reason")
    want: dict[str, int] = {}
    for action, reason, n in reasons:
        want[action] = want.get(action, 0) + n
        if action == "none":
            want[f"none:{reason}"] = n
    assert dict(summary.by_reason) == want
    count, first, last = by_hand(log, dialect, "SELECT COUNT(*), MIN(ts), MAX(ts) FROM decisions")[0]
    assert (info.decisions, info.first_ts, info.last_ts) == (count, first, last)
    # uplift: visitors by the arm of their first eligible decision, and those with a goal within a day of it
    # (by MIN: the query layer numbers the rows with ROW_NUMBER)
    arms = by_hand(log, dialect, """
        WITH e AS (SELECT id, visitor_id, ts, holdout FROM decisions WHERE action = 'offer' OR holdout = 1),
             m AS (SELECT visitor_id, MIN(ts) AS ts FROM e GROUP BY visitor_id),
             f AS (SELECT MIN(e.id) AS id FROM e JOIN m ON m.visitor_id = e.visitor_id AND m.ts = e.ts
                   GROUP BY e.visitor_id)
        SELECT e.holdout, COUNT(*), SUM(CASE WHEN EXISTS (SELECT 1 FROM goals g WHERE g.visitor_id = e.visitor_id
                                           AND g.ts >= e.ts AND g.ts <= e.ts + 86400) THEN 1 ELSE 0 END)
        FROM f JOIN e ON e.id = f.id GROUP BY e.holdout""")
    counts = {int(h): (int(n), int(c)) for h, n, c in arms}
    assert (uplift.offered, uplift.offered_converted) == counts[0]
    assert (uplift.withheld, uplift.withheld_converted) == counts[1]


# --------------------------------------------------------------------------- URLs, read-only, problems


def test_urls_and_engines(tmp_path: Path) -> None:
    url = logdb.log_url("postgresql://ops:secret@db.example:5432/pcrules")
    assert url.drivername == "postgresql+psycopg" and url.database == "pcrules"
    assert logdb.log_url("postgresql+psycopg://h/db").drivername == "postgresql+psycopg"
    assert logdb.describe("postgresql://ops:secret@db.example/pcrules") == "postgresql://ops:***@db.example/pcrules"
    assert logdb.describe("postgresql://ops@db.example/pcrules?password=secret&sslmode=require") == \
        "postgresql://ops@db.example/pcrules?sslmode=require"
    assert logdb.is_postgres("postgres://h/db") and not logdb.is_postgres(tmp_path / "x.sqlite")
    assert logdb.engine_for("postgresql://ops@h/db") is logdb.engine_for("postgresql://ops@h/db")  # pooled, one
    # a SQLite file whose name a URI would misread
    odd = tmp_path / "a dir #1" / "log ?.sqlite"
    odd.parent.mkdir()
    SQLiteDecisionLog(odd).close()
    plain = tmp_path / "a dir #1" / "log.sqlite"
    SQLiteDecisionLog(plain).close()
    for given in (odd, str(odd), f"sqlite:///{plain}"):  # a URL's ? starts its query: a plain name there
        with ops.open_log(given) as conn:
            assert ops.log_info(conn).decisions == 0
    assert logdb.describe(f"sqlite:///{plain}") == str(plain)
    # a caller's own sqlite3 connection is read as it is: its uncommitted rows seen, never rolled back or closed
    db = sqlite3.connect(plain)
    db.execute("INSERT INTO goals (ts, visitor_id, session_id, goal, value, logged_at) VALUES (1, 'v', 's', 'g', 1, 0)")
    assert len(up.read_goals(db)) == 1 and up.unit_counts(db) == []
    assert db.in_transaction
    db.rollback()
    db.close()
    with pytest.raises(FileNotFoundError):
        up.uplift_from_log(tmp_path / "missing.sqlite")


def test_postgres_log_is_read_only_and_problems_are_named(logs: dict[str, Any], postgres_server: Any) -> None:
    with ops.open_log(logs["postgresql"]) as conn:
        with pytest.raises(sa.exc.InternalError, match="read-only"):
            conn.exec_driver_sql("DELETE FROM decisions")
    with ops.open_log(logs["postgresql"]) as conn:
        assert ops.log_info(conn).decisions > 30_000  # nothing deleted

    def kind(url: str) -> tuple[str, str]:
        with pytest.raises(ops.LogNotReadable) as info:
            with ops.open_log(url):
                pass
        return info.value.kind, str(info.value)

    empty = postgres_server.new_database("test_query_layer_empty")
    assert kind(empty)[0] == "empty"
    other = postgres_server.new_database("test_query_layer_other")
    engine = sa.create_engine(logdb.log_url(other))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE decisions (x integer)")
    engine.dispose()
    k, text = kind(other)
    assert k == "not_a_log" and "goals" in text
    k, text = kind(f"postgresql://nobody:secret@127.0.0.1:{_closed_port()}/pcrules?connect_timeout=2")
    assert k == "unreadable" and "secret" not in text and "nobody:***@" in text


def _closed_port() -> int:
    from pcrules.ops.voila import free_port

    return free_port()


def test_the_dashboard_shows_the_same_tiles_on_both(logs: dict[str, Any]) -> None:
    pytest.importorskip("ipywidgets")
    from pcrules.ops import Dashboard

    tiles = []
    for log in (logs["sqlite"], logs["postgresql"]):
        d = Dashboard(log)
        assert not d.message.value, d.message.value
        tiles.append({k: w.value for k, w in d.tiles.items()})
    assert tiles[0] == tiles[1]
    assert 'data-tile="offers"' in tiles[0]["offers"]


def test_nan_free_answers(logs: dict[str, Any]) -> None:
    """Numbers come back as Python numbers from either driver (no Decimal, no NaN for an empty selection)."""
    for log in (logs["sqlite"], logs["postgresql"]):
        with ops.open_log(log) as conn:
            nothing = Filters(start=1.0, end=2.0)
            assert ops.offer_counts(conn, nothing) == ops.OfferCounts()
            assert ops.decision_summary(conn, nothing).first_ts is None
            assert ops.uplift(conn, nothing) == ops.Uplift(0, 0, 0, 0)
            info = ops.log_info(conn)
            assert isinstance(info.first_ts, float) and not math.isnan(info.first_ts)


def test_cli_dashboard_takes_a_postgresql_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``pcrules dashboard --log postgresql://...`` hands the URL to Voila as given (no file checks on it), and
    voila's environment carries it unchanged to the kernel; a path is still checked and made absolute."""
    from pcrules import cli
    from pcrules.ops import voila

    seen: list[Any] = []
    monkeypatch.setattr(voila, "serve", lambda log, **kw: seen.append(log) or 0)
    url = "postgresql://ops@127.0.0.1:5/pcrules"
    assert cli.main(["dashboard", "--log", url, "--port", str(_closed_port())]) == 0
    assert seen == [url]
    assert voila.voila_env(url, None, {})[ops.LOG_ENV] == url
    (tmp_path / "not-a-log.sqlite").write_text("hello")
    assert cli.main(["dashboard", "--log", str(tmp_path / "not-a-log.sqlite")]) != 0
    assert voila.voila_env("rel.sqlite", None, {})[ops.LOG_ENV] == str(Path("rel.sqlite").absolute())
