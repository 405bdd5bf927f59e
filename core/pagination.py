"""Keyset pagination: opaque cursors over the ``(created_at, id)`` order."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime

import attrs

from userplane.errors import InvalidInput

CURSOR_FIELD = "$.cursor"


@attrs.frozen
class Position:
    """A place in the list: the sort key of the last item a client has seen."""

    created_at: datetime
    id: uuid.UUID


def encode_cursor(position: Position) -> str:
    """Return an opaque, URL-safe cursor for ``position``."""
    raw = json.dumps([position.created_at.isoformat(), str(position.id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> Position:
    """Parse a cursor made by ``encode_cursor``; anything else is ``InvalidInput``.

    A cursor is client input: a tampered one must fail as a clean 4xx, never
    reach the database as something unexpected.
    """
    bad = InvalidInput.for_field(CURSOR_FIELD, "not a cursor returned by this service")
    if len(cursor) > 200:
        raise bad
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at_raw, id_raw = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(created_at_raw, str) or not isinstance(id_raw, str):
            raise bad
        created_at = datetime.fromisoformat(created_at_raw)
        if created_at.tzinfo is None:
            raise bad
        # In UTC, as stored; a time that cannot be expressed in UTC was never issued.
        position = Position(created_at=created_at.astimezone(UTC), id=uuid.UUID(id_raw))
    except (ValueError, TypeError, UnicodeError, OverflowError, binascii.Error):
        raise bad from None
    return position
