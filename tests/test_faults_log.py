"""Fault injection on the decision log: a full disk, torn and corrupted journals, SIGKILL while writing and while
recovering, a read-only directory, a log another process has open.

Each test asserts the invariant rather than a symptom: every decision returned with 200 (or by observe) is in
the log exactly once; nothing is in the log that was not returned; no state changes without a log record; no
5xx but 503 for a dependency that is down; a healthy client is answered within 1 s throughout.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pcrules
from pcrules import SQLiteDecisionLog
from pcrules.decision_log import DECISION, GOAL, OUTCOME, fresh_log
from pcrules.errors import LogUnavailable
from pcrules.log_journal import MAGIC, SUFFIX, Journal, frame, scan
from pcrules.server._procs import ServeProcess, free_port

pytestmark = pytest.mark.faults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pcrules.__file__)))
RULES = {"name": "faults", "policy": {"holdout": 0.0, "max_offers_per_session": 1, "offer_timeout_s": 3600},
         "queues": {"Billing": {}},
         "rules": [{"name": "bill", "when": {"page": "Bill Payment", "seconds_on_page": {"gte": 0}},
                    "offer": {"queue": "Billing"}}]}
OPEN = {"visitor_rate": None, "address_rate": None}  # one loopback address drives the load


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `where` (CI runs as root); unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.geteuid() == 0:
            pytest.fail(f"mounting a tmpfs failed as root: {done.stderr.strip()}")
        pytest.skip(f"mounting a tmpfs needs root (CI runs as root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> Path:
    """Take every free byte of the file system holding `directory`; delete the file to give them back."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0"):
                pass
    finally:
        os.close(fd)
    return filler


def logged(path: Path) -> tuple[list[tuple], list[tuple]]:
    with sqlite3.connect(path) as db:
        decisions = db.execute("SELECT visitor_id, session_id, action, offer_id FROM decisions").fetchall()
        outcomes = db.execute("SELECT offer_id, status FROM outcomes").fetchall()
    return decisions, outcomes


