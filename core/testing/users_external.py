"""The storage contract of users' external ids and attributes: ``ExternalIdContract``.

A user may carry an id issued by an identity provider (``external_id``) with
the source that issued it (``external_source``), and custom attributes (a
bounded JSON object, ``userplane.attributes``). ``StorageContract`` includes
this suite; it feeds the storage directly, as ``UserService`` does: a user
built whole with the three fields, ``update_user`` with
``{"external_source": …, "external_id": …}`` (the pair is one value: the
named queries' ``set_external``) and ``{"attributes": {...}}`` (stored whole:
the service merges a patch before it writes; ``set_attributes``).

It proves the round trip (nested and unicode attributes, ``{}`` read back for
none), the unique pair decided by the database (the same id from two sources
is two ids; one pair is one user, deleted or not: ``Conflict`` on insert,
update and a batch), the list filters by source and id, the fields returned
by every read (``users_by_email_keys``, ``index_entries``), and a race on one
pair with exactly one winner.

Requires pytest and hypothesis (``pip install 'userplane[testing]'``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from userplane.attributes import check_attributes
from userplane.emails import normalize_email
from userplane.errors import Conflict, PreconditionFailed
from userplane.pagination import Sort
from userplane.storage import BulkStorage, Storage, UserRow
from userplane.users import User, UserFilter

_BASE_TIME = datetime(2026, 3, 4, 5, 6, 7, 654321, tzinfo=UTC)
#: The default order: oldest first.
_CREATED = Sort()

#: Attributes that exercise the JSON a store must keep exactly: nesting to the deepest
#: level allowed, arrays, every scalar type, unicode (astral too), and the characters a
#: text column, a ``COPY`` stream or a JSON encoder escapes.
RICH_ATTRIBUTES: Mapping[str, Any] = {
    "department": "Forschung & Entwicklung",
    "ünïcödé ключ 😀": "値 — 😀 \u00e9\u0301",
    "escapes": 'tab\there, newline\nthere, "quoted", back\\slash, \\N, \r\n',
    "numbers": {"int": 42, "negative": -7, "big": 2**53 - 1, "float": 1.5, "zero": 0},
    "flags": {"on": True, "off": False, "nothing": None},
    "list": [1, "two", 3.25, None, True, {"nested": "deep", "n": 0}],
    "empty": {"object": {}, "array": [], "string": ""},
    "level1": {"level2": {"level3": "the deepest scalar"}},
}


def external_user(
    email: str,
    source: str | None = None,
    external_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    *,
    created_at: datetime | None = None,
) -> User:
    """A ``User`` with an external id and attributes, as the service builds it (version 1)."""
    at = created_at or datetime.now(UTC)
    return User(
        id=uuid.uuid4(),
        email=email,
        full_name="External Example",
        is_active=True,
        created_at=at,
        updated_at=at,
        version=1,
        external_source=source,
        external_id=external_id,
        attributes=dict(attributes or {}),
    )


def _insert(storage: Storage, user: User) -> User:
    return storage.insert_user(user, normalize_email(user.email))


def _bulk(storage: Storage) -> BulkStorage:
    if not isinstance(storage, BulkStorage):
        pytest.skip("the store has no BulkStorage capability (imports use the fallback)")
    return storage


def _external(user: User | None) -> tuple[str | None, str | None, Mapping[str, Any]] | None:
    """What this suite is about, of ``user``."""
    return None if user is None else (user.external_source, user.external_id, user.attributes)


def _listed(storage: Storage, **flt: Any) -> list[uuid.UUID]:
    """The ids of every user ``UserFilter(**flt)`` matches, oldest first."""
    return [u.id for u in storage.list_users(UserFilter(**flt), _CREATED, None, 100)]


class ExternalIdContract:
    """Users' external ids and attributes in a ``Storage``. ``StorageContract`` includes it.

    Run alone, subclass it and provide a ``storage`` fixture yielding a
    migrated, empty store, as for ``StorageContract``.
    """

    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        raise NotImplementedError("provide a `storage` fixture yielding an empty, migrated store")

    # -- round trips -------------------------------------------------------------------

    def test_external_fields_round_trip_exactly(self, storage: Storage) -> None:
        assert check_attributes(dict(RICH_ATTRIBUTES)) == []  # what a client may store
        user = external_user(
            "ext@example.org", "okta", "00u1AbC/é 😀", RICH_ATTRIBUTES, created_at=_BASE_TIME
        )
        assert _insert(storage, user) == user
        got = storage.get_user(user.id)
        assert got == user
        assert got is not None
        assert _external(got) == ("okta", "00u1AbC/é 😀", RICH_ATTRIBUTES)
        # Types survive: an integer is no float, a boolean no integer.
        numbers = got.attributes["numbers"]
        assert type(numbers["int"]) is int
        assert type(numbers["float"]) is float
        assert got.attributes["flags"]["on"] is True
        assert got.attributes["list"][4] is True
        assert storage.get_user_by_email(normalize_email(user.email)) == user
        with storage.transaction():
            assert storage.lock_user(user.id) == user

    def test_no_external_id_and_no_attributes_read_back_as_none_and_empty(
        self, storage: Storage
    ) -> None:
        user = external_user("plain@example.org")
        stored = _insert(storage, user)
        assert _external(stored) == (None, None, {})
        got = storage.get_user(user.id)
        assert got == user
        assert _external(got) == (None, None, {})
        assert got is not None
        assert isinstance(got.attributes, dict)
        # The published schema keeps no attributes as NULL (a SQL store's raw column).
        from userplane.sql import SQLStorage

        if isinstance(storage, SQLStorage):
            rows = storage.fetch_all(
                storage.dialect.compile("SELECT attributes, external_source FROM users"), {}
            )
            assert [tuple(r) for r in rows] == [(None, None)]

    def test_a_user_deleted_and_restored_keeps_its_fields(self, storage: Storage) -> None:
        user = _insert(storage, external_user("kept@example.org", "okta", "k1", {"a": [1]}))
        deleted = storage.delete_user(user.id, None, _BASE_TIME)
        assert _external(deleted) == ("okta", "k1", {"a": [1]})
        assert _external(storage.get_user(user.id, include_deleted=True)) == _external(user)
        restored = storage.restore_user(user.id, _BASE_TIME + timedelta(seconds=1))
        assert _external(restored) == _external(user)

    # -- update_user ---------------------------------------------------------------------

    def test_update_sets_changes_and_clears_the_pair_together(self, storage: Storage) -> None:
        user = _insert(storage, external_user("pair@example.org", created_at=_BASE_TIME))
        later = _BASE_TIME + timedelta(minutes=1)
        set_ = storage.update_user(
            user.id, {"external_source": "okta", "external_id": "u-1"}, None, 1, later
        )
        assert _external(set_) == ("okta", "u-1", {})
        assert (set_.version, set_.updated_at) == (2, later)
        assert storage.get_user(user.id) == set_
        moved = storage.update_user(
            user.id, {"external_source": "azure", "external_id": "u-2"}, None, 2, later
        )
        assert _external(moved) == ("azure", "u-2", {})
        # The old pair is free again.
        _insert(storage, external_user("next@example.org", "okta", "u-1"))
        cleared = storage.update_user(
            user.id, {"external_source": None, "external_id": None}, None, 3, later
        )
        assert _external(cleared) == (None, None, {})
        assert cleared.version == 4
        assert storage.get_user(user.id) == cleared
        _insert(storage, external_user("after@example.org", "azure", "u-2"))

    def test_update_without_the_pair_or_attributes_keeps_them(self, storage: Storage) -> None:
        user = _insert(storage, external_user("keep@example.org", "okta", "k", RICH_ATTRIBUTES))
        updated = storage.update_user(
            user.id, {"full_name": "Renamed", "is_active": False}, None, None, _BASE_TIME
        )
        assert _external(updated) == ("okta", "k", RICH_ATTRIBUTES)
        emailed = storage.update_user(
            user.id, {"email": "moved@example.org"}, "moved@example.org", None, _BASE_TIME
        )
        assert _external(emailed) == ("okta", "k", RICH_ATTRIBUTES)
        attributed = storage.update_user(
            user.id, {"attributes": {"only": "this"}}, None, None, _BASE_TIME
        )
        assert _external(attributed) == ("okta", "k", {"only": "this"})
        assert storage.get_user(user.id) == attributed

    def test_update_stores_the_attributes_whole_and_empty_clears_them(
        self, storage: Storage
    ) -> None:
        user = _insert(storage, external_user("attrs@example.org", attributes={"a": 1, "b": 2}))
        # A store writes what it is given: merging a patch is the service's.
        replaced = storage.update_user(
            user.id, {"attributes": {"b": {"c": [True, None]}}}, None, 1, _BASE_TIME
        )
        assert replaced.attributes == {"b": {"c": [True, None]}}
        assert replaced.version == 2
        rich = storage.update_user(user.id, {"attributes": RICH_ATTRIBUTES}, None, 2, _BASE_TIME)
        assert storage.get_user(user.id) == rich
        assert rich.attributes == RICH_ATTRIBUTES
        emptied = storage.update_user(user.id, {"attributes": {}}, None, 3, _BASE_TIME)
        assert emptied.attributes == {}
        assert emptied.version == 4
        got = storage.get_user(user.id)
        assert got is not None
        assert got.attributes == {}
        # Attributes and the pair in one statement, with a stale version: nothing changes.
        with pytest.raises(PreconditionFailed):
            storage.update_user(
                user.id,
                {"attributes": {"x": 1}, "external_source": "okta", "external_id": "x"},
                None,
                1,
                _BASE_TIME,
            )
        assert storage.get_user(user.id) == got

    # -- the unique pair -----------------------------------------------------------------

    def test_one_id_from_two_sources_is_two_ids(self, storage: Storage) -> None:
        okta = _insert(storage, external_user("a@example.org", "okta", "42"))
        azure = _insert(storage, external_user("b@example.org", "azure", "42"))
        # Compared exactly: another letter case is another id, and another source.
        upper = _insert(storage, external_user("c@example.org", "okta", "42A"))
        lower = _insert(storage, external_user("d@example.org", "okta", "42a"))
        other_source = _insert(storage, external_user("e@example.org", "OKTA", "42"))
        # Any number of users without one.
        plain = [_insert(storage, external_user(f"p{n}@example.org")) for n in range(3)]
        for user in (okta, azure, upper, lower, other_source, *plain):
            assert storage.get_user(user.id) == user

    def test_a_taken_pair_conflicts_on_insert(self, storage: Storage) -> None:
        first = _insert(storage, external_user("first@example.org", "okta", "u-1"))
        clash = external_user("second@example.org", "okta", "u-1", {"x": 1})
        with pytest.raises(Conflict):
            _insert(storage, clash)
        assert storage.get_user(clash.id) is None
        assert storage.get_user_by_email("second@example.org") is None
        # A deleted user keeps its pair, as it keeps its email.
        storage.delete_user(first.id, None, _BASE_TIME)
        with pytest.raises(Conflict):
            _insert(storage, clash)
        assert storage.get_user(clash.id) is None
        # The store is fine afterwards.
        _insert(storage, attrs.evolve(clash, external_id="u-2"))

    def test_a_taken_pair_conflicts_on_update_and_changes_nothing(self, storage: Storage) -> None:
        _insert(storage, external_user("holder@example.org", "okta", "u-1"))
        user = _insert(storage, external_user("mover@example.org", "okta", "u-2", {"k": "v"}))
        for expected in (None, 1):
            with pytest.raises(Conflict):
                storage.update_user(
                    user.id,
                    {"external_source": "okta", "external_id": "u-1", "full_name": "X"},
                    None,
                    expected,
                    _BASE_TIME,
                )
        assert storage.get_user(user.id) == user
        # The same id from another source is free.
        moved = storage.update_user(
            user.id, {"external_source": "azure", "external_id": "u-1"}, None, 1, _BASE_TIME
        )
        assert _external(moved) == ("azure", "u-1", {"k": "v"})
        # Setting a user's own pair again is no conflict.
        again = storage.update_user(
            user.id, {"external_source": "azure", "external_id": "u-1"}, None, 2, _BASE_TIME
        )
        assert again.version == 3

    def test_a_batch_with_a_taken_pair_inserts_nothing(self, storage: Storage) -> None:
        bulk = _bulk(storage)
        _insert(storage, external_user("stored@example.org", "okta", "taken"))
        fresh = external_user("fresh@example.org", "okta", "fresh")
        clash = external_user("clash@example.org", "okta", "taken")
        with pytest.raises(Conflict), storage.transaction():
            bulk.insert_users([UserRow(u, normalize_email(u.email)) for u in (fresh, clash)])
        assert storage.get_user(fresh.id) is None
        assert storage.get_user(clash.id) is None
        twins = [
            external_user("twin1@example.org", "azure", "twin"),
            external_user("twin2@example.org", "azure", "twin"),
        ]
        with pytest.raises(Conflict), storage.transaction():
            bulk.insert_users([UserRow(u, normalize_email(u.email)) for u in twins])
        assert storage.get_user(twins[0].id) is None
        assert storage.get_user(twins[1].id) is None
        # The rows are fine once their pairs are.
        with storage.transaction():
            bulk.insert_users([UserRow(u, normalize_email(u.email)) for u in (fresh, twins[0])])
        assert storage.get_user(fresh.id) == fresh
        assert storage.get_user(twins[0].id) == twins[0]

    def test_a_batch_keeps_the_fields_exactly(self, storage: Storage) -> None:
        bulk = _bulk(storage)
        users = [
            external_user("bulk-okta@example.org", "okta", "b-0", RICH_ATTRIBUTES),
            external_user("bulk-plain@example.org"),
            external_user("bulk-azure@example.org", "azure", "b-0", {"tab key": "a\tb\\c"}),
        ]
        with storage.transaction():
            bulk.insert_users([UserRow(u, normalize_email(u.email)) for u in users])
        for user in users:
            assert storage.get_user(user.id) == user
        keys = [normalize_email(u.email) for u in users]
        found = bulk.users_by_email_keys(keys)
        assert {k: _external(u) for k, u in found.items()} == {
            k: _external(u) for k, u in zip(keys, users, strict=True)
        }

    def test_concurrent_inserts_of_one_pair_let_exactly_one_win(self, storage: Storage) -> None:
        from userplane.testing.storage import run_concurrently

        def create(i: int) -> User:
            return _insert(storage, external_user(f"race{i}@example.org", "okta", "same"))

        results = run_concurrently(8, create)
        wins = [r for r in results if isinstance(r, User)]
        assert len(wins) == 1, results
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, User)), results
        assert _listed(storage, external_source="okta", external_id="same") == [wins[0].id]
        assert storage.get_user(wins[0].id) == wins[0]

    def test_concurrent_updates_to_one_pair_let_exactly_one_win(self, storage: Storage) -> None:
        from userplane.testing.storage import run_concurrently

        users = [_insert(storage, external_user(f"up{i}@example.org")) for i in range(6)]

        def claim(i: int) -> User:
            return storage.update_user(
                users[i].id,
                {"external_source": "azure", "external_id": "claimed"},
                None,
                None,
                datetime.now(UTC),
            )

        results = run_concurrently(len(users), claim)
        wins = [r for r in results if isinstance(r, User)]
        assert len(wins) == 1, results
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, User)), results
        assert _listed(storage, external_id="claimed") == [wins[0].id]
        for user in users:
            if user.id != wins[0].id:
                assert storage.get_user(user.id) == user

    # -- listing -------------------------------------------------------------------------

    def test_lists_filter_by_source_by_id_and_by_both(self, storage: Storage) -> None:
        def at(n: int) -> datetime:
            return _BASE_TIME + timedelta(seconds=n)

        okta1 = _insert(storage, external_user("o1@example.org", "okta", "1", created_at=at(1)))
        okta2 = _insert(storage, external_user("o2@example.org", "okta", "2", created_at=at(2)))
        azure1 = _insert(storage, external_user("a1@example.org", "azure", "1", created_at=at(3)))
        plain = _insert(storage, external_user("p@example.org", created_at=at(4)))
        gone = _insert(storage, external_user("g@example.org", "okta", "3", created_at=at(5)))
        storage.delete_user(gone.id, None, at(6))

        assert _listed(storage) == [okta1.id, okta2.id, azure1.id, plain.id]
        assert _listed(storage, external_source="okta") == [okta1.id, okta2.id]
        assert _listed(storage, external_source="okta", include_deleted=True) == [
            okta1.id,
            okta2.id,
            gone.id,
        ]
        assert _listed(storage, external_source="azure") == [azure1.id]
        assert _listed(storage, external_id="1") == [okta1.id, azure1.id]
        assert _listed(storage, external_source="okta", external_id="1") == [okta1.id]
        assert _listed(storage, external_source="azure", external_id="2") == []
        assert _listed(storage, external_id="3") == []
        assert _listed(storage, external_id="3", include_deleted=True) == [gone.id]
        assert _listed(storage, external_source="OKTA") == []  # exactly
        assert _listed(storage, external_source="nobody") == []
        # With the other filters.
        storage.update_user(okta2.id, {"is_active": False}, None, None, at(7))
        assert _listed(storage, external_source="okta", is_active=True) == [okta1.id]
        assert _listed(storage, external_source="okta", is_active=False) == [okta2.id]
        assert _listed(storage, external_id="1", email="a1@example.org") == [azure1.id]
        # The users listed carry their fields.
        page = storage.list_users(UserFilter(external_source="okta"), _CREATED, None, 100)
        assert [_external(u) for u in page] == [("okta", "1", {}), ("okta", "2", {})]

    def test_a_filtered_list_pages_by_keyset(self, storage: Storage) -> None:
        from userplane.pagination import Position

        users = [
            _insert(
                storage,
                external_user(
                    f"k{n}@example.org",
                    "okta" if n % 2 else "azure",
                    f"id-{n}",
                    {"n": n},
                    created_at=_BASE_TIME + timedelta(microseconds=n // 3),  # ties on purpose
                ),
            )
            for n in range(12)
        ]
        expected = sorted(
            (u for u in users if u.external_source == "okta"), key=lambda u: (u.created_at, u.id)
        )
        seen: list[User] = []
        after = None
        while True:
            page = storage.list_users(UserFilter(external_source="okta"), _CREATED, after, 2)
            seen += page
            if len(page) < 2:
                break
            after = Position(page[-1].created_at, page[-1].id)
        assert seen == expected

    # -- the other reads -----------------------------------------------------------------

    def test_users_by_email_keys_return_the_fields(self, storage: Storage) -> None:
        bulk = _bulk(storage)
        live = _insert(storage, external_user("live@example.org", "okta", "l", {"a": {"b": 1}}))
        gone = _insert(storage, external_user("gone@example.org", "azure", "g", {"z": [None]}))
        gone = storage.delete_user(gone.id, None, _BASE_TIME)
        plain = _insert(storage, external_user("plain@example.org"))
        found = bulk.users_by_email_keys(
            ["live@example.org", "gone@example.org", "plain@example.org", "none@example.org"]
        )
        assert found == {
            "live@example.org": live,
            "gone@example.org": gone,
            "plain@example.org": plain,
        }
        assert _external(found["live@example.org"]) == ("okta", "l", {"a": {"b": 1}})
        assert _external(found["gone@example.org"]) == ("azure", "g", {"z": [None]})
        assert _external(found["plain@example.org"]) == (None, None, {})

    def test_index_entries_return_the_fields(self, storage: Storage) -> None:
        users = [
            _insert(storage, external_user("i0@example.org", "okta", "i0", RICH_ATTRIBUTES)),
            _insert(storage, external_user("i1@example.org")),
            _insert(storage, external_user("i2@example.org", "azure", "i2", {"deleted": True})),
        ]
        storage.delete_user(users[2].id, None, _BASE_TIME)  # deleted ones too
        entries = storage.index_entries(None, 10)
        assert [e.user.id for e in entries] == sorted(u.id for u in users)
        by_id = {e.user.id: e.user for e in entries}
        for user in users:
            assert _external(by_id[user.id]) == _external(user)
