"""``/api/v1/webhooks``: subscriptions and their deliveries over HTTP (``webhooks:manage``)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlencode

import falcon

from userplane.frontends.http import query_params
from userplane.plugin import InvalidInput
from userplane.plugins.webhooks import MANAGE
from userplane.plugins.webhooks.subscriptions import WebhookService

BASE = "/api/v1/webhooks"


def _object(req: falcon.Request) -> Mapping[str, Any]:
    media = req.get_media()
    if not isinstance(media, dict):
        raise InvalidInput.for_field("$", "must be a JSON object")
    return media


class WebhooksResource:
    """``/api/v1/webhooks``: subscribe, and list subscriptions."""

    actions: ClassVar[dict[str, str]] = {"POST": MANAGE, "GET": MANAGE}

    def __init__(self, service: WebhookService) -> None:
        self._service = service

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """201 with the subscription and its secret: the only time the secret is shown."""
        sub = self._service.create(_object(req))
        resp.status = falcon.HTTP_201
        resp.set_header("Location", f"{BASE}/{sub.id}")
        resp.media = {**sub.public(), "secret": sub.secret}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every subscription, oldest first (never a secret)."""
        query_params(req, frozenset())
        resp.media = {"items": [s.public() for s in self._service.list()]}

    on_head = on_get


class WebhookResource:
    """``/api/v1/webhooks/{webhook_id}``: read, delete."""

    actions: ClassVar[dict[str, str]] = {"GET": MANAGE, "DELETE": MANAGE}

    def __init__(self, service: WebhookService) -> None:
        self._service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, webhook_id: uuid.UUID) -> None:
        """The subscription (never its secret)."""
        query_params(req, frozenset())
        resp.media = self._service.get(webhook_id).public()

    on_head = on_get

    def on_delete(self, req: falcon.Request, resp: falcon.Response, webhook_id: uuid.UUID) -> None:
        """204: nothing more is sent to it; its pending deliveries go dead."""
        self._service.delete(webhook_id)
        resp.status = falcon.HTTP_204


class DeliveriesResource:
    """``/api/v1/webhooks/{webhook_id}/deliveries``: a subscription's deliveries, newest first."""

    actions: ClassVar[dict[str, str]] = {"GET": MANAGE}
    _ALLOWED = frozenset({"status", "cursor", "limit"})

    def __init__(self, service: WebhookService) -> None:
        self._service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, webhook_id: uuid.UUID) -> None:
        """A page; the next is in ``next`` and in the ``Link`` header."""
        values = query_params(req, self._ALLOWED)
        page = self._service.deliveries(
            webhook_id,
            status=values.get("status"),
            cursor=values.get("cursor"),
            limit=values.get("limit"),
        )
        resp.media = {"items": [d.public() for d in page.items], "next": page.next}
        if page.next is not None:
            params = {**values, "cursor": page.next}
            resp.append_link(f"{BASE}/{webhook_id}/deliveries?{urlencode(params)}", "next")

    on_head = on_get


class RedeliverResource:
    """``/api/v1/webhooks/deliveries/{delivery_id}/redeliver``: send it again."""

    actions: ClassVar[dict[str, str]] = {"POST": MANAGE}

    def __init__(self, service: WebhookService) -> None:
        self._service = service

    def on_post(self, req: falcon.Request, resp: falcon.Response, delivery_id: uuid.UUID) -> None:
        """200 with the delivery, pending again and due now (409 if it is pending already)."""
        resp.media = self._service.redeliver(delivery_id).public()


def add_routes(app: Any, service: WebhookService) -> None:
    """Add the webhook routes to ``app``."""
    app.add_route(BASE, WebhooksResource(service))
    app.add_route(f"{BASE}/{{webhook_id:uuid}}", WebhookResource(service))
    app.add_route(f"{BASE}/{{webhook_id:uuid}}/deliveries", DeliveriesResource(service))
    app.add_route(f"{BASE}/deliveries/{{delivery_id:uuid}}/redeliver", RedeliverResource(service))
