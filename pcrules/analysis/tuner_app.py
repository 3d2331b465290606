"""Notebook 3 and the Voila app of the trigger tuner: the inputs of tuning, the expected-value choice, the current
and the tuned ruleset side by side, and :func:`dashboard` (``dashboards/triggers.ipynb``; Publish is recorded as the
operator's signed in at the dashboard's proxy, ``$HTTP_X_PCRULES_OPERATOR``, else as the OS user's).

Both hand the tuner the logged feedback when the history has offers with their propensities (a generated world,
the shipped sample included, knows its logging ruleset; real history needs ``logging_spec_path``), so Publish
checks the tuned ruleset against the log (:mod:`pcrules.analysis.guardrail`); without it Publish says it cannot
check and needs the override."""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.spec import RuleSpec, load_spec
from .table import EventTable
from .tuner import BUNDLE_ENV, EVENTS_ENV
from .tuner_widget import Tuner, note_html, sentence_reason

__all__ = ["TuningInputs", "SideBySide", "load_for_tuning", "expected_value_choice", "side_by_side",
           "uplift_side_by_side", "plot_side_by_side", "dashboard", "LOGGING_SPEC_ENV",
           "SAMPLE_SHARE_ENV"]

log = logging.getLogger("pcrules.tuning")

LOGGING_SPEC_ENV = "PCRULES_LOGGING_SPEC"  # the dashboard's: the ruleset that logged the history's offers
# The operator signed in at pcrules.ops.auth's proxy: its X-Pcrules-Operator header, which Voila gives the kernel as
# this variable (equal to pcrules.ops.auth.OPERATOR_ENV; not imported, so that the tuner needs no tornado)
OPERATOR_ENV = "HTTP_X_PCRULES_OPERATOR"
SAMPLE_SHARE = 0.1  # of a partitioned history's partitions, the share the tuner works on (at least 2)
SAMPLE_SHARE_ENV = "PCRULES_SAMPLE_SHARE"  # the dashboard's
TRUTH_COLUMN = "p_accept"  # a generated partitioned world's truth and effects (generate_partitioned(truth=True))
EFFECT_COLUMNS = ("gain_if_accepted", "loss_if_not_accepted")


@dataclass
class TuningInputs:
    """What tuning needs: the current ruleset and model, the history (as an EventTable) and its truth."""

    spec: RuleSpec
    scorer: Any
    history: Any  # analysis.History (None on a partitioned history: see sample)
    table: EventTable
    truth: np.ndarray | None  # true P(accept) per event (input order), on a generated world
    bundle_dir: Path | None
    bundle_version: str | None
    model_metrics: dict[str, Any]
    notes: list[str]
    effects: Any = None  # what an offer at each event does to the goal probability (a generated world's truth)
    feedback: Any = None  # analysis.feedback.Feedback: the log, for the guardrail (None: none to be had) ...
    feedback_note: str | None = None  # ... and why not
    # a partitioned history: the sample of its partitions the tuner works on (analysis.partitioned.TuningSample)
    # and each event's sampled-partition index; None for a history loaded whole
    sample: Any = None
    partition: np.ndarray | None = None

    def summary(self) -> str:
        lines = [f"ruleset {self.spec.name} {self.spec.version} ({len(self.spec.rules)} rules, "
                 f"{len(self.spec.queues)} queues); "
                 + ("a model" if self.scorer is not None else "no model")
                 + (f"; bundle {self.bundle_version} in {self.bundle_dir}" if self.bundle_version else ""),
                 self.history.summary() if self.history is not None else
                 f"history {self.sample.source}: {self.sample.summary()}"]
        return "\n".join(lines + self.notes)

    def tuner(self, **kwargs: Any) -> Tuner:
        """A :class:`Tuner` over these inputs, publishing to their bundle folder, Publish checked against the log
        (the guardrail is on even without feedback: then Publish needs the override). On a partitioned history
        its model is built on the sample, its figures scaled to the whole history, and Publish rechecks the
        ruleset with a full partitioned backtest first."""
        kwargs.setdefault("bundle_dir", self.bundle_dir)
        kwargs.setdefault("model_metrics", self.model_metrics)
        kwargs.setdefault("feedback", self.feedback)
        kwargs.setdefault("feedback_note", self.feedback_note)
        kwargs.setdefault("guardrail", True)
        if self.sample is not None and "model" not in kwargs:
            from .tuner import TriggerModel

            kwargs["model"] = TriggerModel(self.spec, self.table, self.scorer, truth=self.truth, effects=self.effects,
                                           partition=self.partition, sample=self.sample)
        return Tuner(self.spec, self.table, self.scorer, truth=self.truth, effects=self.effects, **kwargs)


