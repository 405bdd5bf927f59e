"""The console for keyboard and screen-reader users, and on a 390 px phone.

On every console page the skip link to ``#main`` comes first, there is one
``<h1>``, and every input of every form has a label; on the users page the
skip link is the first thing Tab reaches. At 390 px wide no console page
scrolls sideways. Each page is photographed at both widths.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from serving import Server

from browser.browsing import PHONE, Browser, create_user, unique

pytestmark = pytest.mark.browser


def _console_pages(browser: Browser, server: Server) -> dict[str, str]:
    """Name to path: each kind of console page a signed-in admin sees.

    The contract's pages, and every other section the console's menu links to
    (plugins add their own), so those are held to the same rules.
    """
    # A long address (64 characters before the @, the most allowed) must wrap, not overflow.
    local = unique("a-rather-long-address-for-layout").ljust(64, "x")
    live = create_user(server, f"{local}@example.org", "Accessible User With A Long Name")
    gone = create_user(server, f"{unique('a11y-gone')}@example.org", "Deleted User")
    deleted = server.request("DELETE", f"/api/v1/users/{gone['id']}")
    assert deleted.status == 204, deleted.body
    pages = {
        "users": "/admin/users",
        "user": f"/admin/users/{live['id']}",
        "deleted-user": f"/admin/users/{gone['id']}",
        "new-user": "/admin/users/new",
        "keys": "/admin/keys",
    }
    browser.open("/admin/users")
    for link in browser.find_all('nav[aria-label="Console"] a[href^="/admin/"]'):
        path = urlsplit(link.get_attribute("href") or "").path
        if path not in pages.values():
            pages[path.removeprefix("/admin/").replace("/", "-")] = path
    return pages


def test_the_skip_link_is_the_first_thing_tab_reaches_on_the_users_page(
    browser: Browser, server: Server
) -> None:
    browser.sign_in(server.key)
    browser.wait_for("form#user-search")

    ActionChains(browser.driver).send_keys(Keys.TAB).perform()

    focused = browser.active()
    assert "skip-link" in (focused.get_attribute("class") or "").split(), focused.get_attribute(
        "outerHTML"
    )
    assert (focused.get_attribute("href") or "").endswith("#main")
    assert focused.is_displayed(), "a focused skip link must be visible"
    browser.shot("skip-link-focused")
    ActionChains(browser.driver).send_keys(Keys.ENTER).perform()
    browser.wait(lambda d: d.current_url.endswith("#main"), "the skip link went nowhere")


def _page_problems(browser: Browser) -> list[str]:
    found = [f"unlabelled: {html}" for html in browser.unlabelled_inputs()]
    headings = len(browser.find_all("h1"))
    if headings != 1:
        found.append(f"{headings} h1 elements")
    if not browser.has('a.skip-link[href="#main"]'):
        found.append("no a.skip-link to #main")
    if browser.find("html").get_attribute("lang") != "en":
        found.append('no <html lang="en">')
    forms = browser.find_all("form")
    if not forms:
        found.append("no form at all")
    found += [
        f"form {form.get_attribute('id') or form.get_attribute('action')} has no csrf field"
        for form in forms
        if (form.get_attribute("method") or "get").lower() == "post"
        and not browser.find_all("input[name=csrf]", form)
    ]
    return found


def test_every_console_page_has_a_skip_link_a_heading_and_labelled_inputs(
    browser: Browser, server: Server
) -> None:
    problems: dict[str, list[str]] = {}
    browser.open("/admin/sign-in")
    browser.wait_for("main#main")
    if found := _page_problems(browser):
        problems["sign-in"] = found
    browser.sign_in(server.key)

    for name, path in _console_pages(browser, server).items():
        browser.open(path)
        browser.wait_for("main#main")
        if found := _page_problems(browser):
            problems[name] = found
        browser.shot(name)

    assert not problems, problems


def test_no_console_page_scrolls_sideways_at_390_px(browser: Browser, server: Server) -> None:
    browser.resize(PHONE)
    browser.open("/admin/sign-in")
    browser.wait_for("form#sign-in")
    overflow = {}
    width = browser.horizontal_overflow()
    if width[0] > width[1]:
        overflow["sign-in"] = width
    browser.shot("390-sign-in")
    browser.sign_in(server.key)

    for name, path in _console_pages(browser, server).items():
        browser.open(path)
        browser.wait_for("main#main")
        scroll, inner = browser.horizontal_overflow()
        if scroll > inner:
            overflow[name] = (scroll, inner)
        browser.shot(f"390-{name}")
    browser.open("/admin/keys")
    browser.fill("form#key-form input[name=name]", unique("phone key"))
    browser.submit("form#key-form")
    browser.wait_for("#new-key-secret")
    scroll, inner = browser.horizontal_overflow()
    if scroll > inner:
        overflow["key-created"] = (scroll, inner)
    browser.shot("390-key-created")

    assert not overflow, f"(scrollWidth, innerWidth) wider than the screen: {overflow}"
