"""``userplane users …``: every user operation the API has."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import click

from userplane.frontends.cli.app import (
    OperationGroup,
    State,
    cli,
    confirm,
    pass_state,
    yes_option,
)
from userplane.frontends.cli.output import HumanDuration, emit, format_option

# The core's users and convert modules (email-validator, cattrs) are imported in
# the commands that use them: --help and the other commands must not pay for them.
if TYPE_CHECKING:
    from userplane.users import User, UserService

COLUMNS = ("id", "email", "full_name", "is_active", "created_at", "version", "deleted_at")


def _show(users: list[User] | Iterator[User], fmt: str) -> None:
    from userplane import convert

    emit((convert.user_to_dict(u) for u in users), fmt, COLUMNS)


def _id_of(service: UserService, id_or_email: str) -> uuid.UUID:
    return service.find(id_or_email).id


@cli.group(cls=OperationGroup)
def users() -> None:
    """Create, read, update and delete users."""


def _attributes(text: str | None) -> Any:
    """``--attributes`` as JSON (``InvalidInput`` naming it when it is not JSON)."""
    if text is None:
        return None
    import json

    from userplane.errors import InvalidInput

    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInput.for_field("--attributes", "must be a JSON object") from None


external_source_option = click.option(
    "--external-source", default=None, help="Who issued --external-id (an identity provider)."
)
external_id_option = click.option(
    "--external-id", default=None, help="The id that source knows the user by (with its source)."
)


@users.command()
@click.option("--email", required=True, help="The address; must be unique (case-insensitively).")
@click.option("--full-name", default=None, help="Display name.")
@click.option("--inactive", is_flag=True, help="Create the user deactivated.")
@external_source_option
@external_id_option
@click.option("--attributes", default=None, help="Custom attributes, a JSON object.")
@format_option
@pass_state
def create(
    state: State,
    email: str,
    full_name: str | None,
    inactive: bool,
    external_source: str | None,
    external_id: str | None,
    attributes: str | None,
    fmt: str,
) -> None:
    """Create a user and print it."""
    from userplane import convert

    data: dict[str, Any] = {"email": email, "full_name": full_name, "is_active": not inactive}
    if external_source is not None or external_id is not None:
        data |= {"external_source": external_source, "external_id": external_id}
    if attributes is not None:
        data["attributes"] = _attributes(attributes)
    _show([state.registry.users.create(convert.new_user_from(data))], fmt)


@users.command("list")
@click.option(
    "--sort",
    default="created_at",
    show_default=True,
    help="created_at, email or full_name; prefix - for descending.",
)
@click.option("--include-deleted", is_flag=True, help="Deleted users too.")
@click.option(
    "--active/--inactive", "is_active", default=None, help="Only active (inactive) users."
)
@click.option("--email", default=None, help="Only the user with this address.")
@click.option("-q", "--query", "q", default=None, help="Substring of email or name, any case.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option("--external-source", default=None, help="Only users from this source.")
@click.option("--external-id", default=None, help="Only users with this external id.")
@format_option
@pass_state
def list_(
    state: State,
    sort: str,
    include_deleted: bool,
    is_active: bool | None,
    email: str | None,
    q: str | None,
    limit: int | None,
    external_source: str | None,
    external_id: str | None,
    fmt: str,
) -> None:
    """List users (oldest first unless --sort says otherwise), following every page."""
    from userplane.users import MAX_LIMIT, UserQuery

    service = state.registry.users

    def all_users() -> Iterator[User]:
        cursor: str | None = None
        left = limit
        while True:
            size = MAX_LIMIT if left is None else min(left, MAX_LIMIT)
            query = UserQuery(
                limit=size,
                cursor=cursor,
                is_active=is_active,
                email=email,
                q=q,
                sort=sort,
                include_deleted=include_deleted,
                external_source=external_source,
                external_id=external_id,
            )
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
@click.option("--include-deleted", is_flag=True, help="Find a deleted user too.")
@format_option
@pass_state
def get(state: State, id_or_email: str, include_deleted: bool, fmt: str) -> None:
    """Show one user, by id or by email."""
    _show([state.registry.users.find(id_or_email, include_deleted)], fmt)


@users.command()
@click.argument("id_or_email")
@click.option("--email", default=None, help="New address.")
@click.option("--full-name", default=None, help="New display name.")
@click.option("--clear-full-name", is_flag=True, help="Remove the display name.")
@click.option("--active/--inactive", "is_active", default=None, help="Activate or deactivate.")
@external_source_option
@external_id_option
@click.option("--clear-external-id", is_flag=True, help="Remove the external id and its source.")
@click.option(
    "--attributes",
    default=None,
    help="A JSON merge patch of the custom attributes (a key set to null goes).",
)
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
    external_source: str | None,
    external_id: str | None,
    clear_external_id: bool,
    attributes: str | None,
    if_version: int | None,
    fmt: str,
) -> None:
    """Change some fields of a user."""
    from userplane import convert

    if full_name is not None and clear_full_name:
        raise click.UsageError("--full-name and --clear-full-name exclude each other")
    external = external_source is not None or external_id is not None
    if external and clear_external_id:
        raise click.UsageError(
            "--external-source/--external-id and --clear-external-id exclude each other"
        )
    data: dict[str, object] = {}
    if email is not None:
        data["email"] = email
    if full_name is not None or clear_full_name:
        data["full_name"] = full_name
    if is_active is not None:
        data["is_active"] = is_active
    # Only what was given: a source alone is refused (as over HTTP), never a clear.
    if external_source is not None:
        data["external_source"] = external_source
    if external_id is not None:
        data["external_id"] = external_id
    if clear_external_id:
        data |= {"external_source": None, "external_id": None}
    if attributes is not None:
        data["attributes"] = _attributes(attributes)
    service = state.registry.users
    user_id = _id_of(service, id_or_email)
    _show([service.update(user_id, convert.changes_from(data), if_version)], fmt)


@users.command()
@click.argument("id_or_email")
@click.option("--if-version", type=int, default=None, help="Only if the user is at this version.")
@format_option
@pass_state
def delete(state: State, id_or_email: str, if_version: int | None, fmt: str) -> None:
    """Delete a user (softly: restorable until purged); prints it as deleted."""
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


@users.command()
@click.argument("id_or_email")
@format_option
@pass_state
def restore(state: State, id_or_email: str, fmt: str) -> None:
    """Bring a deleted user back."""
    service = state.registry.users
    _show([service.restore(service.find(id_or_email, include_deleted=True).id)], fmt)


class Duration(click.ParamType[timedelta]):
    """``30d``, ``12h``, ``90m``, ``45s`` or ``2w``.

    Gives a ``timedelta`` that prints as people say it (``30 days``, never
    ``30 days, 0:00:00``), in any message quoting it.
    """

    name = "duration"
    _UNITS: ClassVar[dict[str, str]] = {
        "s": "seconds",
        "m": "minutes",
        "h": "hours",
        "d": "days",
        "w": "weeks",
    }

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return HumanDuration.of(value)
        match = re.fullmatch(r"([0-9]{1,9})([smhdw])", str(value).strip().lower())
        if match is None:
            self.fail(f"{value!r} is not a duration like 30d, 12h, 90m, 45s or 2w", param, ctx)
        try:
            return HumanDuration(**{self._UNITS[match[2]]: int(match[1])})
        except OverflowError:
            self.fail(f"{value!r} is longer than any duration the calendar holds", param, ctx)


@users.command()
@click.argument("id_or_email")
@yes_option
@format_option
@pass_state
def shred(state: State, id_or_email: str, yes: bool, fmt: str) -> None:
    """Erase one user now: delete it if live, then purge it (its data key goes too).

    For erasure on request. Unlike ``purge``, it touches no other deleted user.
    """
    service = state.registry.users
    user = service.find(id_or_email, include_deleted=True)
    confirm(f"Erase user {user.id} for good (it cannot be restored)?", yes=yes)
    if user.deleted_at is None:
        service.delete(user.id)
    service.purge_user(user.id)
    if fmt != "table":
        emit([{"shredded": str(user.id)}], fmt, ())
    else:
        click.echo(f"shredded user {user.id}")


@users.command()
@click.option(
    "--older-than",
    type=Duration(),
    required=True,
    help="Purge users deleted longer ago than this (30d, 12h …).",
)
@yes_option
@format_option
@pass_state
def purge(state: State, older_than: timedelta, yes: bool, fmt: str) -> None:
    """Remove deleted users for good (they cannot be restored afterwards)."""
    confirm(f"Remove for good every user deleted more than {older_than} ago?", yes=yes)
    count = state.registry.users.purge(older_than)
    # Expired Idempotency-Key records go too: they only ever replay creations.
    keys = state.registry.idempotency.purge_expired()
    if fmt != "table":
        emit([{"purged": count, "expired_idempotency_keys": keys}], fmt, ())
    else:
        click.echo(f"purged {count} deleted user{'s' if count != 1 else ''}")
        click.echo(f"removed {keys} expired idempotency key{'s' if keys != 1 else ''}")
