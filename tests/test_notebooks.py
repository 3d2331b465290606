"""The analyst notebooks and the tuner's Voila app, executed for real.

* Every notebook in ``notebooks/`` runs top to bottom in a real kernel (nbclient), papermill style: the
  parameters are injected in a cell after the one tagged ``parameters``. They run on the shipped sample
  (what CI promises) with every output path in a temporary folder, and notebook 1 and 3 also on a small
  generated world written as files (the folder layout real history uses). A failing cell fails the test;
  the key outputs (tables, charts, the tuner widget, a published bundle) must be there.
* The committed notebooks carry no outputs and no execution counts (``nbstripout --verify`` equivalent).
* Notebooks 02 -> 03 on the shipped sample with their defaults: what 03 recommends is not worse by the truth than
  the current ruleset, or Publish's guardrail refuses it with a visible reason (issue 16).
* ``dashboards/triggers.ipynb`` is served by Voila (the settings of :mod:`pcrules.dashboard`) and driven by
  Debian's Chromium through Playwright: a slider moves and the figures change to the backtest's values.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from browser import chromium as launch_chromium

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DASHBOARD = ROOT / "dashboards" / "triggers.ipynb"
COMMITTED = sorted(NOTEBOOKS.glob("*.ipynb")) + [DASHBOARD]
SAMPLE = ROOT / "data" / "sample_events.csv.gz"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.timeout(600)


# --------------------------------------------------------------------------- running notebooks


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["MPLBACKEND"] = "Agg"
    env.pop(("PCRULES_EVENTS"), None)
    env.pop(("PCRULES_BUNDLE"), None)
    return env


def inject(nb: Any, params: dict[str, Any]) -> Any:
    """Papermill's convention: a cell assigning `params` right after the cell tagged ``parameters``."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected"
    nb.cells.insert(index + 1, cell)
    return nb


def run(path: Path, params: dict[str, Any], timeout: int = 300, then: str | None = None) -> Any:
    """Execute the notebook at `path` with `params` injected; `then`: a code cell run after the last one (a test
    reading the kernel's state)."""
    from nbclient import NotebookClient

    nb = inject(nbformat.read(path, as_version=4), params)
    if then is not None:
        cell = nbformat.v4.new_code_cell(then, metadata={"tags": ["test-readout"]})
        cell["id"] = "test-readout"
        nb.cells.append(cell)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    # the kernel inherits this process's environment: PYTHONPATH for pcrules, Agg for matplotlib
    saved = dict(os.environ)
    os.environ.update(_kernel_env())
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def outputs(nb: Any, mime: str) -> list[Any]:
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                raise AssertionError(f"error output: {out.get('ename')}: {out.get('evalue')}")
            data = out.get("data", {})
            if mime in data:
                found.append(data[mime])
            if mime == "text/plain" and out.get("output_type") == "stream":
                found.append(out.get("text", ""))
    return found


def text_of(nb: Any) -> str:
    return "\n".join(str(x) for x in outputs(nb, "text/plain")) + "\n".join(str(x) for x in outputs(nb, "text/html"))


