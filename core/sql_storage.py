"""``SQLStorage``: the ``Storage`` protocol once, over named SQL, for every SQL store.

A SQL storage plugin subclasses it and supplies the driver side only: how to
run a statement (``_one``, ``_all``, ``_execute``, with its errors mapped to
domain errors), how to turn a row into a ``User``, and how to pass a value the
driver cannot (``_value``). The statements themselves come from the plugin's
``queries.sql`` (named queries) and from ``userplane.list_sql`` (the list).
"""

from __future__ import annotations

import abc
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from userplane.api_keys import ApiKey
from userplane.idempotency import IdempotencyRecord, StoredResponse
from userplane.list_sql import Dialect, list_users_sql
from userplane.pagination import Position, Sort
from userplane.storage import insert_params, update_params, write_missed
from userplane.users import User, UserFilter

#: The user columns every query returns, in ``User``'s field order.
USER_COLUMNS = "id, email, full_name, is_active, created_at, updated_at, version, deleted_at"


class SQLStorage(abc.ABC):
    """The user and idempotency-key operations, shared by the SQL stores."""

    #: The plugin's named queries (``userplane.queries.load_queries``).
    queries: ClassVar[dict[str, str]]
    #: How the plugin's SQL spells parameters and substring tests.
    dialect: ClassVar[Dialect]
    #: The database system, as OpenTelemetry names it.
    system: ClassVar[str]
    _connection_wrappers: tuple[Callable[[Any], Any], ...] = ()

    def wrap_connections(self, wrapper: Callable[[Any], Any]) -> None:
        """Pass every connection opened from now on through ``wrapper``.

        See ``userplane.storage.InstrumentableStorage``.
        """
        self._connection_wrappers = (*self._connection_wrappers, wrapper)

    def _wrapped(self, connection: Any) -> Any:
        """``connection`` as the wrappers return it."""
        for wrapper in self._connection_wrappers:
            connection = wrapper(connection)
        return connection

    @abc.abstractmethod
    def _one(self, sql: str, params: Mapping[str, Any]) -> Sequence[Any] | None:
        """The first row of ``sql``, or ``None``."""

    @abc.abstractmethod
    def _all(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Every row of ``sql``."""

    @abc.abstractmethod
    def _execute(self, sql: str, params: Mapping[str, Any]) -> int:
        """Run ``sql``; the number of rows it changed."""

    @abc.abstractmethod
    def _user(self, row: Sequence[Any]) -> User:
        """A ``User`` from a row of ``USER_COLUMNS``."""

    def _value(self, value: Any) -> Any:
        """``value`` as the driver takes it (identity unless overridden)."""
        return value

    def _params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._value(v) for k, v in params.items()}

    def _row(self, query: str, params: Mapping[str, Any]) -> Sequence[Any] | None:
        return self._one(self.queries[query], self._params(params))

    def _maybe_user(self, query: str, params: Mapping[str, Any]) -> User | None:
        row = self._row(query, params)
        return None if row is None else self._user(row)

    def _write(self, query: str, params: Mapping[str, Any], user_id: uuid.UUID) -> User:
        """A conditional write of one user; a miss says whether it is gone or stale."""
        user = self._maybe_user(query, params)
        if user is None:
            exists = self._row("user_version", {"id": user_id}) is not None
            raise write_missed(user_id, exists)
        return user

    # -- users -------------------------------------------------------------------

    def insert_user(self, user: User, email_key: str) -> User:
        """``INSERT … RETURNING``; the unique index turns a taken email into ``Conflict``."""
        inserted = self._maybe_user("insert_user", insert_params(user, email_key))
        assert inserted is not None
        return inserted

    def get_user(self, user_id: uuid.UUID, include_deleted: bool = False) -> User | None:
        """The user by id."""
        return self._maybe_user("get_user", {"id": user_id, "include_deleted": include_deleted})

    def get_user_by_email(self, email_key: str, include_deleted: bool = False) -> User | None:
        """The user by normalised email."""
        params = {"email_key": email_key, "include_deleted": include_deleted}
        return self._maybe_user("get_user_by_email", params)

    def list_users(
        self, flt: UserFilter, sort: Sort, after: Position | None, limit: int
    ) -> list[User]:
        """A keyset page, with the statement composed for this sort and these filters."""
        sql = list_users_sql(
            self.dialect,
            USER_COLUMNS,
            sort.field,
            sort.descending,
            after=after is not None,
            is_active=flt.is_active is not None,
            email=flt.email is not None,
            q=bool(flt.q),
            include_deleted=flt.include_deleted,
        )
        params = {
            "after_key": None if after is None else after.key,
            "after_id": None if after is None else after.id,
            "is_active": flt.is_active,
            "email_key": flt.email,
            "q": flt.q,
            "limit": limit,
        }
        return [self._user(r) for r in self._all(sql, self._params(params))]

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
        return self._write("update_user", params, user_id)

    def delete_user(self, user_id: uuid.UUID, expected_version: int | None, now: datetime) -> User:
        """One conditional ``UPDATE … RETURNING`` setting ``deleted_at``."""
        params = {"id": user_id, "expected_version": expected_version, "now": now}
        return self._write("delete_user", params, user_id)

    def restore_user(self, user_id: uuid.UUID, now: datetime) -> User | None:
        """Clear ``deleted_at``, if set."""
        return self._maybe_user("restore_user", {"id": user_id, "now": now})

    def purge_users(self, deleted_before: datetime) -> int:
        """Delete the rows deleted before the cut-off."""
        params = self._params({"before": deleted_before})
        return self._execute(self.queries["purge_users"], params)

    # -- idempotency keys --------------------------------------------------------

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
        return self._row("claim_idempotency_key", params) is not None

    def get_idempotency_record(self, key: str, now: datetime) -> IdempotencyRecord | None:
        """The unexpired record."""
        row = self._row("get_idempotency_record", {"key": key, "now": now})
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
        self._execute(self.queries["complete_idempotency_key"], self._params(params))

    def release_idempotency_key(self, key: str) -> None:
        """Drop an unfinished claim."""
        self._execute(self.queries["release_idempotency_key"], {"key": key})

    def purge_idempotency_keys(self, now: datetime) -> int:
        """Remove expired keys."""
        params = self._params({"now": now})
        return self._execute(self.queries["purge_idempotency_keys"], params)

    # -- API keys ------------------------------------------------------------------

    def _datetime(self, value: Any) -> datetime | None:
        """A time column's value as an aware ``datetime`` (identity unless overridden)."""
        return value  # type: ignore[no-any-return]

    def _api_key(self, row: Sequence[Any]) -> ApiKey:
        key_id, name, role, lookup, secret_hash, created, expires, revoked, used = row
        created_at = self._datetime(created)
        assert created_at is not None
        return ApiKey(
            id=key_id if isinstance(key_id, uuid.UUID) else uuid.UUID(key_id),
            name=name,
            role=role,
            lookup=lookup,
            secret_hash=secret_hash,
            created_at=created_at,
            expires_at=self._datetime(expires),
            revoked_at=self._datetime(revoked),
            last_used_at=self._datetime(used),
        )

    def insert_api_key(self, key: ApiKey) -> None:
        """Store a new key."""
        params = {
            "id": key.id,
            "name": key.name,
            "role": key.role,
            "lookup": key.lookup,
            "secret_hash": key.secret_hash,
            "created_at": key.created_at,
            "expires_at": key.expires_at,
        }
        self._execute(self.queries["insert_api_key"], self._params(params))

    def get_api_key(self, lookup: str) -> ApiKey | None:
        """The key with this lookup id."""
        row = self._row("get_api_key", {"lookup": lookup})
        return None if row is None else self._api_key(row)

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, oldest first."""
        return [self._api_key(r) for r in self._all(self.queries["list_api_keys"], {})]

    def revoke_api_key(self, key_id: uuid.UUID, now: datetime) -> ApiKey | None:
        """Set ``revoked_at`` once."""
        row = self._row("revoke_api_key", {"id": key_id, "now": now})
        return None if row is None else self._api_key(row)

    def touch_api_key(self, key_id: uuid.UUID, now: datetime) -> None:
        """Move ``last_used_at`` forward."""
        self._execute(self.queries["touch_api_key"], self._params({"id": key_id, "now": now}))
