"""Real sessions: the UCI "Online Shoppers Purchasing Intention" data, loaded with its dirt reported, and
the acceptance-model machinery trained on it (target ``Revenue``).

The file is real, so it is dirty (see ``data/online_shoppers/README.md``).
:func:`load_online_shoppers` never crashes on a bad row: every problem is
reported by its line in the file (the header is line 1) with what was done:

- the 14 rows whose first eight fields (page counts, durations, bounce and
  exit rates) are blank are **dropped**: nothing is known of the session's
  browsing;
- a duration of -1 (33 rows; the tracker's "unknown") and any other negative
  or unreadable number is **coerced to missing**, which the model handles as
  it handles any missing field (a missing indicator, no basis value);
- ``June`` (and any other full month name) is **coerced** to its three-letter
  form ``Jun``; an unknown month becomes missing;
- a row whose ``Revenue`` is not TRUE/FALSE, or with the wrong number of
  fields, is **dropped** (no target / cannot be read);
- a missing column is reported and read as missing everywhere (no
  ``Revenue`` column: every row is dropped); extra columns are ignored.

The model is the same :class:`AcceptanceModel` with a feature spec for these
columns (:data:`ONLINE_SHOPPERS_FEATURES`): counts and durations as log1p
splines, rates as linear splines, month / visitor type / weekend / the
traffic codes as categories.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import resources
from .features import FeatureSpec, Numeric
from .model import TrainingResult, train_and_evaluate

__all__ = [
    "ONLINE_SHOPPERS_PATH",
    "ONLINE_SHOPPERS_COLUMNS",
    "ONLINE_SHOPPERS_FEATURES",
    "RowIssue",
    "LoadReport",
    "RealDataResult",
    "load_online_shoppers",
    "train_online_shoppers",
]

ONLINE_SHOPPERS_PATH = resources.online_shoppers()  # pcrules/data/online_shoppers/ (data/ links to it)
ACTIVITY = ("Administrative", "Administrative_Duration", "Informational", "Informational_Duration",
            "ProductRelated", "ProductRelated_Duration", "BounceRates", "ExitRates")
COUNTS = ("Administrative", "Informational", "ProductRelated")
DURATIONS = ("Administrative_Duration", "Informational_Duration", "ProductRelated_Duration")
RATES = ("BounceRates", "ExitRates")
OTHER_NUMBERS = ("PageValues", "SpecialDay")
CODES = ("OperatingSystems", "Browser", "Region", "TrafficType")
ONLINE_SHOPPERS_COLUMNS = ACTIVITY + OTHER_NUMBERS + ("Month",) + CODES + ("VisitorType", "Weekend", "Revenue")
TARGET = "Revenue"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_FULL_MONTHS = {m.lower(): m[:3] for m in ("January", "February", "March", "April", "May", "June", "July", "August",
                                           "September", "October", "November", "December")}
_FULL_MONTHS.update({"sept": "Sep"})
_BOOLEANS = {"true": True, "false": False}

ONLINE_SHOPPERS_FEATURES = FeatureSpec(
    categorical=("Month", "VisitorType", "Weekend") + CODES,
    numeric=(
        Numeric("Administrative", "log1p", (1, 3, 8)),
        Numeric("Administrative_Duration", "log1p", (10, 60, 300)),
        Numeric("Informational", "log1p", (1, 3)),
        Numeric("Informational_Duration", "log1p", (10, 100)),
        Numeric("ProductRelated", "log1p", (5, 15, 40, 100)),
        Numeric("ProductRelated_Duration", "log1p", (60, 300, 1200, 3600)),
        Numeric("BounceRates", "linear", (0.01, 0.05)),
        Numeric("ExitRates", "linear", (0.02, 0.05, 0.1)),
        Numeric("PageValues", "log1p", (1, 10, 50)),
        Numeric("SpecialDay", "linear", ()),
    ),
)


@dataclass(frozen=True)
class RowIssue:
    line: int  # line in the file; the header is line 1
    columns: tuple[str, ...]
    problem: str
    action: str  # "dropped", "coerced to missing", "coerced to 'Jun'", "ignored" ...


@dataclass
class LoadReport:
    path: str
    rows_read: int = 0
    rows_kept: int = 0
    issues: list[RowIssue] = field(default_factory=list)

    @property
    def dropped_lines(self) -> list[int]:
        return sorted({i.line for i in self.issues if i.action == "dropped" and i.line > 1})

    @property
    def coerced_lines(self) -> list[int]:
        return sorted({i.line for i in self.issues if i.action.startswith("coerced")})

    def lines_with(self, problem_start: str) -> list[int]:
        return sorted({i.line for i in self.issues if i.problem.startswith(problem_start)})

    def summary(self) -> str:
        """One line per kind of problem: how many rows, what was done, which lines (first ten)."""
        groups: dict[tuple[str, str], list[int]] = {}
        for issue in self.issues:
            groups.setdefault((issue.problem, issue.action), []).append(issue.line)
        out = [f"{self.path}: {self.rows_read} rows read, {self.rows_kept} kept, "
               f"{len(self.dropped_lines)} dropped, {len(self.coerced_lines)} with coerced values"]
        for (problem, action), lines in sorted(groups.items(), key=lambda kv: kv[1][0]):
            shown = ", ".join(map(str, sorted(set(lines))[:10])) + (" ..." if len(set(lines)) > 10 else "")
            out.append(f"  {len(set(lines))} rows {action}: {problem} (lines {shown})")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {"path": self.path, "rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "dropped_lines": self.dropped_lines, "coerced_lines": self.coerced_lines,
                "issues": [asdict(i) for i in self.issues]}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def load_online_shoppers(path: str | Path | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """The sessions as a DataFrame (index: line in the file) and the report of every bad row.

    Raises only when the file cannot be opened (``OSError``); bad content is reported, never fatal.
    """
    path = Path(path) if path is not None else ONLINE_SHOPPERS_PATH
    report = LoadReport(str(path))
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        text = handle.read()
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        report.issues.append(RowIssue(1, (), "the file is empty", "dropped"))
        return pd.DataFrame(columns=list(ONLINE_SHOPPERS_COLUMNS)), report
    header = [h.strip().lstrip("\ufeff") for h in header]
    where = {name: i for i, name in enumerate(header)}
    missing_columns = [c for c in ONLINE_SHOPPERS_COLUMNS if c not in where]
    if missing_columns:
        report.issues.append(RowIssue(1, tuple(missing_columns), "missing columns",
                                      "read as missing" if TARGET not in missing_columns else
                                      "read as missing; no target, so every row is dropped"))
    extra = [h for h in header if h not in ONLINE_SHOPPERS_COLUMNS]
    if extra:
        report.issues.append(RowIssue(1, tuple(extra), "unknown columns", "ignored"))

    records: list[dict[str, Any]] = []
    lines: list[int] = []
    start = 1
    for row in reader:
        line = start + 1
        start = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line is no session
        report.rows_read += 1
        if len(row) != len(header):
            report.issues.append(RowIssue(line, (), f"expected {len(header)} fields, got {len(row)}", "dropped"))
            continue
        raw = {name: row[i].strip() for name, i in where.items()}
        record, issues, keep = _clean(raw, line)
        report.issues.extend(issues)
        if keep:
            records.append(record)
            lines.append(line)

    frame = pd.DataFrame.from_records(records, columns=list(ONLINE_SHOPPERS_COLUMNS))
    frame.index = pd.Index(lines, name="line", dtype="int64")
    for name in ACTIVITY + OTHER_NUMBERS:
        frame[name] = frame[name].astype(float)
    report.rows_kept = len(frame)
    return frame, report


def _clean(raw: dict[str, str], line: int) -> tuple[dict[str, Any], list[RowIssue], bool]:
    issues: list[RowIssue] = []
    record: dict[str, Any] = {}
    target_text = raw.get(TARGET)
    target = _BOOLEANS.get((target_text or "").lower()) if target_text is not None else None
    if target is None:
        shown = "the column is missing" if target_text is None else f"{target_text!r}"
        return record, [RowIssue(line, (TARGET,), f"Revenue is not TRUE/FALSE ({shown})", "dropped")], False
    record[TARGET] = target
    present = [c for c in ACTIVITY if c in raw]
    if present and all(raw[c] == "" for c in present):
        return record, [RowIssue(line, tuple(present), "the first eight fields (page counts, durations, bounce "
                                                       "and exit rates) are blank", "dropped")], False

    for name in ACTIVITY + OTHER_NUMBERS:
        text = raw.get(name)
        if text is None:
            record[name] = np.nan
            continue
        value = _number(text) if text else None
        if value is None:
            problem = "blank" if text == "" else f"not a number ({text[:20]!r})"
            issues.append(RowIssue(line, (name,), f"{name} {problem}", "coerced to missing"))
            record[name] = np.nan
        elif value < 0:
            what = "duration of -1 (unknown)" if name in DURATIONS and value == -1 else f"negative value {value:g}"
            issues.append(RowIssue(line, (name,), what, "coerced to missing"))
            record[name] = np.nan
        elif name in RATES and value > 1:
            issues.append(RowIssue(line, (name,), f"{name} {value:g} is not a rate in [0, 1]", "coerced to missing"))
            record[name] = np.nan
        else:
            record[name] = value

    month = raw.get("Month")
    if month is not None:
        if month in MONTHS:
            record["Month"] = month
        elif month.lower() in _FULL_MONTHS or month.capitalize() in MONTHS:
            fixed = _FULL_MONTHS.get(month.lower(), month.capitalize())
            issues.append(RowIssue(line, ("Month",), f"month written {month!r}", f"coerced to {fixed!r}"))
            record["Month"] = fixed
        else:
            issues.append(RowIssue(line, ("Month",), f"unknown month {month[:20]!r}", "coerced to missing"))
            record["Month"] = None
    else:
        record["Month"] = None

    for name in CODES:
        text = raw.get(name)
        value = _number(text) if text else None
        if text is not None and (value is None or not float(value).is_integer()):
            issues.append(RowIssue(line, (name,), f"{name} is not an integer code ({text[:20]!r})",
                                   "coerced to missing"))
            value = None
        record[name] = None if value is None else int(value)

    visitor = raw.get("VisitorType")
    if visitor == "":
        issues.append(RowIssue(line, ("VisitorType",), "VisitorType blank", "coerced to missing"))
    record["VisitorType"] = visitor or None

    weekend = raw.get("Weekend")
    record["Weekend"] = None if weekend is None else _BOOLEANS.get(weekend.lower())
    if weekend is not None and record["Weekend"] is None:
        issues.append(RowIssue(line, ("Weekend",), f"Weekend is not TRUE/FALSE ({weekend[:20]!r})",
                               "coerced to missing"))
    # one issue per (line, problem): the three -1 durations of a row are reported together
    merged: dict[tuple[str, str], RowIssue] = {}
    for issue in issues:
        key = (issue.problem, issue.action)
        if key in merged:
            merged[key] = RowIssue(line, merged[key].columns + issue.columns, issue.problem, issue.action)
        else:
            merged[key] = issue
    return record, list(merged.values()), True


@dataclass
class RealDataResult:
    load: LoadReport
    result: TrainingResult

    @property
    def model(self) -> Any:
        return self.result.model

    @property
    def roc_auc(self) -> float | None:
        return self.result.test.roc_auc

    def summary(self) -> str:
        return (f"{self.load.summary()}\n"
                f"held out ({self.result.n_test} sessions, stratified): {self.result.test.summary()}\n"
                f"training ({self.result.n_train} sessions): {self.result.train.summary()}")

    def to_dict(self) -> dict:
        return {"load": self.load.to_dict(), "training": self.result.to_dict()}


def train_online_shoppers(path: str | Path | None = None, *, test_size: float = 0.25, seed: int = 0,
                          features: FeatureSpec | None = None, **params: Any) -> RealDataResult:
    """Load (reporting the dirty rows), split stratified on ``Revenue``, fit an ``AcceptanceModel``, report."""
    frame, report = load_online_shoppers(path)
    if len(frame) == 0 or frame[TARGET].nunique() < 2:
        raise ValueError(f"{report.path}: no rows with both outcomes of {TARGET} to train on\n{report.summary()}")
    y = frame[TARGET].to_numpy(dtype=bool)
    result = train_and_evaluate(frame.drop(columns=[TARGET]), y, test_size=test_size, seed=seed,
                                features=features or ONLINE_SHOPPERS_FEATURES, **params)
    return RealDataResult(report, result)

