"""``/docs`` in a real browser: Swagger UI renders the API and "Try it out" calls it.

The page draws its operations with no Content-Security-Policy violation and
no console error; after "Authorize" with an API key, executing
``GET /api/v1/users/`` shows a live 200. At 390 px it does not scroll
sideways. The home page links to the console and to the docs.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.remote.webelement import WebElement
from serving import Server

from browser.browsing import PHONE, Browser

pytestmark = pytest.mark.browser

LIST_USERS = "/api/v1/users/"


def _operations(browser: Browser) -> list[WebElement]:
    browser.open("/docs")
    browser.wait_for(".swagger-ui .opblock")
    return browser.find_all(".swagger-ui .opblock")


def _operation(browser: Browser, method: str, path: str) -> WebElement:
    """The operation block of ``method path``."""
    for block in browser.find_all(f".swagger-ui .opblock.opblock-{method}"):
        shown = browser.find_all(".opblock-summary-path", block)
        if shown and shown[0].get_attribute("data-path") == path:
            return block
    raise AssertionError(f"no {method.upper()} {path} among the operations")


def test_the_home_page_links_to_the_console_and_the_docs(browser: Browser) -> None:
    browser.open("/")
    browser.wait_for("h1")
    assert browser.has('a[href="/admin"]'), "no link to the console"
    assert browser.has('a[href="/docs"]'), "no link to the docs"
    browser.shot("home")

    browser.follow('a[href="/docs"]')

    browser.wait_path("/docs")
    browser.wait_for(".swagger-ui .opblock")
    browser.open("/")
    browser.follow('a[href="/admin"]')
    browser.wait_path("/admin/sign-in")


def test_swagger_ui_renders_every_operation(browser: Browser) -> None:
    blocks = _operations(browser)

    assert len(blocks) >= 5
    paths = {
        element.get_attribute("data-path")
        for element in browser.find_all(".swagger-ui .opblock-summary-path")
    }
    assert {LIST_USERS, "/api/v1/users/{user_id}"} <= paths, paths
    _operation(browser, "get", LIST_USERS)
    _operation(browser, "post", LIST_USERS)
    assert browser.find("html").get_attribute("lang")
    browser.shot("docs")


def test_try_it_out_lists_users_with_an_api_key(browser: Browser, server: Server) -> None:
    _operations(browser)

    browser.find(".swagger-ui .auth-wrapper .authorize").click()
    modal = browser.wait_for(".swagger-ui .modal-ux")
    field = next(
        element
        for element in browser.find_all(".auth-container input", modal)
        if element.is_displayed()
    )
    field.send_keys(server.key)
    browser.find(".auth-btn-wrapper button.authorize", modal).click()
    browser.wait(
        lambda _: not any(e.is_displayed() for e in browser.find_all(".auth-container input")),
        "the key was never accepted",
    )
    browser.shot("authorized")
    browser.find(".swagger-ui .modal-ux .auth-btn-wrapper .btn-done").click()
    browser.wait(lambda _: not browser.find_all(".swagger-ui .modal-ux"), "the dialog stays open")

    block = _operation(browser, "get", LIST_USERS)
    control = browser.find_all(".opblock-summary-control", block) or browser.find_all(
        ".opblock-summary", block
    )
    control[0].click()
    browser.wait(lambda _: "is-open" in (block.get_attribute("class") or ""), "it never opens")
    browser.wait_for(".swagger-ui .opblock.is-open .try-out__btn").click()
    browser.wait_for(".swagger-ui .opblock.is-open .btn.execute").click()

    status = browser.wait_for(
        ".swagger-ui .opblock.is-open .live-responses-table tbody .response-col_status"
    )
    browser.wait(lambda _: status.text.strip() != "", "no live response")
    browser.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", status)
    assert status.text.strip() == "200", status.text
    browser.shot("tried")


def test_the_docs_do_not_scroll_sideways_at_390_px(browser: Browser) -> None:
    browser.resize(PHONE)

    _operations(browser)

    browser.shot("390-docs")
    scroll, inner = browser.horizontal_overflow()
    assert scroll <= inner, f"scrollWidth {scroll} > innerWidth {inner}"
    browser.open("/")
    browser.wait_for("h1")
    browser.shot("390-home")
    scroll, inner = browser.horizontal_overflow()
    assert scroll <= inner, f"home: scrollWidth {scroll} > innerWidth {inner}"
