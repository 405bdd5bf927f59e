"""The ``Storage`` protocol: the contract every storage plugin implements.

A storage plugin answers ``userplane_open_storage(settings)`` with an object
satisfying this protocol. ``userplane.testing.StorageContract`` is the test
suite that proves an implementation honours it; run it against yours.

Rules every implementation follows:

- Races are decided by the database: the unique normalised email by a unique
  index (a violation raises ``Conflict``), a conditional write by
  ``UPDATE … WHERE version = ?`` (a miss raises ``PreconditionFailed``).
  Never check-then-act.
- Only domain errors escape: driver errors are mapped in one place
  (connection loss and timeouts to ``Unavailable``).
- Timestamps go in and come out timezone-aware UTC, with microseconds kept.
- The object is shared by the threads of one process; it must make its own
  connections per process (gunicorn forks after the app may be imported).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from userplane.idempotency import IdempotencyRecord, StoredResponse
from userplane.pagination import Position, Sort
from userplane.users import User, UserFilter

if TYPE_CHECKING:
    from userplane.filtering import Expr
    from userplane.groups import Group, GroupFilter
    from userplane.hooks import PluginMigrations


@attrs.frozen
class MigrationState:
    """One migration, whether it has been applied, and who ships it."""

    id: str
    applied: bool
    #: ``"userplane"`` for the core's schema, else the plugin's name.
    source: str = "userplane"


@attrs.frozen
class KeyRecord:
    """A key that sealed data in this database, known by name and fingerprint only.

    ``purpose`` is ``"kek"`` (wraps data keys) or ``"index"`` (the blind
    index). ``fingerprint`` is an HMAC of a constant under the key: it proves
    a configured key is the one of that name, and says nothing of the key.
    ``retired_at`` is set once nothing is sealed under the key any more.
    """

    name: str
    purpose: str
    fingerprint: str
    created_at: datetime
    retired_at: datetime | None = None
    #: A blind-index key's column: ``"a"`` (``email_normalized``) or ``"b"`` (``email_index_next``).
    home: str | None = None
    #: When every user had a blind-index key's index in its column (``None`` while re-indexing).
    ready_at: datetime | None = None


@attrs.frozen
class IndexEntry:
    """A stored user with both of its email index values, as a re-index reads them."""

    user: User
    #: ``email_normalized``.
    email_key: str
    #: ``email_index_next``, or ``None``.
    next_key: str | None


@runtime_checkable
class Storage(Protocol):
    """Where users live. Methods raise only ``userplane.errors`` exceptions."""

    # Read-only properties, so that a class attribute (a ClassVar) satisfies them too.

    @property
    def name(self) -> str:
        """Short backend name shown to operators ("sqlite", "postgresql")."""

    @property
    def embedded(self) -> bool:
        """True for an embedded database a first run may migrate by itself."""

    @property
    def schema_version(self) -> int:
        """The published schema version it holds (``userplane.sql.SCHEMA_VERSION``)."""

    def ping(self) -> None:
        """Prove the database answers; raise ``Unavailable`` if it does not."""

    def close(self) -> None:
        """Release every connection; the object is not used afterwards."""

    def migrate(self, plugins: Sequence[PluginMigrations] = ()) -> list[str]:
        """Apply pending migrations, the core's then ``plugins``', safely against concurrent runs.

        Returns the ids applied. ``plugins`` are the folders plugins contribute
        (``userplane_migrations``); the storage picks those of its dialect.
        """

    def migration_status(
        self, plugins: Sequence[PluginMigrations] = ()
    ) -> Sequence[MigrationState]:
        """Every known migration, the core's and ``plugins``', in order, and whether applied."""

    def insert_user(
        self,
        user: User,
        email_key: str,
        *,
        name_key: str | None = None,
        next_key: str | None = None,
    ) -> User:
        """Insert ``user`` with its normalised email ``email_key``; ``Conflict`` if taken.

        ``next_key`` goes to the second index column (``email_index_next``,
        unique too: ``Conflict`` if taken), which a re-index fills.

        ``name_key`` is what to sort and search the name by; ``None`` means
        ``fold(full_name or "")``. With encryption on the core passes ``""``:
        a sealed name has no order.
        """

    def get_user(self, user_id: uuid.UUID, include_deleted: bool = False) -> User | None:
        """The user with ``user_id``, or ``None``; a deleted one only if ``include_deleted``."""

    def lock_user(self, user_id: uuid.UUID) -> User | None:
        """Inside ``transaction()``: the user (deleted too), locked until the transaction ends.

        No other writer changes it meanwhile (``SELECT … FOR UPDATE``; a store
        whose transactions lock the whole database reads it), so the state
        read is the one the next write changes: the "before" of a record.
        """

    def get_user_by_email(
        self, email_key: str, include_deleted: bool = False, *, next_key: str | None = None
    ) -> User | None:
        """The user whose normalised email is ``email_key``, or ``None`` (deleted: as above).

        With ``next_key``, or the user whose ``email_index_next`` it is, in one
        statement (a re-index moving the user between two would hide it).
        """

    def list_users(
        self, flt: UserFilter, sort: Sort, after: Position | None, limit: int
    ) -> list[User]:
        """At most ``limit`` users matching ``flt``, in ``sort`` order then ``id``, after ``after``.

        ``email`` sorts by the email key (unique, so no tie-break), ``full_name``
        by ``fold(full_name or "")``; descending reverses both key and ``id``.
        ``after.key`` is such a key (a UTC datetime for ``created_at``).
        ``flt.q`` (already folded with ``userplane.text.fold``) matches a
        substring of the email key or of the folded name, taken literally
        (``%`` and ``_`` are not wildcards). Deleted users only with
        ``flt.include_deleted``.
        """

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
        """Set ``fields`` (and the email key when the email changes) of a live user.

        ``name_key`` replaces the name's sort key when the name changes (as
        for ``insert_user``; ``None``: ``fold(full_name or "")``); when the
        email changes, ``next_key`` replaces ``email_index_next`` (``None``
        clears it).

        Bumps ``version`` and sets ``updated_at`` to ``now``. One conditional
        statement: ``NotFound`` if there is no such live user,
        ``PreconditionFailed`` if ``expected_version`` is given and differs,
        ``Conflict`` if the new email is taken (by a deleted user too).
        """

    def delete_user(self, user_id: uuid.UUID, expected_version: int | None, now: datetime) -> User:
        """Softly delete a live user: set ``deleted_at`` to ``now``, bump ``version``.

        The row, and so the email, stays. Errors as ``update_user``.
        """

    def restore_user(self, user_id: uuid.UUID, now: datetime) -> User | None:
        """Clear ``deleted_at`` of a deleted user and bump ``version``; ``None`` if none such."""

    def purge_user(self, user_id: uuid.UUID) -> bool:
        """Remove for good the user ``user_id`` if it is deleted, and the responses about it.

        ``False`` if there is no such deleted user (a live one stays).
        """

    def reseal_user(
        self,
        user_id: uuid.UUID,
        version: int,
        fields: Mapping[str, Any],
        email_key: str | None,
        next_key: str | None = None,
    ) -> bool:
        """Replace the stored ``fields`` (``email``, ``full_name``) of the user at ``version``.

        For key rotation and re-indexing: the user may be deleted or live;
        ``version`` and ``updated_at`` stay as they are (what a client sees does
        not change). ``email_key`` and ``next_key`` replace the two index
        values when given. ``False``, changing nothing, when the user is gone
        or no longer at ``version``; ``Conflict`` if an index value is taken.
        """

    def index_entries(self, after: uuid.UUID | None, limit: int) -> list[IndexEntry]:
        """Up to ``limit`` users, deleted ones too, by ``id`` after ``after``, with index values."""

    def purge_users(self, deleted_before: datetime) -> int:
        """Remove for good every user deleted before ``deleted_before``; return how many.

        The stored responses about them (``StoredResponse.user_id``) go too.
        """

    def claim_idempotency_key(
        self,
        key: str,
        fingerprint: str,
        now: datetime,
        expires_at: datetime,
        stale_before: datetime,
    ) -> bool:
        """Claim ``key`` for a request; ``True`` if this caller now owns it.

        One statement: a key not held, expired (``expires_at <= now``) or
        claimed but never completed before ``stale_before`` is (re)claimed with
        ``fingerprint`` and no response; otherwise nothing changes. Of two
        concurrent claims exactly one wins.
        """

    def get_idempotency_record(self, key: str, now: datetime) -> IdempotencyRecord | None:
        """The unexpired record of ``key``, or ``None``."""

    def complete_idempotency_key(self, key: str, response: StoredResponse) -> None:
        """Store the response of the request that claimed ``key``, ``user_id`` included."""

    def release_idempotency_key(self, key: str) -> None:
        """Drop a claim whose request failed (a completed key is kept)."""

    def purge_idempotency_keys(self, now: datetime) -> int:
        """Remove every expired key; return how many."""

    def count_users(self) -> int:
        """How many users are stored, deleted ones included (for progress reports)."""

    def purge_orphan_responses(self) -> int:
        """Remove the stored responses about users that no longer exist; return how many.

        A response completed while its user was being purged outlives it; a
        purge that removes users one by one ends with this sweep.
        """

    def deleted_user_ids(self, deleted_before: datetime, limit: int) -> list[uuid.UUID]:
        """Up to ``limit`` ids, by id, of the users deleted before ``deleted_before``.

        What a purge removes, one by one, when each removal is recorded.
        """

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A block whose statements, on this thread, commit together or not at all.

        A block inside another joins it (one transaction, committed by the
        outer one). An exception rolls everything back and propagates. Plugins'
        statements on the same storage object join it too: that is how a
        record of a change commits with the change (``userplane_record_change``).
        """

    def key_records(self) -> list[KeyRecord]:
        """Every encryption key recorded in this database (``KeyRecord``), by name."""

    def add_key_record(self, record: KeyRecord) -> bool:
        """Record a key unless one of that name is recorded; ``True`` if this call added it."""

    def retire_key_record(self, name: str, at: datetime) -> None:
        """Mark the key called ``name`` retired at ``at`` (nothing is sealed under it any more)."""

    def mark_key_ready(self, name: str, at: datetime) -> None:
        """Set ``ready_at`` of the blind-index key ``name`` to ``at``, unless it is set."""


