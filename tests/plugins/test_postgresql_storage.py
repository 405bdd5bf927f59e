"""The storage contract suite on the PostgreSQL plugin, plus what is PostgreSQL's own."""

from __future__ import annotations

import itertools
import multiprocessing
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from userplane import ConfigurationError, Settings
from userplane.emails import normalize_email
from userplane.errors import Conflict, Unavailable
from userplane.migrations import folder
from userplane.pagination import Position, Sort
from userplane.plugins.postgresql import userplane_open_storage
from userplane.plugins.postgresql.store import (
    PostgreSQLStorage,
    StorageFailure,
    yoyo_url,
)
from userplane.sql import USER_COLUMNS, list_users_sql
from userplane.testing import SealedStorageContract, StorageContract, insert, make_user
from userplane.users import UserFilter


def _list_sql(field: str, descending: bool, *flags: bool) -> str:
    after, is_active, email, q, include_deleted = flags
    return list_users_sql(
        PostgreSQLStorage.dialect,
        USER_COLUMNS,
        field,
        descending,
        after=after,
        is_active=is_active,
        email=email,
        q=q,
        include_deleted=include_deleted,
    )


class TestPostgreSQLContract(StorageContract):
    @pytest.fixture
    def storage(self, postgresql_url: str) -> Iterator[PostgreSQLStorage]:
        store = PostgreSQLStorage(postgresql_url)
        yield store
        store.close()

    # A short pool timeout: each failing call waits it out before answering Unavailable.

    @pytest.fixture
    def unreachable_storage(self) -> Iterator[PostgreSQLStorage]:
        store = PostgreSQLStorage("postgresql://postgres@127.0.0.1:1/none", timeout=0.3)
        yield store  # nothing listens on port 1
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
        # The local server trusts 127.0.0.1, so no password is ever wrong there:
        # a role that may not log in is what it refuses.
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


class TestPostgreSQLSealed(SealedStorageContract, TestPostgreSQLContract):
    """The contract in encrypted mode: the stores above, sealed by the suite under fresh keys."""

    @pytest.fixture
    def raw_storage(self, postgresql_url: str) -> Iterator[PostgreSQLStorage]:
        store = PostgreSQLStorage(postgresql_url)
        yield store
        store.close()


@pytest.fixture
def store(postgresql_url: str) -> Iterator[PostgreSQLStorage]:
    s = PostgreSQLStorage(postgresql_url)
    yield s
    s.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_answers_both_schemes(scheme: str) -> None:
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": f"{scheme}://u@127.0.0.1/db", "USERPLANE_DB_POOL_MAX_SIZE": "7"}
    )
    store = userplane_open_storage(settings=settings)
    assert isinstance(store, PostgreSQLStorage)
    assert store.name == "postgresql"
    assert store.embedded is False
    assert store._pool is None  # nothing is opened until first use (after gunicorn forks)


def test_leaves_other_schemes_alone() -> None:
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": "sqlite:///x.db"})
    assert userplane_open_storage(settings=settings) is None


def test_without_the_driver_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "userplane.plugins.postgresql.store", None)
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": "postgresql://u@h/db"})
    with pytest.raises(ConfigurationError, match=r"userplane\[postgresql\]"):
        userplane_open_storage(settings=settings)


def test_yoyo_gets_the_psycopg3_driver() -> None:
    assert yoyo_url("postgres://u:p@h:5/db?sslmode=require") == (
        "postgresql+psycopg://u:p@h:5/db?sslmode=require"
    )


