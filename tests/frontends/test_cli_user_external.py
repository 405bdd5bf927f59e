"""External ids and custom attributes through the admin CLI, on SQLite and PostgreSQL.

``users create|update|list`` with ``--external-source``, ``--external-id``,
``--attributes`` and ``--clear-external-id``; ``users export`` then ``users
import`` of the fields, in NDJSON and CSV, into a fresh database and back into
the same one; and an import whose rows collide on an external id. In-process
through click's CliRunner, over this test's real database (``conftest.py``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from userplane.frontends.cli import cli

#: Read by ``conftest.py`` when a test needs PostgreSQL: kept out of the CLI's environment.
PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"
#: Exit codes: a taken value, invalid input (rows rejected too), a usage error.
CONFLICT_EXIT = 4
INVALID_EXIT = 5
USAGE_EXIT = 2
#: What a round trip through a file must keep of each user.
KEPT = ("email", "full_name", "is_active", "external_source", "external_id", "attributes")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No USERPLANE_* from the outer environment; the root logger restored afterwards."""
    for name in list(os.environ):
        if name.startswith("USERPLANE_") and name != PG_ENV:
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class Cli:
    """``userplane …`` in-process against one database, never a stray ``.env``."""

    def __init__(self, tmp_path: Path, database_url: str, name: str = "empty.env") -> None:
        self.tmp_path = tmp_path
        self.env_file = tmp_path / name
        self.env_file.touch()
        self.env: dict[str, str | None] = {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_LOG_FORMAT": "json",
            PG_ENV: None,
        }

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(
            cli, ["--env-file", str(self.env_file), *args], env=self.env, catch_exceptions=False
        )

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> list[dict[str, Any]]:
        result = self.ok(*args, "--format", "json")
        assert result.stderr == ""
        return [json.loads(line) for line in result.stdout.splitlines()]

    def one(self, *args: str) -> dict[str, Any]:
        rows = self.json(*args)
        assert len(rows) == 1, rows
        return rows[0]

    def fails(self, code: int, *args: str) -> str:
        """Run, expect exit ``code``, nothing on stdout and one line on stderr; return it."""
        result = self(*args)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert "Traceback" not in result.stderr
        return lines[0]

    def import_(self, path: Path, *options: str, code: int = 0) -> tuple[dict[str, Any], Result]:
        """An import with a JSON summary, expecting exit ``code``: the summary and result."""
        result = self("users", "import", str(path), "--summary", "json", *options)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        [line] = result.stdout.splitlines()
        summary: dict[str, Any] = json.loads(line)
        return summary, result


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Cli:
    """The CLI over this test's migrated database, on each backend."""
    run = Cli(tmp_path, database_url)
    run.ok("migrate")
    return run