@attrs.frozen
class PoolStats:
    """A snapshot of a connection pool, for metrics."""

    #: Connections open now, idle or in use.
    size: int
    #: Connections lent out now.
    in_use: int
    #: Callers waiting for a connection.
    waiting: int
    #: The most connections the pool may open.
    max_size: int


@runtime_checkable
class PooledStorage(Protocol):
    """A storage that can report on its connection pool (optional capability)."""

    def pool_stats(self) -> PoolStats | None:
        """This process's pool now, or ``None`` while no pool is open."""


@runtime_checkable
class InstrumentableStorage(Protocol):
    """A storage that lets plugins wrap its DB-API connections (optional capability).

    A tracing plugin uses it to put one span on every SQL statement.
    """

    #: The database system, as OpenTelemetry names it (``"sqlite"``, ``"postgresql"``).
    system: str

    def wrap_connections(self, wrapper: Callable[[Any], Any]) -> None:
        """Pass every connection opened from now on through ``wrapper``.

        ``wrapper(connection)`` returns the connection to use: the same one,
        changed in place, or a proxy (a pooled store keeps its own connection
        objects, so there the wrapper must change the connection in place).
        Call before the first statement runs.
        """


@attrs.frozen
class UserRow:
    """One user for ``BulkStorage.insert_users``: what ``insert_user`` takes, as one value."""

    user: User
    email_key: str
    name_key: str | None = None
    next_key: str | None = None


