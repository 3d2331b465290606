"""Random observe / accept / decline / expire / update_queue sequences against a reference model.

After every step: the runtime's decision equals the model's (action, reason, rule, recheck), and the
invariants hold: at most max_offers_per_session offers per session; no offer while one is pending,
during a cooldown, in chat, outside hours or for a busy queue; every offer answered at most once;
every decision and outcome in the SQLite log, in order.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from helpers import holdout_ids, not_holdout, utc
from pcrules import OfferClosed, OfferNotFound, Runtime, SQLiteDecisionLog, load_spec
from pcrules.policy import in_holdout

MAX_OFFERS = 2
COOLDOWN = 600.0
TIMEOUT = 60.0
HOLDOUT = 0.3
BILLING_MAX_WAIT = 180.0
AMS = ZoneInfo("Europe/Amsterdam")

SPEC = {
    "name": "lifecycle",
    "policy": {"max_offers_per_session": MAX_OFFERS, "decline_cooldown_s": COOLDOWN, "offer_timeout_s": TIMEOUT,
               "holdout": HOLDOUT, "session_idle_ttl_s": 1e7},
    "queues": {
        "Billing": {"max_wait_s": BILLING_MAX_WAIT,
                    "hours": {"tz": "Europe/Amsterdam", "days": ["mon", "tue", "wed", "thu", "fri"],
                              "start": "08:00", "end": "20:00"}},
        "Support": {},
    },
    "rules": [  # listed weakest first on purpose: priority, not file order, decides
        {"name": "fallback", "priority": 1, "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 120}},
         "offer": {"queue": "Support"}},
        {"name": "help", "priority": 5, "when": {"page": "Help", "seconds_on_page": {"gte": 30}},
         "offer": {"queue": "Support"}},
        {"name": "bill", "priority": 10, "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 60}},
         "offer": {"queue": "Billing"}},
    ],
}
# The model's view of the rules, strongest first: (name, page, threshold, queue)
RULES = [("bill", "Bill Payment", 60, "Billing"), ("help", "Help", 30, "Support"),
         ("fallback", "Bill Payment", 120, "Support")]

# Few visitors and sessions, so that sequences revisit them: two in the treatment group, one in the holdout.
VISITORS = not_holdout(HOLDOUT, n=2) + holdout_ids(HOLDOUT, n=1)
# Friday 2026-01-09 19:59 in Amsterdam: the Billing hours end a minute in; a 3-day tick reaches Monday 19:59.
START = utc("2026-01-09T18:59:00")


@dataclass
class Offer:
    offer_id: str | None  # None: a holdout visitor's would-be offer
    visitor: str
    session: str
    queue: str
    expires_at: float
    status: str = "offered"


@dataclass
class Session:
    offers: int = 0
    pending: Offer | None = None
    in_chat: bool = False


@dataclass
class Model:
    sessions: dict = field(default_factory=dict)
    cooldown_until: dict = field(default_factory=dict)
    queues: dict = field(default_factory=dict)  # name -> (agents, wait)
    offers: dict = field(default_factory=dict)  # offer_id -> Offer
    decisions: list = field(default_factory=list)  # (action, reason, offer_id)
    outcomes: dict = field(default_factory=dict)  # offer_id -> status

    def billing_open(self, ts: float) -> bool:
        local = datetime.fromtimestamp(ts, AMS)
        return local.weekday() < 5 and 8 * 60 <= local.hour * 60 + local.minute < 20 * 60

    def blocked(self, queue: str, ts: float) -> str | None:
        if queue == "Billing" and not self.billing_open(ts):
            return "closed"
        agents, wait = self.queues.get(queue, (None, None))
        if agents is not None and agents <= 0:
            return "queue_busy"
        if queue == "Billing" and wait is not None and wait > BILLING_MAX_WAIT:
            return "queue_busy"
        return None

    def expire_due(self, now: float) -> None:
        """What any event at `now` does first: offers whose time ran out are closed as expired."""
        for offer in self.offers.values():
            if offer.status == "offered" and offer.expires_at <= now:
                self.close(offer, "expired")

    def close(self, offer: Offer, status: str) -> None:
        offer.status = status
        self.outcomes[offer.offer_id] = status
        s = self.sessions[(offer.visitor, offer.session)]
        if s.pending is offer:
            s.pending = None

    def observe(self, visitor: str, session: str, page: str, seconds: float, ts: float) -> tuple:
        """The expected (action, reason, rule, recheck_after); updates the model for an offer."""
        self.expire_due(ts)
        s = self.sessions.setdefault((visitor, session), Session())
        if s.pending is not None and s.pending.expires_at <= ts:  # a holdout's would-be offer
            s.pending = None
        full = [r for r in RULES if r[1] == page and seconds >= r[2]]
        later = [r for r in RULES if r[1] == page and seconds < r[2]]
        if not full and not later:
            return ("none", "no_rule", None, None)
        strongest = (full or later)[0]
        if s.in_chat:
            return ("none", "in_chat", strongest[0], None)
        if s.pending is not None:
            return ("none", "offer_pending", strongest[0], None)
        if s.offers >= MAX_OFFERS:
            return ("none", "max_offers", strongest[0], None)
        if ts < self.cooldown_until.get(visitor, float("-inf")):
            return ("none", "cooldown", strongest[0], None)
        if full:
            for name, _, _, queue in full:
                if self.blocked(queue, ts) is None:
                    s.offers += 1
                    holdout = in_holdout(visitor, HOLDOUT)
                    s.pending = Offer(None, visitor, session, queue, ts + TIMEOUT)
                    return ("none", "holdout", name, None) if holdout else ("offer", None, name, None)
            return ("none", self.blocked(full[0][3], ts), full[0][0], None)
        name, _, threshold, _ = min(later, key=lambda r: r[2] - seconds)
        return ("wait", None, name, threshold - seconds)


class Lifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="pcrules-lifecycle-"))
        self.log = SQLiteDecisionLog(self.dir / "log.sqlite")
        self.rt = Runtime(load_spec(SPEC), log=self.log, clock=lambda: START)
        self.model = Model()
        self.now = START
        self.offered: list[str] = []

    def teardown(self):
        self.rt.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(dt=st.sampled_from([0, 1, 10, 59, 60, 61, 300, 601, 3 * 86400 - 3600]))
    def tick(self, dt):
        self.now += dt

    @rule(visitor=st.sampled_from(VISITORS), session=st.sampled_from(["a", "b"]),
          page=st.sampled_from(["Bill Payment", "Help", "Home"]),
          seconds=st.sampled_from([0, 29, 30, 59, 60, 61.5, 119, 120, 500]))
    def observe(self, visitor, session, page, seconds):
        d = self.rt.observe({"visitor_id": visitor, "session_id": session, "page": page,
                             "seconds_on_page": seconds, "ts": self.now})
        expected = self.model.observe(visitor, session, page, seconds, self.now)
        got = (str(d.action), d.reason and str(d.reason), d.rule, d.recheck_after)
        assert got == expected, (got, expected, visitor, session, page, seconds, self.now)
        event(f"decision {got[0]}/{got[1]}")  # shown by --hypothesis-show-statistics
        s = self.model.sessions[(visitor, session)]
        if d.action == "offer":
            assert d.offer_id and d.offer_id not in self.model.offers
            assert d.expires_at == self.now + TIMEOUT
            s.pending.offer_id = d.offer_id
            self.model.offers[d.offer_id] = s.pending
            self.offered.append(d.offer_id)
            # the invariants, stated directly (the model above already implies them)
            assert self.model.blocked(d.queue, self.now) is None
            assert self.now >= self.model.cooldown_until.get(visitor, float("-inf"))
            assert not s.in_chat and s.offers <= MAX_OFFERS
        self.model.decisions.append((str(d.action), d.reason and str(d.reason), d.offer_id))

    def _answer(self, verb, index):
        offer_id = self.offered[-1 - index % len(self.offered)]  # mostly the latest offers: still open
        offer = self.model.offers[offer_id]
        if offer.status != "offered":
            expected = OfferClosed
        elif self.now >= offer.expires_at and verb != "expire":  # too late by event time: closed as expired
            self.model.close(offer, "expired")
            expected = OfferClosed
        else:
            expected = None
        try:
            out = getattr(self.rt, verb)(offer_id, ts=self.now)
        except OfferClosed:
            assert expected is OfferClosed, (verb, offer_id, offer)
            return
        assert expected is None, (verb, offer_id, offer)
        status = {"accept": "accepted", "decline": "declined", "expire": "expired"}[verb]
        assert out.status == status and out.ts == min(self.now, offer.expires_at)
        self.model.close(offer, status)
        if verb == "accept":
            self.model.sessions[(offer.visitor, offer.session)].in_chat = True
        elif verb == "decline":
            until = self.model.cooldown_until.get(offer.visitor, float("-inf"))
            self.model.cooldown_until[offer.visitor] = max(until, self.now + COOLDOWN)

    @precondition(lambda self: self.offered)
    @rule(index=st.integers(0, 3))
    def accept(self, index):
        self._answer("accept", index)

    @precondition(lambda self: self.offered)
    @rule(index=st.integers(0, 3))
    def decline(self, index):
        self._answer("decline", index)

    @precondition(lambda self: self.offered)
    @rule(index=st.integers(0, 3))
    def expire(self, index):
        self._answer("expire", index)

    @rule(offer_id=st.sampled_from(["nope", "o1", "x" * 128]))
    def answer_unknown(self, offer_id):
        try:
            self.rt.accept(offer_id, ts=self.now)
        except OfferNotFound:
            return
        raise AssertionError("an unknown offer id was accepted")

    @rule(queue=st.sampled_from(["Billing", "Support"]), agents=st.sampled_from([None, 0, 2]),
          wait=st.sampled_from([None, 30.0, 180.0, 181.0, 500.0]))
    def update_queue(self, queue, agents, wait):
        self.rt.update_queue(queue, agents_available=agents, estimated_wait_s=wait, ts=self.now)
        self.model.queues[queue] = (agents, wait)

    @invariant()
    def offers_per_session_within_the_limit(self):
        for s in self.model.sessions.values():
            assert s.offers <= MAX_OFFERS

    @invariant()
    def log_holds_every_decision_and_outcome(self):
        self.log.flush()
        with sqlite3.connect(self.log.path) as db:
            rows = db.execute("SELECT action, reason, offer_id FROM decisions ORDER BY id").fetchall()
            outcomes = db.execute("SELECT offer_id, status FROM outcomes").fetchall()
        assert rows == self.model.decisions
        assert len(outcomes) == len({o for o, _ in outcomes})  # each offer answered at most once
        assert dict(outcomes) == self.model.outcomes
        for offer_id, status in outcomes:
            assert self.rt.store.offer(offer_id).status == status


Lifecycle.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
TestLifecycle = Lifecycle.TestCase
