"""Spec and event builders shared by the runtime / policy / lifecycle tests.

Times are explicit epoch seconds so every expectation can be read off the test:
T0 is Monday 2026-01-05 12:00 UTC, 13:00 in Amsterdam (CET, UTC+1).
"""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pcrules import Runtime, load_spec


def utc(text: str) -> float:
    """Epoch seconds of a naive ISO time read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


T0 = utc("2026-01-05T12:00:00")  # Monday; 13:00 CET
AMS_HOURS = {"tz": "Europe/Amsterdam", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "20:00"}


def rule(name: str = "bill", *, page: str | None = "Bill Payment", seconds: float | None = 300, queue: str = "Billing",
         priority: int = 10, metadata: dict | None = None, **when: Any) -> dict:
    """A rule dict: `page` equals, `seconds_on_page >= seconds`, plus any extra `when` conditions."""
    cond: dict[str, Any] = {}
    if page is not None:
        cond["page"] = page
    if seconds is not None:
        cond["seconds_on_page"] = {"gte": seconds}
    cond.update(when)
    offer: dict[str, Any] = {"queue": queue}
    if metadata is not None:
        offer["metadata"] = metadata
    return {"name": name, "priority": priority, "when": cond, "offer": offer}


def spec_dict(rules: list[dict] | None = None, queues: dict | None = None, **policy: Any) -> dict:
    """A spec dict with holdout 0 unless given, one `Billing` queue without hours unless given."""
    pol = {"max_offers_per_session": 1, "decline_cooldown_s": 86400, "offer_timeout_s": 60, "holdout": 0.0}
    pol.update(policy)
    return {
        "name": "test",
        "policy": pol,
        "queues": queues if queues is not None else {"Billing": {"max_wait_s": 180}},
        "rules": rules if rules is not None else [rule()],
    }


def ev(visitor: str = "v1", session: str = "s1", page: str = "Bill Payment", seconds: float = 301,
       ts: float = T0, **extra: Any) -> dict:
    return {"visitor_id": visitor, "session_id": session, "page": page, "seconds_on_page": seconds, "ts": ts, **extra}


class Clock:
    """A clock the test sets by hand: `clock.t += 60`."""

    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def counter_ids(prefix: str = "o") -> Any:
    """Deterministic offer ids: o1, o2, ..."""
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


def make_runtime(rules: list[dict] | None = None, queues: dict | None = None, *, scorer: Any = None, log: Any = None,
                 **policy: Any) -> Runtime:
    return Runtime(load_spec(spec_dict(rules, queues, **policy)), scorer=scorer, log=log, new_offer_id=counter_ids(),
                   clock=lambda: T0)


def not_holdout(share: float, prefix: str = "v", n: int = 1) -> list[str]:
    """The first `n` visitor ids `prefix<i>` that are outside the holdout group."""
    from pcrules.policy import in_holdout

    return [v for v in (f"{prefix}{i}" for i in range(10_000)) if not in_holdout(v, share)][:n]


def holdout_ids(share: float, prefix: str = "v", n: int = 1) -> list[str]:
    from pcrules.policy import in_holdout

    return [v for v in (f"{prefix}{i}" for i in range(10_000)) if in_holdout(v, share)][:n]


def row_counts(path: str | Path, rt: Runtime | None = None) -> dict[str, int]:
    """Rows per table of the log at `path`; with `rt`, after flushing what it logged into the file."""
    if rt is not None:
        rt.flush()
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("decisions", "outcomes", "goals", "rulesets")}


def snapshot(rt: Runtime, offer_ids: list[str] = (), visitor_ids: list[str] = ()) -> tuple:
    """Everything observable about a runtime's state, for 'nothing changed' assertions."""
    store = rt.store
    return (
        dict(store.sessions()),
        {o: store.offer(o) for o in offer_ids},
        {v: store.visitor(v) for v in visitor_ids},
        dict(store.queue_status()),
        len(store),
    )


class FixedScorer:
    def __init__(self, value: Any):
        self.value = value
        self.calls = 0

    def predict_proba_one(self, fields):
        self.calls += 1
        return self.value


class RaisingScorer:
    def predict_proba_one(self, fields):
        raise RuntimeError("model exploded")
