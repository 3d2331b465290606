"""The ops dashboard on a million decisions: first useful paint and filter changes (targets: <= 3 s, <= 1 s).

    python benchmarks/bench_dashboard.py [--decisions 1000000] [--keep var/bench/decisions.sqlite] [--reuse]
                                         [--browser] [--postgres URL|auto]

The log: the shipped sample replayed through the default ruleset (37,430 decisions, with goals for a third
of the offered and a quarter of the withheld visitors), then copied day after day, as new visitors, until it
holds the number of decisions asked for (1M: 27 copies, 33 days: about a month of traffic). Copies are made
in SQL, so building the log takes seconds rather than the ~100 s a replay of a million events takes; the
dashboard's queries see the same shape of data either way.

Measured in this process, as the notebook builds it (``background_charts``; no kernel start, no browser):

* **first useful paint**: building the dashboard until its tiles have their numbers (what Voila waits for
  before it sends the page), and until its six charts are drawn too;
* **filter changes**: a queue, then time ranges (all time, the last 24 hours, two custom days), then a queue
  chosen again (remembered: no query);
* **baseline**: one plain scan of the decisions table (``GROUP BY action``), timed in the same run, so the
  figures can be read as multiples of what this machine's disk and CPU take to read the log once.

``--postgres URL`` then copies the log into that (empty) PostgreSQL database (``auto``: a throw-away server of
tests/pgserver.py) and times the same steps on it, through the same queries (:mod:`pcrules.logdb`).

``--browser`` also times the first render in headless Chromium (Debian's, through Playwright) of a fresh Voila
server: from the page request until every tile holds its number and every chart its image, kernel start
included; then a second page view.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("PCRULES_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DECISION_COLUMNS = ("ts, visitor_id, session_id, page, seconds_on_page, action, reason, rule, queue, score, offer_id,"
                    " holdout, expires_at, recheck_after, metadata, ruleset, ruleset_version, logged_at")


def base_log(path: Path, late_goal: str | None = None) -> int:
    """Replay the sample through the default ruleset into ``path``, add goals; return the decisions logged.

    Goals: every 3rd treated and 4th withheld eligible visitor converts 5 minutes after her first eligible
    decision (bill_paid); with ``late_goal``, every 7th also reaches that goal two days later (outside the window).
    """
    from pcrules import Runtime, SQLiteDecisionLog, load_spec
    from pcrules.cli import DEFAULT_RULES
    from pcrules.replay import replay
    from pcrules.sample import read_events

    with Runtime(load_spec(DEFAULT_RULES), log=SQLiteDecisionLog(path)) as runtime:
        replay(runtime, read_events())
        runtime.flush()
        with sqlite3.connect(path) as db:
            eligible = db.execute(
                "SELECT visitor_id, MIN(session_id), holdout, MIN(ts) FROM decisions"
                " WHERE action = 'offer' OR holdout = 1 GROUP BY visitor_id, holdout ORDER BY visitor_id").fetchall()
        for i, (visitor, session, holdout, first) in enumerate(eligible):
            if i % (4 if holdout else 3) == 0:
                runtime.record_goal(visitor, session, "bill_paid", ts=first + 300)
            if late_goal is not None and i % 7 == 0:
                runtime.record_goal(visitor, session, late_goal, ts=first + 2 * 86400)
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]


def grow(path: Path, target: int) -> int:
    """Copy the log's decisions (and their outcomes and goals), one day later each time, as new visitors."""
    db = sqlite3.connect(path)
    try:
        n0 = db.execute("SELECT MAX(id) FROM decisions").fetchone()[0]
        o0 = db.execute("SELECT COALESCE(MAX(id), 0) FROM outcomes").fetchone()[0]
        g0 = db.execute("SELECT COALESCE(MAX(id), 0) FROM goals").fetchone()[0]
        total, k = n0, 0
        db.execute("BEGIN")
        while total < target:
            k += 1
            take = min(n0, target - total)
            shift, tag = 86400.0 * k, f"~{k}"
            db.execute(
                f"INSERT INTO decisions ({DECISION_COLUMNS}) SELECT ts + ?, visitor_id || ?, session_id || ?, page,"
                " seconds_on_page, action, reason, rule, queue, score, offer_id || ?, holdout, expires_at + ?,"
                " recheck_after, metadata, ruleset, ruleset_version, logged_at FROM decisions WHERE id <= ?",
                (shift, tag, tag, tag, shift, take))
            db.execute(
                "INSERT INTO outcomes (offer_id, status, ts, visitor_id, session_id, rule, queue, offered_at, ruleset,"
                " ruleset_version, logged_at) SELECT o.offer_id || ?, o.status, o.ts + ?, o.visitor_id || ?,"
                " o.session_id || ?, o.rule, o.queue, o.offered_at + ?, o.ruleset, o.ruleset_version, o.logged_at"
                " FROM outcomes o WHERE o.id <= ? AND o.offer_id IN (SELECT offer_id FROM decisions"
                " WHERE id <= ? AND offer_id IS NOT NULL)", (tag, shift, tag, tag, shift, o0, take))
            db.execute(
                "INSERT INTO goals (ts, visitor_id, session_id, goal, value, logged_at) SELECT ts + ?,"
                " visitor_id || ?, session_id || ?, goal, value, logged_at FROM goals WHERE id <= ?",
                (shift, tag, tag, g0))
            total += take
        db.execute("COMMIT")
        return db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    finally:
        db.close()


