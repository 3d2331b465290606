"""The log as bandit feedback, and a candidate ruleset's value estimated from it (off-policy evaluation).

:mod:`.offpolicy` holds the estimators; this module says what they are fed. The history is the observations
(events, without any would-be answer) and the offers the logging ruleset showed, with their answers; the
logging ruleset is known (with its exploration and holdout). Per session stretch (the unit):

* the *shown* choice: the row of the stretch's first offer a visitor saw, or ``-1`` (no offer, or a holdout
  visitor's withheld one);
* its probability under the logging policy: ``(1 - holdout) x P(first offer here)`` for an offer,
  ``holdout + (1 - holdout) x P(no offer)`` for none, with :func:`.judge.first_offer_chances` (the production
  rules and exploration; the holdout is a keyed hash of the visitor, independent of both);
* the reward: the offer was accepted, or (uplift) the session reached a goal.

A candidate ruleset is judged on the same observations without answers: its first offer per stretch (a decline
it would have met, and so a cooldown into a later session, is unknown to the log and ignored: docs/off-policy.md
says what that costs). Its holdout is set aside there and applied to the total instead (x (1 - holdout)): the
holdout is the same keyed hash of the visitor in every ruleset, so a candidate's withheld offers would fall on
exactly the visitors the log held out, and weighting by the log's holdout share would count them twice. Its
exploration is set aside for the same reason (the same keyed hash of the session): the estimate is that of its
rules; what exploring costs is in the backtest (``exploration_cost``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core.decision import Reason
from ..core.spec import RuleSpec, load_spec
from ..matching.vector import VectorMatcher
from .backtest import backtest, judge_sets, without_exploration
from .judge import RuleSets, Stretches, first_offer_chances, queue_blocks, queue_timeline
from .offpolicy import NO_OFFER, Difference, OffPolicyReport, difference, evaluate
from .scores import scores_for
from .table import ANSWER_COLUMNS, EventTable

__all__ = ["Feedback", "feedback", "logging_sets", "candidate_choices", "estimate", "uplift", "versus"]

_KEY = ["session_id", "ts", "seconds_on_page"]


def logging_sets(spec: RuleSpec, events: pd.DataFrame | EventTable, scorer: Any = None,
                 queue_status: Any = None) -> tuple[Stretches, RuleSets, np.ndarray]:
    """(stretches, the rules' sets as written, score per table row) of `spec` on `events`: the judge's input."""
    table = events if isinstance(events, EventTable) else EventTable(events)
    matcher = VectorMatcher(spec)
    score = np.full(table.n, np.nan)
    if scorer is not None and spec.uses_score:
        score = scores_for(table, spec, scorer, np.flatnonzero(table.valid), False).copy()
    arrays = matcher.match(table.columns, score)
    blocks = queue_blocks(spec, table, queue_timeline(spec, queue_status))
    qblock = np.stack([blocks[r.queue] for r in spec.rules]) if spec.rules else np.zeros((0, table.n), np.int8)
    st, _, sets = judge_sets(spec, table, arrays, score, qblock)
    return st, sets, score


def _per_row(result: Any, column: str) -> np.ndarray:
    """A decisions column in table (time) order."""
    values = result.decisions[column].to_numpy()
    order = result.table.order
    return values if order is None else values[order]


@dataclass(frozen=True)
class Feedback:
    """The logged history, per session stretch of the logging ruleset (see the module docstring)."""

    spec: RuleSpec
    table: EventTable  # the observations, answers only where an offer was shown
    stretch: np.ndarray  # per table row: its stretch, -1 for a refused row
    visitor: np.ndarray  # per stretch: visitor code (the bootstrap's cluster)
    shown: np.ndarray  # per stretch: table row of the first offer shown, -1 none
    p_shown: np.ndarray  # per stretch: P(logging policy shows that)
    chance: np.ndarray  # per table row: P(logging policy's first shown offer of its stretch is here)
    p_none: np.ndarray  # per stretch: P(logging policy shows nothing in it)
    accepted: np.ndarray  # per stretch: the shown offer was accepted
    mismatched: int  # logged offers the logging ruleset does not reproduce (0 when the log is its own)

    @property
    def n(self) -> int:
        return len(self.shown)

    def goals(self, goals: pd.DataFrame) -> np.ndarray:
        """Per stretch: 1 when its session has a goal in `goals` (rows with ``session_id``), else 0."""
        first_row = np.full(self.n, -1, dtype=np.int64)
        rows = np.flatnonzero(self.stretch >= 0)[::-1]
        first_row[self.stretch[rows]] = rows  # the earliest row of each stretch is written last
        sessions = self.table.frame["session_id"].to_numpy(dtype=object)[first_row]
        return pd.Series(sessions).isin(set(goals["session_id"].astype(str))).to_numpy(dtype=float)


def feedback(spec: RuleSpec | str | dict, events: pd.DataFrame, offers: pd.DataFrame, *,
             queue_status: Any = None, scorer: Any = None) -> Feedback:
    """The history as bandit feedback for the ruleset `spec` that logged it.

    ``events``: the observations (any would-be answer columns are dropped); ``offers``: the offers shown, with
    ``session_id``, ``ts``, ``seconds_on_page`` (the observation each was made at), ``response`` and
    ``response_delay_s`` (``pcrules.world.World.offers`` or the decision log's offers and outcomes). `scorer`:
    only when the logging ruleset's rules read a score (they decide with it).
    """
    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    observed = events.drop(columns=[c for c in ANSWER_COLUMNS if c in events.columns])
    answers = offers[_KEY + ["response", "response_delay_s"]]
    observed = observed.merge(answers, on=_KEY, how="left", validate="many_to_one")
    observed.index = events.index
    response = observed["response"].astype(object)
    observed["response"] = response.where(response.isin(["accept", "decline"]), None)
    table = EventTable(observed)
    result = backtest(spec, table, scorer, exploration_cost=False)
    st, sets, _ = logging_sets(spec, table, scorer, queue_status)
    position = np.full(table.n, -1, dtype=np.int64)
    position[st.rows] = np.arange(st.m)
    cooldown = _per_row(result, "reason") == Reason.COOLDOWN.value
    chance_pos, none = first_offer_chances(st, sets, spec.policy, cooldown[st.rows])
    # Stretches of rows no rule could match still count as units (no offer, with certainty).
    epoch, _ = table.stretches(spec.policy.session_idle_ttl_s)
    _, stretch_of_row = np.unique(np.where(epoch >= 0, epoch, np.iinfo(np.int64).max), return_inverse=True)
    stretch_of_row = np.where(epoch >= 0, stretch_of_row, -1)
    n_stretches = int(stretch_of_row.max()) + 1 if len(stretch_of_row) else 0
    p_none = np.ones(n_stretches)
    p_none[stretch_of_row[st.rows[st.starts]]] = none
    vcode, _, _ = table.keys()
    visitor = np.zeros(n_stretches, dtype=np.int64)
    valid_rows = np.flatnonzero(stretch_of_row >= 0)
    visitor[stretch_of_row[valid_rows]] = vcode[valid_rows]
    held = table.holdout(visitor, spec.policy.holdout).astype(bool)
    h = spec.policy.holdout
    chance = np.zeros(table.n)
    chance[st.rows] = (1.0 - h) * chance_pos
    p_none = h + (1.0 - h) * p_none
    # the first offer of each stretch (shown or withheld) is what the logging policy chose
    o_rows = result.offer_rows
    order = np.argsort(stretch_of_row[o_rows], kind="stable")  # offers come in time order; group by stretch
    o_rows = o_rows[order]
    o_stretch = stretch_of_row[o_rows]
    first = np.r_[True, o_stretch[1:] != o_stretch[:-1]] if len(o_rows) else np.zeros(0, bool)
    shown = np.full(n_stretches, NO_OFFER, dtype=np.int64)
    keep = first & ~held[o_stretch]
    shown[o_stretch[keep]] = o_rows[keep]
    p_shown = p_none.copy()
    p_shown[shown >= 0] = chance[shown[shown >= 0]]
    outcome = _per_row(result, "outcome")
    accepted = np.zeros(n_stretches)
    accepted[shown >= 0] = (outcome[shown[shown >= 0]] == "accepted").astype(float)
    logged = offers.merge(table.frame[_KEY].assign(row=np.arange(table.n)), on=_KEY, how="left")
    reproduced = set(shown[shown >= 0].tolist())
    mismatched = int((~logged["row"].isin(list(reproduced))).sum())
    return Feedback(spec, table, stretch_of_row, visitor, shown, p_shown, chance, p_none, accepted, mismatched)


def candidate_choices(fb: Feedback, spec: RuleSpec | str | dict, scorer: Any = None,
                      queue_status: Any = None) -> np.ndarray:
    """Per stretch of `fb`: the table row of the first offer (or would-be offer of a holdout visitor) of `spec`,
    -1 none."""
    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    if spec.policy.explore is not None:
        spec = without_exploration(spec)
    result = backtest(spec, fb.table.frame.drop(columns=list(ANSWER_COLUMNS), errors="ignore"), scorer,
                      queue_status=queue_status)
    rows = result.offer_rows  # the candidate's own table is built in the same time order
    choice = np.full(fb.n, NO_OFFER, dtype=np.int64)
    stretch = fb.stretch[rows]
    known = stretch >= 0
    choice[stretch[known][::-1]] = rows[known][::-1]  # the earliest offer of each stretch is written last
    return choice


def model_q(fb: Feedback, scorer: Any, spec: RuleSpec, choice: np.ndarray) -> np.ndarray:
    """The model's P(accept) of each unit's choice (0 for no offer); :mod:`.partitioned` uses it too."""
    q = np.zeros(fb.n)
    at = choice >= 0
    if at.any():
        q[at] = scores_for(fb.table, spec, scorer, choice[at], False)[choice[at]]
    return q


def estimate(fb: Feedback, spec: RuleSpec | str | dict, scorer: Any = None, *, reward: np.ndarray | None = None,
             n_boot: int = 500, seed: int = 0, queue_status: Any = None, level: float = 0.95) -> OffPolicyReport:
    """The expected accepted chats of `spec` (or, with `reward` per stretch, e.g. :meth:`Feedback.goals`, that
    reward) over the logged stretches, estimated from the log; DR and DM with `scorer` (accepts only)."""
    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    choice = candidate_choices(fb, spec, scorer, queue_status)
    p_choice = np.where(choice >= 0, fb.chance[np.maximum(choice, 0)], fb.p_none)
    r = fb.accepted if reward is None else np.asarray(reward, dtype=float)
    q_cand = q_logged = None
    if scorer is not None and reward is None:
        q_cand, q_logged = model_q(fb, scorer, spec, choice), model_q(fb, scorer, spec, fb.shown)
    return evaluate(fb.shown, fb.p_shown, r, choice, p_choice, q_logged=q_logged, q_candidate=q_cand,
                    cluster=fb.visitor, n_boot=n_boot, seed=seed, level=level,
                    total_units=fb.n * (1.0 - spec.policy.holdout))


def uplift(fb: Feedback, spec: RuleSpec | str | dict, goals: np.ndarray, *, n_boot: int = 500, seed: int = 0,
           queue_status: Any = None, level: float = 0.95) -> Difference:
    """The extra goals `spec` causes over never offering (per stretch `goals`, e.g. :meth:`Feedback.goals`):
    both estimated from the log on the same resamples; the holdout's stretches are the data for "never"."""
    spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
    candidate = estimate(fb, spec, reward=goals, n_boot=n_boot, seed=seed, queue_status=queue_status, level=level)
    never = np.full(fb.n, NO_OFFER, dtype=np.int64)
    base = evaluate(fb.shown, fb.p_shown, np.asarray(goals, dtype=float), never, fb.p_none, cluster=fb.visitor,
                    n_boot=n_boot, seed=seed, level=level, total_units=fb.n * (1.0 - spec.policy.holdout))
    return difference(candidate, base)


def versus(fb: Feedback, candidate: RuleSpec | str | dict, current: RuleSpec | str | dict, scorer: Any = None, *,
           n_boot: int = 500, seed: int = 0, queue_status: Any = None, level: float = 0.95,
           ) -> tuple[OffPolicyReport, OffPolicyReport, Difference]:
    """(candidate's report, current's report, candidate - current on the same resamples): the guardrail's input."""
    a = estimate(fb, candidate, scorer, n_boot=n_boot, seed=seed, queue_status=queue_status, level=level)
    b = estimate(fb, current, scorer, n_boot=n_boot, seed=seed, queue_status=queue_status, level=level)
    return a, b, difference(a, b)
