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
``loss_if_not_accepted``; :func:`pcrules.world.event_effects` on a generated
world, an analyst's assumption otherwise) an offer is worth its expected
effect ``p * gain - (1 - p) * loss`` (:func:`pcrules.uplift.goal_effect`), and
``objective="uplift"`` maximises the expected extra goals instead of accepts
(``"value"``: goals, chats and offers in money; :meth:`Economics.coefficients`).
Where the offers that are accepted most are not those that help most (on the
generated world: a cart page's easy accepts vs a struggling visitor on a bill
or support page), the two objectives choose differently.

:func:`tune` chooses for every rule its *wait time* (``seconds_on_page >= W``)
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
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
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
from .scores import scores_for
from .table import EventTable

__all__ = ["Economics", "OBJECTIVES", "RuleChoice", "Tuned", "Comparison", "tune", "policy_value", "with_parameters",
           "compare_with_fixed_wait", "world_truth", "per_page_spec"]

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


class _Model:
    """The policy as "the first event of each session where some rule fires", over prepared arrays.

    Rows are the valid events, grouped by session, in time order within each. An offer at a row is worth
    ``w = a * p + b * effect`` (``p`` the probability counted as its expected accept, ``effect`` its expected
    effect on the goal probability, ``(a, b, cost)`` the objective's :meth:`Economics.coefficients`); a
    policy's value is the sum of ``w`` over its offers minus ``cost`` per offer.
    """

    def __init__(self, spec: RuleSpec, table: EventTable, scorer: Any, probability: np.ndarray,
                 waits: Sequence[float] | None, thresholds: Sequence[float] | None, fixed_wait: bool,
                 economics: Economics = Economics(), objective: str = "accepts", effects: Any = None):
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
        # Each rule's search only touches the sessions where its other conditions hold somewhere.
        self.sub: list[np.ndarray] = []
        for base in self.base:
            touched = np.zeros(len(self.starts) + 1, dtype=bool)
            touched[self.session[base]] = True
            self.sub.append(np.flatnonzero(touched[self.session]))
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

    def totals(self, fires: Sequence[np.ndarray | None], rows: np.ndarray | None = None) -> _Totals:
        """Offers at the first firing event of each session (among `rows`; None: all)."""
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
        first = np.minimum.reduceat(pos, self._starts(rows))
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

    def search_rule(self, k: int, fires: list[np.ndarray | None], economics: Economics,
                    ) -> tuple[tuple[float, float] | None, float, int]:
        """The best (wait, threshold) or None (off) for rule `k`, the others as in `fires`: (choice, value, evals)."""
        rows = self.sub[k]
        others = list(fires)
        others[k] = None
        # What the sessions outside this rule's reach contribute does not depend on its choice.
        outside = self.totals(others) - self.totals(others, rows)
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
        others_any = stronger_any | weaker_any
        starts = self._starts(rows)
        arange = np.arange(m)
        base, seconds = self.base[k][rows], self.seconds[rows]
        score = None if self.score is None else self.score[rows]
        counts, p_rows, w_rows, hour_rows = self.counts[rows], self.p[rows], self.w[rows], self.hour[rows]
        need_load = economics.respect_capacity and self.check_capacity
        best: tuple[float, tuple[float, float] | None] = (-math.inf, None)
        evaluations = 0
        for cand in [None] + [(float(w), float(t)) for w in self.waits for t in self.thresholds[k]]:
            if cand is None:
                mine = np.zeros(m, dtype=bool)
                any_fire = others_any
            else:
                mine = base & (seconds >= cand[0])
                if cand[1] > 0 and score is not None:
                    mine &= score >= cand[1]
                any_fire = others_any | mine
            first = np.minimum.reduceat(np.where(any_fire, arange, m), starts) if m else np.zeros(0, np.int64)
            first = first[first < m]
            first = first[counts[first]]
            p = p_rows[first]
            offers = outside.offers + len(first)
            value = outside.worth + float(w_rows[first].sum()) - self.cost * offers
            evaluations += 1
            if value <= best[0] + 1e-9:
                continue
            if need_load and offers:
                q = np.where(stronger_any[first], stronger_q[first], np.where(mine[first], self.queue[k],
                                                                             weaker_q[first]))
                load = outside.load + self._load(q, hour_rows[first], p)
                if not (load.max(axis=1) <= self.capacity + 1e-9).all():
                    continue
            best = (value, cand)
        return best[1], best[0], evaluations


