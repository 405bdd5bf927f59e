"""``UserService`` through a real ``Registry``, on SQLite and PostgreSQL.

Tests that need to control time build a ``UserService`` on the registry's own
storage and hooks with a ``Clock`` they set (the ``service`` fixture).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from userplane import (
    Conflict,
    InvalidInput,
    NewUser,
    NotFound,
    PreconditionFailed,
    Registry,
    Settings,
    User,
    UserChanges,
    UserQuery,
    hookimpl,
)
from userplane.auth import Principal, acting_as
from userplane.emails import normalize_email
from userplane.pagination import Sort
from userplane.testing import new_users
from userplane.text import fold
from userplane.users import UserService, check_fields

T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)
SORT_TEXTS = ["created_at", "-created_at", "email", "-email", "full_name", "-full_name"]


def full_width(text: str) -> str:
    """``text`` with ASCII letters in their full-width forms (NFKC maps them back)."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalpha() else c for c in text)


def fields_of(exc: InvalidInput) -> list[str]:
    return [e.field for e in exc.errors]


def create(on: Registry | UserService, email: str = "ann@example.org", **kwargs: Any) -> User:
    users = on.users if isinstance(on, Registry) else on
    return users.create(NewUser(email=email, **kwargs))


class Clock:
    """A clock the test sets: every reading is ``now`` until the test advances it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def service(registry: Registry, clock: Clock) -> UserService:
    """The registry's storage and hooks, on a clock the test controls."""
    return UserService(registry.storage, registry.hooks, registry=registry, clock=clock)


def purge_every_deleted_user(reg: Registry) -> int:
    """Purge every deleted user now, whatever the real clock says (a clock a year on)."""
    later = UserService(
        reg.storage, reg.hooks, registry=reg, clock=lambda: datetime.now(UTC) + 365 * DAY
    )
    return later.purge(timedelta(0))


def expected_order(users: list[User], sort: Sort) -> list[User]:
    """``users`` in ``sort`` order, as the service documents it.

    ``email`` by the normalised address (unique: no tie-break); ``full_name`` by
    the folded name, users without one as the empty name; ties by ``id``;
    descending reverses key and ``id`` alike.
    """

    def key(u: User) -> tuple[Any, ...]:
        if sort.field == "created_at":
            return (u.created_at, u.id)
        if sort.field == "email":
            return (normalize_email(u.email),)
        return (fold(u.full_name or ""), u.id)

    return sorted(users, key=key, reverse=sort.descending)


def page_through(
    users: UserService, limit: int, cursor: str | None = None, **query: Any
) -> tuple[list[User], int]:
    """Every user a list returns from ``cursor`` on, following ``next`` to the end.

    Also returns how many pages it took.
    """
    seen: list[User] = []
    pages = 0
    while True:
        page = users.list(UserQuery(limit=limit, cursor=cursor, **query))
        pages += 1
        assert len(page.items) <= limit
        seen += page.items
        if page.next is None:
            break
        assert len(page.items) == limit  # only the last page may be short
        cursor = page.next
        assert pages <= 1000, "the cursors never end"
    return seen, pages


# -- create and read --------------------------------------------------------------------


def test_create_returns_the_stored_user(registry: Registry) -> None:
    user = create(registry, "Ann@Example.org", full_name="Ann Example")
    assert user.email == "Ann@Example.org"  # kept as given; only the key is normalised
    assert user.full_name == "Ann Example"
    assert user.is_active is True
    assert user.version == 1
    assert user.created_at == user.updated_at
    assert user.created_at.tzinfo is not None
    assert user.created_at.utcoffset() == UTC.utcoffset(None)
    assert isinstance(user.id, uuid.UUID)
    assert registry.users.get(user.id) == user


def test_create_inactive_without_name(registry: Registry) -> None:
    user = create(registry, "bob@example.org", is_active=False)
    assert user.full_name is None
    assert user.is_active is False
    assert registry.users.get(user.id) == user


def test_get_missing_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.users.get(uuid.uuid4())


def test_get_by_email_ignores_case_and_width(registry: Registry) -> None:
    user = create(registry, "Ann@Example.org")
    assert registry.users.get_by_email("ann@example.org") == user
    assert registry.users.get_by_email("ANN@EXAMPLE.ORG") == user
    assert registry.users.get_by_email(full_width("ANN@example.org")) == user


def test_get_by_unknown_email_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.users.get_by_email("nobody@example.org")


def test_get_by_invalid_email_is_invalid_input(registry: Registry) -> None:
    with pytest.raises(InvalidInput) as info:
        registry.users.get_by_email("not-an-address")
    assert fields_of(info.value) == ["$.email"]


def test_find_by_uuid_string_or_email(registry: Registry) -> None:
    user = create(registry, "ann@example.org")
    assert registry.users.find(str(user.id)) == user
    assert registry.users.find(str(user.id).upper()) == user
    assert registry.users.find(user.id.hex) == user
    assert registry.users.find("ANN@example.org") == user


def test_find_missing(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.users.find(str(uuid.uuid4()))
    with pytest.raises(NotFound):
        registry.users.find("nobody@example.org")
    with pytest.raises(InvalidInput):
        registry.users.find("neither-a-uuid-nor-an-email")


def test_find_says_text_is_neither_an_id_nor_an_email(registry: Registry) -> None:
    # Not "an email address must have an @-sign": the argument may have been meant as an id.
    with pytest.raises(InvalidInput) as info:
        registry.users.find("12345")
    assert info.value.detail == (
        "id_or_email: '12345' is neither a user id (a UUID) nor an email address"
    )
    assert fields_of(info.value) == ["id_or_email"]
    # With an @ it is an email, and its syntax is what is reported.
    with pytest.raises(InvalidInput) as email:
        registry.users.find("ann@")
    assert fields_of(email.value) == ["$.email"]


def test_same_email_in_another_spelling_conflicts(registry: Registry) -> None:
    create(registry, "ann@example.org")
    with pytest.raises(Conflict):
        create(registry, "ANN@Example.ORG")
    with pytest.raises(Conflict):
        create(registry, full_width("ann") + "@example.org")


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "fields"),
    [
        pytest.param(NewUser("nope"), ["$.email"], id="bad-email"),
        pytest.param(NewUser("a@b.org", full_name="   "), ["$.full_name"], id="blank-name"),
        pytest.param(NewUser("a@b.org", full_name=""), ["$.full_name"], id="empty-name"),
        pytest.param(NewUser("a@b.org", full_name="x" * 201), ["$.full_name"], id="long-name"),
        pytest.param(NewUser("a@b.org", full_name="a\nb"), ["$.full_name"], id="control"),
        pytest.param(NewUser("a@b.org", full_name="a\x7fb"), ["$.full_name"], id="delete"),
        pytest.param(NewUser("nope", full_name=" "), ["$.email", "$.full_name"], id="both"),
    ],
)
def test_create_validation_names_the_fields(
    registry: Registry, new: NewUser, fields: list[str]
) -> None:
    with pytest.raises(InvalidInput) as info:
        registry.users.create(new)
    assert fields_of(info.value) == fields
    for field in fields:
        assert field in info.value.detail
    assert registry.users.list(UserQuery()).items == ()


