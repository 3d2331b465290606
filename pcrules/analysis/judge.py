"""The order of judgement as arrays: candidate rows -> the runtime's decisions, for the backtest and the tuner.

The policy is stated twice and only twice: :mod:`pcrules.core.policy` judges one event (the runtime, and the
backtest's ``engine="policy"``, the oracle) and this module judges many at once (the backtest's default engine
and the tuner). The parity tests tie the two: ``tests/test_backtest.py`` (the backtest equals the runtime and
the pure core, event by event) and ``tests/test_tuning.py`` (the tuner's counts equal the backtest's rows).

The input is what the policy reads, prepared as arrays by the caller:

* :class:`Stretches`: the rows judged (every row some rule could match; any other valid row is
  ``none/no_rule`` whatever the session's state), grouped by *session stretch* (a session between idle
  evictions, ``EventTable.stretches``), in time order within each; with each row's time, time on page,
  visitor, recorded answer;
* :class:`RuleSets`: per row, sets of rules (one bit per rule, the strongest the lowest bit; :class:`RuleBits`):
  those that match in full, match but for the score (``score_below``), can match later on this page as time
  on page grows, and can do so at a moment still ahead (``wait``); and the rules whose queue takes an offer at
  that moment (open and not busy), and those whose queue is open but busy.

:class:`Verdict` then applies :func:`pcrules.core.policy.decide`'s order:

1. *stateless*: a row where some rule matches in full offers with the strongest one whose queue takes it,
   else it is ``closed`` / ``queue_busy`` by the strongest full match; a row with no full match waits for the
   earliest moment a rule can fire (``wait_points``), else is ``score_below`` by the strongest rule that
   failed only on its score, else ``no_rule``;
2. *offers* (:func:`offers`): the rows that would offer become offers in time order under the session and
   visitor policy: one pending offer, ``max_offers_per_session``, the decline cooldown (also across
   sessions), idle evictions, the holdout (a holdout visitor's would-be offer is never answered). With one
   offer per session a stretch's offer is its first offering row outside every cooldown, found with whole-
   array operations; only visitors whose decline can reach another of their stretches are stepped, and with
   several offers per session every visitor is (:class:`OfferLedger`, the one sequential step);
3. *stops* (:func:`stops`): every other matched row after an offer of its stretch gets its session block
   (``in_chat``, ``offer_pending``, ``max_offers``, in ``policy.SESSION_BLOCKS`` order), or ``cooldown``
   within a cooldown from a delivered decline of its visitor;
4. the holdout: a holdout visitor's offer is ``none/holdout``.

The verdict is read per row (:meth:`Verdict.per_row`, the backtest's decisions) or counted
(:meth:`Verdict.counts`, the tuner's figures without a pass over every row).

The recorded answers follow :mod:`pcrules.replay`: the ``response`` and ``response_delay_s`` recorded with the
event at which an offer is made are played back when the answer comes before the offer's timeout; otherwise
the offer expires.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..core.decision import Reason
from ..core.policy import QUEUE_BLOCKS, SESSION_BLOCKS, QueueStatus, explore_wait, explores, wait_points
from ..core.spec import STRING, Explore, Policy, Rule, RuleSpec
from ..matching.vector import open_mask
from .table import ACCEPT, DECLINE, NO_ANSWER, EventTable

__all__ = [
    "ACTIONS",
    "REASONS",
    "OUTCOMES",
    "A_OFFER",
    "A_WAIT",
    "A_NONE",
    "A_REFUSED",
    "REASON_CODE",
    "RuleBits",
    "RuleSets",
    "Stretches",
    "Offers",
    "OfferLedger",
    "Verdict",
    "Exploration",
    "first_offer_chances",
    "offers",
    "stops",
    "rows_in_cooldown",
    "crossable",
    "rule_points",
    "wait_for",
    "round3",
    "queue_timeline",
    "queue_blocks",
    "queue_status_at",
    "ranges",
]

ACTIONS = ("offer", "wait", "none", "refused")
REASONS = tuple(r.value for r in Reason)
OUTCOMES = ("accepted", "declined", "expired")
A_OFFER, A_WAIT, A_NONE, A_REFUSED = range(4)
REASON_CODE = {r: i for i, r in enumerate(Reason)}
_NO_RULE, _SCORE_BELOW, _HOLDOUT = REASON_CODE[Reason.NO_RULE], REASON_CODE[Reason.SCORE_BELOW], \
    REASON_CODE[Reason.HOLDOUT]
_CLOSED, _BUSY = (REASON_CODE[r] for r in QUEUE_BLOCKS)
_IN_CHAT, _PENDING, _MAX, _COOLDOWN = (REASON_CODE[r] for r in SESSION_BLOCKS)


# ============================================================================================ sets of rules


class RuleBits:
    """Sets of the rules of a spec, one integer per row: rule ``k`` (spec order, strongest first) is bit ``k``.

    Up to 64 rules an unsigned integer (the smallest that holds them); beyond, Python integers (slow, exact).
    """

    def __init__(self, k: int):
        self.k = k
        self.dtype: Any = np.uint8 if k <= 8 else np.uint16 if k <= 16 else np.uint32 if k <= 32 else \
            np.uint64 if k <= 64 else object
        self._lut: np.ndarray | None = None
        if k <= 16:
            values = np.arange(1, 1 << k, dtype=np.int64)
            self._lut = np.full(1 << k, -1, dtype=np.int64)
            self._lut[values] = np.log2(values & -values).astype(np.int64)

    def zeros(self, m: int) -> np.ndarray:
        return np.zeros(m, dtype=self.dtype)

    def bit(self, k: int) -> Any:
        return 1 << k if self.dtype is object else self.dtype(1 << k)

    def union(self, rules: Sequence[int]) -> Any:
        """The set of `rules` (indices) as one value."""
        value = 0
        for k in rules:
            value |= 1 << k
        return value if self.dtype is object else self.dtype(value)

    def add(self, target: np.ndarray, mask: np.ndarray, k: int) -> None:
        """Put rule `k` into the sets of `target` where `mask` (one bool per row) holds."""
        if self.dtype is object:
            target |= mask.astype(np.int64).astype(object) << k
        else:
            target |= mask.view(np.uint8).astype(self.dtype, copy=False) << self.dtype(k)

    def pack(self, matrix: np.ndarray) -> np.ndarray:
        """A (rules, rows) boolean matrix as one set per row."""
        k, m = matrix.shape
        out = self.zeros(m)
        for j in range(k):
            self.add(out, np.ascontiguousarray(matrix[j]), j)
        return out

    def first(self, bits: np.ndarray) -> np.ndarray:
        """The strongest rule (its index) in each set, -1 for an empty set."""
        if self._lut is not None:
            return self._lut[bits]
        out = np.full(len(bits), -1, dtype=np.int64)
        for k in range(self.k - 1, -1, -1):
            out[self.contains(bits, k)] = k
        return out

    def contains(self, bits: np.ndarray, k: int) -> np.ndarray:
        """Whether rule `k` is in each set."""
        if self.dtype is object:
            return (bits & (1 << k)) != 0
        return (bits & self.dtype(1 << k)) != 0

    def has(self, bits: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Whether rule ``k[i]`` is in set ``bits[i]``."""
        if self.dtype is object:
            return np.array([(int(b) >> int(j)) & 1 == 1 for b, j in zip(bits, k)], dtype=bool)
        return ((bits >> k.astype(self.dtype)) & self.dtype(1)) != 0


