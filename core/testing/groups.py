"""The group storage contract: ``GroupStorageContract``.

``userplane.storage.GroupStorage`` is an optional capability of a storage:
groups, their members and the roles they grant. ``StorageContract`` includes
this suite, so a storage plugin's author runs it with the rest; a store
without the capability sees every test here skipped, saying so (``pytest
-ra`` lists them), and the core answers group operations with a
``ConfigurationError``.

The tests feed the storage directly, as ``GroupService`` would: display
names with their folded key (``userplane.groups.name_key``), groups built
whole (``Group``) with times exact to the microsecond, members by id. They
prove the round trip, the unique folded name and external id, keyset pages
by ``(created_at, id)`` and each filter, conditional writes on ``version``,
the members' rules (live users only, all or nothing, the version bumped once
per call that changed the members), what a deleted or purged user keeps, and
the races the database must decide.

Requires pytest and hypothesis (``pip install 'userplane[testing]'``).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from userplane.emails import normalize_email
from userplane.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from userplane.filtering import And, Compare, Expr, Not, Or, Present, group_matches
from userplane.groups import Group, GroupFilter, name_key, prepare_group_filter
from userplane.pagination import Position
from userplane.storage import BulkStorage, GroupStorage, Storage, UserRow
from userplane.text import fold
from userplane.users import User

_BASE_TIME = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
#: More ids than one ``IN (…)`` list of the SQL kit holds (``IDS_PER_STATEMENT``, 500):
#: the checks and the writes of one call must hold across its chunks.
_MANY = 1100


def make_group(
    display_name: str = "Engineers",
    *,
    roles: Iterable[str] = (),
    external_id: str | None = None,
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
) -> Group:
    """A ``Group`` as the service would build it (version 1), for feeding a storage directly."""
    at = created_at or datetime.now(UTC)
    return Group(
        id=uuid.uuid4(),
        display_name=display_name,
        external_id=external_id,
        roles=frozenset(roles),
        created_at=at,
        updated_at=updated_at or at,
        version=1,
    )


def _groups(storage: Storage) -> GroupStorage:
    """``storage`` as a ``GroupStorage``, or the test is skipped saying so."""
    if not isinstance(storage, GroupStorage):
        pytest.skip(
            "the store has no GroupStorage capability (the core answers group "
            "operations with a ConfigurationError)"
        )
    return storage


def _add(store: GroupStorage, group: Group) -> Group:
    """Insert ``group`` with its folded name, as ``GroupService.create`` does."""
    return store.insert_group(group, name_key(group.display_name))


def _users(storage: Storage, count: int, prefix: str = "member") -> list[User]:
    """``count`` live users, stored (by the batch where the store can), sorted by id."""
    # Imported here: the storage contract imports this module (it includes this suite).
    from userplane.testing.storage import insert, make_user

    users = [make_user(f"{prefix}{n}@example.org", full_name=f"Member {n}") for n in range(count)]
    if isinstance(storage, BulkStorage):
        with storage.transaction():
            storage.insert_users([UserRow(u, normalize_email(u.email)) for u in users])
    else:
        for user in users:
            insert(storage, user)
    return sorted(users, key=lambda u: u.id)


def _ids(users: Iterable[User]) -> list[uuid.UUID]:
    return [u.id for u in users]


def _all_groups(store: GroupStorage, flt: GroupFilter, page: int = 100) -> list[Group]:
    """Every group matching ``flt``, walked in keyset pages of ``page``."""
    seen: list[Group] = []
    after: Position | None = None
    while True:
        rows = store.list_groups(flt, after, page)
        assert len(rows) <= page
        seen += rows
        if len(rows) < page:
            return seen
        after = Position(rows[-1].created_at, rows[-1].id)


def _group_sort_key(field: str) -> Callable[[Group], tuple[Any, int]]:
    if field == "display_name":
        return lambda g: (name_key(g.display_name), g.id.int)
    return lambda g: (g.created_at, g.id.int)


def _members_field(exc: InvalidInput) -> list[str]:
    return [e.field for e in exc.errors]


class GroupStorageContract:
    """The behaviour of a ``GroupStorage``. ``StorageContract`` includes it.

    Run alone, subclass it and provide a ``storage`` fixture yielding a
    migrated, empty store, as for ``StorageContract``.
    """

    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        raise NotImplementedError("provide a `storage` fixture yielding an empty, migrated store")

    # -- groups ---------------------------------------------------------------------

    def test_group_insert_then_get_round_trips_exactly(self, storage: Storage) -> None:
        store = _groups(storage)
        group = make_group(
            "Site Reliability",
            roles={"viewer", "editor"},
            external_id="idp-group-1",
            created_at=_BASE_TIME,
            updated_at=_BASE_TIME + timedelta(microseconds=1),
        )
        assert _add(store, group) == group
        got = store.get_group(group.id)
        assert got == group
        assert got is not None
        assert got.version == 1
        assert got.roles == frozenset({"viewer", "editor"})
        assert got.created_at.utcoffset() == timedelta(0)
        assert got.updated_at == _BASE_TIME + timedelta(microseconds=1)
        plain = make_group("Équipe Ünïcode 😀")  # no roles, no external id
        assert _add(store, plain) == plain
        assert store.get_group(plain.id) == plain
        assert store.get_group(uuid.uuid4()) is None

    def test_group_names_conflict_ignoring_letter_case(self, storage: Storage) -> None:
        store = _groups(storage)
        first = _add(store, make_group("Engineers"))
        for spelling in ("ENGINEERS", "engineers", "EnGiNeErS"):
            clash = make_group(spelling)
            with pytest.raises(Conflict):
                _add(store, clash)
            assert store.get_group(clash.id) is None
        accented = _add(store, make_group("Équipe"))
        with pytest.raises(Conflict):
            _add(store, make_group("éQUIPE"))
        # Names that only look alike are other names.
        _add(store, make_group("Engineers 2"))
        _add(store, make_group("Engineer"))
        assert store.get_group(first.id) == first
        assert store.get_group(accented.id) == accented

    def test_group_external_ids_conflict_and_many_may_have_none(self, storage: Storage) -> None:
        store = _groups(storage)
        _add(store, make_group("One", external_id="ext-1"))
        clash = make_group("Two", external_id="ext-1")
        with pytest.raises(Conflict):
            _add(store, clash)
        assert store.get_group(clash.id) is None
        nameless = [_add(store, make_group(f"No id {n}")) for n in range(3)]
        for group in nameless:
            assert store.get_group(group.id) == group
            assert group.external_id is None

    def test_lock_group_reads_the_group_and_holds_it(self, storage: Storage) -> None:
        store = _groups(storage)
        group = _add(store, make_group(created_at=_BASE_TIME))
        started = threading.Event()

        def write() -> int:
            started.set()
            return store.update_group(
                group.id, {"roles": frozenset()}, None, None, _BASE_TIME
            ).version

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            with storage.transaction():
                assert store.lock_group(group.id) == group
                assert store.lock_group(uuid.uuid4()) is None
                # Another writer waits for the lock (or the database's write lock) until commit.
                pending = pool.submit(write)
                started.wait(5)
                time.sleep(0.2)
                assert not pending.done(), "a write went through a locked group"
                store.update_group(group.id, {"roles": frozenset({"viewer"})}, None, 1, _BASE_TIME)
            assert pending.result(timeout=10) == 3

    # -- listing --------------------------------------------------------------------

    def _seed_groups(self, store: GroupStorage, count: int) -> list[Group]:
        groups = [
            make_group(
                f"Group {n}",
                external_id=f"ext-{n}",
                created_at=_BASE_TIME + timedelta(microseconds=n // 3),  # ties on purpose
            )
            for n in range(count)
        ]
        for group in groups:
            _add(store, group)
        return sorted(groups, key=lambda g: (g.created_at, g.id))

    def test_groups_list_by_created_at_then_id(self, storage: Storage) -> None:
        store = _groups(storage)
        groups = self._seed_groups(store, 9)
        assert store.list_groups(GroupFilter(), None, 100) == groups
        assert store.list_groups(GroupFilter(), None, 4) == groups[:4]

    @pytest.mark.parametrize("page", [1, 2, 3, 5])
    def test_group_keyset_pages_cover_everything_once(self, storage: Storage, page: int) -> None:
        store = _groups(storage)
        groups = self._seed_groups(store, 11)
        assert _all_groups(store, GroupFilter(), page) == groups

    def test_group_inserts_while_paging_never_repeat_or_skip(self, storage: Storage) -> None:
        store = _groups(storage)
        groups = self._seed_groups(store, 6)
        first = store.list_groups(GroupFilter(), None, 3)
        early = _add(store, make_group("Early", created_at=_BASE_TIME - timedelta(days=1)))
        # At the very time of the last one seen: after it only if its id is greater.
        tie = _add(store, make_group("Tie", created_at=first[-1].created_at))
        late = _add(store, make_group("Late", created_at=_BASE_TIME + timedelta(days=1)))
        rest = store.list_groups(GroupFilter(), Position(first[-1].created_at, first[-1].id), 100)
        assert [g for g in first + rest if g in groups] == groups
        assert early not in rest
        assert late in rest
        assert (tie in rest) == (tie.id > first[-1].id)

    def test_group_filters(self, storage: Storage) -> None:
        store = _groups(storage)
        groups = self._seed_groups(store, 12)
        by_name = store.list_groups(GroupFilter(display_name=name_key("GROUP 1")), None, 100)
        assert [g.display_name for g in by_name] == ["Group 1"]  # exact: not "Group 10", "11"
        by_external_id = store.list_groups(GroupFilter(external_id="ext-7"), None, 100)
        assert [g.display_name for g in by_external_id] == ["Group 7"]
        assert store.list_groups(GroupFilter(external_id="EXT-7"), None, 100) == []
        by_q = store.list_groups(GroupFilter(q=fold("UP 1")), None, 100)
        assert by_q == [g for g in groups if g.display_name.startswith("Group 1")]
        none = store.list_groups(GroupFilter(display_name=name_key("Group 99")), None, 100)
        assert none == []
        both = store.list_groups(
            GroupFilter(display_name=name_key("group 3"), external_id="ext-4"), None, 100
        )
        assert both == []
        # Filters page like the whole list.
        assert _all_groups(store, GroupFilter(q="group"), 5) == groups

    def test_group_q_is_a_literal_substring_of_the_folded_name(self, storage: Storage) -> None:
        store = _groups(storage)
        percent = _add(store, make_group("100% Sure"))
        under = _add(store, make_group("snake_case Ünïcode"))
        _add(store, make_group("Plain"))
        _add(store, make_group("snakeXcase"))

        def found(q: str) -> list[uuid.UUID]:
            return [g.id for g in store.list_groups(GroupFilter(q=fold(q)), None, 10)]

        assert found("%") == [percent.id]
        assert found("0%") == [percent.id]
        assert found("_") == [under.id]
        assert found("e_c") == [under.id]
        assert found("ÜNÏCODE") == [under.id]
        assert found("\\") == []

    def test_the_member_filter_lists_a_users_groups(self, storage: Storage) -> None:
        store = _groups(storage)
        groups = self._seed_groups(store, 5)
        ann, bob, cid = _users(storage, 3)
        for group in (groups[0], groups[2], groups[4]):
            store.add_members(group.id, [ann.id], None, _BASE_TIME)
        store.add_members(groups[2].id, [bob.id], None, _BASE_TIME)
        mine = store.list_groups(GroupFilter(member=ann.id), None, 100)
        assert _ids_of(mine) == _ids_of([groups[0], groups[2], groups[4]])
        assert _all_groups(store, GroupFilter(member=ann.id), 1) == [
            store.get_group(g.id) for g in (groups[0], groups[2], groups[4])
        ]
        assert _ids_of(store.list_groups(GroupFilter(member=bob.id), None, 100)) == [groups[2].id]
        assert store.list_groups(GroupFilter(member=cid.id), None, 100) == []
        assert store.list_groups(GroupFilter(member=uuid.uuid4()), None, 100) == []
        with_name = GroupFilter(member=ann.id, display_name=name_key(groups[2].display_name))
        assert _ids_of(store.list_groups(with_name, None, 100)) == [groups[2].id]

    # -- updates --------------------------------------------------------------------

    def test_update_group_sets_fields_and_bumps_version(self, storage: Storage) -> None:
        store = _groups(storage)
        group = _add(store, make_group("Old", roles={"viewer"}, created_at=_BASE_TIME))
        later = _BASE_TIME + timedelta(hours=1, microseconds=7)
        fields = {
            "display_name": "New Name",
            "roles": frozenset({"editor", "admin"}),
            "external_id": "ext-new",
        }
        updated = store.update_group(group.id, fields, name_key("New Name"), 1, later)
        assert updated == Group(
            id=group.id,
            display_name="New Name",
            external_id="ext-new",
            roles=frozenset({"editor", "admin"}),
            created_at=group.created_at,
            updated_at=later,
            version=2,
        )
        assert store.get_group(group.id) == updated
        # The folded name moved with it: found by the new one, the old one free again.
        by_new = store.list_groups(GroupFilter(display_name=name_key("NEW NAME")), None, 10)
        assert by_new == [updated]
        assert store.list_groups(GroupFilter(display_name=name_key("old")), None, 10) == []
        _add(store, make_group("OLD"))
        # One field alone leaves the others; an external id may be taken away.
        again = store.update_group(group.id, {"external_id": None}, None, None, later)
        assert again == Group(
            id=group.id,
            display_name="New Name",
            external_id=None,
            roles=frozenset({"editor", "admin"}),
            created_at=group.created_at,
            updated_at=later,
            version=3,
        )
        roles = store.update_group(group.id, {"roles": frozenset()}, None, 3, later)
        assert roles.roles == frozenset()
        assert roles.display_name == "New Name"
        assert roles.version == 4

    def test_update_group_with_a_stale_version_fails_and_changes_nothing(
        self, storage: Storage
    ) -> None:
        store = _groups(storage)
        group = _add(store, make_group("Team"))
        first = store.update_group(group.id, {"roles": frozenset({"viewer"})}, None, 1, _BASE_TIME)
        with pytest.raises(PreconditionFailed):
            store.update_group(
                group.id, {"display_name": "Other"}, name_key("Other"), 1, _BASE_TIME
            )
        assert store.get_group(group.id) == first
        assert first.version == 2

    def test_update_missing_group_is_not_found(self, storage: Storage) -> None:
        store = _groups(storage)
        with pytest.raises(NotFound):
            store.update_group(uuid.uuid4(), {"roles": frozenset()}, None, None, _BASE_TIME)
        with pytest.raises(NotFound):
            store.update_group(uuid.uuid4(), {"roles": frozenset()}, None, 1, _BASE_TIME)

    def test_update_group_to_a_taken_name_or_external_id_conflicts(self, storage: Storage) -> None:
        store = _groups(storage)
        _add(store, make_group("Taken", external_id="taken-id"))
        group = _add(store, make_group("Free", external_id="free-id"))
        with pytest.raises(Conflict):
            store.update_group(
                group.id, {"display_name": "TAKEN"}, name_key("TAKEN"), None, _BASE_TIME
            )
        with pytest.raises(Conflict):
            store.update_group(group.id, {"external_id": "taken-id"}, None, 1, _BASE_TIME)
        assert store.get_group(group.id) == group
        # Its own name in another case is no conflict.
        renamed = store.update_group(
            group.id, {"display_name": "FREE"}, name_key("FREE"), 1, _BASE_TIME
        )
        assert renamed.display_name == "FREE"

    # -- deletes --------------------------------------------------------------------

    def test_delete_group_returns_it_and_takes_its_memberships(self, storage: Storage) -> None:
        store = _groups(storage)
        group = _add(store, make_group("Doomed", roles={"editor"}, external_id="doomed"))
        kept = _add(store, make_group("Kept", roles={"viewer"}))
        ann, bob = _users(storage, 2)
        _, group = store.add_members(group.id, [ann.id, bob.id], None, _BASE_TIME)
        store.add_members(kept.id, [ann.id], None, _BASE_TIME)
        assert store.delete_group(group.id, None) == group
        assert store.get_group(group.id) is None
        assert store.member_ids(group.id) == []
        assert store.list_members(group.id, None, 10) == []
        assert _ids_of(store.list_groups(GroupFilter(member=ann.id), None, 10)) == [kept.id]
        assert store.list_groups(GroupFilter(member=bob.id), None, 10) == []
        assert store.member_roles(ann.id) == frozenset({"viewer"})
        assert store.member_roles(bob.id) == frozenset()
        # The members are still users, and the name and external id are free again.
        assert storage.get_user(ann.id) == ann
        assert storage.get_user(bob.id) == bob
        _add(store, make_group("DOOMED", external_id="doomed"))
        with pytest.raises(NotFound):
            store.delete_group(group.id, None)
        with pytest.raises(NotFound):
            store.delete_group(uuid.uuid4(), 1)

    def test_delete_group_with_a_stale_version_fails(self, storage: Storage) -> None:
        store = _groups(storage)
        group = _add(store, make_group())
        [ann] = _users(storage, 1)
        _, group = store.add_members(group.id, [ann.id], None, _BASE_TIME)
        with pytest.raises(PreconditionFailed):
            store.delete_group(group.id, 1)
        assert store.get_group(group.id) == group
        assert store.member_ids(group.id) == [ann.id]
        assert store.delete_group(group.id, 2) == group

    # -- members --------------------------------------------------------------------

    def test_add_members_returns_the_new_ones_and_bumps_the_version_once(
        self, storage: Storage
    ) -> None:
        store = _groups(storage)
        group = _add(store, make_group(created_at=_BASE_TIME))
        ann, bob, cid = _users(storage, 3)
        t1 = _BASE_TIME + timedelta(minutes=1, microseconds=1)
        added, after = store.add_members(group.id, [ann.id, bob.id], 1, t1)
        assert sorted(added) == [ann.id, bob.id]
        assert after.version == 2
        assert after.updated_at == t1
        assert after == store.get_group(group.id)
        assert (after.display_name, after.roles, after.created_at) == (
            group.display_name,
            group.roles,
            group.created_at,
        )
        t2 = t1 + timedelta(minutes=1)
        added, after = store.add_members(group.id, [bob.id, cid.id], None, t2)
        assert added == [cid.id]
        assert (after.version, after.updated_at) == (3, t2)
        # Nobody new: nothing written, the version and time as they were.
        for ids in ([ann.id, bob.id], [cid.id], []):
            added, unchanged = store.add_members(group.id, ids, None, t2 + timedelta(hours=1))
            assert added == []
            assert unchanged == after
        assert store.get_group(group.id) == after
        assert store.member_ids(group.id) == sorted([ann.id, bob.id, cid.id])

    def test_add_members_of_an_unknown_or_deleted_user_adds_nobody(self, storage: Storage) -> None:
        store = _groups(storage)
        group = _add(store, make_group())
        ann, bob, gone = _users(storage, 3)
        storage.delete_user(gone.id, None, _BASE_TIME)
        stranger = uuid.uuid4()
        with pytest.raises(InvalidInput) as info:
            store.add_members(group.id, [ann.id, stranger, bob.id], None, _BASE_TIME)
        assert _members_field(info.value) == ["$.user_ids"]
        assert str(stranger) in info.value.errors[0].message
        assert str(ann.id) not in info.value.errors[0].message
        with pytest.raises(InvalidInput) as info:
            store.add_members(group.id, [gone.id, ann.id], None, _BASE_TIME)
        assert _members_field(info.value) == ["$.user_ids"]
        assert str(gone.id) in info.value.errors[0].message
        assert store.member_ids(group.id) == []
        assert store.get_group(group.id) == group
        # The store is usable afterwards, on this thread too.
        added, _ = store.add_members(group.id, [ann.id], None, _BASE_TIME)
        assert added == [ann.id]

    def test_add_members_to_a_missing_group_or_at_a_stale_version_fails(
        self, storage: Storage
    ) -> None:
        store = _groups(storage)
        [ann] = _users(storage, 1)
        with pytest.raises(NotFound):
            store.add_members(uuid.uuid4(), [ann.id], None, _BASE_TIME)
        group = _add(store, make_group())
        store.update_group(group.id, {"roles": frozenset({"viewer"})}, None, None, _BASE_TIME)
        with pytest.raises(PreconditionFailed):
            store.add_members(group.id, [ann.id], 1, _BASE_TIME)
        assert store.member_ids(group.id) == []
        added, after = store.add_members(group.id, [ann.id], 2, _BASE_TIME)
        assert (added, after.version) == ([ann.id], 3)

    def test_many_members_in_one_call(self, storage: Storage) -> None:
        # More than one statement's worth of ids: checks and writes over every chunk.
        store = _groups(storage)
        group = _add(store, make_group())
        users = _users(storage, _MANY)
        ids = _ids(users)
        added, after = store.add_members(group.id, ids[:700], None, _BASE_TIME)
        assert sorted(added) == ids[:700]
        assert after.version == 2
        # Members seen in any chunk are not added again; an unknown id in the last chunk
        # refuses the whole call.
        with pytest.raises(InvalidInput):
            store.add_members(group.id, [*ids[300:], uuid.uuid4()], None, _BASE_TIME)
        assert store.member_ids(group.id) == ids[:700]
        added, after = store.add_members(group.id, ids[300:], None, _BASE_TIME)
        assert sorted(added) == ids[700:]
        assert after.version == 3
        assert store.member_ids(group.id) == ids
        removed, after = store.remove_members(group.id, ids[100:], None, _BASE_TIME)
        assert sorted(removed) == ids[100:]
        assert after.version == 4
        assert store.member_ids(group.id) == ids[:100]

    def test_remove_members_ignores_non_members(self, storage: Storage) -> None:
        store = _groups(storage)
        group = _add(store, make_group(created_at=_BASE_TIME))
        ann, bob, cid = _users(storage, 3)
        _, group = store.add_members(group.id, [ann.id, bob.id], None, _BASE_TIME)
        t = _BASE_TIME + timedelta(hours=2, microseconds=3)
        removed, after = store.remove_members(group.id, [ann.id, cid.id, uuid.uuid4()], 2, t)
        assert removed == [ann.id]
        assert (after.version, after.updated_at) == (3, t)
        assert store.get_group(group.id) == after
        assert store.member_ids(group.id) == [bob.id]
        for ids in ([ann.id], [cid.id, uuid.uuid4()], []):
            removed, unchanged = store.remove_members(group.id, ids, None, t + timedelta(hours=1))
            assert removed == []
            assert unchanged == after
        with pytest.raises(PreconditionFailed):
            store.remove_members(group.id, [bob.id], 2, t)
        assert store.member_ids(group.id) == [bob.id]
        with pytest.raises(NotFound):
            store.remove_members(uuid.uuid4(), [bob.id], None, t)
        removed, after = store.remove_members(group.id, [bob.id], 3, t)
        assert (removed, after.version) == ([bob.id], 4)
        assert store.member_ids(group.id) == []

    def test_touch_groups_of_bumps_only_the_users_groups(self, storage: Storage) -> None:
        store = _groups(storage)
        ann, bob = _users(storage, 2)
        first = _add(store, make_group("First", created_at=_BASE_TIME))
        second = _add(store, make_group("Second", created_at=_BASE_TIME))
        other = _add(store, make_group("Other", created_at=_BASE_TIME))
        _, first = store.add_members(first.id, [ann.id, bob.id], None, _BASE_TIME)
        _, second = store.add_members(second.id, [ann.id], None, _BASE_TIME)
        _, other = store.add_members(other.id, [bob.id], None, _BASE_TIME)
        t = _BASE_TIME + timedelta(minutes=5, microseconds=7)
        assert store.touch_groups_of(ann.id, t) == 2
        for before in (first, second):
            after = store.get_group(before.id)
            assert after is not None
            assert (after.version, after.updated_at) == (before.version + 1, t)
            assert store.member_ids(before.id) == store.member_ids(after.id)
        assert store.get_group(other.id) == other
        assert store.touch_groups_of(uuid.uuid4(), t) == 0

    def test_selects_groups_as_group_matches_says(self, storage: Storage) -> None:
        """Every field, every comparison, and/or/not, sorts and pages, against ``group_matches``."""
        store = _groups(storage)
        ann, bob, cid = _users(storage, 3)
        names = ["Admins", "ADMINS-2", "Straße Team", "Zoë", "x%_\\", "Lab"]
        externals = ["00gA", None, "00ga", None, "ext-%", "X-1"]
        groups = []
        for n, (name, external) in enumerate(zip(names, externals, strict=True)):
            at = _BASE_TIME + timedelta(seconds=n % 3, microseconds=n)
            group = _add(store, make_group(name, external_id=external, created_at=at))
            groups.append(group)
        store.add_members(groups[0].id, [ann.id, bob.id], None, _BASE_TIME)
        store.add_members(groups[2].id, [cid.id], None, _BASE_TIME)
        store.add_members(groups[3].id, [bob.id], None, _BASE_TIME)
        storage.delete_user(cid.id, None, _BASE_TIME)  # a deleted member is no member
        groups = [store.get_group(g.id) for g in groups]  # type: ignore[misc]
        live = {ann.id, bob.id}

        def members_of(group_id: uuid.UUID) -> set[uuid.UUID]:
            return {u for u in store.member_ids(group_id) if u in live}

        moment = groups[2].created_at
        exprs: list[Expr] = [
            Compare("display_name", "eq", "admins"),
            Compare("display_name", "ne", "admins"),
            Compare("display_name", "co", "team"),
            Compare("display_name", "sw", "adm"),
            Compare("display_name", "ew", "-2"),
            Compare("display_name", "co", "%"),
            Compare("display_name", "co", "_"),
            Compare("display_name", "eq", "straße team"),
            Compare("external_id", "eq", "00gA"),
            Compare("external_id", "ne", "00gA"),
            Compare("external_id", "co", "%"),
            Compare("external_id", "sw", "00g"),
            Present("external_id"),
            Not(Present("external_id")),
            Not(Compare("external_id", "eq", "X-1")),
            Compare("id", "eq", groups[4].id),
            Compare("id", "ne", groups[4].id),
            Compare("member", "eq", bob.id),
            Compare("member", "eq", cid.id),
            Not(Compare("member", "eq", ann.id)),
            Compare("created_at", "gt", moment),
            Compare("created_at", "le", moment),
            Compare("updated_at", "ge", _BASE_TIME),
            And((Compare("member", "eq", bob.id), Present("external_id"))),
            Or((Compare("display_name", "sw", "z"), Compare("external_id", "eq", "X-1"))),
            Not(Or((Compare("display_name", "co", "a"), Compare("member", "eq", ann.id)))),
        ]
        for expr in exprs:
            prepared = prepare_group_filter(expr)
            want = [g for g in groups if group_matches(prepared, g, members_of)]
            for sort in ("created_at", "-created_at", "display_name", "-display_name"):
                key = _group_sort_key(sort.removeprefix("-"))
                ordered = sorted(want, key=key, reverse=sort.startswith("-"))
                got = store.select_groups(prepared, sort, 0, 100)
                assert [g.id for g in got] == [g.id for g in ordered], (expr, sort)
                pages = []
                for offset in range(0, len(ordered) + 2, 2):
                    pages += store.select_groups(prepared, sort, offset, 2)
                assert [g.id for g in pages] == [g.id for g in ordered], (expr, sort)
            assert store.count_selected_groups(prepared) == len(want), expr
            oldest = sorted(want, key=_group_sort_key("created_at"))
            for i, group in enumerate(oldest):
                after = Position(group.created_at, group.id)
                rest = store.select_groups(prepared, "created_at", 0, 2, after)
                assert [g.id for g in rest] == [g.id for g in oldest[i + 1 : i + 3]], expr

    def test_member_ids_include_deleted_users_and_list_members_only_live_ones(
        self, storage: Storage
    ) -> None:
        store = _groups(storage)
        group = _add(store, make_group())
        other = _add(store, make_group("Other"))
        users = _users(storage, 8)
        store.add_members(group.id, _ids(users[:7]), None, _BASE_TIME)
        store.add_members(other.id, [users[7].id], None, _BASE_TIME)
        gone = users[3]
        storage.delete_user(gone.id, None, _BASE_TIME)
        assert store.member_ids(group.id) == _ids(users[:7])
        live = [u for u in users[:7] if u.id != gone.id]
        assert store.list_members(group.id, None, 100) == live
        # Pages by id, after the last one seen, even a deleted one's.
        pages: list[User] = []
        after: uuid.UUID | None = None
        while True:
            page = store.list_members(group.id, after, 2)
            pages += page
            if len(page) < 2:
                break
            after = page[-1].id
        assert pages == live
        assert store.list_members(group.id, gone.id, 100) == [u for u in live if u.id > gone.id]
        assert store.list_members(group.id, users[6].id, 100) == []
        # Restored, it is listed again: it never left.
        restored = storage.restore_user(gone.id, _BASE_TIME)
        assert restored is not None
        assert store.list_members(group.id, None, 100) == sorted(
            [*live, restored], key=lambda u: u.id
        )
        assert store.member_ids(uuid.uuid4()) == []
        assert store.list_members(uuid.uuid4(), None, 10) == []

    def test_member_roles_are_the_union_of_the_users_groups_roles(self, storage: Storage) -> None:
        store = _groups(storage)
        viewers = _add(store, make_group("Viewers", roles={"viewer"}))
        editors = _add(store, make_group("Editors", roles={"editor", "viewer"}))
        plain = _add(store, make_group("Plain"))
        admins = _add(store, make_group("Admins", roles={"admin"}))
        ann, bob, cid, dan = _users(storage, 4)
        for group in (viewers, editors, plain):
            store.add_members(group.id, [ann.id], None, _BASE_TIME)
        store.add_members(plain.id, [bob.id], None, _BASE_TIME)
        store.add_members(admins.id, [dan.id], None, _BASE_TIME)
        assert store.member_roles(ann.id) == frozenset({"viewer", "editor"})
        assert store.member_roles(bob.id) == frozenset()  # a group granting nothing
        assert store.member_roles(cid.id) == frozenset()  # no group at all
        assert store.member_roles(uuid.uuid4()) == frozenset()
        assert store.member_roles(dan.id) == frozenset({"admin"})
        # A group's roles are read as they are now.
        store.update_group(plain.id, {"roles": frozenset({"auditor"})}, None, None, _BASE_TIME)
        assert store.member_roles(bob.id) == frozenset({"auditor"})
        # A deleted user holds no role by its groups; restored, it does again.
        storage.delete_user(dan.id, None, _BASE_TIME)
        assert store.member_roles(dan.id) == frozenset()
        storage.restore_user(dan.id, _BASE_TIME)
        assert store.member_roles(dan.id) == frozenset({"admin"})
        store.remove_members(admins.id, [dan.id], None, _BASE_TIME)
        assert store.member_roles(dan.id) == frozenset()

    def test_purging_a_user_takes_it_out_of_its_groups(self, storage: Storage) -> None:
        store = _groups(storage)
        first = _add(store, make_group("First", roles={"viewer"}))
        second = _add(store, make_group("Second"))
        ann, bob, cid = _users(storage, 3)
        for group in (first, second):
            store.add_members(group.id, [ann.id, bob.id, cid.id], None, _BASE_TIME)
        storage.delete_user(ann.id, None, _BASE_TIME)
        assert storage.purge_user(ann.id)
        remaining = sorted([bob.id, cid.id])
        assert store.member_ids(first.id) == remaining
        assert store.member_ids(second.id) == remaining
        assert store.list_groups(GroupFilter(member=ann.id), None, 10) == []
        # By the cut-off, as the purge job does.
        storage.delete_user(bob.id, None, _BASE_TIME)
        assert storage.purge_users(_BASE_TIME + timedelta(days=1)) == 1
        assert store.member_ids(first.id) == [cid.id]
        assert store.member_ids(second.id) == [cid.id]
        assert store.member_roles(cid.id) == frozenset({"viewer"})
        # The groups stay, and take the purged ids' users no more.
        assert store.get_group(first.id) is not None
        with pytest.raises(InvalidInput):
            store.add_members(first.id, [bob.id], None, _BASE_TIME)

    # -- races ----------------------------------------------------------------------

    def test_concurrent_member_additions_are_all_kept_and_counted(self, storage: Storage) -> None:
        from userplane.testing.storage import run_concurrently

        store = _groups(storage)
        group = _add(store, make_group())
        users = _users(storage, 7)
        already = users[6]
        store.add_members(group.id, [already.id], None, _BASE_TIME)  # version 2
        shared = users[5]
        # Threads 0-4 each add their own user; 5-7 all add one user (one of them adds it);
        # 8 adds a member already there (adds nobody).
        plan: list[Sequence[uuid.UUID]] = [[users[i].id] for i in range(5)]
        plan += [[shared.id]] * 3 + [[already.id]]

        def add(i: int) -> tuple[list[uuid.UUID], Group]:
            return store.add_members(group.id, plan[i], None, datetime.now(UTC))

        results = run_concurrently(len(plan), add)
        outcomes = [r for r in results if isinstance(r, tuple)]
        assert len(outcomes) == len(plan), results
        adders = [added for added, _ in outcomes if added]
        assert sorted(u for added in adders for u in added) == _ids(users[:6])
        assert len(adders) == 6
        assert [added for added, _ in outcomes[5:8]].count([shared.id]) == 1
        assert outcomes[8][0] == []
        final = store.get_group(group.id)
        assert final is not None
        assert final.version == 2 + len(adders)
        assert store.member_ids(group.id) == _ids(users)
        # Each write saw the one before it: the versions handed back are all different.
        versions = sorted(g.version for added, g in outcomes if added)
        assert versions == list(range(3, 3 + len(adders)))

    def test_concurrent_creates_of_one_name_let_exactly_one_win(self, storage: Storage) -> None:
        from userplane.testing.storage import run_concurrently

        store = _groups(storage)
        spellings = ["Ops", "OPS", "ops", "oPs"]
        results = run_concurrently(8, lambda i: _add(store, make_group(spellings[i % 4])))
        wins = [r for r in results if isinstance(r, Group)]
        assert len(wins) == 1, results
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, Group)), results
        assert store.list_groups(GroupFilter(display_name="ops"), None, 10) == wins


def _ids_of(groups: Iterable[Group | None]) -> list[uuid.UUID]:
    return [g.id for g in groups if g is not None]
