"""One focused test per hook (``test_hook_<name>``), through the real callers.

Each test registers small plugins with ``Registry(settings, plugins=[…])`` and
drives the hook the way userplane does: a service call, an HTTP request
through ``falcon.testing`` (``clients.client_for``), a CLI command through
click's runner. Storage is real SQLite and, where the ``settings`` fixture
gives it, real PostgreSQL. ``tests/test_docs.py`` checks that every hook has
its test here and its entry in ``docs/hooks.md``.
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Generator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import attrs
import click
import pytest
from click.testing import CliRunner
from clients import ConsoleClient, client_for, console_for
from falcon import testing

from userplane.frontends.cli import OperationCommand, State, cli, pass_state
from userplane.frontends.http import create_app
from userplane.hooks import Hooks
from userplane.plugin import (
    AUTH_FAILURE,
    MASK,
    READ,
    USERS_DELETE,
    USERS_READ,
    WRITE,
    Change,
    ConfigurationError,
    Conflict,
    Credentials,
    FieldChange,
    InstrumentableStorage,
    InvalidInput,
    Keyring,
    NamedKey,
    NewUser,
    NotFound,
    PreconditionFailed,
    Principal,
    Quota,
    RateLimit,
    RateLimited,
    Registry,
    Settings,
    SettingsSection,
    Storage,
    Unauthenticated,
    Unavailable,
    User,
    UserChanges,
    UserQuery,
    UserService,
    acting_as,
    hookimpl,
    local_principal,
    request_context,
    section,
    setting,
)
from userplane.plugin_manager import BrokenPlugin, make_plugin_manager
from userplane.plugins import api_keys
from userplane.plugins.sqlite.store import SQLiteStorage

ActionLog = list[tuple[str, Any]]


class Plugin:
    """A test plugin; ``__name__`` is the name pluggy registers it under."""

    __name__ = "demo"


@pytest.fixture
def open_registry(settings: Settings) -> Iterator[Callable[..., Registry]]:
    """Open a migrated ``Registry`` over the test's database with extra plugins; closed after."""
    opened: list[Registry] = []

    def open_(*plugins: object, settings_: Settings | None = None) -> Registry:
        registry = Registry(settings_ or settings, plugins=plugins)
        opened.append(registry)
        registry.migrate()
        return registry

    yield open_
    for registry in reversed(opened):
        registry.close()


@pytest.fixture
def fresh_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database of this test's own, never migrated: SQLite, or a new PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    url: str = request.getfixturevalue("create_postgresql_database")()
    return url


def sqlite_settings(tmp_path: Path, **variables: str) -> Settings:
    return Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}", **variables}
    )


def anonymous_client(client: testing.TestClient) -> testing.TestClient:
    """A client of the same app that sends no credentials at all."""
    return testing.TestClient(client.app)


def cli_group() -> click.Group:
    """A copy of the root CLI group, so that plugin commands added in a test stay there."""
    group = copy.copy(cli)
    group.commands = dict(cli.commands)
    return group


# -- life cycle -------------------------------------------------------------------------------


def test_hook_startup(tmp_path: Path) -> None:
    """Called with the settings before storage opens; historic, so a late plugin hears it too."""
    calls: list[str] = []

    class Early(Plugin):
        __name__ = "early"

        @hookimpl
        def userplane_startup(self, settings: Settings) -> None:
            calls.append(f"startup {settings.database_url}")

        @hookimpl
        def userplane_open_storage(self) -> None:
            calls.append("open_storage")

    settings = sqlite_settings(tmp_path)
    with Registry(settings, plugins=[Early()]) as registry:
        assert calls == [f"startup {settings.database_url}", "open_storage"]

        class Late(Plugin):
            __name__ = "late"
            heard: ClassVar[list[Settings]] = []

            @hookimpl
            def userplane_startup(self, settings: Settings) -> None:
                self.heard.append(settings)

        registry.pm.register(Late())
        assert Late.heard == [settings]

    class Refuses(Plugin):
        __name__ = "refuses"

        @hookimpl
        def userplane_startup(self) -> None:
            raise ConfigurationError("USERPLANE_DEMO_LEVEL: must be low or high")

    with pytest.raises(ConfigurationError, match="USERPLANE_DEMO_LEVEL"):
        Registry(settings, plugins=[Refuses()])


@attrs.frozen
class DemoSettings:
    """``USERPLANE_DEMO_*``."""

    passphrase: str | None = setting(None, secret=True)
    greeting: str = setting("hello")


def test_hook_settings_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``userplane config`` lists a declared section with defaults and masks its secret."""

    class Declares(Plugin):
        @hookimpl
        def userplane_settings_sections(self) -> SettingsSection:
            return SettingsSection("DEMO_", DemoSettings)

    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {
        "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}",
        # The name says nothing secret: only the declaration masks it.
        "USERPLANE_DEMO_PASSPHRASE": "correct horse battery staple",
    }
    pm = make_plugin_manager(extra_plugins=[Declares()])
    result = CliRunner().invoke(cli, ["config", "--format", "json"], obj=pm, env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["USERPLANE_DEMO_PASSPHRASE"] == MASK
    assert shown["USERPLANE_DEMO_GREETING"] == "hello"  # unset: listed with its default
    assert "correct horse" not in result.output
    # The plugin reads the real value with section().
    settings = Settings.from_mapping(env)
    assert section(DemoSettings, settings, "DEMO_").passphrase == "correct horse battery staple"
    assert SettingsSection("DEMO_", DemoSettings) in Hooks(pm).settings_sections()


def test_hook_open_storage(tmp_path: Path) -> None:
    """The one plugin serving the URL's scheme opens storage; two serving it is an error."""
    closed: list[str] = []

    class DemoStore(SQLiteStorage):
        name = "demo"

        def close(self) -> None:
            closed.append(self.path)
            super().close()

    class Serves(Plugin):
        def __init__(self, name: str) -> None:
            self.__name__ = name

        @hookimpl
        def userplane_open_storage(self, settings: Settings) -> Storage | None:
            parts = urlsplit(settings.database_url)
            if parts.scheme != "demo":
                return None  # not ours: the sqlite plugin serves sqlite:
            path = str(tmp_path / f"{self.__name__}.db")
            return DemoStore(f"sqlite:///{path}", path)

    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": "demo:///users"})
    with Registry(settings, plugins=[Serves("alpha")]) as registry:
        assert isinstance(registry.storage, DemoStore)
        registry.migrate()
        assert registry.users.create(NewUser("ann@example.org")).version == 1
    assert closed == [str(tmp_path / "alpha.db")]

    closed.clear()
    with pytest.raises(ConfigurationError) as info:
        Registry(settings, plugins=[Serves("alpha"), Serves("beta")])
    assert "'alpha'" in info.value.detail
    assert "'beta'" in info.value.detail
    assert sorted(closed) == [str(tmp_path / "alpha.db"), str(tmp_path / "beta.db")]

    with pytest.raises(ConfigurationError, match="no storage plugin serves the 'demo' scheme"):
        Registry(settings)


