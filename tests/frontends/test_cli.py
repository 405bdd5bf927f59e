"""The admin CLI in-process, through click's CliRunner, over a real database per test.

Most tests use a SQLite file of their own; those taking ``on_db`` run on SQLite and
PostgreSQL (see ``conftest.py``).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from userplane import NewUser, Registry, Settings, migrations
from userplane.frontends.cli import cli
from userplane.frontends.cli.errors import CANCELLED
from userplane.settings import MASK, default_workers
from userplane.users import UserService

#: Read by ``conftest.py`` when a test first needs PostgreSQL: kept out of the CLI's
#: environment rather than out of the test process.
PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"

CORE_MIGRATION_IDS = sorted(
    p.name.removesuffix(".sql")
    for p in migrations.folder("sqlite").glob("*.sql")  # type: ignore[union-attr]
    if not p.name.endswith(".rollback.sql")
)
#: The core's migrations, then the plugins' (api_keys, audit, console, rate_limits, scim
#: and webhooks own their tables).
MIGRATIONS = [(m, "userplane") for m in CORE_MIGRATION_IDS] + [
    ("api_keys_0001_api_keys", "api_keys"),
    ("audit_0001_events", "audit"),
    ("console_0001_sessions", "console"),
    ("rate_limits_0001_rate_limits", "rate_limits"),
    ("scim_0001_users", "scim"),
    ("webhooks_0001_webhooks", "webhooks"),
]
MIGRATION_IDS = [m for m, _ in MIGRATIONS]
#: The distribution that ships the built-in plugins, as `plugins` names it.
DISTRIBUTION = f"userplane {importlib.metadata.version('userplane')}"
USER_KEYS = {
    "id",
    "email",
    "full_name",
    "is_active",
    "created_at",
    "updated_at",
    "version",
    "deleted_at",
    "external_source",
    "external_id",
    "attributes",
}
TABLE_COLUMNS = ["ID", "EMAIL", "FULL_NAME", "IS_ACTIVE", "CREATED_AT", "VERSION", "DELETED_AT"]


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No USERPLANE_* from the outer environment; the root logger restored afterwards.

    The logging plugin attaches a handler to whatever ``sys.stderr`` is when a
    registry starts, which under CliRunner is the runner's capture stream.
    """
    for name in list(os.environ):
        if name.startswith("USERPLANE_") and name != PG_ENV:
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yoyo_level = logging.getLogger("yoyo").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("yoyo").setLevel(yoyo_level)


class Cli:
    """Invokes ``userplane`` against this test's database, never a stray ``.env``."""

    def __init__(self, tmp_path: Path, database_url: str | None = None) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url or f"sqlite:///{tmp_path}/u.db"
        # An empty file: a named --env-file must exist, and this keeps a stray .env out.
        self.env_file = tmp_path / "empty.env"
        self.env_file.touch()
        self.runner = CliRunner()
        self.env: dict[str, str | None] = {
            "USERPLANE_DATABASE_URL": self.database_url,
            "USERPLANE_LOG_FORMAT": "json",
            PG_ENV: None,
        }

    def __call__(
        self,
        *args: str,
        env: Mapping[str, str | None] | None = None,
        env_file: Path | None = None,
        input: str | None = None,
    ) -> Result:
        return self.runner.invoke(
            cli,
            ["--env-file", str(env_file or self.env_file), *args],
            env={**self.env, **(env or {})},
            input=input,
            catch_exceptions=False,
        )

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        assert result.stderr == ""
        return result

    def json(self, *args: str, **kwargs: Any) -> list[dict[str, Any]]:
        """The JSON lines a ``--format json`` command prints."""
        result = self.ok(*args, "--format", "json", **kwargs)
        return [json.loads(line) for line in result.stdout.splitlines()]

    def one(self, *args: str, **kwargs: Any) -> dict[str, Any]:
        """The single JSON object a ``--format json`` command prints."""
        rows = self.json(*args, **kwargs)
        assert len(rows) == 1, rows
        return rows[0]

    def fails(self, code: int, *args: str, **kwargs: Any) -> str:
        """Run, expect exit ``code``, nothing on stdout and one line on stderr; return it."""
        result = self(*args, **kwargs)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert result.stderr.endswith("\n")
        assert "Traceback" not in result.stderr
        return lines[0]

    def create(self, email: str, *extra: str) -> dict[str, Any]:
        return self.one("users", "create", "--email", email, *extra)


