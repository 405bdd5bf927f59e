"""The rate-limits plugin: per-principal and per-address limits, shared through the storage.

``USERPLANE_RATE_LIMITS`` (``policy``) names the limits per class of request:
``read`` and ``write`` per principal, ``auth-failure`` per client address
(resolved through ``USERPLANE_TRUSTED_PROXIES``) and per API-key id. On by
default in prod (``policy.DEFAULT``), off in dev unless set. The state lives
in the storage (``store``: one atomic GCRA statement per check, on the
database's clock), so N instances enforce one limit; a process decides
requests far under their limit by itself (``limiter``), with the accuracy
its docstring states.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from userplane.plugin import (
    ConfigurationError,
    Quota,
    RateLimit,
    RateLimitCounters,
    Settings,
    SettingsSection,
    hookimpl,
    section,
)

if TYPE_CHECKING:
    from userplane.plugin import Registry

_MIGRATIONS = Path(__file__).parent / "migrations"
PREFIX = "RATE_"


def _slack(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= 0.5:
        raise ValueError("USERPLANE_RATE_LIMIT_SLACK: must be between 0 and 0.5")


def _sync(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 60_000:
        raise ValueError("USERPLANE_RATE_LIMIT_SYNC_MS: must be between 0 and 60000")


@attrs.frozen
class RateLimitSettings:
    """This plugin's settings, from ``USERPLANE_RATE_*``."""

    #: ``read=600/60s,write=120/60s,auth-failure=20/300s``, ``off``, or unset: the
    #: defaults in prod, off in dev.
    limits: str | None = None
    #: The share of a limit a process may admit before it reports to the database.
    limit_slack: float = attrs.field(default=0.05, validator=_slack)
    #: How often a process reports what it admitted by itself, in ms (0: never by itself).
    limit_sync_ms: int = attrs.field(default=1000, validator=_sync)


SETTINGS = SettingsSection(PREFIX, RateLimitSettings)


def policies(settings: Settings) -> dict[str, RateLimit]:
    """The limits in force for ``settings``; ``ConfigurationError`` naming the variable."""
    from userplane.plugins.rate_limits import policy

    own = section(RateLimitSettings, settings, PREFIX)
    text = own.limits
    if text is None:
        text = policy.DEFAULT if settings.env == "prod" else "off"
    try:
        return policy.parse(text)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_RATE_LIMITS``, ``…_RATE_LIMIT_SLACK``, ``…_RATE_LIMIT_SYNC_MS``."""
    return SETTINGS


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Fail at start-up, naming the variable, on a malformed limit."""
    policies(settings)


@hookimpl
def userplane_migrations() -> dict[str, Path]:
    """The ``rate_limits`` table (UNLOGGED on PostgreSQL)."""
    return {d.name: d for d in _MIGRATIONS.iterdir() if d.is_dir()}


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """The limiter, when any limit is on; a storage that cannot hold its state fails now."""
    from userplane.sql import SQLStorage

    in_force = policies(registry.settings)
    if not in_force:
        return
    storage = registry.storage
    if not isinstance(storage, SQLStorage):
        raise ConfigurationError(
            f"the {storage.name} storage cannot hold rate-limit state (it is no userplane.sql "
            "store); set USERPLANE_RATE_LIMITS=off, or disable the rate_limits plugin"
        )
    from userplane.plugins.rate_limits.limiter import Limiter
    from userplane.plugins.rate_limits.store import RateStore

    store = RateStore(storage)  # refuses a dialect it has no statements for, now
    own = section(RateLimitSettings, registry.settings, PREFIX)
    limiter = Limiter(in_force, store, own.limit_slack, own.limit_sync_ms / 1000)
    registry.services.register_value(
        Limiter, limiter, ping=lambda _: store.ping(), close=Limiter.close, name="rate_limits"
    )
    registry.services.register_value(RateLimitCounters, limiter.counters)


@hookimpl
def userplane_rate_limit(
    kind: str, subject: str, consume: bool, registry: Registry
) -> Quota | None:
    """Decide one request against its class's limit; ``None`` when the class has none."""
    from userplane.plugins.rate_limits.limiter import Limiter

    if Limiter not in registry.services:
        return None
    return registry.services.get(Limiter).check(kind, subject, consume)


@hookimpl
def userplane_describe(settings: Settings) -> dict[str, str]:
    """The limits in force, as the setting spells them."""
    from userplane.plugins.rate_limits import policy

    return {"rate limits": policy.describe(policies(settings))}
