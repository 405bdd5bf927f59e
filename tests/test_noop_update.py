"""An update that changes nothing writes nothing: same version, same ETag, no record, no event.

On both backends, with the records of changes on (the audit and webhooks
plugins: the comparison is made under the write's lock) and off (a plain
read), with personal data sealed and not; then through the HTTP API and the CLI.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from clients import client_for

from userplane import Registry, Settings
from userplane.changes import Change
from userplane.errors import NotFound, PreconditionFailed
from userplane.frontends.cli import cli
from userplane.keyring import NamedKey
from userplane.plugin import User, hookimpl
from userplane.sealed_storage import INDEX_KEYS_SETTING, KEYS_SETTING
from userplane.users import NewUser, UserChanges


class Observer:
    """Every ``user_updated`` event and every committed change of a user update."""

    def __init__(self) -> None:
        self.updated: list[tuple[User, frozenset[str]]] = []
        self.committed: list[Change] = []

    @hookimpl
    def userplane_user_updated(self, user: User, changed: frozenset[str]) -> None:
        self.updated.append((user, changed))

    @hookimpl
    def userplane_changes_committed(self, changes: Sequence[Change]) -> None:
        self.committed += [c for c in changes if c.action == "user.updated"]


@pytest.fixture
def observer() -> Observer:
    return Observer()


@pytest.fixture(params=["recorded", "unrecorded"])
def recorded(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "recorded")


@pytest.fixture(params=["plain", "sealed"])
def sealed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "sealed")


@pytest.fixture
def registry(
    database_url: str,
    recorded: bool,
    sealed: bool,
    observer: Observer,
    k1: NamedKey,
    i1: NamedKey,
) -> Iterator[Registry]:
    env = {"USERPLANE_DATABASE_URL": database_url}
    if not recorded:  # the built-in plugins that record changes
        env["USERPLANE_DISABLED_PLUGINS"] = "audit,webhooks"
    if sealed:
        env[KEYS_SETTING] = k1.entry()
        env[INDEX_KEYS_SETTING] = i1.entry()
    with Registry(Settings.from_mapping(env), plugins=[observer]) as reg:
        reg.migrate()
        assert reg.changes.active is recorded
        yield reg


def ann(registry: Registry) -> User:
    return registry.users.create(NewUser("Ann@Example.org", full_name="Ann", is_active=True))


SAME: list[dict[str, Any]] = [
    {},
    {"email": "Ann@Example.org"},
    {"full_name": "Ann"},
    {"is_active": True},
    {"email": "Ann@Example.org", "full_name": "Ann", "is_active": True},
]


@pytest.mark.parametrize("fields", SAME, ids=lambda f: ",".join(f) or "empty")
def test_a_change_to_the_same_values_writes_nothing(
    registry: Registry, observer: Observer, fields: dict[str, Any]
) -> None:
    user = ann(registry)
    for expected_version in (None, user.version):
        assert registry.users.update(user.id, UserChanges(**fields), expected_version) == user
    assert registry.users.get(user.id) == user  # version and updated_at as they were
    assert observer.updated == []
    assert observer.committed == []


def test_a_cleared_name_cleared_again_writes_nothing(
    registry: Registry, observer: Observer
) -> None:
    user = registry.users.create(NewUser("bob@example.org"))
    assert registry.users.update(user.id, UserChanges(full_name=None)) == user
    assert registry.users.set_active(user.id, True) == user
    assert observer.updated == []


def test_an_email_in_another_letter_case_is_a_change(
    registry: Registry, observer: Observer, recorded: bool
) -> None:
    # The same address to the unique index, but not the stored spelling: written.
    user = ann(registry)
    updated = registry.users.update(user.id, UserChanges(email="ann@example.org"))
    assert (updated.email, updated.version) == ("ann@example.org", user.version + 1)
    assert registry.users.get(user.id) == updated
    assert observer.updated == [(updated, frozenset({"email"}))]
    assert len(observer.committed) == (1 if recorded else 0)


def test_one_field_that_differs_writes_every_requested_field(
    registry: Registry, observer: Observer
) -> None:
    user = ann(registry)
    changes = UserChanges(full_name="Ann", is_active=False)
    updated = registry.users.update(user.id, changes, expected_version=user.version)
    assert (updated.full_name, updated.is_active, updated.version) == ("Ann", False, 2)
    assert observer.updated == [(updated, frozenset({"full_name", "is_active"}))]
    # and setting it back to what it now is is a no-op again
    assert registry.users.set_active(user.id, False) == updated


@pytest.mark.parametrize("same", [UserChanges(), UserChanges(full_name="Ann B.")], ids=repr)
def test_a_no_op_still_checks_the_version_and_the_user(
    registry: Registry, observer: Observer, same: UserChanges
) -> None:
    user = ann(registry)
    moved = registry.users.update(user.id, UserChanges(full_name="Ann B."))
    with pytest.raises(PreconditionFailed):
        registry.users.update(user.id, same, expected_version=user.version)
    assert registry.users.update(user.id, same, expected_version=moved.version) == moved
    with pytest.raises(NotFound):
        registry.users.update(uuid.uuid4(), same)
    with pytest.raises(NotFound):
        registry.users.update(uuid.uuid4(), same, expected_version=1)
    deleted = registry.users.delete(user.id)
    with pytest.raises(NotFound):
        registry.users.update(user.id, same)
    with pytest.raises(NotFound):
        registry.users.update(user.id, same, expected_version=deleted.version)
    assert registry.users.get(user.id, include_deleted=True) == deleted
    assert observer.updated == [(moved, frozenset({"full_name"}))]


# -- through the frontends ---------------------------------------------------------------


def test_patch_with_the_same_values_keeps_the_etag(registry: Registry) -> None:
    client = client_for(registry)
    created = client.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    assert created.status_code == 201, created.text
    path = f"/api/v1/users/{created.json['id']}"
    etag = created.headers["ETag"]
    for body, headers in [
        ({"email": "ann@example.org", "full_name": None, "is_active": True}, {}),
        ({}, {"If-Match": etag}),
        ({"full_name": None}, {"If-Match": etag}),
    ]:
        resp = client.simulate_patch(path, json=body, headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.headers["ETag"] == etag
        assert resp.json == created.json
    stale = client.simulate_patch(path, json={}, headers={"If-Match": '"7"'})
    assert stale.status_code == 412, stale.text
    changed = client.simulate_patch(path, json={"email": "Ann@example.org"})
    assert changed.status_code == 200, changed.text
    assert changed.headers["ETag"] != etag
    assert changed.json["version"] == created.json["version"] + 1


def test_cli_update_to_the_same_name_prints_the_same_version(tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"  # and no stray .env
    env_file.touch()
    env = {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(
            cli, ["--env-file", str(env_file), *args], env=env, catch_exceptions=False
        )

    def run(*args: str) -> dict[str, Any]:
        result = invoke(*args, "--format", "json")
        assert result.exit_code == 0, (result.stdout, result.stderr)
        [row] = [json.loads(line) for line in result.stdout.splitlines()]
        return dict(row)

    assert invoke("migrate").exit_code == 0
    created = run("users", "create", "--email", "ann@example.org", "--full-name", "Ann")
    same = run("users", "update", "ann@example.org", "--full-name", "Ann")
    assert same == created
    assert same["version"] == 1
    renamed = run("users", "update", "ann@example.org", "--full-name", "Ann B.")
    assert renamed["version"] == 2
