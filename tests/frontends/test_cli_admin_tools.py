"""The admin CLI never surprises a new administrator.

``check`` (settings, plugins, storage, migrations), a named ``--env-file`` that
must exist, ``config`` listing and validating every setting, plugin commands
present whatever the settings, tables fitting the terminal and ``--format csv``,
errors as JSON under ``--format json``, durations for people, confirmations that
are refused without a terminal and cancelled by a "no", shell completion, and
``docs/cli.md`` whose commands run as written. In-process through click's
CliRunner, and as a real process (on a pseudo-terminal where a terminal matters).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from userplane.frontends.cli import app as cli_app
from userplane.frontends.cli import cli, output
from userplane.frontends.cli.app import add_plugin_commands
from userplane.frontends.cli.errors import CANCELLED, error_object
from userplane.frontends.cli.output import HumanDuration, emit, fit, human_duration
from userplane.plugin import hookimpl
from userplane.plugin_manager import BrokenPlugin, make_plugin_manager
from userplane.settings import (
    ConfigurationError,
    Settings,
    disabled_plugins_from_env,
    known_names,
    unknown_names,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "userplane"
PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"
#: A safety limit for one CLI run, not a performance expectation.
TIMEOUT = 60
REFUSED = "userplane: refusing to {} without confirmation: stdin is not a terminal; pass --yes"
CANCELLED_LINE = "userplane: cancelled: nothing was changed"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No USERPLANE_* from the outer environment; plugin commands on ``cli``."""
    for name in list(os.environ):
        if name.startswith("USERPLANE_"):
            monkeypatch.delenv(name)
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    add_plugin_commands(cli)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class Cli:
    """``userplane`` in-process on this test's SQLite file, with an empty env file."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env_file = tmp_path / "empty.env"
        self.env_file.touch()
        self.runner = CliRunner()
        self.env: dict[str, str | None] = {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/u.db",
            "USERPLANE_LOG_FORMAT": "json",
        }

    def __call__(
        self,
        *args: str,
        env: Mapping[str, str | None] | None = None,
        env_file: Path | None = None,
        input: str | None = None,
        obj: Any = None,
    ) -> Result:
        return self.runner.invoke(
            cli,
            ["--env-file", str(env_file or self.env_file), *args],
            env={**self.env, **(env or {})},
            input=input,
            obj=obj,
            catch_exceptions=False,
        )

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        assert result.stderr == ""
        return result

    def json(self, *args: str, **kwargs: Any) -> list[dict[str, Any]]:
        result = self.ok(*args, "--format", "json", **kwargs)
        return [json.loads(line) for line in result.stdout.splitlines()]

    def fails(self, code: int, *args: str, **kwargs: Any) -> str:
        """Expect exit ``code`` and one line on stderr (no traceback); return that line."""
        result = self(*args, **kwargs)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert "Traceback" not in result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]


@pytest.fixture
def run(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def app(run: Cli) -> Cli:
    run.ok("migrate")
    return run


def rows_of(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


# --- 1. check -----------------------------------------------------------------------------------


def test_check_passes_on_a_migrated_database(app: Cli) -> None:
    rows = app.json("check")
    assert all(r["ok"] for r in rows), rows
    assert [r["name"] for r in rows][:3] == ["settings", "plugins", "storage"]
    assert rows[-1]["name"] == "migrations"


def test_check_names_an_unknown_variable_with_a_suggestion(app: Cli) -> None:
    result = app("check", env={"USERPLANE_DATABSE_URL": "sqlite:///x.db"})
    assert result.exit_code == 11, result.output
    [unknown] = [r for r in result.stdout.splitlines() if "DATABSE" in r]
    assert unknown.split(None, 2) == [
        "settings",
        "no",
        "unknown USERPLANE_DATABSE_URL (did you mean USERPLANE_DATABASE_URL?)",
    ]
    assert result.stderr == (
        "userplane: configuration: settings: unknown USERPLANE_DATABSE_URL "
        "(did you mean USERPLANE_DATABASE_URL?)\n"
    )
    # The database is still checked: an unknown name does not stop the service.
    assert "storage     yes" in result.stdout


def test_check_finds_unknown_names_in_the_env_file_and_plugins_settings(
    app: Cli, tmp_path: Path
) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("USERPLANE_OTEL_ENABLE=true\nUSERPLANE_JWT_ISSUER=x\n", encoding="utf-8")
    result = app("check", "--format", "json", env_file=env_file, env={"USERPLANE_NOTHING": "1"})
    assert result.exit_code == 11
    errors = [r["error"] for r in rows_of(result) if r["name"] == "settings"]
    assert errors == [
        "unknown USERPLANE_NOTHING",
        f"unknown USERPLANE_OTEL_ENABLE in {env_file} (did you mean USERPLANE_OTEL_ENABLED?)",
    ]
    assert json.loads(result.stderr) == {
        "error": "configuration",
        "detail": "settings: unknown USERPLANE_NOTHING",
        "exit_code": 11,
    }


def test_check_ignores_the_test_suites_variables_and_the_env_file_variable(app: Cli) -> None:
    env = {PG_ENV: "postgresql://u@h/db", "USERPLANE_ENV_FILE": str(app.env_file)}
    assert all(r["ok"] for r in app.json("check", env=env))


def test_check_fails_on_an_invalid_value_and_skips_the_database(run: Cli) -> None:
    result = run("check", "--format", "json", env={"USERPLANE_PORT": "abc"})
    assert result.exit_code == 11
    rows = {r["name"]: r for r in rows_of(result)}
    assert rows["settings"]["ok"] is False
    assert rows["settings"]["error"] == "USERPLANE_PORT: must be a whole number, not 'abc'"
    assert rows["plugins"]["ok"] is True
    for name in ("storage", "migrations"):
        assert rows[name] == {
            "name": name,
            "ok": None,
            "error": "skipped: the settings are invalid",
            "detail": None,
        }
    assert not (run.tmp_path / "u.db").exists()


def test_check_fails_on_an_invalid_plugin_setting(app: Cli) -> None:
    line = app.fails(11, "check", env={"USERPLANE_API_KEYS_CACHE_SECONDS": "-1"})
    assert line.startswith("userplane: configuration: settings: USERPLANE_API_KEYS_CACHE_SECONDS")


def test_check_fails_on_a_plugins_start_up_check(app: Cli) -> None:
    line = app.fails(11, "check", env={"USERPLANE_ROLES": "{not json"})
    assert line.startswith("userplane: configuration: settings: USERPLANE_ROLES")


def test_check_reports_a_missing_userplane_env_file(app: Cli) -> None:
    missing = app.tmp_path / "typo.env"
    result = app.runner.invoke(cli, ["check"], env={**app.env, "USERPLANE_ENV_FILE": str(missing)})
    assert result.exit_code == 11, result.output
    assert result.stderr == (
        f"userplane: configuration: settings: USERPLANE_ENV_FILE names '{missing}', "
        "which does not exist: no env file was read\n"
    )


def test_check_shows_blocked_plugins_and_fails_on_a_broken_one(app: Cli) -> None:
    [plugins] = [
        r
        for r in app.json("check", env={"USERPLANE_DISABLED_PLUGINS": "rate_limits"})
        if r["name"] == "plugins"
    ]
    assert plugins["ok"] is True
    assert plugins["detail"].endswith("; blocked: rate_limits")

    pm = make_plugin_manager(())
    pm.broken.append(BrokenPlugin("shiny", "cannot be imported: ImportError: no module"))
    result = app("check", obj=pm)
    assert result.exit_code == 11
    assert result.stderr == (
        "userplane: configuration: plugins: plugin 'shiny' is broken: "
        "cannot be imported: ImportError: no module\n"
    )
    assert "skipped: a plugin is broken" in result.stdout


class _ExtraMigration:
    """A plugin shipping one more migration than the database has."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @hookimpl
    def userplane_migrations(self) -> dict[str, Path]:
        return {"sqlite": self.folder}


