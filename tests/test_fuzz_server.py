"""Fuzzing the whole ASGI app (middleware, routes, demo routes) with hypothesis: no 5xx, no crash.

Requests are built from the API's own shape and then bent: every route (public, operator, demo, made-up),
every method, bodies that are almost events or answers (a field dropped, retyped, oversized, duplicated),
arbitrary JSON and raw bytes; headers with right, wrong and garbage operator tokens, origins, content types
and X-Forwarded-For chains (the client is a trusted proxy, so those are parsed). Offer ids include real ones,
so answers reach the runtime. Bounded: a fixed number of examples and a wall-clock budget checked at the end;
the database is off, so nothing is written beside the tests.
"""

from __future__ import annotations

import json
import time
import warnings

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its TestClient; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from helpers import rule, spec_dict
from pcrules.server import ServerConfig, create_app

TOKEN = "fuzz-operator-token-0123456789"
EXAMPLES = 1500
BUDGET_S = 30.0
SECURITY = ("content-security-policy", "x-content-type-options", "referrer-policy", "x-frame-options")

RUN: dict = {"requests": 0, "statuses": {}, "offers": []}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    rules = [rule("bill", seconds=5, metadata={"Page Name": "{page}", "Device": "{device}"}),
             {"name": "search", "priority": 5, "when": {"page": {"matches": "^Search"}, "seconds_on_page": {"gte": 1}},
              "offer": {"queue": "Support", "metadata": {"Page Name": "{page}"}}}]
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump(spec_dict(rules, {"Billing": {"max_wait_s": 180}, "Support": {"max_wait_s": 300}},
                                             max_offers_per_session=3), sort_keys=False))
    config = ServerConfig(rules=str(path), demo=True, operator_token=TOKEN, log_path=str(tmp / "log.sqlite"),
                          trusted_proxies=("10.0.0.0/8",), cors_origins=("https://shop.example.com",),
                          max_body_bytes=4096)
    with TestClient(create_app(config), raise_server_exceptions=False, client=("10.0.0.1", 4242)) as c:
        for i in range(5):  # real offers, so that some answers reach the runtime
            d = c.post("/v1/observe", json={"visitor_id": f"fv{i}", "session_id": "fs", "page": "Bill Payment",
                                            "seconds_on_page": 10}).json()
            RUN["offers"].append((d["offer_id"], d["visitor_id"], d["session_id"]))
        yield c


SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
           | st.text(max_size=40) | st.sampled_from(["", "0", "Bill Payment", "Search: <x>", "x" * 129, "\u2028",
                                                      "fv0", "fs", "mobile", "1e309", "-1"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                          max_size=4), max_leaves=10)
FIELD = st.sampled_from(["visitor_id", "session_id", "page", "seconds_on_page", "pages_viewed", "session_seconds",
                         "device", "returning", "ts", "agents_available", "estimated_wait_s", "queue", "metadata",
                         "status", "x", "__proto__"])


@st.composite
def bodies(draw) -> bytes | None:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.binary(max_size=80))
    if kind == 2:
        return json.dumps(draw(JSON)).encode()
    offer = draw(st.sampled_from(RUN["offers"] or [("o", "v", "s")]))
    base = {0: {}, 3: {"visitor_id": "v1", "session_id": "s1", "page": "Bill Payment", "seconds_on_page": 6},
            4: {"visitor_id": offer[1], "session_id": offer[2]},
            5: {"queue": "Billing", "metadata": {"pxResults": [{"Name": "Page Name", "Value": "<b>"}]},
                "agents_available": 1}}[kind]
    body = dict(base)
    for _ in range(draw(st.integers(0, 3))):  # bend it: drop, retype or add fields
        if body and draw(st.booleans()):
            body.pop(draw(st.sampled_from(sorted(body))))
        else:
            body[draw(FIELD)] = draw(JSON)
    text = json.dumps(body)
    if draw(st.integers(0, 9)) == 0:
        text = text[:-1] + ', "visitor_id": "dup"}' if len(text) > 2 else text  # a duplicated key
    if draw(st.integers(0, 19)) == 0:
        text = text[:-1] + ', "pad": "' + "p" * 5000 + '"}' if len(text) > 2 else text  # over the body limit
    return text.encode()


SEGMENT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=20) | st.sampled_from(
    ["..", "%2e%2e", "x" * 300, "accept", "Billing", "Support", "__proto__", "PCA-1001"])