@pytest.fixture
def run(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def app(run: Cli) -> Cli:
    """The CLI over a migrated database."""
    run.ok("migrate")
    return run


def table(result: Result) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a table, split on runs of two or more spaces."""
    lines = result.stdout.splitlines()
    split = [[cell for cell in line.split("  ") if cell] for line in lines]
    return [c.strip() for c in split[0]], [[c.strip() for c in row] for row in split[1:]]


def emails(rows: list[dict[str, Any]]) -> list[str]:
    return [row["email"] for row in rows]


# --- migrate -------------------------------------------------------------------------------


def test_migrate_applies_once_then_has_nothing_to_apply(run: Cli) -> None:
    first = run.ok("migrate")
    assert first.stdout == f"applied: {', '.join(MIGRATION_IDS)}\n"
    second = run.ok("migrate")
    assert second.stdout == "nothing to apply: the schema is up to date\n"


def test_migrate_json_lists_what_it_applied(run: Cli) -> None:
    assert run.json("migrate") == [{"applied": MIGRATION_IDS}]
    assert run.json("migrate") == [{"applied": []}]


def test_migrate_status_before_and_after(run: Cli) -> None:
    before = run.ok("migrate", "--status")
    header, rows = table(before)
    assert header == ["ID", "SOURCE", "APPLIED"]
    assert rows == [[m, source, "no"] for m, source in MIGRATIONS]
    assert run.json("migrate", "--status") == [
        {"id": m, "source": source, "applied": False} for m, source in MIGRATIONS
    ]

    run.ok("migrate")
    _, rows = table(run.ok("migrate", "--status"))
    assert rows == [[m, source, "yes"] for m, source in MIGRATIONS]
    assert run.json("migrate", "--status") == [
        {"id": m, "source": source, "applied": True} for m, source in MIGRATIONS
    ]


def test_commands_before_migrate_say_to_run_migrate(run: Cli) -> None:
    for args in (
        ("users", "list"),
        ("users", "create", "--email", "ann@example.org"),
        ("users", "get", "ann@example.org"),
    ):
        line = run.fails(10, *args)
        assert line.startswith("userplane: unavailable:")
        assert "run `userplane migrate`" in line


# --- users create -------------------------------------------------------------------------


def test_create_prints_exactly_one_json_object(app: Cli) -> None:
    result = app.ok(
        "users", "create", "--email", "Ann@Example.org", "--full-name", "Ann", "--format", "json"
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    user = json.loads(lines[0])
    assert set(user) == USER_KEYS
    assert uuid.UUID(user["id"])
    assert user["email"] == "Ann@Example.org"  # stored as given; only the key is folded
    assert user["full_name"] == "Ann"
    assert user["is_active"] is True
    assert user["version"] == 1
    assert user["created_at"] == user["updated_at"]
    assert user["created_at"].endswith("Z")
    assert user["deleted_at"] is None


def test_create_without_a_name_and_inactive(app: Cli) -> None:
    user = app.create("bob@example.org", "--inactive")
    assert user["full_name"] is None
    assert user["is_active"] is False


def test_create_table_output(app: Cli) -> None:
    result = app.ok("users", "create", "--email", "ann@example.org")
    header, rows = table(result)
    assert header == TABLE_COLUMNS
    assert len(rows) == 1
    user = app.one("users", "get", "ann@example.org")
    assert rows[0] == [user["id"], "ann@example.org", "-", "yes", user["created_at"], "1", "-"]


def test_duplicate_email_in_another_case_is_a_conflict(app: Cli) -> None:
    first = app.create("ann@example.org")
    line = app.fails(4, "users", "create", "--email", "ANN@Example.ORG")
    assert line.startswith("userplane: conflict:")
    # Given --format json, the error is one JSON object.
    line = app.fails(4, "users", "create", "--email", "ANN@Example.ORG", "--format", "json")
    assert json.loads(line) == {
        "error": "conflict",
        "detail": "a user with that email already exists",
        "exit_code": 4,
    }
    assert app.json("users", "list") == [first]


@pytest.mark.parametrize("email", ["not-an-email", "ann@", "@example.org", "a b@example.org"])
def test_invalid_email_is_invalid_input(app: Cli, email: str) -> None:
    line = app.fails(5, "users", "create", "--email", email)
    assert line.startswith("userplane: invalid-input:")
    assert "$.email" in line
    assert app.json("users", "list") == []


def test_blank_full_name_is_invalid_input(app: Cli) -> None:
    line = app.fails(5, "users", "create", "--email", "ann@example.org", "--full-name", "  ")
    assert line.startswith("userplane: invalid-input:")
    assert "$.full_name" in line


def test_create_requires_an_email(app: Cli) -> None:
    result = app("users", "create")
    assert result.exit_code == 2
    assert "--email" in result.stderr


# --- users get ----------------------------------------------------------------------------


def test_get_by_id_and_by_email_in_any_case(app: Cli) -> None:
    user = app.create("Ann@Example.org", "--full-name", "Ann")
    app.create("bob@example.org")
    assert app.one("users", "get", user["id"]) == user
    assert app.one("users", "get", user["id"].upper()) == user
    for address in ("Ann@Example.org", "ann@example.org", "ANN@EXAMPLE.ORG", "aNn@eXaMpLe.OrG"):
        assert app.one("users", "get", address) == user


def test_get_table_output(app: Cli) -> None:
    user = app.create("ann@example.org", "--full-name", "Ann Example")
    header, rows = table(app.ok("users", "get", user["id"]))
    assert header == TABLE_COLUMNS
    assert rows == [
        [user["id"], "ann@example.org", "Ann Example", "yes", user["created_at"], "1", "-"]
    ]


def test_get_unknown_is_not_found(app: Cli) -> None:
    app.create("ann@example.org")
    unknown = str(uuid.uuid4())
    line = app.fails(3, "users", "get", unknown)
    assert line.startswith("userplane: not-found:")
    assert unknown in line
    assert app.fails(3, "users", "get", "nobody@example.org").startswith("userplane: not-found:")


# --- users list ---------------------------------------------------------------------------


@pytest.fixture
def three(app: Cli) -> list[dict[str, Any]]:
    """Three users, created in this order."""
    return [
        app.create("ann@example.org", "--full-name", "Ann Archer"),
        app.create("Bob@Example.org", "--full-name", "Bob Builder", "--inactive"),
        app.create("carol@other.net"),
    ]


def test_list_json_lines_oldest_first(app: Cli, three: list[dict[str, Any]]) -> None:
    result = app.ok("users", "list", "--format", "json")
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert [json.loads(line) for line in lines] == three


def test_list_table(app: Cli, three: list[dict[str, Any]]) -> None:
    header, rows = table(app.ok("users", "list"))
    assert header == TABLE_COLUMNS
    ann, bob, carol = three
    assert rows == [
        [ann["id"], "ann@example.org", "Ann Archer", "yes", ann["created_at"], "1", "-"],
        [bob["id"], "Bob@Example.org", "Bob Builder", "no", bob["created_at"], "1", "-"],
        [carol["id"], "carol@other.net", "-", "yes", carol["created_at"], "1", "-"],
    ]


def test_list_when_empty(app: Cli) -> None:
    assert app.ok("users", "list", "--format", "json").stdout == ""
    header, rows = table(app.ok("users", "list"))
    assert header == TABLE_COLUMNS
    assert rows == []


def test_list_active_and_inactive(app: Cli, three: list[dict[str, Any]]) -> None:
    ann, bob, carol = three
    assert app.json("users", "list", "--active") == [ann, carol]
    assert app.json("users", "list", "--inactive") == [bob]


def test_list_by_email_in_any_case(app: Cli, three: list[dict[str, Any]]) -> None:
    _, bob, _ = three
    assert app.json("users", "list", "--email", "bob@example.org") == [bob]
    assert app.json("users", "list", "--email", "BOB@EXAMPLE.ORG") == [bob]
    assert app.json("users", "list", "--email", "nobody@example.org") == []
    assert app.json("users", "list", "--email", "bob@example.org", "--active") == []


def test_list_by_invalid_email_is_invalid_input(app: Cli, three: list[dict[str, Any]]) -> None:
    line = app.fails(5, "users", "list", "--email", "not-an-email")
    assert line.startswith("userplane: invalid-input:")


def test_list_query_matches_email_or_name_in_any_case(
    app: Cli, three: list[dict[str, Any]]
) -> None:
    ann, bob, carol = three
    assert app.json("users", "list", "-q", "EXAMPLE") == [ann, bob]
    assert app.json("users", "list", "--query", "builder") == [bob]
    assert app.json("users", "list", "-q", "ARCH") == [ann]
    assert app.json("users", "list", "-q", "other.net") == [carol]
    assert app.json("users", "list", "-q", "zzz") == []
    assert app.json("users", "list", "-q", "%") == []  # taken literally, not a wildcard
    assert app.json("users", "list", "-q", "example", "--active") == [ann]


def test_list_limit(app: Cli, three: list[dict[str, Any]]) -> None:
    assert app.json("users", "list", "--limit", "2") == three[:2]
    assert app.json("users", "list", "--limit", "1") == three[:1]
    assert app.json("users", "list", "--limit", "50") == three
    result = app("users", "list", "--limit", "0")
    assert result.exit_code == 2
    assert "--limit" in result.stderr


def test_list_follows_every_page_past_the_page_size(app: Cli) -> None:
    count = 1203  # more than two full pages of 500
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": app.database_url})
    with Registry(settings) as reg:
        created = [
            reg.users.create(
                NewUser(
                    email=f"{'User' if i % 2 else 'user'}{(i * 7919) % count:04d}@example.org",
                    full_name=None if i % 10 == 0 else f"{'Name' if i % 3 else 'name'} {i % 37}",
                    is_active=i % 3 != 0,
                )
            )
            for i in range(count)
        ]
    ids = {str(u.id) for u in created}

    rows = app.json("users", "list")
    assert len(rows) == count
    assert {r["id"] for r in rows} == ids
    keys = [(r["created_at"], r["id"]) for r in rows]
    assert keys == sorted(keys)  # oldest first, ids break ties, no page overlaps

    assert app.json("users", "list", "--limit", "501") == rows[:501]
    assert app.json("users", "list", "--limit", "1000") == rows[:1000]
    assert app.json("users", "list", "--limit", "5000") == rows

    inactive = app.json("users", "list", "--inactive")
    assert inactive == [r for r in rows if not r["is_active"]]
    assert len(inactive) == 401
    active = app.json("users", "list", "--active", "--limit", "700")
    assert active == [r for r in rows if r["is_active"]][:700]

    _, table_rows = table(app.ok("users", "list"))
    assert [r[0] for r in table_rows] == [r["id"] for r in rows]

    # Every sort follows its own cursors across pages: each user once, in order.
    by_email = app.json("users", "list", "--sort", "-email")
    assert [r["email"].lower() for r in by_email] == sorted(
        (r["email"].lower() for r in rows), reverse=True
    )
    by_name = app.json("users", "list", "--sort", "full_name")
    assert [r["id"] for r in by_name] == [
        r["id"]
        for r in sorted(rows, key=lambda r: ((r["full_name"] or "").lower(), uuid.UUID(r["id"])))
    ]
    newest = app.json("users", "list", "--sort", "-created_at", "--inactive", "--limit", "600")
    assert newest == inactive[::-1]


# --- users update -------------------------------------------------------------------------


def test_update_full_name_and_clear_it(app: Cli) -> None:
    user = app.create("ann@example.org")
    renamed = app.one("users", "update", user["id"], "--full-name", "Ann Archer")
    assert renamed["full_name"] == "Ann Archer"
    assert renamed["version"] == 2
    assert renamed["id"] == user["id"]
    assert renamed["created_at"] == user["created_at"]
    assert renamed["updated_at"] >= user["updated_at"]

    cleared = app.one("users", "update", "ANN@example.org", "--clear-full-name")
    assert cleared["full_name"] is None
    assert cleared["version"] == 3
    assert app.one("users", "get", user["id"]) == cleared


def test_update_email(app: Cli) -> None:
    user = app.create("ann@example.org")
    moved = app.one("users", "update", user["id"], "--email", "Ann@New.example")
    assert moved["email"] == "Ann@New.example"
    assert app.one("users", "get", "ann@new.example") == moved
    assert app.fails(3, "users", "get", "ann@example.org").startswith("userplane: not-found:")


def test_update_email_to_a_taken_one_is_a_conflict(app: Cli) -> None:
    ann = app.create("ann@example.org")
    bob = app.create("bob@example.org")
    line = app.fails(4, "users", "update", bob["id"], "--email", "ANN@example.org")
    assert line.startswith("userplane: conflict:")
    assert app.json("users", "list") == [ann, bob]


def test_update_invalid_email_is_invalid_input(app: Cli) -> None:
    ann = app.create("ann@example.org")
    assert app.fails(5, "users", "update", ann["id"], "--email", "nope").startswith(
        "userplane: invalid-input:"
    )
    assert app.one("users", "get", ann["id"]) == ann


def test_update_active_and_inactive(app: Cli) -> None:
    user = app.create("ann@example.org")
    off = app.one("users", "update", user["id"], "--inactive")
    assert off["is_active"] is False
    on = app.one("users", "update", user["id"], "--active")
    assert on["is_active"] is True
    assert on["version"] == 3


def test_update_if_version(app: Cli) -> None:
    user = app.create("ann@example.org")
    updated = app.one("users", "update", user["id"], "--full-name", "Ann", "--if-version", "1")
    assert updated["version"] == 2
    line = app.fails(6, "users", "update", user["id"], "--full-name", "Lost", "--if-version", "1")
    assert line.startswith("userplane: precondition-failed:")
    assert app.one("users", "get", user["id"]) == updated


def test_update_full_name_with_clear_full_name_is_a_usage_error(app: Cli) -> None:
    user = app.create("ann@example.org", "--full-name", "Ann")
    result = app("users", "update", user["id"], "--full-name", "X", "--clear-full-name")
    assert result.exit_code == 2
    assert "--full-name and --clear-full-name exclude each other" in result.stderr
    assert "Traceback" not in result.output
    assert app.one("users", "get", user["id"]) == user


def test_update_unknown_user_is_not_found(app: Cli) -> None:
    line = app.fails(3, "users", "update", str(uuid.uuid4()), "--full-name", "X")
    assert line.startswith("userplane: not-found:")
    line = app.fails(3, "users", "update", "nobody@example.org", "--inactive")
    assert line.startswith("userplane: not-found:")


# --- users deactivate / activate / delete ----------------------------------------------------


def test_deactivate_and_activate(app: Cli) -> None:
    user = app.create("ann@example.org")
    off = app.one("users", "deactivate", "ANN@example.org")
    assert off["is_active"] is False
    assert off["version"] == 2
    assert app.json("users", "list", "--inactive") == [off]
    on = app.one("users", "activate", user["id"])
    assert on["is_active"] is True
    assert on["version"] == 3
    assert app.json("users", "list", "--inactive") == []
    assert app.fails(3, "users", "activate", str(uuid.uuid4())).startswith("userplane: not-found:")


def test_delete_then_get_is_not_found_and_the_email_stays_reserved(app: Cli) -> None:
    ann = app.create("ann@example.org")
    bob = app.create("bob@example.org")
    deleted = app.one("users", "delete", ann["id"])
    # The user as deleted: the same user, one version on, with deleted_at set.
    assert {
        k: v for k, v in deleted.items() if k not in {"version", "updated_at", "deleted_at"}
    } == {k: v for k, v in ann.items() if k not in {"version", "updated_at", "deleted_at"}}
    assert deleted["version"] == 2
    assert deleted["deleted_at"] is not None
    deleted_at = datetime.fromisoformat(deleted["deleted_at"])
    assert deleted_at >= datetime.fromisoformat(ann["created_at"])
    assert app.fails(3, "users", "get", ann["id"]).startswith("userplane: not-found:")
    assert app.fails(3, "users", "get", "ann@example.org").startswith("userplane: not-found:")
    assert app.fails(3, "users", "delete", ann["id"]).startswith("userplane: not-found:")
    assert app.fails(3, "users", "delete", "ann@example.org").startswith("userplane: not-found:")
    line = app.fails(3, "users", "update", ann["id"], "--full-name", "X")
    assert line.startswith("userplane: not-found:")
    assert app.json("users", "list") == [bob]
    # Soft: the address stays taken until the user is purged.
    line = app.fails(4, "users", "create", "--email", "ANN@example.org")
    assert line.startswith("userplane: conflict:")
    line = app.fails(4, "users", "update", bob["id"], "--email", "Ann@Example.org")
    assert line.startswith("userplane: conflict:")
    assert app.one("users", "get", bob["id"]) == bob
    assert app.one("users", "get", ann["id"], "--include-deleted") == deleted


def test_delete_by_email_with_if_version(app: Cli) -> None:
    user = app.create("ann@example.org")
    changed = app.one("users", "update", user["id"], "--full-name", "Ann")
    line = app.fails(6, "users", "delete", "ann@example.org", "--if-version", "1")
    assert line.startswith("userplane: precondition-failed:")
    assert app.one("users", "get", user["id"]) == changed
    deleted = app.one("users", "delete", "ANN@example.org", "--if-version", "2")
    assert deleted["version"] == 3
    assert deleted["deleted_at"] is not None
    assert deleted["full_name"] == "Ann"
    assert app.json("users", "list") == []
    assert app.json("users", "list", "--include-deleted") == [deleted]


# --- soft delete, restore, include-deleted (on SQLite and PostgreSQL) -----------------------


@pytest.fixture
def on_db(tmp_path: Path, database_url: str) -> Cli:
    """The CLI over this test's migrated database, on each backend."""
    run = Cli(tmp_path, database_url)
    run.ok("migrate")
    return run


def service_at(registry: Registry, when: datetime) -> UserService:
    """``registry``'s user service (same storage and hooks) with its clock stopped at ``when``."""
    return UserService(registry.storage, registry.hooks, registry=registry, clock=lambda: when)


def same_user(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """The same user with the same data, whatever its version, update time and deletion."""
    ignored = {"version", "updated_at", "deleted_at"}
    return {k: v for k, v in a.items() if k not in ignored} == {
        k: v for k, v in b.items() if k not in ignored
    }


def test_delete_include_deleted_restore_round_trip(on_db: Cli) -> None:
    app = on_db
    ann = app.create("Ann@Example.org", "--full-name", "Ann")
    bob = app.create("bob@example.org")

    deleted = app.one("users", "delete", "ann@EXAMPLE.org")
    assert same_user(deleted, ann)
    assert deleted["version"] == 2
    assert deleted["deleted_at"] is not None
    for ref in (ann["id"], "ANN@example.org"):
        assert app.fails(3, "users", "get", ref).startswith("userplane: not-found:")
        assert app.one("users", "get", ref, "--include-deleted") == deleted
    assert app.json("users", "list") == [bob]
    assert app.json("users", "list", "--include-deleted") == [deleted, bob]
    line = app.fails(6, "users", "update", bob["id"], "--full-name", "B", "--if-version", "2")
    assert line.startswith("userplane: precondition-failed:")

    restored = app.one("users", "restore", "ann@example.ORG")
    assert same_user(restored, ann)
    assert restored["deleted_at"] is None
    assert restored["version"] == 3
    assert app.one("users", "get", ann["id"]) == restored
    assert app.one("users", "get", ann["id"], "--include-deleted") == restored
    assert app.json("users", "list") == [restored, bob]
    # Restoring a live user changes nothing, by id or by email.
    assert app.one("users", "restore", ann["id"]) == restored
    assert app.one("users", "restore", "bob@example.org") == bob
    # Writes go on from the restored version.
    line = app.fails(6, "users", "update", ann["id"], "--full-name", "X", "--if-version", "2")
    assert line.startswith("userplane: precondition-failed:")
    updated = app.one("users", "update", ann["id"], "--full-name", "Ann B", "--if-version", "3")
    assert updated["version"] == 4


def test_delete_if_version_of_a_deleted_user_is_not_found(on_db: Cli) -> None:
    user = on_db.create("ann@example.org")
    on_db.one("users", "delete", user["id"], "--if-version", "1")
    line = on_db.fails(3, "users", "delete", user["id"], "--if-version", "2")
    assert line.startswith("userplane: not-found:")


def test_restore_unknown_is_not_found(on_db: Cli) -> None:
    on_db.create("ann@example.org")
    unknown = str(uuid.uuid4())
    line = on_db.fails(3, "users", "restore", unknown)
    assert line.startswith("userplane: not-found:")
    assert unknown in line
    line = on_db.fails(3, "users", "restore", "nobody@example.org")
    assert line.startswith("userplane: not-found:")
    line = on_db.fails(5, "users", "restore", "not-an-email")
    assert line.startswith("userplane: invalid-input:")


def test_restore_and_delete_print_tables_with_deleted_at(on_db: Cli) -> None:
    user = on_db.create("ann@example.org", "--full-name", "Ann")
    header, rows = table(on_db.ok("users", "delete", user["id"]))
    assert header == TABLE_COLUMNS
    [row] = rows
    deleted = on_db.one("users", "get", user["id"], "--include-deleted")
    created = user["created_at"]
    assert row == [user["id"], "ann@example.org", "Ann", "yes", created, "2", deleted["deleted_at"]]
    header, rows = table(on_db.ok("users", "restore", user["id"]))
    assert header == TABLE_COLUMNS
    assert rows == [[user["id"], "ann@example.org", "Ann", "yes", user["created_at"], "3", "-"]]


def test_list_table_shows_deleted_at_only_for_deleted_users(on_db: Cli) -> None:
    ann = on_db.create("ann@example.org")
    bob = on_db.create("bob@example.org")
    deleted = on_db.one("users", "delete", bob["id"])
    header, rows = table(on_db.ok("users", "list", "--include-deleted"))
    assert header == TABLE_COLUMNS
    assert [(r[0], r[-1]) for r in rows] == [
        (ann["id"], "-"),
        (bob["id"], deleted["deleted_at"]),
    ]
    header, rows = table(on_db.ok("users", "get", "bob@example.org", "--include-deleted"))
    assert rows[0][-1] == deleted["deleted_at"]


# --- users list --sort ----------------------------------------------------------------------


@pytest.fixture
def sortable(on_db: Cli) -> dict[str, dict[str, Any]]:
    """Users whose orders by email, by name and by creation all differ."""
    made = {}
    for key, email, name in [
        ("carl", "carl@x.org", "carl"),
        ("anon", "Zed@x.org", None),
        ("bea", "BEA@x.org", "Bea"),
        ("al", "al+1@x.org", "ALAN"),
        ("ann", "Ann@X.org", "ann"),
    ]:
        made[key] = on_db.create(email, *(["--full-name", name] if name else []))
    return made


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("created_at", ["carl", "anon", "bea", "al", "ann"]),
        ("-created_at", ["ann", "al", "bea", "anon", "carl"]),
        ("email", ["al", "ann", "bea", "carl", "anon"]),
        ("-email", ["anon", "carl", "bea", "ann", "al"]),
        ("full_name", ["anon", "al", "ann", "bea", "carl"]),
        ("-full_name", ["carl", "bea", "ann", "al", "anon"]),
    ],
)
def test_list_sorts(
    on_db: Cli, sortable: dict[str, dict[str, Any]], sort: str, order: list[str]
) -> None:
    expected = [sortable[k] for k in order]
    assert on_db.json("users", "list", "--sort", sort) == expected
    assert on_db.json("users", "list", f"--sort={sort}", "--limit", "2") == expected[:2]
    _, rows = table(on_db.ok("users", "list", "--sort", sort))
    assert [r[0] for r in rows] == [u["id"] for u in expected]


