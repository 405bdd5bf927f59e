"""The audit plugin: a tamper-evident trail of every change, in the change's own transaction.

Every write the core records (``userplane_record_changes``: users created,
updated, deleted, restored and purged, API keys created and revoked, key
rotations, and what plugins record) becomes one row of ``audit_events``,
written in the write's transaction: no change without its event, no event
without its change. The write only inserts it; it is linked into the hash
chain after commit (deferred chaining: writers never wait for each other), by
each serving process every ``USERPLANE_AUDIT_CHAIN_SECONDS`` and before every
read. Each chained event carries the SHA-256 of its columns and of the
event before (``events``, ``chain``), so ``userplane audit verify`` finds
the first row edited, removed or inserted; the chain head is logged while
serving (``heads``) so that a chain cut short can be caught too. Read it over
``GET /api/v1/audit`` (``audit:read``, the ``auditor`` role) and ``userplane
audit list|verify|export|prune``. SQLite and PostgreSQL. See docs/audit.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from userplane.plugin import (
    Change,
    ConfigurationError,
    Settings,
    SettingsSection,
    hookimpl,
    plugin_role,
    section,
)

if TYPE_CHECKING:
    import click

    from userplane.plugin import Registry
    from userplane.plugins.audit.trail import AuditTrail

_MIGRATIONS = Path(__file__).parent / "migrations"
PREFIX = "AUDIT_"
#: The action reading the trail needs, and the role granting it (and nothing else).
AUDIT_READ = "audit:read"
AUDITOR = "auditor"


def _head_log_seconds(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= 86_400):
        raise ValueError(
            "USERPLANE_AUDIT_HEAD_LOG_SECONDS: must be a number of seconds above 0, at most 86400"
        )


def _chain_seconds(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= 60):
        raise ValueError(
            "USERPLANE_AUDIT_CHAIN_SECONDS: must be a number of seconds above 0, at most 60"
        )


@attrs.frozen
class AuditSettings:
    """This plugin's settings, from ``USERPLANE_AUDIT_*``."""

    #: Record ``email`` and ``full_name`` changes as ``{"redacted": true}``, without values.
    redact_personal: bool = False
    #: How often a serving process logs the chain head (``audit.head``), in seconds.
    head_log_seconds: float = attrs.field(default=300.0, validator=_head_log_seconds)
    #: How often a serving process links new events into the chain, in seconds.
    chain_seconds: float = attrs.field(default=1.0, validator=_chain_seconds)


SETTINGS = SettingsSection(PREFIX, AuditSettings)


def settings_of(settings: Settings) -> AuditSettings:
    """This plugin's settings; ``ConfigurationError`` naming the variable at fault."""
    return section(AuditSettings, settings, PREFIX)


def trail_of(registry: Registry) -> AuditTrail:
    """The audit trail of ``registry``."""
    from userplane.plugins.audit.trail import AuditTrail

    return registry.services.get(AuditTrail)


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_AUDIT_REDACT_PERSONAL``, ``…_HEAD_LOG_SECONDS``, ``…_CHAIN_SECONDS``."""
    return SETTINGS


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Fail at start-up, naming the variable, on a bad setting."""
    settings_of(settings)


@hookimpl
def userplane_migrations() -> dict[str, Path]:
    """``audit_events``, ``audit_chain`` and ``audit_checkpoints``, for SQLite and PostgreSQL."""
    return {d.name: d for d in _MIGRATIONS.iterdir() if d.is_dir()}


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """The trail and its chainer; a storage that cannot hold the trail fails now."""
    from userplane.plugins.audit.heads import HeadLogger
    from userplane.plugins.audit.store import AuditStore
    from userplane.plugins.audit.trail import AuditTrail
    from userplane.sql import SQLStorage

    storage = registry.storage
    if not isinstance(storage, SQLStorage):
        raise ConfigurationError(
            f"the {storage.name} storage cannot hold the audit trail (it is no userplane.sql "
            "store); disable the audit plugin (USERPLANE_DISABLED_PLUGINS=audit) or use a "
            "storage that can"
        )
    store = AuditStore(storage)  # refuses a dialect it has no statements for, now
    own = settings_of(registry.settings)
    registry.services.register(
        AuditTrail,
        lambda: AuditTrail(registry, store, own.redact_personal),
        ping=lambda _: store.ping(),
        name="audit",
    )
    registry.services.register(
        HeadLogger,
        lambda: HeadLogger(trail_of(registry), own.head_log_seconds, own.chain_seconds),
        close=lambda heads: heads.stop(),
    )


@hookimpl(trylast=True)
def userplane_record_changes(changes: Sequence[Change], registry: Registry) -> None:
    """Store the changes' events, in their transaction: one batch of inserts, no shared lock.

    They are linked into the chain after the transaction finished (``chain``).
    """
    trail_of(registry).record(changes)


@hookimpl
def userplane_roles(settings: Settings) -> dict[str, frozenset[str]]:
    """``auditor``: reads the trail, nothing else.

    Unless the operator defines an ``auditor`` of their own in
    ``USERPLANE_ROLES`` (one made before this plugin existed, say): theirs
    stands, rather than the service refusing to start over two definitions.
    """
    return plugin_role(settings, AUDITOR, {AUDIT_READ})


@hookimpl
def userplane_http_routes(app: Any, registry: Registry) -> None:
    """``GET /api/v1/audit`` and ``GET /api/v1/audit/{event_id}``."""
    from userplane.plugins.audit.resources import (
        LIST_PATH,
        AuditEventResource,
        AuditEventsResource,
    )

    app.add_route(LIST_PATH, AuditEventsResource(trail_of(registry)))
    app.add_route(f"{LIST_PATH}/{{event_id:uuid}}", AuditEventResource(trail_of(registry)))


@hookimpl
def userplane_console(console: Any, registry: Registry) -> None:
    """Each user's history on the user's page in the web console (``audit:read``)."""
    from userplane.plugins.audit.console import add_panel

    add_panel(console, trail_of(registry), AUDIT_READ)


@hookimpl
def userplane_openapi(document: dict[str, Any]) -> None:
    """The audit routes and their schemas."""
    from userplane.plugins.audit.openapi import add_to

    add_to(document)


@hookimpl
def userplane_serving(registry: Registry) -> None:
    """Chain every ``…_CHAIN_SECONDS``; log the head now and every ``…_HEAD_LOG_SECONDS``."""
    from userplane.plugins.audit.heads import HeadLogger

    registry.services.get(HeadLogger).start()


@hookimpl
def userplane_shutdown(registry: Registry) -> None:
    """Stop chaining and logging the head (and wait for the thread, which chains once more)."""
    from userplane.plugins.audit.heads import HeadLogger

    if HeadLogger in registry.services:
        registry.services.get(HeadLogger).stop()


@hookimpl
def userplane_describe(settings: Settings) -> dict[str, str]:
    """How personal values are recorded, how often events are chained and the head logged."""
    own = settings_of(settings)
    personal = "redacted" if own.redact_personal else "recorded (sealed when encrypted)"
    return {
        "audit": f"personal values {personal}; chained every {own.chain_seconds:g}s; "
        f"head logged every {own.head_log_seconds:g}s"
    }


@hookimpl
def userplane_cli_commands(cli: click.Group) -> None:
    """``userplane audit …``."""
    from userplane.plugins.audit.commands import add_commands

    add_commands(cli)
