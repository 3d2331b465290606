"""The reference HTTP server (pcrules.server): routes, decisions, answers, refusals, metrics, reloads, `pcrules serve`.

In-process through Starlette's TestClient with a controllable clock; the last
tests start `pcrules serve` as a real uvicorn process (SIGHUP reload, startup
errors). The Redis store and two workers are in test_redis_store.py; the browser in
test_browser_demo.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its TestClient; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from helpers import T0, Clock, rule, spec_dict
from pcrules.server import ServerConfig, create_app
from pcrules.server._procs import ServeProcess

PAYLOAD = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'&"
TOKEN = "test-operator-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_rules(path: Path, **policy) -> Path:
    rules = [rule("bill", seconds=300, metadata={"Page Name": "{page}", "Time spent on page": "{minutes} mins"}),
             {"name": "search", "priority": 5, "when": {"page": {"matches": "^Search"}, "seconds_on_page": {"gte": 10}},
              "offer": {"queue": "Support", "metadata": {"Page Name": "{page}"}}}]
    spec = spec_dict(rules, {"Billing": {"max_wait_s": 180}, "Support": {"max_wait_s": 300}}, **policy)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    return write_rules(tmp_path / "rules.yaml")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(rules_file: Path, clock: Clock):
    """An operator's client: it sends the operator token (the public routes ignore it)."""
    app = create_app(ServerConfig(rules=str(rules_file), operator_token=TOKEN), clock=clock)
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as c:
        yield c


def event(visitor="v1", session="s1", page="Bill Payment", seconds=301.0, **extra):
    return {"visitor_id": visitor, "session_id": session, "page": page, "seconds_on_page": seconds, **extra}


def owner(decision: dict, **extra) -> dict:
    """The body of an answer: the offer's own visitor and session."""
    return {"visitor_id": decision["visitor_id"], "session_id": decision["session_id"], **extra}


def refused(response: httpx.Response, status: int, field: str | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] and body["message"]
    if field is not None:
        assert body.get("field") == field, body
        assert field.split(".")[0] in body["message"] or field in ("body", "content-type", "offer_id", "name")
    return body


# --------------------------------------------------------------------------- decisions and answers


def test_observe_wait_then_offer_then_pending(client: TestClient, clock: Clock):
    r = client.post("/v1/observe", json=event(seconds=120))
    assert r.status_code == 200
    d = r.json()
    assert d["action"] == "wait" and d["reason"] is None and d["recheck_after"] == pytest.approx(180)
    assert d["ts"] == T0  # the server's clock

    clock.t += 180
    d = client.post("/v1/observe", json=event(seconds=300)).json()
    assert d["action"] == "offer" and d["queue"] == "Billing" and d["rule"] == "bill"
    assert len(d["offer_id"]) >= 22  # 128 random bits, url-safe
    assert d["metadata"] == {"Page Name": "Bill Payment", "Time spent on page": "5 mins"}
    assert d["expires_at"] == pytest.approx(clock.t + 60)
    assert d["js_call"].startswith('pega.chat.proactiveChat.offer("Billing", {')

    d2 = client.post("/v1/observe", json=event(seconds=310)).json()
    assert (d2["action"], d2["reason"]) == ("none", "offer_pending")
    assert client.post("/v1/observe", json=event(page="Home", seconds=5)).json()["reason"] == "no_rule"


