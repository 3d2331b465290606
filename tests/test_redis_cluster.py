"""The Redis store on a real Redis Cluster (3 masters, a replica each, started by the tests: tests/rediscluster.py).

Every script is given keys of one slot; the decisions and outcomes are the memory store's; two server processes
("hosts") on the cluster make no double offer; and a master failing over under load loses no answer, makes no
second offer, and costs 503s only while its slots move.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from rediscluster import REDIS_CLI, LocalCluster
from test_redis_store import _play, _scenario, ev, one_winner_per_offer

from helpers import T0, counter_ids, rule, spec_dict
from pcrules import OfferClosed, Runtime, load_spec
from pcrules.decision import OfferStatus
from pcrules.decision_log import MemoryDecisionLog
from pcrules.policy import QueueStatus
from pcrules.redis_store import RedisStore, StoreUnavailable
from pcrules.runtime.stores.redis import _TAGS, SHARDS, shard_of
from pcrules.server._procs import ServeProcess

pytestmark = [pytest.mark.redis, pytest.mark.services]

_prefixes = itertools.count()
TOKEN = "cluster-test-operator-token"


ListLog = MemoryDecisionLog  # decisions and outcomes in lists (appends are atomic: threads may share one)


@pytest.fixture
def store(redis_cluster: LocalCluster):
    s = RedisStore(redis_cluster.url, prefix=f"c{next(_prefixes)}:", due_check_interval_s=0)
    yield s
    s.clear()
    s.close()


def _slot(cluster: LocalCluster, key: str) -> int:
    return int(subprocess.run([REDIS_CLI, "-p", str(cluster.ports[0]), "CLUSTER", "KEYSLOT", key],
                              capture_output=True, text=True, timeout=5).stdout.strip())


def test_the_shards_spread_over_the_slots_and_a_visitors_keys_share_one():
    from redis.crc import key_slot

    slots = [key_slot(f"p:{{{tag}}}x".encode()) for tag in _TAGS]
    assert [s * SHARDS // 16384 for s in slots] == list(range(SHARDS))  # evenly: a third per master of three
    store = RedisStore("redis://127.0.0.1:1/0", prefix="p:")  # keys only: never connects
    for visitor in ("v1", "a}b{c", "😀", "x" * 128):
        keys = [store._session_key(visitor, "s1"), store._visitor_key(visitor), store._offer_key(visitor, "o1"),
                store._due_key(visitor), store._marker_keys[shard_of(visitor)]]
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys


def test_same_decisions_and_outcomes_as_the_memory_store(store: RedisStore):
    spec = load_spec(spec_dict([rule("bill", seconds=300), rule("plans", page="Plans", seconds=100, queue="Billing",
                                                                 priority=5, pages_viewed={"gte": 3})],
                               holdout=0.2, max_offers_per_session=2, decline_cooldown_s=200,
                               no_answer_cooldown_s=500, session_idle_ttl_s=86400))
    ops = _scenario(5)
    mem_log, redis_log = ListLog(), ListLog()
    with Runtime(spec, log=mem_log, new_offer_id=counter_ids()) as mem, \
            Runtime(spec, log=redis_log, store=store, new_offer_id=counter_ids()) as red:
        assert _play(mem, mem_log, ops) == _play(red, redis_log, ops)
        # and decided together (observe_many: one pipeline, one round trip per master)
        more = [ev(f"b{i}", ts=T0 + 90_000) for i in range(40)]
        assert [d.to_dict() for d in mem.observe_many(more)] == [d.to_dict() for d in red.observe_many(more)]
    assert mem_log.decisions == redis_log.decisions
    assert sorted(mem_log.outcomes, key=str) == sorted(redis_log.outcomes, key=str)  # expiries: shard by shard
    assert {o.status for o in redis_log.outcomes} == set(OfferStatus) - {OfferStatus.OFFERED}


def test_every_script_is_given_keys_of_one_slot(store: RedisStore, redis_cluster: LocalCluster, monkeypatch):
    """CLUSTER KEYSLOT of every key each script is sent with: one slot per call (redis-py would refuse otherwise,
    and a script touching another slot's key would fail on its node)."""
    calls: list[tuple[str, list[str]]] = []
    real = store._eval_once

    def spy(script, batch):
        calls.extend((script.sha, [k for k in keys]) for keys, _ in batch)
        return real(script, batch)

    real_direct = store._eval_direct

    def spy_direct(script, batch, slots):
        calls.extend((script.sha, [k for k in keys]) for keys, _ in batch)
        return real_direct(script, batch, slots)

    monkeypatch.setattr(store, "_eval_once", spy)
    monkeypatch.setattr(store, "_eval_direct", spy_direct)  # batched commits, straight to each master
    rt = Runtime(spec_dict(max_offers_per_session=2, decline_cooldown_s=100), store=store)
    offers = [rt.observe(ev(f"v{i}", ts=T0)) for i in range(12)]
    rt.update_queue("Billing", agents_available=3, estimated_wait_s=10.0, ts=T0)
    rt.observe_many([ev(f"v{i}", ts=T0 + 1) for i in range(12)] + [ev(f"w{i}", ts=T0 + 1) for i in range(12)])
    for i, d in enumerate(offers[:8]):
        getattr(rt, ("accept", "decline")[i % 2])(d.offer_id, ts=T0 + 2, visitor_id=f"v{i}", session_id="s1")
    rt.observe(ev("v9", ts=T0 + 1000))  # v9's offer is due: expired under its session's lock
    assert store.ping()
    scripts = {store._acquire_script.sha: "acquire", store._commit_script.sha: "commit",
               store._check_and_commit_script.sha: "check_and_commit", store._set_queue_script.sha: "set_queue",
               store._due_script.sha: "due", store._adopt_script.sha: "adopt"}
    seen = Counter(scripts.get(sha, sha) for sha, _ in calls)
    assert set(seen) == set(scripts.values()), seen
    slots: dict[str, int] = {}
    for sha, keys in calls:
        got = set()
        for key in keys:
            if key not in slots:
                slots[key] = _slot(redis_cluster, key)
            got.add(slots[key])
        assert len(got) == 1, (scripts.get(sha), keys, got)
    assert len(set(slots.values())) >= SHARDS  # spread: every shard's slot was used


def _reads(cluster: LocalCluster) -> dict[int, int]:
    """Each master's socket reads so far (INFO stats), less the one this question costs."""
    out = {}
    for port in cluster.ports[:cluster.masters]:
        client = cluster.client(port)
        out[port] = int(client.info("stats")["total_reads_processed"])
        client.close()
    return out


def test_observations_decided_together_cost_one_write_to_each_master(store: RedisStore, redis_cluster: LocalCluster):
    rt = Runtime(spec_dict(), store=store, log=ListLog())
    visitors = [f"v{i}" for i in range(60)]
    assert len({shard_of(v) for v in visitors}) > SHARDS // 2  # every master has some
    assert [d.action for d in rt.observe_many([ev(v, ts=T0) for v in visitors])] == ["offer"] * 60
    store.due_check_interval_s = 3600
    idle = {p: b - a for (p, a), b in zip(_reads(redis_cluster).items(), _reads(redis_cluster).values())}
    before = _reads(redis_cluster)
    again = rt.observe_many([ev(v, ts=T0 + 1) for v in visitors])
    after = _reads(redis_cluster)
    assert [d.reason for d in again] == ["offer_pending"] * 60
    # each master read its share of the 60 commits in one go (two reads if the write arrived split), not 20
    assert all(after[p] - before[p] - idle[p] <= 3 for p in before), (before, after)


def test_a_stale_slot_map_costs_a_retry_through_the_cluster_client_not_a_wrong_decision(store: RedisStore):
    """A master that no longer serves a shard's slot (a failover the process has not seen yet) answers MOVED:
    those observations are decided again through redis-py's cluster client, which follows it."""
    from redis import exceptions as redis_exceptions

    from pcrules.runtime.stores.redis import _SHARD_SLOTS

    spec = spec_dict(max_offers_per_session=2)
    visitors = [f"v{i}" for i in range(40)]
    mem_log, redis_log = ListLog(), ListLog()
    with Runtime(spec, log=mem_log, new_offer_id=counter_ids()) as mem, \
            Runtime(spec, log=redis_log, store=store, new_offer_id=counter_ids()) as red:
        first = [ev(v, ts=T0) for v in visitors]
        assert [d.to_dict() for d in mem.observe_many(first)] == [d.to_dict() for d in red.observe_many(first)]
        manager = store._redis.nodes_manager
        slot = _SHARD_SLOTS[shard_of("v3")]
        right = manager.get_node_from_slot(slot)
        wrong = next(n for n in manager.nodes_cache.values() if n.server_type == "primary" and n.name != right.name)
        store.due_check_interval_s = 3600  # no due-offer scan through the cluster client to repair the map first
        manager.slots_cache[slot] = [wrong]
        replies: list[Any] = []
        real = store._eval_direct
        store._eval_direct = lambda *a: replies.extend(real(*a)) or replies[-len(a[1]):]  # type: ignore[method-assign]
        later = [ev(v, ts=T0 + 1) for v in visitors]
        assert [d.to_dict() for d in mem.observe_many(later)] == [d.to_dict() for d in red.observe_many(later)]
        assert any(isinstance(r, redis_exceptions.MovedError) for r in replies)
        assert manager.get_node_from_slot(slot).name == right.name  # learned from the MOVED reply
    assert mem_log.decisions == redis_log.decisions


def test_a_cluster_node_is_asked_for_its_persistence_and_unknown_offers_are_looked_for_everywhere(store: RedisStore):
    assert store.check_persistence().startswith("appendonly yes, appendfsync everysec")
    rt = Runtime(spec_dict(), store=store)
    d = rt.observe(ev("v7", ts=T0))
    assert store.offer(d.offer_id).visitor_id == "v7" and store.offer("no-such-offer") is None
    store.set_queue_status("Billing", QueueStatus(0, 500.0, T0))
    assert store.queue_status() == {"Billing": QueueStatus(0, 500.0, T0)}
    assert rt.observe(ev("v8", ts=T0 + 1)).reason == "queue_busy"  # every shard's copy says so
    assert len(store) == 2


def _rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec_dict([rule("bill", seconds=5)], max_offers_per_session=1,
                                             decline_cooldown_s=3600)))
    return path


