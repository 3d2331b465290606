"""Load and validate a rule spec (YAML, a YAML string or a dict) into a frozen :class:`RuleSpec`.

Strict on purpose: every problem in the file is collected, by its path, before
anything is refused, so an analyst fixes a spec in one pass.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from ..errors import SpecError

__all__ = [
    "Condition",
    "AnyOf",
    "Hours",
    "Queue",
    "Policy",
    "Explore",
    "DEFAULT_EXPLORE_WAITS",
    "Rule",
    "RuleSpec",
    "load_spec",
    "OPERATORS",
    "TIME_FIELDS",
    "DERIVED_FIELDS",
    "MAX_PATTERN_CHARS",
    "compile_pattern",
]

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "matches", "exists")
ORDERING = frozenset({"gt", "gte", "lt", "lte"})
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LIST = (list, tuple)  # YAML gives lists; a spec built in Python may well use tuples

# Fields whose type is fixed by the event contract or by derivation.
NUMBER, STRING, BOOL = "number", "string", "bool"
KNOWN_FIELD_TYPES = {
    "visitor_id": STRING, "session_id": STRING, "page": STRING,
    "seconds_on_page": NUMBER, "session_seconds": NUMBER, "pages_viewed": NUMBER,
    "device": STRING, "returning": BOOL,
    "score": NUMBER, "minutes_on_page": NUMBER, "hour": NUMBER, "weekday": STRING,
    "ts": NUMBER,  # events.py turns every ts (ISO text included) into epoch seconds
}
# Fields that grow with the clock while the visitor stays on the page: the
# source of `wait` decisions and of `recheck_after`.
TIME_FIELDS = {"seconds_on_page": 1.0, "minutes_on_page": 60.0}
DERIVED_FIELDS = frozenset({"score", "minutes_on_page", "hour", "weekday"})
NON_NEGATIVE_FIELDS = frozenset({"seconds_on_page", "minutes_on_page", "session_seconds", "pages_viewed", "score",
                                 "hour", "ts"})
# \Z, not $: `$` also matches before a trailing newline, which let "page\n" through as a field name.
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
# Metadata templates may only name a field: `{page}`; never `{page.__class__}` or format specs.
TEMPLATE_EXTRAS = frozenset({"minutes", "seconds", "duration", "queue", "rule"})
# A `matches` pattern longer than this is refused: it bounds what compiling a spec's patterns can cost.
MAX_PATTERN_CHARS = 1000


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A `matches` pattern as every backend evaluates it: ``compile_pattern(p).search(value) is not None``.

    Python's ``re`` with its default flags (Unicode ``\\d``/``\\w``/``\\s``, case-sensitive),
    so a condition means exactly ``re.search(p, value)``; inline flags such as ``(?i)`` or
    ``(?a)`` work as in Python. durable_rules never sees the pattern (its ``$mt`` is another
    dialect): the runtime posts the search's answer as a derived boolean field, the backtest
    calls the same compiled pattern (one object per pattern, cached here). A value that is not
    text fails the condition, as a missing one does. Raises ``re.error`` (or ``OverflowError``,
    ``RecursionError``) for what Python refuses.
    """
    return re.compile(pattern)


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class AnyOf:
    """True when every condition of at least one branch holds."""

    branches: tuple[tuple[Node, ...], ...]


Node = Condition | AnyOf


@dataclass(frozen=True, slots=True)
class Hours:
    tz: str
    days: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start_min: int  # minutes after local midnight
    end_min: int  # exclusive; end < start means the window spans midnight


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    max_wait_s: float | None = None
    capacity_per_hour: float | None = None
    hours: Hours | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    max_offers_per_session: int = 1
    decline_cooldown_s: float = 86400.0
    offer_timeout_s: float = 60.0
    # After an offer expires unanswered, no offer to that visitor for this long (0: the next may follow at once).
    no_answer_cooldown_s: float = 0.0
    holdout: float = 0.0
    session_idle_ttl_s: float = 1800.0
    explore: Explore | None = None


