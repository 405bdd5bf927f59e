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
    """``/``: what this instance is, and where its API lives."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def __init__(self, registry: Registry) -> None:
        template = (Path(__file__).parent / "home.html").read_text(encoding="utf-8")
        # Rendered once: nothing on it changes while the process runs.
        self._page = template.format(
            version=html.escape(userplane.__version__),
            storage=html.escape(registry.storage.name),
            env=html.escape(registry.settings.env),
        ).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/html; charset=utf-8"
        resp.data = self._page

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get
