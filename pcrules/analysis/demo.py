"""`make demo` end to end: train on generated history, publish a bundle, replay the sample through it.

What a newcomer sees: the analyst's path (world -> model -> bundle) done for
them, then the shipped sample replayed through the published bundle into a
decision log, with the visitors' goals reported so the uplift against the
holdout has data. The ops dashboard and the demo site then read that log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..bundle import load_bundle, publish
from ..runtime.log.sqlite import SQLiteDecisionLog, fresh_log
from ..runtime.runtime import Runtime
from .replay import ReplaySummary, replay
from .sample import SAMPLE_DAYS, SAMPLE_PATH, SAMPLE_SEED, SAMPLE_START, SAMPLE_VISITORS, read_events

__all__ = ["train_and_publish", "replay_with_goals"]

TRAINING_VISITORS = 20_000
TRAINING_SEED = SAMPLE_SEED + 1  # history to learn from, not the traffic replayed afterwards


def train_and_publish(rules: Path, out_dir: Path) -> Path:
    """Generate history, train the acceptance model on its offers, publish rules + model; the bundle's path."""
    from ..scoring.training import train_on_offers, write_model
    from .world import generate

    world = generate(visitors=TRAINING_VISITORS, seed=TRAINING_SEED, start=SAMPLE_START, days=SAMPLE_DAYS)
    result = train_on_offers(world.offers)
    model_path = out_dir / "model.json"
    metrics = write_model(result, model_path)
    return publish(rules, json.loads(model_path.read_text()), out_dir / "published", metrics=metrics)


def replay_with_goals(bundle: Path, log_path: Path, events: Path = SAMPLE_PATH, progress: bool = False,
                      rows: list[dict[str, Any]] | None = None) -> tuple[ReplaySummary, int]:
    """Replay `events` (or its `rows`, already read) through the bundle into a fresh log that then replaces
    `log_path`; the goals the world draws for them are reported when the events are the shipped sample."""
    rows = list(read_events(events)) if rows is None else rows
    with fresh_log(log_path) as new_path, Runtime.from_bundle(bundle, log=SQLiteDecisionLog(new_path)) as runtime:
        summary = replay(runtime, rows, progress=progress, total=len(rows))
        runtime.flush()  # _goals reads the file
        goals = _goals(new_path) if Path(events).resolve() == SAMPLE_PATH.resolve() else None
        reported = 0
        if goals is not None:
            from .world import report_goals

            reported = report_goals(runtime, goals)
    return summary, reported


def _goals(log_path: Path) -> Any:
    """The goals the sample's world draws for what the runtime decided (the sample is that world's events)."""
    import pandas as pd

    from .world import draw_goals, generate

    world = generate(visitors=SAMPLE_VISITORS, seed=SAMPLE_SEED, start=SAMPLE_START, days=SAMPLE_DAYS)
    import sqlalchemy as sa

    from ..logdb import connect, outcomes
    from ..logdb import decisions as table

    d, o = table.alias("d"), outcomes.alias("o")
    query = (sa.select(d.c.ts, d.c.visitor_id, d.c.session_id, d.c.page, d.c.seconds_on_page, d.c.action,
                       d.c.holdout, d.c.offer_id, o.c.status)
             .select_from(d.outerjoin(o, o.c.offer_id == d.c.offer_id))
             .where(sa.or_(d.c.action == "offer", d.c.holdout == 1)).order_by(d.c.id))
    with connect(log_path) as conn:  # the same query on any decision log (pcrules.logdb)
        decisions = pd.read_sql_query(query, conn)
    return draw_goals(world, decisions)


def describe(bundle: Path) -> str:
    b = load_bundle(bundle)
    held_out = (b.manifest.get("metrics") or {}).get("held_out", {})
    auc = held_out.get("roc_auc")
    return (f"bundle {b.version}: ruleset {b.spec.name!r} ({len(b.spec.rules)} rules), model "
            f"{f'AUC {auc:.3f} on held-out visitors' if auc else 'without metrics'}")
