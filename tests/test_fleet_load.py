"""Issue 18's fleet load test, small: two `pcrules serve` hosts (own ports, own journal directories) on the
session's Redis Cluster and PostgreSQL, an open loop at a low rate to each, visitor affinity. Every request is
answered 200, and every decision the client received is in PostgreSQL exactly once, nothing else.

The full-size figures (2,000/s per host for 60 s, p99, CPU by process group, the single-host SQLite figures):
``python benchmarks/bench_fleet.py``, which this test reuses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pcrules.server._procs import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_fleet  # noqa: E402

pytestmark = pytest.mark.slow

RATE, SECONDS = 300.0, 5.0  # per host


def test_two_hosts_on_redis_cluster_and_postgresql_answer_all_and_log_each_decision_exactly_once(
        postgres_server, redis_cluster, tmp_path):
    url = postgres_server.new_database("test_fleet_load")
    rules = bench_fleet.rules_file(tmp_path, offer_timeout_s=2.0)  # offers expire during the load too
    servers = [ServeProcess(["--rules", str(rules), "--redis", redis_cluster.url, "--log", url],
                            log_file=tmp_path / f"host{k}.out",
                            config={**bench_fleet.LIMITED, "log_journal_dir": str(tmp_path / f"host{k}.journal"),
                                    "redis_prefix": "fleetload:"})
               for k in "ab"]
    try:
        for s in servers:
            s.start()
        targets = [("127.0.0.1", s.port) for s in servers]
        loads = bench_fleet._run(bench_fleet.open_loop(targets, bench_fleet.make_bodies(4000), RATE, SECONDS,
                                                       connections=16))
        for (_, port), load in loads.items():
            assert load.errors == 0, f"host on {port}: {load.errors} broken connections"
            assert load.result.statuses == {200: int(RATE * SECONDS)}, f"host on {port}: {load.result.statuses}"
        drained_s, _ = bench_fleet.wait_drained(servers, 20)
        assert all(bench_fleet.health(s)["log"]["database"] == "postgresql" for s in servers)
    finally:
        for s in servers:
            s.stop()
    answers = [b for load in loads.values() for b in load.answers]
    check = bench_fleet.compare(bench_fleet.received_keys(answers),
                                bench_fleet.logged_keys(bench_fleet.postgres_rows(url)))
    assert check.ok, check.line()
    assert check.received == 2 * int(RATE * SECONDS)
    import psycopg

    with psycopg.connect(url) as conn:  # the offers that expired meanwhile, each closed once by one host
        expired = conn.execute("SELECT offer_id, count(*) FROM outcomes WHERE status = 'expired' "
                               "GROUP BY offer_id").fetchall()
        offers = {r[0] for r in conn.execute("SELECT offer_id FROM decisions WHERE action = 'offer'")}
    assert len(expired) > 100 and all(n == 1 for _, n in expired) and {o for o, _ in expired} <= offers
    a, b = ({json.loads(body)["visitor_id"] for body in load.answers} for load in loads.values())
    assert a and b and not a & b  # visitor affinity: each visitor was answered by one host only
