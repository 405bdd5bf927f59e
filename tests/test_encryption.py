"""Field-level encryption end to end: keyrings, sealing, start-up key checks, what a dump
shows, crypto-shredding and key rotation, on real SQLite and PostgreSQL databases.

The storage contract in encrypted mode is ``TestSQLiteSealed`` and
``TestPostgreSQLSealed`` in ``tests/plugins/``; the
HTTP and CLI surfaces are ``tests/frontends/test_*_encryption.py``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import psycopg
import pytest
from clients import client_for
from clients import new_key as new_api_key
from falcon import testing
from hypothesis import given, settings
from hypothesis import strategies as st

from userplane import NewUser, Registry, Settings, UserChanges, UserQuery
from userplane.emails import normalize_email
from userplane.errors import ConfigurationError, Undecryptable
from userplane.keyring import KEY_BYTES, Keyring, NamedKey, new_key, parse_keys
from userplane.plugins import encryption_keys
from userplane.rotation import rotate
from userplane.sealed_storage import INDEX_KEYS_SETTING, KEYS_SETTING, verify_keys
from userplane.sealing import PREFIX, Sealer, key_name
from userplane.storage import Storage
from userplane.text import fold
from userplane.users import User, utcnow

USERS = "/api/v1/users/"
T0 = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


# -- helpers ---------------------------------------------------------------------------------


def ring_settings(
    database_url: str, keys: Sequence[NamedKey] | None, index: NamedKey | None
) -> Settings:
    """Settings for ``database_url`` with the key-encryption ``keys`` and the ``index`` key."""
    env = {"USERPLANE_DATABASE_URL": database_url}
    if keys is not None:
        env[KEYS_SETTING] = ",".join(k.entry() for k in keys)
    if index is not None:
        env[INDEX_KEYS_SETTING] = index.entry()
    return Settings.from_mapping(env)


@contextlib.contextmanager
def opened(
    database_url: str, keys: Sequence[NamedKey] | None, index: NamedKey | None
) -> Iterator[Registry]:
    with Registry(ring_settings(database_url, keys, index)) as registry:
        registry.migrate()
        yield registry


def material(keys: Iterable[NamedKey]) -> list[str]:
    """Every spelling of the keys' secrets a message must not contain."""
    out = []
    for key in keys:
        out += [
            key.entry().split(":", 1)[1],
            base64.b64encode(key.secret).decode(),
            base64.urlsafe_b64encode(key.secret).decode(),
            key.secret.hex(),
        ]
    return out


def assert_no_material(text: str, keys: Iterable[NamedKey]) -> None:
    for secret in material(keys):
        assert secret not in text
        assert secret[:12] not in text  # not even a piece


