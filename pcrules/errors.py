"""Every error pcrules raises derives from :class:`PcrulesError`."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ErrorCode",
    "PcrulesError",
    "SpecError",
    "InvalidEvent",
    "OfferNotFound",
    "OfferClosed",
    "UnknownQueue",
    "LogUnavailable",
    "StoreUnavailable",
]


class ErrorCode(StrEnum):
    INVALID_SPEC = "invalid_spec"
    INVALID_EVENT = "invalid_event"
    OFFER_NOT_FOUND = "offer_not_found"
    OFFER_CLOSED = "offer_closed"
    UNKNOWN_QUEUE = "unknown_queue"
    LOG_UNAVAILABLE = "log_unavailable"
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_BUSY = "store_busy"
    LOCK_LOST = "lock_lost"
    STORE_VOLATILE = "store_volatile"


class PcrulesError(Exception):
    code: ErrorCode


class SpecError(PcrulesError, ValueError):
    """A rule spec was refused; ``problems`` lists every problem as ``path: message``."""

    code = ErrorCode.INVALID_SPEC

    def __init__(self, problems: list[str] | tuple[str, ...], source: str | None = None):
        self.problems = tuple(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid rule spec{where} ({len(self.problems)} problem(s)):\n{lines}")


class InvalidEvent(PcrulesError, ValueError):
    """An event (or outcome / queue report) was refused; ``field`` names the culprit."""

    code = ErrorCode.INVALID_EVENT

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class OfferNotFound(PcrulesError, KeyError):
    code = ErrorCode.OFFER_NOT_FOUND

    def __init__(self, offer_id: str):
        self.offer_id = offer_id
        super().__init__(offer_id)

    def __str__(self) -> str:
        return f"no offer with id {self.offer_id!r} (unknown, or forgotten after its session went idle)"


class OfferClosed(PcrulesError):
    code = ErrorCode.OFFER_CLOSED

    def __init__(self, offer_id: str, status: str):
        self.offer_id = offer_id
        self.status = status
        super().__init__(f"offer {offer_id!r} is already {status}; nothing changed")


class UnknownQueue(PcrulesError, KeyError):
    code = ErrorCode.UNKNOWN_QUEUE

    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(name)
        self._known = known

    def __str__(self) -> str:
        return f"unknown queue {self.name!r}; the ruleset has {', '.join(self._known) or 'none'}"


class LogUnavailable(PcrulesError):
    """The decision log cannot take the record a decision needs (a full or failing disk): nothing was decided.

    Raised before any state changes, so the caller may simply retry later (the server answers 503 with
    Retry-After); ``path`` names the log and ``reason`` what the operating system said.
    """

    code = ErrorCode.LOG_UNAVAILABLE

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"decision log {path} cannot be written ({reason}); nothing was decided")


class StoreUnavailable(PcrulesError):
    """The shared state store cannot be reached (or answered an error); retry later.

    ``outage`` is True when the store as a whole is down (every other call would fail the same way), False
    for trouble with one session (a lock held elsewhere, a lock lost), where other sessions still go through.
    """

    code = ErrorCode.STORE_UNAVAILABLE
    outage = True
