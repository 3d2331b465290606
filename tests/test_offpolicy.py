"""Off-policy estimators (pcrules.analysis.offpolicy) on a logged timing bandit whose truth is known.

The simulation is the timing problem in miniature: a session stretch is one page view observed at the browser's
re-check moments; the logging policy is a mixture, production's fixed wait per page with probability 1 - EPS and
a random wait (a discrete distribution with an "never" atom) with probability EPS; its propensity is the formula of
docs/off-policy.md. A visitor has 1 + geometric sessions sharing a taste for chat, so resampling visitors matters.
The candidate waits differently per page and skips low scores. The truth is the candidate's mean P(accept) over a
large population drawn once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest

from pcrules.analysis.offpolicy import NO_OFFER, OffPolicyReport, difference, evaluate

GRID = np.array([10, 20, 30, 45, 60, 90, 120, 180, 240, 300], float)  # offerable observations (seconds on page)
WAITS = np.array([10, 30, 60, 120, 240, np.inf])  # the exploration waits, inf = never on this page
WAIT_P = np.array([0.15, 0.2, 0.2, 0.15, 0.15, 0.15])
PRODUCTION = np.array([90.0, 150.0, 45.0])  # production's wait per page
CANDIDATE = np.array([60.0, 120.0, 30.0])  # the candidate's wait per page, and it skips scores below 0.3
NEAR = np.array([60.0, 120.0, 45.0])  # a close variant: another wait on one page
EPS = 0.2  # explored share (large for a test: a few % in production, with more sessions)
SEEDS = range(40)


def survival(x: np.ndarray) -> np.ndarray:
    """P(explored wait > x)."""
    return (WAIT_P * (WAITS > np.asarray(x)[..., None])).sum(-1)


@dataclass
class Sessions:
    visitor: np.ndarray
    page: np.ndarray
    score: np.ndarray
    seen: np.ndarray  # (sessions x GRID): the observation happened (the visitor was still on the page)
    q: np.ndarray  # (sessions x GRID): true P(accept) of an offer there

    def first_at(self, wait: np.ndarray) -> np.ndarray:
        hit = self.seen & (GRID >= wait[:, None])
        return np.where(hit.any(1), hit.argmax(1), NO_OFFER)

    def production(self) -> np.ndarray:
        return self.first_at(PRODUCTION[self.page])

    def candidate(self, waits: np.ndarray = CANDIDATE) -> np.ndarray:
        return np.where(self.score >= 0.3, self.first_at(waits[self.page]), NO_OFFER)

    def q_of(self, choice: np.ndarray) -> np.ndarray:
        return np.where(choice >= 0, self.q[np.arange(len(choice)), np.maximum(choice, 0)], 0.0)

    def propensity(self, choice: np.ndarray) -> np.ndarray:
        """P(logging policy's first offer = choice): (1-EPS) 1{production's} + EPS P_explore."""
        before = np.where(choice > 0, GRID[np.maximum(choice - 1, 0)], -np.inf)
        explore_row = survival(before) - survival(GRID[np.maximum(choice, 0)])
        last = self.seen.sum(1) - 1
        explore_none = survival(np.where(last >= 0, GRID[np.maximum(last, 0)], -np.inf))
        explore = np.where(choice >= 0, explore_row, explore_none)
        return (1 - EPS) * (self.production() == choice) + EPS * explore


def simulate(visitors: int, rng: np.random.Generator) -> Sessions:
    visitor = np.repeat(np.arange(visitors), rng.geometric(0.6, visitors))
    taste = rng.normal(0, 0.6, visitors)[visitor]
    n = len(visitor)
    page = rng.integers(0, 3, n)
    score = rng.random(n)
    dwell = rng.weibull(0.7, n) * np.array([60, 150, 40])[page]
    logit = (-1.5 + np.array([0.3, 0.0, -0.3])[page, None] + 1.5 * score[:, None] + 0.7 * np.log1p(GRID / 30)
             - (GRID / 200) ** 2 + taste[:, None])
    return Sessions(visitor, page, score, GRID <= dwell[:, None], 1 / (1 + np.exp(-logit)))


def log(s: Sessions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(s.visitor)
    explored = rng.random(n) < EPS
    wait = WAITS[rng.choice(len(WAITS), n, p=WAIT_P)]
    chosen = np.where(explored, s.first_at(wait), s.production())
    reward = (rng.random(n) < s.q_of(chosen)).astype(float)
    return chosen, s.propensity(chosen), reward


@lru_cache(maxsize=1)
def truth() -> tuple[float, float, float]:
    """(candidate, production, near): mean true P(accept) per session over 400k visitors."""
    s = simulate(400_000, np.random.default_rng(999))
    candidate, production, near = (float(s.q_of(c).mean()) for c in (s.candidate(), s.production(), s.candidate(NEAR)))
    return candidate, production, near


def wrong(q: np.ndarray) -> np.ndarray:
    return np.clip(2.5 * q + 0.05, 0, 1)


@lru_cache(maxsize=1)
def runs() -> list[dict[str, OffPolicyReport]]:
    """Per seed: the candidate with the true model, with a wrong model; production and a near variant of the
    candidate (for differences)."""
    out = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        s = simulate(3_000, rng)
        chosen, p, r = log(s, rng)
        common = dict(cluster=s.visitor, n_boot=300, seed=seed)
        cand, prod, near = s.candidate(), s.production(), s.candidate(NEAR)
        out.append({
            "candidate": evaluate(chosen, p, r, cand, s.propensity(cand), q_logged=s.q_of(chosen),
                                  q_candidate=s.q_of(cand), **common),
            "wrong": evaluate(chosen, p, r, cand, s.propensity(cand), q_logged=wrong(s.q_of(chosen)),
                              q_candidate=wrong(s.q_of(cand)), **common),
            "production": evaluate(chosen, p, r, prod, s.propensity(prod), q_logged=s.q_of(chosen),
                                   q_candidate=s.q_of(prod), **common),
            "near": evaluate(chosen, p, r, near, s.propensity(near), q_logged=s.q_of(chosen),
                             q_candidate=s.q_of(near), **common),
        })
    return out


def coverage(which: str, estimator: str, value: float) -> float:
    return float(np.mean([run[which][estimator].mean_interval.contains(value) for run in runs()]))


def test_propensities_of_the_simulation_are_right() -> None:
    """The simulation's propensity formula is what the logging policy does: E[1{log = c} / P(c)] = 1."""
    s = simulate(100_000, np.random.default_rng(5))
    chosen, _, _ = log(s, np.random.default_rng(6))
    cand = s.candidate()
    assert (s.propensity(cand) > 0).all()
    assert np.mean((chosen == cand) / s.propensity(cand)) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("estimator", ["ips", "snips", "dr"])
