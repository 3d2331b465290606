"""Tune triggers interactively: per-rule wait time and score threshold, rule toggles, queue capacities, live backtest.

Two layers:

:class:`TriggerModel` (no widgets, this module)
    the history prepared once so that any setting of the tuner's knobs gives
    *exactly* the figures :func:`pcrules.backtest.backtest` gives for the
    ruleset those knobs describe (:meth:`TriggerModel.spec_for`), in a few tens
    of milliseconds for a million events.
:class:`Tuner` (ipywidgets, :mod:`pcrules.analysis.tuner_widget`)
    sliders, toggles and capacity fields over a :class:`TriggerModel`; a
    results panel and a queue-load chart (matplotlib, rendered to a PNG: works
    offline and in Voila) redrawn on every change; a Publish button that
    validates the tuned ruleset, shows its difference from the current one
    and publishes a bundle. Every error reaches the person as a sentence in
    the widget, never as a traceback. Notebook 3's helpers and the Voila app
    (:func:`dashboard`, ``dashboards/triggers.ipynb``) are in
    :mod:`pcrules.analysis.tuner_app`. Their names are importable from here too.

The representation
------------------

A tuned rule is ``B and seconds_on_page >= W [and score >= T]``: its other
conditions ``B`` (page, pages viewed, device, ...) do not move with the
sliders. So the model evaluates every ``B`` once (the backtest's own
vectorised matcher), keeps only the rows where some rule's ``B`` holds (the
*candidate rows*; every other valid row is ``none/no_rule`` whatever the knobs
say), scores them once with the model (the backtest's batch scorer), and keeps
them as the backtest's judge reads them (:class:`pcrules.analysis.judge.Stretches`:
by session stretch between idle evictions, then time), with each rule's queue
open or not per row.

A change of the knobs is then every rule's matches as one bit per rule
(strongest rule = lowest bit) in small-integer arrays — matches in full, but
for the score, later — from ``seconds_on_page >= W`` and ``score >= T`` over
the rule's rows, handed to the backtest's judge (:class:`pcrules.analysis.judge.Verdict`:
the stateless judgement, the offers, the session and visitor blocks), whose
verdict is counted rather than read row by row, and the backtest's figure
code (:func:`pcrules.analysis.figures.figures`). There is no statement of
the policy here.

``tests/test_tuning.py`` proves the figures equal to ``backtest()`` of
:meth:`TriggerModel.spec_for` — counts exactly, sums of probabilities to
1e-9 — on many settings, including cooldowns across sessions, idle
evictions, holdout, several offers per session, no offer at all, refused and
unsorted events, rules switched off and rules the tuner cannot retune.
``benchmarks/bench_tuner.py`` measures a change on ~100k sessions (~1M
events). Like ``backtest()`` without ``queue_status``, the tuner assumes no
queue is ever busy (opening hours apply).

A rule is *tunable* when its conditions on ``seconds_on_page``,
``minutes_on_page`` and ``score`` are all top-level ``gte`` (or absent); any
other rule (a time condition inside ``any_of``, ``score: {lt: ...}``) is kept
exactly as written and can only be switched on and off. The tuned ruleset
writes each tunable rule's knobs as ``seconds_on_page: {gte: W}`` and
``score: {gte: T}`` (``decision_value.with_parameters``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.decision import Reason
from ..core.policy import needs_score
from ..core.spec import AnyOf, Condition, RuleSpec, load_spec
from ..errors import PcrulesError
from ..matching.vector import VectorMatcher
from .effects import effect_columns, resolve_effects
from .figures import (
    BLOCK_REASONS,
    OfferFacts,
    distinct,
    figures,
    hour_buckets,
    hour_index,
    open_hours,
    queue_figures,
    queue_hours_frame,
    queue_load_frame,
)
from .judge import ACTIONS, REASONS, RuleBits, RuleSets, Stretches, Verdict, crossable
from .scores import SCORE_EPS, batch_scores, score_one, score_thresholds
from .table import ACCEPT, DECLINE, NO_ANSWER, EventTable
from .value import RuleChoice, with_parameters

__all__ = [
    "ACTIONS",
    "BLOCK_REASONS",
    "BUNDLE_ENV",
    "EVENTS_ENV",
    "REASONS",
    "InvalidSetting",
    "RuleSetting",
    "Settings",
    "SideBySide",
    "TriggerModel",
    "Tuner",
    "TunerResult",
    "TuningInputs",
    "dashboard",
    "expected_value_choice",
    "load_for_tuning",
    "parse_capacity",
    "plot_side_by_side",
    "queue_figures",
    "ruleset_diff",
    "side_by_side",
    "spec_text",
    "uplift_side_by_side",
]

EVENTS_ENV = "PCRULES_EVENTS"
BUNDLE_ENV = "PCRULES_BUNDLE"
_TIME = frozenset({"seconds_on_page", "minutes_on_page"})
_TUNED = _TIME | {"score"}
WAIT_DECIMALS = 3
THRESHOLD_DECIMALS = 4

# The widget and the notebook helpers live in their own modules; their names are reachable from here.
_ELSEWHERE = {
    "Tuner": "tuner_widget", "ruleset_diff": "tuner_widget", "spec_text": "tuner_widget",
    "TuningInputs": "tuner_app", "SideBySide": "tuner_app", "dashboard": "tuner_app",
    "expected_value_choice": "tuner_app", "load_for_tuning": "tuner_app", "plot_side_by_side": "tuner_app",
    "side_by_side": "tuner_app", "uplift_side_by_side": "tuner_app",
}


if TYPE_CHECKING:
    from .tuner_app import (
        SideBySide,
        TuningInputs,
        dashboard,
        expected_value_choice,
        load_for_tuning,
        plot_side_by_side,
        side_by_side,
        uplift_side_by_side,
    )
    from .tuner_widget import Tuner, ruleset_diff, spec_text


def __getattr__(name: str) -> Any:
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__package__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ELSEWHERE))


class InvalidSetting(PcrulesError, ValueError):
    """A knob holds a value the tuner cannot use; the message is a sentence for the person who set it."""


# ============================================================================================ settings


@dataclass(frozen=True)
class RuleSetting:
    """One rule's knobs: switched on, its wait (seconds on page) and score threshold (None or 0: none)."""

    on: bool = True
    wait_s: float = 0.0
    threshold: float | None = None

    @property
    def uses_score(self) -> bool:
        return self.threshold is not None and self.threshold > 0


