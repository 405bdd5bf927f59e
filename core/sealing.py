"""Sealing personal fields: envelope encryption with AES-256-GCM and a blind index.

Every user has a data key of its own (32 random bytes), wrapped by the active
key-encryption key of the ``Keyring``; the user's personal fields are sealed
under the data key. Each ciphertext is bound, as associated data, to the
user's id and the field's name, so a ciphertext copied to another row or
column fails to open instead of showing another user's data. Destroying a
user's row destroys its data key: what was sealed under it anywhere else (a
stored idempotent response) is unreadable from then on.

Stored forms (text, so that any storage takes them):

- email: ``upe1:<key name>:<wrapped data key>:<ciphertext>``, the data key
  travelling with the one field every user has;
- full name: ``upe1:<ciphertext>``;
- a stored response body: the bytes ``upe1:`` then nonce and ciphertext.

Each ciphertext is a 12-byte random nonce then AES-GCM's output, in URL-safe
base64 without padding. A data key seals a handful of values over its life,
so random nonces are far from any collision bound.

The blind index is the full HMAC-SHA256 (43 characters of base64) of the email key
(``userplane.emails.normalize_email``) under the blind-index key: equal for
equal keys, so the unique index and exact lookups work on it, and useless for
anything else (no order, no substrings).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from userplane.errors import Undecryptable
from userplane.keyring import KEY_BYTES, Keyring, NamedKey
from userplane.users import User

PREFIX = "upe1:"
_BODY_PREFIX = PREFIX.encode("ascii")
_NONCE = 12
#: The personal fields of a user, sealed whenever encryption is on.
SEALED_FIELDS = ("email", "full_name")


def blind_index(secret: bytes, email_key: str) -> str:
    """HMAC-SHA256 of ``email_key`` under ``secret``, whole, in URL-safe base64 (43 characters).

    Not hex: the index is a third smaller, and every insert pays for its size.
    """
    data = email_key.encode("utf-8", "surrogatepass")
    return _b64(hmac.new(secret, data, hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_sealed(value: str | None) -> bool:
    """Whether a stored text value is in a sealed form."""
    return value is not None and value.startswith(PREFIX)


def is_sealed_body(body: bytes) -> bool:
    """Whether a stored response body is in the sealed form."""
    return body.startswith(_BODY_PREFIX)


def key_name(email: str) -> str | None:
    """The name of the key that wraps the data key in a stored email, or ``None`` if plain."""
    if not is_sealed(email):
        return None
    parts = email.split(":")
    return parts[1] if len(parts) == 4 else None


@attrs.frozen
class DataKey:
    """A user's data key, open, and as stored (wrapped: ``<key name>:<base64>``)."""

    secret: bytes = attrs.field(repr=False)
    wrapped: str
    #: The cipher under ``secret``, made once per user rather than once per value.
    aead: AESGCM = attrs.field(init=False, repr=False, eq=False)

    @aead.default
    def _aead(self) -> AESGCM:
        return AESGCM(self.secret)


def _field_aad(field: str, user_id: uuid.UUID) -> bytes:
    return f"userplane:{field}:".encode() + user_id.bytes


