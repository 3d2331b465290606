"""What the analyst notebooks show: history loading, tables and matplotlib figures (``notebooks/01``, ``02``).

Every function returns a DataFrame or a ``matplotlib.figure.Figure`` (built without pyplot, so it works in
any kernel, in Voila and headless); the notebooks only call them. Figures display in a notebook as images.

History comes from :func:`load_history`: a directory written by ``pcrules sample-data`` /
``World.write`` (``events.*``, ``page_views.*``, ``offers.*``; only events are required), a single events
file (real history: map your column names with ``columns=``), or the shipped sample
(``data/sample_events.csv.gz``), whose page views and legacy offers are regenerated from the very call that
made it (the events are checked equal first). Every file goes through :mod:`pcrules.history`, so bad rows
are reported, not fatal.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "TIME_BINS",
    "History",
    "Trained",
    "acceptance_by",
    "acceptance_by_time",
    "event_truth",
    "feature_effects",
    "history_feedback",
    "load_history",
    "metrics_path_for",
    "new_figure",
    "offers_by_page",
    "overview",
    "page_table",
    "page_views_of",
    "plot_acceptance",
    "plot_dwell",
    "plot_feature_effects",
    "plot_offers",
    "plot_reliability",
    "plot_roc",
    "plot_sessions",
    "plot_truth_comparison",
    "report_table",
    "save_model",
    "session_table",
    "train_model",
    "train_shoppers",
    "truth_comparison",
]

TIME_BINS = (0, 10, 30, 60, 120, 180, 300, 600, 1800)
_ANSWERS = ("accept", "decline", "none")
_COLORS = {"accept": "#2e7d32", "decline": "#c62828", "none": "#9e9e9e"}


# ============================================================================================ loading


@dataclass
class History:
    """Events (required), page views and legacy offers (when known); ``generated``: a synthetic world whose
    ground truth (``needs_help`` per page view) is known."""

    events: pd.DataFrame
    page_views: pd.DataFrame | None = None
    offers: pd.DataFrame | None = None
    source: str = ""
    generated: bool = False
    notes: list[str] = field(default_factory=list)
    reports: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{self.source}: {len(self.events):,} events"]
        if self.page_views is not None:
            parts.append(f"{len(self.page_views):,} page views")
        if self.offers is not None:
            parts.append(f"{len(self.offers):,} legacy offers")
        text = ", ".join(parts) + (" (generated world: ground truth known)" if self.generated else "")
        for name, report in self.reports.items():
            problems = len(getattr(report, "problems", []) or [])
            if problems:
                text += f"\n{name}: {problems} row problem(s) reported (see .reports['{name}'])"
        return "\n".join([text, *self.notes])


def _find(directory: Path, name: str) -> Path | None:
    for suffix in (".parquet", ".csv.gz", ".csv"):
        path = directory / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def load_history(path: str | Path, *, columns: Mapping[str, Mapping[str, str]] | None = None) -> History:
    """History from a directory (``events.*`` and optionally ``page_views.*``, ``offers.*``) or an events file.

    ``columns``: per table (``"events"``, ``"page_views"``, ``"offers"``), our column name -> the file's
    (``{"events": {"visitor_id": "VisitorID"}}``). Raises FileNotFoundError / ``history.MissingColumns``.
    """
    from . import history, sample

    path = Path(path).expanduser()
    columns = dict(columns or {})
    if path.is_dir():
        found = {name: _find(path, name) for name in ("events", "page_views", "offers")}
        if found["events"] is None:
            raise FileNotFoundError(f"{path}: no events file (events.parquet, events.csv.gz or events.csv)")
        frames: dict[str, Any] = {}
        reports: dict[str, Any] = {}
        loaders = {"events": history.load_events, "page_views": history.load_page_views,
                   "offers": history.load_offers}
        for name, file in found.items():
            if file is not None:
                frames[name], reports[name] = loaders[name](file, columns.get(name))
        pv = frames.get("page_views")
        generated = pv is not None and "needs_help" in pv.columns and pv["needs_help"].notna().any()
        return History(frames["events"], pv, frames.get("offers"), str(path), bool(generated), [], reports)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    events, report = history.load_events(path, columns.get("events"))
    h = History(events, source=str(path), reports={"events": report})
    if path.resolve() == sample.SAMPLE_PATH.resolve():
        _attach_sample_world(h)
    return h


def _attach_sample_world(h: History) -> None:
    """The shipped sample is ``world.generate(2500, seed 7, ...)``'s events: regenerate its page views and
    offers, once its events are checked to be that world's."""
    from . import sample
    from .world import generate

    world = generate(visitors=sample.SAMPLE_VISITORS, seed=sample.SAMPLE_SEED, start=sample.SAMPLE_START,
                     days=sample.SAMPLE_DAYS)
    mine, theirs = h.events, world.events
    same = len(mine) == len(theirs) and np.allclose(mine["ts"].to_numpy(float), theirs["ts"].to_numpy(float)) and \
        (mine["session_id"].astype(str).to_numpy() == theirs["session_id"].astype(str).to_numpy()).all()
    if not same:
        h.notes.append("The events file is not the shipped sample's world any more: no page views or offers.")
        return
    h.page_views, h.offers, h.generated = world.page_views, world.offers, True
    h.notes.append("The shipped sample: its page views and legacy offers are regenerated from the call that made "
                   "it (pcrules.sample), after checking the events are the same.")


