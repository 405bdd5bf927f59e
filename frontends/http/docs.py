"""``/api/v1/openapi.json`` and ``/docs``: the contract, for machines and for people.

The docs page is rendered here from the same document, as plain HTML with the
package's own stylesheet: no script, no CDN, so it works offline and under a
strict Content-Security-Policy.
"""

from __future__ import annotations

import html
from typing import Any, ClassVar

import falcon
import orjson

from userplane.frontends.http.auth import PUBLIC
from userplane.frontends.http.openapi import document

_METHODS = ("get", "post", "put", "patch", "delete")


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


def _e(value: Any) -> str:
    return html.escape(str(value))


def _schema_name(node: dict[str, Any]) -> str:
    ref = node.get("$ref", "")
    if ref:
        return str(ref).rsplit("/", 1)[-1]
    kind = node.get("type", "")
    return " | ".join(kind) if isinstance(kind, list) else str(kind)


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    resolved: dict[str, Any] = target
    return resolved


def _operation(
    doc: dict[str, Any], path: str, method: str, op: dict[str, Any], shared: list[Any]
) -> str:
    out = [f'<section class="op"><h3><code>{method.upper()} {_e(path)}</code></h3>']
    out.append(f"<p>{_e(op.get('summary', ''))}</p>")
    if op.get("description"):
        out.append(f"<p>{_e(op['description'])}</p>")
    params = [_resolve(doc, p) for p in [*shared, *op.get("parameters", [])]]
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>meaning</th></tr>")
        for p in params:
            schema = p.get("schema", {})
            kind = _schema_name(schema)
            if "enum" in schema:
                kind = " | ".join(schema["enum"])
            out.append(
                f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                f"<td>{_e(kind)}</td><td>{_e(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        media = ", ".join(body["content"])
        schema = _schema_name(next(iter(body["content"].values()))["schema"])
        out.append(f"<p>Body: <code>{_e(schema)}</code> as {_e(media)}</p>")
    out.append("<ul>")
    for status, response in op["responses"].items():
        response = _resolve(doc, response)
        out.append(f"<li><code>{_e(status)}</code> {_e(response['description'])}</li>")
    out.append("</ul></section>")
    return "".join(out)


def render(doc: dict[str, Any]) -> str:
    """The docs page for ``doc``."""
    info = doc["info"]
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(info['title'])} API</title>",
        '<link rel="stylesheet" href="/static/style.css"></head><body><main>',
        f"<h1>{_e(info['title'])} API <small>{_e(info['version'])}</small></h1>",
        f"<p>{_e(info['description'])}</p>",
        '<p>Machine-readable: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a></p>',
        "<h2>Operations</h2>",
    ]
    for path, item in doc["paths"].items():
        shared = item.get("parameters", [])
        for method in _METHODS:
            if method in item:
                parts.append(_operation(doc, path, method, item[method], shared))
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f"<section><h3>{_e(name)}</h3>")
        if schema.get("description"):
            parts.append(f"<p>{_e(schema['description'])}</p>")
        props = schema.get("properties", {})
        if props:
            required = set(schema.get("required", []))
            parts.append("<table><tr><th>field</th><th>type</th><th>required</th></tr>")
            for field, sub in props.items():
                parts.append(
                    f"<tr><td><code>{_e(field)}</code></td><td>{_e(_schema_name(sub))}</td>"
                    f"<td>{'yes' if field in required else 'no'}</td></tr>"
                )
            parts.append("</table>")
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "".join(parts)


class Docs:
    """``GET /docs``: the API for people."""

    actions: ClassVar[dict[str, str]] = {"GET": PUBLIC}

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self._page = render(document() if doc is None else doc).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/html; charset=utf-8"
        resp.data = self._page

    # RFC 9110: HEAD wherever GET; Falcon sends no body for it.
    on_head = on_get
