"""Fleet-wide rate limits (issue 18, item 4): with a Redis store the per-visitor and per-address budgets are held
in Redis (pcrules.server.security.RedisRateLimiter), so N workers allow the budget once, not N times.

Against the session's real redis-server (the `redis_server` fixture), a redis-server of its own when a test stops
one, and real `pcrules serve --redis URL --workers 1|2` processes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import warnings
from pathlib import Path

import httpx
import pytest
import redis as redis_py
import yaml

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its TestClient; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from helpers import rule, spec_dict
from pcrules.server import ServerConfig, create_app
from pcrules.server._procs import RedisServer, ServeProcess, free_port
from pcrules.server.security import Limiter, RateLimiter, RedisRateLimiter

pytestmark = [pytest.mark.redis, pytest.mark.services]

_prefixes = iter(range(1_000_000))


def _prefix() -> str:
    """A key namespace of its own for each limiter test (the session's Redis is shared)."""
    return f"rl{time.monotonic_ns()}-{next(_prefixes)}:"


def _acquire_all(limiters: list[RedisRateLimiter], key: str, n: int) -> list[float]:
    async def run() -> list[float]:
        return [await limiters[i % len(limiters)].acquire(key) for i in range(n)]

    return asyncio.run(run())


# --------------------------------------------------------------------------- the limiter against a real Redis


def test_both_implementations_are_limiters(redis_server):
    local: Limiter = RateLimiter("per_visitor", 1, 5)
    shared: Limiter = RedisRateLimiter("per_visitor", 1, 5, redis_server.url)
    assert asyncio.run(local.acquire("v")) == 0.0 and asyncio.run(shared.acquire(f"v{_prefix()}")) == 0.0
    assert local.describe() == "1/s (bursts of 5)"
    assert shared.describe() == "1/s (bursts of 5), shared by every worker"


def test_two_limiters_on_one_redis_share_one_budget(redis_server):
    prefix = _prefix()
    a, b = (RedisRateLimiter("per_visitor", 0.5, 6, redis_server.url, prefix=prefix) for _ in range(2))
    waits = _acquire_all([a, b], "visitor-1", 9)  # alternating, as two workers would
    assert waits[:6] == [0.0] * 6 and all(w > 0 for w in waits[6:]), waits
    assert all(10 <= w <= 12 for w in waits[6:]), waits  # the window is burst / rate = 12 s, it just began
    assert _acquire_all([b], "visitor-2", 1) == [0.0]  # another key has its own budget
    # Two processes' token buckets, as before: twice the budget
    local = [RateLimiter("per_visitor", 0.5, 6) for _ in range(2)]
    assert sum(local[i % 2].hit("visitor-1") == 0.0 for i in range(20)) == 12


def test_keys_are_namespaced_hashed_and_expire(redis_server):
    prefix = _prefix()
    lim = RedisRateLimiter("per_address", 2, 10, redis_server.url, prefix=prefix, secret="k" * 20)
    _acquire_all([lim], "203.0.113.9", 3)
    r = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
    keys = r.keys(prefix + "*")
    assert keys and all(k.startswith(prefix + "ratelimit:") and "per_address" in k for k in keys), keys
    assert not any("203.0.113.9" in k for k in keys)  # neither addresses nor visitor ids reach Redis as sent
    assert all(0 < r.pttl(k) <= 2 * 5 * 1000 for k in keys)  # two windows of burst / rate = 5 s at most
    other = RedisRateLimiter("per_address", 2, 10, redis_server.url, prefix=prefix, secret="j" * 20)
    assert other._digest("203.0.113.9") != lim._digest("203.0.113.9")  # keyed with the visitor-id key


def test_steady_traffic_under_the_rate_passes_after_a_burst_it_recovers_at_the_rate(redis_server):
    prefix = _prefix()
    lim = RedisRateLimiter("per_visitor", 10, 10, redis_server.url, prefix=prefix)  # a window of 1 s

    async def steady() -> list[float]:
        out = []
        for _ in range(20):  # 8/s for 2.5 s: under 10/s, never refused
            out.append(await lim.acquire("steady"))
            await asyncio.sleep(0.125)
        return out

    assert asyncio.run(steady()) == [0.0] * 20
    waits = _acquire_all([lim], "bursty", 12)
    assert waits[:10] == [0.0] * 10 and waits[10] > 0
    # 1.4 s later the burst's window is over and 0.4 s of the next: the burst weighs 10 * 0.6 = 6, so about 4
    # pass (5 with Redis' rounding down), then none (a token bucket would pass up to 10: stricter, never looser)
    time.sleep(1.4)
    again = _acquire_all([lim], "bursty", 8)
    assert 3 <= again.count(0.0) <= 6 and again[-1] > 0 and again[:3] == [0.0] * 3, again


def test_a_burst_smaller_than_one_second_of_the_rate_keeps_the_rate():
    lim = RedisRateLimiter("per_address", 50, 10, "redis://127.0.0.1:1/0")
    assert (lim.window_s, lim.limit) == (1, 50)
    lim = RedisRateLimiter("per_address", 50, 1000, "redis://127.0.0.1:1/0")
    assert (lim.window_s, lim.limit) == (20, 1000)


def test_redis_down_falls_back_to_this_process_buckets_logged_once_and_counted(caplog):
    counted: list[str] = []
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    lim = RedisRateLimiter("per_visitor", 1, 4, dead, on_fallback=counted.append, retry_s=0.05)
    with caplog.at_level(logging.WARNING, logger="pcrules.server"):
        start = time.monotonic()
        waits = _acquire_all([lim], "v", 6)
    assert waits[:4] == [0.0] * 4 and all(w > 0 for w in waits[4:])  # the same budget, per process
    assert counted == ["per_visitor"] * 6 and time.monotonic() - start < 1.0
    warned = [r for r in caplog.records if "Redis did not answer" in r.getMessage()]
    assert len(warned) == 1 and "own token bucket" in warned[0].getMessage()
    skipping = RedisRateLimiter("per_visitor", 1, 4, dead, skip=lambda: True, on_fallback=counted.append)
    assert _acquire_all([skipping], "v", 1) == [0.0] and not skipping.failing  # told the store is down: not asked


def test_a_stalled_redis_costs_one_timeout_per_retry_and_the_limit_returns_with_it(caplog):
    with RedisServer() as server:
        lim = RedisRateLimiter("per_visitor", 1, 100, server.url, prefix=_prefix(), timeout_s=0.2, retry_s=0.5)

        async def run() -> list[tuple[float, float]]:
            out = []
            for i in range(8):
                if i == 1:
                    server.proc.send_signal(signal.SIGSTOP)
                if i == 5:
                    server.proc.send_signal(signal.SIGCONT)
                    await asyncio.sleep(0.6)  # past retry_s: Redis is asked again
                start = time.monotonic()
                wait = await lim.acquire("v")
                out.append((wait, time.monotonic() - start))
            return out

        with caplog.at_level(logging.WARNING, logger="pcrules.server"):
            try:
                timed = asyncio.run(run())
            finally:
                server.proc.send_signal(signal.SIGCONT)
    assert all(w == 0.0 for w, _ in timed)
    assert 0.15 < timed[1][1] < 0.6, timed  # the first check after the stall waits out the timeout ...
    assert all(t < 0.05 for _, t in timed[2:5]), timed  # ... the next ones do not ask Redis
    assert not lim.failing
    said = [r.getMessage() for r in caplog.records if r.name == "pcrules.server"]
    assert sum("did not answer" in m for m in said) == 1 and sum("answers again" in m for m in said) == 1


# --------------------------------------------------------------------------- through the app


def _rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec_dict([rule("bill", seconds=5)], max_offers_per_session=1)))
    return path


