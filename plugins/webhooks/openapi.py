"""The webhook routes in the OpenAPI document (``userplane_openapi``)."""

from __future__ import annotations

from typing import Any

from userplane.plugins.webhooks.events import ALL, EVENT_TYPES
from userplane.plugins.webhooks.records import STATUSES
from userplane.plugins.webhooks.subscriptions import MAX_DESCRIPTION, MAX_EVENTS, MAX_LIMIT

JSON = "application/json"
#: What ``addresses.parse_url`` takes: http(s), RFC 3986 characters with well-formed escapes,
#: no credentials (``@`` before the path) and no fragment.
_ESCAPE = "%[0-9A-Fa-f]{2}"
URL_PATTERN = (
    "^[Hh][Tt][Tt][Pp][Ss]?://"
    rf"(?:[A-Za-z0-9\-._~:\[\]!$&'()*+,;=]|{_ESCAPE})+"
    rf"(?:[/?](?:[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=]|{_ESCAPE})*)?$"
)
_BODY_ERRORS = (400, 411, 413, 415, 422)
_COMMON = (401, 403, 429, 500, 503)


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _ref("responses", str(s)) for s in sorted({*statuses, *_COMMON})}


def _ok(description: str, schema: str | None, *headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {h: _ref("headers", h) for h in ("X-Request-ID", *headers)},
    }
    if schema is not None:
        response["content"] = {JSON: {"schema": _ref("schemas", schema)}}
    return response


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }


def _schemas() -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    event = {"type": "string", "enum": [ALL, *EVENT_TYPES]}
    subscription_properties = {
        "id": {"type": "string", "format": "uuid"},
        # What was accepted, as sent: the request's pattern, not "format: uri", which is
        # stricter than the URLs the server takes (brackets in a query, say).
        "url": {"type": "string", "pattern": URL_PATTERN},
        "events": {"type": "array", "items": event},
        "description": {"type": "string"},
        "created_at": time,
    }
    return {
        "NewWebhookSubscription": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url", "events"],
            "properties": {
                "url": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 2048,
                    "pattern": URL_PATTERN,
                    "description": "An http(s) URL in printable ASCII, without credentials or "
                    "fragment, whose host resolves to public addresses only (unless "
                    "USERPLANE_WEBHOOKS_ALLOW_PRIVATE): that last rule no schema can say, so a "
                    "URL that matches this pattern may still be refused (422).",
                },
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_EVENTS,
                    "items": event,
                    "description": "Event types to receive; `*` for every one.",
                },
                "description": {
                    "type": ["string", "null"],
                    "maxLength": MAX_DESCRIPTION,
                    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
                },
            },
        },
        "WebhookSubscription": {
            "type": "object",
            "additionalProperties": False,
            "required": list(subscription_properties),
            "properties": subscription_properties,
        },
        "NewWebhookSecret": {
            "type": "object",
            "additionalProperties": False,
            "required": [*subscription_properties, "secret"],
            "properties": {
                **subscription_properties,
                "secret": {
                    "type": "string",
                    "pattern": "^whsec_[A-Za-z0-9+/]+={0,2}$",
                    "description": "Verifies the signatures of deliveries; shown only now.",
                },
            },
        },
        "WebhookSubscriptionList": {
            "type": "object",
            "additionalProperties": False,
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": _ref("schemas", "WebhookSubscription")}
            },
        },
        "WebhookDelivery": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "id",
                "seq",
                "subscription_id",
                "type",
                "status",
                "attempts",
                "next_attempt_at",
                "last_status",
                "last_error",
                "created_at",
                "delivered_at",
                "payload",
            ],
            "properties": {
                "id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "The `webhook-id` header: the same on every attempt.",
                },
                "seq": {"type": "integer", "minimum": 1},
                "subscription_id": {"type": "string", "format": "uuid"},
                "type": {"type": "string"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "attempts": {"type": "integer", "minimum": 0},
                "next_attempt_at": {**nullable_time, "description": "When pending: when due."},
                "last_status": {"type": ["integer", "null"]},
                "last_error": {"type": ["string", "null"]},
                "created_at": time,
                "delivered_at": nullable_time,
                "payload": {
                    "type": "object",
                    "description": "The body sent (thin: no personal data).",
                },
            },
        },
        "WebhookDeliveryPage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["items", "next"],
            "properties": {
                "items": {"type": "array", "items": _ref("schemas", "WebhookDelivery")},
                "next": {"type": ["string", "null"], "description": "The next page's cursor."},
            },
        },
    }


def add_paths(document: dict[str, Any]) -> None:
    """Add the webhook operations and their schemas to ``document``."""
    request_id = _ref("parameters", "X-Request-ID")
    webhook_id = _path("webhook_id")
    document["components"]["schemas"].update(_schemas())
    document["paths"].update(
        {
            "/api/v1/webhooks": {
                "post": {
                    "operationId": "createWebhook",
                    "summary": "Subscribe a URL to events (needs webhooks:manage)",
                    "description": "The answer holds the subscription's signing secret, "
                    "shown this once.",
                    "parameters": [request_id],
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": _ref("schemas", "NewWebhookSubscription")}},
                    },
                    "responses": {
                        "201": _ok("Subscribed", "NewWebhookSecret", "Location"),
                        **_errors(*_BODY_ERRORS),
                    },
                },
                "get": {
                    "operationId": "listWebhooks",
                    "summary": "List subscriptions",
                    "parameters": [request_id],
                    "responses": {
                        "200": _ok("Every subscription", "WebhookSubscriptionList"),
                        **_errors(414, 422),
                    },
                },
            },
            "/api/v1/webhooks/{webhook_id}": {
                "parameters": [webhook_id],
                "get": {
                    "operationId": "getWebhook",
                    "summary": "Read a subscription",
                    "parameters": [request_id],
                    "responses": {
                        "200": _ok("The subscription", "WebhookSubscription"),
                        **_errors(404, 414, 422),
                    },
                },
                "delete": {
                    "operationId": "deleteWebhook",
                    "summary": "Delete a subscription; its pending deliveries go dead",
                    "parameters": [request_id],
                    "responses": {"204": _ok("Deleted", None), **_errors(404)},
                },
            },
            "/api/v1/webhooks/{webhook_id}/deliveries": {
                "parameters": [webhook_id],
                "get": {
                    "operationId": "listWebhookDeliveries",
                    "summary": "A subscription's deliveries, newest first",
                    "parameters": [
                        _query("status", {"type": "string", "enum": list(STATUSES)}, "Only these."),
                        _query(
                            "cursor",
                            {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
                            "Where the page starts: `next` of the previous page.",
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                            "Deliveries per page.",
                        ),
                        request_id,
                    ],
                    "responses": {
                        "200": _ok("A page of deliveries", "WebhookDeliveryPage", "Link"),
                        **_errors(404, 414, 422),
                    },
                },
            },
            "/api/v1/webhooks/deliveries/{delivery_id}/redeliver": {
                "parameters": [_path("delivery_id")],
                "post": {
                    "operationId": "redeliverWebhook",
                    "summary": "Send a dead or delivered delivery again (attempts reset, due now)",
                    "parameters": [request_id],
                    "responses": {
                        "200": _ok("The delivery, pending again", "WebhookDelivery"),
                        **_errors(404, 409, 413),
                    },
                },
            },
        }
    )
