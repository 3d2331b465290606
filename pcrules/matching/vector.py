"""The rule spec compiled into vectorised predicates over a table of events (pandas / numpy).

This is the backtest's twin of :mod:`pcrules.matching.durable`: the same spec,
the same ``f`` / ``s`` / ``r`` variants of every rule (as written, without its
score conditions, without score and time-on-page conditions; built by the
same ``without_fields``), and so the same :class:`~pcrules.matching.result.Matches`
for every event — only computed for a whole column at once.

The typed view is the runtime's (``durable.ViewPlan``): a field whose value
is not of the type the spec compares it with counts as *missing*, and a
missing or null field fails every operator, ``ne`` and ``not_in`` included
(pandas' ``!=`` is True for NaN: every comparison here is guarded by the
field's ``present`` mask); ``exists`` tests exactly that mask. Text columns
are factorised once (a categorical column is used as it is), so string
predicates — ``eq``, ``ne``, ``in``, ``not_in`` and ``matches`` — run once per
distinct value and are spread to the rows by their codes: no per-row Python.
``matches`` is ``spec.compile_pattern(p).search``: the very predicate whose
answer the runtime posts to durable_rules as a derived boolean field.

``hour`` and ``weekday`` are read in each rule's queue time zone, exactly as
``clock.local_clock`` (``datetime.fromtimestamp``, microseconds rounded half
to even) reads them, and :func:`open_mask` is ``clock.is_open`` for a column.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ..core.clock import local_clock, zone
from ..core.matches import NO_MATCHES, Matches
from ..core.spec import (
    BOOL,
    DAYS,
    NUMBER,
    STRING,
    TIME_FIELDS,
    AnyOf,
    Condition,
    Hours,
    Node,
    Rule,
    RuleSpec,
    compile_pattern,
    rule_tz,
)
from .durable import PER_ZONE, SCORE_FIELDS, TIME_AND_SCORE_FIELDS, untyped_fields, uses_fields, without_fields

__all__ = ["EventColumns", "Typed", "VectorMatcher", "MatchArrays", "local_clock_arrays", "open_mask"]

_DAYS = np.array(DAYS, dtype=object)
_OBJECT = np.dtype(object)  # a column of Python objects (compared as a dtype, not a type)
_BUCKET_S = 900  # UTC offsets are looked up per 15 minutes; a bucket holding a transition is resolved per row


# --------------------------------------------------------------------------------------------- typed columns


@dataclass(frozen=True)
class Typed:
    """One field as the rules see it.

    Text: ``codes`` index ``uniques`` (every unique a str), -1 where the value is
    missing or not text. Number / boolean / untyped: ``values`` and ``present``.
    """

    kind: str | None  # NUMBER, STRING, BOOL, or None (untyped: tested only by `exists`)
    present: np.ndarray
    values: np.ndarray | None = None
    codes: np.ndarray | None = None
    uniques: np.ndarray | None = None


def _is_number(v: Any) -> bool:
    cls = v.__class__
    if cls is float:
        return v == v  # NaN is a missing value in a table
    if cls is int:
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and not (
        isinstance(v, float) and math.isnan(v))


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))


def _nulls(series: pd.Series) -> np.ndarray:
    return series.isna().to_numpy(dtype=bool, na_value=True)


def _number_view(series: pd.Series) -> Typed:
    dtype = series.dtype
    n = len(series)
    if isinstance(dtype, pd.CategoricalDtype):
        inner = _number_view(pd.Series(dtype.categories))
        assert inner.values is not None  # a number view has values
        codes = series.cat.codes.to_numpy()
        return Typed(NUMBER, np.append(inner.present, False)[codes], np.append(inner.values, np.nan)[codes])
    if pd.api.types.is_bool_dtype(dtype):
        return Typed(NUMBER, np.zeros(n, dtype=bool), np.full(n, np.nan))
    if pd.api.types.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        return Typed(NUMBER, ~np.isnan(values), values)
    objects = series.to_numpy(dtype=object)
    present = np.fromiter((_is_number(v) for v in objects), dtype=bool, count=n)
    values = np.full(n, np.nan)
    if present.any():
        values[present] = np.array([float(v) for v in objects[present]], dtype=float)
    return Typed(NUMBER, present, values)


def _bool_view(series: pd.Series) -> Typed:
    dtype = series.dtype
    n = len(series)
    if isinstance(dtype, pd.CategoricalDtype):
        inner = _bool_view(pd.Series(dtype.categories, dtype=object))
        assert inner.values is not None  # a boolean view has values
        codes = series.cat.codes.to_numpy()
        return Typed(BOOL, np.append(inner.present, False)[codes], np.append(inner.values, False)[codes])
    if dtype == np.bool_:
        return Typed(BOOL, np.ones(n, dtype=bool), series.to_numpy(dtype=bool))
    if pd.api.types.is_bool_dtype(dtype):  # the nullable "boolean"
        present = ~_nulls(series)
        return Typed(BOOL, present, series.to_numpy(dtype=bool, na_value=False))
    if dtype != _OBJECT:
        return Typed(BOOL, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
    objects = series.to_numpy(dtype=object)
    present = np.fromiter((_is_bool(v) for v in objects), dtype=bool, count=n)
    values = np.zeros(n, dtype=bool)
    if present.any():
        values[present] = np.array([bool(v) for v in objects[present]], dtype=bool)
    return Typed(BOOL, present, values)


def _is_text_dtype(dtype: Any) -> bool:
    return isinstance(dtype, pd.StringDtype)


def string_view(series: pd.Series) -> Typed:
    dtype = series.dtype
    n = len(series)
    if isinstance(dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy().astype(np.int64)
        uniques = np.asarray(dtype.categories, dtype=object)
    elif _is_text_dtype(dtype) or dtype == _OBJECT:
        codes, uniq = pd.factorize(series, use_na_sentinel=True)
        codes = np.asarray(codes, dtype=np.int64)
        uniques = np.asarray(uniq, dtype=object)
    else:  # numbers, booleans: no text at all
        return Typed(STRING, np.zeros(n, dtype=bool), codes=np.full(n, -1, dtype=np.int64),
                     uniques=np.empty(0, dtype=object))
    if not _is_text_dtype(dtype):
        text = np.fromiter((isinstance(u, str) for u in uniques), dtype=bool, count=len(uniques))
        if not text.all():  # values of another type than text count as missing
            remap = np.where(text, np.cumsum(text) - 1, -1)
            codes = np.append(remap, -1)[codes]
            uniques = uniques[text]
    uniques = np.array([str(u) for u in uniques], dtype=object)  # plain str, even from numpy.str_
    return Typed(STRING, codes >= 0, codes=codes, uniques=uniques)


def _untyped_view(series: pd.Series) -> Typed:
    return Typed(None, ~_nulls(series))


_VIEWS = {NUMBER: _number_view, STRING: string_view, BOOL: _bool_view, None: _untyped_view}


# --------------------------------------------------------------------------------------------- local time


def _utc_offset(ts: float, tz: str) -> int:
    offset = datetime.fromtimestamp(ts, zone(tz)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _whole_seconds(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds as ``datetime.fromtimestamp`` sees them: microseconds rounded half to even, then floored."""
    sec = np.floor(ts)
    micro = np.rint((ts - sec) * 1e6)
    return (sec + (micro >= 1e6)).astype(np.int64)