def test_list_sort_with_include_deleted_and_filters(
    on_db: Cli, sortable: dict[str, dict[str, Any]]
) -> None:
    gone = on_db.one("users", "delete", sortable["bea"]["id"])
    on_db.one("users", "deactivate", sortable["carl"]["id"])
    carl = on_db.one("users", "get", sortable["carl"]["id"])
    anon, al, ann = sortable["anon"], sortable["al"], sortable["ann"]

    assert on_db.json("users", "list", "--sort", "-email") == [anon, carl, ann, al]
    everyone = on_db.json("users", "list", "--sort", "-email", "--include-deleted")
    assert everyone == [anon, carl, gone, ann, al]
    assert on_db.json("users", "list", "--include-deleted", "--sort", "full_name", "--active") == [
        anon,
        al,
        ann,
        gone,
    ]
    assert on_db.json("users", "list", "--sort", "-full_name", "-q", "A", "--limit", "2") == [
        carl,
        ann,
    ]
    assert on_db.json(
        "users", "list", "--sort", "-created_at", "--include-deleted", "--email", "bea@x.org"
    ) == [gone]
    assert on_db.json("users", "list", "--sort", "email", "--inactive") == [carl]


@pytest.mark.parametrize("sort", ["bogus", "-", "Email", "id", "--email", "updated_at"])
def test_list_unknown_sort_is_invalid_input_naming_sort(app: Cli, sort: str) -> None:
    app.create("ann@example.org")
    line = app.fails(5, "users", "list", f"--sort={sort}")
    assert line.startswith("userplane: invalid-input:")
    assert "$.sort" in line


