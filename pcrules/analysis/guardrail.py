"""Publish's guardrail: a candidate ruleset is checked against the log before it replaces the current one.

A model learned from past offers extrapolates, and a tuner that trusts it can recommend what the truth rates
worse (issue 16). The log, with the probability the logging ruleset gave each of its choices, answers "is the
candidate better than the current ruleset?" without trusting the model where it has no data
(:mod:`.feedback`, :mod:`.offpolicy`, docs/off-policy.md). :func:`check` refuses a candidate when

* there is no logged feedback (no propensities, or no known logging ruleset): nothing can be checked;
* the logging ruleset given does not reproduce the logged offers (its propensities would not describe them);
* more than ``max_unsupported`` of the candidate's offers are outside the log's support (the logging ruleset
  could never have made them, so the log cannot say what they earn);
* the candidate is not better than the current ruleset within its interval: the 95 % interval of the
  difference in expected accepted chats (both estimated on the same visitor resamples) does not lie above 0;
* the log cannot estimate the candidate at all (it never chose what the log chose).

The estimate is doubly robust (``"dr"``) when a model is given, else self-normalised IPS (``"snips"``). The
model's own estimate (``"dm"``) is shown beside the log's, and a note says when the two disagree.

The verdict holds the two reports and the difference; :meth:`GuardrailVerdict.to_dict` is what Publish records in
the bundle's manifest (``metrics["guardrail"]``), :meth:`~GuardrailVerdict.html` and
:meth:`~GuardrailVerdict.summary` what a person reads.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.spec import RuleSpec, load_spec
from .feedback import Feedback, versus
from .offpolicy import Difference, Estimate, OffPolicyReport

__all__ = ["GuardrailVerdict", "check", "unchecked", "NO_FEEDBACK", "MAX_UNSUPPORTED", "MAX_MISMATCHED",
           "ESTIMATORS"]

NO_FEEDBACK = "the history carries no logged propensities: the candidate cannot be checked against the log"
MAX_UNSUPPORTED = 0.05  # share of the candidate's offers the log may not support
MAX_MISMATCHED = 0.01  # share of logged offers the logging ruleset may fail to reproduce (lost or odd rows)
ESTIMATORS = {
    "dr": "doubly robust (the log, corrected by the model)",
    "snips": "self-normalised inverse propensity (the log alone)",
    "ips": "inverse propensity (the log alone)",
    "dm": "the model alone",
}


# ============================================================================================ formatting


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _num(x: float | None, signed: bool = False) -> str:
    """A count of chats as a person reads it: whole numbers from 10 up, one decimal below; a real minus sign."""
    if not _finite(x):
        return "n/a"
    assert x is not None
    digits = 0 if abs(x) >= 9.95 else 1
    text = f"{x:+,.{digits}f}" if signed else f"{x:,.{digits}f}"
    return text.replace("-", "\u2212")


def _pct(share: float | None) -> str:
    if not _finite(share):
        return "n/a"
    assert share is not None
    text = f"{100.0 * share:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + " %"


def _level(level: float) -> str:
    return f"{100.0 * level:g} %"


def _interval_text(e: Estimate, signed: bool = False) -> str:
    return (f"{_num(e.value, signed)} accepted chats ({_level(e.interval.level)} interval "
            f"{_num(e.interval.low, signed)} to {_num(e.interval.high, signed)})")


def _plain(x: Any) -> Any:
    """JSON-safe: NaN and infinities as None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _estimate_dict(e: Estimate) -> dict[str, Any]:
    return {"value": _plain(float(e.value)), "low": _plain(float(e.interval.low)),
            "high": _plain(float(e.interval.high)), "per_unit": _plain(float(e.mean))}


def _report_dict(r: OffPolicyReport) -> dict[str, Any]:
    return {
        "estimates": {name: _estimate_dict(e) for name, e in r.estimates.items()},
        "effective_sample_size": _plain(float(r.effective_sample_size)),
        "unsupported_offer_share": _plain(float(r.unsupported_offer_share)),
        "unsupported_share": _plain(float(r.unsupported_share)),
        "offers": int(r.n_candidate_offers),
        "units": int(r.n_units),
        "matched_units": int(r.n_matched),
        "visitors": int(r.n_clusters),
        "max_weight": _plain(float(r.max_weight)),
        "warnings": list(r.warnings),
    }


# ============================================================================================ the verdict


