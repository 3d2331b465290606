"""Queries over the decision log for operations: filters, offer counts and cubes, uplift, recent decisions and
the live ruleset, aggregated in SQL (never the whole log in memory). The dashboard (:mod:`.view`) shows them.

Every query is an SQLAlchemy Core statement over :mod:`pcrules.logdb`'s tables, so the same query runs on a
SQLite log and on a PostgreSQL one (``PCRULES_DECISION_LOG=postgresql://...``); what differs between the two
lives in :mod:`pcrules.logdb` (why SQLAlchemy Core: there)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import logdb
from ..errors import PcrulesError
from ..logdb import decisions as _decisions
from ..logdb import goals as _goals
from ..logdb import outcomes as _outcomes
from ..logdb import rulesets as _rulesets
from ..stats import uplift as _uplift

__all__ = [
    "LOG_ENV",
    "BUNDLE_ENV",
    "DEFAULT_LOG",
    "LogNotReadable",
    "FilterError",
    "Filters",
    "LogInfo",
    "DecisionSummary",
    "OfferCounts",
    "OfferCube",
    "offer_cube",
    "Uplift",
    "LiveRuleset",
    "open_log",
    "log_info",
    "log_stamp",
    "decision_summary",
    "uplift_units",
    "uplift_of",
    "choices",
    "offer_counts",
    "offers_by",
    "offers_per_hour",
    "decisions_by_reason",
    "chats_per_hour_by_queue",
    "uplift",
    "recent_decisions",
    "live_ruleset",
    "time_filters",
    "resolve_log_path",
    "describe_conditions",
    "describe_error",
]

log = logging.getLogger("pcrules.ops")

LOG_ENV = "PCRULES_DECISION_LOG"
BUNDLE_ENV = "PCRULES_BUNDLE"
# Where `pcrules demo` writes its log by default: relative to the working directory (as on its command line),
# not to the package, which may be installed anywhere.
DEFAULT_LOG = Path("var") / "demo" / "decisions.sqlite"
SUPPORTED_SCHEMA = 2  # reads versions 1 and 2 (2 adds decisions.explored, propensity)

UPLIFT_WINDOW_S = _uplift.DEFAULT_WINDOW_S  # goals count within a day of the visitor's first eligible decision
UPLIFT_POWER = 0.8

STATUSES = ("accepted", "declined", "expired")
TIME_RANGES = (("Last 7 days", "7d"), ("Last 24 hours", "24h"), ("Last hour", "1h"), ("All time", "all"),
               ("Custom dates", "custom"))
RANGE_SECONDS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
# The range shown first: the latest week of activity, ending at the latest decision. Not the whole log: a demo's
# sample from last year and today's live decisions on one axis leave each a sliver of it.
DEFAULT_RANGE = "7d"
BREAKDOWN_LIMIT = 15
MAX_PAGE_CHOICES = 200  # a site with thousands of page names: the busiest ones in the page filter
CHOICE_WINDOW = 100_000  # the filters offer the queues and pages of the latest decisions
MAX_TEXT = 200  # filter values longer than any page name the runtime accepts are refused


class FilterError(ValueError):
    """The filters chosen make no sense (dates reversed, ...); shown as a note, the last numbers stay."""


class LogNotReadable(PcrulesError):
    """The decision log cannot be shown; the message says why and what to do, for a person to read."""

    def __init__(self, message: str, *, kind: str):
        super().__init__(message)
        self.kind = kind  # missing | empty | unreadable | not_a_log | newer


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filters:
    """What the dashboard shows: decisions with ``start <= ts < end`` (epoch s; None: open), in ``queue`` and
    on ``page`` (None: all). Validated here because the values come from a browser."""

    start: float | None = None
    end: float | None = None
    queue: str | None = None
    page: str | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"{name}: expected epoch seconds, got {value!r}")
        for name in ("queue", "page"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT):
                raise ValueError(f"{name}: expected a name of 1..{MAX_TEXT} characters, got {value!r}")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError("the time range starts after it ends")

    def conditions(self, table: Any) -> list[Any]:
        """The selection as SQLAlchemy conditions on a ``decisions`` table (or alias); empty when it is all."""
        clauses: list[Any] = []
        if self.start is not None:
            clauses.append(table.c.ts >= float(self.start))
        if self.end is not None:
            clauses.append(table.c.ts < float(self.end))
        if self.queue is not None:
            clauses.append(table.c.queue == self.queue)
        if self.page is not None:
            clauses.append(table.c.page == self.page)
        return clauses


def time_filters(choice: str, last_ts: float | None, *, start_day: date | None = None,
                 end_day: date | None = None, tz: str = "UTC") -> tuple[float | None, float | None]:
    """(start, end) of a time-range choice: ``all``; ``1h``/``24h``/``7d`` ending at the log's latest decision
    (``last_ts``, inclusive); ``custom``: from the start of ``start_day`` to the end of ``end_day`` in ``tz``."""
    if choice == "all":
        return None, None
    if choice in RANGE_SECONDS:
        if last_ts is None:
            return None, None
        return last_ts - RANGE_SECONDS[choice], None
    if choice == "custom":
        zone = zone_of(tz)
        if start_day is None or end_day is None:
            raise ValueError("choose both dates of the custom range")
        if not isinstance(start_day, date) or not isinstance(end_day, date):
            raise ValueError("the custom range needs two dates")
        if start_day > end_day:
            raise ValueError("the custom range starts after it ends")
        start = datetime.combine(start_day, datetime.min.time(), zone).timestamp()
        end = datetime.combine(end_day + timedelta(days=1), datetime.min.time(), zone).timestamp()
        return start, end
    raise ValueError(f"unknown time range {choice!r}")


def zone_of(tz: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if tz in ("UTC", "utc", "Z"):
        return UTC
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None


# --------------------------------------------------------------------------- opening the log


def resolve_log_path(path: str | os.PathLike | None = None) -> Path | str:
    """The log to show: ``path``, else ``$PCRULES_DECISION_LOG``, else the demo's log (``var/demo/`` in the
    working directory). A SQLite file's path, or a database URL (``postgresql://...``) as given."""
    chosen = path if path not in (None, "") else os.environ.get(LOG_ENV) or DEFAULT_LOG
    if logdb.is_url(chosen):
        return str(chosen)
    return Path(chosen).expanduser()


