"""The Redis state store: same decisions as the memory store, atomic across processes, honest about outages.

Every test runs against a real redis-server started here on a free port (and
stopped after). Without redis-server the tests fail with a clear message
rather than skip: CI installs it (.ci/run).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import re
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from helpers import T0, counter_ids, rule, spec_dict
from pcrules import InvalidEvent, OfferClosed, OfferNotFound, Runtime, load_spec
from pcrules.decision import OfferStatus
from pcrules.decision_log import MemoryDecisionLog
from pcrules.policy import QueueStatus, SessionState, VisitorState
from pcrules.redis_store import LockLost, RedisStore, StoreBusy, StoreUnavailable
from pcrules.server._procs import REDIS_SERVER, RedisServer, ServeProcess

pytestmark = pytest.mark.redis

TOKEN = "redis-test-operator-token"  # the operator routes (here /metrics) need one


def _need_redis() -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.fail(f"redis-server is needed for these tests and was not found at {REDIS_SERVER}: "
                    f"apt-get install -y redis-server (.ci/run does), or set PCRULES_REDIS_SERVER", pytrace=False)


# redis_server: one redis-server for the session (tests/conftest.py)


_prefixes = itertools.count()


@pytest.fixture
def store(redis_server):
    s = RedisStore(redis_server.url, prefix=f"t{next(_prefixes)}:", due_check_interval_s=0)
    yield s
    s.clear()
    s.close()


ListLog = MemoryDecisionLog


def ev(visitor="v1", session="s1", page="Bill Payment", seconds=301.0, ts=T0, **extra):
    return {"visitor_id": visitor, "session_id": session, "page": page, "seconds_on_page": seconds, "ts": ts, **extra}


# --------------------------------------------------------------------------- the same decisions as the memory store


def _scenario(seed: int, steps: int = 400) -> list[tuple]:
    rnd = random.Random(seed)
    ops, t = [], T0
    visitors = [f"v{i}" for i in range(12)]
    for _ in range(steps):
        t += rnd.choice([0.5, 1, 3, 10, 40, 70])  # sometimes past the 60 s offer timeout
        kind = rnd.random()
        if kind < 0.65:
            v = rnd.choice(visitors)
            ops.append(("observe", ev(v, f"s{rnd.randrange(3)}", rnd.choice(["Bill Payment", "Home", "Plans"]),
                                      rnd.choice([10.0, 150.0, 301.0, 400.0]), t, pages_viewed=rnd.randrange(1, 6))))
        elif kind < 0.92:
            ops.append((rnd.choice(["accept", "decline", "expire"]), rnd.randrange(40), t))
        else:
            ops.append(("queue", rnd.choice([0, 2, None]), t))
    return ops


def _play(runtime: Runtime | list[Runtime], log: ListLog, ops: list[tuple], seed: int = 0,
          seen: list | None = None) -> list:
    """Run `ops` in order; given several runtimes, each op goes to one of them at random. Answers go to offers
    in `seen` (the offer ids so far, extended here)."""
    runtimes = runtime if isinstance(runtime, list) else [runtime]
    pick = random.Random(seed)
    seen = [] if seen is None else seen
    results = []
    for op in ops:
        runtime = pick.choice(runtimes)
        if op[0] == "observe":
            d = runtime.observe(op[1])
            if d.offer_id:
                seen.append(d.offer_id)
            results.append(d.to_dict())
        elif op[0] == "queue":
            runtime.update_queue("Billing", agents_available=op[1], ts=op[2])
        else:
            offer_id = seen[op[1] % len(seen)] if seen else "none-yet"
            try:
                results.append(getattr(runtime, op[0])(offer_id, ts=op[2]))
            except (OfferNotFound, OfferClosed) as exc:
                results.append(f"{type(exc).__name__}: {exc}")
    return results


@pytest.mark.parametrize("seed, explore, no_answer", [(1, None, 0), (2, None, 0), (3, None, 0),
                                                      (1, {"share": 0.45, "waits": [0, 50, 100, 400]}, 0),
                                                      (5, None, 500)])
def test_same_decisions_and_outcomes_as_the_memory_store(store: RedisStore, seed: int, explore: dict | None,
                                                         no_answer: float):
    """With exploration too: what an explored session has seen travels through Redis with the session; and
    with a no-answer cooldown, which an expiry sets on the visitor."""
    spec = load_spec(spec_dict([rule("bill", seconds=300), rule("plans", page="Plans", seconds=100, queue="Billing",
                                                                 priority=5, pages_viewed={"gte": 3})],
                               holdout=0.2, max_offers_per_session=2, decline_cooldown_s=200,
                               no_answer_cooldown_s=no_answer, session_idle_ttl_s=86400,
                               **({"explore": explore} if explore else {})))
    ops = _scenario(seed)  # spans hours of event time: idle sessions are forgotten by Redis on its own (wall) clock
    mem_log, redis_log = ListLog(), ListLog()
    with Runtime(spec, log=mem_log, new_offer_id=counter_ids()) as mem, \
            Runtime(spec, log=redis_log, store=store, new_offer_id=counter_ids()) as red:
        assert _play(mem, mem_log, ops) == _play(red, redis_log, ops)
    assert mem_log.decisions == redis_log.decisions
    assert sorted(mem_log.outcomes, key=str) == sorted(redis_log.outcomes, key=str)
    statuses = Counter(o.status for o in redis_log.outcomes)
    assert statuses[OfferStatus.ACCEPTED] and statuses[OfferStatus.DECLINED] and statuses[OfferStatus.EXPIRED]
    assert any(d.reason == "holdout" for d in redis_log.decisions)
    if no_answer:  # some observation met a visitor blocked by an expiry alone (no decline of theirs before it)
        declined: dict[str, float] = {}
        for o in redis_log.outcomes:
            if o.status == OfferStatus.DECLINED:
                declined[o.visitor_id] = min(o.ts, declined.get(o.visitor_id, math.inf))
        assert any(d.reason == "cooldown" and d.ts < declined.get(d.visitor_id, math.inf) for d in redis_log.decisions)
    if explore:
        offers = [d for d in redis_log.decisions if d.expires_at is not None]
        assert any(d.explored for d in offers) and any(d.propensity < 0.5 for d in offers)


@pytest.mark.parametrize("seed", [4, 5])
def test_two_processes_taking_turns_at_random_decide_as_one_memory_store(store: RedisStore, redis_server,
                                                                         seed: int):
    """Each op goes to one of two runtimes with their own store (cache, connection): every other observation
    meets a session the other one wrote last, so the one-round-trip path is refused and decided again often."""
    spec = load_spec(spec_dict([rule("bill", seconds=300), rule("plans", page="Plans", seconds=100, queue="Billing",
                                                                 priority=5, pages_viewed={"gte": 3})],
                               holdout=0.2, max_offers_per_session=2, decline_cooldown_s=200,
                               session_idle_ttl_s=86400))
    ops = _scenario(seed)
    mem_log, log_a, log_b = ListLog(), ListLog(), ListLog()
    other = RedisStore(redis_server.url, prefix=store.prefix, due_check_interval_s=0)
    ids = counter_ids()  # one sequence for both, as the ops run one at a time
    with Runtime(spec, log=mem_log, new_offer_id=counter_ids()) as mem, \
            Runtime(spec, log=log_a, store=store, new_offer_id=ids) as a, \
            Runtime(spec, log=log_b, store=other, new_offer_id=ids) as b:
        expected, got = _play(mem, mem_log, ops), _play([a, b], log_a, ops, seed)
    # A refused try may have drawn an offer id and then decided no offer (the queue had turned busy): the ids
    # differ, so they are compared by order of first appearance.
    rename = _by_first_appearance(got)
    assert str(expected) == rename(str(got))
    assert sorted(map(str, mem_log.decisions)) == sorted(rename(str(d)) for d in log_a.decisions + log_b.decisions)
    assert sorted(map(str, mem_log.outcomes)) == sorted(rename(str(o)) for o in log_a.outcomes + log_b.outcomes)
    assert store.stale_reads + other.stale_reads > 20
    other.close()


def _by_first_appearance(results: list) -> Any:
    names: dict[str, str] = {}
    for found in re.findall(r"\bo\d+\b", str(results)):
        names.setdefault(found, f"o{len(names) + 1}")
    return lambda text: re.sub(r"\bo\d+\b", lambda m: names.get(m.group(0), m.group(0)), text)


# --------------------------------------------------------------------------- keys, expiries, merges


def test_expiries_follow_the_policy(store: RedisStore):
    spec = load_spec(spec_dict(session_idle_ttl_s=900, decline_cooldown_s=3600))
    rt = Runtime(spec, store=store)
    store.configure(session_ttl_s=spec.policy.session_idle_ttl_s)
    d = rt.observe(ev(ts=T0))
    r = store._redis
    session_key = store._session_key("v1", "s1")
    assert 899_000 < r.pttl(session_key) <= 900_000
    assert 900_000 < r.pttl(store._offer_key("v1", d.offer_id)) <= 960_000
    assert r.zscore(store._due_key("v1"), d.offer_id) == T0 + 60
    rt.decline(d.offer_id, ts=T0 + 10)
    # until the cooldown ends (decline + 3600 s, counted from the session's last event), plus a minute
    assert 3_660_000 < r.pttl(store._visitor_key("v1")) <= 3_670_000
    assert r.zscore(store._due_key("v1"), d.offer_id) is None  # answered: no longer waiting to expire
    assert store.visitor("v1") == VisitorState(T0 + 10 + 3600)
    assert store.evict_idle(T0 + 10_000) == []  # Redis forgets by itself


def test_a_cooldown_is_never_lowered_by_another_session(store: RedisStore):
    store.save("v1", "s1", SessionState(last_seen=T0), VisitorState(T0 + 500))
    store.save("v1", "s2", SessionState(last_seen=T0), VisitorState(T0 + 100))  # an older view of the visitor
    assert store.visitor("v1") == VisitorState(T0 + 500)
    with store.session_lock("v1", "s3"):
        store.save("v1", "s3", SessionState(last_seen=T0), VisitorState(T0 + 200))
    assert store.visitor("v1") == VisitorState(T0 + 500)


def test_queue_status_is_shared(store: RedisStore, redis_server):
    other = RedisStore(redis_server.url, prefix=store.prefix)
    store.set_queue_status("Billing", QueueStatus(0, 12.5, T0))
    assert other.queue_status() == {"Billing": QueueStatus(0, 12.5, T0)}
    rt = Runtime(spec_dict(), store=other)
    assert rt.observe(ev()).reason == "queue_busy"


# --------------------------------------------------------------------------- the lock


def test_writes_are_applied_only_while_the_lock_is_ours(store: RedisStore, redis_server):
    slow = RedisStore(redis_server.url, prefix=store.prefix, lock_ttl_s=0.2)
    fast = RedisStore(redis_server.url, prefix=store.prefix, lock_wait_s=2)
    with pytest.raises(LockLost, match="nothing was written"):
        with slow.session_lock("v1", "s1"):
            slow.save("v1", "s1", SessionState(offers_made=5, last_seen=T0), VisitorState())
            time.sleep(0.3)  # stalled past the lock's expiry ...
            with fast.session_lock("v1", "s1"):  # ... so another process takes the session
                fast.save("v1", "s1", SessionState(offers_made=1, last_seen=T0), VisitorState())
    assert store.session("v1", "s1").offers_made == 1  # the stale holder's write was refused


def test_a_held_lock_makes_others_wait_then_give_up(store: RedisStore, redis_server):
    impatient = RedisStore(redis_server.url, prefix=store.prefix, lock_wait_s=0.2)
    with store.session_lock("v1", "s1"):
        started = time.monotonic()
        with pytest.raises(StoreBusy, match="locked by another process"):
            with impatient.session_lock("v1", "s1"):
                pass
        assert 0.2 <= time.monotonic() - started < 1.0
        with impatient.session_lock("v1", "other-session"):  # other sessions are not blocked
            pass
    with impatient.session_lock("v1", "s1"):
        pass


def test_many_runtimes_on_one_redis_make_one_offer_per_session(store: RedisStore, redis_server):
    """Eight runtimes (each with its own lock and connection, as separate processes have) race on 60 sessions."""
    spec = load_spec(spec_dict(max_offers_per_session=1))
    logs = [ListLog() for _ in range(8)]
    runtimes = [Runtime(spec, log=log, store=RedisStore(redis_server.url, prefix=store.prefix)) for log in logs]
    sessions = [(f"v{i}", f"s{i}") for i in range(60)]
    barrier = threading.Barrier(len(runtimes))
    errors = []

    def work(rt: Runtime, order: list) -> None:
        barrier.wait()
        try:
            for v, s in order:
                rt.observe(ev(v, s, ts=T0))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(rt, random.Random(i).sample(sessions, len(sessions))))
               for i, rt in enumerate(runtimes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    offers = [d for log in logs for d in log.decisions if d.action == "offer"]
    assert sorted((d.visitor_id, d.session_id) for d in offers) == sorted(sessions)  # exactly one each
    reasons = Counter(d.reason for log in logs for d in log.decisions if d.action != "offer")
    assert reasons == {"offer_pending": 60 * 7}

    # Now every runtime answers every offer at once, half of them accept and half decline: one answer wins.
    results = Counter()
    barrier = threading.Barrier(len(runtimes))

    def answer(i: int, rt: Runtime) -> None:
        barrier.wait()
        for d in offers:
            try:
                (rt.accept if i % 2 else rt.decline)(d.offer_id, ts=T0 + 1)
                results[d.offer_id] += 1
            except OfferClosed:
                pass

    threads = [threading.Thread(target=answer, args=(i, rt)) for i, rt in enumerate(runtimes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {d.offer_id: 1 for d in offers}
    outcomes = [o for log in logs for o in log.outcomes]
    assert sorted(o.offer_id for o in outcomes) == sorted(d.offer_id for d in offers)
    for o in outcomes:
        assert store.offer(o.offer_id).status == o.status
        session = store.session(o.visitor_id, o.session_id)
        assert session.pending is None and session.in_chat == (o.status == OfferStatus.ACCEPTED)
    for rt in runtimes:
        rt.close()


def test_expiries_are_closed_once_across_runtimes(store: RedisStore, redis_server):
    spec = load_spec(spec_dict(offer_timeout_s=10))
    logs = [ListLog(), ListLog()]
    a, b = (Runtime(spec, log=log, store=RedisStore(redis_server.url, prefix=store.prefix, due_check_interval_s=0))
            for log in logs)
    offers = [a.observe(ev(f"v{i}", "s", ts=T0)).offer_id for i in range(20)]

    def tick(rt: Runtime, visitor: str) -> None:
        for k in range(5):
            rt.observe(ev(visitor, "x", page="Home", ts=T0 + 20 + k))  # event time past every offer's expiry

    _expire_together(store, [a, b], logs, offers, tick)


def _expire_together(store: RedisStore, runtimes: list[Runtime], logs: list, offers: list[str], tick) -> None:
    """`tick(runtime, visitor)` on two threads at once; then every offer must have been expired once, by one."""
    done = threading.Barrier(len(runtimes))

    def run(rt: Runtime, who: str) -> None:
        done.wait()
        tick(rt, who)

    threads = [threading.Thread(target=run, args=(rt, f"w{i}")) for i, rt in enumerate(runtimes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expired = [o.offer_id for log in logs for o in log.outcomes]
    assert sorted(expired) == sorted(offers)  # each once, none lost
    assert {o.status for log in logs for o in log.outcomes} == {OfferStatus.EXPIRED}
    assert all(store.offer(o).status == OfferStatus.EXPIRED for o in offers)
    assert sum(store._redis.zcard(key) for key in store._due_keys) == 0


def test_offers_due_are_closed_in_the_batch_without_locks_once_across_hosts(store: RedisStore, redis_server):
    """A busy server has as many offers falling due each second as it makes: closed inside the observations'
    batch (checked by Redis on commit), not under a lock each (two more round trips per offer, in turn)."""
    spec = load_spec(spec_dict(offer_timeout_s=10))
    logs = [ListLog(), ListLog()]
    stores = [RedisStore(redis_server.url, prefix=store.prefix, due_check_interval_s=0) for _ in range(2)]
    a, b = (Runtime(spec, log=log, store=s) for log, s in zip(logs, stores))
    offers = [d.offer_id for d in a.observe_many([ev(f"v{i}", "s", ts=T0) for i in range(30)])]
    locked = []
    for s in stores:
        real = s._acquire
        s._acquire = lambda v, sid, optimistic=False, real=real: (locked.append(optimistic is False)  # type: ignore
                                                                  or real(v, sid, optimistic))

    def tick(rt: Runtime, who: str) -> None:
        for k in range(12):  # event time past every offer's expiry; four offers handed out per look at most
            rt.observe_many([ev(f"{who}-{j}", "x", page="Home", ts=T0 + 20 + k) for j in range(3)])

    _expire_together(store, [a, b], logs, offers, tick)
    assert not any(locked), "an expiry took a session lock"


def test_an_offer_due_is_left_to_the_process_that_knows_its_session_for_a_while(store: RedisStore, redis_server):
    from pcrules.runtime.stores.redis import OTHERS_DUE_AFTER_S

    Runtime(load_spec(spec_dict(offer_timeout_s=10)), store=store).observe(ev("v1", "s", ts=T0))
    other = RedisStore(redis_server.url, prefix=store.prefix, due_check_interval_s=0)
    assert other.due_offers(T0 + 10 + OTHERS_DUE_AFTER_S / 2) == []  # not its session: not yet
    assert [r.visitor_id for r in store.due_offers(T0 + 10.1)] == ["v1"]  # its own: at once
    assert [r.visitor_id for r in other.due_offers(T0 + 10 + OTHERS_DUE_AFTER_S + 0.1)] == ["v1"]  # then anyone
    other.close()


def test_an_offer_answered_after_it_was_found_due_is_not_also_expired(store: RedisStore, redis_server):
    spec = load_spec(spec_dict(offer_timeout_s=10))
    log, other_log = ListLog(), ListLog()
    rt = Runtime(spec, log=log, store=store)
    other = Runtime(spec, log=other_log, store=RedisStore(redis_server.url, prefix=store.prefix))
    offer = rt.observe(ev("v1", "s", ts=T0)).offer_id
    real = store.due_offers

    def found_then_answered(now):
        due = real(now)
        if due:  # another host's answer lands between the look and this batch's commit
            other.accept(offer, ts=T0 + 9, visitor_id="v1", session_id="s")
        return due

    store.due_offers = found_then_answered  # type: ignore[method-assign]
    rt.observe_many([ev("w1", "x", page="Home", ts=T0 + 20)])
    store.due_offers = real  # type: ignore[method-assign]
    assert [o.status for o in other_log.outcomes] == [OfferStatus.ACCEPTED]
    assert log.outcomes == []  # the expiry was refused: the offer had changed
    assert store.offer(offer).status == OfferStatus.ACCEPTED
    rt.observe_many([ev("w2", "x", page="Home", ts=T0 + 30)])
    assert log.outcomes == []  # and it is not found due again


def test_an_expiry_in_a_batch_is_refused_when_the_offer_changed_even_if_its_session_did_not(store: RedisStore):
    rt = Runtime(load_spec(spec_dict(offer_timeout_s=10)), store=store)
    offer = rt.observe(ev("v1", "s", ts=T0)).offer_id
    (record,) = store.due_offers(T0 + 20)
    key = store._offer_key("v1", offer)
    with store.batch() as commits:
        with store.observe_lock("v1", "s"):
            assert store.expect_offer(offer)
            store.save_offer(replace(record, status=OfferStatus.EXPIRED, answered_at=T0 + 10))
        store._redis.set(key, store._redis.get(key).replace('"offered"', '"accepted"'))  # closed meanwhile
    assert commits.written == [False]
    assert '"accepted"' in store._redis.get(key)  # nothing of the expiry was written


# --------------------------------------------------------------------------- decided on the cache, checked by Redis


def _commands(redis_server) -> Counter:
    """Commands Redis ran since the last call (this one's CONFIG RESETSTAT and INFO not counted)."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
    stats = client.info("commandstats")
    client.config_resetstat()
    client.close()
    return Counter({name[len("cmdstat_"):]: v["calls"] for name, v in stats.items()
                    if name not in ("cmdstat_info", "cmdstat_config|resetstat", "cmdstat_hello")})


def test_an_observation_of_a_session_this_process_served_last_is_one_round_trip(store: RedisStore, redis_server):
    rt = Runtime(spec_dict(), store=store)
    for i in range(20):
        rt.observe(ev(f"v{i}", ts=T0))
    store.due_check_interval_s = 3600  # expiry checks have their own round trip, at most every interval
    stale = store.stale_reads  # one so far: the first observation had no queue status cached
    _commands(redis_server)
    for i in range(20):
        assert rt.observe(ev(f"v{i}", ts=T0 + 1)).reason == "offer_pending"
    # 20 scripts and what they ran inside (EXISTS lock, GET session/visitor/queue version, SET session): one
    # round trip each, no GET or HGETALL of the client's own.
    assert _commands(redis_server) == {"evalsha": 20, "exists": 20, "get": 60, "set": 20}
    assert store.stale_reads == stale
    # An answer takes the session's lock (two round trips); the observation after it is one again.
    offer = rt.observe(ev("w", ts=T0 + 2))
    rt.decline(offer.offer_id, ts=T0 + 3)
    assert rt.observe(ev("w", "s2", ts=T0 + 4)).reason == "cooldown"  # the visitor's cooldown, from the cache
    assert store.stale_reads == stale


def test_a_session_changed_by_another_process_is_decided_again_on_what_redis_holds(store: RedisStore, redis_server):
    other = RedisStore(redis_server.url, prefix=store.prefix, due_check_interval_s=0)
    mine, theirs = ListLog(), ListLog()
    a = Runtime(spec_dict(max_offers_per_session=2), store=store, log=mine)
    b = Runtime(spec_dict(max_offers_per_session=2), store=other, log=theirs)
    first = a.observe(ev(ts=T0))
    assert first.action == "offer"
    b.decline(first.offer_id, ts=T0 + 1)  # the other process changes the session and sets the visitor's cooldown
    stale_before = store.stale_reads
    again = a.observe(ev(ts=T0 + 2))  # a's cache still holds the pending offer
    assert again.reason == "cooldown"  # decided on Redis's session and visitor, not the cache
    assert store.stale_reads == stale_before + 1
    assert [d.reason for d in mine.decisions] == [None, "cooldown"]  # the refused try never reached the log
    assert store.session("v1", "s1").offers_made == 1
    # The cooldown is the visitor's: another of its sessions, unchanged itself, is refused on it too.
    a.observe(ev("v2", "s1", ts=T0))
    a.observe(ev("v2", "s2", page="Home", ts=T0))  # a's cache: both sessions, and no cooldown for v2
    b.decline(b.observe(ev("v2", "s3", ts=T0)).offer_id, ts=T0 + 1)
    assert a.observe(ev("v2", "s2", ts=T0 + 2)).reason == "cooldown"


def test_a_queue_status_set_by_another_process_is_seen_at_once(store: RedisStore, redis_server):
    other = RedisStore(redis_server.url, prefix=store.prefix)
    rt = Runtime(spec_dict(), store=store)
    assert rt.observe(ev("v1", ts=T0)).action == "offer"  # the queue status (none) is now cached here
    other.set_queue_status("Billing", QueueStatus(0, 500.0, T0))
    assert rt.observe(ev("v2", ts=T0 + 1)).reason == "queue_busy"
    other.set_queue_status("Billing", QueueStatus(3, 5.0, T0 + 2))
    assert rt.observe(ev("v3", ts=T0 + 3)).action == "offer"


def test_a_cached_decision_waits_for_a_session_another_process_holds(store: RedisStore, redis_server):
    rt = Runtime(spec_dict(max_offers_per_session=1), store=store)
    assert rt.observe(ev("v1", ts=T0)).action == "offer"
    holder = RedisStore(redis_server.url, prefix=store.prefix)
    entered, result = threading.Event(), {}

    def observe_meanwhile():
        entered.wait()
        result["decision"] = rt.observe(ev("v1", ts=T0 + 1))

    thread = threading.Thread(target=observe_meanwhile)
    thread.start()
    with holder.session_lock("v1", "s1"):
        session = holder.session("v1", "s1")
        entered.set()
        time.sleep(0.3)  # the observation cannot commit on its cache while the lock is held
        assert "decision" not in result
        holder.save("v1", "s1", SessionState(offers_made=1, in_chat=True, last_seen=T0 + 0.5), VisitorState())
        assert session.pending is not None
    thread.join(5)
    assert result["decision"].reason == "in_chat"  # decided after the holder's write, on it


def test_observations_decided_together_are_written_in_one_round_trip():
    import redis as redis_py

    from pcrules.server._procs import RedisServer

    # A Redis of its own: it counts the socket reads it does, and no other test's client may add to them.
    with RedisServer() as redis_server:
        store = RedisStore(redis_server.url, due_check_interval_s=0)
        log = ListLog()
        rt = Runtime(spec_dict(), store=store, log=log)
        first = rt.observe_many([ev(f"v{i}", ts=T0) for i in range(20)])
        assert [d.action for d in first] == ["offer"] * 20
        store.due_check_interval_s = 3600
        probe = redis_py.Redis.from_url(redis_server.url)
        reads = lambda: int(probe.info("stats")["total_reads_processed"])  # noqa: E731 - socket reads Redis did
        idle = -reads() + reads()  # what asking costs (its own read)
        before = reads()
        again = rt.observe_many([ev(f"v{i}", ts=T0 + 1) for i in range(20)])
        # Redis read the 20 commits in one go (two reads if the write arrived split), not in 20.
        assert reads() - before - idle <= 2
        probe.close()
        store.close()
    assert [d.reason for d in again] == ["offer_pending"] * 20
    assert [d.visitor_id for d in log.decisions] == [f"v{i}" for i in range(20)] * 2


@pytest.mark.parametrize("seed", [6, 7])
def test_observing_in_batches_decides_as_observing_one_by_one(store: RedisStore, seed: int):
    """Batches of 1 to 8 observations, some of one session, some malformed, between answers and queue updates."""
    spec = load_spec(spec_dict([rule("bill", seconds=300), rule("plans", page="Plans", seconds=100, queue="Billing",
                                                                 priority=5, pages_viewed={"gte": 3})],
                               holdout=0.2, max_offers_per_session=2, decline_cooldown_s=200,
                               session_idle_ttl_s=86400))
    rnd = random.Random(seed)
    ops = _scenario(seed)
    for k in rnd.sample(range(len(ops)), 15):  # malformed events: refused in their place, the rest decided
        if ops[k][0] == "observe":
            ops[k] = ("observe", {**ops[k][1], "seconds_on_page": -1})
    mem_log, redis_log = ListLog(), ListLog()
    with Runtime(spec, log=mem_log, new_offer_id=counter_ids()) as mem, \
            Runtime(spec, log=redis_log, store=store, new_offer_id=counter_ids()) as red:
        expected, mem_seen = [], []
        for op in ops:
            if op[0] == "observe":
                try:
                    d = mem.observe(op[1])
                    expected.append(d.to_dict())
                    if d.offer_id:
                        mem_seen.append(d.offer_id)
                except InvalidEvent as exc:
                    expected.append(str(exc))
            else:
                expected += _play(mem, mem_log, [op], seen=mem_seen)
        got, seen, i = [], [], 0
        while i < len(ops):
            if ops[i][0] == "observe":
                size = rnd.randint(1, 8)
                chunk = [op[1] for op in itertools.takewhile(lambda op: op[0] == "observe", ops[i:i + size])]
                for d in red.observe_many(chunk):
                    if isinstance(d, Exception):
                        got.append(str(d))
                    else:
                        got.append(d.to_dict())
                        if d.offer_id:
                            seen.append(d.offer_id)
                i += len(chunk)
            else:
                got += _play(red, redis_log, [ops[i]], seen=seen)
                i += 1
    rename = _by_first_appearance(got)
    assert str(expected) == rename(str(got))
    assert [str(d) for d in mem_log.decisions] == [rename(str(d)) for d in redis_log.decisions]
    assert sum(isinstance(x, str) and "seconds_on_page" in x for x in got) >= 5
    assert store.stale_reads >= 3  # a session twice in one batch: the second was decided again after the first


def test_a_ruleset_reloaded_while_a_batch_is_matched_decides_every_event_on_the_new_one(store: RedisStore):
    old = load_spec(spec_dict([rule("bill", seconds=5, score={"gte": 0.1})]))
    new = load_spec({**spec_dict([rule("bill-v2", seconds=5, score={"gte": 0.1})]), "name": "test-v2"})

    class ReloadingScorer:  # the third event's scoring is when the operator's reload lands
        calls = 0

        def predict_proba_one(self, fields):
            self.calls += 1
            if self.calls == 3:
                rt.reload(new)
            return 0.9

    rt = Runtime(old, store=store, scorer=ReloadingScorer())
    decisions = rt.observe_many([ev(f"v{i}", ts=T0) for i in range(6)])
    assert [(d.ruleset, d.rule) for d in decisions] == [("test-v2", "bill-v2")] * 6


def test_the_cache_is_bounded_and_a_forgotten_session_costs_a_retry_not_a_wrong_answer(redis_server):
    store = RedisStore(redis_server.url, prefix=f"t{next(_prefixes)}:", cache_size=10)
    try:
        rt = Runtime(spec_dict(), store=store)
        assert all(rt.observe(ev(f"v{i}", ts=T0)).action == "offer" for i in range(50))
        assert len(store._cache) <= 10
        assert all(rt.observe(ev(f"v{i}", ts=T0 + 1)).reason == "offer_pending" for i in range(50))
    finally:
        store.clear()
        store.close()


# --------------------------------------------------------------------------- outages


def test_an_outage_is_a_clear_error_and_the_runtime_recovers():
    _need_redis()
    with RedisServer() as server:
        store = RedisStore(server.url, due_check_interval_s=0)
        rt = Runtime(spec_dict(), store=store)
        assert rt.observe(ev("v1", ts=T0)).action == "offer"
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"Redis\) unavailable: .*(refused|connect)"):
            rt.observe(ev("v2", ts=T0))
        with pytest.raises(StoreUnavailable):
            store.ping()
        assert time.monotonic() - started < 3
        server.start()  # an empty Redis on the same port
        assert rt.observe(ev("v2", ts=T0 + 1)).action == "offer"
        assert store.ping()


