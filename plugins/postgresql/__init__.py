"""The PostgreSQL storage plugin (``postgresql://`` and ``postgres://`` URLs).

Needs the ``postgresql`` extra: ``pip install 'userplane[postgresql]'``. The
driver is imported only when such a URL is configured, so this plugin loads
(and stays out of the way) where the extra is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from userplane.plugin import ConfigurationError, Settings, hookimpl, mask_url

if TYPE_CHECKING:
    from userplane.plugins.postgresql.store import PostgreSQLStorage

SCHEMES = frozenset({"postgresql", "postgres"})


@hookimpl
def userplane_open_storage(settings: Settings) -> PostgreSQLStorage | None:
    """Serve ``postgresql:`` and ``postgres:`` URLs."""
    if urlsplit(settings.database_url).scheme not in SCHEMES:
        return None
    for replica in settings.database_replica_urls:
        if urlsplit(replica).scheme not in SCHEMES:
            raise ConfigurationError(
                "USERPLANE_DATABASE_REPLICA_URLS: every replica is a postgresql:// URL, "
                f"not {mask_url(replica)!r}"
            )
    if (
        settings.database_replica_urls
        and settings.db_read_your_writes_ms < settings.db_replica_max_lag_ms
    ):
        raise ConfigurationError(
            "USERPLANE_DB_READ_YOUR_WRITES_MS: must be at least USERPLANE_DB_REPLICA_MAX_LAG_MS "
            f"({settings.db_read_your_writes_ms} < {settings.db_replica_max_lag_ms}), or a "
            "replica could still miss a principal's write once its window has passed"
        )
    try:
        from userplane.plugins.postgresql.store import PostgreSQLStorage
    except ImportError as exc:
        raise ConfigurationError(
            "USERPLANE_DATABASE_URL names PostgreSQL, but its driver is not installed: "
            f"pip install 'userplane[postgresql]' ({exc})"
        ) from None
    return PostgreSQLStorage(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_pool_timeout_ms / 1000,
        max_waiting=settings.db_pool_max_waiting,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        prepared_statements={"auto": None, "true": True, "false": False}[
            settings.db_prepared_statements
        ],
        replica_urls=settings.database_replica_urls,
        replica_max_lag_ms=settings.db_replica_max_lag_ms,
    )