EMPTY = ("The decision log {log} is empty: no decisions have been logged yet. They appear here as soon as the "
         "runtime makes them (press Refresh).")


@contextlib.contextmanager
def open_log(path: str | os.PathLike) -> Iterator[Connection]:
    """A read-only connection to a decision log (a SQLite file or a ``postgresql://`` URL: :mod:`pcrules.logdb`),
    checked; :class:`LogNotReadable` with a readable reason.

    Read-only (SQLite: ``mode=ro`` and ``query_only``; PostgreSQL: read-only transactions): the dashboard can
    never change the log, and it reads a log that a runtime is writing without blocking it.
    """
    if logdb.is_url(path) and logdb.sqlite_path(path) is None:
        with _open_database(str(path)) as conn:
            yield conn
        return
    p = logdb.sqlite_path(path) or Path(path)
    if not p.exists():
        raise LogNotReadable(
            f"There is no decision log at {p}. Point the dashboard at one with {LOG_ENV}=/path/to/decisions.sqlite "
            f"or postgresql://... (`pcrules dashboard --log PATH|URL`), or run `make demo` to make the demo's log.",
            kind="missing")
    if not p.is_file():
        raise LogNotReadable(f"{p} is not a file; {LOG_ENV} must name the decision log's SQLite file.",
                             kind="unreadable")
    if p.stat().st_size == 0:
        raise LogNotReadable(EMPTY.format(log=p), kind="empty")
    try:
        conn = logdb.engine_for(p).connect()
    except sa.exc.SQLAlchemyError as exc:
        raise LogNotReadable(f"Cannot open the decision log {p}: {describe_error(exc)}.", kind="unreadable") from None
    try:
        try:
            version = conn.exec_driver_sql("PRAGMA user_version").scalar() or 0
            tables = set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'").scalars())
        except sa.exc.SQLAlchemyError as exc:
            raise LogNotReadable(f"{p} is not a readable SQLite decision log ({describe_error(exc)}).",
                                 kind="unreadable") from None
        if not tables:
            raise LogNotReadable(EMPTY.format(log=p), kind="empty")
        missing = set(logdb.TABLES) - tables
        if missing:
            raise LogNotReadable(f"{p} is a SQLite file but not a pcrules decision log (no table "
                                 f"{', '.join(sorted(missing))}).", kind="not_a_log")
        _check_schema(p, version)
        yield conn
    finally:
        conn.close()


