"""A synthetic world with a known truth: visitors of a telecom/utility site, the observations the
browser sends, the offers a legacy policy made, and the visitors' answers.

Analysts and tests need history whose *true* acceptance probability is known, so that a learned
model can be compared with it. Everything here is seeded and vectorised (numpy/pandas): the same
``(visitors, seed, start, days)`` gives the same frames, and a million events take about a second.

    >>> from pcrules.world import generate, true_accept_probability
    >>> world = generate(visitors=5_000, seed=1)
    >>> world.events.columns.tolist()      # exactly what the runtime sees (plus the would-be answer)
    ['ts', 'visitor_id', 'session_id', 'page', 'seconds_on_page', 'pages_viewed', 'session_seconds', 'device',
     'returning', 'response', 'response_delay_s']
    >>> float(true_accept_probability("Checkout", 90, "desktop", True, 4, session_seconds=160))  # doctest: +SKIP

The pieces (each documented where it is defined below):

* **Visitors and sessions.** A device per visitor; 1 + geometric sessions per visitor (30 % come
  back within the window); a session is ``returning`` when it is not the visitor's
  first in the window, or when the visitor had been here before the window. Session starts follow
  a weekday weight and a daily traffic curve in the site's local time.
* **Page paths**: a Markov chain over :data:`PAGES` with an exit state, landing page from
  :data:`LANDING`. A latent per-session ``needs_help`` state (:data:`NEEDS_HELP_SHARE`) makes
  FAQ / Support / Contact more likely and lengthens dwell on hard pages (:data:`HELP_DWELL_FACTOR`).
* **Dwell** on a page is Weibull with shape < 1 (heavy tail, "negative aging"), see
  :data:`DWELL_SHAPE`.
* **Observations**: one event at page enter (``seconds_on_page`` 0) and one per browser re-check
  (:data:`RECHECKS`) while the visitor is still on the page (re-check time <= dwell).
* **Ground truth**: :func:`true_accept_probability`, built from published figures (BoldChat's):
  time on site, pages viewed and repeat visits drive acceptance, page content hardly; time on page
  only through the latent ``needs_help`` (a struggling visitor stays longer on hard pages).
* **Would-be answers**: every event carries how the visitor *would* answer an offer made at that
  moment (``response`` accept / decline / missing = no answer, after ``response_delay_s``),
  drawn from the ground truth with the session's real ``needs_help``. ``pcrules.replay`` plays
  them back for any ruleset.
* **Logged offers**: what a deployed pcrules logged (:func:`legacy_spec`): a fixed wait per page, the
  way the seed API is usually used (:data:`LEGACY_WAITS`), a 10 % holdout, and 10 % of sessions
  exploring random waits, each offer with its propensity; answers are the events' would-be answers.
* **Goals and the causal effect of a chat** (separate from :func:`generate`, whose frames they leave
  unchanged): each session's goal (``bill_paid``, ``plan_bought``, ``call_avoided``) converts with a
  base rate that depends on ``needs_help``; an accepted chat raises it by an amount that depends on
  the page and on ``needs_help``, declined and ignored offers lower it a little (:class:`GoalModel`,
  constants documented where defined). :func:`session_goals`, :func:`draw_goals` (what a replay
  reports through ``Runtime.record_goal``, :func:`report_goals`), :func:`true_uplift` (the true
  intention-to-treat uplift of any policy's decisions, what :mod:`pcrules.uplift` estimates),
  :func:`offer_effects` (per-offer values) and :func:`event_effects` (the same per event: what a
  backtest's and the tuner's expected uplift read).
"""

from __future__ import annotations

import gzip
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_PANDAS3 = int(pd.__version__.split(".")[0]) >= 3

__all__ = [
    "PAGES", "DEVICES", "RECHECKS", "EVENT_COLUMNS", "PAGE_VIEW_COLUMNS", "OFFER_COLUMNS",
    "World", "generate", "legacy_spec", "logged_offers", "LEGACY_WAITS",
    "LEGACY_QUEUE", "LEGACY_QUEUES", "true_accept_probability",
    "needs_help_probability", "time_multiplier",
    "read_world",
    "GOAL_NAMES", "GoalModel", "GOALS", "NO_EFFECT", "TrueUplift", "session_goals", "draw_goals", "report_goals",
    "true_uplift", "offer_effects", "event_effects",
]

# --------------------------------------------------------------------------------------------
# The site
# --------------------------------------------------------------------------------------------

PAGES: tuple[str, ...] = ("Home", "Bill Payment", "Plans", "Roaming", "Checkout", "Account", "FAQ", "Support",
                          "Contact")
DEVICES: tuple[str, ...] = ("desktop", "mobile", "tablet")
DEVICE_SHARE = np.array([0.52, 0.40, 0.08])  # assumption: a typical mobile share for a utility site

# The browser's observation moments: page enter, then re-checks while the visitor stays.
RECHECKS = np.array([0, 15, 30, 60, 90, 120, 150, 180, 240, 300, 420, 600, 900], dtype=float)

EVENT_COLUMNS = ("ts", "visitor_id", "session_id", "page", "seconds_on_page", "pages_viewed", "session_seconds",
                 "device", "returning", "response", "response_delay_s")
PAGE_VIEW_COLUMNS = ("visitor_id", "session_id", "pages_viewed", "page", "enter_ts", "dwell_s", "device",
                     "returning", "needs_help")
OFFER_COLUMNS = ("ts", "visitor_id", "session_id", "page", "seconds_on_page", "pages_viewed", "session_seconds",
                 "device", "returning", "rule", "explored", "propensity", "response", "response_delay_s")

# Site time: the world's clock for the daily curve and the legacy chat hours is UTC+1 (CET; the
# world ignores daylight saving time, so a summer `start` is an hour off Amsterdam's wall clock).
SITE_UTC_OFFSET_S = 3600
DEFAULT_START = "2025-11-24"  # a Monday, site time

# Assumption (no single published curve): a B2C day, quiet at night, rising from 07:00, a plateau
# through the working day and an evening bump around 20:00; weights per local hour 0..23.
HOURLY_TRAFFIC = np.array([0.8, 0.5, 0.3, 0.25, 0.25, 0.4, 0.9, 2.0, 3.6, 4.8, 5.3, 5.4,
                           5.0, 5.1, 5.2, 5.0, 4.8, 4.6, 4.6, 5.0, 5.2, 4.6, 3.2, 1.8])
WEEKDAY_TRAFFIC = np.array([1.0, 1.0, 0.97, 0.97, 0.9, 0.75, 0.8])  # Mon..Sun

SESSIONS_P = 0.7            # sessions per visitor in the window: geometric(0.7), i.e. 30 % come back
MAX_SESSIONS = 6
PRIOR_VISIT_SHARE = 0.15    # first session in the window is already `returning` (visited before the window)
MIN_SESSION_GAP_S = 1800    # a visitor's next session starts at least 30 min after the previous one ended
NEEDS_HELP_SHARE = 0.2      # latent: share of sessions in which the visitor is struggling
MAX_PAGES = 30              # a path stops after this many page views

# Landing page and page-to-page transitions (last column: leave the site). Rows need not sum to 1.
_P = {name: i for i, name in enumerate(PAGES)}
LANDING = np.array([0.42, 0.16, 0.10, 0.06, 0.0, 0.10, 0.06, 0.07, 0.03])
#                      Home  Bill  Plans Roam  Chk   Acct  FAQ   Supp  Cont  EXIT
_TRANSITIONS = np.array([
    [0.00, 0.18, 0.20, 0.08, 0.00, 0.14, 0.06, 0.07, 0.03, 0.24],  # Home
    [0.08, 0.00, 0.03, 0.01, 0.00, 0.22, 0.07, 0.08, 0.04, 0.47],  # Bill Payment
    [0.08, 0.02, 0.10, 0.06, 0.22, 0.05, 0.06, 0.03, 0.03, 0.35],  # Plans
    [0.08, 0.02, 0.15, 0.05, 0.15, 0.05, 0.10, 0.05, 0.03, 0.32],  # Roaming
    [0.03, 0.00, 0.12, 0.02, 0.05, 0.08, 0.05, 0.04, 0.03, 0.58],  # Checkout
    [0.10, 0.25, 0.06, 0.04, 0.02, 0.05, 0.05, 0.06, 0.03, 0.34],  # Account
    [0.06, 0.06, 0.04, 0.04, 0.02, 0.05, 0.15, 0.20, 0.10, 0.28],  # FAQ
    [0.05, 0.06, 0.02, 0.03, 0.01, 0.06, 0.15, 0.10, 0.17, 0.35],  # Support
    [0.05, 0.03, 0.02, 0.01, 0.00, 0.04, 0.06, 0.08, 0.00, 0.71],  # Contact
])
# A visitor who needs help lands on and moves to the help pages more, and leaves a little later.
_HELP_BOOST = np.array([1, 1, 1, 1, 1, 1, 1.8, 1.8, 1.8, 0.85])


def _chains() -> tuple[np.ndarray, np.ndarray]:
    landing = np.stack([LANDING, LANDING * _HELP_BOOST[:-1]])
    landing /= landing.sum(axis=1, keepdims=True)
    moves = np.stack([_TRANSITIONS, _TRANSITIONS * _HELP_BOOST])
    moves /= moves.sum(axis=2, keepdims=True)
    return landing, moves


_LANDING2, _MOVES2 = _chains()  # [needs_help][page] and [needs_help][from page][to page or exit]

