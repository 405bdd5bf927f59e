"""Groups through the ``GroupService`` of a real ``Registry``, on SQLite and PostgreSQL.

Every test takes ``registry`` (``conftest.py``): it runs on a fresh SQLite file and
on PostgreSQL. The audit plugin is on (an entry point, as in production): its events
are the change records a write leaves, read as readers see them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from userplane import Registry
from userplane.auth import Principal, acting_as
from userplane.errors import Conflict, Forbidden, InvalidInput, NotFound, PreconditionFailed
from userplane.groups import (
    MAX_DISPLAY_NAME,
    MAX_MEMBERS_PER_CALL,
    Group,
    GroupChanges,
    GroupQuery,
    NewGroup,
)
from userplane.plugins.audit import trail_of
from userplane.plugins.audit.query import parse_query
from userplane.testing import run_concurrently
from userplane.users import NewUser, User, UserChanges

EDITOR = Principal(id="key:editor", kind="api-key", roles=frozenset({"editor"}), name="editor")
ADMIN = Principal(id="key:admin", kind="api-key", roles=frozenset({"admin"}), name="admin")


# -- helpers ---------------------------------------------------------------------------------


def make_users(registry: Registry, count: int, prefix: str = "user") -> list[User]:
    """``count`` users made through the service, sorted by id (the members' order)."""
    made = [
        registry.users.create(NewUser(f"{prefix}{n}@example.org", f"User {n}"))
        for n in range(count)
    ]
    return sorted(made, key=lambda u: u.id)


def member_ids(registry: Registry, group_id: uuid.UUID) -> list[uuid.UUID]:
    """The group's live members' ids, every page of them."""
    ids: list[uuid.UUID] = []
    cursor = None
    while True:
        page = registry.groups.members(group_id, limit=100, cursor=cursor)
        ids += [u.id for u in page.items]
        if page.next is None:
            return ids
        cursor = page.next


def events(registry: Registry, **filters: str) -> list[dict[str, Any]]:
    """Every audit event matching ``filters``, oldest first."""
    query = dict(filters)
    out: list[dict[str, Any]] = []
    # An event is listed once every transaction older than it has ended, in any database
    # of the cluster: beside other suites' transactions, that may take longer than a
    # reader's own wait.
    trail_of(registry).catch_up(wait=30)
    while True:
        page = trail_of(registry).list(parse_query({**query, "limit": "500"}))
        out += page.items
        if page.next is None:
            return out
        query["cursor"] = page.next


def group_events(registry: Registry) -> list[dict[str, Any]]:
    return events(registry, target_type="group")


def fields_at_fault(call: Any) -> list[str]:
    """The fields ``call()``'s ``InvalidInput`` names."""
    with pytest.raises(InvalidInput) as info:
        call()
    return [e.field for e in info.value.errors]


def all_groups(registry: Registry, **query: Any) -> list[Group]:
    """Every group ``GroupQuery(**query)`` matches, walked page by page with cursors."""
    seen: list[Group] = []
    cursor = None
    while True:
        page = registry.groups.list(GroupQuery(cursor=cursor, **query))
        seen += page.items
        if page.next is None:
            return seen
        cursor = page.next


# -- create, read, update, delete ------------------------------------------------------------


def test_create_get_rename_and_set_roles(registry: Registry) -> None:
    groups = registry.groups
    group = groups.create(NewGroup("Engineers", frozenset({"viewer"}), external_id="idp-1"))
    assert (group.display_name, group.roles, group.external_id) == (
        "Engineers",
        frozenset({"viewer"}),
        "idp-1",
    )
    assert group.version == 1
    assert group.created_at == group.updated_at
    assert groups.get(group.id) == group

    renamed = groups.update(group.id, GroupChanges(display_name="Platform"))
    assert (renamed.display_name, renamed.roles, renamed.version) == (
        "Platform",
        frozenset({"viewer"}),
        2,
    )
    assert renamed.updated_at >= group.updated_at
    assert renamed.created_at == group.created_at
    roled = groups.update(
        group.id, GroupChanges(roles=frozenset({"editor", "viewer"})), expected_version=2
    )
    assert (roled.display_name, roled.roles, roled.version) == (
        "Platform",
        frozenset({"editor", "viewer"}),
        3,
    )
    cleared = groups.update(group.id, GroupChanges(roles=frozenset(), external_id=None))
    assert (cleared.roles, cleared.external_id, cleared.version) == (frozenset(), None, 4)
    assert groups.get(group.id) == cleared

    with pytest.raises(PreconditionFailed):
        groups.update(group.id, GroupChanges(display_name="Stale"), expected_version=3)
    with pytest.raises(NotFound):
        groups.update(uuid.uuid4(), GroupChanges(display_name="Nobody"))
    with pytest.raises(NotFound):
        groups.get(uuid.uuid4())

    # The name is taken in any letter case; the old name is free again.
    with pytest.raises(Conflict):
        groups.create(NewGroup("PLATFORM"))
    other = groups.create(NewGroup("engineers", external_id="idp-2"))
    with pytest.raises(Conflict):
        groups.update(other.id, GroupChanges(display_name="platform"))
    with pytest.raises(Conflict, match="external id 'idp-2'"):
        groups.create(NewGroup("Someone else", external_id="idp-2"))
    with pytest.raises(Conflict, match="named 'PLATFORM'"):
        groups.create(NewGroup("PLATFORM", external_id="idp-3"))
    assert groups.get(other.id) == other

    deleted = groups.delete(group.id, expected_version=4)
    assert deleted == cleared
    with pytest.raises(NotFound):
        groups.get(group.id)
    with pytest.raises(NotFound):
        groups.delete(group.id)
    with pytest.raises(PreconditionFailed):
        groups.delete(other.id, expected_version=9)
    assert groups.get(other.id) == other


def test_unknown_roles_are_refused_naming_each(registry: Registry) -> None:
    groups = registry.groups

    def refusal(call: Any) -> str:
        """The message of the one error ``call()`` raises, at ``$.roles``."""
        with pytest.raises(InvalidInput) as info:
            call()
        [error] = info.value.errors
        assert error.field == "$.roles"
        return error.message

    message = refusal(lambda: groups.create(NewGroup("Magic", frozenset({"wizard", "viewer"}))))
    assert "'wizard'" in message
    assert "'viewer'" not in message  # known roles are not named as unknown
    message = refusal(lambda: groups.create(NewGroup("Magic", frozenset({"bard", "wizard"}))))
    assert "'bard'" in message
    assert "'wizard'" in message
    assert all_groups(registry) == []
    group = groups.create(NewGroup("Magic"))
    message = refusal(lambda: groups.update(group.id, GroupChanges(roles=frozenset({"root"}))))
    assert "'root'" in message
    assert groups.get(group.id) == group


BAD_NAMES = [
    "",
    "   ",
    "x" * (MAX_DISPLAY_NAME + 1),
    "Ops\x00",
    "Ops\x1b[31m",
    "Ops\u0085",  # a C1 control
    "Admins\u202e",  # a right-to-left override
    "Ad\u200bmins",  # a zero-width space
]


def test_display_name_rules(registry: Registry) -> None:
    groups = registry.groups
    group = groups.create(NewGroup("Fine"))
    for name in BAD_NAMES:
        assert fields_at_fault(lambda n=name: groups.create(NewGroup(n))) == ["$.display_name"]
        assert fields_at_fault(
            lambda n=name: groups.update(group.id, GroupChanges(display_name=n))
        ) == ["$.display_name"], repr(name)
    # Every field at fault at once.
    assert fields_at_fault(
        lambda: groups.create(NewGroup(" ", frozenset({"nope"}), external_id=" x"))
    ) == ["$.display_name", "$.external_id", "$.roles"]
    for external_id in ("", " padded", "x" * 256, "tab\there"):
        assert fields_at_fault(
            lambda e=external_id: groups.create(NewGroup("Other", external_id=e))
        ) == ["$.external_id"]
    assert [g.id for g in all_groups(registry)] == [group.id]
    assert groups.get(group.id) == group
    longest = groups.create(NewGroup("x" * MAX_DISPLAY_NAME))
    assert groups.find("X" * MAX_DISPLAY_NAME) == longest
    assert groups.create(NewGroup("Équipe Ünïcode 😀")).display_name == "Équipe Ünïcode 😀"


def test_a_no_op_update_writes_nothing(registry: Registry) -> None:
    groups = registry.groups
    group = groups.create(NewGroup("Same", frozenset({"viewer"}), external_id="same"))
    before = group_events(registry)
    for changes in (
        GroupChanges(),
        GroupChanges(display_name="Same"),
        GroupChanges(roles=frozenset({"viewer"})),
        GroupChanges(display_name="Same", roles=frozenset({"viewer"}), external_id="same"),
    ):
        assert groups.update(group.id, changes) == group
        assert groups.update(group.id, changes, expected_version=1) == group
    with pytest.raises(PreconditionFailed):
        groups.update(group.id, GroupChanges(display_name="Same"), expected_version=2)
    assert groups.get(group.id) == group
    assert group_events(registry) == before
    # Another letter case is another display name (the same folded name): a change.
    recased = groups.update(group.id, GroupChanges(display_name="SAME"))
    assert (recased.display_name, recased.version) == ("SAME", 2)


def test_find_by_id_or_name_and_list_filters(registry: Registry) -> None:
    groups = registry.groups
    made = [groups.create(NewGroup(f"Team {n}", external_id=f"ext-{n}")) for n in range(7)]
    percent = groups.create(NewGroup("100% Ops"))
    assert groups.find(str(made[3].id)) == made[3]
    assert groups.find("team 3") == made[3]
    assert groups.find("TEAM 3") == made[3]
    with pytest.raises(NotFound):
        groups.find("Team 33")
    with pytest.raises(NotFound):
        groups.find(str(uuid.uuid4()))

    assert all_groups(registry, limit=3) == [*made, percent]
    assert all_groups(registry, limit=1, q="team") == made
    assert [g.id for g in all_groups(registry, q="%")] == [percent.id]
    assert [g.id for g in all_groups(registry, q="M 1")] == [made[1].id]
    assert [g.id for g in all_groups(registry, external_id="ext-5")] == [made[5].id]
    assert [g.id for g in all_groups(registry, display_name="TEAM 6")] == [made[6].id]
    [ann] = make_users(registry, 1)
    groups.add_members(made[2].id, [ann.id])
    groups.add_members(made[4].id, [ann.id])
    assert [g.id for g in all_groups(registry, member=ann.id, limit=1)] == [
        made[2].id,
        made[4].id,
    ]
    assert [g.id for g in groups.groups_of(ann.id)] == [made[2].id, made[4].id]
    assert list(groups.groups_of(uuid.uuid4())) == []

    assert fields_at_fault(lambda: groups.list(GroupQuery(limit=0))) == ["$.limit"]
    assert fields_at_fault(lambda: groups.list(GroupQuery(cursor="nonsense"))) == ["$.cursor"]
    too_long = "x" * (MAX_DISPLAY_NAME + 1)
    assert fields_at_fault(lambda: groups.list(GroupQuery(q=too_long))) == ["$.q"]
    assert fields_at_fault(lambda: groups.list(GroupQuery(display_name="a\x00"))) == [
        "$.display_name"
    ]
    member_cursor = _member_cursor(registry, ann)
    assert fields_at_fault(lambda: groups.list(GroupQuery(cursor=member_cursor))) == ["$.cursor"]


def _member_cursor(registry: Registry, user: User) -> str:
    """A cursor of a member list (another order than a group list's)."""
    group = registry.groups.create(NewGroup(f"Cursor {uuid.uuid4()}"))
    other = registry.users.create(NewUser(f"cursor-{uuid.uuid4().hex[:8]}@example.org"))
    registry.groups.add_members(group.id, [user.id, other.id])
    page = registry.groups.members(group.id, limit=1)
    assert page.next is not None
    return page.next


# -- members ---------------------------------------------------------------------------------


def test_members_page_by_id_with_cursors_live_users_only(registry: Registry) -> None:
    groups = registry.groups
    group = groups.create(NewGroup("Paged"))
    users = make_users(registry, 7)
    after = groups.add_members(group.id, [u.id for u in reversed(users)])
    assert after.version == 2
    gone = users[2]
    registry.users.delete(gone.id)
    live = [u for u in users if u.id != gone.id]

    pages = []
    cursor = None
    while True:
        page = groups.members(group.id, limit=3, cursor=cursor)
        pages.append(page.items)
        if page.next is None:
            break
        cursor = page.next
    assert [len(p) for p in pages] == [3, 3]
    # The members as users are read: opened, the deleted one left out.
    assert [u.id for p in pages for u in p] == [u.id for u in live]
    assert [u.email for p in pages for u in p] == [u.email for u in live]
    registry.users.restore(gone.id)
    assert member_ids(registry, group.id) == [u.id for u in users]

    assert fields_at_fault(lambda: groups.members(group.id, limit=0)) == ["$.limit"]
    assert fields_at_fault(lambda: groups.members(group.id, cursor="x")) == ["$.cursor"]
    groups.create(NewGroup("Second"))
    group_cursor = groups.list(GroupQuery(limit=1)).next
    assert group_cursor is not None
    assert fields_at_fault(lambda: groups.members(group.id, cursor=group_cursor)) == ["$.cursor"]
    with pytest.raises(NotFound):
        groups.members(uuid.uuid4())


def test_add_and_remove_members(registry: Registry) -> None:
    groups = registry.groups
    group = groups.create(NewGroup("Members"))
    ann, bob, cid = make_users(registry, 3)
    assert groups.add_members(group.id, [ann.id, ann.id, bob.id]).version == 2
    assert groups.add_members(group.id, [ann.id]).version == 2  # nobody new
    assert groups.add_members(group.id, []).version == 2
    with pytest.raises(PreconditionFailed):
        groups.add_members(group.id, [cid.id], expected_version=1)
    stranger = uuid.uuid4()
    with pytest.raises(InvalidInput) as info:
        groups.add_members(group.id, [cid.id, stranger])
    assert [e.field for e in info.value.errors] == ["$.user_ids"]
    assert str(stranger) in str(info.value)
    registry.users.delete(cid.id)
    assert fields_at_fault(lambda: groups.add_members(group.id, [cid.id])) == ["$.user_ids"]
    assert member_ids(registry, group.id) == sorted([ann.id, bob.id])
    assert groups.remove_members(group.id, [cid.id, stranger]).version == 2  # none were
    assert groups.remove_members(group.id, [ann.id], expected_version=2).version == 3
    assert member_ids(registry, group.id) == [bob.id]
    with pytest.raises(NotFound):
        groups.add_members(uuid.uuid4(), [bob.id])
    with pytest.raises(NotFound):
        groups.remove_members(uuid.uuid4(), [bob.id])
    too_many = [uuid.uuid4() for _ in range(MAX_MEMBERS_PER_CALL + 1)]
    assert fields_at_fault(lambda: groups.add_members(group.id, too_many)) == ["$.user_ids"]


def test_deleting_or_restoring_a_member_gives_its_groups_a_new_version(
    registry: Registry,
) -> None:
    """Who a group lists changes with its member's deletion: so does its version (its ETag)."""
    groups = registry.groups
    team = groups.create(NewGroup("Team"))
    bystanders = groups.create(NewGroup("Bystanders"))
    ann, bob = make_users(registry, 2)
    team = groups.add_members(team.id, [ann.id, bob.id])
    bystanders = groups.add_members(bystanders.id, [bob.id])
    registry.users.delete(ann.id)
    after_delete = groups.get(team.id)
    assert after_delete.version == team.version + 1
    assert groups.get(bystanders.id) == bystanders
    registry.users.restore(ann.id)
    assert groups.get(team.id).version == team.version + 2
    # A delete that fails (a stale version) leaves every group as it was.
    with pytest.raises(PreconditionFailed):
        registry.users.delete(ann.id, expected_version=1)
    assert groups.get(team.id).version == team.version + 2


def test_set_members_makes_the_members_exactly_those(registry: Registry) -> None:
    groups = registry.groups
    group = groups.create(NewGroup("Exact"))
    a, b, c, d = make_users(registry, 4)
    group = groups.set_members(group.id, [a.id, b.id, c.id])
    assert member_ids(registry, group.id) == sorted([a.id, b.id, c.id])
    assert group.version == 2  # only added: one write
    same = groups.set_members(group.id, [c.id, b.id, a.id, a.id])
    assert same == group  # nothing to change: nothing written
    only_removed = groups.set_members(group.id, [a.id, b.id], expected_version=2)
    assert only_removed.version == 3
    mixed = groups.set_members(group.id, [b.id, d.id])
    assert member_ids(registry, group.id) == sorted([b.id, d.id])
    assert mixed.version > only_removed.version
    assert groups.get(group.id) == mixed
    with pytest.raises(PreconditionFailed):
        groups.set_members(group.id, [a.id], expected_version=only_removed.version)
    # Removing happens before adding; an unknown id then undoes the removal too.
    with pytest.raises(InvalidInput):
        groups.set_members(group.id, [a.id, uuid.uuid4()])
    assert member_ids(registry, group.id) == sorted([b.id, d.id])
    assert groups.get(group.id) == mixed
    emptied = groups.set_members(group.id, [])
    assert member_ids(registry, group.id) == []
    assert emptied.version == mixed.version + 1
    with pytest.raises(NotFound):
        groups.set_members(uuid.uuid4(), [])


def test_roles_of_is_the_union_of_the_users_groups(registry: Registry) -> None:
    groups = registry.groups
    viewers = groups.create(NewGroup("Viewers", frozenset({"viewer"})))
    editors = groups.create(NewGroup("Editors", frozenset({"editor"})))
    plain = groups.create(NewGroup("Plain"))
    ann, bob, cid = make_users(registry, 3)
    for group in (viewers, editors, plain):
        groups.add_members(group.id, [ann.id])
    groups.add_members(plain.id, [bob.id])
    assert groups.roles_of(ann.id) == frozenset({"viewer", "editor"})
    assert groups.roles_of(bob.id) == frozenset()
    assert groups.roles_of(cid.id) == frozenset()
    assert groups.roles_of(uuid.uuid4()) == frozenset()
    groups.update(plain.id, GroupChanges(roles=frozenset({"admin"})))
    assert groups.roles_of(bob.id) == frozenset({"admin"})
    groups.remove_members(editors.id, [ann.id])
    assert groups.roles_of(ann.id) == frozenset({"viewer", "admin"})
    registry.users.delete(ann.id)
    assert groups.roles_of(ann.id) == frozenset()
    registry.users.restore(ann.id)
    assert groups.roles_of(ann.id) == frozenset({"viewer", "admin"})
    groups.delete(plain.id)
    assert groups.roles_of(ann.id) == frozenset({"viewer"})
    assert groups.roles_of(bob.id) == frozenset()
    registry.users.delete(ann.id)
    registry.users.purge_user(ann.id)
    assert member_ids(registry, viewers.id) == []


# -- the rule against escalation -------------------------------------------------------------


def test_an_editor_may_not_hand_out_or_take_away_admin(registry: Registry) -> None:
    groups = registry.groups
    ann, bob, cid = make_users(registry, 3)
    # Code embedding the core acts without a principal: not checked.
    admins = groups.create(NewGroup("Admins", frozenset({"admin"})))
    admins = groups.add_members(admins.id, [ann.id])
    before = group_events(registry)

    with acting_as(EDITOR):
        plain = groups.create(NewGroup("Plain"))
        viewers = groups.create(NewGroup("Viewers", frozenset({"viewer"})))
        editors = groups.create(NewGroup("Editors", frozenset({"editor", "viewer"})))
        groups.add_members(viewers.id, [bob.id, cid.id])
        groups.remove_members(viewers.id, [cid.id])
        groups.set_members(editors.id, [bob.id])
        groups.update(plain.id, GroupChanges(roles=frozenset({"viewer"})))
        groups.update(plain.id, GroupChanges(roles=frozenset()))
        groups.delete(viewers.id)
        allowed = group_events(registry)

        refused: dict[str, Callable[[], object]] = {
            "create": lambda: groups.create(NewGroup("Admins 2", frozenset({"admin"}))),
            "create-mixed": lambda: groups.create(
                NewGroup("Admins 3", frozenset({"admin", "viewer"}))
            ),
            "add": lambda: groups.add_members(admins.id, [bob.id]),
            "remove": lambda: groups.remove_members(admins.id, [ann.id]),
            "set": lambda: groups.set_members(admins.id, [ann.id, bob.id]),
            "delete": lambda: groups.delete(admins.id),
            "grant": lambda: groups.update(editors.id, GroupChanges(roles=frozenset({"admin"}))),
            "grant-plain": lambda: groups.update(
                plain.id, GroupChanges(roles=frozenset({"admin"}))
            ),
            "take-away": lambda: groups.update(
                admins.id, GroupChanges(roles=frozenset({"viewer"}))
            ),
        }
        for name, call in refused.items():
            with pytest.raises(Forbidden, match="admin"):
                call()
            assert group_events(registry) == allowed, f"{name} left a record"
        # Refused even when the member is already there (nothing would change).
        with pytest.raises(Forbidden):
            groups.add_members(admins.id, [ann.id])

    assert groups.get(admins.id) == admins
    assert member_ids(registry, admins.id) == [ann.id]
    assert [g.display_name for g in all_groups(registry)] == ["Admins", "Plain", "Editors"]
    assert len(allowed) > len(before)
    assert all(e["actor"] == EDITOR.id for e in allowed[len(before) :])

    with acting_as(ADMIN):
        groups.add_members(admins.id, [bob.id])
        groups.remove_members(admins.id, [ann.id])
        groups.set_members(admins.id, [cid.id])
        groups.update(editors.id, GroupChanges(roles=frozenset({"admin"})))
        groups.create(NewGroup("Admins 2", frozenset({"admin"})))
        groups.delete(admins.id)
    assert groups.roles_of(bob.id) == frozenset({"admin"})  # by Editors, now granting admin


# -- change records --------------------------------------------------------------------------


def test_each_write_records_its_change(registry: Registry) -> None:
    groups = registry.groups
    ann, bob, cid = make_users(registry, 3)
    with acting_as(ADMIN):
        group = groups.create(NewGroup("Audited", frozenset({"viewer", "editor"}), "ext-a"))
    group = groups.update(group.id, GroupChanges(display_name="Audited 2", roles=frozenset()))
    added = groups.add_members(group.id, [ann.id, bob.id])
    removed = groups.remove_members(group.id, [ann.id, cid.id])
    groups.set_members(group.id, [cid.id])
    final = groups.get(group.id)
    groups.delete(group.id)

    got = group_events(registry)
    assert [e["action"] for e in got] == [
        "group.created",
        "group.updated",
        "group.member_added",
        "group.member_added",
        "group.member_removed",
        "group.member_removed",
        "group.member_added",
        "group.deleted",
    ]
    for event in got:
        assert event["target"] == {"type": "group", "id": str(group.id)}
    created, updated, add_a, add_b, rem_a, rem_b, add_c, deleted = got
    assert created["actor"] == ADMIN.id
    assert created["user_id"] is None
    assert created["changes"] == {
        "display_name": {"before": None, "after": "Audited"},
        "external_id": {"before": None, "after": "ext-a"},
        "roles": {"before": None, "after": ["editor", "viewer"]},
        "version": {"before": None, "after": 1},
    }
    assert updated["changes"] == {
        "display_name": {"before": "Audited", "after": "Audited 2"},
        "roles": {"before": ["editor", "viewer"], "after": []},
        "version": {"before": 1, "after": 2},
    }
    assert updated["user_id"] is None
    assert sorted([add_a["user_id"], add_b["user_id"]]) == sorted([str(ann.id), str(bob.id)])
    for event in (add_a, add_b):
        assert event["changes"] == {
            "member": {"before": None, "after": event["user_id"]},
            "version": {"before": None, "after": added.version},
        }
    assert rem_a["user_id"] == str(ann.id)
    assert rem_a["changes"] == {
        "member": {"before": str(ann.id), "after": None},
        "version": {"before": None, "after": removed.version},
    }
    assert rem_b["user_id"] == str(bob.id)
    assert rem_b["changes"]["member"] == {"before": str(bob.id), "after": None}
    assert add_c["user_id"] == str(cid.id)
    assert add_c["changes"]["member"] == {"before": None, "after": str(cid.id)}
    assert add_c["changes"]["version"] == {"before": None, "after": final.version}
    assert deleted["user_id"] is None
    assert deleted["changes"] == {
        "display_name": {"before": "Audited 2", "after": None},
        "external_id": {"before": "ext-a", "after": None},
        "roles": {"before": [], "after": None},
        "version": {"before": final.version, "after": None},
    }
    # A member's events are found by its user id, as its own are.
    assert [e["action"] for e in events(registry, user_id=str(cid.id))] == [
        "user.created",
        "group.member_added",
    ]


def test_a_failed_write_records_nothing(registry: Registry) -> None:
    groups = registry.groups
    ann, bob = make_users(registry, 2)
    group = groups.create(NewGroup("Kept", frozenset({"admin"})))
    group = groups.add_members(group.id, [ann.id])
    before = group_events(registry)
    stranger = uuid.uuid4()
    failing: list[tuple[type[Exception], Callable[[], object]]] = [
        (InvalidInput, lambda: groups.create(NewGroup("Bad", frozenset({"nope"})))),
        (Conflict, lambda: groups.create(NewGroup("KEPT"))),
        (InvalidInput, lambda: groups.add_members(group.id, [bob.id, stranger])),
        # Midway: ann is removed, then adding the stranger fails; all of it is undone.
        (InvalidInput, lambda: groups.set_members(group.id, [bob.id, stranger])),
        (PreconditionFailed, lambda: groups.remove_members(group.id, [ann.id], 1)),
        (PreconditionFailed, lambda: groups.update(group.id, GroupChanges(roles=frozenset()), 1)),
        (PreconditionFailed, lambda: groups.delete(group.id, 1)),
        (NotFound, lambda: groups.delete(uuid.uuid4())),
    ]
    for error, call in failing:
        with pytest.raises(error):
            call()
    with acting_as(EDITOR), pytest.raises(Forbidden):
        groups.remove_members(group.id, [ann.id])
    assert group_events(registry) == before
    assert groups.get(group.id) == group
    assert member_ids(registry, group.id) == [ann.id]


# -- races, with the change records in each write's transaction ---------------------------------


def test_concurrent_member_additions_through_the_service(registry: Registry) -> None:
    groups = registry.groups
    group = groups.create(NewGroup("Crowded", frozenset({"viewer"})))
    users = make_users(registry, 6)
    results = run_concurrently(len(users), lambda i: groups.add_members(group.id, [users[i].id]))
    assert all(isinstance(r, Group) for r in results), results
    assert sorted(r.version for r in results if isinstance(r, Group)) == list(range(2, 8))
    assert groups.get(group.id).version == 7
    assert member_ids(registry, group.id) == [u.id for u in users]
    added = [e for e in group_events(registry) if e["action"] == "group.member_added"]
    assert sorted(e["user_id"] for e in added) == sorted(str(u.id) for u in users)
    assert sorted(e["changes"]["version"]["after"] for e in added) == list(range(2, 8))


def test_concurrent_creates_of_one_name_through_the_service(registry: Registry) -> None:
    spellings = ["Night Shift", "NIGHT SHIFT", "night shift", "Night shift"]
    results = run_concurrently(
        len(spellings), lambda i: registry.groups.create(NewGroup(spellings[i]))
    )
    wins = [r for r in results if isinstance(r, Group)]
    assert len(wins) == 1, results
    assert all(isinstance(r, Conflict) for r in results if r not in wins), results
    assert all_groups(registry) == wins
    assert [e["action"] for e in group_events(registry)] == ["group.created"]


# -- any sequence of member changes ----------------------------------------------------------

OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "set"]),
        st.sets(st.integers(0, 5), max_size=6),
        st.booleans(),  # with a stranger's id too
    ),
    max_size=8,
)


