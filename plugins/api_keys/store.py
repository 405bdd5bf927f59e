"""Where API keys live: a table of this plugin's own, in the registry's SQL storage.

The statements (``queries.sql``) are written once, with ``:name`` parameters
and no ``RETURNING``, and compiled for the storage's dialect: any store built
on ``userplane.sql.SQLStorage`` whose dialect this plugin has migrations for
can hold keys. The statements over a set of keys (the authenticator's
refresher) need a set-valued parameter, which each dialect spells its own way:
they are in ``queries.<dialect>.sql`` for the dialects in ``_LISTS``; on any
other, the set is read or written one key at a time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from userplane.plugin import Conflict
from userplane.plugins.api_keys.keys import ApiKey
from userplane.sql import SQLStorage, load_queries

_PACKAGE = __package__ or "userplane.plugins.api_keys"
_QUERIES = load_queries(_PACKAGE)
#: How each dialect with set statements takes a list: an array, or a JSON array's text.
_LISTS: dict[str, Callable[[list[Any]], Any]] = {"postgresql": list, "sqlite": json.dumps}


class ApiKeyStore:
    """API keys over a ``SQLStorage``. Methods raise only userplane's errors."""

    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage
        queries = dict(_QUERIES)
        self._list = _LISTS.get(storage.dialect.name)
        if self._list is not None:
            queries |= load_queries(_PACKAGE, f"queries.{storage.dialect.name}.sql")
        self._sql = {name: storage.dialect.compile(sql) for name, sql in queries.items()}

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

    def _values(self, values: Sequence[Any]) -> Any:
        """``values`` as one set-valued parameter, each as the storage stores it."""
        assert self._list is not None
        return self._list([self._storage.to_db(v) for v in values])

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

    def get_api_keys(self, lookups: Sequence[str]) -> list[ApiKey]:
        """The keys with these lookup ids (in no order), revoked or expired ones included.

        One statement where the dialect has a set statement; the caller bounds the
        set's size.
        """
        if not lookups:
            return []
        if self._list is None:
            return [k for k in map(self.get_api_key, lookups) if k is not None]
        rows = self._storage.fetch_all(
            self._sql["get_api_keys"], {"lookups": self._values(lookups)}
        )
        return [self._key(r) for r in rows]

    def touch_api_keys(self, uses: Mapping[uuid.UUID, datetime]) -> None:
        """``touch_api_key`` for each key id, to its own time: one statement if the dialect can."""
        if self._list is None:
            for key_id, now in uses.items():
                self.touch_api_key(key_id, now)
        elif uses:
            params = {"ids": self._values(list(uses)), "ats": self._values(list(uses.values()))}
            self._storage.execute(self._sql["touch_api_keys"], params)
