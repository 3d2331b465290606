"""One way in to a decision log for everything that reads it: the ops dashboard (:mod:`pcrules.ops.queries`),
:mod:`pcrules.uplift` and whatever reads offers, goals or decisions back out of the log (training, effects,
notebooks). A log is a SQLite file (``var/demo/decisions.sqlite``, ``sqlite:///...``) or a PostgreSQL database
(``postgresql://user@host/db``): the same tables and columns (``decisions``, ``outcomes``, ``goals``,
``rulesets``; ``data/README.md``), so the readers build each query once, here in **SQLAlchemy Core**, and the
database aggregates it whatever it is.

Why SQLAlchemy Core (2.x) rather than SQL strings per database, or an ORM:

* **one expression language, compiled per dialect**: ``select(...).where(...).group_by(...)``, window
  functions, ``EXISTS``, CTEs, ``IN`` lists and ``LIMIT`` render as each database wants them (placeholders
  ``?`` or ``%(name)s``, quoting, types of bound values), so a query cannot drift between two hand-written
  copies. Where SQLite and PostgreSQL really differ (an hour bucket: SQLite's ``CAST(x AS INTEGER)``
  truncates, PostgreSQL's rounds), the difference is one small construct compiled per dialect, in this
  module (:class:`hour_of`) and nowhere else;
* **Core, not the ORM**: the readers aggregate in the database and get a few rows back (counts per hour,
  page, rule, queue, arm); no objects are mapped, no session or unit of work is needed, and the cost over
  a raw DB-API cursor is the compile of a statement (cached by SQLAlchemy), microseconds next to a scan;
* **well kept and widely used**: SQLAlchemy is maintained, typed, supports psycopg 3 (``postgresql+psycopg``)
  and the standard library's sqlite3, and pandas reads its connections (``read_sql_query``);
* **connection pooling** for PostgreSQL (a connection costs a TCP handshake, authentication and a backend
  process: a dashboard refresh reuses pooled ones, ``pool_pre_ping`` replaces those a restarted server
  dropped). A SQLite file gets a fresh connection each time instead (``NullPool``: opening one takes
  ~0.1 ms, and ``pcrules demo`` swaps a new log file into place, which a pooled connection would not see);
* **a read-only SQLite URI still works**: the file is opened as ``file:...?mode=ro`` (``uri=true``) with
  ``PRAGMA query_only``: the readers can never change the log, and they read a log a runtime is writing
  (WAL mode) without blocking it; PostgreSQL sessions are set ``default_transaction_read_only``.

Imported lazily by its readers (SQLAlchemy takes ~0.1 s to import; ``import pcrules`` and the runtime path load
none of it). A plain ``postgresql://`` URL is mapped to the psycopg 3 driver (``postgresql+psycopg://``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

__all__ = ["is_url", "is_postgres", "log_url", "engine_for", "connect", "describe",
           "METADATA", "decisions", "outcomes", "goals", "rulesets", "hour_of", "DatabaseError"]

DatabaseError = sa.exc.SQLAlchemyError  # what a failed read raises, on either database
POSTGRES_SCHEMES = ("postgresql", "postgres")
_PG_DRIVER = "postgresql+psycopg"

# --------------------------------------------------------------------------- the tables, as the readers see them

METADATA = sa.MetaData()
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite's INTEGER PRIMARY KEY is its rowid

decisions = sa.Table(
    "decisions", METADATA,
    sa.Column("id", _ID, primary_key=True), sa.Column("ts", sa.Double, nullable=False),
    sa.Column("visitor_id", sa.Text, nullable=False), sa.Column("session_id", sa.Text, nullable=False),
    sa.Column("page", sa.Text, nullable=False), sa.Column("seconds_on_page", sa.Double, nullable=False),
    sa.Column("action", sa.Text, nullable=False), sa.Column("reason", sa.Text), sa.Column("rule", sa.Text),
    sa.Column("queue", sa.Text), sa.Column("score", sa.Double), sa.Column("offer_id", sa.Text),
    sa.Column("holdout", sa.Integer, nullable=False), sa.Column("expires_at", sa.Double),
    sa.Column("recheck_after", sa.Double), sa.Column("metadata", sa.Text),
    sa.Column("ruleset", sa.Text, nullable=False), sa.Column("ruleset_version", sa.Text, nullable=False),
    sa.Column("logged_at", sa.Double, nullable=False), sa.Column("explored", sa.Integer, nullable=False),
    sa.Column("propensity", sa.Double))
outcomes = sa.Table(
    "outcomes", METADATA,
    sa.Column("id", _ID, primary_key=True), sa.Column("offer_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False), sa.Column("ts", sa.Double, nullable=False),
    sa.Column("visitor_id", sa.Text, nullable=False), sa.Column("session_id", sa.Text, nullable=False),
    sa.Column("rule", sa.Text, nullable=False), sa.Column("queue", sa.Text, nullable=False),
    sa.Column("offered_at", sa.Double, nullable=False), sa.Column("ruleset", sa.Text, nullable=False),
    sa.Column("ruleset_version", sa.Text, nullable=False), sa.Column("logged_at", sa.Double, nullable=False))
goals = sa.Table(
    "goals", METADATA,
    sa.Column("id", _ID, primary_key=True), sa.Column("ts", sa.Double, nullable=False),
    sa.Column("visitor_id", sa.Text, nullable=False), sa.Column("session_id", sa.Text, nullable=False),
    sa.Column("goal", sa.Text, nullable=False), sa.Column("value", sa.Double),
    sa.Column("logged_at", sa.Double, nullable=False))
rulesets = sa.Table(
    "rulesets", METADATA,
    sa.Column("id", _ID, primary_key=True), sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False), sa.Column("activated_at", sa.Double, nullable=False),
    sa.Column("spec", sa.Text, nullable=False))
TABLES = ("decisions", "outcomes", "goals", "rulesets")

# --------------------------------------------------------------------------- what differs per dialect: here only


class hour_of(FunctionElement):  # noqa: N801  (a SQL function, named as one)
    """The UTC hour of an epoch-seconds column, as a whole number of hours: ``floor(ts / 3600)``.

    SQLite has no ``floor`` without its optional math functions; ``CAST(x AS INTEGER)`` truncates, which is the
    floor for the log's times (after 1970). PostgreSQL's ``CAST`` rounds to the nearest, so it gets ``FLOOR``.
    The divisor is written into the SQL (not a bound value): GROUP BY repeats the expression, and PostgreSQL
    matches it to the SELECT's only when both are the same text."""

    type = sa.BigInteger()
    inherit_cache = True
    name = "hour_of"


