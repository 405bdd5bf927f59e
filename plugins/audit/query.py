"""Reading the trail: the query ``GET /api/v1/audit`` and ``audit list`` take, and its cursors.

Both frontends hand over the parameters as text (``parse_query``), so a bad
one fails alike, as ``InvalidInput`` naming ``$.<parameter>``. Pages are
keyset pages by ``seq``; a cursor is the last seq a page showed and its
order, opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs

from userplane.plugin import FieldError, InvalidInput


@attrs.frozen
class EventFilter:
    """What ``GET /api/v1/audit`` and ``audit list`` select by; ``None``: any."""

    target_type: str | None = None
    target_id: str | None = None
    user_id: uuid.UUID | None = None
    actor: str | None = None
    action: str | None = None
    #: Events at or after this time.
    since: datetime | None = None
    #: Events before this time.
    until: datetime | None = None


DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: The orders a list may come in: oldest first, or newest first.
SORTS: Final = ("seq", "-seq")
#: The longest value a text filter takes (a principal id, an action, a target id).
MAX_TEXT: Final = 1024
#: Every parameter of a list.
PARAMS: Final = frozenset(
    {
        "limit",
        "cursor",
        "sort",
        "target_type",
        "target_id",
        "user_id",
        "actor",
        "action",
        "since",
        "until",
    }
)
_TEXT_FILTERS: Final = ("target_type", "target_id", "actor", "action")
# RFC 3339 date-time (section 5.6): a time zone is required.
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_CURSOR: Final = re.compile(r"(-?)seq:([1-9][0-9]{0,17})")


@attrs.frozen
class AuditQuery:
    """One page's worth of a list: filters, order, size and where it starts."""

    flt: EventFilter = attrs.Factory(EventFilter)
    limit: int = DEFAULT_LIMIT
    descending: bool = False
    #: The seq the page continues after (from the cursor), or ``None``: from the start.
    after: int | None = None


def encode_cursor(seq: int, descending: bool) -> str:
    """An opaque, URL-safe cursor: continue after ``seq`` in this order."""
    raw = f"{'-' if descending else ''}seq:{seq}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, descending: bool) -> int:
    """The seq a cursor continues after; ``InvalidInput`` naming ``$.cursor`` otherwise."""
    bad = InvalidInput.for_field("$.cursor", "not a cursor returned by this service")
    if len(cursor) > 64:
        raise bad
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode("ascii"))
        match = _CURSOR.fullmatch(raw.decode("ascii"))
    except (ValueError, UnicodeError, binascii.Error):
        raise bad from None
    if match is None:
        raise bad
    if bool(match[1]) != descending:
        raise InvalidInput.for_field(
            "$.cursor",
            f"this cursor pages in {'-seq' if match[1] else 'seq'!r} order, "
            f"not {'-seq' if descending else 'seq'!r}",
        )
    return int(match[2])


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (``2026-01-02T03:04:05Z``, any offset) in UTC; ``ValueError`` else.

    Every time RFC 3339 can spell is taken: a leap second reads as the last
    instant of its minute, and times beyond what Python holds (year 0, or an
    offset past the calendar's end) as its first or last instant.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("must be an RFC 3339 time with a time zone, like 2026-01-02T03:04:05Z")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "").ljust(6, "0")[:6])
    if second == "60":  # a leap second: the last instant of the minute
        second, micro = "59", 999_999
    offset = timedelta(0)
    if zone not in ("Z", "z"):
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError("has no such time zone offset")
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
    try:
        value = datetime(
            max(int(year), 1),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            micro,
            tzinfo=UTC,
        )
    except ValueError:
        raise ValueError("is not a time that exists (check the month, day and hour)") from None
    if int(year) == 0:
        return datetime.min.replace(tzinfo=UTC)
    try:
        return value - offset
    except OverflowError:
        edge = datetime.min if offset > timedelta(0) else datetime.max
        return edge.replace(tzinfo=UTC)


def parse_query(values: Mapping[str, str]) -> AuditQuery:
    """A query from text parameters; every one at fault named at once (``InvalidInput``)."""
    errors = [
        FieldError(f"$.{name}", "unknown query parameter") for name in values if name not in PARAMS
    ]
    limit = DEFAULT_LIMIT
    if "limit" in values:
        text = values["limit"].strip()
        if not re.fullmatch(r"[0-9]{1,9}", text):
            errors.append(FieldError("$.limit", "must be a whole number"))
        else:
            limit = int(text)
            if not 1 <= limit <= MAX_LIMIT:
                errors.append(FieldError("$.limit", f"must be between 1 and {MAX_LIMIT}"))
    sort = values.get("sort", "seq")
    if sort not in SORTS:
        errors.append(FieldError("$.sort", "must be seq (oldest first) or -seq (newest first)"))
    descending = sort == "-seq"
    texts: dict[str, str] = {}
    for name in _TEXT_FILTERS:
        if name not in values:
            continue
        value = values[name]
        if not 1 <= len(value) <= MAX_TEXT or "\x00" in value:
            errors.append(FieldError(f"$.{name}", f"must be 1 to {MAX_TEXT} characters, no NUL"))
        else:
            texts[name] = value
    user_id = None
    if "user_id" in values:
        try:
            user_id = uuid.UUID(values["user_id"])
        except ValueError:
            errors.append(FieldError("$.user_id", "must be a UUID"))
    times: dict[str, datetime] = {}
    for name in ("since", "until"):
        if name in values:
            try:
                times[name] = parse_time(values[name])
            except ValueError as exc:
                errors.append(FieldError(f"$.{name}", str(exc)))
    after = None
    if "cursor" in values and sort in SORTS:
        try:
            after = decode_cursor(values["cursor"], descending)
        except InvalidInput as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidInput.from_errors(errors)
    flt = EventFilter(
        target_type=texts.get("target_type"),
        target_id=texts.get("target_id"),
        user_id=user_id,
        actor=texts.get("actor"),
        action=texts.get("action"),
        since=times.get("since"),
        until=times.get("until"),
    )
    return AuditQuery(flt=flt, limit=limit, descending=descending, after=after)
