"""Bulk import and export: ``userplane users import|export``, ``GET /api/v1/users/export``.

Most tests run the CLI in-process through click's CliRunner over this test's
database, on SQLite and PostgreSQL (``conftest.py``); a few drive
``userplane.imports.UserImporter`` directly (retries, a storage without the
bulk capability), and a few run ``userplane`` as a real process (progress bar,
a killed import resumed).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner, Result
from clients import client_for
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from userplane import NewUser, Registry, Settings, UserChanges, exports, hookimpl
from userplane.errors import Conflict, Unavailable
from userplane.frontends.cli import cli
from userplane.hooks import Hooks
from userplane.imports import (
    RETRIES,
    Counts,
    OnConflict,
    Record,
    Rejected,
    UserImporter,
    batches,
    read_csv,
    read_ndjson,
)
from userplane.keyring import NamedKey
from userplane.plugin import Principal, User
from userplane.plugin_manager import make_plugin_manager
from userplane.plugins import webhooks
from userplane.plugins.audit import trail_of
from userplane.plugins.audit.query import parse_query
from userplane.sealed_storage import INDEX_KEYS_SETTING, KEYS_SETTING, SealedStorage
from userplane.storage import BulkStorage
from userplane.users import MAX_FULL_NAME, check_fields

# Imports and exports through the CLI, many as real processes.
pytestmark = pytest.mark.e2e

PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"
PROBLEM_JSON = "application/problem+json"
#: The exit code of ``InvalidInput`` (rows rejected), of a usage error, of ``Unavailable``.
REJECTED_EXIT = 5
USAGE_EXIT = 2
UNAVAILABLE_EXIT = 10
#: How long audit reads wait for other sessions' transactions (PostgreSQL's horizon).
CATCH_UP = 30.0


# -- harness -----------------------------------------------------------------------------------


def rejects_of(path: Path | str) -> Path:
    """Where an import of ``path`` writes its rejected rows: FILE.rejects.<format>."""
    fmt = "csv" if str(path).lower().endswith(".csv") else "ndjson"
    return Path(f"{path}.rejects.{fmt}")


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
    """``userplane …`` in-process over one database, with optional extra plugins."""

    def __init__(
        self,
        tmp_path: Path,
        database_url: str,
        plugins: Sequence[object] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.env_file = tmp_path / "empty.env"
        self.env_file.touch()
        # The plugins' commands (``audit``, ``webhooks``) join a copy of the group, as
        # ``main`` adds them.
        self.pm = make_plugin_manager(extra_plugins=plugins)
        self.group = copy.copy(cli)
        self.group.commands = dict(cli.commands)
        Hooks(self.pm).cli_commands(self.group)
        self.env: dict[str, str | None] = {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_LOG_FORMAT": "json",
            PG_ENV: None,
            **(env or {}),
        }

    def __call__(self, *args: str, input: str | bytes | None = None) -> Result:
        return CliRunner().invoke(
            self.group,
            ["--env-file", str(self.env_file), *args],
            obj=self.pm,
            env=self.env,
            input=input,
            catch_exceptions=False,
        )

    def import_(
        self, path: Path | str, *options: str, code: int = 0
    ) -> tuple[dict[str, Any], Result]:
        """Run an import with a JSON summary; expect exit ``code``; the summary and result."""
        result = self("users", "import", str(path), "--summary", "json", *options)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 1, result.stdout
        return json.loads(lines[0]), result

    def export(self, *options: str) -> Result:
        result = self("users", "export", *options)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result


@pytest.fixture
def run(tmp_path: Path, database_url: str, registry: Registry) -> Cli:
    """The CLI over this test's migrated database (``registry`` migrated it)."""
    return Cli(tmp_path, database_url)


@pytest.fixture
def other_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A second, fresh database on the same backend (never migrated)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'other.db'}"
    url: str = request.getfixturevalue("create_postgresql_database")()
    return url


@contextlib.contextmanager
def opened(database_url: str, plugins: Sequence[object] = (), **env: str) -> Iterator[Registry]:
    settings_ = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url, **env})
    with Registry(settings_, plugins=plugins) as registry:
        registry.migrate()
        yield registry


