"""The rule spec compiled into a durable_rules ruleset, and one event matched through it.

durable_rules keeps no visitor state here (see notes/durable-rules.md): all
matching runs on one fixed sid, each event is asserted as a *fact* (a fact
fires every rule it matches, an event only the lowest ``pri``) and retracted
at once, so nothing piles up and no sid is ever allocated per visitor. The
one sid's state is deleted with the ruleset (see ``_free_ruleset``). We drive
the C engine directly: the Python ``Host`` adds JSON round trips and starts
timer threads we do not use.

Each spec rule is compiled up to three times: ``f`` (as written), ``s``
(without its score conditions) and ``r`` (without score and time-on-page
conditions). Which variants fire tells the policy core whether a rule matches,
would match but for the score, or could match later on this page.

``matches`` never reaches durable_rules' ``$mt`` (a whole-string, Lua-like
dialect: notes/durable-rules.md #11). Each distinct (field, pattern) of the
spec is a derived boolean field of the fact, like ``hour`` or ``score``:
``ViewPlan`` runs ``spec.compile_pattern(pattern).search`` on the field's text
and posts ``True`` when it finds a match; otherwise (no match, field missing,
null or not text) the field is left out, and the rule's ``{flag: true}`` test
fails. The engine still matches every rule; only the string predicate is
Python's ``re.search``, the very predicate the backtest uses.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import durable_rules_engine as engine

from ..core.clock import local_clock, weekday_name
from ..core.matches import NO_MATCHES, Matches
from ..core.spec import (
    BOOL,
    DERIVED_FIELDS,
    NUMBER,
    STRING,
    TIME_FIELDS,
    AnyOf,
    Condition,
    Node,
    Rule,
    RuleSpec,
    compile_pattern,
    rule_tz,
)
from ..errors import PcrulesError

__all__ = ["DurableMatcher", "compile_ruleset", "fact_fields", "pattern_flags", "untyped_fields"]

log = logging.getLogger("pcrules.matching")
KIND = "kind"  # discriminator every rule tests, so the sid's own state fact never matches
SID = "pcrules"
SCORE_FIELDS = frozenset({"score"})
TIME_AND_SCORE_FIELDS = frozenset(TIME_FIELDS) | SCORE_FIELDS
PER_ZONE = frozenset({"hour", "weekday"})


def _key(field: str, zone_index: int = 0) -> str:
    """The engine-side name of a spec field.

    Prefixed, so no event field can collide with the engine's own `id`, `sid`
    and our `kind`; `hour` and `weekday` get one name per time zone.
    """
    return f"z{zone_index}_{field}" if field in PER_ZONE else f"f_{field}"


def pattern_flags(spec: RuleSpec) -> dict[tuple[str, str], str]:
    """{(engine-side name of the tested field, pattern): name of its derived boolean}, one per distinct pair.

    The flags are named ``m0``, ``m1``, ...: no clash with ``f_*``, ``z*_*``, ``kind``, ``id`` or ``sid``.
    """
    zones = {tz: i for i, tz in enumerate(spec.time_zones)}
    flags: dict[tuple[str, str], str] = {}
    for rule in spec.rules:
        zone = zones[rule_tz(spec, rule)]
        for cond in rule.conditions():
            if cond.op == "matches":
                flags.setdefault((_key(cond.field, zone), cond.value), f"m{len(flags)}")
    return flags


def _engine_number(value: float) -> str:
    """A float as the engine's JSON parser accepts it: `1e-07` is refused, `1.0e-07` is not."""
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    return text if not exponent or "." in mantissa else f"{mantissa}.0e{exponent}"


def _needs_engine_number(value: Any) -> bool:
    # repr() switches to exponent notation outside [1e-4, 1e16)
    return value.__class__ is float and value != 0.0 and not 1e-4 <= abs(value) < 1e16


