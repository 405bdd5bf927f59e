"""Authentication by a header a trusted reverse proxy sets (``X-Remote-User``).

The proxy (oauth2-proxy, Apache ``mod_auth_*``, an SSO gateway) authenticates
the user and passes the name on; userplane believes it only from a direct
peer in ``USERPLANE_TRUSTED_PROXIES``. The proxy must drop any such header a
client sent, or a client could name anyone. Off until enabled.

Settings (``USERPLANE_TRUSTED_HEADER_*``):

- ``ENABLED`` (default false): needs ``USERPLANE_TRUSTED_PROXIES``;
- ``USER`` (default ``X-Remote-User``): the header naming the user;
- ``ROLES`` (default ``X-Remote-Roles``; empty for none): roles, separated by
  commas or spaces; roles userplane does not know are ignored.

The principal is ``header:<user>``, of kind ``trusted-header``. There is
nothing to revoke here: the proxy decides on every request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from userplane.plugin import (
    ConfigurationError,
    Principal,
    SettingsSection,
    TrustedProxies,
    Unauthenticated,
    hookimpl,
    section,
)

if TYPE_CHECKING:
    from userplane.plugin import Credentials, Registry, Settings

#: The one answer to every refusal: it must not tell a prober what was wrong.
REJECTED = "the credentials were not accepted"
PREFIX = "TRUSTED_HEADER_"


@attrs.frozen
class TrustedHeaderSettings:
    """This plugin's settings, from ``USERPLANE_TRUSTED_HEADER_*``."""

    enabled: bool = False
    user: str = "X-Remote-User"
    roles: str = "X-Remote-Roles"


@attrs.frozen
class Gate:
    """This plugin's state in one registry: what to read, and from whom."""

    enabled: bool
    user: str
    roles: str
    proxies: TrustedProxies


def _settings(settings: Settings) -> TrustedHeaderSettings:
    cfg = section(TrustedHeaderSettings, settings, PREFIX)
    if cfg.enabled and not (settings.trusted_proxies and cfg.user.strip()):
        needs = "USERPLANE_TRUSTED_PROXIES (who sets the header) and USERPLANE_TRUSTED_HEADER_USER"
        raise ConfigurationError(f"USERPLANE_TRUSTED_HEADER_ENABLED: needs {needs}")
    return cfg


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_TRUSTED_HEADER_*``."""
    return SettingsSection(PREFIX, TrustedHeaderSettings)


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Refuse a bad configuration at start-up, naming the variable."""
    _settings(settings)


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """Read the settings once per registry, not on every request."""
    cfg = _settings(registry.settings)
    proxies = TrustedProxies(registry.settings.trusted_proxies)
    gate = Gate(cfg.enabled, cfg.user.strip().lower(), cfg.roles.strip().lower(), proxies)
    registry.services.register_value(Gate, gate, name="trusted_header")


@hookimpl
def userplane_authenticate(credentials: Credentials, registry: Registry) -> Principal | None:
    """The user a trusted proxy names; the header from anyone else is refused."""
    gate = registry.services.get(Gate)
    user = credentials.headers.get(gate.user) if gate.enabled else None
    if user is None:
        return None
    # Present but not from a trusted proxy: a client naming itself. Refused, not
    # passed on, so that no other plugin is asked to make sense of the request.
    if not gate.proxies.trusts(credentials.peer_address):
        raise Unauthenticated(REJECTED)
    user = user.strip()
    if not user or len(user) > 256 or not user.isprintable():
        raise Unauthenticated(REJECTED)
    sent = credentials.headers.get(gate.roles, "").replace(",", " ")  # no header: "" is none
    roles = frozenset(r for r in sent.split() if r in registry.auth.roles)
    return Principal(id=f"header:{user}", kind="trusted-header", roles=roles, name=user)
