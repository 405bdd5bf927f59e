"""The OpenAPI 3.1 document of the HTTP API: the contract clients rely on.

Written out rather than derived, so that it says what we promise; a test
checks that it and the routes agree, and schemathesis checks that the server
keeps every promise in it.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

import email_validator

import userplane
from userplane import attributes
from userplane.idempotency import MAX_KEY_LENGTH
from userplane.pagination import SORT_FIELDS
from userplane.text import is_invisible_format
from userplane.users import (
    DEFAULT_LIMIT,
    MAX_EXTERNAL_ID,
    MAX_EXTERNAL_SOURCE,
    MAX_FULL_NAME,
    MAX_LIMIT,
)

PROBLEM = "application/problem+json"
JSON = "application/json"


def _char_class(codes: list[int]) -> str:
    """``codes`` as the inside of a regex character class, in ranges.

    BMP characters as ``\\uXXXX`` (read alike by ECMA-262 and Python), others
    as themselves: the two spell astral escapes differently.
    """

    def spell(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    out, start = [], None
    for i, code in enumerate(codes):
        if start is None:
            start = code
        if i + 1 == len(codes) or codes[i + 1] != code + 1:
            out.append(spell(start) if start == code else f"{spell(start)}-{spell(code)}")
            start = None
    return "".join(out)


@functools.cache
def _name_pattern() -> str:
    """What a name may hold: no control or invisible formatting character, not blank.

    The formatting characters come from the rule the service applies
    (``userplane.text.is_invisible_format``), so the document cannot drift from it.
    """
    invisible = _char_class([c for c in range(0x110000) if is_invisible_format(chr(c))])
    char = rf"[^\u0000-\u001f\u007f-\u009f{invisible}]"
    return rf"^{char}*[^\s\u0000-\u001f\u007f-\u009f{invisible}]{char}*$"


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


# Addresses at special-use domains (RFC 6761: .test, .invalid, .localhost …) are
# refused, as they can never receive mail; the pattern says so to clients.
_EMAIL_PATTERN = (
    r"^(?!.*\.(?:"
    + "|".join(_any_case(d) for d in email_validator.SPECIAL_USE_DOMAIN_NAMES)
    + r")\.?$)"
)


_CONTROL = r"\x00-\x1f\x7f-\x9f"
#: An external id comes with its source; a source alone needs the id beside it (null: none).
_EXTERNAL_PAIR = [
    {
        "if": {"required": ["external_id"], "properties": {"external_id": {"type": "string"}}},
        "then": {
            "required": ["external_source"],
            "properties": {"external_source": {"type": "string"}},
        },
    },
    {
        "if": {
            "required": ["external_source"],
            "properties": {"external_source": {"type": "string"}},
        },
        "then": {"required": ["external_id"]},
    },
]
#: A key of custom attributes.
_ATTRIBUTE_KEY = {
    "minLength": 1,
    "maxLength": attributes.MAX_KEY,
    "pattern": f"^[^{_CONTROL}]*$",
}


def _attribute_value(depth: int) -> dict[str, Any]:
    """What a value of custom attributes at ``depth`` may be (the object itself is 1)."""
    # Each keyword applies to its own type only: maxLength to strings, the bounds to numbers.
    scalars = ["string", "number", "boolean", "null"]
    scalar: dict[str, Any] = {
        "type": scalars,
        "maxLength": attributes.MAX_STRING,
        "pattern": "^[^\\u0000]*$",
        "minimum": -attributes.MAX_SAFE_INTEGER,
        "maximum": attributes.MAX_SAFE_INTEGER,
    }
    if depth >= attributes.MAX_DEPTH:
        return scalar
    inner = _attribute_value(depth + 1)
    # One schema of every type rather than anyOf branches: a value valid in one branch
    # is then never taken (by a fuzzer, by a reader) for one that breaks another.
    return {
        **scalar,
        "type": [*scalars, "object", "array"],
        "maxProperties": attributes.MAX_ENTRIES,
        "propertyNames": _ATTRIBUTE_KEY,
        "additionalProperties": inner,
        "maxItems": attributes.MAX_ENTRIES,
        "items": inner,
    }


#: In a change, a source (even null) is set with its id, always.
_EXTERNAL_PAIR_CHANGE = [
    _EXTERNAL_PAIR[0],
    {"if": {"required": ["external_source"]}, "then": {"required": ["external_id"]}},
]
#: A source of external ids.
SOURCE_PATTERN = "^[A-Za-z0-9._:-]+$"
#: An external id (of a user or a group): no control character, no whitespace first or last.
EXTERNAL_ID_PATTERN = rf"^[^\s{_CONTROL}](?:[^{_CONTROL}]*[^\s{_CONTROL}])?$"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _problem(description: str, *headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-ID": _ref("headers", "X-Request-ID")},
        "content": {PROBLEM: {"schema": _ref("schemas", "Problem")}},
    }
    for header in headers:
        response["headers"][header] = _ref("headers", header)
    return response


def _ok(description: str, schema: str | None, *headers: str, media: str = JSON) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-ID": _ref("headers", "X-Request-ID")},
    }
    for header in headers:
        response["headers"][header] = _ref("headers", header)
    if schema is not None:
        response["content"] = {media: {"schema": _ref("schemas", schema)}}
    return response


def _errors(*statuses: int, public: bool = False) -> dict[str, Any]:
    """The error responses of an operation: its own, plus those every operation may give.

    Every operation but a public one may also answer 401, 403 and 429 (rate limits).
    """
    common = {500, 503} if public else {401, 403, 429, 500, 503}
    return {str(s): _ref("responses", str(s)) for s in sorted({*statuses, *common})}


#: What a public operation (health, docs) declares: no credentials needed.
_PUBLIC: list[dict[str, list[str]]] = []


_BODY_ERRORS = (400, 411, 413, 415, 422)
#: What an operation with query parameters may also answer: a long query string
#: makes the request line longer than the server reads (then a 414).
_QUERY_ERRORS = (414,)


#: What a request body of each schema looks like, for people (the docs' "Try it out"
#: starts from it). Each is a valid body: tests/frontends/test_openapi.py checks.
EXAMPLES: dict[str, dict[str, Any]] = {
    "NewUser": {
        "email": "ann@example.org",
        "full_name": "Ann Example",
        "attributes": {"department": "sales"},
    },
    "UserChanges": {"full_name": "Ann B. Example", "is_active": False},
}


def _json_body(schema: str, *media: str) -> dict[str, Any]:
    def content() -> dict[str, Any]:
        out: dict[str, Any] = {"schema": _ref("schemas", schema)}
        if schema in EXAMPLES:
            out["example"] = EXAMPLES[schema]
        return out

    return {"required": True, "content": {m: content() for m in (JSON, *media)}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _header(name: str) -> dict[str, str]:
    return _ref("parameters", name)


def document(roles: Collection[str] | None = None) -> dict[str, Any]:
    """The OpenAPI document, as a JSON-ready dict; ``roles``: the role names the service knows."""
    user_id = _ref("parameters", "user_id")
    include_deleted = _query(
        "include_deleted",
        {"type": "boolean", "default": False},
        "Also find deleted users; needs users:read-deleted (else a list is 403, a user 404).",
    )
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "userplane",
            "version": userplane.__version__,
            "summary": "A pluggable user-management service.",
            "description": (
                "**Authenticate** with a bearer token: an API key (`up_…`, made on the "
                "server with `userplane keys create --name me --role admin`) or a JWT "
                "from the configured identity provider, as `Authorization: Bearer …`. "
                'Here, press "Authorize", paste it, then "Try it out" on any operation.\n\n'
                "Every error is an RFC 9457 problem document (`application/problem+json`) "
                "naming the field at fault. Single users carry an `ETag`; send it back as "
                "`If-Match` to make an update or delete conditional (a stale one is a "
                "412). Lists page by keyset: follow `next` (or the `Link` header). A "
                "`POST` with an `Idempotency-Key` is safe to retry. Every answer carries "
                "`X-Request-ID`; with rate limits on, `RateLimit` and `RateLimit-Policy` "
                "say where the caller stands, and a 429 says when to retry "
                "(`Retry-After`). Request bodies are JSON, at most "
                "`USERPLANE_MAX_BODY_BYTES` (64 KiB by default). Where the service reads "
                "from replicas, a successful write answers with `Userplane-Position`: send "
                "it back on a read to be served only by a database that holds that write."
            ),
        },
        "servers": [{"url": "/"}],
        # Every operation needs credentials unless it says otherwise.
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/users/": {
                "post": {
                    "operationId": "createUser",
                    "summary": "Create a user",
                    "description": (
                        "With `Idempotency-Key`, a retry of the same request replays the "
                        "first response instead of creating a second user."
                    ),
                    "parameters": [_header("Idempotency-Key"), _header("X-Request-ID")],
                    "requestBody": _json_body("NewUser"),
                    "responses": {
                        "201": _ok(
                            "Created (or, with a replayed key, created before)",
                            "User",
                            "Location",
                            "ETag",
                            "Idempotent-Replayed",
                        ),
                        **_errors(*_BODY_ERRORS, 409),
                    },
                },
                "get": {
                    "operationId": "listUsers",
                    "summary": "List users, one page at a time",
                    "parameters": [
                        _query(
                            "limit",
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIMIT,
                                "default": DEFAULT_LIMIT,
                            },
                            "Users per page.",
                        ),
                        _query(
                            "cursor",
                            {"type": "string", "minLength": 1, "maxLength": 2400},
                            "Where the page starts: `next` of the previous page.",
                        ),
                        _query(
                            "sort",
                            {
                                "type": "string",
                                "enum": [*SORT_FIELDS, *(f"-{f}" for f in SORT_FIELDS)],
                                "default": "created_at",
                            },
                            "Order (then by id); `-` for descending.",
                        ),
                        _query("is_active", {"type": "boolean"}, "Only (in)active users."),
                        _query(
                            "email",
                            _ref("schemas", "Email"),
                            "Only the user with this address (any letter case).",
                        ),
                        _query(
                            "q",
                            # No NUL: no database can take one (a 422, as the service says).
                            {
                                "type": "string",
                                "maxLength": MAX_FULL_NAME,
                                "pattern": "^[^\\u0000]*$",
                            },
                            "Substring of the email or the name, any letter case.",
                        ),
                        _query(
                            "external_source",
                            {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_EXTERNAL_SOURCE,
                                "pattern": SOURCE_PATTERN,
                            },
                            "Only users from this source of external ids.",
                        ),
                        _query(
                            "external_id",
                            {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_EXTERNAL_ID,
                                "pattern": EXTERNAL_ID_PATTERN,
                            },
                            "Only users with this external id (from any source, unless "
                            "`external_source` says).",
                        ),
                        include_deleted,
                        _header("X-Request-ID"),
                    ],
                    "responses": {
                        "200": _ok("A page of users", "UserPage", "Link"),
                        **_errors(*_QUERY_ERRORS, 422),
                    },
                },
            },
            "/api/v1/users/export": {
                "get": {
                    "operationId": "exportUsers",
                    "summary": "Every user, one JSON object per line (needs users:export)",
                    "description": (
                        "Streamed in constant memory, oldest user first; each line is a "
                        "`User`. A failure half-way ends the response without its last chunk "
                        "(an incomplete transfer), never as a shorter export."
                    ),
                    "parameters": [include_deleted, _header("X-Request-ID")],
                    "responses": {
                        "200": {
                            "description": "Newline-delimited JSON, one User per line",
                            "headers": {"X-Request-ID": _ref("headers", "X-Request-ID")},
                            "content": {
                                "application/x-ndjson": {"schema": _ref("schemas", "User")}
                            },
                        },
                        **_errors(*_QUERY_ERRORS, 422),
                    },
                },
            },
            "/api/v1/users/{user_id}": {
                "parameters": [user_id],
                "get": {
                    "operationId": "getUser",
                    "summary": "Read a user",
                    "parameters": [
                        include_deleted,
                        _header("If-None-Match"),
                        _header("X-Request-ID"),
                    ],
                    "responses": {
                        "200": _ok("The user", "User", "ETag"),
                        "304": {
                            "description": "Not modified: the `If-None-Match` tag is current",
                            "headers": {
                                "ETag": _ref("headers", "ETag"),
                                "X-Request-ID": _ref("headers", "X-Request-ID"),
                            },
                        },
                        **_errors(*_QUERY_ERRORS, 404, 422),
                    },
                },
                "patch": {
                    "operationId": "updateUser",
                    "summary": "Change some fields of a user (JSON merge patch)",
                    "parameters": [_header("If-Match"), _header("X-Request-ID")],
                    "requestBody": _json_body("UserChanges", "application/merge-patch+json"),
                    "responses": {
                        "200": _ok("The updated user", "User", "ETag"),
                        **_errors(*_BODY_ERRORS, 404, 409, 412),
                    },
                },
                "delete": {
                    "operationId": "deleteUser",
                    "summary": "Delete a user (restorable until purged; its email stays reserved)",
                    "parameters": [_header("If-Match"), _header("X-Request-ID")],
                    "responses": {
                        "204": _ok("Deleted", None),
                        **_errors(404, 412),
                    },
                },
            },
            "/api/v1/users/{user_id}/restore": {
                "parameters": [user_id],
                "post": {
                    "operationId": "restoreUser",
                    "summary": "Bring a deleted user back (a live user is returned as it is)",
                    "parameters": [_header("X-Request-ID")],
                    "responses": {
                        "200": _ok("The user, live", "User", "ETag"),
                        **_errors(404, 413),
                    },
                },
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "parameters": [_header("X-Request-ID")],
                    "security": _PUBLIC,
                    "responses": {
                        "200": _ok("The OpenAPI document", "Document"),
                        **_errors(public=True),
                    },
                },
            },
            "/health/live": {
                "get": {
                    "operationId": "live",
                    "summary": "Liveness: the process answers",
                    "parameters": [_header("X-Request-ID")],
                    "security": _PUBLIC,
                    "responses": {"200": _ok("Alive", "Health"), **_errors(public=True)},
                },
            },
            "/health/ready": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: storage answers too",
                    "parameters": [_header("X-Request-ID")],
                    "security": _PUBLIC,
                    "responses": {"200": _ok("Ready", "Health"), **_errors(public=True)},
                },
            },
            "/": {
                "get": {
                    "operationId": "home",
                    "summary": "A page about this instance",
                    "parameters": [_header("X-Request-ID")],
                    "security": _PUBLIC,
                    "responses": {
                        "200": _ok("HTML", "Html", media="text/html"),
                        **_errors(public=True),
                    },
                },
            },
            "/docs": {
                "get": {
                    "operationId": "docs",
                    "summary": "This document, for people",
                    "parameters": [_header("X-Request-ID")],
                    "security": _PUBLIC,
                    "responses": {
                        "200": _ok("HTML", "Html", media="text/html"),
                        **_errors(public=True),
                    },
                },
            },
        },
        "components": _components(),
    }
    # Imported here: that module builds on this one's helpers.
    from userplane.frontends.http import openapi_groups

    doc["paths"].update(openapi_groups.paths())
    doc["components"]["schemas"].update(openapi_groups.schemas())
    if roles is not None:
        doc["components"]["schemas"]["RoleName"]["enum"] = sorted(roles)
    return doc


def _components() -> dict[str, Any]:
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    return {
        "schemas": {
            "User": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "id",
                    "email",
                    "full_name",
                    "is_active",
                    "created_at",
                    "updated_at",
                    "version",
                    "deleted_at",
                    "external_source",
                    "external_id",
                    "attributes",
                ],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "email": {"type": "string", "format": "email"},
                    "full_name": {"type": ["string", "null"]},
                    "is_active": {"type": "boolean"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                    "version": {"type": "integer", "minimum": 1},
                    "deleted_at": {**nullable_time, "description": "Set while deleted."},
                    "external_source": {"type": ["string", "null"]},
                    "external_id": {"type": ["string", "null"]},
                    "attributes": {"type": "object"},
                },
            },
            "NewUser": {
                "type": "object",
                "additionalProperties": False,
                "required": ["email"],
                "properties": {
                    "email": _ref("schemas", "Email"),
                    "full_name": _ref("schemas", "FullName"),
                    "is_active": {"type": "boolean", "default": True},
                    "external_source": _ref("schemas", "ExternalSource"),
                    "external_id": _ref("schemas", "ExternalId"),
                    "attributes": _ref("schemas", "Attributes"),
                },
                "allOf": _EXTERNAL_PAIR,
            },
            "UserChanges": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "email": _ref("schemas", "Email"),
                    "full_name": _ref("schemas", "FullName"),
                    "is_active": {"type": "boolean"},
                    "external_source": _ref("schemas", "ExternalSource"),
                    "external_id": _ref("schemas", "ExternalId"),
                    "attributes": {
                        **_ref("schemas", "Attributes"),
                        "description": "Merged into the stored attributes (RFC 7396: a "
                        "key set to null goes); null removes them all.",
                    },
                },
                "allOf": _EXTERNAL_PAIR_CHANGE,
            },
            "ExternalSource": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": MAX_EXTERNAL_SOURCE,
                "pattern": SOURCE_PATTERN,
                "description": "Who issued `external_id` (an identity provider); set with it.",
            },
            "ExternalId": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": MAX_EXTERNAL_ID,
                "pattern": EXTERNAL_ID_PATTERN,
                "description": "The id the source knows the user by: unique with the source.",
            },
            "Attributes": {
                "type": ["object", "null"],
                "maxProperties": attributes.MAX_ENTRIES,
                "propertyNames": _ATTRIBUTE_KEY,
                "additionalProperties": _attribute_value(2),
                "description": "Your own metadata: a JSON object of at most "
                f"{attributes.MAX_BYTES} bytes, nested at most {attributes.MAX_DEPTH} "
                f"levels, {attributes.MAX_ENTRIES} entries per object or array, strings "
                f"of at most {attributes.MAX_STRING} characters, numbers within "
                f"±{attributes.MAX_SAFE_INTEGER}.",
            },
            "Email": {
                "type": "string",
                "format": "email",
                "maxLength": 254,
                "pattern": _EMAIL_PATTERN,
                "description": "Unique, compared case-insensitively (Unicode NFKC + case folding).",
            },
            "FullName": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": MAX_FULL_NAME,
                "pattern": _name_pattern(),
                "description": "Not blank, no control characters and no invisible formatting "
                "characters (bidirectional controls, zero-width and tag characters); null "
                "clears it.",
            },
            "UserPage": {
                "type": "object",
                "additionalProperties": False,
                "required": ["items", "next"],
                "properties": {
                    "items": {"type": "array", "items": _ref("schemas", "User")},
                    "next": {
                        "type": ["string", "null"],
                        "description": "The cursor of the next page; null on the last.",
                    },
                },
            },
            "Health": {
                "type": "object",
                "additionalProperties": False,
                "required": ["status"],
                "properties": {
                    "status": {"const": "ok"},
                    "storage": {"type": "string"},
                },
            },
            "Problem": {
                "type": "object",
                "description": "RFC 9457 problem details.",
                "required": ["type", "title", "status"],
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "detail": {"type": "string"},
                    "instance": {"type": "string"},
                    "request_id": {"type": "string"},
                    "errors": {
                        "type": "array",
                        "description": "Each field at fault (invalid input).",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["field", "detail"],
                            "properties": {
                                "field": {"type": "string"},
                                "detail": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "Document": {"type": "object"},
            "Html": {"type": "string"},
        },
        "parameters": {
            "user_id": {
                "name": "user_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            },
            "If-Match": {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "Only if the user is still at this `ETag` (else 412).",
            },
            "If-None-Match": {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "304 if the user is still at this `ETag`.",
            },
            "Idempotency-Key": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_KEY_LENGTH,
                    "pattern": "^[!-~]+$",
                },
                "description": "Makes a retry of this request safe.",
            },
            "X-Request-ID": {
                "name": "X-Request-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": (
                    "Echoed back and logged when it is 1 to 128 of `A-Za-z0-9._:-`; "
                    "otherwise (or if absent) one is made."
                ),
            },
        },
        "headers": {
            "X-Request-ID": {"schema": {"type": "string"}, "description": "This request's id."},
            "ETag": {"schema": {"type": "string"}, "description": "The user's version, quoted."},
            "Location": {"schema": {"type": "string"}, "description": "The new user's URL."},
            "Link": {"schema": {"type": "string"}, "description": 'The next page: rel="next".'},
            "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."},
            "RateLimit-Policy": {
                "schema": {"type": "string"},
                "description": "The rate limit of this request's class, when limits are on "
                '(draft-ietf-httpapi-ratelimit-headers): `"read";q=600;w=60`, requests per '
                "window in seconds.",
            },
            "RateLimit": {
                "schema": {"type": "string"},
                "description": "Where the caller stands under that limit: "
                '`"read";r=599;t=1`, requests remaining and seconds until the quota is whole.',
            },
            "Allow": {"schema": {"type": "string"}, "description": "The methods allowed."},
            "WWW-Authenticate": {
                "schema": {"type": "string"},
                "description": "How to authenticate: `Bearer`.",
            },
            "Idempotent-Replayed": {
                "schema": {"const": "true"},
                "description": "Present when this is the replay of an earlier response.",
            },
        },
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": (
                    "An API key (`up_…`, from `userplane keys create`) or a JWT from "
                    "the configured identity provider."
                ),
            }
        },
        "responses": {
            "400": _problem("Malformed request: bad JSON, or a body too deep or too long"),
            "401": _problem("Missing or rejected credentials", "WWW-Authenticate"),
            "403": _problem("Authenticated, but the principal may not do this"),
            "404": _problem("No such user (or route)"),
            "409": _problem("Conflict: the email is taken, or a keyed request is still running"),
            "411": _problem("A body needs a Content-Length"),
            "412": _problem("Precondition failed: `If-Match` is stale"),
            "413": _problem("Body too large"),
            "429": _problem(
                "Too many requests: the caller's rate limit, or its address's limit of failed "
                "authentications, is spent; retry after `Retry-After` seconds",
                "Retry-After",
                "RateLimit-Policy",
                "RateLimit",
            ),
            "414": _problem(
                "URI too long: the request line (method, path and query) is over 4094 bytes"
            ),
            "415": _problem("Bodies must be application/json"),
            "422": _problem("Invalid input; `errors` names each field at fault"),
            "500": _problem("Internal error (logged; no details are given)"),
            "503": _problem("A dependency is unavailable; retry later", "Retry-After"),
        },
    }


#: The groups the docs show operations in, by the first segment of their path.
TAGS: dict[str, str] = {
    "users": "Users: create, read, change, delete, restore, list and export",
    "groups": "Groups and their members",
    "keys": "API keys",
    "webhooks": "Webhook subscriptions and deliveries",
    "audit": "The audit trail",
    "service": "This instance: health, the documents",
}


def tag_operations(doc: dict[str, Any]) -> None:
    """Put every operation that has no tag in the group its path names (``/api/v1/<group>``).

    Run once the plugins have added their paths, so theirs are grouped too; a
    path of a group not listed in ``TAGS`` makes a group of its own.
    """
    used: dict[str, str] = {}
    for path, item in doc["paths"].items():
        parts = path.strip("/").split("/")
        name = parts[2] if len(parts) > 2 and parts[:2] == ["api", "v1"] else "service"
        if name == "openapi.json":
            name = "service"
        for method, operation in item.items():
            if method in ("get", "put", "post", "patch", "delete") and not operation.get("tags"):
                operation["tags"] = [name]
                used.setdefault(name, TAGS.get(name, name))
    doc["tags"] = [
        {"name": name, "description": used[name]}
        for name in [*[t for t in TAGS if t in used], *sorted(set(used) - set(TAGS))]
    ]
