"""SQLite storage: stdlib ``sqlite3`` in WAL mode, one connection per thread and process."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from userplane import migrations
from userplane.errors import Conflict, Unavailable
from userplane.idempotency import IdempotencyRecord, StoredResponse
from userplane.list_sql import Dialect, list_users_sql
from userplane.pagination import Position, Sort
from userplane.queries import load_queries
from userplane.storage import MigrationState, insert_params, update_params, write_missed
from userplane.users import User, UserFilter

_Q = load_queries(__package__ or "userplane.plugins.sqlite")

# Fixed width, so that text order is time order in the keyset index.
_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME)


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, _TIME).replace(tzinfo=UTC)


def _user(row: Sequence[Any]) -> User:
    return User(
        id=uuid.UUID(row[0]),
        email=row[1],
        full_name=row[2],
        is_active=bool(row[3]),
        created_at=_parse_time(row[4]),
        updated_at=_parse_time(row[5]),
        version=row[6],
        deleted_at=None if row[7] is None else _parse_time(row[7]),
    )


_COLUMNS = "id, email, full_name, is_active, created_at, updated_at, version, deleted_at"
_DIALECT = Dialect(param=":{name}", contains="instr({haystack}, {needle}) > 0")


@functools.lru_cache(maxsize=64)
def _list_sql(field: str, descending: bool, *flags: bool) -> str:
    after, is_active, email, q, include_deleted = flags
    return list_users_sql(
        _DIALECT,
        _COLUMNS,
        field,
        descending,
        after=after,
        is_active=is_active,
        email=email,
        q=q,
        include_deleted=include_deleted,
    )


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """The one place where sqlite3 errors become domain errors."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "email_normalized" in str(exc):
            raise Conflict("a user with that email already exists") from None
        raise
    except sqlite3.OperationalError as exc:
        message = str(exc)
        if "no such table" in message:
            raise Unavailable("the database is not migrated: run `userplane migrate`") from None
        if "locked" in message or "busy" in message:
            raise Unavailable("the database is busy; retry shortly") from None
        raise Unavailable("the database cannot be used now") from exc


