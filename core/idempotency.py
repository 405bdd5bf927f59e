"""Idempotent retries: a request repeated with the same key gets the first answer again.

A client that sends ``Idempotency-Key`` with a create may retry it after a
timeout or a dropped connection without creating a second user. The key is
claimed in storage before the work is done (the database decides which of two
concurrent requests owns it), and the successful response is stored with it
for ``ttl``. Failures are not stored: the key is released, and a retry runs
the request again.

Storage keeps each key as the SHA-256 (64 hex digits) of the caller's scope and
the key, never as the text: a principal's id has no bound (a token's subject
may run to kilobytes), and an index entry has one.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from userplane.errors import Conflict, InvalidInput

if TYPE_CHECKING:
    from userplane.storage import Storage

KEY_FIELD = "Idempotency-Key"
MAX_KEY_LENGTH = 255


@attrs.frozen
class StoredResponse:
    """A response as it is replayed: status, the headers that matter, and the body.

    ``user_id`` is the user the response is about (a created user), so that
    purging the user purges the response too: it holds the user's email and
    name, and must not outlive it.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    user_id: uuid.UUID | None = None


@attrs.frozen
class IdempotencyRecord:
    """A claimed key: the request's fingerprint and, once done, its response."""

    fingerprint: str
    response: StoredResponse | None


def check_key(key: str) -> str:
    """``key`` if it is 1 to 255 printable ASCII characters, else ``InvalidInput``."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " < c <= "~" for c in key):
        raise InvalidInput.for_field(
            KEY_FIELD, f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters without spaces"
        )
    return key


def storage_key(key: str, scope: str = "") -> str:
    """What storage keeps for ``key`` in ``scope``: a SHA-256, 64 hex digits, whatever the sizes.

    A key has no spaces, so the scope's end is unambiguous; lone surrogates (a
    token's subject can carry them) are encoded as they are rather than refused.
    """
    text = f"{scope} {key}" if scope else key
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class IdempotencyService:
    """Runs an action at most once per key within ``ttl``, replaying its stored response."""

    def __init__(
        self,
        storage: Storage,
        ttl: timedelta,
        clock: Callable[[], datetime],
        *,
        stale_after: timedelta = timedelta(minutes=1),
        keyed: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        self._storage = storage
        self._ttl = ttl
        self._clock = clock
        # With encryption on, fingerprints are stored keyed (``Sealer.keyed_digests``): a
        # plain hash of a body holding an email would confirm a guessed address. The
        # first is stored; any of them matches (a key being replaced, or none before).
        self._keyed = keyed
        # A claim whose owner died (a killed worker) is taken over after this.
        self._stale_after = stale_after

    def run(
        self,
        key: str,
        fingerprint: str,
        action: Callable[[], StoredResponse],
        *,
        scope: str = "",
    ) -> tuple[StoredResponse, bool]:
        """The response for ``key`` and whether it is a replay.

        ``fingerprint`` identifies the request (method, path, body): the same
        key with another fingerprint is ``InvalidInput``; a key whose first
        request is still running is ``Conflict`` (retry shortly). ``scope``
        (the principal's id) gives each caller its own keys, so one client can
        neither replay nor block another's.
        """
        key = storage_key(check_key(key), scope)
        accepted: Sequence[str] = (fingerprint,)
        if self._keyed is not None:
            accepted = self._keyed(fingerprint)
            fingerprint = accepted[0]
        for _ in range(2):  # a record may expire between a failed claim and the read
            now = self._clock()
            claimed = self._storage.claim_idempotency_key(
                key, fingerprint, now, now + self._ttl, now - self._stale_after
            )
            if claimed:
                return self._run_claimed(key, action), False
            record = self._storage.get_idempotency_record(key, now)
            if record is None:
                continue
            if record.fingerprint not in accepted:
                raise InvalidInput.for_field(
                    KEY_FIELD, "this key was used with a different request; use a new key"
                )
            if record.response is None:
                raise Conflict("a request with this Idempotency-Key is still in progress")
            return record.response, True
        raise Conflict("a request with this Idempotency-Key is still in progress")

    def _run_claimed(self, key: str, action: Callable[[], StoredResponse]) -> StoredResponse:
        try:
            response = action()
        except BaseException:
            self._storage.release_idempotency_key(key)
            raise
        self._storage.complete_idempotency_key(key, response)
        return response

    def purge_expired(self) -> int:
        """Remove expired keys; returns how many."""
        return self._storage.purge_idempotency_keys(self._clock())
