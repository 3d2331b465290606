"""The reference chat-server integration: an ASGI app (Starlette) around one :class:`pcrules.Runtime`.

Public routes (what a browser on the customer's site calls: anyone on the internet can)::

    POST /v1/observe                     an event in, a decision out
    POST /v1/offers/{id}/accept          the visitor's answer (also /decline, /expire), body
                                         {"visitor_id": ..., "session_id": ...}: the offer's own visitor and session
    POST /v1/goals                       a business outcome: {"visitor_id", "session_id", "goal", "value"?}
    GET  /static/pcrules.js              the browser snippet
    GET  /healthz                        200 when the store and the decision log work, else 503 naming which

Operator routes, only with an ``operator_token`` (``$PCRULES_OPERATOR_TOKEN``), which each request
sends as ``Authorization: Bearer <token>`` (401 without it, 403 when wrong)::

    POST /v1/queues/{name}               {"agents_available": 3, "estimated_wait_s": 40}
    POST /v1/admin/reload                reload the configured ruleset or bundle (also SIGHUP)
    GET  /metrics                        Prometheus text (without the token when ``metrics_public``)

With ``demo`` the demo site is served too (``pcrules.server.demo``).

Every refusal is JSON ``{"error": code, "message": ..., "field": ...}`` with a
4xx status naming the field at fault; a store outage is a 503 with the same
shape, as is a decision log that cannot be written (503 ``log_unavailable``, with
Retry-After: nothing was decided); bodies are JSON objects of at most ``max_body_bytes``. The event time
is the server's clock: a client cannot choose ``ts`` unless ``trust_client_ts``.
What guards the public routes (rate limits, CORS, answers bound to their
visitor, pseudonymous visitor ids): :mod:`pcrules.server.security` and README "Security".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import ipaddress
import logging
import math
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ..bundle import BundleError, current_version, load_bundle
from ..core.spec import load_spec
from ..errors import InvalidEvent, LogUnavailable, OfferClosed, OfferNotFound, PcrulesError, SpecError, UnknownQueue
from ..runtime.log import open_log
from ..runtime.log.postgres import is_postgres_url
from ..runtime.log.sqlite import LogHealth
from ..runtime.runtime import Runtime
from ..runtime.stores.memory import MemoryStore, SharedStore
from .config import DEMO_RULES, ServerConfig, config_from_env, security_summary
from .http import STATIC_DIR, ApiError, SecurityHeaders, error_body, json_response, only, read_json  # noqa: F401
from .metrics import CONTENT_TYPE_LATEST, Metrics, MetricsLog
from .security import ClientAddress, Limiter, OperatorAuth, OriginPolicy, RateLimiter, RedisRateLimiter

__all__ = ["ServerConfig", "Service", "create_app", "app_from_env", "freeze_startup_heap", "ApiError", "STATIC_DIR",
           "DEMO_RULES", "config_from_env", "security_summary"]

log = logging.getLogger("pcrules.server")

ANSWERS = ("accept", "decline", "expire")

MAX_BATCH = 128  # observations decided together (about 20-30 ms of work: the wait of the batch's last one)
CALL_THREADS = 16  # runtime calls other than observations at once (more wait their turn, the loop does not)
GATE_WAIT_S = 0.1  # while the store is down, a request waits this long for a ping that may find it back
HEALTH_WAIT_S = 0.5  # /healthz waits this long for a dependency's answer, then reports it as not answering
WATCH_EVERY_S = 1.0  # each worker re-checks its store and log this often (gauges in /metrics, recovery)


class StoreDown(PcrulesError):
    """Refused at once: the store failed a moment ago and has not answered a ping since. Without this, every
    request would wait out the socket timeout in turn, behind the runtime's lock."""

    code = "store_unavailable"  # type: ignore[assignment]


@dataclass(frozen=True)
class BatchLimits:
    """What an observation's budgets are checked on in its batch: its client's address, its visitor id."""

    service: Service
    address: str | None
    visitor_id: Any

    def checks(self) -> list[tuple[RedisRateLimiter, str]]:
        svc = self.service
        out: list[tuple[Any, str]] = []
        if svc.address_limit is not None and self.address is not None:
            out.append((svc.address_limit, self.address))
        if svc.visitor_limit is not None and _limited_visitor(self.visitor_id):
            out.append((svc.visitor_limit, self.visitor_id))
        return out


@dataclass(frozen=True)
class Refused:
    """An observation its batch's check refused: `limiter`'s budget for `key` is spent."""

    limiter: Any
    key: str


UNCHECKED = object()  # a batch could not check an observation's budgets in Redis: the handler does


