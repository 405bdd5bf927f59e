"""Sort orders and opaque keyset cursors.

Every cursor the service issues round-trips under its own sort, is refused under
any other, and anything else a client sends is a clean 4xx at ``$.cursor``.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from userplane.emails import normalize_email
from userplane.errors import InvalidInput
from userplane.pagination import (
    CURSOR_FIELD,
    MAX_CURSOR,
    SORT_FIELD,
    SORT_FIELDS,
    Position,
    Sort,
    decode_cursor,
    encode_cursor,
)
from userplane.testing import emails
from userplane.text import fold
from userplane.users import MAX_FULL_NAME

FAST = settings(max_examples=50, deadline=None)

#: Every sort a client may ask for, as text.
SORT_TEXTS = [f"{sign}{field}" for field in SORT_FIELDS for sign in ("", "-")]
SORTS = [Sort.parse(text) for text in SORT_TEXTS]
CREATED = Sort("created_at")

offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23)),
)
#: created_at keys as the service makes them: from stored rows, in UTC.
utc_times = st.datetimes(timezones=st.just(UTC))
#: created_at keys with other offsets, at instants UTC can express.
offset_times = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets
)
#: Names the service accepts (no control characters, not blank, at most 200 characters).
full_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=MAX_FULL_NAME
).filter(str.strip)
#: email keys as earlier releases put them in cursors: normalised addresses.
email_keys = emails().map(normalize_email)
#: full_name keys as earlier releases put them in cursors: the folded name, or "".
name_keys = st.one_of(st.just(""), full_names.map(fold))


def keys_for(sort: Sort) -> st.SearchStrategy[datetime | None]:
    """Keys as the service puts them in cursors: a time, or none in a personal order."""
    if sort.field == "created_at":
        return utc_times
    return st.none()


@st.composite
def issued(draw: Any) -> tuple[Sort, Position]:
    """A sort and a position in it, as the service would put them in a cursor."""
    sort = draw(st.sampled_from(SORTS))
    return sort, Position(draw(keys_for(sort)), draw(st.uuids()))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def cursor_of(payload: Any) -> str:
    return b64(json.dumps(payload).encode())


def assert_invalid_cursor(cursor: str, sort: Sort, scope: str = "") -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        decode_cursor(cursor, sort, scope)
    assert [e.field for e in info.value.errors] == [CURSOR_FIELD]
    assert info.value.detail.startswith(CURSOR_FIELD)
    return info.value


def assert_position_or_invalid(cursor: str, sort: Sort) -> None:
    """``decode_cursor`` gives a ``Position`` or ``InvalidInput`` at ``$.cursor``, nothing else."""
    error: InvalidInput | None = None
    try:
        position = decode_cursor(cursor, sort)
    except InvalidInput as exc:
        error = exc
    if error is not None:
        assert [e.field for e in error.errors] == [CURSOR_FIELD]
        assert error.detail.startswith(CURSOR_FIELD)
    else:
        assert isinstance(position, Position)
        assert isinstance(position.id, uuid.UUID)
        if sort.field == "created_at":
            assert isinstance(position.key, datetime)
            assert position.key.tzinfo is not None
            # Storage compares in UTC: a decoded time must be expressible there.
            position.key.astimezone(UTC)
        else:
            assert position.key is None


# -- Sort.parse ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", SORT_TEXTS)
def test_every_allowed_sort_parses_and_prints_back(text: str) -> None:
    sort = Sort.parse(text)
    assert sort.field == text.removeprefix("-")
    assert sort.descending is text.startswith("-")
    assert str(sort) == text
    assert Sort.parse(str(sort)) == sort


def test_the_allow_list_is_exactly_three_fields() -> None:
    assert set(SORT_FIELDS) == {"created_at", "email", "full_name"}


def test_the_default_sort_is_oldest_first() -> None:
    assert Sort() == Sort.parse("created_at")
    assert Sort() == Sort("created_at", descending=False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-",
        "--email",
        "+email",
        "Email",
        "EMAIL",
        " email",
        "email ",
        "email,full_name",
        "id",
        "-id",
        "updated_at",
        "deleted_at",
        "version",
        "full-name",
        "fullname",
        "createdAt",
        "\uff45\uff4d\uff41\uff49\uff4c",  # full-width "email": sort names are not folded
        "\u0435mail",  # a Cyrillic ie for the e
        "email\x00",
        "created_at; DROP TABLE users",
    ],
)
def test_anything_else_is_refused_naming_the_sort(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Sort.parse(text)
    assert [e.field for e in info.value.errors] == [SORT_FIELD]
    assert repr(text.removeprefix("-")) in info.value.errors[0].message
    assert info.value.detail.startswith(SORT_FIELD)


@FAST
@given(st.text(max_size=20))
@example("email")
@example("-full_name")
@example("-created_at")
@example("--created_at")
def test_sort_parse_accepts_exactly_the_allow_list(text: str) -> None:
    if text in SORT_TEXTS:
        sort = Sort.parse(text)
        assert str(sort) == text
        assert sort.field in SORT_FIELDS
    else:
        with pytest.raises(InvalidInput) as info:
            Sort.parse(text)
        assert [e.field for e in info.value.errors] == [SORT_FIELD]
        assert repr(text.removeprefix("-")) in info.value.errors[0].message


# -- round trip -----------------------------------------------------------------------


@FAST
@given(issued())
def test_every_issued_cursor_round_trips_under_its_sort(issue: tuple[Sort, Position]) -> None:
    sort, position = issue
    decoded = decode_cursor(encode_cursor(sort, position), sort)
    assert decoded == position
    assert type(decoded.key) is type(position.key)
    if isinstance(decoded.key, datetime):
        assert decoded.key.utcoffset() == timedelta(0)


@pytest.mark.parametrize("sort", SORTS, ids=SORT_TEXTS)
@FAST
@given(data=st.data())
def test_cursor_round_trips_for_each_sort(sort: Sort, data: st.DataObject) -> None:
    position = Position(data.draw(keys_for(sort)), data.draw(st.uuids()))
    assert decode_cursor(encode_cursor(sort, position), sort) == position


@pytest.mark.parametrize("sort", [Sort("created_at"), Sort("created_at", True)], ids=str)
@FAST
@given(at=offset_times, id_=st.uuids())
def test_a_time_with_an_offset_round_trips_to_the_same_instant_in_utc(
    sort: Sort, at: datetime, id_: uuid.UUID
) -> None:
    decoded = decode_cursor(encode_cursor(sort, Position(at, id_)), sort)
    assert decoded == Position(at, id_)  # aware datetimes compare as instants
    assert isinstance(decoded.key, datetime)
    assert decoded.key.utcoffset() == timedelta(0)


@FAST
@given(issued())
def test_cursor_is_url_safe_and_within_the_length_limit(issue: tuple[Sort, Position]) -> None:
    cursor = encode_cursor(*issue)
    assert cursor.isascii()
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(cursor) <= MAX_CURSOR


def test_microseconds_survive() -> None:
    position = Position(datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC), uuid.uuid4())
    decoded = decode_cursor(encode_cursor(CREATED, position), CREATED)
    assert isinstance(decoded.key, datetime)
    assert decoded.key.microsecond == 7


@pytest.mark.parametrize("sort", [s for s in SORTS if s.field != "created_at"], ids=str)
@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="no-name"),
        pytest.param('a"b\\c', id="json-escapes"),
        pytest.param("2026-01-02T03:04:05", id="looks-like-a-time"),
        pytest.param("zoë jürgen 😀", id="non-ascii"),
    ],
)
def test_a_cursor_of_an_earlier_release_with_a_text_key_is_read_by_its_id(
    sort: Sort, key: str
) -> None:
    id_ = uuid.uuid4()
    assert decode_cursor(cursor_of([str(sort), key, str(id_)]), sort) == Position(None, id_)


@pytest.mark.parametrize("sort", [s for s in SORTS if s.field != "created_at"], ids=str)
@FAST
@given(key=st.one_of(email_keys, name_keys), id_=st.uuids())
def test_a_cursor_in_a_personal_order_carries_no_personal_data(
    sort: Sort, key: str, id_: uuid.UUID
) -> None:
    # The service asks for the key it sorts by (an email, a name) to be forgotten.
    cursor = encode_cursor(sort, Position(key, id_))
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert payload == [str(sort), str(id_)]
    assert decode_cursor(cursor, sort) == Position(None, id_)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("😀" * MAX_FULL_NAME, id="200-astral-characters"),
        pytest.param("\ufdfa" * 22, id="nfkc-expands-18-fold-to-the-folded-limit"),
        pytest.param("ß" * MAX_FULL_NAME, id="200-characters-fold-to-400"),
        pytest.param("é" * MAX_FULL_NAME, id="200-latin-characters"),
    ],
)
@pytest.mark.parametrize("sort", [Sort("full_name"), Sort("full_name", True)], ids=str)
def test_a_cursor_for_the_longest_accepted_names_is_accepted(sort: Sort, name: str) -> None:
    # Earlier releases issued cursors holding such names: they must still be taken back.
    id_ = uuid.uuid4()
    cursor = b64(
        json.dumps(
            [str(sort), fold(name), str(id_)], ensure_ascii=False, separators=(",", ":")
        ).encode()
    )
    assert len(cursor) <= MAX_CURSOR
    assert decode_cursor(cursor, sort) == Position(None, id_)


# -- a cursor of another sort ---------------------------------------------------------------


@pytest.mark.parametrize("issued_in", ["", "groups", "members"])
@pytest.mark.parametrize("used_in", ["", "groups", "members"])
def test_a_cursor_is_refused_by_any_other_list(issued_in: str, used_in: str) -> None:
    """Users, groups and a group's members page alike: a cursor names its list."""
    position = Position(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), uuid.uuid4())
    cursor = encode_cursor(Sort(), position, issued_in)
    if issued_in == used_in:
        assert decode_cursor(cursor, Sort(), used_in) == position
    else:
        assert_invalid_cursor(cursor, Sort(), used_in)