@compiles(hour_of)
def _hour_of_default(element: hour_of, compiler: Any, **kw: Any) -> str:
    (ts,) = element.clauses
    return f"CAST(FLOOR({compiler.process(ts, **kw)} / 3600.0) AS BIGINT)"


@compiles(hour_of, "sqlite")
def _hour_of_sqlite(element: hour_of, compiler: Any, **kw: Any) -> str:
    (ts,) = element.clauses
    return f"CAST({compiler.process(ts, **kw)} / 3600 AS INTEGER)"


# --------------------------------------------------------------------------- URLs and engines


def is_url(log: Any) -> bool:
    """Whether `log` is a database URL (``postgresql://``, ``sqlite:///``...) rather than a file path."""
    return isinstance(log, (str, URL)) and "://" in str(log)


def is_postgres(log: Any) -> bool:
    """Whether `log` names a PostgreSQL database (a URL, an engine or a connection)."""
    if isinstance(log, (Engine, Connection)):
        return log.dialect.name == "postgresql"
    return is_url(log) and str(log).split("://", 1)[0].split("+", 1)[0] in POSTGRES_SCHEMES


def log_url(log: str | os.PathLike | URL) -> URL:
    """The SQLAlchemy URL of a log: a ``postgresql://`` URL (mapped to psycopg 3), a ``sqlite:///`` URL, or the
    path of a SQLite file (opened read-only: ``file:<path>?mode=ro``)."""
    if isinstance(log, URL) or is_url(log):
        url = sa.make_url(str(log) if not isinstance(log, URL) else log)
        if url.get_backend_name() in POSTGRES_SCHEMES:
            if url.drivername in ("postgresql", "postgres"):
                url = url.set(drivername=_PG_DRIVER)
            return url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
                and not url.database.startswith("file:"):
            return _sqlite_url(Path(url.database))
        return url
    return _sqlite_url(Path(os.fspath(log)).expanduser())