def test_accept_decline_expire_and_their_refusals(client: TestClient, clock: Clock):
    offer = client.post("/v1/observe", json=event()).json()
    r = client.post(f"/v1/offers/{offer['offer_id']}/accept", json=owner(offer))
    assert r.status_code == 200
    assert r.json() == {"offer_id": offer["offer_id"], "status": "accepted", "ts": T0, "queue": "Billing",
                        "rule": "bill"}
    body = refused(client.post(f"/v1/offers/{offer['offer_id']}/decline", json=owner(offer)), 409, "offer_id")
    assert body["error"] == "offer_closed" and body["status_now"] == "accepted"
    assert client.post("/v1/observe", json=event(seconds=400)).json()["reason"] == "in_chat"

    refused(client.post("/v1/offers/nope/accept", json=owner(offer)), 404, "offer_id")
    refused(client.post("/v1/offers/" + "x" * 300 + "/accept", json=owner(offer)), 404, "offer_id")
    refused(client.post(f"/v1/offers/{offer['offer_id']}/maybe", json=owner(offer)), 404, "answer")
    refused(client.post(f"/v1/offers/{offer['offer_id']}/accept"), 400, "visitor_id")  # who answers: required
    refused(client.post(f"/v1/offers/{offer['offer_id']}/accept", json={"visitor_id": "v1"}), 400, "session_id")

    declined = client.post("/v1/observe", json=event(visitor="v2")).json()
    answer = client.post(f"/v1/offers/{declined['offer_id']}/decline", json=owner(declined))
    assert answer.json()["status"] == "declined"
    clock.t += 5
    d = client.post("/v1/observe", json=event(visitor="v2", session="another")).json()
    assert (d["action"], d["reason"]) == ("none", "cooldown")

    gone = client.post("/v1/observe", json=event(visitor="v3")).json()
    assert client.post(f"/v1/offers/{gone['offer_id']}/expire", json=owner(gone)).json()["status"] == "expired"
    late = client.post("/v1/observe", json=event(visitor="v4")).json()
    clock.t += 61  # by the server's clock the offer ran out: a late accept is refused and recorded as expired
    body = refused(client.post(f"/v1/offers/{late['offer_id']}/accept", json=owner(late)), 409, "offer_id")
    assert "expired" in body["message"]


def test_queue_status_blocks_offers(client: TestClient):
    r = client.post("/v1/queues/Billing", json={"agents_available": 0, "estimated_wait_s": 30})
    assert r.status_code == 200 and r.json()["agents_available"] == 0 and r.json()["queue"] == "Billing"
    assert client.post("/v1/observe", json=event()).json()["reason"] == "queue_busy"
    client.post("/v1/queues/Billing", json={"agents_available": 2, "estimated_wait_s": 30})
    assert client.post("/v1/observe", json=event()).json()["action"] == "offer"
    refused(client.post("/v1/queues/Nope", json={"agents_available": 1}), 404, "name")
    refused(client.post("/v1/queues/Billing", json={"agents_available": -1}), 400, "agents_available")
    refused(client.post("/v1/queues/Billing", json={"agents_available": True}), 400, "agents_available")
    refused(client.post("/v1/queues/Billing", json={"estimated_wait_s": "soon"}), 400, "estimated_wait_s")
    refused(client.post("/v1/queues/Billing", json={"agents": 1}), 400, "agents")


def test_offer_metadata_is_escaped_for_html_and_script(client: TestClient):
    d = client.post("/v1/observe", json=event(page="Search: " + PAYLOAD, seconds=11)).json()
    assert d["action"] == "offer" and d["queue"] == "Support"
    value = d["metadata"]["Page Name"]
    assert "<" not in value and ">" not in value and "&lt;img" in value
    assert "<" not in d["js_call"] and "</script" not in d["js_call"].lower()


# --------------------------------------------------------------------------- refusals: 4xx naming the field, never 500

BAD_EVENTS = [
    ({"session_id": "s", "page": "p", "seconds_on_page": 1}, "visitor_id"),
    (event(visitor=""), "visitor_id"),
    (event(visitor="v" * 129), "visitor_id"),
    (event(session=7), "session_id"),
    (event(page="x" * 201), "page"),
    (event(page="bad\npage"), "page"),
    (event(seconds="301"), "seconds_on_page"),
    (event(seconds=-1), "seconds_on_page"),
    (event(seconds=None), "seconds_on_page"),
    (event(pages_viewed="four"), "pages_viewed"),
    (event(device=["mobile"]), "device"),
    (event(returning="yes"), "returning"),
    (event(extra={"nested": 1}), "extra"),
    (event(ts=T0), "ts"),  # the event time is the server's
]


