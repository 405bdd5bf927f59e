"""Signing in and out of the console."""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any, ClassVar

import falcon

from userplane.frontends.http import PUBLIC
from userplane.plugin import WRITE, Unauthenticated
from userplane.plugins.console.site import PREFIX, SESSION_COOKIE, Console, clear_cookie, set_cookie

if TYPE_CHECKING:
    from userplane.plugins.console.sessions import Sessions

#: Where a signed-in browser starts.
HOME = f"{PREFIX}/users"


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console page, never another site or another path.

    Only a plain path under ``/admin/`` (an optional query) is kept: no scheme or
    host, no ``.`` or ``..`` segment (spelt out or percent-encoded), no
    backslash, blank or control character, which a browser or a header could
    read otherwise.
    """
    if not value or len(value) > 2048:
        return HOME
    if not all(0x21 <= ord(c) < 0x7F for c in value) or "\\" in value:
        return HOME
    parts = urllib.parse.urlsplit(value)
    path = urllib.parse.unquote(parts.path)
    segments = path.split("/")
    if (
        parts.scheme
        or parts.netloc
        or parts.fragment
        or not path.startswith(PREFIX + "/")
        or "//" in path
        or any(segment in (".", "..") for segment in segments)
        or not all(0x21 <= ord(c) < 0x7F for c in path)
        or path.startswith(f"{PREFIX}/sign-")
    ):
        return HOME
    return value


def bearer_value(text: str) -> str:
    """The credential someone pasted, without surrounding blanks or a ``Bearer`` word."""
    value = text.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value


class Root:
    """``/admin``: to the users, or to sign in first."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def __init__(self, console: Console) -> None:
        self._console = console

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        signed_in = req.context.get("console_session") or not self._console.registry.auth.enabled
        resp.status = falcon.HTTP_303
        resp.set_header("Location", HOME if signed_in else f"{PREFIX}/sign-in")


class SignIn:
    """``/admin/sign-in``: trade an API key or a token for a session."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC, "POST": PUBLIC}

    def __init__(self, console: Console, sessions: Sessions) -> None:
        self._console = console
        self._sessions = sessions

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        following = safe_next(req.get_param("next"))
        if req.context.get("console_session") or not self._console.registry.auth.enabled:
            resp.status = falcon.HTTP_303
            resp.set_header("Location", following)
            return
        self._console.render(req, resp, "sign_in.html", next=following, error=None)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = self._console.form(req)
        following = safe_next(form.get("next"))
        credential = bearer_value(form.get("credential", ""))
        if not credential:
            self._console.render(
                req,
                resp,
                "sign_in.html",
                status=422,
                next=following,
                error="Paste an API key (up_…) or a bearer token.",
            )
            return
        # Authenticated as the API would: the same plugins, the same failure limit per address.
        req.context.authorization = f"Bearer {credential}"
        credentials = self._console.app.guard.credentials(req)
        auth = self._console.registry.auth
        try:
            principal = auth.authenticate(credentials)
        except Unauthenticated:
            self._console.render(
                req,
                resp,
                "sign_in.html",
                status=401,
                next=following,
                error="That key or token was not accepted: it may be mistyped, expired or revoked.",
            )
            return
        # A session is a write: counted against the principal's limit, as an API call.
        auth.admit(principal, WRITE, credentials.client_address)
        previous = req.context.get("console_session")
        if previous is not None:
            self._sessions.end(previous)  # one session per browser: the old one ends here
        token = self._sessions.start(credential)
        set_cookie(req, resp, SESSION_COOKIE, token, self._sessions.lifetime_s)
        resp.context.session_set = True  # not to be cleared as the stale one it replaces
        self._console.redirect(req, resp, following)


class SignOut:
    """``/admin/sign-out``: end the session, here and on every instance."""

    actions: ClassVar[dict[str, str]] = {"POST": PUBLIC}

    def __init__(self, console: Console, sessions: Sessions) -> None:
        self._console = console
        self._sessions = sessions

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        token: Any = req.context.get("console_session")
        if token is not None:
            self._sessions.end(token)
        clear_cookie(resp, SESSION_COOKIE)
        self._console.redirect(req, resp, f"{PREFIX}/sign-in", "You are signed out.")
