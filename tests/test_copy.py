"""``userplane copy --to URL``: a whole instance, SQLite <-> PostgreSQL, on real databases.

The round trip copies SQLite into a fresh PostgreSQL database and that into a
fresh SQLite file, and the last holds exactly the first's rows: users (deleted
ones, versions, times), sealed values as they were (never decrypted), the
encryption key records, idempotency keys, API keys, the audit trail and its
chain, webhook subscriptions and their outbox. On each target an API key
still authenticates, sealed values open with the same keyring, and the audit
chain verifies.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner, Result
from falcon import testing

from userplane import Registry, Settings
from userplane.copying import CopyResult, copy_instance
from userplane.errors import ConfigurationError, Conflict
from userplane.frontends.cli import cli
from userplane.frontends.http import create_app
from userplane.idempotency import StoredResponse
from userplane.keyring import NamedKey
from userplane.plugins import api_keys, webhooks
from userplane.plugins.audit import trail_of
from userplane.storage import CopyableStorage
from userplane.users import NewUser, UserChanges

# Copies between real databases, one as a real process.
pytestmark = pytest.mark.e2e

PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"
#: Not copied (ephemeral) and not compared.
EPHEMERAL = {"rate_limits"}


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No USERPLANE_* from the outer environment, and no .env of the working folder."""
    for name in list(os.environ):
        if name.startswith("USERPLANE_") and name != PG_ENV:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def env(k1: NamedKey, i1: NamedKey) -> dict[str, str]:
    """The settings every instance of a test shares but its URL: encryption on."""
    return {
        "USERPLANE_ENCRYPTION_KEYS": k1.entry(),
        "USERPLANE_ENCRYPTION_INDEX_KEYS": i1.entry(),
        "USERPLANE_WEBHOOKS_ALLOW_PRIVATE": "true",
        "USERPLANE_LOG_FORMAT": "json",
    }


@pytest.fixture
def new_postgresql(create_postgresql_database: Callable[[], str]) -> Callable[[], str]:
    """A factory of fresh, unmigrated PostgreSQL databases (dropped at the end of the run)."""
    return create_postgresql_database


@contextlib.contextmanager
def opened(url: str, env: dict[str, str]) -> Iterator[Registry]:
    with Registry(Settings.from_mapping({**env, "USERPLANE_DATABASE_URL": url})) as registry:
        yield registry


class Instance:
    """What a test put in the source, to check on every copy."""

    def __init__(self) -> None:
        self.api_key = ""
        self.deleted: uuid.UUID | None = None
        self.emails: dict[uuid.UUID, str] = {}
        self.subscription: uuid.UUID | None = None


def populate(url: str, env: dict[str, str]) -> Instance:
    """Users (one deleted, one updated), an API key, a webhook with its outbox, an
    idempotency key, and an audit trail partly chained."""
    made = Instance()
    with opened(url, env) as registry:
        registry.migrate()
        _, made.api_key = api_keys.service(registry).create("copied", "admin")
        sub = webhooks.service(registry).create(
            {"url": "http://127.0.0.1:9/hook", "events": ["*"], "description": "copied"}
        )
        made.subscription = sub.id
        users = [
            registry.users.create(NewUser(f"user{i}@example.org", f"User Nümber {i}"))
            for i in range(5)
        ]
        registry.users.update(users[1].id, UserChanges(full_name="Renamed"))
        made.deleted = registry.users.delete(users[2].id).id
        for user in users:
            made.emails[user.id] = user.email
        now = datetime.now(UTC)
        storage = registry.storage
        assert storage.claim_idempotency_key("k", "fp", now, now + timedelta(days=1), now)
        storage.complete_idempotency_key("k", StoredResponse(201, (("a", "b"),), b"\x00body"))
        trail_of(registry).catch_up(5)
        # One more event, left unchained: the target's chainer links it.
        registry.users.update(users[0].id, UserChanges(is_active=False))
    return made


