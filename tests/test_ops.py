"""pcrules.ops: the dashboard's SQL against values computed by hand on a small log; the widgets in-process
(no browser); the log's failure modes as messages; the safe Voila launcher's settings.

The small log (T = Monday 2026-01-05 12:00 UTC, the start of an hour):

    row  ts          visitor page          decision                      offer  outcome
    1    T           v1      Bill Payment  wait      bill   Billing
    2    T+100       v1      Bill Payment  offer     bill   Billing      o1     accepted
    3    T+3600      v2      Bill Payment  offer     bill   Billing      o2     declined
    4    T+3700      v3      Checkout      offer     check  Sales        o3     expired
    5    T+7200      v4      Checkout      offer     check  Sales        o4     (pending)
    6    T+7300      v5      Home          none/no_rule
    7    T+7400      v6      Checkout      none/holdout check Sales  (holdout: would-be offer)
    8    T+7500      v7      Bill Payment  none/queue_busy bill Billing
    9    T+86410     v1      Bill Payment  none/in_chat    bill Billing
    10   T+86420     v8      FAQ           offer     help   Support      o5     accepted

Goals: v1 bill_paid at T+50 (before v1's first offer: does not count), v2 bill_paid at T+4000, v3 plan_bought at
T+4000, v6 bill_paid at T+8000, v99 (never seen) bill_paid.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from pcrules import SQLiteDecisionLog, ops, resources
from pcrules.ops import Filters, LogUnavailable, OfferCounts

ROOT = Path(__file__).resolve().parents[1]
T = 1767614400.0  # 2026-01-05 12:00:00 UTC
COLUMNS = ("ts", "visitor_id", "session_id", "page", "seconds_on_page", "action", "reason", "rule", "queue", "score",
           "offer_id", "holdout", "expires_at", "recheck_after", "metadata", "ruleset", "ruleset_version", "logged_at")
SPEC = {"name": "small", "policy": {"holdout": 0.1, "offer_timeout_s": 60},
        "queues": {"Billing": {"max_wait_s": 180, "capacity_per_hour": 40}, "Sales": {"capacity_per_hour": 60},
                   "Support": {}},
        "rules": [{"name": "bill", "priority": 20, "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 100}},
                   "offer": {"queue": "Billing"}},
                  {"name": "check", "priority": 30, "when": {"page": "Checkout", "seconds_on_page": {"gte": 90}},
                   "offer": {"queue": "Sales"}},
                  {"name": "help", "priority": 5,
                   "when": {"page": {"matches": "^(FAQ|Support)"}, "any_of": [{"device": "mobile"},
                                                                            {"pages_viewed": {"gte": 3}}]},
                   "offer": {"queue": "Support"}}]}


def new_log(path: Path) -> sqlite3.Connection:
    SQLiteDecisionLog(path).close()  # the real schema
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO rulesets (name, version, activated_at, spec) VALUES ('small', 'v-small', ?, ?)",
               (T - 60, json.dumps(SPEC)))
    return db


def decision(db: sqlite3.Connection, ts: float, visitor: str, page: str, action: str, reason: str | None = None,
             rule: str | None = None, queue: str | None = None, offer_id: str | None = None,
             holdout: int = 0) -> None:
    row = {"ts": ts, "visitor_id": visitor, "session_id": f"{visitor}-s0", "page": page, "seconds_on_page": 120.0,
           "action": action, "reason": reason, "rule": rule, "queue": queue, "score": None, "offer_id": offer_id,
           "holdout": holdout, "expires_at": ts + 60 if (offer_id or holdout) else None, "recheck_after": None,
           "metadata": None, "ruleset": "small", "ruleset_version": "v-small", "logged_at": 0.0}
    db.execute(f"INSERT INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
               [row[c] for c in COLUMNS])


def outcome(db: sqlite3.Connection, offer_id: str, status: str, ts: float) -> None:
    d = db.execute("SELECT visitor_id, session_id, rule, queue, ts FROM decisions WHERE offer_id = ?",
                   (offer_id,)).fetchone()
    db.execute("INSERT INTO outcomes (offer_id, status, ts, visitor_id, session_id, rule, queue, offered_at, ruleset,"
               " ruleset_version, logged_at) VALUES (?,?,?,?,?,?,?,?,'small','v-small',0)",
               (offer_id, status, ts, *d))


def goal(db: sqlite3.Connection, visitor: str, name: str, ts: float) -> None:
    db.execute("INSERT INTO goals (ts, visitor_id, session_id, goal, value, logged_at) VALUES (?,?,?,?,NULL,0)",
               (ts, visitor, f"{visitor}-s0", name))


@pytest.fixture()
def small_log(tmp_path: Path) -> Path:
    path = tmp_path / "small.sqlite"
    db = new_log(path)
    decision(db, T, "v1", "Bill Payment", "wait", rule="bill", queue="Billing")
    decision(db, T + 100, "v1", "Bill Payment", "offer", rule="bill", queue="Billing", offer_id="o1")
    decision(db, T + 3600, "v2", "Bill Payment", "offer", rule="bill", queue="Billing", offer_id="o2")
    decision(db, T + 3700, "v3", "Checkout", "offer", rule="check", queue="Sales", offer_id="o3")
    decision(db, T + 7200, "v4", "Checkout", "offer", rule="check", queue="Sales", offer_id="o4")
    decision(db, T + 7300, "v5", "Home", "none", "no_rule")
    decision(db, T + 7400, "v6", "Checkout", "none", "holdout", rule="check", queue="Sales", holdout=1)
    decision(db, T + 7500, "v7", "Bill Payment", "none", "queue_busy", rule="bill", queue="Billing")
    decision(db, T + 86410, "v1", "Bill Payment", "none", "in_chat", rule="bill", queue="Billing")
    decision(db, T + 86420, "v8", "FAQ", "offer", rule="help", queue="Support", offer_id="o5")
    outcome(db, "o1", "accepted", T + 110)
    outcome(db, "o2", "declined", T + 3605)
    outcome(db, "o3", "expired", T + 3760)
    outcome(db, "o5", "accepted", T + 86430)
    goal(db, "v1", "bill_paid", T + 50)
    goal(db, "v2", "bill_paid", T + 4000)
    goal(db, "v3", "plan_bought", T + 4000)
    goal(db, "v6", "bill_paid", T + 8000)
    goal(db, "v99", "bill_paid", T + 100)
    db.close()
    return path


# --------------------------------------------------------------------------- the queries, by hand


def test_offer_counts_and_rates(small_log: Path) -> None:
    with ops.open_log(small_log) as conn:
        every = ops.offer_counts(conn)
        assert every == OfferCounts(offers=5, accepted=2, declined=1, expired=1)
        assert (every.ended, every.pending, every.chats_started) == (4, 1, 2)
        assert (every.rate("accepted"), every.rate("declined"), every.rate("expired")) == (0.5, 0.25, 0.25)
        assert ops.offer_counts(conn, Filters(queue="Billing")) == OfferCounts(2, 1, 1, 0)
        checkout = ops.offer_counts(conn, Filters(page="Checkout"))
        assert checkout == OfferCounts(2, 0, 0, 1) and checkout.rate("expired") == 1.0 and checkout.pending == 1
        assert ops.offer_counts(conn, Filters(start=T, end=T + 86400)) == OfferCounts(4, 1, 1, 1)
        assert ops.offer_counts(conn, Filters(start=T + 3600, end=T + 7200)) == OfferCounts(2, 0, 1, 1)  # end excluded
        assert ops.offer_counts(conn, Filters(queue="Billing", page="Checkout")) == OfferCounts()
        assert OfferCounts().rate("accepted") is None  # no ended offer: no rate


def test_breakdowns_and_hours(small_log: Path) -> None:
    with ops.open_log(small_log) as conn:
        assert ops.offers_by(conn, "page") == ([("Bill Payment", OfferCounts(2, 1, 1, 0)),
                                                ("Checkout", OfferCounts(2, 0, 0, 1)),
                                                ("FAQ", OfferCounts(1, 1, 0, 0))], 3)
        assert ops.offers_by(conn, "rule", limit=2) == ([("bill", OfferCounts(2, 1, 1, 0)),
                                                          ("check", OfferCounts(2, 0, 0, 1))], 3)
        assert ops.offers_by(conn, "queue", Filters(start=T + 86400)) == ([("Support", OfferCounts(1, 1, 0, 0))], 1)
        assert ops.offers_per_hour(conn) == [(T, OfferCounts(1, 1, 0, 0)), (T + 3600, OfferCounts(2, 0, 1, 1)),
                                             (T + 7200, OfferCounts(1, 0, 0, 0)),
                                             (T + 86400, OfferCounts(1, 1, 0, 0))]
        assert ops.chats_per_hour_by_queue(conn) == {"Billing": [(T, 1)], "Support": [(T + 86400, 1)]}
        with pytest.raises(ValueError):
            ops.offers_by(conn, "visitor_id; DROP TABLE decisions")


def test_decisions_by_reason(small_log: Path) -> None:
    with ops.open_log(small_log) as conn:
        assert ops.decisions_by_reason(conn) == {"offer": 5, "wait": 1, "none": 4, "none:no_rule": 1,
                                                 "none:holdout": 1, "none:queue_busy": 1, "none:in_chat": 1}
        assert ops.decisions_by_reason(conn, Filters(queue="Billing")) == {
            "offer": 2, "wait": 1, "none": 2, "none:queue_busy": 1, "none:in_chat": 1}
        assert ops.decisions_by_reason(conn, Filters(page="Home")) == {"none": 1, "none:no_rule": 1}
        assert ops.choices(conn, ["Callback"]) == (["Billing", "Callback", "Sales", "Support"],
                                                   ["Bill Payment", "Checkout", "FAQ", "Home"])
        assert ops.choices(conn, max_pages=2)[1] == ["Bill Payment", "Checkout"]  # the busiest: 5 and 3 decisions
        assert ops.choices(conn, window=2) == (["Billing", "Support"], ["Bill Payment", "FAQ"])  # rows 9 and 10


def test_recent_decisions_are_the_latest_few(small_log: Path) -> None:
    with ops.open_log(small_log) as conn:
        rows = ops.recent_decisions(conn, limit=3)
        assert [(r["visitor_id"], r["action"], r["reason"], r["status"]) for r in rows] == [
            ("v8", "offer", None, "accepted"), ("v1", "none", "in_chat", None), ("v7", "none", "queue_busy", None)]
        assert [r["ts"] for r in ops.recent_decisions(conn, Filters(page="Checkout"))] == [T + 7400, T + 7200, T + 3700]


def test_uplift_counts_visitors_and_goals_after_their_first_eligible_decision(small_log: Path) -> None:
    with ops.open_log(small_log) as conn:
        up = ops.uplift(conn)
        # offered: v1 (goal before its offer: no), v2 (yes), v3 (plan_bought: yes), v4, v8; withheld: v6 (yes)
        assert (up.offered, up.offered_converted, up.withheld, up.withheld_converted) == (5, 2, 1, 1)
        assert not up.enough and up.status == "not_enough_data" and up.estimate is None and up.interval is None
        assert up.result.estimate == pytest.approx(2 / 5 - 1)  # the figure so far, kept apart from the verdict
        assert up.still_needed() == (95, 99)  # pcrules.uplift's 100 visitors per group
        assert up.missing.startswith("needs 95 more offered and 99 more withheld visitors for 100 in each group")
        named = ops.uplift(conn, goal="bill_paid")
        assert (named.offered_converted, named.withheld_converted) == (1, 1)
        assert ops.uplift(conn, Filters(queue="Sales")) == ops.Uplift(2, 1, 1, 1)  # v3, v4 offered; v6 withheld
        assert ops.uplift(conn, Filters(page="Bill Payment")) == ops.Uplift(2, 1, 0, 0)  # v1, v2
        assert ops.uplift(conn, Filters(start=T + 86400)) == ops.Uplift(1, 0, 0, 0)  # v8 only
        # v1's in_chat decision on day 2 does not make v1 a day-2 visitor: a visitor counts once, from her first
        assert ops.uplift(conn, Filters(start=T + 86400, page="Bill Payment")) == ops.Uplift(0, 0, 0, 0)


def test_uplift_counts_goals_within_a_day_of_the_first_eligible_decision(small_log: Path) -> None:
    db = sqlite3.connect(small_log, isolation_level=None)
    goal(db, "v4", "bill_paid", T + 7200 + 86400 + 1)  # a day and a second after v4's offer: too late
    goal(db, "v8", "call_avoided", T + 86420 + 86400)  # exactly a day after v8's: counts
    db.close()
    with ops.open_log(small_log) as conn:
        up = ops.uplift(conn)
        assert (up.offered, up.offered_converted) == (5, 3)
        assert ops.uplift(conn, window_s=2 * 86400).offered_converted == 4


def _wilson(x: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_uplift_estimate_and_interval_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "uplift.sqlite"
    db = new_log(path)
    for i in range(120):  # 120 offered, 36 convert; 120 withheld, 18 convert
        decision(db, T + i, f"t{i:03d}", "Checkout", "offer", rule="check", queue="Sales", offer_id=f"o{i}")
        decision(db, T + i, f"c{i:03d}", "Checkout", "none", "holdout", rule="check", queue="Sales", holdout=1)
        if i < 36:
            goal(db, f"t{i:03d}", "bill_paid", T + 1000)
        if i < 18:
            goal(db, f"c{i:03d}", "bill_paid", T + 1000)
    db.close()
    with ops.open_log(path) as conn:
        up = ops.uplift(conn)
        strict = ops.uplift(conn, mde=0.05)
    assert (up.offered, up.offered_converted, up.withheld, up.withheld_converted) == (120, 36, 120, 18)
    assert up.enough and up.missing == "" and up.status == "positive" and up.still_needed() == (0, 0)
    assert up.estimate == pytest.approx(0.15)
    # Newcombe's hybrid score interval (method 10): the Wilson interval of each rate, combined, by hand
    (l1, u1), (l0, u0) = _wilson(36, 120), _wilson(18, 120)
    low = 0.15 - math.sqrt((0.3 - l1) ** 2 + (u0 - 0.15) ** 2)
    high = 0.15 + math.sqrt((u1 - 0.3) ** 2 + (0.15 - l0) ** 2)
    assert up.interval == pytest.approx((low, high), abs=1e-12)
    assert up.interval == pytest.approx((0.0443, 0.2520), abs=1e-4)  # (Wald's: 0.0461 to 0.2539)
    # the smallest uplift these groups detect with 80 % power, at the withheld rate
    from pcrules.uplift import power

    assert power(0.15, up.detectable(), 120, 120) == pytest.approx(0.8, abs=1e-6) and 0.1 < up.detectable() < 0.2
    # With a minimum uplift worth detecting, the sample size decides: 5 points at a 15 % rate takes ~900 a group
    assert not strict.enough and strict.estimate is None and strict.status == "not_enough_data"
    more_o, more_w = strict.still_needed()
    assert 700 < more_o == more_w < 900 and "to detect 5 pp" in strict.missing


def test_uplift_thresholds() -> None:
    assert ops.Uplift(100, 5, 100, 5).enough
    assert not ops.Uplift(99, 5, 100, 5).enough  # fewer than pcrules.uplift.MIN_PER_ARM offered
    assert not ops.Uplift(100, 4, 100, 5).enough  # fewer than 5 offered visitors with a goal
    assert "5 visitors with and without a goal among the offered" in ops.Uplift(100, 4, 100, 5).missing
    assert not ops.Uplift(100, 95, 100, 96).enough  # fewer than 5 withheld visitors without one
    assert ops.Uplift(100, 95, 100, 95).enough
    assert ops.Uplift(0, 0, 0, 0).result.estimate is None and ops.Uplift(0, 0, 0, 0).still_needed() == (100, 100)
    assert ops.Uplift(100, 30, 100, 20, min_per_arm=10, mde=0.3).enough  # 30 points is easy to see


def test_queries_agree_with_a_replay_through_the_runtime(tmp_path: Path) -> None:
    """An independent count: the replay's own summary of what the runtime decided."""
    from itertools import islice

    from pcrules import Runtime, load_spec
    from pcrules.cli import DEFAULT_RULES
    from pcrules.replay import replay
    from pcrules.sample import read_events

    path = tmp_path / "replay.sqlite"
    with Runtime(load_spec(DEFAULT_RULES), log=SQLiteDecisionLog(path)) as runtime:
        summary = replay(runtime, islice(read_events(), 6000))
    with ops.open_log(path) as conn:
        counts = ops.offer_counts(conn)
        reasons = ops.decisions_by_reason(conn)
        by_rule = dict(ops.offers_by(conn, "rule")[0])
    assert counts.offers == summary.offers > 0
    assert (counts.accepted, counts.declined, counts.expired) == (
        summary.outcomes["accepted"], summary.outcomes["declined"], summary.outcomes["expired"])
    assert {a: reasons.get(a, 0) for a in ("offer", "wait", "none")} == {str(a): n for a, n in summary.actions.items()}
    assert {k[5:]: v for k, v in reasons.items() if k.startswith("none:")} == {
        str(r): n for r, n in summary.reasons.items()}
    assert {rule: c.offers for rule, c in by_rule.items()} == dict(summary.offers_by_rule)