@pytest.mark.parametrize("body,field", BAD_EVENTS, ids=[f for _, f in BAD_EVENTS])
def test_bad_events_get_400_naming_the_field(client: TestClient, body: dict, field: str):
    refused(client.post("/v1/observe", json=body), 400, field)


@pytest.mark.parametrize("raw,ctype,status,field", [
    (b"", "application/json", 400, "body"),
    (b"{not json", "application/json", 400, "body"),
    (b"[1, 2]", "application/json", 400, "body"),
    (b'"text"', "application/json", 400, "body"),
    (b'{"visitor_id": NaN}', "application/json", 400, "body"),
    (b"\xff\xfe{}", "application/json", 400, "body"),
    (b"[" * 50_00 + b"]" * 50_00, "application/json", 400, "body"),
    (b'{"visitor_id": "a", "visitor_id": "b"}', "application/json", 400, "visitor_id"),
    (json.dumps(event()).encode(), "text/plain", 415, "content-type"),
    (json.dumps(event()).encode(), "", 415, "content-type"),
    (b"{" + b" " * 20_000 + b"}", "application/json", 413, "body"),
])
def test_bad_bodies(client: TestClient, raw: bytes, ctype: str, status: int, field: str):
    headers = {"content-type": ctype} if ctype else {}
    refused(client.post("/v1/observe", content=raw, headers=headers), status, field)


def test_body_limit_also_without_content_length(client: TestClient):
    def chunks():
        for _ in range(40):
            yield b" " * 1024

    r = client.post("/v1/observe", content=chunks(), headers={"content-type": "application/json"})
    refused(r, 413, "body")
    refused(client.post("/v1/observe", content=b"{}", headers={"content-type": "application/json",
                                                                 "content-length": "99999999"}), 413, "body")


def test_unknown_routes_and_methods_are_json(client: TestClient):
    assert refused(client.get("/v1/observe"), 405, None)["error"] == "method_not_allowed"
    assert refused(client.get("/nowhere"), 404, None)["error"] == "not_found"
    assert client.get("/demo/").status_code == 404  # the demo site only with --demo
    refused(client.post("/v1/offers/x/accept", json={"ts": T0}), 400, "ts")
    refused(client.post("/v1/admin/reload", json={"path": "/etc/passwd"}), 400, "path")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                    lambda inner: (st.lists(inner, max_size=4)
                                   | st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                    max_leaves=12)
