"""Key verification with a per-process cache: no database round trip per request.

Each process trusts what it read of a key for ``USERPLANE_API_KEYS_CACHE_SECONDS``
(the ``ttl``, default 5) from the moment the read was sent: a revoked key stops
working within that delay on every worker and instance; an expired key stops at
once, since expiry is checked on every use. A request that finds its key's entry
older than that reads the key itself, so the bound holds whatever else happens.

In the steady state no request waits for the database: a daemon thread per
process (the refresher, started on first use and again in each forked worker)
wakes every ``REFRESH_SECONDS`` and re-reads, in one statement per
``CHUNK`` keys, every entry past half its ``ttl`` that was used within the last
``ttl``, before any request finds it expired. Keys no longer used are left to
expire, then to be dropped as the least recently read; a key that no longer
exists is dropped and remembered as unknown. Each entry holds the ``Principal``
built when it was read.

Lookup ids that match no key are remembered as long, in a bounded cache of their
own: a client sending made-up keys can never push real keys out of theirs.
``last_used_at`` is bookkeeping, noted at most once per key and
``max(ttl, 1)`` seconds per process, and written by the refresher, every use it
noted in one statement (per chunk), each key at the time of its use, never
moving back; ``close`` writes what is still noted. When that write fails (a
read-only database, say) the failure is logged and requests go on.
"""

from __future__ import annotations

import collections
import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple, TypeVar

from userplane.plugin import (
    Principal,
    Quota,
    RateLimited,
    Unauthenticated,
    UserplaneError,
    forks,
)
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
#: How often each process's refresher wakes. Keys stay read ahead while the ``ttl``
#: is well above it (the default 5 s is); below, requests read what has expired.
REFRESH_SECONDS = 1.0
#: Keys per statement of the refresher: a bound on one statement's size.
CHUNK = 500


def utcnow() -> datetime:
    """The current time, timezone-aware UTC: what expiry is judged by (tests replace it)."""
    return _utcnow()


def _reason(exc: Exception) -> str:
    """What went wrong, in words fit for a log: a domain error's detail, else the error's text.

    The statements' parameters are lookup ids (public), key ids and times, never
    a secret, so no database message about them can contain a key.
    """
    if isinstance(exc, UserplaneError):
        return exc.detail
    return str(exc) or type(exc).__name__


def _usable_now(record: ApiKey) -> bool:
    # Most keys never expire: those need no clock reading.
    if record.expires_at is None and record.revoked_at is None:
        return True
    return record.usable_at(utcnow())


class _Use:
    """How a cached key was used in this process: kept when its record is read again."""

    __slots__ = ("at", "noted_at")

    def __init__(self) -> None:
        #: Last authenticated (monotonic): the refresher keeps only keys in use read ahead.
        self.at = float("-inf")
        #: Last noted for ``last_used_at`` (monotonic), written or not.
        self.noted_at = float("-inf")


class _Entry(NamedTuple):
    record: ApiKey
    principal: Principal
    #: When the statement that read ``record`` was sent (monotonic): trusted until + ttl.
    read_at: float
    use: _Use


