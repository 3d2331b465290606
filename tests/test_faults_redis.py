"""Redis that forgets: persistence refused at start-up, a loss while running detected (issue 14, item 9).

Found: after redis-server restarted empty (no persistence), 369 of 369 active visitors got a second offer in
their session (the cap is 1). Each test runs real redis-servers on free ports (and `pcrules serve` processes
where it says so) and asserts the invariant, not the symptom: **no session gets two offers**; every offer
answered with 200 is in the decision log exactly once; no 5xx other than 503.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis as redis_py
import yaml

from helpers import T0, ev, rule, spec_dict
from pcrules import Runtime
from pcrules.redis_store import DataLost, RedisStore, StoreUnavailable, VolatileRedis, persistence_verdict
from pcrules.server._procs import PACKAGE_ROOT, REDIS_SERVER, VOLATILE, RedisServer, ServeProcess, free_port

pytestmark = [pytest.mark.faults, pytest.mark.redis]

TOKEN = "faults-redis-operator-token"
ALWAYS = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")
N_VISITORS = 300


def _need_redis() -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.fail(f"redis-server is needed for these tests and was not found at {REDIS_SERVER}: "
                    f"apt-get install -y redis-server (.ci/run does), or set PCRULES_REDIS_SERVER", pytrace=False)


def _kill(server: RedisServer) -> None:
    """SIGKILL: no shutdown, no last write; the data directory stays for start() again."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    server.proc = None


def _rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec_dict([rule("bill", seconds=5)], max_offers_per_session=1,
                                             decline_cooldown_s=3600)))
    return path


def _serve(tmp_path: Path, url: str, *extra: str) -> ServeProcess:
    return ServeProcess(["--rules", str(_rules(tmp_path)), "--redis", url, "--log", str(tmp_path / "d.sqlite"),
                         *extra], log_file=tmp_path / "serve.out", operator_token=TOKEN,
                        config={"address_rate": None, "visitor_rate": None})


def _serve_once(url: str, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`pcrules serve` expected to stop by itself (a refusal): its exit code and output."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    return subprocess.run([sys.executable, "-m", "pcrules", "serve", "--port", str(free_port()), "--redis", url,
                           *extra], env=env, capture_output=True, text=True, timeout=timeout)


def _observe_all(client: httpx.Client, visitors: range) -> list[httpx.Response]:
    return [client.post("/v1/observe", json={"visitor_id": f"v{i}", "session_id": f"s{i}", "page": "Bill Payment",
                                             "seconds_on_page": 6}) for i in visitors]