def _encode(value: Any) -> str:
    """JSON for the engine; json.dumps unless a float needs the engine's number form."""
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _encode(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if value.__class__ is float:
        return _engine_number(value)
    return json.dumps(value, ensure_ascii=False)


_EXPONENT = re.compile(r"\de[-+]")


def _fact_encoder() -> Any:
    """json.dumps(fact, ensure_ascii=False), built once: dumps() builds a new encoder on every call with that flag."""
    from json.encoder import encode_basestring

    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # CPython's C encoder (not in the stubs)
    if c_make_encoder is None:  # a Python without the C accelerator
        encode = json.JSONEncoder(ensure_ascii=False).encode
        return encode

    def refuse(value: Any) -> Any:
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    chunks = c_make_encoder(None, refuse, encode_basestring, None, ": ", ", ", False, False, True)
    return lambda fact: "".join(chunks(fact, 0))


_dumps_fact = _fact_encoder()


def _encode_fact(fact: Mapping[str, Any]) -> str:
    payload = _dumps_fact(fact)  # the common case, at C speed
    # Exponent notation shows as digit-e-sign; a string that merely looks like it costs only the slow path.
    # The substring tests first: they take nanoseconds where the regex scan took over a microsecond.
    if ("e-" in payload or "e+" in payload) and _EXPONENT.search(payload):
        return _encode(dict(fact))
    return payload


def _leaf(cond: Condition, field: str) -> dict:
    op, value = cond.op, cond.value
    if op == "eq":
        return {field: value}
    if op == "ne":
        return {"$neq": {field: value}}
    if op in ("gt", "gte", "lt", "lte"):
        return {f"${op}": {field: value}}
    if op == "in":
        return {"$or": [{field: v} for v in value]}
    if op == "not_in":
        return {"$and": [{"$neq": {field: v}} for v in value]}
    if op == "exists":
        return {"$ex" if value else "$nex": {field: 1}}
    raise AssertionError(op)


def without_fields(nodes: Iterable[Node], fields: frozenset[str]) -> tuple[Node, ...]:
    """The conjunction without conditions on `fields`; an any_of with a branch left empty is always true, and
    is dropped."""
    out: list[Node] = []
    for node in nodes:
        if isinstance(node, Condition):
            if node.field not in fields:
                out.append(node)
            continue
        branches = [without_fields(b, fields) for b in node.branches]
        if any(b == () for b in branches):
            continue  # a branch with nothing left is always true, and so is the any_of
        out.append(AnyOf(tuple(branches)))
    return tuple(out)


def uses_fields(rule: Rule, fields: frozenset[str]) -> bool:
    return any(c.field in fields for c in rule.conditions())


def compile_ruleset(spec: RuleSpec) -> dict[str, Any]:
    """The spec as durable_rules JSON: {rule key: {"all": [...], "pri": n}}."""
    zones = {tz: i for i, tz in enumerate(spec.time_zones)}
    flags = pattern_flags(spec)
    ruleset: dict[str, Any] = {}
    pri = itertools.count(1)
    for index, rule in enumerate(spec.rules):
        zone = zones[rule_tz(spec, rule)]

        def tree(nodes: tuple[Node, ...], zone: int) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for node in nodes:
                if isinstance(node, Condition) and node.op == "matches":
                    out.append({flags[(_key(node.field, zone), node.value)]: True})  # computed by ViewPlan
                elif isinstance(node, Condition):
                    out.append(_leaf(node, _key(node.field, zone)))
                else:
                    out.append({"$or": [{"$and": [{KIND: "pv"}, *tree(b, zone)]} for b in node.branches]})
            return out

        variants = [("f", rule.when)]
        if uses_fields(rule, SCORE_FIELDS):
            variants.append(("s", without_fields(rule.when, SCORE_FIELDS)))
        if uses_fields(rule, frozenset(TIME_FIELDS)):
            variants.append(("r", without_fields(rule.when, TIME_AND_SCORE_FIELDS)))
        for tag, nodes in variants:
            ruleset[f"{tag}{index}"] = {"all": [{"m": {"$and": [{KIND: "pv"}, *tree(nodes, zone)]}}], "pri": next(pri)}
    return ruleset


_TYPES: dict[str, tuple[type, ...]] = {NUMBER: (int, float), STRING: (str,), BOOL: (bool,)}


def untyped_fields(spec: RuleSpec) -> frozenset[str]:
    """Fields that rules test only with `exists`: no operand gave them a type in the spec."""
    return frozenset(c.field for r in spec.rules for c in r.conditions()
                     if c.field not in spec.field_types and c.field not in DERIVED_FIELDS)


class ViewPlan:
    """How to build, for one spec, the typed view of an event that rules see.

    A field whose value is not of the type the spec compares it with is left
    out, so every comparison on it is false (as for a missing field) instead
    of durable_rules' JavaScript-like coercion ("301" >= 300). Derived fields
    are computed only when some rule reads them: this runs on every event.
    So are the ``matches`` flags (see ``pattern_flags``), from the typed view
    itself: a value that is missing, null or not text fails the condition.
    """

    def __init__(self, spec: RuleSpec):
        self.typed = tuple((name, _key(name), _TYPES[kind], kind == NUMBER) for name, kind in spec.field_types.items()
                           if name not in DERIVED_FIELDS)
        # A field tested only by `exists` has no type to check, but must still be
        # seen: without it, `exists: true` never matched and `exists: false` always did.
        self.untyped = tuple((name, _key(name)) for name in sorted(untyped_fields(spec)))
        used = {c.field for r in spec.rules for c in r.conditions()}
        self.minutes = "minutes_on_page" in used
        zones = {tz: i for i, tz in enumerate(spec.time_zones)}
        self.zones = tuple(sorted({(zones[rule_tz(spec, r)], rule_tz(spec, r)) for r in spec.rules
                                   if any(c.field in PER_ZONE for c in r.conditions())}))
        self.patterns = tuple((source, flag, compile_pattern(pattern).search)
                              for (source, pattern), flag in pattern_flags(spec).items())

    def view(self, fields: Mapping[str, Any], score: float | None) -> dict[str, Any]:
        view: dict[str, Any] = {KIND: "pv", "sid": SID}
        for name, key, types, numeric in self.typed:
            value = fields.get(name)
            if value is not None and isinstance(value, types) and not (numeric and value.__class__ is bool):
                view[key] = value
        for name, key in self.untyped:
            value = fields.get(name)
            if value is not None:
                view[key] = value
        if score is not None:
            view["f_score"] = score
        if self.minutes:
            view["f_minutes_on_page"] = fields["seconds_on_page"] / 60.0
        for i, tz in self.zones:
            day, minute = local_clock(fields["ts"], tz)
            view[f"z{i}_hour"] = minute // 60
            view[f"z{i}_weekday"] = weekday_name(day)
        for source, flag, search in self.patterns:
            text = view.get(source)
            if isinstance(text, str) and search(text) is not None:
                view[flag] = True
        return view


def fact_fields(spec: RuleSpec, fields: Mapping[str, Any], score: float | None) -> dict[str, Any]:
    """The typed view of one event under `spec` (see ViewPlan)."""
    return ViewPlan(spec).view(fields, score)


INIT = "init"  # a rule and a fact of their own, fired once so the sid has run an action (see _free_ruleset)


def _free_ruleset(handle: int) -> None:
    """Give a ruleset's memory back to the engine.

    delete_ruleset alone leaves the sid's state behind (~300 KB with 10 rules:
    every reload leaked that much), so the state goes first. delete_state can
    segfault on a sid that never ran an action, hence the INIT fact fired at
    construction.
    """
    try:
        engine.delete_state(handle, SID)
    except Exception:  # freeing must never fail a reload or a close: at worst the state leaks
        log.warning("durable_rules could not delete the matcher state", exc_info=True)
    engine.delete_ruleset(handle)


class DurableMatcher:
    """One compiled ruleset in the durable_rules engine. Thread-safe; close() frees it."""

    def __init__(self, spec: RuleSpec):
        self.spec = spec
        self._lock = threading.Lock()
        self._ids = itertools.count()
        ruleset = compile_ruleset(spec)
        ruleset[INIT] = {"all": [{"m": {KIND: INIT}}], "pri": len(ruleset) + 1}
        definition = _encode(ruleset)
        # A ruleset name can never be registered twice in one process, so every compile gets a fresh one.
        self.name = f"pcrules-{spec.name}-{spec.version}-{uuid.uuid4().hex[:8]}"
        try:
            self._handle: int | None = engine.create_ruleset(self.name, definition)
        except Exception as exc:  # the engine reports bad definitions as bare errors
            raise PcrulesError(f"durable_rules refused the compiled ruleset {spec.name!r}: {exc}") from exc
        # The engine's memory is C memory: free it even when a Runtime is dropped without close().
        self._free = weakref.finalize(self, _free_ruleset, self._handle)
        if self._post({KIND: INIT, "sid": SID, "id": INIT}) != [INIT]:
            self.close()
            raise PcrulesError("durable_rules did not run the start-up rule; refusing to use this ruleset")
        self._rules = {f"{tag}{i}": (i, tag, rule) for i, rule in enumerate(spec.rules) for tag in "fsr"}
        self._plan = ViewPlan(spec)

    def fired(self, view: dict[str, Any]) -> list[str]:
        """Keys of every compiled rule variant that `view` (from ViewPlan.view; consumed) satisfies."""
        fact = view
        with self._lock:
            if self._handle is None:
                raise PcrulesError("matcher is closed (its ruleset was replaced)")
            fact["id"] = next(self._ids)
            return self._post(fact)

    def _post(self, fact: Mapping[str, Any]) -> list[str]:
        """Assert `fact`, run every action it fires, retract it. Caller holds the lock (or owns the matcher)."""
        assert self._handle is not None
        payload = _encode_fact(fact)
        result = engine.assert_fact(self._handle, payload)
        keys: list[str] = []
        try:
            if result[0] == 0:
                state = result[1]
                action = engine.start_action_for_state(self._handle, state)
                while action:
                    message = action[1] if isinstance(action, tuple) else action
                    # The message is {"<rule key>": {...}} and our keys hold no quote: slicing beats json.loads.
                    keys.append(message[2:message.index('"', 2)])
                    action = engine.complete_and_start_action(self._handle, state)
        finally:
            engine.retract_fact(self._handle, payload)
        return keys

    def match(self, fields: Mapping[str, Any], score: float | None) -> Matches:
        keys = self.fired(self._plan.view(fields, score))
        if not keys:
            return NO_MATCHES
        full: list[Rule] = []
        unscored: list[Rule] = []
        later: list[Rule] = []
        # A rule fires once per satisfied any_of branch: count it once.
        for _, tag, rule in sorted(self._rules[key] for key in set(keys)):
            (full if tag == "f" else unscored if tag == "s" else later).append(rule)
        # A rule is "unscored" only when it does not match as written, and waits
        # for "later" only when its non-time conditions hold but it matched neither way.
        done = {r.name for r in full}
        unscored = [r for r in unscored if r.name not in done]
        done.update(r.name for r in unscored)
        later = [r for r in later if r.name not in done]
        return Matches(tuple(full), tuple(unscored), tuple(later))

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle = None
                self._free()  # _free_ruleset, at most once
