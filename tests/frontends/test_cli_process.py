"""The admin CLI as a real process: ``python -m userplane`` and the ``userplane`` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import userplane

# Real CLI processes.
pytestmark = pytest.mark.e2e

SCRIPT = Path(sys.executable).parent / "userplane"
ENTRY_POINTS = {
    "module": [sys.executable, "-m", "userplane"],
    "script": [str(SCRIPT)],
}
#: A safety limit for one CLI run, not a performance expectation.
TIMEOUT = 60


class Proc:
    """Runs the CLI in ``tmp_path`` with this test's own database and no stray settings."""

    def __init__(self, tmp_path: Path, command: list[str]) -> None:
        self.tmp_path = tmp_path
        self.command = command
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
        self.env.update(
            USERPLANE_DATABASE_URL=f"sqlite:///{tmp_path}/cli.db",
            USERPLANE_LOG_FORMAT="json",
            USERPLANE_ENV_FILE=str(tmp_path / "no-such.env"),
        )

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, input: str = ""
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args],
            env={**self.env, **(env or {})},
            cwd=self.tmp_path,
            input=input,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def ok(self, *args: str, **kwargs: Any) -> str:
        proc = self(*args, **kwargs)
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        assert proc.stderr == ""
        return proc.stdout

    def json(self, *args: str, **kwargs: Any) -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in self.ok(*args, "--format", "json", **kwargs).splitlines()
        ]

    def fails(self, code: int, *args: str, **kwargs: Any) -> str:
        """Expect exit ``code``, no stdout and exactly one line on stderr; return that line."""
        proc = self(*args, **kwargs)
        assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        return lines[0]


@pytest.fixture(params=sorted(ENTRY_POINTS))
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Proc:
    return Proc(tmp_path, ENTRY_POINTS[request.param])


@pytest.fixture
def module(tmp_path: Path) -> Proc:
    """Only ``python -m userplane``, for checks that need not run twice."""
    return Proc(tmp_path, ENTRY_POINTS["module"])


def test_console_script_sits_next_to_the_interpreter() -> None:
    assert SCRIPT.is_file()
    assert os.access(SCRIPT, os.X_OK)


def test_version(run: Proc) -> None:
    assert run.ok("--version") == f"userplane, version {userplane.__version__}\n"


def test_help(run: Proc) -> None:
    out = run.ok("--help")
    assert out.startswith("Usage: userplane [OPTIONS] COMMAND [ARGS]...")
    for command in ("config", "migrate", "plugins", "serve", "users"):
        assert f"  {command} " in out
    assert run.ok("-h") == out


def test_migrate_create_get_round_trip(run: Proc) -> None:
    applied = run.ok("migrate")
    assert applied.startswith("applied: ")
    assert run.ok("migrate") == "nothing to apply: the schema is up to date\n"

    [created] = run.json("users", "create", "--email", "Ann@Example.org", "--full-name", "Ann")
    assert created["email"] == "Ann@Example.org"
    assert created["full_name"] == "Ann"
    assert created["version"] == 1

    assert run.json("users", "get", created["id"]) == [created]
    assert run.json("users", "get", "ANN@EXAMPLE.ORG") == [created]
    assert run.json("users", "list") == [created]
    table = run.ok("users", "get", created["id"]).splitlines()
    assert table[0].split() == [
        "ID",
        "EMAIL",
        "FULL_NAME",
        "IS_ACTIVE",
        "CREATED_AT",
        "VERSION",
        "DELETED_AT",
    ]
    name_and_state = ["Ann@Example.org", "Ann", "yes"]
    assert table[1].split() == [created["id"], *name_and_state, created["created_at"], "1", "-"]
    assert (run.tmp_path / "cli.db").is_file()


def test_an_error_is_one_line_on_stderr(run: Proc) -> None:
    run.ok("migrate")
    unknown = str(uuid.uuid4())
    line = run.fails(3, "users", "get", unknown)
    assert line == f"userplane: not-found: no user with id {unknown}"


