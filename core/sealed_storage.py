"""``SealedStorage``: the storage as the core's services see it, sealed when encryption is on.

The core seals before storage sees a value, so every storage plugin gets
field-level encryption without writing any cryptography: ``email`` and
``full_name`` reach it in sealed form (``userplane.sealing``), the email key
as its blind index, the name's sort key as ``""``. Reads are opened on the
way out. What cannot work on ciphertext (substring search, sorting by a
personal field) is refused with the setting named, never answered wrongly.

Without a keyring the layer passes everything through; in both modes it
checks once, before the first user operation, that the configured keys are
the ones the database was sealed with (``verify_keys``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from userplane.emails import normalize_email
from userplane.errors import (
    ConfigurationError,
    FieldError,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    Unavailable,
    Undecryptable,
)
from userplane.filtering import And, Compare, Expr, Not, Or
from userplane.idempotency import IdempotencyRecord, StoredResponse
from userplane.indexing import PLAIN, IndexPlan, Scheme, other
from userplane.keyring import Keyring, NamedKey
from userplane.pagination import Position, Sort
from userplane.sealing import SEALED_FIELDS, DataKey, Sealer, is_sealed, is_sealed_body
from userplane.storage import (
    BulkStorage,
    FilterableStorage,
    GroupStorage,
    IndexEntry,
    KeyRecord,
    MigrationState,
    Storage,
    UserRow,
)
from userplane.users import User, UserFilter

if TYPE_CHECKING:
    from userplane.groups import Group, GroupFilter
    from userplane.hooks import PluginMigrations

#: How many times an update of a plaintext user is sealed and tried before giving up.
_SEAL_ATTEMPTS = 5
#: How often a process checks its keyring against the database again, in seconds.
RECHECK_S = 30.0
KEYS_SETTING = "USERPLANE_ENCRYPTION_KEYS"
INDEX_KEYS_SETTING = "USERPLANE_ENCRYPTION_INDEX_KEYS"
_ENCRYPTED = f"while personal data is encrypted ({KEYS_SETTING} is set)"


def encrypted_query_errors(q: bool, sort_field: str) -> list[FieldError]:
    """What a list request asks that ciphertext cannot answer: substring search, personal order."""
    errors = []
    if q:
        errors.append(
            FieldError("$.q", f"substring search is unavailable {_ENCRYPTED}; filter by email=")
        )
    if sort_field != "created_at":
        errors.append(
            FieldError("$.sort", f"cannot sort by {sort_field} {_ENCRYPTED}; sort by created_at")
        )
    return errors


def fingerprint(key: NamedKey) -> str:
    """An HMAC of a constant under ``key``: proves which key it is, says nothing of it."""
    return hmac.new(key.secret, b"userplane key fingerprint", hashlib.sha256).hexdigest()


def verify_keys(
    storage: Storage, keyring: Keyring | None, now: datetime, *, write: bool = True
) -> IndexPlan | None:
    """``ConfigurationError`` unless ``keyring`` can serve the data in ``storage``; the index plan.

    Refused: a key whose name is recorded with another fingerprint (a wrong
    key); a recorded, unretired key-encryption key missing from the keyring;
    a blind-index key that is neither the recorded one nor its announced
    successor (``new,old``); no keyring over sealed data; a keyring over users
    stored in plaintext unless a backfill is asked for (``new,plain``). The
    active keys are recorded when first seen (by name and fingerprint).
    Returns how this process indexes emails (``None`` without a keyring).
    With ``write`` false nothing is written (a diagnosis): a key not yet
    recorded is taken as it would be.
    """
    records = {r.name: r for r in storage.key_records()}
    if keyring is None:
        if records:
            names = ", ".join(repr(n) for n in sorted(records))
            raise ConfigurationError(
                f"this database holds personal data sealed under {names}; "
                f"set the keyring it was sealed with ({KEYS_SETTING})"
            )
        return None
    for setting, purpose, keys in (
        (KEYS_SETTING, "kek", keyring.keys),
        (INDEX_KEYS_SETTING, "index", keyring.index_keys),
    ):
        for key in keys:
            record = records.get(key.name)
            if record is not None and (
                record.purpose != purpose
                or not hmac.compare_digest(record.fingerprint, fingerprint(key))
            ):
                raise ConfigurationError(
                    f"{key.name!r} is not the key of that name this database "
                    f"was sealed with ({setting})"
                )
    active = records.get(keyring.active.name)
    if active is not None and active.retired_at is not None:
        raise ConfigurationError(
            f"the active key {keyring.active.name!r} was retired; "
            f"make a new one with `userplane encryption new-key` ({KEYS_SETTING})"
        )
    live = [r for r in records.values() if r.retired_at is None]
    missing = sorted(r.name for r in live if r.purpose == "kek" and keyring.key(r.name) is None)
    if missing:
        raise ConfigurationError(
            f"data here is sealed under {', '.join(map(repr, missing))}, which the keyring "
            "lacks; add it back: a key leaves the keyring only after "
            f"`userplane encryption rotate` retired it ({KEYS_SETTING})"
        )
    if not write:
        storage = _ReadOnly(storage)
    added, plan = _index_plan(storage, keyring, records, now)
    # Only the keys that seal are recorded: an old key merely kept in the ring (or
    # one given by mistake) must not become one the database needs from now on.
    if not write:
        return plan
    if keyring.active.name not in records:
        storage.add_key_record(
            KeyRecord(keyring.active.name, "kek", fingerprint(keyring.active), now)
        )
        added = True
    if added:
        # Another instance may have recorded keys meanwhile (another key under this
        # name, another index key, another active key this ring lacks): check again,
        # against everything recorded now. Both of two clashing first starts refuse.
        return verify_keys(storage, keyring, now)
    return plan


class _ReadOnly:
    """A storage that records no key: for a diagnosis (``verify_keys(write=False)``)."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner

    def add_key_record(self, record: KeyRecord) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _plain(email_key: str) -> str:
    return email_key


