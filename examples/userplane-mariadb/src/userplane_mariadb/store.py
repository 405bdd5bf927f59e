"""MariaDB storage: PyMySQL, one autocommit connection per thread and process."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
from pymysql.constants import ER
from pymysql.cursors import Cursor

from userplane import plugin
from userplane.plugin import ConfigurationError, Conflict, Unavailable
from userplane.sql import Dialect, Row, SQLStorage, load_queries

#: The unique keys on users' two email index columns: a duplicate in either is a taken email.
_EMAIL_KEYS = ("users_email_normalized_key", "users_email_index_next_key")
#: STRICT: a value too long fails instead of being cut. SIMULTANEOUS_ASSIGNMENT: every
#: assignment of an UPDATE sees the row as it was (claim_idempotency_key relies on it).
_SQL_MODE = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,SIMULTANEOUS_ASSIGNMENT"
_OPTIONS = {"charset": "utf8mb4", "autocommit": True, "sql_mode": _SQL_MODE}


def connect_args(url: str) -> dict[str, Any]:
    """PyMySQL's arguments for ``mariadb://user:password@host:port/db[?unix_socket=path]``."""
    parts = urlsplit(url)
    if not parts.path.strip("/"):
        raise ConfigurationError("USERPLANE_DATABASE_URL: a MariaDB URL names its database")
    return {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path[1:]),
        "unix_socket": parse_qs(parts.query).get("unix_socket", [None])[0],
    }


