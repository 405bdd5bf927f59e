"""The storage contract in encrypted mode (``SealedStorageContract``) on SQLite and PostgreSQL.

The same raw stores as ``tests/plugins/test_sqlite_storage.py`` and
``test_postgresql_storage.py``, sealed by the suite under fresh keys per test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from userplane.plugins.postgresql.store import PostgreSQLStorage
from userplane.plugins.sqlite import SQLiteStorage
from userplane.testing import SealedStorageContract


class TestSQLiteSealed(SealedStorageContract):
    @pytest.fixture
    def raw_storage(self, tmp_path: Path) -> Iterator[SQLiteStorage]:
        path = tmp_path / "sealed.db"
        store = SQLiteStorage(f"sqlite:///{path}", str(path))
        store.migrate()
        yield store
        store.close()

    @pytest.fixture
    def unreachable_storage(self, tmp_path: Path) -> Iterator[SQLiteStorage]:
        volume = tmp_path / "volume"
        store = SQLiteStorage(f"sqlite:///{volume}/gone.db", str(volume / "gone.db"))
        volume.rmdir()  # made by the constructor, then unmounted
        yield store
        store.close()

    @pytest.fixture
    def unmigrated_storage(self, tmp_path: Path) -> Iterator[SQLiteStorage]:
        path = tmp_path / "new.db"
        store = SQLiteStorage(f"sqlite:///{path}", str(path))
        yield store
        store.close()

    @pytest.fixture
    def refused_storage(self) -> Iterator[SQLiteStorage]:
        pytest.skip(
            "SQLite has no login to refuse: who may open the file is the file system's "
            "say, and a file that cannot be opened is the unreachable_storage case"
        )


class TestPostgreSQLSealed(SealedStorageContract):
    @pytest.fixture
    def raw_storage(self, postgresql_url: str) -> Iterator[PostgreSQLStorage]:
        store = PostgreSQLStorage(postgresql_url)
        yield store
        store.close()

    @pytest.fixture
    def unreachable_storage(self) -> Iterator[PostgreSQLStorage]:
        store = PostgreSQLStorage("postgresql://postgres@127.0.0.1:1/none", timeout=0.3)
        yield store
        store.close()

    @pytest.fixture
    def unmigrated_storage(
        self, create_postgresql_database: Callable[[], str]
    ) -> Iterator[PostgreSQLStorage]:
        store = PostgreSQLStorage(create_postgresql_database(), timeout=0.3)
        yield store
        store.close()

    @pytest.fixture
    def refused_storage(
        self, postgresql_server: str, postgresql_url: str
    ) -> Iterator[PostgreSQLStorage]:
        role = f"userplane_nologin_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgresql_server, autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        parts = urlsplit(postgresql_url)
        netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
        store = PostgreSQLStorage(parts._replace(netloc=netloc).geturl(), timeout=0.3)
        try:
            yield store
        finally:
            store.close()
            with psycopg.connect(postgresql_server, autocommit=True) as conn:
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')
