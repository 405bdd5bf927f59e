"""``SQLStorage``: the ``Storage`` protocol once, over named SQL, for every SQL store.

A SQL storage plugin subclasses it and supplies the driver side only, through
these extension points:

- ``fetch_one``, ``fetch_all``, ``execute``: run one statement, with driver
  errors mapped to domain errors (a unique violation to ``Conflict``, a lost
  or refused connection and timeouts to ``Unavailable``, a missing table to
  ``Unavailable`` saying to migrate);
- ``transaction()``: a block whose statements commit together on one
  connection (needed when the dialect has no ``RETURNING``);
- ``to_db``, ``time_from_db``, ``uuid_from_db``: values the driver cannot
  pass or return as Python types; ``user_from_row`` when a faster mapping helps;
- ``core_migrations()`` and ``migration_url()``: where its schema is and how
  yoyo reaches the database;

plus the class attributes ``name``, ``embedded``, ``system``, ``dialect``
and ``queries`` (``userplane.sql.NAMED_QUERIES`` lists what each must do).
"""

from __future__ import annotations

import abc
import contextlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from userplane.errors import NotFound, PreconditionFailed
from userplane.filtering import Expr
from userplane.hooks import PluginMigrations
from userplane.idempotency import IdempotencyRecord, StoredResponse
from userplane.pagination import Position, Sort
from userplane.sql.dialect import Dialect
from userplane.sql.filtering import where as filtering_where
from userplane.sql.groups import SQLGroups
from userplane.sql.listing import SORT_COLUMNS, list_users_sql
from userplane.sql.migrations import apply_migrations, migration_sources, migration_status
from userplane.sql.schema import SCHEMA_VERSION, USER_COLUMN_COUNT, USER_COLUMNS
from userplane.storage import IndexEntry, KeyRecord, MigrationState, UserRow
from userplane.text import fold
from userplane.users import User, UserFilter


def attributes_to_db(attributes: Mapping[str, Any]) -> str | None:
    """A user's custom attributes as stored: compact JSON text, ``NULL`` when there are none."""
    return json.dumps(attributes, separators=(",", ":"), ensure_ascii=False) if attributes else None


def attributes_from_db(value: Any) -> dict[str, Any]:
    """The stored attributes (JSON text or ``NULL``) as a dict."""
    return {} if value is None else dict(json.loads(value))


Row = Sequence[Any]


def insert_params(
    user: User, email_key: str, name_key: str | None = None, next_key: str | None = None
) -> dict[str, Any]:
    """Named parameters of ``insert_user``: the user's fields plus derived keys.

    ``full_name_folded`` is ``name_key``, by default ``fold(full_name or "")``:
    stored so that search and sorting compare folded text the same way on
    every backend, without a function per row.
    """
    return {
        "id": user.id,
        "email": user.email,
        "email_key": email_key,
        "email_next": next_key,
        "full_name": user.full_name,
        "full_name_folded": fold(user.full_name or "") if name_key is None else name_key,
        "is_active": user.is_active,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "version": user.version,
        "external_source": user.external_source,
        "external_id": user.external_id,
        "attributes": attributes_to_db(user.attributes),
    }


def update_params(
    user_id: uuid.UUID,
    fields: Mapping[str, Any],
    email_key: str | None,
    expected_version: int | None,
    now: datetime,
    name_key: str | None = None,
    next_key: str | None = None,
) -> dict[str, Any]:
    """Named parameters of ``update_user``, a one-statement conditional update.

    Each field comes with a ``set_<field>`` flag, so one static statement
    (``CASE WHEN :set_email THEN :email ELSE email END``) serves every partial
    update and can be prepared once.
    """
    return {
        "id": user_id,
        "expected_version": expected_version,
        "now": now,
        **_personal_params(fields, email_key, name_key, next_key),
        "set_is_active": "is_active" in fields,
        "is_active": fields.get("is_active"),
        # The external id and its source are one value: set together.
        "set_external": "external_id" in fields,
        "external_source": fields.get("external_source"),
        "external_id": fields.get("external_id"),
        "set_attributes": "attributes" in fields,
        "attributes": attributes_to_db(fields.get("attributes") or {}),
    }


