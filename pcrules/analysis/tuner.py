"""Tune triggers interactively: per-rule wait time and score threshold, rule toggles, queue capacities, live backtest.

Two layers:

:class:`TriggerModel` (no widgets)
    the history prepared once so that any setting of the tuner's knobs gives
    *exactly* the figures :func:`pcrules.backtest.backtest` gives for the
    ruleset those knobs describe (:meth:`TriggerModel.spec_for`), in a few tens
    of milliseconds for a million events.
:class:`Tuner` (ipywidgets)
    sliders, toggles and capacity fields over a :class:`TriggerModel`; a
    results panel and a queue-load chart (matplotlib, rendered to a PNG: works
    offline and in Voila) redrawn on every change; a Publish button that
    validates the tuned ruleset, shows its difference from the current one
    and publishes a bundle. Every error reaches the person as a sentence in
    the widget, never as a traceback. :func:`dashboard` is the Voila app
    (``dashboards/triggers.ipynb``).

The representation
------------------

A tuned rule is ``B and seconds_on_page >= W [and score >= T]``: its other
conditions ``B`` (page, pages viewed, device, ...) do not move with the
sliders. So the model evaluates every ``B`` once (the backtest's own
vectorised matcher), keeps only the rows where some rule's ``B`` holds (the
*candidate rows*; every other valid row is ``none/no_rule`` whatever the knobs
say), scores them once with the model (the backtest's batch scorer), and
stores for each candidate row its time on page, score, whether each rule's
queue is open, the recorded answer, the visitor and the session stretch
between idle evictions (the backtest's ``epoch``), ordered by stretch, then time.

A change of the knobs is then:

1. every rule's matches as one bit per rule (strongest rule = lowest bit) in
   three small-integer arrays — matches in full, but for the score, later —
   from ``seconds_on_page >= W`` and ``score >= T`` over the rule's rows; the
   stateless judgement (which rule fires, waits, is closed, falls short of
   its score) is then a handful of whole-array operations and a lookup of the
   lowest set bit: the backtest's ``_stateless`` formulas;
2. the session pass: with ``max_offers_per_session == 1`` a stretch's offer is
   its first *firing* row, unless a decline's cooldown covers it; the few
   visitors whose declined first offer could reach the first firing row of
   another of their stretches are decided by the backtest's sequential rule,
   a stretch at a time (a heap by time; a row inside a cooldown jumps to the
   first firing row after it). Other ``max_offers_per_session`` values send
   every visitor through the backtest's row-by-row step (exact, slower);
3. the blocks (``in_chat``, ``offer_pending``, ``max_offers``, ``cooldown``)
   of the matched rows after each stretch's first offer and of the rows of
   visitors who declined, and the counts: the stateless counts with those
   rows' stateless verdicts taken out and their blocks put in.

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

import collections
import contextlib
import copy
import difflib
import html
import io
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .backtest import (
    EventTable,
    OfferLedger,
    batch_scores,
    effect_columns,
    resolve_effects,
    rows_in_cooldown,
    score_one,
    uplift_figures,
)
from ..core.decision import Reason
from .value import RuleChoice, with_parameters
from ..errors import PcrulesError, SpecError
from ..matching.vector import VectorMatcher, local_clock_arrays, open_mask
from ..core.policy import crossings as _crossings, time_holds as _time_holds, in_holdout, needs_score
from ..core.spec import STRING, AnyOf, Condition, RuleSpec, load_spec
from ..stats.uplift import goal_effect

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

log = logging.getLogger("pcrules.tuning")

EVENTS_ENV = "PCRULES_EVENTS"
BUNDLE_ENV = "PCRULES_BUNDLE"
ACTIONS = ("offer", "wait", "none", "refused")
REASONS = tuple(r.value for r in Reason)
BLOCK_REASONS = (Reason.OFFER_PENDING, Reason.MAX_OFFERS, Reason.COOLDOWN, Reason.IN_CHAT, Reason.CLOSED,
                 Reason.QUEUE_BUSY, Reason.SCORE_BELOW)
_R = {r: i for i, r in enumerate(Reason)}
_NO_RULE, _CLOSED, _SCORE_BELOW, _HOLDOUT = _R[Reason.NO_RULE], _R[Reason.CLOSED], _R[Reason.SCORE_BELOW], \
    _R[Reason.HOLDOUT]
_IN_CHAT, _PENDING, _MAX, _COOLDOWN = _R[Reason.IN_CHAT], _R[Reason.OFFER_PENDING], _R[Reason.MAX_OFFERS], \
    _R[Reason.COOLDOWN]
_A_OFFER, _A_WAIT, _A_NONE = 0, 1, 2
_NO_ANSWER, _ACCEPT, _DECLINE = 0, 1, 2  # as table.answers() codes them
_TIME = frozenset({"seconds_on_page", "minutes_on_page"})
_TUNED = _TIME | {"score"}
_SCORE_EPS = 1e-9  # the backtest's: a score this close to a threshold is recomputed the runtime's way
WAIT_DECIMALS = 3
THRESHOLD_DECIMALS = 4


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

    @property
    def per_rule(self) -> pd.DataFrame:
        frame = pd.DataFrame(index=pd.Index(self.rules, name="rule"))
        for column, values in self.per_rule_counts.items():
            frame[column] = values
        return frame

    @property
    def queue_hours(self) -> pd.DataFrame:
        frames = []
        for qi, name in enumerate(self.queues):
            frames.append(pd.DataFrame({"queue": name, "hour": pd.to_datetime(self.hours * 3600, unit="s", utc=True),
                                        "open": self.open_h[qi], "offers": self.offers_h[qi],
                                        "expected_chats": self.chats_h[qi], "accepted": self.accepted_h[qi]}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @property
    def queue_load(self) -> pd.DataFrame:
        rows = [{"queue": name, **values} for name, values in self.metrics["queues"].items()]
        return pd.DataFrame(rows).set_index("queue") if rows else pd.DataFrame()

    @property
    def blocked(self) -> dict[str, int]:
        """Rows where a rule would have fired or waited but something held it back, by reason (holdout included)."""
        reasons = self.metrics["reasons"]
        return {r.value: reasons.get(r.value, 0) for r in (*BLOCK_REASONS, Reason.HOLDOUT)}


# ============================================================================================ the model


def _top_level_gte(rule: Any) -> tuple[float, float | None] | None:
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


class TriggerModel:
    """The history prepared for the tuner: :meth:`evaluate` equals ``backtest(spec_for(settings), ...)``.

    ``spec``: the current ruleset. ``events``: a DataFrame of events with the
    recorded answers (or an :class:`EventTable`, shared with backtests).
    ``scorer``: the model (``CompiledScorer``, ``AcceptanceModel``, anything
    the backtest takes), or None. ``truth``: true P(accept) per event (a
    column name or an array in the input's order) on a generated world.
    ``effects``: what an offer at each event does to the goal probability (as
    ``backtest(effects=...)``): then the figures include the expected uplift.
    """

    MAX_RULES = 64

    def __init__(self, spec: RuleSpec | str | Mapping[str, Any], events: pd.DataFrame | EventTable,
                 scorer: Any = None, *, truth: str | np.ndarray | pd.Series | None = None, effects: Any = None):
        import time

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
            knobs = _top_level_gte(rule)
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

        # -- the candidate rows, ordered by session stretch, then time -------------------------------------
        rows = np.flatnonzero(relaxed)
        epoch_all = table.epochs(np.flatnonzero(valid), self.policy.session_idle_ttl_s) if valid.any() else \
            np.full(n, -1, dtype=np.int64)
        rows = rows[np.lexsort((rows, epoch_all[rows]))]
        self.rows = rows
        m = self.m = len(rows)
        self.ts = table.ts[rows]
        self.sec = table.seconds[rows]
        self.epoch = epoch_all[rows]
        vcode, skey, _ = table.keys()
        self.visitor = vcode[rows]
        self.session = skey[rows]
        code, delay = table.answers()
        self.answer = code[rows]
        self.delay = delay[rows]
        starts = np.flatnonzero(np.r_[True, self.epoch[1:] != self.epoch[:-1]]) if m else np.zeros(0, np.int64)
        lengths = np.diff(np.r_[starts, m])
        self._stretch_start = np.repeat(starts, lengths)
        self._stretch_end = np.repeat(starts + lengths, lengths)
        by_visitor = np.lexsort((rows, self.visitor)) if m else np.zeros(0, np.int64)
        self._vm = by_visitor  # positions, by visitor then time
        sorted_v = self.visitor[by_visitor]
        visitor_ids = table.columns.view("visitor_id", STRING).uniques
        n_codes = len(visitor_ids) + 1
        self._v_lo = np.searchsorted(sorted_v, np.arange(n_codes), side="left")
        self._v_hi = np.searchsorted(sorted_v, np.arange(n_codes), side="right")

        # holdout per visitor (the runtime's stable hash)
        self._held = np.zeros(n_codes, dtype=bool)
        if self.policy.holdout > 0 and m:
            for v in np.unique(self.visitor).tolist():
                self._held[v] = in_holdout(visitor_ids[v], self.policy.holdout)
        self.hold = self._held[self.visitor] if m else np.zeros(0, dtype=bool)

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
        k0 = len(spec.rules)
        self._dtype = np.uint8 if k0 <= 8 else np.uint16 if k0 <= 16 else np.uint32 if k0 <= 32 else np.uint64
        self._bit = {name: self._dtype(1 << k) for k, name in enumerate(self.rule_names)}
        self._lut = None
        if k0 <= 16:
            values = np.arange(1, 1 << k0, dtype=np.int64)
            self._lut = np.full(1 << k0, -1, dtype=np.int64)
            self._lut[values] = np.log2(values & -values).astype(np.int64)
        self._rule_rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._dense: dict[str, np.ndarray] = {}
        self.base = {}
        if not self.typing_varies:
            for name, mask in bases.items():
                self.base[name] = mask[rows]
            self._set_rule_rows(self.base)

        # queues: open per candidate row (as bits per rule); hour buckets over the whole history
        self.open_bits = np.zeros(m, dtype=self._dtype)
        open_q = []
        for name in self.queue_names:
            queue = spec.queues[name]
            if queue.hours is None:
                open_q.append(np.ones(m, dtype=bool))
            else:
                weekday, minute = table.columns.clock(queue.hours.tz)
                open_q.append(open_mask(queue.hours, weekday[rows], minute[rows]))
        for name in self.rule_names:
            self.open_bits[open_q[self._rule_queue[name]]] |= self._bit[name]
        ts_all = table.ts
        if valid.any():
            first_hour = int(np.floor(np.nanmin(ts_all[valid]) / 3600.0))
            last_hour = int(np.floor(np.nanmax(ts_all[valid]) / 3600.0))
        else:
            first_hour = last_hour = 0
        self.hours = np.arange(first_hour, last_hour + 1)
        self.n_hours = len(self.hours)
        self.hour = (np.floor(self.ts / 3600.0).astype(np.int64) - first_hour) if m else np.zeros(0, np.int64)
        self.open_h = np.ones((len(self.queue_names), self.n_hours), dtype=bool)
        for qi, name in enumerate(self.queue_names):
            queue = spec.queues[name]
            if queue.hours is not None:
                wd, minute = local_clock_arrays(self.hours * 3600.0 + 1800.0, queue.hours.tz)
                self.open_h[qi] = open_mask(queue.hours, wd, minute)

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
        self.valid_events = int(valid.sum())
        self.n_sessions = _distinct(skey[valid])
        self.n_visitors = _distinct(vcode[valid])
        self._n_epochs = int(self.epoch.max()) + 2 if m else 1

        # rules kept as written: their matches (positions per kind), once
        self._fixed_names = [r.name for r in spec.rules if not self.tunable[r.name]]
        self._fixed_mask = self._dtype(sum(int(self._bit[r]) for r in self._fixed_names))
        self._fixed: dict[str, tuple[np.ndarray, ...]] = {}
        self._fixed_key: Any = None
        if self._fixed_names:
            for t in _spec_thresholds(spec, self._fixed_names):
                self._correct_near(t)
            if not self.typing_varies:
                self._fixed = self._fixed_matches(spec)
        self.last_stats: dict[str, Any] = {}
        self.prepare_seconds = time.perf_counter() - started

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
            points = np.array([p for p in _crossings(rule) if _time_holds(rule.when, p)], dtype=float)
            if len(points):
                cross = later & (np.searchsorted(points, self.sec, side="right") < len(points))
            else:
                cross = np.zeros(self.m, dtype=bool)
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
        lo = np.searchsorted(self._sorted_scores, threshold - 2 * _SCORE_EPS, side="left")
        hi = np.searchsorted(self._sorted_scores, threshold + 2 * _SCORE_EPS, side="right")
        for pos in self._score_order[lo:hi].tolist():
            if abs(self.score[pos] - threshold) <= _SCORE_EPS and not self._corrected[pos]:
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

    def _first(self, bits: np.ndarray) -> np.ndarray:
        """The strongest rule (original index) whose bit is set, -1 for none."""
        if self._lut is not None:
            return self._lut[bits]
        out = np.full(len(bits), -1, dtype=np.int64)
        for k in range(len(self.rule_names) - 1, -1, -1):
            out[(bits >> self._dtype(k)) & self._dtype(1) != 0] = k
        return out

    def evaluate(self, settings: Settings) -> TunerResult:
        """The backtest's figures for the ruleset `settings` describe (see the module docstring)."""
        import time

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
        dt = self._dtype
        full = np.zeros(m, dtype=dt)
        uns = np.zeros(m, dtype=dt)
        later = np.zeros(m, dtype=dt)
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
                shift = self._dtype(self._index[name])
                ge = self.sec >= s.wait_s
                if s.uses_score:
                    with np.errstate(invalid="ignore"):
                        ok = self.score >= s.threshold
                    b_ge = dense & ge
                    parts = ((full, b_ge & ok), (uns, b_ge & ~ok & self.present), (later, dense & ~ge & self.present))
                else:
                    parts = ((full, dense & ge), (later, dense & ~ge))
                for target, mask in parts:
                    target |= mask.view(np.uint8).astype(dt, copy=False) << shift
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

        # -- 2. the stateless judgement (the backtest's _stateless), as positions and counts -----------------
        fo = full & self.open_bits
        fire_pos = np.flatnonzero(fo)
        any_full = full != 0
        qb_pos = np.flatnonzero(any_full & (fo == 0))
        rest = ~any_full & ((uns | later) != 0)
        n_rest = int(np.count_nonzero(rest))
        waiting = rest & (cross != 0)
        n_wait = int(np.count_nonzero(waiting))
        below_pos = np.flatnonzero(rest & ~waiting & (uns != 0))
        n_matched = len(fire_pos) + len(qb_pos) + n_rest
        n_nothing = n_rest - n_wait - len(below_pos)  # matched rows that neither wait nor fall short of a score

        # -- 3. the session pass: which firing rows become offers ----------------------------------------------
        offers = self._offers(fire_pos)
        o_pos = offers[0]

        # -- 4. the session and visitor blocks of every other matched row ----------------------------------------
        matched = (full | uns | later) != 0
        s_pos, s_reason = self._blocks(matched, offers)
        check = np.zeros(m, dtype=np.int8)
        check[s_pos] = 1
        check[o_pos] += 2
        if (check[o_pos] != 2).any() or ((check[fire_pos] != 1) & (check[fire_pos] != 2)).any():
            raise AssertionError("tuner: the sequential and the vectorised session views disagree")

        # the stateless judgement of the stopped rows, to take out of the counts
        f, u, lt, c, fos = full[s_pos], uns[s_pos], later[s_pos], cross[s_pos], fo[s_pos]
        cls = np.where(fos != 0, 0, np.where(f != 0, 1, np.where(c != 0, 2, np.where(u != 0, 3, 4))))
        first_f, first_u = self._first(f), self._first(u)
        strongest = self._first(np.where(f != 0, f, np.where(lt != 0, lt, u)))
        k0 = len(self.rule_names)
        n_reasons = len(REASONS)
        grid = np.zeros((k0, n_reasons), dtype=np.int64)
        if len(qb_pos):
            grid[:, _CLOSED] += np.bincount(self._first(full[qb_pos]), minlength=k0)
        if len(below_pos):
            grid[:, _SCORE_BELOW] += np.bincount(self._first(uns[below_pos]), minlength=k0)
        grid[:, _CLOSED] -= np.bincount(first_f[cls == 1], minlength=k0)
        grid[:, _SCORE_BELOW] -= np.bincount(first_u[cls == 3], minlength=k0)
        if len(s_pos):
            grid += np.bincount(strongest * n_reasons + s_reason, minlength=k0 * n_reasons).reshape(k0, n_reasons)
        s_wait = int((cls == 2).sum())
        s_nothing = int((cls == 4).sum())
        no_rule = (self.valid_events - n_matched) + (n_nothing - s_nothing)
        offer_rule = self._first(fo[o_pos])  # the strongest rule matching in full whose queue is open
        result = self._figures(settings, enabled, offers, offer_rule, grid, no_rule, n_wait - s_wait)
        result.seconds = time.perf_counter() - started
        return result

    def _offers(self, fire_pos: np.ndarray) -> tuple[np.ndarray, ...]:
        """Offers (and holdout would-be offers) among the firing rows, in time order: positions, holdout flag,
        answer code, answered at, expires at, the rule that fired."""
        policy = self.policy
        max_offers = policy.max_offers_per_session
        self.last_stats = {"candidate_rows": self.m, "firing_rows": len(fire_pos), "visitors_stepped": 0,
                           "rows_stepped": 0, "path": "none"}
        if max_offers <= 0 or not len(fire_pos):
            empty = np.zeros(0, dtype=np.int64)
            return empty, np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int8), np.zeros(0), np.zeros(0)
        loop = np.zeros(len(self._held), dtype=bool)
        if max_offers == 1:
            ep = self.epoch[fire_pos]
            first = fire_pos[np.r_[True, ep[1:] != ep[:-1]]]  # each stretch's first firing row: its offer,
            # unless a decline's cooldown covers it. Only a visitor with a declined first offer whose cooldown
            # reaches their next stretch's first firing row (by time) can be affected: those go row by row.
            kind, answered = self._answer(first)
            by_visitor = np.lexsort((self.rows[first], self.visitor[first]))
            f, k, a = first[by_visitor], kind[by_visitor], answered[by_visitor]
            vis = self.visitor[f]
            reach = (k[:-1] == _DECLINE) & (vis[1:] == vis[:-1]) & \
                (self.ts[f[1:]] < a[:-1] + policy.decline_cooldown_s)
            loop[vis[:-1][reach]] = True
            fast = first[~loop[self.visitor[first]]]
        else:
            loop[self.visitor[fire_pos]] = True  # several offers per session: every visitor, row by row
            fast = np.zeros(0, dtype=np.int64)
        slow = fire_pos[loop[self.visitor[fire_pos]]]
        self.last_stats = {"candidate_rows": self.m, "firing_rows": len(fire_pos),
                           "visitors_stepped": int(loop.sum()), "rows_stepped": len(slow),
                           "path": "first firing row per stretch" if max_offers == 1 else "row by row"}
        if len(slow) and max_offers == 1:
            slow = self._sequential_first(slow)
        elif len(slow):
            slow = self._sequential(slow[np.argsort(self.rows[slow], kind="stable")])
        pos = np.concatenate([fast, slow])
        pos = pos[np.argsort(self.rows[pos], kind="stable")]  # time order, as the backtest lists offers
        kind, answered = self._answer(pos)
        return pos, self.hold[pos], kind, answered, self.ts[pos] + policy.offer_timeout_s

    def _answer(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(answer code, answered at) of offers at `pos`: the recorded answer if it comes before the timeout."""
        t = self.ts[pos]
        d = self.delay[pos]
        code = self.answer[pos]
        expires = t + self.policy.offer_timeout_s
        with np.errstate(invalid="ignore"):
            counts = ~self.hold[pos] & (code != _NO_ANSWER) & ~np.isnan(d) & (t + d < expires)
        kind = np.where(counts, code, _NO_ANSWER).astype(np.int8)
        return kind, np.where(counts, t + d, np.nan)

    def _sequential(self, positions: np.ndarray) -> np.ndarray:
        """The backtest's sequential step over these firing rows (time order): the positions that offer."""
        ledger = OfferLedger(self.policy)
        rows = zip(positions.tolist(), self.ts[positions].tolist(), self.epoch[positions].tolist(),
                   self.visitor[positions].tolist(), self.answer[positions].tolist(),
                   self.delay[positions].tolist(), self.hold[positions].tolist())
        out = [p for p, t, s, v, code, d, hold in rows if ledger.admit(t, s, v, code, d, hold) is not None]
        return np.array(out, dtype=np.int64)

    def _sequential_first(self, fire: np.ndarray) -> np.ndarray:
        """:meth:`_sequential` for one offer per session, a session stretch at a time (positions in order).

        A stretch offers at its first firing row outside every cooldown of its visitor; once it has, its
        other rows never can. So only each stretch's next candidate is kept, in a heap by time (row order),
        and a row inside a cooldown jumps to the stretch's first firing row at or after the cooldown's end
        (every row in between is inside the same cooldown). The rows are taken in the order the backtest
        takes them, so the declines known at each row are the same.
        """
        import heapq

        policy = self.policy
        timeout, cooldown = policy.offer_timeout_s, policy.decline_cooldown_s
        ep = self.epoch[fire]
        starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
        ends = np.r_[starts[1:], len(fire)]
        rows = self.rows[fire]
        times = self.ts[fire]
        heap = list(zip(rows[starts].tolist(), starts.tolist(), ends.tolist()))
        heapq.heapify(heap)
        visitor, code, delay, hold = self.visitor[fire], self.answer[fire], self.delay[fire], self.hold[fire]
        declines: dict[int, list[tuple[float, float]]] = {}
        out = []
        while heap:
            _, i, end = heapq.heappop(heap)
            t, v = float(times[i]), int(visitor[i])
            past = declines.get(v)
            if past is not None:
                until = max((u for a, u in past if a <= t < u), default=None)
                if until is not None:  # in a cooldown: the next candidate is the first row at or after its end
                    j = i + 1 + int(np.searchsorted(times[i + 1:end], until, side="left"))
                    if j < end:
                        heapq.heappush(heap, (int(rows[j]), j, end))
                    continue
            out.append(i)
            d = float(delay[i])
            if not hold[i] and code[i] == _DECLINE and d == d and t + d < t + timeout:
                declines.setdefault(v, []).append((t + d, t + d + cooldown))
        return fire[np.array(out, dtype=np.int64)]

    def _blocks(self, matched: np.ndarray, offers: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The matched rows a session or visitor block stops, and the block (reason code) of each.

        `matched`: per candidate row, whether some rule matches now, but for its score, or later.
        """
        o_pos, _, o_kind, o_ans, o_exp = offers
        policy = self.policy
        max_offers = policy.max_offers_per_session
        if max_offers <= 0:  # no offer can ever be made: every matched row is max_offers
            pos = np.flatnonzero(matched)
            return pos, np.full(len(pos), _MAX, dtype=np.int64)
        out_pos, out_reason = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        taken = np.zeros(0, dtype=np.int64)
        if len(o_pos):
            # Only rows after the first offer of a session stretch can be blocked by the session.
            by_pos = np.argsort(o_pos, kind="stable")
            sp = o_pos[by_pos]
            ep = self.epoch[sp]
            head = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])  # first offer of each stretch, in `sp`
            tail, group = _ranges(sp[head] + 1, self._stretch_end[sp[head]], groups=True)
            keep = matched[tail]
            tail, group = tail[keep], group[keep]
            if max_offers == 1:  # one offer per stretch: the row's last offer is its stretch's, and count is 1
                last = by_pos[head[group]]
                count = np.ones(len(tail), dtype=np.int64)
            else:
                upto = np.searchsorted(sp, tail, side="left")
                count = upto - head[group]
                last = by_pos[upto - 1]
            t = self.ts[tail]
            answered = o_ans[last]
            kind = o_kind[last]
            with np.errstate(invalid="ignore"):
                arrived = (kind != _NO_ANSWER) & (answered <= t)
            in_chat = arrived & (kind == _ACCEPT)
            pending = (t < o_exp[last]) & ~arrived
            too_many = count >= max_offers
            reason = np.where(in_chat, _IN_CHAT, np.where(pending, _PENDING, np.where(too_many, _MAX, -1)))
            hit = reason >= 0
            taken = tail[hit]
            out_pos.append(taken)
            out_reason.append(reason[hit])
        declined = o_kind == _DECLINE
        if declined.any():
            c_pos = self._cooldown_blocks(matched, o_pos[declined], o_ans[declined], taken)
            out_pos.append(c_pos)
            out_reason.append(np.full(len(c_pos), _COOLDOWN, dtype=np.int64))
        return np.concatenate(out_pos), np.concatenate(out_reason).astype(np.int64)

    def _cooldown_blocks(self, matched: np.ndarray, d_pos: np.ndarray, d_at: np.ndarray,
                         taken: np.ndarray) -> np.ndarray:
        """Matched rows, not blocked by their session, of a visitor within a cooldown of a delivered decline."""
        cooldown = self.policy.decline_cooldown_s
        d_v = self.visitor[d_pos]
        vs = np.unique(d_v)
        first_at = np.full(len(self._held), np.inf)
        np.minimum.at(first_at, d_v, d_at)
        rows = self._vm[_ranges(self._v_lo[vs], self._v_hi[vs])]
        rows = rows[matched[rows] & (self.ts[rows] >= first_at[self.visitor[rows]])]  # before any decline: free
        if len(taken) and len(rows):
            mask = np.zeros(self.m, dtype=bool)
            mask[taken] = True
            rows = rows[~mask[rows]]
        if not len(rows):
            return np.zeros(0, dtype=np.int64)
        return np.sort(rows_in_cooldown(rows, self.visitor, self.ts, d_v, d_at, d_at + cooldown))

    def _figures(self, settings: Settings, enabled: list[str], offers: tuple[np.ndarray, ...],
                 rule_all: np.ndarray, grid: np.ndarray, no_rule: int, waits: int) -> TunerResult:
        o_pos, o_hold, o_kind, _, _ = offers
        table = self.table
        real = o_pos[~o_hold]
        real_kind = o_kind[~o_hold]
        n_real = len(real)
        rule_of = rule_all[~o_hold]
        expected = float(np.nansum(self.score[real])) if self.scorer is not None else None
        refused = table.n - self.valid_events
        n_hold = int(o_hold.sum())
        reasons = grid.sum(axis=0)
        reasons[_NO_RULE] = no_rule
        reasons[_HOLDOUT] = n_hold
        metrics: dict[str, Any] = {
            "events": int(table.n), "valid_events": self.valid_events, "refused": int(refused),
            "sessions": self.n_sessions, "visitors": self.n_visitors,
            "offers": n_real, "offer_rate_per_session": n_real / max(self.n_sessions, 1),
            "sessions_with_offer": _distinct(self.session[real]),
            "holdout": n_hold, "holdout_visitors": _distinct(self.visitor[o_pos[o_hold]]),
            "expected_accepts": expected,
            "expected_accept_rate": None if expected is None else expected / max(n_real, 1),
            "accepted": int((real_kind == _ACCEPT).sum()), "declined": int((real_kind == _DECLINE).sum()),
            "expired": int((real_kind == _NO_ANSWER).sum()),
        }
        metrics["recorded_accept_rate"] = metrics["accepted"] / max(n_real, 1)
        if self.truth is not None:
            te = float(np.nansum(self.truth[real]))
            metrics["true_expected_accepts"] = te
            metrics["true_expected_accept_rate"] = te / max(n_real, 1)
        metrics["actions"] = {"offer": n_real, "wait": int(waits), "none": self.valid_events - n_real - int(waits),
                              "refused": int(refused)}
        metrics["reasons"] = {r: int(reasons[i]) for i, r in enumerate(REASONS)}
        # expected uplift, as the backtest computes it (the offers of both arms, in time order)
        gain = loss = None
        if self.gain is not None:
            gain, loss = self.gain[o_pos], self.loss[o_pos]
        p_model = self.score[o_pos] if expected is not None else None
        p_truth = self.truth[o_pos] if self.truth is not None else None
        o_vis = self.visitor[o_pos]
        metrics["eligible_visitors"] = _distinct(o_vis)
        metrics.update(uplift_figures("expected", p_model, gain, loss, o_hold, o_vis))
        metrics.update(uplift_figures("true_expected", p_truth, gain, loss, o_hold, o_vis))
        metrics["effects"] = None if self.effects is None else self.effects.description

        # by rule (the tuned ruleset's rules: those switched on, strongest first)
        k0 = len(self.rule_names)
        keep = np.array([self._index[r] for r in enabled], dtype=np.int64)
        per_rule: dict[str, np.ndarray] = {}
        per_rule["offers"] = np.bincount(rule_of, minlength=k0)[keep]
        per_rule["holdout"] = np.bincount(rule_all[o_hold], minlength=k0)[keep]
        score_real = np.nan_to_num(self.score[real])
        if expected is not None:
            per_rule["expected_accepts"] = np.bincount(rule_of, weights=score_real, minlength=k0)[keep]
        if self.truth is not None:
            per_rule["true_expected"] = np.bincount(rule_of, weights=np.nan_to_num(self.truth[real]),
                                                    minlength=k0)[keep]
        if gain is not None:
            for column, p in (("expected_uplift", p_model), ("true_expected_uplift", p_truth)):
                if p is not None:
                    effect = goal_effect(np.nan_to_num(p[~o_hold]), gain[~o_hold], loss[~o_hold])
                    per_rule[column] = np.bincount(rule_of, weights=effect, minlength=k0)[keep]
        for label, code in (("accepted", _ACCEPT), ("declined", _DECLINE), ("expired", _NO_ANSWER)):
            per_rule[label] = np.bincount(rule_of[real_kind == code], minlength=k0)[keep]
        for r in BLOCK_REASONS:
            per_rule[r.value] = grid[keep, _R[r]]

        # per queue and hour bucket
        n_q, size = len(self.queue_names), self.n_hours
        rule_queue = np.array([self._rule_queue[r] for r in self.rule_names], dtype=np.int64)
        q_of = rule_queue[rule_of] if n_real else np.zeros(0, dtype=np.int64)
        flat = q_of * size + self.hour[real]
        offers_h = np.bincount(flat, minlength=n_q * size).reshape(n_q, size)
        accepted_h = np.bincount(flat[real_kind == _ACCEPT], minlength=n_q * size).reshape(n_q, size)
        if expected is not None:
            chats_h = np.bincount(flat, weights=score_real, minlength=n_q * size).reshape(n_q, size)
        else:
            chats_h = np.full((n_q, size), np.nan)
        metrics["queues"] = queue_figures(self.queue_names, settings.capacities, offers_h, chats_h, accepted_h,
                                          self.open_h, expected is not None)
        return TunerResult(settings, metrics, list(enabled), per_rule, list(self.queue_names), self.hours,
                           offers_h, chats_h, accepted_h, self.open_h)


def queue_figures(queue_names: Sequence[str], capacities: Mapping[str, float | None], offers_h: np.ndarray,
                  chats_h: np.ndarray, accepted_h: np.ndarray, open_h: np.ndarray,
                  has_expected: bool) -> dict[str, dict[str, Any]]:
    """Per queue, the backtest's load figures from the per-hour counts (open hours for the averages)."""
    size = offers_h.shape[1] if offers_h.ndim == 2 else 0
    out = {}
    for qi, name in enumerate(queue_names):
        cap = capacities.get(name)
        o_h, c_h, a_h = offers_h[qi], chats_h[qi], accepted_h[qi]
        sel = open_h[qi] if open_h[qi].any() else np.ones(size, dtype=bool)
        basis = c_h if has_expected else a_h.astype(float)
        out[name] = {
            "capacity_per_hour": cap,
            "offers_per_hour": float(o_h[sel].mean()) if size else 0.0,
            "peak_offers_per_hour": int(o_h.max()) if size else 0,
            "expected_chats_per_hour": float(c_h[sel].mean()) if has_expected and size else None,
            "peak_expected_chats": float(c_h.max()) if has_expected and size else None,
            "accepted_per_hour": float(a_h[sel].mean()) if size else 0.0,
            "hours_over_capacity": int((basis > cap).sum()) if cap is not None else None,
            "utilisation": (float(basis[sel].mean()) / cap) if cap and size else None,
        }
    return out


def _ranges(starts: np.ndarray, ends: np.ndarray, groups: bool = False) -> Any:
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


def _distinct(codes: np.ndarray) -> int:
    codes = codes[codes >= 0]
    return int((np.bincount(codes) > 0).sum()) if len(codes) else 0


def _spec_thresholds(spec: RuleSpec, names: Sequence[str]) -> list[float]:
    values = set()
    for rule in spec.rules:
        if rule.name in names:
            for c in rule.conditions():
                if c.field == "score" and c.op != "exists":
                    values.update(float(v) for v in (c.value if isinstance(c.value, tuple) else (c.value,)))
    return sorted(values)


# ============================================================================================ the widget


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):,.{digits}f}"


