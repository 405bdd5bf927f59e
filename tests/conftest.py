"""Shared fixtures: a migrated registry on a fresh SQLite file per test, and clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from falcon import testing

from userplane import Registry, Settings
from userplane.frontends.http import create_app


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A SQLite database of this test's own."""
    return f"sqlite:///{tmp_path / 'userplane.db'}"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url})


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with Registry(settings) as reg:
        reg.storage.migrate()
        yield reg


@pytest.fixture
def client(registry: Registry) -> testing.TestClient:
    return testing.TestClient(create_app(registry))
