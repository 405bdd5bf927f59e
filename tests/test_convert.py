"""The edges: users to and from JSON, request bodies to ``NewUser`` and ``UserChanges``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from userplane.convert import changes_from, new_user_from, user_from_dict, user_to_dict
from userplane.errors import InvalidInput
from userplane.testing import emails
from userplane.users import UNSET, NewUser, User, UserChanges

FAST = settings(max_examples=50, deadline=None)

# JSON-safe text: orjson refuses lone surrogates, which no JSON body can carry anyway.
json_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
utc_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2200, 12, 31),
    timezones=st.just(UTC),
)
users = st.builds(
    User,
    id=st.uuids(),
    email=st.one_of(emails(), json_text),
    full_name=st.one_of(st.none(), json_text),
    is_active=st.booleans(),
    created_at=utc_datetimes,
    updated_at=utc_datetimes,
    version=st.integers(min_value=1, max_value=2**53),
    deleted_at=st.one_of(st.none(), utc_datetimes),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=8,
)


def fields_of(exc: InvalidInput) -> list[str]:
    return [e.field for e in exc.errors]


# -- users out and back ---------------------------------------------------------------


@FAST
@given(users)
def test_user_round_trips_through_its_dict(user: User) -> None:
    assert user_from_dict(user_to_dict(user)) == user


@FAST
@given(users)
def test_user_round_trips_through_json_bytes(user: User) -> None:
    assert user_from_dict(orjson.loads(orjson.dumps(user_to_dict(user)))) == user


@FAST
@given(users)
def test_user_dict_is_json_with_z_timestamps(user: User) -> None:
    data = user_to_dict(user)
    encoded = orjson.dumps(data)
    decoded = orjson.loads(encoded)
    assert decoded == data
    assert set(data) == {
        "id",
        "email",
        "full_name",
        "is_active",
        "created_at",
        "updated_at",
        "version",
        "deleted_at",
        "external_source",
        "external_id",
        "attributes",
    }
    assert data["id"] == str(user.id)
    times = ["created_at", "updated_at"]
    if user.deleted_at is None:
        assert data["deleted_at"] is None
        assert b'"deleted_at":null' in encoded
    else:
        times.append("deleted_at")
    for name in times:
        assert isinstance(data[name], str)
        assert data[name].endswith("Z")
        assert "+00:00" not in data[name]
        assert datetime.fromisoformat(data[name]) == getattr(user, name)


def test_user_dict_shape() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    user = User(
        id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        email="Ann@Example.org",
        full_name=None,
        is_active=True,
        created_at=at,
        updated_at=at,
        version=3,
    )
    assert user_to_dict(user) == {
        "id": "12345678-1234-5678-1234-567812345678",
        "email": "Ann@Example.org",
        "full_name": None,
        "is_active": True,
        "created_at": "2026-01-02T03:04:05.123456Z",
        "updated_at": "2026-01-02T03:04:05.123456Z",
        "version": 3,
        "deleted_at": None,
        "external_source": None,
        "external_id": None,
        "attributes": {},
    }


def test_a_deleted_user_dict_shape() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    gone = datetime(2026, 2, 3, 4, 5, 6, 7, tzinfo=UTC)
    user = User(
        id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        email="Ann@Example.org",
        full_name="Ann",
        is_active=False,
        created_at=at,
        updated_at=gone,
        version=4,
        deleted_at=gone,
    )
    data = user_to_dict(user)
    assert data == {
        "id": "12345678-1234-5678-1234-567812345678",
        "email": "Ann@Example.org",
        "full_name": "Ann",
        "is_active": False,
        "created_at": "2026-01-02T03:04:05.123456Z",
        "updated_at": "2026-02-03T04:05:06.000007Z",
        "version": 4,
        "deleted_at": "2026-02-03T04:05:06.000007Z",
        "external_source": None,
        "external_id": None,
        "attributes": {},
    }
    assert user_from_dict(data) == user


def test_a_user_is_live_unless_deleted_at_is_given() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    # deleted_at is the last field and optional: positional construction keeps working.
    user = User(uuid.uuid4(), "a@b.org", None, True, at, at, 1)
    assert user.deleted_at is None
    assert user_to_dict(user)["deleted_at"] is None
    assert user_from_dict(user_to_dict(user)).deleted_at is None


def test_microseconds_survive_the_round_trip() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC)
    user = User(uuid.uuid4(), "a@b.org", "A", False, at, at, 1)
    back = user_from_dict(user_to_dict(user))
    assert back.created_at.microsecond == 1
    assert back.created_at.utcoffset() is not None
    assert back.created_at.utcoffset().total_seconds() == 0
    deleted = User(uuid.uuid4(), "a@b.org", "A", False, at, at, 2, deleted_at=at)
    back = user_from_dict(user_to_dict(deleted))
    assert back.deleted_at == at
    assert back.deleted_at is not None
    assert back.deleted_at.microsecond == 1
    assert back.deleted_at.utcoffset() == timedelta(0)


# -- new users --------------------------------------------------------------------------


def test_new_user_with_only_an_email_gets_defaults() -> None:
    assert new_user_from({"email": "ann@example.org"}) == NewUser(
        email="ann@example.org", full_name=None, is_active=True
    )


def test_new_user_with_every_field() -> None:
    data = {"email": "ann@example.org", "full_name": "Ann", "is_active": False}
    assert new_user_from(data) == NewUser("ann@example.org", "Ann", False)


def test_new_user_takes_a_null_full_name() -> None:
    assert new_user_from({"email": "a@b.org", "full_name": None}).full_name is None


def test_new_user_rejects_each_unknown_key() -> None:
    with pytest.raises(InvalidInput) as info:
        new_user_from({"email": "a@b.org", "zzz": 1, "aaa": 2, "id": "x"})
    assert sorted(fields_of(info.value)) == ["$.aaa", "$.id", "$.zzz"]
    assert all(e.message == "unknown field" for e in info.value.errors)


@pytest.mark.parametrize("value", [None, "2026-01-02T03:04:05Z"])
def test_new_user_cannot_be_created_deleted(value: Any) -> None:
    # deleted_at is the service's to set (delete, restore), never a client's.
    with pytest.raises(InvalidInput) as info:
        new_user_from({"email": "a@b.org", "deleted_at": value})
    assert fields_of(info.value) == ["$.deleted_at"]
    assert info.value.errors[0].message == "unknown field"


@FAST
@given(
    st.dictionaries(
        json_text.filter(lambda k: k not in {"email", "full_name", "is_active"}),
        json_values,
        min_size=1,
        max_size=4,
    )
)
def test_new_user_names_every_unknown_key(extra: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as info:
        new_user_from({"email": "a@b.org", **extra})
    assert sorted(fields_of(info.value)) == sorted(f"$.{k}" for k in extra)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({"email": 5}, "$.email", id="email-int"),
        pytest.param({"email": None}, "$.email", id="email-null"),
        pytest.param({"email": ["a@b.org"]}, "$.email", id="email-list"),
        pytest.param({"email": "a@b.org", "is_active": "yes"}, "$.is_active", id="active-yes"),
        pytest.param({"email": "a@b.org", "is_active": 1}, "$.is_active", id="active-one"),
        pytest.param({"email": "a@b.org", "is_active": 0}, "$.is_active", id="active-zero"),
        pytest.param({"email": "a@b.org", "is_active": None}, "$.is_active", id="active-null"),
        pytest.param({"email": "a@b.org", "full_name": 5}, "$.full_name", id="name-int"),
        pytest.param({}, "$.email", id="email-missing"),
        pytest.param({"full_name": "Ann"}, "$.email", id="email-missing-with-name"),
    ],
)
def test_new_user_is_strict_about_types(data: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        new_user_from(data)
    assert fields_of(info.value) == [field]
    assert info.value.errors[0].message


def test_missing_email_says_it_is_required() -> None:
    with pytest.raises(InvalidInput) as info:
        new_user_from({})
    assert info.value.errors[0].message == "required field is missing"


def test_new_user_reports_every_fault_at_once() -> None:
    with pytest.raises(InvalidInput) as info:
        new_user_from({"full_name": 5, "is_active": "no", "x": 1})
    assert sorted(fields_of(info.value)) == ["$.email", "$.full_name", "$.is_active", "$.x"]
    for field in fields_of(info.value):
        assert field in info.value.detail


@pytest.mark.parametrize("data", [None, [], [{"email": "a@b.org"}], "a@b.org", 5, True])
def test_new_user_needs_an_object(data: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        new_user_from(data)
    assert fields_of(info.value) == ["$"]


@FAST
@given(json_values)
def test_new_user_from_any_json_is_a_new_user_or_invalid_input(data: Any) -> None:
    error: InvalidInput | None = None
    try:
        result = new_user_from(data)
    except InvalidInput as exc:
        error = exc
    if error is not None:
        assert error.errors
        assert all(e.field.startswith("$") for e in error.errors)
    else:
        assert isinstance(result, NewUser)
        assert isinstance(result.email, str)
        assert isinstance(result.is_active, bool)


# -- changes (merge patch) -----------------------------------------------------------


def test_empty_patch_changes_nothing() -> None:
    changes = changes_from({})
    assert changes == UserChanges()
    assert changes.email is UNSET
    assert changes.full_name is UNSET
    assert changes.is_active is UNSET
    assert changes.as_dict() == {}


def test_absent_keys_stay_unset() -> None:
    changes = changes_from({"is_active": False})
    assert changes.is_active is False
    assert changes.email is UNSET
    assert changes.full_name is UNSET
    assert changes.as_dict() == {"is_active": False}


def test_null_full_name_clears_it() -> None:
    changes = changes_from({"full_name": None})
    assert changes.full_name is None
    assert changes.as_dict() == {"full_name": None}


def test_every_field_set() -> None:
    changes = changes_from({"email": "a@b.org", "full_name": "A", "is_active": True})
    assert changes == UserChanges(email="a@b.org", full_name="A", is_active=True)


@pytest.mark.parametrize("key", ["email", "is_active"])
def test_null_is_refused_where_a_value_is_required(key: str) -> None:
    with pytest.raises(InvalidInput) as info:
        changes_from({key: None})
    assert fields_of(info.value) == [f"$.{key}"]


def test_both_nulls_are_reported_together() -> None:
    with pytest.raises(InvalidInput) as info:
        changes_from({"email": None, "is_active": None, "full_name": None})
    assert sorted(fields_of(info.value)) == ["$.email", "$.is_active"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"email": 5}, "$.email"),
        ({"is_active": 1}, "$.is_active"),
        ({"is_active": "yes"}, "$.is_active"),
        ({"full_name": 3}, "$.full_name"),
        ({"full_name": ["Ann"]}, "$.full_name"),
        ({"id": "x"}, "$.id"),
        ({"version": 2}, "$.version"),
        ({"deleted_at": None}, "$.deleted_at"),
        ({"deleted_at": "2026-01-02T03:04:05Z"}, "$.deleted_at"),
    ],
)
def test_patch_is_strict(data: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        changes_from(data)
    assert fields_of(info.value) == [field]


def test_patch_reports_every_type_fault_at_once() -> None:
    with pytest.raises(InvalidInput) as info:
        changes_from({"email": 5, "is_active": "no", "full_name": 1})
    assert sorted(fields_of(info.value)) == ["$.email", "$.full_name", "$.is_active"]


@pytest.mark.parametrize("data", [None, [], [{"full_name": None}], "x", 1, False])
def test_patch_needs_an_object(data: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        changes_from(data)
    assert fields_of(info.value) == ["$"]


@FAST
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "email": emails(),
            "full_name": st.one_of(st.none(), json_text),
            "is_active": st.booleans(),
        },
    )
)
def test_valid_patches_set_exactly_their_keys(data: dict[str, Any]) -> None:
    assert changes_from(data).as_dict() == data


@FAST
@given(json_values)
def test_patch_from_any_json_is_changes_or_invalid_input(data: Any) -> None:
    error: InvalidInput | None = None
    try:
        result = changes_from(data)
    except InvalidInput as exc:
        error = exc
    if error is not None:
        assert error.errors
        assert all(e.field.startswith("$") for e in error.errors)
    else:
        assert isinstance(result, UserChanges)
        assert set(result.as_dict()) <= {"email", "full_name", "is_active"}
