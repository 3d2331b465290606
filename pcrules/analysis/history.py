"""Loading real history: events, page views and offers from CSV (also gzipped) or Parquet.

Each loader takes an explicit column mapping from our names to the file's names and checks every
row. Bad data never raises: a bad row is dropped or its bad value is set to missing ("coerced"),
rows out of time order are sorted, and each problem is reported with the row it came from. The
only fatal case is a required column that the file lacks (after the mapping): that raises
:class:`MissingColumns` naming them. A file that cannot be read at all raises :class:`HistoryError`
(:class:`UnknownFormat` when its name says neither CSV nor Parquet). The messages state what is wrong
and carry it as attributes, so that each caller adds its own remedy (the CLI names its options).
:func:`check_columns` reads only a file's header (or Parquet schema) and raises as a load would.

    >>> from pcrules.history import load_events
    >>> events, report = load_events("export.csv.gz", columns={"visitor_id": "VisitorID", "ts": "Timestamp"})
    >>> print(report)                                      # doctest: +SKIP
    export.csv.gz (events): 1,204 rows read, 1,201 kept, 3 dropped, 1 coerced, 2 out of time order (sorted)
      row 17 (line 18): seconds_on_page: negative duration -4.0 -> row dropped
      ...

Rows are numbered from 1 over the data rows (the header is not a row); for a CSV file the report
also gives the file line (the header is line 1), which differs from row + 1 only after a blank line
or a quoted field that spans lines.

What is checked (our column names; the schemas are in data/README.md):

* ids (``visitor_id``, ``session_id``) and ``page``: present, at most 128 (page 200) characters, no
  control characters — else the row is dropped (the runtime would refuse the event);
* timestamps (``ts``, ``enter_ts``): epoch seconds or ISO-8601 text (UTC when no offset), between
  1970 and 2100 — else the row is dropped;
* durations (``seconds_on_page``, ``dwell_s``, ``session_seconds``, ``response_delay_s``,
  ``legacy_wait_s``): numbers >= 0 and < 1e7 s; a required one that is missing, not a number or
  negative drops the row, an optional one is coerced to missing;
* ``pages_viewed``: a whole number >= 0; ``returning`` / ``needs_help``: true/false, 1/0, yes/no;
  ``device``: text — optional, coerced to missing when bad;
* ``propensity`` (offers): a probability in (0, 1], coerced to missing otherwise; ``explored``: true/false;
  ``rule``: text;
* ``response``: events: ``accept`` / ``decline`` / empty for no answer (``accepted``, ``declined``,
  ``none``, ``expired`` are understood); offers (required): ``accept`` / ``decline`` / ``none``;
* the table is sorted by time (stable); each row that was out of order is reported as ``sorted``.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ..core.events import CONTRACT, CONTROL, EXTRA
from ..errors import PcrulesError

# The limits come from the event contract's one table (core.events.CONTRACT), like validate_event's.
_ID_CHARS = int(CONTRACT["visitor_id"].hi)
_PAGE_CHARS = int(CONTRACT["page"].hi)
_TEXT_CHARS = int(EXTRA.hi)
_TS_LO, _TS_HI = CONTRACT["ts"].lo, CONTRACT["ts"].hi
_MAX_DURATION = CONTRACT["seconds_on_page"].hi

__all__ = ["HistoryError", "MissingColumns", "UnknownFormat", "Problem", "LoadReport", "Loaded", "load_events",
           "load_page_views", "load_offers", "load_table", "check_columns", "SCHEMAS", "FORMATS"]

DROPPED, COERCED, SORTED = "dropped", "coerced", "sorted"
# Text columns: pandas 3's default string dtype ("str": Arrow-backed, fast, NaN for missing); on pandas 2,
# plain object (its "str" would turn None into 'None', its "string" has NA that breaks boolean masks).
TEXT = "str" if int(pd.__version__.split(".")[0]) >= 3 else object
NA_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "#n/a", "<na>"})


FORMATS = ("csv", "parquet")
# What a file's name must end with for its format to be known (compressed CSV: .gz).
SUFFIXES = {"parquet": (".parquet", ".pq", ".parq"), "csv": (".csv", ".csv.gz", ".gz", ".txt", ".tsv")}


class HistoryError(PcrulesError, ValueError):
    """A history file could not be loaded at all (unreadable, no header, unknown format, missing columns)."""


class UnknownFormat(HistoryError):
    """Neither the name of ``path`` nor a ``format`` says CSV or Parquet; ``suffixes`` maps each format to the
    endings that name it."""

    def __init__(self, path: str | os.PathLike[str], given: str | None = None):
        self.path, self.given, self.suffixes = str(path), given, SUFFIXES
        super().__init__(f"{path}: the format must be csv or parquet, got {given!r}" if given is not None else
                         f"{path}: the format (csv or parquet) cannot be told from the file name")


class MissingColumns(HistoryError):
    """Required columns are absent; ``missing`` maps each of our names to the file column looked for,
    ``available`` lists the file's columns."""

    def __init__(self, source: str, table: str, missing: Mapping[str, str], available: Iterable[str]):
        self.source, self.table = source, table
        self.missing = dict(missing)
        self.available = list(available)
        wanted = ", ".join(name if their == name else f"{name} (looked for {their!r})"
                           for name, their in self.missing.items())
        shown = ", ".join(repr(c) for c in self.available[:30]) + (" ..." if len(self.available) > 30 else "")
        super().__init__(f"{source}: {table}: missing required column(s): {wanted}; "
                         f"the file has: {shown or 'no columns'}")


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    kind: str        # id, page, text, ts, duration, count, bool, answer, offer_answer
    required: bool


