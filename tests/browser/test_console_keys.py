"""API keys in the console: made in a form, shown once, usable at once, revoked from the list.

The new key's secret is on the page that made it and nowhere after: a reload
of the keys page does not carry it. The key works against the API until its
row's revoke form is sent; from then on the API answers 401.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.support.ui import Select
from serving import Server

from browser.browsing import Browser, unique

pytestmark = pytest.mark.browser


def _api_status(server: Server, secret: str) -> int:
    bearer: dict[str, str | None] = {"Authorization": f"Bearer {secret}"}
    status: int = server.request("GET", "/api/v1/users/", headers=bearer).status
    return status


def test_a_key_made_in_the_console_works_until_revoked_there(
    browser: Browser, server: Server
) -> None:
    browser.sign_in(server.key, "/admin/users")
    browser.follow('nav[aria-label="Console"] a[href="/admin/keys"]')
    browser.wait_path("/admin/keys")
    browser.wait_for("form#key-form")
    browser.shot("keys")
    name = unique("console key")

    browser.fill("form#key-form input[name=name]", name)
    Select(browser.find("form#key-form select[name=role]")).select_by_value("viewer")
    browser.submit("form#key-form")

    secret = browser.wait_for("#new-key-secret").text.strip()
    assert secret.startswith("up_"), secret
    assert browser.find("#new-key-secret").tag_name == "code"
    browser.shot("secret-shown")
    copy = browser.find_all("button[data-copy=new-key-secret]")
    if copy:  # the console's script offers to copy the secret
        browser.driver.execute_cdp_cmd(
            "Browser.grantPermissions",
            {
                "origin": browser.base,
                "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
            },
        )
        copy[0].click()
        browser.wait(lambda _: copy[0].text == "Copied", "the copy button did nothing")
        pasted = browser.driver.execute_async_script(
            "navigator.clipboard.readText().then(arguments[0], (e) => arguments[0](String(e)))"
        )
        assert pasted == secret
    assert _api_status(server, secret) == 200

    browser.open("/admin/keys")
    browser.wait_for("table#keys")
    assert secret not in browser.driver.page_source
    assert not browser.has("#new-key-secret")
    rows = [r for r in browser.find_all("table#keys tr[data-key-id]") if name in r.text]
    assert len(rows) == 1, [r.text for r in browser.find_all("table#keys tr[data-key-id]")]
    key_id = rows[0].get_attribute("data-key-id")
    assert "viewer" in rows[0].text

    browser.submit(f'tr[data-key-id="{key_id}"] form.revoke-key')

    browser.open("/admin/keys")
    row = browser.wait_for(f'tr[data-key-id="{key_id}"]')
    assert not browser.has(f'tr[data-key-id="{key_id}"] form.revoke-key')
    assert secret not in browser.driver.page_source
    browser.shot("revoked")
    assert row.text
    assert _api_status(server, secret) == 401


def test_a_refused_clipboard_leaves_no_script_error(browser: Browser, server: Server) -> None:
    """Copying the secret where the browser refuses the clipboard fails quietly, not uncaught."""
    browser.sign_in(server.key)
    browser.open("/admin/keys")
    browser.fill("form#key-form input[name=name]", unique("no clipboard"))
    browser.submit("form#key-form")
    browser.wait_for("#new-key-secret")
    copy = browser.find_all("button[data-copy=new-key-secret]")
    if not copy:
        pytest.skip("the page offers no copy button")
    for permission in ("clipboard-write", "clipboard-read"):
        browser.driver.execute_cdp_cmd(
            "Browser.setPermission",
            {"origin": browser.base, "permission": {"name": permission}, "setting": "denied"},
        )

    copy[0].click()

    # A write of our own, started after the page's, settles after it: then the page's is done.
    browser.driver.execute_async_script(
        "const done = arguments[0];"
        "navigator.clipboard.writeText('x').catch(() => null).then(() => setTimeout(done, 0));"
    )
    assert copy[0].text != "Copied", "the clipboard was refused, yet the page says it copied"
