"""JSON request and response bodies through orjson, bounded in size."""

from __future__ import annotations

import json
from typing import Any

import falcon
import orjson
from falcon import media

from userplane import attributes

#: No request body of ours nests deeper or holds a string much longer (a custom
#: attribute's string value is the longest: ``userplane.attributes.MAX_STRING``); more is
#: hostile. Twice that: a value a little too long reaches the rules, which name its field.
MAX_DEPTH = 8
MAX_STRING = 2 * attributes.MAX_STRING


def _too_large(detail: str) -> falcon.HTTPError:
    return falcon.HTTPBadRequest(title="Request body too complex", description=detail)


def _check_shape(value: object, depth: int) -> None:
    """Refuse deep nesting and long strings before any handler walks the body."""
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise _too_large(f"strings in a body are limited to {MAX_STRING} characters")
        return
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise _too_large(f"a body may nest at most {MAX_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and len(key) > MAX_STRING:
                raise _too_large(f"strings in a body are limited to {MAX_STRING} characters")
            _check_shape(item, depth + 1)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise falcon.HTTPBadRequest(
                title="Duplicate key in JSON",
                description=f"the key {key!r} appears twice in one object; send it once",
            )
        seen.add(key)
    return dict(pairs)


def _check_duplicates(data: bytes) -> None:
    """Refuse an object with a repeated key, which orjson would settle silently (last wins).

    A second parse with the standard library, only for bodies that hold an
    object: our bodies are small, so it costs microseconds, and a client whose
    two values disagree is told so instead of one being dropped unseen.
    """
    if b"{" in data:
        json.loads(data, object_pairs_hook=_refuse_duplicates)


class JSONHandler(media.BaseHandler):
    """orjson for speed and strictness (no NaN, no lone surrogates, UTF-8 only)."""

    def serialize(self, media: object, content_type: str | None = None) -> bytes:
        return orjson.dumps(media)

    def deserialize(
        self, stream: Any, content_type: str | None, content_length: int | None
    ) -> object:
        try:
            data = stream.read()
        except TimeoutError:  # BodyPolicy's read timeout: a client stalled mid-body
            raise falcon.HTTPError(
                falcon.HTTP_408,
                title="Request timeout",
                description="the body did not arrive in time",
                headers={"Connection": "close"},
            ) from None
        if content_length is not None and len(data) < content_length:
            # The client closed early: a prefix of a body is not the body (RFC 9112 6.3).
            raise falcon.HTTPBadRequest(
                title="Incomplete body",
                description="the body ended before its Content-Length",
                headers={"Connection": "close"},
            )
        if not data:
            raise falcon.MediaNotFoundError("JSON")
        try:
            media = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise falcon.MediaMalformedError("JSON") from exc
        _check_shape(media, 0)
        _check_duplicates(data)
        return media

    exhaust_stream = True


def handlers() -> dict[str, media.BaseHandler]:
    """The media handlers for requests and responses: JSON only, deliberately."""
    handler = JSONHandler()
    return {
        falcon.MEDIA_JSON: handler,
        "application/merge-patch+json": handler,
        "application/problem+json": handler,
    }