def test_a_name_of_exactly_the_maximum_is_fine(registry: Registry) -> None:
    assert create(registry, full_name="x" * 200).full_name == "x" * 200


def test_update_validation_names_every_field(registry: Registry) -> None:
    user = create(registry)
    changes = UserChanges(email="bad", full_name="", is_active="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as info:
        registry.users.update(user.id, changes)
    assert fields_of(info.value) == ["$.email", "$.full_name", "$.is_active"]
    assert registry.users.get(user.id) == user


@pytest.mark.parametrize("limit", [0, -1, 501, 10_000])
def test_limit_outside_1_to_500_is_invalid(registry: Registry, limit: int) -> None:
    with pytest.raises(InvalidInput) as info:
        registry.users.list(UserQuery(limit=limit))
    assert fields_of(info.value) == ["$.limit"]


@pytest.mark.parametrize("limit", [1, 500])
def test_limit_bounds_are_allowed(registry: Registry, limit: int) -> None:
    assert registry.users.list(UserQuery(limit=limit)).items == ()


def test_list_reports_every_bad_parameter_at_once(registry: Registry) -> None:
    query = UserQuery(limit=0, cursor="!!", email="nope", q="x" * 201)
    with pytest.raises(InvalidInput) as info:
        registry.users.list(query)
    assert fields_of(info.value) == ["$.limit", "$.cursor", "$.email", "$.q"]


def test_a_bad_cursor_is_named_beside_a_bad_limit(registry: Registry) -> None:
    # The limit and the cursor are independent: a bad limit must not hide a bad cursor.
    with pytest.raises(InvalidInput) as info:
        registry.users.list(UserQuery(limit=0, cursor="!!"))
    assert fields_of(info.value) == ["$.limit", "$.cursor"]


def test_list_names_a_bad_sort_with_every_other_bad_parameter(registry: Registry) -> None:
    query = UserQuery(limit=501, sort="age", email="nope", q="x" * 201)
    with pytest.raises(InvalidInput) as info:
        registry.users.list(query)
    assert fields_of(info.value) == ["$.limit", "$.sort", "$.email", "$.q"]
    for field in fields_of(info.value):
        assert field in info.value.detail


@pytest.mark.parametrize(
    "sort", ["age", "", "-", "--email", "Email", "id", "-updated_at", "deleted_at", "email "]
)
def test_list_with_an_unknown_sort_is_invalid_input_naming_it(
    registry: Registry, sort: str
) -> None:
    create(registry)
    with pytest.raises(InvalidInput) as info:
        registry.users.list(UserQuery(sort=sort))
    assert fields_of(info.value) == ["$.sort"]
    assert repr(sort.removeprefix("-")) in info.value.errors[0].message


@pytest.mark.parametrize("sort", SORT_TEXTS)
def test_list_takes_every_allowed_sort(registry: Registry, sort: str) -> None:
    user = create(registry)
    assert registry.users.list(UserQuery(sort=sort)).items == (user,)


def _cursor_of(payload: object) -> str:
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_ZERO = str(uuid.UUID(int=0))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(["created_at", "9999-12-31T23:59:59-05:00", _ZERO], id="time-overflow"),
        pytest.param(["created_at", "0001-01-01T00:00:00+05:00", _ZERO], id="time-underflow"),
        pytest.param(["created_at", "2026-01-02T03:04:05+00:00", 5], id="id-a-number"),
        pytest.param(["created_at", "2026-01-02T03:04:05+00:00", [1]], id="id-a-list"),
        pytest.param(["created_at", "2026-01-02T03:04:05", _ZERO], id="naive-time"),
        pytest.param(["created_at", 5, _ZERO], id="key-a-number"),
        pytest.param([None, "2026-01-02T03:04:05+00:00", _ZERO], id="sort-null"),
        pytest.param(["2026-01-02T03:04:05+00:00", _ZERO], id="previous-format"),
        pytest.param(["email", "ann@example.org", _ZERO], id="another-sort"),
    ],
)
def test_a_tampered_cursor_is_invalid_input_naming_it(registry: Registry, payload: object) -> None:
    create(registry)
    with pytest.raises(InvalidInput) as info:
        registry.users.list(UserQuery(cursor=_cursor_of(payload)))
    assert fields_of(info.value) == ["$.cursor"]


def test_a_next_cursor_is_refused_under_another_sort(registry: Registry) -> None:
    for i in range(3):
        create(registry, f"user{i}@example.org")
    for issued_for in SORT_TEXTS:
        cursor = registry.users.list(UserQuery(limit=1, sort=issued_for)).next
        assert cursor is not None
        for used_with in SORT_TEXTS:
            query = UserQuery(limit=1, sort=used_with, cursor=cursor)
            if used_with == issued_for:
                assert len(registry.users.list(query).items) == 1
            else:
                with pytest.raises(InvalidInput) as info:
                    registry.users.list(query)
                assert fields_of(info.value) == ["$.cursor"]


# -- list -------------------------------------------------------------------------------------


def test_list_pages_cover_every_user_once_in_order(registry: Registry) -> None:
    created = [create(registry, f"user{i}@example.org") for i in range(7)]
    seen: list[User] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = registry.users.list(UserQuery(limit=3, cursor=cursor))
        pages += 1
        seen += page.items
        if page.next is None:
            break
        cursor = page.next
    assert pages == 3
    assert seen == sorted(created, key=lambda u: (u.created_at, u.id))