def test_check_names_pending_migrations(app: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "extra_0001_things.sql").write_text("CREATE TABLE extra_things (id INTEGER);\n")
    pm = make_plugin_manager((), [_ExtraMigration(folder)])
    result = app("check", "--format", "json", obj=pm)
    assert result.exit_code == 10
    [migrations] = [r for r in rows_of(result) if r["name"] == "migrations"]
    detail = "pending: extra_0001_things (run `userplane migrate`)"
    assert migrations == {"name": "migrations", "ok": False, "error": detail, "detail": None}
    assert json.loads(result.stderr)["detail"] == f"migrations: {detail}"


def test_check_masks_what_it_reports(run: Cli) -> None:
    url = "postgresql://u:Zq8wX3kPm@127.0.0.1:1/db"
    result = run(
        "check", env={"USERPLANE_DATABASE_URL": url, "USERPLANE_DB_POOL_TIMEOUT_MS": "200"}
    )
    assert result.exit_code != 0
    assert "Zq8wX3kPm" not in result.output


def test_unknown_names_suggests_only_close_names() -> None:
    assert unknown_names(["USERPLANE_PROT", "USERPLANE_FEATURE_FLAG", "USERPLANE_PORT"]) == [
        ("USERPLANE_FEATURE_FLAG", None),
        ("USERPLANE_PROT", "USERPLANE_PORT"),
    ]
    assert "USERPLANE_ENV_FILE" in known_names()


