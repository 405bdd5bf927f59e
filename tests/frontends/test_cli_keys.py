"""``userplane keys create|list|revoke``: in-process through click's CliRunner, and as a
real ``userplane`` process.

In-process tests invoke the ``cli`` group with the plugins' commands added as ``main()``
adds them (on a copy, so the shared group stays as other tests expect); those taking
``on_db`` run on SQLite and PostgreSQL (see ``conftest.py``). The process tests run the
console script next to the interpreter on a SQLite file of their own.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
import structlog
from click.testing import CliRunner, Result
from falcon import testing

from userplane import Registry, Settings
from userplane.frontends.cli import cli
from userplane.frontends.http import create_app
from userplane.hooks import Hooks
from userplane.plugin_manager import make_plugin_manager
from userplane.plugins import api_keys
from userplane.plugins.api_keys.keys import hash_key, lookup_of, matches

#: Read by ``conftest.py`` when a test first needs PostgreSQL: kept out of the CLI's
#: environment rather than out of the test process.
PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"
SCRIPT = Path(sys.executable).parent / "userplane"
#: A safety limit for one CLI run, not a performance expectation.
TIMEOUT = 60
KEY_SHAPE = re.compile(r"up_[A-Za-z0-9]{44}")
CREATED_KEYS = {
    "key",
    "id",
    "name",
    "role",
    "prefix",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
}
LISTED_KEYS = CREATED_KEYS - {"key"}
TABLE_COLUMNS = [
    "ID",
    "NAME",
    "ROLE",
    "PREFIX",
    "CREATED_AT",
    "EXPIRES_AT",
    "REVOKED_AT",
    "LAST_USED_AT",
]
USERS = "/api/v1/users"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No USERPLANE_* from the outer environment; logging restored afterwards.

    The logging plugin attaches a handler to whatever ``sys.stderr`` is when a
    registry starts, which under CliRunner is the runner's capture stream.
    """
    for name in list(os.environ):
        if name.startswith("USERPLANE_") and name != PG_ENV:
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yoyo_level = logging.getLogger("yoyo").level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("yoyo").setLevel(yoyo_level)


@pytest.fixture(scope="module")
def group() -> click.Group:
    """``userplane`` with every plugin's commands, as ``main()`` builds it."""
    g = copy.copy(cli)
    g.commands = dict(cli.commands)
    Hooks(make_plugin_manager()).cli_commands(g)
    assert "keys" in g.commands
    return g