def test_times_come_back_in_utc_whatever_the_server_zone(postgresql_url: str) -> None:
    with psycopg.connect(postgresql_url, autocommit=True) as conn:
        conn.execute("SELECT 1")
        name = conn.info.dbname
        conn.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Kolkata'")
    try:
        s = PostgreSQLStorage(postgresql_url)
        user = insert(s, make_user())
        got = s.get_user(user.id)
        assert got == user
        assert got is not None
        assert got.created_at.utcoffset() == timedelta(0)
        s.close()
    finally:
        with psycopg.connect(postgresql_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" RESET timezone')


def test_unreachable_server_is_unavailable_quickly() -> None:
    store = PostgreSQLStorage("postgresql://postgres@127.0.0.1:1/none", timeout=0.5)
    try:
        with pytest.raises(Unavailable):
            store.ping()
        with pytest.raises(Unavailable):
            store.get_user_by_email("a@b.org")
    finally:
        store.close()


def test_an_exhausted_pool_answers_unavailable(postgresql_url: str) -> None:
    store = PostgreSQLStorage(postgresql_url, min_size=1, max_size=1, timeout=0.3)
    try:
        with store.pool.connection(), pytest.raises(Unavailable, match="busy"):
            store.get_user_by_email("a@b.org")  # while the only connection is held
        store.ping()  # and it recovers as soon as the connection is back
    finally:
        store.close()


def test_past_max_waiting_requests_are_refused_at_once(postgresql_url: str) -> None:
    store = PostgreSQLStorage(postgresql_url, min_size=1, max_size=1, timeout=5, max_waiting=1)
    waiting = threading.Event()
    outcome: list[Any] = []

    def waiter() -> None:
        waiting.set()
        try:
            outcome.append(store.get_user_by_email("a@b.org"))
        except Unavailable as exc:
            outcome.append(exc)

    try:
        with store.pool.connection():
            thread = threading.Thread(target=waiter)
            thread.start()
            waiting.wait(5)
            # Wait until the pool has queued the first waiter.
            for _ in range(200):
                if store.pool.get_stats().get("requests_waiting", 0) >= 1:
                    break
                threading.Event().wait(0.01)
            with pytest.raises(Unavailable, match="busy"):
                store.get_user_by_email("b@b.org")
        thread.join(10)
        assert outcome == [None]  # the queued request was served once a connection came back
    finally:
        store.close()


def test_a_statement_past_statement_timeout_is_unavailable(postgresql_url: str) -> None:
    store = PostgreSQLStorage(postgresql_url, statement_timeout_ms=100)
    try:
        with pytest.raises(Unavailable, match="in time"), store._cursor() as cur:
            cur.execute("SELECT pg_sleep(2)")
        store.ping()  # the connection went back to the pool in a usable state
    finally:
        store.close()


def _child_reads(store: PostgreSQLStorage, user_id: Any, queue: Any) -> None:
    try:
        user = store.get_user(user_id)
        queue.put(("ok", None if user is None else str(user.id), id(store.pool)))
    except BaseException as exc:
        queue.put(("error", repr(exc), 0))


def test_a_forked_worker_opens_its_own_pool(store: PostgreSQLStorage) -> None:
    user = insert(store, make_user())
    parent_pool = store.pool
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(store, user.id, queue))
    child.start()
    status, found, _ = queue.get(timeout=30)
    child.join(30)
    assert (status, found) == ("ok", str(user.id))
    assert child.exitcode == 0
    # The parent's pool is untouched by the child and still serves.
    assert store.pool is parent_pool
    assert store.get_user(user.id) == user


def test_bulk_copy_inserts_all_or_nothing(store: PostgreSQLStorage) -> None:
    users = [make_user(f"bulk{i}@example.org") for i in range(50)]
    assert store.copy_users((u, normalize_email(u.email)) for u in users) == 50
    listed = store.list_users(UserFilter(q="bulk"), Sort(), None, 100)
    assert sorted(u.id for u in listed) == sorted(u.id for u in users)
    clash = [make_user("fresh@example.org"), make_user("BULK7@example.org")]
    with pytest.raises(Conflict):
        store.copy_users((u, normalize_email(u.email)) for u in clash)
    assert store.get_user_by_email("fresh@example.org") is None


