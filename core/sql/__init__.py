"""The SQL kit for storage plugins: a base class, dialects, named queries, schema, migrations.

Public API (``__all__``). A SQL storage plugin subclasses ``SQLStorage``,
declares its ``Dialect``, loads its ``queries.sql`` with ``load_queries``
(every name in ``NAMED_QUERIES``), ships migrations creating the published
``SCHEMA`` unless the core ships them for its dialect, and proves the whole
with ``userplane.testing.StorageContract``. See ``docs/plugins.md``.
"""

from __future__ import annotations

from userplane.sql.dialect import Dialect
from userplane.sql.listing import SORT_COLUMNS, list_users_sql
from userplane.sql.migrations import apply_migrations, migration_sources, migration_status
from userplane.sql.queries import (
    NAMED_QUERIES,
    NamedQuery,
    check_queries,
    load_queries,
    parse_queries,
)
from userplane.sql.schema import SCHEMA, SCHEMA_VERSION, USER_COLUMNS, Column
from userplane.sql.storage import (
    Row,
    SQLStorage,
    insert_params,
    update_params,
    write_missed,
)

__all__ = [
    "NAMED_QUERIES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SORT_COLUMNS",
    "USER_COLUMNS",
    "Column",
    "Dialect",
    "NamedQuery",
    "Row",
    "SQLStorage",
    "apply_migrations",
    "check_queries",
    "insert_params",
    "list_users_sql",
    "load_queries",
    "migration_sources",
    "migration_status",
    "parse_queries",
    "update_params",
    "write_missed",
]