def load_for_tuning(data_path: str | os.PathLike, bundle_path: str | os.PathLike | None = None, *,
                    rules_path: str | os.PathLike | None = None, model_path: str | os.PathLike | None = None,
                    columns: Mapping[str, Mapping[str, str]] | None = None,
                    logging_spec_path: str | os.PathLike | None = None, sample_share: float = SAMPLE_SHARE,
                    engine: str = "processes") -> TuningInputs:
    """The history at `data_path` (see ``analysis.load_history``) and the ruleset and model to tune.

    The ruleset and model come from the current bundle of `bundle_path` when there is one; ``rules_path`` /
    ``model_path`` (a model JSON file, as ``pcrules train`` writes) override it; otherwise the embedded
    default rules and no model. Publishing goes to `bundle_path`.

    The logged feedback (``analysis.history_feedback``) comes from the history's offers and their propensities,
    read with ``logging_spec_path`` (the ruleset that made them) or, for a generated world, its own; when there
    is none, ``feedback`` is None and a note says why (Publish then needs the override).

    A history partitioned by visitor (`data_path` or its ``events/`` holds ``part=NNN`` folders) is not loaded
    whole: the tuner works on ``sample_share`` of its partitions (at least 2; a keyed-hash visitor sample,
    :func:`pcrules.analysis.partitioned.read_sample`), states that share, scales its figures to the whole
    history with intervals, and Publish rechecks the chosen ruleset with a full partitioned backtest on
    `engine` (``"processes"``, ``"serial"``). A ``p_accept`` column is the truth, ``gain_if_accepted`` /
    ``loss_if_not_accepted`` the effects (as ``generate_partitioned(truth=True)`` writes them); the guardrail
    reads the sampled partitions of ``offers/`` with ``logging_spec_path``.
    """
    from ..bundle import current_version, load_bundle
    from ..scoring import load_scorer
    from .explore import event_truth, history_feedback, load_history
    from .partitioned import partitioned_folder

    notes: list[str] = []
    folder = partitioned_folder(data_path)
    history = load_history(data_path, columns=columns) if folder is None else None
    bundle_dir = Path(bundle_path).expanduser() if bundle_path not in (None, "") else None
    spec, scorer, version, metrics = None, None, None, {}
    if bundle_dir is not None and bundle_dir.exists() and current_version(bundle_dir) is not None:
        bundle = load_bundle(bundle_dir / "current")
        spec, scorer, version, metrics = bundle.spec, bundle.scorer, bundle.version, dict(bundle.metrics or {})
        notes.append(f"The current bundle {version} gives the ruleset and the model.")
    elif bundle_dir is not None:
        notes.append(f"There is no bundle in {bundle_dir} yet: Publish will create the first one.")
    if rules_path not in (None, ""):
        spec = load_spec(Path(rules_path).expanduser())
        notes.append(f"The ruleset comes from {rules_path}.")
    if spec is None:
        from ..resources import default_rules  # pcrules/default_rules.yaml, package data
        spec = load_spec(default_rules())
        notes.append("The ruleset is the embedded default (pcrules/default_rules.yaml).")
    if model_path not in (None, ""):
        import json

        path = Path(model_path).expanduser()
        if path.is_file():
            scorer = load_scorer(json.loads(path.read_text(encoding="utf-8")))
            notes.append(f"The model comes from {path}.")
            from .explore import metrics_path_for

            metrics_file = metrics_path_for(path)
            if metrics_file.is_file():
                metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        else:
            notes.append(f"There is no model file at {path}.")
    if scorer is None:
        notes.append("No model: rules cannot use a score threshold, and expected accepts are not known.")
    if folder is not None:
        return _partitioned_inputs(folder, spec, scorer, bundle_dir, version, metrics, notes, logging_spec_path,
                                   sample_share, engine)
    assert history is not None
    truth = event_truth(history)
    effects = None
    if history.generated:
        from .world import event_effects

        effects = event_effects(history)[["gain_if_accepted", "loss_if_not_accepted"]]
        notes.append("A generated world: the expected uplift (extra goals) uses its known effect of an offer.")
    else:
        notes.append("Real history: the effect of an offer on the goals is not known, so the expected uplift is "
                     "not available (backtest(effects=...) takes an assumption).")
    feedback, feedback_note = None, None
    try:
        feedback = history_feedback(history, None if logging_spec_path in (None, "") else logging_spec_path,
                                    scorer=scorer)
        notes.append(f"Publish is checked against the log: {feedback.n:,} session stretches, each with the "
                     f"probability the logging ruleset ({feedback.spec.name}) gave its choice.")
    except Exception as exc:  # a sentence: what is missing, or why the log cannot be read
        log.warning("tuning: no logged feedback: %s", exc)
        feedback_note = sentence_reason(exc)
        notes.append(f"Publish cannot be checked against the log ({feedback_note}): it needs the override.")
    table = EventTable(history.events)
    return TuningInputs(spec, scorer, history, table, truth, bundle_dir, version, metrics, notes, effects,
                        feedback, feedback_note)