def _uplift_text(goals: float | None, itt: float | None) -> str:
    """Expected extra goals and the ITT per eligible visitor, or "not available" (never a 0 that means nothing)."""
    if goals is None:
        return '<span class="pcrules-na" title="no effects of an offer on the goals are known">not available</span>'
    return f"{goals:+,.1f}" + ("" if itt is None else f' <span style="font-size:11px">({100 * itt:+.2f} pp ITT)</span>')


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f} %"


def _plain(value: Any) -> Any:
    """JSON-safe plain Python (for bundle metrics)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _knobs_text(s: RuleSetting, tunable: bool) -> str:
    if not s.on:
        return "off"
    if not tunable:
        return "on (as written)"
    text = f"wait {_fmt(s.wait_s, 0) if float(s.wait_s).is_integer() else _fmt(s.wait_s, 3)} s"
    return text + (f", score ≥ {s.threshold:g}" if s.uses_score else ", no score condition")


def spec_text(spec: RuleSpec) -> str:
    """A ruleset as YAML with sorted keys (what the diff compares: key order is no change)."""
    return yaml.safe_dump(_plain(dict(spec.source)), sort_keys=True, allow_unicode=True, default_flow_style=False)


def ruleset_diff(current: RuleSpec, tuned: RuleSpec) -> str:
    """A unified diff of two rulesets' YAML (sorted keys); empty when they are the same."""
    a, b = spec_text(current).splitlines(keepends=True), spec_text(tuned).splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, fromfile=f"current ({current.name} {current.version})",
                                        tofile=f"tuned ({tuned.name} {tuned.version})"))


