"""API keys: their format (``userplane.api_keys``), ``ApiKeyService`` and the plugin's
``KeyAuthenticator``, over a real ``Registry`` on SQLite and PostgreSQL (see ``conftest.py``).

Time is the test's own: a ``Clock`` for wall-clock time (creation, expiry, revocation,
``last_used_at``) and ``Ticks`` for the monotonic clock the authenticator's cache runs on.
Storage is never faked; a bound method is at most wrapped to count its calls, to fail,
or to take the test's time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from falcon import testing
from hypothesis import given
from hypothesis import strategies as st

from userplane import Registry, Settings
from userplane.auth import Principal
from userplane.errors import InvalidInput, NotFound, Unauthenticated, Unavailable
from userplane.frontends.http import create_app
from userplane.plugins import api_keys
from userplane.plugins.api_keys import authenticator as plugin
from userplane.plugins.api_keys.keys import (
    KEY_PREFIX,
    LOOKUP_LENGTH,
    MAX_NAME,
    ApiKey,
    ApiKeyService,
    hash_key,
    lookup_of,
    matches,
)
from userplane.plugins.api_keys.store import ApiKeyStore as ApiKeyStorage
from userplane.testing import StatementCounter, run_concurrently

T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)
BASE62 = string.ascii_letters + string.digits
KEY_SHAPE = re.compile(r"^up_[A-Za-z0-9]{44}$")
TTL = 5.0


class Clock:
    """Wall-clock time the test sets: every reading is ``now`` until the test advances it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


class Ticks:
    """A monotonic clock (seconds) the test advances."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Calls:
    """Wraps a bound method to count its calls, optionally failing them with ``fail``."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method
        self.args: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None

    def __call__(self, *args: Any) -> Any:
        self.args.append(args)
        if self.fail is not None:
            raise self.fail
        return self.method(*args)

    @property
    def count(self) -> int:
        return len(self.args)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The test's wall clock, also the api-keys plugin's ``utcnow``."""
    c = Clock(T0)
    monkeypatch.setattr(plugin, "utcnow", c)
    return c


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> Ticks:
    """The test's monotonic clock, as the api-keys plugin's ``time.monotonic``."""
    t = Ticks()
    monkeypatch.setattr(plugin, "time", SimpleNamespace(monotonic=t))
    return t


@pytest.fixture
def store(registry: Registry) -> ApiKeyStorage:
    return api_keys.state_of(registry).store


@pytest.fixture
def keys(registry: Registry, store: ApiKeyStorage, clock: Clock) -> ApiKeyService:
    """Key management over the registry's storage and roles, on the test's clock."""
    return ApiKeyService(store, registry.auth.roles, clock)


@pytest.fixture
def touches(store: ApiKeyStorage, monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Every ``touch_api_keys`` call (a batch of ``{key id: time}``) the storage gets."""
    calls = Calls(store.touch_api_keys)
    monkeypatch.setattr(store, "touch_api_keys", calls)
    return calls