# --- 2. --env-file ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("config",), ("users", "list"), ("check",), ("keys", "list"), ("plugins",)]
)
def test_a_missing_env_file_is_a_usage_error_for_every_command(
    run: Cli, tmp_path: Path, args: tuple[str, ...]
) -> None:
    missing = tmp_path / "typo.env"
    line = run.fails(2, *args, env_file=missing)
    assert line.startswith(f"Error: Invalid value for '--env-file': File '{missing}' does not")


def test_settings_from_env_refuses_a_named_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        Settings.from_env({}, env_file=tmp_path / "nope.env")
    # USERPLANE_ENV_FILE and the default .env may be missing (check reports the former).
    assert Settings.from_env({"USERPLANE_ENV_FILE": str(tmp_path / "nope.env")}) == Settings()


# --- 3. config ----------------------------------------------------------------------------------


def test_config_lists_every_plugins_settings(run: Cli) -> None:
    [config] = run.json("config")
    for name in (
        "USERPLANE_JWT_KEY",
        "USERPLANE_OTEL_ENABLED",
        "USERPLANE_API_KEYS_CACHE_SECONDS",
        "USERPLANE_WEBHOOKS_TIMEOUT_SECONDS",
        "USERPLANE_AUDIT_REDACT_PERSONAL",
        "USERPLANE_RATE_LIMITS",
        "USERPLANE_ROLES",
        "USERPLANE_ENCRYPTION_KEYS",
    ):
        assert name in config, name
    # Every variable a setting reads is listed: nothing the check calls known is hidden.
    assert set(config) >= known_names() - {"USERPLANE_ENV_FILE"}


def test_config_masks_a_plugins_secret(run: Cli) -> None:
    [config] = run.json("config", env={"USERPLANE_JWT_KEY": "hunter2hunter2hunter2hunter2hunter2"})
    assert config["USERPLANE_JWT_KEY"] == "********"


@pytest.mark.parametrize(
    ("name", "value"),
    [("USERPLANE_PORT", "abc"), ("USERPLANE_OTEL_SAMPLE_RATIO", "lots")],
)
def test_config_fails_in_one_line_on_an_invalid_value(run: Cli, name: str, value: str) -> None:
    line = run.fails(11, "config", env={name: value})
    assert line.startswith(f"userplane: configuration: {name}:")
    error = json.loads(run.fails(11, "config", "--format", "json", env={name: value}))
    assert error["error"] == "configuration"
    assert error["exit_code"] == 11


# --- 4. plugin commands whatever the settings ---------------------------------------------------


