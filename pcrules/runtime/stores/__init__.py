"""Where the runtime keeps sessions, cooldowns, offers and queue status: in memory, or shared in Redis."""

from .memory import Evicted, MemoryStore, OfferRecord, SharedStore, StaleRead, StateStore

__all__ = ["Evicted", "MemoryStore", "OfferRecord", "SharedStore", "StaleRead", "StateStore"]
