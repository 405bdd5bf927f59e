"""The core's SQL migrations, one folder per dialect, with the same numbering and meaning.

Applied with the plugins' own by ``userplane.sql.apply_migrations``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def folder(dialect: str) -> Path | None:
    """The folder of ``dialect``'s migrations (``sqlite``, ``postgresql``), or ``None``."""
    path = Path(str(files(__name__).joinpath(dialect)))
    return path if path.is_dir() else None
