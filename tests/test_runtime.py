"""The runtime shell: offer lifecycle by event time, answering errors, escaping, queue reports, import weight."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

import pcrules
from helpers import T0, ev, make_runtime, row_counts, rule, snapshot
from pcrules import (
    Action,
    InvalidEvent,
    OfferClosed,
    OfferNotFound,
    OfferStatus,
    PcrulesError,
    Reason,
    SQLiteDecisionLog,
    UnknownQueue,
)

# the directory holding the pcrules under test, for subprocesses
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pcrules.__file__)))


def outcomes(rt, path):
    rt.flush()
    with sqlite3.connect(path) as db:
        return db.execute("SELECT offer_id, status, ts FROM outcomes ORDER BY id").fetchall()


@pytest.fixture
def logged(tmp_path):
    log = SQLiteDecisionLog(tmp_path / "log.sqlite")
    rt = make_runtime(log=log, max_offers_per_session=2)
    yield rt, log.path
    rt.close()


# ----------------------------------------------------------------------------- expiry by event time


def test_a_later_event_of_another_session_expires_the_offer(logged):
    rt, path = logged
    d = rt.observe(ev(seconds=301, ts=T0))  # expires at T0 + 60
    rt.observe(ev(visitor="v2", session="x", page="Home", seconds=1, ts=T0 + 59))
    assert outcomes(rt, path) == []
    assert rt.store.offer(d.offer_id).status == OfferStatus.OFFERED
    rt.observe(ev(visitor="v2", session="x", page="Home", seconds=2, ts=T0 + 60))
    assert outcomes(rt, path) == [(d.offer_id, "expired", T0 + 60)]
    assert rt.store.offer(d.offer_id).status == OfferStatus.EXPIRED
    # the session is free again (max 2 per session): no offer_pending
    assert rt.observe(ev(seconds=400, ts=T0 + 100)).action == Action.OFFER
    # a late accept is refused and changes nothing more
    with pytest.raises(OfferClosed):
        rt.accept(d.offer_id, ts=T0 + 101)
    assert len(outcomes(rt, path)) == 1


def test_a_late_answer_closes_the_offer_as_expired(logged):
    rt, path = logged
    d = rt.observe(ev(seconds=301, ts=T0))
    # no other event has arrived, but by event time the offer ran out at T0 + 60
    with pytest.raises(OfferClosed, match="expired"):
        rt.accept(d.offer_id, ts=T0 + 60)
    assert outcomes(rt, path) == [(d.offer_id, "expired", T0 + 60)]
    with pytest.raises(OfferClosed):
        rt.decline(d.offer_id, ts=T0 + 61)
    assert len(outcomes(rt, path)) == 1
    # not treated as a decline: no cooldown
    assert rt.observe(ev(session="s2", seconds=301, ts=T0 + 62)).action == Action.OFFER


def test_answer_just_in_time(logged):
    rt, path = logged
    d = rt.observe(ev(seconds=301, ts=T0))
    out = rt.accept(d.offer_id, ts=T0 + 59.999)
    assert (out.status, out.ts, out.rule, out.queue, out.offered_at) == (
        OfferStatus.ACCEPTED, T0 + 59.999, "bill", "Billing", T0)
    assert outcomes(rt, path) == [(d.offer_id, "accepted", T0 + 59.999)]


def test_explicit_expire_is_recorded_at_the_answer_time_and_frees_the_session(logged):
    rt, path = logged
    d = rt.observe(ev(seconds=301, ts=T0))
    out = rt.expire(d.offer_id, ts=T0 + 10)
    assert out.status == OfferStatus.EXPIRED and out.ts == T0 + 10
    assert rt.observe(ev(seconds=320, ts=T0 + 20)).action == Action.OFFER
    assert outcomes(rt, path) == [(d.offer_id, "expired", T0 + 10)]


def test_expiry_is_by_event_time_not_wall_clock(tmp_path):
    # the runtime's wall clock says year 2026-01-05 12:00 (T0); events come from a replay a year earlier
    rt = make_runtime(log=SQLiteDecisionLog(tmp_path / "l.sqlite"))
    old = T0 - 365 * 86400
    d = rt.observe(ev(seconds=301, ts=old))
    assert d.expires_at == old + 60
    assert rt.observe(ev(seconds=302, ts=old + 1)).reason == Reason.OFFER_PENDING
    assert rt.accept(d.offer_id, ts=old + 2).status == OfferStatus.ACCEPTED


# ----------------------------------------------------------------------------- answering errors change nothing


@pytest.mark.parametrize("verb", ["accept", "decline", "expire"])
def test_unknown_offer_raises_and_changes_nothing(logged, verb):
    rt, path = logged
    d = rt.observe(ev(seconds=301, ts=T0))
    before = (snapshot(rt, [d.offer_id], ["v1"]), row_counts(path, rt))
    for bad in ("nope", "", "x" * 500, None, 42):
        with pytest.raises(OfferNotFound) as info:
            getattr(rt, verb)(bad, ts=T0 + 1)
        assert isinstance(info.value, PcrulesError)
    assert "no offer with id 'nope'" in str(OfferNotFound("nope"))
    assert (snapshot(rt, [d.offer_id], ["v1"]), row_counts(path, rt)) == before


@pytest.mark.parametrize("first", ["accept", "decline", "expire"])
@pytest.mark.parametrize("verb", ["accept", "decline", "expire"])
def test_answering_a_closed_offer_raises_and_changes_nothing(logged, first, verb):
    rt, path = logged
    d = rt.observe(ev(seconds=301, ts=T0))
    getattr(rt, first)(d.offer_id, ts=T0 + 5)
    before = (snapshot(rt, [d.offer_id], ["v1"]), row_counts(path, rt))
    with pytest.raises(OfferClosed) as info:
        getattr(rt, verb)(d.offer_id, ts=T0 + 6)
    assert info.value.status.startswith({"accept": "accepted", "decline": "declined", "expire": "expired"}[first])
    assert d.offer_id in str(info.value)
    assert (snapshot(rt, [d.offer_id], ["v1"]), row_counts(path, rt)) == before


def test_invalid_event_changes_nothing(logged):
    rt, path = logged
    rt.observe(ev(seconds=301, ts=T0))
    before = (snapshot(rt, [], ["v1"]), row_counts(path, rt))
    for bad, field in [({**ev(), "seconds_on_page": -1}, "seconds_on_page"), ({**ev(), "visitor_id": ""}, "visitor_id"),
                       ({**ev(), "ts": "yesterday"}, "ts"), ({**ev(), "pages_viewed": "7"}, "pages_viewed")]:
        with pytest.raises(InvalidEvent) as info:
            rt.observe(bad)
        assert info.value.field == field and isinstance(info.value, ValueError)
    assert (snapshot(rt, [], ["v1"]), row_counts(path, rt)) == before


# ----------------------------------------------------------------------------- js_call and metadata escaping


NASTY = 'Bill </script><script>alert(1)</script> "quoted" \'single\' \u2028 line&amp'


def test_js_call_and_metadata_are_safe_to_embed():
    rt = make_runtime([rule(page=None, metadata={"Page Name": "{page}", "Note": "<b>{page}</b>"})])
    d = rt.observe(ev(page=NASTY, seconds=301))
    assert d.action == Action.OFFER
    js = d.js_call
    assert js.startswith('pega.chat.proactiveChat.offer("Billing", {') and js.endswith("}, true);")
    for forbidden in ("<", ">", "\u2028", "\u2029", "'"):
        assert forbidden not in js, forbidden
    # metadata values are HTML-escaped text: the CSR window shows them, never runs them
    assert d.metadata["Page Name"] == ('Bill &lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; &quot;quoted&quot; '
                                       '&#x27;single&#x27; \u2028 line&amp;amp')
    assert d.metadata["Note"].startswith("&lt;b&gt;Bill")
    # and the JS literal round-trips to exactly that metadata
    import json
    args = js[len("pega.chat.proactiveChat.offer("):-2]
    decoded = json.loads("[" + args + "]")
    assert decoded == ["Billing", dict(d.metadata), True]


def test_metadata_names_are_escaped_too():
    d = make_runtime([rule(metadata={"<i>Page</i> & \"name\"": "{page}"})]).observe(ev(seconds=301))
    assert d.metadata == {"&lt;i&gt;Page&lt;/i&gt; &amp; &quot;name&quot;": "Bill Payment"}
    assert "<" not in d.js_call and ">" not in d.js_call


def test_js_call_default_ui_false():
    spec_rule = rule()
    spec_rule["offer"]["default_ui"] = False
    d = make_runtime([spec_rule]).observe(ev(seconds=301))
    assert d.js_call.endswith(", false);") and d.default_ui is False


def test_metadata_missing_field_renders_empty():
    d = make_runtime([rule(metadata={"Pages": "{pages_viewed} pages", "Device": "{device}"})]).observe(ev(seconds=301))
    assert d.metadata == {"Pages": " pages", "Device": ""}


# ----------------------------------------------------------------------------- update_queue


def test_update_queue_unknown_queue():
    rt = make_runtime()
    for name in ("Nope", "billing", None, ["Billing"]):
        with pytest.raises(UnknownQueue) as info:
            rt.update_queue(name, agents_available=1)
        assert "Billing" in str(info.value)  # names the queues that exist
    assert rt.store.queue_status() == {}


@pytest.mark.parametrize("kwargs, field", [
    ({"agents_available": -1}, "agents_available"),
    ({"agents_available": 1.5}, "agents_available"),
    ({"agents_available": True}, "agents_available"),
    ({"agents_available": "3"}, "agents_available"),
    ({"estimated_wait_s": -5}, "estimated_wait_s"),
    ({"estimated_wait_s": float("nan")}, "estimated_wait_s"),
    ({"estimated_wait_s": float("inf")}, "estimated_wait_s"),
    ({"estimated_wait_s": "40"}, "estimated_wait_s"),
])
def test_update_queue_bad_values_are_refused_clearly(kwargs, field):
    rt = make_runtime()
    rt.update_queue("Billing", agents_available=0)
    before = dict(rt.store.queue_status())
    with pytest.raises(InvalidEvent) as info:
        rt.update_queue("Billing", **kwargs)
    assert info.value.field == field and field in str(info.value)
    assert rt.store.queue_status() == before


def test_update_queue_returns_the_status():
    rt = make_runtime()
    status = rt.update_queue("Billing", agents_available=3, estimated_wait_s=40, ts=T0)
    assert (status.agents_available, status.estimated_wait_s, status.updated_at) == (3, 40.0, T0)


# ----------------------------------------------------------------------------- goals, close


def test_record_goal_is_logged_and_validated(logged):
    rt, path = logged
    rt.record_goal("v1", "s1", "bill_paid", ts=T0, value=12.5)
    with pytest.raises(InvalidEvent):
        rt.record_goal("v1", "s1", "bill_paid", ts=T0, value=float("nan"))
    with pytest.raises(InvalidEvent):
        rt.record_goal("", "s1", "bill_paid", ts=T0)
    rt.flush()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT visitor_id, session_id, goal, ts, value FROM goals").fetchall() == [
            ("v1", "s1", "bill_paid", T0, 12.5)]


def test_closed_runtime_refuses_to_observe(tmp_path):
    rt = make_runtime()
    rt.close()
    with pytest.raises(PcrulesError):
        rt.observe(ev())


# ----------------------------------------------------------------------------- import isolation


HEAVY = ("pandas", "sklearn", "numpy", "scipy", "matplotlib", "ipywidgets", "IPython", "jupyter_core", "jupyter_client")


def test_runtime_path_imports_no_data_science_stack(tmp_path):
    # Stand-ins for the heavy packages, placed *after* site-packages: where the real ones are
    # installed they win, where they are not the stand-ins make a stray import visible anyway.
    fake = tmp_path / "fake"
    for name in HEAVY:
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text("")
    code = f"""
import sys
sys.path.append({str(fake)!r})
import pcrules
rt = pcrules.Runtime({{"name": "x", "queues": {{"Billing": {{}}}},
                       "rules": [{{"name": "r", "when": {{"page": "Bill Payment", "seconds_on_page": {{"gte": 300}}}},
                                  "offer": {{"queue": "Billing"}}}}]}},
                     log=pcrules.SQLiteDecisionLog({str(tmp_path / 'l.sqlite')!r}))
actions = [rt.observe({{"visitor_id": "v", "session_id": f"s{{i}}", "page": "Bill Payment",
                        "seconds_on_page": 100 * i, "ts": 1767614400 + i}}).action for i in range(5)]
assert actions == ["wait", "wait", "wait", "offer", "offer"], actions
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m.startswith("jupyter"))
print("HEAVY", heavy)
import numpy  # the check above would have seen it: the stand-in (or the real one) is importable
assert "numpy" in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": ROOT}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout
