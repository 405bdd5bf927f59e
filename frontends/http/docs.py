"""``/api/v1/openapi.json`` and ``/docs``: the contract, for machines and for people.

``/docs`` is Swagger UI 5, served from the ``swagger-ui-bundle`` wheel: it
renders OpenAPI 3.1 and can call the API ("Try it out"). Everything it loads
comes from this server (no CDN), so it works offline, and the page carries
no inline script or style, so it runs under a Content-Security-Policy that
allows scripts from this origin only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import falcon
import falcon.routing
import orjson
import swagger_ui_bundle  # type: ignore[import-untyped]

from userplane.frontends.http.auth import PUBLIC
from userplane.frontends.http.openapi import document

#: Swagger UI's files, as the wheel ships them (``vendor/swagger-ui-5.31.0``).
SWAGGER_UI = Path(str(swagger_ui_bundle.swagger_ui_path))

#: Where they are served. The directory's name carries Swagger UI's version, so a
#: URL always names the same bytes and browsers may cache them for a year.
ASSETS = f"/docs/assets/{SWAGGER_UI.name}"

#: The files the page needs, and their source maps for a browser's developer
#: tools. Nothing else in the directory is served: its ``index.html`` and
#: ``swagger-initializer.js`` would open Swagger's demo document from the internet.
ASSET_FILES = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui.css.map",
        "swagger-ui-bundle.js",
        "swagger-ui-bundle.js.map",
    }
)

#: For ``/docs`` only: Swagger UI runs its script and our initializer (both from
#: this origin), fetches the document and "Try it out" requests from this origin,
#: and draws a few icons as ``data:`` images. Still nothing inline, no framing.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

#: A year, and no revalidation: a new Swagger UI comes with a new URL (``ASSETS``).
_IMMUTABLE = "public, max-age=31536000, immutable"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>userplane API docs</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="stylesheet" href="/static/style.css">
<script src="{assets}/swagger-ui-bundle.js" defer></script>
<script src="/static/docs.js" defer></script>
</head>
<body class="docs">
<header class="docs-intro">
<h1>userplane API docs</h1>
<p>Most operations need credentials. Click <strong>Authorize</strong>, paste an API key
(<code>up_…</code>) or a JWT from your identity provider as the bearer token, then
<strong>Try it out</strong> on any operation. The key stays in this tab only.</p>
<p>No key yet? On the server: <code>userplane keys create --name me --role admin</code>
(it is printed once).</p>
<nav aria-label="Elsewhere"><a href="/api/v1/openapi.json">OpenAPI document (JSON)</a>
<a href="/">About this instance</a></nav>
</header>
<noscript><p class="docs-noscript">This page needs JavaScript. The API is described in
<a href="/api/v1/openapi.json">/api/v1/openapi.json</a> (OpenAPI 3.1).</p></noscript>
<div id="swagger-ui"></div>
</body>
</html>
"""


class OpenApi:
    """``GET /api/v1/openapi.json``."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self._body = orjson.dumps(document() if doc is None else doc)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get


def render() -> str:
    """The ``/docs`` page: a short note on credentials, and Swagger UI below it.

    Swagger UI reads the document from ``/api/v1/openapi.json`` (``static/docs.js``),
    so the page is the same whatever plugins add to the document.
    """
    return _PAGE.format(assets=ASSETS)


class Docs:
    """``GET /docs``: the API for people, with Swagger UI."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def __init__(self) -> None:
        self._page = render().encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/html; charset=utf-8"
        # Its own policy, which SecurityHeaders leaves alone: the default forbids scripts.
        resp.set_header("Content-Security-Policy", DOCS_CSP)
        resp.data = self._page

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get


class SwaggerAssets:
    """A sink serving Swagger UI's files under ``ASSETS``, cached for a year.

    Only the names in ``ASSET_FILES`` are served, so no path reaches anything
    else. Falcon's static route does the serving (ETag, ``Last-Modified``,
    ranges, content types); it is wrapped in a sink rather than added with
    ``add_static_route`` to check the names and add ``Cache-Control``. Public,
    as ``/docs`` is (``App.add_sink`` checks ``actions``).
    """

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    #: The sink's prefix, for ``app.add_sink`` (a regular expression: the version has dots).
    prefix = re.compile(re.escape(ASSETS + "/"))

    def __init__(self, directory: Path = SWAGGER_UI) -> None:
        self._files = falcon.routing.StaticRoute(ASSETS, directory)

    def __call__(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        if req.path.removeprefix(ASSETS + "/") not in ASSET_FILES:
            raise falcon.HTTPNotFound()
        self._files(req, resp)
        resp.set_header("Cache-Control", _IMMUTABLE)
