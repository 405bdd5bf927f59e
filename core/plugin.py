"""The plugin API: every name a plugin author needs, from one place.

Import from here (and from ``userplane.sql`` for SQL stores, ``userplane.testing``
for the contract suites, ``userplane.frontends.cli`` / ``userplane.frontends.http``
for commands and routes); every other module is internal and may change in
any release. The built-in plugins use exactly these names, and a test fails
when one of them imports anything else, or when a type in a hook or a
``Storage`` signature is missing here. See ``docs/plugins.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from userplane.auth import (
        ACTIONS,
        EVERY_ACTION,
        GROUPS_READ,
        GROUPS_WRITE,
        KEYS_MANAGE,
        NAMESPACES,
        USERS_DELETE,
        USERS_EXPORT,
        USERS_PURGE,
        USERS_READ,
        USERS_READ_DELETED,
        USERS_RESTORE,
        USERS_WRITE,
        AuthService,
        Credentials,
        Principal,
        acting_as,
        check_may_grant,
        current_principal,
        local_principal,
        plugin_role,
    )
    from userplane.changes import (
        Change,
        ChangeRecorder,
        FieldChange,
        RequestContext,
        current_context,
        request_context,
    )
    from userplane.errors import (
        ConfigurationError,
        Conflict,
        FieldError,
        Forbidden,
        InvalidInput,
        NotFound,
        PreconditionFailed,
        RateLimited,
        Unauthenticated,
        Unavailable,
        Undecryptable,
        UserplaneError,
    )
    from userplane.filtering import And, Compare, Expr, Linked, Not, Or, Present
    from userplane.groups import (
        Group,
        GroupChanges,
        GroupFilter,
        GroupQuery,
        GroupSelection,
        GroupService,
        NewGroup,
    )
    from userplane.hooks import Hooks, PluginMigrations
    from userplane.idempotency import IdempotencyRecord, StoredResponse
    from userplane.keyring import Keyring, NamedKey, parse_keys
    from userplane.limits import AUTH_FAILURE, READ, WRITE, Quota, RateLimit, RateLimitCounters
    from userplane.pagination import Position, Sort
    from userplane.plugin_manager import hookimpl
    from userplane.processes import forks
    from userplane.proxies import ClientCertificate, TrustedProxies
    from userplane.registry import Registry
    from userplane.replicas import ReadReplicas, ReplicaRead, ReplicaState, replica_read
    from userplane.services import ServiceCheck, Services
    from userplane.settings import (
        MASK,
        Settings,
        SettingsSection,
        is_secret_name,
        mask_text,
        mask_url,
        mask_urls_in,
        password_pieces,
        secret_values,
        section,
        setting,
    )
    from userplane.storage import (
        BulkStorage,
        CopyableStorage,
        CopyColumn,
        CopySession,
        CopyTable,
        GroupStorage,
        IndexEntry,
        InstrumentableStorage,
        KeyRecord,
        MigrationState,
        PooledStorage,
        PoolStats,
        Storage,
        UserRow,
    )
    from userplane.text import fold
    from userplane.users import (
        UNSET,
        NewUser,
        User,
        UserChanges,
        UserFilter,
        UserPage,
        UserQuery,
        UserSelection,
        UserService,
        utcnow,
    )

_SOURCES = {
    **dict.fromkeys(
        (
            "ACTIONS",
            "EVERY_ACTION",
            "GROUPS_READ",
            "GROUPS_WRITE",
            "KEYS_MANAGE",
            "NAMESPACES",
            "USERS_DELETE",
            "USERS_EXPORT",
            "USERS_PURGE",
            "USERS_READ",
            "USERS_READ_DELETED",
            "USERS_RESTORE",
            "USERS_WRITE",
            "AuthService",
            "Credentials",
            "Principal",
            "acting_as",
            "check_may_grant",
            "current_principal",
            "local_principal",
            "plugin_role",
        ),
        "userplane.auth",
    ),
    **dict.fromkeys(
        (
            "Change",
            "ChangeRecorder",
            "FieldChange",
            "RequestContext",
            "current_context",
            "request_context",
        ),
        "userplane.changes",
    ),
    **dict.fromkeys(
        (
            "ConfigurationError",
            "Conflict",
            "FieldError",
            "Forbidden",
            "InvalidInput",
            "NotFound",
            "PreconditionFailed",
            "RateLimited",
            "Unauthenticated",
            "Unavailable",
            "Undecryptable",
            "UserplaneError",
        ),
        "userplane.errors",
    ),
    "Hooks": "userplane.hooks",
    "PluginMigrations": "userplane.hooks",
    **dict.fromkeys(
        ("AUTH_FAILURE", "READ", "WRITE", "Quota", "RateLimit", "RateLimitCounters"),
        "userplane.limits",
    ),
    "IdempotencyRecord": "userplane.idempotency",
    **dict.fromkeys(("Keyring", "NamedKey", "parse_keys"), "userplane.keyring"),
    "StoredResponse": "userplane.idempotency",
    "Position": "userplane.pagination",
    "Sort": "userplane.pagination",
    "hookimpl": "userplane.plugin_manager",
    "ClientCertificate": "userplane.proxies",
    "TrustedProxies": "userplane.proxies",
    "Registry": "userplane.registry",
    **dict.fromkeys(
        ("ReadReplicas", "ReplicaRead", "ReplicaState", "replica_read"), "userplane.replicas"
    ),
    "ServiceCheck": "userplane.services",
    "Services": "userplane.services",
    **dict.fromkeys(
        (
            "MASK",
            "Settings",
            "SettingsSection",
            "is_secret_name",
            "mask_text",
            "mask_url",
            "mask_urls_in",
            "password_pieces",
            "secret_values",
            "section",
            "setting",
        ),
        "userplane.settings",
    ),
    **dict.fromkeys(
        (
            "BulkStorage",
            "CopyableStorage",
            "FilterableStorage",
            "CopyColumn",
            "CopySession",
            "CopyTable",
            "FilterableStorage",
            "GroupStorage",
            "IndexEntry",
            "InstrumentableStorage",
            "KeyRecord",
            "MigrationState",
            "PooledStorage",
            "PoolStats",
            "Storage",
            "UserRow",
        ),
        "userplane.storage",
    ),
    **dict.fromkeys(
        (
            "Group",
            "GroupChanges",
            "GroupFilter",
            "GroupQuery",
            "GroupSelection",
            "GroupService",
            "NewGroup",
        ),
        "userplane.groups",
    ),
    **dict.fromkeys(
        ("And", "Compare", "Expr", "Linked", "Not", "Or", "Present"), "userplane.filtering"
    ),
    **dict.fromkeys(
        (
            "UNSET",
            "NewUser",
            "User",
            "UserChanges",
            "UserFilter",
            "UserPage",
            "UserQuery",
            "UserSelection",
            "UserService",
            "utcnow",
        ),
        "userplane.users",
    ),
    "fold": "userplane.text",
    "forks": "userplane.processes",
}

__all__ = [
    "ACTIONS",
    "AUTH_FAILURE",
    "EVERY_ACTION",
    "GROUPS_READ",
    "GROUPS_WRITE",
    "KEYS_MANAGE",
    "MASK",
    "NAMESPACES",
    "READ",
    "UNSET",
    "USERS_DELETE",
    "USERS_EXPORT",
    "USERS_PURGE",
    "USERS_READ",
    "USERS_READ_DELETED",
    "USERS_RESTORE",
    "USERS_WRITE",
    "WRITE",
    "And",
    "AuthService",
    "BulkStorage",
    "Change",
    "ChangeRecorder",
    "ClientCertificate",
    "Compare",
    "ConfigurationError",
    "Conflict",
    "CopyColumn",
    "CopySession",
    "CopyTable",
    "CopyableStorage",
    "Credentials",
    "Expr",
    "FieldChange",
    "FieldError",
    "Forbidden",
    "Group",
    "GroupChanges",
    "GroupFilter",
    "GroupQuery",
    "GroupSelection",
    "GroupService",
    "GroupStorage",
    "Hooks",
    "IdempotencyRecord",
    "IndexEntry",
    "InstrumentableStorage",
    "InvalidInput",
    "KeyRecord",
    "Keyring",
    "Linked",
    "MigrationState",
    "NamedKey",
    "NewGroup",
    "NewUser",
    "Not",
    "NotFound",
    "Or",
    "PluginMigrations",
    "PoolStats",
    "PooledStorage",
    "Position",
    "PreconditionFailed",
    "Present",
    "Principal",
    "Quota",
    "RateLimit",
    "RateLimitCounters",
    "RateLimited",
    "ReadReplicas",
    "Registry",
    "ReplicaRead",
    "ReplicaState",
    "RequestContext",
    "ServiceCheck",
    "Services",
    "Settings",
    "SettingsSection",
    "Sort",
    "Storage",
    "StoredResponse",
    "TrustedProxies",
    "Unauthenticated",
    "Unavailable",
    "Undecryptable",
    "User",
    "UserChanges",
    "UserFilter",
    "UserPage",
    "UserQuery",
    "UserRow",
    "UserSelection",
    "UserService",
    "UserplaneError",
    "acting_as",
    "check_may_grant",
    "current_context",
    "current_principal",
    "fold",
    "forks",
    "hookimpl",
    "is_secret_name",
    "local_principal",
    "mask_text",
    "mask_url",
    "mask_urls_in",
    "parse_keys",
    "password_pieces",
    "plugin_role",
    "replica_read",
    "request_context",
    "secret_values",
    "section",
    "setting",
    "utcnow",
]

# Imported on first use (PEP 562): every plugin imports this module, and the
# CLI's --help must not pay for the registry, storage and users modules.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        source = _SOURCES.get(name)
        if source is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
