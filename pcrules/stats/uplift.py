"""Did offering chat help? Intention-to-treat uplift of goal rates against the holdout group.

The runtime keeps a stable holdout group (``policy.holdout``, by a keyed hash of the visitor id) and
logs, for each of its visitors, the offer it *would* have made (``decisions`` rows with
``holdout = 1``, action ``none``, reason ``holdout``). Business outcomes arrive through
``Runtime.record_goal`` (``goals`` table). This module compares the two groups.

Definitions (the same in SQL, in memory, and in :func:`pcrules.world.true_uplift`):

* **Unit**: the *visitor* (default), because the holdout is assigned per visitor: a visitor's
  sessions share her arm, so counting sessions as independent would make the interval too narrow,
  and after a declined offer the decline cooldown keeps a treated visitor from being offered again
  (eligible) in a later session while a holdout visitor's would-be offers go on, so later sessions
  are not comparable. ``unit="session"`` is available for a quick look; prefer the visitor.
* **Eligible**: a unit with at least one offer or would-be offer. Up to its first one, a holdout
  visitor is treated exactly as any other (the would-be offer even occupies the session), so who is
  eligible, and when, does not depend on the arm: the comparison stays randomised.
* **Arm**: *treated* when the unit's first eligible decision was a real offer, *control* when it
  was a would-be offer (``holdout = 1``). Rule, page and queue of a unit are those of that decision.
* **Converted**: at least one goal (of the names given; any goal by default) of the same visitor
  (and session, for ``unit="session"``) with ``first_ts <= goal ts <= first_ts + window_s``.
  Goals are matched by id only: a goal for a visitor the runtime has forgotten still counts, and
  goals of visitors who were never eligible stay in the log without affecting the estimate.
  Reporting a goal twice does not count it twice.
* **Intention to treat**: treated units count whatever became of their offer (accepted, declined,
  ignored, expired): the estimate is the effect of *offering*, not of chatting, and needs no
  assumption about who accepts.
* **Estimate**: ``rate_treated - rate_control``, with a 95 % (``1 - alpha``) confidence interval by
  **Newcombe's hybrid score method** (method 10 of R. G. Newcombe, "Interval estimation for the
  difference between independent proportions: comparison of eleven methods", Statistics in
  Medicine 17, 873-890, 1998): the Wilson score interval of each rate, combined. Unlike the simple
  normal (Wald) interval it keeps close to its nominal coverage for small arms and for rates near
  0 or 1 (a per-rule cell of a 10 % holdout, a `plan_bought` rate of a few percent), never leaves
  [-1, 1], and is defined with no conversions at all. ``significant`` means the interval excludes 0.
* **Not enough data yet**: fewer than ``min_per_arm`` units in an arm (default 100), fewer than
  ``min_events`` (5) conversions or non-conversions in an arm (the normal approximation behind any
  such interval needs them), or, when ``mde`` is given, an arm smaller than :func:`sample_size`
  says is needed to detect that uplift. Then ``significant`` is False whatever the interval says.
* **Power**: :func:`sample_size` (units per arm to detect a given uplift at given alpha and power,
  for any holdout share), :func:`power` and :func:`detectable_uplift`: the usual normal
  approximation for two proportions (Fleiss, *Statistical Methods for Rates and Proportions*, without
  continuity correction; pooled variance under no effect, unpooled under the effect).

Entry points: :func:`uplift_from_log` / :func:`uplift_report` read the decision log (a SQLite file or a
PostgreSQL database, through :mod:`pcrules.logdb`: one SQLAlchemy Core statement for both) and aggregate
**in SQL** (one pass over ``decisions`` and an indexed lookup in ``goals`` per eligible
unit; nothing is loaded into memory but a few counts per rule x page x queue x arm);
:func:`estimate` works from counts, :func:`uplift_from_units` from in-memory arrays or a DataFrame
(one row per unit), and :func:`units_from_frames` builds those units from in-memory decisions and
goals the same way the SQL does. :func:`expected_uplift` turns per-offer acceptance probabilities
(true or model) and per-offer effects into a policy's expected uplift, for backtests.

Only the standard library at import time; SQLAlchemy is imported by the functions that read the log,
numpy/pandas inside the functions that take arrays or frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

__all__ = [
    "DEFAULT_WINDOW_S", "MIN_PER_ARM", "MIN_EVENTS",
    "UpliftEstimate", "UpliftReport", "SampleSize", "ExpectedUplift",
    "estimate", "newcombe_interval", "wilson_interval",
    "sample_size", "power", "detectable_uplift",
    "uplift_from_log", "uplift_report", "unit_counts", "read_eligible", "unit_counts_query",
    "read_eligible_query", "read_goals", "read_goals_query",
    "uplift_from_units", "units_from_frames", "expected_uplift", "goal_effect",
]

DEFAULT_WINDOW_S = 86400.0  # attribution window: goals within a day of the first (would-be) offer
MIN_PER_ARM = 100
MIN_EVENTS = 5
DIMENSIONS = ("rule", "page", "queue")
_NORMAL = NormalDist()


def _z(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    return _NORMAL.inv_cdf(1.0 - alpha / 2.0)


# ----------------------------------------------------------------------------------------------
# Intervals
# ----------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson's score interval for one proportion (``(0, 1)`` for ``n == 0``)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..n, got {successes} of {n}")
    z = _z(alpha)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Exact ends at 0 and n (the formula gives them up to rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``x1/n1 - x2/n2`` (method 10, 1998); both n > 0."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both arms need at least one unit")
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, alpha)
    l2, u2 = wilson_interval(x2, n2, alpha)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


# ----------------------------------------------------------------------------------------------
# Power
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSize:
    """Units needed in each arm (and in all) to detect an uplift."""

    treated: int
    control: int

    @property
    def total(self) -> int:
        return self.treated + self.control


def _check_rates(p_control: float, uplift: float) -> float:
    if not 0.0 <= p_control <= 1.0:
        raise ValueError(f"p_control: expected a rate in [0, 1], got {p_control!r}")
    p_treated = p_control + uplift
    if uplift == 0 or not 0.0 <= p_treated <= 1.0:
        raise ValueError(f"uplift: expected a non-zero difference with p_control + uplift in [0, 1], got {uplift!r}")
    return p_treated


def _check_share(control_share: float) -> float:
    if not 0.0 < control_share < 1.0:
        raise ValueError(f"control_share: expected a share in (0, 1), got {control_share!r}")
    return control_share


def sample_size(p_control: float, uplift: float, *, alpha: float = 0.05, power: float = 0.8,
                control_share: float = 0.5) -> SampleSize:
    """Units per arm needed to detect a true uplift ``uplift`` (absolute: 0.02 = two percentage points)
    over a control goal rate ``p_control`` with a two-sided test at level ``alpha`` and the given power.

    ``control_share`` is the holdout share of eligible units (``policy.holdout``; 0.5 = equal arms).
    Normal approximation (Fleiss, without continuity correction): 0.05 vs 0.10 at alpha 0.05 and power
    0.8 needs 435 per arm.
    """
    if not 0.0 < power < 1.0:
        raise ValueError(f"power: expected a number in (0, 1), got {power!r}")
    p2 = _check_rates(p_control, uplift)
    k = _check_share(control_share) / (1.0 - control_share)  # control units per treated unit
    z_a, z_b = _z(alpha), _NORMAL.inv_cdf(power)
    p1 = p_control
    pbar = (p2 + k * p1) / (1.0 + k)
    root = z_a * math.sqrt(pbar * (1 - pbar) * (1.0 + 1.0 / k)) + z_b * math.sqrt(p2 * (1 - p2) + p1 * (1 - p1) / k)
    treated = math.ceil(root * root / (uplift * uplift) - 1e-9)
    return SampleSize(treated=treated, control=math.ceil(k * treated - 1e-9))


def power(p_control: float, uplift: float, n_treated: int, n_control: int, *, alpha: float = 0.05) -> float:
    """Probability that a two-sided test at level ``alpha`` detects a true ``uplift`` with these arms."""
    p2 = _check_rates(p_control, uplift)
    if n_treated <= 0 or n_control <= 0:
        return 0.0
    p1 = p_control
    pbar = (n_treated * p2 + n_control * p1) / (n_treated + n_control)
    null_sd = math.sqrt(pbar * (1 - pbar) * (1 / n_treated + 1 / n_control))
    alt_sd = math.sqrt(p2 * (1 - p2) / n_treated + p1 * (1 - p1) / n_control)
    if alt_sd == 0:
        return 1.0
    return _NORMAL.cdf((abs(uplift) - _z(alpha) * null_sd) / alt_sd)


def detectable_uplift(p_control: float, n_treated: int, n_control: int, *, alpha: float = 0.05,
                      target_power: float = 0.8) -> float | None:
    """The smallest positive uplift over ``p_control`` that these arms detect with probability ``target_power``
    (None when none up to ``1 - p_control`` is)."""
    if n_treated <= 0 or n_control <= 0 or p_control >= 1.0:
        return None
    hi = 1.0 - p_control
    if power(p_control, hi, n_treated, n_control, alpha=alpha) < target_power:
        return None
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid > 0 and power(p_control, mid, n_treated, n_control, alpha=alpha) >= target_power:
            hi = mid
        else:
            lo = mid
    return hi


# ----------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpliftEstimate:
    """Intention-to-treat uplift of the goal rate: offered minus held out (absolute, 0.02 = 2 points).

    ``estimate``, ``ci_low`` and ``ci_high`` are None while an arm is empty. ``significant``: the
    interval excludes 0 and there is enough data. ``needed``: units per arm to detect ``mde`` (when
    given) at the observed control rate and arm ratio (:func:`sample_size`).
    """

    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    n_treated: int
    n_control: int
    converted_treated: int
    converted_control: int
    significant: bool
    enough_data: bool
    alpha: float = 0.05
    needed: SampleSize | None = None
    method: str = "newcombe"

    @property
    def rate_treated(self) -> float | None:
        return self.converted_treated / self.n_treated if self.n_treated else None

    @property
    def rate_control(self) -> float | None:
        return self.converted_control / self.n_control if self.n_control else None

    @property
    def status(self) -> str:
        """``not_enough_data``, ``positive``, ``negative`` (significant either way) or ``inconclusive``."""
        if not self.enough_data:
            return "not_enough_data"
        if self.significant:
            return "positive" if (self.estimate or 0.0) > 0 else "negative"
        return "inconclusive"

    def covers(self, value: float) -> bool:
        return self.ci_low is not None and self.ci_high is not None and self.ci_low <= value <= self.ci_high

    def summary(self) -> str:
        """One line for a dashboard tile or a notebook."""
        arms = f"{self.n_treated:,} offered vs {self.n_control:,} held out"
        level = f"{100 * (1 - self.alpha):g} %"
        if self.estimate is None:
            return f"not enough data yet ({arms})"
        text = (f"{100 * self.estimate:+.1f} pp ({level} CI {100 * self.ci_low:+.1f} to {100 * self.ci_high:+.1f} pp; "  # type: ignore[operator]
                f"{100 * self.rate_treated:.1f} % vs {100 * self.rate_control:.1f} %), {arms}")  # type: ignore[operator]
        if not self.enough_data:
            need = (f", need {self.needed.treated:,} offered and {self.needed.control:,} held out"
                    if self.needed else "")
            return f"not enough data yet: {text}{need}"
        return text


def estimate(converted_treated: int, n_treated: int, converted_control: int, n_control: int, *,
             alpha: float = 0.05, min_per_arm: int = MIN_PER_ARM, min_events: int = MIN_EVENTS,
             mde: float | None = None, target_power: float = 0.8) -> UpliftEstimate:
    """The uplift estimate from counts: converted and total units in each arm.

    ``alpha``: 1 - the interval's level. Enough data: each arm has ``min_per_arm`` units and at least
    ``min_events`` conversions and non-conversions, and, when ``mde`` (a minimum detectable uplift,
    absolute) is given, as many units as :func:`sample_size` needs to detect it with ``target_power``
    at the observed control rate and arm ratio (then in ``needed``)."""
    for name, x, n in (("treated", converted_treated, n_treated), ("control", converted_control, n_control)):
        if isinstance(x, bool) or isinstance(n, bool) or int(x) != x or int(n) != n or not 0 <= x <= n:
            raise ValueError(f"{name}: expected 0 <= converted <= n (integers), got {x} of {n}")
    xt, nt, xc, nc = int(converted_treated), int(n_treated), int(converted_control), int(n_control)
    _z(alpha)
    needed = None
    if mde is not None:
        if not mde > 0:
            raise ValueError(f"mde: expected a positive uplift, got {mde!r}")
        p_c = xc / nc if nc else 0.5
        share = nc / (nt + nc) if nt and nc else 0.5
        try:
            needed = sample_size(p_c, mde if p_c + mde <= 1 else -mde, alpha=alpha, power=target_power,
                                 control_share=share)
        except ValueError:  # a control rate of 0 or 1 with an mde past the end: nothing to plan with
            needed = None
    if nt == 0 or nc == 0:
        return UpliftEstimate(None, None, None, nt, nc, xt, xc, False, False, alpha, needed)
    low, high = newcombe_interval(xt, nt, xc, nc, alpha)
    enough = min(nt, nc) >= min_per_arm and min(xt, nt - xt, xc, nc - xc) >= min_events
    if mde is not None:
        enough = enough and needed is not None and nt >= needed.treated and nc >= needed.control
    significant = enough and (low > 0.0 or high < 0.0)
    return UpliftEstimate(xt / nt - xc / nc, low, high, nt, nc, xt, xc, significant, enough, alpha, needed)


@dataclass(frozen=True)
class UpliftReport:
    """The overall estimate and one per rule, page and queue (of each unit's first eligible decision)."""

    overall: UpliftEstimate
    by_rule: Mapping[str, UpliftEstimate] = field(default_factory=dict)
    by_page: Mapping[str, UpliftEstimate] = field(default_factory=dict)
    by_queue: Mapping[str, UpliftEstimate] = field(default_factory=dict)

    def by(self, dimension: str) -> Mapping[str, UpliftEstimate]:
        if dimension not in DIMENSIONS:
            raise ValueError(f"dimension must be one of {DIMENSIONS}, got {dimension!r}")
        return getattr(self, f"by_{dimension}")


# ----------------------------------------------------------------------------------------------
# From the decision log (SQLite or PostgreSQL: pcrules.logdb), aggregated in SQL
# ----------------------------------------------------------------------------------------------

# Eligible decisions: real offers and holdout would-be offers (the log sets holdout = 1 only on those, with
# action none and reason holdout). Written exactly so, a partial index with this WHERE clause, e.g.
#   CREATE INDEX decisions_eligible ON decisions (visitor_id, ts, id) WHERE action = 'offer' OR holdout = 1
# lets SQLite read only the eligible rows instead of scanning the whole log (a plain scan of a million
# decisions takes well under a second, so the log does not create it).
def _eligible(d: Any) -> Any:
    import sqlalchemy as sa

    # constants written into the SQL, not bound: SQLite matches a partial index's WHERE only to literal text
    return sa.or_(d.c.action == sa.literal_column("'offer'"), d.c.holdout == sa.literal_column("1"))


def _connect(log: Any) -> Any:
    """A context manager giving an SQLAlchemy connection to `log`: a path, a database URL (``postgresql://``),
    an SQLAlchemy engine or connection, a sqlite3 connection, or a decision log object (``.url`` / ``.path``)."""
    from .. import logdb

    return logdb.connect(log)


def _check_window(window_s: float) -> float:
    if not (isinstance(window_s, (int, float)) and not isinstance(window_s, bool) and window_s >= 0):
        raise ValueError(f"window_s: expected a number of seconds >= 0, got {window_s!r}")
    return float(window_s)


def unit_counts_query(*, window_s: float = DEFAULT_WINDOW_S, goals: Sequence[str] | str | None = None,
                      unit: str = "visitor", since: float | None = None, until: float | None = None,
                      as_of: float | None = None, ruleset: str | None = None) -> Any:
    """The SQLAlchemy Core statement of :func:`unit_counts`: rows ``(rule, page, queue, holdout, units,
    converted)``. Each unit's first eligible decision (``ROW_NUMBER()`` over the unit, by ``ts, id``), then
    whether a goal of hers (``EXISTS``, through the index on the goals' visitor) falls in her window."""
    import sqlalchemy as sa

    from ..logdb import decisions
    from ..logdb import goals as goals_table

    if unit not in ("visitor", "session"):
        raise ValueError(f"unit must be 'visitor' or 'session', got {unit!r}")
    window = _check_window(window_s)
    d, g = decisions.alias("d"), goals_table.alias("g")
    partition = [d.c.visitor_id] if unit == "visitor" else [d.c.visitor_id, d.c.session_id]
    where = [_eligible(d)] + ([d.c.ruleset == ruleset] if ruleset is not None else [])
    first = sa.func.row_number().over(partition_by=partition, order_by=(d.c.ts, d.c.id)).label("k")
    eligible = (sa.select(d.c.visitor_id, d.c.session_id, d.c.ts, d.c.holdout, d.c.rule, d.c.page, d.c.queue, first)
                .where(*where).cte("eligible"))
    e = eligible.c
    chosen = [e.k == 1]
    if since is not None:
        chosen.append(e.ts >= float(since))
    if until is not None:
        chosen.append(e.ts < float(until))
    if as_of is not None:
        chosen.append(e.ts + window <= float(as_of))
    units = (sa.select(e.visitor_id, e.session_id, e.ts.label("first_ts"), e.holdout, e.rule, e.page, e.queue)
             .where(*chosen).cte("units"))
    u = units.c
    same_unit = [g.c.visitor_id == u.visitor_id] + ([g.c.session_id == u.session_id] if unit == "session" else [])
    goal_filter = []
    if goals is not None:
        names = [goals] if isinstance(goals, str) else list(goals)
        if not names:
            raise ValueError("goals: give at least one goal name, or None for every goal")
        goal_filter.append(g.c.goal.in_(names))
    hit = sa.exists().where(*same_unit, g.c.ts >= u.first_ts, g.c.ts <= u.first_ts + window, *goal_filter)
    converted = sa.case((hit, 1), else_=0)
    return (sa.select(u.rule, u.page, u.queue, u.holdout, sa.func.count(), sa.func.sum(converted))
            .group_by(u.rule, u.page, u.queue, u.holdout))


def unit_counts(log: Any, *, window_s: float = DEFAULT_WINDOW_S, goals: Sequence[str] | str | None = None,
                unit: str = "visitor", since: float | None = None, until: float | None = None,
                as_of: float | None = None,
                ruleset: str | None = None) -> list[tuple[str | None, str, str | None, int, int, int]]:
    """The raw aggregate, straight from SQL: rows ``(rule, page, queue, holdout, units, converted)``.

    ``since`` / ``until`` select units by their first eligible decision (entered the experiment in
    ``[since, until)``); ``as_of`` leaves out units whose window has not closed by then (their goals may
    still come); ``ruleset`` only counts that ruleset's decisions (by name). `log`: see :func:`uplift_report`."""
    query = unit_counts_query(window_s=window_s, goals=goals, unit=unit, since=since, until=until, as_of=as_of,
                              ruleset=ruleset)
    with _connect(log) as db:
        rows = db.execute(query).all()
    return [(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5] or 0)) for r in rows]