def test_plugin_commands_stay_with_a_bad_setting(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    group = click.Group("userplane")
    monkeypatch.setenv("USERPLANE_PORT", "abc")
    monkeypatch.setenv("USERPLANE_DISABLED_PLUGINS", "webhooks")
    pm = add_plugin_commands(group)
    assert "keys" in group.commands
    assert "webhooks" not in group.commands  # still blocked: only that variable is read
    assert pm.is_blocked("webhooks")
    line = run.fails(
        11, "keys", "create", "--name", "x", "--role", "admin", env={"USERPLANE_PORT": "abc"}
    )
    assert line == "userplane: configuration: USERPLANE_PORT: must be a whole number, not 'abc'"


def test_disabled_plugins_are_read_leniently(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("USERPLANE_DISABLED_PLUGINS=a, b\nUSERPLANE_PORT=abc\n")
    assert disabled_plugins_from_env({}, env_file) == ("a", "b")
    assert disabled_plugins_from_env({"USERPLANE_DISABLED_PLUGINS": "c"}, env_file) == ("c",)
    assert disabled_plugins_from_env({}, tmp_path / "missing.env") == ()


# --- 5. tables that fit, and CSV ----------------------------------------------------------------


def test_fit_cuts_the_widest_columns_first_and_never_below_the_floor() -> None:
    assert fit([36, 20, 5], [10, 10, 5], 80) == [36, 20, 5]
    assert fit([36, 20, 5], [10, 10, 5], 50) == [21, 20, 5]
    assert sorted(fit([36, 30, 5], [10, 10, 5], 50)) == [5, 20, 21]
    assert fit([36, 30, 5], [10, 10, 5], 10) == [10, 10, 5]


def _emitted(monkeypatch: pytest.MonkeyPatch, width: int | None, *args: Any) -> list[str]:
    monkeypatch.setattr(output, "terminal_width", lambda: width)
    runner = CliRunner()

    @click.command()
    def show() -> None:
        emit(*args)

    result = runner.invoke(show, catch_exceptions=False)
    return result.stdout.splitlines()


def test_a_table_fits_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": "x" * 36, "email": "ann@" + "e" * 60 + ".org", "ok": True}]
    lines = _emitted(monkeypatch, 60, rows, "table", ("id", "email", "ok"))
    assert all(len(line) <= 60 for line in lines), lines
    assert lines[1].endswith("…  yes")
    assert lines[0].split() == ["ID", "EMAIL", "OK"]
    # Not a terminal: whole values, whatever the width.
    full = _emitted(monkeypatch, None, rows, "table", ("id", "email", "ok"))
    assert "e" * 60 in full[1]
    assert "…" not in full[1]


def test_a_table_never_cuts_an_id(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": "i" * 36, "key_id": "k" * 36, "email": "e" * 40}]
    lines = _emitted(monkeypatch, 60, rows, "table", ("id", "key_id", "email"))
    assert lines[1] == "i" * 36 + "  " + "k" * 36 + "  " + "e" * 9 + "…"


def test_a_table_never_cuts_below_a_readable_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"a": "a" * 30, "b": "b" * 30}]
    lines = _emitted(monkeypatch, 5, rows, "table", ("a", "b"))
    assert lines[1] == "a" * 9 + "…  " + "b" * 9 + "…"


def test_csv_has_the_tables_columns_and_whole_values(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        {"id": "1", "name": 'Ann "A", Smith', "active": True, "tags": ["x", "y"], "gone": None},
        {"id": "2", "name": "Bob", "active": False, "tags": [], "gone": "2026-01-01"},
    ]
    lines = _emitted(monkeypatch, 20, rows, "csv", ("id", "name", "active", "tags", "gone"))
    parsed = list(csv.reader(io.StringIO("\n".join(lines))))
    assert parsed == [
        ["id", "name", "active", "tags", "gone"],
        ["1", 'Ann "A", Smith', "true", "x,y", ""],
        ["2", "Bob", "false", "", "2026-01-01"],
    ]
    assert _emitted(monkeypatch, None, [], "csv", ("id", "name")) == ["id,name"]


def test_csv_for_users_plugins_config_check_and_migrate(app: Cli) -> None:
    made = app.json("users", "create", "--email", "ann@example.org", "--full-name", "Ann, A")[0]
    listing = list(csv.DictReader(io.StringIO(app.ok("users", "list", "--format", "csv").stdout)))
    assert listing == [
        {
            "id": made["id"],
            "email": "ann@example.org",
            "full_name": "Ann, A",
            "is_active": "true",
            "created_at": made["created_at"],
            "version": "1",
            "deleted_at": "",
        }
    ]
    plugins = list(csv.DictReader(io.StringIO(app.ok("plugins", "--format", "csv").stdout)))
    assert {"name", "module", "distribution", "status", "hooks"} == set(plugins[0])
    config = list(csv.DictReader(io.StringIO(app.ok("config", "--format", "csv").stdout)))
    assert {"name": "USERPLANE_PORT", "value": "8000"} in config
    checks = list(csv.DictReader(io.StringIO(app.ok("check", "--format", "csv").stdout)))
    assert checks[0]["name"] == "settings"
    assert checks[0]["ok"] == "true"
    status = app.ok("migrate", "--status", "--format", "csv").stdout.splitlines()
    assert status[0] == "id,source,applied"
    assert app.ok("migrate", "--format", "csv").stdout == 'applied\n""\n'


# --- 6. errors as JSON --------------------------------------------------------------------------


def test_errors_under_format_json_are_one_json_object(app: Cli) -> None:
    error = json.loads(app.fails(5, "users", "create", "--email", "nope", "--format", "json"))
    assert error["error"] == "invalid-input"
    assert error["exit_code"] == 5
    assert error["errors"][0]["field"] == "$.email"
    assert set(error["errors"][0]) == {"field", "detail"}
    error = json.loads(app.fails(3, "users", "get", "nobody@example.org", "--format", "json"))
    assert error == {"error": "not-found", "detail": "no user with that email", "exit_code": 3}
    # Without --format json (or with table or csv), the plain line.
    assert app.fails(3, "users", "get", "nobody@example.org", "--format", "csv").startswith(
        "userplane: not-found:"
    )


def test_json_errors_are_masked() -> None:
    from userplane.errors import Unavailable

    error = error_object(Unavailable("cannot reach postgresql://u:Zq8wX3kPm@db/x"), ())
    assert "Zq8wX3kPm" not in json.dumps(error)
    assert error["exit_code"] == 10


# --- 7. durations for people --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(days=30), "30 days"),
        (timedelta(hours=12), "12 hours"),
        (timedelta(weeks=1), "1 week"),
        (timedelta(days=14), "2 weeks"),
        (timedelta(minutes=90), "1 hour, 30 minutes"),
        (timedelta(days=1, hours=12), "1 day, 12 hours"),
        (timedelta(0), "0 seconds"),
        (timedelta(seconds=1), "1 second"),
    ],
)
def test_human_duration(delta: timedelta, text: str) -> None:
    assert human_duration(delta) == text
    assert str(HumanDuration.of(delta)) == text
    assert HumanDuration.of(delta) == delta


