"""From history to a model file: train the acceptance model on past offers and their answers.

Past offers are the only rows whose answer is known (an observation nobody
was offered says nothing about acceptance), so they are the training set:
target 1 for ``accept``, 0 for ``decline`` or no answer. Whole visitors are
held out for the report, so a visitor's sessions never sit on both sides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["train_on_offers", "write_model"]


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
