"""API keys: their format, the record storage keeps, and their life cycle.

A key reads ``up_`` + 12 characters of lookup id + 32 of secret, all base62
(``up_`` makes leaked keys easy for secret scanners to recognise). Storage
keeps the lookup id, to find the record, and a SHA-256 of the whole key, never
the key itself. The secret is ~190 random bits, so a fast hash is enough: no
guessing attack can walk that space, and a slow hash would cost every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import string
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from userplane.plugin import (
    FieldChange,
    FieldError,
    InvalidInput,
    NotFound,
    check_may_grant,
)

if TYPE_CHECKING:
    from userplane.plugin import ChangeRecorder, Principal
    from userplane.plugins.api_keys.store import ApiKeyStore

KEY_PREFIX = "up_"
LOOKUP_LENGTH = 12
SECRET_LENGTH = 32
MAX_NAME = 100
_ALPHABET = string.ascii_letters + string.digits
_SHAPE = re.compile(rf"up_[A-Za-z0-9]{{{LOOKUP_LENGTH + SECRET_LENGTH}}}")


@attrs.frozen
class ApiKey:
    """A stored API key: everything but the key itself."""

    id: uuid.UUID
    name: str
    role: str
    #: The key's public lookup id (its first characters after ``up_``).
    lookup: str
    secret_hash: str = attrs.field(repr=False)
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def usable_at(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def public(self) -> dict[str, object]:
        """What listings show: never the hash."""
        return {
            "id": str(self.id),
            "name": self.name,
            "role": self.role,
            "prefix": f"{KEY_PREFIX}{self.lookup}",
            "created_at": self.created_at.isoformat(),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
            "last_used_at": None if self.last_used_at is None else self.last_used_at.isoformat(),
        }


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def lookup_of(key: str) -> str | None:
    """The lookup id of a well-formed key, else ``None``."""
    if not _SHAPE.fullmatch(key):
        return None
    return key[len(KEY_PREFIX) : len(KEY_PREFIX) + LOOKUP_LENGTH]


def matches(key: str, record: ApiKey) -> bool:
    """Whether ``key`` is ``record``'s key, compared in constant time."""
    return hmac.compare_digest(hash_key(key), record.secret_hash)


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


#: The fields of a key its records show (never its secret hash or use times).
_RECORDED = ("name", "role", "prefix", "expires_at", "revoked_at")


def check_grantable(
    by: Principal | None, role: str, roles: Mapping[str, Collection[str]], doing: str
) -> None:
    """``Forbidden`` unless ``by``'s roles grant every action of ``role`` (``by=None``: no check).

    The rule against privilege escalation through keys: a principal may
    create, or revoke, only keys whose role grants nothing it does not hold
    itself. ``doing`` names the act, for the message.
    """
    check_may_grant(by, (role,), roles, f"{doing} a key with role")


class ApiKeyService:
    """Create, list and revoke keys. Authentication with them is the api-keys plugin's."""

    def __init__(
        self,
        storage: ApiKeyStore,
        roles: Mapping[str, Collection[str]],
        clock: Callable[[], datetime],
        changes: ChangeRecorder | None = None,
    ) -> None:
        self._storage = storage
        self._roles = roles
        self._clock = clock
        self._changes = changes

    def input_errors(
        self, name: str | None, role: str | None, expires_in: timedelta | None = None
    ) -> list[FieldError]:
        """What is wrong with these values of a new key (``None``: not judged), by field.

        The fields are ``name``, ``role`` and ``expires``; a frontend names
        them as its users know them.
        """
        errors = []
        if name is not None and (
            not name.strip() or len(name) > MAX_NAME or not name.isprintable()
        ):
            errors.append(FieldError("name", f"must be 1 to {MAX_NAME} printable characters"))
        if role is not None and role not in self._roles:
            known = ", ".join(sorted(self._roles))
            errors.append(FieldError("role", f"must be one of: {known}"))
        if expires_in is not None and expires_in <= timedelta(0):
            errors.append(FieldError("expires", "must be in the future"))
        return errors

    def create(
        self,
        name: str,
        role: str,
        expires_in: timedelta | None = None,
        *,
        by: Principal | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret text, which is shown once and never stored.

        With ``by``, the principal asking: ``Forbidden`` unless its roles grant
        every action of ``role`` (``check_grantable``), judged after the input.
        """
        errors = self.input_errors(name, role, expires_in)
        now = self._clock()
        expires_at = None
        if expires_in is not None and not errors:
            try:
                expires_at = now + expires_in
            except OverflowError:
                errors.append(FieldError("expires", "is beyond the calendar's last day"))
        if errors:
            raise InvalidInput.from_errors(errors)
        check_grantable(by, role, self._roles, "create")
        lookup = _random(LOOKUP_LENGTH)
        key = f"{KEY_PREFIX}{lookup}{_random(SECRET_LENGTH)}"
        record = ApiKey(
            id=uuid.uuid4(),
            name=name,
            role=role,
            lookup=lookup,
            secret_hash=hash_key(key),
            created_at=now,
            expires_at=expires_at,
        )
        with self._writing():
            self._storage.insert_api_key(record)
            self._record("api_key.created", record, None, record.public())
        return record, key

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self._changes is None else self._changes.writing()

    def _record(
        self,
        action: str,
        record: ApiKey,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any],
    ) -> None:
        """Record what changed of a key: never its secret (its hash is not in ``public()``)."""
        if self._changes is None:
            return
        fields = {
            name: FieldChange(None if before is None else before.get(name), value)
            for name, value in after.items()
            if name in _RECORDED and (before is None or before.get(name) != value)
        }
        self._changes.record(action, "api_key", str(record.id), fields)

    def list(self) -> list[ApiKey]:
        """Every key, oldest first, revoked ones included."""
        return self._storage.list_api_keys()

    def page(
        self, limit: int, after: tuple[datetime, uuid.UUID] | None = None
    ) -> tuple[Sequence[ApiKey], ApiKey | None]:
        """Up to ``limit`` keys in ``list`` order, from just after ``after`` (created_at, id).

        Also the last key shown when more follow (where the next page starts), else ``None``.
        """
        rows = self._storage.list_api_keys_page(limit + 1, after)
        if len(rows) > limit:
            return rows[:limit], rows[limit - 1]
        return rows, None

    def get(self, key_id: uuid.UUID) -> ApiKey:
        """The key with this id (revoked or expired ones too); ``NotFound`` otherwise."""
        record = self._storage.get_api_key_by_id(key_id)
        if record is None:
            raise NotFound(f"no API key with id {key_id}")
        return record

    def revoke(self, key_id: uuid.UUID, *, by: Principal | None = None) -> ApiKey:
        """Revoke a key (again is fine); ``NotFound`` if there is no such key.

        With ``by``, the principal asking: ``Forbidden`` unless its roles grant
        every action of the key's role (``check_grantable``).
        """
        if by is not None:
            check_grantable(by, self.get(key_id).role, self._roles, "revoke")
        now = self._clock()
        with self._writing():
            before = self._storage.get_api_key_by_id(key_id)
            record = self._storage.revoke_api_key(key_id, now)
            if record is None:
                raise NotFound(f"no API key with id {key_id}")
            # Recorded once: by the call whose time the key kept (a second revoke changes nothing).
            if before is not None and before.revoked_at is None and record.revoked_at == now:
                self._record("api_key.revoked", record, before.public(), record.public())
        return record