# --- users purge ----------------------------------------------------------------------------


def purged_line(count: int) -> str:
    return f"purged {count} deleted user{'s' if count != 1 else ''}"


def test_purge_removes_only_users_deleted_long_enough_ago(on_db: Cli, registry: Registry) -> None:
    app = on_db
    users = {key: app.create(f"{key}@example.org") for key in ("old", "older", "recent", "live")}
    now = datetime.now(UTC)
    for key, ago in [
        ("older", timedelta(days=400)),
        ("old", timedelta(days=30, hours=1)),
        ("recent", timedelta(days=29, hours=23)),
    ]:
        service_at(registry, now - ago).delete(uuid.UUID(users[key]["id"]))
    recent = app.one("users", "get", users["recent"]["id"], "--include-deleted")

    result = app.ok("users", "purge", "--older-than", "30d", "--yes")

    assert purged_line(2) in result.stdout.splitlines()
    for key in ("old", "older"):
        gone = users[key]
        for ref in (gone["id"], gone["email"]):
            line = app.fails(3, "users", "get", ref, "--include-deleted")
            assert line.startswith("userplane: not-found:")
            assert app.fails(3, "users", "restore", ref).startswith("userplane: not-found:")
    assert app.json("users", "list", "--include-deleted") == [recent, users["live"]]
    # Their addresses are free again; the recent one's is still reserved.
    again = app.create("OLD@example.org")
    assert again["id"] != users["old"]["id"]
    app.create("older@example.org")
    line = app.fails(4, "users", "create", "--email", "recent@example.org")
    assert line.startswith("userplane: conflict:")
    # Nothing else is old enough; the recent one can still be restored.
    assert (
        app.one("users", "purge", "--older-than", "30d", "--yes", "--format", "json")["purged"] == 0
    )
    assert app.one("users", "restore", "recent@example.org")["deleted_at"] is None


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        pytest.param("45s", timedelta(seconds=45), id="45s"),
        pytest.param("90m", timedelta(minutes=90), id="90m"),
        pytest.param("12h", timedelta(hours=12), id="12h"),
        pytest.param("30d", timedelta(days=30), id="30d"),
        pytest.param("2w", timedelta(weeks=2), id="2w"),
    ],
)
def test_purge_durations_in_every_unit(
    on_db: Cli, registry: Registry, text: str, duration: timedelta
) -> None:
    app = on_db
    before = app.create("before@example.org")
    after = app.create("after@example.org")
    now = datetime.now(UTC)
    # A fifth of the duration on either side of the cut-off.
    service_at(registry, now - duration * 1.2).delete(uuid.UUID(before["id"]))
    service_at(registry, now - duration * 0.8).delete(uuid.UUID(after["id"]))

    [out] = app.json("users", "purge", "--older-than", text, "--yes")

    assert out["purged"] == 1
    assert app.fails(3, "users", "get", before["id"], "--include-deleted").startswith(
        "userplane: not-found:"
    )
    assert app.one("users", "get", after["id"], "--include-deleted")["deleted_at"] is not None


