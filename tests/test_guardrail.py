"""Publish's guardrail (pcrules.analysis.guardrail, issue 16 item 5): a candidate ruleset is checked against the
log before it replaces the current one, and the tuner's Publish obeys it.

On a generated world whose history is what a deployed pcrules logged (legacy_spec(): production waits per page,
10 % of sessions exploring, a 10 % holdout, every offer with its propensity), judged by the world's truth:

* a candidate worse by the truth is refused, with the figures in a sentence;
* the current ruleset is not "better than itself";
* a clearly better candidate has a positive estimated gain (and passes, when the interval shows it);
* a candidate whose offers the log never covers (a queue open at night, when the logging ruleset never offered)
  is refused for support;
* no logged feedback: refused with the sentence that says so;
* the tuner: the check runs on demand and at Publish, never on a knob's change; a refusal publishes nothing and
  says why; the override publishes and the manifest records who, when, what was overridden and the figures.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pcrules import load_spec
from pcrules.analysis.backtest import backtest
from pcrules.analysis.guardrail import NO_FEEDBACK, GuardrailVerdict, check
from pcrules.world import LEGACY_WAITS, legacy_spec

NOT_BETTER = "not shown to be better than the current ruleset"
FIGURES = re.compile(r"^[+\u2212][\d,.]+ accepted chats \(95 % interval [+\u2212][\d,.]+ to [+\u2212][\d,.]+\): "
                     + NOT_BETTER + "$")


def production(name: str, wait: Any = None, *, night_queue: bool = False) -> dict:
    """The logging ruleset's production rules (no exploration) with other waits: `wait` a number, or a function
    of the page (None: the logged waits). `night_queue`: its queue takes chats around the clock."""
    spec = legacy_spec(explore=0)
    spec["name"] = name
    for rule in spec["rules"]:
        page = rule["when"]["page"]
        w = LEGACY_WAITS[page] if wait is None else wait(page) if callable(wait) else wait
        rule["when"]["seconds_on_page"]["gte"] = w
    if night_queue:  # every queue takes chats around the clock (the log's billing and sales queues close)
        spec["queues"] = {name: {} for name in spec["queues"]}
    return spec


CURRENT = production("current")
WORSE = production("worse", 600)  # offers only to visitors who stay ten minutes on a page
BETTER = production("better", 0)  # offers at once: more offers, more accepted chats (by the truth)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(worlds: Any) -> Any:
    return worlds(visitors=20_000, seed=1601)


@pytest.fixture(scope="module")
def fb(world: Any) -> Any:
    from pcrules.analysis.feedback import feedback

    out = feedback(legacy_spec(), world.events, world.offers)
    assert out.mismatched == 0  # the logging ruleset reproduces every logged offer
    return out


@pytest.fixture(scope="module")
def scorer(world: Any) -> Any:
    from pcrules.training import train_on_offers

    return train_on_offers(world.offers).model.compile()


@pytest.fixture(scope="module")
def truth(world: Any) -> dict[str, float]:
    """True expected accepted chats of each ruleset on the world's events."""
    from pcrules.analysis.value import world_truth

    p = world_truth(world)
    return {spec["name"]: backtest(spec, world.events, truth=p).metrics["true_expected_accepts"]
            for spec in (CURRENT, WORSE, BETTER)}


def figures_sentence(verdict: GuardrailVerdict) -> str:
    return next(r for r in verdict.reasons if NOT_BETTER in r)


# --------------------------------------------------------------------------------------------- check


def test_a_worse_candidate_is_refused_with_its_figures(fb: Any, scorer: Any, truth: dict[str, float]) -> None:
    assert truth["worse"] < 0.5 * truth["current"]  # far worse by the truth
    for model, estimator in ((None, "snips"), (scorer, "dr")):
        verdict = check(fb, WORSE, CURRENT, model)
        assert not verdict.ok and verdict.estimator == estimator and verdict.checked
        sentence = figures_sentence(verdict)
        assert FIGURES.match(sentence), sentence
        d = verdict.difference[estimator]
        assert d.value < 0 and d.interval.high < 0  # the log says worse, with its interval
        assert sentence.startswith(f"\u2212{abs(d.value):,.0f} accepted chats")
        # the sentence is shown where a person reads it, the model's own estimate beside the log's
        assert sentence.replace("'", "&#x27;") in verdict.html() and sentence in verdict.summary()
        assert ("no model" in verdict.html()) == (model is None)
        if model is not None:
            assert "dm" in verdict.candidate.estimates and verdict.figures()["candidate"]["model"] is not None


def test_the_current_ruleset_is_not_better_than_itself(fb: Any, scorer: Any) -> None:
    for model in (None, scorer):
        verdict = check(fb, CURRENT, CURRENT, model)
        assert not verdict.ok
        d = verdict.difference[verdict.estimator]
        assert d.value == 0 and d.interval.low == d.interval.high == 0
        assert figures_sentence(verdict) == "+0.0 accepted chats (95 % interval +0.0 to +0.0): " + NOT_BETTER
        assert verdict.candidate.unsupported_offer_share <= 0.05  # refused for the gain, not for support