@pytest.fixture
def reads(store: ApiKeyStorage, monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Every ``get_api_key`` call the storage gets."""
    calls = Calls(store.get_api_key)
    monkeypatch.setattr(store, "get_api_key", calls)
    return calls


def fields_of(exc: InvalidInput) -> list[str]:
    return [e.field for e in exc.errors]


def record_for(key: str) -> ApiKey:
    """A record of ``key`` built by hand (for the pure functions: nothing is stored)."""
    return ApiKey(
        id=uuid.uuid4(),
        name="hand made",
        role="viewer",
        lookup=key[len(KEY_PREFIX) : len(KEY_PREFIX) + LOOKUP_LENGTH],
        secret_hash=hash_key(key),
        created_at=T0,
    )


def is_key_shaped(text: str) -> bool:
    """The documented format, spelt out without the product's regular expression."""
    body = text[len(KEY_PREFIX) :]
    return text.startswith(KEY_PREFIX) and len(body) == 44 and all(c in BASE62 for c in body)


# --- the key format ------------------------------------------------------------------------

valid_keys = st.text(alphabet=BASE62, min_size=44, max_size=44).map(lambda s: KEY_PREFIX + s)
#: Characters that look like base62 to ``str.isalnum`` or ``\w`` but are not, and separators.
LOOK_ALIKES = [
    # Arabic-Indic and full-width digits and letters, letters outside ASCII:
    "٣", "\uff17", "\uff21", "ß", "İ", "\u0131", "é",
    # separators and control characters:
    "_", "-", " ", "\n", "\t", "\x00", "😀",
]  # fmt: skip
odd_chars = st.one_of(st.sampled_from(LOOK_ALIKES), st.characters())


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    """A valid key with one thing wrong, or (rarely) still right: the test checks which."""
    key = draw(valid_keys)
    how = draw(st.sampled_from(["replace", "insert", "delete", "prefix", "pad", "case"]))
    i = draw(st.integers(min_value=0, max_value=len(key) - 1))
    if how == "replace":
        return key[:i] + draw(odd_chars) + key[i + 1 :]
    if how == "insert":
        return key[:i] + draw(st.one_of(odd_chars, st.sampled_from(BASE62))) + key[i:]
    if how == "delete":
        return key[:i] + key[i + 1 :]
    if how == "prefix":
        prefix = draw(st.sampled_from(["", "UP_", "up-", "up", "up__", "pu_", "sk_"]))
        return prefix + key[len(KEY_PREFIX) :]
    if how == "pad":
        pad = draw(st.sampled_from([" ", "\n", "\r\n", "\t", "\x00", "\u200b"]))
        return draw(st.sampled_from([pad + key, key + pad]))
    return key.upper() if draw(st.booleans()) else key.swapcase()


@given(st.one_of(st.text(), valid_keys, near_misses()))
def test_lookup_of_accepts_exactly_the_documented_shape(text: str) -> None:
    if is_key_shaped(text):
        assert lookup_of(text) == text[3:15]
    else:
        assert lookup_of(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "up_",
        "up_" + "a" * 43,
        "up_" + "a" * 45,
        "UP_" + "a" * 44,
        "up_" + "a" * 44 + "\n",
        "up_" + "٣" * 44,  # Arabic-Indic digits: \d, not [0-9]
        "up_" + "\uff41" * 44,  # full-width letters: NFKC would map them to ASCII
        "Bearer up_" + "a" * 44,
    ],
)
def test_lookup_of_rejects_almost_keys(text: str) -> None:
    assert lookup_of(text) is None


@given(key=valid_keys, other=st.one_of(st.text(), valid_keys, near_misses()))
def test_matches_only_the_exact_key(key: str, other: str) -> None:
    record = record_for(key)
    assert matches(key, record)
    assert matches(other, record) == (other == key)


@given(key=valid_keys, last=st.sampled_from(BASE62))
def test_same_lookup_with_another_secret_does_not_match(key: str, last: str) -> None:
    record = record_for(key)
    other = key[:-1] + last
    assert lookup_of(other) == record.lookup
    assert matches(other, record) == (other == key)


def test_hash_is_the_sha256_hex_of_the_whole_key() -> None:
    key = KEY_PREFIX + "A" * 12 + "b" * 32
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_key(key))
    assert hash_key(key) != hash_key(key[:-1] + "c")


def test_created_keys_have_the_documented_shape_and_never_repeat(
    keys: ApiKeyService, store: ApiKeyStorage
) -> None:
    made = [keys.create(f"k{i}", "viewer") for i in range(200)]
    texts = [key for _, key in made]
    for record, key in made:
        assert KEY_SHAPE.fullmatch(key), key
        assert lookup_of(key) == record.lookup == key[3:15]
        assert record.secret_hash == hash_key(key)
        assert matches(key, record)
        assert key not in repr(record)
        assert record.secret_hash not in repr(record)
    assert len(set(texts)) == len(texts)
    assert len({r.lookup for r, _ in made}) == len(made)
    # All of base62 is used (not hex, not one case): 8,800 characters miss none of 62.
    assert set("".join(k[3:] for k in texts)) == set(BASE62)
    assert store.list_api_keys() == sorted((r for r, _ in made), key=lambda r: (r.created_at, r.id))


# --- ApiKeyService -------------------------------------------------------------------------


def test_create_stores_the_record_and_returns_the_key_once(
    keys: ApiKeyService, store: ApiKeyStorage
) -> None:
    record, key = keys.create("deploy bot", "editor", timedelta(days=90))
    assert (record.name, record.role) == ("deploy bot", "editor")
    assert record.created_at == T0
    assert record.expires_at == T0 + timedelta(days=90)
    assert record.revoked_at is None
    assert record.last_used_at is None
    assert store.get_api_key(record.lookup) == record
    public = record.public()
    assert public["prefix"] == key[:15]
    assert set(public) == {
        "id",
        "name",
        "role",
        "prefix",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    }
    assert key not in str(public)
    assert record.secret_hash not in str(public)


