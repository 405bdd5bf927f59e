"""The auth plugin contract suite (``AuthPluginContract``).

An authentication plugin's author proves their plugin with the very suite the
built-in ``api_keys`` and ``jwt`` plugins pass::

    import pytest
    from userplane.plugin import Credentials
    from userplane.testing import AuthPluginContract

    import my_auth


    class TestMyAuth(AuthPluginContract):
        plugin = my_auth                      # the module (or object) with the hookimpl
        revocation_window = 0.5               # seconds; match the plugin's cache setting

        @pytest.fixture
        def settings_variables(self):
            return {"USERPLANE_MY_AUTH_CACHE_SECONDS": "0.5"}

        @pytest.fixture
        def valid_credentials(self, registry):
            token = my_auth.issue(registry, role="editor")
            return Credentials.from_headers({"Authorization": f"Bearer {token}"}), {"editor"}

        @pytest.fixture
        def wrong_credentials(self, registry):
            return [Credentials.from_headers({"Authorization": "Bearer my_unknown"})]

        @pytest.fixture
        def foreign_credentials(self):
            return [Credentials.from_headers({"Authorization": "Bearer up_not-mine"})]

        @pytest.fixture
        def revoke(self, registry):
            return lambda credentials: my_auth.revoke(registry, credentials.bearer)

The default ``registry`` fixture is a migrated SQLite registry in ``tmp_path``
with every installed plugin, the plugin under test among them (from its entry
point when it has one, else passed as ``plugins=``), configured by
``settings_variables``. A subclass that builds its own must register the
``sql_statements`` fixture's counter too (``plugins=[…, sql_statements]``),
or the round-trip test skips.

Needs pytest and hypothesis: ``pip install 'userplane[testing]'``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import attrs
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from userplane.auth import ACTIONS, Credentials, Principal
from userplane.errors import Unauthenticated
from userplane.plugin_manager import hookimpl
from userplane.registry import Registry
from userplane.settings import Settings
from userplane.storage import InstrumentableStorage, Storage


class ValidCredentials(NamedTuple):
    """Credentials the plugin must accept, and the roles their principal must have.

    A plain ``(credentials, roles)`` tuple does as well.
    """

    credentials: Credentials
    roles: Iterable[str]


class StatementCounter:
    """A plugin counting the SQL statements a registry's SQLite connections run.

    It installs ``sqlite3.Connection.set_trace_callback`` on every connection
    the storage opens (``InstrumentableStorage.wrap_connections``), so what it
    counts is what reached the database, whoever sent it. ``traced`` says
    whether any connection could be traced (another storage's cannot).
    """

    def __init__(self) -> None:
        self.count = 0
        self.traced = False
        self._lock = threading.Lock()

    @hookimpl
    def userplane_storage_opened(self, storage: Storage) -> None:
        if isinstance(storage, InstrumentableStorage):
            storage.wrap_connections(self._wrap)

    def _wrap(self, connection: Any) -> Any:
        # Another wrapper (telemetry) may have put a proxy around it first.
        raw = getattr(connection, "__wrapped__", connection)
        if isinstance(raw, sqlite3.Connection):
            raw.set_trace_callback(self._statement)
            self.traced = True
        return connection

    def _statement(self, _sql: str) -> None:
        with self._lock:
            self.count += 1


#: Presented by nobody's plugin: the contract adds these to ``foreign_credentials``.
NOTHING_PRESENTED = (
    Credentials(),
    Credentials.from_headers({}, peer_address="192.0.2.10", client_address="192.0.2.10"),
    Credentials.from_headers(
        {"Authorization": "X-Userplane-Contract-Foreign c29tZXRoaW5n"},
        peer_address="192.0.2.10",
        client_address="192.0.2.10",
    ),
)

#: Values no credential should make a plugin fail on: empty, huge, non-ASCII, control characters.
HOSTILE_TEXTS = (
    "",
    " ",
    "x" * (1 << 20),
    "zoë→😀\u202e\ufeff",
    "\udcff",  # a lone surrogate: no WSGI server sends one, an embedding frontend might
    "\x00\r\n\t\x1b[2J\x7f",
    "a\r\nX-Injected: 1",
    "%00%0d%0a",
    "..",
    "=" * 64,
)


def _entry_point_of(plugin: object, settings: Settings) -> str | None:
    """The name of the enabled ``userplane`` entry point that loads ``plugin``, if any.

    Such a plugin is registered by the plugin manager already: passing it
    again as ``plugins=`` would register it twice (a broken plugin).
    """
    from importlib.metadata import entry_points

    module = plugin.__name__ if isinstance(plugin, types.ModuleType) else None
    for ep in entry_points(group="userplane"):
        if ep.name in settings.disabled_plugins or (module and ep.value != module):
            continue
        try:
            if ep.load() is plugin:
                return ep.name
        except Exception:  # noqa: S112 - a broken neighbour is the plugin manager's to report
            continue
    return None


def _describe(credentials: Credentials) -> str:
    value = credentials.value
    shown = value if value is None or len(value) <= 40 else f"{value[:40]}…({len(value)} chars)"
    headers = {
        k: (v if len(v) <= 40 else f"{v[:40]}…({len(v)} chars)")
        for k, v in dict(credentials.headers).items()
    }
    return (
        f"Credentials(scheme={credentials.scheme!r}, value={shown!r}, headers={headers!r}, "
        f"peer_address={credentials.peer_address!r})"
    )


def _with_value(credentials: Credentials, value: str) -> Credentials:
    scheme = credentials.scheme or "bearer"
    headers = {**dict(credentials.headers), "authorization": f"{scheme} {value}"}
    return attrs.evolve(credentials, scheme=scheme, value=value, headers=headers)


def _with_header(credentials: Credentials, name: str, value: str) -> Credentials:
    return attrs.evolve(credentials, headers={**dict(credentials.headers), name: value})


def hostile_variants(credentials: Credentials) -> Iterator[Credentials]:
    """``credentials`` with their value, then each header, replaced or spoiled by hostile text.

    Spoiled (the hostile text appended, the value cut or repeated) keeps a
    value's shape, so the plugin's deeper code is reached, not only its first check.
    """
    value = credentials.value or ""
    for text in HOSTILE_TEXTS:
        yield _with_value(credentials, text)
        if value:
            yield _with_value(credentials, value + text[:1000])
    if value:
        yield _with_value(credentials, value[: len(value) // 2])
        yield _with_value(credentials, value * (1 + (1 << 20) // len(value)))
    for name, header in dict(credentials.headers).items():
        if name == "authorization":
            continue
        for text in HOSTILE_TEXTS:
            yield _with_header(credentials, name, text)
            yield _with_header(credentials, name, header + text[:1000])


class AuthPluginContract:
    """The behaviour every authentication plugin (``userplane_authenticate``) must have.

    Subclass it, set ``plugin``, and provide the fixtures ``valid_credentials``
    (yours and right: ``(credentials, expected roles)``), ``wrong_credentials``
    (yours and wrong: a sequence), ``foreign_credentials`` (not yours: a
    sequence; nothing presented is always added) and ``revoke`` (a function
    of credentials that revokes them), or set ``revocable = False`` and say
    why in ``not_revocable_reason``. Override ``registry`` (or just
    ``settings_variables``) to configure the plugin.
    """

    #: The plugin under test: the module or object whose ``userplane_authenticate`` is judged.
    plugin: ClassVar[object] = None
    #: Whether credentials can be revoked; if not, ``not_revocable_reason`` is reported.
    revocable: ClassVar[bool] = True
    not_revocable_reason: ClassVar[str] = ""
    #: Seconds within which revoked credentials must be refused (the documented bound).
    revocation_window: ClassVar[float] = 5.0
    #: Slack on top of the window for a loaded test machine, in seconds.
    revocation_margin: ClassVar[float] = 1.0
    #: Authentications after the first that must reach no database.
    cached_authentications: ClassVar[int] = 20

    # -- fixtures the subclass provides ------------------------------------------------

    @pytest.fixture
    def settings_variables(self) -> Mapping[str, str]:
        """``USERPLANE_*`` variables for the default registry (configure the plugin here)."""
        return {}

    @pytest.fixture
    def sql_statements(self) -> StatementCounter:
        """Counts the statements the registry's storage runs (a plugin: register it)."""
        return StatementCounter()

    @pytest.fixture
    def registry(
        self,
        tmp_path: Path,
        settings_variables: Mapping[str, str],
        sql_statements: StatementCounter,
    ) -> Iterator[Registry]:
        """A migrated SQLite registry with the plugin under test registered."""
        settings = Settings.from_mapping(
            {
                "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'auth-contract.db'}",
                **settings_variables,
            }
        )
        plugins: list[object] = [sql_statements]
        if _entry_point_of(self.plugin, settings) is None:
            plugins.insert(0, self.plugin)
        with Registry(settings, plugins=plugins) as registry:
            registry.migrate()
            yield registry

    @pytest.fixture
    def valid_credentials(self, registry: Registry) -> ValidCredentials:
        """Yours and right: the credentials and the roles their principal has."""
        raise NotImplementedError("provide a `valid_credentials` fixture: (credentials, roles)")

    @pytest.fixture
    def wrong_credentials(self, registry: Registry) -> Sequence[Credentials]:
        """Yours and wrong (unknown, badly signed, expired): each must be refused."""
        raise NotImplementedError("provide a `wrong_credentials` fixture: a list of credentials")

    @pytest.fixture
    def foreign_credentials(self) -> Sequence[Credentials]:
        """Not yours (another plugin's): each must be left to others (``None``)."""
        return ()

    @pytest.fixture
    def revoke(self, registry: Registry) -> Callable[[Credentials], None]:
        """Revokes the credentials it is given (unless ``revocable = False``)."""
        raise NotImplementedError(
            "provide a `revoke` fixture, or set `revocable = False` and `not_revocable_reason`"
        )

    # -- helpers -----------------------------------------------------------------------

    def call_plugin(self, registry: Registry, credentials: Credentials) -> object:
        """The plugin's own ``userplane_authenticate``, called as the plugin manager would.

        Typed ``object``: what a plugin returns is what the contract judges.
        """
        # The plugin's own callers, not the hook's: no other plugin may answer for it.
        callers = registry.pm.get_hookcallers(self.plugin) or []
        impls = [
            impl
            for caller in callers
            if caller.name == "userplane_authenticate"
            for impl in caller.get_hookimpls()
            if impl.plugin is self.plugin
        ]
        assert impls, (
            f"{self.plugin!r} has no userplane_authenticate in this registry: "
            "set `plugin` to the module or object with the hookimpl, and register it"
        )
        kwargs = {"credentials": credentials, "registry": registry}
        return impls[0].function(*[kwargs[n] for n in impls[0].argnames])

    def _valid(self, valid_credentials: Any) -> tuple[Credentials, frozenset[str]]:
        credentials, roles = valid_credentials
        assert isinstance(credentials, Credentials), "valid_credentials: (Credentials, roles)"
        return credentials, frozenset(roles)

    # -- not yours -----------------------------------------------------------------------

    def test_the_plugin_is_registered(self, registry: Registry) -> None:
        assert self.plugin is not None, "set `plugin` to the module or object under test"
        assert registry.pm.is_registered(self.plugin)

    def test_nothing_presented_is_not_yours(self, registry: Registry) -> None:
        for credentials in NOTHING_PRESENTED:
            assert self.call_plugin(registry, credentials) is None, _describe(credentials)

    def test_foreign_credentials_are_not_yours(
        self, registry: Registry, foreign_credentials: Sequence[Credentials]
    ) -> None:
        for credentials in [*NOTHING_PRESENTED, *foreign_credentials]:
            assert self.call_plugin(registry, credentials) is None, _describe(credentials)
            # No plugin accepts them, so the registry refuses them.
            with pytest.raises(Unauthenticated):
                registry.auth.authenticate(credentials)

    # -- yours and wrong ---------------------------------------------------------------

    def test_wrong_credentials_are_refused(
        self, registry: Registry, wrong_credentials: Sequence[Credentials]
    ) -> None:
        assert wrong_credentials, "wrong_credentials: give at least one"
        details = set()
        for credentials in wrong_credentials:
            with pytest.raises(Unauthenticated) as refused:
                self.call_plugin(registry, credentials)
            details.add(refused.value.detail)
            with pytest.raises(Unauthenticated):
                registry.auth.authenticate(credentials)
        # The detail reaches the client as it is: it must not say *what* was wrong.
        assert len(details) == 1, f"one message for every refusal, not {sorted(details)}"

    # -- yours and right ---------------------------------------------------------------

    def test_valid_credentials_name_the_principal(
        self, registry: Registry, valid_credentials: ValidCredentials
    ) -> None:
        credentials, roles = self._valid(valid_credentials)
        principal = self.call_plugin(registry, credentials)
        assert isinstance(principal, Principal), _describe(credentials)
        assert isinstance(principal.id, str)
        assert principal.id.strip()
        assert isinstance(principal.kind, str)
        assert principal.kind.strip()
        prefix, _, rest = principal.id.partition(":")
        assert prefix, f"id {principal.id!r}: '<kind>:<id>' keeps ids unique across kinds"
        assert rest, f"id {principal.id!r}: '<kind>:<id>' keeps ids unique across kinds"
        assert principal.roles == roles
        assert self.call_plugin(registry, credentials) == principal, "the same principal each time"
        assert registry.auth.authenticate(credentials) == principal

    def test_authorization_follows_the_roles(
        self, registry: Registry, valid_credentials: ValidCredentials
    ) -> None:
        credentials, _ = self._valid(valid_credentials)
        principal = registry.auth.authenticate(credentials)
        defined = registry.auth.roles
        actions = set(ACTIONS) | {a for acts in defined.values() for a in acts if a != "*"}
        for action in sorted(actions):
            granted = any(
                action in defined.get(role, ()) or "*" in defined.get(role, ())
                for role in principal.roles
            )
            assert registry.auth.allows(principal, action) is granted, (action, principal.roles)

    # -- revocation ----------------------------------------------------------------------

    def test_revoked_credentials_are_refused_within_the_window(
        self,
        request: pytest.FixtureRequest,
        registry: Registry,
        valid_credentials: ValidCredentials,
    ) -> None:
        if not self.revocable:
            pytest.skip(f"not revocable: {self.not_revocable_reason or 'no reason given'}")
        revoke: Callable[[Credentials], None] = request.getfixturevalue("revoke")
        credentials, _ = self._valid(valid_credentials)
        registry.auth.authenticate(credentials)  # now cached, if the plugin caches
        revoke(credentials)
        revoked = time.monotonic()
        deadline = revoked + self.revocation_window + self.revocation_margin
        while True:
            try:
                registry.auth.authenticate(credentials)
            except Unauthenticated:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"still accepted {time.monotonic() - revoked:.2f}s after revocation "
                    f"(window {self.revocation_window}s + margin {self.revocation_margin}s)"
                )
            time.sleep(min(0.05, self.revocation_window / 20 or 0.01))
        # Refused for good, and by the plugin itself: revoked is "yours and wrong".
        with pytest.raises(Unauthenticated):
            self.call_plugin(registry, credentials)

    # -- cost --------------------------------------------------------------------------

    def test_no_database_round_trip_once_cached(
        self,
        registry: Registry,
        valid_credentials: ValidCredentials,
        sql_statements: StatementCounter,
    ) -> None:
        if not sql_statements.traced:
            registry.storage.ping()  # connections are opened lazily
        if not sql_statements.traced:
            pytest.skip(
                "cannot count statements: the registry does not register sql_statements, "
                "or its storage is not SQLite"
            )
        before = sql_statements.count
        registry.storage.ping()
        assert sql_statements.count > before, "the statement counter sees no statements"
        credentials, _ = self._valid(valid_credentials)
        for _attempt in range(3):
            started = time.monotonic()  # a cache's age counts from the first read
            registry.auth.authenticate(credentials)  # the first may read (and write)
            counted = sql_statements.count
            for _ in range(self.cached_authentications):
                registry.auth.authenticate(credentials)
            elapsed = time.monotonic() - started
            statements = sql_statements.count - counted
            if statements == 0:
                return
            # A cache may rightly read again once the revocation window has passed: try again.
            if not (self.revocable and elapsed >= self.revocation_window > 0):
                pytest.fail(
                    f"{statements} SQL statements in {self.cached_authentications} "
                    f"authentications after the first ({elapsed:.3f}s): cache what you read"
                )
        pytest.fail(
            f"{self.cached_authentications} authentications took longer than the "
            f"{self.revocation_window}s window three times: too slow a machine to judge"
        )

    # -- hostile input -----------------------------------------------------------------

    def _misjudged(self, registry: Registry, credentials: Credentials) -> str | None:
        """What is wrong with how ``credentials`` are judged, or ``None`` when nothing is."""
        try:
            result = self.call_plugin(registry, credentials)
        except Unauthenticated:
            pass
        except Exception as exc:
            return f"the plugin raised {type(exc).__name__}: {exc} for {_describe(credentials)}"
        else:
            if result is not None and not (isinstance(result, Principal) and result.id):
                return f"the plugin returned {result!r} for {_describe(credentials)}"
        try:
            principal: object = registry.auth.authenticate(credentials)
        except Unauthenticated:
            return None
        except Exception as exc:
            return f"the registry raised {type(exc).__name__}: {exc} for {_describe(credentials)}"
        if not isinstance(principal, Principal):
            return f"the registry returned {principal!r} for {_describe(credentials)}"
        return None

    def test_hostile_input_is_refused_or_passed_on(
        self,
        registry: Registry,
        valid_credentials: ValidCredentials,
        wrong_credentials: Sequence[Credentials],
        foreign_credentials: Sequence[Credentials],
    ) -> None:
        credentials, _ = self._valid(valid_credentials)
        problems = [
            problem
            for base in [credentials, *wrong_credentials, *foreign_credentials]
            for variant in hostile_variants(base)
            if (problem := self._misjudged(registry, variant)) is not None
        ]
        if problems:
            shown = "\n".join(problems[:10])
            pytest.fail(
                f"{len(problems)} hostile inputs misjudged (None, Unauthenticated or "
                f"a Principal only), the first:\n{shown}"
            )

    @hypothesis_settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            # Each subclass runs it for its own plugin: one body, many executors, by design.
            HealthCheck.differing_executors,
        ],
    )
    @given(text=st.text(), where=st.sampled_from(["value", "suffix", "header"]))
    def test_any_text_is_refused_or_passed_on(
        self, registry: Registry, valid_credentials: ValidCredentials, text: str, where: str
    ) -> None:
        credentials, _ = self._valid(valid_credentials)
        if where == "value":
            variant = _with_value(credentials, text)
        elif where == "suffix":
            variant = _with_value(credentials, (credentials.value or "") + text)
        else:
            names = [n for n in dict(credentials.headers) if n != "authorization"]
            variant = _with_header(credentials, names[0] if names else "x-contract", text)
        problem = self._misjudged(registry, variant)
        assert problem is None, problem
