"""PostgreSQL storage: psycopg 3 with one connection pool per process."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests

from userplane import migrations
from userplane.errors import Conflict, Unavailable
from userplane.idempotency import IdempotencyRecord, StoredResponse
from userplane.list_sql import Dialect, list_users_sql
from userplane.pagination import Position, Sort
from userplane.queries import load_queries
from userplane.storage import MigrationState, insert_params, update_params, write_missed
from userplane.users import User, UserFilter

_Q = load_queries(__package__ or "userplane.plugins.postgresql")

_COLUMNS = "id, email, full_name, is_active, created_at, updated_at, version, deleted_at"
_COPY_COLUMNS = (
    "id",
    "email",
    "email_key",
    "full_name",
    "full_name_folded",
    "is_active",
    "created_at",
    "updated_at",
    "version",
)


_DIALECT = Dialect(param="%({name})s", contains="strpos({haystack}, {needle}) > 0")


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


def _user(row: Sequence[Any]) -> User:
    # The columns come back in User's field order, already as uuid, bool and UTC datetimes.
    return User(*row)


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """The one place where driver and pool errors become domain errors."""
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "users_email_normalized_key":
            raise Conflict("a user with that email already exists") from None
        raise StorageFailure(exc) from None
    except pg_errors.UndefinedTable:
        raise Unavailable("the database is not migrated: run `userplane migrate`") from None
    except pg_errors.QueryCanceled:
        raise Unavailable("the database did not answer in time; retry shortly") from None
    except (PoolTimeout, TooManyRequests):
        raise Unavailable("the database is busy; retry shortly") from None
    except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
        raise Unavailable("the database could not complete the write; retry it") from None
    except psycopg.OperationalError:
        raise Unavailable("the database cannot be reached; retry shortly") from None
    except psycopg.Error as exc:
        raise StorageFailure(exc) from None


class StorageFailure(RuntimeError):
    """A database error that is a bug, not a condition (a 500): no driver type escapes."""

    def __init__(self, exc: psycopg.Error) -> None:
        super().__init__(f"PostgreSQL error {exc.sqlstate or '(no SQLSTATE)'}: {exc}")
        self.sqlstate = exc.sqlstate


def yoyo_url(url: str) -> str:
    """The same database for yoyo, which names the psycopg 3 driver in the scheme."""
    _, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep else url


class PostgreSQLStorage:
    """The production storage.

    One pool per process, created lazily so that it is opened in each gunicorn
    worker after the fork, never shared across it. Connections are checked
    before use, so a restarted server costs no failed request once it is back;
    a bounded wait queue and a short acquisition timeout turn overload into a
    fast ``Unavailable`` rather than a pile-up.
    """

    name = "postgresql"
    embedded = False

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        timeout: float = 5.0,
        max_waiting: int = 64,
        statement_timeout_ms: int = 5000,
    ) -> None:
        self.url = url
        self._pool_args = {
            "min_size": min_size,
            "max_size": max_size,
            "timeout": timeout,
            "max_waiting": max_waiting,
        }
        self._statement_timeout_ms = statement_timeout_ms
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """This process's pool, opened on first use (connections fill in the background)."""
        pool, pid = self._pool, os.getpid()
        if pool is not None and self._pid == pid:
            return pool
        with self._lock:
            if self._pool is None or self._pid != pid:
                # A pool inherited through fork is abandoned, not closed: its
                # sockets belong to the parent.
                self._pool = ConnectionPool(
                    self.url,  # libpq takes postgresql:// and postgres:// alike
                    open=False,
                    check=ConnectionPool.check_connection,
                    kwargs={
                        "autocommit": True,
                        "options": (
                            f"-c statement_timeout={int(self._statement_timeout_ms)} "
                            "-c TimeZone=UTC"
                        ),
                    },
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

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        with _mapped_errors(), self.pool.connection() as conn, conn.cursor() as cur:
            yield cur

    def _one(self, query: str, params: Mapping[str, Any]) -> Sequence[Any] | None:
        with self._cursor() as cur:
            # Prepared at once: every named query is on a hot path.
            cur.execute(_Q[query], params, prepare=True)
            row: Sequence[Any] | None = cur.fetchone()
            return row

    def _execute(self, query: str, params: Mapping[str, Any]) -> int:
        with self._cursor() as cur:
            cur.execute(_Q[query], params, prepare=True)
            return cur.rowcount

    def ping(self) -> None:
        """``SELECT 1`` through the pool."""
        with self._cursor() as cur:
            cur.execute("SELECT 1 FROM users LIMIT 1")

    def close(self) -> None:
        """Close this process's pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()

    def migrate(self) -> list[str]:
        """Apply pending migrations (yoyo, with its lock)."""
        try:
            return migrations.apply(yoyo_url(self.url), "postgresql")
        except psycopg.OperationalError:
            raise Unavailable("the database cannot be reached to migrate it") from None

    def migration_status(self) -> list[MigrationState]:
        """Every migration and whether it is applied."""
        try:
            states = migrations.status(yoyo_url(self.url), "postgresql")
        except psycopg.OperationalError:
            raise Unavailable("the database cannot be reached") from None
        return [MigrationState(i, a) for i, a in states]

    def insert_user(self, user: User, email_key: str) -> User:
        """``INSERT … RETURNING``; the unique index turns a taken email into ``Conflict``."""
        row = self._one("insert_user", insert_params(user, email_key))
        assert row is not None
        return _user(row)

    def get_user(self, user_id: uuid.UUID, include_deleted: bool = False) -> User | None:
        """The user by id."""
        row = self._one("get_user", {"id": user_id, "include_deleted": include_deleted})
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
        params = {
            "after_key": None if after is None else after.key,
            "after_id": None if after is None else after.id,
            "is_active": flt.is_active,
            "email_key": flt.email,
            "q": flt.q,
            "limit": limit,
        }
        with self._cursor() as cur:
            cur.execute(sql, params, prepare=True)
            return [_user(r) for r in cur.fetchall()]

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
        row = self._one("update_user", params)
        if row is None:
            self._explain_miss(user_id)
        assert row is not None
        return _user(row)

    def delete_user(self, user_id: uuid.UUID, expected_version: int | None, now: datetime) -> User:
        """One conditional ``UPDATE … RETURNING`` setting ``deleted_at``."""
        params = {"id": user_id, "expected_version": expected_version, "now": now}
        row = self._one("delete_user", params)
        if row is None:
            self._explain_miss(user_id)
        assert row is not None
        return _user(row)

    def restore_user(self, user_id: uuid.UUID, now: datetime) -> User | None:
        """Clear ``deleted_at``, if set."""
        row = self._one("restore_user", {"id": user_id, "now": now})
        return None if row is None else _user(row)

    def purge_users(self, deleted_before: datetime) -> int:
        """Delete the rows deleted before the cut-off."""
        return self._execute("purge_users", {"before": deleted_before})

    def copy_users(self, rows: Iterable[tuple[User, str]]) -> int:
        """Insert many ``(user, email_key)`` pairs in one transaction with ``COPY``.

        The bulk path (for imports): all or nothing; a taken email fails the
        whole batch with ``Conflict``. Returns how many rows were written.
        """
        count = 0
        with (
            self._cursor() as cur,
            cur.connection.transaction(),
            cur.copy(_Q["copy_users"]) as copy,
        ):
            for user, email_key in rows:
                p = insert_params(user, email_key)
                copy.write_row([p[c] for c in _COPY_COLUMNS])
                count += 1
        return count

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
            "now": now,
            "expires_at": expires_at,
            "stale_before": stale_before,
        }
        return self._one("claim_idempotency_key", params) is not None

    def get_idempotency_record(self, key: str, now: datetime) -> IdempotencyRecord | None:
        """The unexpired record."""
        row = self._one("get_idempotency_record", {"key": key, "now": now})
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
        return self._execute("purge_idempotency_keys", {"now": now})

    def _explain_miss(self, user_id: uuid.UUID) -> None:
        exists = self._one("user_version", {"id": user_id}) is not None
        raise write_missed(user_id, exists)