def test_interval_covers_the_truth(estimator: str) -> None:
    assert coverage("candidate", estimator, truth()[0]) >= 0.90


def test_ips_is_unbiased() -> None:
    values = np.array([run["candidate"]["ips"].mean for run in runs()])
    standard_error = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - truth()[0]) < 3 * standard_error
    assert abs(values.mean() - truth()[0]) < 0.1 * truth()[0]


def test_dr_with_the_right_model_is_narrower_than_ips() -> None:
    ratio = np.array([run["candidate"]["dr"].interval.width / run["candidate"]["ips"].interval.width
                      for run in runs()])
    assert ratio.mean() < 0.8
    assert (ratio < 1).mean() >= 0.9


def test_dr_with_a_wrong_model_still_covers_where_dm_does_not() -> None:
    assert coverage("wrong", "dr", truth()[0]) >= 0.90
    assert coverage("wrong", "dm", truth()[0]) <= 0.05  # the model alone: what the tuner used to trust


@pytest.mark.parametrize("other", ["production", "near"])
def test_difference_is_paired_and_covers_the_true_gain(other: str) -> None:
    gain = truth()[0] - truth()[1 if other == "production" else 2]
    diffs = [difference(run["candidate"], run[other]) for run in runs()]
    # Two close candidates differ on ~510 sessions per log; the candidate's side rests on the ~21 the log matched
    # (explored offers at 30 s on one page, weight 25): a percentile interval on so few events undercovers a little.
    # Measured on 120 other seeds: 89 % (IPS), 88 % (SNIPS), 93 % (DR) at nominal 95 %; 94-96 % against production
    # (docs/off-policy.md).
    floor = 0.90 if other == "production" else 0.85
    for estimator in ("ips", "snips", "dr"):
        assert np.mean([d[estimator].mean_interval.contains(gain) for d in diffs]) >= floor
    # paired resamples: where two candidates share most choices, much narrower than two independent intervals
    paired = np.mean([d["dr"].interval.width for d in diffs])
    unpaired = np.mean([math.hypot(run["candidate"]["dr"].interval.width, run[other]["dr"].interval.width)
                        for run in runs()])
    assert paired < (0.5 if other == "near" else 1.0) * unpaired
    same = difference(runs()[0]["candidate"], runs()[0]["candidate"])
    assert same["dr"].value == 0 and same["dr"].interval.low == same["dr"].interval.high == 0
    assert not same.better("dr")


