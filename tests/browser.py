"""Debian's chromium for the browser tests, through Playwright: never a downloaded browser, never skipped.

Without chromium a test fails with a message saying how to get it (.ci/run installs it).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import pytest

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