def _event(visitor: str) -> dict:
    return {"visitor_id": visitor, "session_id": "s", "page": "Bill Payment", "seconds_on_page": 1}


def test_the_app_answers_429_from_the_shared_budget(redis_server, tmp_path: Path):
    config = ServerConfig(rules=str(_rules(tmp_path)), redis_url=redis_server.url, redis_prefix=_prefix(),
                          visitor_rate=0.1, visitor_burst=3)
    with TestClient(create_app(config), raise_server_exceptions=False) as c:
        got = [c.post("/v1/observe", json=_event("flood")) for _ in range(5)]
        assert [r.status_code for r in got] == [200] * 3 + [429] * 2
        body = got[-1].json()
        assert body["limit"] == "per_visitor" and "shared by every worker" in body["message"]
        assert int(got[-1].headers["retry-after"]) == body["retry_after_s"] and 25 <= body["retry_after_s"] <= 30


def test_with_redis_down_the_routes_are_limited_per_worker_never_crash(tmp_path: Path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = ServerConfig(rules=str(_rules(tmp_path)), redis_url=dead, visitor_rate=0.1, visitor_burst=3,
                          operator_token="t" * 20, redis_allow_volatile=True)
    with TestClient(create_app(config), raise_server_exceptions=False) as c:
        goal = {"visitor_id": "g", "session_id": "s", "goal": "bill_paid"}  # goals need no store: only logged
        assert [c.post("/v1/goals", json=goal).status_code for _ in range(5)] == [202] * 3 + [429] * 2
        assert c.post("/v1/observe", json=_event("o")).status_code == 503  # the store's own refusal
        metrics = c.get("/metrics", headers={"Authorization": "Bearer " + "t" * 20}).text
    assert 'pcrules_rate_limit_fallbacks_total{limit="per_visitor"} 6.0' in metrics
    assert 'pcrules_rate_limit_fallbacks_total{limit="per_address"} 6.0' in metrics  # 5 goals, 1 observation


# --------------------------------------------------------------------------- real workers


def _first_refusals(srv: ServeProcess) -> tuple[int, int]:
    """Rapid requests, each on a new connection (the kernel spreads them over the workers): the request count at
    the first 429 for one visitor, then (many visitors) at the first per-address 429, counted from the start."""
    sent, at_visitor, at_address = 0, 0, 0
    while not at_visitor:
        sent += 1
        r = httpx.post(srv.url + "/v1/observe", json=_event("one-visitor"))
        if r.status_code == 429:
            assert r.json()["limit"] == "per_visitor", r.text
            at_visitor = sent
        else:
            assert r.status_code == 200, r.text
        assert sent < 100
    while not at_address:
        sent += 1
        r = httpx.post(srv.url + "/v1/observe", json=_event(f"visitor-{sent}"))
        if r.status_code == 429:
            assert r.json()["limit"] == "per_address", r.text
            at_address = sent
        else:
            assert r.status_code == 200, r.text
        assert sent < 200
    return at_visitor, at_address


def _served_by(metrics_dir: Path) -> list[float]:
    """The observations each worker process answered (its own counter file)."""
    from prometheus_client.mmap_dict import MmapedDict

    out = []
    for path in sorted(metrics_dir.glob("counter_*.db")):
        out.append(sum(value for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))
                       if '"pcrules_http_errors_total"' in key or '"pcrules_decisions_total"' in key))
    return [n for n in out if n]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_budgets_hold_across_workers(redis_server, tmp_path: Path, workers: int):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    config = {"redis_prefix": f"fleet{workers}-{_prefix()}", "visitor_rate": 0.1, "visitor_burst": 8,
              "address_rate": 0.2, "address_burst": 30}
    with ServeProcess(["--rules", str(_rules(tmp_path)), "--redis", redis_server.url, "--workers", str(workers)],
                      config=config, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
                      log_file=tmp_path / "serve.out") as srv:
        at_visitor, at_address = _first_refusals(srv)
    print(f"{workers} worker(s): first per-visitor 429 at request {at_visitor}, first per-address 429 at "
          f"request {at_address}")
    assert at_visitor == 9  # the burst of 8 passes, the 9th is refused: with 2 workers too, not at the 17th
    assert at_address == 31  # every request counts for the address, the refused one included
    served = _served_by(metrics_dir)
    assert len(served) == workers, served  # each worker answered some of them
    out = (tmp_path / "serve.out").read_text()
    assert "Traceback" not in out and "did not answer" not in out
    assert "rate limits shared by every worker and host (in Redis)" in out


