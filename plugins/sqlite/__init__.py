"""The SQLite storage plugin: the embedded default (``sqlite:///path``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from userplane.plugin import ConfigurationError, Settings, hookimpl

if TYPE_CHECKING:
    from userplane.plugins.sqlite.store import SQLiteStorage

__all__ = ["SQLiteStorage", "sqlite_path"]


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigurationError(
            "USERPLANE_DATABASE_URL: a sqlite URL has no host; use sqlite:///relative.db "
            "or sqlite:////absolute/path.db"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:":
        raise ConfigurationError(
            "USERPLANE_DATABASE_URL: give SQLite a file (an in-memory database is not "
            "shared between connections or workers)"
        )
    return path


@hookimpl
def userplane_open_storage(settings: Settings) -> SQLiteStorage | None:
    """Serve ``sqlite:`` URLs."""
    if urlsplit(settings.database_url).scheme != "sqlite":
        return None
    path = sqlite_path(settings.database_url)
    from userplane.plugins.sqlite.store import SQLiteStorage

    return SQLiteStorage(settings.database_url, path, settings.sqlite_busy_timeout_ms)


@hookimpl
def userplane_describe(settings: Settings) -> dict[str, str]:
    """The database file, by its absolute path: which file a relative URL means here."""
    if urlsplit(settings.database_url).scheme != "sqlite":
        return {}
    return {"database": os.path.abspath(sqlite_path(settings.database_url))}


if not TYPE_CHECKING:  # mypy sees the import above, and no catch-all attribute

    def __getattr__(name: str) -> object:
        # The store (sqlite3, the SQL layer, the users module) is imported on
        # first use: every userplane process loads this plugin, --help too.
        if name == "SQLiteStorage":
            from userplane.plugins.sqlite.store import SQLiteStorage

            return SQLiteStorage
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
