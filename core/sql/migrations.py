"""Schema migrations for SQL stores: yoyo over the core's folder and the plugins'.

Every store applies the core's migrations for its dialect, then each plugin's
(``userplane_migrations``), under yoyo's lock, so concurrent runs (several
instances starting at once) apply each migration exactly once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from userplane.errors import ConfigurationError
from userplane.hooks import PluginMigrations
from userplane.storage import MigrationState

CORE_SOURCE = "userplane"


def migration_sources(
    dialect: str, core: Path | None, plugins: Sequence[PluginMigrations]
) -> list[tuple[str, Path]]:
    """``(source, folder)`` pairs for ``dialect``: the core's first, then each plugin's.

    A plugin with migrations, but none for this dialect, is a
    ``ConfigurationError``: its tables would be missing.
    """
    if core is None:
        raise ConfigurationError(f"no core migrations for the {dialect!r} dialect")
    sources = [(CORE_SOURCE, core)]
    for plugin in plugins:
        folder = plugin.folders.get(dialect)
        if folder is None:
            known = ", ".join(sorted(plugin.folders))
            raise ConfigurationError(
                f"the {plugin.plugin!r} plugin has no migrations for {dialect} (only {known}): "
                "disable it (USERPLANE_DISABLED_PLUGINS) or use a storage it supports"
            )
        sources.append((plugin.plugin, folder))
    return sources


#: How long a SQLite migration waits for another process's to release the file.
SQLITE_MIGRATION_WAIT_MS = 60_000


#: A folder, and the name, modification time and size of each file in it.
_Signature = tuple[str, tuple[tuple[str, int, int], ...]]
#: Migrations read and parsed, by their folders' signatures.
_parsed: dict[tuple[_Signature, ...], tuple[Any, Any]] = {}
_parsed_lock = threading.Lock()


def _signature(folder: str) -> _Signature:
    """``folder`` and the name, modification time and size of each file in it."""
    entries = []
    try:
        for entry in os.scandir(folder):
            stat = entry.stat()
            entries.append((entry.name, stat.st_mtime_ns, stat.st_size))
    except OSError:
        entries = []
    return folder, tuple(sorted(entries))


def _read(folders: Sequence[str]) -> Any:
    """yoyo's migrations of ``folders``, parsed once per process while the files stay.

    yoyo splits each SQL file with sqlparse, which cost a registry some 30 ms of
    CPU per migrate (every test's registry, every process's start). The parsed
    migrations are shared: each is loaded here, under the lock, and only read after.
    """
    from yoyo import read_migrations
    from yoyo.migrations import MigrationList

    key = tuple(_signature(folder) for folder in folders)
    with _parsed_lock:
        found = _parsed.get(key)
        if found is None:
            migrations = read_migrations(*folders)
            for migration in [*migrations, *migrations.post_apply]:
                migration.load()
            if len(_parsed) >= 64:  # folders of tests' throwaway plugins, say
                _parsed.clear()
            found = _parsed[key] = (list(migrations), list(migrations.post_apply))
    return MigrationList(*found)


def _load(url: str, sources: Sequence[tuple[str, Path]]) -> tuple[Any, Any, dict[str, str]]:
    from yoyo import get_backend

    migrations = _read([str(folder) for _, folder in sources])
    owner = {}
    for source, folder in sources:
        for path in folder.glob("*.sql"):
            if not path.name.endswith(".rollback.sql"):
                owner[path.stem] = source
    backend = get_backend(url)
    if getattr(backend.connection, "prepare_threshold", None) is not None:
        # psycopg prepares a statement run five times on one connection; through a
        # pooler in transaction mode (PgBouncer) the next transaction may be on a
        # server that already has that name, or lacks it. Migrations gain nothing
        # from preparing, so never.
        backend.connection.prepare_threshold = None
    if url.startswith("sqlite"):
        # Several processes starting at once (gunicorn workers, instances) migrate at once:
        # one holds the file's write lock while it applies; the others wait for it rather
        # than fail after sqlite3's default 5 s on a loaded machine.
        backend.connection.execute(f"PRAGMA busy_timeout = {SQLITE_MIGRATION_WAIT_MS}")
    return backend, migrations, owner


def apply_migrations(url: str, sources: Sequence[tuple[str, Path]]) -> list[str]:
    """Apply the pending migrations of ``sources`` to the database at yoyo ``url``; their ids."""
    backend, migrations, _ = _load(url, sources)
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    finally:
        backend.connection.close()


def migration_status(url: str, sources: Sequence[tuple[str, Path]]) -> list[MigrationState]:
    """Every migration of ``sources`` in order, with its source and whether it is applied."""
    backend, migrations, owner = _load(url, sources)
    try:
        return [
            MigrationState(m.id, bool(backend.is_applied(m)), owner.get(m.id, CORE_SOURCE))
            for m in migrations
        ]
    finally:
        backend.connection.close()