def test_difference_detects_a_clearly_worse_candidate_and_refuses_unpaired_reports() -> None:
    rng = np.random.default_rng(11)
    s = simulate(3_000, rng)
    chosen, p, r = log(s, rng)
    never = np.full(len(chosen), NO_OFFER)  # the holdout's policy: uplift's reference
    prod = s.production()
    a = evaluate(chosen, p, r, prod, s.propensity(prod), cluster=s.visitor, seed=3)
    b = evaluate(chosen, p, r, never, s.propensity(never), cluster=s.visitor, seed=3)
    assert b["ips"].value == 0 and b.supported  # "never" is supported thanks to the wait distribution's inf atom
    d = difference(a, b)
    assert d.better("ips") and d.better("snips") and not difference(b, a).better("ips")
    assert set(d.to_frame().index) == {"ips", "snips"}
    assert difference(a, b, level=0.5)["ips"].interval.width < d["ips"].interval.width
    assert d["ips"].value == pytest.approx(a["ips"].value)
    with pytest.raises(ValueError, match="level must lie in"):
        difference(a, b, level=95)
    with pytest.raises(ValueError, match="different logs or resamples"):
        difference(a, evaluate(chosen, p, r, never, s.propensity(never), cluster=s.visitor, seed=4))
    with pytest.raises(ValueError, match="different logs or resamples"):
        difference(a, evaluate(chosen, p, r, never, s.propensity(never), seed=3))


# ------------------------------------------------------------------------------------------ a hand-built log

LOGGED = np.array([3, NO_OFFER, 5, 2, NO_OFFER, 4, 7, NO_OFFER, 1, 2])
PROPENSITY = np.array([0.5, 0.8, 0.9, 0.25, 0.1, 0.9, 0.2, 0.6, 0.9, 0.4])
REWARD = np.array([1.0, 0, 0, 1, 0, 1, 1, 0, 1, 0])
CANDIDATE_CHOICE = np.array([3, 2, 6, NO_OFFER, NO_OFFER, 9, 7, 4, NO_OFFER, 2])
# the logging policy's probability of the candidate's choice: equal to the logged one where they agree, 0 at
# units 2 and 5 (offers outside support) and 8 (no offer, which the logging policy never chose there)
CANDIDATE_PROPENSITY = np.array([0.5, 0.05, 0.0, 0.3, 0.1, 0.0, 0.2, 0.1, 0.0, 0.4])
Q_CANDIDATE = np.array([0.3, 0.2, 0.4, 0.0, 0.0, 0.5, 0.6, 0.1, 0.0, 0.2])
Q_LOGGED = np.array([0.3, 0.0, 0.1, 0.2, 0.0, 0.3, 0.6, 0.0, 0.5, 0.2])


def hand(**changes: object) -> OffPolicyReport:
    args: dict[str, object] = dict(logged_choice=LOGGED, logged_propensity=PROPENSITY, reward=REWARD,
                                   candidate_choice=CANDIDATE_CHOICE, candidate_propensity=CANDIDATE_PROPENSITY,
                                   q_logged=Q_LOGGED, q_candidate=Q_CANDIDATE, n_boot=200)
    args.update(changes)
    return evaluate(**args)  # type: ignore[arg-type]


def test_estimates_and_diagnostics_by_hand() -> None:
    report = hand(total_units=1_000)
    matched = np.array([0, 4, 6, 9])
    w = np.zeros(10)
    w[matched] = 1 / PROPENSITY[matched]  # 2, 10, 5, 2.5
    assert report.n_units == 10 and report.n_matched == 4 and report.n_clusters == 10
    assert report["ips"].mean == pytest.approx((2 * 1 + 5 * 1) / 10)
    assert report["snips"].mean == pytest.approx(7 / 19.5)
    assert report["dm"].mean == pytest.approx(Q_CANDIDATE.mean())
    assert report["dr"].mean == pytest.approx((Q_CANDIDATE + w * (REWARD - Q_LOGGED)).mean())
    assert report["ips"].value == pytest.approx(report["ips"].mean * 1_000)
    assert report["ips"].interval.high == pytest.approx(report["ips"].mean_interval.high * 1_000)
    assert report.effective_sample_size == pytest.approx(19.5**2 / (4 + 100 + 25 + 6.25))
    assert report.max_weight == pytest.approx(10)
    assert report.unsupported_share == pytest.approx(0.3)
    assert report.n_candidate_offers == 7 and report.unsupported_offer_share == pytest.approx(2 / 7)
    assert not report.supported
    text = "\n".join(report.warnings)
    assert "29% of the candidate's offers outside logged support: IPS/SNIPS cannot see them, DR relies on the model" \
        in text
    assert "1 of the candidate's no-offer units had no logged chance of no offer" in text
    assert "effective sample size 3 below 100" in text and "only 10 visitors" in text
    assert "one unit carries 51% of the importance weight" in text
    assert "warning: 29% of the candidate's offers" in report.summary()
    assert list(report.to_frame().index) == ["ips", "snips", "dr", "dm"]
    assert list(report.to_frame().columns) == ["value", "low", "high", "mean", "mean_low", "mean_high"]


