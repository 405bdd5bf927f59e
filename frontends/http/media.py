"""JSON request and response bodies through orjson, bounded in size."""

from __future__ import annotations

from typing import Any

import falcon
import orjson
from falcon import media


class JSONHandler(media.BaseHandler):
    """orjson for speed and strictness (no NaN, no lone surrogates, UTF-8 only)."""

    def serialize(self, media: object, content_type: str | None = None) -> bytes:
        return orjson.dumps(media)

    def deserialize(
        self, stream: Any, content_type: str | None, content_length: int | None
    ) -> object:
        data = stream.read()
        if not data:
            raise falcon.MediaNotFoundError("JSON")
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise falcon.MediaMalformedError("JSON") from exc

    exhaust_stream = True


def handlers() -> dict[str, media.BaseHandler]:
    """The media handlers for requests and responses: JSON only, deliberately."""
    handler = JSONHandler()
    return {
        falcon.MEDIA_JSON: handler,
        "application/merge-patch+json": handler,
        "application/problem+json": handler,
    }