def test_create_without_expiry_never_expires(keys: ApiKeyService) -> None:
    record, _ = keys.create("forever", "admin")
    assert record.expires_at is None
    assert record.usable_at(datetime.max.replace(tzinfo=UTC))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "\t",
        "x" * (MAX_NAME + 1),
        "tab\there",
        "new\nline",
        "nul\x00",
        "bell\x07",
        "\x1b[31mred",  # terminal escapes would reach the table output
        "zero\u200bwidth",
    ],
)
def test_create_rejects_bad_names(keys: ApiKeyService, store: ApiKeyStorage, name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        keys.create(name, "admin")
    assert fields_of(info.value) == ["name"]
    assert store.list_api_keys() == []


@pytest.mark.parametrize("name", ["x", "x" * MAX_NAME, "Zoë's CI 😀", " padded "])
def test_create_accepts_printable_names_up_to_the_limit(keys: ApiKeyService, name: str) -> None:
    record, _ = keys.create(name, "admin")
    assert record.name == name


@pytest.mark.parametrize("role", ["nope", "", "Admin", "admin ", "*"])
def test_create_rejects_unknown_roles_naming_role(
    keys: ApiKeyService, store: ApiKeyStorage, role: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        keys.create("ci", role)
    assert fields_of(info.value) == ["role"]
    assert "role" in info.value.detail
    assert "admin, auditor, editor, provisioner, viewer" in info.value.detail  # plugins' too
    assert store.list_api_keys() == []


def test_create_accepts_a_custom_role_from_settings(database_url: str) -> None:
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_ROLES": '{"support": ["users:read"]}',
        }
    )
    with Registry(settings) as reg:
        reg.migrate()
        record, _ = api_keys.service(reg).create("helpdesk", "support")
        assert record.role == "support"
        with pytest.raises(InvalidInput) as info:
            api_keys.service(reg).create("helpdesk", "nope")
        assert "support" in info.value.detail


@pytest.mark.parametrize("expires_in", [timedelta(0), -SECOND, timedelta(days=-90)])
def test_create_rejects_a_lifetime_that_is_not_positive(
    keys: ApiKeyService, store: ApiKeyStorage, expires_in: timedelta
) -> None:
    with pytest.raises(InvalidInput) as info:
        keys.create("ci", "admin", expires_in)
    assert fields_of(info.value) == ["expires"]
    assert store.list_api_keys() == []


def test_create_accepts_the_shortest_lifetime(keys: ApiKeyService) -> None:
    record, _ = keys.create("ci", "admin", timedelta(microseconds=1))
    assert record.expires_at == T0 + timedelta(microseconds=1)


@pytest.mark.parametrize("expires_in", [timedelta(days=3_000_000), timedelta.max])
def test_create_rejects_a_lifetime_past_the_calendar(
    keys: ApiKeyService, store: ApiKeyStorage, expires_in: timedelta
) -> None:
    with pytest.raises(InvalidInput) as info:
        keys.create("ci", "admin", expires_in)
    assert fields_of(info.value) == ["expires"]
    assert store.list_api_keys() == []


def test_create_reports_every_bad_field_at_once(keys: ApiKeyService) -> None:
    with pytest.raises(InvalidInput) as info:
        keys.create("", "nope", -SECOND)
    assert fields_of(info.value) == ["name", "role", "expires"]


def test_list_is_oldest_first_with_revoked_keys(keys: ApiKeyService, clock: Clock) -> None:
    assert keys.list() == []
    first, _ = keys.create("first", "admin")
    clock.advance(SECOND)
    second, _ = keys.create("second", "viewer")
    clock.advance(SECOND)
    revoked = keys.revoke(first.id)
    assert keys.list() == [revoked, second]


def test_revoke_sets_revoked_at_once(keys: ApiKeyService, clock: Clock) -> None:
    record, _ = keys.create("ci", "admin")
    at = clock.advance(SECOND)
    revoked = keys.revoke(record.id)
    assert revoked.revoked_at == at
    assert revoked.id == record.id
    assert not revoked.usable_at(at)
    clock.advance(timedelta(days=1))
    assert keys.revoke(record.id) == revoked  # again is fine, and keeps the first time


def test_revoke_unknown_is_not_found(keys: ApiKeyService) -> None:
    unknown = uuid.uuid4()
    with pytest.raises(NotFound) as info:
        keys.revoke(unknown)
    assert str(unknown) in info.value.detail


# --- KeyAuthenticator ----------------------------------------------------------------------


@pytest.fixture
def authenticator(store: ApiKeyStorage, ticks: Ticks, clock: Clock) -> plugin.KeyAuthenticator:
    """An authenticator without a refresher thread: the test runs ``refresh`` itself."""
    return plugin.KeyAuthenticator(store, TTL, refresh_seconds=None)