@pytest.fixture(scope="module")
def world_dir(worlds: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:

    out = tmp_path_factory.mktemp("history") / "world"
    worlds(visitors=900, seed=11, days=7).write(out, format="csv.gz")
    return out


# --------------------------------------------------------------------------- the committed files


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs (strip them before committing)"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
        assert "attachments" not in cell or not cell.attachments
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and nb.cells.index(tagged[0]) == (0 if path == DASHBOARD else 1), \
        "one parameters cell, first among the code cells"
    assert "data_path" in tagged[0].source and "bundle_path" in tagged[0].source


def test_notebooks_are_thin() -> None:
    """Notebooks call pcrules; they define no functions or classes of their own."""
    for path in COMMITTED:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert not re.search(r"^\s*(def|class)\s", cell.source, re.MULTILINE), \
                    f"{path.name}: logic belongs in pcrules"


# --------------------------------------------------------------------------- the functions they call


def test_analysis_functions(tmp_path: Path, world_dir: Path) -> None:
    """What notebooks 1 and 2 show, checked against the data directly."""
    from pcrules import analysis
    from pcrules.world import read_world

    world = read_world(world_dir)
    h = analysis.load_history(world_dir)
    assert h.generated and len(h.events) == len(world.events) and len(h.offers) == len(world.offers)
    over = analysis.overview(h)["value"]
    assert over["sessions"] == world.events["session_id"].nunique() and over["legacy offers"] == len(world.offers)
    pages = analysis.page_table(h)
    assert pages["page views"].sum() == len(world.page_views)
    assert pages.loc["Home", "median dwell (s)"] == pytest.approx(
        world.page_views.loc[world.page_views["page"] == "Home", "dwell_s"].median())
    offers = analysis.offers_by_page(h)
    assert offers["offers"].sum() == len(world.offers)
    assert (offers["accept"] + offers["decline"] + offers["none"] == offers["offers"]).all()
    assert ((offers["low"] <= offers["accept rate"]) & (offers["accept rate"] <= offers["high"])).all()
    by_time = analysis.acceptance_by_time(h)
    assert by_time["offers"].sum() == len(world.offers)
    assert by_time["accepted"].sum() == (world.offers["response"] == "accept").sum()
    for fig in (analysis.plot_sessions(h), analysis.plot_dwell(h), analysis.plot_offers(h),
                analysis.plot_acceptance(h)):
        assert fig.axes and fig._repr_png_()[:4] == b"\x89PNG"

    # real history: events only, other column names, a bad row; page views derived, answers from the events
    renamed = world.events.rename(columns={"visitor_id": "VisitorID", "seconds_on_page": "secs"})
    renamed.loc[3, "secs"] = -4  # refused: reported and dropped, never a crash
    renamed.to_csv(tmp_path / "clicks.csv", index=False)
    real = analysis.load_history(tmp_path / "clicks.csv",
                                 columns={"events": {"visitor_id": "VisitorID", "seconds_on_page": "secs"}})
    assert not real.generated and real.offers is None and len(real.events) == len(world.events) - 1
    assert real.reports["events"].rows_dropped == 1
    derived = analysis.page_views_of(real)
    assert abs(len(derived) - len(world.page_views)) <= 1  # one page view may lose its only event
    assert analysis.acceptance_by(real).attrs["source"] == "would-be answers of every event"
    assert "offers" in analysis.offers_by_page(real).columns and not len(analysis.offers_by_page(real))
    with pytest.raises(ValueError, match="no offers table"):
        analysis.train_model(real)
    assert analysis.event_truth(real) is None

    trained = analysis.train_model(h)
    assert 0.0 <= trained.report.roc_auc <= 1.0 and trained.test.sum() == trained.report.n  # few held-out accepts here
    table = analysis.report_table({"world": trained})
    assert table.loc["ROC AUC", "world"] == trained.report.roc_auc and "truth: ROC AUC" in table.index
    effects = analysis.feature_effects(trained, ["page", "seconds_on_page"], sample=300)
    assert set(effects["feature"]) == {"page", "seconds_on_page"}
    assert effects["mean P(accept)"].between(0, 1).all()
    comparison = analysis.truth_comparison(trained, h)
    assert comparison["events"].sum() == len(world.events) and 0 <= comparison.attrs["mae"] < 0.5
    for fig in (analysis.plot_roc({"w": trained}), analysis.plot_reliability({"w": trained}),
                analysis.plot_feature_effects(effects), analysis.plot_truth_comparison(comparison)):
        assert fig.axes
    analysis.save_model(trained, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.metrics.json").read_text())["test_rows"] == trained.report.n
    with pytest.raises(FileNotFoundError):
        analysis.load_history(tmp_path / "nowhere")


# --------------------------------------------------------------------------- executing them


@pytest.mark.notebook
def test_explore_notebook(world_dir: Path) -> None:
    for data in (SAMPLE, world_dir):
        nb = run(NOTEBOOKS / "01_explore_history.ipynb", {"data_path": str(data)})
        pngs = outputs(nb, "image/png")
        assert len(pngs) >= 4, "sessions, dwell, offers and acceptance charts"
        html = "\n".join(outputs(nb, "text/html"))
        for heading in ("legacy offers", "median dwell (s)", "accept rate", "session length (s)"):
            assert heading in html
        assert "generated world: ground truth known" in text_of(nb)


@pytest.mark.notebook
def test_train_notebook(tmp_path: Path) -> None:
    model = tmp_path / "model.json"
    nb = run(NOTEBOOKS / "02_train_model.ipynb", {"data_path": str(SAMPLE), "model_path": str(model)})
    text = text_of(nb)
    assert "ROC AUC" in text and "online shoppers" in text and "mean |model - truth| per event" in text
    assert len(outputs(nb, "image/png")) >= 6, "ROC, reliability, effects, truth; shoppers' ROC, reliability, effects"
    data = json.loads(model.read_text())
    assert data["kind"] == "compiled_logistic"
    assert (tmp_path / "model.metrics.json").is_file()
    # the real data's AUC as the report table shows it
    auc = re.search(r"ROC AUC\s+([0-9.]+)\s+([0-9.]+)", text)
    assert auc and float(auc.group(2)) > 0.85


@pytest.mark.notebook
def test_tune_notebook_publishes(tmp_path: Path, world_dir: Path) -> None:
    from pcrules import analysis
    from pcrules.bundle import current_version, load_bundle

    # a model for the tuner (what notebook 2 writes), trained on the world's offers
    h = analysis.load_history(world_dir)
    analysis.save_model(analysis.train_model(h), tmp_path / "model.json")
    published = tmp_path / "published"
    nb = run(NOTEBOOKS / "03_tune_triggers.ipynb", {
        "data_path": str(world_dir), "bundle_path": str(published), "model_path": str(tmp_path / "model.json"),
        "publish": True, "publish_anyway": True, "objective": "uplift"})
    widgets = outputs(nb, "application/vnd.jupyter.widget-view+json")
    assert widgets, "the tuner widget is displayed"
    text = text_of(nb)
    assert "score_threshold" in text and "expected_accepts" in text  # the expected-value table
    assert "'objective': 'uplift'" in text and "true_expected_uplift" in text  # ... chosen for the extra goals
    assert "offers by rule" in text  # the side-by-side comparison
    assert "extra goals (tuned)" in text  # expected uplift by page, current and tuned
    assert "published" in text and current_version(published) is not None
    bundle = load_bundle(published / "current")
    assert bundle.scorer is not None and bundle.metrics["tuning"]["backtest"]["offers"] >= 0
    assert len(outputs(nb, "image/png")) >= 1
    # checked against the log (a generated world knows its logging ruleset): the figures, and the guardrail's
    # word in the manifest (an override when it refused: publish_anyway)
    assert "Publish is checked against the log" in text and "Checked against the log" in text
    assert "effective sample" in text and "offers outside the log's support" in text
    guard = bundle.metrics["guardrail"]
    assert guard["checked"] and guard["estimator"] == "dr" and guard["candidate"]["estimates"]["dm"]
    assert guard["ok"] or (guard["override"]["reasons"] == guard["reasons"] and guard["override"]["by"])
    # and on the shipped sample, with no bundle and no model: it still runs (no model, no threshold choice)
    nb = run(NOTEBOOKS / "03_tune_triggers.ipynb", {"data_path": str(SAMPLE), "bundle_path": str(tmp_path / "b2"),
                                                    "model_path": None})
    assert "No model" in text_of(nb) and outputs(nb, "application/vnd.jupyter.widget-view+json")
    assert "extra goals (tuned)" in text_of(nb)  # the sample is a generated world: the truth values its offers


_READOUT = """import json
print("TEST-READOUT " + json.dumps({"tuned": tuning.spec_text(tuned_spec), "message": tuner.message.value,
                                   "verdict": None if tuner.verdict is None else tuner.verdict.to_dict()}))
"""


@pytest.mark.notebook
def test_notebooks_2_then_3_on_the_sample_recommend_no_worse_or_refuse_to_publish(tmp_path: Path) -> None:
    """Issue 16: notebooks 02 -> 03 with their defaults on the shipped sample (outputs in a temporary folder,
    Publish pressed): what 03 recommends is not worse by the truth than the current ruleset, or the guardrail
    blocks publishing it with a visible reason."""
    import html

    from pcrules import analysis, load_spec
    from pcrules.analysis.value import world_truth
    from pcrules.backtest import backtest
    from pcrules.bundle import current_version
    from pcrules.resources import default_rules
    from pcrules.scoring import load_scorer

    model = tmp_path / "model.json"
    run(NOTEBOOKS / "02_train_model.ipynb", {"model_path": str(model)})
    published = tmp_path / "published"
    nb = run(NOTEBOOKS / "03_tune_triggers.ipynb", {"model_path": str(model), "bundle_path": str(published),
                                                    "publish": True}, then=_READOUT)
    text = text_of(nb)
    readout = json.loads(next(line for line in text.splitlines() if line.startswith("TEST-READOUT "))
                         .removeprefix("TEST-READOUT "))
    assert "Publish is checked against the log" in text  # the sample's logged feedback reached the tuner

    history = analysis.load_history(SAMPLE)
    truth = world_truth(history)
    scorer = load_scorer(json.loads(model.read_text()))
    current = load_spec(default_rules())  # 03's current ruleset: no bundle yet, the embedded default
    tuned = load_spec(readout["tuned"])
    true = {name: backtest(spec, history.events, scorer, truth=truth).metrics["true_expected_accepts"]
            for name, spec in (("current", current), ("tuned", tuned))}
    published_it = current_version(published) is not None
    message = html.unescape(re.sub(r"<[^>]+>", "", readout["message"]))
    verdict = readout["verdict"]
    print(f"\n02 -> 03 on the sample: tuned {tuned.name} {tuned.version} "
          f"({len(tuned.rules)} rules), true expected accepts {true['tuned']:.1f} vs current {true['current']:.1f}; "
          f"published: {published_it}; guardrail: {message}")
    if published_it:  # the guardrail let it through: then it must not be worse by the truth
        assert verdict is not None and verdict["ok"], message
        assert true["tuned"] >= true["current"], (true, message)
    else:  # refused, and the person reads why: the figures of the refusal, in the widget's message
        assert verdict is not None and not verdict["ok"] and verdict["reasons"]
        assert message.startswith("Nothing was published: the log does not support this ruleset — ")
        assert all(reason in message for reason in verdict["reasons"])
        assert "Traceback" not in message


# --------------------------------------------------------------------------- the Voila app, in a browser


@pytest.fixture(scope="module")
def app(worlds: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A bundle (default rules, a model) and history; Voila serving dashboards/triggers.ipynb on a free port."""
    import subprocess

    from pcrules import analysis, dashboard
    from pcrules.bundle import publish

    tmp = tmp_path_factory.mktemp("triggers-app")
    world = worlds(visitors=600, seed=5, days=7)
    world.write(tmp / "world", format="csv.gz")
    h = analysis.load_history(tmp / "world")
    model = analysis.train_model(h).model.compile()
    publish(ROOT / "pcrules" / "default_rules.yaml", model, tmp / "published", metrics={"auc": 0.7})
    port = dashboard.free_port()
    cmd = dashboard.voila_command(port, notebook=DASHBOARD, cull_idle_s=120, cull_interval_s=30)
    env = dashboard.voila_env(tmp / "no-log.sqlite", tmp / "published")
    env["PCRULES_EVENTS"] = str(tmp / "world")
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "voila-triggers.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen(cmd, cwd=DASHBOARD.parent, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                               stderr=subprocess.STDOUT, start_new_session=True)
    server = dashboard.DashboardServer(process, f"http://127.0.0.1:{port}/", log_path, log_file)
    try:
        server.wait_ready(timeout=60)
        yield {"url": server.url, "tmp": tmp, "world": world, "model": model}
    finally:
        server.stop()


@pytest.mark.notebook
@pytest.mark.browser
def test_triggers_app_in_a_browser(app: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    from pcrules.backtest import backtest
    from pcrules.bundle import load_bundle
    from pcrules.tuning import TriggerModel
    from pcrules.world import event_effects

    bundle = load_bundle(app["tmp"] / "published" / "current")
    model = TriggerModel(bundle.spec, app["world"].events, bundle.scorer)
    rule = "help-seeker"
    with launch_chromium() as browser:  # fails (never skips) without Debian's chromium
        page = browser.new_page(viewport={"width": 1300, "height": 1600})
        urls: list[str] = []
        page.on("request", lambda r: urls.append(r.url))
        page.goto(app["url"], timeout=90_000)
        offers = page.locator('[data-metric="offers"]')
        expect(offers).to_be_visible(timeout=90_000)
        first = model.evaluate(model.initial).metrics["offers"]
        expect(offers).to_have_text(f"{first:,}", timeout=30_000)
        # move the help-seeker rule's wait slider four steps to the right with the keyboard
        slider = page.locator(f".pcrules-rule-{rule}-wait")
        readout = slider.locator(".widget-readout")
        before = readout.inner_text()
        handle = slider.locator(".noUi-handle")
        handle.focus()
        for _ in range(4):
            handle.press("ArrowRight")
        expect(readout).not_to_have_text(before, timeout=30_000)
        wait = float(readout.inner_text())
        assert wait == float(before) + 20.0
        settings = model.initial.with_rule(rule, wait_s=wait)
        expected = backtest(model.spec_for(settings), app["world"].events, bundle.scorer,
                            effects=event_effects(app["world"])).metrics
        assert expected["offers"] != first
        expect(offers).to_have_text(f"{expected['offers']:,}", timeout=30_000)
        # a generated world: the expected uplift (extra goals) is shown, the backtest's
        uplift = page.locator('[data-metric="expected_uplift"]')
        expect(uplift).to_contain_text(f"{expected['expected_uplift']:+,.1f}", timeout=10_000)
        expect(uplift).to_contain_text(f"({100 * expected['expected_uplift_itt']:+.2f} pp ITT)")
        blocked = page.locator('[data-reason="max_offers"]')
        expect(blocked).to_have_text(f"{expected['reasons']['max_offers']:,}", timeout=10_000)
        expect(page.locator(".pcrules-chart img, img.pcrules-chart")).to_have_count(1)
        # checked against the log on demand: both rulesets' off-policy estimates, next to the model's
        page.locator("button.pcrules-check").click()
        table = page.locator(".pcrules-guardrail-table")
        expect(table).to_be_visible(timeout=60_000)
        expect(table).to_contain_text("candidate − current")
        expect(page.locator(".pcrules-override")).to_contain_text("Publish anyway")
        page.screenshot(path=str(ARTIFACTS / "triggers-app.png"), full_page=True)
        content = page.content()
        assert "Traceback" not in content
        outside = [u for u in urls if not u.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))]
        assert not outside, f"requests left the machine: {outside[:5]}"