PAINT_TARGET_S = 3.0
CHANGE_TARGET_S = 1.0


def baseline(path: Path | str, repeat: int = 3) -> float:
    """Seconds for one plain scan of the decisions (the median of ``repeat``): this machine reading the log."""
    from pcrules import logdb

    times = []
    with logdb.connect(path) as db:
        for _ in range(repeat):
            started = time.perf_counter()
            db.exec_driver_sql("SELECT action, COUNT(*) FROM decisions GROUP BY action").fetchall()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed(action: Any, dashboard: Any = None) -> tuple[float, float, Any]:
    """(seconds until ``action`` returns: the tiles show, seconds until the charts show too, its result)."""
    started = time.perf_counter()
    result = action()
    tiles = time.perf_counter() - started
    (dashboard or result).wait_for_charts()
    return tiles, time.perf_counter() - started, result


def first_paint(path: Path | str, repeat: int = 3) -> list[tuple[float, float]]:
    """(tiles, charts) seconds of ``repeat`` fresh dashboards; the first includes importing ipywidgets and
    matplotlib (a kernel imports them while running the notebook)."""
    from pcrules.ops import Dashboard

    out = []
    for _ in range(repeat):
        tiles, charts, d = timed(lambda: Dashboard(path, background_charts=True))
        assert not d.message.value, d.message.value
        out.append((tiles, charts))
    return out


def filter_changes(path: Path | str) -> list[tuple[str, float, float]]:
    """(what, tiles seconds, charts seconds) of filter changes on one dashboard, as a person makes them."""
    from pcrules.ops import Dashboard

    d = Dashboard(path, background_charts=True)
    d.wait_for_charts()
    queue = next(v for _, v in d.queue.options if v)
    last_day = datetime.fromtimestamp(d.info.last_ts, UTC).date()
    steps = [(f"queue {queue}", lambda: setattr(d.queue, "value", queue)),
             ("all queues", lambda: setattr(d.queue, "value", "")),
             ("time range: all time", lambda: setattr(d.time_range, "value", "all")),
             ("time range: last 24 hours", lambda: setattr(d.time_range, "value", "24h")),
             ("time range: custom dates (the last week's)", lambda: setattr(d.time_range, "value", "custom")),
             ("from date: the last three days", lambda: setattr(d.start_day, "value", last_day - timedelta(days=2))),
             (f"queue {queue} again, three days", lambda: setattr(d.queue, "value", queue)),
             ("all queues again (remembered)", lambda: setattr(d.queue, "value", ""))]
    out = []
    for what, step in steps:
        tiles, charts, _ = timed(step, d)
        assert "Cannot apply" not in d.status.value, d.status.value
        out.append((what, tiles, charts))
    return out


