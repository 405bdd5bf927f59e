"""Shared fixtures: a migrated registry per test on each backend, and clients.

Tests that take ``database_url`` (or ``settings``, ``registry``, ``client``) run
twice: on a fresh SQLite file, and on PostgreSQL in a database of this run's own,
emptied before each test. PostgreSQL comes from ``USERPLANE_TEST_POSTGRESQL_URL``;
without it those variants are skipped, except under CI, where they must run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from clients import client_for
from databases import empty
from falcon import testing

from userplane import Registry, Settings
from userplane.keyring import NamedKey, new_key

PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"
BACKENDS = ["sqlite", "postgresql"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: under CI the PostgreSQL tests must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgresql_server() -> str:
    """The URL of a reachable PostgreSQL server (an admin database on it)."""
    url = os.environ.get(PG_ENV)
    if not url:
        _unavailable(f"{PG_ENV} is not set")
        raise AssertionError("unreachable")
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        _unavailable(f"PostgreSQL at {PG_ENV} cannot be reached: {exc}")
    return url


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    return urlsplit(url)._replace(path=f"/{name}").geturl()


@pytest.fixture(scope="session")
def create_postgresql_database(postgresql_server: str) -> Iterator[Any]:
    """A factory of fresh, empty databases; every one is dropped at the end of the run."""
    import psycopg

    made: list[str] = []

    def create() -> str:
        name = f"userplane_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgresql_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return with_database(postgresql_server, name)

    yield create
    with psycopg.connect(postgresql_server, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgresql_database(create_postgresql_database: Any) -> str:
    """This run's migrated PostgreSQL database, shared by the tests that empty it."""
    url: str = create_postgresql_database()
    with Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": url})) as registry:
        registry.migrate()  # the core's schema and every plugin's (api_keys)
    return url


@pytest.fixture
def postgresql_url(postgresql_database: str) -> str:
    """The run's PostgreSQL database, emptied for this test."""
    empty(postgresql_database)
    return postgresql_database


def _pgbouncer(postgresql_server: str, *, ignore_options: bool) -> Iterator[int]:
    from pgbouncer import available, running_pgbouncer

    why = available()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: under CI the PgBouncer tests must run", pytrace=False)
        pytest.skip(why)
    with running_pgbouncer(postgresql_server, ignore_options=ignore_options) as port:
        yield port


@pytest.fixture(scope="session")
def pgbouncer(postgresql_server: str) -> Iterator[int]:
    """The port of a PgBouncer in transaction mode in front of the test server.

    It refuses the startup parameter ``options``, as PgBouncer does by default.
    """
    yield from _pgbouncer(postgresql_server, ignore_options=False)


@pytest.fixture(scope="session")
def pgbouncer_ignoring(postgresql_server: str) -> Iterator[int]:
    """A PgBouncer told to drop the startup ``options`` (``ignore_startup_parameters``)."""
    yield from _pgbouncer(postgresql_server, ignore_options=True)


@pytest.fixture(params=["refusing", "unreachable"])
def database_address(request: pytest.FixtureRequest) -> str:
    """``host:port`` of a PostgreSQL that refuses the test's role, or of nothing at all."""
    if request.param == "unreachable":
        return "127.0.0.1:1"
    from urllib.parse import urlsplit

    server = urlsplit(request.getfixturevalue("postgresql_server"))
    return f"{server.hostname}:{server.port or 5432}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend a test runs on."""
    name: str = request.param
    return name


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of this test's own, on ``backend``."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'userplane.db'}"
    url: str = request.getfixturevalue("postgresql_url")
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url})


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with Registry(settings) as reg:
        reg.migrate()
        yield reg


@pytest.fixture
def client(registry: Registry) -> testing.TestClient:
    """A test client that authenticates as an administrator on every request."""
    return client_for(registry)


@pytest.fixture
def postgresql_cluster(postgresql_server: str) -> Iterator[Any]:
    """Control of the local PostgreSQL cluster (stop, start), for outage tests.

    Always started again afterwards, whatever the test did.
    """
    import shutil
    import subprocess
    import time

    host = urlsplit(postgresql_server).hostname
    clusters = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if host not in {"127.0.0.1", "localhost", None} or not clusters:
        _unavailable("the PostgreSQL under test is not a local cluster this test may restart")
    if not shutil.which("pg_ctlcluster") or os.geteuid() != 0:
        _unavailable("restarting PostgreSQL needs pg_ctlcluster and root")
    version = clusters[-1]

    def ctl(action: str, *extra: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, *extra],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def ready() -> bool:
        return (
            subprocess.run(
                ["pg_isready", "-q", "-h", host or "127.0.0.1"], check=False, timeout=10
            ).returncode
            == 0
        )

    class Cluster:
        def stop(self) -> None:
            ctl("stop", "-m", "fast")

        def start(self) -> None:
            ctl("start")
            for _ in range(100):
                if ready():
                    return
                time.sleep(0.1)
            raise AssertionError("PostgreSQL did not come back")

    cluster = Cluster()
    try:
        yield cluster
    finally:
        if not ready():
            cluster.start()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A Registry's ``userplane_startup`` lets the logging plugin configure logging
    process-wide (structlog and the root logger): undo it after every test."""
    import logging

    import structlog

    from userplane.plugins.logging import _DeclaredSecrets

    root = logging.getLogger()
    level = root.level
    # The secrets log lines mask are process-wide too: a test's made-up password
    # (its pieces) must not mask words in the tests after it.
    secrets = (_DeclaredSecrets.values, _DeclaredSecrets.pieces, _DeclaredSecrets.by_start)
    yield
    _DeclaredSecrets.values, _DeclaredSecrets.pieces, _DeclaredSecrets.by_start = secrets
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if getattr(h, "_userplane", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


# -- encryption keys: fresh for each test -------------------------------------------------


@pytest.fixture
def k1() -> NamedKey:
    """A fresh key-encryption key, ``kek-1``."""
    return new_key("kek-1")


@pytest.fixture
def k2() -> NamedKey:
    """A fresh key-encryption key, ``kek-2``."""
    return new_key("kek-2")


@pytest.fixture
def i1() -> NamedKey:
    """A fresh blind-index key, ``index-1``."""
    return new_key("index-1")


@pytest.fixture
def i2() -> NamedKey:
    """A fresh blind-index key, ``index-2``."""
    return new_key("index-2")
