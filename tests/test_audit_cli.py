"""``userplane audit list|verify|export|prune``, in-process through click's CliRunner.

The ``cli`` group gets the plugins' commands as ``main()`` adds them (on a copy),
with the audit plugin among them; each run gets a plugin manager holding it, as
``main()`` passes its own. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import structlog
from click.testing import CliRunner, Result
from test_audit import CATCH_UP, rows, sql

from userplane import Registry, Settings
from userplane.frontends.cli import cli
from userplane.hooks import Hooks
from userplane.plugin_manager import make_plugin_manager
from userplane.plugins import audit
from userplane.plugins.audit import trail_of
from userplane.plugins.audit.commands import EXIT_BROKEN
from userplane.users import UserChanges, UserQuery

PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No USERPLANE_* from the outer environment; logging restored afterwards."""
    for name in list(os.environ):
        if name.startswith("USERPLANE_") and name != PG_ENV:
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def group() -> click.Group:
    """``userplane`` with every plugin's commands and the audit plugin's."""
    g = copy.copy(cli)
    g.commands = dict(cli.commands)
    Hooks(make_plugin_manager(extra_plugins=[audit])).cli_commands(g)
    assert "audit" in g.commands
    return g


class Cli:
    """Invokes ``userplane`` in-process against this test's database."""

    def __init__(self, group: click.Group, tmp_path: Path, database_url: str) -> None:
        self.group = group
        self.database_url = database_url
        self.env_file = tmp_path / "empty.env"
        self.env_file.touch()
        self.runner = CliRunner()
        self.env: dict[str, str | None] = {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_LOG_FORMAT": "json",
            PG_ENV: None,
        }

    def __call__(self, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
        return self.runner.invoke(
            self.group,
            ["--env-file", str(self.env_file), *args],
            env={**self.env, **(env or {})},
            obj=make_plugin_manager(extra_plugins=[audit]),
            catch_exceptions=False,
        )

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result

    def fails(self, code: int, *args: str) -> str:
        """Expect exit ``code``, nothing on stdout and one line on stderr; return it."""
        result = self(*args)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    def registry(self) -> Registry:
        settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": self.database_url})
        return Registry(settings, plugins=[audit])


def head_logs(stderr: str) -> list[dict[str, Any]]:
    """The ``audit.head`` log lines of a run."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "audit.head"]


@pytest.fixture
def run(group: click.Group, tmp_path: Path, database_url: str) -> Cli:
    """The CLI over this test's migrated database, holding six events."""
    app = Cli(group, tmp_path, database_url)
    app.ok("migrate")
    for i in range(3):
        app.ok("users", "create", "--email", f"u{i}@example.org", "--full-name", f"U {i}")
    with app.registry() as registry:
        for user in registry.users.list(UserQuery()).items:
            registry.users.update(user.id, UserChanges(is_active=False))
        trail_of(registry).catch_up(CATCH_UP)  # as a serving process's chainer would
    return app


def test_every_command_reading_the_trail_chains_what_was_written_first(
    group: click.Group, tmp_path: Path, database_url: str
) -> None:
    """Writes only insert their events; ``list``, ``verify`` and ``export`` chain them first."""
    app = Cli(group, tmp_path, database_url)
    app.ok("migrate")
    app.ok("users", "create", "--email", "ann@example.org")
    with app.registry() as registry:
        assert rows(registry, "SELECT seq FROM audit_events") == [(None,)]
    [line] = app.ok("audit", "list", "--format", "json").stdout.splitlines()
    assert json.loads(line)["seq"] == 1
    app.ok("users", "create", "--email", "bob@example.org")
    assert app.ok("audit", "verify").stdout.startswith("verified 2 events, head 2 ")
    app.ok("users", "create", "--email", "cy@example.org")
    exported = app.ok("audit", "export").stdout.splitlines()
    assert [json.loads(e)["seq"] for e in exported[1:]] == [1, 2, 3]
    assert "entry" not in exported[1]
    assert "txid" not in exported[1]


def test_list_prints_a_table_and_json_lines(run: Cli) -> None:
    table = run.ok("audit", "list").stdout.splitlines()
    assert table[0].split() == [
        "SEQ",
        "OCCURRED_AT",
        "ACTOR",
        "ACTION",
        "TARGET",
        "USER_ID",
        "CHANGED",
    ]
    assert len(table) == 7
    assert "user.created" in table[1]
    assert "local:" in table[1]  # the CLI acts as the local administrator
    assert "email, full_name, is_active, version" in table[1]
    lines = [
        json.loads(line) for line in run.ok("audit", "list", "--format", "json").stdout.splitlines()
    ]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[0]["changes"]["email"] == {"before": None, "after": "u0@example.org"}
    assert lines[0]["target"] == {"type": "user", "id": lines[0]["user_id"]}
    assert lines[0]["actor_kind"] == "local"
    assert lines[0]["request_id"]  # each command run has an id, as a request does


def test_list_filters_and_follows_pages(run: Cli) -> None:
    first = run.ok("audit", "list", "--limit", "4", "--format", "json")
    assert len(first.stdout.splitlines()) == 4
    [note] = [line for line in first.stderr.splitlines() if line.startswith("more:")]
    cursor = note.split("--cursor ")[1]
    rest = run.ok("audit", "list", "--limit", "4", "--cursor", cursor, "--format", "json")
    assert [json.loads(line)["seq"] for line in rest.stdout.splitlines()] == [5, 6]
    every = run.ok("audit", "list", "--limit", "2", "--all", "--format", "json")
    assert [json.loads(line)["seq"] for line in every.stdout.splitlines()] == [1, 2, 3, 4, 5, 6]
    newest = run.ok("audit", "list", "--sort=-seq", "--limit", "2", "--all", "--format", "json")
    assert [json.loads(line)["seq"] for line in newest.stdout.splitlines()] == [6, 5, 4, 3, 2, 1]
    updated = run.ok("audit", "list", "--action", "user.updated", "--format", "json")
    assert [json.loads(line)["seq"] for line in updated.stdout.splitlines()] == [4, 5, 6]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--since", "yesterday"), "$.since"),
        (("--user-id", "42"), "$.user_id"),
        (("--cursor", "bogus"), "$.cursor"),
    ],
)
def test_list_refuses_bad_filters_in_one_line(run: Cli, args: tuple[str, ...], field: str) -> None:
    line = run.fails(5, "audit", "list", *args)
    assert field in line


