"""Bundles: publish / load / verify / rollback, the runtime on a bundle, and the CLI commands."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

import pcrules
from pcrules import OfferStatus, Reason, Runtime, load_spec
from pcrules.bundle import (
    FORMAT_VERSION,
    BundleError,
    clean_staging,
    current_version,
    history,
    list_versions,
    load_bundle,
    publish,
    rollback,
)
from pcrules.cli import main
from pcrules.errors import PcrulesError, SpecError
from pcrules.scoring import LinearScorer

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 5, 12, tzinfo=UTC).timestamp()  # a Monday

# P(accept) = sigmoid(-3 + 0.6 * log1p(seconds_on_page) + 0.4 [mobile] + 0.5 [returning])
MODEL_A = LinearScorer(-3.0, {"seconds_on_page": 0.6}, {"device": {"mobile": 0.4}}, {"returning": 0.5})
MODEL_B = LinearScorer(-1.0, {"seconds_on_page": 0.3}, {"device": {"desktop": 0.2}}, {})

SPEC_YAML = """\
# comments survive publishing: rules.yaml is the analyst's text
name: bundled
policy: {max_offers_per_session: 1, decline_cooldown_s: 86400, offer_timeout_s: 60, holdout: 0.0}
queues:
  Billing: {max_wait_s: 180}
rules:
  - name: bill-scored
    priority: 10
    when:
      page: Bill Payment
      score: {gte: 0.4}
    offer: {queue: Billing, metadata: {"Page Name": "{page}"}}