@dataclass
class RuleSets:
    """Per row judged (positions of a :class:`Stretches`), the sets of rules the order of judgement reads."""

    full: np.ndarray  # match now, in full
    unscored: np.ndarray  # match but for the score (a score is known and falls short)
    later: np.ndarray  # can match later on this page, as time on page grows
    cross: np.ndarray  # of `later`, those with a moment still ahead at which they can match (a reason to wait)
    open: np.ndarray  # whose queue takes an offer at this row (open, not busy)
    busy: np.ndarray | None = None  # whose queue is open but busy (None: no queue is ever busy)


def rule_points(rule: Rule) -> np.ndarray:
    """``policy.wait_points`` of `rule` as an array."""
    return np.array(wait_points(rule), dtype=float)


def crossable(rule: Rule, seconds: np.ndarray) -> np.ndarray:
    """Whether `rule` has a moment ahead on the page, after `seconds` on it, at which its time conditions hold."""
    points = wait_points(rule)
    if not points:
        return np.zeros(len(seconds), dtype=bool)
    return seconds < points[-1]


def wait_for(bits: RuleBits, cross: np.ndarray, seconds: np.ndarray,
             points: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For rows that wait: (rule, delay) of the earliest moment one of the rules in `cross` can fire, as
    ``min(policy.next_crossing)`` over them (a tie keeps the stronger rule). `points`: ``rule_points`` per rule."""
    best = np.full(len(seconds), np.inf)
    rule = np.full(len(seconds), -1, dtype=np.int64)
    for k, p in enumerate(points):
        if not len(p):
            continue
        has = bits.contains(cross, k)
        if not has.any():
            continue
        pos = np.searchsorted(p, seconds, side="right")  # the first point > seconds
        delay = np.where(has & (pos < len(p)), p[np.minimum(pos, len(p) - 1)] - seconds, np.inf)
        better = delay < best  # strict: a tie keeps the stronger rule, as min() keeps the first
        best = np.where(better, delay, best)
        rule = np.where(better, k, rule)
    return rule, np.where(rule >= 0, best, np.nan)


def round3(values: np.ndarray) -> np.ndarray:
    """Python's round(x, 3) (correctly rounded), for every value: ``recheck_after`` as ``decide`` gives it."""
    out = np.full(len(values), np.nan)
    ok = ~np.isnan(values)
    if ok.any():
        inverse, uniq = pd.factorize(values[ok])
        out[ok] = np.array([round(float(v), 3) for v in uniq], dtype=float)[inverse]
    return out


# ============================================================================================ queues


def queue_timeline(spec: RuleSpec, status: Any) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """queue -> (update times, agents_available, estimated_wait_s), NaN for not reported; sorted by time.

    `status`: None (no status: no queue is ever busy), a mapping queue -> QueueStatus (or dict) in force
    throughout, or a DataFrame of updates with columns ts, queue, agents_available, estimated_wait_s.
    An update applies to events at or after its time (as ``Runtime.update_queue`` called before them).
    """
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if status is None:
        return out
    if isinstance(status, Mapping):
        rows = []
        for name, s in status.items():
            get = s.get if isinstance(s, Mapping) else (lambda k, s=s: getattr(s, k, None))
            rows.append({"ts": -math.inf, "queue": name, "agents_available": get("agents_available"),
                         "estimated_wait_s": get("estimated_wait_s")})
        status = pd.DataFrame(rows, columns=["ts", "queue", "agents_available", "estimated_wait_s"])
    if not isinstance(status, pd.DataFrame):
        raise TypeError("queue_status: expected None, a mapping of queue to status, or a DataFrame of updates")
    unknown = sorted(set(status["queue"].dropna().astype(str)) - set(spec.queues))
    if unknown:
        raise ValueError(f"queue_status: unknown queue(s) {', '.join(unknown)} (defined: {', '.join(spec.queues)})")
    frame = status.reset_index(drop=True)
    times = pd.to_numeric(frame["ts"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)

    def numbers(name: str) -> np.ndarray:
        if name not in frame.columns:
            return np.full(len(frame), np.nan)
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)

    agents, wait = numbers("agents_available"), numbers("estimated_wait_s")
    order = np.argsort(times, kind="stable")
    queue_of = frame["queue"].to_numpy(dtype=object)[order]
    for name in spec.queues:
        pick = order[queue_of == name]
        if len(pick):
            out[name] = (times[pick], agents[pick], wait[pick])
    return out


def queue_blocks(spec: RuleSpec, table: EventTable, timeline: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """queue -> per row: -1 when it takes an offer, else the reason code: ``closed`` (its hours), then
    ``queue_busy`` (no agent available, or the estimated wait over ``max_wait_s``), as ``policy.decide``."""
    out = {}
    ts = table.ts
    for name, queue in spec.queues.items():
        code = np.full(table.n, -1, dtype=np.int8)
        if queue.hours is not None:
            weekday, minute = table.columns.clock(queue.hours.tz)
            code[~open_mask(queue.hours, weekday, minute)] = _CLOSED
        if name in timeline:
            times, agents, wait = timeline[name]
            busy_u = (~np.isnan(agents) & (agents <= 0))
            if queue.max_wait_s is not None:
                busy_u |= ~np.isnan(wait) & (wait > queue.max_wait_s)
            idx = np.searchsorted(times, ts, side="right") - 1
            busy = (idx >= 0) & np.append(busy_u, False)[idx]
            code[(code < 0) & busy] = _BUSY
        out[name] = code
    return out


def queue_status_at(timeline: Mapping[str, tuple], t: float) -> dict[str, QueueStatus]:
    """The queues' status at time `t` as ``Runtime.update_queue`` calls left it (for the pure core)."""
    out = {}
    for name, (times, agents, wait) in timeline.items():
        i = int(np.searchsorted(times, t, side="right")) - 1
        if i >= 0:
            a, w = agents[i], wait[i]
            out[name] = QueueStatus(None if a != a else int(a), None if w != w else float(w), float(times[i]))
    return out


# ============================================================================================ the rows judged


class Stretches:
    """The rows judged, by session stretch, then time: positions ``0..m-1`` over table rows :attr:`rows`.

    `mask`: the table rows to judge (valid rows only). ``holdout``: the policy's holdout share. Call
    :meth:`index_visitors` once when the same rows are judged many times (the tuner): the rows of a visitor
    are then found without a pass over all of them.
    """

    def __init__(self, table: EventTable, mask: np.ndarray, ttl: float, holdout: float):
        self.table = table
        self.share = holdout
        epoch_all, order = table.stretches(ttl)
        rows = order[mask[order]]
        self.rows = rows
        m = self.m = len(rows)
        self.ts = table.ts[rows]
        self.sec = table.seconds[rows]
        self.epoch = epoch_all[rows]
        vcode, _, _ = table.keys()
        self.visitor = vcode[rows]
        # The first position of each stretch (what is needed per row is read at a few positions only).
        self.starts = np.flatnonzero(np.r_[True, self.epoch[1:] != self.epoch[:-1]]) if m else np.zeros(0, np.int64)
        self.n_visitors = len(table.columns.view("visitor_id", STRING).uniques) + 1
        self._by_visitor: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def end(self, pos: np.ndarray) -> np.ndarray:
        """One past the last position of the stretch of each position."""
        after = np.searchsorted(self.starts, pos, side="right")
        return np.append(self.starts, self.m)[after]

    def session(self, pos: np.ndarray) -> np.ndarray:
        """The session code of each position."""
        return self.table.keys()[1][self.rows[pos]]

    def answers(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The recorded answer (``EventTable.answers``: code, delay) at each position."""
        code, delay = self.table.answers()
        rows = self.rows[pos]
        return code[rows], delay[rows]

    def hold(self, pos: np.ndarray) -> np.ndarray:
        """Whether the visitor of each position is in the holdout group."""
        if self.share <= 0:
            return np.zeros(len(pos), dtype=bool)
        return self.table.holdout(self.visitor[pos], self.share)

    def index_visitors(self) -> None:
        """Positions by visitor, then time: :meth:`of_visitors` reads only the rows it returns."""
        if self._by_visitor is None:
            by_visitor = np.lexsort((self.rows, self.visitor)) if self.m else np.zeros(0, np.int64)
            sorted_v = self.visitor[by_visitor]
            codes = np.arange(self.n_visitors)
            self._by_visitor = (by_visitor, np.searchsorted(sorted_v, codes, side="left"),
                                np.searchsorted(sorted_v, codes, side="right"))

    def of_visitors(self, visitors: np.ndarray) -> np.ndarray:
        """The positions of the (distinct) `visitors`, in no particular order."""
        if self._by_visitor is not None:
            by_visitor, lo, hi = self._by_visitor
            return by_visitor[ranges(lo[visitors], hi[visitors])]
        flagged = np.zeros(self.n_visitors, dtype=bool)
        flagged[visitors] = True
        return np.flatnonzero(flagged[self.visitor])


# ============================================================================================ offers


@dataclass
class Offers:
    """Offers and holdout would-be offers, in time order (positions of a :class:`Stretches`)."""

    pos: np.ndarray
    hold: np.ndarray  # a holdout visitor's would-be offer
    kind: np.ndarray  # answer code (table.NO_ANSWER / ACCEPT / DECLINE): the recorded answer if before the timeout
    answered: np.ndarray  # answered at (NaN: not answered, it expires)
    expires: np.ndarray
    rule: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # the rule that offers
    stats: dict[str, Any] = field(default_factory=dict)


class OfferLedger:
    """The session and visitor policy over offering rows taken in time order: the one sequential step.

    in_chat, offer_pending, max_offers and cooldown, with the replay's answer convention (a recorded answer
    counts if it comes before the offer expires; a holdout visitor's would-be offer is never answered).
    """

    __slots__ = ("policy", "timeout", "max_offers", "sessions", "cooldowns")

    def __init__(self, policy: Any):
        self.policy, self.timeout = policy, policy.offer_timeout_s
        self.max_offers = policy.max_offers_per_session
        self.sessions: dict[int, tuple[int, float, float, int]] = {}  # made, expires, answered at, answer
        self.cooldowns: dict[int, list[tuple[float, float]]] = {}  # visitor -> (from, until)

    def admit(self, t: float, session: int, visitor: int, code: int, delay: float,
              hold: Any) -> tuple[float, float, int] | None:
        """(expires, answered at, answer code) when an offering row at `t` makes an offer, else None."""
        made = 0
        state = self.sessions.get(session)
        if state is not None:
            made, expires, answered, kind = state
            if kind == ACCEPT and answered <= t:
                return None  # in_chat
            if t < expires and not (kind != NO_ANSWER and answered <= t):
                return None  # offer_pending
        if made >= self.max_offers:
            return None
        past = self.cooldowns.get(visitor)
        if past is not None and any(a <= t < until for a, until in past):
            return None  # cooldown
        expires = t + self.timeout
        kind, answered = NO_ANSWER, math.nan
        if not hold and code != NO_ANSWER and delay == delay and t + delay < expires:
            kind, answered = code, t + delay
        after = cooldown_after(self.policy, t, bool(hold), kind, answered)
        if after is not None:
            self.cooldowns.setdefault(visitor, []).append(after)
        self.sessions[session] = (made + 1, expires, answered, kind)
        return expires, answered, kind


def cooldown_after(policy: Policy, t: float, hold: bool, kind: int, answered: float) -> tuple[float, float] | None:
    """(from, until): the visitor cooldown an offer made at `t` sets, as ``core.policy`` sets it, or None.

    A decline: ``decline_cooldown_s`` from the answer. No answer before the timeout: ``no_answer_cooldown_s`` from
    the expiry, and from the offer itself for a holdout visitor's would-be offer (never answered, so the pure
    core sets it at once).
    """
    if kind == DECLINE:
        return answered, answered + policy.decline_cooldown_s
    wait = policy.no_answer_cooldown_s
    if kind != NO_ANSWER or wait <= 0:
        return None
    expires = t + policy.offer_timeout_s
    return (t if hold else expires), expires + wait


def offers(st: Stretches, fire_pos: np.ndarray, policy: Policy) -> Offers:
    """The offers among the rows that would offer (`fire_pos`, positions in order), in time order."""
    max_offers = policy.max_offers_per_session
    stats: dict[str, Any] = {"candidate_rows": st.m, "firing_rows": len(fire_pos), "visitors_stepped": 0,
                             "rows_stepped": 0, "path": "none"}
    if max_offers <= 0 or not len(fire_pos):
        empty = np.zeros(0, dtype=np.int64)
        return Offers(empty, np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int8), np.zeros(0), np.zeros(0),
                      stats=stats)
    loop = np.zeros(st.n_visitors, dtype=bool)
    if max_offers == 1:
        ep = st.epoch[fire_pos]
        first = fire_pos[np.r_[True, ep[1:] != ep[:-1]]]  # each stretch's first offering row: its offer,
        # unless a cooldown covers it. Only a visitor whose first offer sets a cooldown (a decline, or no
        # answer) that reaches their next stretch's first offering row (by time) can be affected: those go
        # row by row.
        hold = st.hold(first)
        kind, answered = _answer(st, first, hold, policy)
        _, until = cooldown_spans(policy, st.ts[first], hold, kind, answered)
        by_visitor = np.lexsort((st.rows[first], st.visitor[first]))
        f, u = first[by_visitor], until[by_visitor]
        vis = st.visitor[f]
        reach = (vis[1:] == vis[:-1]) & (st.ts[f[1:]] < u[:-1])
        loop[vis[:-1][reach]] = True
        fast = first[~loop[st.visitor[first]]]
    else:
        loop[st.visitor[fire_pos]] = True  # several offers per session: every visitor, row by row
        fast = np.zeros(0, dtype=np.int64)
    slow = fire_pos[loop[st.visitor[fire_pos]]]
    stats.update(visitors_stepped=int(loop.sum()), rows_stepped=len(slow),
                 path="first offering row per stretch" if max_offers == 1 else "row by row")
    if len(slow) and max_offers == 1:
        slow = _sequential_first(st, slow, policy)
    elif len(slow):
        slow = _sequential(st, slow[np.argsort(st.rows[slow], kind="stable")], policy)
    pos = np.concatenate([fast, slow])
    pos = pos[np.argsort(st.rows[pos], kind="stable")]  # time order
    hold = st.hold(pos)
    kind, answered = _answer(st, pos, hold, policy)
    return Offers(pos, hold, kind, answered, st.ts[pos] + policy.offer_timeout_s, stats=stats)


def _answer(st: Stretches, pos: np.ndarray, hold: np.ndarray, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
    """(answer code, answered at) of offers at `pos`: the recorded answer if it comes before the timeout."""
    t = st.ts[pos]
    code, d = st.answers(pos)
    expires = t + policy.offer_timeout_s
    with np.errstate(invalid="ignore"):
        counts = ~hold & (code != NO_ANSWER) & ~np.isnan(d) & (t + d < expires)
    kind = np.where(counts, code, NO_ANSWER).astype(np.int8)
    return kind, np.where(counts, t + d, np.nan)


def cooldown_spans(policy: Policy, t: np.ndarray, hold: np.ndarray, kind: np.ndarray, answered: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cooldown_after` of many offers: (from, until), until -inf where an offer sets none."""
    expires = t + policy.offer_timeout_s
    wait = policy.no_answer_cooldown_s
    unanswered = (kind == NO_ANSWER) & (wait > 0)
    start = np.where(kind == DECLINE, answered, np.where(hold, t, expires))
    until = np.where(kind == DECLINE, answered + policy.decline_cooldown_s,
                     np.where(unanswered, expires + wait, -np.inf))
    return start, until


def _sequential(st: Stretches, positions: np.ndarray, policy: Policy) -> np.ndarray:
    """:class:`OfferLedger` over these offering rows (time order): the positions that offer."""
    ledger = OfferLedger(policy)
    code, delay = st.answers(positions)
    rows = zip(positions.tolist(), st.ts[positions].tolist(), st.epoch[positions].tolist(),
               st.visitor[positions].tolist(), code.tolist(), delay.tolist(), st.hold(positions).tolist())
    out = [p for p, t, s, v, code, d, hold in rows if ledger.admit(t, s, v, code, d, hold) is not None]
    return np.array(out, dtype=np.int64)


def _sequential_first(st: Stretches, fire: np.ndarray, policy: Policy) -> np.ndarray:
    """:func:`_sequential` for one offer per session, a session stretch at a time (positions in order).

    A stretch offers at its first offering row outside every cooldown of its visitor; once it has, its
    other rows never can. So only each stretch's next candidate is kept, in a heap by time (row order),
    and a row inside a cooldown jumps to the stretch's first offering row at or after the cooldown's end
    (every row in between is inside the same cooldown). The rows are taken in time order, as
    :class:`OfferLedger` takes them, so the declines known at each row are the same.
    """
    timeout = policy.offer_timeout_s
    ep = st.epoch[fire]
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    ends = np.r_[starts[1:], len(fire)]
    rows = st.rows[fire]
    times = st.ts[fire]
    heap = list(zip(rows[starts].tolist(), starts.tolist(), ends.tolist()))
    heapq.heapify(heap)
    visitor, hold = st.visitor[fire], st.hold(fire)
    code, delay = st.answers(fire)
    cooldowns: dict[int, list[tuple[float, float]]] = {}
    out = []
    while heap:
        _, i, end = heapq.heappop(heap)
        t, v = float(times[i]), int(visitor[i])
        past = cooldowns.get(v)
        if past is not None:
            until = max((u for a, u in past if a <= t < u), default=None)
            if until is not None:  # in a cooldown: the next candidate is the first row at or after its end
                j = i + 1 + int(np.searchsorted(times[i + 1:end], until, side="left"))
                if j < end:
                    heapq.heappush(heap, (int(rows[j]), j, end))
                continue
        out.append(i)
        d = float(delay[i])
        counts = not hold[i] and code[i] != NO_ANSWER and d == d and t + d < t + timeout
        after = cooldown_after(policy, t, bool(hold[i]), int(code[i]) if counts else NO_ANSWER,
                               t + d if counts else math.nan)
        if after is not None:
            cooldowns.setdefault(v, []).append(after)
    return fire[np.array(out, dtype=np.int64)]


# ======================================================================================== session and visitor blocks


def stops(st: Stretches, matched: np.ndarray, made: Offers, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
    """The matched rows a session or visitor block stops, and the block (reason code) of each.

    `matched`: per position, whether some rule matches now, but for its score, or later.
    """
    o_pos, o_kind, o_ans, o_exp = made.pos, made.kind, made.answered, made.expires
    max_offers = policy.max_offers_per_session
    if max_offers <= 0:  # no offer can ever be made: every matched row is max_offers
        pos = np.flatnonzero(matched)
        return pos, np.full(len(pos), _MAX, dtype=np.int8)
    out_pos, out_reason = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int8)]
    taken = np.zeros(0, dtype=np.int64)
    if len(o_pos):
        # Only rows after the first offer of a session stretch can be blocked by the session.
        by_pos = np.argsort(o_pos, kind="stable")
        sp = o_pos[by_pos]
        ep = st.epoch[sp]
        head = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])  # first offer of each stretch, in `sp`
        tail, group = ranges(sp[head] + 1, st.end(sp[head]), groups=True)
        keep = matched[tail]
        tail, group = tail[keep], group[keep]
        if max_offers == 1:  # one offer per stretch: the row's last offer is its stretch's, and it is the one
            last = by_pos[head[group]]
            too_many = np.ones(len(tail), dtype=bool)
        else:
            upto = np.searchsorted(sp, tail, side="left")
            too_many = upto - head[group] >= max_offers
            last = by_pos[upto - 1]
        t = st.ts[tail]
        kind = o_kind[last]
        with np.errstate(invalid="ignore"):
            arrived = (kind != NO_ANSWER) & (o_ans[last] <= t)
        held = {  # the session blocks, tried in the pure core's order (policy.SESSION_BLOCKS)
            Reason.IN_CHAT: arrived & (kind == ACCEPT),
            Reason.OFFER_PENDING: (t < o_exp[last]) & ~arrived,
            Reason.MAX_OFFERS: too_many,
        }
        reason = np.full(len(tail), -1, dtype=np.int8)
        for r in reversed(SESSION_BLOCKS):  # the first block that applies is the reason
            if r in held:
                reason = np.where(held[r], np.int8(REASON_CODE[r]), reason)
        hit = reason >= 0
        taken = tail[hit]
        out_pos.append(taken)
        out_reason.append(reason[hit])
    start, until = cooldown_spans(policy, st.ts[o_pos], made.hold, o_kind, o_ans)
    sets_one = until > -np.inf
    if sets_one.any():  # the last session block: cooldown, of rows no other block stops
        # A holdout would-be offer's cooldown starts at the offer itself: rows of its moment that come after it
        # are in it, those before are not; an answer or an expiry is delivered before the rows of its moment.
        after_row = np.where(made.hold, st.rows[o_pos], -1)[sets_one]
        c_pos = _cooldown_rows(st, matched, st.visitor[o_pos[sets_one]], start[sets_one], after_row, until[sets_one],
                               taken)
        out_pos.append(c_pos)
        out_reason.append(np.full(len(c_pos), _COOLDOWN, dtype=np.int8))
    return np.concatenate(out_pos), np.concatenate(out_reason)


