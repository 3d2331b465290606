"""`policy.no_answer_cooldown_s` (issue 17): after an offer expires unanswered, no offer to that visitor for a
while, in the runtime, the backtest (both engines, equal to the runtime) and the tuner.

On the demo site an offer expired at 60 s and a new one appeared 0.1 s later on the same page view.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_backtest import assert_same_decisions, run_runtime

from helpers import T0, ev, holdout_ids, make_runtime, not_holdout, rule, spec_dict
from pcrules import SpecError, load_spec
from pcrules.analysis.backtest import backtest
from pcrules.analysis.tuner import TriggerModel
from pcrules.decision import Action, OfferStatus, Reason
from pcrules.decision_log import MemoryDecisionLog

# ----------------------------------------------------------------------------------------------- the spec


def test_off_by_default_and_refused_when_negative_or_not_a_number() -> None:
    assert load_spec(spec_dict()).policy.no_answer_cooldown_s == 0.0
    assert load_spec(spec_dict(no_answer_cooldown_s=90)).policy.no_answer_cooldown_s == 90.0
    for bad in (-5, "abc", None):
        with pytest.raises(SpecError) as err:
            load_spec(spec_dict(no_answer_cooldown_s=bad))
        assert "policy.no_answer_cooldown_s" in str(err.value)


def test_the_shipped_rulesets_set_it() -> None:
    from pcrules.resources import default_rules, demo_rules

    assert load_spec(default_rules()).policy.no_answer_cooldown_s > 0
    assert load_spec(demo_rules()).policy.no_answer_cooldown_s > 0


# ----------------------------------------------------------------------------------------------- the runtime


def test_an_expired_offer_is_not_followed_at_once_on_the_same_page_view() -> None:
    log = MemoryDecisionLog()
    rt = make_runtime(max_offers_per_session=3, no_answer_cooldown_s=300, log=log)
    first = rt.observe(ev(seconds=301, ts=T0))
    assert first.action == Action.OFFER and first.expires_at == T0 + 60
    # what the demo site did: the pop-up's timer ran out and the next re-check came 0.1 s later
    again = rt.observe(ev(seconds=361.1, ts=T0 + 60.1))
    assert (again.action, again.reason, again.rule) == (Action.NONE, Reason.COOLDOWN, "bill")
    assert [(o.offer_id, o.status, o.ts) for o in log.outcomes] == [(first.offer_id, OfferStatus.EXPIRED, T0 + 60)]
    assert rt.observe(ev(seconds=659.9, ts=T0 + 359.9)).reason == Reason.COOLDOWN  # expiry + 300 s, less a bit
    assert rt.observe(ev(seconds=660, ts=T0 + 360)).action == Action.OFFER  # exactly expiry + 300 s: over


def test_it_holds_for_the_visitor_across_sessions_and_not_for_others() -> None:
    rt = make_runtime(no_answer_cooldown_s=600)
    rt.observe(ev(seconds=301, ts=T0))
    assert rt.observe(ev(session="s2", seconds=301, ts=T0 + 100)).reason == Reason.COOLDOWN
    assert rt.observe(ev(visitor="v2", session="s9", seconds=301, ts=T0 + 100)).action == Action.OFFER
    assert rt.observe(ev(session="s3", seconds=301, ts=T0 + 660)).action == Action.OFFER


def test_the_offer_expires_by_event_time_even_if_its_session_is_never_seen_again() -> None:
    rt = make_runtime(no_answer_cooldown_s=600)
    rt.observe(ev(seconds=301, ts=T0))
    rt.observe(ev(visitor="v2", session="x", page="Home", ts=T0 + 70))  # someone else's event moves time on
    assert rt.observe(ev(session="s2", seconds=301, ts=T0 + 80)).reason == Reason.COOLDOWN


def test_an_explicit_expiry_starts_it_when_it_is_reported() -> None:
    rt = make_runtime(max_offers_per_session=3, no_answer_cooldown_s=100)
    d = rt.observe(ev(seconds=301, ts=T0))
    rt.expire(d.offer_id, ts=T0 + 20)  # the pop-up closed early
    assert rt.observe(ev(seconds=400, ts=T0 + 119)).reason == Reason.COOLDOWN
    assert rt.observe(ev(seconds=401, ts=T0 + 120)).action == Action.OFFER


@pytest.mark.parametrize("answer, reason_after", [("accept", Reason.IN_CHAT), ("decline", Reason.COOLDOWN)])
def test_an_answered_offer_sets_no_no_answer_cooldown(answer: str, reason_after: Reason) -> None:
    rt = make_runtime(max_offers_per_session=3, no_answer_cooldown_s=7200, decline_cooldown_s=100)
    d = rt.observe(ev(seconds=301, ts=T0))
    getattr(rt, answer)(d.offer_id, ts=T0 + 5)
    assert rt.observe(ev(seconds=310, ts=T0 + 50)).reason == reason_after
    # another session after the decline's 100 s: only a no-answer cooldown could block it, and there is none
    assert rt.observe(ev(session="s2", seconds=301, ts=T0 + 200)).action == Action.OFFER


def test_a_late_answer_is_an_expiry_and_starts_it() -> None:
    rt = make_runtime(max_offers_per_session=3, no_answer_cooldown_s=100)
    d = rt.observe(ev(seconds=301, ts=T0))
    with pytest.raises(Exception, match="expired"):
        rt.accept(d.offer_id, ts=T0 + 61)
    assert rt.observe(ev(seconds=400, ts=T0 + 159)).reason == Reason.COOLDOWN
    assert rt.observe(ev(seconds=401, ts=T0 + 160)).action == Action.OFFER


def test_a_holdout_visitor_is_blocked_from_the_would_be_offer_on() -> None:
    """A would-be offer is never answered: its cooldown is certain when it is made, and set then (the session
    may never be seen again), so the visitor's other sessions are blocked from that moment."""
    visitor = holdout_ids(0.5)[0]
    rt = make_runtime(holdout=0.5, no_answer_cooldown_s=300)
    held = rt.observe(ev(visitor=visitor, seconds=301, ts=T0))
    assert held.reason == Reason.HOLDOUT
    assert rt.observe(ev(visitor=visitor, session="s2", seconds=301, ts=T0 + 10)).reason == Reason.COOLDOWN
    assert rt.observe(ev(visitor=visitor, session="s3", seconds=301, ts=T0 + 359)).reason == Reason.COOLDOWN
    assert rt.observe(ev(visitor=visitor, session="s4", seconds=301, ts=T0 + 360)).reason == Reason.HOLDOUT
    treated, t = not_holdout(0.5)[0], T0 + 400
    assert rt.observe(ev(visitor=treated, seconds=301, ts=t)).action == Action.OFFER
    # a shown offer's other sessions are blocked from its expiry only
    assert rt.observe(ev(visitor=treated, session="s2", seconds=301, ts=t + 10)).action == Action.OFFER
    assert rt.observe(ev(visitor=treated, session="s3", seconds=301, ts=t + 60)).reason == Reason.COOLDOWN


