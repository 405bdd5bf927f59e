"""``userplane keys create|list|revoke``."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import click

from userplane.frontends.cli import Duration, OperationGroup, State, emit, format_option, pass_state
from userplane.plugins.api_keys import service


def _emit_keys(keys: list[dict[str, Any]], fmt: str) -> None:
    columns = ("id", "name", "role", "prefix", "created_at", "expires_at", "revoked_at")
    emit(keys, fmt, (*columns, "last_used_at"))


def add_commands(cli: click.Group) -> None:
    """Add the ``keys`` group to ``cli``."""

    @cli.group(cls=OperationGroup)
    def keys() -> None:
        """Create, list and revoke API keys (Authorization: Bearer up_…)."""

    @keys.command()
    @click.option("--name", required=True, help="What the key is for (shown in listings).")
    @click.option(
        "--role", required=True, help="admin, editor, viewer, or a role from USERPLANE_ROLES."
    )
    @click.option("--expires", type=Duration(), default=None, help="Lifetime: 90d, 12h …")
    @format_option
    @pass_state
    def create(state: State, name: str, role: str, expires: timedelta | None, fmt: str) -> None:
        """Create a key and print it, once: only its hash is kept."""
        record, key = service(state.registry).create(name, role, expires)
        shown = {"key": key, **record.public()}
        if fmt == "json":
            _emit_keys([shown], fmt)
            return
        click.echo(key)
        click.echo(
            f"API key {record.id} ({record.role}) created. Keep it now: it is not shown again.",
            err=True,
        )

    @keys.command("list")
    @format_option
    @pass_state
    def list_(state: State, fmt: str) -> None:
        """Every key (never its secret), revoked ones included."""
        _emit_keys([k.public() for k in service(state.registry).list()], fmt)

    @keys.command()
    @click.argument("key_id", type=click.UUID)
    @format_option
    @pass_state
    def revoke(state: State, key_id: uuid.UUID, fmt: str) -> None:
        """Revoke a key; every process stops accepting it within the cache delay."""
        _emit_keys([service(state.registry).revoke(key_id).public()], fmt)