def history_feedback(h: History, logging_spec: Any = None, *, scorer: Any = None) -> Any:
    """The history as logged feedback (``analysis.feedback.Feedback``: what the logging ruleset showed per session
    stretch, with its probability), for off-policy estimates and Publish's guardrail.

    `logging_spec`: the ruleset (a spec, a dict or a YAML path) that made the history's offers; for a generated
    world (the shipped sample included) the world's own, ``world.legacy_spec()``. `scorer`: only when the logging
    ruleset's rules read a score. Raises ValueError with a sentence saying why when the history cannot be read so:
    no offers, offers without the probability they were made with, or no logging ruleset for real history.
    """
    from .feedback import feedback

    if h.offers is None or not len(h.offers):
        raise ValueError(f"{h.source}: the history has no offers table, so nothing logged to check a ruleset "
                         "against")
    if "propensity" not in h.offers.columns or h.offers["propensity"].isna().all():
        raise ValueError(f"{h.source}: the offers carry no propensity (the probability the logging ruleset made "
                         "each), so nothing to check a ruleset against")
    from ..core.spec import RuleSpec, load_spec

    if logging_spec is None or (isinstance(logging_spec, str) and not logging_spec.strip()):
        if not h.generated:
            raise ValueError(f"{h.source}: no logging ruleset was given (logging_spec: the ruleset that made these "
                             "offers), so their propensities cannot be read")
        from .world import legacy_spec

        logging_spec = legacy_spec()
    elif isinstance(logging_spec, Path) or (isinstance(logging_spec, str) and logging_spec.startswith("~")):
        logging_spec = Path(logging_spec).expanduser()
    spec = logging_spec if isinstance(logging_spec, RuleSpec) else load_spec(logging_spec)
    return feedback(spec, h.events, h.offers, scorer=scorer if spec.uses_score else None)


def event_truth(h: History, oracle: bool = False) -> np.ndarray | None:
    """True P(accept) of an offer at each event (None unless the world is generated).

    ``oracle``: the expectation given only what the runtime sees (what a perfect model could know); else with
    the session's real ``needs_help`` (the expectation of the recorded would-be answers).
    """
    if not h.generated:
        return None
    from .value import world_truth

    return world_truth(h, oracle=oracle)


def _offer_truth(h: History) -> np.ndarray | None:
    if not h.generated or h.offers is None:
        return None
    from .world import true_accept_probability

    offers = h.offers
    pv = h.page_views[["session_id", "pages_viewed", "needs_help"]]
    helped = offers[["session_id", "pages_viewed"]].merge(pv, on=["session_id", "pages_viewed"], how="left")[
        "needs_help"].to_numpy(dtype=bool, na_value=False)
    return np.asarray(true_accept_probability(
        offers["page"].to_numpy(dtype=object), offers["seconds_on_page"].to_numpy(dtype=float),
        offers["device"].to_numpy(dtype=object), offers["returning"].to_numpy(dtype=bool),
        offers["pages_viewed"].to_numpy(dtype=float), helped,
        session_seconds=offers["session_seconds"].to_numpy(dtype=float)), dtype=float)


# ============================================================================================ explore


