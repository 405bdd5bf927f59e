"""RFC 9457 problem details: the one mapping from errors to HTTP responses.

Every error the API answers, the domain's and Falcon's own (unknown route,
wrong method, malformed JSON), leaves through here as
``application/problem+json``. No traceback ever reaches a client.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import falcon
import orjson
import structlog

from userplane.errors import (
    ConfigurationError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UserplaneError,
)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:userplane:problem:"

#: Domain error class → HTTP status. The one table; keep it complete.
STATUS: dict[type[UserplaneError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidInput: 422,
    PreconditionFailed: 412,
    Unauthenticated: 401,
    Forbidden: 403,
    RateLimited: 429,
    Unavailable: 503,
    ConfigurationError: 500,
}

_log = structlog.get_logger("userplane.http")


_DEFAULT_DETAIL = {
    404: "nothing is served at this path",
    405: "this path does not answer this method; see the Allow header",
}


def write_problem(
    req: falcon.Request,
    resp: falcon.Response,
    status: int,
    title: str,
    detail: str | None = None,
    type_: str = "about:blank",
    **extra: Any,
) -> None:
    """Fill ``resp`` with a problem document."""
    # Every problem has a detail, as documented; Falcon's own errors may lack one.
    body = problem_document(
        status,
        title,
        detail or _DEFAULT_DETAIL.get(status, title),
        instance=req.path,
        request_id=getattr(req.context, "request_id", None),
        type_=type_,
    )
    body.update(extra)
    resp.status = status
    resp.content_type = PROBLEM_JSON
    resp.data = orjson.dumps(body)


def problem_document(
    status: int,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    request_id: str | None = None,
    type_: str = "about:blank",
) -> dict[str, Any]:
    """An RFC 9457 document: the one shape of every answer that is an error."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    return body


#: The challenge a 401 offers when no plugin contributes one (RFC 9110 requires one).
DEFAULT_CHALLENGES = ('Bearer realm="userplane"',)


def _challenge(challenges: tuple[str, ...], presented: bool) -> str:
    """The ``WWW-Authenticate`` value: every plugin's challenge.

    RFC 6750: a bearer challenge names ``invalid_token`` only when credentials
    were presented (and refused).
    """
    out = []
    for challenge in challenges:
        if presented and challenge.split(" ", 1)[0].lower() == "bearer":
            challenge = f'{challenge}, error="invalid_token"'
        out.append(challenge)
    return ", ".join(out)


def handle_domain_error(
    req: falcon.Request,
    resp: falcon.Response,
    exc: UserplaneError,
    params: dict[str, Any],
    challenges: tuple[str, ...] = DEFAULT_CHALLENGES,
) -> None:
    """Falcon error handler for every ``UserplaneError``."""
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidInput):
        extra["errors"] = [{"field": e.field, "detail": e.message} for e in exc.errors]
    if isinstance(exc, RateLimited | Unavailable):
        resp.set_header("Retry-After", str(exc.retry_after))
    if isinstance(exc, Unauthenticated):
        presented = bool((req.get_header("Authorization") or "").strip())
        resp.set_header("WWW-Authenticate", _challenge(challenges or DEFAULT_CHALLENGES, presented))
    detail = exc.detail
    if isinstance(exc, Unavailable) and exc.public_detail is not None:
        detail = exc.public_detail  # the full one goes to the log line below
    if status >= 500:
        _log.error("request failed", error_kind=exc.kind, detail=exc.detail)
        if isinstance(exc, ConfigurationError):
            detail = "the service is misconfigured"
    write_problem(req, resp, status, exc.title, detail, TYPE_PREFIX + exc.kind, **extra)


def handle_http_error(
    req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError, params: dict[str, Any]
) -> None:
    """Falcon's own errors (404 route, 405, 400 bad JSON, 413, 415) as problems."""
    for name, value in dict(exc.headers or {}).items():
        resp.set_header(name, value)
    extra: dict[str, Any] = {}
    errors = getattr(exc, "errors", None)
    if errors:
        extra["errors"] = errors
    # Falcon's default title is the status line ("404 Not Found"); a problem's is the phrase.
    phrase = HTTPStatus(exc.status_code).phrase
    title = exc.title if exc.title and exc.title != exc.status else phrase
    write_problem(req, resp, exc.status_code, title, exc.description, **extra)


def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict[str, Any]
) -> None:
    """Anything else is our bug: log it with its traceback, tell the client only 500."""
    _log.exception("unhandled error", path=req.path, method=req.method)
    write_problem(
        req,
        resp,
        500,
        "Internal server error",
        "the server failed to handle this request; it has been logged",
    )


def install(app: falcon.App[Any, Any], challenges: tuple[str, ...] = DEFAULT_CHALLENGES) -> None:
    """Register the handlers on ``app``; later registrations win in Falcon, so order matters.

    ``challenges`` are the ``WWW-Authenticate`` challenges the auth plugins offer.
    """

    def domain_error(
        req: falcon.Request, resp: falcon.Response, exc: UserplaneError, params: dict[str, Any]
    ) -> None:
        handle_domain_error(req, resp, exc, params, challenges)

    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(UserplaneError, domain_error)


#: The headers every answer carries (``SecurityHeaders``), and those of API answers.
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
NO_STORE = ("Cache-Control", "no-store")
#: What the answers the server writes itself, below Falcon, carry (``raw_problem``).
RAW_SECURITY_HEADERS = (*SECURITY_HEADERS, NO_STORE)

#: Reason phrases RFC 9110 renamed, where this Python still has the old one.
_RFC_9110_PHRASES = {414: "URI Too Long"}


def raw_problem(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    request_id: str | None = None,
) -> bytes:
    """A whole HTTP/1.1 response carrying a problem document, ending the connection.

    For what the server refuses before the request reaches Falcon (a request
    line too long, headers too large, broken framing, a head that never
    arrived): the same document and security headers as every other answer,
    and ``Connection: close``, as where the next request would start is unknown.
    """
    phrase = _RFC_9110_PHRASES.get(status) or HTTPStatus(status).phrase
    body = orjson.dumps(
        problem_document(status, phrase, detail, instance=instance, request_id=request_id)
    )
    headers = [
        ("Content-Type", PROBLEM_JSON),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *RAW_SECURITY_HEADERS,
    ]
    if request_id:
        headers.append(("X-Request-ID", request_id))
    head = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + b"\r\n" + body