# --------------------------------------------------------------------------- checked in the batch of observations


def _batch_hits(store, limiter: RedisRateLimiter, keys: list[str]) -> list[bool | None]:
    """One hit of each key as a server's batch makes it: limits' own script, one round trip for all."""
    calls = limiter.batch_calls(keys)
    assert calls is not None
    return limiter.batch_results(store.run_script(limiter.script, calls), len(keys))


@pytest.mark.parametrize("where", ["redis", "cluster"])
def test_a_batch_and_a_single_check_draw_on_one_budget(redis_server, redis_cluster, where: str):
    from pcrules.redis_store import RedisStore

    url = redis_server.url if where == "redis" else redis_cluster.url
    prefix = _prefix()
    store = RedisStore(url, prefix=prefix)
    limiter = RedisRateLimiter("per_visitor", 0.1, 5, url, prefix=prefix)
    try:
        keys = [f"v{i}" for i in range(40)]  # over every master of the cluster
        assert _batch_hits(store, limiter, keys * 3) == [True] * 120
        assert _acquire_all([limiter], "v0", 2) == [0.0, 0.0]  # the 4th and 5th of v0's burst
        refused = _acquire_all([limiter], "v0", 1)[0]
        assert 40 <= refused <= 50  # the 6th: the burst of 5 is spent, whichever way it was drawn
        assert _batch_hits(store, limiter, ["v0", "v1", "v1", "v1"]) == [False, True, True, False]
    finally:
        store.close()