def test_a_full_last_page_has_no_next(registry: Registry) -> None:
    for i in range(3):
        create(registry, f"user{i}@example.org")
    page = registry.users.list(UserQuery(limit=3))
    assert len(page.items) == 3
    assert page.next is None


@pytest.mark.parametrize("include_deleted", [False, True], ids=["live", "with-deleted"])
@pytest.mark.parametrize("limit", [1, 4])
@pytest.mark.parametrize("sort_text", SORT_TEXTS)
def test_every_sort_pages_through_every_user_once_in_order(
    service: UserService, clock: Clock, sort_text: str, limit: int, include_deleted: bool
) -> None:
    specs: list[tuple[str, str | None]] = [
        ("Zed@example.org", "bob"),
        ("amy@Example.org", None),
        ("\uff22\uff25\uff2e@example.org", "Adam"),  # full-width BEN
        ("carl@EXAMPLE.ORG", "adam"),
        ("Dora@example.org", "\uff23\uff21\uff32\uff2c"),  # full-width CARL
        ("eve@example.org", None),
        ("_x@example.org", "Zoë"),
        ("ÉMILE@example.org", "zoë"),
        ("fay@example.org", "ZOË"),
        ("gus@example.org", "ann"),
        ("Hal@example.org", "Ann"),
    ]
    users = []
    for i, (email, name) in enumerate(specs):
        if i % 3 == 0:
            clock.advance(SECOND)  # three users at each instant: ties broken by id
        users.append(create(service, email, full_name=name))
    clock.advance(SECOND)
    deleted = [service.delete(users[i].id) for i in (2, 7)]
    live = [u for i, u in enumerate(users) if i not in (2, 7)]
    sort = Sort.parse(sort_text)
    expected = expected_order([*live, *deleted] if include_deleted else live, sort)

    seen, pages = page_through(service, limit, sort=sort_text, include_deleted=include_deleted)

    assert seen == expected
    assert len({u.id for u in seen}) == len(seen)
    assert pages == -(-len(expected) // limit)  # a full last page has no next


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
def test_email_sort_is_by_the_normalised_address(
    service: UserService, clock: Clock, descending: bool
) -> None:
    # Raw code points would put "Zed" before "amy", and full-width letters after both.
    for email in ["Zed@example.org", "\uff22\uff25\uff2e@example.org", "amy@example.org"]:
        clock.advance(SECOND)
        create(service, email)
    sort = "-email" if descending else "email"
    keys = [normalize_email(u.email) for u in service.list(UserQuery(sort=sort)).items]
    expected = ["amy@example.org", "ben@example.org", "zed@example.org"]
    assert keys == (expected[::-1] if descending else expected)


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
def test_full_name_sort_puts_users_without_a_name_first_and_ignores_case(
    service: UserService, descending: bool
) -> None:
    names = ["bob", None, "Adam", "\uff23\uff21\uff32\uff2c", None, "adam", "ADAM"]
    users = [create(service, f"user{i}@example.org", full_name=n) for i, n in enumerate(names)]
    listed = service.list(UserQuery(sort="-full_name" if descending else "full_name")).items
    folded = [fold(u.full_name or "") for u in listed]
    ascending = ["", "", "adam", "adam", "adam", "bob", "carl"]
    assert folded == (ascending[::-1] if descending else ascending)
    # Within one name, by id (in the sort's direction).
    for name in ("", "adam"):
        ids = [u.id for u in listed if fold(u.full_name or "") == name]
        assert ids == sorted(ids, reverse=descending)
    assert sorted(u.id for u in listed) == sorted(u.id for u in users)


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
def test_created_at_sort_breaks_ties_by_id(service: UserService, descending: bool) -> None:
    # One instant for all: the order is decided by id alone, and pages still cover everyone.
    users = [create(service, f"user{i}@example.org") for i in range(5)]
    sort = "-created_at" if descending else "created_at"
    seen, _ = page_through(service, 2, sort=sort)
    assert [u.id for u in seen] == sorted((u.id for u in users), reverse=descending)


@pytest.mark.parametrize("sort_text", SORT_TEXTS)
def test_writes_between_pages_never_repeat_or_skip_the_others(
    service: UserService, clock: Clock, sort_text: str
) -> None:
    users = []
    for i in range(8):
        clock.advance(SECOND)
        users.append(create(service, f"m{i}@example.org", full_name=f"M {i}"))
    sort = Sort.parse(sort_text)
    first = service.list(UserQuery(limit=3, sort=sort_text))
    assert list(first.items) == expected_order(users, sort)[:3]
    # Meanwhile: users sorting before and after the cursor arrive, and one not yet seen goes.
    clock.advance(SECOND)
    early = create(service, "a@example.org", full_name="A")
    late = create(service, "z@example.org", full_name="Z")
    unseen = expected_order(users, sort)[3]
    service.delete(unseen.id)
    rest, _ = page_through(service, 3, sort=sort_text, cursor=first.next)
    existing = [u for u in [*first.items, *rest] if u.id not in (early.id, late.id)]
    assert existing == [u for u in expected_order(users, sort) if u.id != unseen.id]
    assert len({u.id for u in rest}) == len(rest)


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
def test_paging_by_name_past_the_longest_names_works(registry: Registry, descending: bool) -> None:
    # Names of 200 characters the service accepts; a page ending on one must lead on.
    names = ["\U0001f600" * 200, "\U0001f600" * 199 + "a", "\ufdfa" * 22, "ß" * 200]
    users = [create(registry, f"long{i}@example.org", full_name=n) for i, n in enumerate(names)]
    sort = "-full_name" if descending else "full_name"
    seen, pages = page_through(registry.users, 1, sort=sort)
    assert seen == expected_order(users, Sort.parse(sort))
    assert pages == 4


def test_a_name_that_normalises_past_the_folded_limit_is_refused(registry: Registry) -> None:
    # U+FDFA becomes 18 characters under NFKC: 200 of them would make a 3600-character key.
    with pytest.raises(InvalidInput) as info:
        create(registry, "ligature@example.org", full_name="\ufdfa" * 200)
    assert [e.field for e in info.value.errors] == ["$.full_name"]


def test_list_filters(registry: Registry) -> None:
    ann = create(registry, "Ann@Example.org", full_name="Ann Ängström")
    bob = create(registry, "bob@example.org", full_name="Bob", is_active=False)
    assert registry.users.list(UserQuery(is_active=True)).items == (ann,)
    assert registry.users.list(UserQuery(is_active=False)).items == (bob,)
    assert registry.users.list(UserQuery(email="ANN@example.org")).items == (ann,)
    assert registry.users.list(UserQuery(q="ÄNGSTRÖM")).items == (ann,)
    assert registry.users.list(UserQuery(q="bob@")).items == (bob,)
    assert registry.users.list(UserQuery(q="nobody")).items == ()


# -- update, set_active, delete --------------------------------------------------------------


def test_update_sets_fields_and_bumps_the_version(registry: Registry) -> None:
    user = create(registry, full_name="Ann")
    updated = registry.users.update(
        user.id, UserChanges(email="Ann.New@Example.org", full_name=None, is_active=False)
    )
    assert updated.email == "Ann.New@Example.org"
    assert updated.full_name is None
    assert updated.is_active is False
    assert updated.version == 2
    assert updated.created_at == user.created_at
    assert updated.updated_at >= user.updated_at
    assert registry.users.get(user.id) == updated
    assert registry.users.get_by_email("ann.new@example.org") == updated
    with pytest.raises(NotFound):
        registry.users.get_by_email("ann@example.org")


def test_update_leaves_unset_fields_alone(registry: Registry) -> None:
    user = create(registry, full_name="Ann")
    updated = registry.users.update(user.id, UserChanges(full_name="Ann B."))
    assert (updated.email, updated.is_active) == (user.email, user.is_active)
    assert updated.full_name == "Ann B."


def test_an_empty_update_does_not_write(registry: Registry) -> None:
    # Nothing to change, nothing written: the same version, time and ETag
    # (tests/test_noop_update.py covers no-op changes in full).
    user = create(registry, full_name="Ann")
    assert registry.users.update(user.id, UserChanges()) == user
    assert registry.users.get(user.id) == user


def test_touch_gives_a_new_version_and_nothing_else(registry: Registry) -> None:
    """What a plugin calls when data it keeps of a user changes (a SCIM userName)."""
    from userplane.plugins.audit import trail_of
    from userplane.plugins.audit.query import parse_query

    user = create(registry, full_name="Ann")
    touched = registry.users.touch(user.id, expected_version=1)
    assert touched.version == 2
    assert touched.updated_at > user.updated_at
    assert attrs.evolve(touched, version=1, updated_at=user.updated_at) == user
    assert registry.users.get(user.id) == touched
    with pytest.raises(PreconditionFailed):
        registry.users.touch(user.id, expected_version=1)
    assert registry.users.get(user.id) == touched
    events = trail_of(registry).list(parse_query({"user_id": str(user.id)}))
    assert [e["action"] for e in events.items][-1] == "user.updated"
    registry.users.delete(user.id)
    with pytest.raises(NotFound):
        registry.users.touch(user.id)
    with pytest.raises(NotFound):
        registry.users.touch(uuid.uuid4())


def test_update_with_the_expected_version(registry: Registry) -> None:
    user = create(registry)
    updated = registry.users.update(user.id, UserChanges(full_name="A"), expected_version=1)
    assert updated.version == 2
    with pytest.raises(PreconditionFailed):
        registry.users.update(user.id, UserChanges(full_name="B"), expected_version=1)
    assert registry.users.get(user.id).full_name == "A"


def test_update_to_another_spelling_of_the_own_email_is_fine(registry: Registry) -> None:
    user = create(registry, "ann@example.org")
    updated = registry.users.update(user.id, UserChanges(email="ANN@Example.org"))
    assert updated.email == "ANN@Example.org"
    assert registry.users.get_by_email("ann@example.org") == updated


def test_update_to_a_taken_email_conflicts(registry: Registry) -> None:
    create(registry, "taken@example.org")
    user = create(registry, "free@example.org")
    with pytest.raises(Conflict):
        registry.users.update(user.id, UserChanges(email="TAKEN@example.org"))
    assert registry.users.get(user.id) == user


def test_update_missing_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.users.update(uuid.uuid4(), UserChanges(full_name="X"))


def test_set_active(registry: Registry) -> None:
    user = create(registry)
    off = registry.users.set_active(user.id, False)
    assert off.is_active is False
    assert off.version == 2
    on = registry.users.set_active(user.id, True)
    assert on.is_active is True
    assert on.version == 3
    assert registry.users.get(user.id) == on


def test_delete_returns_the_deleted_state_and_keeps_the_email_reserved(
    registry: Registry,
) -> None:
    user = create(registry, "gone@example.org")
    user = registry.users.set_active(user.id, False)
    deleted = registry.users.delete(user.id)
    assert deleted.deleted_at is not None
    assert deleted.deleted_at.utcoffset() == timedelta(0)
    assert deleted == attrs.evolve(
        user, deleted_at=deleted.deleted_at, updated_at=deleted.updated_at, version=3
    )
    assert deleted.updated_at >= user.updated_at
    with pytest.raises(NotFound):
        registry.users.get(user.id)
    with pytest.raises(NotFound):
        registry.users.delete(user.id)
    with pytest.raises(Conflict):
        create(registry, "GONE@example.org")
    assert registry.users.get(user.id, include_deleted=True) == deleted


def test_purge_frees_the_email_of_a_deleted_user(service: UserService, clock: Clock) -> None:
    user = create(service, "gone@example.org", full_name="Gone")
    clock.advance(MINUTE)
    service.delete(user.id)
    clock.advance(DAY)
    assert service.purge(timedelta(hours=1)) == 1
    again = create(service, "GONE@example.org")
    assert again.email == "GONE@example.org"
    assert again.id != user.id
    assert again.version == 1
    assert service.get_by_email("gone@example.org") == again


def test_delete_at_the_clock_bumps_the_version(service: UserService, clock: Clock) -> None:
    user = create(service, full_name="Ann")
    at = clock.advance(MINUTE)
    deleted = service.delete(user.id)
    assert deleted == attrs.evolve(user, deleted_at=at, updated_at=at, version=user.version + 1)
    assert service.get(user.id, include_deleted=True) == deleted


def test_delete_with_a_stale_version_fails(registry: Registry) -> None:
    user = create(registry)
    registry.users.set_active(user.id, False)
    with pytest.raises(PreconditionFailed):
        registry.users.delete(user.id, expected_version=1)
    assert registry.users.get(user.id).deleted_at is None
    deleted = registry.users.delete(user.id, expected_version=2)
    assert deleted.version == 3
    assert deleted.deleted_at is not None


def test_a_deleted_user_is_hidden_unless_deleted_users_are_included(
    service: UserService, clock: Clock
) -> None:
    ann = create(service, "Ann@Example.org", full_name="Ann Ängström")
    clock.advance(SECOND)
    bob = create(service, "bob@example.org", full_name="Bob")
    clock.advance(SECOND)
    gone = service.delete(ann.id)

    hidden: list[Callable[[], User]] = [
        lambda: service.get(ann.id),
        lambda: service.get_by_email("ann@example.org"),
        lambda: service.find(str(ann.id)),
        lambda: service.find("ANN@example.org"),
    ]
    for read in hidden:
        with pytest.raises(NotFound):
            read()
    assert service.get(ann.id, include_deleted=True) == gone
    assert service.get_by_email("ANN@example.org", include_deleted=True) == gone
    assert service.find(str(ann.id), include_deleted=True) == gone
    assert service.find("ann@EXAMPLE.org", include_deleted=True) == gone

    assert service.list(UserQuery()).items == (bob,)
    assert service.list(UserQuery(include_deleted=True)).items == (gone, bob)
    for sort in SORT_TEXTS:
        assert service.list(UserQuery(sort=sort)).items == (bob,)
        assert set(service.list(UserQuery(sort=sort, include_deleted=True)).items) == {gone, bob}
    # Filters apply to deleted users too.
    assert service.list(UserQuery(email="ann@example.org")).items == ()
    assert service.list(UserQuery(email="ann@example.org", include_deleted=True)).items == (gone,)
    assert service.list(UserQuery(q="ängström")).items == ()
    assert service.list(UserQuery(q="ÄNGSTRÖM", include_deleted=True)).items == (gone,)
    assert service.list(UserQuery(is_active=True, include_deleted=True)).items == (gone, bob)
    # For a live user, including the deleted changes nothing.
    assert service.get(bob.id, include_deleted=True) == bob
    assert service.get_by_email("bob@example.org", include_deleted=True) == bob


def test_a_deleted_user_cannot_be_written(service: UserService, clock: Clock) -> None:
    user = create(service, "gone@example.org", full_name="Ann")
    clock.advance(SECOND)
    gone = service.delete(user.id)
    clock.advance(SECOND)
    with pytest.raises(NotFound):
        service.update(user.id, UserChanges(full_name="Back"))
    with pytest.raises(NotFound):
        service.update(user.id, UserChanges(full_name="Back"), expected_version=gone.version)
    with pytest.raises(NotFound):
        service.update(user.id, UserChanges())
    with pytest.raises(NotFound):
        service.set_active(user.id, False)
    with pytest.raises(NotFound):
        service.delete(user.id)
    with pytest.raises(NotFound):
        service.delete(user.id, expected_version=gone.version)
    assert service.get(user.id, include_deleted=True) == gone


def test_the_email_of_a_deleted_user_stays_taken(service: UserService) -> None:
    gone = create(service, "gone@example.org")
    other = create(service, "other@example.org")
    service.delete(gone.id)
    with pytest.raises(Conflict):
        create(service, "Gone@Example.org")
    with pytest.raises(Conflict):
        service.update(other.id, UserChanges(email="GONE@example.org"))
    assert service.get(other.id) == other


# -- restore ---------------------------------------------------------------------------------


def test_restore_brings_a_deleted_user_back(service: UserService, clock: Clock) -> None:
    user = create(service, "Ann@Example.org", full_name="Ann")
    clock.advance(MINUTE)
    gone = service.delete(user.id)
    at = clock.advance(MINUTE)
    restored = service.restore(user.id)
    assert restored == attrs.evolve(gone, deleted_at=None, updated_at=at, version=gone.version + 1)
    assert restored.version == user.version + 2
    assert (restored.email, restored.full_name, restored.created_at) == (
        user.email,
        user.full_name,
        user.created_at,
    )
    assert service.get(user.id) == restored
    assert service.get_by_email("ann@example.org") == restored
    assert service.list(UserQuery()).items == (restored,)
    # Live again, it can be written, deleted and restored again.
    renamed = service.update(user.id, UserChanges(full_name="Ann B."), expected_version=3)
    assert renamed.version == 4
    assert service.delete(user.id, expected_version=4).version == 5
    assert service.restore(user.id).version == 6


def test_restoring_a_live_user_returns_it_unchanged(service: UserService, clock: Clock) -> None:
    user = create(service)
    clock.advance(MINUTE)
    assert service.restore(user.id) == user
    assert service.restore(user.id) == user
    assert service.get(user.id) == user
    clock.advance(MINUTE)
    service.delete(user.id)
    restored = service.restore(user.id)
    clock.advance(MINUTE)
    assert service.restore(user.id) == restored  # a retry of the restore
    assert service.get(user.id) == restored


def test_restoring_an_unknown_or_purged_user_is_not_found(
    service: UserService, clock: Clock
) -> None:
    with pytest.raises(NotFound):
        service.restore(uuid.uuid4())
    user = create(service)
    service.delete(user.id)
    clock.advance(DAY)
    assert service.purge(timedelta(0)) == 1
    with pytest.raises(NotFound):
        service.restore(user.id)
    with pytest.raises(NotFound):
        service.get(user.id, include_deleted=True)


# -- purge ----------------------------------------------------------------------------------


def test_purge_removes_only_the_users_deleted_longer_ago(
    service: UserService, clock: Clock
) -> None:
    old = create(service, "old@example.org")
    older = create(service, "older@example.org")
    edge = create(service, "edge@example.org")
    recent = create(service, "recent@example.org")
    live = create(service, "live@example.org")
    service.delete(older.id)
    clock.advance(5 * DAY)
    service.delete(old.id)
    clock.advance(5 * DAY)  # T0 + 10 days
    service.delete(edge.id)
    clock.advance(5 * DAY)
    recent_gone = service.delete(recent.id)
    clock.advance(5 * DAY)  # T0 + 20 days
    edge_gone = service.get(edge.id, include_deleted=True)

    # Deleted more than 10 days ago: older (20 days) and old (15 days); edge is exactly 10.
    assert service.purge(10 * DAY) == 2
    for purged in (old, older):
        with pytest.raises(NotFound):
            service.get(purged.id, include_deleted=True)
    assert service.get(edge.id, include_deleted=True) == edge_gone
    assert service.get(recent.id, include_deleted=True) == recent_gone
    assert service.get(live.id) == live  # created 20 days ago, never deleted: stays
    assert service.purge(10 * DAY) == 0

    assert service.purge(timedelta(0)) == 2
    assert service.list(UserQuery(include_deleted=True)).items == (live,)
    assert service.purge(timedelta(0)) == 0
    assert service.get(live.id) == live


@pytest.mark.parametrize(
    "older_than", [timedelta(microseconds=-1), timedelta(seconds=-1), timedelta(days=-30)]
)
def test_purge_with_a_negative_age_is_invalid_input(
    service: UserService, clock: Clock, older_than: timedelta
) -> None:
    user = create(service)
    gone = service.delete(user.id)
    clock.advance(DAY)
    with pytest.raises(InvalidInput) as info:
        service.purge(older_than)
    assert fields_of(info.value) == ["$.older_than"]
    assert service.get(user.id, include_deleted=True) == gone


# -- plugins observe -----------------------------------------------------------------------


class Observer:
    """A test plugin recording user events and wrapping every operation."""

    def __init__(self) -> None:
        self.events: list[tuple[str, User, frozenset[str] | None]] = []
        self.purges: list[tuple[int, datetime]] = []
        self.operations: list[tuple[str, str, Any]] = []

    @hookimpl
    def userplane_user_created(self, user: User) -> None:
        self.events.append(("created", user, None))

    @hookimpl
    def userplane_user_updated(self, user: User, changed: frozenset[str]) -> None:
        self.events.append(("updated", user, changed))

    @hookimpl
    def userplane_user_deleted(self, user: User) -> None:
        self.events.append(("deleted", user, None))

    @hookimpl
    def userplane_user_restored(self, user: User) -> None:
        self.events.append(("restored", user, None))

    @hookimpl
    def userplane_users_purged(self, count: int, deleted_before: datetime) -> None:
        self.purges.append((count, deleted_before))

    @hookimpl(wrapper=True)
    def userplane_operation(self, operation: str, call: Any) -> Generator[None, Any, Any]:
        try:
            result = yield
        except BaseException as exc:
            self.operations.append((operation, "error", exc))
            raise
        self.operations.append((operation, "ok", result))
        return result


@pytest.fixture
def observer() -> Observer:
    return Observer()


@pytest.fixture
def observed(settings: Settings, observer: Observer) -> Iterator[Registry]:
    with Registry(settings, plugins=[observer]) as reg:
        reg.migrate()
        yield reg


@pytest.fixture
def observed_service(observed: Registry, clock: Clock) -> UserService:
    """The observed registry's storage and hooks, on a clock the test controls."""
    return UserService(observed.storage, observed.hooks, registry=observed, clock=clock)


def test_plugin_sees_user_events_with_changed_fields(
    observed: Registry, observer: Observer
) -> None:
    users = observed.users
    created = users.create(NewUser("ann@example.org", full_name="Ann"))
    renamed = users.update(created.id, UserChanges(full_name=None, email="ann2@example.org"))
    touched = users.update(created.id, UserChanges())  # nothing to change: no event
    inactive = users.set_active(created.id, False)
    deleted = users.delete(created.id)
    restored = users.restore(created.id)
    assert observer.events == [
        ("created", created, None),
        ("updated", renamed, frozenset({"full_name", "email"})),
        ("updated", inactive, frozenset({"is_active"})),
        ("deleted", deleted, None),
        ("restored", restored, None),
    ]
    assert touched == renamed
    assert deleted.deleted_at is not None
    assert deleted == attrs.evolve(
        inactive,
        deleted_at=deleted.deleted_at,
        updated_at=deleted.updated_at,
        version=inactive.version + 1,
    )
    assert restored == attrs.evolve(
        deleted, deleted_at=None, updated_at=restored.updated_at, version=deleted.version + 1
    )


def test_restore_is_announced_once_and_not_for_a_live_user(
    observed_service: UserService, observer: Observer, clock: Clock
) -> None:
    user = create(observed_service)
    observed_service.restore(user.id)  # live: nothing to announce
    clock.advance(MINUTE)
    observed_service.delete(user.id)
    clock.advance(MINUTE)
    restored = observed_service.restore(user.id)
    observed_service.restore(user.id)  # a retry: already live
    restores = [event for event in observer.events if event[0] == "restored"]
    assert restores == [("restored", restored, None)]
    assert restored.deleted_at is None


def test_purge_is_announced_with_the_count_and_the_cut_off(
    observed_service: UserService, observer: Observer, clock: Clock
) -> None:
    users = [create(observed_service, f"user{i}@example.org") for i in range(4)]
    observed_service.delete(users[0].id)
    observed_service.delete(users[1].id)
    clock.advance(3 * DAY)
    observed_service.delete(users[2].id)
    now = clock.advance(DAY)
    assert observed_service.purge(2 * DAY) == 2
    assert observer.purges == [(2, now - 2 * DAY)]
    assert observed_service.purge(timedelta(0)) == 1
    assert observer.purges[-1] == (1, now)
    assert all(kind != "restored" for kind, _, _ in observer.events)


def test_failed_writes_announce_nothing(observed: Registry, observer: Observer) -> None:
    users = observed.users
    user = users.create(NewUser("ann@example.org"))
    users.create(NewUser("bob@example.org"))
    observer.events.clear()
    with pytest.raises(InvalidInput):
        users.create(NewUser("nope"))
    with pytest.raises(Conflict):
        users.create(NewUser("BOB@example.org"))
    with pytest.raises(InvalidInput):
        users.update(user.id, UserChanges(full_name=" "))
    with pytest.raises(Conflict):
        users.update(user.id, UserChanges(email="bob@example.org"))
    with pytest.raises(PreconditionFailed):
        users.update(user.id, UserChanges(full_name="X"), expected_version=7)
    with pytest.raises(NotFound):
        users.update(uuid.uuid4(), UserChanges(full_name="X"))
    with pytest.raises(NotFound):
        users.delete(uuid.uuid4())
    with pytest.raises(NotFound):
        users.restore(uuid.uuid4())
    with pytest.raises(InvalidInput):
        users.purge(timedelta(seconds=-1))
    users.delete(user.id)
    observer.events.clear()
    with pytest.raises(NotFound):
        users.update(user.id, UserChanges(full_name="X"))
    with pytest.raises(NotFound):
        users.delete(user.id)
    with pytest.raises(NotFound):
        users.set_active(user.id, False)
    assert observer.events == []
    assert observer.purges == []


def test_the_wrapper_sees_every_operation_and_its_result(
    observed: Registry, observer: Observer
) -> None:
    users = observed.users
    created = users.create(NewUser("ann@example.org"))
    got = users.get(created.id)
    by_email = users.get_by_email("ANN@example.org")
    found = users.find(str(created.id))
    page = users.list(UserQuery())
    updated = users.update(created.id, UserChanges(full_name="Ann"))
    inactive = users.set_active(created.id, False)
    deleted = users.delete(created.id)
    restored = users.restore(created.id)
    purged = users.purge(timedelta(days=1))
    assert observer.operations == [
        ("users.create", "ok", created),
        ("users.get", "ok", got),
        ("users.get_by_email", "ok", by_email),
        ("users.get", "ok", found),
        ("users.list", "ok", page),
        ("users.update", "ok", updated),
        ("users.update", "ok", inactive),
        ("users.delete", "ok", deleted),
        ("users.restore", "ok", restored),
        ("users.purge", "ok", 0),
    ]
    assert purged == 0
    # The wrapper changed nothing: results are what storage holds.
    assert got == by_email == found == created
    assert page.items == (created,)


def test_the_wrapper_sees_the_exception_of_a_failing_operation(
    observed: Registry, observer: Observer
) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFound) as not_found:
        observed.users.get(missing)
    with pytest.raises(InvalidInput) as invalid:
        observed.users.list(UserQuery(limit=0))
    with pytest.raises(NotFound) as gone:
        observed.users.delete(missing)
    with pytest.raises(NotFound) as unknown:
        observed.users.restore(missing)
    with pytest.raises(InvalidInput) as negative:
        observed.users.purge(timedelta(seconds=-1))
    with pytest.raises(InvalidInput) as bad_sort:
        observed.users.list(UserQuery(sort="age"))
    assert observer.operations == [
        ("users.get", "error", not_found.value),
        ("users.list", "error", invalid.value),
        ("users.delete", "error", gone.value),
        ("users.restore", "error", unknown.value),
        ("users.purge", "error", negative.value),
        ("users.list", "error", bad_sort.value),
    ]