@pytest.fixture
def pool(registry: Registry) -> list[User]:
    return make_users(registry, 6, prefix="pool")


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=OPERATIONS)
def test_any_sequence_of_member_changes_keeps_the_model(
    registry: Registry, pool: list[User], steps: list[tuple[str, set[int], bool]]
) -> None:
    groups = registry.groups
    group = groups.create(NewGroup(f"Model {uuid.uuid4()}"))
    model: set[uuid.UUID] = set()
    version = group.version
    for operation, picked, stranger in steps:
        ids = [pool[i].id for i in sorted(picked)]
        if stranger:
            ids.append(uuid.uuid4())
        call = {
            "add": groups.add_members,
            "remove": groups.remove_members,
            "set": groups.set_members,
        }[operation]
        wanted = {pool[i].id for i in picked}
        if stranger and operation != "remove":
            with pytest.raises(InvalidInput):
                call(group.id, ids)
            expected = model
        else:
            result = call(group.id, ids)
            expected = {
                "add": model | wanted,
                "remove": model - wanted,
                "set": wanted,
            }[operation]
            assert result == groups.get(group.id)
            if expected == model:
                assert result.version == version, (operation, picked)
            else:
                assert result.version > version, (operation, picked)
            version = result.version
        model = expected
        assert member_ids(registry, group.id) == sorted(model)
        assert groups.get(group.id).version == version
    groups.delete(group.id)