def _index_plan(
    storage: Storage, keyring: Keyring, records: Mapping[str, KeyRecord], now: datetime
) -> tuple[bool, IndexPlan]:
    """Whether a record was added, and the index plan the records and the keyring make."""
    new = keyring.index_key
    previous = keyring.index_keys[1] if len(keyring.index_keys) > 1 else None
    live = [r for r in records.values() if r.purpose == "index" and r.retired_at is None]
    ready = next((r for r in live if r.ready_at is not None), None)
    plain = Scheme(PLAIN, _plain, "a")

    def scheme(key: NamedKey, home: str) -> Scheme:
        return Scheme(key.name, Sealer.index_under(key), home)

    def record(home: str, ready_at: datetime | None) -> None:
        storage.add_key_record(
            KeyRecord(new.name, "index", fingerprint(new), now, home=home, ready_at=ready_at)
        )

    mine = records.get(new.name)
    readies = [r for r in live if r.ready_at is not None]
    if len(readies) > 1:
        names = {r.name for r in readies}
        if mine is not None and previous is not None and names == {new.name, previous.name}:
            # A re-index finished but its old key is not retired yet (the run was cut
            # short): the new one is in force; `rotate` retires the old one.
            return False, IndexPlan(scheme(new, mine.home or "a"))
        raise ConfigurationError(
            f"the blind-index keys {', '.join(sorted(map(repr, names)))} are both recorded "
            "in force (two first starts with different keys, or a re-index cut short): "
            f"give the newer one first and the other after it, and run "
            f"`userplane encryption rotate` ({INDEX_KEYS_SETTING})"
        )
    moving_to = next((r for r in live if r.ready_at is None), None)
    if moving_to is not None and moving_to.name != new.name:
        # A process keying by the old index alone would miss (and duplicate) the users
        # the re-index has moved already.
        since, command = (
            (f"{moving_to.name},{ready.name}", "rotate")
            if ready is not None
            else (f"{moving_to.name},plain", "backfill")
        )
        raise ConfigurationError(
            f"re-indexing to {moving_to.name!r} is under way: give {since} until "
            f"`userplane encryption {command}` has finished ({INDEX_KEYS_SETTING})"
        )
    if mine is not None and mine.retired_at is not None:
        raise ConfigurationError(
            f"the blind-index key {new.name!r} was retired; make a new one with "
            f"`userplane encryption new-key` ({INDEX_KEYS_SETTING})"
        )
    if mine is not None and mine.ready_at is not None:
        return False, IndexPlan(scheme(new, mine.home or "a"))
    if mine is not None:  # re-indexing to it: what it replaces must be given after it
        if ready is None:
            if not keyring.plain_before:
                raise ConfigurationError(
                    f"a backfill to {new.name!r} is under way: give {new.name},plain until "
                    f"`userplane encryption backfill` has finished ({INDEX_KEYS_SETTING})"
                )
            return False, IndexPlan(plain, scheme(new, mine.home or "b"))
        if previous is None or previous.name != ready.name:
            raise ConfigurationError(
                f"re-indexing from {ready.name!r} to {new.name!r} is under way: give "
                f"{new.name},{ready.name} until `userplane encryption rotate` has "
                f"finished ({INDEX_KEYS_SETTING})"
            )
        return False, IndexPlan(
            scheme(previous, ready.home or "a"), scheme(new, mine.home or other("a"))
        )
    # A blind-index key the database has not seen.
    if not live:
        if not storage.list_users(UserFilter(include_deleted=True), Sort(), None, 1):
            record("a", now)  # a new database: nothing to re-index
            return True, IndexPlan(scheme(new, "a"))
        if not keyring.plain_before:
            raise ConfigurationError(
                "this database holds users stored in plaintext: to seal them, give "
                f"{new.name},plain and run `userplane encryption backfill` ({INDEX_KEYS_SETTING})"
            )
        record("b", None)
        return True, IndexPlan(plain, scheme(new, "b"))
    under = ", ".join(repr(r.name) for r in live)
    if ready is None or previous is None or previous.name != ready.name or len(live) > 1:
        raise ConfigurationError(
            f"the blind index here is computed under {under}, not {new.name!r}: to move it, "
            f"give {new.name},{ready.name if ready else '…'} and run "
            f"`userplane encryption rotate` ({INDEX_KEYS_SETTING})"
        )
    home = other(ready.home or "a")
    record(home, None)
    return True, IndexPlan(scheme(previous, ready.home or "a"), scheme(new, home))


