"""``userplane groups …``: in-process through CliRunner on SQLite and PostgreSQL, and as
real processes (SQLite) for exit codes and the one line on stderr.

Every run is against a real, migrated database of the test's own; nothing is mocked
(only ``stdin_is_terminal``, to answer a confirmation as a person at a terminal would).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from userplane.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from userplane.frontends.cli import cli
from userplane.frontends.cli.errors import CANCELLED, EXIT_CODES

PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"
GROUP_KEYS = {"id", "display_name", "external_id", "roles", "created_at", "updated_at", "version"}
GROUP_COLUMNS = ["ID", "DISPLAY_NAME", "ROLES", "EXTERNAL_ID", "VERSION", "UPDATED_AT"]
MEMBER_COLUMNS = ["ID", "EMAIL", "FULL_NAME", "IS_ACTIVE"]
NOT_FOUND = EXIT_CODES[NotFound]
CONFLICT = EXIT_CODES[Conflict]
INVALID = EXIT_CODES[InvalidInput]
STALE = EXIT_CODES[PreconditionFailed]
USAGE = 2


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
    """Invokes ``userplane`` in-process against one database, never a stray ``.env``."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.database_url = database_url
        self.env_file = tmp_path / "empty.env"
        self.env_file.touch()
        self.runner = CliRunner()
        self.env: dict[str, str | None] = {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_LOG_FORMAT": "json",
            PG_ENV: None,
        }

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(
            cli,
            ["--env-file", str(self.env_file), *args],
            env=self.env,
            input=input,
            catch_exceptions=False,
        )

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        assert result.stderr == ""
        return result

    def json(self, *args: str, **kwargs: Any) -> list[dict[str, Any]]:
        result = self.ok(*args, "--format", "json", **kwargs)
        return [json.loads(line) for line in result.stdout.splitlines()]

    def one(self, *args: str, **kwargs: Any) -> dict[str, Any]:
        rows = self.json(*args, **kwargs)
        assert len(rows) == 1, rows
        return rows[0]

    def csv(self, *args: str) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.ok(*args, "--format", "csv").stdout)))

    def fails(self, code: int, *args: str, **kwargs: Any) -> str:
        """Exit ``code``, nothing on stdout, one line on stderr (returned)."""
        result = self(*args, **kwargs)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    def user(self, email: str) -> dict[str, Any]:
        return self.one("users", "create", "--email", email)


@pytest.fixture
def run(tmp_path: Path, database_url: str) -> Cli:
    """The CLI over this test's migrated database, on each backend."""
    cli_ = Cli(tmp_path, database_url)
    cli_.ok("migrate")
    return cli_