def page_views_of(h: History) -> pd.DataFrame:
    """One row per page view: the page views table, or (without one) derived from the events.

    Derived dwell is the last observation's ``seconds_on_page``: a lower bound of the real dwell.
    """
    if h.page_views is not None:
        return h.page_views
    ev = h.events
    if "pages_viewed" in ev.columns and ev["pages_viewed"].notna().all():
        key = ev["pages_viewed"]
    else:  # a new page view starts where the page changes or time on page starts again
        new = (ev["session_id"] != ev["session_id"].shift()) | (ev["page"] != ev["page"].shift()) | \
            (ev["seconds_on_page"] <= ev["seconds_on_page"].shift().fillna(np.inf) - 1e-9)
        key = new.cumsum()
    grouped = ev.assign(_view=key.to_numpy(), _enter=ev["ts"] - ev["seconds_on_page"]).groupby(
        ["session_id", "_view"], sort=False)
    out = grouped.agg(visitor_id=("visitor_id", "first"), page=("page", "first"), enter_ts=("_enter", "min"),
                      dwell_s=("seconds_on_page", "max")).reset_index()
    return out.rename(columns={"_view": "pages_viewed"}).sort_values("enter_ts", kind="stable").reset_index(drop=True)


def overview(h: History) -> pd.DataFrame:
    """The history in one table: volumes, time span, and the legacy policy's offers and answers."""
    ev = h.events
    pv = page_views_of(h)
    ts = pd.to_datetime(ev["ts"], unit="s", utc=True)
    per_session = ev.groupby("session_id").size()
    rows: list[tuple[str, Any]] = [
        ("events", len(ev)), ("visitors", ev["visitor_id"].nunique()), ("sessions", ev["session_id"].nunique()),
        ("page views", len(pv)), ("pages", ev["page"].nunique()),
        ("first event (UTC)", f"{ts.min():%Y-%m-%d %H:%M}" if len(ev) else "–"),
        ("last event (UTC)", f"{ts.max():%Y-%m-%d %H:%M}" if len(ev) else "–"),
        ("days", round((ev["ts"].max() - ev["ts"].min()) / 86400.0, 1) if len(ev) else 0),
        ("events per session (median)", float(per_session.median()) if len(per_session) else 0),
        ("page views per session (median)", float(pv.groupby("session_id").size().median()) if len(pv) else 0),
    ]
    if h.offers is not None:
        answers = h.offers["response"].astype(str).value_counts()
        n = len(h.offers)
        rows += [("legacy offers", n)]
        labels = ("  accepted", "  declined", "  no answer (expired)")
        rows += [(label, int(answers.get(a, 0))) for a, label in zip(_ANSWERS, labels)]
        rows += [("legacy accept rate", f"{answers.get('accept', 0) / max(n, 1):.1%}")]
    if "response" in ev.columns:
        would = ev["response"].astype("string").fillna("none").value_counts()
        rows += [("would-be accept rate (all events)", f"{would.get('accept', 0) / max(len(ev), 1):.1%}")]
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def page_table(h: History) -> pd.DataFrame:
    """Per page: page views, sessions reaching it, observation events and dwell time (median, p75, p90)."""
    pv = page_views_of(h)
    ev = h.events
    g = pv.groupby("page")
    out = pd.DataFrame({
        "page views": g.size(),
        "sessions": g["session_id"].nunique(),
        "median dwell (s)": g["dwell_s"].median(),
        "p75 dwell (s)": g["dwell_s"].quantile(0.75),
        "p90 dwell (s)": g["dwell_s"].quantile(0.90),
        "events": ev.groupby("page").size(),
    })
    out["share of views"] = out["page views"] / max(out["page views"].sum(), 1)
    return out.sort_values("page views", ascending=False)


def session_table(h: History) -> pd.DataFrame:
    """Sessions: page views per session and session length, as quantiles."""
    pv = page_views_of(h)
    per = pv.groupby("session_id").agg(pages=("page", "size"), start=("enter_ts", "min"),
                                       end=("enter_ts", "max"), last_dwell=("dwell_s", "last"))
    length = per["end"] - per["start"] + per["last_dwell"]
    q = [0.25, 0.5, 0.75, 0.9, 0.99]
    return pd.DataFrame({"page views": per["pages"].quantile(q).to_numpy(),
                         "session length (s)": length.quantile(q).to_numpy()},
                        index=pd.Index([f"p{int(x * 100)}" for x in q], name="quantile"))


