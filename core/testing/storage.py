"""The storage contract suite, its helpers, and hypothesis strategies.

A storage plugin's author proves their plugin with the very suite that the
built-in SQLite and PostgreSQL plugins pass::

    import pytest
    from userplane.testing import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self):
            store = MyStorage(...)      # an empty database
            store.migrate()
            yield store
            store.close()

The error-mapping tests take optional fixtures, each a store that cannot
work for one reason (``unreachable_storage``, ``unmigrated_storage``,
``refused_storage``); a subclass that does not provide one sees those tests
skipped, with the fixture's name in the reason (``pytest -ra`` lists them).
A ``userplane.sql.SQLStorage`` has its ``dialect.capabilities()`` recorded
(``record_property``, and printed), and the tests that need a capability are
skipped, naming it, on a store whose flags say it lacks it.

Requires pytest and hypothesis (``pip install 'userplane[testing]'``).
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import attrs
import pytest

from userplane.emails import normalize_email
from userplane.errors import Conflict, NotFound, PreconditionFailed, Unavailable
from userplane.idempotency import IdempotencyRecord, StoredResponse
from userplane.pagination import Position, Sort
from userplane.sql import SCHEMA, SQLStorage, insert_params
from userplane.storage import BulkStorage, KeyRecord, Storage, UserRow
from userplane.testing.filtering import FilterContract
from userplane.testing.groups import GroupStorageContract
from userplane.testing.users_external import ExternalIdContract
from userplane.text import fold
from userplane.users import MAX_FULL_NAME, User, UserFilter, sort_key

T = TypeVar("T")

#: The default order: oldest first.
CREATED = Sort()

_BASE_TIME = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def make_user(
    email: str = "ann@example.org",
    *,
    full_name: str | None = "Ann Example",
    is_active: bool = True,
    created_at: datetime | None = None,
    version: int = 1,
) -> User:
    """A ``User`` as the service would build it, for feeding a storage directly."""
    at = created_at or datetime.now(UTC)
    return User(
        id=uuid.uuid4(),
        email=email,
        full_name=full_name,
        is_active=is_active,
        created_at=at,
        updated_at=at,
        version=version,
    )


def insert(storage: Storage, user: User) -> User:
    """Insert ``user`` with its email normalised as the service would."""
    return storage.insert_user(user, normalize_email(user.email))


def max_length(table: str, column: str) -> int:
    """The longest value ``table.column`` must hold, from the published ``userplane.sql.SCHEMA``."""
    [spec] = [c for c in SCHEMA if c.table == table and c.name == column]
    assert spec.max_length is not None, f"{table}.{column} has no maximum length"
    return spec.max_length


def capabilities(storage: Storage) -> dict[str, object] | None:
    """The dialect's capability flags of a ``userplane.sql.SQLStorage``, else ``None``."""
    return storage.dialect.capabilities() if isinstance(storage, SQLStorage) else None


def _bulk(storage: Storage) -> BulkStorage:
    """``storage`` as a ``BulkStorage``, or the test is skipped saying so."""
    if not isinstance(storage, BulkStorage):
        pytest.skip("the store has no BulkStorage capability (imports use the fallback)")
    return storage