@st.composite
def paths(draw) -> str:
    from urllib.parse import quote

    def seg() -> str:
        return quote(draw(SEGMENT), safe="")

    offer = draw(st.sampled_from([o for o, _, _ in RUN["offers"]] or ["o"]) | SEGMENT.map(lambda s: quote(s, safe="")))
    return draw(st.sampled_from([
        "/v1/observe", f"/v1/offers/{offer}/{draw(st.sampled_from(['accept', 'decline', 'expire']))}",
        f"/v1/offers/{offer}/{seg()}", f"/v1/queues/{draw(st.sampled_from(['Billing', 'Support']))}",
        f"/v1/queues/{seg()}", "/v1/admin/reload", "/v1/goals", "/metrics", "/healthz", "/static/pcrules.js", "/",
        "/demo/pega/work", f"/demo/pega/work/{seg()}/status", f"/demo/pega/GetAgentAvailability/{seg()}",
        "/demo/pega/config", f"/demo/{seg()}", f"/{seg()}/{seg()}",
    ]))


@st.composite
def headers(draw) -> dict[str, bytes]:
    out = {}
    ctype = draw(st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8",
                                  "text/plain", "APPLICATION/JSON", None, "multipart/form-data; boundary=x"]))
    if ctype:
        out["content-type"] = ctype
    auth = draw(st.sampled_from([None, f"Bearer {TOKEN}", f"Bearer {TOKEN}", "Bearer nope", "Basic abc", "Bearer",
                                 f"bearer {TOKEN[:-1]}", "\u00e9\u00e8"]))
    if auth:
        out["authorization"] = auth
    origin = draw(st.sampled_from([None] * 12 + ["https://shop.example.com", "https://evil.example", "null",
                                   "http://testserver", "garbage", "http://[::1", "https://", "http://x:99999",
                                   "https://\u00e9vil.example"]))
    if origin:
        out["origin"] = origin
        if draw(st.booleans()):
            out["access-control-request-method"] = "POST"
    hops = draw(st.lists(st.ip_addresses().map(str) | st.sampled_from(["unknown", "", "10.0.0.9", "::ffff:1.2.3.4"]),
                         max_size=3))
    if hops:
        out["x-forwarded-for"] = ", ".join(hops)
    return {k: v.encode("utf-8") for k, v in out.items()}  # as bytes on the wire: UTF-8 is not ASCII


def check(client: TestClient, method: str, path: str, head: dict, body: bytes | None) -> None:
    r = client.request(method, path, content=body, headers=head)
    RUN["requests"] += 1
    RUN["statuses"][r.status_code] = RUN["statuses"].get(r.status_code, 0) + 1
    assert r.status_code < 500, (method, path, head, body, r.status_code, r.text[:500])
    for name in SECURITY:
        assert name in r.headers, (method, path, name)
    assert r.headers.get("access-control-allow-origin") in (None, "https://shop.example.com")
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json") and method != "HEAD":
        err = r.json()
        assert err["error"] and err["message"]
    assert TOKEN not in r.text  # never echoed


@pytest.mark.slow
def test_fuzzed_requests_never_get_a_5xx_and_the_server_still_answers(client: TestClient):
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(method=st.sampled_from(["POST"] * 8 + ["GET"] * 3 + ["OPTIONS", "HEAD", "PUT", "DELETE", "PATCH"]),
           path=paths(), head=headers(), body=bodies())
    def fuzz(method: str, path: str, head: dict, body: bytes | None) -> None:
        check(client, method, path, head, body)

    started = time.monotonic()
    fuzz()
    elapsed = time.monotonic() - started
    print(f"\nfuzzed {RUN['requests']} requests in {elapsed:.1f} s; statuses {dict(sorted(RUN['statuses'].items()))}")
    assert RUN["requests"] >= EXAMPLES * 0.9 and elapsed < BUDGET_S
    assert len(RUN["statuses"]) >= 6  # the fuzzing reached many outcomes, not one refusal over and over
    assert RUN["statuses"].get(200, 0) >= 30  # and many got through to the runtime

    # and afterwards the server works as before
    assert client.get("/healthz").json()["status"] == "ok"
    where = {"x-forwarded-for": "192.0.2.200"}
    d = client.post("/v1/observe", json={"visitor_id": "after-fuzz", "session_id": "s", "page": "Bill Payment",
                                         "seconds_on_page": 10}, headers=where).json()
    assert d["action"] == "offer"
    r = client.post(f"/v1/offers/{d['offer_id']}/accept", json={"visitor_id": "after-fuzz", "session_id": "s"},
                    headers=where)
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}",
                                           "x-forwarded-for": "192.0.2.201"}).status_code == 200
