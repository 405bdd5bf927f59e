"""Roles and what they grant: the built-in ones and ``USERPLANE_ROLES``."""

from __future__ import annotations

import json
from collections.abc import Mapping

from userplane.plugin import (
    ACTIONS,
    NAMESPACES,
    USERS_DELETE,
    USERS_READ,
    USERS_READ_DELETED,
    USERS_RESTORE,
    USERS_WRITE,
    ConfigurationError,
    Principal,
)

#: Built-in roles. ``admin`` may do everything, plugin-defined actions included.
BUILTIN_ROLES: Mapping[str, frozenset[str]] = {
    "admin": frozenset({"*"}),
    "editor": frozenset({USERS_READ, USERS_READ_DELETED, USERS_WRITE, USERS_DELETE, USERS_RESTORE}),
    "viewer": frozenset({USERS_READ}),
}


def parse_roles(text: str | None) -> dict[str, frozenset[str]]:
    """The built-in roles plus custom ones from ``USERPLANE_ROLES``.

    ``USERPLANE_ROLES`` is a JSON object mapping a role name to its actions:
    ``{"support": ["users:read", "users:restore"]}``. A built-in role cannot be
    redefined.
    """
    roles = dict(BUILTIN_ROLES)
    if not text:
        return roles
    name = "USERPLANE_ROLES"
    try:
        custom = json.loads(text)
    except ValueError:
        raise ConfigurationError(f"{name}: must be a JSON object of role: [actions]") from None
    if not isinstance(custom, dict):
        raise ConfigurationError(f"{name}: must be a JSON object of role: [actions]")
    for role, actions in custom.items():
        if role in BUILTIN_ROLES:
            raise ConfigurationError(f"{name}: {role!r} is built in and cannot be redefined")
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ConfigurationError(f"{name}: {role!r} must map to a list of action names")
        # A plugin's actions live in its own namespace ("reports:read"); in userplane's
        # namespaces only userplane's actions exist, so a typo there is caught.
        unknown = sorted(
            a
            for a in actions
            if a not in ACTIONS and (":" not in a or a.partition(":")[0] in NAMESPACES)
        )
        if unknown:
            raise ConfigurationError(f"{name}: {role!r} names unknown actions {unknown}")
        roles[role] = frozenset(actions)
    return roles


class RolePolicy:
    """What each role grants, parsed once per registry."""

    def __init__(self, roles: Mapping[str, frozenset[str]]) -> None:
        self.roles = roles

    def grants(self, principal: Principal, action: str) -> bool:
        """Whether one of ``principal``'s roles grants ``action``."""
        for role in principal.roles:
            allowed = self.roles.get(role)
            if allowed is not None and (action in allowed or "*" in allowed):
                return True
        return False
