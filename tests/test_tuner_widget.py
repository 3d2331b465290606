"""The trigger tuner's widget, driven without a browser (issue 17, item 7).

* A free-text field with a bad value (a capacity of "-5" or "abc", an empty or malformed ruleset name) is named
  next to the field as soon as it is typed; the bad value is never used (the figures keep the last valid one) and
  Publish and Check are off until it is corrected.
* Publish asks first: the question shows what changes (knob by knob and the YAML diff), the backtest's estimates
  of the live and the tuned ruleset and the guardrail's verdict; only "Confirm publish" writes a bundle, "Cancel"
  and a knob that moves meanwhile write nothing.
* After a publish the header names the new live bundle and ruleset version.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest

from pcrules.bundle import current_version, load_bundle, publish
from pcrules.tuning import Tuner

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RULES = ROOT / "pcrules" / "default_rules.yaml"
SAMPLE = ROOT / "data" / "sample_events.csv.gz"


@pytest.fixture(scope="module")
def world(worlds: Any) -> Any:
    return worlds(visitors=1500, seed=21, days=7)


@pytest.fixture(scope="module")
def scorer(world: Any) -> Any:
    from pcrules.training import train_on_offers

    return train_on_offers(world.offers).model.compile()


def _text(value: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", value))


def _shown(tuner: Tuner) -> bool:
    return tuner.confirmation.layout.display != "none"


def _versions(published: Path) -> list[str]:
    return sorted(p.name for p in (published / "versions").iterdir()) if (published / "versions").exists() else []


def test_a_bad_capacity_is_named_at_once_and_never_used(world: Any, scorer: Any, tmp_path: Path) -> None:
    tuner = Tuner(DEFAULT_RULES, world.events, scorer, bundle_dir=tmp_path / "published", chart=False)
    billing = tuner.capacity["Billing"]
    assert billing.continuous_update  # every keystroke reaches the kernel: no Enter, no leaving the field
    assert tuner.result.metrics["queues"]["Billing"]["capacity_per_hour"] == 40
    for bad in ("-5", "abc", "0"):
        billing.value = bad
        problem = _text(tuner.problems["capacity:Billing"].value)
        for words in ("capacity of queue Billing", "positive number of chats per hour", "empty for none",
                      repr(bad), "The figures keep 40"):
            assert words in problem, (bad, problem)
        assert "pcrules-invalid" in billing._dom_classes
        assert tuner.publish_button.disabled and tuner.check_button.disabled
        assert tuner.result.metrics["queues"]["Billing"]["capacity_per_hour"] == 40  # the bad value is not used
        assert "Publish and Check are off" in _text(tuner.message.value)
    for q in ("Sales", "Support"):  # the other fields say nothing
        assert tuner.problems[f"capacity:{q}"].value == ""
    # the other knobs still move the figures meanwhile, with the last valid capacity
    offers = tuner.result.metrics["offers"]
    tuner.set("help-seeker", wait_s=30.0)
    assert tuner.result.metrics["offers"] != offers
    assert tuner.result.metrics["queues"]["Billing"]["capacity_per_hour"] == 40
    # Publish and Check refuse even when called directly
    tuner.ask_publish()
    assert not _shown(tuner) and not (tmp_path / "published").exists()
    assert "Nothing was published" in _text(tuner.message.value)
    assert tuner.check() is None
    # corrected: the problem goes, the buttons come back, the value is used
    billing.value = "75"
    assert tuner.problems["capacity:Billing"].value == "" and "pcrules-invalid" not in billing._dom_classes
    assert not tuner.publish_button.disabled and not tuner.check_button.disabled
    assert tuner.last_error is None and tuner.message.value == ""
    assert tuner.result.metrics["queues"]["Billing"]["capacity_per_hour"] == 75
    billing.value = ""  # empty: no capacity, which is allowed
    assert tuner.problems["capacity:Billing"].value == ""
    assert tuner.result.metrics["queues"]["Billing"]["capacity_per_hour"] is None


def test_a_bad_ruleset_name_is_named_at_once(world: Any, tmp_path: Path) -> None:
    tuner = Tuner(DEFAULT_RULES, world.events.iloc[:20_000], None, bundle_dir=tmp_path / "published", chart=False)
    header = _text(tuner.header.value)
    assert "no bundle published yet" in header and "live:" not in header
    assert tuner.name.continuous_update
    for bad, words in (("   ", "The ruleset needs a name."), ("no spaces!", "Ruleset name: expected a name")):
        tuner.name.value = bad
        assert words in _text(tuner.problems["name"].value)
        assert tuner.publish_button.disabled and "pcrules-invalid" in tuner.name._dom_classes
    tuner.name.value = "tuned-1"
    assert tuner.problems["name"].value == "" and not tuner.publish_button.disabled and tuner.last_error is None


def test_publish_asks_first_and_only_confirm_writes(world: Any, scorer: Any, tmp_path: Path) -> None:
    published = tmp_path / "published"
    first = publish(DEFAULT_RULES, scorer, published).name
    tuner = Tuner.from_bundle(published, world.events, chart=False)
    header = _text(tuner.header.value)
    assert f"live: ruleset default {tuner.current.version}, bundle {first}" in header

    tuner.set("help-seeker", wait_s=60.0)
    tuner.capacity["Sales"].value = "75"
    tuner.ask_publish()
    assert _shown(tuner) and _versions(published) == [first]  # asked, nothing written
    question = _text(tuner.confirmation_html.value)
    assert f"in place of default {tuner.current.version} (bundle {first})" in question
    for line in ("-      gte: 120\n+      gte: 60", "-    capacity_per_hour: 60\n+    capacity_per_hour: 75"):
        assert line in question, line
    live, tuned = tuner.model.evaluate(tuner.model.initial).metrics, tuner.result.metrics
    row = re.search(r'data-estimate="offers"><td>offers</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>',
                    tuner.confirmation_html.value)
    assert row is not None and row.groups() == (f"{live['offers']:,}", f"{tuned['offers']:,}",
                                                f"{tuned['offers'] - live['offers']:+,}")
    assert 'data-estimate="expected_uplift"' in tuner.confirmation_html.value
    assert "Not checked against the log" in question  # no guardrail here: it says so

    tuner.cancel_publish()
    assert not _shown(tuner) and _versions(published) == [first] and "cancelled" in _text(tuner.message.value)

    tuner.ask_publish()
    tuner.set("help-seeker", wait_s=65.0)  # the question showed other knobs: withdrawn
    assert not _shown(tuner) and "nothing was published" in _text(tuner.message.value)
    assert tuner.confirm_publish() is None and _versions(published) == [first]

    tuner.ask_publish()
    path = tuner.confirm_publish()
    assert path is not None and not _shown(tuner) and current_version(published) == path.name
    bundle = load_bundle(published / "current")
    assert bundle.spec.version == tuner.current.version != load_bundle(published / "versions" / first).spec.version
    header = _text(tuner.header.value)
    assert f"live: ruleset default {bundle.spec.version}, bundle {path.name}" in header
    assert first not in header
    assert "it is now current" in _text(tuner.message.value)

    # Reset goes back to the live ruleset's knobs: the one just published, not the one the tuner opened with
    tuner.set("help-seeker", wait_s=200.0)
    tuner.on_reset()
    assert tuner.settings_or_initial() == tuner._current_settings != tuner.model.initial
    assert tuner.settings_or_initial().rules["help-seeker"].wait_s == 65.0


def test_the_question_shows_the_guardrail_and_the_override(world: Any, scorer: Any, tmp_path: Path) -> None:
    from pcrules.tuning import load_for_tuning

    published = tmp_path / "published"
    first = publish(DEFAULT_RULES, scorer, published).name
    tuner = load_for_tuning(SAMPLE, published).tuner(chart=False, n_boot=50)
    assert tuner.feedback is not None and tuner.guardrail
    tuner.capacity["Billing"].value = "75"  # no change in what is offered: the log cannot show it better
    tuner.ask_publish()
    assert not _shown(tuner) and "the log does not support this ruleset" in _text(tuner.message.value)
    tuner.override.value = True
    tuner.ask_publish()
    question = _text(tuner.confirmation_html.value)
    for words in ("Checked against the log", "interval", "Publish refuses it", "the override is recorded"):
        assert words in question, words
    tuner.override.value = False  # the question assumed the override: withdrawn
    assert not _shown(tuner)
    tuner.override.value = True
    tuner.ask_publish()
    path = tuner.confirm_publish()
    assert path is not None and _versions(published) == sorted([first, path.name])
    assert load_bundle(path).metrics["guardrail"]["override"]["reasons"]
