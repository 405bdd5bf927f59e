"""Health checks and the small HTML page about the running instance."""

from __future__ import annotations

import html
from pathlib import Path
from typing import ClassVar

import falcon

import userplane
from userplane.frontends.http.auth import PUBLIC
from userplane.registry import Registry

STATIC = Path(__file__).parent / "static"

#: The home page's example: make a key on the server, then call the API with it.
USAGE = """# on the server: a key, printed once
userplane keys create --name me --role admin

# anywhere: the key as a bearer token
curl -H "Authorization: Bearer up_…" https://<this host>/api/v1/users/"""

#: The home page's way into the console, when the console plugin serves one.
CONSOLE_LINK = '<p><a class="button" href="/admin">Sign in to the console</a></p>'


class Live:
    """``/health/live``: the process answers. Never touches a dependency."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get


class Ready:
    """``/health/ready``: storage answers too; 503 problem (via ``Unavailable``) if not."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Storage and every plugin service with a ping (svcs-style health checks).
        self._registry.ping()
        resp.media = {"status": "ok", "storage": self._registry.storage.name}

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get


class Home:
    """``/``: what this instance is, and where people go from here.

    The console, the interactive docs and the document; no link to an API
    route that needs credentials, which a browser would only show as a 401.
    """

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def __init__(self, registry: Registry) -> None:
        self._fields = {
            "version": html.escape(userplane.__version__),
            "storage": html.escape(registry.storage.name),
            "env": html.escape(registry.settings.env),
            "usage": html.escape(USAGE),
        }
        self.link_console(False)

    def link_console(self, served: bool) -> None:
        """Offer the way into the web console, when a plugin serves it at ``/admin``."""
        template = (Path(__file__).parent / "home.html").read_text(encoding="utf-8")
        console = CONSOLE_LINK if served else ""
        # Rendered here, once: nothing on it changes while the process runs.
        self._page = template.format(console=console, **self._fields).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/html; charset=utf-8"
        resp.data = self._page

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get