def rejected(auth: plugin.KeyAuthenticator, key: str) -> bool:
    try:
        auth.authenticate(key)
    except Unauthenticated as exc:
        detail = exc.detail
    else:
        return False
    assert detail == plugin.REJECTED  # one message for every failure
    return True


def test_a_valid_key_authenticates_as_its_principal(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator
) -> None:
    record, key = keys.create("deploy bot", "editor")
    assert authenticator.authenticate(key) == Principal(
        id=f"key:{record.id}", kind="api-key", roles=frozenset({"editor"}), name="deploy bot"
    )


def test_malformed_unknown_and_wrong_keys_are_rejected_alike(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator, touches: Calls
) -> None:
    _, key = keys.create("ci", "admin")
    other = next(c for c in BASE62 if c != key[-1])
    assert rejected(authenticator, "")
    assert rejected(authenticator, "up_short")
    assert rejected(authenticator, key + "x")
    assert rejected(authenticator, key.swapcase())
    assert rejected(authenticator, KEY_PREFIX + "Z" * 44)  # well formed, unknown
    assert rejected(authenticator, key[:-1] + other)  # known lookup, wrong secret
    assert touches.count == 0
    assert not rejected(authenticator, key)


def test_reads_are_cached_for_the_window(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator, ticks: Ticks, reads: Calls
) -> None:
    _, key = keys.create("ci", "admin")
    for _ in range(20):
        authenticator.authenticate(key)
    assert reads.count == 1  # no database round trip per request
    ticks.advance(TTL)
    authenticator.authenticate(key)
    assert reads.count == 2


def test_a_revoked_key_is_rejected_once_the_cache_expires(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator, ticks: Ticks
) -> None:
    record, key = keys.create("ci", "admin")
    authenticator.authenticate(key)
    keys.revoke(record.id)
    ticks.advance(TTL)
    assert rejected(authenticator, key)
    ticks.advance(TTL)
    assert rejected(authenticator, key)


def test_without_a_cache_a_revoked_key_is_rejected_at_once(
    keys: ApiKeyService, store: ApiKeyStorage, ticks: Ticks, clock: Clock
) -> None:
    auth = plugin.KeyAuthenticator(store, 0.0, refresh_seconds=None)
    record, key = keys.create("ci", "admin")
    auth.authenticate(key)
    keys.revoke(record.id)
    assert rejected(auth, key)


def test_an_expired_key_is_rejected_at_once(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator, clock: Clock, ticks: Ticks
) -> None:
    _, key = keys.create("ci", "admin", timedelta(seconds=10))
    authenticator.authenticate(key)
    clock.advance(timedelta(seconds=10) - timedelta(microseconds=1))
    authenticator.authenticate(key)  # still inside its lifetime
    clock.advance(timedelta(microseconds=1))
    assert rejected(authenticator, key)  # no cache delay: expiry is checked on every use


def test_last_used_at_is_written_at_most_once_per_window(
    keys: ApiKeyService,
    store: ApiKeyStorage,
    authenticator: plugin.KeyAuthenticator,
    touches: Calls,
    ticks: Ticks,
    clock: Clock,
) -> None:
    record, key = keys.create("ci", "admin")
    used = clock.advance(SECOND)
    for _ in range(20):
        authenticator.authenticate(key)
    authenticator.refresh()
    assert touches.args == [({record.id: used},)]
    stored = store.get_api_key(record.lookup)
    assert stored is not None
    assert stored.last_used_at == used
    clock.advance(SECOND)
    ticks.advance(TTL - 0.01)
    authenticator.authenticate(key)
    authenticator.refresh()
    assert touches.count == 1
    later = clock.advance(SECOND)
    ticks.advance(0.01)
    for _ in range(5):
        authenticator.authenticate(key)
    authenticator.refresh()
    assert touches.count == 2
    stored = store.get_api_key(record.lookup)
    assert stored is not None
    assert stored.last_used_at == later


def test_the_keys_used_are_touched_in_one_statement(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator, touches: Calls
) -> None:
    a, key_a = keys.create("a", "admin")
    b, key_b = keys.create("b", "viewer")
    for _ in range(3):
        authenticator.authenticate(key_a)
        authenticator.authenticate(key_b)
    authenticator.refresh()
    assert touches.args == [({a.id: T0, b.id: T0},)]  # both, in one statement


