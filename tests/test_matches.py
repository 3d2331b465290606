"""`matches` means Python's ``re.search``, in the runtime (durable_rules) and in the backtest alike.

The runtime never hands a pattern to durable_rules' ``$mt`` (another dialect:
notes/durable-rules.md #11). Each distinct (field, pattern) of the spec is a
derived boolean fact field, computed with ``spec.compile_pattern(p).search``
before the fact is posted; the durable_rules rule tests that field for
``true``. The backtest runs the same compiled pattern. So every pattern Python
compiles is accepted, and a corpus of patterns x strings must give exactly
``re.search``'s answer through ``DurableMatcher``, ``VectorMatcher``,
``Runtime.observe`` and ``backtest``. A value that is missing, null or not
text fails the condition.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import durable_rules_engine as engine
import pandas as pd
import pytest

import pcrules
from pcrules import SpecError, load_spec
from pcrules.backtest import backtest
from pcrules.events import validate_event
from pcrules.matching.durable import DurableMatcher, compile_ruleset, fact_fields, pattern_flags
from pcrules.matching.vector import match_records
from pcrules.spec import MAX_PATTERN_CHARS, compile_pattern

T0 = 1767614400.0  # Monday 2026-01-05 12:00 UTC

# The translator refused the first block outright (durable_rules' own compiler answers wrongly on them).
PATTERNS = [
    "cart|basket", r"\d{3}", "[Cc]heckout", "(?i)checkout", "aca", "/de/", "..", "[^a]", "a.b", r"\bBill",
    r"(a)\1", r"(?<=Bill)Pay", r"Bill(?=Pay)", r"\s", r"^\w+$", "(?a)^\\w+$", "%d", "x*",
    # anchors, classes, alternation, unicode
    "^/checkout", r"\.pdf$", "^$", "^/$", r"^/product/\d+", r"^(Support|FAQ|Contact)$", "colou?r", "^[A-C]",
    "é", "日本", "😀", r"^\d+$",
]
SUBJECTS: list[Any] = [
    "cart", "my cartb", "basket", "checkout", "Checkout", "CHECKOUT", "/checkout/step2", "/en/checkout",
    "a.pdf", "a.pdfx", "", "/", "//", "abc_1", "ab c", "é", "café", "日本語のページ", "hi 😀", "123", "x12", "٣٣٣",
    "acac", "/de/x", "a", "aa", "axb", "Bill Payment", "BillPay", "a\u00a0b", "colour", "color", "FAQ",
    "Support page", "%d", "/product/42", "Bob",
    # not text: fail like a missing value
    123, 7.5, True,
]


def _when(pattern: str) -> dict:
    return {"ref": {"matches": pattern}}


def _spec(pattern: str) -> pcrules.RuleSpec:
    return load_spec({"name": "m", "queues": {"Q": {}},
                      "rules": [{"name": "r", "when": _when(pattern), "offer": {"queue": "Q"}}]})


def _event(i: int, value: Any = None, *, missing: bool = False) -> dict:
    ev = {"visitor_id": f"v{i}", "session_id": f"s{i}", "page": "Home", "seconds_on_page": 5.0, "ts": T0 + i}
    if not missing:
        ev["ref"] = value
    return ev


def _python(pattern: str, value: Any) -> bool:
    return isinstance(value, str) and re.search(pattern, value) is not None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_matches_answers_like_re_search_in_runtime_and_backtest(pattern: str) -> None:
    spec = _spec(pattern)
    events = [_event(i, s) for i, s in enumerate(SUBJECTS)]
    events += [_event(len(events), missing=True), _event(len(events) + 1, None)]  # missing, null
    expected = [_python(pattern, e.get("ref")) for e in events]
    assert any(expected) and not all(expected), "each pattern should match some subjects and miss others"
    matcher = DurableMatcher(spec)
    try:
        runtime = [bool(matcher.match(validate_event(e, lambda: 0.0).fields, None).full) for e in events]
    finally:
        matcher.close()
    vector = [bool(m.full) for m in match_records(spec, events)]
    wrong = [(e.get("ref"), want, got) for e, want, got in zip(events, expected, runtime) if want != got]
    assert wrong == [], f"runtime differs from re.search: {wrong}"
    assert vector == expected


def test_flags_are_pythons_defaults_unicode_and_case_sensitive() -> None:
    assert compile_pattern(r"\d").search("٣") is not None  # as re.search: Unicode digits
    assert compile_pattern(r"\w").search("é") is not None
    assert compile_pattern("(?a)\\d").search("٣") is None  # ASCII classes are the analyst's opt-in
    assert compile_pattern("a").search("A") is None
    assert compile_pattern("(?i)a").search("A") is not None
    assert compile_pattern(r"\d{3}") is compile_pattern(r"\d{3}")  # both backends share one compiled pattern


def test_a_spec_whose_only_condition_is_matches_offers_through_durable_rules() -> None:
    spec = load_spec({"name": "m", "queues": {"Sales": {}},
                      "rules": [{"name": "basket", "when": {"page": {"matches": "cart|basket"}},
                                 "offer": {"queue": "Sales", "metadata": {"Page Name": "{page}"}}}]})
    ruleset = compile_ruleset(spec)
    assert "$mt" not in json.dumps(ruleset)
    assert ruleset["f0"]["all"][0]["m"]["$and"][1] == {"m0": True}  # durable_rules tests the derived flag
    fields = {"visitor_id": "v", "session_id": "s", "page": "Your cartb", "seconds_on_page": 1.0, "ts": T0}
    view = fact_fields(spec, fields, None)
    assert view["m0"] is True and view["f_page"] == "Your cartb"
    matcher = DurableMatcher(spec)
    try:
        assert matcher.fired(dict(view)) == ["f0"]
        assert matcher.fired({k: v for k, v in view.items() if k != "m0"}) == []  # the engine decides on the flag
    finally:
        matcher.close()
    with pcrules.Runtime(spec) as runtime:  # whose matcher is a DurableMatcher
        d = runtime.observe(fields)
        assert d.action == "offer" and d.rule == "basket" and d.metadata == {"Page Name": "Your cartb"}
        assert runtime.observe({**fields, "session_id": "s2", "page": "Home"}).reason == "no_rule"


def test_each_field_pattern_and_time_zone_gets_its_own_flag() -> None:
    spec = load_spec({"name": "m", "queues": {"Q": {}, "Amsterdam": {"hours": {
        "tz": "Europe/Amsterdam", "start": "00:00", "end": "24:00"}}}, "rules": [
        {"name": "a", "when": {"page": {"matches": "^B"}, "device": {"matches": "^B"}}, "offer": {"queue": "Q"}},
        {"name": "b", "when": {"page": {"matches": "ment$"}}, "offer": {"queue": "Q"}},
        {"name": "c", "when": {"weekday": {"matches": "mon"}}, "offer": {"queue": "Amsterdam"}},
        {"name": "d", "when": {"weekday": {"matches": "mon"}, "page": {"matches": "^B"}}, "offer": {"queue": "Q"}},
    ]})
    assert len(pattern_flags(spec)) == 5  # page ^B, device ^B, page ment$, weekday mon in Amsterdam and in UTC
    # Monday 23:30 UTC is Tuesday 00:30 in Amsterdam.
    fields = {"visitor_id": "v", "session_id": "s", "page": "Bill Payment", "device": "desktop",
              "seconds_on_page": 1.0, "ts": T0 + 11.5 * 3600}
    view = fact_fields(spec, fields, None)
    assert sorted(k for k in view if re.fullmatch(r"m\d+", k)) == ["m0", "m2", "m4"]
    matcher = DurableMatcher(spec)
    try:
        got = [r.name for r in matcher.match(fields, None).full]
    finally:
        matcher.close()
    assert got == ["b", "d"] == [r.name for r in match_records(spec, [fields])[0].full]


def test_runtime_and_backtest_decide_alike_on_matches_rules() -> None:
    spec = load_spec({"name": "m", "policy": {"holdout": 0.0}, "queues": {"Sales": {}, "Support": {}},
                      "rules": [
                          {"name": "basket", "priority": 3, "when": {"page": {"matches": "cart|basket"}},
                           "offer": {"queue": "Sales"}},
                          {"name": "ref-digits", "priority": 2, "when": {"ref": {"matches": r"\d{3}"}},
                           "offer": {"queue": "Sales"}},
                          {"name": "help", "priority": 1,
                           "when": {"page": {"matches": "(?i)^(support|faq)"}, "ref": {"matches": "^$|x"}},
                           "offer": {"queue": "Support"}},
                      ]})
    pages = ["Cart", "my cart", "basket/2", "Support", "faq", "FAQ page", "Home", "日本 cart", "Checkout"]
    refs: list[Any] = ["", "x", "123", "٣٣٣", "ab", 456, None, "missing"]
    events = []
    for i, (page, ref) in enumerate(itertools.product(pages, refs)):
        ev = {"visitor_id": f"v{i}", "session_id": f"s{i}", "page": page, "seconds_on_page": 10.0, "ts": T0 + i}
        if ref != "missing":
            ev["ref"] = ref
        events.append(ev)
    with pcrules.Runtime(spec, clock=lambda: T0) as runtime:
        live = [(d.action.value, d.rule) for d in map(runtime.observe, events)]

    def oracle(ev: dict) -> str | None:
        ref = ev.get("ref")
        if _python("cart|basket", ev["page"]):
            return "basket"
        if _python(r"\d{3}", ref):
            return "ref-digits"
        if _python("(?i)^(support|faq)", ev["page"]) and _python("^$|x", ref):
            return "help"
        return None

    assert [rule for _, rule in live] == [oracle(e) for e in events]
    assert {rule for _, rule in live} == {"basket", "ref-digits", "help", None}
    frame = pd.DataFrame.from_records(events)
    for how in ("fast", "policy"):
        d = backtest(spec, frame, engine=how).decisions  # one row per event, in the input's order
        got = [(a, None if r is None or r != r else r)
               for a, r in zip(d["action"].astype(str), d["rule"].astype(object))]
        assert got == live, how


# --------------------------------------------------------------------------------------------- the spec


def problems(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(raw)
    return list(info.value.problems)


def _rules(*whens: dict) -> dict:
    return {"name": "m", "queues": {"Q": {}},
            "rules": [{"name": f"r{i}", "when": w, "offer": {"queue": "Q"}} for i, w in enumerate(whens)]}


@pytest.mark.parametrize("pattern", ["cart|basket", r"\d{3}", "[Cc]heckout", "(?i)checkout", r"(a)\1",
                                     r"(?<=Bill)Pay", r"\bBill", "(?u)\\w", "a" * MAX_PATTERN_CHARS])
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    assert load_spec(_rules(_when(pattern))).rules[0].when[0].value == pattern


def test_bad_patterns_are_refused_each_by_its_path() -> None:
    found = problems(_rules(
        {"page": {"matches": "("}},
        {"any_of": [{"ref": {"matches": "a{4294967296}"}}, {"page": {"matches": "[a-"}}]},
        {"ref": {"matches": "a" * (MAX_PATTERN_CHARS + 1)}},
        {"page": {"matches": "(" * 495 + "a" + ")" * 495}},
        {"page": {"matches": 5}, "seconds_on_page": {"matches": "3"}},
    ))
    by_path = {p.split(": ", 1)[0]: p.split(": ", 1)[1] for p in found}
    assert list(by_path) == [
        "rules[0].when.page.matches",
        "rules[1].when.any_of[0].ref.matches",
        "rules[1].when.any_of[1].page.matches",
        "rules[2].when.ref.matches",
        "rules[3].when.page.matches",
        "rules[4].when.page.matches",
        "rules[4].when.seconds_on_page.matches",
    ]
    assert by_path["rules[0].when.page.matches"].startswith("not a valid regular expression: missing ), ")
    assert by_path["rules[1].when.any_of[0].ref.matches"].startswith("not a valid regular expression")
    assert by_path["rules[2].when.ref.matches"] == (
        f"expected a regular expression of at most {MAX_PATTERN_CHARS} characters, got {MAX_PATTERN_CHARS + 1}")
    assert by_path["rules[3].when.page.matches"] == "not a valid regular expression: it is nested too deeply"
    assert by_path["rules[4].when.page.matches"] == "expected a regular expression string, got 5"
    assert by_path["rules[4].when.seconds_on_page.matches"] == 'expected a number >= 0, got "3"'


# --------------------------------------------------------------------------------------------- the engine


_names = itertools.count()


def _mt(pattern: str, subject: str) -> bool:
    """durable_rules' own `$mt`, through its raw C API (the runtime never uses it)."""
    handle = engine.create_ruleset(f"mt-trap-{next(_names)}", json.dumps(
        {"r": {"all": [{"m": {"$and": [{"k": 1}, {"$mt": {"s": pattern}}]}}]}}, ensure_ascii=False))
    fact = json.dumps({"k": 1, "s": subject, "id": "f", "sid": "0"}, ensure_ascii=False)
    try:
        result = engine.assert_fact(handle, fact)
        if result[0] == 0:
            action = engine.start_action_for_state(handle, result[1])
            while action:
                action = engine.complete_and_start_action(handle, result[1])
        return bool(result[0] == 0)
    finally:
        engine.retract_fact(handle, fact)
        engine.delete_ruleset(handle)


def test_durable_rules_mt_is_not_python_re_notes_item_11() -> None:
    """notes/durable-rules.md #11: why no pattern goes to `$mt`."""
    assert _mt("checkout", "checkout") and not _mt("checkout", "/checkout/x")  # the whole string must match
    assert _mt(".*checkout.*", "/checkout/x")
    assert not _mt("^a", "a") and _mt("^a", "^a")  # ^ is a literal
    assert not _mt(r"\d", "7") and _mt("%d", "7")  # \d is accepted and never matches; %d is its class
    assert _mt(".*(cart|basket).*", "cart") and not _mt(".*(cart|basket).*", "cartb")  # no backtracking
    assert re.search("cart|basket", "cartb")
