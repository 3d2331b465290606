"""Where the runtime keeps sessions, visitors' cooldowns, offers and queue status.

The in-memory store is the default. It is bounded: sessions idle for longer
than the policy's ``session_idle_ttl_s`` (by event time) are forgotten, and a
visitor's record lives exactly as long as its decline cooldown.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ...core.decision import OfferStatus
from ...core.policy import QueueStatus, SessionState, VisitorState

__all__ = ["OfferRecord", "StateStore", "SharedStore", "MemoryStore", "Evicted", "StaleRead"]

SessionKey = tuple[str, str]
_NO_LOCK: AbstractContextManager[None] = nullcontext()


@dataclass(frozen=True, slots=True)
class OfferRecord:
    offer_id: str
    visitor_id: str
    session_id: str
    rule: str
    queue: str
    offered_at: float
    expires_at: float
    ruleset: str
    ruleset_version: str
    status: OfferStatus = OfferStatus.OFFERED
    answered_at: float | None = None


@dataclass(frozen=True, slots=True)
class Evicted:
    """A session forgotten for idleness, with its still-pending offer if it had one."""

    visitor_id: str
    session_id: str
    pending_offer: OfferRecord | None


class StaleRead(Exception):
    """Raised on leaving a store's ``observe_lock`` when what was read has changed meanwhile: nothing was written.

    The runtime then decides again on what the store now holds (and, after a second stale read, under
    ``session_lock``). Never reaches a caller of the runtime.
    """


@runtime_checkable
class StateStore(Protocol):
    def session(self, visitor_id: str, session_id: str) -> SessionState | None: ...
    def visitor(self, visitor_id: str) -> VisitorState | None: ...
    def save(self, visitor_id: str, session_id: str, session: SessionState, visitor: VisitorState) -> None: ...
    def offer(self, offer_id: str) -> OfferRecord | None: ...
    def save_offer(self, record: OfferRecord) -> None: ...
    def due_offers(self, now: float) -> list[OfferRecord]: ...
    def evict_idle(self, before: float) -> list[Evicted]: ...
    def queue_status(self) -> dict[str, QueueStatus]: ...
    def set_queue_status(self, name: str, status: QueueStatus) -> None: ...
    def __len__(self) -> int: ...

    def session_lock(self, visitor_id: str, session_id: str) -> AbstractContextManager[None]:
        """Held by the runtime around every read-decide-write of one session (and an offer's answer or expiry).

        A store shared by several processes makes it exclusive across them (see pcrules.redis_store), and may
        defer the writes made under it to its release (the Redis store applies them there, atomically); a
        process-local store needs nothing beyond the runtime's own lock. The runtime never holds two at once.

        """
        ...

    def observe_lock(self, visitor_id: str, session_id: str) -> AbstractContextManager[None]:
        """What the runtime holds around an observation's read-decide-write: ``session_lock``, except that a
        shared store may serve reads from its own cache and check them when it is left, writing nothing and
        raising :class:`StaleRead` if any had changed (every side effect outside the store waits until then)."""
        ...

    def ping(self) -> bool:
        """True when the store answers; StoreUnavailable otherwise (the server's /healthz asks)."""
        ...

    def configure(self, *, session_ttl_s: float | None = None) -> None:
        """Settings from the active ruleset (how long an idle session is kept)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SharedStore(StateStore, Protocol):
    """A store several processes share (Redis): it can also commit the observations of a batch together."""

    def batch(self) -> AbstractContextManager[Any]:
        """Writes made inside it are sent together when it ends; ``.pending`` / ``.written`` say which landed."""
        ...

    def expect_offer(self, offer_id: str) -> bool:
        """Inside ``observe_lock``: its commit also checks that the offer is still as ``due_offers`` handed it
        out (else nothing is written), so that an offer can be expired in a batch without a lock. False: the
        store cannot (the offer was not handed out here); take ``session_lock`` instead."""
        ...


class MemoryStore:
    """A process-local store; not shared between workers (the Redis store is)."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[SessionKey, SessionState] = OrderedDict()  # least recently seen first
        self._visitors: dict[str, VisitorState] = {}
        self._cooldown_heap: list[tuple[float, str]] = []
        self._offers: dict[str, OfferRecord] = {}
        self._session_offers: dict[SessionKey, list[str]] = {}
        self._expiry_heap: list[tuple[float, str]] = []
        self._queues: dict[str, QueueStatus] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def visitors_remembered(self) -> int:
        return len(self._visitors)

    @property
    def offers_remembered(self) -> int:
        return len(self._offers)

    def session(self, visitor_id: str, session_id: str) -> SessionState | None:
        return self._sessions.get((visitor_id, session_id))

    def visitor(self, visitor_id: str) -> VisitorState | None:
        return self._visitors.get(visitor_id)

    def save(self, visitor_id: str, session_id: str, session: SessionState, visitor: VisitorState) -> None:
        key = (visitor_id, session_id)
        old = self._sessions.get(key)
        self._sessions[key] = session
        # Keep the order "least recently seen first" that evict_idle relies on: an answer or an
        # expiry saves the session without it being seen, and moving it then would park an old
        # last_seen behind newer ones and stall eviction until it went idle itself.
        if old is None or session.last_seen > old.last_seen:
            self._sessions.move_to_end(key)
        if visitor.cooldown_until > float("-inf"):
            if self._visitors.get(visitor_id) != visitor:
                heapq.heappush(self._cooldown_heap, (visitor.cooldown_until, visitor_id))
            self._visitors[visitor_id] = visitor

    def offer(self, offer_id: str) -> OfferRecord | None:
        return self._offers.get(offer_id)

    def save_offer(self, record: OfferRecord) -> None:
        if record.offer_id not in self._offers:
            self._session_offers.setdefault((record.visitor_id, record.session_id), []).append(record.offer_id)
            heapq.heappush(self._expiry_heap, (record.expires_at, record.offer_id))
        self._offers[record.offer_id] = record

    def due_offers(self, now: float) -> list[OfferRecord]:
        due = []
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            _, offer_id = heapq.heappop(heap)
            record = self._offers.get(offer_id)
            if record is not None and record.status == OfferStatus.OFFERED:
                due.append(record)
        return due

    def evict_idle(self, before: float) -> list[Evicted]:
        evicted = []
        sessions = self._sessions
        while sessions:
            key, state = next(iter(sessions.items()))
            if state.last_seen >= before:
                break
            del sessions[key]
            pending = None
            for offer_id in self._session_offers.pop(key, ()):
                record = self._offers.pop(offer_id, None)
                if record is not None and record.status == OfferStatus.OFFERED:
                    pending = record
            evicted.append(Evicted(key[0], key[1], pending))
        heap = self._cooldown_heap
        while heap and heap[0][0] < before:
            until, visitor_id = heapq.heappop(heap)
            current = self._visitors.get(visitor_id)
            if current is not None and current.cooldown_until <= until:
                del self._visitors[visitor_id]
        return evicted

    def session_lock(self, visitor_id: str, session_id: str) -> AbstractContextManager[None]:
        """A no-op: one process, and the runtime's own lock already serialises read-decide-write."""
        return _NO_LOCK

    observe_lock = session_lock

    def ping(self) -> bool:
        return True

    def configure(self, *, session_ttl_s: float | None = None) -> None:
        """Nothing to keep: the runtime passes the ruleset's idle TTL with every eviction."""

    def close(self) -> None:
        pass

    def queue_status(self) -> dict[str, QueueStatus]:
        return self._queues

    def set_queue_status(self, name: str, status: QueueStatus) -> None:
        self._queues[name] = status

    def sessions(self) -> Iterator[tuple[SessionKey, SessionState]]:
        return iter(list(self._sessions.items()))