@pytest.mark.parametrize("issued_for", SORTS, ids=SORT_TEXTS)
@pytest.mark.parametrize("used_with", SORTS, ids=SORT_TEXTS)
def test_a_cursor_is_refused_under_any_other_sort(issued_for: Sort, used_with: Sort) -> None:
    key: datetime | None = None
    if issued_for.field == "created_at":
        key = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    position = Position(key, uuid.uuid4())
    cursor = encode_cursor(issued_for, position)
    if issued_for == used_with:
        assert decode_cursor(cursor, used_with) == position
    else:
        assert_invalid_cursor(cursor, used_with)


@FAST
@given(issued(), st.sampled_from(SORTS))
def test_an_issued_cursor_decodes_only_under_its_own_sort(
    issue: tuple[Sort, Position], other: Sort
) -> None:
    sort, position = issue
    cursor = encode_cursor(sort, position)
    if other == sort:
        assert decode_cursor(cursor, other) == position
    else:
        assert_invalid_cursor(cursor, other)


def test_a_cursor_of_the_reverse_direction_says_which_order_it_pages() -> None:
    cursor = encode_cursor(Sort("email"), Position("ann@example.org", uuid.uuid4()))
    error = assert_invalid_cursor(cursor, Sort("email", descending=True))
    assert "'email'" in error.errors[0].message
    assert "'-email'" in error.errors[0].message