def one_line(stderr: str) -> str:
    """The single line of an error, with no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert stderr.endswith("\n")
    return lines[0]


class Cli:
    """Invokes ``userplane`` in-process against this test's database, never a stray ``.env``."""

    def __init__(self, group: click.Group, tmp_path: Path, database_url: str) -> None:
        self.group = group
        self.database_url = database_url
        self.env_file = tmp_path / "empty.env"
        self.env_file.touch()
        self.runner = CliRunner()
        self.env: dict[str, str | None] = {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_LOG_FORMAT": "json",
            PG_ENV: None,
        }

    def __call__(self, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
        return self.runner.invoke(
            self.group,
            ["--env-file", str(self.env_file), *args],
            env={**self.env, **(env or {})},
            catch_exceptions=False,
        )

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        assert result.stderr == ""
        return result

    def json(self, *args: str) -> list[dict[str, Any]]:
        """The JSON lines a ``--format json`` command prints."""
        result = self.ok(*args, "--format", "json")
        return [json.loads(line) for line in result.stdout.splitlines()]

    def one(self, *args: str) -> dict[str, Any]:
        rows = self.json(*args)
        assert len(rows) == 1, rows
        return rows[0]

    def fails(self, code: int, *args: str) -> str:
        """Expect exit ``code``, nothing on stdout and one line on stderr; return it."""
        result = self(*args)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert result.stdout == ""
        return one_line(result.stderr)

    def create(self, name: str = "ci", role: str = "admin", *extra: str) -> dict[str, Any]:
        return self.one("keys", "create", "--name", name, "--role", role, *extra)

    def settings(self, **extra: str) -> Settings:
        return Settings.from_mapping({"USERPLANE_DATABASE_URL": self.database_url, **extra})


@pytest.fixture
def app(group: click.Group, tmp_path: Path) -> Cli:
    """The CLI over a migrated SQLite file of this test's own."""
    run = Cli(group, tmp_path, f"sqlite:///{tmp_path}/u.db")
    run.ok("migrate")
    return run


@pytest.fixture
def on_db(group: click.Group, tmp_path: Path, database_url: str) -> Cli:
    """The CLI over this test's migrated database, on each backend."""
    run = Cli(group, tmp_path, database_url)
    run.ok("migrate")
    return run


def table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a table, split on runs of two or more spaces."""
    split = [[c.strip() for c in line.split("  ") if c] for line in stdout.splitlines()]
    return split[0], split[1:]


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert value.utcoffset() == timedelta(0), text
    return value


def assert_no_secret(stdout: str, key: str) -> None:
    assert key not in stdout
    assert key[15:] not in stdout  # the secret part
    assert hash_key(key) not in stdout


def stored(settings: Settings, key: str) -> Any:
    """The stored record of ``key``, read through a registry of its own."""
    with Registry(settings) as reg:
        storage = api_keys.state_of(reg).store
        lookup = lookup_of(key)
        assert lookup is not None
        return storage.get_api_key(lookup)


# --- keys create ---------------------------------------------------------------------------


def test_create_json_prints_one_object_with_the_key(on_db: Cli) -> None:
    before = datetime.now(UTC)
    result = on_db.ok(
        "keys", "create", "--name", "deploy bot", "--role", "admin", "--format", "json"
    )
    after = datetime.now(UTC)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    made = json.loads(lines[0])
    assert isinstance(made, dict)
    assert set(made) == CREATED_KEYS
    key = made["key"]
    assert KEY_SHAPE.fullmatch(key), key
    assert made["prefix"] == key[:15]
    assert (made["name"], made["role"]) == ("deploy bot", "admin")
    uuid.UUID(made["id"])
    assert before <= parse_time(made["created_at"]) <= after
    assert made["expires_at"] is None
    assert made["revoked_at"] is None
    assert made["last_used_at"] is None
    record = stored(on_db.settings(), key)
    assert record is not None
    assert str(record.id) == made["id"]
    assert record.secret_hash == hash_key(key)
    assert matches(key, record)


def test_create_table_prints_the_key_on_stdout_and_a_notice_on_stderr(app: Cli) -> None:
    result = app("keys", "create", "--name", "ci", "--role", "viewer")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert KEY_SHAPE.fullmatch(result.stdout.removesuffix("\n")), result.stdout
    assert result.stdout.endswith("\n")
    key = result.stdout.strip()
    notice = one_line(result.stderr)
    [listed] = app.json("keys", "list")
    assert listed["id"] in notice
    assert "viewer" in notice
    assert "not shown again" in notice
    assert_no_secret(result.stderr, key)


def test_create_with_expires_90d(app: Cli) -> None:
    before = datetime.now(UTC)
    made = app.create("ci", "admin", "--expires", "90d")
    after = datetime.now(UTC)
    expires = parse_time(made["expires_at"])
    assert expires == parse_time(made["created_at"]) + timedelta(days=90)
    assert before + timedelta(days=90) <= expires <= after + timedelta(days=90)


@pytest.mark.parametrize(("text", "delta"), [("12h", timedelta(hours=12)), ("2w", timedelta(14))])
def test_create_with_other_units(app: Cli, text: str, delta: timedelta) -> None:
    made = app.create("ci", "admin", "--expires", text)
    assert parse_time(made["expires_at"]) == parse_time(made["created_at"]) + delta


@pytest.mark.parametrize("role", ["nope", "Admin", ""])
def test_create_with_an_unknown_role_is_invalid_input_naming_role(app: Cli, role: str) -> None:
    line = app.fails(5, "keys", "create", "--name", "ci", "--role", role)
    assert line.startswith("userplane: invalid-input:")
    assert "role" in line
    assert app.json("keys", "list") == []


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "bell\x07"])
def test_create_with_a_bad_name_is_invalid_input_naming_name(app: Cli, name: str) -> None:
    line = app.fails(5, "keys", "create", "--name", name, "--role", "admin")
    assert line.startswith("userplane: invalid-input: name:")
    assert app.json("keys", "list") == []


def test_create_with_a_zero_lifetime_is_invalid_input_naming_expires(app: Cli) -> None:
    line = app.fails(5, "keys", "create", "--name", "ci", "--role", "admin", "--expires", "0d")
    assert line.startswith("userplane: invalid-input: expires:")


@pytest.mark.parametrize("expires", ["5x", "90", "d", "-1d", "1.5d", "90 days"])
def test_create_with_a_bad_duration_is_a_usage_error(app: Cli, expires: str) -> None:
    result = app("keys", "create", "--name", "ci", "--role", "admin", "--expires", expires)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "--expires" in result.stderr
    assert "Traceback" not in result.stderr
    assert app.json("keys", "list") == []


def test_create_with_a_lifetime_past_the_calendar_is_refused_cleanly(app: Cli) -> None:
    result = app("keys", "create", "--name", "ci", "--role", "admin", "--expires", "3000000d")
    assert result.exit_code in (2, 5), (result.exit_code, result.stderr)
    assert "internal error" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [("--role", "admin"), ("--name", "ci"), ("--name", "ci", "--role", "admin", "--format", "x")],
)
def test_create_without_required_options_is_a_usage_error(app: Cli, args: tuple[str, ...]) -> None:
    result = app("keys", "create", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""


def test_commands_before_migrate_say_to_run_migrate(group: click.Group, tmp_path: Path) -> None:
    run = Cli(group, tmp_path, f"sqlite:///{tmp_path}/new.db")
    for args in (
        ("keys", "list"),
        ("keys", "create", "--name", "ci", "--role", "admin"),
        ("keys", "revoke", str(uuid.uuid4())),
    ):
        line = run.fails(10, *args)
        assert line.startswith("userplane: unavailable:")
        assert "userplane migrate" in line


# --- keys list -----------------------------------------------------------------------------


def test_list_never_prints_a_secret(on_db: Cli) -> None:
    first = on_db.create("first", "admin")
    second = on_db.create("second", "viewer", "--expires", "30d")
    plain = on_db("keys", "create", "--name", "third", "--role", "editor")
    assert plain.exit_code == 0, plain.stderr
    table_key = plain.stdout.strip()
    on_db.ok("keys", "revoke", first["id"])
    keys = [first["key"], second["key"], table_key]

    as_json = on_db.ok("keys", "list", "--format", "json").stdout
    as_table = on_db.ok("keys", "list").stdout
    for out in (as_json, as_table):
        for key in keys:
            assert_no_secret(out, key)
            assert key[:15] in out  # the prefix identifies it

    rows = [json.loads(line) for line in as_json.splitlines()]
    assert [r["name"] for r in rows] == ["first", "second", "third"]  # oldest first
    assert all(set(r) == LISTED_KEYS for r in rows), rows
    assert rows[0]["revoked_at"] is not None
    assert rows[1]["expires_at"] is not None
    shown = {k: v for k, v in first.items() if k != "key"}
    assert rows[0] == {**shown, "revoked_at": rows[0]["revoked_at"]}


def test_list_table(app: Cli) -> None:
    made = app.create("ci", "viewer")
    header, rows = table(app.ok("keys", "list").stdout)
    assert header == TABLE_COLUMNS
    assert rows == [[made["id"], "ci", "viewer", made["prefix"], made["created_at"], "-", "-", "-"]]


def test_list_when_empty(app: Cli) -> None:
    assert app.ok("keys", "list", "--format", "json").stdout == ""
    header, rows = table(app.ok("keys", "list").stdout)
    assert header == TABLE_COLUMNS
    assert rows == []


# --- keys revoke ---------------------------------------------------------------------------


def test_revoke_sets_revoked_at_once(on_db: Cli) -> None:
    made = on_db.create()
    before = datetime.now(UTC)
    revoked = on_db.one("keys", "revoke", made["id"])
    assert revoked["id"] == made["id"]
    assert set(revoked) == LISTED_KEYS
    at = parse_time(revoked["revoked_at"])
    assert before <= at <= datetime.now(UTC)
    assert_no_secret(json.dumps(revoked), made["key"])
    assert on_db.json("keys", "list") == [revoked]
    # Again: fine, and the first time stays.
    assert on_db.one("keys", "revoke", made["id"]) == revoked
    header, rows = table(on_db.ok("keys", "revoke", made["id"]).stdout)
    assert header == TABLE_COLUMNS
    assert rows[0][0] == made["id"]
    assert rows[0][6] == revoked["revoked_at"]
    record = stored(on_db.settings(), made["key"])
    assert record is not None
    assert record.revoked_at == at


def test_revoke_unknown_is_not_found(on_db: Cli) -> None:
    on_db.create()
    unknown = str(uuid.uuid4())
    line = on_db.fails(3, "keys", "revoke", unknown)
    assert line == f"userplane: not-found: no API key with id {unknown}"
    assert [k["revoked_at"] for k in on_db.json("keys", "list")] == [None]


def test_revoke_needs_a_uuid(app: Cli) -> None:
    result = app("keys", "revoke", "not-a-uuid")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


# --- against the HTTP API ------------------------------------------------------------------


def test_a_cli_key_authenticates_against_the_http_api(on_db: Cli) -> None:
    made = on_db.create("ops", "admin")
    settings = on_db.settings(USERPLANE_API_KEYS_CACHE_SECONDS="0")
    with Registry(settings) as reg:
        client = testing.TestClient(create_app(reg))
        auth = {"Authorization": f"Bearer {made['key']}"}
        assert client.simulate_get(USERS, headers=auth).status_code == 200
        assert client.simulate_get(USERS).status_code == 401
        wrong = made["key"][:-1] + ("A" if made["key"][-1] != "A" else "B")
        assert (
            client.simulate_get(USERS, headers={"Authorization": f"Bearer {wrong}"}).status_code
            == 401
        )
        # The use shows in the listing once the process's refresher has written it
        # (every second); a revocation by the CLI takes effect (at once here: the
        # cache is off).
        deadline = time.monotonic() + 10
        while on_db.json("keys", "list")[0]["last_used_at"] is None:
            assert time.monotonic() < deadline, "last_used_at was never written"
            time.sleep(0.2)
        on_db.ok("keys", "revoke", made["id"])
        assert client.simulate_get(USERS, headers=auth).status_code == 401


def test_a_cli_viewer_key_may_read_but_not_write(app: Cli) -> None:
    made = app.create("reader", "viewer")
    with Registry(app.settings()) as reg:
        client = testing.TestClient(
            create_app(reg), headers={"Authorization": f"Bearer {made['key']}"}
        )
        assert client.simulate_get(USERS).status_code == 200
        resp = client.simulate_post(USERS, json={"email": "ann@example.org"})
        assert resp.status_code == 403


def test_an_expired_cli_key_is_refused(app: Cli) -> None:
    made = app.create("short", "admin", "--expires", "1s")
    record = stored(app.settings(), made["key"])
    assert record is not None
    assert record.expires_at is not None
    with Registry(app.settings()) as reg:
        client = testing.TestClient(
            create_app(reg), headers={"Authorization": f"Bearer {made['key']}"}
        )
        time.sleep(max(0.0, (record.expires_at - datetime.now(UTC)).total_seconds()))
        assert client.simulate_get(USERS).status_code == 401


# --- as a real process ---------------------------------------------------------------------


class Proc:
    """Runs the ``userplane`` console script in ``tmp_path`` on a SQLite file of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.database_url = f"sqlite:///{tmp_path}/cli.db"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
        self.env.update(
            USERPLANE_DATABASE_URL=self.database_url,
            USERPLANE_LOG_FORMAT="json",
            USERPLANE_ENV_FILE=str(tmp_path / "no-such.env"),
        )

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args],
            env=self.env,
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def ok(self, *args: str) -> str:
        proc = self(*args)
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        assert proc.stderr == ""
        return proc.stdout

    def fails(self, code: int, *args: str) -> str:
        proc = self(*args)
        assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        return one_line(proc.stderr)


