"""The README's administrator walkthrough, run line by line against a real ``userplane serve``."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from serving import SCRIPT, running_server

# A real server and the walkthrough's processes.
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- admin-walkthrough -->"


def walkthrough() -> str:
    """The shell block right after the marker in README.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.split(MARKER, 1)[1]
    match = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert match is not None, "no sh block after the walkthrough marker"
    return match.group(1)


def test_the_walkthrough_runs_as_written(
    tmp_path: Path, create_postgresql_database: Callable[[], str]
) -> None:
    script = walkthrough()
    assert "8000" in script
    env_file = tmp_path / ".env"
    env_file.write_text("")
    target = create_postgresql_database()
    with running_server(
        tmp_path,
        "sqlite:///userplane.db",  # the default's file, relative to the folder both run in
        "sqlite",
        {"USERPLANE_ENV_FILE": str(env_file)},
        with_key=False,
    ) as srv:
        env = {
            **srv.env,
            "TARGET_URL": target,
            "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ['PATH']}",
        }
        # The one change: the port the test's server listens on.
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script.replace("8000", str(srv.port))],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, (done.stdout, done.stderr)
    out = done.stdout
    # check: every line ok; import: both users, then neither again
    assert "2 rows: 2 created" in out
    assert "2 rows: 0 created, 0 updated, 0 unchanged, 2 skipped" in out
    with (tmp_path / "users.csv").open(newline="") as f:
        exported = {row["email"]: row["full_name"] for row in csv.DictReader(f)}
    assert exported == {"ann@example.org": "Ann", "bob@example.org": ""}
    objects = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {u["email"] for u in objects if "email" in u} == set(exported)
    # The identity provider's lookup finds Ann; the CLI shows the same SCIM user.
    found = json.loads((tmp_path / "ann-scim.json").read_text())
    assert found["totalResults"] == 1
    (ann,) = found["Resources"]
    assert ann["userName"] == "ann@example.org"
    shown = json.loads((tmp_path / "ann-scim-cli.json").read_text())
    assert (shown["id"], shown["userName"]) == (ann["id"], ann["userName"])
    reports = json.loads((tmp_path / "reports-key.json").read_text())
    assert reports["key"].startswith("up_")
    assert reports["role"] == "viewer"
    revoked = next(o for o in objects if o.get("id") == reports["id"] and "prefix" in o)
    assert revoked["revoked_at"] is not None
    assert out.splitlines()[-1].startswith("copied ")  # copy's summary
    # The copy holds the same users: the target answers the CLI.
    moved = subprocess.run(
        [str(SCRIPT), "users", "list", "--format", "json"],
        env={**srv.env, "USERPLANE_DATABASE_URL": target},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert {json.loads(line)["email"] for line in moved.stdout.splitlines()} == set(exported)