def test_hook_user_purged(open_registry: Callable[..., Registry]) -> None:
    """Purging one deleted user announces it by id, with who did it; nothing else is told."""
    seen: list[tuple[str, Any, Any]] = []

    class Listener(Plugin):
        @hookimpl
        def userplane_user_purged(self, user_id: uuid.UUID, principal: Principal | None) -> None:
            seen.append(("one", user_id, principal))

        @hookimpl
        def userplane_users_purged(self, count: int) -> None:
            seen.append(("many", count, None))

    registry = open_registry(Listener())
    ann = registry.users.create(NewUser("ann@example.org"))
    with pytest.raises(NotFound, match="delete it first"):
        registry.users.purge_user(ann.id)
    registry.users.delete(ann.id)
    me = local_principal("admin")
    with acting_as(me):
        registry.users.purge_user(ann.id)
    assert seen == [("one", ann.id, me)]
    with pytest.raises(NotFound):
        registry.users.get(ann.id, include_deleted=True)


def test_hook_encryption_keys(open_registry: Callable[..., Registry]) -> None:
    """A key-management plugin supplies the keyring; the core seals with it, storage sees none."""
    fetched: list[str] = []

    class Kms(Plugin):
        """Stands for a KMS client: the keys come from it, not from settings."""

        @hookimpl
        def userplane_encryption_keys(self, settings: Settings) -> Keyring:
            fetched.append(settings.database_url)
            return Keyring((NamedKey("kms-1", b"k" * 32),), (NamedKey("kms-index", b"i" * 32),))

    registry = open_registry(Kms())
    assert len(fetched) == 1  # once per registry, before storage opened
    assert registry.encrypted
    ann = registry.users.create(NewUser("Ann@Example.org", "Ann Example"))
    stored = registry.storage.get_user(ann.id)
    assert stored is not None
    assert stored.email.startswith("upe1:kms-1:")
    assert "Ann" not in f"{stored.email}{stored.full_name}"
    assert registry.users.get_by_email("ann@example.org") == ann
    assert {r.name for r in registry.storage.key_records()} == {"kms-1", "kms-index"}

    class Broken(Plugin):
        @hookimpl
        def userplane_encryption_keys(self) -> str:
            return "k1:not-a-keyring"

    with pytest.raises(ConfigurationError, match="not a Keyring"):
        open_registry(Broken())

    # Without a keyring, a database sealed by one refuses to serve (not ciphertext as emails).
    plain = open_registry()
    with pytest.raises(ConfigurationError, match="sealed under"):
        plain.users.get(ann.id)


@attrs.define
class Counter:
    """A per-registry service: counts what happened in one registry."""

    count: int = 0
    healthy: bool = True
    closed: bool = False


def test_hook_register_services(open_registry: Callable[..., Registry]) -> None:
    """Each registry gets its own service, pinged by health checks and closed with it."""
    built: list[Counter] = []

    class Registers(Plugin):
        @hookimpl
        def userplane_register_services(self, registry: Registry) -> None:
            assert registry.storage is not None  # storage is open by now

            def ping(counter: Counter) -> None:
                if not counter.healthy:
                    raise Unavailable("the counter is down")

            def close(counter: Counter) -> None:
                counter.closed = True

            def build() -> Counter:
                built.append(Counter())
                return built[-1]

            registry.services.register(Counter, build, ping=ping, close=close, name="counter")

    first = open_registry(Registers())
    second = open_registry(Registers())
    counter = first.services.get(Counter)
    assert first.services.get(Counter) is counter  # built once
    assert second.services.get(Counter) is not counter  # never shared between registries
    checks = {c.name: c for c in first.check()}
    assert next(iter(checks)) == "storage"
    assert checks["counter"].ok
    assert all(c.ok for c in checks.values())

    counter.healthy = False
    with pytest.raises(Unavailable, match="counter: the counter is down"):
        first.ping()
    client = client_for(first)
    ready = client.simulate_get("/health/ready")
    assert ready.status_code == 503
    assert "the counter is down" in ready.json["detail"]

    first.close()
    assert counter.closed
    assert not second.services.get(Counter).closed


class RecordingCursor:
    """A DB-API cursor proxy that records every statement (a tracing plugin's job)."""

    def __init__(self, cursor: Any, log: list[str]) -> None:
        self._cursor, self._log = cursor, log

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._log.append(sql)
        return self._cursor.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class RecordingConnection:
    def __init__(self, connection: Any, log: list[str]) -> None:
        self._connection, self._log = connection, log

    def cursor(self, *args: Any, **kwargs: Any) -> RecordingCursor:
        return RecordingCursor(self._connection.cursor(*args, **kwargs), self._log)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def recording(log: list[str]) -> Callable[[Any], Any]:
    """A connection wrapper: a proxy for SQLite, the pooled connection changed in place else."""

    def wrap(connection: Any) -> Any:
        if isinstance(connection, sqlite3.Connection):
            return RecordingConnection(connection, log)
        import psycopg

        class Cursor(psycopg.Cursor[Any]):
            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                log.append(str(query))
                return super().execute(query, params, **kwargs)

        connection.cursor_factory = Cursor
        return connection

    return wrap


