"""The only door into the runtime: validate and normalise one observation event.

A refused event raises :class:`InvalidEvent` naming the field; nothing else
has happened yet, so the runtime's state is untouched.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from ..errors import InvalidEvent

__all__ = ["Event", "FieldRule", "CONTRACT", "EXTRA", "validate_event", "parse_ts", "check_id", "check_number",
           "check_finite", "MAX_EXTRA_FIELDS"]

FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# C0 and C1 control characters, DEL, and lone surrogates: a lone surrogate cannot be encoded as UTF-8,
# so durable_rules (and SQLite) would fail on it after the event had been accepted.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_ID = 128
MAX_PAGE = 200
MAX_TEXT = 1000
MAX_EXTRA_FIELDS = 64
MAX_SECONDS = 1e7  # about 115 days on one page: anything longer is a broken clock
TS_RANGE = (0.0, 4102444800.0)  # 1970 .. 2100


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One field of the event contract. This table is the one statement of it: ``validate_event`` (one
    event), the backtest's table check (``pcrules.analysis.table``) and the history loader
    (``pcrules.analysis.history``) all read their types and limits from it."""

    kind: Literal["text", "number", "bool"]
    required: bool = False
    lo: float = 0.0
    hi: float = sys.float_info.max  # finite: a number too large for a float is refused


CONTRACT: Mapping[str, FieldRule] = MappingProxyType({
    "visitor_id": FieldRule("text", True, 1, MAX_ID),
    "session_id": FieldRule("text", True, 1, MAX_ID),
    "page": FieldRule("text", True, 1, MAX_PAGE),
    "seconds_on_page": FieldRule("number", True, 0.0, MAX_SECONDS),
    "ts": FieldRule("number", False, *TS_RANGE),  # epoch seconds (or ISO-8601 text); the runtime's clock if absent
    "pages_viewed": FieldRule("number"),
    "session_seconds": FieldRule("number"),
    "device": FieldRule("text", False, 0, MAX_TEXT),
    "returning": FieldRule("bool"),
})
EXTRA = FieldRule("text", False, 0, MAX_TEXT)  # any other field: a scalar; text within these limits
REQUIRED = tuple(name for name, rule in CONTRACT.items() if rule.required)
_DONE = frozenset((*REQUIRED, "ts"))
_GOOD_NAMES: set[str] = set()
# Optional fields with a type fixed by the contract (the names validate_event's messages use).
TYPED = {name: {"text": "string", "number": "number", "bool": "bool"}[rule.kind]
         for name, rule in CONTRACT.items() if name not in _DONE}


@dataclass(frozen=True, slots=True)
class Event:
    visitor_id: str
    session_id: str
    page: str
    seconds_on_page: float
    ts: float
    fields: Mapping[str, Any]  # every non-null scalar field, required ones included, ts as epoch seconds
    # The id the holdout group is drawn from when it is not visitor_id (pseudonymised runtimes keep the raw one's
    # group).
    holdout_unit: str | None = None


def _text(name: str, value: Any, limit: int, *, minimum: int = 1) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(name, f"expected a string, got {type(value).__name__}")
    if not minimum <= len(value) <= limit:
        raise InvalidEvent(name, f"expected {minimum}..{limit} characters, got {len(value)}")
    if CONTROL.search(value):
        raise InvalidEvent(name, "control characters (such as NUL or newline) and lone surrogates are not allowed")
    return str(value)  # a plain str, even from a str subclass


def _is_number(value: Any) -> bool:
    # numbers.Real also admits numpy scalars (pandas rows), which are then made plain Python numbers;
    # bool (and numpy.bool_, which is no numbers.Real) is not a number.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(name: str, value: Any) -> int | float:
    """`value` as a plain int or float; refuses NaN, infinities and ints too large for a float."""
    try:
        plain = int(value) if isinstance(value, numbers.Integral) else float(value)
        finite = math.isfinite(plain)
    except (OverflowError, ValueError):
        finite = False
    if not finite:
        shown = (f"an integer of {int(int(value).bit_length() * 0.30103) + 1} digits"
                 if isinstance(value, numbers.Integral) and abs(int(value)) > 10**40 else str(value)[:40])
        raise InvalidEvent(name, f"expected a finite number, got {shown}")
    return plain


def _number(name: str, value: Any, *, upper: float = sys.float_info.max) -> float:
    cls = value.__class__
    if cls is float or cls is int:  # the usual case, without the numbers.Real ABC check
        if 0 <= value <= upper:  # False for NaN, and for an int too large for a float (compared exactly)
            return float(value)
    if not _is_number(value):
        raise InvalidEvent(name, f"expected a number, got {type(value).__name__}")
    number = float(_finite(name, value))
    if number < 0 or number > upper:
        raise InvalidEvent(name, f"expected a number between 0 and {upper:g}, got {number:g}")
    return number


