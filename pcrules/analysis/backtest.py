"""Backtest: what a ruleset would have decided on recorded traffic, for a whole history at once.

The same rule spec the runtime serves is compiled into vectorised predicates
(:mod:`pcrules.matching.vector`), candidate rows are scored in batch with the
bundle's model (:mod:`pcrules.analysis.scores`), and the stateful policy
(pending offer, offers per session, decline cooldown, offer timeout, hours,
queue status, holdout, idle sessions) is applied in time order. The answers
are the history's own, with the convention of :mod:`pcrules.replay`: the
``response`` (accept / decline) and ``response_delay_s`` recorded with the
event at which an offer is made are played back when the answer comes before
the offer's timeout; otherwise the offer expires. So a backtest *is* a replay,
and the two are compared event by event (``tests/test_backtest.py``).

Two engines apply the policy, with the same inputs and the same output:

``engine="fast"`` (default)
    the array judge, :mod:`pcrules.analysis.judge`: the one vectorised
    statement of the order of judgement, shared with the tuner.
``engine="policy"``
    the oracle, :mod:`pcrules.analysis.reference`: the runtime's pure core,
    :func:`pcrules.policy.decide` and :func:`pcrules.policy.answer`, for
    every row that some rule matches now, but for its score, or later.

The parity tests prove the two equal to each other and to the runtime. The
figures come from :mod:`pcrules.analysis.figures` (also the tuner's).

Events are taken in time order (a stable sort by ``ts``; the decisions come
back in the input's order and index). Rows the runtime would refuse
(``events.validate_event``) get ``action == "refused"`` and take no part, as
in a replay.

    >>> from pcrules.backtest import backtest, compare
    >>> result = backtest(spec, events, scorer=model)          # doctest: +SKIP
    >>> print(result.summary())                                 # doctest: +SKIP
    >>> compare(result, backtest(other_spec, events, scorer=model))   # doctest: +SKIP

Where the parts live: :mod:`~pcrules.analysis.table` (the events table and its checks),
:mod:`~pcrules.analysis.scores` (batch scoring), :mod:`~pcrules.analysis.effects` (what an offer does to the
goal), :mod:`~pcrules.analysis.judge`, :mod:`~pcrules.analysis.reference`, :mod:`~pcrules.analysis.figures`;
their public names are importable from here too, as they were when this was one module.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..core.decision import Reason
from ..core.policy import needs_score, render_metadata
from ..core.spec import RuleSpec, load_spec
from ..matching.vector import MatchArrays, VectorMatcher
from .effects import EFFECT_COLUMNS, Effects, effect_columns, resolve_effects
from .figures import (
    OfferFacts,
    distinct,
    figures,
    hour_buckets,
    hour_index,
    open_hours,
    queue_hours_frame,
    queue_load_frame,
    reason_grid,
    uplift_figures,
)
from .judge import (
    A_NONE,
    A_REFUSED,
    ACTIONS,
    OUTCOMES,
    REASON_CODE,
    REASONS,
    Exploration,
    Judged,
    OfferLedger,
    RuleBits,
    RuleSets,
    Stretches,
    Verdict,
    crossable,
    queue_blocks,
    queue_timeline,
    rows_in_cooldown,
    rule_points,
)
from .reference import judge_one_by_one
from .scores import batch_scores, progress_bar, score_one, scores_for
from .table import ACCEPT, ANSWER_COLUMNS, DECLINE, NO_ANSWER, EventTable

__all__ = ["EventTable", "BacktestResult", "backtest", "compare", "judge_sets", "without_exploration", "batch_scores",
           "ANSWER_COLUMNS", "ACTIONS", "REASONS", "OUTCOMES", "Effects", "EFFECT_COLUMNS", "resolve_effects",
           "uplift_figures"]

# Re-exported for the code that imported them from here (the tuner, value tuning, notebooks, tests).
_REEXPORTED = (effect_columns, score_one, OfferLedger, rows_in_cooldown)


# ============================================================================================ the engines


def judge_sets(spec: RuleSpec, table: EventTable, arrays: MatchArrays, score: np.ndarray, qblock: np.ndarray,
               ) -> tuple[Stretches, RuleBits, RuleSets]:
    """The array judge's input for `spec` on `table`: the rows some rule could match by session stretch, and
    per row the sets of rules the order of judgement reads (the rules as written)."""
    valid = table.valid
    present = ~np.isnan(score)
    rules = spec.rules
    k = len(rules)
    bits = RuleBits(k)
    needs = np.array([needs_score(r) for r in rules], dtype=bool).reshape(k, 1)
    full = bits.pack(arrays.full & valid)
    unscored = bits.pack(arrays.unscored & present & valid)
    later_m = arrays.later & (present | ~needs) & valid  # without a score, a rule on the score never matches
    later = bits.pack(later_m)
    matched = (full | unscored | later) != 0
    st = Stretches(table, matched, spec.policy.session_idle_ttl_s, spec.policy.holdout)
    rows = st.rows
    cross = bits.pack(np.stack([later_m[j, rows] & crossable(r, st.sec) for j, r in enumerate(rules)])
                      if k else np.zeros((0, st.m), dtype=bool))
    del later_m
    q = qblock[:, rows]
    busy = q == REASON_CODE[Reason.QUEUE_BUSY]
    sets = RuleSets(full[rows], unscored[rows], later[rows], cross, bits.pack(q < 0),
                    bits.pack(busy) if busy.any() else None)
    return st, bits, sets


def _judge_arrays(spec: RuleSpec, table: EventTable, arrays: MatchArrays, score: np.ndarray, qblock: np.ndarray,
                  new_offer_id: Callable[[], str], metadata: bool, bar: Any) -> Judged:
    """``engine="fast"``: the rows some rule could match, through the array judge; every other row no_rule."""
    rules = spec.rules
    st, bits, sets = judge_sets(spec, table, arrays, score, qblock)
    rows = st.rows
    explore = spec.policy.explore
    exploration = None if explore is None else Exploration(explore, st, sets)
    verdict = Verdict(st, bits, sets if exploration is None else exploration.sets(), spec.policy)
    if bar is not None:
        bar.update()
    action, reason, rule, recheck = verdict.per_row([rule_points(r) for r in rules])
    made = verdict.offers
    o_rows = rows[made.pos]
    offer_ids = [None if h else new_offer_id() for h in made.hold.tolist()]
    judged = Judged(action, reason, rule, recheck, o_rows, made.hold, offer_ids,
                    answers=(made.answered, made.kind, made.expires))
    if exploration is not None:
        exploration.waits(bits, action, rule, recheck)
        judged.offer_explored, judged.offer_propensity = exploration.propensity(verdict)
    if metadata:
        judged.metadata = {j: render_metadata(rules[int(rule[j])], event.fields)
                           for j, event in zip(o_rows.tolist(), table.events(o_rows), strict=True)}
    return judged


# ============================================================================================ the result


def _categorical(codes: np.ndarray, categories: Sequence[str]) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, categories=list(categories))


@dataclass
class BacktestResult:
    """Per-event decisions and the figures a person can act on.

    ``decisions``: one row per input event (the input's index and order):
    ``action`` (offer / wait / none / refused), ``reason``, ``rule``, ``queue``,
    ``score``, ``offer_id``, ``holdout``, ``expires_at``, ``recheck_after``,
    ``outcome`` (accepted / declined / expired, for offers) and ``answered_at``.
    ``offers``: one row per offer and would-be (holdout) offer; its ``score`` is
    the model's P(accept) there even where no rule needed it (the decisions'
    ``score`` column shows what the runtime would log). With ``effects``, also
    ``gain_if_accepted``, ``loss_if_not_accepted`` and each offer's expected
    effect on the goal probability, ``expected_effect`` (model) and
    ``true_effect`` (truth); for a would-be offer, what it would have done.
    ``metrics``: the headline figures (see :meth:`summary`). Expected uplift:
    ``expected_uplift`` (extra goals the real offers cause, by the model's
    P(accept)), ``expected_uplift_per_offer``, ``expected_uplift_itt`` (per
    eligible visitor, valuing each one's first offer or would-be offer: what the
    log's estimate measures; ``eligible_visitors`` of them) and the same with
    ``true_expected_`` (the truth's P(accept)); None when not available (no
    effects, no model, no truth), never 0. :meth:`uplift_by` breaks it down by
    rule, page or queue; ``per_rule`` has ``expected_uplift`` /
    ``true_expected_uplift`` columns when available.
    """

    spec: RuleSpec
    decisions: pd.DataFrame
    offers: pd.DataFrame
    metrics: dict[str, Any]
    per_rule: pd.DataFrame
    queue_hours: pd.DataFrame
    queue_load: pd.DataFrame
    refusals: dict[Any, str]
    seconds: float
    engine: str
    table: EventTable = field(repr=False, default=None)  # type: ignore[assignment]
    offer_rows: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]  # table (time) order
    off_policy: Any = field(repr=False, default=None)  # analysis.offpolicy.OffPolicyReport, with feedback=...

    @property
    def name(self) -> str:
        return self.spec.name

    def summary(self) -> str:
        m = self.metrics
        lines = [f"backtest of ruleset {self.spec.name!r} ({self.spec.version}), engine {self.engine}: "
                 f"{m['events']:,} events in {self.seconds:.2f} s "
                 f"({m['events'] / max(self.seconds, 1e-9):,.0f} events/s)"]
        lines += [
            f"sessions            {m['sessions']:>10,}   visitors {m['visitors']:,}",
            f"refused events      {m['refused']:>10,}",
            f"offers              {m['offers']:>10,}   ({m['offer_rate_per_session']:.1%} of sessions)",
            f"holdout (withheld)  {m['holdout']:>10,}   ({m['holdout_visitors']:,} visitors)",
        ]
        if m.get("expected_accepts") is not None:
            lines.append(f"expected accepts    {m['expected_accepts']:>10,.1f}   "
                         f"({m['expected_accept_rate']:.1%} of offers, from the model's scores)")
        if m.get("true_expected_accepts") is not None:
            lines.append(f"true expected       {m['true_expected_accepts']:>10,.1f}   "
                         f"({m['true_expected_accept_rate']:.1%} of offers, ground truth)")
        for key in ("accepted", "declined", "expired"):
            share = m[key] / max(m["offers"], 1)
            lines.append(f"  {key:<17} {m[key]:>10,}   ({share:.1%} of offers, recorded answers)")
        lines += self._uplift_lines()
        if m.get("explored_offers") is not None:
            cost = m.get("exploration_cost") or {}
            parts = [f"{-v:+,.1f} {k}" for k, v in cost.items() if v is not None]
            lines.append(f"explored offers     {m['explored_offers']:>10,}   (policy.explore; against the rules alone: "
                         f"{', '.join(parts) if parts else 'no expected accepts to compare'})")
        if self.off_policy is not None:
            lines.append("from the log (off-policy; docs/off-policy.md)")
            lines += ["  " + line for line in self.off_policy.summary().splitlines()]
        lines.append("decisions by action")
        lines += [f"  {a:<17} {c:>10,}" for a, c in m["actions"].items() if c]
        lines.append("no-offer reasons")
        lines += [f"  {r:<17} {c:>10,}" for r, c in m["reasons"].items() if c]
        if len(self.per_rule):
            lines.append("by rule")
            lines.append(self.per_rule.to_string(float_format=lambda x: f"{x:,.1f}"))
        if len(self.queue_load):
            lines.append("queue load per hour (open hours) against capacity")
            lines.append(self.queue_load.to_string(float_format=lambda x: f"{x:,.2f}"))
        return "\n".join(lines)


    def _uplift_lines(self) -> list[str]:
        m = self.metrics
        lines = []
        for prefix, label, source in (("expected", "expected uplift", "model's P(accept)"),
                                      ("true_expected", "true exp. uplift", "true P(accept)")):
            goals = m.get(f"{prefix}_uplift")
            if goals is None:
                if prefix == "expected" or m.get("true_expected_accepts") is not None:
                    why = ("no goal effects given (uplift needs each visitor's gain if an offer is accepted: a "
                           "generated world knows it, recorded history does not)" if m.get("effects") is None else
                           "no model" if prefix == "expected" else "no truth")
                    lines.append(f"{label:<19} not available: {why}")
                continue
            itt = m.get(f"{prefix}_uplift_itt")
            per = m.get(f"{prefix}_uplift_per_offer")
            lines.append(f"{label:<19} {goals:>+10,.1f}   extra goals ({'-' if per is None else f'{per:+.4f}'} per "
                         f"offer; ITT {'-' if itt is None else f'{100 * itt:+.2f} pp'} over "
                         f"{m['eligible_visitors']:,} eligible visitors; {source})")
        return lines

    def uplift_by(self, dimension: str = "rule", probability: str = "model") -> pd.DataFrame:
        """Expected uplift of the real offers by ``rule``, ``page`` or ``queue``: offers, expected accepts and
        extra goals (``expected_uplift``) and per offer, with the model's (``probability="model"``) or the true
        (``"truth"``) P(accept). Raises ValueError when the backtest had no effects (or no such P(accept))."""
        if dimension not in ("rule", "page", "queue"):
            raise ValueError(f"dimension must be 'rule', 'page' or 'queue', got {dimension!r}")
        if probability not in ("model", "truth"):
            raise ValueError(f"probability must be 'model' or 'truth', got {probability!r}")
        column = "expected_effect" if probability == "model" else "true_effect"
        if column not in self.offers.columns:
            why = ("the backtest was run without goal effects (each visitor's gain if an offer is accepted)"
                   if "gain_if_accepted" not in
                   self.offers.columns else "there is no model" if probability == "model" else "there is no truth")
            raise ValueError(f"expected uplift by {dimension} is not available: {why}")
        real = self.offers[~self.offers["holdout"].to_numpy(dtype=bool)]
        p = real["score"] if probability == "model" else real["truth"]
        frame = pd.DataFrame({dimension: real[dimension].astype(object).to_numpy(),
                              "p": np.nan_to_num(p.to_numpy(dtype=float)), "effect": real[column].to_numpy(float)})
        g = frame.groupby(dimension, sort=True)
        out = pd.DataFrame({"offers": g.size(), "expected_accepts": g["p"].sum(), "expected_uplift": g["effect"].sum()})
        out["uplift_per_offer"] = out["expected_uplift"] / out["offers"]
        return out


def _figures(spec: RuleSpec, table: EventTable, judged: Judged, score: np.ndarray, truth: np.ndarray | None,
             offer_score: np.ndarray | None, effects: Effects | None = None,
             ) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(metrics, per_rule, queue_hours, queue_load, offers) of the decisions, through ``figures.figures``."""
    valid = table.valid
    vcode, skey, _ = table.keys()
    rows, hold = judged.offer_rows, judged.offer_holdout
    answered, kind, expires = judged.answers
    ts = table.ts
    hours = hour_buckets(ts[valid])
    # Expected accepts: the model's P(accept) of every offer, also where the rules did not need a score.
    offer_p = None if offer_score is None else np.asarray(offer_score, dtype=float)
    gain, loss = effects.at(rows) if effects is not None else (None, None)
    names = [r.name for r in spec.rules]
    queue_names = list(spec.queues)
    rule_queue = np.array([queue_names.index(r.queue) for r in spec.rules], dtype=np.int64)
    facts = OfferFacts(judged.rule[rows].astype(np.int64), hold, kind, vcode[rows], skey[rows],
                       hour_index(ts[rows], hours), offer_p, None if truth is None else truth[rows], gain, loss)
    none_reason = np.where(judged.action == A_NONE, judged.reason, -1)
    reasons = np.bincount(judged.reason[judged.reason >= 0].astype(np.int64), minlength=len(REASONS))
    open_h = open_hours(spec, hours)
    fig = figures(facts, events=table.n, valid_events=int(valid.sum()), sessions=distinct(skey[valid]),
                  visitors=distinct(vcode[valid]),
                  actions={a: int((judged.action == i).sum()) for i, a in enumerate(ACTIONS)},
                  reasons=reasons, grid=reason_grid(judged.rule, none_reason, len(names)),
                  shown=np.arange(len(names)), rule_queue=rule_queue, queue_names=queue_names,
                  capacities={q: spec.queues[q].capacity_per_hour for q in queue_names}, open_h=open_h,
                  effects=None if effects is None else effects.description)
    metrics = fig.metrics
    per_rule = pd.DataFrame(index=pd.Index(names, name="rule"))
    for column, values in fig.per_rule.items():
        per_rule[column] = values
    queue_hours = queue_hours_frame(queue_names, hours, open_h, fig.offers_h, fig.chats_h, fig.accepted_h)
    queue_load = queue_load_frame(metrics["queues"])
    # The backtest's metrics have always read the queue figures back from the frame (None as NaN there).
    metrics["queues"] = {name: dict(row) for name, row in queue_load.iterrows()} if len(queue_load) else {}
    offers = pd.DataFrame({
        "ts": ts[rows],
        **{col: table.frame[col].iloc[rows].to_numpy()
           for col in ("visitor_id", "session_id", "page", "seconds_on_page")},
        "rule": _categorical(judged.rule[rows], names),
        "queue": _categorical(rule_queue[judged.rule[rows].astype(np.int64)], queue_names),
        "score": score[rows] if offer_p is None else offer_p,
        "offer_id": np.array(judged.offer_ids, dtype=object),
        "holdout": hold,
        "outcome": _categorical(np.where(hold, -1, np.where(kind == ACCEPT, 0, np.where(kind == DECLINE, 1, 2))),
                                OUTCOMES),
        "answered_at": np.where(hold, np.nan, np.where(kind == NO_ANSWER, expires, answered)),
        "expires_at": expires,
    })
    if truth is not None:
        offers["truth"] = truth[rows]
    if gain is not None:
        offers["gain_if_accepted"], offers["loss_if_not_accepted"] = gain, loss
        for column, label in (("expected_uplift", "expected_effect"), ("true_expected_uplift", "true_effect")):
            if column in fig.effect:
                offers[label] = fig.effect[column]
    return metrics, per_rule, queue_hours, queue_load, offers


def backtest(spec: RuleSpec | str | Mapping[str, Any], events: pd.DataFrame | EventTable | Sequence[Mapping],
             scorer: Any = None, *, queue_status: Any = None, engine: str = "fast", scores: str = "candidates",
             truth: str | np.ndarray | pd.Series | None = None, effects: Any = None, metadata: bool = False,
             new_offer_id: Callable[[], str] | None = None, offer_id_prefix: str = "o",
             progress: bool = False, feedback: Any = None, exploration_cost: bool = True, client: Any = None,
             workers: int | None = None) -> BacktestResult:
    """What `spec` (with `scorer`, the bundle's model) would have decided on `events`.

    ``events``: a DataFrame of events (the runtime's fields, plus the recorded
    answers ``response`` / ``response_delay_s``), or an :class:`EventTable`.
    ``queue_status``: None (no queue is ever busy), a mapping queue -> status,
    or a DataFrame timeline of ``update_queue`` calls (ts, queue,
    agents_available, estimated_wait_s). ``engine``: ``"fast"`` or ``"policy"``
    (the runtime's pure core row by row). ``scores``: ``"candidates"`` scores
    only rows where the score can matter (other rows show no score),
    ``"all"`` every row, as the runtime logs it. ``truth``: a column name or
    array of true P(accept) per event (a generated world), summed over offers.
    ``effects``: what an offer at each event would do to the goal probability
    (:func:`resolve_effects`, e.g. ``pcrules.world.event_effects(world)``): then the
    result reports the expected uplift (extra goals) with the model's and the true
    P(accept); without effects those figures are None (not available).
    ``metadata``: also render each offer's metadata. Offer ids are
    ``offer_id_prefix`` + 1, 2, ... in order (or ``new_offer_id()``).
    ``feedback``: the logged history (:func:`pcrules.analysis.feedback.feedback`): then ``off_policy`` holds the
    ruleset's expected accepted chats estimated from the log (IPS, SNIPS, DR with the scorer) with intervals.
    A ruleset with ``policy.explore`` also reports its explored offers and what exploring cost against the same
    rules without it (``exploration_cost``: expected accepts lost, by the model and by the truth; a second
    backtest, skipped with ``exploration_cost=False`` by callers that only read the decisions).
    A history partitioned by visitor (``events`` a folder of ``part=NNN`` Parquet folders, or
    ``engine="processes"`` / ``"serial"`` / ``"dask"``, or a Dask ``client``; ``workers`` processes) is judged
    partition by partition with the same figures: :func:`pcrules.analysis.partitioned.backtest_partitioned`.
    """
    if client is not None or engine in ("processes", "serial", "dask") or isinstance(events, str | os.PathLike):
        from .partitioned import backtest_partitioned

        if feedback is not None or metadata or new_offer_id is not None:
            raise ValueError("a partitioned backtest takes no feedback, metadata or new_offer_id (off-policy "
                             "estimates: pcrules.analysis.partitioned.offpolicy_partitioned)")
        return backtest_partitioned(spec, events, scorer, engine="processes" if engine == "fast" else engine,
                                    client=client, workers=workers, queue_status=queue_status, truth=truth,
                                    effects=effects, exploration_cost=exploration_cost, progress=progress)
    started = time.perf_counter()
    if engine not in ("fast", "policy"):
        raise ValueError(f"engine must be 'fast' or 'policy', got {engine!r}")
    if scores not in ("candidates", "all"):
        raise ValueError(f"scores must be 'candidates' or 'all', got {scores!r}")
    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    truth_exclude = ((truth,) if isinstance(truth, str) else ()) + effect_columns(effects)
    table = events if isinstance(events, EventTable) else EventTable(events, exclude=truth_exclude)
    resolved = resolve_effects(table, effects)
    bar = progress_bar(progress, 5, f"backtest {spec.name}", "step")

    def step(label: str) -> None:
        if bar is not None:
            bar.set_postfix_str(label, refresh=False)
            bar.update()

    valid = table.valid
    step("checked")
    timeline = queue_timeline(spec, queue_status)
    matcher = VectorMatcher(spec)
    score = np.full(table.n, np.nan)
    if scorer is not None and spec.uses_score:
        want = valid if scores == "all" else valid & matcher.needs_score(table.columns)
        score = scores_for(table, spec, scorer, np.flatnonzero(want), progress).copy()
        score[~want] = np.nan
    step("scored")
    arrays = matcher.match(table.columns, score)
    blocks = queue_blocks(spec, table, timeline)
    # A rule's queue block per row: (rules, rows), -1 when its queue takes an offer.
    qblock = np.stack([blocks[r.queue] for r in spec.rules]) if spec.rules else np.zeros((0, table.n), np.int8)
    step("matched")
    if new_offer_id is None:
        counter = itertools.count(1)
        new_offer_id = lambda: f"{offer_id_prefix}{next(counter)}"  # noqa: E731
    if engine == "fast":
        judged = _judge_arrays(spec, table, arrays, score, qblock, new_offer_id, metadata, bar)
    else:
        judged = judge_one_by_one(spec, table, arrays, score, qblock, timeline, new_offer_id, metadata, bar)
    judged.action[~valid] = A_REFUSED
    judged.reason[~valid] = -1
    judged.rule[~valid] = -1
    truth_values = None
    if truth is not None:
        raw = table.frame[truth] if isinstance(truth, str) else truth
        truth_values = np.asarray(raw, dtype=float)
        if not isinstance(truth, str) and table.order is not None:
            truth_values = truth_values[table.order]
    offer_score = None
    if scorer is not None:
        offer_score = scores_for(table, spec, scorer, judged.offer_rows, False)[judged.offer_rows]
    metrics, per_rule, queue_hours, queue_load, offers = _figures(spec, table, judged, score, truth_values,
                                                                  offer_score, resolved)
    step("figures")
    decisions = _decisions(spec, table, judged, score)
    refusals = {table.index[table.order[i] if table.order is not None else i]: why
                for i, why in table.refusals.items()}
    if table.order is not None:
        offers.index = table.index[table.order[judged.offer_rows]]
    else:
        offers.index = table.index[judged.offer_rows]
    if spec.policy.explore is not None:
        metrics["explored_offers"] = int(decisions["explored"].sum())
    if spec.policy.explore is not None and exploration_cost:
        plain = backtest(without_exploration(spec), table, scorer, queue_status=queue_status,
                         truth=truth_values if table.order is None else _input_order(truth_values, table))
        metrics["exploration_cost"] = {
            name: None if metrics.get(key) is None else float(plain.metrics[key] - metrics[key])
            for name, key in (("expected accepts (model)", "expected_accepts"),
                              ("expected accepts (truth)", "true_expected_accepts"))}
    off_policy = None
    if feedback is not None:
        from .feedback import estimate

        off_policy = estimate(feedback, spec, scorer, queue_status=queue_status)
    if bar is not None:
        bar.close()
    return BacktestResult(spec, decisions, offers, metrics, per_rule, queue_hours, queue_load, refusals,
                          time.perf_counter() - started, engine, table, judged.offer_rows, off_policy)


def without_exploration(spec: RuleSpec) -> RuleSpec:
    """`spec` with its rules alone: ``policy.explore`` removed."""
    source = dict(spec.source)
    source["policy"] = {k: v for k, v in dict(source.get("policy") or {}).items() if k != "explore"}
    return load_spec(source)


def _input_order(values: np.ndarray | None, table: EventTable) -> np.ndarray | None:
    if values is None or table.order is None:
        return values
    out = np.empty_like(values)
    out[table.order] = values
    return out


def _decisions(spec: RuleSpec, table: EventTable, judged: Judged, score: np.ndarray) -> pd.DataFrame:
    n = table.n
    names = [r.name for r in spec.rules]
    queue_names = list(spec.queues)
    rule_queue = np.array([queue_names.index(r.queue) for r in spec.rules] + [-1], dtype=np.int64)
    rule = judged.rule.astype(np.int64)
    offer_id = np.full(n, None, dtype=object)
    rows = judged.offer_rows
    if len(rows):
        offer_id[rows] = np.array(judged.offer_ids, dtype=object)
    holdout = np.zeros(n, dtype=bool)
    holdout[rows[judged.offer_holdout]] = True
    explored = np.zeros(n, dtype=bool)
    propensity = np.full(n, np.nan)
    propensity[rows] = 1.0 if judged.offer_propensity is None else judged.offer_propensity
    if judged.offer_explored is not None:
        explored[rows] = judged.offer_explored
    answered, kind, expires = judged.answers
    expires_at = np.full(n, np.nan)
    expires_at[rows] = expires
    outcome = np.full(n, -1, dtype=np.int64)
    real = rows[~judged.offer_holdout]
    real_kind = kind[~judged.offer_holdout]
    outcome[real] = np.where(real_kind == ACCEPT, 0, np.where(real_kind == DECLINE, 1, 2))
    answered_at = np.full(n, np.nan)
    answered_at[real] = np.where(real_kind == NO_ANSWER, expires[~judged.offer_holdout],
                                 answered[~judged.offer_holdout])
    columns = {
        "action": _categorical(judged.action, ACTIONS),
        "reason": _categorical(judged.reason, REASONS),
        "rule": _categorical(rule, names),
        "queue": _categorical(rule_queue[rule], queue_names),
        "score": score,
        "offer_id": pd.Series(offer_id, dtype=object, copy=False),
        "holdout": holdout,
        "explored": explored,
        "propensity": propensity,
        "expires_at": expires_at,
        "recheck_after": judged.recheck,
        "outcome": _categorical(outcome, OUTCOMES),
        "answered_at": answered_at,
    }
    if judged.metadata is not None:
        meta = np.full(n, None, dtype=object)
        for j, value in judged.metadata.items():
            meta[j] = value
        columns["metadata"] = meta
    frame = pd.DataFrame(columns)
    if table.order is not None:
        back = np.empty(n, dtype=np.int64)
        back[table.order] = np.arange(n)
        frame = frame.iloc[back].reset_index(drop=True)
    frame.index = table.index
    return frame



# ============================================================================================ comparison


_COMPARED = ("events", "refused", "sessions", "offers", "offer_rate_per_session", "holdout", "expected_accepts",
             "expected_accept_rate", "true_expected_accepts", "true_expected_accept_rate", "accepted", "declined",
             "expired", "recorded_accept_rate", "eligible_visitors", "expected_uplift", "expected_uplift_per_offer",
             "expected_uplift_itt", "true_expected_uplift", "true_expected_uplift_per_offer",
             "true_expected_uplift_itt")


def compare(a: BacktestResult, b: BacktestResult, names: tuple[str, str] | None = None) -> pd.DataFrame:
    """Two backtests side by side: headline figures, actions, reasons and offers by rule, with the change."""
    left, right = names or (a.name, b.name)
    if left == right:
        left, right = f"{left} (a)", f"{right} (b)"
    rows: dict[str, tuple[Any, Any]] = {}
    for key in _COMPARED:
        if key in a.metrics or key in b.metrics:
            rows[key] = (a.metrics.get(key), b.metrics.get(key))
    for key in ACTIONS:
        rows[f"action: {key}"] = (a.metrics["actions"].get(key, 0), b.metrics["actions"].get(key, 0))
    for key in REASONS:
        x, y = a.metrics["reasons"].get(key, 0), b.metrics["reasons"].get(key, 0)
        if x or y:
            rows[f"reason: {key}"] = (x, y)
    for res, side in ((a, 0), (b, 1)):
        for rule, count in res.per_rule["offers"].items():
            key = f"offers by rule: {rule}"
            pair = list(rows.get(key, (0, 0)))
            pair[side] = int(count)
            rows[key] = tuple(pair)
    for name in sorted(set(a.metrics.get("queues", {})) | set(b.metrics.get("queues", {}))):
        for field_name in ("offers_per_hour", "expected_chats_per_hour", "hours_over_capacity"):
            rows[f"queue {name}: {field_name}"] = (a.metrics.get("queues", {}).get(name, {}).get(field_name),
                                                   b.metrics.get("queues", {}).get(name, {}).get(field_name))
    out = pd.DataFrame.from_dict(rows, orient="index", columns=[left, right])
    x = pd.to_numeric(out[left], errors="coerce")
    y = pd.to_numeric(out[right], errors="coerce")
    out["change"] = y - x
    with np.errstate(divide="ignore", invalid="ignore"):
        out["change %"] = np.where(x.to_numpy(dtype=float) != 0, (y - x).to_numpy(dtype=float) / x.to_numpy(dtype=float)
                                   * 100.0, np.nan)
    return out
