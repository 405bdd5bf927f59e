"""SCIM provisioning over the registry's users and groups, free of any web framework.

Every write runs in one transaction with its records of change (a user and
its userName; a group and its members), so what a client sees is all of a
request or none of it. A write is made at the version it was computed from:
an ``If-Match`` the resource no longer matches answers 412, and without one
a write that lost a race is computed again from the new version (up to
``RETRIES`` times), so two PATCHes never silently undo each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import attrs

from userplane.plugin import (
    UNSET,
    ConfigurationError,
    Conflict,
    Expr,
    Group,
    GroupChanges,
    GroupService,
    GroupStorage,
    InvalidInput,
    NewGroup,
    NewUser,
    NotFound,
    PreconditionFailed,
    Registry,
    User,
    UserChanges,
    UserService,
    fold,
)
from userplane.plugins.scim import filters, patch
from userplane.plugins.scim.errors import ScimError, bad_request
from userplane.plugins.scim.groups import (
    every_group,
    group_fields,
    group_filter,
    group_resource,
    member_ids,
)
from userplane.plugins.scim.paths import PatchPath
from userplane.plugins.scim.store import ScimUser, ScimUsers
from userplane.plugins.scim.users import (
    UserFields,
    every_user,
    user_fields,
    user_filter,
    user_resource,
)

_NAME_TAKEN: Final = "userName: another user has this userName"
#: How often a write without ``If-Match`` is computed again after losing a race.
RETRIES: Final = 3
#: The longest userName kept.
MAX_USER_NAME: Final = 256
#: Where SCIM sorts users: ``sortBy`` (lowercased) to our sort fields.
USER_SORTS: Final = {
    "username": "email",
    "emails": "email",
    "emails.value": "email",
    "displayname": "full_name",
    "meta.created": "created_at",
}
#: Where SCIM sorts groups: ``sortBy`` (lowercased) to ``GroupService.select``'s sorts.
GROUP_SORTS: Final = {"displayname": "display_name", "meta.created": "created_at"}
#: A page of a group's members read at once.
_MEMBER_PAGE: Final = 500
_USER_MULTI: Final = frozenset({"emails", "groups"})

T = TypeVar("T")


@attrs.frozen
class Page:
    """What a list asks for: ``start_index`` from 1, ``count`` results at most.

    ``cursor`` (RFC 9865) pages by cursor instead: ``""`` for the first page.
    """

    start_index: int = 1
    count: int = 100
    sort_by: str | None = None
    descending: bool = False
    cursor: str | None = None


@attrs.frozen
class Listed:
    """A page of a list, how many there are in all, and the next page's cursor."""

    items: list[Any]
    total: int
    next_cursor: str | None = None


def _not_found(kind: str, raw: str) -> ScimError:
    return ScimError(404, f"no {kind} with id {raw}")


