"""Replay recorded events through a Runtime, playing back the visitors' recorded answers.

An answer recorded with an event (``response`` accept/decline after
``response_delay_s``) is delivered if the runtime made an offer at that event
and the answer arrives before the offer's timeout; otherwise the offer
expires. Answers are delivered in event-time order between observations, so
the replay is exactly what a live runtime would have seen.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.decision import Action, OfferStatus
from ..errors import InvalidEvent, OfferClosed, OfferNotFound
from ..runtime.runtime import Runtime

__all__ = ["ReplaySummary", "replay"]


@dataclass
class ReplaySummary:
    events: int = 0
    refused: int = 0
    actions: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    offers_by_rule: Counter = field(default_factory=Counter)
    offers_by_queue: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    sessions: set = field(default_factory=set)
    seconds: float = 0.0

    @property
    def offers(self) -> int:
        return self.actions[Action.OFFER]

    def report(self) -> str:
        lines = [
            f"events replayed     {self.events:>9,}   ({self.events / max(self.seconds, 1e-9):,.0f} events/s)",
            f"sessions            {len(self.sessions):>9,}",
            f"refused events      {self.refused:>9,}",
            f"offers              {self.offers:>9,}   ({self.offers / max(len(self.sessions), 1):.1%} of sessions)",
            f"holdout (withheld)  {self.reasons['holdout']:>9,}",
        ]
        answered = sum(self.outcomes.values())
        for status in (OfferStatus.ACCEPTED, OfferStatus.DECLINED, OfferStatus.EXPIRED):
            n = self.outcomes[status]
            lines.append(f"  {status.value:<17} {n:>9,}   ({n / max(answered, 1):.1%} of offers)")
        lines.append("decisions by action")
        lines += [f"  {a:<17} {n:>9,}" for a, n in self.actions.most_common()]
        lines.append("no-offer reasons")
        lines += [f"  {r:<17} {n:>9,}" for r, n in self.reasons.most_common()]
        lines.append("offers by rule")
        lines += [f"  {r:<28} {n:>6,}" for r, n in self.offers_by_rule.most_common()]
        lines.append("offers by queue")
        lines += [f"  {q:<28} {n:>6,}" for q, n in self.offers_by_queue.most_common()]
        return "\n".join(lines)


def replay(runtime: Runtime, rows: Iterable[dict[str, Any]], *, progress: bool = False,
           total: int | None = None) -> ReplaySummary:
    """`rows` as from :func:`pcrules.sample.read_events`: {"event", "response", "response_delay_s"}."""
    summary = ReplaySummary()
    answers: list[tuple[float, int, str, str]] = []  # (ts, tie-break, offer id, accept|decline)
    open_offers: dict[str, float] = {}  # offer id -> expires_at
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="ev", desc="replay", mininterval=0.5)

    def deliver(until: float) -> None:
        while answers and answers[0][0] <= until:
            ts, _, offer_id, response = heapq.heappop(answers)
            outcome = (runtime.accept if response == "accept" else runtime.decline)(offer_id, ts=ts)
            summary.outcomes[outcome.status] += 1
            open_offers.pop(offer_id, None)

    started = time.perf_counter()
    for n, row in enumerate(rows):
        event = row["event"]
        deliver(event["ts"])
        try:
            decision = runtime.observe(event)
        except InvalidEvent:
            summary.refused += 1
            continue
        summary.events += 1
        summary.sessions.add((decision.visitor_id, decision.session_id))
        summary.actions[decision.action] += 1
        if decision.reason is not None:
            summary.reasons[decision.reason] += 1
        if decision.action == Action.OFFER:
            assert decision.offer_id is not None and decision.expires_at is not None
            summary.offers_by_rule[decision.rule] += 1
            summary.offers_by_queue[decision.queue] += 1
            open_offers[decision.offer_id] = decision.expires_at
            delay = row.get("response_delay_s")
            # An answer slower than the timeout is no answer: the offer has expired by then.
            answered = row.get("response") in ("accept", "decline") and delay is not None
            if answered and event["ts"] + delay < decision.expires_at:
                heapq.heappush(answers, (event["ts"] + delay, n, decision.offer_id, row["response"]))
        if bar is not None:
            bar.update()
    deliver(float("inf"))
    for offer_id, expires_at in open_offers.items():
        try:
            runtime.expire(offer_id, ts=expires_at)
        except (OfferClosed, OfferNotFound):
            pass  # the runtime expired it already, by event time (and may have forgotten its idle session)
    # Every offer ends one way: what was neither accepted nor declined expired.
    closed = summary.outcomes[OfferStatus.ACCEPTED] + summary.outcomes[OfferStatus.DECLINED]
    summary.outcomes[OfferStatus.EXPIRED] = summary.offers - closed
    summary.seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    return summary