def test_results_with_and_without_the_wrapper_agree(observed: Registry, registry: Registry) -> None:
    # Both registries open the same database file; each writes its own user.
    for i, reg in enumerate((observed, registry)):
        user = reg.users.create(NewUser(f"ann{i}@example.org", full_name="Ann"))
        assert reg.users.get(user.id) == user
        updated = reg.users.update(user.id, UserChanges(full_name="Ann B."))
        assert updated.version == 2
        assert reg.users.list(UserQuery(email=f"ANN{i}@example.org")).items == (updated,)


# -- property ----------------------------------------------------------------------------


def _accepted(new: NewUser) -> bool:
    return not check_fields({"email": new.email, "full_name": new.full_name})[1]


#: ``new_users()`` draws names from every category but Cc and Cs; names may not hold
#: format characters (Cf) or tag characters either: keep the users the service accepts.
accepted_users = new_users().filter(_accepted)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(new=accepted_users)
def test_created_users_read_back_equal(registry: Registry, new: NewUser) -> None:
    # One database for every example: each removes its user again.
    user = registry.users.create(new)
    try:
        assert (user.email, user.full_name, user.is_active) == (
            new.email,
            new.full_name,
            new.is_active,
        )
        assert user.version == 1
        assert registry.users.get(user.id) == user
        assert registry.users.get_by_email(new.email) == user
        assert registry.users.get_by_email(new.email.swapcase()) == user
        assert registry.users.find(str(user.id)) == user
        assert registry.users.list(UserQuery()).items == (user,)
    finally:
        deleted = registry.users.delete(user.id)
    assert registry.users.list(UserQuery()).items == ()
    assert registry.users.list(UserQuery(include_deleted=True)).items == (deleted,)
    assert registry.users.get(user.id, include_deleted=True) == deleted
    assert purge_every_deleted_user(registry) == 1
    assert registry.users.list(UserQuery(include_deleted=True)).items == ()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    new=accepted_users,
    changes=st.builds(
        UserChanges,
        full_name=st.one_of(st.none(), st.text(alphabet="abc XYZ", min_size=1).filter(str.strip)),
        is_active=st.booleans(),
    ),
)
def test_updates_read_back_equal(registry: Registry, new: NewUser, changes: UserChanges) -> None:
    user = registry.users.create(new)
    try:
        updated = registry.users.update(user.id, changes)
        assert updated.full_name == changes.full_name
        assert updated.is_active == changes.is_active
        # A change to the values the user already has writes nothing.
        same = (changes.full_name, changes.is_active) == (user.full_name, user.is_active)
        assert updated.version == (1 if same else 2)
        assert registry.users.get(user.id) == updated
    finally:
        registry.users.delete(user.id)
        purge_every_deleted_user(registry)
    assert registry.users.list(UserQuery(include_deleted=True)).items == ()


