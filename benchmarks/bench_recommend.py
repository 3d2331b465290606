"""Are the tuned triggers better than what an analyst would set by hand? At equal offer volume, out of sample.

    python benchmarks/bench_recommend.py                        # world pairs 202->303 and 404->505, 50,000 visitors
    python benchmarks/bench_recommend.py --visitors 10000       # quicker
    python benchmarks/bench_recommend.py --pairs 202:303 --budgets 0.08 0.17
    python benchmarks/bench_recommend.py --history legacy       # the legacy rules without exploration

For each pair (A, B) of generated worlds (seeds the tests never use): a model is trained on world A's history
(``pcrules.training.train_on_offers``), and at each budget (a share of A's sessions: ~8, 17 and 25 %) four
families of policies are tuned on A by the same objective, with the same budget
(``decision_value.compare_at_budgets``):

* one wait for every page (Pega's single App Studio wait time), no score, chosen by the model;
* a wait per page, no score, chosen by the model;
* a wait per page, no score, chosen by the true P(accept) given the event: the best a wait-only ruleset does;
* pcrules tuned: a wait and a score threshold per page (the model's P(accept));
* the limit: tuned on the true P(accept) given the event (a perfect model).

Each chosen ruleset is then run by the exact backtest on world B and judged by B's ground truth. The tables
print each family's true expected accepts (and offers on B, to show the volumes are equal) and the ratios
tuned / one wait (read on B's one-wait frontier at the tuned policy's offers), tuned / per-page wait (by the
model, and by the true P) and tuned / limit. The same for uplift (extra goals): the model's families are
tuned on effects estimated from A's log (per page, holdout comparisons, ``decision_value.effects_from_log``),
the true-P families on the world's latent per-event effects (``pcrules.world.event_effects``: an oracle, only
here); all judged by B's true effects. The issue's targets: >= 1.0x the per-page wait at every budget, >= 0.95x
the limit, >= 1.5x one wait at the 8 % budget.

Where the history comes from is a function ``world -> History`` (``--history``, or ``run(history=...)``;
add an entry to ``HISTORIES`` for another): ``world`` (default) is the world's own history as generated
today, ``world.offers``: the legacy ruleset's offers (``pcrules.world.legacy_spec``: a wait per page, a 10 %
holdout) with some sessions exploring random waits; ``legacy`` the same ruleset without exploration (offers
only at its waits). The effects' log is that ruleset's decisions, the holdout's would-be offers included, and
the goals the world then reports (``pcrules.world.draw_goals``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from pcrules.backtest import EventTable, backtest
from pcrules.decision_value import FAMILIES, compare_at_budgets, effects_from_log, per_page_spec, world_truth
from pcrules.world import draw_goals, event_effects, generate

PAIRS = ((202, 303), (404, 505))  # (train, judge): seeds no test uses
BUDGETS = (0.08, 0.17, 0.25)


@dataclass
class History:
    """What an analyst has of a world: offers to train the model on, and a log with a holdout for the effects."""

    offers: pd.DataFrame  # the offers shown, with their answers (train_on_offers' input)
    decisions: pd.DataFrame  # offers and holdout would-be offers, with answers (effects_from_log's input)
    goals: pd.DataFrame  # visitor_id, session_id, goal, ts: what record_goal logged
    description: str


def _logged(world: Any, explore: float, offers: pd.DataFrame | None = None) -> History:
    """The log of the world's legacy ruleset (``pcrules.world.legacy_spec``: a wait per page, a holdout) with
    `explore` of the sessions exploring random waits: its offers (`offers` when given: the world's own), its
    decisions with the holdout's would-be offers, and the goals the world then reports."""
    from pcrules import load_spec
    from pcrules.world import legacy_spec, logged_offers

    spec = load_spec(legacy_spec(explore=explore))
    log = backtest(spec, world.events)
    shown = offers if offers is not None else logged_offers(world.events, spec)
    held = int(log.offers["holdout"].sum())
    return History(shown, log.offers, draw_goals(world, log.offers),
                   f"{len(shown):,} offers to train on; effects from {len(log.offers) - held:,} offers and {held:,} "
                   f"holdout would-be offers of the legacy ruleset ({spec.policy.holdout:.0%} holdout, "
                   f"{explore:.0%} of sessions exploring)")


def world_history(world: Any) -> History:
    """The world's own history, as generated today: ``world.offers`` (the legacy ruleset's offers, some sessions
    exploring random waits, each offer with its propensity) and the same ruleset's log with its holdout."""
    from pcrules.world import LEGACY_EXPLORE

    history = _logged(world, LEGACY_EXPLORE, world.offers)
    history.description = "world: " + history.description
    return history


def legacy_history(world: Any) -> History:
    """The legacy ruleset without exploration: offers only at its fixed waits (the issue's starting point)."""
    history = _logged(world, 0.0)
    history.description = "legacy: " + history.description
    return history


# Where the model's offers and the effects' log come from: add an entry to compare another history.
HISTORIES: dict[str, Callable[[Any], History]] = {"world": world_history, "legacy": legacy_history}


def run(pairs: Sequence[tuple[int, int]] = PAIRS, visitors: int = 50_000, budgets: Sequence[float] = BUDGETS,
        history: Callable[[Any], History] | None = None, uplift: bool = True) -> pd.DataFrame:
    """The comparison for every pair; one row per (pair, objective, budget, family)."""
    from pcrules.training import train_on_offers

    history = history if history is not None else world_history
    spec = per_page_spec()
    frames = []
    for seed_a, seed_b in pairs:
        started = time.perf_counter()
        a, b = generate(visitors=visitors, seed=seed_a, progress=True), generate(visitors=visitors, seed=seed_b,
                                                                                 progress=True)
        hist = history(a)
        scorer = train_on_offers(hist.offers).model.compile()
        table_a, table_b = EventTable(a.events), EventTable(b.events)
        oracle_a, oracle_b = world_truth(a, oracle=True), world_truth(b, oracle=True)
        print(f"\nworlds {seed_a} -> {seed_b}: {visitors:,} visitors each, {len(a.events):,} / {len(b.events):,} "
              f"events; {hist.description}")
        kinds: list[tuple[str, dict[str, Any]]] = [("accepts", {})]
        if uplift:
            effects = effects_from_log(hist.decisions, hist.goals)
            print(effects.summary())
            kinds.append(("uplift", {"effects_train": effects, "effects_judge": event_effects(b),
                                     "limit_effects_train": event_effects(a)}))
        for objective, extra in kinds:
            frame = compare_at_budgets(spec, table_a, table_b, scorer, world_truth(b), budgets,
                                       oracle_train=oracle_a, oracle_judge=oracle_b, objective=objective,
                                       progress=True, **extra)
            frame.insert(0, "objective", objective)
            frame.insert(0, "pair", f"{seed_a}->{seed_b}")
            frames.append(frame)
            print(table(frame, objective))
        print(f"({time.perf_counter() - started:.0f} s)")
    return pd.concat(frames, ignore_index=True)


LABELS = {"global_wait": "one wait", "per_page_wait": "per page (model)", "per_page_wait_true": "per page (true P)",
          "tuned": "tuned (model)", "limit": "limit (true P)"}
RATIOS = (("ratio_to_global", "/one wait"), ("ratio_to_per_page", "/per page"),
          ("ratio_to_best_per_page", "/per page (true P)"), ("ratio_to_limit", "/limit"))


def table(frame: pd.DataFrame, objective: str) -> str:
    """One line per budget: the objective by the judging world's truth and the offers there, per family; then
    tuned's ratios."""
    unit = "true expected accepts" if objective == "accepts" else "true expected extra goals"
    fam = [f for f in FAMILIES if f in set(frame["family"])]
    fmt = "{:,.1f}" if objective == "accepts" else "{:+,.2f}"
    head = (f"{'budget':>6} | " + " | ".join(f"{LABELS[f]:>18}" for f in fam) + " | tuned "
            + " ".join(f"{label:>9}" for _, label in RATIOS))
    lines = [f"{objective}: {unit} on the judging world (offers there)", head, "-" * len(head)]
    for budget, rows in frame.groupby("budget", sort=True):
        by = rows.set_index("family")
        cells = [f"{fmt.format(by.loc[f, 'true_value'])} ({int(by.loc[f, 'offers']):,})" for f in fam]
        lines.append(f"{budget:>6.0%} | " + " | ".join(f"{c:>18}" for c in cells) + " |       "
                     + " ".join(f"{_x(by.loc['tuned', column]):>{len(label)}}" for column, label in RATIOS))
    return "\n".join(lines)


def _x(ratio: Any) -> str:
    return "-" if ratio is None or (isinstance(ratio, float) and not np.isfinite(ratio)) else f"{ratio:.2f}x"


def verdict(frame: pd.DataFrame) -> str:
    """The issue's targets, over every pair: tuned >= 1.0x per-page wait, >= 0.95x the limit, >= 1.5x one wait
    at the smallest budget."""
    lines = ["targets (over every pair; min .. max of tuned's ratios):"]
    for objective, part in frame[frame["family"] == "tuned"].groupby("objective", sort=False):
        for budget, rows in part.groupby("budget", sort=True):
            cells = []
            for column, target, label in (("ratio_to_per_page", 1.0, "per page"),
                                          ("ratio_to_best_per_page", 1.0, "per page (true P)"),
                                          ("ratio_to_limit", 0.95, "limit"),
                                          ("ratio_to_global", 1.5 if budget == part["budget"].min() else None,
                                           "one wait")):
                values = pd.to_numeric(rows[column], errors="coerce").dropna()
                if not len(values):
                    continue
                met = "" if target is None else (" ok" if values.min() >= target else f" (< {target:g}x)")
                cells.append(f"{label} {values.min():.3f}..{values.max():.3f}x{met}")
            lines.append(f"  {objective:<8} {budget:>4.0%}: " + "; ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=50_000, help="visitors per world (default 50000)")
    parser.add_argument("--pairs", nargs="+", default=[f"{a}:{b}" for a, b in PAIRS],
                        help="train:judge world seeds (default 202:303 404:505)")
    parser.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS),
                        help="shares of the training world's sessions (default 0.08 0.17 0.25)")
    parser.add_argument("--history", choices=sorted(HISTORIES), default="world",
                        help="where the model's offers and the effects' log come from: world (the world's own "
                             "history: the legacy rules, some sessions exploring; default) or legacy (no exploring)")
    parser.add_argument("--no-uplift", action="store_true", help="only the accepts objective")
    parser.add_argument("--csv", type=Path, help="also write every row to this CSV file")
    args = parser.parse_args()
    pairs = [(int(p.split(":")[0]), int(p.split(":")[1])) for p in args.pairs]
    started = time.perf_counter()
    frame = run(pairs, args.visitors, args.budgets, HISTORIES[args.history], not args.no_uplift)
    print()
    print(verdict(frame))
    print(f"history: {args.history}; {time.perf_counter() - started:.0f} s in all")
    if args.csv:
        frame.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
