"""A registry opened with keyrings, for tests of encryption (the keys are fixtures: conftest)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from userplane import Registry, Settings
from userplane.keyring import NamedKey
from userplane.sealed_storage import INDEX_KEYS_SETTING, KEYS_SETTING


@contextlib.contextmanager
def opened(
    database_url: str, keys: Sequence[NamedKey] | None, index: str | None
) -> Iterator[Registry]:
    """A migrated registry; ``index`` is the text of USERPLANE_ENCRYPTION_INDEX_KEYS."""
    env = {"USERPLANE_DATABASE_URL": database_url}
    if keys is not None:
        env[KEYS_SETTING] = ",".join(k.entry() for k in keys)
    if index is not None:
        env[INDEX_KEYS_SETTING] = index
    with Registry(Settings.from_mapping(env)) as registry:
        registry.migrate()
        yield registry
