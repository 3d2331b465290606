"""Backtest: what a ruleset would have decided on recorded traffic, for a whole history at once.

The same rule spec the runtime serves is compiled into vectorised predicates
(:mod:`pcrules.matching.vector`), candidate rows are scored in batch with the
bundle's model, and the stateful policy (pending offer, offers per session,
decline cooldown, offer timeout, hours, queue status, holdout, idle sessions)
is applied in time order. The answers are the history's own, with the
convention of :mod:`pcrules.replay`: the ``response`` (accept / decline) and
``response_delay_s`` recorded with the event at which an offer is made are
played back when the answer comes before the offer's timeout; otherwise the
offer expires. So a backtest *is* a replay, and the two are compared event by
event (``tests/test_backtest.py``).

Two engines apply the policy, with the same inputs and the same output:

``engine="policy"``
    calls the runtime's pure core, :func:`pcrules.policy.decide` and
    :func:`pcrules.policy.answer`, for every row that some rule matches now,
    but for its score, or later (the *candidate* rows); rows no rule can match
    on their page are ``none/no_rule`` without a Python step.
``engine="fast"`` (default)
    the same judgement as arrays: the stateless part of ``decide`` (which rule
    matches, which queue is closed or busy, what to wait for, ``score_below``)
    for every row at once; a Python step only for the rows where an offer
    would be made if the session allowed it; then the session and visitor
    blocks (``in_chat``, ``offer_pending``, ``max_offers``, ``cooldown``) of
    every other row from the offers made, with ``searchsorted``. The parity
    tests prove it equal to ``engine="policy"`` and to the runtime.

Events are taken in time order (a stable sort by ``ts``; the decisions come
back in the input's order and index). Rows the runtime would refuse
(``events.validate_event``) get ``action == "refused"`` and take no part, as
in a replay.

    >>> from pcrules.backtest import backtest, compare
    >>> result = backtest(spec, events, scorer=model)          # doctest: +SKIP
    >>> print(result.summary())                                 # doctest: +SKIP
    >>> compare(result, backtest(other_spec, events, scorer=model))   # doctest: +SKIP
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Mapping as _MappingABC
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..core.decision import OfferStatus, Reason
from ..core.events import (
    CONTROL,
    FIELD_NAME,
    MAX_EXTRA_FIELDS,
    MAX_ID,
    MAX_PAGE,
    MAX_SECONDS,
    MAX_TEXT,
    REQUIRED,
    TS_RANGE,
    TYPED,
    Event,
    validate_event,
)
from ..matching.vector import EventColumns, MatchArrays, Typed, VectorMatcher, open_mask
from ..core.policy import (
    QueueStatus,
    SessionState,
    VisitorState,
    _crossings,
    _time_holds,
    answer,
    decide,
    in_holdout,
    needs_score,
    render_metadata,
)
from ..core.spec import BOOL, NUMBER, STRING, RuleSpec, load_spec
from ..stats.uplift import goal_effect

__all__ = ["EventTable", "BacktestResult", "backtest", "compare", "batch_scores", "ANSWER_COLUMNS", "ACTIONS",
           "REASONS", "OUTCOMES", "Effects", "EFFECT_COLUMNS", "resolve_effects", "uplift_figures"]

ANSWER_COLUMNS = ("response", "response_delay_s")  # recorded answers: not event fields
ACTIONS = ("offer", "wait", "none", "refused")
REASONS = tuple(r.value for r in Reason)
OUTCOMES = ("accepted", "declined", "expired")
_A_OFFER, _A_WAIT, _A_NONE, _A_REFUSED = range(4)
_R = {r: i for i, r in enumerate(Reason)}
_NO_ANSWER, _ACCEPT, _DECLINE = 0, 1, 2
_SCORE_EPS = 1e-9  # a batch score this close to a score threshold is recomputed the runtime's way


# ============================================================================================ the event table


def _plain(value: Any) -> Any:
    """A table cell as the runtime receives it in an event dict: None for missing, Python scalars."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, float) and value != value:
            return None
    return value


class EventTable:
    """An events table prepared for backtests: sorted by time, checked, keyed, typed, cached.

    Build one and pass it to many :func:`backtest` calls (tuning does): typed
    columns, predicates, validity, session keys and scores are computed once.
    ``exclude``: more columns that are not event fields (ground truth, labels).
    """

    def __init__(self, events: pd.DataFrame | Sequence[Mapping[str, Any]], *, exclude: Iterable[str] = ()):
        frame = events if isinstance(events, pd.DataFrame) else pd.DataFrame.from_records(list(events))
        missing = [c for c in (*REQUIRED, "ts") if c not in frame.columns]
        if missing:
            raise ValueError(f"events: missing required column(s) {', '.join(missing)}")
        self.index = frame.index
        if not pd.api.types.is_numeric_dtype(frame["ts"].dtype) or pd.api.types.is_bool_dtype(frame["ts"].dtype):
            frame = frame.assign(ts=_epoch_seconds(frame["ts"]))
        ts = frame["ts"].to_numpy(dtype=float, na_value=np.nan)
        self.order: np.ndarray | None = None
        if len(ts) > 1 and not (np.diff(ts) >= 0).all():  # NaN counts as out of order too
            self.order = np.argsort(np.where(np.isnan(ts), np.inf, ts), kind="stable")
            frame = frame.iloc[self.order]
        self.frame = frame.reset_index(drop=True)
        self.n = len(self.frame)
        self.exclude = frozenset(ANSWER_COLUMNS) | frozenset(exclude)
        self.fields = [c for c in self.frame.columns if c not in self.exclude]
        bad = [c for c in self.fields if not isinstance(c, str) or not FIELD_NAME.fullmatch(c)]
        if bad:
            raise ValueError(f"events: column names must be field names (letters, digits, '_'): {bad[:5]}")
        if len(self.fields) > len(REQUIRED) + 1 + MAX_EXTRA_FIELDS:
            raise ValueError(f"events: {len(self.fields)} fields; the runtime takes at most "
                             f"{MAX_EXTRA_FIELDS} besides the required ones")
        self.columns = EventColumns(self.frame, exclude=self.exclude)
        self._valid: tuple[np.ndarray, dict[int, str]] | None = None
        self._keys: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._answers: tuple[np.ndarray, np.ndarray] | None = None
        self._scores: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}
        self._keys_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._holdout: dict[float, list[int]] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def ts(self) -> np.ndarray:
        return self.columns.ts

    @property
    def seconds(self) -> np.ndarray:
        return self.columns.seconds

    # -- what the runtime would refuse ---------------------------------------------------------------------
    @property
    def valid(self) -> np.ndarray:
        return self._validity()[0]

    @property
    def refusals(self) -> dict[int, str]:
        """Row (sorted position) -> the first reason the runtime would refuse that event."""
        return self._validity()[1]

    def _validity(self) -> tuple[np.ndarray, dict[int, str]]:
        if self._valid is None:
            self._valid = _check_events(self)
        return self._valid

    # -- identities ---------------------------------------------------------------------------------------
    def keys(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(visitor code, session code, visitor code of each session code): dense int64 codes."""
        if self._keys is None:
            visitor = self.columns.view("visitor_id", STRING)
            session = self.columns.view("session_id", STRING)
            v = visitor.codes
            s = session.codes
            n_s = len(session.uniques)
            owner = np.full(n_s + 1, -1, dtype=np.int64)
            known = (s >= 0) & (v >= 0)
            owner[s[known]] = v[known]  # last write wins: consistent iff every session id has one visitor
            # A session id shared by several visitors: key on the (visitor, session) pair.
            if known.any() and not (owner[s[known]] == v[known]).all():
                pair = v * (n_s + 1) + s
                s, uniq = pd.factorize(pair)
                s = np.asarray(s, dtype=np.int64)
                owner = np.asarray(uniq, dtype=np.int64) // (n_s + 1)
            self._keys = (v, s, owner)
        return self._keys

    def answers(self) -> tuple[np.ndarray, np.ndarray]:
        """(answer code 0 none / 1 accept / 2 decline, delay in seconds or NaN), from response / response_delay_s."""
        if self._answers is None:
            n = self.n
            code = np.zeros(n, dtype=np.int8)
            if "response" in self.frame.columns:
                view = _string_codes(self.frame["response"])
                lut = np.array([{"accept": _ACCEPT, "decline": _DECLINE}.get(u, _NO_ANSWER) for u in view.uniques]
                               + [_NO_ANSWER], dtype=np.int8)
                code = lut[view.codes]
            delay = np.full(n, np.nan)
            if "response_delay_s" in self.frame.columns:
                delay = pd.to_numeric(self.frame["response_delay_s"], errors="coerce").to_numpy(
                    dtype=float, na_value=np.nan)
            self._answers = (code, delay)
        return self._answers

    def holdout_cache(self, share: float) -> list[int]:
        """Per visitor code: 1 in the holdout group, 0 not, -1 not computed yet (``policy.in_holdout``)."""
        held = self._holdout.get(share)
        if held is None:
            held = [-1] * len(self.columns.view("visitor_id", STRING).uniques) if share > 0 else \
                [0] * len(self.columns.view("visitor_id", STRING).uniques)
            self._holdout[share] = held
        return held

    def epochs(self, rows: np.ndarray, ttl: float) -> np.ndarray:
        """A key per (session, stretch between idle evictions) for every row of the sessions of `rows`.

        The runtime forgets a session idle for longer than ``session_idle_ttl_s``
        (its last event before the high-water mark of event time minus the TTL):
        its next event starts afresh. Returns -1 for rows of other sessions.
        """
        _, skey, owner = self.keys()
        valid = self.valid
        wanted = np.zeros(len(owner) + 1, dtype=bool)
        wanted[skey[rows]] = True
        sub = np.flatnonzero(valid & wanted[skey])
        out = np.full(self.n, -1, dtype=np.int64)
        if not len(sub):
            return out
        s = skey[sub]
        order = np.argsort(s, kind="stable")
        r, s = sub[order], s[order]
        t = self.ts[r]
        fresh = np.ones(len(r), dtype=bool)
        same = s[1:] == s[:-1]
        # Evicted when last_seen < high_water - ttl; events are in time order, so last_seen is the
        # session's previous event and the high-water mark is this event's time.
        fresh[1:] = ~same | (t[:-1] < t[1:] - ttl)
        out[r] = np.cumsum(fresh) - 1
        return out

    # -- events as the runtime receives them ------------------------------------------------------------
    def raw_events(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """Rows (sorted positions) as the event dicts a replay would pass to ``Runtime.observe``.

        Only the rows asked for are converted to Python values (a few offers, a few scores near a
        threshold): never a whole column.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return []
        columns = [(name, self.frame[name].iloc[rows].to_numpy(dtype=object)) for name in self.fields]
        out = []
        for k in range(len(rows)):
            event = {}
            for name, values in columns:
                value = _plain(values[k])
                if value is not None:
                    event[name] = value
            out.append(event)
        return out

    def raw_event(self, i: int) -> dict[str, Any]:
        """Row `i` (sorted position) as the event dict a replay would pass to ``Runtime.observe``."""
        return self.raw_events([i])[0]

    def events(self, rows: Sequence[int] | np.ndarray) -> list[Event]:
        """Rows validated exactly as the runtime validates them."""
        return [validate_event(raw, _no_clock) for raw in self.raw_events(rows)]

    def event(self, i: int) -> Event:
        """Row `i` validated exactly as the runtime validates it."""
        return validate_event(self.raw_event(i), _no_clock)


def _epoch_seconds(column: pd.Series) -> np.ndarray:
    """Event times as epoch seconds, as ``events.parse_ts`` reads them (ISO text without an offset is UTC);
    NaN where the runtime would refuse the value."""
    from ..core.events import parse_ts

    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        stamps = column.dt.tz_localize("UTC") if column.dt.tz is None else column.dt.tz_convert("UTC")
        return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float, na_value=np.nan)
    out = np.full(len(column), np.nan)
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    parsed = []
    for value in np.asarray(uniques, dtype=object):
        try:
            parsed.append(parse_ts(_plain(value)))
        except Exception:  # refused by the runtime too
            parsed.append(np.nan)
    lut = np.array(parsed + [np.nan], dtype=float)
    out[:] = lut[np.asarray(codes)]
    return out


