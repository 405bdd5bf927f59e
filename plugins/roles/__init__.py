"""The roles plugin: the role policy, on ``userplane_authorize``.

Allows what the principal's roles grant: the built-in ``admin``, ``editor``
and ``viewer``, and custom roles from ``USERPLANE_ROLES``. It only ever allows
(it never denies), so other plugins can deny more. Block it
(``USERPLANE_DISABLED_PLUGINS=roles``) to replace the policy with your own.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import attrs

from userplane.plugin import Principal, Settings, SettingsSection, hookimpl, section

if TYPE_CHECKING:
    from userplane.plugin import Registry
    from userplane.plugins.roles.policy import RolePolicy


@attrs.frozen
class RoleSettings:
    """``USERPLANE_ROLES``: custom roles, a JSON object of role -> [actions]."""

    roles: str | None = None


SETTINGS = SettingsSection("", RoleSettings)


def _roles(settings: Settings) -> dict[str, frozenset[str]]:
    from userplane.plugins.roles.policy import parse_roles

    return parse_roles(section(RoleSettings, settings, "").roles)


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_ROLES``."""
    return SETTINGS


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Refuse a bad ``USERPLANE_ROLES`` at start-up."""
    _roles(settings)


@hookimpl
def userplane_roles(settings: Settings) -> dict[str, frozenset[str]]:
    """The built-in roles and ``USERPLANE_ROLES``."""
    return _roles(settings)


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """The policy, parsed once for this registry."""
    from userplane.plugins.roles.policy import RolePolicy

    # Every plugin's roles (``registry.auth.roles``), not only ours: built lazily, once
    # ``auth`` exists.
    registry.services.register(RolePolicy, lambda: RolePolicy(registry.auth.roles))


@hookimpl
def userplane_authorize(
    principal: Principal, action: str, resource: Any, registry: Registry
) -> bool | None:
    """Allow what a role grants; no opinion otherwise."""
    policy: RolePolicy = registry.services.get(_policy_type())
    return True if policy.grants(principal, action) else None


@functools.cache
def _policy_type() -> type[RolePolicy]:
    # Imported on first use, not with the plugin (every process loads it, --help too).
    from userplane.plugins.roles.policy import RolePolicy

    return RolePolicy
