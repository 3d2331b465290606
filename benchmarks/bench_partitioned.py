"""A backtest of a history larger than memory: ≥ 100M events as partitioned Parquet, on both cores and on Dask.

    python benchmarks/bench_partitioned.py                          # 100M events, 128 partitions, var/bench-100m
    python benchmarks/bench_partitioned.py --events 10_000_000 --parts 16 --out var/bench-10m
    python benchmarks/bench_partitioned.py --skip-generate          # reuse the world already written there
    python benchmarks/bench_partitioned.py --no-dask                # the process pool only

Prints: the generation (``pcrules.world.generate_partitioned``: chunks of 62,500 visitors on a process pool,
each partition compacted into one file in time order) with its time and size on disk; the backtest
(``backtest(spec, "<out>/events", scorer, workers=2)``: the default ruleset with two score conditions and a
trained model, as ``bench_backtest.py``) with its wall time, events/s, events/s per core (wall time x workers)
and per CPU-second of the workers (the figure that does not depend on what else the machine runs), and the peak
RSS of the whole process tree (psutil, sampled every 50 ms: the sum over this process and all its children,
which counts pages shared after a fork once per process, so it errs high) next to ``getrusage``'s largest
single process; then the same on a Dask ``LocalCluster`` of 2 worker processes (cluster start-up timed apart)
and a check that both give the same figures.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402

EVENTS_PER_VISITOR = 14.969  # generate_partitioned(): 99,858,179 events for 6,671,114 visitors


class PeakRSS:
    """The peak of the summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            try:
                procs = [me, *me.children(recursive=True)]
            except psutil.Error:
                procs = [me]
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children so far."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def tree_cpu_seconds() -> float:
    """CPU time of this process and its live children (Dask's worker processes are not waited for)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def max_rss_mb() -> tuple[float, float]:
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def report(label: str, result: object, seconds: float, cpu: float, peak: int, workers: int) -> None:
    m = result.metrics  # type: ignore[attr-defined]
    events = m["events"]
    self_mb, child_mb = max_rss_mb()
    print(f"{label}: {events:,} events in {seconds:,.1f} s = {events / seconds:,.0f} events/s "
          f"({events / seconds / workers:,.0f} per core over {workers} workers; "
          f"{events / max(cpu, 1e-9):,.0f} per CPU-second, {cpu:,.0f} CPU-s)")
    print(f"  peak RSS of the process tree {peak / 2**30:.2f} GiB (sum over processes); largest single process: "
          f"this {self_mb:,.0f} MB, a child {child_mb:,.0f} MB")
    print(f"  offers {m['offers']:,}, sessions {m['sessions']:,}, visitors {m['visitors']:,}, "
          f"expected accepts {m['expected_accepts']:,.1f}, refused {m['refused']:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=lambda s: int(float(s.replace("_", ""))), default=100_000_000)
    parser.add_argument("--parts", type=int, default=128, help="partitions (default 128: ~0.8M events each)")
    parser.add_argument("--out", default=None, help="folder for the world (default var/bench-<events>)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-generate", action="store_true", help="reuse the world already in --out")
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out or f"var/bench-{args.events // 1_000_000}m")
    from bench_backtest import bench_spec, train_scorer

    from pcrules.world import generate_partitioned

    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB; load average "
          f"{os.getloadavg()[0]:.1f} at start (other work on a shared machine slows every figure below)")
    visitors = math.ceil(args.events / EVENTS_PER_VISITOR * 1.005)  # a margin: at least --events events
    if not args.skip_generate:
        started = time.perf_counter()
        with PeakRSS() as peak:
            counts = generate_partitioned(out, visitors, args.parts, seed=args.seed, workers=args.workers,
                                          progress=True)
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in out.rglob("*.parquet"))
        print(f"generation: {counts['events']:,} events, {counts['offers']:,} logged offers, {visitors:,} visitors "
              f"in {args.parts} partitions: {seconds:,.0f} s ({counts['events'] / seconds:,.0f} events/s), "
              f"{size / 2**30:.2f} GiB on disk, peak RSS of the tree {peak.peak / 2**30:.2f} GiB")
    spec, scorer = bench_spec(), train_scorer()
    events = str(out / "events")

    started, cpu0 = time.perf_counter(), cpu_seconds()
    with PeakRSS() as peak:
        local = _backtest(spec, events, scorer, "processes", args.workers, None)
    report("backtest, process pool", local, time.perf_counter() - started, cpu_seconds() - cpu0, peak.peak,
           args.workers)

    if args.no_dask:
        return
    from dask.distributed import Client, LocalCluster

    started = time.perf_counter()
    with PeakRSS() as peak:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, memory_limit=0)
        client = Client(cluster)
        up = time.perf_counter() - started
        started, cpu0 = time.perf_counter(), tree_cpu_seconds()
        on_dask = _backtest(spec, events, scorer, "dask", args.workers, client)
        seconds, cpu = time.perf_counter() - started, tree_cpu_seconds() - cpu0
        client.close()
        cluster.close()
    print(f"Dask LocalCluster of {args.workers} worker processes: started in {up:.1f} s")
    report("backtest, Dask", on_dask, seconds, cpu, peak.peak, args.workers)
    same = on_dask.metrics == local.metrics and on_dask.per_rule.equals(local.per_rule)
    print(f"Dask = process pool: {'identical figures' if same else 'DIFFERENT FIGURES'}")


def _backtest(spec: object, events: str, scorer: object, engine: str, workers: int, client: object) -> object:
    from pcrules.analysis.partitioned import backtest_partitioned

    return backtest_partitioned(spec, events, scorer, engine=engine, workers=workers, client=client,
                                keep_offers=False, progress=True)


if __name__ == "__main__":
    main()
