"""The acceptance model: features, the scikit-learn estimator, its compiled one-event path, plain-JSON models
the runtime loads without scikit-learn, the training report, the synthetic world and the real online-shoppers data."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys

import numpy as np  # noqa: E402  (the analysis extra is part of the test install: no silent skip)
import pandas as pd  # noqa: E402
import pytest
import sklearn  # noqa: E402,F401
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import pcrules  # noqa: E402
from pcrules.scoring import (  # noqa: E402
    AcceptanceModel,
    CompiledScorer,
    FeatureSpec,
    LinearScorer,
    NullScorer,
    Numeric,
    Scorer,
    Support,
    calibration_by_bin,
    evaluate,
    event_features,
    expected_calibration_error,
    group_holdout,
    load_scorer,
    supported_range,
    training_warnings,
)
from pcrules.scoring.features import DEFAULT_EVENT_FEATURES, MISSING, category_key, number_value  # noqa: E402
from pcrules.scoring.model import encode_frame  # noqa: E402
from pcrules.scoring.realdata import ONLINE_SHOPPERS_PATH, load_online_shoppers, train_online_shoppers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pcrules.__file__)))

# ---------------------------------------------------------------------------------------------------------------
# A small synthetic frame with a known truth (independent of pcrules.world): a page effect, a time-on-page
# shape that is bad at 10-30 s and best at 2-3 min, returning and device effects, a little from pages viewed.
# ---------------------------------------------------------------------------------------------------------------
TOY_PAGES = {"Home": -3.4, "Bill Payment": -2.3, "Plans": -2.7, "Checkout": -1.8, "Support": -2.5}
TOY_KNOTS = [0, 10, 30, 60, 120, 180, 300, 600, 900]
TOY_SHAPE = [0.0, -0.3, -0.4, 0.0, 0.45, 0.5, 0.25, 0.1, 0.0]
RECHECKS = [0, 15, 30, 60, 90, 120, 150, 180, 240, 300, 420, 600, 900]


def toy_truth(page, seconds, device, returning, pages_viewed):
    z = (np.vectorize(TOY_PAGES.get)(page) + np.interp(seconds, TOY_KNOTS, TOY_SHAPE) + 0.5 * returning
         - 0.3 * (device == "mobile") + 0.15 * np.log1p(pages_viewed))
    return 1.0 / (1.0 + np.exp(-z))


def toy_frame(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    page = rng.choice(list(TOY_PAGES), n, p=[0.35, 0.2, 0.2, 0.1, 0.15])
    seconds = rng.choice(RECHECKS, n).astype(float)
    device = rng.choice(["desktop", "mobile", "tablet"], n, p=[0.5, 0.4, 0.1])
    returning = rng.random(n) < 0.3
    viewed = 1 + rng.geometric(0.35, n)
    p = toy_truth(page, seconds, device, returning, viewed)
    y = rng.random(n) < p
    frame = pd.DataFrame({
        "visitor_id": [f"v{i}" for i in rng.integers(0, n // 6, n)], "session_id": "s",
        "page": page, "seconds_on_page": seconds, "pages_viewed": viewed.astype(float),
        "session_seconds": seconds + rng.exponential(200.0, n), "device": device.astype(object),
        "returning": returning, "ts": 1764057600.0 + rng.uniform(0, 3 * 86400, n),
    })
    frame.loc[rng.random(n) < 0.08, "device"] = None  # optional fields missing now and then
    frame.loc[rng.random(n) < 0.05, "pages_viewed"] = np.nan
    return frame, y, p


@pytest.fixture(scope="module")
def toy():
    frame, y, p = toy_frame(60_000, seed=1)
    test = group_holdout(frame["visitor_id"], 0.3, seed=0)
    model = AcceptanceModel().fit(frame[~test], y[~test])
    return model, frame, y, p, test


def records(frame):
    """DataFrame rows as event dicts the way the runtime holds them: absent or None for missing values."""
    out = []
    for row in frame.to_dict("records"):
        out.append({k: v for k, v in row.items() if not (v is None or (isinstance(v, float) and math.isnan(v)))})
    return out


def messy_events(n: int, seed: int = 5) -> list[dict]:
    """Events with everything the one-event path must survive: unknown pages, missing and mistyped fields."""
    rng = np.random.default_rng(seed)
    odd_values = [None, float("nan"), float("inf"), -5.0, True, False, "301", "", 3, 2.5, 10**30, "mobile",
                  "Bill Payment", "Nowhere", [1], {"a": 1}]
    out = []
    for i in range(n):
        e = {"visitor_id": f"m{i}", "session_id": "s", "page": str(rng.choice(list(TOY_PAGES) + ["Nowhere"])),
             "seconds_on_page": float(rng.choice(RECHECKS)) + float(rng.random()), "ts": 1764057600.0 + i}
        if rng.random() < 0.7:
            e["device"] = str(rng.choice(["desktop", "mobile", "tablet", "fridge"]))
        if rng.random() < 0.7:
            e["returning"] = bool(rng.random() < 0.3)
        if rng.random() < 0.6:
            e["pages_viewed"] = int(rng.integers(1, 20))
        if rng.random() < 0.5:
            e["session_seconds"] = float(rng.uniform(0, 3000))
        for key in ("page", "seconds_on_page", "device", "returning", "pages_viewed", "session_seconds"):
            if rng.random() < 0.06:
                e[key] = odd_values[int(rng.integers(len(odd_values)))]
        out.append(e)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, key", [
    ("Bill Payment", "Bill Payment"), ("", ""), (True, "True"), (False, "False"), (3, "3"), (3.0, "3"),
    (2.5, "2.5"), (None, MISSING), (float("nan"), MISSING), (float("inf"), MISSING), ([1], MISSING),
    ({"a": 1}, MISSING), (10**400, MISSING),
])
def test_category_key(value, key):
    assert category_key(value) == key


@pytest.mark.parametrize("value, number", [
    (301, 301.0), (301.5, 301.5), (0, 0.0), (-2, -2.0), (True, None), (False, None), ("301", None), (None, None),
    (float("nan"), None), (float("-inf"), None), (10**400, None), (np.float32(1.5), 1.5), (np.int64(7), 7.0),
    (np.bool_(True), None),
])
def test_number_value(value, number):
    assert number_value(value) == number


def test_seconds_basis_is_a_log_spline_with_knots_between_30_s_and_3_min():
    spec = DEFAULT_EVENT_FEATURES.numeric[0]
    assert spec.field == "seconds_on_page" and {10, 30, 120, 180} <= set(spec.knots)
    basis = spec.basis(150)
    u = math.log1p(150)
    assert basis[0] == u and basis[-1] == 0.0
    assert basis[1:-1] == [max(0.0, u - math.log1p(k)) for k in spec.knots]
    assert spec.basis(None) == [0.0] * (len(spec.knots) + 1) + [1.0]
    assert spec.basis(-1) == spec.basis("150") == spec.basis(True) == spec.basis(None)


def test_vectorised_encoding_equals_the_one_event_encoding():
    spec = FeatureSpec(("page", "device", "returning", "odd"),
                       DEFAULT_EVENT_FEATURES.numeric + (Numeric("ts", "hour", utc_offset_hours=1),
                                                         Numeric("rate", "linear", (-1, 0.5))))
    events = messy_events(3000, seed=9)
    for e in events[::3]:
        e["odd"] = e.get("device")
        e["rate"] = e.get("pages_viewed")
    frame = encode_frame(spec, pd.DataFrame.from_records(events))
    columns = list(spec.categorical) + spec.numeric_columns()
    assert frame.columns.tolist() == columns
    for row, event in zip(frame.itertuples(index=False), events):
        keys, values = spec.encode_one(event)
        assert list(row[:len(keys)]) == keys
        assert np.allclose(row[len(keys):], values, rtol=0, atol=1e-12)


def test_feature_spec_round_trips_and_refuses_bad_knots():
    assert FeatureSpec.from_dict(json.loads(json.dumps(DEFAULT_EVENT_FEATURES.to_dict()))) == DEFAULT_EVENT_FEATURES
    with pytest.raises(ValueError, match="knots"):
        Numeric("seconds_on_page", "log1p", (30, 10))
    with pytest.raises(ValueError, match="transform"):
        Numeric("seconds_on_page", "cube")
    with pytest.raises(ValueError, match="twice"):
        FeatureSpec(("page", "page"))


# ---------------------------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------------------------
def test_estimator_contract(toy):
    _, frame, y, _, _ = toy
    small, ys = frame.iloc[:4000], y[:4000]
    model = AcceptanceModel(C=0.5)
    assert model.get_params() == {"features": None, "C": 0.5, "solver": "newton-cholesky", "max_iter": 200,
                                  "tol": 1e-6, "class_weight": None, "clip": True, "support": 0.001, "min_rows": 30,
                                  "min_positives": 10.0, "knot_placement": "quantile"}
    with pytest.raises(NotFittedError):
        model.predict_proba(small)
    assert model.set_params(C=2.0) is model and model.C == 2.0
    assert model.fit(small, ys) is model
    learned = {k for k in vars(model) if k.endswith("_") and not k.startswith("_")}
    assert {"pipeline_", "classes_", "features_", "support_", "n_train_", "base_rate_"} <= learned
    assert list(model.classes_) == [False, True]
    proba = model.predict_proba(small)
    assert proba.shape == (4000, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert set(model.predict(small)) <= {False, True}
    assert model.score(small, ys) > 0.5  # ClassifierMixin.score: accuracy
    # clone: same parameters, no learned state; refitting gives the same model (deterministic)
    twin = clone(model)
    assert twin.get_params() == model.get_params() and not hasattr(twin, "pipeline_")
    assert np.array_equal(twin.fit(small, ys).predict_proba(small), proba)
    # a list of event dicts works as well as a DataFrame
    rows = records(small.iloc[:50])
    assert np.allclose(model.predict_proba(rows)[:, 1], proba[:50, 1], atol=1e-12)
    with pytest.raises(ValueError, match="two classes"):
        AcceptanceModel().fit(small, np.zeros(len(small), dtype=bool))
    with pytest.raises(ValueError, match="one label per row"):
        AcceptanceModel().fit(small, ys[:-1])


def test_the_model_learns_the_time_on_page_shape(toy):
    model = toy[0]
    base = {"page": "Bill Payment", "device": "desktop", "returning": False, "pages_viewed": 3}
    p = {s: model.predict_proba_one({**base, "seconds_on_page": s, "session_seconds": s + 200}) for s in RECHECKS}
    assert p[150] > p[60] > p[15] and p[150] > p[0] > p[30]  # 10-30 s worst, 2-3 min best
    assert model.predict_proba_one({**base, "seconds_on_page": 150, "session_seconds": 350, "returning": True}) > p[150]


def test_numeric_fields_are_clipped_to_the_training_range(toy):
    model, frame, _, _, test = toy
    seconds = model.features_.numeric[0]
    assert (seconds.field, seconds.lower, seconds.upper) == ("seconds_on_page", 0.0, 900.0)
    compiled = load_scorer(json.loads(json.dumps(model.to_dict())))
    assert compiled.features.numeric[0].upper == 900.0
    event = {"page": "Plans", "seconds_on_page": 900.0, "pages_viewed": 3, "device": "mobile"}
    week = {**event, "seconds_on_page": 7 * 86400.0, "pages_viewed": 1e80}
    longest = float(frame["pages_viewed"][~test].max())
    assert compiled.predict_proba_one(week) == compiled.predict_proba_one({**event, "pages_viewed": longest})
    expected = model.predict_proba(pd.DataFrame.from_records([week]))[0, 1]
    assert abs(compiled.predict_proba_one(week) - expected) <= 1e-12
    unclipped = clone(model).set_params(clip=False).fit(frame[~test].iloc[:5000], toy[2][~test][:5000])
    assert unclipped.features_.numeric[0].upper is None


# ---------------------------------------------------------------------------------------------------------------
# Where the model has data: a robust support, knots inside it, the same clipping on both paths
# ---------------------------------------------------------------------------------------------------------------
def with_outliers(frame, y, n=5):
    """The frame plus `n` rows far beyond the rest: tabs left open for a day, sessions of 14 hours."""
    odd = frame.iloc[:n].assign(seconds_on_page=86400.0, session_seconds=50_000.0, pages_viewed=400.0)
    return pd.concat([frame, odd], ignore_index=True), np.concatenate([y, np.ones(n, dtype=bool)])


@pytest.fixture(scope="module")
def supported(toy):
    """A model fitted on the toy training rows plus five outliers."""
    _, frame, y, _, test = toy
    train, target = with_outliers(frame[~test].reset_index(drop=True), y[~test])
    return AcceptanceModel().fit(train, target), train


def test_the_support_is_robust_and_every_spline_piece_has_rows(supported):
    model, train = supported
    assert set(model.support_) == {"seconds_on_page", "pages_viewed", "session_seconds"}
    for num in model.features_.numeric:
        support = model.support_[num.field]
        x = train[num.field].to_numpy(dtype=float)
        x = np.sort(x[~np.isnan(x)])
        assert isinstance(support, Support) and support.rows == len(x)
        assert (num.lower, num.upper) == (support.low, support.high)  # what the model clips to
        # not min/max: five outliers do not make the range; at least 30 rows at or beyond each end
        outlier = {"seconds_on_page": 86400.0, "session_seconds": 50_000.0, "pages_viewed": 400.0}[num.field]
        assert x.max() == outlier and support.high < outlier / 10
        assert (x >= support.high).sum() >= 30 and (x <= support.low).sum() >= 30
        # knots strictly inside, every piece of the spline with at least 30 training rows
        assert all(support.low < k < support.high for k in num.knots) and len(num.knots) >= 1
        pieces = np.diff(np.concatenate(([0], np.searchsorted(x, num.knots, side="right"), [len(x)])))
        assert pieces.min() >= 30, (num.field, num.knots, pieces)
    assert model.support_["seconds_on_page"][:2] == (0.0, 900.0)  # the toy's re-check grid, 0 to 900 s
    # with clip=False the spec is used as given
    raw = clone(model).set_params(clip=False).fit(train.iloc[:5000], np.arange(5000) % 20 == 0)
    assert raw.support_ == {} and raw.features_ == DEFAULT_EVENT_FEATURES


def test_predict_proba_and_the_compiled_scorer_clip_identically_outside_the_support(supported):
    model, _ = supported
    compiled = load_scorer(json.loads(json.dumps(model.to_dict())))
    seconds, visit = model.support_["seconds_on_page"], model.support_["session_seconds"]
    assert visit.low > 0  # the toy's time on site starts above 0: values below the support exist
    base = {"page": "Plans", "device": "mobile", "returning": True, "pages_viewed": 3}
    events = [{**base, "seconds_on_page": s, "session_seconds": t}
              for s in (-5.0, 0.0, seconds.low, 45.0, seconds.high, seconds.high + 1, 7 * 86400.0, 1e300, None,
                        float("nan"), "600", True)
              for t in (0.0, visit.low / 2, visit.low, 200.0, visit.high, visit.high * 3, 1e9, None)]
    events += [{**base, "seconds_on_page": 60.0, "session_seconds": 100.0, "pages_viewed": v}
               for v in (0, 1, 250, 400, 10**30, -1, None)]
    expected = model.predict_proba(pd.DataFrame.from_records(events))[:, 1]
    got = np.array([compiled.predict_proba_one(e) for e in events])
    assert np.max(np.abs(got - expected)) <= 1e-12
    # beyond the support a value scores exactly like the nearest end, on both paths
    for field, support in (("seconds_on_page", seconds), ("session_seconds", visit)):
        at_end = {**base, "seconds_on_page": 60.0, "session_seconds": 100.0}
        for outside, end in ((support.high * 10 + 1, support.high), (support.high + 1e-6, support.high)) + (
                ((support.low / 2, support.low),) if support.low > 0 else ()):
            a, b = {**at_end, field: outside}, {**at_end, field: end}
            assert compiled.predict_proba_one(a) == compiled.predict_proba_one(b)
            pair = model.predict_proba(pd.DataFrame.from_records([a, b]))[:, 1]
            assert pair[0] == pair[1]


def test_supported_range_for_the_tuner(supported, toy):
    model, train = supported
    compiled = model.compile()
    data = json.loads(json.dumps(model.to_dict()))
    expected = model.support_["seconds_on_page"][:2]
    for source in (model, compiled, load_scorer(data), data):
        assert supported_range(source, "seconds_on_page") == expected
        assert supported_range(source, "page") is None and supported_range(source, "nope") is None
    assert model.supported_range("session_seconds") == compiled.supported_range("session_seconds") \
        == model.support_["session_seconds"][:2]
    assert data["meta"]["support"]["seconds_on_page"] == {"low": expected[0], "high": expected[1],
                                                          "rows": model.support_["seconds_on_page"].rows}
    assert compiled.support == model.support_
    # a model file without the rows still has its range (the spec's bounds are what it clips to)
    data["meta"].pop("support")
    assert load_scorer(data).support["seconds_on_page"] == Support(*expected, None)
    # scorers that know nothing of their data, a model fitted without clipping, the hour transform
    assert supported_range(LinearScorer(-2.0, {"seconds_on_page": 0.1}), "seconds_on_page") is None
    assert supported_range(NullScorer(), "seconds_on_page") is None
    assert supported_range({"kind": "null"}, "seconds_on_page") is None
    _, frame, y, _, test = toy
    small, ys = frame[~test].iloc[:6000], y[~test][:6000]
    assert supported_range(AcceptanceModel(clip=False).fit(small, ys), "seconds_on_page") is None
    hourly = AcceptanceModel(event_features(hour_utc_offset=1.0)).fit(small, ys)
    assert supported_range(hourly, "ts") is None and supported_range(hourly, "seconds_on_page") is not None


def test_hinges_are_penalised_in_their_fields_units(supported):
    model, train = supported
    scaler = model.pipeline_.named_steps["encode"].named_transformers_["num"]
    columns = model.features_.numeric_columns()
    basis = encode_frame(model.features_, train)
    for num in model.features_.numeric:
        names = num.basis_names()
        first = columns.index(names[0])
        assert math.isclose(scaler.scale_[first], basis[names[0]].std(ddof=0), rel_tol=1e-9)
        for name in names[1:-1]:
            # every hinge shares its field's scale; its own spread is smaller (a hinge is 1-Lipschitz), so a
            # StandardScaler would have blown it up and left its slope change nearly free of penalty
            assert scaler.scale_[columns.index(name)] == scaler.scale_[first]
            assert basis[name].std(ddof=0) < scaler.scale_[first]


def test_bad_support_parameters_are_refused(toy):
    _, frame, y, _, _ = toy
    for params, message in (({"support": 0.5}, "support"), ({"min_rows": -1}, "min_rows"),
                            ({"min_positives": float("nan")}, "min_positives"),
                            ({"knot_placement": "everywhere"}, "knot_placement")):
        with pytest.raises(ValueError, match=message):
            AcceptanceModel(**params).fit(frame.iloc[:2000], y[:2000])
    spec_knots = AcceptanceModel(knot_placement="spec").fit(frame.iloc[:20_000], y[:20_000])
    assert spec_knots.features_.numeric[0].knots == (10.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0)


# ---------------------------------------------------------------------------------------------------------------
# The compiled one-event path
# ---------------------------------------------------------------------------------------------------------------
def test_compiled_equals_the_pipeline_on_10000_events(toy):
    model, frame, _, _, test = toy
    events = records(frame[test].iloc[:8500]) + messy_events(1500)
    assert len(events) == 10_000
    expected = model.pipeline_.predict_proba(pd.DataFrame.from_records(events))[:, 1]
    compiled = model.compile()
    got = np.array([compiled.predict_proba_one(e) for e in events])
    assert np.max(np.abs(got - expected)) <= 1e-9
    assert got.std() > 0.01  # the events are scored differently, not one constant


def test_compiled_equals_the_pipeline_with_hour_of_day_and_linear_features(toy):
    _, frame, y, _, test = toy
    frame = frame.assign(rate=np.where(np.arange(len(frame)) % 4 == 0, np.nan, frame["session_seconds"] / 1000))
    spec = event_features(hour_utc_offset=1.0, extra_numeric=(Numeric("rate", "linear", (0.1, 0.5)),))
    model = AcceptanceModel(spec).fit(frame[~test].iloc[:20_000], y[~test][:20_000])
    assert [n.transform for n in model.features_.numeric][-2:] == ["linear", "hour"]
    events = records(frame[test].iloc[:2000]) + messy_events(500)
    compiled = load_scorer(json.loads(json.dumps(model.to_dict())))
    got = np.array([compiled.predict_proba_one(e) for e in events])
    assert np.max(np.abs(got - model.predict_proba(events)[:, 1])) <= 1e-9


def test_compiled_treats_unknown_and_missing_like_the_one_hot_encoder(toy):
    model = toy[0]
    compiled = model.compile()
    event = {"page": "Bill Payment", "seconds_on_page": 120, "device": "desktop", "returning": True,
             "pages_viewed": 2, "session_seconds": 300}
    assert compiled.explain_one({**event, "page": "Nowhere"})["page"] == 0.0  # unseen: all zeros
    assert compiled.explain_one({**event, "page": 42})["page"] == 0.0
    # device was missing in training now and then: missing has its own learned weight, equal for every form
    missing_weight = compiled.categorical["device"][MISSING]
    no_device = {k: v for k, v in event.items() if k != "device"}
    for form in (no_device, {**event, "device": None}, {**event, "device": [1]}):
        assert compiled.explain_one(form)["device"] == missing_weight
    assert math.isclose(sum(compiled.explain_one(event).values()), compiled.decision_function_one(event),
                        rel_tol=0, abs_tol=1e-12)
    for form in ({**event, "pages_viewed": "2"}, {**event, "pages_viewed": True}, {**event, "pages_viewed": -1}):
        expected = model.pipeline_.predict_proba(pd.DataFrame.from_records([form]))[0, 1]
        assert abs(compiled.predict_proba_one(form) - expected) <= 1e-12
        assert compiled.predict_proba_one(form) == compiled.predict_proba_one(
            {k: v for k, v in form.items() if k != "pages_viewed"})


ODD = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=4), st.sampled_from(list(TOY_PAGES) + ["desktop", "mobile"]))
EVENT = st.dictionaries(st.sampled_from(["page", "seconds_on_page", "device", "returning", "pages_viewed",
                                         "session_seconds", "other"]), ODD, max_size=7)


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(EVENT, min_size=1, max_size=12))
def test_compiled_never_raises_and_agrees_with_the_pipeline_on_any_values(toy, batch):
    model = toy[0]
    compiled = model.compile()
    got = [compiled.predict_proba_one(e) for e in batch]
    assert all(isinstance(p, float) and 0.0 < p < 1.0 for p in got)  # clipped to the training range: no 0 or 1
    expected = model.pipeline_.predict_proba(pd.DataFrame.from_records(batch, columns=sorted(
        {"page", "seconds_on_page"} | {k for e in batch for k in e})))[:, 1]
    assert np.max(np.abs(np.array(got) - expected)) <= 1e-9


def test_json_round_trip_and_load_scorer(toy):
    model, frame, _, _, _ = toy
    data = json.loads(json.dumps(model.to_dict()))
    assert data["kind"] == "compiled_logistic" and data["version"] == 1
    scorer = load_scorer(data)
    assert isinstance(scorer, CompiledScorer) and isinstance(scorer, Scorer)
    assert scorer == model.compile() and scorer.to_dict() == data
    events = records(frame.iloc[:300])
    assert [scorer.predict_proba_one(e) for e in events] == [model.predict_proba_one(e) for e in events]
    # the other kinds
    linear = LinearScorer(-2.0, {"seconds_on_page": 0.2}, {"page": {"Checkout": 0.5}}, {"returning": 0.3})
    assert LinearScorer.from_dict(linear.to_dict()) == linear
    assert load_scorer(linear.to_dict()) == linear
    assert isinstance(load_scorer({"kind": "null"}), NullScorer)
    with pytest.raises(ValueError, match="unknown scorer kind 'pickle'"):
        load_scorer({"kind": "pickle"})
    with pytest.raises(ValueError, match="expected an object"):
        load_scorer(["kind", "linear"])


def _tamper(data, path, value):
    out = json.loads(json.dumps(data))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("path, value, message", [
    (("kind",), "linear_v2", "model.kind"),
    (("version",), 2, "model.version"),
    (("intercept",), float("nan"), "model.intercept: expected a finite number"),
    (("intercept",), "1.0", "model.intercept: expected a number"),
    (("categorical", "page", "Checkout"), True, r"model.categorical.page\['Checkout'\]"),
    (("categorical", "plan"), {}, "fields not in model.features"),
    (("numeric", 0, "weights"), [0.1, 0.2], r"model.numeric\[0\].weights: expected a list of 8"),
    (("numeric", 1, "field"), "ts", r"model.numeric\[1\].field"),
    (("numeric", 2, "missing"), None, r"model.numeric\[2\].missing"),
    (("features", "numeric", 0, "knots"), [30, 10], "model.features"),
    (("meta",), [], "model.meta"),
    (("code",), "__import__('os')", "unknown keys"),
])
def test_a_bad_model_dict_is_refused_naming_the_part(toy, path, value, message):
    data = toy[0].to_dict()
    with pytest.raises(ValueError, match=message):
        load_scorer(_tamper(data, path, value))


def test_load_scorer_needs_neither_sklearn_pandas_nor_numpy(toy, tmp_path):
    model, frame, _, _, _ = toy
    events = records(frame.iloc[:200]) + messy_events(50)
    expected = model.pipeline_.predict_proba(pd.DataFrame.from_records(events))[:, 1].tolist()
    (tmp_path / "model.json").write_text(json.dumps(model.to_dict()))
    (tmp_path / "events.json").write_text(json.dumps(events))
    code = (
        "import json, sys\n"
        "import pcrules\n"
        "from pcrules.scoring import load_scorer, supported_range\n"
        f"scorer = load_scorer(json.load(open({str(tmp_path / 'model.json')!r})))\n"
        f"events = json.load(open({str(tmp_path / 'events.json')!r}))\n"
        "scores = [scorer.predict_proba_one(e) for e in events]\n"
        "support = supported_range(scorer, 'seconds_on_page')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'pandas', 'numpy', 'scipy'))\n"
        "print(json.dumps({'scores': scores, 'heavy': heavy, 'support': support}))\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    assert np.max(np.abs(np.array(result["scores"]) - expected)) <= 1e-9
    assert tuple(result["support"]) == model.supported_range("seconds_on_page")


def test_the_runtime_offers_exactly_where_the_compiled_score_passes(toy):
    model, frame, _, _, _ = toy
    scorer = load_scorer(json.loads(json.dumps(model.to_dict())))
    threshold = 0.12
    spec = pcrules.load_spec({
        "name": "scored", "policy": {"max_offers_per_session": 1, "holdout": 0.0},
        "queues": {"Billing": {}},
        "rules": [{"name": "scored", "when": {"seconds_on_page": {"gte": 0}, "score": {"gte": threshold}},
                   "offer": {"queue": "Billing"}}],
    })
    rt = pcrules.Runtime(spec, scorer=scorer)
    offers = 0
    for i, event in enumerate(records(frame.iloc[:400])):
        event = {**event, "visitor_id": f"r{i}", "session_id": f"r{i}-s", "ts": 1764064800.0 + i}
        d = rt.observe(event)
        p = scorer.predict_proba_one(event)
        assert d.score == p
        if p >= threshold:
            assert d.action == "offer"
            offers += 1
        else:
            assert (d.action, d.reason) == ("none", "score_below")
    assert 0 < offers < 400
    assert rt.scorer_errors == 0


# ---------------------------------------------------------------------------------------------------------------
# The training report
# ---------------------------------------------------------------------------------------------------------------
def test_report_figures_by_hand():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0])
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.91, 0.55, 0.51, 0.02])
    truth = np.array([0.1, 0.1, 0.2, 0.9, 0.8, 0.5, 0.5, 0.1])
    report = evaluate(y, p, truth)
    # bins: [0,.1): .05,.02 -> obs 0; [.1,.2): .15,.12 -> obs .5; [.5,.6): .55,.51 -> obs .5; [.9,1]: .95,.91 -> .5
    by_hand = (2 * abs(0.035 - 0) + 2 * abs(0.135 - 0.5) + 2 * abs(0.53 - 0.5) + 2 * abs(0.93 - 0.5)) / 8
    assert math.isclose(report.ece, by_hand, abs_tol=1e-12)
    assert math.isclose(expected_calibration_error(y, p), by_hand, abs_tol=1e-12)
    assert report.roc_auc == roc_auc_score(y, p) and report.n == 8 and report.positives == 3
    assert math.isclose(report.brier, float(np.mean((p - y) ** 2)))
    assert [b.count for b in report.reliability] == [2, 2, 0, 0, 0, 2, 0, 0, 0, 2]
    assert report.reliability[2].mean_predicted is None
    assert report.oracle["roc_auc"] == roc_auc_score(y, truth)
    assert math.isclose(report.oracle["mae_vs_truth"], float(np.mean(np.abs(p - truth))))
    assert json.loads(json.dumps(report.to_dict()))["reliability"][9]["observed"] == 0.5
    assert len(report.reliability_frame()) == 10
    assert evaluate([1, 1], [0.2, 0.3]).roc_auc is None


def test_toy_model_is_near_the_oracle_and_calibrated(toy):
    model, frame, y, p, test = toy
    report = model.report(frame[test], y[test], p[test])
    assert report.oracle["roc_auc"] - report.roc_auc <= 0.02
    assert report.ece <= 0.03
    assert report.oracle["mae_vs_truth"] < 0.02


def test_calibration_by_bin_by_hand():
    x = np.array([0, 14.9, 15, 29, 45, 61, 150, 200, 650, 5000, np.nan, -3.0])
    y = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0])
    p = np.array([0.1, 0.3, 0.2, 0.2, 0.5, 0.1, 0.4, 0.2, 0.1, 0.3, 0.6, 0.2])
    truth = p / 2
    bins = calibration_by_bin(x, y, p, truth)
    assert [b.label for b in bins] == ["0-15 s", "15-30 s", "30-60 s", "60-120 s", "120-180 s", "180-300 s",
                                       "300-600 s", "600+ s", "missing"]
    assert [b.rows for b in bins] == [2, 2, 1, 1, 1, 1, 0, 2, 2] and sum(b.rows for b in bins) == len(x)
    assert [b.positives for b in bins] == [1, 0, 1, 0, 1, 0, 0, 1, 1]
    first = bins[0]
    assert (first.lo, first.hi) == (0.0, 15.0) and bins[7].hi is None and bins[8].lo is None
    assert math.isclose(first.mean_predicted, 0.2) and first.observed == 0.5 and math.isclose(first.ratio, 0.4)
    assert math.isclose(first.mean_true, 0.1) and math.isclose(first.ratio_to_true, 2.0)
    assert bins[1].observed == 0.0 and bins[1].ratio is None  # nothing observed: no ratio
    assert bins[6].mean_predicted is None and bins[6].observed is None  # empty
    assert calibration_by_bin(x[:10], y[:10], p[:10])[-1].label == "600+ s"  # no missing bin when none is
    assert calibration_by_bin([1.0], [0], [0.1])[0].mean_true is None
    with pytest.raises(ValueError, match="increasing"):
        calibration_by_bin(x, y, p, edges=(0, 30, 15))


def test_the_report_checks_calibration_per_time_bin_and_the_tables_add_up(toy):
    model, frame, y, p, test = toy
    held = frame[test].reset_index(drop=True)
    held.loc[held.index % 7 == 0, "session_seconds"] = np.nan  # missing now and then: its own bin
    report = model.report(held, y[test], p[test])
    assert set(report.calibration) == {"seconds_on_page", "session_seconds"}
    for bins in report.calibration.values():
        assert sum(b.rows for b in bins) == report.n == len(held)
        assert sum(b.positives for b in bins) == report.positives
        filled = [b for b in bins if b.rows]
        assert sum(b.rows * b.mean_predicted for b in filled) / report.n == pytest.approx(report.mean_predicted)
        assert all(b.mean_true is not None and b.ratio_to_true is not None for b in filled)
    assert report.calibration["session_seconds"][-1].label == "missing"
    table = report.calibration_frame("seconds_on_page")
    assert table.index.name == "seconds_on_page" and table["rows"].sum() == report.n
    assert {"rows", "positives", "mean_predicted", "observed", "ratio", "mean_true", "ratio_to_true"} <= set(table)
    # plain JSON (no NaN, no infinity): the metrics file and the bundle's manifest store it
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["calibration"]["seconds_on_page"][0]["label"] == "0-15 s"
    # enough held-out accepts, every bin inside the support filled: nothing to warn about
    assert report.positives > 1000 and report.warnings == []
    assert "No warnings" in report._repr_html_() and "calibration by session_seconds" in report.text()
    with pytest.raises(KeyError, match="pages_viewed"):
        report.calibration_frame("pages_viewed")


def test_training_warnings_say_what_the_data_cannot_support(toy):
    _, frame, y, p, test = toy
    # the toy's rows only up to 90 s on the page, few of them: a narrow support and too few accepts
    short = frame[(frame["seconds_on_page"] <= 90).to_numpy()].reset_index(drop=True)
    ys, ps = y[(frame["seconds_on_page"] <= 90).to_numpy()], p[(frame["seconds_on_page"] <= 90).to_numpy()]
    model = AcceptanceModel().fit(short.iloc[:3000], ys[:3000])
    report = model.report(short.iloc[3000:3400], ys[3000:3400], ps[3000:3400])
    warnings = report.warnings
    assert 0 < report.positives < 50
    assert warnings[0].startswith(f"{report.positives} accepted offers held out (of 400): AUC and calibration are "
                                  f"not measurable to ±0.05")
    assert "train on more history" in warnings[0]
    thin = [w for w in warnings if "too few held-out offers to check calibration" in w]
    assert thin and any(w.startswith("seconds_on_page:") for w in thin)
    narrow = [w for w in warnings if w.startswith("seconds_on_page has training data only between 0 s and 90 s")]
    assert len(narrow) == 1 and "the tuner is restricted to it" in narrow[0] and "600 s" in narrow[0]
    assert all("pages_viewed has training data" not in w for w in warnings)  # 1 to 8 or so: as the spec
    # the same report on the training rows (warn=False) and a report's own figures say nothing
    assert model.report(short.iloc[:3000], ys[:3000], warn=False).warnings == []
    assert evaluate(ys[:400], ps[:400]).warnings == []
    # the rule as a function: the thresholds are parameters
    assert training_warnings(report, report.calibration, model.support_, DEFAULT_EVENT_FEATURES,
                             min_held_out_positives=0,
                             min_bin_rows=0, min_bin_positives=0) == [w for w in warnings if "training data only" in w]
    html = report._repr_html_()
    assert html.count("<li>warning: ") == len(warnings) and "Calibration by seconds_on_page" in html


# ---------------------------------------------------------------------------------------------------------------
# The synthetic world (pcrules.world): AUC within 0.02 of the oracle on held-out visitors, ECE <= 0.03
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world():
    """100,000 visitors: about 64,000 legacy offers (some 2,700 accepted) and 1.5M observation events."""
    import pcrules.world as mod
    return mod, mod.generate(visitors=100_000, seed=11)


def _truth(mod, frame):
    """The world's truth given what the runtime sees (time on site too, where the world's truth takes it)."""
    extra = ({"session_seconds": frame["session_seconds"]}
             if "session_seconds" in inspect.signature(mod.true_accept_probability).parameters else {})
    return np.asarray(mod.true_accept_probability(frame["page"], frame["seconds_on_page"], frame["device"],
                                                  frame["returning"], frame["pages_viewed"], **extra))


@pytest.mark.slow
@pytest.mark.parametrize("table", ["events", "offers"])
def test_world_model_is_within_002_of_the_oracle_on_held_out_visitors(world, table):
    """`events`: every observation with its would-be answer (what the runtime scores); `offers`: only what the
    legacy policy offered (the realistic history: a few fixed waits per page, so fewer, narrower examples)."""
    mod, w = world
    frame = getattr(w, table)
    if table == "events":  # the events of a fifth of the visitors (300k rows) are plenty and keep the test fast
        frame = frame[group_holdout(frame["visitor_id"], 0.2, seed=1)]
    y = (frame["response"] == "accept").to_numpy()
    test = group_holdout(frame["visitor_id"], 0.3, seed=0)
    assert not set(frame["visitor_id"][test]) & set(frame["visitor_id"][~test])
    model = AcceptanceModel().fit(frame[~test], y[~test])
    report = model.report(frame[test], y[test], _truth(mod, frame[test]))
    assert abs(report.roc_auc - report.oracle["roc_auc"]) <= 0.02, report.summary()
    assert report.ece <= 0.03, report.summary()
    # and the compiled path is the model on the world's events too
    sample = frame[test].iloc[:2000]
    compiled = model.compile()
    got = np.array([compiled.predict_proba_one(e) for e in records(sample)])
    assert np.max(np.abs(got - model.predict_proba(sample)[:, 1])) <= 1e-9


# ---------------------------------------------------------------------------------------------------------------
# Real data: UCI online shoppers
# ---------------------------------------------------------------------------------------------------------------
def _raw_lines():
    return ONLINE_SHOPPERS_PATH.read_text().splitlines()


def test_online_shoppers_dirty_rows_are_reported_by_line():
    frame, report = load_online_shoppers()
    lines = _raw_lines()
    blank8 = [i + 1 for i, text in enumerate(lines) if i and text.split(",")[:8] == [""] * 8]
    minus1 = [i + 1 for i, text in enumerate(lines) if i and "-1" in text.split(",")[:6]]
    june = [i + 1 for i, text in enumerate(lines) if i and text.split(",")[10] == "June"]
    assert (len(blank8), len(minus1), len(june)) == (14, 33, 288)
    assert report.rows_read == 12_330 and report.rows_kept == 12_316 and len(frame) == 12_316
    assert report.dropped_lines == blank8
    assert report.lines_with("the first eight fields") == blank8
    assert report.lines_with("duration of -1") == minus1
    assert report.lines_with("month written 'June'") == june
    assert report.coerced_lines == sorted(set(minus1) | set(june))
    assert not set(blank8) & set(frame.index)
    assert (frame.loc[minus1, "ProductRelated_Duration"].isna()).all()
    assert set(frame["Month"]) <= {"Feb", "Mar", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}
    durations = frame[["Administrative_Duration", "Informational_Duration", "ProductRelated_Duration"]]
    assert (durations.fillna(0) >= 0).all().all()
    assert "14 rows dropped" in report.summary() and "288 rows coerced to 'Jun'" in report.summary()
    assert json.loads(json.dumps(report.to_dict()))["rows_kept"] == 12_316


def test_online_shoppers_auc_on_a_stratified_held_out_split():
    result = train_online_shoppers(seed=0)
    test = result.result.test
    assert result.result.n_test == pytest.approx(0.25 * 12_316, abs=1)
    assert abs(test.base_rate - result.result.train.base_rate) < 0.002  # stratified
    assert test.roc_auc >= 0.90, result.summary()
    assert test.ece <= 0.03
    # the same compiled path works for these columns: JSON, load_scorer, equal to the Pipeline
    frame, _ = load_online_shoppers()
    rows = frame.drop(columns=["Revenue"]).iloc[::7]
    scorer = load_scorer(json.loads(json.dumps(result.model.to_dict())))
    got = np.array([scorer.predict_proba_one(r) for r in records(rows)])
    assert np.max(np.abs(got - result.model.predict_proba(rows)[:, 1])) <= 1e-9


def test_a_dirty_file_is_reported_never_fatal(tmp_path):
    header, *body = _raw_lines()[:40]
    body[0] = ",".join(["x"] * 5)                                   # line 2: ragged
    body[1] = body[1].rsplit(",", 1)[0] + ",maybe"                  # line 3: no target
    cells = body[2].split(",")
    cells[0], cells[6], cells[10], cells[12] = "abc", "1.7", "September", "2.5"  # line 4: coercions
    body[2] = ",".join(cells)
    cells = body[3].split(",")
    cells[10], cells[16] = "Smarch", "yes"                          # line 5: unknown month, bad Weekend
    body[3] = ",".join(cells)
    path = tmp_path / "dirty.csv"
    path.write_text("\n".join([header] + body[:10] + [""] + body[10:]) + "\n")
    frame, report = load_online_shoppers(path)
    assert report.dropped_lines == [2, 3]
    problems = {(i.line, i.problem, i.action) for i in report.issues}
    assert (2, "expected 18 fields, got 5", "dropped") in problems
    assert (3, "Revenue is not TRUE/FALSE ('maybe')", "dropped") in problems
    assert (4, "Administrative not a number ('abc')", "coerced to missing") in problems
    assert (4, "BounceRates 1.7 is not a rate in [0, 1]", "coerced to missing") in problems
    assert (4, "month written 'September'", "coerced to 'Sep'") in problems
    assert (4, "Browser is not an integer code ('2.5')", "coerced to missing") in problems
    assert (5, "unknown month 'Smarch'", "coerced to missing") in problems
    assert (5, "Weekend is not TRUE/FALSE ('yes')", "coerced to missing") in problems
    assert frame.loc[4, "Month"] == "Sep" and math.isnan(frame.loc[4, "Administrative"])
    assert len(frame) == report.rows_kept == 37 and report.rows_read == 39
    # a file without the target column loads (every row dropped, reported) and training says why
    no_target = tmp_path / "no_target.csv"
    no_target.write_text("\n".join(line.rsplit(",", 1)[0] for line in _raw_lines()[:20]))
    frame, report = load_online_shoppers(no_target)
    assert len(frame) == 0 and report.issues[0].problem == "missing columns" and "Revenue" in report.issues[0].columns
    with pytest.raises(ValueError, match="no rows with both outcomes"):
        train_online_shoppers(no_target)