def run_concurrently(count: int, action: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``action(i)`` on ``count`` threads released at once; results or exceptions, in order."""
    barrier = threading.Barrier(count)
    results: list[T | BaseException] = [RuntimeError("did not run")] * count

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = action(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


class StorageContract(GroupStorageContract, ExternalIdContract, FilterContract):
    """The behaviour every ``Storage`` must have. Subclass it and provide a ``storage`` fixture.

    The fixture yields a migrated, empty storage and closes it afterwards.
    """

    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        raise NotImplementedError("provide a `storage` fixture yielding an empty, migrated store")

    # -- basics ---------------------------------------------------------------

    def test_satisfies_the_protocol(self, storage: Storage) -> None:
        assert isinstance(storage, Storage)
        assert storage.name
        assert isinstance(storage.embedded, bool)

    def test_ping_answers(self, storage: Storage) -> None:
        storage.ping()

    def test_migrate_again_applies_nothing(self, storage: Storage) -> None:
        assert storage.migrate() == []
        states = storage.migration_status()
        assert states
        assert all(s.applied for s in states)

    def test_holds_the_published_schema_version(self, storage: Storage) -> None:
        from userplane.sql import SCHEMA_VERSION

        assert storage.schema_version == SCHEMA_VERSION, (
            f"{type(storage).__name__} holds schema {storage.schema_version}; "
            f"this userplane publishes {SCHEMA_VERSION} (docs/schema.md)"
        )

    def test_a_sql_store_has_every_named_query(self, storage: Storage) -> None:
        from userplane.sql import SQLStorage, check_queries

        if not isinstance(storage, SQLStorage):
            pytest.skip("not a userplane.sql.SQLStorage: no named queries to check")
        assert check_queries(storage.queries) == []

    def test_insert_then_get_round_trips_exactly(self, storage: Storage) -> None:
        user = make_user("Ann.Example@Example.ORG", created_at=_BASE_TIME)
        assert insert(storage, user) == user
        assert storage.get_user(user.id) == user
        got = storage.get_user(user.id)
        assert got is not None
        assert got.created_at.tzinfo is not None
        assert got.created_at.utcoffset() == timedelta(0)

    def test_keeps_unicode_and_null_name(self, storage: Storage) -> None:
        user = make_user("zoë@exämple.org", full_name=None)
        insert(storage, user)
        assert storage.get_user(user.id) == user
        named = make_user("jürgen@example.org", full_name="Jürgen Ōtsuka 😀")
        insert(storage, named)
        assert storage.get_user(named.id) == named

    def test_get_missing_is_none(self, storage: Storage) -> None:
        assert storage.get_user(uuid.uuid4()) is None
        assert storage.get_user_by_email("nobody@example.org") is None

    def test_get_by_email_uses_the_key(self, storage: Storage) -> None:
        user = insert(storage, make_user("Ann@Example.org"))
        assert storage.get_user_by_email(normalize_email("ANN@example.ORG")) == user

    # -- uniqueness -----------------------------------------------------------

    def test_same_email_key_conflicts(self, storage: Storage) -> None:
        insert(storage, make_user("ann@example.org"))
        with pytest.raises(Conflict):
            insert(storage, make_user("ANN@EXAMPLE.ORG"))

    def test_concurrent_creates_of_one_email_let_exactly_one_win(self, storage: Storage) -> None:
        spellings = ["bob@example.org", "BOB@example.org", "Bob@Example.org", "bOb@EXAMPLE.org"]
        results = run_concurrently(8, lambda i: insert(storage, make_user(spellings[i % 4])))
        wins = [r for r in results if isinstance(r, User)]
        assert len(wins) == 1, results
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, User)), results
        assert storage.get_user_by_email("bob@example.org") == wins[0]

    # -- listing --------------------------------------------------------------

    def _seed(self, storage: Storage, count: int) -> list[User]:
        users = [
            make_user(
                f"user{i}@example.org",
                full_name=f"User {i}",
                is_active=i % 3 != 0,
                created_at=_BASE_TIME + timedelta(microseconds=i // 2),  # ties on purpose
            )
            for i in range(count)
        ]
        for u in users:
            insert(storage, u)
        return sorted(users, key=lambda u: (u.created_at, u.id))

    def test_list_orders_by_created_at_then_id(self, storage: Storage) -> None:
        users = self._seed(storage, 9)
        assert storage.list_users(UserFilter(), CREATED, None, 100) == users

    def test_keyset_pages_cover_everything_once(self, storage: Storage) -> None:
        users = self._seed(storage, 11)
        seen: list[User] = []
        after: Position | None = None
        while True:
            page = storage.list_users(UserFilter(), CREATED, after, 3)
            seen += page
            if len(page) < 3:
                break
            after = Position(page[-1].created_at, page[-1].id)
        assert seen == users

    def test_inserts_while_paging_never_repeat_or_skip_existing(self, storage: Storage) -> None:
        users = self._seed(storage, 6)
        first = storage.list_users(UserFilter(), CREATED, None, 3)
        # Someone inserts, before and after the cursor, between two page reads.
        insert(storage, make_user("early@example.org", created_at=_BASE_TIME - timedelta(days=1)))
        insert(storage, make_user("late@example.org", created_at=_BASE_TIME + timedelta(days=1)))
        after = Position(first[-1].created_at, first[-1].id)
        rest = storage.list_users(UserFilter(), CREATED, after, 100)
        existing = [u for u in first + rest if u in users]
        assert existing == users

    def test_filters(self, storage: Storage) -> None:
        users = self._seed(storage, 9)
        active = storage.list_users(UserFilter(is_active=True), CREATED, None, 100)
        assert active == [u for u in users if u.is_active]
        inactive = storage.list_users(UserFilter(is_active=False), CREATED, None, 100)
        assert inactive == [u for u in users if not u.is_active]
        by_email = storage.list_users(UserFilter(email="user4@example.org"), CREATED, None, 100)
        assert [u.email for u in by_email] == ["user4@example.org"]
        by_q = storage.list_users(UserFilter(q="user 1"), CREATED, None, 100)
        assert [u.full_name for u in by_q] == ["User 1"]
        by_q_email = storage.list_users(UserFilter(q="user7@"), CREATED, None, 100)
        assert [u.email for u in by_q_email] == ["user7@example.org"]
        both = storage.list_users(UserFilter(is_active=False, q="user"), CREATED, None, 100)
        assert both == inactive

    def test_q_is_literal_and_case_insensitive(self, storage: Storage) -> None:
        insert(storage, make_user("percent@example.org", full_name="100% Sure"))
        insert(storage, make_user("under@example.org", full_name="snake_case Ünïcode"))
        insert(storage, make_user("plain@example.org", full_name="Plain"))
        assert [u.email for u in storage.list_users(UserFilter(q="%"), CREATED, None, 10)] == [
            "percent@example.org"
        ]
        assert [u.email for u in storage.list_users(UserFilter(q="_"), CREATED, None, 10)] == [
            "under@example.org"
        ]
        found = storage.list_users(UserFilter(q="ünïcode"), CREATED, None, 10)
        assert [u.email for u in found] == ["under@example.org"]

    # -- updates --------------------------------------------------------------

    def test_update_sets_fields_and_bumps_version(self, storage: Storage) -> None:
        user = insert(storage, make_user(created_at=_BASE_TIME))
        later = _BASE_TIME + timedelta(hours=1)
        updated = storage.update_user(
            user.id, {"full_name": None, "is_active": False}, None, 1, later
        )
        assert updated.full_name is None
        assert updated.is_active is False
        assert updated.email == user.email
        assert updated.version == 2
        assert updated.updated_at == later
        assert updated.created_at == user.created_at
        assert storage.get_user(user.id) == updated

    def test_update_email_moves_the_key(self, storage: Storage) -> None:
        user = insert(storage, make_user("old@example.org"))
        updated = storage.update_user(
            user.id, {"email": "New@Example.org"}, "new@example.org", None, datetime.now(UTC)
        )
        assert updated.email == "New@Example.org"
        assert storage.get_user_by_email("new@example.org") == updated
        assert storage.get_user_by_email("old@example.org") is None
        # The old address is free again.
        insert(storage, make_user("old@example.org"))

    def test_update_to_a_taken_email_conflicts(self, storage: Storage) -> None:
        insert(storage, make_user("taken@example.org"))
        user = insert(storage, make_user("free@example.org"))
        with pytest.raises(Conflict):
            storage.update_user(
                user.id, {"email": "TAKEN@example.org"}, "taken@example.org", None, _BASE_TIME
            )
        assert storage.get_user(user.id) == user

    def test_update_with_a_stale_version_fails_and_changes_nothing(self, storage: Storage) -> None:
        user = insert(storage, make_user())
        storage.update_user(user.id, {"full_name": "First"}, None, 1, datetime.now(UTC))
        with pytest.raises(PreconditionFailed):
            storage.update_user(user.id, {"full_name": "Second"}, None, 1, datetime.now(UTC))
        current = storage.get_user(user.id)
        assert current is not None
        assert current.full_name == "First"
        assert current.version == 2

    def test_update_missing_is_not_found(self, storage: Storage) -> None:
        with pytest.raises(NotFound):
            storage.update_user(uuid.uuid4(), {"full_name": "X"}, None, None, _BASE_TIME)
        with pytest.raises(NotFound):
            storage.update_user(uuid.uuid4(), {"full_name": "X"}, None, 1, _BASE_TIME)

    def test_concurrent_conditional_updates_let_exactly_one_win(self, storage: Storage) -> None:
        user = insert(storage, make_user())

        def write(i: int) -> User:
            return storage.update_user(user.id, {"full_name": f"n{i}"}, None, 1, datetime.now(UTC))

        results = run_concurrently(8, write)
        wins = [r for r in results if isinstance(r, User)]
        assert len(wins) == 1, results
        losses = [r for r in results if not isinstance(r, User)]
        assert all(isinstance(r, PreconditionFailed) for r in losses), results
        assert storage.get_user(user.id) == wins[0]

    def test_unconditional_concurrent_updates_are_all_counted(self, storage: Storage) -> None:
        user = insert(storage, make_user())

        def write(i: int) -> User:
            return storage.update_user(
                user.id, {"full_name": f"n{i}"}, None, None, datetime.now(UTC)
            )

        results = run_concurrently(8, write)
        assert all(isinstance(r, User) for r in results), results
        final = storage.get_user(user.id)
        assert final is not None
        assert final.version == 9
        assert sorted(r.version for r in results if isinstance(r, User)) == list(range(2, 10))

    # -- deletes --------------------------------------------------------------

    def test_delete_is_soft_and_keeps_the_email_reserved(self, storage: Storage) -> None:
        user = insert(storage, make_user("gone@example.org", created_at=_BASE_TIME))
        later = _BASE_TIME + timedelta(hours=1)
        deleted = storage.delete_user(user.id, None, later)
        assert deleted == attrs.evolve(user, deleted_at=later, updated_at=later, version=2)
        assert storage.get_user(user.id) is None
        assert storage.get_user_by_email("gone@example.org") is None
        assert storage.get_user(user.id, include_deleted=True) == deleted
        assert storage.get_user_by_email("gone@example.org", include_deleted=True) == deleted
        assert storage.list_users(UserFilter(), CREATED, None, 10) == []
        assert storage.list_users(UserFilter(include_deleted=True), CREATED, None, 10) == [deleted]
        with pytest.raises(Conflict):
            insert(storage, make_user("GONE@example.org"))
        with pytest.raises(NotFound):
            storage.delete_user(user.id, None, later)
        with pytest.raises(NotFound):
            storage.update_user(user.id, {"full_name": "x"}, None, None, later)

    def test_delete_with_a_stale_version_fails(self, storage: Storage) -> None:
        user = insert(storage, make_user())
        now = datetime.now(UTC)
        storage.update_user(user.id, {"is_active": False}, None, None, now)
        with pytest.raises(PreconditionFailed):
            storage.delete_user(user.id, 1, now)
        assert storage.get_user(user.id) is not None
        assert storage.delete_user(user.id, 2, now).version == 3

    def test_restore_brings_a_deleted_user_back(self, storage: Storage) -> None:
        user = insert(storage, make_user(created_at=_BASE_TIME))
        storage.delete_user(user.id, None, _BASE_TIME + timedelta(hours=1))
        later = _BASE_TIME + timedelta(hours=2)
        restored = storage.restore_user(user.id, later)
        assert restored == attrs.evolve(user, updated_at=later, version=3)
        assert storage.get_user(user.id) == restored
        assert storage.restore_user(user.id, later) is None  # live: nothing to restore
        assert storage.restore_user(uuid.uuid4(), later) is None

    def test_purge_removes_only_users_deleted_before_the_cut_off(self, storage: Storage) -> None:
        old = insert(storage, make_user("old@example.org"))
        recent = insert(storage, make_user("recent@example.org"))
        live = insert(storage, make_user("live@example.org"))
        storage.delete_user(old.id, None, _BASE_TIME)
        storage.delete_user(recent.id, None, _BASE_TIME + timedelta(days=10))
        assert storage.purge_users(_BASE_TIME + timedelta(days=1)) == 1
        assert storage.get_user(old.id, include_deleted=True) is None
        assert storage.get_user(recent.id, include_deleted=True) is not None
        assert storage.get_user(live.id) == live
        insert(storage, make_user("old@example.org"))  # purged: the email is free again
        assert storage.purge_users(_BASE_TIME + timedelta(days=1)) == 0

    def test_purge_removes_the_stored_responses_about_purged_users_only(
        self, storage: Storage
    ) -> None:
        gone = insert(storage, make_user("gone@example.org"))
        kept = insert(storage, make_user("kept@example.org"))
        t = _BASE_TIME
        later = t + timedelta(days=1)
        for key, about in (("gone", gone.id), ("kept", kept.id), ("nobody", None)):
            assert storage.claim_idempotency_key(key, "fp", t, t + timedelta(days=30), t)
            response = StoredResponse(201, (("Location", key),), key.encode(), about)
            storage.complete_idempotency_key(key, response)
            record = storage.get_idempotency_record(key, t)
            assert record is not None
            assert record.response == response  # user_id round trips
        storage.delete_user(gone.id, None, t)
        storage.delete_user(kept.id, None, later)
        assert storage.purge_users(later) == 1
        assert storage.get_idempotency_record("gone", t) is None
        assert storage.get_idempotency_record("kept", t) is not None
        assert storage.get_idempotency_record("nobody", t) is not None

    def test_purging_one_deleted_user_removes_it_and_its_responses_only(
        self, storage: Storage
    ) -> None:
        live = insert(storage, make_user("live@example.org"))
        gone = insert(storage, make_user("gone@example.org"))
        other = insert(storage, make_user("other@example.org"))
        for user in (gone, other):
            storage.delete_user(user.id, None, _BASE_TIME)
        t = _BASE_TIME
        assert storage.claim_idempotency_key("about-gone", "fp", t, t + timedelta(days=9), t)
        storage.complete_idempotency_key("about-gone", StoredResponse(201, (), b"{}", gone.id))
        assert not storage.purge_user(live.id)  # a live user stays
        assert storage.purge_user(gone.id)
        assert not storage.purge_user(gone.id)
        assert not storage.purge_user(uuid.uuid4())
        assert storage.get_user(gone.id, include_deleted=True) is None
        assert storage.get_idempotency_record("about-gone", t) is None
        assert storage.get_user(live.id) == live
        assert storage.get_user(other.id, include_deleted=True) is not None

    def test_count_users_counts_deleted_ones_too(self, storage: Storage) -> None:
        assert storage.count_users() == 0
        users = [insert(storage, make_user(f"c{i}@example.org")) for i in range(3)]
        storage.delete_user(users[0].id, None, _BASE_TIME)
        assert storage.count_users() == 3

    # -- resealing and encryption keys ----------------------------------------------

    def test_reseal_replaces_the_stored_form_and_keeps_version_and_time(
        self, storage: Storage
    ) -> None:
        user = insert(storage, make_user("seal@example.org"))
        fields = {"email": "upe1:other-form", "full_name": "upe1:other-name"}
        assert storage.reseal_user(user.id, 1, fields, "new-key")
        resealed = storage.get_user(user.id)
        assert resealed == attrs.evolve(user, email="upe1:other-form", full_name="upe1:other-name")
        assert storage.get_user_by_email("new-key") == resealed
        assert storage.get_user_by_email(normalize_email(user.email)) is None
        # Values it already holds: still a match (a row count of rows matched, not changed).
        assert storage.reseal_user(user.id, 1, fields, None)
        assert storage.get_user_by_email("new-key") == resealed  # no key given: kept

    def test_reseal_at_another_version_or_of_nobody_changes_nothing(self, storage: Storage) -> None:
        user = insert(storage, make_user("stale@example.org"))
        assert not storage.reseal_user(user.id, 2, {"email": "upe1:x"}, None)
        assert not storage.reseal_user(uuid.uuid4(), 1, {"email": "upe1:x"}, None)
        assert storage.get_user(user.id) == user

    def test_reseal_reaches_a_deleted_user(self, storage: Storage) -> None:
        user = insert(storage, make_user("deleted@example.org"))
        deleted = storage.delete_user(user.id, None, _BASE_TIME)
        assert storage.reseal_user(user.id, deleted.version, {"full_name": None}, None)
        assert storage.get_user(user.id, include_deleted=True) == attrs.evolve(
            deleted, full_name=None
        )

    def test_the_second_index_column_is_unique_written_and_searched(self, storage: Storage) -> None:
        ann = storage.insert_user(make_user("ann@example.org"), "a-ann", next_key="b-ann")
        bob = storage.insert_user(make_user("bob@example.org"), "a-bob")
        with pytest.raises(Conflict):
            storage.insert_user(make_user("cid@example.org"), "a-cid", next_key="b-ann")
        # email_normalized, or (with next_key) email_index_next: the service gives both
        # values of one address, so at most one user matches.
        assert storage.get_user_by_email("a-ann") == ann
        assert storage.get_user_by_email("nothing", next_key="b-ann") == ann
        assert storage.get_user_by_email("a-ann", next_key="b-ann") == ann
        assert storage.get_user_by_email("nothing") is None
        assert storage.get_user_by_email("a-bob", next_key="b-nobody") == bob
        both = UserFilter(email="nothing", email_next="b-ann")
        assert storage.list_users(both, CREATED, None, 10) == [ann]
        either = UserFilter(email="a-bob", email_next="b-ann")
        assert storage.list_users(either, CREATED, None, 10) == [ann, bob]
        # An email change sets both columns (None clears the second).
        moved = storage.update_user(
            ann.id, {"email": "ann2@example.org"}, "a-ann2", None, ann.updated_at, next_key=None
        )
        assert storage.get_user_by_email("nothing", next_key="b-ann") is None
        storage.update_user(
            bob.id, {"email": "bob2@example.org"}, "a-bob2", None, bob.updated_at, next_key="b-ann"
        )
        assert storage.get_user_by_email("x", next_key="b-ann") == storage.get_user(bob.id)
        # A reseal sets either column (None keeps it) and cannot take a taken value.
        assert storage.reseal_user(moved.id, moved.version, {}, None, "b-new")
        assert storage.get_user_by_email("x", next_key="b-new") == moved
        with pytest.raises(Conflict):
            storage.reseal_user(moved.id, moved.version, {}, "a-bob2", None)

    def test_index_entries_walk_every_user_by_id_with_both_index_values(
        self, storage: Storage
    ) -> None:
        users = [
            storage.insert_user(make_user(f"e{i}@example.org"), f"a{i}", next_key=f"b{i}")
            for i in range(5)
        ]
        storage.delete_user(users[0].id, None, _BASE_TIME)  # deleted ones too
        seen: list[Any] = []
        after = None
        while True:
            page = storage.index_entries(after, 2)
            seen += page
            if len(page) < 2:
                break
            after = page[-1].user.id
        assert [e.user.id for e in seen] == sorted(u.id for u in users)
        by_id = {e.user.id: e for e in seen}
        for i, user in enumerate(users):
            entry = by_id[user.id]
            assert (entry.email_key, entry.next_key) == (f"a{i}", f"b{i}")
            assert entry.user == storage.get_user(user.id, include_deleted=True)

    def test_an_index_key_record_keeps_its_column_and_readiness(self, storage: Storage) -> None:
        incoming = KeyRecord("i2", "index", "d" * 64, _BASE_TIME, home="b")
        assert storage.add_key_record(incoming)
        assert storage.key_records() == [incoming]
        storage.mark_key_ready("i2", _BASE_TIME + timedelta(hours=1))
        storage.mark_key_ready("i2", _BASE_TIME + timedelta(hours=2))  # set once
        assert storage.key_records() == [
            attrs.evolve(incoming, ready_at=_BASE_TIME + timedelta(hours=1))
        ]

    def test_key_records_are_added_once_and_retired(self, storage: Storage) -> None:
        assert storage.key_records() == []
        first = KeyRecord("k1", "kek", "a" * 64, _BASE_TIME)
        index = KeyRecord("i1", "index", "b" * 64, _BASE_TIME)
        assert storage.add_key_record(first)
        assert storage.add_key_record(index)
        # A name is recorded once: a second record of it (another fingerprint) is ignored.
        assert not storage.add_key_record(attrs.evolve(first, fingerprint="c" * 64))
        assert storage.key_records() == [index, first]
        storage.retire_key_record("k1", _BASE_TIME + timedelta(days=1))
        storage.retire_key_record("k1", _BASE_TIME + timedelta(days=2))  # retired once
        assert storage.key_records() == [
            index,
            attrs.evolve(first, retired_at=_BASE_TIME + timedelta(days=1)),
        ]

    # -- idempotency keys ------------------------------------------------------

    def test_an_idempotency_key_is_claimed_once_then_replayed(self, storage: Storage) -> None:
        t = _BASE_TIME
        hour = timedelta(hours=1)
        assert storage.claim_idempotency_key("k", "fp", t, t + hour, t - hour)
        assert not storage.claim_idempotency_key("k", "fp", t, t + hour, t - hour)
        assert storage.get_idempotency_record("k", t) == IdempotencyRecord("fp", None)
        response = StoredResponse(201, (("Location", "/x"), ("ETag", '"1"')), b'{"a":1}\x00')
        storage.complete_idempotency_key("k", response)
        assert storage.get_idempotency_record("k", t) == IdempotencyRecord("fp", response)
        # A completed key is not released, nor taken over, until it expires.
        storage.release_idempotency_key("k")
        later = t + timedelta(minutes=30)
        assert not storage.claim_idempotency_key("k", "other", later, later + hour, later)
        assert storage.get_idempotency_record("k", later) == IdempotencyRecord("fp", response)
        # Expired: gone from reads, claimable afresh, and purged.
        expired = t + 2 * hour
        assert storage.get_idempotency_record("k", expired) is None
        assert storage.purge_idempotency_keys(expired) == 1
        assert storage.claim_idempotency_key("k", "new", expired, expired + hour, expired)
        assert storage.get_idempotency_record("k", expired) == IdempotencyRecord("new", None)

    def test_an_abandoned_claim_is_taken_over_after_it_goes_stale(self, storage: Storage) -> None:
        t = _BASE_TIME
        hour = timedelta(hours=1)
        assert storage.claim_idempotency_key("k", "fp", t, t + hour, t - hour)
        soon = t + timedelta(seconds=30)
        assert not storage.claim_idempotency_key("k", "fp", soon, soon + hour, t - hour)
        assert storage.claim_idempotency_key("k", "fp", soon, soon + hour, soon)
        storage.release_idempotency_key("k")
        assert storage.get_idempotency_record("k", soon) is None

    def test_a_takeover_replaces_the_whole_claim(self, storage: Storage) -> None:
        # Every column of a takeover is decided on the row as it was: an upsert
        # whose assignments run left to right (MySQL's ON DUPLICATE KEY UPDATE)
        # would test the later ones against the columns it has just changed.
        t = _BASE_TIME
        hour = timedelta(hours=1)
        assert storage.claim_idempotency_key("abandoned", "old", t, t + hour, t - hour)
        soon = t + timedelta(seconds=30)
        assert storage.claim_idempotency_key("abandoned", "new", soon, soon + 2 * hour, soon)
        # The new expiry, not the old one; a fresh claim, not stale before `soon`.
        past_old_expiry = t + hour + timedelta(seconds=1)
        record = storage.get_idempotency_record("abandoned", past_old_expiry)
        assert record == IdempotencyRecord("new", None)
        assert not storage.claim_idempotency_key("abandoned", "x", soon, soon + hour, soon)
        # An expired, completed key: its response goes, and the claim is fresh.
        assert storage.claim_idempotency_key("done", "old", t, t + hour, t - hour)
        storage.complete_idempotency_key("done", StoredResponse(201, (("ETag", '"1"'),), b"{}"))
        expired = t + 2 * hour
        assert storage.claim_idempotency_key("done", "new", expired, expired + hour, t)
        assert storage.get_idempotency_record("done", expired) == IdempotencyRecord("new", None)
        assert not storage.claim_idempotency_key("done", "x", expired, expired + hour, expired)

    def test_concurrent_claims_of_one_key_let_exactly_one_win(self, storage: Storage) -> None:
        t = _BASE_TIME
        hour = timedelta(hours=1)
        results = run_concurrently(
            8, lambda i: storage.claim_idempotency_key("race", f"fp{i}", t, t + hour, t - hour)
        )
        assert sorted(results, key=str) == [False] * 7 + [True], results

    # -- sorting ----------------------------------------------------------------

    def _sorted(self, users: list[User], sort: Sort) -> list[User]:
        def key(u: User) -> tuple[Any, ...]:
            if sort.field == "created_at":
                return (u.created_at, u.id)
            if sort.field == "email":
                return (normalize_email(u.email),)
            return (fold(u.full_name or ""), u.id)

        return sorted(users, key=key, reverse=sort.descending)

    @pytest.mark.parametrize(
        "text", ["created_at", "-created_at", "email", "-email", "full_name", "-full_name"]
    )
    def test_every_sort_pages_through_everything_once_in_order(
        self, storage: Storage, text: str
    ) -> None:
        names = ["bob", None, "Ann", "ann", "Zoë", "zoe", None, "émile", "Bob", "carl", "ANN"]
        users = []
        for i, name in enumerate(names):
            email = f"{chr(ord('a') + (i * 7) % 11)}{i}@Example.org"
            users.append(
                insert(
                    storage,
                    make_user(
                        email,
                        full_name=name,
                        created_at=_BASE_TIME + timedelta(microseconds=i // 3),
                    ),
                )
            )
        sort = Sort.parse(text)
        expected = self._sorted(users, sort)
        seen: list[User] = []
        after: Position | None = None
        while True:
            page = storage.list_users(UserFilter(), sort, after, 3)
            seen += page
            if len(page) < 3:
                break
            last = page[-1]
            after = Position(sort_key(last, sort.field), last.id)
        assert seen == expected

    # -- exact keys: trailing spaces, letter case, code-point order -------------------

    def test_email_keys_are_exact_trailing_spaces_and_case_included(self, storage: Storage) -> None:
        # The storage compares the keys it is given, byte for byte: a collation
        # that pads with spaces (MySQL's PAD SPACE) or ignores case or accents
        # would merge rows the service keeps apart, or find the wrong one.
        keys = [
            "ann@example.org",
            "ann@example.org ",
            "ann@example.org  ",
            "Ann@example.org",
            "straße@example.org",
            "strasse@example.org",
            "zoë@example.org",
            "zoe@example.org",
        ]
        users = {key: storage.insert_user(make_user(key.strip()), key) for key in keys}
        for key, user in users.items():
            assert storage.get_user_by_email(key) == user, repr(key)
            listed = storage.list_users(UserFilter(email=key), CREATED, None, 10)
            assert listed == [user], repr(key)
        assert storage.get_user_by_email("ann@example.org   ") is None
        assert storage.get_user_by_email(" ann@example.org") is None
        assert storage.get_user_by_email("ANN@example.org") is None
        with pytest.raises(Conflict):
            storage.insert_user(make_user("ann@example.org"), "ann@example.org ")

    def test_idempotency_keys_are_exact(self, storage: Storage) -> None:
        t = _BASE_TIME
        hour = timedelta(hours=1)
        for key in ["k", "k ", "K", "straße", "strasse"]:
            assert storage.claim_idempotency_key(key, f"fp {key!r}", t, t + hour, t - hour)
        assert storage.get_idempotency_record("k ", t) == IdempotencyRecord("fp 'k '", None)
        assert storage.get_idempotency_record("k  ", t) is None
        assert not storage.claim_idempotency_key("k ", "again", t, t + hour, t - hour)

    @pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
    def test_sorting_by_email_key_follows_code_points(
        self, storage: Storage, descending: bool
    ) -> None:
        # Python's order of the keys: upper case before lower, "ß" and accents
        # after "z", U+E000 before an emoji (not UTF-16 order), a tab before a space.
        keys = [
            "b@example.org",
            "B@example.org",
            "a@example.org",
            "a@example.org ",
            "a@example.org\t",
            "a@example.org!",
            "é@example.org",
            "f@example.org",
            "ß@example.org",
            "ss@example.org",
            "st@example.org",
            "Z@example.org",
            "z@example.org",
            "ø@example.org",
            "\ue000@example.org",
            "\U0001f600@example.org",
        ]
        key_of = {}
        for key in keys:
            user = storage.insert_user(make_user(key.strip()), key)
            key_of[user.id] = key
        expected = sorted(key_of, key=key_of.__getitem__, reverse=descending)
        seen = self._pages(storage, Sort("email", descending), lambda u: key_of[u.id], 4)
        assert [key_of[u.id] for u in seen] == [key_of[i] for i in expected]

    @pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
    def test_sorting_by_name_follows_code_points_of_the_folded_name(
        self, storage: Storage, descending: bool
    ) -> None:
        # fold() lowers case and turns "ß" into "ss" ("Straße" ties "Strasse",
        # broken by id); what remains sorts by code point: "f" before "é", "z" before "ø".
        names = [
            "émile",
            "Emile",
            "f",
            "Zoë",
            "zoe",
            "z",
            "ø",
            "Straße",
            "Strasse",
            "Stb",
            "Ann ",
            "Ann",
            "ANN",
            None,
            "\ue000",
            "\U0001f600",
        ]
        users = [
            insert(storage, make_user(f"n{i}@example.org", full_name=name))
            for i, name in enumerate(names)
        ]
        expected = self._sorted(users, Sort("full_name", descending))
        seen = self._pages(
            storage, Sort("full_name", descending), lambda u: fold(u.full_name or "")
        )
        assert [u.full_name for u in seen] == [u.full_name for u in expected]
        assert seen == expected

    def _pages(
        self, storage: Storage, sort: Sort, key: Callable[[User], Any], size: int = 3
    ) -> list[User]:
        """Every user, following cursors built with ``key``, ``size`` at a time."""
        seen: list[User] = []
        after: Position | None = None
        while True:
            page = storage.list_users(UserFilter(), sort, after, size)
            seen += page
            if len(page) < size:
                return seen
            after = Position(key(page[-1]), page[-1].id)

    # -- the published schema's longest values ---------------------------------------

    def test_the_longest_email_and_email_key_round_trip(self, storage: Storage) -> None:
        # 4-byte characters: a store counting bytes, or with a 3-byte "utf8", fails here.
        domain = "@example.org"
        email = ("Ü\U0001f600" * 400)[: max_length("users", "email") - len(domain)] + domain
        key = ("ü\U0001f600" * 400)[: max_length("users", "email_normalized") - len(domain)]
        key += domain
        user = storage.insert_user(make_user(email), key)
        assert user.email == email
        assert storage.get_user(user.id) == user
        assert storage.get_user_by_email(key) == user
        assert storage.get_user_by_email(key[:-1]) is None
        other = storage.insert_user(make_user("a@example.org"), "a@example.org")
        # The whole key is the cursor: the page after it is exactly the next user.
        page = storage.list_users(UserFilter(), Sort("email", True), Position(key, user.id), 10)
        assert page == [other]

    def test_the_longest_names_round_trip_and_their_folded_form_is_searched_whole(
        self, storage: Storage
    ) -> None:
        # The longest name a client may give; its folded form is the longest folded one.
        longest = MAX_FULL_NAME
        names = [
            "\U0001f600" * longest,  # 4-byte characters
            "\U00010400" * longest,  # 4-byte, and folds to another 4-byte character
            "ß" * longest,  # folds to "ss": the longest folded name
        ]
        assert len(fold(names[2])) == max_length("users", "full_name_folded")
        users = [
            insert(storage, make_user(f"n{i}@example.org", full_name=name))
            for i, name in enumerate(names)
        ]
        for user in users:
            assert storage.get_user(user.id) == user
            found = storage.list_users(UserFilter(q=fold(user.full_name or "")), CREATED, None, 10)
            assert found == [user]
        assert storage.list_users(UserFilter(q=fold(names[2]) + "s"), CREATED, None, 10) == []
        # And each folded name, whole, is a cursor.
        sort = Sort("full_name")
        seen = self._pages(storage, sort, lambda u: fold(u.full_name or ""), 1)
        assert seen == self._sorted(users, sort)

    def test_the_longest_sealed_values_round_trip_with_an_empty_name_key(
        self, storage: Storage
    ) -> None:
        # With encryption on, the core stores sealed text (ASCII) up to the schema's
        # lengths, the blind index as the email key and "" as the name's sort key.
        email = "upe1:" + "e" * (max_length("users", "email") - len("upe1:"))
        name = "upe1:" + "n" * (max_length("users", "full_name") - len("upe1:"))
        blind = "f" * 64
        user = storage.insert_user(make_user(email, full_name=name), blind, name_key="")
        assert (user.email, user.full_name) == (email, name)
        assert storage.get_user_by_email(blind) == user
        changed = storage.update_user(
            user.id, {"full_name": name[:-1]}, None, None, user.updated_at, name_key=""
        )
        assert changed.full_name == name[:-1]
        assert storage.list_users(UserFilter(q="n"), CREATED, None, 10) == []

    def test_the_longest_idempotency_key_and_response_round_trip(self, storage: Storage) -> None:
        t = _BASE_TIME
        hour = timedelta(hours=1)
        key = ("scope \U0001f600 ü " * 200)[: max_length("idempotency_keys", "key")]
        fingerprint = "f" * max_length("idempotency_keys", "fingerprint")
        # Headers as the SQL kit stores them (JSON), at the longest; every byte value in the body.
        room = max_length("idempotency_keys", "headers") - len(json.dumps([["X-Big", ""]]))
        headers = (("X-Big", "v" * room),)
        body = bytes(range(256)) * (max_length("idempotency_keys", "body") // 256)
        assert len(body) == max_length("idempotency_keys", "body")
        response = StoredResponse(200, headers, body)
        assert storage.claim_idempotency_key(key, fingerprint, t, t + hour, t - hour)
        assert storage.get_idempotency_record(key, t) == IdempotencyRecord(fingerprint, None)
        storage.complete_idempotency_key(key, response)
        assert storage.get_idempotency_record(key, t) == IdempotencyRecord(fingerprint, response)
        assert storage.get_idempotency_record(key[:-1], t) is None
        assert storage.claim_idempotency_key(key[:-1], "other", t, t + hour, t - hour)

    # -- error mapping: a database that cannot serve ----------------------------------

    @pytest.fixture
    def unreachable_storage(self) -> Iterator[Storage]:
        """A store whose database cannot be reached: no server there, or no file where it was."""
        pytest.skip(
            "error mapping of an unreachable database: provide the unreachable_storage fixture"
        )

    @pytest.fixture
    def unmigrated_storage(self) -> Iterator[Storage]:
        """A store on an empty database that was never migrated."""
        pytest.skip(
            "error mapping of an unmigrated database: provide the unmigrated_storage fixture"
        )

    @pytest.fixture
    def refused_storage(self) -> Iterator[Storage]:
        """A store whose database is up but refuses its login (a wrong password, a locked role)."""
        pytest.skip("error mapping of a refused login: provide the refused_storage fixture")

    def _unavailable_everywhere(self, storage: Storage, saying: str = "") -> None:
        """``ping``, a read and a write each raise ``Unavailable`` (whose detail has ``saying``)."""
        operations: dict[str, Callable[[], object]] = {
            "ping": storage.ping,
            "a read": lambda: storage.get_user_by_email("ann@example.org"),
            "a write": lambda: insert(storage, make_user()),
        }
        wrong = {}
        for name, operation in operations.items():
            try:
                operation()
            except Unavailable as exc:
                if saying not in exc.detail:
                    wrong[name] = f"Unavailable({exc.detail!r}) does not say {saying!r}"
            except Exception as exc:  # a driver's, or a bug: either way not the contract
                wrong[name] = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
            else:
                wrong[name] = "no error"
        assert not wrong, f"expected Unavailable from each: {wrong}"

    def test_an_unreachable_database_is_unavailable(self, unreachable_storage: Storage) -> None:
        self._unavailable_everywhere(unreachable_storage)

    def test_an_unmigrated_database_is_unavailable_saying_to_migrate(
        self, unmigrated_storage: Storage
    ) -> None:
        self._unavailable_everywhere(unmigrated_storage, "userplane migrate")
        # As the message says: once migrated, it serves.
        unmigrated_storage.migrate()
        unmigrated_storage.ping()
        assert insert(unmigrated_storage, make_user()).version == 1

    def test_a_refused_login_is_unavailable(self, refused_storage: Storage) -> None:
        self._unavailable_everywhere(refused_storage)

    # -- capabilities of SQL stores -----------------------------------------------------

    def _needs(self, storage: Storage, flag: str, value: object) -> None:
        """Skip, naming the flags, unless the store's dialect has ``flag`` set to ``value``."""
        caps = capabilities(storage)
        if caps is None:
            pytest.skip(f"needs {flag}={value!r}: not a userplane.sql.SQLStorage")
        if caps[flag] != value:
            pytest.skip(f"needs {flag}={value!r}; {type(storage).__name__} declares {caps}")

    def test_declares_its_capabilities(
        self, storage: Storage, record_property: Callable[[str, object], None]
    ) -> None:
        caps = capabilities(storage)
        if caps is None:
            pytest.skip("not a userplane.sql.SQLStorage: no dialect capabilities")
        record_property("capabilities", caps)
        print(f"{type(storage).__name__} capabilities: {caps}")
        assert isinstance(caps["returning"], bool)
        assert caps["upsert"] in {"on-conflict", "on-duplicate-key"}
        assert caps["locking"] in {"database", "row"}

    def test_a_transaction_commits_together_or_not_at_all(self, storage: Storage) -> None:
        # The kit writes then reads back inside transaction() where there is no RETURNING,
        # and the records of a change commit with it there: it must be real.
        assert isinstance(storage, SQLStorage)
        first, second = make_user("first@example.org"), make_user("second@example.org")

        def write(user: User) -> int:
            params = insert_params(user, normalize_email(user.email))
            return storage.execute(storage.queries["insert_user"], storage.params(params))

        def abandoned() -> None:
            with storage.transaction():
                write(first)
                assert storage.get_user(first.id) == first  # its own writes, seen inside
                write(second)
                raise RuntimeError("abandon the block")

        with pytest.raises(RuntimeError, match="abandon"):
            abandoned()
        assert storage.get_user(first.id) is None
        assert storage.get_user(second.id) is None
        with storage.transaction():
            write(first)
            write(second)
        assert storage.get_user(first.id) == first
        assert storage.get_user(second.id) == second

    def test_a_transaction_inside_another_joins_it(self, storage: Storage) -> None:
        first, second = make_user("first@example.org"), make_user("second@example.org")

        def abandoned() -> None:
            with storage.transaction():
                storage.insert_user(first, normalize_email(first.email))
                with storage.transaction():
                    storage.insert_user(second, normalize_email(second.email))
                raise RuntimeError("abandon the outer block")

        with pytest.raises(RuntimeError, match="abandon"):
            abandoned()
        assert storage.get_user(first.id) is None
        assert storage.get_user(second.id) is None, "the inner block committed on its own"

    def test_a_failed_write_in_a_transaction_rolls_back_the_others(self, storage: Storage) -> None:
        taken, other = make_user("taken@example.org"), make_user("other@example.org")
        storage.insert_user(taken, normalize_email(taken.email))

        def both() -> None:
            with storage.transaction():
                storage.insert_user(other, normalize_email(other.email))
                storage.insert_user(make_user("TAKEN@example.org"), "taken@example.org")

        with pytest.raises(Conflict):
            both()
        assert storage.get_user(other.id) is None
        # The store is usable afterwards, on this thread too.
        storage.insert_user(other, normalize_email(other.email))
        assert storage.get_user(other.id) == other

    # -- BulkStorage (skipped for a store without it: imports fall back to one call a user)

    def test_a_batch_of_users_is_inserted_exactly(self, storage: Storage) -> None:
        bulk = _bulk(storage)
        users = [
            make_user(f"b{n}@example.org", full_name=None if n % 2 else f"B {n}") for n in range(7)
        ]
        with storage.transaction():
            bulk.insert_users([UserRow(u, normalize_email(u.email)) for u in users])
        for user in users:
            assert storage.get_user(user.id) == user
            assert storage.get_user_by_email(normalize_email(user.email)) == user
        keys = [normalize_email(u.email) for u in users]
        assert bulk.users_by_email_keys(keys) == dict(zip(keys, users, strict=True))
        bulk.insert_users([])  # nothing to do: no statement, no error

    def test_a_batch_is_folded_for_search_as_one_insert_is(self, storage: Storage) -> None:
        bulk = _bulk(storage)
        users = [make_user(f"c{n}@example.org", full_name=f"Ça {n}") for n in range(3)]
        with storage.transaction():
            bulk.insert_users([UserRow(u, normalize_email(u.email)) for u in users])
        found = storage.list_users(UserFilter(q=fold("ÇA 1")), CREATED, None, 10)
        assert [u.id for u in found] == [users[1].id]

    def test_a_batch_with_a_taken_email_inserts_nothing(self, storage: Storage) -> None:
        bulk = _bulk(storage)
        taken = make_user("taken@example.org")
        insert(storage, taken)
        fresh = make_user("fresh@example.org")
        clash = make_user("TAKEN@example.org")
        with pytest.raises(Conflict), storage.transaction():
            bulk.insert_users([UserRow(u, normalize_email(u.email)) for u in (fresh, clash)])
        assert storage.get_user(fresh.id) is None
        twice = [make_user("twin@example.org"), make_user("Twin@example.org")]
        with pytest.raises(Conflict), storage.transaction():
            bulk.insert_users([UserRow(u, normalize_email(u.email)) for u in twice])
        assert storage.get_user(twice[0].id) is None

    def test_users_are_found_by_a_batch_of_email_keys_either_index(self, storage: Storage) -> None:
        bulk = _bulk(storage)
        live, gone = make_user("live@example.org"), make_user("gone@example.org")
        insert(storage, live)
        insert(storage, gone)
        gone = storage.delete_user(gone.id, None, datetime.now(UTC))
        moving = make_user("moving@example.org")
        storage.insert_user(moving, "old-index-value", next_key="new-index-value")
        keys = ["live@example.org", "gone@example.org", "new-index-value", "nobody@example.org"]
        found = bulk.users_by_email_keys(keys * 2)  # repeated keys are asked once
        assert found == {
            "live@example.org": live,
            "gone@example.org": gone,
            "new-index-value": moving,
        }
        assert bulk.users_by_email_keys([]) == {}
        many = [f"k{n}@example.org" for n in range(1200)] + ["live@example.org"]
        assert bulk.users_by_email_keys(many) == {"live@example.org": live}

    def test_lock_user_reads_a_user_deleted_or_not_and_holds_it(self, storage: Storage) -> None:
        user = make_user()
        storage.insert_user(user, normalize_email(user.email))
        started = threading.Event()

        def write() -> int:
            started.set()
            return storage.update_user(
                user.id, {"is_active": False}, None, None, user.updated_at
            ).version

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            with storage.transaction():
                assert storage.lock_user(user.id) == user
                assert storage.lock_user(uuid.uuid4()) is None
                # Another writer waits for the lock (or the database's write lock) until commit.
                pending = pool.submit(write)
                started.wait(5)
                time.sleep(0.2)
                assert not pending.done(), "a write went through a locked user"
                storage.update_user(user.id, {"full_name": "Held"}, None, 1, user.updated_at)
            assert pending.result(timeout=10) == 3
        deleted = storage.delete_user(user.id, None, user.updated_at)
        with storage.transaction():
            assert storage.lock_user(user.id) == deleted

    def test_purge_orphan_responses_removes_only_responses_about_no_user(
        self, storage: Storage
    ) -> None:
        # A response completed while its user was being purged names a user that is gone.
        kept = make_user("kept@example.org")
        storage.insert_user(kept, normalize_email(kept.email))
        now = _BASE_TIME
        for key, about in (("k-kept", kept.id), ("k-none", None), ("k-orphan", uuid.uuid4())):
            assert storage.claim_idempotency_key(key, "f", now, now + timedelta(days=1), now)
            storage.complete_idempotency_key(key, StoredResponse(201, (), b"{}", about))
        assert storage.purge_orphan_responses() == 1
        assert storage.get_idempotency_record("k-orphan", now) is None
        assert storage.get_idempotency_record("k-kept", now) is not None
        assert storage.get_idempotency_record("k-none", now) is not None

    def test_deleted_user_ids_page_the_users_deleted_before_a_cut_off(
        self, storage: Storage
    ) -> None:
        users = [make_user(f"u{i}@example.org") for i in range(5)]
        for user in users:
            storage.insert_user(user, normalize_email(user.email))
        early = datetime(2026, 1, 1, tzinfo=UTC)
        for user in users[:3]:
            storage.delete_user(user.id, None, early)
        storage.delete_user(users[3].id, None, early + timedelta(days=2))
        cut = early + timedelta(days=1)
        expected = sorted(u.id for u in users[:3])
        assert storage.deleted_user_ids(cut, 10) == expected
        assert storage.deleted_user_ids(cut, 2) == expected[:2]
        assert storage.deleted_user_ids(early, 10) == []

    def test_other_threads_see_a_transaction_once_it_commits(self, storage: Storage) -> None:
        assert isinstance(storage, SQLStorage)
        user = make_user()
        params = storage.params(insert_params(user, normalize_email(user.email)))
        with storage.transaction():
            storage.execute(storage.queries["insert_user"], params)
            [inside] = run_concurrently(1, lambda _: storage.get_user(user.id))
        [after] = run_concurrently(1, lambda _: storage.get_user(user.id))
        assert inside is None, "another thread saw a write its transaction had not committed"
        assert after == user
