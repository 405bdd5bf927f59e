"""What the webhooks plugin stores: subscriptions and their deliveries."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Final

import attrs

#: A delivery waits its turn (or its next attempt), reached its receiver, or gave up.
PENDING: Final = "pending"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"
STATUSES: Final = (PENDING, DELIVERED, DEAD)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@attrs.frozen
class Subscription:
    """A receiver's URL, the event types it wants, and the secret its deliveries are signed with."""

    id: uuid.UUID
    url: str
    #: Actions of changes (``"user.created"``), or ``"*"`` for every one.
    events: tuple[str, ...]
    #: ``whsec_`` + base64 of 32 random bytes; empty once the subscription is deleted.
    secret: str = attrs.field(repr=False)
    description: str
    created_at: datetime
    disabled_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        """What listings show: never the secret."""
        return {
            "id": str(self.id),
            "url": self.url,
            "events": list(self.events),
            "description": self.description,
            "created_at": _time(self.created_at),
        }


@attrs.frozen
class Claimed:
    """A delivery a dispatcher claimed: what it needs to send it."""

    seq: int
    id: uuid.UUID
    subscription_id: uuid.UUID
    event_type: str
    payload: str = attrs.field(repr=False)
    #: Attempts made before this one.
    attempts: int


@attrs.frozen
class Delivery:
    """One event for one subscription, in the outbox: its state and its last attempt."""

    seq: int
    id: uuid.UUID
    subscription_id: uuid.UUID
    event_type: str
    payload: str = attrs.field(repr=False)
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    def public(self) -> dict[str, Any]:
        """The delivery as the API and the CLI show it, its (thin) payload included."""
        return {
            "id": str(self.id),
            "seq": self.seq,
            "subscription_id": str(self.subscription_id),
            "type": self.event_type,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": _time(self.next_attempt_at) if self.status == PENDING else None,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "created_at": _time(self.created_at),
            "delivered_at": _time(self.delivered_at),
            "payload": json.loads(self.payload),
        }
