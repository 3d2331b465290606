"""The acceptance model: a scikit-learn estimator over event rows, its training report, and its compilation.

``AcceptanceModel`` honours the scikit-learn estimator contract (parameters in
``__init__`` only, ``fit`` returns self, learned state ends in ``_``,
``clone``/``get_params``/``set_params`` work) and wraps one ``Pipeline``::

    EventFeatures (features.py: canonical keys + a log1p linear-spline basis per numeric field)
      -> ColumnTransformer(OneHotEncoder(handle_unknown="ignore") on the keys, StandardScaler on the basis)
      -> LogisticRegression (L2)

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
from dataclasses import asdict, dataclass, field
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

from .compiled import CompiledScorer
from .features import MISSING, FeatureSpec, Numeric, category_key, number_value

__all__ = [
    "EventFeatures",
    "AcceptanceModel",
    "ReliabilityBin",
    "TrainingReport",
    "TrainingResult",
    "as_frame",
    "encode_frame",
    "evaluate",
    "expected_calibration_error",
    "group_holdout",
    "train_and_evaluate",
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


# -- the estimator --------------------------------------------------------------------------------------------------
class AcceptanceModel(ClassifierMixin, BaseEstimator):
    """P(accept) from event rows: a calibrated logistic model over page, time on page and the other fields.

    ``features``: a :class:`FeatureSpec` (or its dict), None for the observation-event default.
    ``C``, ``solver``, ``max_iter``, ``tol``, ``class_weight``: passed to ``LogisticRegression``
    (``newton-cholesky`` suits many rows and few columns: it converges in a handful of
    iterations where lbfgs needs hundreds; keep ``class_weight=None``: reweighting classes
    breaks calibration).
    ``clip``: clip each numeric field to the range seen in training (``features_`` records it),
    so the spline is never extrapolated past the data.
    """

    def __init__(self, features: FeatureSpec | Mapping[str, Any] | None = None, C: float = 1.0,
                 solver: str = "newton-cholesky", max_iter: int = 200, tol: float = 1e-6,
                 class_weight: Any = None, clip: bool = True):
        self.features = features
        self.clip = clip
        self.C = C
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight

    def _pipeline(self, spec: FeatureSpec) -> Pipeline:
        blocks = []
        if spec.categorical:
            blocks.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=float),
                           list(spec.categorical)))
        if spec.numeric:
            blocks.append(("num", StandardScaler(), spec.numeric_columns()))
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
        spec = FeatureSpec.coerce(self.features)
        if self.clip:
            spec = _with_training_ranges(spec, frame)
        pipeline = self._pipeline(spec)
        pipeline.fit(frame, target, **({} if sample_weight is None else {"clf__sample_weight": sample_weight}))
        self.features_ = spec
        self.pipeline_ = pipeline
        self.classes_ = pipeline.classes_
        self.n_train_ = len(frame)
        self.base_rate_ = float(np.mean(target == self.classes_[1]))
        self._compiled: CompiledScorer | None = None
        return self

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

        info = {"positive_class": _plain(self.classes_[1]), "n_train": int(self.n_train_),
                "base_rate": self.base_rate_, "C": float(self.C), "trained_with": {"scikit-learn": sklearn.__version__}}
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

    def report(self, X: Any, y: Any, p_true: Any = None, bins: int = 10) -> TrainingReport:
        """The training report of this model on rows ``X`` with labels ``y`` (and true probabilities if known)."""
        p = self.predict_proba(X)[:, 1]
        return evaluate(np.asarray(y) == self.classes_[1], p, p_true, bins=bins)


def _with_training_ranges(spec: FeatureSpec, frame: pd.DataFrame) -> FeatureSpec:
    """``spec`` with every numeric field's unset bounds set to the range of its valid values in ``frame``."""
    numeric = []
    for num in spec.numeric:
        if num.transform != "hour" and num.field in frame.columns and (num.lower is None or num.upper is None):
            x = _numbers(frame[num.field], len(frame))
            x = x[~np.isnan(x) & ((x >= 0) if num.transform == "log1p" else True)]
            if len(x):
                num = num.with_range(float(x.min()) if num.lower is None else num.lower,
                                     float(x.max()) if num.upper is None else num.upper)
        numeric.append(num)
    return FeatureSpec(spec.categorical, tuple(numeric))


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
class TrainingReport:
    """Discrimination and calibration of predicted probabilities against outcomes (plain data, JSON-safe).

    ``oracle`` holds the same measures for the ground-truth probabilities
    when they are known (a synthetic world), plus how far the model's
    probabilities are from them (``mae_vs_truth``, ``rmse_vs_truth``).
    ``roc_auc`` is None when the outcomes hold one class only.
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

    def to_dict(self) -> dict:
        return asdict(self)

    def reliability_frame(self) -> pd.DataFrame:
        """The reliability curve as a DataFrame (one row per bin) for plotting."""
        return pd.DataFrame([asdict(b) for b in self.reliability])

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

    def to_dict(self) -> dict:
        return {"test": self.test.to_dict(), "train": self.train.to_dict(), "n_train": self.n_train,
                "n_test": self.n_test, "params": {k: v for k, v in self.model.get_params().items()
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
    train_report = model.report(frame[~test], target[~test], None if truth is None else truth[~test])
    return TrainingResult(model, test_report, train_report, int((~test).sum()), int(test.sum()))
