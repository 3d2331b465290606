"""What the runtime needs from a scorer: P(accept) for one event, fast."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["Scorer", "NullScorer"]


@runtime_checkable
class Scorer(Protocol):
    def predict_proba_one(self, fields: Mapping[str, Any]) -> float | None:
        """P(the visitor accepts an offer now), or None when there is no model."""


class NullScorer:
    """No model loaded: rules that test `score` never match."""

    def predict_proba_one(self, fields: Mapping[str, Any]) -> float | None:
        return None