# --------------------------------------------------------------------------------------------- tuning


@dataclass
class Tuned:
    """A tuned policy: the choice per rule, the tuned spec and its exact backtest."""

    spec: RuleSpec
    choices: tuple[RuleChoice, ...]
    result: BacktestResult
    value: dict[str, Any]
    economics: Economics
    probability: str
    search_value: float
    evaluations: int
    objective: str = "accepts"

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


def tune(spec: RuleSpec, events: EventTable | pd.DataFrame, scorer: Any = None, *,
         economics: Economics = Economics(), probability: str | np.ndarray = "score",
         truth: np.ndarray | str | None = None, fixed_wait: bool = False, waits: Sequence[float] | None = None,
         thresholds: Sequence[float] | None = None, start: Sequence[RuleChoice] | None = None,
         max_sweeps: int = 4, name: str | None = None, objective: str = "accepts", effects: Any = None) -> Tuned:
    """Per rule, the wait time and score threshold (or off) that maximise the value under the queues' capacity.

    ``scorer``: the model (or an array of scores per event, e.g. an oracle).
    ``probability``: what the search counts as an offer's expected accept:
    ``"score"`` (the scorer's), ``"truth"`` (``truth``) or an array per event.
    ``objective``: what the value is (:meth:`Economics.coefficients`): ``"accepts"``
    (expected accepted chats, less a cost per offer), ``"uplift"`` (the expected extra
    goals the offers cause) or ``"value"`` (both, and the cost per offer, in money).
    ``effects``: what an offer at each event does to the goal probability
    (``backtest.resolve_effects``, e.g. ``pcrules.world.event_effects(world)``); needed
    by ``"uplift"`` and ``"value"``, and reported (expected uplift) whenever given.
    ``fixed_wait``: search wait times only, no score condition (the baseline family).
    ``start``: choices to start from (default: every rule off). ``truth`` (an
    array per event in the input's order, or a column) is also summed in the exact backtest.
    """
    economics.coefficients(objective)  # a clear error for an unknown objective, before any work
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
        label = probability
    else:
        p = np.asarray(probability, dtype=float)
        if table.order is not None:
            p = p[table.order]
        label = "custom"
    model = _Model(spec, table, scorer, p, waits, thresholds, fixed_wait, economics, objective, resolved)
    k_rules = len(spec.rules)
    params: list[tuple[float, float] | None] = [None] * k_rules
    if start is not None:
        given = {c.rule: c for c in start}
        for k, rule in enumerate(spec.rules):
            c = given.get(rule.name)
            if c is not None and not c.off:
                params[k] = (float(c.wait_s), float(c.threshold or 0.0))
    fires: list[np.ndarray | None] = [None if c is None else model.fire(k, *c) for k, c in enumerate(params)]
    evaluations = 0
    value, feasible = model.judge(model.totals(fires), economics)
    if not feasible:  # a start that breaks capacity: start from nothing
        params, fires = [None] * k_rules, [None] * k_rules
        value = 0.0
    for _ in range(max_sweeps):
        changed = False
        for k in range(k_rules):
            choice, best, count = model.search_rule(k, fires, economics)
            evaluations += count
            if choice != params[k] and best > value + 1e-9:
                params[k] = choice
                fires[k] = None if choice is None else model.fire(k, *choice)
                value = best
                changed = True
        if not changed:
            break
    choices = tuple(RuleChoice(r.name, None, None) if params[k] is None else
                    RuleChoice(r.name, params[k][0], params[k][1] if params[k][1] > 0 else None)
                    for k, r in enumerate(spec.rules))
    tuned_spec = with_parameters(spec, choices, name=name)
    result = backtest(tuned_spec, table, scorer, truth=truth_values, effects=resolved)
    measured = policy_value(result, economics, "truth" if label == "truth" else "score", objective)
    return Tuned(tuned_spec, choices, result, measured, economics, label, value, evaluations, objective)


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