FIELDS = st.sampled_from(["visitor_id", "session_id", "page", "seconds_on_page", "pages_viewed", "device",
                          "returning", "ts", "session_seconds", "x"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(JSON, st.dictionaries(FIELDS, JSON, max_size=6), st.binary(max_size=64)),
       path=st.sampled_from(["/v1/observe", "/v1/offers/abc/accept", "/v1/queues/Billing", "/v1/admin/reload"]))
def test_fuzzed_bodies_never_get_a_500(client: TestClient, body, path):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json()["error"]


# --------------------------------------------------------------------------- health, metrics, headers, reload


def test_healthz_and_metrics(client: TestClient):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["ruleset"] == "test" and health["store"] == "memory"
    offer = client.post("/v1/observe", json=event()).json()
    client.post("/v1/observe", json=event())
    client.post("/v1/observe", json=event(page="Home"))
    client.post(f"/v1/offers/{offer['offer_id']}/decline", json=owner(offer))
    client.post("/v1/observe", json=event(seconds="bad"))
    text = client.get("/metrics").text
    assert 'pcrules_decisions_total{action="offer",reason=""} 1.0' in text
    assert 'pcrules_decisions_total{action="none",reason="offer_pending"} 1.0' in text
    assert 'pcrules_decisions_total{action="none",reason="no_rule"} 1.0' in text
    assert 'pcrules_outcomes_total{status="declined"} 1.0' in text
    assert 'pcrules_http_errors_total{error="invalid_event",status="400"} 1.0' in text
    assert re.search(r'pcrules_decision_seconds_bucket\{le="0\.02"\} 3\.0', text)
    assert 'pcrules_ruleset_info{name="test"' in text


def test_security_headers_and_snippet(client: TestClient):
    r = client.get("/static/pcrules.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert "proactivechat-accepted" in r.text and "innerHTML" not in r.text
    for resp in (r, client.get("/healthz"), client.post("/v1/observe", json={})):
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert resp.headers["x-content-type-options"] == "nosniff"


def test_operator_routes_are_off_without_a_token(rules_file: Path):
    app = create_app(ServerConfig(rules=str(rules_file)))
    with TestClient(app, headers=AUTH) as c:  # whatever token a client sends: there is none to match
        assert c.get("/metrics").status_code == 404
        assert c.post("/v1/queues/Billing", json={}).status_code == 404
        assert c.post("/v1/admin/reload").status_code == 404
        assert c.post("/v1/observe", json=event()).status_code == 200


def test_reload_keeps_state_and_refuses_a_bad_ruleset(client: TestClient, rules_file: Path):
    offer = client.post("/v1/observe", json=event()).json()
    before = client.get("/healthz").json()["version"]
    write_rules(rules_file, decline_cooldown_s=60)
    r = client.post("/v1/admin/reload")
    assert r.status_code == 200 and r.json()["previous"]["version"] == before
    assert r.json()["version"] != before == offer["ruleset_version"]
    assert client.post(f"/v1/offers/{offer['offer_id']}/accept", json=owner(offer)).status_code == 200  # survived

    rules_file.write_text("name: broken\nrules: [{name: x}]\n")
    body = refused(client.post("/v1/admin/reload"), 422, None)
    assert body["error"] == "invalid_spec" and body["problems"]
    assert client.get("/healthz").json()["version"] == r.json()["version"]  # still serving the good one
    assert 'pcrules_reloads_total{result="failed"} 1.0' in client.get("/metrics").text


def test_trusted_clients_may_set_ts(rules_file: Path):
    app = create_app(ServerConfig(rules=str(rules_file), trust_client_ts=True))
    with TestClient(app) as c:
        d = c.post("/v1/observe", json=event(ts=T0 + 5)).json()
        assert d["ts"] == T0 + 5
        assert c.post(f"/v1/offers/{d['offer_id']}/accept", json=owner(d, ts=T0 + 6)).json()["ts"] == T0 + 6


# --------------------------------------------------------------------------- the demo's Pega stand-in server


def test_demo_pega_endpoints(rules_file: Path):
    app = create_app(ServerConfig(rules=str(rules_file), demo=True, operator_token=TOKEN))
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as c:
        assert c.get("/", follow_redirects=False).headers["location"] == "/demo/"
        page = c.get("/demo/bill-payment.html")
        assert page.status_code == 200 and "<script>" not in page.text and " on" not in page.text.split("<body")[0]
        assert c.get("/demo/pega/config").json()["wait_time_s"] == 60
        assert c.get("/demo/pega/GetAgentAvailability/Billing").text == "true"
        assert c.get("/demo/pega/GetAgentAvailability/Nope").text == "false"
        c.post("/v1/queues/Billing", json={"agents_available": 0})
        assert c.get("/demo/pega/GetAgentAvailability/Billing").text == "false"

        pairs = [{"Name": "Page Name", "Value": "&lt;b&gt;"}]
        work = c.post("/demo/pega/work", json={"queue": "Billing", "metadata": {"pxResults": pairs}})
        assert work.status_code == 201
        wid = work.json()["work_id"]
        assert c.post(f"/demo/pega/work/{wid}/status", json={"status": "Accepted by customer"}).status_code == 200
        refused(c.post(f"/demo/pega/work/{wid}/status", json={"status": "Declined by customer"}), 409, "status")
        refused(c.post(f"/demo/pega/work/{wid}/status", json={"status": "Whatever"}), 400, "status")
        refused(c.post("/demo/pega/work/PCA-1/status", json={"status": "Declined by customer"}), 404, "work_id")
        refused(c.post("/demo/pega/work", json={"queue": "Billing", "metadata": {"pxResults": [{"Name": 1}]}}),
                400, "metadata.pxResults[0]")
        refused(c.post("/demo/pega/work", json={"queue": "Billing", "metadata": {}}), 400, "metadata")
        refused(c.post("/demo/pega/work", json={"queue": "__proto__", "metadata": {"pxResults": []}}), 400, "queue")
        listed = c.get("/demo/pega/work").json()
        assert listed["queues"] == ["Billing", "Support"]
        assert listed["items"][0]["metadata"] == {"pxResults": pairs}
        assert listed["items"][0]["status"] == "Accepted by customer"


# --------------------------------------------------------------------------- `pcrules serve`, a real uvicorn process


def test_serve_reloads_on_sighup(tmp_path: Path):
    rules = write_rules(tmp_path / "rules.yaml")
    with ServeProcess(["--rules", str(rules), "--log", str(tmp_path / "log.sqlite")],
                      log_file=tmp_path / "serve.out", operator_token=TOKEN) as srv:
        before = httpx.get(srv.url + "/healthz").json()["version"]
        d = httpx.post(srv.url + "/v1/observe", json=event()).json()
        assert d["action"] == "offer"
        write_rules(rules, decline_cooldown_s=5)
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while httpx.get(srv.url + "/healthz").json()["version"] == before:
            assert time.monotonic() < deadline, "SIGHUP did not reload the ruleset"
            time.sleep(0.05)
        assert httpx.post(srv.url + f"/v1/offers/{d['offer_id']}/decline", json=owner(d)).json()["status"] == "declined"
        metrics = httpx.get(srv.url + "/metrics", headers=srv.auth).text
        assert 'pcrules_reloads_total{result="ok"} 1.0' in metrics
    out = (tmp_path / "serve.out").read_text()
    assert "reloaded (SIGHUP)" in out and "Traceback" not in out


def test_serve_refuses_bad_configuration(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npolicy: {holdout: 2}\n")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def run(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pcrules", "serve", *a], capture_output=True, text=True,
                              timeout=60, env=env)

    r = run("--rules", str(bad), "--port", "1")
    assert r.returncode == 1 and "holdout" in r.stderr and "Traceback" not in r.stderr
    r = run("--workers", "2")
    assert r.returncode == 2 and "--redis" in r.stderr
    r = run("--rules", str(bad), "--bundle", str(tmp_path))
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_static_files_have_no_inline_script_and_no_html_sinks():
    """What lets a Content-Security-Policy forbid inline script, and keeps visitor text out of the HTML parser."""
    from pcrules.server.http import STATIC_DIR

    files = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"pcrules.js", "pega-standin.js", "csr.js", "csr.html", "bill-payment.html"}
    for path in files:
        text = path.read_text()
        if path.suffix == ".js":
            assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
                                 r"setTimeout\(\s*['\"]", text), path
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path  # every script is a file
            assert not re.search(r"\son[a-z]+\s*=|\sstyle\s*=|javascript:|<style", text, re.I), path
            assert not re.search(r"(src|href)=\"(https?:)?//", text), path  # nothing from another site (no CDN)


