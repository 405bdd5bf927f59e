"""The API's own middleware: request ids, body limits, content types, security headers, CORS."""

from __future__ import annotations

import logging
import random
import re
from typing import Any

import falcon

from userplane.errors import FieldError, InvalidInput, Unavailable
from userplane.frontends.http.problems import NO_STORE, SECURITY_HEADERS
from userplane.frontends.http.queueing import queued_for
from userplane.replicas import (
    POSITION_HEADER,
    ReadReplicas,
    RecentWriters,
    ReplicaRead,
    reset_replica_read,
    set_replica_read,
)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
JSON_TYPES = frozenset({"application/json", "application/merge-patch+json"})
#: An HTML form's body, admitted only under the app's ``form_prefixes``.
FORM_TYPE = "application/x-www-form-urlencoded"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_READS = frozenset({"GET", "HEAD"})
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Read the primary whatever the request: health checks (a replica's state is not the
#: instance's) and SCIM (provisioning clients never send a position back).
_PRIMARY_PATHS = ("/health", "/scim")
_log = logging.getLogger("userplane.http")


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

    def __init__(
        self,
        max_body_bytes: int,
        read_timeout_s: float = 10.0,
        form_prefixes: set[str] | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        #: Paths under which HTML forms may be posted (the console's ``/admin``); the
        #: app's ``form_prefixes``, filled in by plugins as they add their routes.
        self.form_prefixes = form_prefixes if form_prefixes is not None else set()

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
        # JSON, or a type a plugin's routes read (SCIM's application/scim+json): a type
        # the app has a request handler for.
        if media_type == FORM_TYPE and any(
            req.path == p or req.path.startswith(p + "/") for p in self.form_prefixes
        ):
            return
        if media_type not in JSON_TYPES and media_type not in req.options.media_handlers:
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
    """Headers every response carries; API responses are never cached.

    An HTML page gets ``DEFAULT_CSP`` (no script at all) unless its resource
    set a ``Content-Security-Policy`` of its own: a page that runs scripts
    (``/docs``) says which, and keeps that policy.
    """

    #: The policy of an HTML page that sets none: stylesheets and images from
    #: this origin, nothing else; never framed.
    DEFAULT_CSP = (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        for name, value in SECURITY_HEADERS:
            resp.set_header(name, value)
        if req.path.startswith("/api/") or req.path.startswith("/health/"):
            resp.set_header(*NO_STORE)
        content_type = resp.content_type or ""
        if content_type.startswith("text/html"):
            if resp.get_header("Content-Security-Policy") is None:
                resp.set_header("Content-Security-Policy", self.DEFAULT_CSP)
            resp.set_header("X-Frame-Options", "DENY")


class Cors(falcon.CORSMiddleware):  # type: ignore[type-arg]
    """Falcon's CORS policy, telling caches that every response depends on ``Origin``.

    Whether a response carries ``Access-Control-Allow-Origin``, and which
    origin it names, depends on the request's ``Origin``: one allowed origin's
    answer, or a request without ``Origin``, must not be served from a shared
    cache to another. So every response gets ``Vary: Origin`` (merged with any
    ``Vary`` already set), preflights and refused origins included.
    """

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        super().process_response(req, resp, resource, req_succeeded)
        add_vary(resp, "Origin")


def add_vary(resp: falcon.Response, name: str) -> None:
    """Add ``name`` to ``resp``'s ``Vary``, unless it is there already (in any letter case)."""
    current = resp.get_header("Vary")
    if not current:
        resp.set_header("Vary", name)
        return
    names = [part.strip() for part in current.split(",") if part.strip()]
    if any(part == "*" or part.lower() == name.lower() for part in names):
        return  # "*" varies on everything already
    resp.set_header("Vary", ", ".join([*names, name]))


class ReplicaReads:
    """Let a ``GET``'s reads go to a read replica, unless they must see a recent write.

    Placed after authentication and rate limiting, whose reads stay on the
    primary. A principal's own write keeps its reads on the primary for the
    read-your-writes window (in this process); a ``Userplane-Position`` sent
    back from any write's response keeps them off replicas that have not
    replayed it (through any instance). Every successful write's response
    carries the primary's position. Some paths always read the primary:
    ``primary_prefixes`` (the console's pages, where an administrator sees
    what they just did), health checks and SCIM (``_PRIMARY_PATHS``).
    """

    def __init__(
        self, replicas: ReadReplicas, writers: RecentWriters, primary_prefixes: set[str]
    ) -> None:
        self._replicas = replicas
        self._writers = writers
        self._primary_prefixes = primary_prefixes

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        if req.method not in _READS or resource is None:
            return
        given = req.get_header(POSITION_HEADER)
        after = None
        if given is not None:
            try:
                after = self._replicas.parse_position(given)
            except ValueError:
                raise InvalidInput(
                    f"{POSITION_HEADER}: not a position this service wrote",
                    [FieldError(POSITION_HEADER, "not a position this service wrote")],
                ) from None
        path = req.path
        if path.startswith(_PRIMARY_PATHS) or any(map(path.startswith, self._primary_prefixes)):
            return
        principal = req.context.get("principal")
        if principal is not None and self._writers.recent(principal.id):
            return
        req.context.replica_token = set_replica_read(ReplicaRead(after))

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        token = req.context.get("replica_token")
        if token is not None:
            reset_replica_read(token)
            return
        if req.method not in _WRITES or not req_succeeded or not 200 <= resp.status_code < 300:
            return
        principal = req.context.get("principal")
        if principal is not None:
            self._writers.wrote(principal.id)
        try:
            resp.set_header(POSITION_HEADER, self._replicas.position())
        except Exception:  # the write is done: a position it cannot name costs it nothing
            _log.warning("the primary's position could not be read", exc_info=True)
