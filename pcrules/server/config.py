"""The reference server's settings: what it serves, from where, and how the public routes are guarded.

`ServerConfig` refuses a bad setting at once, listing every problem; `config_from_env` adds the secrets from the
environment; `security_summary` is what `pcrules serve` says at start-up (never a secret).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import resources
from .security import MIN_TOKEN_CHARS, OPERATOR_TOKEN_ENV, VISITOR_ID_KEY_ENV, ClientAddress, check_origin

__all__ = ["ServerConfig", "config_from_env", "security_summary", "CONFIG_ENV", "DEMO_RULES", "DEFAULT_RULES"]

DEMO_RULES = resources.demo_rules()
DEFAULT_RULES = resources.default_rules()
CONFIG_ENV = "PCRULES_SERVER_CONFIG"


@dataclass
class ServerConfig:
    rules: str | None = None          # a rule spec file; reloaded from the same path
    bundle: str | None = None         # a bundle (publish dir, its `current`, or a version dir)
    # With a publish dir (or its `current`) as the bundle, each worker follows `current`: when a Publish or a
    # rollback (from any host, the tuner or the CLI) moves it, the worker loads that version within a second or
    # so. A version that fails to load is reported once and the last good one keeps serving. False: the version
    # loaded at start stays until a reload (SIGHUP, POST /v1/admin/reload). A version dir is never followed.
    follow_bundle: bool = True
    demo: bool = False                # serve the demo site (and use its ruleset when none is given)
    redis_url: str | None = None      # shared state in Redis; in-memory (one process) without it
    redis_prefix: str = "pcrules:"
    # Serve on a Redis that a crash or restart makes forget caps, cooldowns and pending offers (no append-only
    # file synced every second or always). Refused at start-up without it; a loss is still detected (503).
    redis_allow_volatile: bool = False
    log_path: str | None = None       # the decision log: an SQLite file or a postgresql:// URL; none without it
    # With a postgresql:// log each record is journaled on this host first (one write, crash-safe), here, and moved
    # into PostgreSQL in batches. None: $PCRULES_LOG_JOURNAL_DIR, else ~/.local/state/pcrules/<host_port_db>.pending.
    log_journal_dir: str | None = None
    max_body_bytes: int = 16 * 1024
    trust_client_ts: bool = False     # accept `ts` from clients (replays, server-to-server); never for browsers
    # The operator routes' bearer token (>= 16 characters; $PCRULES_OPERATOR_TOKEN). Without it they are not served.
    operator_token: str | None = field(default=None, repr=False)
    metrics_public: bool = False      # serve /metrics without the token (a scraper on a private network)
    # With a key (>= 16 bytes; $PCRULES_VISITOR_ID_KEY) the log and the store hold a keyed hash of each visitor id.
    visitor_id_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()  # other sites whose pages may call the public routes; none by default
    # Rate limits on the public routes: requests/s and burst per visitor id and per client address (None: no
    # limit). With redis_url the budgets are held in Redis, shared by every worker and host (security.py:
    # RedisRateLimiter); without it, token buckets per process. Behind a proxy list it in trusted_proxies, else
    # every client has the proxy's address.
    visitor_rate: float | None = 1.0
    visitor_burst: int = 30
    address_rate: float | None = 50.0
    address_burst: int = 1000
    trusted_proxies: tuple[str, ...] = ()  # addresses / networks whose X-Forwarded-For is believed
    rate_limit_keys: int = 100_000    # buckets kept per limiter (least recently used dropped first)
    # The runtime never runs on the event loop (a stalled Redis or disk would stall every connection): by default
    # the observations that arrived together are decided as one batch on one worker thread, their Redis writes
    # sharing one round trip. offload decides each observation on its own thread instead (no batching).
    offload: bool = False
    # Slow and greedy clients, per worker (pcrules.server.transport): a request head must arrive whole within
    # head_timeout_s (of the connection's start, or of the previous answer), a body may pause at most
    # body_timeout_s between chunks, a head over max_head_bytes gets 431; past max_connections the connection
    # waiting longest for its request head is closed (None: 2,000, fewer if the file-descriptor limit is low).
    head_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_head_bytes: int = 16 * 1024
    max_connections: int | None = None
    # Redis: how long one call may wait for an answer / for a connection before the request gets 503.
    redis_socket_timeout_s: float = 1.0
    redis_connect_timeout_s: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.redis_allow_volatile, bool):
            problems.append("redis_allow_volatile: expected true or false")
        for name in ("operator_token", "visitor_id_key"):
            value = getattr(self, name)
            if value == "":
                setattr(self, name, None)
            elif value is not None and (not isinstance(value, str) or len(value.encode()) < MIN_TOKEN_CHARS):
                problems.append(f"{name}: expected a secret of at least {MIN_TOKEN_CHARS} characters")
        if self.operator_token is not None and (self.operator_token != self.operator_token.strip()
                                                or any(c.isspace() for c in self.operator_token)):
            problems.append("operator_token: must not contain spaces (it is sent in an Authorization header)")
        for name in ("cors_origins", "trusted_proxies"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            setattr(self, name, tuple(value or ()))
        try:
            self.cors_origins = tuple(check_origin(o) for o in self.cors_origins)
            ClientAddress(self.trusted_proxies)
        except ValueError as exc:
            problems.append(str(exc))
        for rate, burst in (("visitor_rate", "visitor_burst"), ("address_rate", "address_burst")):
            r, b = getattr(self, rate), getattr(self, burst)
            if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < math.inf):
                problems.append(f"{rate}: expected a number of requests per second > 0, or null for no limit")
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                problems.append(f"{burst}: expected an integer >= 1")
        if isinstance(self.rate_limit_keys, bool) or not isinstance(self.rate_limit_keys, int) \
                or self.rate_limit_keys < 1:
            problems.append("rate_limit_keys: expected an integer >= 1")
        for name in ("head_timeout_s", "body_timeout_s", "redis_socket_timeout_s", "redis_connect_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                problems.append(f"{name}: expected a number of seconds > 0")
        for name, least in (("max_head_bytes", 1024), ("max_connections", 1)):
            v = getattr(self, name)
            if not (v is None and name == "max_connections") and (isinstance(v, bool) or not isinstance(v, int)
                                                                  or v < least):
                problems.append(f"{name}: expected an integer >= {least}")
        if problems:
            raise ValueError("server configuration refused: " + "; ".join(problems))

    def rules_path(self) -> Path:
        if self.rules:
            return Path(self.rules)
        return DEMO_RULES if self.demo else DEFAULT_RULES

    def describe_source(self) -> str:
        return f"bundle {self.bundle}" if self.bundle else f"rules {self.rules_path()}"

    def describe_log(self) -> str:
        """The decision log for the banner: its path, or its URL without a password."""
        from ..runtime.log.postgres import describe, is_postgres_url

        if not self.log_path:
            return "off"
        return describe(self.log_path) if is_postgres_url(self.log_path) else self.log_path


def config_from_env(config: ServerConfig | None = None, environ: Any = None) -> ServerConfig:
    """`config` (else the JSON object in $PCRULES_SERVER_CONFIG, else the defaults) with the secrets in the
    environment: $PCRULES_OPERATOR_TOKEN and $PCRULES_VISITOR_ID_KEY win over the configured ones."""
    env = os.environ if environ is None else environ
    if config is None:
        raw = env.get(CONFIG_ENV)
        config = ServerConfig(**json.loads(raw)) if raw else ServerConfig()
    token = env.get(OPERATOR_TOKEN_ENV) or config.operator_token
    key = env.get(VISITOR_ID_KEY_ENV) or config.visitor_id_key
    if token is config.operator_token and key is config.visitor_id_key:
        return config
    return replace(config, operator_token=token, visitor_id_key=key)


def security_summary(config: ServerConfig) -> list[str]:
    """What `pcrules serve` says at start-up about who may call what (never a secret)."""
    out = []
    if config.operator_token:
        out.append("operator routes (/v1/queues, /v1/admin/reload, /metrics): on, each request needs "
                   "'Authorization: Bearer <operator token>'"
                   + ("; /metrics is public (metrics_public)" if config.metrics_public else ""))
    else:
        out.append(f"operator routes (/v1/queues, /v1/admin/reload{'' if config.metrics_public else ', /metrics'}): "
                   f"OFF, no operator token; set {OPERATOR_TOKEN_ENV} to a secret of at least {MIN_TOKEN_CHARS} "
                   f"characters to serve them" + ("; /metrics is public (metrics_public)" if config.metrics_public
                                                  else ""))

    def limit(rate: float | None, burst: int) -> str:
        return "no limit" if rate is None else f"{rate:g}/s, bursts of {burst}"

    proxies = ", ".join(config.trusted_proxies) or "none"
    where = "shared by every worker and host (in Redis)" if config.redis_url else "per worker"
    out.append(f"rate limits {where}: per visitor {limit(config.visitor_rate, config.visitor_burst)}; per address "
               f"{limit(config.address_rate, config.address_burst)} (trusted proxies: {proxies})")
    out.append("CORS: " + (", ".join(config.cors_origins) if config.cors_origins
                           else "none (only this server's own pages may post; set cors_origins to allow a site)"))
    out.append("visitor ids: " + ("pseudonymised with a keyed hash" if config.visitor_id_key
                                  else f"logged as sent (set {VISITOR_ID_KEY_ENV} to pseudonymise)"))
    return out
