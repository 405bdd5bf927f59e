"""The key routes in the OpenAPI document (``userplane_openapi``), in the core's style.

The request schema says exactly what the service takes, so that a client (or
a fuzzer) sending what it allows is never refused for its shape: a name's
characters are the ones ``str.isprintable`` accepts (worked out from the
running Python, as the service judges by it), and not all spaces; a role is
one this registry defines; a lifetime matches ``resources.LIFETIME_PATTERN``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from userplane.plugins.api_keys.keys import KEY_PREFIX, LOOKUP_LENGTH, MAX_NAME, SECRET_LENGTH
from userplane.plugins.api_keys.resources import (
    CURSOR_PATTERN,
    DEFAULT_LIMIT,
    LIFETIME_PATTERN,
    LIST_PATH,
    MAX_LIMIT,
)

_JSON = "application/json"
_BODY_ERRORS = (400, 411, 413, 415, 422)
#: Every operation needs a bearer credential (an API key or a JWT) whose principal holds
#: keys:manage; said on each operation, though it is the document's default too.
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    # As the core's operations: their own errors, and those every authenticated one may give.
    return {str(s): _ref("responses", str(s)) for s in sorted({*statuses, 401, 403, 429, 500, 503})}


def _ok(description: str, schema: str, *headers: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {h: _ref("headers", h) for h in ("X-Request-ID", *headers)},
        "content": {_JSON: {"schema": _ref("schemas", schema)}},
    }


def _created() -> dict[str, Any]:
    response = _ok("Created: the key's record and, this once, the key", "NewApiKeySecret")
    response["headers"]["Location"] = _ref("headers", "Location")
    response["headers"]["Cache-Control"] = {
        "schema": {"const": "no-store"},
        "description": "The answer holds a secret: no cache may keep it.",
    }
    return response


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _char_class(codes: Iterable[int]) -> str:
    """``codes`` (ascending) as the inside of a regex character class, in ranges.

    BMP characters as ``\\uXXXX`` (read alike by ECMA-262 and Python), others
    as themselves: the two spell astral escapes differently.
    """

    def spell(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(
        spell(first) if first == last else f"{spell(first)}-{spell(last)}" for first, last in ranges
    )


@functools.cache
def name_pattern() -> str:
    """The characters of a key's name: printable ones (``str.isprintable``), spaces included.

    A positive class: drawing from it (what a fuzzer does) costs as many steps
    as it lists characters, and the printable ones are the fewer by far. That a
    name is not blank is said apart (``NOT_BLANK``).
    """
    printable = _char_class(c for c in range(0x110000) if chr(c).isprintable())
    return f"^[{printable}]*$"


#: A name may not be only spaces (the one blank character ``isprintable`` lets through).
NOT_BLANK = {"not": {"pattern": "^ *$"}}


def name_schema() -> dict[str, Any]:
    """What a new key's name may be: what ``ApiKeyService`` takes, exactly."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME,
        "pattern": name_pattern(),
        **NOT_BLANK,
        "description": "What the key is for: printable characters, not blank.",
    }


def _schemas(roles: list[str]) -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    record = {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string", "description": "What the key is for."},
        "role": {
            "type": "string",
            "description": "What the key may do. A role no longer defined grants nothing.",
        },
        "prefix": {
            "type": "string",
            "pattern": f"^{KEY_PREFIX}[A-Za-z0-9]{{{LOOKUP_LENGTH}}}$",
            "description": "The key's first characters, to recognise it by; no secret.",
        },
        "created_at": time,
        "expires_at": {**nullable_time, "description": "When it stops working; null: never."},
        "revoked_at": {**nullable_time, "description": "When it was revoked, if it was."},
        "last_used_at": {
            **nullable_time,
            "description": "When it last authenticated, to within the cache delay.",
        },
    }
    return {
        "NewApiKey": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "role"],
            "properties": {
                "name": name_schema(),
                "role": {
                    "type": "string",
                    "enum": roles,
                    "description": "A role of this service; the caller's own roles must grant "
                    "every action it grants (else 403).",
                },
                "expires_in": {
                    "type": ["string", "null"],
                    "pattern": LIFETIME_PATTERN,
                    "description": "Its lifetime, as `userplane keys create --expires` takes "
                    "it: 1 to 99999 seconds (`45s`), minutes (`30m`), hours (`12h`), days "
                    "(`90d`) or weeks (`2w`). Absent or null: it never expires.",
                },
            },
        },
        "ApiKey": {
            "type": "object",
            "additionalProperties": False,
            "required": list(record),
            "properties": record,
        },
        "NewApiKeySecret": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key", *record],
            "properties": {
                "key": {
                    "type": "string",
                    "pattern": (f"^{KEY_PREFIX}[A-Za-z0-9]{{{LOOKUP_LENGTH + SECRET_LENGTH}}}$"),
                    "description": "The key itself, for `Authorization: Bearer`: shown this "
                    "once, and never again (only its hash is kept).",
                },
                **record,
            },
        },
        "ApiKeyPage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["items", "next"],
            "properties": {
                "items": {"type": "array", "items": _ref("schemas", "ApiKey")},
                "next": {
                    "type": ["string", "null"],
                    "pattern": CURSOR_PATTERN,
                    "description": "The cursor of the next page; null on the last.",
                },
            },
        },
    }