def test_documented_exit_codes(module: Proc) -> None:
    run = module
    assert run.fails(10, "users", "list").startswith("userplane: unavailable:")
    run.ok("migrate")
    [ann] = run.json("users", "create", "--email", "ann@example.org")
    assert run.fails(3, "users", "get", "nobody@example.org").startswith("userplane: not-found:")
    assert run.fails(4, "users", "create", "--email", "ANN@example.org").startswith(
        "userplane: conflict:"
    )
    assert run.fails(5, "users", "create", "--email", "nope").startswith(
        "userplane: invalid-input:"
    )
    run.ok("users", "update", ann["id"], "--full-name", "Ann")
    line = run.fails(6, "users", "update", ann["id"], "--inactive", "--if-version", "1")
    assert line.startswith("userplane: precondition-failed:")
    line = run.fails(11, "users", "list", env={"USERPLANE_WORKERS": "abc"})
    assert line.startswith("userplane: configuration:")
    assert "USERPLANE_WORKERS" in line


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        ("users", "list", "--no-such-option"),
        ("users", "update", "x@example.org", "--full-name", "X", "--clear-full-name"),
        ("users", "list", "--limit", "0"),
        ("users", "purge", "--older-than", "30", "--yes"),
        ("users", "purge", "--yes"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(module: Proc, args: tuple[str, ...]) -> None:
    proc = module(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "Error:" in proc.stderr


def test_a_bad_setting_fails_every_command_the_same_way(module: Proc) -> None:
    env = {"USERPLANE_PORT": "not-a-port"}
    line = module.fails(11, "config", env=env)
    assert line.startswith("userplane: configuration: USERPLANE_PORT:")
    assert module.fails(11, "plugins", env=env) == line
    assert module.fails(11, "migrate", env=env) == line


def test_config_masks_the_password_and_does_not_need_the_database(module: Proc) -> None:
    env = {"USERPLANE_DATABASE_URL": "postgresql://u:s3cret@h/db", "USERPLANE_SOME_SECRET": "x"}
    out = module.ok("config", env=env)
    assert "s3cret" not in out
    [config] = module.json("config", env=env)
    assert config["USERPLANE_DATABASE_URL"] == "postgresql://u:********@h/db"
    assert config["USERPLANE_SOME_SECRET"] == "********"


def test_env_file_option_and_environment_precedence(module: Proc) -> None:
    env_file = module.tmp_path / "custom.env"
    env_file.write_text("USERPLANE_WORKERS=7\nUSERPLANE_PORT=1111\n", encoding="utf-8")
    [config] = module.json("--env-file", str(env_file), "config", env={"USERPLANE_PORT": "2222"})
    assert config["USERPLANE_WORKERS"] == 7
    assert config["USERPLANE_PORT"] == 2222


def test_plugins_honour_disabled_plugins_from_the_env_file(module: Proc) -> None:
    env_file = module.tmp_path / "custom.env"
    env_file.write_text("USERPLANE_DISABLED_PLUGINS=logging\n", encoding="utf-8")
    [config] = module.json("--env-file", str(env_file), "config")
    assert config["USERPLANE_DISABLED_PLUGINS"] == "logging"
    by_name = {p["name"]: p for p in module.json("--env-file", str(env_file), "plugins")}
    assert by_name["logging"]["blocked"] is True
    assert by_name["logging"]["hooks"] == []


def test_plugins_from_the_console_script(run: Proc) -> None:
    by_name = {p["name"]: p for p in run.json("plugins")}
    assert by_name["sqlite"]["hooks"] == ["userplane_describe", "userplane_open_storage"]
    assert by_name["logging"]["hooks"] == [
        "userplane_describe",
        "userplane_http_middleware",
        "userplane_register_services",
        "userplane_startup",
    ]
    blocked = {
        p["name"]: p for p in run.json("plugins", env={"USERPLANE_DISABLED_PLUGINS": "logging"})
    }
    assert blocked["logging"]["blocked"] is True


def test_serve_refuses_to_start_without_a_schema_or_with_bad_settings(module: Proc) -> None:
    line = module.fails(10, "serve", "--no-migrate", "--host", "127.0.0.1", "--port", "0")
    # Not migrated, and so not even created: the file is named by its absolute path.
    database = module.tmp_path / "cli.db"
    assert line == (
        f"userplane: unavailable: no database at {database}: run `userplane migrate` to create it"
    )
    assert not database.exists()
    line = module.fails(11, "serve", env={"USERPLANE_WORKERS": "abc"})
    assert line.startswith("userplane: configuration: USERPLANE_WORKERS:")


def test_soft_delete_restore_and_purge_round_trip(module: Proc) -> None:
    run = module
    run.ok("migrate")
    [ann] = run.json("users", "create", "--email", "ann@example.org", "--full-name", "Ann")
    [bob] = run.json("users", "create", "--email", "bob@example.org")

    [deleted] = run.json("users", "delete", "ANN@example.org")
    assert deleted["deleted_at"] is not None
    assert deleted["version"] == 2
    assert run.fails(3, "users", "get", ann["id"]).startswith("userplane: not-found:")
    assert run.json("users", "list", "--sort", "-email", "--include-deleted") == [bob, deleted]

    [restored] = run.json("users", "restore", "ann@example.org")
    assert restored["deleted_at"] is None
    assert restored["version"] == 3
    run.json("users", "delete", ann["id"])

    # No terminal on stdin and no --yes: refused at once, even with "y" piped in.
    line = run.fails(2, "users", "purge", "--older-than", "0s", input="y\n")
    assert line == (
        "userplane: refusing to purge without confirmation: stdin is not a terminal; pass --yes"
    )
    # Deleted too recently for a week's cut-off; then with --yes and 0s.
    assert "purged 0 deleted users\n" in run.ok("users", "purge", "--older-than", "1w", "--yes")
    assert "purged 1 deleted user\n" in run.ok("users", "purge", "--older-than", "0s", "--yes")
    assert run.fails(3, "users", "restore", ann["id"]).startswith("userplane: not-found:")
    [again] = run.json("users", "create", "--email", "Ann@example.org")
    assert run.json("users", "list", "--include-deleted") == [bob, again]