# The default exploration waits: the browser's usual re-check moments over the whole range a tuner may choose
# (page enter to ten minutes), equally likely. A wait beyond every observation of a page view never fires.
DEFAULT_EXPLORE_WAITS = (0.0, 15.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0, 240.0, 300.0, 420.0, 600.0)


@dataclass(frozen=True, slots=True)
class Explore:
    """A stable share of sessions whose offers come at random waits, so the log shows every moment a rule
    could choose and the probability it was chosen with (``core.policy.propensity``; docs/off-policy.md).

    In an explored session each page gets its own wait, drawn from `waits` with `weights` (a keyed hash of
    session and page, so the runtime and the backtest draw alike); the rules' time-on-page and score
    conditions are set aside, every other condition and every session, visitor, queue and hours policy holds.
    """

    share: float
    waits: tuple[float, ...] = DEFAULT_EXPLORE_WAITS
    weights: tuple[float, ...] = ()  # normalised; empty in the spec means equal

    def survival(self, seconds: float) -> float:
        """P(wait > seconds): the chance an explored page view has not offered after `seconds` on the page."""
        return sum(q for w, q in zip(self.waits, self.weights) if w > seconds)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    priority: int
    when: tuple[Node, ...]
    queue: str
    default_ui: bool
    metadata: tuple[tuple[str, str], ...]
    order: int  # position in the file: breaks priority ties

    def conditions(self) -> Iterable[Condition]:
        return _walk(self.when)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    name: str
    version: str
    policy: Policy
    queues: Mapping[str, Queue]
    rules: tuple[Rule, ...]  # strongest first
    field_types: Mapping[str, str]
    source: Mapping[str, Any]

    @property
    def uses_score(self) -> bool:
        return "score" in self.field_types

    @property
    def time_zones(self) -> tuple[str, ...]:
        return tuple(sorted({rule_tz(self, r) for r in self.rules}))


def rule_tz(spec: RuleSpec, rule: Rule) -> str:
    """`hour` and `weekday` are read in the rule's queue time zone, UTC without one."""
    hours = spec.queues[rule.queue].hours
    return hours.tz if hours else "UTC"


def _walk(nodes: Iterable[Node]) -> Iterable[Condition]:
    for node in nodes:
        if isinstance(node, Condition):
            yield node
        else:
            for branch in node.branches:
                yield from _walk(branch)


# --------------------------------------------------------------------------- loading


def load_spec(source: str | Path | Mapping[str, Any]) -> RuleSpec:
    """Load a spec from a path, a YAML string or a mapping; raise SpecError listing every problem."""
    origin = None
    duplicates: list[str] = []
    if isinstance(source, Mapping):
        raw = source
    elif isinstance(source, (str, Path)):
        text, origin = _read(source)
        raw, duplicates = _parse_yaml(text, origin)
    else:
        raise SpecError([f"(spec): expected a file path, a YAML string or a mapping, got {type(source).__name__}"])
    checker = _Checker()
    spec = checker.spec(raw)
    problems = duplicates + checker.problems
    if problems:
        raise SpecError(problems, origin)
    assert spec is not None
    return spec


