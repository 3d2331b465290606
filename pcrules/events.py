"""The only door into the runtime: validate and normalise one observation event.

A refused event raises :class:`InvalidEvent` naming the field; nothing else
has happened yet, so the runtime's state is untouched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from .errors import InvalidEvent

__all__ = ["Event", "validate_event", "parse_ts", "check_id", "MAX_EXTRA_FIELDS"]

FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_ID = 128
MAX_PAGE = 200
MAX_TEXT = 1000
MAX_EXTRA_FIELDS = 64
MAX_SECONDS = 1e7  # about 115 days on one page: anything longer is a broken clock
TS_RANGE = (0.0, 4102444800.0)  # 1970 .. 2100
REQUIRED = ("visitor_id", "session_id", "page", "seconds_on_page")
# Optional fields with a type fixed by the contract.
TYPED = {"pages_viewed": "number", "session_seconds": "number", "returning": "bool", "device": "string"}


@dataclass(frozen=True, slots=True)
class Event:
    visitor_id: str
    session_id: str
    page: str
    seconds_on_page: float
    ts: float
    fields: Mapping[str, Any]  # every non-null scalar field, required ones included, ts as epoch seconds


def _text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(name, f"expected a string, got {type(value).__name__}")
    if not value or len(value) > limit:
        raise InvalidEvent(name, f"expected 1..{limit} characters, got {len(value)}")
    if CONTROL.search(value):
        raise InvalidEvent(name, "control characters (such as NUL or newline) are not allowed")
    return value


def _number(name: str, value: Any, *, upper: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(name, f"expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidEvent(name, f"expected a finite number, got {value}")
    if value < 0 or value > upper:
        raise InvalidEvent(name, f"expected a number between 0 and {upper:g}, got {value:g}")
    return value


def check_id(name: str, value: Any) -> str:
    return _text(name, value, MAX_ID)


def parse_ts(value: Any, name: str = "ts") -> float:
    """Epoch seconds (number) or ISO-8601 text (UTC when no offset is given) -> epoch seconds."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidEvent(name, f"expected epoch seconds or ISO-8601 text, got {value[:40]!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        value = moment.timestamp()
    ts = _number(name, value, upper=TS_RANGE[1])
    return ts


def validate_event(raw: Any, clock: Callable[[], float]) -> Event:
    if not isinstance(raw, Mapping):
        raise InvalidEvent("event", f"expected an object of fields, got {type(raw).__name__}")
    for name in REQUIRED:
        if raw.get(name) is None:
            raise InvalidEvent(name, "required")
    if len(raw) > len(REQUIRED) + 1 + MAX_EXTRA_FIELDS:
        raise InvalidEvent("event", f"too many fields ({len(raw)}; at most {MAX_EXTRA_FIELDS} besides the required ones)")
    visitor_id = check_id("visitor_id", raw["visitor_id"])
    session_id = check_id("session_id", raw["session_id"])
    page = _text("page", raw["page"], MAX_PAGE)
    seconds = _number("seconds_on_page", raw["seconds_on_page"], upper=MAX_SECONDS)
    ts_raw = raw.get("ts")
    ts = clock() if ts_raw is None else parse_ts(ts_raw)

    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key in fields or value is None:
            continue
        if not isinstance(key, str) or not FIELD_NAME.fullmatch(key):
            shown = repr(key)[:70]
            raise InvalidEvent(shown, "field names are letters, digits and '_' (not starting with a digit), at most 64")
        kind = TYPED.get(key)
        if isinstance(value, bool):
            if kind not in (None, "bool"):
                raise InvalidEvent(key, f"expected a {kind}, got bool")
        elif isinstance(value, (int, float)):
            if kind not in (None, "number"):
                raise InvalidEvent(key, f"expected a {kind}, got a number")
            if kind == "number":
                value = _number(key, value)
            elif not math.isfinite(value):
                raise InvalidEvent(key, f"expected a finite number, got {value}")
        elif isinstance(value, str):
            if kind not in (None, "string"):
                raise InvalidEvent(key, f"expected a {kind}, got a string")
            _text(key, value, MAX_TEXT)
        else:
            raise InvalidEvent(key, f"expected a scalar (string, number, boolean or null), got {type(value).__name__}")
        fields[key] = value
    fields.update(visitor_id=visitor_id, session_id=session_id, page=page, seconds_on_page=seconds, ts=ts)
    return Event(visitor_id, session_id, page, seconds, ts, fields)
