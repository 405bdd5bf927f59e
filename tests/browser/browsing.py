"""A chromium tab pointed at a live server, and the checks every browser test shares.

``Browser`` wraps one Selenium driver: it opens paths of the server, submits
forms and waits for the next page, signs in, takes screenshots into the
artefacts directory, and collects what must stay empty: Content-Security-Policy
violations (recorded by a script Chrome runs before every document, kept in
``sessionStorage`` so a navigation does not lose them) and SEVERE console
entries (a test declares the HTTP error statuses it causes on purpose).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from serving import Response, Server

#: The servers' settings: a revoked key stops working at once (the key cache is 5 s by default).
SERVER_ENV = {"USERPLANE_API_KEYS_CACHE_SECONDS": "0"}
#: Safety limit for a wait, not an expectation.
WAIT_SECONDS = 15.0
SESSION_COOKIE = "userplane_console"
#: Big enough for the pages, small enough that a 390 px phone is tested at 390 px.
DESKTOP = (1280, 900)
PHONE = (390, 844)

#: Run by Chrome before any script of every document: CSP violations, kept across navigations.
CSP_RECORDER = """
(() => {
  window.__cspViolations = window.__cspViolations || [];
  document.addEventListener('securitypolicyviolation', (e) => {
    const entry = e.violatedDirective + ' ' + e.blockedURI + ' (' + e.documentURI + ')';
    window.__cspViolations.push(entry);
    try {
      const kept = JSON.parse(sessionStorage.getItem('__csp') || '[]');
      kept.push(entry);
      sessionStorage.setItem('__csp', JSON.stringify(kept));
    } catch (err) { /* opaque origins (data:, about:) have no sessionStorage */ }
  });
})();
"""

_READ_VIOLATIONS = """
let kept = [];
try { kept = JSON.parse(sessionStorage.getItem('__csp') || '[]'); } catch (err) {}
const live = window.__cspViolations || [];
return kept.concat(live.filter((v) => !kept.includes(v)));
"""

#: Every input of every form on the page without an associated <label>.
UNLABELLED_INPUTS = """
const out = [];
for (const form of document.forms) {
  for (const el of form.querySelectorAll('input, select, textarea')) {
    const type = (el.getAttribute('type') || '').toLowerCase();
    if (['hidden', 'submit', 'button', 'reset', 'image'].includes(type)) continue;
    const labelled = el.labels && Array.from(el.labels).some((l) => l.textContent.trim());
    if (!labelled) out.push((form.id || form.action) + ' ' + el.outerHTML);
  }
}
return out;
"""

_FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


class Browser:
    """One tab on ``server``, for one test."""

    def __init__(self, driver: WebDriver, server: Server, artifacts: Path, test_name: str) -> None:
        self.driver = driver
        self.server = server
        self.base = f"http://127.0.0.1:{server.port}"
        self.artifacts = artifacts
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
        #: HTTP error statuses this test causes on purpose (Chrome logs each as SEVERE).
        self.expected_statuses: set[int] = set()
        #: Every console entry of this test, read so far.
        self.logged: list[dict[str, Any]] = []
        self.shots: list[Path] = []

    # Navigation -----------------------------------------------------------------------

    def url(self, path: str) -> str:
        return path if "://" in path else self.base + path

    def open(self, path: str) -> None:
        self.driver.get(self.url(path))

    @property
    def path(self) -> str:
        return urlsplit(self.driver.current_url).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.driver.current_url).query)

    def wait(self, condition: Callable[[WebDriver], Any], message: str = "") -> Any:
        return WebDriverWait(self.driver, WAIT_SECONDS).until(condition, message)

    def wait_for(self, css: str) -> WebElement:
        """The first element matching ``css`` once it is displayed."""
        element: WebElement = self.wait(
            ec.visibility_of_element_located((By.CSS_SELECTOR, css)), f"no visible {css!r}"
        )
        return element

    def wait_path(self, path: str | re.Pattern[str]) -> None:
        def arrived(_: WebDriver) -> bool:
            if isinstance(path, str):
                return self.path == path
            return path.fullmatch(self.path) is not None

        self.wait(arrived, f"never reached {path!r} (at {self.driver.current_url})")

    def find(self, css: str, within: WebElement | None = None) -> WebElement:
        return (within or self.driver).find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str, within: WebElement | None = None) -> list[WebElement]:
        return (within or self.driver).find_elements(By.CSS_SELECTOR, css)

    def has(self, css: str) -> bool:
        return bool(self.find_all(css))

    def submit(self, form_css: str, *, accept_confirm: bool = True) -> None:
        """Click the submit button of ``form_css`` and wait for the page it leads to.

        A confirmation dialog (``confirm()`` from the console's script) is accepted.
        """
        self.follow(f"{form_css} [type=submit]", accept_confirm=accept_confirm)

    def follow(self, css: str, *, accept_confirm: bool = True) -> None:
        """Click ``css`` (a link or a button) and wait for the page it leads to.

        The current document is marked first; the next one does not carry the mark.
        """
        mark = uuid.uuid4().hex
        self.driver.execute_script("window.__browserTestPage = arguments[0]", mark)
        self.find(css).click()

        def next_page(driver: WebDriver) -> bool:
            if accept_confirm:
                with contextlib.suppress(NoAlertPresentException):
                    driver.switch_to.alert.accept()
            try:
                return bool(driver.execute_script("return window.__browserTestPage") != mark)
            except WebDriverException:  # between two documents
                return False

        self.wait(next_page, f"clicking {css} loaded no new page")

    def fill(self, css: str, value: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(value)

    def value(self, css: str) -> str:
        return self.find(css).get_attribute("value") or ""

    def text(self, css: str) -> str:
        return self.find(css).text

    def csrf(self, form_css: str = "form#sign-out") -> str:
        return self.value(f"{form_css} input[name=csrf]")

    # Sessions -------------------------------------------------------------------------

    def sign_in(self, credential: str, next_path: str = "/admin/users") -> None:
        self.open("/admin/sign-in")
        self.fill("input#credential", credential)
        self.submit("form#sign-in")
        self.wait_path(next_path)

    def session_cookie(self) -> dict[str, Any] | None:
        for cookie in self.driver.get_cookies():
            if cookie["name"] == SESSION_COOKIE:
                return cookie
        return None

    def post_as_session(
        self, path: str, fields: dict[str, str], cookie: str | None = None
    ) -> Response:
        """A form POST outside the browser, with this tab's session cookie and no API key."""
        if cookie is None:
            found = self.session_cookie()
            assert found is not None, "not signed in"
            cookie = found["value"]
        body = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in fields.items()).encode()
        return self.server.request(
            "POST",
            path,
            body,
            headers={
                "Authorization": None,
                "Cookie": f"{SESSION_COOKIE}={cookie}",
                "Origin": self.base,
                # What a browser says of a post from a console page: only the token differs.
                "Sec-Fetch-Site": "same-origin",
            },
            content_type="application/x-www-form-urlencoded",
        )

    # Layout and accessibility ---------------------------------------------------------

    def resize(self, size: tuple[int, int]) -> None:
        self.driver.set_window_size(*size)
        width = size[0]
        self.wait(
            lambda d: d.execute_script("return window.innerWidth") == width,
            f"the window never became {width} px wide",
        )

    def horizontal_overflow(self) -> tuple[int, int]:
        """``(scrollWidth, innerWidth)`` of the page."""
        sizes: list[int] = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        return sizes[0], sizes[1]

    def unlabelled_inputs(self) -> list[str]:
        found: list[str] = self.driver.execute_script(UNLABELLED_INPUTS)
        return found

    def active(self) -> WebElement:
        return self.driver.switch_to.active_element

    # Evidence -------------------------------------------------------------------------

    def shot(self, name: str) -> Path:
        """A PNG of the viewport: ``<test-name>-<name>.png`` in the artefacts directory."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{self.test_name}-{name}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot saved to {path}"
        self.shots.append(path)
        return path

    def expect_http_errors(self, *statuses: int) -> None:
        """This test loads pages answered with ``statuses`` on purpose: not console errors."""
        self.expected_statuses.update(statuses)

    def console_entries(self) -> list[dict[str, Any]]:
        """Every console entry of this test so far (chromedriver hands each out once)."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[attr-defined]
        self.logged += entries
        return self.logged

    def forget_console(self) -> None:
        """Read what the browser logged and drop it: for a test's own, expected entries."""
        self.console_entries()
        self.logged.clear()

    def statuses_loaded(self) -> list[int]:
        """The HTTP error statuses of the pages this tab loaded, as Chrome reported them.

        The icon Chrome asks for by itself is left out (the teardown check still sees it).
        """
        return [
            int(found.group(1))
            for entry in self.console_entries()
            if (found := _FAILED_LOAD.search(message := str(entry.get("message", ""))))
            and "/favicon.ico " not in message
        ]

    def csp_violations(self) -> list[str]:
        try:
            found: list[str] = self.driver.execute_script(_READ_VIOLATIONS)
        except Exception as exc:  # a page that cannot run scripts: say so, do not hide it
            return [f"(violations could not be read: {exc})"]
        return found

    def severe_console_entries(self, entries: Iterable[dict[str, Any]]) -> list[str]:
        unexpected = []
        for entry in entries:
            if entry.get("level") != "SEVERE":
                continue
            message = str(entry.get("message", ""))
            failed = _FAILED_LOAD.search(message)
            if failed and int(failed.group(1)) in self.expected_statuses:
                continue
            unexpected.append(message)
        return unexpected