def _schema(*cols: tuple[str, str, bool]) -> tuple[Column, ...]:
    return tuple(Column(*c) for c in cols)


SCHEMAS: dict[str, tuple[Column, ...]] = {
    "events": _schema(
        ("ts", "ts", True), ("visitor_id", "id", True), ("session_id", "id", True), ("page", "page", True),
        ("seconds_on_page", "duration", True), ("pages_viewed", "count", False),
        ("session_seconds", "duration", False), ("device", "text", False), ("returning", "bool", False),
        ("response", "answer", False), ("response_delay_s", "duration", False)),
    "page_views": _schema(
        ("visitor_id", "id", True), ("session_id", "id", True), ("pages_viewed", "count", False),
        ("page", "page", True), ("enter_ts", "ts", True), ("dwell_s", "duration", True), ("device", "text", False),
        ("returning", "bool", False), ("needs_help", "bool", False), ("legacy_wait_s", "duration", False)),
    "offers": _schema(
        ("ts", "ts", True), ("visitor_id", "id", True), ("session_id", "id", True), ("page", "page", True),
        ("seconds_on_page", "duration", False), ("pages_viewed", "count", False),
        ("session_seconds", "duration", False), ("device", "text", False), ("returning", "bool", False),
        ("legacy_wait_s", "duration", False), ("rule", "text", False), ("explored", "bool", False),
        ("propensity", "probability", False), ("response", "offer_answer", True),
        ("response_delay_s", "duration", False)),
}
TIME_COLUMN = {"events": "ts", "page_views": "enter_ts", "offers": "ts"}
SORT_KEYS = {"events": ["ts"], "page_views": ["enter_ts"], "offers": ["ts"]}

_ANSWERS = {"accept": "accept", "accepted": "accept", "decline": "decline", "declined": "decline",
            "none": None, "expired": None, "expire": None, "no_answer": None, "timeout": None, "ignored": None}
_OFFER_ANSWERS = {"accept": "accept", "accepted": "accept", "decline": "decline", "declined": "decline",
                  "none": "none", "expired": "none", "expire": "none", "no_answer": "none", "timeout": "none",
                  "ignored": "none"}
_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "t": True, "f": False,
          "y": True, "n": False, "1.0": True, "0.0": False}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    row: int | None       # 1-based data row; None for a problem with the file or a column
    line: int | None      # file line of a CSV row (header = line 1); None for Parquet
    column: str | None    # our column name
    problem: str          # bad_line, missing_value, wrong_type, negative, out_of_range, too_long, unknown_value,
                          # unsorted, duplicate_column, ignored_column
    detail: str
    action: str           # dropped, coerced, sorted, ignored

    def __str__(self) -> str:
        where = "file" if self.row is None else f"row {self.row}" + (f" (line {self.line})" if self.line else "")
        column = f"{self.column}: " if self.column else ""
        action = {DROPPED: "row dropped", COERCED: "set to missing", SORTED: "rows sorted by time"}.get(
            self.action, self.action)
        return f"{where}: {column}{self.detail} -> {action}"