def _check_schema(shown: Any, version: int) -> None:
    if version > SUPPORTED_SCHEMA:
        raise LogNotReadable(f"The decision log {shown} has schema version {version}, written by a newer pcrules; "
                             f"this dashboard reads version {SUPPORTED_SCHEMA}. Upgrade pcrules.", kind="newer")


def describe_error(exc: BaseException) -> str:
    """A database error in one line, without SQLAlchemy's SQL echo and help link."""
    inner = getattr(exc, "orig", None) or exc
    return str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__


@contextlib.contextmanager
def _open_database(url: str) -> Iterator[Connection]:
    """A PostgreSQL log: connected through the pool, its four tables checked."""
    shown = logdb.describe(url)
    try:
        conn = logdb.engine_for(url).connect()
    except sa.exc.ArgumentError as exc:
        raise LogNotReadable(f"{shown} is not a database URL the dashboard can read ({exc}).",
                             kind="unreadable") from None
    except sa.exc.SQLAlchemyError as exc:
        raise LogNotReadable(f"Cannot connect to the decision log {shown}: {describe_error(exc)}. Is the database "
                             f"server running, and the URL right?", kind="unreadable") from None
    try:
        try:
            tables = set(sa.inspect(conn).get_table_names())
        except sa.exc.SQLAlchemyError as exc:
            raise LogNotReadable(f"Cannot read the decision log {shown}: {describe_error(exc)}.",
                                 kind="unreadable") from None
        present = set(logdb.TABLES) & tables
        if not present:
            raise LogNotReadable(EMPTY.format(log=shown), kind="empty")
        missing = set(logdb.TABLES) - tables
        if missing:
            raise LogNotReadable(f"The database {shown} is not a pcrules decision log (no table "
                                 f"{', '.join(sorted(missing))}).", kind="not_a_log")
        version = 0
        if "log_schema" in tables:  # the PostgreSQL log's schema version (SQLite's user_version)
            version = conn.exec_driver_sql("SELECT MAX(version) FROM log_schema").scalar() or 0
        _check_schema(shown, version)
        yield conn
    finally:
        conn.close()


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class LogInfo:
    decisions: int
    first_ts: float | None
    last_ts: float | None


def log_info(conn: Connection) -> LogInfo:
    """How many decisions the whole log holds and the event times of the first and the last."""
    n, first, last = conn.execute(log_info_query()).one()
    return LogInfo(int(n), _float(first), _float(last))


def log_info_query() -> sa.Select:
    # MIN and MAX in subqueries of their own: each one step down the index on ts (together they scan it)
    d = _decisions
    return sa.select(sa.select(sa.func.count()).select_from(d).scalar_subquery(),
                     sa.select(sa.func.min(d.c.ts)).scalar_subquery(),
                     sa.select(sa.func.max(d.c.ts)).scalar_subquery())


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def log_stamp(conn: Connection) -> tuple[int, ...]:
    """What the log holds, in four row ids: any decision, outcome, goal or ruleset written since changes it.
    Instant (the last row of each table), so a refresh of an unchanged log can reuse what it computed."""
    return tuple(int(x or 0) for x in conn.execute(sa.select(
        *(sa.select(sa.func.max(t.c.id)).scalar_subquery() for t in (_decisions, _outcomes, _goals, _rulesets))
    )).one())