def _partitioned_inputs(folder: Path, spec: RuleSpec, scorer: Any, bundle_dir: Path | None, version: str | None,
                        metrics: dict[str, Any], notes: list[str], logging_spec_path: Any, share: float,
                        engine: str) -> TuningInputs:
    """:func:`load_for_tuning` on a history partitioned by visitor: the events of a sample of its partitions."""
    from .partitioned import partitioned_folder, partitions, read_partition, read_sample

    frame, partition, sample, problems = read_sample(folder, share)
    if problems:
        notes.append(f"{len(problems):,} problem(s) reading the sample, e.g. {problems[0]}.")
    truth = effects = None
    options: dict[str, Any] = {"engine": engine}
    if TRUTH_COLUMN in frame.columns:
        truth = pd.to_numeric(frame[TRUTH_COLUMN], errors="coerce").to_numpy(dtype=float)
        options["truth"] = TRUTH_COLUMN
    if all(c in frame.columns for c in EFFECT_COLUMNS):
        effects = frame[list(EFFECT_COLUMNS)].reset_index(drop=True)
        options["effects"] = EFFECT_COLUMNS
        notes.append("The events carry the effect of an offer: the expected uplift (extra goals) uses it.")
    sample.options.update(options)
    events = frame.drop(columns=[c for c in (TRUTH_COLUMN, *EFFECT_COLUMNS) if c in frame.columns])
    k, n = sample.partitions
    notes.append(f"A history partitioned by visitor ({folder}): the tuner works on {sample.summary()}. Publish "
                 f"first rechecks the ruleset with a backtest of all {n} partitions.")
    feedback, feedback_note = None, None
    offers_folder = partitioned_folder(folder.parent / "offers") if folder.name == "events" else None
    if logging_spec_path in (None, "") or offers_folder is None:
        feedback_note = ("the history is partitioned and no logging ruleset was given (--logging-spec) to read "
                         "its offers with" if offers_folder is not None else
                         "the partitioned history has no offers/ folder of logged offers")
        notes.append(f"Publish cannot be checked against the log ({feedback_note}): it needs the override.")
    else:
        try:
            from .feedback import feedback as make_feedback

            wanted = set(sample.names)
            offers = pd.concat([read_partition(p, required=("visitor_id", "session_id", "ts"))[0]
                                for p in partitions(offers_folder) if p.name in wanted], ignore_index=True)
            logging_spec = load_spec(Path(logging_spec_path).expanduser())
            feedback = make_feedback(logging_spec, events, offers,
                                     scorer=scorer if logging_spec.uses_score else None)
            notes.append(f"Publish is checked against the log of the sampled partitions: {feedback.n:,} session "
                         f"stretches ({logging_spec.name}).")
        except Exception as exc:
            log.warning("tuning: no logged feedback: %s", exc)
            feedback_note = sentence_reason(exc)
            notes.append(f"Publish cannot be checked against the log ({feedback_note}): it needs the override.")
    table = EventTable(events)
    return TuningInputs(spec, scorer, None, table, truth, bundle_dir, version, metrics, notes, effects, feedback,
                        feedback_note, sample, partition)


