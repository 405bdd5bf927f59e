"""Signing in to the console, and every way a session ends.

An admin key signs in and lands on the users list with an HttpOnly,
SameSite=Strict cookie; a wrong key shows an error and sets no cookie; every
/admin page sends a visitor without a session to the sign-in page; signing
out, or revoking the key that signed in, ends the session, and the old
cookie does not work again. Also by keyboard alone: Tab reaches the
credential field and then the button, and Enter signs in.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from serving import Server

from browser.browsing import SESSION_COOKIE, Browser, create_user, new_key, unique

pytestmark = pytest.mark.browser


def test_an_admin_key_signs_in_to_the_users_list(browser: Browser, server: Server) -> None:
    browser.open("/admin")
    browser.wait_path("/admin/sign-in")
    browser.wait_for("form#sign-in")
    assert browser.find("html").get_attribute("lang") == "en"
    field = browser.find("input#credential")
    assert field.get_attribute("name") == "credential"
    assert field.get_attribute("type") == "password"
    browser.shot("sign-in")

    browser.fill("input#credential", server.key)
    browser.submit("form#sign-in")

    browser.wait_path("/admin/users")
    browser.wait_for("form#user-search")
    assert browser.has('nav[aria-label="Console"] a[href="/admin/users"]')
    assert browser.has('nav[aria-label="Console"] a[href="/admin/keys"]')
    browser.shot("users")
    browser.open("/admin")
    browser.wait_path("/admin/users")


def test_the_session_cookie_is_httponly_and_samesite_strict(
    browser: Browser, server: Server
) -> None:
    browser.sign_in(server.key)

    cookie = browser.session_cookie()

    assert cookie is not None, browser.driver.get_cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"
    assert not cookie.get("secure"), "plain HTTP: a Secure cookie would never be sent back"
    assert server.key not in cookie["value"], "the cookie carries the API key itself"
    assert browser.driver.execute_script("return document.cookie") == ""


def test_a_wrong_key_shows_an_error_and_sets_no_cookie(browser: Browser) -> None:
    browser.expect_http_errors(401)
    browser.open("/admin/sign-in")

    browser.fill("input#credential", "up_not-a-key-at-all")
    browser.submit("form#sign-in")

    error = browser.wait_for('.error[role="alert"]')
    assert error.text.strip()
    assert browser.statuses_loaded() == [401]
    assert browser.path == "/admin/sign-in"
    assert browser.has("form#sign-in input#credential")
    assert browser.session_cookie() is None
    browser.shot("wrong-key")


@pytest.mark.parametrize(
    "page", ["/admin/users", "/admin/users/new", "/admin/users/{user}", "/admin/keys"]
)
def test_a_console_page_without_a_session_goes_to_sign_in(
    browser: Browser, server: Server, page: str
) -> None:
    if "{user}" in page:
        page = page.format(user=create_user(server, f"{unique('anon')}@example.org")["id"])

    browser.open(page)

    browser.wait_path("/admin/sign-in")
    assert browser.query.get("next") == [page]
    browser.wait_for("form#sign-in")
    assert browser.session_cookie() is None


def test_signing_in_from_a_redirect_returns_to_the_page_asked_for(
    browser: Browser, server: Server
) -> None:
    browser.open("/admin/keys")
    browser.wait_path("/admin/sign-in")

    browser.fill("input#credential", server.key)
    browser.submit("form#sign-in")

    browser.wait_path("/admin/keys")
    browser.wait_for("table#keys")


def test_signing_out_ends_the_session_and_the_old_cookie_is_dead(
    browser: Browser, server: Server
) -> None:
    browser.sign_in(server.key)
    cookie = browser.session_cookie()
    assert cookie is not None

    browser.submit("form#sign-out")

    browser.wait_path("/admin/sign-in")
    assert browser.wait_for("#flash").text.strip()
    browser.shot("signed-out")
    assert browser.session_cookie() is None
    browser.open("/admin/users")
    browser.wait_path("/admin/sign-in")

    browser.driver.add_cookie(
        {"name": SESSION_COOKIE, "value": cookie["value"], "path": "/admin", "httpOnly": True}
    )
    browser.open("/admin/users")
    browser.wait_path("/admin/sign-in")
    assert browser.query.get("next") == ["/admin/users"]

    replayed = server.request(
        "GET",
        "/admin/users",
        headers={"Authorization": None, "Cookie": f"{SESSION_COOKIE}={cookie['value']}"},
    )
    assert replayed.status == 303
    assert replayed.headers["Location"].split("?")[0].endswith("/admin/sign-in")


def test_revoking_the_key_that_signed_in_ends_the_session(browser: Browser, server: Server) -> None:
    key_id, secret = new_key(server, "admin")
    browser.sign_in(secret)
    browser.wait_for("form#user-search")

    revoked = server.cli("keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr

    browser.open("/admin/users")
    browser.wait_path("/admin/sign-in")
    browser.wait_for("form#sign-in")


def test_signing_in_by_keyboard_alone(browser: Browser, server: Server) -> None:
    browser.open("/admin/sign-in")
    browser.wait_for("form#sign-in")
    credential = browser.find("input#credential")
    button = browser.find("form#sign-in button[type=submit]")
    keys = ActionChains(browser.driver)

    # From the top of the page: at most the skip link before the credential field.
    passed: list[str] = []
    while browser.active() != credential:
        assert len(passed) < 2, f"Tab went through {passed} before the credential field"
        keys.send_keys(Keys.TAB).perform()
        passed.append(browser.active().get_attribute("outerHTML") or "")
    assert all("skip-link" in html for html in passed[:-1]), passed
    keys.send_keys(Keys.TAB).perform()
    assert browser.active() == button
    keys.key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert browser.active() == credential

    keys.send_keys(server.key).send_keys(Keys.ENTER).perform()

    browser.wait_path("/admin/users")
    browser.wait_for("form#user-search")