def _sqlite_url(path: Path) -> URL:
    return URL.create("sqlite+pysqlite", database=f"file:{quote(str(path.resolve()))}",
                      query={"mode": "ro", "uri": "true"})


def sqlite_path(log: Any) -> Path | None:
    """The file of a SQLite log (a path or a ``sqlite:///`` URL); None for any other database."""
    if isinstance(log, (str, os.PathLike)) and not is_url(log):
        return Path(os.fspath(log)).expanduser()
    if is_url(log):
        url = sa.make_url(str(log))
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            db = url.database
            return Path(db[5:].split("?", 1)[0] if db.startswith("file:") else db)
    return None


def describe(log: Any) -> str:
    """The log for a person: a file path, or the URL without its password."""
    if isinstance(log, (Engine, Connection)):
        log = log.engine.url if isinstance(log, Connection) else log.url
    if isinstance(log, URL) or is_url(log):
        url = sa.make_url(str(log)) if not isinstance(log, URL) else log
        if url.get_backend_name() == "sqlite" and sqlite_path(url.render_as_string()) is not None:
            return str(sqlite_path(url.render_as_string()))
        # libpq also takes the password as a query parameter: dropped, as the runtime's banner drops it
        return url.difference_update_query([k for k in url.query if k.lower() == "password"]).render_as_string(
            hide_password=True)
    return str(log)


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _on_connect_sqlite(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA query_only = 1")  # this reader never writes the log
    dbapi_conn.execute("PRAGMA busy_timeout = 5000")


def _on_connect_postgres(dbapi_conn: Any, _record: Any) -> None:
    with dbapi_conn.cursor() as cur:
        cur.execute("SET default_transaction_read_only = on")  # this reader never writes the log
    dbapi_conn.commit()


def engine_for(log: str | os.PathLike | URL) -> Engine:
    """The engine of a log (one per URL, kept for the process: PostgreSQL's connections are pooled)."""
    url = log_url(log)
    key = url.render_as_string(hide_password=False)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            if url.get_backend_name() == "sqlite":
                engine = sa.create_engine(url, poolclass=sa.pool.NullPool,
                                          connect_args={"timeout": 5.0, "check_same_thread": False})
                sa.event.listen(engine, "connect", _on_connect_sqlite)
            else:
                engine = sa.create_engine(url, pool_size=4, max_overflow=4, pool_pre_ping=True,
                                          pool_recycle=1800, connect_args=_pg_connect_args(url))
                sa.event.listen(engine, "connect", _on_connect_postgres)
            _ENGINES[key] = engine
        return engine


def _pg_connect_args(url: URL) -> dict[str, Any]:
    return {} if "connect_timeout" in url.query else {"connect_timeout": 10}


class _Borrowed:
    """A caller's sqlite3 connection lent to SQLAlchemy: everything passes through but ``rollback`` and ``close``
    (SQLAlchemy rolls back a new connection and closes it when done; the caller's work and connection stay)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@contextlib.contextmanager
def connect(log: Any) -> Iterator[Connection]:
    """A connection to a decision log for reading. `log`: a path of a SQLite file, a database URL, an SQLAlchemy
    ``Engine`` or ``Connection`` (used as given), a ``sqlite3.Connection`` (wrapped, left open), or a decision
    log object (its ``url`` or ``path``)."""
    if isinstance(log, Connection):
        yield log
        return
    if isinstance(log, Engine):
        with log.connect() as conn:
            yield conn
        return
    if isinstance(log, sqlite3.Connection):
        # the caller's connection, used as it is (its own uncommitted rows included): never rolled back or closed
        wrapped = sa.create_engine("sqlite://", creator=lambda: _Borrowed(log), poolclass=sa.pool.NullPool,
                                   pool_reset_on_return=None)
        with wrapped.connect() as conn:
            yield conn
        return
    target = getattr(log, "url", None) or getattr(log, "path", None) or log
    path = sqlite_path(target)
    if path is not None and not path.exists():
        raise FileNotFoundError(f"no decision log at {path}")
    with engine_for(target).connect() as conn:
        yield conn