"""


def spec_dict(threshold: float = 0.4, name: str = "bundled", seconds: float | None = None) -> dict:
    when: dict = {"page": "Bill Payment", "score": {"gte": threshold}}
    if seconds is not None:
        when["seconds_on_page"] = {"gte": seconds}
    return {
        "name": name,
        "policy": {"max_offers_per_session": 1, "decline_cooldown_s": 86400, "offer_timeout_s": 60, "holdout": 0.0},
        "queues": {"Billing": {"max_wait_s": 180}},
        "rules": [{"name": "bill-scored", "priority": 10, "when": when, "offer": {"queue": "Billing"}}],
    }


def ev(visitor: str, seconds: float = 301, ts: float = T0, session: str = "s1", **extra) -> dict:
    return {"visitor_id": visitor, "session_id": session, "page": "Bill Payment", "seconds_on_page": seconds,
            "ts": ts, **extra}


def ids(prefix: str = "o"):
    n = iter(range(1, 10**6))
    return lambda: f"{prefix}{next(n)}"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "published"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(SPEC_YAML)
    model = tmp_path / "model.json"
    model.write_text(json.dumps(MODEL_A.to_dict()))
    return rules, model


def flip_one_byte(path: Path, old: bytes, new: bytes) -> None:
    """Replace the one occurrence of `old` by `new`, which differs from it in exactly one byte."""
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new) and sum(a != b for a, b in zip(old, new)) == 1
    path.write_bytes(data.replace(old, new))
    assert sum(a != b for a, b in zip(data, path.read_bytes())) == 1


def edit_manifest(version_dir: Path, change) -> None:
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# --------------------------------------------------------------------------- publish / load


def test_publish_and_load_round_trip(out, files):
    rules, model = files
    metrics = {"roc_auc": 0.81, "brier": 0.07, "reliability": {"bins": [0.1, 0.2], "empty": float("nan")}}
    path = publish(rules, model, out, metrics=metrics)

    assert path.parent == out / "versions" and path.is_dir()
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.json", "rules.yaml"]
    assert (out / "current").is_symlink() and os.readlink(out / "current") == f"versions/{path.name}"
    assert current_version(out) == path.name and history(out) == [path.name] and list_versions(out) == [path.name]
    assert (path / "rules.yaml").read_text() == SPEC_YAML  # verbatim, comments included

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "pcrules-bundle" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["bundle_version"] == path.name
    assert manifest["created"].endswith("Z") and datetime.fromisoformat(manifest["created"]).tzinfo is not None
    spec = load_spec(SPEC_YAML)
    assert manifest["ruleset"] == {"name": "bundled", "version": spec.version}
    assert manifest["model"]["kind"] == "linear"
    import hashlib
    for name in ("rules.yaml", "model.json"):
        data = (path / name).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert manifest["metrics"] == {"roc_auc": 0.81, "brier": 0.07, "reliability": {"bins": [0.1, 0.2], "empty": None}}
    libs = manifest["libraries"]
    assert libs["pcrules"] == pcrules.__version__ and libs["python"].startswith("3.") and libs["durable-rules"]

    for where in (out, out / "current", path, str(path)):
        bundle = load_bundle(where)
        assert bundle.version == path.name and bundle.path == path.resolve()
        assert bundle.spec.version == spec.version and bundle.metrics["roc_auc"] == 0.81
        for e in (ev("a", 0), ev("a", 75, device="mobile"), ev("a", 3000, returning=True)):
            assert bundle.scorer.predict_proba_one(e) == MODEL_A.predict_proba_one(e)


def test_rules_only_bundle_and_other_input_forms(out, tmp_path):
    p1 = publish(spec_dict(), None, out)  # a dict
    b1 = load_bundle(out)
    assert b1.scorer is None and not (p1 / "model.json").exists() and b1.manifest["model"] is None
    assert b1.spec.version == load_spec(spec_dict()).version

    publish(load_spec(spec_dict(0.5)), MODEL_A, out)  # a RuleSpec and a scorer object
    b2 = load_bundle(out)
    assert b2.spec.version == load_spec(spec_dict(0.5)).version and b2.scorer == MODEL_A

    publish(SPEC_YAML, MODEL_A.to_dict(), out)  # YAML text and a dict
    assert load_bundle(out).spec.version == load_spec(SPEC_YAML).version
    assert len(list_versions(out)) == 3 and len(history(out)) == 3


def test_same_content_twice_gets_two_versions(out):
    a = publish(spec_dict(), MODEL_A, out)
    b = publish(spec_dict(), MODEL_A, out)
    assert a != b and current_version(out) == b.name and history(out) == [a.name, b.name]


def test_bad_spec_is_refused_before_anything_is_written(out, tmp_path):
    bad = spec_dict()
    bad["rules"][0]["when"]["seconds_on_page"] = {"gte": "five"}
    with pytest.raises(SpecError, match=r"rules\[0\].when.seconds_on_page.gte"):
        publish(bad, MODEL_A, out)
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("name: x\nqueues: {}\nrules: [{name: a, when: {page: Home}, offer: {queue: Nowhere}}]\n")
    with pytest.raises(SpecError, match="bad.yaml"):
        publish(bad_file, None, out)
    with pytest.raises(SpecError, match="cannot read"):
        publish(tmp_path / "missing.yaml", None, out)
    assert not out.exists()


@pytest.mark.parametrize("model, message", [
    ({"kind": "pickle", "blob": "gASV"}, "cannot load the model of kind 'pickle'"),
    ({"intercept": 1.0}, "no 'kind'"),
    ({"kind": "linear"}, "cannot load the model of kind 'linear'"),
    ({"kind": "linear", "intercept": "high"}, "cannot load the model"),
    ([1, 2], "expected a path to a model JSON file, a dict or a scorer"),
    ({"kind": "null"}, "gave no score|cannot load the model of kind 'null'"),
])
def test_bad_model_is_refused_before_anything_is_written(out, model, message):
    with pytest.raises(BundleError, match=message):
        publish(spec_dict(), model, out)
    assert list_versions(out) == [] and current_version(out) is None


def test_model_file_with_nan_or_duplicate_keys_is_refused(out, tmp_path):
    for i, text in enumerate(['{"kind": "linear", "intercept": NaN}',
                              '{"kind": "linear", "intercept": 1, "intercept": 2}', "not json", "[1, 2]"]):
        path = tmp_path / f"m{i}.json"
        path.write_text(text)
        with pytest.raises(BundleError, match=rf"m{i}.json: (not valid JSON|expected a JSON object, got list)"):
            publish(spec_dict(), path, out)
    assert list_versions(out) == []


class OutOfRange:
    def to_dict(self):
        return {"kind": "linear", "intercept": 0.0}

    def predict_proba_one(self, fields):
        return 1.5


def test_model_must_score_a_probe_to_a_probability(out, monkeypatch):
    import pcrules.bundle as bundle

    monkeypatch.setattr(bundle, "_scorer_from_data", lambda data, what: bundle._probe(OutOfRange(), what))
    with pytest.raises(BundleError, match=r"scored a probe event 1.5; expected a probability"):
        publish(spec_dict(), OutOfRange(), out)


# --------------------------------------------------------------------------- verification on load


def test_tampered_rules_are_refused_naming_the_file(out):
    path = publish(spec_dict(0.4), MODEL_A, out)
    flip_one_byte(path / "rules.yaml", b"gte: 0.4", b"gte: 0.1")  # still a valid spec
    load_spec((path / "rules.yaml").read_text())
    with pytest.raises(BundleError, match=r"rules\.yaml: sha256 mismatch .*changed after publishing"):
        load_bundle(out)


def test_tampered_model_is_refused_naming_the_file(out):
    path = publish(spec_dict(), MODEL_A, out)
    flip_one_byte(path / "model.json", b"0.6", b"0.7")  # a weight: still a valid model
    with pytest.raises(BundleError, match=r"model\.json: sha256 mismatch"):
        load_bundle(path)


def test_missing_or_unlisted_parts_are_refused(out):
    path = publish(spec_dict(), MODEL_A, out)
    (path / "model.json").unlink()
    with pytest.raises(BundleError, match=r"model\.json: missing \(listed in manifest.json\)"):
        load_bundle(out)

    rules_only = publish(spec_dict(), None, out)
    (rules_only / "model.json").write_text(json.dumps(MODEL_B.to_dict()))
    with pytest.raises(BundleError, match=r"model\.json: present but not listed"):
        load_bundle(out)


def test_missing_manifest_is_refused(out):
    path = publish(spec_dict(), MODEL_A, out)
    (path / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_bundle(out)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format_version=2), r"unknown bundle format version 2 \(written by a newer pcrules\)"),
    (lambda m: m.update(format_version="1"), r"format_version: expected an integer"),
    (lambda m: m.update(format="zip"), r"not a pcrules bundle"),
    (lambda m: m["libraries"].update(pcrules="7.0.1"),
     r"written with pcrules 7\.0\.1, incompatible with the installed"),
    (lambda m: m["libraries"].pop("pcrules"), r"libraries\.pcrules: required"),
    (lambda m: m["libraries"].update({"durable-rules": "3.0.0"}), r"written with durable-rules 3\.0\.0, incompatible"),
    (lambda m: m.pop("ruleset"), r"required field 'ruleset' is missing"),
    (lambda m: m.pop("files"), r"required field 'files' is missing"),
    (lambda m: m["files"].update({"../../etc/passwd": m["files"]["rules.yaml"]}),
     r"unexpected part '\.\./\.\./etc/passwd'"),
    (lambda m: m["files"]["rules.yaml"].update(sha256="zz"), r"files\.rules\.yaml: expected"),
    (lambda m: m["ruleset"].update(version="0123456789ab"),
     r"rules\.yaml: is ruleset 'bundled' version .* manifest names"),
    (lambda m: m.update(bundle_version="20990101T000000Z-ffffffffff"), r"does not match its directory"),
])
def test_bad_manifest_is_refused_with_the_reason(out, change, message):
    path = publish(spec_dict(), MODEL_A, out)
    edit_manifest(path, change)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(out)
    assert "manifest.json" in str(info.value) or "rules.yaml" in str(info.value)


def test_load_reports_what_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "fresh" / "versions").mkdir(parents=True)
    with pytest.raises(BundleError, match="no current bundle"):
        load_bundle(tmp_path / "fresh")
    assert issubclass(BundleError, PcrulesError)


# --------------------------------------------------------------------------- crash during publish

CRASHING_PUBLISH = """
import os, signal, sys
import pcrules.bundle as bundle
stage, rules, model, out = sys.argv[1:]
def hook(name):
    if name == stage:
        os.kill(os.getpid(), signal.SIGKILL)