def _fold(rows: Iterable[tuple[Any, ...]], key: Any, **kw: Any) -> UpliftEstimate:
    counts = [0, 0, 0, 0]  # converted treated, n treated, converted control, n control
    for row in rows:
        holdout, n, converted = row[3], row[4], row[5]
        offset = 2 if holdout else 0
        counts[offset] += converted
        counts[offset + 1] += n
    return estimate(counts[0], counts[1], counts[2], counts[3], **kw)


def uplift_report(log: Any, *, window_s: float = DEFAULT_WINDOW_S, goals: Sequence[str] | str | None = None,
                  unit: str = "visitor", since: float | None = None, until: float | None = None,
                  as_of: float | None = None, ruleset: str | None = None, alpha: float = 0.05,
                  min_per_arm: int = MIN_PER_ARM, min_events: int = MIN_EVENTS, mde: float | None = None,
                  target_power: float = 0.8) -> UpliftReport:
    """Overall and per rule / page / queue uplift from the decision log (`log`: a SQLite file's path, a
    ``postgresql://`` URL, an SQLAlchemy engine or connection, a sqlite3 connection, or a decision log object),
    one SQL query. Arguments as in :func:`unit_counts`
    and :func:`estimate`."""
    rows = unit_counts(log, window_s=window_s, goals=goals, unit=unit, since=since, until=until, as_of=as_of,
                       ruleset=ruleset)
    kw = dict(alpha=alpha, min_per_arm=min_per_arm, min_events=min_events, mde=mde, target_power=target_power)
    parts: dict[str, dict[str, UpliftEstimate]] = {}
    for i, dim in enumerate(DIMENSIONS):
        keys = sorted({r[i] for r in rows}, key=lambda v: (v is None, v or ""))
        parts[dim] = {("" if k is None else str(k)): _fold((r for r in rows if r[i] == k), k, **kw) for k in keys}
    return UpliftReport(_fold(rows, None, **kw), parts["rule"], parts["page"], parts["queue"])


