"""The storage contract in encrypted mode: ``SealedStorageContract``.

With ``USERPLANE_ENCRYPTION_KEYS`` set, the core wraps a storage plugin's store
in ``userplane.sealed_storage.SealedStorage``: the store then holds sealed
text where it held emails and names, a blind index (43 characters of base64) where it
held email keys, and ``""`` as every name's sort key. This suite proves a
store serves the core in that mode. A plugin author runs it next to
``StorageContract``, giving the *raw* store (the one the plugin makes) as the
``raw_storage`` fixture; the suite's ``storage`` fixture seals it::

    import pytest
    from userplane.testing import SealedStorageContract

    class TestMyStorageSealed(SealedStorageContract):
        @pytest.fixture
        def raw_storage(self):
            store = MyStorage(...)      # an empty database
            store.migrate()
            yield store
            store.close()

The fixtures that may be overridden:

- ``keyring``: the ``Keyring`` sealing the test's data (default: fresh random
  keys per test, ``kek-a`` and ``index-a``);
- ``clock``: what ``SealedStorage`` records keys at (default: the wall clock);
- ``unreachable_storage``, ``unmigrated_storage``, ``refused_storage``: raw
  stores that cannot serve, exactly as for ``StorageContract`` (a class may
  share them with its plain suite); the suite seals them itself.

Every test of ``StorageContract`` runs here on the sealed store, except those
that cannot hold on ciphertext, which are overridden with their encrypted
counterpart (never skipped): substring search (``q``) and sorting by email or
name assert the documented refusal (``InvalidInput`` at ``$.q`` / ``$.sort``
naming the setting); the longest-value tests prove the longest values a
client may give fit the published schema once sealed; the tests of what only
the raw store sees (a SQL store's named queries, capabilities and
transactions, stored forms written by hand with ``reseal_user``) run on the
raw store, where they belong. Then come checks of encrypted mode alone: no
plaintext in the raw rows, fresh ciphertext for equal values, one blind index
for every spelling of an address, ciphertext moved between rows or columns or
altered refused (``Undecryptable`` naming the user, never the value), stored
responses sealed under their user's data key and purged with it, keys recorded
by name and fingerprint and checked before the first user operation, and key
rotation with ``reseal_user``.

Requires pytest and hypothesis (``pip install 'userplane[testing]'``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from userplane.emails import normalize_email
from userplane.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    Undecryptable,
)
from userplane.idempotency import IdempotencyRecord, StoredResponse
from userplane.keyring import Keyring, NamedKey, new_key
from userplane.pagination import Position, Sort
from userplane.rotation import rotate
from userplane.sealed_storage import KEYS_SETTING, SealedStorage
from userplane.sealing import PREFIX, Sealer, is_sealed, key_name
from userplane.sql import SQLStorage
from userplane.storage import Storage, UserRow
from userplane.testing.storage import (
    _BASE_TIME,
    CREATED,
    StorageContract,
    insert,
    make_user,
    max_length,
)
from userplane.testing.strategies import new_users
from userplane.text import fold
from userplane.users import MAX_FULL_NAME, User, UserFilter

#: Every sort ``StorageContract`` pages through; only ``created_at`` survives sealing.
_SORTS = ["created_at", "-created_at", "email", "-email", "full_name", "-full_name"]
#: A property runs on the test's one database (examples add users to it), and the
#: suite is inherited by a class per store: each its own executor, sound here.
_SHARED_FIXTURES = [
    HealthCheck.function_scoped_fixture,
    HealthCheck.differing_executors,
    HealthCheck.too_slow,
]
#: Plaintext this long or longer cannot turn up in base64 ciphertext by chance.
_NOTABLE = 6


def assert_refused(call: Callable[[], object], *fields: str) -> InvalidInput:
    """``call()`` raises ``InvalidInput`` at exactly ``fields``, each naming the keys setting."""
    with pytest.raises(InvalidInput) as info:
        call()
    errors = info.value.errors
    assert sorted(e.field for e in errors) == sorted(fields), errors
    for error in errors:
        assert KEYS_SETTING in error.message, error
    return info.value


def raw_rows(raw: Storage) -> list[dict[str, Any]] | None:
    """The users table as stored, for a ``userplane.sql.SQLStorage``; else ``None``."""
    if not isinstance(raw, SQLStorage):
        return None
    columns = ("id", "email", "email_normalized", "full_name", "full_name_folded")
    rows = raw.fetch_all(f"SELECT {', '.join(columns)} FROM users", {})
    return [dict(zip(columns, (raw.uuid_from_db(r[0]), *r[1:]), strict=True)) for r in rows]


def plaintext_forms(user: User) -> list[str]:
    """What of ``user`` must never be stored in clear: its email and name as given,
    their normalised and folded forms, lower- and upper-cased (notable ones only)."""
    forms: set[str] = set()
    for text in (user.email, user.full_name):
        if text:
            forms |= {text, fold(text)}
    forms.add(normalize_email(user.email))
    out = set()
    for form in forms:
        out |= {form, form.lower(), form.upper()}
    return sorted(f for f in out if len(f) >= _NOTABLE)


def _flip(text: str) -> str:
    """``text`` with one base64 character in its middle changed (never only padding bits)."""
    i = len(text) // 2
    return text[:i] + ("B" if text[i] == "A" else "A") + text[i + 1 :]


class SealedStorageContract(StorageContract):
    """``StorageContract`` with encryption on. Provide a ``raw_storage`` fixture.

    ``raw_storage`` yields a migrated, empty store as the plugin makes it, and
    closes it afterwards; ``storage`` is that store sealed under ``keyring``.
    """

    # -- fixtures ------------------------------------------------------------------

    @pytest.fixture
    def raw_storage(self) -> Iterator[Storage]:
        raise NotImplementedError(
            "provide a `raw_storage` fixture yielding an empty, migrated store (unsealed)"
        )

    @pytest.fixture
    def keyring(self) -> Keyring:
        """Fresh random keys for each test."""
        return Keyring((new_key("kek-a"),), (new_key("index-a"),))

    @pytest.fixture
    def clock(self) -> Callable[[], datetime]:
        return lambda: datetime.now(UTC)

    @pytest.fixture
    def sealer(self, keyring: Keyring) -> Sealer:
        return Sealer(keyring)

    @pytest.fixture
    def storage(
        self, raw_storage: Storage, sealer: Sealer, clock: Callable[[], datetime]
    ) -> SealedStorage:
        """``raw_storage`` as the core uses it with encryption on (closed by ``raw_storage``)."""
        return SealedStorage(raw_storage, sealer, clock)

    def seal(self, raw: Storage, keyring: Keyring | None) -> SealedStorage:
        """``raw`` sealed under ``keyring`` (``None``: encryption off), as a new instance would."""
        return SealedStorage(
            raw, None if keyring is None else Sealer(keyring), lambda: datetime.now(UTC)
        )

    # -- what runs on the raw store: a SQL store's own machinery -------------------------

    def test_a_sql_store_has_every_named_query(self, raw_storage: Storage) -> None:
        super().test_a_sql_store_has_every_named_query(raw_storage)

    def test_declares_its_capabilities(
        self, raw_storage: Storage, record_property: Callable[[str, object], None]
    ) -> None:
        super().test_declares_its_capabilities(raw_storage, record_property)

    def test_a_transaction_commits_together_or_not_at_all(self, raw_storage: Storage) -> None:
        super().test_a_transaction_commits_together_or_not_at_all(raw_storage)

    def test_other_threads_see_a_transaction_once_it_commits(self, raw_storage: Storage) -> None:
        super().test_other_threads_see_a_transaction_once_it_commits(raw_storage)

    def test_purge_orphan_responses_removes_only_responses_about_no_user(
        self, raw_storage: Storage
    ) -> None:
        super().test_purge_orphan_responses_removes_only_responses_about_no_user(raw_storage)

    def test_the_longest_sealed_values_round_trip_with_an_empty_name_key(
        self, raw_storage: Storage
    ) -> None:
        # What the raw store must take: sealed text at the schema's lengths.
        super().test_the_longest_sealed_values_round_trip_with_an_empty_name_key(raw_storage)

    def test_reseal_replaces_the_stored_form_and_keeps_version_and_time(
        self, raw_storage: Storage
    ) -> None:
        # Stored forms made up by hand, which no key opens: the raw store's business.
        # The sealed counterpart is test_rotation_rewraps_every_data_key_….
        super().test_reseal_replaces_the_stored_form_and_keeps_version_and_time(raw_storage)

    def test_the_second_index_column_is_unique_written_and_searched(
        self, raw_storage: Storage
    ) -> None:
        # Index values given by hand: the raw store's business (sealed: the re-index tests).
        super().test_the_second_index_column_is_unique_written_and_searched(raw_storage)

    def test_index_entries_walk_every_user_by_id_with_both_index_values(
        self, raw_storage: Storage
    ) -> None:
        super().test_index_entries_walk_every_user_by_id_with_both_index_values(raw_storage)

    def test_users_are_found_by_a_batch_of_email_keys_either_index(
        self, raw_storage: Storage
    ) -> None:
        # Index values given by hand: the raw store's business.
        super().test_users_are_found_by_a_batch_of_email_keys_either_index(raw_storage)

    def test_a_batch_is_folded_for_search_as_one_insert_is(self, raw_storage: Storage) -> None:
        # Sealed names have no search: the raw store folds what it is given.
        super().test_a_batch_is_folded_for_search_as_one_insert_is(raw_storage)

    def test_a_sealed_batch_is_stored_sealed_and_found_by_plain_email_keys(
        self, storage: SealedStorage, raw_storage: Storage
    ) -> None:
        users = [make_user(f"s{n}@example.org", full_name=f"S {n}") for n in range(4)]
        with storage.transaction():
            storage.insert_users([UserRow(u, normalize_email(u.email)) for u in users])
        for user in users:
            stored = raw_storage.get_user(user.id)
            assert stored is not None
            assert user.email not in stored.email
            assert stored.full_name is not None
            assert "S " not in stored.full_name
        keys = [normalize_email(u.email) for u in users]
        assert storage.users_by_email_keys([*keys, "nobody@example.org"]) == dict(
            zip(keys, users, strict=True)
        )

    # -- error mapping: the raw stores that cannot serve, sealed ----------------------------

    def test_an_unreachable_database_is_unavailable(  # type: ignore[override]
        self, unreachable_storage: Storage, keyring: Keyring
    ) -> None:
        self._unavailable_everywhere(self.seal(unreachable_storage, keyring))

    def test_an_unmigrated_database_is_unavailable_saying_to_migrate(  # type: ignore[override]
        self, unmigrated_storage: Storage, keyring: Keyring
    ) -> None:
        sealed = self.seal(unmigrated_storage, keyring)
        self._unavailable_everywhere(sealed, "userplane migrate")
        sealed.migrate()
        sealed.ping()
        user = insert(sealed, make_user())
        assert user.version == 1
        assert sealed.get_user(user.id) == user

    def test_a_refused_login_is_unavailable(  # type: ignore[override]
        self, refused_storage: Storage, keyring: Keyring
    ) -> None:
        self._unavailable_everywhere(self.seal(refused_storage, keyring))

    # -- what ciphertext cannot answer: refused, naming the setting ------------------------

    def test_filters(self, storage: Storage) -> None:
        users = self._seed(storage, 9)
        active = storage.list_users(UserFilter(is_active=True), CREATED, None, 100)
        assert active == [u for u in users if u.is_active]
        inactive = storage.list_users(UserFilter(is_active=False), CREATED, None, 100)
        assert inactive == [u for u in users if not u.is_active]
        # The email filter is an exact lookup: it works on the blind index.
        by_email = storage.list_users(UserFilter(email="user4@example.org"), CREATED, None, 100)
        assert [u.email for u in by_email] == ["user4@example.org"]
        both = storage.list_users(
            UserFilter(is_active=False, email="user3@example.org"), CREATED, None, 100
        )
        assert [u.email for u in both] == ["user3@example.org"]
        # Substring search is refused, never answered from ciphertext or hex digits.
        for q in ("user 1", "user7@", "a", "0"):
            assert_refused(partial(storage.list_users, UserFilter(q=q), CREATED, None, 100), "$.q")
        assert_refused(
            lambda: storage.list_users(UserFilter(is_active=False, q="user"), CREATED, None, 9),
            "$.q",
        )

    def test_q_is_literal_and_case_insensitive(self, storage: Storage) -> None:
        insert(storage, make_user("percent@example.org", full_name="100% Sure"))
        insert(storage, make_user("under@example.org", full_name="snake_case Ünïcode"))
        for q in ("%", "_", "ünïcode", "upe1:", "e"):
            assert_refused(partial(storage.list_users, UserFilter(q=q), CREATED, None, 10), "$.q")

    @pytest.mark.parametrize("text", _SORTS)
    def test_every_sort_pages_through_everything_once_in_order(
        self, storage: Storage, text: str
    ) -> None:
        sort = Sort.parse(text)
        if sort.field == "created_at":
            super().test_every_sort_pages_through_everything_once_in_order(storage, text)
            return
        user = insert(storage, make_user())
        assert_refused(lambda: storage.list_users(UserFilter(), sort, None, 3), "$.sort")
        # Also when continuing from a position, and together with a refused q.
        after = Position("ann@example.org", user.id)
        assert_refused(lambda: storage.list_users(UserFilter(), sort, after, 3), "$.sort")
        assert_refused(
            lambda: storage.list_users(UserFilter(q="ann"), sort, None, 3), "$.q", "$.sort"
        )

    @pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
    def test_sorting_by_email_key_follows_code_points(
        self, storage: Storage, descending: bool
    ) -> None:
        # The encrypted counterpart of exact keys is test_email_keys_are_exact_…, which
        # runs unchanged; an order of blind indexes would be random, so it is refused.
        insert(storage, make_user("b@example.org"))
        insert(storage, make_user("a@example.org"))
        assert_refused(
            lambda: storage.list_users(UserFilter(), Sort("email", descending), None, 4),
            "$.sort",
        )

    @pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
    def test_sorting_by_name_follows_code_points_of_the_folded_name(
        self, storage: Storage, descending: bool
    ) -> None:
        insert(storage, make_user("n0@example.org", full_name="Zoë"))
        insert(storage, make_user("n1@example.org", full_name="émile"))
        assert_refused(
            lambda: storage.list_users(UserFilter(), Sort("full_name", descending), None, 4),
            "$.sort",
        )

    # -- the longest values a client may give, sealed, fit the published schema ---------------

    def _longest_keyring(self) -> Keyring:
        """Keys with the longest names: the longest stored forms."""
        return Keyring((new_key("k" * 32),), (new_key("i" * 32),))

    def test_the_longest_email_and_email_key_round_trip(self, raw_storage: Storage) -> None:
        sealed = self.seal(raw_storage, self._longest_keyring())
        # An address as given is 320 characters at most (4-byte ones here), its key too.
        domain = "@example.org"
        email = ("Ü\U0001f600" * 400)[: 320 - len(domain)] + domain
        key = ("ü\U0001f600" * 400)[: max_length("users", "email_normalized") - len(domain)]
        key += domain
        user = sealed.insert_user(make_user(email), key)
        assert user.email == email
        assert sealed.get_user(user.id) == user
        assert sealed.get_user_by_email(key) == user
        assert sealed.get_user_by_email(key[:-1]) is None
        stored = raw_storage.get_user(user.id)
        assert stored is not None
        assert len(stored.email) <= max_length("users", "email"), len(stored.email)
        for row in raw_rows(raw_storage) or []:
            assert len(row["email_normalized"]) == 43

    def test_the_longest_names_round_trip_and_their_folded_form_is_searched_whole(
        self, raw_storage: Storage
    ) -> None:
        sealed = self.seal(raw_storage, self._longest_keyring())
        names = ["\U0001f600" * MAX_FULL_NAME, "\U00010400" * MAX_FULL_NAME, "ß" * MAX_FULL_NAME]
        users = [
            insert(sealed, make_user(f"n{i}@example.org", full_name=name))
            for i, name in enumerate(names)
        ]
        for user in users:
            assert sealed.get_user(user.id) == user
            stored = raw_storage.get_user(user.id)
            assert stored is not None
            assert stored.full_name is not None
            assert len(stored.full_name) <= max_length("users", "full_name")
        # Nothing of the name is kept to search or sort by: both are refused.
        for row in raw_rows(raw_storage) or []:
            assert row["full_name_folded"] == ""
        assert_refused(
            lambda: sealed.list_users(UserFilter(q=fold(names[2])), CREATED, None, 10), "$.q"
        )
        assert_refused(
            lambda: sealed.list_users(UserFilter(), Sort("full_name"), None, 1), "$.sort"
        )

    # -- encrypted mode alone: nothing in clear ---------------------------------------------

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=_SHARED_FIXTURES,
    )
    @given(data=st.data())
    def test_raw_rows_hold_no_plaintext(
        self, storage: SealedStorage, raw_storage: Storage, sealer: Sealer, data: st.DataObject
    ) -> None:
        new = data.draw(new_users())
        key = normalize_email(new.email)
        assume(storage.get_user_by_email(key, include_deleted=True) is None)
        user = insert(
            storage,
            attrs.evolve(make_user(new.email, full_name=new.full_name), is_active=new.is_active),
        )
        stored = raw_storage.get_user(user.id)
        assert stored is not None
        assert stored.email.startswith(PREFIX)
        assert key_name(stored.email) == "kek-a"
        assert (stored.full_name is None) == (user.full_name is None)
        if stored.full_name is not None:
            assert stored.full_name.startswith(PREFIX)
        # The sealed parts, after the clear `upe1:<key name>:` header.
        sealed_parts = stored.email.split(":", 2)[2] + (stored.full_name or "")[len(PREFIX) :]
        for form in plaintext_forms(user):
            assert form not in sealed_parts, form
        # What a client sees is unchanged: only the stored form is sealed.
        assert attrs.evolve(stored, email=user.email, full_name=user.full_name) == user
        # The email key is stored as its blind index only.
        assert raw_storage.get_user_by_email(key) is None
        assert raw_storage.get_user_by_email(sealer.blind_index(key)) == stored
        rows = raw_rows(raw_storage)
        if rows is not None:
            [row] = [r for r in rows if r["id"] == user.id]
            assert row["email_normalized"] == sealer.blind_index(key)
            assert row["full_name_folded"] == ""

    def test_equal_values_are_stored_as_different_ciphertexts(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        # A deterministic seal would show which users share a name.
        users = [
            insert(storage, make_user(f"twin{i}@example.org", full_name="Twin")) for i in range(3)
        ]
        stored = [raw_storage.get_user(u.id) for u in users]
        names = {s.full_name for s in stored if s is not None}
        assert len(names) == 3
        # And updating to the same value seals afresh.
        again = storage.update_user(users[0].id, {"full_name": "Twin"}, None, None, _BASE_TIME)
        assert again.full_name == "Twin"
        restored = raw_storage.get_user(users[0].id)
        assert restored is not None
        assert restored.full_name not in names

    def test_updates_and_deletes_keep_values_sealed(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        user = insert(storage, make_user("before@example.org", full_name="Before Name"))
        later = _BASE_TIME + timedelta(hours=1)
        updated = storage.update_user(
            user.id,
            {"email": "After@Example.org", "full_name": "After Name"},
            "after@example.org",
            None,
            later,
        )
        deleted = storage.delete_user(user.id, None, later)
        assert (deleted.email, deleted.full_name) == ("After@Example.org", "After Name")
        restored = storage.restore_user(user.id, later)
        assert restored is not None
        assert restored.email == "After@Example.org"
        stored = raw_storage.get_user(user.id)
        assert stored is not None
        for form in [*plaintext_forms(user), *plaintext_forms(updated)]:
            assert form not in stored.email, form
            assert form not in (stored.full_name or ""), form
        # The data key stays the user's: the new email still carries one wrapping.
        assert key_name(stored.email) == "kek-a"
        assert storage.get_user_by_email("after@example.org") == restored
        assert storage.get_user_by_email("before@example.org") is None

    # -- encrypted mode alone: one blind index per address ------------------------------------

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=_SHARED_FIXTURES,
    )
    @given(data=st.data())
    def test_every_spelling_of_an_address_meets_the_same_blind_index(
        self, storage: Storage, data: st.DataObject
    ) -> None:
        from userplane.testing.strategies import emails

        email = data.draw(emails())
        key = normalize_email(email)
        assume(storage.get_user_by_email(key, include_deleted=True) is None)
        user = insert(storage, make_user(email))
        full_width = "".join(
            chr(ord(c) + 0xFEE0) if c.isascii() and c.isalpha() else c for c in email
        )
        for variant in {email.upper(), email.lower(), email.swapcase(), full_width}:
            try:
                variant_key = normalize_email(variant)
            except InvalidInput:
                continue  # not an address in this spelling
            if variant_key != key:
                continue  # the spelling names another address (a dotless i, say)
            assert storage.get_user_by_email(variant_key) == user, variant
            with pytest.raises(Conflict):
                insert(storage, make_user(variant))
        assert storage.list_users(UserFilter(email=key), CREATED, None, 5) == [user]

    def test_the_blind_index_is_keyed(
        self, storage: Storage, raw_storage: Storage, keyring: Keyring
    ) -> None:
        user = insert(storage, make_user("keyed@example.org"))
        other = Sealer(Keyring(keyring.keys, (new_key("index-b"),)))
        assert raw_storage.get_user_by_email(other.blind_index("keyed@example.org")) is None
        assert raw_storage.get_user_by_email(
            Sealer(keyring).blind_index("keyed@example.org")
        ) == raw_storage.get_user(user.id)

    # -- encrypted mode alone: ciphertext bound to its user and field -----------------------------

    def _stored(self, raw: Storage, user_id: uuid.UUID) -> User:
        stored = raw.get_user(user_id, True)
        assert stored is not None
        return stored

    def _undecryptable(self, call: Callable[[], object], user_id: uuid.UUID, field: str) -> None:
        with pytest.raises(Undecryptable) as info:
            call()
        assert str(user_id) in info.value.detail
        assert field in info.value.detail

    def test_an_email_moved_to_another_user_fails_naming_that_user(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        a = insert(storage, make_user("alice@example.org", full_name=None))
        b = insert(storage, make_user("bob@example.org", full_name=None))
        stored_a, stored_b = self._stored(raw_storage, a.id), self._stored(raw_storage, b.id)
        # The whole stored email of a, its wrapped data key included, into b's row.
        assert raw_storage.reseal_user(b.id, stored_b.version, {"email": stored_a.email}, None)
        self._undecryptable(lambda: storage.get_user(b.id), b.id, "data key")
        # Only the ciphertext moved, b's own data key kept: fails on the email itself.
        wrapped_b = stored_b.email.rsplit(":", 1)[0]
        moved = f"{wrapped_b}:{stored_a.email.rsplit(':', 1)[1]}"
        assert raw_storage.reseal_user(b.id, stored_b.version, {"email": moved}, None)
        self._undecryptable(lambda: storage.get_user(b.id), b.id, "email")
        # The user it came from is untouched, and a list never shows garbage.
        assert storage.get_user(a.id) == a
        with pytest.raises(Undecryptable, match=str(b.id)):
            storage.list_users(UserFilter(), CREATED, None, 10)

    def test_a_name_moved_to_another_user_fails_naming_that_user(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        a = insert(storage, make_user("alice@example.org", full_name="Alice"))
        b = insert(storage, make_user("bob@example.org", full_name="Bob"))
        stored_a, stored_b = self._stored(raw_storage, a.id), self._stored(raw_storage, b.id)
        assert raw_storage.reseal_user(
            b.id, stored_b.version, {"full_name": stored_a.full_name}, None
        )
        self._undecryptable(lambda: storage.get_user(b.id), b.id, "full_name")
        assert storage.get_user(a.id) == a

    def test_ciphertext_moved_between_the_email_and_name_columns_fails(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        # One user, one data key: only the field bound in the associated data tells them apart.
        user = insert(storage, make_user("cols@example.org", full_name="Column Swap"))
        stored = self._stored(raw_storage, user.id)
        assert stored.full_name is not None
        email_ct = stored.email.rsplit(":", 1)[1]
        name_ct = stored.full_name.rsplit(":", 1)[1]
        assert raw_storage.reseal_user(
            user.id, stored.version, {"full_name": PREFIX + email_ct}, None
        )
        self._undecryptable(lambda: storage.get_user(user.id), user.id, "full_name")
        swapped = f"{stored.email.rsplit(':', 1)[0]}:{name_ct}"
        assert raw_storage.reseal_user(
            user.id, stored.version, {"email": swapped, "full_name": stored.full_name}, None
        )
        self._undecryptable(lambda: storage.get_user(user.id), user.id, "email")
        # Put back as it was, it opens again.
        assert raw_storage.reseal_user(
            user.id, stored.version, {"email": stored.email, "full_name": stored.full_name}, None
        )
        assert storage.get_user(user.id) == user

    def test_altered_ciphertext_fails_naming_the_user_and_never_the_value(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        user = insert(storage, make_user("tamper@example.org", full_name="Tampered Name"))
        stored = self._stored(raw_storage, user.id)
        assert stored.full_name is not None
        head, wrapped, ct = stored.email.rsplit(":", 2)
        cases = {
            "email": {"email": f"{head}:{wrapped}:{_flip(ct)}"},
            "data key": {"email": f"{head}:{_flip(wrapped)}:{ct}"},
            "full_name": {"full_name": PREFIX + _flip(stored.full_name.removeprefix(PREFIX))},
        }
        for field, change in cases.items():
            assert raw_storage.reseal_user(user.id, stored.version, change, None)
            with pytest.raises(Undecryptable) as info:
                storage.get_user(user.id)
            assert str(user.id) in info.value.detail
            assert field in info.value.detail
            assert "tamper" not in info.value.detail.lower()
            assert raw_storage.reseal_user(
                user.id,
                stored.version,
                {"email": stored.email, "full_name": stored.full_name},
                None,
            )
        assert storage.get_user(user.id) == user

    def test_a_plain_value_in_a_sealed_database_is_refused(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        user = insert(storage, make_user("plain@example.org", full_name="Plain"))
        stored = self._stored(raw_storage, user.id)
        assert raw_storage.reseal_user(user.id, stored.version, {"full_name": "Plain"}, None)
        self._undecryptable(lambda: storage.get_user(user.id), user.id, "full_name")

    # -- encrypted mode alone: stored responses ----------------------------------------------------

    def _response_about(self, user: User) -> StoredResponse:
        body = f'{{"id":"{user.id}","email":"{user.email}","full_name":"{user.full_name}"}}'
        return StoredResponse(201, (("Location", f"/u/{user.id}"),), body.encode(), user.id)

    def test_a_response_about_a_user_is_sealed_under_its_data_key(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        t, hour = _BASE_TIME, timedelta(hours=1)
        user = insert(storage, make_user("replayed@example.org", full_name="Replayed Person"))
        response = self._response_about(user)
        assert storage.claim_idempotency_key("k", "fp", t, t + hour, t - hour)
        storage.complete_idempotency_key("k", response)
        assert storage.get_idempotency_record("k", t) == IdempotencyRecord("fp", response)
        raw = raw_storage.get_idempotency_record("k", t)
        assert raw is not None
        assert raw.response is not None
        assert raw.response.user_id == user.id
        assert raw.response.body.startswith(PREFIX.encode())
        for form in plaintext_forms(user):
            assert form.encode() not in raw.response.body, form
        # A response about no user is kept as it is.
        plain = StoredResponse(200, (), b"{}")
        assert storage.claim_idempotency_key("other", "fp", t, t + hour, t - hour)
        storage.complete_idempotency_key("other", plain)
        assert raw_storage.get_idempotency_record("other", t) == IdempotencyRecord("fp", plain)

    def test_a_sealed_response_moved_to_another_key_fails(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        t, hour = _BASE_TIME, timedelta(hours=1)
        user = insert(storage, make_user())
        assert storage.claim_idempotency_key("first", "fp", t, t + hour, t - hour)
        storage.complete_idempotency_key("first", self._response_about(user))
        raw = raw_storage.get_idempotency_record("first", t)
        assert raw is not None
        assert raw.response is not None
        assert raw_storage.claim_idempotency_key("second", "fp", t, t + hour, t - hour)
        raw_storage.complete_idempotency_key("second", raw.response)
        self._undecryptable(
            lambda: storage.get_idempotency_record("second", t), user.id, "stored response"
        )

    def test_purge_takes_the_responses_about_the_user_and_its_data_key(
        self, storage: Storage, raw_storage: Storage
    ) -> None:
        t, hour = _BASE_TIME, timedelta(hours=1)
        gone = insert(storage, make_user("gone@example.org", full_name="Gone Person"))
        kept = insert(storage, make_user("kept@example.org", full_name="Kept Person"))
        for key, user in (("about-gone", gone), ("about-kept", kept)):
            assert storage.claim_idempotency_key(key, "fp", t, t + hour, t - hour)
            storage.complete_idempotency_key(key, self._response_about(user))
        storage.delete_user(gone.id, None, t)
        assert storage.purge_users(t + hour) == 1
        assert raw_storage.get_user(gone.id, True) is None
        assert raw_storage.get_idempotency_record("about-gone", t) is None
        assert storage.get_idempotency_record("about-gone", t) is None
        assert storage.get_idempotency_record("about-kept", t) == IdempotencyRecord(
            "fp", self._response_about(kept)
        )
        # A response completed after its user was purged is not kept: a retry runs again.
        assert storage.claim_idempotency_key("late", "fp", t, t + hour, t - hour)
        storage.complete_idempotency_key("late", self._response_about(gone))
        assert raw_storage.get_idempotency_record("late", t) is None

    # -- the keys: checked before the first user operation, and rotated ----------------------------

    def test_the_keys_are_recorded_by_name_and_fingerprint_only(
        self, storage: Storage, raw_storage: Storage, keyring: Keyring
    ) -> None:
        insert(storage, make_user())
        records = raw_storage.key_records()
        assert sorted((r.name, r.purpose) for r in records) == [
            ("index-a", "index"),
            ("kek-a", "kek"),
        ]
        secrets = [k.secret for k in (*keyring.keys, *keyring.index_keys)]
        for record in records:
            assert len(record.fingerprint) == 64
            assert record.retired_at is None
            for secret in secrets:
                assert secret.hex() not in record.fingerprint
                assert NamedKey("x", secret).entry().split(":")[1] not in record.fingerprint

    def test_other_keys_than_the_database_was_sealed_with_are_refused(
        self, storage: Storage, raw_storage: Storage, keyring: Keyring
    ) -> None:
        user = insert(storage, make_user())
        impostor = NamedKey("kek-a", new_key("x").secret)
        for ring in (
            Keyring((impostor,), keyring.index_keys),  # a wrong key under a recorded name
            Keyring((new_key("kek-b"),), keyring.index_keys),  # the recorded key missing
            Keyring(keyring.keys, (new_key("index-b"),)),  # another blind-index key
            None,  # no keys over sealed data
        ):
            with pytest.raises(ConfigurationError) as info:
                self.seal(raw_storage, ring).get_user(user.id)
            for key in (*keyring.keys, *keyring.index_keys, impostor):
                assert key.entry().split(":")[1] not in info.value.detail
        # Nothing was recorded by the refused instances.
        assert sorted(r.name for r in raw_storage.key_records()) == ["index-a", "kek-a"]
        assert self.seal(raw_storage, keyring).get_user(user.id) == user

    def test_keys_are_refused_over_users_stored_in_plaintext(
        self, raw_storage: Storage, keyring: Keyring
    ) -> None:
        user = insert(raw_storage, make_user())
        raw_storage.delete_user(user.id, None, _BASE_TIME)  # deleted ones count
        with pytest.raises(ConfigurationError, match="userplane encryption backfill"):
            self.seal(raw_storage, keyring).get_user(user.id)
        assert raw_storage.key_records() == []

    def test_a_backfill_seals_users_stored_in_plaintext_and_keys_them_by_the_blind_index(
        self, raw_storage: Storage, keyring: Keyring
    ) -> None:
        plain = [insert(raw_storage, make_user(f"p{i}@example.org")) for i in range(5)]
        raw_storage.delete_user(plain[0].id, None, _BASE_TIME)
        backfilling = Keyring(keyring.keys, keyring.index_keys, plain_before=True)
        during = self.seal(raw_storage, backfilling)
        # Plain and sealed users side by side: found by email, the email still unique.
        assert during.get_user_by_email(normalize_email("P1@Example.org")) == plain[1]
        with pytest.raises(Conflict):
            insert(during, make_user("P2@example.org"))
        fresh = insert(during, make_user("fresh@example.org"))
        report = rotate(raw_storage, Sealer(backfilling), lambda: _BASE_TIME, batch=2)
        assert report.sealed == 5
        assert report.indexed == keyring.index_key.name
        after = self.seal(raw_storage, keyring)  # ",plain" dropped
        for user in [*plain[1:], fresh]:
            assert after.get_user_by_email(normalize_email(user.email)) == user
            assert is_sealed(self._stored(raw_storage, user.id).email)
        deleted = after.get_user(plain[0].id, include_deleted=True)  # deleted ones too
        assert deleted is not None
        assert deleted.email == plain[0].email
        assert is_sealed(self._stored(raw_storage, plain[0].id).email)
        with pytest.raises(Conflict):
            insert(after, make_user("p3@EXAMPLE.org"))
        entries = raw_storage.index_entries(None, 100)
        assert all(e.email_key == e.next_key and "@" not in e.email_key for e in entries)

    def test_moving_the_blind_index_to_a_new_key_keeps_every_user_found(
        self, storage: Storage, raw_storage: Storage, keyring: Keyring
    ) -> None:
        users = [insert(storage, make_user(f"m{i}@example.org")) for i in range(5)]
        moving = Keyring(keyring.keys, (new_key("index-b"), *keyring.index_keys))
        during = self.seal(raw_storage, moving)
        assert during.get_user_by_email(normalize_email(users[2].email)) == users[2]
        with pytest.raises(Conflict):
            insert(during, make_user("M1@example.org"))
        report = rotate(raw_storage, Sealer(moving), lambda: _BASE_TIME, batch=2)
        assert (report.indexed, report.retired) == ("index-b", (keyring.index_key.name,))
        after = self.seal(raw_storage, Keyring(keyring.keys, moving.index_keys[:1]))
        for user in users:
            assert after.get_user_by_email(normalize_email(user.email)) == user
        with pytest.raises(Conflict):
            insert(after, make_user("m4@example.org"))

    def test_rotation_rewraps_every_data_key_and_retires_the_old_key(
        self, storage: Storage, raw_storage: Storage, keyring: Keyring
    ) -> None:
        users = [
            insert(storage, make_user(f"r{i}@example.org", full_name=f"Rotated {i}"))
            for i in range(7)
        ]
        storage.delete_user(users[0].id, None, _BASE_TIME)
        before = {u.id: self._stored(raw_storage, u.id) for u in users}
        new = new_key("kek-b")
        rotating = Keyring((new, *keyring.keys), keyring.index_keys)
        assert self.seal(raw_storage, rotating).get_user(users[1].id) == users[1]
        report = rotate(raw_storage, Sealer(rotating), lambda: _BASE_TIME, batch=3)
        assert (report.scanned, report.rewrapped, report.retired) == (7, 7, ("kek-a",))
        for user in users:
            after = self._stored(raw_storage, user.id)
            assert key_name(after.email) == "kek-b"
            # Only the wrapping changed: the ciphertexts, version and times stay.
            assert after.email.rsplit(":", 1)[1] == before[user.id].email.rsplit(":", 1)[1]
            assert attrs.evolve(after, email=before[user.id].email) == before[user.id]
        retired = {r.name: r.retired_at for r in raw_storage.key_records()}
        assert retired == {"index-a": None, "kek-a": _BASE_TIME, "kek-b": None}
        # The old key may leave the keyring: everything opens without it.
        without_old = self.seal(raw_storage, Keyring((new,), keyring.index_keys))
        listed = without_old.list_users(UserFilter(include_deleted=True), CREATED, None, 10)
        assert {u.id for u in listed} == {u.id for u in users}
        assert without_old.get_user(users[1].id) == users[1]
        # Run again: nothing to do.
        again = rotate(raw_storage, Sealer(rotating), lambda: _BASE_TIME, batch=3)
        assert (again.rewrapped, again.passes, again.retired) == (0, 1, ())
