"""Audit events: what one row holds, its canonical JSON and its hash.

An event's hash is the SHA-256 (lower-case hex) of the canonical JSON of
every column but ``hash`` itself, ``seq`` and ``prev_hash`` included, so each
event seals the one before it. Canonical JSON is Python's
``json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8: keys sorted, no spaces, text unescaped but for ``"``, ``\\``
and control characters. ``docs/audit.md`` spells it out for a verifier in any
language. Values are always as stored: ids as lower-case text, times as
RFC 3339 UTC text with six fractional digits (``2026-01-02T03:04:05.123456Z``),
``fields`` as the JSON object it holds (its stored text is its canonical JSON).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs

#: The ``prev_hash`` of the first event ever: 64 zeros.
GENESIS: Final = "0" * 64
#: A user's fields that hold personal data.
PERSONAL_FIELDS: Final = ("email", "full_name")
#: What a personal field's change is stored as with ``USERPLANE_AUDIT_REDACT_PERSONAL``.
REDACTED: Final = {"redacted": True}
#: The columns an event's hash covers, in the order of the table.
HASHED: Final = (
    "seq",
    "id",
    "occurred_at",
    "actor",
    "actor_kind",
    "action",
    "target_type",
    "target_id",
    "user_id",
    "request_id",
    "trace_id",
    "client_address",
    "fields",
    "prev_hash",
)
#: Every column, in the order of the table (and of the statements' select lists).
COLUMNS: Final = (*HASHED, "hash")
#: How an event's time reads in its hash, its export and the SQLite table.
TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def canonical(value: Any) -> bytes:
    """``value`` as canonical JSON (sorted keys, no spaces, UTF-8): what is hashed."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def hash_of(body: Mapping[str, Any]) -> str:
    """The SHA-256, in lower-case hex, of ``body``'s canonical JSON."""
    return hashlib.sha256(canonical(body)).hexdigest()


def time_text(value: datetime) -> str:
    """An aware time as events hold it: RFC 3339 UTC, six fractional digits, ``Z``."""
    return value.astimezone(UTC).strftime(TIME_FORMAT)


@attrs.frozen
class AuditEvent:
    """One stored event, every value as stored (and so as hashed).

    ``fields`` is the JSON object of the changed fields: each name to
    ``{"before": …, "after": …}`` (``"sealed": true`` when the values are
    ciphertexts), or ``{"redacted": true}``. An event read from a tampered
    row may hold anything there: verification says so.
    """

    seq: int
    id: str
    occurred_at: str
    actor: str | None
    actor_kind: str | None
    action: str
    target_type: str
    target_id: str
    user_id: str | None
    request_id: str | None
    trace_id: str | None
    client_address: str | None
    fields: Any
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """Every hashed column, by name."""
        return {name: getattr(self, name) for name in HASHED}

    def computed_hash(self) -> str:
        """The hash this event's columns make; ``hash`` when the row is as written."""
        return hash_of(self.body())

    def stored(self) -> dict[str, Any]:
        """The event as exported: every column, ``fields`` as JSON, sealed values sealed."""
        return {**self.body(), "hash": self.hash}

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> AuditEvent:
        """The inverse of ``stored`` (a line of an export); ``ValueError`` if it is not one."""
        missing = [name for name in COLUMNS if name not in data]
        if missing:
            raise ValueError(f"not an audit event: no {', '.join(missing)}")
        extra = sorted(set(data) - set(COLUMNS))
        if extra:
            raise ValueError(f"not an audit event: unknown {', '.join(extra)}")
        if not isinstance(data["seq"], int) or isinstance(data["seq"], bool):
            raise ValueError("not an audit event: seq is not a whole number")
        return cls(**{name: data[name] for name in COLUMNS})


def fields_json(fields: Mapping[str, Any]) -> str:
    """The stored text of an event's fields: their canonical JSON."""
    return canonical(dict(fields)).decode("utf-8")


def parse_fields(text: str) -> Any:
    """The fields a row's text holds; text that is no JSON is kept as text (hash fails)."""
    try:
        return json.loads(text)
    except ValueError:
        return text
