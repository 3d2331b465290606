"""The compiled one-event scorer against single-row scikit-learn ``predict_proba``, measured in one run.

    python benchmarks/bench_scoring.py [--visitors 20000] [--events 20000] [--sklearn-events 500]

Trains an ``AcceptanceModel`` on a synthetic world (``pcrules.world`` when it is
there, else a small built-in frame), then scores the same events one at a time
(a) through ``pipeline_.predict_proba`` on a one-row DataFrame, which is what a
runtime calling scikit-learn per event would do, and (b) through the compiled
scorer loaded from the model's JSON with ``load_scorer`` on the event's dict.
Prints both per-event times, the ratio (target >= 100x), and the largest
difference between the two paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pcrules.scoring import AcceptanceModel, load_scorer  # noqa: E402

FIELDS = ["visitor_id", "session_id", "page", "seconds_on_page", "ts", "pages_viewed", "session_seconds", "device",
          "returning"]


def history(visitors: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, str]:
    try:
        from pcrules.world import generate
    except ImportError:
        generate = None
    if generate is not None:
        events = generate(visitors=visitors, seed=seed).events
        return events[FIELDS], (events["response"] == "accept").to_numpy(), "pcrules.world"
    rng = np.random.default_rng(seed)
    n = visitors * 15
    pages = np.array(["Home", "Bill Payment", "Plans", "Roaming", "Checkout", "Account", "FAQ", "Support", "Contact"])
    frame = pd.DataFrame({
        "visitor_id": [f"v{i}" for i in rng.integers(0, visitors, n)], "session_id": "s",
        "page": rng.choice(pages, n),
        "seconds_on_page": rng.choice([0, 15, 30, 60, 120, 180, 300, 600], n).astype(float),
        "ts": 1764057600.0 + rng.uniform(0, 86400 * 3, n), "pages_viewed": rng.integers(1, 12, n),
        "session_seconds": rng.exponential(400.0, n), "device": rng.choice(["desktop", "mobile", "tablet"], n),
        "returning": rng.random(n) < 0.3,
    })
    z = -3 + 0.3 * np.log1p(frame["seconds_on_page"]) - 0.02 * frame["seconds_on_page"] / 60 + 0.5 * frame["returning"]
    return frame, rng.random(n) < 1 / (1 + np.exp(-z)), "built-in frame"


def per_event(fn, items, repeat: int = 3) -> float:
    """Best-of-`repeat` mean seconds per call of fn(item) over `items`."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - start) / len(items))
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=20_000, help="synthetic visitors to train on")
    parser.add_argument("--events", type=int, default=20_000, help="events scored through the compiled path")
    parser.add_argument("--sklearn-events", type=int, default=500, help="events scored one by one through sklearn")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    frame, y, source = history(args.visitors, args.seed)
    start = time.perf_counter()
    model = AcceptanceModel().fit(frame, y)
    fit_s = time.perf_counter() - start
    scorer = load_scorer(json.loads(json.dumps(model.to_dict())))
    sample = frame.sample(n=min(args.events, len(frame)), random_state=args.seed)
    dicts = [{k: v for k, v in row.items() if v is not None} for row in sample.to_dict("records")]
    rows = [sample.iloc[[i]] for i in range(min(args.sklearn_events, len(sample)))]

    per_sklearn = per_event(model.pipeline_.predict_proba, rows, repeat=2)
    per_compiled = per_event(scorer.predict_proba_one, dicts, repeat=5)
    batch = model.pipeline_.predict_proba(sample)[:, 1]
    diff = max(abs(scorer.predict_proba_one(d) - p) for d, p in zip(dicts, batch))
    laps = []
    for d in dicts[:2000]:
        t0 = time.perf_counter()
        scorer.predict_proba_one(d)
        laps.append(time.perf_counter() - t0)
    laps.sort()

    print(f"training data: {source}, {len(frame):,} events, fit in {fit_s:.2f} s")
    print(f"sklearn pipeline_.predict_proba, one row:  {per_sklearn * 1e6:10.1f} us/event  ({len(rows):,} events)")
    print(f"compiled predict_proba_one (from JSON):    {per_compiled * 1e6:10.2f} us/event  ({len(dicts):,} events; "
          f"p50 {statistics.median(laps) * 1e6:.2f} us, p99 {laps[int(len(laps) * 0.99)] * 1e6:.2f} us)")
    ratio = per_sklearn / per_compiled
    print(f"ratio: compiled is {ratio:,.0f}x faster (target >= 100x)")
    print(f"max |compiled - pipeline| over {len(dicts):,} events: {diff:.2e} (must be <= 1e-9)")
    return 0 if ratio >= 100 and diff <= 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
