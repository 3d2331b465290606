"""What lets the public routes face the internet: operator tokens, rate limits, client addresses, CORS.

- :class:`OperatorAuth`: ``Authorization: Bearer <token>`` against the configured operator token, compared
  in constant time (of SHA-256 digests, so not even the length leaks); the token is never logged or echoed.
- :class:`RateLimiter`: token buckets per key (a visitor id, a client address), bounded in memory: a bucket
  idle long enough to be full again is dropped, and past ``max_keys`` the least recently used go first.
  Per process (each uvicorn worker counts for itself) and not thread-safe: it runs on the event loop.
- :class:`RedisRateLimiter`: the same budget held in Redis (the ``limits`` library), shared by every worker and
  host that uses that Redis; its own per-process :class:`RateLimiter` stands in while Redis does not answer.
  Both are a :class:`Limiter`, which is all the public routes need.
- :class:`ClientAddress`: the key of the client's address: the peer address, or the right-most
  ``X-Forwarded-For`` hop that is not a configured trusted proxy; IPv6 addresses count per /64.
- :class:`OriginPolicy`: CORS for the configured origins only (no wildcard unless configured), preflights
  answered, and a state-changing request from any other site's page refused with 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

log = logging.getLogger("pcrules.server")

__all__ = ["OperatorAuth", "Limiter", "RateLimiter", "RedisRateLimiter", "ClientAddress", "OriginPolicy",
           "check_origin", "MIN_TOKEN_CHARS",
           "OPERATOR_TOKEN_ENV", "VISITOR_ID_KEY_ENV"]

OPERATOR_TOKEN_ENV = "PCRULES_OPERATOR_TOKEN"
VISITOR_ID_KEY_ENV = "PCRULES_VISITOR_ID_KEY"
MIN_TOKEN_CHARS = 16


# --------------------------------------------------------------------------- operator token


class OperatorAuth:
    """``check(header)`` -> None when the bearer token is right, else "missing" or "wrong"."""

    __slots__ = ("_digest",)

    def __init__(self, token: str):
        self._digest = hashlib.sha256(token.encode()).digest()

    def check(self, authorization: str | None) -> str | None:
        if not authorization:
            return "missing"
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return "missing"
        given = hashlib.sha256(credentials.strip().encode("utf-8", "surrogateescape")).digest()
        return None if hmac.compare_digest(given, self._digest) else "wrong"

    def __repr__(self) -> str:
        return "OperatorAuth(<token hidden>)"


# --------------------------------------------------------------------------- rate limits


class Limiter(Protocol):
    """A rate limit as the public routes use it: ``await acquire(key)`` takes one request of `key`'s budget and
    gives 0.0, or refuses (taking nothing) and gives the seconds until one would pass; ``describe()`` is the
    budget in words for the 429's message; ``name`` is the 429's ``limit`` ("per_visitor", "per_address")."""

    name: str

    async def acquire(self, key: str) -> float: ...

    def describe(self) -> str: ...


class RateLimiter:
    """Token buckets: `rate` tokens per second up to `burst`; ``hit(key)`` takes one, or says how long to wait."""

    __slots__ = ("name", "rate", "burst", "max_keys", "_buckets", "_full_after", "_clock")

    def __init__(self, name: str, rate: float, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        if not (rate > 0 and math.isfinite(rate)) or burst < 1 or max_keys < 1:
            raise ValueError(f"{name}: expected a rate > 0, a burst >= 1 and max_keys >= 1")
        self.name, self.rate, self.burst, self.max_keys = name, float(rate), int(burst), int(max_keys)
        self._buckets: OrderedDict[Any, list[float]] = OrderedDict()  # key -> [tokens, when]; oldest first
        self._full_after = self.burst / self.rate  # idle this long, a bucket is full again: as good as absent
        self._clock = clock

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: Any, now: float) -> list[float] | None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            self._buckets.move_to_end(key)
        return bucket

    def peek(self, key: Any) -> float:
        """Seconds until `key` may pass again (0: now), taking nothing."""
        bucket = self._tokens(key, self._clock())
        return 0.0 if bucket is None or bucket[0] >= 1.0 else (1.0 - bucket[0]) / self.rate

    def hit(self, key: Any) -> float:
        """Take a token for `key`: 0.0 when it passes, else the seconds until it would (nothing taken)."""
        now = self._clock()
        bucket = self._tokens(key, now)
        if bucket is None:
            buckets = self._buckets
            # Drop buckets that are full again (at most two per new key: amortised O(1)), then the least recent.
            for _ in range(2):
                if not buckets:
                    break
                oldest = next(iter(buckets.values()))
                if now - oldest[1] < self._full_after:
                    break
                buckets.popitem(last=False)
            while len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            buckets[key] = [self.burst - 1.0, now]
            return 0.0
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate

    async def acquire(self, key: str) -> float:
        """:meth:`hit`, as a :class:`Limiter` (nothing to wait for: it is all in this process)."""
        return self.hit(key)

    def describe(self) -> str:
        return f"{self.rate:g}/s (bursts of {self.burst})"


def _limits_script(name: str) -> str:
    from importlib.resources import files

    return (files("limits") / "resources" / "redis" / "lua_scripts" / name).read_text()


class RedisRateLimiter:
    """A budget of `burst` requests, then `rate` per second, per key, held in Redis: every worker and every host
    using that Redis draws on the same budget, so N workers allow the budget once, not N times.

    **Strategy: the sliding window counter** (``limits.aio.strategies.SlidingWindowCounterRateLimiter``) with a
    window of ``W = burst / rate`` seconds (rounded to whole seconds, at least 1) and a limit of `burst` per
    window. Of the ``limits`` strategies it is the closest to the token bucket that one process uses:

    - a new key passes `burst` requests at once and refuses the next, like a full bucket;
    - after the window in which a burst was spent, requests pass again at `rate` per second (the previous
      window's count is weighted down linearly), like a bucket refilling; traffic at `rate` or slower is
      never refused;
    - in any stretch of T seconds it passes at most about ``burst + rate * T``, the token bucket's own bound.

    It refuses more than the bucket in one case: a client that spent its whole burst early in a window waits
    for that window to end (at most W) before passing at `rate` again. The moving window would keep the
    bucket's bound too but hands the budget back a whole burst at a time (after W, not at `rate`) and stores
    one timestamp per request (up to `burst` per key); the fixed window lets up to twice the burst through
    around a window's edge. The counter keeps two integers per key, expiring by themselves after 2 W, and each
    check is one script run in Redis (its clock, not the hosts', measures the windows). When ``burst < rate``
    (a window shorter than a second) the window is 1 s and its limit ``round(rate)``: the rate is kept and the
    burst grows to one second's worth.

    **Keys**: ``<prefix>ratelimit:LIMITER/<name>/<digest>/...``, where `prefix` is the store's (``pcrules:``)
    and `digest` a BLAKE2b hash of the key (keyed with `secret` when given, the visitor-id key): neither the
    visitor ids nor the client addresses reach Redis as sent.

    **When Redis does not answer** (down, stalled past `timeout_s`, refusing): the request is not refused and
    does not fail; this process's own token bucket (`fallback`, the same rate and burst) decides it, the
    outage is logged once as a warning (and its end once), and ``on_fallback(name)`` is called for each
    request decided so (a counter in /metrics). For `retry_s` after a failure, and while `skip()` says so (the
    shared store is known to be down), Redis is not asked at all, so a stalled Redis costs at most one
    `timeout_s` per `retry_s`. Why not 503, as the store does: the limit protects the server, it is not state
    that must be right; while Redis is down the routes that need the store get 503 from the store anyway, and
    the others (goals) keep a limit, per worker, instead of being refused for a failure of the limiter.
    """

    def __init__(self, name: str, rate: float, burst: int, url: str, *, prefix: str = "pcrules:",
                 timeout_s: float = 0.25, connect_timeout_s: float = 0.25, secret: str | bytes | None = None,
                 fallback: RateLimiter | None = None, max_keys: int = 100_000, retry_s: float = 1.0,
                 skip: Callable[[], bool] | None = None, on_fallback: Callable[[str], None] | None = None):
        if not (rate > 0 and math.isfinite(rate)) or burst < 1:
            raise ValueError(f"{name}: expected a rate > 0 and a burst >= 1")
        from limits import RateLimitItemPerSecond

        self.name, self.rate, self.burst = name, float(rate), int(burst)
        self.window_s = max(1, round(self.burst / self.rate))
        self.limit = self.burst if self.burst >= self.rate else max(self.burst, round(self.rate))
        self.item = RateLimitItemPerSecond(self.limit, self.window_s)
        self.url, self.prefix = url, prefix
        self.timeout_s, self.connect_timeout_s, self.retry_s = float(timeout_s), float(connect_timeout_s), retry_s
        raw = secret.encode() if isinstance(secret, str) else (secret or b"")
        self._hash_key = hashlib.sha256(raw).digest() if raw else b""
        self.fallback = fallback or RateLimiter(name, rate, burst, max_keys=max_keys)
        self.skip = skip
        self.on_fallback = on_fallback
        self.down_until = 0.0  # monotonic time before which Redis is not asked
        self.failing = False  # an outage was logged and has not ended
        self._loop: Any = None
        self._strategy: Any = None
        self._pool: Any = None
        self.script = _limits_script("acquire_sliding_window.lua")  # what limits' storage runs for one hit

    def _digest(self, key: str) -> str:
        return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), key=self._hash_key, digest_size=16).hexdigest()

    def _limiter(self) -> Any:
        """The strategy on a Redis client of the running event loop (asyncio connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            import redis.asyncio
            from limits.aio.storage import RedisStorage
            from limits.aio.strategies import SlidingWindowCounterRateLimiter

            from ..runtime.stores.redis import url_kind

            kind = url_kind(self.url)
            timeouts: Any = {"socket_timeout": self.timeout_s, "socket_connect_timeout": self.connect_timeout_s}
            if kind == "single":
                pool = redis.asyncio.ConnectionPool.from_url(self.url, **timeouts)
                pool_option: Any = {"connection_pool": pool}  # passed on to redis-py (limits types options narrowly)
                storage = RedisStorage("async+redis://", implementation="redispy", wrap_exceptions=True,
                                       key_prefix=f"{self.prefix}ratelimit", **pool_option)
                self._pool = pool
            else:  # the same URL as the store's: limits' own cluster and Sentinel storages
                from limits.aio.storage import RedisClusterStorage, RedisSentinelStorage

                scheme, rest = self.url.split("://", 1)
                if scheme.lower().startswith("rediss"):
                    scheme, timeouts["ssl"] = "redis" + scheme[6:], True  # rediss+cluster: TLS
                if kind == "cluster":
                    storage = RedisClusterStorage(f"async+{scheme}://{rest.split('/')[0].split('?')[0]}",
                                                  implementation="redispy", wrap_exceptions=True,
                                                  key_prefix=f"{self.prefix}ratelimit", **timeouts)
                else:  # redis+sentinel://hosts/service[/db]: limits reads the service from the path
                    netloc, _, path = rest.split("?")[0].partition("/")
                    storage = RedisSentinelStorage(f"async+{scheme}://{netloc}/{path.split('/')[0]}",
                                                   implementation="redispy", wrap_exceptions=True,
                                                   use_replicas=False, key_prefix=f"{self.prefix}ratelimit",
                                                   **timeouts)
                self._pool = storage.bridge  # its client is closed by aclose
            self._strategy, self._loop = SlidingWindowCounterRateLimiter(storage), loop
        return self._strategy

    async def aclose(self) -> None:
        """Close this event loop's connections to Redis (the app's shutdown)."""
        pool, self._pool, self._loop, self._strategy = self._pool, None, None, None
        if pool is not None:
            with contextlib.suppress(Exception):
                if hasattr(pool, "disconnect"):
                    await pool.disconnect()
                else:  # limits' bridge to a cluster or Sentinel client
                    await pool.storage.aclose()

    def _asking(self) -> bool:
        return time.monotonic() >= self.down_until and not (self.skip is not None and self.skip())

    def _failed(self, exc: BaseException) -> None:
        self.down_until = time.monotonic() + self.retry_s
        if not self.failing:
            self.failing = True
            log.warning("rate limit %s: Redis did not answer (%s: %s); this worker's own token bucket decides "
                        "until it does (the budget is per worker meanwhile)", self.name, type(exc).__name__,
                        str(exc)[:200])

    def _answered(self) -> None:
        if self.failing:
            self.failing = False
            log.warning("rate limit %s: Redis answers again; the budget is shared by every worker", self.name)

    async def acquire(self, key: str) -> float:
        if not self._asking():
            return self._fall_back(key)
        try:
            passed = await self._limiter().hit(self.item, self.name, self._digest(key))
        except Exception as exc:  # noqa: BLE001 - whatever Redis or the client raise, the request goes on
            self._failed(exc)
            return self._fall_back(key)
        self._answered()
        return 0.0 if passed else await self.retry_after(key)

    async def retry_after(self, key: str) -> float:
        """Seconds until `key`, refused, would pass again (at most the window)."""
        try:
            stats = await self._limiter().get_window_stats(self.item, self.name, self._digest(key))
        except Exception:  # noqa: BLE001 - refused either way; the window is an upper bound
            return float(self.window_s)
        return min(float(self.window_s), max(0.001, stats.reset_time - time.time()))

    # A server deciding observations in batches checks their budgets in the batch, one round trip for all
    # (RedisStore.run_script), instead of one asynchronous call per check: about 100 us of CPU each on a
    # cluster, as much as the rest of the request. It runs limits' own script for one hit on the keys limits'
    # storage uses, so both ways draw on one budget.

    def batch_calls(self, keys: list[str]) -> list[tuple[list[str], list[Any]]] | None:
        """The script calls that hit `keys` once each, or None when Redis is not to be asked now."""
        if not self._asking():
            return None
        expiry = self.item.get_expiry()
        out = []
        for key in keys:
            current = f"{self.prefix}ratelimit:{{{self.item.key_for(self.name, self._digest(key))}}}"
            out.append(([current + "/-1", current], [self.limit, expiry, 1]))
        return out

    def batch_results(self, replies: list[Any] | BaseException | None, n: int) -> list[bool | None]:
        """Whether each of the `n` checks passed, from its script reply; None: not known (Redis not asked, not
        answering, failing for that key), to be checked with acquire, on the event loop like every use of this
        worker's own buckets."""
        if replies is None:
            return [None] * n
        if isinstance(replies, BaseException):
            self._failed(replies)
            return [None] * n
        out: list[bool | None] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                self._failed(reply)
                out.append(None)
            else:
                out.append(reply == 1)
        if None not in out:
            self._answered()
        return out

    def _fall_back(self, key: str) -> float:
        if self.on_fallback is not None:
            self.on_fallback(self.name)
        return self.fallback.hit(key)

    async def clear(self, key: str) -> None:
        """Forget `key`'s budget (tests, an operator's pardon)."""
        await self._limiter().clear(self.item, self.name, self._digest(key))

    def describe(self) -> str:
        return (f"{self.limit / self.window_s:g}/s (bursts of {self.limit}), shared by every worker")

    def __repr__(self) -> str:
        return f"RedisRateLimiter({self.name!r}, {self.describe()}, prefix={self.prefix!r})"


# --------------------------------------------------------------------------- the client's address


def _networks(items: Iterable[str]) -> tuple[Any, ...]:
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {str(item)[:64]!r} is not an IP address or network") from None
    return tuple(out)


def _address_key(host: str) -> str:
    if ":" not in host:  # IPv4 (or a name, as TestClient gives): the address itself
        return host
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{addr}/64", strict=False))  # one subscriber holds a whole /64
        return str(addr.ipv4_mapped)
    return str(addr)


class ClientAddress:
    """``ClientAddress(trusted_proxies)(scope)`` -> the rate-limit key of the client's address."""

    __slots__ = ("proxies",)

    def __init__(self, trusted_proxies: Iterable[str] = ()):
        self.proxies = _networks(trusted_proxies)

    def _trusted(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.proxies)

    def __call__(self, scope: Mapping[str, Any]) -> str:
        client = scope.get("client")
        host = client[0] if client else ""
        if self.proxies and self._trusted(host):
            forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
            hops = [h.strip() for h in ",".join(forwarded).split(",") if h.strip()]
            for hop in reversed(hops):  # the right-most hop a trusted proxy did not add is the client
                host = hop
                if not self._trusted(hop):
                    break
        return _address_key(host)


# --------------------------------------------------------------------------- CORS and other sites' pages


def check_origin(origin: str) -> str:
    """A configured CORS origin, normalised ("https://shop.example.com", "http://127.0.0.1:8000"), or ValueError."""
    text = str(origin).strip()
    if text == "*":
        return text
    problem = ValueError(f"cors_origins: {text[:100]!r} is not an origin (scheme://host[:port], no path)")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise problem from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username or parts.password:
        raise problem
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{parts.hostname}" + ("" if port in (None, default) else f":{port}")


def _same_host(origin: str, host: str | None) -> bool:
    if not host:
        return False
    try:  # both come from the client: anything unparsable ("http://[::1", a port of 99999) is another site
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        mine = urlsplit("//" + host)
        their_port, my_port = parts.port or {"http": 80, "https": 443}[parts.scheme], mine.port
    except ValueError:
        return False
    if mine.hostname != parts.hostname:
        return False
    # Behind a proxy that terminates TLS the Host header may name no port: then equal host names do.
    return my_port is None or my_port == their_port


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


SAFE_METHODS = ("GET", "HEAD")


class OriginPolicy:
    """Pure ASGI. With an ``Origin`` header (sent by browsers on cross-site and on POST requests):

    - a configured origin gets ``Access-Control-Allow-Origin`` (that origin, never ``*`` unless configured) and
      its preflight (POST, ``Content-Type``; no credentials, no ``Authorization``) is answered 204;
    - any other origin gets no CORS header, its preflight a 403, and a POST from its pages a 403 (nothing runs):
      a page of another site cannot make a visitor's browser act on the server. The server's own pages
      (Origin naming the Host) pass.
    """

    def __init__(self, app: Any, origins: Iterable[str] = (),
                 on_refusal: Callable[[int, str], None] | None = None):
        self.app = app
        self.origins = frozenset(origins)
        self.any = "*" in self.origins
        self.on_refusal = on_refusal

    def allowed(self, origin: str) -> bool:
        return self.any or origin in self.origins

    async def _refuse(self, send: Any, origin: str, message: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(403, "origin_not_allowed")
        body = json.dumps({"error": "origin_not_allowed", "field": "origin",
                           "message": f"origin: {origin[:100]} {message}; the server's cors_origins list the "
                                      f"sites whose pages may call it"}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"vary", b"Origin")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.allowed(origin)
        method = scope["method"]
        if method == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            if not allowed:
                await self._refuse(send, origin, "may not call this server")
                return
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", b"POST"),
                (b"access-control-allow-headers", b"content-type"),
                (b"access-control-max-age", b"600"),
                (b"vary", b"Origin")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if allowed:
            extra = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

            async def send_with_cors(message: dict) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
                await send(message)

            await self.app(scope, receive, send_with_cors)
            return
        if method not in SAFE_METHODS and not _same_host(origin, _header(scope, b"host")):
            await self._refuse(send, origin, "may not send requests here")
            return
        await self.app(scope, receive, send)