def parse_id(raw: str, kind: str) -> uuid.UUID:
    """A resource id from a URL: not a UUID is no resource of ours (404)."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _not_found(kind, raw) from None


def etag(version: int) -> str:
    """The weak ETag of a resource: its version.

    A user's version moves with its row in this plugin's table too (a
    userName changed alone ``touch``es the user), so it covers all of it.
    """
    return f'W/"{version}"'


def _check_user_name(name: str) -> None:
    if len(name) > MAX_USER_NAME:
        raise bad_request(f"userName: at most {MAX_USER_NAME} characters")
    if name != name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise bad_request("userName: no control characters, nor space at either end")


class Provisioning:
    """The SCIM operations on ``registry``'s users and groups, for the client of ``source``."""

    def __init__(self, registry: Registry, rows: ScimUsers, source: str) -> None:
        self._registry = registry
        self._rows = rows
        self.source = source

    @property
    def _users(self) -> UserService:
        return self._registry.users

    @property
    def _groups(self) -> GroupService:
        groups = self._registry.groups
        if not groups.available:
            raise ConfigurationError("this storage keeps no groups")
        return groups

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction for a request's writes, announced once it has committed."""
        with self._registry.changes.writing(), self._registry.storage.transaction():
            yield

    def _retrying(self, expected: str | None, write: Callable[[], T]) -> T:
        """``write()``; again after a lost race when the client gave no ``If-Match``."""
        for attempt in range(RETRIES + 1):
            try:
                return write()
            except PreconditionFailed:
                if expected is not None or attempt == RETRIES:
                    raise
        raise AssertionError("unreachable")

    # -- users ---------------------------------------------------------------------------------

    def user(self, raw_id: str) -> User:
        """The live user with this id; 404 otherwise."""
        try:
            return self._users.get(parse_id(raw_id, "user"))
        except NotFound:
            raise _not_found("user", raw_id) from None

    def user_name_holder(self, key: str) -> uuid.UUID | None:
        """The user whose kept userName folds to ``key`` (one that is not an address)."""
        return self._rows.holder(key)

    def user_etag(self, user: User) -> str:
        """The ETag of ``user`` as a SCIM resource."""
        return etag(user.version)

    def user_resource(self, user: User, base_url: str, groups: bool = True) -> dict[str, Any]:
        """``user`` as a SCIM ``User``; ``groups=False`` leaves its groups out (not asked for)."""
        row = self._rows.get(user.id)
        found = self._registry.groups.groups_of(user.id) if groups and self._has_groups else ()
        resource = user_resource(user, base_url=base_url, source=self.source, groups=found, row=row)
        return resource

    @property
    def _has_groups(self) -> bool:
        return bool(self._registry.groups.available)

    def list_users(self, filter_text: str | None, page: Page) -> Listed:
        """The users a filter selects, a page of them, and how many there are."""
        expr: Expr | None = None
        if filter_text is not None:
            try:
                expr = user_filter(_parse_filter(filter_text), self.source, self._rows.holder)
            except filters.FilterError as exc:
                raise bad_request(f"filter: {exc.message}", "invalidFilter") from None
        sort = "created_at"
        if page.sort_by is not None:
            key = _strip_schema(page.sort_by.lower(), filters.CORE_USER)
            if key not in USER_SORTS:
                raise bad_request(
                    f"sortBy: users sort by userName, emails.value, displayName or meta.created, "
                    f"not {page.sort_by!r}"
                )
            sort = USER_SORTS[key]
        if page.descending:
            sort = f"-{sort}"
        selection = self._users.select(
            expr if expr is not None else every_user(),
            sort=sort,
            offset=page.start_index - 1,
            limit=page.count,
            cursor=page.cursor,
        )
        return Listed(list(selection.items), selection.total, selection.next)

    def create_user(self, body: Any) -> User:
        """Create a user from a ``User`` body (201)."""
        fields = user_fields(body)
        _check_user_name(fields.user_name)
        row = self._row(fields.email, fields)  # refused before anything is written
        with self._writing():
            self._check_name_free(fields.user_name, None)
            user: User = self._users.create(
                NewUser(
                    email=fields.email,
                    full_name=fields.display_name,
                    is_active=True if fields.active is None else fields.active,
                    external_source=None if fields.external_id is None else self.source,
                    external_id=fields.external_id,
                )
            )
            self._put_row(user.id, row)
        return user

    def replace_user(self, raw_id: str, body: Any, expected: str | None) -> User:
        """PUT: the user as the body says (``active`` kept when left out)."""
        fields = user_fields(body)
        return self._retrying(
            expected, lambda: self._write_user(raw_id, expected, lambda _: fields)
        )

    def patch_user(self, raw_id: str, body: Any, expected: str | None) -> User:
        """PATCH: the operations applied to the user's resource, written as a replace."""
        ops = patch.operations(body)

        def patched(user: User) -> UserFields:
            current = self.user_resource(user, "", groups=False)
            for key in ("meta", "groups"):
                current.pop(key, None)
            return user_fields(patch.apply(current, ops, _USER_MULTI))

        return self._retrying(expected, lambda: self._write_user(raw_id, expected, patched))

    def _write_user(
        self, raw_id: str, expected: str | None, compute: Callable[[User], UserFields]
    ) -> User:
        with self._writing():
            # Locked from the read to the write: concurrent writers of one user wait for
            # each other instead of losing (a 412 is only for a stale If-Match).
            self._registry.storage.lock_user(parse_id(raw_id, "user"))
            user = self.user(raw_id)
            stored = self._rows.get(user.id)
            if expected is not None and not tag_matches(expected, etag(user.version)):
                raise PreconditionFailed("the user has changed since that version")
            fields = compute(user)
            _check_user_name(fields.user_name)
            self._check_name_free(fields.user_name, user.id)
            row = self._row(fields.email, fields)
            changes = UserChanges(
                email=fields.email,
                full_name=fields.display_name,
                is_active=UNSET if fields.active is None else fields.active,
                **self._external(user, fields.external_id),
            )
            updated: User = self._users.update(user.id, changes, expected_version=user.version)
            if (row or _DEFAULT_ROW) != (stored or _DEFAULT_ROW):
                self._put_row(user.id, row)
                if updated.version == user.version:
                    # Only the plugin's row changes: the user's version must move all the
                    # same (ETags, If-Match, meta.lastModified), conditionally, so that
                    # of two writers of the row one loses, as of two writers of the user.
                    updated = self._users.touch(user.id, expected_version=user.version)
        return updated

    def _external(self, user: User, external_id: str | None) -> dict[str, Any]:
        """The external id a write sets: this client's, or none where it had one."""
        if external_id is not None:
            return {"external_source": self.source, "external_id": external_id}
        if user.external_source == self.source:
            return {"external_source": None, "external_id": None}
        return {}  # another source's id is not this client's to clear

    def delete_user(self, raw_id: str, expected: str | None) -> None:
        """DELETE: the user is deleted (softly: an administrator can restore it)."""
        with self._writing():
            user = self.user(raw_id)
            if expected is not None and not tag_matches(expected, self.user_etag(user)):
                raise PreconditionFailed("the user has changed since that version")
            # Not locked first: deleting locks the user's groups before the user.
            self._users.delete(user.id, expected_version=user.version if expected else None)

    def _put_row(self, user_id: uuid.UUID, row: ScimUser) -> None:
        """Store ``row``; a userName another writer took meanwhile is 409 ``uniqueness``."""
        try:
            self._rows.put(user_id, row, _name_key(row))
        except Conflict:
            raise ScimError(409, _NAME_TAKEN, "uniqueness") from None

    def _row(self, email: str, fields: UserFields) -> ScimUser:
        """What to keep that the user (of address ``email``) does not hold: a userName that
        is not the address, the address's type and primary flag."""
        name: str | None = fields.user_name
        if name == email or (
            self._registry.encrypted and name is not None and fold(name) == fold(email)
        ):
            name = None  # the address (in another letter case: the address as stored)
        if name is not None and self._registry.encrypted:
            raise bad_request(
                "userName: while personal data is encrypted, the userName must be the "
                "user's email address (a userName is stored unsealed)"
            )
        return ScimUser(name, fields.email_type, fields.email_primary)

    def _check_name_free(self, name: str, owner: uuid.UUID | None) -> None:
        """409 ``uniqueness`` if another user has ``name`` as userName, stored or as address."""
        key = fold(name)
        holder = self._rows.holder(key)
        if holder is not None and holder != owner:
            raise ScimError(409, _NAME_TAKEN, "uniqueness")
        if holder is None and "@" in name:
            try:
                other: User = self._users.get_by_email(name)
            except (NotFound, InvalidInput):  # not an address the core takes: no one's
                return
            stored = self._rows.get(other.id)
            if other.id != owner and (stored is None or stored.user_name is None):
                raise ScimError(409, _NAME_TAKEN, "uniqueness")

    # -- groups --------------------------------------------------------------------------------

    def group(self, raw_id: str) -> Group:
        """The group with this id; 404 otherwise."""
        try:
            return self._groups.get(parse_id(raw_id, "group"))
        except NotFound:
            raise _not_found("group", raw_id) from None

    def members(self, group: Group) -> list[uuid.UUID]:
        """Every live member of ``group``, every page followed."""
        found: list[uuid.UUID] = []
        cursor: str | None = None
        while True:
            page = self._groups.members(group.id, limit=_MEMBER_PAGE, cursor=cursor)
            found += [u.id for u in page.items]
            if page.next is None:
                return found
            cursor = page.next

    def group_resource(self, group: Group, base_url: str, members: bool = True) -> dict[str, Any]:
        """``group`` as a SCIM ``Group``; ``members=False`` leaves its members out."""
        listed = self.members(group) if members else None
        return group_resource(group, base_url=base_url, members=listed)

    def list_groups(self, filter_text: str | None, page: Page) -> Listed:
        """The groups a filter selects, a page of them, and how many there are."""
        expr = every_group()
        if filter_text is not None:
            try:
                expr = group_filter(_parse_filter(filter_text))
            except filters.FilterError as exc:
                raise bad_request(f"filter: {exc.message}", "invalidFilter") from None
        sort = "created_at"
        if page.sort_by is not None:
            key = _strip_schema(page.sort_by.lower(), filters.CORE_GROUP)
            if key not in GROUP_SORTS:
                raise bad_request(
                    f"sortBy: groups sort by displayName or meta.created, not {page.sort_by!r}"
                )
            sort = GROUP_SORTS[key]
        if page.descending:
            sort = f"-{sort}"
        if page.cursor is not None and sort != "created_at":
            raise bad_request("sortBy: groups paged by cursor come in creation order only")
        selection = self._groups.select(
            expr, sort=sort, offset=page.start_index - 1, limit=page.count, cursor=page.cursor
        )
        return Listed(list(selection.items), selection.total, selection.next)

    def create_group(self, body: Any) -> Group:
        """Create a group, with its members, from a ``Group`` body (201)."""
        fields = group_fields(body)
        with self._writing():
            group: Group = self._groups.create(
                NewGroup(fields.display_name, external_id=fields.external_id)
            )
            if fields.members:
                group = self._groups.add_members(group.id, fields.members)
        return group

    def replace_group(self, raw_id: str, body: Any, expected: str | None) -> Group:
        """PUT: name, external id and (when the body has ``members``) exactly these members."""
        fields = group_fields(body)

        def write() -> Group:
            with self._writing():
                group = self._current_group(raw_id, expected)
                group = self._groups.update(
                    group.id,
                    GroupChanges(display_name=fields.display_name, external_id=fields.external_id),
                    expected_version=group.version,
                )
                if fields.members is not None:
                    group = self._groups.set_members(group.id, fields.members)
            return group

        return self._retrying(expected, write)

    def patch_group(self, raw_id: str, body: Any, expected: str | None) -> Group:
        """PATCH: each operation as the write it is (a rename, members added or removed).

        Members are changed where they are, never by reading every member and
        writing the list back: a group of many members is patched as cheaply
        as a small one.
        """
        ops = patch.operations(body)

        def write() -> Group:
            with self._writing():
                group = self._current_group(raw_id, expected)
                first = True
                for op in ops:
                    group = self._group_op(group, op, group.version if first else None)
                    first = False
            return group

        return self._retrying(expected, write)

    def _current_group(self, raw_id: str, expected: str | None) -> Group:
        """The group, locked till the request's transaction ends: its writers queue."""
        storage = self._registry.storage
        group = None
        if isinstance(storage, GroupStorage):
            group = storage.lock_group(parse_id(raw_id, "group"))
        if group is None:
            raise _not_found("group", raw_id)
        if expected is not None and not tag_matches(expected, etag(group.version)):
            raise PreconditionFailed("the group has changed since that version")
        return group

    def _group_op(self, group: Group, op: patch.Operation, version: int | None) -> Group:
        if op.path is None:
            for key, value in op.value.items():
                name = _strip_schema(str(key).lower(), filters.CORE_GROUP)
                if name in ("id", "meta", "schemas"):
                    continue  # read only: Okta sends the id back
                group = self._group_attribute(group, op.op, name, None, value, version)
                version = None
            return group
        path = op.path
        name = _strip_schema(path.attr.normalized, filters.CORE_GROUP)
        return self._group_attribute(group, op.op, name, path, op.value, version)

    def _group_attribute(
        self,
        group: Group,
        op: str,
        name: str,
        path: PatchPath | None,
        value: Any,
        version: int | None,
    ) -> Group:
        groups = self._groups
        if name == "members" and (path is None or path.sub_attr is None):
            if path is not None and path.filter is not None:
                if op != "remove":
                    raise bad_request(f"{path}: only remove takes a filtered members path")
                return groups.remove_members(group.id, _filtered_members(path), version)
            if op == "remove":
                if value is None:
                    return groups.set_members(group.id, [], version)
                return groups.remove_members(group.id, _known_ids(value), version)
            if op == "add":
                return groups.add_members(group.id, member_ids(value), version)
            return groups.set_members(group.id, member_ids(value), version)
        if path is not None and (path.filter is not None or path.attr.sub_attr is not None):
            raise bad_request(f"{path}: groups have no such attribute", "invalidPath")
        if name == "displayname":
            if op == "remove" or not isinstance(value, str) or not value.strip():
                raise bad_request("displayName: required, a string")
            changes = GroupChanges(display_name=value)
        elif name == "externalid":
            if op == "remove" or value is None:
                changes = GroupChanges(external_id=None)
            elif not isinstance(value, str):
                raise bad_request("externalId: must be a string")
            else:
                changes = GroupChanges(external_id=value)
        else:
            raise bad_request(f"{name}: groups have no such attribute", "invalidPath")
        return groups.update(group.id, changes, expected_version=version)

    def delete_group(self, raw_id: str, expected: str | None) -> None:
        """DELETE: the group goes, with its memberships (not its members)."""
        with self._writing():
            group = self._current_group(raw_id, expected)
            self._groups.delete(group.id, expected_version=group.version)