def test_purge_zero_seconds_takes_every_deleted_user_and_a_large_value_none(on_db: Cli) -> None:
    app = on_db
    ann = app.create("ann@example.org")
    bob = app.create("bob@example.org")
    app.one("users", "delete", ann["id"])

    assert purged_line(0) in app.ok("users", "purge", "--older-than", "52w", "--yes").stdout
    assert app.one("users", "get", ann["id"], "--include-deleted")["deleted_at"] is not None

    assert purged_line(1) in app.ok("users", "purge", "--older-than", "0s", "--yes").stdout

    assert app.fails(3, "users", "get", ann["id"], "--include-deleted").startswith(
        "userplane: not-found:"
    )
    assert app.fails(3, "users", "restore", ann["id"]).startswith("userplane: not-found:")
    assert app.json("users", "list", "--include-deleted") == [bob]
    assert app.create("Ann@Example.org")["id"] != ann["id"]
    # Live users are never purged.
    assert (
        app.one("users", "purge", "--older-than", "0s", "--yes", "--format", "json")["purged"] == 0
    )
    assert len(app.json("users", "list")) == 2


@pytest.mark.parametrize("answer", ["n\n", "\n", "", "no\n"])
def test_purge_without_yes_is_cancelled_unless_confirmed_at_a_terminal(
    on_db: Cli, answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from userplane.frontends.cli import app as cli_app

    monkeypatch.setattr(cli_app, "stdin_is_terminal", lambda: True)
    user = on_db.create("ann@example.org")
    on_db.one("users", "delete", user["id"])

    result = on_db("users", "purge", "--older-than", "0s", input=answer)

    assert result.exit_code == CANCELLED, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert "?" in result.stderr  # it asked, on stderr: stdout stays the command's output
    assert result.stderr.splitlines()[-1] == "userplane: cancelled: nothing was changed"
    assert result.stdout == ""
    assert on_db.one("users", "restore", user["id"])["deleted_at"] is None


@pytest.mark.parametrize("answer", ["y\n", "", "n\n"])
def test_purge_without_yes_is_refused_at_once_without_a_terminal(on_db: Cli, answer: str) -> None:
    # CliRunner's stdin is no terminal: even "y" on a pipe is not taken for an answer.
    user = on_db.create("ann@example.org")
    on_db.one("users", "delete", user["id"])

    line = on_db.fails(2, "users", "purge", "--older-than", "0s", input=answer)

    assert line == (
        "userplane: refusing to purge without confirmation: stdin is not a terminal; pass --yes"
    )
    assert on_db.one("users", "restore", user["id"])["deleted_at"] is None


def test_purge_without_yes_proceeds_when_confirmed(
    on_db: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from userplane.frontends.cli import app as cli_app

    monkeypatch.setattr(cli_app, "stdin_is_terminal", lambda: True)
    user = on_db.create("ann@example.org")
    on_db.one("users", "delete", user["id"])

    result = on_db("users", "purge", "--older-than", "0s", input="y\n")

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == (
        "Remove for good every user deleted more than 0 seconds ago? [y/N]: y\n"
    )
    assert purged_line(1) in result.stdout.splitlines()
    assert on_db.fails(3, "users", "restore", user["id"]).startswith("userplane: not-found:")


def test_purge_json_is_one_object(on_db: Cli) -> None:
    for i in range(3):
        user = on_db.create(f"u{i}@example.org")
        on_db.one("users", "delete", user["id"])
    result = on_db.ok("users", "purge", "--older-than", "0s", "--yes", "--format", "json")
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["purged"] == 3
    assert on_db.json("users", "list", "--include-deleted") == []


@pytest.mark.parametrize(
    "value",
    [
        "30",
        "d",
        "30x",
        "30 d",
        "1.5h",
        "-1d",
        "+1d",
        "",
        "P30D",
        "30days",
        "thirty d",
        "1e3s",
        "0x1fs",
        "²d",  # a digit to str.isdigit, not to int()
        "1000000000d",  # more days than any timedelta holds
    ],
)
def test_purge_bad_duration_is_a_usage_error(app: Cli, value: str) -> None:
    user = app.create("ann@example.org")
    app.one("users", "delete", user["id"])

    result = app("users", "purge", "--older-than", value, "--yes")

    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "--older-than" in result.stderr
    assert "internal error" not in result.stderr
    assert "Traceback" not in result.output
    assert app.one("users", "get", user["id"], "--include-deleted")["deleted_at"] is not None


def test_purge_needs_older_than(app: Cli) -> None:
    result = app("users", "purge", "--yes")
    assert result.exit_code == 2
    assert "--older-than" in result.stderr


def test_purge_with_a_duration_longer_than_the_calendar_is_not_an_internal_error(
    app: Cli,
) -> None:
    # 800000 days is a well-formed duration; no user was deleted that long ago.
    user = app.create("ann@example.org")
    app.one("users", "delete", user["id"])

    result = app("users", "purge", "--older-than", "800000d", "--yes")

    assert result.exit_code in (0, 2), (result.exit_code, result.stdout, result.stderr)
    assert "internal error" not in result.stderr
    assert "Traceback" not in result.output
    assert app.one("users", "get", user["id"], "--include-deleted")["deleted_at"] is not None


# --- plugins --------------------------------------------------------------------------------


def test_plugins_json_lists_sqlite_and_logging_with_their_hooks(run: Cli) -> None:
    by_name = {p["name"]: p for p in run.json("plugins")}
    assert by_name["sqlite"] == {
        "name": "sqlite",
        "module": "userplane.plugins.sqlite",
        "distribution": DISTRIBUTION,
        "hooks": ["userplane_describe", "userplane_open_storage"],
        "blocked": False,
        "broken": None,
    }
    assert by_name["logging"] == {
        "name": "logging",
        "module": "userplane.plugins.logging",
        "distribution": DISTRIBUTION,
        "hooks": [
            "userplane_describe",
            "userplane_http_middleware",
            "userplane_register_services",
            "userplane_startup",
        ],
        "blocked": False,
        "broken": None,
    }
    assert "userplane.core" not in by_name


def test_plugins_table(run: Cli) -> None:
    header, rows = table(run.ok("plugins"))
    assert header == ["NAME", "MODULE", "DISTRIBUTION", "STATUS", "HOOKS"]
    by_name = {r[0]: r for r in rows}
    assert by_name["sqlite"] == [
        "sqlite",
        "userplane.plugins.sqlite",
        DISTRIBUTION,
        "ok",
        "userplane_describe, userplane_open_storage",
    ]
    assert by_name["logging"] == [
        "logging",
        "userplane.plugins.logging",
        DISTRIBUTION,
        "ok",
        "userplane_describe, userplane_http_middleware, userplane_register_services, "
        "userplane_startup",
    ]


def test_plugins_shows_a_disabled_plugin_as_blocked(run: Cli) -> None:
    env = {"USERPLANE_DISABLED_PLUGINS": "logging"}
    by_name = {p["name"]: p for p in run.json("plugins", env=env)}
    assert by_name["logging"] == {
        "name": "logging",
        "module": "",
        "distribution": None,
        "hooks": [],
        "blocked": True,
        "broken": None,
    }
    assert by_name["sqlite"]["blocked"] is False
    _, rows = table(run.ok("plugins", env=env))
    assert rows[-1] == ["logging", "-", "blocked"]  # blocked plugins come last


def test_plugins_lists_a_disabled_storage_plugin_too(run: Cli) -> None:
    # Listing plugins is how an operator finds out why storage will not open:
    # it must not itself need storage.
    by_name = {
        p["name"]: p for p in run.json("plugins", env={"USERPLANE_DISABLED_PLUGINS": "sqlite"})
    }
    assert by_name["sqlite"]["blocked"] is True
    assert by_name["logging"]["blocked"] is False


# --- config ---------------------------------------------------------------------------------


def test_config_masks_the_database_password_without_opening_storage(run: Cli) -> None:
    env = {
        "USERPLANE_DATABASE_URL": "postgresql://u:s3cret@db.example:5432/users",
        "USERPLANE_SOME_SECRET": "x",
        "USERPLANE_FEATURE_FLAG": "on",
    }
    result = run.ok("config", env=env)
    assert "s3cret" not in result.output
    header, rows = table(result)
    assert header == ["NAME", "VALUE"]
    values = {r[0]: r[1] if len(r) > 1 else "" for r in rows}
    assert values["USERPLANE_DATABASE_URL"] == f"postgresql://u:{MASK}@db.example:5432/users"
    assert values["USERPLANE_SOME_SECRET"] == MASK
    assert values["USERPLANE_FEATURE_FLAG"] == "on"
    assert values["USERPLANE_LOG_FORMAT"] == "json"
    assert values["USERPLANE_PORT"] == "8000"

    as_json = run.json("config", env=env)
    assert "s3cret" not in json.dumps(as_json)
    assert len(as_json) == 1
    config = as_json[0]
    assert config["USERPLANE_DATABASE_URL"] == f"postgresql://u:{MASK}@db.example:5432/users"
    assert config["USERPLANE_SOME_SECRET"] == MASK
    assert config["USERPLANE_FEATURE_FLAG"] == "on"
    assert config["USERPLANE_WORKERS"] == default_workers()
    assert config["USERPLANE_CORS_ORIGINS"] == ""


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cret@h/db",
        "postgresql://:s3cret@h/db",
        "postgresql://u:s3cret@h/db?sslmode=require",
        # libpq takes any connection parameter from the query string, password too.
        "postgresql://u@h/db?password=s3cret",
        "postgresql:///db?host=h&user=u&password=s3cret",
    ],
)
def test_config_never_prints_the_database_password(run: Cli, url: str) -> None:
    env = {"USERPLANE_DATABASE_URL": url}
    assert "s3cret" not in run.ok("config", env=env).output
    assert "s3cret" not in run.ok("config", "--format", "json", env=env).output