# Dwell: Weibull with shape < 1. Liu, White & Dumais, "Understanding Web Browsing Behaviors
# through Weibull Analysis of Dwell Time" (SIGIR 2010) fit page dwell times with a Weibull and find
# "negative aging" (shape < 1) on the great majority of pages: the longer a visitor has stayed, the
# less likely she is to leave in the next second, which gives the heavy tail. Medians per page are
# assumptions for this site; `needs_help` multiplies the median on hard pages (the latent effect).
DWELL_SHAPE = 0.8
DWELL_MEDIAN_S = np.array([15, 70, 60, 45, 60, 35, 45, 40, 25], dtype=float)
HELP_DWELL_FACTOR = np.array([1.2, 2.8, 1.8, 2.0, 2.5, 1.6, 2.2, 2.0, 1.5])
DEVICE_DWELL_FACTOR = np.array([1.0, 0.85, 1.0])  # assumption: a little shorter on a phone
MAX_DWELL_S = 1800.0   # a tab left open longer than this is an abandoned page view
MIN_DWELL_S = 0.5
_LN2_ROOT = math.log(2.0) ** (1.0 / DWELL_SHAPE)

# --------------------------------------------------------------------------------------------
# The ground truth
# --------------------------------------------------------------------------------------------
#
# P(accept) = base(page) x time(session_seconds) x returning x device x pages_viewed x needs_help,
# capped at ACCEPT_CAP. Sources:
#
# [BoldChat] Ross Haskell (BoldChat) interviewed by Get Elastic, "Proactive chat",
#   http://www.getelastic.com/proactive-chat/ — BoldChat's data across its customer base:
#   (a) "visitors invited after 2-3 minutes on site have a 79% greater likelihood to accept than a
#       website visitor who's been on site for less time";
#   (b) "inviting visitors who've been on site for between 10 and 30 seconds yields a lower acceptance
#       rate than other time ranges (inviting earlier or later both outperform this time range)";
#   (c) "Repeat visitors are 64% more likely to engage in proactive chats than first-time visitors";
#   (d) a retailer that "only invites inside their shopping cart" sees "an over 20% acceptance rate",
#       which the interviewee puts down "not to the shopping cart itself" but to the on-site behaviour
#       of the visitors who reach the cart;
#   (e) "the greatest determinant of proactive take-rate is not particular page content, but other
#       factors such as time on site, number of viewed pages, and repeat visitors".
# Typical proactive acceptance is a few percent (the brief): the world's mean is about 5 %.
#
# How the world follows them:
#
# * Time ON SITE, as BoldChat words (a) and (b): time_multiplier acts on the event's `session_seconds`
#   (seconds since the session's first page enter; the events carry it and the runtime sees it).
#   (a) compares 2-3 minutes with "less time"; the product brief reads it as "than average", and that
#   is what is calibrated, over every moment an offer could be shown (the literal reading, 120-180 s
#   against all moments under 120 s, then comes out at about 2.3x). (b) gives no size: the depth of
#   the 10-30 s trough is an assumption. Beyond 3 minutes BoldChat says nothing; the world assumes
#   the visitor's receptiveness fades (a visitor still on the site after 5-10 minutes is mostly busy
#   with a task or has left the tab open), how far being fixed by the "than average" reading of (a):
#   the 2-3 minute moments can only be 1.79x the mean if the moments after 3 minutes, almost 40 % of
#   all and the ones with the most pages viewed, average about the mean (they come out at 1.0-1.1x).
#   The fade stops above the trough, so that (b)'s "later outperforms" holds for a visitor as well
#   as over the events.
# * Time ON PAGE has no factor of its own (no direct multiplier: BoldChat's figures are on site).
#   It acts through one documented mechanism, the latent needs_help: a struggling visitor stays
#   longer on hard pages (HELP_DWELL_FACTOR), so given what the runtime sees, a long stay on Bill
#   Payment raises P(needs_help) and with it P(accept) (`true_accept_probability(..., needs_help=None)`,
#   _help_posterior); with the session's real needs_help, time on page adds nothing beyond the time
#   on site it is part of. Over the events, moments at 120-180 s on page accept about 1.3x the mean
#   (the time-on-site effect they carry, plus this), against 1.8x at 120-180 s on site.
# * (e) page content is a minor factor: every page has the same base rate, except the checkout's
#   CHECKOUT_LEAD (below). The page means over the events still differ, about 1.7x (highest /
#   lowest; the world before this reading: 10.8x), from who is on each page when: Home is mostly
#   seen in a session's first half-minute (the 10-30 s trough), the help pages gather struggling
#   visitors, the checkout comes after several pages. Of the variance of P(accept) given what the
#   runtime sees, the page explains about 5 %, time on site (bands) about 57 %, repeat visits about
#   20 % and pages viewed about 12 %: each of (e)'s factors more than the page.
# * (d) with (e): the world keeps (d)'s order, the checkout is the best page, and not its level
#   (20 % at one retailer that invites nowhere else; the level here would make the page the main
#   driver, against (e)). Following the interviewee's own explanation, most of the checkout's lead
#   is behaviour: it comes after 3.8 pages on average (pages viewed, time on site). That alone
#   leaves it behind the help pages (which gather struggling visitors), so an assumption stands in
#   for the part of the cart's behaviour this world does not model otherwise (purchase intent): a
#   base 1.2x the other pages'. Its mean over the events is about 6.5 %, about 1.7x Home's.
#
# Calibrated on generated worlds so that, over all observation events (every moment an offer could
# be shown), events at 120-180 s on site accept 1.79x the average (a), events at 10-30 s on site
# less than at any other time on site (b), returning 1.64x first-time (c), the overall mean is about
# 5 %, the checkout page the highest (d), and the page means within 3x of each other (e): each
# holds with the session's real needs_help and marginalised over it. tests/test_world.py checks them.

# (a), (b): a multiplier on seconds on SITE, piecewise linear between these points, flat beyond.
# 1.0 at the session's first moment; the trough (b) at 15-30 s, the peak (a) at 2-3 minutes, then
# the fade (an assumption, sized by (a) as above) to a floor above the trough.
SITE_TIME_KNOTS_S = np.array([0, 10, 15, 30, 60, 90, 120, 150, 180, 240, 300, 420, 600, 900], dtype=float)
SITE_TIME_MULTIPLIER = np.array([1.0, 0.8, 0.5, 0.5, 0.75, 1.1, 1.6, 1.75, 1.6, 1.05, 0.77, 0.63, 0.56, 0.54])
RETURNING_MULTIPLIER = 1.64   # (c)
# (e): one base rate for every page: a first-time desktop visitor on her first page at the session's
# first moment, not needing help. The level sets the overall mean (about 5 %: the brief).
BASE_RATE = 0.030
# (d): the checkout's own lead over the other pages (assumption, BoldChat gives no figure: without it
# the checkout's mean is third, 0.95x the help pages'; 1.2x puts it first by about 15 %, see above).
CHECKOUT_LEAD = 1.2
PAGE_BASE = np.where(np.array(PAGES) == "Checkout", CHECKOUT_LEAD, 1.0) * BASE_RATE
UNKNOWN_PAGE_BASE = BASE_RATE  # pages outside PAGES (real history): page content is not the driver (e)
# Assumptions (no published figure): answering a chat is a little less attractive on a phone;
DEVICE_MULTIPLIER = np.array([1.0, 0.8, 0.9])
# (e) engagement, the number of viewed pages: +15 % per page viewed before this one, up to +60 % from
# the 5th page on (the size is an assumption; (e) says only that it matters more than the page,
# and it does: 1.6x against the checkout's 1.2x);
PAGES_VIEWED_STEP, PAGES_VIEWED_CAP = 0.15, 5
# a visitor who is struggling is twice as likely to take help (assumption; see needs_help above).
NEEDS_HELP_MULTIPLIER = 2.0
ACCEPT_CAP = 0.6              # assumption: no moment is a sure accept

# How the visitor answers (assumptions): a non-accepting visitor clicks "decline" 40 % of the time
# and ignores the pop-up otherwise; answer delays are log-normal (medians 7 s and 4 s).
DECLINE_SHARE = 0.4
ACCEPT_DELAY = (math.log(7.0), 0.7)
DECLINE_DELAY = (math.log(4.0), 0.9)

# --------------------------------------------------------------------------------------------
# The deployed policy that made the history's offers
# --------------------------------------------------------------------------------------------
# History is what a deployed pcrules logged: a ruleset with a fixed wait per page (the seed API's
# usual use: offer once the visitor has been on the page W seconds), at most one offer per session,
# none for 24 h after a decline, unanswered offers expire after 60 s, the default ruleset's three
# queues and their chat hours (billing 08-20 Mon-Sat, sales 08-22 daily, support around the clock,
# site time), a 10 % holdout of visitors (the control group uplift is measured against), and
# exploration: 10 % of sessions (a keyed hash) get random waits per page over the whole range a tuner
# may choose (``policy.explore``'s default: 0 to 600 s), so every offer carries the probability it was
# made with and the log covers the moments the rules as written never choose (docs/off-policy.md).
# The offers are that ruleset's decisions on the world's events, judged by the backtest (which equals
# the runtime decision by decision), and answered with the events' would-be answers. A few % would be
# a usual exploration share; 10 % gives the 50k-visitor worlds of the benchmarks enough explored sessions.
LEGACY_WAITS = {  # seconds on page before the offer, per page
    "Home": 120, "Bill Payment": 60, "Plans": 90, "Roaming": 90, "Checkout": 60, "Account": 60, "FAQ": 30,
    "Support": 30, "Contact": 30,
}
LEGACY_QUEUE = {"Home": "Sales", "Bill Payment": "Billing", "Plans": "Sales", "Roaming": "Sales", "Checkout": "Sales",
                "Account": "Billing", "FAQ": "Support", "Support": "Support", "Contact": "Support"}