@functools.lru_cache(maxsize=1)
def _figure_class() -> type:
    from matplotlib.figure import Figure

    class PlotFigure(Figure):
        """A Figure that a notebook displays as a PNG (a bare Figure shows only its repr without pyplot)."""

        def _repr_png_(self) -> bytes:
            import io

            buf = io.BytesIO()
            self.savefig(buf, format="png")
            return buf.getvalue()

    return PlotFigure


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure (no pyplot: no global state, any backend) that a notebook displays as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _figure_class()(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, **kw: Any) -> tuple[Any, Any]:
    fig = new_figure(width, height)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def plot_sessions(h: History) -> Any:
    """Pages per session and session starts by hour of day (UTC)."""
    pv = page_views_of(h)
    fig, axes = _figure(10, 3.2, 1, 2)
    pages = pv.groupby("session_id").size()
    counts = pages.value_counts().sort_index()
    axes[0, 0].bar(counts.index.astype(int), counts.to_numpy(), color="#5c7fa8")
    axes[0, 0].set_xlabel("page views in the session")
    axes[0, 0].set_ylabel("sessions")
    axes[0, 0].set_title("Session depth", fontsize=10)
    starts = pv.groupby("session_id")["enter_ts"].min()
    hours = (np.floor(starts.to_numpy(dtype=float) / 3600.0) % 24).astype(int)
    axes[0, 1].bar(np.arange(24), np.bincount(hours, minlength=24), color="#5c7fa8")
    axes[0, 1].set_xlabel("hour of day (UTC)")
    axes[0, 1].set_title("Session starts", fontsize=10)
    fig.tight_layout()
    return fig


