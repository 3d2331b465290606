"""What the acceptance model sees of an event: the feature spec and the encoding of one value.

Stdlib only at import time, so the compiled one-event scorer (``compiled.py``)
and the training pipeline (``model.py``) share *one* definition of every
feature. Each value is first made canonical by a function used by both paths:

- a **categorical** field (``page``, ``device``, ``returning`` ...) becomes a
  text key: text as it is, ``True``/``False`` as ``"True"``/``"False"`` (so
  history read back from CSV as text keeps the runtime's keys), a
  finite number as ``"3"`` or ``"2.5"``; anything else — the field absent,
  null, NaN, an object — is the key ``"__missing__"``. The model then learns
  a weight per key it saw in training (the missing key included, when it was
  seen); a key it never saw weighs nothing (scikit-learn's
  ``OneHotEncoder(handle_unknown="ignore")``: all zeros).
- a **numeric** field becomes a float, or *missing* when it is absent, null,
  a boolean, text (``"301"`` is not a number, as in the rules), NaN,
  infinite, or — for the ``log1p`` transform — negative. A missing value has
  all its basis values 0 and its missing indicator 1; a present one the
  reverse, after being clipped into ``[lower, upper]`` when the spec sets a
  range (a fitted model sets it to the range its training data supports,
  see ``AcceptanceModel``).

The numeric basis is a **linear spline** (hinge functions at fixed knots) of
``log1p(value)``, so the model can learn shapes such as "two to three minutes
on a page is good, ten to thirty seconds is bad": ``u``, ``max(0, u - log1p(k))``
for each knot ``k`` (a fitted model places its knots inside the supported
range, where every piece of the spline has training rows). The ``hour`` transform turns an epoch ``ts`` into the
hour of day at a fixed UTC offset, as ``sin``/``cos`` of the 24-hour circle.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "MISSING",
    "Support",
    "TRANSFORMS",
    "Numeric",
    "FeatureSpec",
    "DEFAULT_EVENT_FEATURES",
    "event_features",
    "category_key",
    "number_value",
]

MISSING = "__missing__"
TRANSFORMS = ("log1p", "linear", "hour")
_TAU = 2.0 * math.pi


def category_key(value: Any) -> str:
    """The canonical text key of a categorical value (``MISSING`` for anything that is not a scalar value)."""
    if type(value) is str:
        return value
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, str):  # a str subclass (numpy.str_)
        return str(value)
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except (OverflowError, TypeError, ValueError):
            return MISSING
        if not math.isfinite(number):
            return MISSING
        if number.is_integer():
            return str(int(number))
        return repr(number)
    if type(value).__name__ == "bool_":  # numpy.bool_ (not a numbers.Real), without importing numpy
        return "True" if bool(value) else "False"
    return MISSING


def number_value(value: Any) -> float | None:
    """The value as a finite float, or None (missing). Booleans and text are not numbers."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class Support(NamedTuple):
    """Where the training data has a numeric field: values are clipped into ``[low, high]`` before scoring.

    ``rows``: the training rows with a present value that the range was read from (None when a model file
    does not say). A fitted ``AcceptanceModel`` holds one per clipped field in ``support_``.
    """

    low: float
    high: float
    rows: int | None = None


