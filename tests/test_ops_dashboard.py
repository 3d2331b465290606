"""The ops dashboard in a real browser: Voila started by pcrules.dashboard on a free port, Debian's Chromium
driven by Playwright.

The log is the shipped sample replayed through a published bundle of the default ruleset with a 30 %
holdout, plus goals for a third of the offered and a quarter of the withheld visitors (so the uplift tile
has an estimate for all queues and "not enough data yet" for a single one). Every number the tiles show is
checked against SQL run here, directly on the log (the uplift tile: the eligible visitors and their goals
counted here, then pcrules.uplift.estimate on those counts); then the filters are changed and checked again.
The test runs on both backends: the SQLite log, and the same rows copied into a PostgreSQL database
(tests/logcopy.py on the ``postgres_server`` of tests/pgserver.py) that the dashboard reads by its
``postgresql://`` URL; the SQL is run directly on each.
Every request the page makes is recorded: none may leave 127.0.0.1. Screenshots and Voila's log go to
test-artifacts/ (git-ignored).

These tests are never skipped: without Chromium they fail and say how to install it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from logcopy import copy_log

from browser import chromium as launch_chromium
from pcrules import SQLiteDecisionLog, dashboard, load_spec, logdb
from pcrules.uplift import MIN_PER_ARM
from pcrules.uplift import estimate as uplift_estimate

pytestmark = [pytest.mark.browser, pytest.mark.notebook, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
DEFAULT_RULES = ROOT / "pcrules" / "default_rules.yaml"
FIRST_RENDER_MS = 90_000  # a fresh machine builds matplotlib's font cache on the first kernel
ERROR_TEXT = ("Traceback", "Error", "error when executing", "Exception")
CHARTS = ("over-time", "by-page", "by-rule", "by-queue", "queue-load", "blocked")
METRICS = {"auc": 0.7312, "brier": 0.0461, "training_events": 37430,
           "held_out": {"oracle": None, "reliability": [{"lo": 0.0, "hi": 0.1, "count": 332, "observed": 0.0392},
                                                        {"lo": 0.1, "hi": 0.2, "count": 18, "observed": None}]}}
HOLDOUT = 0.3  # enough withheld visitors in the sample for an estimate over all queues
WINDOW_S = 86400.0  # a goal counts within a day of the visitor's first offer or would-be offer


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launch_chromium() as browser:  # fails (never skips) without Debian's chromium
        yield browser


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A published bundle of the default rules; the sample replayed through it into a log; goals."""
    from pcrules import Runtime
    from pcrules.bundle import publish
    from pcrules.replay import replay
    from pcrules.sample import read_events

    tmp = tmp_path_factory.mktemp("ops-dashboard")
    rules = yaml.safe_load(DEFAULT_RULES.read_text())
    rules["policy"]["holdout"] = HOLDOUT
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))
    version = publish(tmp / "rules.yaml", None, tmp / "published", metrics=METRICS)
    log = tmp / "decisions.sqlite"
    with Runtime.from_bundle(tmp / "published", log=SQLiteDecisionLog(log)) as runtime:
        replay(runtime, read_events())
    # The log writes its tables from a journal in the background: read it once the runtime has closed it.
    with sqlite3.connect(log) as db:
        eligible = db.execute(
            "SELECT visitor_id, MIN(session_id), holdout, MIN(ts) FROM decisions"
            " WHERE action = 'offer' OR holdout = 1 GROUP BY visitor_id, holdout ORDER BY visitor_id").fetchall()
    assert len(eligible) > 600, "the replay's decisions are all in the log"
    with Runtime.from_bundle(tmp / "published", log=SQLiteDecisionLog(log)) as runtime:  # goals come later
        for i, (visitor, session, holdout, first) in enumerate(eligible):
            if i % (4 if holdout else 3) == 0:
                runtime.record_goal(visitor, session, "bill_paid", ts=first + 300)
            elif i % 7 == 0:  # a goal before the visitor was eligible: must not count
                runtime.record_goal(visitor, session, "bill_paid", ts=first - 600)
            elif i % 11 == 0:  # a goal after the attribution window: must not count either
                runtime.record_goal(visitor, session, "bill_paid", ts=first + WINDOW_S + 60)
        runtime.record_goal("v-unknown", "v-unknown-s0", "bill_paid", ts=eligible[0][3])  # never seen: kept
    return {"log": log, "published": tmp / "published", "version": version.name}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, demo: dict[str, Any]) -> dict[str, Any]:
    """The demo's log on one backend: ``log`` is the SQLite file, or the URL of a PostgreSQL copy of it."""
    if request.param == "sqlite":
        return {**demo, "backend": "sqlite"}
    url = request.getfixturevalue("postgres_server").new_database("test_ops_dashboard")
    copy_log(demo["log"], url).dispose()
    return {**demo, "log": url, "backend": "postgresql"}


