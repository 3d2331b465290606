"""The trigger tuner: its fast figures ARE the backtest's, and its widget is safe to hand to a person.

* ``TriggerModel.evaluate(settings)`` against ``backtest(model.spec_for(settings), ...)`` — every count
  exactly (offers, holdout, answers, every action and reason, per rule, per queue and hour), sums of scores
  to 1e-9 — on many settings (seeded random ones and the edges), and on policies that exercise every path:
  cooldowns reaching later sessions, several offers per session, idle evictions, a large holdout, no offer
  at all, rules the tuner keeps as written, field typing that depends on which rules are on, no model.
* The widget driven without a browser: slider values set programmatically show the backtest's figures;
  Publish writes a bundle the runtime loads and that reproduces the backtest's decisions event by event;
  an invalid value or a failed publish is a sentence in the widget and publishes nothing.
"""

from __future__ import annotations

import html
import itertools
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pcrules import Runtime, load_spec
from pcrules.backtest import EventTable, backtest
from pcrules.decision_log import MemoryDecisionLog
from pcrules.tuning import (
    InvalidSetting,
    RuleSetting,
    Settings,
    TriggerModel,
    Tuner,
    load_for_tuning,
    parse_capacity,
    ruleset_diff,
    side_by_side,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RULES = ROOT / "pcrules" / "default_rules.yaml"
COUNTS = ("events", "valid_events", "refused", "sessions", "visitors", "offers", "sessions_with_offer", "holdout",
          "holdout_visitors", "accepted", "declined", "expired", "actions", "reasons", "eligible_visitors", "effects")
FLOATS = ("offer_rate_per_session", "expected_accepts", "expected_accept_rate", "recorded_accept_rate",
          "true_expected_accepts", "true_expected_accept_rate", "expected_uplift", "expected_uplift_per_offer",
          "expected_uplift_itt", "true_expected_uplift", "true_expected_uplift_per_offer", "true_expected_uplift_itt")
PER_RULE_FLOATS = ("expected_accepts", "true_expected", "expected_uplift", "true_expected_uplift")


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(worlds: Any) -> Any:
    return worlds(visitors=1500, seed=21, days=7)


@pytest.fixture(scope="module")
def scorer(world: Any) -> Any:
    from pcrules.training import train_on_offers

    return train_on_offers(world.offers).model.compile()


@pytest.fixture(scope="module")
def table(world: Any) -> EventTable:
    return EventTable(world.events)


@pytest.fixture(scope="module")
def truth(world: Any) -> np.ndarray:
    from pcrules.decision_value import world_truth

    return world_truth(world)


@pytest.fixture(scope="module")
def effects(world: Any) -> Any:
    from pcrules.world import event_effects

    return event_effects(world)


def spec_with(**policy: Any) -> Any:
    import yaml

    raw = yaml.safe_load(DEFAULT_RULES.read_text())
    raw["policy"].update(policy)
    return load_spec(raw)


# --------------------------------------------------------------------------------------------- the proof


def assert_equal(result: Any, reference: Any) -> None:
    """Every figure of the tuner equals the backtest's: counts exactly, sums of probabilities to 1e-9."""
    m, b = result.metrics, reference.metrics
    for key in COUNTS:
        assert m[key] == b[key], f"{key}: tuner {m[key]} backtest {b[key]}"
    for key in FLOATS:
        if b.get(key) is None:
            assert m.get(key) is None, key
        else:
            assert m[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key
    per, ref = result.per_rule, reference.per_rule
    assert list(per.index) == list(ref.index)
    assert list(per.columns) == list(ref.columns)
    for col in ref.columns:
        if col in PER_RULE_FLOATS:
            np.testing.assert_allclose(per[col].to_numpy(float), ref[col].to_numpy(float), rtol=1e-9, atol=1e-9)
        else:
            assert per[col].tolist() == ref[col].tolist(), f"per rule {col}"
    qh, rq = result.queue_hours, reference.queue_hours
    assert len(qh) == len(rq)
    for col in ("queue", "hour", "open", "offers", "accepted"):
        assert qh[col].tolist() == rq[col].tolist(), f"queue hours {col}"
    np.testing.assert_allclose(qh["expected_chats"].to_numpy(float), rq["expected_chats"].to_numpy(float),
                               rtol=1e-9, atol=1e-9)
    for queue, figures in b["queues"].items():
        for key, value in figures.items():
            mine = m["queues"][queue][key]
            if value is None or (isinstance(value, float) and math.isnan(value)):  # a frame's None is NaN
                assert mine is None or (isinstance(mine, float) and math.isnan(mine)), (queue, key)
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                assert mine == value, (queue, key)
            else:
                assert mine == pytest.approx(value, rel=1e-9, abs=1e-12), (queue, key)


def check(model: TriggerModel, settings: Settings, scorer: Any, truth: Any = None, effects: Any = None) -> Any:
    result = model.evaluate(settings)
    reference = backtest(model.spec_for(settings), model.table, scorer, truth=truth, effects=effects)
    assert_equal(result, reference)
    return result


def random_settings(model: TriggerModel, rng: np.random.Generator) -> Settings:
    settings = model.initial
    for name in model.rule_names:
        on = bool(rng.random() > 0.15)
        if model.tunable[name]:
            wait = float(rng.choice([0, 10, 15, 30, 45, 60, 90, 120, 150, 180, 240, 300, 420, 600, 900]))
            threshold = None if rng.random() < 0.35 else round(float(rng.uniform(0.005, 0.25)), 4)
            settings = settings.with_rule(name, on=on, wait_s=wait, threshold=threshold)
        else:
            settings = settings.with_rule(name, on=on)
    for q in model.queue_names:
        settings = settings.with_capacity(q, None if rng.random() < 0.2 else float(rng.integers(1, 80)))
    return settings


def test_equals_the_backtest_on_many_settings(table: EventTable, scorer: Any, truth: np.ndarray,
                                             effects: Any) -> None:
    model = TriggerModel(DEFAULT_RULES, table, scorer, truth=truth, effects=effects)
    assert all(model.tunable.values())
    first = check(model, model.initial, scorer, truth, effects)  # the current ruleset itself
    assert first.metrics["expected_uplift"] is not None and first.metrics["true_expected_uplift"] is not None
    assert first.metrics["eligible_visitors"] > first.metrics["holdout_visitors"] > 0
    rng = np.random.default_rng(5)
    stepped = 0
    for _ in range(14):
        check(model, random_settings(model, rng), scorer, truth, effects)
        stepped += model.last_stats["visitors_stepped"]
    assert stepped > 0, "some settings send visitors through the sequential step (cooldown into a later session)"
    edges = [
        {name: RuleSetting(False, 0.0, None) for name in model.rule_names},  # every rule off: no offer at all
        {name: RuleSetting(True, 0.0, None) for name in model.rule_names},  # fire at page enter
        {name: RuleSetting(True, 1e4, 0.99) for name in model.rule_names},  # never
        {name: RuleSetting(True, 15.0, 0.9999) for name in model.rule_names},  # score_below everywhere
    ]
    for rules in edges:
        check(model, Settings(rules, model.initial.capacities), scorer, truth, effects)


@pytest.mark.parametrize("policy", [
    {"max_offers_per_session": 2, "decline_cooldown_s": 600},  # several offers per session: row by row
    {"max_offers_per_session": 3, "offer_timeout_s": 20, "holdout": 0.3},
    {"session_idle_ttl_s": 45, "decline_cooldown_s": 3600},  # idle evictions split sessions into stretches
    {"max_offers_per_session": 0},  # no offer can ever be made
    {"decline_cooldown_s": 7 * 86400, "holdout": 0.0},  # every decline reaches every later session
    # issue 17: after an offer expires unanswered, no offer to that visitor for a while, within a session ...
    {"max_offers_per_session": 3, "no_answer_cooldown_s": 120, "holdout": 0.2},
    # ... and into the visitor's later sessions (a holdout visitor's from the would-be offer itself)
    {"no_answer_cooldown_s": 3 * 86400, "session_idle_ttl_s": 45, "holdout": 0.3},
], ids=["two-offers", "three-offers-short-timeout", "idle-evictions", "no-offers", "long-cooldown",
        "no-answer-cooldown", "no-answer-cooldown-across-sessions"])
def test_equals_the_backtest_under_other_policies(world: Any, scorer: Any, effects: Any, policy: dict) -> None:
    model = TriggerModel(spec_with(**policy), world.events, scorer, effects=effects)
    rng = np.random.default_rng(len(str(policy)))
    check(model, model.initial, scorer, effects=effects)
    for _ in range(3):
        check(model, random_settings(model, rng), scorer, effects=effects)


def test_rules_kept_as_written_and_typing_that_depends_on_the_rules_on(world: Any, scorer: Any, effects: Any) -> None:
    """A rule with time inside any_of or a score `lt` is only switched on and off; a field tested only with
    `exists` in one rule and compared with a number in another changes meaning when that other rule is off."""
    events = world.events.assign(segment=np.where(np.arange(len(world.events)) % 3 == 0, 7.0,
                                                  np.where(np.arange(len(world.events)) % 3 == 1, "x", None)))
    events.loc[events.index[::997], "seconds_on_page"] = -1.0  # refused by the runtime: no part in anything
    events = events.sample(frac=1.0, random_state=3)  # out of time order: the table sorts, truth follows
    spec = {
        "name": "mixed",
        "policy": {"holdout": 0.1},
        "queues": {"Support": {"capacity_per_hour": 20}, "Sales": {"capacity_per_hour": 30, "hours": {
            "tz": "Europe/Amsterdam", "start": "09:00", "end": "18:00"}}},
        "rules": [
            {"name": "slow-or-deep", "priority": 9, "when": {"page": {"in": ["FAQ", "Support"]}, "any_of": [
                {"seconds_on_page": {"gte": 200}}, {"pages_viewed": {"gte": 4}, "minutes_on_page": {"gte": 1}}]},
             "offer": {"queue": "Support"}},
            {"name": "cold-lead", "priority": 8, "when": {"page": "Plans", "score": {"lt": 0.05},
                                                          "seconds_on_page": {"gte": 30}},
             "offer": {"queue": "Sales"}},
            {"name": "segment-present", "priority": 7, "when": {"segment": {"exists": True},
                                                                "seconds_on_page": {"gte": 60}},
             "offer": {"queue": "Sales"}},
            {"name": "segment-big", "priority": 6, "when": {"segment": {"gte": 5}, "page": "Home",
                                                            "minutes_on_page": {"gte": 0.5}},
             "offer": {"queue": "Support"}},
        ],
    }
    truth = np.linspace(0.0, 0.2, len(events))  # any per-event truth, in the input's (shuffled) order
    effects = effects.loc[events.index]  # the effects follow the input's (shuffled) order too
    model = TriggerModel(spec, events, scorer, truth=truth, effects=effects)
    assert model.table.order is not None and model.valid_events < len(events)
    assert model.tunable == {"slow-or-deep": False, "cold-lead": False, "segment-present": True, "segment-big": True}
    assert model.typing_varies
    assert model.initial.rules["segment-big"].wait_s == 30.0
    rng = np.random.default_rng(2)
    first = check(model, model.initial, scorer, truth, effects)
    assert first.metrics["refused"] > 0 and first.metrics["true_expected_accepts"] is not None
    assert first.metrics["true_expected_uplift"] is not None
    for _ in range(5):
        check(model, random_settings(model, rng), scorer, truth, effects)
    off = model.initial.with_rule("segment-big", on=False)  # now `segment: exists` takes any value
    check(model, off, scorer, truth, effects)
    check(model, off.with_rule("slow-or-deep", on=False).with_rule("segment-present", wait_s=0.0), scorer, truth,
          effects)


def test_without_a_model(world: Any, effects: Any) -> None:
    model = TriggerModel(DEFAULT_RULES, world.events, None, effects=effects)
    result = check(model, model.initial, None, effects=effects)
    assert result.metrics["expected_accepts"] is None
    assert result.metrics["expected_uplift"] is None  # effects without a P(accept): not available, not 0
    assert "expected_uplift" not in result.per_rule.columns
    assert result.per_rule.loc["likely-to-accept", "offers"] == 0  # a score rule without a model never fires
    check(model, model.initial.with_rule("help-seeker", wait_s=30.0).with_rule("checkout-hesitation", on=False), None,
          effects=effects)


def test_thresholds_at_a_score_recompute_it_the_runtime_way(table: EventTable, scorer: Any) -> None:
    """A threshold equal to some row's score: the backtest recomputes scores that close the runtime's way."""
    model = TriggerModel(DEFAULT_RULES, table, scorer)
    idx = model._rule_rows["bill-payment-stuck"][0]
    exact = float(model.score[idx[len(idx) // 2]])
    settings = model.initial.with_rule("bill-payment-stuck", threshold=exact)
    settings = Settings(settings.rules, settings.capacities)
    result = model.evaluate(settings)
    # the rounding to 4 decimals is what the ruleset carries: the same threshold on both sides
    assert model.check(settings).rules["bill-payment-stuck"].threshold == round(exact, 4)
    assert_equal(result, backtest(model.spec_for(settings), table, scorer))


def test_settings_are_validated_as_sentences(world: Any) -> None:
    model = TriggerModel(DEFAULT_RULES, world.events, None)
    bad = [
        model.initial.with_rule("help-seeker", wait_s=-5),
        model.initial.with_rule("help-seeker", wait_s=float("nan")),
        model.initial.with_rule("help-seeker", wait_s="soon"),
        model.initial.with_rule("help-seeker", threshold=1.5),
        model.initial.with_rule("help-seeker", on="yes"),
        model.initial.with_capacity("Billing", "lots"),
        model.initial.with_capacity("Billing", -3),
        Settings({**model.initial.rules, "ghost": RuleSetting()}, model.initial.capacities),
        Settings(model.initial.rules, {**model.initial.capacities, "Nowhere": 3}),
    ]
    for settings in bad:
        with pytest.raises(InvalidSetting) as info:
            model.evaluate(settings)
        text = str(info.value)
        assert text.endswith(".") and "Traceback" not in text and text[0].isupper()
    assert parse_capacity(" 1,200 ", "Billing") == 1200.0 and parse_capacity("", "Billing") is None


# --------------------------------------------------------------------------------------------- the widget


def shown(tuner: Tuner) -> dict[str, str]:
    """The headline figures as the results panel shows them."""
    return dict(re.findall(r'data-metric="([a-z_]+)">([^<]*)<', tuner.metrics_html.value))


def test_the_widget_shows_the_backtest(table: EventTable, scorer: Any, truth: np.ndarray, effects: Any) -> None:
    plain = Tuner(DEFAULT_RULES, table, scorer, truth=truth, chart=False)  # no effects: said so, no number
    assert 'data-metric="expected_uplift"><span class="pcrules-na"' in plain.metrics_html.value
    assert plain.result.metrics["expected_uplift"] is None and "not available" in plain.metrics_html.value
    tuner = Tuner(DEFAULT_RULES, table, scorer, truth=truth, effects=effects)
    assert tuner.result is not None and tuner.last_error is None
    moves = [("help-seeker", {"wait_s": 45.0}), ("bill-payment-stuck", {"threshold": 0.06}),
             ("checkout-hesitation", {"on": False}), ("likely-to-accept", {"wait_s": 0.0, "threshold": 0.12})]
    for rule, change in moves:
        c = tuner.controls[rule]
        for key, value in change.items():  # as a browser would: one widget value at a time
            c[{"wait_s": "wait", "threshold": "threshold", "on": "on"}[key]].value = value
        settings = tuner.read_settings()
        reference = backtest(tuner.model.spec_for(settings), table, scorer, truth=truth, effects=effects)
        assert_equal(tuner.result, reference)
        figures = shown(tuner)
        assert figures["offers"] == f"{reference.metrics['offers']:,}"
        assert figures["expected_accepts"] == f"{reference.metrics['expected_accepts']:,.1f}"
        for key in ("expected_uplift", "true_expected_uplift"):
            assert figures[key].strip() == f"{reference.metrics[key]:+,.1f}", key
        assert figures["accepted"] == f"{reference.metrics['accepted']:,}"
        for reason in ("max_offers", "cooldown", "offer_pending", "score_below", "closed"):
            assert f'data-reason="{reason}">{reference.metrics["reasons"][reason]:,}<' in tuner.metrics_html.value
    tuner.capacity["Support"].value = "0.5"  # capacity changes only the load figures
    assert tuner.result.metrics["queues"]["Support"]["capacity_per_hour"] == 0.5
    assert tuner.result.metrics["queues"]["Support"]["hours_over_capacity"] > 0
    assert 'class="pcrules-over"' in tuner.metrics_html.value
    assert tuner.chart.value[:8] == b"\x89PNG\r\n\x1a\n"
    with tuner.hold():  # several knobs, one recompute
        n = len(tuner.timings)
        tuner.controls["help-seeker"]["wait"].value = 300.0
        tuner.controls["plans-comparison"]["on"].value = False
    assert len(tuner.timings) == n + 1


@pytest.mark.slow
def test_publish_writes_a_bundle_the_runtime_reproduces(tmp_path: Path, world: Any, scorer: Any) -> None:
    from pcrules.bundle import load_bundle, publish
    from pcrules.replay import replay

    published = tmp_path / "published"
    publish(DEFAULT_RULES, scorer, published, metrics={"auc": 0.71})
    events = world.events.iloc[: len(world.events) // 2]
    tuner = Tuner.from_bundle(published, events)
    assert tuner.current_version is not None
    assert tuner.on_publish() is None and "nothing to publish" in tuner.message.value  # untouched: same ruleset
    tuner.set("help-seeker", wait_s=60.0, threshold=0.03)
    tuner.set("plans-comparison", on=False)
    tuner.capacity["Sales"].value = "75"
    path = tuner.on_publish()
    assert path is not None and tuner.last_error is None and "it is now current" in tuner.message.value
    diff = html.unescape(tuner.diff_html.value)  # the knobs rule by rule, then the YAML diff
    for line in ("-- name: plans-comparison", "+    score:\n+      gte: 0.03", "-      gte: 120\n+      gte: 60",
                 "-    capacity_per_hour: 60\n+    capacity_per_hour: 75"):
        assert line in diff, line
    assert "wait 120 s, no score condition</td><td>wait 60 s, score ≥ 0.03" in diff
    bundle = load_bundle(published / "current")
    assert bundle.version == path.name and bundle.metrics["auc"] == 0.71
    assert bundle.metrics["tuning"]["backtest"]["offers"] == tuner.result.metrics["offers"]
    assert [r.name for r in bundle.spec.rules] == [n for n in tuner.model.rule_names if n != "plans-comparison"]

    # the runtime serving that bundle decides exactly what the backtest (and so the tuner) says
    reference = backtest(bundle.spec, events, bundle.scorer)
    assert reference.metrics["offers"] == tuner.result.metrics["offers"]
    counter = itertools.count(1)
    log = MemoryDecisionLog()
    decisions = log.decisions

    runtime = Runtime.from_bundle(published, log=log, new_offer_id=lambda: f"o{next(counter)}", clock=lambda: 0.0)
    t = EventTable(events)
    code, delay = t.answers()
    rows = ({"event": t.raw_event(i), "response": {1: "accept", 2: "decline"}.get(int(code[i])),
             "response_delay_s": None if delay[i] != delay[i] else float(delay[i])} for i in range(t.n))
    summary = replay(runtime, rows)
    runtime.close()
    d = reference.decisions
    assert len(decisions) == len(d) == t.n
    got = list(zip(d["action"].astype(str), d["reason"].astype(object).where(d["reason"].notna(), None),
                   d["rule"].astype(object).where(d["rule"].notna(), None)))
    want = [(x.action.value, None if x.reason is None else x.reason.value, x.rule) for x in decisions]
    assert got == want
    assert summary.offers == tuner.result.metrics["offers"]


def test_invalid_values_and_failed_publishes_are_sentences(tmp_path: Path, world: Any, scorer: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import pcrules.bundle as bundle_module

    published = tmp_path / "published"
    tuner = Tuner(DEFAULT_RULES, world.events, scorer, bundle_dir=published)
    good = tuner.result.metrics["offers"]

    def assert_sentence(expected: str) -> None:
        text = re.sub(r"<[^>]+>", "", tuner.message.value)
        assert expected in text, text
        assert "Traceback" not in text and 'File "' not in text and text.strip().endswith(".")
        assert tuner.last_error is not None

    # a capacity that is not a number: shown at once, the figures stay, and Publish refuses
    tuner.capacity["Billing"].value = "forty"
    assert_sentence("The capacity of queue Billing must be a positive number")
    assert tuner.result.metrics["offers"] == good
    assert tuner.on_publish() is None
    assert_sentence("Nothing was published")
    assert not published.exists()
    tuner.capacity["Billing"].value = "-1"
    assert tuner.on_publish() is None and not published.exists()
    tuner.capacity["Billing"].value = "40"
    assert tuner.last_error is None

    # a ruleset name the spec refuses: load_spec's problem, as a sentence
    tuner.name.value = "no spaces allowed!"
    assert tuner.on_publish() is None
    assert_sentence("the tuned ruleset is not valid — name: expected a name")
    assert not published.exists()
    tuner.name.value = "   "
    assert tuner.on_publish() is None
    assert_sentence("The ruleset needs a name.")
    tuner.name.value = "default"

    # the publish itself fails: a folder that cannot be written, a bundle error
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    tuner.bundle_dir = blocker
    tuner.set("help-seeker", wait_s=90.0)
    assert tuner.on_publish() is None
    assert_sentence("Publishing failed, nothing was published")

    tuner.bundle_dir = published

    def broken(*args: Any, **kwargs: Any) -> None:
        raise bundle_module.BundleError(f"{published}: the written bundle does not load back")

    monkeypatch.setattr(bundle_module, "publish", broken)
    assert tuner.on_publish() is None
    assert_sentence("Publishing failed, nothing was published: ")
    monkeypatch.undo()
    assert not (published / "current").exists()

    # no bundle folder at all
    tuner.bundle_dir = None
    assert tuner.on_publish() is None
    assert_sentence("no bundle folder")

    # a recompute that fails unexpectedly is a sentence too
    monkeypatch.setattr(tuner.model, "evaluate", lambda s: 1 / 0)
    tuner.on_change()
    assert_sentence("The figures could not be recomputed (division by zero)")


def test_reset_and_apply_choices(world: Any, scorer: Any) -> None:
    from pcrules.decision_value import RuleChoice

    tuner = Tuner(DEFAULT_RULES, world.events, scorer, chart=False)
    first = tuner.result.metrics["offers"]
    tuner.apply([RuleChoice("help-seeker", 1200.0, 0.05), RuleChoice("checkout-hesitation", None, None)])
    s = tuner.read_settings()
    assert s.rules["help-seeker"] == RuleSetting(True, 1200.0, 0.05)
    assert tuner.controls["help-seeker"]["wait"].max >= 1200.0  # widened, not clamped
    assert not s.rules["checkout-hesitation"].on
    tuner.on_reset()
    assert tuner.read_settings().rules == tuner.model.initial.rules and tuner.result.metrics["offers"] == first


@pytest.mark.slow
def test_notebook_helpers(tmp_path: Path, world: Any, scorer: Any) -> None:
    from pcrules import analysis
    from pcrules.bundle import publish
    from pcrules.tuning import dashboard, expected_value_choice, plot_side_by_side, uplift_side_by_side

    world.write(tmp_path / "world", format="csv.gz")
    inputs = load_for_tuning(tmp_path / "world", tmp_path / "published")
    assert inputs.scorer is None and inputs.truth is not None and "no bundle" in inputs.summary()
    with pytest.raises(ValueError, match="needs a model"):
        expected_value_choice(inputs)
    model_path = tmp_path / "model.json"
    analysis.save_model(analysis.train_model(inputs.history), model_path)
    inputs = load_for_tuning(tmp_path / "world", tmp_path / "published", model_path=model_path)
    assert inputs.scorer is not None and "held_out" in inputs.model_metrics
    ev = expected_value_choice(inputs, cost_of_offer=0.05)
    tuner = inputs.tuner(chart=False)
    tuner.apply(ev.choices)
    tuned = tuner.model.spec_for(tuner.read_settings())
    assert tuner.result.metrics["offers"] == ev.result.metrics["offers"]  # the EV choice, exactly
    sbs = side_by_side(inputs.spec, tuned, inputs)
    assert list(sbs.table.columns[:2]) == ["current", "tuned"]
    assert sbs.table.loc["offers", "tuned"] == ev.result.metrics["offers"]
    assert len(plot_side_by_side(sbs).axes) == 3
    # a generated world: the effect of an offer is known, so the expected uplift is reported and can be optimised
    assert inputs.effects is not None and tuner.result.metrics["true_expected_uplift"] is not None
    by_page = uplift_side_by_side(sbs, "page")
    assert by_page.attrs["probability"] == "truth"
    for side, result in zip(("current", "tuned"), sbs.results):
        assert by_page[f"extra goals ({side})"].sum() == pytest.approx(result.metrics["true_expected_uplift"])
        assert by_page[f"offers ({side})"].sum() == result.metrics["offers"]
    assert sbs.table.loc["true_expected_uplift", "tuned"] == pytest.approx(
        sbs.results[1].metrics["true_expected_uplift"])
    best = expected_value_choice(inputs, objective="uplift")
    assert best.objective == "uplift" and best.value["value"] == pytest.approx(best.result.metrics["expected_uplift"])
    # real history (events only): not available, said in a sentence, never a 0
    world.events.to_csv(tmp_path / "events.csv", index=False)
    real = load_for_tuning(tmp_path / "events.csv", tmp_path / "elsewhere", model_path=model_path)
    assert real.effects is None and any("not available" in n for n in real.notes)
    real_sbs = side_by_side(real.spec, tuned, real)
    assert real_sbs.results[1].metrics["expected_uplift"] is None
    sentence = uplift_side_by_side(real_sbs)
    assert isinstance(sentence, str) and sentence.startswith("Expected uplift by page is not available")
    with pytest.raises(ValueError, match="needs effects"):
        expected_value_choice(real, objective="uplift")
    assert "seconds_on_page" in ruleset_diff(inputs.spec, tuned)
    assert ruleset_diff(inputs.spec, inputs.spec) == ""
    # the Voila app's entry: a bundle, history from the environment; a missing history is a sentence
    publish(DEFAULT_RULES, inputs.scorer, tmp_path / "published")
    app = dashboard(tmp_path / "world", tmp_path / "published")
    assert isinstance(app, Tuner) and app.current_version is not None and app.last_error is None
    broken = dashboard(tmp_path / "nowhere", tmp_path / "published")
    assert "The tuner could not start" in broken.value and "Traceback" not in broken.value


# --------------------------------------------------------------------------------------------- objectives


@pytest.fixture(scope="module")
def targeting_world(worlds: Any) -> dict[str, Any]:
    """A world where targeting matters: an accepted chat helps a struggling visitor far more (pcrules.world)."""
    from pcrules.decision_value import per_page_spec, world_truth
    from pcrules.world import event_effects

    world = worlds(visitors=2000, seed=31)
    effects = event_effects(world)
    return {"world": world, "effects": effects, "truth": effects["p_accept"].to_numpy(),
            "oracle": world_truth(world, oracle=True), "table": EventTable(world.events), "spec": per_page_spec()}


def _tuned_and_true(w: dict[str, Any], scorer: Any, objective: str, economics: Any) -> tuple[Any, Any]:
    from pcrules.decision_value import tune
    from pcrules.world import true_uplift

    tuned = tune(w["spec"], w["table"], scorer, economics=economics, truth=w["truth"], effects=w["effects"],
                 objective=objective, waits=[0, 30, 60, 120, 180, 300])
    return tuned, true_uplift(w["world"], tuned.result.offers, answers="expected")


def test_the_uplift_objective_chooses_more_true_uplift_than_the_accepts_objective(targeting_world: dict) -> None:
    """Tuned on a perfect model's P(accept) (what the runtime can see, needs_help unknown) and the world's
    per-event effects: optimising expected extra goals instead of expected accepts picks other waits and
    thresholds, and the world's own true ITT (pcrules.world.true_uplift, computed independently of the
    backtest) is far higher. The backtest's reported true ITT agrees with the world's within 10 %: both
    are exact expectations, the gap is the backtest valuing each visitor's first offer alone (a later
    offer within her window, and her other sessions converting anyway, are left out), not sampling error."""
    from pcrules.decision_value import Economics, policy_value

    w = targeting_world
    accepts, true_a = _tuned_and_true(w, w["oracle"], "accepts", Economics(1.0, 0.03))
    uplift, true_u = _tuned_and_true(w, w["oracle"], "uplift", Economics())
    assert accepts.choices != uplift.choices and accepts.objective == "accepts" and uplift.objective == "uplift"
    extra_a, extra_u = true_a.itt * true_a.n_visitors, true_u.itt * true_u.n_visitors  # extra converting visitors
    assert extra_u > 1.5 * extra_a > 0, (extra_u, extra_a)
    ma, mu = accepts.result.metrics, uplift.result.metrics
    assert mu["true_expected_uplift"] > ma["true_expected_uplift"]  # the backtest's own measure agrees
    assert ma["true_expected_accepts"] > mu["true_expected_accepts"]  # ... and the accepts objective got more chats
    for tuned, true in ((accepts, true_a), (uplift, true_u)):
        m = tuned.result.metrics
        assert m["eligible_visitors"] == true.n_visitors
        assert m["true_expected_uplift_itt"] == pytest.approx(true.itt, rel=0.10)
    # the value reported is the objective's: extra goals by the model's P(accept), for "uplift"
    assert uplift.value["value"] == pytest.approx(mu["expected_uplift"])
    assert uplift.value["expected_uplift"] == pytest.approx(mu["expected_uplift"])
    assert policy_value(uplift.result, Economics(), "truth", "uplift")["value"] == pytest.approx(
        mu["true_expected_uplift"])
    assert "true_expected_uplift" in uplift.table().columns


def test_the_uplift_objective_with_a_trained_model_is_not_worse(targeting_world: dict) -> None:
    """The same with the model trained on the legacy offers: its P(accept) is noisier, the gain smaller, but
    the uplift-optimised choice is not worse by the world's truth."""
    from pcrules.decision_value import Economics
    from pcrules.training import train_on_offers

    w = targeting_world
    scorer = train_on_offers(w["world"].offers).model.compile()
    _, true_a = _tuned_and_true(w, scorer, "accepts", Economics(1.0, 0.03))
    _, true_u = _tuned_and_true(w, scorer, "uplift", Economics())
    assert true_u.itt * true_u.n_visitors >= true_a.itt * true_a.n_visitors


def test_the_value_objective_and_bad_objectives(targeting_world: dict) -> None:
    from pcrules.decision_value import Economics, tune

    w = targeting_world
    econ = Economics(value_of_accept=-0.2, cost_of_offer=0.01, value_of_goal=1.0)  # a chat costs CSR time
    valued, _ = _tuned_and_true(w, w["oracle"], "value", econ)
    uplift, _ = _tuned_and_true(w, w["oracle"], "uplift", Economics())
    m = valued.result.metrics
    assert valued.value["value"] == pytest.approx(m["expected_uplift"] - 0.2 * m["expected_accepts"]
                                                  - 0.01 * m["offers"])
    assert m["offers"] < uplift.result.metrics["offers"]  # paying for chats and offers: fewer offers
    with pytest.raises(ValueError, match="objective 'uplift' needs effects"):
        tune(w["spec"], w["table"], w["oracle"], objective="uplift")
    with pytest.raises(ValueError, match="objective must be one of accepts, uplift, value"):
        tune(w["spec"], w["table"], w["oracle"], objective="revenue")
    with pytest.raises(ValueError, match="value_of_goal"):
        Economics(value_of_goal=float("nan"))