@dataclass
class LoadReport:
    source: str
    table: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_dropped: int = 0
    rows_coerced: int = 0
    rows_unsorted: int = 0
    columns: dict[str, str] = field(default_factory=dict)      # our name -> the file's column used
    absent: list[str] = field(default_factory=list)            # optional columns the file does not have
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no row was dropped, coerced or reordered."""
        return not (self.rows_dropped or self.rows_coerced or self.rows_unsorted)

    def counts(self) -> Counter:
        """Problems by (problem, action)."""
        return Counter((p.problem, p.action) for p in self.problems)

    def rows(self, problem: str | None = None, action: str | None = None, column: str | None = None) -> list[int]:
        """Sorted row numbers with a problem matching the given filters."""
        return sorted({p.row for p in self.problems if p.row is not None
                       and (problem is None or p.problem == problem) and (action is None or p.action == action)
                       and (column is None or p.column == column)})

    def format(self, limit: int | None = 50) -> str:
        head = (f"{self.source} ({self.table}): {self.rows_read:,} rows read, {self.rows_kept:,} kept, "
                f"{self.rows_dropped:,} dropped, {self.rows_coerced:,} coerced, "
                f"{self.rows_unsorted:,} out of time order" + (" (sorted)" if self.rows_unsorted else ""))
        lines = [head]
        if self.absent:
            lines.append(f"  optional columns absent: {', '.join(self.absent)}")
        shown = self.problems if limit is None else self.problems[:limit]
        lines += [f"  {p}" for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"  ... and {len(self.problems) - len(shown):,} more problem(s): "
                         + ", ".join(f"{k[0]}/{k[1]} {n:,}" for k, n in sorted(self.counts().items())))
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([p.__dict__ for p in self.problems],
                            columns=["row", "line", "column", "problem", "detail", "action"])

    def __str__(self) -> str:
        return self.format()


class Loaded(NamedTuple):
    frame: pd.DataFrame
    report: LoadReport


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise UnknownFormat(path, fmt)
        return fmt
    name = path.name.lower()
    for known, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            return known
    raise UnknownFormat(path)


def _unreadable(path: Path, fmt: str, exc: BaseException) -> HistoryError:
    """One line saying why `path` cannot be read at all."""
    if isinstance(exc, FileNotFoundError):
        return HistoryError(f"{path}: cannot read (no such file)")
    if isinstance(exc, IsADirectoryError):
        return HistoryError(f"{path}: cannot read (a directory, not a file)")
    what = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the library said
    kind = "a Parquet file" if fmt == "parquet" else "a CSV file (UTF-8 text, gzipped when it ends in .gz)"
    return HistoryError(f"{path}: cannot read as {kind} ({what})")


def _read_bytes(path: Path) -> bytes:
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    else:
        data = path.read_bytes()
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a UTF-8 byte-order mark


def _refuse_binary(path: Path, head: bytes) -> None:
    """A file that is not text (a binary file, a spreadsheet, UTF-16: a header line that is not UTF-8, or NUL
    bytes) is refused as a whole, in one line, rather than read as rows of garbage; a bad byte in a data row only
    spoils that row."""
    import codecs

    if b"\x00" in head:
        raise HistoryError(f"{path}: cannot read as a CSV file (not text: it holds NUL bytes)")
    first = head.split(b"\n", 1)[0]
    try:
        codecs.getincrementaldecoder("utf-8")().decode(first, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError as exc:
        raise HistoryError(f"{path}: cannot read as a CSV file (its header line is not UTF-8 text: byte "
                           f"{exc.start} is 0x{first[exc.start]:02x})") from None


def _read_csv(path: Path, report: LoadReport, delimiter: str) -> tuple[list[str], dict[str, Any], np.ndarray,
                                                                       np.ndarray]:
    """Header, raw text columns, data row numbers and file lines of the well-formed rows.

    Without quote characters in the file every record is one line, so the lines are found with
    numpy and the well-formed ones parsed by pandas' C reader (fast); with quotes (a field may
    then span lines or hold the delimiter) Python's csv module reads it record by record."""
    data = _read_bytes(path)
    _refuse_binary(path, data[:1 << 16])
    if b'"' in data:
        return _read_csv_records(data.decode("utf-8", errors="replace"), report, delimiter)
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    if not len(data) or data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1))
    stops = ends - (raw[np.maximum(ends - 1, 0)] == ord("\r")) * (ends > starts)  # without a trailing \r
    seps = np.flatnonzero(raw == ord(delimiter.encode()))
    fields = np.searchsorted(seps, stops) - np.searchsorted(seps, starts) + 1
    blank = stops <= starts
    if (~blank).sum() == 0:
        raise HistoryError(f"{path}: empty file (no header line)")
    header_at = int(np.flatnonzero(~blank)[0])
    header = [h.strip() for h in data[starts[header_at]:stops[header_at]].decode("utf-8", "replace").split(delimiter)]
    after = np.arange(len(starts)) > header_at
    data_lines = np.flatnonzero(after & ~blank)  # 0-based line index of every data row
    row_of_line = np.zeros(len(starts), dtype=np.int64)
    row_of_line[data_lines] = np.arange(1, len(data_lines) + 1)
    bad = data_lines[fields[data_lines] != len(header)]
    for i in bad.tolist():
        report.problems.append(Problem(int(row_of_line[i]), i + 1, None, "bad_line",
                                       f"{int(fields[i])} field(s) where the header has {len(header)}", DROPPED))
    good = np.setdiff1d(data_lines, bad, assume_unique=True)
    report.rows_read = len(data_lines)
    _note_duplicates(header, report)
    if len(good):
        skip = np.setdiff1d(np.arange(header_at + 1, len(starts)), good, assume_unique=True)
        frame = pd.read_csv(io.BytesIO(data), sep=delimiter, header=None,
                            skiprows=set(skip.tolist()) | set(range(header_at + 1)),
                            names=list(range(len(header))), dtype=str, keep_default_na=False, na_filter=False,
                            skip_blank_lines=False, encoding="utf-8", encoding_errors="replace",
                            quoting=csv.QUOTE_NONE, engine="c")
        if len(frame) != len(good):  # pragma: no cover - the line scan and the parser disagree: read it exactly
            report.problems.clear()
            return _read_csv_records(data.decode("utf-8", errors="replace"), report, delimiter)
        columns = {}
        for position, name in enumerate(header):
            columns.setdefault(name, frame[position].reset_index(drop=True))
    else:
        columns = {name: pd.Series([], dtype=TEXT) for name in header}
    return header, columns, row_of_line[good], good + 1