def uplift_from_log(log: Any, *, window_s: float = DEFAULT_WINDOW_S, goals: Sequence[str] | str | None = None,
                    unit: str = "visitor", since: float | None = None, until: float | None = None,
                    as_of: float | None = None, ruleset: str | None = None, alpha: float = 0.05,
                    min_per_arm: int = MIN_PER_ARM, min_events: int = MIN_EVENTS, mde: float | None = None,
                    target_power: float = 0.8) -> UpliftEstimate:
    """The overall uplift from the decision log: what the ops dashboard's tile shows."""
    return uplift_report(log, window_s=window_s, goals=goals, unit=unit, since=since, until=until, as_of=as_of,
                         ruleset=ruleset, alpha=alpha, min_per_arm=min_per_arm, min_events=min_events, mde=mde,
                         target_power=target_power).overall


def read_eligible(log: Any, *, since: float | None = None, until: float | None = None) -> Any:
    """Offers and holdout would-be offers from the log as a DataFrame (only those rows: small next to the
    log), joined with their outcome (``status``: accepted / declined / expired, or None). For notebooks
    and for :func:`pcrules.world.true_uplift`."""
    import pandas as pd

    with _connect(log) as db:
        return pd.read_sql_query(read_eligible_query(since=since, until=until), db)


def read_goals(log: Any, *, since: float | None = None, until: float | None = None) -> Any:
    """The goals of the log (``ts, visitor_id, session_id, goal, value``; ``since <= ts < until``) as a DataFrame,
    by ``ts, id``: with :func:`read_eligible`, what :func:`pcrules.decision_value.effects_from_log` takes."""
    import pandas as pd

    with _connect(log) as db:
        return pd.read_sql_query(read_goals_query(since=since, until=until), db)


