"""How long the synthetic world takes for a million observation events; writing and loading them back.

    python benchmarks/bench_world.py [--events 1000000] [--seed 0] [--no-io]

Prints the generation time (the number that must stay well under a minute), events/s, and, unless
--no-io, the time and size of writing Parquet and gzipped CSV and of loading the events back through
the checking loaders of ``pcrules.history``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pcrules.history import load_events  # noqa: E402
from pcrules.world import generate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="at least this many events (default 1M)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-io", action="store_true", help="only time the generation")
    args = parser.parse_args()

    pilot = generate(visitors=5_000, seed=args.seed)
    per_visitor = len(pilot.events) / 5_000
    visitors = int(args.events / per_visitor * 1.02) + 1

    started = time.perf_counter()
    world = generate(visitors=visitors, seed=args.seed, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - started
    n = len(world.events)
    print(f"generate: {visitors:,} visitors -> {n:,} events, {len(world.page_views):,} page views, "
          f"{len(world.offers):,} offers in {seconds:.2f} s ({n / seconds:,.0f} events/s)")
    if args.events >= 1_000_000 and n >= 1_000_000:
        print(f"1M events: {seconds * 1_000_000 / n:.2f} s")
    if args.no_io:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("parquet", "csv.gz"):
            started = time.perf_counter()
            paths = world.write(Path(tmp) / fmt.replace(".", "_"), format=fmt)
            written = time.perf_counter() - started
            sizes = ", ".join(f"{name} {path.stat().st_size / 1e6:.1f} MB" for name, path in paths.items())
            started = time.perf_counter()
            _, report = load_events(paths["events"])
            loaded = time.perf_counter() - started
            print(f"{fmt:<8} write {written:5.2f} s ({sizes}); load_events {loaded:5.2f} s, "
                  f"{report.rows_kept:,} rows kept, {len(report.problems)} problem(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
