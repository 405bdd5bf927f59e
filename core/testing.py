"""Public test helpers: the storage contract suite and hypothesis strategies.

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

A storage that does not hold API keys (``userplane.storage.ApiKeyStorage``)
sets ``holds_api_keys = False`` on its subclass: those tests are then skipped,
and the ``api_keys`` plugin must be disabled wherever that storage is used.

Requires pytest and hypothesis (``pip install 'userplane[dev]'``).
"""

from __future__ import annotations

import secrets
import string
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from userplane.api_keys import KEY_PREFIX, LOOKUP_LENGTH, SECRET_LENGTH, ApiKey, hash_key
from userplane.emails import normalize_email
from userplane.errors import Conflict, NotFound, PreconditionFailed
from userplane.idempotency import IdempotencyRecord, StoredResponse
from userplane.pagination import Position, Sort
from userplane.storage import ApiKeyStorage, Storage
from userplane.text import fold
from userplane.users import NewUser, User, UserFilter, sort_key

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


def make_api_key(
    name: str = "ci",
    *,
    role: str = "admin",
    lookup: str | None = None,
    created_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """An ``ApiKey`` record and its key text, as ``ApiKeyService.create`` would build them.

    The record keeps the key's lookup id and hash, never the key. Pass ``lookup``
    to force a lookup id (12 base62 characters), e.g. to provoke a collision.
    """
    alphabet = string.ascii_letters + string.digits
    lookup = lookup or "".join(secrets.choice(alphabet) for _ in range(LOOKUP_LENGTH))
    key = KEY_PREFIX + lookup + "".join(secrets.choice(alphabet) for _ in range(SECRET_LENGTH))
    record = ApiKey(
        id=uuid.uuid4(),
        name=name,
        role=role,
        lookup=lookup,
        secret_hash=hash_key(key),
        created_at=created_at or datetime.now(UTC),
        expires_at=expires_at,
    )
    return record, key


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


class StorageContract:
    """The behaviour every ``Storage`` must have. Subclass it and provide a ``storage`` fixture.

    The fixture yields a migrated, empty storage and closes it afterwards.
    The API-key tests also require ``userplane.storage.ApiKeyStorage``, unless
    ``holds_api_keys`` is set to ``False``.
    """

    #: Whether the storage holds API keys (implements ``ApiKeyStorage``). A storage
    #: that does not sets this to ``False``: the API-key tests are then skipped.
    holds_api_keys: ClassVar[bool] = True

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

    # -- API keys -----------------------------------------------------------------

    @pytest.fixture
    def key_storage(self, storage: Storage) -> ApiKeyStorage:
        """``storage`` as an ``ApiKeyStorage``; the test is skipped if ``holds_api_keys`` is off."""
        if not self.holds_api_keys:
            pytest.skip("this storage does not hold API keys (holds_api_keys = False)")
        assert isinstance(storage, ApiKeyStorage), (
            f"{type(storage).__name__} does not implement userplane.storage.ApiKeyStorage; "
            "set holds_api_keys = False on the contract subclass if it is not meant to"
        )
        return storage

    def _assert_utc(self, value: datetime | None) -> None:
        assert value is not None
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)

    def test_api_key_insert_then_get_round_trips_exactly(self, key_storage: ApiKeyStorage) -> None:
        record, _ = make_api_key("deploy bot", role="editor", created_at=_BASE_TIME)
        key_storage.insert_api_key(record)
        got = key_storage.get_api_key(record.lookup)
        assert got == record
        assert got is not None
        self._assert_utc(got.created_at)
        assert got.expires_at is None
        assert got.revoked_at is None
        assert got.last_used_at is None

    def test_api_key_with_an_expiry_round_trips(self, key_storage: ApiKeyStorage) -> None:
        expires = _BASE_TIME + timedelta(days=90, microseconds=1)
        record, _ = make_api_key(created_at=_BASE_TIME, expires_at=expires)
        key_storage.insert_api_key(record)
        got = key_storage.get_api_key(record.lookup)
        assert got == record
        assert got is not None
        assert got.expires_at == expires
        self._assert_utc(got.expires_at)

    def test_api_key_keeps_unicode_names(self, key_storage: ApiKeyStorage) -> None:
        record, _ = make_api_key("Zoë's CI 😀 — prod", created_at=_BASE_TIME)
        key_storage.insert_api_key(record)
        assert key_storage.get_api_key(record.lookup) == record

    def test_api_key_unknown_lookup_is_none(self, key_storage: ApiKeyStorage) -> None:
        assert key_storage.get_api_key("A" * LOOKUP_LENGTH) is None
        record, _ = make_api_key(lookup="AbCdEfGh1234")
        key_storage.insert_api_key(record)
        assert key_storage.get_api_key("aBcDeFgH1234") is None  # case matters
        assert key_storage.get_api_key(record.lookup[:-1]) is None  # no prefix matching
        assert key_storage.get_api_key("") is None

    def test_api_key_get_includes_revoked_and_expired_keys(
        self, key_storage: ApiKeyStorage
    ) -> None:
        expired, _ = make_api_key(created_at=_BASE_TIME, expires_at=_BASE_TIME)
        revoked, _ = make_api_key(created_at=_BASE_TIME)
        key_storage.insert_api_key(expired)
        key_storage.insert_api_key(revoked)
        later = _BASE_TIME + timedelta(hours=1)
        key_storage.revoke_api_key(revoked.id, later)
        assert key_storage.get_api_key(expired.lookup) == expired
        assert key_storage.get_api_key(revoked.lookup) == attrs.evolve(revoked, revoked_at=later)

    def test_api_keys_list_oldest_first_then_by_id(self, key_storage: ApiKeyStorage) -> None:
        assert key_storage.list_api_keys() == []
        records = [
            make_api_key(f"k{i}", created_at=_BASE_TIME + timedelta(microseconds=i // 3))[0]
            for i in range(8)  # ties on purpose
        ]
        for record in reversed(records):
            key_storage.insert_api_key(record)
        expected = sorted(records, key=lambda k: (k.created_at, k.id))
        assert key_storage.list_api_keys() == expected
        # Revoked keys are listed too, in place.
        revoked = key_storage.revoke_api_key(expected[2].id, _BASE_TIME + timedelta(days=1))
        assert revoked is not None
        expected[2] = revoked
        assert key_storage.list_api_keys() == expected

    def test_api_key_revoke_sets_revoked_at_once(self, key_storage: ApiKeyStorage) -> None:
        record, _ = make_api_key(created_at=_BASE_TIME)
        other, _ = make_api_key(created_at=_BASE_TIME)
        key_storage.insert_api_key(record)
        key_storage.insert_api_key(other)
        first = _BASE_TIME + timedelta(hours=1, microseconds=7)
        revoked = key_storage.revoke_api_key(record.id, first)
        assert revoked == attrs.evolve(record, revoked_at=first)
        assert revoked is not None
        self._assert_utc(revoked.revoked_at)
        assert key_storage.get_api_key(record.lookup) == revoked
        # Again, later or earlier: the first revocation time stays.
        assert key_storage.revoke_api_key(record.id, first + timedelta(days=1)) == revoked
        assert key_storage.revoke_api_key(record.id, first - timedelta(days=1)) == revoked
        assert key_storage.get_api_key(record.lookup) == revoked
        assert key_storage.get_api_key(other.lookup) == other

    def test_api_key_revoke_unknown_is_none(self, key_storage: ApiKeyStorage) -> None:
        assert key_storage.revoke_api_key(uuid.uuid4(), _BASE_TIME) is None
        assert key_storage.list_api_keys() == []

    def test_api_key_touch_moves_last_used_at_forward_only(
        self, key_storage: ApiKeyStorage
    ) -> None:
        record, _ = make_api_key(created_at=_BASE_TIME)
        other, _ = make_api_key(created_at=_BASE_TIME)
        key_storage.insert_api_key(record)
        key_storage.insert_api_key(other)
        t1 = _BASE_TIME + timedelta(minutes=1, microseconds=1)
        t2 = t1 + timedelta(microseconds=1)
        key_storage.touch_api_key(record.id, t2)
        got = key_storage.get_api_key(record.lookup)
        assert got == attrs.evolve(record, last_used_at=t2)
        assert got is not None
        self._assert_utc(got.last_used_at)
        key_storage.touch_api_key(record.id, t1)  # an older time: ignored
        assert key_storage.get_api_key(record.lookup) == attrs.evolve(record, last_used_at=t2)
        t3 = t2 + timedelta(days=1)
        key_storage.touch_api_key(record.id, t3)
        assert key_storage.get_api_key(record.lookup) == attrs.evolve(record, last_used_at=t3)
        assert key_storage.get_api_key(other.lookup) == other
        key_storage.touch_api_key(uuid.uuid4(), t3)  # an unknown key: nothing to do, no error

    def test_api_key_concurrent_touches_keep_the_latest(self, key_storage: ApiKeyStorage) -> None:
        record, _ = make_api_key(created_at=_BASE_TIME)
        key_storage.insert_api_key(record)
        times = [_BASE_TIME + timedelta(seconds=i) for i in range(8)]
        results = run_concurrently(8, lambda i: key_storage.touch_api_key(record.id, times[i]))
        assert results == [None] * 8, results
        got = key_storage.get_api_key(record.lookup)
        assert got is not None
        assert got.last_used_at == max(times)

    # Fixtures are function-scoped, so each example inserts a key of its own; the
    # method is inherited by every storage's subclass (differing executors), on purpose.
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(offsets=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=8))
    def test_api_key_any_touches_leave_the_latest_time(
        self, key_storage: ApiKeyStorage, offsets: list[int]
    ) -> None:
        # A fresh key per example: the storage is shared by hypothesis's examples.
        record, _ = make_api_key(created_at=_BASE_TIME)
        key_storage.insert_api_key(record)
        times = [_BASE_TIME + timedelta(microseconds=o) for o in offsets]
        for t in times:
            key_storage.touch_api_key(record.id, t)
        got = key_storage.get_api_key(record.lookup)
        assert got == attrs.evolve(record, last_used_at=max(times))

    def test_api_key_same_lookup_or_id_conflicts(self, key_storage: ApiKeyStorage) -> None:
        record, _ = make_api_key("first", created_at=_BASE_TIME)
        key_storage.insert_api_key(record)
        same_lookup, _ = make_api_key("second", lookup=record.lookup)
        with pytest.raises(Conflict):
            key_storage.insert_api_key(same_lookup)
        same_id = attrs.evolve(make_api_key("third")[0], id=record.id)
        with pytest.raises(Conflict):
            key_storage.insert_api_key(same_id)
        assert key_storage.get_api_key(record.lookup) == record
        assert key_storage.get_api_key(same_id.lookup) is None
        assert key_storage.list_api_keys() == [record]

    def test_api_key_concurrent_inserts_of_one_lookup_let_exactly_one_win(
        self, key_storage: ApiKeyStorage
    ) -> None:
        lookup = make_api_key()[0].lookup
        records = [make_api_key(f"k{i}", lookup=lookup)[0] for i in range(8)]
        results = run_concurrently(8, lambda i: key_storage.insert_api_key(records[i]))
        wins = [records[i] for i, r in enumerate(results) if r is None]
        assert len(wins) == 1, results
        assert all(isinstance(r, Conflict) for r in results if r is not None), results
        assert key_storage.get_api_key(lookup) == wins[0]
        assert key_storage.list_api_keys() == wins

    def test_api_key_stores_the_hash_never_the_key(self, key_storage: ApiKeyStorage) -> None:
        record, key = make_api_key(created_at=_BASE_TIME)
        key_storage.insert_api_key(record)
        key_storage.touch_api_key(record.id, _BASE_TIME + timedelta(seconds=1))
        key_storage.revoke_api_key(record.id, _BASE_TIME + timedelta(seconds=2))
        got = key_storage.get_api_key(record.lookup)
        assert got is not None
        assert got.secret_hash == hash_key(key)
        secret = key[len(KEY_PREFIX) + LOOKUP_LENGTH :]
        for stored in (got, *key_storage.list_api_keys()):
            for value in attrs.astuple(stored):
                assert key not in str(value)
                assert secret not in str(value)


# -- hypothesis strategies ------------------------------------------------------

_local = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-",
    min_size=1,
    max_size=20,
).filter(lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s)
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@st.composite
def emails(draw: Any) -> str:
    """Valid addresses in mixed case, including some with non-ASCII letters."""
    local = draw(st.one_of(_local, st.sampled_from(["zoë", "JÜRGEN", "straße", "ÅSA"])))
    domain = ".".join(draw(st.lists(_label, min_size=1, max_size=3)))
    tld = draw(st.sampled_from(["org", "COM", "net", "Io"]))
    return f"{local}@{domain}.{tld}"


def new_users() -> st.SearchStrategy[NewUser]:
    """``NewUser`` values the service accepts."""
    names = st.one_of(
        st.none(),
        st.text(
            alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60
        ).filter(lambda s: s.strip() != ""),
    )
    return st.builds(NewUser, email=emails(), full_name=names, is_active=st.booleans())
