"""The events table of a backtest: the history as the runtime would receive it, checked, keyed, typed, cached.

:class:`EventTable` takes a DataFrame of events (the runtime's fields, plus the recorded answers
``response`` / ``response_delay_s``), sorts it by time, checks every row as ``events.validate_event`` would
(:attr:`EventTable.valid`, :attr:`EventTable.refusals`), and keeps what every backtest of it needs once:
typed columns and predicates (:class:`pcrules.matching.vector.EventColumns`), visitor and session keys, the
recorded answers, the holdout group, the session stretches between idle evictions, and the batch scores.
Build one and pass it to many backtests (the tuner and value tuning do).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..core.events import (
    CONTRACT,
    CONTROL,
    EXTRA,
    FIELD_NAME,
    MAX_EXTRA_FIELDS,
    MAX_TEXT,
    REQUIRED,
    Event,
    validate_event,
)
from ..core.policy import in_holdout
from ..core.spec import BOOL, NUMBER, STRING
from ..matching.vector import EventColumns, Typed

__all__ = ["EventTable", "ANSWER_COLUMNS", "NO_ANSWER", "ACCEPT", "DECLINE", "plain"]

ANSWER_COLUMNS = ("response", "response_delay_s")  # recorded answers: not event fields
NO_ANSWER, ACCEPT, DECLINE = 0, 1, 2  # codes of EventTable.answers()


def plain(value: Any) -> Any:
    """A table cell as the runtime receives it in an event dict: None for missing, Python scalars."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, float) and value != value:
            return None
    return value