LEGACY_TIMEOUT_S = 60.0
LEGACY_COOLDOWN_S = 86400.0
LEGACY_HOLDOUT = 0.1
LEGACY_EXPLORE = 0.1
_SITE_TZ = "Etc/GMT-1"  # UTC+1 all year: the world's site time (SITE_UTC_OFFSET_S; no daylight saving)
LEGACY_QUEUES: dict[str, dict[str, Any]] = {
    "Billing": {"hours": {"tz": _SITE_TZ, "days": ["mon", "tue", "wed", "thu", "fri", "sat"], "start": "08:00",
                          "end": "20:00"}},
    "Sales": {"hours": {"tz": _SITE_TZ, "start": "08:00", "end": "22:00"}},
    "Support": {},
}


def legacy_spec(explore: float = LEGACY_EXPLORE, holdout: float = LEGACY_HOLDOUT) -> dict[str, Any]:
    """The ruleset that made the history's offers, as a spec dict (``pcrules.load_spec`` takes it)."""
    policy: dict[str, Any] = {"max_offers_per_session": 1, "decline_cooldown_s": LEGACY_COOLDOWN_S,
                              "offer_timeout_s": LEGACY_TIMEOUT_S, "holdout": holdout}
    if explore > 0:
        policy["explore"] = {"share": explore}
    return {
        "name": "legacy", "policy": policy, "queues": {name: dict(q) for name, q in LEGACY_QUEUES.items()},
        "rules": [{"name": f"legacy-{page.lower().replace(' ', '-')}", "when": {"page": page,
                                                                                "seconds_on_page": {"gte": wait}},
                   "offer": {"queue": LEGACY_QUEUE[page]}} for page, wait in LEGACY_WAITS.items()],
    }


def time_multiplier(session_seconds: Any) -> np.ndarray:
    """The ground truth's time-on-SITE factor (1.0 at the session's first moment), BoldChat's (a) and (b):
    a function of ``session_seconds``, not of the time on the page; see the sources above."""
    return np.interp(np.asarray(session_seconds, dtype=float), SITE_TIME_KNOTS_S, SITE_TIME_MULTIPLIER)


def _page_help_prior() -> np.ndarray:
    """P(needs_help | a page view is on this page), exact from the two Markov chains."""
    visits = []
    for helped in (0, 1):
        transient = _MOVES2[helped][:, :-1]
        visits.append(_LANDING2[helped] @ np.linalg.inv(np.eye(len(PAGES)) - transient))
    with_help = NEEDS_HELP_SHARE * visits[1]
    return with_help / (with_help + (1 - NEEDS_HELP_SHARE) * visits[0])


PAGE_HELP_PRIOR = _page_help_prior()


def _codes(values: Any, names: tuple[str, ...]) -> np.ndarray:
    """Strings -> index into `names`, -1 for anything else (unknown page or device, missing)."""
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    flat = np.asarray(values, dtype=object)
    codes = pd.Index(names).get_indexer(flat.ravel()).astype(np.int64)
    return codes.reshape(flat.shape)


def _floats(values: Any) -> np.ndarray:
    """Numbers as a float array; anything missing or not a number -> NaN."""
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        flat = pd.to_numeric(pd.Series(np.ravel(np.asarray(values, dtype=object))), errors="coerce")
        return flat.to_numpy(dtype=float, na_value=np.nan).reshape(np.shape(values))


def _help_posterior(page: np.ndarray, seconds: np.ndarray, device: np.ndarray) -> np.ndarray:
    """P(needs_help | page, still on the page after `seconds`, device) from the page prior and the
    Weibull survival of the dwell with and without help (codes in; unknown page/device -> neutral)."""
    known = page >= 0
    pc = np.where(known, page, 0)
    prior = np.where(known, PAGE_HELP_PRIOR[pc], NEEDS_HELP_SHARE)
    scale = np.where(known, DWELL_MEDIAN_S[pc], 40.0) / _LN2_ROOT
    scale = scale * np.where(device >= 0, DEVICE_DWELL_FACTOR[np.where(device >= 0, device, 0)], 1.0)
    factor = np.where(known, HELP_DWELL_FACTOR[pc], 1.0)
    t = np.maximum(seconds, 0.0)
    # log S(t) = -(t / scale)^k; the ratio S_help / S_plain in log space.
    log_ratio = (t / scale) ** DWELL_SHAPE * (1.0 - factor ** -DWELL_SHAPE)
    odds = prior / (1.0 - prior) * np.exp(np.minimum(log_ratio, 700.0))
    return odds / (1.0 + odds)


def _accept(page: np.ndarray, seconds: np.ndarray, session_seconds: np.ndarray, device: np.ndarray,
            returning: np.ndarray, pages_viewed: np.ndarray, needs_help: np.ndarray | None) -> np.ndarray:
    """P(accept) from codes and floats (see the ground truth above). Time on page enters only through the
    needs_help posterior (when `needs_help` is None); a missing session_seconds falls back to `seconds`."""
    known = page >= 0
    base = np.where(known, PAGE_BASE[np.where(known, page, 0)], UNKNOWN_PAGE_BASE)
    dev = np.where(device >= 0, DEVICE_MULTIPLIER[np.where(device >= 0, device, 0)], 1.0)
    viewed = np.nan_to_num(pages_viewed.astype(float), nan=1.0)
    engaged = 1.0 + PAGES_VIEWED_STEP * (np.clip(viewed, 1, PAGES_VIEWED_CAP) - 1)
    on_site = np.where(np.isnan(session_seconds), seconds, session_seconds)
    p = base * time_multiplier(on_site) * np.where(returning, RETURNING_MULTIPLIER, 1.0) * dev * engaged
    if needs_help is None:
        helped = _help_posterior(page, seconds, device)
        return (helped * np.minimum(p * NEEDS_HELP_MULTIPLIER, ACCEPT_CAP)
                + (1.0 - helped) * np.minimum(p, ACCEPT_CAP))
    return np.minimum(np.where(needs_help, p * NEEDS_HELP_MULTIPLIER, p), ACCEPT_CAP)


def true_accept_probability(page: Any, seconds_on_page: Any, device: Any, returning: Any, pages_viewed: Any,
                            needs_help: Any = None, *, session_seconds: Any) -> Any:
    """The hidden ground truth: P(the visitor accepts an offer made at this moment).

    Vectorised: every argument may be a scalar, a sequence, a numpy array or a pandas Series
    (broadcast together); returns a float for all-scalar input, a Series (on the first Series
    argument's index) when any argument is a Series, else a numpy array.

    * ``page`` — one of :data:`PAGES`. Page content is a minor factor (BoldChat (e)): every page has
      the same base rate but the checkout's, 1.2x (another page gets the common base rate);
    * ``seconds_on_page`` — time on the current page. No factor of its own: it acts only through
      ``needs_help=None`` below (a struggling visitor stays longer on hard pages); with ``needs_help``
      given it changes nothing (it is part of the time on site). A missing ``session_seconds`` falls
      back to it (the visitor has been on the site at least that long);
    * ``device`` — desktop, mobile or tablet (another value is treated as desktop);
    * ``returning`` — bool: a repeat visitor accepts 1.64x as often as a first-time one;
    * ``pages_viewed`` — pages viewed in the session, this one included (+15 % each, up to +60 %);
    * ``needs_help`` — the session's latent state (bool) when known, as in the world's
      ``page_views`` table. ``None`` (default) gives the expectation over it given what the runtime
      can see on this page: the page's share of struggling visitors and how long this visitor has
      stayed on it (a visitor who needs help stays longer on hard pages). That is the oracle a model
      fed with the event's fields should be compared with; it does not use earlier pages of the
      session, nor the time on site, as evidence of needing help;
    * ``session_seconds`` (keyword, required) — time on the SITE: seconds since the session's first
      page enter, the event's ``session_seconds``. The published time effects (2-3 min best, 10-30 s
      worst, see the sources in the module) act on it through :func:`time_multiplier`.
    """
    args = ((page, seconds_on_page, device, returning, pages_viewed, session_seconds)
            + (() if needs_help is None else (needs_help,)))
    index = next((a.index for a in args if isinstance(a, pd.Series)), None)
    scalar = all(np.ndim(a) == 0 for a in args)
    page_c, device_c = _codes(page, PAGES), _codes(device, DEVICES)
    seconds = _floats(seconds_on_page)
    on_site = _floats(session_seconds)
    ret = np.asarray(returning, dtype=bool)
    viewed = _floats(pages_viewed)
    helped = None if needs_help is None else np.asarray(needs_help, dtype=bool)
    arrays = np.broadcast_arrays(page_c, seconds, on_site, device_c, ret, viewed,
                                 *(() if helped is None else (helped,)))
    p = _accept(*arrays[:6], arrays[6] if helped is not None else None)
    if scalar:
        return float(p)
    if index is not None:
        return pd.Series(p, index=index, name="p_accept")
    return p


def needs_help_probability(page: Any, seconds_on_page: Any, device: Any = "desktop") -> np.ndarray:
    """P(needs_help | page, still on it after seconds_on_page, device): what ``needs_help=None`` mixes with."""
    return _help_posterior(_codes(page, PAGES), np.asarray(seconds_on_page, dtype=float), _codes(device, DEVICES))


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

CHUNK_VISITORS = 25_000  # generation works in chunks of visitors (bounded memory, a progress bar)


