"""The runtime: a thin stateful shell around the pure policy core.

It validates the event, scores it, matches it through durable_rules, lets
:func:`pcrules.policy.decide` judge, saves the new state, writes the decision
to the log and only then returns it. All clocks are event time.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal, cast

from ..bundle import Bundle, load_bundle
from ..core.decision import Decision, OfferStatus, Outcome
from ..core.events import Event, check_finite, check_id, check_number, parse_ts, validate_event
from ..core.policy import QueueStatus, SessionState, VisitorState, answer, decide
from ..core.spec import RuleSpec, load_spec
from ..errors import InvalidEvent, OfferClosed, OfferNotFound, PcrulesError, StoreUnavailable, UnknownQueue
from ..matching.durable import DurableMatcher
from ..scoring.protocol import Scorer
from .log.sqlite import DecisionLog, LogHealth
from .pseudonym import Pseudonymizer
from .stores.memory import MemoryStore, OfferRecord, SharedStore, StaleRead, StateStore

__all__ = ["Runtime", "DEFAULT_MAX_CLOCK_SKEW_S"]

DEFAULT_MAX_CLOCK_SKEW_S = 300.0  # how far ahead of the runtime's clock an event may be dated
MAX_AGENTS = 1_000_000


class _Default(Enum):
    """Sentinels for arguments whose default is not a value: AUTO (max_clock_skew_s), KEEP (reload's scorer)."""

    AUTO = "auto"
    KEEP = "keep"


_AUTO: Final = _Default.AUTO
_KEEP: Final = _Default.KEEP  # reload(): keep the current scorer

log = logging.getLogger("pcrules.runtime")
_NEW_SESSION = SessionState()
_NEW_VISITOR = VisitorState()


def _new_offer_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits


class _OneOfferId:
    """The offer id of one observation, however many tries deciding it takes (drawn when first asked for)."""

    __slots__ = ("_draw", "_id")

    def __init__(self, draw: Callable[[], str]) -> None:
        self._draw = draw
        self._id: str | None = None

    def __call__(self) -> str:
        if self._id is None:
            self._id = self._draw()
        return self._id


class Runtime:
    def __init__(
        self,
        spec: RuleSpec | str | Path | Mapping[str, Any],
        *,
        scorer: Scorer | None = None,
        log: DecisionLog | None = None,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.time,
        new_offer_id: Callable[[], str] = _new_offer_id,
        visitor_id_key: bytes | str | None = None,
        max_clock_skew_s: float | None | Literal[_Default.AUTO] = _AUTO,
    ):
        spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
        self._log = log
        self._store: StateStore = store if store is not None else MemoryStore()
        # Exclusive across processes for a store they share (Redis); a no-op for a store without one.
        self._session_lock = self._store.session_lock
        self._commits_together = isinstance(self._store, SharedStore)  # (a Protocol: isinstance is slow, ask once)
        self._observe_lock = self._store.observe_lock
        self._clock = clock
        # Event time drives expiries and idle eviction for everyone: one event dated far ahead would expire
        # every offer and forget every session. A live runtime (on the wall clock) refuses an event, answer, goal
        # or queue report dated more than DEFAULT_MAX_CLOCK_SKEW_S ahead of it. With a clock of its own (a replay,
        # a simulation) time is the caller's: no bound unless one is given.
        if max_clock_skew_s is _AUTO:
            max_clock_skew_s = DEFAULT_MAX_CLOCK_SKEW_S if clock is time.time else None
        if max_clock_skew_s is not None and not (isinstance(max_clock_skew_s, (int, float)) and max_clock_skew_s >= 0):
            raise ValueError(f"max_clock_skew_s: expected a number >= 0 or None, got {max_clock_skew_s!r}")
        self._max_skew = max_clock_skew_s
        self._new_offer_id = new_offer_id
        # With a key, the log and the store see only a keyed hash of each visitor id (see pcrules.pseudonym).
        self._pseudonym = None if visitor_id_key is None else Pseudonymizer(visitor_id_key)
        self._lock = threading.RLock()
        self._high_water = -math.inf  # latest event time seen: the clock for idle eviction
        self.scorer_errors = 0
        # Rules, their compiled matcher and the model are swapped as one: an event never meets a mix.
        self._active: tuple[RuleSpec, DurableMatcher, Scorer | None] = (spec, DurableMatcher(spec), scorer)
        if self._log is not None:
            self._log.reserve()
            self._log.record_ruleset(spec.name, spec.version, dict(spec.source), clock())

    @classmethod
    def from_bundle(cls, path: str | Path, **kwargs: Any) -> Runtime:
        """A runtime serving a published bundle's ruleset and model (see pcrules.bundle); other Runtime
        arguments pass through."""
        if "scorer" in kwargs:
            raise TypeError("Runtime.from_bundle: the scorer comes from the bundle; do not pass one")
        bundle = load_bundle(path)
        runtime = cls(bundle.spec, scorer=bundle.scorer, **kwargs)
        log.info("runtime serves bundle %s from %s", bundle.version, bundle.path)
        return runtime

    def reload_bundle(self, path: str | Path) -> Bundle:
        """Switch to a bundle's ruleset and model; sessions, offers and cooldowns are kept.

        The bundle is loaded and verified first: when that fails, BundleError is raised and the runtime keeps
        serving its ruleset and scorer. A rules-only bundle leaves the runtime without a model.
        """
        bundle = load_bundle(path)
        self.reload(bundle.spec, scorer=bundle.scorer)  # rules and model swap as one
        log.info("runtime reloaded bundle %s from %s", bundle.version, bundle.path)
        return bundle

    # ------------------------------------------------------------------ configuration

    @property
    def spec(self) -> RuleSpec:
        return self._active[0]

    @property
    def store(self) -> StateStore:
        return self._store

    @property
    def scorer(self) -> Scorer | None:
        return self._active[2]

    def reload(self, spec: RuleSpec | str | Path | Mapping[str, Any], *,
               scorer: Scorer | None | Literal[_Default.KEEP] = _KEEP) -> RuleSpec:
        """Switch to a new ruleset (and model, when `scorer` is given; None removes it).

        Sessions, offers and cooldowns are kept. On any error the current ruleset stays active and the error is raised.
        """
        new_spec = spec if isinstance(spec, RuleSpec) else load_spec(spec)
        matcher = DurableMatcher(new_spec)
        with self._lock:
            try:
                self._reserve()
            except BaseException:
                matcher.close()
                raise
            old = self._active[1]
            self._active = (new_spec, matcher, self._active[2] if scorer is _KEEP else scorer)
            if self._log is not None:
                self._log.record_ruleset(new_spec.name, new_spec.version, dict(new_spec.source), self._clock())
        old.close()
        return new_spec

    def log_health(self) -> LogHealth | None:
        """The decision log's state (None without a log): /healthz reports it."""
        return None if self._log is None else self._log.health()

    def flush(self) -> None:
        """Make everything logged so far readable in the decision log's file (it is already crash-safe)."""
        if self._log is not None:
            self._log.flush()

    def close(self) -> None:
        self._active[1].close()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ observations

    def observe(self, event: Mapping[str, Any]) -> Decision:
        ev = self._validate(event)
        self._reserve()
        for _ in range(3):
            matched = self._match(ev)
            if matched is None:
                continue  # the ruleset was replaced while we matched: use the new one
            spec, matches, score = matched
            with self._lock:
                if self._active[0] is not spec:
                    continue
                return self._judge(spec, ev, matches, score)
        raise PcrulesError("the ruleset kept changing while this event was matched; try again")

    def _validate(self, event: Mapping[str, Any]) -> Event:
        ev = validate_event(event, self._clock)
        if self._max_skew is not None and "ts" in event:
            self._not_ahead(ev.ts)
        return ev if self._pseudonym is None else self._pseudonymise(ev)

    def _when(self, ts: float | str | None) -> float:
        if ts is None:
            return self._clock()
        when = parse_ts(ts)
        if self._max_skew is not None:
            self._not_ahead(when)
        return when

    def _not_ahead(self, ts: float) -> None:
        ahead = ts - self._clock()
        if ahead > self._max_skew:  # type: ignore[operator]
            raise InvalidEvent("ts", f"{ahead:.0f} s ahead of this server's clock; at most {self._max_skew:g} s is "
                                     "accepted (a client's clock is wrong, or the event is forged)")

    def _match(self, ev: Event) -> tuple[RuleSpec, Any, float | None] | None:
        """Score and match `ev` under the active ruleset; None when a reload closed its matcher meanwhile."""
        spec, matcher, scorer = self._active
        score = self._score(spec, scorer, ev)
        try:
            return spec, matcher.match(ev.fields, score), score
        except PcrulesError:
            if self._active[1] is matcher:
                raise
            return None

    def observe_many(self, events: Sequence[Mapping[str, Any]]) -> list[Decision | PcrulesError]:
        """Observe several events at once: each gets its decision, or the error `observe` would raise for it.

        With a store that commits observations together (the Redis store: one write and one round trip for
        all of them) this is cheaper than one `observe` each; a server hands it the requests that arrived
        together. Events of one session are decided in order. Other stores observe them one by one.
        """
        if not self._commits_together:
            return [_result_or_error(self.observe, event) for event in events]
        batch = cast(SharedStore, self._store).batch
        results: list[Decision | PcrulesError | None] = [None] * len(events)
        matched, alone = [], []  # alone: the ruleset was replaced meanwhile; observed again on its own
        for i, event in enumerate(events):
            try:
                ev = self._validate(event)
                self._reserve()
                found = self._match(ev)
            except PcrulesError as exc:
                results[i] = exc
                continue
            if found is None:
                alone.append(i)
            else:
                spec, matches, score = found
                matched.append((i, spec, ev, matches, score))
        down: StoreUnavailable | None = None  # once the store is out, the rest of the batch fails at once
        with self._lock:
            k = 0
            while k < len(matched):
                staged = []
                expiries: list[tuple[int, Outcome]] = []  # offers due, closed in this batch: (ticket, outcome)
                due = math.inf  # the earliest expiry among this batch's offers
                with batch() as commits:  # the observations' writes, sent together when it ends
                    while k < len(matched):
                        i, spec, ev, matches, score = matched[k]
                        if ev.ts >= due:
                            break  # an offer of this batch is due by now: write the batch first, then expire it
                        k += 1
                        offer_id = _OneOfferId(self._new_offer_id)
                        if down is not None:
                            results[i] = down
                            continue
                        if self._active[0] is not spec:
                            alone.append(i)
                            continue
                        try:
                            self._expire_in_batch(spec, ev.ts, commits, expiries)
                            ticket = len(commits.pending)
                            decision, expired = self._attempt(self._observe_lock, spec, ev, matches, score, offer_id)
                        except PcrulesError as exc:
                            results[i] = exc
                            if isinstance(exc, StoreUnavailable) and exc.outage:
                                down = exc  # each further try would wait out the same timeouts
                            continue
                        staged.append((i, spec, ev, matches, score, offer_id, decision, expired, ticket))
                        if decision.expires_at is not None:
                            due = min(due, decision.expires_at)
                for ticket, outcome in expiries:
                    if commits.written[ticket]:  # else the offer or its session changed: looked at again later
                        self._record(outcome)
                for i, spec, ev, matches, score, offer_id, decision, expired, ticket in staged:
                    # Not written (another process changed the session, or this one earlier in the batch):
                    # decide again on what the store holds now, as observe would.
                    results[i] = (self._logged(decision, expired) if commits.written[ticket]
                                  # (its batch has looked for offers due: the next batch looks again)
                                  else _result_or_error(self._judge, spec, ev, matches, score, offer_id, False))
        for i in sorted(alone):
            results[i] = _result_or_error(self.observe, events[i])
        return results  # type: ignore[return-value]

    def _reserve(self) -> None:
        """Every side effect of a decision waits until the log can take its records (LogUnavailable if not):
        a decision that could not be logged must change nothing."""
        if self._log is not None:
            self._log.reserve()

    def _pseudonymise(self, ev: Event) -> Event:
        alias = self._pseudonym(ev.visitor_id)  # type: ignore[misc]
        # The holdout group is still drawn from the raw id: switching pseudonyms on moves nobody between groups.
        return replace(ev, visitor_id=alias, fields={**ev.fields, "visitor_id": alias}, holdout_unit=ev.visitor_id)

    def _score(self, spec: RuleSpec, scorer: Scorer | None, ev: Event) -> float | None:
        if scorer is None or not spec.uses_score:
            return None
        try:
            raw = scorer.predict_proba_one(ev.fields)
            # Converted inside the guard: a model that returns junk ("high", a list) is as broken as one that raises.
            score = None if raw is None else float(raw)
        except Exception:  # a broken model must not stop the chat server: rules on score just do not match
            self.scorer_errors += 1
            log.exception("scorer failed; treating the score as missing")
            return None
        if score is None:
            return None
        if isinstance(raw, (bool, str, bytes)) or not 0.0 <= score <= 1.0:  # also rejects NaN
            self.scorer_errors += 1
            log.warning("scorer returned %r, not a probability; treating the score as missing", score)
            return None
        return score

    def _judge(self, spec: RuleSpec, ev: Event, matches: Any, score: float | None,
               new_offer_id: Callable[[], str] | None = None, housekeeping: bool = True) -> Decision:
        if housekeeping:
            self._housekeeping(spec, ev.ts)
        new_offer_id = new_offer_id or _OneOfferId(self._new_offer_id)
        # Read-decide-write of one session is atomic across every process sharing the store. A store may let
        # the first two tries read from its cache and check at the end (one round trip instead of two); a
        # stale read wrote nothing, so deciding again is safe; the third try takes the session's lock.
        for attempt in range(3):
            try:
                decision, expired = self._attempt(self._observe_lock if attempt < 2 else self._session_lock,
                                                  spec, ev, matches, score, new_offer_id)
            except StaleRead:
                continue
            return self._logged(decision, expired)
        raise AssertionError("the session lock never reads stale")  # pragma: no cover

    def _attempt(self, lock: Callable[[str, str], Any], spec: RuleSpec, ev: Event, matches: Any,
                 score: float | None, new_offer_id: Callable[[], str]) -> tuple[Decision, Outcome | None]:
        """One read-decide-write of the event's session under `lock`; the store writes it when the lock is left."""
        store = self._store
        with lock(ev.visitor_id, ev.session_id):
            session = store.session(ev.visitor_id, ev.session_id) or _NEW_SESSION
            visitor = store.visitor(ev.visitor_id) or _NEW_VISITOR
            step = decide(spec, ev, session, visitor, matches, store.queue_status(), score, new_offer_id)
            decision = step.decision
            expired = None
            if step.expired is not None and step.expired.offer_id is not None:  # not a holdout's would-be offer
                # Housekeeping normally closed it already; a store that forgot it (or closed it) must not
                # crash observe.
                record = store.offer(step.expired.offer_id)
                if record is not None and record.status == OfferStatus.OFFERED:
                    expired = self._closing(record, OfferStatus.EXPIRED, step.expired.expires_at)
            if decision.offer_id is not None:
                store.save_offer(OfferRecord(decision.offer_id, ev.visitor_id, ev.session_id, decision.rule or "",
                                             decision.queue or "", ev.ts, decision.expires_at or ev.ts,
                                             spec.name, spec.version))
            store.save(ev.visitor_id, ev.session_id, step.session, step.visitor)
        return decision, expired

    def _logged(self, decision: Decision, expired: Outcome | None) -> Decision:
        # Logged once the store holds it, and before it is returned: a decision a shared store refused (an
        # outage, a lost lock) never reaches the log, and one the caller saw is on disk (see decision_log).
        self._record(expired)
        if self._log is not None:
            self._log.record_decision(decision)
        return decision

    def _expire_in_batch(self, spec: RuleSpec, now: float, commits: Any, expiries: list[tuple[int, Outcome]]) -> None:
        """The offers due, closed in the batch: each commit checks that its session and the offer are still as
        read, so no lock (under one: three round trips per offer, in turn, while the batch waited, and a fleet
        making as many expiries a second as offers stalled). What changed meanwhile is not written, and found due
        again."""
        if now > self._high_water:
            self._high_water = now
        store = cast(SharedStore, self._store)
        for record in store.due_offers(self._high_water):
            ticket = len(commits.pending)
            with self._observe_lock(record.visitor_id, record.session_id):
                if store.expect_offer(record.offer_id):
                    outcome = self._finish(spec, record, OfferStatus.EXPIRED, record.expires_at)
                else:
                    outcome = None
            if outcome is None:  # not handed out for this (another thread looked meanwhile): under its lock
                self._expire_locked(spec, record)
            elif len(commits.pending) > ticket:
                expiries.append((ticket, outcome))

    def _expire_locked(self, spec: RuleSpec, record: OfferRecord) -> None:
        outcome = None
        with self._session_lock(record.visitor_id, record.session_id):
            current = self._store.offer(record.offer_id)  # another process may have closed it meanwhile
            if current is not None and current.status == OfferStatus.OFFERED:
                outcome = self._finish(spec, current, OfferStatus.EXPIRED, current.expires_at)
        self._record(outcome)

    def _housekeeping(self, spec: RuleSpec, now: float) -> None:
        """Expire offers whose time ran out, then forget sessions idle for longer than the TTL."""
        if now > self._high_water:
            self._high_water = now
        for record in self._store.due_offers(self._high_water):
            self._expire_locked(spec, record)
        for gone in self._store.evict_idle(self._high_water - spec.policy.session_idle_ttl_s):
            if gone.pending_offer is not None:
                self._record(self._closing(gone.pending_offer, OfferStatus.EXPIRED, gone.pending_offer.expires_at))

    # ------------------------------------------------------------------ offer lifecycle

    # `visitor_id` / `session_id`, when given (the public HTTP routes always give them), bind the answer to the
    # offer's owner: another visitor's or another session's offer id is refused exactly like an unknown one,
    # so a guess learns nothing and changes nothing.

    def accept(self, offer_id: str, ts: float | str | None = None, *, visitor_id: str | None = None,
               session_id: str | None = None) -> Outcome:
        return self._answer(offer_id, OfferStatus.ACCEPTED, ts, visitor_id, session_id)

    def decline(self, offer_id: str, ts: float | str | None = None, *, visitor_id: str | None = None,
                session_id: str | None = None) -> Outcome:
        return self._answer(offer_id, OfferStatus.DECLINED, ts, visitor_id, session_id)

    def expire(self, offer_id: str, ts: float | str | None = None, *, visitor_id: str | None = None,
               session_id: str | None = None) -> Outcome:
        return self._answer(offer_id, OfferStatus.EXPIRED, ts, visitor_id, session_id)

    def _owner(self, visitor_id: str | None, session_id: str | None) -> tuple[str | None, str | None]:
        if visitor_id is not None:
            check_id("visitor_id", visitor_id)
            if self._pseudonym is not None:
                visitor_id = self._pseudonym(visitor_id)
        if session_id is not None:
            check_id("session_id", session_id)
        return visitor_id, session_id

    def _answer(self, offer_id: str, status: OfferStatus, ts: float | str | None, visitor_id: str | None = None,
                session_id: str | None = None) -> Outcome:
        if not isinstance(offer_id, str) or not offer_id or len(offer_id) > 128:
            raise OfferNotFound(str(offer_id)[:128])
        owner = self._owner(visitor_id, session_id)

        def mine(record: OfferRecord | None) -> OfferRecord:
            if (record is None or (owner[0] is not None and not hmac.compare_digest(record.visitor_id, owner[0]))
                    or (owner[1] is not None and not hmac.compare_digest(record.session_id, owner[1]))):
                raise OfferNotFound(offer_id)
            return record

        when = self._when(ts)
        with self._lock:
            spec = self._active[0]
            record = mine(self._store.offer(offer_id))
            if when < record.offered_at:
                raise InvalidEvent("ts", f"the answer ({when:.3f}) is dated before the offer was made "
                                         f"({record.offered_at:.3f}); nothing changed")
            self._reserve()
            with self._session_lock(record.visitor_id, record.session_id):
                # Again under the session's lock: another process may have answered.
                record = mine(self._store.offer(offer_id))
                if record.status != OfferStatus.OFFERED:
                    raise OfferClosed(offer_id, record.status.value)
                late = status != OfferStatus.EXPIRED and when >= record.expires_at
                if late:  # by event time the offer had already expired: record that, refuse the late answer
                    outcome = self._finish(spec, record, OfferStatus.EXPIRED, record.expires_at)
                else:
                    outcome = self._finish(spec, record, status, min(when, record.expires_at)
                                           if status == OfferStatus.EXPIRED else when)
            # Logged once the store holds it (the lock's release wrote it): an answer a shared store refused is
            # not in the log, so the caller's retry cannot log it twice.
            self._record(outcome)
            if late:
                raise OfferClosed(offer_id, f"{OfferStatus.EXPIRED.value} (at {record.expires_at:.3f}, "
                                            f"answer came at {when:.3f})")
            return outcome

    def _finish(self, spec: RuleSpec, record: OfferRecord, status: OfferStatus, ts: float) -> Outcome:
        """Close the offer and free its session in the store; the caller logs the outcome once that is written."""
        outcome = self._closing(record, status, ts)
        session = self._store.session(record.visitor_id, record.session_id)
        if session is not None and session.pending is not None and session.pending.offer_id == record.offer_id:
            visitor = self._store.visitor(record.visitor_id) or _NEW_VISITOR
            session, visitor = answer(spec, session, visitor, status, ts)
            self._store.save(record.visitor_id, record.session_id, session, visitor)
        return outcome

    def _record(self, outcome: Outcome | None) -> None:
        if outcome is not None and self._log is not None:
            self._log.record_outcome(outcome)

    def _closing(self, record: OfferRecord, status: OfferStatus, ts: float) -> Outcome:
        """Close the offer in the store; the caller logs the outcome."""
        self._store.save_offer(_closed(record, status, ts))
        return Outcome(record.offer_id, status, ts, record.visitor_id, record.session_id, record.rule,
                       record.queue, record.offered_at, record.ruleset, record.ruleset_version)

    # ------------------------------------------------------------------ queues and goals

    def update_queue(self, name: str, agents_available: int | None = None, estimated_wait_s: float | None = None,
                     ts: float | str | None = None) -> QueueStatus:
        if not isinstance(name, str) or name not in self.spec.queues:
            raise UnknownQueue(str(name)[:128], list(self.spec.queues))
        if agents_available is not None and (isinstance(agents_available, bool) or not isinstance(agents_available, int)
                                             or not 0 <= agents_available <= MAX_AGENTS):
            shown = (str(agents_available)[:40] if isinstance(agents_available, (int, float))
                     else type(agents_available).__name__)
            raise InvalidEvent("agents_available", f"expected an integer from 0 to {MAX_AGENTS}, got {shown}")
        wait = None if estimated_wait_s is None else check_number("estimated_wait_s", estimated_wait_s)
        when = self._when(ts)
        status = QueueStatus(agents_available, wait, when)
        with self._lock:
            self._store.set_queue_status(name, status)
        return status

    def record_goal(self, visitor_id: str, session_id: str, goal: str, ts: float | str | None = None,
                    value: float | None = None) -> None:
        """A business outcome (e.g. bill_paid), kept for measuring uplift against the holdout."""
        check_id("visitor_id", visitor_id)
        check_id("session_id", session_id)
        check_id("goal", goal)
        if self._pseudonym is not None:
            visitor_id = self._pseudonym(visitor_id)
        amount = None if value is None else check_finite("value", value)
        when = self._when(ts)
        if self._log is not None:
            with self._lock:
                self._log.reserve()
                self._log.record_goal(visitor_id, session_id, goal, when, amount)


def _result_or_error(fn: Callable[..., Decision], *args: Any) -> Decision | PcrulesError:
    try:
        return fn(*args)
    except PcrulesError as exc:
        return exc


def _closed(record: OfferRecord, status: OfferStatus, ts: float) -> OfferRecord:
    return replace(record, status=status, answered_at=ts)