def _outcome(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # this request's own failure, whatever it is
        return exc


class Service:
    """The runtime and what the routes share: configuration, metrics, reloads."""

    def __init__(self, config: ServerConfig, runtime: Runtime, metrics: Metrics):
        self.config = config
        self.runtime = runtime
        self.metrics = metrics
        self.started = time.time()
        self._reload_lock = asyncio.Lock()
        store = runtime.store
        self.store_kind = "redis" if isinstance(store, SharedStore) else ("memory" if isinstance(store, MemoryStore)
                                                                         else type(store).__name__)
        self.offload = bool(config.offload)
        # The runtime never runs on the event loop: a stalled Redis or disk would stall every connection, static
        # files and /healthz included. Observations that arrive together are decided together, one batch at a
        # time (in order) on one thread: with Redis their writes share one round trip, and the busier the
        # server, the more share each write. Other calls go to a small pool.
        self.batches = not self.offload
        self._waiting: list[tuple[dict, BatchLimits | None, asyncio.Future]] = []
        self._deciding = False  # a batch is on the batcher thread
        self._batcher = ThreadPoolExecutor(1, thread_name_prefix="pcrules-batch")
        self._callers = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="pcrules-call")
        self._checker = ThreadPoolExecutor(2, thread_name_prefix="pcrules-check")  # a ping, a log check
        self._checks: dict[str, asyncio.Future] = {}
        # Set when a call found the store unavailable, cleared by the next ping it answers (pcrules_store_ok).
        self.store_down = False
        self.demo: Any = None
        self.followed: str | None = None  # the bundle version served, or last tried, from a publish directory
        self.decision_log: Any = None  # the log under the metrics tee (SQLite, PostgreSQL), None without one
        self.pseudonymised = config.visitor_id_key is not None
        self.operator_auth = OperatorAuth(config.operator_token) if config.operator_token else None
        self.client_address = ClientAddress(config.trusted_proxies)
        self.rate_limit_fallbacks: Counter | None = None
        self.visitor_limit = self._limiter("per_visitor", config.visitor_rate, config.visitor_burst)
        self.address_limit = self._limiter("per_address", config.address_rate, config.address_burst)
        # Failed operator logins per address: 20, then one every 10 s (the token itself is far beyond guessing).
        self.auth_failures = RateLimiter("operator_auth", 0.1, 20, max_keys=10_000)
        self.proxy_hint_given = False
        # An observation's budgets in Redis are checked in its batch, one round trip for the batch's checks.
        self.limits_in_batch = self.batches and hasattr(store, "run_script") and any(
            isinstance(limit, RedisRateLimiter) for limit in (self.visitor_limit, self.address_limit))

    def _limiter(self, name: str, rate: float | None, burst: int) -> Limiter | None:
        """The per-visitor / per-address budget: in Redis when the state is (shared by every worker and host),
        else this process's token buckets."""
        config = self.config
        if rate is None:
            return None
        if not (config.redis_url and self.store_kind == "redis"):
            return RateLimiter(name, rate, burst, max_keys=config.rate_limit_keys)
        if self.rate_limit_fallbacks is None:
            self.rate_limit_fallbacks = Counter(
                "pcrules_rate_limit_fallbacks", "Rate-limit checks decided by this worker's own token bucket "
                "because Redis did not answer (the budget is then per worker)", ["limit"],
                registry=self.metrics.registry)
        fallbacks = self.rate_limit_fallbacks
        # A rate-limit check waits for Redis at most a quarter of a second (the store's own timeout if shorter).
        return RedisRateLimiter(name, rate, burst, config.redis_url, prefix=config.redis_prefix,
                                timeout_s=min(0.25, config.redis_socket_timeout_s),
                                connect_timeout_s=min(0.25, config.redis_connect_timeout_s),
                                secret=config.visitor_id_key, max_keys=config.rate_limit_keys,
                                retry_s=WATCH_EVERY_S, skip=lambda: self.store_down,
                                on_fallback=lambda limit: fallbacks.labels(limit).inc())

    @classmethod
    def build(cls, config: ServerConfig, **runtime_kwargs: Any) -> Service:
        metrics = Metrics()
        inner = open_log(config.log_path, journal_dir=config.log_journal_dir) if config.log_path else None
        store: Any
        if config.redis_url:
            from ..runtime.stores.redis import RedisStore

            contention = metrics.store_contention
            store = RedisStore(config.redis_url, prefix=config.redis_prefix,
                               socket_timeout_s=config.redis_socket_timeout_s,
                               connect_timeout_s=config.redis_connect_timeout_s,
                               # Every worker checks Redis' persistence when it first reaches it (the parent
                               # checks too, but a Redis down at start-up is first seen by the workers).
                               allow_volatile=bool(config.redis_allow_volatile),
                               on_contention=lambda kind: contention.labels(kind).inc())
        else:
            store = MemoryStore()
        log_ = MetricsLog(metrics, inner)
        if config.visitor_id_key is not None:
            runtime_kwargs.setdefault("visitor_id_key", config.visitor_id_key)
        bundle = None
        try:
            if config.bundle:
                bundle = load_bundle(config.bundle)
                runtime = Runtime(bundle.spec, scorer=bundle.scorer, log=log_, store=store, **runtime_kwargs)
            else:
                runtime = Runtime(load_spec(config.rules_path()), log=log_, store=store, **runtime_kwargs)
        except BaseException:
            log_.close()
            raise
        service = cls(config, runtime, metrics)
        service.followed = None if bundle is None else bundle.version
        service.decision_log = inner
        service._configure_store()
        return service

    def _configure_store(self) -> None:
        self.runtime.store.configure(session_ttl_s=self.runtime.spec.policy.session_idle_ttl_s)

    async def call(self, fn: Callable[..., Any], *args: Any, store: bool = True) -> Any:
        """fn(*args) on a worker thread; `store`: it needs the state store (refused at once while that is down)."""
        if store:
            await self._store_gate()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._callers, functools.partial(fn, *args))
        except PcrulesError as exc:
            self._saw(exc)
            raise

    async def observe(self, body: dict, limits: BatchLimits | None = None) -> Any:
        """The decision on `body`. With `limits` (limits_in_batch), its budgets are checked in its batch first,
        and the answer may instead be a Refused or UNCHECKED."""
        await self._store_gate()
        if not self.batches:
            return await self.call(self.runtime.observe, body)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((body, limits, future))
        if len(self._waiting) == 1 and not self._deciding:
            loop.call_soon(self._next_batch)  # after the other requests already read: they join this batch
        return await future

    def _next_batch(self) -> None:
        if self.store_down:  # found down while these waited: they would only wait out the timeouts in turn
            waiting, self._waiting = self._waiting, []
            for _, _, future in waiting:
                if not future.done():
                    future.set_exception(StoreDown("the shared state store is unavailable"))
            return
        if self._deciding or not self._waiting:
            return  # the batch being decided starts the next when it is done
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._deciding = True
        self.metrics.batch_size.observe(len(batch))
        done = asyncio.get_running_loop().run_in_executor(self._batcher, self._decide,
                                                          [(body, limits) for body, limits, _ in batch])
        done.add_done_callback(functools.partial(self._decided, batch))

    def _decide(self, items: list[tuple[dict, BatchLimits | None]]) -> list[Any]:
        """On the batcher thread: each observation's decision or error, after its budgets if it has some."""
        if not any(limits is not None for _, limits in items):
            return self._decide_bodies([body for body, _ in items])
        verdicts = self._check_limits([limits for _, limits in items])
        decided = iter(self._decide_bodies([body for (body, _), v in zip(items, verdicts) if v is None]))
        return [next(decided) if v is None else v for v in verdicts]

    def _check_limits(self, batch: list[BatchLimits | None]) -> list[Any]:
        """Each observation's budgets, checked together in one round trip: None (passed, or none to check), a
        Refused (the first budget that refused it, the address's before the visitor's, as the handler checks
        them), or UNCHECKED (Redis did not answer for one: checked on the event loop instead)."""
        checks: list[tuple[int, RedisRateLimiter, str]] = []
        for k, limits in enumerate(batch):
            if limits is not None:
                checks += [(k, limiter, key) for limiter, key in limits.checks()]
        calls: list[tuple[list[str], list[Any]]] = []
        spans: list[tuple[RedisRateLimiter, list[tuple[int, str]], tuple[int, int] | None]] = []
        for limiter in dict.fromkeys(lim for _, lim, _ in checks):
            mine = [(k, key) for k, lim, key in checks if lim is limiter]
            asked = limiter.batch_calls([key for _, key in mine])
            spans.append((limiter, mine, None if asked is None else (len(calls), len(calls) + len(asked))))
            calls += asked or []
        replies: list[Any] | BaseException = []
        if calls:
            try:
                store: Any = self.runtime.store
                replies = store.run_script(spans[0][0].script, calls)  # every limiter runs limits' one script
            except Exception as exc:  # noqa: BLE001 - the checks are then made on the loop, as without a batch
                replies = exc
        verdicts: list[Any] = [None] * len(batch)
        refusals: dict[int, list[tuple[int, Refused]]] = {}
        for limiter, mine, span in spans:
            got = (None if span is None else replies if isinstance(replies, BaseException)
                   else replies[span[0]:span[1]])
            for (k, key), passed in zip(mine, limiter.batch_results(got, len(mine))):
                if passed is None:
                    verdicts[k] = UNCHECKED
                elif not passed:
                    order = 0 if limiter is self.address_limit else 1
                    refusals.setdefault(k, []).append((order, Refused(limiter, key)))
        for k, refused in refusals.items():
            if verdicts[k] is None:
                verdicts[k] = min(refused, key=lambda r: r[0])[1]
        return verdicts

    def _decide_bodies(self, bodies: list[dict]) -> list[Any]:
        """Each body's decision, or its error (one by one on a local store: a failure stays the request's own)."""
        if not bodies:
            return []
        if self.store_kind != "redis":
            return [_outcome(self.runtime.observe, body) for body in bodies]
        try:
            return self.runtime.observe_many(bodies)
        except Exception as exc:  # not one event's fault (a bug, a failed disk): every request of the batch gets it
            return [exc] * len(bodies)

    def _decided(self, batch: list[tuple[dict, BatchLimits | None, asyncio.Future]], done: asyncio.Future) -> None:
        self._deciding = False
        if done.cancelled():  # shutting down
            for _, _, future in batch:
                future.cancel()
            return
        results = [done.exception()] * len(batch) if done.exception() else done.result()
        for (_, _, future), result in zip(batch, results):
            if isinstance(result, BaseException):
                self._saw(result)
            if future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._next_batch()  # those that arrived meanwhile, as one batch

    # ------------------------------------------------------------------ dependencies' health

    def _saw(self, exc: BaseException) -> None:
        if isinstance(exc, LogUnavailable):
            self.metrics.log_ok.set(0)
        elif getattr(exc, "code", None) == "store_unavailable" and not isinstance(exc, StoreDown):
            self.store_down = True
            self.metrics.store_ok.set(0)

    async def _store_gate(self) -> None:
        """Refuse at once while the store is known down, unless a quick ping finds it back. One ping at a time:
        while one is out (a stall), requests wait GATE_WAIT_S at most, not a socket timeout each."""
        if not self.store_down:
            return
        pinging = self._check("store")  # its answer sets or clears store_down
        if pinging is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(pinging), GATE_WAIT_S)
        if self.store_down:
            raise StoreDown("the shared state store is unavailable")

    def _check(self, what: str) -> asyncio.Future | None:
        """Ping the store ("store") or read the log's health ("log") on a checker thread, one of each at a time:
        callers meanwhile share its answer. None when there is nothing to check."""
        fn = self.runtime.store.ping if what == "store" else self.runtime.log_health
        loop = asyncio.get_running_loop()
        running = self._checks.get(what)
        if running is None or running.done() or running.get_loop() is not loop:
            running = self._checks[what] = loop.run_in_executor(self._checker, fn)
            running.add_done_callback(self._pinged if what == "store" else _retrieved)
        return running

    def _pinged(self, done: asyncio.Future) -> None:
        failed = done.cancelled() or done.exception() is not None
        self.store_down = failed
        self.metrics.store_ok.set(0 if failed else 1)
        if failed:
            self._next_batch()  # the observations waiting behind a batch stuck on the store: 503 now

    async def check_store(self) -> str | None:
        """None when the store answers a ping (or there is none), else what a client may be told of it."""
        down = self.store_down
        pinging = self._check("store")
        if pinging is None:
            return None
        if down and not pinging.done():  # already known down: no need to wait for this ping to time out too
            return STORE_TROUBLE["store_unavailable"]
        try:
            await asyncio.wait_for(asyncio.shield(pinging), HEALTH_WAIT_S)
        except TimeoutError:
            return f"the shared state store (Redis) did not answer within {HEALTH_WAIT_S} s"
        except Exception as exc:
            code = str(getattr(exc, "code", "error"))
            _warn_now_and_then(code, "healthz: %s", exc)
            return STORE_TROUBLE.get(code, "the shared state store failed")
        return None

    async def check_log(self) -> LogHealth | None:
        """The decision log's state (None without a log), read off the loop: it may touch a failing disk."""
        try:
            health = await asyncio.wait_for(asyncio.shield(self._check("log")), HEALTH_WAIT_S)  # type: ignore[arg-type]
        except TimeoutError:
            health = LogHealth(ok=False, problem=f"its state could not be read within {HEALTH_WAIT_S} s")
        except Exception as exc:
            log.exception("decision log health")
            health = LogHealth(ok=False, problem=f"its state could not be read ({exc.__class__.__name__})")
        self.metrics.log_health(health)
        return health

    async def watch(self) -> None:
        """Keep this worker's health gauges current (a scraper may ask another worker) and find a store that
        came back without waiting for a request."""
        while True:
            with contextlib.suppress(Exception):
                await asyncio.gather(self.check_store(), self.check_log())
            with contextlib.suppress(Exception):  # a publish directory being rewritten: asked again next time
                await self.follow_publish()
            await asyncio.sleep(WATCH_EVERY_S)

    def _publish_dir(self) -> Path | None:
        """The publish directory whose `current` this worker follows, or None (rules, a version dir, or
        ``follow_bundle`` off)."""
        if not (self.config.bundle and self.config.follow_bundle):
            return None
        where = Path(self.config.bundle)
        if where.name == "current" and where.is_symlink():
            where = where.parent
        return where if (where / "versions").is_dir() else None

    async def follow_publish(self) -> None:
        """Load the version the publish directory's `current` points to when it is not the one served: a Publish
        or a rollback made anywhere reaches every host. One try per move: a version that fails to load is
        reported once (reload() logs it and counts it) and the one served stays."""
        where = self._publish_dir()
        if where is None:
            return
        now = await anyio.to_thread.run_sync(current_version, where)
        if now is None or now == self.followed:
            return
        self.followed = now
        with contextlib.suppress(Exception):  # reload() has logged and counted it; the served version stays
            await self.reload(f"{where}/current moved to {now}")

    def _reload_now(self) -> dict:
        old = self.runtime.spec
        if self.config.bundle:
            bundle = self.runtime.reload_bundle(self.config.bundle)
            self.followed = bundle.version
            source = f"bundle {bundle.version}"
        else:
            self.runtime.reload(self.config.rules_path())
            source = str(self.config.rules_path())
        self._configure_store()
        new = self.runtime.spec
        return {"status": "reloaded", "source": source, "ruleset": new.name, "version": new.version,
                "previous": {"ruleset": old.name, "version": old.version}}

    async def reload(self, why: str) -> dict:
        async with self._reload_lock:
            try:
                result = await anyio.to_thread.run_sync(self._reload_now)
            except Exception as exc:
                self.metrics.reloads.labels("failed").inc()
                spec = self.runtime.spec
                if isinstance(exc, (PcrulesError, OSError)):  # a bad ruleset or bundle: expected, no traceback
                    log.error("reload (%s) failed, still serving %s %s: %s", why, spec.name, spec.version, exc)
                else:
                    log.exception("reload (%s) failed; still serving %s %s", why, spec.name, spec.version)
                raise
            self.metrics.reloads.labels("ok").inc()
            log.warning("reloaded (%s): now serving %s %s", why, result["ruleset"], result["version"])
            return result

    def close(self) -> None:
        self._batcher.shutdown(wait=True)  # a batch being decided is logged before the log closes
        self._callers.shutdown(wait=True)
        self._checker.shutdown(wait=False)
        self.runtime.close()
        self.runtime.store.close()