@dataclass
class World:
    """Generated history: ``events`` (as the runtime sees them, with would-be answers),
    ``page_views`` (for analysis, with the latent ``needs_help``) and the legacy ``offers``."""

    events: pd.DataFrame
    page_views: pd.DataFrame
    offers: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: str | os.PathLike[str], format: str = "parquet",
              parts: int | None = None) -> dict[str, Path]:
        """Write ``events``, ``page_views`` and ``offers`` as ``<name>.parquet`` (zstd) or ``<name>.csv.gz``
        (gzip without a timestamp: the same world gives the same bytes). Each file is written to a
        temporary name and renamed, so a crash never leaves a half-written file. Returns name -> path.
        With `parts` (Parquet only): each table as a folder ``<name>/part=NNN/`` partitioned by visitor
        (:mod:`pcrules.analysis.partitioned`), for a partitioned backtest or off-policy estimate."""
        if format not in ("parquet", "csv.gz"):
            raise ValueError(f"format must be 'parquet' or 'csv.gz', got {format!r}")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        if parts is not None:
            if format != "parquet":
                raise ValueError("a partitioned world is written as Parquet (format='parquet')")
            from .partitioned import write_partitioned

            for name in ("events", "page_views", "offers"):
                write_partitioned(getattr(self, name), out / name, parts)
                paths[name] = out / name
            return paths
        for name in ("events", "page_views", "offers"):
            frame = getattr(self, name)
            path = out / f"{name}.{format}"
            tmp = path.with_name(path.name + ".tmp")
            if format == "parquet":
                frame.to_parquet(tmp, index=False, compression="zstd")
            else:
                write_csv_gz(frame, tmp)
            os.replace(tmp, path)
            paths[name] = path
        return paths

    def summary(self) -> str:
        offers = self.offers
        answered = offers["response"].value_counts()
        n = max(len(offers), 1)
        lines = [
            f"visitors      {self.events['visitor_id'].nunique():>10,}",
            f"sessions      {self.events['session_id'].nunique():>10,}",
            f"page views    {len(self.page_views):>10,}",
            f"events        {len(self.events):>10,}",
            f"legacy offers {len(offers):>10,}",
        ]
        for response in ("accept", "decline", "none"):
            count = int(answered.get(response, 0))
            lines.append(f"  {response:<11} {count:>10,}   ({count / n:.1%})")
        return "\n".join(lines)


