"""Acceptance scoring: the Scorer protocol the runtime calls, and scorers that honour it.

The runtime side (``Scorer``, ``NullScorer``, ``LinearScorer``,
``CompiledScorer``, ``load_scorer``, the feature spec) is plain Python and is
imported eagerly. The training side (``AcceptanceModel``, ``evaluate``, the
real-data loader ...) needs numpy, pandas and scikit-learn and is imported
only when one of its names is first used, so ``import pcrules`` and a
runtime that loads a published model never import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .compiled import CompiledScorer, supported_range
from .features import DEFAULT_EVENT_FEATURES, FeatureSpec, Numeric, Support, event_features
from .linear import LinearScorer
from .protocol import NullScorer, Scorer

__all__ = [
    "Scorer",
    "NullScorer",
    "LinearScorer",
    "CompiledScorer",
    "FeatureSpec",
    "Numeric",
    "DEFAULT_EVENT_FEATURES",
    "event_features",
    "load_scorer",
    "Support",
    "supported_range",
    # training side (lazy)
    "AcceptanceModel",
    "EventFeatures",
    "FieldScaler",
    "TrainingReport",
    "TrainingResult",
    "ReliabilityBin",
    "CalibrationBin",
    "CALIBRATION_BINS",
    "calibration_by_bin",
    "evaluate",
    "expected_calibration_error",
    "group_holdout",
    "train_and_evaluate",
    "training_warnings",
    "load_online_shoppers",
    "train_online_shoppers",
    "ONLINE_SHOPPERS_FEATURES",
]

_LAZY = {
    "AcceptanceModel": "model",
    "EventFeatures": "model",
    "FieldScaler": "model",
    "TrainingReport": "model",
    "TrainingResult": "model",
    "ReliabilityBin": "model",
    "CalibrationBin": "model",
    "CALIBRATION_BINS": "model",
    "calibration_by_bin": "model",
    "evaluate": "model",
    "expected_calibration_error": "model",
    "group_holdout": "model",
    "train_and_evaluate": "model",
    "training_warnings": "model",
    "load_online_shoppers": "realdata",
    "train_online_shoppers": "realdata",
    "ONLINE_SHOPPERS_FEATURES": "realdata",
}


def load_scorer(data: Mapping[str, Any]) -> Scorer:
    """A scorer from its plain-JSON form (``to_dict()``), by ``data["kind"]``; ``ValueError`` if it is not one.

    Kinds: ``compiled_logistic`` (``AcceptanceModel.to_dict()``), ``linear``
    (``LinearScorer``), ``null`` (no model). Imports neither numpy, pandas nor
    scikit-learn.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"model: expected an object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind == "compiled_logistic":
        return CompiledScorer.from_dict(data)
    if kind == "linear":
        try:
            return LinearScorer.from_dict(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"model: not a valid linear scorer ({exc!r})") from None
    if kind == "null":
        return NullScorer()
    raise ValueError(f"model.kind: unknown scorer kind {kind!r} (expected compiled_logistic, linear or null)")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
