"""`pcrules tuner` (issue 17): the Voila trigger tuner served like the ops dashboard (no CDN, 127.0.0.1, culling,
tracebacks hidden), on a history and a publish directory given on the command line; bad input in one line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_events.csv.gz"
EXTERNAL = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", re.I)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A publish directory: the default rules and a model trained on a small generated world."""
    from pcrules import resources
    from pcrules.analysis.world import generate
    from pcrules.bundle import publish
    from pcrules.scoring.training import train_on_offers

    out = tmp_path_factory.mktemp("tuner") / "published"
    world = generate(visitors=1500, seed=5, days=7)
    model = train_on_offers(world.offers).model.compile()
    publish(resources.default_rules(), model, out, metrics={"auc": 0.7})
    return out


@pytest.mark.notebook  # runs a Voila server (pyproject.toml markers): not in make test-quick
@pytest.mark.timeout(240)
def test_pcrules_tuner_serves_the_tuner_without_a_cdn(published: Path, tmp_path: Path) -> None:
    port = _free_port()
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "pcrules", "tuner", "--bundle", str(published),
                                    "--events", str(SAMPLE), "--port", str(port), "--cull-idle", "60"],
                                   cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"pcrules tuner exited {process.returncode}:\n{err.read_text()[-3000:]}"
            try:
                if _get(url + "voila/static/voila.js", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            assert time.monotonic() < deadline, f"no answer on {url}:\n{err.read_text()[-3000:]}"
            time.sleep(0.5)
        status, page = _get(url, timeout=120)  # starts a kernel and runs dashboards/triggers.ipynb
        assert status == 200
        assert "pcrules-ops" in page  # the safe template: Voila's lab without its Font Awesome CDN links
        assert not EXTERNAL.findall(page), EXTERNAL.findall(page)
        deadline = time.monotonic() + 30  # the banner is printed once Voila answers
        while f"trigger tuner: {url}" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"trigger tuner: {url}" in out.read_text()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # pcrules stops Voila and its kernels
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the session this test started
                process.wait(10)
    assert process.returncode == 0, err.read_text()[-3000:]
    assert "Traceback" not in out.read_text() + err.read_text()


def _run(*args: str) -> Any:
    return subprocess.run([sys.executable, "-m", "pcrules", "tuner", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _one_line_error(done: Any, *words: str, usage: bool = False) -> None:
    """Exit != 0, no traceback, one line naming the option (after argparse's usage for a malformed argument)."""
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert usage or len(lines) == 1, done.stderr
    assert all(w in lines[-1] for w in words), lines[-1]


def test_tuner_refuses_bad_input_in_one_line(published: Path, tmp_path: Path) -> None:
    _one_line_error(_run("--events", str(tmp_path / "nowhere.csv"), "--bundle", str(published)), "--events",
                    "nowhere.csv")
    _one_line_error(_run("--events", str(SAMPLE), "--bundle", str(published / "current")), "--bundle")
    _one_line_error(_run("--port", "99999"), "--port", "99999", usage=True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _one_line_error(_run("--events", str(SAMPLE), "--bundle", str(published), "--port", str(port)), str(port))


def test_make_tuner_serves_the_analyst_paths() -> None:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = text[text.index("\ntuner:"):]
    assert "-m pcrules tuner --bundle var/published --events var/world" in recipe