# --------------------------------------------------------------------------- two uvicorn workers sharing Redis


def _rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec_dict([rule("bill", seconds=5)], max_offers_per_session=1,
                                             decline_cooldown_s=3600)))
    return path


def _outcomes(*logs: Path) -> list[tuple[str, str]]:
    rows = []
    for path in logs:
        with sqlite3.connect(path) as db:
            rows += db.execute("SELECT offer_id, status FROM outcomes").fetchall()
    return rows


def _offers_logged(*logs: Path) -> list[str]:
    rows = []
    for path in logs:
        with sqlite3.connect(path) as db:
            rows += [r[0] for r in db.execute("SELECT offer_id FROM decisions WHERE action = 'offer'")]
    return rows


def one_winner_per_offer(offers: list[dict], answered: list[Any], *logs: Path) -> dict[str, str]:
    """One answer wins per offer, the others are refused as already answered; each winner is in the decision logs
    exactly once (outcome and offer). Returns offer id -> the winning status."""
    won: dict[str, str] = {}
    for r in answered:
        if r.status_code == 200:
            assert r.json()["offer_id"] not in won
            won[r.json()["offer_id"]] = r.json()["status"]
        else:
            assert r.status_code == 409 and r.json()["error"] == "offer_closed", r.text
    assert set(won) == {d["offer_id"] for d in offers}
    assert sorted(_outcomes(*logs)) == sorted(won.items())
    assert sorted(_offers_logged(*logs)) == sorted(won)
    return won


