"""The rule spec loader: strict, complete validation with every problem listed by its path."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pcrules
from pcrules.errors import PcrulesError, SpecError
from pcrules.spec import AnyOf, Condition, Hours, Policy, Queue, Rule, RuleSpec, load_spec

DEFAULT_RULES = Path(pcrules.__file__).resolve().parent / "default_rules.yaml"
DELETE = object()


def base() -> dict:
    """A small valid spec; each test changes one thing in a fresh copy."""
    return {
        "name": "test",
        "policy": {"max_offers_per_session": 1, "decline_cooldown_s": 600, "offer_timeout_s": 60, "holdout": 0.0},
        "queues": {
            "Billing": {
                "max_wait_s": 180,
                "capacity_per_hour": 40,
                "hours": {"tz": "Europe/Amsterdam", "days": ["mon", "tue", "wed", "thu", "fri"],
                          "start": "08:00", "end": "20:00"},
            },
            "Sales": {},
        },
        "rules": [
            {"name": "bill", "priority": 10,
             "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 300}},
             "offer": {"queue": "Billing",
                       "metadata": {"Page Name": "{page}", "Time spent on page": "{minutes} mins"}}},
            {"name": "plans", "priority": 5,
             "when": {"page": {"in": ["Plans", "Roaming"]}, "pages_viewed": {"gte": 3}},
             "offer": {"queue": "Sales"}},
        ],
    }


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def changed(path: str, value: Any, spec: dict | None = None) -> dict:
    """A copy of `spec` (default: base()) with the value at `path` ("rules[0].when.page") set, or deleted."""
    spec = copy.deepcopy(spec if spec is not None else base())
    steps = [int(i) if i else k for k, i in _STEP.findall(path)]
    node: Any = spec
    for step in steps[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(step, {})
        else:
            node = node[step]
    if value is DELETE:
        del node[steps[-1]]
    else:
        node[steps[-1]] = value
    return spec


def problems_of(source: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(source)
    return list(info.value.problems)


def paths_of(problems: list[str]) -> list[str]:
    return [p.split(": ", 1)[0] for p in problems]


# --------------------------------------------------------------------------- all problems at once


MANY = {
    "name": "many",
    "colour": "blue",
    "policy": {"holdout": 1.5, "offer_timeout_s": -5},
    "queues": {
        "Billing": {"max_wait_s": -1,
                    "hours": {"tz": "Mars/Olympus_Mons", "days": ["mon", "funday"], "start": "08:00", "end": "08:00"}},
    },
    "rules": [
        {"name": "a", "when": {"page": "Bill", "cart": "big"}, "offer": {"queue": "Billing"}},
        {"name": "a", "when": {"page": {"like": "Bill%"}}, "offer": {"queue": "Nope"}},
        {"name": "c",
         "when": {"seconds_on_page": {"gte": "five"}, "score": {"gte": 1.5}, "weekday": "monday",
                  "device": {"in": []}, "cart": {"gte": 3}},
         "offer": {"queue": "Billing", "default_ui": "yes", "metadata": {"Page": "{page.__class__}"}}},
        {"name": "d", "priority": "high", "colour": 1,
         "when": {"page": 5, "returning": {"exists": "yes"}, "pages_viewed": {"in": ["3", -1]}},
         "offer": {"queue": "Billing"}},
    ],
}

MANY_PATHS = [
    "colour",
    "policy.offer_timeout_s",
    "policy.holdout",
    "queues.Billing.max_wait_s",
    "queues.Billing.hours.tz",
    "queues.Billing.hours.days[1]",
    "queues.Billing.hours.end",
    "rules[1].name",
    "rules[1].when.page.like",
    "rules[1].offer.queue",
    "rules[2].when.seconds_on_page.gte",
    "rules[2].when.score.gte",
    "rules[2].when.weekday",
    "rules[2].when.device.in",
    "rules[2].when.cart.gte",
    "rules[2].offer.default_ui",
    "rules[2].offer.metadata.Page",
    "rules[3].colour",
    "rules[3].priority",
    "rules[3].when.page",
    "rules[3].when.returning.exists",
    "rules[3].when.pages_viewed.in[0]",
    "rules[3].when.pages_viewed.in[1]",
]


def test_one_spec_with_many_problems_lists_every_one_by_path():
    problems = problems_of(MANY)
    assert paths_of(problems) == MANY_PATHS
    assert 'rules[2].when.seconds_on_page.gte: expected a number >= 0, got "five"' in problems
    assert "rules[2].when.cart.gte: expected a string (as in rules[0].when.cart), got 3" in problems
    assert "rules[1].name: duplicate rule name 'a' (also rules[0])" in problems


def test_many_problems_from_yaml_text_and_from_a_file_give_the_same_list(tmp_path):
    text = yaml.safe_dump(MANY, sort_keys=False)
    assert paths_of(problems_of(text)) == MANY_PATHS
    path = tmp_path / "many.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert paths_of(list(info.value.problems)) == MANY_PATHS
    assert info.value.source == str(path)
    # The message names the file and lists every problem on its own line.
    message = str(info.value)
    assert str(path) in message and f"({len(MANY_PATHS)} problem(s))" in message
    assert all(f"  - {p}" in message for p in info.value.problems)


def test_spec_error_is_a_value_error_and_a_pcrules_error():
    with pytest.raises(ValueError):
        load_spec({"name": "x"})
    with pytest.raises(PcrulesError) as info:
        load_spec({"name": "x"})
    assert info.value.code == "invalid_spec"
    assert paths_of(list(info.value.problems)) == ["queues", "rules"]


# --------------------------------------------------------------------------- each kind of problem


CASES = [
    # unknown keys, at every level
    ("extra", 1, "extra", "unknown key"),
    ("policy.max_offers", 2, "policy.max_offers", "unknown key"),
    ("queues.Billing.colour", "red", "queues.Billing.colour", "unknown key"),
    ("queues.Billing.hours.timezone", "UTC", "queues.Billing.hours.timezone", "unknown key"),
    ("rules[0].prio", 1, "rules[0].prio", "unknown key"),
    ("rules[0].offer.ui", True, "rules[0].offer.ui", "unknown key"),
    # required keys
    ("name", DELETE, "name", "required"),
    ("queues", DELETE, "queues", "required"),
    ("rules", DELETE, "rules", "required"),
    ("rules[0].name", DELETE, "rules[0].name", "required"),
    ("rules[0].when", DELETE, "rules[0].when", "required"),
    ("rules[0].offer", DELETE, "rules[0].offer", "required"),
    ("rules[0].offer.queue", DELETE, "rules[0].offer.queue", "required"),
    ("queues.Billing.hours.tz", DELETE, "queues.Billing.hours.tz", "required"),
    ("queues.Billing.hours.start", DELETE, "queues.Billing.hours.start", "required"),
    # unknown queue (also when the queue is not even a string)
    ("rules[0].offer.queue", "Nope", "rules[0].offer.queue", "unknown queue"),
    ("rules[0].offer.queue", ["Billing"], "rules[0].offer.queue", "unknown queue"),
    ("rules[0].offer.queue", None, "rules[0].offer.queue", "unknown queue"),
    # unknown operator
    ("rules[0].when.seconds_on_page", {"greater": 5}, "rules[0].when.seconds_on_page.greater", "unknown operator"),
    ("rules[0].when.seconds_on_page", {"$gte": 5}, "rules[0].when.seconds_on_page.$gte", "unknown operator"),
    ("rules[0].when.page", {"regex": "B"}, "rules[0].when.page.regex", "unknown operator"),
    # wrong types
    ("name", 5, "name", "expected a name"),
    ("name", "has space", "name", "expected a name"),
    ("version", True, "version", "expected a string"),
    ("description", 5, "description", "expected a string"),
    ("rules[0].description", ["x"], "rules[0].description", "expected a string"),
    ("policy", "strict", "policy", "expected a mapping"),
    ("queues", ["Billing"], "queues", "expected a mapping"),
    ("queues", {}, "queues", "at least one queue"),
    ("queues", None, "queues", "got null"),
    ("queues.Billing", "fast", "queues.Billing", "expected a mapping"),
    ("queues.Billing.max_wait_s", "3 min", "queues.Billing.max_wait_s", "expected a number >= 0"),
    ("rules", {"bill": {}}, "rules", "expected a list"),
    ("rules", None, "rules", "expected a list"),
    ("rules[1]", "plans", "rules[1]", "expected a mapping"),
    ("rules[0].name", "", "rules[0].name", "non-empty string"),
    ("rules[0].name", 7, "rules[0].name", "non-empty string"),
    ("rules[0].priority", "high", "rules[0].priority", "expected an integer"),
    ("rules[0].priority", 1.5, "rules[0].priority", "expected an integer"),
    ("rules[0].priority", True, "rules[0].priority", "expected an integer"),
    ("rules[0].when", {}, "rules[0].when", "non-empty mapping"),
    ("rules[0].when", "page", "rules[0].when", "non-empty mapping"),
    ("rules[0].when.bad-field", 1, "rules[0].when.bad-field", "field names"),
    ("rules[0].when.1st", 1, "rules[0].when.1st", "field names"),
    ("rules[0].when.page\n", "x", "rules[0].when.page\n", "field names"),
    ("name", "default\n", "name", "expected a name"),
    ("rules[0].when." + "x" * 65, 1, "rules[0].when." + "x" * 65, "field names"),
    ("rules[0].when.page", {}, "rules[0].when.page", "empty condition"),
    ("rules[0].when.page", 5, "rules[0].when.page", "expected a string, got 5"),
    ("rules[0].when.page", None, "rules[0].when.page", "expected a string, number or boolean, got null"),
    ("rules[0].when.page", ["A", "B"], "rules[0].when.page", "{in: [...]}"),
    ("rules[0].when.page", {"gt": "A"}, "rules[0].when.page.gt", "expected a number"),
    ("rules[0].when.seconds_on_page", {"gte": "five"}, "rules[0].when.seconds_on_page.gte",
     'expected a number >= 0, got "five"'),
    ("rules[0].when.seconds_on_page", {"gte": True}, "rules[0].when.seconds_on_page.gte",
     "expected a number >= 0, got true"),
    ("rules[0].when.seconds_on_page", {"eq": "300"}, "rules[0].when.seconds_on_page.eq", "expected a number"),
    ("rules[0].when.seconds_on_page", {"gte": math.nan}, "rules[0].when.seconds_on_page.gte", "got NaN"),
    ("rules[0].when.seconds_on_page", {"gte": math.inf}, "rules[0].when.seconds_on_page.gte", "got Infinity"),
    ("rules[0].when.seconds_on_page", {"gte": 10**400}, "rules[0].when.seconds_on_page.gte", "expected a number"),
    ("rules[0].when.returning", "yes", "rules[0].when.returning", "expected a bool"),
    ("rules[0].when.returning", 1, "rules[0].when.returning", "expected a bool"),
    ("rules[0].when.ts", "2025-01-01", "rules[0].when.ts", "expected a number"),
    ("rules[0].when.cart", {"items": 3}, "rules[0].when.cart.items", "unknown operator"),
    ("rules[0].when.any_of", [], "rules[0].when.any_of", "non-empty list"),
    ("rules[0].when.any_of", {"page": "A"}, "rules[0].when.any_of", "non-empty list"),
    ("rules[0].when.any_of", [{"page": "A"}, {}], "rules[0].when.any_of[1]", "non-empty mapping"),
    ("rules[0].when.any_of", [{"page": "A"}, {"page": {"gt": "B"}}], "rules[0].when.any_of[1].page.gt",
     "expected a number"),
    ("rules[0].when.any_of", [{"any_of": [{"seconds_on_page": {"lt": -1}}]}],
     "rules[0].when.any_of[0].any_of[0].seconds_on_page.lt", "expected a number >= 0"),
    ("rules[0].offer", "Billing", "rules[0].offer", "expected a mapping"),
    ("rules[0].offer.default_ui", "yes", "rules[0].offer.default_ui", "expected true or false"),
    ("rules[0].offer.metadata", ["Page Name"], "rules[0].offer.metadata", "expected a mapping"),
    ("rules[0].offer.metadata.Page Name", 5, "rules[0].offer.metadata.Page Name", "text template"),
    ("rules[0].offer.metadata.Page Name", "x" * 1001, "rules[0].offer.metadata.Page Name", "at most 1000"),
    # negative (and zero where zero makes no sense) times and counts
    ("policy.decline_cooldown_s", -1, "policy.decline_cooldown_s", "expected a number >= 0, got -1"),
    ("policy.offer_timeout_s", 0, "policy.offer_timeout_s", "expected a number > 0, got 0"),
    ("policy.offer_timeout_s", -60, "policy.offer_timeout_s", "expected a number > 0"),
    ("policy.session_idle_ttl_s", 0, "policy.session_idle_ttl_s", "expected a number > 0"),
    ("policy.max_offers_per_session", -1, "policy.max_offers_per_session", "expected an integer >= 0"),
    ("policy.max_offers_per_session", 1.5, "policy.max_offers_per_session", "expected an integer >= 0"),
    ("queues.Billing.max_wait_s", -1, "queues.Billing.max_wait_s", "expected a number >= 0, got -1"),
    ("queues.Billing.capacity_per_hour", -40, "queues.Billing.capacity_per_hour", "expected a number >= 0"),
    ("rules[0].when.seconds_on_page", {"gte": -1}, "rules[0].when.seconds_on_page.gte",
     "expected a number >= 0, got -1"),
    ("rules[0].when.minutes_on_page", {"lt": -0.5}, "rules[0].when.minutes_on_page.lt", "expected a number >= 0"),
    ("rules[0].when.session_seconds", {"gt": -1}, "rules[0].when.session_seconds.gt", "expected a number >= 0"),
    ("rules[0].when.pages_viewed", {"in": [3, -1]}, "rules[0].when.pages_viewed.in[1]", "expected a number >= 0"),
    ("rules[0].when.hour", {"gte": -1}, "rules[0].when.hour.gte", "expected a number >= 0"),
    # holdout outside [0, 1)
    ("policy.holdout", 1.0, "policy.holdout", "expected a number >= 0 and < 1, got 1.0"),
    ("policy.holdout", 1.5, "policy.holdout", "< 1"),
    ("policy.holdout", -0.1, "policy.holdout", ">= 0"),
    ("policy.holdout", "10%", "policy.holdout", "expected a number"),
    ("policy.holdout", True, "policy.holdout", "expected a number"),
    # duplicate rule names
    ("rules[1].name", "bill", "rules[1].name", "duplicate rule name 'bill' (also rules[0])"),
    # score is a probability
    ("rules[0].when.score", {"gte": 1.5}, "rules[0].when.score.gte", "expected a number in [0, 1]"),
    ("rules[0].when.score", {"gte": -0.1}, "rules[0].when.score.gte", "expected a number >= 0"),
    ("rules[0].when.score", {"in": [0.5, 2]}, "rules[0].when.score.in[1]", "[0, 1]"),
    ("rules[0].when.score", {"gte": "high"}, "rules[0].when.score.gte", "expected a number"),
    # weekday values are mon..sun
    ("rules[0].when.weekday", "monday", "rules[0].when.weekday", "expected one of mon, tue"),
    ("rules[0].when.weekday", {"in": ["mon", "Tue"]}, "rules[0].when.weekday.in[1]", "expected one of"),
    ("rules[0].when.weekday", {"ne": 1}, "rules[0].when.weekday.ne", "expected a string"),
    ("rules[0].when.weekday", {"gte": "mon"}, "rules[0].when.weekday.gte", "expected a number"),
    # opening hours
    ("queues.Billing.hours", "9 to 5", "queues.Billing.hours", "expected a mapping"),
    ("queues.Billing.hours.tz", "Mars/Olympus_Mons", "queues.Billing.hours.tz", "unknown time zone"),
    ("queues.Billing.hours.tz", "", "queues.Billing.hours.tz", "unknown time zone"),
    ("queues.Billing.hours.tz", 1, "queues.Billing.hours.tz", "unknown time zone"),
    ("queues.Billing.hours.tz", "../../etc/passwd", "queues.Billing.hours.tz", "unknown time zone"),
    ("queues.Billing.hours.tz", "Europe/Amsterdam/", "queues.Billing.hours.tz", "unknown time zone"),
    ("queues.Billing.hours.tz", "Europe", "queues.Billing.hours.tz", "unknown time zone"),
    ("queues.Billing.hours.days", ["mon", "funday"], "queues.Billing.hours.days[1]", 'got "funday"'),
    ("queues.Billing.hours.days", ["Mon"], "queues.Billing.hours.days[0]", "expected one of mon"),
    ("queues.Billing.hours.days", [], "queues.Billing.hours.days", "non-empty list"),
    ("queues.Billing.hours.days", "weekdays", "queues.Billing.hours.days", "non-empty list"),
    ("queues.Billing.hours.days", ["mon", 1], "queues.Billing.hours.days[1]", "expected one of"),
    ("queues.Billing.hours.end", "08:00", "queues.Billing.hours.end", "end equals start"),
    ("queues.Billing.hours.start", "25:00", "queues.Billing.hours.start", 'expected a time "HH:MM"'),
    ("queues.Billing.hours.start", "8am", "queues.Billing.hours.start", 'expected a time "HH:MM"'),
    ("queues.Billing.hours.start", "24:00", "queues.Billing.hours.start", '"24:00" is only valid as an end'),
    ("queues.Billing.hours.end", "12:60", "queues.Billing.hours.end", 'expected a time "HH:MM"'),
    ("queues.Billing.hours.end", "24:01", "queues.Billing.hours.end", 'expected a time "HH:MM"'),
    ("queues.Billing.hours.end", 8.3, "queues.Billing.hours.end", 'expected a time "HH:MM"'),
    ("queues.Billing.hours.start", 480, "queues.Billing.hours.start", 'quote it: "08:00"'),
    # in / not_in need non-empty lists; exists takes booleans
    ("rules[0].when.page", {"in": []}, "rules[0].when.page.in", "non-empty list"),
    ("rules[0].when.page", {"in": "Plans"}, "rules[0].when.page.in", "non-empty list"),
    ("rules[0].when.page", {"not_in": []}, "rules[0].when.page.not_in", "non-empty list"),
    ("rules[0].when.page", {"not_in": None}, "rules[0].when.page.not_in", "non-empty list"),
    ("rules[0].when.page", {"in": ["Plans", None]}, "rules[0].when.page.in[1]", "got null"),
    ("rules[0].when.page", {"exists": "yes"}, "rules[0].when.page.exists", "expected true or false"),
    ("rules[0].when.page", {"exists": 1}, "rules[0].when.page.exists", "expected true or false"),
    ("rules[0].when.page", {"exists": None}, "rules[0].when.page.exists", "expected true or false"),
]


@pytest.mark.parametrize("path, value, where, fragment", CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in CASES])
def test_each_kind_of_problem_is_refused_alone_with_its_path(path, value, where, fragment):
    problems = problems_of(changed(path, value))
    assert paths_of(problems) == [where], problems
    assert fragment in problems[0], problems[0]


def test_every_bad_element_of_an_in_list_is_reported_not_only_the_first():
    problems = problems_of(changed("rules[0].when.page", {"in": [1, "ok", 2.5, None]}))
    assert paths_of(problems) == ["rules[0].when.page.in[0]", "rules[0].when.page.in[2]", "rules[0].when.page.in[3]"]


@pytest.mark.parametrize("template", [
    "{page.__class__}", "{page.__class__.__mro__}", "{page!r}", "{page!s}", "{0}", "{}", "{page:>10}",
    "{page[0]}", "{page:{minutes}}", "{ page }", "{page\n}", "{", "}", "Hi {page", "{__import__}x{page!a}",
])
def test_metadata_templates_refuse_anything_but_a_plain_field_name(template):
    problems = problems_of(changed("rules[0].offer.metadata.Page Name", template))
    assert paths_of(problems) == ["rules[0].offer.metadata.Page Name"]


@pytest.mark.parametrize("template", [
    "{page}", "{minutes} mins", "Seen {seconds}s on {page} (rule {rule}, queue {queue})", "{{literal}} {page}",
    "no placeholder at all", "", "{pages_viewed}{device}{_private_looking_but_plain}",
])
def test_metadata_templates_accept_plain_field_names_and_literal_braces(template):
    spec = load_spec(changed("rules[0].offer.metadata.Page Name", template))
    rule = next(r for r in spec.rules if r.name == "bill")
    assert dict(rule.metadata)["Page Name"] == template


# --------------------------------------------------------------------------- field types across rules


def test_a_field_compared_with_a_number_in_one_rule_and_a_string_in_another_is_refused():
    spec = base()
    spec["rules"][0]["when"]["cart"] = {"gte": 1}
    spec["rules"][1]["when"]["cart"] = "full"
    problems = problems_of(spec)
    assert problems == ["rules[1].when.cart: expected a number (as in rules[0].when.cart.gte), got \"full\""]


@pytest.mark.parametrize("first, second, where", [
    ({"in": [1, "a"]}, None, "rules[0].when.cart.in[1]"),
    (True, {"eq": 1}, "rules[1].when.cart.eq"),
    ({"ne": "x"}, {"lt": 3}, "rules[1].when.cart.lt"),
    ({"not_in": [1, 2]}, {"in": [True]}, "rules[1].when.cart.in[0]"),
])
def test_field_type_conflicts_within_and_across_rules(first, second, where):
    spec = base()
    spec["rules"][0]["when"]["cart"] = first
    if second is not None:
        spec["rules"][1]["when"]["cart"] = second
    assert paths_of(problems_of(spec)) == [where]


def test_consistent_field_types_load_and_are_recorded():
    spec = base()
    spec["rules"][0]["when"]["cart"] = {"gte": 1}
    spec["rules"][1]["when"]["cart"] = {"in": [2, 3.5]}
    spec["rules"][1]["when"]["campaign"] = {"exists": True}
    loaded = load_spec(spec)
    assert dict(loaded.field_types) == {"page": "string", "seconds_on_page": "number", "cart": "number",
                                        "pages_viewed": "number"}


def test_exists_accepts_both_booleans_on_any_field():
    spec = changed("rules[0].when.page", {"exists": True})
    spec["rules"][0]["when"]["coupon"] = {"exists": False}
    rule = next(r for r in load_spec(spec).rules if r.name == "bill")
    assert Condition("page", "exists", True) in rule.when
    assert Condition("coupon", "exists", False) in rule.when


# --------------------------------------------------------------------------- input forms


def test_yaml_text_a_dict_and_a_file_path_load_the_same_spec(tmp_path):
    text = yaml.safe_dump(base(), sort_keys=False)
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    from_dict = load_spec(base())
    for source in (text, str(path), path):
        loaded = load_spec(source)
        assert loaded.version == from_dict.version
        assert loaded.rules == from_dict.rules
        assert loaded.queues == from_dict.queues
        assert loaded.policy == from_dict.policy


def test_a_path_without_a_yaml_suffix_is_read_as_a_file(tmp_path):
    path = tmp_path / "rules.txt"
    path.write_text(yaml.safe_dump(base()), encoding="utf-8")
    assert load_spec(str(path)).version == load_spec(base()).version


def test_a_missing_file_is_a_spec_error_naming_it(tmp_path):
    missing = tmp_path / "nope.yaml"
    for source in (missing, str(missing)):
        problems = problems_of(source)
        assert len(problems) == 1 and problems[0].startswith("(file): cannot read") and str(missing) in problems[0]


def test_a_file_that_is_not_utf8_is_a_spec_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\nqueues: {Q: {}}\nrules: []\n".encode("latin-1"))
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith("(file): ") and "not UTF-8" in problems[0]


def test_a_spec_built_in_python_may_use_tuples_for_lists():
    spec = base()
    spec["rules"] = tuple(spec["rules"])
    spec["rules"][1]["when"]["page"] = {"in": ("Plans", "Roaming")}
    spec["queues"]["Billing"]["hours"]["days"] = ("mon", "tue", "wed", "thu", "fri")
    spec["rules"][0]["when"]["any_of"] = ({"device": "mobile"}, {"returning": True})
    loaded = load_spec(spec)
    assert loaded.rules[1].when[0] == Condition("page", "in", ("Plans", "Roaming"))
    assert load_spec(json.loads(json.dumps(spec))).version == loaded.version


def test_a_long_one_line_yaml_string_is_yaml_not_a_file_name():
    # Longer than any file name: asking the file system about it used to raise OSError (ENAMETOOLONG).
    raw = {"description": "d" * 300, **base()}
    text = json.dumps(raw)  # JSON is YAML; one line whose first "/"-separated part is over 255 characters
    assert "\n" not in text and len(text.split("/")[0]) > 255
    assert load_spec(text).version == load_spec(raw).version
    # A NUL in a one-line string is not a path either; it is then bad YAML, reported as such.
    assert problems_of("name: a\x00b")[0].startswith("(file):")


def test_a_yaml_syntax_error_names_its_line():
    text = (
        "name: broken\n"
        "queues:\n"
        "  Billing: {}\n"
        "rules:\n"
        "  - name: r\n"
        "    when: {page: [unclosed\n"
        "    offer: {queue: Billing}\n"
    )
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("(file): line ") and "not valid YAML" in problems[0]
    line = int(re.match(r"\(file\): line (\d+)", problems[0])[1])
    assert line in (6, 7)  # the flow sequence opened on line 6 fails where the parser notices it


def test_a_yaml_tab_indentation_error_names_line_3():
    problems = problems_of("name: x\nqueues:\n\tBilling: {}\nrules: []\n")
    assert problems[0].startswith("(file): line 3, column 1: not valid YAML")


def test_yaml_never_builds_python_objects():
    problems = problems_of('name: !!python/object/apply:os.system ["echo pwned"]\nqueues: {Q: {}}\nrules: []\n')
    assert problems[0].startswith("(file): line 1") and "not valid YAML" in problems[0]


def test_a_key_written_twice_in_yaml_is_refused_with_its_line_instead_of_silently_dropping_one():
    text = (
        "name: dup\n"
        "queues: {Billing: {}}\n"
        "rules:\n"
        "  - name: r\n"
        "    when:\n"
        "      seconds_on_page: {gte: 10}\n"
        "      seconds_on_page: {lte: 100}\n"
        "    offer: {queue: Billing}\n"
    )
    assert problems_of(text) == [
        '(file): line 7: duplicate key "seconds_on_page" (YAML would silently keep only the last one)']


def test_yaml_merge_keys_may_be_overridden_without_a_duplicate_complaint():
    text = (
        "name: merge\n"
        "queues: {Billing: {}}\n"
        "rules:\n"
        "  - name: r\n"
        "    when: {page: Bill Payment}\n"
        "    offer:\n"
        "      queue: Billing\n"
        "      metadata:\n"
        "        <<: &meta {Page Name: '{page}', Minutes: '{minutes}'}\n"
        "        Minutes: '{minutes} mins'\n"
    )
    rule = load_spec(text).rules[0]
    assert dict(rule.metadata) == {"Page Name": "{page}", "Minutes": "{minutes} mins"}


@pytest.mark.parametrize("source, fragment", [
    ("", "(spec): expected a mapping, got null"),
    ("just some words", '(spec): expected a mapping, got "just some words"'),
    ("- a\n- b\n", "(spec): expected a mapping, got list"),
    (5, "(spec): expected a file path, a YAML string or a mapping, got int"),
    ([("name", "x")], "(spec): expected a file path, a YAML string or a mapping, got list"),
    (None, "(spec): expected a file path, a YAML string or a mapping, got NoneType"),
])
def test_a_source_that_is_not_a_spec_at_all(source, fragment):
    assert problems_of(source) == [fragment]


# --------------------------------------------------------------------------- the unquoted time trap


def test_unquoted_times_yaml_reads_as_numbers_get_a_helpful_message():
    text = (
        "name: trap\n"
        "queues:\n"
        "  Billing:\n"
        "    hours: {tz: Europe/Amsterdam, start: 8:00, end: 20:00}\n"
        "rules: []\n"
    )
    problems = problems_of(text)
    assert problems == [
        'queues.Billing.hours.start: expected a time "HH:MM" in quotes, got the number 480: '
        'YAML reads an unquoted 8:00 as a base-60 number; quote it: "08:00"',
        'queues.Billing.hours.end: expected a time "HH:MM" in quotes, got the number 1200: '
        'YAML reads an unquoted 20:00 as a base-60 number; quote it: "20:00"',
    ]


def test_unquoted_08_00_is_text_to_yaml_and_loads():
    # PyYAML's base-60 rule does not apply to a leading zero, so `start: 08:00` is the string "08:00".
    text = "name: t\nqueues:\n  Q:\n    hours: {tz: UTC, start: 08:00, end: '17:30'}\nrules: []\n"
    hours = load_spec(text).queues["Q"].hours
    assert (hours.start_min, hours.end_min) == (8 * 60, 17 * 60 + 30)


# --------------------------------------------------------------------------- a valid spec


def test_a_valid_spec_loads_into_frozen_dataclasses():
    spec = load_spec(base())
    assert isinstance(spec, RuleSpec) and spec.name == "test"
    assert spec.policy == Policy(max_offers_per_session=1, decline_cooldown_s=600.0, offer_timeout_s=60.0, holdout=0.0)
    assert spec.queues["Billing"] == Queue("Billing", 180.0, 40.0, Hours("Europe/Amsterdam", frozenset({0, 1, 2, 3, 4}),
                                                                         8 * 60, 20 * 60))
    assert spec.queues["Sales"] == Queue("Sales")
    bill = spec.rules[0]
    assert bill == Rule(
        name="bill", priority=10,
        when=(Condition("page", "eq", "Bill Payment"), Condition("seconds_on_page", "gte", 300)),
        queue="Billing", default_ui=True,
        metadata=(("Page Name", "{page}"), ("Time spent on page", "{minutes} mins")), order=0,
    )
    assert spec.rules[1].when[0] == Condition("page", "in", ("Plans", "Roaming"))
    for obj, attr in [(spec, "name"), (spec.policy, "holdout"), (spec.queues["Billing"], "max_wait_s"),
                      (spec.queues["Billing"].hours, "tz"), (bill, "priority"), (bill.when[0], "value")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, None)
    assert isinstance(spec.rules, tuple) and isinstance(bill.when, tuple) and isinstance(bill.metadata, tuple)
    assert isinstance(spec.rules[1].when[0].value, tuple)  # an `in` list is frozen too
    assert spec.uses_score is False and spec.time_zones == ("Europe/Amsterdam", "UTC")


def test_missing_or_empty_policy_means_the_defaults():
    without = changed("policy", DELETE)
    assert load_spec(without).policy == Policy()
    assert load_spec(changed("policy", None)).policy == Policy()


def test_rules_are_ordered_strongest_first_then_by_file_order():
    spec = base()
    template = spec["rules"][0]
    spec["rules"] = [dict(copy.deepcopy(template), name=n, priority=p)
                     for n, p in [("a", 5), ("b", 10), ("c", 5), ("d", 10), ("e", 0), ("f", -3), ("g", 10)]]
    loaded = load_spec(spec)
    assert [r.name for r in loaded.rules] == ["b", "d", "g", "a", "c", "e", "f"]
    assert [r.order for r in loaded.rules] == [1, 3, 6, 0, 2, 4, 5]


def test_any_of_nests_into_branches():
    spec = changed("rules[0].when.any_of", [{"device": "mobile", "pages_viewed": {"gte": 5}}, {"returning": True}])
    rule = load_spec(spec).rules[0]
    any_of = rule.when[-1]
    assert any_of == AnyOf(((Condition("device", "eq", "mobile"), Condition("pages_viewed", "gte", 5)),
                            (Condition("returning", "eq", True),)))
    assert {c.field for c in rule.conditions()} == {"page", "seconds_on_page", "device", "pages_viewed", "returning"}


def test_holdout_bounds_zero_allowed_just_below_one_allowed():
    assert load_spec(changed("policy.holdout", 0)).policy.holdout == 0.0
    assert load_spec(changed("policy.holdout", 0.999)).policy.holdout == 0.999


def test_hours_may_span_midnight_and_end_at_24_00():
    late = load_spec(changed("queues.Billing.hours", {"tz": "UTC", "start": "22:00", "end": "02:00"}))
    assert (late.queues["Billing"].hours.start_min, late.queues["Billing"].hours.end_min) == (22 * 60, 2 * 60)
    assert late.queues["Billing"].hours.days == frozenset(range(7))  # days default to every day
    full = load_spec(changed("queues.Billing.hours", {"tz": "UTC", "start": "00:00", "end": "24:00"}))
    assert full.queues["Billing"].hours.end_min == 24 * 60


# --------------------------------------------------------------------------- the version


def test_version_is_a_stable_content_hash():
    a, b = load_spec(base()), load_spec(base())
    assert a.version == b.version and re.fullmatch(r"[0-9a-f]{12}", a.version)
    # Key order does not matter ...
    reordered = dict(reversed(list(base().items())))
    assert load_spec(reordered).version == a.version
    # ... any change in content does.
    seen = {a.version}
    for path, value in [("rules[0].when.seconds_on_page.gte", 301), ("policy.holdout", 0.05),
                        ("rules[0].offer.metadata.Page Name", "{page}!"), ("queues.Sales.max_wait_s", 60),
                        ("description", "same rules, new words"), ("version", "2")]:
        version = load_spec(changed(path, value)).version
        assert version not in seen, path
        seen.add(version)


def test_a_version_label_in_the_spec_does_not_replace_the_content_hash():
    one = load_spec(changed("version", "1"))
    edited = changed("version", "1")
    edited["rules"][0]["when"]["seconds_on_page"]["gte"] = 10
    assert load_spec(edited).version != one.version  # an edit without a bump still gets a new version
    assert one.version != "1"


def test_the_loaded_spec_does_not_follow_later_changes_to_the_callers_dict():
    raw = base()
    spec = load_spec(raw)
    raw["rules"][0]["when"]["seconds_on_page"]["gte"] = 1
    raw["policy"]["holdout"] = 0.5
    assert spec.source["rules"][0]["when"]["seconds_on_page"]["gte"] == 300
    assert spec.source["policy"]["holdout"] == 0.0
    assert load_spec(spec.source).version == spec.version


# --------------------------------------------------------------------------- regular expressions (`matches`)


@pytest.mark.parametrize("pattern", ["^(Support|FAQ|Contact)", "Bill", "^Bill Payment$", r"^Step \d+$", "Pay"])
def test_matches_takes_a_python_regex_meaning_re_search(pattern):
    spec = load_spec(changed("rules[0].when.page", {"matches": pattern}))
    assert Condition("page", "matches", pattern) in spec.rules[0].when
    assert spec.field_types["page"] == "string"


@pytest.mark.parametrize("pattern, fragment", [
    ("(", "not a valid regular expression"),
    ("[a-", "not a valid regular expression"),
    ("a{4294967296}", "not a valid regular expression"),
    ("(" * 495 + "a" + ")" * 495, "not a valid regular expression: it is nested too deeply"),
    ("(" * 1000 + "a" + ")" * 1000, "expected a regular expression of at most 1000 characters, got 2001"),
    (5, "expected a regular expression string"),
    ("", "expected a regular expression string"),
    (["Bill"], "expected a regular expression string"),
])
def test_matches_refuses_what_is_not_a_regex(pattern, fragment):
    problems = problems_of(changed("rules[0].when.page", {"matches": pattern}))
    assert paths_of(problems) == ["rules[0].when.page.matches"]
    assert fragment in problems[0]


@pytest.mark.parametrize("pattern", [
    r"(a)\1", r"(?<=Bill)Pay", r"Bill(?=Pay)", r"\bBill", "(?i)bill", "cart|basket", r"\d{3}", "[Cc]heckout",
])
def test_matches_accepts_every_pattern_python_compiles(pattern):
    # No durable_rules dialect to fit any more: the runtime evaluates the pattern with Python's re
    # (tests/test_matches.py).
    spec = load_spec(changed("rules[0].when.page", {"matches": pattern}))
    assert Condition("page", "matches", pattern) in spec.rules[0].when


def test_matches_on_a_number_field_is_a_type_problem():
    problems = problems_of(changed("rules[0].when.seconds_on_page", {"matches": "3"}))
    assert problems == ['rules[0].when.seconds_on_page.matches: expected a number >= 0, got "3"']


# --------------------------------------------------------------------------- the shipped default


def test_the_shipped_default_rules_load_and_compile():
    spec = load_spec(DEFAULT_RULES)
    assert spec.name == "default"
    assert [r.name for r in spec.rules] == ["checkout-hesitation", "bill-payment-stuck", "plans-comparison",
                                          "help-seeker", "likely-to-accept"]
    assert set(spec.queues) == {"Billing", "Sales", "Support"}
    assert spec.policy.holdout == 0.1 and spec.policy.offer_timeout_s == 60.0
    assert load_spec(DEFAULT_RULES).version == spec.version
    with pcrules.Runtime(spec) as runtime:  # compiles into durable_rules, regex included
        assert runtime.spec is spec


# --------------------------------------------------------------------------- never anything but SpecError


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        items = [(f"{prefix}.{k}" if prefix else k, v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(node)]
    else:
        return [prefix]
    out = [prefix] if prefix else []
    for path, value in items:
        out += _leaf_paths(value, path)
    return out


BASE_PATHS = _leaf_paths(base())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(BASE_PATHS), json_like)
def test_any_single_change_to_a_valid_spec_loads_or_is_refused_with_paths(path, value):
    try:
        spec = load_spec(changed(path, value))
    except SpecError as exc:
        assert exc.problems and all(": " in p for p in exc.problems)
    else:
        assert isinstance(spec, RuleSpec)


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_arbitrary_data_is_refused_with_a_spec_error_only(value):
    with pytest.raises(SpecError):
        load_spec({"name": "x", "queues": value, "rules": value} if isinstance(value, dict) else value)


def test_an_empty_list_is_called_empty() -> None:
    """Issue 17 item 9: the message read "expected a non-empty list, got list"."""
    with pytest.raises(SpecError) as err:
        load_spec({"name": "s", "queues": {"Q": {}}, "rules": [
            {"name": "r", "when": {"page": {"in": []}}, "offer": {"queue": "Q"}}]})
    assert "rules[0].when.page.in: expected a non-empty list, got an empty one" in str(err.value)


@pytest.mark.parametrize("where, spec", [
    ("queues.Q.hours.days", {"queues": {"Q": {"hours": {"tz": "UTC", "days": [], "start": "08:00", "end": "20:00"}}},
                             "rules": [{"name": "r", "when": {"page": "P"}, "offer": {"queue": "Q"}}]}),
    ("rules[0].when.any_of", {"queues": {"Q": {}}, "rules": [{"name": "r", "when": {"any_of": []},
                                                              "offer": {"queue": "Q"}}]}),
    ("policy.explore.waits", {"policy": {"explore": {"share": 0.1, "waits": []}}, "queues": {"Q": {}},
                              "rules": [{"name": "r", "when": {"page": "P"}, "offer": {"queue": "Q"}}]}),
])
def test_every_empty_list_is_called_empty(where: str, spec: dict) -> None:
    with pytest.raises(SpecError) as err:
        load_spec({"name": "s", **spec})
    line = next(line for line in str(err.value).splitlines() if where in line)
    assert "empty" in line and "got list" not in line, line