# --------------------------------------------------------------------------- filters: values from a browser


def test_filters_refuse_bad_values() -> None:
    for bad in ({"start": float("nan")}, {"end": "yesterday"}, {"start": True}, {"queue": ""}, {"page": "x" * 201},
                {"queue": 3}, {"start": 10.0, "end": 5.0}):
        with pytest.raises(ValueError):
            Filters(**bad)
    from sqlalchemy.dialects import postgresql, sqlite

    from pcrules.logdb import decisions

    for dialect, mark in ((sqlite.dialect(), "?"), (postgresql.dialect(), "%(queue_1)s")):
        where = sa.and_(*Filters(start=1.0, queue="Billing' OR 1=1 --").conditions(decisions)).compile(
            dialect=dialect)
        assert str(where).startswith("decisions.ts >= ") and f"decisions.queue = {mark}" in str(where)
        assert "Billing" not in str(where)  # parameters, never text
        assert sorted(map(str, where.params.values())) == ["1.0", "Billing' OR 1=1 --"]
    assert Filters().conditions(decisions) == []


def test_time_filters() -> None:
    last = T + 1234.5
    assert ops.time_filters("all", last) == (None, None)
    assert ops.time_filters("24h", last) == (last - 86400, None)
    assert ops.time_filters("1h", None) == (None, None)  # an empty log
    start, end = ops.time_filters("custom", last, start_day=date(2026, 1, 5), end_day=date(2026, 1, 6),
                                  tz="Europe/Amsterdam")
    assert (start, end) == (T - 13 * 3600, T + 35 * 3600)  # Amsterdam midnights: 23:00 UTC
    with pytest.raises(ValueError):
        ops.time_filters("custom", last, start_day=date(2026, 1, 6), end_day=date(2026, 1, 5))
    with pytest.raises(ValueError):
        ops.time_filters("custom", last, start_day=None, end_day=date(2026, 1, 5))
    with pytest.raises(ValueError):
        ops.time_filters("forever", last)