def write_ndjson(path: Path, rows: Iterable[Mapping[str, Any] | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def counts(summary: Mapping[str, Any]) -> dict[str, int]:
    """The five counts of a JSON summary."""
    return {k: summary[k] for k in ("created", "updated", "unchanged", "skipped", "rejected")}


def expect(
    created: int = 0, updated: int = 0, unchanged: int = 0, skipped: int = 0, rejected: int = 0
) -> dict[str, int]:
    return {
        "created": created,
        "updated": updated,
        "unchanged": unchanged,
        "skipped": skipped,
        "rejected": rejected,
    }


def every_user(registry: Registry, include_deleted: bool = True) -> list[User]:
    """Every user, through the service (opened), oldest first."""
    return list(exports.all_users(registry.users, include_deleted))


def by_email(registry: Registry) -> dict[str, User]:
    return {u.email: u for u in every_user(registry)}


def row_count(registry: Registry, table: str = "users") -> int:
    storage: Any = registry.storage
    [(count,)] = storage.fetch_all(storage.dialect.compile(f"SELECT count(*) FROM {table}"), {})
    return int(count)


def triples(users: Iterable[User]) -> set[tuple[str, str | None, bool]]:
    return {(u.email, u.full_name, u.is_active) for u in users}


def error_lines(result: Result) -> list[str]:
    """The ``line N: field: message`` lines an import printed on stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("line ")]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def users_rows(n: int, domain: str = "example.org", start: int = 0) -> list[dict[str, Any]]:
    return [
        {"email": f"user{i:05d}@{domain}", "full_name": f"User {i}", "is_active": i % 3 != 0}
        for i in range(start, start + n)
    ]


def audit_events(registry: Registry, **filters: str) -> list[dict[str, Any]]:
    trail = trail_of(registry)
    trail.read_wait = CATCH_UP
    query: dict[str, str] = dict(filters)
    out: list[dict[str, Any]] = []
    while True:
        page = trail.list(parse_query({**query, "limit": "500"}))
        out += page.items
        if page.next is None:
            return out
        query["cursor"] = page.next


def import_in_process(
    registry: Registry,
    records: Iterable[Record],
    on_conflict: OnConflict = OnConflict.SKIP,
    batch_size: int = 1000,
    dry_run: bool = False,
) -> tuple[Counts, list[Rejected]]:
    """What ``userplane users import`` does, without the CLI: every batch, counts added up."""
    importer = UserImporter(registry, on_conflict, dry_run=dry_run)
    total = Counts()
    rejected: list[Rejected] = []
    for batch in batches(records, batch_size):
        result = importer.import_batch(batch)
        total.add(result.counts)
        rejected += result.rejected
    return total, rejected


def ndjson_records(rows: Iterable[Mapping[str, Any] | str]) -> list[Record]:
    lines = [(r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows]
    return list(read_ndjson(lines))


# -- import: NDJSON and CSV ----------------------------------------------------------------------


def test_ndjson_import_stores_users_with_exactly_the_given_fields(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    path = write_ndjson(
        tmp_path / "users.ndjson",
        [
            {"email": "Ann@Example.org", "full_name": "Ann Example", "is_active": True},
            {"email": "bob@example.org"},
            "",
            {"email": "cy@example.org", "full_name": None, "is_active": False},
            # An export's read-only fields are accepted and ignored.
            {
                "email": "dee@example.org",
                "id": str(uuid.uuid4()),
                "version": 7,
                "created_at": "2001-01-01T00:00:00Z",
                "updated_at": "2001-01-01T00:00:00Z",
                "deleted_at": None,
            },
        ],
    )
    summary, result = run.import_(path)
    assert counts(summary) == expect(created=4)
    assert summary["rows"] == 4
    assert summary["dry_run"] is False
    assert "rejects" not in summary
    assert result.stderr == ""
    assert not rejects_of(path).exists()
    assert not Path(f"{path}.import-state").exists()
    users = by_email(registry)
    assert sorted(users) == [
        "Ann@Example.org",
        "bob@example.org",
        "cy@example.org",
        "dee@example.org",
    ]
    ann = users["Ann@Example.org"]
    assert (ann.full_name, ann.is_active, ann.version, ann.deleted_at) == (
        "Ann Example",
        True,
        1,
        None,
    )
    assert ann.created_at == ann.updated_at
    assert (users["bob@example.org"].full_name, users["bob@example.org"].is_active) == (None, True)
    assert (users["cy@example.org"].full_name, users["cy@example.org"].is_active) == (None, False)
    dee = users["dee@example.org"]
    assert dee.version == 1
    assert dee.created_at.year > 2001
    # Each imported user reads back through the API's lookups (the email key is right).
    assert registry.users.get_by_email("ANN@example.ORG").id == ann.id
    assert row_count(registry) == 4


def test_csv_import_reads_cells_as_a_spreadsheet_wrote_them(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "users.csv"
    # A UTF-8 BOM (Excel's "CSV UTF-8"), CRLF lines, columns in any order, blank line.
    path.write_bytes(
        "\ufefffull_name,email,is_active\r\n"
        "Ann,ann@example.org,yes\r\n"
        ",bob@example.org,\r\n"
        "\r\n"
        "Cy,cy@example.org,0\r\n"
        "Dee,dee@example.org,FALSE\r\n"
        '"Eve, the second",eve@example.org,1\r\n'
        "Fay,fay@example.org,true\r\n".encode()
    )
    summary, result = run.import_(path)
    assert counts(summary) == expect(created=6), result.stderr
    users = by_email(registry)
    assert {e: (u.full_name, u.is_active) for e, u in users.items()} == {
        "ann@example.org": ("Ann", True),
        "bob@example.org": (None, True),
        "cy@example.org": ("Cy", False),
        "dee@example.org": ("Dee", False),
        "eve@example.org": ("Eve, the second", True),
        "fay@example.org": ("Fay", True),
    }


def test_imported_users_are_stored_as_the_api_stores_them(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    name = "Ann \u00c5ngstr\u00f6m Stra\u00dfe \ufb01"
    twin = registry.users.create(NewUser("Twin.API@Example.org", name))
    path = write_ndjson(
        tmp_path / "in.ndjson",
        [
            {"email": "Twin.Import@Example.org", "full_name": name},
            {"email": "zed@example.org", "full_name": "Zed"},
        ],
    )
    run.import_(path)
    imported = registry.users.get_by_email("twin.import@example.org")
    storage: Any = registry.storage
    sql = storage.dialect.compile(
        "SELECT email_normalized, full_name_folded, email_index_next FROM users WHERE id = :id"
    )

    def keys(user: User) -> tuple[Any, ...]:
        [row] = storage.fetch_all(sql, storage.params({"id": user.id}))
        return tuple(row)

    api_keys, import_keys = keys(twin), keys(imported)
    assert import_keys[1:] == api_keys[1:]
    assert import_keys[0] == api_keys[0].replace("twin.api", "twin.import")
    # Found by search, and in its place when sorted by name.
    from userplane.users import UserQuery

    found = registry.users.list(UserQuery(q="STRASSE"))
    assert {u.id for u in found.items} == {twin.id, imported.id}
    by_name = [u.email for u in registry.users.list(UserQuery(sort="full_name")).items]
    assert set(by_name[:2]) == {"Twin.API@Example.org", "Twin.Import@Example.org"}
    assert by_name[2] == "zed@example.org"


def test_import_usage_errors_and_empty_files(run: Cli, registry: Registry, tmp_path: Path) -> None:
    result = run("users", "import", str(tmp_path / "missing.ndjson"))
    assert result.exit_code == USAGE_EXIT
    assert "is not a file" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    empty = tmp_path / "empty.ndjson"
    empty.write_text("")
    result = run("users", "import", str(empty), "--batch-size", "0")
    assert result.exit_code == USAGE_EXIT
    summary, _ = run.import_(empty)
    assert counts(summary) == expect()
    header_only = tmp_path / "header.csv"
    header_only.write_text("email,full_name\n")
    summary, _ = run.import_(header_only)
    assert counts(summary) == expect()
    blank = write_ndjson(tmp_path / "blank.ndjson", ["", "   ", ""])
    summary, _ = run.import_(blank)
    assert counts(summary) == expect()
    assert every_user(registry) == []


def test_an_import_whose_place_cannot_be_saved_does_not_stop_half_way(
    run: Cli, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file in a folder the importer may not write to (a read-only mount, another's folder).

    Simulated: writing ``FILE.import-state`` fails as it would there (the tests run as root,
    whom permissions do not stop).
    """
    real = Path.write_text

    def read_only_folder(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name.endswith(".import-state.tmp"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only_folder)
    path = write_ndjson(tmp_path / "in.ndjson", users_rows(30))
    result = run("users", "import", str(path), "--batch-size", "10")
    stored = row_count(registry)
    assert result.exit_code == 0 or stored == 0, (
        f"BUG: an import of a file in a folder it cannot write to commits its first batch "
        f"({stored} of 30 users) and then stops with exit {result.exit_code}: "
        f"{result.stderr.strip()!r}. transfer.import_ saves FILE.import-state beside FILE "
        "after each batch (_save_state) without checking first that it can, and a failure "
        "there is an internal error"
    )


#: (the row as written, what the error line must say)
BAD_NDJSON: list[tuple[Mapping[str, Any] | str, str]] = [
    ({"email": "not-an-address"}, "$.email"),
    ({"email": "ann@example.org", "full_name": "   "}, "$.full_name: must not be blank"),
    (
        {"email": "ann@example.org", "full_name": "x" * (MAX_FULL_NAME + 1)},
        "$.full_name: must be at most",
    ),
    (
        {"email": "ann@example.org", "full_name": "Ann\u0007"},
        "$.full_name: must not contain control",
    ),
    ({"email": "ann@example.org", "full_name": "Ann\x00"}, "$.full_name: must not contain control"),
    (
        {"email": "ann@example.org", "full_name": "Ann\u202eevil"},
        "$.full_name: must not contain invisible",
    ),
    ({"email": "ann@example.org", "is_active": "yes"}, "$.is_active: must be a boolean"),
    ({"email": "ann@example.org", "is_active": 1}, "$.is_active: must be a boolean"),
    ({"email": "ann@example.org", "full_name": 5}, "$.full_name"),
    ({"email": 5}, "$.email: must be a string"),
    ({"email": None}, "$.email"),
    ({"full_name": "No Address"}, "$.email: required field is missing"),
    ({"email": "ann@example.org", "role": "admin"}, "$.role: unknown field"),
    ({"email": "ann@example.org", "deleted_at": "2024-01-01T00:00:00Z"}, "$.deleted_at"),
    ("[1, 2]", "$: must be a JSON object"),
    ('"ann@example.org"', "$: must be a JSON object"),
    ("{not json", "$: is not valid JSON"),
    ('{"email": "ann@example.org"', "$: is not valid JSON"),
]


def test_ndjson_rows_at_fault_are_rejected_by_line_and_written_to_the_rejects_file(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    rows: list[Mapping[str, Any] | str] = [{"email": "first@example.org"}]
    for bad, _ in BAD_NDJSON:
        rows.append(bad)
    rows.append({"email": "last@example.org"})
    path = write_ndjson(tmp_path / "in.ndjson", rows)
    summary, result = run.import_(path, code=REJECTED_EXIT)
    assert counts(summary) == expect(created=2, rejected=len(BAD_NDJSON))
    assert summary["rejects"] == str(rejects_of(path))
    shown = error_lines(result)
    for number, (_, said) in enumerate(BAD_NDJSON, start=2):
        mine = [line for line in shown if line.startswith(f"line {number}: ")]
        assert mine, (number, said, result.stderr)
        assert any(said in line for line in mine), (number, said, mine)
    assert {line.split(":")[0] for line in shown} == {
        f"line {n}" for n in range(2, 2 + len(BAD_NDJSON))
    }
    assert result.stderr.splitlines()[-1] == (
        f"userplane: invalid-input: {len(BAD_NDJSON)} rows rejected: see {rejects_of(path)}"
    )
    rejects = rejects_of(path)
    assert mode(rejects) == 0o600
    written = path.read_text().splitlines()[1:-1]
    assert rejects.read_text().splitlines() == written
    assert sorted(by_email(registry)) == ["first@example.org", "last@example.org"]


def test_a_fixed_ndjson_rejects_file_imports(run: Cli, registry: Registry, tmp_path: Path) -> None:
    path = write_ndjson(
        tmp_path / "in.ndjson",
        [
            {"email": "ok@example.org"},
            {"email": "ann@example", "full_name": "Ann"},
            {"email": "bob@example.org", "is_active": "no"},
        ],
    )
    summary, _ = run.import_(path, code=REJECTED_EXIT)
    assert counts(summary) == expect(created=1, rejected=2)
    rejects = rejects_of(path)
    fixed = rejects.read_text().replace("ann@example", "ann@example.org").replace('"no"', "false")
    rejects.write_text(fixed)
    summary, result = run.import_(rejects)
    assert counts(summary) == expect(created=2), result.stderr
    users = by_email(registry)
    assert users["ann@example.org"].full_name == "Ann"
    assert users["bob@example.org"].is_active is False
    # A clean run leaves no rejects of its own.
    assert not rejects_of(rejects).exists()
    # The first file fixed and run again: everything is there now, and the clean run
    # removes the rejects its earlier run left (they would mislead).
    path.write_text(
        path.read_text().replace("ann@example", "ann@example.org").replace('"no"', "false")
    )
    summary, _ = run.import_(path)
    assert counts(summary) == expect(skipped=3)
    assert not rejects.exists(), "a clean run removes the rejects an earlier run of FILE left"


def test_csv_rejects_keep_the_header_and_a_fixed_file_imports(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "in.csv",
        ["email", "full_name", "is_active"],
        [
            ["ann@example.org", "Ann", "true"],
            ["bad-address", "Bad", "true"],
            ["cy@example.org", "Cy", "maybe"],
            ["dee@example.org", "Dee"],  # one cell short
            ["eve@example.org", "   ", ""],
            ["fay@example.org", "Fay", "false"],
        ],
    )
    summary, result = run.import_(path, code=REJECTED_EXIT)
    assert counts(summary) == expect(created=2, rejected=4)
    shown = error_lines(result)
    assert [line.split(":")[0] for line in shown] == ["line 3", "line 4", "line 5", "line 6"]
    assert "$.email" in shown[0]
    assert "$.is_active" in shown[1]
    assert "cells" in shown[2]
    assert "$.full_name" in shown[3]
    rejects = rejects_of(path)
    assert mode(rejects) == 0o600
    lines = rejects.read_text().splitlines()
    assert lines[0] == "email,full_name,is_active"
    assert lines[1:] == [
        "bad-address,Bad,true",
        "cy@example.org,Cy,maybe",
        "dee@example.org,Dee",
        "eve@example.org,   ,",
    ]
    rejects.write_text(
        "email,full_name,is_active\n"
        "bad@example.org,Bad,true\n"
        "cy@example.org,Cy,no\n"
        "dee@example.org,Dee,\n"
        "eve@example.org,,\n"
    )
    summary, result = run.import_(rejects, "--format", "csv")
    assert counts(summary) == expect(created=4), result.stderr
    users = by_email(registry)
    assert len(users) == 6
    assert users["cy@example.org"].is_active is False
    assert users["eve@example.org"].full_name is None


def test_a_csv_rejects_file_is_read_as_csv_without_format(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "in.csv", ["email", "full_name"], [["ok@example.org", "Ok"], ["bad", "Bad"]]
    )
    run.import_(path, code=REJECTED_EXIT)
    rejects = rejects_of(path)
    assert rejects.read_text() == "email,full_name\nbad,Bad\n"
    rejects.write_text("email,full_name\nbad@example.org,Bad\n")
    result = run("users", "import", str(rejects), "--summary", "json")
    assert result.exit_code == 0, (
        f"BUG: the default rejects file of a CSV import ({rejects.name}) is read back as "
        f"NDJSON unless --format csv is given (the format is guessed from a '.csv' suffix, "
        f"and FILE.rejects has none), so every line of the fixed file is rejected: "
        f"{result.stderr.splitlines()[:2]}"
    )
    assert counts(json.loads(result.stdout)) == expect(created=1)


CSV_HEADERS_AT_FAULT = [
    ("email,full_name,role", "unknown column 'role'"),
    ("full_name,is_active", "the header has no email column"),
    ("mail,name", "unknown column 'mail'"),
]


def test_a_csv_header_at_fault_is_one_line_error(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    for header, said in CSV_HEADERS_AT_FAULT:
        path = tmp_path / "in.csv"
        path.write_text(f"{header}\nann@example.org,Ann,x\n")
        result = run("users", "import", str(path))
        assert result.exit_code == REJECTED_EXIT, (header, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert said in lines[0]
        assert "line 1" in lines[0]
        assert every_user(registry) == []
        assert not Path(f"{path}.import-state").exists()
        assert not rejects_of(path).exists()


def test_bytes_that_are_not_utf8_reject_their_row_only(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(
        b"email,full_name\nann@example.org,Ann\nbob@example.org,B\xffob\ncy\xfe@example.org,Cy\n"
        b"dee@example.org,Dee\n"
    )
    summary, result = run.import_(path, code=REJECTED_EXIT)
    assert counts(summary) == expect(created=2, rejected=2)
    assert [line.split(":")[0] for line in error_lines(result)] == ["line 3", "line 4"]
    # The rejects file holds the rows' bytes as they were, to be fixed.
    assert rejects_of(path).read_bytes().splitlines()[1:] == [
        b"bob@example.org,B\xffob",
        b"cy\xfe@example.org,Cy",
    ]
    assert sorted(by_email(registry)) == ["ann@example.org", "dee@example.org"]


def test_rejects_go_where_asked_and_an_old_rejects_file_is_replaced_privately(
    run: Cli, tmp_path: Path
) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", [{"email": "ok@example.org"}, {"email": "bad"}])
    old = rejects_of(path)
    old.write_text("an earlier run's rows\n")
    old.chmod(0o644)
    run.import_(path, code=REJECTED_EXIT)
    assert old.read_text() == '{"email": "bad"}\n'
    assert mode(old) == 0o600
    old.unlink()
    elsewhere = tmp_path / "sub" / "bad-rows.ndjson"
    elsewhere.parent.mkdir()
    summary, result = run.import_(path, "--rejects", str(elsewhere), code=REJECTED_EXIT)
    assert counts(summary) == expect(skipped=1, rejected=1)
    assert summary["rejects"] == str(elsewhere)
    assert f"see {elsewhere}" in result.stderr
    assert elsewhere.read_text() == '{"email": "bad"}\n'
    assert mode(elsewhere) == 0o600
    assert not old.exists()


def test_a_csv_row_too_big_to_read_is_kept_in_the_rejects_file(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "in.csv"
    big = "x" * 200_000  # past the csv module's field limit (128 KiB)
    path.write_text(f"email,full_name\na@example.org,A\nb@example.org,{big}\nc@example.org,C\n")
    summary, result = run.import_(path, code=REJECTED_EXIT)
    assert counts(summary) == expect(created=2, rejected=1)
    [line] = error_lines(result)
    assert line == "line 3: $.full_name: must be at most 200 characters"
    lines = rejects_of(path).read_text().splitlines()
    assert lines[0] == "email,full_name"
    assert [(k[:16], len(k)) for k in lines[1:]] == [("b@example.org,xx", 14 + len(big))], (
        f"BUG: a CSV row the reader cannot parse (here a cell past the field limit) is "
        f"written to the rejects file as {lines[1:2]!r}: read_csv yields its Record with "
        "raw='' on csv.Error, so the row is lost from the file meant to be fixed and "
        "imported again"
    )


def test_only_twenty_errors_are_shown_and_every_row_is_in_the_rejects_file(
    run: Cli, tmp_path: Path
) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", [{"email": f"bad{i}"} for i in range(25)])
    summary, result = run.import_(path, code=REJECTED_EXIT)
    assert counts(summary) == expect(rejected=25)
    assert len(error_lines(result)) == 20
    assert "and 5 more errors" in result.stderr
    assert len(rejects_of(path).read_text().splitlines()) == 25


FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", '=HYPERLINK("x")']


def test_csv_formula_cells_are_escaped_on_export_and_round_trip(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    for i, name in enumerate(FORMULAS):
        registry.users.create(NewUser(f"f{i}@example.org", name))
    registry.users.create(NewUser("-dash@example.org", "Plain"))
    registry.users.create(NewUser("+plus@example.org", None))
    out = tmp_path / "out.csv"
    run.export("--format", "csv", "-o", str(out))
    rows = list(csv.DictReader(out.read_text().splitlines()))
    cells = {r["email"]: r["full_name"] for r in rows}
    for i, name in enumerate(FORMULAS):
        assert cells[f"f{i}@example.org"] == "'" + name
    assert cells["'-dash@example.org"] == "Plain"
    assert cells["'+plus@example.org"] == ""
    # Into a second database, then out again: the same users, the same cells.
    other = tmp_path / "other.db"
    target = Cli(tmp_path, f"sqlite:///{other}")
    assert target("migrate").exit_code == 0
    summary, result = target.import_(out)
    assert counts(summary) == expect(created=len(FORMULAS) + 2), result.stderr
    with opened(f"sqlite:///{other}") as copy:
        assert triples(every_user(copy)) == triples(every_user(registry))
    again = tmp_path / "again.csv"
    target.export("--format", "csv", "-o", str(again))
    assert sorted(r["email"] for r in csv.DictReader(again.read_text().splitlines())) == sorted(
        cells
    )


def test_csv_round_trip_keeps_a_name_that_begins_with_a_quote(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    """A name that really begins with ``'`` then a formula character must come back whole."""
    registry.users.create(NewUser("quote@example.org", "'=not a formula"))
    registry.users.create(NewUser("quote2@example.org", "'+44 20 7946 0000"))
    out = tmp_path / "out.csv"
    run.export("--format", "csv", "-o", str(out))
    with opened(f"sqlite:///{tmp_path / 'other.db'}") as copy:
        target = Cli(tmp_path, f"sqlite:///{tmp_path / 'other.db'}")
        summary, _ = target.import_(out)
        assert counts(summary) == expect(created=2)
        names = {u.email: u.full_name for u in every_user(copy)}
    assert names == {
        "quote@example.org": "'=not a formula",
        "quote2@example.org": "'+44 20 7946 0000",
    }, (
        'BUG: export --format csv leaves a name beginning with "\'" + a formula character '
        'unescaped, and import strips that "\'" (imports._unescaped): the name changes '
        "on a CSV round trip"
    )


# -- idempotency ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_second_run_of_the_same_file_creates_nothing(
    run: Cli, registry: Registry, tmp_path: Path, fmt: str
) -> None:
    rows = users_rows(25)
    if fmt == "csv":
        path = write_csv(
            tmp_path / "in.csv",
            ["email", "full_name", "is_active"],
            [[r["email"], r["full_name"], str(r["is_active"]).lower()] for r in rows],
        )
    else:
        path = write_ndjson(tmp_path / "in.ndjson", rows)
    summary, _ = run.import_(path, "--batch-size", "7")
    assert counts(summary) == expect(created=25)
    before = every_user(registry)
    summary, result = run.import_(path, "--batch-size", "7")
    assert counts(summary) == expect(skipped=25)
    assert "resuming" not in result.stderr
    assert every_user(registry) == before
    assert row_count(registry) == 25


def test_emails_differing_only_by_case_are_the_same_user(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    ann = registry.users.create(NewUser("Ann@Example.org", "Ann"))
    path = write_ndjson(
        tmp_path / "in.ndjson",
        [
            {"email": "ann@EXAMPLE.ORG", "full_name": "Other"},
            {"email": "Bob@example.org"},
            {"email": "bob@Example.org", "full_name": "Bob again"},
        ],
    )
    summary, _ = run.import_(path)
    assert counts(summary) == expect(created=1, skipped=2)
    users = every_user(registry)
    assert len(users) == 2
    assert registry.users.get(ann.id) == ann
    [bob] = [u for u in users if u.id != ann.id]
    assert (bob.email, bob.full_name) == ("Bob@example.org", None)


def test_a_file_naming_one_address_twice(run: Cli, registry: Registry, tmp_path: Path) -> None:
    rows = [
        {"email": "twice@example.org", "full_name": "First"},
        {"email": "other@example.org"},
        {"email": "TWICE@example.org", "full_name": "Second"},
    ]
    path = write_ndjson(tmp_path / "skip.ndjson", rows)
    summary, _ = run.import_(path)
    assert counts(summary) == expect(created=2, skipped=1)
    assert registry.users.get_by_email("twice@example.org").full_name == "First"

    # In two batches: the second finds the first's user in the database.
    path2 = write_ndjson(
        tmp_path / "two-batches.ndjson",
        [{"email": "split@example.org", "full_name": "A"}, {"email": "Split@example.org"}],
    )
    summary, _ = run.import_(path2, "--batch-size", "1")
    assert counts(summary) == expect(created=1, skipped=1)

    fail = write_ndjson(
        tmp_path / "fail.ndjson", [{"email": "new@example.org"}, {"email": "NEW@example.org"}]
    )
    summary, result = run.import_(fail, "--on-conflict", "fail", code=REJECTED_EXIT)
    assert counts(summary) == expect(created=1, rejected=1)
    assert error_lines(result)[0].startswith("line 2: $.email: a user with that email")


def test_update_of_a_new_address_named_twice_keeps_the_later_row(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    path = write_ndjson(
        tmp_path / "in.ndjson",
        [
            {"email": "twice@example.org", "full_name": "First", "is_active": False},
            {"email": "twice@example.org", "full_name": "Second"},
        ],
    )
    summary, _ = run.import_(path, "--on-conflict", "update")
    assert counts(summary) == expect(created=1, updated=1)
    [user] = every_user(registry)
    assert (user.full_name, user.is_active) == ("Second", False)


def test_update_of_a_stored_address_named_twice_in_one_batch(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    registry.users.create(NewUser("twice@example.org", "Stored"))
    path = write_ndjson(
        tmp_path / "in.ndjson",
        [
            {"email": "twice@example.org", "full_name": "First"},
            {"email": "TWICE@example.org", "full_name": "Second"},
        ],
    )
    result = run("users", "import", str(path), "--on-conflict", "update", "--summary", "json")
    assert result.exit_code == 0, (
        f"BUG: a file naming a stored address twice in one batch with --on-conflict update "
        f"fails the whole import (exit {result.exit_code}: {result.stderr.strip()!r}): "
        "UserImporter._write updates the stored user for the first row, then for the second "
        "compares with and expects the version of the stale `found` user, so update_user "
        "raises PreconditionFailed; the batch is retried RETRIES times with the same result"
    )
    assert counts(json.loads(result.stdout)) == expect(updated=2)
    assert registry.users.get_by_email("twice@example.org").full_name == "Second"


# -- --on-conflict update and fail ----------------------------------------------------------------


def test_on_conflict_update_changes_fields_and_a_no_change_row_keeps_its_version(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    ann = registry.users.create(NewUser("ann@example.org", "Ann"))
    bob = registry.users.create(NewUser("bob@example.org", "Bob", is_active=False))
    cy = registry.users.create(NewUser("cy@example.org", "Cy"))
    gone = registry.users.create(NewUser("gone@example.org", "Gone"))
    registry.users.delete(gone.id)
    path = write_ndjson(
        tmp_path / "in.ndjson",
        [
            {"email": "ann@example.org", "full_name": "Ann Smith"},
            {"email": "bob@example.org", "full_name": "Bob", "is_active": False},
            {"email": "cy@example.org", "is_active": False, "full_name": None},
            {"email": "gone@example.org", "full_name": "Back"},
            {"email": "dee@example.org", "full_name": "Dee"},
        ],
    )
    summary, result = run.import_(path, "--on-conflict", "update", code=REJECTED_EXIT)
    assert counts(summary) == expect(created=1, updated=2, unchanged=1, rejected=1)
    [line] = error_lines(result)
    assert line.startswith("line 4: $.email: belongs to the deleted user")
    assert str(gone.id) in line
    new_ann = registry.users.get(ann.id)
    assert (new_ann.full_name, new_ann.is_active, new_ann.version) == ("Ann Smith", True, 2)
    assert new_ann.created_at == ann.created_at
    assert registry.users.get(bob.id) == bob, "a row equal to the stored user changes nothing"
    new_cy = registry.users.get(cy.id)
    assert (new_cy.full_name, new_cy.is_active, new_cy.version) == (None, False, 2)
    assert registry.users.get(gone.id, include_deleted=True).full_name == "Gone"
    assert registry.users.get_by_email("dee@example.org").version == 1
    # Again: everything is as the file says now.
    rejects_of(path).unlink()
    summary, _ = run.import_(path, "--on-conflict", "update", code=REJECTED_EXIT)
    assert counts(summary) == expect(unchanged=4, rejected=1)
    assert registry.users.get(ann.id).version == 2


def test_on_conflict_update_with_a_changed_case_of_the_address(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    ann = registry.users.create(NewUser("ann@example.org", "Ann"))
    path = write_ndjson(tmp_path / "in.ndjson", [{"email": "Ann@Example.org"}])
    summary, _ = run.import_(path, "--on-conflict", "update")
    assert counts(summary) == expect(updated=1)
    after = registry.users.get(ann.id)
    assert (after.email, after.version) == ("Ann@Example.org", 2)
    assert registry.users.get_by_email("ann@example.org").id == ann.id


def test_on_conflict_fail_rejects_every_taken_address(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    ann = registry.users.create(NewUser("ann@example.org", "Ann"))
    gone = registry.users.create(NewUser("gone@example.org"))
    registry.users.delete(gone.id)
    path = write_ndjson(
        tmp_path / "in.ndjson",
        [
            {"email": "new@example.org"},
            {"email": "ANN@example.org", "full_name": "Changed"},
            {"email": "gone@example.org"},
        ],
    )
    summary, result = run.import_(path, "--on-conflict", "fail", code=REJECTED_EXIT)
    assert counts(summary) == expect(created=1, rejected=2)
    assert [line.split(":")[0] for line in error_lines(result)] == ["line 2", "line 3"]
    assert registry.users.get(ann.id) == ann
    assert rejects_of(path).read_text().splitlines() == path.read_text().splitlines()[1:]


def test_on_conflict_skip_leaves_a_deleted_user_deleted(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    gone = registry.users.create(NewUser("gone@example.org"))
    deleted = registry.users.delete(gone.id)
    path = write_ndjson(tmp_path / "in.ndjson", [{"email": "gone@example.org"}])
    summary, _ = run.import_(path)
    assert counts(summary) == expect(skipped=1)
    assert registry.users.get(gone.id, include_deleted=True) == deleted
    assert row_count(registry) == 1


# -- --dry-run ------------------------------------------------------------------------------------


def test_dry_run_writes_nothing_but_says_what_would_happen(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    ann = registry.users.create(NewUser("ann@example.org", "Ann"))
    events_before = len(audit_events(registry))
    path = write_ndjson(
        tmp_path / "in.ndjson",
        [
            {"email": "ann@example.org", "full_name": "Ann Smith"},
            {"email": "bob@example.org"},
            {"email": "cy@example.org"},
            {"email": "bad"},
        ],
    )
    result = run("users", "import", str(path), "--dry-run")
    assert result.exit_code == REJECTED_EXIT, result.stderr
    assert result.stdout == (
        "4 rows: 2 would be created, 0 would be updated, 0 unchanged, 1 skipped (already there), "
        "1 rejected\n"
    )
    assert error_lines(result) == [
        next(line for line in error_lines(result) if line.startswith("line 4: $.email"))
    ]
    summary, _ = run.import_(path, "--dry-run", "--on-conflict", "update", code=REJECTED_EXIT)
    assert counts(summary) == expect(created=2, updated=1, rejected=1)
    assert summary["dry_run"] is True
    assert "rejects" not in summary
    assert every_user(registry) == [ann]
    assert row_count(registry) == 1
    assert len(audit_events(registry)) == events_before
    assert not rejects_of(path).exists()
    assert not Path(f"{path}.import-state").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("in.")) == ["in.ndjson"]


# -- resume ---------------------------------------------------------------------------------------


class Interrupt:
    """Refuses every ``users.import`` operation after the first ``after``: the import stops."""

    __name__ = "interrupt"

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls = 0

    @hookimpl(wrapper=True)
    def userplane_operation(self, operation: str) -> Generator[None, Any, Any]:
        if operation == "users.import":
            self.calls += 1
            if self.calls > self.after:
                raise Unavailable("the database went away (simulated)")
        return (yield)


def test_an_interrupted_import_resumes_after_its_last_committed_batch(
    database_url: str, registry: Registry, tmp_path: Path
) -> None:
    rows: list[Mapping[str, Any] | str] = list(users_rows(45))
    rows[3] = {"email": "bad-one"}  # line 4, batch 1
    rows[41] = {"email": "bad-two"}  # line 42, batch 5
    path = write_ndjson(tmp_path / "in.ndjson", rows)
    state = Path(f"{path}.import-state")
    rejects = rejects_of(path)

    interrupted = Cli(tmp_path, database_url, plugins=[Interrupt(after=2)])
    result = interrupted("users", "import", str(path), "--batch-size", "10")
    assert result.exit_code == UNAVAILABLE_EXIT, (result.stdout, result.stderr)
    assert "simulated" in result.stderr
    assert state.exists(), "an interrupted import leaves its place"
    assert json.loads(state.read_text())["line"] == 20
    assert row_count(registry) == 19
    assert rejects.read_text().splitlines() == ['{"email": "bad-one"}']

    again = Cli(tmp_path, database_url)
    summary, result = again.import_(path, "--batch-size", "10", code=REJECTED_EXIT)
    assert f"resuming {path} after line 20 (20 rows done)" in result.stderr
    assert counts(summary) == expect(created=43, rejected=2)
    assert summary["rows"] == 45
    assert [line.split(":")[0] for line in error_lines(result)] == ["line 42"]
    assert not state.exists()
    assert rejects.read_text().splitlines() == ['{"email": "bad-one"}', '{"email": "bad-two"}']
    assert row_count(registry) == 43
    assert len(every_user(registry)) == 43

    # Done: a third run starts over (nothing to resume) and skips everything.
    summary, result = again.import_(path, "--batch-size", "10", code=REJECTED_EXIT)
    assert "resuming" not in result.stderr
    assert counts(summary) == expect(skipped=43, rejected=2)


def test_a_resumed_csv_import_writes_one_header_in_its_rejects_file(
    database_url: str, registry: Registry, tmp_path: Path
) -> None:
    body = [[f"u{i}@example.org", f"U {i}"] for i in range(30)]
    body[2] = ["bad-one", "Bad"]  # batch 1
    body[25] = ["bad-two", "Bad"]  # batch 3, after the resume
    path = write_csv(tmp_path / "in.csv", ["email", "full_name"], body)
    result = Cli(tmp_path, database_url, plugins=[Interrupt(after=1)])(
        "users", "import", str(path), "--batch-size", "10"
    )
    assert result.exit_code == UNAVAILABLE_EXIT, result.stderr
    summary, result = Cli(tmp_path, database_url).import_(
        path, "--batch-size", "10", code=REJECTED_EXIT
    )
    assert "resuming" in result.stderr
    assert counts(summary) == expect(created=28, rejected=2)
    lines = rejects_of(path).read_text().splitlines()
    assert lines == ["email,full_name", "bad-one,Bad", "bad-two,Bad"], (
        f"BUG: the rejects file of a resumed CSV import holds the header twice: {lines}. "
        "_Rejects.write opens the existing file with O_APPEND and asks tell(), which is 0 "
        "before the first write, so it writes the header again in the middle of the file "
        "(re-importing the fixed rejects file then rejects a row 'email,full_name')"
    )


def test_a_changed_file_or_options_with_a_leftover_state_is_refused_unless_restart(
    database_url: str, registry: Registry, tmp_path: Path
) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", users_rows(30))
    result = Cli(tmp_path, database_url, plugins=[Interrupt(after=1)])(
        "users", "import", str(path), "--batch-size", "10"
    )
    assert result.exit_code == UNAVAILABLE_EXIT
    state = Path(f"{path}.import-state")
    assert state.exists()
    run = Cli(tmp_path, database_url)

    # Other options than the interrupted run's: refused.
    result = run("users", "import", str(path), "--on-conflict", "update")
    assert result.exit_code == USAGE_EXIT, (result.stdout, result.stderr)
    assert "--restart" in result.stderr
    assert row_count(registry) == 10

    # The file changed: refused.
    with path.open("a") as out:
        out.write(json.dumps({"email": "late@example.org"}) + "\n")
    result = run("users", "import", str(path))
    assert result.exit_code == USAGE_EXIT, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "changed since the interrupted import" in result.stderr
    assert "--restart" in result.stderr
    assert row_count(registry) == 10
    assert state.exists()

    # An unreadable state: refused too.
    saved = state.read_text()
    state.write_text("{not json")
    result = run("users", "import", str(path))
    assert result.exit_code == USAGE_EXIT
    assert "cannot be read" in result.stderr
    state.write_text(saved)

    summary, result = run.import_(path, "--restart")
    assert "resuming" not in result.stderr
    assert counts(summary) == expect(created=21, skipped=10)
    assert not state.exists()
    assert row_count(registry) == 31


# -- hooks, audit, webhooks ----------------------------------------------------------------------


class Listener:
    """Every user event the hooks announce."""

    __name__ = "import_listener"

    def __init__(self) -> None:
        self.created: list[tuple[User, Principal | None]] = []
        self.updated: list[tuple[User, frozenset[str]]] = []

    @hookimpl
    def userplane_user_created(self, user: User, principal: Principal | None) -> None:
        self.created.append((user, principal))

    @hookimpl
    def userplane_user_updated(self, user: User, changed: frozenset[str]) -> None:
        self.updated.append((user, changed))


def test_user_hooks_hear_every_imported_user(
    database_url: str, registry: Registry, tmp_path: Path
) -> None:
    listener = Listener()
    run = Cli(tmp_path, database_url, plugins=[listener])
    path = write_ndjson(tmp_path / "in.ndjson", [*users_rows(23), {"email": "bad"}])
    summary, _ = run.import_(path, "--batch-size", "5", code=REJECTED_EXIT)
    assert counts(summary) == expect(created=23, rejected=1)
    stored = {u.id: u for u in every_user(registry)}
    assert len(listener.created) == 23
    assert {u.id: u for u, _ in listener.created} == stored
    assert all(p is not None and p.kind == "local" for _, p in listener.created)

    listener.created.clear()
    changed = [{**r, "full_name": "Renamed"} for r in users_rows(3)]
    write_ndjson(tmp_path / "changed.ndjson", changed)
    summary, _ = run.import_(tmp_path / "changed.ndjson", "--on-conflict", "update")
    assert counts(summary) == expect(updated=3)
    assert listener.created == []
    assert [(u.email, u.full_name, u.version, c) for u, c in listener.updated] == [
        (r["email"], "Renamed", 2, frozenset({"full_name"})) for r in changed
    ]

    # A dry run announces nothing.
    listener.updated.clear()
    write_ndjson(tmp_path / "more.ndjson", users_rows(5, start=100))
    run.import_(tmp_path / "more.ndjson", "--dry-run")
    assert (listener.created, listener.updated) == ([], [])


class Fails:
    """A listener that always fails (a webhook that is down)."""

    __name__ = "fails"

    @hookimpl
    def userplane_user_created(self) -> None:
        raise RuntimeError("the listener is down")


def test_a_failing_listener_does_not_stop_an_import(
    database_url: str, registry: Registry, tmp_path: Path
) -> None:
    listener = Listener()
    run = Cli(tmp_path, database_url, plugins=[listener, Fails()])
    path = write_ndjson(tmp_path / "in.ndjson", users_rows(12))
    summary, result = run.import_(path, "--batch-size", "5")
    assert counts(summary) == expect(created=12), result.stderr
    assert len(listener.created) == 12
    assert row_count(registry) == 12
    assert not Path(f"{path}.import-state").exists()


def test_audit_records_one_user_created_event_per_imported_user_and_verifies(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    registry.users.create(NewUser("before@example.org"))
    path = write_ndjson(tmp_path / "in.ndjson", [*users_rows(30), {"email": "before@example.org"}])
    summary, _ = run.import_(path, "--batch-size", "8")
    assert counts(summary) == expect(created=30, skipped=1)
    created = audit_events(registry, action="user.created")
    ids = sorted(e["target"]["id"] for e in created)
    assert len(ids) == 31
    assert ids == sorted(str(u.id) for u in every_user(registry))
    result = run("audit", "verify")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout.startswith("verified ")

    # update mode: one user.updated event per updated user, none for unchanged rows.
    rows = users_rows(4)
    rows[0]["full_name"] = "Changed"
    write_ndjson(tmp_path / "update.ndjson", rows)
    summary, _ = run.import_(tmp_path / "update.ndjson", "--on-conflict", "update")
    assert counts(summary) == expect(updated=1, unchanged=3)
    [updated] = audit_events(registry, action="user.updated")
    assert updated["target"]["id"] == str(registry.users.get_by_email(rows[0]["email"]).id)
    assert run("audit", "verify").exit_code == 0


def test_webhooks_get_one_delivery_per_imported_user(
    database_url: str, registry: Registry, tmp_path: Path
) -> None:
    env = {"USERPLANE_WEBHOOKS_ALLOW_PRIVATE": "true"}
    with opened(database_url, [webhooks], **env) as hooked:
        sub = webhooks.service(hooked).create(
            {"url": "http://127.0.0.1:9/hook", "events": ["user.created"]}
        )
        run = Cli(tmp_path, database_url, env=env)
        path = write_ndjson(tmp_path / "in.ndjson", users_rows(40))
        summary, _ = run.import_(path, "--batch-size", "16")
        assert counts(summary) == expect(created=40)
        page = webhooks.service(hooked).deliveries(sub.id, None, None, 200)
        assert page.next is None
        deliveries = page.items
        assert len(deliveries) == 40
        assert {d.event_type for d in deliveries} == {"user.created"}
        ids = {str(u.id) for u in every_user(hooked)}
        assert {next(i for i in ids if i in d.payload) for d in deliveries} == ids
        # A second run (all skipped) sends nothing more.
        run.import_(path)
        assert len(webhooks.service(hooked).deliveries(sub.id, None, None, 200).items) == 40


# -- encryption on --------------------------------------------------------------------------------


def test_an_encrypted_import_stores_sealed_users_and_a_rerun_skips_them(
    database_url: str, registry: Registry, tmp_path: Path, k1: NamedKey, i1: NamedKey
) -> None:
    env = {KEYS_SETTING: k1.entry(), INDEX_KEYS_SETTING: i1.entry()}
    run = Cli(tmp_path, database_url, env=env)
    path = write_ndjson(
        tmp_path / "in.ndjson",
        [
            {"email": "Ann@Example.org", "full_name": "Ann Example"},
            {"email": "bob@example.org", "is_active": False},
            {"email": "ann@example.ORG"},  # the same address: found by its blind index
        ],
    )
    summary, result = run.import_(path, "--batch-size", "2")
    assert counts(summary) == expect(created=2, skipped=1), result.stderr
    with opened(database_url, **env) as sealed:
        users = every_user(sealed)
        assert triples(users) == {
            ("Ann@Example.org", "Ann Example", True),
            ("bob@example.org", None, False),
        }
        for user in users:
            raw = sealed.storage.get_user(user.id)
            assert raw is not None
            assert raw.email != user.email
            assert user.email.lower() not in raw.email.lower()
            assert raw.email.startswith("upe1:")
            if user.full_name is not None:
                assert raw.full_name != user.full_name
        storage: Any = sealed.storage
        plain = storage.fetch_all(storage.dialect.compile("SELECT email_normalized FROM users"), {})
        assert not any("example" in str(value) for (value,) in plain)
        assert sealed.users.get_by_email("ANN@example.org").full_name == "Ann Example"
        # The audit trail has the events, sealed at rest and opened for readers.
        created = audit_events(sealed, action="user.created")
        assert {e["changes"]["email"]["after"] for e in created} == {
            "Ann@Example.org",
            "bob@example.org",
        }
        raw_events = storage.fetch_all(storage.dialect.compile("SELECT * FROM audit_events"), {})
        assert len(raw_events) == 2
        assert not any("example.org" in str(cell).lower() for row in raw_events for cell in row)

        summary, _ = run.import_(path)
        assert counts(summary) == expect(skipped=3)
        summary, _ = run.import_(path, "--on-conflict", "update")
        assert counts(summary) == expect(updated=1, unchanged=2)  # Ann's address's case
        assert len(every_user(sealed)) == 2

        exported = run.export()
        lines = [json.loads(line) for line in exported.stdout.splitlines()]
        assert {(r["email"], r["full_name"]) for r in lines} == {
            ("ann@example.ORG", "Ann Example"),
            ("bob@example.org", None),
        }


# -- a storage without BulkStorage --------------------------------------------------------------


class PlainStorage:
    """A real store behind a proxy that hides the bulk capability (``BulkStorage``)."""

    _HIDDEN = frozenset({"users_by_email_keys", "insert_users"})

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name in self._HIDDEN:
            raise AttributeError(name)
        if name in ("get_user_by_email", "insert_user"):
            self.calls.append(name)
        return getattr(self._inner, name)


def _mixed_rows() -> list[Mapping[str, Any] | str]:
    return [
        *users_rows(12),
        {"email": "USER00001@example.org", "full_name": "Dup"},
        {"email": "bad"},
        "[]",
        {"email": "gone@example.org", "full_name": "G"},
    ]


def test_a_storage_without_bulk_capability_imports_with_the_same_results(
    database_url: str, registry: Registry, other_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with opened(other_database_url) as bulk:
        assert isinstance(bulk.sealed.inner, BulkStorage)
        proxy = PlainStorage(registry.sealed.inner)
        assert not isinstance(proxy, BulkStorage)
        monkeypatch.setattr(registry.sealed, "inner", proxy)
        for reg in (registry, bulk):
            gone = reg.users.create(NewUser("gone@example.org"))
            reg.users.delete(gone.id)
        results = []
        for reg in (registry, bulk):
            first = import_in_process(reg, ndjson_records(_mixed_rows()), batch_size=5)
            again = import_in_process(reg, ndjson_records(_mixed_rows()), batch_size=5)
            changed = [{**r, "is_active": False} for r in users_rows(4)]
            update = import_in_process(
                reg, ndjson_records([*changed, {"email": "gone@example.org"}]), OnConflict.UPDATE
            )
            results.append(
                (
                    [c.as_dict() for c in (first[0], again[0], update[0])],
                    [
                        [(r.line, [e.field for e in r.errors]) for r in x[1]]
                        for x in (first, again, update)
                    ],
                    triples(every_user(reg)),
                )
            )
        assert "insert_user" in proxy.calls
        assert "get_user_by_email" in proxy.calls
        assert results[0] == results[1]
        assert results[0][0][0] == expect(created=12, skipped=2, rejected=2)
        assert results[0][0][1] == expect(skipped=14, rejected=2)
        assert results[0][0][2] == expect(updated=2, unchanged=2, rejected=1)


# -- a concurrent writer ---------------------------------------------------------------------------


def test_a_batch_whose_insert_lost_a_race_is_tried_again(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user created between a batch's lookup and its insert: the batch runs again, skipping it."""
    listener = Listener()
    registry.pm.register(listener, name="import_listener")
    taken = registry.users.create(NewUser("taken@example.org", "Concurrent"))
    listener.created.clear()
    real = registry.sealed.users_by_email_keys
    lookups: list[int] = []

    def stale_first(keys: Sequence[str]) -> dict[str, User]:
        lookups.append(len(keys))
        found = real(keys)
        return {} if len(lookups) == 1 else found  # the first lookup ran before the writer

    monkeypatch.setattr(registry.sealed, "users_by_email_keys", stale_first)
    events_before = len(audit_events(registry, action="user.created"))
    rows = [*users_rows(5), {"email": "TAKEN@example.org", "full_name": "Import"}]
    total, rejected = import_in_process(registry, ndjson_records(rows))
    assert len(lookups) == 2
    assert (total.as_dict(), rejected) == (expect(created=5, skipped=1), [])
    assert registry.users.get(taken.id) == taken
    assert row_count(registry) == 6
    # The failed attempt left no trace: one event and one hook call per created user.
    assert len(audit_events(registry, action="user.created")) == events_before + 5
    assert sorted(u.email for u, _ in listener.created) == sorted(r["email"] for r in users_rows(5))


def test_an_update_that_lost_a_race_is_tried_again(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user changed between a batch's lookup and its update: the batch runs again."""
    ann = registry.users.create(NewUser("ann@example.org", "Ann"))
    registry.users.update(ann.id, UserChanges(full_name="Ann B"))
    real = registry.sealed.users_by_email_keys
    lookups: list[int] = []

    def stale_first(keys: Sequence[str]) -> dict[str, User]:
        lookups.append(len(keys))
        found = real(keys)
        if len(lookups) == 1:  # as read before the concurrent update
            return {k: attrs.evolve(u, full_name="Ann", version=1) for k, u in found.items()}
        return found

    monkeypatch.setattr(registry.sealed, "users_by_email_keys", stale_first)
    rows = [{"email": "ann@example.org", "full_name": "Ann C"}, {"email": "bob@example.org"}]
    total, rejected = import_in_process(registry, ndjson_records(rows), OnConflict.UPDATE)
    assert len(lookups) == 2
    assert (total.as_dict(), rejected) == (expect(created=1, updated=1), [])
    after = registry.users.get(ann.id)
    assert (after.full_name, after.version) == ("Ann C", 3)
    assert row_count(registry) == 2


def test_an_insert_that_raised_conflict_once_is_retried(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = registry.sealed.insert_users
    calls: list[int] = []

    def conflict_once(rows: Any) -> None:
        calls.append(len(rows))
        real(rows)  # written, then refused: the transaction must be rolled back
        if len(calls) == 1:
            raise Conflict("a user with that email already exists")

    monkeypatch.setattr(registry.sealed, "insert_users", conflict_once)
    total, _ = import_in_process(registry, ndjson_records(users_rows(7)))
    assert calls == [7, 7]
    assert total.as_dict() == expect(created=7)
    assert row_count(registry) == 7
    assert len(audit_events(registry, action="user.created")) == 7


def test_a_batch_that_keeps_losing_gives_up_and_writes_nothing_of_it(
    run: Cli, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def always(self: SealedStorage, rows: Any) -> None:
        calls.append(len(rows))
        raise Conflict("a user with that email already exists")

    monkeypatch.setattr(SealedStorage, "insert_users", always)
    path = write_ndjson(tmp_path / "in.ndjson", users_rows(3))
    result = run("users", "import", str(path))
    assert result.exit_code == 4, (result.stdout, result.stderr)
    assert calls == [3] * RETRIES
    assert row_count(registry) == 0
    assert result.stderr == "userplane: conflict: a user with that email already exists\n"
    assert not Path(f"{path}.import-state").exists(), "no batch committed: no place to resume"


# -- export -----------------------------------------------------------------------------------


@pytest.fixture
def population(registry: Registry) -> list[User]:
    """Five users, one deleted, oldest first."""
    users = [
        registry.users.create(NewUser("ann@example.org", "Ann")),
        registry.users.create(NewUser("Bob@Example.org", None, is_active=False)),
        registry.users.create(NewUser("cy@example.org", "Cy \u00e9\u4e2d")),
        registry.users.create(NewUser("dee@example.org", "Dee")),
        registry.users.create(NewUser("eve@example.org", 'Eve, "quoted"')),
    ]
    registry.users.delete(users[3].id)
    return users


def test_ndjson_export_lines_are_the_api_bodies_oldest_first(
    run: Cli, registry: Registry, population: list[User]
) -> None:
    client = client_for(registry)
    result = run.export()
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    live = [u for u in population if u.id != population[3].id]
    assert len(lines) == len(live)
    for line, user in zip(lines, live, strict=True):
        got = client.simulate_get(f"/api/v1/users/{user.id}")
        assert got.status_code == 200
        assert json.loads(line) == got.json
    deleted = run.export("--include-deleted").stdout.splitlines()
    assert [json.loads(line)["id"] for line in deleted] == [str(u.id) for u in population]
    assert json.loads(deleted[3])["deleted_at"] is not None
    assert all(
        line == json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False)
        for line in lines
    )


def test_csv_export_has_a_header_and_one_row_per_user(
    run: Cli, registry: Registry, population: list[User]
) -> None:
    result = run.export("--format", "csv", "--include-deleted")
    rows = list(csv.reader(result.stdout.splitlines()))
    assert rows[0] == [
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
    ]
    assert [r[0] for r in rows[1:]] == [str(u.id) for u in population]
    client = client_for(registry)
    for row, user in zip(rows[1:], population, strict=True):
        body = client.simulate_get(
            f"/api/v1/users/{user.id}", params={"include_deleted": "true"}
        ).json
        expected = [
            body["id"],
            body["email"],
            body["full_name"] or "",
            "true" if body["is_active"] else "false",
            body["created_at"],
            body["updated_at"],
            str(body["version"]),
            body["deleted_at"] or "",
            body["external_source"] or "",
            body["external_id"] or "",
            json.dumps(body["attributes"]) if body["attributes"] else "",
        ]
        assert row == expected
    plain = list(csv.reader(run.export("--format", "csv").stdout.splitlines()))
    assert len(plain) == 1 + 4
    assert str(population[3].id) not in {r[0] for r in plain}


def test_export_to_a_file_is_private_and_replaces_it_whole(
    run: Cli, registry: Registry, population: list[User], tmp_path: Path
) -> None:
    out = tmp_path / "users.ndjson"
    out.write_text("old contents\n")
    out.chmod(0o644)
    result = run.export("-o", str(out))
    assert result.stdout == ""
    assert result.stderr == f"exported 4 users to {out}\n"
    assert mode(out) == 0o600
    assert out.read_text() == run.export().stdout
    result = run.export("--format", "csv", "-o", str(tmp_path / "users.csv"))
    assert result.stderr == f"exported 4 users to {tmp_path / 'users.csv'}\n"
    assert mode(tmp_path / "users.csv") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".users")) == []


def test_an_export_that_fails_half_way_leaves_no_file(
    run: Cli, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        registry.users.create(NewUser(f"u{i}@example.org"))
    real = exports.ndjson

    def breaks(users: Iterator[User]) -> Iterator[bytes]:
        for i, chunk in enumerate(real(users)):
            if i == 2:
                raise Unavailable("the database went away (simulated)")
            yield chunk

    monkeypatch.setattr(exports, "ndjson", breaks)
    fresh = tmp_path / "fresh.ndjson"
    result = run("users", "export", "-o", str(fresh))
    assert result.exit_code == UNAVAILABLE_EXIT, (result.stdout, result.stderr)
    assert not fresh.exists()
    kept = tmp_path / "kept.ndjson"
    kept.write_text("the last good export\n")
    result = run("users", "export", "-o", str(kept))
    assert result.exit_code == UNAVAILABLE_EXIT
    assert kept.read_text() == "the last good export\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_export_of_many_pages_has_every_user_once_in_order(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    # One batch: the users are a microsecond apart, in the file's order, so the pages
    # part on created_at across second boundaries ("…:37Z" sorts after "…:37.000001Z"
    # as text, before it as time).
    path = write_ndjson(tmp_path / "in.ndjson", users_rows(1203))
    summary, _ = run.import_(path, "--batch-size", "2000")
    assert counts(summary) == expect(created=1203)
    registry.users.create(NewUser("late@example.org"))
    lines = [json.loads(line) for line in run.export().stdout.splitlines()]
    assert len(lines) == 1204
    assert len({line["id"] for line in lines}) == 1204
    assert lines[-1]["email"] == "late@example.org"
    order = [(datetime.fromisoformat(line["created_at"]), uuid.UUID(line["id"])) for line in lines]
    assert order == sorted(order)
    assert [line["email"] for line in lines[:-1]] == [row["email"] for row in users_rows(1203)]
    csv_rows = run.export("--format", "csv").stdout.splitlines()
    assert len(csv_rows) == 1205
    # Again, in one batch: the lookup of 1203 addresses (several statements) finds them all.
    summary, _ = run.import_(path, "--batch-size", "2000")
    assert counts(summary) == expect(skipped=1203)
    assert row_count(registry) == 1204


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_export_then_import_into_a_fresh_database_round_trips(
    run: Cli,
    registry: Registry,
    population: list[User],
    other_database_url: str,
    tmp_path: Path,
    fmt: str,
) -> None:
    out = tmp_path / f"users.{fmt}"
    run.export("--format", fmt, "-o", str(out))
    with opened(other_database_url) as target:
        summary, result = Cli(tmp_path, other_database_url).import_(out)
        assert counts(summary) == expect(created=4), result.stderr
        assert triples(every_user(target)) == triples(every_user(registry, include_deleted=False))
    # With the deleted user in the file: its row is rejected, not imported live.
    out2 = tmp_path / f"all.{fmt}"
    run.export("--format", fmt, "--include-deleted", "-o", str(out2))
    with opened(other_database_url) as target:
        summary, result = Cli(tmp_path, other_database_url).import_(out2, code=REJECTED_EXIT)
        assert counts(summary) == expect(skipped=4, rejected=1)
        assert "$.deleted_at" in error_lines(result)[0]


def test_an_export_imported_back_with_update_changes_nothing(
    run: Cli, registry: Registry, population: list[User], tmp_path: Path
) -> None:
    before = every_user(registry)
    for fmt in ("ndjson", "csv"):
        out = tmp_path / f"users.{fmt}"
        run.export("--format", fmt, "-o", str(out))
        summary, result = run.import_(out, "--on-conflict", "update")
        assert counts(summary) == expect(unchanged=4), (fmt, result.stderr)
    assert every_user(registry) == before


# -- hypothesis: export then import yields the same users ---------------------------------------

_NAME_START = st.sampled_from(["", "=", "+", "-", "@", "'", "'=", "' ", " ", "\t"])
_NAME_REST = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), max_codepoint=0x2FFF), max_size=20
)


@st.composite
def user_rows(draw: st.DrawFn) -> list[tuple[str, str | None, bool]]:
    count = draw(st.integers(min_value=1, max_value=8))
    rows = []
    for i in range(count):
        local = draw(st.sampled_from(["a", "B", "-x", "+y", "o'k", "=z", "j.d"]))
        email = f"{local}{i}@{draw(st.sampled_from(['example.org', 'Example.ORG']))}"
        name: str | None = None
        if draw(st.booleans()):
            name = draw(_NAME_START) + draw(_NAME_REST)
            if check_fields({"full_name": name})[1]:
                name = None
        rows.append((email, name, draw(st.booleans())))
    return rows


@pytest.fixture
def two_registries(
    registry: Registry, other_database_url: str
) -> Iterator[tuple[Registry, Registry]]:
    with opened(other_database_url) as target:
        yield registry, target


def _wipe(registry: Registry) -> None:
    storage: Any = registry.storage
    storage.execute(storage.dialect.compile("DELETE FROM users"), {})


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rows=user_rows())
def test_property_export_then_import_yields_the_same_users(
    two_registries: tuple[Registry, Registry], fmt: str, rows: list[tuple[str, str | None, bool]]
) -> None:
    source, target = two_registries
    _wipe(source)
    _wipe(target)
    for email, name, active in rows:
        source.users.create(NewUser(email, name, active))
    users = exports.all_users(source.users)
    if fmt == "ndjson":
        text = b"".join(exports.ndjson(users)).decode()
        records = list(read_ndjson(io.StringIO(text, newline="")))
    else:
        text = "".join(exports.csv_rows(users))
        records = list(read_csv(io.StringIO(text, newline="")))
    total, rejected = import_in_process(target, records, batch_size=3)
    assert rejected == []
    assert total.as_dict() == expect(created=len(rows))
    assert triples(every_user(target)) == set(rows), (
        'BUG (CSV): a name beginning with "\'" + a formula character loses its "\'" '
        "on an export/import round trip"
        if fmt == "csv"
        else "the users changed on an export/import round trip"
    )


# -- HTTP export -----------------------------------------------------------------------------------


def test_http_export_streams_every_user_as_ndjson(
    run: Cli, registry: Registry, tmp_path: Path
) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", users_rows(620))
    run.import_(path, "--batch-size", "300")
    gone = registry.users.get_by_email("user00007@example.org")
    registry.users.delete(gone.id)
    client = client_for(registry)
    resp = client.simulate_get("/api/v1/users/export")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-ndjson"
    assert resp.headers["cache-control"] == "no-store"
    assert "content-length" not in resp.headers, "streamed, not buffered"
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert len(lines) == 619
    assert len({line["id"] for line in lines}) == 619
    assert str(gone.id) not in {line["id"] for line in lines}
    assert resp.text == run.export().stdout
    one = client.simulate_get(f"/api/v1/users/{lines[0]['id']}").json
    assert lines[0] == one

    everyone = client.simulate_get("/api/v1/users/export", params={"include_deleted": "true"})
    assert everyone.status_code == 200
    ids = [json.loads(line)["id"] for line in everyone.text.splitlines()]
    assert len(ids) == len(set(ids)) == 620
    assert str(gone.id) in ids
    assert everyone.text == run.export("--include-deleted").stdout
    head = client.simulate_head("/api/v1/users/export")
    assert head.status_code == 200
    assert head.headers["content-type"] == "application/x-ndjson"
    assert head.content == b""


def test_http_export_of_no_users_is_an_empty_body(registry: Registry) -> None:
    resp = client_for(registry).simulate_get("/api/v1/users/export")
    assert resp.status_code == 200
    assert resp.text == ""
    assert resp.headers["content-type"] == "application/x-ndjson"


def test_http_export_is_forbidden_without_users_export(registry: Registry) -> None:
    registry.users.create(NewUser("ann@example.org"))
    for role in ("editor", "viewer"):
        resp = client_for(registry, role).simulate_get("/api/v1/users/export")
        assert resp.status_code == 403, role
        assert resp.headers["content-type"] == PROBLEM_JSON
        assert "ann@example.org" not in resp.text


def test_http_export_of_deleted_users_needs_users_read_deleted(database_url: str) -> None:
    roles = {"exporter": ["users:export"], "archivist": ["users:export", "users:read-deleted"]}
    with opened(database_url, USERPLANE_ROLES=json.dumps(roles)) as registry:
        ann = registry.users.create(NewUser("ann@example.org"))
        registry.users.delete(ann.id)
        registry.users.create(NewUser("bob@example.org"))
        exporter = client_for(registry, "exporter")
        plain = exporter.simulate_get("/api/v1/users/export")
        assert plain.status_code == 200
        assert [json.loads(line)["email"] for line in plain.text.splitlines()] == [
            "bob@example.org"
        ]
        refused = exporter.simulate_get("/api/v1/users/export", params={"include_deleted": "true"})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == PROBLEM_JSON
        allowed = client_for(registry, "archivist").simulate_get(
            "/api/v1/users/export", params={"include_deleted": "true"}
        )
        assert allowed.status_code == 200
        assert len(allowed.text.splitlines()) == 2


EXPORT_QUERIES_AT_FAULT = [
    ("include_deleted=maybe", "$.include_deleted"),
    ("limit=5", "$.limit"),
    ("cursor=abc", "$.cursor"),
    ("include_deleted=true&include_deleted=false", "$.include_deleted"),
]


def test_http_export_bad_query_parameter_is_a_422_naming_it(registry: Registry) -> None:
    client = client_for(registry)
    for query, field in EXPORT_QUERIES_AT_FAULT:
        resp = client.simulate_get("/api/v1/users/export", query_string=query)
        assert resp.status_code == 422, (query, resp.text)
        assert resp.headers["content-type"] == PROBLEM_JSON
        assert [e["field"] for e in resp.json["errors"]] == [field]


def test_http_export_needs_credentials(registry: Registry) -> None:
    from userplane.frontends.http import create_app

    resp = testing.TestClient(create_app(registry)).simulate_get("/api/v1/users/export")
    assert resp.status_code == 401


# -- real processes --------------------------------------------------------------------------------

SCRIPT = Path(sys.executable).parent / "userplane"


def process_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    env.update(
        USERPLANE_DATABASE_URL=database_url,
        USERPLANE_LOG_FORMAT="json",
        USERPLANE_ENV_FILE=str(tmp_path / "no-such.env"),
    )
    return env


def test_a_process_import_shows_progress_on_stderr_and_the_summary_on_stdout(
    database_url: str, registry: Registry, tmp_path: Path
) -> None:
    path = write_ndjson(tmp_path / "in.ndjson", users_rows(300))
    proc = subprocess.run(
        [str(SCRIPT), "users", "import", str(path), "--progress", "--batch-size", "50"],
        env=process_env(tmp_path, database_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stdout == (
        "300 rows: 300 created, 0 updated, 0 unchanged, 0 skipped (already there), 0 rejected\n"
    )
    assert "import" in proc.stderr
    assert "300/300" in proc.stderr
    assert "rows/s" in proc.stderr
    assert "Traceback" not in proc.stderr
    quiet = subprocess.run(
        [str(SCRIPT), "users", "import", str(path)],
        env=process_env(tmp_path, database_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert quiet.returncode == 0
    assert quiet.stderr == "", "no progress bar when stderr is not a terminal"
    # From stdin: the same rows, all there already; a bad one is shown, no rejects file.
    piped = subprocess.run(
        [str(SCRIPT), "users", "import", "-", "--summary", "json"],
        input=path.read_text() + '{"email": "bad"}\n',
        env=process_env(tmp_path, database_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == REJECTED_EXIT, piped.stderr
    assert counts(json.loads(piped.stdout)) == expect(skipped=300, rejected=1)
    assert piped.stderr.startswith("line 301: $.email")
    assert not list(tmp_path.glob("*.rejects.*"))
    assert not list(tmp_path.glob("*import-state"))


def test_a_process_export_to_a_file(database_url: str, registry: Registry, tmp_path: Path) -> None:
    for i in range(3):
        registry.users.create(NewUser(f"u{i}@example.org", f"U {i}"))
    out = tmp_path / "out.csv"
    proc = subprocess.run(
        [str(SCRIPT), "users", "export", "--format", "csv", "-o", str(out)],
        env=process_env(tmp_path, database_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == f"exported 3 users to {out}\n"
    assert mode(out) == 0o600
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["email"] for r in rows] == ["u0@example.org", "u1@example.org", "u2@example.org"]


def _import_until_a_place_is_saved(
    path: Path, env: dict[str, str], cwd: Path, doing: str, *, text: bool
) -> subprocess.Popen[Any]:
    """``users import`` of ``path`` in batches of 25, running once its first place is saved."""
    state = Path(f"{path}.import-state")
    proc = subprocess.Popen(
        [str(SCRIPT), "users", "import", str(path), "--batch-size", "25"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
    )
    deadline = time.monotonic() + 60
    while not state.exists():
        assert proc.poll() is None, f"the import ended before it could be {doing}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


def _resume(path: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The same import run again, with a JSON summary: it resumes."""
    return subprocess.run(
        [str(SCRIPT), "users", "import", str(path), "--batch-size", "25", "--summary", "json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_killed_import_process_resumes(
    database_url: str, registry: Registry, tmp_path: Path
) -> None:
    total = 3000
    path = write_ndjson(tmp_path / "in.ndjson", users_rows(total))
    state = Path(f"{path}.import-state")
    env = process_env(tmp_path, database_url)
    proc = _import_until_a_place_is_saved(path, env, tmp_path, "killed", text=False)
    try:
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    done = json.loads(state.read_text())["line"]
    assert 0 < done < total, done
    stored_then = row_count(registry)
    assert stored_then >= done
    again = _resume(path, env, tmp_path)
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert "resuming" in again.stderr
    summary = json.loads(again.stdout)
    assert summary["rows"] == total
    # A batch committed just before the kill but after the last saved place is found again.
    assert summary["skipped"] <= 25
    assert summary["created"] + summary["skipped"] == total
    assert not state.exists()
    assert row_count(registry) == total
    assert {u.email for u in every_user(registry)} == {r["email"] for r in users_rows(total)}


def test_ctrl_c_stops_an_import_in_one_line_and_it_resumes(
    database_url: str, registry: Registry, tmp_path: Path
) -> None:
    total = 3000
    path = write_ndjson(tmp_path / "in.ndjson", users_rows(total))
    state = Path(f"{path}.import-state")
    env = process_env(tmp_path, database_url)
    proc = _import_until_a_place_is_saved(path, env, tmp_path, "interrupted", text=True)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert out == ""
    lines = [x for x in err.splitlines() if x.strip()]
    # The batch under way finishes: committed, announced and its place saved.
    assert lines[0] == "userplane: stopping after the batch under way (Ctrl-C again to stop now)"
    assert lines[-1].startswith("userplane: interrupted: ")
    assert " rows done, up to line " in lines[-1]
    assert lines[-1].endswith("run the same command to resume")
    saved = json.loads(state.read_text())
    assert row_count(registry) == saved["line"]  # nothing committed past the saved place
    assert "Traceback" not in err
    again = _resume(path, env, tmp_path)
    assert again.returncode == 0, (again.stdout, again.stderr)
    summary = json.loads(again.stdout)
    assert "resuming" in again.stderr
    assert summary == {**summary, "created": total, "skipped": 0}
    assert row_count(registry) == total


# -- reading, directly ----------------------------------------------------------------------------


def test_read_csv_numbers_rows_by_their_first_line() -> None:
    text = 'email,full_name\na@example.org,"two\nlines"\n\nb@example.org,B\n'
    records = list(read_csv(io.StringIO(text, newline="")))
    assert [(r.line, dict(r.data or {})) for r in records] == [
        (2, {"email": "a@example.org", "full_name": "two\nlines"}),
        (5, {"email": "b@example.org", "full_name": "B"}),
    ]