class Tuner:
    """The interactive tuner over a :class:`TriggerModel` (see the module docstring).

    ``bundle_dir``: where Publish writes bundles (``published/``); its current
    bundle, when there is one, is what the diff compares with. ``current``:
    the ruleset to compare with otherwise (default: ``spec``). The widget is
    ``.root``; a notebook displays the Tuner itself.

    Tests and scripts drive it without a browser: set ``controls[rule]["wait"].value``
    (or call :meth:`set`), read :attr:`result`, call :meth:`on_publish`.
    """

    def __init__(self, spec: RuleSpec | str | Mapping[str, Any], events: pd.DataFrame | EventTable,
                 scorer: Any = None, *, truth: str | np.ndarray | pd.Series | None = None, effects: Any = None,
                 bundle_dir: str | os.PathLike | None = None, current: RuleSpec | None = None,
                 model_metrics: Mapping[str, Any] | None = None, chart: bool = True, title: str | None = None,
                 model: TriggerModel | None = None):
        import ipywidgets as w

        self.w = w
        self.model = model if model is not None else TriggerModel(spec, events, scorer, truth=truth, effects=effects)
        self.spec = self.model.spec
        self.scorer = self.model.scorer
        self.bundle_dir = Path(bundle_dir).expanduser() if bundle_dir not in (None, "") else None
        self.current = current or self.spec
        self.current_version: str | None = None
        self.model_metrics = dict(model_metrics or {})
        self.result: TunerResult | None = None
        self.last_error: str | None = None
        self.published: list[Path] = []
        self.timings: collections.deque[float] = collections.deque(maxlen=1000)  # seconds per refresh
        self._hold = 0
        self._chart_on = chart
        self._figure: dict[str, Any] | None = None
        self.chart_draws = 0  # full draws of the chart's axes (the rest only redraw its lines)
        self._load_current()

        init = self.model.initial
        style = {"description_width": "initial"}
        waits = [s.wait_s for n, s in init.rules.items() if self.model.tunable[n]]
        wait_max = float(max([900.0] + [math.ceil(x / 60.0) * 60.0 for x in waits]))
        scores = self.model.score[self.model.present]
        top = float(np.quantile(scores, 0.995)) if len(scores) else 0.5
        thresholds = [s.threshold for s in init.rules.values() if s.threshold]
        thr_max = min(1.0, max([0.05, math.ceil(top * 1.25 * 20) / 20.0] + [math.ceil(t * 20) / 20.0 for t in thresholds]))
        self.controls: dict[str, dict[str, Any]] = {}
        rows = []
        for rule in self.spec.rules:
            s = init.rules[rule.name]
            tunable = self.model.tunable[rule.name]
            on = w.Checkbox(value=True, description=rule.name, indent=False, layout=w.Layout(width="210px"))
            wait = w.FloatSlider(value=s.wait_s if tunable else 0.0, min=0.0, max=wait_max, step=5.0,
                                 description="wait (s)", readout_format=".0f", continuous_update=False,
                                 disabled=not tunable, style=style, layout=w.Layout(width="330px"))
            threshold = w.FloatSlider(value=s.threshold or 0.0, min=0.0, max=thr_max, step=0.001,
                                      description="score ≥", readout_format=".3f", continuous_update=False,
                                      disabled=not tunable or self.scorer is None, style=style,
                                      layout=w.Layout(width="330px"))
            info = w.HTML(f'<span class="pcrules-rule-info">queue {_esc(rule.queue)}'
                          + ("" if tunable else " · kept as written (only on/off)")
                          + ("" if self.scorer is not None or not tunable else " · no model: no score threshold")
                          + "</span>")
            for key, widget in (("on", on), ("wait", wait), ("threshold", threshold)):
                widget.add_class(f"pcrules-{key}")
                widget.add_class(f"pcrules-rule-{_css(rule.name)}-{key}")
                widget.observe(self.on_change, names="value")
            self.controls[rule.name] = {"on": on, "wait": wait, "threshold": threshold}
            rows.append(w.HBox([on, wait, threshold, info], layout=w.Layout(align_items="center",
                                                                             flex_flow="row wrap")))
        self.capacity: dict[str, Any] = {}
        caps = []
        for q in self.model.queue_names:
            cap = init.capacities[q]
            text = w.Text(value="" if cap is None else _fmt_number(cap), description=f"{q} capacity / h",
                          placeholder="none", continuous_update=False, style=style, layout=w.Layout(width="230px"))
            text.add_class("pcrules-capacity")
            text.add_class(f"pcrules-capacity-{_css(q)}")
            text.observe(self.on_change, names="value")
            self.capacity[q] = text
            caps.append(text)
        self.name = w.Text(value=self.spec.name, description="Ruleset name", continuous_update=False, style=style,
                           layout=w.Layout(width="330px"))
        self.name.add_class("pcrules-name")
        self.publish_button = w.Button(description="Publish", icon="upload", button_style="primary",
                                       tooltip="Validate the tuned ruleset, show what changes, publish a bundle")
        self.publish_button.add_class("pcrules-publish")
        self.publish_button.on_click(self.on_publish)
        self.reset_button = w.Button(description="Reset", icon="undo", tooltip="Back to the current ruleset")
        self.reset_button.add_class("pcrules-reset")
        self.reset_button.on_click(self.on_reset)
        self.message = w.HTML()
        self.message.add_class("pcrules-message")
        self.metrics_html = w.HTML()
        self.metrics_html.add_class("pcrules-metrics")
        self.chart = w.Image(format="png", layout=w.Layout(width="100%", max_width="900px", height="auto"))
        self.chart.add_class("pcrules-chart")
        self.diff_html = w.HTML()
        self.diff_html.add_class("pcrules-diff")
        header = w.HTML(self._header_html(title))
        header.add_class("pcrules-header")
        self.root = w.VBox([
            header,
            w.HTML('<b>Rules</b> — wait: seconds on the page before the rule may fire; score ≥: the model\'s '
                   'P(accept) it needs (0: none)'),
            *rows,
            w.HTML("<b>Queues</b> — capacity: chats the queue's agents can take per hour"),
            w.HBox(caps, layout=w.Layout(flex_flow="row wrap")),
            w.HBox([self.name, self.publish_button, self.reset_button], layout=w.Layout(align_items="center")),
            self.message,
            self.metrics_html,
            self.chart,
            self.diff_html,
        ])
        self.root.add_class("pcrules-tuner")
        self.refresh()

    # -- plumbing -----------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:  # a notebook displays the Tuner as its widget
        return self.root._repr_mimebundle_(**kwargs)

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike, events: pd.DataFrame | EventTable, **kwargs: Any) -> Tuner:
        """A tuner over the current bundle of `bundle_dir` (its ruleset and model), publishing back to it."""
        from ..bundle import load_bundle

        bundle = load_bundle(Path(bundle_dir) / "current")
        kwargs.setdefault("model_metrics", dict(bundle.metrics or {}))
        return cls(bundle.spec, events, bundle.scorer, bundle_dir=bundle_dir, current=bundle.spec, **kwargs)

    def _load_current(self) -> None:
        if self.bundle_dir is None:
            return
        from ..bundle import current_version, load_bundle

        try:
            version = current_version(self.bundle_dir)
            if version is None:
                return
            bundle = load_bundle(self.bundle_dir / "current")
        except Exception as exc:  # the diff falls back to the ruleset the tuner started from
            log.warning("tuner: the current bundle of %s could not be read: %s", self.bundle_dir, exc)
            return
        self.current = bundle.spec
        self.current_version = bundle.version

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Change several knobs and recompute once, at the end."""
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1
            if not self._hold:
                self.refresh()

    def set(self, rule: str | None = None, *, on: bool | None = None, wait_s: float | None = None,
            threshold: float | None = None, capacity: Mapping[str, Any] | None = None) -> TunerResult | None:
        """Set knobs as a person would (through the widgets) and recompute once."""
        with self.hold():
            if rule is not None:
                if rule not in self.controls:
                    raise KeyError(rule)
                c = self.controls[rule]
                if on is not None:
                    c["on"].value = on
                if wait_s is not None:
                    c["wait"].value = wait_s
                if threshold is not None:
                    c["threshold"].value = threshold
            for q, value in (capacity or {}).items():
                self.capacity[q].value = "" if value is None else str(value)
        return self.result

    def apply(self, settings: Settings | Sequence[RuleChoice]) -> TunerResult | None:
        """Put the knobs at `settings` (or at ``decision_value`` choices) and recompute once."""
        if not isinstance(settings, Settings):
            settings = self.model.settings_from(settings, self.settings_or_initial())
        with self.hold():
            for name, s in settings.rules.items():
                c = self.controls[name]
                c["on"].value = bool(s.on)
                if self.model.tunable[name]:
                    wait, threshold = float(s.wait_s), float(s.threshold or 0.0)
                    if wait > c["wait"].max:  # widen the slider rather than clamp the value
                        c["wait"].max = float(math.ceil(wait / 60.0) * 60.0)
                    if threshold > c["threshold"].max:
                        c["threshold"].max = min(1.0, math.ceil(threshold * 20.0) / 20.0)
                    c["wait"].value = wait
                    c["threshold"].value = threshold
            for q, cap in settings.capacities.items():
                self.capacity[q].value = "" if cap is None else _fmt_number(cap)
        return self.result

    def settings_or_initial(self) -> Settings:
        try:
            return self.read_settings()
        except InvalidSetting:
            return self.model.initial

    def read_settings(self) -> Settings:
        """The knobs as the widgets hold them, validated in the kernel (widget values are user input)."""
        rules = {}
        for name, c in self.controls.items():
            threshold = c["threshold"].value
            rules[name] = RuleSetting(c["on"].value, c["wait"].value, threshold if threshold else None)
        caps = {q: parse_capacity(text.value, q) for q, text in self.capacity.items()}
        name = self.name.value
        if not isinstance(name, str) or not name.strip():
            raise InvalidSetting("The ruleset needs a name.")
        return self.model.check(Settings(rules, caps, name.strip()))

    # -- handlers -------------------------------------------------------------------------------------------
    def on_change(self, change: Any = None) -> None:
        """A knob moved: recompute and redraw (the widgets' observer)."""
        if self._hold:
            return
        self.refresh()

    def refresh(self) -> TunerResult | None:
        import time

        started = time.perf_counter()
        try:
            settings = self.read_settings()
            result = self.model.evaluate(settings)
        except InvalidSetting as exc:
            self._error(str(exc))
            return None
        except Exception as exc:  # never a traceback in the widget
            log.exception("tuner: recompute failed")
            self._error(f"The figures could not be recomputed ({_reason(exc)}).")
            return None
        self.result = result
        self.last_error = None
        self.message.value = ""
        self.metrics_html.value = self.metrics_text(result)
        if self._chart_on:
            try:
                self.chart.value = self.chart_png(result)
            except Exception as exc:
                log.exception("tuner: chart failed")
                self._error(f"The queue chart could not be drawn ({_reason(exc)}).")
        self.timings.append(time.perf_counter() - started)
        return result

    def on_reset(self, button: Any = None) -> None:
        try:
            self.name.value = self.spec.name
            self.apply(self.model.initial)
            self.diff_html.value = ""
        except Exception as exc:
            log.exception("tuner: reset failed")
            self._error(f"The knobs could not be reset ({_reason(exc)}).")

    def on_publish(self, button: Any = None) -> Path | None:
        """Validate the tuned ruleset, show its difference from the current one, publish a bundle.

        Returns the new bundle's directory, or None (the reason is shown in the widget)."""
        from ..bundle import publish

        self.diff_html.value = ""
        try:
            settings = self.read_settings()
            tuned = self.model.spec_for(settings)
        except InvalidSetting as exc:
            return self._error(f"Nothing was published: {exc}")
        except SpecError as exc:
            return self._error("Nothing was published: the tuned ruleset is not valid — "
                               + "; ".join(_sentence_part(p) for p in exc.problems) + ".")
        except Exception as exc:
            log.exception("tuner: validation failed")
            return self._error(f"Nothing was published: the tuned ruleset could not be built ({_reason(exc)}).")
        self.diff_html.value = self.diff_text(tuned, settings)
        if self.bundle_dir is None:
            return self._error("Nothing was published: the tuner has no bundle folder to publish to "
                               "(start it with bundle_dir=..., or set PCRULES_BUNDLE for the dashboard).")
        model = None
        if self.scorer is not None:
            if not hasattr(self.scorer, "to_dict"):
                return self._error("Nothing was published: the scores come from an array, not from a model "
                                   "that can be published with the ruleset.")
            model = self.scorer
        if tuned.version == self.current.version and tuned.name == self.current.name and \
                self.current_version is not None:
            self.message.value = _note(f"The tuned ruleset is the same as the current one ({_esc(tuned.name)} "
                                       f"{_esc(tuned.version)}): nothing to publish.")
            return None
        try:
            result = self.result if self.result is not None and self.result.settings == settings else \
                self.model.evaluate(settings)
            metrics = dict(self.model_metrics)
            metrics["tuning"] = _plain({
                "from_ruleset": {"name": self.current.name, "version": self.current.version},
                "bundle_before": self.current_version,
                "backtest": {k: result.metrics[k] for k in ("events", "sessions", "offers", "expected_accepts",
                                                            "expected_accept_rate", "holdout", "accepted",
                                                            "declined", "expired")},
                "queues": result.metrics["queues"],
            })
            path = publish(tuned, model, self.bundle_dir, metrics=metrics)
        except SpecError as exc:
            return self._error("Nothing was published: the tuned ruleset is not valid — "
                               + "; ".join(_sentence_part(p) for p in exc.problems) + ".")
        except Exception as exc:  # BundleError, OSError (a folder that cannot be written) ...
            log.exception("tuner: publish failed")
            return self._error(f"Publishing failed, nothing was published: {_reason(exc)}.")
        self.published.append(path)
        before = self.current
        self.current, self.current_version = tuned, path.name
        self.message.value = _note(f"Published ruleset {_esc(tuned.name)} (version {_esc(tuned.version)}) as bundle "
                                   f"{_esc(path.name)} in {_esc(self.bundle_dir)}; it is now current "
                                   f"(it replaced {_esc(before.name)} {_esc(before.version)}).", ok=True)
        return path

    def _error(self, text: str) -> None:
        self.last_error = text
        self.message.value = _note(_esc(text), error=True)

    # -- rendering ----------------------------------------------------------------------------------------
    def _header_html(self, title: str | None) -> str:
        m = self.model
        ts = m.table.ts
        span = ""
        if m.table.n:
            lo, hi = pd.to_datetime([np.nanmin(ts), np.nanmax(ts)], unit="s", utc=True)
            span = f", {lo:%Y-%m-%d} to {hi:%Y-%m-%d} (UTC)"
        model = "a model" if self.scorer is not None else "no model (score thresholds are off)"
        return (f'<div class="pcrules-title"><b>{_esc(title or "Trigger tuner")}</b> — ruleset '
                f"<code>{_esc(self.spec.name)}</code> {_esc(self.spec.version)}"
                + (f", bundle <code>{_esc(self.current_version)}</code>" if self.current_version else "")
                + f"; backtest on {m.table.n:,} events, {m.n_sessions:,} sessions{_esc(span)}; {model}.</div>")

    def metrics_text(self, r: TunerResult) -> str:
        """The results panel (HTML): headline figures, by rule, by queue, blocked reasons."""
        m = r.metrics

        def cell(key: str, value: str, label: str) -> str:
            return (f'<div class="pcrules-figure"><div class="pcrules-figure-label">{_esc(label)}</div>'
                    f'<div class="pcrules-figure-value" data-metric="{_esc(key)}">{value}</div></div>')

        head = [
            cell("offers", _fmt(m["offers"]), "offers"),
            cell("expected_accepts", _fmt(m["expected_accepts"]), "expected accepts (model)"),
            cell("expected_accept_rate", _pct(m["expected_accept_rate"]), "expected accept rate"),
            cell("accepted", _fmt(m["accepted"]), "accepted (recorded answers)"),
            cell("recorded_accept_rate", _pct(m["recorded_accept_rate"]), "recorded accept rate"),
            cell("holdout", _fmt(m["holdout"]), "holdout (withheld)"),
            cell("offer_rate_per_session", _pct(m["offer_rate_per_session"]), "sessions offered"),
        ]
        if "true_expected_accepts" in m:
            head.insert(3, cell("true_expected_accepts", _fmt(m["true_expected_accepts"]), "true expected accepts"))
        head.append(cell("expected_uplift", _uplift_text(m.get("expected_uplift"), m.get("expected_uplift_itt")),
                         "expected uplift (model): extra goals"))
        if m.get("true_expected_accepts") is not None:
            head.append(cell("true_expected_uplift", _uplift_text(m.get("true_expected_uplift"),
                                                                  m.get("true_expected_uplift_itt")),
                             "true expected uplift: extra goals"))
        style = ("<style>.pcrules-figures{display:flex;flex-wrap:wrap;gap:6px 14px;margin:4px 0}"
                 ".pcrules-figure{border:1px solid #ddd;border-radius:4px;padding:3px 8px;min-width:110px}"
                 ".pcrules-figure-label{font-size:11px;color:#555}.pcrules-figure-value{font-size:18px}"
                 ".pcrules-table{border-collapse:collapse;font-size:12px;margin:4px 0}"
                 ".pcrules-table td,.pcrules-table th{border-bottom:1px solid #eee;padding:1px 7px;text-align:right}"
                 ".pcrules-table td:first-child,.pcrules-table th:first-child{text-align:left}"
                 ".pcrules-over{color:#b00020;font-weight:bold}</style>")
        parts = [style, f'<div class="pcrules-figures">{"".join(head)}</div>']
        # by rule
        per = r.per_rule_counts
        cols = [("offers", "offers"), ("expected_accepts", "exp. accepts"), ("expected_uplift", "exp. uplift"),
                ("accepted", "accepted"),
                ("declined", "declined"), ("expired", "expired"), ("holdout", "holdout")]
        cols += [(x.value, x.value.replace("_", " ")) for x in BLOCK_REASONS if x != Reason.QUEUE_BUSY]
        rows_html = []
        for i, name in enumerate(r.rules):
            cells = "".join(f'<td data-rule="{_esc(name)}" data-col="{c}">'
                            f'{_fmt(per[c][i]) if c in per else "–"}</td>' for c, _ in cols)
            rows_html.append(f"<tr><td>{_esc(name)}</td>{cells}</tr>")
        off = [n for n in self.model.rule_names if n not in r.rules]
        parts.append('<div><b>By rule</b> (blocked: where the rule matched but the session, the visitor, the queue '
                     'or the score held it back)</div>'
                     '<table class="pcrules-table pcrules-by-rule"><tr><th>rule</th>'
                     + "".join(f"<th>{_esc(label)}</th>" for _, label in cols) + "</tr>" + "".join(rows_html)
                     + "</table>" + (f"<div>switched off: {_esc(', '.join(off))}</div>" if off else ""))
        # by queue
        q_rows = []
        for name, q in m["queues"].items():
            over = q["hours_over_capacity"]
            cls = ' class="pcrules-over"' if over else ""
            q_rows.append(f'<tr><td>{_esc(name)}</td><td data-queue="{_esc(name)}" data-col="offers_per_hour">'
                          f'{_fmt(q["offers_per_hour"], 2)}</td><td>{_fmt(q["peak_offers_per_hour"])}</td>'
                          f'<td data-queue="{_esc(name)}" data-col="expected_chats_per_hour">'
                          f'{_fmt(q["expected_chats_per_hour"], 2)}</td><td>{_fmt(q["peak_expected_chats"], 1)}</td>'
                          f'<td>{_fmt(q["capacity_per_hour"], 0) if q["capacity_per_hour"] is not None else "none"}</td>'
                          f'<td{cls} data-queue="{_esc(name)}" data-col="hours_over_capacity">{_fmt(over)}</td>'
                          f'<td>{_pct(q["utilisation"])}</td></tr>')
        parts.append("<div><b>By queue</b> (per hour: averages over opening hours; peak: the busiest hour)</div>"
                     '<table class="pcrules-table pcrules-by-queue"><tr><th>queue</th><th>offers/h</th>'
                     "<th>peak offers</th><th>exp. chats/h</th><th>peak chats</th><th>capacity/h</th>"
                     "<th>hours over capacity</th><th>utilisation</th></tr>" + "".join(q_rows) + "</table>")
        # reasons
        reasons = m["reasons"]
        shown = [(k, reasons.get(k, 0)) for k in (*[x.value for x in BLOCK_REASONS], "holdout", "no_rule")]
        acts = m["actions"]
        parts.append("<div><b>Decisions</b>: "
                     + ", ".join(f'{_esc(a)} <span data-action="{_esc(a)}">{acts[a]:,}</span>' for a in ACTIONS)
                     + "; <b>no-offer reasons</b>: "
                     + ", ".join(f'{_esc(k.replace("_", " "))} <span data-reason="{_esc(k)}">{v:,}</span>'
                                 for k, v in shown)
                     + f'. <span class="pcrules-timing">Recomputed in {r.seconds * 1000:.0f} ms.</span></div>')
        return "".join(parts)

    def chart_png(self, r: TunerResult) -> bytes:
        """Offers and expected chats per queue and hour against each queue's capacity (PNG).

        The axes, ticks and labels are drawn once (and again only when a line outgrows its axis); a change
        redraws just the lines over that background (blitting), so the chart keeps up with the sliders.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from PIL import Image

        n_q = len(r.queues)
        has_expected = r.metrics["expected_accepts"] is not None
        values = []
        for qi, name in enumerate(r.queues):
            o = r.offers_h[qi].astype(float)
            c = r.chats_h[qi] if has_expected else r.accepted_h[qi].astype(float)
            cap = r.metrics["queues"][name]["capacity_per_hour"]
            values.append((o, c, cap, max(float(o.max(initial=0.0)), float(np.nanmax(c, initial=0.0)),
                                          float(cap or 0.0), 1.0)))
        key = (n_q, len(r.hours), has_expected)
        if self._figure is None or self._figure["key"] != key:
            fig = Figure(figsize=(9.0, 1.1 + 1.3 * n_q), dpi=80)
            canvas = FigureCanvasAgg(fig)
            axes = fig.subplots(n_q, 1, sharex=True, squeeze=False)[:, 0]
            x = np.arange(len(r.hours), dtype=float)  # hours since the first; days labelled below
            days = np.flatnonzero(r.hours % 24 == 0)
            labels = [f"{d:%a %d %b}" for d in pd.to_datetime(r.hours[days] * 3600, unit="s", utc=True)]
            step = max(1, int(math.ceil(len(days) / 10)))
            artists = []
            for ax, name, (o, c, cap, top) in zip(axes, r.queues, values):
                offers, = ax.step(x, o, where="post", color="#9db7d5", lw=1.0, label="offers", animated=True)
                chats, = ax.step(x, c, where="post", color="#1f4e8c", lw=1.4, animated=True,
                                 label="expected chats" if has_expected else "accepted (recorded answers)")
                line = ax.axhline(cap or 0.0, color="#b00020", ls="--", lw=1.0, label="capacity", animated=True)
                ax.set_xlim(0.0, max(float(len(x)), 1.0))
                ax.set_xticks(days[::step].astype(float), labels[::step])
                ax.set_ylabel(f"{name}\nper hour", fontsize=9)
                ax.tick_params(labelsize=8)
                ax.grid(alpha=0.25)
                artists.append((ax, offers, chats, line))
            axes[-1].set_xlabel("day (UTC)", fontsize=8)
            axes[0].legend(handles=[artists[0][1], artists[0][2], artists[0][3]], loc="upper right", fontsize=8,
                           ncol=3, frameon=False)
            axes[0].set_title("Per queue and hour: offers and expected chats against capacity", fontsize=10)
            height = 1.1 + 1.3 * n_q  # inches; fixed margins (tight_layout would draw the figure twice)
            fig.subplots_adjust(left=0.085, right=0.99, top=1.0 - 0.4 / height, bottom=0.55 / height, hspace=0.25)
            self._figure = {"key": key, "fig": fig, "canvas": canvas, "artists": artists, "ylim": None,
                            "backgrounds": {}}
        f = self._figure
        # The axes (ticks, labels) are drawn once per set of y limits and kept; a limit changes only when a
        # line outgrows its axis or shrinks far below it, to a tidy value: few full draws, each kept.
        old = f["ylim"]
        if old is None or any(top > y or top < y / 5.0 for (_, _, _, top), y in zip(values, old)):
            ylim = tuple(_nice_ceiling(top * 1.5) for (_, _, _, top) in values)
        else:
            ylim = old
        if ylim != old or ylim not in f["backgrounds"]:
            f["ylim"] = ylim
            background = f["backgrounds"].get(ylim)
            if background is None:
                for (ax, *_), y in zip(f["artists"], ylim):
                    ax.set_ylim(0.0, y)
                f["canvas"].draw()
                self.chart_draws += 1
                if len(f["backgrounds"]) > 32:
                    f["backgrounds"].clear()
                background = f["backgrounds"][ylim] = f["canvas"].copy_from_bbox(f["fig"].bbox)
            else:
                for (ax, *_), y in zip(f["artists"], ylim):
                    ax.set_ylim(0.0, y)  # the lines are drawn in these data limits
            f["background"] = background
        f = self._figure
        canvas = f["canvas"]
        canvas.restore_region(f["background"])
        for (ax, offers, chats, line), (o, c, cap, _) in zip(f["artists"], values):
            offers.set_ydata(o)
            chats.set_ydata(c)
            line.set_visible(cap is not None)
            if cap is not None:
                line.set_ydata([cap, cap])
            ax.draw_artist(offers)
            ax.draw_artist(chats)
            if cap is not None:
                ax.draw_artist(line)
        width, height = canvas.get_width_height()
        image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def diff_text(self, tuned: RuleSpec, settings: Settings) -> str:
        """What publishing would change (HTML): the knobs, rule by rule, and the YAML diff."""
        current_knobs = _knobs_of(self.current, self.model)
        rows = []
        for name in self.model.rule_names:
            before = current_knobs.get(name, "absent")
            after = _knobs_text(settings.rules[name], self.model.tunable[name])
            mark = "" if before == after else ' style="background:#fff3c4"'
            rows.append(f"<tr{mark}><td>{_esc(name)}</td><td>{_esc(before)}</td><td>{_esc(after)}</td></tr>")
        for q in self.model.queue_names:
            qb = self.current.queues.get(q)
            before = "absent" if qb is None else ("none" if qb.capacity_per_hour is None else
                                                  _fmt_number(qb.capacity_per_hour))
            cap = settings.capacities[q]
            after = "none" if cap is None else _fmt_number(cap)
            mark = "" if before == after else ' style="background:#fff3c4"'
            rows.append(f"<tr{mark}><td>queue {_esc(q)} capacity/h</td><td>{_esc(before)}</td>"
                        f"<td>{_esc(after)}</td></tr>")
        text = ruleset_diff(self.current, tuned)
        body = _esc(text) if text else "(no change in the ruleset's text)"
        return ('<div><b>Current → tuned</b></div><table class="pcrules-table pcrules-knobs"><tr><th>rule</th>'
                "<th>current</th><th>tuned</th></tr>" + "".join(rows) + "</table>"
                f'<pre class="pcrules-yaml-diff" style="font-size:11px;max-height:320px;overflow:auto">{body}</pre>')


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `x` (a tidy axis limit)."""
    if x <= 0 or not math.isfinite(x):
        return 1.0
    power = 10.0 ** math.floor(math.log10(x))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * power >= x - 1e-12:
            return m * power
    return 10.0 * power


def _knobs_of(spec: RuleSpec, model: TriggerModel) -> dict[str, str]:
    out = {}
    for rule in spec.rules:
        knobs = _top_level_gte(rule)
        tunable = model.tunable.get(rule.name, knobs is not None) and knobs is not None
        s = RuleSetting(True, knobs[0], knobs[1]) if knobs is not None else RuleSetting(True, math.nan, None)
        out[rule.name] = _knobs_text(s, tunable)
    for name in model.rule_names:
        out.setdefault(name, "off")
    return out


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{float(x):g}"


def _css(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).lower()


def _reason(exc: BaseException) -> str:
    """An exception as part of a sentence: its message (first line), not its traceback."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rstrip(".")


def _sentence_part(problem: str) -> str:
    return problem.strip().rstrip(".")


def _note(text: str, error: bool = False, ok: bool = False) -> str:
    color = "#b00020" if error else "#1b5e20" if ok else "#333"
    role = ' role="alert"' if error else ""
    cls = "pcrules-error" if error else "pcrules-ok" if ok else "pcrules-note"
    return f'<div class="{cls}"{role} style="color:{color};margin:4px 0">{text}</div>'


# ============================================================================================ notebook 3 and the app


@dataclass
class TuningInputs:
    """What tuning needs: the current ruleset and model, the history (as an EventTable) and its truth."""

    spec: RuleSpec
    scorer: Any
    history: Any  # analysis.History
    table: EventTable
    truth: np.ndarray | None  # true P(accept) per event (input order), on a generated world
    bundle_dir: Path | None
    bundle_version: str | None
    model_metrics: dict[str, Any]
    notes: list[str]
    effects: Any = None  # what an offer at each event does to the goal probability (a generated world's truth)

    def summary(self) -> str:
        lines = [f"ruleset {self.spec.name} {self.spec.version} ({len(self.spec.rules)} rules, "
                 f"{len(self.spec.queues)} queues); "
                 + ("a model" if self.scorer is not None else "no model")
                 + (f"; bundle {self.bundle_version} in {self.bundle_dir}" if self.bundle_version else ""),
                 self.history.summary()]
        return "\n".join(lines + self.notes)

    def tuner(self, **kwargs: Any) -> Tuner:
        """A :class:`Tuner` over these inputs, publishing to their bundle folder."""
        kwargs.setdefault("bundle_dir", self.bundle_dir)
        kwargs.setdefault("model_metrics", self.model_metrics)
        return Tuner(self.spec, self.table, self.scorer, truth=self.truth, effects=self.effects, **kwargs)


def load_for_tuning(data_path: str | os.PathLike, bundle_path: str | os.PathLike | None = None, *,
                    rules_path: str | os.PathLike | None = None, model_path: str | os.PathLike | None = None,
                    columns: Mapping[str, Mapping[str, str]] | None = None) -> TuningInputs:
    """The history at `data_path` (see ``analysis.load_history``) and the ruleset and model to tune.

    The ruleset and model come from the current bundle of `bundle_path` when there is one; ``rules_path`` /
    ``model_path`` (a model JSON file, as ``pcrules train`` writes) override it; otherwise the embedded
    default rules and no model. Publishing goes to `bundle_path`.
    """
    from .explore import event_truth, load_history
    from ..bundle import current_version, load_bundle
    from ..scoring import load_scorer

    notes: list[str] = []
    history = load_history(data_path, columns=columns)
    bundle_dir = Path(bundle_path).expanduser() if bundle_path not in (None, "") else None
    spec, scorer, version, metrics = None, None, None, {}
    if bundle_dir is not None and bundle_dir.exists() and current_version(bundle_dir) is not None:
        bundle = load_bundle(bundle_dir / "current")
        spec, scorer, version, metrics = bundle.spec, bundle.scorer, bundle.version, dict(bundle.metrics or {})
        notes.append(f"The current bundle {version} gives the ruleset and the model.")
    elif bundle_dir is not None:
        notes.append(f"There is no bundle in {bundle_dir} yet: Publish will create the first one.")
    if rules_path not in (None, ""):
        spec = load_spec(Path(rules_path).expanduser())
        notes.append(f"The ruleset comes from {rules_path}.")
    if spec is None:
        from ..resources import default_rules  # pcrules/default_rules.yaml, package data
        spec = load_spec(default_rules())
        notes.append("The ruleset is the embedded default (pcrules/default_rules.yaml).")
    if model_path not in (None, ""):
        import json

        path = Path(model_path).expanduser()
        if path.is_file():
            scorer = load_scorer(json.loads(path.read_text(encoding="utf-8")))
            notes.append(f"The model comes from {path}.")
            from .explore import metrics_path_for

            metrics_file = metrics_path_for(path)
            if metrics_file.is_file():
                metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        else:
            notes.append(f"There is no model file at {path}.")
    if scorer is None:
        notes.append("No model: rules cannot use a score threshold, and expected accepts are not known.")
    truth = event_truth(history)
    effects = None
    if history.generated:
        from .world import event_effects

        effects = event_effects(history)[["gain_if_accepted", "loss_if_not_accepted"]]
        notes.append("A generated world: the expected uplift (extra goals) uses its known effect of an offer.")
    else:
        notes.append("Real history: the effect of an offer on the goals is not known, so the expected uplift is "
                     "not available (backtest(effects=...) takes an assumption).")
    table = EventTable(history.events)
    return TuningInputs(spec, scorer, history, table, truth, bundle_dir, version, metrics, notes, effects)


def expected_value_choice(inputs: TuningInputs, *, value_of_accept: float = 1.0, cost_of_offer: float = 0.03,
                          respect_capacity: bool = True, spec: RuleSpec | None = None, objective: str = "accepts",
                          value_of_goal: float = 1.0) -> Any:
    """``decision_value.tune``: per rule, the wait and score threshold that maximise expected value.

    ``objective`` (``decision_value.OBJECTIVES``): ``"accepts"``: value = ``value_of_accept`` x expected
    accepted chats - ``cost_of_offer`` x offers; ``"uplift"``: the expected extra goals the offers cause
    (needs the inputs' effects: a generated world); ``"value"``: ``value_of_goal`` x extra goals +
    ``value_of_accept`` x accepts - ``cost_of_offer`` x offers. Every queue's busiest hour stays within its
    capacity. Returns ``decision_value.Tuned`` (``.choices``, ``.table()``, ``.value``, ``.result`` the
    exact backtest, with the expected uplift when the effects are known).
    """
    from .value import Economics, tune

    if inputs.scorer is None:
        raise ValueError("the expected-value choice needs a model (its scores are the expected accepts)")
    return tune(spec or inputs.spec, inputs.table, inputs.scorer,
                economics=Economics(value_of_accept, cost_of_offer, respect_capacity, value_of_goal),
                truth=inputs.truth, effects=inputs.effects, objective=objective)


@dataclass
class SideBySide:
    """Two rulesets backtested on the same history: the results and the comparison table."""

    names: tuple[str, str]
    results: tuple[Any, Any]  # backtest.BacktestResult
    table: pd.DataFrame


def side_by_side(current: RuleSpec, tuned: RuleSpec, inputs: TuningInputs,
                 names: tuple[str, str] = ("current", "tuned")) -> SideBySide:
    """The exact backtest of both rulesets and ``backtest.compare`` of the two."""
    from .backtest import backtest, compare

    a = backtest(current, inputs.table, inputs.scorer, truth=inputs.truth, effects=inputs.effects)
    b = backtest(tuned, inputs.table, inputs.scorer, truth=inputs.truth, effects=inputs.effects)
    return SideBySide(names, (a, b), compare(a, b, names))


def uplift_side_by_side(sbs: SideBySide, dimension: str = "page") -> pd.DataFrame | str:
    """Expected uplift of both rulesets by ``rule``, ``page`` or ``queue`` (``BacktestResult.uplift_by``): offers and
    expected extra goals of each, by the true P(accept) on a generated world (else the model's). When the effects
    of an offer are not known (real history), a sentence saying so instead of a table."""
    (a, b), (na, nb) = sbs.results, sbs.names
    probability = "truth" if a.metrics.get("true_expected_uplift") is not None else "model"
    try:
        left, right = a.uplift_by(dimension, probability), b.uplift_by(dimension, probability)
    except ValueError as exc:
        reason = _reason(exc)
        return reason[:1].upper() + reason[1:] + "."
    out = pd.DataFrame({f"offers ({na})": left["offers"], f"offers ({nb})": right["offers"],
                        f"extra goals ({na})": left["expected_uplift"], f"extra goals ({nb})": right["expected_uplift"]})
    out = out.fillna(0.0)
    out["change"] = out[f"extra goals ({nb})"] - out[f"extra goals ({na})"]
    out.attrs["probability"] = probability
    return out.rename_axis(dimension)


def plot_side_by_side(sbs: SideBySide) -> Any:
    """Offers and expected accepts by rule, and expected chats per hour of day by queue, for both rulesets."""
    from .explore import new_figure

    (a, b), (na, nb) = sbs.results, sbs.names
    fig = new_figure(12, 4.2)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    rules = list(dict.fromkeys([*a.per_rule.index, *b.per_rule.index]))
    y = np.arange(len(rules))
    for offset, res, name, color in ((-0.2, a, na, "#9db7d5"), (0.2, b, nb, "#1f4e8c")):
        per = res.per_rule.reindex(rules).fillna(0)
        ax1.barh(y + offset, per["offers"], height=0.4, color=color, label=name)
        col = "true_expected" if "true_expected" in per.columns else "expected_accepts" \
            if "expected_accepts" in per.columns else "accepted"
        ax2.barh(y + offset, per[col], height=0.4, color=color, label=name)
        ax2.set_xlabel({"true_expected": "true expected accepts", "expected_accepts": "expected accepts (model)",
                        "accepted": "accepted (recorded)"}[col])
    for ax in (ax1, ax2):
        ax.set_yticks(y, rules, fontsize=8)
        ax.invert_yaxis()
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    ax1.set_xlabel("offers")
    ax1.set_title("Offers by rule", fontsize=10)
    ax2.set_title("Expected accepts by rule", fontsize=10)
    for res, name, ls in ((a, na, "--"), (b, nb, "-")):
        qh = res.queue_hours
        if not len(qh):
            continue
        value = "expected_chats" if qh["expected_chats"].notna().any() else "accepted"
        profile = qh.assign(h=qh["hour"].dt.hour).groupby(["queue", "h"])[value].mean().unstack(0)
        for i, queue in enumerate(profile.columns):
            ax3.plot(profile.index, profile[queue], ls=ls, color=f"C{i}", label=f"{queue} ({name})")
    ax3.set_xlabel("hour of day (UTC)")
    ax3.set_ylabel("mean per hour")
    ax3.set_title("Expected chats per queue and hour of day", fontsize=10)
    ax3.legend(fontsize=7, ncol=2)
    ax3.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def dashboard(data_path: str | os.PathLike | None = None, bundle_path: str | os.PathLike | None = None, *,
              title: str = "Trigger tuner") -> Any:
    """The tuner as a Voila app (``dashboards/triggers.ipynb``): history from `data_path` (``$PCRULES_EVENTS``),
    ruleset and model from the current bundle of `bundle_path` (``$PCRULES_BUNDLE``), Publish back to it.

    A problem (no data, a bundle that does not load) is shown as a sentence, never a traceback.
    """
    import ipywidgets as w

    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    data = data_path if data_path not in (None, "") else os.environ.get(EVENTS_ENV)
    bundle = bundle_path if bundle_path not in (None, "") else os.environ.get(BUNDLE_ENV)
    if not data:
        from .sample import SAMPLE_PATH

        data = SAMPLE_PATH
    try:
        inputs = load_for_tuning(data, bundle or None)
        tuner = inputs.tuner(title=title)
    except Exception as exc:
        log.exception("tuner dashboard: could not start")
        where = f" (history {data}, bundle {bundle or 'none'})"
        box = w.HTML(_note(_esc(f"The tuner could not start: {_reason(exc)}{where}. Set {EVENTS_ENV} to an events "
                                f"file or a folder of history, and {BUNDLE_ENV} to a published bundle folder."),
                           error=True))
        box.add_class("pcrules-message")
        return box
    if inputs.notes:
        tuner.root.children = (w.HTML("<div class='pcrules-notes' style='font-size:12px;color:#555'>"
                                      + "<br>".join(_esc(n) for n in inputs.notes) + "</div>"),
                               *tuner.root.children)
    return tuner