#: What a user no client wrote stands for: its address as userName, a work address, primary.
_DEFAULT_ROW: Final = ScimUser(None, "work", True)


def _name_key(row: ScimUser) -> str | None:
    return None if row.user_name is None else fold(row.user_name)


def _filtered_members(path: PatchPath) -> list[uuid.UUID]:
    """The ids a ``members[value eq "…"]`` path names (``or`` of such equalities too)."""
    assert path.filter is not None
    node = path.filter
    terms = node.operands if isinstance(node, filters.Or) else (node,)
    values: list[str] = []
    for term in terms:
        if (
            not isinstance(term, filters.Comparison)
            or term.op != "eq"
            or term.path.normalized != "value"
            or not isinstance(term.value, str)
        ):
            raise bad_request(f'{path}: members are chosen by value eq "id"', "invalidFilter")
        values.append(term.value)
    return _known_ids([{"value": v} for v in values])


def _known_ids(value: Any) -> list[uuid.UUID]:
    """The user ids among members to remove; a value that is no id is no member."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        raw = item.get("value") if isinstance(item, Mapping) else item
        try:
            out.append(uuid.UUID(str(raw)))
        except ValueError:
            continue
    return out


def _parse_filter(text: str) -> filters.Filter:
    try:
        return filters.parse_filter(text)
    except filters.FilterError as exc:
        raise bad_request(f"filter: {exc.message}", "invalidFilter") from None


def _strip_schema(name: str, schema: str) -> str:
    prefix = schema.lower() + ":"
    return name[len(prefix) :] if name.startswith(prefix) else name


def tag_matches(header: str, tag: str) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` (tags, weak or strong, or ``*``) names ``tag``.

    SCIM's ETags are weak (``W/"3"``), and RFC 7644 §3.14 has clients send
    them back: compared weakly, by the quoted value.
    """
    wanted = tag.removeprefix("W/")
    for part in header.split(","):
        part = part.strip()
        if part == "*" or part.removeprefix("W/") == wanted:
            return True
    return False
