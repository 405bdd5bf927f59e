"""``UserService`` through a real ``Registry`` on a SQLite file of each test's own."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Generator, Iterator
from datetime import UTC
from typing import Any

import pytest
import structlog
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
from userplane.testing import new_users


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A Registry's ``userplane_startup`` configures logging process-wide: undo it after."""
    root = logging.getLogger()
    level = root.level
    yield
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if getattr(h, "_userplane", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


def full_width(text: str) -> str:
    """``text`` with ASCII letters in their full-width forms (NFKC maps them back)."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalpha() else c for c in text)


def fields_of(exc: InvalidInput) -> list[str]:
    return [e.field for e in exc.errors]


def create(reg: Registry, email: str = "ann@example.org", **kwargs: Any) -> User:
    return reg.users.create(NewUser(email=email, **kwargs))


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


def _cursor_of(payload: object) -> str:
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(["9999-12-31T23:59:59-05:00", str(uuid.UUID(int=0))], id="time-overflow"),
        pytest.param(["0001-01-01T00:00:00+05:00", str(uuid.UUID(int=0))], id="time-underflow"),
        pytest.param(["2026-01-02T03:04:05+00:00", 5], id="id-a-number"),
        pytest.param(["2026-01-02T03:04:05+00:00", [1]], id="id-a-list"),
        pytest.param(["2026-01-02T03:04:05", str(uuid.UUID(int=0))], id="naive-time"),
    ],
)
def test_a_tampered_cursor_is_invalid_input_naming_it(registry: Registry, payload: object) -> None:
    create(registry)
    with pytest.raises(InvalidInput) as info:
        registry.users.list(UserQuery(cursor=_cursor_of(payload)))
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


def test_an_empty_update_still_bumps_the_version(registry: Registry) -> None:
    user = create(registry, full_name="Ann")
    updated = registry.users.update(user.id, UserChanges())
    assert updated.version == user.version + 1
    assert updated.updated_at >= user.updated_at
    assert (updated.email, updated.full_name, updated.is_active) == (
        user.email,
        user.full_name,
        user.is_active,
    )
    assert registry.users.get(user.id).version == 2


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


def test_delete_returns_the_last_state_and_frees_the_email(registry: Registry) -> None:
    user = create(registry, "gone@example.org")
    user = registry.users.set_active(user.id, False)
    assert registry.users.delete(user.id) == user
    with pytest.raises(NotFound):
        registry.users.get(user.id)
    with pytest.raises(NotFound):
        registry.users.delete(user.id)
    assert create(registry, "GONE@example.org").email == "GONE@example.org"


def test_delete_with_a_stale_version_fails(registry: Registry) -> None:
    user = create(registry)
    registry.users.set_active(user.id, False)
    with pytest.raises(PreconditionFailed):
        registry.users.delete(user.id, expected_version=1)
    assert registry.users.delete(user.id, expected_version=2).version == 2


# -- plugins observe -----------------------------------------------------------------------


class Observer:
    """A test plugin recording user events and wrapping every operation."""

    def __init__(self) -> None:
        self.events: list[tuple[str, User, frozenset[str] | None]] = []
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
        reg.storage.migrate()
        yield reg


def test_plugin_sees_user_events_with_changed_fields(
    observed: Registry, observer: Observer
) -> None:
    users = observed.users
    created = users.create(NewUser("ann@example.org", full_name="Ann"))
    renamed = users.update(created.id, UserChanges(full_name=None, email="ann2@example.org"))
    touched = users.update(created.id, UserChanges())
    inactive = users.set_active(created.id, False)
    deleted = users.delete(created.id)
    assert observer.events == [
        ("created", created, None),
        ("updated", renamed, frozenset({"full_name", "email"})),
        ("updated", touched, frozenset()),
        ("updated", inactive, frozenset({"is_active"})),
        ("deleted", deleted, None),
    ]
    assert deleted == inactive


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
    assert observer.events == []


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
    assert observer.operations == [
        ("users.create", "ok", created),
        ("users.get", "ok", got),
        ("users.get_by_email", "ok", by_email),
        ("users.get", "ok", found),
        ("users.list", "ok", page),
        ("users.update", "ok", updated),
        ("users.update", "ok", inactive),
        ("users.delete", "ok", deleted),
    ]
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
    assert observer.operations == [
        ("users.get", "error", not_found.value),
        ("users.list", "error", invalid.value),
        ("users.delete", "error", gone.value),
    ]


def test_results_with_and_without_the_wrapper_agree(observed: Registry, registry: Registry) -> None:
    # Both registries open the same database file; each writes its own user.
    for i, reg in enumerate((observed, registry)):
        user = reg.users.create(NewUser(f"ann{i}@example.org", full_name="Ann"))
        assert reg.users.get(user.id) == user
        updated = reg.users.update(user.id, UserChanges())
        assert updated.version == 2
        assert reg.users.list(UserQuery(email=f"ANN{i}@example.org")).items == (updated,)


# -- property ----------------------------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(new=new_users())
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
        registry.users.delete(user.id)
    assert registry.users.list(UserQuery()).items == ()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    new=new_users(),
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
        assert updated.version == 2
        assert registry.users.get(user.id) == updated
    finally:
        registry.users.delete(user.id)