def test_the_checks_of_a_batch_cost_one_round_trip():
    from pcrules.server import Service
    from pcrules.server.app import BatchLimits

    # A Redis of its own: it counts the socket reads it does, and no other test's client may add to them.
    with RedisServer() as redis_server:
        config = ServerConfig(rules="pcrules/server/demo_rules.yaml", redis_url=redis_server.url,
                              redis_prefix=_prefix(), visitor_rate=0.1, visitor_burst=2, address_rate=1.0,
                              address_burst=5)
        svc = Service.build(config)
        try:
            assert svc.limits_in_batch
            probe = redis_py.Redis.from_url(redis_server.url)
            reads = lambda: int(probe.info("stats")["total_reads_processed"])  # noqa: E731 - socket reads Redis did
            idle = -reads() + reads()
            assert svc._check_limits([BatchLimits(svc, "10.0.0.9", "w0")]) == [None]  # connected, the script loaded
            batch = [BatchLimits(svc, f"10.0.0.{i % 3}", f"v{i % 4}") for i in range(12)]
            before = reads()
            verdicts = svc._check_limits(batch)
            assert reads() - before - idle <= 2  # 24 checks in one go (two reads if the write arrived split)
            probe.close()
            # address 10.0.0.0 has 4 requests, .1 and .2 4 each (burst 5: all pass); v0..v3 3 each (burst 2)
            assert [v is None for v in verdicts] == [True] * 8 + [False] * 4
            assert {v.limiter.name for v in verdicts[8:]} == {"per_visitor"}
            more = svc._check_limits([BatchLimits(svc, "10.0.0.0", "w1"), BatchLimits(svc, "10.0.0.0", "v0")])
            assert more[0] is None and more[1].limiter.name == "per_address"  # the address first, as the handler
        finally:
            svc.close()
