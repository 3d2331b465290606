"""From history to a model file: train the acceptance model on past offers and their answers.

Past offers are the only rows whose answer is known (an observation nobody
was offered says nothing about acceptance), so they are the training set:
target 1 for ``accept``, 0 for ``decline`` or no answer. Whole visitors are
held out for the report, so a visitor's sessions never sit on both sides.

The offers come from a file (``pcrules train --offers``, the schema of ``data/README.md``) or straight from a
decision log, SQLite or PostgreSQL: :func:`offers_from_log` (one SQLAlchemy Core statement, :mod:`pcrules.logdb`,
the same on both databases).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["train_on_offers", "write_model", "offers_from_log", "offers_from_log_query"]

_RESPONSE = {"accepted": "accept", "declined": "decline", "expired": "none"}


def train_on_offers(offers: Any, *, test_size: float = 0.25, seed: int = 0, truth: Any = None,
                    refit: bool = True) -> Any:
    """Fit an AcceptanceModel on an offers table (see data/README.md) and report on held-out visitors.

    `truth`: the true acceptance probabilities of the same rows, when known (a generated world).
    `refit`: once the report has measured a model trained without the held-out visitors, fit the model that
    is returned (and published) on every offer: accepted offers are few, and a quarter more of them is worth
    having (the report then describes a model trained on slightly less data: a conservative figure).
    """
    import dataclasses

    import numpy as np
    from sklearn.base import clone

    from . import train_and_evaluate

    if len(offers) == 0:
        raise ValueError("offers: no rows to train on")
    target = (offers["response"].astype(str) == "accept").to_numpy(dtype=int)
    if target.min() == target.max():
        raise ValueError("offers.response: every offer has the same answer; a model cannot learn from that")
    p_true = None if truth is None else np.asarray(truth, dtype=float)
    result = train_and_evaluate(offers, target, groups=offers["visitor_id"], p_true=p_true,
                                test_size=test_size, seed=seed)
    if not refit:
        return result
    model = clone(result.model).fit(offers.reset_index(drop=True), target)
    return dataclasses.replace(result, model=model, refit=True)


def offers_from_log_query(*, since: float | None = None, until: float | None = None) -> Any:
    """The statement of :func:`offers_from_log`: each ended offer (``action = 'offer'`` with an outcome) made in
    ``[since, until)``, joined with its outcome, by ``ts, id``."""
    import sqlalchemy as sa

    from ..logdb import decisions, outcomes

    d, o = decisions.alias("d"), outcomes.alias("o")
    where = [d.c.action == sa.literal_column("'offer'"), d.c.offer_id.is_not(None)]
    if since is not None:
        where.append(d.c.ts >= float(since))
    if until is not None:
        where.append(d.c.ts < float(until))
    return (sa.select(d.c.ts, d.c.visitor_id, d.c.session_id, d.c.page, d.c.seconds_on_page, d.c.rule, d.c.queue,
                      d.c.score, d.c.explored, d.c.propensity, o.c.status, (o.c.ts - d.c.ts).label("answer_s"))
            .select_from(d.join(o, o.c.offer_id == d.c.offer_id)).where(*where).order_by(d.c.ts, d.c.id))


def offers_from_log(log: Any, *, since: float | None = None, until: float | None = None) -> Any:
    """The offers a decision log holds, as a training table (:func:`train_on_offers`; the ``offers`` schema of
    ``data/README.md`` as far as the log knows it): ``ts, visitor_id, session_id, page, seconds_on_page, rule,
    queue, score, explored, propensity, response`` (``accept``, ``decline``, ``none`` for an expiry) and
    ``response_delay_s`` (None for an expiry). Offers still waiting for an answer are left out (their answer is
    unknown). `log`: a SQLite file's path, a ``postgresql://`` URL, an SQLAlchemy engine or connection, or a
    decision log object. The log has no device, returning or pages_viewed: the model sees them as missing."""
    import pandas as pd

    from ..logdb import connect

    with connect(log) as conn:
        frame = pd.read_sql_query(offers_from_log_query(since=since, until=until), conn)
    status = frame.pop("status")
    answer_s = frame.pop("answer_s").astype(float)
    frame["explored"] = frame["explored"].astype(bool)
    frame["response"] = status.map(_RESPONSE).astype(object)
    frame["response_delay_s"] = answer_s.where(status != "expired")
    return frame


def write_model(result: Any, model_path: str | Path, metrics_path: str | Path | None = None) -> dict:
    """Write the compiled model (JSON, no code) and its held-out metrics; return the metrics.

    The metrics: the held-out report (``held_out``, its calibration per time bin included), the row
    counts, the report's ``warnings`` (plain sentences, empty when the data supports what was measured)
    and the model's ``support`` per numeric field (``low``, ``high``, ``rows``: where it has data).
    """
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_text(json.dumps(result.model.compile().to_dict(), indent=1, sort_keys=True))
    support = {name: {"low": s.low, "high": s.high, "rows": s.rows}
               for name, s in getattr(result.model, "support_", {}).items()}
    metrics = {"held_out": result.test.to_dict(), "train_rows": result.n_train, "test_rows": result.n_test,
               "warnings": list(result.test.warnings), "support": support}
    if metrics_path is not None:
        Path(metrics_path).write_text(json.dumps(metrics, indent=1, sort_keys=True, default=float))
    return metrics
