"""The backtest's oracle, ``engine="policy"``: the runtime's pure core, event by event.

:func:`pcrules.core.policy.decide` and :func:`pcrules.core.policy.answer` for every row that some rule
matches now, but for its score, or later (the *candidate* rows), in time order, with the recorded answers
delivered in time order between them; rows no rule can match on their page are ``none/no_rule`` without a
Python step. Slow, and obviously the runtime's judgement: the array judge (:mod:`pcrules.analysis.judge`,
the default engine) is proven equal to it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Mapping as _MappingABC
from typing import Any

import numpy as np

from ..core.decision import OfferStatus, Reason
from ..core.events import Event
from ..core.policy import SessionState, VisitorState, answer, decide
from ..core.spec import STRING, RuleSpec
from ..matching.vector import MatchArrays
from .judge import A_NONE, ACTIONS, REASON_CODE, Judged, queue_status_at
from .table import ACCEPT, NO_ANSWER, EventTable

__all__ = ["judge_one_by_one"]

_NO_RULE = REASON_CODE[Reason.NO_RULE]


class _LazyFields(_MappingABC):
    """An event's fields, validated on first use (only an offer's metadata reads them)."""

    __slots__ = ("_table", "_row", "_data", "_known")

    def __init__(self, table: EventTable, row: int, known: Mapping[int, Mapping[str, Any]]):
        self._table, self._row, self._data, self._known = table, row, None, known

    def _load(self) -> Mapping[str, Any]:
        if self._data is None:
            known = self._known.get(self._row)
            self._data = known if known is not None else self._table.event(self._row).fields
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def judge_one_by_one(spec: RuleSpec, table: EventTable, arrays: MatchArrays, score: np.ndarray, qblock: np.ndarray,
                     timeline: Mapping[str, tuple], new_offer_id: Callable[[], str], metadata: bool,
                     bar: Any) -> Judged:
    """The runtime's pure core, ``decide`` and ``answer``, on every candidate row in time order.

    `arrays`: the matches of every rule (``VectorMatcher.match``); `score`: per row, NaN for none; `qblock`:
    (rules, rows) the block of each rule's queue, -1 open (``judge.queue_blocks``); `timeline`: the queue
    status updates (``judge.queue_timeline``).
    """
    policy = spec.policy
    valid = table.valid
    rows = np.flatnonzero(arrays.any() & valid)  # what reaches decide() with non-empty Matches
    n = table.n
    action = np.full(n, A_NONE, dtype=np.int8)
    reason = np.full(n, _NO_RULE, dtype=np.int8)
    rule = np.full(n, -1, dtype=np.int16)
    recheck = np.full(n, np.nan)
    epoch = table.epochs(rows, policy.session_idle_ttl_s) if len(rows) else np.full(n, -1, np.int64)
    vcode, _, _ = table.keys()
    answer_code, delay = table.answers()
    vis_ids = table.columns.view("visitor_id", STRING)
    ses_ids = table.columns.view("session_id", STRING)
    page_ids = table.columns.view("page", STRING)
    rule_index = {r.name: k for k, r in enumerate(spec.rules)}
    # One Matches object per distinct pattern of (full, unscored, later) bits.
    bits = np.concatenate([arrays.full, arrays.unscored, arrays.later])[:, rows]
    packed = np.ascontiguousarray(np.packbits(bits, axis=0).T)
    _, first_row, inverse = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(),
                                      return_index=True, return_inverse=True)
    matches = [arrays.matches(int(rows[i])) for i in first_row]
    sessions: dict[int, SessionState] = {}
    visitors: dict[int, VisitorState] = {}
    heap: list[tuple[float, int, int, int, OfferStatus, str]] = []
    o_row, o_hold, o_ids, o_ans, o_kind, o_exp = [], [], [], [], [], []
    o_explored: list[bool] = []
    o_propensity: list[float] = []
    meta: dict[int, dict[str, str]] = {}
    # decide() renders an offer's metadata from the event's fields: fetch those of the rows where an offer is
    # possible at all in one batch (a hint only: any other row is fetched on its own).
    maybe = np.flatnonzero((arrays.full & valid & (qblock < 0)).any(axis=0)) if len(spec.rules) else \
        np.zeros(0, np.int64)
    known = {int(j): e.fields for j, e in zip(maybe.tolist(), table.events(maybe), strict=True)}
    ts, seconds = table.ts, table.seconds
    fresh_session, fresh_visitor = SessionState(), VisitorState()
    for m, j in enumerate(rows.tolist()):
        t = float(ts[j])
        while heap and heap[0][0] <= t:  # answers and expiries delivered before this event, in time order
            at, _, key, v, status, offer_id = heapq.heappop(heap)
            state = sessions.get(key)
            if state is not None and state.pending is not None and state.pending.offer_id == offer_id:
                sessions[key], visitors[v] = answer(spec, state, visitors.get(v, fresh_visitor), status, at)
        key, v = int(epoch[j]), int(vcode[j])
        event = Event(vis_ids.uniques[vis_ids.codes[j]], ses_ids.uniques[ses_ids.codes[j]],
                      page_ids.uniques[page_ids.codes[j]], float(seconds[j]), t, _LazyFields(table, j, known))
        s = score[j]
        step = decide(spec, event, sessions.get(key, fresh_session), visitors.get(v, fresh_visitor),
                      matches[inverse[m]], queue_status_at(timeline, t) if timeline else {},
                      None if s != s else float(s), new_offer_id)
        sessions[key], visitors[v] = step.session, step.visitor
        d = step.decision
        action[j] = ACTIONS.index(d.action.value)
        reason[j] = -1 if d.reason is None else REASON_CODE[d.reason]
        rule[j] = -1 if d.rule is None else rule_index[d.rule]
        if d.recheck_after is not None:
            recheck[j] = d.recheck_after
        if d.expires_at is not None:  # an offer, or a holdout visitor's would-be offer
            kind, at = NO_ANSWER, math.nan
            c, dl = int(answer_code[j]), float(delay[j])
            if d.offer_id is not None and c != NO_ANSWER and dl == dl and t + dl < d.expires_at:
                kind, at = c, t + dl
                status = OfferStatus.ACCEPTED if c == ACCEPT else OfferStatus.DECLINED
                heapq.heappush(heap, (at, j, key, v, status, d.offer_id))
            elif d.offer_id is not None:  # the runtime expires it by event time, whether its session is seen again
                heapq.heappush(heap, (d.expires_at, j, key, v, OfferStatus.EXPIRED, d.offer_id))
            o_row.append(j)
            o_hold.append(d.offer_id is None)
            o_ids.append(d.offer_id)
            o_ans.append(at)
            o_kind.append(kind)
            o_exp.append(d.expires_at)
            o_explored.append(d.explored)
            o_propensity.append(1.0 if d.propensity is None else d.propensity)
            if metadata:
                meta[j] = dict(d.metadata)
        if bar is not None and m % 4096 == 0:
            bar.set_postfix_str(f"{m:,}/{len(rows):,} candidate rows", refresh=False)
    if bar is not None:
        bar.update()
    return Judged(action, reason, rule, recheck, np.array(o_row, dtype=np.int64), np.array(o_hold, dtype=bool),
                  o_ids, meta if metadata else None,
                  answers=(np.array(o_ans, dtype=float), np.array(o_kind, dtype=np.int8),
                           np.array(o_exp, dtype=float)),
                  offer_explored=np.array(o_explored, dtype=bool), offer_propensity=np.array(o_propensity, dtype=float))
