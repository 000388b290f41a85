"""A real browser for web-page tests: Playwright's sync API driving Debian's Chromium.

Playwright downloads no browser here (never run `playwright install`): it launches the
`chromium` package's binary (`.ci/run` installs it with apt when missing). Without a browser a
test skips with the reason; with CI=true it fails instead. Screenshots go to tests/artifacts/
(ignored by git).

The sync API must not run inside an asyncio loop, so browser tests are plain (sync) tests and the
application under test runs in a process of its own (`katilim run`)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")


def chromium_path() -> str | None:
    for candidate in (os.environ.get("KATILIM_TEST_CHROMIUM"), *CANDIDATES, shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_browser() -> str:
    path = chromium_path()
    if path is None:
        why = "no Chromium found (install Debian's chromium package: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires a browser: {why}")
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def browser():
    path = require_browser()
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=path, headless=True)
    except Exception:
        playwright.stop()
        raise
    yield launched
    launched.close()
    playwright.stop()


@pytest.fixture
def page(browser):
    """A page in a fresh context (its own cookies), Turkish, a laptop-size window."""
    context = browser.new_context(locale="tr-TR", viewport={"width": 1280, "height": 860})
    page = context.new_page()
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    """Save the whole page as tests/artifacts/NAME.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