@dataclass(frozen=True)
class Numeric:
    """One numeric field and its basis.

    ``transform``: ``log1p`` (values < 0 count as missing), ``linear``, or
    ``hour`` (epoch seconds -> hour of day at ``utc_offset_hours``; knots are
    not used). ``knots`` are in the field's own units (seconds, pages ...).
    ``lower``/``upper``: a present value is clipped into this range first
    (``AcceptanceModel`` sets it to the range the training data supports:
    enough training rows at or beyond each end to measure a rate, 30 rows
    and 5 expected accepts by default, so a model never extrapolates its
    spline beyond where it has data: a page left open for a week scores like
    the longest dwell the training rows hold in numbers). Not for ``hour``.
    """

    field: str
    transform: str = "log1p"
    knots: tuple[float, ...] = ()
    utc_offset_hours: float = 0.0
    lower: float | None = None
    upper: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not self.field:
            raise ValueError(f"numeric field: expected a non-empty name, got {self.field!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"{self.field}.transform: expected one of {TRANSFORMS}, got {self.transform!r}")
        knots = tuple(float(k) for k in self.knots)
        if any(not math.isfinite(k) for k in knots) or list(knots) != sorted(set(knots)):
            raise ValueError(f"{self.field}.knots: expected finite, strictly increasing numbers, got {self.knots!r}")
        if self.transform == "log1p" and any(k < 0 for k in knots):
            raise ValueError(f"{self.field}.knots: log1p knots must be >= 0, got {self.knots!r}")
        if self.transform == "hour" and knots:
            raise ValueError(f"{self.field}.knots: the hour transform takes no knots")
        if not math.isfinite(float(self.utc_offset_hours)):
            raise ValueError(f"{self.field}.utc_offset_hours: expected a finite number")
        for name in ("lower", "upper"):
            bound = getattr(self, name)
            if bound is not None:
                if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
                    raise ValueError(f"{self.field}.{name}: expected a finite number or None, got {bound!r}")
                if self.transform == "hour":
                    raise ValueError(f"{self.field}.{name}: the hour transform takes no clipping range")
                object.__setattr__(self, name, float(bound))
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"{self.field}: lower {self.lower:g} > upper {self.upper:g}")
        object.__setattr__(self, "knots", knots)
        object.__setattr__(self, "utc_offset_hours", float(self.utc_offset_hours))

    @property
    def cut_points(self) -> tuple[float, ...]:
        """The knots where the basis bends, on the scale the basis works in (log1p for ``log1p``)."""
        if self.transform == "log1p":
            return tuple(math.log1p(k) for k in self.knots)
        return self.knots

    def basis_names(self) -> list[str]:
        """Names of the basis columns, the missing indicator last."""
        if self.transform == "hour":
            names = [f"{self.field}:hour_sin", f"{self.field}:hour_cos"]
        else:
            names = [f"{self.field}:{self.transform}"] + [f"{self.field}:{self.transform}>{k:g}" for k in self.knots]
        return names + [f"{self.field}:missing"]

    def basis(self, value: Any) -> list[float]:
        """The basis of one raw value (missing indicator last) — the reference for the vectorised path."""
        number = number_value(value)
        if number is not None and self.transform == "log1p" and number < 0:
            number = None
        size = 2 if self.transform == "hour" else 1 + len(self.knots)
        if number is None:
            return [0.0] * size + [1.0]
        if self.lower is not None and number < self.lower:
            number = self.lower
        if self.upper is not None and number > self.upper:
            number = self.upper
        if self.transform == "hour":
            angle = _TAU * (((number + self.utc_offset_hours * 3600.0) % 86400.0) / 86400.0)
            return [math.sin(angle), math.cos(angle), 0.0]
        u = math.log1p(number) if self.transform == "log1p" else number
        return [u] + [max(0.0, u - c) for c in self.cut_points] + [0.0]

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"field": self.field, "transform": self.transform, "knots": list(self.knots)}
        if self.transform == "hour":
            out["utc_offset_hours"] = self.utc_offset_hours
        if self.lower is not None:
            out["lower"] = self.lower
        if self.upper is not None:
            out["upper"] = self.upper
        return out

    def with_range(self, lower: float | None, upper: float | None) -> Numeric:
        return Numeric(self.field, self.transform, self.knots, self.utc_offset_hours, lower, upper)

    def with_knots(self, knots: Iterable[float]) -> Numeric:
        return Numeric(self.field, self.transform, tuple(knots), self.utc_offset_hours, self.lower, self.upper)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Numeric:
        unknown = set(data) - {"field", "transform", "knots", "utc_offset_hours", "lower", "upper"}
        if unknown:
            raise ValueError(f"numeric {data.get('field')!r}: unknown keys {sorted(unknown)}")
        return cls(str(data["field"]), str(data.get("transform", "log1p")), tuple(data.get("knots", ())),
                   float(data.get("utc_offset_hours", 0.0)), data.get("lower"), data.get("upper"))