class _StrictLoader(yaml.SafeLoader):
    """safe_load, but a key written twice in one mapping is noted instead of silently keeping the last.

    A repeated key under `when:` would otherwise drop a condition without a word.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` may legitimately be overridden by later keys
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        self.duplicates.append(f"(file): line {key_node.start_mark.line + 1}: duplicate key "
                                               f"{_show(key)} (YAML would silently keep only the last one)")
                    seen.add(key)
                except TypeError:
                    pass  # an unhashable key: SafeConstructor reports it below
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, origin: str | None) -> tuple[Any, list[str]]:
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader already refuses unprintable characters here
        return loader.get_single_data(), loader.duplicates
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError([f"(file): {where}not valid YAML ({getattr(exc, 'problem', None) or exc})"], origin) from None
    finally:
        if loader is not None:
            loader.dispose()


def _read(source: str | Path) -> tuple[str, str | None]:
    if isinstance(source, Path):
        return _read_file(source), str(source)
    if "\n" in source:
        return source, None
    try:
        looks_like_path = source.endswith((".yaml", ".yml", ".json")) or Path(source).is_file()
    except (OSError, ValueError):
        # A one-line YAML string longer than a file name (ENAMETOOLONG) or holding a NUL is not a path.
        looks_like_path = False
    if looks_like_path:
        return _read_file(Path(source)), source
    return source, None


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"(file): cannot read {path}: {exc.strerror or exc}"], str(path)) from None
    except UnicodeDecodeError as exc:  # a ValueError, not an OSError
        raise SpecError([f"(file): {path} is not UTF-8 text (byte {exc.start}: {exc.reason})"], str(path)) from None


def spec_version(raw: Mapping[str, Any]) -> str:
    """A stable content hash: the same spec (whatever its key order) gives the same version."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- validation


def _show(value: Any) -> str:
    if isinstance(value, LIST) and not value:
        return "an empty list"
    if isinstance(value, (Mapping, *LIST)):
        text = type(value).__name__
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float: no event can be compared with it
        return False