def _distinct_emails(users: list[NewUser]) -> bool:
    keys = [normalize_email(u.email) for u in users]
    return len(set(keys)) == len(keys)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    news=st.lists(accepted_users, min_size=1, max_size=7).filter(_distinct_emails),
    ticks=st.lists(st.booleans(), min_size=7, max_size=7),
    limit=st.integers(min_value=1, max_value=4),
)
def test_every_sort_pages_through_generated_users_once_in_order(
    service: UserService, clock: Clock, news: list[NewUser], ticks: list[bool], limit: int
) -> None:
    # One database for every example: each purges its users again.
    users: list[User] = []
    try:
        for new, tick in zip(news, ticks, strict=False):
            if tick:
                clock.advance(SECOND)
            users.append(service.create(new))
        for sort_text in SORT_TEXTS:
            seen, _ = page_through(service, limit, sort=sort_text)
            assert seen == expected_order(users, Sort.parse(sort_text)), sort_text
    finally:
        for user in users:
            service.delete(user.id)
        clock.advance(SECOND)
        assert service.purge(timedelta(0)) == len(users)


# -- invisible formatting characters in names ------------------------------------------------

#: What lets one name pass for another on screen: bidirectional controls, zero-width
#: characters (and the BOM), and (below) tag characters.
BIDI_CONTROLS = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]
SPOOFING = [*BIDI_CONTROLS, "\u200e", "\u200f", "\u061c", "\u200b", "\u200c", "\u200d"]
SPOOFING += ["\u2060", "\ufeff"]
spoofing_chars = st.one_of(
    st.sampled_from(SPOOFING),
    st.integers(0xE0000, 0xE007F).map(chr),  # tag characters
)
#: Names with none of them, otherwise valid: no controls or format characters, not blank.
plain_names = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs", "Cf")), min_size=1, max_size=150
).filter(
    lambda s: (
        bool(s.strip())
        and len(fold(s)) <= 2 * 200
        and not any(0xE0000 <= ord(c) <= 0xE007F for c in s)
    )  # unassigned tags are Cn
)
SPOOF_MESSAGE = "invisible formatting characters"