# --------------------------------------------------------------------------- the log's failure modes


def test_unusable_logs_are_named_and_explained(tmp_path: Path) -> None:
    def kind(path: Path) -> tuple[str, str]:
        with pytest.raises(LogUnavailable) as info:
            with ops.open_log(path):
                pass
        return info.value.kind, str(info.value)

    k, text = kind(tmp_path / "nope.sqlite")
    assert k == "missing" and str(tmp_path / "nope.sqlite") in text and ops.LOG_ENV in text
    (tmp_path / "zero.sqlite").write_bytes(b"")
    assert kind(tmp_path / "zero.sqlite")[0] == "empty"
    (tmp_path / "text.sqlite").write_text("this is not a database, it is a long line of text " * 50)
    assert kind(tmp_path / "text.sqlite")[0] == "unreadable"
    with sqlite3.connect(tmp_path / "other.sqlite") as db:
        db.execute("CREATE TABLE things (x)")
    k, text = kind(tmp_path / "other.sqlite")
    assert k == "not_a_log" and "decisions" in text
    SQLiteDecisionLog(tmp_path / "newer.sqlite").close()
    with sqlite3.connect(tmp_path / "newer.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    assert kind(tmp_path / "newer.sqlite")[0] == "newer"
    assert kind(tmp_path)[0] == "unreadable"  # a directory


def test_the_log_is_opened_read_only(small_log: Path) -> None:
    with ops.open_log(small_log) as conn:
        with pytest.raises(sa.exc.OperationalError, match="readonly"):
            conn.exec_driver_sql("DELETE FROM decisions")
    with sqlite3.connect(small_log) as db:
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 10


def test_reading_a_log_while_the_runtime_writes_it(tmp_path: Path) -> None:
    """WAL mode: the dashboard's read-only connection sees committed decisions while the writer is open."""
    from helpers import spec_dict
    from pcrules import Runtime, load_spec

    path = tmp_path / "live.sqlite"
    with Runtime(load_spec(spec_dict()), log=SQLiteDecisionLog(path)) as runtime:
        runtime.observe({"visitor_id": "v1", "session_id": "s1", "page": "Bill Payment", "seconds_on_page": 301,
                         "ts": T})
        runtime.flush()
        with ops.open_log(path) as conn:
            assert ops.offer_counts(conn).offers == 1
        runtime.observe({"visitor_id": "v2", "session_id": "s2", "page": "Bill Payment", "seconds_on_page": 301,
                         "ts": T + 1})
        # without a flush, the log's background writer makes it visible within its interval (50 ms)
        deadline = time.monotonic() + 10
        while True:
            with ops.open_log(path) as conn:
                if ops.offer_counts(conn).offers == 2:
                    break
            assert time.monotonic() < deadline, "the second decision never reached the file"
            time.sleep(0.01)


# --------------------------------------------------------------------------- the live ruleset


def test_live_ruleset_from_the_log_and_from_a_bundle(small_log: Path, tmp_path: Path) -> None:
    from pcrules.bundle import publish

    with ops.open_log(small_log) as conn:
        live = ops.live_ruleset(conn)
        assert (live.source, live.name, live.version, live.log_ruleset) == ("log", "small", "v-small",
                                                                             ("small", "v-small"))
        assert live.capacities == {"Billing": 40.0, "Sales": 60.0}
        published = publish(SPEC, None, tmp_path / "published", metrics={"auc": 0.7123, "calibration": {"ece": 0.01}})
        live = ops.live_ruleset(conn, tmp_path / "published")
        assert live.source == "bundle" and live.bundle_version == published.name and live.metrics["auc"] == 0.7123
        assert live.created and live.model is None and live.name == "small"
        broken = ops.live_ruleset(conn, tmp_path / "no-such-bundle")
        assert broken.source == "log" and "no-such-bundle" in broken.bundle_problem
    assert ops.describe_conditions(SPEC["rules"][2]["when"]) == (
        "page matches /^(FAQ|Support)/ and (device = mobile or pages_viewed ≥ 3)")
    assert ops.describe_conditions({"page": {"in": ["A", "B"]}, "device": {"exists": False}, "x": {"ne": 1}}) == (
        "page in [A, B] and device absent and x ≠ 1")


# --------------------------------------------------------------------------- the widgets, in-process


def _value(d: ops.Dashboard, tile: str) -> str:
    text = d.tiles[tile].value
    return text.split('data-value="', 1)[1].split('"', 1)[0]


def test_dashboard_widgets_show_the_queries(small_log: Path) -> None:
    d = ops.dashboard(small_log)
    assert d.message.value == "" and d.body.layout.display is None
    assert (_value(d, "offers"), _value(d, "accept_rate"), _value(d, "expiry_rate"), _value(d, "chats_started")) == (
        "5", "0.500000", "0.250000", "2")
    assert 'data-state="insufficient"' in d.tiles["uplift"].value and "Not enough data yet" in d.tiles["uplift"].value
    assert 'data-needed-offered="95"' in d.tiles["uplift"].value
    assert 'data-needed-withheld="99"' in d.tiles["uplift"].value
    assert "so far −60.0 pp (95 % CI" in d.tiles["uplift"].value
    assert all(bytes(img.value).startswith(b"\x89PNG") for img in d.chart_images.values())
    assert [v for _, v in d.queue.options] == ["", "Billing", "Sales", "Support"]
    assert [v for _, v in d.page.options] == ["", "Bill Payment", "Checkout", "FAQ", "Home"]
    assert "v-small" in d.bundle_html.value and "seconds_on_page ≥ 90" in d.bundle_html.value
    assert d.recent_html.value.count("<tr>") == 1 + 10
    d.queue.value = "Billing"
    assert (_value(d, "offers"), _value(d, "decline_rate")) == ("2", "0.500000")
    d.queue.value = ""
    d.page.value = "Checkout"
    assert (_value(d, "offers"), _value(d, "accept_rate"), _value(d, "expiry_rate")) == ("2", "0.000000", "1.000000")
    d.page.value = ""
    d.time_range.value = "1h"  # the log's last hour: decisions at or after T + 86420 - 3600
    assert _value(d, "offers") == "1"  # o5
    d.time_range.value = "24h"  # at or after T + 20
    assert _value(d, "offers") == "5"
    d.time_range.value = "custom"  # both dates default to the log's first and last day
    assert (d.start_day.value, d.end_day.value) == (date(2026, 1, 5), date(2026, 1, 6)) and _value(d, "offers") == "5"
    d.end_day.value = date(2026, 1, 5)
    assert _value(d, "offers") == "4"
    d.start_day.value = date(2026, 1, 7)  # after the end: a note, nothing raised
    assert "Cannot apply the filters" in d.status.value


def test_names_from_the_log_are_text_in_html_and_charts(small_log: Path) -> None:
    hostile = r'$\frac$ pay <img src=x onerror="alert(1)"> & more'
    db = sqlite3.connect(small_log, isolation_level=None)
    decision(db, T + 90000, "v9", hostile, "offer", rule="bill", queue="Billing", offer_id="o9")
    db.close()
    d = ops.dashboard(small_log)
    assert d.message.value == "" and _value(d, "offers") == "6"  # the charts drew the name as plain text
    assert hostile not in d.recent_html.value
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in d.recent_html.value
    assert hostile in [v for _, v in d.page.options]  # a dropdown label is text, not HTML
    d.page.value = hostile
    assert _value(d, "offers") == "1" and "&lt;img" in d.status.value


def test_dashboard_refuses_values_outside_its_options(small_log: Path) -> None:
    from traitlets import TraitError

    d = ops.dashboard(small_log)
    with pytest.raises(TraitError):
        d.queue.value = "'; DROP TABLE decisions; --"
    with pytest.raises(TraitError):
        d.time_range.value = "forever"
    assert _value(d, "offers") == "5"


def test_dashboard_messages_instead_of_tracebacks(tmp_path: Path) -> None:
    path = tmp_path / "decisions.sqlite"
    d = ops.dashboard(path)
    assert 'data-kind="missing"' in d.message.value and "There is no decision log at" in d.message.value
    assert d.body.layout.display == "none"
    SQLiteDecisionLog(path).close()  # a runtime started: the schema, no decisions yet
    d.refresh_button.click()
    assert 'data-kind="empty"' in d.message.value and "has no decisions yet" in d.message.value
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO rulesets (name, version, activated_at, spec) VALUES ('small', 'v-small', 0, ?)",
               (json.dumps(SPEC),))
    decision(db, T, "v1", "Checkout", "offer", rule="check", queue="Sales", offer_id="o1")
    db.close()
    d.refresh_button.click()
    assert d.message.value == "" and _value(d, "offers") == "1"
    path.unlink()
    d.refresh_button.click()
    assert 'data-kind="missing"' in d.message.value


