"""The ``/api/v1/groups`` resources: plain classes over ``GroupService``.

The conventions of users: problem+json naming the field at fault, a strong
``ETag`` from the group's version (which grows with its membership too),
``If-Match`` for safe writes, keyset pages with the next one in ``next`` and
in a ``Link`` header.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar
from urllib.parse import urlencode

import falcon

from userplane import auth, convert
from userplane.errors import FieldError, InvalidInput
from userplane.frontends.http.conditions import expected_version, not_modified
from userplane.frontends.http.params import single_params
from userplane.groups import Group, GroupQuery, GroupService
from userplane.users import DEFAULT_LIMIT, UserService

_LIST_PARAMS = frozenset({"limit", "cursor", "display_name", "external_id", "member", "q"})
_PAGE_PARAMS = frozenset({"limit", "cursor"})


def _send_group(resp: falcon.Response, group: Group) -> None:
    resp.media = convert.group_to_dict(group)
    resp.set_header("ETag", f'"{group.version}"')


def _limit(values: dict[str, Any], errors: list[FieldError]) -> int:
    if "limit" not in values:
        return DEFAULT_LIMIT
    try:
        return int(values["limit"])
    except ValueError:
        errors.append(FieldError("$.limit", "must be a whole number"))
        return DEFAULT_LIMIT


def _page(req: falcon.Request, resp: falcon.Response, items: list[Any], nxt: str | None) -> None:
    resp.media = {"items": items, "next": nxt}
    if nxt is not None:
        params = {k: v for k, v in req.params.items() if k != "cursor"}
        params["cursor"] = nxt
        resp.append_link(f"{req.path}?{urlencode(params)}", "next")


def _expected(req: falcon.Request, groups: GroupService, group_id: uuid.UUID) -> int | None:
    return expected_version(req, lambda: groups.get(group_id).version, "group")


class GroupsResource:
    """``/api/v1/groups``: create and list."""

    actions: ClassVar[dict[str, str]] = {"POST": auth.GROUPS_WRITE, "GET": auth.GROUPS_READ}

    def __init__(self, groups: GroupService) -> None:
        self._groups = groups

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a group: 201 with ``Location`` and ``ETag``."""
        group = self._groups.create(convert.new_group_from(req.get_media()))
        resp.status = falcon.HTTP_201
        resp.location = f"/api/v1/groups/{group.id}"
        _send_group(resp, group)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A page of groups, oldest first; filters by name, external id, member, text."""
        values, errors = single_params(req, _LIST_PARAMS)
        limit = _limit(values, errors)
        member: uuid.UUID | None = None
        if "member" in values:
            try:
                member = uuid.UUID(values["member"])
            except ValueError:
                errors.append(FieldError("$.member", "must be a user id (a UUID)"))
        if errors:
            raise InvalidInput.from_errors(errors)
        page = self._groups.list(
            GroupQuery(
                limit=limit,
                cursor=values.get("cursor"),
                display_name=values.get("display_name"),
                external_id=values.get("external_id"),
                member=member,
                q=values.get("q"),
            )
        )
        _page(req, resp, [convert.group_to_dict(g) for g in page.items], page.next)

    on_head = on_get


class GroupResource:
    """``/api/v1/groups/{group_id}``: read, rename or set roles, delete."""

    actions: ClassVar[dict[str, str]] = {
        "GET": auth.GROUPS_READ,
        "PATCH": auth.GROUPS_WRITE,
        "DELETE": auth.GROUPS_WRITE,
    }

    def __init__(self, groups: GroupService) -> None:
        self._groups = groups

    def on_get(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        """The group; 304 when ``If-None-Match`` names its current ETag."""
        _, errors = single_params(req, frozenset())
        if errors:
            raise InvalidInput.from_errors(errors)
        group = self._groups.get(group_id)
        if not_modified(req, resp, group.version):
            return
        _send_group(resp, group)

    on_head = on_get

    def on_patch(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        """Merge-patch ``display_name``, ``roles``, ``external_id``; ``If-Match`` makes it safe."""
        changes = convert.group_changes_from(req.get_media())
        expected = _expected(req, self._groups, group_id)
        _send_group(resp, self._groups.update(group_id, changes, expected))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        """Delete the group (its members stay users): 204; ``If-Match`` makes it conditional."""
        expected = _expected(req, self._groups, group_id)
        self._groups.delete(group_id, expected)
        resp.status = falcon.HTTP_204


class MembersResource:
    """``/api/v1/groups/{group_id}/members``: list, add some, or set them all.

    ``POST {"user_ids": [...]}`` adds (members already in stay), ``PUT``
    makes the members exactly those; both answer the group with its new ETag.
    """

    actions: ClassVar[dict[str, str]] = {
        "GET": auth.GROUPS_READ,
        "POST": auth.GROUPS_WRITE,
        "PUT": auth.GROUPS_WRITE,
    }

    def __init__(self, groups: GroupService) -> None:
        self._groups = groups

    def on_get(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        """A page of the group's live members (users), by id."""
        values, errors = single_params(req, _PAGE_PARAMS)
        limit = _limit(values, errors)
        if errors:
            raise InvalidInput.from_errors(errors)
        page = self._groups.members(group_id, limit, values.get("cursor"))
        _page(req, resp, [convert.user_to_dict(u) for u in page.items], page.next)

    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        """Add the users: the group, 200."""
        ids = convert.user_ids_from(req.get_media())
        expected = _expected(req, self._groups, group_id)
        _send_group(resp, self._groups.add_members(group_id, ids, expected))

    def on_put(self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID) -> None:
        """Make the members exactly the users given: the group, 200."""
        ids = convert.user_ids_from(req.get_media())
        expected = _expected(req, self._groups, group_id)
        _send_group(resp, self._groups.set_members(group_id, ids, expected))