class Client:
    """Observes and answers against a server, keeping every answer, its status and its time."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=5)
        self.slowest = 0.0
        self.statuses: dict[int, int] = {}

    def post(self, path: str, body: dict) -> httpx.Response:
        start = time.monotonic()
        r = self.http.post(path, json=body)
        self.slowest = max(self.slowest, time.monotonic() - start)
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500 or r.status_code == 503, r.text
        return r

    def observe(self, visitor: str) -> httpx.Response:
        return self.post("/v1/observe", {"visitor_id": visitor, "session_id": "s", "page": "Bill Payment",
                                         "seconds_on_page": 5})


def test_a_full_disk_refuses_decisions_with_503_and_changes_nothing(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    with tmpfs(tmp_path / "disk", "16m") as disk:
        log_path = disk / "d.sqlite"
        server = ServeProcess(["--rules", str(rules), "--log", str(log_path)], config=OPEN,
                              log_file=tmp_path / "serve.out").start()
        try:
            client = Client(server.url)
            returned: dict[str, str] = {}   # visitor -> offer id the client was given
            refused: list[str] = []
            for i in range(200):  # healthy first
                r = client.observe(f"a{i}")
                returned[f"a{i}"] = r.json()["offer_id"]
            filler = fill(disk)
            filled = time.monotonic()
            i = 0
            while len(refused) < 200 and i < 60_000:
                r = client.observe(f"b{i}")
                if r.status_code == 200:
                    returned[f"b{i}"] = r.json()["offer_id"]
                else:
                    body = r.json()
                    assert r.status_code == 503 and body["error"] == "log_unavailable", r.text
                    assert int(r.headers["retry-after"]) >= 1
                    refused.append(f"b{i}")
                i += 1
            assert len(refused) == 200, f"the disk never filled after {i} observations"
            print(f"disk full after {i - 200} more decisions, {time.monotonic() - filled:.1f} s")
            health = client.http.get("/healthz")
            assert health.status_code == 503 and "log" in health.text, health.text
            # answers are refused as well, and the offer stays open
            accepted = next(iter(returned))
            r = client.post(f"/v1/offers/{returned[accepted]}/accept", {"visitor_id": accepted, "session_id": "s"})
            assert r.status_code == 503 and r.json()["error"] == "log_unavailable", r.text

            filler.unlink()  # space returns
            for visitor in refused:  # nothing had changed for them: a first offer now, not "offer_pending"
                r = client.observe(visitor)
                assert r.status_code == 200 and r.json()["action"] == "offer", r.text
                returned[visitor] = r.json()["offer_id"]
            r = client.post(f"/v1/offers/{returned[accepted]}/accept", {"visitor_id": accepted, "session_id": "s"})
            assert r.status_code == 200, r.text
            assert client.http.get("/healthz").status_code == 200
            for j in range(300):
                returned[f"c{j}"] = client.observe(f"c{j}").json()["offer_id"]
            assert client.slowest < 1.0, f"a request took {client.slowest:.2f} s"
            server.proc.send_signal(signal.SIGKILL)  # whatever the journal held after the episode is recovered
            server.proc.wait(10)
        finally:
            server.stop()
        SQLiteDecisionLog(log_path).close()
        decisions, outcomes = logged(log_path)
    offers = [d[3] for d in decisions if d[2] == "offer"]
    assert sorted(offers) == sorted(returned.values())  # each returned offer exactly once, and nothing else
    assert len(decisions) == len(returned)
    assert outcomes == [(returned[accepted], "accepted")]


def test_a_read_only_log_directory_is_one_line_at_start_up(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        done = subprocess.run([sys.executable, "-m", "pcrules", "serve", "--rules", str(rules),
                               "--log", str(ro / "d.sqlite"), "--port", str(free_port())],
                              env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "OperationalError" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    assert str(ro / "d.sqlite") in line and "read-only file system" in line, line


# ----------------------------------------------------------------------------- journal frames

def decision_row(i: int) -> tuple:
    return (1000.0 + i, f"v{i}", "s", "Home", 1.0, "none", "no_rule", None, None, None, None, 0, None, None,
            None, "r", "x", 0.0)


def orphan_journal(log_path: Path, rows: list[tuple], tail: bytes = b"") -> Path:
    """A journal as a killed writer leaves it: framed records, unlocked, in the log's pending folder."""
    directory = log_path.with_name(log_path.name + ".pending")
    journal = Journal(directory)
    for row in rows:
        journal.append((DECISION, row))
    journal.close(remove=False)
    if tail:
        with open(journal.path, "ab") as f:
            f.write(tail)
    return journal.path


def frames(rows: list[tuple]) -> list[tuple[int, int]]:
    """(offset, length) of each record's frame in a journal of `rows`."""
    spans, at = [], 0
    for row in rows:
        size = len(frame((DECISION, row)))
        spans.append((at, size))
        at += size
    return spans


def test_a_short_write_is_cut_back_so_later_records_are_not_lost(tmp_path):
    # The file-size limit makes write(2) stop part-way, as a full disk does; SIGXFSZ ignored so it returns.
    child = r"""
import resource, signal, sys
from pathlib import Path
from pcrules.log_journal import Journal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
j = Journal(Path(sys.argv[1]))
j.can_reserve = False
resource.setrlimit(resource.RLIMIT_FSIZE, (300, resource.RLIM_INFINITY))
written = failed = 0
for i in range(20):
    try:
        j.append((0, ("x" * 40, i)))
        written += 1
    except OSError as exc:
        failed += 1
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
for i in range(20, 25):
    j.append((0, ("x" * 40, i)))
    written += 1
print(written, failed, j.path)
"""
    done = subprocess.run([sys.executable, "-c", child, str(tmp_path / "j")], env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=60)
    written, failed, path = done.stdout.split()
    assert int(failed) > 0, done.stdout
    found = scan(Path(path).read_bytes(), accept=lambda r: True)
    assert found.clean, found.damaged  # the partial frame was cut off: nothing torn between good records
    assert len(found.records) == int(written) and found.records[-1] == (0, ("x" * 40, 24))