@runtime_checkable
class BulkStorage(Protocol):
    """A storage that reads and writes users by the batch (optional capability).

    ``userplane users import`` uses it when the storage offers it (every
    ``SQLStorage`` does; the PostgreSQL store writes with ``COPY``) and falls
    back to ``get_user_by_email`` and ``insert_user`` per user otherwise, with
    the same results. Both run inside ``transaction()``.
    """

    def users_by_email_keys(self, email_keys: Sequence[str]) -> dict[str, User]:
        """The users, deleted ones too, whose email key is one of ``email_keys``, by that key.

        A user matches through ``email_normalized`` or ``email_index_next``
        (the second index, while it moves), as ``get_user_by_email`` with
        ``next_key`` does; under both keys when both are asked for.
        """

    def insert_users(self, rows: Sequence[UserRow]) -> None:
        """Insert every row, as ``insert_user`` would each, in the current transaction.

        ``Conflict`` if any email key is taken (by a stored user or by
        another row): the caller rolls the transaction back, so none is
        inserted.
        """


@runtime_checkable
class GroupStorage(Protocol):
    """A storage that keeps groups and their members (optional capability).

    Every ``SQLStorage`` does, in the tables of the published schema
    (``user_groups``, ``group_members``); ``StorageContract`` proves it.
    Without it, group operations answer that the storage does not keep
    groups. The rules of ``Storage`` hold: races are decided by the
    database (a unique index on the folded display name and on the external
    id, conditional writes on ``version``), and each method that writes
    several statements runs them in one transaction.
    """

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """As ``Storage.transaction``: group writes join the block's transaction."""

    def insert_group(self, group: Group, name_key: str) -> Group:
        """Insert ``group`` with its folded name ``name_key``.

        ``Conflict`` if that name or its ``external_id`` is taken.
        """

    def get_group(self, group_id: uuid.UUID) -> Group | None:
        """The group with ``group_id``, or ``None``."""

    def lock_group(self, group_id: uuid.UUID) -> Group | None:
        """Inside ``transaction()``: the group, locked until it ends (as ``lock_user``)."""

    def list_groups(self, flt: GroupFilter, after: Position | None, limit: int) -> list[Group]:
        """At most ``limit`` groups matching ``flt``, by ``created_at`` and ``id``, after ``after``.

        ``flt.display_name`` matches the folded name exactly, ``flt.q`` a
        substring of it (taken literally), ``flt.member`` the groups that
        user belongs to.
        """

    def update_group(
        self,
        group_id: uuid.UUID,
        fields: Mapping[str, Any],
        name_key: str | None,
        expected_version: int | None,
        now: datetime,
    ) -> Group:
        """Set ``fields`` (``display_name`` with its ``name_key``, ``roles``, ``external_id``).

        Bumps ``version`` and sets ``updated_at``. ``NotFound`` if there is no
        such group, ``PreconditionFailed`` if ``expected_version`` differs,
        ``Conflict`` if the new name or external id is taken.
        """

    def delete_group(self, group_id: uuid.UUID, expected_version: int | None) -> Group:
        """Remove the group and its memberships; returns it as it was (errors: ``update_group``)."""

    def touch_groups_of(self, user_id: uuid.UUID, now: datetime) -> int:
        """Bump the version of every group ``user_id`` belongs to; how many there were.

        For a member deleted or restored: the group's live members change, so
        its version (its ETag) must. Locks those groups, in id order, so that
        called before the user is locked it takes locks in the order member
        changes do (group, then user).
        """

    def add_members(
        self,
        group_id: uuid.UUID,
        user_ids: Sequence[uuid.UUID],
        expected_version: int | None,
        now: datetime,
    ) -> tuple[list[uuid.UUID], Group]:
        """Add the users to the group; returns those not members before, and the group after.

        ``InvalidInput`` (field ``$.user_ids``) naming the ids that are no live
        user, and nothing is added. When someone was added the group's
        ``version`` grows by one and ``updated_at`` is ``now``. Errors on the
        group as ``update_group``.
        """

    def remove_members(
        self,
        group_id: uuid.UUID,
        user_ids: Sequence[uuid.UUID],
        expected_version: int | None,
        now: datetime,
    ) -> tuple[list[uuid.UUID], Group]:
        """Remove the users from the group; returns those that were members, and the group after.

        Ids that are not members (or no users) are ignored. Version as ``add_members``.
        """

    def set_members(
        self,
        group_id: uuid.UUID,
        user_ids: Sequence[uuid.UUID],
        expected_version: int | None,
        now: datetime,
    ) -> tuple[list[uuid.UUID], list[uuid.UUID], Group]:
        """Make the members exactly ``user_ids``: returns who was added, removed, the group.

        A deleted member not among ``user_ids`` is removed too: a restore must
        not hand back roles the caller meant to take away.

        One change: the version grows by one if anyone was added or removed.
        Errors as ``add_members`` (an id that is no live user changes nothing).
        """

    def member_ids(self, group_id: uuid.UUID) -> list[uuid.UUID]:
        """Every member's id, deleted users' too, by id."""

    def list_members(self, group_id: uuid.UUID, after: uuid.UUID | None, limit: int) -> list[User]:
        """At most ``limit`` live members of the group, by user id, after ``after``."""

    def member_roles(self, user_id: uuid.UUID) -> frozenset[str]:
        """The roles of every group ``user_id`` belongs to (a deleted user's: none)."""

    def select_groups(
        self,
        expr: Expr,
        sort: str,
        offset: int,
        limit: int,
        after: Position | None = None,
    ) -> list[Group]:
        """At most ``limit`` groups matching ``expr`` (over ``GROUP_FIELD_KINDS``), from ``offset``.

        ``sort`` is ``created_at`` or ``display_name`` (by the folded name),
        ``-`` first for descending, then ``id``. With ``after`` (``created_at``
        order only), the groups past that place. ``member`` matches live members.
        """

    def count_selected_groups(self, expr: Expr) -> int:
        """How many groups match ``expr``."""


