"""The SQL migrations, one folder per dialect, with the same numbering and meaning."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any


def folder(dialect: str) -> Path:
    """The folder of ``dialect``'s migrations (``sqlite``, ``postgresql``) on disk."""
    return Path(str(files(__name__).joinpath(dialect)))


def _load(url: str, dialect: str) -> tuple[Any, Any]:
    from yoyo import get_backend, read_migrations

    return get_backend(url), read_migrations(str(folder(dialect)))


def apply(url: str, dialect: str) -> list[str]:
    """Apply ``dialect``'s pending migrations to the database at yoyo ``url``.

    yoyo's lock makes concurrent runs (several instances starting at once)
    apply each migration exactly once. Returns the ids applied.
    """
    backend, migrations = _load(url, dialect)
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    finally:
        backend.connection.close()


def status(url: str, dialect: str) -> list[tuple[str, bool]]:
    """Every migration of ``dialect`` in order, with whether it is applied."""
    backend, migrations = _load(url, dialect)
    try:
        return [(m.id, bool(backend.is_applied(m))) for m in migrations]
    finally:
        backend.connection.close()
