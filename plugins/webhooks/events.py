"""The events a subscription may ask for, and the thin payload each delivery carries.

A payload names what changed, never what it changed to when that is personal:
the target's id, its type, the user it concerns, the names of the changed
fields, who acted, the request, and the after-values of the non-personal
fields (``is_active``, ``deleted_at``, ``version``). A receiver that needs
more reads the user through the API, with its own credentials. So the outbox
holds no personal data: nothing in it needs encrypting, and erasing a user
(purge, shred) leaves nothing of theirs behind in it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import orjson

from userplane.plugin import Change

#: Every event type a subscription may name; ``"*"`` stands for all of them (and any
#: a plugin records later).
EVENT_TYPES: Final = (
    "user.created",
    "user.updated",
    "user.deleted",
    "user.restored",
    "user.purged",
    "group.created",
    "group.updated",
    "group.deleted",
    "group.member_added",
    "group.member_removed",
    "api_key.created",
    "api_key.revoked",
    "encryption.rotated",
    "audit.pruned",
    "webhook.created",
    "webhook.deleted",
    "webhook_delivery.redelivered",
)
ALL: Final = "*"

#: Fields whose after-value a payload carries: none of them is personal (a group's name
#: and roles, an external id and its source, a member's id; a user's custom attributes
#: may be, and are not carried).
_PUBLIC_VALUES: Final = (
    "is_active",
    "deleted_at",
    "version",
    "display_name",
    "roles",
    "external_source",
    "external_id",
    "member",
)


def ordering_key(change: Change) -> str:
    """What orders a receiver's deliveries: the user the change concerns, else its target."""
    if change.user_id is not None:
        return str(change.user_id)
    return f"{change.target_type}:{change.target_id}"


def payload(change: Change, now: datetime) -> str:
    """The JSON body of ``change``'s deliveries (the Standard Webhooks shape), as text."""
    data: dict[str, Any] = {
        "id": change.target_id,
        "target_type": change.target_type,
        "user_id": None if change.user_id is None else str(change.user_id),
        "changed": list(change.changed),
        "actor": change.actor,
        "request_id": change.request_id,
        "change_id": str(change.id),
    }
    for name in _PUBLIC_VALUES:
        field = change.fields.get(name)
        if field is not None and not field.sealed:
            data[name] = field.after
    body = {
        "type": change.action,
        "timestamp": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "data": data,
    }
    return orjson.dumps(body).decode()
