"""Keyset pagination: sort orders and the opaque cursors that walk them.

A page is ordered by one sort field and then by ``id``, so the order is total
and a cursor (the last item's sort key and id) says exactly where the next page
starts: following cursors never repeats or skips a row, whatever is inserted
meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime

import attrs

from userplane.errors import InvalidInput

CURSOR_FIELD = "$.cursor"
SORT_FIELD = "$.sort"

#: The fields a list may be sorted by (``-field`` for descending).
SORT_FIELDS = ("created_at", "email", "full_name")


@attrs.frozen
class Sort:
    """One sort order: a field of ``SORT_FIELDS``, ascending or descending, then ``id``.

    ``email`` sorts by the normalised address and ``full_name`` by the folded name
    (users without a name first), so that the order ignores letter case.
    """

    field: str = "created_at"
    descending: bool = False

    @classmethod
    def parse(cls, text: str) -> Sort:
        """``created_at``, ``-email`` …; anything else is ``InvalidInput`` naming the field."""
        field = text.removeprefix("-")
        if field not in SORT_FIELDS:
            raise InvalidInput.for_field(
                SORT_FIELD,
                f"cannot sort by {field!r}; use one of {', '.join(SORT_FIELDS)} "
                "(with - for descending)",
            )
        return cls(field, text.startswith("-"))

    def __str__(self) -> str:
        return f"-{self.field}" if self.descending else self.field


@attrs.frozen
class Position:
    """A place in a list: the sort key and id of the last item a client has seen.

    ``key`` is a UTC ``datetime`` for ``created_at`` and text for the others.
    A cursor in a personal order (email, name) holds no key (``None``): the
    service reads it from the user ``id`` names before storage sees it.
    """

    key: datetime | str | None
    id: uuid.UUID


def encode_cursor(sort: Sort, position: Position, scope: str = "") -> str:
    """An opaque, URL-safe cursor for ``position`` in ``sort`` order.

    ``[sort, time, id]`` for ``created_at``, ``[sort, id]`` otherwise: a
    cursor never carries an email or a name. ``scope`` names what is listed
    when it is not users (``"groups"``): the sort is written ``groups:created_at``,
    so that a cursor of one list is refused by another, never taken for a place in it.
    """
    parts = [f"{scope}:{sort}" if scope else str(sort), str(position.id)]
    if isinstance(position.key, datetime):
        parts.insert(1, position.key.isoformat())
    raw = json.dumps(parts, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


#: Longer than any cursor this service issues, and than the ones of earlier
#: releases (which carried a folded email or name: 400 characters of at most 4
#: UTF-8 bytes, in base64, plus the sort and the id); those are still read.
MAX_CURSOR = 2400


def decode_cursor(cursor: str, sort: Sort, scope: str = "") -> Position:
    """Parse a cursor made by ``encode_cursor`` for ``sort``; anything else is ``InvalidInput``.

    A cursor is client input: a tampered one must fail as a clean 4xx, never
    reach the database as something unexpected. A cursor of another sort order
    is refused too, since its key means nothing in this one.
    """
    bad = InvalidInput.for_field(CURSOR_FIELD, "not a cursor returned by this service")
    if len(cursor) > MAX_CURSOR:
        raise bad
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise bad
        if len(parts) == 2:
            sort_raw, id_raw = parts
            key_raw = None
        elif len(parts) == 3:
            # Three parts: a time, or the key an earlier release put in (not used).
            sort_raw, key_raw, id_raw = parts
        else:
            raise bad
        key: datetime | str | None = None
        if sort.field == "created_at":
            if key_raw is None:
                raise bad
            created_at = datetime.fromisoformat(key_raw)
            if created_at.tzinfo is None:
                raise bad
            # In UTC, as stored; a time that cannot be expressed in UTC was never issued.
            key = created_at.astimezone(UTC)
        position = Position(key=key, id=uuid.UUID(id_raw))
    except (ValueError, TypeError, UnicodeError, OverflowError, RecursionError, binascii.Error):
        # RecursionError: a cursor decoding to JSON nested past Python's limit.
        raise bad from None
    scope_raw, _, order_raw = sort_raw.rpartition(":")
    if scope_raw != scope:
        raise InvalidInput.for_field(CURSOR_FIELD, "this cursor is for another list")
    if order_raw != str(sort):
        raise InvalidInput.for_field(
            CURSOR_FIELD, f"this cursor pages in {order_raw!r} order, not {str(sort)!r}"
        )
    return position
