"""SCIM errors (RFC 7644 §3.12): every error under ``/scim/v2`` as a SCIM ``Error`` body.

The plugin's own refusals raise ``ScimError`` with their ``scimType``. Every
other error there (the core's: a missing user, a taken address, a bad key;
Falcon's: malformed JSON, a wrong method, an unknown path) is answered by the
service as RFC 9457 problem+json like everywhere else, and ``ScimErrors``
rewrites it into the SCIM shape on its way out, so a client sees one shape
whatever refused it. The problem's first field error becomes the ``detail``,
named by its SCIM attribute.
"""

from __future__ import annotations

from typing import Any, Final

import falcon
import orjson

#: The media type of every SCIM body (RFC 7644 §3.1).
SCIM_JSON: Final = "application/scim+json"
ERROR_SCHEMA: Final = "urn:ietf:params:scim:api:messages:2.0:Error"
PREFIX: Final = "/scim/v2"

#: Our field names as SCIM names them, for the detail of an error.
_ATTRIBUTES = {
    "$.email": "emails.value",
    "$.full_name": "displayName",
    "$.is_active": "active",
    "$.external_id": "externalId",
    "$.external_source": "externalId",
    "$.display_name": "displayName",
    "$.user_ids": "members",
    "$.filter": "filter",
    "$.sort": "sortBy",
    "$.offset": "startIndex",
    "$.limit": "count",
    "$.cursor": "cursor",
}
#: The scimType of a problem by its status, where one fits.
_TYPES = {409: "uniqueness", 422: "invalidValue"}


class ScimError(Exception):
    """A refusal with a SCIM ``scimType`` (``invalidFilter``, ``invalidPath``, ``noTarget``…)."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type


def bad_request(detail: str, scim_type: str = "invalidValue") -> ScimError:
    """A 400 with ``scim_type``."""
    return ScimError(400, detail, scim_type)


def error_body(status: int, detail: str, scim_type: str | None = None) -> bytes:
    """A SCIM ``Error`` document."""
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": detail}
    if scim_type is not None:
        body["scimType"] = scim_type
    return orjson.dumps(body)


def handle_scim_error(
    req: falcon.Request, resp: falcon.Response, exc: ScimError, params: dict[str, Any]
) -> None:
    """Falcon error handler for ``ScimError``."""
    resp.status = exc.status
    resp.content_type = SCIM_JSON
    resp.data = error_body(exc.status, exc.detail, exc.scim_type)


def _detail(problem: dict[str, Any]) -> str:
    errors = problem.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        field = str(first.get("field", ""))
        name = _ATTRIBUTES.get(field, field.removeprefix("$."))
        return f"{name}: {first.get('detail', '')}"
    return str(problem.get("detail") or problem.get("title") or "")


class ScimErrors:
    """Falcon middleware: a problem answered under ``/scim/v2`` leaves as a SCIM ``Error``.

    Invalid input (422 elsewhere) is a 400 ``invalidValue`` in SCIM, malformed
    JSON a 400 ``invalidSyntax``; a taken value is a 409 ``uniqueness``.
    Headers (``WWW-Authenticate``, ``Retry-After``, ``Allow``) stay as they are.
    """

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        path = req.path
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            return
        resp.set_header("Cache-Control", "no-store")  # personal data, as the API's answers
        if resp.content_type != "application/problem+json" or not isinstance(resp.data, bytes):
            return
        problem = orjson.loads(resp.data)
        status = int(problem.get("status") or resp.status_code)
        scim_type = _TYPES.get(status)
        if status == 400 and "JSON" in str(problem.get("title", "")):
            scim_type = "invalidSyntax"
        errors = problem.get("errors")
        first = errors[0] if isinstance(errors, list) and errors else None
        field = first.get("field") if isinstance(first, dict) else None
        if status == 422 and field == "$.filter":
            scim_type = "invalidFilter"  # a filter the store cannot run (sealed data)
        if status == 422 and field == "$.cursor":
            scim_type = "invalidCursor"  # RFC 9865: not a cursor of ours, or its user is gone
        if status == 422:
            status = 400
        resp.status = status
        resp.content_type = SCIM_JSON
        resp.data = error_body(status, _detail(problem), scim_type)