@pytest.mark.slow
def test_two_workers_hammered_make_no_double_offer_and_lose_no_outcome(redis_server, tmp_path: Path):
    rules = _rules(tmp_path)
    url = redis_server.url.rsplit("/", 1)[0] + "/3"  # a database of its own
    logs = [tmp_path / "a.sqlite", tmp_path / "b.sqlite"]
    worker = lambda k: ServeProcess(["--rules", str(rules), "--redis", url, "--log", str(logs[k])],  # noqa: E731
                                    log_file=tmp_path / f"{'ab'[k]}.out", operator_token=TOKEN,
                                    config={"address_rate": None})  # one loopback address drives the load
    with worker(0) as a, worker(1) as b:
        workers = [a.url, b.url]
        n_sessions, per_session = 120, 8

        async def hammer():
            limits = httpx.Limits(max_connections=32)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                gate = asyncio.Semaphore(64)

                async def post(url, json=None):
                    async with gate:
                        return await client.post(url, json=json)

                # 8 concurrent observations of each session, alternating between the two workers
                observes = [post(f"{workers[k % 2]}/v1/observe",
                                 {"visitor_id": f"v{i}", "session_id": f"s{i}", "page": "Bill Payment",
                                  "seconds_on_page": 6 + k}) for i in range(n_sessions) for k in range(per_session)]
                first = await asyncio.gather(*observes)
                decisions = [r.json() for r in first]
                assert all(r.status_code == 200 for r in first), [r.text for r in first if r.status_code != 200][:3]
                offers = [d for d in decisions if d["action"] == "offer"]
                # every offer answered at once by an accept on one worker and a decline on the other
                answers = [post(f"{workers[j % 2]}/v1/offers/{d['offer_id']}/{('accept', 'decline')[(i + j) % 2]}",
                                {"visitor_id": d["visitor_id"], "session_id": d["session_id"]})
                           for i, d in enumerate(offers) for j in range(2)]
                answered = await asyncio.gather(*answers)
                after = await asyncio.gather(*(post(f"{workers[i % 2]}/v1/observe",
                                                    {"visitor_id": f"v{i}", "session_id": f"s{i}",
                                                     "page": "Bill Payment", "seconds_on_page": 60})
                                               for i in range(n_sessions)))
                return decisions, offers, answered, [r.json() for r in after]

        decisions, offers, answered, after = asyncio.run(hammer())
        health = [httpx.get(w + "/healthz").json() for w in workers]
        metrics = [httpx.get(w + "/metrics", headers=a.auth).text for w in workers]

    # no double offer: exactly one per session, the other 7 observations saw it pending
    assert sorted(d["session_id"] for d in offers) == sorted(f"s{i}" for i in range(n_sessions))
    assert Counter(d["reason"] for d in decisions if d["action"] != "offer") == {"offer_pending": n_sessions * 7}
    # one answer wins per offer; no lost outcome: each winner is in the logs exactly once, and the sessions saw it
    won = one_winner_per_offer(offers, answered, *logs)
    by_session = {d["session_id"]: won[d["offer_id"]] for d in offers}
    for d in after:
        assert d["reason"] == ("in_chat" if by_session[d["session_id"]] == "accepted" else "max_offers"), d
    assert all(h["store"] == "redis" and h["status"] == "ok" for h in health)
    assert all("pcrules_decisions_total" in m for m in metrics)
    # Each session's observations alternate between the workers: the one-round-trip path met the other worker's
    # writes, decided again, and /metrics says how often (an operator's sign that affinity is off).
    stale = [re.search(r'^pcrules_store_contention_total\{kind="stale_read"\} (\S+)$', m, re.M) for m in metrics]
    assert all(stale) and sum(float(x.group(1)) for x in stale) >= n_sessions
    for out in ("a.out", "b.out"):
        assert "Traceback" not in (tmp_path / out).read_text()


