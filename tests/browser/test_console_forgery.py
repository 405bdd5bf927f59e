"""What the console refuses: forged form posts, injected script, and writes by a viewer.

A page on another origin that auto-submits a delete form at the signed-in
console deletes nobody and gets the 403 page: from the same site (the cookie
goes along) without a csrf field, with a wrong one, or even with the
session's real token, and cross-site (the cookie stays back). A post with the
session cookie but without the csrf field, or with a wrong one, is 403 and
changes nothing, while the same post with the page's own csrf goes through.
The console's Content-Security-Policy blocks an injected inline script (and
this suite's recorder notices). A viewer sees users but no write form, cannot
open the keys page, and a post to any write URL, even with their own valid
csrf, is 403.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from html import escape

import pytest
from serving import Server, free_port

from browser.browsing import Browser, create_user, get_user, heading, new_key, unique

pytestmark = pytest.mark.browser

WRITE_FORMS = ("a#new-user", "form#user-form", "form#delete-user", "form#key-form", ".revoke-key")


class Forger:
    """Serves one attacker's page at a time, from another origin than the console's."""

    def __init__(self) -> None:
        self.page = b""
        self.port = free_port()
        forger = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(forger.page)))
                self.end_headers()
                self.wfile.write(forger.page)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def auto_post(self, host: str, action: str, fields: dict[str, str]) -> str:
        """The URL (on ``host``) of a page that posts ``fields`` to ``action`` as it loads."""
        inputs = "".join(
            f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
            for k, v in fields.items()
        )
        self.page = (
            '<!doctype html><html lang="en"><head><title>You won a prize</title></head><body>'
            f'<form method="post" action="{escape(action)}">{inputs}</form>'
            "<script>document.forms[0].submit()</script></body></html>"
        ).encode()
        return f"http://{host}:{self.port}/prize"


@pytest.fixture(scope="module")
def forger() -> Iterator[Forger]:
    made = Forger()
    made.thread.start()
    try:
        yield made
    finally:
        made.httpd.shutdown()
        made.httpd.server_close()


@pytest.mark.parametrize(
    ("host", "csrf"),
    [
        ("127.0.0.1", None),  # same site, other origin: the cookie is sent, no csrf
        ("127.0.0.1", "forged"),
        ("127.0.0.1", "leaked"),  # even the session's own token, posted from elsewhere
        ("localhost", "forged"),  # cross-site: SameSite=Strict keeps the cookie back
    ],
    ids=["same-site-no-csrf", "same-site-wrong-csrf", "same-site-leaked-csrf", "cross-site"],
)
def test_a_forged_delete_from_another_origin_deletes_nobody(
    browser: Browser, server: Server, forger: Forger, host: str, csrf: str | None
) -> None:
    user = create_user(server, f"{unique('target')}@example.org", "Forgery Target")
    action = f"{browser.base}/admin/users/{user['id']}/delete"
    browser.sign_in(server.key)
    fields = {}
    if csrf == "leaked":
        browser.open(f"/admin/users/{user['id']}")
        fields = {"csrf": browser.csrf("form#delete-user"), "version": str(user["version"])}
    elif csrf is not None:
        fields = {"csrf": csrf}
    browser.expect_http_errors(403)

    browser.open(forger.auto_post(host, action, fields))

    browser.wait(lambda d: d.current_url.startswith(browser.base), "the forged form never posted")
    assert "not allowed" in browser.wait_for("h1").text.lower()
    browser.shot("refused")
    assert browser.path == f"/admin/users/{user['id']}/delete", "not the 403 page"
    assert get_user(server, user["id"]).status == 200
    browser.open(f"/admin/users/{user['id']}")
    browser.wait_for("form#delete-user")


def test_an_injected_inline_script_is_blocked_and_reported(browser: Browser) -> None:
    """The console's CSP blocks inline script, and this suite's recorder sees the block."""
    headers = browser.server.request("GET", "/admin/sign-in", headers={"Authorization": None})
    policy = {d.strip() for d in headers.headers["Content-Security-Policy"].split(";")}
    assert {
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    } <= policy, policy
    browser.open("/admin/sign-in")
    browser.wait_for("form#sign-in")

    browser.driver.execute_script(
        "const s = document.createElement('script');"
        "s.textContent = 'window.__injected = true';"
        "document.head.appendChild(s);"
    )

    browser.wait(lambda _: browser.csp_violations(), "no violation was recorded")
    assert browser.driver.execute_script("return window.__injected === undefined")
    browser.open("/admin/sign-in")  # recorded violations outlive a navigation
    browser.wait_for("form#sign-in")
    recorded = browser.csp_violations()
    assert len(recorded) == 1, recorded
    assert recorded[0].startswith("script-src"), recorded
    logged = [e["message"] for e in browser.console_entries() if e["level"] == "SEVERE"]
    assert any("Content Security Policy" in m for m in logged), logged
    browser.forget_console()
    browser.driver.execute_script("sessionStorage.removeItem('__csp')")  # expected: not a finding


@pytest.mark.parametrize("fields", [{}, {"csrf": "forged"}], ids=["no-csrf", "wrong-csrf"])
def test_a_post_with_the_cookie_but_no_valid_csrf_is_refused(
    browser: Browser, server: Server, fields: dict[str, str]
) -> None:
    user = create_user(server, f"{unique('kept')}@example.org", "Kept User")
    browser.sign_in(server.key)

    refused = browser.post_as_session(f"/admin/users/{user['id']}/delete", fields)

    assert refused.status == 403, refused.body
    assert refused.content_type.startswith("text/html")
    assert "not allowed" in heading(refused.body).lower()
    assert get_user(server, user["id"]).status == 200

    # The same post with the page's own csrf is accepted: the refusal was the csrf's.
    browser.open(f"/admin/users/{user['id']}")
    token = browser.csrf("form#delete-user")
    accepted = browser.post_as_session(f"/admin/users/{user['id']}/delete", {"csrf": token})
    assert accepted.status == 303, accepted.body
    assert get_user(server, user["id"]).status == 404


def _keys(server: Server) -> list[tuple[str, str | None]]:
    """Every API key's id and revocation time."""
    listed = server.cli("keys", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    keys = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    return sorted((key["id"], key["revoked_at"]) for key in keys)


@pytest.fixture(scope="module")
def viewer_key(server: Server) -> str:
    """The secret of a viewer's API key."""
    return new_key(server, "viewer")[1]


@pytest.fixture
def viewer(browser: Browser, viewer_key: str) -> Browser:
    """The browser, signed in with the viewer's key."""
    browser.sign_in(viewer_key)
    return browser


def test_a_viewer_sees_users_but_no_write_form(viewer: Browser, server: Server) -> None:
    user = create_user(server, f"{unique('seen')}@example.org", "Seen By Viewer")

    viewer.open("/admin/users")
    viewer.wait_for("table#users")
    viewer.shot("users")
    found = [css for css in WRITE_FORMS if viewer.has(css)]
    assert not found, f"a viewer is offered {found}"
    viewer.open(f"/admin/users/{user['id']}")
    assert user["email"] in viewer.wait_for("dl#user-details").text
    viewer.shot("user")
    found = [css for css in WRITE_FORMS if viewer.has(css)]
    assert not found, f"a viewer is offered {found}"

    viewer.expect_http_errors(403)
    viewer.open("/admin/keys")
    assert "not allowed" in viewer.wait_for("h1").text.lower()
    assert viewer.statuses_loaded() == [403]
    viewer.shot("keys-refused")
    assert not viewer.has("form#key-form")
    assert not viewer.has("table#keys")


def test_a_viewer_posting_to_write_urls_is_refused(viewer: Browser, server: Server) -> None:
    user = create_user(server, f"{unique('firm')}@example.org", "Stays Put")
    viewer.open(f"/admin/users/{user['id']}")
    viewer.wait_for("dl#user-details")
    csrf = viewer.csrf("form#sign-out")
    assert csrf
    email = f"{unique('sneaky')}@example.org"
    keys_before = _keys(server)

    attempts = {
        "/admin/users": {"email": email, "full_name": "Sneaky", "is_active": "on"},
        f"/admin/users/{user['id']}": {
            "email": email,
            "full_name": "Sneaky",
            "version": str(user["version"]),
        },
        f"/admin/users/{user['id']}/delete": {},
        f"/admin/users/{user['id']}/purge": {},
        "/admin/keys": {"name": "sneaky", "role": "admin"},
    }
    for path, fields in attempts.items():
        refused = viewer.post_as_session(path, {**fields, "csrf": csrf})
        assert refused.status == 403, (path, refused.status, refused.body)
        assert refused.content_type.startswith("text/html"), path
        assert "not allowed" in heading(refused.body).lower(), path

    stored = get_user(server, user["id"])
    assert stored.status == 200
    assert stored.json()["full_name"] == "Stays Put"
    assert server.request("GET", f"/api/v1/users/?email={email}").json()["items"] == []
    assert _keys(server) == keys_before