class SealedStorage:
    """A ``Storage`` over ``inner`` that seals personal fields under ``sealer``'s keys.

    With ``sealer`` ``None`` (encryption off) it only checks, once, that the
    database holds no sealed data.
    """

    def __init__(
        self, inner: Storage, sealer: Sealer | None, clock: Callable[[], datetime]
    ) -> None:
        self.inner = inner
        self.sealer = sealer
        self._clock = clock
        self._plan: IndexPlan | None = None
        self._verified_at: float | None = None
        self._lock = threading.Lock()

    def verify(self) -> None:
        """Check the keys against the database (``verify_keys``), again every ``RECHECK_S``.

        Again, because the database moves on while a process runs: a rotation
        retires the key it wraps with, a re-index finishes. A process whose
        keyring no longer fits then refuses (and its readiness says why)
        rather than write what the others cannot read or would duplicate.
        """
        checked = self._verified_at
        if checked is not None and time.monotonic() - checked < RECHECK_S:
            return
        with self._lock:
            checked = self._verified_at
            if checked is not None and time.monotonic() - checked < RECHECK_S:
                return
            ring = self.sealer.keyring if self.sealer else None
            try:
                self._plan = verify_keys(self.inner, ring, self._clock())
            except ConfigurationError:
                self._verified_at = None
                raise
            self._verified_at = time.monotonic()

    @property
    def plan(self) -> IndexPlan | None:
        """How emails are indexed (after ``verify``; ``None`` without a keyring)."""
        self.verify()
        return self._plan

    # -- what passes through -------------------------------------------------------

    @property
    def name(self) -> str:
        """The inner storage's name."""
        return self.inner.name

    @property
    def embedded(self) -> bool:
        """Whether the inner storage is embedded."""
        return self.inner.embedded

    @property
    def schema_version(self) -> int:
        """The inner storage's schema version."""
        return self.inner.schema_version

    def ping(self) -> None:
        """Ping the inner storage."""
        self.inner.ping()

    def close(self) -> None:
        """Close the inner storage."""
        self.inner.close()

    def migrate(self, plugins: Sequence[PluginMigrations] = ()) -> list[str]:
        """Migrate the inner storage."""
        return self.inner.migrate(plugins)

    def migration_status(
        self, plugins: Sequence[PluginMigrations] = ()
    ) -> Sequence[MigrationState]:
        """The inner storage's migrations."""
        return self.inner.migration_status(plugins)

    def claim_idempotency_key(
        self,
        key: str,
        fingerprint: str,
        now: datetime,
        expires_at: datetime,
        stale_before: datetime,
    ) -> bool:
        """Passed through: a claim holds no personal data (its fingerprint is keyed)."""
        self.verify()
        return self.inner.claim_idempotency_key(key, fingerprint, now, expires_at, stale_before)

    def release_idempotency_key(self, key: str) -> None:
        """Passed through."""
        self.inner.release_idempotency_key(key)

    def purge_idempotency_keys(self, now: datetime) -> int:
        """Passed through."""
        return self.inner.purge_idempotency_keys(now)

    def purge_users(self, deleted_before: datetime) -> int:
        """Passed through: removing the rows destroys the data keys (crypto-shredding)."""
        self.verify()
        return self.inner.purge_users(deleted_before)

    def purge_user(self, user_id: uuid.UUID) -> bool:
        """Passed through: removing the row destroys the user's data key."""
        self.verify()
        return self.inner.purge_user(user_id)

    def reseal_user(
        self,
        user_id: uuid.UUID,
        version: int,
        fields: Mapping[str, Any],
        email_key: str | None,
        next_key: str | None = None,
    ) -> bool:
        """Passed through: the caller (rotation) hands over stored forms."""
        return self.inner.reseal_user(user_id, version, fields, email_key, next_key)

    def count_users(self) -> int:
        """Passed through."""
        return self.inner.count_users()

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """The inner storage's transaction."""
        return self.inner.transaction()

    def purge_orphan_responses(self) -> int:
        """Passed through."""
        return self.inner.purge_orphan_responses()

    def deleted_user_ids(self, deleted_before: datetime, limit: int) -> list[uuid.UUID]:
        """Passed through: ids only."""
        return self.inner.deleted_user_ids(deleted_before, limit)

    # -- records of changes ------------------------------------------------------------

    def seal_record_values(
        self, user_id: uuid.UUID, values: Mapping[str, tuple[str | None, str | None]]
    ) -> dict[str, tuple[str | None, str | None]]:
        """Personal fields' (before, after) values in a record, sealed under the user's data key.

        Bound to the user and to records (``record.<field>``): a sealed value
        cannot be moved into a user row, nor between users. Erasing the user
        (its row, and so its data key) leaves them unreadable. One read of the
        user for every field.
        """
        assert self.sealer is not None
        key = self._record_key(user_id)
        if key is None:
            raise NotFound(f"no user with id {user_id}")
        seal = functools.partial(self.sealer.seal_value, user_id, key)
        return {
            field: (
                None if before is None else seal(f"record.{field}", before),
                None if after is None else seal(f"record.{field}", after),
            )
            for field, (before, after) in values.items()
        }

    def open_record_values(
        self, user_id: uuid.UUID, values: Mapping[str, tuple[str | None, str | None]]
    ) -> dict[str, tuple[str | None, str | None] | None]:
        """The clear values sealed by ``seal_record_values``: ``None`` for a field that fails.

        ``Undecryptable`` when the user's data key is gone (the user erased).
        """
        key = self._record_key(user_id)
        if self.sealer is None or key is None:
            raise Undecryptable(f"the data key of user {user_id} is gone")
        open_ = functools.partial(self.sealer.open_value, user_id, key)
        opened: dict[str, tuple[str | None, str | None] | None] = {}
        for field, (before, after) in values.items():
            try:
                opened[field] = (
                    None if before is None else open_(f"record.{field}", before),
                    None if after is None else open_(f"record.{field}", after),
                )
            except Undecryptable:
                opened[field] = None
        return opened

    def _record_key(self, user_id: uuid.UUID) -> DataKey | None:
        """The data key of ``user_id`` (deleted too), or ``None`` once the user is gone."""
        stored = self.inner.get_user(user_id, True)
        if self.sealer is None or stored is None:
            return None
        return self.sealer.data_key(user_id, stored.email)

    def index_entries(self, after: uuid.UUID | None, limit: int) -> list[IndexEntry]:
        """Passed through: stored forms, for a re-index."""
        return self.inner.index_entries(after, limit)

    def mark_key_ready(self, name: str, at: datetime) -> None:
        """Passed through."""
        self.inner.mark_key_ready(name, at)

    def key_records(self) -> list[KeyRecord]:
        """Passed through."""
        return self.inner.key_records()

    def add_key_record(self, record: KeyRecord) -> bool:
        """Passed through."""
        return self.inner.add_key_record(record)

    def retire_key_record(self, name: str, at: datetime) -> None:
        """Passed through."""
        self.inner.retire_key_record(name, at)

    # -- groups (``GroupStorage``, when the inner storage keeps them) -------------------
    # Groups hold nothing personal: they pass through, and only members, who are
    # users, are opened.

    @property
    def _groups(self) -> GroupStorage:
        inner = self.inner
        if not isinstance(inner, GroupStorage):
            raise ConfigurationError(
                f"the {inner.name!r} storage does not keep groups "
                "(it does not implement userplane.storage.GroupStorage)"
            )
        return inner

    def insert_group(self, group: Group, name_key: str) -> Group:
        """Insert through the inner storage."""
        return self._groups.insert_group(group, name_key)

    def get_group(self, group_id: uuid.UUID) -> Group | None:
        """Read through the inner storage."""
        return self._groups.get_group(group_id)

    def lock_group(self, group_id: uuid.UUID) -> Group | None:
        """Lock through the inner storage."""
        return self._groups.lock_group(group_id)

    def list_groups(self, flt: GroupFilter, after: Position | None, limit: int) -> list[Group]:
        """List through the inner storage."""
        return self._groups.list_groups(flt, after, limit)

    def update_group(
        self,
        group_id: uuid.UUID,
        fields: Mapping[str, Any],
        name_key: str | None,
        expected_version: int | None,
        now: datetime,
    ) -> Group:
        """Update through the inner storage."""
        return self._groups.update_group(group_id, fields, name_key, expected_version, now)

    def delete_group(self, group_id: uuid.UUID, expected_version: int | None) -> Group:
        """Delete through the inner storage."""
        return self._groups.delete_group(group_id, expected_version)

    def touch_groups_of(self, user_id: uuid.UUID, now: datetime) -> int:
        """Bump through the inner storage."""
        return self._groups.touch_groups_of(user_id, now)

    def add_members(
        self,
        group_id: uuid.UUID,
        user_ids: Sequence[uuid.UUID],
        expected_version: int | None,
        now: datetime,
    ) -> tuple[list[uuid.UUID], Group]:
        """Add through the inner storage."""
        return self._groups.add_members(group_id, user_ids, expected_version, now)

    def remove_members(
        self,
        group_id: uuid.UUID,
        user_ids: Sequence[uuid.UUID],
        expected_version: int | None,
        now: datetime,
    ) -> tuple[list[uuid.UUID], Group]:
        """Remove through the inner storage."""
        return self._groups.remove_members(group_id, user_ids, expected_version, now)

    def set_members(
        self,
        group_id: uuid.UUID,
        user_ids: Sequence[uuid.UUID],
        expected_version: int | None,
        now: datetime,
    ) -> tuple[list[uuid.UUID], list[uuid.UUID], Group]:
        """Set through the inner storage."""
        return self._groups.set_members(group_id, user_ids, expected_version, now)

    def select_groups(
        self,
        expr: Expr,
        sort: str,
        offset: int,
        limit: int,
        after: Position | None = None,
    ) -> list[Group]:
        """Select through the inner storage: groups hold nothing sealed."""
        return self._groups.select_groups(expr, sort, offset, limit, after)

    def count_selected_groups(self, expr: Expr) -> int:
        """Count through the inner storage."""
        return self._groups.count_selected_groups(expr)

    def member_ids(self, group_id: uuid.UUID) -> list[uuid.UUID]:
        """Member ids through the inner storage."""
        return self._groups.member_ids(group_id)

    def list_members(self, group_id: uuid.UUID, after: uuid.UUID | None, limit: int) -> list[User]:
        """A page of members, opened."""
        self.verify()
        return [self._opened(u) for u in self._groups.list_members(group_id, after, limit)]

    def member_roles(self, user_id: uuid.UUID) -> frozenset[str]:
        """Roles through the inner storage."""
        return self._groups.member_roles(user_id)

    # -- filters (``FilterableStorage``, when the inner storage runs them) ---------------

    def _filterable(self) -> FilterableStorage:
        inner = self.inner
        if not isinstance(inner, FilterableStorage):
            raise ConfigurationError(
                f"the {inner.name!r} storage cannot filter users "
                "(it does not implement userplane.storage.FilterableStorage)"
            )
        return inner

    def _sealed_filter(self, expr: Expr) -> Expr:
        """``expr`` as the inner storage runs it: an email by its blind-index values.

        A sealed address or name has no text to search or compare but equality
        of the address: anything else is refused, never run on ciphertext.
        """
        self.verify()
        plan = self._plan
        if plan is None:
            return expr

        def rewrite(node: Expr) -> Expr:
            if isinstance(node, And | Or):
                return type(node)(tuple(rewrite(p) for p in node.parts))
            if isinstance(node, Not):
                return Not(rewrite(node.part))
            # A sealed name's presence shows (NULL stays NULL); its text does not.
            searching = isinstance(node, Compare) and (
                node.field == "full_name" or (node.field == "email" and node.op not in ("eq", "ne"))
            )
            if searching:
                raise InvalidInput.for_field(
                    "$.filter",
                    f"personal data is encrypted: {node.field!r} can only be compared "
                    "whole (eq, ne), and only the email",
                )
            if isinstance(node, Compare) and node.field == "email":
                return Compare("email", node.op, plan.values(str(node.value)))
            return node

        return rewrite(expr)

    def select_users(
        self,
        expr: Expr,
        sort: Sort,
        offset: int,
        limit: int,
        include_deleted: bool = False,
        after: Position | None = None,
    ) -> list[User]:
        """Selected by the inner storage, opened; personal orders refused when sealed."""
        sealed = self._sealed_filter(expr)
        if self._plan is not None:
            errors = encrypted_query_errors(False, sort.field)
            if errors:
                raise InvalidInput.from_errors(errors)
        rows = self._filterable().select_users(sealed, sort, offset, limit, include_deleted, after)
        return [self._opened(u) for u in rows]

    def count_selected(self, expr: Expr, include_deleted: bool = False) -> int:
        """Counted by the inner storage."""
        return self._filterable().count_selected(self._sealed_filter(expr), include_deleted)

    # -- users -----------------------------------------------------------------------

    def _open(self, stored: User | None) -> User | None:
        return None if stored is None else self._opened(stored)

    def _opened(self, stored: User) -> User:
        if self.sealer is None:
            if is_sealed(stored.email):
                # Sealed rows without the records of their keys (a table restored alone):
                # never ciphertext shown as an address.
                raise Undecryptable(
                    f"the stored email of user {stored.id} is sealed, and no keyring is "
                    f"configured ({KEYS_SETTING})"
                )
            return stored
        if not is_sealed(stored.email) and self._backfilling():
            return stored  # not sealed yet: a backfill is under way
        return self.sealer.open_user(stored)

    def _backfilling(self) -> bool:
        """Whether plain users may be met: a backfill is under way, or asked for again."""
        plan = self._plan
        ring = self.sealer.keyring if self.sealer else None
        return plan is not None and (plan.current.name == PLAIN or bool(ring and ring.plain_before))

    def _keys(self, email_key: str) -> tuple[str, str | None]:
        assert self._plan is not None
        return self._plan.values(email_key)

    def insert_user(
        self,
        user: User,
        email_key: str,
        *,
        name_key: str | None = None,
        next_key: str | None = None,
    ) -> User:
        """Insert ``user`` sealed under a new data key, keyed by its blind index."""
        self.verify()
        if self.sealer is None:
            return self.inner.insert_user(user, email_key, name_key=name_key, next_key=next_key)
        key = self.sealer.new_data_key(user.id)
        sealed = self.sealer.seal_user(user, key)
        a, b = self._keys(email_key)
        stored = self.inner.insert_user(sealed, a, name_key="", next_key=b)
        return attrs.evolve(stored, email=user.email, full_name=user.full_name)

    def users_by_email_keys(self, email_keys: Sequence[str]) -> dict[str, User]:
        """``BulkStorage.users_by_email_keys``, opened; by the blind indexes when sealed.

        Over a storage without ``BulkStorage``, one ``get_user_by_email`` per
        key: the same answer, a round trip each.
        """
        self.verify()
        plan = self._plan
        keys = list(dict.fromkeys(email_keys))
        # What to ask storage for each key: itself, or its two blind-index values.
        asked = {k: plan.values(k) if plan is not None else (k, None) for k in keys}
        if not isinstance(self.inner, BulkStorage):
            found = {}
            for key, (a, b) in asked.items():
                user = self.inner.get_user_by_email(a, True, next_key=b)
                if user is not None:
                    found[key] = self._opened(user)
            return found
        values = [v for pair in asked.values() for v in pair if v is not None]
        stored = self.inner.users_by_email_keys(values)
        out: dict[str, User] = {}
        for key, (a, b) in asked.items():
            user = stored.get(a) or (stored.get(b) if b is not None else None)
            if user is not None:
                out[key] = self._opened(user)
        return out

    def insert_users(self, rows: Sequence[UserRow]) -> None:
        """``BulkStorage.insert_users``, each user sealed under a data key of its own.

        Over a storage without ``BulkStorage``, one ``insert_user`` per row
        (inside the caller's transaction, so still all or nothing).
        """
        self.verify()
        if self.sealer is not None:
            sealer = self.sealer
            sealed = []
            for row in rows:
                a, b = self._keys(row.email_key)
                user = sealer.seal_user(row.user, sealer.new_data_key(row.user.id))
                sealed.append(UserRow(user, a, name_key="", next_key=b))
            rows = sealed
        if isinstance(self.inner, BulkStorage):
            self.inner.insert_users(rows)
            return
        for row in rows:
            self.inner.insert_user(
                row.user, row.email_key, name_key=row.name_key, next_key=row.next_key
            )

    def get_user(self, user_id: uuid.UUID, include_deleted: bool = False) -> User | None:
        """The user, opened."""
        self.verify()
        return self._open(self.inner.get_user(user_id, include_deleted))

    def get_user_by_email(
        self, email_key: str, include_deleted: bool = False, *, next_key: str | None = None
    ) -> User | None:
        """The user, found by the blind index of ``email_key`` (both columns while re-indexing)."""
        self.verify()
        if self._plan is None:
            return self._open(
                self.inner.get_user_by_email(email_key, include_deleted, next_key=next_key)
            )
        a, b = self._plan.values(email_key)
        return self._open(self.inner.get_user_by_email(a, include_deleted, next_key=b))

    def list_users(
        self, flt: UserFilter, sort: Sort, after: Position | None, limit: int
    ) -> list[User]:
        """A page, opened; substring search and personal orders refused when sealed."""
        self.verify()
        if self._plan is None:
            return [self._opened(u) for u in self.inner.list_users(flt, sort, after, limit)]
        errors = encrypted_query_errors(bool(flt.q), sort.field)
        if errors:
            raise InvalidInput.from_errors(errors)
        if flt.email is not None:
            a, b = self._plan.values(flt.email)
            flt = attrs.evolve(flt, email=a, email_next=b)
        return [self._opened(u) for u in self.inner.list_users(flt, sort, after, limit)]

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
        """Seal the personal fields under the user's data key, then update."""
        self.verify()
        if self.sealer is None:
            return self.inner.update_user(
                user_id,
                fields,
                email_key,
                expected_version,
                now,
                name_key=name_key,
                next_key=next_key,
            )
        for _ in range(_SEAL_ATTEMPTS):
            sealed, key_of_email, version, ours = self._sealed_update(
                user_id, fields, email_key, expected_version
            )
            a, b = (None, None) if key_of_email is None else self._keys(key_of_email)
            try:
                stored = self.inner.update_user(
                    user_id, sealed, a, version, now, name_key="", next_key=b
                )
            except PreconditionFailed:
                if not ours:
                    raise
                continue  # written meanwhile: read it again and seal again
            return self._opened(stored)
        raise Unavailable("the user kept changing while being sealed; retry shortly")

    def _sealed_update(
        self,
        user_id: uuid.UUID,
        fields: Mapping[str, Any],
        email_key: str | None,
        expected_version: int | None,
    ) -> tuple[Mapping[str, Any], str | None, int | None, bool]:
        """The fields to write, sealed; the email key; the version to write at; whether ours.

        A user still in plaintext (a backfill under way) is sealed whole, under
        a new data key, at the version it was read at: a concurrent write (or
        the backfill's own sealing) must not leave its two fields under two
        different keys, nor have its name overwritten with the one read here.
        """
        assert self.sealer is not None
        if not any(isinstance(fields.get(f), str) for f in SEALED_FIELDS):
            return fields, email_key, expected_version, False
        current = self.inner.get_user(user_id, False)
        if current is None:
            raise NotFound(f"no user with id {user_id}")
        if is_sealed(current.email):
            key = self.sealer.data_key(user_id, current.email)
            if "email" in fields:
                # The email carries the data key: wrapped by the active key, never by
                # the one the row held when read (a rotation may be retiring it now).
                key = self.sealer.rewrap(user_id, key)
            sealed = self.sealer.seal_fields(user_id, key, fields)
            rewrapped = None if "email" in fields else self.sealer.rewrapped(user_id, current.email)
            if rewrapped is not None:
                # Its data key is still wrapped by an older key: the write moves it under
                # the active one (the same ciphertext), as a rotation would. Otherwise a
                # user written without pause would win every race with the rotation's
                # conditional reseal, and the rotation could never finish.
                clear = self.sealer.open_value(user_id, key, "email", current.email)
                sealed = {**sealed, "email": rewrapped}
                email_key = normalize_email(clear)
            return sealed, email_key, expected_version, False
        self._opened(current)  # refuses a plain row unless a backfill is under way
        key = self.sealer.new_data_key(user_id)
        whole = {"email": current.email, "full_name": current.full_name, **fields}
        if email_key is None:
            email_key = normalize_email(current.email)
        ours = expected_version is None
        version = current.version if ours else expected_version
        return self.sealer.seal_fields(user_id, key, whole), email_key, version, ours

    def delete_user(self, user_id: uuid.UUID, expected_version: int | None, now: datetime) -> User:
        """Soft-delete, opened."""
        self.verify()
        return self._opened(self.inner.delete_user(user_id, expected_version, now))

    def lock_user(self, user_id: uuid.UUID) -> User | None:
        """The user, locked (inside a transaction), opened."""
        self.verify()
        return self._open(self.inner.lock_user(user_id))

    def restore_user(self, user_id: uuid.UUID, now: datetime) -> User | None:
        """Restore, opened."""
        self.verify()
        return self._open(self.inner.restore_user(user_id, now))

    # -- stored responses ----------------------------------------------------------------

    def complete_idempotency_key(self, key: str, response: StoredResponse) -> None:
        """Store the response, its body sealed under the data key of the user it shows."""
        self.verify()
        if self.sealer is None or response.user_id is None:
            self.inner.complete_idempotency_key(key, response)
            return
        stored = self.inner.get_user(response.user_id, True)
        if stored is None:
            # Purged already: its response must not be kept; a retry runs again.
            self.inner.release_idempotency_key(key)
            return
        data_key = self.sealer.data_key(stored.id, stored.email)
        body = self.sealer.seal_body(stored.id, data_key, key, response.body)
        self.inner.complete_idempotency_key(key, attrs.evolve(response, body=body))

    def get_idempotency_record(self, key: str, now: datetime) -> IdempotencyRecord | None:
        """The record, its body opened under the data key of the user it shows."""
        self.verify()
        record = self.inner.get_idempotency_record(key, now)
        response = None if record is None else record.response
        if self.sealer is None or response is None or response.user_id is None:
            return record
        assert record is not None
        stored = self.inner.get_user(response.user_id, True)
        if stored is None:
            raise Undecryptable(
                f"the stored response about user {response.user_id} outlived the user's data key"
            )
        if not is_sealed_body(response.body):
            return record  # stored before encryption was on: as it was stored
        data_key = self.sealer.data_key(stored.id, stored.email)
        body = self.sealer.open_body(stored.id, data_key, key, response.body)
        return attrs.evolve(record, response=attrs.evolve(response, body=body))
