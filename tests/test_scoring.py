"""The acceptance model: features, the scikit-learn estimator, its compiled one-event path, plain-JSON models
the runtime loads without scikit-learn, the training report, the synthetic world and the real online-shoppers data."""

from __future__ import annotations

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
    evaluate,
    event_features,
    expected_calibration_error,
    group_holdout,
    load_scorer,
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
                                  "tol": 1e-6, "class_weight": None, "clip": True}
    with pytest.raises(NotFittedError):
        model.predict_proba(small)
    assert model.set_params(C=2.0) is model and model.C == 2.0
    assert model.fit(small, ys) is model
    learned = {k for k in vars(model) if k.endswith("_") and not k.startswith("_")}
    assert {"pipeline_", "classes_", "features_", "n_train_", "base_rate_"} <= learned
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
        "from pcrules.scoring import load_scorer\n"
        f"scorer = load_scorer(json.load(open({str(tmp_path / 'model.json')!r})))\n"
        f"events = json.load(open({str(tmp_path / 'events.json')!r}))\n"
        "scores = [scorer.predict_proba_one(e) for e in events]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'pandas', 'numpy', 'scipy'))\n"
        "print(json.dumps({'scores': scores, 'heavy': heavy}))\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    assert np.max(np.abs(np.array(result["scores"]) - expected)) <= 1e-9


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


# ---------------------------------------------------------------------------------------------------------------
# The synthetic world (pcrules.world): AUC within 0.02 of the oracle on held-out visitors, ECE <= 0.03
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world():
    """100,000 visitors: about 64,000 legacy offers (some 2,700 accepted) and 1.5M observation events."""
    import pcrules.world as mod
    return mod, mod.generate(visitors=100_000, seed=11)


def _truth(mod, frame):
    return np.asarray(mod.true_accept_probability(frame["page"], frame["seconds_on_page"], frame["device"],
                                                  frame["returning"], frame["pages_viewed"]))


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
