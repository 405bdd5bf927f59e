"""The audit routes in the OpenAPI document (``userplane_openapi``), in the core's style."""

from __future__ import annotations

from typing import Any

from userplane.plugins.audit.query import DEFAULT_LIMIT, MAX_LIMIT, MAX_TEXT

_JSON = "application/json"
_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_NULLABLE_TEXT = {"type": ["string", "null"]}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _errors(*statuses: int) -> dict[str, Any]:
    # As the core's operations: their own errors, and those every authenticated one may give.
    return {str(s): _ref("responses", str(s)) for s in sorted({*statuses, 401, 403, 429, 500, 503})}


def _ok(description: str, schema: str, *headers: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {h: _ref("headers", h) for h in ("X-Request-ID", *headers)},
        "content": {_JSON: {"schema": _ref("schemas", schema)}},
    }


def _text() -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": "^[^\\u0000]*$"}


def add_to(document: dict[str, Any]) -> None:
    """Add ``/api/v1/audit`` and ``/api/v1/audit/{event_id}`` and their schemas."""
    request_id = _ref("parameters", "X-Request-ID")
    document["paths"]["/api/v1/audit"] = {
        "get": {
            "operationId": "listAuditEvents",
            "summary": "List audit events, one page at a time (needs audit:read)",
            "description": (
                "Oldest first (`sort=-seq`: newest first). Filters combine; `since` is "
                "inclusive, `until` exclusive. Personal values sealed under a user's data key "
                'are opened, or shown as `{"erased": true}` once the user was erased.'
            ),
            "parameters": [
                _query(
                    "limit",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_LIMIT,
                        "default": DEFAULT_LIMIT,
                    },
                    "Events per page.",
                ),
                _query(
                    "cursor",
                    {"type": "string", "minLength": 1, "maxLength": 64},
                    "Where the page starts: `next` of the previous page.",
                ),
                _query(
                    "sort",
                    {"type": "string", "enum": ["seq", "-seq"], "default": "seq"},
                    "`seq`: oldest first; `-seq`: newest first.",
                ),
                _query(
                    "target_type",
                    _text(),
                    "Only events on this kind of target (`user`, `api_key`).",
                ),
                _query("target_id", _text(), "Only events on the target with this id."),
                _query(
                    "user_id",
                    {"type": "string", "format": "uuid"},
                    "Only events about this user.",
                ),
                _query(
                    "actor",
                    _text(),
                    "Only events by this principal (`key:<uuid>`, `local:<login>`).",
                ),
                _query("action", _text(), "Only events of this action (`user.updated`)."),
                _query(
                    "since",
                    {"type": "string", "format": "date-time"},
                    "Only events at or after this time (RFC 3339).",
                ),
                _query(
                    "until",
                    {"type": "string", "format": "date-time"},
                    "Only events before this time (RFC 3339).",
                ),
                request_id,
            ],
            "responses": {
                "200": _ok("A page of audit events", "AuditEventPage", "Link"),
                **_errors(414, 422),
            },
        },
    }
    document["paths"]["/api/v1/audit/{event_id}"] = {
        "parameters": [
            {
                "name": "event_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            }
        ],
        "get": {
            "operationId": "getAuditEvent",
            "summary": "Read one audit event (needs audit:read)",
            "parameters": [request_id],
            "responses": {
                "200": _ok("The event", "AuditEvent"),
                **_errors(404, 422),
            },
        },
    }
    document["components"]["schemas"].update(_schemas())


def _schemas() -> dict[str, Any]:
    return {
        "AuditEvent": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "seq",
                "id",
                "occurred_at",
                "actor",
                "actor_kind",
                "action",
                "target",
                "user_id",
                "request_id",
                "trace_id",
                "client_address",
                "changes",
                "prev_hash",
                "hash",
            ],
            "properties": {
                "seq": {"type": "integer", "minimum": 1, "description": "Its place in the chain."},
                "id": {"type": "string", "format": "uuid"},
                "occurred_at": {
                    "type": "string",
                    "format": "date-time",
                    "description": "The database's clock when the change was recorded.",
                },
                "actor": {**_NULLABLE_TEXT, "description": "Who acted: a principal id."},
                "actor_kind": {**_NULLABLE_TEXT, "description": "`key`, `jwt`, `local` …"},
                "action": {"type": "string", "description": "`user.created`, `api_key.revoked` …"},
                "target": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "id"],
                    "properties": {"type": {"type": "string"}, "id": {"type": "string"}},
                },
                "user_id": {
                    "type": ["string", "null"],
                    "format": "uuid",
                    "description": "The user the change is about, if any.",
                },
                "request_id": _NULLABLE_TEXT,
                "trace_id": _NULLABLE_TEXT,
                "client_address": _NULLABLE_TEXT,
                "changes": {
                    "type": "object",
                    "description": "Each changed field's values before and after.",
                    "additionalProperties": _ref("schemas", "AuditFieldChange"),
                },
                "prev_hash": {**_HASH, "description": "The hash of the event before."},
                "hash": {
                    **_HASH,
                    "description": "SHA-256 of this event's columns (docs/audit.md).",
                },
            },
        },
        "AuditFieldChange": {
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["before", "after"],
                    "properties": {"before": {}, "after": {}},
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["erased"],
                    "properties": {"erased": {"const": True}},
                    "description": "A personal value whose user (and data key) was erased.",
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["redacted"],
                    "properties": {"redacted": {"const": True}},
                    "description": (
                        "A personal value not recorded (USERPLANE_AUDIT_REDACT_PERSONAL)."
                    ),
                },
            ]
        },
        "AuditEventPage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["items", "next"],
            "properties": {
                "items": {"type": "array", "items": _ref("schemas", "AuditEvent")},
                "next": {
                    "type": ["string", "null"],
                    "description": "The cursor of the next page; null on the last.",
                },
            },
        },
    }