@pytest.mark.slow
def test_two_hosts_on_the_cluster_make_no_double_offer_and_lose_no_outcome(redis_cluster: LocalCluster,
                                                                          tmp_path: Path):
    """Two `pcrules serve --redis redis+cluster://...` processes, each its own log; every session observed 6
    times at once across both, every offer answered twice at once (accept on one, decline on the other)."""
    rules = _rules(tmp_path)
    logs = [tmp_path / "a.sqlite", tmp_path / "b.sqlite"]
    worker = lambda k: ServeProcess(["--rules", str(rules), "--redis", redis_cluster.url,  # noqa: E731
                                     "--log", str(logs[k])], log_file=tmp_path / f"{'ab'[k]}.out",
                                    operator_token=TOKEN, config={"address_rate": None, "redis_prefix": "hosts:"})
    with worker(0) as a, worker(1) as b:
        workers = [a.url, b.url]
        n_sessions, per_session = 80, 6

        async def hammer():
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32), timeout=30) as client:
                gate = asyncio.Semaphore(48)

                async def post(url, json=None):
                    async with gate:
                        return await client.post(url, json=json)

                first = await asyncio.gather(*(post(f"{workers[k % 2]}/v1/observe",
                                                    {"visitor_id": f"v{i}", "session_id": f"s{i}",
                                                     "page": "Bill Payment", "seconds_on_page": 6 + k})
                                               for i in range(n_sessions) for k in range(per_session)))
                assert all(r.status_code == 200 for r in first), [r.text for r in first if r.status_code != 200][:3]
                decisions = [r.json() for r in first]
                offers = [d for d in decisions if d["action"] == "offer"]
                answered = await asyncio.gather(*(
                    post(f"{workers[j % 2]}/v1/offers/{d['offer_id']}/{('accept', 'decline')[(i + j) % 2]}",
                         {"visitor_id": d["visitor_id"], "session_id": d["session_id"]})
                    for i, d in enumerate(offers) for j in range(2)))
                return decisions, offers, answered

        decisions, offers, answered = asyncio.run(hammer())
        health = [httpx.get(w + "/healthz").json() for w in workers]
    looker = RedisStore(redis_cluster.url, prefix="hosts:")
    assert looker._scan("hosts:ratelimit*")  # the rate limits were held in the cluster (the same URL)
    looker.clear()
    looker.close()
    assert sorted(d["session_id"] for d in offers) == sorted(f"s{i}" for i in range(n_sessions))
    assert Counter(d["reason"] for d in decisions if d["action"] != "offer") == {
        "offer_pending": n_sessions * (per_session - 1)}
    one_winner_per_offer(offers, answered, *logs)
    assert all(h["store"] == "redis" and h["status"] == "ok" for h in health), health
    for out in ("a.out", "b.out"):
        text = (tmp_path / out).read_text()
        assert "Traceback" not in text
        assert "Redis did not answer" not in text  # the rate limits were held in the cluster too (same URL)