def test_a_clearly_better_candidate(fb: Any, scorer: Any, truth: dict[str, float]) -> None:
    assert truth["better"] > truth["current"] + 100  # better by the truth
    verdict = check(fb, BETTER, CURRENT, scorer)
    d = verdict.difference["dr"]
    assert d.value > 0  # the log's point estimate of the gain is positive ...
    assert verdict.candidate.unsupported_offer_share <= 0.05  # ... on offers the log covers
    assert verdict.ok or verdict.reasons == (figures_sentence(verdict),)  # at worst, not shown within its interval
    if verdict.ok:
        assert verdict.reasons == () and d.interval.low > 0 and "supports publishing" in verdict.html()
    # the log alone says the same of the point estimate
    assert check(fb, BETTER, CURRENT).difference["snips"].value > 0


def test_a_candidate_outside_the_logs_support_is_refused(fb: Any, truth: dict[str, float]) -> None:
    """The logging ruleset never offered outside its chat hours: a queue open at night is outside support,
    however good its night offers may be."""
    night = production("night", night_queue=True)
    verdict = check(fb, night, CURRENT)
    share = verdict.candidate.unsupported_offer_share
    assert share > 0.05 and not verdict.ok
    reason = next(r for r in verdict.reasons if "outside the log's support" in r)
    assert reason.startswith(f"{100 * share:.1f} % of the candidate's offers (")
    assert "more than the 5 % allowed" in reason
    # the threshold is the caller's
    assert not any("outside the log's support" in r for r in check(fb, night, CURRENT, max_unsupported=0.9).reasons)


def test_no_feedback_is_refused_with_the_sentence() -> None:
    verdict = check(None, BETTER, CURRENT)
    assert not verdict.ok and verdict.reasons == (NO_FEEDBACK,) and not verdict.checked
    assert NO_FEEDBACK == "the history carries no logged propensities: the candidate cannot be checked against the log"
    assert NO_FEEDBACK in verdict.html() and NO_FEEDBACK in verdict.summary()
    record = json.loads(json.dumps(verdict.to_dict()))
    assert record["ok"] is False and record["reasons"] == [NO_FEEDBACK] and record["candidate"] is None


def test_the_verdict_for_the_manifest_is_plain_json(fb: Any, scorer: Any) -> None:
    verdict = check(fb, WORSE, CURRENT, scorer, n_boot=100)
    record = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert record["estimator"] == "dr" and record["n_boot"] == 100 and record["reasons"] == list(verdict.reasons)
    for side in ("candidate", "current"):
        report = getattr(verdict, side)
        assert record[side]["estimates"]["dr"]["low"] == pytest.approx(report.estimates["dr"].interval.low)
        assert record[side]["effective_sample_size"] == pytest.approx(report.effective_sample_size)
        assert record[side]["unsupported_offer_share"] == pytest.approx(report.unsupported_offer_share)
    assert record["difference"]["dm"]["value"] == pytest.approx(verdict.difference["dm"].value)
    with pytest.raises(ValueError, match="max_unsupported"):
        check(fb, WORSE, CURRENT, max_unsupported=1.5)


def test_history_feedback(world: Any, tmp_path: Path) -> None:
    from pcrules import analysis
    from pcrules.analysis.explore import History, history_feedback

    small = world.events[world.events["visitor_id"] < "v000300"]
    offers = world.offers[world.offers["visitor_id"] < "v000300"]
    generated = History(small, offers=offers, source="world", generated=True)
    fb = history_feedback(generated)  # a generated world: its own logging ruleset
    assert fb.spec.name == "legacy" and fb.mismatched == 0 and fb.n > 0
    real = History(small, offers=offers, source="real")
    with pytest.raises(ValueError, match="no logging ruleset was given"):
        history_feedback(real)
    path = tmp_path / "logging.yaml"
    import yaml

    path.write_text(yaml.safe_dump(legacy_spec()))
    assert history_feedback(real, path).n == fb.n  # real history with the ruleset that logged it
    assert history_feedback(real, str(path)).n == fb.n
    with pytest.raises(ValueError, match="no offers table"):
        history_feedback(History(small, source="events only"))
    with pytest.raises(ValueError, match="carry no propensity"):
        history_feedback(History(small, offers=offers.drop(columns=["propensity"]), source="old", generated=True))
    assert analysis.history_feedback is history_feedback


# --------------------------------------------------------------------------------------------- the tuner


def _text(value: str) -> str:
    import html

    return html.unescape(re.sub(r"<[^>]+>", " ", value))