def test_an_unavailable_database_while_touching_does_not_reject_a_valid_key(
    keys: ApiKeyService,
    store: ApiKeyStorage,
    authenticator: plugin.KeyAuthenticator,
    touches: Calls,
    ticks: Ticks,
) -> None:
    record, key = keys.create("ci", "admin")
    touches.fail = Unavailable("the database is busy; retry shortly")
    assert authenticator.authenticate(key).id == f"key:{record.id}"
    authenticator.refresh()
    assert touches.count == 1
    assert authenticator.authenticate(key).id == f"key:{record.id}"
    authenticator.refresh()
    assert touches.count == 1  # not noted again within the window
    stored = store.get_api_key(record.lookup)
    assert stored is not None
    assert stored.last_used_at is None
    # Once the database is back, the next window records the use.
    touches.fail = None
    ticks.advance(TTL)
    authenticator.authenticate(key)
    authenticator.refresh()
    assert touches.count == 2
    stored = store.get_api_key(record.lookup)
    assert stored is not None
    assert stored.last_used_at == T0


def test_concurrent_requests_with_one_key_all_authenticate(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator
) -> None:
    record, key = keys.create("ci", "admin")
    results = run_concurrently(8, lambda _: authenticator.authenticate(key))
    assert all(isinstance(r, Principal) and r.id == f"key:{record.id}" for r in results), results


# --- last_used_at on a database that refuses the write ----------------------------------------

TOUCH_FAILED = "last_used_at not recorded"


@pytest.fixture
def read_only_keys(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Registry, str]]:
    """A registry and an admin key over a database that refuses to update ``api_keys``.

    Really refused, by the database: on SQLite a trigger raises on every UPDATE of
    the table; on PostgreSQL the key is made, then the whole (throw-away) database
    is made read-only (``default_transaction_read_only``), as on a replica or
    during maintenance, and the registry under test connects afterwards.
    """
    if backend == "sqlite":
        path = tmp_path / "read-only.db"
        settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": f"sqlite:///{path}"})
        with Registry(settings) as registry:
            registry.migrate()
            _, key = api_keys.service(registry).create("ci", "admin")
            with contextlib.closing(sqlite3.connect(path)) as conn:
                conn.execute(
                    "CREATE TRIGGER api_keys_read_only BEFORE UPDATE ON api_keys "
                    "BEGIN SELECT RAISE(ABORT, 'api_keys is read-only'); END"
                )
                conn.commit()
            yield registry, key
        return
    import psycopg

    url: str = request.getfixturevalue("create_postgresql_database")()
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": url})
    with Registry(settings) as writable:
        writable.migrate()
        _, key = api_keys.service(writable).create("ci", "admin")
    server: str = request.getfixturevalue("postgresql_server")
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    with Registry(settings) as registry:
        yield registry, key


def test_a_database_refusing_last_used_at_still_serves_valid_keys(
    read_only_keys: tuple[Registry, str], ticks: Ticks, caplog: pytest.LogCaptureFixture
) -> None:
    registry, key = read_only_keys
    auth = api_keys.state_of(registry).authenticator
    http = testing.TestClient(create_app(registry), headers={"Authorization": f"Bearer {key}"})
    with caplog.at_level(logging.WARNING, logger="userplane.api_keys"):
        for _ in range(5):
            answer = http.simulate_get("/api/v1/users")
            assert answer.status_code == 200, answer.text
        auth.refresh()  # the refresher's pass (its thread may have run one already)
        # Logged once: a failed write is not tried again on every request...
        failures = [r for r in caplog.records if r.getMessage().startswith(TOUCH_FAILED)]
        assert len(failures) == 1
        # ...only once the delay has passed, like a write that succeeds.
        ticks.advance(TTL)  # the default USERPLANE_API_KEYS_CACHE_SECONDS
        assert http.simulate_get("/api/v1/users").status_code == 200
        auth.refresh()
        failures = [r for r in caplog.records if r.getMessage().startswith(TOUCH_FAILED)]
        assert len(failures) == 2
    record = api_keys.state_of(registry).store.get_api_key(key[3:15])
    assert record is not None
    assert record.last_used_at is None  # the database did refuse it
    for failure in failures:
        assert failure.key_ids == [str(record.id)]  # type: ignore[attr-defined]
        logged = " ".join(str(v) for v in vars(failure).values())
        assert key not in logged
        assert key[3:] not in logged


# --- unknown lookup ids --------------------------------------------------------------------


