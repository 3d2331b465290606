"""Event time in a queue's time zone: the one place that turns epoch seconds into local hours."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from .spec import DAYS, Hours

__all__ = ["local_clock", "is_open"]


@lru_cache(maxsize=64)
def zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def local_clock(ts: float, tz: str) -> tuple[int, int]:
    """(weekday 0=Monday, minute of the day) at epoch second `ts` in `tz`."""
    moment = datetime.fromtimestamp(ts, zone(tz))
    return moment.weekday(), moment.hour * 60 + moment.minute


def weekday_name(day: int) -> str:
    return DAYS[day]


def is_open(hours: Hours | None, ts: float) -> bool:
    if hours is None:
        return True
    day, minute = local_clock(ts, hours.tz)
    if hours.start_min < hours.end_min:
        return day in hours.days and hours.start_min <= minute < hours.end_min
    # The window spans midnight: the early-morning part belongs to the previous day's opening.
    if minute >= hours.start_min:
        return day in hours.days
    return minute < hours.end_min and (day - 1) % 7 in hours.days
