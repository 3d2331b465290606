"""8 threads calling observe at once: no error, no double offer, the same totals as a sequential run.

durable_rules itself is not thread-safe (notes/durable-rules.md #12: posts lost, segfaults); the runtime
must serialise what needs it.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections import Counter

import pytest

from helpers import T0, ev, make_runtime, rule
from pcrules import Action, SQLiteDecisionLog

pytestmark = pytest.mark.timeout(120)
THREADS = 8


@pytest.fixture(autouse=True)
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # make threads interleave as often as possible
    yield
    sys.setswitchinterval(old)


def run_threads(work):
    """Run work(i) for i in range(THREADS) together; re-raise the first error of any thread."""
    barrier = threading.Barrier(THREADS)
    errors = []
    results = [None] * THREADS

    def target(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


RULES = [rule("bill", seconds=300, priority=10), rule("help", page="Help", seconds=30, priority=5, queue="Billing")]


def session_events(s: int) -> list[dict]:
    """One session's events in order: waits, an offer, offers pending, pages without rules."""
    visitor = f"v{s % 7}"  # sessions of different threads share visitors
    session = f"s{s}"
    page = "Bill Payment" if s % 2 else "Help"
    return [ev(visitor=visitor, session=session, page=page, seconds=sec, ts=T0 + s * 0.001 + k)
            for k, sec in enumerate([10, 20, 100, 301, 302, 500, 1000])] + \
           [ev(visitor=visitor, session=session, page="Home", seconds=5, ts=T0 + s * 0.001 + 10)]


def tally(decisions) -> Counter:
    return Counter((str(d.action), d.reason and str(d.reason)) for d in decisions)


def test_threads_owning_sessions_that_share_visitors_match_a_sequential_run(tmp_path):
    sessions = list(range(160))
    # no expiry and no declines, so nothing a session sees depends on another session's timing
    policy = {"offer_timeout_s": 10_000, "holdout": 0.2}

    sequential = make_runtime(RULES, **policy)
    expected = [sequential.observe(e) for s in sessions for e in session_events(s)]

    log = SQLiteDecisionLog(tmp_path / "log.sqlite")
    rt = make_runtime(RULES, log=log, **policy)
    mine = [sessions[i::THREADS] for i in range(THREADS)]

    def work(i):
        out = []
        streams = [session_events(s) for s in mine[i]]
        # interleave this thread's sessions, each still in its own order
        for k in range(max(map(len, streams))):
            for stream in streams:
                if k < len(stream):
                    out.append(rt.observe(stream[k]))
        return out

    got = [d for chunk in run_threads(work) for d in chunk]
    assert tally(got) == tally(expected)
    per_session = Counter(d.session_id for d in got if d.action == Action.OFFER)
    assert max(per_session.values()) == 1
    assert sum(tally(expected).values()) == len(sessions) * 8
    assert tally(expected)[("offer", None)] > 50 and tally(expected)[("none", "holdout")] > 10
    # and the log has exactly the decisions the threads were given
    log.flush()
    with sqlite3.connect(log.path) as db:
        logged = Counter(db.execute("SELECT action, reason FROM decisions").fetchall())
        offer_ids = {r[0] for r in db.execute("SELECT offer_id FROM decisions WHERE offer_id IS NOT NULL")}
    assert logged == tally(got)
    assert offer_ids == {d.offer_id for d in got if d.offer_id}


def test_threads_hammering_the_same_sessions_make_one_offer_each(tmp_path):
    sessions = [f"s{i}" for i in range(25)]
    repeats = 6

    def events():
        return [ev(visitor=f"v{i % 5}", session=s, seconds=301, ts=T0) for i, s in enumerate(sessions)] * repeats

    sequential = make_runtime(max_offers_per_session=1)
    expected = tally(sequential.observe(e) for e in events() * THREADS)

    log = SQLiteDecisionLog(tmp_path / "log.sqlite")
    rt = make_runtime(log=log, max_offers_per_session=1)
    got = [d for chunk in run_threads(lambda i: [rt.observe(e) for e in events()]) for d in chunk]
    assert tally(got) == expected == Counter({("offer", None): len(sessions),
                                              ("none", "offer_pending"): len(sessions) * (repeats * THREADS - 1)})
    per_session = Counter(d.session_id for d in got if d.action == Action.OFFER)
    assert sorted(per_session) == sorted(sessions) and set(per_session.values()) == {1}
    assert len({d.offer_id for d in got if d.offer_id}) == len(sessions)
    log.flush()
    with sqlite3.connect(log.path) as db:
        assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == len(got)


def test_threads_answering_while_others_observe(tmp_path):
    """Accepts and declines from some threads while others observe: each offer is answered exactly once."""
    log = SQLiteDecisionLog(tmp_path / "log.sqlite")
    rt = make_runtime(log=log, max_offers_per_session=1, offer_timeout_s=10_000)
    offers = [rt.observe(ev(visitor=f"v{i}", session=f"s{i}", seconds=301)).offer_id for i in range(200)]
    assert all(offers)

    def work(i):
        answered = 0
        if i % 2:  # answering threads race for the same offers
            for k, offer_id in enumerate(offers):
                try:
                    (rt.accept if k % 2 else rt.decline)(offer_id, ts=T0 + 1)
                    answered += 1
                except Exception as exc:  # only "already answered" is acceptable
                    assert type(exc).__name__ == "OfferClosed", exc
        else:
            for k in range(200):
                rt.observe(ev(visitor=f"v{k}", session=f"t{i}-{k}", seconds=301, ts=T0 + 2))
        return answered

    answered = run_threads(work)
    assert sum(answered) == len(offers)
    log.flush()
    with sqlite3.connect(log.path) as db:
        statuses = Counter(r[0] for r in db.execute("SELECT status FROM outcomes"))
    assert statuses == Counter({"accepted": 100, "declined": 100})
