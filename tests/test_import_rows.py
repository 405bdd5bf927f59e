"""The import's row rules: the same answers as the API's converter, and CSV cells."""

from __future__ import annotations

import json
from pathlib import Path
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


def _cli(env: dict[str, str], *args: str) -> Any:
    from click.testing import CliRunner

    from userplane.frontends.cli import cli

    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_a_place_kept_for_one_database_is_not_resumed_in_another(tmp_path: Path) -> None:
    """An import interrupted against database A does not skip rows in database B."""
    from userplane.frontends.cli.transfer import _save_state
    from userplane.imports import Counts

    path = tmp_path / "in.ndjson"
    path.write_text('{"email": "a@example.org"}\n{"email": "b@example.org"}\n')
    kept = {"format": "ndjson", "on_conflict": "skip", "database": str(tmp_path / "a.db")}
    _save_state(Path(f"{path}.import-state"), path, kept, 1, Counts(created=1))
    env = {
        "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}",
        "USERPLANE_ENV_FILE": str(tmp_path / "none.env"),
    }
    assert _cli(env, "migrate").exit_code == 0
    refused = _cli(env, "users", "import", str(path))
    assert refused.exit_code == 2, refused.output
    assert "--restart" in refused.stderr
    done = _cli(env, "users", "import", str(path), "--restart", "--summary", "json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["created"] == 2


def test_bad_places_to_write_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    env = {
        "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}",
        "USERPLANE_ENV_FILE": str(tmp_path / "none.env"),
    }
    assert _cli(env, "migrate").exit_code == 0
    path = tmp_path / "in.ndjson"
    path.write_text('{"email": "a@example.org"}\n')
    nowhere = str(tmp_path / "no" / "such" / "folder" / "x")
    for args, option in (
        (("users", "import", str(path), "--rejects", nowhere), "--rejects"),
        (("users", "export", "-o", nowhere), "-o"),
    ):
        result = _cli(env, *args)
        assert result.exit_code == 2, result.output
        [line] = result.stderr.splitlines()
        assert f"'{option}'" in line
    listed = _cli(env, "users", "list", "--format", "json")
    assert listed.stdout == ""  # the import wrote nothing
    bad = _cli(env, "copy", "--to", "postgresql://u:secret@db.example:54x/db")
    assert bad.exit_code == 11
    assert bad.stderr.splitlines() == [
        "userplane: configuration: --to: the port of "
        "postgresql://u:********@db.example:54x/db is not a number"
    ]
