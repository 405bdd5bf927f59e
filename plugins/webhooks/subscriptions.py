"""Managing subscriptions and their deliveries: checks, secrets, records of each change."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import attrs

from userplane.plugin import (
    ChangeRecorder,
    Conflict,
    FieldChange,
    FieldError,
    InvalidInput,
    NotFound,
)
from userplane.plugins.webhooks.addresses import Refused, Resolver, check
from userplane.plugins.webhooks.events import ALL, EVENT_TYPES
from userplane.plugins.webhooks.records import STATUSES, Delivery, Subscription
from userplane.plugins.webhooks.store import WebhookStore

MAX_EVENTS: Final = 50
MAX_DESCRIPTION: Final = 200
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
#: The fields a new subscription takes.
FIELDS: Final = ("url", "events", "description")


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def url_for_record(url: str) -> str:
    """``url`` as an audit event keeps it: without its query, which often carries a token.

    Auditors read records (and receivers get their thin payloads); the query
    is shown as ``?…``, so that a reader sees there was one.
    """
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="…" if parts.query else ""))


@attrs.frozen
class DeliveryPage:
    """A page of deliveries, newest first; ``next`` is the cursor of the one after."""

    items: list[Delivery]
    next: str | None


def known_events() -> str:
    """The event types a subscription may name, for error messages."""
    return ", ".join((ALL, *EVENT_TYPES))


def check_events(events: Any, field: str = "$.events") -> tuple[list[str], list[FieldError]]:
    """``events`` as a list of known types (duplicates dropped), and an error for each fault."""
    if not isinstance(events, list) or not events:
        return [], [FieldError(field, "must be a non-empty list of event types")]
    if len(events) > MAX_EVENTS:
        return [], [FieldError(field, f"must list at most {MAX_EVENTS} event types")]
    out: list[str] = []
    errors = []
    for i, event in enumerate(events):
        if not isinstance(event, str):
            errors.append(FieldError(f"{field}[{i}]", "must be a string"))
        elif event != ALL and event not in EVENT_TYPES:
            shown = event if len(event) <= 64 and event.isprintable() else event[:64] + "…"
            errors.append(
                FieldError(
                    f"{field}[{i}]", f"unknown event type {shown!r}; known: {known_events()}"
                )
            )
        elif event not in out:
            out.append(event)
    return out, errors


class WebhookService:
    """Create, list and delete subscriptions; list and redeliver their deliveries."""

    def __init__(
        self,
        store: WebhookStore,
        changes: Callable[[], ChangeRecorder],
        *,
        allow_private: bool,
        resolver: Resolver,
        resolve_timeout_s: float,
    ) -> None:
        self._store = store
        self._changes = changes
        self._allow_private = allow_private
        self._resolver = resolver
        self._resolve_timeout_s = resolve_timeout_s

    def create(self, data: Mapping[str, Any]) -> Subscription:
        """A new subscription from ``{"url", "events", "description"}``; its secret is in it.

        Every fault is named at once (``$.url``, ``$.events[1]``…); the URL is
        refused when it is no http(s) URL, carries credentials, does not
        resolve, or resolves to an address that is not public (unless allowed).
        """
        errors = [FieldError(f"$.{k}", "unknown field") for k in data if k not in FIELDS]
        url = data.get("url")
        if not isinstance(url, str):
            errors.append(FieldError("$.url", "is required: the http(s) URL to send events to"))
        else:
            try:
                check(
                    url,
                    allow_private=self._allow_private,
                    resolver=self._resolver,
                    timeout=self._resolve_timeout_s,
                )
            except Refused as exc:
                errors.append(FieldError("$.url", str(exc)))
        if "events" not in data:
            errors.append(FieldError("$.events", "is required: a list of event types"))
            events: list[str] = []
        else:
            events, event_errors = check_events(data["events"])
            errors += event_errors
        description = data.get("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            errors.append(
                FieldError("$.description", f"must be text of {MAX_DESCRIPTION} characters at most")
            )
        elif any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in description):
            errors.append(FieldError("$.description", "must not contain control characters"))
        elif any(0xD800 <= ord(c) <= 0xDFFF for c in description):
            # A lone surrogate: bytes the CLI's argv could not decode. No database takes it.
            errors.append(FieldError("$.description", "must be valid Unicode text"))
        if errors:
            raise InvalidInput.from_errors(errors)
        assert isinstance(url, str)
        recorder = self._changes()
        with recorder.writing():
            sub = self._store.insert_subscription(
                uuid.uuid4(), url, events, new_secret(), description
            )
            # Never the secret: records are read by auditors and sent to receivers.
            recorder.record(
                "webhook.created",
                "webhook",
                str(sub.id),
                {
                    "url": FieldChange(None, url_for_record(sub.url)),
                    "events": FieldChange(None, list(sub.events)),
                    "description": FieldChange(None, sub.description),
                },
            )
        return sub

    def list(self) -> list[Subscription]:
        """Every live subscription, oldest first."""
        return self._store.list_subscriptions()

    def get(self, sub_id: uuid.UUID) -> Subscription:
        """The live subscription; ``NotFound`` otherwise."""
        sub = self._store.get_subscription(sub_id)
        if sub is None:
            raise NotFound(f"no webhook subscription with id {sub_id}")
        return sub

    def delete(self, sub_id: uuid.UUID) -> Subscription:
        """Delete it: no more deliveries (pending ones go dead), its secret forgotten."""
        recorder = self._changes()
        with recorder.writing():
            sub = self._store.disable_subscription(sub_id)
            if sub is None:
                raise NotFound(f"no webhook subscription with id {sub_id}")
            recorder.record(
                "webhook.deleted",
                "webhook",
                str(sub.id),
                {"disabled_at": FieldChange(None, _iso(sub))},
            )
        return sub

    def deliveries(
        self,
        subscription_id: uuid.UUID | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int | str | None = None,
    ) -> DeliveryPage:
        """A page of deliveries, newest first; ``InvalidInput`` naming each bad filter.

        ``cursor`` is the ``next`` of the page before; ``limit`` (1 to
        ``MAX_LIMIT``) may be query text.
        """
        errors = []
        size = DEFAULT_LIMIT if limit is None else limit
        if isinstance(size, str):
            size = int(size) if size.isascii() and size.isdigit() and len(size) < 6 else 0
        if status is not None and status not in STATUSES:
            errors.append(FieldError("$.status", f"must be one of: {', '.join(STATUSES)}"))
        before = None
        if cursor is not None:
            if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18 or int(cursor) < 1:
                errors.append(FieldError("$.cursor", "must be the `next` of a previous page"))
            else:
                before = int(cursor)
        if not 1 <= size <= MAX_LIMIT:
            errors.append(FieldError("$.limit", f"must be a whole number from 1 to {MAX_LIMIT}"))
        if errors:
            raise InvalidInput.from_errors(errors)
        if subscription_id is not None and not self._store.subscription_known(subscription_id):
            raise NotFound(f"no webhook subscription with id {subscription_id}")
        items = self._store.list_deliveries(subscription_id, status, before, size + 1)
        more = len(items) > size
        items = items[:size]
        return DeliveryPage(items, str(items[-1].seq) if more else None)

    def delivery(self, delivery_id: uuid.UUID) -> Delivery:
        """One delivery, whatever its state; ``NotFound`` if there is none."""
        delivery = self._store.get_delivery(delivery_id)
        if delivery is None:
            raise NotFound(f"no webhook delivery with id {delivery_id}")
        return delivery

    def redeliver(self, delivery_id: uuid.UUID) -> Delivery:
        """A dead or delivered delivery back to pending, its attempts reset, due now."""
        delivery = self._store.get_delivery(delivery_id)
        if delivery is None:
            raise NotFound(f"no webhook delivery with id {delivery_id}")
        if self._store.get_subscription(delivery.subscription_id) is None:
            raise Conflict("its subscription was deleted: the delivery cannot be sent again")
        recorder = self._changes()
        with recorder.writing():
            if not self._store.redeliver(delivery_id):
                raise Conflict("the delivery is pending already: it will be sent (again) when due")
            redelivered = self._store.get_delivery(delivery_id)
            assert redelivered is not None
            recorder.record(
                "webhook_delivery.redelivered",
                "webhook_delivery",
                str(delivery_id),
                {
                    "status": FieldChange(delivery.status, redelivered.status),
                    "attempts": FieldChange(delivery.attempts, redelivered.attempts),
                },
            )
        return redelivered


def _iso(sub: Subscription) -> str | None:
    return None if sub.disabled_at is None else sub.disabled_at.isoformat().replace("+00:00", "Z")
