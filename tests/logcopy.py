"""Copy a SQLite decision log into a PostgreSQL database, row for row (ids included), for the tests that check
the readers give the same answers on both (tests/test_query_layer.py, tests/test_ops_dashboard.py).

The tables are made from the SQLite file's own schema, read by SQLAlchemy's reflection (SQLite's ``REAL`` as
``double precision``, ``INTEGER`` as ``bigint``, ``TEXT`` as ``text``), with the log's indexes on ``ts``,
``offer_id`` and the goals' visitor; then each table's rows are copied in batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pcrules import logdb

TABLES = ("decisions", "outcomes", "goals", "rulesets")
BATCH = 5000


def _pg_type(column: sa.Column) -> Any:
    name = type(column.type).__name__.upper()
    if "INT" in name:
        return sa.BigInteger()
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
        for name in TABLES:
            result = src.execute(sa.select(reflected.tables[name]).order_by(reflected.tables[name].c.id))
            while batch := result.fetchmany(BATCH):
                dst.execute(tables[name].insert(), [row._asdict() for row in batch])
    source.dispose()
    return target