def spliced(text: str, inserts: list[tuple[int, str]]) -> str:
    for at, char in inserts:
        at = min(at, len(text))
        text = text[:at] + char + text[at:]
    return text


@given(
    name=plain_names,
    inserts=st.lists(st.tuples(st.integers(0, 150), spoofing_chars), min_size=1, max_size=3),
)
def test_a_name_with_spoofing_characters_is_refused_and_accepted_without_them(
    name: str, inserts: list[tuple[int, str]]
) -> None:
    assert check_fields({"full_name": name}) == (None, [])
    spoofed = spliced(name, inserts)
    _, errors = check_fields({"full_name": spoofed})
    assert [(e.field, SPOOF_MESSAGE in e.message) for e in errors] == [("$.full_name", True)]
    # The same string without them is the name that was accepted.
    assert "".join(c for c in spoofed if c not in {ch for _, ch in inserts}) == name


@given(text=st.text(max_size=300), at=st.integers(0, 300), char=spoofing_chars)
def test_any_name_containing_a_spoofing_character_is_refused(text: str, at: int, char: str) -> None:
    _, errors = check_fields({"full_name": spliced(text, [(at, char)])})
    assert [e.field for e in errors] == ["$.full_name"]


@settings(max_examples=25)
@given(local=st.from_regex(r"[a-z]{1,12}", fullmatch=True), at=st.integers(0, 30))
@pytest.mark.parametrize("char", [*SPOOFING, "\U000e0001", "\U000e0041", "\U000e007f"])
def test_an_email_with_a_spoofing_character_is_refused(local: str, at: int, char: str) -> None:
    address = spliced(f"{local}@example.org", [(at, char)])
    with pytest.raises(InvalidInput) as info:
        normalize_email(address)
    assert fields_of(info.value) == ["$.email"]


