"""Load test of a fleet on this machine: 2 `pcrules serve` hosts + Redis Cluster + a PostgreSQL decision log.

    python benchmarks/bench_fleet.py                          # 2,000/s per host for 60 s, then SQLite, ~4 minutes
    python benchmarks/bench_fleet.py --seconds 10 --rate 500  # a short run
    python benchmarks/bench_fleet.py --no-sqlite --replicas 0

Issue 18's load test. In one run:

- **fleet**: two `python -m pcrules serve` processes stand for two hosts (each its own port and its own journal
  directory), sharing a local Redis Cluster of 3 masters (`--replicas` each, 1 by default as the README advises;
  tests/rediscluster.py starts it) and one PostgreSQL decision log (`--log postgresql://...`; tests/pgserver.py
  starts it, as the tests do: fsync=off, so commits cost no disk flush). An open loop at `--rate` decisions/s to
  EACH host for `--seconds` (latency counted from when a request was due: no coordinated omission), each visitor
  always sent to the same host (visitor affinity, as in bench_server.py). Rate limits lifted (one loopback client
  stands for 20,000 visitors; `--limits` keeps the per-visitor one, in Redis). Offers expire after 15 s
  (OFFER_TIMEOUT_S), so that for most of the run they expire as fast as they are made. Printed per host: the
  rate achieved, p50/p99/max, errors, 429s, 503s.
  Then the hosts' journals are left to drain (their /healthz `log.pending` reaches 0) and every decision the
  client received is looked up in PostgreSQL: an offer by its offer_id, any other decision by (visitor_id,
  session_id, ts) as the answer carries them; each must be there exactly once and nothing else may be.
- **sqlite**: the single-host figures for comparison, measured in the same run: one `pcrules serve` with the
  in-memory store and `--log file.sqlite`, the same open loop at `--rate` for `--seconds`, the same check
  against the SQLite file.

CPU seconds used by each group (servers, redis nodes, postgres and its backends, this client) are printed
with the load average, the rest of the machine's CPU and CPU pressure (PSI), and the servers' own latency from
/metrics: the client shares the machine's cores with everything it measures.

Measured on the quiet 2-core development VM (2026-12-07, after the changes README "A fleet on one machine" lists):
2,000/s per host with no error, 429 or 503, every decision in PostgreSQL exactly once (241,200 of 241,200),
journals drained within 0.01 s; p50 1.5-1.6 ms, p99 15.6 / 18.3 ms (other runs 15.4 / 13.7, 14.4 / 18.8, and 10.8 /
13.7 over 100 s): the target is met, with little room: the fleet and this client use 1.77 of the 2 cores (servers 1.26,
Redis nodes 0.30, PostgreSQL 0.03, client 0.18; a task waited for a core 64 % of the time). With `--limits`:
p99 22-27 ms. Single host, SQLite, same run: 2,000/s, p50 0.48 ms, p99 2.4 ms, server 0.52 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench_server import Result, _run, contention, make_bodies, route  # noqa: E402

from pcrules.server._procs import ServeProcess  # noqa: E402

RULES = ROOT / "pcrules" / "server" / "demo_rules.yaml"
# Offers expire this long after they are made, so that for most of the run they expire as fast as they are made,
# as on a server that has run for a while (with the demo's minute, a minute's run would see none).
OFFER_TIMEOUT_S = 15.0


def rules_file(directory: Path, offer_timeout_s: float = OFFER_TIMEOUT_S) -> Path:
    """The demo ruleset with offers expiring after `offer_timeout_s`."""
    import yaml

    spec = yaml.safe_load(RULES.read_text())
    spec["policy"]["offer_timeout_s"] = offer_timeout_s
    path = directory / f"rules-timeout-{offer_timeout_s:g}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
# One loopback client stands for 20,000 visitors: both rate limits lifted, /metrics readable without a token.
# --limits keeps the per-visitor one (1/s, bursts of 30: each visitor sends about 0.2 requests/s), held in Redis
# by the fleet as a fleet runs; the per-address one stays lifted (they would come from 20,000 addresses).
LIMITED = {"address_rate": None, "metrics_public": True}
LOAD = {**LIMITED, "visitor_rate": None}
Key = tuple
TARGET_RATE, TARGET_P99_MS = 2000.0, 20.0  # issue 18: per host


# --------------------------------------------------------------------------------------------- the client


@dataclass
class HostLoad:
    """What one host answered: latencies and statuses (Result), the bodies of its 200s, connection errors."""

    result: Result = field(default_factory=Result)
    answers: list[bytes] = field(default_factory=list)
    errors: int = 0


async def _connection(host: str, port: int, requests: list[bytes], tickets: asyncio.Queue, start: int,
                      out: HostLoad) -> None:
    """Takes a due time from `tickets`, sends the next request, reads the answer and keeps its body (parsed after
    the run: no JSON on the hot path). A broken connection is counted as an error and opened again."""
    reader, writer = await asyncio.open_connection(host, port)
    i = start
    res = out.result
    try:
        while True:
            due = await tickets.get()
            if due is None:
                return
            req = requests[i]
            i = (i + 1) % len(requests)
            try:
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                out.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            res.latencies.append(time.perf_counter() - due)
            status = int(head[9:12])
            res.statuses[status] = res.statuses.get(status, 0) + 1
            if status == 200:
                out.answers.append(body)
    finally:
        writer.close()


async def open_loop(targets: list[tuple[str, int]], bodies: list[bytes], rate: float, seconds: float,
                    connections: int = 48) -> dict[tuple[str, int], HostLoad]:
    """Requests due every 1/rate s to each target (each visitor to one target); latency from when each was due."""
    routed = route(targets, bodies, sticky=True)
    loads = {t: HostLoad() for t in targets}
    queues: dict[tuple[str, int], asyncio.Queue] = {t: asyncio.Queue() for t in targets}
    tasks = []
    for t in targets:
        step = max(1, len(routed[t]) // connections)
        for c in range(connections):  # each connection starts at its own place in the visitor stream
            tasks.append(asyncio.ensure_future(_connection(t[0], t[1], routed[t], queues[t], c * step, loads[t])))
    await asyncio.sleep(0.2)  # connections open
    start = time.perf_counter()
    interval = 1.0 / rate
    for k in range(int(rate * seconds)):
        due = start + k * interval
        delay = due - time.perf_counter()
        if delay > 0.001:
            await asyncio.sleep(delay)
        for q in queues.values():
            q.put_nowait(due)
    for q in queues.values():
        for _ in range(connections):
            q.put_nowait(None)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for load in loads.values():
        load.result.elapsed = elapsed
    return loads


# --------------------------------------------------------------------------------------------- exactly once


def key_of(action: str, offer_id: str | None, visitor_id: str, session_id: str, ts: float) -> Key:
    """An offer by its offer_id; any other decision by (visitor, session, ts)."""
    if action == "offer" and offer_id:
        return ("offer", offer_id)
    return (visitor_id, session_id, ts)


def received_keys(answers: Iterable[bytes]) -> Counter:
    out: Counter = Counter()
    for body in answers:
        d = json.loads(body)
        out[key_of(d["action"], d.get("offer_id"), d["visitor_id"], d["session_id"], d["ts"])] += 1
    return out


def logged_keys(rows: Iterable[tuple]) -> Counter:
    """rows: (action, offer_id, visitor_id, session_id, ts) from the log's decisions table."""
    return Counter(key_of(*r) for r in rows)