class MariaDBStorage(SQLStorage):
    """MariaDB 10.5 and later (10.11 tested), over the public SQL kit.

    Each thread of a process gets its own connection, opened on first use
    (so never one inherited through a fork), in autocommit; a thread started
    later under a finished one's id takes its connection over. ``transaction()``
    groups the kit's write and read-back on the thread's connection.
    """

    name = system = "mariadb"
    queries = load_queries(__package__ or "userplane_mariadb")
    dialect = Dialect(
        name="mysql",
        param="%({name})s",
        contains="INSTR({haystack}, {needle}) > 0",
        returning=False,
        upsert="on-duplicate-key",
        locking="row",
    )

    def __init__(self, url: str, connect_timeout: float = 3, statement_timeout: float = 5) -> None:
        self.url = url
        # The server stops a statement past max_statement_time (and a lock wait past
        # innodb_lock_wait_timeout); read_timeout is for a server that stopped answering.
        self._args = (
            connect_args(url)
            | _OPTIONS
            | {
                "connect_timeout": connect_timeout,
                "read_timeout": statement_timeout + connect_timeout,
                "init_command": f"SET SESSION max_statement_time = {statement_timeout:.3f}, "
                f"innodb_lock_wait_timeout = {max(1, math.ceil(statement_timeout))}",
            }
        )
        self._connections: dict[int, Any] = {}  # thread id -> this process's connection
        self._in_transaction: set[int] = set()
        self._pid = os.getpid()

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        """The one place where PyMySQL errors become domain errors."""
        try:
            yield
        except pymysql.Error as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            if code == ER.DUP_ENTRY:
                # "Duplicate entry '…' for key 'name'": the key's name ends the message.
                if str(exc.args[-1]).rstrip("'").endswith(_EMAIL_KEYS):
                    raise Conflict("a user with that email already exists") from None
                # The key's name, as the core's stores give it: a caller may tell which.
                key = str(exc.args[-1]).rstrip("'").rpartition("'")[2]
                raise Conflict(f"that record already exists ({key})") from None
            if code == ER.NO_SUCH_TABLE:
                raise Unavailable("the database is not migrated: run `userplane migrate`") from None
            # A lock wait, a deadlock, a statement past max_statement_time (MariaDB's 1969):
            # the same request may well succeed in a moment.
            if code in (ER.LOCK_WAIT_TIMEOUT, ER.LOCK_DEADLOCK, 1969):
                raise Unavailable("the database is busy; retry shortly") from None
            # A failed CHECK is a bad value, not a lost server, though PyMySQL (which does
            # not know the code) raises it as an OperationalError.
            if code == ER.CONSTRAINT_FAILED:
                raise RuntimeError(f"MariaDB error {code}: {exc.args[-1]}") from None
            if isinstance(exc, pymysql.OperationalError | pymysql.InterfaceError):
                # Refused, lost or timed out: the thread's next call connects afresh.
                with contextlib.suppress(Exception):
                    self._connections.pop(threading.get_ident()).close()
                raise Unavailable("the database cannot be reached; retry shortly") from None
            raise RuntimeError(f"MariaDB error {code}: {exc.args[-1]}") from None

    def _connection(self) -> Any:
        """This thread's connection (or a wrapper's proxy of it), opened on first use."""
        if self._pid != os.getpid():  # forked: the parent's connections are not ours
            self._connections, self._in_transaction, self._pid = {}, set(), os.getpid()
        me = threading.get_ident()
        if me not in self._connections:
            self._connections[me] = self.wrapped(pymysql.connect(**self._args))
        return self._connections[me]

    def _run(self, sql: str, params: Mapping[str, Any]) -> Cursor:
        """``sql`` run on this thread's connection: a cursor holding every row it returned."""
        with self._mapped():
            cursor: Cursor = self._connection().cursor()
            cursor.execute(sql, params)
            return cursor

    def fetch_one(self, sql: str, params: Mapping[str, Any]) -> Row | None:
        """The first row, driver errors mapped."""
        return self._run(sql, params).fetchone()

    def fetch_all(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        """Every row, driver errors mapped."""
        return list(self._run(sql, params).fetchall())

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        """The rows changed (not merely matched: no CLIENT_FOUND_ROWS), driver errors mapped."""
        return self._run(sql, params).rowcount

    def reseal_user(
        self,
        user_id: uuid.UUID,
        version: int,
        fields: Mapping[str, Any],
        email_key: str | None,
        next_key: str | None = None,
    ) -> bool:
        """The kit's, but a row at ``version`` counts even if it already held these values.

        ``execute`` counts rows changed, not matched, so the kit's ``> 0`` alone would
        say such a row was gone or stale: its 0 is then told apart by ``user_at_version``,
        in the same transaction (the ``UPDATE`` locked the row it matched).
        """
        with self.transaction():
            if super().reseal_user(user_id, version, fields, email_key, next_key):
                return True
            return self.query("user_at_version", {"id": user_id, "version": version}) is not None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction on this thread's connection; a block inside another joins it."""
        me = threading.get_ident()
        if me in self._in_transaction:
            yield
            return
        with self._mapped():
            (conn := self._connection()).begin()
            self._in_transaction.add(me)
            try:
                yield
                conn.commit()
            except BaseException:
                with contextlib.suppress(pymysql.Error):
                    conn.rollback()
                raise
            finally:
                self._in_transaction.discard(me)

    def to_db(self, value: Any) -> Any:
        """Times as naive UTC: DATETIME has no zone, and PyMySQL would drop any but UTC's.

        Ids need nothing: PyMySQL quotes ``str(value)`` of a type it has no encoder for.
        """
        return value.astimezone(UTC).replace(tzinfo=None) if isinstance(value, datetime) else value

    def time_from_db(self, value: datetime) -> datetime:
        """A DATETIME, stored as UTC, as an aware ``datetime``."""
        return value.replace(tzinfo=UTC)

    def ping(self) -> None:
        """A trivial query on the users table."""
        self.fetch_all("SELECT 1 FROM users LIMIT 1", {})

    def close(self) -> None:
        """Close the connections this process opened."""
        conns = list(self._connections.values()) if self._pid == os.getpid() else []
        self._connections = {}
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def core_migrations(self) -> Path:
        """This package's migrations of the published schema."""
        return Path(__file__).parent / "migrations"

    def migration_url(self) -> str:
        """yoyo's MySQL backend, which connects through PyMySQL."""
        return "mysql://" + self.url.partition("://")[2]

    def migrate(self, plugins: Sequence[plugin.PluginMigrations] = ()) -> list[str]:
        """Apply pending migrations (yoyo, with its lock), driver errors mapped."""
        with self._mapped():
            return super().migrate(plugins)

    def migration_status(
        self, plugins: Sequence[plugin.PluginMigrations] = ()
    ) -> list[plugin.MigrationState]:
        """Every migration and whether it is applied."""
        with self._mapped():
            return super().migration_status(plugins)
