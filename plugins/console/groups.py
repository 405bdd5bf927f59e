"""The console's group pages: list and search, create, edit (with its version), members, delete.

The same ``GroupService`` as ``/api/v1/groups``, under the signed-in
principal: the same checks, including that nobody hands out (or takes away)
a role through a group that they do not hold themselves.
"""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any, ClassVar

import falcon

from userplane.plugin import (
    GROUPS_READ,
    GROUPS_WRITE,
    UNSET,
    USERS_READ,
    Conflict,
    Group,
    GroupChanges,
    GroupQuery,
    InvalidInput,
    NewGroup,
    NotFound,
    PreconditionFailed,
    Principal,
    User,
)
from userplane.plugins.console.site import PREFIX, Console, errors_by_field

#: Groups per page of the list, and members per page of a group.
PAGE_SIZE = 25
_NAMES = {"display_name": "display_name", "roles": "roles", "user_ids": "email"}


def group_path(group_id: uuid.UUID) -> str:
    """The console page of one group."""
    return f"{PREFIX}/groups/{group_id}"


def _roles(
    form: dict[str, Any], known: list[str], held: frozenset[str] = frozenset()
) -> frozenset[str]:
    """The roles ticked in a form (one checkbox per role, ``role:<name>``).

    Roles the group ``held`` that are not defined any more have no checkbox:
    they stay as they are, rather than go with a rename.
    """
    return frozenset(r for r in known if f"role:{r}" in form) | (held - set(known))


