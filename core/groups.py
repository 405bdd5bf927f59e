"""Groups: named sets of users, and the roles a group grants its members.

A user's roles are its own plus those of every group it belongs to
(``GroupService.roles_of``). Groups are what an identity provider pushes
(SCIM ``Groups``) and what an administrator grants roles to, so that a
person's access follows their team rather than being set user by user.

A group's ``version`` grows with every write to it, adding and removing
members included, so a membership change made on an older version is
refused. A member's own deletion, restoration or purge is not a write to
its groups: their versions stay. A deleted user stays a member while
deleted (hidden from member lists, granted nothing, back on restore) unless
removed, and leaves every group when purged.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs

from userplane.auth import check_may_grant, current_principal
from userplane.changes import FieldChange, json_value
from userplane.errors import (
    ConfigurationError,
    Conflict,
    FieldError,
    InvalidInput,
    NotFound,
)
from userplane.filtering import And, Compare, Expr, Not, Or, check_group_filter
from userplane.pagination import Position, Sort, decode_cursor, encode_cursor
from userplane.text import fold
from userplane.users import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    UNSET,
    Unset,
    User,
    check_display_text,
    check_external_id,
    utcnow,
)

if TYPE_CHECKING:
    from userplane.registry import Registry
    from userplane.storage import GroupStorage

T = TypeVar("T")

#: The longest display name.
MAX_DISPLAY_NAME: Final = 200
#: The most roles one group grants, and the most members one call adds or removes.
MAX_ROLES: Final = 50
MAX_MEMBERS_PER_CALL: Final = 500

GROUP_CREATED: Final = "group.created"
GROUP_UPDATED: Final = "group.updated"
GROUP_DELETED: Final = "group.deleted"
GROUP_MEMBER_ADDED: Final = "group.member_added"
GROUP_MEMBER_REMOVED: Final = "group.member_removed"

#: What groups are listed by: creation, then id (keyset pages).
GROUP_SORT: Final = Sort("created_at")
#: Member pages walk user ids; the cursor's sort names them apart from group cursors.
_MEMBER_SORT: Final = Sort("id")


@attrs.frozen
class Group:
    """A stored group. ``version`` starts at 1 and grows with every write, membership too."""

    id: uuid.UUID
    display_name: str
    external_id: str | None
    roles: frozenset[str]
    created_at: datetime
    updated_at: datetime
    version: int


@attrs.frozen
class NewGroup:
    """What a caller supplies to create a group."""

    display_name: str
    roles: frozenset[str] = frozenset()
    external_id: str | None = None


@attrs.frozen
class GroupChanges:
    """A partial update: fields left ``UNSET`` are not touched."""

    display_name: str | Unset = UNSET
    roles: frozenset[str] | Unset = UNSET
    external_id: str | Unset | None = UNSET

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {k: v for k, v in attrs.asdict(self, recurse=False).items() if v is not UNSET}


@attrs.frozen
class GroupFilter:
    """Filters of a group list, already normalised (``display_name`` and ``q`` folded)."""

    display_name: str | None = None
    external_id: str | None = None
    #: Groups this user belongs to.
    member: uuid.UUID | None = None
    q: str | None = None


@attrs.frozen
class GroupQuery:
    """A group list request as a client states it."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    display_name: str | None = None
    external_id: str | None = None
    member: uuid.UUID | None = None
    q: str | None = None


@attrs.frozen
class GroupPage:
    """One page of groups, oldest first; ``next`` is ``None`` on the last."""

    items: tuple[Group, ...]
    next: str | None


@attrs.frozen
class GroupSelection:
    """The groups a filter selects: a page of them, how many in all, the next page's cursor.

    ``next`` is set when the selection was paged by cursor and there is more.
    """

    items: tuple[Group, ...]
    total: int
    next: str | None = None


#: How a selection of groups may be ordered (``-`` first: descending), then by id.
GROUP_SORTS: Final = ("created_at", "display_name")


@attrs.frozen
class MemberPage:
    """One page of a group's live members, by user id; ``next`` is ``None`` on the last."""

    items: tuple[User, ...]
    next: str | None


def name_key(display_name: str) -> str:
    """What makes two display names the same name: ``Admins`` is ``admins``."""
    return fold(display_name)


