"""The console as plugins see it: sections, templates, panels, and how a page is answered.

One ``Console`` per app. The console plugin builds it, adds its own sections
(users, groups), then hands it to every plugin's ``userplane_console`` hook,
so the api-keys plugin adds its pages exactly as a third party would.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import falcon
import jinja2

from userplane.plugin import FieldError, Forbidden, InvalidInput, Principal, Registry

if TYPE_CHECKING:
    from userplane.plugin import User

#: Where the console lives.
PREFIX = "/admin"
#: The session cookie, and the pre-session cookie that keys the sign-in form's CSRF token.
SESSION_COOKIE = "userplane_console"
FORM_COOKIE = "userplane_console_form"
#: A message for the next page, carried across one redirect.
FLASH_COOKIE = "userplane_console_flash"
_TEMPLATES = Path(__file__).parent / "templates"
#: A version as pages write it: what ``If-Match`` takes, ASCII digits only.
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


@attrs.frozen
class Section:
    """One entry of the console's navigation."""

    path: str
    title: str
    #: The action a principal needs to see it listed (its routes check their own).
    action: str


@attrs.frozen
class UserPanel:
    """A block a plugin adds to each user's page (its audit history, say)."""

    template: str
    #: The template's context for one user, for the signed-in principal; ``None`` hides it.
    load: Callable[[User, Principal | None], Mapping[str, Any] | None]
    #: The action a principal needs to see it.
    action: str


def errors_by_field(exc: InvalidInput, names: Mapping[str, str] | None = None) -> dict[str, str]:
    """``exc``'s messages keyed by form field (``$.email`` → ``email``), first message wins."""
    out: dict[str, str] = {}
    for error in exc.errors:
        field = error.field.removeprefix("$.").split(".", 1)[0].split("[", 1)[0]
        field = (names or {}).get(field, field)
        out.setdefault(field, error.message)
    return out


