"""Headless Chromium for the viewer's browser tests (Debian's ``chromium`` driven by Playwright).

No browser is downloaded: Playwright drives /usr/bin/chromium (or ``WEIGHTVAULT_CHROMIUM``). If it
is missing the tests FAIL with the install line (CI installs it); they never skip silently.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("WEIGHTVAULT_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Flags for a root, network-less machine: no sandbox (root), no GPU, and no background
# connections (they are refused here and slow the start). Playwright adds a fresh profile dir.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def launched_browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the browser tests need Debian's chromium "
            "(apt-get install -y chromium) or WEIGHTVAULT_CHROMIUM=/path/to/chromium",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the python package 'playwright' is not installed (pip install playwright; no browser download needed)", pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.fspath(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def viewer_page(browser: Any, url: str, timeout_ms: int) -> Iterator[Any]:
    """A fresh page on the viewer at ``url``, its tree shown; fails the test on JavaScript errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector(".tensor-row")
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