def test_verify_prints_one_line_and_logs_the_head(run: Cli) -> None:
    result = run.ok("audit", "verify")
    with run.registry() as registry:
        head = trail_of(registry).head()
    assert result.stdout == f"verified 6 events, head 6 {head.hash}\n"
    [logged] = head_logs(result.stderr)
    assert (logged["seq"], logged["hash"]) == (6, head.hash)
    assert logged["logger"] == "userplane.audit"
    expected = run.ok("audit", "verify", "--expect", f"{head.seq}:{head.hash}")
    assert expected.stdout.startswith("verified 6 events")


def test_verify_exits_non_zero_naming_an_edited_event(run: Cli) -> None:
    with run.registry() as registry:
        [(event_id,)] = rows(registry, "SELECT id FROM audit_events WHERE seq = 4")
        sql(registry, "UPDATE audit_events SET actor = 'someone-else' WHERE seq = 4")
    line = run.fails(EXIT_BROKEN, "audit", "verify")
    assert line.startswith(f"audit chain broken at seq 4 (event {event_id}):")
    assert "edited" in line


def test_verify_exits_non_zero_naming_a_removed_event(run: Cli) -> None:
    with run.registry() as registry:
        sql(registry, "DELETE FROM audit_events WHERE seq = 2")
    line = run.fails(EXIT_BROKEN, "audit", "verify")
    assert line.startswith("audit chain broken at seq 2:")
    assert "removed" in line


def test_verify_expect_catches_a_cut_tail(run: Cli) -> None:
    with run.registry() as registry:
        logged = trail_of(registry).head()
        [(seq4,)] = rows(registry, "SELECT hash FROM audit_events WHERE seq = 4")
        sql(registry, "DELETE FROM audit_events WHERE seq > 4")
        sql(registry, "UPDATE audit_chain SET seq = 4, hash = :h", h=seq4)
    assert run.ok("audit", "verify").stdout.startswith("verified 4 events, head 4")
    line = run.fails(EXIT_BROKEN, "audit", "verify", "--expect", f"{logged.seq}:{logged.hash}")
    assert line.startswith("audit chain broken at seq 6:")
    assert "missing" in line


def test_verify_refuses_a_malformed_expect(run: Cli) -> None:
    line = run.fails(2, "audit", "verify", "--expect", "six")
    assert "SEQ:HASH" in line