bundle._stage = hook
bundle.publish(rules, model, out)
print("not killed")
"""


def publish_and_die(stage: str, rules: Path, model: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CRASHING_PUBLISH, stage, str(rules), str(model), str(out)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("stage", ["wrote rules.yaml", "wrote model.json", "wrote manifest.json", "renamed"])
def test_a_publish_killed_midway_never_becomes_current(out, tmp_path, stage):
    good = publish(spec_dict(0.4), MODEL_A, out)
    rules = tmp_path / "v2.yaml"
    rules.write_text(json.dumps(spec_dict(0.9, name="v2")))
    model = tmp_path / "v2.json"
    model.write_text(json.dumps(MODEL_B.to_dict()))

    publish_and_die(stage, rules, model, out)

    assert current_version(out) == good.name and history(out) == [good.name]
    bundle = load_bundle(out)
    assert bundle.version == good.name and bundle.spec.name == "bundled" and bundle.scorer == MODEL_A
    leftovers = sorted(out.glob(".tmp-*"))
    if stage == "renamed":  # complete and verified, but never made current
        assert leftovers == [] and len(list_versions(out)) == 2
    else:  # half-written: ignored by listing and by loading, then cleaned
        assert len(leftovers) == 1 and list_versions(out) == [good.name]
        with pytest.raises(BundleError, match="half-written bundle"):
            load_bundle(leftovers[0])
        assert clean_staging(out) == leftovers and not leftovers[0].exists()

    third = publish(spec_dict(0.5, name="v3"), MODEL_B, out)  # publishing carries on
    assert current_version(out) == third.name
    assert rollback(out).version == good.name


def test_a_publish_killed_between_pointer_and_history_is_consistent(out, tmp_path):
    good = publish(spec_dict(0.4), MODEL_A, out)
    rules = tmp_path / "v2.yaml"
    rules.write_text(json.dumps(spec_dict(0.9, name="v2")))
    model = tmp_path / "v2.json"
    model.write_text(json.dumps(MODEL_B.to_dict()))
    publish_and_die("pointed", rules, model, out)

    new = current_version(out)
    assert new != good.name and load_bundle(out).spec.name == "v2"
    assert history(out) == [good.name, new]  # the pointer is authoritative: history catches up
    assert rollback(out).version == good.name and load_bundle(out).version == good.name


def test_the_kill_leftover_is_removed_by_the_next_publish(out, files, tmp_path):
    good = publish(spec_dict(), MODEL_A, out)
    publish_and_die("wrote rules.yaml", *files, out)
    assert len(list(out.glob(".tmp-*"))) == 1
    publish(spec_dict(0.6), MODEL_A, out)
    assert list(out.glob(".tmp-*")) == [] and history(out)[0] == good.name


def test_readers_never_see_a_mix_while_versions_are_published(out):
    publish(spec_dict(0.1, name="r0"), MODEL_A, out)
    seen: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                b = load_bundle(out)
                seen.append((b.spec.name, b.version))
                assert b.manifest["ruleset"]["name"] == b.spec.name
            except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 8):
            publish(spec_dict(0.1 + i / 10, name=f"r{i}"), MODEL_A if i % 2 else MODEL_B, out)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert seen and load_bundle(out).spec.name == "r7"


def test_concurrent_publishers_are_serialised(out):
    errors: list[BaseException] = []

    def publisher(k: int):
        try:
            for i in range(3):
                publish(spec_dict(0.1 + i / 10, name=f"p{k}-{i}"), MODEL_A, out)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    past = history(out)
    assert len(past) == len(set(past)) == 12 and sorted(past) == list_versions(out)
    assert all(load_bundle(out / "versions" / v).version == v for v in past)
    assert list(out.glob(".tmp-*")) == []


# --------------------------------------------------------------------------- rollback


def test_rollback_walks_back_through_history(out):
    v = [publish(spec_dict(0.1 * (i + 1), name=f"n{i}"), MODEL_A, out) for i in range(3)]
    r = rollback(out)
    assert (r.version, r.previous, r.path) == (v[1].name, v[2].name, v[1])
    assert load_bundle(out).spec.name == "n1"
    assert rollback(out).version == v[0].name and history(out) == [v[0].name]
    with pytest.raises(BundleError, match="nothing to roll back to"):
        rollback(out)
    assert current_version(out) == v[0].name
    assert list_versions(out) == sorted(p.name for p in v)  # rolling back deletes nothing
    new = publish(spec_dict(0.7, name="n3"), MODEL_A, out)
    assert history(out) == [v[0].name, new.name]


def test_rollback_refuses_a_broken_previous_version_and_keeps_current(out):
    old = publish(spec_dict(0.4), MODEL_A, out)
    new = publish(spec_dict(0.5), MODEL_A, out)
    flip_one_byte(old / "model.json", b"0.6", b"0.7")
    with pytest.raises(BundleError,
                       match=rf"cannot roll back to {old.name}: .*model\.json: sha256 mismatch.*stays current"):
        rollback(out)
    assert current_version(out) == new.name and load_bundle(out).version == new.name


def test_rollback_without_anything_published(tmp_path):
    with pytest.raises(BundleError, match="no such publish directory"):
        rollback(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="nothing is current"):
        rollback(tmp_path / "empty")


# --------------------------------------------------------------------------- runtime on a bundle


def test_score_rule_fires_exactly_where_the_model_passes_the_threshold(out):
    threshold = 0.4
    publish(spec_dict(threshold), MODEL_A, out)
    rt = Runtime.from_bundle(out, new_offer_id=ids(), clock=lambda: T0)
    # sigmoid(z) = 0.4  <=>  -3 + 0.6 log1p(s) + extras = logit(0.4)
    logit = math.log(threshold / (1 - threshold))
    crossing = {extra: math.expm1((logit + 3.0 - bump) / 0.6)
                for extra, bump in (("desktop", 0.0), ("mobile", 0.4), ("returning", 0.5))}
    offers = refusals = 0
    for n, (extra, s_star) in enumerate(crossing.items()):
        fields = {"desktop": {"device": "desktop"}, "mobile": {"device": "mobile"},
                  "returning": {"returning": True}}[extra]
        for k, seconds in enumerate((0.0, s_star * 0.5, s_star - 0.01, s_star * (1 - 1e-9), s_star * (1 + 1e-9),
                                     s_star + 0.01, s_star * 2, 10_000.0)):
            event = ev(f"v{n}-{k}", seconds, **fields)
            expected = MODEL_A.predict_proba_one(event)
            d = rt.observe(event)
            assert d.score == expected
            if expected >= threshold:
                offers += 1
                assert d.action == "offer" and d.rule == "bill-scored", (event, expected, d)
            else:
                refusals += 1
                assert d.action == "none" and d.reason == Reason.SCORE_BELOW, (event, expected, d)
    assert offers >= 9 and refusals >= 9  # both sides of the threshold, close to it, for every feature path


def test_rules_only_bundle_means_no_score(out):
    publish(spec_dict(0.0), None, out)
    rt = Runtime.from_bundle(out, clock=lambda: T0)
    d = rt.observe(ev("v1"))
    assert d.action == "none" and d.score is None
    with pytest.raises(TypeError, match="scorer comes from the bundle"):
        Runtime.from_bundle(out, scorer=MODEL_A)


def test_reload_of_a_newer_bundle_keeps_offers_sessions_and_cooldowns(out):
    v1 = publish(spec_dict(0.4, seconds=300), MODEL_A, out)
    rt = Runtime.from_bundle(out, new_offer_id=ids(), clock=lambda: T0)
    pending = rt.observe(ev("pending", 301))
    declined = rt.observe(ev("decliner", 301))
    assert pending.action == declined.action == "offer"
    rt.decline(declined.offer_id, ts=T0 + 5)
    sessions = dict(rt.store.sessions())

    v2_spec = spec_dict(0.6, name="bundled-v2", seconds=300)
    v2 = publish(v2_spec, MODEL_B, out)
    bundle = rt.reload_bundle(out)
    assert bundle.version == v2.name != v1.name
    assert rt.spec.version == load_spec(v2_spec).version and rt.scorer == MODEL_B
    assert dict(rt.store.sessions()) == sessions

    assert rt.accept(pending.offer_id, ts=T0 + 10).status == OfferStatus.ACCEPTED  # still answerable
    again = rt.observe(ev("decliner", 400, ts=T0 + 100, session="s2"))
    assert again.action == "none" and again.reason == Reason.COOLDOWN  # cooldown still in force
    fresh = ev("newcomer", 2000, ts=T0 + 100)
    d = rt.observe(fresh)
    assert d.score == MODEL_B.predict_proba_one(fresh) and d.action == "offer"
    assert d.ruleset_version == rt.spec.version


@pytest.mark.parametrize("part, old, new", [("rules.yaml", b"gte: 0.6", b"gte: 0.1"), ("model.json", b"0.3", b"0.4")])
def test_a_failed_reload_keeps_the_last_good_bundle_serving(out, part, old, new):
    publish(spec_dict(0.4), MODEL_A, out)
    rt = Runtime.from_bundle(out, new_offer_id=ids(), clock=lambda: T0)
    spec, scorer = rt.spec, rt.scorer
    bad = publish(spec_dict(0.6, name="next"), MODEL_B, out)
    flip_one_byte(bad / part, old, new)

    with pytest.raises(BundleError, match=rf"{part}: sha256 mismatch"):
        rt.reload_bundle(out)
    assert rt.spec is spec and rt.scorer is scorer
    event = ev("v9", 3000)
    d = rt.observe(event)
    assert d.action == "offer" and d.score == MODEL_A.predict_proba_one(event) and d.ruleset == "bundled"

    rollback(out)  # operations roll the pointer back; reloading it is a no-op swap to the same content
    assert rt.reload_bundle(out).spec.version == spec.version


# --------------------------------------------------------------------------- CLI


def test_cli_publish_rollback_and_info(out, files, capsys):
    rules, model = files
    assert main(["publish", "--rules", str(rules), "--model", str(model), "--out", str(out)]) == 0
    first = current_version(out)
    assert f"published {first}: " in capsys.readouterr().out

    metrics = rules.parent / "metrics.json"
    metrics.write_text(json.dumps({"roc_auc": 0.9}))
    assert main(["publish", "--rules", str(rules), "--out", str(out), "--metrics", str(metrics)]) == 0
    second = current_version(out)
    assert second != first and load_bundle(out).scorer is None and load_bundle(out).metrics == {"roc_auc": 0.9}
    capsys.readouterr()

    assert main(["bundle-info", str(out)]) == 0
    info = capsys.readouterr().out
    assert f"current {second}" in info and f"* {second}" in info and first in info
    assert main(["bundle-info", str(out / "current")]) == 0
    assert "verified" in capsys.readouterr().out

    assert main(["rollback", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"rolled back: current is now {first} (was {second})")
    assert main(["rollback", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nothing to roll back to" in err and "Traceback" not in err


def test_cli_bundle_info_on_one_version_is_a_readable_description(out, files, capsys):
    rules, model = files
    metrics = rules.parent / "metrics.json"
    metrics.write_text(json.dumps({"held_out": {"n": 2000, "positives": 100, "roc_auc": 0.7123, "brier": 0.04,
                                                "reliability": [{"lo": 0.0, "hi": 0.1}], "oracle": None},
                                   "train_rows": 6000, "test_rows": 2000, "warnings": ["too few accepts " * 20],
                                   "support": {"seconds_on_page": {"low": 1, "high": 900}}, "seed": 3}))
    assert main(["publish", "--rules", str(rules), "--model", str(model), "--metrics", str(metrics),
                 "--out", str(out)]) == 0
    version = current_version(out)
    capsys.readouterr()
    assert main(["bundle-info", str(out / "versions" / version)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"bundle {version} at ") and lines[0].endswith(": verified")
    text = "\n".join(lines)
    assert "ruleset   'bundled'" in text and "1 rule(s)" in text
    assert "\n  model     " in text and "model     none" not in text
    assert "held out  2,000 offers, 100 accepted; AUC 0.712; Brier 0.0400" in text
    assert "trained   on 6,000 training rows, 2,000 held-out rows" in text
    assert "warnings  1: too few accepts" in text and "seed 3" in text and "support (in manifest.json)" in text
    assert "{" not in text and "reliability" not in text  # no raw JSON
    assert len(lines) <= 12 and all(len(line) <= 250 for line in lines)


def test_cli_errors_are_one_message_and_exit_1(out, files, tmp_path, capsys):
    rules, model = files
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC_YAML.replace("gte: 0.4", "gte: high"))
    assert main(["publish", "--rules", str(bad), "--out", str(out)]) == 1
    assert "rules[0].when.score.gte" in capsys.readouterr().err and not out.exists()

    broken = tmp_path / "broken.json"
    broken.write_text('{"kind": "forest"}')
    assert main(["publish", "--rules", str(rules), "--model", str(broken), "--out", str(out)]) == 1
    assert "cannot load the model of kind 'forest'" in capsys.readouterr().err

    assert main(["publish", "--rules", str(rules), "--model", str(model), "--out", str(out)]) == 0
    flip_one_byte(out / "current" / "model.json", b"0.6", b"0.7")
    capsys.readouterr()
    assert main(["bundle-info", str(out / "current")]) == 1
    assert "model.json: sha256 mismatch" in capsys.readouterr().err
    assert main(["bundle-info", str(out)]) == 1
    assert "REFUSED" in capsys.readouterr().out


def test_loading_a_bundle_imports_no_data_science_stack(out, files):
    publish(*files, out)
    code = ("import sys, pcrules, pcrules.bundle as b; bd = b.load_bundle(sys.argv[1]); "
            "rt = pcrules.Runtime.from_bundle(sys.argv[1]);"
            "bd.scorer.predict_proba_one({'seconds_on_page': 3.0});"
            "print(sorted(m for m in ('pandas', 'numpy', 'sklearn', 'scipy') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- audit: who published, who rolled back


def _audit(version_dir: Path) -> list[dict]:
    return json.loads((version_dir / "manifest.json").read_text())["audit"]


def test_publish_and_rollback_are_recorded_in_the_manifest_with_who_when_what(out):
    from pcrules.bundle import os_user

    first = publish(spec_dict(0.4), MODEL_A, out)  # no operator: the OS user
    [entry] = _audit(first)
    assert entry["action"] == "publish" and entry["operator"] == os_user() and entry["via"] == "api"
    assert (entry["from"], entry["to"], entry["made_current"], entry["override"]) == (None, first.name, True, None)
    assert datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).tzinfo is not None
    override = {"by": "alice", "at": "2026-12-07T08:00:00+00:00", "reasons": ["too little support"]}
    second = publish(spec_dict(0.5), MODEL_A, out, operator="alice", via="tuner", override=override)
    [entry] = load_bundle(out).audit
    assert (entry["operator"], entry["via"], entry["from"], entry["to"]) == ("alice", "tuner", first.name, second.name)
    assert entry["override"] == override
    quiet = publish(spec_dict(0.6), MODEL_A, out, operator="carol", activate=False)
    assert _audit(quiet)[0]["made_current"] is False and _audit(quiet)[0]["from"] == second.name

    result = rollback(out, operator="bob", via="cli")
    assert (result.version, result.previous, result.operator) == (first.name, second.name, "bob")
    published, rolled = load_bundle(out).audit  # the version made current again gains the entry
    assert published == _audit(first)[0] and published["operator"] == os_user()
    assert (rolled["action"], rolled["operator"], rolled["via"]) == ("rollback", "bob", "cli")
    assert (rolled["from"], rolled["to"], rolled["prev"]) == (second.name, first.name, published["sha256"])
    assert load_bundle(out / "versions" / second.name).audit[0]["operator"] == "alice"  # untouched
    with pytest.raises(BundleError, match="operator"):
        publish(spec_dict(0.7), MODEL_A, out, operator="eve\nmallory")


@pytest.mark.parametrize("change, message", [
    (lambda a: a[0].update(operator="mallory"), r"audit\[0\]: sha256 mismatch"),
    (lambda a: a.pop(0), r"audit\[0\]: does not follow"),
    (lambda a: a.reverse(), r"audit\[0\]: does not follow"),
    (lambda a: a[1].update(to="20990101T000000Z-0000000000"), r"audit\[1\]: records a rollback to"),
    (lambda a: a[1].update(action="delete"), r"audit\[1\]: action 'delete'"),
])
def test_an_edited_audit_is_refused_like_a_changed_part(out, change, message):
    first = publish(spec_dict(0.4), MODEL_A, out, operator="alice")
    publish(spec_dict(0.5), MODEL_A, out, operator="alice")
    rollback(out, operator="bob")
    edit_manifest(first, lambda m: change(m["audit"]))
    with pytest.raises(BundleError, match=message):
        load_bundle(out)


def test_an_audit_copied_from_another_bundle_is_refused(out):
    a = publish(spec_dict(0.4), MODEL_A, out, operator="alice")
    b = publish(spec_dict(0.5), MODEL_A, out, operator="alice")
    stolen = _audit(a)
    stolen[0]["to"] = b.name  # even with the version rewritten, the chain is anchored to a's parts
    edit_manifest(b, lambda m: m.update(audit=stolen))
    with pytest.raises(BundleError, match=r"audit\[0\]"):
        load_bundle(b)


def test_a_manifest_without_audit_still_loads_and_gains_one_on_rollback(out, capsys):
    old = publish(spec_dict(0.4), MODEL_A, out)
    edit_manifest(old, lambda m: m.pop("audit"))  # as written before pcrules recorded operators
    assert load_bundle(old).audit == []
    assert main(["bundle-info", str(old)]) == 0
    assert "audit     none recorded" in capsys.readouterr().out
    new = publish(spec_dict(0.5), MODEL_A, out, operator="alice")
    assert main(["rollback", "--out", str(out), "--operator", "bob"]) == 0
    assert "recorded as bob's" in capsys.readouterr().out
    [entry] = load_bundle(out).audit
    assert (entry["action"], entry["operator"], entry["from"], entry["to"]) == ("rollback", "bob", new.name, old.name)
    assert main(["bundle-info", str(out / "current")]) == 0
    info = capsys.readouterr().out
    assert f"audit     rolled back to by bob at {entry['at']} via cli (from {new.name})" in info


def test_a_rollback_that_cannot_record_moves_nothing(out, monkeypatch):
    import pcrules.bundle as bundle

    first = publish(spec_dict(0.4), MODEL_A, out)
    second = publish(spec_dict(0.5), MODEL_A, out)
    before = (first / "manifest.json").read_bytes()

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle, "_replace_durable", full)
    with pytest.raises(OSError):
        rollback(out, operator="bob")
    assert current_version(out) == second.name and (first / "manifest.json").read_bytes() == before


def test_cli_publish_records_the_os_user_and_bundle_info_shows_it(out, files, capsys):
    from pcrules.bundle import os_user

    rules, model = files
    assert main(["publish", "--rules", str(rules), "--model", str(model), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["bundle-info", str(out / "current")]) == 0
    [entry] = load_bundle(out).audit
    assert (entry["operator"], entry["via"]) == (os_user(), "cli")
    assert f"audit     published by {os_user()} at {entry['at']} via cli (current before: none)" in \
        capsys.readouterr().out
