"""Browser tests: Playwright's sync API driving Debian's chromium against pytest-django's
live_server. A missing /usr/bin/chromium fails them, so CI proves they ran; set BROWSER_TESTS=0
to skip them on a machine that cannot install it.

Fixtures: browser (one chromium for all of tests/browser), page (1280x900) and phone_page
(390x844, touch), server_url (the live server's URL; static files served), screenshot.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download does not work here. Without the background-networking
# flags chromium's own connections to Google services are refused on the closed network.
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
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
TIMEOUT_MS = 10_000  # fail a missing element in seconds, not Playwright's default 30


@pytest.fixture(scope="package")
def browser() -> Iterator:
    """Launched once for tests/browser (and its subfolders) and closed after them. Package scope
    (not session): Playwright's sync API marks its event loop running on the main thread while
    it is open, which would break the ORM and async_to_sync in tests run after these."""
    if os.environ.get("BROWSER_TESTS") == "0":
        pytest.skip("browser tests disabled by BROWSER_TESTS=0")
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, "
            "or `make install` as root), or set BROWSER_TESTS=0 to skip the browser tests",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    # The tests call the ORM from this thread, synchronously; only the loop mark is in the way.
    with pytest.MonkeyPatch.context() as mp, sync_playwright() as playwright:
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        # launch() gives each browser a fresh temporary user-data dir and removes it after.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _new_page(browser, request, **context_options) -> Iterator:
    # The tests' own probes (wait_for_function with a string, add_script_tag) are inline
    # script the Content-Security-Policy refuses: bypassed here. test_csp.py checks the
    # pages under the policy, with bypass_csp=False.
    context_options.setdefault("bypass_csp", True)
    context = browser.new_context(**context_options)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        save_screenshot(page, f"{request.node.name}-failed")
    context.close()


@pytest.fixture
def page(browser, request) -> Iterator:
    """A desktop page (1280x900) in a new context, closed after the test; screenshot on failure."""
    yield from _new_page(browser, request, viewport={"width": 1280, "height": 900})


@pytest.fixture
def phone_page(browser, request) -> Iterator:
    """An iPhone-sized page: 390x844, is_mobile, has_touch."""
    yield from _new_page(
        browser,
        request,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )


@pytest.fixture
def server_url(live_server, transactional_db) -> str:
    """The live server's base URL, without a trailing slash. pytest-django's live_server serves
    /static/ through StaticFilesHandler (app static folders, no collectstatic). It runs in another
    thread, so it only sees committed rows: this requests transactional_db, as
    `@pytest.mark.django_db(transaction=True)` does."""
    return live_server.url


def save_screenshot(page, name: str) -> Path:
    """Save a full-page PNG as tests/artifacts/<name>.png (git-ignored) and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def screenshot() -> Callable[..., Path]:
    """screenshot(page, name) -> tests/artifacts/<name>.png"""
    return save_screenshot


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)  # read by the page fixtures' teardown
    return report