def _start(log: Path | str, name: str, bundle: Path | None = None, cull_idle_s: int = 120,
           cull_interval_s: int = 30) -> dashboard.DashboardServer:
    ARTIFACTS.mkdir(exist_ok=True)
    server_log = ARTIFACTS / f"voila-{name}.log"
    server_log.unlink(missing_ok=True)
    return dashboard.start(log, bundle_path=bundle, server_log=server_log, cull_idle_s=cull_idle_s,
                           cull_interval_s=cull_interval_s)


def kernels(server: dashboard.DashboardServer) -> int:
    """Kernels the Voila process is running (its live ipykernel children; a shut-down one may linger as a
    zombie until Voila reaps it)."""
    import psutil

    running = 0
    for child in psutil.Process(server.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "ipykernel" in " ".join(child.cmdline()):
                running += 1
        except psutil.Error:  # gone (or a zombie) between listing and asking
            pass
    return running


@pytest.fixture(scope="module")
def server(backend: dict[str, Any]) -> Iterator[dashboard.DashboardServer]:
    with _start(backend["log"], f"ops-{backend['backend']}", backend["published"]) as srv:
        yield srv.wait_ready(timeout=60)


class Recorder:
    """Every request, websocket and script error of a page."""

    def __init__(self, page: Any):
        self.urls: list[str] = []
        self.page_errors: list[str] = []
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("websocket", lambda ws: self.urls.append(ws.url))
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    def outside(self) -> list[str]:
        def host(url: str) -> str | None:
            if url.startswith("data:"):
                return "127.0.0.1"  # inline data, no network
            return urlparse(url[5:] if url.startswith("blob:") else url).hostname  # blob: of the page's origin

        return [u for u in self.urls if host(u) != "127.0.0.1"]


# --------------------------------------------------------------------------- expected values: SQL on the log


class Direct:
    """SQL run directly on a log, SQLite or PostgreSQL (its own placeholders: ``?`` written, ``%s`` for psycopg)."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self.conn.exec_driver_sql(sql.replace("?", "%s") if self.postgres else sql, tuple(params))


def expected(log: Path | str, where: str = "1 = 1", params: tuple = ()) -> dict[str, Any]:
    """What the tiles must show for decisions matching ``where``, computed here from the log."""
    with logdb.connect(log) as conn:
        db = Direct(conn)
        offers = db.execute(f"SELECT COUNT(*) FROM decisions WHERE action = 'offer' AND {where}", params).fetchone()[0]
        status = dict(db.execute(
            "SELECT status, COUNT(*) FROM outcomes WHERE offer_id IN"
            f" (SELECT offer_id FROM decisions WHERE action = 'offer' AND {where}) GROUP BY status", params).fetchall())
        # The uplift's units: each visitor once, at her first offer or would-be offer in the whole log (the
        # filters then select by that decision's time, queue and page); ties broken by the log's row id.
        first = db.execute(f"""
            WITH eligible AS (SELECT id, ts, visitor_id, holdout, page, queue FROM decisions
                              WHERE action = 'offer' OR (reason = 'holdout' AND holdout = 1)),
                 earliest AS (SELECT visitor_id, MIN(ts) AS t FROM eligible GROUP BY visitor_id),
                 firsts AS (SELECT e.* FROM eligible e JOIN earliest f ON f.visitor_id = e.visitor_id AND e.ts = f.t
                            WHERE NOT EXISTS (SELECT 1 FROM eligible o WHERE o.visitor_id = e.visitor_id
                                              AND o.ts = e.ts AND o.id < e.id))
            SELECT visitor_id, holdout, ts FROM firsts WHERE {where}""", params).fetchall()
        goals: dict[str, list[float]] = {}
        for visitor, ts in db.execute("SELECT visitor_id, ts FROM goals"):
            goals.setdefault(visitor, []).append(ts)
    ended = sum(status.values())
    n = {0: 0, 1: 0}
    converted = {0: 0, 1: 0}
    for visitor, holdout, t0 in first:
        n[holdout] += 1
        converted[holdout] += any(t0 <= ts <= t0 + WINDOW_S for ts in goals.get(visitor, ()))
    out = {"offers": offers, "chats_started": status.get("accepted", 0),
           "accept_rate": status.get("accepted", 0) / ended if ended else None,
           "decline_rate": status.get("declined", 0) / ended if ended else None,
           "expiry_rate": status.get("expired", 0) / ended if ended else None,
           "groups": (n[0], converted[0], n[1], converted[1]),
           "uplift": uplift_estimate(converted[0], n[0], converted[1], n[1]),
           "needed": (max(0, MIN_PER_ARM - n[0]), max(0, MIN_PER_ARM - n[1]))}
    return out


def pp(x: float) -> str:
    return f"{100 * x:+.1f} pp".replace("-", "−")


def check_tiles(page: Any, exp: dict[str, Any]) -> None:
    """Wait until every tile shows the expected number (Playwright retries each assertion: no sleeps)."""
    from playwright.sync_api import expect

    def tile(key: str) -> Any:
        return page.locator(f'[data-tile="{key}"]')

    for key in ("offers", "chats_started"):
        expect(tile(key)).to_have_attribute("data-value", str(exp[key]))
        expect(tile(key).locator(".pcrules-tile-value")).to_have_text(f"{exp[key]:,}")
    for key in ("accept_rate", "decline_rate", "expiry_rate"):
        r = exp[key]
        expect(tile(key)).to_have_attribute("data-value", "" if r is None else f"{r:.6f}")
        expect(tile(key).locator(".pcrules-tile-value")).to_have_text("–" if r is None else f"{100 * r:.1f} %")
    offered, offered_converted, withheld, withheld_converted = exp["groups"]
    up = exp["uplift"]
    note = tile("uplift").locator(".pcrules-tile-note")
    expect(note).to_contain_text(f"{offered:,} offered vs {withheld:,} withheld visitors")
    expect(tile("uplift")).to_have_attribute("data-status", up.status)
    if up.status == "not_enough_data":
        expect(tile("uplift")).to_have_attribute("data-state", "insufficient")
        expect(tile("uplift").locator(".pcrules-tile-value")).to_have_text("Not enough data yet")
        expect(tile("uplift")).to_have_attribute("data-value", "")
        expect(tile("uplift")).to_have_attribute("data-needed-offered", str(exp["needed"][0]))
        expect(tile("uplift")).to_have_attribute("data-needed-withheld", str(exp["needed"][1]))
        if up.estimate is not None:  # the interval so far, in words only
            expect(note).to_contain_text(f"so far {pp(up.estimate)} (95 % CI {pp(up.ci_low)} to {pp(up.ci_high)})")
    else:
        expect(tile("uplift")).to_have_attribute("data-state", "estimate")
        expect(tile("uplift")).to_have_attribute("data-value", f"{up.estimate:.6f}")
        expect(tile("uplift")).to_have_attribute("data-low", f"{up.ci_low:.6f}")
        expect(tile("uplift")).to_have_attribute("data-high", f"{up.ci_high:.6f}")
        expect(tile("uplift").locator(".pcrules-tile-value")).to_have_text(pp(up.estimate))
        expect(note).to_contain_text(f"95 % CI {pp(up.ci_low)} to {pp(up.ci_high)}")


def assert_no_error_text(page: Any, recorder: Recorder) -> None:
    text = page.locator("body").inner_text()
    assert not [word for word in ERROR_TEXT if word in text], text[:2000]
    assert page.locator('[data-mime-type="application/vnd.jupyter.stderr"], .jp-RenderedText[data-mime-type*="err"]'
                        ).count() == 0
    assert not recorder.page_errors


def screenshot(page: Any, name: str) -> Path:
    """The whole dashboard: the viewport is made as tall as the page first (Voila scrolls inside the body)."""
    height = page.evaluate("() => Math.max(document.body.scrollHeight, document.documentElement.scrollHeight,"
                           " ...[...document.querySelectorAll('.pcrules-ops')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": 1400, "height": min(int(height) + 80, 6000)})
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


# --------------------------------------------------------------------------- tests


def test_dashboard_in_chromium_matches_sql_and_follows_the_filters(chromium: Any, server: Any,
                                                                   backend: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    demo = backend
    log = demo["log"]
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    recorder = Recorder(page)
    page.goto(server.url)
    expect(page.locator('[data-tile="offers"]')).to_have_attribute("data-value", str(expected(log)["offers"]),
                                                                   timeout=FIRST_RENDER_MS)
    page.set_default_timeout(20_000)

    everything = expected(log)
    assert everything["offers"] > 500 and everything["uplift"].enough_data  # the sample gives a real dashboard
    check_tiles(page, everything)
    expect(page.locator(".pcrules-ops").first).to_contain_text(f"Decision log {logdb.describe(log)}")
    # it opens on the last 7 days of activity, which hold the whole sample (a week of it): nothing older
    status = page.locator(".pcrules-status [data-older]")
    expect(status).to_contain_text("Showing the last 7 days up to the latest decision")
    expect(status).to_have_attribute("data-older", "0")
    expect(page.locator(".pcrules-filter-time-range select")).to_have_value("Last 7 days")

    # every chart, with a loaded image
    for key in CHARTS:
        expect(page.locator(f".pcrules-chart-{key} img")).to_have_count(1)
    page.wait_for_function("() => { const i = [...document.querySelectorAll('.pcrules-chart img')];"
                           " return i.length === 6 && i.every(x => x.complete && x.naturalWidth > 100); }")
    # the live bundle: version, publish time, rules with their thresholds, model metrics
    bundle = page.locator(".pcrules-bundle")
    expect(bundle.locator("[data-source]")).to_have_attribute("data-version", demo["version"])
    expect(bundle).to_contain_text(demo["version"])
    with open(demo["published"] / "versions" / demo["version"] / "manifest.json") as fh:
        created = json.load(fh)["created"]
    expect(bundle).to_contain_text(created)
    expect(bundle.locator("tr[data-rule]")).to_have_count(len(load_spec(DEFAULT_RULES).rules))
    expect(bundle.locator('tr[data-rule="checkout-hesitation"]')).to_contain_text("seconds_on_page ≥ 90")
    metrics = bundle.locator(".pcrules-metrics")
    expect(metrics).to_contain_text("0.7312")
    expect(metrics).to_contain_text("37,430")
    expect(metrics.locator("tr", has_text="held_out.oracle")).to_contain_text("—")
    expect(metrics.locator("details summary")).to_have_text("2 bins")  # the bins as a table, folded
    assert not [raw for raw in ("None", "[{", '{"') if raw in metrics.inner_text()]
    # recent decisions: a page of them, not the log
    expect(page.locator(".pcrules-recent-table tr")).to_have_count(26)
    assert_no_error_text(page, recorder)
    shot = screenshot(page, "ops-dashboard.png" if demo["backend"] == "sqlite" else "ops-dashboard-postgresql.png")
    assert shot.stat().st_size > 50_000
    page.set_viewport_size({"width": 1400, "height": 1000})

    queue = page.locator(".pcrules-filter-queue select")
    page_filter = page.locator(".pcrules-filter-page select")
    time_range = page.locator(".pcrules-filter-time-range select")

    queue.select_option(label="Billing")
    billing = expected(log, "queue = ?", ("Billing",))
    assert billing["offers"] != everything["offers"] and not billing["uplift"].enough_data  # a thinner view
    check_tiles(page, billing)

    queue.select_option(label="All queues")
    page_filter.select_option(label="Checkout")
    check_tiles(page, expected(log, "page = ?", ("Checkout",)))

    page_filter.select_option(label="All pages")
    time_range.select_option(label="Last 24 hours")
    with logdb.connect(log) as conn:
        last = Direct(conn).execute("SELECT MAX(ts) FROM decisions").fetchone()[0]
    last_day = expected(log, "ts >= ?", (last - 86400,))
    assert 0 < last_day["offers"] < everything["offers"]
    check_tiles(page, last_day)

    time_range.select_option(label="Custom dates")
    page.locator(".pcrules-filter-from input").fill("2025-11-26")
    page.locator(".pcrules-filter-to input").fill("2025-11-27")
    for picker in ("from", "to"):  # wide enough for the whole date, the year included
        width = page.locator(f".pcrules-filter-{picker} input").evaluate(
            "e => [e.clientWidth, e.scrollWidth, e.getBoundingClientRect().width]")
        assert width[1] <= width[0] and width[2] >= 130, width
    page.locator(".pcrules-filter-refresh").locator("xpath=..").screenshot(path=str(ARTIFACTS / "ops-filters.png"))
    start = datetime(2025, 11, 26, tzinfo=UTC).timestamp()
    end = datetime(2025, 11, 28, tzinfo=UTC).timestamp()
    two_days = expected(log, "ts >= ? AND ts < ?", (start, end))
    assert 0 < two_days["offers"] < everything["offers"]
    check_tiles(page, two_days)

    queue.select_option(label="Support")  # filters combine
    check_tiles(page, expected(log, "ts >= ? AND ts < ? AND queue = ?", (start, end, "Support")))
    expect(page.locator(".pcrules-status")).to_contain_text("queue Support")

    time_range.select_option(label="All time")
    queue.select_option(label="All queues")
    check_tiles(page, everything)
    page.locator("button.pcrules-filter-refresh").click()
    check_tiles(page, everything)
    assert_no_error_text(page, recorder)

    assert len(recorder.urls) > 20
    assert recorder.outside() == [], f"requests outside 127.0.0.1: {recorder.outside()}"
    page.close()


def test_missing_then_empty_log_shows_a_readable_message_and_idle_kernels_are_culled(chromium: Any,
                                                                                      tmp_path: Path) -> None:
    from playwright.sync_api import expect

    log = tmp_path / "decisions.sqlite"
    # Culling after 8 idle seconds: long enough for a loaded machine's browser to connect to the kernel
    # Voila has just run the notebook in (until it connects, the kernel counts as idle and unconnected).
    with _start(log, "missing-log", cull_idle_s=8, cull_interval_s=1) as srv:
        srv.wait_ready(timeout=60)
        page = chromium.new_page(viewport={"width": 1400, "height": 700})
        recorder = Recorder(page)
        page.goto(srv.url)
        message = page.locator(".pcrules-message-body")
        expect(message).to_have_attribute("data-kind", "missing", timeout=FIRST_RENDER_MS)
        page.set_default_timeout(20_000)
        expect(message).to_contain_text(f"There is no decision log at {log}")
        expect(message).to_contain_text("PCRULES_DECISION_LOG")
        expect(page.locator(".pcrules-tile")).to_have_count(6)  # built, but hidden with the charts
        expect(page.locator(".pcrules-tile").first).to_be_hidden()
        assert_no_error_text(page, recorder)

        SQLiteDecisionLog(log).close()  # the runtime has started: a log with its schema and no decisions
        page.locator("button.pcrules-filter-refresh").click()
        expect(message).to_have_attribute("data-kind", "empty")
        expect(message).to_contain_text("has no decisions yet")
        assert_no_error_text(page, recorder)

        page.reload()  # a new page view, a new kernel: the same message
        expect(page.locator(".pcrules-message-body")).to_have_attribute("data-kind", "empty",
                                                                        timeout=FIRST_RENDER_MS)
        assert_no_error_text(page, recorder)
        screenshot(page, "ops-dashboard-empty-log.png")
        assert recorder.outside() == [], f"requests outside 127.0.0.1: {recorder.outside()}"
        assert kernels(srv) >= 1  # the open page's kernel: connected, so never culled
        page.close()
        # Voila does not stop a page's kernel when the page goes (its shutdown request is refused for want
        # of an XSRF token: see the server log); culling does, once the kernel is idle (8 s here)
        deadline = time.monotonic() + 60
        while kernels(srv) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert kernels(srv) == 0, "the closed page's kernel was not culled"
