"""Where API keys live: a table of this plugin's own, in the registry's SQL storage.

The statements (``queries.sql``) are written once, with ``:name`` parameters
and no ``RETURNING``, and compiled for the storage's dialect: any store built
on ``userplane.sql.SQLStorage`` whose dialect this plugin has migrations for
can hold keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from userplane.plugin import Conflict
from userplane.plugins.api_keys.keys import ApiKey
from userplane.sql import SQLStorage, load_queries

_QUERIES = load_queries(__package__ or "userplane.plugins.api_keys")


class ApiKeyStore:
    """API keys over a ``SQLStorage``. Methods raise only userplane's errors."""

    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage
        self._sql = {name: storage.dialect.compile(sql) for name, sql in _QUERIES.items()}

    def _time(self, value: Any) -> datetime | None:
        return None if value is None else self._storage.time_from_db(value)

    def _key(self, row: Sequence[Any]) -> ApiKey:
        key_id, name, role, lookup, secret_hash, created, expires, revoked, used = row
        created_at = self._time(created)
        assert created_at is not None
        return ApiKey(
            id=self._storage.uuid_from_db(key_id),
            name=name,
            role=role,
            lookup=lookup,
            secret_hash=secret_hash,
            created_at=created_at,
            expires_at=self._time(expires),
            revoked_at=self._time(revoked),
            last_used_at=self._time(used),
        )

    def _one(self, name: str, params: dict[str, Any]) -> ApiKey | None:
        row = self._storage.fetch_one(self._sql[name], self._storage.params(params))
        return None if row is None else self._key(row)

    def _execute(self, name: str, params: dict[str, Any]) -> int:
        return self._storage.execute(self._sql[name], self._storage.params(params))

    def ping(self) -> None:
        """Prove the key table answers; ``Unavailable`` (e.g. not migrated) otherwise."""
        self._storage.fetch_all(self._sql["ping"], {})

    def insert_api_key(self, key: ApiKey) -> None:
        """Store a new key; ``Conflict`` if its id or lookup id is taken."""
        params = {
            "id": key.id,
            "name": key.name,
            "role": key.role,
            "lookup": key.lookup,
            "secret_hash": key.secret_hash,
            "created_at": key.created_at,
            "expires_at": key.expires_at,
        }
        try:
            self._execute("insert_api_key", params)
        except Conflict:
            raise Conflict("an API key with that id already exists") from None

    def get_api_key(self, lookup: str) -> ApiKey | None:
        """The key with this lookup id, revoked or expired ones included."""
        return self._one("get_api_key", {"lookup": lookup})

    def get_api_key_by_id(self, key_id: uuid.UUID) -> ApiKey | None:
        """The key with this id, revoked or expired ones included."""
        return self._one("get_api_key_by_id", {"id": key_id})

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, oldest first (then by id)."""
        rows = self._storage.fetch_all(self._sql["list_api_keys"], {})
        return [self._key(r) for r in rows]

    def list_api_keys_page(
        self, limit: int, after: tuple[datetime, uuid.UUID] | None = None
    ) -> list[ApiKey]:
        """Up to ``limit`` keys in list order, from just after ``(created_at, id)`` if given."""
        params: dict[str, Any]
        if after is None:
            name, params = "list_api_keys_first", {"limit": limit}
        else:
            params = {"limit": limit, "after_created_at": after[0], "after_id": after[1]}
            name = "list_api_keys_after"
        rows = self._storage.fetch_all(self._sql[name], self._storage.params(params))
        return [self._key(r) for r in rows]

    def revoke_api_key(self, key_id: uuid.UUID, now: datetime) -> ApiKey | None:
        """Set ``revoked_at`` (kept if already set); the key, or ``None`` if unknown."""
        self._execute("revoke_api_key", {"id": key_id, "now": now})
        return self.get_api_key_by_id(key_id)

    def touch_api_key(self, key_id: uuid.UUID, now: datetime) -> None:
        """Move ``last_used_at`` forward to ``now`` (never back)."""
        self._execute("touch_api_key", {"id": key_id, "now": now})
