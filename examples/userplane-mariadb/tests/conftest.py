"""A MariaDB server from USERPLANE_TEST_MARIADB_URL, and databases of this run's own.

Every database is named ``userplane_test_…`` (what ``ci-setup.sh``'s user may make) and
dropped at the end of the run. Without the variable the tests are skipped, except
under CI, where they must run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pymysql
import pytest

from userplane.plugin import Registry, Settings
from userplane_mariadb.store import connect_args

ENV = "USERPLANE_TEST_MARIADB_URL"
#: The built-in audit plugin has statements for SQLite and PostgreSQL only, and refuses
#: to start on MariaDB rather than run without the trail it promises (README).
WITHOUT_AUDIT = {"USERPLANE_DISABLED_PLUGINS": "audit"}
#: The tables the tests empty between tests (yoyo's own are left alone).
#: Groups first: their members reference users.
TABLES = ("user_groups", "users", "idempotency_keys", "encryption_keys", "api_keys")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: under CI the MariaDB tests must run", pytrace=False)
    pytest.skip(reason)


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name`` (its query, a unix socket, kept)."""
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def connect(url: str, **extra: Any) -> pymysql.Connection[Any]:
    """A plain PyMySQL connection to ``url``'s server, for the tests' own statements."""
    args = connect_args(with_database(url, "mysql"))
    del args["database"]
    return pymysql.connect(**args, autocommit=True, connect_timeout=5, **extra)


@pytest.fixture(scope="session")
def mariadb_server() -> str:
    """The URL of a reachable MariaDB server (no database in it)."""
    url = os.environ.get(ENV)
    if not url:
        _unavailable(f"{ENV} is not set (ci-setup.sh prints one)")
        raise AssertionError("unreachable")
    try:
        connect(url).close()
    except pymysql.Error as exc:
        _unavailable(f"MariaDB at {ENV} cannot be used: {exc}")
    return url


@pytest.fixture(scope="session")
def create_mariadb_database(mariadb_server: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases; every one is dropped at the end of the run."""
    made: list[str] = []

    def create() -> str:
        name = f"userplane_test_{uuid.uuid4().hex[:12]}"
        with connect(mariadb_server) as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
        made.append(name)
        return with_database(mariadb_server, name)

    yield create
    with connect(mariadb_server) as conn, conn.cursor() as cursor:
        for name in made:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
def mariadb_database(create_mariadb_database: Callable[[], str]) -> str:
    """This run's migrated database (the core's schema and the plugins'), shared."""
    url = create_mariadb_database()
    with Registry(
        Settings.from_mapping({**WITHOUT_AUDIT, "USERPLANE_DATABASE_URL": url})
    ) as registry:
        registry.migrate()
    return url


@pytest.fixture
def mariadb_url(mariadb_database: str) -> str:
    """The run's database, emptied for this test."""
    # DELETE, not TRUNCATE: on a few rows it costs far less than recreating each table.
    name = urlsplit(mariadb_database).path[1:]
    with connect(mariadb_database, database=name) as conn, conn.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"DELETE FROM {table}")
    return mariadb_database