class SQLiteStorage:
    """The embedded default. Safe for several gunicorn workers on one file.

    WAL lets readers run beside the one writer; ``busy_timeout`` makes a
    writer wait for the lock instead of failing at once; every write is a
    single statement, so each is atomic without an explicit transaction.
    """

    name = "sqlite"
    embedded = True

    def __init__(self, url: str, path: str, busy_timeout_ms: int = 5000) -> None:
        self.url = url
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> sqlite3.Connection:
        # A connection must never cross a fork: gunicorn may import the app in
        # the master, so connections are made lazily in each worker process.
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == pid:
            return conn
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,  # autocommit: each statement is its own transaction
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a write acknowledged to a client survives a power cut, not only a crash.
        conn.execute("PRAGMA synchronous = FULL")
        self._local.conn = conn
        self._local.pid = pid
        with self._lock:
            if self._pid != pid:
                self._all, self._pid = [], pid
            self._all.append(conn)
        return conn

    def _one(self, query: str, params: Mapping[str, Any]) -> Sequence[Any] | None:
        with _mapped_errors():
            row: Sequence[Any] | None = self._connect().execute(_Q[query], params).fetchone()
            return row

    def _execute(self, query: str, params: Mapping[str, Any]) -> int:
        with _mapped_errors():
            return self._connect().execute(_Q[query], params).rowcount

    def ping(self) -> None:
        """Run a trivial query against the users table."""
        with _mapped_errors():
            self._connect().execute("SELECT 1 FROM users LIMIT 1").fetchall()

    def close(self) -> None:
        """Close every connection this process opened."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def migrate(self) -> list[str]:
        """Apply pending migrations (yoyo, with its lock)."""
        return migrations.apply(self.url, "sqlite")

    def migration_status(self) -> list[MigrationState]:
        """Every migration and whether it is applied."""
        return [MigrationState(i, a) for i, a in migrations.status(self.url, "sqlite")]

    def insert_user(self, user: User, email_key: str) -> User:
        """Insert; the unique index turns a taken email into ``Conflict``."""
        params = insert_params(user, email_key)
        params.update(
            id=str(user.id), created_at=_time(user.created_at), updated_at=_time(user.updated_at)
        )
        row = self._one("insert_user", params)
        assert row is not None
        return _user(row)

    def get_user(self, user_id: uuid.UUID, include_deleted: bool = False) -> User | None:
        """The user by id."""
        row = self._one("get_user", {"id": str(user_id), "include_deleted": include_deleted})
        return None if row is None else _user(row)

    def get_user_by_email(self, email_key: str, include_deleted: bool = False) -> User | None:
        """The user by normalised email."""
        params = {"email_key": email_key, "include_deleted": include_deleted}
        row = self._one("get_user_by_email", params)
        return None if row is None else _user(row)

    def list_users(
        self, flt: UserFilter, sort: Sort, after: Position | None, limit: int
    ) -> list[User]:
        """A keyset page."""
        sql = _list_sql(
            sort.field,
            sort.descending,
            after is not None,
            flt.is_active is not None,
            flt.email is not None,
            bool(flt.q),
            flt.include_deleted,
        )
        after_key: Any = None
        if after is not None:
            key = after.key
            after_key = _time(key) if isinstance(key, datetime) else key
        params = {
            "after_key": after_key,
            "after_id": None if after is None else str(after.id),
            "is_active": flt.is_active,
            "email_key": flt.email,
            "q": flt.q,
            "limit": limit,
        }
        with _mapped_errors():
            rows = self._connect().execute(sql, params).fetchall()
        return [_user(r) for r in rows]

    def update_user(
        self,
        user_id: uuid.UUID,
        fields: Mapping[str, Any],
        email_key: str | None,
        expected_version: int | None,
        now: datetime,
    ) -> User:
        """One conditional ``UPDATE … RETURNING``."""
        params = update_params(user_id, fields, email_key, expected_version, now)
        params.update(id=str(user_id), now=_time(now))
        row = self._one("update_user", params)
        if row is None:
            self._explain_miss(user_id)
        assert row is not None
        return _user(row)

    def delete_user(self, user_id: uuid.UUID, expected_version: int | None, now: datetime) -> User:
        """One conditional ``UPDATE … RETURNING`` setting ``deleted_at``."""
        params = {"id": str(user_id), "expected_version": expected_version, "now": _time(now)}
        row = self._one("delete_user", params)
        if row is None:
            self._explain_miss(user_id)
        assert row is not None
        return _user(row)

    def restore_user(self, user_id: uuid.UUID, now: datetime) -> User | None:
        """Clear ``deleted_at``, if set."""
        row = self._one("restore_user", {"id": str(user_id), "now": _time(now)})
        return None if row is None else _user(row)

    def purge_users(self, deleted_before: datetime) -> int:
        """Delete the rows deleted before the cut-off."""
        return self._execute("purge_users", {"before": _time(deleted_before)})

    def claim_idempotency_key(
        self,
        key: str,
        fingerprint: str,
        now: datetime,
        expires_at: datetime,
        stale_before: datetime,
    ) -> bool:
        """One ``INSERT … ON CONFLICT DO UPDATE … WHERE`` decides the owner."""
        params = {
            "key": key,
            "fingerprint": fingerprint,
            "now": _time(now),
            "expires_at": _time(expires_at),
            "stale_before": _time(stale_before),
        }
        return self._one("claim_idempotency_key", params) is not None

    def get_idempotency_record(self, key: str, now: datetime) -> IdempotencyRecord | None:
        """The unexpired record."""
        row = self._one("get_idempotency_record", {"key": key, "now": _time(now)})
        if row is None:
            return None
        fingerprint, status, headers, body = row
        if status is None:
            return IdempotencyRecord(fingerprint, None)
        pairs = tuple((str(k), str(v)) for k, v in json.loads(headers))
        return IdempotencyRecord(fingerprint, StoredResponse(status, pairs, bytes(body)))

    def complete_idempotency_key(self, key: str, response: StoredResponse) -> None:
        """Store the response."""
        params = {
            "key": key,
            "status": response.status,
            "headers": json.dumps(response.headers),
            "body": response.body,
        }
        self._execute("complete_idempotency_key", params)

    def release_idempotency_key(self, key: str) -> None:
        """Drop an unfinished claim."""
        self._execute("release_idempotency_key", {"key": key})

    def purge_idempotency_keys(self, now: datetime) -> int:
        """Remove expired keys."""
        return self._execute("purge_idempotency_keys", {"now": _time(now)})

    def _explain_miss(self, user_id: uuid.UUID) -> None:
        exists = self._one("user_version", {"id": str(user_id)}) is not None
        raise write_missed(user_id, exists)
