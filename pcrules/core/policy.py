"""The pure core: (spec, session state, event, matched rules) -> (decision, new state).

No I/O, no clock, no randomness: the runtime wraps it with state and a log,
and the backtest applies the very same functions to its candidate rows, so
the two cannot drift apart.

Order of judgement, for an event that some rule matches now or could match
later on this page:

1. the session and the visitor: ``in_chat``, ``offer_pending``, ``max_offers``, ``cooldown``;
2. a rule that matches now, strongest first, whose queue is open and not busy
   (else ``closed`` / ``queue_busy`` of the strongest);
3. the holdout group: ``none/holdout`` where the others get the offer;
4. no rule matches now but one could as time on page grows: ``wait``;
5. otherwise a rule failed only on its score: ``score_below``.

An event that no rule could ever match on this page is ``none/no_rule``,
whatever the session's state.
"""

from __future__ import annotations

import hashlib
import html
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .clock import is_open
from .decision import Action, Decision, OfferStatus, Reason
from .events import Event
from .matches import Matches
from .spec import TIME_FIELDS, AnyOf, Explore, Node, Queue, Rule, RuleSpec

__all__ = [
    "PendingOffer",
    "SessionState",
    "VisitorState",
    "QueueStatus",
    "Step",
    "decide",
    "answer",
    "in_holdout",
    "explores",
    "explore_wait",
    "explore_probability",
    "render_metadata",
    "duration",
    "next_crossing",
    "needs_score",
    "crossings",
    "time_holds",
    "wait_points",
    "SESSION_BLOCKS",
    "QUEUE_BLOCKS",
]

HOLDOUT_SALT = b"pcrules-holdout-v1"
EXPLORE_SALT = b"pcrules-explore-v1"
EXPLORE_WAIT_SALT = b"pcrules-explore-wait-v1"
MAX_METADATA_VALUE = 500

# The blocks of step 1 and step 2 of the order of judgement, in the order they are tried: the first that
# applies is the reason. The array judge (``pcrules.analysis.judge``) takes its order from here.
SESSION_BLOCKS = (Reason.IN_CHAT, Reason.OFFER_PENDING, Reason.MAX_OFFERS, Reason.COOLDOWN)
QUEUE_BLOCKS = (Reason.CLOSED, Reason.QUEUE_BUSY)


@dataclass(frozen=True, slots=True)
class PendingOffer:
    offer_id: str | None  # None for the would-be offer of a holdout visitor
    rule: str
    queue: str
    offered_at: float
    expires_at: float

    @property
    def holdout(self) -> bool:
        return self.offer_id is None


@dataclass(frozen=True, slots=True)
class SessionState:
    offers_made: int = 0
    pending: PendingOffer | None = None
    in_chat: bool = False
    last_seen: float = 0.0
    # With exploration (``policy.explore``), since the session's last offer: per page, the most seconds on it at
    # a moment an explored session could have offered (a rule's other conditions held, its queue took offers,
    # no session block); and whether the production rules could have offered at such a moment. The next
    # offer's propensity is computed from them.
    explore_seen: tuple[tuple[str, float], ...] = ()
    production_seen: bool = False


@dataclass(frozen=True, slots=True)
class VisitorState:
    cooldown_until: float = -math.inf


@dataclass(frozen=True, slots=True)
class QueueStatus:
    agents_available: int | None = None
    estimated_wait_s: float | None = None
    updated_at: float | None = None


@dataclass(frozen=True, slots=True)
class Step:
    decision: Decision
    session: SessionState
    visitor: VisitorState
    expired: PendingOffer | None = None  # a pending offer whose time ran out before this event


def in_holdout(visitor_id: str, share: float) -> bool:
    """Stable in every process and version: a keyed hash, never Python's hash()."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(visitor_id.encode(), digest_size=8, key=HOLDOUT_SALT).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def explores(session_id: str, share: float) -> bool:
    """Whether a session is in the exploration share: a keyed hash, stable everywhere, independent of the
    holdout's (another key, another unit)."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(session_id.encode(), digest_size=8, key=EXPLORE_SALT).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def explore_wait(explore: Explore, session_id: str, page: str) -> float:
    """The wait of an explored session on `page`: drawn from ``explore.waits`` by a keyed hash of both, so
    every process (and the backtest) draws the same one; a page seen twice in a session keeps its wait."""
    digest = hashlib.blake2b(f"{session_id}\x1f{page}".encode(), digest_size=8, key=EXPLORE_WAIT_SALT).digest()
    u = int.from_bytes(digest, "big") / 2**64
    total = 0.0
    for wait, weight in zip(explore.waits, explore.weights):
        total += weight
        if u < total:
            return wait
    return explore.waits[-1]