# --------------------------------------------------------------------------- failover under load


def _failover(cluster: LocalCluster, master: int, how: str, marks: dict[str, float]) -> None:
    """Stall `master` (DEBUG SLEEP 4: it answers nothing, as a hung or partitioned host) or SIGKILL it, until its
    replica has taken over; `marks` gets the monotonic times of the fault and of the replica serving. A killed
    master is started again on its data: it rejoins as the new master's replica."""
    replica = cluster.replica_of(master)
    sleeper = None
    if how == "stall":
        sleeper = subprocess.Popen([REDIS_CLI, "-p", str(master), "DEBUG", "SLEEP", "4"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        cluster.procs[master].kill()
    marks["fault"] = time.monotonic()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if "role:master" in subprocess.run([REDIS_CLI, "-p", str(replica), "INFO", "replication"],
                                           capture_output=True, text=True, timeout=5).stdout:
            marks["promoted"] = time.monotonic()
            break
        time.sleep(0.02)
    if sleeper is not None:
        sleeper.wait(15)
    else:
        cluster.procs[master].wait()
        cluster.start_node(master)


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("how", ["stall", "kill"])
def test_a_master_failing_over_under_load_loses_no_answer_and_makes_no_second_offer(how: str):
    """Four threads on two runtimes (two hosts' stores) observe and answer visitors on every shard; one master
    stalls (DEBUG SLEEP) or is killed, and its replica takes over. No session gets two offers, every answer that
    was taken (no error) is what Redis holds and is logged once, an answer refused with 503 is given again and
    taken then; 503s only from the fault until the replica serves (plus a client timeout), none before or
    after, and none for the visitors of the other masters."""
    with LocalCluster(node_timeout_ms=1000) as cluster:
        spec = spec_dict([rule("bill", seconds=5)], holdout=0.0, max_offers_per_session=1, decline_cooldown_s=3600)
        logs = [ListLog(), ListLog()]
        stores = [RedisStore(cluster.url, prefix="f:", socket_timeout_s=0.5, connect_timeout_s=0.3)
                  for _ in range(2)]
        runtimes = [Runtime(spec, store=s, log=log) for s, log in zip(stores, logs)]
        master = cluster.master_of_slot(_slot(cluster, stores[0]._due_keys[0]))
        moving = {k for k in range(SHARDS) if cluster.master_of_slot(_slot(cluster, stores[0]._due_keys[k])) == master}
        lock = threading.Lock()
        record: list[tuple[float, float, str, str, Any]] = []  # (start, end, kind, visitor, result or error)
        unsure: list[tuple[str, str, str, str]] = []  # answers refused with 503: (offer, visitor, session, verb)
        stop = threading.Event()

        def worker(w: int) -> None:
            rnd = random.Random(w)
            while not stop.is_set():
                v, s = f"v{rnd.randrange(400)}", f"s{rnd.randrange(2)}"
                rt = runtimes[rnd.randrange(2)]
                t = time.monotonic()
                try:
                    d = rt.observe(ev(v, s, seconds=6 + rnd.randrange(100), ts=time.time()))
                    with lock:
                        record.append((t, time.monotonic(), "observe", v, d))
                except StoreUnavailable as exc:
                    with lock:
                        record.append((t, time.monotonic(), "503", v, exc))
                    continue
                if d.action != "offer":
                    continue
                verb = rnd.choice(["accept", "decline"])
                t = time.monotonic()
                try:
                    outcome = getattr(runtimes[rnd.randrange(2)], verb)(d.offer_id, ts=time.time(), visitor_id=v,
                                                                         session_id=s)
                    with lock:
                        record.append((t, time.monotonic(), "answer", v, outcome))
                except StoreUnavailable as exc:
                    with lock:
                        record.append((t, time.monotonic(), "503", v, exc))
                        unsure.append((d.offer_id, v, s, verb))

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        marks: dict[str, float] = {}
        _failover(cluster, master, how, marks)
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        # the answers refused with 503, given again now that the replica serves
        again: Counter[str] = Counter()
        for offer_id, v, s, verb in unsure:
            try:
                outcome = getattr(runtimes[0], verb)(offer_id, ts=time.time(), visitor_id=v, session_id=s)
                record.append((time.monotonic(), time.monotonic(), "answer", v, outcome))
                again["taken"] += 1
            except OfferClosed:
                again["already"] += 1
        final = {d.offer_id: stores[0].offer(d.offer_id) for log in logs for d in log.decisions if d.offer_id}
        for s in stores:
            s.clear()
            s.close()

    decisions = [d for log in logs for d in log.decisions]
    offers = Counter((d.visitor_id, d.session_id) for d in decisions if d.action == "offer")
    answers = [r[4] for r in record if r[2] == "answer"]
    outcomes = [o for log in logs for o in log.outcomes]
    errors = [(t, v) for t, _, kind, v, _ in record if kind == "503"]
    slow = [(t, end - t, shard_of(v) in moving) for t, end, _, v, _ in record if end - t > 1.0]
    observed = [r for r in record if r[2] == "observe"]
    window = (marks["fault"], marks["promoted"] + 1.0)  # + the client's timeout and a topology refresh
    print(f"\nfailover ({how}): {len(observed)} observations, {len(answers)} answers, {len(errors)} 503s "
          f"({sum(shard_of(v) in moving for _, v in errors)} for visitors of the moving slots), replica serving "
          f"{marks['promoted'] - marks['fault']:.2f} s after the fault, 503s from "
          f"{min((t for t, _ in errors), default=0) - marks['fault']:+.2f} s to "
          f"{max((t for t, _ in errors), default=0) - marks['fault']:+.2f} s; longest call "
          f"{max(end - t for t, end, *_ in record):.2f} s, {len(slow)} calls over 1 s "
          f"({sum(m for *_, m in slow)} of the moving slots); answers given again: {dict(again)}")
    assert len(observed) > 200 and len(answers) > 20
    assert max(offers.values()) == 1  # no second offer in any session
    # no lost answer: each one taken is logged once and is what Redis holds
    assert Counter(o.offer_id for o in outcomes) == Counter(o.offer_id for o in answers)
    for o in answers:
        assert final[o.offer_id].status == o.status, (o, final[o.offer_id])
    assert again["already"] == 0  # a 503 never hid an answer that was in fact taken
    answered = {o.offer_id for o in answers}
    assert all(r is not None and (r.status == OfferStatus.OFFERED or i in answered) for i, r in final.items())
    # 503s only while the slots move, and only for the visitors whose slots they are; a call that waited on the
    # stalled master (its socket timeout, a topology refresh that asked it) did so then too
    assert all(window[0] - 0.05 <= t <= window[1] for t, _ in errors), (window, [t for t, _ in errors])
    assert all(shard_of(v) in moving for _, v in errors)
    assert all(window[0] - 0.05 <= t <= window[1] and took < 4 for t, took, _ in slow), (window, slow)  # < the stall
    if how == "kill":
        assert errors and not slow  # refused connections: a 503 at once, every call under a second


# --------------------------------------------------------------------------- Sentinel


def test_sentinel_smoke_a_failover_keeps_the_state_and_the_rate_limits_follow_the_url():
    """redis+sentinel://host:port/mymaster: the master Sentinel names; after SENTINEL FAILOVER the replica is the
    master, the session's offer is still pending there (no second offer), and the rate limiter uses the URL."""
    from rediscluster import LocalSentinel

    from pcrules.server.security import RedisRateLimiter

    with LocalSentinel() as sentinel:
        store = RedisStore(sentinel.url, prefix="s:", socket_timeout_s=0.5)
        rt = Runtime(spec_dict(), store=store)
        first = rt.observe(ev("v1", ts=T0))
        assert first.action == "offer"
        assert subprocess.run([REDIS_CLI, "-p", str(sentinel.master), "WAIT", "1", "2000"], capture_output=True,
                              text=True, timeout=5).stdout.strip() == "1"  # the replica has it
        sentinel.failover()
        deadline = time.monotonic() + 10
        while True:  # 503s while the old master steps down, then the new one answers
            try:
                again = rt.observe(ev("v1", ts=T0 + 1))
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert again.reason == "offer_pending"
        assert rt.accept(first.offer_id, ts=T0 + 2).status == OfferStatus.ACCEPTED
        assert store.ping()
        limiter = RedisRateLimiter("visitor", 1.0, 2, sentinel.url, prefix="s:")

        async def hits() -> list[float]:
            try:
                return [await limiter.acquire("k") for _ in range(3)]
            finally:
                await limiter.aclose()

        waits = asyncio.run(hits())
        assert waits[:2] == [0.0, 0.0] and waits[2] > 0 and not limiter.failing  # Redis decided, not the fallback
        store.close()


# --------------------------------------------------------------------------- the previous key layout


def test_keys_of_the_previous_layout_are_reported_once_and_deleted(redis_server, caplog):
    import redis as redis_py

    prefix = f"old{next(_prefixes)}:"
    raw = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
    raw.set(prefix + "epoch", "1700000000:abc")  # an older version's marker, due set and queue version
    raw.zadd(prefix + "due", {"o1": T0})
    raw.set(prefix + "qv", "3")
    store = RedisStore(redis_server.url, prefix=prefix)
    with caplog.at_level("WARNING", logger="pcrules.redis_store"):
        assert store.ping() and store.epoch == "1700000000:abc"  # the marker is kept: nothing else was lost
    assert "previous key layout" in caplog.text and "stop every older worker" in caplog.text
    assert not raw.exists(prefix + "due", prefix + "qv")
    assert all(raw.get(key) == "1700000000:abc" for key in store._marker_keys)
    caplog.clear()
    with caplog.at_level("WARNING", logger="pcrules.redis_store"):
        assert RedisStore(redis_server.url, prefix=prefix).ping()
    assert "previous key layout" not in caplog.text
    store.clear()
    raw.delete(prefix + "epoch", *store._marker_keys)
    store.close()
    raw.close()