@dataclass
class Check:
    received: int
    logged: int
    missing: int
    extra: int
    duplicated: int
    examples: list

    @property
    def ok(self) -> bool:
        return self.received > 0 and not self.missing and not self.extra

    def line(self) -> str:
        verdict = "OK: every decision received is in the log exactly once, nothing else" if self.ok else "FAILED"
        return (f"exactly once: {self.received:,} decisions received, {self.logged:,} rows logged; missing "
                f"{self.missing:,}, extra {self.extra:,} (of them logged twice or more: {self.duplicated:,}): "
                f"{verdict}" + (f"; e.g. {self.examples[:5]}" if self.examples else ""))


def compare(received: Counter, logged: Counter) -> Check:
    missing = received - logged
    extra = logged - received
    duplicated = sum(1 for k, n in logged.items() if n > 1 and n > received.get(k, 0))
    examples = [("missing", k) for k in list(missing)[:3]] + [("extra", k) for k in list(extra)[:3]]
    return Check(sum(received.values()), sum(logged.values()), sum(missing.values()), sum(extra.values()),
                 duplicated, examples)


QUERY = "SELECT action, offer_id, visitor_id, session_id, ts FROM decisions"


def postgres_rows(url: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(QUERY).fetchall()


def sqlite_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(QUERY).fetchall()


# --------------------------------------------------------------------------------------------- processes and CPU


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and of its children it has reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(parts[1]), sum(int(x) for x in parts[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu(roots: Iterable[int]) -> float:
    """CPU seconds of the processes `roots` and all their descendants (a postgres backend, a uvicorn worker), with
    the CPU of the descendants that have exited and been reaped (counted in their parent)."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(int(name))
            if s is not None:
                stats[int(name)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo += children.get(pid, [])
    return total


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (every process, this benchmark's and everyone else's)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest time is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_pressure() -> float | None:
    """Microseconds some runnable task waited for a CPU, since boot (Linux PSI), or None."""
    try:
        with open("/proc/pressure/cpu") as fh:
            return float(fh.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


class Cpu:
    """CPU seconds of each group of processes between start() and stop(), this client's own, the rest of the
    machine's (other people's processes), and how long runnable tasks waited for a core (PSI)."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups

    def __enter__(self) -> Cpu:
        self.t0, self.own0 = time.monotonic(), time.process_time()
        self.machine0, self.psi0 = machine_cpu(), cpu_pressure()
        self.cpu0 = {g: tree_cpu(p) for g, p in self.groups.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.used = {g: tree_cpu(p) - self.cpu0[g] for g, p in self.groups.items()}
        self.used["client"] = time.process_time() - self.own0
        self.machine = machine_cpu() - self.machine0
        psi = cpu_pressure()
        self.waited = None if psi is None or self.psi0 is None else (psi - self.psi0) / 1e6

    def line(self) -> str:
        parts = ", ".join(f"{g} {s:.1f} s ({s / self.wall:.2f} cores)" for g, s in self.used.items())
        ours = sum(self.used.values())
        others = max(0.0, self.machine - ours)
        waited = "" if self.waited is None else (f"; some runnable task waited for a core "
                                                 f"{self.waited / self.wall:.0%} of the time (PSI)")
        return (f"CPU over {self.wall:.1f} s: {parts}; in all {ours / self.wall:.2f} of {os.cpu_count()} cores; "
                f"other processes on the machine {others / self.wall:.2f} cores{waited}; "
                f"load average {load_average()}")


def scrape(servers: list[ServeProcess]) -> dict[str, float]:
    """The hosts' in-server latency histogram and batch sizes from /metrics, summed over the hosts."""
    out: dict[str, float] = {}
    for srv in servers:
        with urllib.request.urlopen(srv.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith(("pcrules_decision_seconds_", "pcrules_observe_batch_size_")):
                name, value = line.rsplit(" ", 1)
                out[name] = out.get(name, 0.0) + float(value)
    return out


def inside(before: dict[str, float], after: dict[str, float]) -> str:
    """What the servers measured themselves over the load: time from the handler's start to its answer (p50 / p99
    bounds from the histogram's buckets, mean) and the mean observe batch; the rest of the client's latency is
    spent before the handler runs (the kernel's and uvicorn's queues, waiting for a core)."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    n = d.get("pcrules_decision_seconds_count", 0.0)
    if not n:
        return "in-server latency: no observations counted"
    buckets = sorted((float(k.split('le="')[1].split('"')[0]), v) for k, v in d.items()
                     if k.startswith("pcrules_decision_seconds_bucket"))

    def bound(p: float) -> str:
        for le, count in buckets:
            if count >= p * n:
                return f"<= {le * 1000:g} ms"
        return "over the last bucket"

    batches = d.get("pcrules_observe_batch_size_count", 0.0)
    batch = d.get("pcrules_observe_batch_size_sum", 0.0) / batches if batches else float("nan")
    return (f"in-server latency (handler start to answer, /metrics): mean "
            f"{d['pcrules_decision_seconds_sum'] / n * 1000:.2f} ms, p50 {bound(0.5)}, p99 {bound(0.99)}; "
            f"mean observe batch {batch:.1f}")


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def health(srv: ServeProcess) -> dict:
    with urllib.request.urlopen(srv.url + "/healthz", timeout=10) as resp:
        return json.loads(resp.read())


def wait_drained(servers: list[ServeProcess], timeout: float) -> tuple[float, list[int]]:
    """Seconds until every host's journal is moved (/healthz log.pending 0, no problem), and the backlogs seen first."""
    t0 = time.monotonic()
    first = [health(s)["log"]["pending"] for s in servers]
    while True:
        logs = [health(s)["log"] for s in servers]
        if all(lg["pending"] == 0 and lg["problem"] is None for lg in logs):
            return time.monotonic() - t0, first
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the journals did not drain within {timeout} s: {logs}")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------- reporting


def report(label: str, loads: dict[tuple[str, int], HostLoad], names: list[str]) -> None:
    total = Result()
    for name, load in zip(names, loads.values()):
        r = load.result
        total.add(r)
        total.elapsed = r.elapsed
        print(r.line(f"  {label} {name}"))
        print(f"{'':<44} errors {load.errors}, 429s {r.statuses.get(429, 0)}, 503s {r.statuses.get(503, 0)}, "
              f"other non-200 {sum(v for k, v in r.statuses.items() if k not in (200, 429, 503))}")
    if len(loads) > 1:
        print(total.line(f"  {label} all hosts"))
    for name, load in zip(names, loads.values()):
        r = load.result
        lat = sorted(r.latencies)
        rate = r.statuses.get(200, 0) / r.elapsed if r.elapsed else 0.0
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("inf")
        met = rate >= TARGET_RATE * 0.99 and p99 <= TARGET_P99_MS
        print(f"  {label} {name}: target >= {TARGET_RATE:,.0f}/s at p99 <= {TARGET_P99_MS:g} ms "
              f"{'met' if met else 'NOT met'} ({rate:,.0f}/s, p99 {p99:.1f} ms)")


def run_load(targets: list[tuple[str, int]], bodies: list[bytes], args) -> dict[tuple[str, int], HostLoad]:
    # No garbage collection in this client while it measures: a full collection (its answers and latencies grow
    # by thousands a second) stopped it reading answers for ~40 ms, counted as the servers' latency.
    gc.collect()
    gc.disable()
    try:
        return _run(open_loop(targets, bodies, args.rate, args.seconds, args.connections))
    finally:
        gc.enable()


def warm_up(targets: list[tuple[str, int]], bodies: list[bytes], args) -> list[bytes]:
    """A short open loop at a tenth of the rate: code paths, connections, caches. Its decisions are logged too, so
    the client keeps them for the exactly-once check."""
    if args.warmup <= 0:
        return []
    loads = _run(open_loop(targets, bodies, max(50.0, args.rate / 10), args.warmup, 8))
    bad = {t: (lo.errors, {k: v for k, v in lo.result.statuses.items() if k != 200}) for t, lo in loads.items()}
    if any(e or s for e, s in bad.values()):
        print(f"  warm-up: not all answered 200: {bad}")
    return [b for lo in loads.values() for b in lo.answers]


# --------------------------------------------------------------------------------------------- scenarios


def fleet(args, bodies: list[bytes], tmp: Path) -> bool:
    from pgserver import PostgresServer
    from rediscluster import LocalCluster

    t0 = time.monotonic()
    with PostgresServer() as pg, LocalCluster(replicas=args.replicas) as cluster:
        url = pg.new_database("fleet")
        names = ["host A", "host B"]
        servers = [ServeProcess(["--rules", str(rules_file(tmp)), "--redis", cluster.url, "--log", url],
                                log_file=tmp / f"host{k}.out", python=args.server_python,
                                config={**args.load, "log_journal_dir": str(tmp / f"host{k}.journal")})
                   for k in "ab"]
        try:
            for s in servers:
                s.start()
            print(f"fleet: PostgreSQL on {pg.port}, Redis Cluster of {cluster.masters} masters with {args.replicas} "
                  f"replica(s) each, hosts on {', '.join(str(s.port) for s in servers)}; up in "
                  f"{time.monotonic() - t0:.1f} s")
            targets = [("127.0.0.1", s.port) for s in servers]
            answers = warm_up(targets, bodies, args)
            groups = {"servers": [s.proc.pid for s in servers],
                      "redis nodes": [p.pid for p in cluster.procs.values()],
                      "postgres": [pg.proc.pid]}
            before = scrape(servers)
            with Cpu(groups) as cpu:
                loads = run_load(targets, bodies, args)
            after = scrape(servers)
            report("fleet", loads, names)
            print(f"  {cpu.line()}")
            print(f"  {inside(before, after)}")
            print(f"  {contention(servers)}")
            drained_s, backlog = wait_drained(servers, args.drain_timeout)
            print(f"  journals drained {drained_s:.2f} s after the load (backlog then: "
                  f"{', '.join(f'{n} {b:,} records' for n, b in zip(names, backlog))})")
        finally:
            for s in servers:
                s.stop()
        for lo in loads.values():
            answers += lo.answers
        check = compare(received_keys(answers), logged_keys(postgres_rows(url)))
        print(f"  PostgreSQL {check.line()}")
        return check.ok and not any(lo.errors or set(lo.result.statuses) - {200} for lo in loads.values())


def single_sqlite(args, bodies: list[bytes], tmp: Path) -> bool:
    path = tmp / "single.sqlite"
    srv = ServeProcess(["--rules", str(rules_file(tmp)), "--log", str(path)], log_file=tmp / "single.out",
                       python=args.server_python, config=args.load)
    with srv:
        print(f"single host: 1 pcrules serve, memory store, SQLite log {path}")
        targets = [("127.0.0.1", srv.port)]
        answers = warm_up(targets, bodies, args)
        before = scrape([srv])
        with Cpu({"server": [srv.proc.pid]}) as cpu:
            loads = run_load(targets, bodies, args)
        after = scrape([srv])
        report("sqlite", loads, ["host"])
        print(f"  {cpu.line()}")
        print(f"  {inside(before, after)}")
    for lo in loads.values():
        answers += lo.answers
    check = compare(received_keys(answers), logged_keys(sqlite_rows(path)))
    print(f"  SQLite {check.line()}")
    return check.ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load (default 60)")
    parser.add_argument("--rate", type=float, default=2000.0, help="decisions/s to each host (default 2000)")
    parser.add_argument("--connections", type=int, default=48, help="client connections per host (default 48)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up at a tenth of the rate")
    parser.add_argument("--replicas", type=int, default=1, help="Redis Cluster replicas per master (default 1)")
    parser.add_argument("--no-sqlite", action="store_true", help="leave out the single-host SQLite figures")
    parser.add_argument("--no-fleet", action="store_true", help="leave out the fleet")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for the journals")
    parser.add_argument("--server-python", default=sys.executable, help="the Python that runs the servers")
    parser.add_argument("--limits", action="store_true", help="keep the per-visitor rate limit on (in Redis)")
    args = parser.parse_args()
    args.load = LIMITED if args.limits else LOAD
    bodies = make_bodies()
    tmp = Path(tempfile.mkdtemp(prefix="pcrules-bench-fleet-"))
    print(f"pcrules fleet load test: {os.cpu_count()} cores, load average {load_average()} at start; open loop "
          f"{args.rate:,.0f}/s per host for {args.seconds:g} s, latency from when each request was due; client in "
          f"this process (it shares the cores); per-visitor rate limit "
          f"{'on (in Redis for the fleet)' if args.limits else 'lifted'}; offers expire after "
          f"{OFFER_TIMEOUT_S:g} s; targets >= 2,000/s per host, p99 <= 20 ms")
    ok = True
    if not args.no_fleet:
        ok &= fleet(args, bodies, tmp)
    if not args.no_sqlite:
        ok &= single_sqlite(args, bodies, tmp)
    print(f"load average at the end {load_average()}; server output in {tmp}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