def _no_clock() -> float:
    raise ValueError("event without ts")


def _string_codes(series: pd.Series) -> Typed:
    from ..matching.vector import _string_view

    return _string_view(series)


def _good_text(uniques: np.ndarray, lo: int, hi: int) -> np.ndarray | None:
    """Per distinct text (plus a last slot for missing): within lo..hi characters and free of control characters.

    None when every one is fine (the common case, found with one search over all of them).
    """
    if not len(uniques):
        return None
    lengths = np.fromiter(map(len, uniques), dtype=np.int64, count=len(uniques))
    if lengths.min() >= lo and lengths.max() <= hi and not CONTROL.search("".join(uniques)):
        return None
    good = (lengths >= lo) & (lengths <= hi) & np.array([not CONTROL.search(x) for x in uniques], dtype=bool)
    return np.append(good, True)


def _check_events(table: EventTable) -> tuple[np.ndarray, dict[int, str]]:
    """``validate_event`` for the whole table: the mask of events it accepts, and why it refuses the others."""
    cols, frame, n = table.columns, table.frame, table.n
    refused = np.zeros(n, dtype=bool)
    why: dict[int, str] = {}

    def flag(mask: np.ndarray, field: str, message: str) -> None:
        new = mask & ~refused
        if new.any():
            for i in np.flatnonzero(new)[:1000].tolist():
                why[i] = f"{field}: {message}"
            refused[new] = True

    def text(field: str, lo: int, hi: int, required: bool) -> None:
        typed = cols.view(field, STRING)
        null = frame[field].isna().to_numpy(dtype=bool, na_value=True)
        if required:
            flag(null, field, "required")
        flag(~null & ~typed.present, field, "expected a string")
        good = _good_text(typed.uniques, lo, hi)
        if good is not None:
            flag(~good[typed.codes], field, f"expected {lo}..{hi} characters without control characters")

    def number(field: str, lo: float, hi: float, required: bool) -> None:
        typed = cols.view(field, NUMBER)
        null = frame[field].isna().to_numpy(dtype=bool, na_value=True)
        if required:
            flag(null, field, "required")
        flag(~null & ~typed.present, field, "expected a number")
        x = typed.values
        with np.errstate(invalid="ignore"):
            flag(typed.present & ~((x >= lo) & (x <= hi)), field, f"expected a number between {lo:g} and {hi:g}")

    text("visitor_id", 1, MAX_ID, True)
    text("session_id", 1, MAX_ID, True)
    text("page", 1, MAX_PAGE, True)
    number("seconds_on_page", 0.0, MAX_SECONDS, True)
    number("ts", TS_RANGE[0], TS_RANGE[1], True)
    for name in table.fields:
        if name in REQUIRED or name == "ts":
            continue
        kind = TYPED.get(name)
        series = frame[name]
        null = series.isna().to_numpy(dtype=bool, na_value=True)
        if kind == "number":
            number(name, 0.0, math.inf, False)
        elif kind == "string":
            text(name, 0, MAX_TEXT, False)
        elif kind == "bool":
            flag(~null & ~cols.view(name, BOOL).present, name, "expected a bool")
        else:  # any scalar: text within limits, a finite number, a boolean
            dtype = series.dtype
            if pd.api.types.is_bool_dtype(dtype):
                continue
            if pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
                x = series.to_numpy(dtype=float, na_value=np.nan)
                flag(np.isinf(x), name, "expected a finite number")
                continue
            typed = cols.view(name, STRING)
            good = _good_text(typed.uniques, 0, MAX_TEXT)
            if good is not None:
                flag(~good[typed.codes], name, f"expected at most {MAX_TEXT} characters without control characters")
            other = ~null & ~typed.present
            if other.any():
                rows = np.flatnonzero(other)
                objects = series.to_numpy(dtype=object)[rows]
                bad = np.array([not (isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, float, np.number))
                                and math.isfinite(float(v)))) for v in objects], dtype=bool)
                mask = np.zeros(n, dtype=bool)
                mask[rows[bad]] = True
                flag(mask, name, "expected a scalar (string, finite number, boolean or null)")
    return ~refused, why


# ============================================================================================ batch scoring


def _category_keys(table: EventTable, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, keys): ``features.category_key`` of every row's value (code -1: the missing key)."""
    cached = table._keys_cache.get(name)
    if cached is not None:
        return cached
    cached = table._keys_cache[name] = _category_keys_uncached(table, name)
    return cached