def choices(conn: Connection, spec_queues: Sequence[str] = (), max_pages: int = MAX_PAGE_CHOICES,
            window: int = CHOICE_WINDOW) -> tuple[list[str], list[str]]:
    """(queues, pages) for the filters: the live ruleset's queues, and the queues and the busiest pages (at most
    ``max_pages``, in name order) of the latest ``window`` decisions: a bounded read however long the log."""
    totals: dict[str, int] = {}
    queues = set(spec_queues)
    d = _decisions
    latest = sa.select(d.c.page, d.c.queue).order_by(d.c.id.desc()).limit(int(window)).subquery("latest")
    for page, queue, n in conn.execute(sa.select(latest.c.page, latest.c.queue, sa.func.count())
                                       .group_by(latest.c.page, latest.c.queue)):
        totals[str(page)] = totals.get(str(page), 0) + n
        if queue is not None:
            queues.add(queue)
    pages = sorted(totals, key=lambda p: (-totals[p], p))[:max_pages]
    return sorted(queues), sorted(pages)


@dataclass(frozen=True)
class OfferCounts:
    offers: int = 0
    accepted: int = 0
    declined: int = 0
    expired: int = 0

    @property
    def ended(self) -> int:
        return self.accepted + self.declined + self.expired

    @property
    def pending(self) -> int:
        return self.offers - self.ended

    @property
    def chats_started(self) -> int:
        return self.accepted

    def rate(self, status: str) -> float | None:
        """Share of ended offers with this status; None before any offer has ended."""
        return getattr(self, status) / self.ended if self.ended else None


_STATUS_FIELD = {"accepted": 1, "declined": 2, "expired": 3}


def _add(cells: Any) -> OfferCounts:
    """Sum cube cells (..., status, n) into counts; an offer without an outcome is pending."""
    totals = [0, 0, 0, 0]
    for *_, status, n in cells:
        totals[0] += n
        if status in _STATUS_FIELD:
            totals[_STATUS_FIELD[status]] += n
    return OfferCounts(*totals)


@dataclass(frozen=True)
class OfferCube:
    """Offers of a selection counted by (UTC hour, page, rule, queue, outcome status or None while pending):
    one GROUP BY over the offers (through the log's partial index on ``offer_id``) from which every offer
    tile and chart is summed. At most one cell per hour, page, rule, queue and status."""

    cells: tuple[tuple[float, str, str, str, str | None, int], ...] = ()

    def total(self) -> OfferCounts:
        return _add(self.cells)

    def select(self, queue: str | None = None, page: str | None = None) -> OfferCube:
        """The cells of one queue and page (None: all): a queue or page filter without another query."""
        if queue is None and page is None:
            return self
        return OfferCube(tuple(c for c in self.cells
                               if (queue is None or c[3] == queue) and (page is None or c[1] == page)))

    def by(self, column: str) -> list[tuple[str, OfferCounts]]:
        """Counts by ``page``, ``rule`` or ``queue``, most offers first (ties by name)."""
        index = {"page": 1, "rule": 2, "queue": 3}.get(column)
        if index is None:
            raise ValueError(f"cannot break offers down by {column!r}")
        groups: dict[str, list] = {}
        for cell in self.cells:
            groups.setdefault(str(cell[index]), []).append(cell)
        rows = [(key, _add(cells)) for key, cells in groups.items()]
        return sorted(rows, key=lambda kv: (-kv[1].offers, kv[0]))

    def per_hour(self) -> list[tuple[float, OfferCounts]]:
        """(start of the UTC hour, counts) for every hour with an offer, by the time the offer was made."""
        groups: dict[float, list] = {}
        for cell in self.cells:
            groups.setdefault(cell[0], []).append(cell)
        return [(hour, _add(groups[hour])) for hour in sorted(groups)]

    def chats_per_hour_by_queue(self) -> dict[str, list[tuple[float, int]]]:
        """Chats started (accepted offers) per UTC hour of the offer, per queue; hours without one are absent."""
        out: dict[str, dict[float, int]] = {}
        for hour, _, _, queue, status, n in self.cells:
            if status == "accepted":
                per_hour = out.setdefault(queue, {})
                per_hour[hour] = per_hour.get(hour, 0) + n
        return {q: sorted(hours.items()) for q, hours in sorted(out.items())}


