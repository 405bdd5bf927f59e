"""Key verification with a short per-process cache: no database round trip per request.

Each process caches what it read of a key for ``USERPLANE_API_KEYS_CACHE_SECONDS``
(default 5): a revoked key stops working within that delay on every worker and
instance; an expired key stops at once, since expiry is checked on every use.
Lookup ids that match no key are remembered as long, in a bounded cache of their
own: a client sending made-up keys can never push real keys out of theirs.
``last_used_at`` is written at most once per key and delay, per process, and only
as bookkeeping: when that write fails (a read-only database, say) the failure is
logged and the request goes on.
"""

from __future__ import annotations

import collections
import hmac
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from userplane.plugin import Principal, Quota, RateLimited, Unauthenticated, UserplaneError
from userplane.plugin import utcnow as _utcnow
from userplane.plugins.api_keys.keys import KEY_PREFIX, ApiKey, hash_key, lookup_of, matches
from userplane.plugins.api_keys.store import ApiKeyStore

_log = logging.getLogger("userplane.api_keys")
_V = TypeVar("_V")

#: The one answer to any key that does not authenticate: unknown, wrong, revoked, expired.
REJECTED = "the credentials were not accepted"
#: Keys remembered per process; the least recently read are dropped beyond it.
CACHE_ENTRIES = 10_000
#: Lookup ids known to match no key, remembered per process apart from the keys.
UNKNOWN_ENTRIES = 10_000


def utcnow() -> datetime:
    """The current time, timezone-aware UTC: what expiry is judged by (tests replace it)."""
    return _utcnow()


def _reason(exc: Exception) -> str:
    """What went wrong, in words fit for a log: a domain error's detail, else the error's text.

    The touch statement's parameters are a key's id and a time, so no database
    message about it can contain a key.
    """
    if isinstance(exc, UserplaneError):
        return exc.detail
    return str(exc) or type(exc).__name__


def _usable_now(record: ApiKey) -> bool:
    # Most keys never expire: those need no clock reading.
    if record.expires_at is None and record.revoked_at is None:
        return True
    return record.usable_at(utcnow())


class KeyAuthenticator:
    """Verifies keys for one registry, with a short per-process cache.

    ``entries`` bounds the cache of keys, ``unknown_entries`` that of lookup
    ids that match no key; both are kept for ``ttl`` seconds.
    """

    def __init__(
        self,
        storage: ApiKeyStore,
        ttl: float,
        *,
        entries: int = CACHE_ENTRIES,
        unknown_entries: int = UNKNOWN_ENTRIES,
        throttle: Callable[[str, bool], Quota | None] | None = None,
    ) -> None:
        # Bound once: authenticate runs on every request.
        self._compare_digest = hmac.compare_digest
        self._hash_key, self._lookup_of, self._matches = hash_key, lookup_of, matches
        #: Compared against when no record exists, so an unknown key costs what a wrong one does.
        self._no_hash = hash_key(KEY_PREFIX + "0" * 44)
        self._storage = storage
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries = entries
        self._unknown_entries = unknown_entries
        # lookup -> (record, when read, when last_used_at was last attempted)
        self._cache: collections.OrderedDict[str, tuple[ApiKey, float, float]] = (
            collections.OrderedDict()
        )
        # lookup -> when it was found to match no key. Apart from ``_cache``: any
        # client can make up lookup ids by the million, and none may evict a real key.
        self._unknown: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: The rate limiter's auth-failure check for a key id (``AuthService.rate_limit``):
        #: ``(subject, consume) -> Quota | None``.
        self._throttle = throttle

    def _record(self, lookup: str, now: float) -> tuple[ApiKey | None, float]:
        # One dict read each: atomic, no lock on the hot path.
        cached = self._cache.get(lookup)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0], cached[2]
        if cached is None:
            unknown_since = self._unknown.get(lookup)
            if unknown_since is not None and now - unknown_since < self._ttl:
                return None, float("-inf")
        record = self._storage.get_api_key(lookup)
        touched = cached[2] if cached is not None else float("-inf")
        with self._lock:
            if record is None:
                self._cache.pop(lookup, None)  # deleted from the table since it was read
                self._remember(self._unknown, lookup, now, self._unknown_entries)
            else:
                self._unknown.pop(lookup, None)  # created since it was found missing
                self._remember(self._cache, lookup, (record, now, touched), self._entries)
        return record, touched

    @staticmethod
    def _remember(
        cache: collections.OrderedDict[str, _V], lookup: str, value: _V, bound: int
    ) -> None:
        """Put ``value`` in ``cache`` as its newest entry, dropping the oldest beyond ``bound``.

        Called with the lock held.
        """
        cache[lookup] = value
        cache.move_to_end(lookup)
        while len(cache) > bound:
            cache.popitem(last=False)

    def _touch(self, record: ApiKey, now: float) -> None:
        # Marked as attempted before the write: a write that fails is not retried on
        # every request, only once the delay has passed again.
        with self._lock:
            cached = self._cache.get(record.lookup)
            if cached is not None:
                self._cache[record.lookup] = (cached[0], cached[1], now)
        try:
            self._storage.touch_api_key(record.id, utcnow())
        except Exception as exc:
            # Bookkeeping only: whatever stops the write (the database busy or away, a
            # read-only database or replica, a trigger refusing it) must not refuse or
            # fail a request the key authenticates. The key itself is never logged:
            # its record's id names it, and the statement never carries the secret.
            _log.warning(
                "last_used_at not recorded: %s",
                _reason(exc),
                extra={"key_id": str(record.id), "error": type(exc).__name__},
            )

    @staticmethod
    def _refuse_if_over(quota: Quota | None) -> None:
        if quota is not None and not quota.allowed:
            raise RateLimited(
                "too many failed authentications with this key; retry later",
                quota.retry_after,
                quota,
            )

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
            if self._throttle is not None:
                # Guesses at one real key's secret count against its id, whatever the
                # address: past the limit the guesser is told to wait. Only after the
                # secret was checked: the id is no secret, and refusing it before
                # would let anyone who knows it lock the key's holder out.
                self._refuse_if_over(self._throttle(f"key-id:{lookup}", True))
            raise Unauthenticated(REJECTED)
        if now - touched >= max(self._ttl, 1.0):
            self._touch(record, now)
        return Principal(
            id=f"key:{record.id}",
            kind="api-key",
            roles=frozenset({record.role}),
            name=record.name,
        )
