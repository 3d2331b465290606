"""What lets the public routes face the internet: operator tokens, rate limits, client addresses, CORS.

- :class:`OperatorAuth`: ``Authorization: Bearer <token>`` against the configured operator token, compared
  in constant time (of SHA-256 digests, so not even the length leaks); the token is never logged or echoed.
- :class:`RateLimiter`: token buckets per key (a visitor id, a client address), bounded in memory: a bucket
  idle long enough to be full again is dropped, and past ``max_keys`` the least recently used go first.
  Per process (each uvicorn worker counts for itself) and not thread-safe: it runs on the event loop.
- :class:`ClientAddress`: the key of the client's address: the peer address, or the right-most
  ``X-Forwarded-For`` hop that is not a configured trusted proxy; IPv6 addresses count per /64.
- :class:`OriginPolicy`: CORS for the configured origins only (no wildcard unless configured), preflights
  answered, and a state-changing request from any other site's page refused with 403.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["OperatorAuth", "RateLimiter", "ClientAddress", "OriginPolicy", "check_origin", "MIN_TOKEN_CHARS",
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

    def describe(self) -> str:
        return f"{self.rate:g}/s (bursts of {self.burst})"


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