def test_offloaded_to_threads_the_runtime_still_makes_one_offer_per_session(redis_server, tmp_path: Path):
    """ServerConfig.offload runs each request's runtime call on a worker thread: concurrent observations of one
    session then meet in the store (each thread its own connection, one cache) instead of queueing on the loop."""
    from pcrules.server import ServerConfig, create_app

    url = redis_server.url.rsplit("/", 1)[0] + "/5"
    app = create_app(ServerConfig(rules=str(_rules(tmp_path)), redis_url=url, offload=True))
    n_sessions, per_session = 40, 8

    async def hammer() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pcrules.test") as client:
            replies = await asyncio.gather(*(
                client.post("/v1/observe", json={"visitor_id": f"v{i}", "session_id": f"s{i}",
                                                 "page": "Bill Payment", "seconds_on_page": 6 + k})
                for k in range(per_session) for i in range(n_sessions)))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200][:3]
        return [r.json() for r in replies]

    decisions = asyncio.run(hammer())
    offers = [d for d in decisions if d["action"] == "offer"]
    assert sorted(d["session_id"] for d in offers) == sorted(f"s{i}" for i in range(n_sessions))
    assert Counter(d["reason"] for d in decisions if d["action"] != "offer") == {"offer_pending": n_sessions * 7}