def read_goals_query(*, since: float | None = None, until: float | None = None) -> Any:
    import sqlalchemy as sa

    from ..logdb import goals

    g = goals.alias("g")
    where = []
    if since is not None:
        where.append(g.c.ts >= float(since))
    if until is not None:
        where.append(g.c.ts < float(until))
    return (sa.select(g.c.ts, g.c.visitor_id, g.c.session_id, g.c.goal, g.c.value).where(*where)
            .order_by(g.c.ts, g.c.id))


READ_ELIGIBLE_COLUMNS = ("id", "ts", "visitor_id", "session_id", "page", "seconds_on_page", "action", "reason",
                         "rule", "queue", "score", "offer_id", "holdout", "expires_at", "ruleset", "ruleset_version")


def read_eligible_query(*, since: float | None = None, until: float | None = None) -> Any:
    """The statement of :func:`read_eligible`."""
    import sqlalchemy as sa

    from ..logdb import decisions, outcomes

    d, o = decisions.alias("d"), outcomes.alias("o")
    where = [_eligible(d)]
    if since is not None:
        where.append(d.c.ts >= float(since))
    if until is not None:
        where.append(d.c.ts < float(until))
    return (sa.select(*(d.c[c] for c in READ_ELIGIBLE_COLUMNS), o.c.status, o.c.ts.label("answered_at"))
            .select_from(d.outerjoin(o, o.c.offer_id == d.c.offer_id)).where(*where).order_by(d.c.ts, d.c.id))