def test_a_corrupt_record_in_the_middle_is_skipped_and_the_rest_recovered_and_quarantined(tmp_path, caplog):
    log_path = tmp_path / "log.sqlite"
    rows = [decision_row(i) for i in range(2000)]
    path = orphan_journal(log_path, rows)
    data = bytearray(path.read_bytes())
    at, size = frames(rows)[1000]
    data[at + size // 2:at + size // 2 + 4] = b"\xff\xfe\xfd\xfc"  # four bytes changed in the middle
    path.write_bytes(bytes(data))
    with caplog.at_level("ERROR"):
        log = SQLiteDecisionLog(log_path)
    log.close()
    decisions, _ = logged(log_path)
    assert len(decisions) == 1999 and ("v1000", "s", "none", None) not in decisions
    assert log.recovered == 1999
    (aside,) = log.quarantined
    assert aside.read_bytes() == bytes(data) and not path.exists()  # moved aside whole, never deleted
    assert "kept 1999 record(s)" in caplog.text and "skipped" in caplog.text and str(aside) in caplog.text
    assert log.health().quarantined == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=10**9), st.integers(min_value=1, max_value=255)),
                min_size=0, max_size=6))
def test_bytes_corrupted_anywhere_lose_only_the_records_they_touch(tmp_path_factory, damage):
    log_path = tmp_path_factory.mktemp("corrupt") / "log.sqlite"
    rows = [decision_row(i) for i in range(300)]
    path = orphan_journal(log_path, rows)
    original = path.read_bytes()
    data = bytearray(original)
    for offset, xor in damage:
        data[offset % len(data)] ^= xor
    touched = {k for k in range(len(data)) if data[k] != original[k]}
    path.write_bytes(bytes(data))
    log = SQLiteDecisionLog(log_path)
    log.close()
    decisions, _ = logged(log_path)
    kept = {d[0] for d in decisions}
    untouched = {f"v{i}" for i, (at, size) in enumerate(frames(rows)) if not touched & set(range(at, at + size))}
    assert untouched <= kept                        # every record no damage touched is recovered
    assert len(decisions) == len(kept)              # exactly once
    assert kept <= {f"v{i}" for i in range(300)}    # and nothing that was not written
    if touched:
        assert [p.name for p in log.quarantined] == [path.name] and not path.exists()
    else:
        assert not log.quarantined and not path.exists()


RECOVER_CHILD = r"""
import sys
from pcrules import SQLiteDecisionLog
print("ready", flush=True)
SQLiteDecisionLog(sys.argv[1]).close()
print("done", flush=True)
"""


def test_sigkill_during_recovery_of_a_damaged_journal_repeats_and_loses_nothing(tmp_path):
    log_path = tmp_path / "log.sqlite"
    rows = [decision_row(i) for i in range(200_000)]
    path = orphan_journal(log_path, rows, tail=b"\xa7PJ2\x40\x00")  # and a torn tail
    data = bytearray(path.read_bytes())
    spans = frames(rows)
    hit = sorted(random.Random(7).sample(range(len(rows)), 5))
    for k in hit:
        at, size = spans[k]
        data[at + 9] ^= 0x55
    path.write_bytes(bytes(data))
    rng = random.Random(11)
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", RECOVER_CHILD, str(log_path)], stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": ROOT}, text=True)
        assert proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(30)
        if proc.returncode == 0:
            break
    log = SQLiteDecisionLog(log_path)
    log.close()
    decisions, _ = logged(log_path)
    expected = {f"v{i}" for i in range(len(rows))} - {f"v{k}" for k in hit}
    assert sorted(d[0] for d in decisions) == sorted(expected)  # each good record once, the 5 damaged ones not
    quarantine = log_path.with_name(log_path.name + ".quarantine")
    assert [p.name for p in quarantine.iterdir()] == [path.name]
    assert kills >= 1