def test_a_cursor_of_the_previous_format_is_refused() -> None:
    # Before sorting, a cursor was [created_at, id]; clients may still hold one.
    old = cursor_of([datetime(2026, 1, 2, tzinfo=UTC).isoformat(), str(uuid.uuid4())])
    for sort in SORTS:
        assert_invalid_cursor(old, sort)


# -- anything else ----------------------------------------------------------------------


@FAST
@given(st.text(), st.sampled_from(SORTS))
@example("", CREATED)
@example("=", CREATED)
@example("====", CREATED)
@example("a", CREATED)
@example("é", CREATED)
@example("\x00", CREATED)
@example("", Sort("full_name"))
@example("!!", Sort("email", True))
def test_arbitrary_text_is_a_position_or_invalid_input(cursor: str, sort: Sort) -> None:
    assert_position_or_invalid(cursor, sort)


@FAST
@given(st.binary(max_size=150), st.sampled_from(SORTS))
@example(b"", CREATED)
@example(b"\xff\xfe", CREATED)
@example(b"null", CREATED)
@example(b"[]", CREATED)
@example(b"[1, 2, 3]", Sort("email"))
@example(b'["created_at", "2026-01-02T03:04:05", "12345678-1234-5678-1234-567812345678"]', CREATED)
def test_arbitrary_bytes_base64_encoded_are_a_position_or_invalid_input(
    raw: bytes, sort: Sort
) -> None:
    assert_position_or_invalid(b64(raw), sort)
    assert_position_or_invalid(base64.urlsafe_b64encode(raw).decode("ascii"), sort)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
iso_times = st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat)
uuid_texts = st.uuids().map(str)
sort_texts = st.one_of(st.sampled_from(SORT_TEXTS), json_values)
_AT = datetime(2026, 1, 2, tzinfo=UTC).isoformat()
_ID = str(uuid.UUID(int=1))


