"""The PostgreSQL store through a real PgBouncer in transaction pooling mode.

PgBouncer (Debian's 1.18) refuses the startup parameter ``options`` and keeps
no prepared statement from one transaction to the next. The store finds it
out by itself (``USERPLANE_DB_PREPARED_STATEMENTS=auto``): the whole storage
contract passes through it, as does a real ``userplane serve``.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_postgresql_storage as direct
from pgbouncer import through
from serving import running_server, unique_email

from userplane import ConfigurationError, Registry, Settings
from userplane.plugins.postgresql.store import PostgreSQLStorage
from userplane.testing import insert, make_user


class TestThroughPgBouncer(direct.TestPostgreSQLContract):
    """The whole storage contract, every statement through PgBouncer in transaction mode."""

    @pytest.fixture
    def storage(self, postgresql_url: str, pgbouncer: int) -> Iterator[PostgreSQLStorage]:
        store = PostgreSQLStorage(through(postgresql_url, pgbouncer))
        yield store
        store.close()

    @pytest.fixture
    def unmigrated_storage(
        self, create_postgresql_database: Callable[[], str], pgbouncer: int
    ) -> Iterator[PostgreSQLStorage]:
        store = PostgreSQLStorage(through(create_postgresql_database(), pgbouncer), timeout=0.3)
        yield store
        store.close()


@pytest.mark.parametrize("refusing", [True, False], ids=["refusing", "ignoring"])
def test_the_pooler_is_found_and_nothing_is_prepared(
    refusing: bool,
    postgresql_url: str,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = request.getfixturevalue("pgbouncer" if refusing else "pgbouncer_ignoring")
    store = PostgreSQLStorage(through(postgresql_url, port), min_size=4, max_size=4)
    try:
        with caplog.at_level(logging.WARNING, "userplane.postgresql"):
            users = [insert(store, make_user(f"u{i}@example.org")) for i in range(12)]
        [warning] = [r.getMessage() for r in caplog.records]
        assert ("refuses" if refusing else "drops") in warning
        assert "ALTER ROLE" in warning
        assert "prepared statements are off" in warning
        assert store._prepare is None
        assert store._startup_options is False
        # Each statement again and again, on whichever server connection PgBouncer
        # lends: were any prepared, one would be missing or taken on another.
        for _ in range(3):
            assert [store.get_user(u.id) for u in users] == users
        # Dates come back in UTC, though TimeZone was set by a SET, not the startup packet.
        assert all(u.created_at.utcoffset() is not None for u in users)
        assert store.fetch_one("SHOW TimeZone", {}) == ("UTC",)
    finally:
        store.close()


def test_a_role_timeout_equal_to_ours_does_not_hide_the_pooler(
    create_postgresql_database: Callable[[], str], postgresql_server: str, pgbouncer_ignoring: int
) -> None:
    # The deployment guide says to set statement_timeout on the role or database: the
    # value then matches ours, and only where it came from tells the options were dropped.
    import psycopg

    url = create_postgresql_database()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(postgresql_server, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET statement_timeout = 5000')
    store = PostgreSQLStorage(through(url, pgbouncer_ignoring))
    try:
        assert store.fetch_one("SELECT 1", {}) == (1,)
        assert store._startup_options is False
        assert store._prepare is None
    finally:
        store.close()


def test_statements_missing_on_the_server_turn_preparing_off(
    postgresql_url: str, pgbouncer_ignoring: int, caplog: pytest.LogCaptureFixture
) -> None:
    # A pooler that passes no sign of itself at start-up (the options arrive, as
    # with a role whose statement_timeout happens to be ours) shows itself when a
    # prepared statement goes missing: auto turns preparing off and the call succeeds.
    import psycopg

    url = through(postgresql_url, pgbouncer_ignoring)
    store = PostgreSQLStorage(url, min_size=1, max_size=3)
    store._detect_pooler = lambda conn: None  # type: ignore[method-assign]
    try:
        user = insert(store, make_user())
        with caplog.at_level(logging.WARNING, "userplane.postgresql"):
            # Threads on three client connections: whichever finds a statement missing
            # turns preparing off while the others may hold connections with statements
            # prepared; every call still succeeds.
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                got = list(pool.map(lambda _: store.get_user(user.id), range(60)))
            assert got == [user] * 60
            # A loaded machine may have run every call on one server connection, and
            # found nothing missing. Another client then holds a server connection in a
            # transaction: PgBouncer lends the one most recently used (LIFO), where the
            # statement is prepared, so the store's next run lands on another.
            with psycopg.connect(url, autocommit=True) as other:
                for _ in range(10):
                    if store._prepare is None:
                        break
                    with other.transaction():
                        other.execute("SELECT 1")
                        assert store.get_user(user.id) == user
        assert store._prepare is None
        assert any("went missing" in r.getMessage() for r in caplog.records)
    finally:
        store.close()


def test_explicitly_false_prepares_nothing_even_directly(postgresql_url: str) -> None:
    store = PostgreSQLStorage(postgresql_url, min_size=1, max_size=1, prepared_statements=False)
    try:
        user = insert(store, make_user())
        for _ in range(10):  # past psycopg's own threshold of 5
            assert store.get_user(user.id) == user
        assert store.fetch_all("SELECT name FROM pg_prepared_statements", {}) == []
        # Startup options still go: nothing stands between.
        assert store.fetch_one("SHOW statement_timeout", {}) == ("5s",)
    finally:
        store.close()


def test_settings_name_the_choice() -> None:
    from userplane.plugins.postgresql import userplane_open_storage

    for value, expected in (("auto", True), ("true", True), ("false", None)):
        settings = Settings.from_mapping(
            {
                "USERPLANE_DATABASE_URL": "postgresql://u@127.0.0.1/db",
                "USERPLANE_DB_PREPARED_STATEMENTS": value,
            }
        )
        store = userplane_open_storage(settings=settings)
        assert isinstance(store, PostgreSQLStorage)
        assert store._prepare is expected
    with pytest.raises(ConfigurationError, match="USERPLANE_DB_PREPARED_STATEMENTS"):
        Settings.from_mapping({"USERPLANE_DB_PREPARED_STATEMENTS": "maybe"})


def test_migrations_from_several_registries_through_pgbouncer_apply_once(
    create_postgresql_database: Callable[[], str], pgbouncer: int
) -> None:
    url = through(create_postgresql_database(), pgbouncer)
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": url})

    def migrate(_: int) -> list[str]:
        with Registry(settings) as registry:
            return registry.migrate()

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        applied = list(pool.map(migrate, range(3)))
    ids = [m for batch in applied for m in batch]
    assert ids, applied
    assert len(ids) == len(set(ids)), applied
    with Registry(settings) as registry:
        assert all(state.applied for state in registry.migration_status())


@pytest.mark.e2e
def test_serve_through_pgbouncer(
    create_postgresql_database: Callable[[], str], pgbouncer: int, tmp_path: Path
) -> None:
    url = through(create_postgresql_database(), pgbouncer)
    env = {"USERPLANE_DB_POOL_MAX_SIZE": "4"}
    with running_server(tmp_path, url, "postgresql", env) as server:

        def create(i: int) -> int:
            body = {"email": unique_email(f"pgb{i}"), "full_name": f"P {i}"}
            return server.request("POST", "/api/v1/users", body).status

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(create, range(60))) == [201] * 60
        page = server.request("GET", "/api/v1/users?limit=100")
        assert page.status == 200
        assert len(page.json()["items"]) == 60
        log = server.log()
        assert "refuses the startup parameter" in log
        assert "unsupported startup parameter" not in log
        assert "Traceback" not in log