# --- secrets in what commands print --------------------------------------------------------

#: Passwords a URL parser misreads when they are not percent-encoded: "#" and
#: "?" end the authority early (urlsplit, yoyo), "/" too, "@" ends the user info.
MALFORMED_PASSWORDS = ["Zq8#wX3kPm", "Zq8?wX3kPm", "Zq8/wX3kPm", "Zq8@wX3kPm", "Zq8#w?X3/kPm"]


def leaked(secret: str, *outputs: str) -> list[str]:
    """The pieces of ``secret`` longer than 2 characters found in ``outputs``."""
    text = "\n".join(outputs)
    pieces = {secret[i:j] for i in range(len(secret)) for j in range(i + 3, len(secret) + 1)}
    return sorted(p for p in pieces if p in text)


@pytest.mark.parametrize("password", ["pa#ss", "p?ss", *MALFORMED_PASSWORDS])
def test_config_never_prints_a_malformed_database_password(run: Cli, password: str) -> None:
    url = f"postgresql://u:{password}@db.example:5432/users"
    env = {"USERPLANE_DATABASE_URL": url}
    table_output = run.ok("config", env=env).output
    config = run.one("config", env=env)
    assert config["USERPLANE_DATABASE_URL"] == f"postgresql://u:{MASK}@db.example:5432/users"
    assert not leaked(password, table_output, json.dumps(config))