def test_an_old_format_journal_is_still_recovered(tmp_path):
    import marshal
    import struct
    import zlib

    log_path = tmp_path / "log.sqlite"
    directory = log_path.with_name(log_path.name + ".pending")
    directory.mkdir()
    with open(directory / f"1-abc{SUFFIX}", "wb") as f:
        for i in range(5):
            payload = marshal.dumps((DECISION, decision_row(i)))
            f.write(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
    log = SQLiteDecisionLog(log_path)
    log.close()
    assert log.recovered == 5 and not log.quarantined


def test_scan_resynchronises_on_the_magic_and_counts_what_it_skipped():
    good = [frame((GOAL, (1.0, "v", "s", "g", None, 0.0))), frame((OUTCOME, tuple(range(11))))]
    data = good[0] + b"garbage" + MAGIC + b"\x05\x00" + good[1]
    found = scan(data)
    assert [r[0] for r in found.records] == [GOAL, OUTCOME]
    assert found.skipped_bytes == len(b"garbage") + len(MAGIC) + 2 and len(found.damaged) == 1


# ----------------------------------------------------------------------------- the log in the runtime

def test_a_log_that_cannot_reserve_space_refuses_before_anything_changes(tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        log = SQLiteDecisionLog(disk / "d.sqlite")
        rt = pcrules.Runtime(RULES, log=log)
        first = rt.observe({"visitor_id": "v1", "session_id": "s", "page": "Bill Payment", "seconds_on_page": 5})
        filler = fill(disk)
        refused = 0
        for i in range(20_000):
            try:
                rt.observe({"visitor_id": f"w{i}", "session_id": "s", "page": "Bill Payment", "seconds_on_page": 5})
            except LogUnavailable as exc:
                refused += 1
                assert "No space left on device" in str(exc) and str(disk) in str(exc)
                assert rt.store.session(f"w{i}", "s") is None  # nothing changed
                break
        assert refused == 1
        assert not log.health().ok and "No space" in log.health().problem
        with pytest.raises(LogUnavailable):
            rt.accept(first.offer_id)
        assert rt.store.offer(first.offer_id).status == "offered"
        with pytest.raises(LogUnavailable):
            rt.record_goal("v1", "s", "bill_paid")
        filler.unlink()
        assert log.health().ok
        rt.accept(first.offer_id)
        rt.close()


def test_the_demo_refuses_to_replace_a_log_a_running_process_has_open(tmp_path):
    path = tmp_path / "d.sqlite"
    live = SQLiteDecisionLog(path)
    try:
        with pytest.raises(LogUnavailable, match="open in 1 running process"):
            with fresh_log(path):
                pass
        done = subprocess.run([sys.executable, "-m", "pcrules", "demo", "--no-model", "--log", str(path)],
                              env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr and "open in 1 running" in done.stderr
    finally:
        live.close()
    assert path.exists()


@pytest.mark.parametrize("events, message", [
    ("missing.csv.gz", "no such events file"),
    ("bad.csv", "missing column(s)"),
    ("events.parquet", None),
])
def test_the_demo_checks_its_events_before_touching_the_log(tmp_path, events, message):
    log_path = tmp_path / "d.sqlite"
    SQLiteDecisionLog(log_path).close()
    before = log_path.read_bytes()
    (tmp_path / "bad.csv").write_text("ts,visitor_id\n1,v\n")
    if events.endswith(".parquet"):
        import pandas as pd

        from pcrules.sample import COLUMNS, SAMPLE_PATH
        pd.read_csv(SAMPLE_PATH).head(500)[list(COLUMNS)].to_parquet(tmp_path / events)
    done = subprocess.run([sys.executable, "-m", "pcrules", "demo", "--no-model", "--events", str(tmp_path / events),
                           "--log", str(log_path)], env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=120)
    assert "Traceback" not in done.stderr
    if message is None:
        assert done.returncode == 0, done.stderr
        assert len(logged(log_path)[0]) == 500
    else:
        assert done.returncode == 1 and message in done.stderr and str(tmp_path / events) in done.stderr
        assert log_path.read_bytes() == before  # untouched
