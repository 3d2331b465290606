"""The trigger tuner's per-change latency on ~100k sessions (~1M observation events).

    python benchmarks/bench_tuner.py                    # a world of 70,000 visitors: ~100k sessions, ~1M events
    python benchmarks/bench_tuner.py --visitors 20000 --moves 40
    python benchmarks/bench_tuner.py --verify 3         # also prove 3 of the settings equal to a full backtest
    python benchmarks/bench_tuner.py --uplift           # with the world's truth and effects: expected uplift too

A person moving sliders: a seeded sequence of single-knob changes (a rule's wait, its score threshold, a rule
on/off, a queue's capacity) on the default ruleset served with a trained model, as from a bundle. Prints

* the preparation (once per history: bases, candidate rows, scores),
* per change, ``TriggerModel.evaluate`` (the figures: the exact backtest of the tuned ruleset) and the whole
  widget refresh (figures, results panel and the queue chart as a PNG): p50, p95 and max, wall clock and
  this process's CPU time (on a shared machine wall clock includes waiting for a core),
* one full ``backtest()`` of the same ruleset on a prepared EventTable, for comparison.

The issue's bar is 150 ms per change.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from pcrules.backtest import EventTable, backtest
from pcrules.tuning import TriggerModel, Tuner
from pcrules.world import generate

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "pcrules" / "default_rules.yaml"
WAITS = (0, 15, 30, 45, 60, 90, 120, 150, 180, 240, 300, 420, 600)


def moves(model: TriggerModel, n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rule = model.rule_names[int(rng.integers(len(model.rule_names)))]
        kind = rng.choice(["wait", "wait", "threshold", "on", "capacity"])
        if kind == "wait":
            out.append((rule, "wait", float(rng.choice(WAITS))))
        elif kind == "threshold":
            out.append((rule, "threshold", float(rng.choice([0.0, 0.02, 0.04, 0.06, 0.08, 0.12]))))
        elif kind == "on":
            out.append((rule, "on", bool(rng.random() < 0.7)))
        else:
            q = model.queue_names[int(rng.integers(len(model.queue_names)))]
            out.append((q, "capacity", str(int(rng.integers(5, 120)))))
    return out


def stats(values: list[float]) -> str:
    a = np.asarray(values) * 1000.0
    return f"p50 {np.median(a):6.1f} ms   p95 {np.percentile(a, 95):6.1f} ms   max {a.max():6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=70_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--moves", type=int, default=60)
    parser.add_argument("--verify", type=int, default=0, help="check this many settings against backtest()")
    parser.add_argument("--uplift", action="store_true",
                        help="give the tuner the world's truth and per-event effects (expected uplift figures)")
    args = parser.parse_args()

    from pcrules.training import train_on_offers

    t = time.perf_counter()
    world = generate(visitors=args.visitors, seed=args.seed)
    scorer = train_on_offers(world.offers).model.compile()
    table = EventTable(world.events)
    print(f"world: {len(world.events):,} events, {world.events['session_id'].nunique():,} sessions, "
          f"{args.visitors:,} visitors; model trained on {len(world.offers):,} offers "
          f"({time.perf_counter() - t:.1f} s)")

    truth = effects = None
    if args.uplift:
        from pcrules.world import event_effects

        t = time.perf_counter()
        effects = event_effects(world)
        truth = effects["p_accept"].to_numpy()
        print(f"world.event_effects: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    model = TriggerModel(DEFAULT_RULES, table, scorer, truth=truth, effects=effects)
    print(f"preparation (once per history): {time.perf_counter() - t:.2f} s; {model.m:,} candidate rows "
          f"of {model.valid_events:,} ({model.m / max(model.valid_events, 1):.0%})"
          + ("; with truth and effects (expected uplift)" if args.uplift else ""))

    # the figures alone, and the whole widget refresh, over the same sequence of changes
    tuner = Tuner(model.spec, table, scorer, model=model)
    sequence = moves(model, args.moves, args.seed)
    eval_wall, eval_cpu, refresh_wall, refresh_cpu = [], [], [], []
    checked = []
    offers: list[int] = []
    for target, kind, value in sequence:
        widget = tuner.capacity[target] if kind == "capacity" else tuner.controls[target][kind]
        if widget.value == value:
            continue  # not a change: the widget would not even call the tuner
        w0, c0 = time.perf_counter(), time.process_time()
        widget.value = value  # what a slider move from the browser does: the observer recomputes and redraws
        refresh_wall.append(time.perf_counter() - w0)
        refresh_cpu.append(time.process_time() - c0)
        settings = tuner.read_settings()
        w0, c0 = time.perf_counter(), time.process_time()
        result = model.evaluate(settings)
        offers.append(result.metrics["offers"])
        eval_wall.append(time.perf_counter() - w0)
        eval_cpu.append(time.process_time() - c0)
        if len(checked) < args.verify and (len(refresh_wall) - 1) % max(1, args.moves // max(2 * args.verify, 1)) == 0:
            ref = backtest(model.spec_for(settings), table, scorer, truth=truth, effects=effects)
            same = all(result.metrics[k] == ref.metrics[k] for k in ("offers", "holdout", "accepted", "declined",
                                                                      "expired", "actions", "reasons"))
            same = same and all(result.metrics[k] == ref.metrics[k] or abs(result.metrics[k] - ref.metrics[k]) <= 1e-9
                                * max(1.0, abs(ref.metrics[k])) for k in ("expected_uplift", "true_expected_uplift")
                                if ref.metrics[k] is not None)
            checked.append(same)
    print(f"changes: {len(refresh_wall)} single-knob moves (wait, threshold, on/off, capacity); offers went from "
          f"{min(offers):,} to {max(offers):,}")
    if args.uplift:
        m = model.evaluate(tuner.read_settings()).metrics
        print(f"last setting: expected uplift {m['expected_uplift']:+,.1f} extra goals (model's P(accept)), "
              f"{m['true_expected_uplift']:+,.1f} (true P(accept))")
    print(f"TriggerModel.evaluate   wall {stats(eval_wall)}")
    print(f"                        cpu  {stats(eval_cpu)}")
    print(f"widget refresh (all)    wall {stats(refresh_wall)}")
    print(f"                        cpu  {stats(refresh_cpu)}")
    over = sum(x > 0.150 for x in refresh_wall)
    print(f"changes over 150 ms (whole refresh, wall clock): {over} of {len(refresh_wall)}; full chart draws "
          f"(first sight of a y scale): {tuner.chart_draws}")
    settings = tuner.read_settings()
    table_runs = []
    for _ in range(2):
        t = time.perf_counter()
        backtest(model.spec_for(settings), table, scorer, truth=truth, effects=effects)
        table_runs.append(time.perf_counter() - t)
    print(f"one full backtest() of the same ruleset (prepared EventTable): {min(table_runs) * 1000:.0f} ms")
    if checked:
        print(f"verified against backtest(): {sum(checked)} of {len(checked)} settings equal on every count")


if __name__ == "__main__":
    main()
