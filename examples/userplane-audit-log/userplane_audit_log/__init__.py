"""An audit log: one JSON line per change to a user, appended to a file.

Set ``USERPLANE_AUDIT_LOG_FILE`` to turn it on (off when unset). Each line::

    {"time": "2026-01-02T03:04:05.123456+00:00", "event": "user.updated",
     "principal": "key:5f0c…", "user_id": "0d4e…", "changed": ["email"]}

Events: ``user.created``, ``user.updated`` (with the names of the fields the
caller set), ``user.deleted``, ``user.restored``, ``users.purged`` (with
``count`` and ``deleted_before``, no user id). ``principal`` is ``null`` when
the core is embedded without one. Several processes may append to one file:
each line is a single ``write(2)`` on an ``O_APPEND`` descriptor, so lines
never interleave. Lines are written after the change committed; a failed
write is logged by userplane (``userplane.events``) and the change stands.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from userplane.plugin import ConfigurationError, SettingsSection, hookimpl, section

if TYPE_CHECKING:
    from userplane.plugin import Principal, Registry, Settings, User

PREFIX = "AUDIT_LOG_"


@attrs.frozen
class AuditLogSettings:
    """``USERPLANE_AUDIT_LOG_FILE``: the file lines are appended to (off when unset)."""

    file: str | None = None


class AuditLog:
    """The open log file of one registry."""

    def __init__(self, path: str) -> None:
        # 0o600: who did what to which user is for the operators' eyes only.
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, in one ``write(2)``: whole under concurrent writers."""
        # ASCII (json.dumps escapes the rest), so its length in characters is in bytes.
        line = json.dumps(record, separators=(",", ":"), default=datetime.isoformat) + "\n"
        if os.write(self.fd, line.encode()) != len(line):  # a full disk: say so, never split
            raise OSError(f"the audit log took part of a {len(line)}-byte line")

    def close(self) -> None:
        """Close the file (the registry is closing)."""
        os.close(self.fd)


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_AUDIT_LOG_FILE``."""
    return SettingsSection(PREFIX, AuditLogSettings)


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Refuse a file in a missing directory at start-up, not at the first change."""
    path = section(AuditLogSettings, settings, PREFIX).file
    if path and not Path(path).parent.is_dir():
        raise ConfigurationError(f"USERPLANE_AUDIT_LOG_FILE: no directory {Path(path).parent}")


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """The log file, opened on the first change (in each worker) and closed with the registry."""
    path = section(AuditLogSettings, registry.settings, PREFIX).file
    if path:
        registry.services.register(AuditLog, lambda: AuditLog(path), close=AuditLog.close)


def _log(registry: Registry, event: str, principal: Principal | None, **fields: Any) -> None:
    # Ids only, never the email, name or new values: the log is kept long and
    # cannot be purged, so personal data in it would outlive the user's erasure.
    # The principal's id says who acted; it is an identifier, never a secret.
    if AuditLog in registry.services:
        who = getattr(principal, "id", None)
        record = {"time": datetime.now(UTC), "event": event, "principal": who, **fields}
        registry.services.get(AuditLog).write(record)


@hookimpl
def userplane_user_created(user: User, principal: Principal | None, registry: Registry) -> None:
    """``user.created``."""
    _log(registry, "user.created", principal, user_id=str(user.id))


@hookimpl
def userplane_user_updated(
    user: User, changed: frozenset[str], principal: Principal | None, registry: Registry
) -> None:
    """``user.updated``, with the names of the fields the caller set."""
    _log(registry, "user.updated", principal, user_id=str(user.id), changed=sorted(changed))


@hookimpl
def userplane_user_deleted(user: User, principal: Principal | None, registry: Registry) -> None:
    """``user.deleted``."""
    _log(registry, "user.deleted", principal, user_id=str(user.id))


@hookimpl
def userplane_user_restored(user: User, principal: Principal | None, registry: Registry) -> None:
    """``user.restored``."""
    _log(registry, "user.restored", principal, user_id=str(user.id))


@hookimpl
def userplane_user_purged(
    user_id: uuid.UUID, principal: Principal | None, registry: Registry
) -> None:
    """``user.purged``: one user erased at once (``userplane users shred``)."""
    _log(registry, "user.purged", principal, user_id=str(user_id))


@hookimpl
def userplane_users_purged(
    count: int, deleted_before: datetime, principal: Principal | None, registry: Registry
) -> None:
    """``users.purged``: how many, and deleted before when."""
    _log(registry, "users.purged", principal, count=count, deleted_before=deleted_before)