def add_to(document: dict[str, Any], roles: Iterable[str]) -> None:
    """Add ``/api/v1/keys`` and ``/api/v1/keys/{key_id}`` and their schemas.

    ``roles``: every role the registry defines, the values a new key's role may take.
    """
    request_id = _ref("parameters", "X-Request-ID")
    needs = (
        " Needs `keys:manage`; creating or revoking a key also needs roles that grant every "
        "action of the key's role (a 403 otherwise: no one mints or revokes a key more "
        "powerful than themselves)."
    )
    document["paths"][LIST_PATH] = {
        "post": {
            "operationId": "createApiKey",
            "summary": "Create an API key (needs keys:manage); its secret is shown this once",
            "description": (
                "The answer holds the key itself (`key`): it is never shown again, as only "
                "its hash is kept. `Idempotency-Key` is refused (a replay would need the "
                "secret kept); after a failed attempt, list the keys and revoke any you did "
                "not receive. Recorded as `api_key.created`." + needs
            ),
            "security": _SECURITY,
            "parameters": [request_id],
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": _ref("schemas", "NewApiKey")}},
            },
            "responses": {
                "201": _created(),
                **_errors(*_BODY_ERRORS, 409),
            },
        },
        "get": {
            "operationId": "listApiKeys",
            "summary": "List API keys, one page at a time (needs keys:manage)",
            "description": (
                "Oldest first, revoked and expired keys included (as `userplane keys list`); "
                "never a key's secret or its hash."
            ),
            "security": _SECURITY,
            "parameters": [
                _query(
                    "limit",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_LIMIT,
                        "default": DEFAULT_LIMIT,
                    },
                    "Keys per page.",
                ),
                _query(
                    "cursor",
                    {"type": "string", "pattern": CURSOR_PATTERN},
                    "Where the page starts: `next` of the previous page.",
                ),
                request_id,
            ],
            "responses": {
                "200": _ok("A page of keys", "ApiKeyPage", "Link"),
                **_errors(414, 422),
            },
        },
    }
    document["paths"][f"{LIST_PATH}/{{key_id}}"] = {
        "parameters": [
            {
                "name": "key_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            }
        ],
        "get": {
            "operationId": "getApiKey",
            "summary": "Read one API key (needs keys:manage); never its secret",
            "security": _SECURITY,
            "parameters": [request_id],
            "responses": {
                "200": _ok("The key", "ApiKey"),
                **_errors(404, 414, 422),
            },
        },
        "delete": {
            "operationId": "revokeApiKey",
            "summary": "Revoke an API key (needs keys:manage)",
            "description": (
                "Every process refuses the key within `USERPLANE_API_KEYS_CACHE_SECONDS` "
                "(5 s by default). Idempotent: revoking a revoked key answers the same record, "
                "its first `revoked_at` kept, and records nothing more. Recorded as "
                "`api_key.revoked`." + needs
            ),
            "security": _SECURITY,
            "parameters": [request_id],
            "responses": {
                "200": _ok("The key, revoked", "ApiKey"),
                **_errors(404, 414, 422),
            },
        },
    }
    document["components"]["schemas"].update(_schemas(sorted(roles)))
