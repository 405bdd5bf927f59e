"""Groups in SQL: ``userplane.storage.GroupStorage`` once, for every SQL store.

The statements are written once with ``:name`` parameters in SQL that
SQLite, PostgreSQL and MariaDB share (no ``RETURNING``, no typed ``NULL``
parameters), and compiled to each store's spelling by its ``Dialect``. Group
writes are rare next to user reads, so each writes and then reads the row
back inside one transaction. An update is composed from the fields it sets,
from fixed fragments (never from input).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from userplane.errors import FieldError, InvalidInput, NotFound, PreconditionFailed
from userplane.filtering import Expr
from userplane.groups import Group, GroupFilter
from userplane.pagination import Position
from userplane.sql.filtering import where_groups
from userplane.sql.schema import USER_COLUMNS

if TYPE_CHECKING:
    from userplane.sql.dialect import Dialect
    from userplane.sql.storage import Row
    from userplane.users import User

GROUP_COLUMNS = "id, display_name, external_id, roles, created_at, updated_at, version"
#: ``USER_COLUMNS`` of the users joined as ``u``.
_MEMBER_USER_COLUMNS = ", ".join(f"u.{c.strip()}" for c in USER_COLUMNS.split(","))
#: How a row-locking dialect spells a shared lock on the rows a ``SELECT`` reads.
_SHARE_LOCKS = {"postgresql": " FOR SHARE", "mysql": " LOCK IN SHARE MODE"}
#: The column each sort of groups orders by.
_GROUP_SORT_COLUMNS = {"created_at": "created_at", "display_name": "display_name_folded"}
#: The most ids one ``IN (…)`` list holds.
IDS_PER_STATEMENT = 500
#: The most unknown ids an error names.
NAMED_IN_ERRORS = 10


class SQLGroups:
    """The ``GroupStorage`` methods of ``SQLStorage`` (a mixin: it supplies the driver side)."""

    dialect: ClassVar[Dialect]

    if TYPE_CHECKING:  # provided by SQLStorage

        def fetch_one(self, sql: str, params: Mapping[str, Any]) -> Row | None: ...
        def fetch_all(self, sql: str, params: Mapping[str, Any]) -> list[Row]: ...
        def execute(self, sql: str, params: Mapping[str, Any]) -> int: ...
        def execute_many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None: ...
        def transaction(self) -> contextlib.AbstractContextManager[None]: ...
        def params(self, params: Mapping[str, Any]) -> dict[str, Any]: ...
        def time_from_db(self, value: Any) -> datetime: ...
        def uuid_from_db(self, value: Any) -> uuid.UUID: ...
        def user_from_row(self, row: Row) -> User: ...

    # -- helpers --------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return self.dialect.compile(sql)

    def _lock_suffix(self) -> str:
        # A store whose transactions hold the whole database (SQLite) needs no row lock.
        return " FOR UPDATE" if self.dialect.locking == "row" else ""

    def group_from_row(self, row: Row) -> Group:
        """A ``Group`` from a row of ``GROUP_COLUMNS``."""
        return Group(
            id=self.uuid_from_db(row[0]),
            display_name=row[1],
            external_id=row[2],
            roles=frozenset(json.loads(row[3])),
            created_at=self.time_from_db(row[4]),
            updated_at=self.time_from_db(row[5]),
            version=int(row[6]),
        )

    def _group_where(self, condition: str, params: Mapping[str, Any]) -> Group | None:
        row = self.fetch_one(
            self._sql(f"SELECT {GROUP_COLUMNS} FROM user_groups WHERE {condition}"),
            self.params(params),
        )
        return None if row is None else self.group_from_row(row)

    def _locked(self, group_id: uuid.UUID, expected_version: int | None) -> Group:
        """The group, locked; ``NotFound`` or ``PreconditionFailed`` as a write's miss."""
        group = self.lock_group(group_id)
        if group is None:
            raise NotFound(f"no group with id {group_id}")
        if expected_version is not None and group.version != expected_version:
            raise PreconditionFailed("the group has changed since that version")
        return group

    def _bump(self, group_id: uuid.UUID, now: datetime) -> Group:
        self.execute(
            self._sql(
                "UPDATE user_groups SET version = version + 1, updated_at = :now WHERE id = :id"
            ),
            self.params({"id": group_id, "now": now}),
        )
        group = self.get_group(group_id)
        assert group is not None  # locked by the caller's transaction
        return group

    def _chunks(self, ids: Sequence[uuid.UUID]) -> list[tuple[str, dict[str, Any]]]:
        """``ids`` as ``IN`` lists (``:i0, :i1 …``) with their parameters, a chunk each."""
        out = []
        for start in range(0, len(ids), IDS_PER_STATEMENT):
            chunk = ids[start : start + IDS_PER_STATEMENT]
            names = [f"i{n}" for n in range(len(chunk))]
            out.append(
                (
                    ", ".join(f":{n}" for n in names),
                    self.params(dict(zip(names, chunk, strict=True))),
                )
            )
        return out

    # -- groups -----------------------------------------------------------------

    def insert_group(self, group: Group, name_key: str) -> Group:
        """Insert; the unique indexes turn a taken name or external id into ``Conflict``."""
        params = {
            "id": group.id,
            "display_name": group.display_name,
            "display_name_folded": name_key,
            "external_id": group.external_id,
            "roles": json.dumps(sorted(group.roles)),
            "created_at": group.created_at,
            "updated_at": group.updated_at,
            "version": group.version,
        }
        with self.transaction():
            self.execute(
                self._sql(
                    "INSERT INTO user_groups (id, display_name, display_name_folded, "
                    "external_id, roles, created_at, updated_at, version) VALUES (:id, "
                    ":display_name, :display_name_folded, :external_id, :roles, :created_at, "
                    ":updated_at, :version)"
                ),
                self.params(params),
            )
            stored = self.get_group(group.id)
        assert stored is not None
        return stored

    def get_group(self, group_id: uuid.UUID) -> Group | None:
        """The group by id."""
        return self._group_where("id = :id", {"id": group_id})

    def lock_group(self, group_id: uuid.UUID) -> Group | None:
        """The group by id, locked for the rest of the transaction."""
        return self._group_where(f"id = :id{self._lock_suffix()}", {"id": group_id})

    def list_groups(self, flt: GroupFilter, after: Position | None, limit: int) -> list[Group]:
        """A keyset page by ``(created_at, id)``, composed for the filters given."""
        conditions: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            conditions.append("(created_at, id) > (:after_key, :after_id)")
            params |= {"after_key": after.key, "after_id": after.id}
        if flt.display_name is not None:
            conditions.append("display_name_folded = :name")
            params["name"] = flt.display_name
        if flt.external_id is not None:
            conditions.append("external_id = :external_id")
            params["external_id"] = flt.external_id
        if flt.q:
            conditions.append(
                self.dialect.contains.format(haystack="display_name_folded", needle=":q")
            )
            params["q"] = flt.q
        if flt.member is not None:
            conditions.append("id IN (SELECT group_id FROM group_members WHERE user_id = :member)")
            params["member"] = flt.member
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = self._sql(
            f"SELECT {GROUP_COLUMNS} FROM user_groups{where} ORDER BY created_at, id LIMIT :limit"
        )
        return [self.group_from_row(r) for r in self.fetch_all(sql, self.params(params))]

    def update_group(
        self,
        group_id: uuid.UUID,
        fields: Mapping[str, Any],
        name_key: str | None,
        expected_version: int | None,
        now: datetime,
    ) -> Group:
        """One ``UPDATE`` of the fields given, after locking the group and checking its version."""
        sets = ["version = version + 1", "updated_at = :now"]
        params: dict[str, Any] = {"id": group_id, "now": now}
        if "display_name" in fields:
            sets += ["display_name = :display_name", "display_name_folded = :name_key"]
            params |= {"display_name": fields["display_name"], "name_key": name_key}
        if "external_id" in fields:
            sets.append("external_id = :external_id")
            params["external_id"] = fields["external_id"]
        if "roles" in fields:
            sets.append("roles = :roles")
            params["roles"] = json.dumps(sorted(fields["roles"]))
        with self.transaction():
            self._locked(group_id, expected_version)
            self.execute(
                self._sql(f"UPDATE user_groups SET {', '.join(sets)} WHERE id = :id"),
                self.params(params),
            )
            group = self.get_group(group_id)
        assert group is not None
        return group

    def delete_group(self, group_id: uuid.UUID, expected_version: int | None) -> Group:
        """Delete the memberships, then the group."""
        with self.transaction():
            group = self._locked(group_id, expected_version)
            params = self.params({"id": group_id})
            self.execute(self._sql("DELETE FROM group_members WHERE group_id = :id"), params)
            self.execute(self._sql("DELETE FROM user_groups WHERE id = :id"), params)
        return group

    def touch_groups_of(self, user_id: uuid.UUID, now: datetime) -> int:
        """Lock the user's groups in id order, then bump each one's version."""
        member_of = "id IN (SELECT group_id FROM group_members WHERE user_id = :user_id)"
        with self.transaction():
            # Locked first, in id order; then one UPDATE of the rows already held.
            self.fetch_all(
                self._sql(
                    f"SELECT id FROM user_groups WHERE {member_of} ORDER BY id{self._lock_suffix()}"
                ),
                self.params({"user_id": user_id}),
            )
            return self.execute(
                self._sql(
                    "UPDATE user_groups SET version = version + 1, updated_at = :now "
                    f"WHERE {member_of}"
                ),
                self.params({"user_id": user_id, "now": now}),
            )

    # -- members ----------------------------------------------------------------

    def add_members(
        self,
        group_id: uuid.UUID,
        user_ids: Sequence[uuid.UUID],
        expected_version: int | None,
        now: datetime,
    ) -> tuple[list[uuid.UUID], Group]:
        """Check every id is a live user, insert the new memberships, bump the version."""
        with self.transaction():
            group = self._locked(group_id, expected_version)
            added = self._insert_members(group_id, user_ids, now)
            return added, self._bump(group_id, now) if added else group

    def remove_members(
        self,
        group_id: uuid.UUID,
        user_ids: Sequence[uuid.UUID],
        expected_version: int | None,
        now: datetime,
    ) -> tuple[list[uuid.UUID], Group]:
        """Delete the memberships that exist; bump the version if any did."""
        with self.transaction():
            group = self._locked(group_id, expected_version)
            removed = self._delete_members(group_id, user_ids)
            return removed, self._bump(group_id, now) if removed else group

    def set_members(
        self,
        group_id: uuid.UUID,
        user_ids: Sequence[uuid.UUID],
        expected_version: int | None,
        now: datetime,
    ) -> tuple[list[uuid.UUID], list[uuid.UUID], Group]:
        """Add the missing, delete the others: one change, one version."""
        with self.transaction():
            group = self._locked(group_id, expected_version)
            # Exactly: a deleted member not named goes too, so that no restore hands it
            # back roles the caller meant to take away.
            current = set(self.member_ids(group_id))
            wanted = set(user_ids)
            added = self._insert_members(group_id, [u for u in user_ids if u not in current], now)
            removed = self._delete_members(group_id, sorted(current - wanted))
            if not (added or removed):
                return [], [], group
            return added, removed, self._bump(group_id, now)

    def _existing_members(
        self, group_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
    ) -> set[uuid.UUID]:
        members: set[uuid.UUID] = set()
        for listed, params in self._chunks(user_ids):
            rows = self.fetch_all(
                self._sql(
                    "SELECT user_id FROM group_members "
                    f"WHERE group_id = :group_id AND user_id IN ({listed})"
                ),
                {**params, **self.params({"group_id": group_id})},
            )
            members.update(self.uuid_from_db(r[0]) for r in rows)
        return members

    def _insert_members(
        self, group_id: uuid.UUID, user_ids: Sequence[uuid.UUID], now: datetime
    ) -> list[uuid.UUID]:
        """Insert the memberships not there yet; ``InvalidInput`` (adds nothing) for a non-user."""
        if not user_ids:
            return []
        live: set[uuid.UUID] = set()
        # A user being purged meanwhile waits, or makes us wait, rather than leaving a
        # membership that references nobody (SQLite's transactions hold the database).
        share = _SHARE_LOCKS.get(self.dialect.name, "")
        for listed, params in self._chunks(user_ids):
            rows = self.fetch_all(
                self._sql(
                    f"SELECT id FROM users WHERE id IN ({listed}) AND deleted_at IS NULL{share}"
                ),
                params,
            )
            live.update(self.uuid_from_db(r[0]) for r in rows)
        missing = [u for u in user_ids if u not in live]
        if missing:
            named = ", ".join(str(u) for u in missing[:NAMED_IN_ERRORS])
            more = len(missing) - NAMED_IN_ERRORS
            tail = f" and {more} more" if more > 0 else ""
            raise InvalidInput.from_errors(
                [FieldError("$.user_ids", f"no live user with id {named}{tail}")]
            )
        members = self._existing_members(group_id, user_ids)
        added = [u for u in user_ids if u not in members]
        if added:
            self.execute_many(
                self._sql(
                    "INSERT INTO group_members (group_id, user_id, added_at) "
                    "VALUES (:group_id, :user_id, :now)"
                ),
                [self.params({"group_id": group_id, "user_id": u, "now": now}) for u in added],
            )
        return added

    def _delete_members(
        self, group_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
    ) -> list[uuid.UUID]:
        """Delete the memberships among ``user_ids`` that exist; those that did."""
        members = self._existing_members(group_id, user_ids)
        removed = [u for u in user_ids if u in members]
        if removed:
            self.execute_many(
                self._sql("DELETE FROM group_members WHERE group_id = :group_id AND user_id = :u"),
                [self.params({"group_id": group_id, "u": u}) for u in removed],
            )
        return removed

    def select_groups(
        self,
        expr: Expr,
        sort: str,
        offset: int,
        limit: int,
        after: Position | None = None,
    ) -> list[Group]:
        """The groups matching ``expr``, in ``sort`` order then ``id``, from ``offset``."""
        condition, params = where_groups(self.dialect, expr)
        descending = sort.startswith("-")
        column = _GROUP_SORT_COLUMNS[sort.removeprefix("-")]
        if column == "display_name_folded" and self.dialect.name == "postgresql":
            # By code point, as Python and the users' sort keys (COLLATE "C" there, by
            # migration): a locale's collation (en_US) would order names otherwise.
            column = 'display_name_folded COLLATE "C"'
        direction = " DESC" if descending else ""
        if after is not None:
            op = "<" if descending else ">"
            key, last = self.dialect.placeholder("after_key"), self.dialect.placeholder("after_id")
            condition = f"({column}, id) {op} ({key}, {last}) AND {condition}"
            params |= {"after_key": after.key, "after_id": after.id}
        sql = (
            f"SELECT {GROUP_COLUMNS} FROM user_groups WHERE {condition} "
            f"ORDER BY {column}{direction}, id{direction} "
            f"LIMIT {self.dialect.placeholder('limit')} OFFSET {self.dialect.placeholder('offset')}"
        )
        params |= {"limit": limit, "offset": offset}
        return [self.group_from_row(r) for r in self.fetch_all(sql, self.params(params))]

    def count_selected_groups(self, expr: Expr) -> int:
        """How many groups match ``expr``."""
        condition, params = where_groups(self.dialect, expr)
        row = self.fetch_one(
            f"SELECT count(*) FROM user_groups WHERE {condition}", self.params(params)
        )
        return int(row[0]) if row else 0

    def member_ids(self, group_id: uuid.UUID) -> list[uuid.UUID]:
        """Every member's id, by id."""
        rows = self.fetch_all(
            self._sql("SELECT user_id FROM group_members WHERE group_id = :id ORDER BY user_id"),
            self.params({"id": group_id}),
        )
        return [self.uuid_from_db(r[0]) for r in rows]

    def list_members(self, group_id: uuid.UUID, after: uuid.UUID | None, limit: int) -> list[User]:
        """A page of live members by id."""
        after_clause = " AND u.id > :after" if after is not None else ""
        sql = self._sql(
            f"SELECT {_MEMBER_USER_COLUMNS} FROM group_members m "
            "JOIN users u ON u.id = m.user_id "
            f"WHERE m.group_id = :id AND u.deleted_at IS NULL{after_clause} "
            "ORDER BY u.id LIMIT :limit"
        )
        params = {"id": group_id, "limit": limit, "after": after}
        if after is None:
            del params["after"]
        return [self.user_from_row(r) for r in self.fetch_all(sql, self.params(params))]

    def member_roles(self, user_id: uuid.UUID) -> frozenset[str]:
        """The roles of the live user's groups, in one indexed join."""
        rows = self.fetch_all(
            self._sql(
                "SELECT g.roles FROM group_members m "
                "JOIN user_groups g ON g.id = m.group_id "
                "JOIN users u ON u.id = m.user_id "
                "WHERE m.user_id = :id AND u.deleted_at IS NULL AND g.roles <> '[]'"
            ),
            self.params({"id": user_id}),
        )
        roles: set[str] = set()
        for (text,) in rows:
            roles.update(json.loads(text))
        return frozenset(roles)
