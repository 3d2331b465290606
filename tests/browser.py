"""Debian's chromium for the browser tests, through Playwright: never a downloaded browser, never skipped.

Without chromium a test fails with a message saying how to get it (.ci/run installs it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CHROMIUM = os.environ.get("PCRULES_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A launched chromium (a Playwright Browser), closed afterwards."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"chromium is needed for the browser tests and was not found at {CHROMIUM}: "
                    f"apt-get install -y chromium (.ci/run does), or set PCRULES_CHROMIUM; never `playwright install`",
                    pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"the browser tests need the Python package playwright ({exc}); never `playwright install`",
                    pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def demo_server(directory: Path, rules: dict, operator_token: str) -> Iterator[Any]:
    """`pcrules serve --demo` with `rules`, on a free port; afterwards its output holds no traceback, no token."""
    from pcrules.server._procs import ServeProcess

    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    out = directory / "serve.out"
    with ServeProcess(["--demo", "--rules", str(path)], log_file=out, operator_token=operator_token) as srv:
        yield srv
    text = out.read_text()
    assert "Traceback" not in text and operator_token not in text


class Watch:
    """What a page did that it should not: dialogs (alert/confirm), page errors, console errors."""

    def __init__(self, page):
        self.dialogs, self.errors, self.observes = [], [], []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("request", lambda r: r.url.endswith("/v1/observe") and self.observes.append(r.post_data_json))


def state(page) -> dict:
    return page.evaluate("JSON.parse(JSON.stringify(window.pcrules.state))")