def dump(registry: Registry) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, as the store holds it (through its own copy session).

    But transaction ids: the copy's are the target's own (a copied audit event
    keeps every hashed value, not the source server's id of its transaction).
    """
    storage = registry.storage
    assert isinstance(storage, CopyableStorage)
    out = {}
    tables = [t for t in storage.copy_tables() if t.name not in EPHEMERAL]
    with storage.copy_session(write=False) as session:
        for table in tables:
            columns = [c for c in table.columns if c.kind != "txid"]
            rows = [r for batch in session.rows(table, columns, 2) for r in batch]
            out[table.name] = sorted(rows, key=repr)
    return out


def check_target(url: str, env: dict[str, str], made: Instance) -> None:
    """The copy works as the source did: keys, sealed values, the chain, webhooks."""
    with opened(url, env) as registry:
        assert all(m.applied for m in registry.migration_status())
        # Sealed in the database, readable with the same keyring.
        raw = registry.storage.get_user(next(iter(made.emails)))
        assert raw is not None
        assert raw.email.startswith("upe1:")
        for user_id, email in made.emails.items():
            assert registry.users.get(user_id, include_deleted=True).email == email
        assert made.deleted is not None
        assert registry.users.get(made.deleted, include_deleted=True).deleted_at is not None
        # The API key authenticates.
        client = testing.TestClient(
            create_app(registry), headers={"Authorization": f"Bearer {made.api_key}"}
        )
        answer = client.simulate_get("/api/v1/users", params={"include_deleted": "true"})
        assert answer.status_code == 200, answer.text
        assert {u["id"] for u in answer.json["items"]} == {str(i) for i in made.emails}
        # The audit chain verifies (the unchained event chained now), and goes on.
        verified = verify(registry)
        assert verified.ok, verified.broken
        assert verified.count >= 8
        # The webhook subscription and its outbox.
        service = webhooks.service(registry)
        assert [s.id for s in service.list()] == [made.subscription]
        assert len(service.deliveries(limit=100).items) >= 7
        # Sequences moved past the copied rows: new events, deliveries and users go in.
        created = registry.users.create(NewUser(f"after-{uuid.uuid4().hex[:6]}@example.org"))
        assert registry.users.get(created.id).email == created.email
        assert trail_of(registry).verify().ok


def verify(registry: Registry) -> Any:
    """``audit verify``, once every event could be chained.

    On PostgreSQL an event is chained only once every transaction of the
    cluster older than its own has ended: other tests' databases share it.
    """
    trail_of(registry).catch_up(30)
    return trail_of(registry).verify()


def invoke(args: list[str], env: dict[str, str], source: str) -> Result:
    return CliRunner().invoke(
        cli,
        args,
        env={**env, "USERPLANE_DATABASE_URL": source, PG_ENV: None},  # type: ignore[dict-item]
        catch_exceptions=False,
    )


def test_sqlite_to_postgresql_and_back_copies_everything(
    tmp_path: Path, env: dict[str, str], new_postgresql: Callable[[], str]
) -> None:
    first = f"sqlite:///{tmp_path / 'first.db'}"
    middle = new_postgresql()
    last = f"sqlite:///{tmp_path / 'last.db'}"
    made = populate(first, env)

    there = invoke(["copy", "--to", middle, "--batch-size", "2"], env, first)
    assert there.exit_code == 0, there.stderr
    assert there.stdout.startswith("copied ")
    assert "rate_limits" in there.stdout
    back = invoke(["copy", "--to", last, "--format", "json", "--batch-size", "3"], env, middle)
    assert back.exit_code == 0, back.stderr
    summary = json.loads(back.stdout)
    assert summary["tables"]["users"] == 5
    assert summary["tables"]["api_keys"] == 1
    assert summary["tables"]["webhook_subscriptions"] == 1
    assert summary["tables"]["idempotency_keys"] == 1
    assert summary["tables"]["encryption_keys"] == 2
    assert summary["skipped"] == ["rate_limits"]
    for table in ("users", "api_keys", "audit_events", "webhook_deliveries"):
        assert f"{table}: 100%" in back.stderr  # a progress bar per table

    # Row for row what the first held: PostgreSQL converted nothing away.
    with opened(first, env) as a, opened(middle, env) as b, opened(last, env) as c:
        original, copied = dump(a), dump(c)
        assert original == copied
        assert len(original["audit_events"]) >= 9
        middle_rows = {k: len(v) for k, v in dump(b).items()}
        assert middle_rows == {k: len(v) for k, v in original.items()}
        assert c.storage.key_records() == a.storage.key_records() == b.storage.key_records()
        # The chain head is the source's: the same hashes, recomputed alike on both.
        assert verify(b).head == verify(a).head

    check_target(middle, env, made)
    check_target(last, env, made)


def test_a_copy_through_pgbouncer_copies_everything(
    tmp_path: Path, env: dict[str, str], new_postgresql: Callable[[], str], pgbouncer: int
) -> None:
    # PgBouncer in transaction mode refuses the copy's startup options: it goes
    # without them, and sets what it needs in its own transaction.
    from pgbouncer import through

    first = f"sqlite:///{tmp_path / 'first.db'}"
    middle = through(new_postgresql(), pgbouncer)
    last = f"sqlite:///{tmp_path / 'last.db'}"
    made = populate(first, env)
    for source, target in ((first, middle), (middle, last)):
        result = invoke(["copy", "--to", target], env, source)
        assert result.exit_code == 0, result.stderr
    with opened(first, env) as a, opened(last, env) as c:
        assert dump(a) == dump(c)
    check_target(middle, env, made)


def test_postgresql_to_sqlite_keeps_the_sequences_ahead(
    tmp_path: Path, env: dict[str, str], new_postgresql: Callable[[], str]
) -> None:
    source = new_postgresql()
    made = populate(source, env)
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    with opened(source, env) as a, opened(target, env) as b:
        result = copy_instance(a, b, batch=4)
        assert isinstance(result, CopyResult)
        assert result.rows == sum(t.rows for t in result.tables) > 0
        assert {t.name: t.rows for t in result.tables}["audit_events"] >= 9
    check_target(target, env, made)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_same_to_same(
    backend: str, tmp_path: Path, env: dict[str, str], new_postgresql: Callable[[], str]
) -> None:
    def url(name: str) -> str:
        return f"sqlite:///{tmp_path / name}.db" if backend == "sqlite" else new_postgresql()

    source, target = url("a"), url("b")
    made = populate(source, env)
    with opened(source, env) as a, opened(target, env) as b:
        copy_instance(a, b)
        assert dump(a) == dump(b)
    check_target(target, env, made)


def test_refuses_a_target_holding_data_unless_told_to_replace_it(
    tmp_path: Path, env: dict[str, str], new_postgresql: Callable[[], str]
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    populate(source, env)
    target = new_postgresql()
    assert invoke(["copy", "--to", target, "--no-progress"], env, source).exit_code == 0

    again = invoke(["copy", "--to", target], env, source)
    assert again.exit_code == 4
    assert again.stdout == ""
    assert again.stderr.splitlines() == [
        "userplane: conflict: the target database already holds data (5 row(s) in users): "
        "refusing to copy over it; copy into an empty database, or pass --replace to delete "
        "what it holds first"
    ]
    with opened(target, env) as registry:
        registry.users.create(NewUser("only-in-the-target@example.org"))

    replaced = invoke(["copy", "--to", target, "--replace", "--no-progress"], env, source)
    assert replaced.exit_code == 0, replaced.stderr
    assert "row(s) of the target deleted first" in replaced.stdout
    assert replaced.stderr == ""  # --no-progress: nothing on stderr
    with opened(source, env) as a, opened(target, env) as b:
        assert b.storage.count_users() == 5
        assert verify(b).head == verify(a).head


def test_a_failed_copy_leaves_the_target_empty_and_copyable(
    tmp_path: Path, env: dict[str, str], new_postgresql: Callable[[], str]
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    made = populate(source, env)
    target = new_postgresql()

    @contextlib.contextmanager
    def failing(table: str, total: int) -> Iterator[Callable[[int], object]]:
        if table == "audit_events":
            raise RuntimeError("the copy broke off")
        yield lambda rows: None

    with opened(source, env) as a, opened(target, env) as b:
        with pytest.raises(RuntimeError):
            copy_instance(a, b, progress=failing)
        assert b.storage.count_users() == 0  # the users copied first were rolled back
        copy_instance(a, b)  # and nothing stops a second attempt
    check_target(target, env, made)


def test_refuses_the_source_itself_and_a_store_that_cannot_copy(
    tmp_path: Path, env: dict[str, str]
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    populate(source, env)
    same = invoke(["copy", "--to", f"sqlite:///{tmp_path}/./source.db"], env, source)
    assert same.exit_code == 11
    assert same.stderr == "userplane: configuration: the target is the database being copied\n"

    def registry(name: str, url: str) -> Any:
        storage = SimpleNamespace(name=name)
        return SimpleNamespace(settings=SimpleNamespace(database_url=url), storage=storage)

    with pytest.raises(ConfigurationError) as caught:
        copy_instance(registry("sqlite", "sqlite:///a.db"), registry("thirdparty", "tp://b"))
    assert caught.value.detail == (
        "the source's sqlite storage cannot copy a whole instance "
        "(it does not offer userplane.plugin.CopyableStorage)"
    )


def test_an_unreachable_target_is_one_masked_line(tmp_path: Path, env: dict[str, str]) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    populate(source, env)
    result = invoke(["copy", "--to", "postgresql://u:s3cret@127.0.0.1:1/nowhere"], env, source)
    assert result.exit_code == 10, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("userplane: unavailable: ")
    assert "s3cret" not in result.stderr


def test_the_command_in_a_process_shows_progress_on_stderr(
    tmp_path: Path, env: dict[str, str], new_postgresql: Callable[[], str]
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    made = populate(source, env)
    target = new_postgresql()
    process = subprocess.run(
        [sys.executable, "-m", "userplane", "copy", "--to", target],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")},
            **env,
            "USERPLANE_DATABASE_URL": source,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert re.fullmatch(
        rf"copied \d+ rows in \d+ tables from {re.escape(source)} to {re.escape(target)}; "
        "not copied: rate_limits\n",
        process.stdout,
    ), process.stdout
    progress = process.stderr
    assert "users: 100%|" in progress
    assert "| 5/5 " in progress
    assert "audit_events: 100%|" in progress
    assert re.search(r"audit_events: 100%\|[^|]*\| (\d+)/\1 ", progress), progress
    assert "Traceback" not in progress
    check_target(target, env, made)


def test_conflict_is_what_a_non_empty_target_raises(tmp_path: Path, env: dict[str, str]) -> None:
    source, target = (f"sqlite:///{tmp_path / n}.db" for n in ("a", "b"))
    populate(source, env)
    populate(target, env)
    with opened(source, env) as a, opened(target, env) as b, pytest.raises(Conflict):
        copy_instance(a, b)


def test_a_target_migrated_beforehand_holds_no_data_yet(
    tmp_path: Path, env: dict[str, str], new_postgresql: Callable[[], str]
) -> None:
    """The rows its migrations made (the audit chain's start) are not data: they are replaced."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    made = populate(source, env)
    target = new_postgresql()
    with opened(target, env) as registry:
        registry.migrate()  # as `userplane migrate` run on it first
    result = invoke(["copy", "--to", target, "--no-progress", "--format", "json"], env, source)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["cleared"] == 0
    check_target(target, env, made)


def test_any_plugins_table_is_found_and_converted_by_its_columns(
    tmp_path: Path, env: dict[str, str], new_postgresql: Callable[[], str]
) -> None:
    """A table no built-in knows (a third party's plugin), even without a primary key."""
    import sqlite3

    import psycopg

    source, back = (f"sqlite:///{tmp_path / n}.db" for n in ("source", "back"))
    target = new_postgresql()
    populate(source, env)
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    notes = [(f"note {i}", at + timedelta(seconds=i), i % 2 == 0, [f"t{i}"]) for i in range(7)]
    with contextlib.closing(sqlite3.connect(tmp_path / "source.db")) as conn, conn:
        conn.execute("CREATE TABLE notes (body TEXT, at TEXT, pinned INTEGER, tags TEXT)")
        conn.executemany(
            "INSERT INTO notes VALUES (?, ?, ?, ?)",
            [
                (b, a.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), int(p), json.dumps(t))
                for b, a, p, t in notes
            ],
        )
    with opened(target, env) as registry:
        registry.migrate()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (body text, at timestamptz, pinned boolean, tags text[])")
    with opened(source, env) as a, opened(target, env) as b:
        result = copy_instance(a, b, batch=3)
    assert {t.name: t.rows for t in result.tables}["notes"] == 7
    with psycopg.connect(target, options="-c TimeZone=UTC") as conn:
        assert sorted(conn.execute("SELECT body, at, pinned, tags FROM notes").fetchall()) == notes

    with contextlib.closing(sqlite3.connect(tmp_path / "back.db")) as conn, conn:
        conn.execute("CREATE TABLE notes (body TEXT, at TEXT, pinned INTEGER, tags TEXT)")
    with opened(target, env) as b, opened(back, env) as c:
        copy_instance(b, c, batch=3)
        with opened(source, env) as a:
            assert dump(c) == dump(a)

    # A table the target has no counterpart for is refused, naming it.
    with contextlib.closing(sqlite3.connect(tmp_path / "source.db")) as conn, conn:
        conn.execute("CREATE TABLE leftovers (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO leftovers VALUES (1)")
    with opened(source, env) as a, opened(new_postgresql(), env) as d:
        with pytest.raises(ConfigurationError) as caught:
            copy_instance(a, d)
        assert "the source's table leftovers has no counterpart" in caught.value.detail
