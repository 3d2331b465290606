"""GrowthBook's evalCondition cases (written outside this project) through both condition backends.

Every row whose operators map onto the rule spec's (``$eq $ne $gt $gte $lt $lte
$in $nin $regex $exists``, ``$and``, ``$or``, a bare value) becomes a one-rule
spec and an event (a nested path ``a.b.c`` and a nested attribute object both
become the flat field ``a_b_c``: events are flat); the runtime's compiled durable_rules ruleset
(``DurableMatcher``) and the backtest's vectorised predicates
(``VectorMatcher``) must both give the corpus's answer. The rest sits in
``SKIPS`` (by row name) or is refused by the translation, each with the reason
pcrules means something else. The corpus file (``tests/conformance/``, a copy with its provenance) is read,
never changed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pcrules import load_spec
from pcrules.errors import SpecError
from pcrules.events import FIELD_NAME, REQUIRED, validate_event
from pcrules.matching.durable import DurableMatcher
from pcrules.matching.vector import match_records

# A copy in the project (tests/conformance/README.md: where it comes from, its commit and licence), so the test
# runs on every machine; the file is GrowthBook's, byte for byte (the sha256 below).
CORPUS = Path(__file__).resolve().parent / "conformance" / "growthbook-cases.json"
CORPUS_SHA256 = "f0384821df00dac6efd05ab15e789e8f19e01d420757a8fac3c511fc0402cfd0"

OPS = {"$eq": "eq", "$ne": "ne", "$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte", "$in": "in",
       "$nin": "not_in", "$regex": "matches", "$exists": "exists"}

# Rows whose operators do map onto ours, where pcrules means something else on purpose.
SKIPS: dict[str, str] = {
    "missing attribute with comparison operators":
        "JavaScript coercion: GrowthBook compares a missing attribute like a value and lets $ne pass; "
        "in pcrules a condition on a missing field is false, ne included (DESIGN.md)",
    "comparing numbers and strings":
        "JavaScript coercion: GrowthBook coerces the text '8' to a number; pcrules compares numbers with numbers "
        "only (a text value of a number field counts as missing)",
    "comparing numbers and strings - v2":
        "JavaScript coercion of numeric text; pcrules refuses ordering operators with text operands",
    "$gt/$lt strings - fail $gt": "pcrules' gt/gte/lt/lte take numbers only (the spec refuses text operands)",
    "$gt/$lt strings - fail $lt": "pcrules' gt/gte/lt/lte take numbers only (the spec refuses text operands)",
    "$gt/$lt strings - pass": "pcrules' gt/gte/lt/lte take numbers only (the spec refuses text operands)",
    "$gt/$lt strings - fail uppercase": "pcrules' gt/gte/lt/lte take numbers only (the spec refuses text operands)",
    "$in - not array": "in takes a list in pcrules; a bare value is refused when the spec is loaded",
    "$nin - not array": "not_in takes a list in pcrules; a bare value is refused when the spec is loaded",
    "$regex invalid - pass": "an invalid regular expression is refused when the spec is loaded "
                             "(GrowthBook: silently never matches)",
    "$regex invalid - fail": "an invalid regular expression is refused when the spec is loaded "
                             "(GrowthBook: silently never matches)",
    "empty $or - pass": "any_of needs at least one branch in pcrules (an empty list is refused)",
    "empty $and - pass": "a rule needs at least one condition in pcrules (an empty `when` is refused)",
    "empty - pass": "a rule needs at least one condition in pcrules (an empty `when` is refused)",
}


class Skip(Exception):
    """The row cannot be written in the rule spec; the message says why."""


def _flat(name: str) -> str:
    """A nested attribute path `a.b.c` as the flat pcrules field `a_b_c` (events are flat)."""
    return name.replace(".", "_")


def _field(name: str) -> str:
    name = _flat(name)
    if not FIELD_NAME.fullmatch(name):
        raise Skip(f"{name!r} is not a pcrules field name")
    if name in (*REQUIRED, "ts") or name in ("score", "minutes_on_page", "hour", "weekday"):
        raise Skip(f"{name!r} is a field pcrules defines itself")
    return name


def _operand(value: Any) -> Any:
    if value is None:
        raise Skip("null operand: pcrules tests absence with exists: false, and refuses null operands")
    if isinstance(value, (dict, list)):
        raise Skip("object or array operand: pcrules compares scalars only")
    return value


def translate(condition: Any) -> dict:
    """A GrowthBook condition as a pcrules `when` mapping, or Skip with the reason."""
    if not isinstance(condition, dict):
        raise Skip("a condition is an object")
    when: dict[str, Any] = {}
    for key, value in condition.items():
        if key == "$and":
            if not isinstance(value, list):
                raise Skip("$and takes a list")
            for part in value:
                when = _conjoin(when, translate(part))
        elif key == "$or":
            if not isinstance(value, list):
                raise Skip("$or takes a list")
            if not value:
                when = _conjoin(when, {"any_of": []})
                continue
            when = _conjoin(when, {"any_of": [translate(part) for part in value]})
        elif key.startswith("$"):
            raise Skip(f"operator {key} has no counterpart in the rule spec")
        else:
            when = _conjoin(when, {_field(key): _condition(value)})
    return when


def _condition(value: Any) -> Any:
    if isinstance(value, dict) and value and all(k.startswith("$") for k in value):
        out = {}
        for op, operand in value.items():
            if op not in OPS:
                raise Skip(f"operator {op} has no counterpart in the rule spec")
            if OPS[op] in ("in", "not_in") and isinstance(operand, list):
                out[OPS[op]] = [_operand(v) for v in operand]
            else:
                out[OPS[op]] = operand if op == "$exists" else _operand(operand)
        return out
    return _operand(value)  # a bare value: equals


def _ops(cond: Any) -> dict:
    return cond if isinstance(cond, dict) else {"eq": cond}


def _conjoin(a: dict, b: dict) -> dict:
    """a AND b as one `when` mapping.

    Conditions on different fields sit side by side; operators on one field merge; a clash (the same
    operator twice, or two any_of) is written with any_of, whose single branch is a plain conjunction:
    (OR a_i) AND (OR b_j) = OR_i (a_i AND (OR b_j)).
    """
    out = dict(a)
    for key, cond in b.items():
        if key == "any_of":
            if "any_of" not in out:
                out["any_of"] = cond
            else:
                mine = out.pop("any_of")
                out["any_of"] = [_conjoin(branch, {"any_of": cond}) for branch in mine]
        elif key not in out:
            out[key] = cond
        elif not set(_ops(out[key])) & set(_ops(cond)):
            out[key] = {**_ops(out[key]), **_ops(cond)}
        else:
            out = _conjoin(out, {"any_of": [{key: cond}]})
    return out


def _spec(when: dict) -> dict:
    return {"name": "conformance", "queues": {"Q": {}},
            "rules": [{"name": "case", "when": when, "offer": {"queue": "Q"}}]}


def _event(attributes: Any) -> dict:
    if not isinstance(attributes, dict):
        raise Skip("attributes are an object")
    event: dict[str, Any] = {"visitor_id": "v", "session_id": "s", "page": "p", "seconds_on_page": 1.0, "ts": 1.0}

    def put(prefix: str, value: Any) -> None:
        if isinstance(value, dict):  # a nested object: its leaves become flat fields a_b_c, as paths do
            for key, inner in value.items():
                put(f"{prefix}_{key}", inner)
            return
        if isinstance(value, list):
            raise Skip("array attribute: pcrules events hold scalars only")
        if not FIELD_NAME.fullmatch(prefix) or prefix in event:
            raise Skip(f"attribute {prefix!r} is not a free pcrules field name")
        event[prefix] = value

    for key, value in attributes.items():
        put(str(key), value)
    return event


def _rows() -> list[list]:
    return json.loads(CORPUS.read_text(encoding="utf-8"))["evalCondition"]


def classify() -> tuple[list[tuple[str, dict, dict, bool]], list[tuple[str, str]]]:
    """(rows that run: name, spec, event, expected), (skipped: name, reason)."""
    runs, skipped = [], []
    for row in _rows():
        name, condition, attributes, expected = row[:4]
        if len(row) > 4:
            skipped.append((name, "saved groups ($inGroup) have no counterpart in the rule spec"))
            continue
        if name in SKIPS:
            skipped.append((name, SKIPS[name]))
            continue
        try:
            when = translate(condition)
            event = _event(attributes)
            spec = _spec(when)
            load_spec(spec)
        except Skip as exc:
            skipped.append((name, str(exc)))
            continue
        except SpecError as exc:
            skipped.append((name, f"refused by the spec: {'; '.join(exc.problems)}"))
            continue
        runs.append((name, spec, event, bool(expected)))
    return runs, skipped


RUNS, SKIPPED = classify()


def _reason_class(reason: str) -> str:
    return re.sub(r"[$][A-Za-z]+|'[^']*'", "…", reason)


def test_corpus_is_the_pinned_file_and_fully_accounted() -> None:
    import hashlib

    assert hashlib.sha256(CORPUS.read_bytes()).hexdigest() == CORPUS_SHA256
    rows = _rows()
    assert len(rows) == 235
    assert len(RUNS) + len(SKIPPED) == len(rows)
    assert all(reason for _, reason in SKIPPED)
    assert not set(SKIPS) - {n for n, _ in SKIPPED}, "every named skip must match a corpus row"
    # Enough of the corpus runs to mean something (every row of GrowthBook's $eq $ne $gt $gte $lt $lte $in
    # $nin $regex $exists $and $or on flat or nested scalar attributes that pcrules can express).
    assert len(RUNS) >= 38, len(RUNS)  # the $regex rows included: every pattern Python compiles runs
    counts = Counter(_reason_class(r) for _, r in SKIPPED)
    print(f"\nconformance: {len(RUNS)} rows run through both backends, {len(SKIPPED)} skipped:")
    for reason, n in counts.most_common():
        print(f"  {n:>3}  {reason}")


def test_every_mapped_row_gives_the_corpus_answer_in_both_backends() -> None:
    wrong = []
    for name, spec_dict, event, expected in RUNS:
        spec = load_spec(spec_dict)
        fields = validate_event(event, lambda: 0.0).fields
        matcher = DurableMatcher(spec)
        try:
            durable = bool(matcher.match(fields, None).full)
        finally:
            matcher.close()
        vector = bool(match_records(spec, [event])[0].full)
        if durable != expected or vector != expected:
            wrong.append((name, expected, durable, vector))
    assert not wrong, wrong
