"""Backtest speed against the runtime replay, measured in one run on the same generated events.

    python benchmarks/bench_backtest.py                 # ~1M events (a world of ~100k sessions)
    python benchmarks/bench_backtest.py --visitors 20000 --replay-visitors 2000
    python benchmarks/bench_backtest.py --peak-10m      # also peak memory of a backtest over ~10M events
    python benchmarks/bench_backtest.py --decision-quality 20000   # tuned vs fixed-wait policies on a world
    python benchmarks/bench_backtest.py --uplift 20000  # expected-value tuning for accepts vs for uplift

Prints: backtest events/s end to end (from the events DataFrame to decisions and
figures; first run and best of the rest), with a prepared ``EventTable`` (what
tuning re-runs cost), the ``policy`` engine (the runtime's pure core row by
row), the runtime replay's events/s on a subset of visitors (whole sessions;
its rate is extrapolated to all events) and the ratio. The spec is the default
ruleset plus score conditions, served with a trained model, as from a bundle.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pcrules import Runtime, load_spec  # noqa: E402
from pcrules.backtest import EventTable, backtest  # noqa: E402
from pcrules.cli import DEFAULT_RULES  # noqa: E402
from pcrules.replay import replay  # noqa: E402
from pcrules.world import generate  # noqa: E402


def bench_spec() -> object:
    """The default ruleset, with score conditions on two of its rules (so the model is used)."""
    source = dict(load_spec(DEFAULT_RULES).source)
    rules = [dict(r) for r in source["rules"]]
    rules[0]["when"] = {**rules[0]["when"], "score": {"gte": 0.1}}
    rules[3]["when"] = {**rules[3]["when"], "score": {"gte": 0.05}}
    source["rules"] = rules
    source["name"] = "bench"
    return load_spec(source)


def train_scorer(seed: int = 99) -> object:
    from pcrules.scoring import AcceptanceModel

    train = generate(visitors=5000, seed=seed).events
    model = AcceptanceModel().fit(train.drop(columns=["response", "response_delay_s"]),
                                  (train["response"] == "accept").to_numpy())
    return model.compile()


def replay_rows(events: pd.DataFrame):
    table = EventTable(events)
    code, delay = table.answers()
    for i, event in enumerate(table.raw_events(np.arange(table.n))):
        d = float(delay[i])
        yield {"event": event, "response": {1: "accept", 2: "decline"}.get(int(code[i])),
               "response_delay_s": None if d != d else d}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_child(visitors: int, seed: int) -> None:
    """In a fresh process: load ~10M events from Parquet, run one backtest, report RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        generate(visitors=visitors, seed=seed).write(tmp)
        print(f"  generated and wrote {visitors:,} visitors in {time.perf_counter() - started:.1f} s", flush=True)
        code = (
            "import sys, time, resource, pandas as pd\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
            "from bench_backtest import bench_spec, train_scorer, rss_mb\n"
            "from pcrules.backtest import backtest\n"
            "spec, scorer = bench_spec(), train_scorer()\n"
            f"events = pd.read_parquet({tmp!r} + '/events.parquet')\n"
            "loaded = rss_mb()\n"
            "t = time.perf_counter(); r = backtest(spec, events, scorer); s = time.perf_counter() - t\n"
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
            "print(f'  {len(events):,} events: backtest {s:.2f} s ({len(events)/s:,.0f} events/s); '\n"
            "      f'RSS with the events loaded {loaded:,.0f} MB, peak {peak:,.0f} MB '\n"
            "      f'(the backtest adds {peak - loaded:,.0f} MB); offers {r.metrics[\"offers\"]:,}')\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)


def decision_quality(visitors: int, seed: int) -> None:
    """Tuned (wait + score per rule) against fixed-wait policies on a generated world, measured by the truth."""
    from pcrules.decision_value import Economics, compare_with_fixed_wait, per_page_spec, world_truth

    scorer = train_scorer(seed + 100)  # trained on another world than the one it is judged on
    world = generate(visitors=visitors, seed=seed)
    truth, oracle = world_truth(world), world_truth(world, oracle=True)
    table = EventTable(world.events)
    spec = per_page_spec()
    print(f"world: {visitors:,} visitors, {len(world.events):,} events; one rule per page ({len(spec.rules)} rules), "
          f"queues {', '.join(f'{q} {v.capacity_per_hour:g}/h' for q, v in spec.queues.items())}")
    started = time.perf_counter()
    comparison = compare_with_fixed_wait(spec, table, scorer, truth, oracle=oracle, economics=Economics(1.0, 0.03))
    print(f"(tuned {len(comparison.frontier)} policies in {time.perf_counter() - started:.0f} s)")
    print(comparison.summary())
    print("frontier (offers, expected accepts by the model and by the truth):")
    print(comparison.frontier.to_string(index=False, float_format=lambda x: f"{x:,.2f}"))
    for key, tuned in comparison.best.items():
        print(f"best {key}:")
        print(tuned.table().to_string(float_format=lambda x: f"{x:,.3f}"))


def uplift_objectives(visitors: int, seed: int) -> None:
    """``decision_value.tune`` for expected accepts and for expected uplift (extra goals) on a generated world, with
    three kinds of P(accept): the model (trained on another world), a perfect model (the truth given what the
    runtime sees) and the truth (with the latent needs_help). Each choice is judged by the world: the backtest's
    true expected uplift, the world's own true ITT (``world.true_uplift``) and the goals the world draws."""
    from pcrules.decision_value import Economics, per_page_spec, tune, world_truth
    from pcrules.world import draw_goals, event_effects, true_uplift

    scorer = train_scorer(seed + 100)
    world = generate(visitors=visitors, seed=seed)
    effects = event_effects(world)
    truth, oracle = effects["p_accept"].to_numpy(), world_truth(world, oracle=True)
    table = EventTable(world.events)
    spec = per_page_spec()
    waits = [0, 15, 30, 60, 90, 120, 180, 300, 600]
    print(f"world: {visitors:,} visitors, {len(world.events):,} events; one rule per page ({len(spec.rules)} rules); "
          f"accepts: value 1 per accepted chat, cost 0.03 per offer; uplift: expected extra goals")
    without = len(draw_goals(world, world.offers.iloc[:0]))
    header = (f"{'P(accept)':<10} {'objective':<9} {'offers':>7} {'true acc.':>9} {'exp. uplift':>11} "
              f"{'true uplift':>11} {'ITT (bt)':>9} {'ITT (world)':>11} {'world extra':>11} {'realised':>9} "
              f"{'± sd':>6} {'s':>5}")
    print(header)
    for kind, probability in (("model", scorer), ("perfect", oracle), ("truth", truth)):
        for objective, economics in (("accepts", Economics(1.0, 0.03)), ("uplift", Economics())):
            started = time.perf_counter()
            tuned = tune(spec, table, probability, economics=economics, truth=truth, effects=effects,
                         objective=objective, waits=waits)
            seconds = time.perf_counter() - started
            m, offers = tuned.result.metrics, tuned.result.offers
            true = true_uplift(world, offers, answers="expected")
            real = offers[~offers["holdout"]]
            p, g, lo = (real[c].to_numpy() for c in ("truth", "gain_if_accepted", "loss_if_not_accepted"))
            sd = float(np.sqrt(np.sum(p * g + (1 - p) * lo - (p * g - (1 - p) * lo) ** 2)))
            realised = len(draw_goals(world, offers)) - without
            print(f"{kind:<10} {objective:<9} {m['offers']:>7,} {m['true_expected_accepts']:>9,.1f} "
                  f"{m['expected_uplift']:>+11,.1f} {m['true_expected_uplift']:>+11,.1f} "
                  f"{100 * m['true_expected_uplift_itt']:>+8.3f}% {100 * true.itt:>+10.3f}% "
                  f"{true.itt * true.n_visitors:>+11,.1f} {realised:>+9,} {sd:>6.1f} {seconds:>5.1f}")
    print("exp. uplift: extra goals by the P(accept) the search used; true uplift: by the true P(accept) (both the\n"
          "backtest's, sum over offers); ITT: per eligible visitor, the backtest's (first offers) and the world's "
          "exact\none; world extra: the world's extra converting visitors (ITT x eligible); realised: goals the "
          "world draws\nwith the offers minus without (common random numbers), whose sd is given.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=70_000, help="world size (default 70000: ~100k sessions)")
    parser.add_argument("--replay-visitors", type=int, default=4_000,
                        help="visitors replayed through the runtime (whole sessions; default 4000)")
    parser.add_argument("--repeat", type=int, default=3, help="backtest runs after the first (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--peak-10m", action="store_true", help="also measure peak memory for ~10M events")
    parser.add_argument("--decision-quality", type=int, metavar="VISITORS",
                        help="only compare tuned and fixed-wait policies on a world of this many visitors")
    parser.add_argument("--uplift", type=int, metavar="VISITORS",
                        help="only compare tuning for accepts and for uplift on a world of this many visitors")
    args = parser.parse_args()
    if args.decision_quality:
        decision_quality(args.decision_quality, args.seed)
        return
    if args.uplift:
        uplift_objectives(args.uplift, args.seed)
        return

    spec, scorer = bench_spec(), train_scorer()
    t = time.perf_counter()
    world = generate(visitors=args.visitors, seed=args.seed)
    events = world.events
    n = len(events)
    print(f"world: {args.visitors:,} visitors, {events['session_id'].nunique():,} sessions, {n:,} events "
          f"(generated in {time.perf_counter() - t:.1f} s); ruleset {spec.name!r}, {len(spec.rules)} rules, "
          f"model {type(scorer).__name__}")

    first = backtest(spec, events, scorer)
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        result = backtest(spec, events, scorer)
        times.append(time.perf_counter() - t)
    best = min(times)
    print(f"backtest (fast, end to end)   first {first.seconds:6.3f} s  best {best:6.3f} s  "
          f"-> {n / best:>12,.0f} events/s   offers {result.metrics['offers']:,}")
    table = EventTable(events)
    backtest(spec, table, scorer)
    t = time.perf_counter()
    backtest(spec, table, scorer)
    warm = time.perf_counter() - t
    print(f"backtest (prepared table)           {warm:6.3f} s  -> {n / warm:>12,.0f} events/s   (tuning re-runs)")
    t = time.perf_counter()
    policy = backtest(spec, table, scorer, engine="policy")
    pol = time.perf_counter() - t
    assert policy.metrics["offers"] == result.metrics["offers"]
    print(f"backtest (policy engine)            {pol:6.3f} s  -> {n / pol:>12,.0f} events/s   "
          f"(policy.decide on every candidate row)")

    keep = [f"v{i:0{max(6, len(str(args.visitors - 1)))}d}" for i in range(min(args.replay_visitors, args.visitors))]
    subset = events[events["visitor_id"].isin(keep)].reset_index(drop=True)
    runtime = Runtime(spec, scorer=scorer, clock=lambda: 0.0)
    t = time.perf_counter()
    summary = replay(runtime, replay_rows(subset))
    rt = time.perf_counter() - t
    runtime.close()
    rate = len(subset) / rt
    check = backtest(spec, subset, scorer)
    same = check.metrics["offers"] == summary.offers
    print(f"runtime replay (Runtime.observe) {len(subset):,} events in {rt:6.2f} s -> {rate:>12,.0f} events/s   "
          f"(extrapolated to {n:,} events: {n / rate:,.1f} s; offers {summary.offers:,}, backtest agrees: {same})")
    print(f"speed-up: {rate and (n / best) / rate:,.1f}x end to end, {(n / warm) / rate:,.1f}x with a prepared table "
          f"(target >= 50x; backtest target >= 1,000,000 events/s: {'met' if n / best >= 1e6 else 'not met'})")
    print(f"peak RSS of this process so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    if args.peak_10m:
        print("peak memory for ~10M events (fresh process):")
        peak_child(args.visitors * 10, args.seed + 1)


if __name__ == "__main__":
    main()