class Sealer:
    """Seals and opens the personal fields of users under one ``Keyring``."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._keks = {k.name: AESGCM(k.secret) for k in keyring.keys}
        self._index_secret = keyring.index_key.secret

    # -- the blind index ---------------------------------------------------------

    def blind_index(self, email_key: str) -> str:
        """The blind index of an email key: HMAC-SHA256 under the index key (``blind_index``)."""
        return blind_index(self._index_secret, email_key)

    @staticmethod
    def index_under(key: NamedKey) -> Callable[[str], str]:
        """The blind index under ``key`` (one of the keyring's index keys), as a function."""
        return functools.partial(blind_index, key.secret)

    def keyed_digests(self, text: str) -> tuple[str, ...]:
        """HMAC-SHA256s of ``text`` under each index key, in their own domain: 64 hex digits.

        For what must be compared but not read, such as a request's
        fingerprint (a hash of a body holding an email, which anyone could
        confirm a guess against were it unkeyed). The first, under the active
        index key, is what to store; the others (under the key it replaces,
        or ``text`` itself before a backfill) are what may already be stored.
        """
        data = b"userplane:digest:" + text.encode("utf-8", "surrogatepass")
        digests = tuple(
            hmac.new(k.secret, data, hashlib.sha256).hexdigest() for k in self.keyring.index_keys
        )
        return (*digests, text) if self.keyring.plain_before else digests

    # -- data keys ------------------------------------------------------------------

    def new_data_key(self, user_id: uuid.UUID) -> DataKey:
        """A fresh data key for ``user_id``, wrapped by the active key."""
        secret = secrets.token_bytes(KEY_BYTES)
        return DataKey(secret, self._wrap(user_id, secret))

    def _wrap(self, user_id: uuid.UUID, secret: bytes) -> str:
        active = self.keyring.active.name
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._keks[active].encrypt(nonce, secret, b"userplane:data-key:" + user_id.bytes)
        return f"{active}:{_b64(nonce + sealed)}"

    def data_key(self, user_id: uuid.UUID, email: str) -> DataKey:
        """The data key carried by ``user_id``'s stored (sealed) email."""
        parts = email.split(":") if is_sealed(email) else []
        if len(parts) != 4:
            raise self._broken(user_id, "email", "is not in the sealed form")
        name, wrapped = parts[1], parts[2]
        kek = self._keks.get(name)
        if kek is None:
            raise Undecryptable(
                f"the data of user {user_id} is sealed under key {name!r}, "
                "which the keyring does not hold"
            )
        try:
            raw = _unb64(wrapped)
            secret = kek.decrypt(raw[:_NONCE], raw[_NONCE:], b"userplane:data-key:" + user_id.bytes)
        except (InvalidTag, ValueError, binascii.Error):
            raise self._broken(user_id, "data key") from None
        return DataKey(secret, f"{name}:{wrapped}")

    def rewrap(self, user_id: uuid.UUID, key: DataKey) -> DataKey:
        """``key`` wrapped by the active key (itself if it already is)."""
        if key.wrapped.partition(":")[0] == self.keyring.active.name:
            return key
        return DataKey(key.secret, self._wrap(user_id, key.secret))

    def rewrapped(self, user_id: uuid.UUID, email: str) -> str | None:
        """``email`` (stored, sealed) with its data key wrapped by the active key.

        ``None`` when it already is. The ciphertext is kept as it is: only the
        data key's wrapping changes.
        """
        name = key_name(email)
        if name == self.keyring.active.name:
            return None
        key = self.data_key(user_id, email)
        ciphertext = email.split(":")[3]
        return f"{PREFIX}{self._wrap(user_id, key.secret)}:{ciphertext}"

    # -- fields ----------------------------------------------------------------------

    def seal_value(self, user_id: uuid.UUID, key: DataKey, field: str, value: str) -> str:
        """``value`` of ``field`` sealed under ``key``, in its stored form."""
        nonce = secrets.token_bytes(_NONCE)
        data = value.encode("utf-8", "surrogatepass")
        sealed = _b64(nonce + key.aead.encrypt(nonce, data, _field_aad(field, user_id)))
        if field == "email":
            return f"{PREFIX}{key.wrapped}:{sealed}"
        return f"{PREFIX}{sealed}"

    def open_value(self, user_id: uuid.UUID, key: DataKey, field: str, stored: str) -> str:
        """The clear text of a stored ``field``; ``Undecryptable`` naming the user if it fails."""
        parts = stored.split(":") if is_sealed(stored) else []
        if len(parts) != (4 if field == "email" else 2):
            raise self._broken(user_id, field, "is not in the sealed form")
        try:
            raw = _unb64(parts[-1])
            data = key.aead.decrypt(raw[:_NONCE], raw[_NONCE:], _field_aad(field, user_id))
            return data.decode("utf-8", "surrogatepass")
        except (InvalidTag, ValueError, binascii.Error):
            raise self._broken(user_id, field) from None

    def seal_fields(
        self, user_id: uuid.UUID, key: DataKey, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``fields`` with each personal one sealed (``None`` stays ``None``)."""
        out = dict(fields)
        for field in SEALED_FIELDS:
            value = out.get(field)
            if isinstance(value, str):
                out[field] = self.seal_value(user_id, key, field, value)
        return out

    def seal_user(self, user: User, key: DataKey) -> User:
        """``user`` with its personal fields sealed under ``key``."""
        return attrs.evolve(user, **self.seal_fields(user.id, key, _personal(user)))

    def open_user(self, stored: User) -> User:
        """``stored`` with its personal fields opened; ``Undecryptable`` naming the user."""
        key = self.data_key(stored.id, stored.email)
        return attrs.evolve(
            stored,
            email=self.open_value(stored.id, key, "email", stored.email),
            full_name=None
            if stored.full_name is None
            else self.open_value(stored.id, key, "full_name", stored.full_name),
        )

    # -- stored responses ---------------------------------------------------------------

    def seal_body(self, user_id: uuid.UUID, key: DataKey, record: str, body: bytes) -> bytes:
        """A stored response ``body`` about ``user_id`` sealed under its data key."""
        nonce = secrets.token_bytes(_NONCE)
        aad = b"userplane:response:" + user_id.bytes + record.encode("ascii", "replace")
        return _BODY_PREFIX + nonce + key.aead.encrypt(nonce, body, aad)

    def open_body(self, user_id: uuid.UUID, key: DataKey, record: str, body: bytes) -> bytes:
        """The clear ``body`` of a stored response sealed by ``seal_body``."""
        if not body.startswith(_BODY_PREFIX):
            raise self._broken(user_id, "stored response", "is not in the sealed form")
        raw = body[len(_BODY_PREFIX) :]
        aad = b"userplane:response:" + user_id.bytes + record.encode("ascii", "replace")
        try:
            return key.aead.decrypt(raw[:_NONCE], raw[_NONCE:], aad)
        except InvalidTag:
            raise self._broken(user_id, "stored response") from None

    @staticmethod
    def _broken(user_id: uuid.UUID, field: str, why: str = "fails authentication") -> Undecryptable:
        reason = (
            f"{why}: it was altered, copied from another row or column, or sealed under other keys"
            if why == "fails authentication"
            else why
        )
        return Undecryptable(f"the stored {field} of user {user_id} {reason}")


def _personal(user: User) -> dict[str, Any]:
    return {"email": user.email, "full_name": user.full_name}
