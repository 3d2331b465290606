"""The HTTP connection under uvicorn: time limits, a size limit on the request head, a connection cap.

uvicorn (httptools) alone never times out a client that sends slowly, reads a request head of any size into
memory, and at the file-descriptor limit stops serving anyone. `GuardedHttpTools`, passed to uvicorn as its
``http`` protocol class, adds per connection (the values are ServerConfig fields, README "Security"):

- a head timeout: a request head must arrive whole within ``head_timeout_s`` of the connection's start or of
  the previous answer on a kept-alive connection (a slowloris client sending a byte a second is closed, 408);
- a body timeout: a body may pause at most ``body_timeout_s`` between two chunks;
- a head size limit: past ``max_head_bytes`` the answer is 431 and the connection is closed, so a 100 MB
  header line costs 16 KiB of memory, not 220 MB;
- a connection cap: past ``max_connections`` the OLDEST connection still waiting for a request head is closed
  to make room. A slow client cannot lock out a healthy one, which sends its head at once: only when every
  connection has a request being served is the new one refused.

Every answer written here carries the same security headers as the app's. What was closed and why is counted
(`pcrules_connections_closed_total{reason}`) rather than logged: anyone can cause it.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .http import SECURITY_HEADERS

__all__ = ["ConnectionLimits", "GuardedHttpTools", "configure", "connection_cap", "DEFAULT_MAX_CONNECTIONS"]

DEFAULT_MAX_CONNECTIONS = 2000
FD_RESERVE = 128  # descriptors left for the log, Redis connections, files ... under a cap taken from the limit


def connection_cap(configured: int | None) -> int:
    """`configured`, else DEFAULT_MAX_CONNECTIONS; never so many that accept() would meet the fd limit first
    (then asyncio stops accepting for a second at a time, and nobody is served)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = DEFAULT_MAX_CONNECTIONS if configured is None else configured
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, max(16, soft - FD_RESERVE))
    return cap


@dataclass(frozen=True)
class ConnectionLimits:
    head_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_head_bytes: int = 16 * 1024
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_config(cls, config: Any) -> ConnectionLimits:
        return cls(config.head_timeout_s, config.body_timeout_s, config.max_head_bytes,
                   connection_cap(config.max_connections))


# Module state, set by configure() in each server process before uvicorn makes a connection (uvicorn builds the
# protocol from its class alone; a worker process configures itself in app_from_env).
_limits = ConnectionLimits()


def _ignore_close(reason: str) -> None:
    pass


_on_close: Callable[[str], None] = _ignore_close


def configure(limits: ConnectionLimits, on_close: Callable[[str], None] | None = None) -> None:
    """The limits of every connection made from now on; `on_close(reason)` is told of each one closed here."""
    global _limits, _on_close
    _limits = limits
    _on_close = on_close or _ignore_close


class GuardedHttpTools(HttpToolsProtocol):
    # The connections waiting for a request head, longest waiting first: the ones shed at the cap. Class-wide:
    # one server per process.
    _waiting: OrderedDict[GuardedHttpTools, None] = OrderedDict()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = _limits
        self._timer: Any = None
        self._timer_kind = ""  # head_timeout or body_timeout: what the timer ends
        self._counting = True  # reading a request head (False: its body), whose bytes so far are:
        self._head_bytes = 0

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._await_head()
        if len(self.connections) > self._limits.max_connections:
            oldest = next((c for c in self._waiting if c is not self), None)
            if oldest is not None:
                oldest._close("shed")
            else:  # every other connection has a request being served: this one waits its turn elsewhere
                self._close("refused")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ the request head

    def _await_head(self) -> None:
        """From now on a whole request head must arrive within head_timeout_s."""
        self._arm("head_timeout", self._limits.head_timeout_s)
        self._waiting[self] = None

    def data_received(self, data: bytes) -> None:
        if not self._counting:
            super().data_received(data)
            return
        # httptools buffers a header line until it ends: count the bytes here, before they reach it.
        room = self._limits.max_head_bytes - self._head_bytes
        self._head_bytes += len(data)
        if len(data) <= room:
            super().data_received(data)
            return
        super().data_received(data[:room])  # the head may end within the limit, the rest being its body
        if self.transport.is_closing():
            return
        if self._counting and self._head_bytes:  # still in the head (on_message_complete resets the count to 0)
            self._refuse(431, "head_too_large", "request head too large")
        else:
            self.data_received(data[room:])

    def on_headers_complete(self) -> None:
        self._counting = False
        self._stop_timer()
        super().on_headers_complete()
        if not self.pipeline:  # a pipelined request is not read until its turn: no body timer meanwhile
            self._arm("body_timeout", self._limits.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._timer_kind == "body_timeout":  # the time limit is between chunks, not for the whole body
            self._arm("body_timeout", self._limits.body_timeout_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._timer_kind == "body_timeout":
            self._stop_timer()
        self._counting, self._head_bytes = True, 0  # what follows is the next request's head

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():  # kept alive: the next head is due in time
            self._await_head()

    # ------------------------------------------------------------------ closing

    def _arm(self, kind: str, delay: float) -> None:
        self._stop_timer()
        self._timer, self._timer_kind = self.loop.call_later(delay, self._expired, kind), kind

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_kind = None, ""
        self._waiting.pop(self, None)

    def _expired(self, reason: str) -> None:
        self._timer, self._timer_kind = None, ""
        self._refuse(408, reason, "request timeout")

    def _refuse(self, status: int, reason: str, text: str) -> None:
        """Answer `status` and close, unless a response is under way on this connection (then just close)."""
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete
                                                or not self.cycle.response_started):
            self._write_error(status, text)
        self._close(reason)

    def _close(self, reason: str) -> None:
        self._stop_timer()
        if self.transport.is_closing():
            return
        _on_close(reason)
        if self.cycle is not None and not self.cycle.response_complete:
            # as connection_lost will: the app's answer goes nowhere, its body read ends (ClientDisconnect)
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        # abort: a client that does not read would keep close() waiting to flush, holding the descriptor
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def _write_error(self, status: int, text: str) -> None:
        body = text.encode("ascii")
        head = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *SECURITY_HEADERS,
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode("ascii")), (b"connection", b"close")]:
            head += [name, b": ", value, b"\r\n"]
        self.transport.write(b"".join([*head, b"\r\n", body]))

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own 400 (a request httptools cannot parse), with the security headers every answer has
        self._write_error(400, msg)
        self._close("bad_request")
