"""Goals over HTTP (POST /v1/goals) and from the browser snippet: recorded, validated, kept for unknown visitors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

# TestClient as test_server imports it (without Starlette's httpx2 warning)
from test_server import AUTH, TOKEN, TestClient, event, refused, write_rules

from helpers import T0, Clock
from pcrules.server import ServerConfig, create_app


@pytest.fixture
def logged(tmp_path: Path):
    clock = Clock()
    log = tmp_path / "log.sqlite"
    app = create_app(ServerConfig(rules=str(write_rules(tmp_path / "rules.yaml")), log_path=str(log),
                                  operator_token=TOKEN), clock=clock)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app.state.service.runtime, log, clock


def goals(runtime, path: Path) -> list[tuple]:
    runtime.flush()
    with sqlite3.connect(path) as db:
        return db.execute("SELECT visitor_id, session_id, goal, value, ts FROM goals ORDER BY id").fetchall()


def test_a_goal_is_recorded_at_the_servers_clock_and_counted(logged):
    client, runtime, log, clock = logged
    client.post("/v1/observe", json=event())
    clock.t += 30
    r = client.post("/v1/goals", json={"visitor_id": "v1", "session_id": "s1", "goal": "bill_paid", "value": 42.17})
    assert r.status_code == 202 and r.json() == {"recorded": True, "goal": "bill_paid"}
    assert goals(runtime, log) == [("v1", "s1", "bill_paid", 42.17, T0 + 30)]
    metrics = client.get("/metrics", headers=AUTH).text
    assert "pcrules_goals_total 1.0" in metrics


def test_goals_of_visitors_the_runtime_never_saw_are_kept(logged):
    client, runtime, log, _ = logged
    r = client.post("/v1/goals", json={"visitor_id": "stranger", "session_id": "x", "goal": "plan_bought"})
    assert r.status_code == 202
    assert goals(runtime, log) == [("stranger", "x", "plan_bought", None, T0)]


@pytest.mark.parametrize("body, field", [
    ({"session_id": "s1", "goal": "bill_paid"}, "visitor_id"),
    ({"visitor_id": "v1", "goal": "bill_paid"}, "session_id"),
    ({"visitor_id": "v1", "session_id": "s1"}, "goal"),
    ({"visitor_id": "v1", "session_id": "s1", "goal": ""}, "goal"),
    ({"visitor_id": "v1", "session_id": "s1", "goal": "x" * 500}, "goal"),
    ({"visitor_id": "v1", "session_id": "s1", "goal": "bill\npaid"}, "goal"),
    ({"visitor_id": "v1", "session_id": "s1", "goal": 7}, "goal"),
    ({"visitor_id": "v1", "session_id": "s1", "goal": "bill_paid", "value": "lots"}, "value"),
    ({"visitor_id": "v1", "session_id": "s1", "goal": "bill_paid", "value": True}, "value"),
    ({"visitor_id": "v1", "session_id": "s1", "goal": "bill_paid", "ts": T0}, "ts"),  # the server's clock only
    ({"visitor_id": "v1", "session_id": "s1", "goal": "bill_paid", "card": "4111"}, "card"),
])
def test_a_bad_goal_is_refused_naming_the_field_and_records_nothing(logged, body, field):
    client, runtime, log, _ = logged
    refused(client.post("/v1/goals", json=body), 400, field)
    good = client.post("/v1/goals", json={"visitor_id": "v1", "session_id": "s1", "goal": "bill_paid"})
    assert good.status_code == 202  # served normally right after
    assert [g[2] for g in goals(runtime, log)] == ["bill_paid"]


def test_goals_count_against_the_visitors_rate_limit(tmp_path: Path):
    app = create_app(ServerConfig(rules=str(write_rules(tmp_path / "rules.yaml")), visitor_rate=1, visitor_burst=3),
                     clock=Clock())
    with TestClient(app, raise_server_exceptions=False) as client:
        statuses = [client.post("/v1/goals", json={"visitor_id": "v9", "session_id": "s", "goal": "g"}).status_code
                     for _ in range(6)]
    assert statuses[:3] == [202, 202, 202] and 429 in statuses[3:]