@dataclass(frozen=True, repr=False)
class GuardrailVerdict:
    """Whether the log supports publishing `candidate_name` in place of `current_name` (see the module docstring).

    ``ok``: nothing stands against it; ``reasons``: why not (plain sentences with the figures, empty when ok);
    ``notes``: what a person should see without it refusing (the model disagrees with the log, the current
    ruleset is itself partly outside support, the estimators' warnings). ``candidate`` / ``current``: the two
    off-policy reports, ``difference``: candidate - current on the same resamples (all None when nothing could be
    estimated). ``estimator``: the one the decision reads (``"dr"`` with a model, else ``"snips"``)."""

    ok: bool
    reasons: tuple[str, ...]
    candidate: OffPolicyReport | None
    current: OffPolicyReport | None
    difference: Difference | None
    estimator: str
    notes: tuple[str, ...] = ()
    candidate_name: str = "candidate"
    current_name: str = "current"
    max_unsupported: float = MAX_UNSUPPORTED
    level: float = 0.95

    @property
    def checked(self) -> bool:
        """The log gave estimates (False: no feedback, or the check could not run)."""
        return self.candidate is not None and self.current is not None and self.difference is not None

    def figures(self) -> dict[str, Any]:
        """The headline figures, flat: the log's and the model's estimate of each ruleset and of the difference,
        with intervals and the support diagnostics (None where unknown)."""
        out: dict[str, Any] = {"estimator": self.estimator}
        for key, report in (("candidate", self.candidate), ("current", self.current)):
            if report is None:
                continue
            e = report.estimates.get(self.estimator)
            dm = report.estimates.get("dm")
            out[key] = {"log": None if e is None else _estimate_dict(e),
                        "model": None if dm is None else _plain(float(dm.value)),
                        "effective_sample_size": _plain(float(report.effective_sample_size)),
                        "unsupported_offer_share": _plain(float(report.unsupported_offer_share))}
        if self.difference is not None:
            e = self.difference.estimates.get(self.estimator)
            dm = self.difference.estimates.get("dm")
            out["difference"] = {"log": None if e is None else _estimate_dict(e),
                                 "model": None if dm is None else _plain(float(dm.value))}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for the bundle's manifest (``metrics["guardrail"]``)."""
        return {
            "ok": self.ok,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "estimator": self.estimator,
            "level": self.level,
            "max_unsupported": self.max_unsupported,
            "candidate_ruleset": self.candidate_name,
            "current_ruleset": self.current_name,
            "candidate": None if self.candidate is None else _report_dict(self.candidate),
            "current": None if self.current is None else _report_dict(self.current),
            "difference": None if self.difference is None else
            {name: _estimate_dict(e) for name, e in self.difference.estimates.items()},
            "n_boot": None if self.candidate is None else self.candidate.n_boot,
        }

    def headline(self) -> str:
        """One sentence: what the log says of the candidate against the current ruleset."""
        if self.difference is None or self.estimator not in self.difference.estimates:
            return "Not checked against the log."
        e = self.difference.estimates[self.estimator]
        verdict = "better than the current ruleset within its interval" if self.difference.better(self.estimator) \
            else "not shown to be better than the current ruleset"
        return f"Candidate minus current: {_interval_text(e, signed=True)}: {verdict}."

    def summary(self) -> str:
        lines = [f"Guardrail: {'OK to publish' if self.ok else 'REFUSED'} — {self.candidate_name} against "
                 f"{self.current_name}, estimator {self.estimator} ({ESTIMATORS.get(self.estimator, '')})"]
        for label, report in (("candidate", self.candidate), ("current", self.current)):
            if report is None:
                continue
            lines.append(f"  {label:>9}: {self._report_line(report)}")
        if self.difference is not None:
            lines.append(f"  {'difference':>9}: {self._difference_line()}")
        lines += [f"  refused: {r}" for r in self.reasons]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _report_line(self, report: OffPolicyReport) -> str:
        e = report.estimates.get(self.estimator)
        log = "n/a" if e is None else _interval_text(e)
        dm = report.estimates.get("dm")
        model = "no model" if dm is None else f"{_num(dm.value)}"
        return (f"log {log}; model {model}; ESS {report.effective_sample_size:,.0f}; "
                f"{_pct(report.unsupported_offer_share)} of {report.n_candidate_offers:,} offers outside support")

    def _difference_line(self) -> str:
        assert self.difference is not None
        e = self.difference.estimates.get(self.estimator)
        dm = self.difference.estimates.get("dm")
        return (f"log {'n/a' if e is None else _interval_text(e, signed=True)}; "
                f"model {'no model' if dm is None else _num(dm.value, signed=True)}")

    def html(self) -> str:
        """The verdict as an HTML block: the figures' table, then the reasons (or that it may be published)."""
        esc = _esc
        rows = []
        level = _level(self.level)
        for label, key, report in (("current", "current", self.current), ("candidate", "candidate", self.candidate)):
            if report is None:
                continue
            e = report.estimates.get(self.estimator)
            dm = report.estimates.get("dm")
            over = ' class="pcrules-over"' if key == "candidate" and \
                report.unsupported_offer_share > self.max_unsupported else ""
            rows.append(
                f'<tr data-guardrail="{key}"><td>{esc(label)}</td>'
                f'<td data-col="log">{esc(_num(None if e is None else e.value))}</td>'
                f'<td data-col="interval">{esc(self._bounds(e))}</td>'
                f'<td data-col="model">{esc("no model" if dm is None else _num(dm.value))}</td>'
                f'<td data-col="ess">{report.effective_sample_size:,.0f}</td>'
                f'<td data-col="unsupported"{over}>{esc(_pct(report.unsupported_offer_share))}</td>'
                f'<td>{report.n_candidate_offers:,}</td></tr>')
        if self.difference is not None:
            e = self.difference.estimates.get(self.estimator)
            dm = self.difference.estimates.get("dm")
            cls = "" if e is not None and self.difference.better(self.estimator) else ' class="pcrules-over"'
            rows.append(f'<tr data-guardrail="difference"><td>candidate − current</td>'
                        f'<td data-col="log"{cls}>{esc(_num(None if e is None else e.value, True))}</td>'
                        f'<td data-col="interval"{cls}>{esc(self._bounds(e, True))}</td>'
                        f'<td data-col="model">{esc("no model" if dm is None else _num(dm.value, True))}</td>'
                        "<td></td><td></td><td></td></tr>")
        parts = ['<div class="pcrules-guardrail">',
                 f"<div><b>Checked against the log</b> — expected accepted chats over the logged sessions, "
                 f"estimated from the log ({esc(ESTIMATORS.get(self.estimator, self.estimator))}), "
                 f"next to the model's own estimate</div>"]
        if rows:
            parts.append('<table class="pcrules-table pcrules-guardrail-table"><tr><th>ruleset</th>'
                         f"<th>log estimate</th><th>{esc(level)} interval</th><th>model's estimate</th>"
                         "<th>effective sample</th><th>offers outside the log's support</th><th>offers</th></tr>"
                         + "".join(rows) + "</table>")
        if self.ok:
            parts.append('<div class="pcrules-guardrail-ok" style="color:#1b5e20">The log supports publishing it: '
                         + esc(self.headline()) + "</div>")
        else:
            parts.append('<div class="pcrules-guardrail-refused" style="color:#b00020"><b>Publish refuses it'
                         "</b> (unless you tick the override):<ul>"
                         + "".join(f"<li>{esc(r)}</li>" for r in self.reasons) + "</ul></div>")
        if self.notes:
            parts.append('<div class="pcrules-guardrail-notes" style="font-size:12px;color:#555">'
                         + "<br>".join(esc(n) for n in self.notes) + "</div>")
        parts.append("</div>")
        return "".join(parts)

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:  # a notebook's text view: the summary, not every resample
        return self.summary()

    @staticmethod
    def _bounds(e: Estimate | None, signed: bool = False) -> str:
        if e is None:
            return "n/a"
        return f"{_num(e.interval.low, signed)} to {_num(e.interval.high, signed)}"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# ============================================================================================ the check


