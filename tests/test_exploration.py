"""Exploration (``policy.explore``): which sessions explore, their random waits, and that the propensity logged
with every offer is the probability that the logging policy made it. The runtime/backtest parity with
exploration is in tests/test_backtest.py (world and random specs) and tests/test_redis_store.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from helpers import rule, spec_dict
from pcrules import Runtime, load_spec
from pcrules.backtest import backtest
from pcrules.core.policy import explore_probability, explore_wait, explores
from pcrules.core.spec import DEFAULT_EXPLORE_WAITS, Explore
from pcrules.decision_log import MemoryDecisionLog
from pcrules.errors import SpecError

T0 = 1_770_000_000.0


def test_the_spec_option_and_its_mistakes() -> None:
    spec = load_spec(spec_dict(explore={"share": 0.05}))
    assert spec.policy.explore == Explore(0.05, DEFAULT_EXPLORE_WAITS, (1 / 12,) * 12)
    assert load_spec(spec_dict()).policy.explore is None
    spec = load_spec(spec_dict(explore={"share": 0.1, "waits": [120, 0, 30], "weights": [1, 2, 1]}))
    assert spec.policy.explore.waits == (0.0, 30.0, 120.0) and spec.policy.explore.weights == (0.5, 0.25, 0.25)
    with pytest.raises(SpecError) as err:
        load_spec(spec_dict(explore={"share": 0.6, "waits": [10, 10], "weights": [1], "spread": 3}))
    text = str(err.value)
    for needle in ("policy.explore.spread: unknown key", "policy.explore.share: expected a number >= 0 and < 0.5",
                   "policy.explore.waits: expected distinct waits"):
        assert needle in text
    with pytest.raises(SpecError, match=r"policy.explore.weights: expected 2 weights"):
        load_spec(spec_dict(explore={"share": 0.1, "waits": [1, 2], "weights": [1]}))
    with pytest.raises(SpecError, match=r"policy.explore.share: required"):
        load_spec(spec_dict(explore={"waits": [1, 2]}))


def test_sessions_and_waits_are_drawn_stably_at_the_stated_rates() -> None:
    explore = Explore(0.1, (0.0, 60.0, 300.0), (0.5, 0.25, 0.25))
    sessions = [f"s{i}" for i in range(40_000)]
    share = np.mean([explores(s, 0.1) for s in sessions])
    assert abs(share - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(sessions))
    waits = pd.Series([explore_wait(explore, s, "Home") for s in sessions]).value_counts(normalize=True)
    for wait, weight in zip(explore.waits, explore.weights):
        assert abs(waits[wait] - weight) < 4 * math.sqrt(weight * (1 - weight) / len(sessions))
    # the same session and page always draw the same wait; another page draws independently
    assert [explore_wait(explore, "s7", "Home") for _ in range(3)] == [explore_wait(explore, "s7", "Home")] * 3
    same = np.mean([explore_wait(explore, s, "Home") == explore_wait(explore, s, "Plans") for s in sessions[:5000]])
    assert abs(same - (0.25 + 0.0625 + 0.0625)) < 0.03


def test_the_probability_of_an_offer_by_hand() -> None:
    explore = Explore(0.1, (0.0, 30.0, 60.0, 120.0), (0.25, 0.25, 0.25, 0.25))
    # nothing seen yet: at page enter only the wait 0 fires
    assert explore_probability(explore, (), "A", 0.0) == 0.25
    # page A seen up to 40 s (waits 0 and 30 ruled out), now at 60 s: the wait was 60
    assert explore_probability(explore, (("A", 40.0),), "A", 60.0) == pytest.approx(0.25)
    # ... at 90 s (no observation at 60): still only the wait 60
    assert explore_probability(explore, (("A", 40.0),), "A", 90.0) == pytest.approx(0.25)
    # page B left after 45 s (its wait was 60 or 120: 1/2), then A at page enter (wait 0: 1/4)
    assert explore_probability(explore, (("B", 45.0),), "A", 0.0) == pytest.approx(0.5 * 0.25)
    # a page seen past the longest wait would have offered: nothing later can be this session's offer
    assert explore_probability(explore, (("B", 130.0),), "A", 0.0) == 0.0


def test_the_logged_propensity_is_the_frequency_of_the_offer() -> None:
    """Many sessions of one shape: the share of sessions whose offer came at each moment equals the mean
    propensity logged there (production and explored sessions together), within sampling error."""
    spec = load_spec(spec_dict([rule("a", page="A", seconds=60), rule("b", page="B", seconds=30, priority=5)],
                               explore={"share": 0.3, "waits": [0, 15, 30, 60, 90, 120, 300],
                                        "weights": [1, 1, 2, 1, 1, 1, 1]},
                               holdout=0.2, decline_cooldown_s=0))
    n = 20_000
    shape = [("A", [0, 15, 30]), ("B", [0, 15, 45, 90]), ("A", [0, 30, 60, 90])]  # A again: it keeps its wait
    rows = []
    for i in range(n):
        t = T0 + i * 10_000.0
        for k, (page, checks) in enumerate(shape):
            for sec in checks:
                rows.append({"ts": t + sec, "visitor_id": f"v{i}", "session_id": f"v{i}-s", "page": page,
                             "seconds_on_page": float(sec), "pages_viewed": k + 1})
            t += checks[-1] + 2.0
    events = pd.DataFrame(rows)
    result = backtest(spec, events)
    offers = result.decisions[result.decisions["expires_at"].notna()].copy()
    offers["view"] = events.loc[offers.index, "pages_viewed"].to_numpy()
    offers["seconds_on_page"] = events.loc[offers.index, "seconds_on_page"].to_numpy()
    moments = offers.groupby(["view", "seconds_on_page"]).agg(count=("propensity", "size"),
                                                              propensity=("propensity", "mean"),
                                                              spread=("propensity", "std"))
    assert len(moments) >= 8  # explored offers at many moments, the production ones at two
    assert moments["spread"].fillna(0).max() < 1e-12  # one shape: one probability per moment
    freq = moments["count"] / n
    sigma = np.sqrt(moments["propensity"] * (1 - moments["propensity"]) / n)
    assert (abs(freq - moments["propensity"]) < 4 * sigma + 1e-9).all(), pd.DataFrame({"freq": freq, **moments})
    # A production session always offers (rule a on A at 60 s); an explored one does not when both pages drew
    # a wait longer than the visitor stayed (120 or 300 s: 2/8 each): the probabilities add up to the rest
    assert moments["propensity"].sum() == pytest.approx(1.0 - 0.3 * (2 / 8) ** 2, abs=1e-12)
    assert len(offers) / n == pytest.approx(1.0 - 0.3 * (2 / 8) ** 2, abs=0.01)
    assert offers["explored"].mean() == pytest.approx(0.3, abs=0.02)


def test_the_runtime_logs_explored_offers_and_waits_for_the_drawn_moment() -> None:
    spec = load_spec(spec_dict([rule("a", page="A", seconds=600)], explore={"share": 0.49, "waits": [45, 90]}))
    log = MemoryDecisionLog()
    explored = next(f"s{i}" for i in range(100) if explores(f"s{i}", 0.49))
    wait = explore_wait(spec.policy.explore, explored, "A")
    with Runtime(spec, log=log, clock=lambda: T0) as runtime:
        first = runtime.observe({"visitor_id": "v", "session_id": explored, "page": "A", "seconds_on_page": 0,
                                 "ts": T0})
        assert first.action == "wait" and first.recheck_after == wait  # the drawn wait, not the rule's 600 s
        offer = runtime.observe({"visitor_id": "v", "session_id": explored, "page": "A", "seconds_on_page": wait,
                                 "ts": T0 + wait})
    assert offer.action == "offer" and offer.explored and offer.propensity == pytest.approx(0.49 * 0.5)
    assert log.decisions[-1].propensity == offer.propensity


def test_first_offer_chances_add_up_and_equal_the_logged_propensities(worlds) -> None:
    """For off-policy evaluation the chance of the logging policy's first offer at every moment of a stretch
    (not only where it offered): per stretch they add up to one with the chance of no offer, and where the log
    offered they equal the propensity the runtime logged."""
    from pcrules.analysis.feedback import logging_sets
    from pcrules.analysis.judge import first_offer_chances
    from pcrules.world import legacy_spec

    world = worlds(visitors=3000, seed=21)
    spec = load_spec(legacy_spec(explore=0.3))
    events = world.events.drop(columns=["response", "response_delay_s"])  # no declines: no cooldowns
    st, sets, _ = logging_sets(spec, events)
    chance, none = first_offer_chances(st, sets, spec.policy, np.zeros(st.m, dtype=bool))
    stretch = np.searchsorted(st.starts, np.arange(st.m), side="right") - 1
    totals = np.bincount(stretch, weights=chance, minlength=len(st.starts)) + none
    assert np.allclose(totals, 1.0, atol=1e-9)
    result = backtest(spec, events)
    offered = result.offer_rows
    position = np.full(st.table.n, -1)
    position[st.rows] = np.arange(st.m)
    logged = result.decisions["propensity"].to_numpy()[np.argsort(st.table.order)] if st.table.order is not None \
        else result.decisions["propensity"].to_numpy()
    assert np.allclose(chance[position[offered]], logged[offered], rtol=1e-9, atol=1e-12)
    assert (chance[position[offered]] > 0).all() and len(offered) > 500
