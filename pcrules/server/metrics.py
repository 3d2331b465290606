"""Prometheus metrics of one server process, fed by a decision-log tee (every decision and outcome the runtime logs)."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..core.decision import Decision, Outcome
from ..runtime.log.sqlite import LogHealth

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
        # Counted, not logged one by one: anyone can cause them.
        self.client_disconnects = Counter("pcrules_client_disconnects", "Requests whose client went away before "
                                          "its body was read whole", registry=r)
        self.connections_closed = Counter(
            "pcrules_connections_closed", "Connections the server closed: head_timeout / body_timeout (too slow), "
            "head_too_large (431), shed (the oldest still sending its request head, at the connection cap), "
            "refused (at the cap, every connection busy), bad_request (not HTTP)", ["reason"], registry=r)
        # Dependencies, as the last check saw them (each worker checks its own; workers are added up or the worst taken)
        self.store_ok = Gauge("pcrules_store_ok", "1 when the shared state store answered the last ping, else 0",
                              registry=r, multiprocess_mode="min")
        self.log_ok = Gauge("pcrules_log_ok", "1 when the decision log takes records, else 0 (decisions refused "
                            "with 503 log_unavailable)", registry=r, multiprocess_mode="min")
        self.log_pending = Gauge("pcrules_log_pending", "Decision-log records journaled, not yet in the tables",
                                 registry=r, multiprocess_mode="livesum")
        self.log_pending_age = Gauge("pcrules_log_pending_age_seconds", "How long the oldest decision-log record "
                                     "not yet in the tables (SQLite or PostgreSQL) has waited", registry=r,
                                     multiprocess_mode="max")
        self.log_failures = Gauge("pcrules_log_failures", "Failed attempts to move journaled records into the "
                                  "tables since the log opened", registry=r, multiprocess_mode="livesum")
        self.log_quarantined = Gauge("pcrules_log_quarantined", "Damaged journals moved aside when the log opened",
                                     registry=r, multiprocess_mode="livesum")
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

    def log_health(self, health: LogHealth | None) -> None:
        if health is None:  # no decision log: nothing to fail
            health = LogHealth(ok=True)
        self.log_ok.set(1 if health.ok else 0)
        self.log_pending.set(health.pending)
        self.log_pending_age.set(health.pending_age_s)
        self.log_failures.set(health.failures)
        self.log_quarantined.set(health.quarantined)

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

    def reserve(self) -> None:
        if self.inner is not None:
            self.inner.reserve()

    def health(self) -> LogHealth:
        return LogHealth(ok=True) if self.inner is None else self.inner.health()

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