class MemberResource:
    """``/api/v1/groups/{group_id}/members/{user_id}``: add or remove one member (204)."""

    actions: ClassVar[dict[str, str]] = {"PUT": auth.GROUPS_WRITE, "DELETE": auth.GROUPS_WRITE}

    def __init__(self, groups: GroupService, users: UserService) -> None:
        self._groups = groups
        self._users = users

    def on_put(
        self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        """Add the user (a member already: nothing changes); the group's ETag in the answer."""
        expected = _expected(req, self._groups, group_id)
        self._users.get(user_id)  # the path names no (live) user: 404, not a body's 422
        group = self._groups.add_members(group_id, [user_id], expected)
        resp.set_header("ETag", f'"{group.version}"')
        resp.status = falcon.HTTP_204

    def on_delete(
        self, req: falcon.Request, resp: falcon.Response, group_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        """Remove the user (not a member: nothing changes); the group's ETag in the answer."""
        expected = _expected(req, self._groups, group_id)
        group = self._groups.remove_members(group_id, [user_id], expected)
        resp.set_header("ETag", f'"{group.version}"')
        resp.status = falcon.HTTP_204


class UserGroupsResource:
    """``/api/v1/users/{user_id}/groups``: the groups a user belongs to, a page at a time."""

    actions: ClassVar[dict[str, str]] = {"GET": auth.GROUPS_READ}

    def __init__(self, groups: GroupService, users: UserService) -> None:
        self._groups = groups
        self._users = users

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: uuid.UUID) -> None:
        """A page of the user's groups, oldest first; 404 for no (live) user."""
        values, errors = single_params(req, _PAGE_PARAMS)
        limit = _limit(values, errors)
        if errors:
            raise InvalidInput.from_errors(errors)
        self._users.get(user_id)
        page = self._groups.list(
            GroupQuery(limit=limit, cursor=values.get("cursor"), member=user_id)
        )
        _page(req, resp, [convert.group_to_dict(g) for g in page.items], page.next)

    on_head = on_get