def _note_duplicates(header: list[str], report: LoadReport) -> None:
    seen: set[str] = set()
    for position, name in enumerate(header):
        if name in seen:
            report.problems.append(Problem(None, None, None, "duplicate_column",
                                           f"column {name!r} appears again at position {position + 1}; "
                                           "the first is used", "ignored"))
        seen.add(name)


def _read_csv_records(text: str, report: LoadReport, delimiter: str) -> tuple[list[str], dict[str, Any], np.ndarray,
                                                                              np.ndarray]:
    """The exact, slower reader: Python's csv module, one record at a time (quoted fields)."""
    header: list[str] | None = None
    records: list[list[str]] = []
    rows: list[int] = []
    lines: list[int] = []
    row = 0
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    previous_end = 0
    try:
        for record in reader:
            line, previous_end = previous_end + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip() and (header is None or len(header) > 1)):
                continue  # a blank line is no row
            if header is None:
                header = [h.strip() for h in record]
                continue
            row += 1
            if len(record) != len(header):
                report.problems.append(Problem(row, line, None, "bad_line",
                                               f"{len(record)} field(s) where the header has {len(header)}", DROPPED))
                continue
            records.append(record)
            rows.append(row)
            lines.append(line)
    except csv.Error as exc:
        raise HistoryError(f"{report.source}: line {reader.line_num}: cannot parse the CSV ({exc})") from None
    if header is None:
        raise HistoryError(f"{report.source}: empty file (no header line)")
    report.rows_read = row
    _note_duplicates(header, report)
    transposed = list(zip(*records)) if records else [()] * len(header)
    columns: dict[str, Any] = {}
    for position, name in enumerate(header):
        columns.setdefault(name, pd.Series(list(transposed[position]), dtype=TEXT))
    return header, columns, np.array(rows, dtype=np.int64), np.array(lines, dtype=np.int64)


def _read(path: Path, fmt: str, report: LoadReport, delimiter: str) -> tuple[list[str], dict[str, Any], np.ndarray,
                                                                             np.ndarray | None]:
    try:
        if fmt == "csv":
            return _read_csv(path, report, delimiter)
        frame = pd.read_parquet(path)
    except HistoryError:
        raise
    except Exception as exc:  # unreadable: missing, not gzip, not Parquet (pyarrow's own errors), no pyarrow
        raise _unreadable(path, fmt, exc) from None
    report.rows_read = len(frame)
    header = [str(c) for c in frame.columns]
    columns = {str(c): frame[c].reset_index(drop=True) for c in frame.columns}
    return header, columns, np.arange(1, len(frame) + 1, dtype=np.int64), None