@FAST
@given(
    st.one_of(
        json_values,
        st.tuples(
            sort_texts,
            st.one_of(iso_times, st.text(max_size=20), json_values),
            st.one_of(uuid_texts, json_values),
        ).map(list),
    ),
    st.sampled_from(SORTS),
)
@example(["created_at", _AT, 5], CREATED)
@example(["created_at", _AT, [1]], CREATED)
@example(["created_at", _AT, {"a": 1}], CREATED)
@example(["created_at", _AT, None], CREATED)
@example(["created_at", 5, _ID], CREATED)
@example([5, _AT, _ID], CREATED)
@example([None, "ann@example.org", _ID], Sort("email"))
@example(["email", ["ann@example.org"], _ID], Sort("email"))
@example({"a": 1, "b": 2}, CREATED)
@example(["created_at", "9999-12-31T23:59:59-05:00", str(uuid.UUID(int=0))], CREATED)
@example(["created_at", "0001-01-01T00:00:00+05:00", str(uuid.UUID(int=0))], CREATED)
def test_tampered_json_payloads_are_a_position_or_invalid_input(payload: Any, sort: Sort) -> None:
    # A client can base64 any JSON it likes; the decoder must never fail with anything but
    # InvalidInput. (A uuid that is a JSON number or list used to escape as AttributeError.)
    assert_position_or_invalid(cursor_of(payload), sort)


@pytest.mark.parametrize("sort", SORTS, ids=SORT_TEXTS)
@pytest.mark.parametrize("bad_id", [5, [1], {"a": 1}, 1.5, True, None])
def test_a_non_string_id_in_a_cursor_is_invalid_input(sort: Sort, bad_id: Any) -> None:
    key = _AT if sort.field == "created_at" else "ann"
    assert_invalid_cursor(cursor_of([str(sort), key, bad_id]), sort)


@pytest.mark.parametrize("sort", SORTS, ids=SORT_TEXTS)
@pytest.mark.parametrize("bad_key", [5, [_AT], {"a": 1}, 1.5, False, None])
def test_a_non_string_key_in_a_cursor_is_invalid_input(sort: Sort, bad_key: Any) -> None:
    assert_invalid_cursor(cursor_of([str(sort), bad_key, _ID]), sort)


@pytest.mark.parametrize("sort", SORTS, ids=SORT_TEXTS)
@pytest.mark.parametrize("bad_sort", [5, None, ["email"], True])
def test_a_non_string_sort_in_a_cursor_is_invalid_input(sort: Sort, bad_sort: Any) -> None:
    key = _AT if sort.field == "created_at" else "ann"
    assert_invalid_cursor(cursor_of([bad_sort, key, _ID]), sort)


@pytest.mark.parametrize("sort", [Sort("created_at"), Sort("created_at", True)], ids=str)
@pytest.mark.parametrize(
    "created_at",
    [
        pytest.param("9999-12-31T23:59:59-05:00", id="after-year-9999-in-utc"),
        pytest.param("0001-01-01T00:00:00+05:00", id="before-year-1-in-utc"),
    ],
)
def test_a_time_utc_cannot_express_is_refused(sort: Sort, created_at: str) -> None:
    assert_invalid_cursor(cursor_of([str(sort), created_at, str(uuid.uuid4())]), sort)


@pytest.mark.parametrize("sort", [Sort("created_at"), Sort("created_at", True)], ids=str)
def test_a_naive_timestamp_is_refused(sort: Sort) -> None:
    assert_invalid_cursor(cursor_of([str(sort), "2026-01-02T03:04:05", str(uuid.uuid4())]), sort)


@pytest.mark.parametrize(
    ("payload", "sort"),
    [
        (["created_at", "2026-01-02T03:04:05+00:00"], CREATED),
        (["created_at", "2026-01-02T03:04:05+00:00", "not-a-uuid"], CREATED),
        (["created_at", "not-a-date", "12345678-1234-5678-1234-567812345678"], CREATED),
        (["email", "a@b.org", "not-a-uuid"], Sort("email")),
        (["full_name", "ann"], Sort("full_name")),
        (
            ["created_at", "2026-01-02T03:04:05+00:00", "12345678-1234-5678-1234-567812345678", 1],
            CREATED,
        ),
    ],
)
def test_malformed_payloads_are_refused(payload: list[Any], sort: Sort) -> None:
    assert_invalid_cursor(cursor_of(payload), sort)


# -- length ---------------------------------------------------------------------------------


@FAST
@given(issued(), st.integers(min_value=1, max_value=400))
def test_over_long_cursors_are_refused(issue: tuple[Sort, Position], padding: int) -> None:
    sort, position = issue
    cursor = encode_cursor(sort, position)
    # Pad a genuine cursor with whitespace JSON would ignore: still refused, by length alone.
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    long = b64(raw + b" " * (padding + MAX_CURSOR))
    assert len(long) > MAX_CURSOR
    assert_invalid_cursor(long, sort)


@pytest.mark.parametrize("length", [MAX_CURSOR + 1, 10_000, 100_000])
@pytest.mark.parametrize("sort", SORTS, ids=SORT_TEXTS)
def test_long_junk_is_refused(sort: Sort, length: int) -> None:
    assert_invalid_cursor("A" * length, sort)