class KeyAuthenticator:
    """Verifies keys for one registry, with a per-process cache kept fresh by a refresher.

    ``entries`` bounds the cache of keys, ``unknown_entries`` that of lookup
    ids that match no key; both are trusted for ``ttl`` seconds. The refresher
    wakes every ``refresh_seconds``; with ``None`` there is none, and
    ``refresh`` runs only when called.
    """

    def __init__(
        self,
        storage: ApiKeyStore,
        ttl: float,
        *,
        entries: int = CACHE_ENTRIES,
        unknown_entries: int = UNKNOWN_ENTRIES,
        throttle: Callable[[str, bool], Quota | None] | None = None,
        refresh_seconds: float | None = REFRESH_SECONDS,
    ) -> None:
        # Bound once: authenticate runs on every request.
        self._compare_digest = hmac.compare_digest
        self._hash_key, self._lookup_of, self._matches = hash_key, lookup_of, matches
        #: Compared against when no record exists, so an unknown key costs what a wrong one does.
        self._no_hash = hash_key(KEY_PREFIX + "0" * 44)
        self._storage = storage
        self._ttl = ttl
        self._note_every = max(ttl, 1.0)
        #: Guards every change to the caches and ``_pending``; reads of one entry take none.
        self._lock = threading.Lock()
        self._entries = entries
        self._unknown_entries = unknown_entries
        self._cache: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        # lookup -> when it was found to match no key. Apart from ``_cache``: any
        # client can make up lookup ids by the million, and none may evict a real key.
        self._unknown: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: Uses noted for ``last_used_at`` and not written yet: key id -> when used.
        self._pending: dict[uuid.UUID, datetime] = {}
        #: The rate limiter's auth-failure check for a key id (``AuthService.rate_limit``):
        #: ``(subject, consume) -> Quota | None``.
        self._throttle = throttle
        self._refresh_seconds = refresh_seconds
        #: One pass at a time: the thread's, and ``close``'s or a caller's.
        self._refreshing = threading.Lock()
        #: The process the refresher was started in (or not started: none, or closed).
        self._pid: int | None = None
        #: ``forks()`` when the refresher was last seen to: another count is another process.
        self._forks = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the cache ---------------------------------------------------------------------

    def _entry(self, lookup: str, now: float) -> _Entry | None:
        # One dict read each: atomic, no lock on the hot path.
        entry = self._cache.get(lookup)
        if entry is not None and now - entry.read_at < self._ttl:
            return entry
        if entry is None:
            unknown_since = self._unknown.get(lookup)
            if unknown_since is not None and now - unknown_since < self._ttl:
                return None
        # Expired or never read: read it here, as the refresher lags, fails or never saw it.
        # ``now`` was taken before the statement is sent: the record is at least that fresh.
        record = self._storage.get_api_key(lookup)
        with self._lock:
            return self._put(lookup, record, now, add=True)

    def _put(
        self, lookup: str, record: ApiKey | None, read_at: float, *, add: bool
    ) -> _Entry | None:
        """Cache what a read sent at ``read_at`` found for ``lookup``; the entry now cached.

        Called with the lock held. A read sent later wins over this one. Without
        ``add`` (the refresher), a lookup no longer cached is not brought back.
        """
        current = self._cache.get(lookup)
        if current is not None and current.read_at > read_at:
            return current
        if record is None:
            self._cache.pop(lookup, None)  # deleted from the table since it was read
            self._remember(self._unknown, lookup, read_at, self._unknown_entries)
            return None
        self._unknown.pop(lookup, None)  # created since it was found missing
        principal = Principal(
            id=f"key:{record.id}",
            kind="api-key",
            roles=frozenset({record.role}),
            name=record.name,
        )
        entry = _Entry(record, principal, read_at, current.use if current is not None else _Use())
        if current is not None or add:
            self._remember(self._cache, lookup, entry, self._entries)
        return entry

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

    # -- the refresher -----------------------------------------------------------------

    def _start_refresher(self) -> None:
        """Start this process's refresher: on first use, and again in a forked child."""
        with self._lock:
            self._forks = forks()
            pid = os.getpid()
            if self._pid == pid:
                return
            if self._pid is not None:
                # Forked: the thread started before is the parent's (in a child it did not
                # come along; stopped all the same), and so are the uses noted before.
                self._stop.set()
                self._pending.clear()
            self._pid = pid
            if self._refresh_seconds is None or self._closed:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(self._stop, self._refresh_seconds),
                name="userplane-api-keys",
                daemon=True,
            )
            self._thread.start()

    def _run(self, stop: threading.Event, every: float) -> None:
        while not stop.wait(every):
            self.refresh()

    def refresh(self) -> None:
        """One pass of the refresher: re-read the keys due, then write the uses noted.

        A failure is logged, never raised: requests read what expires themselves.
        """
        with self._refreshing:
            try:
                self._read_ahead()
            except Exception as exc:
                _log.warning(
                    "API keys not refreshed: %s", _reason(exc), extra={"error": type(exc).__name__}
                )
            self._write_uses()

    def _read_ahead(self) -> None:
        if self._ttl <= 0:
            return  # nothing is trusted: nothing to keep fresh
        now = time.monotonic()
        with self._lock:
            due = [
                lookup
                for lookup, entry in self._cache.items()
                if now - entry.read_at >= self._ttl / 2 and now - entry.use.at < self._ttl
            ]
        for start in range(0, len(due), CHUNK):
            chunk = due[start : start + CHUNK]
            read_at = time.monotonic()  # before the statement is sent, as on the request path
            found = {record.lookup: record for record in self._storage.get_api_keys(chunk)}
            with self._lock:
                for lookup in chunk:
                    self._put(lookup, found.get(lookup), read_at, add=False)

    def _write_uses(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        ids = list(pending)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            try:
                self._storage.touch_api_keys({key_id: pending[key_id] for key_id in chunk})
            except Exception as exc:
                # Bookkeeping only: whatever stops the write (the database busy or away, a
                # read-only database or replica, a trigger refusing it) fails no request.
                # Not noted again: the keys are written once the delay has passed again.
                # No key is logged: ids name them, and the statement carries no secret.
                _log.warning(
                    "last_used_at not recorded: %s",
                    _reason(exc),
                    extra={"key_ids": [str(i) for i in chunk], "error": type(exc).__name__},
                )

    def close(self) -> None:
        """Stop the refresher and write the uses still noted (the registry's close).

        Keys still authenticate afterwards, each read when its entry expires.
        """
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None:
            thread.join(10.0)
        with self._refreshing:
            self._write_uses()

    # -- requests ----------------------------------------------------------------------

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
        if self._forks != forks():
            self._start_refresher()
        now = time.monotonic()
        entry = self._entry(lookup, now)
        if entry is None:
            self._compare_digest(self._hash_key(key), self._no_hash)  # what a wrong key costs
            raise Unauthenticated(REJECTED)
        record = entry.record
        if not self._matches(key, record) or not _usable_now(record):
            if self._throttle is not None:
                # Guesses at one real key's secret count against its id, whatever the
                # address: past the limit the guesser is told to wait. Only after the
                # secret was checked: the id is no secret, and refusing it before
                # would let anyone who knows it lock the key's holder out.
                self._refuse_if_over(self._throttle(f"key-id:{lookup}", True))
            raise Unauthenticated(REJECTED)
        use = entry.use
        use.at = now
        if now - use.noted_at >= self._note_every:
            # Noted before it is written: a write that fails is not tried on every
            # request, only once the delay has passed again.
            use.noted_at = now
            with self._lock:
                self._pending.setdefault(record.id, utcnow())
        return entry.principal
