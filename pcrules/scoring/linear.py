"""A logistic model evaluated on one event with plain Python: a few microseconds, no numpy.

Its parameters are plain numbers (JSON-safe), so a published model cannot run code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LinearScorer"]


@dataclass(frozen=True)
class LinearScorer:
    intercept: float
    numeric: Mapping[str, float] = field(default_factory=dict)  # field -> weight on log1p(value)
    categorical: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # field -> value -> weight
    flags: Mapping[str, float] = field(default_factory=dict)  # boolean field -> weight when true

    def predict_proba_one(self, fields: Mapping[str, Any]) -> float | None:
        z = self.intercept
        for name, weight in self.numeric.items():
            value = fields.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                z += weight * math.log1p(value)
        for name, table in self.categorical.items():
            value = fields.get(name)
            if isinstance(value, str):  # the categories are text; anything else weighs 0
                z += table.get(value, 0.0)
        for name, weight in self.flags.items():
            if fields.get(name) is True:
                z += weight
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def to_dict(self) -> dict:
        return {"kind": "linear", "intercept": self.intercept, "numeric": dict(self.numeric),
                "categorical": {k: dict(v) for k, v in self.categorical.items()}, "flags": dict(self.flags)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearScorer:
        if data.get("kind") != "linear":
            raise ValueError(f"kind: expected 'linear', got {data.get('kind')!r}")
        return cls(float(data["intercept"]), {k: float(v) for k, v in data.get("numeric", {}).items()},
                   {k: {c: float(w) for c, w in t.items()} for k, t in data.get("categorical", {}).items()},
                   {k: float(v) for k, v in data.get("flags", {}).items()})