def test_export_is_verifiable_offline_and_keeps_sealed_values_sealed(
    run: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "trail.jsonl"
    result = run.ok("audit", "export", "--output", str(out))
    assert f"exported 6 events to {out}" in result.stderr
    header, *events = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert header["format"] == "userplane-audit-export/1"
    assert header["start"]["seq"] == 0
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert set(events[0]) == {
        "seq", "id", "occurred_at", "actor", "actor_kind", "action", "target_type",
        "target_id", "user_id", "request_id", "trace_id", "client_address", "fields",
        "prev_hash", "hash",
    }  # fmt: skip
    assert run.ok("audit", "verify", "--input", str(out)).stdout.startswith("verified 6 events")
    assert run.ok("audit", "export").stdout == out.read_text(encoding="utf-8")
    # An edited line of the export fails too.
    lines = out.read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[3])
    edited["actor"] = "someone-else"
    lines[3] = json.dumps(edited)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    line = run.fails(EXIT_BROKEN, "audit", "verify", "--input", str(out))
    assert line.startswith("audit chain broken at seq 3 ")
    out.write_text("not an export\n", encoding="utf-8")
    assert "not JSON" in run.fails(1, "audit", "verify", "--input", str(out))


def test_prune_prints_the_checkpoint_and_what_remains_verifies(run: Cli) -> None:
    with run.registry() as registry:
        store = trail_of(registry).store
        old = store.now().replace(year=2020)
        sql(registry, "UPDATE audit_events SET occurred_at = :old WHERE seq <= 3", old=old)
        [(seq3,)] = rows(registry, "SELECT hash FROM audit_events WHERE seq = 3")
    result = run.ok("audit", "prune", "--older-than", "90d", "--yes")
    assert result.stdout == f"pruned 3 events; checkpoint at seq 3 {seq3}\n"
    [logged] = head_logs(result.stderr)
    assert logged["seq"] == 7  # the prune's own event
    verified = run.ok("audit", "verify").stdout
    assert verified.startswith("verified 4 events, head 7 ")
    assert "from the checkpoint at seq 3" in verified
    again = run.ok("audit", "prune", "--older-than", "90d", "--yes", "--format", "json")
    assert json.loads(again.stdout) == {"pruned": 0, "checkpoint": None}
    assert run.ok("audit", "prune", "--older-than", "90d", "--yes").stdout.startswith("pruned 0")


def test_prune_asks_first_and_refuses_a_bad_duration(run: Cli) -> None:
    refused = run.fails(2, "audit", "prune", "--older-than", "1d")
    assert "refusing to prune without confirmation: stdin is not a terminal" in refused
    assert "duration" in run.fails(2, "audit", "prune", "--older-than", "soon", "--yes")


def test_a_shredded_users_values_are_erased_in_the_listing_but_the_chain_holds(
    group: click.Group, tmp_path: Path, database_url: str, k1: Any, i1: Any
) -> None:
    app = Cli(group, tmp_path, database_url)
    keys = {
        "USERPLANE_ENCRYPTION_KEYS": k1.entry(),
        "USERPLANE_ENCRYPTION_INDEX_KEYS": i1.entry(),
    }
    app.env.update(keys)
    app.ok("migrate")
    app.ok("users", "create", "--email", "ann@example.org", "--full-name", "Ann")
    listed = json.loads(app.ok("audit", "list", "--format", "json").stdout)
    assert listed["changes"]["email"] == {"before": None, "after": "ann@example.org"}
    exported = app.ok("audit", "export").stdout
    assert "ann@example.org" not in exported
    app.ok("users", "shred", "ann@example.org", "--yes")
    first = json.loads(app.ok("audit", "list", "--format", "json").stdout.splitlines()[0])
    assert first["changes"]["email"] == {"erased": True}
    assert app.ok("audit", "verify").stdout.startswith("verified 3 events")


def _docs_verifier() -> str:
    """The offline verifier docs/audit.md gives third parties, as written there."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "audit.md").read_text("utf-8")
    after = text.split("This program does what", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_offline_verifier_works_as_written(run: Cli, tmp_path: Path) -> None:
    program = tmp_path / "verify_export.py"
    program.write_text(_docs_verifier(), encoding="utf-8")
    export = tmp_path / "trail.jsonl"
    run.ok("audit", "export", "--output", str(export))
    with run.registry() as registry:
        head = trail_of(registry).head()
    done = subprocess.run(
        [sys.executable, str(program), str(export)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"verified, head {head.seq} {head.hash}\n"
    lines = export.read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[2])
    edited["fields"]["email"]["after"] = "mallory@example.org"
    lines[2] = json.dumps(edited)
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(program), str(export)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == "seq 2 was edited\n"