# ----------------------------------------------------------------------------------- backtest and tuner


def _spec(**policy: Any) -> Any:
    rules = [rule("bill", seconds=60), rule("plans", page="Plans", seconds=20, queue="Billing", priority=5),
             rule("home", page="Home", seconds=45, priority=1)]
    return load_spec(spec_dict(rules, **{"max_offers_per_session": 3, "offer_timeout_s": 45, "holdout": 0.2,
                                         "decline_cooldown_s": 3600, "session_idle_ttl_s": 600, **policy}))


@pytest.fixture(scope="module")
def events(worlds: Any) -> Any:
    return worlds(visitors=1500, seed=17, days=2).events


@pytest.mark.parametrize("no_answer", [90.0, 4 * 3600.0], ids=["within-sessions", "into-later-sessions"])
@pytest.mark.parametrize("explore", [None, {"share": 0.3}], ids=["rules", "exploring"])
def test_the_backtest_equals_the_runtime_event_by_event(events: Any, no_answer: float, explore: Any) -> None:
    spec = _spec(no_answer_cooldown_s=no_answer, **({"explore": explore} if explore else {}))
    log, summary = run_runtime(spec, events)
    for engine in ("fast", "policy"):
        result = backtest(spec, events, engine=engine)
        assert_same_decisions(log, result)
        assert result.metrics["offers"] == summary.offers
    # the cooldown mattered: more rows blocked by it, fewer offers, than the same ruleset without it
    without = backtest(_spec(no_answer_cooldown_s=0.0, **({"explore": explore} if explore else {})), events)
    assert result.metrics["reasons"]["cooldown"] > without.metrics["reasons"]["cooldown"]
    assert result.metrics["offers"] < without.metrics["offers"]


def test_the_tuner_counts_equal_the_backtest_with_it(events: Any) -> None:
    spec = _spec(no_answer_cooldown_s=4 * 3600.0)
    model = TriggerModel(spec, events, None)
    for wait in (0.0, 30.0, 120.0):
        settings = model.initial
        for name in model.rule_names:
            settings = settings.with_rule(name, wait_s=wait)
        tuned = model.evaluate(settings).metrics
        reference = backtest(model.spec_for(settings), events).metrics
        assert tuned["offers"] == reference["offers"]
        assert tuned["reasons"] == reference["reasons"]
        assert tuned["reasons"]["cooldown"] > 0
