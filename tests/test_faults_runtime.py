"""Fault injection at the runtime's door: event time from the future, answers dated before their offer, numbers
too large for a float. Each is refused by name and changes nothing; nobody else's state moves."""

from __future__ import annotations

import time
import warnings

import pytest

from helpers import T0, Clock, counter_ids, rule, spec_dict
from pcrules import InvalidEvent, Runtime, load_spec
from pcrules.runtime import DEFAULT_MAX_CLOCK_SKEW_S
from pcrules.server import ServerConfig, create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.faults

SPEC = spec_dict([rule("bill", seconds=0)], holdout=0.0, offer_timeout_s=60, session_idle_ttl_s=1800)
YEAR_2099 = 4_070_908_800.0
HUGE = int("9" * 400)  # under Python's 4,300-digit limit, far beyond a float


def event(visitor: str, ts: float | None = None, **extra) -> dict:
    body = {"visitor_id": visitor, "session_id": "s", "page": "Bill Payment", "seconds_on_page": 5, **extra}
    return body if ts is None else {**body, "ts": ts}


@pytest.fixture
def wall_clock_runtime() -> Runtime:
    """A live runtime: the real wall clock, so the default skew bound applies."""
    return Runtime(load_spec(SPEC), new_offer_id=counter_ids())


def test_one_event_from_2099_neither_expires_nor_evicts_anyone_else(wall_clock_runtime):
    rt = wall_clock_runtime
    now = time.time()
    first = rt.observe(event("A", now))
    assert first.action == "offer"
    with pytest.raises(InvalidEvent) as refused:
        rt.observe(event("B", YEAR_2099))
    assert refused.value.field == "ts" and "ahead of this server's clock" in str(refused.value)
    assert rt.observe(event("A", now + 5)).reason == "offer_pending"  # no second offer
    assert rt.accept(first.offer_id, now + 6, visitor_id="A", session_id="s").status == "accepted"


def test_the_bound_is_the_documented_skew_and_applies_to_every_door(wall_clock_runtime):
    rt = wall_clock_runtime
    now = time.time()
    rt.observe(event("A", now + DEFAULT_MAX_CLOCK_SKEW_S - 5))  # a client clock a little fast is fine
    offer = rt.observe(event("C", now))
    later = now + DEFAULT_MAX_CLOCK_SKEW_S + 60
    for call in (lambda: rt.accept(offer.offer_id, later), lambda: rt.record_goal("C", "s", "paid", ts=later),
                 lambda: rt.update_queue("Billing", agents_available=1, ts=later)):
        with pytest.raises(InvalidEvent, match="ahead") as refused:
            call()
        assert refused.value.field == "ts"
    assert rt.store.offer(offer.offer_id).status == "offered"


def test_a_replay_with_its_own_clock_has_no_bound_unless_asked():
    replay = Runtime(load_spec(SPEC), clock=lambda: 0.0)
    assert replay.observe(event("A", T0)).action == "offer"  # history, whatever the replay's clock says
    bounded = Runtime(load_spec(SPEC), clock=Clock(T0), max_clock_skew_s=10)
    with pytest.raises(InvalidEvent):
        bounded.observe(event("A", T0 + 11))
    with pytest.raises(ValueError, match="max_clock_skew_s"):
        Runtime(load_spec(SPEC), max_clock_skew_s=-1)


@pytest.mark.parametrize("answer", ["accept", "decline", "expire"])
def test_an_answer_dated_before_its_offer_is_refused_and_changes_nothing(answer):
    rt = Runtime(load_spec(SPEC), clock=Clock(T0), new_offer_id=counter_ids())
    offer = rt.observe(event("A", T0 + 100))
    with pytest.raises(InvalidEvent, match="before the offer was made") as refused:
        getattr(rt, answer)(offer.offer_id, T0 + 99)
    assert refused.value.field == "ts"
    assert rt.store.offer(offer.offer_id).status == "offered"
    assert getattr(rt, answer)(offer.offer_id, T0 + 100).status.startswith(answer[:5])


@pytest.mark.parametrize("field", ["pages_viewed", "session_seconds", "seconds_on_page", "any_extra"])
def test_huge_integers_in_an_event_are_refused_by_name(field):
    rt = Runtime(load_spec(SPEC), clock=Clock(T0))
    with pytest.raises(InvalidEvent) as refused:
        rt.observe({**event("A", T0), field: HUGE})
    assert refused.value.field == field and "finite number" in str(refused.value)
    assert len(rt.store) == 0


def test_huge_numbers_in_goals_and_queue_reports_are_refused_by_name():
    rt = Runtime(load_spec(SPEC), clock=Clock(T0))
    for call, field in ((lambda: rt.record_goal("v", "s", "paid", value=HUGE), "value"),
                        (lambda: rt.update_queue("Billing", estimated_wait_s=HUGE), "estimated_wait_s"),
                        (lambda: rt.update_queue("Billing", estimated_wait_s=float("inf")), "estimated_wait_s"),
                        (lambda: rt.update_queue("Billing", agents_available=HUGE), "agents_available")):
        with pytest.raises(InvalidEvent) as refused:
            call()
        assert refused.value.field == field
    assert rt.store.queue_status() == {}


def test_over_http_a_trusted_clients_future_event_is_a_400_naming_ts(tmp_path):
    import yaml

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(SPEC))
    clock = Clock(T0)
    app = create_app(ServerConfig(rules=str(rules), trust_client_ts=True), clock=clock,
                     max_clock_skew_s=DEFAULT_MAX_CLOCK_SKEW_S)
    with TestClient(app, raise_server_exceptions=False) as c:
        offer = c.post("/v1/observe", json=event("A", T0)).json()
        r = c.post("/v1/observe", json=event("B", YEAR_2099))
        assert r.status_code == 400 and r.json()["field"] == "ts"
        clock.t += 5
        assert c.post("/v1/observe", json=event("A", T0 + 5)).json()["reason"] == "offer_pending"
        r = c.post(f"/v1/offers/{offer['offer_id']}/accept", json={"visitor_id": "A", "session_id": "s", "ts": T0 - 1})
        assert r.status_code == 400 and r.json()["field"] == "ts"
        r = c.post(f"/v1/offers/{offer['offer_id']}/accept", json={"visitor_id": "A", "session_id": "s", "ts": T0 + 6})
        assert r.status_code == 200
