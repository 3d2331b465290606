"""A history partitioned by visitor gives the in-memory figures (issue 19).

The backtest (metrics, by rule, per queue and hour, offers), the off-policy estimates (IPS, SNIPS, DR, DM with
their bootstrap intervals and diagnostics) and the uplift from the log, over a generated world written as
``part=NNN`` Parquet folders, equal the in-memory results: counts exactly, sums to float rounding. Every engine
(serial, a process pool, a Dask LocalCluster of 2 workers) gives the same result to the last bit; bad files and
rows are reported by file and row, never a crash.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pcrules import load_spec
from pcrules.analysis.backtest import backtest
from pcrules.analysis.feedback import estimate, feedback, uplift
from pcrules.analysis.partitioned import (
    backtest_partitioned,
    offpolicy_partitioned,
    partitions,
    read_partition,
    visitor_partition,
    write_partitioned,
)
from pcrules.world import draw_goals, event_effects, legacy_spec

EFFECTS = ("gain_if_accepted", "loss_if_not_accepted")


def same(a: Any, b: Any, path: str = "metrics") -> None:
    """Equal figures: ints and text exactly, floats to float rounding, recursively."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, f"{path}: {a!r} != {b!r}"
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), \
            f"{path}: {a!r} != {b!r}"
    else:
        assert a == b and type(a) is type(b), f"{path}: {a!r} != {b!r}"