def test_hook_storage_opened(open_registry: Callable[..., Registry]) -> None:
    """Called once, after the services, before the first statement: wrappers see every one."""
    calls: list[str] = []
    statements: list[str] = []

    class Instruments(Plugin):
        @hookimpl
        def userplane_register_services(self) -> None:
            calls.append("register_services")

        @hookimpl
        def userplane_storage_opened(
            self, storage: Storage, settings: Settings, registry: Registry
        ) -> None:
            assert storage is registry.storage
            assert settings is registry.settings
            calls.append(f"storage_opened {storage.name}")
            assert isinstance(storage, InstrumentableStorage)
            storage.wrap_connections(recording(statements))

    registry = open_registry(Instruments())
    assert calls == ["register_services", f"storage_opened {registry.storage.name}"]
    registry.users.create(NewUser("ann@example.org"))
    assert any(s.lstrip().upper().startswith("INSERT INTO USERS") for s in statements)


def write_migration(folder: Path, name: str, sql: str, rollback: str) -> None:
    folder.mkdir(parents=True)
    (folder / f"{name}.sql").write_text(sql)
    (folder / f"{name}.rollback.sql").write_text(rollback)


def test_hook_migrations(fresh_database_url: str, tmp_path: Path) -> None:
    """``Registry.migrate`` applies a plugin's folder; ``migration_status`` names the plugin."""
    root = tmp_path / "demo_migrations"
    for dialect in ("sqlite", "postgresql"):
        write_migration(
            root / dialect,
            "demo_0001_notes",
            "CREATE TABLE demo_notes (id integer PRIMARY KEY, body text NOT NULL);",
            "DROP TABLE demo_notes;",
        )

    class Migrates(Plugin):
        @hookimpl
        def userplane_migrations(self) -> dict[str, str | Path]:
            return {"sqlite": root / "sqlite", "postgresql": str(root / "postgresql")}

    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": fresh_database_url})
    with Registry(settings, plugins=[Migrates()]) as registry:
        assert "demo_0001_notes" not in {m.id for m in registry.migration_status() if m.applied}
        applied = registry.migrate()
        assert {"0001_users", "api_keys_0001_api_keys", "demo_0001_notes"} <= set(applied)
        states = {m.id: m for m in registry.migration_status()}
        assert states["demo_0001_notes"].source == "demo"
        assert states["demo_0001_notes"].applied
        assert states["0001_users"].source == "userplane"
        assert states["api_keys_0001_api_keys"].source == "api_keys"
        assert registry.migrate() == []
        # The plugin's table is there, in the registry's database.
        store: Any = registry.storage
        insert = store.dialect.compile("INSERT INTO demo_notes (id, body) VALUES (:id, :body)")
        assert store.execute(insert, {"id": 1, "body": "hello"}) == 1


def test_hook_migrations_for_another_dialect_only_are_refused(tmp_path: Path) -> None:
    class MySQLOnly(Plugin):
        @hookimpl
        def userplane_migrations(self) -> dict[str, Path]:
            return {"mysql": tmp_path / "mysql"}

    registry = Registry(sqlite_settings(tmp_path), plugins=[MySQLOnly()])
    with registry, pytest.raises(ConfigurationError, match="'demo' plugin has no migrations"):
        registry.migrate()


def test_hook_describe(open_registry: Callable[..., Registry]) -> None:
    """Every plugin's facts, merged; ``registry`` is ``None`` when described without one."""

    class Describes(Plugin):
        @hookimpl
        def userplane_describe(
            self, settings: Settings, registry: Registry | None
        ) -> dict[str, str]:
            if registry is None:
                return {"demo": "no registry"}
            return {"demo": f"counting on {registry.storage.name}"}

    registry = open_registry(Describes())
    facts = registry.hooks.describe(registry.settings, registry)
    assert facts["demo"] == f"counting on {registry.storage.name}"
    assert "logs" in facts  # the logging plugin's, merged with ours
    assert registry.hooks.describe(registry.settings, None)["demo"] == "no registry"


def test_hook_shutdown(open_registry: Callable[..., Registry]) -> None:
    """Called once on close, while services and storage still work; services close after."""
    calls: list[str] = []

    class Flushes(Plugin):
        @hookimpl
        def userplane_register_services(self, registry: Registry) -> None:
            registry.services.register(
                Counter, Counter, close=lambda _: calls.append("service closed")
            )

        @hookimpl
        def userplane_shutdown(self, registry: Registry) -> None:
            registry.storage.ping()  # still open
            calls.append(f"shutdown, {registry.services.get(Counter).count} buffered")

    registry = open_registry(Flushes())
    registry.services.get(Counter).count = 3
    registry.close()
    registry.close()
    assert calls == ["shutdown, 3 buffered", "service closed"]


# -- operations and auth ----------------------------------------------------------------------


def test_hook_operation(open_registry: Callable[..., Registry]) -> None:
    """Wrappers see every operation; raising before ``yield`` refuses, after it replaces."""
    seen: ActionLog = []

    class Outer(Plugin):
        __name__ = "outer"

        @hookimpl(wrapper=True, tryfirst=True)
        def userplane_operation(self, operation: str) -> Generator[None, Any, Any]:
            seen.append(("outer", operation))
            result = yield
            seen.append(("outer done", result))
            return result

    class RateLimits(Plugin):
        __name__ = "rate_limits"
        refuse: ClassVar[bool] = False

        @hookimpl(wrapper=True)
        def userplane_operation(
            self, operation: str, registry: Registry
        ) -> Generator[None, Any, Any]:
            seen.append(("inner", operation))
            if self.refuse and operation == "users.create":
                raise RateLimited("slow down", retry_after=2)
            return (yield)

    class Replaces(Plugin):
        __name__ = "replaces"

        @hookimpl(wrapper=True)
        def userplane_operation(self, operation: str) -> Generator[None, Any, Any]:
            result = yield
            if operation == "users.create":
                raise Unavailable("the audit log is down")
            return result

    registry = open_registry(RateLimits(), Outer())
    user = registry.users.create(NewUser("ann@example.org"))
    assert seen == [("outer", "users.create"), ("inner", "users.create"), ("outer done", user)]

    RateLimits.refuse = True
    with pytest.raises(RateLimited):
        registry.users.create(NewUser("bob@example.org"))
    with pytest.raises(NotFound):
        registry.users.get_by_email("bob@example.org")  # refused before anything was written

    created: list[User] = []

    class Listens(Plugin):
        __name__ = "listens"

        @hookimpl
        def userplane_user_created(self, user: User) -> None:
            created.append(user)

    replacing = open_registry(Replaces(), Listens())
    with pytest.raises(Unavailable, match="audit log"):
        replacing.users.create(NewUser("cy@example.org"))
    # The answer was replaced, but the write had committed and its event was sent.
    assert replacing.users.get_by_email("cy@example.org") == created[0]


