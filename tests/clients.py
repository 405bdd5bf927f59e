"""Falcon test clients that authenticate, for tests that build their own registry."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from falcon import testing

from userplane import Registry
from userplane.frontends.http import create_app
from userplane.plugins import api_keys


def new_key(registry: Registry, role: str = "admin") -> str:
    """A fresh API key with ``role`` in ``registry``'s (migrated) storage."""
    _, key = api_keys.service(registry).create(f"tests {role}", role)
    return key


def client_for(registry: Registry, role: str = "admin", app: Any = None) -> testing.TestClient:
    """A client of ``app`` (default: a new app over ``registry``) sending a ``role`` key."""
    key = new_key(registry, role)
    return testing.TestClient(
        app if app is not None else create_app(registry),
        headers={"Authorization": f"Bearer {key}"},
    )


class ConsoleClient:
    """A browser's view of the console over Falcon's TestClient: it keeps cookies, posts forms.

    Every form post carries the CSRF token of the last page read, as a browser
    submitting that page's form would.
    """

    def __init__(self, app: Any) -> None:
        self.client = testing.TestClient(app)
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def _keep(self, result: testing.Result) -> testing.Result:
        for name, cookie in result.cookies.items():
            if cookie.value and (cookie.max_age is None or cookie.max_age > 0):
                self.cookies[name] = cookie.value
            else:
                self.cookies.pop(name, None)
        found = re.search(r'name="csrf" value="([^"]*)"', result.text or "")
        if found:
            self.csrf = found.group(1)
        return result

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    def get(self, path: str, headers: dict[str, str] | None = None) -> testing.Result:
        """GET ``path`` with the browser's cookies."""
        return self._keep(self.client.simulate_get(path, headers=self._headers(headers)))

    def post(
        self,
        path: str,
        fields: dict[str, str] | None = None,
        *,
        csrf: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> testing.Result:
        """POST a form to ``path``, with the last page's CSRF token unless ``csrf`` is given."""
        form = {"csrf": self.csrf if csrf is None else csrf, **(fields or {})}
        all_headers = self._headers(
            {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        )
        body = urllib.parse.urlencode(form)
        return self._keep(self.client.simulate_post(path, body=body, headers=all_headers))

    def sign_in(self, credential: str) -> testing.Result:
        """Sign in with ``credential`` (an API key or a token); the answer to the form post."""
        self.get("/admin/sign-in")
        return self.post("/admin/sign-in", {"credential": credential})


def console_for(registry: Registry, role: str = "admin", app: Any = None) -> ConsoleClient:
    """A console browser signed in with a new ``role`` key."""
    browser = ConsoleClient(app if app is not None else create_app(registry))
    signed_in = browser.sign_in(new_key(registry, role))
    assert signed_in.status_code == 303, signed_in.text
    # Where signing in leads, as a browser follows it: its forms carry the session's token.
    browser.get(signed_in.headers["Location"])
    return browser