@pytest.fixture
def fresh(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    """The CLI over a second, fresh database on the same backend, migrated."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        url = request.getfixturevalue("create_postgresql_database")()
    run = Cli(tmp_path, url, "fresh.env")
    run.ok("migrate")
    return run


def kept(users: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What a round trip keeps of each user, sorted by email."""
    return sorted(({k: u[k] for k in KEPT} for u in users), key=lambda u: u["email"])


def counts(summary: Mapping[str, Any]) -> dict[str, int]:
    return {k: summary[k] for k in ("created", "updated", "unchanged", "skipped", "rejected")}


def error_lines(result: Result) -> list[str]:
    """The ``line N: field: message`` lines an import printed on stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("line ")]


def write_ndjson(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: Iterable[list[str]]) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


# -- create, update, list -------------------------------------------------------------------------


def test_create_update_and_list_with_the_options(app: Cli) -> None:
    ann = app.one(
        "users",
        "create",
        "--email",
        "ann@example.org",
        "--external-source",
        "okta",
        "--external-id",
        "00u-ÄNN",
        "--attributes",
        '{"team": "Ünïcode 😀", "level": {"n": 3, "tags": ["a", null]}}',
    )
    assert (ann["external_source"], ann["external_id"]) == ("okta", "00u-ÄNN")
    assert ann["attributes"] == {"team": "Ünïcode 😀", "level": {"n": 3, "tags": ["a", None]}}
    bob = app.one("users", "create", "--email", "bob@example.org")
    assert (bob["external_source"], bob["external_id"], bob["attributes"]) == (None, None, {})
    cid = app.one(
        "users", "create", "--email", "cid@example.org",
        "--external-source", "azure", "--external-id", "00u-ÄNN",
    )  # fmt: skip

    # --attributes on update is a merge patch.
    merged = app.one(
        "users", "update", ann["id"], "--attributes", '{"level": {"n": null, "m": 4}, "x": 1}'
    )
    assert merged["attributes"] == {
        "team": "Ünïcode 😀",
        "level": {"tags": ["a", None], "m": 4},
        "x": 1,
    }
    assert merged["version"] == 2
    same = app.one("users", "update", ann["id"], "--attributes", '{"x": 1}')
    assert same == merged  # nothing changed: nothing written
    cleared = app.one("users", "update", ann["id"], "--attributes", "null")
    assert cleared["attributes"] == {}
    # The pair, moved and taken.
    moved = app.one(
        "users", "update", bob["id"], "--external-source", "okta", "--external-id", "bob"
    )
    assert (moved["external_source"], moved["external_id"]) == ("okta", "bob")
    line = app.fails(
        CONFLICT_EXIT,
        "users", "update", bob["id"], "--external-source", "okta", "--external-id", "00u-ÄNN",
    )  # fmt: skip
    assert line == "userplane: conflict: a user with external id '00u-ÄNN' from 'okta' exists"
    line = app.fails(
        CONFLICT_EXIT,
        "users", "create", "--email", "dan@example.org",
        "--external-source", "azure", "--external-id", "00u-ÄNN",
    )  # fmt: skip
    assert "external id" in line

    # Lists filter by source, by id and by both.
    def emails(*options: str) -> list[str]:
        return [u["email"] for u in app.json("users", "list", *options)]

    assert emails("--external-source", "okta") == ["ann@example.org", "bob@example.org"]
    assert emails("--external-id", "00u-ÄNN") == ["ann@example.org", "cid@example.org"]
    assert emails("--external-source", "azure", "--external-id", "00u-ÄNN") == ["cid@example.org"]
    assert emails("--external-source", "okta", "--external-id", "nobody") == []
    line = app.fails(INVALID_EXIT, "users", "list", "--external-source", "bad source")
    assert line.startswith("userplane: invalid-input: $.external_source: ")
    assert app.one("users", "get", cid["id"]) == cid


def test_clear_external_id_removes_the_pair(app: Cli) -> None:
    user = app.one(
        "users", "create", "--email", "ann@example.org",
        "--external-source", "okta", "--external-id", "ann", "--attributes", '{"a": 1}',
    )  # fmt: skip
    cleared = app.one("users", "update", user["id"], "--clear-external-id")
    assert (cleared["external_source"], cleared["external_id"]) == (None, None)
    assert cleared["attributes"] == {"a": 1}
    assert cleared["version"] == 2
    assert app.one("users", "update", user["id"], "--clear-external-id") == cleared  # no change
    # The pair is free again.
    app.one(
        "users", "create", "--email", "bob@example.org",
        "--external-source", "okta", "--external-id", "ann",
    )  # fmt: skip
    # Clearing and setting at once is a usage error; nothing changes.
    result = app(
        "users", "update", user["id"], "--clear-external-id", "--external-id", "x",
        "--external-source", "okta",
    )  # fmt: skip
    assert result.exit_code == USAGE_EXIT, (result.stdout, result.stderr)
    assert "--clear-external-id" in result.stderr
    assert app.one("users", "get", user["id"]) == cleared


@pytest.mark.parametrize(
    ("command", "text"),
    [
        ("create", "{not json"),
        ("create", "nope"),
        ("create", '"a string"'),
        ("create", "[1, 2]"),
        ("create", '{"deep": {"a": {"b": {"c": 1}}}}'),
        ("update", "{not json"),
        ("update", "[1]"),
        ("update", '{"n": 9007199254740992}'),
        ("update", '{"": 1}'),
    ],
)
def test_a_bad_attributes_option_is_one_line_and_a_failure(
    app: Cli, command: str, text: str
) -> None:
    user = app.one("users", "create", "--email", "ann@example.org", "--attributes", '{"a": 1}')
    if command == "create":
        args = ["users", "create", "--email", "bob@example.org", "--attributes", text]
    else:
        args = ["users", "update", user["id"], "--attributes", text]
    line = app.fails(INVALID_EXIT, *args)
    assert line.startswith("userplane: invalid-input: ")
    assert "--attributes" in line or "$.attributes" in line, line
    assert [u["email"] for u in app.json("users", "list")] == ["ann@example.org"]
    assert app.one("users", "get", user["id"]) == user


def test_an_id_needs_its_source_on_the_command_line(app: Cli) -> None:
    line = app.fails(
        INVALID_EXIT, "users", "create", "--email", "ann@example.org", "--external-id", "x"
    )
    assert line.startswith("userplane: invalid-input: $.external_source: ")
    user = app.one("users", "create", "--email", "ann@example.org")
    line = app.fails(INVALID_EXIT, "users", "update", user["id"], "--external-id", "x")
    assert line.startswith("userplane: invalid-input: $.external_source: ")
    line = app.fails(
        INVALID_EXIT, "users", "update", user["id"],
        "--external-source", "okta", "--external-id", " padded",
    )  # fmt: skip
    assert line.startswith("userplane: invalid-input: $.external_id: ")


def test_a_source_alone_on_update_is_refused_not_a_clear(app: Cli) -> None:
    user = app.one(
        "users", "create", "--email", "ann@example.org",
        "--external-source", "okta", "--external-id", "ann",
    )  # fmt: skip
    result = app("users", "update", user["id"], "--external-source", "azure")
    assert result.exit_code != 0, result.stdout
    assert app.one("users", "get", user["id"]) == user


# -- export, then import -------------------------------------------------------------------------

#: Users whose fields make a file round trip work: unicode, JSON in a CSV cell, values a
#: spreadsheet would run (escaped by the export), none at all.
_SEEDS: list[list[str]] = [
    [
        "--email", "ann@example.org", "--full-name", "Ann",
        "--external-source", "okta", "--external-id", "00u-ÄNN 😀",
        "--attributes", '{"team": "Zoë, \\"quoted\\"", "n": [1, 2.5, true, null], "o": {"k": {}}}',
    ],
    [
        "--email", "bob@example.org",
        "--external-source", "azure", "--external-id", "=SUM(A1)",
        "--attributes", '{"=formula": "+1", "newline": "a\\nb", "comma,key": ","}',
    ],
    ["--email", "cid@example.org", "--external-source", "okta", "--external-id", "-1"],
    ["--email", "dan@example.org", "--external-source", "okta", "--external-id", "'=x"],
    ["--email", "eve@example.org", "--attributes", '{"only": "attributes"}', "--inactive"],
    ["--email", "fay@example.org", "--full-name", "Fay"],
]  # fmt: skip


def _seed(app: Cli) -> list[dict[str, Any]]:
    return [app.one("users", "create", *options) for options in _SEEDS]


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_export_then_import_into_a_fresh_database_keeps_the_fields(
    app: Cli, fresh: Cli, tmp_path: Path, fmt: str
) -> None:
    users = _seed(app)
    path = tmp_path / f"users.{fmt}"
    app.ok("users", "export", "--format", fmt, "-o", str(path))
    summary, result = fresh.import_(path, "--format", fmt, "--on-conflict", "update")
    assert counts(summary) == {
        "created": len(users), "updated": 0, "unchanged": 0, "skipped": 0, "rejected": 0,
    }, result.stderr  # fmt: skip
    assert kept(fresh.json("users", "list")) == kept(users)
    # Again into the same place: every row is already there, unchanged.
    summary, _ = fresh.import_(path, "--format", fmt, "--on-conflict", "update")
    assert summary["unchanged"] == len(users)
    assert kept(fresh.json("users", "list")) == kept(users)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_an_import_with_on_conflict_update_puts_the_exported_fields_back(
    app: Cli, tmp_path: Path, fmt: str
) -> None:
    users = _seed(app)
    path = tmp_path / f"users.{fmt}"
    app.ok("users", "export", "--format", fmt, "-o", str(path))
    ann, bob = users[0], users[1]
    app.one("users", "update", ann["id"], "--attributes", '{"team": null, "added": 1}')
    app.one("users", "update", ann["id"], "--external-source", "okta", "--external-id", "other")
    app.one("users", "update", bob["id"], "--clear-external-id", "--attributes", "null")
    summary, result = app.import_(path, "--format", fmt, "--on-conflict", "update")
    assert (summary["updated"], summary["unchanged"], summary["rejected"]) == (
        2,
        len(users) - 2,
        0,
    ), result.stderr
    # The file's attributes replace the stored ones whole (no merge of an export).
    assert kept(app.json("users", "list")) == kept(users)


def test_an_import_rejects_each_row_whose_external_id_is_taken(app: Cli, tmp_path: Path) -> None:
    holder = app.one(
        "users", "create", "--email", "holder@example.org",
        "--external-source", "okta", "--external-id", "stored",
    )  # fmt: skip
    mover = app.one(
        "users", "create", "--email", "mover@example.org",
        "--external-source", "okta", "--external-id", "mine",
    )  # fmt: skip
    rows: list[dict[str, Any]] = [
        {"email": "a@example.org", "external_source": "okta", "external_id": "1"},
        {"email": "b@example.org", "external_source": "okta", "external_id": "1"},  # the file's
        {"email": "c@example.org", "external_source": "okta", "external_id": "stored"},  # stored
        {"email": "d@example.org", "external_source": "azure", "external_id": "1"},  # fine
        {"email": "mover@example.org", "external_source": "okta", "external_id": "stored"},
        {"email": "e@example.org", "external_source": "okta", "external_id": "2",
         "attributes": {"k": "v"}},
    ]  # fmt: skip
    path = write_ndjson(tmp_path / "in.ndjson", rows)
    summary, result = app.import_(path, "--on-conflict", "update", code=INVALID_EXIT)
    assert counts(summary) == {
        "created": 3, "updated": 0, "unchanged": 0, "skipped": 0, "rejected": 3,
    }, result.stderr  # fmt: skip
    shown = error_lines(result)
    assert [line.split(":")[0] for line in shown] == ["line 2", "line 3", "line 5"], shown
    assert all(line.split(": ")[1] == "$.external_id" for line in shown), shown
    assert str(holder["id"]) in shown[1]
    # The rejects file holds the rows as they were written, to be fixed and imported again.
    rejects = Path(f"{path}.rejects.ndjson")
    written = path.read_text().splitlines()
    assert rejects.read_text().splitlines() == [written[1], written[2], written[4]]
    by_email = {u["email"]: u for u in app.json("users", "list")}
    assert set(by_email) == {
        "holder@example.org", "mover@example.org", "a@example.org", "d@example.org",
        "e@example.org",
    }  # fmt: skip
    assert (
        by_email["a@example.org"]["external_source"],
        by_email["a@example.org"]["external_id"],
    ) == ("okta", "1")
    assert by_email["e@example.org"]["attributes"] == {"k": "v"}
    assert by_email["mover@example.org"] == mover  # its row was rejected: unchanged
    assert by_email["holder@example.org"] == holder


def test_a_csv_import_rejects_a_taken_external_id_by_line(app: Cli, tmp_path: Path) -> None:
    app.one(
        "users", "create", "--email", "holder@example.org",
        "--external-source", "okta", "--external-id", "stored",
    )  # fmt: skip
    header = ["email", "external_source", "external_id", "attributes"]
    rows = [
        ["a@example.org", "okta", "x", '{"a": 1}'],
        ["b@example.org", "okta", "stored", ""],
        ["c@example.org", "okta", "x", ""],
        ["d@example.org", "", "", '{"d": [1]}'],
        ["e@example.org", "okta", "y", "{not json"],
    ]
    path = write_csv(tmp_path / "in.csv", header, rows)
    summary, result = app.import_(path, code=INVALID_EXIT)
    assert counts(summary) == {
        "created": 2, "updated": 0, "unchanged": 0, "skipped": 0, "rejected": 3,
    }, result.stderr  # fmt: skip
    shown = error_lines(result)
    assert [line.split(": ")[:2] for line in shown] == [
        ["line 3", "$.external_id"],
        ["line 4", "$.external_id"],
        ["line 6", "$.attributes"],
    ], shown
    rejects = Path(f"{path}.rejects.csv").read_text().splitlines()
    assert rejects[0] == ",".join(header)
    assert len(rejects) == 4
    listed = {u["email"]: u for u in app.json("users", "list")}
    assert set(listed) == {"holder@example.org", "a@example.org", "d@example.org"}
    assert (listed["a@example.org"]["external_id"], listed["a@example.org"]["attributes"]) == (
        "x",
        {"a": 1},
    )
    assert listed["d@example.org"]["attributes"] == {"d": [1]}
    assert listed["d@example.org"]["external_source"] is None


def test_an_imported_source_without_an_id_is_refused_as_on_create(app: Cli, tmp_path: Path) -> None:
    # A source says whose id it is: alone it says nothing, and is refused (as by POST).
    path = write_ndjson(
        tmp_path / "in.ndjson", [{"email": "ann@example.org", "external_source": "okta"}]
    )
    summary, result = app.import_(path, code=5)
    assert summary["rejected"] == 1
    assert "$.external_id" in result.stderr
    assert app.json("users", "list") == []
