"""Key verification with a short per-process cache: no database round trip per request.

Each process caches what it read of a key for ``USERPLANE_API_KEYS_CACHE_SECONDS``
(default 5): a revoked key stops working within that delay on every worker and
instance; an expired key stops at once, since expiry is checked on every use.
``last_used_at`` is written at most once per key and delay, per process.
"""

from __future__ import annotations

import collections
import hmac
import logging
import threading
import time
from datetime import datetime

from userplane.plugin import Principal, Unauthenticated, Unavailable
from userplane.plugin import utcnow as _utcnow
from userplane.plugins.api_keys.keys import KEY_PREFIX, ApiKey, hash_key, lookup_of, matches
from userplane.plugins.api_keys.store import ApiKeyStore

_log = logging.getLogger("userplane.api_keys")

#: The one answer to any key that does not authenticate: unknown, wrong, revoked, expired.
REJECTED = "the credentials were not accepted"
#: Lookups remembered per process (known and unknown); the oldest are dropped beyond it.
_CACHE_ENTRIES = 10_000


def utcnow() -> datetime:
    """The current time, timezone-aware UTC: what expiry is judged by (tests replace it)."""
    return _utcnow()


def _usable_now(record: ApiKey) -> bool:
    # Most keys never expire: those need no clock reading.
    if record.expires_at is None and record.revoked_at is None:
        return True
    return record.usable_at(utcnow())


class KeyAuthenticator:
    """Verifies keys for one registry, with a short per-process cache."""

    def __init__(self, storage: ApiKeyStore, ttl: float) -> None:
        # Bound once: authenticate runs on every request.
        self._compare_digest = hmac.compare_digest
        self._hash_key, self._lookup_of, self._matches = hash_key, lookup_of, matches
        #: Compared against when no record exists, so an unknown key costs what a wrong one does.
        self._no_hash = hash_key(KEY_PREFIX + "0" * 44)
        self._storage = storage
        self._ttl = ttl
        self._lock = threading.Lock()
        # lookup -> (record or None, when read, when last_used_at was written)
        self._cache: collections.OrderedDict[str, tuple[ApiKey | None, float, float]] = (
            collections.OrderedDict()
        )

    def _record(self, lookup: str, now: float) -> tuple[ApiKey | None, float]:
        cached = self._cache.get(lookup)  # one dict read: atomic, no lock on the hot path
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0], cached[2]
        record = self._storage.get_api_key(lookup)
        touched = cached[2] if cached is not None else float("-inf")
        with self._lock:
            self._cache[lookup] = (record, now, touched)
            self._cache.move_to_end(lookup)
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return record, touched

    def _touch(self, record: ApiKey, now: float) -> None:
        with self._lock:
            cached = self._cache.get(record.lookup)
            if cached is not None:
                self._cache[record.lookup] = (cached[0], cached[1], now)
        try:
            self._storage.touch_api_key(record.id, utcnow())
        except Unavailable:
            # Bookkeeping only: a database hiccup must not refuse a valid key.
            _log.warning("last_used_at not recorded", extra={"key_id": str(record.id)})

    def authenticate(self, key: str) -> Principal:
        """The key's principal, or ``Unauthenticated`` with one message for every failure."""
        lookup = self._lookup_of(key)
        if lookup is None:
            raise Unauthenticated(REJECTED)
        now = time.monotonic()
        record, touched = self._record(lookup, now)
        if record is None:
            self._compare_digest(self._hash_key(key), self._no_hash)  # what a wrong key costs
            raise Unauthenticated(REJECTED)
        if not self._matches(key, record) or not _usable_now(record):
            raise Unauthenticated(REJECTED)
        if now - touched >= max(self._ttl, 1.0):
            self._touch(record, now)
        return Principal(
            id=f"key:{record.id}",
            kind="api-key",
            roles=frozenset({record.role}),
            name=record.name,
        )
