"""Batch scoring: the model's P(accept) for many rows of an :class:`EventTable`, as the runtime's scorer gives it.

A ``CompiledScorer`` or ``LinearScorer`` is evaluated as arrays (the same terms, added in the same order, as
its one-event path); an ``AcceptanceModel`` through its scikit-learn Pipeline; any other ``Scorer`` one event
at a time through :func:`score_one`, the runtime's guarded call. :func:`scores_for` keeps the scores per table
and scorer, and recomputes the runtime's way every score within ``SCORE_EPS`` of a threshold of the spec, so
a last-bit difference cannot flip a rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..core.spec import BOOL, NUMBER, STRING, RuleSpec
from .table import EventTable, plain

__all__ = ["batch_scores", "score_one", "scores_for", "score_thresholds", "SCORE_EPS", "progress_bar"]

SCORE_EPS = 1e-9  # a batch score this close to a score threshold is recomputed the runtime's way


def _category_keys(table: EventTable, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, keys): ``features.category_key`` of every row's value (code -1: the missing key)."""
    key = ("category_keys", name)
    cached = table.cache.get(key)
    if cached is None:
        cached = table.cache[key] = _category_keys_uncached(table, name)
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
    if dtype == np.dtype(object):  # mixed values: factorize would merge 1 and True; key every value first
        keys = np.array([category_key(plain(v)) for v in series.to_numpy(dtype=object)], dtype=object)
        codes, uniques = pd.factorize(keys)
    else:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        uniques = np.array([category_key(plain(u)) for u in np.asarray(uniques, dtype=object)], dtype=object)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object)


def _compiled_logits(scorer: Any, table: EventTable, rows: np.ndarray) -> np.ndarray:
    """``CompiledScorer.decision_function_one`` for many rows: the same terms, added in the same order."""
    from ..scoring.features import MISSING

    m = len(rows)
    z = np.full(m, scorer.intercept)
    for name, weights in scorer.categorical_terms:
        codes, keys = _category_keys(table, name)
        lut = np.array([weights.get(k, 0.0) for k in keys] + [weights.get(MISSING, 0.0)], dtype=float)
        z = z + lut[codes[rows]]
    for name, code, lower, upper, first, hinges, missing, offset, weights in scorer.numeric_terms:
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
            lut = np.array([_lookup(weights, plain(u)) for u in np.asarray(uniques, dtype=object)] + [0.0])
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
        bar = progress_bar(progress, len(rows), "score", "ev")
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



def score_thresholds(spec: RuleSpec, rules: Iterable[str] | None = None) -> np.ndarray:
    """The distinct values the score is compared with in `spec` (only in the rules named, if given), sorted."""
    names = None if rules is None else set(rules)
    values: list[float] = []
    for rule in spec.rules:
        if names is not None and rule.name not in names:
            continue
        for cond in rule.conditions():
            if cond.field == "score" and cond.op != "exists":
                values.extend(cond.value if isinstance(cond.value, tuple) else (cond.value,))
    return np.array(sorted(set(float(v) for v in values)), dtype=float)


def scores_for(table: EventTable, spec: RuleSpec, scorer: Any, rows: np.ndarray, progress: bool) -> np.ndarray:
    """Scores of all rows (NaN where none), computing only `rows` not computed before for this scorer."""
    key = ("scores", id(scorer))
    entry = table.cache.get(key)
    if entry is None or entry[0] is not scorer:
        entry = (scorer, np.full(table.n, np.nan), np.zeros(table.n, dtype=bool))
        table.cache[key] = entry
    _, scores, done = entry
    todo = rows[~done[rows]]
    if len(todo):
        scores[todo] = batch_scores(scorer, table, todo, progress=progress)
        done[todo] = True
    # Near a threshold a last-bit difference (numpy's exp vs math.exp) could flip a rule: use the runtime's own path.
    thresholds = score_thresholds(spec)
    if len(thresholds) and not isinstance(scorer, (np.ndarray, pd.Series, list)) and \
            hasattr(scorer, "predict_proba_one") and len(rows):
        s = scores[rows]
        near = np.zeros(len(rows), dtype=bool)
        for t in thresholds.tolist():
            near |= np.abs(s - t) <= SCORE_EPS
        picked = rows[near]
        for i, event in zip(picked.tolist(), table.events(picked), strict=True):
            scores[i] = score_one(scorer, event.fields)
    return scores


def progress_bar(progress: bool, total: int, desc: str, unit: str) -> Any:
    """A tqdm progress bar when `progress`, else None."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=0.3, leave=False)