def _category_keys_uncached(table: EventTable, name: str) -> tuple[np.ndarray, np.ndarray]:
    from ..scoring.features import category_key

    if name not in table.fields:
        return np.full(table.n, -1, dtype=np.int64), np.empty(0, dtype=object)
    series = table.frame[name]
    dtype = series.dtype
    if dtype == np.bool_:
        codes = series.to_numpy(dtype=bool).astype(np.int64)
        return codes, np.array(["False", "True"], dtype=object)
    if isinstance(dtype, pd.StringDtype):  # text or missing: the typed view's codes are the keys
        typed = table.columns.view(name, STRING)
        return typed.codes, typed.uniques
    if dtype == object:  # mixed values: factorize would merge 1 and True; key every value first
        keys = np.array([category_key(_plain(v)) for v in series.to_numpy(dtype=object)], dtype=object)
        codes, uniques = pd.factorize(keys)
    else:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        uniques = np.array([category_key(_plain(u)) for u in np.asarray(uniques, dtype=object)], dtype=object)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object)


def _compiled_logits(scorer: Any, table: EventTable, rows: np.ndarray) -> np.ndarray:
    """``CompiledScorer.decision_function_one`` for many rows: the same terms, added in the same order."""
    from ..scoring.features import MISSING

    m = len(rows)
    z = np.full(m, scorer.intercept)
    for name, weights in scorer._cat:
        codes, keys = _category_keys(table, name)
        lut = np.array([weights.get(k, 0.0) for k in keys] + [weights.get(MISSING, 0.0)], dtype=float)
        z = z + lut[codes[rows]]
    for name, code, lower, upper, first, hinges, missing, offset, weights in scorer._num:
        typed = table.columns.view(name, NUMBER)
        x = typed.values[rows]
        absent = ~typed.present[rows]
        if code == 0:
            absent |= x < 0.0
        x = np.clip(np.where(absent, 0.0, x), lower, upper)
        if code == 2:
            angle = (2.0 * math.pi) * (np.mod(x + offset, 86400.0) / 86400.0)
            term = weights[0] * np.sin(angle) + weights[1] * np.cos(angle)
            z = z + np.where(absent, missing, term)
            continue
        u = np.log1p(x) if code == 0 else x
        step = first * u
        step += z
        term = np.empty_like(u)
        for cut, weight in hinges:  # weight * (u - cut) where u > cut; adding a signed zero elsewhere changes nothing
            np.subtract(u, cut, out=term)
            np.maximum(term, 0.0, out=term)
            term *= weight
            step += term
        z = np.where(absent, z + missing, step)
    return z


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        e = np.exp(np.where(z >= 0, -z, z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _linear_scores(scorer: Any, table: EventTable, rows: np.ndarray) -> np.ndarray:
    """``LinearScorer.predict_proba_one`` for many rows."""
    z = np.full(len(rows), float(scorer.intercept))
    for name, weight in scorer.numeric.items():
        typed = table.columns.view(name, NUMBER)
        x = typed.values[rows]
        use = typed.present[rows] & (x >= 0)
        z = z + np.where(use, weight * np.log1p(np.where(use, x, 0.0)), 0.0)
    for name, weights in scorer.categorical.items():
        if name in table.fields:
            codes, uniques = pd.factorize(table.frame[name], use_na_sentinel=True)
            lut = np.array([_lookup(weights, _plain(u)) for u in np.asarray(uniques, dtype=object)] + [0.0])
            z = z + lut[np.asarray(codes)[rows]]
    for name, weight in scorer.flags.items():
        typed = table.columns.view(name, BOOL)
        z = z + np.where(typed.present[rows] & typed.values[rows], weight, 0.0)
    return _sigmoid(z)


def _lookup(table: Mapping[Any, float], key: Any) -> float:
    try:
        return table.get(key, 0.0)
    except TypeError:
        return 0.0


def batch_scores(scorer: Any, table: EventTable, rows: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """P(accept) of `rows` (sorted positions) as the runtime's scorer would give it; NaN for no score.

    A ``CompiledScorer`` or ``LinearScorer`` is evaluated as arrays (the same
    terms in the same order); an ``AcceptanceModel`` through its scikit-learn
    Pipeline; an array (or Series) is taken as the scores of the events, in
    the input's order; any other ``Scorer`` one event at a time. The runtime's guard
    applies: anything but a probability in [0, 1] counts as no score.
    """
    from ..scoring.compiled import CompiledScorer
    from ..scoring.linear import LinearScorer

    rows = np.asarray(rows, dtype=np.int64)
    if scorer is None or not len(rows):
        return np.full(len(rows), np.nan)
    if isinstance(scorer, (np.ndarray, pd.Series, list)):  # scores computed elsewhere, one per event (input order)
        values = np.asarray(scorer, dtype=float)
        if len(values) != table.n:
            raise ValueError(f"scores: expected one per event ({table.n}), got {len(values)}")
        p = (values[table.order] if table.order is not None else values)[rows]
    elif isinstance(scorer, CompiledScorer):
        p = _sigmoid(_compiled_logits(scorer, table, rows))
    elif isinstance(scorer, LinearScorer):
        p = _linear_scores(scorer, table, rows)
    elif hasattr(scorer, "pipeline_") and hasattr(scorer, "predict_proba"):  # a fitted AcceptanceModel
        frame = table.frame.iloc[rows][table.fields]
        p = np.asarray(scorer.predict_proba(frame)[:, 1], dtype=float)
    else:
        p = np.full(len(rows), np.nan)
        bar = _bar(progress, len(rows), "score", "ev")
        for start in range(0, len(rows), 8192):
            chunk = rows[start:start + 8192]
            for k, event in enumerate(table.events(chunk)):
                p[start + k] = score_one(scorer, event.fields)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
    p = np.asarray(p, dtype=float)
    p[~((p >= 0.0) & (p <= 1.0))] = np.nan
    return p


def score_one(scorer: Any, fields: Mapping[str, Any]) -> float:
    """The runtime's ``_score``: the scorer on the validated event's fields, guarded."""
    try:
        raw = scorer.predict_proba_one(fields)
        score = None if raw is None else float(raw)
    except Exception:
        return math.nan
    if score is None or isinstance(raw, (bool, str, bytes)) or not 0.0 <= score <= 1.0:
        return math.nan
    return score


def _score_thresholds(spec: RuleSpec) -> np.ndarray:
    values = []
    for rule in spec.rules:
        for cond in rule.conditions():
            if cond.field == "score" and cond.op != "exists":
                values.extend(cond.value if isinstance(cond.value, tuple) else (cond.value,))
    return np.array(sorted(set(float(v) for v in values)), dtype=float)


def _scores_for(table: EventTable, spec: RuleSpec, scorer: Any, rows: np.ndarray, progress: bool) -> np.ndarray:
    """Scores of all rows (NaN where none), computing only `rows` not computed before for this scorer."""
    entry = table._scores.get(id(scorer))
    if entry is None or entry[0] is not scorer:
        entry = (scorer, np.full(table.n, np.nan), np.zeros(table.n, dtype=bool))
        table._scores[id(scorer)] = entry
    _, scores, done = entry
    todo = rows[~done[rows]]
    if len(todo):
        scores[todo] = batch_scores(scorer, table, todo, progress=progress)
        done[todo] = True
    # Near a threshold a last-bit difference (numpy's exp vs math.exp) could flip a rule: use the runtime's own path.
    thresholds = _score_thresholds(spec)
    if len(thresholds) and not isinstance(scorer, (np.ndarray, pd.Series, list)) and \
            hasattr(scorer, "predict_proba_one") and len(rows):
        s = scores[rows]
        near = np.zeros(len(rows), dtype=bool)
        for t in thresholds.tolist():
            near |= np.abs(s - t) <= _SCORE_EPS
        picked = rows[near]
        for i, event in zip(picked.tolist(), table.events(picked), strict=True):
            scores[i] = score_one(scorer, event.fields)
    return scores


# ============================================================================================ offer effects


EFFECT_COLUMNS = ("gain_if_accepted", "loss_if_not_accepted")


class Effects:
    """What an offer at each event would do to the visitor's goal probability, for expected uplift.

    ``gain_if_accepted``: the absolute rise of the goal probability if the chat is accepted;
    ``loss_if_not_accepted``: its absolute fall if the offer is declined or ignored (annoyance). An
    offer's expected effect is ``p * gain - (1 - p) * loss`` (:func:`pcrules.uplift.goal_effect`) with
    ``p`` its P(accept): the model's score, or the ground truth on a generated world.

    Built by :func:`resolve_effects` from what a caller passes as ``effects=``: see there.
    """

    def __init__(self, table: EventTable, source: Any):
        self.table = table
        self._fn: Callable[[pd.DataFrame], Any] | None = None
        self._gain: np.ndarray | None = None
        self._loss: np.ndarray | None = None
        n = table.n
        if callable(source) and not isinstance(source, (pd.DataFrame, _MappingABC)):
            self._fn = source
            self.description = f"effects from {getattr(source, '__name__', type(source).__name__)}()"
            return
        if isinstance(source, str):
            source = (source,)
        if isinstance(source, (tuple, list)):
            if not 1 <= len(source) <= 2 or not all(isinstance(c, str) for c in source):
                raise ValueError("effects: give column names (gain_if_accepted[, loss_if_not_accepted]) of the "
                                 f"events, got {source!r}")
            missing = [c for c in source if c not in table.frame.columns]
            if missing:
                raise ValueError(f"effects: the events have no column {', '.join(map(repr, missing))}")
            gain = table.frame[source[0]].to_numpy()
            loss = table.frame[source[1]].to_numpy() if len(source) > 1 else np.zeros(n)
            self._gain, self._loss = _effect_values(gain, loss, "effects")
            self.description = f"effects from the columns {', '.join(source)}"
            return
        if isinstance(source, (pd.DataFrame, _MappingABC)):
            if EFFECT_COLUMNS[0] not in source:
                raise ValueError(f"effects: expected a column {EFFECT_COLUMNS[0]!r} (and optionally "
                                 f"{EFFECT_COLUMNS[1]!r}), got {sorted(map(str, source.keys()))[:8]}")
            gain = _column(source[EFFECT_COLUMNS[0]])
            loss = _column(source[EFFECT_COLUMNS[1]]) if EFFECT_COLUMNS[1] in source else np.zeros(len(gain))
            if len(gain) != n or len(loss) != n:
                raise ValueError(f"effects: expected one row per event ({n}), got {len(gain)}")
            gain, loss = _effect_values(gain, loss, "effects")
            if table.order is not None:  # given in the input's order; the table is in time order
                gain, loss = gain[table.order], loss[table.order]
            self._gain, self._loss = gain, loss
            self.description = "effects given per event"
            return
        raise ValueError("effects: expected a frame with gain_if_accepted (and loss_if_not_accepted) per event, "
                         f"column names, or a function of the events, got {type(source).__name__}")

    def at(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gain_if_accepted, loss_if_not_accepted) of `rows` (sorted positions of the table)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._fn is None:
            return self._gain[rows], self._loss[rows]  # type: ignore[index]
        if not len(rows):
            return np.zeros(0), np.zeros(0)
        frame = self.table.frame.iloc[rows].reset_index(drop=True)
        out = self._fn(frame)
        if isinstance(out, (pd.DataFrame, _MappingABC)):
            if EFFECT_COLUMNS[0] not in out:
                raise ValueError(f"effects: the function returned no {EFFECT_COLUMNS[0]!r}")
            gain = out[EFFECT_COLUMNS[0]]
            loss = out[EFFECT_COLUMNS[1]] if EFFECT_COLUMNS[1] in out else 0.0  # a frame has no .get by column
        elif isinstance(out, tuple):
            if len(out) != 2:
                raise ValueError("effects: the function must return (gain_if_accepted, loss_if_not_accepted)")
            gain, loss = out
        else:
            gain, loss = out, 0.0
        gain = np.broadcast_to(_column(gain) if np.ndim(gain) else gain, (len(rows),))
        loss = np.broadcast_to(_column(loss) if np.ndim(loss) else loss, (len(rows),))
        return _effect_values(gain, loss, "effects (from the function)")


def _column(values: Any) -> np.ndarray:
    """One column of values as a flat array: floats as they are, anything else as objects (checked later)."""
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    return arr.ravel() if arr.dtype.kind in "fiub" else np.asarray(arr, dtype=object).ravel()


def _effect_values(gain: Any, loss: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, values in zip(EFFECT_COLUMNS, (gain, loss)):
        values = _column(values)
        if values.dtype.kind in "fiu":
            arr = values.astype(float)
        else:  # text, None, booleans: what is not a number becomes NaN and is refused below
            arr = np.array(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
                dtype=float, na_value=np.nan))  # a writable copy
            arr[np.array([isinstance(v, (bool, np.bool_)) for v in values], dtype=bool)] = np.nan
        bad = ~((arr >= -1.0) & (arr <= 1.0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: {name} must be a change of a probability, a number in [-1, 1]; "
                             f"{int(bad.sum())} value(s) are not, e.g. {values[i]!r} at position {i}")
        out.append(arr)
    return out[0], out[1]


def resolve_effects(table: EventTable, effects: Any) -> Effects | None:
    """``effects=`` of :func:`backtest`, the tuner and ``decision_value.tune`` against `table` (None: none).

    * a DataFrame (or mapping of arrays) with ``gain_if_accepted`` and optionally ``loss_if_not_accepted``
      (else 0), one row per event in the input's order: e.g. :func:`pcrules.world.event_effects`;
    * column names of the events, ``(gain, loss)`` or ``gain`` alone (they are not event fields);
    * a function of the events (a DataFrame of the rows it needs, the event columns) returning such a
      frame, a ``(gain, loss)`` pair or the gains: an analyst's assumption, e.g. by page.
    """
    if effects is None:
        return None
    if isinstance(effects, Effects):
        if effects.table is not table:
            raise ValueError("effects: resolved against another events table")
        return effects
    return Effects(table, effects)


def effect_columns(effects: Any) -> tuple[str, ...]:
    """The event columns `effects` names (to keep them out of the event fields)."""
    if isinstance(effects, str):
        return (effects,)
    if isinstance(effects, (tuple, list)) and all(isinstance(c, str) for c in effects):
        return tuple(effects)
    return ()


def uplift_figures(prefix: str, p: np.ndarray | None, gain: np.ndarray | None, loss: np.ndarray | None,
                   hold: np.ndarray, visitor: np.ndarray) -> dict[str, float | None]:
    """The expected-uplift figures of a policy's offers (both arms, time order): ``{prefix}_uplift`` the
    expected extra goals of the real offers (``pcrules.uplift.expected_uplift``), ``{prefix}_uplift_per_offer``
    and ``{prefix}_uplift_itt``: each eligible visitor's first offer or would-be offer valued as if made,
    over the eligible visitors, the intention-to-treat uplift the decision log's estimate measures. All
    None when `p` or the effects are unknown: not available, never 0."""
    from ..stats.uplift import expected_uplift

    keys = (f"{prefix}_uplift", f"{prefix}_uplift_per_offer", f"{prefix}_uplift_itt")
    if p is None or gain is None or loss is None:
        return dict.fromkeys(keys)
    p = np.nan_to_num(np.asarray(p, dtype=float))  # no score counts as no accept, as in expected accepts
    real = ~hold
    total = expected_uplift(p[real], gain[real], loss[real])
    _, first = np.unique(visitor, return_index=True)
    itt = expected_uplift(p[first], gain[first], loss[first])
    return {keys[0]: total.expected_goals, keys[1]: total.per_offer, keys[2]: itt.uplift}


# ============================================================================================ queue status


def _queue_timeline(spec: RuleSpec, status: Any) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
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


def _queue_blocks(spec: RuleSpec, table: EventTable, timeline: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """queue -> per row: -1 open, else the Reason code (closed first, then queue_busy), as ``policy._queue_block``."""
    out = {}
    ts = table.ts
    for name, queue in spec.queues.items():
        code = np.full(table.n, -1, dtype=np.int8)
        if queue.hours is not None:
            weekday, minute = table.columns.clock(queue.hours.tz)
            code[~open_mask(queue.hours, weekday, minute)] = _R[Reason.CLOSED]
        if name in timeline:
            times, agents, wait = timeline[name]
            busy_u = (~np.isnan(agents) & (agents <= 0))
            if queue.max_wait_s is not None:
                busy_u |= ~np.isnan(wait) & (wait > queue.max_wait_s)
            idx = np.searchsorted(times, ts, side="right") - 1
            busy = (idx >= 0) & np.append(busy_u, False)[idx]
            code[(code < 0) & busy] = _R[Reason.QUEUE_BUSY]
        out[name] = code
    return out


def _queue_status_at(timeline: Mapping[str, tuple], t: float) -> dict[str, QueueStatus]:
    out = {}
    for name, (times, agents, wait) in timeline.items():
        i = int(np.searchsorted(times, t, side="right")) - 1
        if i >= 0:
            a, w = agents[i], wait[i]
            out[name] = QueueStatus(None if a != a else int(a), None if w != w else float(w), float(times[i]))
    return out


# ============================================================================================ the judgement


@dataclass
class _Judged:
    """Per row (sorted positions): what was decided."""

    action: np.ndarray  # int8 codes into ACTIONS
    reason: np.ndarray  # int8 codes into REASONS, -1 none
    rule: np.ndarray  # int16 rule index (spec order), -1 none
    recheck: np.ndarray  # float, NaN unless wait
    offer_rows: np.ndarray  # rows of offers and would-be offers, in order
    offer_holdout: np.ndarray  # bool per offer row
    offer_ids: list[str | None]
    metadata: dict[int, dict[str, str]] | None = None
    answers: tuple[np.ndarray, np.ndarray, np.ndarray] = ()  # per offer: answered at, answer code, expires at


def _first(mask: np.ndarray) -> np.ndarray:
    """Index of the first True along axis 0 (rules), -1 where none."""
    out = np.full(mask.shape[1], -1, dtype=np.int16)
    for k in range(mask.shape[0] - 1, -1, -1):
        out[mask[k]] = k
    return out


def _waits(spec: RuleSpec, seconds: np.ndarray, later: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For `rows`: (rule index, delay) of ``min(next_crossing)`` over the rules in `later`; -1 / NaN when none."""
    best = np.full(len(rows), np.inf)
    rule = np.full(len(rows), -1, dtype=np.int64)
    s = seconds[rows]
    for k, r in enumerate(spec.rules):
        if not later[k, rows].any():
            continue
        points = np.array([p for p in _crossings(r) if _time_holds(r.when, p)], dtype=float)
        if not len(points):
            continue
        pos = np.searchsorted(points, s, side="right")  # the first valid point > seconds
        has = later[k, rows] & (pos < len(points))
        delay = np.where(has, points[np.minimum(pos, len(points) - 1)] - s, np.inf)
        better = delay < best  # strict: a tie keeps the stronger rule, as min() keeps the first
        best = np.where(better, delay, best)
        rule = np.where(better, k, rule)
    return rule, np.where(rule >= 0, best, np.nan)


def _round3(values: np.ndarray) -> np.ndarray:
    """Python's round(x, 3) (correctly rounded), for every value."""
    out = np.full(len(values), np.nan)
    ok = ~np.isnan(values)
    if ok.any():
        inverse, uniq = pd.factorize(values[ok])
        out[ok] = np.array([round(float(v), 3) for v in uniq], dtype=float)[inverse]
    return out


class _Context:
    """Everything both engines read, computed as arrays."""

    def __init__(self, spec: RuleSpec, table: EventTable, arrays: MatchArrays, score: np.ndarray,
                 blocks: Mapping[str, np.ndarray]):
        self.spec, self.table, self.arrays, self.score = spec, table, arrays, score
        valid = table.valid
        present = ~np.isnan(score)
        k = len(spec.rules)
        needs = np.array([needs_score(r) for r in spec.rules], dtype=bool).reshape(k, 1)
        self.full = arrays.full & valid
        self.unscored = arrays.unscored & present & valid
        self.later = arrays.later & (present | ~needs) & valid
        self.raw_candidates = arrays.any() & valid  # what reaches decide() with non-empty Matches
        self.matched = self.full.any(axis=0) | self.unscored.any(axis=0) | self.later.any(axis=0)
        queue_names = list(spec.queues)
        self.rule_queue = np.array([queue_names.index(r.queue) for r in spec.rules], dtype=np.int64)
        self.queue_names = queue_names
        # A rule's queue block per row: (rules, rows), -1 open.
        self.qblock = np.stack([blocks[r.queue] for r in spec.rules]) if k else np.zeros((0, table.n), np.int8)


def _stateless(ctx: _Context) -> dict[str, np.ndarray]:
    """``decide`` for every row as if no session or visitor block applied."""
    spec, n = ctx.spec, ctx.table.n
    full, later, unscored = ctx.full, ctx.later, ctx.unscored
    first_full = _first(full)
    offer_rule = _first(full & (ctx.qblock < 0))
    has_full = first_full >= 0
    first_later = _first(later)
    strongest = np.where(has_full, first_full, np.where(first_later >= 0, first_later, _first(unscored)))
    out_rule = np.full(n, -1, dtype=np.int16)
    out_reason = np.full(n, _R[Reason.NO_RULE], dtype=np.int8)
    out_action = np.full(n, _A_NONE, dtype=np.int8)
    recheck = np.full(n, np.nan)
    # A full match: the first rule whose queue can take it offers, else the strongest's queue block.
    fire = ctx.matched & (offer_rule >= 0)
    qblocked = ctx.matched & has_full & (offer_rule < 0)
    out_action[fire] = _A_OFFER
    out_reason[fire] = -1
    out_rule[fire] = offer_rule[fire]
    rows_q = np.flatnonzero(qblocked)
    out_rule[rows_q] = first_full[rows_q]
    out_reason[rows_q] = ctx.qblock[first_full[rows_q], rows_q]
    # No full match: wait for the earliest rule that can fire on this page, else score_below.
    rest = np.flatnonzero(ctx.matched & ~has_full)
    if len(rest):
        w_rule, delay = _waits(spec, ctx.table.seconds, later, rest)
        waiting = w_rule >= 0
        rows_w = rest[waiting]
        out_action[rows_w] = _A_WAIT
        out_reason[rows_w] = -1
        out_rule[rows_w] = w_rule[waiting]
        recheck[rows_w] = _round3(delay[waiting])
        below_rule = _first(unscored[:, rest[~waiting]])
        rows_b = rest[~waiting][below_rule >= 0]
        out_reason[rows_b] = _R[Reason.SCORE_BELOW]
        out_rule[rows_b] = below_rule[below_rule >= 0]
    return {"action": out_action, "reason": out_reason, "rule": out_rule, "recheck": recheck, "fire": fire,
            "strongest": strongest}


class OfferLedger:
    """The session and visitor policy over firing rows taken in time order: the one sequential step.

    Shared by the backtest's fast engine and the tuner, so the two cannot drift: in_chat,
    offer_pending, max_offers and cooldown, with the replay's answer convention (a recorded answer
    counts if it comes before the offer expires; a holdout visitor's would-be offer is never answered).
    """

    __slots__ = ("timeout", "cooldown", "max_offers", "sessions", "declines")

    def __init__(self, policy: Any):
        self.timeout, self.cooldown = policy.offer_timeout_s, policy.decline_cooldown_s
        self.max_offers = policy.max_offers_per_session
        self.sessions: dict[int, tuple[int, float, float, int]] = {}  # made, expires, answered at, answer
        self.declines: dict[int, list[tuple[float, float]]] = {}  # visitor -> (declined at, cooldown until)

    def admit(self, t: float, session: int, visitor: int, code: int, delay: float,
              hold: Any) -> tuple[float, float, int] | None:
        """(expires, answered at, answer code) when a firing row at `t` makes an offer, else None."""
        made = 0
        state = self.sessions.get(session)
        if state is not None:
            made, expires, answered, kind = state
            if kind == _ACCEPT and answered <= t:
                return None  # in_chat
            if t < expires and not (kind != _NO_ANSWER and answered <= t):
                return None  # offer_pending
        if made >= self.max_offers:
            return None
        past = self.declines.get(visitor)
        if past is not None and any(a <= t < until for a, until in past):
            return None  # cooldown
        expires = t + self.timeout
        kind, answered = _NO_ANSWER, math.nan
        if not hold and code != _NO_ANSWER and delay == delay and t + delay < expires:
            kind, answered = code, t + delay
            if kind == _DECLINE:
                self.declines.setdefault(visitor, []).append((answered, answered + self.cooldown))
        self.sessions[session] = (made + 1, expires, answered, kind)
        return expires, answered, kind


def _fast(ctx: _Context, new_offer_id: Callable[[], str], metadata: bool, bar: Any) -> _Judged:
    spec, table = ctx.spec, ctx.table
    policy = spec.policy
    base = _stateless(ctx)
    fire, ts = base["fire"], table.ts
    vcode, _, _ = table.keys()
    fire_rows = np.flatnonzero(fire)
    epoch = table.epochs(fire_rows, policy.session_idle_ttl_s) if len(fire_rows) else np.full(table.n, -1, np.int64)
    answer_code, delay = table.answers()
    visitor_ids = table.columns.view("visitor_id", STRING).uniques

    # -- the one sequential step: rows where an offer would be made if the session allowed it -------------
    holdout_share = policy.holdout
    held = table.holdout_cache(holdout_share)
    ledger = OfferLedger(policy)
    o_row: list[int] = []
    o_hold: list[bool] = []
    o_key: list[int] = []
    o_vis: list[int] = []
    o_exp: list[float] = []
    o_ans: list[float] = []
    o_kind: list[int] = []
    for j, t, s, v, code, d in zip(fire_rows.tolist(), ts[fire_rows].tolist(), epoch[fire_rows].tolist(),
                                   vcode[fire_rows].tolist(), answer_code[fire_rows].tolist(),
                                   delay[fire_rows].tolist()):
        hold = held[v]
        if hold < 0:
            hold = held[v] = in_holdout(visitor_ids[v], holdout_share)
        admitted = ledger.admit(t, s, v, code, d, hold)
        if admitted is None:
            continue
        expires, answered, kind = admitted
        o_row.append(j)
        o_hold.append(hold)
        o_key.append(s)
        o_vis.append(v)
        o_exp.append(expires)
        o_ans.append(answered)
        o_kind.append(kind)
    if bar is not None:
        bar.update()

    # -- the session and visitor blocks of every other matched row, from the offers made ---------------------
    n = table.n
    blocked = np.full(n, -1, dtype=np.int8)
    o_row_a = np.array(o_row, dtype=np.int64)
    if len(o_row_a):
        o_key_a = np.array(o_key, dtype=np.int64)
        o_exp_a, o_ans_a, o_kind_a = np.array(o_exp), np.array(o_ans), np.array(o_kind, dtype=np.int8)
        has_offer = np.zeros(int(max(o_key_a.max(), epoch.max())) + 2, dtype=bool)
        has_offer[o_key_a] = True
        rows = np.flatnonzero(ctx.matched & (epoch >= 0))
        rows = rows[has_offer[epoch[rows]]]
        perm = np.lexsort((o_row_a, o_key_a))
        sorted_keys = o_key_a[perm] * (n + 1) + o_row_a[perm]
        rkey = epoch[rows]
        pos = np.searchsorted(sorted_keys, rkey * (n + 1) + rows, side="left")
        count = pos - np.searchsorted(sorted_keys, rkey * (n + 1), side="left")
        last = perm[np.maximum(pos - 1, 0)]
        t = ts[rows]
        some = count > 0
        answered = o_ans_a[last]
        kind = o_kind_a[last]
        with np.errstate(invalid="ignore"):
            arrived = some & (kind != _NO_ANSWER) & (answered <= t)
        in_chat = arrived & (kind == _ACCEPT)
        pending = some & (t < o_exp_a[last]) & ~arrived
        too_many = count >= ledger.max_offers
        reason = np.where(in_chat, _R[Reason.IN_CHAT], np.where(pending, _R[Reason.OFFER_PENDING],
                          np.where(too_many, _R[Reason.MAX_OFFERS], -1))).astype(np.int8)
        blocked[rows] = reason
    if ledger.max_offers <= 0:
        blocked[ctx.matched & (blocked < 0)] = _R[Reason.MAX_OFFERS]
    if ledger.declines:
        _cooldown_blocks(ctx, ledger.declines, ledger.cooldown, blocked)

    # -- consistency of the two views, then assembly ---------------------------------------------------------
    offered = np.zeros(n, dtype=bool)
    offered[o_row_a] = True
    if (blocked[o_row_a] >= 0).any() or ((blocked[fire_rows] < 0) != offered[fire_rows]).any():
        raise AssertionError("backtest: the sequential and the vectorised session views disagree")
    action, reason, rule = base["action"], base["reason"], base["rule"]
    stop = ctx.matched & (blocked >= 0)
    action[stop] = _A_NONE
    reason[stop] = blocked[stop]
    rule[stop] = base["strongest"][stop]
    recheck = base["recheck"]
    recheck[stop] = np.nan
    o_hold_a = np.array(o_hold, dtype=bool)
    hold_rows = o_row_a[o_hold_a]
    action[hold_rows] = _A_NONE
    reason[hold_rows] = _R[Reason.HOLDOUT]
    offer_ids = [None if h else new_offer_id() for h in o_hold]
    judged = _Judged(action, reason, rule.astype(np.int16), recheck, o_row_a, o_hold_a, offer_ids,
                     answers=(np.array(o_ans, dtype=float), np.array(o_kind, dtype=np.int8),
                              np.array(o_exp, dtype=float)))
    if metadata:
        judged.metadata = {j: render_metadata(spec.rules[int(rule[j])], event.fields)
                           for j, event in zip(o_row, table.events(o_row), strict=True)}
    return judged


def _cooldown_blocks(ctx: _Context, declines: Mapping[int, list[tuple[float, float]]], cooldown: float,
                     blocked: np.ndarray) -> None:
    """Mark `cooldown` on matched, otherwise unblocked rows of visitors within a cooldown from a delivered decline."""
    vcode, _, _ = ctx.table.keys()
    ts = ctx.table.ts
    visitors = np.fromiter(declines, dtype=np.int64)
    flagged = np.zeros(int(max(visitors.max(), vcode.max(initial=0))) + 2, dtype=bool)
    flagged[visitors] = True
    rows = np.flatnonzero(ctx.matched & (blocked < 0) & flagged[vcode])
    if not len(rows):
        return
    d_v = np.array([v for v, p in declines.items() for _ in p], dtype=np.int64)
    d_a = np.array([a for p in declines.values() for a, _ in p], dtype=float)
    d_u = np.array([u for p in declines.values() for _, u in p], dtype=float)
    blocked[rows_in_cooldown(rows, vcode, ts, d_v, d_a, d_u)] = _R[Reason.COOLDOWN]


def rows_in_cooldown(rows: np.ndarray, visitor: np.ndarray, ts: np.ndarray, decline_visitor: np.ndarray,
                     decline_at: np.ndarray, decline_until: np.ndarray) -> np.ndarray:
    """Those of `rows` (indices into `visitor` / `ts`) that fall in a cooldown: the latest decline of the same
    visitor at or before the row (a decline at the same moment is delivered first) ends after it.

    Declines and rows are merged in (visitor, time) order; the latest decline before a row has the largest end,
    since every decline adds the same cooldown. Shared by the backtest and the tuner.
    """
    v_all = np.concatenate([decline_visitor, visitor[rows]])
    t_all = np.concatenate([decline_at, ts[rows]])
    kind = np.concatenate([np.zeros(len(decline_visitor), dtype=np.int8), np.ones(len(rows), dtype=np.int8)])
    order = np.lexsort((kind, t_all, v_all))
    is_decline = kind[order] == 0
    position = np.where(is_decline, np.arange(len(order)), -1)
    last = np.maximum.accumulate(position)
    row_slots = np.flatnonzero(~is_decline)
    last_decline = last[row_slots]
    source = order[np.maximum(last_decline, 0)]
    same = (last_decline >= 0) & (v_all[source] == v_all[order[row_slots]])
    until = np.where(same, decline_until[np.minimum(source, len(decline_until) - 1)], -np.inf)
    row_ids = rows[order[row_slots] - len(decline_visitor)]
    return row_ids[ts[row_ids] < until]


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


def _reference(ctx: _Context, new_offer_id: Callable[[], str], timeline: Mapping[str, tuple], metadata: bool,
               bar: Any) -> _Judged:
    """The runtime's pure core, ``decide`` and ``answer``, on every candidate row in time order."""
    spec, table = ctx.spec, ctx.table
    policy = spec.policy
    rows = np.flatnonzero(ctx.raw_candidates)
    n = table.n
    action = np.full(n, _A_NONE, dtype=np.int8)
    reason = np.full(n, _R[Reason.NO_RULE], dtype=np.int8)
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
    bits = np.concatenate([ctx.arrays.full, ctx.arrays.unscored, ctx.arrays.later])[:, rows]
    packed = np.ascontiguousarray(np.packbits(bits, axis=0).T)
    _, first_row, inverse = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(),
                                             return_index=True, return_inverse=True)
    matches = [ctx.arrays.matches(int(rows[i])) for i in first_row]
    sessions: dict[int, SessionState] = {}
    visitors: dict[int, VisitorState] = {}
    heap: list[tuple[float, int, int, int, OfferStatus, str]] = []
    o_row, o_hold, o_ids, o_ans, o_kind, o_exp = [], [], [], [], [], []
    meta: dict[int, dict[str, str]] = {}
    # decide() renders an offer's metadata from the event's fields: fetch those of the rows where an offer is
    # possible at all in one batch (a hint only: any other row is fetched on its own).
    maybe = np.flatnonzero((ctx.full & (ctx.qblock < 0)).any(axis=0)) if len(spec.rules) else np.zeros(0, np.int64)
    known = {int(j): e.fields for j, e in zip(maybe.tolist(), table.events(maybe), strict=True)}
    score = ctx.score
    ts, seconds = table.ts, table.seconds
    fresh_session, fresh_visitor = SessionState(), VisitorState()
    for m, j in enumerate(rows.tolist()):
        t = float(ts[j])
        while heap and heap[0][0] <= t:  # answers delivered before this event, in time order
            at, _, key, v, status, offer_id = heapq.heappop(heap)
            state = sessions.get(key)
            if state is not None and state.pending is not None and state.pending.offer_id == offer_id:
                sessions[key], visitors[v] = answer(spec, state, visitors.get(v, fresh_visitor), status, at)
        key, v = int(epoch[j]), int(vcode[j])
        event = Event(vis_ids.uniques[vis_ids.codes[j]], ses_ids.uniques[ses_ids.codes[j]],
                      page_ids.uniques[page_ids.codes[j]], float(seconds[j]), t, _LazyFields(table, j, known))
        s = score[j]
        step = decide(spec, event, sessions.get(key, fresh_session), visitors.get(v, fresh_visitor),
                      matches[inverse[m]], _queue_status_at(timeline, t) if timeline else {},
                      None if s != s else float(s), new_offer_id)
        sessions[key] = step.session
        d = step.decision
        action[j] = ACTIONS.index(d.action.value)
        reason[j] = -1 if d.reason is None else _R[d.reason]
        rule[j] = -1 if d.rule is None else rule_index[d.rule]
        if d.recheck_after is not None:
            recheck[j] = d.recheck_after
        if d.expires_at is not None:  # an offer, or a holdout visitor's would-be offer
            kind, at = _NO_ANSWER, math.nan
            c, dl = int(answer_code[j]), float(delay[j])
            if d.offer_id is not None and c != _NO_ANSWER and dl == dl and t + dl < d.expires_at:
                kind, at = c, t + dl
                status = OfferStatus.ACCEPTED if c == _ACCEPT else OfferStatus.DECLINED
                heapq.heappush(heap, (at, j, key, v, status, d.offer_id))
            o_row.append(j)
            o_hold.append(d.offer_id is None)
            o_ids.append(d.offer_id)
            o_ans.append(at)
            o_kind.append(kind)
            o_exp.append(d.expires_at)
            if metadata:
                meta[j] = dict(d.metadata)
        if bar is not None and m % 4096 == 0:
            bar.set_postfix_str(f"{m:,}/{len(rows):,} candidate rows", refresh=False)
    if bar is not None:
        bar.update()
    judged = _Judged(action, reason, rule, recheck, np.array(o_row, dtype=np.int64), np.array(o_hold, dtype=bool),
                     o_ids, meta if metadata else None,
                     answers=(np.array(o_ans, dtype=float), np.array(o_kind, dtype=np.int8),
                              np.array(o_exp, dtype=float)))
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
                    why = ("no effects given (effects=...)" if m.get("effects") is None else
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
            why = ("the backtest was run without effects (pass effects=...)" if "gain_if_accepted" not in
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


def _distinct(codes: np.ndarray) -> int:
    codes = codes[codes >= 0]
    return int((np.bincount(codes) > 0).sum()) if len(codes) else 0


def _metrics(spec: RuleSpec, table: EventTable, judged: _Judged, score: np.ndarray, truth: np.ndarray | None,
             offer_score: np.ndarray | None, effects: Effects | None = None,
             ) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    valid = table.valid
    vcode, skey, _ = table.keys()
    n_sessions = _distinct(skey[valid])
    n_visitors = _distinct(vcode[valid])
    rows, hold = judged.offer_rows, judged.offer_holdout
    real = rows[~hold]
    answered, kind, expires = judged.answers
    real_kind = kind[~hold]
    # Expected accepts: the model's P(accept) of every offer, also where the rules did not need a score.
    offer_p = score[rows] if offer_score is None else np.asarray(offer_score, dtype=float)
    real_p = offer_p[~hold]
    has_score = offer_score is not None or bool((~np.isnan(real_p)).any())
    expected = float(np.nansum(real_p)) if has_score else None
    metrics: dict[str, Any] = {
        "events": int(table.n), "valid_events": int(valid.sum()), "refused": int((~valid).sum()),
        "sessions": n_sessions, "visitors": n_visitors,
        "offers": int(len(real)), "offer_rate_per_session": len(real) / max(n_sessions, 1),
        "sessions_with_offer": _distinct(skey[real]),
        "holdout": int(hold.sum()), "holdout_visitors": _distinct(vcode[rows[hold]]),
        "expected_accepts": expected,
        "expected_accept_rate": None if expected is None else expected / max(len(real), 1),
        "accepted": int((real_kind == _ACCEPT).sum()), "declined": int((real_kind == _DECLINE).sum()),
        "expired": int((real_kind == _NO_ANSWER).sum()),
    }
    metrics["recorded_accept_rate"] = metrics["accepted"] / max(metrics["offers"], 1)
    if truth is not None:
        te = float(np.nansum(truth[real]))
        metrics["true_expected_accepts"] = te
        metrics["true_expected_accept_rate"] = te / max(len(real), 1)
    metrics["actions"] = {a: int((judged.action == i).sum()) for i, a in enumerate(ACTIONS)}
    metrics["reasons"] = {r: int((judged.reason == i).sum()) for i, r in enumerate(REASONS)}

    # Expected uplift: extra goals from the offers' effects, with the model's and the true P(accept).
    gain, loss = effects.at(rows) if effects is not None else (None, None)
    effect_model = offer_p if expected is not None else None
    effect_truth = truth[rows] if truth is not None else None
    metrics["eligible_visitors"] = _distinct(vcode[rows])
    metrics.update(uplift_figures("expected", effect_model, gain, loss, hold, vcode[rows]))
    metrics.update(uplift_figures("true_expected", effect_truth, gain, loss, hold, vcode[rows]))
    metrics["effects"] = None if effects is None else effects.description

    # By rule: offers, would-be offers, expected and recorded answers, and the blocks that kept each rule back.
    names = [r.name for r in spec.rules]
    rule_of = judged.rule[real].astype(np.int64)
    per_rule = pd.DataFrame(index=pd.Index(names, name="rule"))
    per_rule["offers"] = np.bincount(rule_of, minlength=len(names))
    per_rule["holdout"] = np.bincount(judged.rule[rows[hold]].astype(np.int64), minlength=len(names))
    if expected is not None:
        per_rule["expected_accepts"] = np.bincount(rule_of, weights=np.nan_to_num(real_p), minlength=len(names))
    if truth is not None:
        per_rule["true_expected"] = np.bincount(rule_of, weights=np.nan_to_num(truth[real]), minlength=len(names))
    effect = {}
    if gain is not None:
        for column, p in (("expected_uplift", effect_model), ("true_expected_uplift", effect_truth)):
            if p is not None:
                effect[column] = goal_effect(np.nan_to_num(p), gain, loss)
                per_rule[column] = np.bincount(rule_of, weights=effect[column][~hold], minlength=len(names))
    for label, code in (("accepted", _ACCEPT), ("declined", _DECLINE), ("expired", _NO_ANSWER)):
        per_rule[label] = np.bincount(rule_of[real_kind == code], minlength=len(names))
    blocked = (judged.action == _A_NONE) & (judged.reason >= 0) & (judged.rule >= 0)
    for r in (Reason.OFFER_PENDING, Reason.MAX_OFFERS, Reason.COOLDOWN, Reason.IN_CHAT, Reason.CLOSED,
              Reason.QUEUE_BUSY, Reason.SCORE_BELOW):
        pick = blocked & (judged.reason == _R[r])
        per_rule[r.value] = np.bincount(judged.rule[pick].astype(np.int64), minlength=len(names))

    # Per queue and hour of the day in time (UTC hour buckets): offers and expected chats against capacity.
    queue_names = list(spec.queues)
    rule_queue = np.array([queue_names.index(r.queue) for r in spec.rules], dtype=np.int64)
    ts = table.ts
    if valid.any():
        first_hour = int(np.floor(np.nanmin(ts[valid]) / 3600.0))
        last_hour = int(np.floor(np.nanmax(ts[valid]) / 3600.0))
    else:
        first_hour = last_hour = 0
    hours = np.arange(first_hour, last_hour + 1)
    q_of = rule_queue[rule_of] if len(real) else np.zeros(0, dtype=np.int64)
    h_of = np.floor(ts[real] / 3600.0).astype(np.int64) - first_hour
    size = len(hours)
    frames, load_rows = [], []
    for qi, name in enumerate(queue_names):
        pick = q_of == qi
        offers_h = np.bincount(h_of[pick], minlength=size)[:size]
        chats_h = (np.bincount(h_of[pick], weights=np.nan_to_num(real_p[pick]), minlength=size)[:size]
                   if expected is not None else np.full(size, np.nan))
        acc_h = np.bincount(h_of[pick & (real_kind == _ACCEPT)], minlength=size)[:size]
        queue = spec.queues[name]
        if queue.hours is not None:
            from ..matching.vector import local_clock_arrays

            wd, minute = local_clock_arrays(hours * 3600.0 + 1800.0, queue.hours.tz)
            open_h = open_mask(queue.hours, wd, minute)
        else:
            open_h = np.ones(size, dtype=bool)
        frames.append(pd.DataFrame({"queue": name, "hour": pd.to_datetime(hours * 3600, unit="s", utc=True),
                                    "open": open_h, "offers": offers_h, "expected_chats": chats_h,
                                    "accepted": acc_h}))
        cap = queue.capacity_per_hour
        chats_basis = chats_h if expected is not None else acc_h.astype(float)
        sel = open_h if open_h.any() else np.ones(size, dtype=bool)
        load_rows.append({
            "queue": name, "capacity_per_hour": cap,
            "offers_per_hour": float(offers_h[sel].mean()) if size else 0.0,
            "peak_offers_per_hour": int(offers_h.max()) if size else 0,
            "expected_chats_per_hour": float(chats_h[sel].mean()) if expected is not None and size else None,
            "peak_expected_chats": float(chats_h.max()) if expected is not None and size else None,
            "accepted_per_hour": float(acc_h[sel].mean()) if size else 0.0,
            "hours_over_capacity": int((chats_basis > cap).sum()) if cap is not None else None,
            "utilisation": (float(chats_basis[sel].mean()) / cap) if cap and size else None,
        })
    queue_hours = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    queue_load = pd.DataFrame(load_rows).set_index("queue") if load_rows else pd.DataFrame()
    metrics["queues"] = {name: dict(row) for name, row in queue_load.iterrows()} if len(queue_load) else {}
    offers = pd.DataFrame({
        "ts": ts[rows],
        **{col: table.frame[col].iloc[rows].to_numpy()
           for col in ("visitor_id", "session_id", "page", "seconds_on_page")},
        "rule": _categorical(judged.rule[rows], names),
        "queue": _categorical(rule_queue[judged.rule[rows].astype(np.int64)], queue_names),
        "score": offer_p,
        "offer_id": np.array(judged.offer_ids, dtype=object),
        "holdout": hold,
        "outcome": _categorical(np.where(hold, -1, np.where(kind == _ACCEPT, 0, np.where(kind == _DECLINE, 1, 2))),
                                OUTCOMES),
        "answered_at": np.where(hold, np.nan, np.where(kind == _NO_ANSWER, expires, answered)),
        "expires_at": expires,
    })
    if truth is not None:
        offers["truth"] = truth[rows]
    if gain is not None:
        offers["gain_if_accepted"], offers["loss_if_not_accepted"] = gain, loss
        for column, label in (("expected_uplift", "expected_effect"), ("true_expected_uplift", "true_effect")):
            if column in effect:
                offers[label] = effect[column]
    return metrics, per_rule, queue_hours, queue_load, offers


def _bar(progress: bool, total: int, desc: str, unit: str) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=0.3, leave=False)


def backtest(spec: RuleSpec | str | Mapping[str, Any], events: pd.DataFrame | EventTable | Sequence[Mapping],
             scorer: Any = None, *, queue_status: Any = None, engine: str = "fast", scores: str = "candidates",
             truth: str | np.ndarray | pd.Series | None = None, effects: Any = None, metadata: bool = False,
             new_offer_id: Callable[[], str] | None = None, offer_id_prefix: str = "o",
             progress: bool = False) -> BacktestResult:
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
    """
    started = time.perf_counter()
    if engine not in ("fast", "policy"):
        raise ValueError(f"engine must be 'fast' or 'policy', got {engine!r}")
    if scores not in ("candidates", "all"):
        raise ValueError(f"scores must be 'candidates' or 'all', got {scores!r}")
    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    truth_exclude = ((truth,) if isinstance(truth, str) else ()) + effect_columns(effects)
    table = events if isinstance(events, EventTable) else EventTable(events, exclude=truth_exclude)
    resolved = resolve_effects(table, effects)
    bar = _bar(progress, 5, f"backtest {spec.name}", "step")

    def step(label: str) -> None:
        if bar is not None:
            bar.set_postfix_str(label, refresh=False)
            bar.update()

    valid = table.valid
    step("checked")
    timeline = _queue_timeline(spec, queue_status)
    matcher = VectorMatcher(spec)
    score = np.full(table.n, np.nan)
    if scorer is not None and spec.uses_score:
        want = valid if scores == "all" else valid & matcher.needs_score(table.columns)
        score = _scores_for(table, spec, scorer, np.flatnonzero(want), progress).copy()
        score[~want] = np.nan
    step("scored")
    arrays = matcher.match(table.columns, score)
    blocks = _queue_blocks(spec, table, timeline)
    ctx = _Context(spec, table, arrays, score, blocks)
    step("matched")
    if new_offer_id is None:
        counter = itertools.count(1)
        new_offer_id = lambda: f"{offer_id_prefix}{next(counter)}"  # noqa: E731
    if engine == "fast":
        judged = _fast(ctx, new_offer_id, metadata, bar)
    else:
        judged = _reference(ctx, new_offer_id, timeline, metadata, bar)
    judged.action[~valid] = _A_REFUSED
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
        offer_score = _scores_for(table, spec, scorer, judged.offer_rows, False)[judged.offer_rows]
    metrics, per_rule, queue_hours, queue_load, offers = _metrics(spec, table, judged, score, truth_values,
                                                                  offer_score, resolved)
    step("figures")
    decisions = _decisions(spec, table, judged, score)
    refusals = {table.index[table.order[i] if table.order is not None else i]: why
                for i, why in table.refusals.items()}
    if table.order is not None:
        offers.index = table.index[table.order[judged.offer_rows]]
    else:
        offers.index = table.index[judged.offer_rows]
    if bar is not None:
        bar.close()
    return BacktestResult(spec, decisions, offers, metrics, per_rule, queue_hours, queue_load, refusals,
                          time.perf_counter() - started, engine, table, judged.offer_rows)


def _decisions(spec: RuleSpec, table: EventTable, judged: _Judged, score: np.ndarray) -> pd.DataFrame:
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
    answered, kind, expires = judged.answers
    expires_at = np.full(n, np.nan)
    expires_at[rows] = expires
    outcome = np.full(n, -1, dtype=np.int64)
    real = rows[~judged.offer_holdout]
    real_kind = kind[~judged.offer_holdout]
    outcome[real] = np.where(real_kind == _ACCEPT, 0, np.where(real_kind == _DECLINE, 1, 2))
    answered_at = np.full(n, np.nan)
    answered_at[real] = np.where(real_kind == _NO_ANSWER, expires[~judged.offer_holdout],
                                 answered[~judged.offer_holdout])
    columns = {
        "action": _categorical(judged.action, ACTIONS),
        "reason": _categorical(judged.reason, REASONS),
        "rule": _categorical(rule, names),
        "queue": _categorical(rule_queue[rule], queue_names),
        "score": score,
        "offer_id": pd.Series(offer_id, dtype=object, copy=False),
        "holdout": holdout,
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