def check_group_fields(values: Mapping[str, Any], known_roles: Collection[str]) -> list[FieldError]:
    """The domain rules for the group fields present in ``values``; every field at fault."""
    errors: list[FieldError] = []
    if "display_name" in values:
        name = values["display_name"]
        if not isinstance(name, str):
            errors.append(FieldError("$.display_name", "must be a string"))
        elif name != name.strip():
            # "Admins " would pass for "Admins" in every list.
            errors.append(FieldError("$.display_name", "must not begin or end with whitespace"))
        else:
            errors += check_display_text("$.display_name", name, MAX_DISPLAY_NAME)
    if "external_id" in values:
        errors += check_external_id("$.external_id", values["external_id"])
    if "roles" in values:
        errors += check_roles(values["roles"], known_roles)
    return errors


def check_roles(roles: Any, known_roles: Collection[str]) -> list[FieldError]:
    """Role names a group may grant: known ones, at most ``MAX_ROLES``."""
    if not isinstance(roles, frozenset | set | list | tuple):
        return [FieldError("$.roles", "must be a list of role names")]
    if len(roles) > MAX_ROLES:
        return [FieldError("$.roles", f"must name at most {MAX_ROLES} roles")]
    if not all(isinstance(role, str) for role in roles):
        return [FieldError("$.roles", "must be a list of role names")]
    unknown = sorted(set(roles) - set(known_roles))
    if unknown:
        named = ", ".join(repr(r) for r in unknown)
        known = ", ".join(sorted(known_roles))
        return [FieldError("$.roles", f"unknown role {named}; known: {known}")]
    return []


def prepare_group_filter(expr: Expr) -> Expr:
    """``expr`` with names folded, as ``display_name_folded`` holds them."""
    if isinstance(expr, And | Or):
        return type(expr)(tuple(prepare_group_filter(p) for p in expr.parts))
    if isinstance(expr, Not):
        return Not(prepare_group_filter(expr.part))
    if isinstance(expr, Compare) and expr.field == "display_name" and isinstance(expr.value, str):
        return attrs.evolve(expr, value=fold(expr.value))
    return expr


def _raise_if(errors: list[FieldError]) -> None:
    if errors:
        raise InvalidInput.from_errors(errors)


def _group_fields(before: Group | None, after: Group | None) -> dict[str, FieldChange]:
    """The recorded fields that differ between two states of a group (``None``: none)."""
    out = {}
    for name in ("display_name", "external_id", "roles", "version"):
        old = None if before is None else getattr(before, name)
        new = None if after is None else getattr(after, name)
        if name == "roles":
            old = None if old is None else sorted(old)
            new = None if new is None else sorted(new)
        if old != new:
            out[name] = FieldChange(json_value(old), json_value(new))
    return out


@contextlib.contextmanager
def _named_conflicts(display_name: str | None, external_id: str | None) -> Iterator[None]:
    """A storage ``Conflict`` said in the words of groups: which name or external id is taken."""
    try:
        yield
    except Conflict as exc:
        if "external_id" in exc.detail and external_id is not None:
            raise Conflict(f"a group with external id {external_id!r} exists") from None
        if display_name is not None:
            raise Conflict(
                f"a group named {display_name!r} exists (names ignore letter case)"
            ) from None
        raise


def _member_ids(user_ids: Iterable[uuid.UUID], field: str) -> list[uuid.UUID]:
    """``user_ids`` without repeats, in order; at most ``MAX_MEMBERS_PER_CALL``."""
    ids = list(dict.fromkeys(user_ids))
    if len(ids) > MAX_MEMBERS_PER_CALL:
        raise InvalidInput.for_field(field, f"must name at most {MAX_MEMBERS_PER_CALL} users")
    return ids