def test_demo_mode_serves_the_demo_ruleset_by_default():
    with TestClient(create_app(ServerConfig(demo=True))) as c:
        assert c.get("/healthz").json()["ruleset"] == "demo"
        assert c.get("/demo/").status_code == 200 and c.get("/demo/csr.html").status_code == 200
        d = c.post("/v1/observe", json=event(seconds=12)).json()
        assert d["action"] == "offer" and d["queue"] == "Billing"


def test_serving_a_bundle_and_reloading_the_one_published_next(tmp_path: Path):
    from pcrules.bundle import publish

    out = tmp_path / "published"
    first = publish(write_rules(tmp_path / "v1.yaml"), None, out)
    with TestClient(create_app(ServerConfig(bundle=str(out), operator_token=TOKEN)), headers=AUTH) as c:
        v1 = c.get("/healthz").json()["version"]
        offer = c.post("/v1/observe", json=event()).json()
        assert offer["action"] == "offer" and offer["ruleset_version"] == v1
        second = publish(write_rules(tmp_path / "v2.yaml", decline_cooldown_s=30), None, out)
        r = c.post("/v1/admin/reload").json()
        assert r["source"] == f"bundle {second.name}" != f"bundle {first.name}" and r["version"] != v1
        assert c.post(f"/v1/offers/{offer['offer_id']}/decline", json=owner(offer)).status_code == 200
        (second / "rules.yaml").write_text("tampered: true\n")  # a bundle that fails verification is refused
        body = refused(c.post("/v1/admin/reload"), 422, None)
        assert body["error"] == "invalid_bundle" and "rules.yaml" in body["message"], body
        assert c.get("/healthz").json()["version"] == r["version"]