def test_the_tuner_checks_on_demand_and_publish_obeys(world: Any, fb: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import pcrules.analysis.tuner_widget as tw
    from pcrules.bundle import current_version, load_bundle
    from pcrules.tuning import Tuner

    calls = []
    real_check = tw.check

    def counted(*args: Any, **kwargs: Any) -> GuardrailVerdict:
        calls.append(args[1].version)
        return real_check(*args, **kwargs)

    monkeypatch.setattr(tw, "check", counted)
    published = tmp_path / "published"
    tuner = Tuner(load_spec(CURRENT), world.events, None, feedback=fb, bundle_dir=published, chart=False)
    assert tuner.guardrail and "Check against the log" in tuner.check_button.description
    assert tw.OVERRIDE_LABEL == "Publish anyway: I accept that the log does not support this ruleset"
    assert tuner.override.description == tw.OVERRIDE_LABEL and not tuner.override.value
    # knobs move: the figures follow, the log is not consulted (no bootstrap on the per-change path)
    with tuner.hold():
        for rule in tuner.controls:
            tuner.controls[rule]["wait"].value = 600.0
    tuner.set("legacy-home", wait_s=590.0)
    tuner.set("legacy-home", wait_s=600.0)
    assert calls == []
    # on demand: the panel shows both rulesets' estimates, intervals, ESS and support, and the refusal
    verdict = tuner.on_check()
    assert len(calls) == 1 and not verdict.ok
    panel = _text(tuner.guardrail_html.value)
    for text in ("Checked against the log", "effective sample", "outside the log's support", "candidate − current",
                 "Publish refuses it", figures_sentence(verdict)):
        assert text in panel, text
    assert "pcrules-guardrail-table" in tuner.guardrail_html.value
    # Publish refuses it: nothing is written, the reasons are the message (a sentence, no traceback)
    assert tuner.on_publish() is None and len(calls) == 1  # the check of these settings is reused
    message = _text(tuner.message.value)
    assert message.strip().startswith("Nothing was published: the log does not support this ruleset")
    assert figures_sentence(verdict) in message and tw.OVERRIDE_LABEL in message and message.strip().endswith(".")
    assert "Traceback" not in message and not published.exists()
    # a knob moves: the check is stale, said so, and not recomputed
    tuner.set("legacy-faq", wait_s=590.0)
    assert "knobs moved since the last check" in _text(tuner.guardrail_html.value) and len(calls) == 1
    tuner.set("legacy-faq", wait_s=600.0)
    assert "Publish refuses it" in _text(tuner.guardrail_html.value)  # back at the checked settings
    # the override publishes, and the manifest records who, when, what was overridden and the figures
    tuner.override.value = True
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    path = tuner.on_publish()
    assert path is not None and current_version(published) == path.name and tuner.last_error is None
    assert "overridden by" in _text(tuner.message.value)
    assert not tuner.override.value  # one override, one publish
    record = load_bundle(published / "current").metrics["guardrail"]
    assert record["ok"] is False and record["checked"] is True and record["reasons"] == list(verdict.reasons)
    override = record["override"]
    assert override["by"] == getpass.getuser() and override["reasons"] == list(verdict.reasons)
    assert before <= dt.datetime.fromisoformat(override["at"]) <= dt.datetime.now(dt.UTC)
    assert override["figures"]["difference"]["log"]["value"] == pytest.approx(verdict.difference["snips"].value)
    assert override["figures"]["candidate"]["unsupported_offer_share"] == pytest.approx(
        verdict.candidate.unsupported_offer_share)
    assert record["candidate"]["effective_sample_size"] == pytest.approx(verdict.candidate.effective_sample_size)


def test_a_publish_the_log_supports_records_its_figures(world: Any, fb: Any, tmp_path: Path) -> None:
    from pcrules.bundle import load_bundle
    from pcrules.tuning import Tuner

    published = tmp_path / "published"
    tuner = Tuner(load_spec(WORSE), world.events, None, feedback=fb, bundle_dir=published, chart=False)
    with tuner.hold():  # from ten minutes on every page back to the logged waits: clearly better
        for rule in tuner.spec.rules:
            tuner.controls[rule.name]["wait"].value = float(LEGACY_WAITS[_page_of(rule)])
    path = tuner.on_publish()
    assert path is not None, tuner.message.value
    assert "The log supports it" in _text(tuner.message.value)
    record = load_bundle(path).metrics["guardrail"]
    assert record["ok"] is True and record["override"] is None and record["reasons"] == []
    assert record["difference"]["snips"]["low"] > 0 and record["estimator"] == "snips"
    assert np.isfinite(record["candidate"]["estimates"]["snips"]["value"])


def _page_of(rule: Any) -> str:
    return next(c.value for c in rule.conditions() if c.field == "page")


def test_without_feedback_publish_needs_the_override(world: Any, tmp_path: Path) -> None:
    from pcrules.bundle import load_bundle
    from pcrules.tuning import Tuner

    published = tmp_path / "published"
    tuner = Tuner(load_spec(CURRENT), world.events.iloc[:20_000], None, feedback=None, guardrail=True,
                  feedback_note="real history: no logging ruleset was given", bundle_dir=published, chart=False)
    assert "no logging ruleset was given" in _text(tuner.guardrail_html.value)
    tuner.set("legacy-home", wait_s=30.0)
    assert tuner.on_publish() is None and not published.exists()
    assert NO_FEEDBACK in _text(tuner.message.value)
    tuner.override.value = True
    path = tuner.on_publish()
    assert path is not None
    record = load_bundle(path).metrics["guardrail"]
    assert record["checked"] is False and record["override"]["reasons"] == [NO_FEEDBACK]
    assert any("no logging ruleset was given" in n for n in record["notes"])