def sql(database_url: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of ``query`` on the database, read with its own driver."""
    if database_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
            return conn.execute(query).fetchall()
    with psycopg.connect(database_url) as conn:
        return conn.execute(query).fetchall()


def dump(database_url: str, without_rows_of: str | None = None) -> str:
    """The whole database as its own dump tool writes it (``iterdump``, ``pg_dump``).

    ``without_rows_of``: a table whose rows are left out (its definition stays).
    """
    if database_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
            skipped = f'INSERT INTO "{without_rows_of}" '
            return "\n".join(
                line
                for line in conn.iterdump()
                if without_rows_of is None or not line.startswith(skipped)
            )
    left_out = [] if without_rows_of is None else [f"--exclude-table-data={without_rows_of}"]
    proc = subprocess.run(
        ["pg_dump", "--no-owner", *left_out, "--dbname", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def forms(text: str) -> set[str]:
    """``text`` as it might be stored: as given, cased, folded, normalised, JSON-escaped."""
    out = {text, text.lower(), text.upper(), fold(text)}
    if "@" in text:
        out.add(normalize_email(text))
    out |= {json.dumps(f)[1:-1] for f in list(out)}
    return {f for f in out if len(f) >= 6}


def leaks(dumped: str, texts: Iterable[str]) -> list[str]:
    """The forms of ``texts`` found in ``dumped``, as text or as hex (a BLOB, a bytea), any case."""
    low = dumped.lower()
    return sorted(
        f for t in texts for f in forms(t) if f.lower() in low or f.encode("utf-8").hex() in low
    )


def stored(registry: Registry, user_id: uuid.UUID) -> User:
    """The user's row as the storage plugin holds it."""
    user = registry.storage.get_user(user_id, True)
    assert user is not None
    return user


def wrapped_data_key(stored_email: str) -> str:
    """The wrapped data key in a stored email ``upe1:<kek>:<wrapped>:<ciphertext>``."""
    return stored_email.split(":")[2]


# -- keyrings: the text format -----------------------------------------------------------------


def test_an_entry_round_trips_in_every_accepted_spelling() -> None:
    secret = bytes([0xFB, 0xFF]) * 16  # "+/" in standard base64, "-_" in URL-safe
    std = base64.b64encode(secret).decode()
    url = base64.urlsafe_b64encode(secret).decode()
    assert {"+", "/"} <= set(std)
    assert {"-", "_"} <= set(url)
    for value in (std, std.rstrip("="), url, url.rstrip("=")):
        assert parse_keys(f"a:{value}") == (NamedKey("a", secret),)
    key = new_key("kek-2025-01")
    assert parse_keys(key.entry()) == (key,)
    assert len(key.secret) == KEY_BYTES
    assert "=" not in key.entry()


def test_entries_are_split_on_commas_and_lines_in_order_with_comments_and_blanks() -> None:
    a, b, c = new_key("a"), new_key("b_2"), new_key("C-3")
    text = (
        "# userplane key-encryption keys, the active one first\r\n"
        f"  {a.entry()} , {b.entry()}\r\n"
        "\n"
        "   # an indented comment\n"
        f"{c.entry()},\n"
    )
    assert parse_keys(text) == (a, b, c)
    assert parse_keys(f"{c.entry()}\n{a.entry()}") == (c, a)  # the order is kept


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no key given"),
        ("# only a comment\n\n", "no key given"),
        ("just-a-key-without-a-name", "entry 1 is not name:key"),
        (f"ok:{'A' * 43},bad name:{'A' * 43}", "entry 2: a key name is 1 to 32"),
        (f"{'n' * 33}:{'A' * 43}", "entry 1: a key name is 1 to 32"),
        ("a:not base64!", "entry 1 (a): the key is not base64"),
        ("a:+-" + "A" * 41, "entry 1 (a): the key is not base64"),  # both alphabets mixed
        (f"a:{base64.b64encode(b'x' * 31).decode()}", "a key is 32 bytes, this one 31"),
        (f"a:{base64.b64encode(b'x' * 33).decode()}", "a key is 32 bytes, this one 33"),
        (f"a:{'A' * 43},a:{'B' * 43}", "the name 'a' is given twice"),
    ],
)
def test_a_malformed_keyring_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_keys(text)


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64).filter(lambda b: len(b) != KEY_BYTES),
    urlsafe=st.booleans(),
    name=st.sampled_from(["kek-1", "bad name", "x" * 40, ""]),
)
def test_errors_never_quote_key_material(secret: bytes, urlsafe: bool, name: str) -> None:
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(secret).decode()
    good = new_key("good")
    for text in (f"{name}:{encoded}", f"{good.entry()},{name}:{encoded}", f"{encoded}"):
        with pytest.raises(ValueError, match=r"^entry \d") as info:
            parse_keys(text)
        message = str(info.value)
        if len(encoded.rstrip("=")) >= 8:
            assert encoded.rstrip("=") not in message
        assert_no_material(message, [good])


def test_a_keyring_needs_both_kinds_of_key_each_named_once_and_hides_them_in_repr() -> None:
    kek, index = new_key("kek"), new_key("index")
    ring = Keyring((kek,), (index,))
    assert (ring.active, ring.index_key, ring.key("kek"), ring.key("nope")) == (
        kek,
        index,
        kek,
        None,
    )
    assert_no_material(repr(ring), [kek, index])
    with pytest.raises(ValueError, match="needs a key-encryption key and a blind-index key"):
        Keyring((), (index,))
    with pytest.raises(ValueError, match="needs a key-encryption key and a blind-index key"):
        Keyring((kek,), ())
    with pytest.raises(ValueError, match="a name of its own"):
        Keyring((kek,), (NamedKey("kek", index.secret),))
    with pytest.raises(ValueError, match="use 1 to 32 letters"):
        new_key("no spaces")


# -- the settings that make a keyring (the encryption_keys plugin) -------------------------------


def _keyring_of(env: dict[str, str]) -> Keyring | None:
    return encryption_keys.keyring(Settings.from_mapping(env))


def test_the_plugin_reads_both_keyrings_from_variables_or_files(tmp_path: Path) -> None:
    kek, old, index = new_key("kek-2"), new_key("kek-1"), new_key("index-1")
    assert _keyring_of({}) is None
    assert _keyring_of({KEYS_SETTING: "", INDEX_KEYS_SETTING: ""}) is None  # empty is unset
    ring = _keyring_of(
        {KEYS_SETTING: f"{kek.entry()},{old.entry()}", INDEX_KEYS_SETTING: index.entry()}
    )
    assert ring == Keyring((kek, old), (index,))
    keys_file, index_file = tmp_path / "kek", tmp_path / "index"
    keys_file.write_text(f"# the active one first\n{kek.entry()}\n{old.entry()}\n")
    index_file.write_text(index.entry() + "\n")
    from_files = _keyring_of(
        {f"{KEYS_SETTING}_FILE": str(keys_file), f"{INDEX_KEYS_SETTING}_FILE": str(index_file)}
    )
    assert from_files == ring


