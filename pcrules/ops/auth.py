"""Authentication for the Voila apps (the ops dashboard, the trigger tuner) when they are served beyond 127.0.0.1.

``pcrules dashboard`` and ``pcrules tuner`` bound to anything but a loopback address (or given ``--token-file`` or
``--trusted-proxy``) run Voila on 127.0.0.1 on a free port and, on the address asked for, a small reverse proxy
(tornado, which Voila runs on) that checks **every** HTTP request and **every** websocket upgrade before anything
reaches Voila:

* a request without valid credentials gets ``401 Unauthorized`` (``WWW-Authenticate: Bearer``; for a page, a small
  login form as the body); a websocket upgrade without them gets the same 401 and is never upgraded;
* credentials are a token, sent as ``Authorization: Bearer <token>`` (scripts), or a login cookie the login form
  sets (``{base}pcrules/login``: HttpOnly, SameSite=Strict, signed with a per-process secret, valid 12 hours and
  only while the token it was made from is still in the token file); a request that changes something (POST, PUT,
  PATCH, DELETE) or an upgrade authenticated by cookie must come from the same origin;
* or a trusted single-sign-on proxy: a request whose peer address is one of ``--trusted-proxy ADDR[/BITS]`` is
  the operator named by its ``X-Forwarded-User`` header (oauth2-proxy's, see the README), without a token.

**Tokens.** ``--token-file PATH``: one ``name:token`` per line (``#`` comments, blank lines), a token at least
16 characters without spaces; the file is read again when it changes (removing a line revokes that token and
the cookies made from it). Else ``PCRULES_DASHBOARD_TOKEN`` (``name:token``, or a bare token named
"operator"). Else, unless only trusted proxies are wanted, a token is generated for the OS user who starts the
server and printed once on its terminal (valid until the process stops). A token is never in a process's
arguments and never logged.

**Who.** The proxy strips any ``X-Pcrules-Operator`` a client sends and sets it to the authenticated name; Voila
hands that header to the page's kernel as ``HTTP_X_PCRULES_OPERATOR`` (``VoilaConfiguration.http_header_envs``),
so the tuner records Publish (and a guardrail override) as that operator's (:mod:`pcrules.bundle`'s audit).

**Voila behind it** listens on 127.0.0.1 only and requires a token of its own (``JUPYTER_TOKEN`` in its
environment, never its arguments; the proxy adds it to each request), so another account on the host cannot go
around the proxy. Everything else (the safe template, no CDN, culling, the base URL) is as in
:mod:`pcrules.ops.voila`.

This module imports tornado only when a proxy is started: its checks (:class:`Authenticator`) are plain Python.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import ipaddress
import logging
import os
import re
import secrets
import socket
import stat
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

__all__ = ["AuthConfig", "AuthError", "Authenticator", "OPERATOR_ENV", "OPERATOR_HEADER", "TOKEN_ENV",
           "USER_HEADER", "config_from_options", "is_loopback", "read_token_file", "serve_behind_proxy"]

log = logging.getLogger("pcrules.ops.auth")

TOKEN_ENV = "PCRULES_DASHBOARD_TOKEN"
OPERATOR_HEADER = "X-Pcrules-Operator"  # set by the proxy only; Voila passes it to the kernel as ...
OPERATOR_ENV = "HTTP_X_PCRULES_OPERATOR"  # ... this variable (rfc3875 naming, Voila's http_header_envs)
USER_HEADER = "X-Forwarded-User"  # what a trusted SSO proxy (oauth2-proxy, nginx auth_request) names the user in
MIN_TOKEN_CHARS = 16
COOKIE_DAYS = 0.5
LOGIN_PATH = "pcrules/login"
LOGOUT_PATH = "pcrules/logout"
NAME = re.compile(r"[A-Za-z0-9._@+\-]{1,64}\Z")
MAX_FORWARDED_NAME = 128


class AuthError(ValueError):
    """A token file, token or trusted-proxy address that cannot be used; the message says which and why."""


# --------------------------------------------------------------------------- tokens


def _check_name(name: str, where: str) -> str:
    if not NAME.match(name):
        raise AuthError(f"{where}: the name {name!r} must be 1 to 64 letters, digits or . _ @ + -")
    return name


def _check_token(token: str, where: str) -> str:
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise AuthError(f"{where}: a token must be at least {MIN_TOKEN_CHARS} characters without spaces (make one "
                        f"with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def parse_tokens(text: str, where: str) -> dict[str, str]:
    """``name:token`` lines -> {token: name}; AuthError naming the line (never echoing a token)."""
    tokens: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep:
            raise AuthError(f"{where}, line {n}: expected name:token")
        name, token = _check_name(name.strip(), f"{where}, line {n}"), _check_token(token.strip(), f"{where}, line {n}")
        if token in tokens:
            raise AuthError(f"{where}, line {n}: the same token as for {tokens[token]!r}; give each operator their own")
        tokens[token] = name
    return tokens


def read_token_file(path: str | os.PathLike) -> dict[str, str]:
    """The tokens of a token file, {token: name}; AuthError when unreadable, malformed or empty."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"--token-file {p}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    tokens = parse_tokens(text, f"--token-file {p}")
    if not tokens:
        raise AuthError(f"--token-file {p}: no name:token line")
    return tokens


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


