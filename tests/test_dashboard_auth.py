"""Dashboards that can leave 127.0.0.1 (issue 18 item 5): `pcrules dashboard` and `pcrules tuner` bound to 0.0.0.0
and reached through this machine's non-loopback address refuse every request and websocket upgrade without
credentials (401) and serve one with them (a token, the login form's cookie, a trusted SSO proxy's header); a
Publish through the tuner in Chromium is recorded in the manifest as the signed-in operator's (and `pcrules
bundle-info` shows it), and a rollback from the CLI as its operator's. The checks themselves (token files, cookies,
trusted proxies, what the CLI's options give) are unit-tested first, without a server."""

from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser import chromium
from pcrules.ops.auth import (
    OPERATOR_ENV,
    TOKEN_ENV,
    AuthConfig,
    Authenticator,
    AuthError,
    config_from_options,
    parse_tokens,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_events.csv.gz"
ALICE = "alice-0123456789-token-ABCDEF"
BOB = "bob-0123456789-token-ABCDEFGH"
KERNEL = "00000000-0000-0000-0000-000000000000"


# --------------------------------------------------------------------------- the checks, without a server


def test_token_files_name_each_operator_and_refuse_weak_or_shared_tokens() -> None:
    assert parse_tokens(f"# operators\n\nalice:{ALICE}\n bob : {BOB} \n", "f") == {ALICE: "alice", BOB: "bob"}
    with pytest.raises(AuthError, match=r"f, line 1: a token must be at least 16 characters") as short:
        parse_tokens("alice:secret", "f")
    assert "hunter2" not in str(short.value)
    with pytest.raises(AuthError, match="line 2: the same token as for 'alice'"):
        parse_tokens(f"alice:{ALICE}\nbob:{ALICE}", "f")
    with pytest.raises(AuthError, match="line 1: expected name:token"):
        parse_tokens(ALICE, "f")
    with pytest.raises(AuthError, match="the name 'a b'"):
        parse_tokens(f"a b:{ALICE}", "f")


def test_tokens_cookies_and_trusted_proxies(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    auth = Authenticator(AuthConfig(token_file=file, trusted=[ipaddress.ip_network("10.0.0.0/24")]))
    assert auth.identify("192.0.2.9", {"Authorization": f"Bearer {ALICE}"}, None) == ("alice", "token")
    assert auth.identify("192.0.2.9", {"Authorization": f"token {BOB}"}, None) == ("bob", "token")
    assert auth.identify("192.0.2.9", {"Authorization": "Bearer wrong-token-0123456789"}, None) == (None, "")
    assert auth.identify("192.0.2.9", {}, None) == (None, "")
    cookie = auth.cookie_for(BOB)
    assert ALICE not in cookie and BOB not in cookie  # a fingerprint, never the token
    assert auth.identify("192.0.2.9", {}, cookie) == ("bob", "cookie")
    # a trusted proxy names the operator; anyone else sending its header is not believed
    assert auth.identify("10.0.0.7", {"X-Forwarded-User": "carol@example.com"}, None) == ("carol@example.com", "proxy")
    assert auth.identify("::ffff:10.0.0.7", {"X-Forwarded-User": "carol"}, None) == ("carol", "proxy")
    assert auth.identify("10.0.1.7", {"X-Forwarded-User": "carol"}, None) == (None, "")
    assert auth.identify("10.0.0.7", {"X-Forwarded-User": "bad\nname"}, None) == (None, "")
    # the file is read again when it changes: bob's line removed revokes his token and his cookie
    time.sleep(0.01)
    file.write_text(f"alice:{ALICE}\n")
    assert auth.identify("192.0.2.9", {"Authorization": f"Bearer {BOB}"}, None) == (None, "")
    assert auth.identify("192.0.2.9", {}, cookie) == (None, "")
    file.write_text("not a token file\n")  # a broken edit keeps the last good tokens
    assert auth.by_token(ALICE) == "alice"
    file.unlink()  # no file, no tokens
    assert auth.by_token(ALICE) is None


def test_what_the_cli_options_ask_for(tmp_path: Path) -> None:
    assert config_from_options("127.0.0.1", environ={}) is None  # loopback as before
    assert config_from_options("localhost", environ={TOKEN_ENV: f"erin:{ALICE}"}) is None
    err = io.StringIO()
    generated = config_from_options("0.0.0.0", environ={}, err=err, who="dana")
    assert generated is not None and generated.generated
    [(token, name)] = generated.tokens.items()
    assert name == "dana" and len(token) >= 40 and err.getvalue().count(token) == 1  # printed once, here only
    env = config_from_options("0.0.0.0", environ={TOKEN_ENV: f"erin:{ALICE}"})
    assert env is not None and env.tokens == {ALICE: "erin"}
    bare = config_from_options("10.1.2.3", environ={TOKEN_ENV: ALICE})
    assert bare is not None and bare.tokens == {ALICE: "operator"}
    sso = config_from_options("0.0.0.0", trusted_proxies=["127.0.0.1"], environ={})
    assert sso is not None and sso.tokens == {} and not sso.generated  # the SSO proxy alone: no token made
    file = tmp_path / "tokens"
    file.write_text(f"alice:{ALICE}\n")
    file.chmod(0o644)
    err = io.StringIO()
    assert config_from_options("127.0.0.1", token_file=file, environ={}, err=err) is not None  # asked: on loopback too
    assert "can be read by other accounts" in err.getvalue()
    with pytest.raises(AuthError, match="--trusted-proxy nowhere"):
        config_from_options("0.0.0.0", trusted_proxies=["nowhere"], environ={})
    with pytest.raises(AuthError, match="cannot read it"):
        config_from_options("0.0.0.0", token_file=tmp_path / "missing", environ={})


def test_the_tuner_reads_the_operator_the_proxy_sets() -> None:
    from pcrules.analysis.tuner_app import OPERATOR_ENV as TUNER_ENV

    assert TUNER_ENV == OPERATOR_ENV == "HTTP_X_PCRULES_OPERATOR"


# --------------------------------------------------------------------------- the real commands, beyond loopback


def _address() -> str:
    """This machine's non-loopback IPv4 address (the one its default route leaves from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the source address
            address = s.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if ipaddress.ip_address(address).is_loopback:
        pytest.fail("this machine has no non-loopback IPv4 address to test a dashboard bound beyond 127.0.0.1 on",
                    pytrace=False)
    return address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer too (the login's 303, Voila's own 302)


def _status(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, Any, str]:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode("utf-8", "replace")


def _upgrade(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> int:
    """The status a websocket upgrade request gets (101 when upgraded)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                           "Sec-WebSocket-Version": "13",
                                           "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                                           **(headers or {})})
        return conn.getresponse().status
    finally:
        conn.close()


class _Server:
    def __init__(self, args: list[str], folder: Path, port: int, address: str):
        self.port, self.address = port, address
        self.url = f"http://{address}:{port}/"
        self.out, self.err = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.out, "wb") as stdout, open(self.err, "wb") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "pcrules", *args, "--host", "0.0.0.0", "--port",
                                             str(port), "--cull-idle", "60"], cwd=folder, stdin=subprocess.DEVNULL,
                                            stdout=stdout, stderr=stderr, start_new_session=True)

    def wait_ready(self, deadline: float) -> None:
        while True:
            assert self.process.poll() is None, f"exited {self.process.returncode}:\n{self.err.read_text()[-3000:]}"
            try:
                if _status(self.url + "voila/static/voila.js", {"Authorization": f"Bearer {ALICE}"})[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            assert time.monotonic() < deadline, f"no answer on {self.url}:\n{self.err.read_text()[-3000:]}"
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL to its session), then check it ended cleanly and printed no token."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # pcrules stops the proxy, Voila and its kernels
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the session this test started
                self.process.wait(10)
        text = self.out.read_text() + self.err.read_text()
        assert self.process.returncode == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert ALICE not in text and BOB not in text  # a token is never printed or logged


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`pcrules dashboard` (a log that does not exist yet; --trusted-proxy 127.0.0.1) and `pcrules tuner` (the
    sample history, a publish directory), both on 0.0.0.0 with one token file, started together."""
    from pcrules import resources
    from pcrules.bundle import publish

    folder = tmp_path_factory.mktemp("auth")
    tokens = folder / "tokens"
    tokens.write_text(f"# the operators\nalice:{ALICE}\nbob:{BOB}\n")
    tokens.chmod(0o600)
    published = folder / "published"
    publish(resources.default_rules(), None, published, operator="setup")
    log = folder / "decisions.sqlite"
    address = _address()
    (folder / "dashboard").mkdir()
    (folder / "tuner").mkdir()
    dash = _Server(["dashboard", "--log", str(log), "--token-file", str(tokens), "--trusted-proxy", "127.0.0.1"],
                   folder / "dashboard", _free_port(), address)
    tuner = _Server(["tuner", "--bundle", str(published), "--events", str(SAMPLE), "--token-file", str(tokens)],
                    folder / "tuner", _free_port(), address)
    try:
        deadline = time.monotonic() + 120
        dash.wait_ready(deadline)
        tuner.wait_ready(deadline)
        yield {"dashboard": dash, "tuner": tuner, "log": log, "published": published, "address": address}
    finally:
        try:
            dash.stop()
        finally:
            tuner.stop()  # even when the dashboard's checks failed: never leave a server behind


@pytest.mark.notebook
@pytest.mark.timeout(240)
def test_without_credentials_every_request_and_websocket_is_refused(servers: dict[str, Any]) -> None:
    dash, address = servers["dashboard"], servers["address"]
    for server in (dash, servers["tuner"]):
        url = server.url
        status, headers, body = _status(url, {"Accept": "text/html"})
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert 'name="token"' in body and "pcrules-ops" not in body  # a login form, nothing of the dashboard
        assert _status(url + "voila/static/voila.js")[0] == 401
        assert _status(url + "api/kernels")[0] == 401
        assert _status(url, {"Authorization": "Bearer not-a-token-0123456789"})[0] == 401
        assert _upgrade(address, server.port, f"/api/kernels/{KERNEL}/channels") == 401
        assert _upgrade(address, server.port, f"/api/kernels/{KERNEL}/channels",
                        {"Authorization": "Bearer not-a-token-0123456789"}) == 401
        # with a token: served (the upgrade reaches Voila, which has no websocket there: its answer passed on)
        bearer = {"Authorization": f"Bearer {BOB}"}
        assert _status(url + "voila/static/voila.js", bearer)[0] == 200
        voila_says = _status(url + "voila/static/none.js", bearer)[0]
        assert voila_says in (403, 404)
        assert _upgrade(address, server.port, "/voila/static/none.js", bearer) == voila_says
        assert _upgrade(address, server.port, "/voila/static/none.js") == 401

    # the login form's cookie serves; a change from another origin with it is refused
    status, headers, _ = _status(dash.url + "pcrules/login", data=f"token={BOB}xx&next=/".encode())
    assert status == 401  # a wrong token: the form again
    status, headers, _ = _status(dash.url + "pcrules/login", data=f"token={ALICE}&next=/".encode())
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    assert _status(dash.url + "voila/static/voila.js", {"Cookie": cookie})[0] == 200
    assert _status(dash.url + "voila/api/shutdown/" + KERNEL, {"Cookie": cookie, "Origin": "http://evil.example"},
                   data=b"")[0] == 403
    assert _upgrade(address, dash.port, f"/api/kernels/{KERNEL}/channels",
                    {"Cookie": cookie, "Origin": "http://evil.example"}) == 403

    # the SSO proxy at 127.0.0.1 (--trusted-proxy) names the operator; the same header from elsewhere is ignored
    local = f"http://127.0.0.1:{dash.port}/voila/static/voila.js"
    assert _status(local, {"X-Forwarded-User": "carol@example.com"})[0] == 200
    assert _status(local)[0] == 401
    assert _status(dash.url + "voila/static/voila.js", {"X-Forwarded-User": "carol@example.com"})[0] == 401
    # Voila itself listens on 127.0.0.1 only, and wants the proxy's own token
    voila = [line for line in dash.err.read_text().splitlines() if line.startswith("http://127.0.0.1:")]
    assert voila and "?token=..." in voila[0]  # its token is never shown
    inner = voila[0].split("?")[0]
    status, headers, _ = _status(inner)
    assert status == 302 and "/login" in headers["Location"]  # to its own login page
    banner = dash.out.read_text()
    assert "sign-in required: token operators alice, bob; trusted SSO proxies 127.0.0.1/32" in banner


@pytest.mark.notebook
@pytest.mark.browser
@pytest.mark.timeout(300)
def test_signed_in_in_chromium_the_dashboard_works_and_a_publish_records_who(servers: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    from pcrules import SQLiteDecisionLog
    from pcrules.bundle import current_version, load_bundle

    dash, tuner, address = servers["dashboard"], servers["tuner"], servers["address"]
    published = servers["published"]
    first = current_version(published)
    with chromium() as browser:
        # the dashboard: the login form first (401), then the page, its kernel reached over the websocket
        context = browser.new_context(viewport={"width": 1300, "height": 1000})
        page = context.new_page()
        sockets: list[Any] = []
        page.on("websocket", lambda ws: sockets.append(ws))
        response = page.goto(dash.url, timeout=60_000)
        assert response is not None and response.status == 401
        page.locator("input.pcrules-token").fill(ALICE + "x")
        page.locator("button.pcrules-login").click()
        expect(page.locator("body")).to_contain_text("That token is not valid")
        page.locator("input.pcrules-token").fill(ALICE)
        page.locator("button.pcrules-login").click()
        message = page.locator(".pcrules-message-body")
        expect(message).to_have_attribute("data-kind", "missing", timeout=90_000)
        SQLiteDecisionLog(servers["log"]).close()  # a log now: the refresh goes to the kernel and back
        page.locator("button.pcrules-filter-refresh").click()
        expect(message).to_have_attribute("data-kind", "empty", timeout=30_000)
        channels = [ws for ws in sockets if "/channels" in ws.url]
        assert channels and all(ws.url.startswith(f"ws://{address}:{dash.port}/") for ws in channels)
        context.close()

        # the tuner: signed in as bob, Publish; the manifest records bob (and his override)
        context = browser.new_context(viewport={"width": 1300, "height": 1600})
        page = context.new_page()
        assert page.goto(tuner.url, timeout=60_000).status == 401
        page.locator("input.pcrules-token").fill(BOB)
        page.locator("button.pcrules-login").click()
        header = page.locator(".pcrules-header")
        expect(header).to_contain_text(f"bundle {first}", timeout=120_000)
        page.locator(".pcrules-capacity-billing input").fill("75")
        page.locator(".pcrules-override input[type=checkbox]").check()
        page.locator("button.pcrules-publish").click()
        question = page.locator(".pcrules-confirmation")
        expect(question).to_be_visible(timeout=60_000)
        expect(question.locator(".pcrules-operator")).to_have_text("bob")
        page.locator("button.pcrules-confirm").click()
        expect(page.locator(".pcrules-message")).to_contain_text("published by bob", timeout=30_000)
        context.close()

    new = current_version(published)
    assert new is not None and new != first
    [entry] = load_bundle(published).audit
    assert (entry["action"], entry["operator"], entry["via"]) == ("publish", "bob", "tuner")
    assert (entry["from"], entry["to"], entry["made_current"]) == (first, new, True)
    assert entry["override"]["by"] == "bob" and entry["override"]["reasons"]
    assert load_bundle(published).metrics["guardrail"]["override"]["by"] == "bob"

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pcrules", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert f"audit     published by bob at {entry['at']} via tuner (current before: {first}); guardrail " \
           f"overridden by bob" in cli("bundle-info", str(published / "current"))
    assert "recorded as alice's" in cli("rollback", "--out", str(published), "--operator", "alice")
    assert current_version(published) == first
    rolled = load_bundle(published).audit[-1]
    assert (rolled["action"], rolled["operator"], rolled["via"], rolled["from"], rolled["to"]) == \
        ("rollback", "alice", "cli", new, first)
    assert f"audit     rolled back to by alice at {rolled['at']} via cli (from {new})" in \
        cli("bundle-info", str(published / "current"))
    assert json.loads((published / "versions" / first / "manifest.json").read_text())["audit"][0]["operator"] == \
        "setup"
