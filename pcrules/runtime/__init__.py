"""What a chat server imports: the stateful runtime around the pure core, its state stores and decision logs."""

from .log.sqlite import DecisionLog, LogHealth, MemoryDecisionLog, SQLiteDecisionLog
from .runtime import DEFAULT_MAX_CLOCK_SKEW_S, Runtime
from .stores.memory import MemoryStore, StateStore

__all__ = ["Runtime", "DEFAULT_MAX_CLOCK_SKEW_S", "DecisionLog", "LogHealth", "MemoryDecisionLog",
           "SQLiteDecisionLog", "MemoryStore", "StateStore"]