def local_clock_arrays(ts: np.ndarray, tz: str) -> tuple[np.ndarray, np.ndarray]:
    """``clock.local_clock`` for a column: (weekday 0=Monday as int8, minute of the day as int16) in `tz`."""
    ts = np.asarray(ts, dtype=float)
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int16)
    sec = _whole_seconds(ts)
    buckets, inverse = np.unique(sec // _BUCKET_S, return_inverse=True)
    starts = [_utc_offset(float(b * _BUCKET_S), tz) for b in buckets.tolist()]
    ends = [_utc_offset(float(b * _BUCKET_S + _BUCKET_S - 1), tz) for b in buckets.tolist()]
    offset = np.asarray(starts, dtype=np.int64)[inverse]
    local = sec + offset
    weekday = (np.floor_divide(local, 86400) + 3) % 7  # 1970-01-01 was a Thursday
    minute = np.mod(local, 86400) // 60
    changing = np.flatnonzero(np.asarray(starts) != np.asarray(ends))
    if len(changing):  # a UTC-offset change inside the bucket: those rows the slow, exact way
        rows = np.flatnonzero(np.isin(inverse, changing))
        for i in rows.tolist():
            weekday[i], minute[i] = local_clock(float(ts[i]), tz)
    return weekday.astype(np.int8), minute.astype(np.int16)


def open_mask(hours: Hours | None, weekday: np.ndarray, minute: np.ndarray) -> np.ndarray:
    """``clock.is_open`` for a column of (weekday, minute) in the hours' time zone."""
    if hours is None:
        return np.ones(len(weekday), dtype=bool)
    days = np.zeros(7, dtype=bool)
    days[list(hours.days)] = True
    if hours.start_min < hours.end_min:
        return days[weekday] & (minute >= hours.start_min) & (minute < hours.end_min)
    # Across midnight: the early-morning part belongs to the previous day's opening.
    return np.where(minute >= hours.start_min, days[weekday], (minute < hours.end_min) & days[(weekday - 1) % 7])


# --------------------------------------------------------------------------------------------- the event table


class EventColumns:
    """An events table, with each field's typed view computed once (and kept for later specs).

    ``frame`` holds one event per row (the runtime's field names); ``seconds_on_page``
    and ``ts`` must be numbers. Columns named in ``exclude`` (recorded answers,
    ground truth) are not event fields.
    """

    def __init__(self, frame: pd.DataFrame, exclude: Iterable[str] = ()):
        self.frame = frame
        self.n = len(frame)
        self.exclude = frozenset(exclude)
        self._views: dict[tuple[str, str | None], Typed] = {}
        self._clocks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._leaves: dict[tuple, np.ndarray] = {}
        self._ts: np.ndarray | None = None
        self._seconds: np.ndarray | None = None

    @property
    def ts(self) -> np.ndarray:
        if self._ts is None:
            self._ts = self.frame["ts"].to_numpy(dtype=float, na_value=np.nan)
        return self._ts

    @property
    def seconds(self) -> np.ndarray:
        if self._seconds is None:
            self._seconds = self.frame["seconds_on_page"].to_numpy(dtype=float, na_value=np.nan)
        return self._seconds

    def has(self, field: str) -> bool:
        return field in self.frame.columns and field not in self.exclude

    def view(self, field: str, kind: str | None) -> Typed:
        key = (field, kind)
        typed = self._views.get(key)
        if typed is None:
            if self.has(field):
                typed = _VIEWS[kind](self.frame[field])
            else:
                n = self.n
                typed = Typed(kind, np.zeros(n, dtype=bool), np.full(n, np.nan) if kind == NUMBER else
                              np.zeros(n, dtype=bool), np.full(n, -1, dtype=np.int64), np.empty(0, dtype=object))
            self._views[key] = typed
        return typed

    def clock(self, tz: str) -> tuple[np.ndarray, np.ndarray]:
        """(weekday, minute of day) of every event in `tz`."""
        out = self._clocks.get(tz)
        if out is None:
            out = self._clocks[tz] = local_clock_arrays(self.ts, tz)
        return out


# --------------------------------------------------------------------------------------------- predicates


def _value_key(value: Any) -> Any:
    """A cache key that tells 1 from True (equal in Python, different to the rules)."""
    if isinstance(value, tuple):
        return tuple(_value_key(v) for v in value)
    return (type(value).__name__, value)


def _lut(codes: np.ndarray, hits: Iterable[bool], size: int) -> np.ndarray:
    table = np.zeros(size + 1, dtype=bool)  # the last slot answers code -1 (missing)
    table[:size] = np.fromiter(hits, dtype=bool, count=size)
    return table[codes]


def _compare(typed: Typed, op: str, value: Any) -> np.ndarray:
    present = typed.present
    if op == "exists":
        return present.copy() if value else ~present
    if typed.kind == STRING:
        uniques, codes = typed.uniques, typed.codes
        assert uniques is not None and codes is not None  # a text view has both
        size = len(uniques)
        if op == "eq":
            return _lut(codes, (u == value for u in uniques), size)
        if op == "ne":
            return _lut(codes, (u != value for u in uniques), size)
        if op == "in":
            wanted = frozenset(value)
            return _lut(codes, (u in wanted for u in uniques), size)
        if op == "not_in":
            wanted = frozenset(value)
            return _lut(codes, (u not in wanted for u in uniques), size)
        if op == "matches":
            search = compile_pattern(value).search
            return _lut(codes, (search(u) is not None for u in uniques), size)
        return np.zeros(len(codes), dtype=bool)  # ordering on text: the spec refuses it
    x = typed.values
    assert x is not None  # a number or boolean view (an untyped field is tested only by `exists`, above)
    if op == "eq":
        hit = x == value
    elif op == "ne":
        hit = x != value
    elif op == "gt":
        hit = x > value
    elif op == "gte":
        hit = x >= value
    elif op == "lt":
        hit = x < value
    elif op == "lte":
        hit = x <= value
    elif op == "in":
        hit = np.isin(x, np.asarray(value, dtype=x.dtype))
    elif op == "not_in":
        hit = ~np.isin(x, np.asarray(value, dtype=x.dtype))
    else:  # `matches` on a number or a boolean: the spec refuses it
        hit = np.zeros(len(x), dtype=bool)
    return present & hit  # a missing value fails every operator, `ne` and `not_in` included


@dataclass(frozen=True)
class MatchArrays:
    """For every event row, which rules match in full, but for their score, or later (rules: strongest first).

    ``full``, ``unscored`` and ``later`` have shape (rules, rows); row ``i`` is the
    :class:`Matches` that ``DurableMatcher.match`` reports for event ``i``.
    """

    rules: tuple[Rule, ...]
    full: np.ndarray
    unscored: np.ndarray
    later: np.ndarray

    def any(self) -> np.ndarray:
        """Rows that some rule matches now, but for its score, or later: the rows that are not plainly `no_rule`."""
        if not len(self.rules):
            return np.zeros(self.full.shape[1], dtype=bool)
        return np.asarray(self.full.any(axis=0) | self.unscored.any(axis=0) | self.later.any(axis=0))

    def matches(self, i: int) -> Matches:
        full = tuple(r for k, r in enumerate(self.rules) if self.full[k, i])
        unscored = tuple(r for k, r in enumerate(self.rules) if self.unscored[k, i])
        later = tuple(r for k, r in enumerate(self.rules) if self.later[k, i])
        if not (full or unscored or later):
            return NO_MATCHES
        return Matches(full, unscored, later)


class VectorMatcher:
    """One spec as vectorised predicates; ``match(columns, score)`` answers for every row at once."""

    def __init__(self, spec: RuleSpec):
        self.spec = spec
        self.rules = spec.rules
        self._untyped = untyped_fields(spec)
        zones = {tz: i for i, tz in enumerate(spec.time_zones)}
        self._variants: list[dict[str, tuple[Node, ...]]] = []
        self._zone: list[tuple[int, str]] = []
        for rule in spec.rules:
            variants = {"f": rule.when}
            if uses_fields(rule, SCORE_FIELDS):
                variants["s"] = without_fields(rule.when, SCORE_FIELDS)
            if uses_fields(rule, frozenset(TIME_FIELDS)):
                variants["r"] = without_fields(rule.when, TIME_AND_SCORE_FIELDS)
            self._variants.append(variants)
            tz = rule_tz(spec, rule)
            self._zone.append((zones[tz], tz))
        self.uses_score = tuple(uses_fields(r, SCORE_FIELDS) for r in spec.rules)

    # -- one condition, one rule ------------------------------------------------------------------------------
    def _kind(self, field: str) -> str | None:
        if field in ("minutes_on_page", "score", "hour"):
            return NUMBER
        if field == "weekday":
            return STRING
        return None if field in self._untyped else self.spec.field_types.get(field)

    def _typed(self, cols: EventColumns, field: str, tz: str, score: Typed | None) -> Typed:
        n = cols.n
        if field == "score":
            return score if score is not None else Typed(NUMBER, np.zeros(n, dtype=bool), np.full(n, np.nan))
        if field == "minutes_on_page":
            seconds = cols.seconds
            return Typed(NUMBER, ~np.isnan(seconds), seconds / 60.0)
        if field in PER_ZONE:
            weekday, minute = cols.clock(tz)
            if field == "hour":
                return Typed(NUMBER, np.ones(n, dtype=bool), (minute // 60).astype(float))
            return Typed(STRING, np.ones(n, dtype=bool), codes=weekday.astype(np.int64), uniques=_DAYS)
        return cols.view(field, self._kind(field))

    def _leaf(self, cols: EventColumns, cond: Condition, tz: str, score: Typed | None) -> np.ndarray:
        if cond.field == "score":  # depends on the scores passed in: never cached
            return _compare(self._typed(cols, "score", tz, score), cond.op, cond.value)
        key = (self._kind(cond.field), tz if cond.field in PER_ZONE else None, cond.field, cond.op,
               _value_key(cond.value))
        hit = cols._leaves.get(key)
        if hit is None:
            hit = cols._leaves[key] = _compare(self._typed(cols, cond.field, tz, score), cond.op, cond.value)
        return hit

    def all_conditions(self, cols: EventColumns, nodes: tuple[Node, ...], tz: str, score: Typed | None) -> np.ndarray:
        out = np.ones(cols.n, dtype=bool)
        for node in nodes:
            if isinstance(node, Condition):
                out &= self._leaf(cols, node, tz, score)
            else:
                out &= self._any(cols, node, tz, score)
        return out

    def _any(self, cols: EventColumns, node: AnyOf, tz: str, score: Typed | None) -> np.ndarray:
        out = np.zeros(cols.n, dtype=bool)
        for branch in node.branches:
            out |= self.all_conditions(cols, branch, tz, score)
        return out

    def variant(self, cols: EventColumns, k: int, tag: str, score: Typed | None = None) -> np.ndarray | None:
        """Rows satisfying variant `tag` (f, s or r) of rule `k`; None when the rule has no such variant."""
        nodes = self._variants[k].get(tag)
        return None if nodes is None else self.all_conditions(cols, nodes, self._zone[k][1], score)

    # -- every rule -----------------------------------------------------------------------------------------
    def needs_score(self, cols: EventColumns) -> np.ndarray:
        """Rows whose matches can depend on the score: a rule on `score` holds there but for score (and time).

        Elsewhere no variant of a rule on `score` holds (the variants only add
        conditions as they go from r to s to f), so the score cannot change the decision.
        """
        out = np.zeros(cols.n, dtype=bool)
        for k in range(len(self.rules)):
            if self.uses_score[k]:
                base = self.variant(cols, k, "r")
                out |= base if base is not None else self.variant(cols, k, "s")
        return out

    def match(self, cols: EventColumns, score: np.ndarray | None = None) -> MatchArrays:
        """The Matches of every row; `score` holds P(accept) per row, NaN where there is none."""
        n, k_rules = cols.n, len(self.rules)
        scored = None
        if score is not None:
            score = np.asarray(score, dtype=float)
            scored = Typed(NUMBER, ~np.isnan(score), score)
        full = np.zeros((k_rules, n), dtype=bool)
        unscored = np.zeros((k_rules, n), dtype=bool)
        later = np.zeros((k_rules, n), dtype=bool)
        for k in range(k_rules):
            f = self.variant(cols, k, "f", scored)
            assert f is not None  # every rule has its full variant
            full[k] = f
            s = self.variant(cols, k, "s", scored)
            if s is not None:
                unscored[k] = s & ~f
            r = self.variant(cols, k, "r", scored)
            if r is not None:
                later[k] = r & ~f & ~unscored[k]
        return MatchArrays(self.rules, full, unscored, later)


def match_records(spec: RuleSpec, records: list[Mapping[str, Any]], scores: list[float | None] | None = None,
                  ) -> list[Matches]:
    """Matches for a few events given as dicts (tests, conformance): one table, one vectorised pass."""
    frame = pd.DataFrame.from_records([{k: v for k, v in r.items()} for r in records])
    cols = EventColumns(frame)
    score = None if scores is None else np.array([np.nan if s is None else s for s in scores], dtype=float)
    arrays = VectorMatcher(spec).match(cols, score)
    return [arrays.matches(i) for i in range(len(records))]
