"""Runtime cost against a bare durable_rules post(), measured in one run; and memory over many visitors.

    python benchmarks/bench_runtime.py [--events 50000] [--visitors 100000 1000000]

Prints events/s of (a) durable_rules' own ``Host.post()`` of the same events
against the same rules (one shared sid, no-op actions: the engine's floor as
its users meet it) and (b) ``Runtime.observe()`` with validation, state, a
scorer and the SQLite decision log on; the ratio; observe's p50/p99 latency;
then peak RSS after 100k and 1M distinct visitors through one runtime.
"""

from __future__ import annotations

import argparse
import copy
import gc
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from durable import engine as durable_engine  # noqa: E402

import pcrules  # noqa: E402
from pcrules.matching.durable import KIND, compile_ruleset, fact_fields  # noqa: E402
from pcrules.scoring import LinearScorer  # noqa: E402

SPEC = {
    "name": "bench",
    "policy": {"max_offers_per_session": 1, "offer_timeout_s": 60, "holdout": 0.1, "session_idle_ttl_s": 1800},
    "queues": {"Billing": {"max_wait_s": 180}, "Sales": {"max_wait_s": 120}, "Support": {}},
    "rules": [
        {"name": "checkout", "priority": 30, "when": {"page": "Checkout", "seconds_on_page": {"gte": 90}},
         "offer": {"queue": "Sales", "metadata": {"Page Name": "{page}", "Time spent on page": "{minutes} mins"}}},
        {"name": "bill", "priority": 20,
         "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 150}, "score": {"gte": 0.05}},
         "offer": {"queue": "Billing", "metadata": {"Page Name": "{page}", "Time spent on page": "{minutes} mins"}}},
        {"name": "plans", "priority": 10,
         "when": {"page": {"in": ["Plans", "Roaming"]}, "seconds_on_page": {"gte": 180}, "pages_viewed": {"gte": 3}},
         "offer": {"queue": "Sales", "metadata": {"Page Name": "{page}"}}},
        {"name": "help", "priority": 5,
         "when": {"page": {"in": ["Support", "FAQ", "Contact"]}, "seconds_on_page": {"gte": 120}},
         "offer": {"queue": "Support", "metadata": {"Page Name": "{page}"}}},
    ],
}
SCORER = LinearScorer(-3.0, numeric={"seconds_on_page": 0.25, "pages_viewed": 0.2},
                      categorical={"page": {"Bill Payment": 0.6, "Checkout": 0.8}, "device": {"mobile": -0.3}},
                      flags={"returning": 0.5})
PAGES = ["Home", "Plans", "Roaming", "Bill Payment", "Checkout", "Account", "FAQ", "Support", "Contact"]