def _type_of(v: Any) -> str | None:
    if isinstance(v, bool):
        return BOOL
    if _is_number(v):
        return NUMBER
    if isinstance(v, str):
        return STRING
    return None


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.field_types: dict[str, tuple[str, str]] = {}  # field -> (type, first path that fixed it)
        self.declared_queues: set[str] | None = None  # every queue name written, valid or not; None: no usable section

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, allowed: Iterable[str],
                required: Iterable[str] = ()) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            self.bad(path or "(spec)", f"expected a mapping, got {_show(value)}")
            return None
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                self.bad(f"{path}.{key}" if path else str(key), f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                self.bad(f"{path}.{key}" if path else key, "required")
        return dict(value)

    def number(self, value: Any, path: str, *, minimum: float = 0.0, strict: bool = False,
               integer: bool = False, below: float | None = None) -> float | None:
        kind = "an integer" if integer else "a number"
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        if below is not None:
            bound += f" and < {below:g}"
        ok = _is_number(value) and (not integer or float(value).is_integer())
        if ok:
            ok = (value > minimum if strict else value >= minimum) and (below is None or value < below)
        if not ok:
            self.bad(path, f"expected {kind} {bound}, got {_show(value)}")
            return None
        return int(value) if integer else float(value)

    # -- top level ------------------------------------------------------------------

    def spec(self, raw: Any) -> RuleSpec | None:
        top = self.mapping(raw, "", ("name", "version", "description", "policy", "queues", "rules"),
                           ("name", "queues", "rules"))
        if top is None:
            return None
        name = top.get("name")
        if "name" in top and not (isinstance(name, str) and FIELD_NAME.match(name.replace("-", "_"))):
            self.bad("name", f"expected a name of letters, digits, '-' or '_' (1..64), got {_show(name)}")
        version = top.get("version")
        # `version` is the author's label only: it is part of the content, so bumping it changes the hash.
        if version is not None and not (isinstance(version, (str, int)) and not isinstance(version, bool)
                                        and str(version)):
            self.bad("version", f"expected a string, got {_show(version)}")
        self.text(top, "description", "description")
        # An empty `policy:` (every line commented out) means the defaults, like an empty queue body.
        policy = self.policy({} if top.get("policy") is None else top["policy"])
        queues = self.queues(top.get("queues"), present="queues" in top)
        rules = self.rules(top.get("rules"), queues, present="rules" in top)
        if self.problems:
            return None
        assert isinstance(name, str)  # required, and checked above
        field_types = {f: t for f, (t, _) in self.field_types.items()}
        ordered = tuple(sorted(rules, key=lambda r: (-r.priority, r.order)))
        # Always the content hash (never the author's label): the decision log keys every decision by it,
        # so an edited spec must never share a version with its predecessor.
        # The source is our own deep copy: a caller mutating its dict later cannot make it disagree with the hash.
        return RuleSpec(
            name=name, version=spec_version(raw),
            policy=policy, queues=queues, rules=ordered, field_types=field_types, source=copy.deepcopy(dict(raw)),
        )

    def text(self, body: Mapping[str, Any], key: str, path: str) -> None:
        if key in body and not isinstance(body[key], str):
            self.bad(path, f"expected a string, got {_show(body[key])}")

    def policy(self, raw: Any) -> Policy:
        p = self.mapping(raw, "policy", Policy.__slots__) or {}
        defaults = Policy()
        values = {
            "max_offers_per_session": self.number(p.get("max_offers_per_session", defaults.max_offers_per_session),
                                                  "policy.max_offers_per_session", integer=True),
            "decline_cooldown_s": self.number(p.get("decline_cooldown_s", defaults.decline_cooldown_s),
                                              "policy.decline_cooldown_s"),
            "offer_timeout_s": self.number(p.get("offer_timeout_s", defaults.offer_timeout_s), "policy.offer_timeout_s",
                                           strict=True),
            "no_answer_cooldown_s": self.number(p.get("no_answer_cooldown_s", defaults.no_answer_cooldown_s),
                                                "policy.no_answer_cooldown_s"),
            "holdout": self.number(p.get("holdout", defaults.holdout), "policy.holdout", below=1.0),
            "session_idle_ttl_s": self.number(p.get("session_idle_ttl_s", defaults.session_idle_ttl_s),
                                              "policy.session_idle_ttl_s", strict=True),
        }
        explore = self.explore(p["explore"]) if p.get("explore") is not None else None
        if any(v is None for v in values.values()):
            return defaults
        return Policy(**values, explore=explore)  # type: ignore[arg-type]

    def explore(self, raw: Any) -> Explore | None:
        e = self.mapping(raw, "policy.explore", ("share", "waits", "weights"), ("share",))
        if e is None:
            return None
        share = self.number(e.get("share"), "policy.explore.share", below=0.5) if "share" in e else None
        waits = self.numbers(e.get("waits", list(DEFAULT_EXPLORE_WAITS)), "policy.explore.waits")
        weights = self.numbers(e["weights"], "policy.explore.weights") if "weights" in e else None
        if waits is not None and len(set(waits)) != len(waits):
            self.bad("policy.explore.waits", "expected distinct waits")
            waits = None
        if waits is not None and weights is not None:
            if len(weights) != len(waits):
                self.bad("policy.explore.weights", f"expected {len(waits)} weights (one per wait), got {len(weights)}")
                weights = None
            elif not sum(weights) > 0:
                self.bad("policy.explore.weights", "expected some weight > 0")
                weights = None
        if share is None or waits is None or ("weights" in e and weights is None):
            return None
        order = sorted(range(len(waits)), key=waits.__getitem__)
        given = weights or [1.0] * len(waits)
        total = float(sum(given))
        return Explore(share, tuple(waits[i] for i in order), tuple(given[i] / total for i in order))

    def numbers(self, value: Any, path: str) -> list[float] | None:
        if not isinstance(value, list) or not value:
            self.bad(path, f"expected a non-empty list of numbers >= 0, got {_show(value)}")
            return None
        out = [self.number(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return None if any(v is None for v in out) else [float(v) for v in out]  # type: ignore[arg-type]

    def queues(self, raw: Any, present: bool = True) -> dict[str, Queue]:
        out: dict[str, Queue] = {}
        if not isinstance(raw, Mapping) or not raw:
            if present:  # `queues:` left empty is a problem too; a missing key is already reported as required
                self.bad("queues",
                         f"expected a mapping of queue name to settings with at least one queue, got {_show(raw)}")
            return out
        self.declared_queues = {name for name in raw if isinstance(name, str)}
        for name, body in raw.items():
            path = f"queues.{name}"
            if not isinstance(name, str) or not name.strip() or len(name) > 128:
                self.bad(path, "queue name must be a non-empty string of at most 128 characters")
                continue
            q = self.mapping(body if body is not None else {}, path, ("max_wait_s", "capacity_per_hour", "hours"))
            if q is None:
                continue
            max_wait = self.number(q["max_wait_s"], f"{path}.max_wait_s") if "max_wait_s" in q else None
            capacity = (self.number(q["capacity_per_hour"], f"{path}.capacity_per_hour")
                        if "capacity_per_hour" in q else None)
            hours = self.hours(q["hours"], f"{path}.hours") if "hours" in q else None
            out[name] = Queue(name, max_wait, capacity, hours)
        return out

    def hours(self, raw: Any, path: str) -> Hours | None:
        h = self.mapping(raw, path, ("tz", "days", "start", "end"), ("tz", "start", "end"))
        if h is None:
            return None
        tz = h.get("tz")
        try:
            if not isinstance(tz, str) or not tz:
                raise ZoneInfoNotFoundError
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "Europe" is a directory in the tzdata package
            if "tz" in h:  # a missing tz is already reported as required
                self.bad(f"{path}.tz", f"unknown time zone {_show(tz)} (use an IANA name such as Europe/Amsterdam)")
            tz = None
        days_raw = h.get("days", list(DAYS))
        days: set[int] = set()
        if not isinstance(days_raw, LIST) or not days_raw:
            self.bad(f"{path}.days", f"expected a non-empty list of {', '.join(DAYS)}, got {_show(days_raw)}")
        else:
            for i, d in enumerate(days_raw):
                if d in DAYS:
                    days.add(DAYS.index(d))
                else:
                    self.bad(f"{path}.days[{i}]", f"expected one of {', '.join(DAYS)}, got {_show(d)}")
        start = self.clock(h.get("start"), f"{path}.start") if "start" in h else None
        end = self.clock(h.get("end"), f"{path}.end") if "end" in h else None
        if start == 24 * 60:
            self.bad(f"{path}.start", 'a day starts at "00:00": "24:00" is only valid as an end')
            start = None
        if start is not None and end is not None and start == end:
            self.bad(f"{path}.end", "end equals start: the queue would never be open")
        if tz is None or start is None or end is None or not days:
            return None
        return Hours(tz, frozenset(days), start, end)

    def clock(self, value: Any, path: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML 1.1 reads an unquoted 8:00 or 20:00 as a base-60 number (480, 1200); 08:00 stays text.
            message = f'expected a time "HH:MM" in quotes, got the number {value}'
            if 0 <= value <= 24 * 60:
                hh, mm = divmod(value, 60)
                message += f': YAML reads an unquoted {hh}:{mm:02d} as a base-60 number; quote it: "{hh:02d}:{mm:02d}"'
            self.bad(path, message)
            return None
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", value) if isinstance(value, str) else None
        if not m or int(m[1]) > 24 or int(m[2]) > 59 or (int(m[1]) == 24 and int(m[2]) != 0):
            self.bad(path, f'expected a time "HH:MM" between "00:00" and "24:00", got {_show(value)}')
            return None
        return int(m[1]) * 60 + int(m[2])

    def rules(self, raw: Any, queues: Mapping[str, Queue], present: bool = True) -> list[Rule]:
        if not isinstance(raw, LIST):
            if present:  # `rules:` left empty is a problem; a missing key is already reported as required
                self.bad("rules", f"expected a list of rules, got {_show(raw)}")
            return []
        out: list[Rule] = []
        seen: dict[str, int] = {}
        for i, body in enumerate(raw):
            path = f"rules[{i}]"
            r = self.mapping(body, path, ("name", "description", "priority", "when", "offer"),
                             ("name", "when", "offer"))
            if r is None:
                continue
            name = r.get("name")
            if "name" in r:
                if not isinstance(name, str) or not name.strip() or len(name) > 128:
                    self.bad(f"{path}.name",
                             f"expected a non-empty string of at most 128 characters, got {_show(name)}")
                elif name in seen:
                    self.bad(f"{path}.name", f"duplicate rule name {name!r} (also rules[{seen[name]}])")
                else:
                    seen[name] = i
            self.text(r, "description", f"{path}.description")
            priority = r.get("priority", 0)
            if not (isinstance(priority, int) and not isinstance(priority, bool)):
                self.bad(f"{path}.priority", f"expected an integer, got {_show(priority)}")
                priority = 0
            when = self.when(r.get("when"), f"{path}.when") if "when" in r else ()
            offer = self.offer(r.get("offer"), f"{path}.offer", queues) if "offer" in r else None
            if offer is not None and isinstance(name, str):
                out.append(Rule(name, priority, when, offer[0], offer[1], offer[2], i))
        return out

    def when(self, raw: Any, path: str) -> tuple[Node, ...]:
        if not isinstance(raw, Mapping) or not raw:
            self.bad(path, f"expected a non-empty mapping of field to condition, got {_show(raw)}")
            return ()
        nodes: list[Node] = []
        for fld, cond in raw.items():
            here = f"{path}.{fld}"
            if fld == "any_of":
                if not isinstance(cond, LIST) or len(cond) < 1:
                    self.bad(here, f"expected a non-empty list of conditions, got {_show(cond)}")
                    continue
                nodes.append(AnyOf(tuple(self.when(b, f"{here}[{j}]") for j, b in enumerate(cond))))
                continue
            if not isinstance(fld, str) or not FIELD_NAME.match(fld):
                self.bad(here, "field names are letters, digits and '_' (not starting with a digit), at most 64")
                continue
            if isinstance(cond, Mapping):
                if not cond:
                    self.bad(here, "empty condition")
                for op, value in cond.items():
                    leaf = self.condition(fld, op, value, f"{here}.{op}")
                    if leaf:
                        nodes.append(leaf)
            else:
                leaf = self.condition(fld, "eq", cond, here)
                if leaf:
                    nodes.append(leaf)
        return tuple(nodes)

    def condition(self, fld: str, op: Any, value: Any, path: str) -> Condition | None:
        if op not in OPERATORS:
            self.bad(path, f"unknown operator (use one of: {', '.join(OPERATORS)})")
            return None
        if op == "exists":
            if not isinstance(value, bool):
                self.bad(path, f"expected true or false, got {_show(value)}")
                return None
            return Condition(fld, op, value)
        if op == "matches":
            return self.regex(fld, value, path)
        if op in ("in", "not_in"):
            if not isinstance(value, LIST) or not value:
                self.bad(path, "expected a non-empty list, got an empty one" if isinstance(value, LIST) and not value
                         else f"expected a non-empty list, got {_show(value)}")
                return None
            # A list, not all(): all() would stop at the first bad element and hide the others.
            ok = all([self.operand(fld, v, f"{path}[{j}]", op) for j, v in enumerate(value)])
            return Condition(fld, op, tuple(value)) if ok else None
        if not self.operand(fld, value, path, op):
            return None
        return Condition(fld, op, value)

    def operand(self, fld: str, value: Any, path: str, op: str) -> bool:
        kind = _type_of(value)
        expected = KNOWN_FIELD_TYPES.get(fld) or self.field_types.get(fld, (None, ""))[0]
        if op in ORDERING and kind != NUMBER:
            self.bad(path, f"expected a number{' >= 0' if fld in NON_NEGATIVE_FIELDS else ''}, got {_show(value)}")
            return False
        if kind is None:
            hint = " (for several values use {in: [...]})" if isinstance(value, LIST) and op == "eq" else ""
            self.bad(path, f"expected a string, number or boolean, got {_show(value)}{hint}")
            return False
        if expected and kind != expected:
            bound = " >= 0" if expected == NUMBER and fld in NON_NEGATIVE_FIELDS else ""
            origin = "" if fld in KNOWN_FIELD_TYPES else f" (as in {self.field_types[fld][1]})"
            self.bad(path, f"expected a {expected}{bound}{origin}, got {_show(value)}")
            return False
        if fld in NON_NEGATIVE_FIELDS and value < 0:
            self.bad(path, f"expected a number >= 0, got {_show(value)}")
            return False
        if fld == "score" and value > 1:
            self.bad(path, f"a score is a probability: expected a number in [0, 1], got {_show(value)}")
            return False
        if fld == "weekday" and value not in DAYS:
            self.bad(path, f"expected one of {', '.join(DAYS)}, got {_show(value)}")
            return False
        self.field_types.setdefault(fld, (kind, path))
        return True

    def regex(self, fld: str, value: Any, path: str) -> Condition | None:
        if not isinstance(value, str) or not value:
            self.bad(path, f"expected a regular expression string, got {_show(value)}")
            return None
        if len(value) > MAX_PATTERN_CHARS:
            self.bad(path, f"expected a regular expression of at most {MAX_PATTERN_CHARS} characters, got {len(value)}")
            return None
        if not self.operand(fld, value, path, "matches"):
            return None
        try:
            compile_pattern(value)
        except (re.error, OverflowError) as exc:  # a{4294967296} overflows
            self.bad(path, f"not a valid regular expression: {exc}")
            return None
        except RecursionError:  # ((((...)))) nested a few hundred deep
            self.bad(path, "not a valid regular expression: it is nested too deeply")
            return None
        return Condition(fld, "matches", value)

    def offer(self, raw: Any, path: str,
              queues: Mapping[str, Queue]) -> tuple[str, bool, tuple[tuple[str, str], ...]] | None:
        o = self.mapping(raw, path, ("queue", "default_ui", "metadata"), ("queue",))
        if o is None:
            return None
        queue = o.get("queue")
        ok = True
        if "queue" in o and not (isinstance(queue, str) and queue in queues):  # a list here must not crash `in`
            ok = False
            # A missing or broken queue section (or queue) is reported once where it is written;
            # repeating it for every rule that names the queue would bury that one real problem.
            if self.declared_queues is not None and not (isinstance(queue, str) and queue in self.declared_queues):
                defined = ", ".join(map(str, queues)) or "none"
                self.bad(f"{path}.queue", f"unknown queue {_show(queue)} (defined: {defined})")
        default_ui = o.get("default_ui", True)
        if not isinstance(default_ui, bool):
            self.bad(f"{path}.default_ui", f"expected true or false, got {_show(default_ui)}")
            ok = False
        metadata = o.get("metadata", {})
        pairs: list[tuple[str, str]] = []
        if not isinstance(metadata, Mapping):
            self.bad(f"{path}.metadata", f"expected a mapping of name to text template, got {_show(metadata)}")
            ok = False
        else:
            for key, template in metadata.items():
                here = f"{path}.metadata.{key}"
                if not isinstance(key, str) or not key or len(key) > 100:
                    self.bad(here, "metadata names are non-empty strings of at most 100 characters")
                    ok = False
                elif not isinstance(template, str) or len(template) > 1000:
                    self.bad(here, f"expected a text template of at most 1000 characters, got {_show(template)}")
                    ok = False
                elif (problem := _template_problem(template)) is not None:
                    self.bad(here, problem)
                    ok = False
                else:
                    pairs.append((key, template))
        # (a missing queue is already reported as required)
        return (queue, default_ui, tuple(pairs)) if ok and isinstance(queue, str) else None


def _template_problem(template: str) -> str | None:
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"bad template ({exc}); write a literal brace as {{{{ or }}}}"
    for _, fld, spec, conversion in parts:
        if fld is None:
            continue
        if not FIELD_NAME.match(fld) or spec or conversion:
            shown = f"{fld}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}"
            return f"placeholder {{{shown}}} must be a plain field name such as {{page}}"
    return None
