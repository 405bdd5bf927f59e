"""The API's own middleware: request ids, body limits, content types, security headers."""

from __future__ import annotations

import random
import re
from typing import Any

import falcon

from userplane.errors import Unavailable
from userplane.frontends.http.queueing import queued_for

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
JSON_TYPES = frozenset({"application/json", "application/merge-patch+json"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestId:
    """Accept a well-formed ``X-Request-ID`` or make one; echo it on the response."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header("X-Request-ID")
        if given is not None and _REQUEST_ID.fullmatch(given):
            req.context.request_id = given
        else:
            # 32 hex digits, the shape of uuid4().hex. Ids correlate logs and are
            # not secrets, so the random module (reseeded in every forked
            # worker) serves: no system call, which in a threaded worker is a
            # point where the GIL is given up and fought for again.
            req.context.request_id = f"{random.getrandbits(128):032x}"
        resp.set_header("X-Request-ID", req.context.request_id)


class BodyPolicy:
    """Bound request bodies and insist on JSON before any handler reads one.

    Runs before routing, so an oversized body is refused without being read.
    """

    def __init__(self, max_body_bytes: int, read_timeout_s: float = 10.0) -> None:
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        length = req.content_length
        if length is not None and length > self.max_body_bytes:
            raise falcon.HTTPContentTooLarge(
                title="Content too large",
                description=f"request bodies are limited to {self.max_body_bytes} bytes",
            )
        if req.method not in _BODY_METHODS:
            return
        if length is None and req.get_header("Transfer-Encoding") is not None:
            # A chunked body's size is unknown until read; refuse rather than buffer it.
            raise falcon.HTTPLengthRequired(
                title="Length required", description="send a Content-Length with the body"
            )
        if not length:
            return
        # A client that sends less than it announced must not hold a thread for
        # ever: reads of this request's body time out (a 408). gthread makes the
        # socket blocking again for the next request on the connection.
        sock = req.env.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(self.read_timeout_s)
        media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
        if media_type not in JSON_TYPES:
            raise falcon.HTTPUnsupportedMediaType(
                title="Unsupported media type",
                description="send the body as application/json",
            )


class ShedLoad:
    """Refuse, with a fast 503, a request that waited too long for a worker thread.

    See ``userplane.frontends.http.queueing``. Liveness is always answered:
    a busy worker is alive, and an orchestrator must not restart it for that.
    """

    def __init__(self, queue_timeout_s: float) -> None:
        self.queue_timeout_s = queue_timeout_s

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        waited = queued_for()
        if waited is not None and waited > self.queue_timeout_s and req.path != "/health/live":
            raise Unavailable("the service is overloaded; retry shortly", retry_after=1)


class SecurityHeaders:
    """Headers every response carries; API responses are never cached."""

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        if req.path.startswith("/api/") or req.path.startswith("/health/"):
            resp.set_header("Cache-Control", "no-store")
        content_type = resp.content_type or ""
        if content_type.startswith("text/html"):
            resp.set_header(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'self'; img-src 'self'; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            )
            resp.set_header("X-Frame-Options", "DENY")