def same_result(mem: Any, part: Any) -> None:
    same(mem.metrics, part.metrics)
    pd.testing.assert_frame_equal(mem.per_rule, part.per_rule, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(mem.queue_hours, part.queue_hours, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(mem.queue_load, part.queue_load, check_exact=False, rtol=1e-9)
    key = ["ts", "visitor_id", "session_id"]
    a = mem.offers.sort_values(key, kind="stable").reset_index(drop=True).drop(columns="offer_id")
    b = part.offers.sort_values(key, kind="stable").reset_index(drop=True).drop(columns="offer_id")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)
    assert part.offers["offer_id"].dropna().is_unique  # holdout would-be offers have none


def scoring_spec() -> dict:
    """The world's logging ruleset (exploration, holdout) with a score condition on one rule."""
    source = legacy_spec()
    rules = [dict(r) for r in source["rules"]]
    rules[0]["when"] = {**rules[0]["when"], "score": {"gte": 0.02}}
    return {**source, "name": "scored", "rules": rules}


def candidate_spec() -> dict:
    """Another timing: every wait at least 45 s, no exploration."""
    source = legacy_spec()
    rules = [dict(r, when={**r["when"], "seconds_on_page": {"gte": 45}}) if "seconds_on_page" in r["when"] else r
             for r in source["rules"]]
    policy = {k: v for k, v in source["policy"].items() if k != "explore"}
    return {**source, "name": "candidate", "policy": policy, "rules": rules}


@pytest.fixture(scope="module")
def scorer(worlds: Any) -> Any:
    from pcrules.scoring import AcceptanceModel

    train = worlds(visitors=1500, seed=11).events
    return AcceptanceModel().fit(train.drop(columns=["response", "response_delay_s"]),
                                 (train["response"] == "accept").to_numpy()).compile()


def with_truth(world: Any) -> pd.DataFrame:
    events = world.events.copy()
    effects = event_effects(world)
    for column in ("p_accept", *EFFECTS):
        events[column] = effects[column].to_numpy()
    return events


def written(world: Any, root: Path, parts: int) -> dict[str, Path]:
    events = with_truth(world)
    goals = draw_goals(world, world.offers)
    out = {}
    for name, frame in (("events", events), ("offers", world.offers), ("goals", goals)):
        write_partitioned(frame, root / name, parts)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def history(worlds: Any, tmp_path_factory: Any) -> tuple[Any, dict[str, Path]]:
    """A 100k-event world (7 days) and its partitioned copy (8 partitions)."""
    world = worlds(visitors=7000, seed=21)
    assert len(world.events) >= 100_000
    return world, written(world, tmp_path_factory.mktemp("partitioned"), 8)


def test_partitions_are_by_a_stable_keyed_visitor_hash(history: Any) -> None:
    world, paths = history
    parts = partitions(paths["events"])
    assert [p.name for p in parts] == [f"part={i:03d}" for i in range(8)]
    seen: set[str] = set()
    total = 0
    for i, part in enumerate(parts):
        frame, origin, problems = read_partition(part, ["visitor_id", "ts"])
        assert not problems and list(frame.columns) == ["visitor_id", "ts"]  # projection
        assert (visitor_partition(frame["visitor_id"], 8) == i).all()
        ids = set(frame["visitor_id"])
        assert not ids & seen
        seen |= ids
        total += len(frame)
        assert (np.diff(frame["ts"].to_numpy()) >= 0).all() and origin["row"].min() == 1
    assert total == len(world.events)
    # the same id, the same partition, in every process and run
    assert visitor_partition(pd.Series(["v000001", "v000001", None]), 64).tolist()[:2] == \
        visitor_partition(["v000001"], 64).tolist() * 2


def test_a_time_window_is_pushed_down(history: Any) -> None:
    world, paths = history
    ts = world.events["ts"].to_numpy()
    since, until = float(np.quantile(ts, 0.3)), float(np.quantile(ts, 0.6))
    rows = sum(len(read_partition(p, ["ts"], since=since, until=until)[0]) for p in partitions(paths["events"]))
    assert rows == int(((ts >= since) & (ts < until)).sum())


@pytest.mark.parametrize("engine", ["serial", "processes"])
def test_backtest_partitioned_equals_in_memory_100k(history: Any, scorer: Any, engine: str) -> None:
    world, paths = history
    spec = scoring_spec()
    events = with_truth(world)
    mem = backtest(spec, events, scorer, truth="p_accept", effects=EFFECTS)
    part = backtest(spec, str(paths["events"]), scorer, engine=engine, workers=2, truth="p_accept", effects=EFFECTS)
    assert part.metrics["explored_offers"] > 0 and part.metrics["true_expected_uplift_itt"] is not None
    same_result(mem, part)
    assert part.problems == [] and part.refusals == {}
    assert "not available" not in part.summary()


def test_backtest_partitioned_in_memory_frames_and_default_rules(history: Any, scorer: Any) -> None:
    """A DataFrame spread over partitions in memory; the default ruleset (queues with hours and capacity)."""
    from pcrules.cli import DEFAULT_RULES

    world, _ = history
    source = dict(load_spec(DEFAULT_RULES).source)
    source["queues"] = {name: {**queue, "capacity_per_hour": 2} for name, queue in source["queues"].items()}
    spec = load_spec(source)
    mem = backtest(spec, world.events, scorer)
    part = backtest_partitioned(spec, world.events, scorer, engine="serial", parts=5)
    same_result(mem, part)
    assert any(v["hours_over_capacity"] for v in part.metrics["queues"].values())


def test_offpolicy_and_uplift_partitioned_equal_in_memory_100k(history: Any, scorer: Any) -> None:
    world, paths = history
    goals = draw_goals(world, world.offers)
    fb = feedback(legacy_spec(), world.events, world.offers)
    report = estimate(fb, candidate_spec(), scorer, n_boot=200)
    lift = uplift(fb, candidate_spec(), fb.goals(goals), n_boot=200)
    part = offpolicy_partitioned(legacy_spec(), candidate_spec(), paths["events"], paths["offers"], scorer,
                                 goals=paths["goals"], n_boot=200, engine="serial")
    same_report(report, part.report)
    for name in lift.estimates:
        same_estimate(lift[name], part.uplift[name])
    assert part.problems == []


def same_estimate(a: Any, b: Any) -> None:
    for attr in ("value", "mean"):
        assert math.isclose(getattr(a, attr), getattr(b, attr), rel_tol=1e-9, abs_tol=1e-12)
    for attr in ("interval", "mean_interval"):
        x, y = getattr(a, attr), getattr(b, attr)
        assert math.isclose(x.low, y.low, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(x.high, y.high, rel_tol=1e-9, abs_tol=1e-12)


def same_report(a: Any, b: Any) -> None:
    assert list(a.estimates) == list(b.estimates)
    for name in a.estimates:
        same_estimate(a[name], b[name])
    for attr in ("n_units", "n_clusters", "n_matched", "n_candidate_offers", "warnings", "n_boot"):
        assert getattr(a, attr) == getattr(b, attr), attr
    for attr in ("total_units", "effective_sample_size", "unsupported_share", "unsupported_offer_share",
                 "max_weight"):
        assert math.isclose(getattr(a, attr), getattr(b, attr), rel_tol=1e-9), attr


@pytest.mark.services  # a Dask LocalCluster of 2 workers
def test_dask_local_cluster_equals_the_single_process_run(history: Any, scorer: Any) -> None:
    distributed = pytest.importorskip("dask.distributed")
    _, paths = history
    spec = scoring_spec()
    serial = backtest(spec, str(paths["events"]), scorer, engine="serial", truth="p_accept", effects=EFFECTS)
    ope_serial = offpolicy_partitioned(legacy_spec(), candidate_spec(), paths["events"], paths["offers"], scorer,
                                       goals=paths["goals"], n_boot=100, engine="serial")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        on_dask = backtest(spec, str(paths["events"]), scorer, client=client, truth="p_accept", effects=EFFECTS)
        ope_dask = offpolicy_partitioned(legacy_spec(), candidate_spec(), paths["events"], paths["offers"], scorer,
                                         goals=paths["goals"], n_boot=100, client=client)
    assert on_dask.metrics == serial.metrics  # identical, not merely close: reduced in partition order
    pd.testing.assert_frame_equal(on_dask.per_rule, serial.per_rule, check_exact=True)
    pd.testing.assert_frame_equal(on_dask.queue_hours, serial.queue_hours, check_exact=True)
    pd.testing.assert_frame_equal(on_dask.offers, serial.offers, check_exact=True)
    assert ope_dask.report.to_frame().equals(ope_serial.report.to_frame())
    assert ope_dask.uplift.to_frame().equals(ope_serial.uplift.to_frame())
    assert ope_dask.report.resampling == ope_serial.report.resampling


def test_bad_rows_and_files_are_reported_by_file_and_row(worlds: Any, tmp_path: Path) -> None:
    world = worlds(visitors=300, seed=2)
    root = tmp_path / "events"
    write_partitioned(world.events, root, 2)
    folder = root / "part=001"
    # a second file in part=001: text in a number column, an empty session id
    extra = world.events[visitor_partition(world.events["visitor_id"], 2) == 1].head(50).copy()
    extra["seconds_on_page"] = extra["seconds_on_page"].astype(object)
    extra.iloc[3, extra.columns.get_loc("seconds_on_page")] = "ten"
    extra["seconds_on_page"] = extra["seconds_on_page"].astype(str)
    extra.iloc[7, extra.columns.get_loc("session_id")] = ""
    extra["ts"] = extra["ts"] + 7 * 86400.0
    extra.to_parquet(folder / "late.parquet", index=False)
    (folder / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    extra.drop(columns=["visitor_id"]).to_parquet(folder / "no-visitor.parquet", index=False)

    result = backtest(legacy_spec(), str(root), engine="serial")
    text = [str(p) for p in result.problems]
    late, broken, novisitor = (str(folder / n) for n in ("late.parquet", "broken.parquet", "no-visitor.parquet"))
    assert any(t.startswith(f"{late} row 4: seconds_on_page: expected a number, got 'ten'") for t in text), text
    assert any(t.startswith(broken) and "cannot read" in t for t in text), text
    assert any(t.startswith(novisitor) and "missing column(s) visitor_id" in t for t in text), text
    assert result.refusals[(late, 4)].startswith("seconds_on_page")
    assert result.refusals[(late, 8)].startswith("session_id")
    assert result.metrics["refused"] == 2
    assert result.metrics["events"] == len(world.events) + 50


def test_world_write_partitioned(worlds: Any, tmp_path: Path) -> None:
    world = worlds(visitors=300, seed=2)
    paths = world.write(tmp_path, parts=4)
    assert set(paths) == {"events", "page_views", "offers"}
    back = pd.concat([read_partition(p)[0] for p in partitions(paths["events"])], ignore_index=True)
    key = ["ts", "session_id", "seconds_on_page"]
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True),
                                  world.events.sort_values(key).reset_index(drop=True))
    with pytest.raises(ValueError, match="Parquet"):
        world.write(tmp_path / "csv", format="csv.gz", parts=4)


def test_generate_partitioned_writes_a_compacted_world(tmp_path: Path) -> None:
    from pcrules.world import generate_partitioned

    counts = generate_partitioned(tmp_path, visitors=900, parts=3, chunk_visitors=400, workers=2, truth=True)
    assert counts["events"] > 10_000 and counts["offers"] > 0
    for part in partitions(tmp_path / "events"):
        assert len(part.files) == 1
        frame = read_partition(part)[0]
        assert (np.diff(frame["ts"].to_numpy()) >= 0).all() and "p_accept" in frame
        assert frame["visitor_id"].str.match(r"^c\d{5}-v").all()
    result = backtest(legacy_spec(), str(tmp_path / "events"), engine="processes", workers=2, truth="p_accept",
                      effects=EFFECTS)
    assert result.metrics["events"] == counts["events"]


@pytest.mark.slow
def test_partitioned_equals_in_memory_on_1m_events(worlds: Any, scorer: Any, tmp_path: Path) -> None:
    world = worlds(visitors=67_000, seed=3)
    assert len(world.events) >= 1_000_000
    paths = written(world, tmp_path, 16)
    spec = scoring_spec()
    mem = backtest(spec, with_truth(world), scorer, truth="p_accept", effects=EFFECTS)
    part = backtest(spec, str(paths["events"]), scorer, workers=2, truth="p_accept", effects=EFFECTS)
    same_result(mem, part)
    goals = draw_goals(world, world.offers)
    fb = feedback(legacy_spec(), world.events, world.offers)
    same_report(estimate(fb, candidate_spec(), scorer, n_boot=100),
                (ope := offpolicy_partitioned(legacy_spec(), candidate_spec(), paths["events"], paths["offers"],
                                              scorer, goals=paths["goals"], n_boot=100, workers=2)).report)
    lift = uplift(fb, candidate_spec(), fb.goals(goals), n_boot=100)
    for name in lift.estimates:
        same_estimate(lift[name], ope.uplift[name])


def test_training_on_a_stratified_visitor_sample_sized_by_a_learning_curve(history: Any) -> None:
    from pcrules.analysis.partitioned import stratified_visitors, train_on_sample, visitor_hash

    world, paths = history
    offers = world.offers
    visitor = offers["visitor_id"].astype(object).to_numpy()
    accepted = (offers["response"] == "accept").groupby(visitor).transform("max").to_numpy()
    pick = stratified_visitors(visitor, accepted, 0.3, visitor_hash(visitor))
    by_visitor = pd.DataFrame({"v": visitor, "a": accepted, "pick": pick}).drop_duplicates("v")
    for _, stratum in by_visitor.groupby("a"):  # proportional allocation: 30 % of each stratum, whole visitors
        assert stratum["pick"].sum() == round(0.3 * len(stratum))
    result, curve = train_on_sample(paths["offers"], shares=(0.3, 0.8), n_boot=20)
    frame = curve.frame
    assert list(frame["share"]) == [0.3, 0.8] and frame["visitors"].is_monotonic_increasing
    assert ((frame["auc_low"] <= frame["auc"]) & (frame["auc"] <= frame["auc_high"])).all()
    assert (frame["ece_low"] <= frame["ece_high"]).all() and frame["auc_loss"].iloc[-1] == 0
    assert curve.chosen in (0.3, 0.8) and "training sample" in curve.summary()
    assert result.model is not None


def test_a_sample_of_partitions_scaled_to_the_history_and_rechecked_in_full(history: Any, scorer: Any) -> None:
    from pcrules.analysis.partitioned import recheck, sample_backtest

    _, paths = history
    spec = scoring_spec()
    estimate = sample_backtest(spec, paths["events"], scorer, share=0.5, engine="serial", truth="p_accept",
                               effects=EFFECTS)
    assert estimate.partitions == (4, 8)
    figures = estimate.figures
    assert {"events", "offers", "expected_accepts", "true_expected_uplift"} <= set(figures.index)
    assert (figures["low"] <= figures["estimate"]).all() and (figures["estimate"] <= figures["high"]).all()
    assert figures.loc["events", "estimate"] == figures.loc["events", "high"]  # known from the Parquet footers
    full, inside = recheck(spec, paths["events"], scorer, estimate, engine="serial", truth="p_accept",
                           effects=EFFECTS)
    assert set(inside) == set(figures.index)
    assert sum(inside.values()) >= len(inside) - 2  # 95 % intervals: most hold the whole history's figure
    offers = figures.loc["offers"]
    assert abs(offers["estimate"] - full.metrics["offers"]) / full.metrics["offers"] < 0.1
