"""``userplane groups …``: groups, their members and the roles they grant."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import click

from userplane.frontends.cli.app import OperationGroup, State, cli, confirm, pass_state, yes_option
from userplane.frontends.cli.output import emit, format_option

# The core's modules are imported in the commands that use them: --help must not pay.
if TYPE_CHECKING:
    from userplane.groups import Group, GroupService
    from userplane.users import User

T = TypeVar("T")

COLUMNS = ("id", "display_name", "roles", "external_id", "version", "updated_at")
MEMBER_COLUMNS = ("id", "email", "full_name", "is_active")


def _show(groups: list[Group] | Iterator[Group], fmt: str) -> None:
    from userplane import convert

    def row(group: Group) -> dict[str, object]:
        data = convert.group_to_dict(group)
        if fmt != "json":  # one cell: "editor viewer", or none ("-") when it grants none
            data["roles"] = " ".join(data["roles"]) or None
        return data

    emit((row(g) for g in groups), fmt, COLUMNS)


def _pages(fetch: Callable[[str | None], tuple[tuple[T, ...], str | None]]) -> Iterator[T]:
    """Every item of a paged list, following ``next`` until the last page."""
    cursor: str | None = None
    while True:
        items, cursor = fetch(cursor)
        yield from items
        if cursor is None:
            return


def _group(service: GroupService, id_or_name: str) -> Group:
    return service.find(id_or_name)


def _user_ids(
    state: State, users: tuple[str, ...], include_deleted: bool = False
) -> list[uuid.UUID]:
    return [state.registry.users.find(u, include_deleted).id for u in users]


@cli.group(cls=OperationGroup)
def groups() -> None:
    """Groups: named sets of users, and the roles they grant their members."""


@groups.command()
@click.argument("name")
@click.option("--role", "roles", multiple=True, help="A role the group grants (repeatable).")
@click.option("--external-id", default=None, help="The identity provider's id for the group.")
@format_option
@pass_state
def create(
    state: State, name: str, roles: tuple[str, ...], external_id: str | None, fmt: str
) -> None:
    """Create a group called NAME and print it."""
    from userplane import convert

    data: dict[str, object] = {"display_name": name, "roles": list(roles)}
    if external_id is not None:
        data["external_id"] = external_id
    _show([state.registry.groups.create(convert.new_group_from(data))], fmt)


@groups.command("list")
@click.option("--member", default=None, help="Only the groups of this user (id or email).")
@click.option("-q", "--query", "q", default=None, help="Substring of the name, any case.")
@format_option
@pass_state
def list_(state: State, member: str | None, q: str | None, fmt: str) -> None:
    """List groups, oldest first, following every page."""
    from userplane.groups import GroupQuery
    from userplane.users import MAX_LIMIT

    member_id = None if member is None else state.registry.users.find(member).id
    service = state.registry.groups

    def fetch(cursor: str | None) -> tuple[tuple[Group, ...], str | None]:
        page = service.list(GroupQuery(limit=MAX_LIMIT, cursor=cursor, member=member_id, q=q))
        return page.items, page.next

    _show(_pages(fetch), fmt)


@groups.command()
@click.argument("id_or_name")
@format_option
@pass_state
def get(state: State, id_or_name: str, fmt: str) -> None:
    """Show one group, by id or by name (any letter case)."""
    _show([_group(state.registry.groups, id_or_name)], fmt)


@groups.command()
@click.argument("id_or_name")
@click.option("--name", default=None, help="New name.")
@click.option(
    "--role", "roles", multiple=True, help="The roles it grants, all of them (repeatable)."
)
@click.option("--no-roles", is_flag=True, help="Grant no role any more.")
@click.option("--external-id", default=None, help="New external id.")
@click.option("--clear-external-id", is_flag=True, help="Remove the external id.")
@click.option("--if-version", type=int, default=None, help="Only if the group is at this version.")
@format_option
@pass_state
def update(
    state: State,
    id_or_name: str,
    name: str | None,
    roles: tuple[str, ...],
    no_roles: bool,
    external_id: str | None,
    clear_external_id: bool,
    if_version: int | None,
    fmt: str,
) -> None:
    """Rename a group, set the roles it grants or its external id."""
    from userplane import convert

    if roles and no_roles:
        raise click.UsageError("--role and --no-roles exclude each other")
    if external_id is not None and clear_external_id:
        raise click.UsageError("--external-id and --clear-external-id exclude each other")
    data: dict[str, object] = {}
    if name is not None:
        data["display_name"] = name
    if roles or no_roles:
        data["roles"] = list(roles)
    if external_id is not None or clear_external_id:
        data["external_id"] = external_id
    service = state.registry.groups
    group = _group(service, id_or_name)
    _show([service.update(group.id, convert.group_changes_from(data), if_version)], fmt)


@groups.command()
@click.argument("id_or_name")
@click.option("--if-version", type=int, default=None, help="Only if the group is at this version.")
@yes_option
@format_option
@pass_state
def delete(state: State, id_or_name: str, if_version: int | None, yes: bool, fmt: str) -> None:
    """Delete a group for good (its members stay users); prints it as it was."""
    service = state.registry.groups
    group = _group(service, id_or_name)
    confirm(f"Delete group {group.display_name!r} for good?", yes=yes)
    _show([service.delete(group.id, if_version)], fmt)


@groups.command()
@click.argument("id_or_name")
@format_option
@pass_state
def members(state: State, id_or_name: str, fmt: str) -> None:
    """List a group's live members, by id."""
    from userplane import convert
    from userplane.users import MAX_LIMIT

    service = state.registry.groups
    group_id = _group(service, id_or_name).id

    def fetch(cursor: str | None) -> tuple[tuple[User, ...], str | None]:
        page = service.members(group_id, MAX_LIMIT, cursor)
        return page.items, page.next

    emit((convert.user_to_dict(u) for u in _pages(fetch)), fmt, MEMBER_COLUMNS)


def _members_command(name: str, adding: bool, summary: str) -> None:
    """``groups add`` or ``groups remove``: the same shape, one direction each."""

    @groups.command(name, help=summary)
    @click.argument("id_or_name")
    @click.argument("users", nargs=-1, required=True)
    @click.option(
        "--if-version", type=int, default=None, help="Only if the group is at this version."
    )
    @format_option
    @pass_state
    def command(
        state: State, id_or_name: str, users: tuple[str, ...], if_version: int | None, fmt: str
    ) -> None:
        service = state.registry.groups
        group = _group(service, id_or_name)
        if adding:
            group = service.add_members(group.id, _user_ids(state, users), if_version)
        else:
            # A deleted member too: its membership would give it the group's roles on restore.
            ids = _user_ids(state, users, include_deleted=True)
            group = service.remove_members(group.id, ids, if_version)
        _show([group], fmt)


_members_command("add", True, "Add USERS (ids or emails) to a group; members already in it stay.")
_members_command(
    "remove", False, "Remove USERS (ids or emails) from a group; others are left alone."
)