def _retrieved(done: asyncio.Future) -> None:
    if not done.cancelled():
        done.exception()  # read by someone: no "exception was never retrieved" when no caller waited for it


WARN_EVERY_S = 10.0
_warned: dict[str, tuple[float, int]] = {}


def _warn_now_and_then(key: str, message: str, *args: Any) -> None:
    """log.warning, at most once per WARN_EVERY_S per key, saying how many were left out: an outage that fails
    every request must not flood the log (or fill the disk that is already full)."""
    now = time.monotonic()
    last, left_out = _warned.get(key, (-math.inf, 0))
    if now - last < WARN_EVERY_S:
        _warned[key] = (last, left_out + 1)
        return
    _warned[key] = (now, 0)
    log.warning(message + (f" (and {left_out} more like it in the last {now - last:.0f} s)" if left_out else ""),
                *args)


def _svc(request: Request) -> Service:
    return request.app.state.service


def _ts(svc: Service, body: dict) -> Any:
    return body.get("ts") if svc.config.trust_client_ts else None


def _check_ts(svc: Service, body: dict) -> None:
    if "ts" in body and not svc.config.trust_client_ts:
        raise ApiError(400, "invalid_event", "ts: the event time is the server's clock; a client cannot set it",
                       field="ts")


# --------------------------------------------------------------------------- rate limits and the operator token