def _personal_params(
    fields: Mapping[str, Any], email_key: str | None, name_key: str | None, next_key: str | None
) -> dict[str, Any]:
    """The email and name of ``fields`` with their ``set_`` flags and keys, as writes take them."""
    full_name = fields.get("full_name")
    return {
        "set_email": "email" in fields,
        "email": fields.get("email"),
        "email_key": email_key,
        "email_next": next_key,
        "set_full_name": "full_name" in fields,
        "full_name": full_name,
        "full_name_folded": fold(full_name or "") if name_key is None else name_key,
    }


def write_missed(user_id: uuid.UUID, exists: bool) -> NotFound | PreconditionFailed:
    """The error for a conditional write that matched no row.

    Called after the write was already decided by the database, only to choose
    what to report: ``NotFound`` if the user is gone, else ``PreconditionFailed``.
    """
    if not exists:
        return NotFound(f"no user with id {user_id}")
    return PreconditionFailed("the user has changed since that version")


class SQLStorage(SQLGroups, abc.ABC):
    """The user and idempotency-key operations, shared by the SQL stores."""

    #: Short backend name shown to operators ("sqlite", "postgresql").
    name: ClassVar[str]
    #: True for an embedded database a first run may migrate by itself.
    embedded: ClassVar[bool] = False
    #: The database system, as OpenTelemetry names it.
    system: ClassVar[str]
    #: How the store's SQL spells parameters and substring tests, and what it can do.
    dialect: ClassVar[Dialect]
    #: The store's named queries (``load_queries``), ``NAMED_QUERIES`` at least.
    queries: ClassVar[Mapping[str, str]]
    #: The published schema version the store's migrations create.
    schema_version: ClassVar[int] = SCHEMA_VERSION
    #: The database URL (yoyo's, unless ``migration_url`` says otherwise).
    url: str
    _connection_wrappers: tuple[Callable[[Any], Any], ...] = ()

    # -- extension points: the driver side -----------------------------------------

    @abc.abstractmethod
    def fetch_one(self, sql: str, params: Mapping[str, Any]) -> Row | None:
        """The first row of ``sql``, or ``None``; driver errors mapped to domain errors."""

    @abc.abstractmethod
    def fetch_all(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        """Every row of ``sql``."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        """Run ``sql``; the number of rows it changed."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A block whose statements (on this thread) commit together, or not at all.

        A block inside another joins it. Every statement run through
        ``fetch_one``, ``fetch_all`` and ``execute`` on this thread inside the
        block belongs to it, a plugin's too (``Storage.transaction``).
        """

    def execute_many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        """Run ``sql`` once per mapping of ``params`` (already through ``to_db``).

        A loop of ``execute`` unless the store overrides it with its driver's
        batch (``executemany``, a pipeline): bulk writes and plugins recording
        many changes at once go through it.
        """
        for one in params:
            self.execute(sql, one)

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert ``rows`` (values in ``columns``' order, through ``to_db`` here) into ``table``.

        For plugins writing many rows of plain values at once (an import's
        audit events): one ``execute_many`` of an ``INSERT`` unless the store
        has a faster path (PostgreSQL: ``COPY``). ``table`` and ``columns``
        are the caller's own identifiers, never input.
        """
        if not rows:
            return
        names = [f"c{i}" for i in range(len(columns))]
        sql = self.dialect.compile(
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + n for n in names)})"
        )
        self.execute_many(
            sql, [{n: self.to_db(v) for n, v in zip(names, row, strict=True)} for row in rows]
        )

    def to_db(self, value: Any) -> Any:
        """``value`` as the driver takes it (identity unless overridden)."""
        return value

    def time_from_db(self, value: Any) -> datetime:
        """A time column's value as an aware UTC ``datetime`` (identity unless overridden)."""
        return value  # type: ignore[no-any-return]

    def uuid_from_db(self, value: Any) -> uuid.UUID:
        """An id column's value as a ``UUID``."""
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))

    def user_from_row(self, row: Row) -> User:
        """A ``User`` from a row of ``USER_COLUMNS``."""
        deleted = row[7]
        return User(
            id=self.uuid_from_db(row[0]),
            email=row[1],
            full_name=row[2],
            is_active=bool(row[3]),
            created_at=self.time_from_db(row[4]),
            updated_at=self.time_from_db(row[5]),
            version=row[6],
            deleted_at=None if deleted is None else self.time_from_db(deleted),
            external_source=row[8],
            external_id=row[9],
            attributes=attributes_from_db(row[10]),
        )

    def core_migrations(self) -> Path | None:
        """The folder of the core schema's migrations for this dialect.

        The core ships ``sqlite`` and ``postgresql``; a store of another
        dialect ships its own, creating the published schema
        (``docs/schema.md``) at ``schema_version``.
        """
        from userplane import migrations

        return migrations.folder(self.dialect.name)

    def migration_url(self) -> str:
        """The database as yoyo names it (default: ``url``)."""
        return self.url

    # -- helpers for stores and plugins ------------------------------------------

    def params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with every value passed through ``to_db``."""
        return {k: self.to_db(v) for k, v in params.items()}

    def query(self, name: str, params: Mapping[str, Any]) -> Row | None:
        """The first row of the named query ``name``."""
        return self.fetch_one(self.queries[name], self.params(params))

    def wrap_connections(self, wrapper: Callable[[Any], Any]) -> None:
        """Pass every connection opened from now on through ``wrapper``.

        See ``userplane.storage.InstrumentableStorage``. A store applies the
        wrappers with ``wrapped(connection)`` wherever it opens one.
        """
        self._connection_wrappers = (*self._connection_wrappers, wrapper)

    def wrapped(self, connection: Any) -> Any:
        """``connection`` as the wrappers return it."""
        for wrapper in self._connection_wrappers:
            connection = wrapper(connection)
        return connection

    # -- migrations -------------------------------------------------------------------

    def migrate(self, plugins: Sequence[PluginMigrations] = ()) -> list[str]:
        """Apply the core's and the plugins' pending migrations (yoyo, with its lock)."""
        sources = migration_sources(self.dialect.name, self.core_migrations(), plugins)
        return apply_migrations(self.migration_url(), sources)

    def migration_status(self, plugins: Sequence[PluginMigrations] = ()) -> list[MigrationState]:
        """Every migration and whether it is applied."""
        sources = migration_sources(self.dialect.name, self.core_migrations(), plugins)
        return migration_status(self.migration_url(), sources)

    # -- users -------------------------------------------------------------------

    def _maybe_user(self, query: str, params: Mapping[str, Any]) -> User | None:
        row = self.query(query, params)
        return None if row is None else self.user_from_row(row)

    def _written(self, query: str, params: Mapping[str, Any], user_id: uuid.UUID) -> User | None:
        """The row a write of one user left, or ``None`` if it matched none."""
        if self.dialect.returning:
            return self._maybe_user(query, params)
        with self.transaction():
            if not self.execute(self.queries[query], self.params(params)):
                return None
            return self._maybe_user("get_user", {"id": user_id, "include_deleted": True})

    def _write(self, query: str, params: Mapping[str, Any], user_id: uuid.UUID) -> User:
        """A conditional write of one user; a miss says whether it is gone or stale."""
        user = self._written(query, params, user_id)
        if user is None:
            exists = self.query("user_version", {"id": user_id}) is not None
            raise write_missed(user_id, exists)
        return user

    def insert_user(
        self,
        user: User,
        email_key: str,
        *,
        name_key: str | None = None,
        next_key: str | None = None,
    ) -> User:
        """Insert; the unique indexes turn a taken email into ``Conflict``."""
        params = insert_params(user, email_key, name_key, next_key)
        inserted = self._written("insert_user", params, user.id)
        assert inserted is not None
        return inserted

    def get_user(self, user_id: uuid.UUID, include_deleted: bool = False) -> User | None:
        """The user by id."""
        return self._maybe_user("get_user", {"id": user_id, "include_deleted": include_deleted})

    def lock_user(self, user_id: uuid.UUID) -> User | None:
        """The user by id, locked for the rest of the transaction."""
        return self._maybe_user("lock_user", {"id": user_id})

    def get_user_by_email(
        self, email_key: str, include_deleted: bool = False, *, next_key: str | None = None
    ) -> User | None:
        """The user by normalised email or (with ``next_key``) by the second index."""
        params = {"email_key": email_key, "include_deleted": include_deleted}
        if next_key is None:
            return self._maybe_user("get_user_by_email", params)
        return self._maybe_user("get_user_by_email_keys", {**params, "email_next": next_key})

    def list_users(
        self, flt: UserFilter, sort: Sort, after: Position | None, limit: int
    ) -> list[User]:
        """A keyset page, with the statement composed for this sort and these filters."""
        sql = list_users_sql(
            self.dialect,
            USER_COLUMNS,
            sort.field,
            sort.descending,
            after=after is not None,
            is_active=flt.is_active is not None,
            email=flt.email is not None,
            email_next=flt.email is not None and flt.email_next is not None,
            q=bool(flt.q),
            include_deleted=flt.include_deleted,
            external_source=flt.external_source is not None,
            external_id=flt.external_id is not None,
        )
        params = {
            "after_key": None if after is None else after.key,
            "after_id": None if after is None else after.id,
            "is_active": flt.is_active,
            "email_key": flt.email,
            "email_next": flt.email_next,
            "q": flt.q,
            "external_source": flt.external_source,
            "external_id": flt.external_id,
            "limit": limit,
        }
        return [self.user_from_row(r) for r in self.fetch_all(sql, self.params(params))]

    def update_user(
        self,
        user_id: uuid.UUID,
        fields: Mapping[str, Any],
        email_key: str | None,
        expected_version: int | None,
        now: datetime,
        *,
        name_key: str | None = None,
        next_key: str | None = None,
    ) -> User:
        """One conditional ``UPDATE``."""
        params = update_params(
            user_id, fields, email_key, expected_version, now, name_key, next_key
        )
        return self._write("update_user", params, user_id)

    def delete_user(self, user_id: uuid.UUID, expected_version: int | None, now: datetime) -> User:
        """One conditional ``UPDATE`` setting ``deleted_at``."""
        params = {"id": user_id, "expected_version": expected_version, "now": now}
        return self._write("delete_user", params, user_id)

    def restore_user(self, user_id: uuid.UUID, now: datetime) -> User | None:
        """Clear ``deleted_at``, if set."""
        return self._written("restore_user", {"id": user_id, "now": now}, user_id)

    def purge_user(self, user_id: uuid.UUID) -> bool:
        """Delete the row if it is deleted, then the responses left about no user."""
        with self.transaction():
            removed = self.execute(self.queries["purge_user"], self.params({"id": user_id}))
            self.execute(self.queries["purge_orphan_responses"], {})
            return removed > 0

    def reseal_user(
        self,
        user_id: uuid.UUID,
        version: int,
        fields: Mapping[str, Any],
        email_key: str | None,
        next_key: str | None = None,
    ) -> bool:
        """One ``UPDATE`` of the stored form, conditional on ``version``."""
        # Only the core reseals, and it seals: a sealed name has no order ("").
        params = {
            "id": user_id,
            "version": version,
            **_personal_params(fields, email_key, "", next_key),
        }
        return self.execute(self.queries["reseal_user"], self.params(params)) > 0

    def purge_users(self, deleted_before: datetime) -> int:
        """Delete the rows deleted before the cut-off, and the responses about them first."""
        params = self.params({"before": deleted_before})
        with self.transaction():
            self.execute(self.queries["purge_user_responses"], params)
            count = self.execute(self.queries["purge_users"], params)
            # A response completed while the users went (the two statements are one
            # transaction only where the store makes them one).
            self.execute(self.queries["purge_orphan_responses"], {})
            return count

    # -- filters (``userplane.storage.FilterableStorage``) ------------------------------

    def select_users(
        self,
        expr: Expr,
        sort: Sort,
        offset: int,
        limit: int,
        include_deleted: bool = False,
        after: Position | None = None,
    ) -> list[User]:
        """The users matching ``expr``, in ``sort`` order then ``id``, from ``offset``."""
        condition, params = filtering_where(self.dialect, expr)
        if not include_deleted:
            condition = f"deleted_at IS NULL AND {condition}"
        column = SORT_COLUMNS[sort.field]
        if after is not None:
            # The keyset, as the list's: a row comparison the sort's index seeks on.
            op = "<" if sort.descending else ">"
            key, last = self.dialect.placeholder("after_key"), self.dialect.placeholder("after_id")
            condition = f"({column}, id) {op} ({key}, {last}) AND {condition}"
            params |= {"after_key": after.key, "after_id": after.id}
        direction = " DESC" if sort.descending else ""
        order = f"{column}{direction}, id{direction}"
        sql = (
            f"SELECT {USER_COLUMNS} FROM users WHERE {condition} ORDER BY {order} "
            f"LIMIT {self.dialect.placeholder('limit')} OFFSET {self.dialect.placeholder('offset')}"
        )
        params |= {"limit": limit, "offset": offset}
        return [self.user_from_row(r) for r in self.fetch_all(sql, self.params(params))]

    def count_selected(self, expr: Expr, include_deleted: bool = False) -> int:
        """How many users match ``expr``."""
        condition, params = filtering_where(self.dialect, expr)
        if not include_deleted:
            condition = f"deleted_at IS NULL AND {condition}"
        row = self.fetch_one(f"SELECT count(*) FROM users WHERE {condition}", self.params(params))
        return int(row[0]) if row else 0

    # -- idempotency keys --------------------------------------------------------

    def claim_idempotency_key(
        self,
        key: str,
        fingerprint: str,
        now: datetime,
        expires_at: datetime,
        stale_before: datetime,
    ) -> bool:
        """One upsert decides the owner."""
        params = {
            "key": key,
            "fingerprint": fingerprint,
            "now": now,
            "expires_at": expires_at,
            "stale_before": stale_before,
        }
        if self.dialect.returning:
            return self.query("claim_idempotency_key", params) is not None
        return self.execute(self.queries["claim_idempotency_key"], self.params(params)) > 0

    def get_idempotency_record(self, key: str, now: datetime) -> IdempotencyRecord | None:
        """The unexpired record."""
        row = self.query("get_idempotency_record", {"key": key, "now": now})
        if row is None:
            return None
        fingerprint, status, headers, body, user_id = row
        if status is None:
            return IdempotencyRecord(fingerprint, None)
        pairs = tuple((str(k), str(v)) for k, v in json.loads(headers))
        about = None if user_id is None else self.uuid_from_db(user_id)
        return IdempotencyRecord(fingerprint, StoredResponse(status, pairs, bytes(body), about))

    def complete_idempotency_key(self, key: str, response: StoredResponse) -> None:
        """Store the response."""
        params = {
            "key": key,
            "status": response.status,
            "headers": json.dumps(response.headers),
            "body": response.body,
            "user_id": response.user_id,
        }
        self.execute(self.queries["complete_idempotency_key"], self.params(params))

    def release_idempotency_key(self, key: str) -> None:
        """Drop an unfinished claim."""
        self.execute(self.queries["release_idempotency_key"], {"key": key})

    def purge_idempotency_keys(self, now: datetime) -> int:
        """Remove expired keys."""
        return self.execute(self.queries["purge_idempotency_keys"], self.params({"now": now}))

    def index_entries(self, after: uuid.UUID | None, limit: int) -> list[IndexEntry]:
        """A page by id of users with both index values."""
        rows = self.fetch_all(
            self.queries["index_entries"], self.params({"after": after, "limit": limit})
        )
        n = USER_COLUMN_COUNT
        return [IndexEntry(self.user_from_row(r[:n]), r[n], r[n + 1]) for r in rows]

    def count_users(self) -> int:
        """``SELECT count(*)``."""
        row = self.query("count_users", {})
        return int(row[0]) if row else 0

    def purge_orphan_responses(self) -> int:
        """Delete the responses left about no user."""
        return self.execute(self.queries["purge_orphan_responses"], {})

    def deleted_user_ids(self, deleted_before: datetime, limit: int) -> list[uuid.UUID]:
        """A page of ids of users deleted before the cut-off."""
        params = self.params({"before": deleted_before, "limit": limit})
        rows = self.fetch_all(self.queries["deleted_user_ids"], params)
        return [self.uuid_from_db(r[0]) for r in rows]

    # -- encryption keys ----------------------------------------------------------

    def key_records(self) -> list[KeyRecord]:
        """Every recorded encryption key."""
        return [
            KeyRecord(
                name,
                purpose,
                fingerprint,
                self.time_from_db(created_at),
                None if retired_at is None else self.time_from_db(retired_at),
                home,
                None if ready_at is None else self.time_from_db(ready_at),
            )
            for name, purpose, fingerprint, created_at, retired_at, home, ready_at in (
                self.fetch_all(self.queries["key_records"], {})
            )
        ]

    def add_key_record(self, record: KeyRecord) -> bool:
        """Insert unless the name is taken."""
        params = {
            "name": record.name,
            "purpose": record.purpose,
            "fingerprint": record.fingerprint,
            "created_at": record.created_at,
            "home": record.home,
            "ready_at": record.ready_at,
        }
        return self.execute(self.queries["add_key_record"], self.params(params)) > 0

    def retire_key_record(self, name: str, at: datetime) -> None:
        """Mark the key retired."""
        self.execute(self.queries["retire_key_record"], self.params({"name": name, "at": at}))

    def mark_key_ready(self, name: str, at: datetime) -> None:
        """Set the index key's ``ready_at``."""
        self.execute(self.queries["mark_key_ready"], self.params({"name": name, "at": at}))

    # -- bulk (``userplane.storage.BulkStorage``) -------------------------------------

    #: The most keys one ``users_by_email_keys`` statement asks for (each is two parameters).
    KEYS_PER_STATEMENT: ClassVar[int] = 500

    def users_by_email_keys(self, email_keys: Sequence[str]) -> dict[str, User]:
        """The users whose ``email_normalized`` or ``email_index_next`` is one of the keys."""
        wanted = list(dict.fromkeys(email_keys))
        found: dict[str, User] = {}
        for start in range(0, len(wanted), self.KEYS_PER_STATEMENT):
            chunk = wanted[start : start + self.KEYS_PER_STATEMENT]
            names = [f"k{i}" for i in range(len(chunk))]
            listed = ", ".join(f":{n}" for n in names)
            sql = self.dialect.compile(
                f"SELECT email_normalized, email_index_next, {USER_COLUMNS} FROM users "
                f"WHERE email_normalized IN ({listed}) OR email_index_next IN ({listed})"
            )
            asked = set(chunk)
            for row in self.fetch_all(sql, self.params(dict(zip(names, chunk, strict=True)))):
                user = self.user_from_row(row[2:])
                for key in row[:2]:
                    if key in asked:
                        found[key] = user
        return found

    def insert_users(self, rows: Sequence[UserRow]) -> None:
        """Every row in one batch of ``execute_many``: the statement of ``insert_user``."""
        if rows:
            self.execute_many(
                self._insert_users_sql,
                [
                    self.params(insert_params(r.user, r.email_key, r.name_key, r.next_key))
                    for r in rows
                ],
            )

    @property
    def _insert_users_sql(self) -> str:
        # insert_user's own statement, less what it returns: the caller built the users.
        sql = self.queries["insert_user"]
        head, sep, _ = sql.rpartition("RETURNING")
        return head if sep else sql