class GroupService:
    """The use-cases on groups and their members, shared by every frontend.

    Every write runs in one storage transaction with its records
    (``userplane_record_change``: ``group.created``, ``group.updated``,
    ``group.deleted``, ``group.member_added``, ``group.member_removed``), so
    audit events and webhooks see groups as they see users.
    """

    def __init__(
        self,
        storage: GroupStorage | None,
        *,
        registry: Registry,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self._store = storage
        self._registry = registry
        self._clock = clock
        self._new_id = new_id
        self._changes = registry.changes

    @property
    def available(self) -> bool:
        """Whether the storage keeps groups (``GroupStorage``)."""
        return self._store is not None

    @property
    def _storage(self) -> GroupStorage:
        if self._store is None:
            raise ConfigurationError(
                f"the {self._registry.storage.name!r} storage does not keep groups "
                "(it does not implement userplane.storage.GroupStorage)"
            )
        return self._store

    def _run(self, operation: str, call: Callable[[], T]) -> T:
        return self._registry.hooks.operation(operation, call, self._registry)

    def _known_roles(self) -> Collection[str]:
        return self._registry.auth.roles

    def _may_grant(self, roles: Collection[str], doing: str) -> None:
        """The rule against escalation: only roles the acting principal's own cover.

        Adding someone to a group hands them its roles, and removing them (or
        deleting the group) takes those away, so each needs the roles too.
        """
        if roles:
            check_may_grant(current_principal(), roles, self._registry.auth.roles, doing)

    def create(self, new: NewGroup) -> Group:
        """Create a group; ``Conflict`` if its name (in any letter case) or external id is taken."""

        def call() -> Group:
            _raise_if(
                check_group_fields(
                    {
                        "display_name": new.display_name,
                        "roles": new.roles,
                        "external_id": new.external_id,
                    },
                    self._known_roles(),
                )
            )
            self._may_grant(new.roles, "create a group granting role")
            now = self._clock()
            group = Group(
                id=self._new_id(),
                display_name=new.display_name,
                external_id=new.external_id,
                roles=frozenset(new.roles),
                created_at=now,
                updated_at=now,
                version=1,
            )
            with (
                _named_conflicts(group.display_name, group.external_id),
                self._changes.writing(),
                self._storage.transaction(),
            ):
                stored = self._storage.insert_group(group, name_key(group.display_name))
                self._record(GROUP_CREATED, None, stored)
            return stored

        return self._run("groups.create", call)

    def get(self, group_id: uuid.UUID) -> Group:
        """The group with ``group_id``, or ``NotFound``."""

        def call() -> Group:
            group = self._storage.get_group(group_id)
            if group is None:
                raise NotFound(f"no group with id {group_id}")
            return group

        return self._run("groups.get", call)

    def find(self, id_or_name: str) -> Group:
        """A group by id if ``id_or_name`` is a UUID, else by display name (any letter case)."""
        try:
            group_id: uuid.UUID | None = uuid.UUID(id_or_name)
        except ValueError:
            group_id = None
        if group_id is not None:
            try:
                return self.get(group_id)
            except NotFound:
                pass  # a group may be named like an id
        page = self.list(GroupQuery(limit=1, display_name=id_or_name))
        if not page.items:
            what = f"with id {group_id}" if group_id else f"named {id_or_name!r}"
            raise NotFound(f"no group {what}")
        return page.items[0]

    def list(self, query: GroupQuery) -> GroupPage:
        """One page of groups matching ``query``, oldest first."""

        def call() -> GroupPage:
            errors: list[FieldError] = []
            if not 1 <= query.limit <= MAX_LIMIT:
                errors.append(FieldError("$.limit", f"must be between 1 and {MAX_LIMIT}"))
            after: Position | None = None
            if query.cursor is not None:
                try:
                    after = decode_cursor(query.cursor, GROUP_SORT, "groups")
                except InvalidInput as exc:
                    errors += exc.errors
            for field, text in (("$.display_name", query.display_name), ("$.q", query.q)):
                if text is not None and (len(text) > MAX_DISPLAY_NAME or "\x00" in text):
                    errors.append(
                        FieldError(field, f"must be at most {MAX_DISPLAY_NAME} characters, no NUL")
                    )
            errors += check_external_id("$.external_id", query.external_id)
            _raise_if(errors)
            flt = GroupFilter(
                display_name=None if query.display_name is None else name_key(query.display_name),
                external_id=query.external_id,
                member=query.member,
                q=fold(query.q) if query.q else None,
            )
            rows = self._storage.list_groups(flt, after, query.limit + 1)
            items = tuple(rows[: query.limit])
            nxt = None
            if len(rows) > query.limit:
                last = items[-1]
                nxt = encode_cursor(GROUP_SORT, Position(last.created_at, last.id), "groups")
            return GroupPage(items, nxt)

        return self._run("groups.list", call)

    def select(
        self,
        expr: Expr,
        *,
        sort: str = "created_at",
        offset: int = 0,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> GroupSelection:
        """The groups matching a filter (``userplane.filtering``, ``GROUP_FIELD_KINDS``).

        A page by offset, or by cursor (``""`` first, then each answer's
        ``next``; ``created_at`` order only), and how many there are: for
        provisioning protocols (SCIM's ``Groups``). ``display_name`` compares
        in any letter case; ``member`` is a live member's user id.
        ``InvalidInput`` at ``$.filter``, ``$.sort``, ``$.offset``, ``$.limit``
        or ``$.cursor``.
        """

        def call() -> GroupSelection:
            errors: list[FieldError] = []
            try:
                check_group_filter(expr)
            except InvalidInput as exc:
                errors += exc.errors
            if sort.removeprefix("-") not in GROUP_SORTS:
                choices = ", ".join(GROUP_SORTS)
                errors.append(FieldError("$.sort", f"must be one of {choices}, - for descending"))
            if offset < 0:
                errors.append(FieldError("$.offset", "must not be negative"))
            if not 0 <= limit <= MAX_LIMIT:
                errors.append(FieldError("$.limit", f"must be between 0 and {MAX_LIMIT}"))
            after: Position | None = None
            if cursor and sort != "created_at":
                errors.append(FieldError("$.cursor", "groups page by cursor oldest first only"))
            elif cursor:
                try:
                    after = decode_cursor(cursor, GROUP_SORT, "groups")
                except InvalidInput as exc:
                    errors += exc.errors
            _raise_if(errors)
            prepared = prepare_group_filter(expr)
            total = self._storage.count_selected_groups(prepared)
            if cursor is None:
                items: list[Group] = []
                if limit and offset < total:
                    items = self._storage.select_groups(prepared, sort, offset, limit)
                return GroupSelection(tuple(items), total)
            rows = self._storage.select_groups(prepared, sort, 0, limit + 1, after)
            page = tuple(rows[:limit])
            nxt = None
            if len(rows) > limit and page:
                nxt = encode_cursor(
                    GROUP_SORT, Position(page[-1].created_at, page[-1].id), "groups"
                )
            return GroupSelection(page, total, nxt)

        return self._run("groups.select", call)

    def update(
        self, group_id: uuid.UUID, changes: GroupChanges, expected_version: int | None = None
    ) -> Group:
        """Rename a group, set its roles or external id; with ``expected_version`` only at it.

        A change that changes nothing writes nothing and returns the group as
        stored (the same version), as for users.
        """

        def call() -> Group:
            fields = changes.as_dict()
            if "roles" in fields:
                fields["roles"] = frozenset(fields["roles"])
            _raise_if(check_group_fields(fields, self._known_roles()))
            key = name_key(fields["display_name"]) if "display_name" in fields else None
            with self._changes.writing(), self._storage.transaction():
                before = self._storage.lock_group(group_id)
                if before is None:
                    raise NotFound(f"no group with id {group_id}")
                current = expected_version is None or before.version == expected_version
                if current and all(getattr(before, n) == v for n, v in fields.items()):
                    return before
                # Any change to a group granting roles needs them: renaming it, or giving it
                # the external id an identity provider's sync matches, redirects who gets them.
                self._may_grant(
                    before.roles | fields.get("roles", frozenset()), "change a group granting role"
                )
                with _named_conflicts(fields.get("display_name"), fields.get("external_id")):
                    updated = self._storage.update_group(
                        group_id, fields, key, expected_version, self._clock()
                    )
                self._record(GROUP_UPDATED, before, updated)
            return updated

        return self._run("groups.update", call)

    def delete(self, group_id: uuid.UUID, expected_version: int | None = None) -> Group:
        """Delete a group for good, and its memberships (not its members); returns it as it was."""

        def call() -> Group:
            with self._changes.writing(), self._storage.transaction():
                before = self._storage.lock_group(group_id)
                if before is not None:
                    self._may_grant(before.roles, "delete a group granting role")
                deleted = self._storage.delete_group(group_id, expected_version)
                self._record(GROUP_DELETED, before or deleted, None)
            return deleted

        return self._run("groups.delete", call)

    def add_members(
        self,
        group_id: uuid.UUID,
        user_ids: Iterable[uuid.UUID],
        expected_version: int | None = None,
    ) -> Group:
        """Add live users to a group; members already in it are left as they are.

        ``InvalidInput`` naming every id that is no live user (nothing is
        added then). The group's version grows only if someone was added.
        """
        return self._change_members(GROUP_MEMBER_ADDED, group_id, user_ids, expected_version)

    def remove_members(
        self,
        group_id: uuid.UUID,
        user_ids: Iterable[uuid.UUID],
        expected_version: int | None = None,
    ) -> Group:
        """Remove users from a group; ids that are not members are ignored."""
        return self._change_members(GROUP_MEMBER_REMOVED, group_id, user_ids, expected_version)

    def _change_members(
        self,
        action: str,
        group_id: uuid.UUID,
        user_ids: Iterable[uuid.UUID],
        expected_version: int | None,
    ) -> Group:
        adding = action == GROUP_MEMBER_ADDED
        write = self._storage.add_members if adding else self._storage.remove_members
        doing = "add a member to" if adding else "remove a member from"

        def call() -> Group:
            ids = _member_ids(user_ids, "$.user_ids")
            with self._changes.writing(), self._storage.transaction():
                self._check_members_change(group_id, f"{doing} a group granting role")
                changed, group = write(group_id, ids, expected_version, self._clock())
                for user_id in changed:
                    self._record_member(action, group, user_id)
            return group

        return self._run("groups.add_members" if adding else "groups.remove_members", call)

    def set_members(
        self,
        group_id: uuid.UUID,
        user_ids: Iterable[uuid.UUID],
        expected_version: int | None = None,
    ) -> Group:
        """Make the group's members exactly ``user_ids`` (live users), in one transaction."""

        def call() -> Group:
            wanted = _member_ids(user_ids, "$.user_ids")
            with self._changes.writing(), self._storage.transaction():
                self._check_members_change(group_id, "change the members of a group granting role")
                added, removed, group = self._storage.set_members(
                    group_id, wanted, expected_version, self._clock()
                )
                for user_id in removed:
                    self._record_member(GROUP_MEMBER_REMOVED, group, user_id)
                for user_id in added:
                    self._record_member(GROUP_MEMBER_ADDED, group, user_id)
            return group

        return self._run("groups.set_members", call)

    def _check_members_change(self, group_id: uuid.UUID, doing: str) -> Group:
        """The group, locked, once the acting principal may change who holds its roles."""
        group = self._storage.lock_group(group_id)
        if group is None:
            raise NotFound(f"no group with id {group_id}")
        self._may_grant(group.roles, doing)
        return group

    def members(
        self, group_id: uuid.UUID, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> MemberPage:
        """One page of the group's live members, by user id."""

        def call() -> MemberPage:
            errors: list[FieldError] = []
            if not 1 <= limit <= MAX_LIMIT:
                errors.append(FieldError("$.limit", f"must be between 1 and {MAX_LIMIT}"))
            after: uuid.UUID | None = None
            if cursor is not None:
                try:
                    after = decode_cursor(cursor, _MEMBER_SORT, "members").id
                except InvalidInput as exc:
                    errors += exc.errors
            _raise_if(errors)
            if self._storage.get_group(group_id) is None:
                raise NotFound(f"no group with id {group_id}")
            rows = self._storage.list_members(group_id, after, limit + 1)
            items = tuple(rows[:limit])
            nxt = None
            if len(rows) > limit:
                nxt = encode_cursor(_MEMBER_SORT, Position(None, items[-1].id), "members")
            return MemberPage(items, nxt)

        return self._run("groups.members", call)

    def groups_of(self, user_id: uuid.UUID) -> tuple[Group, ...]:
        """Every group ``user_id`` belongs to, oldest first, every page followed."""
        found: tuple[Group, ...] = ()
        cursor: str | None = None
        while True:
            page = self.list(GroupQuery(limit=MAX_LIMIT, member=user_id, cursor=cursor))
            found += page.items
            if page.next is None:
                return found
            cursor = page.next

    def roles_of(self, user_id: uuid.UUID) -> frozenset[str]:
        """The roles ``user_id``'s groups grant it: what its principal gains beyond its own."""
        return self._storage.member_roles(user_id)

    def _record(self, action: str, before: Group | None, after: Group | None) -> None:
        group = after or before
        assert group is not None
        self._changes.record(action, "group", str(group.id), _group_fields(before, after))

    def _record_member(self, action: str, group: Group, user_id: uuid.UUID) -> None:
        fields = {
            "member": FieldChange(
                None if action == GROUP_MEMBER_ADDED else str(user_id),
                str(user_id) if action == GROUP_MEMBER_ADDED else None,
            ),
            "version": FieldChange(None, group.version),
        }
        self._changes.record(action, "group", str(group.id), fields, user_id=user_id)