def test_hook_authenticate(settings: Settings, open_registry: Callable[..., Registry]) -> None:
    """The first plugin's principal wins; ``Unauthenticated`` ends the search; proxies resolved."""
    presented: list[Credentials] = []
    asked_after: list[Credentials] = []

    class Tokens(Plugin):
        __name__ = "tokens"

        @hookimpl
        def userplane_authenticate(self, credentials: Credentials) -> Principal | None:
            if credentials.scheme != "token":
                return None
            presented.append(credentials)
            if credentials.value != "s3cret":
                raise Unauthenticated("the credentials were not accepted")
            return Principal("token:ann", "token", frozenset({"viewer"}), name="ann")

    class Later(Plugin):
        __name__ = "later"

        @hookimpl
        def userplane_authenticate(self, credentials: Credentials) -> None:
            asked_after.append(credentials)

    behind_proxy = attrs.evolve(settings, trusted_proxies=("10.0.0.0/8",))
    registry = open_registry(Later(), Tokens(), settings_=behind_proxy)
    client = client_for(registry)
    forwarded = {"Authorization": "Token s3cret", "X-Forwarded-For": "203.0.113.7, 10.0.0.9"}
    ok = client.simulate_get("/api/v1/users", headers=forwarded, remote_addr="10.1.2.3")
    assert ok.status_code == 200
    credentials = presented[-1]
    assert (credentials.scheme, credentials.value) == ("token", "s3cret")
    assert credentials.peer_address == "10.1.2.3"
    assert credentials.client_address == "203.0.113.7"  # past both trusted hops
    assert credentials.headers["x-forwarded-for"] == "203.0.113.7, 10.0.0.9"
    # An untrusted peer cannot name its own address.
    client.simulate_get("/api/v1/users", headers=forwarded, remote_addr="198.51.100.1")
    assert presented[-1].client_address == "198.51.100.1"
    assert asked_after == []  # a principal ends the search

    refused = client.simulate_get("/api/v1/users", headers={"Authorization": "Token wrong"})
    assert refused.status_code == 401
    assert asked_after == []  # so does Unauthenticated
    # The admin key (the client's default header) is not ours: the later plugin is asked.
    assert client.simulate_get("/api/v1/users").status_code == 200
    assert len(asked_after) == 1


def test_hook_rate_limit(open_registry: Callable[..., Registry]) -> None:
    """A limiter sees each protected request's class and principal; a refusal is a 429."""
    asked: list[tuple[str, str, bool]] = []
    policy = RateLimit(WRITE, 1, 60.0)

    class OneWrite(Plugin):
        @hookimpl(tryfirst=True)
        def userplane_rate_limit(self, kind: str, subject: str, consume: bool) -> Quota | None:
            asked.append((kind, subject, consume))
            if kind != WRITE:
                return None
            writes = sum(1 for k, s, c in asked if k == WRITE and s == subject and c)
            allowed = writes <= policy.limit
            return Quota(policy, allowed, 0, 60.0, 0.0 if allowed else 30.0)

    registry = open_registry(OneWrite())
    client = client_for(registry, "admin")
    assert client.simulate_get("/api/v1/users").status_code == 200
    first = client.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    assert first.status_code == 201
    assert first.headers["RateLimit-Policy"] == '"write";q=1;w=60'
    second = client.simulate_post("/api/v1/users", json={"email": "bob@example.org"})
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "30"
    assert second.headers["RateLimit"] == '"write";r=0;t=60'
    principal = next(s for k, s, c in asked if s.startswith("principal:key:"))
    # Before each lookup, whether the address may still fail; then the request's class.
    peek = (AUTH_FAILURE, "address:127.0.0.1", False)
    assert asked == [
        peek,
        (READ, principal, True),
        peek,
        (WRITE, principal, True),
        peek,
        (WRITE, principal, True),
    ]
    assert client.simulate_get("/health/live").status_code == 200
    assert len(asked) == 6  # public routes are not asked about
    # The second user was never created.
    assert client.simulate_get("/api/v1/users").json["items"][0]["email"] == "ann@example.org"
    assert len(client.simulate_get("/api/v1/users").json["items"]) == 1


def test_hook_authorize(open_registry: Callable[..., Registry]) -> None:
    """Every plugin votes; a deny wins over the roles' allow; without an allow, no."""
    votes: ActionLog = []

    class NoDeletes(Plugin):
        @hookimpl
        def userplane_authorize(
            self, principal: Principal, action: str, resource: Any
        ) -> bool | None:
            votes.append((action, resource))
            return False if action == USERS_DELETE else None

    registry = open_registry(NoDeletes())
    client = client_for(registry, "admin")
    user = client.simulate_post("/api/v1/users", json={"email": "ann@example.org"}).json
    path = f"/api/v1/users/{user['id']}"
    assert client.simulate_get(path).status_code == 200
    refused = client.simulate_delete(path)
    assert refused.status_code == 403
    assert (USERS_DELETE, uuid.UUID(user["id"])) in votes
    assert client.simulate_get(path).status_code == 200  # still there

    nobody = Principal("demo:nobody", "demo")
    assert not registry.auth.allows(nobody, USERS_READ)  # no plugin allows
    assert registry.auth.allows(local_principal("root"), USERS_READ)


class Support(Plugin):
    @hookimpl
    def userplane_roles(self) -> dict[str, frozenset[str]]:
        return {"support": frozenset({USERS_READ})}


