"""The api-keys plugin: ``Authorization: Bearer up_…`` keys kept in a table of its own.

Authentication costs no database round trip per request: each process caches
what it read of a key for ``USERPLANE_API_KEYS_CACHE_SECONDS`` (default 5), so
a revoked key stops working within that delay (``authenticator``). The keys
live in the plugin's own table (``migrations/``, ``queries.sql``, ``store``)
in any ``userplane.sql.SQLStorage`` it has migrations for (SQLite,
PostgreSQL, MariaDB/MySQL). Commands: ``userplane keys create|list|revoke``;
over HTTP, ``/api/v1/keys`` (action ``keys:manage``, ``resources``), in the
OpenAPI document (``openapi``). See docs/api-keys.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from userplane.plugin import (
    AUTH_FAILURE,
    ConfigurationError,
    Credentials,
    Principal,
    Quota,
    Settings,
    SettingsSection,
    hookimpl,
    section,
)

if TYPE_CHECKING:
    import click

    from userplane.plugin import Registry
    from userplane.plugins.api_keys.authenticator import KeyAuthenticator
    from userplane.plugins.api_keys.keys import ApiKeyService
    from userplane.sql import SQLStorage

# The store, the SQL kit, hmac and the key format are imported where keys are
# handled, not here: every userplane process loads this plugin, and the CLI's
# --help and the commands that never see a key must not pay for them.

#: Keys are recognised by this prefix (``keys.KEY_PREFIX``), without importing ``keys``.
PREFIX = "up_"
_MIGRATIONS = Path(__file__).parent / "migrations"


def _cache_seconds(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= 300:
        raise ValueError("USERPLANE_API_KEYS_CACHE_SECONDS: must be between 0 and 300")


@attrs.frozen
class ApiKeySettings:
    """This plugin's settings, from ``USERPLANE_API_KEYS_*``."""

    #: How long a process trusts what it read of a key: the bound on revocation delay.
    cache_seconds: float = attrs.field(default=5.0, validator=_cache_seconds)


SETTINGS = SettingsSection("API_KEYS_", ApiKeySettings)


class ApiKeys:
    """This plugin's state in one registry: the key table, the cached verifier, management."""

    def __init__(self, registry: Registry, storage: SQLStorage) -> None:
        from userplane.plugin import utcnow
        from userplane.plugins.api_keys.authenticator import KeyAuthenticator
        from userplane.plugins.api_keys.keys import ApiKeyService
        from userplane.plugins.api_keys.store import ApiKeyStore

        self.store = ApiKeyStore(storage)
        ttl = section(ApiKeySettings, registry.settings, "API_KEYS_").cache_seconds
        # Built on first use, after the registry's auth service exists.
        auth = registry.auth

        def throttle(subject: str, consume: bool) -> Quota | None:
            return auth.rate_limit(AUTH_FAILURE, subject, consume)

        self.authenticator: KeyAuthenticator = KeyAuthenticator(self.store, ttl, throttle=throttle)
        self.service: ApiKeyService = ApiKeyService(
            self.store, registry.auth.roles, utcnow, registry.changes
        )


def state_of(registry: Registry) -> ApiKeys:
    """This plugin's state in ``registry``."""
    return registry.services.get(ApiKeys)


def service(registry: Registry) -> ApiKeyService:
    """Key management over ``registry``'s storage."""
    return state_of(registry).service


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_API_KEYS_*``."""
    return SETTINGS


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Fail at start-up, naming the variable, on a bad setting."""
    section(ApiKeySettings, settings, "API_KEYS_")


@hookimpl
def userplane_migrations() -> dict[str, Path]:
    """The ``api_keys`` table, for each dialect this plugin speaks."""
    return {d.name: d for d in _MIGRATIONS.iterdir() if d.is_dir()}


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """The key table and verifier, built on first use; a storage that cannot hold keys fails now."""
    from userplane.sql import SQLStorage

    storage = registry.storage
    if not isinstance(storage, SQLStorage):
        raise ConfigurationError(
            f"the {storage.name} storage cannot hold API keys (it is no userplane.sql store); "
            "disable the api_keys plugin or use a storage that can"
        )
    registry.services.register(
        ApiKeys,
        lambda: ApiKeys(registry, storage),
        ping=lambda keys: keys.store.ping(),
        # Stops the authenticator's refresher and writes the last_used_at still noted.
        close=lambda keys: keys.authenticator.close(),
        name="api_keys",
    )


@hookimpl
def userplane_authenticate(credentials: Credentials, registry: Registry) -> Principal | None:
    """Bearer tokens that start with ``up_`` are ours; anything else is not."""
    token = credentials.bearer
    if token is None or not token.startswith(PREFIX):
        return None
    return state_of(registry).authenticator.authenticate(token)


@hookimpl
def userplane_auth_challenges() -> str:
    """Keys are sent as bearer tokens (RFC 6750)."""
    return 'Bearer realm="userplane"'


@hookimpl
def userplane_describe(registry: Registry | None) -> dict[str, str]:
    """How many keys can authenticate, and how to make the first."""
    if registry is None or ApiKeys not in registry.services:
        return {}
    from userplane.plugin import utcnow

    now = utcnow()
    usable = sum(1 for k in service(registry).list() if k.usable_at(now))
    # Not "api_keys": the log redactor masks any field whose name says "key".
    if usable:
        return {"authentication": f"API keys: {usable} usable"}
    return {
        "authentication": "no API keys yet: create the first with "
        "`userplane keys create --name admin --role admin`"
    }


@hookimpl
def userplane_http_routes(app: Any, registry: Registry) -> None:
    """``/api/v1/keys`` and ``/api/v1/keys/{key_id}`` (``keys:manage``)."""
    if ApiKeys in registry.services:
        from userplane.plugins.api_keys.resources import add_routes

        add_routes(app, service(registry))


@hookimpl
def userplane_console(console: Any, registry: Registry) -> None:
    """Key pages in the web console: list, create (the secret shown once), revoke."""
    if ApiKeys in registry.services:
        from userplane.plugins.api_keys.console import add_pages

        add_pages(console, service(registry))


@hookimpl
def userplane_openapi(document: dict[str, Any], registry: Registry) -> None:
    """The key routes and their schemas; a new key's role is one of this registry's roles."""
    if ApiKeys in registry.services:
        from userplane.plugins.api_keys.openapi import add_to

        add_to(document, registry.auth.roles)


@hookimpl
def userplane_cli_commands(cli: click.Group) -> None:
    """``userplane keys …``."""
    from userplane.plugins.api_keys.commands import add_commands

    add_commands(cli)