class EventTable:
    """An events table prepared for backtests: sorted by time, checked, keyed, typed, cached.

    Build one and pass it to many :func:`backtest` calls (tuning does): typed
    columns, predicates, validity, session keys and scores are computed once.
    ``exclude``: more columns that are not event fields (ground truth, labels).
    """

    def __init__(self, events: pd.DataFrame | Sequence[Mapping[str, Any]], *, exclude: Iterable[str] = ()):
        frame = events if isinstance(events, pd.DataFrame) else pd.DataFrame.from_records(list(events))
        missing = [c for c in (*REQUIRED, "ts") if c not in frame.columns]
        if missing:
            raise ValueError(f"events: missing required column(s) {', '.join(missing)}")
        self.index = frame.index
        if not pd.api.types.is_numeric_dtype(frame["ts"].dtype) or pd.api.types.is_bool_dtype(frame["ts"].dtype):
            frame = frame.assign(ts=_epoch_seconds(frame["ts"]))
        ts = frame["ts"].to_numpy(dtype=float, na_value=np.nan)
        self.order: np.ndarray | None = None
        if len(ts) > 1 and not (np.diff(ts) >= 0).all():  # NaN counts as out of order too
            self.order = np.argsort(np.where(np.isnan(ts), np.inf, ts), kind="stable")
            frame = frame.iloc[self.order]
        self.frame = frame.reset_index(drop=True)
        self.n = len(self.frame)
        self.exclude = frozenset(ANSWER_COLUMNS) | frozenset(exclude)
        self.fields = [c for c in self.frame.columns if c not in self.exclude]
        bad = [c for c in self.fields if not isinstance(c, str) or not FIELD_NAME.fullmatch(c)]
        if bad:
            raise ValueError(f"events: column names must be field names (letters, digits, '_'): {bad[:5]}")
        if len(self.fields) > len(REQUIRED) + 1 + MAX_EXTRA_FIELDS:
            raise ValueError(f"events: {len(self.fields)} fields; the runtime takes at most "
                             f"{MAX_EXTRA_FIELDS} besides the required ones")
        self.columns = EventColumns(self.frame, exclude=self.exclude)
        self._valid: tuple[np.ndarray, dict[int, str]] | None = None
        self._keys: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._answers: tuple[np.ndarray, np.ndarray] | None = None
        self._holdout: dict[float, np.ndarray] = {}
        self._stretches: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        # Derived data other modules keep per table (batch scores, category keys), by their own keys.
        self.cache: dict[Any, Any] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def ts(self) -> np.ndarray:
        return self.columns.ts

    @property
    def seconds(self) -> np.ndarray:
        return self.columns.seconds

    # -- what the runtime would refuse ---------------------------------------------------------------------
    @property
    def valid(self) -> np.ndarray:
        return self._validity()[0]

    @property
    def refusals(self) -> dict[int, str]:
        """Row (sorted position) -> the first reason the runtime would refuse that event."""
        return self._validity()[1]

    def _validity(self) -> tuple[np.ndarray, dict[int, str]]:
        if self._valid is None:
            self._valid = _check_events(self)
        return self._valid

    # -- identities ---------------------------------------------------------------------------------------
    def keys(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(visitor code, session code, visitor code of each session code): dense int64 codes."""
        if self._keys is None:
            visitor = self.columns.view("visitor_id", STRING)
            session = self.columns.view("session_id", STRING)
            v = visitor.codes
            s = session.codes
            n_s = len(session.uniques)
            owner = np.full(n_s + 1, -1, dtype=np.int64)
            known = (s >= 0) & (v >= 0)
            owner[s[known]] = v[known]  # last write wins: consistent iff every session id has one visitor
            # A session id shared by several visitors: key on the (visitor, session) pair.
            if known.any() and not (owner[s[known]] == v[known]).all():
                pair = v * (n_s + 1) + s
                s, uniq = pd.factorize(pair)
                s = np.asarray(s, dtype=np.int64)
                owner = np.asarray(uniq, dtype=np.int64) // (n_s + 1)
            self._keys = (v, s, owner)
        return self._keys

    def answers(self) -> tuple[np.ndarray, np.ndarray]:
        """(answer code 0 none / 1 accept / 2 decline, delay in seconds or NaN), from response / response_delay_s."""
        if self._answers is None:
            n = self.n
            code = np.zeros(n, dtype=np.int8)
            if "response" in self.frame.columns:
                view = _string_codes(self.frame["response"])
                lut = np.array([{"accept": ACCEPT, "decline": DECLINE}.get(u, NO_ANSWER) for u in view.uniques]
                               + [NO_ANSWER], dtype=np.int8)
                code = lut[view.codes]
            delay = np.full(n, np.nan)
            if "response_delay_s" in self.frame.columns:
                delay = pd.to_numeric(self.frame["response_delay_s"], errors="coerce").to_numpy(
                    dtype=float, na_value=np.nan)
            self._answers = (code, delay)
        return self._answers

    def holdout(self, visitors: np.ndarray, share: float) -> np.ndarray:
        """Whether each of `visitors` (visitor codes) is in the holdout group (``policy.in_holdout``).

        The keyed hash is computed once per visitor and share, when first asked for.
        """
        held = self._holdout.get(share)
        uniques = self.columns.view("visitor_id", STRING).uniques
        if held is None:
            held = np.full(len(uniques) + 1, -1 if share > 0 else 0, dtype=np.int8)
            held[-1] = 0  # a missing visitor id (refused rows only)
            self._holdout[share] = held
        visitors = np.asarray(visitors, dtype=np.int64)
        flags = held[visitors]
        if (flags < 0).any():
            for v in np.unique(visitors[flags < 0]).tolist():
                held[v] = in_holdout(uniques[v], share)
            flags = held[visitors]
        return flags == 1

    def stretches(self, ttl: float) -> tuple[np.ndarray, np.ndarray]:
        """(stretch key per row, the valid rows in stretch order): the session stretches between idle evictions.

        The runtime forgets a session idle for longer than ``session_idle_ttl_s``
        (its last event before the high-water mark of event time minus the TTL):
        its next event starts afresh. A stretch key is a dense number per
        (session, stretch), -1 for refused rows; the order lists the valid rows
        by stretch, then time, and the keys increase along it. Computed once per TTL.
        """
        cached = self._stretches.get(ttl)
        if cached is None:
            _, skey, _ = self.keys()
            sub = np.flatnonzero(self.valid)
            out = np.full(self.n, -1, dtype=np.int64)
            s = skey[sub]
            order = np.argsort(s, kind="stable")
            r, s = sub[order], s[order]
            if len(r):
                t = self.ts[r]
                fresh = np.ones(len(r), dtype=bool)
                # Evicted when last_seen < high_water - ttl; events are in time order, so last_seen is the
                # session's previous event and the high-water mark is this event's time.
                fresh[1:] = (s[1:] != s[:-1]) | (t[:-1] < t[1:] - ttl)
                out[r] = np.cumsum(fresh) - 1
            cached = self._stretches[ttl] = (out, r)
        return cached

    def epochs(self, rows: np.ndarray, ttl: float) -> np.ndarray:
        """The stretch key of every valid row (-1 for refused rows): see :meth:`stretches`. `rows` is not needed
        any more (the keys of all rows are computed once per TTL); it is kept for callers that pass it."""
        return self.stretches(ttl)[0]

    # -- events as the runtime receives them ------------------------------------------------------------
    def raw_events(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """Rows (sorted positions) as the event dicts a replay would pass to ``Runtime.observe``.

        Only the rows asked for are converted to Python values (a few offers, a few scores near a
        threshold): never a whole column.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return []
        columns = [(name, self.frame[name].iloc[rows].to_numpy(dtype=object)) for name in self.fields]
        out = []
        for k in range(len(rows)):
            event = {}
            for name, values in columns:
                value = plain(values[k])
                if value is not None:
                    event[name] = value
            out.append(event)
        return out

    def raw_event(self, i: int) -> dict[str, Any]:
        """Row `i` (sorted position) as the event dict a replay would pass to ``Runtime.observe``."""
        return self.raw_events([i])[0]

    def events(self, rows: Sequence[int] | np.ndarray) -> list[Event]:
        """Rows validated exactly as the runtime validates them."""
        return [validate_event(raw, _no_clock) for raw in self.raw_events(rows)]

    def event(self, i: int) -> Event:
        """Row `i` validated exactly as the runtime validates it."""
        return validate_event(self.raw_event(i), _no_clock)




def _epoch_seconds(column: pd.Series) -> np.ndarray:
    """Event times as epoch seconds, as ``events.parse_ts`` reads them (ISO text without an offset is UTC);
    NaN where the runtime would refuse the value."""
    from ..core.events import parse_ts

    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        stamps = column.dt.tz_localize("UTC") if column.dt.tz is None else column.dt.tz_convert("UTC")
        return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float, na_value=np.nan)
    out = np.full(len(column), np.nan)
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    parsed = []
    for value in np.asarray(uniques, dtype=object):
        try:
            parsed.append(parse_ts(plain(value)))
        except Exception:  # refused by the runtime too
            parsed.append(np.nan)
    lut = np.array(parsed + [np.nan], dtype=float)
    out[:] = lut[np.asarray(codes)]
    return out