def test_hook_roles(open_registry: Callable[..., Registry], settings: Settings) -> None:
    """A plugin's role joins the known roles, so keys may have it; a clash is an error."""
    registry = open_registry(Support())
    assert registry.auth.roles["support"] == frozenset({USERS_READ})
    assert {"admin", "editor", "viewer"} <= set(registry.auth.roles)  # the roles plugin's
    assert "auditor" in registry.auth.roles  # the audit plugin's
    key, _ = api_keys.service(registry).create("supporting", "support")
    assert key.role == "support"
    with pytest.raises(
        InvalidInput,
        match="role: must be one of: admin, auditor, editor, provisioner, support, viewer",
    ):
        api_keys.service(registry).create("typo", "suport")

    class Redefines(Plugin):
        __name__ = "redefines"

        @hookimpl
        def userplane_roles(self) -> dict[str, frozenset[str]]:
            return {"viewer": frozenset({USERS_READ, USERS_DELETE})}

    with pytest.raises(ConfigurationError, match="role 'viewer' is defined twice, differently"):
        Registry(settings, plugins=[Redefines()])


def test_hook_roles_a_plugin_role_grants_its_actions(
    open_registry: Callable[..., Registry],
) -> None:
    registry = open_registry(Support())
    support = client_for(registry, "support")
    assert support.simulate_get("/api/v1/users").status_code == 200
    denied = support.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    assert denied.status_code == 403


def test_hook_auth_challenges(open_registry: Callable[..., Registry]) -> None:
    """A 401 carries every plugin's challenge, the plugins' order, each once."""

    class Challenges(Plugin):
        @hookimpl
        def userplane_auth_challenges(self) -> list[str]:
            return ['Token realm="demo"', 'Bearer realm="userplane"']

    registry = open_registry(Challenges())
    assert registry.auth.challenges == ('Token realm="demo"', 'Bearer realm="userplane"')
    client = client_for(registry)
    anonymous = anonymous_client(client).simulate_get("/api/v1/users")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Token realm="demo", Bearer realm="userplane"'
    wrong = client.simulate_get("/api/v1/users", headers={"Authorization": "Bearer up_nope"})
    assert wrong.status_code == 401
    # RFC 6750: a refused bearer token is marked on the bearer challenge.
    assert wrong.headers["WWW-Authenticate"] == (
        'Token realm="demo", Bearer realm="userplane", error="invalid_token"'
    )


# -- events -------------------------------------------------------------------------------


class Listener(Plugin):
    """Every user event, with a second registry to read what was committed."""

    __name__ = "listener"

    def __init__(self, observer: Registry) -> None:
        self.observer = observer
        self.heard: ActionLog = []

    def _committed(self, user: User) -> User | None:
        return self.observer.storage.get_user(user.id, include_deleted=True)

    @hookimpl
    def userplane_user_created(
        self, user: User, principal: Principal | None, registry: Registry
    ) -> None:
        self.heard.append(("created", (user, principal, registry, self._committed(user))))

    @hookimpl
    def userplane_user_updated(
        self, user: User, changed: frozenset[str], principal: Principal | None, registry: Registry
    ) -> None:
        self.heard.append(("updated", (user, changed, principal, self._committed(user))))

    @hookimpl
    def userplane_user_deleted(self, user: User, principal: Principal | None) -> None:
        self.heard.append(("deleted", (user, principal, self._committed(user))))

    @hookimpl
    def userplane_user_restored(self, user: User, principal: Principal | None) -> None:
        self.heard.append(("restored", (user, principal, self._committed(user))))

    @hookimpl
    def userplane_users_purged(
        self, count: int, deleted_before: Any, principal: Principal | None, registry: Registry
    ) -> None:
        self.heard.append(("purged", (count, deleted_before, principal, registry)))


class Fails(Plugin):
    __name__ = "fails"

    @hookimpl
    def userplane_user_created(self) -> None:
        raise RuntimeError("the webhook is down")


@pytest.fixture
def listener(settings: Settings) -> Iterator[Listener]:
    with Registry(settings) as observer:
        yield Listener(observer)