def _rate_limited(limiter: Limiter, wait: float, who: str) -> ApiError:
    seconds = max(1, math.ceil(wait))
    return ApiError(429, "rate_limited", f"too many requests {who}: at most {limiter.describe()}; retry after "
                                         f"{seconds} s", None, headers={"retry-after": str(seconds)},
                    limit=limiter.name, retry_after_s=seconds)


async def _throttle(limiter: Limiter, key: str, who: str) -> None:
    wait = await limiter.acquire(key)
    if wait:
        raise _rate_limited(limiter, wait, who)


async def _limit_address(svc: Service, request: Request) -> None:
    if svc.address_limit is not None:
        where = svc.client_address(request.scope)
        try:
            await _throttle(svc.address_limit, where, "from this address")
        except ApiError:
            _address_refused(svc, where)
            raise


def _address_refused(svc: Service, where: str) -> None:
    if not svc.proxy_hint_given and not svc.config.trusted_proxies and _private(where):
        svc.proxy_hint_given = True
        log.warning("the per-address rate limit refused %s; if a proxy forwards every visitor from there, "
                    "list it in trusted_proxies (else all visitors share one address's limit)", where)


async def _refused(svc: Service, refused: Refused) -> ApiError:
    limiter: Any = refused.limiter
    wait = await limiter.retry_after(refused.key)
    by_address = limiter is svc.address_limit
    if by_address:
        _address_refused(svc, refused.key)
    return _rate_limited(limiter, wait, "from this address" if by_address else "for this visitor")


