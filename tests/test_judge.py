"""The array judge (pcrules.analysis.judge) on its own: sets of rules as bits of every width, specs with more
rules than a machine word holds (fast engine == the pure core row by row), and the policy's helpers used
through their public names only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pcrules import load_spec
from pcrules.analysis.judge import RuleBits, round3, wait_for
from pcrules.backtest import backtest
from pcrules.core.policy import next_crossing, wait_points
from pcrules.scoring import LinearScorer
from pcrules.world import PAGES, generate

ROOT = Path(__file__).resolve().parents[1]
SCORER = LinearScorer(intercept=-2.6, numeric={"seconds_on_page": 0.12, "pages_viewed": 0.2},
                      categorical={"page": {"Checkout": 1.0, "Home": -1.0}}, flags={"returning": 0.5})


@pytest.mark.parametrize("k", [1, 3, 8, 9, 16, 17, 33, 64, 65, 70])
def test_rule_bits_of_every_width(k: int) -> None:
    rng = np.random.default_rng(k)
    matrix = rng.random((k, 300)) < 0.2
    matrix[:, :5] = False  # some empty sets
    bits = RuleBits(k)
    packed = bits.pack(matrix)
    want = np.where(matrix.any(axis=0), matrix.argmax(axis=0), -1)
    assert bits.first(packed).tolist() == want.tolist()
    for j in range(k):
        assert bits.contains(packed, j).tolist() == matrix[j].tolist()
    probe = rng.integers(0, k, 300)
    assert bits.has(packed, probe).tolist() == matrix[probe, np.arange(300)].tolist()
    some = sorted(set(rng.integers(0, k, 3).tolist()))
    assert bits.contains(np.array([bits.union(some)], dtype=bits.dtype), some[-1]).tolist() == [True]
    added = bits.zeros(300)
    for j in range(k):
        bits.add(added, matrix[j], j)
    assert (added == packed).all()


def test_waits_as_the_pure_core_gives_them() -> None:
    spec = load_spec({
        "name": "waits", "queues": {"Q": {}},
        "rules": [
            {"name": "a", "priority": 3, "when": {"seconds_on_page": {"gte": 300}, "minutes_on_page": {"gte": 6}},
             "offer": {"queue": "Q"}},
            {"name": "b", "priority": 2, "when": {"any_of": [{"seconds_on_page": {"gt": 120}},
                                                             {"minutes_on_page": {"in": [1, 7]}}]},
             "offer": {"queue": "Q"}},
            {"name": "c", "priority": 1, "when": {"seconds_on_page": {"gte": 60, "lt": 200}},
             "offer": {"queue": "Q"}},
        ]})
    rules = spec.rules
    seconds = np.array([0.0, 30.0, 59.9, 60.0, 100.0, 120.0, 120.0005, 199.0, 250.0, 359.5, 400.0, 420.0, 1000.0])
    bits = RuleBits(len(rules))
    cross = bits.pack(np.ones((len(rules), len(seconds)), dtype=bool))
    rule, delay = wait_for(bits, cross, seconds, [np.array(wait_points(r)) for r in rules])
    for i, s in enumerate(seconds.tolist()):
        waits = [(d, k) for k, r in enumerate(rules) if (d := next_crossing(r, s)) is not None]
        if waits:
            d, k = min(waits, key=lambda pair: pair[0])
            assert (int(rule[i]), round3(delay[i:i + 1])[0]) == (k, round(d, 3)), s
        else:
            assert rule[i] == -1 and np.isnan(delay[i]), s


def _many_rules(n: int, max_offers: int) -> dict[str, Any]:
    rules = []
    for i in range(n):
        when: dict[str, Any] = {"page": PAGES[i % len(PAGES)], "seconds_on_page": {"gte": 15 * (1 + i % 7)}}
        if i % 3 == 1:
            when["score"] = {"gte": round(0.02 + 0.01 * (i % 5), 2)}
        if i % 4 == 2:
            when["pages_viewed"] = {"gte": 1 + i % 3}
        rules.append({"name": f"r{i:03d}", "priority": 1000 - i, "when": when,
                      "offer": {"queue": "Day" if i % 2 else "Any"}})
    return {"name": "many", "policy": {"max_offers_per_session": max_offers, "decline_cooldown_s": 7 * 86400,
                                       "holdout": 0.2,
                                       "offer_timeout_s": 40, "session_idle_ttl_s": 600},
            "queues": {"Any": {"max_wait_s": 60},
                       "Day": {"hours": {"tz": "Europe/Amsterdam", "start": "09:00", "end": "17:00"}}},
            "rules": rules}


@pytest.mark.parametrize(("n", "max_offers"), [(20, 1), (20, 2), (70, 1), (70, 3)])
def test_more_rules_than_a_word_holds_fast_equals_the_pure_core(n: int, max_offers: int) -> None:
    events = generate(visitors=300, seed=n, days=2).events
    spec = load_spec(_many_rules(n, max_offers))
    rng = np.random.default_rng(n)
    updates = pd.DataFrame({"ts": np.sort(rng.uniform(events["ts"].min(), events["ts"].max(), 60)),
                            "queue": rng.choice(["Any", "Day"], 60), "agents_available": rng.choice([0, 2, np.nan], 60),
                            "estimated_wait_s": rng.choice([10.0, 100.0, np.nan], 60)})
    fast = backtest(spec, events, SCORER, queue_status=updates, engine="fast", scores="all", metadata=True)
    slow = backtest(spec, events, SCORER, queue_status=updates, engine="policy", scores="all", metadata=True)
    assert fast.metrics["offers"] > 0 and fast.metrics["reasons"]["queue_busy"] > 0
    assert fast.metrics["reasons"]["holdout"] > 0 and fast.metrics["reasons"]["cooldown"] > 0
    pd.testing.assert_frame_equal(fast.decisions, slow.decisions)
    assert {k: v for k, v in fast.metrics.items() if k != "queues"} == \
        {k: v for k, v in slow.metrics.items() if k != "queues"}
    pd.testing.assert_frame_equal(fast.per_rule, slow.per_rule)


def test_no_private_name_of_the_policy_outside_core() -> None:
    """The order of judgement and its crossing points are public API of policy: nothing reaches past it."""
    private = re.compile(r"policy import[^\n]*\b_[a-z]|from \.+(core\.)?policy import \([^)]*\b_[a-z]|policy\._[a-z]")
    offenders = []
    for path in (ROOT / "pcrules").rglob("*.py"):
        if path.parent.name == "core":
            continue
        text = path.read_text(encoding="utf-8")
        if private.search(text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders
