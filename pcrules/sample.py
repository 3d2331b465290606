"""The small shipped sample of observation events, its reader, and the generator that made it.

Stdlib only. The sample stands in for real history until the synthetic world
(with a known ground truth) replaces it: visitors browse a telecom site; the
browser sends an observation when a page is entered and re-checks while the
visitor stays; each row also says how the visitor *would* answer an offer made
at that moment (``response``: accept / decline / empty for no answer, after
``response_delay_s``), so a replay can play the answers back.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import random
from pathlib import Path
from typing import Any, Iterator

__all__ = ["SAMPLE_PATH", "COLUMNS", "generate", "write_sample", "read_events"]

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "sample_events.csv.gz"
COLUMNS = ("ts", "visitor_id", "session_id", "page", "seconds_on_page", "pages_viewed", "session_seconds",
           "device", "returning", "response", "response_delay_s")
# page -> (median dwell seconds, how much harder it gets when the visitor needs help)
PAGES = {
    "Home": (20, 1.2), "Plans": (70, 2.0), "Roaming": (60, 2.0), "Bill Payment": (80, 3.0),
    "Checkout": (60, 2.5), "Account": (40, 1.5), "FAQ": (50, 2.5), "Support": (45, 2.5), "Contact": (30, 1.5),
}
RECHECKS = (0, 15, 30, 60, 90, 120, 150, 180, 240, 300, 420, 600, 900)
START_TS = 1764057600  # 2025-11-25 08:00 UTC


def generate(visitors: int = 1500, seed: int = 7, days: int = 3) -> Iterator[dict[str, Any]]:
    rnd = random.Random(seed)
    pages = list(PAGES)
    for v in range(visitors):
        visitor_id = f"v{v:06d}"
        device = rnd.choices(["desktop", "mobile", "tablet"], [0.55, 0.4, 0.05])[0]
        for s in range(1 + (rnd.random() < 0.25)):
            returning = s > 0 or rnd.random() < 0.3
            needs_help = rnd.random() < 0.25
            ts = START_TS + rnd.uniform(0, days * 86400)
            session_start = ts
            for viewed in range(1, 2 + min(int(rnd.expovariate(1 / 3)), 12)):
                page = "Home" if viewed == 1 and rnd.random() < 0.6 else rnd.choice(pages)
                median, hard = PAGES[page]
                dwell = median * (hard if needs_help else 1.0) * math.exp(rnd.gauss(0, 0.9))  # heavy tail
                for at in RECHECKS:
                    if at > dwell:
                        break
                    minutes = at / 60
                    p_accept = min(0.6, (0.03 + 0.1 * needs_help + 0.05 * returning) * (1 + min(minutes, 4) / 2))
                    draw = rnd.random()
                    response = "accept" if draw < p_accept else "decline" if draw < p_accept + 0.35 else ""
                    yield {
                        "ts": round(ts + at, 3), "visitor_id": visitor_id, "session_id": f"{visitor_id}-s{s}",
                        "page": page, "seconds_on_page": at, "pages_viewed": viewed,
                        "session_seconds": round(ts + at - session_start, 3), "device": device,
                        "returning": returning, "response": response,
                        "response_delay_s": round(rnd.uniform(2, 40), 1) if response else "",
                    }
                ts += dwell + rnd.uniform(1, 5)


def write_sample(path: Path = SAMPLE_PATH, **kwargs: Any) -> int:
    rows = sorted(generate(**kwargs), key=lambda r: (r["ts"], r["visitor_id"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as out:  # mtime=0: the same rows give the same bytes
        out.write(buffer.getvalue().encode())
    return len(rows)


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