# --------------------------------------------------------------------------------------------
# Checking values (vectorised over a column)
# --------------------------------------------------------------------------------------------

CHOICE_NA_TOKENS = NA_TOKENS - {"none"}  # "none" is an answer in the offers table


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(raw: Any, tokens: frozenset[str] = NA_TOKENS) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """(stripped text, NaN where missing or not text; missing; not text) for any column."""
    series = (raw if isinstance(raw, pd.Series) else pd.Series(raw)).reset_index(drop=True)
    n = len(series)
    not_text = np.zeros(n, dtype=bool)
    if isinstance(series.dtype, pd.StringDtype):
        text = series.astype(TEXT)
    elif pd.api.types.is_bool_dtype(series.dtype):
        isnull = series.isna().to_numpy()
        return pd.Series(pd.array([None] * n, dtype=TEXT)), isnull, ~isnull
    elif pd.api.types.is_integer_dtype(series.dtype):  # integer ids (Parquet): their digits are the text
        text = pd.Series(pd.array([None if pd.isna(v) else str(int(v)) for v in series], dtype=TEXT))
    else:  # object (mixed) or float columns: only real strings are text
        values = series.to_numpy(dtype=object)
        is_str = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=n)
        not_text = ~is_str & ~series.isna().to_numpy()
        text = pd.Series(pd.array(np.where(is_str, values, None), dtype=TEXT))
    stripped = text.str.strip()
    missing = (stripped.isna() | stripped.str.lower().isin(tokens)).to_numpy() & ~not_text
    return stripped.where(~pd.Series(missing | not_text)), missing, not_text