# ----------------------------------------------------------------------------------------------
# In memory: arrays and DataFrames (backtests, notebooks)
# ----------------------------------------------------------------------------------------------


def uplift_from_units(treated: Any, converted: Any = None, *, by: Any = None, alpha: float = 0.05,
                      min_per_arm: int = MIN_PER_ARM, min_events: int = MIN_EVENTS, mde: float | None = None,
                      target_power: float = 0.8) -> Any:
    """Uplift from one row per eligible unit: ``treated`` (bool: offered, not held out) and ``converted``
    (bool). Either two array-likes, or a DataFrame as `treated` with those columns (``holdout`` instead
    of ``treated`` is understood too). With ``by`` (a column name of the frame, or an array), returns a
    dict group -> :class:`UpliftEstimate`; else one estimate."""
    import numpy as np
    import pandas as pd

    if isinstance(treated, pd.DataFrame):
        frame = treated
        arm = frame["treated"] if "treated" in frame.columns else ~frame["holdout"].astype(bool)
        conv = frame["converted"]
        if isinstance(by, str):
            by = frame[by]
        treated, converted = arm, conv
    t = np.asarray(treated, dtype=bool)
    c = np.asarray(converted, dtype=bool)
    if t.shape != c.shape or t.ndim != 1:
        raise ValueError(f"treated and converted must be 1-d and of one length, got {t.shape} and {c.shape}")

    def one(mask: Any) -> UpliftEstimate:
        tm, cm = t[mask], c[mask]
        return estimate(int((cm & tm).sum()), int(tm.sum()), int((cm & ~tm).sum()), int((~tm).sum()),
                        alpha=alpha, min_per_arm=min_per_arm, min_events=min_events, mde=mde,
                        target_power=target_power)

    if by is None:
        return one(slice(None))
    keys = pd.Series(np.asarray(by, dtype=object)).fillna("").to_numpy(dtype=object)
    if len(keys) != len(t):
        raise ValueError("by must have one value per unit")
    return {k: one(keys == k) for k in sorted(set(keys.tolist()), key=str)}