def _private(address: str) -> bool:
    try:
        return ipaddress.ip_network(address, strict=False).is_private
    except ValueError:
        return False


def _limited_visitor(visitor_id: Any) -> bool:
    # An id the runtime will refuse anyway is not worth a bucket.
    return visitor_id.__class__ is str and 0 < len(visitor_id) <= 128


async def _limit_visitor(svc: Service, visitor_id: Any) -> None:
    if svc.visitor_limit is not None and _limited_visitor(visitor_id):
        await _throttle(svc.visitor_limit, visitor_id, "for this visitor")


def _authorize(svc: Service, request: Request) -> None:
    """The operator token, or 401 (none sent) / 403 (wrong) / 429 (too many failures from this address)."""
    assert svc.operator_auth is not None
    where = svc.client_address(request.scope)
    wait = svc.auth_failures.peek(where)
    if wait:
        seconds = max(1, math.ceil(wait))
        raise ApiError(429, "rate_limited", f"too many failed operator requests from this address; retry after "
                                            f"{seconds} s", None, headers={"retry-after": str(seconds)},
                       limit=svc.auth_failures.name, retry_after_s=seconds)
    problem = svc.operator_auth.check(request.headers.get("authorization"))
    if problem is None:
        return
    svc.auth_failures.hit(where)
    if problem == "missing":
        raise ApiError(401, "unauthorized", "authorization: an operator route; send 'Authorization: Bearer <operator "
                                            "token>'", "authorization",
                       headers={"www-authenticate": 'Bearer realm="pcrules operator"'})
    raise ApiError(403, "forbidden", "authorization: the operator token is not right", "authorization")


