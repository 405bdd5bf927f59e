"""The storage contract suite on the SQLite plugin, plus what is SQLite's own."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from userplane import ConfigurationError, Registry, Settings
from userplane.errors import Unavailable
from userplane.migrations import folder
from userplane.pagination import Sort
from userplane.plugins.sqlite import SQLiteStorage, sqlite_path, userplane_open_storage
from userplane.testing import SealedStorageContract, StorageContract, insert, make_user
from userplane.users import UserFilter


class TestSQLiteContract(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Iterator[SQLiteStorage]:
        path = tmp_path / "contract.db"
        store = SQLiteStorage(f"sqlite:///{path}", str(path))
        store.migrate()
        yield store
        store.close()

    @pytest.fixture
    def unreachable_storage(self, tmp_path: Path) -> Iterator[SQLiteStorage]:
        # A file has no server to be down: it is unreachable when it cannot be
        # opened where it is configured, as when the volume holding it is gone.
        volume = tmp_path / "volume"
        store = SQLiteStorage(f"sqlite:///{volume}/gone.db", str(volume / "gone.db"))
        store.migrate()  # makes the folder and the file
        store.close()
        shutil.rmtree(volume)  # then the volume is unmounted
        yield store
        store.close()

    @pytest.fixture
    def unmigrated_storage(self, tmp_path: Path) -> Iterator[SQLiteStorage]:
        path = tmp_path / "new.db"
        path.touch()  # an empty file is an empty database (a missing one is not created)
        store = SQLiteStorage(f"sqlite:///{path}", str(path))
        yield store
        store.close()

    @pytest.fixture
    def refused_storage(self) -> Iterator[SQLiteStorage]:
        pytest.skip(
            "SQLite has no login to refuse: who may open the file is the file system's "
            "say, and a file that cannot be opened is the unreachable_storage case"
        )


class TestSQLiteSealed(SealedStorageContract, TestSQLiteContract):
    """The contract in encrypted mode: the stores above, sealed by the suite under fresh keys."""

    @pytest.fixture
    def raw_storage(self, tmp_path: Path) -> Iterator[SQLiteStorage]:
        path = tmp_path / "sealed.db"
        store = SQLiteStorage(f"sqlite:///{path}", str(path))
        store.migrate()
        yield store
        store.close()


def test_answers_only_sqlite_urls(tmp_path: Path) -> None:
    other = Settings.from_mapping({"USERPLANE_DATABASE_URL": "postgresql://localhost/x"})
    assert userplane_open_storage(settings=other) is None
    mine = Settings.from_mapping({"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/a.db"})
    store = userplane_open_storage(settings=mine)
    assert isinstance(store, SQLiteStorage)
    assert store.path == f"{tmp_path}/a.db"


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///userplane.db", "userplane.db"), ("sqlite:////var/db/u.db", "/var/db/u.db")],
)
def test_url_to_path(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize("url", ["sqlite://host/x.db", "sqlite:///:memory:", "sqlite:///"])
def test_unusable_urls_are_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_DATABASE_URL"):
        sqlite_path(url)


def test_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    store = SQLiteStorage(f"sqlite:///{tmp_path}/new.db", str(tmp_path / "new.db"))
    with pytest.raises(Unavailable, match="userplane migrate"):
        store.ping()
    with pytest.raises(Unavailable, match="userplane migrate"):
        store.get_user_by_email("a@b.org")
    store.close()


def test_uses_wal_so_readers_do_not_block_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    store = SQLiteStorage(f"sqlite:///{path}", str(path))
    store.migrate()
    insert(store, make_user())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_migrate_leaves_the_file_in_wal_before_any_connection_is_used(tmp_path: Path) -> None:
    # Were WAL left to the first connections, writers racing at start-up could
    # fail on the mode switch's exclusive lock (seen: 2 in 600 runs of 8 threads).
    path = tmp_path / "fresh.db"
    store = SQLiteStorage(f"sqlite:///{path}", str(path))
    store.migrate()
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_write_waits_for_a_held_lock_then_reports_busy(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    store = SQLiteStorage(f"sqlite:///{path}", str(path), busy_timeout_ms=200)
    store.migrate()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match="busy"):
            insert(store, make_user())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    insert(store, make_user())
    store.close()


def test_concurrent_migrations_from_several_processes_apply_once(tmp_path: Path) -> None:
    # Several instances starting at once each run `migrate`; yoyo's lock row
    # must let exactly one apply the schema.
    path = tmp_path / "race.db"
    code = (
        "import sys; from userplane.plugins.sqlite import SQLiteStorage; "
        "print(SQLiteStorage(sys.argv[1], sys.argv[2]).migrate())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"sqlite:///{path}", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    printed = sorted(out.strip() for out, _ in outputs)
    assert printed == sorted([str(migration_ids("sqlite")), "[]", "[]", "[]"])


def test_writers_in_several_processes_all_succeed(tmp_path: Path) -> None:
    # gunicorn runs several workers on one file: WAL plus the busy timeout must
    # queue their writes, not fail them.
    path = tmp_path / "multi.db"
    store = SQLiteStorage(f"sqlite:///{path}", str(path))
    store.migrate()
    code = (
        "import sys\n"
        "from userplane.plugins.sqlite import SQLiteStorage\n"
        "from userplane.testing import insert, make_user\n"
        "store = SQLiteStorage(sys.argv[1], sys.argv[2])\n"
        "for i in range(40):\n"
        "    insert(store, make_user(f'p{sys.argv[3]}-{i}@example.org'))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"sqlite:///{path}", str(path), str(n)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert len(store.list_users(UserFilter(), Sort(), None, 500)) == 160
    store.close()


def migration_ids(dialect: str) -> list[str]:
    """The ids of ``dialect``'s migrations, in order, from the files themselves."""
    return sorted(p.stem for p in folder(dialect).glob("*.sql") if not p.stem.endswith(".rollback"))


def test_a_database_path_under_a_file_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    url = f"sqlite:///{tmp_path / 'a-file' / 'u.db'}"
    # Opening touches nothing; migrate, the one command that makes the file, says why not.
    with Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": url})) as registry:
        with pytest.raises(ConfigurationError, match="USERPLANE_DATABASE_URL"):
            registry.migrate()
        with pytest.raises(Unavailable, match=f"no database at {tmp_path / 'a-file' / 'u.db'}"):
            registry.storage.ping()
