"""The import's row rules: the same answers as the API's converter, and CSV cells."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from userplane import convert
from userplane.imports import _well_typed, escape_cell, read_csv, read_ndjson, validate

json_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
)
rows = st.dictionaries(
    st.sampled_from(["email", "full_name", "is_active", "extra", "id"]), json_values, max_size=4
)


@settings(max_examples=500, deadline=None)
@given(rows)
def test_the_quick_type_check_accepts_only_what_the_converter_does(data: dict[str, Any]) -> None:
    """A row the quick check passes is one the API's converter takes as it is."""
    if _well_typed(data):
        convert.new_user_from(data)  # the shape is right: the converter raises nothing


def test_a_row_is_rejected_for_every_reason_with_its_line() -> None:
    (record,) = read_ndjson(['{"email": "nope", "full_name": " ", "colour": "red"}\n'], start=7)
    rejected = validate(record)
    assert not hasattr(rejected, "email_key")
    lines = rejected.lines()  # type: ignore[union-attr]
    assert all(line.startswith("line 7: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {"$.email", "$.full_name", "$.colour"}


def test_csv_cells_come_back_as_exported() -> None:
    text = "email,full_name,is_active\n" + ",".join(
        [escape_cell("-x@example.org"), escape_cell("=HYPERLINK()"), "no"]
    )
    (record,) = read_csv(text.splitlines(keepends=True))
    assert record.data == {
        "email": "-x@example.org",
        "full_name": "=HYPERLINK()",
        "is_active": False,
    }
    assert record.line == 2