@runtime_checkable
class FilterableStorage(Protocol):
    """A storage that runs filters (``userplane.filtering``) over users (optional capability).

    Every ``SQLStorage`` does (``userplane.sql.filtering``). Values arrive as
    the service prepared them: an email's ``eq``/``ne`` value is its email key
    (a sealed store's: the pair of its blind-index values), its ``co``/``sw``/
    ``ew`` value and a name's are folded.
    """

    def select_users(
        self,
        expr: Expr,
        sort: Sort,
        offset: int,
        limit: int,
        include_deleted: bool = False,
        after: Position | None = None,
    ) -> list[User]:
        """At most ``limit`` users matching ``expr``, by ``sort`` then ``id``, from ``offset``.

        With ``after`` (its ``key`` resolved: the time, address key or folded
        name, as ``list_users`` takes it), only the users past that place.
        """

    def count_selected(self, expr: Expr, include_deleted: bool = False) -> int:
        """How many users match ``expr``."""


#: The kinds of value a copied column holds (``CopyColumn.kind``): the published schema's,
#: plus what plugins' tables use. ``"raw"``: a store that cannot tell passes values as read.
COPY_KINDS = frozenset(
    {"uuid", "text", "boolean", "integer", "float", "timestamp", "bytes", "array", "json", "txid"}
    | {"raw"}
)


