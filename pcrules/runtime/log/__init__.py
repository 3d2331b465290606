"""The decision log: a crash-safe journal in front of SQLite or PostgreSQL (see data/README.md for the schema and
rules)."""

from __future__ import annotations

import os
from pathlib import Path

from .postgres import PostgresDecisionLog, is_postgres_url
from .sqlite import DecisionLog, LogHealth, MemoryDecisionLog, SQLiteDecisionLog

__all__ = ["DecisionLog", "LogHealth", "MemoryDecisionLog", "PostgresDecisionLog", "SQLiteDecisionLog",
           "is_postgres_url", "open_log"]


def open_log(target: str | os.PathLike[str], *,
             journal_dir: str | os.PathLike[str] | None = None) -> SQLiteDecisionLog | PostgresDecisionLog:
    """The decision log at `target`: a ``postgresql://`` URL (journaled locally in `journal_dir`, see
    PostgresDecisionLog) or an SQLite file's path."""
    if is_postgres_url(target):
        return PostgresDecisionLog(str(target), journal_dir=journal_dir)
    return SQLiteDecisionLog(Path(target))