def write_csv_gz(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """A frame as gzipped CSV, byte-for-byte reproducible: no timestamp and no file name in the gzip
    header, floats in their shortest round-trip form, missing values as empty fields."""
    with open(path, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as packed, \
            io.TextIOWrapper(packed, encoding="utf-8", newline="") as text:
        frame.to_csv(text, index=False, lineterminator="\n")


def read_world(directory: str | os.PathLike[str]) -> World:
    """Read back what :meth:`World.write` wrote (Parquet or gzipped CSV). For files from elsewhere,
    with checks and a report of bad rows, use :mod:`pcrules.history`."""
    base = Path(directory)
    frames = {}
    for name in ("events", "page_views", "offers"):
        parquet = base / f"{name}.parquet"
        frames[name] = pd.read_parquet(parquet) if parquet.exists() else pd.read_csv(base / f"{name}.csv.gz")
    return World(**frames)


def _start_epoch(start: Any) -> float:
    """`start` (ISO date/time text or a naive datetime in site time, an aware datetime, or epoch seconds)."""
    if isinstance(start, (int, float, np.integer, np.floating)):
        return float(start)
    try:
        moment = datetime.fromisoformat(start) if isinstance(start, str) else start
    except ValueError:
        raise ValueError(f"start: expected an ISO-8601 date such as 2025-11-24, got {start!r}") from None
    if not isinstance(moment, datetime):
        raise TypeError(f"start: expected ISO-8601 text, a datetime or epoch seconds, got {type(start).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone(timedelta(seconds=SITE_UTC_OFFSET_S)))
    return moment.timestamp()


def _categorical(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One draw per row of `weights` (rows: unnormalised probabilities)."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((u[:, None] >= cum).sum(axis=1), weights.shape[1] - 1)


def _chunk(rng: np.random.Generator, n: int, start_ts: float, days: int) -> dict[str, Any]:
    """One chunk of `n` visitors: arrays for page views, events and offers (visitor index local)."""
    # -- visitors -----------------------------------------------------------------------------
    device = rng.choice(len(DEVICES), size=n, p=DEVICE_SHARE)
    rng.integers(0, 3, size=n)  # once the legacy A/B arm; drawn still, so a seed keeps its visitors and paths
    prior_visit = rng.random(n) < PRIOR_VISIT_SHARE
    n_sessions = np.minimum(rng.geometric(SESSIONS_P, size=n), MAX_SESSIONS)
    # -- sessions: start moments, sorted within a visitor ----------------------------------------
    S = int(n_sessions.sum())
    s_visitor = np.repeat(np.arange(n), n_sessions)
    first_day = datetime.fromtimestamp(start_ts + SITE_UTC_OFFSET_S, tz=UTC).weekday()
    day_w = WEEKDAY_TRAFFIC[(first_day + np.arange(days)) % 7]
    day = rng.choice(days, size=S, p=day_w / day_w.sum())
    hour = rng.choice(24, size=S, p=HOURLY_TRAFFIC / HOURLY_TRAFFIC.sum())
    s_start = start_ts + day * 86400.0 + hour * 3600.0 + rng.random(S) * 3600.0
    order = np.lexsort((s_start, s_visitor))
    s_start = s_start[order]  # s_visitor is already sorted; sessions are now in time order per visitor
    first_of_visitor = np.concatenate(([0], np.cumsum(n_sessions)[:-1]))
    s_rank = np.arange(S) - np.repeat(first_of_visitor, n_sessions)
    s_returning = (s_rank > 0) | prior_visit[s_visitor]
    s_help = rng.random(S) < NEEDS_HELP_SHARE
    s_device = device[s_visitor]

    # -- page paths: a Markov chain with an exit state ---------------------------------------------
    exit_state = len(PAGES)
    steps_session, steps_page, steps_index = [], [], []
    current = _categorical(rng, _LANDING2[s_help.astype(int)])
    active = np.arange(S)
    for step in range(MAX_PAGES):
        steps_session.append(active)
        steps_page.append(current)
        steps_index.append(np.full(len(active), step))
        nxt = _categorical(rng, _MOVES2[s_help[active].astype(int), current])
        keep = nxt != exit_state
        active, current = active[keep], nxt[keep]
        if not len(active):
            break
    pv_session = np.concatenate(steps_session)
    pv_page = np.concatenate(steps_page)
    pv_step = np.concatenate(steps_index)
    order = np.lexsort((pv_step, pv_session))
    pv_session, pv_page, pv_step = pv_session[order], pv_page[order], pv_step[order]
    P = len(pv_session)
    pv_help = s_help[pv_session]
    pv_device = s_device[pv_session]

    # -- dwell (Weibull, shape < 1) and page-enter offsets within the session -----------------------
    median = (DWELL_MEDIAN_S[pv_page] * np.where(pv_help, HELP_DWELL_FACTOR[pv_page], 1.0)
              * DEVICE_DWELL_FACTOR[pv_device])
    dwell = median / _LN2_ROOT * rng.standard_exponential(P) ** (1.0 / DWELL_SHAPE)
    dwell = np.round(np.clip(dwell, MIN_DWELL_S, MAX_DWELL_S), 3)
    gap = np.round(rng.uniform(1.0, 5.0, size=P), 3)  # navigation / page load between page views
    span = dwell + gap
    total = np.cumsum(span)
    session_first_pv = np.flatnonzero(pv_step == 0)
    before = np.repeat(total[session_first_pv] - span[session_first_pv], np.diff(np.append(session_first_pv, P)))
    offset = total - span - before  # page enter, seconds after the session's first page
    s_duration = np.zeros(S)
    np.maximum.at(s_duration, pv_session, offset + dwell)
    # A visitor's sessions do not overlap: push a session after the previous one's end + 30 min.
    for rank in range(1, MAX_SESSIONS):
        idx = np.flatnonzero(s_rank == rank)
        if not len(idx):
            break
        s_start[idx] = np.maximum(s_start[idx], s_start[idx - 1] + s_duration[idx - 1] + MIN_SESSION_GAP_S)
    s_start = np.round(s_start, 3)
    enter = s_start[pv_session] + offset

    # -- observation events: page enter and the re-checks the visitor stays for ----------------------
    n_checks = np.searchsorted(RECHECKS, dwell, side="right")
    E = int(n_checks.sum())
    ev_pv = np.repeat(np.arange(P), n_checks)
    ev_first = np.concatenate(([0], np.cumsum(n_checks)[:-1]))
    at = RECHECKS[np.arange(E) - np.repeat(ev_first, n_checks)]
    ev_session = pv_session[ev_pv]
    ev_page = pv_page[ev_pv]
    ev_device = pv_device[ev_pv]
    ev_returning = s_returning[ev_session]
    ev_viewed = pv_step[ev_pv] + 1
    ev_ts = np.round(enter[ev_pv] + at, 3)
    ev_session_s = np.round(offset[ev_pv] + at, 3)

    # -- would-be answers, from the truth with the session's real needs_help -------------------------
    p = _accept(ev_page, at, ev_session_s, ev_device, ev_returning, ev_viewed, pv_help[ev_pv])
    u = rng.random(E)
    accept = u < p
    decline = ~accept & (u < p + (1.0 - p) * DECLINE_SHARE)
    delay = np.where(accept, rng.lognormal(*ACCEPT_DELAY, size=E), rng.lognormal(*DECLINE_DELAY, size=E))
    delay = np.where(accept | decline, np.maximum(np.round(delay, 1), 0.1), np.nan)
    response = np.where(accept, 1, np.where(decline, 2, 0))  # 0 no answer, 1 accept, 2 decline

    return {
        "n": n, "s_visitor": s_visitor, "s_start": s_start,
        "pv": dict(session=pv_session, step=pv_step, page=pv_page, enter=np.round(enter, 3), dwell=dwell,
                   device=pv_device, returning=s_returning[pv_session], help=pv_help),
        "ev": dict(session=ev_session, ts=ev_ts, page=ev_page, at=at, viewed=ev_viewed, session_s=ev_session_s,
                   device=ev_device, returning=ev_returning, response=response, delay=delay),
    }


def logged_offers(events: pd.DataFrame, spec: Any) -> pd.DataFrame:
    """The offers `spec` shows on `events` (holdout visitors' would-be offers withheld), answered with the
    events' would-be answers: what the decision log and its outcomes hold, one row per offer."""
    from .backtest import backtest

    result = backtest(spec, events, exploration_cost=False)
    shown = result.offers[~result.offers["holdout"].to_numpy(dtype=bool)]
    rows = shown.index
    out = events.loc[rows, ["ts", "visitor_id", "session_id", "page", "seconds_on_page", "pages_viewed",
                            "session_seconds", "device", "returning"]].reset_index(drop=True)
    decided = result.decisions.loc[rows]
    out["rule"] = _text_column(decided["rule"].astype(object).to_numpy())
    out["explored"] = decided["explored"].to_numpy(dtype=bool)
    out["propensity"] = decided["propensity"].to_numpy(dtype=float)
    status = decided["outcome"].astype(object).to_numpy()
    out["response"] = _text_column(np.where(status == "accepted", "accept",
                                            np.where(status == "declined", "decline", "none")).astype(object))
    delay = decided["answered_at"].to_numpy(dtype=float) - out["ts"].to_numpy(dtype=float)
    out["response_delay_s"] = np.where(status == "expired", np.nan, np.round(delay, 1))
    return out


def _text_column(values: np.ndarray) -> Any:
    """An object array of str/None as a text column: pandas' default string dtype ("str", NaN for
    missing) on pandas 3, plain object (None) on pandas 2, where "str" would turn None into 'None'."""
    return pd.array(values, dtype="str") if _PANDAS3 else values


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in numbers.tolist()], dtype=object)


def generate(visitors: int = 10_000, seed: int = 0, start: Any = DEFAULT_START, days: int = 7,
             progress: bool = False) -> World:
    """Generate a world of `visitors` visitors over `days` days from `start` (site time, UTC+1).

    Deterministic: the same arguments give equal frames. About 16 events per visitor, so
    ``visitors=62_500`` gives roughly a million events (a few seconds).
    """
    if visitors < 1 or days < 1:
        raise ValueError("visitors and days must be >= 1")
    start_ts = _start_epoch(start)
    children = np.random.SeedSequence(seed).spawn(math.ceil(visitors / CHUNK_VISITORS))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=visitors, unit="visitor", desc="world", mininterval=0.3)
    chunks = []
    for k, child in enumerate(children):
        n = min(CHUNK_VISITORS, visitors - k * CHUNK_VISITORS)
        chunks.append(_chunk(np.random.Generator(np.random.PCG64(child)), n, start_ts, days))
        if bar is not None:
            bar.update(n)

    # Global numbering: visitors and sessions across chunks.
    width = max(6, len(str(visitors - 1)))
    visitor_base = np.cumsum([0] + [c["n"] for c in chunks[:-1]])
    session_base = np.cumsum([0] + [len(c["s_visitor"]) for c in chunks[:-1]])
    s_visitor = np.concatenate([c["s_visitor"] + b for c, b in zip(chunks, visitor_base)])
    visitor_ids = _ids("v", np.arange(visitors), width)
    s_rank = np.arange(len(s_visitor)) - np.searchsorted(s_visitor, s_visitor, side="left")
    session_ids = np.array([f"{v}-s{r}" for v, r in zip(visitor_ids[s_visitor].tolist(), s_rank.tolist())],
                           dtype=object)

    def cat(part: str, key: str, shift: np.ndarray | None = None) -> np.ndarray:
        arrays = [c[part][key] for c in chunks]
        if shift is not None:
            arrays = [a + b for a, b in zip(arrays, shift)]
        return np.concatenate(arrays)

    pages = np.array(PAGES, dtype=object)
    devices = np.array(DEVICES, dtype=object)

    ev_session = cat("ev", "session", session_base)
    ev_ts = cat("ev", "ts")
    order = np.lexsort((np.arange(len(ev_ts)), ev_ts))  # by time; ties in generation order
    ev_session = ev_session[order]
    response_code = cat("ev", "response")[order]
    events = pd.DataFrame({
        "ts": ev_ts[order],
        "visitor_id": _text_column(visitor_ids[s_visitor[ev_session]]),
        "session_id": _text_column(session_ids[ev_session]),
        "page": _text_column(pages[cat("ev", "page")[order]]),
        "seconds_on_page": cat("ev", "at")[order],
        "pages_viewed": cat("ev", "viewed")[order].astype(np.int64),
        "session_seconds": cat("ev", "session_s")[order],
        "device": _text_column(devices[cat("ev", "device")[order]]),
        "returning": cat("ev", "returning")[order],
        "response": _text_column(np.array([None, "accept", "decline"], dtype=object)[response_code]),
        "response_delay_s": cat("ev", "delay")[order],
    })

    pv_session = cat("pv", "session", session_base)
    page_views = pd.DataFrame({
        "visitor_id": _text_column(visitor_ids[s_visitor[pv_session]]),
        "session_id": _text_column(session_ids[pv_session]),
        "pages_viewed": cat("pv", "step").astype(np.int64) + 1,
        "page": _text_column(pages[cat("pv", "page")]),
        "enter_ts": cat("pv", "enter"),
        "dwell_s": cat("pv", "dwell"),
        "device": _text_column(devices[cat("pv", "device")]),
        "returning": cat("pv", "returning"),
        "needs_help": cat("pv", "help"),
    })
    pv_order = np.lexsort((np.arange(len(page_views)), page_views["enter_ts"].to_numpy()))
    page_views = page_views.iloc[pv_order].reset_index(drop=True)

    offers = logged_offers(events, legacy_spec())
    if bar is not None:
        bar.close()
    config = {"visitors": visitors, "seed": seed, "start": start_ts, "days": days}
    return World(events=events, page_views=page_views, offers=offers, config=config)


def generate_partitioned(directory: str | os.PathLike[str], visitors: int, parts: int, *, seed: int = 0,
                         start: Any = DEFAULT_START, days: int = 7, chunk_visitors: int = 62_500,
                         tables: tuple[str, ...] = ("events", "offers"), truth: bool = False,
                         workers: int | None = None, compact_parts: bool = True,
                         progress: bool = False) -> dict[str, int]:
    """A world too large for memory, written straight to ``<directory>/<table>/part=NNN/`` (partitioned by
    visitor, zstd Parquet) chunk by chunk: chunk ``k`` is ``generate(chunk_visitors, seed=[seed, k])`` with its
    ids prefixed ``c<k>-`` (so ids are unique), over the same days; memory is that of one chunk per worker
    (``workers`` processes, default the cores). Not the same draws as ``generate(visitors)`` in one piece: a
    concatenation of independently seeded worlds. Each partition is then rewritten as one file in time order
    (``compact_parts``; :func:`pcrules.analysis.partitioned.compact`). `truth`: add the events' true
    ``p_accept`` and the goal effects ``gain_if_accepted`` / ``loss_if_not_accepted`` (:func:`event_effects`).
    Returns rows per table."""
    from .partitioned import compact, run_partitions

    if visitors < 1 or parts < 1 or chunk_visitors < 1:
        raise ValueError("visitors, parts and chunk_visitors must be >= 1")
    unknown = set(tables) - {"events", "offers", "page_views"}
    if unknown:
        raise ValueError(f"tables: unknown {sorted(unknown)}")
    n_chunks = math.ceil(visitors / chunk_visitors)
    chunks = [(k, min(chunk_visitors, visitors - k * chunk_visitors)) for k in range(n_chunks)]
    options = {"directory": str(directory), "parts": parts, "seed": seed, "start": start, "days": days,
               "tables": tables, "truth": truth}
    counts = run_partitions(_write_chunk, chunks, options, engine="processes", workers=workers, progress=progress,
                            desc="world")
    if compact_parts:
        for name in tables:
            compact(Path(directory) / name, workers=workers, progress=progress)
    return {t: sum(c[t] for c in counts) for t in tables}


def _write_chunk(chunk: tuple[int, int], options: Mapping[str, Any]) -> dict[str, int]:
    from .partitioned import write_partitioned

    k, n = chunk
    world = generate(visitors=n, seed=int(np.random.SeedSequence([options["seed"], k]).generate_state(1)[0]),
                     start=options["start"], days=options["days"])
    frames = {"events": world.events, "offers": world.offers, "page_views": world.page_views}
    if options["truth"]:
        effects = event_effects(world)
        events = world.events
        for column in ("p_accept", "gain_if_accepted", "loss_if_not_accepted"):
            events[column] = effects[column].to_numpy()
    prefix = f"c{k:05d}-"
    out = {}
    for name in options["tables"]:
        frame = frames[name]
        for column in ("visitor_id", "session_id"):
            frame[column] = _text_column((prefix + frame[column].astype(object)).to_numpy(dtype=object))
        write_partitioned(frame, Path(options["directory"]) / name, options["parts"],
                          file_name=f"chunk-{k:05d}.parquet")
        out[name] = len(frame)
    return out


# --------------------------------------------------------------------------------------------
# Business outcomes (goals) and the causal effect of a chat
# --------------------------------------------------------------------------------------------
#
# Separate from `generate()` on purpose: the events, page views and legacy offers (and so the shipped
# sample) do not change. Goals are drawn from their own random stream, seeded by the world's seed.
#
# The model (every number an assumption of this synthetic world, chosen to be plausible and to make
# targeting matter; none is a published figure):
#
# * Each session has at most one goal, its *task*: the goal of the first page of the session that
#   belongs to a task (PAGE_GOAL). Bill Payment and Account -> `bill_paid`; Plans, Roaming and
#   Checkout -> `plan_bought`; FAQ, Support and Contact -> `call_avoided` (the visitor found what
#   she needed and does not phone). A session that only sees Home has no goal and never converts.
# * Without any offer the session converts with GOAL_BASE[goal][needs_help]: a visitor who is
#   struggling converts about half as often.
# * Offers change that probability p, in the order they were made in the session:
#     accepted chat:          p -> p + lift * (1 - p)   lift = ACCEPT_LIFT[page of the offer][needs_help]:
#                                                        the chat rescues that share of the sessions that
#                                                        would not have converted; large for a struggling
#                                                        visitor on a hard page (Bill Payment, Support),
#                                                        small for one who is fine (so targeting matters);
#     declined offer:         p -> p * (1 - DECLINE_COST)   annoyance: that share of would-be conversions is lost;
#     ignored / expired offer: p -> p * (1 - IGNORE_COST)
#   A would-be offer withheld from a holdout visitor changes nothing (she never saw it).
# * The goal happens at the end of its session (the last page's exit), if at all: the session
#   converts iff its uniform draw `u` (fixed per session, common to every policy replayed on the
#   world: common random numbers) is below its final probability.
# * The experiment's unit is the visitor (the holdout is stable per visitor): a visitor converts iff
#   one of her sessions' goals happens within the attribution window that starts at her first
#   eligible decision (her first offer or would-be offer), as pcrules.uplift counts it.

GOAL_NAMES: tuple[str, ...] = ("bill_paid", "plan_bought", "call_avoided")
PAGE_GOAL: dict[str, str] = {
    "Bill Payment": "bill_paid", "Account": "bill_paid",
    "Plans": "plan_bought", "Roaming": "plan_bought", "Checkout": "plan_bought",
    "FAQ": "call_avoided", "Support": "call_avoided", "Contact": "call_avoided",
}  # Home: no task
# P(goal | no offer), (visitor is fine, visitor needs help).
GOAL_BASE: dict[str, tuple[float, float]] = {
    "bill_paid": (0.60, 0.30),
    "plan_bought": (0.12, 0.06),
    "call_avoided": (0.75, 0.35),
}
# Share of would-be non-converters an accepted chat converts, by the page the offer was made on:
#                                     fine   needs help
ACCEPT_LIFT: dict[str, tuple[float, float]] = {
    "Home": (0.02, 0.10),
    "Bill Payment": (0.05, 0.45),
    "Plans": (0.05, 0.20),
    "Roaming": (0.05, 0.25),
    "Checkout": (0.10, 0.30),
    "Account": (0.03, 0.30),
    "FAQ": (0.05, 0.40),
    "Support": (0.05, 0.50),
    "Contact": (0.05, 0.40),
}
UNKNOWN_PAGE_LIFT = (0.02, 0.10)  # a page outside PAGES: like Home
DECLINE_COST = 0.03   # share of would-be conversions lost when the visitor declines the offer
IGNORE_COST = 0.01    # ... when she lets it expire
GOAL_STREAM = 0x60A15  # the goals' random stream: SeedSequence([seed, GOAL_STREAM])
DEFAULT_WINDOW_S = 86400.0  # attribution window (as pcrules.uplift.DEFAULT_WINDOW_S)


@dataclass(frozen=True, eq=False)
class GoalModel:
    """How goals convert and how offers change that (see the module notes above). The default instance
    :data:`GOALS` uses the documented constants; :meth:`without_effect` gives a world where offers change
    nothing (the true uplift of every policy is exactly 0), :meth:`scaled` a stronger or weaker effect."""

    base: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(GOAL_BASE))
    accept_lift: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(ACCEPT_LIFT))
    decline_cost: float = DECLINE_COST
    ignore_cost: float = IGNORE_COST
    unknown_page_lift: tuple[float, float] = UNKNOWN_PAGE_LIFT
    page_goal: Mapping[str, str] = field(default_factory=lambda: dict(PAGE_GOAL))

    def __post_init__(self) -> None:
        pairs = [*self.base.items(), *self.accept_lift.items(), ("unknown_page_lift", self.unknown_page_lift)]
        for name, pair in pairs:
            if len(pair) != 2 or not all(0.0 <= x <= 1.0 for x in pair):
                raise ValueError(f"{name}: expected (fine, needs_help) probabilities in [0, 1], got {pair!r}")
        for name in ("decline_cost", "ignore_cost"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a share in [0, 1], got {getattr(self, name)!r}")
        unknown = set(self.page_goal.values()) - set(self.base)
        if unknown:
            raise ValueError(f"page_goal names goals without a base rate: {sorted(unknown)}")

    def without_effect(self) -> GoalModel:
        """The same goals and base rates; offers (accepted, declined or ignored) change nothing."""
        return self.scaled(0.0, 0.0)

    def scaled(self, lift: float = 1.0, cost: float = 1.0) -> GoalModel:
        """Every accept lift times `lift` (capped at 1) and both annoyance costs times `cost`."""
        def cap(pair: tuple[float, float]) -> tuple[float, float]:
            return (min(pair[0] * lift, 1.0), min(pair[1] * lift, 1.0))

        return GoalModel(base=dict(self.base), accept_lift={k: cap(v) for k, v in self.accept_lift.items()},
                         decline_cost=min(self.decline_cost * cost, 1.0), ignore_cost=min(self.ignore_cost * cost, 1.0),
                         unknown_page_lift=cap(self.unknown_page_lift), page_goal=dict(self.page_goal))

    def lift(self, page: Any, needs_help: Any) -> np.ndarray:
        """Vectorised ACCEPT_LIFT[page][needs_help]."""
        pages = np.asarray(page, dtype=object)
        table = np.array([self.accept_lift.get(p, self.unknown_page_lift) for p in pages.ravel()], dtype=float)
        table = table.reshape(pages.shape + (2,)) if pages.ndim else table.reshape(2)
        helped = np.asarray(needs_help, dtype=bool)
        return np.where(helped, table[..., 1], table[..., 0])

    def base_rate(self, goal: Any, needs_help: Any) -> np.ndarray:
        """Vectorised GOAL_BASE[goal][needs_help]; 0 for a missing goal."""
        goals = np.asarray(goal, dtype=object)
        table = np.array([self.base.get(g, (0.0, 0.0)) if isinstance(g, str) else (0.0, 0.0) for g in goals.ravel()],
                         dtype=float)
        table = table.reshape(goals.shape + (2,)) if goals.ndim else table.reshape(2)
        return np.where(np.asarray(needs_help, dtype=bool), table[..., 1], table[..., 0])


GOALS = GoalModel()
NO_EFFECT = GOALS.without_effect()

SESSION_GOAL_COLUMNS = ("visitor_id", "session_id", "goal", "goal_ts", "needs_help", "base_p", "u")


def session_goals(world: World, model: GoalModel = GOALS, seed: int | None = None) -> pd.DataFrame:
    """One row per session of `world`: its goal (None when it has no task), when the goal would happen
    (``goal_ts``: the session's last page exit), the latent ``needs_help``, the conversion probability
    without offers (``base_p``) and the session's uniform draw ``u`` (converts iff ``u`` < probability).

    Deterministic: the draws come from ``SeedSequence([seed, GOAL_STREAM])`` in ``session_id`` order,
    `seed` defaulting to the world's own (``world.config["seed"]``; pass it for a world read from files).
    Sorted by ``session_id``.
    """
    if seed is None:
        if "seed" not in world.config:
            raise ValueError("seed: this world has no config['seed'] (read from files?); "
                             "pass the seed it was generated with")
        seed = int(world.config["seed"])
    out = _session_tasks(world, model)
    rng = np.random.default_rng(np.random.SeedSequence([seed, GOAL_STREAM]))
    out["u"] = rng.random(len(out))
    return out


def _session_tasks(world: Any, model: GoalModel) -> pd.DataFrame:
    """:func:`session_goals` without the draw ``u`` (needs no seed): one row per session, by ``session_id``.
    `world`: anything with the world's ``page_views`` (a :class:`World`, an ``analysis.History``)."""
    codes, _ = pd.factorize(world.page_views["session_id"].to_numpy(dtype=object), sort=True)
    pv = world.page_views.iloc[np.lexsort((world.page_views["pages_viewed"].to_numpy(), codes))]
    sid = pv["session_id"].to_numpy(dtype=object)
    first = np.r_[True, sid[1:] != sid[:-1]]
    starts = np.flatnonzero(first)
    task = pd.Series(pv["page"].to_numpy(dtype=object)).map(dict(model.page_goal)).to_numpy(dtype=object)
    has_task = np.array([isinstance(t, str) for t in task])
    # First task page per session: position of the first True at or after each session start.
    group = np.cumsum(first) - 1
    cand = np.flatnonzero(has_task)
    first_task = np.full(len(starts), -1)
    if len(cand):
        uniq, idx = np.unique(group[cand], return_index=True)
        first_task[uniq] = cand[idx]
    goal = np.where(first_task >= 0, task[np.maximum(first_task, 0)], None)
    end = pv["enter_ts"].to_numpy() + pv["dwell_s"].to_numpy()
    goal_ts = np.round(np.maximum.reduceat(end, starts), 3) if len(starts) else np.array([])
    helped = pv["needs_help"].to_numpy(dtype=bool)[starts]
    return pd.DataFrame({
        "visitor_id": _text_column(pv["visitor_id"].to_numpy(dtype=object)[starts]),
        "session_id": _text_column(sid[starts]),
        "goal": _text_column(goal.astype(object)),
        "goal_ts": goal_ts,
        "needs_help": helped,
        "base_p": model.base_rate(goal, helped),
    })


def _eligible_offers(world: World, decisions: pd.DataFrame) -> pd.DataFrame:
    """Offers and would-be offers in `decisions`, joined with the world's event at which each was made.

    `decisions` needs ``session_id`` and ``ts``; optional: ``visitor_id``, ``action`` and ``reason``
    (then only offers and holdout would-be offers are kept), ``holdout`` (truthy: a would-be offer),
    ``expires_at`` (else a 60 s timeout), ``status`` (accepted / declined / expired) or ``response``
    (accept / decline / none) to use instead of the world's would-be answer, ``rule``, ``queue``.
    """
    if not isinstance(decisions, pd.DataFrame):
        decisions = pd.DataFrame(list(decisions) if not isinstance(decisions, Mapping) else decisions)
    missing = [c for c in ("session_id", "ts") if c not in decisions.columns]
    if missing:
        raise ValueError(f"decisions: missing column(s) {missing}")
    d = decisions
    if "action" in d.columns:
        holdout_rows = (d["holdout"].fillna(0).astype(bool) if "holdout" in d.columns
                        else d.get("reason", pd.Series(None, index=d.index)).eq("holdout"))
        d = d[d["action"].astype(object).eq("offer") | holdout_rows]
    d = d.copy()
    d["holdout"] = d["holdout"].fillna(0).astype(bool) if "holdout" in d.columns else False
    d["ts"] = d["ts"].astype(float)
    d["session_id"] = d["session_id"].astype(object)
    events = world.events
    ev = events.loc[events["session_id"].isin(d["session_id"].unique()),
                    ["session_id", "ts", "page", "response", "response_delay_s"]]
    ev = ev.assign(session_id=ev["session_id"].astype(object))
    ev = ev.rename(columns={"page": "_page", "response": "_response", "response_delay_s": "_delay"})
    out = d.merge(ev, on=["session_id", "ts"], how="left")  # (session_id, ts) is unique in a world
    lost = out["_page"].isna()
    if lost.any():
        first = out.loc[lost, ["session_id", "ts"]].iloc[0].tolist()
        raise ValueError(f"decisions: {int(lost.sum())} offer(s) are not events of this world, e.g. {first}")
    out["page"] = out["_page"].astype(object)
    if "visitor_id" not in out.columns:
        owner = world.page_views.drop_duplicates("session_id").set_index("session_id")["visitor_id"]
        out["visitor_id"] = out["session_id"].map(owner)
    out["visitor_id"] = out["visitor_id"].astype(object)
    expires = out["expires_at"].astype(float) if "expires_at" in out.columns else out["ts"] + LEGACY_TIMEOUT_S
    expires = expires.fillna(out["ts"] + LEGACY_TIMEOUT_S)
    delay = out["_delay"].astype(float)
    answered = out["_response"].notna() & (out["ts"] + delay < expires)  # as pcrules.replay delivers answers
    world_answer = np.where(answered, out["_response"].astype(object), "none")
    given = None
    if "status" in out.columns:
        given = out["status"].map({"accepted": "accept", "declined": "decline", "expired": "none"})
    elif "response" in out.columns:
        given = out["response"].map({"accept": "accept", "decline": "decline", "none": "none"})
    answer = pd.Series(world_answer, index=out.index, dtype=object)
    if given is not None:
        answer = given.astype(object).where(given.notna(), answer)
    out["answer"] = answer.to_numpy(dtype=object)
    out["answer_ts"] = np.where(answered, out["ts"] + delay, expires)
    for column in ("rule", "queue"):
        if column not in out.columns:
            out[column] = None
    keep = ["visitor_id", "session_id", "ts", "page", "holdout", "rule", "queue", "answer", "answer_ts"]
    return out[keep].sort_values(["ts", "session_id"], kind="stable").reset_index(drop=True)


def _simulate_withheld(offers: pd.DataFrame, decline_cooldown_s: float) -> pd.DataFrame:
    """For holdout visitors: the would-be offers the visitor would really have had, answered as the
    world says. Up to the first answer they are the same; after a decline, offers within the cooldown
    would not have been made, and after an accept none in that session (the visitor is in chat)."""
    if not len(offers):
        return offers
    keep = np.ones(len(offers), dtype=bool)
    last_decline: dict[str, float] = {}
    in_chat: set[str] = set()
    for i, (visitor, session, ts, answer, answer_ts) in enumerate(
            offers[["visitor_id", "session_id", "ts", "answer", "answer_ts"]].itertuples(index=False, name=None)):
        if session in in_chat or ts < last_decline.get(visitor, -math.inf) + decline_cooldown_s:
            keep[i] = False
            continue
        if answer == "decline":
            last_decline[visitor] = answer_ts
        elif answer == "accept":
            in_chat.add(session)
    return offers[keep]


def _session_probability(goals: pd.DataFrame, offers: pd.DataFrame, model: GoalModel, expected: bool,
                         p_accept: np.ndarray | None = None) -> pd.Series:
    """Each session's conversion probability after `offers` (index: session_id)."""
    p = pd.Series(goals["base_p"].to_numpy(), index=goals["session_id"].to_numpy(dtype=object))
    if not len(offers):
        return p
    has_goal = pd.Series(goals["goal"].notna().to_numpy(), index=p.index)
    helped = pd.Series(goals["needs_help"].to_numpy(), index=p.index)
    sessions = offers["session_id"].to_numpy(dtype=object)
    lift = model.lift(offers["page"].to_numpy(dtype=object),
                      helped.reindex(sessions, fill_value=False).to_numpy(dtype=bool))
    values = p.to_dict()
    goal_of = has_goal.to_dict()
    answers = offers["answer"].to_numpy(dtype=object)
    for i, session in enumerate(sessions):  # in time order: the maps do not commute
        if not goal_of.get(session, False):
            continue
        q = values[session]
        if expected:
            pa = float(p_accept[i])
            pd_ = (1.0 - pa) * DECLINE_SHARE
            q = q + pa * lift[i] * (1.0 - q) - pd_ * model.decline_cost * q - (1.0 - pa - pd_) * model.ignore_cost * q
        elif answers[i] == "accept":
            q = q + lift[i] * (1.0 - q)
        elif answers[i] == "decline":
            q = q * (1.0 - model.decline_cost)
        else:
            q = q * (1.0 - model.ignore_cost)
        values[session] = q
    return pd.Series(values)


def _offer_accept_probability(world: World, offers: pd.DataFrame, goals: pd.DataFrame) -> np.ndarray:
    cols = ["session_id", "ts", "seconds_on_page", "session_seconds", "pages_viewed", "device", "returning"]
    ev = world.events.loc[world.events["session_id"].isin(offers["session_id"].unique()), cols]
    ev = ev.assign(session_id=ev["session_id"].astype(object))
    at = offers[["session_id", "ts", "page"]].merge(ev, on=["session_id", "ts"], how="left")
    helped = at["session_id"].map(goals.set_index("session_id")["needs_help"]).eq(True).to_numpy()
    return np.asarray(true_accept_probability(at["page"].to_numpy(dtype=object), at["seconds_on_page"].to_numpy(),
                                              at["device"].to_numpy(dtype=object), at["returning"].to_numpy(dtype=bool),
                                              at["pages_viewed"].to_numpy(), helped,
                                              session_seconds=at["session_seconds"].to_numpy()), dtype=float)


def draw_goals(world: World, decisions: pd.DataFrame, model: GoalModel = GOALS,
               seed: int | None = None) -> pd.DataFrame:
    """The goals that happen in `world` when a policy made `decisions`: what a replay reports through
    ``Runtime.record_goal``. Columns ``visitor_id, session_id, goal, ts``, sorted by ``ts``; every session of
    the world with a goal is included (eligible or not), as a live site reports every conversion.

    `decisions` as in :func:`true_uplift` (e.g. the decision log's ``decisions`` rows, or a backtest's
    offers). Only real offers act (a holdout visitor's would-be offer was never shown); each is answered
    as its ``status`` / ``response`` column says, else as the world's would-be answer at that event.
    """
    goals = session_goals(world, model, seed)
    offers = _eligible_offers(world, decisions)
    p = _session_probability(goals, offers[~offers["holdout"]], model, expected=False)
    converted = goals["u"].to_numpy() < p.reindex(goals["session_id"].to_numpy(dtype=object)).to_numpy()
    out = goals.loc[converted & goals["goal"].notna().to_numpy(), ["visitor_id", "session_id", "goal", "goal_ts"]]
    return out.rename(columns={"goal_ts": "ts"}).sort_values(["ts", "session_id"], kind="stable").reset_index(drop=True)


def report_goals(runtime: Any, goals: pd.DataFrame) -> int:
    """Report each row of :func:`draw_goals` through ``runtime.record_goal``; returns how many."""
    n = 0
    rows = goals[["visitor_id", "session_id", "goal", "ts"]].itertuples(index=False, name=None)
    for visitor, session, goal, ts in rows:
        runtime.record_goal(str(visitor), str(session), str(goal), ts=float(ts))
        n += 1
    return n


@dataclass(frozen=True, eq=False)
class TrueUplift:
    """The true intention-to-treat effect of a policy on a world (see :func:`true_uplift`)."""

    itt: float                  # mean over eligible visitors of P(goal | offered) - P(goal | withheld)
    rate_offered: float         # mean P(goal) of the eligible visitors, all offered
    rate_withheld: float        # mean P(goal) of the eligible visitors, all withheld
    n_visitors: int             # eligible visitors (both arms)
    # one row per eligible visitor: first_ts, holdout, rule, page, queue, p_offered, p_withheld, effect
    visitors: pd.DataFrame

    def by(self, column: str) -> pd.DataFrame:
        """True ITT per rule / page / queue (of the visitor's first eligible decision)."""
        g = self.visitors.groupby(column, dropna=False)
        return pd.DataFrame({"itt": g["effect"].mean(), "visitors": g.size(),
                             "rate_offered": g["p_offered"].mean(), "rate_withheld": g["p_withheld"].mean()})


def true_uplift(world: World, decisions: pd.DataFrame, model: GoalModel = GOALS, *, window_s: float = DEFAULT_WINDOW_S,
                goals: Any = None, answers: str = "world", decline_cooldown_s: float = LEGACY_COOLDOWN_S,
                seed: int | None = None) -> TrueUplift:
    """The TRUE intention-to-treat uplift of the policy that made `decisions` on `world`.

    For each eligible visitor (one with an offer or, in the holdout, a would-be offer; her first one at
    ``first_ts``): ``effect = P(goal | offered) - P(goal | withheld)``, where a visitor has the goal when
    one of her sessions' goals (of the names in `goals`; all by default) happens within
    ``[first_ts, first_ts + window_s]``, and the probabilities follow `model` (exact: sessions are
    independent given the world). The ITT is the mean effect over eligible visitors of both arms: what
    ``pcrules.uplift`` estimates from the log (same unit, anchor and window).

    * ``P(goal | offered)`` uses the visitor's offers: for an offered visitor those in `decisions`; for
      a holdout visitor her would-be offers, minus those the policy would not have made after her
      (world-drawn) answers: within ``decline_cooldown_s`` of a decline, or later in a session where she
      accepted. (Remaining approximation: with ``max_offers_per_session`` > 1 an answered offer frees
      the session earlier than a would-be offer, which stays pending until its time-out.)
    * ``answers="world"`` (default) answers each offer as the world's would-be answer at that event
      (what a replay plays back): the truth for *this* world. ``answers="expected"`` averages over the
      answer instead (true P(accept) with the session's real needs_help; 40 % of the rest decline),
      offers treated independently (no cooldown simulation): the policy's expected effect.

    `decisions`: a DataFrame (or records) with ``session_id`` and ``ts`` of each offer, e.g. the
    decision log's ``decisions`` table (rows other than offers and holdout would-be offers are ignored);
    see :func:`draw_goals` for the optional columns.
    """
    if answers not in ("world", "expected"):
        raise ValueError(f"answers must be 'world' or 'expected', got {answers!r}")
    sg = session_goals(world, model, seed)
    if goals is not None:
        wanted = {goals} if isinstance(goals, str) else set(goals)
        sg = sg.assign(goal=sg["goal"].where(sg["goal"].isin(wanted)),
                       base_p=np.where(sg["goal"].isin(wanted), sg["base_p"], 0.0))
    offers = _eligible_offers(world, decisions)
    columns = ["visitor_id", "first_ts", "holdout", "rule", "page", "queue", "p_offered", "p_withheld", "effect"]
    if not len(offers):
        return TrueUplift(0.0, math.nan, math.nan, 0, pd.DataFrame(columns=columns))
    first = offers.drop_duplicates("visitor_id", keep="first").set_index("visitor_id")
    withheld_visitor = offers["visitor_id"].map(first["holdout"]).to_numpy(dtype=bool)
    if answers == "world":
        acting = pd.concat([offers[~withheld_visitor & ~offers["holdout"].to_numpy(dtype=bool)],
                            _simulate_withheld(offers[withheld_visitor], decline_cooldown_s)])
        acting = acting.sort_values(["ts", "session_id"], kind="stable")
        p1 = _session_probability(sg, acting, model, expected=False)
    else:
        acting = offers
        p1 = _session_probability(sg, acting, model, expected=True,
                                  p_accept=_offer_accept_probability(world, acting, sg))
    p0 = pd.Series(sg["base_p"].to_numpy(), index=sg["session_id"].to_numpy(dtype=object))
    # Each eligible visitor's sessions whose goal falls in her window.
    sess = sg[["visitor_id", "session_id", "goal_ts"]].copy()
    sess["visitor_id"] = sess["visitor_id"].astype(object)
    sess = sess[sess["visitor_id"].isin(first.index)]
    start = sess["visitor_id"].map(first["ts"])
    sess = sess[(sess["goal_ts"] >= start) & (sess["goal_ts"] <= start + window_s)]
    sid = sess["session_id"].to_numpy(dtype=object)
    miss1 = np.log1p(-np.minimum(p1.reindex(sid).to_numpy(), 1 - 1e-15))
    miss0 = np.log1p(-np.minimum(p0.reindex(sid).to_numpy(), 1 - 1e-15))
    frame = pd.DataFrame({"visitor_id": sess["visitor_id"].to_numpy(dtype=object), "m1": miss1, "m0": miss0})
    sums = frame.groupby("visitor_id")[["m1", "m0"]].sum().reindex(first.index, fill_value=0.0)
    visitors = pd.DataFrame({
        "visitor_id": first.index.to_numpy(dtype=object),
        "first_ts": first["ts"].to_numpy(),
        "holdout": first["holdout"].to_numpy(dtype=bool),
        "rule": first["rule"].to_numpy(dtype=object),
        "page": first["page"].to_numpy(dtype=object),
        "queue": first["queue"].to_numpy(dtype=object),
        "p_offered": -np.expm1(sums["m1"].to_numpy()),
        "p_withheld": -np.expm1(sums["m0"].to_numpy()),
    })
    visitors["effect"] = visitors["p_offered"] - visitors["p_withheld"]
    return TrueUplift(float(visitors["effect"].mean()), float(visitors["p_offered"].mean()),
                      float(visitors["p_withheld"].mean()), len(visitors), visitors)


def _effect_values(model: GoalModel, page: np.ndarray, helped: np.ndarray, base: np.ndarray,
                   has_goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gain_if_accepted, loss_if_not_accepted) of an offer on `page` in a session with these truths."""
    lift = model.lift(page, helped)
    cost = DECLINE_SHARE * model.decline_cost + (1 - DECLINE_SHARE) * model.ignore_cost
    return np.where(has_goal, lift * (1.0 - base), 0.0), cost * base


def offer_effects(world: World, offers: pd.DataFrame, model: GoalModel = GOALS,
                  seed: int | None = None) -> pd.DataFrame:
    """Per offer, what the world says it is worth (for a backtest's expected uplift): ``p_accept`` (the
    truth, with the session's real needs_help), ``base_p`` (the session's goal probability without
    offers), ``gain_if_accepted`` = lift x (1 - base_p) and ``loss_if_not_accepted`` = the annoyance cost
    (40 % declines, the rest ignored) x base_p, both absolute changes of the goal probability. Feed them to
    ``pcrules.uplift.expected_uplift``. Each offer is valued alone, against the session's base rate.
    (`seed` is accepted for symmetry with :func:`session_goals`; the values do not depend on the draws.)"""
    sg = _session_tasks(world, model)
    at = _eligible_offers(world, offers)
    at = at[~at["holdout"]].reset_index(drop=True)
    info = sg.set_index("session_id")
    helped = at["session_id"].map(info["needs_help"]).eq(True).to_numpy()
    base = at["session_id"].map(info["base_p"]).fillna(0.0).to_numpy()
    has_goal = at["session_id"].map(info["goal"]).notna().to_numpy()
    out = at[["visitor_id", "session_id", "ts", "page", "rule", "queue"]].copy()
    out["needs_help"] = helped
    out["p_accept"] = _offer_accept_probability(world, at, sg)
    out["base_p"] = base
    out["gain_if_accepted"], out["loss_if_not_accepted"] = _effect_values(
        model, at["page"].to_numpy(dtype=object), helped, base, has_goal)
    return out


EFFECT_COLUMNS = ("p_accept", "gain_if_accepted", "loss_if_not_accepted")


def event_effects(world: Any, model: GoalModel = GOALS) -> pd.DataFrame:
    """Per event of ``world.events`` (same index and order), what an offer made there would be worth:
    ``p_accept`` (the true P(accept), with the session's real needs_help: ``decision_value.world_truth``),
    ``gain_if_accepted`` and ``loss_if_not_accepted`` exactly as :func:`offer_effects` values an offer at
    that event, plus the session's ``needs_help`` and ``base_p``.

    What ``backtest(..., effects=...)``, the tuner and ``decision_value.tune(objective="uplift")`` take: the
    backtest reads the offers' rows. `world`: a :class:`World` or anything with its ``events`` and
    ``page_views`` (``analysis.History`` of a generated world). No seed needed: the values are
    expectations, not draws."""
    sg = _session_tasks(world, model).set_index("session_id")
    ev = world.events
    sid = ev["session_id"].astype(object)
    helped = sid.map(sg["needs_help"]).eq(True).to_numpy()
    base = sid.map(sg["base_p"]).fillna(0.0).to_numpy(dtype=float)
    has_goal = sid.map(sg["goal"]).notna().to_numpy()
    page = ev["page"].to_numpy(dtype=object)
    gain, loss = _effect_values(model, page, helped, base, has_goal)
    p = true_accept_probability(page, ev["seconds_on_page"].to_numpy(dtype=float),
                                ev["device"].to_numpy(dtype=object), ev["returning"].to_numpy(dtype=bool),
                                ev["pages_viewed"].to_numpy(dtype=float), helped,
                                session_seconds=ev["session_seconds"].to_numpy(dtype=float))
    return pd.DataFrame({"p_accept": np.asarray(p, dtype=float), "gain_if_accepted": gain,
                         "loss_if_not_accepted": loss, "needs_help": helped, "base_p": base}, index=ev.index)
