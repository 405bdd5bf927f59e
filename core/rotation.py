"""Key rotation: re-wrapping every user's data key under the active key, online.

Only the wrapping of each data key changes (a few dozen bytes per user); the
sealed fields and their ciphertexts stay, so rotation is cheap and needs no
re-encryption. Each user is resealed with one statement conditional on the
version it was read at (``Storage.reseal_user``): a concurrent write wins, and
the user is read again and resealed, so rotation never loses a write. Users are
walked in ``created_at`` order in batches; an interrupted run is resumed by
running it again (users already under the active key cost a read, no write).

A pass can miss a user written meanwhile by a process that read its data key
before the pass resealed it; rotation therefore repeats passes until one
finds nothing to do, then retires the other keys, which may then leave the
keyring.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import attrs

from userplane.errors import ConfigurationError
from userplane.pagination import Position, Sort
from userplane.sealing import Sealer, key_name
from userplane.storage import Storage
from userplane.users import User, UserFilter

#: Passes after which rotation gives up: writers keep sealing under an old key.
MAX_PASSES = 5


@attrs.frozen
class RotationReport:
    """What a rotation did: users seen (largest pass), re-wrapped, passes run, keys retired."""

    scanned: int
    rewrapped: int
    passes: int
    retired: tuple[str, ...]


def _reseal(storage: Storage, sealer: Sealer, user: User | None) -> bool:
    """Re-wrap one user's data key; ``True`` if this changed the stored row."""
    while user is not None:
        email = sealer.rewrapped(user.id, user.email)
        if email is None:
            return False
        if storage.reseal_user(user.id, user.version, {"email": email}, None):
            return True
        user = storage.get_user(user.id, True)  # written meanwhile: read it again
    return False


def rotate(
    storage: Storage,
    sealer: Sealer,
    now: Callable[[], datetime],
    *,
    batch: int = 500,
    progress: Callable[[int], None] = lambda _: None,
) -> RotationReport:
    """Re-wrap every data key under ``sealer``'s active key, then retire the other keys.

    ``storage`` is the inner (unsealed) storage; ``progress(n)`` is told of
    every ``n`` users scanned. Raises ``ConfigurationError`` if writers keep
    sealing under old keys for ``MAX_PASSES`` passes (an instance still runs
    with the old keyring).
    """
    scanned = rewrapped = passes = 0
    while passes < MAX_PASSES:
        passes += 1
        seen = 0
        changed = 0
        after: Position | None = None
        while True:
            page = storage.list_users(UserFilter(include_deleted=True), Sort(), after, batch)
            for user in page:
                changed += _reseal(storage, sealer, user)
            seen += len(page)
            progress(len(page))
            if len(page) < batch:
                break
            after = Position(page[-1].created_at, page[-1].id)
        rewrapped += changed
        scanned = max(scanned, seen)
        if changed == 0:
            break
    if changed:
        raise ConfigurationError(
            f"users were still sealed under old keys after {MAX_PASSES} passes: "
            "is every instance running with the new keyring (the new key first)?"
        )
    active = sealer.keyring.active.name
    retired = []
    for record in storage.key_records():
        if record.purpose == "kek" and record.retired_at is None and record.name != active:
            storage.retire_key_record(record.name, now())
            retired.append(record.name)
    return RotationReport(scanned, rewrapped, passes, tuple(retired))


def sealed_under(storage: Storage, user_id: uuid.UUID) -> str | None:
    """The name of the key that wraps ``user_id``'s data key, ``None`` if plain or gone."""
    user = storage.get_user(user_id, True)
    return None if user is None else key_name(user.email)