def test_ops_never_imports_pandas() -> None:
    code = ("import sys, pcrules.ops; from pcrules.ops import dashboard; "
            "print(sorted(m for m in ('pandas', 'numpy.core', 'sklearn', 'ipywidgets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the notebook and the safe launcher


def test_notebook_is_thin_parameterised_and_without_outputs() -> None:
    nb = json.loads((ROOT / "dashboards" / "ops.ipynb").read_text())
    cells = nb["cells"]
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "parameters" in cells[0]["metadata"].get("tags", [])
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
               for c in cells if c["cell_type"] == "code")
    assert "from pcrules.ops import dashboard" in "".join(cells[1]["source"])
    assert sum(len(c["source"]) for c in cells) < 20


def test_voila_is_started_safely(tmp_path: Path) -> None:
    from pcrules import dashboard

    cmd = dashboard.voila_command(8899, cull_idle_s=300)
    for flag in ("--Voila.ip=127.0.0.1", "--Voila.port=8899", "--VoilaConfiguration.show_tracebacks=False",
                 "--VoilaConfiguration.allow_template_override=NO", "--VoilaConfiguration.allow_theme_override=NO",
                 "--VoilaConfiguration.template=pcrules-ops", "--MappingKernelManager.cull_idle_timeout=300",
                 "--MappingKernelManager.cull_interval=60", "--no-browser"):
        assert flag in cmd
    # the notebook is package data (pcrules/dashboards/), which the checkout's dashboards/ links to
    assert Path(cmd[3]) == resources.ops_notebook()
    assert Path(cmd[3]).resolve() == (ROOT / "dashboards" / "ops.ipynb").resolve()
    with pytest.raises(ValueError):
        dashboard.voila_command(0)
    # dashboards/voila.json (for a Voila started by hand there) says the same as the launcher
    assert json.loads((ROOT / "dashboards" / "voila.json").read_text()) == dashboard.SAFE_SETTINGS
    env = dashboard.voila_env("rel/decisions.sqlite", None, base={"PCRULES_BUNDLE": "stale", "PYTHONPATH": "/x"})
    assert env[ops.LOG_ENV] == str(Path("rel/decisions.sqlite").absolute()) and ops.BUNDLE_ENV not in env
    assert env["PYTHONPATH"].split(":") == [str(ROOT), "/x"]
    assert Path(env["JUPYTER_PATH"].split(":")[0]).resolve() == (ROOT / "dashboards" / "jupyter").resolve()