def offer_cube(conn: Connection, f: Filters = Filters()) -> OfferCube:
    """The offers of the selection with their outcomes, grouped in SQL (see :class:`OfferCube`)."""
    rows = conn.execute(offer_cube_query(f)).all()
    cells = ((int(h) * 3600.0, str(p), str(r), str(q), st, int(n)) for h, p, r, q, st, n in rows)
    return OfferCube(tuple(sorted(cells, key=lambda c: (*c[:4], c[4] or ""))))  # one order whatever the database


def offer_cube_query(f: Filters = Filters()) -> sa.Select:
    """(hour, page, rule, queue, status, offers) of the selection's offers: through the partial index on
    ``offer_id`` (``offer_id IS NOT NULL``), the hour by :class:`pcrules.logdb.hour_of`."""
    d, o = _decisions.alias("d"), _outcomes.alias("o")
    hour = logdb.hour_of(d.c.ts)
    return (sa.select(hour.label("hour"), d.c.page, d.c.rule, d.c.queue, o.c.status, sa.func.count())
            .select_from(d.outerjoin(o, o.c.offer_id == d.c.offer_id))
            .where(d.c.offer_id.is_not(None), d.c.action == sa.literal_column("'offer'"), *f.conditions(d))
            .group_by(hour, d.c.page, d.c.rule, d.c.queue, o.c.status))


def offer_counts(conn: Connection, f: Filters = Filters()) -> OfferCounts:
    """Offers in the selection and how many of them were accepted, declined and expired."""
    return offer_cube(conn, f).total()


def offers_by(conn: Connection, column: str, f: Filters = Filters(),
              limit: int = BREAKDOWN_LIMIT) -> tuple[list[tuple[str, OfferCounts]], int]:
    """Offer counts by ``page``, ``rule`` or ``queue``, most offers first (at most ``limit``), and how many
    distinct values there are in all."""
    if column not in ("page", "rule", "queue"):
        raise ValueError(f"cannot break offers down by {column!r}")
    rows = offer_cube(conn, f).by(column)
    return rows[:limit], len(rows)


def offers_per_hour(conn: Connection, f: Filters = Filters()) -> list[tuple[float, OfferCounts]]:
    """(start of the UTC hour, counts) for every hour with an offer, by the time the offer was made."""
    return offer_cube(conn, f).per_hour()


def chats_per_hour_by_queue(conn: Connection, f: Filters = Filters()) -> dict[str, list[tuple[float, int]]]:
    """Chats started (accepted offers) per UTC hour of the offer, per queue; hours without a chat are absent."""
    return offer_cube(conn, f).chats_per_hour_by_queue()


@dataclass(frozen=True)
class DecisionSummary:
    """The selection's decisions: counts by action and reason (see :func:`decisions_by_reason`), and the event
    times of the first and the last (None when there is none): the span the charts show."""

    by_reason: Mapping[str, int] = field(default_factory=dict)
    first_ts: float | None = None
    last_ts: float | None = None

    @property
    def decisions(self) -> int:
        return sum(v for k, v in self.by_reason.items() if ":" not in k)