@pytest.mark.parametrize(
    "case",
    [
        "keys only",
        "index only",
        "variable and file",
        "unreadable file",
        "three index keys",
        "bad entry",
    ],
)
def test_a_keyring_that_cannot_be_had_is_a_configuration_error_without_key_material(
    tmp_path: Path, case: str
) -> None:
    kek, index, other = new_key("kek-1"), new_key("index-1"), new_key("index-2")
    keys_file = tmp_path / "kek"
    keys_file.write_text(kek.entry())
    env, says = {
        "keys only": ({KEYS_SETTING: kek.entry()}, INDEX_KEYS_SETTING),
        "index only": ({INDEX_KEYS_SETTING: index.entry()}, KEYS_SETTING),
        "variable and file": (
            {
                KEYS_SETTING: kek.entry(),
                f"{KEYS_SETTING}_FILE": str(keys_file),
                INDEX_KEYS_SETTING: index.entry(),
            },
            "not both",
        ),
        "unreadable file": (
            {
                f"{KEYS_SETTING}_FILE": str(tmp_path / "missing"),
                INDEX_KEYS_SETTING: index.entry(),
            },
            "cannot read",
        ),
        "three index keys": (
            {
                KEYS_SETTING: kek.entry(),
                INDEX_KEYS_SETTING: f"{index.entry()},{other.entry()},plain",
            },
            "then the one it replaces",
        ),
        "bad entry": (
            {KEYS_SETTING: kek.entry()[:-3], INDEX_KEYS_SETTING: index.entry()},
            "entry 1 (kek-1): a key is 32 bytes, this one 30",
        ),
    }[case]
    env["USERPLANE_DATABASE_URL"] = f"sqlite:///{tmp_path}/u.db"
    with pytest.raises(ConfigurationError) as info:
        Registry(Settings.from_mapping(env))
    assert says in info.value.detail
    assert_no_material(info.value.detail, [kek, index, other])


# -- sealing ------------------------------------------------------------------------------------


@pytest.fixture
def sealer(k1: NamedKey, i1: NamedKey) -> Sealer:
    return Sealer(Keyring((k1,), (i1,)))


def _user(email: str = "Ann@Example.org", full_name: str | None = "Ann Example") -> User:
    return User(uuid.uuid4(), email, full_name, True, T0, T0, 1)


@settings(max_examples=50, deadline=None)
@given(email=st.text(min_size=1, max_size=320), name=st.none() | st.text(max_size=200))
def test_a_sealed_user_opens_to_itself(email: str, name: str | None) -> None:
    sealer = Sealer(Keyring((new_key("k"),), (new_key("i"),)))
    user = _user(email, name)
    sealed = sealer.seal_user(user, sealer.new_data_key(user.id))
    assert sealed.email.startswith(PREFIX)
    assert key_name(sealed.email) == "k"
    assert (sealed.full_name is None) == (name is None)
    assert sealer.open_user(sealed) == user
    assert attrs.evolve(sealed, email=user.email, full_name=user.full_name) == user


def test_ciphertext_is_bound_to_its_user_and_field(sealer: Sealer) -> None:
    user = _user()
    key = sealer.new_data_key(user.id)
    name = sealer.seal_value(user.id, key, "full_name", "Ann Example")
    other = uuid.uuid4()
    with pytest.raises(Undecryptable, match=f"full_name of user {other}"):
        sealer.open_value(other, key, "full_name", name)
    # The same data key, another field (a name is `upe1:<ct>`, an email carries the key).
    as_email = f"{PREFIX}{key.wrapped}:{name.removeprefix(PREFIX)}"
    with pytest.raises(Undecryptable, match=f"email of user {user.id}"):
        sealer.open_value(user.id, key, "email", as_email)
    # A wrapped data key moved to another user does not unwrap.
    email = sealer.seal_value(user.id, key, "email", "ann@example.org")
    with pytest.raises(Undecryptable, match=f"data key of user {other}"):
        sealer.data_key(other, email)
    assert sealer.open_value(user.id, key, "full_name", name) == "Ann Example"


