"""Prometheus metrics of one server process, fed by a decision-log tee (every decision and outcome the runtime logs)."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from ..decision import Decision, Outcome

__all__ = ["Metrics", "MetricsLog", "CONTENT_TYPE_LATEST"]

# Decision latency inside the server (request read to response built): sub-millisecond to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter("pcrules_decisions", "Decisions made, by action and reason (reason is empty for "
                                 "offer and wait)", ["action", "reason"], registry=r)
        self.outcomes = Counter("pcrules_outcomes", "Offer outcomes recorded (answers and expiries)", ["status"],
                                registry=r)
        self.latency = Histogram("pcrules_decision_seconds", "Time to answer POST /v1/observe inside the server",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("pcrules_http_errors", "Requests refused, by HTTP status and error code",
                              ["status", "error"], registry=r)
        # Not by goal name: the names come from browsers, and a label per name would let them grow the registry.
        self.goals = Counter("pcrules_goals", "Goals reported (business outcomes)", registry=r)
        self.store_contention = Counter(
            "pcrules_store_contention", "Shared-store (Redis) retries: lock_wait (a session's lock was taken), "
            "stale_read (an observation decided on this worker's cache met a newer state and was decided again)",
            ["kind"], registry=r)
        self.batch_size = Histogram("pcrules_observe_batch_size", "Observations decided together (their Redis "
                                    "writes sent in one round trip)", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                                    registry=r)
        self.reloads = Counter("pcrules_reloads", "Ruleset reloads, by result", ["result"], registry=r)
        self.ruleset = Gauge("pcrules_ruleset_info", "The ruleset being served (value 1)", ["name", "version"],
                             registry=r, multiprocess_mode="max")
        self._children: dict[tuple[str, str], Any] = {}
        self._current: tuple[str, str] | None = None

    def decision(self, d: Decision) -> None:
        key = (d.action.value, d.reason.value if d.reason is not None else "")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.decisions.labels(*key)
        child.inc()

    def serving(self, name: str, version: str) -> None:
        if self._current is not None:
            self.ruleset.remove(*self._current)
        self._current = (name, version)
        self.ruleset.labels(name, version).set(1)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several worker processes: add up their files
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsLog:
    """A DecisionLog that counts what passes and forwards it to the real log (if any)."""

    def __init__(self, metrics: Metrics, inner: Any | None = None) -> None:
        self.metrics = metrics
        self.inner = inner

    def record_decision(self, decision: Decision) -> None:
        if self.inner is not None:
            self.inner.record_decision(decision)
        self.metrics.decision(decision)

    def record_outcome(self, outcome: Outcome) -> None:
        if self.inner is not None:
            self.inner.record_outcome(outcome)
        self.metrics.outcomes.labels(outcome.status.value).inc()

    def record_goal(self, visitor_id: str, session_id: str, goal: str, ts: float, value: float | None) -> None:
        if self.inner is not None:
            self.inner.record_goal(visitor_id, session_id, goal, ts, value)
        self.metrics.goals.inc()

    def record_ruleset(self, name: str, version: str, spec: dict, ts: float) -> None:
        if self.inner is not None:
            self.inner.record_ruleset(name, version, spec, ts)
        self.metrics.serving(name, version)

    def flush(self) -> None:
        if self.inner is not None:
            self.inner.flush()

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
