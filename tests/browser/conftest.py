"""The browser tests' harness: Debian's chromium through chromedriver, against live servers.

``driver`` is one headless chromium for the whole run; ``browser`` gives each
test a fresh tab of it (no cookies, no storage, no permission granted or
denied, 1280x900) on ``server``, and checks after the test that the pages it
saw raised no Content-Security-Policy violation and logged no SEVERE console
entry (but the HTTP error statuses the test declared with
``browser.expect_http_errors``). A failing test leaves a
screenshot of where it stopped. Screenshots go to ``USERPLANE_TEST_ARTIFACTS``
(default ``build/browser`` in the repository).

Chromium and chromedriver are Debian's (``/usr/bin``), or those named by
``USERPLANE_TEST_CHROMIUM`` and ``USERPLANE_TEST_CHROMEDRIVER``; both paths
are always given, so Selenium Manager never looks for a driver online.
Without them the tests are skipped, except under CI, where they must run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from serving import Server, running_server

from browser.browsing import CSP_RECORDER, DESKTOP, SERVER_ENV, Browser

#: Debian's chromium and its chromedriver, unless the environment names others.
CHROMIUM = os.environ.get("USERPLANE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("USERPLANE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: under CI the browser tests must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def artifacts(pytestconfig: pytest.Config) -> Path:
    path = Path(os.environ.get("USERPLANE_TEST_ARTIFACTS", "build/browser"))
    if not path.is_absolute():
        path = pytestconfig.rootpath / path
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def driver() -> Iterator[webdriver.Chrome]:
    """One headless chromium for the run; both paths given, so Selenium Manager stays offline."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            _unavailable(f"{path} is missing (apt-get install {package})")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        chrome = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        _unavailable(f"chromium does not start: {exc.msg}")
        raise
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A live server on SQLite, shared by the tests that do not need their own."""
    directory = tmp_path_factory.mktemp("browser")
    with running_server(
        directory, f"sqlite:///{directory}/browser.db", "sqlite", SERVER_ENV
    ) as srv:
        yield srv


_OUTCOME = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_OUTCOME] = report
    return report


@pytest.fixture
def browser(
    driver: webdriver.Chrome, server: Server, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Browser]:
    """A fresh tab on ``server``; afterwards, no CSP violation and no unexpected console error."""
    assert server.proc.poll() is None, f"the server has stopped:\n{server.log()}"
    old = driver.window_handles
    driver.switch_to.new_window("tab")
    fresh = driver.current_window_handle
    for handle in old:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(fresh)
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Browser.resetPermissions", {})
    origin = f"http://127.0.0.1:{server.port}"
    driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"})
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_RECORDER})
    driver.set_window_size(*DESKTOP)
    tab = Browser(driver, server, artifacts, request.node.name)
    tab.forget_console()  # what earlier tests left
    yield tab
    report = request.node.stash.get(_OUTCOME, None)
    violations = tab.csp_violations()
    errors = tab.severe_console_entries(tab.console_entries())
    if report is not None and report.failed:
        # The failure says what went wrong; what the page logged goes along with it.
        with contextlib.suppress(WebDriverException):  # e.g. a dialog left open
            tab.shot("failure")
        found = "\n".join([*violations, *errors]) or "(none)"
        request.node.add_report_section("teardown", "browser", f"CSP and console:\n{found}")
        return
    assert not violations, f"Content-Security-Policy violations: {violations}"
    assert not errors, f"SEVERE console entries: {errors}"