@pytest.mark.parametrize(
    "name",
    [
        "\u202eevil.exe",  # shows as "exe.live"
        "Ann\u200b",  # looks like "Ann"
        "\ufeffAnn",
        "Ann\U000e0041\U000e0042",  # tag letters: invisible text
        "👨\u200d👩\u200d👧",  # ZWJ emoji: refused with every format character
        "Ann\u00adSmith",  # a soft hyphen is a format character too
    ],
)
def test_create_and_update_refuse_spoofing_names(registry: Registry, name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        create(registry, full_name=name)
    assert fields_of(info.value) == ["$.full_name"]
    user = create(registry, full_name="Ann")
    with pytest.raises(InvalidInput) as info:
        registry.users.update(user.id, UserChanges(full_name=name))
    assert fields_of(info.value) == ["$.full_name"]
    assert registry.users.get(user.id) == user


@pytest.mark.parametrize(
    "name", ["محمد بن سلمان", "שרה לוי", "Ann محمد (שרה)", "Zoë 😀", "李小龍", "अनुष्का"]
)
def test_right_to_left_and_other_scripts_need_no_controls(registry: Registry, name: str) -> None:
    assert create(registry, full_name=name).full_name == name


# -- restore and who may see deleted users ---------------------------------------------------

SUPPORT = Principal(id="test:support", kind="test", roles=frozenset({"support"}))
EDITOR = Principal(id="test:editor", kind="test", roles=frozenset({"editor"}))


@pytest.fixture
def with_support(database_url: str) -> Iterator[Registry]:
    """A registry with a custom role that may restore but not see deleted users."""
    roles = json.dumps({"support": ["users:read", "users:restore"]})
    variables = {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_ROLES": roles}
    with Registry(Settings.from_mapping(variables)) as reg:
        reg.migrate()
        yield reg


def test_restore_hides_deleted_users_from_who_may_not_see_them(with_support: Registry) -> None:
    reg = with_support
    user = create(reg)
    gone = reg.users.delete(user.id)
    missing = uuid.uuid4()
    with acting_as(SUPPORT):
        with pytest.raises(NotFound) as hidden:
            reg.users.restore(user.id)
        with pytest.raises(NotFound) as unknown:
            reg.users.restore(missing)
    # Hidden, not confirmed: the answer is the one for an id that never existed.
    assert hidden.value.detail == unknown.value.detail.replace(str(missing), str(user.id))
    assert reg.users.get(user.id, include_deleted=True) == gone  # still deleted
    with acting_as(EDITOR):
        restored = reg.users.restore(user.id)
    assert restored.deleted_at is None
    # A live user is no secret to a principal that may restore: returned as it is.
    with acting_as(SUPPORT):
        assert reg.users.restore(user.id) == restored


def test_restore_without_a_principal_is_trusted_code(with_support: Registry) -> None:
    user = create(with_support)
    with_support.users.delete(user.id)
    assert with_support.users.restore(user.id).deleted_at is None
