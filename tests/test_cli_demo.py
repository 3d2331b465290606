"""The command line: `pcrules validate` and `pcrules demo` on the shipped sample."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pcrules import Runtime, SQLiteDecisionLog, load_spec
from pcrules.cli import DEFAULT_RULES, main
from pcrules.replay import replay
from pcrules.sample import SAMPLE_PATH, generate, read_events, write_sample

BAD_SPEC = """
name: broken
policy: {holdout: 1.5, offer_timeout_s: -3}
queues: {Billing: {max_wait_s: 180}}
rules:
  - name: a
    when: {seconds_on_page: {gte: "five"}, page: {like: x}}
    offer: {queue: Nowhere}
  - name: a
    when: {page: Home}
    offer: {queue: Billing}
"""


def test_validate_accepts_the_default(capsys):
    assert main(["validate", str(DEFAULT_RULES)]) == 0
    assert "ok:" in capsys.readouterr().out


def test_validate_lists_every_problem_and_fails(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SPEC)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    for expected in (
        "policy.holdout: expected a number >= 0 and < 1, got 1.5",
        "policy.offer_timeout_s: expected a number > 0, got -3",
        'rules[0].when.seconds_on_page.gte: expected a number >= 0, got "five"',
        "rules[0].when.page.like: unknown operator",
        'rules[0].offer.queue: unknown queue "Nowhere"',
        "rules[1].name: duplicate rule name 'a'",
    ):
        assert expected in err, f"missing {expected!r} in:\n{err}"


def test_validate_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_sample_is_deterministic_and_matches_the_shipped_file(tmp_path):
    assert list(generate(visitors=30, seed=3)) == list(generate(visitors=30, seed=3))
    assert list(generate(visitors=30, seed=3)) != list(generate(visitors=30, seed=4))
    rebuilt = tmp_path / "sample.csv.gz"
    write_sample(rebuilt)
    assert rebuilt.read_bytes() == SAMPLE_PATH.read_bytes(), "data/sample_events.csv.gz is stale: run write_sample()"


def test_replay_summary_agrees_with_the_decision_log(tmp_path):
    rows = list(read_events())
    log_path = tmp_path / "log.sqlite"
    with Runtime(load_spec(DEFAULT_RULES), log=SQLiteDecisionLog(log_path)) as runtime:
        summary = replay(runtime, rows)
    assert summary.events == len(rows) and summary.refused == 0
    assert summary.offers > 50 and summary.reasons["holdout"] > 0
    with sqlite3.connect(log_path) as db:
        assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == len(rows)
        assert db.execute("SELECT count(*) FROM decisions WHERE action = 'offer'").fetchone()[0] == summary.offers
        by_status = dict(db.execute("SELECT status, count(*) FROM outcomes GROUP BY status").fetchall())
        holdout = db.execute("SELECT count(*) FROM decisions WHERE holdout = 1").fetchone()[0]
    assert holdout == summary.reasons["holdout"]
    # Every real offer ended exactly once, and the log says how.
    assert sum(by_status.values()) == summary.offers
    assert {k: by_status.get(k, 0) for k in ("accepted", "declined", "expired")} == {
        k.value: v for k, v in summary.outcomes.items()
    }
    assert by_status.get("accepted", 0) > 0 and by_status.get("declined", 0) > 0


@pytest.mark.slow
def test_demo_command_runs_end_to_end(tmp_path):
    log_path = tmp_path / "demo.sqlite"
    run = subprocess.run([sys.executable, "-m", "pcrules", "demo", "--log", str(log_path)],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    for heading in ("events replayed", "offers", "accepted", "declined", "expired", "no-offer reasons",
                    "offers by queue", "goals reported", "AUC"):
        assert heading in run.stdout
    assert log_path.exists()
    # The model-only rule fires: the replay went through the published bundle's scorer.
    assert "likely-to-accept" in run.stdout.split("offers by rule")[1]
    with sqlite3.connect(log_path) as db:
        assert db.execute("SELECT count(*) FROM goals").fetchone()[0] > 100
        assert db.execute("SELECT count(*) FROM decisions WHERE score IS NOT NULL").fetchone()[0] > 1000
    assert (tmp_path / "published" / "current").exists()
    # Training from the log itself (issue 18: any CLI that reads the log reads it through the one query layer)
    model = tmp_path / "from-log.json"
    trained = subprocess.run([sys.executable, "-m", "pcrules", "train", "--log", str(log_path), "--out", str(model)],
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    with sqlite3.connect(log_path) as db:
        ended = db.execute("SELECT count(*) FROM decisions d JOIN outcomes o ON o.offer_id = d.offer_id "
                           "WHERE d.action = 'offer'").fetchone()[0]
    assert f"the model written is then trained on all {ended:,}" in trained.stdout, trained.stdout
    assert json.loads(model.read_text())["kind"]
    missing = subprocess.run([sys.executable, "-m", "pcrules", "train", "--log", str(tmp_path / "nope.sqlite"),
                              "--out", str(model)], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"error: --log {tmp_path / 'nope.sqlite'}: no such decision log"]
