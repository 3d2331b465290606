"""Every reason code and every policy, one by one, through the runtime (durable matcher + pure core).

Times are explicit: T0 is Monday 2026-01-05 12:00 UTC (13:00 in Amsterdam).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys

import pytest

import pcrules
from helpers import AMS_HOURS, T0, FixedScorer, RaisingScorer, ev, holdout_ids, make_runtime, not_holdout, rule, utc
from pcrules import Action, Reason, SQLiteDecisionLog
from pcrules.policy import in_holdout, next_crossing
from pcrules.spec import load_spec

# the directory holding the pcrules under test, for subprocesses
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pcrules.__file__)))


def reason_of(decision) -> str:
    return f"{decision.action}/{decision.reason}"


# ----------------------------------------------------------------------------- offer, no_rule


def test_offer_carries_everything_the_browser_needs():
    rt = make_runtime([rule(metadata={"Page Name": "{page}", "Time spent on page": "{minutes} mins"})])
    d = rt.observe(ev(seconds=301, ts=T0))
    assert d.action == Action.OFFER and d.action == "offer" and d.reason is None
    assert d.offer_id == "o1" and d.queue == "Billing" and d.rule == "bill" and d.default_ui is True
    assert d.metadata == {"Page Name": "Bill Payment", "Time spent on page": "5 mins"}
    assert d.expires_at == T0 + 60
    assert d.js_call == ('pega.chat.proactiveChat.offer("Billing", '
                         '{"Page Name": "Bill Payment", "Time spent on page": "5 mins"}, true);')


def test_no_rule_for_a_page_no_rule_mentions():
    rt = make_runtime()
    d = rt.observe(ev(page="Home", seconds=1000))
    assert (d.action, d.reason, d.rule) == (Action.NONE, Reason.NO_RULE, None)


def test_no_rule_when_a_non_time_condition_fails():
    rt = make_runtime([rule(pages_viewed={"gte": 3})])
    assert rt.observe(ev(seconds=1000, pages_viewed=2)).reason == Reason.NO_RULE
    assert rt.observe(ev(session="s2", seconds=1000)).reason == Reason.NO_RULE  # missing field: false
    assert rt.observe(ev(session="s3", seconds=1000, pages_viewed=3)).action == Action.OFFER


def test_no_rule_wins_over_the_session_state():
    rt = make_runtime()
    assert rt.observe(ev(seconds=301)).action == Action.OFFER
    # the session has a pending offer, but nothing could ever match on Home
    assert rt.observe(ev(page="Home", seconds=301, ts=T0 + 1)).reason == Reason.NO_RULE


# ----------------------------------------------------------------------------- session limits


def test_offer_pending_until_answered_or_expired():
    rt = make_runtime(max_offers_per_session=3)
    first = rt.observe(ev(seconds=301, ts=T0))
    assert first.action == Action.OFFER
    pending = rt.observe(ev(seconds=310, ts=T0 + 10))
    assert (pending.action, pending.reason, pending.rule) == (Action.NONE, Reason.OFFER_PENDING, "bill")
    # the offer expires at T0 + 60: one second before it is still pending, at it a new offer is made
    assert rt.observe(ev(seconds=359, ts=T0 + 59)).reason == Reason.OFFER_PENDING
    assert rt.observe(ev(seconds=360, ts=T0 + 60)).action == Action.OFFER


@pytest.mark.parametrize("max_offers", [1, 2])
def test_max_offers_per_session(max_offers):
    rt = make_runtime(max_offers_per_session=max_offers)
    offers = []
    ts = T0
    for i in range(max_offers):
        d = rt.observe(ev(seconds=301, ts=ts))
        assert d.action == Action.OFFER, i
        offers.append(d.offer_id)
        rt.expire(d.offer_id, ts=ts + 1)  # answered (expired): the session is free again
        ts += 2
    d = rt.observe(ev(seconds=301, ts=ts))
    assert (d.action, d.reason) == (Action.NONE, Reason.MAX_OFFERS)
    assert len(set(offers)) == max_offers
    # another session of the same visitor is not limited
    assert rt.observe(ev(session="s2", seconds=301, ts=ts)).action == Action.OFFER


def test_max_offers_zero_never_offers():
    rt = make_runtime(max_offers_per_session=0)
    assert rt.observe(ev(seconds=301)).reason == Reason.MAX_OFFERS


# ----------------------------------------------------------------------------- cooldown, in_chat


def test_cooldown_after_decline_ends_exactly_after_decline_cooldown_s():
    rt = make_runtime(decline_cooldown_s=600, max_offers_per_session=5)
    d = rt.observe(ev(seconds=301, ts=T0))
    rt.decline(d.offer_id, ts=T0 + 5)  # cooldown until T0 + 605
    same = rt.observe(ev(seconds=310, ts=T0 + 10))
    assert (same.action, same.reason) == (Action.NONE, Reason.COOLDOWN)
    # per visitor, across sessions
    other_session = rt.observe(ev(session="s2", seconds=301, ts=T0 + 604))
    assert other_session.reason == Reason.COOLDOWN
    # other visitors are not affected
    assert rt.observe(ev(visitor="v2", session="s9", seconds=301, ts=T0 + 604)).action == Action.OFFER
    # exactly decline time + 600: the cooldown is over
    after = rt.observe(ev(session="s3", seconds=301, ts=T0 + 605))
    assert after.action == Action.OFFER


def test_expiry_does_not_start_a_cooldown():
    rt = make_runtime(decline_cooldown_s=600)
    d = rt.observe(ev(seconds=301, ts=T0))
    rt.expire(d.offer_id, ts=T0 + 60)
    assert rt.observe(ev(session="s2", seconds=301, ts=T0 + 61)).action == Action.OFFER


def test_in_chat_after_accept():
    rt = make_runtime(max_offers_per_session=5)
    d = rt.observe(ev(seconds=301, ts=T0))
    rt.accept(d.offer_id, ts=T0 + 3)
    later = rt.observe(ev(seconds=400, ts=T0 + 100))
    assert (later.action, later.reason, later.rule) == (Action.NONE, Reason.IN_CHAT, "bill")
    # accepting does not block the visitor's other sessions
    assert rt.observe(ev(session="s2", seconds=301, ts=T0 + 100)).action == Action.OFFER


# ----------------------------------------------------------------------------- queue_busy


def test_queue_busy_when_no_agent_is_available_and_recovers():
    rt = make_runtime()
    rt.update_queue("Billing", agents_available=0, estimated_wait_s=10, ts=T0)
    d = rt.observe(ev(seconds=301, ts=T0))
    assert (d.action, d.reason, d.queue) == (Action.NONE, Reason.QUEUE_BUSY, "Billing")
    rt.update_queue("Billing", agents_available=2, estimated_wait_s=10, ts=T0 + 1)
    assert rt.observe(ev(seconds=302, ts=T0 + 2)).action == Action.OFFER


def test_queue_busy_when_the_wait_is_longer_than_max_wait_s():
    rt = make_runtime()  # Billing max_wait_s 180
    rt.update_queue("Billing", agents_available=3, estimated_wait_s=180.5)
    assert rt.observe(ev(seconds=301)).reason == Reason.QUEUE_BUSY
    rt.update_queue("Billing", agents_available=3, estimated_wait_s=180)  # exactly the limit is fine
    assert rt.observe(ev(seconds=302, ts=T0 + 1)).action == Action.OFFER


def test_queue_without_a_report_counts_as_free():
    rt = make_runtime()
    assert rt.observe(ev(seconds=301)).action == Action.OFFER


# ----------------------------------------------------------------------------- closed (hours, time zones, DST)


def hours_runtime():
    return make_runtime(queues={"Billing": {"hours": AMS_HOURS}})


@pytest.mark.parametrize("when, expected", [
    ("2026-01-05T07:30:00", "offer"),   # Mon 08:30 in Amsterdam (CET): open; 07:30 in UTC would be closed
    ("2026-01-05T19:30:00", "closed"),  # Mon 20:30 in Amsterdam: closed; 19:30 in UTC would be open
    ("2026-01-05T06:59:59", "closed"),  # 07:59:59 CET
    ("2026-01-05T07:00:00", "offer"),   # 08:00 CET exactly: opening time is inside
    ("2026-01-05T18:59:59", "offer"),   # 19:59:59 CET
    ("2026-01-05T19:00:00", "closed"),  # 20:00 CET exactly: closing time is outside
    ("2026-01-10T12:00:00", "closed"),  # Saturday
    ("2026-01-09T22:30:00", "closed"),  # Friday 23:30 CET
    ("2026-01-04T23:30:00", "closed"),  # Sunday 23:30 UTC is Monday 00:30 CET: open day, closed hour
    # DST: the last Sunday of March 2026 is the 29th. 06:30 UTC is 07:30 CET before, 08:30 CEST after.
    ("2026-03-27T06:30:00", "closed"),  # Friday before the switch
    ("2026-03-30T06:30:00", "offer"),   # Monday after the switch
    ("2026-07-06T18:30:00", "closed"),  # summer: 20:30 CEST
    ("2026-07-06T17:59:00", "offer"),   # 19:59 CEST
])
def test_closed_outside_hours_in_the_queue_time_zone(when, expected):
    rt = hours_runtime()
    d = rt.observe(ev(seconds=301, ts=utc(when)))
    if expected == "offer":
        assert d.action == Action.OFFER, reason_of(d)
    else:
        assert (d.action, d.reason, d.queue) == (Action.NONE, Reason.CLOSED, "Billing")


def test_hours_accept_iso_timestamps_with_offsets():
    rt = hours_runtime()
    # 08:30 in Amsterdam written with its own offset: the same instant as 07:30Z
    assert rt.observe(ev(seconds=301, ts="2026-01-05T08:30:00+01:00")).action == Action.OFFER
    assert rt.observe(ev(session="s2", seconds=301, ts="2026-01-05T20:30:00+01:00")).reason == Reason.CLOSED


# ----------------------------------------------------------------------------- holdout


def test_holdout_is_stable_across_processes_and_hash_seeds():
    visitors = [f"visitor-{i}" for i in range(200)]
    here = [in_holdout(v, 0.3) for v in visitors]
    code = ("import json, sys; from pcrules.policy import in_holdout; "
            "print(json.dumps([in_holdout(v, 0.3) for v in json.loads(sys.argv[1])]))")
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": ROOT}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(visitors)], env=env, check=True, cwd=ROOT,
                             capture_output=True, text=True).stdout
        assert json.loads(out) == here
    assert 20 < sum(here) < 100  # and it is not all-or-nothing


def test_holdout_share_is_near_the_configured_value():
    n = 10_000
    for share in (0.1, 0.25):
        count = sum(in_holdout(f"v{i}", share) for i in range(n))
        # binomial sd at 10k is <= 0.0044: 4 sd
        assert abs(count / n - share) < 0.018, (share, count)
    assert not any(in_holdout(f"v{i}", 0.0) for i in range(1000))


def test_holdout_visitor_gets_none_holdout_logged_and_occupying_the_session(tmp_path):
    share = 0.3
    [hv] = holdout_ids(share)
    [tv] = not_holdout(share)
    log = SQLiteDecisionLog(tmp_path / "log.sqlite")
    rt = make_runtime([rule(metadata={"Page Name": "{page}"})], holdout=share, log=log, max_offers_per_session=2)
    d = rt.observe(ev(visitor=hv, seconds=301, ts=T0))
    assert (d.action, d.reason, d.offer_id) == (Action.NONE, Reason.HOLDOUT, None)
    assert d.holdout and d.rule == "bill" and d.queue == "Billing" and d.expires_at == T0 + 60
    assert d.js_call is None
    # the treatment visitor in the same situation gets the offer
    assert rt.observe(ev(visitor=tv, seconds=301, ts=T0)).action == Action.OFFER
    # the would-be offer occupies the session like a real one: pending until it expires ...
    assert rt.observe(ev(visitor=hv, seconds=320, ts=T0 + 20)).reason == Reason.OFFER_PENDING
    # ... then it counts against max_offers_per_session (2): a second would-be offer, then max_offers
    assert rt.observe(ev(visitor=hv, seconds=361, ts=T0 + 61)).reason == Reason.HOLDOUT
    assert rt.observe(ev(visitor=hv, seconds=422, ts=T0 + 122)).reason == Reason.MAX_OFFERS
    log.flush()
    with sqlite3.connect(log.path) as db:
        rows = db.execute("SELECT action, reason, holdout, rule, queue, offer_id, expires_at, metadata FROM decisions"
                          " WHERE visitor_id = ? ORDER BY id", (hv,)).fetchall()
        outcomes = db.execute("SELECT count(*) FROM outcomes WHERE visitor_id = ?", (hv,)).fetchone()[0]
    assert rows[0] == ("none", "holdout", 1, "bill", "Billing", None, T0 + 60,
                       json.dumps({"Page Name": "Bill Payment"}))
    assert [r[2] for r in rows] == [1, 0, 1, 0]
    assert outcomes == 0  # would-be offers have no outcome


# ----------------------------------------------------------------------------- score


def scored_rule(threshold=0.35, **kw):
    return rule(score={"gte": threshold}, **kw)


def test_score_below():
    scorer = FixedScorer(0.2)
    rt = make_runtime([scored_rule()], scorer=scorer)
    d = rt.observe(ev(seconds=301))
    assert (d.action, d.reason, d.rule, d.score) == (Action.NONE, Reason.SCORE_BELOW, "bill", 0.2)
    scorer.value = 0.35
    d = rt.observe(ev(seconds=302, ts=T0 + 1))
    assert d.action == Action.OFFER and d.score == 0.35


def test_score_below_waits_first_when_time_could_still_help():
    rt = make_runtime([scored_rule()], scorer=FixedScorer(0.2))
    d = rt.observe(ev(seconds=100))
    assert (d.action, d.recheck_after) == (Action.WAIT, 200)


@pytest.mark.parametrize("scorer", [None, FixedScorer(None)], ids=["no-scorer", "scorer-returns-None"])
def test_missing_score_means_rules_on_score_never_match(scorer):
    rt = make_runtime([scored_rule()], scorer=scorer)
    d = rt.observe(ev(seconds=301))
    assert (d.action, d.reason, d.score) == (Action.NONE, Reason.NO_RULE, None)
    # and it is no reason to wait either: the rule can never fire without a score
    d = rt.observe(ev(session="s2", seconds=100))
    assert (d.action, d.reason) == (Action.NONE, Reason.NO_RULE)


def test_missing_score_leaves_rules_without_score_alone():
    rt = make_runtime([scored_rule(name="scored", priority=20), rule(name="plain", seconds=400, priority=10)],
                      scorer=FixedScorer(None))
    d = rt.observe(ev(seconds=301))
    assert (d.action, d.rule, d.recheck_after) == (Action.WAIT, "plain", 99)
    assert rt.observe(ev(seconds=400, ts=T0 + 99)).rule == "plain"


@pytest.mark.parametrize("bad", [RaisingScorer(), FixedScorer(math.nan), FixedScorer(1.5), FixedScorer(-0.1),
                                 FixedScorer("high"), FixedScorer("0.5"), FixedScorer([0.5])],
                         ids=["raises", "nan", "above-1", "negative", "junk-string", "numeric-string", "list"])
def test_broken_scorer_is_treated_as_missing_and_the_process_keeps_serving(bad):
    rt = make_runtime([scored_rule(name="scored", priority=20), rule(name="plain", page="Checkout", seconds=10)],
                      scorer=bad)
    d = rt.observe(ev(seconds=301))
    assert (d.action, d.reason, d.score) == (Action.NONE, Reason.NO_RULE, None)
    assert rt.scorer_errors == 1
    # rules without a score still work
    assert rt.observe(ev(session="s2", page="Checkout", seconds=20)).action == Action.OFFER
    assert rt.scorer_errors == 2


def test_scorer_is_not_called_when_no_rule_uses_a_score():
    scorer = FixedScorer(0.9)
    rt = make_runtime([rule()], scorer=scorer)
    assert rt.observe(ev(seconds=301)).score is None
    assert scorer.calls == 0


# ----------------------------------------------------------------------------- priority


def test_higher_priority_wins_whatever_the_file_order():
    rt = make_runtime([rule("low", priority=1, seconds=100), rule("high", priority=50, seconds=200)])
    assert rt.observe(ev(seconds=301)).rule == "high"
    # where only the weaker rule matches, it offers
    assert rt.observe(ev(session="s2", seconds=150)).rule == "low"


def test_priority_tie_goes_by_file_order():
    rt = make_runtime([rule("first", priority=5, seconds=100), rule("second", priority=5, seconds=100)])
    assert rt.observe(ev(seconds=301)).rule == "first"
    rt2 = make_runtime([rule("second", priority=5, seconds=100), rule("first", priority=5, seconds=100)])
    assert rt2.observe(ev(seconds=301)).rule == "second"


def test_busy_strongest_queue_falls_through_to_the_next_matching_rule():
    queues = {"Billing": {"max_wait_s": 180}, "Support": {}}
    rt = make_runtime([rule("strong", priority=20, queue="Billing"), rule("weak", priority=10, queue="Support")],
                      queues=queues)
    rt.update_queue("Billing", agents_available=0)
    d = rt.observe(ev(seconds=301))
    assert (d.action, d.rule, d.queue) == (Action.OFFER, "weak", "Support")
    # when every matching queue is blocked, the strongest rule's reason is reported
    rt.update_queue("Support", agents_available=0)
    d = rt.observe(ev(session="s2", seconds=301))
    assert (d.action, d.reason, d.rule, d.queue) == (Action.NONE, Reason.QUEUE_BUSY, "strong", "Billing")


def test_closed_strongest_queue_falls_through_and_reports_closed_first():
    queues = {"Billing": {"hours": AMS_HOURS}, "Support": {}}
    rt = make_runtime([rule("strong", priority=20, queue="Billing"), rule("weak", priority=10, queue="Support")],
                      queues=queues)
    saturday = utc("2026-01-10T12:00:00")
    assert rt.observe(ev(seconds=301, ts=saturday)).rule == "weak"
    rt.update_queue("Support", agents_available=0)
    d = rt.observe(ev(session="s2", seconds=301, ts=saturday))
    assert (d.reason, d.rule) == (Reason.CLOSED, "strong")


# ----------------------------------------------------------------------------- wait / recheck_after


def test_wait_until_the_threshold():
    rt = make_runtime([rule(seconds=300)])
    d = rt.observe(ev(seconds=120))
    assert (d.action, d.reason, d.rule, d.recheck_after) == (Action.WAIT, None, "bill", 180)
    assert d.offer_id is None and d.js_call is None


def test_wait_picks_the_earliest_of_two_rules_on_the_page():
    rt = make_runtime([rule("slow", seconds=300, priority=20), rule("quick", seconds=200, priority=1)])
    d = rt.observe(ev(seconds=150))
    assert (d.rule, d.recheck_after) == ("quick", 50)
    d = rt.observe(ev(session="s2", seconds=250))  # quick matches now: it offers
    assert (d.action, d.rule) == (Action.OFFER, "quick")


def test_wait_gt_is_just_after_the_threshold_and_gte_at_it():
    gte = make_runtime([rule(seconds=None, seconds_on_page={"gte": 300})]).observe(ev(seconds=200))
    gt = make_runtime([rule(seconds=None, seconds_on_page={"gt": 300})]).observe(ev(seconds=200))
    assert gte.recheck_after == 100
    assert 100 < gt.recheck_after <= 100.01
    # and the recheck moment really is when the rule fires
    rt = make_runtime([rule(seconds=None, seconds_on_page={"gt": 300})])
    assert rt.observe(ev(seconds=300)).action == Action.WAIT
    assert rt.observe(ev(seconds=300 + gt.recheck_after - 100)).action == Action.OFFER


def test_wait_on_minutes_on_page_is_in_seconds():
    rt = make_runtime([rule(seconds=None, minutes_on_page={"gte": 5})])
    d = rt.observe(ev(seconds=120))
    assert (d.action, d.recheck_after) == (Action.WAIT, 180)
    assert rt.observe(ev(seconds=300)).action == Action.OFFER


def test_wait_needs_every_time_condition_of_a_rule():
    # 300 s and 6 minutes: nothing can fire before 360 s
    rt = make_runtime([rule(seconds=300, minutes_on_page={"gte": 6})])
    assert rt.observe(ev(seconds=100)).recheck_after == 260
    assert rt.observe(ev(seconds=330)).recheck_after == 30


def test_no_wait_when_no_time_can_help():
    rt = make_runtime([rule(seconds=None, seconds_on_page={"gte": 100, "lt": 200})])
    assert rt.observe(ev(seconds=50)).recheck_after == 50
    d = rt.observe(ev(seconds=250))  # past the window: waiting cannot help
    assert (d.action, d.reason) == (Action.NONE, Reason.NO_RULE)


def test_wait_is_judged_after_session_limits():
    rt = make_runtime([rule("quick", seconds=10, priority=1), rule("slow", seconds=500, priority=9)])
    assert rt.observe(ev(seconds=20)).action == Action.OFFER
    assert rt.observe(ev(seconds=30, ts=T0 + 10)).reason == Reason.OFFER_PENDING


def test_next_crossing_directly():
    spec = load_spec({"name": "x", "queues": {"Q": {}}, "rules": [
        {"name": "r", "when": {"any_of": [{"seconds_on_page": {"gte": 600}}, {"minutes_on_page": {"gte": 2}}]},
         "offer": {"queue": "Q"}}]})
    [r] = spec.rules
    assert next_crossing(r, 0) == 120  # the earlier branch of the any_of
    assert next_crossing(r, 119.5) == 0.5
    assert next_crossing(r, 600) is None


def test_duration_says_time_on_page_as_a_person_would() -> None:
    """Issue 17 item 8: "Time spent on page: 0 mins" for a wait under a minute; {duration} says "45 s"."""
    from pcrules.core.policy import duration

    assert [duration(s) for s in (0, 0.4, 45, 59.9, 60, 179, 3599, 3600, 3900, 7260)] == [
        "0 s", "0 s", "45 s", "59 s", "1 min", "2 min", "59 min", "1 h", "1 h 5 min", "2 h 1 min"]
    rt = make_runtime([rule(seconds=45, metadata={"Time spent on page": "{duration}", "Mins": "{minutes}"})])
    d = rt.observe(ev(seconds_on_page=45))
    assert d.metadata == {"Time spent on page": "45 s", "Mins": "0"}