def decision_summary(conn: Connection, f: Filters = Filters()) -> DecisionSummary:
    """One pass over the selection (through the index on ts when it has a time range)."""
    out: dict[str, int] = {}
    first: float | None = None
    last: float | None = None
    for action, reason, n, lo, hi in conn.execute(decision_summary_query(f)):
        n, lo, hi = int(n), float(lo), float(hi)
        out[action] = out.get(action, 0) + n
        if action == "none":
            out[f"none:{reason}"] = n
        first = lo if first is None else min(first, lo)
        last = hi if last is None else max(last, hi)
    return DecisionSummary(out, first, last)


def decision_summary_query(f: Filters = Filters()) -> sa.Select:
    """(action, reason, decisions, first ts, last ts) of the selection."""
    d = _decisions.alias("d")
    return (sa.select(d.c.action, d.c.reason, sa.func.count(), sa.func.min(d.c.ts), sa.func.max(d.c.ts))
            .where(*f.conditions(d)).group_by(d.c.action, d.c.reason))


def decisions_by_reason(conn: Connection, f: Filters = Filters()) -> dict[str, int]:
    """Decisions in the selection by action, and ``none`` decisions by reason: keys ``offer``, ``wait``,
    ``none``, and ``none:<reason>``."""
    return dict(decision_summary(conn, f).by_reason)


@dataclass(frozen=True)
class Uplift:
    """Intention-to-treat uplift of the goal rate: offered minus withheld (holdout) eligible visitors, as
    :func:`pcrules.uplift.estimate` judges it (:attr:`result`). ``estimate`` and ``interval`` are None until
    there is enough data (:attr:`enough`); :attr:`result` has the figures so far."""

    offered: int
    offered_converted: int
    withheld: int
    withheld_converted: int
    goal: str | None = None
    mde: float | None = None  # the smallest uplift worth detecting (absolute), for the sample size
    min_per_arm: int = _uplift.MIN_PER_ARM
    window_s: float = UPLIFT_WINDOW_S

    @property
    def result(self) -> _uplift.UpliftEstimate:
        return _uplift.estimate(self.offered_converted, self.offered, self.withheld_converted, self.withheld,
                                min_per_arm=self.min_per_arm, mde=self.mde, target_power=UPLIFT_POWER)

    @property
    def offered_rate(self) -> float | None:
        return self.offered_converted / self.offered if self.offered else None

    @property
    def withheld_rate(self) -> float | None:
        return self.withheld_converted / self.withheld if self.withheld else None

    @property
    def status(self) -> str:
        """``UpliftEstimate.status``: not_enough_data, positive, negative or inconclusive."""
        return self.result.status

    @property
    def enough(self) -> bool:
        return self.result.enough_data

    def still_needed(self) -> tuple[int, int]:
        """More (offered, withheld) visitors each group needs before the estimate counts: ``min_per_arm``, or
        :func:`pcrules.uplift.sample_size` for ``mde`` at the observed withheld rate and group sizes, whichever
        is more. (0, 0) when the sizes are enough (a group may still lack visitors with or without a goal)."""
        r = self.result
        need_o = need_w = self.min_per_arm
        if r.needed is not None:
            need_o, need_w = max(need_o, r.needed.treated), max(need_w, r.needed.control)
        return max(0, need_o - self.offered), max(0, need_w - self.withheld)

    def detectable(self) -> float | None:
        """The smallest uplift these groups detect with 80 % power at the withheld group's rate."""
        p = self.withheld_rate
        if p is None or not self.offered:
            return None
        return _uplift.detectable_uplift(p, self.offered, self.withheld, target_power=UPLIFT_POWER)

    @property
    def missing(self) -> str:
        """What is lacking for an estimate ('' when there is enough)."""
        if self.enough:
            return ""
        more_o, more_w = self.still_needed()
        needs = []
        if more_o:
            needs.append(f"{more_o:,} more offered")
        if more_w:
            needs.append(f"{more_w:,} more withheld")
        target = f"to detect {100 * self.mde:g} pp" if self.mde else f"for {self.min_per_arm:,} in each group"
        # "1 more offered visitor", "1 more offered and 2 more withheld visitors": the noun agrees with the last
        noun = "visitor" if (more_w or more_o) == 1 else "visitors"
        text = f"needs {' and '.join(needs)} {noun} {target}" if needs else ""
        few = [name for name, x, n in (("offered", self.offered_converted, self.offered),
                                       ("withheld", self.withheld_converted, self.withheld))
               if n and min(x, n - x) < _uplift.MIN_EVENTS]
        if few:
            lack = f"{_uplift.MIN_EVENTS} visitors with and without a goal among the {' and the '.join(few)}"
            text = f"{text}; needs {lack}" if text else f"needs {lack}"
        return text

    @property
    def estimate(self) -> float | None:
        return self.result.estimate if self.enough else None

    @property
    def interval(self) -> tuple[float, float] | None:
        r = self.result
        return (r.ci_low, r.ci_high) if self.enough else None  # type: ignore[return-value]


