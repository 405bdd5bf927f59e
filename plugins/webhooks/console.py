"""The webhooks plugin's console pages: subscriptions (the secret shown once), deliveries.

Added through ``userplane_console`` with the console's public methods only.
The pages call the same ``WebhookService`` as ``/api/v1/webhooks`` and
``userplane webhooks``: the same URL checks, records and outbox.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, ClassVar

import falcon

from userplane.plugin import Conflict, InvalidInput, NotFound
from userplane.plugins.webhooks import MANAGE
from userplane.plugins.webhooks.records import STATUSES
from userplane.plugins.webhooks.subscriptions import WebhookService

#: Deliveries per page.
PAGE_SIZE = 50
TEMPLATES = Path(__file__).parent / "templates"


class WebhooksPage:
    """``/admin/webhooks``: the subscriptions and the form (GET); subscribe (POST)."""

    actions: ClassVar[dict[str, str]] = {"GET": MANAGE, "POST": MANAGE}

    def __init__(self, console: Any, service: WebhookService) -> None:
        self._console = console
        self._service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.show(req, resp, {"url": "", "events": "*", "description": ""}, {}, 200)

    on_head = on_get

    def show(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        values: dict[str, str],
        errors: dict[str, str],
        status: int,
    ) -> None:
        """Every live subscription, with the form (and any errors in it)."""
        self._console.render(
            req,
            resp,
            "webhooks/webhooks.html",
            status=status,
            subscriptions=self._service.list(),
            values=values,
            errors=errors,
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = dict(self._console.form(req))
        events = [e.strip() for e in form.get("events", "").replace(",", " ").split() if e.strip()]
        data = {
            "url": form.get("url", "").strip(),
            "events": events,
            "description": form.get("description", ""),
        }
        try:
            sub = self._service.create(data)
        except InvalidInput as exc:
            self.show(req, resp, form, self._console.field_errors(exc), 422)
            return
        self._console.render(req, resp, "webhooks/created.html", status=201, subscription=sub)


class WebhookPage:
    """``/admin/webhooks/{id}``: one subscription and its latest deliveries."""

    actions: ClassVar[dict[str, str]] = {"GET": MANAGE}

    def __init__(self, console: Any, service: WebhookService) -> None:
        self._console = console
        self._service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, webhook_id: uuid.UUID) -> None:
        sub = self._service.get(webhook_id)
        status = req.get_param("status") or None
        cursor = req.get_param("after") or None
        errors: dict[str, str] = {}
        deliveries: Any = ()
        following = None
        try:
            page = self._service.deliveries(webhook_id, status, cursor, PAGE_SIZE)
        except InvalidInput as exc:
            errors = self._console.field_errors(exc, {"cursor": "after"})
        else:
            deliveries, following = page.items, page.next
        query = f"status={status}&" if status else ""
        self._console.render(
            req,
            resp,
            "webhooks/webhook.html",
            status=422 if errors else 200,
            subscription=sub,
            deliveries=deliveries,
            statuses=STATUSES,
            status_value=status or "",
            errors=errors,
            next_url=None
            if following is None
            else f"/admin/webhooks/{sub.id}?{query}after={following}",
        )

    on_head = on_get


class DeleteWebhook:
    """``/admin/webhooks/{id}/delete``: unsubscribe; pending deliveries go dead."""

    actions: ClassVar[dict[str, str]] = {"POST": MANAGE}

    def __init__(self, console: Any, service: WebhookService) -> None:
        self._console = console
        self._service = service

    def on_post(self, req: falcon.Request, resp: falcon.Response, webhook_id: uuid.UUID) -> None:
        sub = self._service.delete(webhook_id)
        self._console.redirect(req, resp, "/admin/webhooks", f"Deleted the webhook to {sub.url}.")


class Redeliver:
    """``/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver``: send a delivery again."""

    actions: ClassVar[dict[str, str]] = {"POST": MANAGE}

    def __init__(self, console: Any, service: WebhookService) -> None:
        self._console = console
        self._service = service

    def on_post(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        webhook_id: uuid.UUID,
        delivery_id: uuid.UUID,
    ) -> None:
        # A delivery of this webhook only: the page it was sent again from.
        if self._service.delivery(delivery_id).subscription_id != webhook_id:
            raise NotFound(f"webhook {webhook_id} has no delivery {delivery_id}")
        try:
            self._service.redeliver(delivery_id)
        except Conflict as exc:
            message = f"Not sent again: {exc.detail}"
        else:
            message = "The delivery will be sent again shortly."
        self._console.redirect(req, resp, f"/admin/webhooks/{webhook_id}", message)


def add_pages(console: Any, service: WebhookService) -> None:
    """The webhook pages, under ``/admin/webhooks`` (``webhooks:manage``)."""
    console.add_templates(TEMPLATES)
    console.add_section(
        "/admin/webhooks",
        "Webhooks",
        MANAGE,
        {
            "/admin/webhooks": WebhooksPage(console, service),
            "/admin/webhooks/{webhook_id:uuid}": WebhookPage(console, service),
            "/admin/webhooks/{webhook_id:uuid}/delete": DeleteWebhook(console, service),
            "/admin/webhooks/{webhook_id:uuid}/deliveries/{delivery_id:uuid}/redeliver": (
                Redeliver(console, service)
            ),
        },
    )