@dataclass
class AuthConfig:
    """How the proxy authenticates: tokens (a file, read again when it changes, or fixed ones) and trusted proxies."""

    token_file: Path | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # fixed tokens (the environment's, a generated one)
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    user_header: str = USER_HEADER
    generated: bool = False  # the one token was generated (printed once by config_from_options)


class Authenticator:
    """The checks the proxy makes, on a request's peer address, headers and cookie (plain Python, for tests)."""

    def __init__(self, config: AuthConfig):
        self.config = config
        self._file_tokens: dict[str, str] = {}
        self._file_key: tuple[int, int, int] | None = None
        if config.token_file is not None:
            self._file_tokens = read_token_file(config.token_file)  # refuse a bad file at start, in one line
            self._file_key = self._key(config.token_file)

    @staticmethod
    def _key(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def tokens(self) -> dict[str, str]:
        """{token: name}: the fixed ones and the token file's as it is now (a changed file is read again; one that
        became unreadable or malformed keeps the last good tokens, one that was removed has none)."""
        path = self.config.token_file
        if path is not None:
            key = self._key(path)
            if key != self._file_key:
                self._file_key = key
                if key is None:
                    log.warning("token file %s is gone: no token is accepted until it is back", path)
                    self._file_tokens = {}
                else:
                    try:
                        self._file_tokens = read_token_file(path)
                        log.info("token file %s read again: %d operator(s)", path, len(self._file_tokens))
                    except AuthError as exc:
                        log.warning("%s; keeping the tokens read before", exc)
        return {**self._file_tokens, **self.config.tokens}

    def by_token(self, token: str | None) -> str | None:
        """The operator a token belongs to, or None (compared in constant time with each known token)."""
        if not token:
            return None
        found = None
        given = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()  # equal lengths: no length leak
        for known, name in self.tokens().items():
            if hmac.compare_digest(hashlib.sha256(known.encode()).digest(), given):
                found = name
        return found

    def by_cookie(self, value: str | None) -> str | None:
        """The operator of a (verified, signed) login cookie ``name:fingerprint``, while that token is still known."""
        if not value:
            return None
        name, _, fingerprint = value.partition(":")
        for known, who in self.tokens().items():
            if who == name and hmac.compare_digest(_fingerprint(known), fingerprint):
                return name
        return None

    def cookie_for(self, token: str) -> str:
        return f"{self.tokens()[token]}:{_fingerprint(token)}"

    def is_trusted(self, peer: str | None) -> bool:
        if not peer or not self.config.trusted:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.config.trusted)

    def by_proxy(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        """The operator a trusted proxy names (its header), or None (not a trusted peer, no or a bad name)."""
        if not self.is_trusted(peer):
            return None
        name = (headers.get(self.config.user_header) or "").strip()
        if not name or len(name) > MAX_FORWARDED_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
            return None
        return name

    def identify(self, peer: str | None, headers: Mapping[str, str], cookie: str | None) -> tuple[str | None, str]:
        """(operator or None, how: "proxy", "token", "cookie" or ""): a trusted proxy's header, a bearer token, a
        login cookie, in that order."""
        who = self.by_proxy(peer, headers)
        if who is not None:
            return who, "proxy"
        scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() in ("bearer", "token"):
            who = self.by_token(token.strip())
            if who is not None:
                return who, "token"
        who = self.by_cookie(cookie)
        return (who, "cookie") if who is not None else (None, "")


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise AuthError(f"--trusted-proxy {text}: expected an IP address or a network (10.0.0.5, 10.0.0.0/24, "
                        f"::1)") from None


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server on this machine (no sign-in needed there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_from_options(host: str, token_file: str | os.PathLike | None = None,
                        trusted_proxies: Iterable[str] | None = None, environ: Mapping[str, str] | None = None,
                        err: IO[str] | None = None, who: str | None = None) -> AuthConfig | None:
    """The authentication the CLI's options ask for; None when none is needed (a loopback address and neither
    `token_file` nor `trusted_proxies`).

    Beyond loopback it is never None: the token file, else ``$PCRULES_DASHBOARD_TOKEN``, else (unless trusted
    proxies alone are given) a token generated for `who` (default the OS user), printed once on `err`."""
    environ = os.environ if environ is None else environ
    trusted = [_network(t) for t in (trusted_proxies or [])]
    env_value = (environ.get(TOKEN_ENV) or "").strip()
    if token_file is None and not trusted and is_loopback(host):
        return None  # 127.0.0.1 as before: only this machine's accounts can reach it
    config = AuthConfig(trusted=trusted)
    if token_file is not None:
        config.token_file = Path(token_file).expanduser().absolute()
        Authenticator(config)  # refuse a bad file now, in one line
        mode = config.token_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO) and err is not None:
            print(f"warning: {config.token_file} can be read by other accounts (chmod 600 it)", file=err)
    elif env_value:
        name, sep, token = env_value.partition(":")
        if not sep:
            name, token = "operator", env_value
        config.tokens = {_check_token(token.strip(), TOKEN_ENV): _check_name(name.strip(), TOKEN_ENV)}
    elif not trusted:
        from ..bundle import os_user

        name = who or os_user()
        if not NAME.match(name):
            name = "operator"
        token = secrets.token_urlsafe(32)
        config.tokens, config.generated = {token: name}, True
        if err is not None:
            print(f"login token for {name} (generated, valid until this server stops, printed only here; "
                  f"--token-file or {TOKEN_ENV} chooses tokens): {token}", file=err, flush=True)
    return config


# --------------------------------------------------------------------------- the proxy (tornado)

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "content-length"}
_WS_OWN = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
MAX_WS_MESSAGE = 256 * 1024 * 1024

_LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}: sign in</title></head>
<body style="font-family:sans-serif;max-width:30em;margin:4em auto">
<h1 style="font-size:1.3em">{title}</h1><p>{message}</p>
<form method="post" action="{action}"><input type="hidden" name="next" value="{next}">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus required
 class="pcrules-token"></label> <button type="submit" class="pcrules-login">Sign in</button></form>
</body></html>"""


def _same_origin(headers: Mapping[str, str], host: str) -> bool:
    source = headers.get("Origin") or headers.get("Referer")
    if not source or source == "null":
        return False
    return urlparse(source).netloc.lower() == host.lower()


def _make_app(auth: Authenticator, upstream: str, internal_token: str, base_url: str, title: str,
              cookie_name: str) -> Any:
    """The tornado Application of the proxy: every request and upgrade authenticated, then passed to `upstream`."""
    from tornado import httpclient, routing, web, websocket
    from tornado.httputil import HTTPHeaders

    login_url = base_url + LOGIN_PATH
    logout_url = base_url + LOGOUT_PATH
    client = httpclient.AsyncHTTPClient(force_instance=True, max_clients=64)

    def forwarded(handler: web.RequestHandler, operator: str, drop: frozenset[str] = frozenset()) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name, value in handler.request.headers.get_all():
            low = name.lower()
            if low in _HOP or low in drop or low in ("authorization", OPERATOR_HEADER.lower(),
                                                     auth.config.user_header.lower()):
                continue
            if low == "cookie":
                kept = [c for c in value.split(";") if c.strip() and c.split("=", 1)[0].strip() != cookie_name]
                if not kept:
                    continue
                value = ";".join(kept)
            headers.add(name, value)
        headers["Authorization"] = f"token {internal_token}"
        headers[OPERATOR_HEADER] = operator
        return headers

    class Authenticated(web.RequestHandler):
        operator: str | None = None

        def check(self) -> str | None:
            """The operator, or None with a 401 (or 403: a cross-origin change) sent."""
            cookie = self.get_signed_cookie(cookie_name, max_age_days=COOKIE_DAYS)
            who, how = auth.identify(self.request.remote_ip, self.request.headers,
                                     cookie.decode() if cookie else None)
            if who is None:
                self.refuse()
                return None
            upgrade = self.request.headers.get("Upgrade", "").lower() == "websocket"
            if how == "cookie" and (self.request.method in _UNSAFE or upgrade) \
                    and not _same_origin(self.request.headers, self.request.host):
                self.set_status(403)
                self.finish("403: a change or a websocket from another origin is refused\n")
                return None
            self.operator = who
            return who

        def refuse(self, message: str = "This dashboard needs you to sign in.") -> None:
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Bearer realm="pcrules"')
            self.set_header("Cache-Control", "no-store")
            form = self.request.method == "GET" or self.request.path == login_url  # a wrong token: the form again
            if form and "text/html" in self.request.headers.get("Accept", ""):
                target = self.request.uri if self.request.path != login_url else base_url
                self.set_header("Content-Type", "text/html; charset=utf-8")
                self.finish(_LOGIN_PAGE.format(title=html.escape(title), message=html.escape(message),
                                               action=html.escape(login_url, quote=True),
                                               next=html.escape(target or base_url, quote=True)))
            else:
                self.set_header("Content-Type", "text/plain; charset=utf-8")
                self.finish("401: sign in first (Authorization: Bearer <token>, or the login form)\n")

    class Login(Authenticated):
        def check_xsrf_cookie(self) -> None:  # the form carries a token, not a session: nothing to forge
            pass

        def get(self) -> None:
            self.refuse()

        def post(self) -> None:
            token = self.get_body_argument("token", "")
            if auth.by_token(token) is None:
                log.warning("a wrong token from %s", self.request.remote_ip)
                self.refuse("That token is not valid: try again.")
                return
            self.set_signed_cookie(cookie_name, auth.cookie_for(token), expires_days=COOKIE_DAYS, httponly=True,
                                   samesite="Strict", path=base_url)
            target = self.get_body_argument("next", base_url)
            if not target.startswith(base_url) or target.startswith("//") or "\\" in target:
                target = base_url
            self.redirect(target, status=303)

    class Logout(web.RequestHandler):
        def get(self) -> None:
            self.clear_cookie(cookie_name, path=base_url)
            self.redirect(login_url, status=303)

    class HttpProxy(Authenticated):
        SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

        def check_xsrf_cookie(self) -> None:  # same-origin is checked in check(); Voila checks its own
            pass

        async def prepare(self) -> None:
            if self.check() is None:
                return
            await self.forward()

        async def forward(self) -> None:
            assert self.operator is not None
            state: dict[str, Any] = {"code": 502, "reason": None, "headers": HTTPHeaders(), "started": False}

            def on_header(line: str) -> None:
                if line.startswith("HTTP/"):
                    parts = line.split(" ", 2)
                    state.update(code=int(parts[1]), reason=parts[2].strip() if len(parts) > 2 else None,
                                 headers=HTTPHeaders())
                elif line.strip():
                    state["headers"].parse_line(line)

            def start() -> None:
                if state["started"]:
                    return
                state["started"] = True
                self.set_status(state["code"], state["reason"] or None)
                self.clear_header("Content-Type")
                for name, value in state["headers"].get_all():
                    low = name.lower()
                    if low in _HOP:
                        continue
                    if low == "set-cookie":
                        if value.lstrip().startswith("username-"):  # Voila's own login cookie: not for browsers
                            continue
                        self.add_header(name, value)
                    else:
                        self.set_header(name, value)

            def on_chunk(chunk: bytes) -> None:
                start()
                if self.request.connection is None or self._finished:
                    return
                self.write(chunk)
                future = self.flush()
                future.add_done_callback(lambda f: f.exception())  # a browser that left: nothing to do

            body = self.request.body if self.request.method in _UNSAFE or self.request.body else None
            request = httpclient.HTTPRequest(
                upstream + self.request.uri, method=self.request.method, headers=forwarded(self, self.operator),
                body=body, follow_redirects=False, decompress_response=False, allow_nonstandard_methods=True,
                connect_timeout=10, request_timeout=3600, header_callback=on_header, streaming_callback=on_chunk)
            response = await client.fetch(request, raise_error=False)
            if response.code == 599 and not state["started"]:
                self.set_status(502)
                self.finish("502: the dashboard behind this proxy does not answer\n")
                return
            start()
            if not self._finished:
                self.finish()

        async def get(self, *args: Any) -> None:  # answered in prepare(); tornado requires the methods
            pass

        head = post = put = patch = delete = options = get

    class WebSocketProxy(Authenticated, websocket.WebSocketHandler):
        upstream_ws: Any = None

        async def prepare(self) -> None:
            self.pending: list[Any] = []
            self.opened = False
            if self.check() is None:
                return
            assert self.operator is not None
            protocols = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                         if p.strip()]
            request = httpclient.HTTPRequest("ws" + upstream[4:] + self.request.uri, connect_timeout=10,
                                             headers=forwarded(self, self.operator, frozenset(_WS_OWN)))
            try:
                self.upstream_ws = await websocket.websocket_connect(
                    request, on_message_callback=self.from_upstream, subprotocols=protocols or None,
                    max_message_size=MAX_WS_MESSAGE)
            except httpclient.HTTPClientError as exc:
                self.set_status(exc.code if 400 <= exc.code < 600 and exc.code != 599 else 502)
                self.finish(f"{exc.code}: refused by the dashboard behind this proxy\n")
            except Exception as exc:  # refused, not a websocket there (WebSocketError), or not answering (OSError)
                log.info("websocket %s: the dashboard behind this proxy did not upgrade (%s)", self.request.path, exc)
                self.set_status(502)
                self.finish("502: the dashboard behind this proxy did not accept this websocket\n")

        def select_subprotocol(self, subprotocols: list[str]) -> str | None:
            chosen = self.upstream_ws.selected_subprotocol if self.upstream_ws is not None else None
            return chosen if chosen in subprotocols else None

        def check_origin(self, origin: str) -> bool:
            return True  # a cookie's origin was checked in check(); a token is not sent by a foreign page

        def open(self, *args: Any) -> None:
            self.opened = True
            for message in self.pending:
                self.from_upstream(message)
            self.pending = []

        def on_message(self, message: str | bytes) -> None:
            if self.upstream_ws is None:
                return
            try:
                self.upstream_ws.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                self.close()

        def from_upstream(self, message: str | bytes | None) -> None:
            if not self.opened:
                self.pending.append(message)
                return
            if message is None:
                self.close()
                return
            try:
                self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                if self.upstream_ws is not None:
                    self.upstream_ws.close()

        def on_close(self) -> None:
            if self.upstream_ws is not None:
                self.upstream_ws.close()

    class IsUpgrade(routing.Matcher):
        def match(self, request: Any) -> dict[str, Any] | None:
            return {} if request.headers.get("Upgrade", "").lower() == "websocket" else None

    return web.Application([
        routing.Rule(IsUpgrade(), WebSocketProxy),
        (re.escape(login_url), Login),
        (re.escape(logout_url), Logout),
        (r".*", HttpProxy),
    ], cookie_secret=secrets.token_bytes(32), websocket_max_message_size=MAX_WS_MESSAGE, xsrf_cookies=False)


def shown_url(host: str, port: int, base_url: str) -> str:
    shown = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}{base_url}"


def serve_behind_proxy(notebook: Path, env: Mapping[str, str], auth: AuthConfig, *, banner: str, port: int,
                       host: str, base_url: str, cull_idle_s: int, out: IO[str] = sys.stdout,
                       title: str = "pcrules") -> int:
    """Voila on `notebook` on 127.0.0.1 (a free port, its own token) behind the authenticating proxy on
    `host`:`port`, in the foreground until Voila exits or a signal stops it (the caller turns signals into
    KeyboardInterrupt, as :func:`pcrules.ops.voila.serve_app` does)."""
    from . import voila

    authenticator = Authenticator(auth)
    internal = secrets.token_urlsafe(32)
    server = voila.start_app(notebook, {**env, "JUPYTER_TOKEN": internal}, port=0, host="127.0.0.1",
                             base_url=base_url, server_log="-", cull_idle_s=cull_idle_s,
                             extra_args=["--Voila.auto_token=True",
                                         f"--VoilaConfiguration.http_header_envs=['{OPERATOR_HEADER}']"])
    try:
        server.wait_ready()
        upstream = server.url.rstrip("/").removesuffix(base_url.rstrip("/"))  # http://127.0.0.1:PORT
        return asyncio.run(_run(server, authenticator, upstream, internal, host, port, base_url, banner, out,
                                title))
    finally:
        server.stop()


async def _run(server: Any, auth: Authenticator, upstream: str, internal: str, host: str, port: int,
               base_url: str, banner: str, out: IO[str], title: str) -> int:
    app = _make_app(auth, upstream, internal, base_url, title, f"pcrules-auth-{port}")
    http = app.listen(port, address=host, xheaders=False)
    try:
        who = ", ".join(sorted({*auth.tokens().values()})) or "none"
        proxies = ", ".join(str(n) for n in auth.config.trusted) or "none"
        print(banner.replace("{url}", shown_url(host, port, base_url))
              + f"\n  sign-in required: token operators {who}; trusted SSO proxies {proxies}", file=out, flush=True)
        while server.process.poll() is None:
            await asyncio.sleep(0.5)
        return int(server.process.returncode)
    finally:
        http.stop()