def test_hook_user_created(
    open_registry: Callable[..., Registry], listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    """After commit, with the principal; a failing listener is logged and changes nothing."""
    # Fails is registered last, so it is called first: the listener still hears.
    registry = open_registry(listener, Fails())
    client = client_for(registry)
    with caplog.at_level(logging.ERROR, logger="userplane.events"):
        response = client.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    assert response.status_code == 201
    [(kind, (user, principal, got_registry, committed))] = listener.heard
    assert kind == "created"
    assert str(user.id) == response.json["id"]
    assert committed == user  # another registry's connection sees it: committed
    assert principal is not None
    assert principal.kind == "api-key"
    assert got_registry is registry
    [record] = [r for r in caplog.records if r.name == "userplane.events"]
    assert (record.plugin, record.hook) == ("fails", "userplane_user_created")  # type: ignore[attr-defined]
    assert "the webhook is down" in (record.exc_text or "")


def test_hook_user_updated(open_registry: Callable[..., Registry], listener: Listener) -> None:
    registry = open_registry(listener)
    client = client_for(registry)
    created = client.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    response = client.simulate_patch(
        f"/api/v1/users/{created.json['id']}", json={"full_name": "Ann Smith"}
    )
    assert response.status_code == 200
    kind, (user, changed, principal, committed) = listener.heard[-1]
    assert kind == "updated"
    assert changed == frozenset({"full_name"})
    assert (user.full_name, user.version) == ("Ann Smith", 2)
    assert committed == user
    assert principal is not None
    assert principal.kind == "api-key"


def test_hook_user_deleted(open_registry: Callable[..., Registry], listener: Listener) -> None:
    registry = open_registry(listener)
    client = client_for(registry)
    created = client.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    assert client.simulate_delete(f"/api/v1/users/{created.json['id']}").status_code == 204
    kind, (user, principal, committed) = listener.heard[-1]
    assert kind == "deleted"
    assert user.deleted_at is not None
    assert committed == user
    assert principal is not None
    assert principal.kind == "api-key"


def test_hook_user_restored(open_registry: Callable[..., Registry], listener: Listener) -> None:
    registry = open_registry(listener)
    client = client_for(registry)
    created = client.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    path = f"/api/v1/users/{created.json['id']}"
    client.simulate_delete(path)
    assert client.simulate_post(f"{path}/restore").status_code == 200
    kind, (user, principal, committed) = listener.heard[-1]
    assert kind == "restored"
    assert user.deleted_at is None
    assert committed == user
    assert principal is not None
    assert principal.kind == "api-key"
    # Restoring a live user is a no-op: no second event.
    client.simulate_post(f"{path}/restore")
    assert [k for k, _ in listener.heard].count("restored") == 1


def test_hook_users_purged(open_registry: Callable[..., Registry], listener: Listener) -> None:
    registry = open_registry(listener)
    ann = registry.users.create(NewUser("ann@example.org"))
    deleted = registry.users.delete(ann.id)
    assert deleted.deleted_at is not None
    day_later = deleted.deleted_at + timedelta(days=1)
    later = UserService(
        registry.storage, registry.hooks, registry=registry, clock=lambda: day_later
    )
    admin = local_principal("root")
    with acting_as(admin):
        assert later.purge(timedelta(hours=1)) == 1
    kind, (count, deleted_before, principal, got_registry) = listener.heard[-1]
    assert (kind, count, principal, got_registry) == ("purged", 1, admin, registry)
    assert deleted_before == day_later - timedelta(hours=1)
    assert listener.observer.storage.get_user(ann.id, include_deleted=True) is None  # committed


# -- frontends --------------------------------------------------------------------------------


def test_hook_cli_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin command runs as an operation, as the local administrator; broken ones are named."""
    heard: ActionLog = []

    class Greets(Plugin):
        @hookimpl
        def userplane_cli_commands(self, cli: click.Group) -> None:
            @cli.command("greet", cls=OperationCommand)
            @click.argument("email")
            @pass_state
            def greet(state: State, email: str) -> None:
                """Create a user and greet them."""
                user = state.registry.users.create(NewUser(email))
                click.echo(f"welcome {user.email}")

        @hookimpl(wrapper=True)
        def userplane_operation(self, operation: str) -> Generator[None, Any, Any]:
            heard.append(("operation", operation))
            return (yield)

        @hookimpl
        def userplane_user_created(self, principal: Principal | None) -> None:
            heard.append(("created by", principal))

    class Broken(Plugin):
        __name__ = "broken"

        @hookimpl
        def userplane_cli_commands(self) -> None:
            raise RuntimeError("no click here")

    monkeypatch.chdir(tmp_path)
    env = {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}"}
    group = cli_group()
    pm = make_plugin_manager(extra_plugins=[Greets()])
    assert Hooks(pm).cli_commands(group) == []
    runner = CliRunner()
    assert runner.invoke(group, ["migrate"], obj=pm, env=env).exit_code == 0
    heard.clear()
    result = runner.invoke(group, ["greet", "ann@example.org"], obj=pm, env=env)
    assert result.exit_code == 0, result.output
    assert result.output == "welcome ann@example.org\n"
    assert ("operation", "cli greet") in heard
    assert ("operation", "users.create") in heard
    [principal] = [p for k, p in heard if k == "created by"]
    assert principal is not None
    assert principal.kind == "local"
    assert "greet" not in cli.commands

    broken_pm = make_plugin_manager(extra_plugins=[Broken()])
    failed = Hooks(broken_pm).cli_commands(cli_group())
    assert failed == [BrokenPlugin("broken", "its commands failed: RuntimeError: no click here")]


def test_hook_http_middleware(open_registry: Callable[..., Registry]) -> None:
    """Components are installed outermost first and see failed requests too."""
    seen: ActionLog = []

    class Stamp:
        def __init__(self, name: str) -> None:
            self.name = name

        def process_request(self, req: Any, resp: Any) -> None:
            seen.append((f"{self.name} request", req.path))

        def process_response(self, req: Any, resp: Any, resource: Any, req_succeeded: bool) -> None:
            seen.append((f"{self.name} response", (resp.status_code, req_succeeded)))
            resp.set_header(f"X-{self.name}", "seen")

    class Installs(Plugin):
        @hookimpl
        def userplane_http_middleware(self, settings: Settings, registry: Registry) -> list[Any]:
            return [Stamp("Outer"), Stamp("Inner")]

    registry = open_registry(Installs())
    client = client_for(registry)
    refused = anonymous_client(client).simulate_get("/api/v1/users")
    assert refused.status_code == 401
    assert refused.headers["X-Outer"] == refused.headers["X-Inner"] == "seen"
    assert seen == [
        ("Outer request", "/api/v1/users"),
        ("Inner request", "/api/v1/users"),
        ("Inner response", (401, False)),
        ("Outer response", (401, False)),
    ]


class Stats:
    """A plugin's resource: declares the action each responder needs."""

    actions: ClassVar[dict[str, str]] = {"GET": USERS_READ}

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def on_get(self, req: Any, resp: Any) -> None:
        page = self.registry.users.list(UserQuery(limit=500))
        resp.media = {"users": len(page.items)}


class Undeclared:
    def on_get(self, req: Any, resp: Any) -> None:
        resp.media = {}


def test_hook_http_routes(open_registry: Callable[..., Registry]) -> None:
    """A plugin's route is served behind auth, with its declared action; undeclared is refused."""

    class Routes(Plugin):
        @hookimpl
        def userplane_http_routes(self, app: Any, registry: Registry) -> None:
            app.add_route("/api/v1/demo/stats", Stats(registry))

    registry = open_registry(Routes())
    registry.users.create(NewUser("ann@example.org"))
    viewer = client_for(registry, "viewer")
    answer = viewer.simulate_get("/api/v1/demo/stats")
    assert answer.status_code == 200
    assert answer.json == {"users": 1}
    anonymous = anonymous_client(viewer).simulate_get("/api/v1/demo/stats")
    assert anonymous.status_code == 401
    assert viewer.simulate_post("/api/v1/demo/stats").status_code == 405

    class Careless(Plugin):
        __name__ = "careless"

        @hookimpl
        def userplane_http_routes(self, app: Any) -> None:
            app.add_route("/api/v1/demo/open", Undeclared())

    careless = open_registry(Careless())
    with pytest.raises(ConfigurationError, match="Undeclared does not declare the action for GET"):
        create_app(careless)


class CountPage:
    """A plugin's console page: how many users, for those who may read them."""

    actions: ClassVar[dict[str, str]] = {"GET": "users:read", "POST": "users:write"}

    def __init__(self, console: Any, registry: Registry) -> None:
        self.console = console
        self.registry = registry

    def on_get(self, req: Any, resp: Any) -> None:
        count = len(self.registry.users.list(UserQuery(limit=100)).items)
        self.console.render(req, resp, "demo/count.html", count=count)

    def on_post(self, req: Any, resp: Any) -> None:
        email = self.console.form(req)["email"]
        self.registry.users.create(NewUser(email))
        self.console.redirect(req, resp, "/admin/demo", f"Added {email}.")


def test_hook_console(open_registry: Callable[..., Registry], tmp_path: Path) -> None:
    """A plugin's section is in the navigation, rendered in the layout, guarded like the API."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "count.html").write_text(
        '{% extends "base.html" %}{% block main %}<h1>Count</h1>'
        '<p id="count">{{ count }}</p><form method="post" action="/admin/demo">'
        '<input type="hidden" name="csrf" value="{{ csrf }}"></form>{% endblock %}'
    )
    seen: list[Any] = []

    class Pages(Plugin):
        @hookimpl
        def userplane_console(self, console: Any, registry: Registry) -> None:
            seen.append(console)
            console.add_templates(tmp_path)
            console.add_section(
                "/admin/demo", "Demo", "users:read", {"/admin/demo": CountPage(console, registry)}
            )

    registry = open_registry(Pages())
    registry.users.create(NewUser("ann@example.org"))
    viewer = console_for(registry, "viewer")
    assert len(seen) == 1
    page = viewer.get("/admin/demo")
    assert page.status_code == 200
    assert '<p id="count">1</p>' in page.text
    assert '<a href="/admin/demo" aria-current="page">Demo</a>' in page.text
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    # A viewer may not write: the same refusal as the API's, as a page.
    refused = viewer.post("/admin/demo", {"email": "bob@example.org"})
    assert refused.status_code == 403
    assert "Not allowed" in refused.text
    editor = console_for(registry, "editor", app=viewer.client.app)
    editor.get("/admin/demo")
    added = editor.post("/admin/demo", {"email": "bob@example.org"})
    assert (added.status_code, added.headers["Location"]) == (303, "/admin/demo")
    assert "Added bob@example.org." in editor.get("/admin/demo").text
    # Signed out, the page sends the browser to sign in and back.
    anonymous = ConsoleClient(viewer.client.app).get("/admin/demo")
    assert anonymous.status_code == 303
    assert anonymous.headers["Location"] == "/admin/sign-in?next=%2Fadmin%2Fdemo"

    class Careless(Plugin):
        __name__ = "careless_console"

        @hookimpl
        def userplane_console(self, console: Any) -> None:
            console.add_section("/admin/open", "Open", "users:read", {"/admin/open": Undeclared()})

    careless = open_registry(Careless())
    with pytest.raises(ConfigurationError, match="Undeclared does not declare the action for GET"):
        create_app(careless)


# -- records of changes -----------------------------------------------------------------------


class Recorder(Plugin):
    """Records every change, and what its transaction shows of the user while recording."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.seen_versions: list[int | None] = []
        self.committed: list[tuple[Change, ...]] = []
        self.fail_on: str | None = None

    @hookimpl
    def userplane_record_change(self, change: Change, registry: Registry) -> None:
        if change.action == self.fail_on:
            raise RuntimeError(f"cannot record {change.action}")
        self.changes.append(change)
        if change.user_id is not None:
            # The write is not committed yet, and this statement sees it: one transaction.
            user = registry.storage.get_user(change.user_id, include_deleted=True)
            self.seen_versions.append(None if user is None else user.version)

    @hookimpl
    def userplane_changes_committed(self, changes: tuple[Change, ...]) -> None:
        self.committed.append(changes)


def test_hook_record_change(open_registry: Callable[..., Registry]) -> None:
    """Each write is recorded in its transaction, with before and after; a failed one is not."""
    recorder = Recorder()
    registry = open_registry(recorder)
    me = local_principal("ops")
    with acting_as(me), request_context(request_id="req-1", client_address="192.0.2.7"):
        ann = registry.users.create(NewUser("ann@example.org", "Ann"))
        ann = registry.users.update(ann.id, UserChanges(full_name="Ann E."), ann.version)
        with pytest.raises(PreconditionFailed):
            registry.users.update(ann.id, UserChanges(full_name="Stale"), 1)
        with pytest.raises(Conflict):
            registry.users.create(NewUser("ANN@example.org"))
        registry.users.delete(ann.id)
        registry.users.restore(ann.id)
        registry.users.restore(ann.id)  # live already: no write, no record
        registry.users.delete(ann.id)
        registry.users.purge_user(ann.id)
    actions = [c.action for c in recorder.changes]
    assert actions == [
        "user.created",
        "user.updated",
        "user.deleted",
        "user.restored",
        "user.deleted",
        "user.purged",
    ]
    created, updated, deleted, *_, purged = recorder.changes
    assert created.fields["email"] == FieldChange(None, "ann@example.org")
    assert created.fields["version"] == FieldChange(None, 1)
    assert set(updated.fields) == {"full_name", "version"}
    assert updated.fields["full_name"] == FieldChange("Ann", "Ann E.")
    assert deleted.fields["deleted_at"].before is None
    assert deleted.fields["deleted_at"].after.endswith("Z")
    assert purged.fields == {}  # an erasure keeps nothing of what it erased
    for change in recorder.changes:
        assert (change.actor, change.actor_kind) == (me.id, "local")
        assert (change.request_id, change.client_address) == ("req-1", "192.0.2.7")
        assert (change.target_type, change.target_id, change.user_id) == (
            "user",
            str(ann.id),
            ann.id,
        )
    # Inside the hook, the transaction already shows the write (the user gone at the purge).
    assert recorder.seen_versions == [1, 2, 3, 4, 5, None]
    assert len({c.id for c in recorder.changes}) == len(recorder.changes)


class BatchRecorder(Plugin):
    """Records the batches of ``userplane_record_changes``, and what each sees of its users."""

    __name__ = "batch_recorder"

    def __init__(self) -> None:
        self.batches: list[tuple[Change, ...]] = []
        self.seen: list[list[bool]] = []
        self.fail = False

    @hookimpl
    def userplane_record_changes(self, changes: tuple[Change, ...], registry: Registry) -> None:
        if self.fail:
            raise RuntimeError("cannot record this batch")
        self.batches.append(tuple(changes))
        # In the transaction: every user of the batch is there, not yet committed.
        self.seen.append(
            [
                registry.storage.get_user(c.user_id, include_deleted=True) is not None
                for c in changes
                if c.user_id is not None
            ]
        )


def test_hook_record_changes(open_registry: Callable[..., Registry], tmp_path: Path) -> None:
    """One call per transaction with all its changes, before each one-by-one call."""
    from userplane.imports import Record, UserImporter

    batch = BatchRecorder()
    one_by_one = Recorder()
    registry = open_registry(batch, one_by_one)
    ann = registry.users.create(NewUser("ann@example.org", "Ann"))
    records = [Record(n, "", {"email": f"u{n}@example.org"}) for n in range(1, 6)]
    result = UserImporter(registry).import_batch(records)
    assert result.counts.created == 5
    assert [len(b) for b in batch.batches] == [1, 5]
    assert batch.batches[0][0].target_id == str(ann.id)
    assert [c.action for c in batch.batches[1]] == ["user.created"] * 5
    assert batch.seen == [[True], [True] * 5]
    # The one-by-one hook still sees every change, in the same order.
    assert [c.id for c in one_by_one.changes] == [c.id for b in batch.batches for c in b]
    batch.fail = True
    with pytest.raises(RuntimeError, match="cannot record this batch"):
        UserImporter(registry).import_batch([Record(9, "", {"email": "late@example.org"})])
    with pytest.raises(NotFound):  # rolled back with its records
        registry.users.get_by_email("late@example.org")


def test_hook_record_change_that_raises_fails_the_write(
    open_registry: Callable[..., Registry],
) -> None:
    recorder = Recorder()
    registry = open_registry(recorder)
    recorder.fail_on = "user.created"
    with pytest.raises(RuntimeError, match=r"cannot record user\.created"):
        registry.users.create(NewUser("ann@example.org"))
    with pytest.raises(NotFound):  # rolled back: no change without its record
        registry.users.get_by_email("ann@example.org")
    recorder.fail_on = "user.updated"
    bob = registry.users.create(NewUser("bob@example.org", "Bob"))
    with pytest.raises(RuntimeError):
        registry.users.update(bob.id, UserChanges(full_name="Robert"))
    assert registry.users.get(bob.id) == bob
    assert [c.action for c in recorder.changes] == ["user.created"]


def test_hook_record_change_records_each_user_of_a_purge(
    open_registry: Callable[..., Registry],
) -> None:
    recorder = Recorder()
    registry = open_registry(recorder)
    users = [registry.users.create(NewUser(f"u{i}@example.org")) for i in range(3)]
    for user in users:
        registry.users.delete(user.id)
    assert registry.users.purge(timedelta(0)) == 3
    purged = [c for c in recorder.changes if c.action == "user.purged"]
    assert sorted(c.user_id for c in purged) == sorted(u.id for u in users)


def test_hook_changes_committed(open_registry: Callable[..., Registry]) -> None:
    """Told after commit, once per transaction, with its changes; never of a rolled-back one."""
    recorder = Recorder()
    registry = open_registry(recorder)
    ann = registry.users.create(NewUser("ann@example.org"))
    with pytest.raises(Conflict):
        registry.users.create(NewUser("ann@example.org"))
    recorder.fail_on = "user.deleted"
    with pytest.raises(RuntimeError):
        registry.users.delete(ann.id)
    assert [[c.action for c in t] for t in recorder.committed] == [["user.created"]]
    assert recorder.committed[0][0] is recorder.changes[0]


def test_hook_serving(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A serving process is announced once its app is built; building an app alone is not."""
    from userplane.frontends.http import server

    served: list[Registry] = []

    class Background(Plugin):
        @hookimpl
        def userplane_serving(self, registry: Registry) -> None:
            served.append(registry)

    plugin = Background()
    with Registry(settings, plugins=[plugin]) as registry:
        registry.migrate()
        create_app(registry)
        assert served == []
    monkeypatch.setattr(server, "Registry", lambda s: Registry(s, plugins=[plugin]))
    worker = server.Server(settings)
    try:
        app = worker.load()
        assert app is not None
        assert len(served) == 1
    finally:
        worker.close()


def test_hook_openapi(open_registry: Callable[..., Registry]) -> None:
    """A plugin's paths are in the served document, which the docs page renders."""

    class Documented(Plugin):
        @hookimpl
        def userplane_openapi(self, document: dict[str, Any]) -> None:
            document["paths"]["/api/v1/demo/stats"] = {
                "get": {
                    "summary": "Count the demo's users",
                    "responses": {"200": {"description": "ok"}},
                }
            }

    registry = open_registry(Documented())
    client = client_for(registry, "viewer")
    doc = client.simulate_get("/api/v1/openapi.json").json
    assert doc["paths"]["/api/v1/demo/stats"]["get"]["summary"] == "Count the demo's users"
    assert "/api/v1/users/" in doc["paths"]
    # /docs is Swagger UI: it shows what /api/v1/openapi.json says, plugins' paths included.
    assert "/api/v1/openapi.json" in client.simulate_get("/static/docs.js").text


def test_hook_instruments(database_url: str) -> None:
    """With telemetry on, a plugin's instrument is made on the registry's meter and exported."""
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from userplane.plugins import telemetry

    made: list[Any] = []

    class Metered(Plugin):
        @hookimpl
        def userplane_instruments(self, meter: Any, registry: Registry) -> None:
            counter = meter.create_counter("demo.reports", unit="{report}")
            made.append(counter)

    reader = InMemoryMetricReader()
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_OTEL_ENABLED": "true",
            "USERPLANE_OTEL_EXPORTER": "none",
        }
    )
    with Registry(settings, plugins=[telemetry.Exporters(metrics=reader), Metered()]) as registry:
        registry.migrate()
        (counter,) = made
        counter.add(3)
        data = reader.get_metrics_data()
        assert data is not None
        names = {
            m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        assert names["demo.reports"].data.data_points[0].value == 3
    # Without telemetry it is never called.
    made.clear()
    plain = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url})
    with Registry(plain, plugins=[Metered()]):
        assert made == []
