"""The console's middleware: sessions in, CSRF checked, errors out as pages.

Installed before the app's own authentication (``userplane_http_middleware``),
and active only under ``/admin``. For each console request it

- opens the session named by the cookie and hands its credential to the
  app's ``Authenticate`` (``req.context.authorization``), so the request is
  authenticated, rate limited and authorized exactly as that bearer's API
  call would be, by the action its route declares;
- reads a posted form and refuses it (403) unless it carries this session's
  form token and the browser did not mark it cross-site;
- turns the problem documents of errors into pages: a 401 sends the browser
  to sign in, anything else is shown as a page with the same status.
"""

from __future__ import annotations

import hmac
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

import falcon
import falcon.routing
import orjson

from userplane.plugin import Forbidden, InvalidInput
from userplane.plugins.console.sessions import MAX_CREDENTIAL, form_token, new_secret
from userplane.plugins.console.site import (
    FLASH_COOKIE,
    FORM_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    Console,
    clear_cookie,
    set_cookie,
)

if TYPE_CHECKING:
    from userplane.plugins.console.sessions import Sessions

#: The console's pages run only our own script and styles, and post only to themselves.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_log = logging.getLogger("userplane.console")
_FORM_TYPE = "application/x-www-form-urlencoded"
#: What ``Sec-Fetch-Site`` may say of a form post: from a console page, or typed by hand.
_SAME_ORIGIN = frozenset({"same-origin", "none"})
#: The methods that change nothing, which need no form token.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The most fields one of the console's forms has, with room to spare.
_MAX_FIELDS = 64


def in_console(path: str) -> bool:
    """Whether ``path`` is one of the console's."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def _cookie(req: falcon.Request, name: str) -> str | None:
    values = req.get_cookie_values(name)
    return values[-1] if values else None


def parse_form(req: falcon.Request) -> dict[str, str]:
    """A posted form's fields, the last value of each; ``InvalidInput`` for one we cannot read.

    Strict as the API is with JSON: text that is not UTF-8, raw or
    percent-encoded, is refused rather than stored with replacement characters.
    """
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if req.content_length and media_type != _FORM_TYPE:
        raise falcon.HTTPUnsupportedMediaType(
            title="Unsupported media type", description="console forms are sent as HTML forms"
        )
    body = req.bounded_stream.read() if req.content_length else b""
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise InvalidInput.for_field("form", "is not UTF-8 text") from None
    except ValueError:
        raise InvalidInput.for_field("form", f"has more than {_MAX_FIELDS} fields") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if "\x00" in value:
            raise InvalidInput.for_field(name, "must not contain a NUL character")
        if len(value) > MAX_CREDENTIAL:
            raise InvalidInput.for_field(name, f"must be at most {MAX_CREDENTIAL} characters")
        form[name] = value
    return form


class ConsoleGate:
    """Falcon middleware for everything under ``/admin`` (see the module's docstring)."""

    def __init__(self, sessions: Sessions, console: Console | None = None) -> None:
        self.sessions = sessions
        #: Set when the console is mounted (``userplane_http_routes`` runs after this is made).
        self.console = console

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        if not in_console(req.path) or isinstance(resource, falcon.routing.StaticRoute):
            return
        token = _cookie(req, SESSION_COOKIE)
        credential = None
        if token is not None:
            credential = self.sessions.credential(token)
            if credential is None:
                req.context.stale_session = True  # the browser forgets it (process_response)
        if token is not None and credential is not None:
            req.context.console_session = token
            req.context.authorization = f"Bearer {credential}"
            secret = token
        else:
            secret = _cookie(req, FORM_COOKIE) or ""
            if not secret:
                secret = new_secret()
                req.context.new_form_cookie = secret
        req.context.form_token = form_token(secret)
        flash = _cookie(req, FLASH_COOKIE)
        if flash is not None:
            req.context.flash = urllib.parse.unquote(flash)[:300]
        if req.method not in _SAFE_METHODS:
            # Every method that may change something, not only the forms' POST: a
            # plugin's page answering PUT or DELETE is guarded the same way.
            self._check_form(req)

    def _check_form(self, req: falcon.Request) -> None:
        fetch_site = req.get_header("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site.lower() not in _SAME_ORIGIN:
            raise Forbidden("this form was posted from another site")
        form = parse_form(req)
        given = form.pop("csrf", "")
        if req.context.get("new_form_cookie") or not hmac.compare_digest(
            given.encode(), req.context.form_token.encode()
        ):
            raise Forbidden(
                "this form has expired or did not come from this console: "
                "reload the page and submit it again"
            )
        req.context.form = form

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        if not in_console(req.path):
            return
        # Set after the app's own headers (this runs after SecurityHeaders): the
        # console's pages need their script and their forms.
        resp.set_header("Content-Security-Policy", CSP)
        resp.set_header("Cache-Control", "no-store")  # pages of personal data
        new_form = req.context.get("new_form_cookie")
        if new_form:
            set_cookie(req, resp, FORM_COOKIE, new_form, 12 * 3600)
        if req.context.get("flash") is not None and not resp.context.get("flash_set"):
            clear_cookie(resp, FLASH_COOKIE)
        if req.context.get("stale_session") and not resp.context.get("session_set"):
            clear_cookie(resp, SESSION_COOKIE)
        # The app's SecurityHeaders ran before an error page was drawn here.
        resp.set_header("X-Frame-Options", "DENY")
        if resp.content_type == "application/problem+json" and isinstance(resp.data, bytes):
            try:
                self._error_page(req, resp)
            except Exception:
                # The problem document stays the answer: an error page that cannot be
                # drawn must not turn a 404 into a 500.
                _log.exception("the console could not draw an error page")

    def _error_page(self, req: falcon.Request, resp: falcon.Response) -> None:
        problem = orjson.loads(resp.data or b"{}")
        status = int(problem.get("status") or resp.status_code)
        if status == 401 and self.console is not None:
            # The session is gone (signed out elsewhere, the key revoked, the token
            # expired): forget it, and ask to sign in again, then come back here.
            token = req.context.get("console_session")
            if token is not None:
                self.sessions.end(token)
                clear_cookie(resp, SESSION_COOKIE)
            target = f"{PREFIX}/sign-in"
            if req.method in ("GET", "HEAD") and req.path != target:
                target += "?" + urllib.parse.urlencode({"next": req.relative_uri})
            resp.data = b""
            resp.content_type = "text/plain"
            resp.status = falcon.HTTP_303
            resp.set_header("Location", target)
            resp.delete_header("WWW-Authenticate")
            return
        if self.console is None:
            return
        errors = problem.get("errors")
        self.console.render(
            req,
            resp,
            "error.html",
            status=status,
            title=problem.get("title") or "Error",
            detail=problem.get("detail") or "",
            errors=errors if isinstance(errors, list) else [],
            request_id=problem.get("request_id") or "",
        )
