"""``userplane scim user|group``: what a SCIM client sees, from the command line.

The userName a client gave a user, and the type it gave the address, are kept
by this plugin alone: ``/api/v1`` and ``userplane users`` do not show them.
These commands print a user or group exactly as ``/scim/v2`` serves it, so an
administrator can see what an identity provider sees, without its token.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import click

from userplane.frontends.cli import OperationGroup, State, pass_state
from userplane.plugin import NotFound, fold
from userplane.plugins.scim import provisioning, settings_of

if TYPE_CHECKING:  # the registry is imported when a command runs, never for --help
    from userplane.plugin import Registry, User


def _base_url(registry: Registry) -> str:
    configured = settings_of(registry.settings).base_url
    if configured:
        return configured.rstrip("/")
    return f"http://{registry.settings.host}:{registry.settings.port}/scim/v2"


def _user(registry: Registry, who: str) -> User:
    """By a userName this plugin keeps, by id, or by email address."""
    holder = provisioning(registry).user_name_holder(fold(who))
    if holder is not None:
        return registry.users.get(holder)
    try:
        uuid.UUID(who)
    except ValueError:
        if "@" not in who:
            raise NotFound(f"no user with userName {who!r}") from None
    return registry.users.find(who)


def _print(resource: dict[str, Any]) -> None:
    click.echo(json.dumps(resource, indent=2, ensure_ascii=False))


def add_commands(cli: click.Group) -> None:
    """Add the ``scim`` group to ``cli``."""

    @cli.group(cls=OperationGroup)
    def scim() -> None:
        """Users and groups as SCIM clients see them (/scim/v2)."""

    @scim.command("user")
    @click.argument("who")
    @pass_state
    def user(state: State, who: str) -> None:
        """A user, by userName, id or email address, as a SCIM User (JSON)."""
        registry = state.registry
        _print(provisioning(registry).user_resource(_user(registry, who), _base_url(registry)))

    @scim.command("group")
    @click.argument("id_or_name")
    @pass_state
    def group(state: State, id_or_name: str) -> None:
        """A group, by id or display name, as a SCIM Group with its members (JSON)."""
        registry = state.registry
        found = registry.groups.find(id_or_name)
        _print(provisioning(registry).group_resource(found, _base_url(registry)))