def test_requests_that_arrive_together_share_one_write_to_redis(redis_server, tmp_path: Path):
    from pcrules.server import ServerConfig, create_app

    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    app = create_app(ServerConfig(rules=str(_rules(tmp_path)), redis_url=url, operator_token=TOKEN,
                                  address_rate=None))
    bad = {"visitor_id": "v-bad", "session_id": "s", "page": "Bill Payment", "seconds_on_page": "six"}

    async def burst() -> tuple[list[httpx.Response], str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pcrules.test") as client:
            replies = await asyncio.gather(*(
                client.post("/v1/observe", json={"visitor_id": f"v{i}", "session_id": "s", "page": "Bill Payment",
                                                 "seconds_on_page": 6} if i != 17 else bad)
                for i in range(300)))
            metrics = (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
        return replies, metrics

    replies, metrics = asyncio.run(burst())
    assert [r.json()["action"] for i, r in enumerate(replies) if i != 17] == ["offer"] * 299
    assert replies[17].status_code == 400 and replies[17].json()["field"] == "seconds_on_page"  # only its own error

    def metric(name: str) -> float:
        return float(re.search(rf"^pcrules_observe_batch_size_{name} (\S+)$", metrics, re.M).group(1))

    assert metric("sum") == 300 and metric("count") < 300  # all were observed, and some together
    assert metric('bucket{le="128.0"}') == metric("count") >= 3  # none more than MAX_BATCH (128) at once


@pytest.mark.slow
def test_serve_with_two_worker_processes_on_one_port(redis_server, tmp_path: Path):
    url = redis_server.url.rsplit("/", 1)[0] + "/4"
    with ServeProcess(["--rules", str(_rules(tmp_path)), "--redis", url, "--workers", "2"],
                      log_file=tmp_path / "serve.out", operator_token=TOKEN) as srv:
        # one connection per request: the kernel spreads them
        with httpx.Client(base_url=srv.url, headers=srv.auth) as client:
            for i in range(30):
                d = httpx.post(srv.url + "/v1/observe", json={"visitor_id": f"v{i % 10}", "session_id": "s",
                                                              "page": "Bill Payment", "seconds_on_page": 6}).json()
                assert d["action"] == ("offer" if i < 10 else "none"), (i, d)
            metrics = client.get("/metrics").text  # the workers' counts, added up
    assert 'pcrules_decisions_total{action="offer",reason=""} 10.0' in metrics
    assert 'pcrules_decisions_total{action="none",reason="offer_pending"} 20.0' in metrics
    out = (tmp_path / "serve.out").read_text()
    assert out.count("Started server process") == 2 and "Traceback" not in out


def test_a_decision_redis_did_not_take_is_not_in_the_log():
    _need_redis()
    with RedisServer() as server:
        log = ListLog()
        store = RedisStore(server.url, due_check_interval_s=3600)
        rt = Runtime(spec_dict(max_offers_per_session=2), store=store, log=log)
        first = rt.observe(ev("v1", ts=T0))
        rt.decline(first.offer_id, ts=T0 + 1)  # the session is cached here: the next one is decided on the cache
        server.stop()
        with pytest.raises(StoreUnavailable):
            rt.observe(ev("v1", ts=T0 + 2))  # decided, then refused at the commit
        together = rt.observe_many([ev("v1", ts=T0 + 3), ev("v9", ts=T0 + 3), {"visitor_id": "v9"}])
        assert [type(r) for r in together] == [StoreUnavailable, StoreUnavailable, InvalidEvent]
        assert [d.offer_id for d in log.decisions] == [first.offer_id]  # the caller got an error, the log nothing
        assert len(log.outcomes) == 1
        store.close()


def test_an_answer_redis_did_not_take_is_not_in_the_log_and_can_be_given_again(store: RedisStore, redis_server,
                                                                              monkeypatch):
    store = RedisStore(redis_server.url, prefix=store.prefix, lock_ttl_s=0.3)  # the failed writer's lock lapses soon
    log = ListLog()
    rt = Runtime(spec_dict(), store=store, log=log)
    offer = rt.observe(ev("v1", ts=T0))
    real_eval = store._eval

    def commit_fails(script, keys, args):
        if script is store._commit_script:  # the lock was taken and the offer read; the write fails
            raise StoreUnavailable("shared state store (Redis) unavailable: connection reset")
        return real_eval(script, keys, args)

    monkeypatch.setattr(store, "_eval", commit_fails)
    with pytest.raises(StoreUnavailable):
        rt.accept(offer.offer_id, ts=T0 + 1)
    assert log.outcomes == []  # the caller got an error, and the log agrees that nothing happened
    monkeypatch.undo()
    assert store.offer(offer.offer_id).status == OfferStatus.OFFERED
    assert rt.accept(offer.offer_id, ts=T0 + 2).status == OfferStatus.ACCEPTED  # the retry, once the lock lapsed
    assert [o.status for o in log.outcomes] == [OfferStatus.ACCEPTED]
    store.close()


def test_a_redis_outage_is_a_503_with_a_readable_body_and_the_server_recovers(tmp_path: Path):
    _need_redis()
    with RedisServer() as server, ServeProcess(["--rules", str(_rules(tmp_path)), "--redis", server.url],
                                               log_file=tmp_path / "serve.out", operator_token=TOKEN) as srv:
        body = {"visitor_id": "v1", "session_id": "s1", "page": "Bill Payment", "seconds_on_page": 6}
        offer = httpx.post(srv.url + "/v1/observe", json=body).json()
        assert offer["action"] == "offer"
        server.stop()
        r = httpx.post(srv.url + "/v1/observe", json={**body, "visitor_id": "v2"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        err = r.json()
        assert err["error"] == "store_unavailable"
        assert "Redis" in err["message"] and "unavailable" in err["message"] and "Traceback" not in r.text
        r = httpx.post(srv.url + f"/v1/offers/{offer['offer_id']}/accept",
                       json={"visitor_id": "v1", "session_id": "s1"})
        assert r.status_code == 503 and r.json()["error"] == "store_unavailable"
        health = httpx.get(srv.url + "/healthz")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert httpx.get(srv.url + "/metrics", headers=srv.auth).status_code == 200  # metrics still answer

        server.start()
        deadline = time.monotonic() + 10
        while True:
            r = httpx.post(srv.url + "/v1/observe", json={**body, "visitor_id": "v3"})
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        assert r.json()["action"] == "offer"
        assert httpx.get(srv.url + "/healthz").status_code == 200
        metrics = httpx.get(srv.url + "/metrics", headers=srv.auth).text
        assert 'pcrules_http_errors_total{error="store_unavailable",status="503"} 2.0' in metrics
    assert "Traceback" not in (tmp_path / "serve.out").read_text()