def random_key() -> str:
    return KEY_PREFIX + "".join(secrets.choice(BASE62) for _ in range(44))


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[tuple[Registry, StatementCounter]]:
    """A migrated SQLite registry whose every SQL statement is counted."""
    counter = StatementCounter()
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}"})
    with Registry(settings, plugins=[counter]) as registry:
        registry.migrate()
        yield registry, counter


def test_a_flood_of_unknown_keys_never_evicts_a_real_one(
    counted: tuple[Registry, StatementCounter], ticks: Ticks
) -> None:
    registry, counter = counted
    _, key = api_keys.service(registry).create("ci", "admin")
    store = api_keys.state_of(registry).store
    # The default bounds; no refresher thread, whose passes would be counted too.
    auth = plugin.KeyAuthenticator(store, TTL, refresh_seconds=None)
    auth.authenticate(key)  # read once
    flood = [random_key() for _ in range(plugin.CACHE_ENTRIES + 1)]
    for unknown in flood:
        assert rejected(auth, unknown)
    before = counter.count
    assert auth.authenticate(key).roles == {"admin"}
    assert counter.count == before, "the real key was read again: the flood evicted it"
    # An unknown id tried again within the window costs no query either.
    assert rejected(auth, flood[-1])
    assert counter.count == before
    # Once the window has passed, unknown ids are asked about again (a key may be created).
    ticks.advance(TTL)
    assert rejected(auth, flood[-1])
    assert counter.count == before + 1


def test_unknown_lookups_are_bounded_on_their_own(
    counted: tuple[Registry, StatementCounter], ticks: Ticks
) -> None:
    registry, counter = counted
    store = api_keys.state_of(registry).store
    auth = plugin.KeyAuthenticator(store, TTL, entries=4, unknown_entries=3, refresh_seconds=None)
    keys = [api_keys.service(registry).create(f"k{i}", "viewer")[1] for i in range(4)]
    for key in keys:
        auth.authenticate(key)
    unknown = [random_key() for _ in range(4)]
    for key in unknown:
        assert rejected(auth, key)
    before = counter.count
    for key in keys:  # all four real keys are still cached
        auth.authenticate(key)
    for key in unknown[1:]:  # so are the three newest unknown ids...
        assert rejected(auth, key)
    assert counter.count == before
    assert rejected(auth, unknown[0])  # ...and the oldest was dropped: asked about again
    assert counter.count == before + 1


def test_a_key_stored_after_its_id_was_found_unknown_works_once_the_window_passes(
    store: ApiKeyStorage, authenticator: plugin.KeyAuthenticator, ticks: Ticks
) -> None:
    key = random_key()
    assert rejected(authenticator, key)
    store.insert_api_key(record_for(key))
    assert rejected(authenticator, key)  # "unknown" is trusted for the window, like a key
    ticks.advance(TTL)
    assert authenticator.authenticate(key).name == "hand made"


# --- the refresher -------------------------------------------------------------------------


class Statements:
    """Every statement the storage runs, by ``fetch_one``, ``fetch_all`` or ``execute``."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(sql: str, params: Any) -> Any:
            self.sql.append(sql)
            return method(sql, params)

        return counted

    @property
    def count(self) -> int:
        return len(self.sql)


@pytest.fixture
def statements(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Statements:
    counter = Statements()
    storage = registry.storage
    for name in ("fetch_one", "fetch_all", "execute"):
        monkeypatch.setattr(storage, name, counter.wrap(getattr(storage, name)))
    return counter


@pytest.fixture
def batch_reads(store: ApiKeyStorage, monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Every ``get_api_keys`` call (the refresher's reads) the storage gets."""
    calls = Calls(store.get_api_keys)
    monkeypatch.setattr(store, "get_api_keys", calls)
    return calls


def test_keys_in_use_are_read_ahead_and_requests_run_no_statement(
    keys: ApiKeyService,
    authenticator: plugin.KeyAuthenticator,
    statements: Statements,
    ticks: Ticks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plugin, "CHUNK", 16)
    made = [keys.create(f"k{i}", "viewer") for i in range(40)]
    start = statements.count
    principals = [authenticator.authenticate(key) for _, key in made]  # read one by one
    authenticator.refresh()  # the uses noted: one statement per chunk
    assert statements.count - start == 40 + 3
    for _ in range(4 * int(TTL)):  # four windows, a refresher pass a second
        ticks.advance(1.0)
        before = statements.count
        authenticator.refresh()
        ran = statements.sql[before:]
        assert len(ran) <= 3 + 3, ran  # a read, and maybe a write, per chunk of 16 keys
        before = statements.count
        for (record, key), principal in zip(made, principals, strict=True):
            assert authenticator.authenticate(key) == principal
            assert principal.id == f"key:{record.id}"
        assert statements.count == before, "a request ran a statement"


