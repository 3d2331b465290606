"""Off-policy evaluation of *when* to offer: a candidate ruleset's expected reward estimated from the log.

A model learned from past offers extrapolates outside the waits those offers used, and a tuner that trusts it
recommends what the truth rates worse (issue 16). The log itself, with the probability that the logging policy
made each choice (its *propensity*), answers the question without the model: that is what this module computes.

The unit is a session stretch; its action is the observation row of its first offer, or ``-1`` for none. For a
deterministic candidate, the log says what reward the candidate would have got only where it would have chosen
what the log chose (``match``), and each such unit stands for ``1 / propensity`` units like it:

* IPS   = mean(match / p * r)                            unbiased under overlap; variance grows with 1/p
* SNIPS = sum(match / p * r) / sum(match / p)            a little biased, much steadier (weights sum to n)
* DR    = mean(q_cand + match / p * (r - q_logged))      unbiased if either the propensities or the model are right
* DM    = mean(q_cand)                                   the model alone: what the tuner used to trust

Intervals are percentile bootstraps over visitors (a visitor's sessions are not independent: holdout, cooldowns
and the visitor's own taste are shared). Every estimator of one report and of every report evaluated on the same
log with the same seed uses the *same* resamples, so :func:`difference` gives an honest interval of the gain of
one candidate over another. The estimator, its assumptions and their cost: ``docs/off-policy.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["NO_OFFER", "Interval", "Estimate", "OffPolicyReport", "Difference", "evaluate", "difference", "unit_sums",
           "report_from_sums"]

NO_OFFER = -1  # the choice "no offer in this stretch"
MIN_ESS = 100.0  # below this effective sample size a warning says the estimate rests on few units
_BLOCK_CELLS = 2_000_000  # resample counts held at once (clusters x resamples): bounds memory to ~40 MB


@dataclass(frozen=True)
class Interval:
    """A two-sided interval at ``level`` (0.95: 95 %)."""

    low: float
    high: float
    level: float

    @property
    def width(self) -> float:
        return self.high - self.low

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


@dataclass(frozen=True)
class Estimate:
    """One estimator's answer: ``value`` is the expected total over ``total_units`` (mean x units), ``mean`` per
    unit; ``interval`` and ``mean_interval`` their bootstrap intervals. ``replicates`` (the per-unit mean on each
    resample) is kept so that differences between candidates can be taken on the same resamples."""

    name: str
    value: float
    mean: float
    interval: Interval
    mean_interval: Interval
    replicates: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class OffPolicyReport:
    """Every estimator for one candidate, and the diagnostics that say whether to believe them.

    ``effective_sample_size`` is (sum w)^2 / sum w^2 over the importance weights w = match / p: how many units
    the weighted estimate is worth. ``unsupported_share``: units where the candidate's choice has logging
    probability 0 (no estimator but the model can see them); ``unsupported_offer_share``: the same among the
    candidate's offers."""

    estimates: Mapping[str, Estimate]
    n_units: int
    total_units: float
    n_clusters: int
    n_matched: int
    n_candidate_offers: int
    effective_sample_size: float
    unsupported_share: float
    unsupported_offer_share: float
    max_weight: float
    level: float
    n_boot: int
    warnings: tuple[str, ...]
    resampling: str = field(repr=False)  # fingerprint of (log, clusters, seed, n_boot): equal = same resamples

    @property
    def supported(self) -> bool:
        """Every choice of the candidate was possible under the logging policy (IPS/SNIPS see all of it)."""
        return self.unsupported_share == 0.0

    def __getitem__(self, name: str) -> Estimate:
        return self.estimates[name]

    def to_frame(self) -> pd.DataFrame:
        return _frame(self.estimates)

    def summary(self) -> str:
        pct = f"{self.level:.0%}"
        lines = [f"{name:>5}: {e.value:,.1f} [{e.interval.low:,.1f}, {e.interval.high:,.1f}] ({pct}) over "
                 f"{self.total_units:,.0f} units; {e.mean:.4f} per unit" for name, e in self.estimates.items()]
        lines.append(f"matched {self.n_matched:,} of {self.n_units:,} units ({self.n_clusters:,} visitors); "
                     f"ESS {self.effective_sample_size:,.0f}; max weight {self.max_weight:,.1f}; unsupported "
                     f"{self.unsupported_share:.1%} of units, {self.unsupported_offer_share:.1%} of "
                     f"{self.n_candidate_offers:,} offers")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


