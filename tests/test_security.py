"""The public endpoints are safe to expose to the internet (pcrules.server.security and the routes using it).

Through Starlette's TestClient with a controllable clock, except the start-up
message (a real `pcrules serve`). Each test shows a refusal *and* that the
refused request changed nothing. The browser side (hostile text in the pop-up
and the CSR console) is in test_security_browser.py, the fuzzing in
test_fuzz_server.py.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import sqlite3
import time
import warnings
from pathlib import Path

import pytest
import yaml

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its TestClient; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from helpers import Clock, rule, spec_dict
from pcrules.redis_store import StoreUnavailable
from pcrules.runtime import Runtime
from pcrules.server import ServerConfig, Service, create_app, security
from pcrules.server.config import config_from_env, security_summary
from pcrules.server.metrics import Metrics, MetricsLog
from pcrules.server.security import ClientAddress, OperatorAuth, RateLimiter, check_origin
from pcrules.stores import MemoryStore

TOKEN = "operator-" + "k" * 24
KEY = "visitor-id-key-" + "q" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EVIL = "https://evil.example"
SHOP = "https://shop.example.com"


def write_rules(path: Path, **policy) -> Path:
    rules = [rule("bill", seconds=300, metadata={"Page Name": "{page}"})]
    path.write_text(yaml.safe_dump(spec_dict(rules, {"Billing": {"max_wait_s": 180}}, **policy), sort_keys=False))
    return path


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    return write_rules(tmp_path / "rules.yaml")


def app_client(rules_file: Path, clock=None, **config) -> TestClient:
    kwargs = {"clock": clock} if clock is not None else {}
    app = create_app(ServerConfig(rules=str(rules_file), **config), **kwargs)
    return TestClient(app, raise_server_exceptions=False)


def event(visitor="v1", session="s1", page="Bill Payment", seconds=301.0, **extra):
    return {"visitor_id": visitor, "session_id": session, "page": page, "seconds_on_page": seconds, **extra}


def owner(d: dict) -> dict:
    return {"visitor_id": d["visitor_id"], "session_id": d["session_id"]}


def metric(c: TestClient, text: str) -> float:
    for line in c.get("/metrics", headers=AUTH).text.splitlines():
        if line.startswith(text + " "):
            return float(line.split()[-1])
    return 0.0


# --------------------------------------------------------------------------- offer ids: unguessable, bound to owners


def test_offer_ids_carry_at_least_128_random_bits(rules_file: Path):
    with app_client(rules_file) as c:
        ids = [c.post("/v1/observe", json=event(visitor=f"v{i}")).json()["offer_id"] for i in range(300)]
    assert len(set(ids)) == len(ids)
    for offer_id in ids:
        assert len(base64.urlsafe_b64decode(offer_id + "=" * (-len(offer_id) % 4))) >= 16
    # no shared prefix or counter: every position varies across ids
    assert all(len({i[k] for i in ids}) > 16 for k in range(21))  # (the 22nd character holds 2 bits)


def test_another_visitors_or_sessions_offer_and_a_guessed_id_are_refused_and_change_nothing(rules_file: Path):
    clock = Clock()
    with app_client(rules_file, clock, operator_token=TOKEN) as c:
        mine = c.post("/v1/observe", json=event("alice", "a1")).json()
        assert mine["action"] == "offer"
        oid = mine["offer_id"]
        fake = secrets.token_urlsafe(16)
        unknown = c.post(f"/v1/offers/{fake}/accept", json=owner(mine))
        assert unknown.status_code == 404
        template = unknown.json()
        attempts = [
            (oid, "accept", {"visitor_id": "mallory", "session_id": "a1"}),        # another visitor
            (oid, "decline", {"visitor_id": "mallory", "session_id": "m1"}),
            (oid, "accept", {"visitor_id": "alice", "session_id": "a2"}),          # alice's other session
            (oid, "expire", {"visitor_id": "alice", "session_id": "A1"}),
            (oid.swapcase(), "accept", owner(mine)),                               # a near guess
            (oid[:-1], "accept", owner(mine)),
        ]
        for offer_id, what, body in attempts:
            r = c.post(f"/v1/offers/{offer_id}/{what}", json=body)
            assert r.status_code == 404, (offer_id, body, r.text)
            got = r.json()
            # the same answer as for an id that never existed: a guess learns nothing
            assert got["error"] == template["error"] == "offer_not_found" and got["field"] == "offer_id"
            assert got["message"].replace(offer_id, "ID") == template["message"].replace(fake, "ID")
        assert metric(c, "pcrules_outcomes_total") == 0.0  # nothing recorded
        again = c.post("/v1/observe", json=event("alice", "a1", seconds=310)).json()
        assert again["reason"] == "offer_pending"  # the offer is still open
        r = c.post(f"/v1/offers/{oid}/accept", json=owner(mine))  # and its owner can still answer it
        assert r.status_code == 200 and r.json()["status"] == "accepted"


def test_foreign_and_unknown_offers_answer_alike(rules_file: Path):
    """Status, error code, field and message shape do not tell an existing foreign offer from a made-up id."""
    with app_client(rules_file) as c:
        theirs = c.post("/v1/observe", json=event("bob", "b1")).json()["offer_id"]
        fake = secrets.token_urlsafe(16)
        me = {"visitor_id": "eve", "session_id": "e1"}
        a = c.post(f"/v1/offers/{theirs}/accept", json=me)
        b = c.post(f"/v1/offers/{fake}/accept", json=me)
        assert a.status_code == b.status_code == 404
        assert a.json()["message"].replace(theirs, "X") == b.json()["message"].replace(fake, "X")
        assert {k: v for k, v in a.json().items() if k != "message"} == \
               {k: v for k, v in b.json().items() if k != "message"}


# --------------------------------------------------------------------------- the operator token


OPERATOR_CALLS = [("post", "/v1/queues/Billing", {"agents_available": 0}), ("post", "/v1/admin/reload", None),
                  ("get", "/metrics", None)]


@pytest.mark.parametrize("method,path,body", OPERATOR_CALLS, ids=["queues", "reload", "metrics"])
def test_operator_routes_need_the_token(rules_file: Path, method: str, path: str, body):
    with app_client(rules_file, operator_token=TOKEN) as c:
        call = getattr(c, method)
        kw = {"json": body} if body is not None else {}
        for headers in ({}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": TOKEN}):
            r = call(path, headers=headers, **kw)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"] == "unauthorized" and r.json()["field"] == "authorization"
        for wrong in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "x" * len(TOKEN), f"{TOKEN} {TOKEN}"):
            r = call(path, headers={"Authorization": f"Bearer {wrong}"}, **kw)
            assert r.status_code == 403, (wrong, r.text)
            assert r.json()["error"] == "forbidden" and TOKEN not in r.text and wrong not in r.text
        ok = call(path, headers=AUTH, **kw)
        assert ok.status_code == 200, ok.text
        assert call(path, headers={"authorization": f"bearer  {TOKEN} "}, **kw).status_code == 200


def test_refused_operator_calls_change_nothing(rules_file: Path):
    with app_client(rules_file, operator_token=TOKEN) as c:
        before = c.get("/healthz").json()["version"]
        assert c.post("/v1/queues/Billing", json={"agents_available": 0}).status_code == 401
        assert c.post("/v1/queues/Billing", json={"agents_available": 0},
                      headers={"Authorization": "Bearer " + "y" * 30}).status_code == 403
        assert c.post("/v1/observe", json=event()).json()["action"] == "offer"  # the queue was not closed
        write_rules(rules_file, decline_cooldown_s=5)
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.get("/healthz").json()["version"] == before  # not reloaded
        assert c.post("/v1/admin/reload", headers=AUTH).json()["version"] != before


def test_without_a_token_the_operator_routes_are_off_and_metrics_only_public_when_configured(rules_file: Path):
    with app_client(rules_file) as c:
        for method, path, body in OPERATOR_CALLS:
            r = getattr(c, method)(path, headers=AUTH, **({"json": body} if body else {}))
            assert r.status_code == 404 and r.json()["error"] == "not_found"
    with app_client(rules_file, metrics_public=True) as c:
        assert c.get("/metrics").status_code == 200  # a scraper on a private network: no token
        assert c.post("/v1/admin/reload", headers=AUTH).status_code == 404
    with app_client(rules_file, metrics_public=True, operator_token=TOKEN) as c:
        assert c.get("/metrics").status_code == 200
        assert c.post("/v1/admin/reload").status_code == 401
    line = security_summary(ServerConfig())[0]  # what `pcrules serve` prints first
    assert "OFF" in line and "PCRULES_OPERATOR_TOKEN" in line


def test_tokens_come_from_the_environment_and_never_show(rules_file: Path, caplog):
    config = config_from_env(ServerConfig(rules=str(rules_file)),
                             {"PCRULES_OPERATOR_TOKEN": TOKEN, "PCRULES_VISITOR_ID_KEY": KEY})
    assert config.operator_token == TOKEN and config.visitor_id_key == KEY
    for text in (repr(config), str(config), "\n".join(security_summary(config)), repr(OperatorAuth(TOKEN))):
        assert TOKEN not in text and KEY not in text
    assert config_from_env(ServerConfig(), {"PCRULES_OPERATOR_TOKEN": ""}).operator_token is None
    with pytest.raises(ValueError, match="operator_token: expected a secret of at least 16"):
        ServerConfig(operator_token="short")
    with pytest.raises(ValueError, match="visitor_id_key"):
        ServerConfig(visitor_id_key="short")
    with pytest.raises(ValueError, match="spaces"):
        ServerConfig(operator_token="with a space in it ok")
    caplog.set_level(logging.DEBUG)
    with app_client(rules_file, operator_token=TOKEN) as c:
        c.get("/metrics", headers={"Authorization": "Bearer " + TOKEN[::-1]})
        c.get("/metrics", headers=AUTH)
        c.post("/v1/queues/Nope", json={"agents_available": 1}, headers=AUTH)
    assert TOKEN not in caplog.text and TOKEN[::-1] not in caplog.text


def test_tokens_are_compared_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    auth = OperatorAuth(TOKEN)
    assert auth.check(f"Bearer {TOKEN}") is None and auth.check("Bearer x") == "wrong"
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)  # digests: equal lengths always


def test_failed_operator_logins_are_throttled_per_address(rules_file: Path):
    with app_client(rules_file, operator_token=TOKEN) as c:
        statuses = [c.get("/metrics", headers={"Authorization": f"Bearer wrong-{i:020d}"}).status_code
                    for i in range(21)]
        assert statuses[:20] == [403] * 20 and statuses[20] == 429
        r = c.get("/metrics", headers=AUTH)  # locked for a while, even with the right token: guesses stop here
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["limit"] == "operator_auth"


def test_serve_says_at_start_up_whether_the_operator_routes_are_on_and_never_prints_the_token(tmp_path: Path):
    import httpx

    from pcrules.server._procs import ServeProcess

    rules = write_rules(tmp_path / "rules.yaml")
    with ServeProcess(["--rules", str(rules)], log_file=tmp_path / "off.out") as srv:
        assert httpx.get(srv.url + "/metrics").status_code == 404
    off = (tmp_path / "off.out").read_text()
    assert "operator routes" in off and "OFF" in off and "PCRULES_OPERATOR_TOKEN" in off
    with ServeProcess(["--rules", str(rules)], log_file=tmp_path / "on.out", operator_token=TOKEN,
                      env={"PCRULES_VISITOR_ID_KEY": KEY},
                      config={"address_rate": None, "cors_origins": [SHOP]}) as srv:
        assert httpx.get(srv.url + "/metrics", headers={"Authorization": "Bearer " + "z" * 20}).status_code == 403
        assert httpx.get(srv.url + "/metrics", headers=srv.auth).status_code == 200
        r = httpx.post(srv.url + "/v1/observe", json=event(), headers={"Origin": SHOP})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == SHOP
    on = (tmp_path / "on.out").read_text()
    assert "operator routes" in on and "Authorization: Bearer" in on and "pseudonymised" in on
    assert "per address no limit" in on and f"CORS: {SHOP}" in on
    assert TOKEN not in on and KEY not in on and "Traceback" not in on


# --------------------------------------------------------------------------- rate limits


def test_a_burst_past_the_per_visitor_limit_gets_a_clear_429_and_others_are_served(rules_file: Path):
    with app_client(rules_file, Clock(), visitor_rate=1.0, visitor_burst=5, operator_token=TOKEN) as c:
        got = [c.post("/v1/observe", json=event("flood", seconds=10)) for _ in range(8)]
        assert [r.status_code for r in got] == [200] * 5 + [429] * 3
        r = got[-1]
        body = r.json()
        assert body["error"] == "rate_limited" and body["limit"] == "per_visitor"
        assert "1/s" in body["message"] and "bursts of 5" in body["message"]
        assert int(r.headers["retry-after"]) == body["retry_after_s"] >= 1
        assert c.post("/v1/observe", json=event("calm", seconds=10)).status_code == 200
        # answers count too, and a refused observation decided nothing
        assert metric(c, 'pcrules_decisions_total{action="wait",reason=""}') == 6.0
        assert metric(c, 'pcrules_http_errors_total{error="rate_limited",status="429"}') == 3.0


def test_a_burst_past_the_per_address_limit_gets_a_429_whatever_the_visitor_ids(rules_file: Path):
    with app_client(rules_file, address_rate=2.0, address_burst=10) as c:
        got = [c.post("/v1/observe", json=event(f"rotating-{i}", seconds=10)).status_code for i in range(12)]
        assert got == [200] * 10 + [429] * 2
        r = c.post("/v1/offers/whatever/accept", json={"visitor_id": "v", "session_id": "s"})
        assert r.status_code == 429 and r.json()["limit"] == "per_address"
    with TestClient(create_app(ServerConfig(rules=str(rules_file), address_rate=2.0, address_burst=10)),
                    client=("192.0.2.7", 1234)) as c:  # another address has its own bucket
        assert c.post("/v1/observe", json=event(seconds=10)).status_code == 200


def test_a_proxy_tripping_the_address_limit_gets_a_hint_in_the_log(rules_file: Path, caplog):
    config = ServerConfig(rules=str(rules_file), address_rate=1.0, address_burst=2)
    with TestClient(create_app(config), client=("127.0.0.1", 5)) as c, caplog.at_level(logging.WARNING):
        statuses = [c.post("/v1/observe", json=event(f"v{i}", seconds=10)).status_code for i in range(4)]
    assert statuses == [200, 200, 429, 429]
    hints = [r for r in caplog.records if "trusted_proxies" in r.getMessage()]
    assert len(hints) == 1 and "127.0.0.1" in hints[0].getMessage()  # once, not per request


def test_limits_can_be_switched_off_for_a_load_test(rules_file: Path):
    with app_client(rules_file, visitor_rate=None, address_rate=None) as c:
        assert all(c.post("/v1/observe", json=event("same", seconds=10)).status_code == 200 for _ in range(60))


def test_token_bucket_refills_and_stays_bounded_in_memory():
    clock = Clock(0.0)
    limiter = RateLimiter("t", rate=2.0, burst=3, max_keys=100, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("a") == pytest.approx(0.5)
    clock.t += 0.5
    assert limiter.hit("a") == 0.0 and limiter.hit("a") > 0
    for i in range(10_000):  # a flood of distinct keys never holds more than max_keys buckets
        limiter.hit(f"k{i}")
    assert len(limiter) == 100
    clock.t += 10  # idle long enough to be full again: such buckets go as new keys come
    for i in range(50):
        limiter.hit(f"n{i}")
    assert len(limiter) <= 100 and limiter.peek("k9999") == 0.0
    started = time.perf_counter()
    for i in range(100_000):
        limiter.hit(i & 1023)
    assert (time.perf_counter() - started) / 100_000 < 20e-6  # cheap on the hot path (about 1 us)


def test_client_address_believes_forwarded_for_only_from_trusted_proxies():
    def scope(peer: str, xff: str | None = None) -> dict:
        headers = [(b"x-forwarded-for", xff.encode())] if xff else []
        return {"client": (peer, 1), "headers": headers}

    plain = ClientAddress()
    assert plain(scope("203.0.113.9", "1.2.3.4")) == "203.0.113.9"  # not trusted: the header is ignored
    proxied = ClientAddress(["10.0.0.0/8", "::1"])
    assert proxied(scope("10.1.1.1", "1.2.3.4, 198.51.100.20")) == "198.51.100.20"  # right-most untrusted hop
    assert proxied(scope("10.1.1.1", "198.51.100.20, 10.2.2.2")) == "198.51.100.20"
    assert proxied(scope("203.0.113.9", "1.2.3.4")) == "203.0.113.9"  # a client cannot claim to be proxied
    assert proxied(scope("10.1.1.1")) == "10.1.1.1"
    # IPv6: one bucket per /64 (what one subscriber holds)
    assert plain(scope("2001:db8:1:2::5")) == plain(scope("2001:db8:1:2:ffff::9")) == "2001:db8:1:2::/64"
    assert plain(scope("2001:db8:1:3::5")) != plain(scope("2001:db8:1:2::5"))
    with pytest.raises(ValueError, match="trusted_proxies"):
        ServerConfig(trusted_proxies=("not-an-address",))


def test_trusted_proxy_addresses_reach_the_per_address_limit(rules_file: Path):
    config = ServerConfig(rules=str(rules_file), address_rate=1.0, address_burst=2, trusted_proxies=("10.0.0.1",))
    with TestClient(create_app(config), client=("10.0.0.1", 5)) as c:
        def post(client_ip: str) -> int:
            return c.post("/v1/observe", json=event(seconds=10, visitor=client_ip),
                          headers={"X-Forwarded-For": client_ip}).status_code

        assert [post("198.51.100.1") for _ in range(3)] == [200, 200, 429]
        assert post("198.51.100.2") == 200  # another client behind the same proxy


# --------------------------------------------------------------------------- body and field limits


@pytest.mark.parametrize("path", ["/v1/observe", "/v1/offers/abc/accept"])
def test_oversized_bodies_are_refused_before_they_are_read_whole(rules_file: Path, path: str):
    with app_client(rules_file, max_body_bytes=2048) as c:
        big = {**event(), "note": "x" * 3000}
        r = c.post(path, json=big)
        assert r.status_code == 413 and r.json()["error"] == "body_too_large" and r.json()["field"] == "body"


@pytest.mark.parametrize("body,field", [
    (event(visitor="v" * 129), "visitor_id"),
    (event(session="s" * 129), "session_id"),
    (event(page="p" * 201), "page"),
    (event(note="n" * 1001), "note"),
    ({**event(), **{f"f{i}": 1 for i in range(70)}}, "event"),
    (event(nested={"a": 1}), "nested"),
], ids=["visitor_id", "session_id", "page", "long-text", "too-many-fields", "nested"])
def test_field_limits_over_http(rules_file: Path, body: dict, field: str):
    with app_client(rules_file, operator_token=TOKEN) as c:
        r = c.post("/v1/observe", json=body)
        assert r.status_code == 400 and r.json()["field"] == field, r.text
        assert metric(c, "pcrules_decisions_total") == 0.0


def test_answers_check_their_ids(rules_file: Path):
    with app_client(rules_file) as c:
        d = c.post("/v1/observe", json=event()).json()
        for body, field in (({"visitor_id": "v" * 129, "session_id": "s1"}, "visitor_id"),
                            ({"visitor_id": "v1", "session_id": 5}, "session_id"),
                            ({"visitor_id": "v1", "session_id": "s1", "extra": 1}, "extra")):
            r = c.post(f"/v1/offers/{d['offer_id']}/accept", json=body)
            assert r.status_code == 400 and r.json()["field"] == field, r.text
        assert c.post(f"/v1/offers/{d['offer_id']}/accept", json=owner(d)).status_code == 200


# --------------------------------------------------------------------------- CORS and other sites' pages


def test_a_disallowed_origin_gets_no_cors_header_and_cannot_post(rules_file: Path):
    with app_client(rules_file, operator_token=TOKEN) as c:
        pre = c.options("/v1/observe", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
        r = c.post("/v1/observe", json=event(), headers={"Origin": EVIL})
        assert r.status_code == 403 and r.json()["error"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in r.headers
        assert r.headers["x-content-type-options"] == "nosniff"  # refusals carry the security headers too
        for origin in ("null", "http://testserver.evil.example", "https://evil.testserver"):
            assert c.post("/v1/observe", json=event(), headers={"Origin": origin}).status_code == 403, origin
        assert metric(c, "pcrules_decisions_total") == 0.0  # nothing reached the runtime
        # the server's own pages (Origin naming this host) and clients without an Origin are served
        assert c.post("/v1/observe", json=event(), headers={"Origin": "http://testserver"}).status_code == 200
        js = c.get("/static/pcrules.js", headers={"Origin": EVIL})  # a <script src> from any site loads
        assert js.status_code == 200 and "access-control-allow-origin" not in js.headers


def test_a_configured_origin_gets_cors_for_the_public_routes_only(rules_file: Path):
    with app_client(rules_file, cors_origins=(SHOP + "/",), operator_token=TOKEN) as c:
        pre = c.options("/v1/observe", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == SHOP  # that origin, never "*"
        assert pre.headers["access-control-allow-methods"] == "POST"
        assert pre.headers["access-control-allow-headers"] == "content-type"  # no Authorization: no operator calls
        assert "access-control-allow-credentials" not in pre.headers and "Origin" in pre.headers["vary"]
        r = c.post("/v1/observe", json=event(), headers={"Origin": SHOP})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == SHOP
        offer = r.json()
        assert c.post(f"/v1/offers/{offer['offer_id']}/accept", json=owner(offer),
                      headers={"Origin": SHOP}).status_code == 200
        other = c.post("/v1/observe", json=event("v2"), headers={"Origin": EVIL})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


def test_no_wildcard_by_default_and_origins_are_checked():
    assert ServerConfig().cors_origins == ()
    assert ServerConfig(cors_origins="https://a.example, http://b.example:8080").cors_origins == (
        "https://a.example", "http://b.example:8080")
    assert check_origin("HTTPS://Shop.Example.com:443") == "https://shop.example.com"
    for bad in ("shop.example.com", "https://shop.example.com/path", "ftp://x", "https://user@x.example",
                "http://[::1", "https://x.example:99999"):
        with pytest.raises(ValueError, match="cors_origins"):
            ServerConfig(cors_origins=(bad,))


# --------------------------------------------------------------------------- security headers on the demo pages


DEMO_PAGES = ["/demo/", "/demo/index.html", "/demo/bill-payment.html", "/demo/plans.html", "/demo/support.html",
              "/demo/search.html?q=%3Cscript%3E", "/demo/csr.html", "/demo/csr.js", "/demo/site.css",
              "/static/pcrules.js", "/healthz", "/demo/pega/work", "/nowhere"]


def test_security_headers_on_every_demo_page_and_answer():
    with TestClient(create_app(ServerConfig(demo=True))) as c:
        for path in DEMO_PAGES:
            r = c.get(path)
            assert r.status_code in (200, 404), path
            csp = r.headers["content-security-policy"]
            directives = dict((d.split() + [""])[:2] for d in csp.split("; "))
            assert directives["script-src"] == "'self'" and directives["default-src"] == "'self'", path
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp
            assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] in ("same-origin", "no-referrer", "strict-origin-when-cross-origin")
            assert r.headers["x-frame-options"] == "DENY"


# --------------------------------------------------------------------------- the decision log holds no secret


def _all_text(path: Path) -> str:
    out = []
    with sqlite3.connect(path) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for row in db.execute(f"SELECT * FROM {table}"):
                out.append(" ".join(map(str, row)))
    # the file, its WAL and whatever else the log keeps beside it
    raw = b"".join(p.read_bytes() for p in path.parent.rglob("*") if p.is_file() and p.name != "rules.yaml")
    return "\n".join(out) + raw.decode("latin-1")


def test_with_a_key_the_log_holds_no_raw_visitor_id_and_no_secret(tmp_path: Path, rules_file: Path):
    log = tmp_path / "decisions.sqlite"
    visitors = [f"visitor-{secrets.token_hex(6)}" for _ in range(6)]
    with app_client(rules_file, Clock(), log_path=str(log), visitor_id_key=KEY, operator_token=TOKEN) as c:
        decisions = []
        for i, v in enumerate(visitors):
            d = c.post("/v1/observe", json=event(v, f"s{i}", page="Bill Payment" if i % 3 else "Home")).json()
            assert d["visitor_id"] == v  # the visitor sees its own id, not its pseudonym
            decisions.append(d)
        offers = [d for d in decisions if d["action"] == "offer"]
        assert len(offers) >= 3
        assert c.post(f"/v1/offers/{offers[0]['offer_id']}/accept", json=owner(offers[0])).status_code == 200
        assert c.post(f"/v1/offers/{offers[1]['offer_id']}/decline", json=owner(offers[1])).status_code == 200
        # bound to the raw id: another visitor, or the pseudonym itself, is refused
        assert c.post(f"/v1/offers/{offers[2]['offer_id']}/accept",
                      json={"visitor_id": visitors[0], "session_id": offers[2]["session_id"]}).status_code == 404
        c.post("/v1/queues/Billing", json={"agents_available": 3}, headers=AUTH)
        c.get("/metrics", headers=AUTH)
        c.get("/metrics", headers={"Authorization": "Bearer " + TOKEN + "x"})
    text = _all_text(log)
    with sqlite3.connect(log) as db:
        logged = [v for (v,) in db.execute("SELECT visitor_id FROM decisions")]
    assert len(logged) == len(visitors) and all(v.startswith("p_") and len(v) == 34 for v in logged)
    for v in visitors:
        assert v not in text
    assert TOKEN not in text and KEY not in text


def test_pseudonyms_keep_the_holdout_stable(tmp_path: Path):
    rules = write_rules(tmp_path / "rules.yaml", holdout=0.5)
    ids = [f"h{i}" for i in range(40)]

    def reasons(**config) -> list:
        with app_client(rules, Clock(), **config) as c:
            return [c.post("/v1/observe", json=event(v)).json()["reason"] for v in ids]

    plain, keyed = reasons(), reasons(visitor_id_key=KEY)
    assert plain == keyed and 5 < plain.count("holdout") < 35


# --------------------------------------------------------------------------- what a store failure tells a client


class BrokenStore(MemoryStore):
    def session(self, visitor_id, session_id):
        raise StoreUnavailable("shared state store (Redis) unavailable: Error 111 connecting to 10.9.8.7:6379")

    def ping(self):
        raise StoreUnavailable("shared state store (Redis) unavailable: Error 111 connecting to 10.9.8.7:6379")


def test_store_failures_do_not_reveal_internal_addresses(rules_file: Path):
    config = ServerConfig(rules=str(rules_file))
    metrics = Metrics()
    runtime = Runtime(rules_file, store=BrokenStore(), log=MetricsLog(metrics))
    with TestClient(create_app(config, service=Service(config, runtime, metrics)),
                    raise_server_exceptions=False) as c:
        r = c.post("/v1/observe", json=event())
        h = c.get("/healthz")
    assert r.status_code == h.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == "store_unavailable" and "Redis" in r.json()["message"]
    assert "10.9.8.7" not in r.text and "10.9.8.7" not in h.text


# --------------------------------------------------------------------------- `pcrules serve` flags


def serve_config(argv: list[str], environ: dict | None = None):
    from pcrules.cli import build_parser
    from pcrules.server.serve import config_from_args

    return config_from_args(build_parser().parse_args(["serve", *argv]), environ or {})


def test_serve_flags_set_cors_proxies_and_public_metrics_over_the_environment():
    env = {"PCRULES_SERVER_CONFIG": '{"cors_origins": ["https://old.example"], "address_rate": 5}'}
    config = serve_config(["--cors-origin", "https://www.example.com", "--cors-origin", "https://shop.example.com",
                           "--trusted-proxy", "10.0.0.0/8", "--metrics-public"], env)
    assert config.cors_origins == ("https://www.example.com", "https://shop.example.com")
    assert config.trusted_proxies == ("10.0.0.0/8",) and config.metrics_public is True
    assert config.address_rate == 5  # what the flags do not set comes from the environment
    kept = serve_config([], env)
    assert kept.cors_origins == ("https://old.example",) and kept.metrics_public is False


@pytest.mark.parametrize("argv, field", [(["--cors-origin", "https://www.example.com/shop"], "cors_origins"),
                                         (["--cors-origin", "www.example.com"], "cors_origins"),
                                         (["--trusted-proxy", "not-an-address"], "trusted_prox")])
def test_bad_serve_flags_are_refused_naming_the_setting(argv, field):
    with pytest.raises(ValueError, match=field):
        serve_config(argv)