def explore_probability(explore: Explore, seen: tuple[tuple[str, float], ...], page: str, seconds: float) -> float:
    """P(an explored session makes its next offer now, on `page` at `seconds`), given `seen` (per page, the
    most seconds at earlier moments it could have offered): every other page's wait was longer than it stayed,
    and this page's wait lies after its earlier moments and at or before now. docs/off-policy.md derives it."""
    before = -math.inf
    others = 1.0
    for name, most in seen:
        if name == page:
            before = most
        else:
            others *= explore.survival(most)
    return others * max(explore.survival(before) - explore.survival(seconds), 0.0)


def _seen_with(seen: tuple[tuple[str, float], ...], page: str, seconds: float) -> tuple[tuple[str, float], ...]:
    for i, (name, most) in enumerate(seen):
        if name == page:
            return seen if most >= seconds else seen[:i] + ((page, seconds),) + seen[i + 1:]
    return seen + ((page, seconds),)


def _strength(rule: Rule) -> tuple[int, int]:
    return -rule.priority, rule.order  # the spec's order of rules: strongest first


def render_metadata(rule: Rule, fields: Mapping[str, Any]) -> dict[str, str]:
    """The offer's metadata: text templates filled from the event, safe to show as HTML."""
    seconds = fields.get("seconds_on_page", 0.0)
    values = _Values(fields, minutes=str(int(seconds // 60)), seconds=str(int(seconds)), duration=duration(seconds),
                     queue=rule.queue, rule=rule.name)
    out = {}
    for key, template in rule.metadata:
        text = template.format_map(values)
        # Names and values both land in the CSR's HTML window; names come from the spec, but escape them too.
        out[html.escape(key, quote=True)] = html.escape(text[:MAX_METADATA_VALUE], quote=True)
    return out


def duration(seconds: float) -> str:
    """Time on a page as a person says it: "45 s", "3 min", "1 h 5 min" (``{minutes}`` says "0" under a minute)."""
    whole = int(max(seconds, 0.0))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class _Values(dict[str, str]):
    """Template values, shown as text on demand; a field the event lacks renders as empty text."""

    def __init__(self, fields: Mapping[str, Any], **extras: str):
        super().__init__(extras)
        self.fields = fields

    def __missing__(self, key: str) -> str:
        value = self.fields.get(key)
        return "" if value is None else _show(value)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@lru_cache(maxsize=1024)
def crossings(rule: Rule) -> tuple[float, ...]:
    """Seconds on page at which a time condition of `rule` turns from false to true (sorted)."""
    points = []
    for cond in rule.conditions():
        scale = TIME_FIELDS.get(cond.field)
        if scale is None:
            continue
        if cond.op in ("gte", "eq"):
            points.append(cond.value * scale)
        elif cond.op == "gt":
            points.append(cond.value * scale + 1e-3)
        elif cond.op == "in":
            points.extend(v * scale for v in cond.value)
    return tuple(sorted(points))


def time_holds(nodes: tuple[Node, ...], seconds: float) -> bool:
    """Whether the time-on-page conditions of `nodes` hold at `seconds` (other conditions count as true)."""
    for node in nodes:
        if isinstance(node, AnyOf):
            if not any(time_holds(branch, seconds) for branch in node.branches):
                return False
            continue
        scale = TIME_FIELDS.get(node.field)
        if scale is None or node.op in ("exists", "matches"):
            continue
        # Compare seconds with value * scale, the very figure crossings() produced.
        value = tuple(v * scale for v in node.value) if node.op in ("in", "not_in") else node.value * scale
        if not _COMPARE[node.op](seconds, value):
            return False
    return True


_COMPARE: dict[str, Callable[[float, Any], bool]] = {
    "eq": lambda s, v: s == v, "ne": lambda s, v: s != v,
    "gt": lambda s, v: s > v, "gte": lambda s, v: s >= v, "lt": lambda s, v: s < v, "lte": lambda s, v: s <= v,
    "in": lambda s, v: s in v, "not_in": lambda s, v: s not in v,
}


@lru_cache(maxsize=1024)
def wait_points(rule: Rule) -> tuple[float, ...]:
    """The crossing points of `rule` at which all its time conditions hold: the moments on a page when it can
    start to match (sorted). Waiting for `rule` at ``seconds_on_page`` means waiting for the first one after it."""
    return tuple(p for p in crossings(rule) if time_holds(rule.when, p))


def next_crossing(rule: Rule, seconds_on_page: float) -> float | None:
    """Seconds from now until the earliest moment all of `rule`'s time conditions hold; None if never.

    Not simply the next threshold: with `seconds_on_page >= 300` and
    `minutes_on_page >= 6` nothing can fire before 360 s, and with an upper
    bound such as `seconds_on_page < 200` past it, waiting cannot help.
    """
    for point in wait_points(rule):
        if point > seconds_on_page:
            return point - seconds_on_page
    return None


@lru_cache(maxsize=1024)
def needs_score(rule: Rule) -> bool:
    """True when `rule` cannot match without a score (every way through it tests `score`)."""
    return not _possible_without_score(rule.when)


def _possible_without_score(nodes: tuple[Node, ...]) -> bool:
    for node in nodes:
        if isinstance(node, AnyOf):
            if not any(_possible_without_score(branch) for branch in node.branches):
                return False
        elif node.field == "score" and not (node.op == "exists" and node.value is False):
            return False
    return True


def _queue_block(queue: Queue, status: QueueStatus | None, ts: float) -> Reason | None:
    if not is_open(queue.hours, ts):
        return Reason.CLOSED
    if status is None:
        return None
    if status.agents_available is not None and status.agents_available <= 0:
        return Reason.QUEUE_BUSY
    wait = status.estimated_wait_s
    if queue.max_wait_s is not None and wait is not None and wait > queue.max_wait_s:
        return Reason.QUEUE_BUSY
    return None


def _session_block(spec: RuleSpec, session: SessionState, visitor: VisitorState, ts: float) -> Reason | None:
    if session.in_chat:
        return Reason.IN_CHAT
    if session.pending is not None:
        return Reason.OFFER_PENDING
    if session.offers_made >= spec.policy.max_offers_per_session:
        return Reason.MAX_OFFERS
    if ts < visitor.cooldown_until:
        return Reason.COOLDOWN
    return None


def decide(
    spec: RuleSpec,
    event: Event,
    session: SessionState,
    visitor: VisitorState,
    matches: Matches,
    queues: Mapping[str, QueueStatus],
    score: float | None,
    new_offer_id: Callable[[], str],
) -> Step:
    ts = event.ts
    pending = session.pending
    expired = None
    if pending is not None and pending.expires_at <= ts:
        expired, pending = pending, None
        visitor = _unanswered(spec, visitor, expired.expires_at)
    # Built directly, not with dataclasses.replace: this runs on every event.
    session = SessionState(session.offers_made, pending, session.in_chat, max(session.last_seen, ts),
                           session.explore_seen, session.production_seen)

    def result(action: Action, reason: Reason | None, **extra: Any) -> Step:
        decision = Decision(action, reason, event.visitor_id, event.session_id, ts, event.page, event.seconds_on_page,
                            spec.name, spec.version, score=score, **extra)
        return Step(decision, session, visitor, expired)

    if score is None and (matches.unscored or matches.later):
        # Without a score (no model, or it failed) a rule on `score` never matches:
        # it is no reason to wait, and not a `score_below` either.
        matches = Matches(matches.full, (), tuple(r for r in matches.later if not needs_score(r)))
    if not matches:
        return result(Action.NONE, Reason.NO_RULE)
    strongest = (matches.full or matches.later or matches.unscored)[0]
    explore = spec.policy.explore
    explored = explore is not None and explores(event.session_id, explore.share)
    # The rules whose conditions hold but for time on page and score: what an explored session offers with.
    eligible = () if explore is None else tuple(sorted(matches.full + matches.unscored + matches.later,
                                                       key=_strength))
    if explored:  # it sets the rules' time-on-page and score conditions aside (docs/off-policy.md)
        strongest = eligible[0]
    blocked = _session_block(spec, session, visitor, ts)
    if blocked is not None:
        return result(Action.NONE, blocked, rule=strongest.name, queue=strongest.queue)

    chances: tuple[float, bool] | None = None
    if explore is not None:
        taker = _taker(spec, queues, ts, matches.full)  # where the production rules offer now
        if explored:
            wait = explore_wait(explore, event.session_id, event.page)
            if event.seconds_on_page < wait:
                if _taker(spec, queues, ts, eligible) is not None:
                    session = _seen(session, event, taker is not None)
                return result(Action.WAIT, None, rule=strongest.name, queue=strongest.queue,
                              recheck_after=round(wait - event.seconds_on_page, 3))
            matches = Matches(eligible)
        elif taker is None and _taker(spec, queues, ts, eligible) is not None:
            session = _seen(session, event, False)
        chances = (explore_probability(explore, session.explore_seen, event.page, event.seconds_on_page),
                   taker is not None and not session.production_seen)

    if matches.full:
        first_block: tuple[Rule, Reason] | None = None
        for rule in matches.full:
            reason = _queue_block(spec.queues[rule.queue], queues.get(rule.queue), ts)
            if reason is None:
                propensity = 1.0
                if chances is not None:
                    assert explore is not None
                    propensity = (1.0 - explore.share) * chances[1] + explore.share * chances[0]
                return _offer(spec, event, session, visitor, rule, score, new_offer_id, expired, explored,
                              propensity)
            first_block = first_block or (rule, reason)
        assert first_block is not None
        rule, reason = first_block
        return result(Action.NONE, reason, rule=rule.name, queue=rule.queue)

    waits = [(d, r) for r in matches.later if (d := next_crossing(r, event.seconds_on_page)) is not None]
    if waits:
        delay, rule = min(waits, key=lambda pair: pair[0])
        return result(Action.WAIT, None, rule=rule.name, queue=rule.queue, recheck_after=round(delay, 3))
    if matches.unscored and score is not None:
        rule = matches.unscored[0]
        return result(Action.NONE, Reason.SCORE_BELOW, rule=rule.name, queue=rule.queue)
    return result(Action.NONE, Reason.NO_RULE)


def _taker(spec: RuleSpec, queues: Mapping[str, QueueStatus], ts: float, rules: Iterable[Rule]) -> Rule | None:
    """The strongest of `rules` whose queue takes an offer at `ts`."""
    for rule in rules:
        if _queue_block(spec.queues[rule.queue], queues.get(rule.queue), ts) is None:
            return rule
    return None


def _seen(session: SessionState, event: Event, production: bool) -> SessionState:
    """`session` after a moment an explored session could have offered at, and did not."""
    return SessionState(session.offers_made, session.pending, session.in_chat, session.last_seen,
                        _seen_with(session.explore_seen, event.page, event.seconds_on_page),
                        session.production_seen or production)


def _offer(spec: RuleSpec, event: Event, session: SessionState, visitor: VisitorState, rule: Rule,
           score: float | None, new_offer_id: Callable[[], str], expired: PendingOffer | None,
           explored: bool = False, propensity: float = 1.0) -> Step:
    ts = event.ts
    expires_at = ts + spec.policy.offer_timeout_s
    holdout = in_holdout(event.holdout_unit or event.visitor_id, spec.policy.holdout)
    offer_id = None if holdout else new_offer_id()
    metadata = render_metadata(rule, event.fields)
    # A holdout visitor's would-be offer occupies the session exactly as a real
    # one would (never answered), so control and treatment see the same policy.
    session = SessionState(session.offers_made + 1, PendingOffer(offer_id, rule.name, rule.queue, ts, expires_at),
                           session.in_chat, session.last_seen)
    if holdout:  # never answered, so its no-answer cooldown is certain now: set it while this session is in hand
        visitor = _unanswered(spec, visitor, expires_at)
    decision = Decision(
        Action.NONE if holdout else Action.OFFER, Reason.HOLDOUT if holdout else None,
        event.visitor_id, event.session_id, ts, event.page, event.seconds_on_page, spec.name, spec.version,
        rule=rule.name, queue=rule.queue, score=score, offer_id=offer_id, metadata=metadata,
        default_ui=rule.default_ui, expires_at=expires_at, explored=explored, propensity=propensity,
    )
    return Step(decision, session, visitor, expired)


def answer(spec: RuleSpec, session: SessionState, visitor: VisitorState, status: OfferStatus,
           ts: float) -> tuple[SessionState, VisitorState]:
    """State after the visitor's answer to the session's pending offer (or its expiry)."""
    session = SessionState(session.offers_made, None, session.in_chat or status == OfferStatus.ACCEPTED,
                           session.last_seen, session.explore_seen, session.production_seen)
    if status == OfferStatus.DECLINED:
        visitor = VisitorState(max(visitor.cooldown_until, ts + spec.policy.decline_cooldown_s))
    elif status == OfferStatus.EXPIRED:
        visitor = _unanswered(spec, visitor, ts)
    return session, visitor


def _unanswered(spec: RuleSpec, visitor: VisitorState, expired_at: float) -> VisitorState:
    """`visitor` after an offer of theirs expired unanswered at `expired_at`: ``policy.no_answer_cooldown_s``.

    A holdout visitor's would-be offer is never answered, so its cooldown is set when it is made: the session
    that made it may never see another event (and a Redis session just lapses). The visitor's other sessions are
    then blocked (``cooldown``) from that moment, where a shown offer's are blocked from its expiry; the array
    judge states the same.
    """
    wait = spec.policy.no_answer_cooldown_s
    if wait <= 0:
        return visitor
    return VisitorState(max(visitor.cooldown_until, expired_at + wait))