UnitCounts = tuple[tuple[Any, ...], ...]


def uplift(conn: Connection, f: Filters = Filters(), goal: str | None = None, *, mde: float | None = None,
           window_s: float = UPLIFT_WINDOW_S) -> Uplift:
    """The intention-to-treat estimate described in the module docstring: :func:`uplift_units`, then the
    selection's rows added up (:func:`uplift_of`)."""
    return uplift_of(uplift_units(conn, f.start, f.end, goal, window_s), f, goal, mde=mde, window_s=window_s)


def uplift_units(conn: Connection, start: float | None = None, end: float | None = None,
                 goal: str | None = None, window_s: float = UPLIFT_WINDOW_S) -> UnitCounts:
    """:func:`pcrules.uplift.unit_counts` of the visitors who became eligible in ``[start, end)``: one SQL query,
    a few rows per rule x page x queue x group. The same rows serve every queue and page filter."""
    return tuple(_uplift.unit_counts(conn, window_s=window_s, goals=goal, since=start, until=end))


def uplift_of(rows: UnitCounts, f: Filters, goal: str | None = None, *, mde: float | None = None,
              window_s: float = UPLIFT_WINDOW_S) -> Uplift:
    """The uplift of the visitors in ``rows`` (:func:`uplift_units`) on the selection's queue and page."""
    counts = {0: [0, 0], 1: [0, 0]}
    for _rule, page, queue, holdout, n, converted in rows:
        if (f.queue is None or queue == f.queue) and (f.page is None or page == f.page):
            counts[int(bool(holdout))][0] += n
            counts[int(bool(holdout))][1] += converted
    return Uplift(counts[0][0], counts[0][1], counts[1][0], counts[1][1], goal, mde, window_s=window_s)


RECENT_COLUMNS = ("ts", "visitor_id", "session_id", "page", "seconds_on_page", "action", "reason", "rule", "queue",
                  "score", "status")


def recent_decisions(conn: Connection, f: Filters = Filters(), limit: int = 25) -> list[dict[str, Any]]:
    """The latest ``limit`` decisions of the selection (by event time), with the outcome of offers."""
    rows = conn.execute(recent_decisions_query(f, limit)).all()
    return [dict(zip(RECENT_COLUMNS, row, strict=True)) for row in rows]


def recent_decisions_query(f: Filters = Filters(), limit: int = 25) -> sa.Select:
    limit = max(1, min(int(limit), 500))
    d, o = _decisions.alias("d"), _outcomes.alias("o")
    return (sa.select(*(d.c[c] for c in RECENT_COLUMNS[:-1]), o.c.status)
            .select_from(d.outerjoin(o, sa.and_(d.c.offer_id.is_not(None), o.c.offer_id == d.c.offer_id)))
            .where(*f.conditions(d)).order_by(d.c.ts.desc(), d.c.id.desc()).limit(limit))