def units_from_frames(decisions: Any, goals: Any, *, window_s: float = DEFAULT_WINDOW_S,
                      goal_names: Sequence[str] | str | None = None, unit: str = "visitor") -> Any:
    """The eligible units, built in memory exactly as the SQL does: one row per unit with ``visitor_id``
    (and ``session_id``), ``first_ts``, ``holdout``, ``treated``, ``rule``, ``page``, ``queue``, ``converted``.

    ``decisions``: per-event decisions (``visitor_id, session_id, ts, action, reason, holdout, rule, page,
    queue``; rows other than offers and holdout would-be offers are ignored; without ``action`` every
    row is an eligible decision, arm by ``holdout``); ``goals``: ``visitor_id, session_id, goal, ts``."""
    import numpy as np
    import pandas as pd

    if unit not in ("visitor", "session"):
        raise ValueError(f"unit must be 'visitor' or 'session', got {unit!r}")
    d = decisions if isinstance(decisions, pd.DataFrame) else pd.DataFrame(decisions)
    g = goals if isinstance(goals, pd.DataFrame) else pd.DataFrame(goals,
                                                                    columns=["visitor_id", "session_id", "goal", "ts"])
    holdout = d["holdout"].fillna(0).astype(bool) if "holdout" in d.columns else pd.Series(False, index=d.index)
    if "action" in d.columns:
        keep = d["action"].astype(object).eq("offer") | holdout  # as the SQL's _eligible
        d, holdout = d[keep], holdout[keep]
    d = d.assign(holdout=holdout.to_numpy(dtype=bool), _order=np.arange(len(d)))
    for column in DIMENSIONS:
        if column not in d.columns:
            d[column] = None
    key = ["visitor_id"] if unit == "visitor" else ["visitor_id", "session_id"]
    order = ["ts", "id"] if "id" in d.columns else ["ts", "_order"]
    first = d.sort_values(order, kind="stable").drop_duplicates(key, keep="first")
    units = first[["visitor_id", "session_id", "ts", "holdout", "rule", "page", "queue"]]
    units = units.rename(columns={"ts": "first_ts"})
    units = units.reset_index(drop=True)
    if goal_names is not None:
        names = [goal_names] if isinstance(goal_names, str) else list(goal_names)
        g = g[g["goal"].isin(names)]
    hits = units[key + ["first_ts"]].merge(g[key + ["ts"]], on=key, how="inner")
    hits = hits[(hits["ts"] >= hits["first_ts"]) & (hits["ts"] <= hits["first_ts"] + float(window_s))]
    converted = set(map(tuple, hits[key].drop_duplicates().to_numpy(dtype=object).tolist()))
    units["converted"] = [tuple(k) in converted for k in units[key].to_numpy(dtype=object).tolist()]
    units["treated"] = ~units["holdout"]
    return units


