"""Decision quality: what a ruleset's offers are worth, and the wait time and score threshold per rule that maximise it.

The value of a policy over a history is

    value_of_accept x expected accepted chats  -  cost_of_offer x offers

subject to every queue's ``capacity_per_hour`` (the busiest clock hour's
expected chats must fit). Expected accepts are the sum, over the offers made,
of a probability: the model's score (what an analyst sees), or on a generated
world the ground truth (:func:`world_truth`), which is how a tuned policy is
judged honestly.

An accepted chat is not the goal, though: did the offer make the visitor pay
the bill, buy the plan, avoid the call? With ``effects`` (what an offer at an
event does to the goal probability: ``gain_if_accepted``,
``loss_if_not_accepted``; :func:`effects_from_log`, per page from the decision
log's holdout comparison, or an analyst's assumption; on a generated world
:func:`pcrules.world.event_effects` reads each session's latent state, the
oracle of benchmarks) an offer is worth its expected
effect ``p * gain - (1 - p) * loss`` (:func:`pcrules.uplift.goal_effect`), and
``objective="uplift"`` maximises the expected extra goals instead of accepts
(``"value"``: goals, chats and offers in money; :meth:`Economics.coefficients`).
Where the offers that are accepted most are not those that help most (on the
generated world: a cart page's easy accepts vs a struggling visitor on a bill
or support page), the two objectives choose differently.

:func:`tune` chooses for every rule its *wait time* (``seconds_on_page >= W``, never beyond the range of
time on page the model has data for: :func:`pcrules.scoring.supported_range`)
and *score threshold* (``score >= T``, or none), keeping the rule's other
conditions. The search is coordinate ascent over a grid, one rule at a time
with the others fixed, on a fast model of the policy: every session gets its
offer at its first event where some rule would fire (the rule's other
conditions hold, its queue is open, the wait and threshold are met), a holdout
visitor's would-be offer counts for nothing. That ignores what is rare with
one offer per session (a decline cooldown reaching into a later session, an
offer timing out and a second one following when ``max_offers_per_session >
1``, idle sessions); the chosen policy is then measured with the exact
:func:`pcrules.backtest.backtest`, and those are the figures reported.

:func:`compare_with_fixed_wait` is the product question: how many more
accepted chats does the tuned policy (wait + score per rule) get than the
best *fixed wait time* policy (offer after N seconds on a page, no score) at
the same number of offers? Two baselines: N tuned per rule (the strong one:
it can also switch a page off) and one N for every page (the literal one).
Both tuned families are tuned for a range of offer costs, which traces each
one's frontier of expected accepts against offers; the learned frontier is
read at the baselines' offer volumes. Expected accepts are measured by the
ground truth, for policies that see the model's scores and for policies that
see the true probability given the event (an oracle: what a perfect model
would add).

**At a budget.** ``tune(..., max_offers=N)`` (or ``max_offer_share=``, a share
of the history's sessions) maximises the objective with at most N offers: the
same search at a price per offer found by bisection (the Lagrangian), then
filled up to N; the exact backtest's count is kept within N (see :func:`tune`
for what is guaranteed). The baselines at the same budget, chosen on the same
history by the same fast model: :func:`best_global_wait` (one wait for every
rule) and :func:`best_per_page_wait` (a wait per rule, no score).
:func:`compare_at_budgets` tunes every family at each budget on one history and
judges the chosen rulesets by the truth on another (out of sample), with the
offers of each so the volumes can be seen to be equal.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core.spec import Condition, RuleSpec, load_spec, rule_tz
from ..matching.vector import VectorMatcher
from ..stats.uplift import goal_effect
from .backtest import BacktestResult, backtest
from .effects import effect_columns, resolve_effects
from .figures import hour_buckets, hour_index
from .judge import queue_blocks
from .scores import progress_bar, scores_for
from .table import EventTable

__all__ = ["Economics", "OBJECTIVES", "RuleChoice", "Tuned", "Comparison", "tune", "policy_value", "with_parameters",
           "compare_with_fixed_wait", "world_truth", "per_page_spec", "best_global_wait", "best_per_page_wait",
           "compare_at_budgets", "FAMILIES", "LoggedEffects", "effects_from_log"]

_TUNED = frozenset({"seconds_on_page", "minutes_on_page", "score"})


OBJECTIVES = ("accepts", "uplift", "value")


@dataclass(frozen=True)
class Economics:
    """What an accepted chat and an extra goal are worth and what showing an offer costs, in one unit.

    ``value_of_accept`` may be negative under the ``"value"`` objective: a chat that costs a CSR's time."""

    value_of_accept: float = 1.0
    cost_of_offer: float = 0.03
    respect_capacity: bool = True
    value_of_goal: float = 1.0

    def __post_init__(self) -> None:
        for name in ("value_of_accept", "cost_of_offer", "value_of_goal"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")

    def coefficients(self, objective: str) -> tuple[float, float, float]:
        """(per expected accept, per expected extra goal, per offer) of the value `objective` maximises:

        * ``"accepts"``: ``value_of_accept`` x expected accepts - ``cost_of_offer`` x offers (chats);
        * ``"uplift"``: the expected extra goals the offers cause, nothing else (the annoyance of an offer
          not accepted is already in its effect);
        * ``"value"``: ``value_of_goal`` x extra goals + ``value_of_accept`` x accepts - ``cost_of_offer`` x offers.
        """
        if objective == "accepts":
            return self.value_of_accept, 0.0, self.cost_of_offer
        if objective == "uplift":
            return 0.0, 1.0, 0.0
        if objective == "value":
            return self.value_of_accept, self.value_of_goal, self.cost_of_offer
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")

    def value(self, objective: str, accepts: float, goals: float | None, offers: int) -> float:
        a, g, c = self.coefficients(objective)
        if g and goals is None:
            raise ValueError(f"objective {objective!r} needs the expected uplift: run with effects=...")
        return a * accepts + g * (goals or 0.0) - c * offers


@dataclass(frozen=True)
class RuleChoice:
    rule: str
    wait_s: float | None  # None: the rule is switched off
    threshold: float | None  # None: no score condition

    @property
    def off(self) -> bool:
        return self.wait_s is None


def with_parameters(spec: RuleSpec, choices: Iterable[RuleChoice], name: str | None = None) -> RuleSpec:
    """`spec` with each chosen rule's wait (``seconds_on_page >= W``) and threshold (``score >= T``) set.

    The rule's own top-level conditions on ``seconds_on_page``, ``minutes_on_page``
    and ``score`` are replaced; a switched-off rule is left out. Validated by ``load_spec``.
    """
    source = copy.deepcopy(dict(spec.source))
    by_name = {c.rule: c for c in choices}
    rules = []
    for raw in source["rules"]:
        choice = by_name.get(raw["name"])
        if choice is None:
            rules.append(raw)
            continue
        if choice.off:
            continue
        when = {k: v for k, v in raw["when"].items() if k not in _TUNED}
        when["seconds_on_page"] = {"gte": _number(choice.wait_s)}
        if choice.threshold is not None and choice.threshold > 0:
            when["score"] = {"gte": _number(choice.threshold)}
        rules.append({**raw, "when": when})
    source["rules"] = rules
    if name is not None:
        source["name"] = name
    return load_spec(source)


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def policy_value(result: BacktestResult, economics: Economics, probability: str = "score",
                 objective: str = "accepts") -> dict[str, Any]:
    """The value of a backtested policy under `objective` (:meth:`Economics.coefficients`; by default
    accepts x value - offers x cost), and whether every queue's capacity holds.

    ``probability``: ``"score"`` (the model's expected accepts and uplift) or ``"truth"`` (the
    backtest's ``truth``). ``expected_uplift``: the expected extra goals, None when not available.
    """
    m = result.metrics
    accepts = m.get("expected_accepts") if probability == "score" else m.get("true_expected_accepts")
    accepts = 0.0 if accepts is None else float(accepts)
    goals = m.get("expected_uplift") if probability == "score" else m.get("true_expected_uplift")
    offers = int(m["offers"])
    column = "score" if probability == "score" else "truth"
    peaks, over = {}, {}
    offers_frame = result.offers[~result.offers["holdout"]]
    for name, queue in result.spec.queues.items():
        pick = offers_frame[offers_frame["queue"] == name]
        values = pick[column].to_numpy(dtype=float) if column in pick.columns else np.zeros(len(pick))
        hours = np.floor(pick["ts"].to_numpy(dtype=float) / 3600.0)
        peak = float(pd.Series(np.nan_to_num(values)).groupby(hours).sum().max()) if len(pick) else 0.0
        peaks[name] = peak
        over[name] = queue.capacity_per_hour is not None and peak > queue.capacity_per_hour
    return {"offers": offers, "expected_accepts": accepts, "expected_uplift": goals, "objective": objective,
            "value": economics.value(objective, accepts, goals, offers),
            "feasible": not any(over.values()), "peak_chats_per_hour": peaks}


# --------------------------------------------------------------------------------------------- the fast model


@dataclass
class _Totals:
    accepts: float
    worth: float  # the objective's sum over offers, but for the cost per offer
    offers: int
    load: np.ndarray  # (queues, hours): expected chats

    def __sub__(self, other: _Totals) -> _Totals:
        return _Totals(self.accepts - other.accepts, self.worth - other.worth, self.offers - other.offers,
                       self.load - other.load)

    def __add__(self, other: _Totals) -> _Totals:
        return _Totals(self.accepts + other.accepts, self.worth + other.worth, self.offers + other.offers,
                       self.load + other.load)


@dataclass
class _Candidates:
    """Rule `k`'s choices as :meth:`_Model.candidates` evaluates them: off (None) first, then wait x threshold.

    :meth:`fits` (every queue's busiest hour within its capacity) is worked out when first asked for: a search
    asks only about the choices that would be its best."""

    choices: list[tuple[float, float] | None]
    value: np.ndarray  # the objective, at the objective's own cost per offer
    offers: np.ndarray  # offers (the fast model's count)
    fit: Callable[[int], bool]

    def fits(self, i: int) -> bool:
        return self.fit(i)


class _Model:
    """The policy as "the first event of each session where some rule fires", over prepared arrays.

    Rows are the valid events, grouped by session, in time order within each. An offer at a row is worth
    ``w = a * p + b * effect`` (``p`` the probability counted as its expected accept, ``effect`` its expected
    effect on the goal probability, ``(a, b, cost)`` the objective's :meth:`Economics.coefficients`); a
    policy's value is the sum of ``w`` over its offers minus ``cost`` per offer.
    """

    def __init__(self, spec: RuleSpec, table: EventTable, scorer: Any, probability: np.ndarray,
                 waits: Sequence[float] | None, thresholds: Sequence[float] | None, fixed_wait: bool,
                 economics: Economics = Economics(), objective: str = "accepts", effects: Any = None,
                 wait_range: tuple[float, float] | None = None):
        self.spec, self.table = spec, table
        valid = table.valid
        vcode, skey, _ = table.keys()
        rows = np.flatnonzero(valid)
        rows = rows[np.argsort(skey[rows], kind="stable")]
        self.rows = rows
        n = self.n = len(rows)
        s = skey[rows]
        new = np.r_[True, s[1:] != s[:-1]] if n else np.zeros(0, dtype=bool)
        self.starts = np.flatnonzero(new)
        self.session = np.cumsum(new) - 1  # dense session number of each row
        self.seconds = table.seconds[rows]
        self.p = np.nan_to_num(np.asarray(probability, dtype=float)[rows])
        a, b, self.cost = economics.coefficients(objective)
        self.w = a * self.p
        if b:
            if effects is None:
                raise ValueError(f"objective {objective!r} needs effects (what an offer does to the goal "
                                 f"probability, e.g. pcrules.world.event_effects(world))")
            gain, loss = effects.at(rows)
            self.w = self.w + b * goal_effect(self.p, gain, loss)
        hours = hour_buckets(table.ts[rows])  # the backtest's hour buckets (capacity is per clock hour)
        self.hour = hour_index(table.ts[rows], hours)
        self.n_hours = len(hours)
        # A holdout visitor's would-be offer is worth nothing and costs nothing.
        self.counts = ~table.holdout(vcode[rows], spec.policy.holdout)
        matcher = VectorMatcher(spec)
        blocks = queue_blocks(spec, table, {})
        self.queue_names = list(spec.queues)
        self.capacity = np.array([spec.queues[q].capacity_per_hour if spec.queues[q].capacity_per_hour is not None
                                  else np.inf for q in self.queue_names], dtype=float)
        self.base, self.queue = [], []
        for rule in spec.rules:
            nodes = tuple(n for n in rule.when if not (isinstance(n, Condition) and n.field in _TUNED))
            base = matcher.all_conditions(table.columns, nodes, rule_tz(spec, rule), None)
            base &= blocks[rule.queue] < 0  # its queue must be open
            self.base.append(base[rows])
            self.queue.append(self.queue_names.index(rule.queue))
        self.score: np.ndarray | None = None
        if not fixed_wait and scorer is not None:
            want = np.zeros(table.n, dtype=bool)
            if self.base:
                want[rows[np.any(np.stack(self.base), axis=0)]] = True
            score = scores_for(table, spec, scorer, np.flatnonzero(want), False)
            self.score = np.nan_to_num(score[rows], nan=-1.0)  # no score: no score condition holds
        seen = np.unique(self.seconds)
        self.waits = np.array(sorted(set(float(w) for w in waits))) if waits is not None else (
            seen if len(seen) <= 16 else np.unique(np.quantile(seen, np.linspace(0, 1, 16))))
        if wait_range is not None and len(self.waits):
            # The model knows nothing of later moments (it scores them like the end of its data): never wait
            # for them. Earlier ones stay: offering sooner than history did is scored like its first moment.
            inside = self.waits <= wait_range[1] + 1e-9
            self.waits = self.waits[inside] if inside.any() else self.waits[:1]
        self.thresholds = []
        for base in self.base:
            if self.score is None:
                grid = np.array([0.0])
            elif thresholds is not None:
                grid = np.array(sorted(set([0.0, *map(float, thresholds)])))
            else:
                pooled = self.score[base & (self.score >= 0)]
                qs = np.quantile(pooled, [0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]) if len(pooled) else []
                grid = np.unique(np.r_[0.0, np.round(qs, 4)])
            self.thresholds.append(grid)
        # Each rule's search only touches the sessions where its other conditions hold somewhere (`sub`); what
        # the others (`rest`) contribute does not depend on its choice.
        self.sub: list[np.ndarray] = []
        self.sub_starts: list[np.ndarray] = []
        self.rest: list[np.ndarray] = []
        self.rest_starts: list[np.ndarray] = []
        for base in self.base:
            touched = np.zeros(len(self.starts) + 1, dtype=bool)
            touched[self.session[base]] = True
            inside = touched[self.session]
            sub, rest = np.flatnonzero(inside), np.flatnonzero(~inside)
            self.sub.append(sub)
            self.sub_starts.append(self._starts(sub))
            self.rest.append(rest)
            self.rest_starts.append(self._starts(rest))
        # The scores as exact ranks (for the first row of a session at or above each threshold).
        self.score_rank = None if self.score is None else np.unique(self.score, return_inverse=True)[1].astype(np.int64)
        self.n_ranks = 0 if self.score_rank is None else len(self.score_rank)
        self.n_queues = len(self.queue_names)
        self.check_capacity = bool(np.isfinite(self.capacity).any())

    def fire(self, k: int, wait: float, threshold: float, rows: np.ndarray | None = None) -> np.ndarray:
        base = self.base[k] if rows is None else self.base[k][rows]
        seconds = self.seconds if rows is None else self.seconds[rows]
        mask = base & (seconds >= wait)
        if threshold > 0 and self.score is not None:
            mask &= (self.score if rows is None else self.score[rows]) >= threshold
        return mask

    def _starts(self, rows: np.ndarray | None) -> np.ndarray:
        if rows is None:
            return self.starts
        s = self.session[rows]
        return np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(rows) else np.zeros(0, dtype=np.int64)

    def _load(self, queue: np.ndarray, hour: np.ndarray, p: np.ndarray) -> np.ndarray:
        flat = np.bincount(queue * self.n_hours + hour, weights=p, minlength=self.n_queues * self.n_hours)
        return flat.reshape(self.n_queues, self.n_hours)

    def totals(self, fires: Sequence[np.ndarray | None], rows: np.ndarray | None = None,
               starts: np.ndarray | None = None) -> _Totals:
        """Offers at the first firing event of each session (among `rows`; None: all; `starts`: their sessions'
        first positions when known)."""
        m = self.n if rows is None else len(rows)
        any_fire = np.zeros(m, dtype=bool)
        queue = np.full(m, -1, dtype=np.int64)
        for k in range(len(fires) - 1, -1, -1):  # the strongest firing rule's queue wins
            f = fires[k]
            if f is not None:
                f = f if rows is None else f[rows]
                any_fire |= f
                queue[f] = self.queue[k]
        if not m:
            return _Totals(0.0, 0.0, 0, np.zeros((self.n_queues, self.n_hours)))
        pos = np.where(any_fire, np.arange(m), m)
        first = np.minimum.reduceat(pos, self._starts(rows) if starts is None else starts)
        first = first[first < m]
        at = first if rows is None else rows[first]
        keep = self.counts[at]
        first, at = first[keep], at[keep]
        p = self.p[at]
        return _Totals(float(p.sum()), float(self.w[at].sum()), len(first), self._load(queue[first], self.hour[at], p))

    def judge(self, t: _Totals, economics: Economics) -> tuple[float, bool]:
        value = t.worth - self.cost * t.offers
        feasible = True
        if economics.respect_capacity and self.check_capacity and t.offers:
            feasible = bool((t.load.max(axis=1) <= self.capacity + 1e-9).all())
        return value, feasible

    def candidates(self, k: int, fires: Sequence[np.ndarray | None], economics: Economics) -> _Candidates:
        """Every choice of rule `k` (off, then each wait x threshold), the other rules as in `fires`.

        Only the rows where rule `k`'s other conditions hold, up to and including the first row where another
        rule fires, can change a session's offer: a choice moves the offer to the first of those rows it fires
        at, or leaves it where the other rules put it. Each choice is evaluated as that change from "off".
        """
        rows, starts = self.sub[k], self.sub_starts[k]
        others = list(fires)
        others[k] = None
        outside = self.totals(others, self.rest[k], self.rest_starts[k])
        m = len(rows)
        stronger_any = np.zeros(m, dtype=bool)
        stronger_q = np.full(m, -1, dtype=np.int64)
        weaker_any = np.zeros(m, dtype=bool)
        weaker_q = np.full(m, -1, dtype=np.int64)
        for j in range(len(fires) - 1, -1, -1):
            f = others[j]
            if f is None:
                continue
            f = f[rows]
            if j < k:
                stronger_any |= f
                stronger_q[f] = self.queue[j]
            else:
                weaker_any |= f
                weaker_q[f] = self.queue[j]
        n_sessions = len(starts)
        arange = np.arange(m)
        # Off: each session's offer is at the first row where another rule fires (m: none).
        first_other = (np.minimum.reduceat(np.where(stronger_any | weaker_any, arange, m), starts)
                       if m else np.zeros(0, dtype=np.int64))
        session_of = np.repeat(np.arange(n_sessions), np.diff(np.r_[starts, m]))
        counts, w_rows, p_rows, hour_rows = self.counts[rows], self.w[rows], self.p[rows], self.hour[rows]
        has_other = first_other < m
        at_other = np.where(has_other, first_other, 0)
        counted_other = has_other & counts[at_other]  # a holdout visitor's would-be offer counts for nothing
        worth_other = np.where(counted_other, w_rows[at_other], 0.0)
        off_worth = outside.worth + float(worth_other.sum())
        off_offers = outside.offers + int(counted_other.sum())
        need_load = economics.respect_capacity and self.check_capacity
        queue_other = np.where(stronger_any[at_other], stronger_q[at_other], weaker_q[at_other])
        p_other = np.where(counted_other, p_rows[at_other], 0.0)
        off_load = outside.load + self._load(queue_other[counted_other], hour_rows[at_other][counted_other],
                                             p_other[counted_other]) if need_load else outside.load
        # The rows where this rule can move the offer: its conditions hold, at or before the others' first.
        pos = np.flatnonzero(self.base[k][rows] & (arange <= first_other[session_of]))
        c_session = session_of[pos]
        c_seconds = self.seconds[rows][pos]
        c_rank = None if self.score_rank is None else self.score_rank[rows][pos]
        c_score = None if self.score is None else self.score[rows][pos]
        c_counted = counts[pos]
        c_worth = np.where(c_counted, w_rows[pos], 0.0)
        choices: list[tuple[float, float] | None] = [None]
        value, offers = [off_worth - self.cost * off_offers], [off_offers]
        moves: list[np.ndarray | None] = [None]  # per choice, the positions (in `pos`) its offers move to
        for wait in self.waits.tolist():
            idx = np.flatnonzero(c_seconds >= wait)  # the rows where this wait is met, in session order
            sess = c_session[idx]
            new_session = np.r_[True, sess[1:] != sess[:-1]] if len(idx) else np.zeros(0, dtype=bool)
            scores = None
            if c_rank is not None and c_score is not None:
                # A row can be a session's first at or above some threshold only where its score is a record
                # of the session so far (the first row of the session always is).
                key = c_rank[idx] + sess * (self.n_ranks + 1)
                best = np.maximum.accumulate(key) if len(key) else key
                record = new_session.copy()
                record[1:] |= key[1:] > best[:-1]
                idx, new_session = idx[record], new_session[record]
                scores = c_score[idx]
            seg = np.flatnonzero(new_session)
            n_idx = len(idx)
            for threshold in self.thresholds[k].tolist():
                if threshold > 0 and scores is not None:
                    # records rise within a session: the first at or above the threshold
                    firsts = np.minimum.reduceat(np.where(scores >= threshold, np.arange(n_idx), n_idx), seg) \
                        if len(seg) else seg
                    chosen = idx[firsts[firsts < n_idx]]
                else:
                    chosen = idx[seg]
                moved = c_session[chosen]  # the sessions whose offer this choice moves
                n = off_offers + int(c_counted[chosen].sum()) - int(counted_other[moved].sum())
                choices.append((float(wait), float(threshold)))
                value.append(off_worth + float(c_worth[chosen].sum()) - float(worth_other[moved].sum())
                             - self.cost * n)
                offers.append(n)
                moves.append(chosen)
        c_queue = np.where(stronger_any[pos], stronger_q[pos], self.queue[k])
        known: dict[int, bool] = {}

        def fit(i: int) -> bool:
            if not need_load or not offers[i]:
                return True
            if i not in known:
                load = off_load
                chosen = moves[i]
                if chosen is not None:
                    moved = c_session[chosen]
                    mine = c_counted[chosen]
                    r = pos[chosen][mine]
                    gone = moved[counted_other[moved]]
                    load = (off_load + self._load(c_queue[chosen][mine], hour_rows[r], p_rows[r])
                            - self._load(queue_other[gone], hour_rows[at_other[gone]], p_other[gone]))
                known[i] = bool((load.max(axis=1) <= self.capacity + 1e-9).all())
            return known[i]

        return _Candidates(choices, np.array(value, dtype=float), np.array(offers, dtype=np.int64), fit)

    def search_rule(self, k: int, fires: list[np.ndarray | None], economics: Economics, offer_cost: float = 0.0,
                    max_offers: int | None = None) -> tuple[tuple[float, float] | None, float, int]:
        """The best (wait, threshold) or None (off) for rule `k`, the others as in `fires`: (choice, value, evals).

        ``offer_cost``: a price per offer added to the objective's own (the Lagrangian of a budget);
        ``max_offers``: choices with more offers are not taken. The value returned includes ``offer_cost``.
        Ties go to the earlier choice (off, then shorter waits, then lower thresholds)."""
        cands = self.candidates(k, fires, economics)
        adjusted = cands.value - offer_cost * cands.offers
        best: tuple[float, tuple[float, float] | None] = (-math.inf, None)
        for i, choice in enumerate(cands.choices):
            if adjusted[i] <= best[0] + 1e-9:
                continue
            if (max_offers is not None and cands.offers[i] > max_offers) or not cands.fits(i):
                continue
            best = (float(adjusted[i]), choice)
        return best[1], best[0], len(cands.choices)


# --------------------------------------------------------------------------------------------- tuning


@dataclass
class Tuned:
    """A tuned policy: the choice per rule, the tuned spec and its exact backtest.

    With a budget: ``max_offers`` (the number of offers allowed on the history, the exact backtest's count),
    ``model_offers`` (the fast model's count of the chosen policy) and ``offer_cost`` (the price per offer the
    Lagrangian search settled on; 0 when the budget does not bind)."""

    spec: RuleSpec
    choices: tuple[RuleChoice, ...]
    result: BacktestResult
    value: dict[str, Any]
    economics: Economics
    probability: str
    search_value: float
    evaluations: int
    objective: str = "accepts"
    max_offers: int | None = None
    model_offers: int | None = None
    offer_cost: float = 0.0

    @property
    def offers(self) -> int:
        """Offers of the chosen policy on the history it was tuned on (the exact backtest's count)."""
        return int(self.result.metrics["offers"])

    def table(self) -> pd.DataFrame:
        rows = []
        per_rule = self.result.per_rule
        for c in self.choices:
            row: dict[str, Any] = {"rule": c.rule, "wait_s": c.wait_s, "score_threshold": c.threshold}
            if not c.off and c.rule in per_rule.index:
                row["offers"] = int(per_rule.loc[c.rule, "offers"])
                for col in ("expected_accepts", "true_expected", "expected_uplift", "true_expected_uplift",
                            "accepted"):
                    if col in per_rule.columns:
                        row[col] = float(per_rule.loc[c.rule, col])
            rows.append(row)
        return pd.DataFrame(rows).set_index("rule")


_Params = list[tuple[float, float] | None]  # per rule: (wait, threshold) or None (off)

# The budget search: bisection steps on the price per offer, how close below the budget (or how narrow the
# price's bracket, relatively) ends them, and how close the exact backtest's count must come before the fast
# model's budget is corrected upwards.
_BISECTION_STEPS = 24
_CLOSE_ENOUGH = 0.03
_EXACT_TOLERANCE = 0.02


class _Search:
    """Coordinate ascent over the rules on the fast model, optionally at a price per offer or within a budget.

    Remembers every policy its price search found (a later budget on the same history starts from them)."""

    def __init__(self, model: _Model, economics: Economics, max_sweeps: int):
        self.model, self.economics, self.max_sweeps = model, economics, max_sweeps
        self.evaluations = 0
        self._start: _Params | None = None
        self._priced: list[tuple[float, int, float, _Params]] = []  # (price, offers, objective, policy)

    def fires(self, params: _Params) -> list[np.ndarray | None]:
        return [None if c is None else self.model.fire(k, *c) for k, c in enumerate(params)]

    def measure(self, params: _Params) -> tuple[float, int, bool]:
        """(the objective, offers, whether every queue's capacity holds) of `params` on the fast model."""
        t = self.model.totals(self.fires(params))
        value, feasible = self.model.judge(t, self.economics)
        return value, t.offers, feasible

    def ascend(self, params: _Params, offer_cost: float = 0.0, max_offers: int | None = None) -> _Params:
        """Coordinate ascent from `params` of the objective less ``offer_cost`` per offer, taking only choices
        with at most ``max_offers`` offers (then `params` must be within it). A rule is searched again only
        when another rule changed since its last search (else its best is what it was)."""
        params = list(params)
        fires = self.fires(params)
        value, offers, _ = self.measure(params)
        value -= offer_cost * offers
        step, changed_at = 0, 0
        searched_at = [-1] * len(params)
        for _ in range(self.max_sweeps):
            changed = False
            for k in range(len(params)):
                step += 1
                if searched_at[k] >= changed_at:
                    continue
                searched_at[k] = step
                choice, best, count = self.model.search_rule(k, fires, self.economics, offer_cost, max_offers)
                self.evaluations += count
                if choice != params[k] and best > value + 1e-9:
                    params[k] = choice
                    fires[k] = None if choice is None else self.model.fire(k, *choice)
                    value = best
                    changed, changed_at = True, step
                    searched_at[k] = step
            if not changed:
                break
        return params

    def priced(self, start: _Params, price: float) -> tuple[int, _Params]:
        """The search at `price` per offer, from the policy found at the nearest lower price (more offers: the
        search prunes them; it keeps combinations of rules that adding one rule at a time misses)."""
        below = [x for x in self._priced if x[0] < price]
        warm: _Params = max(below, key=lambda x: x[0])[3] if below else [None] * len(start)
        params = self.ascend(warm, price)
        value, offers, _ = self.measure(params)
        self._priced.append((price, offers, value, params))
        return offers, params

    def within(self, start: _Params, limit: int) -> tuple[_Params, float]:
        """The best policy found with at most `limit` offers (the fast model's count), and its price per offer.

        The Lagrangian: the unconstrained search first; when it makes more than `limit` offers, the search at a
        price per offer (on top of the objective's own; a higher price, fewer offers), the price found by a
        safeguarded false position on log(offers) (bisection when it stalls) until the offers are within 3 %
        below `limit` or the price is known to 3 %. Where the offers jump over the budget as the price moves
        (volumes no price reaches), that leaves a gap, so then: coordinate ascents taking only choices within
        `limit`, of the objective itself from the best priced policy within the budget, from `start` (when
        within) and from the best one-wait policy, and greedy ones (the choice adding the most per added
        offer) from the best priced policy and from nothing; the best of them."""
        if self._start != start:
            self._start = list(start)
            unconstrained = self.ascend(start)
            value, offers, _ = self.measure(unconstrained)
            top = max(float(np.max(self.model.w, initial=0.0)) - self.model.cost, 0.0) + 1e-6
            self._priced = [(0.0, offers, value, unconstrained), (top, 0, 0.0, [None] * len(start))]
        zero = min(self._priced, key=lambda x: x[0])
        if zero[1] <= limit:
            return zero[3], 0.0
        k_rules = len(start)
        side = 0
        for _ in range(_BISECTION_STEPS):
            lo = max((x for x in self._priced if x[1] > limit), key=lambda x: x[0])
            hi = min((x for x in self._priced if x[1] <= limit and x[0] > lo[0]), key=lambda x: x[0])
            if hi[1] >= limit * (1.0 - _CLOSE_ENOUGH) or hi[0] - lo[0] <= _CLOSE_ENOUGH * hi[0]:
                break
            price = (lo[0] + hi[0]) / 2
            if abs(side) < 2:  # false position on log(offers), kept inside the bracket's middle 90 %
                a, b = math.log(lo[1]), math.log(max(hi[1], 1))
                guess = lo[0] + (hi[0] - lo[0]) * (a - math.log(max(limit, 1))) / max(a - b, 1e-12)
                price = min(max(guess, lo[0] + 0.05 * (hi[0] - lo[0])), hi[0] - 0.05 * (hi[0] - lo[0]))
            offers, _ = self.priced(start, price)
            above = offers <= limit
            side = (side + 1 if side >= 0 else 1) if above else (side - 1 if side <= 0 else -1)
            if abs(side) >= 3:
                side = 0
        inside = [x for x in self._priced if x[1] <= limit]
        price, _, _, best = max(inside, key=lambda x: (x[2], -x[0]))
        starts = [best] + ([list(start)] if any(start) and self.measure(start)[1] <= limit else [])
        # The coordinate ascent can stick where one rule takes the sessions others would use better (a move of
        # one rule alone loses): start it from the best one-wait policy too, so it is never worse than that.
        starts += self.one_wait(limit)[:1]
        # Fill up to the budget, two ways: the ascent of the objective within it (each rule's best choice), and
        # the greedy one (each rule's choice adding the most per added offer: the budget goes to the offers
        # worth most), also from nothing.
        filled = [self.ascend(s, 0.0, limit) for s in starts]
        filled += [self.fill(s, limit) for s in [best] + ([[None] * k_rules] if any(best) else [])]
        return max(filled, key=lambda p: self.measure(p)[0]), price

    def fill(self, params: _Params, limit: int) -> _Params:
        """Coordinate ascent within `limit` offers taking, per rule, the choice that gains the most per offer it
        adds (one that gains without adding offers first), until no choice gains; `params` within `limit`."""
        params = list(params)
        fires = self.fires(params)
        value, offers, _ = self.measure(params)
        step, changed_at = 0, 0
        searched_at = [-1] * len(params)
        for _ in range(4 * self.max_sweeps):
            changed = False
            for k in range(len(params)):
                step += 1
                if searched_at[k] >= changed_at:  # nothing moved since its last search: nothing gains
                    continue
                searched_at[k] = step
                cands = self.model.candidates(k, fires, self.economics)
                self.evaluations += len(cands.choices)
                best: tuple[tuple[int, float], int] | None = None
                for i, choice in enumerate(cands.choices):
                    gain = float(cands.value[i]) - value
                    if gain <= 1e-9 or choice == params[k] or cands.offers[i] > limit:
                        continue
                    added = int(cands.offers[i]) - offers
                    key = (1, gain) if added <= 0 else (0, gain / added)
                    if (best is None or key > best[0]) and cands.fits(i):
                        best = (key, i)
                if best is not None:
                    i = best[1]
                    choice = cands.choices[i]
                    params[k] = choice
                    fires[k] = None if choice is None else self.model.fire(k, *choice)
                    value, offers = float(cands.value[i]), int(cands.offers[i])
                    changed, changed_at = True, step
                    searched_at[k] = step - 1  # its own move may open another gain for it
            if not changed:
                break
        return params

    def one_wait(self, limit: int | None) -> list[_Params]:
        """The policies with one wait for every rule (no threshold) within `limit` offers (None: any) and every
        queue's capacity, best first (ties: the shorter wait)."""
        options = []
        for wait in self.model.waits.tolist():
            params: _Params = [(float(wait), 0.0)] * len(self.model.base)
            value, offers, feasible = self.measure(params)
            self.evaluations += 1
            if feasible and (limit is None or offers <= limit):
                options.append((value, -wait, params))
        return [p for _, _, p in sorted(options, key=lambda x: (x[0], x[1]), reverse=True)]


def _inputs(spec: RuleSpec, events: EventTable | pd.DataFrame, scorer: Any, probability: str | np.ndarray,
            truth: np.ndarray | str | None, effects: Any,
            ) -> tuple[EventTable, Any, np.ndarray | None, np.ndarray, str]:
    """(table, effects resolved, truth per event in the input's order, the probability counted per row of the
    table, its label) for :func:`tune` and the baselines."""
    table = events if isinstance(events, EventTable) else EventTable(
        events, exclude=((truth,) if isinstance(truth, str) else ()) + effect_columns(effects))
    resolved = resolve_effects(table, effects)
    truth_values = _truth_array(table, truth)
    if isinstance(probability, str):
        if probability == "truth":
            if truth_values is None:
                raise ValueError("probability='truth' needs truth")
            p = truth_values if table.order is None else truth_values[table.order]
        elif probability == "score":
            if scorer is None:
                raise ValueError("probability='score' needs a scorer")
            p = scores_for(table, spec, scorer, np.flatnonzero(table.valid), False)
        else:
            raise ValueError(f"probability must be 'score', 'truth' or an array, got {probability!r}")
        return table, resolved, truth_values, p, probability
    p = np.asarray(probability, dtype=float)
    if table.order is not None:
        p = p[table.order]
    return table, resolved, truth_values, p, "custom"


def _supported_wait(scorer: Any, label: str) -> tuple[float, float] | None:
    """The waits the search may try when it counts the model's P(accept): the model's support on
    ``seconds_on_page`` (outside it the model scores every moment like the nearest end: it has no data there)."""
    if label != "score" or scorer is None:
        return None
    from ..scoring import supported_range

    found = supported_range(scorer, "seconds_on_page")
    return None if found is None else (float(found[0]), float(found[1]))


def _limit(model: _Model | None, max_offers: Any, max_offer_share: Any) -> int | None:
    """The budget in offers: ``max_offers``, or ``max_offer_share`` of the history's sessions (rounded down);
    without `model` only checked."""
    if max_offers is not None and max_offer_share is not None:
        raise ValueError("give max_offers or max_offer_share, not both")
    if max_offers is not None:
        if isinstance(max_offers, bool) or not isinstance(max_offers, (int, np.integer)) or max_offers < 0:
            raise ValueError(f"max_offers: expected a whole number of offers >= 0, got {max_offers!r}")
        return int(max_offers)
    if max_offer_share is not None:
        if (isinstance(max_offer_share, bool) or not isinstance(max_offer_share, (int, float, np.floating))
                or not 0.0 <= float(max_offer_share) <= 1.0):
            raise ValueError(f"max_offer_share: expected a share of sessions in [0, 1], got {max_offer_share!r}")
        return 0 if model is None else int(math.floor(float(max_offer_share) * len(model.starts) + 1e-9))
    return None


def _choices(spec: RuleSpec, params: _Params) -> tuple[RuleChoice, ...]:
    return tuple(RuleChoice(r.name, None, None) if params[k] is None else
                 RuleChoice(r.name, params[k][0], params[k][1] if params[k][1] > 0 else None)
                 for k, r in enumerate(spec.rules))


def tune(spec: RuleSpec, events: EventTable | pd.DataFrame, scorer: Any = None, *,
         economics: Economics = Economics(), probability: str | np.ndarray = "score",
         truth: np.ndarray | str | None = None, fixed_wait: bool = False, waits: Sequence[float] | None = None,
         thresholds: Sequence[float] | None = None, start: Sequence[RuleChoice] | None = None,
         max_sweeps: int = 4, name: str | None = None, objective: str = "accepts", effects: Any = None,
         max_offers: int | None = None, max_offer_share: float | None = None) -> Tuned:
    """Per rule, the wait time and score threshold (or off) that maximise the value under the queues' capacity
    (and, with a budget, at most that many offers).

    ``scorer``: the model (or an array of scores per event, e.g. an oracle).
    ``probability``: what the search counts as an offer's expected accept:
    ``"score"`` (the scorer's), ``"truth"`` (``truth``) or an array per event.
    ``objective``: what the value is (:meth:`Economics.coefficients`): ``"accepts"``
    (expected accepted chats, less a cost per offer), ``"uplift"`` (the expected extra
    goals the offers cause) or ``"value"`` (both, and the cost per offer, in money).
    ``effects``: what an offer at each event does to the goal probability
    (``backtest.resolve_effects``); needed by ``"uplift"`` and ``"value"``, and reported
    (expected uplift) whenever given. What production has is effects estimated from the
    decision log's holdout comparisons (:func:`effects_from_log`: per page, no latent
    state). ``pcrules.world.event_effects(world)`` reads each session's latent
    ``needs_help``, which no runtime sees: it is the oracle of benchmarks, not an input
    to tune a real ruleset with.
    ``fixed_wait``: search wait times only, no score condition (the baseline family).
    ``start``: choices to start from (default: every rule off). ``truth`` (an
    array per event in the input's order, or a column) is also summed in the exact backtest.

    **A budget**: ``max_offers`` (offers on this history) or ``max_offer_share`` (a share
    of its sessions, rounded down). The search is the Lagrangian of "maximise the
    objective with at most N offers": the coordinate ascent with a price per offer
    added to the objective's own, the price found by bisection (sped up by false
    position) so the fast model's offers come close to N from below (within 3 %, or
    the price known to 3 %); then coordinate ascents that only take choices within N
    fill what the price left (the offers can jump over N as the price moves): of the
    objective itself from that policy, from ``start`` and from the best one-wait
    policy within N, and greedy ones (each rule's choice adding the most per added
    offer) from that policy and from nothing; the best of them, which is never worse,
    on the fast model, than ``start`` or one wait for every rule within N, and comes as
    close to N as the grid of waits and thresholds allows. The exact backtest then counts the real offers,
    which can differ from the fast model's (a decline cooldown reaching a later
    session, an offer timing out): if they exceed N, or fall short by more than 2 %
    while the budget binds, the fast model's budget is corrected by the difference and
    the search run again (a few rounds). Guaranteed: the reported policy's offers, by
    the exact backtest on this history (``Tuned.offers``), are at most N; with every
    rule off as the last resort. Not guaranteed: the best policy within N (the search
    is a local one, and the Lagrangian skips volumes its price cannot reach, which the
    last ascent only partly fills), nor the volume on other traffic (the same ruleset
    makes its own count there). Without a budget the objective alone decides the
    volume (as before). ``Tuned.offer_cost`` is the price found (0: the budget does
    not bind), ``Tuned.model_offers`` the fast model's count.
    """
    economics.coefficients(objective)  # a clear error for an unknown objective, before any work
    _limit(None, max_offers, max_offer_share)  # ... and for a wrong budget
    table, resolved, truth_values, p, label = _inputs(spec, events, scorer, probability, truth, effects)
    # The tuned family waits only where the model has data (a score threshold can bring the volume down);
    # the wait-only baselines keep every wait: a long wait is how they meet a small budget.
    model = _Model(spec, table, scorer, p, waits, thresholds, fixed_wait, economics, objective, resolved,
                   None if fixed_wait else _supported_wait(scorer, label))
    limit = _limit(model, max_offers, max_offer_share)
    k_rules = len(spec.rules)
    params: _Params = [None] * k_rules
    if start is not None:
        given = {c.rule: c for c in start}
        for k, rule in enumerate(spec.rules):
            c = given.get(rule.name)
            if c is not None and not c.off:
                params[k] = (float(c.wait_s), float(c.threshold or 0.0))
    search = _Search(model, economics, max_sweeps)
    if not search.measure(params)[2]:  # a start that breaks capacity: start from nothing
        params = [None] * k_rules

    def run(chosen: _Params) -> BacktestResult:
        return backtest(with_parameters(spec, _choices(spec, chosen), name=name), table, scorer, truth=truth_values,
                        effects=resolved)

    price = 0.0
    if limit is None:
        params = search.ascend(params)
        result = run(params)
    else:
        params, price, result = _within_exact(search, params, limit, run)
    choices = _choices(spec, params)
    value, model_offers, _ = search.measure(params)
    measured = policy_value(result, economics, "truth" if label == "truth" else "score", objective)
    return Tuned(result.spec, choices, result, measured, economics, label, value, search.evaluations, objective,
                 limit, model_offers, price)


def _within_exact(search: _Search, start: _Params, limit: int,
                  run: Callable[[_Params], BacktestResult]) -> tuple[_Params, float, BacktestResult]:
    """:meth:`_Search.within` until the exact backtest's count is within `limit` (see :func:`tune`)."""
    target = limit
    tried: list[tuple[_Params, float, BacktestResult]] = []
    upward = 0
    for _ in range(8):
        params, price = search.within(start, target)
        result = run(params)
        tried.append((params, price, result))
        real, modelled = int(result.metrics["offers"]), search.measure(params)[1]
        if real <= limit:
            if price == 0.0 or limit - real <= _EXACT_TOLERANCE * limit or upward >= 2:
                break
            upward += 1
            again = modelled + (limit - real)
            if again <= target:
                break  # the grid gives nothing between: done
        else:
            again = min(modelled - (real - limit), target - 1)
        target = max(again, 0)
    within = [t for t in tried if int(t[2].metrics["offers"]) <= limit]
    if not within:  # the last resort: every rule off
        off: _Params = [None] * len(start)
        return off, 0.0, run(off)
    return max(within, key=lambda t: search.measure(t[0])[0])


def _budget_args(budget: int | float | None) -> dict[str, Any]:
    """``budget``: an int is a number of offers, a float a share of the history's sessions."""
    if budget is None:
        return {}
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        return {"max_offers": int(budget)}
    if isinstance(budget, (float, np.floating)):
        return {"max_offer_share": float(budget)}
    raise ValueError(f"budget: expected a number of offers (int) or a share of sessions (float), got {budget!r}")


def best_per_page_wait(spec: RuleSpec, events: EventTable | pd.DataFrame, budget: int | float | None,
                       scorer: Any = None, **kw: Any) -> Tuned:
    """The baseline an analyst sets by hand, done as well as the history allows: a wait per rule (a page, with
    :func:`per_page_spec`), no score, each rule possibly off, the best at `budget` (an int: offers; a float: a
    share of the sessions) by the same objective and probability as :func:`tune` (which it is, with
    ``fixed_wait=True``; keyword arguments go there). Chosen on the history it is given (in sample)."""
    return tune(spec, events, scorer, fixed_wait=True, **_budget_args(budget), **kw)


def best_global_wait(spec: RuleSpec, events: EventTable | pd.DataFrame, budget: int | float | None,
                     scorer: Any = None, *, economics: Economics = Economics(),
                     probability: str | np.ndarray = "score", truth: np.ndarray | str | None = None,
                     waits: Sequence[float] | None = None, name: str | None = None, objective: str = "accepts",
                     effects: Any = None) -> Tuned:
    """The literal baseline: one wait for every rule (Pega's single App Studio wait time), no score, every rule
    on; of the waits of the grid (as :func:`tune`'s), the best by the objective with at most `budget` offers by
    the exact backtest (an int: offers; a float: a share of the sessions) and every queue's capacity. Every
    rule off when no wait fits. Chosen on the history it is given (in sample), on the fast model of
    :func:`tune`, then measured by the exact backtest."""
    economics.coefficients(objective)
    args = _budget_args(budget)
    _limit(None, args.get("max_offers"), args.get("max_offer_share"))
    table, resolved, truth_values, p, label = _inputs(spec, events, scorer, probability, truth, effects)
    model = _Model(spec, table, scorer, p, waits, None, True, economics, objective, resolved)
    limit = _limit(model, args.get("max_offers"), args.get("max_offer_share"))
    search = _Search(model, economics, 1)
    result = None
    chosen: _Params = [None] * len(spec.rules)
    for params in search.one_wait(limit):
        result = backtest(with_parameters(spec, _choices(spec, params), name=name), table, scorer,
                          truth=truth_values, effects=resolved)
        if limit is None or int(result.metrics["offers"]) <= limit:
            chosen = params
            break
        result = None
    if result is None:
        result = backtest(with_parameters(spec, _choices(spec, chosen), name=name), table, scorer,
                          truth=truth_values, effects=resolved)
    value, model_offers, _ = search.measure(chosen)
    measured = policy_value(result, economics, "truth" if label == "truth" else "score", objective)
    return Tuned(result.spec, _choices(spec, chosen), result, measured, economics, label, value,
                 search.evaluations, objective, limit, model_offers, 0.0)


def _truth_array(table: EventTable, truth: np.ndarray | str | pd.Series | None) -> np.ndarray | None:
    """Truth per event in the input's order (what backtest(truth=...) takes)."""
    if truth is None:
        return None
    if isinstance(truth, str):
        values = table.frame[truth].to_numpy(dtype=float)
        if table.order is not None:  # back to input order
            out = np.empty_like(values)
            out[table.order] = values
            return out
        return values
    return np.asarray(truth, dtype=float)


# --------------------------------------------------------------------------------------------- the comparison


@dataclass
class Comparison:
    """Tuned (wait + score per rule) against fixed-wait policies on one history, at equal offer volumes.

    Two kinds of knowledge: ``model`` (the policies see the model's scores: what
    production has) and ``oracle`` (they see the true P(accept) given the event:
    how much a perfect model would add). Expected accepts are measured by the
    ground truth (``truth``) and by the model's own scores (``model``).
    """

    frontier: pd.DataFrame  # one row per (family, knowledge, cost): offers, expected accepts (model, truth), value
    at_equal_offers: pd.DataFrame  # per fixed-wait policy: the learned frontier read at its offer volume
    best: dict[str, Tuned]  # the value-maximising policy per (family, knowledge) at the given economics
    economics: Economics

    def ratio(self, knowledge: str = "model", measured_by: str = "truth", how: str = "median",
              baseline: str = "per_rule_wait") -> float | None:
        """Ratio of expected accepts, learned over fixed wait, at equal offers (median or max over the baseline's
        frontier). ``baseline``: ``per_rule_wait`` (a wait tuned per rule) or ``global_wait`` (one N everywhere)."""
        eq = self.at_equal_offers
        pick = eq[(eq["knowledge"] == knowledge) & (eq["measured_by"] == measured_by) & (eq["baseline"] == baseline)]
        ratio = pick["ratio"].dropna()
        if not len(ratio):
            return None
        return float(ratio.median() if how == "median" else ratio.max())

    def at_best(self, knowledge: str = "model", measured_by: str = "truth") -> dict[str, Any] | None:
        """The comparison at the offer volume of the best fixed-wait policy (at the given economics)."""
        fixed = self.best.get(f"fixed_wait ({knowledge})")
        learned = self.best.get(f"learned ({knowledge})")
        if fixed is None:
            return None
        col = "expected_accepts_truth" if measured_by == "truth" else "expected_accepts_model"
        curve_rows = self.frontier[(self.frontier["family"] == "learned") & (self.frontier["knowledge"] == knowledge)]
        offers = fixed.result.metrics["offers"]
        base = _measured(fixed.result, measured_by)
        at = _interpolate(_frontier_curve(curve_rows["offers"].to_numpy(float), curve_rows[col].to_numpy(float)),
                          float(offers))
        return {"offers": offers, "fixed_wait_accepts": base, "learned_accepts": at,
                "ratio": at / base if at is not None and base else None,
                "best_learned_offers": None if learned is None else learned.result.metrics["offers"],
                "best_learned_accepts": None if learned is None else _measured(learned.result, measured_by)}

    def summary(self) -> str:
        e = self.economics
        lines = [f"decision quality: value of an accept {e.value_of_accept:g}, cost of an offer {e.cost_of_offer:g}, "
                 f"capacity {'respected' if e.respect_capacity else 'ignored'}"]
        for key, tuned in self.best.items():
            m = tuned.result.metrics
            lines.append(f"  best {key:<22} offers {m['offers']:>7,}  expected accepts: truth "
                         f"{m.get('true_expected_accepts') or 0:>8,.1f}, model {m.get('expected_accepts') or 0:>8,.1f}"
                         f"  value {tuned.value['value']:>9,.1f}  feasible {tuned.value['feasible']}")
        lines.append("learned (wait + score per rule) over fixed-wait policies, expected accepts at equal offers:")
        for baseline in ("per_rule_wait", "global_wait"):
            for knowledge in ("model", "oracle"):
                for measured_by in ("truth", "model"):
                    med = self.ratio(knowledge, measured_by, "median", baseline)
                    top = self.ratio(knowledge, measured_by, "max", baseline)
                    if med is None:
                        continue
                    extra = ""
                    if baseline == "per_rule_wait":
                        best = self.at_best(knowledge, measured_by)
                        if best and best["ratio"] is not None:
                            extra = (f"; at the best per-rule-wait policy's {best['offers']:,} offers "
                                     f"{best['ratio']:.3f}x")
                    lines.append(f"  vs {baseline:<13} {knowledge:<6} scores, measured by {measured_by:<5}: "
                                 f"median {med:.3f}x, max {top:.3f}x{extra}")
        lines.append(self.at_equal_offers.to_string(index=False, float_format=lambda x: f"{x:,.3f}"))
        return "\n".join(lines)


def _measured(result: BacktestResult, measured_by: str) -> float:
    key = "true_expected_accepts" if measured_by == "truth" else "expected_accepts"
    return float(result.metrics.get(key) or 0.0)


def compare_with_fixed_wait(spec: RuleSpec, events: EventTable | pd.DataFrame, scorer: Any, truth: Any, *,
                            oracle: Any = None, economics: Economics = Economics(),
                            costs: Sequence[float] | None = None, waits: Sequence[float] | None = None,
                            max_sweeps: int = 3) -> Comparison:
    """Tune both families for each offer cost in `costs` and compare them at equal offer volumes.

    ``truth``: true P(accept) per event (array in the input's order, or a column)
    that measures every policy. ``oracle``: optionally the true P(accept) given
    only the event (``world_truth(world, oracle=True)``), used as a perfect
    model's scores. Each family is tuned on what its scores say; the learned
    family starts from the fixed-wait choice at the same cost, so it can only
    add score thresholds where they pay.
    """
    table = events if isinstance(events, EventTable) else EventTable(
        events, exclude=tuple(c for c in (truth, oracle) if isinstance(c, str)))
    truth_values = _truth_array(table, truth)
    costs = list(costs) if costs is not None else [0.01, 0.02, 0.03, 0.05, 0.07, 0.09, 0.11, 0.14, 0.18, 0.24]
    kinds = [("model", scorer)] + ([("oracle", _truth_array(table, oracle))] if oracle is not None else [])
    rows, best = [], {}
    for knowledge, scores in kinds:
        runs: dict[str, list[Tuned]] = {"fixed_wait": [], "learned": []}
        for cost in costs:
            econ = Economics(economics.value_of_accept, cost, economics.respect_capacity)
            fixed = tune(spec, table, scores, economics=econ, probability="score", truth=truth_values,
                         fixed_wait=True, waits=waits, max_sweeps=max_sweeps)
            learned = tune(spec, table, scores, economics=econ, probability="score", truth=truth_values,
                           waits=waits, start=fixed.choices, max_sweeps=max_sweeps)
            for family, tuned in (("fixed_wait", fixed), ("learned", learned)):
                runs[family].append(tuned)
                m = tuned.result.metrics
                rows.append({"family": family, "knowledge": knowledge, "cost_of_offer": cost, "offers": m["offers"],
                             "expected_accepts_model": m.get("expected_accepts") or 0.0,
                             "expected_accepts_truth": m.get("true_expected_accepts") or 0.0,
                             "feasible": tuned.value["feasible"]})
        for family, tuned_list in runs.items():
            scored = [(policy_value(t.result, economics, "score"), t) for t in tuned_list]
            feasible = [x for x in scored if x[0]["feasible"]] or scored
            best[f"{family} ({knowledge})"] = max(feasible, key=lambda x: x[0]["value"])[1]
    # The literal baseline: one wait N on every page (every rule on, no score), for each N of the grid.
    grid = np.array(sorted(set(float(w) for w in waits))) if waits is not None else \
        _Model(spec, table, None, np.zeros(table.n), None, None, True).waits
    global_runs = []
    for n_s in grid.tolist():
        choices = [RuleChoice(r.name, n_s, None) for r in spec.rules]
        result = backtest(with_parameters(spec, choices), table, scorer, truth=truth_values)
        global_runs.append(result)
        m = result.metrics
        rows.append({"family": "global_wait", "knowledge": "none", "cost_of_offer": None, "wait_s": n_s,
                     "offers": m["offers"], "expected_accepts_model": m.get("expected_accepts") or 0.0,
                     "expected_accepts_truth": m.get("true_expected_accepts") or 0.0,
                     "feasible": policy_value(result, economics, "score")["feasible"]})
    frontier = pd.DataFrame(rows)
    equal = []
    for knowledge, _ in kinds:
        here = frontier[frontier["knowledge"] == knowledge]
        learned = here[here["family"] == "learned"]
        for baseline, base_rows in (("per_rule_wait", here[here["family"] == "fixed_wait"]),
                                    ("global_wait", frontier[frontier["family"] == "global_wait"])):
            for measured_by, col in (("truth", "expected_accepts_truth"), ("model", "expected_accepts_model")):
                curve = _frontier_curve(learned["offers"].to_numpy(float), learned[col].to_numpy(float))
                for _, f in base_rows.iterrows():
                    at = _interpolate(curve, float(f["offers"]))
                    base = float(f[col])
                    equal.append({"knowledge": knowledge, "baseline": baseline, "measured_by": measured_by,
                                  "cost_of_offer": f["cost_of_offer"], "wait_s": f.get("wait_s"),
                                  "offers": int(f["offers"]), "baseline_accepts": base, "learned_accepts": at,
                                  "ratio": at / base if at is not None and base > 0 else None})
    return Comparison(frontier, pd.DataFrame(equal), best, economics)


def _frontier_curve(offers: np.ndarray, accepts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The upper envelope (offers ascending, accepts non-decreasing), starting at (0, 0)."""
    order = np.argsort(offers, kind="stable")
    x = np.r_[0.0, offers[order]]
    y = np.maximum.accumulate(np.r_[0.0, accepts[order]])
    return x, y


def _interpolate(curve: tuple[np.ndarray, np.ndarray], at: float) -> float | None:
    x, y = curve
    if at > x.max() or len(x) < 2:
        return None  # beyond the learned frontier: no comparison
    return float(np.interp(at, x, y))


# --------------------------------------------------------------------------------------------- at a budget

FAMILIES = ("global_wait", "per_page_wait", "per_page_wait_true", "tuned", "limit")


def compare_at_budgets(spec: RuleSpec, train_events: EventTable | pd.DataFrame,
                       judge_events: EventTable | pd.DataFrame, scorer: Any, truth_judge: Any,
                       budgets: Sequence[int | float] = (0.08, 0.17, 0.25), *, oracle_train: Any = None,
                       oracle_judge: Any = None, objective: str = "accepts", effects_train: Any = None,
                       effects_judge: Any = None, limit_effects_train: Any = None,
                       economics: Economics | None = None, waits: Sequence[float] | None = None,
                       thresholds: Sequence[float] | None = None, max_sweeps: int = 4, progress: bool = False,
                       return_tuned: bool = False) -> Any:
    """The families of policies tuned at the same budgets on one history, judged by the truth on another.

    On ``train_events`` (what an analyst has: the model's scores, the log's effects), at each budget (a float:
    a share of the training history's sessions; an int: offers), with the same ``objective``:

    * ``global_wait``: one wait for every rule, no score (:func:`best_global_wait`), chosen by the model;
    * ``per_page_wait``: a wait per rule, no score (:func:`best_per_page_wait`), chosen by the model;
    * ``tuned``: a wait and a score threshold per rule (:func:`tune`, from the per-page waits, so in sample it
      can only add thresholds where they pay);

    and with ``oracle_train`` and ``oracle_judge`` (the true P(accept) given each event of either history, e.g.
    ``world_truth(world, oracle=True)``), what perfect knowledge makes of the same knobs (uplift: with
    ``limit_effects_train``, by default ``effects_train``):

    * ``per_page_wait_true``: a wait per rule, no score, chosen counting the true P(accept): the best a
      wait-only ruleset does (the model can mislead ``per_page_wait``'s choice where it extrapolates);
    * ``limit``: :func:`tune` with the true P(accept) as its score and as the probability it counts.

    Each chosen spec is then run by the exact backtest on ``judge_events`` with ``truth=truth_judge`` (and
    ``effects=effects_judge``, the true effects, for uplift): out of sample, by the truth. Every policy is
    chosen for the same budget; how equal the volumes then are is in the table: ``offers_train`` (the exact
    count on the training history, at most the budget and, but for ``global_wait`` whose waits come in steps,
    within about 2 % of it) and ``offers`` (on the judging history, where the same spec makes a slightly
    different number). Because one wait's steps are coarse, ``ratio_to_global`` compares with the one-wait
    frontier of the judging history read at the same offers: the linear interpolation between the two
    single-wait policies on either side (a visitor-level mix of those two waits makes exactly that in
    expectation). ``ratio_to_per_page``, ``ratio_to_best_per_page`` (``per_page_wait_true``) and
    ``ratio_to_limit`` compare with those families' policies at the same budget directly.

    ``economics``: by default ``Economics(1.0, 0.0)``: the budget, not a price per offer, sets the volume.
    Returns a DataFrame, one row per (budget, family): ``budget``, ``budget_offers``, ``family``,
    ``offers_train``, ``offers``, ``offer_share``, ``true_expected_accepts``, ``true_expected_uplift`` (None
    without ``effects_judge``), ``true_value`` (the objective by the truth: accepts, extra goals, or money),
    ``global_at_equal_offers``, ``ratio_to_global``, ``ratio_to_per_page``, ``ratio_to_best_per_page``,
    ``ratio_to_limit``; with
    ``return_tuned``, also a dict (budget, family) -> :class:`Tuned` (on the training history).
    """
    economics = economics if economics is not None else Economics(1.0, 0.0)
    economics.coefficients(objective)
    if (oracle_train is None) != (oracle_judge is None):
        raise ValueError("the limit family needs both oracle_train and oracle_judge (or neither)")
    train = train_events if isinstance(train_events, EventTable) else EventTable(
        train_events, exclude=effect_columns(effects_train))
    judge = judge_events if isinstance(judge_events, EventTable) else EventTable(
        judge_events, exclude=((truth_judge,) if isinstance(truth_judge, str) else ()) + effect_columns(effects_judge))
    truth_j = _truth_array(judge, truth_judge)
    oracle_t = _truth_array(train, oracle_train)
    oracle_j = _truth_array(judge, oracle_judge)
    families = [f for f in FAMILIES if f not in ("limit", "per_page_wait_true") or oracle_t is not None]
    bar = progress_bar(progress, len(budgets) * len(families) + 1, "compare at budgets", "policy")

    def step() -> None:
        if bar is not None:
            bar.update()

    def judged(tuned_spec: RuleSpec, judge_scorer: Any) -> tuple[BacktestResult, float]:
        result = backtest(tuned_spec, judge, judge_scorer, truth=truth_j, effects=effects_judge)
        return result, float(policy_value(result, economics, "truth", objective)["value"])

    # The one-wait frontier of the judging history (for equal volumes), one backtest per wait of the grid.
    grid = np.array(sorted(set(float(w) for w in waits))) if waits is not None else \
        _Model(spec, train, None, np.zeros(train.n), None, None, True).waits
    frontier = []
    for wait in grid.tolist():
        result, value = judged(with_parameters(spec, [RuleChoice(r.name, wait, None) for r in spec.rules]), scorer)
        frontier.append((int(result.metrics["offers"]), value))
    frontier.sort()
    step()
    common: dict[str, Any] = dict(economics=economics, objective=objective, waits=waits, max_sweeps=max_sweeps)
    limit_effects = limit_effects_train if limit_effects_train is not None else effects_train
    rows, chosen = [], {}
    for budget in budgets:
        args = _budget_args(budget)
        runs: dict[str, tuple[Tuned, Any]] = {}
        runs["global_wait"] = (best_global_wait(spec, train, budget, scorer, economics=economics, objective=objective,
                                                waits=waits, effects=effects_train), scorer)
        step()
        per_page = best_per_page_wait(spec, train, budget, scorer, effects=effects_train, **common)
        runs["per_page_wait"] = (per_page, scorer)
        step()
        if oracle_t is not None:
            runs["per_page_wait_true"] = (best_per_page_wait(spec, train, budget, oracle_t, probability=oracle_t,
                                                             effects=limit_effects, **common), scorer)
            step()
        runs["tuned"] = (tune(spec, train, scorer, effects=effects_train, thresholds=thresholds,
                              start=per_page.choices, **args, **common), scorer)
        step()
        if oracle_t is not None:
            runs["limit"] = (tune(spec, train, oracle_t, probability=oracle_t, effects=limit_effects,
                                  thresholds=thresholds, **args, **common), oracle_j)
            step()
        here: list[dict[str, Any]] = []
        for family, (tuned, judge_scorer) in runs.items():
            result, value = judged(tuned.spec, judge_scorer)
            m = result.metrics
            chosen[(budget, family)] = tuned
            here.append({"budget": budget, "budget_offers": tuned.max_offers, "family": family,
                         "offers_train": tuned.offers, "offers": int(m["offers"]),
                         "offer_share": float(m["offer_rate_per_session"]),
                         "true_expected_accepts": m.get("true_expected_accepts"),
                         "true_expected_uplift": m.get("true_expected_uplift"), "true_value": value})
        values = {r["family"]: r["true_value"] for r in here}
        for r in here:
            at = _between(frontier, r["offers"])
            r["global_at_equal_offers"] = at
            r["ratio_to_global"] = _ratio(r["true_value"], at)
            r["ratio_to_per_page"] = _ratio(r["true_value"], values.get("per_page_wait"))
            r["ratio_to_best_per_page"] = _ratio(r["true_value"], values.get("per_page_wait_true"))
            r["ratio_to_limit"] = _ratio(r["true_value"], values.get("limit"))
        rows += here
    if bar is not None:
        bar.close()
    frame = pd.DataFrame(rows)
    return (frame, chosen) if return_tuned else frame


def _between(points: list[tuple[int, float]], offers: int) -> float | None:
    """The value at `offers` on the line through the single-wait policies on either side (None beyond them)."""
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    if not len(x) or offers < x.min() or offers > x.max():
        return None
    return float(np.interp(offers, x, y))


def _ratio(value: float, base: float | None) -> float | None:
    if base is None or not math.isfinite(base) or base <= 0:
        return None
    return value / base


# --------------------------------------------------------------------------------------------- effects from the log


@dataclass(frozen=True)
class LoggedEffects:
    """What an offer does to the goal, per page, estimated from the decision log's holdout comparison.

    ``table`` (one row per page of the log): ``n_treated``, ``n_control`` (eligible visitors whose first
    offer or would-be offer was on the page), ``rate_treated``, ``rate_control``, ``itt`` with ``ci_low`` /
    ``ci_high`` (:func:`pcrules.uplift.estimate`), ``enough_data`` (its rules: units and conversions per arm,
    and with ``mde`` the :func:`pcrules.uplift.sample_size` of each arm, in ``needed_treated`` /
    ``needed_control``), ``offers`` and ``accepted`` (the treated visitors' real offers in their window),
    ``effect_per_offer``, ``effect_per_accept``, ``used`` (``"page"``: its own estimate; ``"pooled"``: too
    little data, the estimate over all pages) and the ``gain_if_accepted`` / ``loss_if_not_accepted`` given
    to an offer on the page. A page the log never offered on gets the pooled values.

    Called with a frame of events (what ``effects=`` of :func:`tune` and the backtest take), it returns
    ``(gain_if_accepted, loss_if_not_accepted)`` per event by its page: no latent state is read.
    """

    table: pd.DataFrame
    pooled: Any  # UpliftEstimate over every page
    pooled_effect: tuple[float, float]  # (gain_if_accepted, loss_if_not_accepted) of the pooled estimate
    scale: str
    warnings: tuple[str, ...] = ()

    def __call__(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        pages = pd.Series(frame["page"].astype(object).to_numpy(dtype=object))
        gain = pages.map(self.table["gain_if_accepted"]).fillna(self.pooled_effect[0]).to_numpy(dtype=float)
        loss = pages.map(self.table["loss_if_not_accepted"]).fillna(self.pooled_effect[1]).to_numpy(dtype=float)
        return gain, loss

    def summary(self) -> str:
        cols = ["n_treated", "n_control", "itt", "ci_low", "ci_high", "enough_data", "used", "gain_if_accepted",
                "loss_if_not_accepted"]
        lines = [f"effects from the log (per page, {self.scale} scale); pooled: {self.pooled.summary()}",
                 self.table[cols].to_string(float_format=lambda x: f"{x:+.4f}")]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


_ANSWERS = (("outcome", "accepted"), ("status", "accepted"), ("response", "accept"))


def effects_from_log(decisions: pd.DataFrame, goals: pd.DataFrame, *, scale: str = "accept",
                     window_s: float | None = None, goal_names: Sequence[str] | str | None = None,
                     alpha: float = 0.05, min_per_arm: int | None = None, min_events: int | None = None,
                     mde: float | None = None, target_power: float = 0.8) -> LoggedEffects:
    """Per page, what an offer does to the goal probability, from the log's holdout comparison: the ``effects=``
    of :func:`tune` (``objective="uplift"`` or ``"value"``) and of the backtest, with no latent state.

    ``decisions``: the offers and holdout would-be offers (the decision log's ``decisions`` or
    :func:`pcrules.uplift.read_eligible`, a backtest's ``offers``) with ``visitor_id``, ``session_id``, ``ts``,
    ``page``, ``holdout`` and the answer (``outcome`` / ``status`` accepted, or ``response`` accept; needed
    for ``scale="accept"``); ``goals``: ``visitor_id, session_id, goal, ts`` (what ``record_goal`` logged).
    The units and the intention-to-treat estimate are :mod:`pcrules.uplift`'s (a visitor, her first eligible
    decision, goals within ``window_s``), per page of that first decision; a page's own estimate is used when
    it has enough data by :func:`pcrules.uplift.estimate`'s rules (``min_per_arm`` units and ``min_events``
    conversions and non-conversions per arm, and with ``mde`` the arms :func:`pcrules.uplift.sample_size`
    needs to detect that uplift), else the estimate pooled over every page (a warning says when even that
    has too little).

    The ITT is per eligible visitor; times the treated visitors it is the extra goals their offers caused,
    and divided by their real offers in their windows (``effect_per_offer``), by the accepted ones
    (``effect_per_accept``: the Wald, or complier, estimate) or by those not accepted
    (``effect_per_unaccepted``) it is the effect of one. ``scale="accept"`` (default): a positive effect is
    credited to the accepted chats (``gain_if_accepted``, no loss: an offer is worth its P(accept) x that), a
    negative one to the offers not accepted (annoyance: ``loss_if_not_accepted``, no gain); either way the
    tuner prefers the moments the model rates likelier to be accepted. ``scale="offer"``: every offer on the
    page has the page's effect whatever its P(accept). Assumed (and not checked): the effect on a page does
    not depend on when the offer was made (the log's waits) or to whom, beyond the page and P(accept); where
    it does (on the generated world struggling visitors stay longer and gain more), per-page effects miss
    that targeting. They are noisy too: a page's holdout arm of a few hundred visitors gives an interval of
    several points (``ci_low`` / ``ci_high``), which ``mde`` (a sample size per arm) makes explicit.
    """
    from ..stats.uplift import DEFAULT_WINDOW_S, MIN_EVENTS, MIN_PER_ARM, units_from_frames, uplift_from_units

    if scale not in ("accept", "offer"):
        raise ValueError(f"scale must be 'accept' or 'offer', got {scale!r}")
    window = DEFAULT_WINDOW_S if window_s is None else float(window_s)
    kw: dict[str, Any] = dict(alpha=alpha, min_per_arm=MIN_PER_ARM if min_per_arm is None else min_per_arm,
              min_events=MIN_EVENTS if min_events is None else min_events, mde=mde, target_power=target_power)
    d = decisions
    answer = next(((c, v) for c, v in _ANSWERS if c in d.columns), None)
    if scale == "accept" and answer is None:
        raise ValueError("effects_from_log: scale='accept' needs the offers' answers (a column outcome, status or "
                         "response); give them, or use scale='offer'")
    units = units_from_frames(d, goals, window_s=window, goal_names=goal_names)
    by_page = uplift_from_units(units, by="page", **kw)
    pooled = uplift_from_units(units, **kw)
    # The treated visitors' real offers (and accepts) within their windows, by the page of their first one.
    holdout = d["holdout"].fillna(0).astype(bool) if "holdout" in d.columns else pd.Series(False, index=d.index)
    real = ~holdout.to_numpy(dtype=bool)
    if "action" in d.columns:
        real &= d["action"].astype(object).eq("offer").to_numpy(dtype=bool)
    offers = pd.DataFrame({"visitor_id": d["visitor_id"].astype(object).to_numpy()[real],
                           "ts": d["ts"].to_numpy(dtype=float)[real],
                           "accepted": (d[answer[0]].astype(object).eq(answer[1]).to_numpy(dtype=bool)[real]
                                        if answer is not None else np.zeros(int(real.sum()), dtype=bool))})
    treated = units[units["treated"]][["visitor_id", "first_ts", "page"]].astype({"visitor_id": object})
    joined = offers.merge(treated, on="visitor_id", how="inner")
    joined = joined[(joined["ts"] >= joined["first_ts"]) & (joined["ts"] <= joined["first_ts"] + window)]
    counted = joined.groupby(joined["page"].astype(object).fillna(""))["accepted"].agg(["size", "sum"])

    def effect(est: Any, n_offers: float, n_accepted: float) -> tuple[float, float, float, float, float]:
        """(per offer, per accepted offer, per offer not accepted, gain_if_accepted, loss_if_not_accepted)"""
        goals = (est.estimate if est.estimate is not None else 0.0) * est.n_treated  # extra goals of the treated
        per_offer = goals / n_offers if n_offers else 0.0
        per_accept = goals / n_accepted if n_accepted else 0.0
        per_other = goals / (n_offers - n_accepted) if n_offers > n_accepted else 0.0
        if scale == "offer":
            gain = float(np.clip(per_offer, -1.0, 1.0))
            return per_offer, per_accept, per_other, gain, -gain
        if goals >= 0:  # credited to the accepted chats
            return per_offer, per_accept, per_other, float(min(per_accept, 1.0)), 0.0
        return per_offer, per_accept, per_other, 0.0, float(min(-per_other, 1.0))  # to the offers not accepted

    pooled_values = effect(pooled, float(counted["size"].sum()), float(counted["sum"].sum()))
    pooled_effect = (pooled_values[3], pooled_values[4])
    warnings = []
    if not pooled.enough_data:
        warnings.append(f"not enough data for an estimate even over every page ({pooled.summary()}): the effects "
                        "are a guess")
    rows = []
    for page, est in by_page.items():
        n_offers = float(counted["size"].get(page, 0))
        n_accepted = float(counted["sum"].get(page, 0))
        own = bool(est.enough_data and n_offers > 0)
        per_offer, per_accept, per_other, gain, loss = effect(est, n_offers, n_accepted)
        if own and max(gain, loss) >= 1.0:
            warnings.append(f"{page}: the estimate gives one offer an effect beyond a whole goal (ITT "
                            f"{est.estimate:+.3f} over {est.n_treated:,} visitors, {int(n_offers):,} offers, "
                            f"{int(n_accepted):,} accepted): noise, capped at 1")
        if not own:
            gain, loss = pooled_effect
        rows.append({"page": page, "n_treated": est.n_treated, "n_control": est.n_control,
                     "rate_treated": est.rate_treated, "rate_control": est.rate_control, "itt": est.estimate,
                     "ci_low": est.ci_low, "ci_high": est.ci_high, "enough_data": est.enough_data,
                     "needed_treated": None if est.needed is None else est.needed.treated,
                     "needed_control": None if est.needed is None else est.needed.control,
                     "offers": int(n_offers), "accepted": int(n_accepted), "effect_per_offer": per_offer,
                     "effect_per_accept": per_accept, "effect_per_unaccepted": per_other,
                     "used": "page" if own else "pooled",
                     "gain_if_accepted": gain, "loss_if_not_accepted": loss})
    table = pd.DataFrame(rows).set_index("page") if rows else pd.DataFrame(
        columns=["gain_if_accepted", "loss_if_not_accepted", "used"])
    return LoggedEffects(table, pooled, pooled_effect, scale, tuple(warnings))


# --------------------------------------------------------------------------------------------- the generated world


def world_truth(world: Any, oracle: bool = False) -> np.ndarray:
    """True P(accept) of an offer at each of ``world.events`` (in its order).

    ``oracle=False``: with the session's real (latent) ``needs_help``, the exact
    expectation of the recorded would-be answers. ``oracle=True``: the
    expectation given only what the runtime sees (what a perfect model could know).
    """
    from .world import true_accept_probability

    ev = world.events
    helped = None
    if not oracle:
        pv = world.page_views[["session_id", "pages_viewed", "needs_help"]]
        helped = ev[["session_id", "pages_viewed"]].merge(pv, on=["session_id", "pages_viewed"], how="left")[
            "needs_help"].to_numpy(dtype=bool, na_value=False)
    p = true_accept_probability(ev["page"].to_numpy(dtype=object), ev["seconds_on_page"].to_numpy(dtype=float),
                                ev["device"].to_numpy(dtype=object), ev["returning"].to_numpy(dtype=bool),
                                ev["pages_viewed"].to_numpy(dtype=float), helped,
                                session_seconds=ev["session_seconds"].to_numpy(dtype=float))
    return np.asarray(p, dtype=float)


def per_page_spec(queues: Mapping[str, Mapping[str, Any]] | None = None,
                  page_queue: Mapping[str, str] | None = None, *, policy: Mapping[str, Any] | None = None,
                  name: str = "per-page") -> RuleSpec:
    """One rule per page of the generated world (``page: P, seconds_on_page >= 0``), for tuning from scratch."""
    from .world import PAGES

    queues = dict(queues) if queues is not None else {
        "Billing": {"capacity_per_hour": 40, "max_wait_s": 180,
                    "hours": {"tz": "Europe/Amsterdam", "days": ["mon", "tue", "wed", "thu", "fri", "sat"],
                              "start": "08:00", "end": "20:00"}},
        "Sales": {"capacity_per_hour": 60, "max_wait_s": 120,
                  "hours": {"tz": "Europe/Amsterdam", "start": "08:00", "end": "22:00"}},
        "Support": {"capacity_per_hour": 30, "max_wait_s": 300},
    }
    page_queue = dict(page_queue) if page_queue is not None else {
        "Home": "Sales", "Bill Payment": "Billing", "Plans": "Sales", "Roaming": "Sales", "Checkout": "Sales",
        "Account": "Billing", "FAQ": "Support", "Support": "Support", "Contact": "Support"}
    rules = [{"name": page.lower().replace(" ", "-"), "priority": 100 - i,
              "when": {"page": page, "seconds_on_page": {"gte": 0}}, "offer": {"queue": page_queue[page]}}
             for i, page in enumerate(PAGES)]
    pol = {"max_offers_per_session": 1, "decline_cooldown_s": 86400, "offer_timeout_s": 60, "holdout": 0.0}
    pol.update(policy or {})
    return load_spec({"name": name, "policy": pol, "queues": queues, "rules": rules})
