"""Words and numbers as the ops dashboard shows them: plurals, short ids, the model's metrics as HTML."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

SHORT_ID = 8  # characters of a long id shown in a table (the whole id is in the cell's tooltip)
LONG_ID = 12  # ids longer than this are shortened (a 32-hex uuid is; "v000709-s0" is readable as it is)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def plural(n: float, unit: str, units: str | None = None) -> str:
    """``1 hour``, ``2 hours``, ``1,234 decisions``: the count with the noun that agrees with it."""
    count = f"{n:,}" if isinstance(n, int) else f"{n:,g}"
    if n == 1:
        return f"{count} {unit}"
    return f"{count} {units or unit + 's'}"


def duration(seconds: float) -> str:
    """A span of time in its largest whole unit that fits: ``45 minutes``, ``1 hour``, ``340 days``."""
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            return plural(int(seconds // size), unit)
    return plural(max(0, int(seconds)), "second")


def short_id(value: Any) -> str:
    """An id in a table cell (HTML): a long one as its first characters, the whole id in the tooltip."""
    text = "" if value is None else str(value)
    if len(text) <= LONG_ID:
        return esc(text)
    return f'<span class="pcrules-id" title="{esc(text)}">{esc(text[:SHORT_ID])}…</span>'


# --------------------------------------------------------------------------- model metrics


def number(value: Any) -> str:
    """A metric's value for a person: counts with separators, fractions to 4 significant digits, None as —."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    return str(value)


def metric_rows(metrics: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, value) for every leaf of the nested metrics; a list is a leaf (a table, or lines)."""
    if isinstance(metrics, Mapping):
        rows: list[tuple[str, Any]] = []
        for key, value in metrics.items():
            rows += metric_rows(value, f"{prefix}{key}.")
        return rows
    return [(prefix[:-1], metrics)]


def metric_html(value: Any) -> str:
    """One metric's cell: a number; a list of bins as a small table folded under a summary; sentences as lines.
    Never raw JSON."""
    if not isinstance(value, list):
        return esc(number(value))
    if not value:
        return "—"
    if all(isinstance(item, Mapping) for item in value):
        return _bins_html(value)
    if all(isinstance(item, str) for item in value):
        return "".join(f'<div class="pcrules-metric-line">{esc(item)}</div>' for item in value)
    return esc(", ".join(number(item) for item in value))


def _bins_html(bins: list[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for item in bins:
        columns += [k for k in item if k not in columns]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(number(item.get(c)))}</td>" for c in columns) + "</tr>"
                   for item in bins)
    return (f'<details class="pcrules-bins"><summary>{esc(plural(len(bins), "bin"))}</summary>'
            f'<table class="pcrules-table pcrules-bins-table"><tr>{head}</tr>{body}</table></details>')