@pytest.mark.parametrize(
    "endpoint",
    ["http://otel:Zq8wX3kPm@collector:4318", "http://collector:4318/v1?token=Zq8wX3kPm"],
)
def test_config_masks_the_otel_endpoint_credentials(run: Cli, endpoint: str) -> None:
    env = {"USERPLANE_OTEL_ENDPOINT": endpoint}
    config = run.one("config", env=env)
    assert "collector:4318" in config["USERPLANE_OTEL_ENDPOINT"]
    assert MASK in config["USERPLANE_OTEL_ENDPOINT"]
    assert not leaked("Zq8wX3kPm", run.ok("config", env=env).output, json.dumps(config))


def test_config_lists_the_jwt_settings_with_their_defaults(run: Cli) -> None:
    config = run.one("config")
    assert config["USERPLANE_JWT_MAX_LIFETIME_SECONDS"] == 86400
    assert config["USERPLANE_JWT_ALLOW_ANY_AUDIENCE"] is False
    assert config["USERPLANE_JWT_ROLES_CLAIM_SEPARATOR"] is None


@pytest.mark.parametrize("password", MALFORMED_PASSWORDS)
@pytest.mark.parametrize(
    "command",
    [("migrate",), ("migrate", "--status"), ("check",), ("serve", "--migrate")],
    ids=" ".join,
)
def test_failing_commands_never_print_the_database_password(
    run: Cli, database_address: str, password: str, command: tuple[str, ...]
) -> None:
    # Each fails: a role the server does not know, or no server. What it prints
    # (its error line, and log lines at debug) holds no piece of the password,
    # even one a URL parser cut off ("Port could not be cast … as 'Zq8'").
    url = f"postgresql://userplane_no_such_role:{password}@{database_address}/no_such_db"
    env = {
        "USERPLANE_DATABASE_URL": url,
        "USERPLANE_LOG_LEVEL": "debug",
        "USERPLANE_DB_POOL_TIMEOUT_MS": "300",
    }
    result = run(*command, env=env)
    assert result.exit_code != 0, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("userplane: "), result.stderr
    assert not leaked(password, result.stdout, result.stderr), result.stderr


@pytest.mark.parametrize(
    ("password", "tail"),
    [
        # More special characters than any fixed number of cut points.
        ("Vh7!kP2$mQ9^zR4&wT1*yB6(nC3)pL5+sD8#Lx8", "sD8"),
        ("a&b&c&d&e&f&g&h&i&Tail99#x", "Tail99"),
        # A piece that is also in the URL's visible parts ("postgres" in the scheme).
        ("postgres#Xy9", "'postgres'"),
    ],
)
def test_migrate_never_prints_a_piece_of_a_long_or_wordy_password(
    run: Cli, database_address: str, password: str, tail: str
) -> None:
    url = f"postgresql://userplane_no_such_role:{password}@{database_address}/no_such_db"
    result = run("migrate", env={"USERPLANE_DATABASE_URL": url})
    assert result.exit_code != 0, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("userplane: "), result.stderr
    assert tail not in result.output, result.stderr
    assert password.partition("#")[0] not in result.output, result.stderr


def test_config_masks_a_url_password_holding_spaces(run: Cli) -> None:
    # A URL in text ends at whitespace; a setting's whole value is one URL.
    env = {
        "USERPLANE_DATABASE_URL": "postgresql://app:correct horse battery@db/users",
        "USERPLANE_OTEL_ENDPOINT": "http://otel:pa ss@collector:4318",
    }
    config = run.one("config", env=env)
    assert config["USERPLANE_DATABASE_URL"] == f"postgresql://app:{MASK}@db/users"
    assert config["USERPLANE_OTEL_ENDPOINT"] == f"http://otel:{MASK}@collector:4318"
    for output in (run.ok("config", env=env).output, json.dumps(config)):
        for secret in ("correct", "horse", "battery", "pa ss", "ss@"):
            assert secret not in output, output


def test_counts_and_paths_are_neither_masked_nor_masked_elsewhere(app: Cli) -> None:
    env = {
        "USERPLANE_API_KEYS_CACHE_SECONDS": "120",
        "USERPLANE_JWT_KEY_FILE": "/etc/userplane/idp.pem",
    }
    config = app.one("config", env=env)
    assert str(config["USERPLANE_API_KEYS_CACHE_SECONDS"]) == "120"
    assert config["USERPLANE_JWT_KEY_FILE"] == "/etc/userplane/idp.pem"
    # Were "120" a secret, every message holding it would be garbled.
    missing = "00000000-0000-0000-0000-000000000120"
    cache = {"USERPLANE_API_KEYS_CACHE_SECONDS": "120"}
    assert missing in app.fails(3, "users", "get", missing, env=cache)


def test_click_errors_mask_what_they_quote(app: Cli) -> None:
    key = "up_" + "AbCdEfGhIjKl" + "S3cretS3cretS3cretS3cretS3cretAb"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
    line = app.fails(2, "users", "list", "--limit", key)
    assert line.startswith("Error: Invalid value for '--limit': 'up_AbCdEfGhIjKl"), line
    assert "S3cret" not in line
    assert "users list --help" in line  # the hint click gives, on the same line
    assert "eyJzdWIi" not in app.fails(2, "users", "list", "--limit", jwt)
    assert "hunter2" not in app.fails(2, "users", "list", "--limit", "Bearer hunter2")
    assert "S3cret" not in app.fails(2, "--no-such-option", key)


