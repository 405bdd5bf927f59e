"""PostgreSQL storage: psycopg 3 with one connection pool per process."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import select
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests

from userplane.plugin import (
    Conflict,
    MigrationState,
    PluginMigrations,
    PoolStats,
    Unavailable,
    User,
    UserRow,
    mask_text,
    replica_read,
)
from userplane.plugins.postgresql.copying import PostgreSQLCopying
from userplane.plugins.postgresql.replicas import PostgreSQLReplicas, parse_lsn
from userplane.sql import NAMED_QUERIES, Dialect, SQLStorage, insert_params, load_queries

#: The bulk path writes the columns ``insert_user`` takes, in its documented order.
_COPY_COLUMNS = next(q.params for q in NAMED_QUERIES if q.name == "insert_user")


_log = logging.getLogger("userplane.postgresql")

#: A statement a replica may serve: a plain SELECT, after any leading comments (one that
#: locks rows is the primary's; one that writes after all is refused by the replica, and
#: then runs on the primary).
_REPLICA_READ = re.compile(
    r"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*SELECT\b(?!.*\bFOR\s+(?:UPDATE|SHARE|NO\s+KEY|KEY))",
    re.I | re.S,
)

#: What an HTTP client is told when the cause names the server (the log has it).
_UNREACHABLE = "the database cannot be reached; retry shortly"


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """The one place where driver and pool errors become domain errors."""
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        # Either email index: the second decides while a re-index runs.
        if exc.diag.constraint_name in ("users_email_normalized_key", "users_email_index_next_key"):
            raise Conflict("a user with that email already exists") from None
        # A plugin's table: the plugin words its own message.
        raise Conflict(f"that record already exists ({exc.diag.constraint_name})") from None
    except pg_errors.UndefinedTable:
        raise Unavailable("the database is not migrated: run `userplane migrate`") from None
    except pg_errors.QueryCanceled:
        raise Unavailable("the database did not answer in time; retry shortly") from None
    except (PoolTimeout, TooManyRequests):
        raise Unavailable("the database is busy; retry shortly") from None
    except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
        raise Unavailable("the database could not complete the write; retry it") from None
    except pg_errors.ProgramLimitExceeded as exc:
        # A value past one of the server's limits (an index entry, an array) fails
        # the same way however often it is retried: a bug to fix, never a 503
        # whose Retry-After invites a client to try again for ever.
        raise StorageFailure(exc) from None
    except psycopg.OperationalError:
        raise Unavailable("the database cannot be reached; retry shortly") from None
    except psycopg.Error as exc:
        raise StorageFailure(exc) from None


#: libpq's "connection to server at "h" (addr), port p failed: why", or on a socket.
_SERVER_FAILED = re.compile(
    r'connection to server (?:at "(?P<host>[^"]*)"(?: \([^)]*\))?, port (?P<port>\d+)'
    r'|on socket "(?P<socket>[^"]*)") failed: (?P<reason>.*)'
)


def connection_failure(exc: psycopg.Error, url: str) -> str:
    """Why a connection to ``url`` failed, in one masked line an operator can act on.

    ``cannot connect to PostgreSQL at 127.0.0.1:1: connection refused``, or
    ``…: database "x" does not exist``: libpq's first line (the address
    tried and its reason, without the hints that follow), the password of
    ``url`` masked wherever it shows.
    """
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    first = first.removeprefix("connection failed: ")
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        params = {}
    where = ""
    found = _SERVER_FAILED.fullmatch(first)
    if found is not None:
        host, port, socket = found.group("host", "port", "socket")
        where = socket or f"{host}:{port}"
        first = found.group("reason")
    elif params.get("host") and "," not in str(params["host"]):
        where = f"{params['host']}:{params.get('port') or 5432}"
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", first).strip() or type(exc).__name__
    if reason[:1].isupper() and reason[1:2].islower():  # "Connection refused"
        reason = reason[0].lower() + reason[1:]
    at = f" at {where}" if where else ""
    password = params.get("password")
    return mask_text(
        f"cannot connect to PostgreSQL{at}: {reason}", [str(password)] if password else []
    )


class StorageFailure(RuntimeError):
    """A database error that is a bug, not a condition (a 500): no driver type escapes."""

    def __init__(self, exc: psycopg.Error) -> None:
        super().__init__(f"PostgreSQL error {exc.sqlstate or '(no SQLSTATE)'}: {exc}")
        self.sqlstate = exc.sqlstate


def yoyo_url(url: str) -> str:
    """The same database for yoyo, which names the psycopg 3 driver in the scheme.

    yoyo reads one host and port from the address; a multi-host URL (for
    failover, ``h1:5432,h2:5432``) goes as libpq's query parameters instead,
    which yoyo hands to ``psycopg.connect`` as they are.
    """
    _, sep, rest = url.partition("://")
    if not sep:
        return url
    if "," in urlsplit(url).netloc:
        params = psycopg.conninfo.conninfo_to_dict(url)
        dbname = str(params.pop("dbname", "") or "")
        query = urlencode({k: str(v) for k, v in params.items()}, quote_via=quote)
        # As it is: yoyo takes the path's database name without decoding it.
        return f"postgresql+psycopg:///{dbname}?{query}"
    return f"postgresql+psycopg://{rest}"


def _check(conn: psycopg.Connection[Any]) -> None:
    """The pool's check on checkout: is the server still at the other end? No round trip.

    An idle connection in autocommit expects nothing from the server, so
    anything readable on its socket means the server has spoken unasked: a
    restart or a terminated backend sends its FATAL notice and closes the
    socket. A zero-timeout ``poll`` sees that for a system call's cost,
    where psycopg_pool's own check (an empty statement) costs a round trip
    on every checkout: measured, the round trip took a third of the
    requests per second of a read. The pool discards a connection whose
    check raises and hands out another, so a server that was restarted
    still costs no failed request once it is back.
    """
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        # Closed here: the pool puts a connection that failed its check back
        # unless it is closed, and would hand the dead one out again.
        conn.close()
        raise psycopg.OperationalError("the server closed or spoke on an idle connection")


class PostgreSQLStorage(PostgreSQLCopying, SQLStorage):
    """The production storage.

    One pool per process, created lazily so that it is opened in each gunicorn
    worker after the fork, never shared across it. Connections are checked
    before use, so a restarted server costs no failed request once it is back;
    a bounded wait queue and a short acquisition timeout turn overload into a
    fast ``Unavailable`` rather than a pile-up.
    """

    name = "postgresql"
    system = "postgresql"
    embedded = False
    queries = load_queries(__package__ or "userplane.plugins.postgresql")
    dialect = Dialect(
        name="postgresql", param="%({name})s", contains="strpos({haystack}, {needle}) > 0"
    )

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        timeout: float = 5.0,
        max_waiting: int = 64,
        statement_timeout_ms: int = 5000,
        prepared_statements: bool | None = None,
        replica_urls: Sequence[str] = (),
        replica_max_lag_ms: int = 1000,
    ) -> None:
        self.url = url
        self._pool_args = {
            "min_size": min_size,
            "max_size": max_size,
            "timeout": timeout,
            "max_waiting": max_waiting,
        }
        self._statement_timeout_ms = statement_timeout_ms
        #: ``None``: on, unless a pooler shows itself (``_detect_pooler``, ``_unprepared``).
        self._prepared_setting = prepared_statements
        #: What ``execute`` is given: ``True`` prepares every statement at once, ``None``
        #: never (and connections are made with ``prepare_threshold=None``).
        self._prepare: bool | None = None if prepared_statements is False else True
        #: Whether session settings can go as the startup packet's ``options``; a
        #: pooler (PgBouncer) refuses or drops them, and they are then ``SET`` instead.
        self._startup_options = True
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pid = 0
        #: The process that has connected at least once (an outage after that is the pool's).
        self._connected_pid = 0
        #: When the last first attempt failed, and why: shared with the threads that waited.
        self._first_failure: tuple[float, str] | None = None
        self._lock = threading.Lock()
        #: The connection of this thread's open ``transaction()``, if any.
        self._tx = threading.local()
        #: ``ReadReplicas``: where reads in ``userplane.replicas.replica_reads()`` may go.
        self.read_replicas: PostgreSQLReplicas | None = None
        if replica_urls:
            self.read_replicas = PostgreSQLReplicas(
                replica_urls,
                primary_position=self._primary_position,
                pool_args={
                    **self._pool_args,
                    "min_size": min(1, max_size),
                    # A replica slow to lend a connection is skipped for the primary.
                    "timeout": min(timeout, 1.0),
                },
                connection_args=self._connection_args,
                configure=self._configure,
                check=_check,
                max_lag_s=replica_max_lag_ms / 1000,
            )

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """This process's pool, opened on first use (connections fill in the background)."""
        pool, pid = self._pool, os.getpid()
        if pool is not None and self._pid == pid:
            return pool
        asked = time.monotonic()
        with self._lock:
            if self._pool is None or self._pid != pid:
                if self._connected_pid != pid:
                    self._connect_first(asked)
                # A pool inherited through fork is abandoned, not closed: its
                # sockets belong to the parent.
                self._pool = ConnectionPool(
                    self.url,  # libpq takes postgresql:// and postgres:// alike
                    open=False,
                    check=_check,
                    configure=self._configure,
                    kwargs=self._connection_args(),
                    name="userplane",
                    # psycopg_pool retries a failed connection with a backoff that
                    # doubles for up to this long. Kept short, so that once the
                    # server is back the next request starts a fresh attempt at
                    # once instead of waiting out a delay grown during the outage.
                    reconnect_timeout=2.0,
                    **self._pool_args,  # type: ignore[arg-type]
                )
                self._pool.open(wait=False)
                self._pid = pid
            return self._pool

    def _connect_first(self, asked: float) -> None:
        """One direct attempt before this process's first pool: fail fast, with the cause.

        The pool connects in the background and retries with a backoff, so a
        request on a server that was never there (a wrong port, a database
        that does not exist, a refused login) would wait out the pool timeout,
        log a warning per attempt and learn only that the database is busy.
        The attempt's own error is the answer instead, at once. Once this
        process has connected, an outage is the pool's to ride out (requests
        fail as busy, the pool reconnects by itself), as before. Threads that
        waited for the lock while an attempt failed share its answer.
        """
        failed = self._first_failure
        if failed is not None and failed[0] >= asked:
            raise Unavailable(failed[1], public_detail=_UNREACHABLE)
        timeout = self._pool_args["timeout"]
        try:
            params = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.Error:
            params = {}
        extra: dict[str, Any] = (
            {} if "connect_timeout" in params else {"connect_timeout": max(2, math.ceil(timeout))}
        )
        try:
            try:
                conn = psycopg.connect(self.url, **self._connection_args(), **extra)
            except psycopg.OperationalError as exc:
                if "unsupported startup parameter" not in str(exc) or not self._startup_options:
                    raise
                # PgBouncer refuses the startup packet's ``options`` outright.
                self._pooler_found("refuses the startup parameter `options`")
                conn = psycopg.connect(self.url, **self._connection_args(), **extra)
            with conn:
                self._detect_pooler(conn)
        except psycopg.Error as exc:
            message = connection_failure(exc, self.url)
            self._first_failure = (time.monotonic(), message)
            raise Unavailable(message, public_detail=_UNREACHABLE) from None
        self._first_failure = None
        self._connected_pid = os.getpid()

    def _connection_args(self) -> dict[str, Any]:
        """What every connection is made with, as far as the server (or pooler) allows."""
        args: dict[str, Any] = {"autocommit": True}
        if self._startup_options:
            args["options"] = (
                f"-c statement_timeout={int(self._statement_timeout_ms)} -c TimeZone=UTC"
            )
        if self._prepare is None:
            # psycopg otherwise prepares a statement on its fifth run by itself.
            args["prepare_threshold"] = None
        return args

    def _detect_pooler(self, conn: psycopg.Connection[Any]) -> None:
        """Did the startup ``options`` arrive? A pooler told to ignore them drops them.

        Told by where the setting came from, not by its value: a role whose own
        ``statement_timeout`` equals ours must not hide the pooler.
        """
        if not self._startup_options:
            return
        row = conn.execute(
            "SELECT setting, source FROM pg_settings WHERE name = 'statement_timeout'"
        ).fetchone()
        if row is None or row[1] != "client" or row[0] != str(int(self._statement_timeout_ms)):
            self._pooler_found("drops the startup parameter `options`")

    def _pooler_found(self, what: str) -> None:
        """Between userplane and PostgreSQL is a pooler (PgBouncer): settings go by ``SET``."""
        self._startup_options = False
        auto = self._prepared_setting is None
        if auto:
            self._prepare = None
        _log.warning(
            "the PostgreSQL server %s, as a connection pooler such as PgBouncer does: "
            "TimeZone is set per connection instead, and statement_timeout is NOT set by "
            "userplane (set it on the role: ALTER ROLE ... SET statement_timeout = %d, or in "
            "the pooler); server-side prepared statements are %s",
            what,
            int(self._statement_timeout_ms),
            "off (USERPLANE_DB_PREPARED_STATEMENTS=auto)"
            if auto
            else ("on, as USERPLANE_DB_PREPARED_STATEMENTS says" if self._prepare else "off"),
        )

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        if not self._startup_options:
            # Without the startup ``options``: a SET, which PgBouncer keeps per client
            # (TimeZone is a parameter the server reports, and the pooler restores).
            conn.execute("SET TimeZone TO 'UTC'")
        # The pool keeps its own connection objects: wrappers change them in place.
        self.wrapped(conn)

    def pool_stats(self) -> PoolStats | None:
        """This process's pool now (``PooledStorage``), or ``None`` before its first use."""
        pool = self._pool
        if pool is None or self._pid != os.getpid():
            return None
        stats = pool.get_stats()
        size = stats.get("pool_size", 0)
        return PoolStats(
            size=size,
            in_use=size - stats.get("pool_available", 0),
            waiting=stats.get("requests_waiting", 0),
            max_size=pool.max_size,
        )

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        held = self._held()
        if held is not None:  # inside transaction(): its connection
            with _mapped_errors(), self._statements_lost(), held.cursor() as cur:
                yield cur
            return
        with _mapped_errors(), self.pool.connection() as conn, conn.cursor() as cur:
            self._prepare_as_now(conn)
            yield cur

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction on one pooled connection, held by this thread; inner blocks join it.

        The transaction runs in psycopg's pipeline mode: ``BEGIN`` goes with
        its first statement, and statements whose answer nobody waits for
        (``execute_many``: an audit event, say) go with the ``COMMIT``. A
        write of one user and its records then costs two or three round trips
        instead of five. Whatever a queued statement raises is raised by the
        commit, and the transaction is rolled back.
        """
        if self._held() is not None:
            yield
            return
        with _mapped_errors(), self.pool.connection() as conn:
            self._prepare_as_now(conn)
            self._tx.conn, self._tx.pid = conn, os.getpid()
            pipeline = contextlib.ExitStack()
            self._tx.pipeline = pipeline.enter_context(conn.pipeline())
            self._tx.leave = pipeline
            committed = False
            try:
                conn.execute("BEGIN")
                yield
                with self._statements_lost():
                    conn.execute("COMMIT")
                    pipeline.close()  # sends what is queued; raises what any of it raised
                committed = True
            finally:
                self._tx.conn = self._tx.pipeline = self._tx.leave = None
                if not committed:
                    self._roll_back(conn, pipeline)

    @contextlib.contextmanager
    def _statements_lost(self) -> Iterator[None]:
        """In a transaction, a prepared statement gone missing (a pooler) is a 503 to retry.

        In pipeline mode the error comes with the answer, not from ``execute``
        (``_execute`` handles it there): here too, ``auto`` turns preparing off.
        """
        try:
            yield
        except (pg_errors.InvalidSqlStatementName, pg_errors.DuplicatePreparedStatement):
            if self._prepare is None or self._prepared_setting is not None:
                raise
            self._unprepared()
            raise Unavailable(
                "a prepared statement went missing through a connection pooler; "
                "server-side prepared statements are off now: retry"
            ) from None

    @staticmethod
    def _roll_back(conn: psycopg.Connection[Any], pipeline: contextlib.ExitStack) -> None:
        """End a transaction that failed; what fails meanwhile is the pool's to discard."""
        with contextlib.suppress(Exception):
            pipeline.close()  # a queued statement's error is the one already raised
        with contextlib.suppress(Exception):
            conn.rollback()

    def _leave_pipeline(self) -> None:
        """Out of pipeline mode for the rest of this thread's transaction (``COPY`` needs it)."""
        leave = getattr(self._tx, "leave", None)
        if leave is not None and self._held() is not None:
            self._tx.pipeline = None
            leave.close()

    def _sync(self) -> None:
        """Wait for every statement queued in this thread's transaction (for a row count)."""
        pipeline = getattr(self._tx, "pipeline", None)
        if pipeline is not None and self._held() is not None:
            pipeline.sync()

    def _held(self) -> psycopg.Connection[Any] | None:
        """This thread's open transaction's connection, if any (never one from before a fork)."""
        conn: psycopg.Connection[Any] | None = getattr(self._tx, "conn", None)
        if conn is not None and getattr(self._tx, "pid", None) != os.getpid():
            self._tx.conn = None  # the parent's: its socket is not ours
            return None
        return conn

    # Every statement is prepared at once (all of them are on hot paths), unless a
    # pooler in transaction mode stands between: a statement prepared on one server
    # connection is unknown on the next.

    def _execute(self, cur: psycopg.Cursor[Any], sql: str, params: Mapping[str, Any]) -> None:
        prepare = self._prepare
        # Preparing may have been turned off since this connection was lent (another
        # thread found a statement missing): psycopg would still run what it prepared.
        self._prepare_as_now(cur.connection)
        try:
            cur.execute(sql, params, prepare=prepare)
        except (pg_errors.InvalidSqlStatementName, pg_errors.DuplicatePreparedStatement):
            # A pooler that passed the startup options on (or was told to ignore
            # them) shows itself here. Outside a transaction the statement did
            # nothing and runs again unprepared; inside one, the transaction is
            # lost and the caller learns it as a 503 to retry.
            if prepare is None or self._prepared_setting is not None:
                raise
            self._unprepared()
            cur.connection.prepare_threshold = None
            if self._held() is not None:
                raise Unavailable(
                    "a prepared statement went missing through a connection pooler; "
                    "server-side prepared statements are off now: retry"
                ) from None
            cur.execute(sql, params, prepare=None)

    def _prepare_as_now(self, conn: psycopg.Connection[Any]) -> None:
        """Stop psycopg preparing on ``conn`` if preparing is off (it was made before)."""
        if self._prepare is None and conn.prepare_threshold is not None:
            conn.prepare_threshold = None

    def _unprepared(self) -> None:
        """``auto``: a prepared statement went missing, so a pooler is between: stop preparing."""
        with self._lock:
            if self._prepare is None:  # another thread saw it first, and said so
                return
            self._prepare = None
        _log.warning(
            "a prepared statement went missing between two statements, as it does through "
            "a pooler in transaction mode (PgBouncer): server-side prepared statements are "
            "off from now on (USERPLANE_DB_PREPARED_STATEMENTS=auto; set false to say so)"
        )

    def _from_replica(self, sql: str, params: Mapping[str, Any], one: bool) -> tuple[bool, Any]:
        """``(True, rows)`` if a replica may serve ``sql`` and did, else ``(False, None)``."""
        replicas = self.read_replicas
        if replicas is None:
            return False, None
        scope = replica_read()
        if (
            scope is None
            or self._held() is not None
            or not isinstance(sql, str)
            or not _REPLICA_READ.match(sql)
        ):
            return False, None
        replica = replicas.pick(scope.after, scope.pinned)
        if replica is None:
            return False, None
        scope.pinned = replica
        with _mapped_errors():
            return replicas.read(replica, sql, params, self._prepare, one)

    def _primary_position(self) -> int:
        """The primary's WAL position now (never a replica's, whatever the scope)."""
        with self._cursor() as cur:
            # The insert position: past every commit record made so far, flushed or
            # not (with synchronous_commit off, the write position may not be).
            cur.execute("SELECT pg_current_wal_insert_lsn()::text")
            row = cur.fetchone()
        return parse_lsn(row[0]) if row else 0

    def fetch_one(self, sql: str, params: Mapping[str, Any]) -> Sequence[Any] | None:
        """The first row (a prepared statement), driver errors mapped."""
        served, found = self._from_replica(sql, params, True)
        if served:
            return found  # type: ignore[no-any-return]
        with self._cursor() as cur:
            self._execute(cur, sql, params)
            row: Sequence[Any] | None = cur.fetchone()
            return row

    def fetch_all(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Every row (a prepared statement), driver errors mapped."""
        served, found = self._from_replica(sql, params, False)
        if served:
            return found  # type: ignore[no-any-return]
        with self._cursor() as cur:
            self._execute(cur, sql, params)
            return cur.fetchall()

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        """The rows changed (a prepared statement), driver errors mapped."""
        with self._cursor() as cur:
            self._execute(cur, sql, params)
            self._sync()  # in a transaction's pipeline, the count comes with the answer
            return cur.rowcount

    def user_from_row(self, row: Sequence[Any]) -> User:
        """The columns come back in ``User``'s field order, as uuid, bool and UTC datetimes."""
        attributes = row[10]
        return User(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            row[7],
            row[8],
            row[9],
            {} if attributes is None else json.loads(attributes),
        )

    def ping(self) -> None:
        """``SELECT 1`` through the pool."""
        with self._cursor() as cur:
            cur.execute("SELECT 1 FROM users LIMIT 1")

    def close(self) -> None:
        """Close this process's pool (and its replicas')."""
        if self.read_replicas is not None:
            self.read_replicas.close()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()

    def migration_url(self) -> str:
        """yoyo names the psycopg 3 driver in the scheme."""
        return yoyo_url(self.url)

    def migrate(self, plugins: Sequence[PluginMigrations] = ()) -> list[str]:
        """Apply pending migrations (yoyo, with its lock)."""
        try:
            return super().migrate(plugins)
        except psycopg.OperationalError as exc:
            cause = connection_failure(exc, self.url)
            raise Unavailable(f"the database cannot be reached to migrate it: {cause}") from None

    def migration_status(self, plugins: Sequence[PluginMigrations] = ()) -> list[MigrationState]:
        """Every migration and whether it is applied."""
        try:
            return super().migration_status(plugins)
        except psycopg.OperationalError as exc:
            raise Unavailable(
                connection_failure(exc, self.url), public_detail=_UNREACHABLE
            ) from None

    def copy_users(self, rows: Iterable[tuple[User, str]]) -> int:
        """Insert many ``(user, email_key)`` pairs in one transaction with ``COPY``.

        All or nothing; a taken email fails the whole batch with ``Conflict``.
        Returns how many rows were written.
        """
        batch = [UserRow(user, email_key) for user, email_key in rows]
        self.insert_users(batch)
        return len(batch)

    def insert_users(self, rows: Sequence[UserRow]) -> None:
        """``BulkStorage.insert_users`` with one ``COPY``: a savepoint inside a transaction.

        COPY streams the rows in one statement, past the per-row round trip
        and plan of an ``INSERT``; the unique indexes still decide a taken
        email (``Conflict``, and nothing of the batch stays).
        """
        if not rows:
            return
        self._leave_pipeline()
        with (
            self._cursor() as cur,
            cur.connection.transaction(),
            cur.copy(self.queries["copy_users"]) as copy,
        ):
            for row in rows:
                p = insert_params(row.user, row.email_key, row.name_key, row.next_key)
                copy.write_row([p[c] for c in _COPY_COLUMNS])

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """``SQLStorage.insert_rows`` with one ``COPY`` (a savepoint inside a transaction)."""
        if not rows:
            return
        statement = pg_sql.SQL("COPY {} ({}) FROM STDIN").format(
            pg_sql.Identifier(table), pg_sql.SQL(", ").join(map(pg_sql.Identifier, columns))
        )
        self._leave_pipeline()
        with self._cursor() as cur, cur.connection.transaction(), cur.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def users_by_email_keys(self, email_keys: Sequence[str]) -> dict[str, User]:
        """``BulkStorage.users_by_email_keys``: one statement with two ``= ANY`` arrays."""
        keys = list(dict.fromkeys(email_keys))
        if not keys:
            return {}
        found: dict[str, User] = {}
        asked = set(keys)
        rows = self.fetch_all(self.queries["users_by_email_keys"], {"keys": keys})
        for row in rows:
            user = self.user_from_row(row[2:])
            for key in row[:2]:
                if key in asked:
                    found[key] = user
        return found

    def execute_many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        """psycopg's ``executemany``: the statements go in one pipeline, not a round trip each."""
        if params:
            with self._cursor() as cur:
                cur.executemany(sql, params)