def expected_value_choice(inputs: TuningInputs, *, value_of_accept: float = 1.0, cost_of_offer: float = 0.03,
                          respect_capacity: bool = True, spec: RuleSpec | None = None, objective: str = "accepts",
                          value_of_goal: float = 1.0) -> Any:
    """``decision_value.tune``: per rule, the wait and score threshold that maximise expected value.

    ``objective`` (``decision_value.OBJECTIVES``): ``"accepts"``: value = ``value_of_accept`` x expected
    accepted chats - ``cost_of_offer`` x offers; ``"uplift"``: the expected extra goals the offers cause
    (needs the inputs' effects: a generated world); ``"value"``: ``value_of_goal`` x extra goals +
    ``value_of_accept`` x accepts - ``cost_of_offer`` x offers. Every queue's busiest hour stays within its
    capacity. Returns ``decision_value.Tuned`` (``.choices``, ``.table()``, ``.value``, ``.result`` the
    exact backtest, with the expected uplift when the effects are known).
    """
    from .value import Economics, tune

    if inputs.scorer is None:
        raise ValueError("the expected-value choice needs a model (its scores are the expected accepts)")
    return tune(spec or inputs.spec, inputs.table, inputs.scorer,
                economics=Economics(value_of_accept, cost_of_offer, respect_capacity, value_of_goal),
                truth=inputs.truth, effects=inputs.effects, objective=objective)


@dataclass
class SideBySide:
    """Two rulesets backtested on the same history: the results and the comparison table."""

    names: tuple[str, str]
    results: tuple[Any, Any]  # backtest.BacktestResult
    table: pd.DataFrame


def side_by_side(current: RuleSpec, tuned: RuleSpec, inputs: TuningInputs,
                 names: tuple[str, str] = ("current", "tuned")) -> SideBySide:
    """The exact backtest of both rulesets and ``backtest.compare`` of the two."""
    from .backtest import backtest, compare

    a = backtest(current, inputs.table, inputs.scorer, truth=inputs.truth, effects=inputs.effects)
    b = backtest(tuned, inputs.table, inputs.scorer, truth=inputs.truth, effects=inputs.effects)
    return SideBySide(names, (a, b), compare(a, b, names))


def uplift_side_by_side(sbs: SideBySide, dimension: str = "page") -> pd.DataFrame | str:
    """Expected uplift of both rulesets by ``rule``, ``page`` or ``queue`` (``BacktestResult.uplift_by``): offers and
    expected extra goals of each, by the true P(accept) on a generated world (else the model's). When the effects
    of an offer are not known (real history), a sentence saying so instead of a table."""
    (a, b), (na, nb) = sbs.results, sbs.names
    probability = "truth" if a.metrics.get("true_expected_uplift") is not None else "model"
    try:
        left, right = a.uplift_by(dimension, probability), b.uplift_by(dimension, probability)
    except ValueError as exc:
        reason = sentence_reason(exc)
        return reason[:1].upper() + reason[1:] + "."
    out = pd.DataFrame({f"offers ({na})": left["offers"], f"offers ({nb})": right["offers"],
                        f"extra goals ({na})": left["expected_uplift"],
                        f"extra goals ({nb})": right["expected_uplift"]})
    out = out.fillna(0.0)
    out["change"] = out[f"extra goals ({nb})"] - out[f"extra goals ({na})"]
    out.attrs["probability"] = probability
    return out.rename_axis(dimension)