@dataclass(frozen=True)
class Difference:
    """Estimates of ``a - b`` per estimator, each interval taken on the paired resamples."""

    estimates: Mapping[str, Estimate]
    level: float

    def __getitem__(self, name: str) -> Estimate:
        return self.estimates[name]

    def better(self, name: str = "dr") -> bool:
        """``a`` beats ``b`` within the interval: the whole interval of the difference is above 0."""
        return self.estimates[name].interval.low > 0

    def to_frame(self) -> pd.DataFrame:
        return _frame(self.estimates)


def _frame(estimates: Mapping[str, Estimate]) -> pd.DataFrame:
    rows = {name: {"value": e.value, "low": e.interval.low, "high": e.interval.high, "mean": e.mean,
                   "mean_low": e.mean_interval.low, "mean_high": e.mean_interval.high}
            for name, e in estimates.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("estimator")


# ============================================================================================ inputs


def _array(name: str, values: Any, n: int | None, *, integer: bool = False) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr):,} values where logged_choice has {n:,}")
    if integer:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer row ids ({NO_OFFER} = no offer), got dtype {arr.dtype}")
        if len(arr) and arr.min() < NO_OFFER:
            raise ValueError(f"{name} holds {int(arr.min())}: row ids are >= 0, {NO_OFFER} is no offer")
        return arr.astype(np.int64, copy=False)
    try:
        arr = arr.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum()):,} NaN or infinite values (first at index "
                         f"{int(np.argmax(bad))})")
    return arr


def _check_range(name: str, arr: np.ndarray, low: float, high: float, low_open: bool, why: str) -> None:
    bad = ((arr <= low) if low_open else (arr < low)) | (arr > high)
    if bad.any():
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {bracket}{low:g}, {high:g}]{why}: {int(bad.sum()):,} values do not "
                         f"(first {arr[np.argmax(bad)]!r} at index {int(np.argmax(bad))})")


def _check_equal(name: str, arr: np.ndarray, other: str, ref: np.ndarray, where: np.ndarray) -> None:
    bad = where & ~np.isclose(arr, ref, rtol=1e-6, atol=1e-9)
    if bad.any():
        raise ValueError(f"{name} differs from {other} on {int(bad.sum()):,} units where candidate_choice == "
                         f"logged_choice (first at index {int(np.argmax(bad))}): both describe the same choice")


# ============================================================================================ estimators


