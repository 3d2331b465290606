"""`pcrules tuner` (issue 17): the Voila trigger tuner served like the ops dashboard (no CDN, 127.0.0.1, culling,
tracebacks hidden), on a history and a publish directory given on the command line; bad input in one line; and a
person's path through it in Chromium (a slider, a bad capacity named as typed, Publish confirmed, the header
following), one server for the module."""

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from browser import chromium

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


@pytest.fixture(scope="module")
def server(published: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`pcrules tuner` on the sample history and `published`, one for the module's tests (each page its own kernel);
    afterwards it stops cleanly on SIGTERM and printed no traceback."""
    port = _free_port()
    folder = tmp_path_factory.mktemp("tuner-server")
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "pcrules", "tuner", "--bundle", str(published),
                                    "--events", str(SAMPLE), "--port", str(port), "--cull-idle", "60"],
                                   cwd=folder, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
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
        yield {"url": url, "stdout": out, "stderr": err}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # pcrules stops Voila and its kernels
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the session this fixture started
                process.wait(10)
    assert process.returncode == 0, err.read_text()[-3000:]
    assert "Traceback" not in out.read_text() + err.read_text()


@pytest.mark.notebook  # runs a Voila server (pyproject.toml markers): not in make test-quick
@pytest.mark.timeout(240)
def test_pcrules_tuner_serves_the_tuner_without_a_cdn(server: dict[str, Any]) -> None:
    url, out = server["url"], server["stdout"]
    status, page = _get(url, timeout=120)  # starts a kernel and runs dashboards/triggers.ipynb
    assert status == 200
    assert "pcrules-ops" in page  # the safe template: Voila's lab without its Font Awesome CDN links
    assert not EXTERNAL.findall(page), EXTERNAL.findall(page)
    deadline = time.monotonic() + 30  # the banner is printed once Voila answers
    while f"trigger tuner: {url}" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"trigger tuner: {url}" in out.read_text()


@pytest.mark.notebook
@pytest.mark.browser
@pytest.mark.timeout(300)
def test_tuner_in_a_browser_checks_as_typed_and_publishes_on_confirm(server: dict[str, Any], published: Path) -> None:
    """A person's path through `pcrules tuner`: move a slider, type a bad capacity and see it named at once (still in
    the field), correct it, Publish, read the question (the diff, the estimates, the guardrail), confirm, and see
    the header name the new bundle; no request leaves 127.0.0.1 (anything else is refused and recorded)."""
    from playwright.sync_api import expect

    from pcrules.bundle import current_version

    first = current_version(published)
    requests: list[str] = []
    outside: list[str] = []

    def local_only(route: Any) -> None:
        requests.append(route.request.url)
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1300, "height": 1600})
        context.route("**/*", local_only)
        page = context.new_page()
        page.on("websocket", lambda ws: requests.append(ws.url))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server["url"], timeout=120_000)
        header = page.locator(".pcrules-header")
        expect(header).to_contain_text(f"bundle {first}", timeout=120_000)
        offers = page.locator('[data-metric="offers"]')
        before = offers.inner_text()

        # a slider, moved with the keyboard: the figures follow
        slider = page.locator(".pcrules-rule-help-seeker-wait")
        readout = slider.locator(".widget-readout")
        wait = readout.inner_text()
        handle = slider.locator(".noUi-handle")
        handle.focus()
        for _ in range(6):
            handle.press("ArrowLeft")
        expect(readout).not_to_have_text(wait, timeout=30_000)
        expect(offers).not_to_have_text(before, timeout=30_000)

        # a bad capacity: named next to the field while the person is still typing in it; Publish off
        field = page.locator(".pcrules-capacity-billing input")
        field.fill("-5")
        problem = page.locator(".pcrules-problem-capacity-billing")
        expect(problem).to_contain_text("The capacity of queue Billing must be a positive number of chats per hour",
                                        timeout=10_000)
        expect(problem).to_contain_text("'-5'")
        assert field.evaluate("e => e === document.activeElement")  # no Enter, no leaving the field
        publish = page.locator("button.pcrules-publish")
        expect(publish).to_be_disabled()
        expect(page.locator("button.pcrules-check")).to_be_disabled()
        field.fill("75")
        expect(problem).to_have_text("", timeout=10_000)
        expect(publish).to_be_enabled()

        # Publish asks first: the diff, the estimates and the guardrail's verdict; nothing is written yet
        page.locator(".pcrules-override input[type=checkbox]").check()  # the log cannot vouch for this change
        publish.click()
        question = page.locator(".pcrules-confirmation")
        expect(question).to_be_visible(timeout=60_000)
        expect(question).to_contain_text("+    capacity_per_hour: 75")
        expect(question.locator('[data-estimate="offers"]')).to_be_visible()
        expect(question.locator(".pcrules-guardrail-table")).to_contain_text("candidate − current")
        assert current_version(published) == first
        page.locator("button.pcrules-confirm").click()
        expect(question).to_be_hidden(timeout=60_000)
        expect(page.locator(".pcrules-message")).to_contain_text("it is now current", timeout=30_000)
        new = current_version(published)
        assert new is not None and new != first
        expect(header).to_contain_text(f"bundle {new}")
        expect(header).not_to_contain_text(first)
        context.close()
    assert not outside, f"requests left 127.0.0.1: {outside[:5]}"
    assert requests and all(urlparse(u.removeprefix("blob:")).hostname == "127.0.0.1" for u in requests
                            if not u.startswith("data:"))
    assert not errors, errors[:3]


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


@pytest.mark.slow
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