def table(result: Result) -> tuple[list[str], list[dict[str, str]]]:
    """A table's header and rows, cut at the header's column starts (cells may be empty)."""
    lines = result.stdout.splitlines()
    header = lines[0]
    names = header.split()
    starts = [header.index(f"{n} " if i < len(names) - 1 else n) for i, n in enumerate(names)]
    rows = []
    for line in lines[1:]:
        cells = [
            line[start : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, start in enumerate(starts)
        ]
        rows.append(dict(zip(names, cells, strict=True)))
    return names, rows


# --------------------------------------------------------------------------- commands


def test_create_get_and_formats(run: Cli) -> None:
    group = run.one(
        "groups", "create", "Support", "--role", "viewer", "--role", "editor",
        "--external-id", "idp-1",
    )  # fmt: skip
    assert set(group) == GROUP_KEYS
    assert group["display_name"] == "Support"
    assert group["roles"] == ["editor", "viewer"]
    assert group["external_id"] == "idp-1"
    assert group["version"] == 1
    uuid.UUID(group["id"])

    assert run.one("groups", "get", group["id"]) == group
    assert run.one("groups", "get", "SUPPORT") == group
    assert run.one("groups", "get", "support") == group

    names, rows = table(run.ok("groups", "get", "Support"))
    assert names == GROUP_COLUMNS
    assert rows == [
        {
            "ID": group["id"],
            "DISPLAY_NAME": "Support",
            "ROLES": "editor viewer",
            "EXTERNAL_ID": "idp-1",
            "VERSION": "1",
            "UPDATED_AT": group["updated_at"],
        }
    ]
    assert run.csv("groups", "get", "Support") == [
        {
            "id": group["id"],
            "display_name": "Support",
            "roles": "editor viewer",
            "external_id": "idp-1",
            "version": "1",
            "updated_at": group["updated_at"],
        }
    ]

    plain = run.one("groups", "create", "Plain")
    assert plain["roles"] == []
    assert plain["external_id"] is None
    [row] = run.csv("groups", "get", "plain")
    assert row["roles"] == ""
    assert row["external_id"] == ""


def test_list_with_member_and_query(run: Cli) -> None:
    ann = run.user("ann@example.org")
    bob = run.user("bob@example.org")
    made = [run.one("groups", "create", name) for name in ("Sales", "Operations", "Salaried")]
    run.ok("groups", "add", "sales", ann["id"])
    run.ok("groups", "add", "Salaried", "ANN@example.org", bob["email"])

    assert run.json("groups", "list") == [run.one("groups", "get", g["id"]) for g in made]
    assert [g["display_name"] for g in run.json("groups", "list", "-q", "SAL")] == [
        "Sales",
        "Salaried",
    ]
    assert [g["display_name"] for g in run.json("groups", "list", "--query", "tion")] == [
        "Operations"
    ]
    assert [g["display_name"] for g in run.json("groups", "list", "--member", ann["email"])] == [
        "Sales",
        "Salaried",
    ]
    assert [g["display_name"] for g in run.json("groups", "list", "--member", bob["id"])] == [
        "Salaried"
    ]
    assert run.json("groups", "list", "--member", bob["id"], "-q", "ops") == []
    names, rows = table(run.ok("groups", "list"))
    assert names == GROUP_COLUMNS
    assert [r["DISPLAY_NAME"] for r in rows] == ["Sales", "Operations", "Salaried"]
    assert [r["display_name"] for r in run.csv("groups", "list", "-q", "sal")] == [
        "Sales",
        "Salaried",
    ]
    # Nothing to list: a header only, or nothing at all in JSON.
    assert run.json("groups", "list", "-q", "nothing") == []
    assert run.ok("groups", "list", "-q", "nothing", "--format", "csv").stdout == (
        "id,display_name,roles,external_id,version,updated_at\n"
    )


def test_list_follows_every_page(run: Cli) -> None:
    from userplane import Registry, Settings
    from userplane.groups import NewGroup
    from userplane.users import MAX_LIMIT

    # One more group than a page holds (the CLI asks for the largest pages).
    count = MAX_LIMIT + 1
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": run.database_url})
    with Registry(settings) as registry:
        for n in range(count):
            registry.groups.create(NewGroup(f"g{n:03}"))
    names = [g["display_name"] for g in run.json("groups", "list")]
    assert names == [f"g{n:03}" for n in range(count)]


def test_members_add_and_remove(run: Cli) -> None:
    users = sorted(
        (run.user(f"user{n}@example.org") for n in range(3)), key=lambda u: uuid.UUID(u["id"])
    )
    run.one("groups", "create", "Crew")

    added = run.one("groups", "add", "crew", users[0]["email"], users[1]["id"], users[0]["id"])
    assert added["version"] == 2
    assert [m["id"] for m in run.json("groups", "members", "Crew")] == [
        users[0]["id"],
        users[1]["id"],
    ]
    # Adding members already in changes nothing.
    assert run.one("groups", "add", "crew", users[1]["email"])["version"] == 2
    assert run.one("groups", "add", "crew", users[2]["email"])["version"] == 3

    names, rows = table(run.ok("groups", "members", "crew"))
    assert names == MEMBER_COLUMNS
    assert [r["EMAIL"] for r in rows] == [u["email"] for u in users]
    assert all(r["IS_ACTIVE"] == "yes" and r["FULL_NAME"] == "-" for r in rows)
    csv_rows = run.csv("groups", "members", "crew")
    assert [r["id"] for r in csv_rows] == [u["id"] for u in users]
    assert set(csv_rows[0]) == {"id", "email", "full_name", "is_active"}

    removed = run.one("groups", "remove", "crew", users[0]["email"], users[2]["id"])
    assert removed["version"] == 4
    assert [m["email"] for m in run.json("groups", "members", "crew")] == [users[1]["email"]]
    # Not a member: nothing changes.
    assert run.one("groups", "remove", "crew", users[0]["id"])["version"] == 4

    # A soft-deleted member is hidden, and back once restored.
    run.ok("users", "delete", users[1]["id"])
    assert run.json("groups", "members", "crew") == []
    run.ok("users", "restore", users[1]["id"])
    assert [m["id"] for m in run.json("groups", "members", "crew")] == [users[1]["id"]]


def test_update(run: Cli) -> None:
    run.one("groups", "create", "Team", "--role", "viewer", "--external-id", "t-1")

    renamed = run.one("groups", "update", "team", "--name", "Squad")
    assert renamed["display_name"] == "Squad"
    assert renamed["version"] == 2
    assert renamed["roles"] == ["viewer"]
    assert renamed["external_id"] == "t-1"

    roles = run.one("groups", "update", "squad", "--role", "editor", "--role", "viewer")
    assert roles["roles"] == ["editor", "viewer"]
    assert roles["version"] == 3
    none = run.one("groups", "update", "squad", "--no-roles")
    assert none["roles"] == []
    assert none["version"] == 4

    ext = run.one("groups", "update", "squad", "--external-id", "t-2")
    assert ext["external_id"] == "t-2"
    cleared = run.one("groups", "update", "squad", "--clear-external-id")
    assert cleared["external_id"] is None
    assert cleared["version"] == 6

    # Nothing to change: the group as it is.
    assert run.one("groups", "update", "squad") == cleared
    assert run.one("groups", "update", "squad", "--name", "Squad") == cleared

    at = run.one("groups", "update", cleared["id"], "--if-version", "6", "--name", "Unit")
    assert at["display_name"] == "Unit"
    assert at["version"] == 7
    line = run.fails(STALE, "groups", "update", "unit", "--if-version", "6", "--name", "X")
    assert line == "userplane: precondition-failed: the group has changed since that version"
    assert run.one("groups", "get", "unit") == at

    for args in (
        ("--role", "viewer", "--no-roles"),
        ("--external-id", "x", "--clear-external-id"),
    ):
        result = run("groups", "update", "unit", *args)
        assert result.exit_code == USAGE, result.output
        assert "exclude each other" in result.stderr
    assert run.one("groups", "get", "unit") == at


def test_delete(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    ann = run.user("ann@example.org")
    group = run.one("groups", "create", "Doomed")
    run.ok("groups", "add", "doomed", ann["email"])

    # No terminal to ask at: refused at once, whatever stdin holds.
    for answer in ("y\n", ""):
        line = run.fails(USAGE, "groups", "delete", "doomed", input=answer)
        assert line == (
            "userplane: refusing to delete without confirmation: stdin is not a terminal; "
            "pass --yes"
        )
    line = run.fails(STALE, "groups", "delete", "doomed", "--yes", "--if-version", "1")
    assert line.startswith("userplane: precondition-failed: ")

    from userplane.frontends.cli import app as cli_app

    monkeypatch.setattr(cli_app, "stdin_is_terminal", lambda: True)
    result = run("groups", "delete", "doomed", input="n\n")
    assert result.exit_code == CANCELLED, result.output
    assert "Doomed" in result.stderr
    assert run.one("groups", "get", group["id"])["version"] == 2

    result = run("groups", "delete", "doomed", "--format", "json", input="y\n")
    assert result.exit_code == 0, result.output
    [deleted] = [json.loads(line) for line in result.stdout.splitlines()]
    assert deleted["id"] == group["id"]
    assert deleted["version"] == 2
    assert run.fails(NOT_FOUND, "groups", "get", group["id"]) == (
        f"userplane: not-found: no group with id {group['id']}"
    )
    # Its member is still a user, in no group.
    assert run.one("users", "get", ann["id"])["id"] == ann["id"]
    assert run.json("groups", "list", "--member", ann["id"]) == []

    run.one("groups", "create", "Again")
    assert run.one("groups", "delete", "again", "--yes", "--if-version", "1")["display_name"] == (
        "Again"
    )
    assert run.json("groups", "list") == []


# --------------------------------------------------------------------------- errors


def test_errors_are_one_line_with_their_exit_code(run: Cli) -> None:
    ann = run.user("ann@example.org")
    run.one("groups", "create", "Admins", "--role", "admin", "--external-id", "adm")
    missing = str(uuid.uuid4())

    assert run.fails(NOT_FOUND, "groups", "get", "nobody") == (
        "userplane: not-found: no group named 'nobody'"
    )
    assert run.fails(NOT_FOUND, "groups", "members", missing) == (
        f"userplane: not-found: no group with id {missing}"
    )
    for args in (
        ("add", "admins", "ghost@example.org"),
        ("add", "admins", ann["email"], missing),
        ("remove", "admins", "ghost@example.org"),
        ("list", "--member", "ghost@example.org"),
    ):
        assert run.fails(NOT_FOUND, "groups", *args).startswith("userplane: not-found: ")
    assert run.json("groups", "members", "admins") == []

    assert run.fails(CONFLICT, "groups", "create", "ADMINS") == (
        "userplane: conflict: a group named 'ADMINS' exists (names ignore letter case)"
    )
    assert run.fails(CONFLICT, "groups", "create", "Other", "--external-id", "adm") == (
        "userplane: conflict: a group with external id 'adm' exists"
    )
    run.one("groups", "create", "Other")
    assert run.fails(CONFLICT, "groups", "update", "other", "--name", "admins").startswith(
        "userplane: conflict: "
    )

    line = run.fails(INVALID, "groups", "create", "Wizards", "--role", "wizard")
    assert line.startswith("userplane: invalid-input: ")
    assert "'wizard'" in line
    assert "wizard" in run.fails(INVALID, "groups", "update", "other", "--role", "wizard")
    assert run.fails(INVALID, "groups", "create", "   ").startswith(
        "userplane: invalid-input: $.display_name"
    )
    assert run.fails(INVALID, "groups", "create", "bell\x07").startswith(
        "userplane: invalid-input: $.display_name"
    )
    assert [g["display_name"] for g in run.json("groups", "list")] == ["Admins", "Other"]


def test_errors_in_json_with_format_json(run: Cli) -> None:
    result = run("groups", "get", "nobody", "--format", "json")
    assert result.exit_code == NOT_FOUND
    assert result.stdout == ""
    assert json.loads(result.stderr) == {
        "error": "not-found",
        "detail": "no group named 'nobody'",
        "exit_code": NOT_FOUND,
    }
    result = run("groups", "create", "x", "--role", "wizard", "--format", "json")
    assert result.exit_code == INVALID
    error = json.loads(result.stderr)
    assert error["error"] == "invalid-input"
    assert [e["field"] for e in error["errors"]] == ["$.roles"]


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["groups", "--help"])
    assert result.exit_code == 0
    for command in ("create", "list", "get", "update", "delete", "members", "add", "remove"):
        assert f"  {command} " in result.stdout, result.stdout


# --------------------------------------------------------------------------- real processes


@pytest.mark.e2e
def test_groups_as_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    env |= {
        "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
        "USERPLANE_LOG_FORMAT": "json",
        "USERPLANE_ENV_FILE": str(tmp_path / "no-such.env"),
    }

    def proc(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "userplane", *args],
            env=env,
            cwd=tmp_path,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def fails(code: int, *args: str, **kwargs: Any) -> str:
        done = proc(*args, **kwargs)
        assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        return lines[0]

    assert proc("migrate").returncode == 0
    created = proc("groups", "create", "Ops", "--role", "viewer", "--format", "json")
    assert created.returncode == 0, created.stderr
    assert created.stderr == ""
    assert json.loads(created.stdout)["display_name"] == "Ops"

    assert fails(NOT_FOUND, "groups", "get", "nope") == (
        "userplane: not-found: no group named 'nope'"
    )
    assert fails(NOT_FOUND, "groups", "add", "ops", "ghost@example.org").startswith(
        "userplane: not-found: "
    )
    assert fails(CONFLICT, "groups", "create", "OPS") == (
        "userplane: conflict: a group named 'OPS' exists (names ignore letter case)"
    )
    line = fails(INVALID, "groups", "create", "Wiz", "--role", "wizard")
    assert line.startswith("userplane: invalid-input: ")
    assert "'wizard'" in line
    # stdin is a pipe, not a terminal: refused without --yes, even with "y" on it.
    assert fails(USAGE, "groups", "delete", "ops", stdin="y\n") == (
        "userplane: refusing to delete without confirmation: stdin is not a terminal; pass --yes"
    )
    listed = proc("groups", "list", "--format", "csv")
    assert listed.returncode == 0
    assert [r["display_name"] for r in csv.DictReader(io.StringIO(listed.stdout))] == ["Ops"]