def _numbers(raw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float values, missing, not a number) for a column of text or numbers."""
    series = (raw if isinstance(raw, pd.Series) else pd.Series(raw)).reset_index(drop=True)
    if pd.api.types.is_bool_dtype(series.dtype):
        isnull = series.isna().to_numpy()
        return np.full(len(series), np.nan), isnull, ~isnull
    if pd.api.types.is_numeric_dtype(series.dtype):
        v = series.to_numpy(dtype=float, na_value=np.nan)
        missing = np.isnan(v)
        return v, missing, ~missing & ~np.isfinite(v)
    text, missing, not_text = _text(series)
    if not_text.any():  # numbers inside an object column
        mixed = series.astype(object).where(pd.Series(not_text), text.astype(object))
        parsed = pd.to_numeric(mixed.where(~pd.Series(missing)), errors="coerce")
        missing = missing & ~not_text
    else:
        parsed = pd.to_numeric(text, errors="coerce")
    v = np.asarray(parsed.to_numpy(dtype=float, na_value=np.nan), dtype=float)
    bad = ~missing & ~np.isfinite(v)
    return np.where(bad, np.nan, v), missing, bad


def _timestamps(raw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    series = (raw if isinstance(raw, pd.Series) else pd.Series(raw)).reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        stamps = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
        missing = stamps.isna().to_numpy()
        seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float, na_value=np.nan)
        return seconds, missing, np.zeros(len(series), dtype=bool)
    v, missing, bad = _numbers(series)
    if bad.any() and not pd.api.types.is_numeric_dtype(series.dtype):
        index = np.flatnonzero(bad)
        text = _text(series.iloc[index])[0]
        parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        ok = parsed.notna().to_numpy()
        v[index[ok]] = (parsed[ok] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)
        bad[index[ok]] = False
    return v, missing, bad


class _Checker:
    """Collects problems per row; decides what is dropped or coerced."""

    def __init__(self, report: LoadReport, rows: np.ndarray, lines: np.ndarray | None):
        self.report, self.rows, self.lines = report, rows, lines
        self.drop = np.zeros(len(rows), dtype=bool)
        self.coerced = np.zeros(len(rows), dtype=bool)

    def flag(self, mask: np.ndarray, column: Column, problem: str, describe: Any, raw: Any) -> None:
        """Record `problem` for every row in `mask`; drop the row for a required column, else coerce."""
        index = np.flatnonzero(mask)
        if not len(index):
            return
        action = DROPPED if column.required else COERCED
        series = raw if isinstance(raw, pd.Series) else pd.Series(raw)
        raw_values = series.iloc[index].astype(object).to_numpy()
        for i, value in zip(index.tolist(), raw_values):
            line = int(self.lines[i]) if self.lines is not None else None
            self.report.problems.append(Problem(int(self.rows[i]), line, column.name, problem, describe(value), action))
        (self.drop if column.required else self.coerced)[index] = True


def _check_text(checker: _Checker, col: Column, raw: Any, limit: int) -> pd.Series:
    text, missing, not_text = _text(raw)
    too_long = (text.str.len().fillna(0).to_numpy() > limit)
    # Arrow-backed text is valid UTF-8 (no lone surrogates), and its regex engine refuses them in a pattern.
    pattern = "[\x00-\x1f\x7f-\x9f]" if getattr(text.dtype, "storage", None) == "pyarrow" else CONTROL.pattern
    control = text.str.contains(pattern, regex=True, na=False).to_numpy(dtype=bool)
    if col.required:
        checker.flag(missing, col, "missing_value", lambda v: "missing", raw)
    checker.flag(not_text, col, "wrong_type", lambda v: f"{_shown(v)} is not text", raw)
    checker.flag(too_long, col, "too_long", lambda v: f"{len(str(v).strip())} characters (at most {limit})", raw)
    checker.flag(~too_long & control, col, "wrong_type", lambda v: f"{_shown(v)} holds control characters", raw)
    return text.where(~pd.Series(too_long | control))


def _check_number(checker: _Checker, col: Column, raw: Any, *, ts: bool = False) -> np.ndarray:
    v, missing, bad = (_timestamps if ts else _numbers)(raw)
    if col.required:
        checker.flag(missing, col, "missing_value", lambda x: "missing", raw)
    kind = "a timestamp (epoch seconds or ISO-8601)" if ts else "a number"
    checker.flag(bad, col, "wrong_type", lambda x: f"{_shown(x)} is not {kind}", raw)
    ok = ~missing & ~bad
    if ts:
        out = ok & ((v < _TS_LO) | (v > _TS_HI))
        checker.flag(out, col, "out_of_range", lambda x: f"{_shown(x)} is not between 1970 and 2100", raw)
        return np.where(ok & ~out, v, np.nan)
    negative = ok & (v < 0)
    checker.flag(negative, col, "negative", lambda x: f"negative duration {_shown(x)}", raw)
    huge = ok & (v > _MAX_DURATION)
    checker.flag(huge, col, "out_of_range", lambda x: f"{_shown(x)} s is more than {_MAX_DURATION:g} s", raw)
    return np.where(ok & ~negative & ~huge, v, np.nan)


def _check_probability(checker: _Checker, col: Column, raw: Any) -> np.ndarray:
    """A propensity: a number in (0, 1]; anything else is coerced to missing, its row named in the report."""
    v, missing, bad = _numbers(raw)
    checker.flag(bad, col, "wrong_type", lambda x: f"{_shown(x)} is not a number", raw)
    ok = ~missing & ~bad
    outside = ok & ~((v > 0) & (v <= 1))
    checker.flag(outside, col, "out_of_range", lambda x: f"{_shown(x)} is not a probability in (0, 1]", raw)
    return np.where(ok & ~outside, v, np.nan)


def _check_count(checker: _Checker, col: Column, raw: Any) -> pd.Series:
    v, missing, bad = _numbers(raw)
    if col.required:
        checker.flag(missing, col, "missing_value", lambda x: "missing", raw)
    checker.flag(bad, col, "wrong_type", lambda x: f"{_shown(x)} is not a number", raw)
    ok = ~missing & ~bad
    safe = np.where(ok, v, 0.0)
    whole = ok & (safe >= 0) & (safe == np.floor(safe)) & (safe < 2**53)
    checker.flag(ok & ~whole, col, "out_of_range", lambda x: f"{_shown(x)} is not a whole number >= 0", raw)
    counts = pd.array(np.where(whole, safe, 0).astype(np.int64), dtype="Int64")
    counts[~whole] = pd.NA
    return pd.Series(counts)


def _check_choice(checker: _Checker, col: Column, raw: Any, choices: Mapping[str, Any], missing_ok: bool) -> pd.Series:
    text, missing, _ = _text(raw, CHOICE_NA_TOKENS)
    keys = text.str.lower()
    known = keys.isin(list(choices)).to_numpy()
    if not missing_ok:
        checker.flag(missing, col, "missing_value", lambda x: "missing", raw)
    allowed = "/".join(sorted({str(c) for c in choices.values() if c is not None}))
    checker.flag(~missing & ~known, col, "unknown_value", lambda x: f"{_shown(x)} is not one of {allowed}", raw)
    mapped = keys.map(lambda k: choices.get(k) if isinstance(k, str) else None)
    return pd.Series(pd.array(mapped.where(pd.Series(known), None).to_numpy(dtype=object), dtype=TEXT))


def _check_bool(checker: _Checker, col: Column, raw: Any) -> pd.Series:
    series = (raw if isinstance(raw, pd.Series) else pd.Series(raw)).reset_index(drop=True)
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("boolean")
    if pd.api.types.is_numeric_dtype(series.dtype):
        v = series.to_numpy(dtype=float, na_value=np.nan)
        missing = np.isnan(v)
        parsed = pd.Series(pd.array(np.where(v == 1, True, False), dtype="boolean"))
        bad = ~missing & (v != 0) & (v != 1)
    else:
        text, missing, not_text = _text(series)
        mapped = text.str.lower().map(_BOOLS)
        bad = (~missing & mapped.isna().to_numpy()) | not_text
        parsed = pd.Series(pd.array(mapped.where(~pd.Series(bad | missing), None).to_numpy(dtype=object),
                                    dtype="boolean"))
    if col.required:
        checker.flag(missing, col, "missing_value", lambda x: "missing", raw)
    checker.flag(bad, col, "wrong_type", lambda x: f"{_shown(x)} is not true/false", raw)
    parsed[missing | bad] = pd.NA
    return parsed


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _schema_and_mapping(table: str, columns: Mapping[str, str] | None) -> tuple[tuple[Column, ...], dict[str, str]]:
    if table not in SCHEMAS:
        raise ValueError(f"table must be one of {', '.join(SCHEMAS)}, got {table!r}")
    schema = SCHEMAS[table]
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - {c.name for c in schema})
    if unknown:
        raise ValueError(f"columns: unknown name(s) {', '.join(unknown)} for {table}; "
                         f"ours are: {', '.join(c.name for c in schema)}")
    return schema, mapping


def _require(path: Path, table: str, mapping: Mapping[str, str], header: Iterable[str]) -> None:
    present = set(header)
    missing = {c.name: mapping.get(c.name, c.name) for c in SCHEMAS[table]
               if c.required and mapping.get(c.name, c.name) not in present}
    if missing:
        raise MissingColumns(str(path), table, missing, header)


def check_columns(path: str | os.PathLike[str], table: str, columns: Mapping[str, str] | None = None, *,
                  format: str | None = None, delimiter: str = ",") -> list[str]:
    """The columns of `path` (a CSV file's header, a Parquet file's schema), with no data row read: raises what
    :func:`load_table` would for a file it cannot read at all, of an unknown format, or without a required
    column. A quick check before handing a large file to something slower (the tuner)."""
    _, mapping = _schema_and_mapping(table, columns)
    path = Path(path)
    fmt = _format_of(path, format)
    try:
        if fmt == "csv":
            with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as handle:
                first = handle.readline(1 << 20)
            first = first[3:] if first.startswith(b"\xef\xbb\xbf") else first
            _refuse_binary(path, first)
            header = next(csv.reader([first.decode("utf-8").rstrip("\r\n")], delimiter=delimiter), [])
        else:
            import pyarrow.parquet as pq

            header = [str(name) for name in pq.read_schema(path).names]
    except HistoryError:
        raise
    except Exception as exc:  # as _read: missing, not gzip, not UTF-8, not Parquet, no pyarrow
        raise _unreadable(path, fmt, exc) from None
    if not header or header == [""]:
        raise HistoryError(f"{path}: empty file (no header line)")
    _require(path, table, mapping, header)
    return header


def load_table(path: str | os.PathLike[str], table: str, columns: Mapping[str, str] | None = None, *,
               format: str | None = None, delimiter: str = ",") -> Loaded:
    """Load `table` ("events", "page_views" or "offers") from `path`; see the module docs.

    `columns` maps our column names to the file's (``{"visitor_id": "VisitorID"}``); a column not
    in the mapping is looked for under our own name. Returns ``(frame, report)``.
    """
    schema, mapping = _schema_and_mapping(table, columns)
    path = Path(path)
    report = LoadReport(source=str(path), table=table)
    header, raw_columns, rows, lines = _read(path, _format_of(path, format), report, delimiter)
    _require(path, table, mapping, header)
    used = {c.name: mapping.get(c.name, c.name) for c in schema if mapping.get(c.name, c.name) in raw_columns}
    report.columns = used
    report.absent = [c.name for c in schema if c.name not in used]
    for name in header:
        if name not in used.values():
            report.problems.append(Problem(None, None, None, "ignored_column",
                                           f"column {name!r} is not part of the {table} schema", "ignored"))

    checker = _Checker(report, rows, lines)
    out: dict[str, Any] = {}
    for col in schema:
        if col.name not in used:
            continue
        raw = raw_columns[used[col.name]]
        if col.kind == "id":
            out[col.name] = _check_text(checker, col, raw, _ID_CHARS)
        elif col.kind == "page":
            out[col.name] = _check_text(checker, col, raw, _PAGE_CHARS)
        elif col.kind == "text":
            out[col.name] = _check_text(checker, col, raw, _TEXT_CHARS)
        elif col.kind == "ts":
            out[col.name] = _check_number(checker, col, raw, ts=True)
        elif col.kind == "duration":
            out[col.name] = _check_number(checker, col, raw)
        elif col.kind == "probability":
            out[col.name] = _check_probability(checker, col, raw)
        elif col.kind == "count":
            out[col.name] = _check_count(checker, col, raw)
        elif col.kind == "bool":
            out[col.name] = _check_bool(checker, col, raw)
        elif col.kind == "answer":
            out[col.name] = _check_choice(checker, col, raw, _ANSWERS, missing_ok=True)
        elif col.kind == "offer_answer":
            out[col.name] = _check_choice(checker, col, raw, _OFFER_ANSWERS, missing_ok=False)
        else:  # pragma: no cover - the schemas above use only these kinds
            raise AssertionError(col.kind)

    frame = pd.DataFrame(out, index=pd.RangeIndex(len(rows)))
    keep = ~checker.drop
    frame = frame.loc[keep].reset_index(drop=True)
    kept_rows = rows[keep]
    kept_lines = lines[keep] if lines is not None else None
    # A row whose value was coerced but that was then dropped for another reason counts as dropped.
    dropped = set(rows[checker.drop].tolist())
    report.problems = [p for p in report.problems if not (p.action == COERCED and p.row in dropped)]

    # Time order: report every row that comes before an earlier row's time, then sort (stable).
    time_col = TIME_COLUMN[table]
    times = frame[time_col].to_numpy(dtype=float)
    if len(times):
        running = np.maximum.accumulate(times)
        late = np.flatnonzero(times < np.concatenate(([-np.inf], running[:-1])))
        for i in late.tolist():
            report.problems.append(Problem(int(kept_rows[i]), int(kept_lines[i]) if kept_lines is not None else None,
                                           time_col, "unsorted",
                                           f"{times[i]:.3f} is earlier than a previous row's {running[i - 1]:.3f}",
                                           SORTED))
        report.rows_unsorted = len(late)
        if len(late):
            order = np.argsort(times, kind="stable")
            frame = frame.iloc[order].reset_index(drop=True)

    report.problems.sort(key=lambda p: (p.row is not None, p.row or 0, p.problem == "unsorted"))
    report.rows_kept = len(frame)
    report.rows_dropped = report.rows_read - report.rows_kept
    report.rows_coerced = len({p.row for p in report.problems if p.action == COERCED})
    return Loaded(frame, report)


def load_events(path: str | os.PathLike[str], columns: Mapping[str, str] | None = None, **kwargs: Any) -> Loaded:
    """Observation events (ts, visitor_id, session_id, page, seconds_on_page, ...): ``(frame, report)``."""
    return load_table(path, "events", columns, **kwargs)


def load_page_views(path: str | os.PathLike[str], columns: Mapping[str, str] | None = None, **kwargs: Any) -> Loaded:
    """Page views (visitor_id, session_id, page, enter_ts, dwell_s, ...): ``(frame, report)``."""
    return load_table(path, "page_views", columns, **kwargs)


def load_offers(path: str | os.PathLike[str], columns: Mapping[str, str] | None = None, **kwargs: Any) -> Loaded:
    """Past offers (ts, visitor_id, session_id, page, response accept/decline/none, ...): ``(frame, report)``."""
    return load_table(path, "offers", columns, **kwargs)
