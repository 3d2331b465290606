"""The figures of a policy over a history, from its offers and its verdict: one place for the backtest and the tuner.

:func:`figures` turns the offers (and holdout would-be offers) a judgement made, and the counts of its
actions and reasons, into the headline metrics, the figures by rule, and the load per queue and hour bucket
against each queue's capacity (:func:`queue_figures`), with the expected uplift when the effect of an offer
is known (:func:`uplift_figures`). :func:`pcrules.backtest.backtest` feeds it the rows it judged one by one,
the tuner the counts of its judgement: the figures are the same code either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core.decision import Reason
from ..core.spec import RuleSpec
from ..matching.vector import local_clock_arrays, open_mask
from ..stats.uplift import goal_effect
from .judge import REASON_CODE, REASONS
from .table import ACCEPT, DECLINE, NO_ANSWER

__all__ = ["BLOCK_REASONS", "OfferFacts", "Figures", "figures", "queue_figures", "uplift_figures", "hour_buckets",
           "hour_index", "open_hours", "queue_hours_frame", "queue_load_frame", "distinct", "reason_grid"]

# The reasons a rule can be held back for, as columns of the figures by rule (in this order).
BLOCK_REASONS = (Reason.OFFER_PENDING, Reason.MAX_OFFERS, Reason.COOLDOWN, Reason.IN_CHAT, Reason.CLOSED,
                 Reason.QUEUE_BUSY, Reason.SCORE_BELOW)


def distinct(codes: np.ndarray) -> int:
    """How many distinct non-negative codes."""
    codes = codes[codes >= 0]
    return int((np.bincount(codes) > 0).sum()) if len(codes) else 0


# ============================================================================================ hour buckets


def hour_buckets(ts: np.ndarray) -> np.ndarray:
    """The epoch hours (UTC hour buckets) from the first to the last of `ts` (the valid events' times)."""
    if len(ts):
        first_hour = int(np.floor(np.nanmin(ts) / 3600.0))
        last_hour = int(np.floor(np.nanmax(ts) / 3600.0))
    else:
        first_hour = last_hour = 0
    return np.arange(first_hour, last_hour + 1)


def hour_index(ts: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """The bucket of `hours` each time falls in."""
    return np.floor(ts / 3600.0).astype(np.int64) - (int(hours[0]) if len(hours) else 0)


def open_hours(spec: RuleSpec, hours: np.ndarray) -> np.ndarray:
    """(queues, hours): whether each queue of `spec` is open in each hour bucket (at its middle)."""
    out = np.ones((len(spec.queues), len(hours)), dtype=bool)
    for qi, queue in enumerate(spec.queues.values()):
        if queue.hours is not None:
            weekday, minute = local_clock_arrays(hours * 3600.0 + 1800.0, queue.hours.tz)
            out[qi] = open_mask(queue.hours, weekday, minute)
    return out


# ============================================================================================ the figures


@dataclass
class OfferFacts:
    """What the figures read of each offer and holdout would-be offer (time order)."""

    rule: np.ndarray  # the rule that offered (index into the spec's rules)
    hold: np.ndarray  # a holdout visitor's would-be offer
    kind: np.ndarray  # its recorded answer (table.NO_ANSWER / ACCEPT / DECLINE)
    visitor: np.ndarray  # visitor code
    session: np.ndarray  # session code
    hour: np.ndarray  # hour bucket (hour_index)
    p: np.ndarray | None  # the model's P(accept) there (None: no model)
    truth: np.ndarray | None = None  # the true P(accept) there (a generated world)
    gain: np.ndarray | None = None  # the effect of an accepted offer on the goal probability (effects)
    loss: np.ndarray | None = None  # the effect of one that is not accepted


@dataclass
class Figures:
    metrics: dict[str, Any]
    per_rule: dict[str, np.ndarray]  # column -> one value per rule shown, in order
    offers_h: np.ndarray  # (queues, hours) offers
    chats_h: np.ndarray  # (queues, hours) expected chats (NaN without a model)
    accepted_h: np.ndarray  # (queues, hours) recorded accepts
    effect: dict[str, np.ndarray]  # per offer: "expected_uplift" / "true_expected_uplift", its expected effect


def reason_grid(rule: np.ndarray, reason: np.ndarray, k: int) -> np.ndarray:
    """(rules, REASONS) counts of rows that name a rule and a reason (rule and reason codes per row, -1 none)."""
    n_reasons = len(REASONS)
    pick = (rule >= 0) & (reason >= 0)
    flat = rule[pick].astype(np.int64) * n_reasons + reason[pick].astype(np.int64)
    return np.bincount(flat, minlength=k * n_reasons).reshape(k, n_reasons)


def figures(offers: OfferFacts, *, events: int, valid_events: int, sessions: int, visitors: int,
            actions: Mapping[str, int], reasons: np.ndarray, grid: np.ndarray, shown: np.ndarray,
            rule_queue: np.ndarray, queue_names: Sequence[str], capacities: Mapping[str, float | None],
            open_h: np.ndarray, effects: str | None) -> Figures:
    """The figures of a judgement.

    `actions` / `reasons`: totals over every event (reasons as counts per ``REASONS`` code); `grid`: the
    (rules, REASONS) counts of rows that name a rule (:func:`reason_grid`); `shown`: the rules (indices) the
    figures by rule list, in order; `rule_queue`: each rule's queue (index into `queue_names`); `capacities`:
    chats per hour per queue; `open_h`: (queues, hours) open (:func:`open_hours`); `effects`: the description
    of the effects given (None: none).
    """
    hold, kind, rule = offers.hold, offers.kind, offers.rule.astype(np.int64)
    real = ~hold
    n_real = int(real.sum())
    real_kind = kind[real]
    rule_of = rule[real]
    expected = float(np.nansum(offers.p[real])) if offers.p is not None else None
    metrics: dict[str, Any] = {
        "events": int(events), "valid_events": int(valid_events), "refused": int(events - valid_events),
        "sessions": sessions, "visitors": visitors,
        "offers": n_real, "offer_rate_per_session": n_real / max(sessions, 1),
        "sessions_with_offer": distinct(offers.session[real]),
        "holdout": int(hold.sum()), "holdout_visitors": distinct(offers.visitor[hold]),
        "expected_accepts": expected,
        "expected_accept_rate": None if expected is None else expected / max(n_real, 1),
        "accepted": int((real_kind == ACCEPT).sum()), "declined": int((real_kind == DECLINE).sum()),
        "expired": int((real_kind == NO_ANSWER).sum()),
    }
    metrics["recorded_accept_rate"] = metrics["accepted"] / max(n_real, 1)
    if offers.truth is not None:
        te = float(np.nansum(offers.truth[real]))
        metrics["true_expected_accepts"] = te
        metrics["true_expected_accept_rate"] = te / max(n_real, 1)
    metrics["actions"] = {a: int(c) for a, c in actions.items()}
    metrics["reasons"] = {r: int(reasons[i]) for i, r in enumerate(REASONS)}

    # Expected uplift: extra goals from the offers' effects, with the model's and the true P(accept).
    p_model = offers.p if expected is not None else None
    gain, loss = offers.gain, offers.loss
    metrics["eligible_visitors"] = distinct(offers.visitor)
    metrics.update(uplift_figures("expected", p_model, gain, loss, hold, offers.visitor))
    metrics.update(uplift_figures("true_expected", offers.truth, gain, loss, hold, offers.visitor))
    metrics["effects"] = effects

    # By rule: offers, would-be offers, expected and recorded answers, and the blocks that kept each rule back.
    k0 = grid.shape[0]
    per_rule: dict[str, np.ndarray] = {}
    per_rule["offers"] = np.bincount(rule_of, minlength=k0)[shown]
    per_rule["holdout"] = np.bincount(rule[hold], minlength=k0)[shown]
    p_real = None if offers.p is None else np.nan_to_num(offers.p[real])
    if p_real is not None:
        per_rule["expected_accepts"] = np.bincount(rule_of, weights=p_real, minlength=k0)[shown]
    if offers.truth is not None:
        per_rule["true_expected"] = np.bincount(rule_of, weights=np.nan_to_num(offers.truth[real]),
                                                minlength=k0)[shown]
    effect: dict[str, np.ndarray] = {}
    if gain is not None and loss is not None:
        for column, p in (("expected_uplift", p_model), ("true_expected_uplift", offers.truth)):
            if p is not None:
                effect[column] = goal_effect(np.nan_to_num(p), gain, loss)
                per_rule[column] = np.bincount(rule_of, weights=effect[column][real], minlength=k0)[shown]
    for label, code in (("accepted", ACCEPT), ("declined", DECLINE), ("expired", NO_ANSWER)):
        per_rule[label] = np.bincount(rule_of[real_kind == code], minlength=k0)[shown]
    for r in BLOCK_REASONS:
        per_rule[r.value] = grid[shown, REASON_CODE[r]]

    # Per queue and hour bucket (UTC hours in time): offers and expected chats against capacity.
    n_q, size = open_h.shape
    q_of = rule_queue[rule_of] if n_real else np.zeros(0, dtype=np.int64)
    flat = q_of * size + offers.hour[real]
    offers_h = np.bincount(flat, minlength=n_q * size).reshape(n_q, size)
    accepted_h = np.bincount(flat[real_kind == ACCEPT], minlength=n_q * size).reshape(n_q, size)
    if p_real is not None:
        chats_h = np.bincount(flat, weights=p_real, minlength=n_q * size).reshape(n_q, size)
    else:
        chats_h = np.full((n_q, size), np.nan)
    metrics["queues"] = queue_figures(queue_names, capacities, offers_h, chats_h, accepted_h, open_h,
                                      expected is not None)
    return Figures(metrics, per_rule, offers_h, chats_h, accepted_h, effect)


def queue_figures(queue_names: Sequence[str], capacities: Mapping[str, float | None], offers_h: np.ndarray,
                  chats_h: np.ndarray, accepted_h: np.ndarray, open_h: np.ndarray,
                  has_expected: bool) -> dict[str, dict[str, Any]]:
    """Per queue, the load figures from the per-hour counts (open hours for the averages) against capacity."""
    size = offers_h.shape[1] if offers_h.ndim == 2 else 0
    out = {}
    for qi, name in enumerate(queue_names):
        cap = capacities.get(name)
        o_h, c_h, a_h = offers_h[qi], chats_h[qi], accepted_h[qi]
        sel = open_h[qi] if open_h[qi].any() else np.ones(size, dtype=bool)
        basis = c_h if has_expected else a_h.astype(float)
        out[name] = {
            "capacity_per_hour": cap,
            "offers_per_hour": float(o_h[sel].mean()) if size else 0.0,
            "peak_offers_per_hour": int(o_h.max()) if size else 0,
            "expected_chats_per_hour": float(c_h[sel].mean()) if has_expected and size else None,
            "peak_expected_chats": float(c_h.max()) if has_expected and size else None,
            "accepted_per_hour": float(a_h[sel].mean()) if size else 0.0,
            "hours_over_capacity": int((basis > cap).sum()) if cap is not None else None,
            "utilisation": (float(basis[sel].mean()) / cap) if cap and size else None,
        }
    return out


def queue_hours_frame(queue_names: Sequence[str], hours: np.ndarray, open_h: np.ndarray, offers_h: np.ndarray,
                      chats_h: np.ndarray, accepted_h: np.ndarray) -> pd.DataFrame:
    """One row per queue and hour bucket: open, offers, expected chats, accepted."""
    frames = [pd.DataFrame({"queue": name, "hour": pd.to_datetime(hours * 3600, unit="s", utc=True),
                            "open": open_h[qi], "offers": offers_h[qi], "expected_chats": chats_h[qi],
                            "accepted": accepted_h[qi]})
              for qi, name in enumerate(queue_names)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def queue_load_frame(queues: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`queue_figures` as a frame, one row per queue."""
    rows = [{"queue": name, **values} for name, values in queues.items()]
    return pd.DataFrame(rows).set_index("queue") if rows else pd.DataFrame()


def uplift_figures(prefix: str, p: np.ndarray | None, gain: np.ndarray | None, loss: np.ndarray | None,
                   hold: np.ndarray, visitor: np.ndarray) -> dict[str, float | None]:
    """The expected-uplift figures of a policy's offers (both arms, time order): ``{prefix}_uplift`` the
    expected extra goals of the real offers (``pcrules.uplift.expected_uplift``), ``{prefix}_uplift_per_offer``
    and ``{prefix}_uplift_itt``: each eligible visitor's first offer or would-be offer valued as if made,
    over the eligible visitors, the intention-to-treat uplift the decision log's estimate measures. All
    None when `p` or the effects are unknown: not available, never 0."""
    from ..stats.uplift import expected_uplift

    keys = (f"{prefix}_uplift", f"{prefix}_uplift_per_offer", f"{prefix}_uplift_itt")
    if p is None or gain is None or loss is None:
        return dict.fromkeys(keys)
    p = np.nan_to_num(np.asarray(p, dtype=float))  # no score counts as no accept, as in expected accepts
    real = ~hold
    total = expected_uplift(p[real], gain[real], loss[real])
    _, first = np.unique(visitor, return_index=True)
    itt = expected_uplift(p[first], gain[first], loss[first])
    return {keys[0]: total.expected_goals, keys[1]: total.per_offer, keys[2]: itt.uplift}