@dataclass(frozen=True)
class FeatureSpec:
    """The fields the model uses: categorical ones (one-hot) and numeric ones (a spline basis each)."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[Numeric, ...] = ()

    def __post_init__(self) -> None:
        categorical = tuple(self.categorical)
        numeric = tuple(n if isinstance(n, Numeric) else Numeric.from_dict(n) for n in self.numeric)
        if not categorical and not numeric:
            raise ValueError("a feature spec needs at least one field")
        names = list(categorical) + [n.field + ("#hour" if n.transform == "hour" else "") for n in numeric]
        if len(set(names)) != len(names):
            raise ValueError(f"a field is listed twice in the feature spec: {names}")
        if any(not isinstance(c, str) or not c for c in categorical):
            raise ValueError(f"categorical fields: expected non-empty names, got {categorical!r}")
        object.__setattr__(self, "categorical", categorical)
        object.__setattr__(self, "numeric", numeric)

    def fields(self) -> list[str]:
        """Every event field the spec reads."""
        seen: dict[str, None] = dict.fromkeys(self.categorical)
        seen.update(dict.fromkeys(n.field for n in self.numeric))
        return list(seen)

    def numeric_columns(self) -> list[str]:
        return [name for n in self.numeric for name in n.basis_names()]

    def encode_one(self, event: Mapping[str, Any]) -> tuple[list[str], list[float]]:
        """One event as (categorical keys, numeric basis): the pure-Python reference encoding."""
        keys = [category_key(event.get(name)) for name in self.categorical]
        values = [x for n in self.numeric for x in n.basis(event.get(n.field))]
        return keys, values

    def to_dict(self) -> dict:
        return {"categorical": list(self.categorical), "numeric": [n.to_dict() for n in self.numeric]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(tuple(data.get("categorical", ())), tuple(Numeric.from_dict(n) for n in data.get("numeric", ())))

    @classmethod
    def coerce(cls, spec: FeatureSpec | Mapping[str, Any] | None) -> FeatureSpec:
        if spec is None:
            return DEFAULT_EVENT_FEATURES
        if isinstance(spec, FeatureSpec):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        raise TypeError(f"features: expected a FeatureSpec, a dict or None, got {type(spec).__name__}")


def event_features(*, hour_utc_offset: float | None = None, extra_categorical: Iterable[str] = (),
                   extra_numeric: Sequence[Numeric] = ()) -> FeatureSpec:
    """The default spec for observation events, optionally with hour of day and more fields."""
    numeric = list(DEFAULT_EVENT_FEATURES.numeric) + list(extra_numeric)
    if hour_utc_offset is not None:
        numeric.append(Numeric("ts", "hour", utc_offset_hours=hour_utc_offset))
    return FeatureSpec(DEFAULT_EVENT_FEATURES.categorical + tuple(extra_categorical), tuple(numeric))


# The observation event: which page, how long on it (knots chosen so that "10-30 s" and "2-3 min" are separate
# pieces of the spline), device, returning, how deep into the session.
DEFAULT_EVENT_FEATURES = FeatureSpec(
    categorical=("page", "device", "returning"),
    numeric=(
        Numeric("seconds_on_page", "log1p", (10, 30, 60, 120, 180, 300, 600)),
        # Time on site and pages viewed drive acceptance more than the page does (BoldChat; the world follows it):
        # enough knots to follow a dip at 10-30 s and a peak at 2-3 minutes on site. A fitted model moves them to
        # quantiles of its data and drops those a piece of the spline would not have the rows to support.
        Numeric("pages_viewed", "log1p", (2, 4, 8)),
        Numeric("session_seconds", "log1p", (10, 30, 60, 120, 180, 300, 600, 1800)),
    ),
)