def _operator(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        _authorize(_svc(request), request)
        return await handler(request)

    return guarded


# --------------------------------------------------------------------------- public routes


async def observe(request: Request) -> Response:
    start = time.perf_counter()
    svc = _svc(request)
    in_batch = svc.limits_in_batch and not svc.store_down  # (down: the limits are this worker's, at once)
    if not in_batch:
        await _limit_address(svc, request)
    body = await read_json(request, svc.config.max_body_bytes)
    _check_ts(svc, body)
    decision = None
    if in_batch:
        address = svc.client_address(request.scope) if svc.address_limit is not None else None
        decision = await svc.observe(body, BatchLimits(svc, address, body.get("visitor_id")))
        if isinstance(decision, Refused):
            raise await _refused(svc, decision)
    if decision is None or decision is UNCHECKED:
        if decision is UNCHECKED:
            await _limit_address(svc, request)
        await _limit_visitor(svc, body.get("visitor_id"))
        decision = await svc.observe(body)
    response = json_response(decision.to_public_dict(body["visitor_id"] if svc.pseudonymised else None))
    svc.metrics.latency.observe(time.perf_counter() - start)
    return response


OWNER = ("visitor_id", "session_id")


async def answer(request: Request) -> Response:
    svc = _svc(request)
    what = request.path_params["answer"]
    if what not in ANSWERS:
        raise ApiError(404, "not_found", f"answer: expected one of {', '.join(ANSWERS)}, got {what[:32]!r}",
                       field="answer")
    await _limit_address(svc, request)
    body = await read_json(request, svc.config.max_body_bytes, required=False)
    only(body, (*OWNER, "ts") if svc.config.trust_client_ts else OWNER)
    for name in OWNER:  # the offer's own visitor and session: anyone else's answer is refused as "not found"
        if name not in body:
            raise ApiError(400, "invalid_body", f"{name}: required: the {name.split('_')[0]}'s id, as sent to "
                                                f"/v1/observe", field=name)
    await _limit_visitor(svc, body["visitor_id"])
    runtime = svc.runtime
    fn = {"accept": runtime.accept, "decline": runtime.decline, "expire": runtime.expire}[what]
    outcome = await svc.call(functools.partial(fn, request.path_params["offer_id"], _ts(svc, body),
                                               visitor_id=body["visitor_id"], session_id=body["session_id"]))
    return json_response({"offer_id": outcome.offer_id, "status": outcome.status.value, "ts": outcome.ts,
                  "queue": outcome.queue, "rule": outcome.rule})


GOAL_FIELDS = ("visitor_id", "session_id", "goal", "value")


async def goal(request: Request) -> Response:
    """A business outcome (bill_paid ...), for the uplift against the holdout; kept even for unknown visitors.

    Public, because the browser snippet reports goals too: like everything a browser sends, a goal can be
    forged, so a chat server that knows the outcome for sure should report it itself (Runtime.record_goal).
    """
    svc = _svc(request)
    await _limit_address(svc, request)
    body = await read_json(request, svc.config.max_body_bytes)
    only(body, (*GOAL_FIELDS, "ts") if svc.config.trust_client_ts else GOAL_FIELDS)
    for name in GOAL_FIELDS[:3]:
        if body.get(name) is None:
            raise ApiError(400, "invalid_body", f"{name}: required", field=name)
    await _limit_visitor(svc, body["visitor_id"])
    await svc.call(functools.partial(svc.runtime.record_goal, body["visitor_id"], body["session_id"], body["goal"],
                                     ts=_ts(svc, body), value=body.get("value")), store=False)  # only logged
    return json_response({"recorded": True, "goal": body["goal"]}, 202)


async def snippet(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "pcrules.js", media_type="text/javascript",
                        headers={"cache-control": "no-cache"})


_PATH = re.compile(r"(?<![\w.>])/[^\s:;,'\"]+")


def _no_paths(text: str | None, log_path: str | None = None) -> str | None:
    """`text` without file paths: /healthz is public, and like a store's address a log's path is internal (the
    server's own log has it). The log's own directory first: its name may hold spaces."""
    if text is None:
        return None
    if log_path and not is_postgres_url(log_path):
        for directory in (Path(log_path).resolve().parent, Path(log_path).parent):
            text = text.replace(str(directory), "<path>")
    return _PATH.sub("<path>", text)


async def healthz(request: Request) -> Response:
    """200, or 503 naming what fails: the store (a ping) or the decision log. Within HEALTH_WAIT_S either way:
    a stalled dependency is reported as not answering, it does not stall the answer."""
    svc = _svc(request)
    spec = svc.runtime.spec
    out: dict[str, Any] = {"status": "ok", "ruleset": spec.name, "version": spec.version, "store": svc.store_kind,
                           "uptime_s": round(time.time() - svc.started, 1)}
    store_problem, log_health = await asyncio.gather(svc.check_store(), svc.check_log())
    problems = [store_problem] if store_problem else []
    if log_health is not None:
        problem = _no_paths(log_health.problem, svc.config.log_path)
        out["log"] = {**asdict(log_health), "problem": problem,
                      "database": "postgresql" if is_postgres_url(svc.config.log_path) else "sqlite"}
        if not log_health.ok:
            _warn_now_and_then("log_health", "healthz: the decision log is failing: %s", log_health.problem)
            problems.append(f"the decision log is failing: {problem or 'no reason given'}")
    if problems:
        out.update(status="unavailable", error="; ".join(problems))
        return json_response(out, 503, {"retry-after": "1"})
    return json_response(out)


# --------------------------------------------------------------------------- operator routes


async def queue_status(request: Request) -> Response:
    svc = _svc(request)
    body = await read_json(request, svc.config.max_body_bytes, required=False)
    only(body, ("agents_available", "estimated_wait_s", "ts") if svc.config.trust_client_ts
          else ("agents_available", "estimated_wait_s"))
    status = await svc.call(functools.partial(svc.runtime.update_queue, request.path_params["name"],
                                              agents_available=body.get("agents_available"),
                                              estimated_wait_s=body.get("estimated_wait_s"), ts=_ts(svc, body)))
    return json_response({"queue": request.path_params["name"], **asdict(status)})


async def reload(request: Request) -> Response:
    svc = _svc(request)
    body = await read_json(request, svc.config.max_body_bytes, required=False)
    only(body, ())  # the source is the server's configuration, never a path from the request
    return json_response(await svc.reload("POST /v1/admin/reload"))


async def metrics(request: Request) -> Response:
    svc = _svc(request)
    await svc.check_log()  # this worker's gauges as of now (the others' as of their last check)
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def public_routes() -> list[Route]:
    return [
        Route("/v1/observe", observe, methods=["POST"]),
        Route("/v1/offers/{offer_id}/{answer}", answer, methods=["POST"]),
        Route("/v1/goals", goal, methods=["POST"]),
        Route("/static/pcrules.js", snippet, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]


def operator_routes(config: ServerConfig) -> list[Route]:
    """Only with an operator token (each request must carry it); /metrics also without one if metrics_public."""
    routes = []
    if config.operator_token:
        routes += [Route("/v1/queues/{name}", _operator(queue_status), methods=["POST"]),
                   Route("/v1/admin/reload", _operator(reload), methods=["POST"])]
    if config.metrics_public:
        routes.append(Route("/metrics", metrics, methods=["GET"]))
    elif config.operator_token:
        routes.append(Route("/metrics", _operator(metrics), methods=["GET"]))
    return routes


# --------------------------------------------------------------------------- errors


def _error_response(request: Request, status: int, error: str, message: str, field: str | None = None,
                    headers: dict | None = None, **extra: Any) -> Response:
    svc = getattr(request.app.state, "service", None)
    if svc is not None:
        svc.metrics.errors.labels(str(status), error).inc()
    return json_response(error_body(status, error, message, field, **extra), status, headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(request, exc.status, exc.error, exc.message, exc.field, exc.headers, **exc.extra)


LOG_RETRY_AFTER_S = 5  # a full disk is not freed in a second

# What a client is told when the shared store fails: no addresses, ids or driver text (those go to the log).
STORE_TROUBLE = {"store_unavailable": "the shared state store (Redis) is unavailable",
                 "store_busy": "this session is busy with another request",
                 "lock_lost": "the session's lock expired before the request finished"}


async def _pcrules_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, InvalidEvent):
        return _error_response(request, 400, "invalid_event", str(exc), exc.field)
    if isinstance(exc, OfferNotFound):
        return _error_response(request, 404, "offer_not_found", str(exc), "offer_id")
    if isinstance(exc, OfferClosed):
        return _error_response(request, 409, "offer_closed", str(exc), "offer_id", status_now=exc.status)
    if isinstance(exc, UnknownQueue):
        return _error_response(request, 404, "unknown_queue", str(exc), "name")
    if isinstance(exc, SpecError):
        return _error_response(request, 422, "invalid_spec", "the ruleset was refused; the current one keeps "
                               "serving", None, problems=list(exc.problems))
    if isinstance(exc, BundleError):
        return _error_response(request, 422, "invalid_bundle", f"{exc}; the current one keeps serving")
    if isinstance(exc, LogUnavailable):  # nothing was decided: the client may simply retry (the path stays here)
        _warn_now_and_then("log_unavailable", "%s", exc)
        return _error_response(request, 503, "log_unavailable", "the decision log cannot be written now, so "
                               "nothing was decided; retry shortly", None, {"retry-after": str(LOG_RETRY_AFTER_S)})
    code = str(getattr(exc, "code", "error"))
    if code.startswith(("store_", "lock_")):
        _warn_now_and_then(code, "%s", exc)
        return _error_response(request, 503, code, f"{STORE_TROUBLE.get(code, 'the shared state store failed')}; "
                                                   f"retry shortly", None, {"retry-after": "1"})
    log.warning("%s on %s %s", exc, request.method, request.url.path)
    return _error_response(request, 503, code, "the server cannot answer this now; retry shortly", None,
                           {"retry-after": "1"})


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client closed its connection before its whole body came: nobody to answer. Counted, not logged:
    anyone can do it as often as they like."""
    svc = getattr(request.app.state, "service", None)
    if svc is not None:
        svc.metrics.client_disconnects.inc()
    return Response(status_code=400)  # sent nowhere


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(request, exc.status_code, error, f"{request.method} {request.url.path}: {exc.detail}",
                           headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(request, 500, "internal", "internal error; the server log has the details")


class _ObservePath:
    """POST /v1/observe, the route nearly every request takes, served without the router and the exception
    middleware (a fifth of a request's CPU on the event loop went to them): the same handler, its errors
    answered by the same handlers. Inside OriginPolicy and ServerErrorMiddleware, as every route is."""

    def __init__(self, app: Any, handlers: dict[type, Callable[..., Any]]) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/observe" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await observe(request)
        except Exception as exc:
            handler = next((self.handlers[c] for c in type(exc).__mro__ if c in self.handlers), None)
            if handler is None:
                raise  # a bug: ServerErrorMiddleware answers 500
            response = await handler(request, exc)
        await response(scope, receive, send)


class _App(Starlette):
    """Starlette with SecurityHeaders outside everything, its ServerErrorMiddleware included: the 500 that
    answers an unhandled exception carries the headers too (add_middleware would put them inside it)."""

    def build_middleware_stack(self) -> Any:
        return SecurityHeaders(super().build_middleware_stack())


# --------------------------------------------------------------------------- the app


def create_app(config: ServerConfig | None = None, *, service: Service | None = None,
               **runtime_kwargs: Any) -> Starlette:
    """The ASGI app. `runtime_kwargs` (clock, new_offer_id) go to the Runtime (tests)."""
    config = config or ServerConfig()
    svc = service or Service.build(config, **runtime_kwargs)
    routes: list[Any] = public_routes() + operator_routes(config)
    if config.demo:
        from .demo import DemoPega, demo_routes

        svc.demo = DemoPega(svc)
        routes += demo_routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        loop = asyncio.get_running_loop()
        hup = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_on_signal(svc)))
            hup = True
        watcher = loop.create_task(svc.watch())
        try:
            yield
        finally:
            watcher.cancel()
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            for limiter in (svc.visitor_limit, svc.address_limit):
                if isinstance(limiter, RedisRateLimiter):
                    await limiter.aclose()
            svc.close()

    handlers: dict[type, Callable[..., Any]] = {ApiError: _api_error, PcrulesError: _pcrules_error,
                                                HTTPException: _http_error, ClientDisconnect: _client_gone}
    app = _App(routes=routes, lifespan=lifespan, exception_handlers={**handlers, Exception: _internal_error})
    app.state.service = svc
    app.add_middleware(_ObservePath, handlers=handlers)  # inside OriginPolicy, added next

    def refused(status: int, error: str) -> None:
        svc.metrics.errors.labels(str(status), error).inc()

    app.add_middleware(OriginPolicy, origins=config.cors_origins, on_refusal=refused)  # inside SecurityHeaders
    return app


async def _reload_on_signal(svc: Service) -> None:
    with contextlib.suppress(Exception):  # logged by Service.reload; the current ruleset keeps serving
        await svc.reload("SIGHUP")


def app_from_env() -> Starlette:
    """Factory for uvicorn worker processes: the configuration comes as JSON in $PCRULES_SERVER_CONFIG, the
    secrets also from $PCRULES_OPERATOR_TOKEN / $PCRULES_VISITOR_ID_KEY."""
    config = config_from_env()
    app = create_app(config)
    guard_connections(config, app.state.service)
    freeze_startup_heap()
    return app


def freeze_startup_heap() -> None:
    """Move what start-up allocated (pandas, scikit-learn, the ruleset: a few hundred thousand objects) out of
    the garbage collector's sight. Otherwise each full collection walks all of it while requests wait: the
    slowest answers of a busy server were such pauses (a max of 18 ms where it is 8 ms with this)."""
    gc.collect()
    gc.freeze()


def guard_connections(config: ServerConfig, svc: Service) -> None:
    """Set this process's connection limits (pcrules.server.transport), counting what they close."""
    from .transport import ConnectionLimits, configure

    closed = svc.metrics.connections_closed
    configure(ConnectionLimits.from_config(config), lambda reason: closed.labels(reason).inc())
