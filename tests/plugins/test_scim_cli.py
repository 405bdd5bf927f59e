"""``userplane scim user|group``: what a SCIM client sees, from the command line.

In-process through CliRunner on SQLite and PostgreSQL over a database a SCIM
client wrote (through the app, with a provisioner key), and as a real process
for the exit code and the one line on stderr. The output is the resource
``/scim/v2`` serves, byte for byte the same JSON but for its base URL.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from clients import client_for

from userplane import Registry
from userplane.errors import NotFound
from userplane.frontends.cli import cli
from userplane.frontends.cli.errors import EXIT_CODES
from userplane.hooks import Hooks
from userplane.plugin_manager import make_plugin_manager
from userplane.settings import Settings

PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"
SCRIPT = Path(sys.executable).parent / "userplane"
SCIM = {"Content-Type": "application/scim+json"}
BASE = "https://id.example.org/scim/v2"


@pytest.fixture(scope="module")
def group() -> click.Group:
    """``userplane`` with the plugins' commands, as ``main()`` adds them (on a copy)."""
    g = copy.copy(cli)
    g.commands = dict(cli.commands)
    Hooks(make_plugin_manager()).cli_commands(g)
    assert "scim" in g.commands
    return g


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No USERPLANE_* from the outer environment; the root logger restored afterwards."""
    for name in list(os.environ):
        if name.startswith("USERPLANE_") and name != PG_ENV:
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def written(database_url: str) -> dict[str, Any]:
    """A user and a group as a SCIM client wrote them, and what /scim/v2 serves of them."""
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_SCIM_BASE_URL": BASE}
    )
    with Registry(settings) as registry:
        registry.migrate()
        client = client_for(registry, "provisioner")
        user = client.simulate_post(
            "/scim/v2/Users",
            headers=SCIM,
            body=json.dumps(
                {
                    "userName": "bjensen",
                    "displayName": "Barbara Jensen",
                    "externalId": "00u1",
                    "emails": [{"value": "b.jensen@example.org", "type": "home"}],
                }
            ),
        )
        assert user.status_code == 201, user.text
        group = client.simulate_post(
            "/scim/v2/Groups",
            headers=SCIM,
            body=json.dumps({"displayName": "Team", "members": [{"value": user.json["id"]}]}),
        )
        assert group.status_code == 201, group.text
        served = {
            "user": client.simulate_get(f"/scim/v2/Users/{user.json['id']}").json,
            "group": client.simulate_get(f"/scim/v2/Groups/{group.json['id']}").json,
        }
    return {"database_url": database_url, **served}


def _run(group: click.Group, database_url: str, tmp_path: Path, *args: str) -> Result:
    env_file = tmp_path / "empty.env"
    env_file.touch()
    return CliRunner().invoke(
        group,
        ["--env-file", str(env_file), *args],
        env={
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_SCIM_BASE_URL": BASE,
            "USERPLANE_LOG_FORMAT": "json",
        },
        catch_exceptions=False,
    )


def test_a_user_by_user_name_id_or_address_is_what_scim_serves(
    group: click.Group, written: dict[str, Any], tmp_path: Path
) -> None:
    served = written["user"]
    assert served["userName"] == "bjensen"  # not the address: only the plugin keeps it
    for who in ("bjensen", "BJensen", served["id"], "B.Jensen@example.org"):
        result = _run(group, written["database_url"], tmp_path, "scim", "user", who)
        assert result.exit_code == 0, (who, result.stderr)
        assert json.loads(result.stdout) == served, who


def test_a_group_by_id_or_name_is_what_scim_serves(
    group: click.Group, written: dict[str, Any], tmp_path: Path
) -> None:
    served = written["group"]
    assert len(served["members"]) == 1
    for who in ("Team", "team", served["id"]):
        result = _run(group, written["database_url"], tmp_path, "scim", "group", who)
        assert result.exit_code == 0, (who, result.stderr)
        assert json.loads(result.stdout) == served, who


@pytest.mark.parametrize(
    ("command", "who"),
    [
        ("user", "nobody"),
        ("user", "nobody@example.org"),
        ("user", "2f7a5d1e-0000-4000-8000-000000000000"),
        ("group", "Nobody"),
    ],
)
def test_no_such_one_is_one_line_and_the_not_found_exit(
    group: click.Group, written: dict[str, Any], tmp_path: Path, command: str, who: str
) -> None:
    result = _run(group, written["database_url"], tmp_path, "scim", command, who)
    assert result.exit_code == EXIT_CODES[NotFound]
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", ["sqlite"])  # a process on one backend: the rest is above
def test_as_a_process(written: dict[str, Any], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    env |= {
        "USERPLANE_DATABASE_URL": written["database_url"],
        "USERPLANE_SCIM_BASE_URL": BASE,
        "USERPLANE_ENV_FILE": str(tmp_path / "none.env"),
    }
    done = subprocess.run(
        [str(SCRIPT), "scim", "user", "bjensen"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == written["user"]
    missing = subprocess.run(
        [str(SCRIPT), "scim", "user", "nobody"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == EXIT_CODES[NotFound]
    assert missing.stdout == ""
    assert missing.stderr == "userplane: not-found: no user with userName 'nobody'\n"
