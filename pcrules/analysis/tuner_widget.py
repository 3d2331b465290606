"""The trigger tuner's widget: sliders, toggles and capacity fields over a tuner model.

The model is :class:`pcrules.analysis.tuner.TriggerModel`.

A results panel and a queue-load chart (matplotlib, rendered to a PNG: works offline and in Voila) redrawn on
every change; a Publish button that validates the tuned ruleset and asks first (a bundle is live as soon as it
is written): what changes, the estimates of the live and the tuned ruleset and the guardrail's verdict, then
"Confirm publish" or "Cancel". The header names the live bundle, and follows a publish. A free-text field
(a capacity, the name) is checked as it is typed: a bad value is named next to it, never used, and Publish and
Check are off until it is corrected. Every error reaches the person as a sentence in the widget, never as a
traceback.
The figures are the model's (the exact backtest of the tuned ruleset); see :mod:`pcrules.analysis.tuner`.

Given the logged feedback (``feedback=``: what the logging ruleset showed, with its probabilities), the tuner
also checks the tuned ruleset against the log (:mod:`pcrules.analysis.guardrail`), on demand ("Check against
the log") and at Publish, never on every change (it bootstraps): the off-policy estimate of the current and the
tuned ruleset with its interval and support diagnostics, next to the model's own. Publish refuses what the
guardrail refuses unless the override is ticked; either way the guardrail's figures (and an override: who,
when, what was overridden) go into the bundle's manifest, ``metrics["guardrail"]``.

Publish is an operator's action: ``operator=`` (the dashboard's signed-in operator, :mod:`pcrules.ops.auth`; else
the account running the kernel) is recorded in the manifest's audit (:mod:`pcrules.bundle`), with the version it
replaced and the override, if any.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import difflib
import getpass
import html
import io
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..core.decision import Reason
from ..core.spec import RuleSpec, load_spec
from ..errors import SpecError
from .figures import BLOCK_REASONS
from .guardrail import MAX_UNSUPPORTED, GuardrailVerdict, check, unchecked
from .judge import ACTIONS
from .table import EventTable
from .tuner import (
    InvalidSetting,
    RuleSetting,
    Settings,
    TriggerModel,
    TunerResult,
    parse_capacity,
    tunable_knobs,
)
from .value import RuleChoice

__all__ = ["Tuner", "ruleset_diff", "spec_text", "sentence_reason", "note_html", "OVERRIDE_LABEL"]

OVERRIDE_LABEL = "Publish anyway: I accept that the log does not support this ruleset"

log = logging.getLogger("pcrules.tuning")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):,.{digits}f}"


def _uplift_text(goals: float | None, itt: float | None) -> str:
    """Expected extra goals and the ITT per eligible visitor, or "not available" (never a 0 that means nothing)."""
    if goals is None:
        return '<span class="pcrules-na" title="no effects of an offer on the goals are known">not available</span>'
    return f"{goals:+,.1f}" + ("" if itt is None else f' <span style="font-size:11px">({100 * itt:+.2f} pp ITT)</span>')


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f} %"


def _plain(value: Any) -> Any:
    """JSON-safe plain Python (for bundle metrics)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _knobs_text(s: RuleSetting, tunable: bool) -> str:
    if not s.on:
        return "off"
    if not tunable:
        return "on (as written)"
    text = f"wait {_fmt(s.wait_s, 0) if float(s.wait_s).is_integer() else _fmt(s.wait_s, 3)} s"
    return text + (f", score ≥ {s.threshold:g}" if s.uses_score else ", no score condition")


def spec_text(spec: RuleSpec) -> str:
    """A ruleset as YAML with sorted keys (what the diff compares: key order is no change)."""
    return yaml.safe_dump(_plain(dict(spec.source)), sort_keys=True, allow_unicode=True, default_flow_style=False)


def ruleset_diff(current: RuleSpec, tuned: RuleSpec) -> str:
    """A unified diff of two rulesets' YAML (sorted keys); empty when they are the same."""
    a, b = spec_text(current).splitlines(keepends=True), spec_text(tuned).splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, fromfile=f"current ({current.name} {current.version})",
                                        tofile=f"tuned ({tuned.name} {tuned.version})"))


