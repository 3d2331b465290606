"""Copy a SQLite decision log into a PostgreSQL database, row for row (ids included), for the tests that check
the readers give the same answers on both (tests/test_query_layer.py, tests/test_ops_dashboard.py).

The tables are made from the SQLite file's own schema, read by SQLAlchemy's reflection (SQLite's ``REAL`` as
``double precision``, ``INTEGER`` as ``bigint`` for ids and ``integer`` otherwise, ``TEXT`` as ``text``: the
PostgreSQL log's own types), with the log's indexes on ``ts``,
``offer_id`` and the goals' visitor; then each table's rows are copied with PostgreSQL's COPY (a million
decisions in seconds; benchmarks/bench_dashboard.py --postgres copies its log so too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pcrules import logdb

TABLES = ("decisions", "outcomes", "goals", "rulesets")
BATCH = 5000


def _pg_type(column: sa.Column) -> Any:
    name = type(column.type).__name__.upper()
    if "INT" in name:  # ids as bigint, flags (holdout, explored) as integer: as pcrules.runtime.log.postgres
        return sa.BigInteger() if column.primary_key else sa.Integer()
    if name in ("REAL", "FLOAT", "DOUBLE", "NUMERIC", "DOUBLE_PRECISION"):
        return sa.Double()
    return sa.Text()


def copy_log(sqlite_path: Path, url: str) -> sa.Engine:
    """The four tables of the SQLite log at `sqlite_path` created in the (empty) PostgreSQL database `url` and
    filled with the same rows; returns a writable engine on it (dispose of it when done)."""
    source = sa.create_engine(f"sqlite:///{sqlite_path}")
    target = sa.create_engine(logdb.log_url(url))
    reflected = sa.MetaData()
    reflected.reflect(source, only=list(TABLES))
    meta = sa.MetaData()
    tables = {}
    for name in TABLES:
        columns = [sa.Column(c.name, _pg_type(c), primary_key=c.primary_key, nullable=c.nullable,
                             autoincrement=False)
                   for c in reflected.tables[name].columns]
        tables[name] = sa.Table(name, meta, *columns)
    sa.Index("decisions_ts", tables["decisions"].c.ts)
    offer_id = tables["decisions"].c.offer_id
    sa.Index("decisions_offer", offer_id, postgresql_where=offer_id.is_not(None))
    sa.Index("outcomes_offer", tables["outcomes"].c.offer_id, unique=True)
    sa.Index("goals_visitor", tables["goals"].c.visitor_id, tables["goals"].c.session_id)
    meta.create_all(target)
    with source.connect() as src, target.begin() as dst:
        cursor = dst.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        for name in TABLES:
            columns = [c.name for c in reflected.tables[name].columns]
            result = src.execute(sa.select(reflected.tables[name]).order_by(reflected.tables[name].c.id))
            with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
                while batch := result.fetchmany(BATCH):
                    for row in batch:
                        copy.write_row(tuple(row))
    source.dispose()
    return target