def plot_side_by_side(sbs: SideBySide) -> Any:
    """Offers and expected accepts by rule, and expected chats per hour of day by queue, for both rulesets."""
    from .explore import new_figure

    (a, b), (na, nb) = sbs.results, sbs.names
    fig = new_figure(12, 4.2)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    rules = list(dict.fromkeys([*a.per_rule.index, *b.per_rule.index]))
    y = np.arange(len(rules))
    for offset, res, name, color in ((-0.2, a, na, "#9db7d5"), (0.2, b, nb, "#1f4e8c")):
        per = res.per_rule.reindex(rules).fillna(0)
        ax1.barh(y + offset, per["offers"], height=0.4, color=color, label=name)
        col = "true_expected" if "true_expected" in per.columns else "expected_accepts" \
            if "expected_accepts" in per.columns else "accepted"
        ax2.barh(y + offset, per[col], height=0.4, color=color, label=name)
        ax2.set_xlabel({"true_expected": "true expected accepts", "expected_accepts": "expected accepts (model)",
                        "accepted": "accepted (recorded)"}[col])
    for ax in (ax1, ax2):
        ax.set_yticks(y, rules, fontsize=8)
        ax.invert_yaxis()
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    ax1.set_xlabel("offers")
    ax1.set_title("Offers by rule", fontsize=10)
    ax2.set_title("Expected accepts by rule", fontsize=10)
    for res, name, ls in ((a, na, "--"), (b, nb, "-")):
        qh = res.queue_hours
        if not len(qh):
            continue
        value = "expected_chats" if qh["expected_chats"].notna().any() else "accepted"
        profile = qh.assign(h=qh["hour"].dt.hour).groupby(["queue", "h"])[value].mean().unstack(0)
        for i, queue in enumerate(profile.columns):
            ax3.plot(profile.index, profile[queue], ls=ls, color=f"C{i}", label=f"{queue} ({name})")
    ax3.set_xlabel("hour of day (UTC)")
    ax3.set_ylabel("mean per hour")
    ax3.set_title("Expected chats by queue\nand hour of day", fontsize=10)
    ax3.legend(fontsize=7, ncol=2)
    ax3.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def dashboard(data_path: str | os.PathLike | None = None, bundle_path: str | os.PathLike | None = None, *,
              title: str = "Trigger tuner", logging_spec_path: str | os.PathLike | None = None) -> Any:
    """The tuner as a Voila app (``dashboards/triggers.ipynb``): history from `data_path` (``$PCRULES_EVENTS``),
    ruleset and model from the current bundle of `bundle_path` (``$PCRULES_BUNDLE``), Publish back to it,
    checked against the log read with `logging_spec_path` (``$PCRULES_LOGGING_SPEC``; a generated world knows
    its own).

    A problem (no data, a bundle that does not load) is shown as a sentence, never a traceback.
    """
    import ipywidgets as w

    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    data = data_path if data_path not in (None, "") else os.environ.get(EVENTS_ENV)
    bundle = bundle_path if bundle_path not in (None, "") else os.environ.get(BUNDLE_ENV)
    logging_spec = logging_spec_path if logging_spec_path not in (None, "") else os.environ.get(LOGGING_SPEC_ENV)
    operator = os.environ.get(OPERATOR_ENV) or None  # the signed-in operator (pcrules.ops.auth's proxy), if any
    if not data:
        from .sample import SAMPLE_PATH

        data = SAMPLE_PATH
    try:
        share = float(os.environ.get(SAMPLE_SHARE_ENV) or SAMPLE_SHARE)
        inputs = load_for_tuning(data, bundle or None, logging_spec_path=logging_spec or None, sample_share=share)
        tuner = inputs.tuner(title=title, operator=operator)
    except Exception as exc:
        log.exception("tuner dashboard: could not start")
        where = f" (history {data}, bundle {bundle or 'none'})"
        box = w.HTML(note_html(html.escape(f"The tuner could not start: {sentence_reason(exc)}{where}. Set "
                                           f"{EVENTS_ENV} to an events file or a folder of history, and {BUNDLE_ENV} "
                                           "to a published bundle folder.", quote=True), error=True))
        box.add_class("pcrules-message")
        return box
    if inputs.notes:
        tuner.root.children = (w.HTML("<div class='pcrules-notes' style='font-size:12px;color:#555'>"
                                      + "<br>".join(html.escape(n, quote=True) for n in inputs.notes) + "</div>"),
                               *tuner.root.children)
    return tuner