def _name(spec: RuleSpec) -> str:
    return f"{spec.name} {spec.version}"


def unchecked(reason: str, candidate: RuleSpec | None = None, current: RuleSpec | None = None, *,
              estimator: str = "snips", max_unsupported: float = MAX_UNSUPPORTED) -> GuardrailVerdict:
    """A refusal without figures: `reason` says why the candidate could not be checked against the log."""
    return GuardrailVerdict(False, (reason,), None, None, None, estimator, (),
                            "candidate" if candidate is None else _name(candidate),
                            "current" if current is None else _name(current), max_unsupported)


_SpecLike = RuleSpec | str | Mapping[str, Any]


def check(fb: Feedback | None, candidate: _SpecLike, current: _SpecLike, scorer: Any = None, *,
          max_unsupported: float = MAX_UNSUPPORTED, n_boot: int = 500, seed: int = 0, level: float = 0.95,
          queue_status: Any = None) -> GuardrailVerdict:
    """Check `candidate` against `current` on the logged feedback `fb` (:func:`.feedback.feedback`): the
    off-policy estimate of both, their difference on paired resamples, and the support diagnostics; refused
    (``ok=False``) for the reasons listed in the module docstring. `scorer`: the model (DR and the model's own
    estimate DM; it also decides rules with a score condition)."""
    if not 0.0 <= max_unsupported <= 1.0:
        raise ValueError(f"max_unsupported must lie in [0, 1], got {max_unsupported!r}")
    cand = candidate if isinstance(candidate, RuleSpec) else load_spec(candidate)
    cur = current if isinstance(current, RuleSpec) else load_spec(current)
    estimator = "dr" if scorer is not None else "snips"
    if fb is None:
        return unchecked(NO_FEEDBACK, cand, cur, estimator=estimator, max_unsupported=max_unsupported)
    if fb.n == 0:
        return unchecked("the log holds no session stretch at which the logging ruleset could offer: the candidate "
                         "cannot be checked against it", cand, cur, estimator=estimator,
                         max_unsupported=max_unsupported)
    reasons: list[str] = []
    notes: list[str] = []
    logged_offers = int((fb.shown >= 0).sum()) + fb.mismatched
    if fb.mismatched and fb.mismatched > MAX_MISMATCHED * logged_offers:
        text = (f"{fb.mismatched:,} of the {logged_offers:,} logged offers are not what the logging ruleset "
                f"{fb.spec.name} would have made: its propensities do not describe this log")
        if fb.spec.policy.max_offers_per_session == 1:
            reasons.append(text)
        else:  # the feedback counts a session's later offers as not reproduced: a note, not a refusal
            notes.append(text + " (or they are later offers of a session, which the estimate leaves out)")
    a, b, diff = versus(fb, cand, cur, scorer, n_boot=n_boot, seed=seed, queue_status=queue_status, level=level)

    if a.unsupported_offer_share > max_unsupported:
        outside = int(round(a.unsupported_offer_share * a.n_candidate_offers))
        reasons.append(f"{_pct(a.unsupported_offer_share)} of the candidate's offers ({outside:,} of "
                       f"{a.n_candidate_offers:,}) are outside the log's support (the logging ruleset could never "
                       f"have made them), more than the {_pct(max_unsupported)} allowed: the log cannot say what "
                       "they earn")
    e = diff.estimates.get(estimator)
    mine = a.estimates.get(estimator)
    if e is None or mine is None or not _finite(mine.value) or not _finite(e.value):
        reasons.append("the candidate never chose what the log chose in any logged stretch: the log cannot "
                       "estimate its expected accepted chats")
    elif not diff.better(estimator):
        reasons.append(f"{_interval_text(e, signed=True)}: not shown to be better than the current ruleset")

    # what a person should see without it refusing
    if a.unsupported_share > max_unsupported and a.unsupported_offer_share <= max_unsupported:
        notes.append(f"{_pct(a.unsupported_share)} of the logged stretches see a choice of the candidate the "
                     "logging ruleset could not have made (mostly no offer where it always offered)")
    if b.unsupported_offer_share > max_unsupported:
        notes.append(f"{_pct(b.unsupported_offer_share)} of the current ruleset's offers are outside the log's "
                     "support too: the log's estimate of it leaves them out (or, doubly robust, takes the model's "
                     "word for them)")
    if scorer is None:
        notes.append("No model: the model's own estimate is not available, and the log alone (self-normalised "
                     "inverse propensity) decides.")
    else:
        for label, report in (("the candidate", a), ("the current ruleset", b)):
            log_e, dm = report.estimates.get(estimator), report.estimates.get("dm")
            if log_e is not None and dm is not None and _finite(dm.value) and _finite(log_e.interval.low) \
                    and not log_e.interval.contains(dm.value):
                notes.append(f"The model expects {_num(dm.value)} accepted chats from {label}, outside the log's "
                             f"{_level(level)} interval ({_num(log_e.interval.low)} to "
                             f"{_num(log_e.interval.high)}): the model and the log disagree.")
        dm_diff = diff.estimates.get("dm")
        if e is not None and dm_diff is not None and _finite(e.interval.low) and \
                not e.interval.contains(dm_diff.value):
            notes.append(f"The model puts the candidate at {_num(dm_diff.value, True)} accepted chats against the "
                         f"current ruleset, outside the log's {_level(level)} interval of the difference "
                         f"({_num(e.interval.low, True)} to {_num(e.interval.high, True)}).")
    # the estimators' own warnings, but for support (said above, in this verdict's words)
    notes += [f"Candidate: {w}." for w in a.warnings if "outside logged support" not in w]
    notes += [f"Current ruleset: {w}." for w in b.warnings if "outside logged support" not in w]
    return GuardrailVerdict(not reasons, tuple(reasons), a, b, diff, estimator, tuple(notes), _name(cand),
                            _name(cur), max_unsupported, level)