# ----------------------------------------------------------------------------------------------
# Expected uplift of a policy (backtests)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedUplift:
    """What a set of offers is expected to do to the goal count."""

    offers: int
    expected_accepts: float
    expected_goals: float         # extra goals caused by the offers: sum of per-offer effects
    eligible: int                 # units the uplift is spread over
    uplift: float | None          # expected_goals / eligible: the ITT uplift pcrules.uplift measures

    @property
    def per_offer(self) -> float | None:
        return self.expected_goals / self.offers if self.offers else None


def goal_effect(p_accept: Any, gain_if_accepted: Any, loss_if_not_accepted: Any = 0.0) -> Any:
    """One offer's expected effect on the goal probability: ``p * gain - (1 - p) * loss``.

    Plain arithmetic: floats give a float, numpy arrays an array (element by element)."""
    return p_accept * gain_if_accepted - (1.0 - p_accept) * loss_if_not_accepted


def _is_array(x: Any) -> bool:
    return hasattr(x, "__array__") or hasattr(x, "to_numpy")


def _values(x: Any, n: int | None) -> list[float]:
    if _is_array(x):
        import numpy as np

        arr = np.asarray(x, dtype=float).ravel()
        if n is not None and arr.size == 1:
            return [float(arr[0])] * n
        return arr.tolist()
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return [float(x)] * (n if n is not None else 1)
    return [float(v) for v in x]


