"""``userplane users …``: every user operation the API has."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import click

from userplane import convert
from userplane.frontends.cli.app import State, cli, pass_state
from userplane.frontends.cli.output import emit, format_option
from userplane.users import MAX_LIMIT, User, UserQuery, UserService

COLUMNS = ("id", "email", "full_name", "is_active", "created_at", "version")


def _show(users: list[User] | Iterator[User], fmt: str) -> None:
    emit((convert.user_to_dict(u) for u in users), fmt, COLUMNS)


def _id_of(service: UserService, id_or_email: str) -> uuid.UUID:
    return service.find(id_or_email).id


@cli.group()
def users() -> None:
    """Create, read, update and delete users."""


@users.command()
@click.option("--email", required=True, help="The address; must be unique (case-insensitively).")
@click.option("--full-name", default=None, help="Display name.")
@click.option("--inactive", is_flag=True, help="Create the user deactivated.")
@format_option
@pass_state
def create(state: State, email: str, full_name: str | None, inactive: bool, fmt: str) -> None:
    """Create a user and print it."""
    data = {"email": email, "full_name": full_name, "is_active": not inactive}
    _show([state.registry.users.create(convert.new_user_from(data))], fmt)


@users.command("list")
@click.option(
    "--active/--inactive", "is_active", default=None, help="Only active (inactive) users."
)
@click.option("--email", default=None, help="Only the user with this address.")
@click.option("-q", "--query", "q", default=None, help="Substring of email or name, any case.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@format_option
@pass_state
def list_(
    state: State,
    is_active: bool | None,
    email: str | None,
    q: str | None,
    limit: int | None,
    fmt: str,
) -> None:
    """List users, oldest first, following every page."""
    service = state.registry.users

    def all_users() -> Iterator[User]:
        cursor: str | None = None
        left = limit
        while True:
            size = MAX_LIMIT if left is None else min(left, MAX_LIMIT)
            query = UserQuery(limit=size, cursor=cursor, is_active=is_active, email=email, q=q)
            page = service.list(query)
            yield from page.items
            if left is not None:
                left -= len(page.items)
            if page.next is None or left == 0:
                return
            cursor = page.next

    _show(all_users(), fmt)


@users.command()
@click.argument("id_or_email")
@format_option
@pass_state
def get(state: State, id_or_email: str, fmt: str) -> None:
    """Show one user, by id or by email."""
    _show([state.registry.users.find(id_or_email)], fmt)


@users.command()
@click.argument("id_or_email")
@click.option("--email", default=None, help="New address.")
@click.option("--full-name", default=None, help="New display name.")
@click.option("--clear-full-name", is_flag=True, help="Remove the display name.")
@click.option("--active/--inactive", "is_active", default=None, help="Activate or deactivate.")
@click.option("--if-version", type=int, default=None, help="Only if the user is at this version.")
@format_option
@pass_state
def update(
    state: State,
    id_or_email: str,
    email: str | None,
    full_name: str | None,
    clear_full_name: bool,
    is_active: bool | None,
    if_version: int | None,
    fmt: str,
) -> None:
    """Change some fields of a user."""
    if full_name is not None and clear_full_name:
        raise click.UsageError("--full-name and --clear-full-name exclude each other")
    data: dict[str, object] = {}
    if email is not None:
        data["email"] = email
    if full_name is not None or clear_full_name:
        data["full_name"] = full_name
    if is_active is not None:
        data["is_active"] = is_active
    service = state.registry.users
    user_id = _id_of(service, id_or_email)
    _show([service.update(user_id, convert.changes_from(data), if_version)], fmt)


@users.command()
@click.argument("id_or_email")
@click.option("--if-version", type=int, default=None, help="Only if the user is at this version.")
@format_option
@pass_state
def delete(state: State, id_or_email: str, if_version: int | None, fmt: str) -> None:
    """Delete a user; prints the user as it was."""
    service = state.registry.users
    _show([service.delete(_id_of(service, id_or_email), if_version)], fmt)


def _set_active(state: State, id_or_email: str, active: bool, fmt: str) -> None:
    service = state.registry.users
    _show([service.set_active(_id_of(service, id_or_email), active)], fmt)


@users.command()
@click.argument("id_or_email")
@format_option
@pass_state
def deactivate(state: State, id_or_email: str, fmt: str) -> None:
    """Deactivate a user (they stay stored)."""
    _set_active(state, id_or_email, False, fmt)


@users.command()
@click.argument("id_or_email")
@format_option
@pass_state
def activate(state: State, id_or_email: str, fmt: str) -> None:
    """Activate a user."""
    _set_active(state, id_or_email, True, fmt)