def _quote(value: str) -> str:
    from urllib.parse import quote_plus

    return quote_plus(value)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_key(server: Server, role: str) -> tuple[str, str]:
    """``(key id, secret)`` of a new API key with ``role``, made through the CLI."""
    done = server.cli(
        "keys", "create", "--name", unique(f"browser {role}"), "--role", role, "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.splitlines()[0])
    return str(record["id"]), str(record["key"])


def create_user(server: Server, email: str, full_name: str | None = None) -> dict[str, Any]:
    resp = server.request("POST", "/api/v1/users/", {"email": email, "full_name": full_name})
    assert resp.status == 201, resp.body
    user: dict[str, Any] = resp.json()
    return user


def get_user(server: Server, user_id: str, include_deleted: bool = False) -> Response:
    query = "?include_deleted=true" if include_deleted else ""
    return server.request("GET", f"/api/v1/users/{user_id}{query}")


def row_ids(browser: Browser) -> list[str]:
    """The user ids in ``table#users``, in page order."""
    return [
        row.get_attribute("data-user-id") or ""
        for row in browser.find_all("table#users tr[data-user-id]")
    ]


def heading(body: bytes) -> str:
    """The text of the first ``<h1>`` of an HTML page."""
    found = re.search(rb"<h1[^>]*>(.*?)</h1>", body, re.DOTALL)
    assert found, body[:500]
    return re.sub(r"<[^>]+>|\s+", " ", found.group(1).decode()).strip()
