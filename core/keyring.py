"""Encryption keys: the named 256-bit keys that seal personal data, and their text format.

A keyring is written as entries ``name:key`` separated by commas or line
breaks, the active key first; ``key`` is 32 bytes in base64 (URL-safe or
standard, padding optional). Lines starting with ``#`` are comments (a key
file may carry notes). ``userplane encryption new-key`` prints an entry.

Two keyrings exist: key-encryption keys (``USERPLANE_ENCRYPTION_KEYS``), which
wrap each user's data key, and blind-index keys
(``USERPLANE_ENCRYPTION_INDEX_KEYS``), under which the normalised email is
hashed for uniqueness and lookups. A plugin (a KMS client) can supply both
through the ``userplane_encryption_keys`` hook instead of the built-in
``encryption_keys`` plugin, which reads them from settings.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

import attrs

#: The size of every key, in bytes (AES-256, HMAC-SHA256).
KEY_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


@attrs.frozen
class NamedKey:
    """One key: its name (stored with what it sealed) and its 32 secret bytes."""

    name: str
    secret: bytes = attrs.field(repr=False)

    def entry(self) -> str:
        """The key as a keyring entry, ``name:base64url``."""
        encoded = base64.urlsafe_b64encode(self.secret).rstrip(b"=").decode("ascii")
        return f"{self.name}:{encoded}"


@attrs.frozen
class Keyring:
    """The keys personal data is sealed with.

    ``keys`` are the key-encryption keys, the active one (which wraps every
    new data key) first; the others still open what they wrapped until
    ``userplane encryption rotate`` has re-wrapped it. ``index_keys`` are the
    blind-index keys, the active one first, then (while re-indexing) the one
    it replaces.
    """

    keys: tuple[NamedKey, ...]
    index_keys: tuple[NamedKey, ...]
    #: The index was the plain email key before the (one) blind-index key: the users of
    #: a database that held them in plaintext are being sealed (a backfill).
    plain_before: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.keys or not self.index_keys:
            raise ValueError("a keyring needs a key-encryption key and a blind-index key")
        if len(self.index_keys) > 2 or (self.plain_before and len(self.index_keys) > 1):
            raise ValueError(
                "give the blind-index key, then the one it replaces (or plain) while re-indexing"
            )
        names = [k.name for k in (*self.keys, *self.index_keys)]
        if len(set(names)) != len(names):
            raise ValueError("every key needs a name of its own")

    @property
    def active(self) -> NamedKey:
        """The key that wraps new data keys."""
        return self.keys[0]

    @property
    def index_key(self) -> NamedKey:
        """The key the blind index is computed under."""
        return self.index_keys[0]

    def key(self, name: str) -> NamedKey | None:
        """The key-encryption key called ``name``, or ``None``."""
        return next((k for k in self.keys if k.name == name), None)


def new_key(name: str) -> NamedKey:
    """A fresh random key called ``name`` (``ValueError`` for a bad name)."""
    check_name(name)
    return NamedKey(name, secrets.token_bytes(KEY_BYTES))


def check_name(name: str) -> str:
    """``name`` if it is 1 to 32 letters, digits, ``-`` or ``_``, and not ``plain``.

    ``plain`` names the index of a database that held its users in plaintext.
    """
    if not _NAME.fullmatch(name) or name == "plain":
        raise ValueError(f"key name {name!r}: use 1 to 32 letters, digits, - or _, not plain")
    return name


def parse_keys(text: str) -> tuple[NamedKey, ...]:
    """The keys of a keyring's text, in order; ``ValueError`` saying what is wrong.

    The message never quotes key material: it names the entry by its position
    and name only.
    """
    entries: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        entries += [e.strip() for e in line.split(",") if e.strip()]
    if not entries:
        raise ValueError("no key given; generate one with `userplane encryption new-key`")
    keys = []
    for position, entry in enumerate(entries, 1):
        name, sep, value = entry.partition(":")
        if not sep:
            raise ValueError(f"entry {position} is not name:key")
        try:
            check_name(name)
        except ValueError:
            raise ValueError(
                f"entry {position}: a key name is 1 to 32 letters, digits, - or _ (not plain)"
            ) from None
        keys.append(NamedKey(name, _decode(value, position, name)))
    names = [k.name for k in keys]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ValueError(f"the name {duplicate!r} is given twice")
    return tuple(keys)


def _decode(value: str, position: int, name: str) -> bytes:
    text = value.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if re.fullmatch(r"[A-Za-z0-9_-]*=*", padded):
            raw = base64.urlsafe_b64decode(padded)
        else:
            raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"entry {position} ({name}): the key is not base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"entry {position} ({name}): a key is {KEY_BYTES} bytes, this one {len(raw)}"
        )
    return raw