# --------------------------------------------------------------------------- the live ruleset / bundle


@dataclass(frozen=True)
class LiveRuleset:
    """What serves: the published bundle when one is configured, and the ruleset last activated in the log."""

    source: str  # "bundle" | "log" | "none"
    spec: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the rule spec (as written)
    name: str | None = None
    version: str | None = None
    bundle_version: str | None = None
    created: str | None = None  # bundle publish time (ISO), or the log's activation time
    model: str | None = None
    metrics: Mapping[str, Any] | None = None
    bundle_problem: str | None = None  # a bundle was configured but could not be loaded
    log_ruleset: tuple[str, str] | None = None  # (name, version) of the latest decision in the log

    @property
    def capacities(self) -> dict[str, float]:
        queues = self.spec.get("queues") or {}
        return {str(q): float(c["capacity_per_hour"]) for q, c in queues.items()
                if isinstance(c, Mapping) and isinstance(c.get("capacity_per_hour"), (int, float))}


def live_ruleset(conn: Connection | None, bundle_path: str | os.PathLike | None = None) -> LiveRuleset:
    """The bundle at ``bundle_path`` (a publish directory or a version), verified; without one (or when it
    does not load) the ruleset last activated in the log."""
    log_ruleset = None
    latest = None
    if conn is not None:
        d, r = _decisions, _rulesets
        row = conn.execute(sa.select(d.c.ruleset, d.c.ruleset_version).order_by(d.c.id.desc()).limit(1)).first()
        log_ruleset = (row[0], row[1]) if row else None
        latest = conn.execute(sa.select(r.c.name, r.c.version, r.c.activated_at, r.c.spec)
                              .order_by(r.c.id.desc()).limit(1)).first()
    problem = None
    if bundle_path not in (None, ""):
        from ..bundle import load_bundle  # standard library + PyYAML only

        try:
            b = load_bundle(bundle_path)
            m = b.manifest
            return LiveRuleset("bundle", dict(b.spec.source), b.spec.name, b.spec.version, b.version,
                               m.get("created"), (m.get("model") or {}).get("kind"), m.get("metrics"), None,
                               log_ruleset)
        except (PcrulesError, OSError) as exc:
            problem = str(exc)
    if latest is not None:
        try:  # JSON text; a PostgreSQL json / jsonb column comes back decoded
            spec = latest[3] if isinstance(latest[3], Mapping) else json.loads(latest[3])
        except (TypeError, ValueError):
            spec = {}
        created = datetime.fromtimestamp(float(latest[2]), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return LiveRuleset("log", spec if isinstance(spec, dict) else {}, latest[0], latest[1], None, created,
                           None, None, problem, log_ruleset)
    return LiveRuleset("none", {}, bundle_problem=problem, log_ruleset=log_ruleset)


_OPS = {"eq": "=", "ne": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤", "in": "in", "not_in": "not in",
        "matches": "matches"}


def describe_conditions(when: Any) -> str:
    """A rule's ``when`` as one line: ``page = Checkout and seconds_on_page ≥ 90``."""
    if not isinstance(when, Mapping):
        return ""
    parts = []
    for fld, cond in when.items():
        if fld == "any_of" and isinstance(cond, list):
            alternatives = [describe_conditions(c) for c in cond]
            parts.append("(" + " or ".join(f"{a}" for a in alternatives if a) + ")")
        elif isinstance(cond, Mapping):
            for op, value in cond.items():
                if op == "exists":
                    parts.append(f"{fld} {'present' if value else 'absent'}")
                elif op == "matches":
                    parts.append(f"{fld} matches /{value}/")
                else:
                    parts.append(f"{fld} {_OPS.get(op, op)} {show_value(value)}")
        else:
            parts.append(f"{fld} = {show_value(cond)}")
    return " and ".join(parts)


def show_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
