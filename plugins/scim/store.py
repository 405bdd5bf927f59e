"""What SCIM clients wrote of a user beyond the user's own fields: ``scim_users``.

A client's ``userName`` is usually the user's email address; it need not be
(an employee number, a login). The row holds it only where it differs from
the address, so that while personal data is encrypted no address is ever
stored in the clear here. It holds too the ``type`` and ``primary`` the
client gave the address, so that what it wrote reads back as written. A
user no client wrote has no row: its userName is its address, which is its
work address, primary. Filters reach the row through ``Linked`` fields
(``USER_NAME``, ``EMAIL_TYPE``, ``EMAIL_PRIMARY``, ``ROW``) in the core's SQL.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import attrs

from userplane.plugin import ConfigurationError, Linked, fold
from userplane.sql import SQLStorage, load_queries

#: The dialects this plugin has migrations for.
DIALECTS: Final = ("postgresql", "sqlite")
_TABLE: Final = "scim_users"
#: The folded userName, as filters compare it (only where it is not the address).
USER_NAME: Final = Linked(_TABLE, "user_name_key", "folded")
#: The address's type and primary flag (``"true"``/``"false"``), as the client gave them.
EMAIL_TYPE: Final = Linked(_TABLE, "email_type_key", "folded")
EMAIL_PRIMARY: Final = Linked(_TABLE, "email_primary", "exact")
#: Present when a client wrote the user (``user_id`` is never NULL).
ROW: Final = Linked(_TABLE, "user_id", "exact")

_QUERIES = load_queries(__package__ or "userplane.plugins.scim")


@attrs.frozen
class ScimUser:
    """One row: ``user_name`` ``None`` when it is the address."""

    user_name: str | None = None
    email_type: str | None = None
    email_primary: bool | None = None


class ScimUsers:
    """The rows over a ``SQLStorage``. Raises what the storage raises."""

    def __init__(self, storage: SQLStorage) -> None:
        dialect = storage.dialect.name
        if dialect not in DIALECTS:
            raise ConfigurationError(
                f"the scim plugin has no tables for the {dialect} dialect "
                f"(only {', '.join(DIALECTS)}): disable it (USERPLANE_DISABLED_PLUGINS=scim)"
            )
        self._storage = storage
        self._sql = {name: storage.dialect.compile(sql) for name, sql in _QUERIES.items()}

    def _params(self, **params: Any) -> dict[str, Any]:
        return self._storage.params(params)

    def ping(self) -> None:
        """Prove the table answers; ``Unavailable`` (e.g. not migrated) otherwise."""
        self._storage.fetch_all(self._sql["ping"], {})

    def get(self, user_id: uuid.UUID) -> ScimUser | None:
        """The row of a user, if a client wrote it."""
        row = self._storage.fetch_one(self._sql["get"], self._params(user_id=user_id))
        if row is None:
            return None
        name, kind, primary = row
        return ScimUser(name, kind, None if primary is None else primary == "true")

    def holder(self, key: str) -> uuid.UUID | None:
        """The user whose stored userName folds to ``key``."""
        row = self._storage.fetch_one(self._sql["by_key"], self._params(user_name_key=key))
        return None if row is None else self._storage.uuid_from_db(row[0])

    def put(self, user_id: uuid.UUID, row: ScimUser, key: str | None) -> None:
        """Store ``row`` for a user (``key``: its folded userName); ``Conflict`` if taken.

        Runs in the caller's transaction: a user's write and its row commit together.
        """
        primary = None if row.email_primary is None else str(row.email_primary).lower()
        with self._storage.transaction():
            self._storage.execute(self._sql["delete"], self._params(user_id=user_id))
            self._storage.execute(
                self._sql["insert"],
                self._params(
                    user_id=user_id,
                    user_name=row.user_name,
                    user_name_key=key,
                    email_type=row.email_type,
                    email_type_key=None if row.email_type is None else fold(row.email_type),
                    email_primary=primary,
                ),
            )