@dataclass(frozen=True)
class Settings:
    """Every knob of the tuner: per rule (by name) and per queue (capacity per hour, None: no capacity)."""

    rules: Mapping[str, RuleSetting]
    capacities: Mapping[str, float | None]
    name: str | None = None  # the tuned ruleset's name (None: the current one's)

    def with_rule(self, rule: str, **changes: Any) -> Settings:
        if rule not in self.rules:
            raise InvalidSetting(f"There is no rule called {rule!r}.")
        rules = dict(self.rules)
        rules[rule] = replace(rules[rule], **changes)
        return replace(self, rules=rules)

    def with_capacity(self, queue: str, capacity: float | None) -> Settings:
        if queue not in self.capacities:
            raise InvalidSetting(f"There is no queue called {queue!r}.")
        caps = dict(self.capacities)
        caps[queue] = capacity
        return replace(self, capacities=caps)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parse_capacity(text: Any, queue: str) -> float | None:
    """A capacity typed by a person: empty means none; otherwise a positive number of chats per hour."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = _finite(text)
    else:
        raw = str(text).strip()
        if raw == "":
            return None
        try:
            value = _finite(float(raw.replace(",", "")))
        except ValueError:
            value = None
    if value is None or value <= 0:
        shown = str(text).strip()[:40]
        raise InvalidSetting(f"The capacity of queue {queue} must be a positive number of chats per hour "
                             f"(or empty for none), not {shown!r}.")
    return value



# ============================================================================================ the result


@dataclass
class TunerResult:
    """The figures of one setting, as :class:`pcrules.backtest.BacktestResult` has them.

    ``metrics`` has the backtest's keys (``offers``, ``expected_accepts``,
    ``actions``, ``reasons``, ``queues`` ...); ``per_rule`` one row per rule of
    the tuned ruleset (switched-off rules left out), the backtest's columns;
    ``queue_hours`` per queue and hour bucket (offers, expected chats, accepted)
    and ``queue_load`` per queue, as the backtest's.
    """

    settings: Settings
    metrics: dict[str, Any]
    rules: list[str]  # the tuned ruleset's rules, strongest first
    per_rule_counts: dict[str, np.ndarray]  # column -> one value per rule in `rules`
    queues: list[str]
    hours: np.ndarray  # epoch hour of each bucket
    offers_h: np.ndarray  # (queues, hours)
    chats_h: np.ndarray  # (queues, hours), NaN without a model
    accepted_h: np.ndarray  # (queues, hours)
    open_h: np.ndarray  # (queues, hours) bool
    seconds: float = 0.0
    # on a sample of a partitioned history: the additive figures scaled to the whole history, with their
    # intervals (index: figure; columns estimate, low, high); None on a whole history
    scaled: pd.DataFrame | None = None

    @property
    def per_rule(self) -> pd.DataFrame:
        frame = pd.DataFrame(index=pd.Index(self.rules, name="rule"))
        for column, values in self.per_rule_counts.items():
            frame[column] = values
        return frame

    @property
    def queue_hours(self) -> pd.DataFrame:
        return queue_hours_frame(self.queues, self.hours, self.open_h, self.offers_h, self.chats_h, self.accepted_h)

    @property
    def queue_load(self) -> pd.DataFrame:
        return queue_load_frame(self.metrics["queues"])

    @property
    def blocked(self) -> dict[str, int]:
        """Rows where a rule would have fired or waited but something held it back, by reason (holdout included)."""
        reasons = self.metrics["reasons"]
        return {r.value: reasons.get(r.value, 0) for r in (*BLOCK_REASONS, Reason.HOLDOUT)}



# ============================================================================================ the model


def tunable_knobs(rule: Any) -> tuple[float, float | None] | None:
    """(wait, threshold) when every time / score condition of `rule` is a top-level ``gte``; else None."""
    wait, threshold = 0.0, None
    for node in rule.when:
        if isinstance(node, AnyOf):
            if any(c.field in _TUNED for c in _walk_any(node)):
                return None
            continue
        if node.field not in _TUNED:
            continue
        if node.op != "gte":
            return None
        if node.field == "score":
            threshold = max(threshold or 0.0, float(node.value))
        else:
            wait = max(wait, float(node.value) * (60.0 if node.field == "minutes_on_page" else 1.0))
    return wait, threshold


def _walk_any(node: AnyOf) -> Iterator[Condition]:
    for branch in node.branches:
        for sub in branch:
            if isinstance(sub, AnyOf):
                yield from _walk_any(sub)
            else:
                yield sub


def _typing_varies(spec: RuleSpec) -> bool:
    """Whether switching a rule off can change how another rule's ``exists`` reads a field.

    A field the spec tests only with ``exists`` is untyped (any non-null value); once another rule compares
    it with a number or text, ``exists`` means "present with that type". Only fields outside the event
    contract are affected.
    """
    from ..core.spec import KNOWN_FIELD_TYPES

    exists: dict[str, set[str]] = {}
    typed: dict[str, set[str]] = {}
    for rule in spec.rules:
        for c in rule.conditions():
            if c.field in KNOWN_FIELD_TYPES:
                continue
            (exists if c.op == "exists" else typed).setdefault(c.field, set()).add(rule.name)
    return any(f in typed and typed[f] - users for f, users in exists.items())



# ============================================================================================ the model


class TriggerModel:
    """The history prepared for the tuner: :meth:`evaluate` equals ``backtest(spec_for(settings), ...)``.

    ``spec``: the current ruleset. ``events``: a DataFrame of events with the
    recorded answers (or an :class:`EventTable`, shared with backtests).
    ``scorer``: the model (``CompiledScorer``, ``AcceptanceModel``, anything
    the backtest takes), or None. ``truth``: true P(accept) per event (a
    column name or an array in the input's order) on a generated world.
    ``effects``: what an offer at each event does to the goal probability (as
    ``backtest(effects=...)``): then the figures include the expected uplift.
    ``partition`` and ``sample``: when `events` are a sample of the partitions of a partitioned history
    (:func:`pcrules.analysis.partitioned.read_sample`), each event's sampled-partition index (input order) and the
    :class:`~pcrules.analysis.partitioned.TuningSample`; then every result also has its additive figures scaled to
    the whole history with intervals (:attr:`TunerResult.scaled`).
    """

    MAX_RULES = 64

    def __init__(self, spec: RuleSpec | str | Mapping[str, Any], events: pd.DataFrame | EventTable,
                 scorer: Any = None, *, truth: str | np.ndarray | pd.Series | None = None, effects: Any = None,
                 partition: np.ndarray | None = None, sample: Any = None):
        started = time.perf_counter()
        self.spec = spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
        if len(spec.rules) > self.MAX_RULES:
            raise ValueError(f"the tuner handles at most {self.MAX_RULES} rules; {spec.name} has {len(spec.rules)}")
        exclude = ((truth,) if isinstance(truth, str) else ()) + effect_columns(effects)
        self.table = table = events if isinstance(events, EventTable) else EventTable(events, exclude=exclude)
        self.scorer = scorer
        self.rule_names = [r.name for r in spec.rules]
        self.queue_names = list(spec.queues)
        self.policy = spec.policy
        self._rule_queue = {r.name: self.queue_names.index(r.queue) for r in spec.rules}
        self._index = {name: k for k, name in enumerate(self.rule_names)}

        # -- which rules the tuner can retune, and their current knobs ------------------------------------
        self.tunable: dict[str, bool] = {}
        rules0: dict[str, RuleSetting] = {}
        for rule in spec.rules:
            knobs = tunable_knobs(rule)
            self.tunable[rule.name] = knobs is not None
            rules0[rule.name] = RuleSetting(True, math.nan, None) if knobs is None else \
                RuleSetting(True, knobs[0], knobs[1])
        self.initial = Settings(rules0, {q: spec.queues[q].capacity_per_hour for q in self.queue_names}, spec.name)

        # -- the rules' other conditions (B), once ---------------------------------------------------------
        valid = table.valid
        n = table.n
        self.typing_varies = _typing_varies(spec)
        self._zero_spec = with_parameters(spec, [RuleChoice(r.name, 0.0, None) for r in spec.rules
                                                 if self.tunable[r.name]])
        if not self.typing_varies:
            bases = self._base_masks(self._zero_spec, loose=True)
            relaxed = np.zeros(n, dtype=bool)
            for mask in bases.values():
                relaxed |= mask
            relaxed &= valid
        else:  # rare: every valid row is a candidate; bases are computed per set of rules switched on
            bases = {}
            relaxed = valid.copy()

        # -- the candidate rows, as the judge reads them: by session stretch, then time ---------------------
        self.stretches = st = Stretches(table, relaxed, self.policy.session_idle_ttl_s, self.policy.holdout)
        st.index_visitors()  # the rows of a visitor who declined, without a pass over every row
        self.rows = rows = st.rows
        m = self.m = st.m
        self.ts, self.sec = st.ts, st.sec

        # scores of the candidate rows, as the backtest computes them
        self.score = np.full(m, np.nan)
        if scorer is not None and m:
            self.score = np.asarray(batch_scores(scorer, table, rows), dtype=float).copy()
        self.present = ~np.isnan(self.score)
        self._score_order = np.argsort(np.where(self.present, self.score, np.inf), kind="stable")
        self._sorted_scores = self.score[self._score_order]
        self._corrected = np.zeros(m, dtype=bool)
        self._checked_thresholds: set[float] = set()
        self._can_correct = scorer is not None and hasattr(scorer, "predict_proba_one") and not isinstance(
            scorer, (np.ndarray, pd.Series, list))

        # -- rules as bits (strongest first = lowest bit) ----------------------------------------------------
        self.bits = bits = RuleBits(len(spec.rules))
        self._bit = {name: bits.bit(k) for k, name in enumerate(self.rule_names)}
        self._rule_rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._dense: dict[str, np.ndarray] = {}
        self.base = {}
        if not self.typing_varies:
            for name, mask in bases.items():
                self.base[name] = mask[rows]
            self._set_rule_rows(self.base)

        # queues: open per candidate row (as bits per rule); hour buckets over the whole history
        self.open_bits = bits.zeros(m)
        blocks = {}
        for name in self.queue_names:
            queue = spec.queues[name]
            if queue.hours is not None:
                from ..matching.vector import open_mask

                weekday, minute = table.columns.clock(queue.hours.tz)
                blocks[name] = open_mask(queue.hours, weekday[rows], minute[rows])
        for k, rule in enumerate(spec.rules):
            if rule.queue in blocks:
                bits.add(self.open_bits, blocks[rule.queue], k)
            else:
                self.open_bits |= bits.bit(k)
        self.hours = hour_buckets(table.ts[valid])
        self.n_hours = len(self.hours)
        self.hour = hour_index(self.ts, self.hours) if m else np.zeros(0, np.int64)
        self.open_h = open_hours(spec, self.hours)
        self._rule_queue_index = np.array([self._rule_queue[r] for r in self.rule_names], dtype=np.int64)

        # truth per candidate row
        self.truth = None
        if truth is not None:
            if isinstance(truth, str):
                raw = pd.to_numeric(table.frame[truth], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            else:
                values = np.asarray(truth, dtype=float)
                if len(values) != n:
                    raise ValueError(f"truth: expected one value per event ({n}), got {len(values)}")
                raw = values[table.order] if table.order is not None else values
            self.truth = raw[rows]

        # what an offer at each candidate row does to the goal probability (expected uplift)
        self.effects = resolve_effects(table, effects)
        self.gain = self.loss = None
        if self.effects is not None:
            self.gain, self.loss = self.effects.at(rows)

        # constant figures
        vcode, skey, _ = table.keys()
        self.valid_events = int(valid.sum())
        self.n_sessions = distinct(skey[valid])
        self.n_visitors = distinct(vcode[valid])

        # rules kept as written: their matches (positions per kind), once
        self._fixed_names = [r.name for r in spec.rules if not self.tunable[r.name]]
        self._fixed_mask = bits.union([self._index[r] for r in self._fixed_names])
        self._fixed: dict[str, tuple[np.ndarray, ...]] = {}
        self._fixed_key: Any = None
        if self._fixed_names:
            for t in score_thresholds(spec, self._fixed_names).tolist():
                self._correct_near(t)
            if not self.typing_varies:
                self._fixed = self._fixed_matches(spec)
        self.sample = sample
        self.part: np.ndarray | None = None
        if sample is not None:
            if partition is None or len(partition) != n:
                raise ValueError(f"partition: expected one sampled-partition index per event ({n})")
            k = sample.partitions[0]
            part_all = np.asarray(partition, dtype=np.int64)
            part_all = part_all[table.order] if table.order is not None else part_all
            self.part = part_all[rows]
            self._part_constants = {
                "events": np.bincount(part_all, minlength=k).astype(float),
                "sessions": np.array([distinct(skey[valid & (part_all == j)]) for j in range(k)], dtype=float),
                "visitors": np.array([distinct(vcode[valid & (part_all == j)]) for j in range(k)], dtype=float)}
        self.last_stats: dict[str, Any] = {}
        self.prepare_seconds = time.perf_counter() - started

    def _scaled(self, facts: OfferFacts, effect: Mapping[str, np.ndarray], part: np.ndarray) -> pd.DataFrame:
        """The additive figures per sampled partition, scaled to the whole history (see ``sample``)."""
        k = self.sample.partitions[0]
        real, hold = ~facts.hold, facts.hold

        def per(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
            w = None if weights is None else np.nan_to_num(weights[mask])
            return np.bincount(part[mask], weights=w, minlength=k).astype(float)

        x = dict(self._part_constants)
        x["offers"], x["holdout"] = per(real), per(hold)
        if facts.p is not None:
            x["expected_accepts"] = per(real, facts.p)
        if facts.truth is not None:
            x["true_expected_accepts"] = per(real, facts.truth)
        for label, code in (("accepted", ACCEPT), ("declined", DECLINE), ("expired", NO_ANSWER)):
            x[label] = per(real & (facts.kind == code))
        for column in ("expected_uplift", "true_expected_uplift"):
            if column in effect:
                x[column] = per(real, effect[column])
        order = [f for f in ("events", "sessions", "visitors", "offers", "holdout", "expected_accepts",
                             "true_expected_accepts", "accepted", "declined", "expired", "expected_uplift",
                             "true_expected_uplift") if f in x]
        return self.sample.scale({f: x[f] for f in order})

    # -- preparation helpers ---------------------------------------------------------------------------------
    def _base_masks(self, spec: RuleSpec, loose: bool) -> dict[str, np.ndarray]:
        """Per rule of `spec`: the rows where its conditions other than wait and score hold (all table rows).

        A rule kept as written contributes (with ``loose``) its loosest variant: the rows where it can match.
        """
        matcher = VectorMatcher(spec)
        out = {}
        for k, rule in enumerate(spec.rules):
            if self.tunable[rule.name]:
                out[rule.name] = matcher.variant(self.table.columns, k, "r")
            elif loose:
                for tag in ("r", "s", "f"):
                    mask = matcher.variant(self.table.columns, k, tag)
                    if mask is not None:
                        out[rule.name] = mask
                        break
        return out

    def _set_rule_rows(self, bases: Mapping[str, np.ndarray]) -> None:
        """Per tunable rule, the candidate rows where its other conditions hold: as positions with their time on
        page and score (a rule on few rows), and as a mask over every candidate row (a rule on many)."""
        self._rule_rows = {}
        self._dense: dict[str, np.ndarray] = {}
        for name, mask in bases.items():
            if self.tunable[name]:
                idx = np.flatnonzero(mask)
                self._rule_rows[name] = (idx, self.sec[idx], self.score[idx])
                if len(idx) > self.m // 8:
                    self._dense[name] = np.ascontiguousarray(mask, dtype=bool)

    def _fixed_matches(self, spec: RuleSpec) -> dict[str, tuple[np.ndarray, ...]]:
        """For rules kept as written (present in `spec`): positions where they match in full, but for the
        score, later, and later with a moment on this page when they can fire."""
        table = self.table
        score = np.full(table.n, np.nan)
        score[self.rows] = self.score
        arrays = VectorMatcher(spec).match(table.columns, score)
        index = {r.name: k for k, r in enumerate(spec.rules)}
        out = {}
        for name in self._fixed_names:
            if name not in index:
                continue
            k = index[name]
            rule = spec.rules[k]
            need = needs_score(rule)
            full = arrays.full[k][self.rows]
            uns = arrays.unscored[k][self.rows] & self.present
            later = arrays.later[k][self.rows] & (self.present | (not need))
            cross = later & crossable(rule, self.sec)  # a later match waits only with a moment ahead to fire
            out[name] = tuple(np.flatnonzero(x) for x in (full, uns, later, cross))
        return out

    def _for_enabled(self, enabled: Sequence[str]) -> None:
        """Bases and fixed matches for this set of rules switched on (only when field typing depends on it)."""
        key = frozenset(enabled)
        if key == self._fixed_key:
            return
        off = [RuleChoice(r, None, None) for r in self.rule_names if r not in key]
        zero = with_parameters(self._zero_spec, off)
        bases = self._base_masks(zero, loose=False)
        self._set_rule_rows({name: mask[self.rows] for name, mask in bases.items()})
        if self._fixed_names:
            self._fixed = self._fixed_matches(with_parameters(self.spec, off))
        self._fixed_key = key

    # -- knobs -> ruleset ----------------------------------------------------------------------------------
    def check(self, settings: Settings) -> Settings:
        """`settings` validated and rounded as the ruleset will carry them; InvalidSetting (a sentence) if not."""
        if not isinstance(settings, Settings):
            raise InvalidSetting("The tuner's settings are not in the expected form.")
        if set(settings.rules) != set(self.rule_names):
            unknown = sorted(set(settings.rules) - set(self.rule_names))
            missing = sorted(set(self.rule_names) - set(settings.rules))
            raise InvalidSetting("The settings do not name the ruleset's rules"
                                 + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                                 + (f"; missing: {', '.join(missing)}" if missing else "") + ".")
        rules = {}
        for name in self.rule_names:
            s = settings.rules[name]
            if not isinstance(s.on, (bool, np.bool_)):
                raise InvalidSetting(f"Rule {name}: on/off must be true or false, not {s.on!r}.")
            if not self.tunable[name]:
                rules[name] = RuleSetting(bool(s.on), math.nan, None)
                continue
            wait = _finite(s.wait_s)
            if wait is None or wait < 0:
                raise InvalidSetting(f"Rule {name}: the wait time must be a number of seconds, 0 or more, "
                                     f"not {s.wait_s!r}.")
            threshold = s.threshold
            if threshold is not None:
                value = _finite(threshold)
                if value is None or not 0.0 <= value <= 1.0:
                    raise InvalidSetting(f"Rule {name}: the score threshold must be a probability between 0 and "
                                         f"1, not {threshold!r}.")
                threshold = round(value, THRESHOLD_DECIMALS)
                if threshold <= 0:
                    threshold = None  # without a model a rule with a threshold never fires, as in the runtime
            rules[name] = RuleSetting(bool(s.on), round(wait, WAIT_DECIMALS), threshold)
        unknown_q = sorted(set(settings.capacities) - set(self.queue_names))
        if unknown_q:
            raise InvalidSetting(f"There is no queue called {', '.join(unknown_q)}.")
        caps = {}
        for q in self.queue_names:
            if q not in settings.capacities:
                raise InvalidSetting(f"The settings lack the capacity of queue {q}.")
            caps[q] = parse_capacity(settings.capacities[q], q)
        name = settings.name
        if name is not None and not isinstance(name, str):
            raise InvalidSetting(f"The ruleset's name must be text, not {name!r}.")
        return Settings(rules, caps, name.strip() if isinstance(name, str) and name.strip() else None)

    def choices(self, settings: Settings) -> list[RuleChoice]:
        """The :func:`decision_value.with_parameters` choices of (checked) `settings`."""
        out = []
        for name in self.rule_names:
            s = settings.rules[name]
            if self.tunable[name]:
                out.append(RuleChoice(name, s.wait_s if s.on else None, s.threshold if s.on else None))
            elif not s.on:
                out.append(RuleChoice(name, None, None))
        return out

    def spec_for(self, settings: Settings) -> RuleSpec:
        """The ruleset the knobs describe (validated by ``load_spec``: SpecError lists every problem)."""
        settings = self.check(settings)
        source = copy.deepcopy(dict(self.spec.source))
        if settings.name:
            source["name"] = settings.name
        queues = dict(source.get("queues") or {})
        for q, cap in settings.capacities.items():
            body = dict(queues.get(q) or {})
            if cap is None:
                body.pop("capacity_per_hour", None)
            else:
                body["capacity_per_hour"] = int(cap) if float(cap).is_integer() else float(cap)
            queues[q] = body
        source["queues"] = queues
        return with_parameters(load_spec(source), self.choices(settings))

    def settings_from(self, choices: Sequence[RuleChoice], base: Settings | None = None) -> Settings:
        """Settings from :class:`decision_value.RuleChoice` (what ``decision_value.tune`` chose)."""
        settings = base or self.initial
        for c in choices:
            if c.rule not in self.tunable:
                raise InvalidSetting(f"There is no rule called {c.rule!r}.")
            if c.off:
                settings = settings.with_rule(c.rule, on=False)
            elif self.tunable[c.rule]:
                settings = settings.with_rule(c.rule, on=True, wait_s=float(c.wait_s), threshold=c.threshold)
        return settings

    # -- the evaluation --------------------------------------------------------------------------------------
    def _correct_near(self, threshold: float) -> None:
        """The backtest's guard: a batch score within 1e-9 of a threshold is recomputed the runtime's way."""
        if not self._can_correct or not self.m or threshold in self._checked_thresholds:
            return
        lo = np.searchsorted(self._sorted_scores, threshold - 2 * SCORE_EPS, side="left")
        hi = np.searchsorted(self._sorted_scores, threshold + 2 * SCORE_EPS, side="right")
        for pos in self._score_order[lo:hi].tolist():
            if abs(self.score[pos] - threshold) <= SCORE_EPS and not self._corrected[pos]:
                value = score_one(self.scorer, self.table.event(int(self.rows[pos])).fields)
                self.score[pos] = value
                self._corrected[pos] = True
                self.present[pos] = not math.isnan(value)
                for idx, _, score_k in self._rule_rows.values():
                    j = np.searchsorted(idx, pos)
                    if j < len(idx) and idx[j] == pos:
                        score_k[j] = value
        if len(self._checked_thresholds) < 10_000:
            self._checked_thresholds.add(threshold)

    def evaluate(self, settings: Settings) -> TunerResult:
        """The backtest's figures for the ruleset `settings` describe (see the module docstring)."""
        started = time.perf_counter()
        settings = self.check(settings)
        m = self.m
        enabled = [r for r in self.rule_names if settings.rules[r].on]
        if self.typing_varies:
            self._for_enabled(enabled)
        for name in enabled:
            if self.tunable[name] and settings.rules[name].uses_score:
                self._correct_near(settings.rules[name].threshold)

        # -- 1. every rule's matches as bits: full, but for the score, later ------------------------------------
        bits = self.bits
        full, uns, later = bits.zeros(m), bits.zeros(m), bits.zeros(m)
        fixed_on = [name for name in enabled if not self.tunable[name]]
        for name in enabled:
            bit = self._bit[name]
            if not self.tunable[name]:
                f_pos, u_pos, l_pos, _ = self._fixed[name]
                full[f_pos] |= bit
                uns[u_pos] |= bit
                later[l_pos] |= bit
                continue
            s = settings.rules[name]
            dense = self._dense.get(name)
            if dense is not None:  # whole-array operations beat gathering and scattering many positions
                k = self._index[name]
                ge = self.sec >= s.wait_s
                if s.uses_score:
                    with np.errstate(invalid="ignore"):
                        ok = self.score >= s.threshold
                    b_ge = dense & ge
                    parts = ((full, b_ge & ok), (uns, b_ge & ~ok & self.present), (later, dense & ~ge & self.present))
                else:
                    parts = ((full, dense & ge), (later, dense & ~ge))
                for target, mask in parts:
                    bits.add(target, mask, k)
                continue
            idx, sec_k, score_k = self._rule_rows[name]
            ge = sec_k >= s.wait_s
            if s.uses_score:
                with np.errstate(invalid="ignore"):
                    ok = score_k >= s.threshold
                    scored = score_k == score_k
                full[idx[ge & ok]] |= bit
                uns[idx[ge & ~ok & scored]] |= bit
                later[idx[~ge & scored]] |= bit
            else:
                full[idx[ge]] |= bit
                later[idx[~ge]] |= bit
        if fixed_on:  # a later match of a rule kept as written waits only if it has a moment to fire on this page
            cross = later & ~self._fixed_mask
            for name in fixed_on:
                cross[self._fixed[name][3]] |= self._bit[name]
        else:
            cross = later

        # -- 2. the backtest's judge: the stateless judgement, the offers, the session and visitor blocks -------
        verdict = Verdict(self.stretches, bits, RuleSets(full, uns, later, cross, self.open_bits), self.policy)
        self.last_stats = verdict.offers.stats
        grid, reasons, actions = verdict.counts(self.valid_events, self.table.n - self.valid_events)

        # -- 3. the backtest's figures --------------------------------------------------------------------------
        made = verdict.offers
        pos = made.pos
        st = self.stretches
        facts = OfferFacts(made.rule, made.hold, made.kind, st.visitor[pos], st.session(pos), self.hour[pos],
                           self.score[pos] if self.scorer is not None else None,
                           None if self.truth is None else self.truth[pos],
                           None if self.gain is None else self.gain[pos], None if self.loss is None else self.loss[pos])
        fig = figures(facts, events=self.table.n, valid_events=self.valid_events, sessions=self.n_sessions,
                      visitors=self.n_visitors, actions=actions, reasons=reasons, grid=grid,
                      shown=np.array([self._index[r] for r in enabled], dtype=np.int64),
                      rule_queue=self._rule_queue_index, queue_names=self.queue_names,
                      capacities=settings.capacities, open_h=self.open_h,
                      effects=None if self.effects is None else self.effects.description)
        result = TunerResult(settings, fig.metrics, list(enabled), fig.per_rule, list(self.queue_names), self.hours,
                             fig.offers_h, fig.chats_h, fig.accepted_h, self.open_h)
        if self.sample is not None and self.part is not None:
            result.scaled = self._scaled(facts, fig.effect, self.part[pos])
        result.seconds = time.perf_counter() - started
        return result
