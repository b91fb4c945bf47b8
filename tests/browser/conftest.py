"""Browser tests: Debian's Chromium driven by Playwright for Python against a real
``checkout serve`` process on a fresh SQLite file.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``.ci/run``
installs the ``chromium`` package when it is missing). Without it these tests skip locally and
fail under ``CI=true`` (``servers.require_server``). Every test saves screenshots of the pages
it visits in ``build/screenshots/`` (``SAGAWAY_SCREENSHOT_DIR`` to change it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browserkit import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, Server

from servers import require_server


def chromium_check() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        raise FileNotFoundError(f"{CHROMIUM} (apt-get install chromium)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every browser test is slow (a server process, a browser, ~10 s each): ``-m "not slow"``
    leaves them out; ``make test`` and CI run them. Under pytest-xdist (``--dist loadgroup``)
    they all run in one worker: one Chromium and one server per module, as in a serial run."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("browser"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``checkout serve`` on a free port and a fresh demo database, for the module's tests."""
    require_server("chromium", chromium_check)
    path = tmp_path_factory.mktemp("browser") / "shop.db"
    db_url = f"sqlite:///{path}"
    env = {
        **os.environ,
        "SAGAWAY_DATABASE_URL": db_url,
        "SAGAWAY_STORE_URL": db_url,
        "SAGAWAY_DEMO": "true",
        "SAGAWAY_WORKER_ID": "browser-tests",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "checkout.cli", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        match = None
        while match is None:
            line = proc.stdout.readline()
            lines.append(line)
            assert line or proc.poll() is None, f"checkout serve exited: {''.join(lines)}"
            match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        yield Server(match.group(1), db_url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class SharedChromium:
    """One Chromium for every browser module (a launch takes seconds on a loaded machine),
    launched on first use and closed once the run leaves this directory
    (``pytest_runtest_teardown``): Playwright's sync API keeps an event loop of its own, which
    must not outlive the browser tests into the asyncio tests that follow. Each test still gets
    a context of its own (``page``): no cookie, storage or page outlives its test."""

    def __init__(self) -> None:
        self._playwright: Any = None
        self._browser: Any = None

    def get(self) -> Any:
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
        return self._browser

    def close(self) -> None:
        if self._browser is not None:
            try:
                self._browser.close()
            finally:
                self._browser = None
                self._playwright.stop()
                self._playwright = None


CHROMIUM_SHARED = SharedChromium()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Close the shared Chromium after the last browser test (this hook sees only them), once
    its fixtures (the page's context) are torn down."""
    yield
    here = Path(__file__).parent
    if nextitem is None or here not in Path(str(nextitem.path)).parents:
        CHROMIUM_SHARED.close()


@pytest.fixture(scope="module")
def browser() -> object:
    require_server("chromium", chromium_check)
    from playwright.sync_api import expect

    # An ``expect`` waits for the page to reach a state (the same budget as every action's,
    # ``page``): Playwright's 5 s default was too short for Swagger UI and ReDoc to build their
    # page from the spec on a shared, loaded machine.
    expect.set_options(timeout=20_000)
    return CHROMIUM_SHARED.get()


@pytest.fixture
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    the_page = context.new_page()
    the_page.on("dialog", lambda dialog: dialog.accept())  # the cancel button confirms
    try:
        yield the_page
    finally:
        context.close()


@pytest.fixture
def shot(page: object) -> Callable[[str], None]:
    """``shot("name")``: a full-page screenshot of the page as it is now."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)

    def take(name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    return take