def plot_dwell(h: History, pages: Sequence[str] | None = None) -> Any:
    """Dwell time per page: the share of page views still on the page after t seconds (log scale)."""
    pv = page_views_of(h)
    order = pv["page"].value_counts().index.tolist() if pages is None else list(pages)
    fig, axes = _figure(10, 4.2, 1, 2)
    ax, box = axes[0, 0], axes[0, 1]
    data = []
    for page in order:
        d = np.sort(pv.loc[pv["page"] == page, "dwell_s"].to_numpy(dtype=float))
        d = d[np.isfinite(d)]
        data.append(np.maximum(d, 0.5))
        if len(d):
            ax.step(np.maximum(d, 0.5), 1.0 - np.arange(1, len(d) + 1) / len(d), where="post", label=page, lw=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("seconds on the page")
    ax.set_ylabel("share of page views still there")
    ax.set_title("Dwell time per page (survival)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    box.boxplot(data, orientation="horizontal", showfliers=False)
    box.set_yticks(np.arange(1, len(order) + 1), order, fontsize=8)
    box.set_xscale("log")
    box.set_xlabel("seconds on the page (box: quartiles; whiskers: 1.5 IQR)")
    box.set_title("Dwell time per page", fontsize=10)
    fig.tight_layout()
    return fig


def offers_by_page(h: History) -> pd.DataFrame:
    """The legacy policy's offers and answers per page, with the accept rate and its 95 % Wilson interval."""
    from ..stats.uplift import wilson_interval

    if h.offers is None or not len(h.offers):
        return pd.DataFrame(columns=["offers", *_ANSWERS, "accept rate", "low", "high"])
    offers = h.offers.assign(response=h.offers["response"].astype(str))
    table = pd.crosstab(offers["page"], offers["response"]).reindex(columns=list(_ANSWERS), fill_value=0)
    table.insert(0, "offers", table.sum(axis=1))
    table["accept rate"] = table["accept"] / table["offers"].clip(lower=1)
    ci = [wilson_interval(int(a), int(n)) for a, n in zip(table["accept"], table["offers"])]
    table["low"] = [c[0] for c in ci]
    table["high"] = [c[1] for c in ci]
    if "legacy_wait_s" in offers.columns:
        table["waits (s)"] = offers.groupby("page")["legacy_wait_s"].apply(
            lambda s: "/".join(str(int(x)) for x in sorted(s.dropna().unique())))
    return table.sort_values("offers", ascending=False)


def plot_offers(h: History) -> Any:
    """Legacy offers per page by answer (accepted, declined, no answer)."""
    table = offers_by_page(h)
    fig, axes = _figure(8, 0.8 + 0.35 * max(len(table), 1))
    ax = axes[0, 0]
    if not len(table):
        ax.text(0.5, 0.5, "no legacy offers in this history", ha="center", va="center")
        ax.set_axis_off()
        return fig
    left = np.zeros(len(table))
    y = np.arange(len(table))
    for answer in _ANSWERS:
        values = table[answer].to_numpy(dtype=float)
        label = {"accept": "accepted", "decline": "declined", "none": "no answer"}[answer]
        ax.barh(y, values, left=left, color=_COLORS[answer], label=label)
        left += values
    ax.set_yticks(y, table.index.tolist(), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("legacy offers")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("The legacy policy's offers and answers", fontsize=10)
    fig.tight_layout()
    return fig


def _answers(h: History) -> tuple[pd.DataFrame, str]:
    """The rows with an answer to an offer: the legacy offers, else the events' recorded would-be answers."""
    if h.offers is not None and len(h.offers):
        return h.offers, "legacy offers"
    if "response" in h.events.columns:
        return h.events.assign(response=h.events["response"].astype("string").fillna("none")), \
            "would-be answers of every event"
    raise ValueError("this history has neither offers nor recorded answers: acceptance cannot be measured")


def acceptance_by(h: History, column: str = "page") -> pd.DataFrame:
    """Accept rate by `column` (page, device, returning ...) with its 95 % Wilson interval."""
    from ..stats.uplift import wilson_interval

    rows, label = _answers(h)
    accepted = rows["response"].astype(str) == "accept"
    g = accepted.groupby(rows[column].astype(str))
    out = pd.DataFrame({"offers": g.size(), "accepted": g.sum().astype(int)})
    out["accept rate"] = out["accepted"] / out["offers"].clip(lower=1)
    ci = [wilson_interval(int(a), int(n)) for a, n in zip(out["accepted"], out["offers"])]
    out["low"], out["high"] = [c[0] for c in ci], [c[1] for c in ci]
    out.attrs["source"] = label
    return out.sort_values("accept rate", ascending=False)


def acceptance_by_time(h: History, bins: Sequence[float] = TIME_BINS, by: str | None = None) -> pd.DataFrame:
    """Accept rate by time on the page when the offer was made (bins in seconds), optionally per `by`."""
    from ..stats.uplift import wilson_interval

    rows, label = _answers(h)
    edges = np.r_[np.asarray(bins, dtype=float), np.inf]
    names = [f"{int(a)}–{int(b)} s" if np.isfinite(b) else f"{int(a)} s +" for a, b in zip(edges[:-1], edges[1:])]
    bucket = pd.cut(rows["seconds_on_page"].astype(float), edges, right=False, labels=names)
    keys = [bucket] if by is None else [rows[by].astype(str), bucket]
    accepted = (rows["response"].astype(str) == "accept")
    g = accepted.groupby(keys, observed=True)
    out = pd.DataFrame({"offers": g.size(), "accepted": g.sum().astype(int)})
    out["accept rate"] = out["accepted"] / out["offers"].clip(lower=1)
    ci = [wilson_interval(int(a), int(n)) for a, n in zip(out["accepted"], out["offers"])]
    out["low"], out["high"] = [c[0] for c in ci], [c[1] for c in ci]
    out.attrs["source"] = label
    return out


def plot_acceptance(h: History, top_pages: int = 4) -> Any:
    """Accept rate by page and by time on the page (overall and for the busiest pages), with 95 % intervals."""
    by_page = acceptance_by(h, "page")
    by_time = acceptance_by_time(h)
    fig, axes = _figure(11, 4.0, 1, 2)
    ax = axes[0, 0]
    y = np.arange(len(by_page))
    rate = by_page["accept rate"].to_numpy()
    ax.barh(y, rate, color="#5c7fa8")
    ax.errorbar(rate, y, xerr=[rate - by_page["low"].to_numpy(), by_page["high"].to_numpy() - rate], fmt="none",
                ecolor="#333", lw=0.8)
    ax.set_yticks(y, by_page.index.tolist(), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("accept rate")
    ax.set_title(f"Acceptance by page ({by_page.attrs['source']})", fontsize=10)
    ax2 = axes[0, 1]
    x = np.arange(len(by_time))
    r = by_time["accept rate"].to_numpy()
    ax2.plot(x, r, marker="o", color="#1f4e8c", label="all pages", lw=2)
    ax2.fill_between(x, by_time["low"].to_numpy(), by_time["high"].to_numpy(), color="#1f4e8c", alpha=0.15)
    rows, _ = _answers(h)
    labels = [str(i) for i in by_time.index]
    per_page = acceptance_by_time(h, by="page")
    for page in rows["page"].astype(str).value_counts().index[:top_pages]:
        if page in per_page.index.get_level_values(0):
            sub = per_page.loc[page]
            xs = [labels.index(str(i)) for i in sub.index if str(i) in labels]
            ax2.plot(xs, sub["accept rate"].to_numpy()[:len(xs)], marker=".", lw=1, alpha=0.8, label=page)
    ax2.set_xticks(x, labels, rotation=30, fontsize=8)
    ax2.set_ylabel("accept rate")
    ax2.set_title("Acceptance by time on the page", fontsize=10)
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ============================================================================================ train


@dataclass
class Trained:
    """A fitted model with what the report needs: the held-out rows, their outcomes and predictions."""

    result: Any  # scoring.TrainingResult
    frame: pd.DataFrame
    y: np.ndarray
    test: np.ndarray  # bool mask of held-out rows
    p_test: np.ndarray
    truth: np.ndarray | None = None  # true P(accept) of every row (a generated world)
    load_report: Any = None

    @property
    def model(self) -> Any:
        return self.result.model

    @property
    def report(self) -> Any:
        return self.result.test


def _fit(frame: pd.DataFrame, y: np.ndarray, groups: Any, truth: np.ndarray | None, test_size: float, seed: int,
         **params: Any) -> Trained:
    from sklearn.model_selection import train_test_split

    from ..scoring import group_holdout, train_and_evaluate

    frame = frame.reset_index(drop=True)
    result = train_and_evaluate(frame, y, groups=groups, p_true=truth, test_size=test_size, seed=seed, **params)
    if groups is not None:  # the very split train_and_evaluate made
        test = group_holdout(groups, test_size, seed)
    else:
        _, idx = train_test_split(np.arange(len(frame)), test_size=test_size, random_state=seed, stratify=y)
        test = np.zeros(len(frame), dtype=bool)
        test[idx] = True
    p_test = result.model.predict_proba(frame[test])[:, 1]
    return Trained(result, frame, np.asarray(y).astype(int), np.asarray(test), p_test, truth)


def train_model(h: History, *, test_size: float = 0.25, seed: int = 0) -> Trained:
    """The acceptance model fitted on the legacy offers (whole visitors held out), as ``pcrules train`` does."""
    if h.offers is None or not len(h.offers):
        raise ValueError(f"{h.source}: no offers table to train on (past offers and their answers)")
    offers = h.offers.reset_index(drop=True)
    y = (offers["response"].astype(str) == "accept").to_numpy(dtype=int)
    if y.min() == y.max():
        raise ValueError("offers.response: every offer has the same answer; a model cannot learn from that")
    return _fit(offers, y, offers["visitor_id"].to_numpy(dtype=object), _offer_truth(h), test_size, seed)


def metrics_path_for(model_path: str | Path) -> Path:
    """Where :func:`save_model` puts a model's held-out metrics: ``model.json`` -> ``model.metrics.json``."""
    path = Path(model_path)
    return path.with_name(path.stem + ".metrics.json")


def save_model(trained: Trained, model_path: str | Path) -> dict:
    """Write the compiled model (JSON, no code) and its held-out metrics beside it; return the metrics."""
    from ..scoring.training import write_model

    return write_model(trained.result, model_path, metrics_path_for(model_path))


def train_shoppers(path: str | Path | None = None, *, test_size: float = 0.25, seed: int = 0) -> Trained:
    """The same model on the real UCI online-shoppers sessions (target: ``Revenue``), stratified split."""
    from ..scoring.realdata import ONLINE_SHOPPERS_FEATURES, TARGET, load_online_shoppers

    frame, report = load_online_shoppers(path)
    if len(frame) == 0 or frame[TARGET].nunique() < 2:
        raise ValueError(f"{report.path}: no rows with both outcomes of {TARGET} to train on")
    y = frame[TARGET].to_numpy(dtype=bool).astype(int)
    trained = _fit(frame.drop(columns=[TARGET]), y, None, None, test_size, seed, features=ONLINE_SHOPPERS_FEATURES)
    trained.load_report = report
    return trained


def report_table(reports: Mapping[str, Any]) -> pd.DataFrame:
    """Training reports side by side (ROC AUC, Brier, log loss, calibration error; the oracle's when known)."""
    cols = {}
    for name, r in reports.items():
        r = getattr(r, "report", r)
        col = {"rows": r.n, "positives": r.positives, "base rate": r.base_rate, "mean predicted": r.mean_predicted,
               "ROC AUC": r.roc_auc, "Brier": r.brier, "log loss": r.log_loss, "calibration error (ECE)": r.ece}
        if r.oracle:
            col.update({"truth: ROC AUC": r.oracle.get("roc_auc"), "truth: Brier": r.oracle.get("brier"),
                        "truth: ECE": r.oracle.get("ece"), "|model - truth| mean": r.oracle.get("mae_vs_truth")})
        cols[name] = col
    return pd.DataFrame(cols)


def plot_reliability(reports: Mapping[str, Any]) -> Any:
    """Reliability (calibration) plot: mean predicted against observed rate per bin, marker size by count."""
    fig, axes = _figure(5.2, 4.6)
    ax = axes[0, 0]
    top = 0.0
    for name, r in reports.items():
        r = getattr(r, "report", r)
        bins = r.reliability_frame()
        bins = bins[bins["count"] > 0]
        size = 20 + 180 * bins["count"] / max(bins["count"].max(), 1)
        ax.scatter(bins["mean_predicted"], bins["observed"], s=size, alpha=0.75, label=f"{name} (ECE {r.ece:.3f})")
        ax.plot(bins["mean_predicted"], bins["observed"], lw=0.8, alpha=0.6)
        top = max(top, float(bins["mean_predicted"].max()), float(bins["observed"].max()))
    top = min(1.0, top * 1.1 + 0.01)
    ax.plot([0, top], [0, top], ls="--", color="#777", lw=1, label="perfect calibration")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted P(accept)")
    ax.set_ylabel("observed rate")
    ax.set_title("Reliability (held-out rows)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_roc(trained: Mapping[str, Trained]) -> Any:
    """ROC curves on the held-out rows, with the AUC in the legend (and the ground truth's when known)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = _figure(5.2, 4.6)
    ax = axes[0, 0]
    for name, t in trained.items():
        y = t.y[t.test]
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, t.p_test)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name}: AUC {roc_auc_score(y, t.p_test):.3f}")
        if t.truth is not None:
            p = t.truth[t.test]
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, lw=1, ls=":", label=f"{name}, ground truth: AUC {roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (held-out rows)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def feature_effects(trained: Trained, features: Sequence[str] | None = None, *, sample: int = 1500,
                    points: int = 12, seed: int = 0) -> pd.DataFrame:
    """Partial dependence: the model's mean P(accept) over a sample of rows with one feature set to each value.

    Categorical features take their values (the most frequent 12); numeric ones a grid of quantiles.
    """
    model = trained.model
    spec = model.features_
    frame = trained.frame
    rng = np.random.default_rng(seed)
    rows = frame.iloc[rng.choice(len(frame), size=min(sample, len(frame)), replace=False)].reset_index(drop=True)
    names = list(features) if features is not None else [*spec.categorical, *(n.field for n in spec.numeric)]
    numeric = {n.field for n in spec.numeric}
    out = []
    for name in names:
        if name not in frame.columns:
            continue
        if name in numeric:
            values = pd.to_numeric(frame[name], errors="coerce").dropna().to_numpy(dtype=float)
            if not len(values):
                continue
            grid = np.unique(np.quantile(values, np.linspace(0.01, 0.99, points)))
            kind = "numeric"
        else:
            grid = frame[name].value_counts().index[:12].tolist()
            kind = "categorical"
        stacked = pd.concat([rows.assign(**{name: [v] * len(rows)}) for v in grid], ignore_index=True)
        p = model.predict_proba(stacked)[:, 1].reshape(len(grid), len(rows)).mean(axis=1)
        for v, mean in zip(grid, p):
            out.append({"feature": name, "kind": kind, "value": v, "mean P(accept)": float(mean)})
    return pd.DataFrame(out)


def plot_feature_effects(effects: pd.DataFrame, cols: int = 3) -> Any:
    """Small multiples of :func:`feature_effects`: lines for numeric features, bars for categorical ones."""
    features = list(dict.fromkeys(effects["feature"]))
    rows = max(1, math.ceil(len(features) / cols))
    fig, axes = _figure(3.6 * cols, 2.6 * rows, rows, cols)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(features):
            ax.set_axis_off()
            continue
        sub = effects[effects["feature"] == features[i]]
        if (sub["kind"] == "numeric").all():
            ax.plot(sub["value"].astype(float), sub["mean P(accept)"], marker="o", ms=3, color="#1f4e8c")
            if sub["value"].astype(float).min() >= 0 and sub["value"].astype(float).max() > 50:
                ax.set_xscale("symlog", linthresh=1.0)
        else:
            ax.barh([str(v) for v in sub["value"]], sub["mean P(accept)"], color="#5c7fa8")
            ax.tick_params(axis="y", labelsize=7)
        ax.set_title(features[i], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Feature effects: mean predicted P(accept) with one feature varied", fontsize=10)
    fig.tight_layout()
    return fig


def truth_comparison(trained: Trained, h: History, bins: Sequence[float] = TIME_BINS) -> pd.DataFrame:
    """On a generated world: the model's P(accept) and the ground truth per page and time on page, averaged
    over the world's events (the truth given only what the runtime sees: ``needs_help`` unknown)."""
    if not h.generated:
        raise ValueError(f"{h.source}: not a generated world, there is no ground truth to compare with")
    ev = h.events
    p_model = trained.model.predict_proba(ev)[:, 1]
    p_true = event_truth(h, oracle=True)
    edges = np.r_[np.asarray(bins, dtype=float), np.inf]
    names = [f"{int(a)}–{int(b)} s" if np.isfinite(b) else f"{int(a)} s +" for a, b in zip(edges[:-1], edges[1:])]
    bucket = pd.cut(ev["seconds_on_page"].astype(float), edges, right=False, labels=names)
    frame = pd.DataFrame({"page": ev["page"].astype(str), "time on page": bucket, "model": p_model, "truth": p_true})
    out = frame.groupby(["page", "time on page"], observed=True).agg(events=("model", "size"),
                                                                      model=("model", "mean"),
                                                                      truth=("truth", "mean"))
    out["model - truth"] = out["model"] - out["truth"]
    out.attrs["mae"] = float(np.mean(np.abs(p_model - p_true)))
    out.attrs["correlation"] = float(np.corrcoef(p_model, p_true)[0, 1]) if len(p_model) > 1 else float("nan")
    return out


def plot_truth_comparison(comparison: pd.DataFrame, pages: Sequence[str] | None = None) -> Any:
    """Model (solid) against ground truth (dashed) by time on page, per page; and model vs truth per cell."""
    fig, axes = _figure(11, 4.2, 1, 2)
    ax, sc = axes[0, 0], axes[0, 1]
    all_pages = list(dict.fromkeys(comparison.index.get_level_values(0)))
    pages = list(pages) if pages is not None else all_pages
    labels = list(dict.fromkeys(str(x) for x in comparison.index.get_level_values(1)))
    colors = [f"C{i}" for i in range(10)]
    for i, page in enumerate(pages):
        sub = comparison.loc[page]
        xs = [labels.index(str(x)) for x in sub.index]
        ax.plot(xs, sub["model"], color=colors[i % 10], lw=1.4, label=page)
        ax.plot(xs, sub["truth"], color=colors[i % 10], lw=1.0, ls="--")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, fontsize=8)
    ax.set_ylabel("P(accept)")
    ax.set_title("Model (solid) vs ground truth (dashed) by time on page", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    size = 10 + 150 * comparison["events"] / max(comparison["events"].max(), 1)
    sc.scatter(comparison["truth"], comparison["model"], s=size, alpha=0.6, color="#1f4e8c")
    top = float(max(comparison["truth"].max(), comparison["model"].max())) * 1.08
    sc.plot([0, top], [0, top], ls="--", color="#777")
    sc.set_xlabel("ground truth (mean per page and time bucket)")
    sc.set_ylabel("model")
    mae = comparison.attrs.get("mae")
    sc.set_title("Model against truth" + (f" (mean |model - truth| per event {mae:.4f})" if mae is not None else ""),
                 fontsize=10)
    sc.grid(alpha=0.3)
    fig.tight_layout()
    return fig
