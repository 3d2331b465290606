"""History -> model file -> bundle -> runtime, through the command line."""

from __future__ import annotations

import json

from pcrules import Runtime
from pcrules.cli import DEFAULT_RULES, main
from pcrules.scoring import load_scorer
from pcrules.world import true_accept_probability


def test_train_publish_and_serve(worlds, tmp_path, capsys):
    world = worlds(visitors=6000, seed=5)
    offers_path = tmp_path / "offers.parquet"
    world.offers.to_parquet(offers_path)
    model_path, metrics_path = tmp_path / "model.json", tmp_path / "metrics.json"

    assert main(["train", "--offers", str(offers_path), "--out", str(model_path),
                 "--metrics-out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    held_out = metrics["held_out"]
    assert metrics["train_rows"] + metrics["test_rows"] == len(world.offers)
    assert 0.55 < held_out["roc_auc"] < 0.9 and held_out["ece"] < 0.05

    # The model file scores like the ground truth ranks: higher where the truth is higher.
    scorer = load_scorer(json.loads(model_path.read_text()))
    rows = world.offers.head(400).to_dict("records")
    truth = true_accept_probability(world.offers.head(400)["page"], world.offers.head(400)["seconds_on_page"],
                                    world.offers.head(400)["device"], world.offers.head(400)["returning"],
                                    world.offers.head(400)["pages_viewed"])
    scores = [scorer.predict_proba_one(r) for r in rows]
    hi = [s for s, t in zip(scores, truth) if t > sorted(truth)[300]]
    lo = [s for s, t in zip(scores, truth) if t < sorted(truth)[100]]
    assert sum(hi) / len(hi) > sum(lo) / len(lo)

    out = tmp_path / "published"
    assert main(["publish", "--rules", str(DEFAULT_RULES), "--model", str(model_path),
                 "--metrics", str(metrics_path), "--out", str(out)]) == 0
    runtime = Runtime.from_bundle(out)
    assert runtime.scorer is not None
    event = {**rows[0], "ts": float(rows[0]["ts"])}
    assert runtime.observe(event).action in ("offer", "wait", "none")


def test_train_refuses_unusable_history(worlds, tmp_path, capsys):
    missing = tmp_path / "nope.parquet"
    assert main(["train", "--offers", str(missing), "--out", str(tmp_path / "m.json")]) == 1
    assert "error:" in capsys.readouterr().err
    world = worlds(visitors=200, seed=1)
    same = world.offers.assign(response="none")
    same.to_parquet(tmp_path / "same.parquet")
    assert main(["train", "--offers", str(tmp_path / "same.parquet"), "--out", str(tmp_path / "m.json")]) == 1
    assert "same answer" in capsys.readouterr().err
