"""The acceptance model compiled to plain Python: one event in microseconds, no numpy, no scikit-learn.

``AcceptanceModel.compile()`` folds what the scikit-learn Pipeline learned —
the one-hot weights, the scaler's means and scales, the logistic
coefficients — into a table per categorical field and a weight per spline
basis value, so scoring one event is a few dict lookups, a ``log1p`` per
numeric field and one ``exp``. The value encoding is the one the Pipeline
uses (``features.category_key`` / ``Numeric.basis``), so a missing field, a
category never seen in training or a value of the wrong type gets the same
answer on both paths, and nothing an event can hold makes it raise.

``to_dict()`` is plain JSON (numbers, text, lists, dicts): a published model
is data, never code. ``from_dict()`` checks every part of it and says which
part is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .features import FeatureSpec, Support, category_key, number_value

__all__ = ["CompiledScorer", "KIND", "FORMAT_VERSION", "supported_range"]

KIND = "compiled_logistic"
FORMAT_VERSION = 1
_TAU = 2.0 * math.pi
_CODES = {"log1p": 0, "linear": 1, "hour": 2}


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _finite(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{path}: expected a finite number, got {value!r}")
    return number


class CompiledScorer:
    """A logistic model over ``FeatureSpec`` features, evaluated on one event with plain Python.

    ``categorical[field][key]`` is the weight of a category key; ``numeric[i]``
    is ``(weights of the basis values, weight when missing)`` for
    ``features.numeric[i]``. P(accept) = sigmoid(intercept + sum of the weights
    that apply).
    """

    __slots__ = ("features", "intercept", "categorical", "numeric", "meta", "categorical_terms", "numeric_terms")

    def __init__(self, features: FeatureSpec, intercept: float,
                 categorical: Mapping[str, Mapping[str, float]],
                 numeric: Sequence[tuple[Sequence[float], float]], meta: Mapping[str, Any] | None = None):
        self.features = features
        self.intercept = float(intercept)
        self.categorical = {name: {str(k): float(w) for k, w in categorical.get(name, {}).items()}
                            for name in features.categorical}
        if len(numeric) != len(features.numeric):
            raise ValueError(f"numeric: expected {len(features.numeric)} terms, got {len(numeric)}")
        terms = []
        for spec, (weights, missing) in zip(features.numeric, numeric):
            size = len(spec.basis_names()) - 1
            if len(weights) != size:
                raise ValueError(f"numeric {spec.field}: expected {size} weights, got {len(weights)}")
            terms.append((tuple(float(w) for w in weights), float(missing)))
        self.numeric = terms
        self.meta = dict(meta or {})
        # The hot path's tuples: (field, table) and (field, code, lower, upper, first weight, hinges as
        # (cut point, weight), missing weight, offset seconds, all weights).
        inf = float("inf")
        self.categorical_terms = tuple((name, self.categorical[name]) for name in features.categorical)
        self.numeric_terms = tuple(
            (spec.field, _CODES[spec.transform], -inf if spec.lower is None else spec.lower,
             inf if spec.upper is None else spec.upper, weights[0], tuple(zip(spec.cut_points, weights[1:])),
             missing, spec.utc_offset_hours * 3600.0, weights)
            for spec, (weights, missing) in zip(features.numeric, terms)
        )

    # -- scoring -----------------------------------------------------------------------------------------
    def decision_function_one(self, fields: Mapping[str, Any]) -> float:
        """The logit of P(accept) for one event's fields."""
        z = self.intercept
        get = fields.get
        for name, table in self.categorical_terms:
            value = get(name)
            if type(value) is not str:
                value = category_key(value)
            z += table.get(value, 0.0)
        for name, code, lower, upper, first, hinges, missing, offset, weights in self.numeric_terms:
            value = get(name)
            x = value if type(value) is float and value - value == 0.0 else number_value(value)
            if x is None or (code == 0 and x < 0.0):
                z += missing
                continue
            if x < lower:
                x = lower
            elif x > upper:
                x = upper
            if code == 2:
                angle = _TAU * (((x + offset) % 86400.0) / 86400.0)
                z += weights[0] * math.sin(angle) + weights[1] * math.cos(angle)
                continue
            u = math.log1p(x) if code == 0 else x
            z += first * u
            for cut, weight in hinges:
                if u > cut:
                    z += weight * (u - cut)
        return z

    def predict_proba_one(self, fields: Mapping[str, Any]) -> float:
        """P(accept) for one event's fields (the runtime passes ``Event.fields``)."""
        return _sigmoid(self.decision_function_one(fields))

    def explain_one(self, fields: Mapping[str, Any]) -> dict[str, float]:
        """Each field's contribution to the logit (``intercept`` included): why an event scored what it did."""
        out = {"intercept": self.intercept}
        for name, table in self.categorical_terms:
            out[name] = table.get(category_key(fields.get(name)), 0.0)
        for spec, (weights, missing) in zip(self.features.numeric, self.numeric):
            basis = spec.basis(fields.get(spec.field))
            key = spec.field if spec.transform != "hour" else f"{spec.field}:hour"
            out[key] = sum(w * b for w, b in zip(weights, basis[:-1])) + missing * basis[-1]
        return out

    # -- where the model has data ------------------------------------------------------------------------------
    @property
    def support(self) -> dict[str, Support]:
        """Per clipped numeric field, the range every value is clipped into (the training data's support).

        The range is the feature spec's ``lower``/``upper`` (what scoring clips to, so this can never
        disagree with the scores); ``rows`` comes from ``meta["support"]`` when the model file has it.
        """
        recorded = self.meta.get("support")
        recorded = recorded if isinstance(recorded, Mapping) else {}
        out: dict[str, Support] = {}
        for spec in self.features.numeric:
            if spec.transform == "hour" or (spec.lower is None and spec.upper is None):
                continue
            entry = recorded.get(spec.field)
            rows = entry.get("rows") if isinstance(entry, Mapping) else None
            out[spec.field] = Support(-math.inf if spec.lower is None else spec.lower,
                                      math.inf if spec.upper is None else spec.upper,
                                      rows if type(rows) is int else None)
        return out

    def supported_range(self, field: str) -> tuple[float, float] | None:
        """``(low, high)`` of ``field`` as the model clips it; None when the model does not clip it."""
        found = self.support.get(field)
        return None if found is None else (found.low, found.high)

    # -- plain JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "kind": KIND,
            "version": FORMAT_VERSION,
            "features": self.features.to_dict(),
            "intercept": self.intercept,
            "categorical": {name: dict(table) for name, table in self.categorical.items()},
            "numeric": [{"field": spec.field, "weights": list(weights), "missing": missing}
                        for spec, (weights, missing) in zip(self.features.numeric, self.numeric)],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompiledScorer:
        """Rebuild from ``to_dict()`` output, checking every part (a ``ValueError`` names the bad one)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"model: expected an object, got {type(data).__name__}")
        if data.get("kind") != KIND:
            raise ValueError(f"model.kind: expected {KIND!r}, got {data.get('kind')!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"model.version: this pcrules reads version {FORMAT_VERSION}, got {data.get('version')!r}")
        unknown = set(data) - {"kind", "version", "features", "intercept", "categorical", "numeric", "meta"}
        if unknown:
            raise ValueError(f"model: unknown keys {sorted(unknown)}")
        try:
            features = FeatureSpec.from_dict(_mapping("model.features", data.get("features")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"model.features: {exc}") from None
        intercept = _finite("model.intercept", data.get("intercept"))
        categorical_raw = _mapping("model.categorical", data.get("categorical", {}))
        extra = set(categorical_raw) - set(features.categorical)
        if extra:
            raise ValueError(f"model.categorical: fields not in model.features: {sorted(extra)}")
        categorical = {}
        for name, table in categorical_raw.items():
            table = _mapping(f"model.categorical.{name}", table)
            categorical[name] = {str(k): _finite(f"model.categorical.{name}[{k!r}]", w) for k, w in table.items()}
        numeric_raw = data.get("numeric", [])
        if not isinstance(numeric_raw, list) or len(numeric_raw) != len(features.numeric):
            raise ValueError(f"model.numeric: expected a list of {len(features.numeric)} terms")
        numeric = []
        for i, (spec, term) in enumerate(zip(features.numeric, numeric_raw)):
            term = _mapping(f"model.numeric[{i}]", term)
            if term.get("field") != spec.field:
                raise ValueError(f"model.numeric[{i}].field: expected {spec.field!r}, got {term.get('field')!r}")
            weights = term.get("weights")
            size = len(spec.basis_names()) - 1
            if not isinstance(weights, list) or len(weights) != size:
                raise ValueError(f"model.numeric[{i}].weights: expected a list of {size} numbers")
            numeric.append(([_finite(f"model.numeric[{i}].weights[{j}]", w) for j, w in enumerate(weights)],
                            _finite(f"model.numeric[{i}].missing", term.get("missing"))))
        meta = data.get("meta", {})
        return cls(features, intercept, categorical, numeric, _mapping("model.meta", meta))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}: {len(v)}" for k, v in self.categorical.items())
        return (f"CompiledScorer(categorical={{{sizes}}}, numeric={[n.field for n in self.features.numeric]}, "
                f"intercept={self.intercept:.4f})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompiledScorer) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def supported_range(model: Any, field: str) -> tuple[float, float] | None:
    """The range of ``field`` where ``model`` has training data, ``(low, high)``; None if it does not know one.

    ``model``: a fitted ``AcceptanceModel``, a ``CompiledScorer`` or a model file's dict (``to_dict()``).
    Beyond the range the model scores every value like the nearest end (it is clipped), so a caller that
    places waits (the tuner) should keep them inside it. None: ``field`` is not a clipped numeric feature
    of the model (not in it, the ``hour`` transform, or a model fitted with ``clip=False``), or ``model``
    is a scorer that says nothing about its data (``LinearScorer``, ``NullScorer``).
    Needs neither numpy nor scikit-learn.
    """
    if isinstance(model, Mapping):
        model = CompiledScorer.from_dict(model) if model.get("kind") == KIND else None
    method = getattr(model, "supported_range", None)
    if model is None or method is None or not callable(method):
        return None
    found = method(field)
    return None if found is None else (float(found[0]), float(found[1]))


def _mapping(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected an object, got {type(value).__name__}")
    return value