def test_template_requests_nothing_from_a_cdn() -> None:
    template = ROOT / "dashboards" / "jupyter" / "voila" / "templates" / "pcrules-ops"
    assert json.loads((template / "conf.json").read_text()) == {"base_template": "lab"}
    text = (template / "index.html.j2").read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert "extends 'voila/templates/lab/index.html.j2'" in text


def test_cli_dashboard_command_is_registered() -> None:
    out = subprocess.run([sys.executable, "-m", "pcrules", "dashboard", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and "--log" in out.stdout and "127.0.0.1" in out.stdout


# --------------------------------------------------------------------------- issue 17, item 6: what the dashboard says


NOW = 1796601600.0  # 2026-12-07 00:00 UTC: "today", a year after the sample-like decisions at T


@pytest.fixture()
def old_and_new_log(small_log: Path) -> Path:
    """The small log (January 2026, like a demo's sample) and two offers made today, 90 minutes apart."""
    db = sqlite3.connect(small_log, isolation_level=None)
    decision(db, NOW + 600, "live1", "Checkout", "offer", rule="check", queue="Sales", offer_id="n1")
    decision(db, NOW + 6000, "live2", "Checkout", "offer", rule="check", queue="Sales", offer_id="n2")
    outcome(db, "n1", "accepted", NOW + 620)
    db.close()
    return small_log


def _status(d: ops.Dashboard, attribute: str) -> str:
    return d.status.value.split(f'data-{attribute}="', 1)[1].split('"', 1)[0]


def test_dashboard_opens_on_the_latest_activity_and_says_older_data_exists(old_and_new_log: Path) -> None:
    d = ops.dashboard(old_and_new_log)
    assert d.time_range.value == "7d" and _value(d, "offers") == "2"  # today's two offers, not the year's seven
    assert float(_status(d, "range-start")) == NOW + 6000 - 7 * 86400 and _status(d, "range-end") == ""
    assert _status(d, "older") == "1" and _status(d, "decisions") == "2"
    assert "Older decisions exist, from 2026-01-05 12:00" in d.status.value
    assert "the last 7 days up to the latest decision (2026-11-30 01:40 to 2026-12-07 01:40 UTC)" in d.status.value
    # the per-hour charts span today's activity, its quiet hour drawn as zero: not a year-wide axis
    assert "2 hours with offers of the 2 hours shown" in d.chart_notes["over_time"].value
    d.time_range.value = "custom"  # the custom range starts on the default range's dates, not the log's first
    assert (d.start_day.value, d.end_day.value) == (date(2026, 11, 30), date(2026, 12, 7))
    d.time_range.value = "all"  # everything: the quiet year keeps its width, and the note names it
    assert _value(d, "offers") == "7" and _status(d, "older") == "0" and "Older decisions" not in d.status.value
    note = d.chart_notes["over_time"].value
    assert "6 hours with offers of the 8,054 hours shown" in note
    assert "no offers for 334 days from 2026-01-06 13:00" in note


def test_per_hour_charts_fill_quiet_hours_with_zeros() -> None:
    summary = ops.DecisionSummary({"offer": 2}, T + 10, T + 3 * 3600 + 5)
    assert ops.view._hours(summary) == [T, T + 3600, T + 7200, T + 10800]
    assert ops.view._hours(ops.DecisionSummary()) == []


def test_one_is_singular_everywhere(tmp_path: Path) -> None:
    from pcrules.ops.text import duration, plural

    assert [plural(1, "hour"), plural(2, "hour"), plural(0, "offer"), plural(1234, "decision")] == [
        "1 hour", "2 hours", "0 offers", "1,234 decisions"]
    assert [duration(3600), duration(7300), duration(86400 * 340), duration(59), duration(60)] == [
        "1 hour", "2 hours", "340 days", "59 seconds", "1 minute"]
    assert ops.Uplift(99, 10, 100, 10).missing.startswith("needs 1 more offered visitor for 100")
    path = tmp_path / "one.sqlite"
    db = new_log(path)
    decision(db, T, "v1", "Checkout", "offer", rule="check", queue="Sales", offer_id="o1")
    decision(db, T + 5, "v1", "Checkout", "wait", rule="check", queue="Sales")
    outcome(db, "o1", "accepted", T + 20)
    db.close()
    d = ops.dashboard(path)
    text = " ".join([d.status.value, d.header.value, d.recent_html.value,
                     *(t.value for t in d.tiles.values()), *(n.value for n in d.chart_notes.values())])
    for noun in ("hour", "decision", "offer", "page", "rule", "queue", "wait", "chat", "ended offer"):
        assert f" 1 {noun}s" not in text and f">1 {noun}s" not in text, noun
    assert "1 hour with offers of the 1 hour shown" in d.chart_notes["over_time"].value
    assert "1 page with offers" in d.chart_notes["by_page"].value
    assert "1 wait" in d.chart_notes["blocked"].value and "2 decisions," in d.status.value


def test_long_ids_are_shortened_with_the_whole_id_on_hover(small_log: Path) -> None:
    visitor, session = "3f2b9c4e8d7a4b1c9e0f6a5b4c3d2e1f", "0a1b2c3d4e5f46a7b8c9d0e1f2a3b4c5"
    db = sqlite3.connect(small_log, isolation_level=None)
    decision(db, T + 90000, visitor, "Checkout", "none", "no_rule")
    db.execute("UPDATE decisions SET session_id = ? WHERE visitor_id = ?", (session, visitor))
    db.close()
    html = ops.dashboard(small_log).recent_html.value
    assert f'<span class="pcrules-id" title="{visitor}">3f2b9c4e…</span>' in html
    assert f'<span class="pcrules-id" title="{session}">0a1b2c3d…</span>' in html
    assert html.count(visitor) == 1 and html.count(session) == 1  # in the tooltip only
    assert "<td>v1-s0</td>" in html  # a short id stays as it is


HELD_OUT = {"roc_auc": 0.71234, "n": 12500, "oracle": None, "warnings": ["13 accepts held out: too few."],
            "reliability": [{"lo": 0.0, "hi": 0.1, "count": 332, "mean_predicted": 0.0384, "observed": None},
                            {"lo": 0.1, "hi": 0.2, "count": 18, "mean_predicted": 0.1234, "observed": 0.1111}]}


def test_model_metrics_are_readable(small_log: Path, tmp_path: Path) -> None:
    from pcrules.bundle import publish

    publish(SPEC, None, tmp_path / "published", metrics={"held_out": HELD_OUT, "train_rows": 41000,
                                                         "guardrail": {"checked": True}})
    d = ops.dashboard(small_log, tmp_path / "published")
    metrics = d.bundle_html.value.split('class="pcrules-table pcrules-metrics">', 1)[1].split("</table></div>", 1)[0]
    assert "<th>held_out.roc_auc</th><td>0.7123</td>" in metrics
    assert "<th>held_out.n</th><td>12,500</td>" in metrics and "<th>train_rows</th><td>41,000</td>" in metrics
    assert "<th>held_out.oracle</th><td>—</td>" in metrics and "<th>guardrail.checked</th><td>yes</td>" in metrics
    assert '<div class="pcrules-metric-line">13 accepts held out: too few.</div>' in metrics
    # the bins: a small table folded under a summary, every number formatted, no JSON
    assert "<summary>2 bins</summary>" in metrics
    assert "<th>lo</th><th>hi</th><th>count</th><th>mean_predicted</th><th>observed</th>" in metrics
    assert "<td>0.1</td><td>0.2</td><td>18</td><td>0.1234</td><td>0.1111</td>" in metrics
    assert "None" not in metrics and "{" not in metrics and "[" not in metrics and "&quot;" not in metrics


def test_date_pickers_are_wide_enough_for_the_whole_date(small_log: Path) -> None:
    d = ops.dashboard(small_log)
    for picker in (d.start_day, d.end_day):
        assert int(picker.layout.width.removesuffix("px")) >= 200 and picker.style.description_width == "initial"


def test_answers_are_remembered_until_the_log_changes(small_log: Path) -> None:
    d = ops.dashboard(small_log)
    d.queue.value = "Billing"
    before = len(d.memo._items)
    asked: list[object] = []  # the answers computed, not remembered
    remembered = d.memo.get
    d.memo.get = lambda key, compute: remembered(key, lambda: asked.append(key) or compute())  # type: ignore
    d.queue.value = ""
    d.refresh_button.click()  # nothing written: every answer (charts included) is the remembered one
    assert asked == [] and len(d.memo._items) == before and _value(d, "offers") == "5"
    db = sqlite3.connect(small_log, isolation_level=None)
    decision(db, T + 86430, "v9", "FAQ", "offer", rule="help", queue="Support", offer_id="o9")
    db.close()
    d.refresh_button.click()  # a new decision: a new stamp, asked again
    assert _value(d, "offers") == "6" and len(d.memo._items) > before


def test_background_charts_follow_the_tiles_and_skip_a_superseded_selection(small_log: Path) -> None:
    d = ops.dashboard(small_log, background_charts=True)
    assert _value(d, "offers") == "5"  # the tiles, at once
    d.wait_for_charts(timeout=60)
    assert all(bytes(img.value).startswith(b"\x89PNG") for img in d.chart_images.values())
    assert "pcrules-charts-pending" not in d.charts_box._dom_classes and _status(d, "decisions") == "10"
    drawn = d.chart_images["by_queue"].value
    d._generation += 1  # as if another refresh had started meanwhile: this one's charts are not shown
    d._show_details(d._generation - 1, (0,), Filters(queue="Sales"), ops.OfferCube(), 0.0)
    assert d.chart_images["by_queue"].value == drawn
    d.queue.value = "Sales"
    d.wait_for_charts(timeout=60)
    assert d.chart_images["by_queue"].value != drawn and _status(d, "decisions") == "3"
