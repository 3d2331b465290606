"""Event validation: the only door into the runtime. A refused event changes nothing."""

from __future__ import annotations

import itertools
import math
import sqlite3
from datetime import datetime
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pcrules
from pcrules.errors import InvalidEvent, PcrulesError
from pcrules.events import MAX_EXTRA_FIELDS, Event, parse_ts, validate_event

TS = 1764064800  # 2025-11-25 10:00:00 UTC
GOOD = {"visitor_id": "v1", "session_id": "s1", "page": "Bill Payment", "seconds_on_page": 301, "ts": TS}

SPEC = {
    "name": "events-test",
    "policy": {"max_offers_per_session": 2, "offer_timeout_s": 60, "decline_cooldown_s": 600},
    "queues": {"Billing": {}},
    "rules": [
        {"name": "bill", "priority": 10,
         "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 300}},
         "offer": {"queue": "Billing", "metadata": {"Page Name": "{page}", "Time spent on page": "{minutes} mins"}}},
        {"name": "plans", "priority": 5,
         "when": {"page": "Plans", "pages_viewed": {"gte": 3}, "returning": True},
         "offer": {"queue": "Billing"}},
    ],
}


def never_clock() -> float:
    raise AssertionError("the clock must not be read when the event carries ts")


def check(event: Any, clock=lambda: 1234.0) -> Event:
    return validate_event(event, clock)


def with_(**changes: Any) -> dict:
    """GOOD with fields changed; a value of `...` removes the field."""
    event = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def many_fields(n: int) -> dict:
    return {**GOOD, **{f"extra_{i}": i for i in range(n)}}


# (id, event, the field InvalidEvent must name)
BAD: list[tuple[str, Any, str]] = [
    # missing / null required fields
    ("missing visitor_id", with_(visitor_id=...), "visitor_id"),
    ("missing session_id", with_(session_id=...), "session_id"),
    ("missing page", with_(page=...), "page"),
    ("missing seconds_on_page", with_(seconds_on_page=...), "seconds_on_page"),
    ("null visitor_id", with_(visitor_id=None), "visitor_id"),
    ("null seconds_on_page", with_(seconds_on_page=None), "seconds_on_page"),
    # wrong types of required fields
    ("int visitor_id", with_(visitor_id=12345), "visitor_id"),
    ("bytes page", with_(page=b"Bill Payment"), "page"),
    ("list page", with_(page=["Bill Payment"]), "page"),
    ("string seconds", with_(seconds_on_page="301"), "seconds_on_page"),
    ("bool seconds", with_(seconds_on_page=True), "seconds_on_page"),
    ("dict seconds", with_(seconds_on_page={"value": 301}), "seconds_on_page"),
    # string bounds and content
    ("empty visitor_id", with_(visitor_id=""), "visitor_id"),
    ("129-char session_id", with_(session_id="s" * 129), "session_id"),
    ("201-char page", with_(page="P" * 201), "page"),
    ("10 MB page", with_(page="P" * 10_000_000), "page"),
    ("null byte in page", with_(page="Bill\x00Payment"), "page"),
    ("newline in page", with_(page="Bill\nPayment"), "page"),
    ("escape char in visitor_id", with_(visitor_id="v\x1b[31m1"), "visitor_id"),
    ("DEL in page", with_(page="Bill\x7f"), "page"),
    ("C1 control in page", with_(page="Bill\x85Payment"), "page"),
    ("lone surrogate in page", with_(page="Bill \ud800"), "page"),
    # numbers: negative, NaN, infinities, absurd
    ("negative seconds", with_(seconds_on_page=-1), "seconds_on_page"),
    ("NaN seconds", with_(seconds_on_page=math.nan), "seconds_on_page"),
    ("inf seconds", with_(seconds_on_page=math.inf), "seconds_on_page"),
    ("-inf seconds", with_(seconds_on_page=-math.inf), "seconds_on_page"),
    ("seconds beyond a broken clock", with_(seconds_on_page=1e8), "seconds_on_page"),
    ("int too large for a float", with_(seconds_on_page=10**400), "seconds_on_page"),
    # ts
    ("ts not a date", with_(ts="yesterday"), "ts"),
    ("ts impossible date", with_(ts="2025-13-45T00:00:00"), "ts"),
    ("ts numeric text", with_(ts="1764064800"), "ts"),
    ("ts negative", with_(ts=-1), "ts"),
    ("ts NaN", with_(ts=math.nan), "ts"),
    ("ts inf", with_(ts=math.inf), "ts"),
    ("ts bool", with_(ts=True), "ts"),
    ("ts list", with_(ts=[TS]), "ts"),
    ("ts in milliseconds (far future)", with_(ts=TS * 1000), "ts"),
    ("ts far future ISO", with_(ts="2200-01-01T00:00:00Z"), "ts"),
    ("ts before 1970 ISO", with_(ts="1969-12-31T23:59:59+00:00"), "ts"),
    ("ts year 1 with offset", with_(ts="0001-01-01T00:00:00+14:00"), "ts"),
    ("ts 10 MB text", with_(ts="2025" * 2_500_000), "ts"),
    # extra fields: only scalars, sane names, bounded
    ("nested object", with_(cart={"items": 3}), "cart"),
    ("list value", with_(tags=["a", "b"]), "tags"),
    ("tuple value", with_(tags=("a",)), "tags"),
    ("set value", with_(tags={"a"}), "tags"),
    ("datetime value", with_(seen=datetime(2025, 1, 1)), "seen"),
    ("bytes value", with_(referrer=b"x"), "referrer"),
    ("NaN extra", with_(cart_value=math.nan), "cart_value"),
    ("inf extra", with_(cart_value=-math.inf), "cart_value"),
    ("huge int extra", with_(cart_value=10**400), "cart_value"),
    ("1001-char extra", with_(referrer="r" * 1001), "referrer"),
    ("null byte in extra", with_(referrer="a\x00b"), "referrer"),
    ("field name with dash", with_(**{"bad-name": 1}), "bad-name"),
    ("field name starting with a digit", with_(**{"1st": 1}), "1st"),
    ("65-char field name", with_(**{"f" * 65: 1}), "f" * 65),
    ("field name with a space, null value", with_(**{"a b": None}), "a b"),
    ("non-string field name", {**GOOD, 5: "x"}, "5"),
    ("too many fields", many_fields(MAX_EXTRA_FIELDS + 1), "event"),
    # contract-typed optional fields
    ("bool pages_viewed", with_(pages_viewed=True), "pages_viewed"),
    ("string pages_viewed", with_(pages_viewed="3"), "pages_viewed"),
    ("negative pages_viewed", with_(pages_viewed=-1), "pages_viewed"),
    ("negative session_seconds", with_(session_seconds=-5), "session_seconds"),
    ("string returning", with_(returning="yes"), "returning"),
    ("int returning", with_(returning=1), "returning"),
    ("number device", with_(device=5), "device"),
    # not an event at all
    ("a list", [("visitor_id", "v1")], "event"),
    ("None", None, "event"),
    ("a JSON string", '{"visitor_id": "v1"}', "event"),
]


