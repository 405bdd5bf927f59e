"""Opaque keyset cursors: they round-trip, and anything else a client sends is a clean 4xx."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from userplane.errors import InvalidInput
from userplane.pagination import CURSOR_FIELD, Position, decode_cursor, encode_cursor

FAST = settings(max_examples=50, deadline=None)

offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23)),
)
#: Positions as the service makes them: from stored rows, in UTC.
positions = st.builds(
    Position,
    created_at=st.datetimes(timezones=st.just(UTC)),
    id=st.uuids(),
)
#: Positions with other offsets, at instants UTC can express.
offset_positions = st.builds(
    Position,
    created_at=st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets
    ),
    id=st.uuids(),
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def assert_position_or_invalid(cursor: str) -> None:
    """``decode_cursor`` gives a ``Position`` or ``InvalidInput`` at ``$.cursor``, nothing else."""
    error: InvalidInput | None = None
    try:
        position = decode_cursor(cursor)
    except InvalidInput as exc:
        error = exc
    if error is not None:
        assert [e.field for e in error.errors] == [CURSOR_FIELD]
        assert error.detail.startswith("$.cursor")
    else:
        assert isinstance(position, Position)
        assert isinstance(position.id, uuid.UUID)
        assert position.created_at.tzinfo is not None
        # Storage compares in UTC: a decoded time must be expressible there.
        position.created_at.astimezone(UTC)


# -- round trip -----------------------------------------------------------------------


@FAST
@given(positions)
def test_cursor_round_trips(position: Position) -> None:
    decoded = decode_cursor(encode_cursor(position))
    assert decoded == position
    assert decoded.created_at.utcoffset() == timedelta(0)


@FAST
@given(offset_positions)
def test_cursor_with_an_offset_round_trips_to_the_same_instant(position: Position) -> None:
    decoded = decode_cursor(encode_cursor(position))
    assert decoded == position  # aware datetimes compare as instants
    assert decoded.created_at.tzinfo is not None


@FAST
@given(st.one_of(positions, offset_positions))
def test_cursor_is_url_safe_and_within_the_length_limit(position: Position) -> None:
    cursor = encode_cursor(position)
    assert cursor.isascii()
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(cursor) <= 200


def test_microseconds_survive() -> None:
    position = Position(datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC), uuid.uuid4())
    assert decode_cursor(encode_cursor(position)).created_at.microsecond == 7


# -- anything else ----------------------------------------------------------------------


@FAST
@given(st.text())
@example("")
@example("=")
@example("====")
@example("a")
@example("é")
@example("\x00")
def test_arbitrary_text_is_a_position_or_invalid_input(cursor: str) -> None:
    assert_position_or_invalid(cursor)


@FAST
@given(st.binary(max_size=150))
@example(b"")
@example(b"\xff\xfe")
@example(b"null")
@example(b"[]")
@example(b"[1, 2]")
@example(b'["2026-01-02T03:04:05", "12345678-1234-5678-1234-567812345678"]')
def test_arbitrary_bytes_base64_encoded_are_a_position_or_invalid_input(raw: bytes) -> None:
    assert_position_or_invalid(b64(raw))
    assert_position_or_invalid(base64.urlsafe_b64encode(raw).decode("ascii"))


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


@FAST
@given(
    st.one_of(
        json_values,
        st.tuples(st.one_of(iso_times, json_values), st.one_of(uuid_texts, json_values)).map(list),
    )
)
@example([datetime(2026, 1, 2, tzinfo=UTC).isoformat(), 5])
@example([datetime(2026, 1, 2, tzinfo=UTC).isoformat(), [1]])
@example([datetime(2026, 1, 2, tzinfo=UTC).isoformat(), {"a": 1}])
@example([datetime(2026, 1, 2, tzinfo=UTC).isoformat(), None])
@example([5, str(uuid.UUID(int=1))])
@example({"a": 1, "b": 2})
@example(["9999-12-31T23:59:59-05:00", str(uuid.UUID(int=0))])
@example(["0001-01-01T00:00:00+05:00", str(uuid.UUID(int=0))])
def test_tampered_json_payloads_are_a_position_or_invalid_input(payload: Any) -> None:
    # A client can base64 any JSON it likes; the decoder must never fail with anything but
    # InvalidInput. (A uuid that is a JSON number or list used to escape as AttributeError.)
    raw = json.dumps(payload).encode()
    assert_position_or_invalid(b64(raw))


@pytest.mark.parametrize("bad_id", [5, [1], {"a": 1}, 1.5, True])
def test_a_non_string_id_in_a_cursor_is_invalid_input(bad_id: Any) -> None:
    raw = json.dumps([datetime(2026, 1, 2, tzinfo=UTC).isoformat(), bad_id]).encode()
    with pytest.raises(InvalidInput) as info:
        decode_cursor(b64(raw))
    assert [e.field for e in info.value.errors] == [CURSOR_FIELD]


@pytest.mark.parametrize(
    "created_at",
    [
        pytest.param("9999-12-31T23:59:59-05:00", id="after-year-9999-in-utc"),
        pytest.param("0001-01-01T00:00:00+05:00", id="before-year-1-in-utc"),
    ],
)
def test_a_time_utc_cannot_express_is_refused(created_at: str) -> None:
    raw = json.dumps([created_at, str(uuid.uuid4())]).encode()
    with pytest.raises(InvalidInput) as info:
        decode_cursor(b64(raw))
    assert [e.field for e in info.value.errors] == [CURSOR_FIELD]


def test_a_naive_timestamp_is_refused() -> None:
    raw = json.dumps(["2026-01-02T03:04:05", str(uuid.uuid4())]).encode()
    with pytest.raises(InvalidInput) as info:
        decode_cursor(b64(raw))
    assert [e.field for e in info.value.errors] == [CURSOR_FIELD]


@pytest.mark.parametrize(
    "payload",
    [
        ["2026-01-02T03:04:05+00:00"],
        ["2026-01-02T03:04:05+00:00", "not-a-uuid"],
        ["not-a-date", "12345678-1234-5678-1234-567812345678"],
        ["2026-01-02T03:04:05+00:00", "12345678-1234-5678-1234-567812345678", "extra"],
    ],
)
def test_malformed_payloads_are_refused(payload: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_cursor(b64(json.dumps(payload).encode()))
    assert [e.field for e in info.value.errors] == [CURSOR_FIELD]


# -- length ---------------------------------------------------------------------------------


@FAST
@given(st.one_of(positions, offset_positions), st.integers(min_value=1, max_value=400))
def test_over_long_cursors_are_refused(position: Position, padding: int) -> None:
    cursor = encode_cursor(position)
    # Pad a genuine cursor with whitespace JSON would ignore: still refused, by length alone.
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    long = b64(raw + b" " * (padding + 200))
    assert len(long) > 200
    with pytest.raises(InvalidInput) as info:
        decode_cursor(long)
    assert [e.field for e in info.value.errors] == [CURSOR_FIELD]


@pytest.mark.parametrize("length", [201, 1000, 100_000])
def test_long_junk_is_refused(length: int) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_cursor("A" * length)
    assert [e.field for e in info.value.errors] == [CURSOR_FIELD]
