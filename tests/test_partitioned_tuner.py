"""Training and tuning on a partitioned history (issue 19 item 4, the wiring).

``pcrules train --offers <partitioned folder>`` trains on a stratified visitor sample sized by a learning curve and
prints the curve and its intervals; the tuner built on a partitioned history works on a sample of the partitions,
states its share, shows its totals scaled to the whole history with intervals, and its Publish first rechecks the
ruleset with a full partitioned backtest, whose figures the confirmation shows.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from pcrules.analysis.backtest import backtest
from pcrules.analysis.partitioned import write_partitioned
from pcrules.cli import main
from pcrules.world import event_effects

EFFECTS = ("gain_if_accepted", "loss_if_not_accepted")


@pytest.fixture(scope="module")
def world_dir(worlds: Any, tmp_path_factory: Any) -> Path:
    """A world of 3000 visitors (~45k events) with its truth, as events/ and offers/ in 8 partitions."""
    world = worlds(visitors=3000, seed=5)
    events = world.events.copy()
    effects = event_effects(world)
    for column in ("p_accept", *EFFECTS):
        events[column] = effects[column].to_numpy()
    root = tmp_path_factory.mktemp("partitioned-world")
    write_partitioned(events, root / "events", 8)
    write_partitioned(world.offers, root / "offers", 8)
    return root


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def model_file(world_dir: Path, tmp_path_factory: Any) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("model") / "model.json"
    code, out, err = run("train", "--offers", str(world_dir), "--out", str(path), "--metrics-out",
                         str(path.with_name("metrics.json")))
    assert code == 0, err
    return path, out


def test_train_on_a_partitioned_offers_folder_prints_the_curve_and_writes_the_model(model_file: Any) -> None:
    path, out = model_file
    assert json.loads(path.read_text())  # the model, as today
    assert "learning curve" in out and "training sample:" in out
    assert re.search(r"AUC 0\.\d{4} \[0\.\d{4}, 0\.\d{4}\], calibration error 0\.\d{4} \[0\.\d{4}, 0\.\d{4}\]", out)
    assert "share" in out and "auc_low" in out  # the curve, one row per share
    assert "model: " in out


def test_train_sample_share_on_a_frame(world_dir: Path, tmp_path: Path) -> None:
    offers = tmp_path / "offers.parquet"
    import pandas as pd

    pd.concat([pd.read_parquet(p) for p in sorted((world_dir / "offers").rglob("*.parquet"))]).to_parquet(offers)
    code, out, err = run("train", "--offers", str(offers), "--sample", "0.4", "--out", str(tmp_path / "m.json"))
    assert code == 0, err
    assert "training sample: 40% of the visitors" in out and (tmp_path / "m.json").is_file()


def test_tuner_on_a_partitioned_history_samples_scales_and_rechecks_before_publish(
        world_dir: Path, model_file: Any, tmp_path: Path) -> None:
    from pcrules.analysis.tuner_app import load_for_tuning

    inputs = load_for_tuning(world_dir, tmp_path / "published", model_path=model_file[0], sample_share=0.25,
                             engine="serial")
    assert inputs.sample is not None and inputs.sample.partitions == (2, 8)
    assert any("partitioned by visitor" in n for n in inputs.notes)
    tuner = inputs.tuner(chart=False)
    sample = tuner.model.sample
    assert 'data-share="0.25"' in tuner.header.value and "a sample of 25% of the visitors" in tuner.header.value
    assert f"{sample.total_events:,}" in tuner.header.value
    result = tuner.result
    assert result is not None and result.scaled is not None
    scaled = result.scaled
    assert scaled.loc["events", "estimate"] == pytest.approx(sample.total_events)
    assert (scaled["low"] <= scaled["estimate"] + 1e-9).all() and (scaled["estimate"] <= scaled["high"] + 1e-9).all()
    assert 'data-scaled="offers"' in tuner.metrics_html.value

    # the scaled figures equal the library's sample backtest of the same partitions
    from pcrules.analysis.partitioned import sample_backtest

    est = sample_backtest(tuner.spec, world_dir / "events", tuner.scorer, share=0.25, engine="serial",
                          truth="p_accept", effects=EFFECTS)
    for name in ("offers", "expected_accepts", "true_expected_uplift"):
        assert scaled.loc[name, "estimate"] == pytest.approx(est.figures.loc[name, "estimate"], rel=1e-9)
        assert scaled.loc[name, "high"] == pytest.approx(est.figures.loc[name, "high"], rel=1e-9)

    rule = next(r for r in tuner.spec.rules if tuner.model.tunable[r.name]).name
    tuner.set(rule, wait_s=tuner.model.initial.rules[rule].wait_s + 30.0)
    tuner.override.value = True  # no logging ruleset given: the guardrail cannot check, the override publishes
    tuner.ask_publish()
    assert tuner._pending is not None and tuner._pending.recheck is not None, tuner.message.value
    panel = tuner.confirmation_html.value
    assert "Recheck" in panel and "all 8 partitions" in panel
    settings, tuned = tuner._pending.settings, tuner._pending.tuned
    direct = backtest(tuned, str(world_dir / "events"), tuner.scorer, engine="serial", truth="p_accept",
                      effects=EFFECTS)
    rc = tuner._pending.recheck
    for name in rc.inside:
        assert rc.full[name] == direct.metrics[name]
        shown = re.search(rf'data-full="{name}" data-value="([^"]+)"', panel)
        assert shown is not None and float(shown[1]) == pytest.approx(direct.metrics[name], rel=1e-12)
    assert ("contradicts the sample" in panel) == (not all(rc.inside.values()))
    path = tuner.confirm_publish()
    assert path is not None, tuner.message.value
    recorded = json.loads((path / "manifest.json").read_text())["metrics"]["tuning"]
    assert recorded["recheck"]["backtest"]["offers"] == direct.metrics["offers"]
    assert recorded["sample"]["partitions"] == [2, 8]
    assert settings == tuner._current_settings


def test_the_panel_says_plainly_when_the_full_backtest_contradicts_the_sample(world_dir: Path) -> None:
    import pandas as pd

    from pcrules.analysis.tuner_app import load_for_tuning
    from pcrules.analysis.tuner_widget import _Recheck

    inputs = load_for_tuning(world_dir, None, sample_share=0.25, engine="serial")
    tuner = inputs.tuner(chart=False)
    scaled = pd.DataFrame({"estimate": [100.0, 50.0], "low": [90.0, 40.0], "high": [110.0, 60.0]},
                          index=["offers", "accepted"])
    text = tuner.recheck_text(_Recheck(scaled, {"offers": 200, "accepted": 55}, {"offers": False, "accepted": True},
                                       8, 1.0))
    assert "contradicts the sample: offers falls outside" in text and "OUTSIDE" in text