@pytest.mark.parametrize("event, field", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_malformed_event_is_refused_naming_its_field(event, field):
    with pytest.raises(InvalidEvent) as info:
        check(event)
    error = info.value
    assert error.field == field
    assert isinstance(error, ValueError) and isinstance(error, PcrulesError) and error.code == "invalid_event"
    assert str(error).startswith(f"{field}: ")
    assert len(str(error)) < 400  # a 10 MB value is never echoed back


# --------------------------------------------------------------------------- good events


def test_a_good_event_is_normalised():
    ev = check(with_(pages_viewed=4, returning=True, device="mobile", referrer=None), clock=never_clock)
    assert (ev.visitor_id, ev.session_id, ev.page, ev.seconds_on_page, ev.ts) == ("v1", "s1", "Bill Payment", 301.0, TS)
    assert isinstance(ev.seconds_on_page, float) and isinstance(ev.ts, float)
    assert dict(ev.fields) == {"visitor_id": "v1", "session_id": "s1", "page": "Bill Payment", "seconds_on_page": 301.0,
                               "ts": float(TS), "pages_viewed": 4.0, "returning": True, "device": "mobile"}
    assert "referrer" not in ev.fields  # null means absent


@pytest.mark.parametrize("page", [
    "Überweisung", "Facture – paiement", "請求書の支払い", "فاتورة", "💳 Pay", "Ünïcödé\u200d👩‍💻", "P" * 200,
])
def test_unicode_page_names_are_fine(page):
    assert check(with_(page=page)).page == page


@pytest.mark.parametrize("ts", [
    "2025-11-25T11:00:00+01:00",
    "2025-11-25T05:00:00-05:00",
    "2025-11-25T10:00:00Z",
    "2025-11-25T10:00:00+00:00",
    "2025-11-25T10:00:00",        # naive: UTC
    "2025-11-25 10:00:00",
    " 2025-11-25T10:00:00.000Z ",
    TS,
    float(TS),
])
def test_ts_as_iso_8601_with_offset_z_or_naive_utc_or_epoch(ts):
    assert check(with_(ts=ts), clock=never_clock).ts == TS


def test_parse_ts_keeps_fractions_of_a_second():
    assert parse_ts("2025-11-25T10:00:00.250Z") == TS + 0.25


def test_missing_or_null_ts_uses_the_clock():
    assert check(with_(ts=...), clock=lambda: 1234.0).ts == 1234.0
    assert check(with_(ts=None), clock=lambda: 1234.0).ts == 1234.0
    assert check(with_(ts=...), clock=lambda: 1234.0).fields["ts"] == 1234.0


def test_limits_are_inclusive():
    ev = check(with_(visitor_id="v" * 128, session_id="s" * 128, page="p" * 200, seconds_on_page=0,
                     referrer="r" * 1000, ts=0))
    assert len(ev.visitor_id) == 128 and ev.seconds_on_page == 0.0 and ev.ts == 0.0
    assert len(check(many_fields(MAX_EXTRA_FIELDS)).fields) == 4 + 1 + MAX_EXTRA_FIELDS


def test_unknown_scalar_extras_are_kept_as_they_are():
    ev = check(with_(tz_offset_min=-60, ratio=0.5, campaign="spring", empty="", flag=False, name_with_9="x"))
    assert {k: ev.fields[k] for k in ("tz_offset_min", "ratio", "campaign", "empty", "flag", "name_with_9")} == {
        "tz_offset_min": -60, "ratio": 0.5, "campaign": "spring", "empty": "", "flag": False, "name_with_9": "x"}


def test_bool_is_not_a_number_but_a_bool_extra_is_fine():
    assert check(with_(returning=False)).fields["returning"] is False
    with pytest.raises(InvalidEvent):
        check(with_(seconds_on_page=False))


def test_other_real_numbers_become_plain_python_numbers():
    # numbers.Real covers numpy scalars from pandas rows; they must not reach json.dumps as such.
    ev = check(with_(seconds_on_page=Fraction(601, 2), ratio=Fraction(1, 4)))
    assert ev.seconds_on_page == 300.5 and type(ev.fields["ratio"]) is float


def test_string_subclasses_become_plain_strings():
    class Page(str):
        pass

    ev = check(with_(page=Page("Bill Payment"), campaign=Page("x")))
    assert type(ev.page) is str and type(ev.fields["campaign"]) is str


def test_the_event_is_not_mutated():
    event = with_(referrer=None, ts="2025-11-25T10:00:00Z")
    before = dict(event)
    check(event)
    assert event == before


# --------------------------------------------------------------------------- through a real Runtime


def runtime(**kwargs: Any) -> pcrules.Runtime:
    ids = (f"offer-{i}" for i in itertools.count(1))
    return pcrules.Runtime(SPEC, clock=lambda: 1234.0, new_offer_id=lambda: next(ids), **kwargs)


def snapshot(rt: pcrules.Runtime, offer_id: str) -> tuple:
    store = rt.store
    return (store.session("v1", "s1"), store.visitor("v1"), store.offer(offer_id), len(store),
            store.session("v2", "s2"))


@pytest.mark.parametrize("event, field", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_event_through_the_runtime_raises_and_changes_nothing(event, field, tmp_path):
    rt, fresh = runtime(log=pcrules.SQLiteDecisionLog(tmp_path / "log.db")), runtime()
    first = rt.observe(GOOD)
    assert first == fresh.observe(GOOD) and first.action == "offer" and first.offer_id == "offer-1"
    before = snapshot(rt, first.offer_id)
    assert before[0].pending is not None

    with pytest.raises(InvalidEvent) as info:
        rt.observe(event)
    assert info.value.field == field
    assert snapshot(rt, first.offer_id) == before  # the session's offer is still pending, nothing else moved

    # The next good event is served exactly as on a runtime that never saw the bad one.
    later = with_(ts=TS + 10, seconds_on_page=311)
    decision = rt.observe(later)
    assert decision == fresh.observe(later)
    assert decision.action == "none" and decision.reason == "offer_pending"
    other = with_(visitor_id="v2", session_id="s2", ts=TS + 20)
    second = rt.observe(other)
    assert second == fresh.observe(other) and second.action == "offer" and second.offer_id == "offer-2"
    assert rt.accept(first.offer_id, ts=TS + 30).status == "accepted"

    # Only the three good decisions were logged.
    rt.close()
    with sqlite3.connect(tmp_path / "log.db") as db:
        assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == 3


def test_a_refused_event_from_the_far_future_does_not_move_the_runtime_clock():
    rt, fresh = runtime(), runtime()
    first = rt.observe(GOOD)
    fresh.observe(GOOD)
    with pytest.raises(InvalidEvent):
        rt.observe(with_(ts=TS * 1000))  # milliseconds by mistake
    # Had the high-water mark moved, the pending offer would have expired and this would be another offer.
    later = with_(ts=TS + 30)
    assert rt.observe(later) == fresh.observe(later)
    assert rt.store.offer(first.offer_id).status == "offered"


def test_good_unusual_events_through_the_runtime():
    rt = runtime()
    d = rt.observe(with_(ts="2025-11-25T11:00:00+01:00", visitor_id="ü-1", page="Bill Payment", device="mobile",
                         referrer="", campaign="请"))
    assert d.action == "offer" and d.ts == TS
    assert d.metadata == {"Page Name": "Bill Payment", "Time spent on page": "5 mins"}
    d = rt.observe({"visitor_id": "v9", "session_id": "s9", "page": "Überweisung 💳", "seconds_on_page": 5})
    assert d.action == "none" and d.reason == "no_rule" and d.ts == 1234.0 and d.page == "Überweisung 💳"


def test_missing_ts_uses_the_runtime_clock():
    d = runtime().observe(with_(ts=...))
    assert d.ts == 1234.0 and d.expires_at == 1234.0 + 60


@pytest.mark.parametrize("ts", ["2025-11-25T10:00:00Z", "2025-11-25T10:00:00", "2025-11-25T12:00:00+02:00"])
def test_iso_ts_through_the_runtime_is_event_time(ts):
    d = runtime().observe(with_(ts=ts))
    assert d.ts == TS and d.expires_at == TS + 60


def test_a_field_of_the_wrong_type_for_a_rule_is_refused_before_matching():
    # pages_viewed="3" would satisfy ">= 3" under durable_rules' coercion; the event door refuses it.
    rt = runtime()
    plans = with_(page="Plans", seconds_on_page=10, returning=True)
    with pytest.raises(InvalidEvent) as info:
        rt.observe({**plans, "pages_viewed": "3"})
    assert info.value.field == "pages_viewed"
    assert rt.observe({**plans, "pages_viewed": 3}).action == "offer"


# json.dumps writes 1e-07 and 1e+16 without a '.', which the durable_rules JSON parser refuses (error 204);
# the matcher writes such numbers in the engine's form.
@pytest.mark.parametrize("field, value", [("seconds_on_page", 1e-7), ("pages_viewed", 1e16)])
def test_valid_numbers_in_exponent_notation_are_served(field, value):
    rt = runtime()
    assert rt.observe(with_(**{field: value})).action in ("offer", "wait", "none")


# --------------------------------------------------------------------------- never anything but InvalidEvent


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3), max_leaves=6)
names = st.sampled_from(["visitor_id", "session_id", "page", "seconds_on_page", "ts", "pages_viewed", "returning",
                         "device", "session_seconds", "cart", "bad-name", ""])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(names, values, max_size=8))
def test_validation_either_accepts_or_raises_invalid_event(changes):
    event = {**GOOD, **changes}
    try:
        ev = check(event)
    except InvalidEvent as exc:
        assert exc.field
    else:
        assert set(ev.fields) <= {k for k, v in event.items() if v is not None} | {"ts"}
        for value in ev.fields.values():
            assert type(value) in (str, int, float, bool)
            assert not isinstance(value, float) or math.isfinite(value)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(names, scalars, max_size=6))
def test_the_runtime_serves_every_event_that_validation_accepts(changes):
    event = {**GOOD, **changes}
    try:
        check(event)
    except InvalidEvent:
        return
    seconds = event.get("seconds_on_page")
    rt = runtime()
    d = rt.observe(event)
    assert d.action in ("offer", "wait", "none") and d.seconds_on_page == float(seconds)