def test_changing_a_members_address_activation_or_deletion_needs_its_groups_roles(
    registry: Registry,
) -> None:
    # A token may name its user by address: giving an admin-group member a new address
    # (one the caller controls), or bringing one back, hands out admin.
    groups = registry.groups
    ann, bob, cid = make_users(registry, 3)
    admins = groups.create(NewGroup("Admins", frozenset({"admin"})))
    groups.add_members(admins.id, [ann.id, bob.id])
    registry.users.set_active(bob.id, False)
    registry.users.delete(cid.id)
    groups.add_members(groups.create(NewGroup("Viewers", frozenset({"viewer"}))).id, [])
    with acting_as(EDITOR):
        for refused in (
            lambda: registry.users.update(ann.id, UserChanges(email="mine@example.org")),
            lambda: registry.users.set_active(bob.id, True),
        ):
            with pytest.raises(Forbidden, match="admin"):
                refused()
        # What hands out nothing stays allowed: a name, deactivating, a user in no group.
        registry.users.update(ann.id, UserChanges(full_name="Ann"))
        registry.users.set_active(ann.id, False)
        registry.users.restore(cid.id)
    groups.add_members(admins.id, [cid.id])
    registry.users.delete(cid.id)
    with acting_as(EDITOR), pytest.raises(Forbidden, match="admin"):
        registry.users.restore(cid.id)
    assert registry.users.get(ann.id).email == ann.email
    assert not registry.users.get(bob.id).is_active
    with acting_as(ADMIN):
        registry.users.update(ann.id, UserChanges(email="ann2@example.org"))
        registry.users.restore(cid.id)
