"""The decision log: a crash-safe journal in front of SQLite (see data/README.md for the schema and rules)."""

from .sqlite import DecisionLog, LogHealth, MemoryDecisionLog, SQLiteDecisionLog

__all__ = ["DecisionLog", "LogHealth", "MemoryDecisionLog", "SQLiteDecisionLog"]
