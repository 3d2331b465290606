"""Queries and widgets behind the Voila ops dashboard (``dashboards/ops.ipynb``).

Two layers:

* **Queries** (:mod:`.queries`, SQLAlchemy Core): each takes a read-only connection to
  the decision log, a SQLite file or a PostgreSQL database (:mod:`pcrules.logdb`;
  schema in ``data/README.md``), and a :class:`Filters`, and aggregates in SQL, the
  same statement on either database. Nothing loads the log into memory: a refresh runs a few
  grouped queries: decisions by action and reason (:func:`decision_summary`),
  offers by (hour, page, rule, queue, outcome) (:func:`offer_cube`, through the
  log's partial index on ``offer_id``: offers only), eligible visitors by arm
  with their goals (:func:`uplift`), the log's size and time span; and two
  bounded ones: the latest decisions, and the pages and queues of the latest
  100,000 decisions for the filters (:func:`choices`). Every tile and chart is
  a sum over those few thousand grouped rows. Time filters use the index on
  ``ts``. The offers and the uplift's visitors are read per time range, and a
  queue or page filter picks from those rows; every answer (and every chart)
  is remembered by its question and the log's stamp (:func:`log_stamp`, four
  row ids), so choosing a filter again, or Refresh on an unchanged log, reads
  nothing. The tiles are filled first; then the decisions are counted and the
  charts drawn, by a helper thread with ``background_charts`` (the notebook's
  choice: the page shows as soon as the tiles have their numbers).
* **Widgets** (:class:`Dashboard`, :func:`dashboard`): ipywidgets and matplotlib
  (PNG images in ``Image`` widgets: no JavaScript library, nothing from a CDN),
  imported only when a dashboard is built.

Definitions (what the tiles mean)
---------------------------------
The filters select *decisions*: event time ``ts`` in ``[start, end)``, and the
decision's ``queue`` and ``page``. An offer belongs to the selection when the
decision that made it does; its outcome is counted with it, whenever it came.

* **offers**: decisions with action ``offer``.
* **accept / decline / expiry rate**: accepted, declined and expired offers
  divided by the offers that have *ended* (an outcome is logged); the three
  add up to 100 %. Offers still waiting for an answer are shown as pending.
* **chats started**: accepted offers (an accept routes the visitor to a CSR
  in the offer's queue).
* **uplift**: :mod:`pcrules.uplift`'s intention-to-treat estimate, its
  definitions unchanged (see there). The unit is the *eligible visitor*: one
  with an offer (action ``offer``, the treated group) or, in the holdout group,
  a would-be offer (``holdout = 1``, the control group); her arm, time, page
  and queue are those of her *first* such decision in the whole log, and the
  filters select visitors by it (time range: she became eligible in it; queue,
  page: her first offer's). She *converts* when the log holds a goal (any goal,
  or the one named) of hers within ``window_s`` (a day) after that decision.
  Uplift = goal rate of the offered minus that of the withheld, whether or not
  the offered accepted (intention to treat), with Newcombe's 95 % interval
  (:func:`pcrules.uplift.estimate`). The tile says "not enough data yet"
  while pcrules.uplift says so (``UpliftEstimate.status``): fewer than
  ``min_per_arm`` (100) visitors in a group, fewer than 5 with or without a
  goal in a group, or, when the dashboard is given a minimum uplift worth
  detecting (``mde``), fewer than :func:`pcrules.uplift.sample_size` needs to
  detect it with 80 % power; it then shows how many more visitors each group
  needs, and the interval so far. With an estimate, it also shows the smallest
  uplift these groups detect with 80 % power (:func:`pcrules.uplift.detectable_uplift`).
  A visitor whose window has not closed yet (the last day) counts as not
  converted yet in both groups alike.
* **blocked reasons**: ``none`` decisions by reason (``no_rule``, no rule
  matched, is counted but not drawn: it is most decisions and not a block).
* **queue load**: chats started per hour in each queue (by offer time) against
  the queue's ``capacity_per_hour`` in the live ruleset.

Hours are UTC hours (labels in the dashboard's time zone, which shifts whole
hours for every zone with whole-hour offsets). "Last 24 hours" and the other
relative ranges end at the log's latest decision, not at the wall clock, so a
replayed log shows its own last day. The dashboard opens on the last 7 days of
activity (a demo's sample from months ago and today's decisions are not drawn
on one axis) and says when older decisions exist. The per-hour charts span the
selection's first to last decision, every hour drawn, quiet ones as zero: a
long quiet stretch keeps its width, and the note under the chart names it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from .. import logdb
from . import queries
from .memo import Memo
from .queries import (
    BREAKDOWN_LIMIT,
    BUNDLE_ENV,
    DEFAULT_RANGE,
    RANGE_SECONDS,
    TIME_RANGES,
    DecisionSummary,
    FilterError,
    Filters,
    LiveRuleset,
    LogInfo,
    LogNotReadable,
    OfferCounts,
    OfferCube,
    Uplift,
    choices,
    decision_summary,
    describe_conditions,
    live_ruleset,
    log,
    log_info,
    log_stamp,
    offer_cube,
    open_log,
    recent_decisions,
    resolve_log_path,
    show_value,
    time_filters,
    uplift_of,
    uplift_units,
    zone_of,
)
from .text import duration, metric_html, metric_rows, plural, short_id
from .text import esc as _esc

LogUnavailable = LogNotReadable  # its name before pcrules.errors.LogUnavailable (a log that cannot be written)

__all__ = [*queries.__all__, "LogUnavailable", "uplift_tile", "Dashboard", "dashboard"]


def __getattr__(name: str) -> Any:  # every query's name, as when queries and view were one module
    try:
        return getattr(queries, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

# --------------------------------------------------------------------------- formatting


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_rate(r: float | None) -> str:
    return "–" if r is None else f"{100 * r:.1f} %"


def fmt_pp(x: float) -> str:
    return f"{100 * x:+.1f} pp".replace("-", "−")


# --------------------------------------------------------------------------- widgets

CSS = """
<style>
.pcrules-ops { font-family: var(--jp-ui-font-family, sans-serif); color: #1f2933; }
.pcrules-ops h2 { margin: 4px 0; font-size: 20px; }
.pcrules-sub { color: #52606d; font-size: 12px; }
.pcrules-tile-body { border: 1px solid #d9e2ec; border-radius: 6px; padding: 8px 12px; background: #f8fafc;
  min-height: 74px; }
.pcrules-tile-title { font-size: 12px; color: #52606d; text-transform: uppercase; letter-spacing: .04em; }
.pcrules-tile-value { font-size: 26px; font-weight: 600; line-height: 1.3; }
.pcrules-tile-note { font-size: 11px; color: #52606d; line-height: 1.4; }
.pcrules-insufficient .pcrules-tile-value { font-size: 16px; color: #7b8794; padding: 6px 0; }
.pcrules-table { border-collapse: collapse; font-size: 12px; width: 100%; }
.pcrules-table th, .pcrules-table td { border-bottom: 1px solid #e4e7eb; padding: 3px 6px; text-align: left;
  vertical-align: top; }
.pcrules-table th { background: #f0f4f8; }
.pcrules-bundle-info, .pcrules-metrics { width: auto; min-width: 45%; }
.pcrules-section { font-size: 15px; font-weight: 600; margin: 10px 0 4px 0; }
.pcrules-message-body { border: 1px solid #f0b429; background: #fffbea; border-radius: 6px; padding: 12px 16px;
  font-size: 14px; }
.pcrules-note { color: #8d2b0b; }
.pcrules-older { color: #8d2b0b; }
.pcrules-bins summary { cursor: pointer; color: #52606d; }
.pcrules-bins-table { width: auto; margin-top: 2px; }
.pcrules-metric-line { margin-bottom: 2px; }
</style>
"""

TILES = (("offers", "Offers"), ("accept_rate", "Accept rate"), ("decline_rate", "Decline rate"),
         ("expiry_rate", "Expiry rate"), ("chats_started", "Chats started"), ("uplift", "Uplift vs holdout"))
CHARTS = (("over_time", "Offers and outcomes per hour"), ("by_page", "Offers by page"),
          ("by_rule", "Offers by rule"), ("by_queue", "Offers by queue"),
          ("queue_load", "Queue load: chats started per hour vs capacity"), ("blocked", "Blocked: no-offer reasons"))
COLORS = {"offers": "#3e4c59", "accepted": "#2f9e44", "declined": "#e8590c", "expired": "#adb5bd",
          "pending": "#74c0fc"}


def tile_html(key: str, title: str, value: str, note: str = "", *, data_value: Any = "", state: str = "",
              **data: Any) -> str:
    """One tile; ``data-value`` holds the number shown, unrounded (rates as fractions), for tests and scrapers."""
    extra = f' data-state="{_esc(state)}"' if state else ""
    extra += "".join(f' data-{k}="{_esc(v)}"' for k, v in data.items())
    cls = "pcrules-tile-body" + (" pcrules-insufficient" if state == "insufficient" else "")
    return (f'<div class="{cls}" data-tile="{_esc(key)}" data-value="{_esc(data_value)}"{extra}>'
            f'<div class="pcrules-tile-title">{_esc(title)}</div>'
            f'<div class="pcrules-tile-value">{_esc(value)}</div>'
            f'<div class="pcrules-tile-note">{_esc(note)}</div></div>')


def _raw(x: float | None) -> str:
    """A rate as the tiles' ``data-value`` (for tests and scrapers): 6 decimals, '' when undefined."""
    return "" if x is None else f"{x:.6f}"


VERDICTS = {"positive": "offering helps", "negative": "offering hurts", "inconclusive": "no clear effect yet"}


def uplift_tile(up: Uplift) -> str:
    """The uplift tile: ``data-state`` ``estimate`` (``data-value``, ``data-low``, ``data-high``: the estimate and
    its 95 % interval; ``data-status`` positive / negative / inconclusive; ``data-detectable``) or
    ``insufficient`` ("Not enough data yet", with ``data-needed-offered`` / ``data-needed-withheld``: the
    visitors each group still needs, and the interval so far in the note)."""
    r = up.result
    goal = f"goal {up.goal}" if up.goal else "any goal"
    groups = (f"{fmt_int(up.offered)} offered vs {fmt_int(up.withheld)} withheld visitors "
              f"({fmt_rate(up.offered_rate)} vs {fmt_rate(up.withheld_rate)}, {goal} within {up.window_s / 3600:g} h)")
    title = "Uplift vs holdout (ITT)"
    if up.enough:
        low, high = up.interval  # type: ignore[misc]
        detect = up.detectable()
        power = "" if detect is None else f"; detects {100 * detect:.1f} pp or more with 80 % power"
        return tile_html("uplift", title, fmt_pp(up.estimate),  # type: ignore[arg-type]
                         f"95 % CI {fmt_pp(low)} to {fmt_pp(high)}, {VERDICTS[r.status]}; {groups}{power}",
                         data_value=_raw(up.estimate), state="estimate", low=_raw(low), high=_raw(high),
                         status=r.status, detectable=_raw(detect))
    more_o, more_w = up.still_needed()
    so_far = "" if r.estimate is None else (f"so far {fmt_pp(r.estimate)} (95 % CI {fmt_pp(r.ci_low)} to "  # type: ignore[arg-type]
                                            f"{fmt_pp(r.ci_high)}); ")  # type: ignore[arg-type]
    return tile_html("uplift", title, "Not enough data yet", f"{up.missing}; {so_far}{groups}", data_value="",
                     state="insufficient", status=r.status, **{"needed-offered": more_o, "needed-withheld": more_w})


class Dashboard:
    """The ops dashboard: filters, tiles, charts, the live bundle and recent decisions, over one log.

    Every widget value from the browser is checked in the kernel (dropdowns accept only their options, dates
    only dates; :class:`Filters` validates again) and every query is parameterised. A problem with the log is
    shown as a message, never as a traceback.
    """

    def __init__(self, log_path: str | os.PathLike | None = None, bundle_path: str | os.PathLike | None = None,
                 *, tz: str = "UTC", recent_rows: int = 25, goal: str | None = None, mde: float | None = None,
                 background_charts: bool = False):
        import ipywidgets as w

        self.w = w
        self.log_path = resolve_log_path(log_path)
        self.log_name = logdb.describe(self.log_path)  # a database URL without its password
        bundle = bundle_path if bundle_path not in (None, "") else os.environ.get(BUNDLE_ENV) or None
        self.bundle_path = Path(bundle).expanduser() if bundle else None
        try:
            self.zone = zone_of(tz)
            self.tz = tz
        except ValueError:
            self.zone, self.tz = UTC, "UTC"
        self.recent_rows = max(1, min(int(recent_rows), 500))
        self.goal = goal or None
        self.mde = None if mde in (None, 0) else float(mde)  # type: ignore[arg-type]
        if self.mde is not None and not 0.0 < self.mde < 1.0:
            raise ValueError(f"mde: expected the smallest uplift worth detecting, a number in (0, 1), got {mde!r}")
        self.info: LogInfo | None = None
        self.live: LiveRuleset | None = None
        self.memo = Memo()
        self.refreshes = 0
        self._busy = False
        # With background_charts, a refresh returns once the tiles show and a helper thread draws the charts
        # (matplotlib: most of a refresh); a chart of a selection left meanwhile is never shown.
        self._drawer = ThreadPoolExecutor(1, thread_name_prefix="pcrules-ops-charts") if background_charts else None
        self._drawing: Future | None = None
        self._generation = 0
        self._details_lock = threading.Lock()

        self.header = w.HTML()
        self.message = w.HTML()
        self.message.add_class("pcrules-message")
        self.status = w.HTML()
        self.status.add_class("pcrules-status")
        self.time_range = w.Dropdown(options=list(TIME_RANGES), value=DEFAULT_RANGE, description="Time range",
                                     style={"description_width": "initial"}, layout=w.Layout(width="220px"))
        # wide enough for the browser's whole date (yyyy-mm-dd and the calendar button) after a short label
        dates = {"disabled": True, "style": {"description_width": "initial"}}
        self.start_day = w.DatePicker(description="From", layout=w.Layout(width="215px"), **dates)
        self.end_day = w.DatePicker(description="To", layout=w.Layout(width="200px"), **dates)
        self.queue = w.Dropdown(options=[("All queues", "")], value="", description="Queue",
                                layout=w.Layout(width="210px"))
        self.page = w.Dropdown(options=[("All pages", "")], value="", description="Page",
                               layout=w.Layout(width="230px"))
        self.refresh_button = w.Button(description="Refresh", icon="refresh", button_style="primary",
                                       layout=w.Layout(width="110px"))
        for name, widget in (("time-range", self.time_range), ("from", self.start_day), ("to", self.end_day),
                             ("queue", self.queue), ("page", self.page), ("refresh", self.refresh_button)):
            widget.add_class(f"pcrules-filter-{name}")
        self.filters_box = w.HBox([self.time_range, self.start_day, self.end_day, self.queue, self.page,
                                   self.refresh_button], layout=w.Layout(flex_flow="row wrap", align_items="center"))
        self.tiles = {key: w.HTML(layout=w.Layout(flex="1 1 150px", margin="4px")) for key, _ in TILES}
        for key, widget in self.tiles.items():
            widget.add_class("pcrules-tile")
            widget.add_class(f"pcrules-tile-{key.replace('_', '-')}")
        self.chart_images = {key: w.Image(format="png", layout=w.Layout(width="100%", height="auto"))
                             for key, _ in CHARTS}
        self.chart_notes = {key: w.HTML() for key, _ in CHARTS}
        charts = []
        for key, title in CHARTS:
            box = w.VBox([w.HTML(f'<div class="pcrules-section">{_esc(title)}</div>'), self.chart_images[key],
                          self.chart_notes[key]], layout=w.Layout(min_width="0"))
            box.add_class("pcrules-chart")
            box.add_class(f"pcrules-chart-{key.replace('_', '-')}")
            charts.append(box)
        self.charts_box = w.GridBox(charts, layout=w.Layout(grid_template_columns="repeat(2, minmax(0, 1fr))",
                                                            grid_gap="10px 18px", width="100%"))
        self.bundle_html = w.HTML()
        self.bundle_html.add_class("pcrules-bundle")
        self.recent_html = w.HTML()
        self.recent_html.add_class("pcrules-recent")
        self.body = w.VBox([
            self.status,
            w.HBox(list(self.tiles.values()), layout=w.Layout(flex_flow="row wrap", width="100%")),
            self.charts_box,
            w.HTML('<div class="pcrules-section">Live ruleset</div>'), self.bundle_html,
            w.HTML('<div class="pcrules-section">Recent decisions</div>'), self.recent_html,
        ])
        self.root = w.VBox([w.HTML(CSS), self.header, self.filters_box, self.message, self.body],
                           layout=w.Layout(width="100%"))
        self.root.add_class("pcrules-ops")

        # matplotlib takes ~0.5 s to import: do it while the first queries run (the drivers release the GIL)
        threading.Thread(target=_import_matplotlib, name="pcrules-ops-mpl", daemon=True).start()
        self.refresh_button.on_click(lambda _: self._safely(self.refresh, reload_choices=True))
        self.time_range.observe(self._on_range, names="value")
        for widget in (self.start_day, self.end_day, self.queue, self.page):
            widget.observe(lambda _: self._safely(self.refresh), names="value")
        self._safely(self.refresh, reload_choices=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:  # displays as its widget (the notebook's last line)
        return self.root._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ events

    def _on_range(self, change: Any) -> None:
        custom = change["new"] == "custom"
        self.start_day.disabled = self.end_day.disabled = not custom
        if custom and self.info is not None and self.info.first_ts is not None:
            # the days of the default range (the latest week of activity), not the whole log's span
            first = max(self.info.first_ts, self.info.last_ts - RANGE_SECONDS[DEFAULT_RANGE])  # type: ignore[operator]
            with self._hold():  # set both dates, then refresh once
                if self.start_day.value is None:
                    self.start_day.value = datetime.fromtimestamp(first, self.zone).date()
                if self.end_day.value is None:
                    self.end_day.value = datetime.fromtimestamp(self.info.last_ts, self.zone).date()
        self._safely(self.refresh)

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        busy, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = busy

    def _safely(self, action: Any, **kwargs: Any) -> None:
        """Run a refresh; whatever goes wrong becomes a message on the page (the details go to the server log)."""
        if self._busy:
            return
        with self._hold():
            try:
                action(**kwargs)
            except LogNotReadable as exc:
                self._show_message(str(exc), exc.kind)
            except FilterError as exc:  # e.g. dates reversed: say so, keep the last numbers
                self.status.value = (f'<div class="pcrules-sub pcrules-note">Cannot apply the filters: {_esc(exc)}; '
                                     f'the numbers below are for the previous selection.</div>')
            except SQLAlchemyError as exc:
                reason = queries.describe_error(exc)
                log.warning("ops dashboard: reading %s failed: %s", self.log_name, reason)
                self._show_message(f"Reading the decision log {self.log_name} failed ({reason}). Press Refresh to "
                                   f"try again.", "unreadable")
            except Exception as exc:  # never a traceback in the page: log it for the operator of the server
                log.exception("ops dashboard: refresh failed")
                self._show_message(f"The dashboard could not be refreshed ({type(exc).__name__}: {exc}). Press "
                                   f"Refresh to try again; details are in the dashboard server's log.", "failed")

    def _show_message(self, text: str, kind: str) -> None:
        self.message.value = (f'<div class="pcrules-message-body" data-kind="{_esc(kind)}">{_esc(text)}</div>')
        self.message.layout.display = None
        self.body.layout.display = "none"
        for widget in (self.time_range, self.queue, self.page):
            widget.disabled = True
        self.header.value = self._header_html()

    # ------------------------------------------------------------------ refresh

    def filters(self) -> Filters:
        queue = self.queue.value or None
        page = self.page.value or None
        last = self.info.last_ts if self.info else None
        try:
            start, end = time_filters(self.time_range.value, last, start_day=self.start_day.value,
                                      end_day=self.end_day.value, tz=self.tz)
            return Filters(start, end, queue, page)
        except ValueError as exc:
            raise FilterError(str(exc)) from None

    def refresh(self, reload_choices: bool = False) -> None:
        started = time.perf_counter()
        with open_log(self.log_path) as conn:
            stamp = log_stamp(conn)
            self.info = self.memo.get((stamp, "info"), lambda: log_info(conn))
            if self.info.decisions == 0:
                raise LogNotReadable(f"The decision log {self.log_name} has no decisions yet. They appear here as "
                                     f"soon as the runtime makes them (press Refresh).", kind="empty")
            if reload_choices or self.live is None:
                self.live = live_ruleset(conn, self.bundle_path)
                self._set_choices(*choices(conn, list(self.live.spec.get("queues") or ())))
            f = self.filters()
            cube, up = self._offers(conn, stamp, f)
        self.message.value = ""
        self.message.layout.display = "none"
        self.body.layout.display = None
        for widget in (self.time_range, self.queue, self.page):
            widget.disabled = False
        self._render_tiles(cube.total(), up)
        self.refreshes += 1
        self.header.value = self._header_html()
        self.status.value = self._status_html(f, cube, None, time.perf_counter() - started)
        self.bundle_html.value = self._bundle_html()
        with self._details_lock:
            self._generation += 1
            job = (self._generation, stamp, f, cube, started)
        if self._drawer is None:
            self._show_details(*job)
        else:
            self.charts_box.add_class("pcrules-charts-pending")
            self._drawing = self._drawer.submit(self._show_details, *job)

    def _offers(self, conn: Connection, stamp: tuple[int, ...], f: Filters) -> tuple[OfferCube, Uplift]:
        """The tiles' figures. The offers and the uplift's visitors are read for the time range alone (a queue
        or page filter picks from those rows), and remembered by the time range and the log's stamp."""
        span = Filters(f.start, f.end)
        # The uplift's scan runs beside the offers' on a connection of its own (the drivers release the GIL).
        with ThreadPoolExecutor(1, thread_name_prefix="pcrules-ops") as pool:
            units = pool.submit(self.memo.get, (stamp, span, self.goal, "units"),
                                lambda: _with_log(self.log_path, uplift_units, f.start, f.end, self.goal))
            cube = self.memo.get((stamp, span, "cube"), lambda: offer_cube(conn, span))
            return cube.select(f.queue, f.page), uplift_of(units.result(), f, self.goal, mde=self.mde)

    def _show_details(self, generation: int, stamp: tuple[int, ...], f: Filters, cube: OfferCube,
                      started: float) -> None:
        """The rest of a refresh, after the tiles: the selection's decisions (a scan of it), the latest ones and
        the charts; shown unless a newer selection came meanwhile."""
        if generation != self._generation:
            return  # queued behind a newer refresh
        live = self.live.bundle_version if self.live else None
        try:
            summary = self.memo.get((stamp, f, "summary"), lambda: _with_log(self.log_path, decision_summary, f))
            if generation != self._generation:
                return  # another filter was chosen meanwhile: its refresh draws its own charts
            recent = self.memo.get((stamp, f, self.recent_rows, "recent"),
                                   lambda: _with_log(self.log_path, recent_decisions, f, self.recent_rows))
            charts = self.memo.get((stamp, f, live, "charts"), lambda: self._charts(cube, summary, f))
        except Exception as exc:
            if self._drawer is None:
                raise  # in the refresh itself: its message says what went wrong
            log.exception("ops dashboard: the charts of %s failed", self.log_name)
            with self._details_lock:
                if generation == self._generation:
                    self.status.value += _note(f"The charts could not be drawn ({type(exc).__name__}); press "
                                               f"Refresh to try again; details are in the dashboard server's log.")
            return
        with self._details_lock:
            if generation != self._generation:
                return
            for name, (png, note) in charts.items():
                self.chart_images[name].value = png
                self.chart_notes[name].value = note
            self.recent_html.value = self._recent_html(recent, summary)
            self.status.value = self._status_html(f, cube, summary, time.perf_counter() - started)
            self.charts_box.remove_class("pcrules-charts-pending")

    def wait_for_charts(self, timeout: float | None = None) -> None:
        """Return once the charts of the latest refresh show (at once without ``background_charts``)."""
        if self._drawing is not None:
            self._drawing.result(timeout)

    def _status_html(self, f: Filters, cube: OfferCube, summary: DecisionSummary | None, seconds: float) -> str:
        """What the selection is; its decisions are counted after the tiles show (None: not yet)."""
        older = ""
        info = self.info
        if info is not None and info.first_ts is not None and f.start is not None and info.first_ts < f.start:
            older = (f' <span class="pcrules-older">Older decisions exist, from {_esc(self._when(info.first_ts))}: '
                     f'choose All time or Custom dates to see them.</span>')
        n = "" if summary is None else summary.decisions
        counted = "counting the decisions" if summary is None else plural(summary.decisions, "decision")
        return (f'<div class="pcrules-sub" data-decisions="{n}" data-refresh="{self.refreshes}" '
                f'data-range-start="{_esc(f.start if f.start is not None else "")}" '
                f'data-range-end="{_esc(f.end if f.end is not None else "")}" data-older="{int(bool(older))}">'
                f'Showing {_esc(self._describe(f))}: {counted}, {plural(cube.total().offers, "offer")}.{older} '
                f'Refreshed in {seconds:.2f} s.</div>')

    def _set_choices(self, queues: list[str], pages: list[str]) -> None:
        with self._hold():
            for widget, label, values in ((self.queue, "All queues", queues), (self.page, "All pages", pages)):
                current = widget.value
                widget.options = [(label, "")] + [(v, v) for v in values]
                widget.value = current if current in values else ""

    def _describe(self, f: Filters) -> str:
        parts = []
        choice = self.time_range.value
        last = self.info.last_ts if self.info else None
        if f.start is None and f.end is None:
            parts.append("all time")
        elif choice in RANGE_SECONDS:  # relative ranges end at the latest decision, not at the wall clock
            parts.append(f"the {dict((v, k) for k, v in TIME_RANGES)[choice].lower()} up to the latest decision "
                         f"({self._when(f.start)} to {self._when(last)} {self.tz})")
        else:
            parts.append(f"{self._when(f.start) if f.start is not None else 'start'} to "
                         f"{self._when(f.end) if f.end is not None else 'latest'} {self.tz}")
        parts.append(f"queue {f.queue}" if f.queue else "all queues")
        parts.append(f"page {f.page}" if f.page else "all pages")
        return ", ".join(parts)

    def _when(self, ts: float | None) -> str:
        return "–" if ts is None else datetime.fromtimestamp(ts, self.zone).strftime("%Y-%m-%d %H:%M")

    def _header_html(self) -> str:
        info = self.info
        span = ""
        if info is not None and info.decisions:
            span = (f" · {plural(info.decisions, 'decision')} from {self._when(info.first_ts)} to "
                    f"{self._when(info.last_ts)} ({self.tz})")
        refreshed = datetime.now(self.zone).strftime("%H:%M:%S")
        return (f'<div class="pcrules-ops"><h2>Proactive chat: operations</h2>'
                f'<div class="pcrules-sub">Decision log {_esc(self.log_name)}{_esc(span)} · refreshed {refreshed}'
                f'</div></div>')

    # ------------------------------------------------------------------ tiles

    def _render_tiles(self, c: OfferCounts, up: Uplift) -> None:
        ended = f"of {plural(c.ended, 'ended offer')}"
        self.tiles["offers"].value = tile_html("offers", "Offers", fmt_int(c.offers),
                                               f"{plural(c.pending, 'offer')} awaiting an answer", data_value=c.offers)
        for key, status, title in (("accept_rate", "accepted", "Accept rate"),
                                   ("decline_rate", "declined", "Decline rate"),
                                   ("expiry_rate", "expired", "Expiry rate (no answer)")):
            r = c.rate(status)
            self.tiles[key].value = tile_html(key, title, fmt_rate(r), f"{fmt_int(getattr(c, status))} {ended}",
                                              data_value=_raw(r))
        self.tiles["chats_started"].value = tile_html("chats_started", "Chats started", fmt_int(c.chats_started),
                                                      "accepted offers, routed to a CSR", data_value=c.chats_started)
        self.tiles["uplift"].value = uplift_tile(up)

    # ------------------------------------------------------------------ charts

    def _charts(self, cube: OfferCube, summary: DecisionSummary, f: Filters) -> dict[str, tuple[bytes, str]]:
        """Every chart's PNG and note, by chart key."""
        import matplotlib

        # Names from the log (pages, rules, queues) are text: never matplotlib's $mathtext$.
        with matplotlib.rc_context({"text.parse_math": False}):
            return self._draw_charts(cube, summary, f)

    def _draw_charts(self, cube: OfferCube, summary: DecisionSummary, f: Filters) -> dict[str, tuple[bytes, str]]:
        reasons = summary.by_reason
        hours = _hours(summary)  # every hour of the selection's span, quiet ones included
        hourly = cube.per_hour()
        out = {"over_time": (self._chart_over_time(hourly, hours), _note(self._over_time_note(hourly, hours)))}
        for key, column in (("by_page", "page"), ("by_rule", "rule"), ("by_queue", "queue")):
            rows = cube.by(column)
            shown = rows[:BREAKDOWN_LIMIT]
            note = (f"top {len(shown)} of {plural(len(rows), column)} by offers" if len(rows) > len(shown)
                    else f"{plural(len(rows), column)} with offers")
            out[key] = (self._chart_breakdown(shown), _note(note))
        capacities = self.live.capacities if self.live else {}
        if f.queue:
            capacities = {q: c for q, c in capacities.items() if q == f.queue}
        load = cube.chats_per_hour_by_queue()
        peaks = "; ".join(f"{q}: peak {plural(max(n for _, n in load.get(q, [(0, 0)])), 'chat')}/h of {c:g}"
                          for q, c in sorted(capacities.items()))
        out["queue_load"] = (self._chart_queue_load(load, capacities, hours),
                             _note(peaks or "no capacity_per_hour in the live ruleset"))
        out["blocked"] = (self._chart_blocked(reasons), _note(
            f"{plural(reasons.get('none:no_rule', 0), 'decision')} with no rule matching (not drawn); "
            f"{plural(reasons.get('wait', 0), 'wait')}"))
        return out

    def _over_time_note(self, hourly: list[tuple[float, OfferCounts]], hours: list[float]) -> str:
        """How many hours the chart shows and, when the log went quiet for a day or more, for how long: the
        axis keeps the quiet stretch at its true width rather than closing it up."""
        text = (f"{plural(len(hourly), 'hour')} with offers of the {plural(len(hours), 'hour')} shown; "
                f"hours in {self.tz}")
        if not hours:
            return text
        busy = [hours[0] - 3600] + [h for h, _ in hourly] + [hours[-1] + 3600]  # the span's ends count as busy
        gap, before = max((b - a - 3600, a) for a, b in zip(busy, busy[1:], strict=False))
        if gap >= 86400:
            text += f"; no offers for {duration(gap)} from {self._when(before + 3600)}"
        return text

    def _figure(self, height: float = 3.0) -> tuple[Any, Any]:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, height), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
        return fig, ax

    @staticmethod
    def _png(fig: Any) -> bytes:
        import io

        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    @staticmethod
    def _empty(ax: Any, text: str = "no offers in this selection") -> None:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#7b8794")
        ax.set_xticks([])
        ax.set_yticks([])

    def _chart_over_time(self, hourly: list[tuple[float, OfferCounts]], hours: list[float]) -> bytes:
        fig, ax = self._figure()
        if not hourly:
            self._empty(ax)
            return self._png(fig)
        by_hour = dict(hourly)
        xs = [datetime.fromtimestamp(h, self.zone) for h in [*hours, hours[-1] + 3600]]
        stacks = {key: [] for key in ("accepted", "declined", "expired", "pending")}
        for h in [*hours, hours[-1]]:  # one more point: the last hour's step ends an hour later
            c = by_hour.get(h, OfferCounts())
            for key in stacks:
                stacks[key].append(getattr(c, key))
        ax.stackplot(xs, *stacks.values(), labels=list(stacks), step="post",
                     colors=[COLORS[k] for k in stacks], linewidth=0)
        ax.set_ylabel("offers per hour", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_xlim(xs[0], xs[-1])
        _date_axis(ax, self.zone)
        _legend_above(ax)
        return self._png(fig)

    def _chart_breakdown(self, rows: list[tuple[str, OfferCounts]]) -> bytes:
        fig, ax = self._figure(height=max(2.4, 1.0 + 0.32 * len(rows)))
        if not rows:
            self._empty(ax)
            return self._png(fig)
        labels = [name if len(name) <= 28 else name[:27] + "…" for name, _ in rows][::-1]
        left = [0] * len(rows)
        for key in ("accepted", "declined", "expired", "pending"):
            values = [getattr(c, key) for _, c in rows][::-1]
            ax.barh(labels, values, left=left, color=COLORS[key], label=key, height=0.7)
            left = [a + b for a, b in zip(left, values, strict=True)]
        for y, total in enumerate(left):
            ax.text(total, y, f" {total:,}", va="center", fontsize=7)
        ax.set_xlabel("offers", fontsize=8)
        ax.margins(x=0.12)
        _legend_above(ax)
        return self._png(fig)

    def _chart_queue_load(self, load: dict[str, list[tuple[float, int]]], capacities: dict[str, float],
                          hours: list[float]) -> bytes:
        fig, ax = self._figure()
        queues = sorted(q for q in capacities if capacities[q] > 0)
        if not queues:
            self._empty(ax, "no queue in the live ruleset has a capacity_per_hour")
            return self._png(fig)
        palette = ["#1c7ed6", "#e8590c", "#2f9e44", "#ae3ec9", "#f59f00", "#0ca678", "#e03131", "#495057"]
        top = 100.0
        xs = [datetime.fromtimestamp(h, self.zone) for h in hours]
        for i, q in enumerate(queues):
            series = dict(load.get(q, []))
            if series:
                # every hour of the span, 0 without a chat: a line never bridges a quiet stretch
                share = [100.0 * series.get(h, 0) / capacities[q] for h in hours]
                top = max(top, *share)
                ax.step(xs, share, where="post", linewidth=0.9, color=palette[i % len(palette)],
                        label=f"{q} (capacity {capacities[q]:g}/h)")
            else:
                ax.plot([], [], "o-", color=palette[i % len(palette)],
                        label=f"{q} (capacity {capacities[q]:g}/h): no chats")
        ax.axhline(100, color="#c92a2a", linestyle="--", linewidth=1)
        ax.text(0.005, 100, " capacity", color="#c92a2a", fontsize=7, va="bottom", transform=ax.get_yaxis_transform())
        ax.set_ylim(0, top * 1.12)
        ax.set_ylabel("chats started per hour\n% of capacity", fontsize=8)
        if any(load.get(q) for q in queues):
            ax.set_xlim(xs[0], xs[-1] + timedelta(hours=1))
            _date_axis(ax, self.zone)
        else:
            ax.set_xticks([])
        _legend_above(ax)
        return self._png(fig)

    def _chart_blocked(self, reasons: dict[str, int]) -> bytes:
        fig, ax = self._figure()
        rows = sorted(((k.split(":", 1)[1], v) for k, v in reasons.items()
                       if k.startswith("none:") and k != "none:no_rule"), key=lambda kv: kv[1])
        if not rows:
            self._empty(ax, "no blocked decisions in this selection")
            return self._png(fig)
        labels = [("holdout (withheld)" if r == "holdout" else r) for r, _ in rows]
        ax.barh(labels, [v for _, v in rows], color="#c92a2a", height=0.65)
        for y, (_, v) in enumerate(rows):
            ax.text(v, y, f" {v:,}", va="center", fontsize=7)
        ax.set_xlabel("decisions", fontsize=8)
        ax.margins(x=0.12)
        return self._png(fig)

    # ------------------------------------------------------------------ bundle and recent decisions

    def _bundle_html(self) -> str:
        live = self.live
        if live is None or live.source == "none":
            text = "No ruleset is recorded in the log"
            if live is not None and live.bundle_problem:
                text += f"; the configured bundle could not be loaded: {live.bundle_problem}"
            return f'<div class="pcrules-sub" data-source="none">{_esc(text)}.</div>'
        rows = []
        if live.source == "bundle":
            rows += [("Bundle version", live.bundle_version), ("Published", live.created),
                     ("Ruleset", f"{live.name} {live.version}"), ("Model", live.model or "none (rules only)")]
        else:
            rows += [("Bundle", f"none configured ({BUNDLE_ENV})" if not live.bundle_problem
                      else f"not loaded: {live.bundle_problem}"),
                     ("Ruleset", f"{live.name} {live.version}"), ("Activated", live.created)]
        if live.log_ruleset and live.log_ruleset != (live.name, live.version):
            rows.append(("Note", f"the latest decision in the log came from ruleset {live.log_ruleset[0]} "
                                 f"{live.log_ruleset[1]}, not this one"))
        policy = live.spec.get("policy") or {}
        if policy:
            rows.append(("Policy", ", ".join(f"{k} {show_value(v)}" for k, v in policy.items())))
        out = [f'<div data-source="{_esc(live.source)}" data-version="{_esc(live.bundle_version or live.version)}">',
               '<table class="pcrules-table pcrules-bundle-info">']
        out += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows]
        out.append("</table>")
        if live.metrics:
            out.append('<div class="pcrules-section">Model metrics</div><table class="pcrules-table pcrules-metrics">')
            out += [f"<tr><th>{_esc(k)}</th><td>{metric_html(v)}</td></tr>" for k, v in metric_rows(live.metrics)]
            out.append("</table>")
        elif live.source == "bundle":
            out.append('<div class="pcrules-sub">No model metrics in the manifest.</div>')
        queues = live.spec.get("queues") or {}
        if queues:
            out.append('<div class="pcrules-section">Queues</div><table class="pcrules-table pcrules-queues">'
                       "<tr><th>queue</th><th>max wait (s)</th><th>capacity / h</th><th>hours</th></tr>")
            for q, c in queues.items():
                c = c if isinstance(c, Mapping) else {}
                hours = c.get("hours")
                hours_text = (f"{', '.join(hours.get('days', []))} {hours.get('start', '')}–{hours.get('end', '')} "
                              f"{hours.get('tz', '')}" if isinstance(hours, Mapping) else "always")
                out.append(f"<tr><td>{_esc(q)}</td><td>{_esc(c.get('max_wait_s', '–'))}</td>"
                           f"<td>{_esc(c.get('capacity_per_hour', '–'))}</td><td>{_esc(hours_text)}</td></tr>")
            out.append("</table>")
        rules = live.spec.get("rules") or []
        out.append('<div class="pcrules-section">Rules</div><table class="pcrules-table pcrules-rules">'
                   "<tr><th>rule</th><th>priority</th><th>queue</th><th>when (thresholds)</th></tr>")
        for r in sorted((r for r in rules if isinstance(r, Mapping)), key=lambda r: -(r.get("priority") or 0)):
            offer = r.get("offer") if isinstance(r.get("offer"), Mapping) else {}
            about = f'<div class="pcrules-sub">{_esc(r["description"])}</div>' if r.get("description") else ""
            out.append(f'<tr data-rule="{_esc(r.get("name"))}"><td>{_esc(r.get("name"))}{about}</td>'
                       f"<td>{_esc(r.get('priority'))}</td><td>{_esc(offer.get('queue'))}</td>"
                       f"<td>{_esc(describe_conditions(r.get('when')))}</td></tr>")
        out.append("</table></div>")
        return "".join(out)

    def _recent_html(self, recent: list[dict[str, Any]], summary: DecisionSummary) -> str:
        head = ("time", "visitor", "session", "page", "on page (s)", "action", "reason", "rule", "queue", "score",
                "outcome")
        out = [f'<div class="pcrules-sub">The latest {len(recent)} of {plural(summary.decisions, "decision")} in the '
               f"selection (times in {_esc(self.tz)}; ids shortened, the whole id on hover).</div>",
               '<table class="pcrules-table pcrules-recent-table"><tr>'
               + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
        for r in recent:
            score = "" if r["score"] is None else f"{r['score']:.3f}"
            cells = [_esc(c) for c in (self._when(r["ts"]), r["visitor_id"], r["session_id"], r["page"],
                                        f"{r['seconds_on_page']:g}", r["action"], r["reason"], r["rule"], r["queue"],
                                        score, r["status"])]
            cells[1:3] = [short_id(r["visitor_id"]), short_id(r["session_id"])]
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        out.append("</table>")
        return "".join(out)


def _with_log(path: Path | str, query: Any, *args: Any) -> Any:
    with open_log(path) as conn:
        return query(conn, *args)


def _import_matplotlib() -> None:
    with contextlib.suppress(Exception):  # the charts import it again and report any problem there
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.dates  # noqa: F401
        import matplotlib.figure  # noqa: F401


def _date_axis(ax: Any, zone: Any) -> None:
    from matplotlib import dates as mdates

    locator = mdates.AutoDateLocator(tz=zone)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone))


def _legend_above(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, ncols=min(4, len(handles)), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False,
                  borderaxespad=0.2, handlelength=1.2)


def _hours(summary: DecisionSummary) -> list[float]:
    """The start of every UTC hour from the selection's first decision to its last: the charts' time axis."""
    if summary.first_ts is None or summary.last_ts is None:
        return []
    first, last = summary.first_ts // 3600 * 3600, summary.last_ts // 3600 * 3600
    return [first + 3600.0 * i for i in range(int((last - first) // 3600) + 1)]


def _note(text: str) -> str:
    return f'<div class="pcrules-sub">{_esc(text)}</div>'


def dashboard(log_path: str | os.PathLike | None = None, bundle_path: str | os.PathLike | None = None,
              *, tz: str = "UTC", recent_rows: int = 25, goal: str | None = None,
              mde: float | None = None, background_charts: bool = False) -> Dashboard:
    """The dashboard (what ``dashboards/ops.ipynb`` displays; it displays as its widget, ``.root``).
    ``log_path`` / ``bundle_path``: None reads ``$PCRULES_DECISION_LOG`` / ``$PCRULES_BUNDLE`` (the demo's log
    when unset). ``goal``: the goal the uplift tile counts (None: any); ``mde``: the smallest uplift worth
    detecting (absolute, 0.05 = 5 points): the tile waits for the visitors needed to detect it.
    ``background_charts``: show the tiles first and draw the charts after (the notebook does)."""
    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # font-cache notices would show up as page output
    return Dashboard(log_path, bundle_path, tz=tz, recent_rows=recent_rows, goal=goal, mde=mde,
                     background_charts=background_charts)