def _resample_sums(per_cluster: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Column sums of ``per_cluster`` (clusters x columns) on ``n_boot`` resamples of the clusters with
    replacement: (n_boot x columns). Counts are drawn in blocks so memory stays bounded whatever the size."""
    n_clusters = per_cluster.shape[0]
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // n_clusters)
    out = np.empty((n_boot, per_cluster.shape[1]))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        # int32 is enough (a block holds at most _BLOCK_CELLS cells) and draws several times faster than int64
        draws = rng.integers(0, n_clusters, size=(b, n_clusters), dtype=np.int32)
        draws += np.arange(b, dtype=np.int32)[:, None] * n_clusters  # row offsets: one bincount counts all rows
        counts = np.bincount(draws.ravel(), minlength=b * n_clusters).reshape(b, n_clusters)
        out[start:start + b] = counts @ per_cluster
    return out


def _interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    if np.isnan(replicates).all():
        return float("nan"), float("nan")
    low, high = np.nanpercentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def _estimate(name: str, mean: float, replicates: np.ndarray, level: float, total: float) -> Estimate:
    low, high = _interval(replicates, level)
    return Estimate(name, mean * total, mean, Interval(low * total, high * total, level), Interval(low, high, level),
                    replicates)


def evaluate(logged_choice: Sequence[int] | np.ndarray, logged_propensity: Sequence[float] | np.ndarray,
             reward: Sequence[float] | np.ndarray, candidate_choice: Sequence[int] | np.ndarray,
             candidate_propensity: Sequence[float] | np.ndarray, *,
             q_logged: Sequence[float] | np.ndarray | None = None,
             q_candidate: Sequence[float] | np.ndarray | None = None,
             cluster: Sequence[Hashable] | np.ndarray | pd.Series | None = None, n_boot: int = 500,
             level: float = 0.95, seed: int = 0, total_units: float | None = None) -> OffPolicyReport:
    """The expected reward of a deterministic candidate over the logged units, by IPS, SNIPS and (with a model's
    ``q_candidate``) DR and DM, with bootstrap intervals over ``cluster`` (visitor ids; each unit its own cluster
    when None) and support diagnostics.

    One unit per array position: ``logged_choice`` (row id of the logged first offer, -1 none),
    ``logged_propensity`` (the logging policy's probability of that choice, in (0, 1]), ``reward``,
    ``candidate_choice`` and ``candidate_propensity`` (the logging policy's probability of the candidate's
    choice; 0 = outside support). ``q_logged`` / ``q_candidate``: the model's expected reward of the logged /
    the candidate's choice (0 for none when the reward is accepts); without ``q_logged`` DR's correction uses
    ``q_candidate``, which is the same number wherever the correction is not zero. ``total_units`` scales the
    per-unit mean to a total (default: the number of units)."""
    logged = _array("logged_choice", logged_choice, None, integer=True)
    n = len(logged)
    if n == 0:
        raise ValueError("logged_choice is empty: there is nothing to evaluate")
    propensity = _array("logged_propensity", logged_propensity, n)
    _check_range("logged_propensity", propensity, 0.0, 1.0, True, " (the logged choice happened, so p > 0)")
    r = _array("reward", reward, n)
    chosen = _array("candidate_choice", candidate_choice, n, integer=True)
    cand_p = _array("candidate_propensity", candidate_propensity, n)
    _check_range("candidate_propensity", cand_p, 0.0, 1.0, False, "")
    match = chosen == logged
    _check_equal("candidate_propensity", cand_p, "logged_propensity", propensity, match)
    if q_logged is not None and q_candidate is None:
        raise ValueError("q_logged was given without q_candidate: DR and DM need the model's q of the candidate")
    q_cand = None if q_candidate is None else _array("q_candidate", q_candidate, n)
    q_log = q_cand if q_logged is None else _array("q_logged", q_logged, n)
    if q_logged is not None and q_cand is not None and q_log is not None:
        _check_equal("q_logged", q_log, "q_candidate", q_cand, match)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if total_units is not None and not (np.isfinite(total_units) and total_units > 0):
        raise ValueError(f"total_units must be a positive number, got {total_units!r}")
    if cluster is None:
        codes, n_clusters = np.arange(n), n
    else:
        if len(cluster) != n:
            raise ValueError(f"cluster has {len(cluster):,} values where logged_choice has {n:,}")
        codes, uniques = pd.factorize(np.asarray(cluster))
        if (codes < 0).any():
            raise ValueError(f"cluster has {int((codes < 0).sum()):,} missing values (first at index "
                             f"{int(np.argmax(codes < 0))})")
        n_clusters = len(uniques)
    total = float(n if total_units is None else total_units)

    # Per-unit columns whose resampled sums give every estimator: units, w, w*r and, with a model, DR and DM terms.
    w = np.where(match, 1.0 / propensity, 0.0)
    columns = [np.ones(n), w, w * r]
    if q_cand is not None and q_log is not None:
        columns += [q_cand + w * (r - q_log), q_cand]
    unit = np.column_stack(columns)
    per_cluster = np.zeros((n_clusters, unit.shape[1]))
    np.add.at(per_cluster, codes, unit)
    digest = hashlib.sha256()
    for part in (logged, propensity, r, codes, np.array([seed, n_boot, total])):
        digest.update(np.ascontiguousarray(part).tobytes())
    return report_from_sums(unit_sums(unit, w, match, chosen, cand_p), per_cluster, n_boot=n_boot, seed=seed,
                            level=level, total_units=total, resampling=digest.hexdigest())


def unit_sums(unit: np.ndarray, w: np.ndarray, match: np.ndarray, chosen: np.ndarray,
              cand_p: np.ndarray) -> dict[str, Any]:
    """What a report reads of its units besides the per-cluster sums: the column sums and the counts and
    weights of the diagnostics. Additive over disjoint sets of units (``max_weight`` by max): a history judged
    partition by partition adds these up (:mod:`pcrules.analysis.partitioned`)."""
    offers = chosen != NO_OFFER
    unsupported = cand_p == 0
    return {"sums": unit.sum(axis=0), "n": len(w), "matched": int(match.sum()), "offers": int(offers.sum()),
            "unsupported": int(unsupported.sum()), "unsupported_offers": int((unsupported & offers).sum()),
            "none_unsupported": int((unsupported & ~offers).sum()), "w_sum": float(w.sum()),
            "w2_sum": float((w**2).sum()), "w_max": float(w.max()) if len(w) else 0.0}


def report_from_sums(sums: Mapping[str, Any], per_cluster: np.ndarray, *, n_boot: int, seed: int, level: float,
                     total_units: float, resampling: str) -> OffPolicyReport:
    """The report from :func:`unit_sums` (or their sum over partitions) and the per-cluster sums of the unit
    columns (clusters in the order of their first unit): the estimates, the bootstrap over clusters, the
    diagnostics and their warnings."""
    n, total = int(sums["n"]), float(total_units)
    col = np.asarray(sums["sums"], dtype=float)
    n_clusters = per_cluster.shape[0]
    boot = _resample_sums(per_cluster, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = {"ips": (col[2] / n, boot[:, 2] / boot[:, 0]),
                 "snips": (col[2] / col[1] if col[1] > 0 else float("nan"), boot[:, 2] / boot[:, 1])}
        if len(col) > 3:
            stats["dr"] = (col[3] / n, boot[:, 3] / boot[:, 0])
            stats["dm"] = (col[4] / n, boot[:, 4] / boot[:, 0])
    estimates = {name: _estimate(name, float(mean), reps, level, total) for name, (mean, reps) in stats.items()}

    matched, n_offers, w_sum, w_max = int(sums["matched"]), int(sums["offers"]), sums["w_sum"], sums["w_max"]
    ess = float(w_sum ** 2 / sums["w2_sum"]) if matched else 0.0
    offer_share = float(sums["unsupported_offers"] / n_offers) if n_offers else 0.0
    none_unsupported = int(sums["none_unsupported"])
    has_model = len(col) > 3
    notes = []
    if not matched:
        notes.append("the candidate never chooses what the log chose: IPS is 0 and SNIPS undefined")
    elif ess < MIN_ESS:
        notes.append(f"effective sample size {ess:,.0f} below {MIN_ESS:.0f}: the estimate rests on few units")
    if offer_share > 0:
        model = "DR relies on the model there" if has_model else "and no model was given for DR"
        notes.append(f"{offer_share:.0%} of the candidate's offers outside logged support: IPS/SNIPS cannot see "
                     f"them, {model}")
    if none_unsupported:
        notes.append(f"{none_unsupported:,} of the candidate's no-offer units had no logged chance of no offer (the "
                     f"logging policy always offered there): IPS/SNIPS cannot see them")
    if matched and w_max > 0.05 * w_sum:
        notes.append(f"one unit carries {w_max / w_sum:.0%} of the importance weight: the estimate hinges on it")
    if n_clusters < 50:
        notes.append(f"only {n_clusters} visitors to resample: the bootstrap interval is rough")
    return OffPolicyReport(estimates, n, total, n_clusters, matched, n_offers, ess,
                           float(sums["unsupported"] / n), offer_share, float(w_max), level, n_boot, tuple(notes),
                           resampling)


def difference(a: OffPolicyReport, b: OffPolicyReport, *, level: float | None = None) -> Difference:
    """``a - b`` for every estimator both reports have, its interval taken on the paired resamples: honest only
    because both were evaluated on the same log, clusters, seed and ``n_boot`` (checked), so a resample that
    flatters ``a`` flatters ``b`` alike and the shared noise cancels. Where two close candidates differ on a few
    heavily weighted units the percentile interval undercovers a little (docs/off-policy.md: measured 88-93 % at
    95 %)."""
    if a.resampling != b.resampling:
        raise ValueError("the reports come from different logs or resamples: evaluate both candidates on the same "
                         "logged arrays, cluster, seed, n_boot and total_units")
    level = a.level if level is None else level
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    out = {}
    for name in a.estimates.keys() & b.estimates.keys():
        ea, eb = a.estimates[name], b.estimates[name]
        out[name] = _estimate(name, ea.mean - eb.mean, ea.replicates - eb.replicates, level, a.total_units)
    return Difference({name: out[name] for name in a.estimates if name in out}, level)