def browser(path: Path, views: int = 2) -> list[float]:
    """Seconds from the page request to every tile and chart shown, for ``views`` page views of a fresh server."""
    from playwright.sync_api import expect, sync_playwright

    from pcrules import dashboard, ops

    with ops.open_log(path) as conn:  # the first view: the last 7 days of activity
        start, _ = ops.time_filters(ops.DEFAULT_RANGE, ops.log_info(conn).last_ts)
        offers = ops.offer_counts(conn, ops.Filters(start=start)).offers
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) or set "
                         f"PCRULES_CHROMIUM; do not run `playwright install`")
    times = []
    with tempfile.TemporaryDirectory() as tmp, dashboard.start(path, server_log=Path(tmp) / "voila.log") as server:
        server.wait_ready()
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for _ in range(views):
                    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
                    started = time.perf_counter()
                    page.goto(server.url)
                    expect(page.locator('[data-tile="offers"]')).to_have_attribute("data-value", str(offers),
                                                                                   timeout=120_000)
                    for tile in ("accept_rate", "uplift"):
                        expect(page.locator(f'[data-tile="{tile}"]')).to_have_count(1)
                    images = page.locator(".pcrules-chart img")
                    expect(images).to_have_count(6)
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('.pcrules-chart img')]"
                        ".every(i => i.complete && i.naturalWidth > 0)", timeout=120_000)
                    times.append(time.perf_counter() - started)
                    page.close()
            finally:
                chromium.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=1_000_000, help="decisions in the log (default 1,000,000)")
    parser.add_argument("--keep", help="write the log here and keep it (default: a temporary file)")
    parser.add_argument("--reuse", action="store_true", help="with --keep: use the log there if it exists")
    parser.add_argument("--browser", action="store_true", help="also time the first render in Chromium via Voila")
    parser.add_argument("--postgres", metavar="URL|auto",
                        help="also time the dashboard on a PostgreSQL copy of the log (an empty database's URL, or "
                             "auto: a throw-away server)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "decisions.sqlite"
        if not (args.reuse and path.exists()):
            build(path, args.decisions)
        with sqlite3.connect(path) as db:
            n, offers, days = db.execute("SELECT COUNT(*), SUM(action = 'offer'), (MAX(ts) - MIN(ts)) / 86400"
                                         " FROM decisions").fetchone()
        print(f"log: {n:,} decisions ({offers:,} offers) over {days:.1f} days, {path.stat().st_size / 1e6:.0f} MB")
        ok = measure(path, "SQLite")
        if args.browser:
            views = browser(path)
            print(f"first render in Chromium via Voila (kernel start, queries, charts, widgets): {views[0]:.2f} s; "
                  f"next page view {views[1]:.2f} s")
        if args.postgres:
            with postgres_copy(path, args.postgres) as url:
                measure(url, "PostgreSQL")
        return 0 if ok else 1


@contextlib.contextmanager
def postgres_copy(path: Path, target: str) -> Iterator[str]:
    """The log copied into PostgreSQL (tests/logcopy.py: COPY, the log's indexes, then ANALYZE); its URL."""
    sys.path.insert(0, str(ROOT / "tests"))
    from logcopy import copy_log

    with contextlib.ExitStack() as stack:
        if target == "auto":
            from pgserver import PostgresServer

            target = stack.enter_context(PostgresServer()).new_database("bench_dashboard")
        started = time.perf_counter()
        engine = copy_log(path, target)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")  # fresh statistics, as autovacuum would give a log this size
        engine.dispose()
        print(f"copied the log into PostgreSQL in {time.perf_counter() - started:.1f} s")
        yield target


def measure(path: Path | str, name: str) -> bool:
    """Print the figures on one log; whether they meet the targets."""
    scan = baseline(path)
    print(f"{name}: baseline: one scan of the decisions {scan:.3f} s")

    paints = first_paint(path)
    warm = paints[1:]
    tiles = statistics.median(t for t, _ in warm)
    charts = statistics.median(c for _, c in warm)
    print(f"first useful paint (tiles): {paints[0][0]:.2f} s with imports, then {tiles:.2f} s "
          f"({tiles / scan:.1f}x baseline; target <= {PAINT_TARGET_S:g} s); charts drawn by "
          f"{paints[0][1]:.2f} s, then {charts:.2f} s")
    changes = filter_changes(path)
    for what, t, c in changes:
        print(f"filter change, {what}: tiles {t:.2f} s ({t / scan:.1f}x baseline), charts {c:.2f} s")
    worst = max(t for _, t, _ in changes)
    print(f"slowest filter change: tiles {worst:.2f} s (target <= {CHANGE_TARGET_S:g} s); charts "
          f"{max(c for _, _, c in changes):.2f} s")
    return paints[0][0] <= PAINT_TARGET_S and worst <= CHANGE_TARGET_S


def build(path: Path, decisions: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    n0 = base_log(path)
    grow(path, decisions)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"built the log from {n0:,} replayed decisions in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())