def test_a_broken_plugins_reason_is_masked(run: Cli) -> None:
    from userplane.plugin_manager import BrokenPlugin, make_plugin_manager

    pm = make_plugin_manager(())
    pm.broken.append(  # type: ignore[attr-defined]
        BrokenPlugin("audit", "cannot reach postgresql://audit:Zq8#wX3kPm@db/audit")
    )
    result = run.runner.invoke(
        cli, ["--env-file", str(run.env_file), "plugins"], env=run.env, obj=pm
    )
    assert result.exit_code == 0, result.output
    assert "db/audit" in result.stdout
    assert not leaked("Zq8#wX3kPm", result.output)


@pytest.mark.parametrize(
    "name", ["USERPLANE_SOME_SECRET", "USERPLANE_API_TOKEN", "USERPLANE_SMTP_PASSWORD"]
)
def test_config_masks_secret_extras(run: Cli, name: str) -> None:
    config = run.one("config", env={name: "hunter2"})
    assert config[name] == MASK
    assert "hunter2" not in run.ok("config", env={name: "hunter2"}).output


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("USERPLANE_WORKERS", "abc"),
        ("USERPLANE_PORT", "70000"),
        ("USERPLANE_LOG_LEVEL", "loud"),
        ("USERPLANE_ENV", "staging"),
        ("USERPLANE_GRACEFUL_TIMEOUT", "0"),
    ],
)
def test_a_bad_setting_is_a_configuration_error_naming_it(run: Cli, name: str, value: str) -> None:
    line = run.fails(11, "config", env={name: value})
    assert line.startswith("userplane: configuration:")
    assert name in line
    # Every command reports it the same way, before touching storage.
    assert run.fails(11, "users", "list", env={name: value}) == line


def test_env_file_is_read_and_the_environment_wins(run: Cli, tmp_path: Path) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text(
        "USERPLANE_WORKERS=7\n"
        "USERPLANE_PORT=1111\n"
        'USERPLANE_HOST="0.0.0.0"\n'
        "# a comment\n"
        "USERPLANE_SOME_TOKEN=abc\n"
        "OTHER_VARIABLE=ignored\n",
        encoding="utf-8",
    )
    config = run.one("config", env={"USERPLANE_PORT": "2222"}, env_file=env_file)
    assert config["USERPLANE_WORKERS"] == 7
    assert config["USERPLANE_HOST"] == "0.0.0.0"
    assert config["USERPLANE_PORT"] == 2222
    assert config["USERPLANE_SOME_TOKEN"] == MASK
    assert "OTHER_VARIABLE" not in config


def test_env_file_setting_the_database_is_used(run: Cli, tmp_path: Path) -> None:
    env_file = tmp_path / "db.env"
    env_file.write_text(f"USERPLANE_DATABASE_URL=sqlite:///{tmp_path}/from-file.db\n")
    run.env.pop("USERPLANE_DATABASE_URL")
    run.ok("migrate", env_file=env_file)
    user = run.one("users", "create", "--email", "ann@example.org", env_file=env_file)
    assert (tmp_path / "from-file.db").is_file()
    assert not (tmp_path / "u.db").exists()
    assert run.json("users", "list", env_file=env_file) == [user]


def test_bad_setting_in_env_file_names_the_variable(run: Cli, tmp_path: Path) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text("USERPLANE_THREADS=many\n", encoding="utf-8")
    line = run.fails(11, "config", env_file=env_file)
    assert "USERPLANE_THREADS" in line
    # The environment wins over the file, so a good value there fixes it.
    assert (
        run.one("config", env={"USERPLANE_THREADS": "3"}, env_file=env_file)["USERPLANE_THREADS"]
        == 3
    )


def test_dot_env_in_the_working_directory_is_the_default(
    run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / ".env").write_text("USERPLANE_WORKERS=9\n", encoding="utf-8")
    other = tmp_path / "other.env"
    other.write_text("USERPLANE_WORKERS=5\n", encoding="utf-8")
    monkeypatch.chdir(workdir)
    result = run.runner.invoke(cli, ["config", "--format", "json"], env=run.env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["USERPLANE_WORKERS"] == 9
    named = run.runner.invoke(
        cli, ["config", "--format", "json"], env={**run.env, "USERPLANE_ENV_FILE": str(other)}
    )
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout)["USERPLANE_WORKERS"] == 5


def test_help_lists_the_commands(run: Cli) -> None:
    result = run.ok("--help")
    for command in ("config", "migrate", "plugins", "serve", "users"):
        assert command in result.stdout
    users_help = run.ok("users", "-h").stdout
    for command in (
        "activate",
        "create",
        "deactivate",
        "delete",
        "get",
        "list",
        "purge",
        "restore",
        "update",
    ):
        assert command in users_help


# --- check ----------------------------------------------------------------------------------


def test_check_pings_storage_and_every_plugin_service(run: Cli) -> None:
    # Every check is reported on stdout; the first failure is the one line on stderr.
    failed = run("check", "--format", "json")
    assert failed.exit_code == 10
    rows = [json.loads(line) for line in failed.stdout.splitlines()]
    not_migrated = rows[2]["error"]
    assert "run `userplane migrate`" in not_migrated
    assert [r["name"] for r in rows] == [
        "settings",
        "plugins",
        "storage",
        "webhooks",
        "scim",
        "console",
        "audit",
        "api_keys",
        "migrations",
    ]
    assert rows[2:8] == [
        {"name": name, "ok": False, "error": not_migrated, "detail": None}
        for name in ("storage", "webhooks", "scim", "console", "audit", "api_keys")
    ]
    assert rows[8] == {
        "name": "migrations",
        "ok": None,
        "error": "skipped: storage did not answer",
        "detail": None,
    }
    assert json.loads(failed.stderr) == {
        "error": "unavailable",
        "detail": not_migrated,
        "exit_code": 10,
        "retry_after": 1,
    }
    assert run("check").stderr == f"userplane: unavailable: {not_migrated}\n"
    run.ok("migrate")
    rows = run.json("check")
    assert rows == [
        {"name": "settings", "ok": True, "error": None, "detail": rows[0]["detail"]},
        {"name": "plugins", "ok": True, "error": None, "detail": rows[1]["detail"]},
        {"name": "storage", "ok": True, "error": None, "detail": "sqlite"},
        {"name": "encryption", "ok": True, "error": None, "detail": None},
        {"name": "webhooks", "ok": True, "error": None, "detail": None},
        {"name": "scim", "ok": True, "error": None, "detail": None},
        {"name": "console", "ok": True, "error": None, "detail": None},
        {"name": "audit", "ok": True, "error": None, "detail": None},
        {"name": "api_keys", "ok": True, "error": None, "detail": None},
        {
            "name": "migrations",
            "ok": True,
            "error": None,
            "detail": f"{len(MIGRATIONS)} applied, none pending",
        },
    ]
    assert rows[0]["detail"] == f"valid; env file {run.env_file}"
    assert rows[1]["detail"].endswith(" loaded")
    header, table_rows = table(run.ok("check"))
    assert header == ["NAME", "OK", "DETAIL"]
    assert [r[:2] for r in table_rows] == [[r["name"], "yes"] for r in rows]
    assert table_rows[2] == ["storage", "yes", "sqlite"]