def test_the_purge_prompt_says_the_duration_humanly(
    app: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_app, "stdin_is_terminal", lambda: True)
    result = app("users", "purge", "--older-than", "30d", input="n\n")
    assert result.exit_code == CANCELLED
    assert "more than 30 days ago? [y/N]" in result.stderr
    assert "0:00:00" not in result.output


# --- 8. confirmations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "action"),
    [
        (("users", "purge", "--older-than", "30d"), "purge"),
        (("users", "shred", "ann@example.org"), "shred"),
        (("audit", "prune", "--older-than", "30d"), "prune"),
    ],
)
def test_every_prompt_is_refused_without_a_terminal(
    app: Cli, args: tuple[str, ...], action: str
) -> None:
    app.ok("users", "create", "--email", "ann@example.org")
    for answer in (None, "y\n"):
        assert app.fails(2, *args, input=answer) == REFUSED.format(action)
    error = json.loads(app.fails(2, *args, "--format", "json"))
    assert error == {
        "error": "confirmation-refused",
        "detail": REFUSED.format(action).removeprefix("userplane: "),
        "exit_code": 2,
    }
    assert app.json("users", "get", "ann@example.org")[0]["deleted_at"] is None


@pytest.mark.parametrize(
    "args",
    [
        ("users", "purge", "--older-than", "30d"),
        ("users", "shred", "ann@example.org"),
        ("audit", "prune", "--older-than", "30d"),
    ],
)
def test_no_at_a_terminal_is_cancelled(
    app: Cli, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    app.ok("users", "create", "--email", "ann@example.org")
    monkeypatch.setattr(cli_app, "stdin_is_terminal", lambda: True)
    result = app(*args, input="n\n")
    assert result.exit_code == CANCELLED, result.output
    assert result.stderr.splitlines()[-1] == CANCELLED_LINE
    assert "Traceback" not in result.output
    assert app.json("users", "get", "ann@example.org")[0]["deleted_at"] is None


def test_shred_confirmed_at_a_terminal(app: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    ann = app.json("users", "create", "--email", "ann@example.org")[0]
    monkeypatch.setattr(cli_app, "stdin_is_terminal", lambda: True)
    result = app("users", "shred", "ann@example.org", input="y\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"shredded user {ann['id']}\n"
    assert app.fails(3, "users", "get", ann["id"], "--include-deleted").startswith(
        "userplane: not-found:"
    )


# --- as a real process ----------------------------------------------------------------------------


class Proc:
    """The console script in ``tmp_path`` on its own SQLite file, with no stray settings."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
        self.env.update(
            USERPLANE_DATABASE_URL=f"sqlite:///{tmp_path}/cli.db",
            USERPLANE_LOG_FORMAT="json",
        )
        self.env.pop("COLUMNS", None)

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(
            [str(SCRIPT), *args],
            env={**self.env, **(env or {})},
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            **kwargs,
        )

    def ok(self, *args: str, **kwargs: Any) -> str:
        proc = self(*args, **kwargs)
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
        assert proc.stderr == ""
        return proc.stdout

    def fails(self, code: int, *args: str, **kwargs: Any) -> str:
        proc = self(*args, **kwargs)
        assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        return lines[0]

    def on_terminal(
        self, *args: str, answer: str = "", columns: int = 80, env: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        """Run on a pseudo-terminal ``columns`` wide, typing ``answer``: (exit code, output)."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        proc = subprocess.Popen(
            [str(SCRIPT), *args],
            env={**self.env, **(env or {})},
            cwd=self.tmp_path,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
        )
        os.close(slave)
        chunks: list[bytes] = []
        deadline = time.monotonic() + TIMEOUT
        typed = False
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # the child closed the terminal
                        break
                    if not data:
                        break
                    chunks.append(data)
                    if answer and not typed and b"[y/N]" in b"".join(chunks):
                        os.write(master, answer.encode())
                        typed = True
                elif proc.poll() is not None:
                    break
            code = proc.wait(timeout=TIMEOUT)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
        return code, b"".join(chunks).decode().replace("\r\n", "\n")


@pytest.fixture
def proc(tmp_path: Path) -> Proc:
    run = Proc(tmp_path)
    assert run.ok("migrate").startswith("applied: ")
    return run


@pytest.mark.e2e
def test_process_check(proc: Proc) -> None:
    out = proc.ok("check")
    assert out.splitlines()[0].split() == ["NAME", "OK", "DETAIL"]
    line = proc.fails(11, "check", env={"USERPLANE_DATABSE_URL": "x"})
    assert line == (
        "userplane: configuration: settings: unknown USERPLANE_DATABSE_URL "
        "(did you mean USERPLANE_DATABASE_URL?)"
    )
    error = json.loads(proc.fails(11, "check", "--format", "json", env={"USERPLANE_PORT": "x"}))
    assert error["exit_code"] == 11


@pytest.mark.e2e
def test_process_missing_env_file_and_bad_settings(proc: Proc) -> None:
    line = proc.fails(2, "--env-file", "typo.env", "users", "list")
    assert line.startswith("Error: Invalid value for '--env-file': File 'typo.env' does not exist")
    bad = {"USERPLANE_PORT": "abc"}
    expected = "userplane: configuration: USERPLANE_PORT: must be a whole number, not 'abc'"
    assert proc.fails(11, "config", env=bad) == expected
    assert proc.fails(11, "keys", "create", "--name", "x", "--role", "admin", env=bad) == expected


@pytest.mark.e2e
def test_process_table_fits_the_terminal_and_pipes_keep_everything(proc: Proc) -> None:
    name = "A rather long full name " * 4
    proc.ok("users", "create", "--email", "ann@example.org", "--full-name", name)
    code, out = proc.on_terminal("users", "list", columns=110)
    assert code == 0, out
    lines = out.splitlines()
    assert all(len(line) <= 110 for line in lines), lines
    assert "…" in lines[1]
    piped = proc.ok("users", "list")
    assert name.strip() in piped
    assert "…" not in piped
    rows = list(csv.DictReader(io.StringIO(proc.ok("users", "list", "--format", "csv"))))
    assert rows[0]["full_name"] == name


@pytest.mark.e2e
@pytest.mark.parametrize("stdin", ["devnull", "closed"])
def test_process_prompt_without_a_terminal_is_refused(proc: Proc, stdin: str) -> None:
    proc.ok("users", "create", "--email", "ann@example.org")
    proc.ok("users", "delete", "ann@example.org")
    kwargs: dict[str, Any] = {}
    if stdin == "closed":
        kwargs = {"stdin": None, "preexec_fn": lambda: os.close(0)}
    for args, action in (
        (("users", "purge", "--older-than", "0s"), "purge"),
        (("users", "shred", "ann@example.org"), "shred"),
        (("audit", "prune", "--older-than", "30d"), "prune"),
    ):
        assert proc.fails(2, *args, **kwargs) == REFUSED.format(action)
    assert proc.ok("users", "list", "--include-deleted", "--format", "csv").count("\n") == 2


@pytest.mark.e2e
def test_process_a_person_answers_at_the_prompt(proc: Proc) -> None:
    proc.ok("users", "create", "--email", "ann@example.org")
    proc.ok("users", "delete", "ann@example.org")
    code, out = proc.on_terminal("users", "purge", "--older-than", "0s", answer="n\n")
    assert code == CANCELLED, out
    assert "Remove for good every user deleted more than 0 seconds ago? [y/N]: n" in out
    assert out.rstrip().endswith(CANCELLED_LINE)
    # A plugin's prompt (click.confirm(abort=True)) is cancelled the same way, and says
    # its duration humanly too.
    code, out = proc.on_terminal("audit", "prune", "--older-than", "30d", answer="n\n")
    assert code == CANCELLED, out
    assert "older than 30 days" in out
    assert out.rstrip().endswith(CANCELLED_LINE)
    code, out = proc.on_terminal("users", "purge", "--older-than", "0s", answer="y\n")
    assert code == 0, out
    assert "purged 1 deleted user" in out


@pytest.mark.e2e
def test_process_json_errors(proc: Proc) -> None:
    proc.ok("users", "create", "--email", "a@example.org")
    line = proc.fails(4, "users", "create", "--email", "A@example.org", "--format", "json")
    assert json.loads(line) == {
        "error": "conflict",
        "detail": "a user with that email already exists",
        "exit_code": 4,
    }


# --- 9. shell completion, and the documentation -------------------------------------------------


def _complete(proc: Proc, words: str, env: Mapping[str, str] | None = None) -> list[str]:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    out = proc.ok(
        env={
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
            "_USERPLANE_COMPLETE": "bash_complete",
            **(env or {}),
        }
    )
    return [line.split(",", 1)[1] for line in out.splitlines() if line]


@pytest.mark.e2e
def test_process_shell_completion_knows_plugin_commands(tmp_path: Path) -> None:
    proc = Proc(tmp_path)
    script = proc.ok(env={"_USERPLANE_COMPLETE": "bash_source"})
    assert "_userplane_completion" in script
    assert "complete " in script
    assert _complete(proc, "userplane ke") == ["keys"]
    assert _complete(proc, "userplane keys ") == ["create", "list", "revoke"]
    assert _complete(proc, "userplane audit p", env={"USERPLANE_PORT": "abc"}) == ["prune"]
    assert _complete(proc, "userplane users list --format ") == ["table", "json", "csv"]
    # A plugin that is disabled has no commands to complete.
    assert _complete(proc, "userplane ke", env={"USERPLANE_DISABLED_PLUGINS": "api_keys"}) == []


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


@pytest.mark.e2e
def test_every_command_in_docs_cli_runs_as_written(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks = _sh_blocks(doc)
    assert blocks
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    env.update(
        PATH=f"{SCRIPT.parent}{os.pathsep}{env.get('PATH', '')}",
        USERPLANE_DATABASE_URL=f"sqlite:///{tmp_path}/docs.db",
    )
    for i, block in enumerate(blocks):
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 4,
            check=False,
        )
        assert result.returncode == 0, (i, block, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
