"""A userplane storage plugin for MariaDB: ``mariadb://`` and ``mysql://`` URLs.

``USERPLANE_DATABASE_URL=mariadb://user:password@host:3306/userplane`` (add
``?unix_socket=/run/mysqld/mysqld.sock`` to connect through a socket). Built on
the public plugin API only: ``userplane.plugin``, ``userplane.sql`` and, for its
tests, ``userplane.testing``. The store (and PyMySQL) is imported only when such
a URL is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from userplane.plugin import Settings, hookimpl

if TYPE_CHECKING:
    from userplane_mariadb.store import MariaDBStorage


@hookimpl
def userplane_open_storage(settings: Settings) -> MariaDBStorage | None:
    """Serve ``mariadb:`` and ``mysql:`` URLs; connect on first use, not now."""
    if urlsplit(settings.database_url).scheme not in ("mariadb", "mysql"):
        return None
    from userplane_mariadb.store import MariaDBStorage

    # Connecting waits what a pool checkout would; statements and lock waits, their timeout.
    timeouts = (settings.db_pool_timeout_ms / 1000, settings.db_statement_timeout_ms / 1000)
    return MariaDBStorage(settings.database_url, *timeouts)