def test_the_principal_is_built_once_per_read(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator
) -> None:
    _, key = keys.create("ci", "admin")
    assert authenticator.authenticate(key) is authenticator.authenticate(key)


def test_keys_no_longer_used_are_not_read_ahead(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator, ticks: Ticks, batch_reads: Calls
) -> None:
    _, used = keys.create("used", "admin")
    _, idle = keys.create("idle", "admin")
    authenticator.authenticate(used)
    authenticator.authenticate(idle)
    for _ in range(3 * int(TTL)):
        ticks.advance(1.0)
        authenticator.refresh()
        authenticator.authenticate(used)
    read = [lookup for args in batch_reads.args for lookup in args[0]]
    assert used[3:15] in read
    assert read.count(idle[3:15]) <= 2  # read ahead while used within the window, then left


def test_a_revoked_key_stops_at_the_next_refresh(
    keys: ApiKeyService, authenticator: plugin.KeyAuthenticator, ticks: Ticks
) -> None:
    record, key = keys.create("ci", "admin")
    authenticator.authenticate(key)
    keys.revoke(record.id)
    ticks.advance(TTL / 2)
    assert not rejected(authenticator, key)  # trusted, as read, for the window
    authenticator.refresh()
    assert rejected(authenticator, key)  # before the window is out


def test_a_deleted_key_is_dropped_at_the_next_refresh_and_remembered_unknown(
    store: ApiKeyStorage,
    registry: Registry,
    authenticator: plugin.KeyAuthenticator,
    ticks: Ticks,
    reads: Calls,
) -> None:
    key = random_key()
    store.insert_api_key(record_for(key))
    authenticator.authenticate(key)
    registry.storage.execute(
        registry.storage.dialect.compile("DELETE FROM api_keys WHERE lookup = :lookup"),
        {"lookup": key[3:15]},
    )
    ticks.advance(TTL / 2)
    authenticator.refresh()
    assert rejected(authenticator, key)
    ticks.advance(TTL / 2)
    assert rejected(authenticator, key)
    assert reads.count == 1  # the first read only: "unknown" is trusted for the window


@pytest.mark.parametrize("refresher", ["stopped", "failing"])
def test_a_revoked_key_stops_within_the_window_whatever_the_refresher(
    keys: ApiKeyService,
    authenticator: plugin.KeyAuthenticator,
    ticks: Ticks,
    batch_reads: Calls,
    refresher: str,
) -> None:
    record, key = keys.create("ci", "admin")
    batch_reads.fail = Unavailable("the database is busy; retry shortly")
    authenticator.authenticate(key)
    keys.revoke(record.id)
    for _ in range(int(TTL) - 1):
        ticks.advance(1.0)
        if refresher == "failing":
            authenticator.refresh()
        assert not rejected(authenticator, key)
    ticks.advance(1.0)
    assert rejected(authenticator, key)  # read by the request itself, as the window ran out


def test_a_read_is_trusted_from_when_it_was_sent(
    keys: ApiKeyService,
    authenticator: plugin.KeyAuthenticator,
    ticks: Ticks,
    batch_reads: Calls,
    reads: Calls,
) -> None:
    _, key = keys.create("ci", "admin")
    authenticator.authenticate(key)
    ticks.advance(TTL / 2)
    slow = batch_reads.method

    def two_seconds_late(lookups: Any) -> Any:
        answer = slow(lookups)
        ticks.advance(2.0)  # the answer comes two seconds after the statement was sent
        return answer

    batch_reads.method = two_seconds_late
    authenticator.refresh()
    assert batch_reads.count == 1
    ticks.advance(TTL - 2.0 - 0.25)
    authenticator.authenticate(key)
    assert reads.count == 1  # still inside the window the refresh opened
    ticks.advance(0.25)
    authenticator.authenticate(key)
    assert reads.count == 2  # TTL after the refresh was sent, not after it answered