class Console:
    """The web console of one app: register pages, render them, check forms and permissions."""

    def __init__(self, app: Any, registry: Registry, static: str) -> None:
        self.app = app
        self.registry = registry
        self.sections: list[Section] = []
        self.user_panels: list[UserPanel] = []
        self._loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(_TEMPLATES)]
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(self._loaders),
            # Every value is escaped unless a template says otherwise; none of ours does.
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(prefix=PREFIX, static=static)
        self.env.filters["when"] = _when

    # -- what plugins add ------------------------------------------------------------

    def add_templates(self, folder: Path | str) -> None:
        """Look for templates in ``folder`` too (after the console's own): name them uniquely."""
        self._loaders.append(jinja2.FileSystemLoader(folder))

    def add_section(self, path: str, title: str, action: str, routes: Mapping[str, Any]) -> None:
        """A navigation entry at ``path`` (under ``/admin``) and the routes that serve it.

        ``routes`` maps URI templates (each under ``/admin``) to resources;
        every resource declares its ``actions`` as any route does, and is
        checked by the same middleware as the API.
        """
        for template, resource in routes.items():
            if not template.startswith(PREFIX + "/"):
                raise ValueError(f"console routes live under {PREFIX}/: {template}")
            self.app.add_route(template, resource)
        self.sections.append(Section(path, title, action))

    def add_user_panel(
        self,
        template: str,
        load: Callable[[User, Principal | None], Mapping[str, Any] | None],
        action: str,
    ) -> None:
        """Show ``template`` on every user's page to those allowed ``action``."""
        self.user_panels.append(UserPanel(template, load, action))

    # -- answering a request ---------------------------------------------------------

    def principal(self, req: falcon.Request) -> Principal | None:
        """Who is signed in (``None`` while signed out, or with auth off)."""
        principal: Principal | None = req.context.get("principal")
        return principal

    def may(self, req: falcon.Request, action: str, resource: Any = None) -> bool:
        """Whether the signed-in principal may do ``action`` (on ``resource``)."""
        principal = self.principal(req)
        auth = self.registry.auth
        if principal is None:
            return not auth.enabled
        return auth.allows(principal, action, resource)

    def require(self, req: falcon.Request, action: str, resource: Any = None) -> None:
        """``Forbidden`` unless the signed-in principal may do ``action``."""
        if not self.may(req, action, resource):
            raise Forbidden(f"this principal may not {action}")

    @staticmethod
    def field_errors(exc: InvalidInput, names: Mapping[str, str] | None = None) -> dict[str, str]:
        """``exc``'s messages by form field (``$.email`` → ``email``; ``names`` renames some)."""
        return errors_by_field(exc, names)

    @staticmethod
    def version(form: Mapping[str, str]) -> int | None:
        """The version a form was loaded at (its hidden ``version`` field); ``None`` if absent.

        Read as the API reads ``If-Match``: anything but a version number is
        ``InvalidInput``, never a write without a check.
        """
        text = form.get("version", "")
        if not text:
            return None
        if not _VERSION.fullmatch(text):
            raise field_error("version", "must be the version the page was loaded at: reload it")
        return int(text)

    def form(self, req: falcon.Request) -> Mapping[str, str]:
        """The posted form's fields (its CSRF token already checked), last value of each."""
        form: Mapping[str, str] = req.context.get("form") or {}
        return form

    def render(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        template: str,
        status: int = 200,
        **context: Any,
    ) -> None:
        """Answer with ``template`` rendered; the layout's common context is added."""
        resp.status = status
        resp.content_type = "text/html; charset=utf-8"
        page = self.env.get_template(template).render(self.context(req), status=status, **context)
        resp.data = page.encode()

    def context(self, req: falcon.Request) -> dict[str, Any]:
        """What every page's layout needs: the principal, the navigation, the form token."""
        principal = self.principal(req)
        signed_in = principal is not None or not self.registry.auth.enabled
        return {
            "principal": principal,
            "signed_in": signed_in,
            "auth_enabled": self.registry.auth.enabled,
            "sections": [s for s in self.sections if signed_in and self.may(req, s.action)],
            "csrf": req.context.get("form_token", ""),
            "flash": req.context.get("flash"),
            "current": req.path,
        }

    def redirect(
        self, req: falcon.Request, resp: falcon.Response, location: str, flash: str | None = None
    ) -> None:
        """303 to ``location`` (a path under the console), with a message for the page there."""
        resp.status = falcon.HTTP_303
        resp.set_header("Location", location)
        resp.content_type = falcon.MEDIA_TEXT
        if flash:
            set_cookie(req, resp, FLASH_COOKIE, urllib.parse.quote(flash[:300]), 60)
            resp.context.flash_set = True


def secure(req: falcon.Request) -> bool:
    """Whether cookies for ``req`` should be ``Secure``: it came (or was forwarded) over TLS.

    A forged ``X-Forwarded-Proto`` can only make a cookie stricter, never looser.
    """
    return req.forwarded_scheme == "https" or req.scheme == "https"


def set_cookie(req: falcon.Request, resp: falcon.Response, name: str, value: str, age: int) -> None:
    """A console cookie: ``HttpOnly``, ``SameSite=Strict``, only under ``/admin``."""
    resp.set_cookie(
        name,
        value,
        max_age=age,
        path=PREFIX,
        secure=secure(req),
        http_only=True,
        same_site="Strict",
    )


def clear_cookie(resp: falcon.Response, name: str) -> None:
    """Tell the browser to forget a console cookie."""
    resp.unset_cookie(name, path=PREFIX)


def field_error(field: str, message: str) -> InvalidInput:
    """``InvalidInput`` for one form field."""
    return InvalidInput.from_errors([FieldError(field, message)])


def _when(value: Any) -> str:
    """A time as people read it in a table: to the second, in UTC."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return str(value.strftime("%Y-%m-%d %H:%M:%S UTC"))


def checkbox(form: Mapping[str, str], name: str) -> bool:
    """Whether a checkbox was ticked (browsers send nothing for one that was not)."""
    return name in form


def choice(value: str | None, allowed: Sequence[str], default: str) -> str:
    """``value`` if it is one of ``allowed``, else ``default``."""
    return value if value is not None and value in allowed else default
