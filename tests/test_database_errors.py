"""Database errors say which database and why, in one line.

SQLite: every error names the file by its absolute path, and a command that
only reads never creates the file (``userplane migrate`` does). PostgreSQL: a
server that was never reached is reported at once with libpq's reason
(refused, no such database, a refused login), masked, not as "busy" after the
pool's retries; once connected, an outage is still the pool's to ride out.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from conftest import with_database
from falcon import testing

from userplane import Registry, Settings
from userplane.errors import Unavailable
from userplane.frontends.cli import cli
from userplane.frontends.http import create_app
from userplane.plugins.postgresql.store import PostgreSQLStorage, connection_failure
from userplane.plugins.sqlite import SQLiteStorage, userplane_describe
from userplane.testing import insert, make_user

# Real CLI processes against unreachable servers.
pytestmark = pytest.mark.e2e

PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """No USERPLANE_* setting from outside reaches the CLI."""
    for name in list(os.environ):
        if name.startswith("USERPLANE_") and name != PG_ENV:
            monkeypatch.delenv(name)


def userplane(tmp_path: Path, url: str, *args: str) -> Result:
    env_file = tmp_path / "empty.env"  # and no stray .env
    env_file.touch()
    return CliRunner().invoke(
        cli,
        ["--env-file", str(env_file), *args],
        env={"USERPLANE_DATABASE_URL": url, PG_ENV: None},
        catch_exceptions=False,
    )


def one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- SQLite ------------------------------------------------------------------------------


def test_a_read_in_an_empty_folder_does_not_create_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default URL is relative: run from another folder, it names another file.
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///userplane.db"
    expected = (
        f"userplane: unavailable: no database at {tmp_path / 'userplane.db'}: "
        "run `userplane migrate` to create it"
    )
    for command in (
        ["users", "list"],
        ["users", "get", "ann@example.org"],
    ):
        assert one_error(userplane(tmp_path, url, *command), 10) == expected
    status = userplane(tmp_path, url, "migrate", "--status", "--format", "json")
    assert status.exit_code == 0, status.stderr
    rows = [json.loads(line) for line in status.stdout.splitlines()]
    assert rows
    assert not any(row["applied"] for row in rows)
    assert not (tmp_path / "userplane.db").exists()
    # migrate makes it (and its folder), then the read answers.
    nested = f"sqlite:///{tmp_path / 'data' / 'u.db'}"
    assert userplane(tmp_path, nested, "migrate").exit_code == 0
    assert (tmp_path / "data" / "u.db").is_file()
    assert userplane(tmp_path, nested, "users", "list").exit_code == 0


def test_every_sqlite_error_names_the_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "u.db"
    store = SQLiteStorage("sqlite:///u.db", "u.db", busy_timeout_ms=100)
    assert store.path == str(path)
    try:
        with pytest.raises(Unavailable, match=f"^no database at {path}: run `userplane migrate`"):
            store.ping()
        path.touch()  # an empty file: a database never migrated
        with pytest.raises(Unavailable, match=f"^the database {path} is not migrated"):
            store.get_user_by_email("ann@example.org")
        store.migrate()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(Unavailable, match=f"^the database {path} is busy"):
                insert(store, make_user())
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    finally:
        store.close()
    path.unlink()
    path.write_bytes(b"not a database, but a file where one should be" * 100)
    other = SQLiteStorage(f"sqlite:///{path}", str(path))
    try:
        with pytest.raises(Unavailable, match=f"^the database {path} cannot be used"):
            other.ping()
    finally:
        other.close()


def test_a_file_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a-folder.db"  # there, but no file SQLite can open (root or not)
    path.mkdir()
    store = SQLiteStorage(f"sqlite:///{path}", str(path))
    try:
        with pytest.raises(Unavailable, match=f"^cannot open the database {path}: unable to open"):
            store.ping()
    finally:
        store.close()


def test_serve_describes_the_database_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": "sqlite:///userplane.db"})
    assert userplane_describe(settings=settings) == {"database": str(tmp_path / "userplane.db")}
    with Registry(settings) as registry:
        registry.migrate()
        facts = registry.hooks.describe(settings, registry)
        assert facts["database"] == str(tmp_path / "userplane.db")
        assert registry.storage.path == str(tmp_path / "userplane.db")  # type: ignore[attr-defined]
    other = Settings.from_mapping({"USERPLANE_DATABASE_URL": "postgresql://h/x"})
    assert userplane_describe(settings=other) == {}


# -- PostgreSQL --------------------------------------------------------------------------


@pytest.fixture
def pool_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    caplog.set_level(logging.WARNING, logger="psycopg")
    return caplog.records


def test_a_server_never_reached_is_reported_at_once_with_its_cause(
    pool_warnings: list[logging.LogRecord],
) -> None:
    store = PostgreSQLStorage("postgresql://userplane:hunter2@127.0.0.1:1/userplane", timeout=5)
    try:
        operations: list[Callable[[], object]] = [
            store.ping,
            lambda: store.get_user_by_email("ann@example.org"),
        ]
        for operation in operations:
            started = time.monotonic()
            with pytest.raises(Unavailable) as info:
                operation()
            assert time.monotonic() - started < 1.5  # not the pool timeout (5 s)
            assert info.value.detail == (
                "cannot connect to PostgreSQL at 127.0.0.1:1: connection refused"
            )
        assert store.pool_stats() is None  # no pool retrying in the background
    finally:
        store.close()
    assert pool_warnings == []


def test_a_database_that_does_not_exist_is_named(
    postgresql_server: str, pool_warnings: list[logging.LogRecord]
) -> None:
    url = with_database(postgresql_server, "userplane_no_such_database")
    store = PostgreSQLStorage(url, timeout=5)
    try:
        started = time.monotonic()
        with pytest.raises(
            Unavailable, match='database "userplane_no_such_database" does not exist'
        ):
            store.ping()
        assert time.monotonic() - started < 1.5
    finally:
        store.close()
    assert pool_warnings == []


def test_the_cause_is_one_masked_line() -> None:
    url = "postgresql://ann:s3cret-pw@db.example:6432/app"
    said = psycopg.OperationalError(
        'connection failed: connection to server at "db.example" (10.0.0.7), port 6432 failed: '
        'FATAL:  password authentication failed for user "ann" (password s3cret-pw)\n'
        "\tIs the server running on that host?"
    )
    line = connection_failure(said, url)
    assert line.startswith(
        "cannot connect to PostgreSQL at db.example:6432: "
        'password authentication failed for user "ann"'
    )
    assert "s3cret-pw" not in line
    assert "\n" not in line
    socket = psycopg.OperationalError(
        'connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: '
        "No such file or directory\n\tIs the server running locally?"
    )
    assert connection_failure(socket, "postgresql:///app") == (
        "cannot connect to PostgreSQL at /run/postgresql/.s.PGSQL.5432: no such file or directory"
    )
    timeout = psycopg.errors.ConnectionTimeout("connection timeout expired")
    assert connection_failure(timeout, url) == (
        "cannot connect to PostgreSQL at db.example:6432: connection timeout expired"
    )


def test_the_cli_and_the_http_api_report_the_cause(tmp_path: Path) -> None:
    url = "postgresql://userplane:hunter2@127.0.0.1:1/userplane"
    line = one_error(userplane(tmp_path, url, "users", "list"), 10)
    assert line == (
        "userplane: unavailable: cannot connect to PostgreSQL at 127.0.0.1:1: connection refused"
    )
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": url, "USERPLANE_AUTH": "disabled"})
    with Registry(settings) as registry:
        client = testing.TestClient(create_app(registry))
        for path in ("/api/v1/users", "/health/ready"):
            resp = client.simulate_get(path)
            assert resp.status_code == 503, resp.text
            assert resp.headers["Content-Type"].startswith("application/problem+json")
            assert resp.headers.get("Retry-After")
            assert "hunter2" not in resp.text
        problem = client.simulate_get("/api/v1/users").json
        assert problem["type"] == "urn:userplane:problem:unavailable"
        # The operator's cause names the server: a remote client is told less.
        assert problem["detail"] == "the database cannot be reached; retry shortly"
        assert "127.0.0.1" not in resp.text


def test_once_connected_an_outage_is_the_pools_to_ride_out(
    postgresql_server: str, create_postgresql_database: Callable[[], str]
) -> None:
    # The database goes away under a serving process: requests fail as before
    # (busy, retry shortly, after the pool timeout), never the first-attempt check.
    url = create_postgresql_database()
    store = PostgreSQLStorage(url, timeout=0.5, min_size=1)
    try:
        store.migrate()
        store.ping()
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(postgresql_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        with pytest.raises(Unavailable) as info:
            store.ping()
        assert "cannot connect" not in info.value.detail
        assert "retry" in info.value.detail
    finally:
        store.close()