def _cooldown_rows(st: Stretches, matched: np.ndarray, c_visitor: np.ndarray, c_from: np.ndarray,
                   c_after_row: np.ndarray, c_until: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Matched rows, not blocked by their session, of a visitor within one of their cooldowns."""
    vs = np.unique(c_visitor)
    first_at = np.full(st.n_visitors, np.inf)
    np.minimum.at(first_at, c_visitor, c_from)
    rows = st.of_visitors(vs)
    rows = rows[matched[rows] & (st.ts[rows] >= first_at[st.visitor[rows]])]  # before any cooldown: free
    if len(taken) and len(rows):
        mask = np.zeros(st.m, dtype=bool)
        mask[taken] = True
        rows = rows[~mask[rows]]
    if not len(rows):
        return np.zeros(0, dtype=np.int64)
    return np.sort(rows_in_cooldown(rows, st.visitor, st.ts, st.rows, c_visitor, c_from, c_after_row, c_until))


def rows_in_cooldown(rows: np.ndarray, visitor: np.ndarray, ts: np.ndarray, order: np.ndarray,
                     c_visitor: np.ndarray, c_from: np.ndarray, c_after_row: np.ndarray,
                     c_until: np.ndarray) -> np.ndarray:
    """Those of `rows` (indices into `visitor` / `ts` / `order`, the table row) that fall in a cooldown of their
    visitor: one that starts before the row (at the row's moment: when its `c_after_row` is before the row's
    table row; -1 for any row of that moment) and ends after it.

    Cooldowns and rows are merged in (visitor, time, table row) order; a row is in a cooldown when the latest end
    among its visitor's cooldowns started before it lies after it.
    """
    n_c = len(c_visitor)
    v_all = np.concatenate([c_visitor, visitor[rows]])
    t_all = np.concatenate([c_from, ts[rows]])
    tie = np.concatenate([c_after_row + 0.5, order[rows].astype(float)])
    order_all = np.lexsort((tie, t_all, v_all))
    ends = np.concatenate([c_until, np.full(len(rows), -np.inf)])[order_all]
    latest = pd.Series(ends).groupby(v_all[order_all], sort=False).cummax().to_numpy()
    is_row = order_all >= n_c
    row_ids = rows[order_all[is_row] - n_c]
    return row_ids[ts[row_ids] < latest[is_row]]


def ranges(starts: np.ndarray, ends: np.ndarray, groups: bool = False) -> Any:
    """The concatenation of arange(s, e) for every pair (empty ranges allowed); with ``groups``, also the
    index of the pair each value comes from."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.maximum(np.asarray(ends, dtype=np.int64) - starts, 0)
    total = int(lengths.sum())
    if not total:
        empty = np.zeros(0, dtype=np.int64)
        return (empty, empty.copy()) if groups else empty
    offsets = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    values = offsets + np.arange(total)
    if groups:
        return values, np.repeat(np.arange(len(starts)), lengths)
    return values


# ============================================================================================ the verdict


class Verdict:
    """The order of judgement over the rows of `st` (see the module docstring)."""

    def __init__(self, st: Stretches, bits: RuleBits, sets: RuleSets, policy: Policy):
        self.st, self.bits, self.sets = st, bits, sets
        full, uns, later, cross = sets.full, sets.unscored, sets.later, sets.cross
        # -- 1. stateless: what each row would decide if no session or visitor block applied --------------
        self.fo = fo = full & sets.open
        self.fire = np.flatnonzero(fo)  # a rule matches in full and its queue takes the offer
        any_full = full != 0
        self.qblocked = np.flatnonzero(any_full & (fo == 0))  # full matches, every one's queue closed or busy
        rest = ~any_full & ((uns | later) != 0)
        self.n_rest = int(np.count_nonzero(rest))
        self.waiting = rest & (cross != 0)
        self.n_wait = int(np.count_nonzero(self.waiting))
        self.below = np.flatnonzero(rest & ~self.waiting & (uns != 0))
        self.n_matched = len(self.fire) + len(self.qblocked) + self.n_rest
        # -- 2. the offers ------------------------------------------------------------------------------------
        self.offers = offers(st, self.fire, policy)
        self.offers.rule = bits.first(fo[self.offers.pos])  # the strongest full match whose queue takes it
        # -- 3. the session and visitor blocks of every other matched row --------------------------------------
        self.matched = (full | uns | later) != 0
        self.stop_pos, self.stop_reason = stops(st, self.matched, self.offers, policy)
        check = np.zeros(st.m, dtype=np.int8)
        check[self.stop_pos] = 1
        check[self.offers.pos] += 2
        if (check[self.offers.pos] != 2).any() or ((check[self.fire] != 1) & (check[self.fire] != 2)).any():
            raise AssertionError("judge: the sequential and the vectorised session views disagree")

    def _queue_reason(self, rule: np.ndarray, pos: np.ndarray) -> np.ndarray | int:
        """The block of the queue of `rule` at `pos` (full matches whose queue does not take an offer)."""
        busy = self.sets.busy
        if busy is None:
            return _CLOSED
        return np.where(self.bits.has(busy[pos], rule), _BUSY, _CLOSED).astype(np.int64)

    def strongest(self, pos: np.ndarray) -> np.ndarray:
        """The rule a blocked row names: the strongest full match, else later match, else score_below one."""
        f, lt, u = self.sets.full[pos], self.sets.later[pos], self.sets.unscored[pos]
        return self.bits.first(np.where(f != 0, f, np.where(lt != 0, lt, u)))

    def per_row(self, points: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(action code, reason code (-1 none), rule (-1 none), recheck_after) of every row of the table (rows
        not judged: ``none/no_rule``).

        `points`: ``rule_points`` of every rule (the moments a waiting row waits for).
        """
        st, bits, sets = self.st, self.bits, self.sets
        rows, n = st.rows, st.table.n
        action = np.full(n, A_NONE, dtype=np.int8)
        reason = np.full(n, _NO_RULE, dtype=np.int8)
        rule = np.full(n, -1, dtype=np.int16)
        recheck = np.full(n, np.nan)
        f = self.fire
        action[rows[f]] = A_OFFER
        reason[rows[f]] = -1
        rule[rows[f]] = bits.first(self.fo[f])
        q = self.qblocked
        first_full = bits.first(sets.full[q])
        rule[rows[q]] = first_full
        reason[rows[q]] = self._queue_reason(first_full, q)
        w = np.flatnonzero(self.waiting)
        w_rule, delay = wait_for(bits, sets.cross[w], st.sec[w], points)
        action[rows[w]] = A_WAIT
        reason[rows[w]] = -1
        rule[rows[w]] = w_rule
        recheck[rows[w]] = round3(delay)
        b = self.below
        rule[rows[b]] = bits.first(sets.unscored[b])
        reason[rows[b]] = _SCORE_BELOW
        stopped = rows[self.stop_pos]
        action[stopped] = A_NONE
        reason[stopped] = self.stop_reason
        rule[stopped] = self.strongest(self.stop_pos)
        recheck[stopped] = np.nan
        held = rows[self.offers.pos[self.offers.hold]]
        action[held] = A_NONE
        reason[held] = _HOLDOUT
        return action, reason, rule, recheck

    def counts(self, valid_events: int, refused: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Without a pass over every row: (reasons by rule: (rules, REASONS) counts of the rows that name a rule
        and a reason, reason totals over every row, action totals over every row: `valid_events` rows judged
        (the rows not in :attr:`st` are ``none/no_rule``) and `refused` rows)."""
        bits, sets = self.bits, self.sets
        s_pos, s_reason = self.stop_pos, self.stop_reason
        # the stateless judgement of the stopped rows, to take out of the counts: would offer, queue blocked,
        # wait, score_below, nothing
        f, u = sets.full[s_pos], sets.unscored[s_pos]
        rest = (f == 0) & (self.fo[s_pos] == 0)
        queue_blocked = (f != 0) & (self.fo[s_pos] == 0)
        waits = rest & (sets.cross[s_pos] != 0)
        below = rest & ~waits & (u != 0)
        k0, n_reasons = bits.k, len(REASONS)
        grid = np.zeros((k0, n_reasons), dtype=np.int64)

        def add(rule: np.ndarray, code: np.ndarray | int, sign: int = 1) -> None:
            if not len(rule):
                return
            if isinstance(code, int):
                grid[:, code] += sign * np.bincount(rule, minlength=k0)
            else:
                grid[:] += sign * np.bincount(rule * n_reasons + code, minlength=k0 * n_reasons).reshape(k0, n_reasons)

        q = self.qblocked
        if len(q):
            first_full = bits.first(sets.full[q])
            add(first_full, self._queue_reason(first_full, q))
        if len(self.below):
            add(bits.first(sets.unscored[self.below]), _SCORE_BELOW)
        stopped_q = s_pos[queue_blocked]
        if len(stopped_q):
            first_full = bits.first(f[queue_blocked])
            add(first_full, self._queue_reason(first_full, stopped_q), -1)
        add(bits.first(u[below]), _SCORE_BELOW, -1)
        if len(s_pos):
            add(self.strongest(s_pos), s_reason.astype(np.int64))
        s_wait = int(np.count_nonzero(waits))
        s_nothing = int(np.count_nonzero(rest)) - s_wait - int(np.count_nonzero(below))
        n_nothing = self.n_rest - self.n_wait - len(self.below)  # matched rows that neither wait nor fall short
        reasons = grid.sum(axis=0)
        reasons[_NO_RULE] = (valid_events - self.n_matched) + (n_nothing - s_nothing)
        n_hold = int(self.offers.hold.sum())
        reasons[_HOLDOUT] = n_hold
        n_offers = len(self.offers.pos) - n_hold
        waits = self.n_wait - s_wait
        actions = {"offer": n_offers, "wait": waits, "none": valid_events - n_offers - waits, "refused": refused}
        return grid, reasons, actions


# ============================================================================================ exploration


class Exploration:
    """``policy.explore`` over the rows of `st`: the sessions that explore, their random waits, and the
    propensity of every offer, as :func:`pcrules.core.policy.decide` gives them one event at a time.

    An explored row judges the rules whose conditions hold but for time on page and score (`eligible`) as if
    they matched in full once the page's wait is reached, and as waiting for that wait before. The propensity
    of an offer is read from the rows since its stretch's previous offer (see ``core.policy`` and
    docs/off-policy.md): per page the most seconds at a moment an explored session could have offered, and
    whether the production rules could have offered at such a moment.
    """

    def __init__(self, explore: Explore, st: Stretches, sets: RuleSets):
        self.explore, self.st = explore, st
        self.production = sets  # the sets as the rules are written
        page: Any
        session: Any
        self.eligible = sets.full | sets.unscored | sets.later
        columns = st.table.columns
        session = columns.view("session_id", STRING)
        page = columns.view("page", STRING)
        s_code, self.page = session.codes[st.rows], page.codes[st.rows]
        names, pages = session.uniques, page.uniques
        flags = {c: explores(names[c], explore.share) for c in np.unique(s_code).tolist()}
        self.explored = np.array([flags[c] for c in s_code.tolist()], dtype=bool) if st.m else np.zeros(0, bool)
        self.wait = np.full(st.m, np.nan)
        e = np.flatnonzero(self.explored)
        if len(e):
            pair, inverse = np.unique(np.stack([s_code[e], self.page[e]]), axis=1, return_inverse=True)
            waits = np.array([explore_wait(explore, names[a], pages[b]) for a, b in pair.T.tolist()])
            self.wait[e] = waits[inverse.ravel()]
        # P(wait > x) as core.Explore.survival gives it, for x below every wait, then at or above each one.
        self.survival_table = np.array([explore.survival(-math.inf)] + [explore.survival(w) for w in explore.waits])

    def survival(self, seconds: np.ndarray) -> np.ndarray:
        return self.survival_table[np.searchsorted(np.asarray(self.explore.waits), seconds, side="right")]

    def sets(self) -> RuleSets:
        """The sets the order of judgement reads: explored rows as described above, the others as written."""
        p, x = self.production, self.explored
        zero = p.full.dtype.type(0) if p.full.dtype != object else 0
        reached = x & (self.st.sec >= self.wait)
        ahead = x & ~reached
        full = np.where(reached, self.eligible, np.where(x, zero, p.full))
        later = np.where(ahead, self.eligible, np.where(x, zero, p.later))
        return RuleSets(full.astype(p.full.dtype), np.where(x, zero, p.unscored).astype(p.full.dtype),
                        later.astype(p.full.dtype), np.where(ahead, self.eligible, np.where(x, zero, p.cross))
                        .astype(p.full.dtype), p.open, p.busy)

    def waits(self, bits: RuleBits, action: np.ndarray, rule: np.ndarray, recheck: np.ndarray) -> None:
        """Explored rows that wait wait for their page's wait, naming the strongest eligible rule (in place)."""
        rows = self.st.rows
        w = np.flatnonzero(self.explored & (action[rows] == A_WAIT))
        rule[rows[w]] = bits.first(self.eligible[w])
        recheck[rows[w]] = round3(self.wait[w] - self.st.sec[w])

    def propensity(self, verdict: Verdict) -> tuple[np.ndarray, np.ndarray]:
        """(explored, propensity) of every offer and would-be offer of `verdict` (its order)."""
        st, p = self.st, self.production
        o_pos = verdict.offers.pos
        share = self.explore.share
        can = (self.eligible & p.open) != 0  # an explored session could offer here (its wait permitting)
        production = (p.full & p.open) != 0
        offer = np.zeros(st.m, dtype=bool)
        offer[o_pos] = True
        stopped = np.zeros(st.m, dtype=bool)
        stopped[verdict.stop_pos] = True
        # The rows between a stretch's start or its previous offer and its next offer: one segment each.
        before = np.cumsum(offer) - offer
        stretch = np.searchsorted(st.starts, np.arange(st.m), side="right") - 1
        segment = stretch * (len(o_pos) + 1) + before - before[st.starts[stretch]] if st.m else before
        seen = np.flatnonzero(can & ~stopped & ~offer)
        o_seg = segment[o_pos]
        frame = pd.DataFrame({"seg": segment[seen], "page": self.page[seen], "sec": st.sec[seen],
                              "prod": production[seen], "at": seen})
        per_page = frame.groupby(["seg", "page"], sort=False).agg(most=("sec", "max"), first=("at", "min"))
        per_page = per_page.reset_index().sort_values(["seg", "first"], kind="stable")
        seg_prod = frame.groupby("seg", sort=False)["prod"].any()
        o_page = self.page[o_pos]
        # This page's most seconds before the offer (-inf: not seen), and every other page's chance to be passed.
        key = pd.MultiIndex.from_arrays([per_page["seg"], per_page["page"]])
        here = pd.Series(per_page["most"].to_numpy(), index=key)
        most = here.reindex(pd.MultiIndex.from_arrays([o_seg, o_page])).to_numpy(dtype=float, na_value=np.nan)
        most = np.where(np.isnan(most), -np.inf, most)
        factor = self.survival(per_page["most"].to_numpy(dtype=float))
        # the offer's own page counts 1 in the product of the others (1.0 * x is x: the runtime's order kept)
        offer_page = pd.Series(o_page, index=o_seg)
        own = per_page["page"].to_numpy() == offer_page.reindex(per_page["seg"].to_numpy()).to_numpy()
        factor = np.where(own, 1.0, factor)
        others = np.ones(len(o_pos))
        if len(per_page):
            segs = per_page["seg"].to_numpy()
            starts = np.flatnonzero(np.r_[True, segs[1:] != segs[:-1]])
            products = pd.Series(np.multiply.reduceat(factor, starts), index=segs[starts])
            others = products.reindex(o_seg).to_numpy(dtype=float, na_value=np.nan)
            others = np.where(np.isnan(others), 1.0, others)
        p_explore = others * np.maximum(self.survival(most) - self.survival(st.sec[o_pos]), 0.0)
        first = production[o_pos] & ~seg_prod.reindex(o_seg).fillna(False).to_numpy(dtype=bool)
        return self.explored[o_pos], (1.0 - share) * first + share * p_explore


def first_offer_chances(st: Stretches, sets: RuleSets, policy: Policy, blocked: np.ndarray,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(per position: P(the logging policy's first offer of its stretch is made here); per stretch: P(it makes
    none)), for the policy whose rules gave `sets` (as written: not :meth:`Exploration.sets`).

    What off-policy evaluation needs for any moment a candidate may choose, not only where the log offered:
    the propensity of :meth:`Exploration.propensity` for a stretch's first offer, with the running figures
    kept over the whole stretch as if no offer had been made. `blocked`: positions a visitor block stops
    whatever the policy (a cooldown from an earlier stretch). docs/off-policy.md states the formula.
    """
    m = st.m
    stretch = np.searchsorted(st.starts, np.arange(m), side="right") - 1
    n_stretches = len(st.starts)
    production = ((sets.full & sets.open) != 0) & ~blocked
    first_prod = np.zeros(m, dtype=bool)
    prod_pos = np.flatnonzero(production)
    if len(prod_pos):
        first_prod[prod_pos[np.r_[True, stretch[prod_pos][1:] != stretch[prod_pos][:-1]]]] = True
    none_prod = np.ones(n_stretches, dtype=bool)
    none_prod[stretch[prod_pos]] = False
    explore = policy.explore
    if explore is None:
        return first_prod.astype(float), none_prod.astype(float)
    ex = Exploration(explore, st, sets)
    can = ((ex.eligible & sets.open) != 0) & ~blocked
    frame = pd.DataFrame({"k": stretch, "page": ex.page, "v": np.where(can, st.sec, -np.inf)})
    incl = frame.groupby(["k", "page"], sort=False)["v"].cummax().to_numpy()
    excl = pd.Series(incl).groupby([stretch, ex.page], sort=False).shift(1).to_numpy(dtype=float, na_value=-np.inf)
    f_in, f_ex = ex.survival(incl), ex.survival(excl)
    with np.errstate(divide="ignore"):
        log_in, log_ex = np.log(np.where(f_in > 0, f_in, 1.0)), np.log(np.where(f_ex > 0, f_ex, 1.0))
    step_log = log_in - log_ex
    step_zero = (f_in == 0).astype(np.int64) - (f_ex == 0)
    cum_log = pd.Series(step_log).groupby(stretch).cumsum().to_numpy() - step_log  # before this position
    cum_zero = pd.Series(step_zero).groupby(stretch).cumsum().to_numpy() - step_zero
    others = np.where(cum_zero - (f_ex == 0) > 0, 0.0, np.exp(cum_log - log_ex))
    p_explore = np.where(can, others * np.maximum(f_ex - ex.survival(st.sec), 0.0), 0.0)
    total_log = np.bincount(stretch, weights=step_log, minlength=n_stretches)
    total_zero = np.bincount(stretch, weights=step_zero, minlength=n_stretches)
    none_explore = np.where(total_zero > 0, 0.0, np.exp(total_log))
    share = explore.share
    return (1.0 - share) * first_prod + share * p_explore, (1.0 - share) * none_prod + share * none_explore


# ============================================================================================ per table row


@dataclass
class Judged:
    """What was decided, per row of an :class:`EventTable` (time order): the backtest's decisions, from either
    engine (this module's :class:`Verdict`, or the pure core row by row)."""

    action: np.ndarray  # int8 codes into ACTIONS
    reason: np.ndarray  # int8 codes into REASONS, -1 none
    rule: np.ndarray  # int16 rule index (spec order), -1 none
    recheck: np.ndarray  # float, NaN unless wait
    offer_rows: np.ndarray  # rows of offers and would-be offers, in order
    offer_holdout: np.ndarray  # bool per offer row
    offer_ids: list[str | None]
    metadata: dict[int, dict[str, str]] | None = None
    answers: tuple[np.ndarray, ...] = ()  # per offer: answered at, answer code, expires at
    offer_explored: np.ndarray | None = None  # per offer: its session explores (None: no exploration, all False)
    offer_propensity: np.ndarray | None = None  # per offer: P(the logging policy made it then) (None: all 1)