def _plan(url: str, sql: str, params: dict[str, Any]) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(f"EXPLAIN {sql}", params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_deep_pages_and_email_lookups_use_indexes(store: PostgreSQLStorage) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    users = [
        make_user(f"n{i}@example.org", created_at=start + timedelta(seconds=i))
        for i in range(20_000)
    ]
    store.copy_users((u, normalize_email(u.email)) for u in users)
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("ANALYZE users")
    deep = users[15_000]
    plan = _plan(
        store.url,
        _list_sql("created_at", False, True, False, False, False, False),
        {"after_key": deep.created_at, "after_id": deep.id, "limit": 51},
    )
    assert "users_created_at_id_idx" in plan, plan
    assert "Sort" not in plan, plan
    plan = _plan(
        store.url, "SELECT id FROM users WHERE email_normalized = %(k)s", {"k": "n5@example.org"}
    )
    assert "users_email_normalized_key" in plan, plan
    for field, descending, index in [
        ("created_at", True, "users_created_at_id_idx"),
        ("email", False, "users_email_normalized_key"),
        ("full_name", True, "users_full_name_folded_id_idx"),
    ]:
        sql = _list_sql(field, descending, True, False, False, False, False)
        key = {"created_at": deep.created_at, "email": "n15000@example.org"}.get(field, "ann")
        plan = _plan(store.url, sql, {"after_key": key, "after_id": deep.id, "limit": 51})
        assert index in plan, (field, plan)
        assert "Sort" not in plan, (field, plan)
    # And the store's page after the cursor is the right one.
    page = store.list_users(UserFilter(), Sort(), Position(deep.created_at, deep.id), 3)
    assert page == users[15_001:15_004]


def test_concurrent_migrations_from_several_processes_apply_once(
    create_postgresql_database: Callable[[], str],
) -> None:
    url = create_postgresql_database()
    code = (
        "import sys; from userplane.plugins.postgresql.store import PostgreSQLStorage; "
        "print(PostgreSQLStorage(sys.argv[1]).migrate())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert sorted(out.strip() for out, _ in outputs) == sorted(
        [str(migration_ids("postgresql")), "[]", "[]", "[]"]
    )
    store = PostgreSQLStorage(url)
    assert [(m.id, m.applied) for m in store.migration_status()] == [
        (i, True) for i in migration_ids("postgresql")
    ]
    store.close()


def test_an_unmigrated_database_says_to_migrate(
    create_postgresql_database: Callable[[], str],
) -> None:
    store = PostgreSQLStorage(create_postgresql_database())
    try:
        with pytest.raises(Unavailable, match="userplane migrate"):
            store.ping()
    finally:
        store.close()


def test_hot_queries_are_prepared_on_first_use(postgresql_url: str) -> None:
    store = PostgreSQLStorage(postgresql_url, min_size=1, max_size=1)
    try:
        user = insert(store, make_user())
        store.get_user(user.id)
        store.list_users(UserFilter(), Sort(), None, 10)
        with store.pool.connection() as conn:
            rows = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        statements = " ".join(r[0] for r in rows)
        assert "INSERT INTO users" in statements
        assert "FROM users WHERE id = $1" in statements
        assert "ORDER BY created_at, id" in statements
    finally:
        store.close()


def test_a_connection_lent_before_preparing_went_off_prepares_no_more(postgresql_url: str) -> None:
    # One thread finds a statement missing (a pooler) and turns preparing off while
    # another holds a connection lent before: psycopg would still run that
    # connection's cached statements by name, on a server connection without them.
    store = PostgreSQLStorage(postgresql_url, min_size=1, max_size=1)
    try:
        user = insert(store, make_user())
        sql = "SELECT id FROM users WHERE id = %(id)s"
        with store._cursor() as cur:
            store._execute(cur, sql, {"id": user.id})  # prepared at once: no pooler seen yet
            store._unprepared()  # another thread, meanwhile
            # What a pooler's next server connection knows: none of this one's statements.
            for (name,) in cur.execute("SELECT name FROM pg_prepared_statements").fetchall():
                cur.execute(f'DEALLOCATE "{name}"')
            store._execute(cur, sql, {"id": user.id})
            assert cur.fetchone() == (user.id,)
            assert cur.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert store._prepare is None
    finally:
        store.close()


def _backend_pids(store: PostgreSQLStorage) -> set[int]:
    with store.pool.connection() as conn:
        return {conn.info.backend_pid}


def test_a_terminated_backend_costs_no_failed_request(postgresql_url: str) -> None:
    store = PostgreSQLStorage(postgresql_url, min_size=1, max_size=1)
    try:
        user = insert(store, make_user())
        [pid] = _backend_pids(store)
        with psycopg.connect(postgresql_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            # The FATAL notice and the close reach the idle socket asynchronously.
            admin.execute("SELECT pg_sleep(0.2)")
        assert store.get_user(user.id) == user  # the check saw it, and a new one served
        assert _backend_pids(store) != {pid}
    finally:
        store.close()


def test_a_checkout_costs_no_round_trip(postgresql_url: str, tmp_path: Path) -> None:
    # libpq's protocol trace of the pooled connection: checkouts must add nothing to it.
    store = PostgreSQLStorage(postgresql_url, min_size=1, max_size=1)
    trace = tmp_path / "libpq.trace"
    try:
        store.ping()
        with trace.open("w") as out:
            with store.pool.connection() as conn:
                conn.pgconn.trace(out.fileno())
            for _ in range(5):
                with store.pool.connection():
                    pass
            checkouts = trace.read_text()
            store.ping()  # a statement shows in the same trace: the trace works
            with store.pool.connection() as conn:
                conn.pgconn.untrace()
        assert checkouts == ""
        assert "SELECT 1 FROM users" in trace.read_text()
    finally:
        store.close()


def test_no_driver_error_type_escapes(store: PostgreSQLStorage) -> None:
    with pytest.raises(StorageFailure) as info, store._cursor() as cur:
        cur.execute("SELECT 1 / 0")
    assert not isinstance(info.value, psycopg.Error)
    assert info.value.sqlstate == "22012"
    store.ping()


def test_a_server_limit_exceeded_is_a_failure_not_a_retryable_outage(
    store: PostgreSQLStorage,
) -> None:
    """SQLSTATE class 54 fails the same on every retry: never a 503 with Retry-After."""
    with pytest.raises(StorageFailure) as info:
        store.fetch_one("SELECT array_fill(1, ARRAY[200000000])", {})
    assert not isinstance(info.value, Unavailable)
    assert info.value.sqlstate == "54000"
    store.ping()


def migration_ids(dialect: str) -> list[str]:
    """The ids of ``dialect``'s migrations, in order, from the files themselves."""
    return sorted(p.stem for p in folder(dialect).glob("*.sql") if not p.stem.endswith(".rollback"))


# -- a write's transaction in pipeline mode ---------------------------------------------


def round_trips(trace: str) -> int:
    """How often the client waited for the server: each run of frontend messages answered."""
    directions = [line.split("\t")[1] for line in trace.splitlines() if "\t" in line]
    return sum(1 for a, b in itertools.pairwise(directions) if a == "F" and b == "B")


def test_a_write_and_a_record_cost_two_round_trips(postgresql_url: str, tmp_path: Path) -> None:
    """BEGIN goes with the insert; a statement nobody waits on goes with the COMMIT."""
    store = PostgreSQLStorage(postgresql_url, min_size=1, max_size=1)
    trace = tmp_path / "libpq.trace"
    user = make_user("piped@example.org")
    try:
        store.migrate()
        store.execute("CREATE TABLE IF NOT EXISTS piped (id uuid)", {})
        with trace.open("w") as out:
            with store.pool.connection() as conn:
                conn.pgconn.trace(out.fileno())
            with store.transaction():
                store.insert_user(user, normalize_email(user.email))
                store.execute_many("INSERT INTO piped VALUES (%(id)s)", [{"id": user.id}])
            with store.pool.connection() as conn:
                conn.pgconn.untrace()
        assert round_trips(trace.read_text()) == 2
        assert store.fetch_one("SELECT count(*) FROM piped", {}) == (1,)
        assert store.get_user(user.id) == user
    finally:
        store.close()


def test_a_queued_statement_that_fails_rolls_the_write_back(store: PostgreSQLStorage) -> None:
    """Its error comes with the COMMIT's answer: raised, mapped, and nothing is kept."""
    user = make_user("queued-failure@example.org")

    def write() -> None:
        with store.transaction():
            store.insert_user(user, normalize_email(user.email))
            store.execute_many("SELECT 1 / %(zero)s", [{"zero": 0}])

    with pytest.raises(StorageFailure, match="division by zero"):
        write()
    assert store.get_user(user.id, include_deleted=True) is None
    again = make_user("queued-failure@example.org")  # the connection is fit for use again
    with store.transaction():
        store.insert_user(again, normalize_email(again.email))
    assert store.get_user(again.id) == again


def test_counts_and_copy_inside_a_pipelined_transaction(store: PostgreSQLStorage) -> None:
    """execute still answers its row count; COPY leaves the pipeline; all commit as one."""
    first = make_user("first-in-tx@example.org")
    batch = [make_user(f"copied-in-tx-{i}@example.org") for i in range(5)]
    with store.transaction():
        store.insert_user(first, normalize_email(first.email))
        changed = store.execute(
            "UPDATE users SET full_name = 'Renamed' WHERE id = %(id)s", {"id": first.id}
        )
        assert changed == 1
        store.copy_users((u, normalize_email(u.email)) for u in batch)
        assert store.execute("UPDATE users SET full_name = 'X' WHERE false", {}) == 0
    assert all(store.get_user(u.id) is not None for u in [first, *batch])
    doomed = [make_user(f"doomed-{i}@example.org") for i in range(3)]

    def change_mind() -> None:
        with store.transaction():
            store.get_user(first.id)
            store.copy_users((u, normalize_email(u.email)) for u in doomed)
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        change_mind()
    assert all(store.get_user(u.id) is None for u in doomed)