def check_id(name: str, value: Any) -> str:
    return _text(name, value, MAX_ID)


def check_number(name: str, value: Any, *, upper: float = sys.float_info.max) -> float:
    """A plain float in [0, upper]; InvalidEvent naming `name` otherwise (NaN, infinities, huge ints, bool)."""
    return _number(name, value, upper=upper)


def check_finite(name: str, value: Any) -> float:
    """A plain finite float, of either sign; InvalidEvent naming `name` otherwise."""
    if not _is_number(value):
        raise InvalidEvent(name, f"expected a number, got {type(value).__name__}")
    return float(_finite(name, value))


def parse_ts(value: Any, name: str = "ts") -> float:
    """Epoch seconds (number) or ISO-8601 text (UTC when no offset is given) -> epoch seconds."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            value = moment.timestamp()
        except (ValueError, OverflowError):
            raise InvalidEvent(name, f"expected epoch seconds or ISO-8601 text, got {value[:40]!r}") from None
    ts = _number(name, value, upper=TS_RANGE[1])
    return ts


def validate_event(raw: Any, clock: Callable[[], float]) -> Event:
    if not isinstance(raw, Mapping):
        raise InvalidEvent("event", f"expected an object of fields, got {type(raw).__name__}")
    for name in REQUIRED:
        if raw.get(name) is None:
            raise InvalidEvent(name, "required")
    if len(raw) > len(REQUIRED) + 1 + MAX_EXTRA_FIELDS:
        raise InvalidEvent("event",
                           f"too many fields ({len(raw)}; at most {MAX_EXTRA_FIELDS} besides the required ones)")
    visitor_id, session_id, page = raw["visitor_id"], raw["session_id"], raw["page"]
    if not (visitor_id.__class__ is str and session_id.__class__ is str and page.__class__ is str
            and 0 < len(visitor_id) <= MAX_ID and 0 < len(session_id) <= MAX_ID and 0 < len(page) <= MAX_PAGE
            and not CONTROL.search(visitor_id + session_id + page)):
        # One check of the three in the usual case; field by field to name the culprit otherwise.
        visitor_id = check_id("visitor_id", visitor_id)
        session_id = check_id("session_id", session_id)
        page = _text("page", page, MAX_PAGE)
    seconds = _number("seconds_on_page", raw["seconds_on_page"], upper=MAX_SECONDS)
    ts_raw = raw.get("ts")
    ts = clock() if ts_raw is None else parse_ts(ts_raw)

    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _DONE:
            continue  # validated above, stored below
        if key not in _GOOD_NAMES and (not isinstance(key, str) or not FIELD_NAME.fullmatch(key)):
            # The name itself when it is readable; repr() for empty, unprintable or non-text names.
            shown = key[:70] if isinstance(key, str) and key and key.isprintable() else repr(key)[:70]
            raise InvalidEvent(shown, "field names are letters, digits and '_' (not starting with a digit), at most 64")
        if value is None:
            continue
        kind = TYPED.get(key)
        cls = value.__class__
        if cls is str and kind is None and len(value) <= MAX_TEXT and not CONTROL.search(value):
            pass  # the usual extra field, checked without the general path below
        elif cls is float and kind is None and math.isfinite(value):
            pass
        elif isinstance(value, bool):
            if kind not in (None, "bool"):
                raise InvalidEvent(key, f"expected a {kind}, got bool")
        elif _is_number(value):
            if kind not in (None, "number"):
                raise InvalidEvent(key, f"expected a {kind}, got a number")
            value = _number(key, value) if kind == "number" else _finite(key, value)
        elif isinstance(value, str):
            if kind not in (None, "string"):
                raise InvalidEvent(key, f"expected a {kind}, got a string")
            # Optional text may be empty (a browser's empty referrer is a value, not a broken event).
            value = _text(key, value, MAX_TEXT, minimum=0)
        else:
            raise InvalidEvent(key, f"expected a scalar (string, number, boolean or null), got {type(value).__name__}")
        fields[key] = value
        if len(_GOOD_NAMES) < 4096 and key.__class__ is str:
            _GOOD_NAMES.add(key)  # names repeat from event to event: match each one once
    fields.update(visitor_id=visitor_id, session_id=session_id, page=page, seconds_on_page=seconds, ts=ts)
    return Event(visitor_id, session_id, page, seconds, ts, fields)