def make_events(n: int, visitors: int, seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        v = rnd.randrange(visitors)
        out.append({"visitor_id": f"visitor-{v}", "session_id": f"s-{v}-{i // 5000}", "page": rnd.choice(PAGES),
                    "seconds_on_page": rnd.choice([0, 15, 30, 60, 90, 120, 150, 180, 240, 300]),
                    "pages_viewed": rnd.randint(1, 10), "device": rnd.choice(["desktop", "mobile"]),
                    "returning": rnd.random() < 0.3, "ts": 1764064800 + i * 0.05})
    return out


def _bare_host(spec: pcrules.RuleSpec, name: str) -> durable_engine.Host:
    """durable_rules' own Host with the spec's rules as written (no policy variants) and no-op actions."""
    rules = {k: v for k, v in compile_ruleset(spec).items() if k.startswith("f")}

    class Host(durable_engine.Host):
        def get_action(self, name):
            return lambda c: None

    host = Host()
    for rule in rules.values():
        rule["run"] = "noop"
    host.register_rulesets({name: copy.deepcopy(rules)})
    return host


def _bare_payload(spec: pcrules.RuleSpec, ev: dict, i: int) -> dict:
    view = fact_fields(spec, {**ev, "seconds_on_page": float(ev["seconds_on_page"])}, SCORER.predict_proba_one(ev))
    return {**view, KIND: "pv", "sid": "0", "id": i}


def bare_post_rate(spec: pcrules.RuleSpec, events: list[dict]) -> float:
    """durable_rules' Host.post() of the same events against the spec's rules as written (no policy variants)."""
    host = _bare_host(spec, "bare")
    payloads = [_bare_payload(spec, ev, i) for i, ev in enumerate(events)]
    started = time.perf_counter()
    for payload in payloads:
        try:
            host.post("bare", payload)
        except durable_engine.MessageNotHandledException:
            pass
    return len(payloads) / (time.perf_counter() - started)


def observe_rate(spec: pcrules.RuleSpec, events: list[dict], log_path: Path) -> tuple[float, list[float]]:
    runtime = pcrules.Runtime(spec, scorer=SCORER, log=pcrules.SQLiteDecisionLog(log_path))
    latencies = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for ev in events:
        t0 = clock()
        runtime.observe(ev)
        latencies.append((clock() - t0) / 1000.0)
    rate = len(events) / (time.perf_counter() - started)
    runtime.close()
    return rate, latencies


def breakdown(spec: pcrules.RuleSpec, events: list[dict], log_path: Path) -> dict[str, float]:
    """Median microseconds of each stage of observe(), timed in context (stages are slower together than alone)."""
    from pcrules.events import validate_event

    runtime = pcrules.Runtime(spec, scorer=SCORER, log=pcrules.SQLiteDecisionLog(log_path))
    active_spec, matcher, scorer = runtime._active
    stages: dict[str, list[int]] = {"validate": [], "score": [], "match (durable_rules)": [],
                                    "decide + state": [], "log (journal append)": []}
    clock = time.perf_counter_ns
    for ev in events:
        t0 = clock()
        event = validate_event(ev, time.time)
        t1 = clock()
        score = runtime._score(active_spec, scorer, event)
        t2 = clock()
        matches = matcher.match(event.fields, score)
        t3 = clock()
        log, runtime._log = runtime._log, None
        with runtime._lock:
            decision = runtime._judge(active_spec, event, matches, score)
        runtime._log = log
        t4 = clock()
        log.record_decision(decision)
        t5 = clock()
        for name, took in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            stages[name].append(took)
    runtime.close()
    return {name: statistics.median(v) / 1000.0 for name, v in stages.items()}


def bare_post_latencies(spec: pcrules.RuleSpec, events: list[dict]) -> list[float]:
    host = _bare_host(spec, "bare_lat")
    out = []
    clock = time.perf_counter_ns
    for i, ev in enumerate(events):
        payload = _bare_payload(spec, ev, i)
        t0 = clock()
        try:
            host.post("bare_lat", payload)
        except durable_engine.MessageNotHandledException:
            pass
        out.append((clock() - t0) / 1000.0)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def many_visitors(spec: pcrules.RuleSpec, checkpoints: list[int], log_path: Path) -> None:
    runtime = pcrules.Runtime(spec, scorer=SCORER, log=pcrules.SQLiteDecisionLog(log_path))
    rnd = random.Random(3)
    started = time.perf_counter()
    done = 0
    for n in sorted(checkpoints):
        for v in range(done, n):
            # one visitor a second: with a 30-minute idle TTL about 1,800 sessions are live at any time
            ts = 1764064800 + v
            d = runtime.observe({"visitor_id": f"visitor-{v}", "session_id": "s1", "page": rnd.choice(PAGES),
                                 "seconds_on_page": 200, "pages_viewed": 4, "ts": ts})
            if d.action == "offer" and v % 3 == 0:
                runtime.decline(d.offer_id, ts=ts + 5)
        done = n
        gc.collect()
        store = runtime.store
        print(f"  {n:>9,} visitors: peak RSS {peak_rss_mb():7.1f} MB, live sessions {len(store):,}, "
              f"cooldowns remembered {store.visitors_remembered:,}, offers remembered {store.offers_remembered:,}, "
              f"{n / (time.perf_counter() - started):,.0f} visitors/s")
    runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--visitors", type=int, nargs="*", default=[100_000, 1_000_000])
    args = parser.parse_args()
    spec = pcrules.load_spec(SPEC)
    events = make_events(args.events, visitors=args.events // 4)
    with tempfile.TemporaryDirectory() as tmp:
        bare, observed, all_latencies = [], [], []
        for r in range(args.repeats):
            bare.append(bare_post_rate(spec, events))
            rate, latencies = observe_rate(spec, events, Path(tmp) / f"bench-{r}.sqlite")
            observed.append(rate)
            all_latencies += latencies
        b, o = statistics.median(bare), statistics.median(observed)
        q = statistics.quantiles(all_latencies, n=100)
        print(f"events: {len(events):,} x {args.repeats} repeats, {len(spec.rules)} rules, medians")
        print(f"  durable_rules Host.post() (bare):           {b:>10,.0f} events/s  ({1e6 / b:6.1f} us/event)")
        print(f"  Runtime.observe() (validate+state+score+log): {o:>8,.0f} events/s  ({1e6 / o:6.1f} us/event)")
        print(f"  cost ratio observe / bare post: {b / o:.2f}x   (target <= 3x)")
        print(f"  observe latency p50 {q[49]:.1f} us, p99 {q[98]:.1f} us, max {max(all_latencies):.1f} us   "
              f"(target p99 <= 1000 us)")
        bare_p50 = statistics.median(bare_post_latencies(spec, events))
        print(f"  bare post latency p50 {bare_p50:.1f} us; p50 ratio observe / bare post: {q[49] / bare_p50:.2f}x")
        parts = breakdown(spec, events, Path(tmp) / "breakdown.sqlite")
        print("  observe by stage (median us, in context): " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
        if args.visitors:
            print(f"many visitors (one event each, 1/s event time, idle TTL {spec.policy.session_idle_ttl_s:.0f} s, "
                  f"log on):")
            many_visitors(spec, args.visitors, Path(tmp) / "many.sqlite")


if __name__ == "__main__":
    main()