def _no_clock() -> float:
    raise ValueError("event without ts")


def _string_codes(series: pd.Series) -> Typed:
    from ..matching.vector import string_view

    return string_view(series)


def _good_text(uniques: np.ndarray, lo: int, hi: int) -> np.ndarray | None:
    """Per distinct text (plus a last slot for missing): within lo..hi characters and free of control characters.

    None when every one is fine (the common case, found with one search over all of them).
    """
    if not len(uniques):
        return None
    lengths = np.fromiter(map(len, uniques), dtype=np.int64, count=len(uniques))
    if lengths.min() >= lo and lengths.max() <= hi and not CONTROL.search("".join(uniques)):
        return None
    good = (lengths >= lo) & (lengths <= hi) & np.array([not CONTROL.search(x) for x in uniques], dtype=bool)
    return np.append(good, True)


def _check_events(table: EventTable) -> tuple[np.ndarray, dict[int, str]]:
    """``validate_event`` for the whole table: the mask of events it accepts, and why it refuses the others."""
    cols, frame, n = table.columns, table.frame, table.n
    refused = np.zeros(n, dtype=bool)
    why: dict[int, str] = {}

    def flag(mask: np.ndarray, field: str, message: str) -> None:
        new = mask & ~refused
        if new.any():
            for i in np.flatnonzero(new)[:1000].tolist():
                why[i] = f"{field}: {message}"
            refused[new] = True

    def text(field: str, lo: int, hi: int, required: bool) -> None:
        typed = cols.view(field, STRING)
        null = frame[field].isna().to_numpy(dtype=bool, na_value=True)
        if required:
            flag(null, field, "required")
        flag(~null & ~typed.present, field, "expected a string")
        good = _good_text(typed.uniques, lo, hi)
        if good is not None:
            flag(~good[typed.codes], field, f"expected {lo}..{hi} characters without control characters")

    def number(field: str, lo: float, hi: float, required: bool) -> None:
        typed = cols.view(field, NUMBER)
        null = frame[field].isna().to_numpy(dtype=bool, na_value=True)
        if required:
            flag(null, field, "required")
        flag(~null & ~typed.present, field, "expected a number")
        x = typed.values
        with np.errstate(invalid="ignore"):
            flag(typed.present & ~((x >= lo) & (x <= hi)), field, f"expected a number between {lo:g} and {hi:g}")

    for name, rule in CONTRACT.items():  # the event contract's own table (core.events)
        if name in REQUIRED or name == "ts":  # a history always has ts: the backtest's clock is the events'
            (text if rule.kind == "text" else number)(name, rule.lo, rule.hi, True)
    for name in table.fields:
        if name in REQUIRED or name == "ts":
            continue
        rule = CONTRACT.get(name)
        series = frame[name]
        null = series.isna().to_numpy(dtype=bool, na_value=True)
        if rule is not None and rule.kind == "number":
            number(name, rule.lo, rule.hi, False)
        elif rule is not None and rule.kind == "text":
            text(name, int(rule.lo), int(rule.hi), False)
        elif rule is not None:  # bool
            flag(~null & ~cols.view(name, BOOL).present, name, "expected a bool")
        else:  # any scalar: text within limits, a finite number, a boolean
            dtype = series.dtype
            if pd.api.types.is_bool_dtype(dtype):
                continue
            if pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
                x = series.to_numpy(dtype=float, na_value=np.nan)
                flag(np.isinf(x), name, "expected a finite number")
                continue
            typed = cols.view(name, STRING)
            good = _good_text(typed.uniques, int(EXTRA.lo), int(EXTRA.hi))
            if good is not None:
                flag(~good[typed.codes], name, f"expected at most {MAX_TEXT} characters without control characters")
            other = ~null & ~typed.present
            if other.any():
                rows = np.flatnonzero(other)
                objects = series.to_numpy(dtype=object)[rows]
                bad = np.array([not (isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, float, np.number))
                                and math.isfinite(float(v)))) for v in objects], dtype=bool)
                mask = np.zeros(n, dtype=bool)
                mask[rows[bad]] = True
                flag(mask, name, "expected a scalar (string, finite number, boolean or null)")
    return ~refused, why