def test_every_worker_follows_the_publish_directory(tmp_path: Path):
    """Issue 18: a Publish or a rollback made anywhere (the tuner on a shared host, the CLI) reaches every host
    serving that publish directory, without a reload call; a version that fails to load is reported once and
    the last good one keeps serving; a version dir, or follow_bundle off, is pinned."""
    import asyncio

    from pcrules.bundle import load_bundle, publish, rollback

    out = tmp_path / "published"
    first = publish(write_rules(tmp_path / "v1.yaml"), None, out)
    followers = [create_app(ServerConfig(bundle=str(out), operator_token=TOKEN)),
                 create_app(ServerConfig(bundle=str(out / "current"), operator_token=TOKEN))]
    pinned = [create_app(ServerConfig(bundle=str(out), follow_bundle=False, operator_token=TOKEN)),
              create_app(ServerConfig(bundle=str(out / "versions" / first.name), operator_token=TOKEN))]
    clients = [TestClient(app, headers=AUTH) for app in followers + pinned]
    for c in clients:
        c.__enter__()
    try:
        v1 = clients[0].get("/healthz").json()["version"]
        second = publish(write_rules(tmp_path / "v2.yaml", decline_cooldown_s=30), None, out)

        def served() -> list[str]:
            for app in followers + pinned:  # what the watch loop does every second, now
                asyncio.run(app.state.service.follow_publish())
            return [c.get("/healthz").json()["version"] for c in clients]

        v2 = load_bundle(second).spec.version
        assert served() == [v2, v2, v1, v1]
        rollback(out)
        assert served() == [v1, v1, v1, v1]
        third = publish(write_rules(tmp_path / "v3.yaml", decline_cooldown_s=60), None, out)
        (third / "rules.yaml").write_text("tampered: true\n")  # fails verification: the last good one serves
        assert served() == [v1, v1, v1, v1]
        reloads = clients[0].get("/metrics").text
        assert 'pcrules_reloads_total{result="failed"} 1.0' in reloads, reloads
        assert served() == [v1, v1, v1, v1]  # one try per move, not one per second
        assert 'pcrules_reloads_total{result="failed"} 1.0' in clients[0].get("/metrics").text
    finally:
        for c in clients:
            c.__exit__(None, None, None)


def test_pin_bundle_turns_following_off(tmp_path: Path):
    from pcrules.cli import build_parser
    from pcrules.server.serve import config_from_args

    parse = build_parser().parse_args
    assert config_from_args(parse(["serve", "--bundle", str(tmp_path)]), {}).follow_bundle is True
    assert config_from_args(parse(["serve", "--bundle", str(tmp_path), "--pin-bundle"]), {}).follow_bundle is False