def _offers_logged(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT offer_id FROM decisions WHERE action = 'offer'")]


def _invariant(replies: list[httpx.Response], log: Path) -> Counter:
    """No 5xx but 503; no session offered twice; each offer answered with 200 logged exactly once."""
    assert all(r.status_code in (200, 503) for r in replies), [r.text for r in replies if r.status_code not in
                                                               (200, 503)][:3]
    offers = [r.json() for r in replies if r.status_code == 200 and r.json()["action"] == "offer"]
    per_session = Counter(d["session_id"] for d in offers)
    assert max(per_session.values(), default=0) <= 1, [s for s, n in per_session.items() if n > 1][:5]
    assert Counter(_offers_logged(log)) == Counter(d["offer_id"] for d in offers)
    return per_session


# --------------------------------------------------------------------------- what each persistence mode is


def test_persistence_verdicts_accept_only_an_append_only_file_synced_at_least_every_second():
    assert persistence_verdict({"appendonly": "yes", "appendfsync": "always", "save": ""}, None)[0]
    ok, why = persistence_verdict({"appendonly": "yes", "appendfsync": "everysec", "save": "3600 1"}, None)
    assert ok and "last second" in why
    for config, setting in (({"appendonly": "yes", "appendfsync": "no", "save": ""}, "appendfsync everysec"),
                            ({"appendonly": "no", "appendfsync": "everysec", "save": "3600 1 300 100"},
                             "appendonly yes"),
                            ({"appendonly": "no", "appendfsync": "everysec", "save": ""}, "appendonly yes")):
        ok, why = persistence_verdict(config, None)
        assert not ok and setting in why, why
    assert "snapshot" in persistence_verdict({"appendonly": "no", "save": "900 1"}, None)[1]
    # CONFIG refused (managed services): INFO persistence decides, and says so
    ok, why = persistence_verdict(None, {"aof_enabled": 1})
    assert ok and "CONFIG" in why
    ok, why = persistence_verdict(None, {"aof_enabled": 0})
    assert not ok and "CONFIG" in why and "aof_enabled:0" in why
    ok, why = persistence_verdict(None, None)
    assert not ok and "cannot be read" in why


def test_redis_urls_are_shown_without_their_password():
    from pcrules.redis_store import _safe_url

    assert _safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert _safe_url("redis://:pw@127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert _safe_url("rediss://app:pw@cache.example.com:6380/2?ssl_cert_reqs=none") == \
        "rediss://app@cache.example.com:6380/2?ssl_cert_reqs=none"
    assert _safe_url("redis://[::1]:6379/0?password=pw&db=1") == "redis://[::1]:6379/0?db=1"
    assert RedisStore("redis://:pw@127.0.0.1:1/0").url == "redis://127.0.0.1:1/0"


def test_serve_refuses_a_volatile_redis_in_one_line_naming_the_url_without_its_password_and_the_setting(
        tmp_path: Path):
    _need_redis()
    with RedisServer(persistence=(*VOLATILE, "--requirepass", "hunter2-redis-pw")) as server:
        url = server.url.replace("redis://", "redis://:hunter2-redis-pw@")
        r = _serve_once(url)
        assert r.returncode == 1, (r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and r.stdout == "", (r.stdout, r.stderr)
        assert lines[0].startswith("error: cannot start: refusing Redis at " + server.url + ":"), lines[0]
        assert "appendonly no" in lines[0] and "set appendonly yes and appendfsync everysec" in lines[0]
        assert "--allow-volatile-redis" in lines[0] and "hunter2" not in r.stderr + r.stdout
        assert "Traceback" not in r.stderr
        # RDB snapshots alone are refused too: a crash loses everything since the last one
        redis_py.Redis.from_url(url).config_set("save", "3600 1")
        r = _serve_once(url)
        assert r.returncode == 1 and "snapshots only (save '3600 1')" in r.stderr, r.stderr
        # with the flag it starts, and says what it accepted
        with _serve(tmp_path, url, "--allow-volatile-redis") as srv:
            assert httpx.get(srv.url + "/healthz").status_code == 200
        said = (tmp_path / "serve.out").read_text()
        assert re.search(r"^warning: redis redis://127\.0\.0\.1:\d+/0: VOLATILE, allowed: appendonly no", said, re.M)
        assert "hunter2" not in said


def test_serve_starts_on_a_redis_with_an_append_only_file(tmp_path: Path):
    _need_redis()
    with RedisServer() as server:  # --appendonly yes --appendfsync everysec
        with _serve(tmp_path, server.url) as srv:
            assert httpx.get(srv.url + "/healthz").status_code == 200
        out = (tmp_path / "serve.out").read_text()
        assert re.search(r"^redis redis://127\.0\.0\.1:\d+/0: appendonly yes, appendfsync everysec: a crash of the "
                         r"machine loses at most about the last second of writes; state marker pcrules:epoch "
                         r"created$", out, re.M)
        with _serve(tmp_path, server.url) as srv:  # a second start finds the marker
            pass
        assert re.search(r"state marker pcrules:epoch since \d{4}-\d\d-\d\d", (tmp_path / "serve.out").read_text())


def test_a_managed_redis_without_config_is_explained_not_crashed():
    _need_redis()
    with RedisServer(persistence=(*VOLATILE, "--rename-command", "CONFIG", "")) as server:
        r = _serve_once(server.url)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "CONFIG is refused (a managed Redis?)" in r.stderr and "aof_enabled:0" in r.stderr
        assert "--allow-volatile-redis" in r.stderr and "Traceback" not in r.stderr
    with RedisServer(persistence=(*VOLATILE, "--rename-command", "CONFIG", "", "--rename-command", "INFO", "")) \
            as server:
        store = RedisStore(server.url)
        with pytest.raises(VolatileRedis, match=r"cannot be read .*CONFIG disabled or renamed.*"
                                                r"--allow-volatile-redis"):
            store.check_persistence()
        assert store.check_persistence(allow_volatile=True).startswith("VOLATILE, allowed")
        store.close()
    with RedisServer(persistence=("--appendonly", "yes", "--rename-command", "CONFIG", "")) as server:
        store = RedisStore(server.url)
        assert "append-only file is on" in store.check_persistence()
        store.close()


def test_a_store_told_to_check_does_it_when_redis_first_answers():
    """`pcrules serve` with Redis down at start-up: the persistence is checked when Redis comes."""
    _need_redis()
    server = RedisServer(persistence=VOLATILE)
    store = RedisStore(server.url, allow_volatile=False)
    rt = Runtime(spec_dict(), store=store)
    try:
        with pytest.raises(StoreUnavailable, match="unavailable"):
            rt.observe(ev("v1", ts=T0))
        server.start()
        for _ in range(2):  # refused, and stays refused without asking Redis again
            with pytest.raises(VolatileRedis, match="refusing Redis at .*appendonly no"):
                rt.observe(ev("v1", ts=T0))
        with pytest.raises(VolatileRedis):
            store.ping()
        assert store.epoch is None
    finally:
        store.close()
        server.__exit__()


# --------------------------------------------------------------------------- the incident, reproduced


def test_appendfsync_always_keeps_every_cap_through_a_sigkill_of_redis(tmp_path: Path):
    """Offers to N visitors, redis-server SIGKILLed and restarted on its data: no session is offered again."""
    _need_redis()
    with RedisServer(persistence=ALWAYS) as server:
        with _serve(tmp_path, server.url) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
            first = _observe_all(client, range(N_VISITORS))
            assert [r.json()["action"] for r in first] == ["offer"] * N_VISITORS
            _kill(server)
            down = client.post("/v1/observe", json={"visitor_id": "v0", "session_id": "s0", "page": "Bill Payment",
                                                    "seconds_on_page": 7})
            assert down.status_code == 503 and down.json()["error"] == "store_unavailable"
            server.start()  # the same port and data directory: the append-only file is read back
            again = _retry_until_answered(client, range(N_VISITORS))
            assert httpx.get(srv.url + "/healthz").status_code == 200
        per_session = _invariant(first + [down] + again, tmp_path / "d.sqlite")
    assert len(per_session) == N_VISITORS
    assert Counter(r.json()["reason"] for r in again if r.status_code == 200) == {"offer_pending": N_VISITORS}
    assert "lost pcrules' state" not in (tmp_path / "serve.out").read_text()


def _retry_until_answered(client: httpx.Client, visitors: range, seconds: float = 15) -> list[httpx.Response]:
    """One observation of each visitor answered with 200 (after 503s while the store comes back); every reply kept
    in the returned list (the 503s too)."""
    import time

    replies: list[httpx.Response] = []
    deadline = time.monotonic() + seconds
    for i in visitors:
        while True:
            r = _observe_all(client, range(i, i + 1))[0]
            replies.append(r)
            if r.status_code != 503:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
    return replies


def test_a_volatile_redis_restarted_empty_is_detected_and_refused_not_a_second_offer(tmp_path: Path):
    """Allowed by the flag, Redis restarts empty under the running server: every observation answers 503 (the
    state is gone, deciding on nothing would offer again) until an operator re-creates the marker."""
    _need_redis()
    with RedisServer(persistence=VOLATILE) as server:
        with _serve(tmp_path, server.url, "--allow-volatile-redis") as srv, \
                httpx.Client(base_url=srv.url, timeout=10) as client:
            first = _observe_all(client, range(N_VISITORS))
            assert [r.json()["action"] for r in first] == ["offer"] * N_VISITORS
            offer = first[0].json()
            _kill(server)
            server.start()  # empty: nothing was kept
            after = _observe_all(client, range(N_VISITORS)) + _observe_all(client, range(N_VISITORS, N_VISITORS + 20))
            assert [r.status_code for r in after] == [503] * (N_VISITORS + 20)
            assert {r.json()["error"] for r in after} == {"store_unavailable"}
            answer = client.post(f"/v1/offers/{offer['offer_id']}/accept",
                                 json={"visitor_id": offer["visitor_id"], "session_id": offer["session_id"]})
            assert answer.status_code == 503  # not a 404: the offer was not guessed wrong, it was lost
            health = client.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            metrics = client.get("/metrics", headers=srv.auth).text
            assert 'pcrules_store_contention_total{kind="data_lost"} 1.0' in metrics
            # The operator accepts the loss: the marker re-created by hand, and the server resumes.
            redis_py.Redis.from_url(server.url).set("pcrules:epoch", "ack")
            new = _retry_until_answered(client, range(N_VISITORS + 100, N_VISITORS + 110))
            assert [r.json()["action"] for r in new if r.status_code == 200] == ["offer"] * 10
        per_session = _invariant(first + after + [answer] + new, tmp_path / "d.sqlite")
    assert sum(per_session.values()) == N_VISITORS + 10
    out = (tmp_path / "serve.out").read_text()
    assert "lost pcrules' state (the state marker pcrules:epoch is gone: restarted without persistence" in out
    assert "the state marker pcrules:epoch was re-created (ack): resuming" in out
    assert "Traceback" not in out


def test_a_flushall_under_a_running_runtime_is_refused_until_acknowledged():
    _need_redis()
    with RedisServer(persistence=VOLATILE) as server:
        store = RedisStore(server.url, due_check_interval_s=0)
        other = RedisStore(server.url)  # another process on the same Redis
        rt = Runtime(spec_dict(), store=store)
        offers = [rt.observe(ev(f"v{i}", ts=T0)) for i in range(20)]
        assert {d.action for d in offers} == {"offer"}
        assert other.ping() and other.epoch == store.epoch  # one marker, adopted by both
        redis_py.Redis.from_url(server.url).flushall()
        # decided together (one round trip) or alone, on the cache or under the lock: refused, nothing written
        assert {type(r) for r in rt.observe_many([ev(f"v{i}", ts=T0 + 1) for i in range(20)])} == {DataLost}
        with pytest.raises(DataLost, match="lost pcrules' state .* is gone"):
            rt.observe(ev("v-new", ts=T0 + 1))
        with pytest.raises(DataLost):
            rt.accept(offers[0].offer_id, ts=T0 + 2)  # a 503, not "no such offer"
        with pytest.raises(DataLost):
            other.ping()
        assert store.data_losses == 1 and other.data_losses == 1
        assert redis_py.Redis.from_url(server.url).dbsize() == 0  # nothing was written on the empty state
        # acknowledged in one process: every process resumes on the new marker
        epoch = store.acknowledge_loss()
        assert other.ping() and other.epoch == epoch
        assert rt.observe(ev("v-new", ts=T0 + 3)).action == "offer"
        store.close()
        other.close()


def test_clear_keeps_the_marker_that_other_processes_share(tmp_path: Path):
    _need_redis()
    with RedisServer() as server:
        store, other = RedisStore(server.url), RedisStore(server.url)
        rt = Runtime(spec_dict(), store=store)
        assert rt.observe(ev("v1", ts=T0)).action == "offer" and other.ping()
        assert store.clear() >= 2
        assert other.ping() and rt.observe(ev("v1", ts=T0 + 1)).action == "offer"
        store.close()
        other.close()


def test_a_stalled_redis_fails_a_batch_once_not_once_per_event():
    """observe_many stops at the first outage: each further event would wait out the same timeouts."""
    import time

    _need_redis()
    with RedisServer() as server:
        store = RedisStore(server.url, socket_timeout_s=0.3, connect_timeout_s=0.3)
        rt = Runtime(spec_dict([rule("bill", seconds=0)], holdout=0.0), store=store, clock=lambda: T0)
        assert all(d.action == "offer" for d in rt.observe_many([ev(f"a{i}", seconds=5) for i in range(3)]))
        server.proc.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(StoreUnavailable):
                rt.observe(ev("one", seconds=5))
            one = time.monotonic() - start
            start = time.monotonic()
            results = rt.observe_many([ev(f"b{i}", seconds=5) for i in range(8)])
            eight = time.monotonic() - start
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert eight < 2 * one + 0.5, f"8 events took {eight:.2f} s where one took {one:.2f} s"
        assert rt.observe(ev("after", seconds=5)).action == "offer"  # and it recovers
        store.close()