class GroupsPage:
    """``/admin/groups``: the list and the new-group form (GET); create a group (POST)."""

    actions: ClassVar[dict[str, str]] = {"GET": GROUPS_READ, "POST": GROUPS_WRITE}

    def __init__(self, console: Console) -> None:
        self._console = console

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.show(req, resp, {"display_name": ""}, {}, 200)

    on_head = on_get

    def show(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        values: dict[str, str],
        errors: dict[str, str],
        status: int,
    ) -> None:
        """The list (searched, a page at a time) and the form, with any errors in it."""
        console = self._console
        q = (req.get_param("q") or "").strip()
        after = req.get_param("after") or None
        groups: tuple[Group, ...] = ()
        following = None
        try:
            page = console.registry.groups.list(
                GroupQuery(limit=PAGE_SIZE, cursor=after, q=q or None)
            )
        except InvalidInput as exc:
            errors = {**errors, **errors_by_field(exc, {"cursor": "after"})}
            status = 422
        else:
            groups, following = page.items, page.next
        params = {"q": q} if q else {}
        console.render(
            req,
            resp,
            "groups.html",
            status=status,
            groups=groups,
            q=q,
            next_url=None
            if following is None
            else f"{PREFIX}/groups?" + urllib.parse.urlencode({**params, "after": following}),
            values=values,
            errors=errors,
            roles=sorted(console.registry.auth.roles),
            may_write=console.may(req, GROUPS_WRITE),
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        console = self._console
        form = dict(console.form(req))
        new = NewGroup(
            display_name=form.get("display_name", "").strip(),
            roles=_roles(form, sorted(console.registry.auth.roles)),
            external_id=form.get("external_id", "").strip() or None,
        )
        try:
            group = console.registry.groups.create(new)
        except InvalidInput as exc:
            self.show(req, resp, form, errors_by_field(exc, _NAMES), 422)
            return
        except Conflict as exc:
            self.show(req, resp, form, {"display_name": exc.detail}, 409)
            return
        console.redirect(
            req, resp, group_path(group.id), f"Created the group {group.display_name}."
        )


class GroupPage:
    """``/admin/groups/{id}``: the group and its members (GET); save an edit (POST)."""

    actions: ClassVar[dict[str, str]] = {"GET": GROUPS_READ, "POST": GROUPS_WRITE}

    def __init__(self, console: Console) -> None:
        self._console = console

    def on_get(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        group = self._console.registry.groups.get(group_id)
        self.show(req, resp, group, _values(group), {}, None, 200)

    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        console = self._console
        form = dict(console.form(req))
        groups = console.registry.groups
        version = None
        try:
            version = Console.version(form)
            if version is None:
                raise InvalidInput.for_field("version", "is missing: reload the page")
            stored = groups.get(group_id)
            name = form.get("display_name", "").strip()
            roles = _roles(form, sorted(console.registry.auth.roles), stored.roles)
            # Only what changed, as a PATCH would: setting roles to what they are is
            # still judged as handing them out.
            changes = GroupChanges(
                display_name=name if name != stored.display_name else UNSET,
                roles=roles if roles != stored.roles else UNSET,
            )
            group = groups.update(group_id, changes, expected_version=version)
        except PreconditionFailed:
            message = (
                "Someone else changed this group after you opened it. The stored values are "
                "shown; your changes are kept in the form. Save again to overwrite them."
            )
            self.show(req, resp, groups.get(group_id), form, {}, message, 409)
            return
        except InvalidInput as exc:
            errors = errors_by_field(exc, _NAMES)
            self.show(req, resp, groups.get(group_id), form, errors, None, 422, version)
            return
        except Conflict as exc:
            errors = {"display_name": exc.detail}
            self.show(req, resp, groups.get(group_id), form, errors, None, 409, version)
            return
        console.redirect(req, resp, group_path(group.id), f"Saved {group.display_name}.")

    def show(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        group: Group,
        values: dict[str, Any],
        errors: dict[str, str],
        conflict: str | None,
        status: int,
        version: int | None = None,
    ) -> None:
        """The group's page: its record, a page of members, the forms this principal may use."""
        console = self._console
        after = req.get_param("after") or None
        members: tuple[User, ...] = ()
        following = None
        try:
            page = console.registry.groups.members(group.id, PAGE_SIZE, after)
        except InvalidInput as exc:
            errors = {**errors, **errors_by_field(exc, {"cursor": "after"})}
            status = 422 if status == 200 else status
        else:
            members, following = page.items, page.next
        console.render(
            req,
            resp,
            "group.html",
            status=status,
            group=group,
            values=values,
            errors=errors,
            conflict=conflict,
            version=group.version if version is None else version,
            members=members,
            next_url=None
            if following is None
            else f"{group_path(group.id)}?" + urllib.parse.urlencode({"after": following}),
            roles=sorted(console.registry.auth.roles),
            may_write=console.may(req, GROUPS_WRITE),
            may_read_users=console.may(req, USERS_READ),
        )


def _values(group: Group) -> dict[str, Any]:
    values: dict[str, Any] = {"display_name": group.display_name}
    for role in group.roles:
        values[f"role:{role}"] = "on"
    return values


class DeleteGroup:
    """``/admin/groups/{id}/delete``: delete the group (its members stay users)."""

    actions: ClassVar[dict[str, str]] = {"POST": GROUPS_WRITE}

    def __init__(self, console: Console, pages: GroupPage) -> None:
        self._console = console
        self._pages = pages

    def on_post(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        console = self._console
        version = Console.version(console.form(req))
        try:
            group = console.registry.groups.delete(group_id, expected_version=version)
        except PreconditionFailed:
            current = console.registry.groups.get(group_id)
            message = (
                "Someone else changed this group after you opened it, so it was not deleted. "
                "Review it, then delete again."
            )
            self._pages.show(req, resp, current, _values(current), {}, message, 409)
            return
        console.redirect(req, resp, f"{PREFIX}/groups", f"Deleted the group {group.display_name}.")


class Members:
    """``/admin/groups/{id}/members``: add a member, by email or id."""

    actions: ClassVar[dict[str, str]] = {"POST": GROUPS_WRITE}

    def __init__(self, console: Console, pages: GroupPage) -> None:
        self._console = console
        self._pages = pages

    def on_post(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        console = self._console
        form = dict(console.form(req))
        who = form.get("member", "").strip()
        groups = console.registry.groups
        try:
            user_id = self._user_id(req, who)
            group = groups.add_members(group_id, [user_id])
        except InvalidInput as exc:
            errors = errors_by_field(exc, {"user_ids": "member", "id_or_email": "member"})
            current = groups.get(group_id)
            self._pages.show(req, resp, current, {**_values(current), **form}, errors, None, 422)
            return
        console.redirect(req, resp, group_path(group.id), f"Added {who}.")

    def _user_id(self, req: falcon.Request, who: str) -> uuid.UUID:
        """The user ``who`` names: by id, or by email for those who may read users.

        The API's member routes take ids; looking an address up answers whether
        someone has it, which only a principal allowed ``users:read`` may learn.
        """
        if not who:
            raise InvalidInput.for_field("member", "give the email or id of a user")
        try:
            return uuid.UUID(who)
        except ValueError:
            pass
        if not self._console.may(req, USERS_READ):
            raise InvalidInput.for_field("member", "must be a user id (a UUID)")
        try:
            return self._console.registry.users.find(who).id
        except NotFound:
            raise InvalidInput.for_field("member", f"no user is {who!r}") from None


class RemoveMember:
    """``/admin/groups/{id}/members/{user_id}/remove``: take a user out of the group."""

    actions: ClassVar[dict[str, str]] = {"POST": GROUPS_WRITE}

    def __init__(self, console: Console) -> None:
        self._console = console

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        group = self._console.registry.groups.remove_members(group_id, [user_id])
        self._console.redirect(req, resp, group_path(group.id), "Removed the member.")


def user_groups(console: Console) -> Any:
    """The "Groups" panel of a user's page: the groups it is in."""

    def load(user: User, principal: Principal | None) -> dict[str, Any]:
        return {"groups": console.registry.groups.groups_of(user.id)}

    return load


def routes(console: Console) -> dict[str, Any]:
    """The group pages, by URI template."""
    page = GroupPage(console)
    return {
        f"{PREFIX}/groups": GroupsPage(console),
        f"{PREFIX}/groups/{{group_id:uuid}}": page,
        f"{PREFIX}/groups/{{group_id:uuid}}/delete": DeleteGroup(console, page),
        f"{PREFIX}/groups/{{group_id:uuid}}/members": Members(console, page),
        f"{PREFIX}/groups/{{group_id:uuid}}/members/{{user_id:uuid}}/remove": RemoveMember(console),
    }