def test_without_a_model_only_ips_and_snips() -> None:
    report = hand(q_logged=None, q_candidate=None)
    assert set(report.estimates) == {"ips", "snips"}
    assert "no model was given for DR" in "\n".join(report.warnings)
    assert set(hand(q_logged=None).estimates) == {"ips", "snips", "dr", "dm"}  # DR's correction uses q_candidate
    assert hand(q_logged=None)["dr"].mean == pytest.approx(hand()["dr"].mean)


def test_deterministic_under_a_seed() -> None:
    a, b, c = hand(seed=7), hand(seed=7), hand(seed=8)
    for name in a.estimates:
        assert a[name] == b[name] and np.array_equal(a[name].replicates, b[name].replicates)
        assert a[name].mean == c[name].mean
    assert a["ips"].interval != c["ips"].interval


def test_the_bootstrap_resamples_visitors_not_units() -> None:
    """Five identical copies of each unit from one visitor carry the information of one unit: resampling visitors
    keeps the interval of the single copy, resampling units would shrink it by about sqrt(5)."""
    rng = np.random.default_rng(1)
    s = simulate(2_000, rng)
    chosen, p, r = log(s, rng)
    cand = s.candidate()
    arrays = [np.repeat(x, 5) for x in (chosen, p, r, cand, s.propensity(cand))]
    once = evaluate(chosen, p, r, cand, s.propensity(cand))["ips"].mean_interval.width
    by_visitor = evaluate(*arrays, cluster=np.repeat(np.arange(len(chosen)), 5))["ips"].mean_interval.width
    by_unit = evaluate(*arrays)["ips"].mean_interval.width
    assert by_visitor == pytest.approx(once, rel=0.15)
    assert by_unit < by_visitor / 1.8


@pytest.mark.parametrize(("changes", "message"), [
    (dict(reward=REWARD[:9]), "reward has 9 values where logged_choice has 10"),
    (dict(reward=np.r_[np.nan, REWARD[1:]]), "reward has 1 NaN"),
    (dict(logged_propensity=np.r_[0.0, PROPENSITY[1:]]), r"logged_propensity must lie in \(0, 1\]"),
    (dict(logged_propensity=np.r_[1.5, PROPENSITY[1:]]), r"logged_propensity must lie in \(0, 1\]"),
    (dict(candidate_propensity=np.r_[-0.1, CANDIDATE_PROPENSITY[1:]]), r"candidate_propensity must lie in \[0, 1\]"),
    (dict(candidate_propensity=np.r_[0.4, CANDIDATE_PROPENSITY[1:]]), "candidate_propensity differs from logged_pro"),
    (dict(q_logged=np.r_[0.9, Q_LOGGED[1:]]), "q_logged differs from q_candidate"),
    (dict(q_candidate=None), "q_logged was given without q_candidate"),
    (dict(q_candidate=np.r_[np.inf, Q_CANDIDATE[1:]]), "q_candidate has 1 NaN or infinite"),
    (dict(candidate_choice=CANDIDATE_CHOICE.astype(float)), "candidate_choice must hold integer row ids"),
    (dict(logged_choice=np.r_[-2, LOGGED[1:]]), "logged_choice holds -2"),
    (dict(logged_choice=LOGGED[:0]), "logged_choice is empty"),
    (dict(cluster=["a"] * 9), "cluster has 9 values"),
    (dict(cluster=[None] + ["a"] * 9), "cluster has 1 missing"),
    (dict(n_boot=1), "n_boot must be an integer >= 2"),
    (dict(level=1.0), "level must lie in"),
    (dict(total_units=0), "total_units must be a positive number"),
])
def test_input_errors_name_the_argument(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hand(**changes)
