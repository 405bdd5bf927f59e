"""SQLite storage: stdlib ``sqlite3`` in WAL mode, one connection per thread and process."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from userplane.plugin import (
    ConfigurationError,
    Conflict,
    MigrationState,
    PluginMigrations,
    Unavailable,
)
from userplane.plugins.sqlite.copying import SQLiteCopying
from userplane.sql import (
    Dialect,
    SQLStorage,
    load_queries,
    migration_sources,
    migration_status,
)

# Fixed width, so that text order is time order in the keyset index.
_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


#: How long a migration waits for another process's, in seconds (yoyo's lock waits 60 s).
_MIGRATION_WAIT_S = 60


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME)


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, _TIME).replace(tzinfo=UTC)


#: What an HTTP client is told of a database error naming the file (the log has the path).
_UNUSABLE = "the database cannot be used now"


@contextlib.contextmanager
def _mapped_errors(path: str) -> Iterator[None]:
    """The one place where sqlite3 errors become domain errors.

    Every error about the database names its file, ``path`` (absolute): with
    a relative URL, "which file?" is the first question.
    """
    try:
        yield
    except sqlite3.IntegrityError as exc:
        message = str(exc)
        # Either email index: the second decides while a re-index runs.
        if "email_normalized" in message or "email_index_next" in message:
            raise Conflict("a user with that email already exists") from None
        if "UNIQUE" in message:  # a plugin's table: the plugin words its own message
            raise Conflict(f"that record already exists ({message})") from None
        raise
    except sqlite3.OperationalError as exc:
        message = str(exc)
        if "no such table" in message:
            raise Unavailable(
                f"the database {path} is not migrated: run `userplane migrate`",
                public_detail="the database is not migrated",
            ) from None
        if "locked" in message or "busy" in message:
            raise Unavailable(
                f"the database {path} is busy; retry shortly",
                public_detail="the database is busy; retry shortly",
            ) from None
        if "unable to open" in message:
            if not os.path.exists(path):
                # Connections never create the file: a command run from another
                # folder must not silently start an empty database there.
                raise Unavailable(
                    f"no database at {path}: run `userplane migrate` to create it",
                    public_detail=_UNUSABLE,
                ) from None
            raise Unavailable(
                f"cannot open the database {path}: {message}", public_detail=_UNUSABLE
            ) from None
        raise Unavailable(
            f"the database {path} cannot be used now: {message}", public_detail=_UNUSABLE
        ) from exc
    except sqlite3.DatabaseError as exc:
        if type(exc) is not sqlite3.DatabaseError:  # a programming error: a bug, not a state
            raise
        # "file is not a database", "database disk image is malformed"
        raise Unavailable(
            f"the database {path} cannot be used: {exc}", public_detail=_UNUSABLE
        ) from None


class SQLiteStorage(SQLiteCopying, SQLStorage):
    """The embedded default. Safe for several gunicorn workers on one file.

    WAL lets readers run beside the one writer; ``busy_timeout`` makes a
    writer wait for the lock instead of failing at once; every write is a
    single statement, so each is atomic without an explicit transaction.
    """

    name = "sqlite"
    system = "sqlite"
    embedded = True
    queries = load_queries(__package__ or "userplane.plugins.sqlite")
    dialect = Dialect(
        name="sqlite",
        param=":{name}",
        contains="instr({haystack}, {needle}) > 0",
        locking="database",
    )

    def __init__(self, url: str, path: str, busy_timeout_ms: int = 5000) -> None:
        self.url = url
        #: Absolute: resolved once, against the working directory the process started in.
        self.path = path if path == ":memory:" else os.path.abspath(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()

    def _connect(self) -> Any:
        """This thread's connection (a ``sqlite3.Connection``, or a wrapper's proxy of one)."""
        # A connection must never cross a fork: gunicorn may import the app in
        # the master, so connections are made lazily in each worker process.
        pid = os.getpid()
        cached = getattr(self._local, "conn", None)
        if cached is not None and self._local.pid == pid:
            return cached
        # mode=rw: a missing file is an error, never a new empty database; only
        # migrate() creates it.
        memory = self.path == ":memory:"
        conn = sqlite3.connect(
            self.path if memory else f"{Path(self.path).as_uri()}?mode=rw",
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,  # autocommit: each statement is its own transaction
            check_same_thread=False,
            uri=not memory,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            with self._lock:  # one switch per process; migrate() made it already
                conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a write acknowledged to a client survives a power cut, not only a crash.
        conn.execute("PRAGMA synchronous = FULL")
        with self._lock:
            if self._pid != pid:
                self._connections, self._pid = [], pid
            self._connections.append(conn)
        wrapped = self.wrapped(conn)
        self._local.conn = wrapped
        self._local.pid = pid
        return wrapped

    def _cursor(self) -> sqlite3.Cursor:
        # Statements go through a cursor, not the ``Connection.execute`` shortcut:
        # a connection wrapper (SQL tracing) sees ``cursor().execute`` only.
        cursor: sqlite3.Cursor = self._connect().cursor()
        return cursor

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` on this thread's connection; inner blocks join it.

        IMMEDIATE takes the write lock at once (waiting up to the busy
        timeout): a transaction that read first and wrote later could fail
        with "database is locked" half-way instead.
        """
        if getattr(self._local, "depth", 0):
            self._local.depth += 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        with _mapped_errors(self.path):
            self._cursor().execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield
        except BaseException:
            self._local.depth = 0
            self._roll_back()
            raise
        self._local.depth = 0
        try:
            with _mapped_errors(self.path):
                self._cursor().execute("COMMIT")
        except BaseException:
            self._roll_back()
            raise

    def _roll_back(self) -> None:
        """Roll this thread's transaction back; a connection that cannot is dropped.

        Left inside its transaction, the connection would refuse every later
        ``BEGIN`` on this thread and hold the write lock against the others.
        """
        conn = self._connect()
        with contextlib.suppress(sqlite3.Error):
            conn.cursor().execute("ROLLBACK")
        if getattr(conn, "in_transaction", False):
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            self._local.conn = None

    def fetch_one(self, sql: str, params: Mapping[str, Any]) -> Sequence[Any] | None:
        """The first row, sqlite3 errors mapped."""
        with _mapped_errors(self.path):
            row: Sequence[Any] | None = self._cursor().execute(sql, params).fetchone()
            return row

    def fetch_all(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Every row, sqlite3 errors mapped."""
        with _mapped_errors(self.path):
            return self._cursor().execute(sql, params).fetchall()

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        """The rows changed, sqlite3 errors mapped."""
        with _mapped_errors(self.path):
            return self._cursor().execute(sql, params).rowcount

    def execute_many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        """sqlite3's ``executemany``: one statement prepared once for every mapping."""
        with _mapped_errors(self.path):
            self._cursor().executemany(sql, params)

    def time_from_db(self, value: Any) -> datetime:
        """Fixed-width UTC text to an aware ``datetime``."""
        return _parse_time(value)

    def to_db(self, value: Any) -> Any:
        """Times as fixed-width UTC text, ids as text."""
        # Times as fixed-width UTC text (text order is time order), ids as text.
        if isinstance(value, datetime):
            return _time(value)
        if isinstance(value, uuid.UUID):
            return str(value)
        return value

    def ping(self) -> None:
        """Run a trivial query against the users table."""
        with _mapped_errors(self.path):
            self._cursor().execute("SELECT 1 FROM users LIMIT 1").fetchall()

    def close(self) -> None:
        """Close every connection this process opened."""
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def migrate(self, plugins: Sequence[PluginMigrations] = ()) -> list[str]:
        """Apply pending migrations (yoyo, with its lock), and leave the file in WAL mode.

        WAL is a property of the file: set here, before any worker serves, so
        that connections opened at once do not race to switch it (switching
        takes an exclusive lock that concurrent writers fail on at once).
        """
        if self.path != ":memory:":
            try:  # the one command that creates the database: its folder too
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file where a folder should be, no permission
                raise ConfigurationError(
                    f"USERPLANE_DATABASE_URL: cannot make the folder of {self.path}: {exc.strerror}"
                ) from None
        with _mapped_errors(self.path):
            applied = super().migrate(plugins)
        if self.path != ":memory:":
            # Switching to WAL takes the file's exclusive lock: while another process
            # still applies migrations it waits as long as they may take (as yoyo's
            # own connection does), not a request's busy timeout.
            connect = sqlite3.connect(self.path, timeout=_MIGRATION_WAIT_S)
            with _mapped_errors(self.path), contextlib.closing(connect) as conn:
                conn.execute(f"PRAGMA busy_timeout = {_MIGRATION_WAIT_S * 1000}")
                conn.execute("PRAGMA journal_mode = WAL")
        return applied

    def migration_url(self) -> str:
        """The file by its absolute path, as the connections open it."""
        return self.url if self.path == ":memory:" else f"sqlite:///{self.path}"

    def migration_status(self, plugins: Sequence[PluginMigrations] = ()) -> list[MigrationState]:
        """Every migration and whether it is applied; a missing file is not created."""
        if self.path != ":memory:" and not os.path.exists(self.path):
            # None applied: asked of an empty database in memory, not of a new file.
            sources = migration_sources(self.dialect.name, self.core_migrations(), plugins)
            return migration_status("sqlite:///:memory:", sources)
        with _mapped_errors(self.path):
            return super().migration_status(plugins)
