"""End to end, as an operator meets the plugin: the CLI finds it, migrates, and serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from userplane.plugin import ConfigurationError, NewUser, Registry, Settings

pytestmark = pytest.mark.e2e

#: The built-in audit plugin refuses MariaDB (it has statements for SQLite and PostgreSQL).
WITHOUT_AUDIT = {"USERPLANE_DISABLED_PLUGINS": "audit"}


def _cli(*args: str, url: str = "sqlite:///unused.db") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **WITHOUT_AUDIT, "USERPLANE_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "userplane", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_lists_the_plugin_with_its_distribution() -> None:
    done = _cli("plugins", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert rows["mariadb"]["distribution"].startswith("userplane-mariadb ")
    assert rows["mariadb"]["module"] == "userplane_mariadb"
    assert "userplane_open_storage" in rows["mariadb"]["hooks"]
    assert not rows["mariadb"]["broken"]


def test_migrate_then_create_an_api_key_with_the_cli(
    create_mariadb_database: Callable[[], str],
) -> None:
    url = create_mariadb_database()
    migrated = _cli("migrate", url=url)
    assert migrated.returncode == 0, migrated.stderr
    assert "0004_encryption" in migrated.stdout
    assert "api_keys_0001_api_keys" in migrated.stdout
    created = _cli("keys", "create", "--name", "ci", "--role", "admin", "--format", "json", url=url)
    assert created.returncode == 0, created.stderr
    [key] = [json.loads(line) for line in created.stdout.splitlines()]
    assert key["key"].startswith("up_")
    listed = _cli("keys", "list", "--format", "json", url=url)
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [key["id"]]


def test_a_registry_on_mariadb_migrates_and_serves_users(
    create_mariadb_database: Callable[[], str],
) -> None:
    url = create_mariadb_database()
    with pytest.raises(ConfigurationError, match=r"USERPLANE_DISABLED_PLUGINS=audit"):
        Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": url}))
    with Registry(
        Settings.from_mapping({**WITHOUT_AUDIT, "USERPLANE_DATABASE_URL": url})
    ) as registry:
        assert registry.storage.name == "mariadb"
        assert registry.migrate()
        assert all(m.applied for m in registry.migration_status())
        registry.ping()
        user = registry.users.create(NewUser("Zoë@Example.org", "Zoë Ōtsuka 😀"))
        assert registry.users.get(user.id) == user
        assert registry.users.get_by_email("zoë@example.org") == user
