"""The storage contract suite on MariaDB, plus what is MariaDB's own."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import attrs
import pymysql
import pytest
from conftest import connect
from yoyo import get_backend, read_migrations

from userplane.plugin import (
    ConfigurationError,
    Conflict,
    KeyRecord,
    Settings,
    StoredResponse,
    Unavailable,
)
from userplane.sql import SQLStorage
from userplane.testing import StorageContract, insert, make_user
from userplane_mariadb import userplane_open_storage
from userplane_mariadb.store import MariaDBStorage, connect_args


class TestMariaDBContract(StorageContract):
    @pytest.fixture
    def storage(self, mariadb_url: str) -> Iterator[MariaDBStorage]:
        store = MariaDBStorage(mariadb_url)
        yield store
        store.close()

    @pytest.fixture
    def unreachable_storage(self) -> Iterator[MariaDBStorage]:
        store = MariaDBStorage("mariadb://userplane@127.0.0.1:1/none", connect_timeout=1)
        yield store  # nothing listens on port 1
        store.close()

    @pytest.fixture
    def unmigrated_storage(
        self, create_mariadb_database: Callable[[], str]
    ) -> Iterator[MariaDBStorage]:
        store = MariaDBStorage(create_mariadb_database())
        yield store
        store.close()

    @pytest.fixture
    def refused_storage(self, mariadb_url: str) -> Iterator[MariaDBStorage]:
        parts = urlsplit(mariadb_url)
        netloc = f"{parts.username}:not-the-password@{parts.hostname}:{parts.port or 3306}"
        store = MariaDBStorage(parts._replace(netloc=netloc).geturl())
        yield store
        store.close()


@pytest.fixture
def store(mariadb_url: str) -> Iterator[MariaDBStorage]:
    s = MariaDBStorage(mariadb_url, statement_timeout=1)
    yield s
    s.close()


@pytest.mark.parametrize("scheme", ["mariadb", "mysql"])
def test_answers_both_schemes_without_connecting(scheme: str) -> None:
    url = f"{scheme}://u:p@127.0.0.1:1/db"  # nothing listens there: no connection is tried
    store = userplane_open_storage(Settings.from_mapping({"USERPLANE_DATABASE_URL": url}))
    assert isinstance(store, MariaDBStorage)
    assert store.migration_url() == "mysql://u:p@127.0.0.1:1/db"
    store.close()


def test_leaves_other_schemes_alone() -> None:
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": "postgresql://u@h/db"})
    assert userplane_open_storage(settings) is None


def test_url_to_connection_arguments() -> None:
    assert connect_args("mariadb://ann:p%40ss%3Aword@db.internal:3307/user%20plane") == {
        "host": "db.internal",
        "port": 3307,
        "user": "ann",
        "password": "p@ss:word",
        "database": "user plane",
        "unix_socket": None,
    }
    local = connect_args("mariadb://ann@localhost/u?unix_socket=/run/mysqld/mysqld.sock")
    assert local["unix_socket"] == "/run/mysqld/mysqld.sock"
    assert (local["port"], local["password"]) == (3306, "")


@pytest.mark.parametrize("url", ["mariadb://u@h", "mariadb://u@h/"])
def test_a_url_without_a_database_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_DATABASE_URL"):
        MariaDBStorage(url)


def test_text_columns_compare_without_padding(mariadb_url: str) -> None:
    # The reason for utf8mb4_nopad_bin: in utf8mb4_bin, 'a' = 'a '.
    name = urlsplit(mariadb_url).path[1:]
    with connect(mariadb_url) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT collation_name FROM information_schema.columns"
            " WHERE table_schema = %s"
            " AND table_name IN ('users', 'idempotency_keys', 'encryption_keys')"
            " AND collation_name IS NOT NULL",
            [name],
        )
        assert cursor.fetchall() == (("utf8mb4_nopad_bin",),)


def test_a_statement_past_the_timeout_is_unavailable(store: MariaDBStorage) -> None:
    with pytest.raises(Unavailable, match="busy"):
        store.fetch_one("SELECT SLEEP(3)", {})
    store.ping()  # and the connection still serves


def test_a_row_locked_past_the_timeout_is_unavailable(store: MariaDBStorage) -> None:
    user = insert(store, make_user())
    name = urlsplit(store.url).path[1:]
    with connect(store.url, database=name) as other, other.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("UPDATE users SET version = version + 1 WHERE id = %s", [str(user.id)])
        with pytest.raises(Unavailable, match="busy"):
            store.update_user(user.id, {"full_name": "x"}, None, None, user.created_at)
        cursor.execute("ROLLBACK")
    assert store.get_user(user.id) == user


def test_a_killed_connection_costs_one_request_then_reconnects(store: MariaDBStorage) -> None:
    user = insert(store, make_user())
    row = store.fetch_one("SELECT CONNECTION_ID()", {})
    assert row is not None
    with connect(store.url) as admin, admin.cursor() as cursor:
        cursor.execute(f"KILL {int(row[0])}")
    with pytest.raises(Unavailable):
        store.get_user(user.id)
    assert store.get_user(user.id) == user


def test_no_driver_error_type_escapes(store: MariaDBStorage) -> None:
    with pytest.raises(RuntimeError, match="MariaDB error 1064") as info:
        store.fetch_one("SELEKT 1", {})
    assert not isinstance(info.value, pymysql.Error)
    store.ping()


def test_each_thread_has_its_own_connection(store: MariaDBStorage) -> None:
    ids: list[Any] = []

    def connection_id() -> None:
        row = store.fetch_one("SELECT CONNECTION_ID()", {})
        assert row is not None
        ids.append(row[0])

    threads = [threading.Thread(target=connection_id) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    connection_id()
    connection_id()  # the same thread again: the same connection
    assert len(set(ids)) == 4
    assert ids[-1] == ids[-2]


def _child_reads(store: MariaDBStorage, user_id: Any, queue: Any) -> None:
    try:
        user = store.get_user(user_id)
        row = store.fetch_one("SELECT CONNECTION_ID()", {})
        queue.put(("ok", None if user is None else str(user.id), row and row[0]))
    except BaseException as exc:
        queue.put(("error", repr(exc), None))


def test_a_forked_worker_opens_its_own_connection(store: MariaDBStorage) -> None:
    user = insert(store, make_user())
    row = store.fetch_one("SELECT CONNECTION_ID()", {})
    assert row is not None
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(store, user.id, queue))
    child.start()
    status, found, child_connection = queue.get(timeout=30)
    child.join(30)
    assert (status, found) == ("ok", str(user.id))
    assert child_connection != row[0]
    # The parent's connection was neither used nor closed by the child.
    assert store.fetch_one("SELECT CONNECTION_ID()", {}) == row
    assert store.get_user(user.id) == user


# -- schema 4: encryption ------------------------------------------------------------

_T = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
_HOUR = timedelta(hours=1)


def test_reseal_counts_a_matched_row_even_if_it_changes_nothing(store: MariaDBStorage) -> None:
    # execute() counts rows changed (no CLIENT_FOUND_ROWS): the store tells 0 apart.
    user = insert(store, make_user())
    unchanged = (user.id, user.version, {"email": user.email}, None)
    assert not SQLStorage.reseal_user(store, *unchanged)  # the kit's alone: "gone or stale"
    assert store.reseal_user(*unchanged)
    assert store.reseal_user(user.id, user.version, {"email": "upe1:x"}, "f" * 64)
    assert not store.reseal_user(user.id, user.version + 1, {"email": "upe1:y"}, None)
    assert not store.reseal_user(uuid.uuid4(), 1, {"email": user.email}, None)
    resealed = store.get_user_by_email("f" * 64)
    # What a client sees of the row does not move: version and updated_at stay.
    assert resealed == attrs.evolve(user, email="upe1:x")
    deleted = store.delete_user(user.id, None, _T)
    fields = {"email": "upe1:z", "full_name": None}
    assert store.reseal_user(user.id, deleted.version, fields, None)
    assert store.get_user(user.id, True) == attrs.evolve(deleted, email="upe1:z", full_name=None)


def test_reseal_of_the_second_index_counts_a_matched_row_too(store: MariaDBStorage) -> None:
    # A re-index sets email_index_next only; run again (a resumed walk), it changes nothing.
    user = store.insert_user(make_user(), "a" * 64)
    assert store.reseal_user(user.id, user.version, {}, None, "b" * 64)
    assert not SQLStorage.reseal_user(store, user.id, user.version, {}, None, "b" * 64)
    assert store.reseal_user(user.id, user.version, {}, None, "b" * 64)
    assert not store.reseal_user(user.id, user.version + 1, {}, None, "c" * 64)
    [entry] = store.index_entries(None, 10)
    assert (entry.user, entry.email_key, entry.next_key) == (user, "a" * 64, "b" * 64)


def test_a_taken_value_of_either_index_column_is_a_taken_email(store: MariaDBStorage) -> None:
    ann = store.insert_user(make_user("ann@example.org"), "a-ann", next_key="b-ann")
    # Told by the unique key's name in MariaDB's message, for both columns.
    with pytest.raises(Conflict, match="email"):
        store.insert_user(make_user("bob@example.org"), "a-bob", next_key="b-ann")
    with pytest.raises(Conflict, match="email"):
        store.insert_user(make_user("bob@example.org"), "a-ann")
    # Compared without padding, like email_normalized: a trailing space is another value.
    bob = store.insert_user(make_user("bob@example.org"), "a-bob", next_key="b-ann ")
    with pytest.raises(Conflict, match="email"):
        store.reseal_user(bob.id, bob.version, {}, None, "b-ann")
    assert store.get_user_by_email("x", next_key="b-ann") == ann
    assert store.get_user_by_email("x", next_key="b-ann ") == bob


def test_purge_takes_the_responses_about_the_purged_users(store: MariaDBStorage) -> None:
    old, recent = insert(store, make_user("old@example.org")), insert(store, make_user())
    store.delete_user(old.id, None, _T)
    store.delete_user(recent.id, None, _T + 2 * _HOUR)
    for key, about in (("old", old.id), ("recent", recent.id), ("nobody", None)):
        assert store.claim_idempotency_key(key, "fp", _T, _T + _HOUR, _T - _HOUR)
        store.complete_idempotency_key(key, StoredResponse(201, (), b"{}", about))
    assert store.count_users() == 2
    assert store.purge_users(_T + _HOUR) == 1
    assert store.count_users() == 1
    assert store.get_idempotency_record("old", _T) is None
    kept = store.get_idempotency_record("recent", _T)
    assert kept is not None
    assert kept.response is not None
    assert kept.response.user_id == recent.id
    assert store.get_idempotency_record("nobody", _T) is not None


def test_key_records_are_added_once_and_retired_once(store: MariaDBStorage) -> None:
    kek = KeyRecord("k2026", "kek", "a" * 64, _T)
    assert store.add_key_record(kek)
    assert not store.add_key_record(attrs.evolve(kek, fingerprint="b" * 64))
    index = KeyRecord("i1", "index", "c" * 64, _T, home="a", ready_at=_T)
    assert store.add_key_record(index)
    assert store.add_key_record(KeyRecord("i2", "index", "d" * 64, _T, home="b"))
    store.retire_key_record("k2026", _T + _HOUR)
    store.retire_key_record("k2026", _T + 2 * _HOUR)  # retired already: kept as it was
    store.mark_key_ready("i2", _T + _HOUR)
    store.mark_key_ready("i2", _T + 2 * _HOUR)  # ready already: kept as it was
    store.mark_key_ready("i1", _T + _HOUR)
    # Times to the microsecond (DATETIME(6)), back as aware UTC.
    assert store.key_records() == [
        index,
        KeyRecord("i2", "index", "d" * 64, _T, home="b", ready_at=_T + _HOUR),
        attrs.evolve(kek, retired_at=_T + _HOUR),
    ]


@pytest.mark.parametrize(
    "record",
    [
        KeyRecord("x", "other", "a" * 64, _T),
        KeyRecord("x", "kek", "a" * 65, _T),
        KeyRecord("x", "index", "a" * 64, _T, home="c"),
    ],
    ids=["purpose", "fingerprint", "home"],
)
def test_a_bad_key_record_is_refused_not_cut(store: MariaDBStorage, record: KeyRecord) -> None:
    connection = store.fetch_one("SELECT CONNECTION_ID()", {})
    with pytest.raises(RuntimeError, match="MariaDB error"):
        store.add_key_record(record)
    assert store.key_records() == []
    # A bad value, not a lost server: the connection was kept.
    assert store.fetch_one("SELECT CONNECTION_ID()", {}) == connection


def _run_script(cursor: Any, script: str) -> None:
    for statement in script.split(";\n"):
        if statement.strip():
            cursor.execute(statement)


def test_rolling_back_0004_refuses_to_cut_a_sealed_value(
    create_mariadb_database: Callable[[], str],
) -> None:
    store = MariaDBStorage(create_mariadb_database())
    store.migrate()
    sealed = store.insert_user(make_user("upe1:" + "e" * 2043), "f" * 64, name_key="")
    rollback = (store.core_migrations() / "0004_encryption.rollback.sql").read_text()
    name = urlsplit(store.url).path[1:]
    # Even in a session that is not strict: the narrowing is, and it runs first.
    with (
        connect(store.url, database=name, sql_mode="") as conn,
        conn.cursor() as cursor,
        pytest.raises(pymysql.Error, match="Data truncated"),
    ):
        _run_script(cursor, rollback)
    assert store.get_user(sealed.id) == sealed
    assert store.key_records() == []  # encryption_keys is still there

    # Without sealed values it rolls back through yoyo, and migrates forward again.
    store.execute("DELETE FROM users", {})
    backend = get_backend(store.migration_url())
    try:
        with backend.lock():
            latest = read_migrations(str(store.core_migrations()))
            # 0004 and every later migration, newest first (they depend on it).
            newest_first = backend.to_rollback(latest)
            ids = [m.id for m in newest_first]
            backend.rollback_migrations(newest_first[: ids.index("0004_encryption") + 1])
    finally:
        backend.connection.close()
    undone = sorted(ids[: ids.index("0004_encryption") + 1])
    assert [m.id for m in store.migration_status() if not m.applied] == undone
    columns = "SELECT column_name FROM information_schema.columns WHERE table_schema = %(db)s"
    names = {row[0] for row in store.fetch_all(columns + " AND table_name = 'users'", {"db": name})}
    assert "email_index_next" not in names
    assert store.migrate() == undone
    names = {row[0] for row in store.fetch_all(columns + " AND table_name = 'users'", {"db": name})}
    assert "email_index_next" in names
    store.close()
