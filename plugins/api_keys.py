"""The api-keys plugin: ``Authorization: Bearer up_…`` keys kept in userplane's storage.

Authentication must not cost a database round trip per request, so each
process caches what it read of a key for ``USERPLANE_API_KEYS_CACHE_SECONDS``
(default 5): a revoked key stops working within that delay on every worker and
instance; an expired key stops at once, since expiry is checked on every use.
``last_used_at`` is written at most once per key and delay, per process.

Commands: ``userplane keys create|list|revoke``.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
import uuid
import weakref
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
import click

from userplane import hookimpl
from userplane.auth import Credentials, Principal
from userplane.errors import ConfigurationError, Unauthenticated, Unavailable
from userplane.settings import Settings, section

if TYPE_CHECKING:
    from userplane.api_keys import ApiKey, ApiKeyService
    from userplane.registry import Registry
    from userplane.storage import ApiKeyStorage

# The core's api_keys, storage and users modules, hmac and structlog are imported
# where keys are handled, not here: every userplane process loads this plugin,
# and the CLI's --help and the commands that never see a key must not pay for them.

#: The one answer to any key that does not authenticate: unknown, wrong, revoked, expired.
REJECTED = "the credentials were not accepted"
#: Lookups remembered per process (known and unknown); the oldest are dropped beyond it.
_CACHE_ENTRIES = 10_000


def _cache_seconds(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= 300:
        raise ValueError("USERPLANE_API_KEYS_CACHE_SECONDS: must be between 0 and 300")


@attrs.frozen
class ApiKeySettings:
    """This plugin's settings, from ``USERPLANE_API_KEYS_*``."""

    #: How long a process trusts what it read of a key: the bound on revocation delay.
    cache_seconds: float = attrs.field(default=5.0, validator=_cache_seconds)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC: what expiry is judged by (tests replace it)."""
    from userplane.users import utcnow as now

    return now()


def _usable_now(record: ApiKey) -> bool:
    # Most keys never expire: those need no clock reading.
    if record.expires_at is None and record.revoked_at is None:
        return True
    return record.usable_at(utcnow())


class KeyAuthenticator:
    """Verifies keys for one registry, with a short per-process cache."""

    def __init__(self, storage: ApiKeyStorage, ttl: float) -> None:
        import hmac

        from userplane.api_keys import KEY_PREFIX, hash_key, lookup_of, matches

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
            import structlog

            # Bookkeeping only: a database hiccup must not refuse a valid key.
            structlog.get_logger("userplane.api_keys").warning(
                "last_used_at not recorded", key_id=str(record.id)
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
            raise Unauthenticated(REJECTED)
        if now - touched >= max(self._ttl, 1.0):
            self._touch(record, now)
        return Principal(
            id=f"key:{record.id}",
            kind="api-key",
            roles=frozenset({record.role}),
            name=record.name,
        )


_authenticators: weakref.WeakKeyDictionary[Registry, KeyAuthenticator] = weakref.WeakKeyDictionary()
_authenticators_lock = threading.Lock()


def _authenticator(registry: Registry) -> KeyAuthenticator:
    found = _authenticators.get(registry)
    if found is not None:
        return found
    with _authenticators_lock:
        found = _authenticators.get(registry)
        if found is None:
            ttl = section(ApiKeySettings, registry.settings, "API_KEYS_").cache_seconds
            found = _authenticators[registry] = KeyAuthenticator(_key_storage(registry), ttl)
        return found


@functools.cache
def _key_prefix() -> str:
    from userplane.api_keys import KEY_PREFIX

    return KEY_PREFIX


def _key_storage(registry: Registry) -> ApiKeyStorage:
    """``registry``'s storage as a key store, or ``ConfigurationError`` if it cannot be one."""
    from userplane.storage import ApiKeyStorage

    storage = registry.storage
    if not isinstance(storage, ApiKeyStorage):
        raise ConfigurationError(
            f"the {storage.name} storage cannot hold API keys; "
            "disable the api_keys plugin or use a storage that can"
        )
    return storage


def service(registry: Registry) -> ApiKeyService:
    """Key management over ``registry``'s storage."""
    from userplane.api_keys import ApiKeyService

    return ApiKeyService(_key_storage(registry), registry.auth.roles, utcnow)


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Fail at start-up, naming the variable, on a bad setting."""
    section(ApiKeySettings, settings, "API_KEYS_")


@hookimpl
def userplane_authenticate(credentials: Credentials, registry: Registry) -> Principal | None:
    """Bearer tokens that start with ``up_`` are ours; anything else is not."""
    token = credentials.bearer
    if token is None or not token.startswith(_key_prefix()):
        return None
    return _authenticator(registry).authenticate(token)


@hookimpl
def userplane_describe(settings: Settings, registry: Registry | None) -> dict[str, str]:
    """How many keys can authenticate, and how to make the first."""
    from userplane.storage import ApiKeyStorage

    if registry is None or not isinstance(registry.storage, ApiKeyStorage):
        return {}
    now = utcnow()
    usable = sum(1 for k in registry.storage.list_api_keys() if k.usable_at(now))
    # Not "api_keys": the log redactor masks any field whose name says "key".
    if usable:
        return {"authentication": f"API keys: {usable} usable"}
    return {
        "authentication": "no API keys yet: create the first with "
        "`userplane keys create --name admin --role admin`"
    }


# -- commands --------------------------------------------------------------------


def _emit_keys(keys: list[dict[str, Any]], fmt: str) -> None:
    from userplane.frontends.cli.output import emit

    columns = ("id", "name", "role", "prefix", "created_at", "expires_at", "revoked_at")
    emit(keys, fmt, (*columns, "last_used_at"))


@hookimpl
def userplane_cli_commands(cli: click.Group) -> None:
    """``userplane keys …``."""
    from userplane.frontends.cli.app import OperationGroup, State, pass_state
    from userplane.frontends.cli.output import format_option
    from userplane.frontends.cli.users import Duration

    @cli.group(cls=OperationGroup)
    def keys() -> None:
        """Create, list and revoke API keys (Authorization: Bearer up_…)."""

    @keys.command()
    @click.option("--name", required=True, help="What the key is for (shown in listings).")
    @click.option(
        "--role", required=True, help="admin, editor, viewer, or a role from USERPLANE_ROLES."
    )
    @click.option("--expires", type=Duration(), default=None, help="Lifetime: 90d, 12h …")
    @format_option
    @pass_state
    def create(state: State, name: str, role: str, expires: timedelta | None, fmt: str) -> None:
        """Create a key and print it, once: only its hash is kept."""
        record, key = service(state.registry).create(name, role, expires)
        shown = {"key": key, **record.public()}
        if fmt == "json":
            _emit_keys([shown], fmt)
            return
        click.echo(key)
        click.echo(
            f"API key {record.id} ({record.role}) created. Keep it now: it is not shown again.",
            err=True,
        )

    @keys.command("list")
    @format_option
    @pass_state
    def list_(state: State, fmt: str) -> None:
        """Every key (never its secret), revoked ones included."""
        _emit_keys([k.public() for k in service(state.registry).list()], fmt)

    @keys.command()
    @click.argument("key_id", type=click.UUID)
    @format_option
    @pass_state
    def revoke(state: State, key_id: uuid.UUID, fmt: str) -> None:
        """Revoke a key; every process stops accepting it within the cache delay."""
        _emit_keys([service(state.registry).revoke(key_id).public()], fmt)
