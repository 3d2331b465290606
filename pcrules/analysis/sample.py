"""The small shipped sample of observation events, its reader, and the call that made it.

The sample is a slice of the synthetic world (:mod:`pcrules.world`, which has a known ground
truth): visitors browse a telecom site; the browser sends an observation when a page is entered
and re-checks while the visitor stays; each row also says how the visitor *would* answer an offer
made at that moment (``response``: accept / decline / empty for no answer, after
``response_delay_s``), so a replay can play the answers back.

Reading the sample (:func:`read_events`) needs only the standard library, so ``make demo`` runs
without pandas; making it (:func:`generate`, :func:`write_sample`) needs numpy and pandas, which
are imported only then.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import resources

__all__ = ["SAMPLE_PATH", "COLUMNS", "SAMPLE_VISITORS", "SAMPLE_SEED", "SAMPLE_DAYS", "SAMPLE_START",
           "generate", "write_sample", "read_events"]

SAMPLE_PATH = resources.sample_events()  # pcrules/data/sample_events.csv.gz (data/ in a checkout links to it)
COLUMNS = ("ts", "visitor_id", "session_id", "page", "seconds_on_page", "pages_viewed", "session_seconds",
           "device", "returning", "response", "response_delay_s")
# What the shipped file is: `pcrules.world.generate(visitors=2500, seed=7, start="2025-11-24", days=7).events`.
SAMPLE_VISITORS = 2500
SAMPLE_SEED = 7
SAMPLE_DAYS = 7
SAMPLE_START = "2025-11-24"  # a Monday, site time (UTC+1)


def _frame(visitors: int, seed: int, days: int, start: Any) -> Any:
    from .world import generate as generate_world

    events = generate_world(visitors=visitors, seed=seed, days=days, start=start).events
    return events[list(COLUMNS)]


def generate(visitors: int = SAMPLE_VISITORS, seed: int = SAMPLE_SEED, days: int = SAMPLE_DAYS,
             start: Any = SAMPLE_START) -> Iterator[dict[str, Any]]:
    """The sample's rows as plain dicts, sorted by ``ts`` (no answer: ``response`` and
    ``response_delay_s`` are ``""``, as in the file)."""
    frame = _frame(visitors, seed, days, start)
    for row in frame.to_dict("records"):
        if not isinstance(row["response"], str):
            row["response"] = ""
        if isinstance(row["response_delay_s"], float) and math.isnan(row["response_delay_s"]):
            row["response_delay_s"] = ""
        yield row


def write_sample(path: Path = SAMPLE_PATH, **kwargs: Any) -> int:
    """Write the sample (gzipped CSV, no gzip timestamp: the same arguments give the same bytes)."""
    from .world import write_csv_gz

    frame = _frame(kwargs.get("visitors", SAMPLE_VISITORS), kwargs.get("seed", SAMPLE_SEED),
                   kwargs.get("days", SAMPLE_DAYS), kwargs.get("start", SAMPLE_START))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_gz(frame, path)
    return len(frame)


def read_events(path: Path | str = SAMPLE_PATH) -> Iterator[dict[str, Any]]:
    """Rows of an events file (the sample's gzipped CSV, a CSV, or Parquet as ``sample-data`` writes) as events
    (typed), with the recorded answer under `response`. A missing file, missing columns or a bad row raise
    ValueError naming the file (and the row); nothing is read past it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such events file")
    rows, first = (_parquet_rows(path), 1) if path.suffix == ".parquet" else (_csv_rows(path), 2)
    for line, row in enumerate(rows, start=first):
        try:
            event: dict[str, Any] = {
                "ts": float(row["ts"]), "visitor_id": str(row["visitor_id"]), "session_id": str(row["session_id"]),
                "page": str(row["page"]), "seconds_on_page": float(row["seconds_on_page"]),
                "pages_viewed": int(row["pages_viewed"]), "session_seconds": float(row["session_seconds"]),
                "device": str(row["device"]), "returning": row["returning"] in (True, "True", "true", 1, "1"),
            }
            response = row["response"] if isinstance(row["response"], str) and row["response"] else None
            delay = row["response_delay_s"]
            delay = None if delay in ("", None) or delay != delay else float(delay)  # NaN != NaN
        except (KeyError, ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"{path}: {'line' if first == 2 else 'row'} {line}: {exc}") from None
        yield {"event": event, "response": response, "response_delay_s": delay}


def _missing(path: Path, columns: Any) -> None:
    missing = [c for c in COLUMNS if c not in set(columns or ())]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (an events file has {', '.join(COLUMNS)})")


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            _missing(path, reader.fieldnames)
            yield from reader
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable CSV events file ({exc}); Parquet files end in .parquet") from None


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pcrules[analysis] (pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's errors have no common base worth naming
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
    _missing(path, table.column_names)
    yield from table.select(list(COLUMNS)).to_pylist()
