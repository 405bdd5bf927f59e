"""The SCIM 2.0 server plugin (RFC 7643, RFC 7644): identity providers provision users and groups.

``/scim/v2/Users`` and ``/scim/v2/Groups`` over the core's users and groups
(``service``, ``resources``), with filters run as the core's SQL (``users``,
``groups``, ``filters``), PATCH (``patch``, ``paths``), ``attributes`` and
``excludedAttributes`` (``projection``), and the discovery documents
(``schemas``). Every error there is a SCIM ``Error`` (``errors``). A client
authenticates with an API key of the ``provisioner`` role, which grants
``scim:provision`` and nothing else. What a client writes that a user does
not hold (a ``userName`` other than its address) lives in this plugin's
table (``store``). SQLite and PostgreSQL; on
another store the plugin stays out of the way. See docs/scim.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from userplane.plugin import Settings, SettingsSection, hookimpl, plugin_role, section

if TYPE_CHECKING:
    import click

    from userplane.plugin import Registry
    from userplane.plugins.scim.service import Provisioning

_MIGRATIONS = Path(__file__).parent / "migrations"
PREFIX = "SCIM_"
#: The action of every provisioning route, and the role granting it (and nothing else).
PROVISION = "scim:provision"
PROVISIONER = "provisioner"


def _source(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or len(value) > 64 or value != value.strip():
        raise ValueError(
            "USERPLANE_SCIM_SOURCE: must be 1 to 64 characters, without space at either end"
        )


def _base_url(_: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and (
        not value.startswith(("https://", "http://")) or not value.rstrip("/").endswith("/scim/v2")
    ):
        raise ValueError(
            "USERPLANE_SCIM_BASE_URL: must be the absolute URL of /scim/v2 "
            "(https://id.example.org/scim/v2)"
        )


@attrs.frozen
class ScimSettings:
    """This plugin's settings, from ``USERPLANE_SCIM_*``."""

    #: The source of the external ids SCIM clients set (``externalId``): ids other
    #: sources gave a user are neither shown to nor cleared by them.
    source: str = attrs.field(default="scim", validator=_source)
    #: The public URL of ``/scim/v2`` behind a proxy that rewrites hosts; else each request's.
    base_url: str | None = attrs.field(default=None, validator=_base_url)


SETTINGS = SettingsSection(PREFIX, ScimSettings)


def settings_of(settings: Settings) -> ScimSettings:
    """This plugin's settings; ``ConfigurationError`` naming the variable at fault."""
    return section(ScimSettings, settings, PREFIX)


def _provisioning() -> type[Provisioning]:
    from userplane.plugins.scim.service import Provisioning

    return Provisioning


def provisioning(registry: Registry) -> Provisioning:
    """The SCIM operations of ``registry``; ``ConfigurationError`` where the plugin is out."""
    from userplane.plugin import ConfigurationError

    kind = _provisioning()
    if kind not in registry.services:
        raise ConfigurationError(
            f"the {registry.storage.name} storage cannot hold SCIM data: the scim plugin "
            "runs on SQLite and PostgreSQL"
        )
    return registry.services.get(kind)


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_SCIM_SOURCE`` and ``USERPLANE_SCIM_BASE_URL``."""
    return SETTINGS


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Fail at start-up, naming the variable, on a bad setting."""
    settings_of(settings)


@hookimpl
def userplane_migrations() -> dict[str, Path]:
    """``scim_users``, for SQLite and PostgreSQL."""
    return {d.name: d for d in _MIGRATIONS.iterdir() if d.is_dir()}


@hookimpl
def userplane_roles(settings: Settings) -> dict[str, frozenset[str]]:
    """``provisioner``: provisions over SCIM, nothing else.

    Unless the operator defines a ``provisioner`` of their own in
    ``USERPLANE_ROLES``: theirs stands.
    """
    return plugin_role(settings, PROVISIONER, {PROVISION})


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """The provisioning service, on a SQL storage whose dialect we have tables for."""
    from userplane.plugins.scim.store import DIALECTS, ScimUsers
    from userplane.sql import SQLStorage

    storage = registry.storage
    if not isinstance(storage, SQLStorage) or storage.dialect.name not in DIALECTS:
        return
    own = settings_of(registry.settings)
    rows = ScimUsers(storage)
    registry.services.register(
        _provisioning(),
        lambda: _provisioning()(registry, rows, own.source),
        ping=lambda _: rows.ping(),
        name="scim",
    )


@hookimpl
def userplane_http_middleware(registry: Registry) -> list[Any]:
    """SCIM ``Error`` bodies for every error under ``/scim/v2``."""
    if _provisioning() not in registry.services:
        return []
    from userplane.plugins.scim.errors import ScimErrors

    return [ScimErrors()]


@hookimpl
def userplane_http_routes(app: Any, registry: Registry) -> None:
    """``/scim/v2/…``: Users, Groups, and the discovery documents."""
    provisioning = _provisioning()
    if provisioning not in registry.services:
        return
    import falcon

    from userplane.plugins.scim.errors import SCIM_JSON, ScimError, handle_scim_error
    from userplane.plugins.scim.resources import add_routes

    # SCIM bodies are JSON by another name (RFC 7644 §3.1): the service's own JSON handler.
    for handlers in (app.req_options.media_handlers, app.resp_options.media_handlers):
        handlers[SCIM_JSON] = handlers[falcon.MEDIA_JSON]
    app.add_error_handler(ScimError, handle_scim_error)
    add_routes(app, registry.services.get(provisioning), settings_of(registry.settings).base_url)


@hookimpl
def userplane_cli_commands(cli: click.Group) -> None:
    """``userplane scim user|group``."""
    from userplane.plugins.scim.commands import add_commands

    add_commands(cli)


@hookimpl
def userplane_describe(registry: Registry | None) -> dict[str, str]:
    """Where SCIM clients provision, and with which role."""
    if registry is None:
        return {}
    if _provisioning() not in registry.services:
        return {"scim": "not served: the scim plugin runs on SQLite and PostgreSQL"}
    source = settings_of(registry.settings).source
    return {"scim": f"/scim/v2 (API keys of role {PROVISIONER}; source {source!r})"}
