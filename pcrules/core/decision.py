"""What the runtime answers: frozen results and the codes they carry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Action", "Reason", "OfferStatus", "Decision", "Outcome", "js_offer_call"]


class Action(StrEnum):
    OFFER = "offer"
    WAIT = "wait"
    NONE = "none"


class Reason(StrEnum):
    NO_RULE = "no_rule"
    OFFER_PENDING = "offer_pending"
    MAX_OFFERS = "max_offers"
    COOLDOWN = "cooldown"
    IN_CHAT = "in_chat"
    QUEUE_BUSY = "queue_busy"
    CLOSED = "closed"
    HOLDOUT = "holdout"
    SCORE_BELOW = "score_below"


class OfferStatus(StrEnum):
    OFFERED = "offered"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"


# Characters that could end a <script> block or an HTML attribute, or that
# JavaScript treats as line terminators inside a string literal.
_JS_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027",
              "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JS_TABLE = str.maketrans(_JS_UNSAFE)


def _js_literal(value: object) -> str:
    return json.dumps(value, ensure_ascii=True, sort_keys=False).translate(_JS_TABLE)


def js_offer_call(queue: str, metadata: Mapping[str, str], default_ui: bool) -> str:
    """``pega.chat.proactiveChat.offer(...)`` as a string safe inside a <script> element or a single-quoted
    HTML attribute (its string literals keep their double quotes: HTML-escape it for a double-quoted one)."""
    args = ", ".join((_js_literal(queue), _js_literal(dict(metadata)), "true" if default_ui else "false"))
    return f"pega.chat.proactiveChat.offer({args});"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: Reason | None
    visitor_id: str
    session_id: str
    ts: float
    page: str
    seconds_on_page: float
    ruleset: str
    ruleset_version: str
    rule: str | None = None
    queue: str | None = None
    score: float | None = None
    offer_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    default_ui: bool | None = None
    expires_at: float | None = None
    recheck_after: float | None = None
    # Offers and would-be offers: whether the session explores (``policy.explore``), and the probability that
    # the logging policy (production rules and exploration together) made this offer at this moment.
    explored: bool = False
    propensity: float | None = None

    @property
    def js_call(self) -> str | None:
        if self.action != Action.OFFER or self.queue is None:
            return None
        return js_offer_call(self.queue, self.metadata, bool(self.default_ui))

    @property
    def holdout(self) -> bool:
        return self.reason == Reason.HOLDOUT

    def to_dict(self) -> dict[str, Any]:
        """Every field, a holdout visitor's would-be offer included: for logs, replays and tests."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["metadata"] = dict(self.metadata)
        out["js_call"] = self.js_call
        return out

    def to_public_dict(self, visitor_id: str | None = None) -> dict[str, Any]:
        """What the visitor's browser is told (the server's answer to an observation): a holdout visitor's
        would-be offer shows no id, metadata, expiry or call. `visitor_id`: the id as the client sent it, when
        this decision holds its pseudonym. Built by hand: it is on the hot path."""
        offer = self.offer_id is not None and self.action == Action.OFFER
        return {
            "action": self.action.value, "reason": None if self.reason is None else self.reason.value,
            "offer_id": self.offer_id if offer else None, "queue": self.queue, "rule": self.rule,
            "score": self.score, "metadata": dict(self.metadata) if offer else {}, "default_ui": self.default_ui,
            "expires_at": self.expires_at if offer else None, "recheck_after": self.recheck_after,
            "js_call": self.js_call if offer else None, "visitor_id": visitor_id or self.visitor_id,
            "session_id": self.session_id, "ts": self.ts, "ruleset": self.ruleset,
            "ruleset_version": self.ruleset_version,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """A change in an offer's life: accepted, declined or expired."""

    offer_id: str
    status: OfferStatus
    ts: float
    visitor_id: str
    session_id: str
    rule: str
    queue: str
    offered_at: float
    ruleset: str
    ruleset_version: str