@attrs.frozen
class CopyColumn:
    """One column of a table, as ``CopyableStorage.copy_tables`` describes it.

    ``kind`` is one of ``COPY_KINDS``: what a value means, whatever the
    database's type. A store that keeps several kinds in one type (SQLite's
    ``TEXT`` holds uuids, times and JSON arrays) reports the plainest
    (``"text"``); a copy between two stores takes the more precise kind of
    the two, and each store converts its values to and from that kind's
    Python type (``UUID``, ``str``, ``bool``, ``int``, ``float``, aware UTC
    ``datetime``, ``bytes``, ``list``, a JSON value, and for ``"txid"`` a
    database transaction id as text).
    """

    name: str
    kind: str
    nullable: bool = True
    #: Whether an ``INSERT`` that leaves the column out gives it a value (a default, a sequence).
    has_default: bool = False


@attrs.frozen
class CopyTable:
    """One table a whole-instance copy moves: its columns, primary key and what it references."""

    name: str
    columns: tuple[CopyColumn, ...]
    #: The primary key's columns, in key order; empty when the table has none.
    primary_key: tuple[str, ...] = ()
    #: The tables its foreign keys reference (copied before it).
    references: tuple[str, ...] = ()
    #: The database does not keep it across a crash (PostgreSQL's ``UNLOGGED``): not copied.
    ephemeral: bool = False
    #: The columns a sequence numbers (serial, identity, SQLite's ``AUTOINCREMENT``).
    sequenced: tuple[str, ...] = ()


class CopySession(Protocol):
    """One consistent view of a database for a copy: a read snapshot, or one write transaction."""

    def count(self, table: CopyTable) -> int:
        """How many rows ``table`` holds."""

    def rows(
        self, table: CopyTable, columns: Sequence[CopyColumn], batch: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        """``table``'s rows by primary key, in batches of at most ``batch`` (keyset pages).

        Each row holds the values of ``columns`` (the table's, with the kinds
        the copy agreed on), as those kinds' Python values.
        """

    def sequences(self, table: CopyTable) -> dict[str, int]:
        """The last value each of ``table``'s sequences handed out (to carry it over)."""

    def clear(self, table: CopyTable) -> None:
        """Delete every row of ``table`` (a write session only)."""

    def write(
        self, table: CopyTable, columns: Sequence[CopyColumn], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Insert ``rows`` (Python values of ``columns``' kinds) in one batch (a write session).

        A column of kind ``"txid"`` the rows do not hold gets the session's
        own transaction id, where the database has one.
        """

    def finish(self, table: CopyTable, sequences: Mapping[str, int]) -> None:
        """Advance ``table``'s sequences past the copied values and ``sequences`` (the source's)."""


@runtime_checkable
class CopyableStorage(Protocol):
    """A storage that can be copied from and to, whole (optional capability).

    ``userplane copy --to URL`` (``userplane.copying``) moves every table of
    an instance between two stores that both offer it, whatever their
    databases: the store describes its tables and reads or writes rows in
    batches, converting values by their kinds (``CopyColumn``).
    """

    def copy_tables(self) -> list[CopyTable]:
        """Every table of the database, migration bookkeeping (yoyo's) left out."""

    def copy_session(self, *, write: bool) -> contextlib.AbstractContextManager[CopySession]:
        """A session on a connection of its own, for the block.

        ``write=False``: one read snapshot (the rows of every table as of one
        moment). ``write=True``: one transaction, committed when the block
        ends, rolled back when it raises.
        """