def test_a_failing_refresher_logs_and_requests_go_on(
    keys: ApiKeyService,
    store: ApiKeyStorage,
    authenticator: plugin.KeyAuthenticator,
    ticks: Ticks,
    clock: Clock,
    batch_reads: Calls,
    reads: Calls,
    caplog: pytest.LogCaptureFixture,
) -> None:
    record, key = keys.create("ci", "admin")
    authenticator.authenticate(key)
    batch_reads.fail = Unavailable("the database is busy; retry shortly")
    ticks.advance(TTL / 2)
    with caplog.at_level(logging.WARNING, logger="userplane.api_keys"):
        authenticator.refresh()
    assert [r.getMessage() for r in caplog.records] == [
        "API keys not refreshed: the database is busy; retry shortly"
    ]
    assert key not in caplog.text
    stored = store.get_api_key_by_id(record.id)
    assert stored is not None
    assert stored.last_used_at == T0  # the uses were written all the same
    assert authenticator.authenticate(key).id == f"key:{record.id}"
    ticks.advance(TTL / 2)
    assert authenticator.authenticate(key).id == f"key:{record.id}"  # read by the request
    assert reads.count == 2


def test_uses_are_written_together_and_never_moved_back(
    keys: ApiKeyService,
    store: ApiKeyStorage,
    authenticator: plugin.KeyAuthenticator,
    statements: Statements,
    clock: Clock,
    ticks: Ticks,
) -> None:
    made = [keys.create(f"k{i}", "viewer") for i in range(3)]
    for i, (_, key) in enumerate(made):
        clock.advance(SECOND)
        authenticator.authenticate(key)
        if i == 0:
            authenticator.authenticate(key)  # noted once
    later = T0 + timedelta(hours=1)
    store.touch_api_key(made[2][0].id, later)  # another process, with a later use
    before = statements.count
    authenticator.refresh()
    assert len(statements.sql[before:]) == 1  # one statement for the three keys
    stored = [store.get_api_key(record.lookup) for record, _ in made]
    assert [s.last_used_at if s else None for s in stored] == [
        T0 + SECOND,
        T0 + 2 * SECOND,
        later,  # not moved back
    ]
    before = statements.count
    authenticator.refresh()
    assert statements.count == before  # nothing new noted: nothing written


def test_close_writes_the_uses_still_noted(
    keys: ApiKeyService, store: ApiKeyStorage, authenticator: plugin.KeyAuthenticator, clock: Clock
) -> None:
    record, key = keys.create("ci", "admin")
    used = clock.advance(SECOND)
    authenticator.authenticate(key)
    authenticator.close()
    stored = store.get_api_key(record.lookup)
    assert stored is not None
    assert stored.last_used_at == used
    assert authenticator.authenticate(key).id == f"key:{record.id}"  # still answers


def test_closing_the_registry_loses_no_use(database_url: str) -> None:
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url})
    with Registry(settings) as registry:
        registry.migrate()
        record, key = api_keys.service(registry).create("ci", "admin")
        api_keys.state_of(registry).authenticator.authenticate(key)
    with Registry(settings) as registry:
        stored = api_keys.state_of(registry).store.get_api_key(record.lookup)
    assert stored is not None
    assert stored.last_used_at is not None


def refreshers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "userplane-api-keys"]


def test_the_refresher_thread_starts_on_first_use_and_stops_at_close(
    keys: ApiKeyService, store: ApiKeyStorage, batch_reads: Calls
) -> None:
    _, key = keys.create("ci", "admin")
    auth = plugin.KeyAuthenticator(store, 0.2, refresh_seconds=0.02)  # real time
    running = len(refreshers())
    auth.authenticate(key)
    assert len(refreshers()) == running + 1
    deadline = time.monotonic() + 10
    while batch_reads.count < 3 and time.monotonic() < deadline:
        auth.authenticate(key)  # in use: read ahead
        time.sleep(0.02)
    assert batch_reads.count >= 3
    auth.close()
    assert len(refreshers()) == running
    after = batch_reads.count
    time.sleep(0.1)
    assert batch_reads.count == after


def test_a_forked_process_starts_a_refresher_of_its_own(
    keys: ApiKeyService,
    store: ApiKeyStorage,
    clock: Clock,
    touches: Calls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, key = keys.create("ci", "admin")
    auth = plugin.KeyAuthenticator(store, TTL, refresh_seconds=60.0)
    running = len(refreshers())
    auth.authenticate(key)  # a use noted, in the parent
    pid = os.getpid()
    monkeypatch.setattr(plugin, "os", SimpleNamespace(getpid=lambda: pid + 1))
    forked = plugin.forks() + 1
    monkeypatch.setattr(plugin, "forks", lambda: forked)  # what a fork does to the count
    auth.authenticate(key)  # now in the "child": a thread of its own, the parent's stopped
    deadline = time.monotonic() + 5
    while len(refreshers()) != running + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(refreshers()) == running + 1
    auth.close()
    assert touches.count == 0  # the parent's noted use is the parent's to write
    assert len(refreshers()) == running
