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
from pathlib import Path
from typing import Any, Iterator

__all__ = ["SAMPLE_PATH", "COLUMNS", "SAMPLE_VISITORS", "SAMPLE_SEED", "SAMPLE_DAYS", "SAMPLE_START",
           "generate", "write_sample", "read_events"]

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "sample_events.csv.gz"
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
    """Rows of a sample file as events (typed), with the recorded answer under `response`."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                event: dict[str, Any] = {
                    "ts": float(row["ts"]), "visitor_id": row["visitor_id"], "session_id": row["session_id"],
                    "page": row["page"], "seconds_on_page": float(row["seconds_on_page"]),
                    "pages_viewed": int(row["pages_viewed"]), "session_seconds": float(row["session_seconds"]),
                    "device": row["device"], "returning": row["returning"] == "True",
                }
                delay = float(row["response_delay_s"]) if row["response_delay_s"] else None
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}: line {line}: {exc}") from None
            yield {"event": event, "response": row["response"] or None, "response_delay_s": delay}