@pytest.fixture
def proc(tmp_path: Path) -> Proc:
    run = Proc(tmp_path)
    assert run.ok("migrate").startswith("applied: ")
    return run


@pytest.mark.e2e
def test_process_create_list_revoke_and_authenticate(proc: Proc) -> None:
    out = proc.ok("keys", "create", "--name", "ops", "--role", "admin", "--format", "json")
    lines = out.splitlines()
    assert len(lines) == 1, out
    made = json.loads(lines[0])
    assert set(made) == CREATED_KEYS
    assert KEY_SHAPE.fullmatch(made["key"])

    plain = proc("keys", "create", "--name", "later", "--role", "viewer", "--expires", "90d")
    assert plain.returncode == 0, plain.stderr
    table_key = plain.stdout.strip()
    assert plain.stdout == table_key + "\n"
    assert KEY_SHAPE.fullmatch(table_key)
    assert "not shown again" in one_line(plain.stderr)

    listing = [proc.ok("keys", "list"), proc.ok("keys", "list", "--format", "json")]
    for out in listing:
        for key in (made["key"], table_key):
            assert_no_secret(out, key)
    rows = [json.loads(line) for line in listing[1].splitlines()]
    assert [r["name"] for r in rows] == ["ops", "later"]
    later = rows[1]
    expires = parse_time(later["expires_at"])
    assert expires == parse_time(later["created_at"]) + timedelta(days=90)
    assert abs(expires - (datetime.now(UTC) + timedelta(days=90))) < timedelta(minutes=5)

    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": proc.database_url, "USERPLANE_API_KEYS_CACHE_SECONDS": "0"}
    )
    with Registry(settings) as reg:
        client = testing.TestClient(create_app(reg))
        auth = {"Authorization": f"Bearer {made['key']}"}
        assert client.simulate_get(USERS, headers=auth).status_code == 200
        revoked = json.loads(proc.ok("keys", "revoke", made["id"], "--format", "json"))
        assert revoked["id"] == made["id"]
        assert revoked["revoked_at"] is not None
        assert client.simulate_get(USERS, headers=auth).status_code == 401


@pytest.mark.e2e
def test_process_errors_are_one_line_with_the_documented_codes(proc: Proc) -> None:
    unknown = str(uuid.uuid4())
    assert proc.fails(3, "keys", "revoke", unknown) == (
        f"userplane: not-found: no API key with id {unknown}"
    )
    line = proc.fails(5, "keys", "create", "--name", "ci", "--role", "nope")
    assert line.startswith("userplane: invalid-input: role:")
    bad = proc("keys", "create", "--name", "ci", "--role", "admin", "--expires", "5x")
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert bad.stdout == ""
    assert "--expires" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert proc.ok("keys", "list", "--format", "json") == ""