class Tuner:
    """The interactive tuner over a :class:`TriggerModel` (see the module docstring).

    ``bundle_dir``: where Publish writes bundles (``published/``); its current
    bundle, when there is one, is what the diff compares with. ``current``:
    the ruleset to compare with otherwise (default: ``spec``). The widget is
    ``.root``; a notebook displays the Tuner itself.

    ``feedback``: the logged history as bandit feedback (``analysis.feedback.Feedback``, or an
    ``analysis.History`` to build it from, see ``analysis.history_feedback``). ``guardrail``: whether Publish
    checks the tuned ruleset against the log (:meth:`check`); by default when feedback is given. With
    ``guardrail=True`` and no feedback, Publish says the ruleset cannot be checked and needs the override
    (``feedback_note`` says why there is none). ``max_unsupported``, ``n_boot``: the guardrail's.

    Tests and scripts drive it without a browser: set ``controls[rule]["wait"].value``
    (or call :meth:`set`), read :attr:`result`, call :meth:`check` and :meth:`on_publish` (which publishes
    without asking; the buttons' path is :meth:`ask_publish` then :meth:`confirm_publish` or
    :meth:`cancel_publish`), ``override.value = True`` to publish what the guardrail refuses.
    """

    def __init__(self, spec: RuleSpec | str | Mapping[str, Any], events: pd.DataFrame | EventTable,
                 scorer: Any = None, *, truth: str | np.ndarray | pd.Series | None = None, effects: Any = None,
                 bundle_dir: str | os.PathLike | None = None, current: RuleSpec | None = None,
                 model_metrics: Mapping[str, Any] | None = None, chart: bool = True, title: str | None = None,
                 model: TriggerModel | None = None, feedback: Any = None, guardrail: bool | None = None,
                 feedback_note: str | None = None, max_unsupported: float = MAX_UNSUPPORTED, n_boot: int = 500,
                 operator: str | None = None):
        import ipywidgets as w

        self.w = w
        self.model = model if model is not None else TriggerModel(spec, events, scorer, truth=truth, effects=effects)
        self.spec = self.model.spec
        self.scorer = self.model.scorer
        self.bundle_dir = Path(bundle_dir).expanduser() if bundle_dir not in (None, "") else None
        self.operator = operator.strip() if operator and operator.strip() else _user()  # who Publish records
        self.current = current or self.spec
        self.current_version: str | None = None
        self.model_metrics = dict(model_metrics or {})
        self.result: TunerResult | None = None
        self.last_error: str | None = None
        self.published: list[Path] = []
        self.timings: collections.deque[float] = collections.deque(maxlen=1000)  # seconds per refresh
        self._hold = 0
        self._chart_on = chart
        self._figure: dict[str, Any] | None = None
        self.chart_draws = 0  # full draws of the chart's axes (the rest only redraw its lines)
        self.feedback, self.feedback_note = _feedback_of(feedback, feedback_note)
        self.guardrail = bool(guardrail) if guardrail is not None else feedback is not None
        self.max_unsupported = max_unsupported
        self.n_boot = n_boot
        self.verdict: GuardrailVerdict | None = None  # the last check against the log ...
        self._verdict_key: tuple[str, str] | None = None  # ... of (tuned, current) as YAML
        self._verdict_settings: Settings | None = None
        self._load_current()
        # The live ruleset's knobs, for its figures next to the tuned one's (None: it is not the tuner's ruleset).
        self._current_settings: Settings | None = \
            self.model.initial if spec_text(self.current) == spec_text(self.spec) else None

        init = self.model.initial
        style = {"description_width": "initial"}
        waits = [s.wait_s for n, s in init.rules.items() if self.model.tunable[n]]
        wait_max = float(max([900.0] + [math.ceil(x / 60.0) * 60.0 for x in waits]))
        scores = self.model.score[self.model.present]
        top = float(np.quantile(scores, 0.995)) if len(scores) else 0.5
        thresholds = [s.threshold for s in init.rules.values() if s.threshold]
        steps = [0.05, math.ceil(top * 1.25 * 20) / 20.0] + [math.ceil(t * 20) / 20.0 for t in thresholds]
        thr_max = min(1.0, max(steps))
        self.controls: dict[str, dict[str, Any]] = {}
        rows = []
        for rule in self.spec.rules:
            s = init.rules[rule.name]
            tunable = self.model.tunable[rule.name]
            on = w.Checkbox(value=True, description=rule.name, indent=False, layout=w.Layout(width="210px"))
            wait = w.FloatSlider(value=s.wait_s if tunable else 0.0, min=0.0, max=wait_max, step=5.0,
                                 description="wait (s)", readout_format=".0f", continuous_update=False,
                                 disabled=not tunable, style=style, layout=w.Layout(width="330px"))
            threshold = w.FloatSlider(value=s.threshold or 0.0, min=0.0, max=thr_max, step=0.001,
                                      description="score ≥", readout_format=".3f", continuous_update=False,
                                      disabled=not tunable or self.scorer is None, style=style,
                                      layout=w.Layout(width="330px"))
            info = w.HTML(f'<span class="pcrules-rule-info">queue {_esc(rule.queue)}'
                          + ("" if tunable else " · kept as written (only on/off)")
                          + ("" if self.scorer is not None or not tunable else " · no model: no score threshold")
                          + "</span>")
            for key, widget in (("on", on), ("wait", wait), ("threshold", threshold)):
                widget.add_class(f"pcrules-{key}")
                widget.add_class(f"pcrules-rule-{_css(rule.name)}-{key}")
                widget.observe(self.on_change, names="value")
            self.controls[rule.name] = {"on": on, "wait": wait, "threshold": threshold}
            rows.append(w.HBox([on, wait, threshold, info], layout=w.Layout(align_items="center",
                                                                             flex_flow="row wrap")))
        # Free-text fields send every keystroke (continuous_update) so that a bad value is named next to its field
        # at once, not when the field loses focus; each has its own problem line below it.
        self.capacity: dict[str, Any] = {}
        self.problems: dict[str, Any] = {}  # field key ("capacity:<queue>", "name") -> its problem line
        self._valid_capacity: dict[str, float | None] = dict(init.capacities)  # what the figures use meanwhile
        caps = []
        for q in self.model.queue_names:
            cap = init.capacities[q]
            text = w.Text(value="" if cap is None else _fmt_number(cap), description=f"{q} capacity / h",
                          placeholder="none", continuous_update=True, style=style, layout=w.Layout(width="230px"))
            text.add_class("pcrules-capacity")
            text.add_class(f"pcrules-capacity-{_css(q)}")
            text.observe(self.on_change, names="value")
            self.capacity[q] = text
            caps.append(w.VBox([text, self._problem_line(f"capacity:{q}")], layout=w.Layout(width="240px")))
        self.name = w.Text(value=self.spec.name, description="Ruleset name", continuous_update=True, style=style,
                           layout=w.Layout(width="330px"))
        self.name.add_class("pcrules-name")
        self.name.observe(self.on_name, names="value")
        self.publish_button = w.Button(description="Publish", icon="upload", button_style="primary",
                                       tooltip="Validate the tuned ruleset and show what changes and its estimates; "
                                               "it is published only when you confirm")
        self.publish_button.add_class("pcrules-publish")
        self.publish_button.on_click(self.ask_publish)
        self.reset_button = w.Button(description="Reset", icon="undo",
                                     tooltip="Back to the live ruleset's knobs")
        self.reset_button.add_class("pcrules-reset")
        self.reset_button.on_click(self.on_reset)
        self.check_button = w.Button(description="Check against the log", icon="balance-scale",
                                     layout=w.Layout(width="auto"),
                                     tooltip="Estimate the current and the tuned ruleset from the logged offers and "
                                             "their probabilities (off-policy), with intervals and support")
        self.check_button.add_class("pcrules-check")
        self.check_button.on_click(self.on_check)
        self.override = w.Checkbox(value=False, description=OVERRIDE_LABEL, indent=False,
                                   layout=w.Layout(width="auto"))
        self.override.add_class("pcrules-override")
        self.guardrail_html = w.HTML(self._guardrail_intro())
        self.guardrail_html.add_class("pcrules-guardrail-panel")
        self.message = w.HTML()
        self.message.add_class("pcrules-message")
        self.metrics_html = w.HTML()
        self.metrics_html.add_class("pcrules-metrics")
        self.chart = w.Image(format="png", layout=w.Layout(width="100%", max_width="900px", height="auto"))
        self.chart.add_class("pcrules-chart")
        self.diff_html = w.HTML()
        self.diff_html.add_class("pcrules-diff")
        self.confirmation = self._confirmation_panel()
        self._pending: _Candidate | None = None  # what "Confirm publish" writes, while the panel shows it
        self._withdrawn = False  # a knob closed the panel: the next redraw says so
        self.override.observe(self._withdraw, names="value")  # the panel said whether the refusal is overridden
        self.title = title
        self.header = w.HTML(self._header_html())
        self.header.add_class("pcrules-header")
        self.root = w.VBox([
            w.HTML(_FIELD_STYLE),
            self.header,
            w.HTML('<b>Rules</b> — wait: seconds on the page before the rule may fire; score ≥: the model\'s '
                   'P(accept) it needs (0: none)'),
            *rows,
            w.HTML("<b>Queues</b> — capacity: chats the queue's agents can take per hour"),
            w.HBox(caps, layout=w.Layout(flex_flow="row wrap")),
            w.HBox([w.VBox([self.name, self._problem_line("name")]), self.publish_button, self.reset_button],
                   layout=w.Layout(align_items="flex-start")),
            *([w.HBox([self.check_button, self.override], layout=w.Layout(align_items="center"))]
              if self.guardrail or self.feedback is not None else []),
            self.confirmation,
            self.message,
            self.guardrail_html,
            self.metrics_html,
            self.chart,
            self.diff_html,
        ])
        self.root.add_class("pcrules-tuner")
        self.refresh()

    # -- plumbing -----------------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:  # a notebook displays the Tuner as its widget
        return self.root._repr_mimebundle_(**kwargs)

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike, events: pd.DataFrame | EventTable, **kwargs: Any) -> Tuner:
        """A tuner over the current bundle of `bundle_dir` (its ruleset and model), publishing back to it."""
        from ..bundle import load_bundle

        bundle = load_bundle(Path(bundle_dir) / "current")
        kwargs.setdefault("model_metrics", dict(bundle.metrics or {}))
        return cls(bundle.spec, events, bundle.scorer, bundle_dir=bundle_dir, current=bundle.spec, **kwargs)

    def _load_current(self) -> None:
        if self.bundle_dir is None:
            return
        from ..bundle import current_version, load_bundle

        try:
            version = current_version(self.bundle_dir)
            if version is None:
                return
            bundle = load_bundle(self.bundle_dir / "current")
        except Exception as exc:  # the diff falls back to the ruleset the tuner started from
            log.warning("tuner: the current bundle of %s could not be read: %s", self.bundle_dir, exc)
            return
        self.current = bundle.spec
        self.current_version = bundle.version

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Change several knobs and recompute once, at the end."""
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1
            if not self._hold:
                self.refresh()

    def set(self, rule: str | None = None, *, on: bool | None = None, wait_s: float | None = None,
            threshold: float | None = None, capacity: Mapping[str, Any] | None = None) -> TunerResult | None:
        """Set knobs as a person would (through the widgets) and recompute once."""
        with self.hold():
            if rule is not None:
                if rule not in self.controls:
                    raise KeyError(rule)
                c = self.controls[rule]
                if on is not None:
                    c["on"].value = on
                if wait_s is not None:
                    c["wait"].value = wait_s
                if threshold is not None:
                    c["threshold"].value = threshold
            for q, value in (capacity or {}).items():
                self.capacity[q].value = "" if value is None else str(value)
        return self.result

    def apply(self, settings: Settings | Sequence[RuleChoice]) -> TunerResult | None:
        """Put the knobs at `settings` (or at ``decision_value`` choices) and recompute once."""
        if not isinstance(settings, Settings):
            settings = self.model.settings_from(settings, self.settings_or_initial())
        with self.hold():
            for name, s in settings.rules.items():
                c = self.controls[name]
                c["on"].value = bool(s.on)
                if self.model.tunable[name]:
                    wait, threshold = float(s.wait_s), float(s.threshold or 0.0)
                    if wait > c["wait"].max:  # widen the slider rather than clamp the value
                        c["wait"].max = float(math.ceil(wait / 60.0) * 60.0)
                    if threshold > c["threshold"].max:
                        c["threshold"].max = min(1.0, math.ceil(threshold * 20.0) / 20.0)
                    c["wait"].value = wait
                    c["threshold"].value = threshold
            for q, cap in settings.capacities.items():
                self.capacity[q].value = "" if cap is None else _fmt_number(cap)
        return self.result

    def settings_or_initial(self) -> Settings:
        try:
            return self.read_settings()
        except InvalidSetting:
            return self.model.initial

    def read_settings(self) -> Settings:
        """The knobs as the widgets hold them, validated in the kernel (widget values are user input)."""
        caps = {q: parse_capacity(text.value, q) for q, text in self.capacity.items()}
        name = self.name.value
        if not isinstance(name, str) or not name.strip():
            raise InvalidSetting("The ruleset needs a name.")
        return self.model.check(Settings(self._rule_settings(), caps, name.strip()))

    def _rule_settings(self) -> dict[str, RuleSetting]:
        out = {}
        for name, c in self.controls.items():
            threshold = c["threshold"].value
            out[name] = RuleSetting(c["on"].value, c["wait"].value, threshold if threshold else None)
        return out

    def _figure_settings(self) -> Settings:
        """The knobs the figures show: a capacity being corrected keeps its last valid value (never the bad one)."""
        name = self.name.value.strip() if isinstance(self.name.value, str) else ""
        return self.model.check(Settings(self._rule_settings(), dict(self._valid_capacity), name or None))

    # -- free-text fields, checked as typed ----------------------------------------------------------------
    def _problem_line(self, key: str) -> Any:
        line = self.w.HTML()
        line.add_class("pcrules-problem")
        line.add_class(f"pcrules-problem-{_css(key)}")
        self.problems[key] = line
        return line

    def check_fields(self) -> list[str]:
        """Check every free-text field as it stands; show each problem next to its field, switch Publish and Check
        off while there is one, and return the problems (sentences). A valid capacity is remembered for the
        figures."""
        problems = []
        for q, text in self.capacity.items():
            problem = None
            try:
                self._valid_capacity[q] = parse_capacity(text.value, q)
            except InvalidSetting as exc:
                kept = self._valid_capacity[q]
                problem = f"{exc} The figures keep {'none' if kept is None else _fmt_number(kept)} meanwhile."
            problems += self._show_problem(f"capacity:{q}", text, problem)
        problems += self._show_problem("name", self.name, self._name_problem(self.name.value))
        self.publish_button.disabled = self.check_button.disabled = bool(problems)
        return problems

    def _show_problem(self, key: str, field: Any, problem: str | None) -> list[str]:
        self.problems[key].value = "" if problem is None else note_html(_esc(problem), error=True)
        if problem is None:
            field.remove_class("pcrules-invalid")
            return []
        field.add_class("pcrules-invalid")
        return [problem]

    def _name_problem(self, name: Any) -> str | None:
        """Why the ruleset name cannot be published (the ruleset loader's own rule), or None."""
        if not isinstance(name, str) or not name.strip():
            return "The ruleset needs a name."
        try:
            load_spec({**self.spec.source, "name": name.strip()})
        except SpecError as exc:
            said = [p.removeprefix("name:").strip() for p in exc.problems if p.startswith("name:")]
            return f"Ruleset name: {'; '.join(said)}." if said else None
        return None

    def _say_problems(self, problems: Sequence[str]) -> None:
        """The fields' problems also as the widget's message (next to the buttons they switch off)."""
        if problems:
            self._error(" ".join(problems) + " Publish and Check are off until it is corrected.")
        else:
            self.last_error = None
            self.message.value = ""

    # -- handlers -------------------------------------------------------------------------------------------
    def on_change(self, change: Any = None) -> None:
        """A knob moved: recompute and redraw (the widgets' observer)."""
        if self._withdraw():
            self._withdrawn = True  # said when the figures are redrawn (at the end of a hold)
        if self._hold:
            return
        self.refresh()

    def on_name(self, change: Any = None) -> None:
        """The ruleset name changed: checked as typed (it changes no figure)."""
        self._withdraw()
        self._say_problems(self.check_fields())

    def refresh(self) -> TunerResult | None:
        import time

        started = time.perf_counter()
        try:
            problems = self.check_fields()
            settings = self._figure_settings()
            result = self.model.evaluate(settings)
        except InvalidSetting as exc:
            self._error(str(exc))
            return None
        except Exception as exc:  # never a traceback in the widget
            log.exception("tuner: recompute failed")
            self._error(f"The figures could not be recomputed ({sentence_reason(exc)}).")
            return None
        self.result = result
        self._say_problems(problems)
        if self._withdrawn and not problems:
            self.message.value = note_html(_WITHDRAWN)
        self._withdrawn = False
        if self.verdict is not None:  # cheap: the last check is shown or said stale, never recomputed here
            self.guardrail_html.value = self.verdict.html() if self._verdict_settings == settings else \
                note_html(_STALE)
        self.metrics_html.value = self.metrics_text(result)
        if self._chart_on:
            try:
                self.chart.value = self.chart_png(result)
            except Exception as exc:
                log.exception("tuner: chart failed")
                self._error(f"The queue chart could not be drawn ({sentence_reason(exc)}).")
        self.timings.append(time.perf_counter() - started)
        return result

    def on_check(self, button: Any = None) -> GuardrailVerdict | None:
        """The "Check against the log" button: :meth:`check` the knobs' ruleset, shown in the panel."""
        return self.check()

    def check(self) -> GuardrailVerdict | None:
        """The tuned ruleset (the knobs as they are) against the current one, estimated from the log
        (:func:`pcrules.analysis.guardrail.check`), shown in the widget; None when the knobs are invalid (the
        sentence is shown). A check that fails is a refusal whose reason says why."""
        built = self._tuned("checked")
        return None if built is None else self._verdict(*built)

    def _tuned(self, verb: str) -> tuple[Settings, RuleSpec] | None:
        """(settings, the tuned ruleset) from the knobs; None with the sentence shown ("Nothing was <verb>: ...")."""
        try:
            settings = self.read_settings()
            return settings, self.model.spec_for(settings)
        except InvalidSetting as exc:
            return self._error(f"Nothing was {verb}: {exc}")
        except SpecError as exc:
            return self._error(f"Nothing was {verb}: the tuned ruleset is not valid — "
                               + "; ".join(_sentence_part(p) for p in exc.problems) + ".")
        except Exception as exc:
            log.exception("tuner: validation failed")
            return self._error(f"Nothing was {verb}: the tuned ruleset could not be built ({sentence_reason(exc)}).")

    def _verdict(self, settings: Settings, tuned: RuleSpec) -> GuardrailVerdict:
        key = (spec_text(tuned), spec_text(self.current))
        if self.verdict is None or self._verdict_key != key:
            scorer = self.scorer if self.scorer is not None and not isinstance(self.scorer, (np.ndarray, pd.Series)) \
                else None
            try:
                verdict = check(self.feedback, tuned, self.current, scorer, max_unsupported=self.max_unsupported,
                                n_boot=self.n_boot)
            except Exception as exc:  # a sentence, and a refusal: what cannot be checked is not shown to be better
                log.exception("tuner: the check against the log failed")
                verdict = unchecked(f"the check against the log failed ({sentence_reason(exc)})", tuned,
                                    self.current, max_unsupported=self.max_unsupported)
            if self.feedback is None and self.feedback_note:
                verdict = dataclasses.replace(verdict, notes=(self.feedback_note, *verdict.notes))
            self.verdict, self._verdict_key = verdict, key
        self._verdict_settings = settings
        self.guardrail_html.value = self.verdict.html()
        return self.verdict

    def _guardrail_intro(self) -> str:
        if not self.guardrail and self.feedback is None:
            return ""
        if self.feedback is None:
            why = f" ({_esc(self.feedback_note)})" if self.feedback_note else ""
            return note_html(f"No logged feedback{why}: the tuned ruleset cannot be checked against the log, and "
                             f"Publish needs “{_esc(OVERRIDE_LABEL)}”.")
        fb = self.feedback
        return note_html(f"The log: {fb.n:,} session stretches of ruleset <code>{_esc(fb.spec.name)}</code>, each "
                         "with the probability it gave its choice. “Check against the log” estimates the current "
                         "and the tuned ruleset from it (Publish checks too).")

    def on_reset(self, button: Any = None) -> None:
        try:
            live = self._current_settings  # the live ruleset's knobs: after a Publish, the one just published
            self.name.value = self.spec.name if live is None else self.current.name
            self.apply(self.model.initial if live is None else live)
            self.diff_html.value = ""
        except Exception as exc:
            log.exception("tuner: reset failed")
            self._error(f"The knobs could not be reset ({sentence_reason(exc)}).")

    # -- publishing: Publish asks, "Confirm publish" writes --------------------------------------------------
    def _confirmation_panel(self) -> Any:
        """The question Publish asks: hidden until then; its text is :meth:`confirmation_text`."""
        w = self.w
        self.confirmation_html = w.HTML()
        self.confirm_button = w.Button(description="Confirm publish", icon="check", button_style="danger",
                                       tooltip="Make this ruleset the live bundle now")
        self.confirm_button.add_class("pcrules-confirm")
        self.confirm_button.on_click(self.confirm_publish)
        self.cancel_button = w.Button(description="Cancel", icon="times", tooltip="Close this; nothing is published")
        self.cancel_button.add_class("pcrules-cancel")
        self.cancel_button.on_click(self.cancel_publish)
        panel = w.VBox([self.confirmation_html, w.HBox([self.confirm_button, self.cancel_button])],
                       layout=w.Layout(display="none", border="2px solid #1f4e8c", padding="6px", margin="6px 0"))
        panel.add_class("pcrules-confirmation")
        return panel

    def ask_publish(self, button: Any = None) -> None:
        """The Publish button: validate the knobs' ruleset and ask first (publishing makes it live at once), showing
        what changes, its estimates and the guardrail's verdict; nothing is written until "Confirm publish"."""
        self._withdraw()
        candidate = self._candidate()
        if candidate is None:
            return
        if self.model.sample is not None:  # a sample of a partitioned history: the full backtest first
            try:
                rc = self.recheck(candidate.settings, candidate.tuned)
            except Exception as exc:
                log.exception("tuner: recheck failed")
                return self._error(f"Nothing was published: the full backtest that checks the sample's figures "
                                   f"failed ({sentence_reason(exc)}).")
            candidate = dataclasses.replace(candidate, recheck=rc)
        self.confirmation_html.value = self.confirmation_text(candidate)
        self._pending = candidate
        self.confirmation.layout.display = None
        self.message.value = ""

    def confirm_publish(self, button: Any = None) -> Path | None:
        """The "Confirm publish" button: publish what the question showed; the new bundle's directory, or None."""
        candidate = self._pending
        self._withdraw()
        if candidate is None:
            return self._error("Nothing was published: there is nothing to confirm (press Publish first).")
        return self._write(candidate)

    def cancel_publish(self, button: Any = None) -> None:
        """The "Cancel" button: close the question, nothing written."""
        self._withdraw()
        self.message.value = note_html("Publishing cancelled: nothing was written.")

    def _withdraw(self, change: Any = None) -> bool:
        """Close the question: what it showed no longer holds (a knob or the override changed) or was answered."""
        if self._pending is None:
            return False
        self._pending = None
        self.confirmation.layout.display = "none"
        return True

    def on_publish(self, button: Any = None) -> Path | None:
        """Validate the tuned ruleset and publish it at once, without asking (for scripts and notebook 03, whose
        ``publish`` parameter is the confirmation; the button asks first, :meth:`ask_publish`).

        Returns the new bundle's directory, or None (the reason is shown in the widget)."""
        self._withdraw()
        candidate = self._candidate()
        return None if candidate is None else self._write(candidate)

    def _candidate(self) -> _Candidate | None:
        """The knobs' ruleset if it may be published (valid, somewhere to go, changed, supported by the log or
        overridden); None with the reason shown."""
        self.diff_html.value = ""
        built = self._tuned("published")
        if built is None:
            return None
        settings, tuned = built
        if self.bundle_dir is None:
            return self._error("Nothing was published: the tuner has no bundle folder to publish to "
                               "(start it with bundle_dir=..., or set PCRULES_BUNDLE for the dashboard).")
        model = None
        if self.scorer is not None:
            if not hasattr(self.scorer, "to_dict"):
                return self._error("Nothing was published: the scores come from an array, not from a model "
                                   "that can be published with the ruleset.")
            model = self.scorer
        if tuned.version == self.current.version and tuned.name == self.current.name and \
                self.current_version is not None:
            self.message.value = note_html(f"The tuned ruleset is the same as the current one ({_esc(tuned.name)} "
                                           f"{_esc(tuned.version)}): nothing to publish.")
            return None
        verdict = self._verdict(settings, tuned) if self.guardrail else None
        overridden = verdict is not None and not verdict.ok
        if overridden and not self.override.value:
            assert verdict is not None
            return self._error("Nothing was published: the log does not support this ruleset — "
                               + "; ".join(verdict.reasons)
                               + f". Tick “{OVERRIDE_LABEL}” to publish it regardless (the override is recorded "
                               "in the bundle).")
        return _Candidate(settings, tuned, model, verdict, overridden)

    def _evaluate(self, settings: Settings) -> TunerResult:
        """The figures of `settings`: the ones shown when they are these, else computed."""
        if self.result is not None and self.result.settings == settings:
            return self.result
        return self.model.evaluate(settings)

    def _write(self, candidate: _Candidate) -> Path | None:
        """Publish `candidate` as the new current bundle; its directory, or None with the reason shown."""
        from ..bundle import publish

        assert self.bundle_dir is not None  # _candidate refuses a tuner with nowhere to publish
        settings, tuned, verdict = candidate.settings, candidate.tuned, candidate.verdict
        try:
            result = self._evaluate(settings)
            metrics = dict(self.model_metrics)
            record = _plain(self._guardrail_record(verdict, candidate.overridden))
            metrics["guardrail"] = record
            metrics["tuning"] = _plain({
                "from_ruleset": {"name": self.current.name, "version": self.current.version},
                "bundle_before": self.current_version,
                "backtest": {k: result.metrics[k] for k in ("events", "sessions", "offers", "expected_accepts",
                                                            "expected_accept_rate", "holdout", "accepted",
                                                            "declined", "expired")},
                "queues": result.metrics["queues"],
            })
            if candidate.recheck is not None:
                rc = candidate.recheck
                metrics["tuning"]["sample"] = _plain({"partitions": list(self.model.sample.partitions),
                                                      "scaled": rc.scaled.to_dict(orient="index")})
                metrics["tuning"]["recheck"] = _plain({
                    "backtest": {k: rc.full.get(k) for k in rc.inside}, "inside": rc.inside,
                    "outside": rc.outside})
            override = record.get("override")
            path = publish(tuned, candidate.model, self.bundle_dir, metrics=metrics, operator=self.operator,
                           via="tuner", override=None if not override else
                           {k: override[k] for k in ("by", "at", "reasons") if k in override})
        except SpecError as exc:
            return self._error("Nothing was published: the tuned ruleset is not valid — "
                               + "; ".join(_sentence_part(p) for p in exc.problems) + ".")
        except Exception as exc:  # BundleError, OSError (a folder that cannot be written) ...
            log.exception("tuner: publish failed")
            return self._error(f"Publishing failed, nothing was published: {sentence_reason(exc)}.")
        self.published.append(path)
        self.diff_html.value = self.diff_text(tuned, settings)  # what was published, against what it replaced
        before = self.current
        self.current, self.current_version, self._current_settings = tuned, path.name, settings
        self.header.value = self._header_html()
        self.last_error = None
        self.override.value = False  # an override is for one publish
        self._verdict_settings = None  # the check shown stays until a knob moves; it was against the old current
        checked = "" if verdict is None else \
            (" The log supports it." if verdict.ok else
             f" The guardrail's refusal was overridden by {_esc(metrics['guardrail']['override']['by'])} "
             f"(recorded in the bundle): {_esc('; '.join(verdict.reasons))}.")
        self.message.value = note_html(f"Published ruleset {_esc(tuned.name)} (version {_esc(tuned.version)}) as "
                                       f"bundle {_esc(path.name)} in {_esc(self.bundle_dir)}; it is now current "
                                       f"(it replaced {_esc(before.name)} {_esc(before.version)}), published by "
                                       f"{_esc(self.operator)}.{checked}",
                                       ok=True)
        return path

    def _guardrail_record(self, verdict: GuardrailVerdict | None, overridden: bool) -> dict[str, Any]:
        """What the manifest keeps of the check: its figures and reasons, and an override's who and when."""
        if verdict is None:
            why = "" if self.feedback is not None else " (it was given no logged feedback)"
            return {"checked": False, "why": f"the tuner's guardrail was off{why}: Publish did not check the "
                                             "ruleset against the log"}
        record = {"checked": verdict.checked, **verdict.to_dict(), "override": None}
        if overridden:
            record["override"] = {"by": self.operator, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                  "label": OVERRIDE_LABEL, "reasons": list(verdict.reasons),
                                  "figures": verdict.figures()}
        return record

    def _error(self, text: str) -> None:
        self.last_error = text
        self.message.value = note_html(_esc(text), error=True)

    # -- rendering ----------------------------------------------------------------------------------------
    def _header_html(self) -> str:
        """The title line: the live ruleset and bundle (redrawn after a publish) and the history."""
        m = self.model
        ts = m.table.ts
        span = ""
        if m.table.n:
            lo, hi = pd.to_datetime([np.nanmin(ts), np.nanmax(ts)], unit="s", utc=True)
            span = f", {lo:%Y-%m-%d} to {hi:%Y-%m-%d} (UTC)"
        model = "a model" if self.scorer is not None else "no model (score thresholds are off)"
        live, bundle = "", ", no bundle published yet" if self.bundle_dir is not None else ""
        if self.current_version:
            version = _esc(self.current_version)
            live, bundle = "live: ", f', bundle <code class="pcrules-bundle-version">{version}</code>'
        on = f"backtest on {m.table.n:,} events, {m.n_sessions:,} sessions{_esc(span)}"
        if m.sample is not None:
            k, n = m.sample.partitions
            on = (f'backtest on <span class="pcrules-sample-share" data-share="{m.sample.share:.6g}">a sample of '
                  f"{m.sample.share:.0%} of the visitors</span> ({k} of {n} partitions: {m.table.n:,} of "
                  f"{m.sample.total_events:,} events, {m.n_sessions:,} sessions{_esc(span)}; totals scaled to the "
                  f"whole history with {m.sample.level:.0%} intervals; Publish rechecks on all {n} partitions)")
        return (f'<div class="pcrules-title"><b>{_esc(self.title or "Trigger tuner")}</b> — {live}ruleset '
                f"<code>{_esc(self.current.name)}</code> {_esc(self.current.version)}{bundle}"
                f"; {on}; {model}.</div>")

    def metrics_text(self, r: TunerResult) -> str:
        """The results panel (HTML): headline figures, by rule, by queue, blocked reasons."""
        m = r.metrics

        def cell(key: str, value: str, label: str) -> str:
            return (f'<div class="pcrules-figure"><div class="pcrules-figure-label">{_esc(label)}</div>'
                    f'<div class="pcrules-figure-value" data-metric="{_esc(key)}">{value}</div></div>')

        head = [
            cell("offers", _fmt(m["offers"]), "offers"),
            cell("expected_accepts", _fmt(m["expected_accepts"]), "expected accepts (model)"),
            cell("expected_accept_rate", _pct(m["expected_accept_rate"]), "expected accept rate"),
            cell("accepted", _fmt(m["accepted"]), "accepted (recorded answers)"),
            cell("recorded_accept_rate", _pct(m["recorded_accept_rate"]), "recorded accept rate"),
            cell("holdout", _fmt(m["holdout"]), "holdout (withheld)"),
            cell("offer_rate_per_session", _pct(m["offer_rate_per_session"]), "sessions offered"),
        ]
        if "true_expected_accepts" in m:
            head.insert(3, cell("true_expected_accepts", _fmt(m["true_expected_accepts"]), "true expected accepts"))
        head.append(cell("expected_uplift", _uplift_text(m.get("expected_uplift"), m.get("expected_uplift_itt")),
                         "expected uplift (model): extra goals"))
        if m.get("true_expected_accepts") is not None:
            head.append(cell("true_expected_uplift", _uplift_text(m.get("true_expected_uplift"),
                                                                  m.get("true_expected_uplift_itt")),
                             "true expected uplift: extra goals"))
        style = ("<style>.pcrules-figures{display:flex;flex-wrap:wrap;gap:6px 14px;margin:4px 0}"
                 ".pcrules-figure{border:1px solid #ddd;border-radius:4px;padding:3px 8px;min-width:110px}"
                 ".pcrules-figure-label{font-size:11px;color:#555}.pcrules-figure-value{font-size:18px}"
                 ".pcrules-table{border-collapse:collapse;font-size:12px;margin:4px 0}"
                 ".pcrules-table td,.pcrules-table th{border-bottom:1px solid #eee;padding:1px 7px;text-align:right}"
                 ".pcrules-table td:first-child,.pcrules-table th:first-child{text-align:left}"
                 ".pcrules-over{color:#b00020;font-weight:bold}</style>")
        parts = [style, f'<div class="pcrules-figures">{"".join(head)}</div>']
        if r.scaled is not None:
            parts.append(self.scaled_text(r))
        # by rule
        per = r.per_rule_counts
        cols = [("offers", "offers"), ("expected_accepts", "exp. accepts"), ("expected_uplift", "exp. uplift"),
                ("accepted", "accepted"),
                ("declined", "declined"), ("expired", "expired"), ("holdout", "holdout")]
        cols += [(x.value, x.value.replace("_", " ")) for x in BLOCK_REASONS if x != Reason.QUEUE_BUSY]
        rows_html = []
        for i, name in enumerate(r.rules):
            cells = "".join(f'<td data-rule="{_esc(name)}" data-col="{c}">'
                            f'{_fmt(per[c][i]) if c in per else "–"}</td>' for c, _ in cols)
            rows_html.append(f"<tr><td>{_esc(name)}</td>{cells}</tr>")
        off = [n for n in self.model.rule_names if n not in r.rules]
        parts.append('<div><b>By rule</b> (blocked: where the rule matched but the session, the visitor, the queue '
                     'or the score held it back)</div>'
                     '<table class="pcrules-table pcrules-by-rule"><tr><th>rule</th>'
                     + "".join(f"<th>{_esc(label)}</th>" for _, label in cols) + "</tr>" + "".join(rows_html)
                     + "</table>" + (f"<div>switched off: {_esc(', '.join(off))}</div>" if off else ""))
        # by queue
        q_rows = []
        for name, q in m["queues"].items():
            over = q["hours_over_capacity"]
            cls = ' class="pcrules-over"' if over else ""
            q_rows.append(f'<tr><td>{_esc(name)}</td><td data-queue="{_esc(name)}" data-col="offers_per_hour">'
                          f'{_fmt(q["offers_per_hour"], 2)}</td><td>{_fmt(q["peak_offers_per_hour"])}</td>'
                          f'<td data-queue="{_esc(name)}" data-col="expected_chats_per_hour">'
                          f'{_fmt(q["expected_chats_per_hour"], 2)}</td><td>{_fmt(q["peak_expected_chats"], 1)}</td>'
                          f'<td>{"none" if q["capacity_per_hour"] is None else _fmt(q["capacity_per_hour"], 0)}</td>'
                          f'<td{cls} data-queue="{_esc(name)}" data-col="hours_over_capacity">{_fmt(over)}</td>'
                          f'<td>{_pct(q["utilisation"])}</td></tr>')
        parts.append("<div><b>By queue</b> (per hour: averages over opening hours; peak: the busiest hour)</div>"
                     '<table class="pcrules-table pcrules-by-queue"><tr><th>queue</th><th>offers/h</th>'
                     "<th>peak offers</th><th>exp. chats/h</th><th>peak chats</th><th>capacity/h</th>"
                     "<th>hours over capacity</th><th>utilisation</th></tr>" + "".join(q_rows) + "</table>")
        # reasons
        reasons = m["reasons"]
        shown = [(k, reasons.get(k, 0)) for k in (*[x.value for x in BLOCK_REASONS], "holdout", "no_rule")]
        acts = m["actions"]
        parts.append("<div><b>Decisions</b>: "
                     + ", ".join(f'{_esc(a)} <span data-action="{_esc(a)}">{acts[a]:,}</span>' for a in ACTIONS)
                     + "; <b>no-offer reasons</b>: "
                     + ", ".join(f'{_esc(k.replace("_", " "))} <span data-reason="{_esc(k)}">{v:,}</span>'
                                 for k, v in shown)
                     + f'. <span class="pcrules-timing">Recomputed in {r.seconds * 1000:.0f} ms.</span></div>')
        return "".join(parts)

    def chart_png(self, r: TunerResult) -> bytes:
        """Offers and expected chats per queue and hour against each queue's capacity (PNG).

        The axes, ticks and labels are drawn once (and again only when a line outgrows its axis); a change
        redraws just the lines over that background (blitting), so the chart keeps up with the sliders.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from PIL import Image

        n_q = len(r.queues)
        has_expected = r.metrics["expected_accepts"] is not None
        values = []
        for qi, name in enumerate(r.queues):
            o = r.offers_h[qi].astype(float)
            c = r.chats_h[qi] if has_expected else r.accepted_h[qi].astype(float)
            cap = r.metrics["queues"][name]["capacity_per_hour"]
            values.append((o, c, cap, max(float(o.max(initial=0.0)), float(np.nanmax(c, initial=0.0)),
                                          float(cap or 0.0), 1.0)))
        key = (n_q, len(r.hours), has_expected)
        if self._figure is None or self._figure["key"] != key:
            fig = Figure(figsize=(9.0, 1.1 + 1.3 * n_q), dpi=80)
            canvas = FigureCanvasAgg(fig)
            axes = fig.subplots(n_q, 1, sharex=True, squeeze=False)[:, 0]
            x = np.arange(len(r.hours), dtype=float)  # hours since the first; days labelled below
            days = np.flatnonzero(r.hours % 24 == 0)
            labels = [f"{d:%a %d %b}" for d in pd.to_datetime(r.hours[days] * 3600, unit="s", utc=True)]
            step = max(1, int(math.ceil(len(days) / 10)))
            artists = []
            for ax, name, (o, c, cap, _top) in zip(axes, r.queues, values):
                offers, = ax.step(x, o, where="post", color="#9db7d5", lw=1.0, label="offers", animated=True)
                chats, = ax.step(x, c, where="post", color="#1f4e8c", lw=1.4, animated=True,
                                 label="expected chats" if has_expected else "accepted (recorded answers)")
                line = ax.axhline(cap or 0.0, color="#b00020", ls="--", lw=1.0, label="capacity", animated=True)
                ax.set_xlim(0.0, max(float(len(x)), 1.0))
                ax.set_xticks(days[::step].astype(float), labels[::step])
                ax.set_ylabel(f"{name}\nper hour", fontsize=9)
                ax.tick_params(labelsize=8)
                ax.grid(alpha=0.25)
                artists.append((ax, offers, chats, line))
            axes[-1].set_xlabel("day (UTC)", fontsize=8)
            axes[0].legend(handles=[artists[0][1], artists[0][2], artists[0][3]], loc="upper right", fontsize=8,
                           ncol=3, frameon=False)
            axes[0].set_title("Per queue and hour: offers and expected chats against capacity", fontsize=10)
            height = 1.1 + 1.3 * n_q  # inches; fixed margins (tight_layout would draw the figure twice)
            fig.subplots_adjust(left=0.085, right=0.99, top=1.0 - 0.4 / height, bottom=0.55 / height, hspace=0.25)
            self._figure = {"key": key, "fig": fig, "canvas": canvas, "artists": artists, "ylim": None,
                            "backgrounds": {}}
        f = self._figure
        # The axes (ticks, labels) are drawn once per set of y limits and kept; a limit changes only when a
        # line outgrows its axis or shrinks far below it, to a tidy value: few full draws, each kept.
        old = f["ylim"]
        if old is None or any(top > y or top < y / 5.0 for (_, _, _, top), y in zip(values, old)):
            ylim = tuple(_nice_ceiling(top * 1.5) for (_, _, _, top) in values)
        else:
            ylim = old
        if ylim != old or ylim not in f["backgrounds"]:
            f["ylim"] = ylim
            background = f["backgrounds"].get(ylim)
            if background is None:
                for (ax, *_), y in zip(f["artists"], ylim):
                    ax.set_ylim(0.0, y)
                f["canvas"].draw()
                self.chart_draws += 1
                if len(f["backgrounds"]) > 32:
                    f["backgrounds"].clear()
                background = f["backgrounds"][ylim] = f["canvas"].copy_from_bbox(f["fig"].bbox)
            else:
                for (ax, *_), y in zip(f["artists"], ylim):
                    ax.set_ylim(0.0, y)  # the lines are drawn in these data limits
            f["background"] = background
        f = self._figure
        canvas = f["canvas"]
        canvas.restore_region(f["background"])
        for (ax, offers, chats, line), (o, c, cap, _) in zip(f["artists"], values):
            offers.set_ydata(o)
            chats.set_ydata(c)
            line.set_visible(cap is not None)
            if cap is not None:
                line.set_ydata([cap, cap])
            ax.draw_artist(offers)
            ax.draw_artist(chats)
            if cap is not None:
                ax.draw_artist(line)
        width, height = canvas.get_width_height()
        image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def scaled_text(self, r: TunerResult) -> str:
        """On a sample of a partitioned history: the totals above scaled to the whole history, with intervals."""
        sample = self.model.sample
        assert r.scaled is not None and sample is not None
        rows = []
        for name, row in r.scaled.iterrows():
            mine = r.metrics.get(str(name))
            rows.append(f'<tr data-scaled="{_esc(name)}"><td>{_esc(_SCALED_LABELS.get(str(name), name))}</td>'
                        f"<td>{_fmt(mine)}</td><td>{_fmt(row['estimate'])}</td>"
                        f"<td>{_fmt(row['low'])} – {_fmt(row['high'])}</td></tr>")
        return (f'<div><b>Whole history</b> (the figures above are those of the sample, {sample.share:.0%} of the '
                f"visitors; scaled to all {sample.total_events:,} events with {sample.level:.0%} intervals)</div>"
                '<table class="pcrules-table pcrules-scaled"><tr><th>figure</th><th>sample</th>'
                "<th>whole history</th><th>interval</th></tr>" + "".join(rows) + "</table>")

    def recheck(self, settings: Settings, tuned: RuleSpec) -> _Recheck | None:
        """On a sample of a partitioned history: the full partitioned backtest of `tuned` and, per scaled figure,
        whether its whole-history value lies in the sample's interval (None on a whole history)."""
        sample = self.model.sample
        if sample is None:
            return None
        from .partitioned import recheck

        scaled = self._evaluate(settings).scaled
        assert scaled is not None
        estimate = sample.estimate(scaled)
        full, inside = recheck(tuned, sample.source, self.scorer, estimate, **sample.options)
        return _Recheck(scaled, full.metrics, inside, sample.partitions[1], float(full.seconds))

    def recheck_text(self, rc: _Recheck) -> str:
        """The recheck in the confirmation (HTML): each figure's sample interval, the full backtest's value and
        whether it fell inside; a plain warning when one fell outside."""
        rows = []
        for name, row in rc.scaled.iterrows():
            key = str(name)
            if key not in rc.inside:
                continue
            ok = rc.inside[key]
            rows.append(f'<tr data-recheck="{_esc(key)}"><td>{_esc(_SCALED_LABELS.get(key, key))}</td>'
                        f"<td>{_fmt(row['estimate'])}</td><td>{_fmt(row['low'])} – {_fmt(row['high'])}</td>"
                        f'<td data-full="{_esc(key)}" data-value="{rc.full[key]!r}">{_fmt(rc.full[key])}</td>'
                        f'<td{"" if ok else " class=pcrules-over"}>{"inside" if ok else "OUTSIDE"}</td></tr>')
        outside = [_SCALED_LABELS.get(k, k) for k, v in rc.inside.items() if not v]
        table = ('<table class="pcrules-table pcrules-recheck"><tr><th>figure</th><th>sample: scaled</th>'
                 "<th>interval</th><th>full backtest</th><th></th></tr>" + "".join(rows) + "</table>")
        intro = (f"<div><b>Recheck</b>: the full backtest of this ruleset on all {rc.partitions} partitions "
                 f"({rc.seconds:.1f} s) against the sample's intervals.</div>")
        if outside:
            verdict = note_html(f"The full backtest contradicts the sample: {_esc(', '.join(outside))} "
                                f"{'falls' if len(outside) == 1 else 'fall'} outside the sample's interval. The "
                                "figures you tuned on do not hold for the whole history; read the full backtest's "
                                "figures above before you confirm.", error=True)
        else:
            verdict = note_html(f"All {len(rc.inside)} figures of the full backtest fell inside the sample's "
                                "intervals.", ok=True)
        return intro + table + verdict

    def confirmation_text(self, c: _Candidate) -> str:
        """The question Publish asks (HTML): what goes live in place of what, the estimates of both, the guardrail's
        verdict (and the override, if it is used), and the changes knob by knob and in the YAML."""
        live = f"{_esc(self.current.name)} {_esc(self.current.version)}" + \
            (f" (bundle {_esc(self.current_version)})" if self.current_version else "")
        parts = [f"<div><b>Publish ruleset <code>{_esc(c.tuned.name)}</code> {_esc(c.tuned.version)}?</b> It becomes "
                 f"the live bundle in {_esc(self.bundle_dir)} as soon as you confirm, in place of {live}; the bundle "
                 f'records it as published by <b class="pcrules-operator">{_esc(self.operator)}</b>.</div>',
                 self.estimates_text(c.settings)]
        if c.recheck is not None:
            parts.append(self.recheck_text(c.recheck))
        if c.verdict is None:
            parts.append(note_html("Not checked against the log: the tuner's guardrail is off."))
        else:
            parts.append(c.verdict.html())
        if c.overridden:
            parts.append(note_html(f"The log does not support it and “{_esc(OVERRIDE_LABEL)}” is ticked: the "
                                   f"override is recorded in the bundle, by {_esc(self.operator)}.", error=True))
        parts.append(self.diff_text(c.tuned, c.settings))
        return "".join(parts)

    def estimates_text(self, settings: Settings) -> str:
        """The backtest's figures of the live ruleset (when it is the tuner's, so its knobs are known) and of
        `settings`, and the change (HTML)."""
        tuned = self._evaluate(settings).metrics
        live = None if self._current_settings is None else self._evaluate(self._current_settings).metrics
        rows = []
        for key, label, kind in _ESTIMATES:
            if key not in tuned:
                continue
            after = tuned.get(key)
            before = None if live is None else live.get(key)
            change = "–" if after is None or before is None else _change(after - before, kind)
            rows.append(f'<tr data-estimate="{key}"><td>{_esc(label)}</td><td>{_estimate(before, kind)}</td>'
                        f"<td>{_estimate(after, kind)}</td><td>{change}</td></tr>")
        return ('<div><b>Estimates</b> (the backtest on this history)</div><table class="pcrules-table '
                'pcrules-estimates"><tr><th></th><th>live</th><th>tuned</th><th>change</th></tr>'
                + "".join(rows) + "</table>")

    def diff_text(self, tuned: RuleSpec, settings: Settings) -> str:
        """What publishing would change (HTML): the knobs, rule by rule, and the YAML diff."""
        current_knobs = _knobs_of(self.current, self.model)
        rows = []
        for name in self.model.rule_names:
            before = current_knobs.get(name, "absent")
            after = _knobs_text(settings.rules[name], self.model.tunable[name])
            mark = "" if before == after else ' style="background:#fff3c4"'
            rows.append(f"<tr{mark}><td>{_esc(name)}</td><td>{_esc(before)}</td><td>{_esc(after)}</td></tr>")
        for q in self.model.queue_names:
            qb = self.current.queues.get(q)
            before = "absent" if qb is None else ("none" if qb.capacity_per_hour is None else
                                                  _fmt_number(qb.capacity_per_hour))
            cap = settings.capacities[q]
            after = "none" if cap is None else _fmt_number(cap)
            mark = "" if before == after else ' style="background:#fff3c4"'
            rows.append(f"<tr{mark}><td>queue {_esc(q)} capacity/h</td><td>{_esc(before)}</td>"
                        f"<td>{_esc(after)}</td></tr>")
        text = ruleset_diff(self.current, tuned)
        body = _esc(text) if text else "(no change in the ruleset's text)"
        return ('<div><b>Current → tuned</b></div><table class="pcrules-table pcrules-knobs"><tr><th>rule</th>'
                "<th>current</th><th>tuned</th></tr>" + "".join(rows) + "</table>"
                f'<pre class="pcrules-yaml-diff" style="font-size:11px;max-height:320px;overflow:auto">{body}</pre>')


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """A ruleset Publish may write: the knobs, the ruleset, its model and the guardrail's verdict (None: off)."""

    settings: Settings
    tuned: RuleSpec
    model: Any
    verdict: GuardrailVerdict | None
    overridden: bool
    recheck: _Recheck | None = None  # on a sample of a partitioned history: the full backtest, before Publish


@dataclasses.dataclass(frozen=True)
class _Recheck:
    """The full partitioned backtest of the ruleset to publish against the sample's scaled figures."""

    scaled: pd.DataFrame  # the sample's: index figure; estimate, low, high
    full: dict[str, Any]  # the full backtest's metrics
    inside: dict[str, bool]  # per figure: the full value lies in the sample's interval
    partitions: int
    seconds: float

    @property
    def outside(self) -> list[str]:
        return [k for k, v in self.inside.items() if not v]


_SCALED_LABELS = {"events": "events", "sessions": "sessions", "visitors": "visitors", "offers": "offers",
                  "holdout": "holdout (withheld)", "expected_accepts": "expected accepts (model)",
                  "true_expected_accepts": "true expected accepts", "accepted": "accepted (recorded)",
                  "declined": "declined", "expired": "expired", "expected_uplift": "expected uplift (model)",
                  "true_expected_uplift": "true expected uplift"}


# The confirmation's estimates: (metric, label, how it reads); a metric the result lacks is left out.
_ESTIMATES = (("offers", "offers", "count"), ("expected_accepts", "expected accepts (model)", "amount"),
              ("true_expected_accepts", "true expected accepts", "amount"),
              ("expected_accept_rate", "expected accept rate", "share"),
              ("expected_uplift", "expected uplift (model): extra goals", "amount"),
              ("true_expected_uplift", "true expected uplift: extra goals", "amount"))


def _estimate(value: Any, kind: str) -> str:
    if value is None:
        return "–" if kind != "amount" else '<span class="pcrules-na">not available</span>'
    return _pct(value) if kind == "share" else _fmt(value)


def _change(delta: Any, kind: str) -> str:
    if kind == "share":
        return f"{100.0 * delta:+.2f} pp"
    return f"{int(delta):+,}" if kind == "count" else f"{float(delta):+,.1f}"


# A field with a problem gets a red frame (the problem line under it says what is allowed).
_FIELD_STYLE = "<style>.pcrules-invalid input{border-color:#b00020!important;outline:1px solid #b00020}</style>"

_WITHDRAWN = "The knobs changed while Publish was asking: nothing was published. Press Publish again to review them."

_STALE = ("The knobs moved since the last check against the log: press “Check against the log” to check these "
          "settings (Publish checks them anyway).")


def _user() -> str:
    """Who overrides (the account running the kernel): ``getpass.getuser()``, or "unknown" where it has none."""
    try:
        return getpass.getuser() or "unknown"
    except Exception:  # no login name in the environment or the password database (a container)
        return "unknown"


def _feedback_of(feedback: Any, note: str | None) -> tuple[Any, str | None]:
    """(Feedback or None, why none): a History is read as feedback (``analysis.history_feedback``)."""
    from .explore import History, history_feedback

    if isinstance(feedback, History):
        try:
            return history_feedback(feedback), note
        except Exception as exc:
            return None, note or sentence_reason(exc)
    return feedback, note


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `x` (a tidy axis limit)."""
    if x <= 0 or not math.isfinite(x):
        return 1.0
    power = 10.0 ** math.floor(math.log10(x))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * power >= x - 1e-12:
            return m * power
    return 10.0 * power


def _knobs_of(spec: RuleSpec, model: TriggerModel) -> dict[str, str]:
    out = {}
    for rule in spec.rules:
        knobs = tunable_knobs(rule)
        tunable = model.tunable.get(rule.name, knobs is not None) and knobs is not None
        s = RuleSetting(True, knobs[0], knobs[1]) if knobs is not None else RuleSetting(True, math.nan, None)
        out[rule.name] = _knobs_text(s, tunable)
    for name in model.rule_names:
        out.setdefault(name, "off")
    return out


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{float(x):g}"


def _css(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).lower()


def sentence_reason(exc: BaseException) -> str:
    """An exception as part of a sentence: its message (first line), not its traceback."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rstrip(".")


def _sentence_part(problem: str) -> str:
    return problem.strip().rstrip(".")


def note_html(text: str, error: bool = False, ok: bool = False) -> str:
    color = "#b00020" if error else "#1b5e20" if ok else "#333"
    role = ' role="alert"' if error else ""
    cls = "pcrules-error" if error else "pcrules-ok" if ok else "pcrules-note"
    return f'<div class="{cls}"{role} style="color:{color};margin:4px 0">{text}</div>'

