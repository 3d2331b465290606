"""The acceptance model: a scikit-learn estimator over event rows, its training report, and its compilation.

``AcceptanceModel`` honours the scikit-learn estimator contract (parameters in
``__init__`` only, ``fit`` returns self, learned state ends in ``_``,
``clone``/``get_params``/``set_params`` work) and wraps one ``Pipeline``::

    EventFeatures (features.py: canonical keys + a log1p linear-spline basis per numeric field)
      -> ColumnTransformer(OneHotEncoder(handle_unknown="ignore") on the keys, FieldScaler on the basis)
      -> LogisticRegression (L2)

**Where the model has data.** ``fit`` first reads, per numeric field, the range
the training rows support (``support_``: enough rows at or beyond each end to
measure an accept rate there: at least ``min_rows`` (30) rows, ``min_positives``
(5) expected accepts at the training accept rate, and the share ``support``
(0.1 %) of the rows; never the min/max, which one outlier makes), clips every
value into it (training, ``predict_proba`` and the compiled one-event path
alike: the range is written into the fitted feature spec as ``lower``/``upper``),
and places the spline's knots at quantiles inside it, dropping knots until every
piece of the spline holds as many rows. So the model never extrapolates a spline
past its data (history's offers came from waits of 15-180 s; a 900 s event
scores like a 180 s one), and ``supported_range`` tells the tuner where that is.
Rows, not a percentile, set the ends: exploration that put a few % of offers at
long waits (hundreds of rows) keeps them in the support, where a 1st-99th
percentile rule would cut them away; and expected accepts, not rows alone: 30
offers at a 4 % accept rate hold one accept, which says nothing about a rate
(a world's 58 offers at 240 s with no accept made a 0.4x tail). :class:`FieldScaler`
regularises the spline's thinly supported pieces more strongly than its well
supported ones.

A logistic model over these features is calibrated by construction on data
like its training data (the score equations make the predicted and observed
rates agree on every feature's levels); the training report measures it
(expected calibration error, reliability curve) rather than assuming it.

``compile()`` folds the fitted Pipeline into a :class:`CompiledScorer`, the
pure-Python one-event path the runtime uses (``predict_proba_one``).

Importing this module imports numpy, pandas and scikit-learn; the runtime
never does (``pcrules.scoring`` loads it lazily).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

from .compiled import CompiledScorer, supported_range
from .features import MISSING, FeatureSpec, Numeric, Support, category_key, number_value

__all__ = [
    "EventFeatures",
    "AcceptanceModel",
    "CalibrationBin",
    "FieldScaler",
    "ReliabilityBin",
    "Support",
    "TrainingReport",
    "TrainingResult",
    "as_frame",
    "encode_frame",
    "calibration_by_bin",
    "evaluate",
    "expected_calibration_error",
    "group_holdout",
    "supported_range",
    "train_and_evaluate",
    "training_warnings",
    "CALIBRATION_BINS",
]


# -- features, vectorised -----------------------------------------------------------------------------------------
def as_frame(X: Any) -> pd.DataFrame:
    """Event rows as a DataFrame: a DataFrame as is, a list of field dicts, or one dict of columns."""
    if isinstance(X, pd.DataFrame):
        return X
    if isinstance(X, Mapping):
        return pd.DataFrame(X)
    if isinstance(X, Iterable) and not isinstance(X, (str, bytes)):
        return pd.DataFrame.from_records(list(X))
    raise TypeError(f"expected event rows (a DataFrame or a list of dicts), got {type(X).__name__}")


def _numbers(column: pd.Series | None, n: int) -> np.ndarray:
    """A column as floats, NaN where ``number_value`` would say missing."""
    if column is None:
        return np.full(n, np.nan)
    dtype = column.dtype
    if getattr(dtype, "kind", "O") in "iuf":
        values = column.to_numpy(dtype=float, na_value=np.nan)
    else:  # object, bool, text, category, nullable boolean: value by value, exactly as the one-event path
        values = np.fromiter((np.nan if (x := number_value(v)) is None else x for v in column.tolist()),
                             dtype=float, count=n)
    values = np.array(values, dtype=float, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


def _keys(column: pd.Series | None, n: int) -> np.ndarray:
    """A column as canonical category keys (``category_key`` of every value)."""
    if column is None:
        return np.full(n, MISSING, dtype=object)
    dtype = column.dtype
    if isinstance(dtype, pd.StringDtype):  # every value is a str or missing: the keys without a Python loop
        return column.to_numpy(dtype=object, na_value=MISSING)
    if dtype == np.bool_:
        return np.where(column.to_numpy(), "True", "False").astype(object)
    return np.array([category_key(v) for v in column.tolist()], dtype=object)


def _basis(spec: Numeric, x: np.ndarray) -> list[np.ndarray]:
    """``Numeric.basis`` for a whole column (missing indicator last)."""
    missing = np.isnan(x)
    if spec.transform == "log1p":
        missing |= x < 0  # NaN < 0 is False
    x0 = np.where(missing, 0.0, x)
    if spec.lower is not None or spec.upper is not None:
        x0 = np.where(missing, 0.0, np.clip(x0, spec.lower, spec.upper))
    if spec.transform == "hour":
        angle = (2.0 * math.pi) * (((x0 + spec.utc_offset_hours * 3600.0) % 86400.0) / 86400.0)
        columns = [np.sin(angle), np.cos(angle)]
    else:
        u = np.log1p(x0) if spec.transform == "log1p" else x0
        columns = [u] + [np.maximum(0.0, u - cut) for cut in spec.cut_points]
    columns = [np.where(missing, 0.0, c) for c in columns]
    return columns + [missing.astype(float)]


def encode_frame(spec: FeatureSpec, X: Any) -> pd.DataFrame:
    """Event rows -> categorical keys (text columns) and the numeric basis (float columns), per ``spec``."""
    frame = as_frame(X)
    n = len(frame)
    out: dict[str, Any] = {}
    for name in spec.categorical:  # object dtype, so pandas does not re-infer the keys as a string array
        out[name] = pd.Series(_keys(frame[name] if name in frame.columns else None, n), index=frame.index,
                              dtype=object, copy=False)
    for num in spec.numeric:
        columns = _basis(num, _numbers(frame[num.field] if num.field in frame.columns else None, n))
        for col_name, values in zip(num.basis_names(), columns):
            out[col_name] = values
    return pd.DataFrame(out, index=frame.index)


class EventFeatures(TransformerMixin, BaseEstimator):
    """Pipeline step: event rows -> canonical keys and spline basis (stateless; ``fit`` resolves the spec)."""

    def __init__(self, features: FeatureSpec | Mapping[str, Any] | None = None):
        self.features = features

    def fit(self, X: Any, y: Any = None) -> EventFeatures:
        self.spec_ = FeatureSpec.coerce(self.features)
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "spec_")
        return encode_frame(self.spec_, X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "spec_")
        return np.array(list(self.spec_.categorical) + self.spec_.numeric_columns(), dtype=object)


# -- regularisation in the field's units ---------------------------------------------------------------------------
class FieldScaler(StandardScaler):
    """``StandardScaler`` whose hinge columns share their field's scale: stronger L2 on thinly supported pieces.

    ``groups``: per numeric field, ``(index of its first basis column, indices of its hinge columns)``.

    Why: ``LogisticRegression``'s L2 penalty acts on the coefficients of the *scaled* columns. A plain
    ``StandardScaler`` divides each hinge ``max(0, u - cut)`` by its own standard deviation, which is
    tiny when few rows lie beyond the cut (a sparse tail: long sessions, long dwells), so the raw slope
    change there is nearly free of penalty and a handful of rows can bend the curve far up or down.
    Scaling every hinge by the field's own ``u`` column instead (a hinge is 1-Lipschitz in ``u``, so its
    spread is never larger) penalises every slope change in the same units, per unit of
    ``log1p(seconds)``: a bend resting on thousands of rows is still free to follow them (the likelihood
    outweighs the penalty), one resting on a few dozen is shrunk towards a straight line, a P-spline's
    rule. Chosen over a stronger penalty for all (a smaller ``C``), which would also flatten the
    well-measured shape (10-30 s worst, 2-3 min best). Measured: it is the support (clipping, knots
    where the rows are) that removed the 0.00-13x tails; on top of it this scaler changes little
    while every piece holds ~5 expected accepts, and guards the case where one does not (with 30-row
    ends on 1,600-offer worlds the worst AUC on all events was 0.57 with it, 0.50 without).
    The compiled scorer folds ``mean_``/``scale_`` in as before.
    """

    def __init__(self, *, groups: Sequence[tuple[int, Sequence[int]]] = (), copy: bool = True,
                 with_mean: bool = True, with_std: bool = True):
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.groups = groups

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> FieldScaler:
        super().fit(X, y, sample_weight)
        if self.scale_ is not None:
            for first, hinges in self.groups:
                for j in hinges:
                    self.scale_[j] = self.scale_[first]
        return self


# -- the estimator --------------------------------------------------------------------------------------------------
KNOT_PLACEMENTS = ("quantile", "spec")


class AcceptanceModel(ClassifierMixin, BaseEstimator):
    """P(accept) from event rows: a calibrated logistic model over page, time on page and the other fields.

    ``features``: a :class:`FeatureSpec` (or its dict), None for the observation-event default.
    ``C``, ``solver``, ``max_iter``, ``tol``, ``class_weight``: passed to ``LogisticRegression``
    (``newton-cholesky`` suits many rows and few columns: it converges in a handful of
    iterations where lbfgs needs hundreds; keep ``class_weight=None``: reweighting classes
    breaks calibration).
    ``clip``: restrict every numeric field to the range the training data supports (``support_``
    records it, the fitted ``features_`` carries it as ``lower``/``upper``, so the compiled scorer
    clips identically): the widest range with enough of its present values at or beyond each end:
    ``max(min_rows, min_positives / accept rate)`` rows (30 rows, and 10 expected accepts: 220
    rows at a 4.5 % rate; with 5 the spline's end pieces rested on too few accepts and its tail
    swung), and at least the share ``support`` of them (the ``support`` and ``1 - support``
    quantiles narrowed to the n-th smallest and largest value). A bound the spec
    sets is kept. A value outside the range scores like the nearest end.
    ``knot_placement``: ``"quantile"`` puts as many knots as the spec has at evenly spaced quantiles
    of the training values inside the support; ``"spec"`` keeps the spec's knots that lie inside
    it. Either way knots are then dropped until every piece of the spline holds as many training
    rows as each end. With ``clip=False`` the spec is used as given (no support, no knot changes).
    """

    def __init__(self, features: FeatureSpec | Mapping[str, Any] | None = None, C: float = 1.0,
                 solver: str = "newton-cholesky", max_iter: int = 200, tol: float = 1e-6,
                 class_weight: Any = None, clip: bool = True, support: float = 0.001, min_rows: int = 30,
                 min_positives: float = 10.0, knot_placement: str = "quantile"):
        self.features = features
        self.clip = clip
        self.support = support
        self.min_rows = min_rows
        self.min_positives = min_positives
        self.knot_placement = knot_placement
        self.C = C
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight

    def _pipeline(self, spec: FeatureSpec) -> Pipeline:
        blocks: list[tuple[str, Any, list[str]]] = []
        if spec.categorical:
            blocks.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=float),
                           list(spec.categorical)))
        if spec.numeric:
            groups, offset = [], 0
            for num in spec.numeric:
                width = len(num.basis_names())
                if num.transform != "hour" and width > 2:  # u, hinges..., missing
                    groups.append((offset, list(range(offset + 1, offset + width - 1))))
                offset += width
            blocks.append(("num", FieldScaler(groups=groups), spec.numeric_columns()))
        return Pipeline([
            ("features", EventFeatures(spec)),
            ("encode", ColumnTransformer(blocks, remainder="drop", sparse_threshold=0.0)),
            ("clf", LogisticRegression(C=self.C, solver=self.solver, max_iter=self.max_iter, tol=self.tol,
                                       class_weight=self.class_weight)),
        ])

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> AcceptanceModel:
        frame = as_frame(X)
        target = np.asarray(y)
        if target.ndim != 1 or len(target) != len(frame):
            raise ValueError(f"y: expected one label per row ({len(frame)}), got shape {target.shape}")
        classes = np.unique(target)
        if len(classes) != 2:
            raise ValueError(f"y: expected two classes (accepted or not), got {classes.tolist()[:5]}")
        if not 0.0 <= float(self.support) < 0.5:
            raise ValueError(f"support: expected a share of rows in [0, 0.5), got {self.support!r}")
        if int(self.min_rows) < 0:
            raise ValueError(f"min_rows: expected a count >= 0, got {self.min_rows!r}")
        if not float(self.min_positives) >= 0:
            raise ValueError(f"min_positives: expected a number >= 0, got {self.min_positives!r}")
        if self.knot_placement not in KNOT_PLACEMENTS:
            raise ValueError(f"knot_placement: expected one of {KNOT_PLACEMENTS}, got {self.knot_placement!r}")
        spec = FeatureSpec.coerce(self.features)
        support: dict[str, Support] = {}
        if self.clip:
            rate = float(np.mean(target == classes[1]))  # > 0: both classes are there
            rows = max(int(self.min_rows), math.ceil(float(self.min_positives) / rate - 1e-9))
            spec, support = _fit_support(spec, frame, float(self.support), rows, self.knot_placement)
        pipeline = self._pipeline(spec)
        pipeline.fit(frame, target, **({} if sample_weight is None else {"clf__sample_weight": sample_weight}))
        self.features_ = spec
        self.support_ = support
        self.pipeline_ = pipeline
        self.classes_ = pipeline.classes_
        self.n_train_ = len(frame)
        self.base_rate_ = float(np.mean(target == self.classes_[1]))
        self._compiled: CompiledScorer | None = None
        return self

    def supported_range(self, field: str) -> tuple[float, float] | None:
        """``(low, high)`` of ``field`` in ``support_`` (what the model clips to); None if it has none."""
        check_is_fitted(self, "pipeline_")
        found = self.support_.get(field)
        return None if found is None else (found.low, found.high)

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.decision_function(as_frame(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.predict_proba(as_frame(X))

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[(self.predict_proba(X)[:, 1] > 0.5).astype(int)]

    # -- the one-event path -------------------------------------------------------------------------------------
    def compile(self, meta: Mapping[str, Any] | None = None) -> CompiledScorer:
        """Fold the fitted Pipeline into a pure-Python scorer of P(``classes_[1]``)."""
        check_is_fitted(self, "pipeline_")
        spec: FeatureSpec = self.features_
        encode: ColumnTransformer = self.pipeline_.named_steps["encode"]
        clf: LogisticRegression = self.pipeline_.named_steps["clf"]
        coef = clf.coef_[0].astype(float)
        intercept = float(clf.intercept_[0])
        names = list(encode.get_feature_names_out())
        offset = 0
        categorical: dict[str, dict[str, float]] = {}
        if spec.categorical:
            onehot: OneHotEncoder = encode.named_transformers_["cat"]
            for name, categories in zip(spec.categorical, onehot.categories_):
                table = {}
                for category in categories:
                    expected = f"cat__{name}_{category}"
                    if names[offset] != expected:  # the ColumnTransformer's layout is what compile assumes
                        raise AssertionError(f"column {offset} is {names[offset]!r}, expected {expected!r}")
                    table[str(category)] = float(coef[offset])
                    offset += 1
                categorical[name] = table
        numeric: list[tuple[list[float], float]] = []
        if spec.numeric:
            scaler: StandardScaler = encode.named_transformers_["num"]
            for num in spec.numeric:
                weights = []
                for col_name in num.basis_names():
                    if names[offset] != f"num__{col_name}":
                        raise AssertionError(f"column {offset} is {names[offset]!r}, expected num__{col_name}")
                    j = offset - (len(names) - len(scaler.mean_))
                    w = float(coef[offset]) / float(scaler.scale_[j])
                    intercept -= w * float(scaler.mean_[j])
                    weights.append(w)
                    offset += 1
                numeric.append((weights[:-1], weights[-1]))
        if offset != len(coef):
            raise AssertionError(f"compiled {offset} of {len(coef)} coefficients")
        import sklearn

        info: dict[str, Any] = {
            "positive_class": _plain(self.classes_[1]), "n_train": int(self.n_train_), "base_rate": self.base_rate_,
            "C": float(self.C), "trained_with": {"scikit-learn": sklearn.__version__},
            "support": {name: {"low": s.low, "high": s.high, "rows": s.rows} for name, s in self.support_.items()}}
        info.update(meta or {})
        return CompiledScorer(spec, intercept, categorical, numeric, info)

    def predict_proba_one(self, fields: Mapping[str, Any]) -> float:
        """P(accept) for one event, through the compiled scorer (no scikit-learn call)."""
        compiled = getattr(self, "_compiled", None)
        if compiled is None:
            compiled = self._compiled = self.compile()
        return compiled.predict_proba_one(fields)

    def to_dict(self) -> dict:
        """The compiled model as plain JSON; ``pcrules.scoring.load_scorer`` reads it back."""
        return self.compile().to_dict()

    def report(self, X: Any, y: Any, p_true: Any = None, bins: int = 10, *,
               calibration_bins: Mapping[str, Sequence[float]] | None = None, warn: bool = True) -> TrainingReport:
        """The training report of this model on rows ``X`` with labels ``y`` (and true probabilities if known).

        Besides :func:`evaluate`'s figures: a calibration table per time bin of each field of
        ``calibration_bins`` present in ``X`` (default: ``seconds_on_page`` and ``session_seconds`` in
        :data:`CALIBRATION_BINS`), and, with ``warn`` (meant for held-out rows), the plain-sentence
        ``warnings`` of :func:`training_warnings`: too few accepts to measure anything, time bins too
        thin to check, numeric fields whose support is narrower than the feature spec's knots.
        """
        frame = as_frame(X)
        outcome = np.asarray(y) == self.classes_[1]
        p = self.predict_proba(frame)[:, 1]
        report = evaluate(outcome, p, p_true, bins=bins)
        fields = {name: CALIBRATION_BINS for name in CALIBRATION_FIELDS} if calibration_bins is None \
            else calibration_bins
        truth = None if p_true is None else np.asarray(p_true, dtype=float)
        tables = {name: calibration_by_bin(_numbers(frame[name], len(frame)), outcome, p, truth, edges,
                                           unit=" s" if "seconds" in name else "")
                  for name, edges in fields.items() if name in frame.columns}
        warnings = training_warnings(report, tables, self.support_, FeatureSpec.coerce(self.features)) if warn else []
        return replace(report, calibration=tables, warnings=warnings)


def _support_range(x: np.ndarray, tail: float, min_rows: int) -> tuple[float, float]:
    """The robust range of sorted values ``x``: quantiles ``tail`` and ``1 - tail``, with ``min_rows`` beyond each end.

    Not min/max: one tab left open for an hour would make the range. Quantiles by the inverted CDF, so
    both ends are values that occur (a wait of 180 s, not 179.4). With fewer than ``2 * min_rows``
    values only the quantiles apply (and a range that would be empty collapses to the median).
    """
    n = len(x)
    low = float(np.quantile(x, tail, method="inverted_cdf"))
    high = float(np.quantile(x, 1.0 - tail, method="inverted_cdf"))
    if min_rows and n >= 2 * min_rows:
        low, high = max(low, float(x[min_rows - 1])), min(high, float(x[n - min_rows]))
    if low > high:
        low = high = float(np.median(x))
    return low, high


def _segment_rows(x: np.ndarray, knots: list[float]) -> np.ndarray:
    """Rows of sorted ``x`` in each piece of the spline: ``<= k1``, ``(k1, k2]``, ..., ``> k_last``."""
    cumulative = np.searchsorted(x, knots, side="right")
    return np.diff(np.concatenate(([0], cumulative, [len(x)])))


def _place_knots(num: Numeric, x: np.ndarray, low: float, high: float, placement: str,
                 min_rows: int) -> tuple[float, ...]:
    """Knots inside ``(low, high)`` for clipped sorted values ``x``, every piece with ``min_rows`` rows."""
    if placement == "quantile" and num.knots:
        k = len(num.knots)
        found = np.quantile(x, np.arange(1, k + 1) / (k + 1), method="inverted_cdf")
        candidates = sorted({float(f"{v:.4g}") for v in found.tolist()})
    else:
        candidates = list(num.knots)
    knots = [c for c in candidates if low < c < high and (num.transform != "log1p" or c >= 0)]
    while knots:  # merge the thinnest piece into its thinner neighbour until every piece has min_rows rows
        rows = _segment_rows(x, knots)
        j = int(np.argmin(rows))
        if rows[j] >= min_rows:
            break
        if j == 0:
            del knots[0]
        elif j == len(rows) - 1:
            del knots[-1]
        else:
            del knots[j - 1 if rows[j - 1] <= rows[j + 1] else j]
    return tuple(knots)


def _fit_support(spec: FeatureSpec, frame: pd.DataFrame, tail: float, min_rows: int,
                 placement: str) -> tuple[FeatureSpec, dict[str, Support]]:
    """``spec`` restricted to where ``frame`` has data (bounds and knots per numeric field), and that support."""
    numeric, support = [], {}
    for num in spec.numeric:
        if num.transform != "hour" and num.field in frame.columns:
            x = _numbers(frame[num.field], len(frame))
            x = np.sort(x[~np.isnan(x) & ((x >= 0) if num.transform == "log1p" else True)])
            if len(x):
                low, high = _support_range(x, tail, min_rows)
                if num.lower is not None:  # a bound the spec sets wins over the data's
                    low, high = num.lower, max(high, num.lower) if num.upper is None else high
                if num.upper is not None:
                    low, high = min(low, num.upper) if num.lower is None else low, num.upper
                clipped = np.clip(x, low, high)
                num = num.with_range(low, high).with_knots(_place_knots(num, clipped, low, high, placement,
                                                                        min_rows))
                support[num.field] = Support(low, high, int(len(x)))
        numeric.append(num)
    return FeatureSpec(spec.categorical, tuple(numeric)), support


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# -- the training report --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReliabilityBin:
    lo: float
    hi: float
    count: int
    mean_predicted: float | None  # None for an empty bin
    observed: float | None


@dataclass(frozen=True)
class CalibrationBin:
    """Calibration in one bin of a field (time on page, time on site): ``[lo, hi)``, ``hi`` None when open.

    ``label`` ``"missing"`` (``lo`` and ``hi`` None): the rows without a usable value (absent, not a
    number, below the first edge). ``ratio``: mean predicted / observed rate (None when nothing was
    observed); ``mean_true`` / ``ratio_to_true``: the same against the true probabilities when known.
    """

    label: str
    lo: float | None
    hi: float | None
    rows: int
    positives: int
    mean_predicted: float | None  # None for an empty bin
    observed: float | None
    ratio: float | None
    mean_true: float | None = None
    ratio_to_true: float | None = None


@dataclass(frozen=True)
class TrainingReport:
    """Discrimination and calibration of predicted probabilities against outcomes (plain data, JSON-safe).

    ``oracle`` holds the same measures for the ground-truth probabilities
    when they are known (a synthetic world), plus how far the model's
    probabilities are from them (``mae_vs_truth``, ``rmse_vs_truth``).
    ``roc_auc`` is None when the outcomes hold one class only.
    ``calibration``: per field (``seconds_on_page``, ``session_seconds``), a
    :class:`CalibrationBin` per time bin (``AcceptanceModel.report`` fills it;
    the bins' rows add up to ``n``). ``warnings``: plain sentences on what the
    data cannot support (held-out reports only; see :func:`training_warnings`).
    In a notebook the report displays itself: figures, warnings, tables.
    """

    n: int
    positives: int
    base_rate: float
    mean_predicted: float
    roc_auc: float | None
    brier: float
    log_loss: float
    ece: float
    reliability: list[ReliabilityBin]
    oracle: dict[str, float | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, list[CalibrationBin]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def reliability_frame(self) -> pd.DataFrame:
        """The reliability curve as a DataFrame (one row per bin) for plotting."""
        return pd.DataFrame([asdict(b) for b in self.reliability])

    def calibration_frame(self, field: str) -> pd.DataFrame:
        """The calibration table of one field (``seconds_on_page`` ...), one row per bin, indexed by label."""
        if field not in self.calibration:
            raise KeyError(f"no calibration table for {field!r}; the report has {sorted(self.calibration)}")
        frame = pd.DataFrame([asdict(b) for b in self.calibration[field]]).set_index("label")
        frame.index.name = field
        return frame.drop(columns=["lo", "hi"] + (["mean_true", "ratio_to_true"] if self.oracle is None else []))

    def text(self) -> str:
        """The summary line, each warning on a line of its own (``warning: ...``), then the calibration tables."""
        lines = [self.summary()] + [f"warning: {w}" for w in self.warnings]
        for name in self.calibration:
            table = self.calibration_frame(name).to_string(float_format="{:.4g}".format)
            lines += ["", f"calibration by {name}:", table]
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("TrainingReport(...)" if cycle else self.text())

    def _repr_html_(self) -> str:
        from html import escape

        parts = [f"<p><b>Held-out report</b>: {escape(self.summary())}</p>"]
        if self.warnings:
            items = "".join(f"<li>warning: {escape(w)}</li>" for w in self.warnings)
            parts.append(f'<div style="border-left:4px solid #c60;padding:2px 8px;background:#fff6ec">'
                         f"<b>{len(self.warnings)} warning(s)</b><ul>{items}</ul></div>")
        else:
            parts.append("<p>No warnings: enough held-out accepts, every time bin inside the support checked.</p>")
        for name in self.calibration:
            parts.append(f"<p><b>Calibration by {escape(name)}</b> (held-out rows; ratio = mean predicted / "
                         f"observed)</p>" + self.calibration_frame(name).to_html(float_format="{:.4g}".format,
                                                                                     na_rep="–"))
        return "\n".join(parts)

    def summary(self) -> str:
        auc = "n/a" if self.roc_auc is None else f"{self.roc_auc:.4f}"
        text = (f"n={self.n} base rate={self.base_rate:.4f} mean predicted={self.mean_predicted:.4f} "
                f"AUC={auc} Brier={self.brier:.5f} log loss={self.log_loss:.5f} ECE={self.ece:.4f}")
        if self.oracle:
            o = self.oracle
            oauc = "n/a" if o.get("roc_auc") is None else f"{o['roc_auc']:.4f}"
            text += (f" | oracle AUC={oauc} Brier={o['brier']:.5f} ECE={o['ece']:.4f}"
                     f" | |p - truth| mean={o['mae_vs_truth']:.4f}")
        return text


def _reliability(y: np.ndarray, p: np.ndarray, bins: int) -> tuple[list[ReliabilityBin], float]:
    index = np.minimum((p * bins).astype(int), bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        if count:
            mean_p, observed = float(p[mask].mean()), float(y[mask].mean())
            ece += count / len(p) * abs(mean_p - observed)
            out.append(ReliabilityBin(b / bins, (b + 1) / bins, count, mean_p, observed))
        else:
            out.append(ReliabilityBin(b / bins, (b + 1) / bins, 0, None, None))
    return out, float(ece)


def expected_calibration_error(y: Any, p: Any, bins: int = 10) -> float:
    """ECE over ``bins`` equal-width bins of predicted probability: sum of |mean predicted - observed| by weight."""
    return _reliability(np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), 0.0, 1.0), bins)[1]


def _scores(y: np.ndarray, p: np.ndarray, bins: int) -> dict[str, Any]:
    both = len(np.unique(y)) == 2
    reliability, ece = _reliability(y, p, bins)
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "ece": ece,
        "reliability": reliability,
    }


def evaluate(y_true: Any, p: Any, p_true: Any = None, bins: int = 10, **extra: Any) -> TrainingReport:
    """The training report of probabilities ``p`` against 0/1 outcomes ``y_true`` (and truth ``p_true``)."""
    y = np.asarray(y_true).astype(float)
    prob = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    if y.shape != prob.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"expected as many outcomes as probabilities, got {y.shape} and {prob.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("outcomes must be 0/1 (or booleans)")
    scores = _scores(y, prob, bins)
    oracle = None
    if p_true is not None:
        truth = np.clip(np.asarray(p_true, dtype=float), 0.0, 1.0)
        if truth.shape != prob.shape:
            raise ValueError(f"p_true: expected shape {prob.shape}, got {truth.shape}")
        o = _scores(y, truth, bins)
        oracle = {"roc_auc": o["roc_auc"], "brier": o["brier"], "log_loss": o["log_loss"], "ece": o["ece"],
                  "mean_truth": float(truth.mean()),
                  "mae_vs_truth": float(np.abs(prob - truth).mean()),
                  "rmse_vs_truth": float(np.sqrt(((prob - truth) ** 2).mean()))}
    return TrainingReport(n=len(y), positives=int(y.sum()), base_rate=float(y.mean()),
                          mean_predicted=float(prob.mean()), roc_auc=scores["roc_auc"], brier=scores["brier"],
                          log_loss=scores["log_loss"], ece=scores["ece"], reliability=scores["reliability"],
                          oracle=oracle, extra=dict(extra))


CALIBRATION_FIELDS = ("seconds_on_page", "session_seconds")
CALIBRATION_BINS: tuple[float, ...] = (0, 15, 30, 60, 120, 180, 300, 600)
"""Edges of the time bins (seconds) the report checks calibration in: ``[0, 15)`` ... ``[600, inf)``."""


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def calibration_by_bin(x: Any, y: Any, p: Any, p_true: Any = None, edges: Sequence[float] = CALIBRATION_BINS,
                       unit: str = " s") -> list[CalibrationBin]:
    """Rows, accepts, mean predicted, observed rate (and mean true P) per bin ``[edge, next edge)`` of ``x``.

    The last bin is open (``600+ s``); rows whose ``x`` is NaN or below the first edge make a ``missing``
    bin (present only when there are some), so the bins' rows add up to ``len(x)``.
    """
    values = np.asarray(x, dtype=float)
    outcome = np.asarray(y, dtype=float)
    prob = np.asarray(p, dtype=float)
    truth = None if p_true is None else np.asarray(p_true, dtype=float)
    bounds = [float(e) for e in edges]
    if not bounds or bounds != sorted(set(bounds)):
        raise ValueError(f"edges: expected strictly increasing numbers, got {list(edges)!r}")
    index = np.searchsorted(np.asarray(bounds), np.where(np.isnan(values), -np.inf, values), side="right") - 1
    out = []

    def one(label: str, lo: float | None, hi: float | None, mask: np.ndarray) -> CalibrationBin:
        mean_p, observed = _mean(prob[mask]), _mean(outcome[mask])
        mean_true = None if truth is None else _mean(truth[mask])
        return CalibrationBin(label, lo, hi, int(mask.sum()), int(outcome[mask].sum()), mean_p, observed,
                              _ratio(mean_p, observed), mean_true, _ratio(mean_p, mean_true))

    for b, lo in enumerate(bounds):
        hi = bounds[b + 1] if b + 1 < len(bounds) else None
        label = f"{lo:g}-{hi:g}{unit}" if hi is not None else f"{lo:g}+{unit}"
        out.append(one(label, lo, hi, index == b))
    if (index < 0).any():
        out.append(one("missing", None, None, index < 0))
    return out


def _auc_half_width(auc: float | None, positives: int, negatives: int) -> float | None:
    """Half the 95 % interval of an AUC (Hanley & McNeil 1982), None when it cannot be measured."""
    if auc is None or positives < 1 or negatives < 1:
        return None
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1.0 - auc) + (positives - 1) * (q1 - auc * auc)
           + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    return 1.96 * math.sqrt(max(var, 0.0))


def _narrow(found: Support, knots: Sequence[float]) -> bool:
    """Whether the support misses more than the outermost piece of the spec's spline at either end.

    The spec's knots say where its author expects the shape to change; a support that stops short of
    the last knot but one (or starts past the second) leaves two or more pieces without data, which is
    worth a warning; missing only the outermost piece (events up to 420 s, a knot at 600 s) is not.
    """
    if len(knots) == 1:
        return found.high < knots[0] or found.low > knots[0]
    return found.high < knots[-2] or found.low > knots[1]


def _number(value: float, unit: str) -> str:
    return f"{value:,.4g}{unit}"


def training_warnings(report: TrainingReport, calibration: Mapping[str, Sequence[CalibrationBin]],
                      support: Mapping[str, Support], spec: FeatureSpec | None = None, *,
                      min_held_out_positives: int = 50, min_bin_rows: int = 30,
                      min_bin_positives: int = 5) -> list[str]:
    """What the data cannot support, as plain sentences (empty when there is nothing to say).

    * fewer than ``min_held_out_positives`` accepts in ``report`` (the held-out rows): with their AUC
      and calibration intervals;
    * per ``calibration`` field, the bins inside the field's ``support`` (where the model claims to
      know) with fewer than ``min_bin_rows`` rows or ``min_bin_positives`` accepts; bins beyond the
      support are scored like its ends, which the next sentence says;
    * per field of ``support`` that misses more than the outermost piece of the spline of ``spec`` (the
      spec as declared, not the fitted ``features_`` whose knots are already inside the support: the
      range the spec was written for, see ``_narrow``): the model does not extrapolate beyond its
      support and the tuner is restricted to it.
    """
    out = []
    k, n = report.positives, report.n
    if k < min_held_out_positives:
        half = _auc_half_width(report.roc_auc, k, n - k)
        known = ("the AUC cannot be measured" if half is None else f"the AUC's 95 % interval is about ±{half:.2f}")
        rate = f", the accept rate's about ±{196 / math.sqrt(k):.0f} %" if k else ""
        out.append(f"{k} accepted offers held out (of {n:,}): AUC and calibration are not measurable to ±0.05 "
                   f"({known}{rate}); train on more history (at least {min_held_out_positives} held-out accepts).")
    for name, bins in calibration.items():
        found = support.get(name)
        thin = [b for b in bins if b.lo is not None
                and (found is None or (b.lo <= found.high and (b.hi is None or b.hi > found.low)))
                and (b.rows < min_bin_rows or b.positives < min_bin_positives)]
        if thin:
            listed = ", ".join(f"{b.label} ({b.rows} rows, {b.positives} accepted)" for b in thin)
            out.append(f"{name}: too few held-out offers to check calibration (fewer than {min_bin_rows} rows or "
                       f"{min_bin_positives} accepts) in {listed}.")
    for num in (spec.numeric if spec is not None else ()):
        found = support.get(num.field)
        if found is None or not num.knots or not _narrow(found, num.knots):
            continue
        unit = " s" if "seconds" in num.field else ""
        rows = "" if found.rows is None else f" (of {found.rows:,} training rows)"
        out.append(f"{num.field} has training data only between {_number(found.low, unit)} and "
                   f"{_number(found.high, unit)}{rows}; the feature spec was written for "
                   f"{_number(num.knots[0], unit)} to {_number(num.knots[-1], unit)}: the model will not "
                   f"extrapolate beyond (a value outside is scored like the nearest end), and the tuner is "
                   f"restricted to it.")
    return out


# -- splitting and one-call training --------------------------------------------------------------------------------
def group_holdout(groups: Sequence[Any] | pd.Series, test_size: float = 0.25, seed: int = 0) -> np.ndarray:
    """A boolean test mask that holds out whole groups (visitors): no visitor is on both sides."""
    values = pd.Series(np.asarray(groups, dtype=object))
    unique = values.drop_duplicates().to_numpy()
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(len(unique) * test_size)))
    held = set(rng.permutation(unique)[:n_test].tolist())
    return values.isin(held).to_numpy()


@dataclass
class TrainingResult:
    model: AcceptanceModel
    test: TrainingReport
    train: TrainingReport
    n_train: int
    n_test: int
    refit: bool = False  # `model` was fitted again on every row, after the report measured its held-out twin

    def to_dict(self) -> dict:
        return {"test": self.test.to_dict(), "train": self.train.to_dict(), "n_train": self.n_train,
                "n_test": self.n_test, "refit": self.refit, "params": {k: v for k, v in self.model.get_params().items()
                                                   if k != "features"},
                "features": self.model.features_.to_dict()}


def train_and_evaluate(X: Any, y: Any, *, groups: Any = None, p_true: Any = None, test_size: float = 0.25,
                       seed: int = 0, **params: Any) -> TrainingResult:
    """Split (whole ``groups`` held out when given, else stratified by ``y``), fit, and report on both sides."""
    frame = as_frame(X).reset_index(drop=True)
    target = np.asarray(y)
    if groups is not None:
        test = group_holdout(groups, test_size, seed)
    else:
        index = np.arange(len(frame))
        _, test_index = train_test_split(index, test_size=test_size, random_state=seed, stratify=target)
        test = np.zeros(len(frame), dtype=bool)
        test[test_index] = True
    truth = None if p_true is None else np.asarray(p_true, dtype=float)
    model = AcceptanceModel(**params).fit(frame[~test], target[~test])
    test_report = model.report(frame[test], target[test], None if truth is None else truth[test])
    train_report = model.report(frame[~test], target[~test], None if truth is None else truth[~test], warn=False)
    return TrainingResult(model, test_report, train_report, int((~test).sum()), int(test.sum()))