def _expected_uplift_arrays(p_accept: Any, gain: Any, loss: Any, eligible: int | None) -> ExpectedUplift:
    """:func:`expected_uplift` for numpy arrays (or pandas columns): vectorised, for backtests and the tuner."""
    import numpy as np

    p = np.asarray(p_accept, dtype=float).ravel()
    n = p.size
    g, lo = np.asarray(gain, dtype=float).ravel(), np.asarray(loss, dtype=float).ravel()
    if g.size not in (1, n) or lo.size not in (1, n):
        raise ValueError("p_accept, gain_if_accepted and loss_if_not_accepted differ in length: "
                         f"{n}, {g.size}, {lo.size}")
    if n and not ((p >= 0.0) & (p <= 1.0)).all():
        raise ValueError("p_accept: expected probabilities in [0, 1]")
    goals = float(np.sum(goal_effect(p, g, lo))) if n else 0.0
    units = n if eligible is None else int(eligible)
    if units < 0:
        raise ValueError("eligible must be >= 0")
    return ExpectedUplift(offers=n, expected_accepts=float(p.sum()), expected_goals=goals, eligible=units,
                          uplift=goals / units if units else None)


def expected_uplift(p_accept: Any, gain_if_accepted: Any, loss_if_not_accepted: Any = 0.0, *,
                    eligible: int | None = None) -> ExpectedUplift:
    """The expected effect of a policy's offers on the goal count.

    Per offer: ``p_accept`` (the true or the model's P(accept)), ``gain_if_accepted`` (absolute rise of
    the goal probability if the chat is accepted, e.g. :func:`pcrules.world.offer_effects`'s column, or
    an assumed constant) and ``loss_if_not_accepted`` (absolute fall when the offer is declined or
    ignored: annoyance; 0 by default). Scalars broadcast. Expected extra goals =
    ``sum(p * gain - (1 - p) * loss)`` (:func:`goal_effect`); ``uplift`` spreads them over ``eligible``
    units (default: one per offer), the intention-to-treat uplift the log's estimate measures.
    A numpy array (or pandas column) as ``p_accept`` takes the vectorised path (sums by numpy);
    lists and scalars are summed exactly (``math.fsum``) without numpy.

    Offers are valued independently, each against its session's goal rate without offers: to compare
    with the log's estimate (one goal per visitor within the attribution window after her first
    offer), pass the offers that fall in that window, for a one-offer-per-visitor policy her first
    offer; counting every later offer too overstates the effect (a visitor converts at most once).
    On the synthetic world, first offers give the exact ITT within a few per cent.
    """
    if _is_array(p_accept):
        return _expected_uplift_arrays(p_accept, gain_if_accepted, loss_if_not_accepted, eligible)
    p = _values(p_accept, None)
    n = len(p)
    gain = _values(gain_if_accepted, n)
    loss = _values(loss_if_not_accepted, n)
    if not (len(gain) == len(loss) == n):
        raise ValueError("p_accept, gain_if_accepted and loss_if_not_accepted differ in length: "
                         f"{n}, {len(gain)}, {len(loss)}")
    if any(not 0.0 <= v <= 1.0 for v in p):
        raise ValueError("p_accept: expected probabilities in [0, 1]")
    goals = math.fsum(goal_effect(pi, g, lo) for pi, g, lo in zip(p, gain, loss))
    units = n if eligible is None else int(eligible)
    if units < 0:
        raise ValueError("eligible must be >= 0")
    return ExpectedUplift(offers=n, expected_accepts=math.fsum(p), expected_goals=goals, eligible=units,
                          uplift=goals / units if units else None)