def test_altered_ciphertext_never_opens_and_the_error_never_shows_the_value(
    sealer: Sealer,
) -> None:
    user = _user("Secret.Person@example.org", "Secret Person")
    sealed = sealer.seal_user(user, sealer.new_data_key(user.id))
    assert sealed.full_name is not None
    prefix, kek, wrapped, ct = sealed.email.split(":")
    raw = base64.urlsafe_b64decode(ct + "=" * (-len(ct) % 4))
    for position in (0, 11, 12, len(raw) // 2, len(raw) - 1):  # nonce, body, tag
        bad = bytearray(raw)
        bad[position] ^= 0x01
        altered = base64.urlsafe_b64encode(bytes(bad)).rstrip(b"=").decode()
        with pytest.raises(Undecryptable) as info:
            sealer.open_user(attrs.evolve(sealed, email=f"{prefix}:{kek}:{wrapped}:{altered}"))
        assert str(user.id) in info.value.detail
        assert "secret" not in info.value.detail.lower()
    for broken in (f"{prefix}:{kek}:{wrapped}", f"{prefix}:{kek}:{wrapped}:", "Secret.Person"):
        with pytest.raises(Undecryptable, match=str(user.id)):
            sealer.open_user(attrs.evolve(sealed, email=broken))
    with pytest.raises(Undecryptable, match="not in the sealed form"):
        sealer.open_user(attrs.evolve(sealed, full_name="Secret Person"))


def test_another_key_under_the_same_name_or_an_unknown_name_cannot_open(
    sealer: Sealer, k1: NamedKey, i1: NamedKey
) -> None:
    user = _user()
    sealed = sealer.seal_user(user, sealer.new_data_key(user.id))
    impostor = Sealer(Keyring((NamedKey("kek-1", new_key("x").secret),), (i1,)))
    with pytest.raises(Undecryptable, match=f"data key of user {user.id}"):
        impostor.open_user(sealed)
    stranger = Sealer(Keyring((new_key("kek-9"),), (i1,)))
    with pytest.raises(Undecryptable, match="'kek-1', which the keyring does not hold"):
        stranger.open_user(sealed)
    # With kek-1 anywhere in the ring, it opens.
    assert Sealer(Keyring((new_key("kek-9"), k1), (i1,))).open_user(sealed) == user


def test_the_blind_index_is_a_keyed_hmac_of_the_email_key(sealer: Sealer, k1: NamedKey) -> None:
    key = normalize_email("Ann@Example.org")
    index = sealer.blind_index(key)
    # The whole HMAC-SHA256, not truncated: 32 bytes, in 43 characters of URL-safe base64.
    assert len(base64.urlsafe_b64decode(index + "=")) == 32
    assert index == sealer.blind_index(normalize_email("\uff21\uff2e\uff2e@example.ORG"))
    assert index != sealer.blind_index(key + " ")
    assert index != Sealer(Keyring((k1,), (new_key("index-2"),))).blind_index(key)
    assert key not in index


def test_rewrapping_changes_only_the_wrapping(sealer: Sealer, k1: NamedKey, i1: NamedKey) -> None:
    user = _user()
    sealed = sealer.seal_user(user, sealer.new_data_key(user.id))
    assert sealer.rewrapped(user.id, sealed.email) is None  # already under the active key
    new = new_key("kek-2")
    rotating = Sealer(Keyring((new, k1), (i1,)))
    email = rotating.rewrapped(user.id, sealed.email)
    assert email is not None
    assert key_name(email) == "kek-2"
    assert email.split(":")[3] == sealed.email.split(":")[3]
    only_new = Sealer(Keyring((new,), (i1,)))
    assert only_new.open_user(attrs.evolve(sealed, email=email)) == user


def test_a_stored_response_body_is_bound_to_its_user_and_record(sealer: Sealer) -> None:
    user = _user()
    key = sealer.new_data_key(user.id)
    body = b'{"email":"Ann@Example.org"}'
    sealed = sealer.seal_body(user.id, key, "record-1", body)
    assert sealed.startswith(PREFIX.encode())
    assert b"Ann" not in sealed
    assert sealer.open_body(user.id, key, "record-1", sealed) == body
    for user_id, record in ((uuid.uuid4(), "record-1"), (user.id, "record-2")):
        with pytest.raises(Undecryptable, match="stored response"):
            sealer.open_body(user_id, key, record, sealed)
    with pytest.raises(Undecryptable, match="not in the sealed form"):
        sealer.open_body(user.id, key, "record-1", body)


# -- start-up key checks, through a Registry on each backend ---------------------------------------


def _seal_some(database_url: str, keys: Sequence[NamedKey], index: NamedKey) -> User:
    with opened(database_url, keys, index) as registry:
        return registry.users.create(NewUser("sealed@example.org", "Sealed Person"))


def _refused(database_url: str, keys: Sequence[NamedKey] | None, index: NamedKey | None) -> str:
    with opened(database_url, keys, index) as registry:
        with pytest.raises(ConfigurationError) as info:
            registry.users.list(UserQuery())
        # Refused again, not let through once reported.
        with pytest.raises(ConfigurationError):
            registry.users.create(NewUser("other@example.org"))
    return info.value.detail


@pytest.mark.parametrize(
    "case",
    [
        "wrong key-encryption key",
        "wrong blind-index key",
        "missing key-encryption key",
        "other blind-index key",
        "key-encryption key as index key",
        "no keyring over sealed data",
        "keyring over plaintext users",
        "retired active key",
    ],
)
def test_a_keyring_that_cannot_serve_the_database_is_refused(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey, case: str
) -> None:
    i2 = new_key("index-2")
    wrong_k1 = NamedKey("kek-1", new_key("x").secret)
    wrong_i1 = NamedKey("index-1", new_key("x").secret)
    if case == "keyring over plaintext users":
        with opened(database_url, None, None) as registry:
            registry.users.create(NewUser("plain@example.org", "Plain Person"))
    else:
        _seal_some(database_url, [k1], i1)
    if case == "retired active key":
        with opened(database_url, [k2, k1], i1) as registry:
            assert registry.sealed.sealer is not None
            rotate(registry.storage, registry.sealed.sealer, utcnow)
    keys, index, says = {
        "wrong key-encryption key": (
            [wrong_k1],
            i1,
            f"'kek-1' is not the key of that name this database was sealed with ({KEYS_SETTING})",
        ),
        "wrong blind-index key": (
            [k1],
            wrong_i1,
            f"'index-1' is not the key of that name this database was sealed with "
            f"({INDEX_KEYS_SETTING})",
        ),
        "missing key-encryption key": ([k2], i1, "data here is sealed under 'kek-1'"),
        "other blind-index key": (
            [k1],
            i2,
            "the blind index here is computed under 'index-1', not 'index-2': to move it, "
            "give index-2,index-1 and run `userplane encryption rotate` "
            f"({INDEX_KEYS_SETTING})",
        ),
        "key-encryption key as index key": (
            [k2],
            NamedKey("kek-1", k1.secret),
            "'kek-1' is not the key of that name",
        ),
        "no keyring over sealed data": (None, None, "holds personal data sealed under"),
        "keyring over plaintext users": ([k1], i1, "holds users stored in plaintext: to seal them"),
        "retired active key": ([k1, k2], i1, "the active key 'kek-1' was retired"),
    }[case]
    detail = _refused(database_url, keys, index)
    assert says in detail
    assert_no_material(detail, [k1, k2, i1, i2, wrong_k1, wrong_i1])


def test_the_keyring_of_a_rotation_is_accepted_and_its_new_key_recorded(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey
) -> None:
    user = _seal_some(database_url, [k1], i1)
    with opened(database_url, [k2, k1], i1) as registry:
        assert registry.users.get(user.id) == user
        new = registry.users.create(NewUser("new@example.org"))
        assert key_name(stored(registry, new.id).email) == "kek-2"
        assert key_name(stored(registry, user.id).email) == "kek-1"
        records = {r.name: (r.purpose, r.retired_at) for r in registry.storage.key_records()}
    assert records == {"index-1": ("index", None), "kek-1": ("kek", None), "kek-2": ("kek", None)}


def test_a_write_moves_the_data_key_under_the_active_key(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey
) -> None:
    """A name-only update re-wraps the user's data key as a rotation would (same ciphertext)."""
    user = _seal_some(database_url, [k1], i1)
    with opened(database_url, [k2, k1], i1) as registry:
        before = stored(registry, user.id).email
        assert key_name(before) == "kek-1"
        renamed = registry.users.update(user.id, UserChanges(full_name="Renamed"))
        after = stored(registry, user.id).email
        assert key_name(after) == "kek-2"
        assert after.rsplit(":", 1)[1] == before.rsplit(":", 1)[1]  # the email's ciphertext
        assert registry.users.get(user.id) == renamed
        assert registry.users.get_by_email(user.email) == renamed  # the index is unchanged
        assert renamed.email == user.email


def test_a_key_merely_kept_in_the_keyring_is_not_recorded_nor_then_required(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey
) -> None:
    with opened(database_url, [k1, k2], i1) as registry:
        user = registry.users.create(NewUser("kept@example.org"))
        assert sorted(r.name for r in registry.storage.key_records()) == ["index-1", "kek-1"]
    with opened(database_url, [k1], i1) as registry:
        assert registry.users.get(user.id) == user


class _BothReadFirst:
    """The raw store, but ``key_records`` waits until both instances have read them:
    two instances starting at once on a new database, interleaved deterministically."""

    def __init__(self, inner: Storage, barrier: threading.Barrier) -> None:
        self._inner = inner
        self._barrier = barrier

    def key_records(self) -> Any:
        records = self._inner.key_records()
        self._barrier.wait(10)
        return records

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_of_two_first_starts_with_different_keys_of_one_name_one_is_refused(
    database_url: str, k1: NamedKey, i1: NamedKey
) -> None:
    other = Keyring((NamedKey("kek-1", new_key("x").secret),), (i1,))
    mine = Keyring((k1,), (i1,))
    with opened(database_url, None, None) as registry:
        barrier = threading.Barrier(2)
        gated = _BothReadFirst(registry.storage, barrier)
        outcomes: list[Any] = [None, None]

        def start(i: int, ring: Keyring) -> None:
            try:
                verify_keys(gated, ring, utcnow())  # type: ignore[arg-type]
                outcomes[i] = "started"
            except ConfigurationError as exc:
                outcomes[i] = exc

        threads = [
            threading.Thread(target=start, args=(i, ring)) for i, ring in enumerate((mine, other))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert sorted(str(type(o).__name__) for o in outcomes) == ["ConfigurationError", "str"]


# -- what a dump of the database shows ------------------------------------------------------------

#: Distinctive values: a dump holding any of them (in any form) holds personal data.
PEOPLE = [
    ("Zoë.Quixote-Straße@Exämple.org", "Zoë Quixote-Straße"),
    ("JÜRGEN.Wainwright@Example.org", "Jürgen Wainwright"),
    ("Marlowe.Pemberton@example.org", "Marlowe Pemberton"),
    ("Delphine.Okonkwo@example.org", "Delphine Okonkwo"),
]
RENAMED = ("Old.Address.Thistlewood@example.org", "Old Name Thistlewood")


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plaintext-control"])
def test_a_dump_holds_no_email_or_name_of_any_user(
    database_url: str, k1: NamedKey, i1: NamedKey, encrypted: bool
) -> None:
    keys, index = ([k1], i1) if encrypted else (None, None)
    with opened(database_url, keys, index) as registry:
        client = client_for(registry)
        by_service = registry.users.create(NewUser(*PEOPLE[0]))
        posted = client.simulate_post(
            USERS,
            json={"email": PEOPLE[1][0], "full_name": PEOPLE[1][1]},
            headers={"Idempotency-Key": "dump-1"},
        )
        assert posted.status_code == 201
        renamed = registry.users.create(NewUser(*RENAMED))
        registry.users.update(renamed.id, UserChanges(email=PEOPLE[2][0], full_name=PEOPLE[2][1]))
        deleted = registry.users.create(NewUser(*PEOPLE[3]))
        registry.users.delete(deleted.id)
        assert registry.users.get(by_service.id).full_name == PEOPLE[0][1]
        # The stored response is there, sealed or not.
        [(body,)] = sql(database_url, "SELECT body FROM idempotency_keys WHERE body IS NOT NULL")
    dumped = dump(database_url)
    everything = [text for person in [*PEOPLE, RENAMED] for text in person]
    # The request's plain SHA-256, as a fingerprint: it would confirm a guessed body.
    request = orjson.dumps(
        {"email": PEOPLE[1][0], "full_name": PEOPLE[1][1]}, option=orjson.OPT_SORT_KEYS
    )
    plain_fingerprints = {
        hashlib.sha256(f"POST {path}\n".encode() + request).hexdigest()
        for path in (USERS, USERS.rstrip("/"))
    }
    if encrypted:
        assert leaks(dumped, everything) == []
        assert bytes(body).startswith(PREFIX.encode())
        assert "upe1:kek-1:" in dumped
        assert not any(f in dumped for f in plain_fingerprints)
    else:
        # The control: the same search finds every current value, and the stored
        # response's body is found as hex (a BLOB in SQLite, a bytea in PostgreSQL).
        current = [text for person in PEOPLE for text in person]
        found = leaks(dumped, current)
        for text in current:
            assert text in found
        assert PEOPLE[1][0].encode().hex() in dumped.lower()
        assert bytes(body).startswith(b"{")
        assert any(f in dumped for f in plain_fingerprints)


# -- crypto-shredding ------------------------------------------------------------------------------


def test_purging_a_user_shreds_it(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey
) -> None:
    email, name = "Shredded.Person@example.org", "Shredded Person"
    with opened(database_url, [k1], i1) as registry:
        client = client_for(registry)
        created = client.simulate_post(
            USERS, json={"email": email, "full_name": name}, headers={"Idempotency-Key": "shred"}
        )
        assert created.status_code == 201
        user_id = uuid.UUID(created.json["id"])
        kept = registry.users.create(NewUser("kept@example.org", "Kept Person"))
        row = stored(registry, user_id)  # as a backup taken before the purge holds it
        assert row.full_name is not None
        [(body, about)] = sql(
            database_url, "SELECT body, user_id FROM idempotency_keys WHERE body IS NOT NULL"
        )
        assert uuid.UUID(str(about)) == user_id
        assert client.simulate_delete(f"{USERS}{user_id}").status_code == 204
        assert registry.users.purge(timedelta(0)) == 1
        sealer = registry.sealed.sealer
        assert sealer is not None
        remaining = [stored(registry, kept.id)]

        dumped = dump(database_url)
        assert leaks(dumped, [email, name]) == []
        for piece in (wrapped_data_key(row.email), row.email.split(":")[3], row.full_name):
            assert piece not in dumped
        assert bytes(body).hex() not in dumped.lower()
        # No row, no stored response about it: only the audit trail names it, as it keeps
        # its events whole for the chain to verify, with the values sealed (the leaks
        # above: none) under the key now destroyed (docs/audit.md, "Personal data and
        # erasure").
        assert str(user_id) not in dump(database_url, without_rows_of="audit_events")
        actions = sql(database_url, f"SELECT action FROM audit_events WHERE user_id = '{user_id}'")
        assert sorted(a for (a,) in actions) == ["user.created", "user.deleted", "user.purged"]
        assert sql(database_url, "SELECT count(*) FROM idempotency_keys") == [(0,)]

        # With every key configured and every data key left, nothing opens what it sealed.
        for other in remaining:
            data_key = sealer.data_key(other.id, other.email)
            for field, value in (("email", row.email), ("full_name", row.full_name)):
                with pytest.raises(Undecryptable):
                    sealer.open_value(user_id, data_key, field, value)
                with pytest.raises(Undecryptable):
                    sealer.open_value(other.id, data_key, field, value)
            with pytest.raises(Undecryptable):
                sealer.open_body(user_id, data_key, "any", bytes(body))

        # The same request again runs again (nothing replayed): the address is free.
        again = client.simulate_post(
            USERS, json={"email": email, "full_name": name}, headers={"Idempotency-Key": "shred"}
        )
        assert again.status_code == 201
        assert "Idempotent-Replayed" not in again.headers
        assert again.json["id"] != str(user_id)

    # A copy of the row from before the purge opens while kek-1 lives (a backup, as
    # documented); once rotated away and destroyed, it never opens again.
    assert sealer.open_user(row).email == email
    with opened(database_url, [k2, k1], i1) as registry:
        assert registry.sealed.sealer is not None
        assert rotate(registry.storage, registry.sealed.sealer, utcnow).retired == ("kek-1",)
    with pytest.raises(Undecryptable, match="does not hold"):
        Sealer(Keyring((k2,), (i1,))).open_user(row)


# -- rotation --------------------------------------------------------------------------------------


def test_rotation_under_concurrent_writes_loses_nothing(
    postgresql_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey
) -> None:
    with opened(postgresql_url, [k1], i1) as registry:
        users = [
            registry.users.create(NewUser(f"u{i}@example.org", f"User {i}")) for i in range(40)
        ]
        api_key = new_api_key(registry)
        replay = _client(registry, api_key).simulate_post(
            USERS, json={"email": "replayed@example.org"}, headers={"Idempotency-Key": "before"}
        )
        assert replay.status_code == 201
    writers = 3
    expected: dict[uuid.UUID, tuple[str, str | None, int]] = {
        u.id: (u.email, u.full_name, u.version) for u in users
    }
    stop = threading.Event()
    writes_during = [0] * writers
    rotating = threading.Event()
    failures: list[BaseException] = []

    with opened(postgresql_url, [k2, k1], i1) as registry:
        sealer = registry.sealed.sealer
        assert sealer is not None

        def write(w: int) -> None:
            mine = [u.id for u in users[w::writers]]
            n = 0
            try:
                while not stop.is_set():
                    user_id = mine[n % len(mine)]
                    version = expected[user_id][2]
                    changes = (
                        UserChanges(email=f"w{w}-{n}-{user_id.hex[:6]}@Example.org")
                        if n % 2
                        else UserChanges(full_name=f"Writer {w} write {n}")
                    )
                    after = registry.users.update(user_id, changes)
                    expected[user_id] = (after.email, after.full_name, after.version)
                    assert after.version == version + 1
                    if rotating.is_set():
                        writes_during[w] += 1
                    n += 1
            except BaseException as exc:  # reported below, not lost in the thread
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        rotating.set()
        report = rotate(
            registry.storage,
            sealer,
            utcnow,
            batch=7,
            progress=lambda _: time.sleep(0.01),  # let the writers in between batches
        )
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert all(n > 0 for n in writes_during), writes_during
    assert report.retired == ("kek-1",)
    assert report.passes >= 1

    # Only the new key now: every user opens, every last write is there.
    with opened(postgresql_url, [k2], i1) as registry:
        for user_id, (email, name, version) in expected.items():
            assert key_name(stored(registry, user_id).email) == "kek-2"
            got = registry.users.get(user_id)
            assert (got.email, got.full_name, got.version) == (email, name, version)
            assert registry.users.get_by_email(email.upper()).id == user_id
        retired = {r.name: r.retired_at is not None for r in registry.storage.key_records()}
        assert retired == {"kek-1": True, "kek-2": False, "index-1": False}
        # The service works without the old key: lists, writes, replays a stored response.
        assert len(registry.users.list(UserQuery(limit=100)).items) == 41
        assert registry.users.create(NewUser("after@example.org")).version == 1
        again = _client(registry, api_key).simulate_post(
            USERS, json={"email": "replayed@example.org"}, headers={"Idempotency-Key": "before"}
        )
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json == replay.json


def _client(registry: Registry, api_key: str) -> testing.TestClient:
    from userplane.frontends.http import create_app

    return testing.TestClient(create_app(registry), headers={"Authorization": f"Bearer {api_key}"})


class _Interrupted(Exception):
    pass


def test_an_interrupted_rotation_resumes_where_it_stopped(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey
) -> None:
    with opened(database_url, [k1], i1) as registry:
        users = [registry.users.create(NewUser(f"r{i}@example.org", f"R {i}")) for i in range(10)]
        registry.users.delete(users[3].id)
    with opened(database_url, [k2, k1], i1) as registry:
        sealer = registry.sealed.sealer
        assert sealer is not None

        def interrupt(_: int) -> None:
            raise _Interrupted

        with pytest.raises(_Interrupted):
            rotate(registry.storage, sealer, utcnow, batch=4, progress=interrupt)
        under = sorted(key_name(stored(registry, u.id).email) or "" for u in users)
        assert under == ["kek-1"] * 6 + ["kek-2"] * 4
        assert all(r.retired_at is None for r in registry.storage.key_records())
        assert [u.id for u in registry.users.list(UserQuery()).items] == [
            u.id for u in users if u.id != users[3].id
        ]
    # Half-rotated, the old key is still needed.
    with opened(database_url, [k2], i1) as registry, pytest.raises(ConfigurationError):
        registry.users.get(users[0].id)
    with opened(database_url, [k2, k1], i1) as registry:
        assert registry.sealed.sealer is not None
        report = rotate(registry.storage, registry.sealed.sealer, utcnow, batch=4)
        assert (report.scanned, report.rewrapped, report.retired) == (10, 6, ("kek-1",))
    with opened(database_url, [k2], i1) as registry:
        for user in users:
            assert key_name(stored(registry, user.id).email) == "kek-2"
            assert registry.users.get(user.id, include_deleted=True).email == user.email


class _PausedAfterRead:
    """The raw store, but ``get_user`` pauses after reading until told to go on:
    a write in flight, caught between its read of the data key and its write."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self.read = threading.Event()
        self.go = threading.Event()

    def get_user(self, user_id: uuid.UUID, include_deleted: bool = False) -> User | None:
        user = self._inner.get_user(user_id, include_deleted)
        self.read.set()
        self.go.wait(20)
        return user

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_an_email_change_in_flight_across_a_rotation_is_wrapped_under_the_active_key(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey
) -> None:
    from userplane.sealed_storage import SealedStorage

    user = _seal_some(database_url, [k1], i1)
    with opened(database_url, [k2, k1], i1) as registry:
        paused = _PausedAfterRead(registry.storage)
        writer = SealedStorage(paused, Sealer(Keyring((k2, k1), (i1,))), utcnow)  # type: ignore[arg-type]
        writer.verify()
        done: list[Any] = []
        thread = threading.Thread(
            target=lambda: done.append(
                writer.update_user(
                    user.id, {"email": "moved@example.org"}, "moved@example.org", None, utcnow()
                )
            )
        )
        thread.start()
        assert paused.read.wait(10)
        assert registry.sealed.sealer is not None
        report = rotate(registry.storage, registry.sealed.sealer, utcnow)
        assert report.retired == ("kek-1",)
        paused.go.set()
        thread.join(20)
        assert [u.email for u in done] == ["moved@example.org"]
    with opened(database_url, [k2], i1) as registry:
        assert key_name(stored(registry, user.id).email) == "kek-2"
        assert registry.users.get(user.id).email == "moved@example.org"
